/* handshake.h — RFC 6455 §4.2 opening handshake on the server side.
 *
 * Pure codec over a parsed struct http_request: validates the upgrade,
 * computes Sec-WebSocket-Accept (OpenSSL SHA-1 + base64), parses offers.
 */
#ifndef SB_HANDSHAKE_H
#define SB_HANDSHAKE_H

#include <stddef.h>
#include "http.h"

#define HANDSHAKE_ACCEPT_LEN 28 /* base64 of a 20-byte SHA-1 */

/* Is this request asking for a WebSocket upgrade at all (an Upgrade header
 * naming websocket, or a Sec-WebSocket-Key)? Used to tell an upgrade from a
 * plain GET. */
int handshake_is_upgrade(const struct http_request *req);

/* Validate an upgrade request. Returns 0 when it is a valid RFC 6455 opening
 * handshake, else the HTTP status to answer, with *reason set to a short static
 * text for the body:
 *   400: method not GET, HTTP version below 1.1, no Host, Upgrade lacking the
 *        token "websocket", Connection lacking the token "upgrade",
 *        Sec-WebSocket-Key missing, repeated, or not base64 of exactly 16 bytes;
 *   426: Sec-WebSocket-Version missing or not 13 (answer with
 *        "Sec-WebSocket-Version: 13").
 * On success *key / *key_len point at the key inside the request. */
int handshake_validate(const struct http_request *req, const char **key, size_t *key_len,
                       const char **reason);

/* Sec-WebSocket-Accept for a key: base64(SHA-1(key + GUID)), NUL-terminated. */
void handshake_accept_key(const char *key, size_t key_len, char out[HANDSHAKE_ACCEPT_LEN + 1]);

/* Calls cb for each token of every Sec-WebSocket-Protocol header, in order,
 * with surrounding whitespace trimmed and empty elements skipped. Returns the count.
 * cb may be NULL to count only. */
size_t handshake_each_protocol(const struct http_request *req,
                               void (*cb)(void *ud, const char *p, size_t len), void *ud);

/* Is `origin` (an Origin header's value, len bytes) on the comma-separated
 * `list`? An entry is an exact origin ("https://chat.example.com", compared
 * case-insensitively, the port included when it is not the scheme's default),
 * a host with a leading "*." ("*.example.com" matches any subdomain, not
 * example.com itself), either of them without "scheme://" to match any scheme,
 * or "null" (sandboxed pages, file:// URLs). Returns 1 or 0. */
int handshake_origin_allowed(const char *list, const char *origin, size_t len);

/* Is every entry of the list shaped as handshake_origin_allowed reads it
 * (and is there at least one)? Returns 1 or 0. */
int handshake_origin_list_valid(const char *list);

#endif
