/* wsc.c — WebSocket client connections on one epoll loop: nonblocking
 * connect (optionally from a chosen 127.0.0.x source), TLS 1.3 for wss://
 * (OpenSSL; the certificate is not verified: a benchmark), the opening handshake
 * with Sec-WebSocket-Accept checked, masked client frames out, server frames
 * in (fragments reassembled, pings answered). Reads land in one loop-wide
 * buffer; only an incomplete tail is kept per connection. */
#include "sbload.h"

#include "deflate.h"
#include "handshake.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

struct sb G;

uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t rng_next(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

_Noreturn void sb_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("sbload: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

_Noreturn void conn_fail(struct conn *c, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "sbload: error: connection %u to %s:%d%s: ", c->id, G.host, G.port, G.path);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

/* ---- base64, for Sec-WebSocket-Key (the accept key is handshake.c's) ---- */

static void base64(const uint8_t *in, size_t n, char *out) {
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n)
            v |= in[i + 2];
        out[o++] = tab[v >> 18 & 63];
        out[o++] = tab[v >> 12 & 63];
        out[o++] = i + 1 < n ? tab[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? tab[v & 63] : '=';
    }
    out[o] = 0;
}

/* ---- set-up ---- */

/* wss://: TLS 1.3 only, one cipher suite for every server measured
 * (TLS_AES_128_GCM_SHA256), no session resumption (every handshake is full),
 * read-ahead so that one read() takes every record that has arrived. */
static void tls_init(void) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx)
        sb_fail("SSL_CTX_new failed");
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
    if (!SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256"))
        sb_fail("cannot select TLS_AES_128_GCM_SHA256");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_default_read_buffer_len(ctx, 64 * 1024);
    G.tls = ctx;
}

/* Reads and writes with read()/write()'s contract (-1 and errno EAGAIN when
 * the socket or OpenSSL has to wait), over TLS when the connection has it. */
static ssize_t io_ssl_fail(struct conn *c, int r, const char *what) {
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        ERR_clear_error();
        errno = EAGAIN;
        return -1;
    }
    if (e == SSL_ERROR_ZERO_RETURN)
        return 0; /* close_notify */
    if (e == SSL_ERROR_SYSCALL && (errno == EAGAIN || errno == EINTR))
        return -1;
    if (e == SSL_ERROR_SYSCALL && r == 0 && ERR_peek_error() == 0)
        return 0; /* EOF without close_notify */
    unsigned long err = ERR_get_error();
    char buf[256] = "";
    if (err)
        ERR_error_string_n(err, buf, sizeof buf);
    if (e == SSL_ERROR_SYSCALL && !err) {
        if (!errno)
            return 0;
        return -1;
    }
    conn_fail(c, "TLS %s failed: %s", what, buf[0] ? buf : "error");
}

static ssize_t io_read(struct conn *c, uint8_t *p, size_t n) {
    if (!c->ssl)
        return read(c->fd, p, n);
    size_t got = 0;
    while (got < n) {
        int r = SSL_read(c->ssl, p + got, (int)(n - got > 1 << 30 ? 1 << 30 : n - got));
        if (r > 0) {
            got += (size_t)r;
            if (!SSL_has_pending(c->ssl))
                break; /* nothing buffered: the next read() would find the socket empty */
            continue;
        }
        if (got)
            break;
        ssize_t f = io_ssl_fail(c, r, "read");
        return f;
    }
    return (ssize_t)got;
}

static ssize_t io_write(struct conn *c, const uint8_t *p, size_t n) {
    if (!c->ssl)
        return write(c->fd, p, n);
    int r = SSL_write(c->ssl, p, (int)(n > 1 << 30 ? 1 << 30 : n));
    if (r > 0)
        return r;
    ssize_t f = io_ssl_fail(c, r, "write");
    if (f == 0) {
        errno = EPIPE;
        return -1;
    }
    return f;
}

void wsc_init(void) {
    const char *u = G.o.url;
    if (!u)
        sb_fail("--url is required (ws://HOST:PORT/PATH)");
    int tls = strncmp(u, "wss://", 6) == 0;
    if (!tls && strncmp(u, "ws://", 5) != 0)
        sb_fail("only ws:// and wss:// URLs are supported: %s", u);
    u += tls ? 6 : 5;
    if (tls && G.o.raw)
        sb_fail("--raw is for ws:// only");
    const char *slash = strchr(u, '/');
    size_t hl = slash ? (size_t)(slash - u) : strlen(u);
    if (hl == 0 || hl >= sizeof G.host)
        sb_fail("bad host in URL %s", G.o.url);
    memcpy(G.host, u, hl);
    G.host[hl] = 0;
    G.port = tls ? 443 : 80;
    char *colon = strrchr(G.host, ':');
    if (colon) {
        *colon = 0;
        G.port = atoi(colon + 1);
        if (G.port <= 0 || G.port > 65535)
            sb_fail("bad port in URL %s", G.o.url);
    }
    snprintf(G.pathbuf, sizeof G.pathbuf, "%s", slash ? slash : "/");
    G.path = G.pathbuf;
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res;
    int rc = getaddrinfo(G.host, NULL, &hints, &res);
    if (rc != 0)
        sb_fail("cannot resolve %s: %s", G.host, gai_strerror(rc));
    G.dst = *(struct sockaddr_in *)res->ai_addr;
    G.dst.sin_port = htons((uint16_t)G.port);
    freeaddrinfo(res);
    G.loopback = (ntohl(G.dst.sin_addr.s_addr) >> 24) == 127;
    if (tls)
        tls_init();
    G.ep = epoll_create1(EPOLL_CLOEXEC);
    if (G.ep < 0)
        sb_fail("epoll_create1: %s", strerror(errno));
    G.rcap = 256 * 1024;
    if ((size_t)G.o.size * 2 + 64 > G.rcap)
        G.rcap = (size_t)G.o.size * 2 + 64;
    G.rbuf = malloc(G.rcap);
    if (!G.rbuf)
        sb_fail("out of memory");
    G.now = now_ns();
}

static void ep_set(struct conn *c, int op, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(G.ep, op, c->fd, &ev) < 0)
        conn_fail(c, "epoll_ctl: %s", strerror(errno));
}

void wsc_connect(struct conn *c, uint32_t id, int src) {
    c->id = id;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        conn_fail(c, "socket: %s (raise the descriptor limit or use more --procs)",
                  strerror(errno));
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (src >= 0) {
        setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        struct sockaddr_in sa = {.sin_family = AF_INET};
        sa.sin_addr.s_addr = htonl(0x7f000002u + (uint32_t)src);
        if (bind(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0)
            conn_fail(c, "bind to 127.0.0.%d: %s", 2 + src, strerror(errno));
    }
    c->t_start = G.now;
    c->state = C_CONNECTING;
    G.opening++;
    if (connect(c->fd, (struct sockaddr *)&G.dst, sizeof G.dst) < 0 && errno != EINPROGRESS)
        conn_fail(c, "connect: %s", strerror(errno));
    ep_set(c, EPOLL_CTL_ADD, EPOLLOUT);
}

/* ---- output ---- */

static void out_reserve(struct conn *c, size_t n) {
    if (c->out_len + n <= c->out_cap)
        return;
    if (c->out_off) {
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
        if (c->out_len + n <= c->out_cap)
            return;
    }
    size_t cap = c->out_cap ? c->out_cap : 256;
    while (cap < c->out_len + n)
        cap *= 2;
    c->out = realloc(c->out, cap);
    if (!c->out)
        sb_fail("out of memory");
    c->out_cap = cap;
}

void wsc_write(struct conn *c, const uint8_t *p, size_t n) {
    out_reserve(c, n);
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
}

size_t wsc_encode(uint8_t *out, int op, const uint8_t *p, size_t n, uint32_t mask) {
    size_t h = 0;
    out[h++] = (uint8_t)(0x80 | op);
    if (n < 126) {
        out[h++] = (uint8_t)(0x80 | n);
    } else if (n < 65536) {
        out[h++] = 0x80 | 126;
        out[h++] = (uint8_t)(n >> 8);
        out[h++] = (uint8_t)n;
    } else {
        out[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            out[h++] = (uint8_t)((uint64_t)n >> (8 * i));
    }
    uint8_t m[4] = {(uint8_t)(mask >> 24), (uint8_t)(mask >> 16), (uint8_t)(mask >> 8),
                    (uint8_t)mask};
    memcpy(out + h, m, 4);
    h += 4;
    /* 8 bytes per step: large messages must not make sbload the bottleneck */
    uint8_t k8[8] = {m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]};
    uint64_t key;
    memcpy(&key, k8, 8);
    size_t i = 0;
    for (; n - i >= 8; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        w ^= key;
        memcpy(out + h + i, &w, 8);
    }
    for (; i < n; i++)
        out[h + i] = p[i] ^ m[i & 3];
    return h + n;
}

void wsc_frame(struct conn *c, int op, const uint8_t *p, size_t n, uint32_t mask) {
    out_reserve(c, n + 14);
    c->out_len += wsc_encode(c->out + c->out_len, op, p, n, mask);
}

void wsc_flush(struct conn *c) {
    while (c->out_off < c->out_len) {
        ssize_t w = io_write(c, c->out + c->out_off, c->out_len - c->out_off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                break;
            conn_fail(c, "write: %s", strerror(errno));
        }
        c->out_off += (size_t)w;
    }
    if (c->out_off == c->out_len) {
        c->out_off = c->out_len = 0;
        if (c->state != C_OPEN || c->out_cap > 65536) { /* idle connections keep no buffer */
            free(c->out);
            c->out = NULL;
            c->out_cap = 0;
        }
        if (c->want_out) {
            c->want_out = 0;
            ep_set(c, EPOLL_CTL_MOD, EPOLLIN);
        }
    } else if (!c->want_out) {
        c->want_out = 1;
        ep_set(c, EPOLL_CTL_MOD, EPOLLIN | EPOLLOUT);
    }
}

void wsc_close(struct conn *c) {
    if (c->state != C_OPEN)
        return;
    c->state = C_CLOSING;
    G.open--;
    G.closing++;
    if (G.o.raw) {
        wsc_flush(c);
        shutdown(c->fd, SHUT_WR);
        return;
    }
    uint8_t code[2] = {1000 >> 8, 1000 & 0xff};
    wsc_frame(c, 0x8, code, 2, (uint32_t)rng_next(&c->seed));
    wsc_flush(c);
}

void wsc_free(struct conn *c) {
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    free(c->out);
    free(c->tail);
    free(c->frag);
    if (c->zd) {
        deflate_free(c->zd);
        free(c->zd);
        c->zd = NULL;
    }
    c->out = c->tail = c->frag = NULL;
    c->out_cap = c->out_len = c->out_off = c->tail_len = c->frag_len = c->frag_cap = 0;
}

static void conn_done(struct conn *c) {
    if (c->state == C_CLOSING)
        G.closing--;
    c->state = C_DONE;
    wsc_free(c);
}

/* ---- input ---- */

static void became_open(struct conn *c) {
    c->state = C_OPEN;
    G.opening--;
    G.open++;
    if (G.mode->open)
        G.mode->open(c);
}

/* Parse the 101 answer at p[0..n). Returns bytes consumed, 0 when incomplete. */
static size_t handshake_answer(struct conn *c, uint8_t *p, size_t n) {
    uint8_t *end = memmem(p, n, "\r\n\r\n", 4);
    if (!end) {
        if (n > 16384)
            conn_fail(c, "handshake answer longer than 16 KiB");
        return 0;
    }
    *end = 0;
    char *s = (char *)p;
    if (strncmp(s, "HTTP/1.1 101", 12) != 0) {
        char *eol = strstr(s, "\r\n");
        if (eol)
            *eol = 0;
        conn_fail(c, "handshake refused: \"%s\"", s);
    }
    char want[HANDSHAKE_ACCEPT_LEN + 1];
    handshake_accept_key(c->key, strlen(c->key), want);
    int ok = 0;
    for (char *line = strstr(s, "\r\n"); line; line = strstr(line, "\r\n")) {
        line += 2;
        if (strncasecmp(line, "Sec-WebSocket-Accept:", 21) == 0) {
            char *v = line + 21;
            while (*v == ' ' || *v == '\t')
                v++;
            ok = strncmp(v, want, 28) == 0 && (v[28] == '\r' || v[28] == 0 || v[28] == ' ');
            if (!ok)
                conn_fail(c, "wrong Sec-WebSocket-Accept (expected %s)", want);
        }
    }
    if (!ok)
        conn_fail(c, "handshake answer has no Sec-WebSocket-Accept");
    became_open(c);
    return (size_t)(end + 4 - p);
}

static void frag_append(struct conn *c, const uint8_t *p, size_t n) {
    if (c->frag_len + n > c->frag_cap) {
        size_t cap = c->frag_cap ? c->frag_cap : 1024;
        while (cap < c->frag_len + n)
            cap *= 2;
        c->frag = realloc(c->frag, cap);
        if (!c->frag)
            sb_fail("out of memory");
        c->frag_cap = cap;
    }
    memcpy(c->frag + c->frag_len, p, n);
    c->frag_len += n;
}

static void control_frame(struct conn *c, int op, uint8_t *p, size_t n) {
    if (op == 0x9) { /* ping: answer with a pong */
        wsc_frame(c, 0xA, p, n, (uint32_t)rng_next(&c->seed));
    } else if (op == 0x8) {
        unsigned code = n >= 2 ? (unsigned)p[0] << 8 | p[1] : 1005;
        if (c->state == C_CLOSING) {
            conn_done(c);
            return;
        }
        if (G.expect_close && code == G.expect_close && c->state == C_OPEN) {
            /* the server is closing, as this run expects: answer and wait for its TCP close */
            if (!G.closes++)
                G.close_first = G.now;
            G.close_last = G.now;
            c->state = C_CLOSING;
            G.open--;
            G.closing++;
            uint8_t echo[2] = {(uint8_t)(code >> 8), (uint8_t)code};
            wsc_frame(c, 0x8, echo, 2, (uint32_t)rng_next(&c->seed));
            wsc_flush(c);
            return;
        }
        conn_fail(c, "server closed the connection unexpectedly (close %u \"%.*s\")", code,
                  n > 2 ? (int)(n - 2) : 0, n > 2 ? (char *)p + 2 : "");
    }
}

/* --deflate: the server's messages compress with 15-bit windows and context
 * takeover (what it answers a bare "permessage-deflate" offer): inflate as the
 * server would inflate a client using those parameters. */
static void inflated_message(struct conn *c, int op, const uint8_t *p, size_t len) {
    static struct deflate_config cfg;
    if (!c->zd) {
        deflate_config_default(&cfg);
        struct deflate_params prm = {0, 0, 15, 15, 0, 0};
        c->zd = malloc(sizeof *c->zd);
        if (!c->zd)
            sb_fail("out of memory");
        deflate_init(c->zd, &cfg, &prm);
    }
    uint8_t *out = NULL;
    size_t olen = 0;
    if (deflate_inflate_message(c->zd, p, len, (size_t)1 << 31, &out, &olen) < 0)
        conn_fail(c, "compressed message does not inflate");
    if (c->state == C_OPEN)
        G.mode->message(c, op, out ? out : (uint8_t *)"", olen);
    free(out);
}

/* Parse frames at p[0..n). Returns bytes consumed; stops early if c is done. */
static size_t frames(struct conn *c, uint8_t *p, size_t n) {
    size_t off = 0;
    while (c->state != C_DONE && n - off >= 2) {
        uint8_t *f = p + off;
        size_t avail = n - off;
        int fin = f[0] & 0x80, op = f[0] & 0x0f, masked = f[1] & 0x80;
        uint64_t len = f[1] & 0x7f;
        size_t h = 2;
        if (len == 126) {
            if (avail < 4)
                break;
            len = (uint64_t)f[2] << 8 | f[3];
            h = 4;
        } else if (len == 127) {
            if (avail < 10)
                break;
            len = 0;
            for (int i = 0; i < 8; i++)
                len = len << 8 | f[2 + i];
            h = 10;
        }
        if (masked)
            h += 4;
        if (len > (1ull << 31))
            conn_fail(c, "frame of %llu bytes", (unsigned long long)len);
        if (avail < h + len)
            break;
        off += h + (size_t)len;
        if (op < 0x8)
            G.wire_in += h + (size_t)len;
        if (G.o.raw) {
            if (c->state == C_OPEN)
                G.mode->message(c, 0, f, h + (size_t)len);
            continue;
        }
        if (masked)
            conn_fail(c, "server frame is masked");
        if (f[0] & (G.o.deflate && (op == 1 || op == 2) ? 0x30 : 0x70))
            conn_fail(c, "server frame has RSV bits set (0x%02x)", f[0]);
        if (f[0] & 0x40) { /* compressed (--deflate): whole messages only */
            if (!fin)
                conn_fail(c, "fragmented compressed message (not supported by sbload)");
            inflated_message(c, op, f + h, (size_t)len);
            continue;
        }
        uint8_t *pl = f + h;
        if (op >= 0x8) {
            if (!fin || len > 125)
                conn_fail(c, "bad control frame (opcode %d, %llu bytes)", op,
                          (unsigned long long)len);
            control_frame(c, op, pl, (size_t)len);
            continue;
        }
        if (op == 0) {
            if (!c->frag_op)
                conn_fail(c, "continuation frame outside a message");
            frag_append(c, pl, (size_t)len);
            if (fin) {
                int mop = c->frag_op;
                c->frag_op = 0;
                if (c->state == C_OPEN)
                    G.mode->message(c, mop, c->frag, c->frag_len);
                c->frag_len = 0;
            }
        } else if (op == 1 || op == 2) {
            if (c->frag_op)
                conn_fail(c, "new message inside a fragmented one");
            if (fin) {
                if (c->state == C_OPEN)
                    G.mode->message(c, op, pl, (size_t)len);
            } else {
                c->frag_op = (uint8_t)op;
                frag_append(c, pl, (size_t)len);
            }
        } else {
            conn_fail(c, "reserved opcode %d", op);
        }
    }
    return off;
}

/* One read and what it completes; 1 when bytes came and c is still there. */
static int read_once(struct conn *c) {
    size_t have = c->tail_len;
    if (have)
        memcpy(G.rbuf, c->tail, have);
    ssize_t r = io_read(c, G.rbuf + have, G.rcap - have);
    if (r < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return 0;
        if (c->state == C_CLOSING) {
            conn_done(c);
            return 0;
        }
        conn_fail(c, "read: %s", strerror(errno));
    }
    if (r == 0) {
        if (c->state == C_CLOSING) {
            conn_done(c);
            return 0;
        }
        conn_fail(c, "server closed the TCP connection unexpectedly (no close frame)");
    }
    size_t n = have + (size_t)r, off = 0;
    if (c->state == C_HANDSHAKE) {
        off = handshake_answer(c, G.rbuf, n);
        if (off == 0) {
            if (n > have) {
                free(c->tail);
                c->tail = malloc(n);
                if (!c->tail)
                    sb_fail("out of memory");
                memcpy(c->tail, G.rbuf, n);
                c->tail_len = n;
            }
            return 1;
        }
    }
    off += frames(c, G.rbuf + off, n - off);
    if (c->state == C_DONE)
        return 0;
    size_t left = n - off;
    if (left != c->tail_len || left) {
        if (left > c->tail_len || !c->tail) {
            free(c->tail);
            c->tail = left ? malloc(left) : NULL;
            if (left && !c->tail)
                sb_fail("out of memory");
        }
        if (left)
            memcpy(c->tail, G.rbuf + off, left);
        else {
            free(c->tail);
            c->tail = NULL;
        }
        c->tail_len = left;
    }
    if (c->out_len > c->out_off)
        wsc_flush(c);
    return c->state != C_DONE;
}

static void on_readable(struct conn *c) {
    if (!read_once(c))
        return;
    /* records already inside OpenSSL make no socket readable: take them now */
    while (c->ssl && c->state != C_DONE && SSL_has_pending(c->ssl))
        if (!read_once(c))
            break; /* a partial record: wait for the socket */
}

static void send_request(struct conn *c);

/* wss://: drive the TLS handshake; the HTTP upgrade follows it. */
static void tls_step(struct conn *c) {
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        if (!G.tls_desc[0])
            snprintf(G.tls_desc, sizeof G.tls_desc, "%s %s", SSL_get_version(c->ssl),
                     SSL_get_cipher_name(c->ssl));
        ep_set(c, EPOLL_CTL_MOD, EPOLLIN);
        c->want_out = 0;
        send_request(c);
        return;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ)
        ep_set(c, EPOLL_CTL_MOD, EPOLLIN);
    else if (e == SSL_ERROR_WANT_WRITE)
        ep_set(c, EPOLL_CTL_MOD, EPOLLIN | EPOLLOUT);
    else {
        unsigned long err = ERR_get_error();
        char buf[256] = "closed by the server";
        if (err)
            ERR_error_string_n(err, buf, sizeof buf);
        conn_fail(c, "TLS handshake failed: %s", buf);
    }
    ERR_clear_error();
}

static void on_connected(struct conn *c) {
    int err = 0;
    socklen_t l = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
    if (err)
        conn_fail(c, "connect: %s", strerror(err));
    ep_set(c, EPOLL_CTL_MOD, EPOLLIN);
    if (G.o.raw) {
        became_open(c);
        if (c->out_len > c->out_off)
            wsc_flush(c);
        return;
    }
    if (G.tls) {
        c->ssl = SSL_new(G.tls);
        if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1)
            conn_fail(c, "SSL_new failed");
        SSL_set_connect_state(c->ssl);
        SSL_set_tlsext_host_name(c->ssl, G.host);
        c->state = C_TLS;
        tls_step(c);
        return;
    }
    send_request(c);
}

static void send_request(struct conn *c) {
    uint8_t raw[16];
    for (int i = 0; i < 16; i += 8) {
        uint64_t v = rng_next(&c->seed);
        memcpy(raw + i, &v, 8);
    }
    base64(raw, 16, c->key);
    char req[2400];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n%s\r\n",
                     G.path, G.host, G.port, c->key,
                     G.o.deflate ? "Sec-WebSocket-Extensions: permessage-deflate\r\n" : "");
    c->state = C_HANDSHAKE;
    wsc_write(c, (uint8_t *)req, (size_t)n);
    wsc_flush(c);
}

void wsc_turn(int timeout_ms) {
    struct epoll_event evs[256];
    if (G.deadline && G.now > G.deadline)
        sb_fail("run did not finish before its deadline (--timeout %.0f s): %ld connections "
                "opening, %ld open, %ld closing",
                G.o.timeout, G.opening, G.open, G.closing);
    int n = epoll_wait(G.ep, evs, 256, timeout_ms);
    if (n < 0 && errno != EINTR)
        sb_fail("epoll_wait: %s", strerror(errno));
    G.now = now_ns();
    for (int i = 0; i < n; i++) {
        struct conn *c = evs[i].data.ptr;
        if (c->state == C_DONE)
            continue;
        if (c->state == C_CONNECTING) {
            on_connected(c);
            continue;
        }
        if (c->state == C_TLS) {
            tls_step(c);
            continue;
        }
        if (evs[i].events & EPOLLOUT)
            wsc_flush(c);
        if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
            on_readable(c);
    }
}
