/* httpc.h — a small HTTP/1.1 client over an outbound connection (outbound.h):
 * one request at a time per connection, kept alive for the next request to the
 * same place (rq->keepalive; else Connection: close), a response body framed by
 * Content-Length, chunked transfer coding or the end of the connection, and
 * bounded by max_body. No Lua: the caller gets one callback with the response.
 *
 * Errors are those of outbound.h plus "body too large" and "http: ..." (a
 * response that is not HTTP/1.x, or a head past 64 KiB or 100 fields). */
#ifndef SB_HTTPC_H
#define SB_HTTPC_H

#include <stddef.h>

#include "outbound.h"

struct httpc;

/* A URL split in place: http:// or https://, a host (IPv6 in brackets), an
 * optional port, the rest from the first '/' or '?' ("/" when empty). */
struct httpc_url {
    int tls;
    char host[256];
    unsigned port;
    const char *target; /* into the URL given to httpc_parse_url */
};

/* Returns 0, or -1 with a short reason in *why ("scheme must be http or https",
 * ...). A fragment (#...) is not sent. */
int httpc_parse_url(const char *url, struct httpc_url *u, const char **why);

struct httpc_header {
    const char *name, *value;
    size_t name_len, value_len;
};

struct httpc_request {
    const char *method; /* a token */
    const char *url;    /* parsed again here; the caller checked it with httpc_parse_url */
    const struct httpc_header *headers; /* without CR, LF or NUL (the caller checks) */
    size_t n_headers;
    const char *body;
    size_t body_len;
    double timeout; /* seconds for the whole exchange */
    int verify;
    const char *ca;
    size_t max_body;
    int redirects; /* 3xx answers (301, 302, 303, 307, 308 with a Location) to follow;
                    * 303, and 301/302 after a POST, go on as a GET without the body;
                    * to another origin without Authorization, Cookie and Host */
    int keepalive; /* 1: no Connection: close; the connection goes back to the
                    * outbound pool (outbound_park) after a reusable answer, and a
                    * request may go out on a parked one */
};

/* headers: names lower-cased, in arrival order (a repeated name repeats);
 * everything valid only while the callback runs. */
struct httpc_response {
    int status;
    const struct httpc_header *headers;
    size_t n_headers;
    const char *body;
    size_t body_len;
};

/* err NULL and res set, or err set and res NULL. The request is freed when
 * the callback returns. */
typedef void (*httpc_cb)(void *ud, const char *err, const struct httpc_response *res);

/* Start the request; cb runs once from the loop. Returns NULL with *err set
 * when it cannot start (cb never runs). */
struct httpc *httpc_request(struct outbound_ctx *x, const struct httpc_request *rq, httpc_cb cb,
                            void *ud, const char **err);

/* Abandon a request whose callback has not run: it never will. */
void httpc_cancel(struct httpc *h);

#endif
