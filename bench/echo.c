/* echo.c — `sbload echo`: C connections keep D messages of S bytes in flight
 * each; every echo is checked byte for byte against what was sent and timed
 * from its send. Message k of a connection is a window into that connection's
 * random payload and is masked with a key derived from (seed, k), so any
 * message can be rebuilt for the check without keeping a copy. With --raw the
 * peer is a plain TCP echo: the masked frames must come back unchanged. */
#include "sbload.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct conn *conns;
static struct hist lat;
static uint64_t t_begin, t_measure, t_end, counted, sent_total, recv_total;
static int sending = 1;
static uint8_t *scratch;
static struct cpu_window cpu;

static const uint8_t *payload(struct conn *c, uint64_t k) { return c->pay + (k * 7) % 64; }

static uint32_t mask_of(struct conn *c, uint64_t k) {
    uint64_t s = c->seed ^ (k * 0x9e3779b97f4a7c15ull);
    return (uint32_t)rng_next(&s);
}

static int op(void) { return G.o.binary ? 2 : 1; }

static void send_one(struct conn *c) {
    uint64_t k = c->sent++;
    c->ts[k % (uint64_t)G.o.depth] = G.now;
    wsc_frame(c, op(), payload(c, k), (size_t)G.o.size, mask_of(c, k));
    sent_total++;
    if (G.o.messages && sent_total >= (uint64_t)G.o.messages)
        sending = 0;
}

static void echo_open(struct conn *c) {
    for (long i = 0; i < G.o.depth && sending; i++)
        send_one(c);
}

static void echo_message(struct conn *c, int mop, uint8_t *p, size_t n) {
    uint64_t k = c->recvd;
    if (k >= c->sent)
        conn_fail(c, "received a message it did not send (%zu bytes)", n);
    if (G.o.raw) {
        size_t want = wsc_encode(scratch, op(), payload(c, k), (size_t)G.o.size, mask_of(c, k));
        if (n != want || memcmp(p, scratch, n) != 0)
            conn_fail(c, "raw echo of frame %llu differs from what was sent (%zu bytes, "
                      "expected %zu)", (unsigned long long)k, n, want);
    } else {
        if (mop != op())
            conn_fail(c, "echo of message %llu is %s, sent %s", (unsigned long long)k,
                      mop == 1 ? "text" : "binary", op() == 1 ? "text" : "binary");
        if (n != (size_t)G.o.size)
            conn_fail(c, "echo of message %llu has %zu bytes, sent %ld", (unsigned long long)k,
                      n, G.o.size);
        if (memcmp(p, payload(c, k), n) != 0)
            conn_fail(c, "echo of message %llu differs from what was sent",
                      (unsigned long long)k);
    }
    c->recvd++;
    recv_total++;
    if (G.now >= t_measure && G.now <= t_end) {
        hist_add(&lat, G.now - c->ts[k % (uint64_t)G.o.depth]);
        counted++;
    }
    if (sending)
        send_one(c);
}

static const struct wsc_mode echo_mode = {echo_open, echo_message};

int mode_echo(void) {
    struct opts *o = &G.o;
    if (o->size < 1 || o->depth < 1 || o->conns < 1)
        sb_fail("echo needs -c >= 1, -d >= 1 and -s >= 1");
    if (!o->seconds && !o->messages)
        o->seconds = 5;
    if (!o->timeout)
        o->timeout = o->warmup + (o->seconds ? o->seconds : 60) + 30;
    alarm((unsigned)o->timeout + 10);
    G.mode = &echo_mode;
    wsc_init();
    scratch = malloc((size_t)o->size + 16);
    conns = calloc((size_t)o->conns, sizeof *conns);
    if (!conns || !scratch)
        sb_fail("out of memory");
    uint64_t seed = now_ns();
    for (long i = 0; i < o->conns; i++) {
        struct conn *c = &conns[i];
        c->seed = rng_next(&seed);
        c->ts = calloc((size_t)o->depth, sizeof *c->ts);
        c->pay = malloc((size_t)o->size + 64);
        if (!c->ts || !c->pay)
            sb_fail("out of memory");
        uint64_t s = c->seed;
        for (long j = 0; j < o->size + 64; j++) {
            uint64_t v = rng_next(&s);
            c->pay[j] = o->binary ? (uint8_t)v : (uint8_t)(0x20 + v % 95); /* printable ASCII */
        }
    }
    G.deadline = G.now + (uint64_t)(o->timeout * 1e9);
    /* Connect everything first, then start the clock: the run measures messages. */
    sending = 0;
    long next = 0;
    while (G.open < o->conns) {
        while (next < o->conns && G.opening < o->window)
            wsc_connect(&conns[next], (uint32_t)next, -1), next++;
        wsc_turn(10);
    }
    sending = 1;
    t_begin = G.now;
    t_measure = t_begin + (uint64_t)(o->warmup * 1e9);
    t_end = o->seconds ? t_measure + (uint64_t)(o->seconds * 1e9) : UINT64_MAX;
    for (long i = 0; i < o->conns; i++) {
        echo_open(&conns[i]);
        wsc_flush(&conns[i]);
    }
    for (;;) {
        if (!cpu.started && G.now >= t_measure)
            cpu_begin(&cpu);
        if (G.now >= t_end) {
            if (sending)
                cpu_end(&cpu);
            sending = 0;
        }
        if (!sending && recv_total == sent_total)
            break;
        wsc_turn(10);
    }
    if (!cpu.wall) /* -n: the run ended before t_end */
        cpu_end(&cpu);
    uint64_t t_stop = G.now < t_end ? G.now : t_end;
    double secs = (double)(t_stop - t_measure) / 1e9;
    for (long i = 0; i < o->conns; i++)
        wsc_close(&conns[i]);
    uint64_t grace = G.now + 2000000000ull;
    while (G.closing > 0 && G.now < grace)
        wsc_turn(10);
    double rate = secs > 0 ? (double)counted / secs : 0;
    if (o->json) {
        printf("{\"mode\":\"echo\",\"url\":\"%s\",\"raw\":%s,\"conns\":%ld,\"depth\":%ld,"
               "\"size\":%ld,\"binary\":%s,\"seconds\":%.3f,\"messages\":%llu,"
               "\"msgs_per_s\":%.0f,",
               o->url, o->raw ? "true" : "false", o->conns, o->depth, o->size,
               o->binary ? "true" : "false", secs, (unsigned long long)counted, rate);
        cpu_json(&cpu, counted, "msg");
        json_latency("rtt", &lat);
        printf(",\"errors\":0}\n");
    } else {
        printf("echo %s%s: %ld connections x %ld in flight x %ld B %s, %.2f s\n", o->url,
               o->raw ? " (raw TCP)" : "", o->conns, o->depth, o->size,
               o->binary ? "binary" : "text", secs);
        printf("  messages   %llu  (%.0f/s), all echoes verified\n", (unsigned long long)counted,
               rate);
        report_latency("round-trip", &lat);
        cpu_report(&cpu, counted, "message");
    }
    return 0;
}
