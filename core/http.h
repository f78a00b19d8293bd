/* http.h — incremental HTTP/1.1 request parser and response helpers.
 *
 * Pure codec: no I/O, no libevent, no Lua. The parser works over a caller's
 * buffer and returns slices ({ptr, len}) into it; nothing is allocated.
 */
#ifndef SB_HTTP_H
#define SB_HTTP_H

#include <stddef.h>
#include <stdint.h>

/* Parser return values (besides a positive byte count). */
#define HTTP_NEED_MORE (-2) /* the header block is not complete yet */
#define HTTP_ERROR (-1)     /* bad input; *status says which HTTP answer */

struct http_header {
    const char *name; /* as sent; compare case-insensitively */
    size_t name_len;
    const char *value; /* leading/trailing OWS trimmed */
    size_t value_len;
};

/* Defaults used for a NULL limits struct or a field left 0. */
#define HTTP_DEFAULT_MAX_HEADER_BYTES 8192
#define HTTP_DEFAULT_MAX_HEADERS 100
/* The most header fields any configuration allows (--max-headers). Callers size
 * their header arrays by it (conn.c on the stack, script.c when it re-parses a
 * kept head for ws.headers), so a head the server took always parses again. */
#define HTTP_MAX_HEADERS_LIMIT 1000

struct http_limits {
    size_t max_header_bytes; /* request line + headers + final CRLF; default 8192 */
    size_t max_headers;      /* header fields; default 100 */
};

struct http_request {
    const char *method;
    size_t method_len;
    const char *target; /* raw request-target, e.g. "/chat?nick=a%20b" */
    size_t target_len;
    const char *path; /* target up to '?' (still percent-encoded) */
    size_t path_len;
    const char *query; /* after '?', without it; NULL/0 when absent */
    size_t query_len;
    int minor_version; /* HTTP/1.x: x */
    struct http_header *headers; /* caller-provided array ... */
    size_t headers_cap;          /* ... of this many entries (>= max_headers) */
    size_t num_headers;
    int64_t content_length; /* -1 when absent */
    int keep_alive;         /* 1 if the connection persists after the response */
};

/* Parse one request head from buf[0..len).
 * last_len is the len passed on the previous call for the same request (0 the
 * first time), so a client that sends a byte at a time is not rescanned from
 * the start each time.
 * Returns the number of bytes of the head (request line through the empty
 * line) when complete, HTTP_NEED_MORE when more bytes are needed, or
 * HTTP_ERROR with *status set to the answer: 400 malformed (obs-fold, bad
 * request line, bad header, bad Content-Length, repeated Content-Length with
 * different values, no Host in HTTP/1.1 or more than one Host in any version:
 * RFC 9112 3.2; a WebSocket upgrade request, one with an Upgrade naming websocket
 * or a Sec-WebSocket-Key, is left to handshake_validate, which refuses the same
 * Host faults with a reason), 431 head too large or too many headers, 505 unsupported
 * HTTP major version, 501 Transfer-Encoding (not supported).
 * A head larger than lim->max_header_bytes yields 431 as soon as that many
 * bytes have arrived without a complete head. */
int http_parse_request(const char *buf, size_t len, size_t last_len,
                       const struct http_limits *lim, struct http_request *req, int *status);

/* First header named `name` (case-insensitive), or NULL. */
const struct http_header *http_find_header(const struct http_request *req, const char *name);

/* Does the comma-separated list in header(s) `name` contain `token`
 * (case-insensitive)? All headers with that name are considered. */
int http_header_has_token(const struct http_request *req, const char *name, const char *token);

/* Standard reason phrase for a status code ("Not Found"), "Unknown" otherwise. */
const char *http_status_text(int status);

/* Percent-decode src into dst (dst may equal src). When plus_is_space, '+' becomes ' '
 * (query strings). Returns the decoded length, or -1 on a malformed escape. */
long http_percent_decode(char *dst, const char *src, size_t len, int plus_is_space);

/* Iterate the query string: calls cb for each key=value pair with the raw
 * (still encoded) slices; a key without '=' has value NULL/0. */
void http_query_each(const char *q, size_t len,
                     void (*cb)(void *ud, const char *k, size_t kl, const char *v, size_t vl),
                     void *ud);

/* Write a response head into out (capacity cap): status line, the given extra
 * header lines (already formatted "Name: value\r\n", may be NULL), Content-Length
 * when content_length >= 0, "Connection: close" when !keep_alive, and the empty line.
 * Returns the length written, or -1 if it would not fit. */
long http_format_head(char *out, size_t cap, int status, const char *extra_headers,
                      long long content_length, int keep_alive);

#endif
