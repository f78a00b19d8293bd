/* fanout.c — `sbload fanout`: N subscribers connect to URL?role=sub, then one
 * publisher to URL?role=pub. The route must send every message the publisher
 * sends to every subscriber (bench/fanout.lua: ws:subscribe in open for
 * subscribers, sb.publish on message from the publisher), with the same
 * opcode. A message carries its sequence number and send time:
 *   text:   "%016llx%016llx" (seq, CLOCK_MONOTONIC ns in hex), padded with '.' to S
 *   binary: seq and time as little-endian uint64, padded with zeros to S
 * Each subscriber must receive every message, in order, intact. The publisher
 * keeps D messages in flight: a message is done once every subscriber has it. */
#include "sbload.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static struct conn *subs, *pub;
static struct hist lat;
static uint64_t *left; /* deliveries still due, per in-flight slot (seq % D); shared */
static uint64_t pub_sent, done, deliveries, counted, t_measure, t_end;
static int sending;
static uint8_t *msgbuf, *pad; /* pad: S dots, what a text message's tail must be */
static struct cpu_window cpu;

/* --procs P > 1: subscribers live in P child processes; the publisher stays in
 * the parent. What they share is mapped before the fork. */
struct shared {
    uint64_t published;          /* messages sent so far (parent writes) */
    uint64_t t_measure, t_end;   /* the measured window (parent writes) */
    uint64_t final;              /* set once publishing is over: every subscriber needs this many */
};
static struct shared *sh;
static int multi; /* subscribers are in child processes */

/* The measured window's CPU time (cpu.c): opened and closed by the loop that
 * publishes. */
static void sample_cpu(void) {
    if (!cpu.started && G.now >= t_measure)
        cpu_begin(&cpu);
    if (G.now >= t_end && !cpu.wall)
        cpu_end(&cpu);
}

struct fan_report {
    uint64_t deliveries, counted;
    long subs_open;
    struct hist lat;
};

static void publish_one(void) {
    uint64_t k = pub_sent++;
    size_t n = (size_t)G.o.size;
    if (G.o.binary) {
        memset(msgbuf, 0, n);
        for (int i = 0; i < 8; i++) {
            msgbuf[i] = (uint8_t)(k >> (8 * i));
            msgbuf[8 + i] = (uint8_t)(G.now >> (8 * i));
        }
    } else {
        memset(msgbuf, '.', n);
        char tmp[40];
        snprintf(tmp, sizeof tmp, "%016" PRIx64 "%016" PRIx64, k, G.now);
        memcpy(msgbuf, tmp, 32);
    }
    __atomic_store_n(&left[k % (uint64_t)G.o.depth], (uint64_t)G.o.conns, __ATOMIC_RELEASE);
    __atomic_store_n(&sh->published, pub_sent, __ATOMIC_RELEASE);
    wsc_frame(pub, G.o.binary ? 2 : 1, msgbuf, n, (uint32_t)rng_next(&pub->seed));
    if (G.o.messages && pub_sent >= (uint64_t)G.o.messages)
        sending = 0;
}

static void fill_window(void) {
    while (sending && pub_sent - done < (uint64_t)G.o.depth)
        publish_one();
    wsc_flush(pub);
}

/* 16 lowercase hex digits (as publish_one writes them) into *v; 0 if not. */
static int hex16(const uint8_t *p, uint64_t *v) {
    uint64_t x = 0;
    for (int i = 0; i < 16; i++) {
        unsigned d = p[i] - '0', a = p[i] - 'a';
        if (d < 10)
            x = x << 4 | d;
        else if (a < 6)
            x = x << 4 | (a + 10);
        else
            return 0;
    }
    *v = x;
    return 1;
}

static void fanout_message(struct conn *c, int op, uint8_t *p, size_t n) {
    if (c->is_pub)
        conn_fail(c, "the publisher received a message (%zu bytes); it should not", n);
    uint64_t k, ts;
    if (op != (G.o.binary ? 2 : 1) || n != (size_t)G.o.size)
        conn_fail(c, "subscriber got a %s message of %zu bytes, expected %s of %ld",
                  op == 1 ? "text" : "binary", n, G.o.binary ? "binary" : "text", G.o.size);
    if (G.o.binary) {
        k = ts = 0;
        for (int i = 7; i >= 0; i--) {
            k = k << 8 | p[i];
            ts = ts << 8 | p[8 + i];
        }
    } else {
        if (!hex16(p, &k) || !hex16(p + 16, &ts))
            conn_fail(c, "subscriber got a message it cannot parse: \"%.32s\"", (char *)p);
        if (n > 32 && memcmp(p + 32, pad + 32, n - 32) != 0)
            for (size_t i = 32; i < n; i++)
                if (p[i] != '.')
                    conn_fail(c, "message %" PRIu64 " padding corrupted at byte %zu", k, i);
    }
    if (k != c->recvd)
        conn_fail(c, "subscriber expected message %" PRIu64 ", got %" PRIu64
                  " (lost or out of order)", c->recvd, k);
    if (k >= __atomic_load_n(&sh->published, __ATOMIC_ACQUIRE))
        conn_fail(c, "subscriber got message %" PRIu64 " before it was published", k);
    c->recvd++;
    deliveries++;
    if (multi) {
        t_measure = __atomic_load_n(&sh->t_measure, __ATOMIC_RELAXED);
        t_end = __atomic_load_n(&sh->t_end, __ATOMIC_RELAXED);
    }
    if (t_measure && G.now >= t_measure && G.now <= t_end) {
        hist_add(&lat, G.now - ts);
        counted++;
    }
    if (__atomic_sub_fetch(&left[k % (uint64_t)G.o.depth], 1, __ATOMIC_ACQ_REL) == 0 && !multi) {
        if (k != done)
            conn_fail(c, "message %" PRIu64 " completed before %" PRIu64, k, done);
        done++;
    }
}

/* The parent (multi): messages whose every delivery has been made, in order. */
static void advance_done(void) {
    while (done < pub_sent &&
           __atomic_load_n(&left[done % (uint64_t)G.o.depth], __ATOMIC_ACQUIRE) == 0)
        done++;
}

static const struct wsc_mode fanout_mode = {NULL, fanout_message};

static void write_all(int fd, const void *p, size_t n) {
    const char *b = p;
    while (n) {
        ssize_t w = write(fd, b, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            sb_fail("report pipe: %s", strerror(errno));
        b += w, n -= (size_t)w;
    }
}

static int read_all(int fd, void *p, size_t n) {
    char *b = p;
    while (n) {
        ssize_t r = read(fd, b, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        b += r, n -= (size_t)r;
    }
    return 0;
}

/* A child of a multi-process fan-out: subscribers first..first+count-1. */
static _Noreturn void fan_child(long first, long count, int rep, int ctl) {
    struct fan_report *r = calloc(1, sizeof *r);
    if (!r)
        sb_fail("out of memory");
    close(G.ep); /* the parent's epoll instance would be shared */
    G.ep = epoll_create1(EPOLL_CLOEXEC);
    if (G.ep < 0)
        sb_fail("epoll_create1: %s", strerror(errno));
    G.now = now_ns();
    G.deadline = G.now + (uint64_t)(G.o.timeout * 1e9);
    uint64_t seed = now_ns() ^ (uint64_t)getpid() << 32;
    long next = 0;
    while (G.open < count) {
        while (next < count && G.opening < G.o.window) {
            long id = first + next;
            subs[id].seed = rng_next(&seed);
            wsc_connect(&subs[id], (uint32_t)id, G.o.nsrc > 0 ? (int)(id % G.o.nsrc) : -1);
            next++;
        }
        wsc_turn(10);
    }
    r->subs_open = G.open;
    write_all(rep, r, sizeof *r); /* all open */
    for (;;) {
        struct pollfd p = {.fd = ctl, .events = POLLIN};
        if (poll(&p, 1, 0) > 0)
            break;
        wsc_turn(20);
    }
    uint64_t final = __atomic_load_n(&sh->final, __ATOMIC_ACQUIRE);
    for (long i = first; i < first + count; i++)
        if (subs[i].recvd != final)
            conn_fail(&subs[i], "subscriber got %" PRIu64 " of the %" PRIu64 " messages published",
                      subs[i].recvd, final);
    for (long i = first; i < first + count; i++)
        wsc_close(&subs[i]);
    uint64_t grace = G.now + 5000000000ull;
    while (G.closing > 0 && G.now < grace)
        wsc_turn(10);
    r->deliveries = deliveries;
    r->counted = counted;
    r->lat = lat;
    write_all(rep, r, sizeof *r);
    exit(0);
}

/* --procs P > 1: the subscribers spread over P child processes (one process
 * may hold at most ~20,000 descriptors here) and --src source addresses; the
 * publisher in this process. The in-flight window works across processes:
 * each slot's count of deliveries still due is in shared memory. */
static void fan_multi(const char *subpath, const char *pubpath, double *t_subs) {
    struct opts *o = &G.o;
    pid_t *pids = calloc((size_t)o->procs, sizeof *pids);
    int *reps = calloc((size_t)o->procs, sizeof *reps);
    struct fan_report *r = calloc(1, sizeof *r);
    int ctl[2];
    if (!pids || !reps || !r || pipe(ctl) < 0)
        sb_fail("out of memory or pipes");
    G.path = subpath;
    uint64_t t0 = now_ns();
    fflush(stdout);
    for (long p = 0; p < o->procs; p++) {
        long first = o->conns * p / o->procs, last = o->conns * (p + 1) / o->procs;
        int rp[2];
        if (pipe(rp) < 0)
            sb_fail("pipe: %s", strerror(errno));
        pids[p] = fork();
        if (pids[p] < 0)
            sb_fail("fork: %s", strerror(errno));
        if (pids[p] == 0) {
            close(rp[0]);
            close(ctl[1]);
            fan_child(first, last - first, rp[1], ctl[0]);
        }
        close(rp[1]);
        reps[p] = rp[0];
    }
    close(ctl[0]);
    for (long p = 0; p < o->procs; p++)
        if (read_all(reps[p], r, sizeof *r) < 0)
            sb_fail("fanout: a subscriber process failed (see its error above)");
    *t_subs = (double)(now_ns() - t0) / 1e9;
    G.now = now_ns();
    G.path = pubpath;
    uint64_t seed = now_ns();
    pub->seed = rng_next(&seed);
    wsc_connect(pub, (uint32_t)o->conns, -1);
    while (G.open < 1)
        wsc_turn(10);
    /* every worker subscribes to the topic in Redis once its first subscriber
     * came: give that time to settle */
    uint64_t settle = G.now + 1000000000ull;
    while (G.now < settle)
        wsc_turn(10);
    sending = 1;
    t_measure = G.now + (uint64_t)(o->warmup * 1e9);
    t_end = o->seconds ? t_measure + (uint64_t)(o->seconds * 1e9) : UINT64_MAX;
    __atomic_store_n(&sh->t_end, t_end, __ATOMIC_RELAXED);
    __atomic_store_n(&sh->t_measure, t_measure, __ATOMIC_RELEASE);
    for (;;) {
        sample_cpu();
        if (G.now >= t_end)
            sending = 0;
        advance_done();
        if (sending)
            fill_window();
        if (!sending && done == pub_sent)
            break;
        wsc_turn(1);
    }
    if (!cpu.wall) /* -n: the run ended before t_end */
        cpu_end(&cpu);
    __atomic_store_n(&sh->final, pub_sent, __ATOMIC_RELEASE);
    close(ctl[1]);
    int failed = 0;
    for (long p = 0; p < o->procs; p++) {
        if (read_all(reps[p], r, sizeof *r) < 0) {
            failed = 1;
            continue;
        }
        deliveries += r->deliveries;
        counted += r->counted;
        hist_merge(&lat, &r->lat);
    }
    for (long p = 0; p < o->procs; p++) {
        int st;
        if (waitpid(pids[p], &st, 0) != pids[p] || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
            failed = 1;
    }
    if (failed)
        sb_fail("fanout: a subscriber process failed (see its error above)");
    wsc_close(pub);
    uint64_t grace = G.now + 2000000000ull;
    while (G.closing > 0 && G.now < grace)
        wsc_turn(10);
    free(pids);
    free(reps);
    free(r);
}

/* One process: subscribers and publisher on one loop. Returns the measured seconds. */
static double fan_single(const char *subpath, const char *pubpath, double *t_subs) {
    struct opts *o = &G.o;
    uint64_t seed = now_ns();
    G.path = subpath;
    uint64_t t0 = G.now;
    long next = 0;
    while (G.open < o->conns) {
        while (next < o->conns && G.opening < o->window) {
            subs[next].seed = rng_next(&seed);
            wsc_connect(&subs[next], (uint32_t)next, -1);
            next++;
        }
        wsc_turn(10);
    }
    *t_subs = (double)(G.now - t0) / 1e9;
    G.path = pubpath;
    pub->seed = rng_next(&seed);
    wsc_connect(pub, (uint32_t)o->conns, -1);
    while (G.open < o->conns + 1)
        wsc_turn(10);
    /* Let servers that subscribe after their 101 (asynchronous handlers) settle. */
    uint64_t settle = G.now + 200000000ull;
    while (G.now < settle)
        wsc_turn(10);
    sending = 1;
    t_measure = G.now + (uint64_t)(o->warmup * 1e9);
    t_end = o->seconds ? t_measure + (uint64_t)(o->seconds * 1e9) : UINT64_MAX;
    for (;;) {
        sample_cpu();
        if (G.now >= t_end)
            sending = 0;
        if (sending)
            fill_window();
        if (!sending && done == pub_sent)
            break;
        wsc_turn(10);
    }
    if (!cpu.wall) /* -n: the run ended before t_end */
        cpu_end(&cpu);
    uint64_t t_stop = G.now < t_end ? G.now : t_end;
    double secs = (double)(t_stop - t_measure) / 1e9;
    for (long i = 0; i <= o->conns; i++)
        wsc_close(&subs[i]);
    uint64_t grace = G.now + 3000000000ull;
    while (G.closing > 0 && G.now < grace)
        wsc_turn(10);
    return secs;
}

int mode_fanout(void) {
    struct opts *o = &G.o;
    if (o->size < (o->binary ? 16 : 32))
        o->size = o->binary ? 16 : 32;
    if (o->conns < 1 || o->depth < 1)
        sb_fail("fanout needs -c >= 1 subscribers and -d >= 1");
    if (!o->seconds && !o->messages)
        o->seconds = 5;
    if (!o->timeout)
        o->timeout = o->warmup + (o->seconds ? o->seconds : 60) + 60;
    alarm((unsigned)o->timeout + 10);
    G.mode = &fanout_mode;
    wsc_init();
    const char *base = G.path;
    char subpath[2100], pubpath[2100];
    const char *sep = strchr(base, '?') ? "&" : "?";
    snprintf(subpath, sizeof subpath, "%s%srole=sub", base, sep);
    snprintf(pubpath, sizeof pubpath, "%s%srole=pub", base, sep);
    msgbuf = malloc((size_t)o->size);
    pad = malloc((size_t)o->size);
    if (pad)
        memset(pad, '.', (size_t)o->size);
    size_t shlen = sizeof *sh + (size_t)o->depth * sizeof *left;
    void *m = mmap(NULL, shlen, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    subs = calloc((size_t)o->conns + 1, sizeof *subs);
    if (!msgbuf || !pad || m == MAP_FAILED || !subs)
        sb_fail("out of memory");
    sh = m;
    left = (uint64_t *)(sh + 1);
    if (o->procs < 0)
        o->procs = o->conns / 16000 + 1;
    if (o->nsrc < 0)
        o->nsrc = o->procs > 1 && G.loopback ? o->procs : 0;
    if (o->nsrc > 0 && !G.loopback)
        sb_fail("--src needs a loopback (127.x) server address");
    multi = o->procs > 1;
    pub = &subs[o->conns];
    pub->is_pub = 1;
    G.deadline = G.now + (uint64_t)(o->timeout * 1e9);
    double t_subs = 0, secs;
    if (multi) {
        fan_multi(subpath, pubpath, &t_subs);
        secs = (double)((t_end < G.now ? t_end : G.now) - t_measure) / 1e9;
    } else {
        secs = fan_single(subpath, pubpath, &t_subs);
    }
    double rate = secs > 0 ? (double)counted / secs : 0;
    if (o->json) {
        printf("{\"mode\":\"fanout\",\"url\":\"%s\",\"subscribers\":%ld,\"depth\":%ld,"
               "\"size\":%ld,\"seconds\":%.3f,\"published\":%" PRIu64 ",\"deliveries\":%" PRIu64
               ",\"deliveries_per_s\":%.0f,\"subscribe_seconds\":%.3f,",
               o->url, o->conns, o->depth, o->size, secs, pub_sent, counted, rate, t_subs);
        cpu_json(&cpu, counted, "delivery");
        json_latency("delivery", &lat);
        printf(",\"errors\":0}\n");
    } else {
        printf("fanout %s: %ld subscribers, %ld in flight, %ld B %s, %.2f s\n", o->url, o->conns,
               o->depth, o->size, o->binary ? "binary" : "text", secs);
        printf("  subscribed in %.2f s; published %" PRIu64 " messages, every subscriber got "
               "each in order\n", t_subs, pub_sent);
        printf("  deliveries %" PRIu64 "  (%.0f/s)\n", counted, rate);
        report_latency("delivery", &lat);
        cpu_report(&cpu, counted, "delivery");
    }
    return 0;
}
