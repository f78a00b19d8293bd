/* outbound.c — connections the server opens: DNS, connect, TLS, bytes.
 *
 * A connection goes DNS (evdns_getaddrinfo) -> TCP (a non-blocking connect per
 * address, in the resolver's order, until one answers) -> TLS (a bufferevent_openssl
 * doing the client handshake) -> up (a bufferevent). The connect phases use a plain
 * event on the socket so that each failure is known for what it is (refused, no
 * route, TLS) before a bufferevent exists. Every operation arms the one timer; its
 * result goes out through the `notify` event, never from inside the call. */
#define _GNU_SOURCE
#include "outbound.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "log.h"

/* A client context that trusts one extra CA file beside the system store. */
struct ca_ctx {
    char *file;
    SSL_CTX *ctx;
    struct ca_ctx *next;
};

struct outbound_ctx {
    struct event_base *base;
    struct evdns_base *dns; /* owned; made on the first connect or resolve */
    char *resolver;         /* --resolver (owned copy), or NULL: /etc/resolv.conf */
    unsigned cancels;       /* lookups cancelled: evdns ends them from the loop */
    SSL_CTX *tls;           /* owned; system CAs; made on the first TLS connect */
    struct ca_ctx *cas;     /* owned; one per `ca` file seen (read once) */
    unsigned open, max_open;
    struct park *parks;      /* idle connections by key (outbound_park) */
    struct outbound *oldest; /* every parked connection, least recently parked first */
    struct outbound *newest;
    unsigned idle, max_idle; /* parked now; at most this many per key */
    double idle_timeout;     /* a parked connection is closed after this */
    unsigned long long reused;
};

/* One key's parked connections (most recently parked first). Freed when its last
 * connection leaves it: the list holds only the keys with an idle connection. */
struct park {
    struct park *next;
    struct outbound *head;
    unsigned n;
    char key[];
};

enum ob_op { OP_NONE, OP_CONNECT, OP_SEND, OP_INPUT };
enum ob_phase { PH_DNS, PH_TCP, PH_TLS, PH_UP, PH_FAILED };

/* Owned by its caller (outbound_connect .. outbound_close). */
struct outbound {
    struct outbound_ctx *x;
    struct evdns_getaddrinfo_request *dns_req; /* while resolving */
    struct evutil_addrinfo *ai, *ai_next;      /* the answer (owned), the next address */
    int fd;                                    /* while connecting; then the bufferevent's */
    struct event *conn_ev;                     /* fd writable: the connect finished */
    struct bufferevent *bev;                   /* once connected: owns fd and ssl */
    SSL *ssl;
    SSL_CTX *ssl_ctx; /* borrowed from x */
    struct event *timer, *notify;
    enum ob_op op;
    enum ob_phase phase;
    outbound_cb cb, done_cb; /* the pending operation's; the one notify runs */
    void *ud, *done_ud;
    const char *err;    /* the result notify hands over */
    const char *broken; /* a failure seen between operations: the next one reports it */
    size_t taken;       /* bytes outbound_take handed out: dropped at the next call */
    int eof, last_errno, tls, verify;
    char *host, *server_name;
    struct park *parked;              /* while idle in a pool */
    struct outbound *pnext, *pprev;   /* its park's list */
    struct outbound *anext, *aprev;   /* x's list of every parked connection, by age */
    char errbuf[200];
};

static void unpark(struct outbound *o);

struct outbound_ctx *outbound_ctx_new(struct event_base *base, unsigned max_open,
                                      const char *resolver) {
    struct outbound_ctx *x = calloc(1, sizeof *x);
    if (!x)
        return NULL;
    x->base = base;
    x->max_open = max_open;
    if (resolver && !(x->resolver = strdup(resolver))) {
        free(x);
        return NULL;
    }
    return x;
}

int outbound_resolver_valid(const char *addr) {
    struct sockaddr_storage ss;
    int len = (int)sizeof ss;
    return evutil_parse_sockaddr_port(addr, (struct sockaddr *)&ss, &len) == 0;
}

/* The loop's resolver, made on first use: /etc/hosts first, then resolv.conf's
 * nameservers (or --resolver's). No idle event keeps the loop alive. */
static struct evdns_base *dns_base(struct outbound_ctx *x) {
    if (x->dns)
        return x->dns;
    if (!x->resolver) {
        x->dns = evdns_base_new(x->base, EVDNS_BASE_INITIALIZE_NAMESERVERS |
                                             EVDNS_BASE_DISABLE_WHEN_INACTIVE);
        return x->dns;
    }
    x->dns = evdns_base_new(x->base, EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    if (x->dns && (evdns_base_load_hosts(x->dns, NULL) != 0 ||
                   evdns_base_nameserver_ip_add(x->dns, x->resolver) != 0)) {
        evdns_base_free(x->dns, 0);
        x->dns = NULL;
    }
    return x->dns;
}

void outbound_ctx_free(struct outbound_ctx *x) {
    if (!x)
        return;
    while (x->oldest)
        outbound_close(x->oldest); /* unparks it */
    for (struct park *p = x->parks, *n; p; p = n) {
        n = p->next;
        free(p);
    }
    if (x->dns) {
        /* A cancelled lookup is only freed when evdns's deferred callbacks run:
         * give them one more turn of the (finished) loop, with nothing to wait for.
         * The caller frees first whatever else has events on the loop. */
        if (x->cancels)
            event_base_loop(x->base, EVLOOP_NONBLOCK);
        evdns_base_free(x->dns, 1);
    }
    free(x->resolver);
    SSL_CTX_free(x->tls);
    for (struct ca_ctx *c = x->cas, *n; c; c = n) {
        n = c->next;
        SSL_CTX_free(c->ctx);
        free(c->file);
        free(c);
    }
    free(x);
}

unsigned outbound_open_count(const struct outbound_ctx *x) {
    return x ? x->open : 0;
}

static void drop_taken(struct outbound *o) {
    if (o->taken && o->bev)
        evbuffer_drain(bufferevent_get_input(o->bev), o->taken);
    o->taken = 0;
}

/* ---- results ---------------------------------------------------------------------- */

static void on_notify(evutil_socket_t fd, short what, void *arg) {
    struct outbound *o = arg;
    (void)fd;
    (void)what;
    outbound_cb cb = o->done_cb;
    o->done_cb = NULL;
    if (cb)
        cb(o->done_ud, o->err); /* may close o */
}

/* The pending operation ends with err (NULL: success); its callback runs from the loop. */
static void complete(struct outbound *o, const char *err) {
    if (o->op == OP_NONE)
        return;
    event_del(o->timer);
    if (o->bev && o->op == OP_INPUT)
        bufferevent_disable(o->bev, EV_READ);
    o->op = OP_NONE;
    o->done_cb = o->cb;
    o->done_ud = o->ud;
    o->cb = NULL;
    o->err = err;
    event_active(o->notify, EV_TIMEOUT, 1);
}

static const char *errno_text(struct outbound *o, int e) {
    switch (e) {
    case ECONNREFUSED:
        return "connection refused";
    case ECONNRESET:
    case EPIPE:
        return "connection reset";
    case ETIMEDOUT:
        return "timeout";
    case ENETUNREACH:
        return "network unreachable";
    case EHOSTUNREACH:
        return "host unreachable";
    case 0:
        return "closed";
    default: /* not o->errbuf: callers format this into it */
        return strerror(e);
    }
}

static void drop_connect_state(struct outbound *o) {
    if (o->dns_req) {
        struct evdns_getaddrinfo_request *r = o->dns_req;
        o->dns_req = NULL;
        o->x->cancels++;
        evdns_getaddrinfo_cancel(r); /* on_dns with EVUTIL_EAI_CANCEL, later: o is gone */
    }
    if (o->ai) {
        evutil_freeaddrinfo(o->ai);
        o->ai = o->ai_next = NULL;
    }
    if (o->conn_ev) {
        event_free(o->conn_ev);
        o->conn_ev = NULL;
    }
    if (o->fd >= 0) {
        close(o->fd);
        o->fd = -1;
    }
}

/* The connect failed: nothing more will work on this connection. */
static void fail_connect(struct outbound *o, const char *err) {
    drop_connect_state(o);
    if (o->bev) {
        bufferevent_free(o->bev); /* closes the socket, frees the SSL */
        o->bev = NULL;
        o->ssl = NULL;
    }
    o->phase = PH_FAILED;
    o->broken = err;
    complete(o, err);
}

static void arm(struct outbound *o, double secs) {
    if (!(secs >= 0))
        secs = 0;
    struct timeval tv = {(time_t)secs, (suseconds_t)((secs - (double)(time_t)secs) * 1e6)};
    /* from now, not from the loop's cached time (a long handler leaves it behind) */
    event_base_update_cache_time(o->x->base);
    event_add(o->timer, &tv);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg) {
    struct outbound *o = arg;
    (void)fd;
    (void)what;
    if (o->parked) { /* idle too long */
        outbound_close(o);
        return;
    }
    if (o->op == OP_CONNECT)
        fail_connect(o, o->phase == PH_DNS ? "dns: timeout" : "timeout");
    else
        complete(o, "timeout");
}

/* ---- TLS ------------------------------------------------------------------------ */

static SSL_CTX *new_client_ctx(const char *ca, struct outbound *o, const char **err) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        *err = "tls: out of memory";
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                                 SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (SSL_CTX_set_default_verify_paths(ctx) != 1)
        log_warn("TLS client: the system CA store could not be loaded");
    if (ca && SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
        snprintf(o->errbuf, sizeof o->errbuf, "tls: cannot load ca %s", ca);
        *err = o->errbuf;
        ERR_clear_error();
        SSL_CTX_free(ctx);
        return NULL;
    }
    ERR_clear_error();
    return ctx;
}

/* The client context for ca (NULL: the system store alone), made once. */
static SSL_CTX *client_ctx(struct outbound *o, const char *ca, const char **err) {
    struct outbound_ctx *x = o->x;
    if (!ca) {
        if (!x->tls)
            x->tls = new_client_ctx(NULL, o, err);
        return x->tls;
    }
    for (struct ca_ctx *c = x->cas; c; c = c->next)
        if (strcmp(c->file, ca) == 0)
            return c->ctx;
    struct ca_ctx *c = calloc(1, sizeof *c);
    if (!c || !(c->file = strdup(ca))) {
        free(c);
        *err = "tls: out of memory";
        return NULL;
    }
    if (!(c->ctx = new_client_ctx(ca, o, err))) {
        free(c->file);
        free(c);
        return NULL;
    }
    c->next = x->cas;
    x->cas = c;
    return c->ctx;
}

static int is_ip_literal(const char *s) {
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

/* Why the TLS session failed: the certificate check, else OpenSSL's reason,
 * else the socket's. */
static const char *tls_error(struct outbound *o) {
    long v = o->ssl ? SSL_get_verify_result(o->ssl) : X509_V_OK;
    unsigned long e = 0, last = 0;
    while (o->bev && (e = bufferevent_get_openssl_error(o->bev)))
        last = e;
    ERR_clear_error();
    if (o->verify && v != X509_V_OK) {
        snprintf(o->errbuf, sizeof o->errbuf, "tls: certificate verify failed: %s",
                 X509_verify_cert_error_string(v));
    } else if (last) {
        const char *r = ERR_reason_error_string(last);
        snprintf(o->errbuf, sizeof o->errbuf, "tls: %s", r ? r : "handshake failed");
    } else {
        int se = EVUTIL_SOCKET_ERROR();
        snprintf(o->errbuf, sizeof o->errbuf, "tls: handshake failed: %.170s",
                 se ? errno_text(o, se) : "closed");
    }
    return o->errbuf;
}

/* ---- the bufferevent ------------------------------------------------------------ */

static void on_read(struct bufferevent *bev, void *arg) {
    struct outbound *o = arg;
    (void)bev;
    if (o->parked) { /* bytes nobody asked for: the connection cannot be reused */
        outbound_close(o);
        return;
    }
    if (o->op == OP_INPUT)
        complete(o, NULL);
    else
        bufferevent_disable(o->bev, EV_READ);
}

static void on_write(struct bufferevent *bev, void *arg) {
    struct outbound *o = arg;
    if (o->op == OP_SEND && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        complete(o, NULL);
}

static void on_event(struct bufferevent *bev, short what, void *arg) {
    struct outbound *o = arg;
    (void)bev;
    if (o->parked && (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))) { /* the peer closed it */
        outbound_close(o);
        return;
    }
    if (what & BEV_EVENT_CONNECTED) {
        if (o->phase == PH_TLS) {
            o->phase = PH_UP;
            bufferevent_disable(o->bev, EV_READ); /* read only while someone waits */
            complete(o, NULL);
        }
        return;
    }
    if (o->phase == PH_TLS) {
        fail_connect(o, tls_error(o));
        return;
    }
    if (what & BEV_EVENT_EOF) {
        o->eof = 1;
        bufferevent_disable(o->bev, EV_READ);
        if (o->op == OP_INPUT)
            complete(o, NULL);
        return;
    }
    if (what & BEV_EVENT_ERROR) {
        int se = EVUTIL_SOCKET_ERROR();
        unsigned long e = o->ssl ? bufferevent_get_openssl_error(o->bev) : 0;
        if (e) {
            const char *r = ERR_reason_error_string(e);
            snprintf(o->errbuf, sizeof o->errbuf, "tls: %s", r ? r : "error");
            ERR_clear_error();
            o->broken = o->errbuf;
        } else {
            o->broken = errno_text(o, se);
        }
        o->eof = 1;
        bufferevent_disable(o->bev, EV_READ);
        complete(o, o->broken);
    }
}

/* ---- connecting ----------------------------------------------------------------- */

static void try_next(struct outbound *o);

static void on_tcp(evutil_socket_t fd, short what, void *arg) {
    struct outbound *o = arg;
    (void)what;
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    event_free(o->conn_ev);
    o->conn_ev = NULL;
    if (err) {
        close(o->fd);
        o->fd = -1;
        o->last_errno = err;
        try_next(o);
        return;
    }
    evutil_freeaddrinfo(o->ai);
    o->ai = o->ai_next = NULL;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct event_base *base = o->x->base;
    int opts = BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS;
    if (!o->tls) {
        o->bev = bufferevent_socket_new(base, fd, opts);
    } else {
        SSL *ssl = SSL_new(o->ssl_ctx);
        const char *name = o->server_name ? o->server_name : o->host;
        int ip = is_ip_literal(name);
        if (ssl && !ip)
            SSL_set_tlsext_host_name(ssl, name);
        if (ssl && o->verify) {
            if (ip)
                X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name);
            else
                SSL_set1_host(ssl, name);
        } else if (ssl) {
            SSL_set_verify(ssl, SSL_VERIFY_NONE, NULL);
        }
        o->bev =
            ssl ? bufferevent_openssl_socket_new(base, fd, ssl, BUFFEREVENT_SSL_CONNECTING, opts)
                : NULL;
        if (!o->bev)
            SSL_free(ssl);
        else
            o->ssl = ssl;
    }
    if (!o->bev) {
        fail_connect(o, "out of memory"); /* closes o->fd */
        return;
    }
    o->fd = -1; /* the bufferevent's now */
    bufferevent_setcb(o->bev, on_read, on_write, on_event, o);
    if (o->tls) {
        bufferevent_openssl_set_allow_dirty_shutdown(o->bev, 1);
        o->phase = PH_TLS;
        bufferevent_enable(o->bev, EV_READ | EV_WRITE);
    } else {
        o->phase = PH_UP;
        bufferevent_enable(o->bev, EV_WRITE);
        complete(o, NULL);
    }
}

static void try_next(struct outbound *o) {
    o->phase = PH_TCP;
    while (o->ai_next) {
        struct evutil_addrinfo *ai = o->ai_next;
        o->ai_next = ai->ai_next;
        int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            o->last_errno = errno;
            continue;
        }
        if (connect(fd, ai->ai_addr, (socklen_t)ai->ai_addrlen) == 0 || errno == EINPROGRESS) {
            o->fd = fd;
            o->conn_ev = event_new(o->x->base, fd, EV_WRITE, on_tcp, o);
            if (o->conn_ev && event_add(o->conn_ev, NULL) == 0)
                return;
            fail_connect(o, "out of memory");
            return;
        }
        o->last_errno = errno;
        close(fd);
    }
    fail_connect(o, errno_text(o, o->last_errno));
}

static void on_dns(int result, struct evutil_addrinfo *res, void *arg) {
    if (result == EVUTIL_EAI_CANCEL)
        return; /* outbound_close or the timeout cancelled it: o is gone (no access) */
    struct outbound *o = arg;
    o->dns_req = NULL;
    if (result != 0) {
        snprintf(o->errbuf, sizeof o->errbuf, "dns: %s", evutil_gai_strerror(result));
        fail_connect(o, o->errbuf);
        return;
    }
    o->ai = o->ai_next = res;
    try_next(o);
}

struct outbound *outbound_connect(struct outbound_ctx *x, const struct outbound_opts *opts,
                                  outbound_cb cb, void *ud, const char **err) {
    if (x->open >= x->max_open && x->oldest)
        outbound_close(x->oldest); /* an idle connection gives way to one that is needed */
    if (x->open >= x->max_open) {
        *err = "too many outbound connections";
        return NULL;
    }
    if (!dns_base(x)) {
        *err = "dns: no resolver";
        return NULL;
    }
    struct outbound *o = calloc(1, sizeof *o);
    if (!o) {
        *err = "out of memory";
        return NULL;
    }
    o->x = x;
    o->fd = -1;
    o->tls = opts->tls;
    o->verify = opts->verify;
    o->host = strdup(opts->host);
    o->server_name = opts->server_name ? strdup(opts->server_name) : NULL;
    o->timer = event_new(x->base, -1, 0, on_timeout, o);
    o->notify = event_new(x->base, -1, 0, on_notify, o);
    if (!o->host || (opts->server_name && !o->server_name) || !o->timer || !o->notify) {
        *err = "out of memory";
        goto fail;
    }
    if (o->tls && !(o->ssl_ctx = client_ctx(o, opts->ca, err))) {
        static char saved[sizeof o->errbuf];
        snprintf(saved, sizeof saved, "%s", *err); /* o->errbuf goes with o */
        *err = saved;
        goto fail;
    }
    x->open++;
    o->op = OP_CONNECT;
    o->cb = cb;
    o->ud = ud;
    o->phase = PH_DNS;
    arm(o, opts->timeout);
    char port[8];
    snprintf(port, sizeof port, "%u", opts->port);
    struct evutil_addrinfo hints = {0};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    /* no AI_ADDRCONFIG: on a host with loopback only it would drop 127.0.0.1; an
     * address family without a route fails at once and the next address is tried */
    /* a literal or an /etc/hosts name is answered inside this call (on_dns) */
    struct evdns_getaddrinfo_request *r =
        evdns_getaddrinfo(x->dns, o->host, port, &hints, on_dns, o);
    if (o->phase == PH_DNS && !o->dns_req)
        o->dns_req = r;
    return o;
fail:
    if (o->timer)
        event_free(o->timer);
    if (o->notify)
        event_free(o->notify);
    free(o->host);
    free(o->server_name);
    free(o);
    return NULL;
}

/* ---- a name alone ------------------------------------------------------------- */

struct outbound_dns {
    struct outbound_ctx *x;
    struct evdns_getaddrinfo_request *req; /* while evdns has it */
    struct event *notify;
    struct evutil_addrinfo *ai; /* the answer (owned until the callback returns) */
    outbound_resolve_cb cb;
    void *ud;
    const char *err;
    char errbuf[100];
};

static void on_resolve_notify(evutil_socket_t fd, short what, void *arg) {
    struct outbound_dns *d = arg;
    (void)fd;
    (void)what;
    d->cb(d->ud, d->ai, d->err);
    if (d->ai)
        evutil_freeaddrinfo(d->ai);
    event_free(d->notify);
    free(d);
}

static void on_resolve(int result, struct evutil_addrinfo *res, void *arg) {
    if (result == EVUTIL_EAI_CANCEL)
        return; /* outbound_resolve_cancel: d is going */
    struct outbound_dns *d = arg;
    d->req = NULL;
    if (result != 0) {
        snprintf(d->errbuf, sizeof d->errbuf, "dns: %s", evutil_gai_strerror(result));
        d->err = d->errbuf;
        if (res)
            evutil_freeaddrinfo(res);
    } else if (!res) {
        d->err = "dns: no address";
    } else {
        d->ai = res;
    }
    event_active(d->notify, EV_TIMEOUT, 1);
}

struct outbound_dns *outbound_resolve(struct outbound_ctx *x, const char *host, unsigned port,
                                      outbound_resolve_cb cb, void *ud, const char **err) {
    if (!dns_base(x)) {
        *err = "dns: no resolver";
        return NULL;
    }
    struct outbound_dns *d = calloc(1, sizeof *d);
    if (!d || !(d->notify = event_new(x->base, -1, 0, on_resolve_notify, d))) {
        free(d);
        *err = "out of memory";
        return NULL;
    }
    d->x = x;
    d->cb = cb;
    d->ud = ud;
    char portstr[8];
    snprintf(portstr, sizeof portstr, "%u", port);
    struct evutil_addrinfo hints = {0};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    /* a literal or an /etc/hosts name is answered inside this call (on_resolve) */
    struct evdns_getaddrinfo_request *r =
        evdns_getaddrinfo(x->dns, host, portstr, &hints, on_resolve, d);
    if (!event_pending(d->notify, EV_TIMEOUT, NULL) && !d->ai && !d->err)
        d->req = r;
    return d;
}

void outbound_resolve_cancel(struct outbound_dns *d) {
    if (!d)
        return;
    if (d->req) {
        struct evdns_getaddrinfo_request *r = d->req;
        d->req = NULL;
        d->x->cancels++;
        evdns_getaddrinfo_cancel(r); /* on_resolve with EVUTIL_EAI_CANCEL, later: ignored */
    }
    if (d->ai)
        evutil_freeaddrinfo(d->ai);
    event_free(d->notify);
    free(d);
}

/* ---- operations ----------------------------------------------------------------- */

/* Start op; 0 when it may go on, -1 when it already ended (its callback queued). */
static int begin(struct outbound *o, enum ob_op op, outbound_cb cb, void *ud) {
    drop_taken(o);
    o->op = op;
    o->cb = cb;
    o->ud = ud;
    if (o->broken || o->phase != PH_UP) {
        complete(o, o->broken ? o->broken : "closed");
        return -1;
    }
    return 0;
}

void outbound_send(struct outbound *o, const void *data, size_t len, double timeout, outbound_cb cb,
                   void *ud) {
    if (begin(o, OP_SEND, cb, ud) < 0)
        return;
    if (len == 0) {
        complete(o, NULL);
        return;
    }
    if (bufferevent_write(o->bev, data, len) < 0) {
        complete(o, "out of memory");
        return;
    }
    arm(o, timeout);
}

void outbound_wait_input(struct outbound *o, double timeout, outbound_cb cb, void *ud) {
    drop_taken(o);
    if (o->eof && !o->broken && o->phase == PH_UP) {
        o->op = OP_INPUT;
        o->cb = cb;
        o->ud = ud;
        complete(o, NULL); /* the caller sees outbound_eof */
        return;
    }
    if (begin(o, OP_INPUT, cb, ud) < 0)
        return;
    bufferevent_enable(o->bev, EV_READ);
    arm(o, timeout);
}

struct evbuffer *outbound_input(struct outbound *o) {
    drop_taken(o);
    return o->bev ? bufferevent_get_input(o->bev) : NULL;
}

int outbound_eof(const struct outbound *o) {
    return o->eof || o->phase != PH_UP;
}

int outbound_take(struct outbound *o, enum outbound_take mode, size_t n, size_t max,
                  const char **data, size_t *len, const char **err) {
    drop_taken(o);
    *data = "";
    *len = 0;
    if (!o->bev) {
        *err = o->broken ? o->broken : "closed";
        return -1;
    }
    struct evbuffer *in = bufferevent_get_input(o->bev);
    size_t have = evbuffer_get_length(in), want = 0, eol = 0;
    if (mode == OUTBOUND_TAKE_N && n > max) {
        *err = "too large";
        return -1;
    }
    if (mode == OUTBOUND_TAKE_N) {
        if (have >= n)
            want = n;
    } else if (mode == OUTBOUND_TAKE_LINE) {
        struct evbuffer_ptr p = evbuffer_search(in, "\n", 1, NULL);
        if (p.pos >= 0) {
            want = (size_t)p.pos + 1;
            eol = 1;
            if (p.pos > 0) {
                char cr;
                struct evbuffer_ptr q;
                evbuffer_ptr_set(in, &q, (size_t)p.pos - 1, EVBUFFER_PTR_SET);
                if (evbuffer_copyout_from(in, &q, &cr, 1) == 1 && cr == '\r')
                    eol = 2;
            }
        }
    }
    int ok = 1;
    if (!want && !(mode == OUTBOUND_TAKE_N && n == 0)) {
        if (mode != OUTBOUND_TAKE_N && have > max) {
            *err = "too large";
            return -1;
        }
        if (!o->eof)
            return 0;
        *err = o->broken ? o->broken : "closed";
        want = have; /* everything there is: the result, or the partial */
        ok = mode == OUTBOUND_TAKE_ALL && !o->broken ? 1 : -1;
    }
    unsigned char *p = want ? evbuffer_pullup(in, (ssize_t)want) : (unsigned char *)"";
    if (!p) {
        *err = "out of memory";
        return -1;
    }
    *data = (const char *)p;
    *len = want - eol;
    o->taken = want;
    return ok;
}

void outbound_close(struct outbound *o) {
    if (!o)
        return;
    if (o->parked)
        unpark(o);
    drop_connect_state(o);
    if (o->bev)
        bufferevent_free(o->bev);
    event_free(o->timer);
    event_free(o->notify);
    o->x->open--;
    free(o->host);
    free(o->server_name);
    free(o);
}

/* ---- idle connections (keep-alive) ---------------------------------------------- */

void outbound_ctx_set_pool(struct outbound_ctx *x, unsigned max_idle, double idle_timeout) {
    x->max_idle = max_idle;
    x->idle_timeout = idle_timeout;
}

unsigned outbound_idle_count(const struct outbound_ctx *x) {
    return x ? x->idle : 0;
}

unsigned long long outbound_reused_count(const struct outbound_ctx *x) {
    return x ? x->reused : 0;
}

static struct park *park_for(struct outbound_ctx *x, const char *key, int make) {
    for (struct park *p = x->parks; p; p = p->next)
        if (strcmp(p->key, key) == 0)
            return p;
    if (!make)
        return NULL;
    size_t kl = strlen(key);
    struct park *p = calloc(1, sizeof *p + kl + 1);
    if (!p)
        return NULL;
    memcpy(p->key, key, kl + 1);
    p->next = x->parks;
    x->parks = p;
    return p;
}

/* Take o out of its park and of the age list; it is in use again (or closing). */
static void unpark(struct outbound *o) {
    struct outbound_ctx *x = o->x;
    struct park *p = o->parked;
    if (o->pprev)
        o->pprev->pnext = o->pnext;
    else
        p->head = o->pnext;
    if (o->pnext)
        o->pnext->pprev = o->pprev;
    if (--p->n == 0) {
        struct park **pp = &x->parks;
        while (*pp != p)
            pp = &(*pp)->next;
        *pp = p->next;
        free(p);
    }
    if (o->aprev)
        o->aprev->anext = o->anext;
    else
        x->oldest = o->anext;
    if (o->anext)
        o->anext->aprev = o->aprev;
    else
        x->newest = o->aprev;
    o->pnext = o->pprev = o->anext = o->aprev = NULL;
    o->parked = NULL;
    x->idle--;
    event_del(o->timer);
    if (o->bev)
        bufferevent_disable(o->bev, EV_READ);
}

void outbound_park(struct outbound *o, const char *key) {
    struct outbound_ctx *x = o->x;
    drop_taken(o);
    if (o->op != OP_NONE || o->done_cb || o->phase != PH_UP || o->broken || o->eof || !o->bev ||
        evbuffer_get_length(bufferevent_get_input(o->bev)) ||
        evbuffer_get_length(bufferevent_get_output(o->bev)) || x->idle_timeout <= 0 ||
        x->max_idle == 0) {
        outbound_close(o);
        return;
    }
    struct park *p = park_for(x, key, 1);
    if (!p || p->n >= x->max_idle) {
        outbound_close(o);
        return;
    }
    o->parked = p;
    o->pnext = p->head;
    if (p->head)
        p->head->pprev = o;
    p->head = o;
    p->n++;
    o->aprev = x->newest;
    if (x->newest)
        x->newest->anext = o;
    else
        x->oldest = o;
    x->newest = o;
    x->idle++;
    o->cb = NULL;
    arm(o, x->idle_timeout);
    bufferevent_enable(o->bev, EV_READ); /* the peer's close (or stray bytes) ends it */
}

struct outbound *outbound_unpark(struct outbound_ctx *x, const char *key) {
    struct park *p = park_for(x, key, 0);
    if (!p || !p->head)
        return NULL;
    struct outbound *o = p->head; /* the most recently used: the likeliest still open */
    unpark(o);
    x->reused++;
    return o;
}
