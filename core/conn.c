/* conn.c — one connection's life: HTTP -> WebSocket -> closing -> closed.
 *
 * Reads land in the server's loop-wide buffer; the HTTP phase copies only an
 * incomplete request head into hbuf, the WebSocket phase hands the bytes to the
 * frame decoder, which copies only partial frames. Output is queued as
 * references to refcounted buffers and written once per loop iteration. */
#define _GNU_SOURCE
#include "conn.h"

#include <errno.h>
#include <event2/event.h>
#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "handshake.h"
#include "http.h"
#include "log.h"
#include "loop.h"
#include "tls.h"
#include "utf8.h"

#define IOV_BATCH 64
/* A frame this large is written straight from the sender's bytes when nothing
 * is queued before it (send_direct): a copy of it costs about what a system
 * call does, and corking it with others would save little. */
#define CONN_DIRECT_MIN (16u << 10)
#define FILE_CHUNK (64u << 10)  /* a file answer is read this much at a time */
#define FILE_AHEAD (128u << 10) /* and kept at most this far ahead of the socket */
#define DEFLATE_TRIM_IDLE 2.0 /* seconds without input before zlib state is parked */

static void conn_on_event(evutil_socket_t fd, short what, void *arg);
static void conn_kill(struct conn *c, uint16_t code);

/* ---- output queue --------------------------------------------------------- */

/* writev, by the socket layer's own call: sendmsg skips the file layer's
 * position lock and iterator set-up that writev pays per call, and a peer
 * gone away is an error (EPIPE), not a signal. */
static ssize_t sock_writev(int fd, struct iovec *iov, int n) {
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
    return sendmsg(fd, &mh, MSG_NOSIGNAL);
}

static void mark_flush(struct conn *c) {
    if (!c->in_flush && c->state != CONN_DEAD) {
        c->in_flush = 1;
        c->flush_next = c->srv->flush;
        c->srv->flush = c;
    }
}

static int queue_push(struct conn *c, struct outbuf *b) {
    if (outq_push(&c->out, b) < 0)
        return -1;
    mark_flush(c);
    return 0;
}

static int queue_bytes(struct conn *c, const void *a, size_t alen, const void *p, size_t plen) {
    if (outq_append(&c->out, a, alen, p, plen) < 0)
        return -1;
    mark_flush(c);
    return 0;
}

/* The event follows the flags: read unless paused (a TLS write that waits for
 * the peer's bytes reads even then), write while output is waiting. */
/* Reads are on: not paused, and not held by a waiting handler (a lingering
 * connection only discards what it reads, so it reads even then). */
static int reads_on(const struct conn *c) {
    return !c->read_paused && (!c->holds || c->state == CONN_LINGER);
}

static void update_events(struct conn *c) {
    if (c->state == CONN_DEAD)
        return; /* its event is gone for good */
    int rd = reads_on(c) || c->tls_write_wants_read;
    /* held: notice a peer that leaves (EPOLLRDHUP) without reading its bytes */
    int gone = c->holds && !rd && (c->state == CONN_WS || c->state == CONN_CLOSING);
    short ev = (short)((rd ? EV_READ : 0) | (c->want_write ? EV_WRITE : 0) |
                       (gone ? EV_CLOSED : 0) | EV_PERSIST);
    event_del(&c->ev);
    event_assign(&c->ev, c->srv->base, c->fd, ev, conn_on_event, c);
    if (ev != EV_PERSIST)
        event_add(&c->ev, NULL);
    /* decrypted bytes already inside OpenSSL make no socket readable */
    if (reads_on(c) && c->ssl && tls_pending(c->ssl))
        event_active(&c->ev, EV_READ, 1);
}

static void set_read(struct conn *c, int on) {
    if (c->read_paused == !on)
        return;
    c->read_paused = !on;
    update_events(c);
}

static void set_write(struct conn *c, int on) {
    if (c->want_write == on)
        return;
    c->want_write = (uint8_t)on;
    update_events(c);
}

static void conn_linger(struct conn *c, int wait_eof);

/* Past --out-max: the peer will not read what is queued, so drop what has not
 * started to go out and tell it why in a close frame, which fits now. */
static void conn_overflow(struct conn *c) {
    struct sb_server *srv = c->srv;
    char rb[64];
    conn_remote(c, rb, sizeof rb);
    log_conn(LOG_WARN, c->id, rb,
             "conn %llu (%s): %zu bytes queued, past --out-max; closing with 1008",
             (unsigned long long)c->id, rb, c->out.bytes);
    srv->stats.slow_closed++;
    outq_drop_unstarted(&c->out);
    if (!c->close_sent) {
        static const char why[] = "\x03\xf0" "output buffer full"; /* 1008 */
        uint8_t hdr[10];
        size_t hl = ws_frame_header(hdr, WS_OP_CLOSE, 1, 0, sizeof why - 1);
        if (queue_bytes(c, hdr, hl, why, sizeof why - 1) < 0) {
            conn_kill(c, WS_CLOSE_POLICY);
            return;
        }
        c->close_sent = 1;
        srv->stats.close_sent[sb_close_bucket(WS_CLOSE_POLICY)]++;
    }
    c->close_code = WS_CLOSE_POLICY;
    c->over_high = 0;
    conn_linger(c, 0);
}

/* After anything was queued: the backpressure bookkeeping. Returns 1 below the
 * high mark, 0 past it, -1 past the hard cap (the connection is closed). */
static int after_queue(struct conn *c) {
    struct sb_server *srv = c->srv;
    if (c->out.bytes <= srv->cfg.out_high)
        return 1;
    if (c->out.bytes > srv->cfg.out_max) {
        conn_overflow(c);
        return -1;
    }
    if (!c->over_high) {
        c->over_high = 1;
        c->over_since = srv->now;
        c->drain_pending = 1;
        srv->stats.backpressure_events++;
        set_read(c, 0); /* the peer reads slower than it writes: stop reading */
    }
    return 0;
}

/* A frame of CONN_DIRECT_MIN bytes or more (or the 101) with nothing queued
 * before it: write it now from the caller's bytes, and queue (copy) only what
 * the kernel did not take. A failed write queues it all: the flush meets the error again
 * and handles it as it does every other. */
static int send_direct(struct conn *c, const uint8_t *h, size_t hl, const uint8_t *p, size_t n) {
    struct iovec iov[2] = {{(void *)h, hl}, {(void *)p, n}};
    ssize_t w;
    do
        w = sock_writev(c->fd, iov, n ? 2 : 1);
    while (w < 0 && errno == EINTR);
    size_t done = w > 0 ? (size_t)w : 0;
    if (done == hl + n)
        return 0;
    if (done < hl)
        return queue_bytes(c, h + done, hl - done, p, n);
    return queue_bytes(c, p + (done - hl), n - (done - hl), NULL, 0);
}

int conn_write(struct conn *c, const void *data, size_t len) {
    if (c->state == CONN_DEAD)
        return -1;
    return queue_bytes(c, data, len, NULL, 0);
}

static int can_send(const struct conn *c) {
    return c->state == CONN_WS && !c->close_sent;
}

int conn_send(struct conn *c, int opcode, const void *data, size_t len) {
    if (!can_send(c) && !(opcode == WS_OP_CLOSE && !c->close_sent &&
                          (c->state == CONN_WS || c->state == CONN_CLOSING)))
        return -1;
    uint8_t hdr[10];
    uint8_t *z = NULL; /* the compressed payload, RSV1 on the (only) frame */
    size_t zlen = 0;
    if (c->defl && (opcode == WS_OP_TEXT || opcode == WS_OP_BINARY) &&
        deflate_wants(c->defl, len) && deflate_compress_message(c->defl, data, len, 0, &z, &zlen)) {
        conn_kill(c, WS_CLOSE_INTERNAL);
        return -1;
    }
    const uint8_t *pl = z ? z : data;
    size_t plen = z ? zlen : len;
    size_t hl = ws_frame_header(hdr, opcode, 1, z != NULL, plen);
    int qr = plen >= CONN_DIRECT_MIN && !c->out.len && !c->is_tls
                 ? send_direct(c, hdr, hl, pl, plen)
                 : queue_bytes(c, hdr, hl, pl, plen);
    free(z);
    if (qr < 0) {
        conn_kill(c, WS_CLOSE_INTERNAL);
        return -1;
    }
    if (opcode == WS_OP_TEXT || opcode == WS_OP_BINARY) {
        c->srv->stats.msgs_out++;
        c->srv->stats.bytes_out += len;
    } else if (opcode == WS_OP_CLOSE) {
        const uint8_t *p = data;
        c->srv->stats.close_sent[sb_close_bucket(len >= 2 ? (unsigned)(p[0] << 8 | p[1]) : 1005)]++;
    }
    return after_queue(c);
}

int conn_send_shared(struct conn *c, struct outbuf *b) {
    struct sb_server *srv = c->srv;
    if (!can_send(c))
        return -1;
    if (c->over_high) { /* a slow subscriber: its publishes are dropped */
        srv->stats.dropped_deliveries++;
        return -1;
    }
    b->refs++;
    if (queue_push(c, b) < 0) {
        b->refs--;
        return -1;
    }
    srv->stats.deliveries++;
    srv->stats.msgs_out++;
    /* payload bytes: the frame less its header (2, 4 or 10 bytes) */
    uint8_t l7 = b->data[1] & 0x7f;
    srv->stats.bytes_out += b->len - (l7 < 126 ? 2u : l7 == 126 ? 4u : 10u);
    return after_queue(c);
}

/* ---- life cycle ----------------------------------------------------------- */

const char *conn_remote(const struct conn *c, char *buf, size_t cap) {
    char host[INET6_ADDRSTRLEN] = "?";
    if (c->raddr_family == AF_INET) {
        evutil_inet_ntop(AF_INET, c->raddr, host, sizeof host);
        snprintf(buf, cap, "%s:%u", host, (unsigned)c->rport);
    } else if (c->raddr_family == AF_INET6) {
        evutil_inet_ntop(AF_INET6, c->raddr, host, sizeof host);
        snprintf(buf, cap, "[%s]:%u", host, (unsigned)c->rport);
    } else {
        snprintf(buf, cap, "?");
    }
    return buf;
}

struct conn *conn_new(struct sb_server *srv, int fd, const struct sockaddr *sa, int salen) {
    struct conn *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        return NULL;
    }
    c->srv = srv;
    c->fd = fd;
    c->id = ++srv->next_id;
    c->state = CONN_HTTP;
    c->ws_ref = -2; /* LUA_NOREF */
    c->keep_alive = 1;
    c->last_rx = srv->now;
    c->deadline = srv->now + srv->cfg.handshake_timeout;
    /* the peer's address in 19 bytes; formatted only when asked for */
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        memcpy(c->raddr, &s4->sin_addr, 4);
        c->rport = ntohs(s4->sin_port);
        c->raddr_family = AF_INET;
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        memcpy(c->raddr, &s6->sin6_addr, 16);
        c->rport = ntohs(s6->sin6_port);
        c->raddr_family = AF_INET6;
    }
    (void)salen;
    event_assign(&c->ev, srv->base, fd, EV_READ | EV_PERSIST, conn_on_event, c);
    event_add(&c->ev, NULL);
    c->next = srv->all;
    if (srv->all)
        srv->all->prev = c;
    srv->all = c;
    srv->stats.accepted++;
    srv->stats.open++;
    return c;
}

void conn_start_tls(struct conn *c, struct tls_ctx *ctx) {
    c->ssl = tls_conn_new(ctx, c->fd);
    if (!c->ssl) {
        conn_abort(c, WS_CLOSE_ABNORMAL);
        return;
    }
    c->is_tls = 1;
}

size_t conn_extensions(const struct conn *c, char buf[DEFLATE_RESPONSE_MAX]) {
    buf[0] = 0;
    return c->defl ? deflate_response(&c->defl->p, buf) : 0;
}

/* Tear down now (from the loop's point of view): stop I/O and put the conn on
 * the reap list. The memory is released in conn_reap_all. */
static void conn_kill(struct conn *c, uint16_t code) {
    if (c->state == CONN_DEAD)
        return;
    if (!c->close_code || (c->state == CONN_WS && !c->close_rcvd && !c->close_sent))
        c->close_code = code;
    c->state = CONN_DEAD;
    c->deadline = 0;
    event_del(&c->ev);
    c->reap_next = c->srv->reap;
    c->srv->reap = c;
}

void conn_abort(struct conn *c, uint16_t code) {
    conn_kill(c, code);
}

static void conn_linger(struct conn *c, int wait_eof) {
    if (c->state == CONN_DEAD)
        return;
    c->state = CONN_LINGER;
    c->deadline = c->srv->now + c->srv->cfg.close_timeout;
    c->linger_eof = (uint8_t)wait_eof;
    set_read(c, 1);
    mark_flush(c);
}

void conn_close(struct conn *c, unsigned code, const char *reason, size_t reason_len) {
    if (c->state != CONN_WS || c->close_sent)
        return;
    uint8_t p[125] = {0};
    size_t n = 0;
    if (code) {
        p[0] = (uint8_t)(code >> 8);
        p[1] = (uint8_t)code;
        n = 2;
        if (reason_len > 123)
            reason_len = 123;
        memcpy(p + 2, reason, reason_len);
        n += reason_len;
    }
    if (conn_send(c, WS_OP_CLOSE, p, n) < 0)
        return; /* the send failed the connection (past --out-max, OOM) */
    c->close_sent = 1;
    c->close_code = (uint16_t)(code ? code : WS_CLOSE_NO_STATUS);
    c->state = CONN_CLOSING;
    c->deadline = c->srv->now + c->srv->cfg.close_timeout;
    set_read(c, 1);
}

/* Fail the WebSocket connection (RFC 6455 §7.1.7): send a close frame with
 * the code, then close once it is written; reads are discarded meanwhile. */
static void conn_fail(struct conn *c, unsigned code, const char *reason) {
    char rb[64];
    conn_remote(c, rb, sizeof rb);
    log_conn(LOG_INFO, c->id, rb, "conn %llu (%s): closing with %u: %s", (unsigned long long)c->id,
             rb, code, reason ? reason : "");
    if (c->state == CONN_WS && !c->close_sent) {
        conn_close(c, code, reason, reason ? strlen(reason) : 0);
    }
    if (c->state == CONN_DEAD || (c->state == CONN_LINGER && c->close_code == WS_CLOSE_POLICY))
        return; /* the close frame itself overflowed: conn_overflow has decided */
    c->close_code = (uint16_t)code;
    conn_linger(c, 1);
}

/* Unlink c from srv->all, or from srv->held when it is there (no-op when
 * it is on neither any more: a held conn released to the reap). */
static void unlink_conn(struct conn *c) {
    struct sb_server *srv = c->srv;
    if (c->unlisted)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else if (c->on_held)
        srv->held = c->next;
    else
        srv->all = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->next = c->prev = NULL;
    c->unlisted = 1;
    c->on_held = 0;
}

static void conn_free(struct conn *c) {
    struct sb_server *srv = c->srv;
    unlink_conn(c);
    event_del(&c->ev); /* deleted at the kill; never re-added since */
    outq_clear(&c->out);
    if (c->file) {
        close(c->file->fd);
        free(c->file);
    }
    ws_decoder_free(&c->dec); /* zeroed until the upgrade: nothing to free then */
    free(c->hbuf);
    free(c->head);
    free(c->close_reason);
    free(c->protocol);
    free(c->pend);
    free(c->pup);
    if (c->defl) {
        deflate_free(c->defl);
        free(c->defl);
    }
    tls_conn_free(c->ssl);
    close(c->fd);
    srv->stats.open--;
    free(c);
}

void conn_reap_all(struct sb_server *srv) {
    /* Close handlers may send to, close or kill other connections (which then
     * join srv->reap): run them all first, then unlink every dead connection
     * from the flush list, and only then free. */
    struct conn *dead = NULL;
    int held = 0;
    while (srv->reap) {
        struct conn *c = srv->reap;
        srv->reap = c->reap_next;
        if (!c->holds && c->opened) {
            c->opened = 0;
            srv->stats.ws_open--;
            if (c->close_rcvd && c->close_sent)
                srv->stats.ws_closed_clean++;
            srv->conn_cb->on_close(srv->conn_ud, c, c->close_code ? c->close_code : WS_CLOSE_ABNORMAL,
                                   c->close_reason ? c->close_reason : "");
        }
        if (c->holds) { /* a handler waits (its close handler, maybe): keep it */
            if (!c->on_held && !c->unlisted)
                shutdown(c->fd, SHUT_RDWR); /* the peer sees the end now, not at the free */
            unlink_conn(c);
            c->unlisted = 0;
            c->on_held = 1;
            c->next = srv->held;
            if (srv->held)
                srv->held->prev = c;
            srv->held = c;
            held = 1;
            continue;
        }
        c->reap_next = dead;
        dead = c;
    }
    if (!dead && !held)
        return;
    for (struct conn **pp = &srv->flush; *pp;) {
        if ((*pp)->state == CONN_DEAD)
            *pp = (*pp)->flush_next;
        else
            pp = &(*pp)->flush_next;
    }
    while (dead) {
        struct conn *c = dead;
        dead = c->reap_next;
        conn_free(c);
    }
}

/* ---- writing -------------------------------------------------------------- */

/* The TLS branch of the I/O path, with writev's contract. OpenSSL may need the
 * other direction first: the flag makes the matching event retry us. */
static ssize_t tls_conn_writev(struct conn *c, struct iovec *iov, int n) {
    int want;
    ssize_t w = tls_writev(c->ssl, iov, n, &want);
    if (w >= 0)
        return w;
    errno = w == TLS_AGAIN ? EAGAIN : EPIPE;
    c->tls_write_wants_read = w == TLS_AGAIN && want == TLS_WANT_READ;
    return -1;
}

static ssize_t tls_conn_read(struct conn *c, void *buf, size_t cap) {
    int want;
    ssize_t n = tls_read(c->ssl, buf, cap, &want);
    if (n >= 0)
        return n;
    errno = n == TLS_AGAIN ? EAGAIN : EPROTO; /* a failed handshake is closed quietly */
    if (n == TLS_AGAIN && want == TLS_WANT_WRITE) {
        c->tls_read_wants_write = 1;
        set_write(c, 1);
    }
    return -1;
}

static void http_resume(struct conn *c);

/* Keep a file answer FILE_AHEAD bytes ahead of the socket, reading it in
 * chunks with pread (no blocking read of a whole file on the loop). */
static void file_refill(struct conn *c) {
    struct conn_file *f = c->file;
    while (f->left && c->out.bytes < FILE_AHEAD) {
        size_t want = f->left < FILE_CHUNK ? (size_t)f->left : FILE_CHUNK;
        struct outbuf *b = outbuf_new(want);
        ssize_t r = b ? pread(f->fd, b->data, want, (off_t)f->off) : -1;
        if (r < 0 && errno == EINTR) {
            outbuf_unref(b);
            continue;
        }
        if (r <= 0 || queue_push(c, (b->len = (uint32_t)r, b)) < 0) {
            char rb[64];
            conn_remote(c, rb, sizeof rb);
            log_conn(LOG_WARN, c->id, rb, "conn %llu (%s): a file answer could not be read: %s",
                     (unsigned long long)c->id, rb, r == 0 ? "file shrank" : strerror(errno));
            outbuf_unref(b);
            conn_kill(c, WS_CLOSE_ABNORMAL); /* its length is promised: end it */
            return;
        }
        f->off += (uint64_t)r;
        f->left -= (uint64_t)r;
    }
    if (!f->left) {
        close(f->fd);
        free(f);
        c->file = NULL;
    }
}

/* Many small segments (a subscriber's share of the publishes of one
 * iteration, each its own shared frame) cost the kernel more per segment
 * than a copy costs here: while they are small, copy the leading ones into
 * one buffer, so the kernel gets a few long segments. What the kernel does
 * not take stays queued as before (outq_consume counts bytes). */
#define GATHER_MAX 16384 /* bytes copied per write at most */
#define GATHER_SEG 512   /* only segments this short are copied */
static uint8_t gather_buf[GATHER_MAX];

static int gather_small(struct iovec *iov, int n) {
    size_t used = 0;
    int k = 0;
    while (k < n && iov[k].iov_len <= GATHER_SEG && used + iov[k].iov_len <= GATHER_MAX) {
        memcpy(gather_buf + used, iov[k].iov_base, iov[k].iov_len);
        used += iov[k].iov_len;
        k++;
    }
    if (k < 2)
        return n; /* nothing gained */
    iov[0].iov_base = gather_buf;
    iov[0].iov_len = used;
    memmove(iov + 1, iov + k, sizeof *iov * (size_t)(n - k));
    return n - k + 1;
}

static void conn_flush(struct conn *c) {
    struct sb_server *srv = c->srv;
    for (;;) {
        if (c->file)
            file_refill(c);
        if (c->state == CONN_DEAD || !c->out.len)
            break;
        struct iovec iov[IOV_BATCH];
        int n = outq_iov(&c->out, iov, IOV_BATCH);
        if (n > 2 && !c->is_tls)
            n = gather_small(iov, n);
        ssize_t w = c->is_tls ? tls_conn_writev(c, iov, n) : sock_writev(c->fd, iov, n);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                set_write(c, !c->tls_write_wants_read);
                if (c->tls_write_wants_read)
                    update_events(c); /* read even while paused: the write needs it */
                return;
            }
            if (errno == EINTR)
                continue;
            conn_kill(c, WS_CLOSE_ABNORMAL);
            return;
        }
        outq_consume(&c->out, (size_t)w);
        if (c->out.len) { /* the kernel took less than offered */
            set_write(c, 1);
            break;
        }
    }
    if (c->state == CONN_DEAD)
        return;
    if (!c->out.len) {
        /* an open WebSocket keeps its empty ring for the next message (a busy
         * subscriber gets one every iteration; conn_sweep frees idle ones once
         * a second); the handshake's answer frees it at once, so thousands of
         * fresh idle connections leave no freed rings scattered among them */
        if (c->state != CONN_WS || c->opened_now)
            outq_trim(&c->out);
        c->opened_now = 0;
        set_write(c, 0);
    }
    if (c->over_high && c->out.bytes < srv->cfg.out_low) {
        c->over_high = 0;
        if (c->state == CONN_WS || c->state == CONN_CLOSING)
            set_read(c, 1);
        if (c->drain_pending && c->state == CONN_WS && !c->holds) {
            c->drain_pending = 0;
            srv->conn_cb->on_drain(srv->conn_ud, c);
        }
    }
    if (c->state == CONN_LINGER && !c->out.len) {
        if (c->ssl)
            tls_conn_shutdown(c->ssl);
        if (c->linger_eof) {
            shutdown(c->fd, SHUT_WR); /* wait for the peer's EOF, bounded by deadline */
        } else {
            conn_kill(c, c->close_code);
        }
    }
    if (c->http_wait && c->state == CONN_HTTP && !c->holds && !c->file &&
        c->out.bytes < srv->cfg.out_low)
        http_resume(c);
}

void conn_flush_all(struct sb_server *srv) {
    /* Handlers run from a flush (drain) may queue more: a few rounds at most. */
    for (int round = 0; round < 4 && srv->flush; round++) {
        struct conn *list = srv->flush;
        srv->flush = NULL;
        while (list) {
            struct conn *c = list;
            list = c->flush_next;
            c->flush_next = NULL;
            if (c->state == CONN_DEAD)
                continue; /* on the reap list; flush_next reused there */
            c->in_flush = 0;
            conn_flush(c);
        }
    }
}

/* ---- HTTP phase ------------------------------------------------------------ */

/* Queue an HTTP answer: the head, then the body or the file (streamed from
 * the flush path). Takes ownership of everything in res. Returns 0, or -1 when
 * the connection is closing after it. */
static int respond(struct conn *c, struct conn_response *res, int head_only) {
    if (res->close)
        c->keep_alive = 0;
    uint64_t len = res->file_fd >= 0 ? res->file_len : res->body_len;
    size_t hcap = 160 + (res->headers ? strlen(res->headers) : 0);
    char stackbuf[1024];
    char *head = hcap <= sizeof stackbuf ? stackbuf : malloc(hcap);
    long hl = head ? http_format_head(head, hcap, res->status, res->headers,
                                      res->no_length ? -1 : (long long)len, c->keep_alive)
                   : -1;
    int ok = hl > 0 && queue_bytes(c, head, (size_t)hl, head_only ? NULL : res->body,
                                   head_only || !res->body ? 0 : res->body_len) == 0;
    if (head != stackbuf)
        free(head);
    if (ok && res->file_fd >= 0 && !head_only && res->file_len) {
        c->file = malloc(sizeof *c->file);
        if (c->file) {
            *c->file = (struct conn_file){res->file_fd, res->file_off, res->file_len};
            res->file_fd = -1;
        } else {
            ok = 0;
        }
    }
    if (res->file_fd >= 0)
        close(res->file_fd);
    free(res->headers);
    free(res->body);
    *res = (struct conn_response){.file_fd = -1};
    if (!ok) {
        conn_kill(c, WS_CLOSE_ABNORMAL);
        return -1;
    }
    if (!c->keep_alive) {
        conn_linger(c, 1);
        return -1;
    }
    return 0;
}

/* Answer with an error status (text/plain, extra header lines, the body or
 * the status line's words) and close once it is written. */
static void http_error_len(struct conn *c, int status, const char *extra, const char *body,
                           size_t blen) {
    char text[256];
    if (!body) {
        snprintf(text, sizeof text, "%d %s\n", status, http_status_text(status));
        body = text;
        blen = strlen(text);
    }
    static const char ctype[] = "Content-Type: text/plain; charset=utf-8\r\n";
    size_t el = extra ? strlen(extra) : 0;
    struct conn_response res = {.status = status, .file_fd = -1, .close = 1};
    res.headers = malloc(sizeof ctype + el);
    res.body = malloc(blen + 1);
    if (!res.headers || !res.body) {
        free(res.headers);
        free(res.body);
        conn_kill(c, WS_CLOSE_ABNORMAL);
        return;
    }
    memcpy(res.headers, ctype, sizeof ctype - 1);
    memcpy(res.headers + sizeof ctype - 1, extra ? extra : "", el + 1);
    memcpy(res.body, body, blen);
    res.body_len = blen;
    respond(c, &res, 0);
}

static void http_error(struct conn *c, int status, const char *extra, const char *body) {
    http_error_len(c, status, extra, body, body ? strlen(body) : 0);
}

static void count_refusal(struct sb_server *srv, int status) {
    srv->stats.handshakes_refused++;
    if (status > 0 && status < 600)
        srv->stats.handshake_status[status]++;
}

struct proto_pick {
    const char *want;
    int found;
};

static void pick_proto(void *ud, const char *p, size_t len) {
    struct proto_pick *pp = ud;
    if (strlen(pp->want) == len && memcmp(pp->want, p, len) == 0)
        pp->found = 1;
}

/* permessage-deflate from the request's Sec-WebSocket-Extensions headers:
 * 1 with *p and the response header line in line, or 0 (no extension). */
static int negotiate_deflate(struct conn *c, const struct http_request *req, int off,
                             struct deflate_params *p, char *line, size_t cap) {
    const struct deflate_config *dc = &c->srv->cfg.deflate;
    if (!dc->enabled || off)
        return 0;
    const char *vals[16];
    size_t lens[16], n = 0;
    for (size_t i = 0; i < req->num_headers && n < 16; i++) {
        const struct http_header *h = &req->headers[i];
        if (h->name_len == 24 && strncasecmp(h->name, "sec-websocket-extensions", 24) == 0) {
            vals[n] = h->value;
            lens[n++] = h->value_len;
        }
    }
    char resp[DEFLATE_RESPONSE_MAX];
    if (!n || !deflate_negotiate(dc, vals, lens, n, p, resp))
        return 0;
    snprintf(line, cap, "Sec-WebSocket-Extensions: %s\r\n", resp);
    return 1;
}

/* Keep a compact copy of the request head (a valid head: request line, the
 * headers a script may read, the empty line). Fields that only the handshake
 * needed are left out, and the usual handshake fields become bits in
 * c->head_std (ws.headers shows them again). Returns 0 or -1. */
static int keep_head(struct conn *c, const struct http_request *req) {
    /* the two largest fields no script needs (ws.extensions has the outcome) */
    static const char *const drop[] = {"sec-websocket-key", "sec-websocket-extensions"};
    static const struct {
        const char *name, *value;
        unsigned bit;
    } std[] = {{"upgrade", "websocket", CONN_STD_UPGRADE},
               {"connection", "Upgrade", CONN_STD_CONNECTION},
               {"sec-websocket-version", "13", CONN_STD_VERSION}};
    /* a usual field becomes a bit only when it came once, with the usual value */
    unsigned seen[3] = {0, 0, 0}, usual = 0;
    for (size_t i = 0; i < req->num_headers; i++)
        for (size_t k = 0; k < 3; k++) {
            const struct http_header *hd = &req->headers[i];
            if (hd->name_len == strlen(std[k].name) &&
                !strncasecmp(hd->name, std[k].name, hd->name_len)) {
                seen[k]++;
                if (hd->value_len == strlen(std[k].value) &&
                    !memcmp(hd->value, std[k].value, hd->value_len))
                    usual |= std[k].bit;
            }
        }
    for (size_t k = 0; k < 3; k++)
        if (seen[k] != 1)
            usual &= ~std[k].bit;
    char *h = NULL;
    size_t n = 0;
    /* pass 0 measures, pass 1 writes: one allocation of the exact size */
    for (int pass = 0; pass < 2; pass++) {
        n = 0;
#define PUT(p, l)                                                                                  \
    do {                                                                                           \
        if (pass)                                                                                  \
            memcpy(h + n, (p), (l));                                                               \
        n += (l);                                                                                  \
    } while (0)
        PUT(req->method, req->method_len);
        PUT(" ", 1);
        PUT(req->target, req->target_len);
        PUT(" HTTP/1.1\r\n", 11);
        for (size_t i = 0; i < req->num_headers; i++) {
            const struct http_header *hd = &req->headers[i];
            int skip = 0;
            for (size_t d = 0; d < sizeof drop / sizeof drop[0] && !skip; d++)
                skip = hd->name_len == strlen(drop[d]) &&
                       !strncasecmp(hd->name, drop[d], hd->name_len);
            for (size_t k = 0; k < 3 && !skip; k++)
                skip = (usual & std[k].bit) && hd->name_len == strlen(std[k].name) &&
                       !strncasecmp(hd->name, std[k].name, hd->name_len);
            if (skip)
                continue;
            PUT(hd->name, hd->name_len);
            PUT(": ", 2);
            PUT(hd->value, hd->value_len);
            PUT("\r\n", 2);
        }
        PUT("\r\n", 2);
#undef PUT
        if (!pass && !(h = malloc(n)))
            return -1;
    }
    c->head = h;
    c->head_len = (uint32_t)n;
    c->head_std = usual & 7;
    return 0;
}

/* What an upgrade whose answer is pending needs from its request (whose bytes
 * are gone by then). Owned by the conn (c->pup) until conn_upgrade_done. */
struct conn_pending_upgrade {
    char accept[HANDSHAKE_ACCEPT_LEN + 1];
    int deflate_on;
    struct deflate_params dp;
    char ext[DEFLATE_RESPONSE_MAX + 32];
    char protos[512]; /* the client's Sec-WebSocket-Protocol offers, joined */
    size_t protos_len;
    char path[256]; /* for log lines */
};

static void keep_proto(void *ud, const char *p, size_t len) {
    struct conn_pending_upgrade *pu = ud;
    size_t room = sizeof pu->protos - 1;
    if (pu->protos_len + len + 2 > room)
        return;
    if (pu->protos_len) {
        memcpy(pu->protos + pu->protos_len, ", ", 2);
        pu->protos_len += 2;
    }
    memcpy(pu->protos + pu->protos_len, p, len);
    pu->protos_len += len;
}

static int upgrade_complete(struct conn *c, struct conn_upgrade *ans,
                            const struct http_request *req, struct conn_pending_upgrade *pu);

static void upgrade_free(struct conn_upgrade *ans) {
    free(ans->protocol);
    free(ans->headers);
    free(ans->body);
}

/* Complete the upgrade; returns 0, or -1 when the connection was refused. */
static int do_upgrade(struct conn *c, const struct http_request *req, const char *path) {
    struct sb_server *srv = c->srv;
    const char *key;
    size_t key_len;
    const char *reason = NULL;
    int st = handshake_validate(req, &key, &key_len, &reason);
    if (!st && (req->content_length > 0 || http_find_header(req, "Transfer-Encoding"))) {
        st = 400; /* its bytes would be read as frames */
        reason = "an upgrade request carries no body";
    }
    if (st) {
        count_refusal(srv, st);
        char body[160];
        snprintf(body, sizeof body, "%s\n", reason ? reason : http_status_text(st));
        http_error(c, st, st == 426 ? "Sec-WebSocket-Version: 13\r\n" : NULL, body);
        return -1;
    }
    if (srv->stopping) {
        count_refusal(srv, 503);
        http_error(c, 503, "Retry-After: 5\r\n", "server is shutting down\n");
        return -1;
    }
    /* keep the head for ws.path / ws.query / ws.headers, without the fields
     * only the handshake needed: an idle connection carries no more than that */
    if (keep_head(c, req) < 0) {
        http_error(c, 500, NULL, NULL);
        return -1;
    }

    struct conn_upgrade ans = {0};
    srv->conn_cb->on_upgrade(srv->conn_ud, c, req, path, &ans);
    struct conn_pending_upgrade pu;
    memset(&pu, 0, sizeof pu);
    size_t pathl = strlen(path) < sizeof pu.path ? strlen(path) : sizeof pu.path - 1;
    memcpy(pu.path, path, pathl); /* for the log line only: a long one is cut */
    handshake_accept_key(key, key_len, pu.accept);
    pu.deflate_on = negotiate_deflate(c, req, ans.no_compression, &pu.dp, pu.ext, sizeof pu.ext);
    if (ans.pending) { /* the app answers later (conn_upgrade_done): keep what it needs */
        upgrade_free(&ans);
        c->pup = malloc(sizeof *c->pup);
        if (!c->pup) {
            conn_kill(c, WS_CLOSE_ABNORMAL);
            return -1;
        }
        *c->pup = pu;
        handshake_each_protocol(req, keep_proto, c->pup);
        if (c->pup->protos_len >= sizeof c->pup->protos)
            c->pup->protos_len = sizeof c->pup->protos - 1;
        c->pup->protos[c->pup->protos_len] = 0;
        return 1;
    }
    return upgrade_complete(c, &ans, req, &pu);
}

/* Finish an upgrade with the app's answer: refuse, or send the 101 and open.
 * req is the request (NULL when the answer was pending: pu->protos holds the
 * offers). Returns 0, or -1 when refused. */
static int upgrade_complete(struct conn *c, struct conn_upgrade *ans,
                            const struct http_request *req, struct conn_pending_upgrade *pu) {
    struct sb_server *srv = c->srv;
    struct http_header ph = {"Sec-WebSocket-Protocol", 22, pu->protos, pu->protos_len};
    struct http_request offers = {.headers = &ph, .num_headers = pu->protos_len ? 1 : 0};
    if (!req)
        req = &offers;
    if (!ans->status && !c->route)
        ans->status = 500; /* the app accepted without saying which route: our bug */
    if (!ans->status && ans->protocol) {
        struct proto_pick pp = {ans->protocol, 0};
        handshake_each_protocol(req, pick_proto, &pp);
        if (!pp.found) {
            char rb[64];
            log_with(LOG_ERROR,
                     &(struct log_fields){
                         .route = pu->path, .conn = c->id, .remote = conn_remote(c, rb, sizeof rb)},
                     "%s: upgrade chose subprotocol '%s' the client did not offer", pu->path,
                     ans->protocol);
            ans->status = 500;
        }
    }
    if (ans->status) {
        count_refusal(srv, ans->status);
        free(c->head);
        c->head = NULL;
        http_error_len(c, ans->status, ans->headers, ans->body, ans->body_len);
        upgrade_free(ans);
        return -1;
    }
    const char *ext = pu->deflate_on ? pu->ext : "";
    size_t pl = ans->protocol ? strlen(ans->protocol) : 0;
    size_t hl = ans->headers ? strlen(ans->headers) : 0;
    size_t cap = 160 + HANDSHAKE_ACCEPT_LEN + pl + strlen(ext) + hl;
    char stackbuf[512];
    char *resp = cap <= sizeof stackbuf ? stackbuf : malloc(cap);
    int n = resp ? snprintf(resp, cap,
                            "HTTP/1.1 101 Switching Protocols\r\n"
                            "Upgrade: websocket\r\n"
                            "Connection: Upgrade\r\n"
                            "Sec-WebSocket-Accept: %s\r\n"
                            "%s%s%s%s%s\r\n",
                            pu->accept, ans->protocol ? "Sec-WebSocket-Protocol: " : "",
                            ans->protocol ? ans->protocol : "", ans->protocol ? "\r\n" : "", ext,
                            ans->headers ? ans->headers : "")
                 : -1;
    if (ans->protocol && !c->protocol) {
        c->protocol = ans->protocol; /* kept for ws.protocol */
        ans->protocol = NULL;
    }
    upgrade_free(ans);
    /* the 101 goes out now when it can (nothing is queued before it on a plain
     * connection): no output buffer is made and freed for it, which at a
     * storm of handshakes would leave holes among the connections' memory */
    int wr = n < 0 || (size_t)n >= cap       ? -1
             : !c->is_tls && !c->out.len ? send_direct(c, (const uint8_t *)resp, (size_t)n, NULL, 0)
                                         : conn_write(c, resp, (size_t)n);
    if (resp != stackbuf)
        free(resp);
    if (wr < 0) {
        http_error(c, 500, NULL, NULL);
        return -1;
    }
    c->dec.max_message = (uint32_t)srv->cfg.max_message; /* --max-message <= 2 GiB */
    if (pu->deflate_on) {
        c->defl = malloc(sizeof *c->defl);
        if (!c->defl) {
            conn_kill(c, WS_CLOSE_INTERNAL);
            return -1;
        }
        deflate_init(c->defl, &srv->cfg.deflate, &pu->dp);
        c->dec.rsv1_ok = 1;
    }
    c->state = CONN_WS;
    c->deadline = 0;
    c->opened = 1;
    c->opened_now = c->out.len != 0; /* the 101, or its end, is still queued */
    srv->stats.handshakes_ok++;
    srv->stats.handshake_status[101]++;
    srv->stats.ws_open++;
    srv->conn_cb->on_open(srv->conn_ud, c);
    return 0;
}

static void ws_feed(struct conn *c, uint8_t *p, size_t n);
static void keep_pending(struct conn *c, const uint8_t *p, size_t n);

/* Handle complete requests in buf; returns bytes consumed (the rest is a
 * partial request, or whole requests waiting for this one's answer to go
 * out) or -1 when the connection changed state. */
static long http_process(struct conn *c, char *buf, size_t len) {
    struct sb_server *srv = c->srv;
    size_t off = 0;
    struct http_header *hdrs = srv->http_headers; /* one array for the loop */
    while (off < len && c->state == CONN_HTTP) {
        /* one answer in flight: the next request waits until it is (nearly) out */
        if (c->file || c->out.bytes >= srv->cfg.out_high) {
            c->http_wait = 1;
            set_read(c, 0);
            return (long)off;
        }
        struct http_request req = {.headers = hdrs, .headers_cap = srv->cfg.max_headers + 1};
        struct http_limits lim = {srv->cfg.max_header_bytes, srv->cfg.max_headers};
        int status = 0;
        size_t last = c->hlast > off ? c->hlast - off : 0;
        int r = http_parse_request(buf + off, len - off, last, &lim, &req, &status);
        if (r == HTTP_NEED_MORE) {
            c->hlast = (uint32_t)(len - off);
            return (long)off;
        }
        if (r < 0) {
            http_error(c, status ? status : 400, NULL, NULL);
            return -1;
        }
        c->hlast = 0;
        size_t head_len = (size_t)r;
        size_t body_len = req.content_length > 0 ? (size_t)req.content_length : 0;
        int upgrade = handshake_is_upgrade(&req);
        if (upgrade)
            body_len = 0; /* refused in do_upgrade: never waited for */
        if (req.content_length > 0 && (uint64_t)req.content_length > srv->cfg.max_body) {
            http_error(c, 413, NULL, NULL);
            return -1;
        }
        if (len - off < head_len + body_len)
            return (long)off; /* wait for the body */
        c->keep_alive = (uint8_t)req.keep_alive;

        /* decode the path for routing */
        char path[2048];
        long plen = req.path_len < sizeof path
                        ? http_percent_decode(path, req.path, req.path_len, 0)
                        : -1;
        if (plen < 0 || memchr(path, 0, (size_t)plen)) {
            http_error(c, 400, NULL, "bad request path\n");
            return -1;
        }
        path[plen] = 0;
        if (upgrade && !c->metrics_only) {
            int ur = do_upgrade(c, &req, path);
            if (ur < 0)
                return -1;
            off += head_len;
            /* frames that came with the request (they wait for a pending answer) */
            if (off < len) {
                if (ur > 0)
                    keep_pending(c, (uint8_t *)buf + off, len - off);
                else
                    ws_feed(c, (uint8_t *)buf + off, len - off);
            }
            return -1;
        }
        int is_head = req.method_len == 4 && memcmp(req.method, "HEAD", 4) == 0;
        struct conn_response res = {.file_fd = -1};
        srv->conn_cb->on_request(srv->conn_ud, c, &req, path, buf + off + head_len, body_len, &res);
        if (res.pending) { /* answered later (conn_respond); the rest waits in hbuf */
            c->pend_head = (uint8_t)is_head;
            c->deadline = 0; /* --handler-timeout bounds it */
            c->http_wait = 1;
            return (long)(off + head_len + body_len);
        }
        if (c->state != CONN_HTTP) { /* the app killed it meanwhile */
            free(res.headers);
            free(res.body);
            if (res.file_fd >= 0)
                close(res.file_fd);
            return -1;
        }
        off += head_len + body_len;
        if (respond(c, &res, is_head) < 0)
            return -1;
        c->deadline = srv->now + srv->cfg.handshake_timeout; /* next request */
    }
    return (long)off;
}

/* Requests that waited for the previous answer: go on with them. */
static void http_resume(struct conn *c) {
    c->http_wait = 0;
    if (c->hlen) {
        long used = http_process(c, c->hbuf, c->hlen);
        if (used < 0 || c->state != CONN_HTTP) {
            free(c->hbuf);
            c->hbuf = NULL;
            c->hlen = c->hcap = 0;
            return;
        }
        memmove(c->hbuf, c->hbuf + used, c->hlen - (size_t)used);
        c->hlen -= (uint32_t)used;
    }
    if (!c->http_wait)
        set_read(c, 1);
}

static void http_read(struct conn *c, uint8_t *data, size_t n) {
    struct sb_server *srv = c->srv;
    char *buf;
    size_t len;
    if (c->hlen) {
        size_t need = c->hlen + n;
        if (need > c->hcap) {
            size_t ncap = (size_t)c->hcap * 2 > need ? (size_t)c->hcap * 2 : need;
            char *nb = realloc(c->hbuf, ncap);
            if (!nb) {
                conn_kill(c, WS_CLOSE_ABNORMAL);
                return;
            }
            c->hbuf = nb;
            c->hcap = (uint32_t)ncap;
        }
        memcpy(c->hbuf + c->hlen, data, n);
        c->hlen += (uint32_t)n;
        buf = c->hbuf;
        len = c->hlen;
    } else {
        buf = (char *)data;
        len = n;
    }
    long used = http_process(c, buf, len);
    if (used < 0) { /* upgraded or closing: the partial buffer is no longer needed */
        free(c->hbuf);
        c->hbuf = NULL;
        c->hlen = c->hcap = 0;
        return;
    }
    size_t rest = len - (size_t)used;
    /* waiting requests are bounded by the reads done before the pause */
    if (!c->http_wait && rest > srv->cfg.max_header_bytes + srv->cfg.max_body + 1) {
        http_error(c, 413, NULL, NULL);
        return;
    }
    if (buf == c->hbuf) {
        if (used)
            memmove(c->hbuf, c->hbuf + used, rest);
        c->hlen = (uint32_t)rest;
        if (!rest) {
            free(c->hbuf);
            c->hbuf = NULL;
            c->hcap = 0;
        }
    } else if (rest) {
        size_t cap = rest < 1024 ? 1024 : rest;
        c->hbuf = malloc(cap);
        if (!c->hbuf) {
            conn_kill(c, WS_CLOSE_ABNORMAL);
            return;
        }
        memcpy(c->hbuf, buf + used, rest);
        c->hlen = (uint32_t)rest;
        c->hcap = (uint32_t)cap;
    }
}

/* ---- WebSocket phase ------------------------------------------------------- */

static int on_message(void *ud, int opcode, uint8_t *data, size_t len, int compressed) {
    struct conn *c = ud;
    if (c->state != CONN_WS || c->close_sent || c->peer_gone)
        return 0; /* closing, or gone: data is discarded */
    uint8_t *plain = NULL; /* the inflated message (owned here) */
    if (compressed) {
        static uint8_t empty[1];
        size_t plen = 0;
        int r = deflate_inflate_message(c->defl, data, len, c->srv->cfg.max_message, &plain, &plen);
        if (r == 0 && opcode == WS_OP_TEXT && utf8_validate(UTF8_ACCEPT, plain, plen) != UTF8_ACCEPT)
            r = -WS_CLOSE_INVALID_DATA;
        if (r < 0) {
            free(plain);
            conn_fail(c, (unsigned)-r,
                      r == DEFLATE_ERR_TOO_BIG   ? "message too big"
                      : r == DEFLATE_ERR_DATA    ? "invalid compressed data"
                      : r == DEFLATE_ERR_INTERNAL ? "cannot inflate"
                                                 : "invalid UTF-8");
            return 1;
        }
        data = plain ? plain : empty;
        len = plen;
    }
    c->srv->stats.msgs_in++;
    c->srv->stats.bytes_in += len;
    c->srv->conn_cb->on_message(c->srv->conn_ud, c, data, len, opcode == WS_OP_BINARY);
    free(plain);
    /* held: its handler waits; the frames after this one wait too (ws_feed) */
    return c->state == CONN_DEAD || c->state == CONN_LINGER || c->holds;
}

static int on_control(void *ud, int opcode, uint8_t *data, size_t len) {
    struct conn *c = ud;
    switch (opcode) {
    case WS_OP_PING:
        if (c->state == CONN_WS && !c->close_sent)
            conn_send(c, WS_OP_PONG, data, len);
        return 0;
    case WS_OP_PONG:
        c->ping_out = 0;
        return 0;
    case WS_OP_CLOSE: {
        unsigned code = WS_CLOSE_NO_STATUS;
        const char *reason = "";
        size_t rlen = 0;
        ws_close_parse(data, len, &code, &reason, &rlen);
        c->close_rcvd = 1;
        c->close_code = (uint16_t)code;
        c->srv->stats.close_rcvd[sb_close_bucket(code)]++;
        free(c->close_reason);
        c->close_reason = strndup(reason, rlen);
        if (c->peer_gone)
            return 1; /* nobody to answer: its code is all that was wanted */
        if (!c->close_sent) {
            /* echo the code (RFC 6455 §5.5.1); an empty close is answered empty */
            uint8_t p[2] = {(uint8_t)(code >> 8), (uint8_t)code};
            conn_send(c, WS_OP_CLOSE, p, code == WS_CLOSE_NO_STATUS ? 0 : 2);
            c->close_sent = 1;
        }
        /* the server starts the TCP close first (§7.1.1): FIN once the echo is
         * written, then wait for the peer's FIN, so late bytes from it meet an
         * open socket rather than a reset that could cost it our close frame */
        conn_linger(c, 1);
        return 1;
    }
    }
    return 0;
}

static const struct ws_decoder_cb decoder_cb = {on_message, on_control};

/* Keep n bytes read but not decoded until the connection is released. */
static void keep_pending(struct conn *c, const uint8_t *p, size_t n) {
    uint8_t *nb = realloc(c->pend, c->pend_len + n);
    if (!nb) {
        conn_kill(c, WS_CLOSE_ABNORMAL);
        return;
    }
    memcpy(nb + c->pend_len, p, n);
    c->pend = nb;
    c->pend_len += (uint32_t)n;
}

/* The peer left while held: decode what it sent (kept, then still in the socket,
 * at most SALVAGE_MAX bytes) only to find its close frame; messages are dropped. */
#define SALVAGE_MAX (1u << 20)
static void salvage_close(struct conn *c) {
    if (c->state != CONN_WS && c->state != CONN_CLOSING)
        return;
    c->peer_gone = 1;
    uint8_t *p = c->pend;
    size_t n = c->pend_len;
    c->pend = NULL;
    c->pend_len = 0;
    ssize_t r = n ? ws_decoder_feed(&c->dec, p, n, &decoder_cb, c) : 0;
    free(p);
    struct sb_server *srv = c->srv;
    for (size_t total = 0; r >= 0 && !c->close_rcvd && total < SALVAGE_MAX;) {
        ssize_t got = c->is_tls ? tls_conn_read(c, srv->rbuf, srv->rbuf_size)
                                : read(c->fd, srv->rbuf, srv->rbuf_size);
        if (got <= 0 || c->state == CONN_DEAD)
            break;
        total += (size_t)got;
        r = ws_decoder_feed(&c->dec, srv->rbuf, (size_t)got, &decoder_cb, c);
    }
}

static void ws_feed(struct conn *c, uint8_t *p, size_t n) {
    if (c->state != CONN_WS && c->state != CONN_CLOSING)
        return;
    if (c->holds) { /* e.g. frames that came with the request, while open waits */
        keep_pending(c, p, n);
        return;
    }
    ssize_t r = ws_decoder_feed(&c->dec, p, n, &decoder_cb, c);
    if (r < 0) {
        if (c->state != CONN_DEAD)
            conn_fail(c, (unsigned)-r, ws_decoder_error(&c->dec));
        return;
    }
    if ((size_t)r < n && c->holds && (c->state == CONN_WS || c->state == CONN_CLOSING))
        keep_pending(c, p + r, n - (size_t)r);
}

/* ---- held connections -------------------------------------------------------- */

void conn_hold(struct conn *c) {
    if (c->holds++ == 0)
        update_events(c);
}

void conn_release(struct conn *c) {
    struct sb_server *srv = c->srv;
    if (!c->holds || --c->holds)
        return;
    if (c->state == CONN_DEAD) {
        if (c->on_held) { /* back to the reap: its on_close runs now */
            unlink_conn(c);
            c->reap_next = srv->reap;
            srv->reap = c;
        }
        return;
    }
    if (c->pend) { /* what was read while its handler waited, in order */
        uint8_t *buf = c->pend;
        size_t len = c->pend_len;
        c->pend = NULL;
        c->pend_len = 0;
        ws_feed(c, buf, len);
        free(buf);
    }
    if (c->state == CONN_DEAD || c->holds)
        return;
    if (c->state == CONN_HTTP) {
        http_resume(c);
        if (c->state == CONN_DEAD || c->holds)
            return;
    }
    update_events(c);
    if (c->drain_pending && !c->over_high && c->state == CONN_WS) {
        c->drain_pending = 0;
        srv->conn_cb->on_drain(srv->conn_ud, c);
    }
}

void conn_upgrade_done(struct conn *c, struct conn_upgrade *ans) {
    struct conn_pending_upgrade *pu = c->pup;
    c->pup = NULL;
    if (c->state != CONN_HTTP || !pu) {
        upgrade_free(ans);
        free(pu);
        return;
    }
    if (c->srv->stopping && !ans->status) {
        upgrade_free(ans);
        memset(ans, 0, sizeof *ans);
        ans->status = 503;
    }
    upgrade_complete(c, ans, NULL, pu);
    free(pu);
}

void conn_respond(struct conn *c, struct conn_response *res) {
    if (c->state != CONN_HTTP) {
        free(res->headers);
        free(res->body);
        if (res->file_fd >= 0)
            close(res->file_fd);
        return;
    }
    if (respond(c, res, c->pend_head) < 0)
        return;
    c->deadline = c->srv->now + c->srv->cfg.handshake_timeout; /* next request */
}

/* ---- the event callback ---------------------------------------------------- */

static void conn_on_event(evutil_socket_t fd, short what, void *arg) {
    struct conn *c = arg;
    struct sb_server *srv = c->srv;
    if (c->tls_read_wants_write && (what & EV_WRITE)) {
        c->tls_read_wants_write = 0;
        what |= EV_READ;
    }
    if (c->tls_write_wants_read && (what & EV_READ)) {
        c->tls_write_wants_read = 0;
        what |= EV_WRITE;
    }
    if (what & EV_WRITE) {
        conn_flush(c);
        if (c->state == CONN_DEAD)
            return;
    }
    if ((what & EV_CLOSED) && c->holds && !reads_on(c)) {
        /* the peer left while a handler of it waits: it is gone (1006, unless
         * its close frame is among the bytes it sent last) */
        if (!c->close_rcvd)
            salvage_close(c);
        conn_kill(c, c->close_rcvd ? c->close_code : WS_CLOSE_ABNORMAL);
        return;
    }
    if (!(what & EV_READ) || !reads_on(c))
        return; /* paused or held: the event read only for a TLS write */
    for (int rounds = 0; rounds < 4; rounds++) {
        ssize_t n = c->is_tls ? tls_conn_read(c, srv->rbuf, srv->rbuf_size)
                              : recv(fd, srv->rbuf, srv->rbuf_size, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                conn_kill(c, WS_CLOSE_ABNORMAL);
            return;
        }
        if (n == 0) {
            conn_kill(c, c->close_rcvd ? c->close_code : WS_CLOSE_ABNORMAL);
            return;
        }
        c->last_rx = srv->now;
        c->ping_out = 0;
        switch (c->state) {
        case CONN_HTTP:
            http_read(c, srv->rbuf, (size_t)n);
            break;
        case CONN_WS:
        case CONN_CLOSING:
            ws_feed(c, srv->rbuf, (size_t)n);
            break;
        default:
            break; /* lingering: discard */
        }
        if (c->state == CONN_DEAD || !reads_on(c))
            return;
        if ((size_t)n < srv->rbuf_size && !(c->ssl && tls_pending(c->ssl)))
            return;
    }
    /* the rounds are spent: bytes already decrypted inside OpenSSL make no
     * socket readable, so come back for them on the next iteration */
    if (c->ssl && tls_pending(c->ssl))
        event_active(&c->ev, EV_READ, 1);
}

/* ---- timeouts --------------------------------------------------------------- */

void conn_sweep(struct sb_server *srv) {
    const struct sb_config *cfg = &srv->cfg;
    double now = srv->now;
    for (struct conn *c = srv->all; c; c = c->next) {
        outq_trim(&c->out); /* idle connections hold no output ring */
        switch (c->state) {
        case CONN_HTTP:
            if (c->deadline && now >= c->deadline) {
                srv->stats.timeouts++;
                if (c->hlen)
                    http_error(c, 408, NULL, NULL);
                else
                    conn_kill(c, WS_CLOSE_ABNORMAL);
            }
            break;
        case CONN_WS:
            if (c->defl && c->defl->mem && now - c->last_rx >= DEFLATE_TRIM_IDLE)
                deflate_trim(c->defl); /* a quiet connection keeps only its windows */
            if (c->holds)
                break; /* its handler waits: it reads nothing, so no idle or pong clock */
            if (c->over_high && cfg->slow == SLOW_CLOSE && now - c->over_since >= cfg->slow_grace) {
                srv->stats.slow_closed++;
                conn_fail(c, WS_CLOSE_POLICY, "too slow to read");
                break;
            }
            if (c->ping_out && now >= c->deadline) {
                srv->stats.timeouts++;
                conn_fail(c, WS_CLOSE_GOING_AWAY, "no pong");
                if (c->state == CONN_LINGER)
                    c->linger_eof = 0; /* it does not answer: no need to wait for its FIN */
                break;
            }
            if (cfg->idle_timeout > 0 && now - c->last_rx >= cfg->idle_timeout) {
                srv->stats.timeouts++;
                conn_fail(c, WS_CLOSE_GOING_AWAY, "idle timeout");
                break;
            }
            if (cfg->ping_interval > 0 && !c->ping_out && now - c->last_rx >= cfg->ping_interval) {
                conn_send(c, WS_OP_PING, NULL, 0);
                c->ping_out = 1;
                c->deadline = now + cfg->pong_timeout;
            }
            break;
        case CONN_CLOSING:
        case CONN_LINGER:
            if (c->deadline && now >= c->deadline)
                conn_kill(c, c->close_code ? c->close_code : WS_CLOSE_ABNORMAL);
            break;
        default:
            break;
        }
    }
}
