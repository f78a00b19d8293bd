/* cpu.c — CPU time over the measured window: the server's (--pid: every
 * thread of the process, utime + stime from /proc/PID/stat, in clock ticks)
 * and sbload's own (CLOCK_PROCESS_CPUTIME_ID). A rate means little without
 * them: a server at 60% of its CPU was waiting on the load generator, and a
 * load generator near 100% of its CPU measured itself. */
#include "sbload.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static uint64_t pid_cpu_ns(long pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        sb_fail("cannot read %s: %s (is --pid the server's process?)", path, strerror(errno));
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    /* after "(comm)": state is field 3; utime and stime are fields 14 and 15 */
    char *p = strrchr(buf, ')');
    unsigned long long ut, st;
    if (!p || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        sb_fail("cannot parse %s", path);
    long hz = sysconf(_SC_CLK_TCK);
    return (ut + st) * (1000000000ull / (uint64_t)(hz > 0 ? hz : 100));
}

static uint64_t self_cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void cpu_begin(struct cpu_window *w) {
    w->t0 = now_ns();
    w->self0 = self_cpu_ns();
    w->srv0 = G.o.pid ? pid_cpu_ns(G.o.pid) : 0;
    w->started = 1;
}

void cpu_end(struct cpu_window *w) {
    if (!w->started)
        cpu_begin(w);
    w->wall = now_ns() - w->t0;
    w->self = self_cpu_ns() - w->self0;
    w->srv = G.o.pid ? pid_cpu_ns(G.o.pid) - w->srv0 : 0;
}

static double util(uint64_t cpu, uint64_t wall) {
    return wall ? (double)cpu / (double)wall : 0;
}

void cpu_report(const struct cpu_window *w, uint64_t ops, const char *op) {
    if (G.o.pid)
        printf("  server CPU %.0f%% of one core, %.0f ns per %s\n", 100 * util(w->srv, w->wall),
               ops ? (double)w->srv / (double)ops : 0, op);
    printf("  sbload CPU %.0f%% of one core%s\n", 100 * util(w->self, w->wall),
           util(w->self, w->wall) >= LOAD_BOUND
               ? ": the load generator was the limit, not the server (the rate is its own)"
               : "");
}

void cpu_json(const struct cpu_window *w, uint64_t ops, const char *op) {
    if (G.o.pid)
        printf("\"server_cpu_util\":%.3f,\"server_cpu_ns_per_%s\":%.1f,", util(w->srv, w->wall),
               op, ops ? (double)w->srv / (double)ops : 0);
    printf("\"load_cpu_util\":%.3f,\"load_bound\":%s,", util(w->self, w->wall),
           util(w->self, w->wall) >= LOAD_BOUND ? "true" : "false");
}
