/* connect.c — `sbload connect`: open C connections as fast as possible over P
 * child processes (one process may hold at most ~20,000 descriptors) and N
 * source addresses 127.0.0.2.. (one address has ~28,000 ephemeral ports),
 * hold them idle, and report handshakes/s and the server's VmRSS growth per
 * connection. A child reports over a pipe once all its connections are open,
 * holds them until the parent closes its control pipe, and fails if any of
 * them is closed meanwhile. */
#include "sbload.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/wait.h>
#include <unistd.h>

struct report {
    long opened;
    uint64_t t_done; /* monotonic ns when this child's last handshake completed */
    struct hist hs;  /* handshake latency: connect() to 101 */
};

static long rss_kib(long pid) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%ld/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        sb_fail("cannot read %s: %s (is --pid the server's process?)", path, strerror(errno));
    long kib = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
            break;
    fclose(f);
    if (kib < 0)
        sb_fail("no VmRSS in %s", path);
    return kib;
}

static struct hist *child_hs;

static void connect_open(struct conn *c) { hist_add(child_hs, G.now - c->t_start); }

static void connect_message(struct conn *c, int op, uint8_t *p, size_t n) {
    (void)op, (void)p;
    conn_fail(c, "idle connection received a %zu-byte message", n);
}

static const struct wsc_mode connect_mode = {connect_open, connect_message};

static void write_all(int fd, const void *p, size_t n) {
    const char *s = p;
    while (n) {
        ssize_t w = write(fd, s, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            sb_fail("report pipe: %s", strerror(errno));
        s += w, n -= (size_t)w;
    }
}

static int read_all(int fd, void *p, size_t n) {
    char *s = p;
    while (n) {
        ssize_t r = read(fd, s, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        s += r, n -= (size_t)r;
    }
    return 0;
}

static _Noreturn void child(long first, long count, int nsrc, int rep, int ctl) {
    struct report *r = calloc(1, sizeof *r);
    struct conn *conns = calloc((size_t)count, sizeof *conns);
    if (!r || !conns)
        sb_fail("out of memory");
    child_hs = &r->hs;
    close(G.ep); /* the parent's epoll instance would be shared with the other children */
    G.ep = epoll_create1(EPOLL_CLOEXEC);
    if (G.ep < 0)
        sb_fail("epoll_create1: %s", strerror(errno));
    G.mode = &connect_mode;
    G.now = now_ns();
    G.deadline = G.now + (uint64_t)(G.o.timeout * 1e9);
    alarm((unsigned)G.o.timeout + 10);
    uint64_t seed = now_ns() ^ (uint64_t)getpid() << 32;
    long next = 0;
    while (G.open < count) {
        while (next < count && G.opening < G.o.window) {
            long id = first + next;
            conns[next].seed = rng_next(&seed);
            wsc_connect(&conns[next], (uint32_t)id, nsrc > 0 ? (int)(id % nsrc) : -1);
            next++;
        }
        wsc_turn(10);
    }
    r->opened = G.open;
    r->t_done = G.now;
    write_all(rep, r, sizeof *r);
    /* Hold: any event on a connection is a failure (conn_fail); the parent ends
     * the hold by closing the control pipe. */
    for (;;) {
        struct pollfd p = {.fd = ctl, .events = POLLIN};
        if (poll(&p, 1, 0) > 0)
            break;
        wsc_turn(50);
    }
    for (long i = 0; i < count; i++)
        wsc_close(&conns[i]);
    uint64_t grace = G.now + 3000000000ull;
    while (G.closing > 0 && G.now < grace)
        wsc_turn(10);
    for (long i = 0; i < count; i++)
        wsc_free(&conns[i]);
    exit(0);
}

int mode_connect(void) {
    struct opts *o = &G.o;
    if (o->conns < 1)
        sb_fail("connect needs -c >= 1");
    if (o->procs < 0)
        o->procs = o->conns / 16000 + 1;
    if (o->procs < 1)
        o->procs = 1;
    if (!o->timeout)
        o->timeout = 60 + o->hold;
    alarm((unsigned)o->timeout + 20);
    wsc_init();
    if (o->nsrc < 0)
        o->nsrc = G.loopback ? o->conns / 16000 + 1 : 0;
    if (o->nsrc > 0 && !G.loopback)
        sb_fail("--src needs a loopback (127.x) server address");
    if (o->nsrc > 250)
        sb_fail("--src at most 250");
    long rss0 = o->pid ? rss_kib(o->pid) : 0;
    uint64_t t0 = now_ns();
    pid_t *pids = calloc((size_t)o->procs, sizeof *pids);
    int *reps = calloc((size_t)o->procs, sizeof *reps);
    int ctl[2];
    if (!pids || !reps || pipe(ctl) < 0)
        sb_fail("out of memory or pipes");
    fflush(stdout);
    for (long p = 0; p < o->procs; p++) {
        long first = o->conns * p / o->procs, last = o->conns * (p + 1) / o->procs;
        int rep[2];
        if (pipe(rep) < 0)
            sb_fail("pipe: %s", strerror(errno));
        pids[p] = fork();
        if (pids[p] < 0)
            sb_fail("fork: %s", strerror(errno));
        if (pids[p] == 0) {
            close(rep[0]);
            close(ctl[1]);
            child(first, last - first, (int)o->nsrc, rep[1], ctl[0]);
        }
        close(rep[1]);
        reps[p] = rep[0];
    }
    close(ctl[0]);
    struct hist *hs = calloc(1, sizeof *hs);
    struct report *r = calloc(1, sizeof *r);
    if (!hs || !r)
        sb_fail("out of memory");
    long opened = 0;
    uint64_t t_all = t0;
    int failed = 0;
    for (long p = 0; p < o->procs; p++) {
        if (read_all(reps[p], r, sizeof *r) < 0) {
            failed = 1;
            continue;
        }
        opened += r->opened;
        if (r->t_done > t_all)
            t_all = r->t_done;
        hist_merge(hs, &r->hs);
    }
    double t_open = (double)(t_all - t0) / 1e9;
    long rss1 = 0, rss2 = 0;
    if (!failed) {
        if (o->pid)
            rss1 = rss_kib(o->pid);
        uint64_t until = now_ns() + (uint64_t)(o->hold * 1e9);
        while (!failed && now_ns() < until) {
            usleep(50000);
            for (long p = 0; p < o->procs; p++) { /* a child that died early failed */
                int st;
                if (waitpid(pids[p], &st, WNOHANG) == pids[p])
                    failed = 1, pids[p] = 0;
            }
        }
        if (o->pid && !failed)
            rss2 = rss_kib(o->pid);
    }
    close(ctl[1]);
    for (long p = 0; p < o->procs; p++) {
        int st;
        if (pids[p] > 0 && (waitpid(pids[p], &st, 0) != pids[p] || !WIFEXITED(st) ||
                            WEXITSTATUS(st) != 0))
            failed = 1;
    }
    if (failed)
        sb_fail("connect: a child process failed (see its error above)");
    long rss = rss2 > rss1 ? rss2 : rss1;
    double per = o->pid ? (double)(rss - rss0) * 1024.0 / (double)opened : 0;
    double rate = t_open > 0 ? (double)opened / t_open : 0;
    if (o->json) {
        printf("{\"mode\":\"connect\",\"url\":\"%s\",\"conns\":%ld,\"procs\":%ld,\"src\":%ld,"
               "\"open_seconds\":%.3f,\"handshakes_per_s\":%.0f,",
               o->url, opened, o->procs, o->nsrc, t_open, rate);
        json_latency("handshake", hs);
        if (o->pid)
            printf(",\"rss_before_kib\":%ld,\"rss_after_kib\":%ld,\"bytes_per_conn\":%.0f", rss0,
                   rss, per);
        printf(",\"errors\":0}\n");
    } else {
        printf("connect %s: %ld connections over %ld processes, %ld source addresses\n", o->url,
               opened, o->procs, o->nsrc);
        printf("  opened in %.2f s  (%.0f handshakes/s), held %.1f s idle, none dropped\n", t_open,
               rate, o->hold);
        report_latency("handshake", hs);
        if (o->pid)
            printf("  server VmRSS %ld KiB -> %ld KiB: %.0f B per connection\n", rss0, rss, per);
    }
    free(hs);
    free(r);
    free(pids);
    free(reps);
    return 0;
}
