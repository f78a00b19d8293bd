/* fuzz_frame — libFuzzer target for the frame decoder (core/frame.c) and the
 * UTF-8 validator (core/utf8.c).
 *
 * Input: byte 0 = config (bit 0: rsv1_ok; bits 1-2: max_message choice;
 * bits 3-7: which callbacks ask feed to stop), byte 1 = seed of the split
 * points, the rest = the client byte stream. The stream is decoded twice:
 * whole, then in data-derived chunks with stopping callbacks (re-feeding what
 * was not consumed). Both runs must log the same events and the same error.
 * Each event is checked against the contract on the way. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"
#include "utf8.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond);           \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

struct run {
    uint8_t *log; /* events and the outcome, serialised for comparison */
    size_t len, cap;
    uint64_t max_message;
    int rsv1_ok;
    unsigned stop_bits, nevents;
};

static void log_put(struct run *r, const void *p, size_t n) {
    if (r->len + n > r->cap) {
        size_t cap = r->cap ? r->cap : 256;
        while (cap < r->len + n)
            cap *= 2;
        r->log = realloc(r->log, cap);
        CHECK(r->log != NULL);
        r->cap = cap;
    }
    if (n)
        memcpy(r->log + r->len, p, n);
    r->len += n;
}

/* A slow, independent UTF-8 check: decode each code point and range-check it. */
static int ref_utf8_valid(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint32_t c = s[i], min;
        size_t k;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            k = 1, c &= 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            k = 2, c &= 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            k = 3, c &= 0x07, min = 0x10000;
        } else {
            return 0;
        }
        if (n - i <= k)
            return 0;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80)
                return 0;
            c = c << 6 | (s[i + j] & 0x3f);
        }
        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
            return 0;
        i += k + 1;
    }
    return 1;
}

static int stop_here(struct run *r) {
    return (r->stop_bits >> (r->nevents++ % 5)) & 1;
}

static int on_message(void *ud, int opcode, uint8_t *data, size_t len, int compressed) {
    struct run *r = ud;
    CHECK(opcode == WS_OP_TEXT || opcode == WS_OP_BINARY);
    CHECK(data != NULL);
    CHECK(r->max_message == 0 || len <= r->max_message);
    CHECK(!compressed || r->rsv1_ok);
    if (opcode == WS_OP_TEXT && !compressed) {
        CHECK(ref_utf8_valid(data, len));
        CHECK(utf8_validate(UTF8_ACCEPT, data, len) == UTF8_ACCEPT);
    }
    uint8_t h[3] = {'M', (uint8_t)opcode, (uint8_t)compressed};
    uint64_t l = len;
    log_put(r, h, sizeof h);
    log_put(r, &l, sizeof l);
    log_put(r, data, len);
    return stop_here(r);
}

static int on_control(void *ud, int opcode, uint8_t *data, size_t len) {
    struct run *r = ud;
    CHECK(opcode == WS_OP_CLOSE || opcode == WS_OP_PING || opcode == WS_OP_PONG);
    CHECK(len <= 125);
    if (opcode == WS_OP_CLOSE) {
        unsigned code;
        const char *reason;
        size_t rlen;
        CHECK(ws_close_parse(data, len, &code, &reason, &rlen) == 0);
        CHECK(code == WS_CLOSE_NO_STATUS ? len == 0 : ws_close_code_valid(code));
        CHECK(rlen == (len ? len - 2 : 0) && ref_utf8_valid((const uint8_t *)reason, rlen));
    }
    uint8_t h[2] = {'C', (uint8_t)opcode};
    log_put(r, h, sizeof h);
    log_put(r, data, len);
    return stop_here(r);
}

static const struct ws_decoder_cb callbacks = {on_message, on_control};

/* Decodes s in chunks (whole when seed is 0); logs events and the outcome. */
static void decode(struct run *r, const uint8_t *s, size_t size, uint32_t seed) {
    struct ws_decoder d;
    memset(&d, 0, sizeof d);
    d.max_message = (uint32_t)r->max_message;
    d.rsv1_ok = (uint8_t)r->rsv1_ok;
    uint8_t *buf = malloc(size ? size : 1); /* decoded in place: a private copy */
    CHECK(buf != NULL);
    memcpy(buf, s, size);
    uint32_t x = seed | 1, max_chunk = 1 + (seed >> 8) % 64;
    size_t pos = 0;
    ssize_t rc = 0;
    while (pos < size) {
        size_t n = size - pos;
        if (seed) {
            x ^= x << 13, x ^= x >> 17, x ^= x << 5;
            size_t want = (x & 3) == 0 ? 1 : 1 + (x >> 2) % max_chunk;
            if (want < n)
                n = want;
        }
        rc = ws_decoder_feed(&d, buf + pos, n, &callbacks, r);
        if (rc < 0) {
            CHECK(rc == -1002 || rc == -1007 || rc == -1009);
            CHECK(ws_decoder_error(&d) != NULL);
            /* sticky, and no more events */
            size_t before = r->len;
            CHECK(ws_decoder_feed(&d, buf, size, &callbacks, r) == rc);
            CHECK(r->len == before);
            break;
        }
        CHECK(rc > 0 && (size_t)rc <= n); /* a callback stops only after a byte */
        CHECK(r->stop_bits || (size_t)rc == n);
        CHECK(d.max_message == 0 || d.msg_len <= d.max_message);
        pos += (size_t)rc;
    }
    if (rc >= 0 && !d.in_frame && !d.in_message)
        CHECK(d.msg == NULL && d.ctl == NULL); /* buffers only while needed */
    if (rc >= 0 && !d.in_frame)
        CHECK(d.ctl == NULL);
    int32_t out = (int32_t)(rc < 0 ? rc : 0);
    log_put(r, "E", 1);
    log_put(r, &out, sizeof out);
    if (rc < 0)
        log_put(r, ws_decoder_error(&d), strlen(ws_decoder_error(&d)));
    ws_decoder_free(&d);
    CHECK(d.msg == NULL && d.ctl == NULL);
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const uint64_t limits[4] = {0, 125, 1000, 65536};
    if (size < 2)
        return 0;
    struct run whole = {0}, split = {0};
    whole.rsv1_ok = split.rsv1_ok = data[0] & 1;
    whole.max_message = split.max_message = limits[(data[0] >> 1) & 3];
    split.stop_bits = data[0] >> 3;
    uint32_t seed = (uint32_t)data[1] << 8 | (uint32_t)(size & 0xff) | 0x10000;

    decode(&whole, data + 2, size - 2, 0);
    decode(&split, data + 2, size - 2, seed);
    CHECK(whole.len == split.len && memcmp(whole.log, split.log, whole.len) == 0);
    free(whole.log);
    free(split.log);

    /* The validator alone: whole vs split at a data-derived point vs reference. */
    const uint8_t *s = data + 2;
    size_t n = size - 2, cut = n ? data[1] % (n + 1) : 0;
    uint32_t st = utf8_validate(UTF8_ACCEPT, s, n);
    uint32_t st2 = utf8_validate(utf8_validate(UTF8_ACCEPT, s, cut), s + cut, n - cut);
    CHECK((st == UTF8_ACCEPT) == ref_utf8_valid(s, n));
    CHECK((st == UTF8_REJECT) == (st2 == UTF8_REJECT));
    CHECK((st == UTF8_ACCEPT) == (st2 == UTF8_ACCEPT));
    return 0;
}
