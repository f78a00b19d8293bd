/* utf8.h — incremental UTF-8 validator (RFC 3629: no overlongs, no surrogates,
 * nothing above U+10FFFF). Fails on the first byte that cannot start or continue
 * a valid sequence, so a bad message is refused mid-frame. */
#ifndef SB_UTF8_H
#define SB_UTF8_H

#include <stddef.h>
#include <stdint.h>

#define UTF8_ACCEPT 0u /* state: at a character boundary */
#define UTF8_REJECT 1u /* state: invalid; sticky */

/* Feed len bytes; returns the new state (UTF8_ACCEPT, UTF8_REJECT or an
 * in-sequence state). Start with UTF8_ACCEPT. A complete text is valid iff the
 * final state is UTF8_ACCEPT. */
uint32_t utf8_validate(uint32_t state, const uint8_t *s, size_t len);

#endif
