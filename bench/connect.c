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
    long echoed;     /* --echo: connections whose one message came back */
    uint64_t t_done; /* monotonic ns when this child's last handshake completed */
    struct hist hs;  /* handshake latency: connect() to 101 */
};

/* --term: the second report, once every connection got its close and the
 * server closed the TCP connection. */
struct term_report {
    long closes;                   /* close frames with the expected code */
    uint64_t first, last, all_gone; /* first and last close frame; last TCP close */
};

static struct hist *child_hs;
static long child_echoed;

/* --echo: each connection sends one 32-byte text message once open, naming
 * itself; the echo must be that message. */
static void echo_text(struct conn *c, char out[33]) {
    snprintf(out, 33, "sbload connect echo %012u", c->id);
}

static void connect_open(struct conn *c) {
    hist_add(child_hs, G.now - c->t_start);
    if (G.o.echo_once) {
        char m[33];
        echo_text(c, m);
        wsc_frame(c, 1, (const uint8_t *)m, 32, (uint32_t)rng_next(&c->seed));
        c->sent = 1;
    }
}

static void connect_message(struct conn *c, int op, uint8_t *p, size_t n) {
    char m[33];
    echo_text(c, m);
    if (!G.o.echo_once || c->recvd || op != 1 || n != 32 || memcmp(p, m, 32) != 0)
        conn_fail(c, "%s received a %zu-byte message%s", G.o.echo_once ? "connection" : "idle connection",
                  n, G.o.echo_once ? " that is not the echo of its one message" : "");
    c->recvd = 1;
    child_echoed++;
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
    while (G.o.echo_once && child_echoed < count)
        wsc_turn(10);
    r->echoed = child_echoed;
    write_all(rep, r, sizeof *r);
    /* Hold: any event on a connection is a failure (conn_fail) but, with
     * --term, a close with 1001 (Going Away); the parent ends the hold by
     * closing the control pipe (after its SIGTERM with --term). */
    if (G.o.term)
        G.expect_close = 1001;
    for (;;) {
        struct pollfd p = {.fd = ctl, .events = POLLIN};
        if (poll(&p, 1, 0) > 0)
            break;
        wsc_turn(50);
    }
    if (G.o.term) {
        while (G.closes < count || G.closing > 0)
            wsc_turn(10); /* the global deadline bounds this */
        struct term_report t = {G.closes, G.close_first, G.close_last, G.now};
        write_all(rep, &t, sizeof t);
        exit(0);
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
    if (o->term && !o->pid)
        sb_fail("--term needs --pid (the server to send SIGTERM to)");
    long nproc = 0;
    long rss0 = o->pid ? rss_tree_kib(o->pid, &nproc) : 0;
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
    long opened = 0, echoed = 0;
    uint64_t t_all = t0;
    int failed = 0;
    for (long p = 0; p < o->procs; p++) {
        if (read_all(reps[p], r, sizeof *r) < 0) {
            failed = 1;
            continue;
        }
        opened += r->opened;
        echoed += r->echoed;
        if (r->t_done > t_all)
            t_all = r->t_done;
        hist_merge(hs, &r->hs);
    }
    double t_open = (double)(t_all - t0) / 1e9;
    long rss1 = 0, rss2 = 0;
    if (!failed) {
        if (o->pid)
            rss1 = rss_tree_kib(o->pid, &nproc);
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
            rss2 = rss_tree_kib(o->pid, &nproc);
    }
    /* --term: SIGTERM the server; every connection must get 1001 and then its
     * TCP close (each child checks its own and reports when all are gone). */
    uint64_t t_term = now_ns();
    long closes = 0;
    uint64_t first = UINT64_MAX, last = 0, gone = 0;
    if (o->term && !failed && kill((pid_t)o->pid, SIGTERM) < 0)
        sb_fail("kill %ld: %s", o->pid, strerror(errno));
    close(ctl[1]);
    for (long p = 0; o->term && !failed && p < o->procs; p++) {
        struct term_report t;
        if (read_all(reps[p], &t, sizeof t) < 0) {
            failed = 1;
            continue;
        }
        closes += t.closes;
        first = t.first < first ? t.first : first;
        last = t.last > last ? t.last : last;
        gone = t.all_gone > gone ? t.all_gone : gone;
    }
    if (o->term && !failed && (closes != opened || first < t_term))
        sb_fail("--term: %ld of %ld connections got 1001%s", closes, opened,
                first < t_term ? ", some before the SIGTERM" : "");
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
            printf(",\"server_processes\":%ld,\"rss_before_kib\":%ld,\"rss_after_kib\":%ld,"
                   "\"bytes_per_conn\":%.0f", nproc, rss0, rss, per);
        if (o->echo_once)
            printf(",\"echoed\":%ld", echoed);
        if (o->term)
            printf(",\"closed_1001\":%ld,\"term_first_close_s\":%.3f,\"term_last_close_s\":%.3f,"
                   "\"term_all_gone_s\":%.3f", closes, (double)(first - t_term) / 1e9,
                   (double)(last - t_term) / 1e9, (double)(gone - t_term) / 1e9);
        printf(",\"errors\":0}\n");
    } else {
        printf("connect %s: %ld connections over %ld processes, %ld source addresses\n", o->url,
               opened, o->procs, o->nsrc);
        printf("  opened in %.2f s  (%.0f handshakes/s), held %.1f s idle, none dropped\n", t_open,
               rate, o->hold);
        report_latency("handshake", hs);
        if (o->pid)
            printf("  server VmRSS (%ld processes) %ld KiB -> %ld KiB: %.0f B per connection\n",
                   nproc, rss0, rss, per);
        if (o->echo_once)
            printf("  %ld of them echoed one message each\n", echoed);
        if (o->term)
            printf("  SIGTERM: %ld closes with 1001, from %.3f s to %.3f s; every TCP connection "
                   "closed by %.3f s\n", closes, (double)(first - t_term) / 1e9,
                   (double)(last - t_term) / 1e9, (double)(gone - t_term) / 1e9);
    }
    free(hs);
    free(r);
    free(pids);
    free(reps);
    return 0;
}
