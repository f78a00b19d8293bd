/* httpc.c — HTTP/1.1 requests over outbound connections. Our own small client
 * rather than libevent's evhttp: it shares outbound.c's DNS, address fallback,
 * TLS setup and error words (evhttp reports most failures as one opaque EOF),
 * bounds the body while reading, and a cancelled request is simply freed. */
#define _GNU_SOURCE
#include "httpc.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/buffer.h>

#define HEAD_MAX (64 * 1024) /* status line + header fields */
#define HEADERS_MAX 100
#define LINE_MAX_ 8192 /* one chunk-size or trailer line */

enum hc_state {
    ST_STATUS,
    ST_HEADERS,
    ST_BODY_N,
    ST_CHUNK_SIZE,
    ST_CHUNK_DATA,
    ST_CHUNK_END,
    ST_TRAILER,
    ST_BODY_ALL,
    ST_DONE
};

/* Owned by the caller until its callback has run (httpc_cancel before). */
struct httpc {
    struct outbound *o;
    httpc_cb cb;
    void *ud;
    double deadline;
    size_t max_body;
    int head; /* HEAD: no body whatever the headers say */
    enum hc_state st;
    size_t left;      /* body or chunk bytes still to come */
    size_t head_seen; /* bytes of the response head so far */
    int status;
    struct httpc_header *hdr;
    size_t n_hdr;
    struct evbuffer *body;
    char *req; /* the request bytes, until sent (until answered on a reused connection) */
    size_t req_len;
    struct outbound_ctx *x;
    struct outbound_opts oo; /* to connect afresh (host: in key) */
    char *key;               /* the keep-alive pool's key, or NULL: Connection: close */
    char *ca;                /* a copy of rq->ca for a retry, or NULL */
    int reused;              /* h->o came from the pool: a stale one is retried once */
    int idempotent;          /* the method may be sent again */
    int v11;                 /* the response is HTTP/1.1 */
    int redirects_left;            /* 3xx answers still to follow */
    struct httpc_request *orig;    /* the caller's request, copied, while redirects_left */
    char *url;                     /* the URL being asked, while redirects_left */
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double remaining(struct httpc *h) {
    double r = h->deadline - now_s();
    return r > 0 ? r : 0;
}

/* ---- URLs ----------------------------------------------------------------------- */

int httpc_parse_url(const char *url, struct httpc_url *u, const char **why) {
    const char *p;
    if (strncasecmp(url, "http://", 7) == 0) {
        u->tls = 0, u->port = 80, p = url + 7;
    } else if (strncasecmp(url, "https://", 8) == 0) {
        u->tls = 1, u->port = 443, p = url + 8;
    } else {
        *why = "URL scheme must be http:// or https://";
        return -1;
    }
    const char *end = p + strcspn(p, "/?#");
    if (memchr(p, '@', (size_t)(end - p))) {
        *why = "credentials in the URL are not supported (use an Authorization header)";
        return -1;
    }
    const char *hs = p, *he, *colon;
    if (*p == '[') {
        hs = p + 1;
        he = memchr(hs, ']', (size_t)(end - hs));
        if (!he) {
            *why = "unterminated [ in the URL's host";
            return -1;
        }
        colon = he + 1 < end && he[1] == ':' ? he + 1 : NULL;
        if (he + 1 < end && !colon) {
            *why = "bad URL host";
            return -1;
        }
    } else {
        colon = memchr(p, ':', (size_t)(end - p));
        he = colon ? colon : end;
    }
    size_t hl = (size_t)(he - hs);
    if (hl == 0 || hl >= sizeof u->host) {
        *why = hl ? "URL host too long" : "URL without a host";
        return -1;
    }
    for (const char *c = hs; c < he; c++) {
        if ((unsigned char)*c <= ' ' || *c == '%' || *c == '\\' || *c == 0x7f) {
            *why = "bad character in the URL's host";
            return -1;
        }
    }
    memcpy(u->host, hs, hl);
    u->host[hl] = 0;
    if (colon) {
        unsigned long port = 0;
        const char *c = colon + 1;
        if (c == end) {
            *why = "URL port missing after ':'";
            return -1;
        }
        for (; c < end; c++) {
            if (!isdigit((unsigned char)*c) || (port = port * 10 + (unsigned)(*c - '0')) > 65535) {
                *why = "URL port must be 1..65535";
                return -1;
            }
        }
        if (port == 0) {
            *why = "URL port must be 1..65535";
            return -1;
        }
        u->port = (unsigned)port;
    }
    u->target = *end == '#' ? "" : end;
    for (const char *c = u->target; *c && *c != '#'; c++) {
        if ((unsigned char)*c <= ' ' || *c == 0x7f) {
            *why = "spaces and control characters must be percent-encoded in a URL";
            return -1;
        }
    }
    return 0;
}

/* ---- the end -------------------------------------------------------------------- */

/* The connection may carry the next request: a complete, framed HTTP/1.1
 * response without Connection: close, to a request that did not ask for close. */
static int reusable(struct httpc *h);
static void free_copy(struct httpc_request *rq);

static void free_request(struct httpc *h) {
    if (h->o && h->key && h->st == ST_DONE && reusable(h))
        outbound_park(h->o, h->key);
    else
        outbound_close(h->o);
    free(h->key);
    free(h->ca);
    free(h->url);
    free_copy(h->orig);
    for (size_t i = 0; i < h->n_hdr; i++) {
        free((char *)h->hdr[i].name);
        free((char *)h->hdr[i].value);
    }
    free(h->hdr);
    if (h->body)
        evbuffer_free(h->body);
    free(h->req);
    free(h);
}

static int is_redirect(int status);
static int follow(struct httpc *h, const char *location, const char **err);
static const struct httpc_header *find(struct httpc *h, const char *name);

static void finish(struct httpc *h, const char *err) {
    const struct httpc_header *loc;
    if (!err && h->redirects_left > 0 && is_redirect(h->status) &&
        (loc = find(h, "location"))) {
        char *where = strdup(loc->value); /* the headers go with the exchange */
        int r = where ? follow(h, where, &err) : (err = "out of memory", -1);
        free(where);
        if (r > 0)
            return; /* the next request is out: this one's answer is not the last */
        if (r == 0)
            err = NULL; /* not followable: the 3xx is the answer */
    }
    if (err)
        h->st = ST_STATUS; /* never parked */
    if (err) {
        h->cb(h->ud, err, NULL);
    } else {
        size_t n = evbuffer_get_length(h->body);
        struct httpc_response res = {
            .status = h->status,
            .headers = h->hdr,
            .n_headers = h->n_hdr,
            .body = n ? (const char *)evbuffer_pullup(h->body, -1) : "",
            .body_len = n,
        };
        if (n && !res.body) {
            h->cb(h->ud, "out of memory", NULL);
        } else {
            h->cb(h->ud, NULL, &res);
        }
    }
    free_request(h);
}

void httpc_cancel(struct httpc *h) {
    if (h) {
        h->st = ST_STATUS; /* mid-exchange: the connection is closed, not parked */
        free_request(h);
    }
}

/* ---- the response --------------------------------------------------------------- */

static int add_header(struct httpc *h, const char *line, size_t len) {
    const char *colon = memchr(line, ':', len);
    if (!colon || colon == line || h->n_hdr == HEADERS_MAX)
        return -1;
    size_t nl = (size_t)(colon - line);
    for (size_t i = 0; i < nl; i++)
        if ((unsigned char)line[i] <= ' ')
            return -1; /* no space before the colon (RFC 9112 §5.1) */
    const char *v = colon + 1, *ve = line + len;
    while (v < ve && (*v == ' ' || *v == '\t'))
        v++;
    while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
        ve--;
    struct httpc_header *nh = realloc(h->hdr, (h->n_hdr + 1) * sizeof *nh);
    if (!nh)
        return -1;
    h->hdr = nh;
    char *name = strndup(line, nl), *value = strndup(v, (size_t)(ve - v));
    if (!name || !value) {
        free(name);
        free(value);
        return -1;
    }
    for (char *c = name; *c; c++)
        *c = (char)tolower((unsigned char)*c);
    nh[h->n_hdr++] = (struct httpc_header){name, value, nl, (size_t)(ve - v)};
    return 0;
}

static const struct httpc_header *find(struct httpc *h, const char *name) {
    const struct httpc_header *r = NULL;
    for (size_t i = 0; i < h->n_hdr; i++)
        if (strcmp(h->hdr[i].name, name) == 0)
            r = &h->hdr[i];
    return r;
}

static int has_token(const char *v, const char *tok) {
    size_t tl = strlen(tok);
    for (const char *p = v; (p = strcasestr(p, tok)); p += tl) {
        int start = p == v || p[-1] == ',' || p[-1] == ' ' || p[-1] == '\t';
        char e = p[tl];
        if (start && (e == 0 || e == ',' || e == ' ' || e == '\t' || e == ';'))
            return 1;
    }
    return 0;
}

/* The head is complete: how is the body framed? Returns NULL or an error. */
static const char *body_framing(struct httpc *h) {
    if (h->head || h->status == 204 || h->status == 304) {
        h->st = ST_DONE;
        return NULL;
    }
    const struct httpc_header *te = find(h, "transfer-encoding");
    if (te && has_token(te->value, "chunked")) {
        h->st = ST_CHUNK_SIZE;
        return NULL;
    }
    const struct httpc_header *cl = find(h, "content-length");
    if (cl) {
        char *end;
        unsigned long long n = strtoull(cl->value, &end, 10);
        if (!isdigit((unsigned char)cl->value[0]) || *end)
            return "http: bad content-length";
        if (n > h->max_body)
            return "body too large";
        h->left = (size_t)n;
        h->st = n ? ST_BODY_N : ST_DONE;
        return NULL;
    }
    h->st = ST_BODY_ALL;
    return NULL;
}

/* A status line: HTTP/1.x NNN [reason]. */
static int parse_status(struct httpc *h, const char *line, size_t len) {
    if (len < 12 || memcmp(line, "HTTP/1.", 7) != 0 || !isdigit((unsigned char)line[7]) ||
        line[8] != ' ' || !isdigit((unsigned char)line[9]) || !isdigit((unsigned char)line[10]) ||
        !isdigit((unsigned char)line[11]) || (len > 12 && line[12] != ' '))
        return -1;
    h->status = (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
    h->v11 = line[7] >= '1';
    return h->status >= 100 ? 0 : -1;
}

/* Move up to h->left body bytes from in to the body. */
static void take_body(struct httpc *h, struct evbuffer *in) {
    size_t n = evbuffer_get_length(in);
    if (n > h->left)
        n = h->left;
    evbuffer_remove_buffer(in, h->body, n);
    h->left -= n;
}

/* One line of the head or of the chunked framing. Returns NULL or an error. */
static const char *line_in(struct httpc *h, const char *line, size_t n, int in_head) {
    if (in_head && (h->head_seen += n + 2) > HEAD_MAX)
        return "http: response head too large";
    switch (h->st) {
    case ST_STATUS:
        h->st = ST_HEADERS;
        return parse_status(h, line, n) < 0 ? "http: not an HTTP/1.x response" : NULL;
    case ST_HEADERS:
        if (n)
            return add_header(h, line, n) < 0 ? "http: bad header field" : NULL;
        if (h->status < 200) { /* 100 Continue, 103: the real answer follows */
            h->st = ST_STATUS;
            return NULL;
        }
        return body_framing(h);
    case ST_CHUNK_SIZE: {
        char *end;
        unsigned long long sz = strtoull(line, &end, 16);
        if (end == line || !isxdigit((unsigned char)line[0]) ||
            (*end && *end != ';' && *end != ' ' && *end != '\t'))
            return "http: bad chunked body";
        if (sz > h->max_body - evbuffer_get_length(h->body))
            return "body too large";
        h->left = (size_t)sz;
        h->st = sz ? ST_CHUNK_DATA : ST_TRAILER;
        return NULL;
    }
    case ST_CHUNK_END:
        h->st = ST_CHUNK_SIZE;
        return n == 0 ? NULL : "http: bad chunked body";
    case ST_TRAILER: /* trailer fields are read and dropped */
        if (n == 0)
            h->st = ST_DONE;
        return NULL;
    default:
        return NULL;
    }
}

/* Parse what has arrived. Returns NULL to go on (h->st says whether it is done
 * or needs more), or an error. */
static const char *parse(struct httpc *h, struct evbuffer *in, int *more) {
    *more = 0;
    for (;;) {
        size_t n;
        char *line;
        switch (h->st) {
        case ST_STATUS:
        case ST_HEADERS:
        case ST_CHUNK_SIZE:
        case ST_CHUNK_END:
        case ST_TRAILER: {
            size_t avail = evbuffer_get_length(in);
            line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF);
            int in_head = h->st == ST_STATUS || h->st == ST_HEADERS;
            if (!line) {
                if (in_head ? h->head_seen + avail > HEAD_MAX : avail > LINE_MAX_)
                    return in_head ? "http: response head too large" : "http: bad chunked body";
                *more = 1;
                return NULL;
            }
            const char *err = line_in(h, line, n, in_head);
            free(line);
            if (err)
                return err;
            break;
        }
        case ST_BODY_N:
        case ST_CHUNK_DATA:
            take_body(h, in);
            if (h->left) {
                *more = 1;
                return NULL;
            }
            h->st = h->st == ST_BODY_N ? ST_DONE : ST_CHUNK_END;
            break;
        case ST_BODY_ALL:
            evbuffer_add_buffer(h->body, in);
            if (evbuffer_get_length(h->body) > h->max_body)
                return "body too large";
            *more = 1;
            return NULL;
        case ST_DONE:
            return NULL;
        }
    }
}

static int reusable(struct httpc *h) {
    const struct httpc_header *c = find(h, "connection");
    return h->v11 && h->status >= 200 && !(c && has_token(c->value, "close"));
}

static void on_input(void *ud, const char *err);
static void on_sent(void *ud, const char *err);
static void on_connected(void *ud, const char *err);

/* A pooled connection failed before any byte of the answer: the server had closed
 * it while idle. Send the request again, once, on a new connection. Returns 1 when
 * it did. */
static int retry(struct httpc *h) {
    if (!h->reused || !h->idempotent || h->head_seen || h->st != ST_STATUS || !h->req ||
        (h->o && evbuffer_get_length(outbound_input(h->o))))
        return 0;
    h->reused = 0;
    outbound_close(h->o);
    const char *err;
    h->oo.timeout = remaining(h);
    h->o = outbound_connect(h->x, &h->oo, on_connected, h, &err);
    if (!h->o) {
        finish(h, err);
        return 1;
    }
    return 1;
}

static void pump(struct httpc *h) {
    struct evbuffer *in = outbound_input(h->o);
    int more;
    const char *err = parse(h, in, &more);
    if (err) {
        finish(h, err);
    } else if (!more) {
        finish(h, NULL);
    } else if (outbound_eof(h->o)) {
        /* the end of the connection ends a body without a length, nothing else */
        if (h->st != ST_BODY_ALL && retry(h))
            return;
        finish(h, h->st == ST_BODY_ALL ? NULL : "closed");
    } else {
        outbound_wait_input(h->o, remaining(h), on_input, h);
    }
}

static void on_input(void *ud, const char *err) {
    struct httpc *h = ud;
    if (err && retry(h))
        return;
    if (err)
        finish(h, err);
    else
        pump(h);
}

static void on_sent(void *ud, const char *err) {
    struct httpc *h = ud;
    if (err && retry(h))
        return;
    if (!h->reused) { /* a new connection is not retried: the bytes are not needed */
        free(h->req);
        h->req = NULL;
    }
    if (err)
        finish(h, err);
    else
        pump(h);
}

static void on_connected(void *ud, const char *err) {
    struct httpc *h = ud;
    if (err) {
        finish(h, err);
        return;
    }
    outbound_send(h->o, h->req, h->req_len, remaining(h), on_sent, h);
}

/* ---- the request ---------------------------------------------------------------- */

static int given(const struct httpc_request *rq, const char *name) {
    for (size_t i = 0; i < rq->n_headers; i++)
        if (rq->headers[i].name_len == strlen(name) &&
            strncasecmp(rq->headers[i].name, name, rq->headers[i].name_len) == 0)
            return 1;
    return 0;
}

/* The request's bytes: request line, our defaults unless the caller gave them,
 * the caller's fields, the body. */
static char *build(const struct httpc_request *rq, const struct httpc_url *u, size_t *len) {
    struct evbuffer *b = evbuffer_new();
    if (!b)
        return NULL;
    const char *target = u->target[0] == '/' ? u->target : NULL;
    size_t tl = strcspn(u->target, "#");
    evbuffer_add_printf(b, "%s %s%.*s HTTP/1.1\r\n", rq->method, target ? "" : "/", (int)tl,
                        u->target);
    if (!given(rq, "host")) {
        int v6 = strchr(u->host, ':') != NULL;
        int dflt = u->port == (u->tls ? 443u : 80u);
        evbuffer_add_printf(b, "Host: %s%s%s", v6 ? "[" : "", u->host, v6 ? "]" : "");
        if (!dflt)
            evbuffer_add_printf(b, ":%u", u->port);
        evbuffer_add(b, "\r\n", 2);
    }
    if (!given(rq, "user-agent"))
        evbuffer_add_printf(b, "User-Agent: switchboard/%s\r\n", SB_VERSION);
    if (!given(rq, "connection") && !rq->keepalive)
        evbuffer_add_printf(b, "Connection: close\r\n");
    int bodyless = strcmp(rq->method, "GET") == 0 || strcmp(rq->method, "HEAD") == 0;
    if (!given(rq, "content-length") && (rq->body_len || !bodyless))
        evbuffer_add_printf(b, "Content-Length: %zu\r\n", rq->body_len);
    for (size_t i = 0; i < rq->n_headers; i++) {
        const struct httpc_header *f = &rq->headers[i];
        evbuffer_add(b, f->name, f->name_len);
        evbuffer_add(b, ": ", 2);
        evbuffer_add(b, f->value, f->value_len);
        evbuffer_add(b, "\r\n", 2);
    }
    evbuffer_add(b, "\r\n", 2);
    evbuffer_add(b, rq->body, rq->body_len);
    *len = evbuffer_get_length(b);
    char *out = malloc(*len ? *len : 1);
    if (out)
        evbuffer_remove(b, out, *len);
    evbuffer_free(b);
    return out;
}

/* Send rq (its URL parsed as u) on h: a kept connection of the same key, else a new
 * one. h's exchange state is fresh. Returns 0, or -1 with *err (h unchanged but for
 * what free_request frees). */
static int start(struct httpc *h, const struct httpc_request *rq, const struct httpc_url *u,
                 const char **err) {
    if (!(h->req = build(rq, u, &h->req_len))) {
        *err = "out of memory";
        return -1;
    }
    h->head = strcmp(rq->method, "HEAD") == 0;
    h->idempotent = 0;
    static const char *const idem[] = {"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"};
    for (size_t i = 0; i < sizeof idem / sizeof idem[0]; i++)
        if (strcmp(rq->method, idem[i]) == 0)
            h->idempotent = 1;
    /* keep-alive unless the caller chose the Connection field; the key holds all
     * that makes two connections interchangeable (the host last: it is oo.host) */
    if (rq->keepalive && !given(rq, "connection") &&
        asprintf(&h->key, "%d %u %d %s\n%s", u->tls, u->port, rq->verify, rq->ca ? rq->ca : "",
                 u->host) < 0)
        h->key = NULL;
    h->oo = (struct outbound_opts){
        .host = h->key ? strchr(h->key, '\n') + 1 : NULL,
        .port = u->port,
        .tls = u->tls,
        .verify = rq->verify,
        .ca = rq->ca, /* the caller's: valid during this call (a retry uses h->ca) */
        .timeout = remaining(h),
    };
    if (h->key && (h->o = outbound_unpark(h->x, h->key))) {
        if (rq->ca && !(h->oo.ca = h->ca = strdup(rq->ca))) {
            *err = "out of memory";
            return -1; /* h->st is not ST_DONE: the connection is closed */
        }
        h->reused = 1;
        outbound_send(h->o, h->req, h->req_len, remaining(h), on_sent, h);
        return 0;
    }
    struct outbound_opts oo = h->oo;
    oo.host = u->host;
    h->o = outbound_connect(h->x, &oo, on_connected, h, err);
    return h->o ? 0 : -1;
}

/* ---- redirects ------------------------------------------------------------------ */

static void free_copy(struct httpc_request *rq) {
    if (!rq)
        return;
    for (size_t i = 0; i < rq->n_headers; i++) {
        free((char *)rq->headers[i].name);
        free((char *)rq->headers[i].value);
    }
    free((void *)rq->headers);
    free((char *)rq->method);
    free((char *)rq->url);
    free((char *)rq->body);
    free((char *)rq->ca);
    free(rq);
}

/* The request as the caller gave it, kept for the redirects to follow. */
static struct httpc_request *copy_request(const struct httpc_request *rq) {
    struct httpc_request *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    *c = *rq;
    c->headers = NULL;
    c->n_headers = 0;
    c->method = strdup(rq->method);
    c->url = strdup(rq->url);
    c->ca = rq->ca ? strdup(rq->ca) : NULL;
    c->body = malloc(rq->body_len + 1);
    struct httpc_header *hs = calloc(rq->n_headers + 1, sizeof *hs);
    c->headers = hs;
    int ok = c->method && c->url && (!rq->ca || c->ca) && c->body && hs;
    if (c->body)
        memcpy((char *)c->body, rq->body, rq->body_len);
    for (size_t i = 0; ok && i < rq->n_headers; i++) {
        const struct httpc_header *f = &rq->headers[i];
        hs[i] = (struct httpc_header){strndup(f->name, f->name_len),
                                      strndup(f->value, f->value_len), f->name_len, f->value_len};
        c->n_headers = i + 1;
        ok = hs[i].name && hs[i].value;
    }
    if (!ok) {
        free_copy(c);
        return NULL;
    }
    return c;
}

/* location resolved against base (RFC 3986 §5.2, for the forms servers send:
 * absolute, scheme-relative, absolute-path, relative-path), or NULL. */
static char *resolve_location(const char *base, const struct httpc_url *bu, const char *loc) {
    char *out = NULL;
    if (strncasecmp(loc, "http://", 7) == 0 || strncasecmp(loc, "https://", 8) == 0)
        return strdup(loc);
    const char *scheme = bu->tls ? "https" : "http";
    if (loc[0] == '/' && loc[1] == '/')
        return asprintf(&out, "%s:%s", scheme, loc) < 0 ? NULL : out;
    size_t origin = (size_t)(bu->target - base); /* scheme://host[:port] */
    if (loc[0] == '/')
        return asprintf(&out, "%.*s%s", (int)origin, base, loc) < 0 ? NULL : out;
    size_t path = strcspn(bu->target, "?#"), dir = 0;
    for (size_t i = 0; i < path; i++)
        if (bu->target[i] == '/')
            dir = i + 1;
    if (asprintf(&out, "%.*s%s%.*s%s", (int)origin, base, dir ? "" : "/", (int)dir, bu->target,
                 loc) < 0)
        return NULL;
    return out;
}

static int is_redirect(int status) {
    return status == 301 || status == 302 || status == 303 || status == 307 || status == 308;
}

/* The answer is a redirect to follow: send the next request on h. Returns 1 when it
 * went out, 0 when the Location cannot be followed (the 3xx is the answer), -1 with
 * *err when it could not start. */
static int follow(struct httpc *h, const char *location, const char **err) {
    struct httpc_request *o = h->orig;
    struct httpc_url bu, nu;
    if (httpc_parse_url(h->url, &bu, err) < 0)
        return 0;
    char *next = resolve_location(h->url, &bu, location);
    if (!next || httpc_parse_url(next, &nu, err) < 0) {
        free(next);
        return 0;
    }
    int same_origin = bu.tls == nu.tls && bu.port == nu.port && strcasecmp(bu.host, nu.host) == 0;
    /* 303, and 301/302 after a POST, go on as a GET without the body (as browsers do) */
    int to_get = strcmp(o->method, "HEAD") != 0 &&
                 (h->status == 303 || ((h->status == 301 || h->status == 302) &&
                                       strcmp(o->method, "POST") == 0));
    /* The fields dropped here stay dropped for the following hops: credentials and
     * the Host field, once they left their origin, are not sent to any other (not to
     * a second hop on the new origin either); a GET has no body fields. */
    struct httpc_header *hs = (struct httpc_header *)o->headers;
    size_t kept = 0;
    for (size_t i = 0; i < o->n_headers; i++) {
        const char *n = hs[i].name;
        if ((to_get &&
             (strcasecmp(n, "content-length") == 0 || strcasecmp(n, "content-type") == 0)) ||
            (!same_origin &&
             (strcasecmp(n, "authorization") == 0 || strcasecmp(n, "cookie") == 0 ||
              strcasecmp(n, "proxy-authorization") == 0 || strcasecmp(n, "host") == 0))) {
            free((char *)hs[i].name);
            free((char *)hs[i].value);
            continue;
        }
        hs[kept++] = hs[i];
    }
    o->n_headers = kept;
    struct httpc_request rq = *o;
    rq.url = next;
    if (to_get) {
        rq.method = "GET";
        rq.body = "";
        rq.body_len = 0;
    }
    /* the exchange that ended: its connection goes back (or closes), its state goes */
    if (h->o && h->key && reusable(h))
        outbound_park(h->o, h->key);
    else
        outbound_close(h->o);
    h->o = NULL;
    for (size_t i = 0; i < h->n_hdr; i++) {
        free((char *)h->hdr[i].name);
        free((char *)h->hdr[i].value);
    }
    free(h->hdr);
    h->hdr = NULL;
    h->n_hdr = 0;
    evbuffer_drain(h->body, evbuffer_get_length(h->body));
    free(h->req);
    free(h->key);
    free(h->ca);
    h->req = h->key = h->ca = NULL;
    h->st = ST_STATUS;
    h->status = h->v11 = h->reused = 0;
    h->left = h->head_seen = 0;
    h->redirects_left--;
    free(h->url);
    h->url = next;
    if (to_get) { /* the following redirects go on from the GET */
        free((char *)o->method);
        o->method = strdup("GET");
        o->body_len = 0;
        if (!o->method) {
            *err = "out of memory";
            return -1;
        }
    }
    return start(h, &rq, &nu, err) < 0 ? -1 : 1;
}

struct httpc *httpc_request(struct outbound_ctx *x, const struct httpc_request *rq, httpc_cb cb,
                            void *ud, const char **err) {
    struct httpc_url u;
    if (httpc_parse_url(rq->url, &u, err) < 0)
        return NULL;
    struct httpc *h = calloc(1, sizeof *h);
    if (!h || !(h->body = evbuffer_new())) {
        free(h);
        *err = "out of memory";
        return NULL;
    }
    h->cb = cb;
    h->ud = ud;
    h->x = x;
    h->max_body = rq->max_body;
    h->deadline = now_s() + rq->timeout;
    if (rq->redirects > 0) {
        h->redirects_left = rq->redirects;
        if (!(h->orig = copy_request(rq)) || !(h->url = strdup(rq->url))) {
            free_request(h);
            *err = "out of memory";
            return NULL;
        }
    }
    if (start(h, rq, &u, err) < 0) {
        free_request(h);
        return NULL;
    }
    return h;
}
