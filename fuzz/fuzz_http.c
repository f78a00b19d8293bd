/* fuzz_http — libFuzzer target for the HTTP request parser and the handshake.
 *
 * Each input is parsed whole, split in two at a point taken from the data
 * (resuming with last_len), and, when short, one byte at a time; the answers
 * must agree and every slice must lie inside the buffer. Complete requests go
 * through the handshake and the query and percent-decoding helpers.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "handshake.h"
#include "http.h"

#define CAP 100

struct result {
    int r, status;
    struct http_request req;
    struct http_header headers[CAP];
};

static const char *g_buf;
static size_t g_len;

static void inside(const char *p, size_t n) {
    if (n && (p < g_buf || p + n > g_buf + g_len))
        abort();
}

static void parse(struct result *res, const char *buf, size_t len, size_t last_len,
                  const struct http_limits *lim) {
    memset(res, 0, sizeof *res);
    res->req.headers = res->headers;
    res->req.headers_cap = CAP;
    res->r = http_parse_request(buf, len, last_len, lim, &res->req, &res->status);
    if (res->r != HTTP_ERROR)
        res->status = 0;
    if (res->r < 0)
        memset(&res->req, 0, sizeof res->req); /* left unspecified by the parser */
    res->req.headers = NULL;
}

static int same(const struct result *a, const struct result *b) {
    return a->r == b->r && a->status == b->status &&
           memcmp(&a->req, &b->req, sizeof a->req) == 0 &&
           memcmp(a->headers, b->headers, sizeof(struct http_header) * a->req.num_headers) == 0;
}

static void on_protocol(void *ud, const char *p, size_t len) {
    (void)ud;
    if (len == 0)
        abort();
    inside(p, len);
}

static void on_pair(void *ud, const char *k, size_t kl, const char *v, size_t vl) {
    (void)ud;
    inside(k, kl);
    if (v)
        inside(v, vl);
    char *tmp = malloc(kl + vl + 1);
    if (http_percent_decode(tmp, k, kl, 1) > (long)kl)
        abort();
    if (v && http_percent_decode(tmp, v, vl, 1) > (long)vl)
        abort();
    free(tmp);
}

static void check_request(struct result *res, size_t len) {
    struct http_request *req = &res->req;
    req->headers = res->headers;
    if ((size_t)res->r > len || req->num_headers > CAP)
        abort();
    g_len = (size_t)res->r; /* slices must lie inside the head itself */
    inside(req->method, req->method_len);
    inside(req->target, req->target_len);
    if (req->path_len != 1 || req->path[0] != '/')
        inside(req->path, req->path_len);
    if (req->query)
        inside(req->query, req->query_len);
    for (size_t i = 0; i < req->num_headers; i++) {
        inside(req->headers[i].name, req->headers[i].name_len);
        inside(req->headers[i].value, req->headers[i].value_len);
    }

    const char *key = NULL, *reason = NULL;
    size_t key_len = 0;
    int st = handshake_validate(req, &key, &key_len, &reason);
    if (st == 0) {
        char accept[HANDSHAKE_ACCEPT_LEN + 1];
        inside(key, key_len);
        handshake_accept_key(key, key_len, accept);
        if (strlen(accept) != HANDSHAKE_ACCEPT_LEN)
            abort();
    } else if ((st != 400 && st != 426) || reason == NULL) {
        abort();
    }
    (void)handshake_is_upgrade(req);
    if (handshake_each_protocol(req, on_protocol, NULL) != handshake_each_protocol(req, NULL, NULL))
        abort();
    (void)http_find_header(req, "host");
    (void)http_header_has_token(req, "connection", "upgrade");
    if (req->query)
        http_query_each(req->query, req->query_len, on_pair, NULL);

    char *path = malloc(req->path_len + 1);
    long n = http_percent_decode(path, req->path, req->path_len, 0);
    if (n > (long)req->path_len)
        abort();
    free(path);

    char head[256];
    long hl = http_format_head(head, sizeof head, 101, "Upgrade: websocket\r\n",
                              req->content_length, req->keep_alive);
    if (hl <= 0 || (size_t)hl > sizeof head)
        abort();
    req->headers = NULL;
}

static void run(const char *buf, size_t len, const struct http_limits *lim, size_t split) {
    static struct result whole, part;
    parse(&whole, buf, len, 0, lim);

    parse(&part, buf, split, 0, lim);
    if (part.r == HTTP_NEED_MORE)
        parse(&part, buf, len, split, lim);
    if (!same(&whole, &part))
        abort();

    if (len <= 512) {
        size_t last = 0;
        for (size_t i = 1; i <= len; i++) {
            parse(&part, buf, i, last, lim);
            if (part.r != HTTP_NEED_MORE)
                break;
            last = i;
        }
        if (!same(&whole, &part))
            abort();
    }

    if (whole.r > 0)
        check_request(&whole, len);
    else if (whole.r == HTTP_ERROR && whole.status != 400 && whole.status != 431 &&
             whole.status != 501 && whole.status != 505)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* a copy of exactly size bytes, so any read past the end is caught */
    char *buf = malloc(size ? size : 1);
    if (size)
        memcpy(buf, data, size);
    g_buf = buf;
    size_t split = size ? ((size_t)data[0] * 31 + data[size - 1]) % (size + 1) : 0;

    g_len = size;
    run(buf, size, NULL, split);
    static const struct http_limits small = {.max_header_bytes = 96, .max_headers = 4};
    g_len = size;
    run(buf, size, &small, split);

    free(buf);
    return 0;
}
