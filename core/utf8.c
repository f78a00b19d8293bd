/* utf8.c — incremental UTF-8 validator: a byte-class DFA (RFC 3629 §4 table)
 * behind an ASCII fast path that skips 8 bytes per step. */
#include "utf8.h"

#include <string.h>

/* Byte classes. Continuation bytes are split three ways because the second byte
 * after E0, ED, F0 and F4 is restricted (overlongs, surrogates, > U+10FFFF). */
enum {
    C_ASCII, /* 00..7F */
    C_CONT0, /* 80..8F */
    C_CONT1, /* 90..9F */
    C_CONT2, /* A0..BF */
    C_BAD,   /* C0 C1 F5..FF: never valid */
    C_L2,    /* C2..DF */
    C_E0,    /* E0: second byte A0..BF */
    C_L3,    /* E1..EC EE EF */
    C_ED,    /* ED: second byte 80..9F (no surrogates) */
    C_F0,    /* F0: second byte 90..BF */
    C_L4,    /* F1..F3 */
    C_F4,    /* F4: second byte 80..8F (<= U+10FFFF) */
    C_COUNT
};

/* States: 0 and 1 are UTF8_ACCEPT and UTF8_REJECT (public); the others are
 * "inside a sequence" and only need to be distinct. */
enum {
    S_OK = UTF8_ACCEPT,
    S_BAD = UTF8_REJECT,
    S_1,   /* one continuation byte to come */
    S_2,   /* two to come */
    S_E0,  /* after E0 */
    S_ED,  /* after ED */
    S_3,   /* three to come (after F1..F3) */
    S_F0,  /* after F0 */
    S_F4,  /* after F4 */
    S_COUNT
};

/* byte -> class (the enum above, by value), 16 bytes a row */
static const uint8_t byte_class[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 00 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 10 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 20 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 30 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 40 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 50 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 60 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 70 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 80 */
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, /* 90 */
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, /* A0 */
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, /* B0 */
    4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, /* C0 */
    5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, /* D0 */
    6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 7, /* E0 */
    9, 10, 10, 10, 11, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, /* F0 */
};

#define B S_BAD
static const uint8_t transition[S_COUNT][C_COUNT] = {
    /*          ASCII CONT0 CONT1 CONT2 BAD  L2   E0    L3   ED    F0    L4   F4 */
    [S_OK] = {S_OK, B, B, B, B, S_1, S_E0, S_2, S_ED, S_F0, S_3, S_F4},
    [S_BAD] = {B, B, B, B, B, B, B, B, B, B, B, B},
    [S_1] = {B, S_OK, S_OK, S_OK, B, B, B, B, B, B, B, B},
    [S_2] = {B, S_1, S_1, S_1, B, B, B, B, B, B, B, B},
    [S_E0] = {B, B, B, S_1, B, B, B, B, B, B, B, B},
    [S_ED] = {B, S_1, S_1, B, B, B, B, B, B, B, B, B},
    [S_3] = {B, S_2, S_2, S_2, B, B, B, B, B, B, B, B},
    [S_F0] = {B, B, S_2, S_2, B, B, B, B, B, B, B, B},
    [S_F4] = {B, S_2, B, B, B, B, B, B, B, B, B, B},
};
#undef B

/* Returns the new state; stops at the first byte that makes it UTF8_REJECT. */
uint32_t utf8_validate(uint32_t state, const uint8_t *s, size_t len) {
    size_t i = 0;
    if (state >= S_COUNT)
        return UTF8_REJECT;
    while (i < len) {
        if (state == S_OK) {
            /* ASCII fast path: 8 bytes per step while no high bit is set. */
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
        state = transition[state][byte_class[s[i++]]];
        if (state == S_BAD)
            return UTF8_REJECT;
    }
    return state;
}
