/* conn.h — one connection's life: HTTP -> WebSocket -> closing -> closed.
 *
 * conn knows no application: it parses, frames and queues, and reaches the
 * app only through the callback table in srv->conn_cb (router.c installs it),
 * in the way wslay's event callbacks separate the codec from the app.
 *
 * Ownership: a conn is owned by the server's `all` list and freed only in
 * conn_reap_all (after the event-loop iteration), never inside a callback, so
 * a pointer held by Lua or a caller stays valid until then.
 *
 * Lists: `all` (from conn_new to the reap), `flush` (output produced this
 * iteration; in_flush says it is listed), `reap` (DEAD, to be freed). DEAD is
 * terminal: conn_kill deletes the event, and from then on nothing re-arms it
 * (set_read/set_write/conn_linger/mark_flush are no-ops), nothing queues to it
 * (conn_send/conn_write return -1) and conn_reap_all unlinks it from `flush`
 * before freeing it. Output is corked: everything a connection produces in
 * one iteration leaves in one writev, but for a large frame (CONN_DIRECT_MIN
 * bytes or more, plain TCP) with nothing queued before it: that one is
 * written at once from the caller's bytes, and only what the kernel does not
 * take is copied into the queue.
 *
 * Held (conn_hold, while an app handler of this connection waits): a held conn
 * reads nothing and delivers no further on_message/on_drain/on_close; it is
 * not freed. One that dies while held stays DEAD, off `all`, `flush` and
 * `reap`, on srv->held (conn_reap_all moves it there instead of running its
 * on_close and freeing it, and shuts its socket down so the peer sees the end
 * at once; the descriptor is closed at the free); the last conn_release puts
 * it back on `reap`, so its on_close runs then, exactly once, and it is freed
 * after. */
#ifndef SB_CONN_H
#define SB_CONN_H

#include <event2/event_struct.h>
#include <stddef.h>
#include <stdint.h>

#include "deflate.h"
#include "frame.h"
#include "outq.h"

struct sb_server;
struct route;
struct ssl_st;
struct tls_ctx;
struct http_request;
struct conn_pending_upgrade;

enum conn_state {
    CONN_HTTP,    /* reading a request head */
    CONN_WS,      /* open WebSocket */
    CONN_CLOSING, /* we sent a close frame; waiting for the peer's */
    CONN_LINGER,  /* flushing, then closing the socket (reads discarded) */
    CONN_DEAD,    /* on the reap list */
};

struct subscription;

/* A file answer on its way out: read in chunks as the queue drains. */
struct conn_file {
    int fd; /* owned */
    uint64_t off, left;
};

/* Handshake fields with their one usual value, kept as a bit, not as bytes. */
#define CONN_STD_UPGRADE 1    /* "upgrade: websocket" */
#define CONN_STD_CONNECTION 2 /* "connection: Upgrade" */
#define CONN_STD_VERSION 4    /* "sec-websocket-version: 13" */

struct conn {
    struct event ev; /* read persistent; write added only while output is queued */
    struct sb_server *srv;
    struct conn *next, *prev; /* srv->all */
    struct conn *flush_next;  /* srv->flush */
    struct conn *reap_next;   /* srv->reap */
    uint64_t id;
    int fd;
    uint8_t state;
    uint8_t in_flush : 1, want_write : 1, read_paused : 1, opened : 1, close_sent : 1,
        close_rcvd : 1, drain_pending : 1, ping_out : 1;
    uint8_t over_high : 1, keep_alive : 1, is_tls : 1, linger_eof : 1,
        metrics_only : 1, /* accepted on the --metrics listener */
        http_wait : 1,    /* pipelined requests wait until the answer is out */
        peer_gone : 1;    /* left while held: its last bytes are read for its close frame */
    uint8_t tls_read_wants_write : 1, tls_write_wants_read : 1; /* TLS I/O waiting on the other event */
    uint8_t head_std : 3; /* CONN_STD_* fields left out of head: ws.headers adds them back */
    uint8_t opened_now : 1; /* the 101 is still queued */
    uint8_t on_held : 1;    /* DEAD and on srv->held (next/prev link it there) */
    uint8_t unlisted : 1;   /* DEAD and off `all` and `held` (released to the reap) */
    uint8_t pend_head : 1;  /* a HEAD request's answer is pending (on_request) */
    uint16_t holds;         /* conn_hold minus conn_release */
    uint16_t close_code; /* code for the close handler (peer's, or 1006) */
    uint16_t rport;      /* the peer's port; its address: */
    uint8_t raddr_family;
    uint8_t raddr[16];
    struct route *route; /* not owned; routes outlive their connections */
    int ws_ref;          /* Lua registry ref of the ws userdata, or LUA_NOREF */
    uint32_t head_len;   /* of head, below (beside ws_ref: no padding) */
    double deadline;     /* handshake / close / pong deadline (0 = none) */
    double last_rx;      /* monotonic seconds of the last bytes from the peer */
    double over_since;   /* when queued output passed out_high */
    /* HTTP phase: partial request bytes (owned, freed at upgrade or close) */
    char *hbuf;
    uint32_t hlen, hcap, hlast;
    uint32_t pend_len; /* of pend, below */
    /* request head kept for ws.path/query/headers (owned) */
    char *head;
    char *close_reason; /* peer's close reason (owned), NUL-terminated */
    char *protocol;     /* negotiated subprotocol (owned) or NULL */
    struct ws_decoder dec;  /* WebSocket phase; zeroed before (its buffers are owned) */
    struct ssl_st *ssl;      /* owned; TLS connections only (is_tls) */
    struct ws_deflate *defl; /* owned; only when permessage-deflate was negotiated */
    struct outq out; /* queued output (owned) */
    struct conn_file *file; /* a file being sent (HTTP phase; owned) or NULL */
    /* bytes read but not decoded while held (owned; freed when fed or at conn_free);
     * their count, pend_len, sits beside hlast (no padding) */
    uint8_t *pend;
    struct conn_pending_upgrade *pup; /* an upgrade whose answer waits (owned) */
    struct subscription *subs; /* owned by pubsub */
    uint32_t nsubs, subs_cap;
};

/* The peer's "addr:port" ("[v6]:port") written into buf; "?" once it is gone. */
const char *conn_remote(const struct conn *c, char *buf, size_t cap);

/* Take ownership of an accepted socket. Returns the conn or NULL (socket closed). */
struct conn *conn_new(struct sb_server *srv, int fd, const struct sockaddr *sa, int salen);

/* Make c a TLS connection (its bytes go through an SSL from ctx). On OOM the
 * connection is dropped. */
void conn_start_tls(struct conn *c, struct tls_ctx *ctx);
/* The negotiated Sec-WebSocket-Extensions value, NUL-terminated in buf;
 * returns its length, 0 when no extension is in use. */
size_t conn_extensions(const struct conn *c, char buf[DEFLATE_RESPONSE_MAX]);

/* Queue raw bytes for this connection. Returns 0, -1 on OOM or when it is DEAD. */
int conn_write(struct conn *c, const void *data, size_t len);

/* A plain HTTP answer, filled by the app's on_request. conn writes the head,
 * then the body, or streams the file under the output watermarks. */
struct conn_response {
    int status;
    char *headers;   /* owned (malloc): "Name: value\r\n" lines, or NULL */
    char *body;      /* owned (malloc), or NULL */
    size_t body_len;
    int file_fd;     /* >= 0: send file_len bytes of it from file_off (owned) */
    uint64_t file_off, file_len;
    uint8_t no_length; /* no Content-Length (304) */
    uint8_t close;     /* close the connection after this answer */
    uint8_t pending;   /* the app answers later (conn_respond); nothing else is read */
};

/* The app's answer to an upgrade request. on_upgrade sets c->route when it
 * accepts; status != 0 refuses with that status, headers and body. */
struct conn_upgrade {
    int status;
    char *headers;  /* owned: extra lines for the 101 or the refusal */
    char *body;     /* owned: refusal body */
    size_t body_len;
    char *protocol; /* owned: the chosen subprotocol (one the client offered) */
    uint8_t no_compression;
    uint8_t pending; /* the app answers later (conn_upgrade_done); nothing else is read */
};

/* The application side of a connection. Every callback may send, close or
 * publish; none may free c. on_close runs exactly once per opened WebSocket,
 * from the reap, with c already DEAD.
 * Answers that wait: on_upgrade and on_request may set ans->pending / res->pending
 * (after conn_hold(c)); the app answers later, from the loop, with
 * conn_upgrade_done / conn_respond, then conn_release. */
struct conn_callbacks {
    void (*on_request)(void *ud, struct conn *c, const struct http_request *req,
                       const char *path, const char *body, size_t body_len,
                       struct conn_response *res);
    void (*on_upgrade)(void *ud, struct conn *c, const struct http_request *req,
                       const char *path, struct conn_upgrade *ans);
    void (*on_open)(void *ud, struct conn *c);
    void (*on_message)(void *ud, struct conn *c, const uint8_t *data, size_t len, int binary);
    void (*on_drain)(void *ud, struct conn *c);
    void (*on_close)(void *ud, struct conn *c, unsigned code, const char *reason);
};

/* Bytes queued for the peer and not yet written. */
static inline size_t conn_buffered(const struct conn *c) {
    return c->out.bytes;
}

/* Queue a frame for this connection. Returns 1 queued (queue below out_high),
 * 0 queued but past out_high (slow down), -1 not queued (connection closing
 * or queue past out_max: the connection is then closed with 1008). */
int conn_send(struct conn *c, int opcode, const void *data, size_t len);
/* Queue a shared frame (pubsub). Same return contract; respects the slow policy. */
int conn_send_shared(struct conn *c, struct outbuf *b);

/* Start the closing handshake with code and reason (reason <= 123 bytes).
 * No-op if already closing. */
void conn_close(struct conn *c, unsigned code, const char *reason, size_t reason_len);
/* Drop the connection at once (no close frame). */
void conn_abort(struct conn *c, uint16_t close_code);

/* Hold c while an app handler of it waits (nestable): it reads nothing more
 * (bytes already read wait in c->pend), delivers no further message, drain
 * or close to the app, and is not freed (see Held, above). A peer that goes
 * away meanwhile is noticed (EV_CLOSED) and the connection dies as with 1006;
 * a send to it then fails. */
void conn_hold(struct conn *c);
/* Undo one conn_hold. The last one feeds what waited (c->pend), resumes reading
 * and, if c died meanwhile, puts it on the reap list. Call it from the loop,
 * not from inside one of c's callbacks. */
void conn_release(struct conn *c);
/* The answer to an upgrade that was pending: complete the handshake (or refuse)
 * as on_upgrade would have. Takes ownership of ans's strings. No-op but the
 * freeing when c died meanwhile. */
void conn_upgrade_done(struct conn *c, struct conn_upgrade *ans);
/* The answer to a request that was pending. Takes ownership of res. */
void conn_respond(struct conn *c, struct conn_response *res);

/* Write the queued output of every connection in srv->flush. */
void conn_flush_all(struct sb_server *srv);
/* Free every connection on srv->reap (calls the close handlers first). */
void conn_reap_all(struct sb_server *srv);
/* Once a second: timeouts and pings. */
void conn_sweep(struct sb_server *srv);

#endif
