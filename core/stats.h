/* stats.h — the server's counters: what every layer counts, what metrics.c
 * and switchboard.stats() report. Plain data and arithmetic, no I/O but one
 * read of /proc. */
#ifndef SB_STATS_H
#define SB_STATS_H

#include <stddef.h>
#include <stdint.h>

#define SB_CLOSE_OTHER 16 /* close codes 1000..1015 have a bucket each; the rest share one */
#define SB_CLOSE_BUCKETS (SB_CLOSE_OTHER + 1)
#define SB_TIME_BUCKETS 12 /* upper bounds: stats_time_bounds */

/* Outbound calls (sb.http.request; sb.tcp.connect) by kind, and how each ended. */
enum sb_out_kind { SB_OUT_HTTP, SB_OUT_TCP, SB_OUT_KINDS };
enum sb_out_outcome {
    SB_OUT_OK,
    SB_OUT_TIMEOUT,
    SB_OUT_REFUSED,
    SB_OUT_DNS,
    SB_OUT_TLS,
    SB_OUT_CLOSED,    /* closed or reset by the peer */
    SB_OUT_CANCELLED, /* its handler was stopped while it waited */
    SB_OUT_ERROR,     /* anything else: body too large, bad HTTP, too many, ... */
    SB_OUT_OUTCOMES
};
extern const char *const stats_out_kinds[SB_OUT_KINDS];       /* "http", "tcp" */
extern const char *const stats_out_outcomes[SB_OUT_OUTCOMES]; /* "ok", "timeout", ... */

struct sb_stats {
    uint64_t accepted, open, ws_open, handshakes_ok, handshakes_refused;
    uint64_t msgs_in, msgs_out, bytes_in, bytes_out;
    uint64_t publishes, deliveries, dropped_deliveries, backpressure_events, slow_closed;
    uint64_t handler_errors, budget_stops, reloads_ok, reloads_failed;
    uint64_t route_load_failures; /* every failed load of a route script, start-up included */
    uint64_t timeouts;
    uint64_t handlers_waiting; /* gauge: handler and timer calls waiting now */
    uint64_t handler_waits;    /* calls that waited (went on after their first resume) */
    uint64_t handler_timeouts; /* calls ended by --handler-timeout */
    uint64_t redis_reconnects, redis_published, redis_received, redis_errors; /* --redis */
    uint64_t history_format_errors; /* a history format raised or returned no string */
    uint64_t redis_refused; /* payloads on sb:<topic> not delivered: not UTF-8, unknown tag */
    uint64_t sub_runs, sub_dropped; /* switchboard.subscribe: calls; past --subscribe-queue-max */
    /* switchboard.redis calls by outcome: a reply, an error reply, a timeout, a lost
     * or refused connection, refused for --redis-max-calls */
    uint64_t redis_calls_ok, redis_calls_error, redis_calls_timeout, redis_calls_failed;
    uint64_t redis_calls_refused;
    uint64_t redis_connects, redis_connects_reused, redis_connects_failed; /* new, pooled */
    uint64_t ws_closed_clean; /* both close frames exchanged */
    /* close frames by code: [code - 1000] for 1000..1015, [SB_CLOSE_OTHER] otherwise */
    uint64_t close_sent[SB_CLOSE_BUCKETS], close_rcvd[SB_CLOSE_BUCKETS];
    uint64_t handshake_status[600]; /* by HTTP status: 101 and each refusal */
    /* Lua handler time, only measured with metrics on (see metrics.h) */
    uint64_t handler_time_buckets[SB_TIME_BUCKETS + 1]; /* last: +Inf */
    double handler_time_sum;
    uint64_t out_calls[SB_OUT_KINDS][SB_OUT_OUTCOMES];
    uint64_t out_time_buckets[SB_OUT_KINDS][SB_TIME_BUCKETS + 1]; /* last: +Inf */
    double out_time_sum[SB_OUT_KINDS];
};

/* Bucket of a close code in sb_stats.close_sent / close_rcvd. */
static inline unsigned sb_close_bucket(unsigned code) {
    return code >= 1000 && code < 1000 + SB_CLOSE_OTHER ? code - 1000 : SB_CLOSE_OTHER;
}

/* Upper bounds (seconds) of the handler time buckets; the last bucket is +Inf. */
extern const double stats_time_bounds[SB_TIME_BUCKETS];

/* Count one handler call that took seconds. */
void stats_observe_handler(struct sb_stats *st, double seconds);

/* Count one outbound call of kind k that ended with err (NULL: success;
 * "cancelled": abandoned) after seconds. */
void stats_observe_outbound(struct sb_stats *st, enum sb_out_kind k, const char *err,
                            double seconds);

/* This process's resident memory in bytes (0 when /proc cannot tell). */
size_t stats_resident_bytes(void);

#endif
