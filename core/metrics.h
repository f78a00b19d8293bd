/* metrics.h — the server's counters in the Prometheus text exposition format
 * (version 0.0.4), and the few helpers the counting places share.
 *
 * Counting is an increment in srv->stats where the event happens (conn.c,
 * script.c); this module only formats. Off by default: --metrics ADDR:PORT
 * serves /metrics on a listener of its own (server.c accepts on it like on any
 * other listener), --metrics-path PATH serves it on the main listeners. */
#ifndef SB_METRICS_H
#define SB_METRICS_H

#include <stddef.h>

#include "loop.h"

#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* Upper bounds (seconds) of the Lua handler time histogram buckets. */
extern const double metrics_time_bounds[SB_TIME_BUCKETS];

/* True when the metrics are served (and handler time is worth measuring). */
static inline int metrics_enabled(const struct sb_server *srv) {
    return srv->cfg.metrics_listen || srv->cfg.metrics_path;
}

/* Count one Lua call that took `seconds` in the handler time histogram. */
void metrics_observe_handler(struct sb_stats *st, double seconds);

/* The whole exposition as a malloc'ed buffer (the caller frees it) of *len
 * bytes, or NULL when out of memory. */
char *metrics_format(struct sb_server *srv, size_t *len);

/* Resident set size of this process in bytes (0 if /proc is unreadable). */
size_t metrics_resident_bytes(void);

#endif
