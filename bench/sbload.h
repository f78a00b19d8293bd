/* sbload.h — the load generator's shared pieces: options, the WebSocket
 * client connection layer (wsc.c), latency histograms (hist.c) and the
 * three modes (echo.c, fanout.c, connect.c).
 *
 * One process runs one epoll loop over many client connections. Any protocol
 * error, mismatch or unexpected close is fatal: the message names the
 * connection and the process exits with status 1 (see sb_fail).
 */
#ifndef SBLOAD_H
#define SBLOAD_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem, IP_BIND_ADDRESS_NO_PORT */
#endif

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>

/* ---- histogram: log buckets, 64 sub-buckets per power of two (~1.6%) ---- */
#define HIST_BUCKETS 3776
struct hist {
    uint64_t n, min, max;
    uint64_t b[HIST_BUCKETS];
};
void hist_add(struct hist *h, uint64_t v);
void hist_merge(struct hist *into, const struct hist *from);
/* Value at quantile q (0..1), as the midpoint of its bucket; 0 when empty. */
uint64_t hist_quantile(const struct hist *h, double q);

/* ---- options ---- */
struct opts {
    const char *mode, *url;
    long conns, depth, size;
    int binary, raw, json;
    int deflate; /* --deflate: offer permessage-deflate, inflate RSV1 answers */
    int json_payload; /* --payload json: echo messages are JSON documents */
    double seconds, warmup, timeout, hold;
    long messages;
    long pid, procs, nsrc, window;
    int echo_once; /* connect --echo: each connection echoes one message once open */
    int term;      /* connect --term: SIGTERM the server, expect 1001 on every connection */
};

/* ---- client connections ---- */
enum conn_state { C_IDLE, C_CONNECTING, C_TLS, C_HANDSHAKE, C_OPEN, C_CLOSING, C_DONE };

struct conn {
    int fd;
    uint8_t state, want_out, is_pub;
    uint32_t id;
    uint64_t seed;
    uint64_t t_start;          /* connect() time, ns */
    uint8_t *out;              /* pending output (owned; freed once empty) */
    size_t out_len, out_off, out_cap;
    uint8_t *tail;             /* incomplete input (owned) */
    size_t tail_len;
    uint8_t *frag;             /* fragmented message being reassembled (owned) */
    size_t frag_len, frag_cap;
    uint8_t frag_op;
    struct ws_deflate *zd; /* --deflate: inflater for the server's messages (owned) */
    struct ssl_st *ssl;        /* wss:// (owned) */
    char key[25];              /* Sec-WebSocket-Key sent */
    /* mode state */
    uint64_t sent, recvd;
    uint64_t *ts;              /* echo: send times, ring of `depth` (owned) */
    uint8_t *pay;              /* echo: this connection's random payload source (owned) */
};

struct wsc_mode {
    void (*open)(struct conn *c);
    /* A complete data message (payload; or in raw mode the whole frame as
     * received, op 0). */
    void (*message)(struct conn *c, int op, uint8_t *p, size_t n);
};

struct sb {
    struct opts o;
    const struct wsc_mode *mode;
    int ep;
    uint8_t *rbuf;
    size_t rcap;
    struct sockaddr_in dst;
    char host[256], pathbuf[2048];
    const char *path; /* request target (pathbuf unless a mode points it elsewhere) */
    int port, loopback;
    struct ssl_ctx_st *tls; /* wss:// client context (TLS 1.3), else NULL */
    char tls_desc[96];      /* version and cipher the first TLS connection negotiated */
    uint64_t wire_in;       /* bytes of data frames received (headers + payloads, before inflating) */
    uint64_t now;    /* monotonic ns, refreshed every loop turn */
    uint64_t deadline;
    long opening;    /* connections between connect() and open */
    long open;       /* connections open */
    long closing;    /* connections closing */
    /* connect --term: the close code every connection must get from the server
     * (0: any close from the server fails the run), when the first and last
     * came, how many */
    unsigned expect_close;
    uint64_t close_first, close_last;
    long closes;
};
extern struct sb G;

uint64_t now_ns(void);
uint64_t rng_next(uint64_t *s);
_Noreturn void sb_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
_Noreturn void conn_fail(struct conn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Parse the URL, resolve it and set up the loop. */
void wsc_init(void);
/* Start connecting c (nonblocking) from source address index src (<0: none). */
void wsc_connect(struct conn *c, uint32_t id, int src);
/* Append a masked client frame to c's output. */
void wsc_frame(struct conn *c, int op, const uint8_t *p, size_t n, uint32_t mask);
/* Append raw bytes to c's output. */
void wsc_write(struct conn *c, const uint8_t *p, size_t n);
/* Try to write c's pending output now; arms EPOLLOUT for the rest. */
void wsc_flush(struct conn *c);
/* Send a close frame (or shut down the write side in raw mode) and wait for
 * the peer's answer; the connection ends in C_DONE. */
void wsc_close(struct conn *c);
/* Run one loop turn: wait at most timeout_ms, handle events. Fails the run
 * when the global deadline has passed. */
void wsc_turn(int timeout_ms);
/* Free c's buffers and close its socket. */
void wsc_free(struct conn *c);
/* Encode a masked frame into out (room for n + 14); returns its length. */
size_t wsc_encode(uint8_t *out, int op, const uint8_t *p, size_t n, uint32_t mask);

/* ---- the server's processes (proc.c) ---- */
/* VmRSS of pid in KiB (fails the run when it cannot be read). */
long rss_kib(long pid);
/* VmRSS of pid and its child processes; *nproc: how many processes. */
long rss_tree_kib(long pid, long *nproc);
/* Calls fn(child, arg) for every process whose parent is pid. */
void proc_each_child(long pid, void (*fn)(long, void *), void *arg);

/* ---- modes ---- */
int mode_echo(void);
int mode_fanout(void);
int mode_connect(void);
int mode_recover(void); /* recover.c */

/* ---- CPU time over the measured window (cpu.c) ---- */
/* sbload busier than this (fraction of one core) was probably the limit */
#define LOAD_BOUND 0.9
struct cpu_window {
    int started;
    uint64_t t0, self0, srv0; /* at cpu_begin: wall, sbload and server (--pid) CPU ns */
    uint64_t wall, self, srv; /* at cpu_end: their growth */
};
void cpu_begin(struct cpu_window *w);
void cpu_end(struct cpu_window *w);
/* Lines / JSON members (each ending in ',') for ops operations named op. */
void cpu_report(const struct cpu_window *w, uint64_t ops, const char *op);
void cpu_json(const struct cpu_window *w, uint64_t ops, const char *op);

/* ---- reporting ---- */
void report_latency(const char *label, const struct hist *h);
void json_latency(const char *prefix, const struct hist *h);

#endif
