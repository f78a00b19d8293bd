/* metrics.c — format srv->stats and the per-route counters as Prometheus text
 * (exposition format 0.0.4). Label values come from bounded sets: routes that
 * exist, HTTP statuses (< 600), close codes 1000..1015 and "other". */
#define _GNU_SOURCE
#include "metrics.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conn.h"
#include "history.h"
#include "log.h"
#include "outbound.h"
#include "redis.h"
#include "script.h"

#ifndef SB_VERSION
#define SB_VERSION "0.0.0"
#endif


/* ---- output buffer ------------------------------------------------------------ */

struct mbuf {
    char *p;
    size_t len, cap;
    int oom;
};

static void put(struct mbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(struct mbuf *b, const char *fmt, ...) {
    if (b->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = 1;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t ncap = b->cap * 2 + (size_t)n;
        char *np = realloc(b->p, ncap);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = ncap;
    }
}

static void family(struct mbuf *b, const char *name, const char *type, const char *help) {
    put(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void counter(struct mbuf *b, const char *name, const char *help, uint64_t v) {
    family(b, name, "counter", help);
    put(b, "%s %llu\n", name, (unsigned long long)v);
}

static void gauge(struct mbuf *b, const char *name, const char *help, double v) {
    family(b, name, "gauge", help);
    put(b, "%s %.17g\n", name, v);
}

/* A label value with \, " and newline escaped (route paths come from file names). */
static void put_label(struct mbuf *b, const char *v) {
    for (; *v; v++) {
        if (*v == '\\' || *v == '"')
            put(b, "\\%c", *v);
        else if (*v == '\n')
            put(b, "\\n");
        else
            put(b, "%c", *v);
    }
}

static void by_route(struct mbuf *b, struct script *s, const char *name, const char *type,
                     const char *help, int total) {
    family(b, name, type, help);
    for (struct route *r = script_routes(s); r; r = r->next) {
        if (!r->version)
            continue; /* never loaded: not a route */
        put(b, "%s{route=\"", name);
        put_label(b, r->path);
        put(b, "\"} %llu\n", (unsigned long long)(total ? r->ws_total : r->ws_open));
    }
}

static void close_codes(struct mbuf *b, const char *name, const char *help, const uint64_t *v) {
    family(b, name, "counter", help);
    for (unsigned i = 0; i < SB_CLOSE_BUCKETS; i++) {
        if (!v[i])
            continue;
        if (i == SB_CLOSE_OTHER)
            put(b, "%s{code=\"other\"} %llu\n", name, (unsigned long long)v[i]);
        else
            put(b, "%s{code=\"%u\"} %llu\n", name, 1000 + i, (unsigned long long)v[i]);
    }
}

char *metrics_format(struct sb_server *srv, size_t *len) {
    const struct sb_stats *st = &srv->stats;
    struct mbuf b = {malloc(8192), 0, 8192, 0};
    if (!b.p)
        return NULL;
    family(&b, "switchboard_build_info", "gauge", "The running version (always 1).");
    put(&b, "switchboard_build_info{version=\"%s\"} 1\n", SB_VERSION);

    counter(&b, "switchboard_connections_accepted_total", "TCP connections accepted.",
            st->accepted);
    gauge(&b, "switchboard_connections_open", "TCP connections open (HTTP and WebSocket).",
          (double)st->open);
    by_route(&b, srv->script, "switchboard_websocket_connections_open", "gauge",
             "WebSocket connections open, by route.", 0);
    by_route(&b, srv->script, "switchboard_websocket_connections_total", "counter",
             "WebSocket connections accepted (101), by route.", 1);
    family(&b, "switchboard_handshakes_total", "counter",
           "WebSocket upgrade requests by answer: 101, or the HTTP status of the refusal.");
    put(&b, "switchboard_handshakes_total{status=\"101\"} %llu\n",
        (unsigned long long)st->handshake_status[101]);
    for (int i = 102; i < 600; i++)
        if (st->handshake_status[i])
            put(&b, "switchboard_handshakes_total{status=\"%d\"} %llu\n", i,
                (unsigned long long)st->handshake_status[i]);

    counter(&b, "switchboard_messages_received_total", "WebSocket messages received.",
            st->msgs_in);
    counter(&b, "switchboard_messages_sent_total",
            "WebSocket messages sent (ws:send and pub/sub deliveries).", st->msgs_out);
    counter(&b, "switchboard_message_received_bytes_total",
            "Payload bytes of the WebSocket messages received.", st->bytes_in);
    counter(&b, "switchboard_message_sent_bytes_total",
            "Payload bytes of the WebSocket messages sent.", st->bytes_out);
    close_codes(&b, "switchboard_close_frames_sent_total", "Close frames sent, by close code.",
                st->close_sent);
    close_codes(&b, "switchboard_close_frames_received_total",
                "Close frames received, by close code.", st->close_rcvd);
    counter(&b, "switchboard_websocket_clean_closes_total",
            "WebSocket connections ended by a complete closing handshake.", st->ws_closed_clean);

    counter(&b, "switchboard_publishes_total", "Pub/sub publishes (ws:publish, switchboard.publish).",
            st->publishes);
    counter(&b, "switchboard_deliveries_total", "Published messages queued to a subscriber.",
            st->deliveries);
    counter(&b, "switchboard_deliveries_dropped_total",
            "Published messages dropped for a subscriber past --out-high.", st->dropped_deliveries);
    counter(&b, "switchboard_backpressure_events_total",
            "Times a connection's queued output passed --out-high.", st->backpressure_events);
    counter(&b, "switchboard_slow_consumers_closed_total",
            "Connections closed with 1008 for reading too slowly (--out-max, --slow-policy close).",
            st->slow_closed);
    counter(&b, "switchboard_timeouts_total",
            "Connections ended by a timeout (handshake, pong, idle).", st->timeouts);

    counter(&b, "switchboard_lua_errors_total",
            "Lua handler calls that raised (including budget stops and out-of-memory).",
            st->handler_errors);
    counter(&b, "switchboard_lua_budget_stops_total",
            "Lua handler calls stopped by the --lua-budget instruction budget.", st->budget_stops);
    gauge(&b, "switchboard_lua_handlers_waiting",
          "Lua handler and timer calls waiting now (sb.sleep, I/O, light threads).",
          (double)st->handlers_waiting);
    counter(&b, "switchboard_lua_handler_waits_total",
            "Lua handler and timer calls that waited.", st->handler_waits);
    counter(&b, "switchboard_lua_handler_timeouts_total",
            "Lua handler calls ended by --handler-timeout.", st->handler_timeouts);
    family(&b, "switchboard_lua_handler_duration_seconds", "histogram",
           "Time of each call into Lua (handlers, timers, script loads).");
    uint64_t cum = 0;
    for (int i = 0; i < SB_TIME_BUCKETS; i++) {
        cum += st->handler_time_buckets[i];
        put(&b, "switchboard_lua_handler_duration_seconds_bucket{le=\"%g\"} %llu\n",
            stats_time_bounds[i], (unsigned long long)cum);
    }
    cum += st->handler_time_buckets[SB_TIME_BUCKETS];
    put(&b, "switchboard_lua_handler_duration_seconds_bucket{le=\"+Inf\"} %llu\n",
        (unsigned long long)cum);
    put(&b, "switchboard_lua_handler_duration_seconds_sum %.9f\n", st->handler_time_sum);
    put(&b, "switchboard_lua_handler_duration_seconds_count %llu\n", (unsigned long long)cum);

    family(&b, "switchboard_outbound_calls_total", "counter",
           "Outbound calls (sb.http.request; sb.tcp.connect) by kind and how they ended.");
    for (int k = 0; k < SB_OUT_KINDS; k++)
        for (int o = 0; o < SB_OUT_OUTCOMES; o++)
            put(&b, "switchboard_outbound_calls_total{kind=\"%s\",outcome=\"%s\"} %llu\n",
                stats_out_kinds[k], stats_out_outcomes[o],
                (unsigned long long)st->out_calls[k][o]);
    family(&b, "switchboard_outbound_duration_seconds", "histogram",
           "Time of each outbound call, from the call to its answer or failure.");
    for (int k = 0; k < SB_OUT_KINDS; k++) {
        const char *kind = stats_out_kinds[k];
        uint64_t n = 0;
        for (int i = 0; i < SB_TIME_BUCKETS; i++) {
            n += st->out_time_buckets[k][i];
            put(&b, "switchboard_outbound_duration_seconds_bucket{kind=\"%s\",le=\"%g\"} %llu\n",
                kind, stats_time_bounds[i], (unsigned long long)n);
        }
        n += st->out_time_buckets[k][SB_TIME_BUCKETS];
        put(&b, "switchboard_outbound_duration_seconds_bucket{kind=\"%s\",le=\"+Inf\"} %llu\n",
            kind, (unsigned long long)n);
        put(&b, "switchboard_outbound_duration_seconds_sum{kind=\"%s\"} %.9f\n", kind,
            st->out_time_sum[k]);
        put(&b, "switchboard_outbound_duration_seconds_count{kind=\"%s\"} %llu\n", kind,
            (unsigned long long)n);
    }
    gauge(&b, "switchboard_presence_entries",
          "Presence entries of this process's connections (ws:subscribe with presence).",
          (double)script_presence_entries(srv->script));
    gauge(&b, "switchboard_script_subscriptions",
          "switchboard.subscribe subscriptions live now.",
          (double)script_subscriptions(srv->script));
    counter(&b, "switchboard_script_subscription_calls_total",
            "Calls of switchboard.subscribe functions (one per message).", st->sub_runs);
    counter(&b, "switchboard_script_subscription_dropped_total",
            "Messages dropped for a switchboard.subscribe function past --subscribe-queue-max.",
            st->sub_dropped);
    gauge(&b, "switchboard_outbound_connections_open",
          "Outbound connections open now (sb.http, sb.tcp; --max-outbound).",
          (double)outbound_open_count(srv->outbound));

    gauge(&b, "switchboard_history_bytes",
          "Bytes of topic history kept in this process (--history-max-bytes).",
          (double)history_bytes(srv->history));
    counter(&b, "switchboard_history_evictions_total",
            "Kept publications dropped for --history-max-bytes (the oldest first).",
            history_evictions(srv->history));
    counter(&b, "switchboard_history_format_errors_total",
            "History format functions that raised or returned no string.",
            st->history_format_errors);

    if (srv->cfg.redis_url) {
        counter(&b, "switchboard_redis_reconnects_total", "Reconnections to Redis (--redis).",
                st->redis_reconnects);
        counter(&b, "switchboard_redis_published_total", "Publishes sent to Redis.",
                st->redis_published);
        counter(&b, "switchboard_redis_received_total", "Messages received from Redis.",
                st->redis_received);
        counter(&b, "switchboard_redis_errors_total", "Redis errors (lost connection, bad reply).",
                st->redis_errors);
        counter(&b, "switchboard_redis_refused_total",
                "Messages on sb:<topic> not delivered: a text that is not UTF-8, an unknown tag.",
                st->redis_refused);
        counter(&b, "switchboard_redis_dropped_total",
                "Publishes kept local because --redis-out-max bytes were unanswered by Redis.",
                redis_dropped(srv->redis));
    }
    family(&b, "switchboard_redis_calls_total", "counter",
           "switchboard.redis calls, by outcome: ok (a reply), error (an error reply), timeout, "
           "failed (connection lost or refused), refused (past --redis-max-calls).");
    static const char *const call_outcomes[] = {"ok", "error", "timeout", "failed", "refused"};
    const uint64_t calls[] = {st->redis_calls_ok, st->redis_calls_error, st->redis_calls_timeout,
                              st->redis_calls_failed, st->redis_calls_refused};
    for (int i = 0; i < 5; i++)
        put(&b, "switchboard_redis_calls_total{outcome=\"%s\"} %llu\n", call_outcomes[i],
            (unsigned long long)calls[i]);
    family(&b, "switchboard_redis_connects_total", "counter",
           "switchboard.redis.connect, by outcome: new (a new connection), pooled (an idle one "
           "reused), failed.");
    put(&b, "switchboard_redis_connects_total{outcome=\"new\"} %llu\n",
        (unsigned long long)st->redis_connects);
    put(&b, "switchboard_redis_connects_total{outcome=\"pooled\"} %llu\n",
        (unsigned long long)st->redis_connects_reused);
    put(&b, "switchboard_redis_connects_total{outcome=\"failed\"} %llu\n",
        (unsigned long long)st->redis_connects_failed);
    family(&b, "switchboard_reloads_total", "counter", "Script reloads, by outcome.");
    put(&b, "switchboard_reloads_total{outcome=\"ok\"} %llu\n", (unsigned long long)st->reloads_ok);
    put(&b, "switchboard_reloads_total{outcome=\"failed\"} %llu\n",
        (unsigned long long)st->reloads_failed);
    counter(&b, "switchboard_route_load_failures_total",
            "Route scripts that failed to load, at start-up or on a reload.",
            st->route_load_failures);
    gauge(&b, "switchboard_lua_memory_bytes", "Memory in use by the Lua state.",
          (double)script_memory(srv->script));
    gauge(&b, "process_resident_memory_bytes", "Resident memory size in bytes.",
          (double)stats_resident_bytes());
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    *len = b.len;
    return b.p;
}
