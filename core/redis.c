/* redis.c — publish across processes through Redis (see redis.h).
 *
 * Two connections: PUBLISH goes through hiredis's async API on its libevent adapter;
 * the subscriber connection drives a non-blocking redisContext on our own events and
 * reads every reply itself. (hiredis 0.14's async subscription bookkeeping asserts
 * when a channel is unsubscribed and subscribed again before Redis has answered, which
 * is what a topic whose last subscriber leaves and comes back does.)
 *
 * Wire format of a message on "sb:<topic>": 8 bytes origin id (big-endian), 1 byte of
 * flags (bit 0: binary), then the message bytes. */
#define _GNU_SOURCE
#include "redis.h"

#include <errno.h>
#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "pubsub.h"
#include "loop.h"
#include "utf8.h"

#define CHAN_PREFIX "sb:"
#define HDR 9
#define BACKOFF_MIN 0.1
#define BACKOFF_MAX 5.0
#define HEALTH_EVERY 1.0 /* seconds between health checks */
#define IDLE_PING 5.0    /* a PING after this long without a reply */
#define STALL 5.0        /* no reply this long while one is owed: Redis is stuck */

enum state { R_DOWN, R_CONNECTING, R_UP };

struct sb_redis {
    struct sb_server *srv;
    char host[256];
    int port;
    int db; /* SELECTed on both connections when not 0 */
    uint64_t origin;
    enum state state;
    int pub_ok, sub_ok; /* connected, this attempt */
    int lost_once;      /* the next connection is a reconnection */
    int freeing;
    double delay;       /* next backoff */
    redisAsyncContext *pub;
    redisContext *sub;
    struct event *sub_rev, *sub_wev;
    struct event *retry_ev;
    struct event *health_ev;
    int pending;         /* replies owed on the publisher connection */
    size_t out_bytes;    /* bytes of the PUBLISHes among them (what Redis has not taken) */
    size_t out_max;      /* --redis-out-max: past it a publish stays local */
    uint64_t dropped;    /* publishes kept local for out_max */
    uint64_t drops_unlogged;
    double drop_logged;  /* when the last "kept local" line was written */
    double last_heard;   /* when it last answered (or a wait began) */
    char *scratch; /* channel name and message for PUBLISH, reused */
    size_t scratch_cap;
};

int redis_parse_url(const char *url, char *host, size_t cap, int *port, int *db, char *err,
                    size_t errcap) {
    static const char scheme[] = "redis://";
    if (strncmp(url, scheme, sizeof scheme - 1) != 0) {
        snprintf(err, errcap, "--redis %s: expected redis://host:port[/db]", url);
        return -1;
    }
    const char *h = url + sizeof scheme - 1;
    const char *end = h + strcspn(h, ":/");
    if (end == h || (size_t)(end - h) >= cap) {
        snprintf(err, errcap, "--redis %s: missing host", url);
        return -1;
    }
    memcpy(host, h, (size_t)(end - h));
    host[end - h] = 0;
    *port = 6379;
    *db = 0;
    char *e;
    if (*end == ':') {
        long p = strtol(end + 1, &e, 10);
        if (e == end + 1 || p < 1 || p > 65535 || (*e && *e != '/')) {
            snprintf(err, errcap, "--redis %s: bad port", url);
            return -1;
        }
        *port = (int)p;
        end = e;
    }
    if (*end == '/' && end[1]) {
        long d = strtol(end + 1, &e, 10);
        if (end[1] < '0' || end[1] > '9' || *e || d > 1000000) {
            snprintf(err, errcap, "--redis %s: bad database number", url);
            return -1;
        }
        *db = (int)d;
    } else if (*end && strcmp(end, "/") != 0) {
        snprintf(err, errcap, "--redis %s: expected redis://host:port[/db]", url);
        return -1;
    }
    return 0;
}

int redis_probe(const char *url, char *err, size_t errcap) {
    char host[256];
    int port, db;
    if (redis_parse_url(url, host, sizeof host, &port, &db, err, errcap) < 0)
        return -1;
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout(host, port, tv);
    if (!c || c->err) {
        snprintf(err, errcap, "cannot reach Redis at %s:%d: %s", host, port,
                 c ? c->errstr : "out of memory");
        redisFree(c);
        return -1;
    }
    redisSetTimeout(c, tv);
    redisReply *r = db ? redisCommand(c, "SELECT %d", db) : redisCommand(c, "PING");
    int rc = 0;
    if (!r || r->type == REDIS_REPLY_ERROR) {
        if (db)
            snprintf(err, errcap, "Redis at %s:%d refuses SELECT %d: %s", host, port, db,
                     r ? r->str : c->errstr);
        else
            snprintf(err, errcap, "Redis at %s:%d does not answer PING: %s", host, port,
                     r ? r->str : c->errstr);
        rc = -1;
    }
    if (r)
        freeReplyObject(r);
    redisFree(c);
    return rc;
}

/* ---- connection life ----------------------------------------------------------- */

static void connect_both(struct sb_redis *r);
static void owe(struct sb_redis *r);
static void on_pub_reply(redisAsyncContext *ac, void *reply, void *priv);

static void teardown(struct sb_redis *r) {
    if (r->sub_rev) {
        event_free(r->sub_rev);
        event_free(r->sub_wev);
        r->sub_rev = r->sub_wev = NULL;
    }
    if (r->sub) {
        redisFree(r->sub);
        r->sub = NULL;
    }
    if (r->pub) {
        redisAsyncContext *ac = r->pub;
        r->pub = NULL; /* its callbacks see it is no longer ours */
        redisAsyncFree(ac);
    }
    r->pub_ok = r->sub_ok = 0;
    r->pending = 0;
    r->out_bytes = 0; /* what was owed went with the connection */
}

/* Either connection failed or broke: drop both and retry after the backoff. */
static void lost(struct sb_redis *r, const char *why) {
    if (r->freeing || r->state == R_DOWN)
        return;
    if (r->state == R_UP) {
        log_warn("redis: connection to %s:%d lost (%s); local delivery goes on, reconnecting",
                 r->host, r->port, why);
        r->lost_once = 1;
        r->delay = BACKOFF_MIN;
    } else {
        log_debug("redis: connecting to %s:%d failed (%s); next try in %.1f s", r->host, r->port,
                  why, r->delay);
    }
    r->srv->stats.redis_errors++;
    r->state = R_DOWN;
    teardown(r);
    struct timeval tv = {(time_t)r->delay, (suseconds_t)((r->delay - (long)r->delay) * 1e6)};
    event_add(r->retry_ev, &tv);
    r->delay = r->delay * 2 > BACKOFF_MAX ? BACKOFF_MAX : r->delay * 2;
}

static void maybe_up(struct sb_redis *r) {
    if (r->state != R_CONNECTING || !r->pub_ok || !r->sub_ok)
        return;
    r->state = R_UP;
    r->delay = BACKOFF_MIN;
    r->last_heard = server_clock();
    if (r->lost_once) {
        r->srv->stats.redis_reconnects++;
        log_info("redis: reconnected to %s:%d", r->host, r->port);
    } else {
        log_info("redis: connected to %s:%d", r->host, r->port);
    }
}

/* Say how many publishes stayed local for --redis-out-max, at most once a second. */
static void log_drops(struct sb_redis *r, double now) {
    if (!r->drops_unlogged || now - r->drop_logged < 1.0)
        return;
    log_warn("redis: %zu bytes of publishes not yet answered (--redis-out-max %zu): "
             "%llu publish(es) kept local",
             r->out_bytes, r->out_max, (unsigned long long)r->drops_unlogged);
    r->drops_unlogged = 0;
    r->drop_logged = now;
}

/* Once a second: a Redis that stops answering (stopped, hung, a dead link
 * that TCP has not noticed) is treated as lost, so publishes do not pile up
 * in the output buffer and the reconnection starts; an idle link is pinged. */
static void on_health(evutil_socket_t fd, short what, void *arg) {
    struct sb_redis *r = arg;
    (void)fd;
    (void)what;
    double now = server_clock();
    log_drops(r, now);
    if (r->state != R_UP || !r->pub)
        return;
    if (r->pending > 0 && now - r->last_heard > STALL) {
        char why[64];
        snprintf(why, sizeof why, "no answer for %.0f s", now - r->last_heard);
        lost(r, why);
        return;
    }
    if (r->pending == 0 && now - r->last_heard > IDLE_PING &&
        redisAsyncCommand(r->pub, on_pub_reply, NULL, "PING") == REDIS_OK)
        owe(r);
}

static void on_retry(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    connect_both(arg);
}

/* ---- the publisher: hiredis async ---------------------------------------------- */

static void on_pub_connect(const redisAsyncContext *ac, int status) {
    struct sb_redis *r = ac->data;
    if (ac != r->pub)
        return;
    if (status != REDIS_OK) {
        r->pub = NULL; /* hiredis frees it after this callback */
        lost(r, ac->errstr);
        return;
    }
    r->pub_ok = 1;
    maybe_up(r);
}

static void on_pub_disconnect(const redisAsyncContext *ac, int status) {
    struct sb_redis *r = ac->data;
    (void)status;
    if (ac != r->pub)
        return;
    r->pub = NULL;
    lost(r, ac->errstr[0] ? ac->errstr : "connection closed");
}

/* A reply is owed from now on. */
static void owe(struct sb_redis *r) {
    if (r->pending++ == 0)
        r->last_heard = server_clock();
}

/* priv: the bytes of the PUBLISH this answers, as an integer; 0 for other commands. */
static void on_pub_reply(redisAsyncContext *ac, void *reply, void *priv) {
    struct sb_redis *r = ac->data;
    redisReply *rep = reply;
    size_t bytes = (size_t)(uintptr_t)priv;
    if (r->freeing || !rep || ac != r->pub)
        return; /* the connection went away: counted in lost() */
    if (r->pending > 0)
        r->pending--;
    r->out_bytes = r->out_bytes > bytes ? r->out_bytes - bytes : 0;
    r->last_heard = server_clock();
    if (rep->type == REDIS_REPLY_ERROR) {
        r->srv->stats.redis_errors++;
        log_warn("redis: %s failed: %s", bytes ? "PUBLISH" : "command", rep->str);
    }
}

static int scratch(struct sb_redis *r, size_t need) {
    if (need <= r->scratch_cap)
        return 0;
    size_t cap = r->scratch_cap ? r->scratch_cap : 4096;
    while (cap < need)
        cap *= 2;
    char *p = realloc(r->scratch, cap);
    if (!p)
        return -1;
    r->scratch = p;
    r->scratch_cap = cap;
    return 0;
}

void redis_publish(struct sb_redis *r, const char *topic, size_t tlen, const void *msg,
                   size_t len, int binary) {
    if (!r->pub) {
        r->srv->stats.redis_errors++; /* down: this one stays local */
        return;
    }
    size_t clen = sizeof CHAN_PREFIX - 1 + tlen;
    /* the command's size on the wire, give or take its few length digits */
    size_t bytes = clen + HDR + len + 64;
    if (r->out_bytes + bytes > r->out_max) {
        /* Redis is not keeping up (or is stopped): keep this one local rather
         * than buffer without bound until the stall detector gives up */
        r->dropped++;
        r->drops_unlogged++;
        log_drops(r, server_clock());
        return;
    }
    if (scratch(r, clen + HDR + len) < 0) {
        r->srv->stats.redis_errors++;
        return;
    }
    char *chan = r->scratch, *payload = r->scratch + clen;
    memcpy(chan, CHAN_PREFIX, sizeof CHAN_PREFIX - 1);
    memcpy(chan + sizeof CHAN_PREFIX - 1, topic, tlen);
    for (int i = 0; i < 8; i++)
        payload[i] = (char)(r->origin >> (56 - 8 * i));
    payload[8] = binary ? 1 : 0;
    if (len)
        memcpy(payload + HDR, msg, len);
    const char *argv[3] = {"PUBLISH", chan, payload};
    size_t argvlen[3] = {7, clen, HDR + len};
    if (redisAsyncCommandArgv(r->pub, on_pub_reply, (void *)(uintptr_t)bytes, 3, argv, argvlen) !=
        REDIS_OK) {
        r->srv->stats.redis_errors++;
        return;
    }
    owe(r);
    r->out_bytes += bytes;
    r->srv->stats.redis_published++;
}

/* ---- the subscriber: our own events on a non-blocking redisContext ------------- */

static void sub_flush(struct sb_redis *r) {
    int done = 0;
    if (!r->sub_ok) {
        event_add(r->sub_wev, NULL); /* connect in progress */
        return;
    }
    if (redisBufferWrite(r->sub, &done) != REDIS_OK) {
        lost(r, r->sub->errstr);
        return;
    }
    if (!done)
        event_add(r->sub_wev, NULL);
}

static void sub_command(struct sb_redis *r, const char *cmd, const char *topic, size_t tlen) {
    if (!r->sub)
        return; /* down: every live topic is subscribed on reconnect */
    size_t clen = sizeof CHAN_PREFIX - 1 + tlen;
    if (scratch(r, clen) < 0)
        return;
    memcpy(r->scratch, CHAN_PREFIX, sizeof CHAN_PREFIX - 1);
    memcpy(r->scratch + sizeof CHAN_PREFIX - 1, topic, tlen);
    const char *argv[2] = {cmd, r->scratch};
    size_t argvlen[2] = {strlen(cmd), clen};
    redisAppendCommandArgv(r->sub, 2, argv, argvlen);
    sub_flush(r);
}

static void on_message(struct sb_redis *r, const redisReply *chan, const redisReply *msg) {
    size_t plen = sizeof CHAN_PREFIX - 1;
    if (chan->type != REDIS_REPLY_STRING || msg->type != REDIS_REPLY_STRING || chan->len < plen ||
        msg->len < HDR) {
        r->srv->stats.redis_errors++;
        return;
    }
    const unsigned char *p = (const unsigned char *)msg->str;
    uint64_t origin = 0;
    for (int i = 0; i < 8; i++)
        origin = origin << 8 | p[i];
    if (origin == r->origin)
        return; /* ours: delivered locally when it was published */
    int binary = p[8] & 1;
    size_t len = msg->len - HDR;
    if (!binary && utf8_validate(UTF8_ACCEPT, p + HDR, len) != UTF8_ACCEPT) {
        r->srv->stats.redis_errors++;
        log_warn("redis: dropped a text message on %.*s that is not UTF-8", (int)chan->len,
                 chan->str);
        return;
    }
    r->srv->stats.redis_received++;
    pubsub_deliver(r->srv->pubsub, chan->str + plen, chan->len - plen, p + HDR, len, binary,
                   NULL);
}

static void on_sub_read(evutil_socket_t fd, short what, void *arg) {
    struct sb_redis *r = arg;
    (void)fd;
    (void)what;
    if (redisBufferRead(r->sub) != REDIS_OK) {
        lost(r, r->sub->errstr[0] ? r->sub->errstr : "connection closed");
        return;
    }
    for (;;) {
        void *reply = NULL;
        if (redisReaderGetReply(r->sub->reader, &reply) != REDIS_OK) {
            lost(r, "protocol error");
            return;
        }
        if (!reply)
            break;
        redisReply *rep = reply;
        if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 3 &&
            rep->element[0]->type == REDIS_REPLY_STRING &&
            strcasecmp(rep->element[0]->str, "message") == 0)
            on_message(r, rep->element[1], rep->element[2]);
        else if (rep->type == REDIS_REPLY_ERROR) {
            r->srv->stats.redis_errors++;
            log_warn("redis: subscriber connection: %s", rep->str);
        }
        /* subscribe/unsubscribe confirmations need nothing */
        freeReplyObject(rep);
    }
}

static void on_sub_write(evutil_socket_t fd, short what, void *arg) {
    struct sb_redis *r = arg;
    (void)what;
    if (!r->sub_ok) {
        int err = 0;
        socklen_t el = sizeof err;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0)
            err = errno;
        if (err) {
            lost(r, strerror(err));
            return;
        }
        r->sub_ok = 1;
        maybe_up(r);
        if (r->state == R_DOWN)
            return;
    }
    sub_flush(r);
}

static void subscribe_cb(void *ud, const char *topic, size_t len) {
    sub_command(ud, "SUBSCRIBE", topic, len);
}

static void on_topic(void *ud, const char *topic, size_t len, int added) {
    sub_command(ud, added ? "SUBSCRIBE" : "UNSUBSCRIBE", topic, len);
}

static void connect_both(struct sb_redis *r) {
    r->state = R_CONNECTING;
    r->pub = redisAsyncConnect(r->host, r->port);
    if (!r->pub || r->pub->err) {
        char why[128];
        snprintf(why, sizeof why, "%s", r->pub ? r->pub->errstr : "out of memory");
        if (r->pub)
            redisAsyncFree(r->pub);
        r->pub = NULL;
        lost(r, why);
        return;
    }
    r->pub->data = r;
    redisLibeventAttach(r->pub, r->srv->base);
    redisAsyncSetConnectCallback(r->pub, on_pub_connect);
    redisAsyncSetDisconnectCallback(r->pub, on_pub_disconnect);
    /* queued ahead of every PUBLISH */
    if (r->db && redisAsyncCommand(r->pub, on_pub_reply, NULL, "SELECT %d", r->db) == REDIS_OK)
        owe(r);

    r->sub = redisConnectNonBlock(r->host, r->port);
    if (!r->sub || r->sub->err) {
        char why[128];
        snprintf(why, sizeof why, "%s", r->sub ? r->sub->errstr : "out of memory");
        lost(r, why);
        return;
    }
    r->sub_rev = event_new(r->srv->base, r->sub->fd, EV_READ | EV_PERSIST, on_sub_read, r);
    r->sub_wev = event_new(r->srv->base, r->sub->fd, EV_WRITE, on_sub_write, r);
    event_add(r->sub_rev, NULL);
    event_add(r->sub_wev, NULL);
    /* queued until the connection is up, SELECT first */
    if (r->db)
        redisAppendCommand(r->sub, "SELECT %d", r->db);
    pubsub_each_topic(r->srv->pubsub, subscribe_cb, r);
}

static void on_publish(void *ud, const char *topic, size_t tlen, const void *msg, size_t len,
                       int binary) {
    redis_publish(ud, topic, tlen, msg, len, binary);
}

struct sb_redis *redis_new(struct sb_server *srv, const char *url, size_t out_max) {
    struct sb_redis *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    char err[256];
    r->out_max = out_max;
    if (redis_parse_url(url, r->host, sizeof r->host, &r->port, &r->db, err, sizeof err) < 0) {
        log_error("%s", err);
        free(r);
        return NULL;
    }
    r->srv = srv;
    if (getrandom(&r->origin, sizeof r->origin, 0) != (ssize_t)sizeof r->origin)
        r->origin = (uint64_t)getpid() << 32 ^ (uint64_t)(server_clock() * 1e9);
    r->delay = BACKOFF_MIN;
    r->retry_ev = evtimer_new(srv->base, on_retry, r);
    r->health_ev = event_new(srv->base, -1, EV_PERSIST, on_health, r);
    if (!r->retry_ev || !r->health_ev) {
        if (r->retry_ev)
            event_free(r->retry_ev);
        free(r);
        return NULL;
    }
    struct timeval every = {(time_t)HEALTH_EVERY, 0};
    event_add(r->health_ev, &every);
    pubsub_set_hook(srv->pubsub, on_topic, r);
    pubsub_set_publish_hook(srv->pubsub, on_publish, r);
    connect_both(r);
    return r;
}

void redis_free(struct sb_redis *r) {
    if (!r)
        return;
    r->freeing = 1;
    pubsub_set_hook(r->srv->pubsub, NULL, NULL);
    pubsub_set_publish_hook(r->srv->pubsub, NULL, NULL);
    teardown(r);
    event_free(r->retry_ev);
    event_free(r->health_ev);
    free(r->scratch);
    free(r);
}

uint64_t redis_dropped(const struct sb_redis *r) {
    return r ? r->dropped : 0;
}

void redis_history_publish(struct sb_redis *r, const char *topic, size_t tlen, const void *msg,
                           size_t len, int binary, uint32_t size, double ttl, uint64_t except_id) {
    (void)r, (void)topic, (void)tlen, (void)msg, (void)len, (void)binary, (void)size, (void)ttl;
    (void)except_id;
}
