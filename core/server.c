/* server.c — listeners, accept, the loop with per-iteration corking, timeouts,
 * signals and graceful shutdown. */
#define _GNU_SOURCE
#include "server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <malloc.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "conn.h"
#include "http.h"
#include "log.h"
#include "outbound.h"
#include "history.h"
#include "pubsub.h"
#include "reload.h"
#include "router.h"
#include "script.h"
#include "tls.h"

#define READ_BUF_SIZE (512 * 1024)
#define ACCEPT_BATCH 64

/* What a listener's connections are. Every kind shares on_accept: the spare
 * descriptor on EMFILE, --max-connections and the shutdown close them all alike. */
enum listener_kind { LISTEN_PLAIN, LISTEN_TLS, LISTEN_METRICS };

struct sb_listener {
    struct event *ev;
    int fd;
    char name[64];
    struct sb_server *srv;
    struct sb_listener *next;
    enum listener_kind kind;
    double fd_logged;     /* when "out of file descriptors" was last logged */
    uint64_t fd_unlogged; /* connections dropped since */
};

void config_defaults(struct sb_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->max_header_bytes = 8192;
    cfg->max_headers = 100;
    cfg->max_body = 1 << 20;
    cfg->max_message = 16u << 20;
    cfg->out_high = 1 << 20;
    cfg->out_low = 256 << 10;
    cfg->out_max = 64u << 20;
    cfg->slow = SLOW_DROP;
    cfg->slow_grace = 10;
    cfg->handshake_timeout = 10;
    cfg->idle_timeout = 0;
    cfg->ping_interval = 30;
    cfg->pong_timeout = 20;
    cfg->close_timeout = 5;
    cfg->drain_timeout = 10;
    cfg->max_connections = 0;
    cfg->lua_budget = 100000000;
    cfg->handler_timeout = 30;
    cfg->lua_memory = 512u << 20;
    cfg->watch = 1;
    cfg->reload_debounce = 0.05;
    cfg->redis_out_max = 16u << 20;
    cfg->history_max_bytes = 64u << 20;
    cfg->max_outbound = 4096;
    cfg->http_pool = 64;
    cfg->http_keepalive = 4;
    cfg->max_response_body = 16u << 20;
    cfg->redis_pool = 32;
    cfg->redis_max_calls = 10000;
    cfg->subscribe_queue_max = 16u << 20;
    cfg->presence_ttl = 15;
    deflate_config_default(&cfg->deflate);
}

/* ---- listeners -------------------------------------------------------------- */

/* Parse "ADDR:PORT" / "[V6]:PORT" / ":PORT". Returns 0 or -1. */
static int parse_addr(const char *spec, struct sockaddr_storage *ss, socklen_t *len) {
    char host[256];
    const char *port;
    memset(ss, 0, sizeof *ss);
    if (spec[0] == '[') {
        const char *end = strchr(spec, ']');
        if (!end || end[1] != ':' || (size_t)(end - spec - 1) >= sizeof host)
            return -1;
        memcpy(host, spec + 1, (size_t)(end - spec - 1));
        host[end - spec - 1] = 0;
        port = end + 2;
    } else {
        const char *colon = strrchr(spec, ':');
        if (!colon || (size_t)(colon - spec) >= sizeof host)
            return -1;
        memcpy(host, spec, (size_t)(colon - spec));
        host[colon - spec] = 0;
        port = colon + 1;
        if (!host[0])
            strcpy(host, "0.0.0.0");
    }
    char *endp;
    long p = strtol(port, &endp, 10);
    if (!*port || *endp || p < 0 || p > 65535)
        return -1;
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)p);
        *len = sizeof *s4;
        return 0;
    }
    if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)p);
        *len = sizeof *s6;
        return 0;
    }
    return -1;
}

static void format_addr(const struct sockaddr *sa, char *out, size_t cap) {
    char host[INET6_ADDRSTRLEN] = "?";
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &s4->sin_addr, host, sizeof host);
        snprintf(out, cap, "%s:%d", host, ntohs(s4->sin_port));
    } else {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof host);
        snprintf(out, cap, "[%s]:%d", host, ntohs(s6->sin6_port));
    }
}

static void on_accept(evutil_socket_t fd, short what, void *arg) {
    struct sb_listener *l = arg;
    struct sb_server *srv = l->srv;
    (void)what;
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int cfd = accept4(fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if ((errno == EMFILE || errno == ENFILE) && srv->spare_fd >= 0) {
                /* out of descriptors: use the spare to accept and drop one
                 * connection, so the listener does not spin */
                close(srv->spare_fd);
                int x = accept(fd, NULL, NULL);
                if (x >= 0)
                    close(x);
                srv->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
                /* one line a second at most: a flood must not become a log flood */
                l->fd_unlogged++;
                double now = server_clock();
                if (now - l->fd_logged >= 1.0) {
                    log_warn("out of file descriptors: dropped %llu new connection(s) on %s",
                             (unsigned long long)l->fd_unlogged, l->name);
                    l->fd_unlogged = 0;
                    l->fd_logged = now;
                }
            }
            return;
        }
        if (srv->stopping ||
            (srv->cfg.max_connections && srv->stats.open >= srv->cfg.max_connections)) {
            static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                                       "Connection: close\r\n\r\n";
            ssize_t w = write(cfd, busy, sizeof busy - 1);
            (void)w;
            close(cfd);
            continue;
        }
        int one = 1;
        setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = conn_new(srv, cfd, (struct sockaddr *)&ss, (int)sl);
        if (c && l->kind == LISTEN_TLS)
            conn_start_tls(c, srv->tls);
        else if (c && l->kind == LISTEN_METRICS)
            c->metrics_only = 1;
    }
}

int server_bind(const char *spec, int backlog, char *name, size_t cap) {
    struct sockaddr_storage ss;
    socklen_t sl;
    if (parse_addr(spec, &ss, &sl) < 0) {
        log_error("--listen %s: expected ADDR:PORT or [IPV6]:PORT", spec);
        return -1;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        log_error("--listen %s: socket: %s", spec, strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&ss, sl) < 0 || (backlog >= 0 && listen(fd, backlog) < 0)) {
        log_error("--listen %s: %s", spec, strerror(errno));
        close(fd);
        return -1;
    }
    sl = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    format_addr((struct sockaddr *)&ss, name, cap);
    return fd;
}

static int add_listener(struct sb_server *srv, const char *spec, enum listener_kind kind) {
    struct sb_listener *l = calloc(1, sizeof *l);
    if (!l)
        return -1;
    l->fd = server_bind(spec, 4096, l->name, sizeof l->name);
    if (l->fd < 0) {
        if (kind == LISTEN_METRICS)
            log_error("--metrics %s: cannot listen there", spec);
        free(l);
        return -1;
    }
    l->srv = srv;
    l->kind = kind;
    l->fd_logged = -1e9;
    l->ev = event_new(srv->base, l->fd, EV_READ | EV_PERSIST, on_accept, l);
    event_add(l->ev, NULL);
    l->next = srv->listeners;
    srv->listeners = l;
    if (kind == LISTEN_METRICS)
        log_info("metrics on http://%s/metrics", l->name);
    else /* under --workers the supervisor says it once per address */
        log_msg(srv->cfg.worker ? LOG_DEBUG : LOG_INFO, "listening on %s (%s://%s/)", l->name,
                kind == LISTEN_TLS ? "wss" : "ws", l->name);
    return 0;
}

static void close_listeners(struct sb_server *srv) {
    while (srv->listeners) {
        struct sb_listener *l = srv->listeners;
        srv->listeners = l->next;
        event_free(l->ev);
        close(l->fd);
        free(l);
    }
}

/* ---- timers and signals ----------------------------------------------------- */

static size_t conn_count(const struct sb_server *srv) {
    size_t n = 0;
    for (const struct conn *c = srv->all; c; c = c->next)
        n++;
    return n;
}

/* Heavy traffic (compression above all) leaves freed heap in glibc's arenas
 * that it keeps for reuse; once the traffic has calmed down, hand it back.
 * malloc_trim walks the heap, so only in a quiet second after a busy one. */
static void trim_when_quiet(struct sb_server *srv) {
    uint64_t msgs = srv->stats.msgs_in + srv->stats.msgs_out + srv->stats.accepted;
    uint64_t delta = msgs - srv->trim_seen;
    srv->trim_seen = msgs;
    if (delta >= 50) { /* not quiet yet */
        srv->trim_busy += delta;
        return;
    }
    if (srv->trim_busy >= 1000) {
        srv->trim_busy = 0;
        int r = malloc_trim(0);
        log_debug("quiet after %llu messages: heap trimmed (%d)", (unsigned long long)delta, r);
    }
}

static void on_sweep(evutil_socket_t fd, short what, void *arg) {
    struct sb_server *srv = arg;
    (void)fd;
    (void)what;
    srv->now = server_clock();
    conn_sweep(srv);
    trim_when_quiet(srv);
}

/* Drop every connection now. Handlers that wait are ended first (their
 * connections released); close handlers run from the reap may wait again,
 * so a second round ends those. */
static void drop_all(struct sb_server *srv) {
    for (int round = 0; round < 3; round++) {
        if (srv->script)
            script_cancel_waits(srv->script);
        for (struct conn *c = srv->all; c; c = c->next)
            conn_abort(c, WS_CLOSE_ABNORMAL);
        conn_reap_all(srv);
        if (!srv->held && !srv->reap && !(srv->script && script_waiting(srv->script)))
            break;
    }
}

/* Graceful shutdown, after the listeners are closed: every WebSocket is told 1001
 * and has until the drain deadline to answer and take its queued output; an
 * HTTP connection gets 503 for an upgrade. Idle HTTP connections (no request
 * started, nothing to write) do not hold the exit up. */
static void finish_shutdown(struct sb_server *srv, size_t busy) {
    drop_all(srv);
    unsigned long long clean = srv->stats.ws_closed_clean - srv->stop_clean0;
    unsigned long long all = srv->stop_ws > clean ? srv->stop_ws : clean;
    log_info("shutdown complete: %llu WebSocket connection(s) closed cleanly, %llu dropped%s",
             clean, all - clean, busy ? " (drain timeout passed)" : "");
}

/* Every 20 ms while shutting down: done when nothing but idle HTTP is left
 * and no handler waits. */
static void on_stop_tick(evutil_socket_t fd, short what, void *arg) {
    struct sb_server *srv = arg;
    (void)fd;
    (void)what;
    srv->now = server_clock();
    size_t busy = 0;
    for (struct conn *c = srv->all; c; c = c->next)
        if (!(c->state == CONN_HTTP && !c->hlen && !c->out.len && !c->holds))
            busy++;
    busy += script_waiting(srv->script);
    if (busy && srv->now < srv->stop_deadline)
        return;
    finish_shutdown(srv, busy);
    srv->stopping = 3;
    event_base_loopbreak(srv->base);
}

static void begin_shutdown(struct sb_server *srv) {
    srv->stopping = 1;
    srv->stop_deadline = srv->now + srv->cfg.drain_timeout;
    srv->stop_clean0 = srv->stats.ws_closed_clean;
    close_listeners(srv);
    size_t n = 0, closing = 0;
    for (struct conn *c = srv->all; c; c = c->next) {
        if (c->state == CONN_WS) {
            conn_close(c, WS_CLOSE_GOING_AWAY, "server shutting down", 20);
            c->deadline = srv->stop_deadline; /* the peer's close may take the whole drain */
            n++;
        } else if (c->state == CONN_CLOSING) {
            closing++;
        }
    }
    srv->stop_ws = n + closing;
    struct timeval tick = {0, 20000};
    srv->stop_ev = event_new(srv->base, -1, EV_PERSIST, on_stop_tick, srv);
    if (srv->stop_ev)
        event_add(srv->stop_ev, &tick);
    log_info("shutting down: closing %zu WebSocket connection(s) with 1001 (%zu already closing), "
             "draining for up to %g s",
             n, closing, srv->cfg.drain_timeout);
}

static void on_signal(evutil_socket_t sig, short what, void *arg) {
    struct sb_server *srv = arg;
    (void)what;
    if (sig == SIGHUP) {
        log_info("SIGHUP: reloading every script");
        if (srv->tls)
            tls_ctx_reload(srv->tls); /* new connections only; open ones keep theirs */
        script_reload(srv->script, NULL);
        return;
    }
    if (srv->stopping) {
        log_warn("second signal: exiting now, dropping %zu connection(s)", conn_count(srv));
        srv->stopping = 2;
        event_base_loopbreak(srv->base);
        return;
    }
    log_info("%s: graceful shutdown", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    begin_shutdown(srv);
}

int server_init(struct sb_server *srv, const struct sb_config *cfg) {
    /* Messages of tens of KiB come and go every iteration. By default glibc
     * hands the heap's top back to the kernel as soon as 128 KiB of it are
     * free (brk down, then a page fault per 4 KiB to get the same memory back
     * for the next message) and gives each block over 128 KiB an mmap of its
     * own (faulted in page by page, unmapped at the free). Keep both in the
     * heap: trim_when_quiet hands the memory back once the traffic calms. */
    mallopt(M_MMAP_THRESHOLD, 4 << 20);
    mallopt(M_TRIM_THRESHOLD, 64 << 20);
    memset(srv, 0, sizeof *srv);
    srv->cfg = *cfg;
    srv->spare_fd = -1;
    srv->now = server_clock();
    struct event_config *ec = event_config_new();
    /* precise: timers agree with switchboard.now() (not the coarse clock) */
    event_config_set_flag(ec, EVENT_BASE_FLAG_NOLOCK | EVENT_BASE_FLAG_PRECISE_TIMER);
    srv->base = event_base_new_with_config(ec);
    event_config_free(ec);
    if (!srv->base) {
        log_error("could not create the event loop");
        return -1;
    }
    srv->rbuf_size = READ_BUF_SIZE;
    srv->rbuf = malloc(srv->rbuf_size);
    srv->http_headers = malloc(sizeof *srv->http_headers * (cfg->max_headers + 1));
    srv->pubsub = pubsub_new();
    if (!srv->rbuf || !srv->http_headers || !srv->pubsub)
        return -1;
    router_install(srv);
    srv->script = script_new(srv, cfg->app_dir);
    if (!srv->script)
        return -1;
    if (cfg->watch)
        srv->reload = reload_new(srv, cfg->app_dir); /* NULL: logged, runs unwatched */
    for (int i = 0; i < cfg->n_listen; i++)
        if (add_listener(srv, cfg->listen[i], LISTEN_PLAIN) < 0)
            return -1;
    if (cfg->n_listen_tls && !(srv->tls = tls_ctx_new(cfg->tls_cert, cfg->tls_key)))
        return -1;
    for (int i = 0; i < cfg->n_listen_tls; i++)
        if (add_listener(srv, cfg->listen_tls[i], LISTEN_TLS) < 0)
            return -1;
    srv->deflate_shared = malloc(sizeof *srv->deflate_shared);
    if (!srv->deflate_shared)
        return -1;
    deflate_shared_init(srv->deflate_shared, &srv->cfg.deflate);
    if (cfg->metrics_listen && add_listener(srv, cfg->metrics_listen, LISTEN_METRICS) < 0)
        return -1;
    srv->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    struct timeval one = {1, 0};
    srv->sweep_ev = event_new(srv->base, -1, EV_PERSIST, on_sweep, srv);
    event_add(srv->sweep_ev, &one);
    int sigs[3] = {SIGTERM, SIGINT, SIGHUP};
    for (int i = 0; i < 3; i++) {
        srv->sig_ev[i] = evsignal_new(srv->base, sigs[i], on_signal, srv);
        event_add(srv->sig_ev[i], NULL);
    }
    return 0;
}

int server_check(const struct sb_config *cfg, int strict) {
    struct sb_server srv;
    memset(&srv, 0, sizeof srv);
    srv.cfg = *cfg;
    srv.spare_fd = -1;
    srv.now = server_clock();
    srv.base = event_base_new();
    srv.pubsub = pubsub_new();
    int rc = 1;
    if (srv.base && srv.pubsub)
        rc = script_check(&srv, cfg->app_dir, strict);
    else
        log_error("could not create the event loop");
    server_free(&srv);
    return rc;
}

int server_run(struct sb_server *srv) {
    for (;;) {
        /* Output queued by close handlers (run from the reap) or past the flush
         * rounds must not wait for the next event: poll without blocking. */
        int pending = srv->flush || srv->reap;
        int r = event_base_loop(srv->base, pending ? EVLOOP_NONBLOCK : EVLOOP_ONCE);
        srv->now = server_clock();
        conn_flush_all(srv);
        conn_reap_all(srv);
        if (srv->stopping >= 2 || r < 0)
            break;
        if (srv->stopping == 1 && !srv->all && !script_waiting(srv->script)) {
            finish_shutdown(srv, 0);
            break;
        }
    }
    return srv->stopping == 2 ? 1 : 0; /* 2: a second signal cut the drain short */
}

void server_free(struct sb_server *srv) {
    drop_all(srv);
    close_listeners(srv);
    reload_free(srv->reload);
    /* the server's own events go before the script and the outbound context:
     * outbound_ctx_free turns the loop once more (evdns's deferred callbacks),
     * where none of them may fire on what is freed */
    for (int i = 0; i < 3; i++)
        if (srv->sig_ev[i]) {
            event_free(srv->sig_ev[i]);
            srv->sig_ev[i] = NULL;
        }
    if (srv->sweep_ev) {
        event_free(srv->sweep_ev);
        srv->sweep_ev = NULL;
    }
    if (srv->stop_ev) {
        event_free(srv->stop_ev);
        srv->stop_ev = NULL;
    }
    if (srv->script)
        script_free(srv->script);
    outbound_ctx_free(srv->outbound);
    srv->outbound = NULL;
    history_free(srv->history);
    srv->history = NULL;
    if (srv->pubsub)
        pubsub_free(srv->pubsub);
    if (srv->deflate_shared) {
        deflate_shared_free(srv->deflate_shared);
        free(srv->deflate_shared);
    }
    tls_ctx_free(srv->tls);
    if (srv->base)
        event_base_free(srv->base);
    if (srv->spare_fd >= 0)
        close(srv->spare_fd);
    free(srv->rbuf);
    free(srv->http_headers);
}
