/* fuzz_conn — libFuzzer target for one connection's life (conn.c with outq.c)
 * behind a stub application: requests become responses (text, a streamed
 * file, an error that closes), upgrades are accepted or refused by path, and
 * messages are echoed, sent past --out-max, or answered with a close.
 *
 * The input is fed through a socketpair in chunks whose sizes come from the
 * data, the loop runs between chunks (flush, reap), and the peer sometimes
 * stops reading, so pipelining pauses, backpressure, overflow and the closing
 * handshake all get exercised. ASan catches a touched dead connection; the
 * loop must end with every connection reaped and no event left behind.
 */
#define _GNU_SOURCE
#include <event2/event.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"
#include "http.h"
#include "log.h"
#include "loop.h"

static struct sb_server srv;
static int file_fd = -1;
static struct route *const ROUTE = (struct route *)&srv; /* any non-NULL pointer */

static char *dup_str(const char *s) {
    return strdup(s);
}

static void on_request(void *ud, struct conn *c, const struct http_request *req, const char *path,
                       const char *body, size_t body_len, struct conn_response *res) {
    (void)ud, (void)c, (void)req, (void)body, (void)body_len;
    if (path[1] == 'f' && file_fd >= 0) { /* a streamed file answer */
        res->status = 200;
        res->file_fd = dup(file_fd);
        res->file_off = 3;
        res->file_len = 200000;
        return;
    }
    if (path[1] == 'e') { /* an error that closes */
        res->status = 404;
        res->close = 1;
        res->body = dup_str("nope\n");
        res->body_len = 5;
        return;
    }
    res->status = 200;
    res->headers = dup_str("Content-Type: text/plain\r\n");
    res->body = dup_str(path);
    res->body_len = strlen(path);
}

static void on_upgrade(void *ud, struct conn *c, const struct http_request *req, const char *path,
                       struct conn_upgrade *ans) {
    (void)ud, (void)req;
    if (path[1] == 'r') {
        ans->status = 403;
        ans->headers = dup_str("X-Why: because\r\n");
        return;
    }
    c->route = ROUTE;
}

static void on_open(void *ud, struct conn *c) {
    (void)ud;
    conn_send(c, WS_OP_TEXT, "hi", 2);
}

static void on_message(void *ud, struct conn *c, const uint8_t *data, size_t len, int binary) {
    (void)ud;
    if (len && data[0] == 'B') { /* past --out-max in two sends */
        static uint8_t big[40000];
        conn_send(c, WS_OP_BINARY, big, sizeof big);
        conn_send(c, WS_OP_BINARY, big, sizeof big);
    } else if (len && data[0] == 'C') {
        conn_close(c, 1000, "bye", 3);
    } else if (len && data[0] == 'K') { /* a send, then a close that overflows */
        static uint8_t big[60000];
        conn_send(c, WS_OP_BINARY, big, sizeof big);
        conn_close(c, 4000, (const char *)big, 100);
    } else {
        conn_send(c, binary ? WS_OP_BINARY : WS_OP_TEXT, data, len);
    }
}

static void on_drain(void *ud, struct conn *c) {
    (void)ud;
    conn_send(c, WS_OP_TEXT, "drained", 7);
}

static void on_close(void *ud, struct conn *c, unsigned code, const char *reason) {
    (void)ud, (void)code, (void)reason;
    conn_send(c, WS_OP_TEXT, "dead", 4); /* must be refused: c is DEAD */
}

static const struct conn_callbacks cb = {on_request, on_upgrade, on_open,
                                         on_message, on_drain,   on_close};

static void setup(void) {
    log_set_level((enum log_level)(LOG_ERROR + 1));
    signal(SIGPIPE, SIG_IGN); /* as main.c: a peer gone is an EPIPE, not a signal */
    srv.base = event_base_new();
    srv.cfg.max_header_bytes = 4096;
    srv.cfg.max_headers = 32;
    srv.cfg.max_body = 1 << 16;
    srv.cfg.max_message = 1 << 20;
    srv.cfg.out_high = 20000;
    srv.cfg.out_low = 5000;
    srv.cfg.out_max = 70000;
    srv.cfg.handshake_timeout = 10;
    srv.cfg.close_timeout = 5;
    srv.rbuf_size = 4096;
    srv.rbuf = malloc(srv.rbuf_size);
    srv.http_headers = malloc(sizeof *srv.http_headers * (srv.cfg.max_headers + 1));
    srv.conn_cb = &cb;
    srv.conn_ud = &srv;
    file_fd = memfd_create("fuzz_conn", 0);
    if (file_fd >= 0 && ftruncate(file_fd, 300000) < 0) {
        close(file_fd);
        file_fd = -1;
    }
}

static void turn(void) {
    event_base_loop(srv.base, EVLOOP_NONBLOCK);
    conn_flush_all(&srv);
    conn_reap_all(&srv);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!srv.base)
        setup();
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) < 0)
        return 0;
    int small = 4096;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    struct sockaddr sa = {.sa_family = AF_UNIX};
    struct conn *c = conn_new(&srv, sv[0], &sa, sizeof sa);
    if (!c) {
        close(sv[1]);
        return 0;
    }
    static char sink[65536];
    size_t off = 0;
    int reading = 1;
    for (int rounds = 0; off < size && rounds < 256; rounds++) {
        /* a control byte: how much to send next, and whether the peer reads */
        uint8_t ctl = data[off++];
        reading = ctl & 0x80 ? !reading : reading;
        size_t n = (size_t)(ctl & 0x7f) * 8 + 1;
        if (n > size - off)
            n = size - off;
        if (n && write(sv[1], data + off, n) < 0)
            n = 0;
        off += n;
        turn();
        while (reading && read(sv[1], sink, sizeof sink) > 0)
            ;
    }
    /* the peer reads what is left, then goes away */
    for (int i = 0; i < 8; i++) {
        turn();
        while (read(sv[1], sink, sizeof sink) > 0)
            ;
    }
    close(sv[1]);
    for (int i = 0; i < 4 && srv.all; i++)
        turn();
    while (srv.all)
        conn_abort(srv.all, 1006), conn_reap_all(&srv);
    if (srv.flush || srv.reap || event_base_get_num_events(srv.base, EVENT_BASE_COUNT_ADDED))
        abort(); /* a dead connection left on a list or an event behind */
    return 0;
}
