/* stats.c — the counters' arithmetic. */
#include "stats.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

const double stats_time_bounds[SB_TIME_BUCKETS] = {
    0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5,
};

void stats_observe_handler(struct sb_stats *st, double seconds) {
    unsigned i = 0;
    while (i < SB_TIME_BUCKETS && seconds > stats_time_bounds[i])
        i++;
    st->handler_time_buckets[i]++;
    st->handler_time_sum += seconds;
}

const char *const stats_out_kinds[SB_OUT_KINDS] = {"http", "tcp"};
const char *const stats_out_outcomes[SB_OUT_OUTCOMES] = {
    "ok", "timeout", "refused", "dns", "tls", "closed", "cancelled", "error",
};

static enum sb_out_outcome outcome_of(const char *err) {
    if (!err)
        return SB_OUT_OK;
    if (strcmp(err, "timeout") == 0 || strcmp(err, "dns: timeout") == 0)
        return SB_OUT_TIMEOUT;
    if (strcmp(err, "connection refused") == 0)
        return SB_OUT_REFUSED;
    if (strncmp(err, "dns: ", 5) == 0)
        return SB_OUT_DNS;
    if (strncmp(err, "tls: ", 5) == 0)
        return SB_OUT_TLS;
    if (strcmp(err, "closed") == 0 || strcmp(err, "connection reset") == 0)
        return SB_OUT_CLOSED;
    if (strcmp(err, "cancelled") == 0)
        return SB_OUT_CANCELLED;
    return SB_OUT_ERROR;
}

void stats_observe_outbound(struct sb_stats *st, enum sb_out_kind k, const char *err,
                            double seconds) {
    st->out_calls[k][outcome_of(err)]++;
    unsigned i = 0;
    while (i < SB_TIME_BUCKETS && seconds > stats_time_bounds[i])
        i++;
    st->out_time_buckets[k][i]++;
    st->out_time_sum[k] += seconds;
}

size_t stats_resident_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return 0;
    unsigned long size = 0, resident = 0;
    int n = fscanf(f, "%lu %lu", &size, &resident);
    fclose(f);
    long page = sysconf(_SC_PAGESIZE);
    return n == 2 && page > 0 ? (size_t)resident * (size_t)page : 0;
}
