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

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct conn *subs, *pub;
static struct hist lat;
static uint64_t *left; /* deliveries still due, per in-flight slot (seq % D) */
static uint64_t pub_sent, done, deliveries, counted, t_measure, t_end;
static int sending;
static uint8_t *msgbuf, *pad; /* pad: S dots, what a text message's tail must be */
static struct cpu_window cpu;

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
    left[k % (uint64_t)G.o.depth] = (uint64_t)G.o.conns;
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
    if (k >= pub_sent)
        conn_fail(c, "subscriber got message %" PRIu64 " before it was published", k);
    c->recvd++;
    deliveries++;
    if (G.now >= t_measure && G.now <= t_end) {
        hist_add(&lat, G.now - ts);
        counted++;
    }
    if (--left[k % (uint64_t)G.o.depth] == 0) {
        if (k != done)
            conn_fail(c, "message %" PRIu64 " completed before %" PRIu64, k, done);
        done++;
    }
}

static const struct wsc_mode fanout_mode = {NULL, fanout_message};

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
    left = calloc((size_t)o->depth, sizeof *left);
    subs = calloc((size_t)o->conns + 1, sizeof *subs);
    if (!msgbuf || !pad || !left || !subs)
        sb_fail("out of memory");
    pub = &subs[o->conns];
    pub->is_pub = 1;
    uint64_t seed = now_ns();
    G.deadline = G.now + (uint64_t)(o->timeout * 1e9);
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
    double t_subs = (double)(G.now - t0) / 1e9;
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
        if (!cpu.started && G.now >= t_measure)
            cpu_begin(&cpu);
        if (G.now >= t_end) {
            if (sending)
                cpu_end(&cpu);
            sending = 0;
        }
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
