/* stats.c — the counters' arithmetic. */
#include "stats.h"

#include <stdio.h>
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
