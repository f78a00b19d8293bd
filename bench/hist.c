/* hist.c — latency histogram with logarithmic buckets: exact below 128,
 * then 64 sub-buckets per power of two (relative error under 1.6%). */
#include "sbload.h"

#include <stdio.h>

static unsigned bucket_of(uint64_t v) {
    if (v < 128)
        return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = msb - 6;
    return (shift + 1) * 64 + (unsigned)((v >> shift) - 64);
}

static uint64_t bucket_mid(unsigned i) {
    if (i < 128)
        return i;
    unsigned shift = i / 64 - 1;
    uint64_t lo = (uint64_t)(i % 64 + 64) << shift;
    return lo + ((1ull << shift) >> 1);
}

void hist_add(struct hist *h, uint64_t v) {
    if (h->n == 0 || v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
    h->n++;
    h->b[bucket_of(v)]++;
}

void hist_merge(struct hist *into, const struct hist *from) {
    if (from->n == 0)
        return;
    if (into->n == 0 || from->min < into->min)
        into->min = from->min;
    if (from->max > into->max)
        into->max = from->max;
    into->n += from->n;
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        into->b[i] += from->b[i];
}

uint64_t hist_quantile(const struct hist *h, double q) {
    if (h->n == 0)
        return 0;
    uint64_t rank = (uint64_t)(q * (double)h->n);
    if (rank >= h->n)
        rank = h->n - 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h->b[i];
        if (seen > rank) {
            uint64_t v = bucket_mid(i);
            return v > h->max ? h->max : v < h->min ? h->min : v;
        }
    }
    return h->max;
}

void report_latency(const char *label, const struct hist *h) {
    printf("  %-10s us  p50 %.1f  p99 %.1f  p99.9 %.1f  max %.1f  (%llu samples)\n", label,
           hist_quantile(h, 0.5) / 1e3, hist_quantile(h, 0.99) / 1e3,
           hist_quantile(h, 0.999) / 1e3, h->max / 1e3, (unsigned long long)h->n);
}

void json_latency(const char *prefix, const struct hist *h) {
    printf("\"%s_p50_us\":%.1f,\"%s_p99_us\":%.1f,\"%s_p999_us\":%.1f,\"%s_max_us\":%.1f", prefix,
           hist_quantile(h, 0.5) / 1e3, prefix, hist_quantile(h, 0.99) / 1e3, prefix,
           hist_quantile(h, 0.999) / 1e3, prefix, h->max / 1e3);
}
