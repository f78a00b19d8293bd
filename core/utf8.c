/* utf8.c — incremental UTF-8 validator: a shift-based DFA over the RFC 3629
 * §4 byte table, behind an ASCII fast path that skips 32 (then 8) bytes per step.
 *
 * Shift-based DFA: each state is a bit offset (public state number * 6), and
 * row[byte] packs, for every state, the offset of the next state in 6 bits at
 * that state's offset. One load and one shift per byte, no dependent table
 * lookups, which matters for non-ASCII text. */
#include "utf8.h"

#include <string.h>

/* States: 0 and 1 are UTF8_ACCEPT and UTF8_REJECT (public); the others mean
 * "inside a sequence" and only need to be distinct. */
enum {
    S_OK = UTF8_ACCEPT,
    S_BAD = UTF8_REJECT,
    S_1,  /* one continuation byte to come */
    S_2,  /* two to come */
    S_E0, /* after E0: A0..BF next (no overlongs) */
    S_ED, /* after ED: 80..9F next (no surrogates) */
    S_3,  /* three to come (after F1..F3) */
    S_F0, /* after F0: 90..BF next (no overlongs) */
    S_F4, /* after F4: 80..8F next (nothing above U+10FFFF) */
    S_COUNT
};

#define SHIFT(s) ((s)*6)
/* "in state s, go to state n" as bits of a row */
#define GO(s, n) ((uint64_t)SHIFT(n) << SHIFT(s))
/* A row starts as "every state goes to S_BAD"; KEEP(m) clears the states in m
 * so that their GO() bits can be or-ed in. */
#define ALL_BAD                                                                                    \
    (GO(S_OK, S_BAD) | GO(S_BAD, S_BAD) | GO(S_1, S_BAD) | GO(S_2, S_BAD) | GO(S_E0, S_BAD) |      \
     GO(S_ED, S_BAD) | GO(S_3, S_BAD) | GO(S_F0, S_BAD) | GO(S_F4, S_BAD))
#define M(s) ((uint64_t)63 << SHIFT(s))
#define KEEP(m) (ALL_BAD & ~(m))

/* 00..7F */
#define R_ASCII (KEEP(M(S_OK)) | GO(S_OK, S_OK))
/* 80..8F */
#define R_CONT0                                                                                    \
    (KEEP(M(S_1) | M(S_2) | M(S_ED) | M(S_3) | M(S_F4)) | GO(S_1, S_OK) | GO(S_2, S_1) |           \
     GO(S_ED, S_1) | GO(S_3, S_2) | GO(S_F4, S_2))
/* 90..9F */
#define R_CONT1                                                                                    \
    (KEEP(M(S_1) | M(S_2) | M(S_ED) | M(S_3) | M(S_F0)) | GO(S_1, S_OK) | GO(S_2, S_1) |           \
     GO(S_ED, S_1) | GO(S_3, S_2) | GO(S_F0, S_2))
/* A0..BF */
#define R_CONT2                                                                                    \
    (KEEP(M(S_1) | M(S_2) | M(S_E0) | M(S_3) | M(S_F0)) | GO(S_1, S_OK) | GO(S_2, S_1) |           \
     GO(S_E0, S_1) | GO(S_3, S_2) | GO(S_F0, S_2))
/* C0 C1 F5..FF: never valid */
#define R_BAD ALL_BAD
/* C2..DF */
#define R_L2 (KEEP(M(S_OK)) | GO(S_OK, S_1))
/* E0 */
#define R_E0 (KEEP(M(S_OK)) | GO(S_OK, S_E0))
/* E1..EC EE EF */
#define R_L3 (KEEP(M(S_OK)) | GO(S_OK, S_2))
/* ED */
#define R_ED (KEEP(M(S_OK)) | GO(S_OK, S_ED))
/* F0 */
#define R_F0 (KEEP(M(S_OK)) | GO(S_OK, S_F0))
/* F1..F3 */
#define R_L4 (KEEP(M(S_OK)) | GO(S_OK, S_3))
/* F4 */
#define R_F4 (KEEP(M(S_OK)) | GO(S_OK, S_F4))

/* clang-format off */
static const uint64_t row[256] = {
    R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, /* 00 */
    R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, /* 08 */
    R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, /* 10 */
    R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, /* 18 */
    R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, /* 20 */
    R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, /* 28 */
    R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, /* 30 */
    R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, /* 38 */
    R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, /* 40 */
    R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, /* 48 */
    R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, /* 50 */
    R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, /* 58 */
    R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, /* 60 */
    R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, /* 68 */
    R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, /* 70 */
    R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, R_ASCII, /* 78 */
    R_CONT0, R_CONT0, R_CONT0, R_CONT0, R_CONT0, R_CONT0, R_CONT0, R_CONT0, /* 80 */
    R_CONT0, R_CONT0, R_CONT0, R_CONT0, R_CONT0, R_CONT0, R_CONT0, R_CONT0, /* 88 */
    R_CONT1, R_CONT1, R_CONT1, R_CONT1, R_CONT1, R_CONT1, R_CONT1, R_CONT1, /* 90 */
    R_CONT1, R_CONT1, R_CONT1, R_CONT1, R_CONT1, R_CONT1, R_CONT1, R_CONT1, /* 98 */
    R_CONT2, R_CONT2, R_CONT2, R_CONT2, R_CONT2, R_CONT2, R_CONT2, R_CONT2, /* A0 */
    R_CONT2, R_CONT2, R_CONT2, R_CONT2, R_CONT2, R_CONT2, R_CONT2, R_CONT2, /* A8 */
    R_CONT2, R_CONT2, R_CONT2, R_CONT2, R_CONT2, R_CONT2, R_CONT2, R_CONT2, /* B0 */
    R_CONT2, R_CONT2, R_CONT2, R_CONT2, R_CONT2, R_CONT2, R_CONT2, R_CONT2, /* B8 */
    R_BAD, R_BAD, R_L2, R_L2, R_L2, R_L2, R_L2, R_L2, /* C0 */
    R_L2, R_L2, R_L2, R_L2, R_L2, R_L2, R_L2, R_L2, /* C8 */
    R_L2, R_L2, R_L2, R_L2, R_L2, R_L2, R_L2, R_L2, /* D0 */
    R_L2, R_L2, R_L2, R_L2, R_L2, R_L2, R_L2, R_L2, /* D8 */
    R_E0, R_L3, R_L3, R_L3, R_L3, R_L3, R_L3, R_L3, /* E0 */
    R_L3, R_L3, R_L3, R_L3, R_L3, R_ED, R_L3, R_L3, /* E8 */
    R_F0, R_L4, R_L4, R_L4, R_F4, R_BAD, R_BAD, R_BAD, /* F0 */
    R_BAD, R_BAD, R_BAD, R_BAD, R_BAD, R_BAD, R_BAD, R_BAD, /* F8 */
};
/* clang-format on */

/* Returns the new state; stops at the first byte that makes it UTF8_REJECT. */
uint32_t utf8_validate(uint32_t state, const uint8_t *s, size_t len) {
    if (state >= S_COUNT || state == S_BAD)
        return UTF8_REJECT;
    uint64_t sh = SHIFT(state);
    size_t i = 0;
    while (i < len) {
        if (sh == SHIFT(S_OK)) {
            /* ASCII fast path: 32 bytes per step, then 8, while no high bit is set. */
            while (len - i >= 32) {
                uint64_t w0, w1, w2, w3; /* words, not an array: kept in registers */
                memcpy(&w0, s + i, 8);
                memcpy(&w1, s + i + 8, 8);
                memcpy(&w2, s + i + 16, 8);
                memcpy(&w3, s + i + 24, 8);
                if ((w0 | w1 | w2 | w3) & UINT64_C(0x8080808080808080))
                    break;
                i += 32;
            }
            while (len - i >= 8) {
                uint64_t w;
                memcpy(&w, s + i, 8);
                if (w & UINT64_C(0x8080808080808080))
                    break;
                i += 8;
            }
            while (i < len && s[i] < 0x80)
                i++;
            if (i == len)
                break;
        }
        sh = (row[s[i++]] >> sh) & 63;
        if (sh == SHIFT(S_BAD))
            return UTF8_REJECT;
    }
    return (uint32_t)(sh / 6);
}
