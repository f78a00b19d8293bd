/* loop.h — what one event loop's modules share: the configuration, the
 * counters, the connection lists and the application's callbacks. One
 * sb_server per process, passed explicitly. It sits at the bottom of the
 * layers (beside log.h) so that conn.c can reach the loop's state without
 * knowing anything above it: the pointers to modules above conn (script,
 * pubsub, redis, ...) are opaque here and conn.c never follows them.
 *
 * Connection lists (struct conn, conn.h): `all` holds every connection from
 * conn_new until conn_reap_all frees it; `flush` holds those with output
 * produced this iteration (never a DEAD one: conn_reap_all unlinks them before
 * freeing); `reap` holds the DEAD ones until the end of the iteration;
 * `held` holds DEAD ones a waiting handler still holds (off `all`). */
#ifndef SB_LOOP_H
#define SB_LOOP_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "deflate.h"
#include "stats.h"

struct event_base;
struct event;
struct conn;
struct script;
struct reload;
struct pubsub;
struct history;
struct tls_ctx;
struct sb_redis;
struct outbound_ctx;

#define SB_MAX_LISTEN 16

enum slow_policy { SLOW_DROP, SLOW_CLOSE };


/* Every limit: its default is set by config_defaults, its flag in main.c. */
struct sb_config {
    const char *app_dir;
    const char *listen[SB_MAX_LISTEN]; /* "ADDR:PORT", "[v6]:PORT" */
    int n_listen;
    size_t max_header_bytes;  /* --max-header-bytes: request head (431) */
    size_t max_headers;       /* --max-headers: header fields (431) */
    size_t max_body;          /* --max-body: plain HTTP request body (413) */
    uint64_t max_message;     /* --max-message: WebSocket message payload (1009) */
    size_t out_high;          /* --out-high: queued bytes where send() says false */
    size_t out_low;           /* --out-low: drain fires below this */
    size_t out_max;           /* --out-max: hard cap; past it the connection is closed (1008) */
    enum slow_policy slow;    /* --slow-policy drop|close: subscriber past out_high */
    double slow_grace;        /* --slow-grace: seconds past out_high before a 'close' */
    double handshake_timeout; /* --handshake-timeout: request head + upgrade */
    double idle_timeout;      /* --idle-timeout: no frame from the peer (0 = off) */
    double ping_interval;     /* --ping-interval: server ping when idle (0 = off) */
    double pong_timeout;      /* --pong-timeout: close after a ping goes unanswered */
    double close_timeout;     /* --close-timeout: wait for the peer's close frame */
    double drain_timeout;     /* --drain-timeout: graceful shutdown bound */
    const char *metrics_listen; /* --metrics ADDR:PORT: own listener, or NULL */
    const char *metrics_path;   /* --metrics-path /metrics on the main listeners, or NULL */
    unsigned max_connections; /* --max-connections (0 = only the fd limit) */
    long lua_budget;          /* --lua-budget: VM instructions per handler resume */
    double handler_timeout;   /* --handler-timeout: wall clock per handler call (0 = none) */
    size_t lua_memory;        /* --lua-memory: bytes for the Lua state */
    int watch;                /* --no-watch clears it */
    double reload_debounce;   /* seconds */
    /* TLS (tls.c): listeners beside the plain ones, one certificate for all */
    const char *listen_tls[SB_MAX_LISTEN]; /* --listen-tls ADDR:PORT */
    int n_listen_tls;
    const char *tls_cert, *tls_key; /* --tls-cert / --tls-key, or from --tls-self-signed DIR */
    struct deflate_config deflate;  /* --no-compression, --deflate-window-bits/-mem-level/-min-size */
    unsigned workers;         /* --workers: worker processes under a supervisor (0 = none) */
    unsigned worker;          /* this process's worker index, 1..workers; 0 without --workers */
    const char *redis_url;    /* --redis redis://host:port[/db]; NULL = in-process pub/sub */
    int redis_optional;       /* --redis-optional: start local-only when Redis is down */
    size_t redis_out_max;     /* --redis-out-max: publishes Redis has not answered yet */
    size_t history_max_bytes; /* --history-max-bytes: every topic's kept history, in process */
    unsigned redis_pool;      /* --redis-pool: idle switchboard.redis connections kept per URL */
    unsigned redis_max_calls; /* --redis-max-calls: its calls and connects in flight */
    const char *allowed_origins; /* --allowed-origins LIST (router.c); NULL = any Origin */
    unsigned max_outbound;       /* --max-outbound: sb.http/sb.tcp connections open at once */
    size_t max_response_body;    /* --max-response-body: sb.http body, sock:receive result */
    size_t subscribe_queue_max;  /* --subscribe-queue-max: bytes waiting for sb.subscribe fns */
    double presence_ttl;         /* --presence-ttl: a dead process's presence ages out in this */
};

void config_defaults(struct sb_config *cfg);


struct sb_listener;
struct conn_callbacks;
struct http_header;

struct sb_server {
    struct event_base *base;
    struct sb_config cfg;
    uint8_t *rbuf; /* loop-wide read buffer */
    struct http_header *http_headers; /* loop-wide: max_headers + 1 parsed fields */
    size_t rbuf_size;
    struct conn *all;       /* every connection (sweep for timeouts) */
    struct conn *flush;     /* connections with output produced this iteration */
    struct conn *reap;      /* connections to free after this iteration */
    struct conn *held;      /* DEAD connections an app handler still holds (conn.h) */
    struct sb_listener *listeners;
    struct event *sweep_ev; /* once a second: timeouts and pings */
    struct event *stop_ev;  /* every 20 ms while shutting down */
    struct event *sig_ev[3];
    struct script *script;
    struct reload *reload; /* owned; NULL with --no-watch */
    struct pubsub *pubsub;
    struct history *history; /* owned; made by the first sb.history.keep, else NULL */
    struct tls_ctx *tls;                   /* owned; NULL without --listen-tls */
    struct deflate_shared *deflate_shared; /* owned; compress-once contexts for publish */
    struct sb_redis *redis; /* --redis: set up and freed by main.c; NULL when off */
    /* sb.http/sb.tcp: made on first use (script_http.c), freed by server_free
     * after the Lua state (whose sockets close with it) */
    struct outbound_ctx *outbound;
    uint64_t next_id;
    double now; /* cached monotonic seconds, refreshed per iteration */
    int spare_fd;   /* kept to shed a connection on EMFILE */
    int stopping;   /* 1: graceful shutdown in progress; 2: exit now; 3: drained */
    uint64_t trim_seen, trim_busy; /* messages at the last sweep; since the last trim */
    double stop_deadline;          /* graceful shutdown: drop what is left then */
    uint64_t stop_ws, stop_clean0; /* WebSockets told 1001; ws_closed_clean at the signal */
    struct sb_stats stats;
    double origin_log_at; /* --allowed-origins refusals (router.c): this second's start, */
    uint64_t origin_log_n, origin_log_skipped; /* how many in it, how many not logged */
    /* --redis: a history publication back from the channel (redis.c calls it, the
     * script layer sets it): its topic, position, epoch (NUL-terminated), the id of
     * the connection that must not get it (0: none) and the message as published */
    void (*history_in)(struct sb_server *srv, const char *topic, size_t tlen, uint64_t pos,
                       const char *epoch, uint64_t except_id, const void *msg, size_t len,
                       int binary);
    /* how conn.c reaches the application (router.c installs them) */
    const struct conn_callbacks *conn_cb;
    void *conn_ud;
};

/* Handler timing and the metrics endpoint are on (--metrics or --metrics-path). */
static inline int sb_metrics_on(const struct sb_server *srv) {
    return srv->cfg.metrics_listen || srv->cfg.metrics_path;
}

/* Monotonic seconds. */
static inline double server_clock(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

#endif
