/* recover.c — `sbload recover`: a reconnect storm on topic history.
 *
 * Against a route that keeps history and sends each publication as
 * "<message> <position> <epoch>" (bench/app/recover.lua):
 *   1. one connection, URL?role=pub&topic=T (T unique to this run), publishes
 *      2N messages (D in flight) and receives each back with its position and
 *      epoch (the route subscribes it): the first N are what the storm's clients
 *      saw before they went away, the last N what they missed;
 *   2. the storm: C clients connect (at most --window handshakes in progress)
 *      to URL?role=sub&topic=T&since=P&epoch=E, P the position of message N-1:
 *      the route subscribes each with { since, epoch } in open. Each client must
 *      receive exactly messages N..2N-1, in order, intact, each with its
 *      position and the epoch; a recovery the route finds incomplete closes with
 *      4000 (the run fails). The storm is timed from the first connect() to the
 *      last client's last message; --pid gives the server's CPU over that time.
 * Messages are as fanout's: "%016x%016x" (sequence number, send time) padded
 * with '.' to S bytes (S >= 32). */
#include "sbload.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct conn *clients, *pub;
static long nmiss;          /* N: messages each client missed */
static uint64_t *pos;       /* position of each published message (2N) */
static char epoch[64];      /* the topic's epoch, as the publications carry it */
static uint64_t pub_sent, pub_back, done_clients, deliveries, t_last, t_open_all;
static struct hist lat;     /* per client: connect() to its last missed message */

/* 16 lowercase hex digits into *v; 0 if not. */
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

/* Parse "<S-byte message> <pos> <epoch>": the message's sequence number, its
 * position and its epoch (NUL-terminated into ep). Fails c on anything else. */
static void parse(struct conn *c, int op, const uint8_t *p, size_t n, uint64_t *seq,
                  uint64_t *ps, char *ep) {
    size_t s = (size_t)G.o.size;
    uint64_t ts;
    if (op != 1)
        conn_fail(c, "got a binary message (%zu bytes), expected text", n);
    if (n < s + 4 || p[s] != ' ' || !hex16(p, seq) || !hex16(p + 16, &ts))
        conn_fail(c, "got a message that is not \"<message> <position> <epoch>\": \"%.*s\"",
                  (int)(n < 120 ? n : 120), (const char *)p);
    for (size_t i = 32; i < s; i++)
        if (p[i] != '.')
            conn_fail(c, "message %" PRIu64 " padding corrupted at byte %zu", *seq, i);
    size_t i = s + 1;
    uint64_t v = 0;
    if (p[i] < '0' || p[i] > '9')
        conn_fail(c, "message %" PRIu64 ": no position after it", *seq);
    while (i < n && p[i] >= '0' && p[i] <= '9')
        v = v * 10 + (uint64_t)(p[i++] - '0');
    if (i >= n - 1 || p[i] != ' ' || n - i - 1 >= 64)
        conn_fail(c, "message %" PRIu64 ": no epoch after its position", *seq);
    memcpy(ep, p + i + 1, n - i - 1);
    ep[n - i - 1] = 0;
    *ps = v;
}

static void publish_one(void) {
    uint8_t *m = malloc((size_t)G.o.size);
    if (!m)
        sb_fail("out of memory");
    memset(m, '.', (size_t)G.o.size);
    char tmp[40];
    snprintf(tmp, sizeof tmp, "%016" PRIx64 "%016" PRIx64, pub_sent, G.now);
    memcpy(m, tmp, 32);
    wsc_frame(pub, 1, m, (size_t)G.o.size, (uint32_t)rng_next(&pub->seed));
    free(m);
    pub_sent++;
}

static void recover_message(struct conn *c, int op, uint8_t *p, size_t n) {
    uint64_t seq, ps;
    char ep[64];
    parse(c, op, p, n, &seq, &ps, ep);
    if (c->is_pub) { /* phase 1: the publisher's own publications come back */
        if (seq != pub_back)
            conn_fail(c, "publisher expected its message %" PRIu64 " back, got %" PRIu64, pub_back,
                      seq);
        if (seq == 0)
            snprintf(epoch, sizeof epoch, "%s", ep);
        else if (strcmp(ep, epoch) != 0)
            conn_fail(c, "message %" PRIu64 " has epoch %s, the first had %s", seq, ep, epoch);
        if (seq > 0 && ps != pos[seq - 1] + 1)
            conn_fail(c, "message %" PRIu64 " has position %" PRIu64 " after %" PRIu64
                      " (another publisher on this topic?)", seq, ps, pos[seq - 1]);
        pos[seq] = ps;
        pub_back++;
        return;
    }
    uint64_t want = (uint64_t)nmiss + c->recvd;
    if (c->recvd >= (uint64_t)nmiss)
        conn_fail(c, "client got message %" PRIu64 " after the %ld it missed", seq, nmiss);
    if (seq != want)
        conn_fail(c, "client expected missed message %" PRIu64 ", got %" PRIu64
                  " (lost, duplicated or out of order)", want, seq);
    if (ps != pos[seq] || strcmp(ep, epoch) != 0)
        conn_fail(c, "message %" PRIu64 " came with position %" PRIu64 " epoch %s, published as %"
                  PRIu64 " %s", seq, ps, ep, pos[seq], epoch);
    c->recvd++;
    deliveries++;
    if (c->recvd == (uint64_t)nmiss) {
        hist_add(&lat, G.now - c->t_start);
        done_clients++;
        t_last = G.now;
    }
}

static const struct wsc_mode recover_mode = {NULL, recover_message};

int mode_recover(void) {
    struct opts *o = &G.o;
    if (o->size < 32)
        o->size = 32;
    nmiss = o->messages ? o->messages : 100;
    if (o->conns < 1 || o->depth < 1 || nmiss < 1)
        sb_fail("recover needs -c >= 1 clients, -n >= 1 missed messages and -d >= 1");
    if (!o->timeout)
        o->timeout = 120;
    alarm((unsigned)o->timeout + 10);
    G.mode = &recover_mode;
    wsc_init();
    const char *base = G.path, *sep = strchr(base, '?') ? "&" : "?";
    char topic[64], pubpath[2200], subpath[2400];
    snprintf(topic, sizeof topic, "sbload-%ld-%" PRIx64, (long)getpid(), now_ns());
    snprintf(pubpath, sizeof pubpath, "%s%srole=pub&topic=%s", base, sep, topic);
    clients = calloc((size_t)o->conns + 1, sizeof *clients);
    pos = calloc(2 * (size_t)nmiss, sizeof *pos);
    if (!clients || !pos)
        sb_fail("out of memory");
    pub = &clients[o->conns];
    pub->is_pub = 1;
    G.deadline = G.now + (uint64_t)(o->timeout * 1e9);
    uint64_t seed = now_ns();

    /* 1. publish 2N messages and see each come back with its position */
    G.path = pubpath;
    pub->seed = rng_next(&seed);
    wsc_connect(pub, (uint32_t)o->conns, -1);
    while (G.open < 1)
        wsc_turn(10);
    /* with --redis the route's subscription reaches Redis after the 101 */
    uint64_t settle = G.now + 500000000ull;
    while (G.now < settle)
        wsc_turn(10);
    uint64_t total = 2 * (uint64_t)nmiss;
    while (pub_back < total) {
        while (pub_sent < total && pub_sent - pub_back < (uint64_t)o->depth)
            publish_one();
        wsc_flush(pub);
        wsc_turn(10);
    }

    /* 2. the storm */
    snprintf(subpath, sizeof subpath, "%s%srole=sub&topic=%s&since=%" PRIu64 "&epoch=%s", base,
             sep, topic, pos[nmiss - 1], epoch);
    G.path = subpath;
    struct cpu_window cpu = {0};
    cpu_begin(&cpu);
    G.now = now_ns();
    uint64_t t0 = G.now;
    long next = 0;
    while (done_clients < (uint64_t)o->conns) {
        while (next < o->conns && G.opening < o->window) {
            clients[next].seed = rng_next(&seed);
            wsc_connect(&clients[next], (uint32_t)next, -1);
            next++;
        }
        wsc_turn(next < o->conns ? 1 : 10);
        if (!t_open_all && G.open == o->conns + 1)
            t_open_all = G.now;
    }
    cpu_end(&cpu);
    double secs = (double)(t_last - t0) / 1e9, open_secs = (double)(t_open_all - t0) / 1e9;
    for (long i = 0; i <= o->conns; i++)
        wsc_close(&clients[i]);
    uint64_t grace = G.now + 3000000000ull;
    while (G.closing > 0 && G.now < grace)
        wsc_turn(10);

    double rate = secs > 0 ? (double)deliveries / secs : 0;
    double srv_s = (double)cpu.srv / 1e9;
    if (o->json) {
        printf("{\"mode\":\"recover\",\"url\":\"%s\",\"clients\":%ld,\"missed\":%ld,\"published\":%"
               PRIu64 ",\"size\":%ld,\"since\":%" PRIu64 ",\"epoch\":\"%s\",\"seconds\":%.3f,"
               "\"open_seconds\":%.3f,\"deliveries\":%" PRIu64 ",\"deliveries_per_s\":%.0f,",
               o->url, o->conns, nmiss, pub_sent, o->size, pos[nmiss - 1], epoch, secs, open_secs,
               deliveries, rate);
        if (o->pid)
            printf("\"server_cpu_s\":%.3f,\"server_cpu_us_per_client\":%.1f,", srv_s,
                   srv_s * 1e6 / (double)o->conns);
        cpu_json(&cpu, deliveries, "delivery");
        json_latency("recover", &lat);
        printf(",\"errors\":0}\n");
    } else {
        printf("recover %s: %ld clients each missed %ld of %" PRIu64 " messages (%ld B + position, "
               "epoch %s)\n", o->url, o->conns, nmiss, pub_sent, o->size, epoch);
        printf("  all recovered in %.3f s (all connected after %.3f s); every client got exactly "
               "the messages it missed, in order\n", secs, open_secs);
        printf("  deliveries %" PRIu64 "  (%.0f/s)\n", deliveries, rate);
        report_latency("recover", &lat);
        if (o->pid)
            printf("  server CPU %.3f s, %.1f us per client\n", srv_s,
                   srv_s * 1e6 / (double)o->conns);
        cpu_report(&cpu, deliveries, "delivery");
    }
    return 0;
}
