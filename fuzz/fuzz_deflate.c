/* libFuzzer target for core/deflate.c.
 *
 * Byte 0 picks the mode, byte 1 the settings.
 *   mode even: negotiation. The rest is split at '\n' into header values.
 *     Checks: an agreement has in-range parameters, its response fits, and the
 *     response read back as an offer is accepted with the same parameters.
 *   mode odd: a stream of client messages (2-byte big-endian length, then
 *     that many payload bytes) inflated with max_out = 4096, with or without
 *     context takeover, window bits from the settings, trimmed between
 *     messages when asked. Every message that inflates is compressed again by
 *     a second connection and must inflate back to the same bytes.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "deflate.h"

#define MAX_OUT 4096

static void check(int ok) {
    if (!ok)
        abort();
}

static void fuzz_negotiate(uint8_t settings, const uint8_t *data, size_t size) {
    struct deflate_config cfg;
    deflate_config_default(&cfg);
    cfg.server_max_window_bits = 8 + (settings & 7);
    cfg.client_max_window_bits = 8 + ((settings >> 3) & 7);
    cfg.server_no_context_takeover = (settings >> 6) & 1;
    cfg.client_no_context_takeover = (settings >> 7) & 1;

    const char *vals[8];
    size_t lens[8];
    size_t n = 0;
    const char *p = (const char *)data, *end = p + size;
    while (n < 8) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        vals[n] = p;
        lens[n] = (size_t)((nl ? nl : end) - p);
        n++;
        if (!nl)
            break;
        p = nl + 1;
    }
    struct deflate_params a, b;
    char resp[DEFLATE_RESPONSE_MAX], resp2[DEFLATE_RESPONSE_MAX];
    if (!deflate_negotiate(&cfg, vals, lens, n, &a, resp))
        return;
    check(strlen(resp) < DEFLATE_RESPONSE_MAX - 1);
    check(a.server_max_window_bits >= 8 && a.server_max_window_bits <= 15);
    check(a.client_max_window_bits >= 8 && a.client_max_window_bits <= 15);
    check(a.server_max_window_bits <= cfg.server_max_window_bits);
    check(deflate_negotiate1(&cfg, resp, strlen(resp), &b, resp2));
    check(strcmp(resp, resp2) == 0);
    check(memcmp(&a, &b, sizeof a) == 0);
}

static void fuzz_inflate(uint8_t settings, const uint8_t *data, size_t size) {
    struct deflate_config cfg;
    deflate_config_default(&cfg);
    cfg.min_size = 0;
    cfg.mem_level = 1 + (settings & 7);
    struct deflate_params p = {0, 0, 15, 15, 0, 0};
    p.client_max_window_bits = (uint8_t)(8 + ((settings >> 3) & 7));
    p.client_no_context_takeover = (settings >> 6) & 1;
    int trim = (settings >> 7) & 1;
    struct ws_deflate d, echo, back;
    deflate_init(&d, &cfg, &p);
    /* echo compresses what d inflated; back (its client) inflates it again */
    struct deflate_params q = p;
    q.server_max_window_bits = p.client_max_window_bits;
    q.server_no_context_takeover = p.client_no_context_takeover;
    deflate_init(&echo, &cfg, &q);
    deflate_init(&back, &cfg, &p);
    p.server_max_window_bits = q.server_max_window_bits;

    while (size >= 2) {
        size_t len = ((size_t)data[0] << 8) | data[1];
        data += 2;
        size -= 2;
        if (len > size)
            len = size;
        uint8_t *out;
        size_t out_len;
        int rc = deflate_inflate_message(&d, data, len, MAX_OUT, &out, &out_len);
        data += len;
        size -= len;
        if (rc != 0) {
            check(rc == DEFLATE_ERR_DATA || rc == DEFLATE_ERR_TOO_BIG);
            check(out == NULL && out_len == 0);
            continue;
        }
        check(out_len <= MAX_OUT);
        uint8_t *z, *again;
        size_t z_len, again_len;
        check(deflate_compress_message(&echo, out, out_len, 3, &z, &z_len) == 0);
        check(deflate_inflate_message(&back, z + 3, z_len, MAX_OUT, &again, &again_len) == 0);
        check(again_len == out_len && (out_len == 0 || memcmp(again, out, out_len) == 0));
        free(z);
        free(again);
        free(out);
        if (trim) {
            deflate_trim(&d);
            deflate_trim(&echo);
        }
    }
    deflate_free(&d);
    deflate_free(&echo);
    deflate_free(&back);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2)
        return 0;
    if (data[0] & 1)
        fuzz_inflate(data[1], data + 2, size - 2);
    else
        fuzz_negotiate(data[1], data + 2, size - 2);
    return 0;
}
