/* metrics.h — the server's counters in the Prometheus text exposition format
 * (version 0.0.4).
 *
 * Counting is an increment in srv->stats where the event happens (conn.c,
 * script.c; stats.h has the helpers); this module only formats. Off by default: --metrics ADDR:PORT
 * serves /metrics on a listener of its own (server.c accepts on it like on any
 * other listener), --metrics-path PATH serves it on the main listeners. */
#ifndef SB_METRICS_H
#define SB_METRICS_H

#include <stddef.h>

#include "loop.h"

#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* The whole exposition as a malloc'ed buffer (the caller frees it) of *len
 * bytes, or NULL when out of memory. */
char *metrics_format(struct sb_server *srv, size_t *len);

#endif
