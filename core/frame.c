/* frame.c — RFC 6455 §5 frame codec. See frame.h for the contract. */
#include "frame.h"

#include <stdlib.h>
#include <string.h>

#include "utf8.h"

#define CTL_MAX 125
#define MSG_MIN_CAP 256

static const uint8_t empty_payload[1];

static void ws_mask_copy(uint8_t *dst, const uint8_t *src, size_t len, const uint8_t mask[4],
                         unsigned off);

/* The reasons of failures, kept as a byte in the decoder (ws_decoder_error). */
enum {
    W_NONE,
    W_RSV23,
    W_OPCODE,
    W_UNMASKED,
    W_CTL_FRAG,
    W_CTL_LONG,
    W_CTL_RSV1,
    W_CONT_ALONE,
    W_CONT_RSV1,
    W_DATA_INSIDE,
    W_RSV1,
    W_LEN16,
    W_LEN64_TOP,
    W_LEN64,
    W_TOO_BIG,
    W_NO_ROOM,
    W_CLOSE_UTF8,
    W_CLOSE_1BYTE,
    W_CLOSE_CODE,
    W_OOM,
    W_UTF8,
    W_UTF8_END,
};

static const char *const reasons[] = {
    NULL,
    "RSV2/RSV3 set",
    "reserved opcode",
    "client frame not masked",
    "fragmented control frame",
    "control frame payload over 125 bytes",
    "RSV1 set on a control frame",
    "continuation frame without a message",
    "RSV1 set on a continuation frame",
    "new data frame inside a fragmented message",
    "RSV1 set without a negotiated extension",
    "non-minimal 16-bit length",
    "64-bit length with the top bit set",
    "non-minimal 64-bit length",
    "message longer than max_message",
    "message longer than memory",
    "close reason is not UTF-8",
    "1-byte close payload",
    "invalid close code",
    "out of memory",
    "text is not UTF-8",
    "text ends inside a UTF-8 sequence",
};

const char *ws_decoder_error(const struct ws_decoder *d) {
    return d->why < sizeof reasons / sizeof reasons[0] ? reasons[d->why] : NULL;
}

static ssize_t fail(struct ws_decoder *d, int code, uint8_t why) {
    d->err = (int16_t)-code;
    d->why = why;
    return d->err;
}

static int is_control(unsigned opcode) {
    return opcode & 0x8;
}

/* Header length (2 + extended length + 4 mask bytes) from its second byte.
 * Only called once the mask bit is known to be set. */
static size_t header_size(uint8_t b1) {
    uint8_t l = b1 & 0x7f;
    return 6 + (l == 126 ? 2 : l == 127 ? 8 : 0);
}

/* Checks everything the first two header bytes can tell: returns 0 or a
 * close code, with *why set. */
static int check_start(const struct ws_decoder *d, uint8_t b0, uint8_t b1, uint8_t *why) {
    unsigned op = b0 & 0x0f, fin = b0 & 0x80, rsv1 = b0 & 0x40;
    if (b0 & 0x30) {
        *why = W_RSV23;
        return WS_CLOSE_PROTOCOL;
    }
    if ((op > WS_OP_BINARY && op < WS_OP_CLOSE) || op > WS_OP_PONG) {
        *why = W_OPCODE;
        return WS_CLOSE_PROTOCOL;
    }
    if (!(b1 & 0x80)) {
        *why = W_UNMASKED;
        return WS_CLOSE_PROTOCOL;
    }
    if (is_control(op)) {
        if (!fin) {
            *why = W_CTL_FRAG;
            return WS_CLOSE_PROTOCOL;
        }
        if ((b1 & 0x7f) > CTL_MAX) {
            *why = W_CTL_LONG;
            return WS_CLOSE_PROTOCOL;
        }
        if (rsv1) {
            *why = W_CTL_RSV1;
            return WS_CLOSE_PROTOCOL;
        }
    } else if (op == WS_OP_CONT) {
        if (!d->in_message) {
            *why = W_CONT_ALONE;
            return WS_CLOSE_PROTOCOL;
        }
        if (rsv1) {
            *why = W_CONT_RSV1;
            return WS_CLOSE_PROTOCOL;
        }
    } else {
        if (d->in_message) {
            *why = W_DATA_INSIDE;
            return WS_CLOSE_PROTOCOL;
        }
        if (rsv1 && !d->rsv1_ok) {
            *why = W_RSV1;
            return WS_CLOSE_PROTOCOL;
        }
    }
    return 0;
}

/* Decodes a complete header h (hs bytes) and enters the frame. Returns 0 or a
 * negative close code (d->err set). */
static ssize_t start_frame(struct ws_decoder *d, const uint8_t *h, size_t hs) {
    uint8_t why = W_NONE;
    int rc = check_start(d, h[0], h[1], &why);
    if (rc)
        return fail(d, rc, why);
    uint64_t len = h[1] & 0x7f;
    if (len == 126) {
        len = (uint64_t)h[2] << 8 | h[3];
        if (len < 126)
            return fail(d, WS_CLOSE_PROTOCOL, W_LEN16);
    } else if (len == 127) {
        len = 0;
        for (int i = 2; i < 10; i++)
            len = len << 8 | h[i];
        if (len >> 63)
            return fail(d, WS_CLOSE_PROTOCOL, W_LEN64_TOP);
        if (len < 65536)
            return fail(d, WS_CLOSE_PROTOCOL, W_LEN64);
    }
    unsigned op = h[0] & 0x0f;
    if (!is_control(op)) {
        /* msg_len is what previous fragments brought (0 on a first frame);
         * msg_len <= max_message holds, so the subtraction cannot wrap. */
        if (d->max_message && len > d->max_message - d->msg_len)
            return fail(d, WS_CLOSE_TOO_BIG, W_TOO_BIG);
        if (len > UINT32_MAX - d->msg_len)
            return fail(d, WS_CLOSE_TOO_BIG, W_NO_ROOM);
        if (op != WS_OP_CONT) {
            d->msg_opcode = (uint8_t)op;
            d->msg_compressed = (h[0] & 0x40) != 0;
            d->utf8_state = UTF8_ACCEPT;
        }
        d->in_message = !(h[0] & 0x80);
    }
    d->fr_opcode = (uint8_t)op;
    d->fr_fin = (h[0] & 0x80) != 0;
    memcpy(d->mask, h + hs - 4, 4);
    d->mask_off = 0;
    d->fr_remaining = len;
    d->in_frame = 1;
    return 0;
}

static int check_text(const struct ws_decoder *d) {
    return d->msg_opcode == WS_OP_TEXT && !d->msg_compressed;
}

/* Makes room for n more bytes in the reassembly buffer. Doubling, but never
 * past what the final frame announced nor past max_message; once half of the
 * final frame's end is in hand, room for all of it at once (no last realloc
 * and copy). Not sooner: a peer that announces a long frame and sends little
 * gets no more memory than it sent (twice that). */
static int msg_reserve(struct ws_decoder *d, size_t n) {
    size_t need = (size_t)d->msg_len + n; /* <= UINT32_MAX: checked against the header */
    if (need <= d->msg_cap)
        return 0;
    size_t cap = d->msg_cap ? (size_t)d->msg_cap * 2 : MSG_MIN_CAP;
    if (cap < need)
        cap = need;
    if (d->fr_fin && !d->in_message) {
        size_t total = (size_t)d->msg_len + (size_t)d->fr_remaining;
        if (cap > total || total / 2 <= need)
            cap = total;
    }
    if (d->max_message && cap > d->max_message)
        cap = (size_t)d->max_message;
    if (cap > UINT32_MAX)
        cap = UINT32_MAX;
    uint8_t *p = realloc(d->msg, cap);
    if (!p)
        return -1;
    d->msg = p;
    d->msg_cap = (uint32_t)cap;
    return 0;
}

static void msg_release(struct ws_decoder *d) {
    free(d->msg);
    d->msg = NULL;
    d->msg_len = d->msg_cap = 0;
}

/* Validates a complete control payload and hands it over. Returns the
 * callback's answer, or a negative close code. */
static ssize_t deliver_control(struct ws_decoder *d, uint8_t *p, size_t n,
                               const struct ws_decoder_cb *cb, void *ud) {
    if (d->fr_opcode == WS_OP_CLOSE) {
        unsigned code;
        const char *reason;
        size_t rlen;
        int rc = ws_close_parse(p, n, &code, &reason, &rlen);
        if (rc == -WS_CLOSE_INVALID_DATA)
            return fail(d, WS_CLOSE_INVALID_DATA, W_CLOSE_UTF8);
        if (rc)
            return fail(d, WS_CLOSE_PROTOCOL,
                        n == 1 ? W_CLOSE_1BYTE : W_CLOSE_CODE);
    }
    return cb->control ? cb->control(ud, d->fr_opcode, p, n) != 0 : 0;
}

ssize_t ws_decoder_feed(struct ws_decoder *d, uint8_t *buf, size_t len,
                        const struct ws_decoder_cb *cb, void *ud) {
    size_t pos = 0;
    ssize_t rc;
    if (d->err)
        return d->err;
    for (;;) {
        if (!d->in_frame) {
            if (pos == len)
                break;
            size_t avail = len - pos, hs;
            const uint8_t *h;
            if (d->hdr_have == 0 && avail >= 2 && (buf[pos + 1] & 0x80) &&
                avail >= (hs = header_size(buf[pos + 1]))) {
                h = buf + pos; /* common case: the whole header is here */
                pos += hs;
            } else {
                size_t need = d->hdr_have < 2 ? 2 : header_size(d->hdr[1]);
                while (d->hdr_have < need && pos < len) {
                    d->hdr[d->hdr_have++] = buf[pos++];
                    if (d->hdr_have == 2) {
                        /* fail on a bad first two bytes without waiting */
                        uint8_t why = W_NONE;
                        int code = check_start(d, d->hdr[0], d->hdr[1], &why);
                        if (code)
                            return fail(d, code, why);
                        need = header_size(d->hdr[1]);
                    }
                }
                if (d->hdr_have < need)
                    break;
                h = d->hdr;
                hs = need;
                d->hdr_have = 0;
            }
            if ((rc = start_frame(d, h, hs)))
                return rc;
        }

        size_t avail = len - pos;
        size_t n = avail < d->fr_remaining ? avail : (size_t)d->fr_remaining;
        uint8_t *p = buf + pos;

        if (is_control(d->fr_opcode)) {
            if (d->ctl_len == 0 && n == d->fr_remaining) { /* nothing of it held yet */
                ws_mask(p, n, d->mask, 0); /* whole: in place */
                pos += n;
            } else {
                if (!d->ctl && !(d->ctl = malloc(CTL_MAX)))
                    return fail(d, WS_CLOSE_INTERNAL, W_OOM);
                memcpy(d->ctl + d->ctl_len, p, n);
                ws_mask(d->ctl + d->ctl_len, n, d->mask, d->mask_off);
                d->mask_off = (uint8_t)((d->mask_off + n) & 3);
                d->ctl_len = (uint8_t)(d->ctl_len + n);
                pos += n;
                d->fr_remaining -= n;
                if (d->fr_remaining)
                    break;
                p = d->ctl;
                n = d->ctl_len;
            }
            d->fr_remaining = 0;
            d->in_frame = 0;
            rc = deliver_control(d, p, n, cb, ud);
            free(d->ctl);
            d->ctl = NULL;
            d->ctl_len = 0;
            if (rc < 0)
                return rc;
            if (rc)
                return (ssize_t)pos;
            continue;
        }

        if (d->fr_fin && d->fr_opcode != WS_OP_CONT && d->msg_len == 0 && n == d->fr_remaining) {
            /* A whole unfragmented message in buf: unmask in place, no copy;
             * text is checked in the same pass while it is ASCII */
            if (check_text(d)) {
                size_t a = ws_unmask_ascii(p, n, d->mask);
                uint32_t st = utf8_validate(UTF8_ACCEPT, p + a, n - a);
                if (st == UTF8_REJECT)
                    return fail(d, WS_CLOSE_INVALID_DATA, W_UTF8);
                if (st != UTF8_ACCEPT)
                    return fail(d, WS_CLOSE_INVALID_DATA, W_UTF8_END);
            } else {
                ws_mask(p, n, d->mask, 0);
            }
            pos += n;
            d->fr_remaining = 0;
            d->in_frame = 0;
            if (cb->message && cb->message(ud, d->msg_opcode, n ? p : (uint8_t *)empty_payload, n,
                                           d->msg_compressed))
                return (ssize_t)pos;
            continue;
        }

        if (n) {
            if (msg_reserve(d, n))
                return fail(d, WS_CLOSE_INTERNAL, W_OOM);
            uint8_t *dst = d->msg + d->msg_len;
            ws_mask_copy(dst, p, n, d->mask, d->mask_off); /* one pass, not a copy and a pass */
            d->mask_off = (uint8_t)((d->mask_off + n) & 3);
            if (check_text(d)) {
                d->utf8_state = (uint8_t)utf8_validate(d->utf8_state, dst, n);
                if (d->utf8_state == UTF8_REJECT)
                    return fail(d, WS_CLOSE_INVALID_DATA, W_UTF8);
            }
            d->msg_len += n;
            pos += n;
            d->fr_remaining -= n;
        }
        if (d->fr_remaining)
            break;
        d->in_frame = 0;
        if (!d->fr_fin)
            continue;
        if (check_text(d) && d->utf8_state != UTF8_ACCEPT)
            return fail(d, WS_CLOSE_INVALID_DATA, W_UTF8_END);
        int stop = cb->message &&
                   cb->message(ud, d->msg_opcode, d->msg ? d->msg : (uint8_t *)empty_payload,
                               d->msg_len, d->msg_compressed);
        msg_release(d);
        if (stop)
            return (ssize_t)pos;
    }
    return (ssize_t)pos;
}

void ws_decoder_free(struct ws_decoder *d) {
    msg_release(d);
    free(d->ctl);
    d->ctl = NULL;
    d->ctl_len = 0;
}

/* 1004-1006 and 1015 are reserved for local use and never sent; 1012-1014
 * are registered with IANA (service restart, try again later, bad gateway)
 * and sent by real servers, so a client echoing them is not failed for it.
 * 1016-2999 are reserved for future RFCs: invalid until one defines them. */
int ws_close_code_valid(unsigned code) {
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
           (code >= 3000 && code <= 4999);
}

int ws_close_parse(const uint8_t *p, size_t len, unsigned *code, const char **reason,
                   size_t *reason_len) {
    if (len == 0) {
        *code = WS_CLOSE_NO_STATUS;
        *reason = "";
        *reason_len = 0;
        return 0;
    }
    if (len == 1)
        return -WS_CLOSE_PROTOCOL;
    unsigned c = (unsigned)p[0] << 8 | p[1];
    if (!ws_close_code_valid(c))
        return -WS_CLOSE_PROTOCOL;
    if (utf8_validate(UTF8_ACCEPT, p + 2, len - 2) != UTF8_ACCEPT)
        return -WS_CLOSE_INVALID_DATA;
    *code = c;
    *reason = (const char *)(p + 2);
    *reason_len = len - 2;
    return 0;
}

size_t ws_frame_header(uint8_t out[10], int opcode, int fin, int rsv1, uint64_t len) {
    out[0] = (uint8_t)((fin ? 0x80 : 0) | (rsv1 ? 0x40 : 0) | (opcode & 0x0f));
    if (len < 126) {
        out[1] = (uint8_t)len;
        return 2;
    }
    if (len <= 0xffff) {
        out[1] = 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        return 4;
    }
    out[1] = 127;
    for (int i = 0; i < 8; i++)
        out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
    return 10;
}

/* dst = src unmasked with the key from offset off: the copy and the unmasking
 * in one pass, 8 bytes per step. */
static void ws_mask_copy(uint8_t *dst, const uint8_t *src, size_t len, const uint8_t mask[4],
                         unsigned off) {
    uint8_t k[8];
    for (unsigned i = 0; i < 8; i++)
        k[i] = mask[(off + i) & 3];
    uint64_t key;
    memcpy(&key, k, 8);
    size_t i = 0;
    for (; len - i >= 8; i += 8) {
        uint64_t w;
        memcpy(&w, src + i, 8);
        w ^= key;
        memcpy(dst + i, &w, 8);
    }
    for (; i < len; i++)
        dst[i] = src[i] ^ k[i & 7];
}

/* ws_mask from key offset 0, noting on the way whether the bytes are ASCII:
 * 32 bytes per step, their unmasked words or-ed together. Returns the length
 * of the leading run of whole steps that are all ASCII (every byte below it is
 * < 0x80); the bytes from there on are unmasked but not looked at. */
size_t ws_unmask_ascii(uint8_t *p, size_t len, const uint8_t mask[4]) {
    uint8_t k[8];
    for (unsigned i = 0; i < 8; i++)
        k[i] = mask[i & 3];
    uint64_t key;
    memcpy(&key, k, 8);
    size_t i = 0, ascii = 0;
    int clean = 1;
    /* four words in registers (an array here made the compiler store vectors
     * and reload words: a store-forwarding stall per step) */
    for (; len - i >= 32; i += 32) {
        uint64_t w0, w1, w2, w3;
        memcpy(&w0, p + i, 8);
        memcpy(&w1, p + i + 8, 8);
        memcpy(&w2, p + i + 16, 8);
        memcpy(&w3, p + i + 24, 8);
        w0 ^= key, w1 ^= key, w2 ^= key, w3 ^= key;
        memcpy(p + i, &w0, 8);
        memcpy(p + i + 8, &w1, 8);
        memcpy(p + i + 16, &w2, 8);
        memcpy(p + i + 24, &w3, 8);
        if (clean && !((w0 | w1 | w2 | w3) & UINT64_C(0x8080808080808080)))
            ascii = i + 32;
        else
            clean = 0;
    }
    ws_mask(p + i, len - i, mask, (unsigned)(i & 3));
    return ascii;
}

/* XOR 8 bytes per step with the key repeated in byte order (memcpy keeps it
 * endian-neutral and alignment-safe); the compiler vectorises the loop. */
void ws_mask(uint8_t *p, size_t len, const uint8_t mask[4], unsigned off) {
    uint8_t k[8];
    for (unsigned i = 0; i < 8; i++)
        k[i] = mask[(off + i) & 3];
    uint64_t key;
    memcpy(&key, k, 8);
    size_t i = 0;
    for (; len - i >= 32; i += 32) { /* four words in registers per step */
        uint64_t w0, w1, w2, w3;
        memcpy(&w0, p + i, 8);
        memcpy(&w1, p + i + 8, 8);
        memcpy(&w2, p + i + 16, 8);
        memcpy(&w3, p + i + 24, 8);
        w0 ^= key, w1 ^= key, w2 ^= key, w3 ^= key;
        memcpy(p + i, &w0, 8);
        memcpy(p + i + 8, &w1, 8);
        memcpy(p + i + 16, &w2, 8);
        memcpy(p + i + 24, &w3, 8);
    }
    for (; len - i >= 8; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        w ^= key;
        memcpy(p + i, &w, 8);
    }
    for (; i < len; i++)
        p[i] ^= k[i & 7];
}
