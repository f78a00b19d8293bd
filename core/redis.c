/* redis.c — publish across processes through Redis (see redis.h).
 *
 * Two connections: PUBLISH goes through hiredis's async API on its libevent adapter;
 * the subscriber connection drives a non-blocking redisContext on our own events and
 * reads every reply itself. (hiredis 0.14's async subscription bookkeeping asserts
 * when a channel is unsubscribed and subscribed again before Redis has answered, which
 * is what a topic whose last subscriber leaves and comes back does.)
 *
 * Wire format of a payload on "sb:<topic>" (README, "Publishing from a backend"): a
 * payload whose first byte is not 0xFF is a text from a backend, delivered as it is
 * (refused unless it is UTF-8). 0xFF, which never occurs in UTF-8, starts a tag; the
 * byte after it is the kind:
 *   'b'  binary from a backend: the message follows;
 *   'm'  a switchboard process's publish: 8 bytes origin id (big-endian), 1 byte of
 *        flags (bit 0: binary), then the message.
 * Any other kind, or a tag cut short, is refused (counted, logged at most once a
 * second): a process never delivers a kind it does not know, mangled. */
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

#include "history.h"
#include "log.h"
#include "pubsub.h"
#include "loop.h"
#include "utf8.h"

#define CHAN_PREFIX "sb:"
#define TAG 0xFF
#define KIND_BINARY 'b'
#define KIND_MSG 'm'
#define KIND_POS 'p' /* a history publication: see "---- history" below */
#define MSG_HDR 11 /* tag, kind, origin, flags */
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
    int sub_ready;      /* and every channel subscribed again (a PING answered after them) */
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
    uint64_t refused_unlogged; /* refused since the last "refused" line */
    double refuse_logged;
    struct {
        redis_up_fn fn;
        void *ud;
    } up_hooks[REDIS_UP_HOOKS];
    struct redis_barrier *bar_head, *bar_tail; /* PINGs sent on the subscriber connection */
};

static void barriers_fail(struct sb_redis *r);
static void barrier_pong(struct sb_redis *r);
static void on_positioned(struct sb_redis *r, const redisReply *chan, const unsigned char *p,
                          size_t len);
static void load_functions(struct sb_redis *r);

/* A redis_command in flight: the privdata of its hiredis callback (owned; freed
 * after its reply or the connection's end). */
struct redis_cmd {
    struct sb_redis *r;
    redis_reply_fn cb; /* NULL once cancelled */
    void *ud;
    size_t bytes; /* counted in out_bytes */
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
    r->pub_ok = r->sub_ok = r->sub_ready = 0;
    r->pending = 0;
    r->out_bytes = 0; /* what was owed went with the connection */
    barriers_fail(r);
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
    if (r->state != R_CONNECTING || !r->pub_ok || !r->sub_ready)
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
    for (int i = 0; i < REDIS_UP_HOOKS; i++)
        if (r->up_hooks[i].fn)
            r->up_hooks[i].fn(r->up_hooks[i].ud);
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
    size_t bytes = clen + MSG_HDR + len + 64;
    if (r->out_bytes + bytes > r->out_max) {
        /* Redis is not keeping up (or is stopped): keep this one local rather
         * than buffer without bound until the stall detector gives up */
        r->dropped++;
        r->drops_unlogged++;
        log_drops(r, server_clock());
        return;
    }
    if (scratch(r, clen + MSG_HDR + len) < 0) {
        r->srv->stats.redis_errors++;
        return;
    }
    char *chan = r->scratch, *payload = r->scratch + clen;
    memcpy(chan, CHAN_PREFIX, sizeof CHAN_PREFIX - 1);
    memcpy(chan + sizeof CHAN_PREFIX - 1, topic, tlen);
    payload[0] = (char)TAG;
    payload[1] = KIND_MSG;
    for (int i = 0; i < 8; i++)
        payload[2 + i] = (char)(r->origin >> (56 - 8 * i));
    payload[10] = binary ? 1 : 0;
    if (len)
        memcpy(payload + MSG_HDR, msg, len);
    const char *argv[3] = {"PUBLISH", chan, payload};
    size_t argvlen[3] = {7, clen, MSG_HDR + len};
    if (redisAsyncCommandArgv(r->pub, on_pub_reply, (void *)(uintptr_t)bytes, 3, argv, argvlen) !=
        REDIS_OK) {
        r->srv->stats.redis_errors++;
        return;
    }
    owe(r);
    r->out_bytes += bytes;
    r->srv->stats.redis_published++;
}

/* ---- commands for the app's side (presence, history) ------------------------------ */

static void on_cmd_reply(redisAsyncContext *ac, void *reply, void *priv) {
    struct redis_cmd *c = priv;
    struct sb_redis *r = c->r;
    redisReply *rep = reply;
    if (!r->freeing && rep && ac == r->pub) {
        if (r->pending > 0)
            r->pending--;
        r->out_bytes = r->out_bytes > c->bytes ? r->out_bytes - c->bytes : 0;
        r->last_heard = server_clock();
        if (rep->type == REDIS_REPLY_ERROR)
            r->srv->stats.redis_errors++;
    }
    if (c->cb)
        c->cb(c->ud, rep, rep ? NULL : "connection to Redis lost");
    free(c);
}

struct redis_cmd *redis_command(struct sb_redis *r, int argc, const char **argv,
                                const size_t *argvlen, redis_reply_fn cb, void *ud) {
    if (!r || !r->pub || r->freeing)
        return NULL;
    size_t bytes = 16;
    for (int i = 0; i < argc; i++)
        bytes += argvlen[i] + 16;
    if (r->out_bytes + bytes > r->out_max) {
        r->dropped++;
        r->drops_unlogged++;
        log_drops(r, server_clock());
        return NULL;
    }
    struct redis_cmd *c = malloc(sizeof *c);
    if (!c)
        return NULL;
    *c = (struct redis_cmd){.r = r, .cb = cb, .ud = ud, .bytes = bytes};
    if (redisAsyncCommandArgv(r->pub, on_cmd_reply, c, argc, argv, argvlen) != REDIS_OK) {
        free(c);
        r->srv->stats.redis_errors++;
        return NULL;
    }
    owe(r);
    r->out_bytes += bytes;
    return c;
}

void redis_command_cancel(struct redis_cmd *c) {
    if (c)
        c->cb = NULL;
}

int redis_on_up(struct sb_redis *r, redis_up_fn fn, void *ud) {
    for (int i = 0; i < REDIS_UP_HOOKS; i++) {
        if (!r->up_hooks[i].fn) {
            r->up_hooks[i].fn = fn;
            r->up_hooks[i].ud = ud;
            return 0;
        }
    }
    return -1;
}

void redis_off_up(struct sb_redis *r, redis_up_fn fn, void *ud) {
    for (int i = 0; i < REDIS_UP_HOOKS; i++)
        if (r->up_hooks[i].fn == fn && r->up_hooks[i].ud == ud)
            r->up_hooks[i].fn = NULL;
}

int redis_is_up(const struct sb_redis *r) {
    return r && r->state == R_UP;
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

/* A payload on chan that is not delivered: counted, and said at most once a second
 * (with how many went unsaid since). */
static void refuse(struct sb_redis *r, const redisReply *chan, const char *why) {
    r->srv->stats.redis_refused++;
    double now = server_clock();
    if (r->refuse_logged > 0 && now - r->refuse_logged < 1.0) {
        r->refused_unlogged++;
        return;
    }
    int clen = chan->len > 200 ? 200 : (int)chan->len;
    if (r->refused_unlogged)
        log_warn("redis: refused a message on %.*s: %s (and %llu more refused since the last "
                 "line; see README, \"Publishing from a backend\")",
                 clen, chan->str, why, (unsigned long long)r->refused_unlogged);
    else
        log_warn("redis: refused a message on %.*s: %s (see README, \"Publishing from a "
                 "backend\")",
                 clen, chan->str, why);
    r->refused_unlogged = 0;
    r->refuse_logged = now;
}

static void on_message(struct sb_redis *r, const redisReply *chan, const redisReply *msg) {
    size_t plen = sizeof CHAN_PREFIX - 1;
    if (chan->type != REDIS_REPLY_STRING || msg->type != REDIS_REPLY_STRING || chan->len < plen) {
        r->srv->stats.redis_errors++;
        return;
    }
    const unsigned char *p = (const unsigned char *)msg->str;
    size_t len = msg->len;
    int binary = 0;
    if (len && p[0] == TAG) {
        int kind = len > 1 ? p[1] : -1;
        if (kind == KIND_MSG && len >= MSG_HDR) {
            uint64_t origin = 0;
            for (int i = 0; i < 8; i++)
                origin = origin << 8 | p[2 + i];
            if (origin == r->origin)
                return; /* ours: delivered locally when it was published */
            binary = p[10] & 1;
            p += MSG_HDR;
            len -= MSG_HDR;
        } else if (kind == KIND_BINARY) {
            binary = 1;
            p += 2;
            len -= 2;
        } else if (kind == KIND_POS) {
            on_positioned(r, chan, p, len);
            return;
        } else {
            refuse(r, chan, kind < 0 ? "a tag (0xFF) without its kind"
                            : kind == KIND_MSG ? "a tagged message cut short"
                                               : "a tag (0xFF) of an unknown kind");
            return;
        }
    }
    if ((uint64_t)len > r->srv->cfg.max_message) {
        refuse(r, chan, "longer than --max-message");
        return;
    }
    if (r->srv->history && history_match(r->srv->history, chan->str + plen, chan->len - plen)) {
        /* a message without a position would break its subscribers' recovery */
        refuse(r, chan, "the topic keeps history: publish with FCALL sb_publish");
        return;
    }
    if (!binary && utf8_validate(UTF8_ACCEPT, p, len) != UTF8_ACCEPT) {
        refuse(r, chan, "a text that is not UTF-8 (publish binary as 0xFF 'b' + bytes)");
        return;
    }
    r->srv->stats.redis_received++;
    pubsub_deliver(r->srv->pubsub, chan->str + plen, chan->len - plen, p, len, binary, NULL);
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
        else if ((rep->type == REDIS_REPLY_ARRAY && rep->elements >= 1 &&
                  rep->element[0]->type == REDIS_REPLY_STRING &&
                  strcasecmp(rep->element[0]->str, "pong") == 0) ||
                 (rep->type == REDIS_REPLY_STATUS && strcasecmp(rep->str, "PONG") == 0))
            barrier_pong(r); /* redis_sub_barrier's */
        else if (rep->type == REDIS_REPLY_ERROR) {
            r->srv->stats.redis_errors++;
            log_warn("redis: subscriber connection: %s", rep->str);
        }
        /* subscribe/unsubscribe confirmations need nothing */
        freeReplyObject(rep);
    }
}

static void on_resubscribed(void *ud, int ok) {
    struct sb_redis *r = ud;
    if (!ok)
        return; /* the connection failed: lost() said so */
    r->sub_ready = 1;
    maybe_up(r);
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
        /* up (a history publication allowed, "reconnected" said) once the channels of
         * every live topic, queued on connect, are subscribed: before that, a
         * publication would miss this process's subscribers */
        if (!redis_sub_barrier(r, on_resubscribed, r)) {
            lost(r, "out of memory");
            return;
        }
        return; /* redis_sub_barrier flushed */
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
    load_functions(r); /* ahead of every FCALL of history */

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

/* ---- history ------------------------------------------------------------------------
 *
 * Topic history lives in Redis beside the channel, written by one server-side function
 * so that the position, the append and the PUBLISH are one atomic step: the order of
 * positions is the order in which every process receives the publications. Keys of a
 * topic T: "sb:history-meta:T" (hash: e = epoch, s = last position, n = size, t = ttl)
 * and "sb:history:T" (stream, ids "<pos>-0", fields d = the message, b = "1" binary);
 * both expire ttl seconds after the topic's last publication. The epoch is made with
 * the meta hash (from TIME and the topic), so when Redis loses the keys (FLUSHALL,
 * expiry, a restart without persistence) the next publication or read starts a new
 * epoch at position 1.
 *
 * The payload on "sb:T": 0xFF 'p' <flag '0'|'1' binary> <pos> ' ' <epoch> ' ' <tag> ' '
 * <message>; tag is "-", or 32 hex digits (the publishing process's origin and the id
 * of its connection that must not receive it: ws:publish). Backends publish with
 * FCALL sb_publish 1 <topic> <message> [<binary 0|1> [<size> [<ttl>]]] (size and ttl
 * default to the topic's last ones, else 100 and 3600). */

static const char functions[] =
    "#!lua name=switchboard\n"
    "local function new_epoch(mk, sk, topic, ttl)\n"
    "  local t = redis.call('TIME')\n"
    "  local e = string.sub(redis.sha1hex(topic .. ' ' .. t[1] .. ' ' .. t[2]), 1, 12)\n"
    "  redis.call('DEL', sk)\n"
    "  redis.call('HSET', mk, 'e', e, 's', 0)\n"
    "  redis.call('PEXPIRE', mk, math.max(1, math.floor(ttl * 1000)))\n"
    "  return e\n"
    "end\n"
    "local function publish(keys, args)\n"
    "  local topic, msg = keys[1], args[1]\n"
    "  local bin = args[2] == '1' and '1' or '0'\n"
    "  local mk, sk = 'sb:history-meta:' .. topic, 'sb:history:' .. topic\n"
    "  local m = redis.call('HMGET', mk, 'e', 'n', 't')\n"
    "  local size = tonumber(args[3]) or tonumber(m[2]) or 100\n"
    "  local ttl = tonumber(args[4]) or tonumber(m[3]) or 3600\n"
    "  size = math.max(1, math.floor(size))\n"
    "  local epoch = m[1] or new_epoch(mk, sk, topic, ttl)\n"
    "  local pos = redis.call('HINCRBY', mk, 's', 1)\n"
    "  redis.call('HSET', mk, 'n', size, 't', ttl)\n"
    "  redis.call('XADD', sk, 'MAXLEN', size, pos .. '-0', 'd', msg, 'b', bin)\n"
    "  local ms = math.max(1, math.floor(ttl * 1000))\n"
    "  redis.call('PEXPIRE', mk, ms)\n"
    "  redis.call('PEXPIRE', sk, ms)\n"
    "  local tag = args[5]\n"
    "  if not tag or tag == '' then tag = '-' end\n"
    "  redis.call('PUBLISH', 'sb:' .. topic,\n"
    "    '\\255p' .. bin .. pos .. ' ' .. epoch .. ' ' .. tag .. ' ' .. msg)\n"
    "  return {pos, epoch}\n"
    "end\n"
    "local function history(keys, args)\n"
    "  local topic = keys[1]\n"
    "  local since = tonumber(args[1]) or 0\n"
    "  local want, limit, first_n = args[2] or '*', tonumber(args[3]) or 0, args[4] == '1'\n"
    "  local ttl = tonumber(args[5]) or 3600\n"
    "  local mk, sk = 'sb:history-meta:' .. topic, 'sb:history:' .. topic\n"
    "  local m = redis.call('HMGET', mk, 'e', 's')\n"
    "  local epoch, seq = m[1], tonumber(m[2]) or 0\n"
    "  if not epoch then epoch, seq = new_epoch(mk, sk, topic, ttl), 0 end\n"
    "  local first = seq + 1\n"
    "  local head = redis.call('XRANGE', sk, '-', '+', 'COUNT', 1)\n"
    "  if head[1] then first = tonumber(string.match(head[1][1], '^(%d+)')) end\n"
    "  local ok, from = 0, since\n"
    "  if want ~= '*' then\n"
    "    if want == epoch and since <= seq and since + 1 >= first then ok = 1 else from = 0 end\n"
    "  end\n"
    "  if from > seq then from = seq end\n"
    "  local start = string.format('%d-0', from + 1)\n"
    "  local out = {ok, epoch, seq}\n"
    "  local list\n"
    "  if limit > 0 and not first_n then\n"
    "    list = redis.call('XREVRANGE', sk, '+', start, 'COUNT', limit)\n"
    "    for i = #list, 1, -1 do\n"
    "      local e = list[i]\n"
    "      out[#out + 1] = tonumber(string.match(e[1], '^(%d+)'))\n"
    "      out[#out + 1] = e[2][2]\n"
    "      out[#out + 1] = e[2][4]\n"
    "    end\n"
    "    return out\n"
    "  end\n"
    "  if limit > 0 then\n"
    "    list = redis.call('XRANGE', sk, start, '+', 'COUNT', limit)\n"
    "  else\n"
    "    list = redis.call('XRANGE', sk, start, '+')\n"
    "  end\n"
    "  for _, e in ipairs(list) do\n"
    "    out[#out + 1] = tonumber(string.match(e[1], '^(%d+)'))\n"
    "    out[#out + 1] = e[2][2]\n"
    "    out[#out + 1] = e[2][4]\n"
    "  end\n"
    "  return out\n"
    "end\n"
    "redis.register_function('sb_publish', publish)\n"
    "redis.register_function('sb_history', history)\n";

static void on_functions(void *ud, redisReply *rep, const char *err) {
    struct sb_redis *r = ud;
    if (rep && rep->type == REDIS_REPLY_ERROR)
        log_error("redis: cannot load switchboard's history functions (Redis 7 or later is "
                  "needed for topic history with --redis): %s", rep->str);
    (void)r;
    (void)err;
}

static void load_functions(struct sb_redis *r) {
    const char *argv[4] = {"FUNCTION", "LOAD", "REPLACE", functions};
    size_t argvlen[4] = {8, 4, 7, sizeof functions - 1};
    redis_command(r, 4, argv, argvlen, on_functions, r);
}

static void on_history_published(void *ud, redisReply *rep, const char *err) {
    struct sb_redis *r = ud;
    if (rep && rep->type == REDIS_REPLY_ERROR)
        log_warn("redis: history publish failed: %s", rep->str);
    else if (!rep)
        log_warn("redis: history publish failed: %s", err ? err : "no reply");
    (void)r;
}

static void hex64(char *out, uint64_t v) {
    static const char digits[] = "0123456789abcdef";
    for (int i = 15; i >= 0; i--, v >>= 4)
        out[i] = digits[v & 15];
}

const char *redis_history_publish(struct sb_redis *r, const char *topic, size_t tlen,
                                  const void *msg, size_t len, int binary, uint32_t size,
                                  double ttl, uint64_t except_id) {
    if (!redis_is_up(r)) {
        r->srv->stats.redis_errors++;
        return "not connected";
    }
    char sz[16], tt[32], tag[33] = "-";
    snprintf(sz, sizeof sz, "%u", size);
    snprintf(tt, sizeof tt, "%.3f", ttl);
    if (except_id) {
        hex64(tag, r->origin);
        hex64(tag + 16, except_id);
        tag[32] = 0;
    }
    const char *argv[9] = {"FCALL", "sb_publish", "1", topic, msg, binary ? "1" : "0", sz, tt, tag};
    size_t argvlen[9] = {5, 10, 1, tlen, len, 1, strlen(sz), strlen(tt), strlen(tag)};
    if (!redis_command(r, 9, argv, argvlen, on_history_published, r)) {
        r->srv->stats.redis_errors++; /* past --redis-out-max (counted there), or no memory */
        return r->pub ? "--redis-out-max bytes unanswered" : "not connected";
    }
    r->srv->stats.redis_published++;
    return NULL;
}

struct redis_cmd *redis_history_read(struct sb_redis *r, const char *topic, size_t tlen,
                                     uint64_t since, const char *epoch, size_t elen,
                                     size_t limit, int first_n, double ttl, redis_reply_fn cb,
                                     void *ud) {
    char sn[24], lim[24], tt[32];
    snprintf(sn, sizeof sn, "%llu", (unsigned long long)since);
    snprintf(lim, sizeof lim, "%zu", limit);
    snprintf(tt, sizeof tt, "%.3f", ttl);
    const char *argv[9] = {"FCALL", "sb_history", "1", topic, sn, epoch, lim, first_n ? "1" : "0",
                           tt};
    size_t argvlen[9] = {5, 10, 1, tlen, strlen(sn), elen, strlen(lim), 1, strlen(tt)};
    return redis_command(r, 9, argv, argvlen, cb, ud);
}

/* A PING on the subscriber connection: its answer comes after every SUBSCRIBE sent
 * before it took effect. Owned by r's list until it is answered or failed. */
struct redis_barrier {
    struct redis_barrier *next;
    redis_barrier_fn cb; /* NULL once cancelled */
    void *ud;
};

struct redis_barrier *redis_sub_barrier(struct sb_redis *r, redis_barrier_fn cb, void *ud) {
    if (!r || !r->sub || r->freeing || r->state == R_DOWN)
        return NULL;
    struct redis_barrier *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->cb = cb;
    b->ud = ud;
    if (r->bar_tail)
        r->bar_tail->next = b;
    else
        r->bar_head = b;
    r->bar_tail = b;
    redisAppendCommand(r->sub, "PING");
    sub_flush(r);
    return b;
}

void redis_barrier_cancel(struct redis_barrier *b) {
    if (b)
        b->cb = NULL;
}

static void barrier_pong(struct sb_redis *r) {
    struct redis_barrier *b = r->bar_head;
    if (!b)
        return;
    r->bar_head = b->next;
    if (!r->bar_head)
        r->bar_tail = NULL;
    if (b->cb)
        b->cb(b->ud, 1);
    free(b);
}

static void barriers_fail(struct sb_redis *r) {
    while (r->bar_head) {
        struct redis_barrier *b = r->bar_head;
        r->bar_head = b->next;
        if (!r->bar_head)
            r->bar_tail = NULL;
        if (b->cb)
            b->cb(b->ud, 0);
        free(b);
    }
}

/* A history publication back from the channel: parse, then hand it to the app side. */
static void on_positioned(struct sb_redis *r, const redisReply *chan, const unsigned char *p,
                          size_t len) {
    const unsigned char *end = p + len, *q = p + 3;
    uint64_t pos = 0;
    int ok = len > 3 && (p[2] == '0' || p[2] == '1');
    while (ok && q < end && *q >= '0' && *q <= '9' && pos < (UINT64_MAX - 9) / 10)
        pos = pos * 10 + (uint64_t)(*q++ - '0');
    ok = ok && pos > 0 && q < end && *q == ' ';
    const unsigned char *ep = ++q;
    while (ok && q < end && *q != ' ')
        q++;
    size_t elen = (size_t)(q - ep);
    ok = ok && q < end && elen > 0 && elen < HISTORY_EPOCH_MAX; /* what a stream can keep */
    const unsigned char *tag = ++q;
    while (ok && q < end && *q != ' ')
        q++;
    size_t taglen = (size_t)(q - tag);
    ok = ok && q < end && (taglen == 1 || taglen == 32);
    if (!ok) {
        refuse(r, chan, "a history publication (0xFF 'p') that is malformed");
        return;
    }
    q++;
    int binary = p[2] == '1';
    uint64_t except = 0;
    if (taglen == 32) {
        uint64_t origin = 0, id = 0;
        for (int i = 0; i < 32; i++) {
            int c = tag[i], d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : 0;
            if (i < 16)
                origin = origin << 4 | (uint64_t)d;
            else
                id = id << 4 | (uint64_t)d;
        }
        if (origin == r->origin)
            except = id;
    }
    size_t mlen = (size_t)(end - q);
    if ((uint64_t)mlen > r->srv->cfg.max_message) {
        refuse(r, chan, "longer than --max-message");
        return;
    }
    if (!binary && utf8_validate(UTF8_ACCEPT, q, mlen) != UTF8_ACCEPT) {
        refuse(r, chan, "a history publication whose text is not UTF-8");
        return;
    }
    r->srv->stats.redis_received++;
    size_t plen = sizeof CHAN_PREFIX - 1;
    char epoch[HISTORY_EPOCH_MAX];
    memcpy(epoch, ep, elen);
    epoch[elen] = 0;
    if (r->srv->history_in)
        r->srv->history_in(r->srv, chan->str + plen, chan->len - plen, pos, epoch, except, q, mlen,
                           binary);
    else
        pubsub_deliver(r->srv->pubsub, chan->str + plen, chan->len - plen, q, mlen, binary, NULL);
}
