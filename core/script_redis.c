/* script_redis.c — switchboard.redis: a pooled Redis client that handlers wait on.
 *
 * Each `red` (the userdata connect returns) owns one hiredis async connection on the
 * server's event_base between connect and close, so MULTI/EXEC and WATCH work as with
 * lua-resty-redis; close puts the connection back in its URL's pool (up to --redis-pool
 * idle connections per URL), where the next connect takes it without a round trip.
 *
 * A call or a connect is an op: it waits through the script__wait interface and ends
 * exactly once, by its reply, its timeout, the connection's death or its cancellation.
 * hiredis calls every reply callback exactly once (with NULL when the connection goes),
 * so an op handed to hiredis is freed by its callback; one that never was, where it ends.
 * A timeout or a cancellation closes the connection: a late reply would otherwise answer
 * the next call. Everything is made consistent before script__wait_done, which may run
 * Lua at once.
 *
 * hiredis 0.14 speaks RESP2 only, and would resolve a host name with a blocking
 * getaddrinfo: a name is resolved first with the loop's evdns (outbound_resolve,
 * /etc/hosts honoured), and hiredis is given the address. A connect's timeout covers
 * both; a cancellation or a timeout while the name resolves cancels the lookup. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <event2/event.h>
#include <event2/util.h>
#include <netinet/in.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "log.h"
#include "loop.h"
#include "outbound.h"
#include "redis.h"
#include "script_int.h"

#define RED_MT "switchboard.redis"
#define DEFAULT_TIMEOUT 10.0
#define MAX_ARGS 1000000

struct rpool;
struct rop;

enum owner { OWN_OP, OWN_UD, OWN_POOL };

/* One connection. Owned by its connect op until that succeeds, then by a red
 * userdata, or by its pool while idle; freed by whichever owns it when it dies
 * (a dead one has ac == NULL). */
struct rconn {
    redisAsyncContext *ac; /* NULL once it is dead; ac->data points back while alive */
    struct script_redis *R;
    struct rpool *pool;
    enum owner owner;
    struct rop *op;            /* the op waiting on this connection, or NULL */
    struct outbound_dns *dns;  /* while its host name resolves (ac still NULL) */
    struct event *tev;         /* the op's timeout */
    struct rconn *next, *prev; /* R->conns: every live connection */
    struct rconn *next_idle;   /* pool->idle */
};

/* One URL's idle connections. Freed with the client. */
struct rpool {
    struct rpool *next;
    char host[256];
    int port, db;
    struct rconn *idle;
    unsigned n_idle;
};

enum op_kind { OP_CONNECT, OP_CALL };

struct rop {
    struct script_redis *R;
    struct rconn *c; /* NULL once detached from its connection */
    enum op_kind kind;
    struct script_wait *w; /* NULL once it has ended (done or cancelled) */
    int in_hiredis;        /* hiredis holds it as a callback's privdata */
    int held;              /* a function ending it runs: its callback must not free it */
    double timeout;        /* for the red a connect makes */
    const char *fail;      /* ends with this at its (zero) timeout instead of "timeout" */
};

/* Owned by struct script (s->redis); script__redis_free before lua_close. */
struct script_redis {
    struct script *s;
    struct rpool *pools;
    struct rconn *conns;
    struct rop *spare; /* allocated before script__wait_begin, which may raise */
    struct rconn *spare_conn;
    int conv_ref; /* a thread for building results under a protected call */
    lua_State *conv;
    unsigned inflight;
    int closing;
};

struct red_ud {
    struct rconn *c; /* NULL once closed */
    double timeout;
};

/* ---- connections ---------------------------------------------------------------- */

static void conn_unlink(struct rconn *c) {
    struct script_redis *R = c->R;
    if (c->prev)
        c->prev->next = c->next;
    else if (R->conns == c)
        R->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->next = c->prev = NULL;
}

static void pool_unlink_idle(struct rconn *c) {
    struct rpool *p = c->pool;
    for (struct rconn **pp = &p->idle; *pp; pp = &(*pp)->next_idle) {
        if (*pp == c) {
            *pp = c->next_idle;
            p->n_idle--;
            break;
        }
    }
    c->next_idle = NULL;
}

/* Let go of hiredis's context: from here on, callbacks for it find no connection.
 * Closes the socket unless hiredis is already freeing it (free_ac 0). */
static void conn_detach(struct rconn *c, int free_ac) {
    redisAsyncContext *ac = c->ac;
    if (!ac)
        return;
    c->ac = NULL;
    ac->data = NULL;
    if (c->tev)
        event_del(c->tev);
    conn_unlink(c);
    if (free_ac)
        redisAsyncFree(ac); /* deferred by hiredis when inside one of ac's callbacks */
}

static void conn_free(struct rconn *c) {
    if (c->dns) {
        outbound_resolve_cancel(c->dns);
        c->dns = NULL;
    }
    if (c->ac)
        conn_detach(c, 1);
    else
        conn_unlink(c); /* resolving, or dead: a no-op when not linked */
    if (c->tev)
        event_free(c->tev);
    free(c);
}

/* A connection hiredis says is gone (c may be NULL: detached already). */
static void conn_gone(struct rconn *c) {
    if (!c)
        return;
    conn_detach(c, 0);
    if (c->owner == OWN_POOL) {
        pool_unlink_idle(c);
        conn_free(c);
    }
    /* OWN_UD: the red finds it dead; OWN_OP: the op's callback frees it */
}

/* ---- ops ---------------------------------------------------------------------------- */

static void op_release(struct rop *op) {
    if (!op->w && !op->in_hiredis && !op->held)
        free(op);
}

/* Stop op's use of its connection: a connect's connection is freed (nobody else has
 * it), a call's is closed when kill (the red keeps the dead struct). Closing may run
 * op's own hiredis callback at once: op->held keeps op alive through it. */
static void op_unhook(struct rop *op, int kill) {
    struct rconn *c = op->c;
    if (!c)
        return;
    c->op = NULL;
    op->c = NULL;
    op->held = 1;
    if (op->kind == OP_CONNECT) {
        c->owner = OWN_UD;
        conn_free(c);
    } else if (kill) {
        conn_detach(c, 1);
    }
    op->held = 0;
}

static const char *short_error(const char *errstr) {
    if (!errstr || !*errstr)
        return "closed";
    if (strcasestr(errstr, "refused"))
        return "connection refused";
    if (strcasestr(errstr, "timed out"))
        return "timeout";
    return "closed";
}

/* Results are built on the conv thread under a protected call (a reply may not
 * fit in --lua-memory) and moved to the waiting thread. */
struct push_args {
    const redisReply *reply;
    const char *err;
    struct rconn *c; /* a connect that succeeded: the new red's connection */
    double timeout;  /* and its timeout */
};

static void push_reply(lua_State *L, const redisReply *r, int nested) {
    luaL_checkstack(L, 4, "redis reply too deep");
    switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
        lua_pushlstring(L, r->str, r->len);
        break;
    case REDIS_REPLY_INTEGER:
        lua_pushinteger(L, (lua_Integer)r->integer);
        break;
    case REDIS_REPLY_NIL:
        if (nested)
            lua_pushlightuserdata(L, NULL); /* json.null: an array keeps its length */
        else
            lua_pushnil(L);
        break;
    case REDIS_REPLY_ERROR:
        /* only nested (in EXEC's array): top-level errors are nil, err */
        lua_createtable(L, 0, 1);
        lua_pushlstring(L, r->str, r->len);
        lua_setfield(L, -2, "err");
        break;
    case REDIS_REPLY_ARRAY:
        lua_createtable(L, r->elements > INT32_MAX ? 0 : (int)r->elements, 0);
        for (size_t i = 0; i < r->elements; i++) {
            push_reply(L, r->element[i], 1);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        break;
    default:
        lua_pushnil(L);
        break;
    }
}

static void red_ud_new(lua_State *L, struct rconn *c, double timeout);

static int push_results(lua_State *L) {
    struct push_args *a = lua_touserdata(L, 1);
    if (a->c) { /* a connect that succeeded */
        red_ud_new(L, a->c, a->timeout);
        return 1;
    }
    if (a->reply && a->reply->type != REDIS_REPLY_ERROR) {
        push_reply(L, a->reply, 0);
        return 1;
    }
    lua_pushnil(L);
    if (a->reply)
        lua_pushfstring(L, "redis: %s", a->reply->str);
    else
        lua_pushstring(L, a->err);
    return 2;
}

/* End a waiting op: hand its results to the waiting thread. op->w must already be
 * cleared (it is passed as w) and every structure consistent. */
static void op_finish(struct script_redis *R, struct script_wait *w, struct push_args *a) {
    lua_State *C = R->conv, *T = script__wait_thread(w);
    lua_settop(C, 0);
    lua_pushcfunction(C, push_results);
    lua_pushlightuserdata(C, a);
    int n = 0;
    if (lua_pcall(C, 1, LUA_MULTRET, 0) == LUA_OK) {
        n = lua_gettop(C);
    } else {
        lua_settop(C, 0);
        if (a->c) { /* the red was never made: the connection goes */
            a->c->owner = OWN_UD;
            conn_free(a->c);
        }
        lua_pushnil(C);
        lua_pushliteral(C, "out of memory");
        n = 2;
    }
    if (!lua_checkstack(T, n + 1)) {
        lua_settop(C, 0);
        n = 0;
    }
    lua_xmove(C, T, n);
    script__wait_done(w, n);
}

/* The op ends with err now (its reply, if one comes, is discarded). When kill,
 * its connection is closed first (a timeout, a failed connect). */
static void op_fail(struct rop *op, const char *err, int kill) {
    struct script_redis *R = op->R;
    struct script_wait *w = op->w;
    op->w = NULL;
    R->inflight--;
    op_unhook(op, kill);
    int outcome = strcmp(err, "timeout") == 0 ? 1 : 2;
    if (op->kind == OP_CALL)
        outcome == 1 ? R->s->srv->stats.redis_calls_timeout++
                     : R->s->srv->stats.redis_calls_failed++;
    else
        R->s->srv->stats.redis_connects_failed++;
    op_release(op); /* freed unless hiredis still holds it */
    struct push_args a = {.err = err};
    op_finish(R, w, &a);
}

static void on_cancel(void *ud) {
    struct rop *op = ud;
    op->w = NULL;
    op->R->inflight--;
    op_unhook(op, 1);
    op_release(op);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg) {
    struct rconn *c = arg;
    (void)fd;
    (void)what;
    if (c->op && c->op->w)
        op_fail(c->op, c->op->fail ? c->op->fail : c->dns ? "dns: timeout" : "timeout", 1);
}

static void arm_timeout(struct rconn *c, double secs) {
    struct timeval tv = {(time_t)secs, (suseconds_t)((secs - (double)(time_t)secs) * 1e6)};
    event_base_update_cache_time(c->R->s->srv->base);
    event_add(c->tev, &tv);
}

/* ---- hiredis callbacks ------------------------------------------------------------ */

static void connect_ready(struct rop *op) {
    struct script_redis *R = op->R;
    struct rconn *c = op->c;
    struct script_wait *w = op->w;
    event_del(c->tev);
    c->op = NULL;
    op->c = NULL;
    op->w = NULL;
    R->inflight--;
    R->s->srv->stats.redis_connects++;
    double timeout = op->timeout;
    op_release(op);
    struct push_args a = {.c = c, .timeout = timeout};
    op_finish(R, w, &a);
}

/* A call's reply, or a connect's SELECT; reply NULL: the connection went. */
static void on_reply(redisAsyncContext *ac, void *reply, void *priv) {
    struct rop *op = priv;
    redisReply *r = reply;
    (void)ac;
    op->in_hiredis = 0;
    if (!op->w || op->R->closing) { /* ended: timed out, cancelled; or shutting down, */
        op_release(op);             /* where its cancel is still to come */
        return;
    }
    struct script_redis *R = op->R;
    struct rconn *c = op->c;
    if (!r || !c) { /* the connection went (or was let go of) under the op */
        if (c)
            conn_detach(c, 0);
        op_fail(op, "closed", 0);
        return;
    }
    if (op->kind == OP_CONNECT) {
        if (r->type == REDIS_REPLY_ERROR) {
            char msg[200];
            snprintf(msg, sizeof msg, "redis: %s", r->str);
            /* a string that outlives the op: interned by op_finish's push */
            op_fail(op, msg, 0);
            return;
        }
        connect_ready(op);
        return;
    }
    struct script_wait *w = op->w;
    op->w = NULL;
    R->inflight--;
    event_del(c->tev);
    c->op = NULL;
    op->c = NULL;
    if (r->type == REDIS_REPLY_ERROR)
        R->s->srv->stats.redis_calls_error++;
    else
        R->s->srv->stats.redis_calls_ok++;
    op_release(op);
    struct push_args a = {.reply = r};
    op_finish(R, w, &a); /* hiredis frees r after we return */
}

static void on_connect(const redisAsyncContext *ac, int status) {
    struct rconn *c = ac->data;
    if (!c)
        return;
    if (status != REDIS_OK) {
        char err[64];
        snprintf(err, sizeof err, "%s", short_error(ac->errstr));
        conn_detach(c, 0); /* hiredis frees ac after this callback */
        if (c->op && c->op->w)
            op_fail(c->op, err, 0);
        return;
    }
    struct rop *op = c->op;
    if (!op || !op->w)
        return;
    if (c->pool->db) {
        if (redisAsyncCommand(c->ac, on_reply, op, "SELECT %d", c->pool->db) == REDIS_OK) {
            op->in_hiredis = 1;
            return;
        }
        op->fail = "closed"; /* not from inside hiredis's connect handling: next turn */
        arm_timeout(c, 0);
        return;
    }
    connect_ready(op);
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
    (void)status;
    conn_gone(ac->data);
}

/* ---- Lua: sb.redis.connect -------------------------------------------------------- */

static struct rpool *pool_for(struct script_redis *R, const char *host, int port, int db) {
    for (struct rpool *p = R->pools; p; p = p->next)
        if (p->port == port && p->db == db && strcmp(p->host, host) == 0)
            return p;
    struct rpool *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    snprintf(p->host, sizeof p->host, "%s", host);
    p->port = port;
    p->db = db;
    p->next = R->pools;
    R->pools = p;
    return p;
}

static void red_ud_new(lua_State *L, struct rconn *c, double timeout) {
    struct red_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->c = NULL;
    u->timeout = timeout;
    luaL_setmetatable(L, RED_MT);
    u->c = c;
    c->owner = OWN_UD;
}

static double opt_timeout(lua_State *L, int idx, int argn, const char *fn, double def) {
    if (lua_isnoneornil(L, idx))
        return def;
    if (lua_type(L, idx) != LUA_TNUMBER)
        script__type_error(L, idx, argn, fn, "number");
    lua_Number t = lua_tonumber(L, idx);
    if (!(t > 0) || t > 1e9)
        script__arg_error(L, argn, fn, "timeout must be above 0 and at most 1e9 seconds");
    return (double)t;
}

/* The op for the next wait, kept in R->spare until script__wait_begin returns. */
static struct rop *spare_op(lua_State *L, struct script_redis *R) {
    if (!R->spare && !(R->spare = calloc(1, sizeof *R->spare)))
        luaL_error(L, "out of memory");
    memset(R->spare, 0, sizeof *R->spare);
    R->spare->R = R;
    return R->spare;
}

/* A connection not yet connecting, or NULL out of memory. */
static struct rconn *conn_alloc(struct script_redis *R, struct rpool *p) {
    struct rconn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->R = R;
    c->pool = p;
    c->owner = OWN_OP;
    c->tev = evtimer_new(R->s->srv->base, on_timeout, c);
    if (!c->tev) {
        free(c);
        return NULL;
    }
    return c;
}

/* Start c's connect to addr (an IP literal). Returns 0, or -1 when it failed at once
 * (c stays dead). */
static int conn_start(struct script_redis *R, struct rconn *c, const char *addr) {
    struct rpool *p = c->pool;
    c->ac = redisAsyncConnect(addr, p->port);
    if (!c->ac || c->ac->err) {
        if (c->ac)
            redisAsyncFree(c->ac);
        c->ac = NULL;
        return -1;
    }
    c->ac->data = c;
    redisLibeventAttach(c->ac, R->s->srv->base);
    redisAsyncSetConnectCallback(c->ac, on_connect);
    redisAsyncSetDisconnectCallback(c->ac, on_disconnect);
    return 0;
}

static void conn_link(struct script_redis *R, struct rconn *c) {
    c->next = R->conns;
    if (R->conns)
        R->conns->prev = c;
    R->conns = c;
}

static int is_ip_literal(const char *s) {
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

/* The name resolved: connect to its first IPv4 address (else its first). */
static void on_resolved(void *ud, const struct evutil_addrinfo *ai, const char *err) {
    struct rconn *c = ud;
    struct rop *op = c->op;
    c->dns = NULL; /* outbound frees it after this call */
    if (!op || !op->w)
        return; /* cannot be: an op that ended freed c, which cancelled the lookup */
    if (err) {
        op_fail(op, err, 1);
        return;
    }
    const struct evutil_addrinfo *pick = ai;
    for (const struct evutil_addrinfo *a = ai; a; a = a->ai_next)
        if (a->ai_family == AF_INET) {
            pick = a;
            break;
        }
    char addr[INET6_ADDRSTRLEN] = "";
    const void *in = pick->ai_family == AF_INET
                         ? (const void *)&((const struct sockaddr_in *)pick->ai_addr)->sin_addr
                         : (const void *)&((const struct sockaddr_in6 *)pick->ai_addr)->sin6_addr;
    if (!inet_ntop(pick->ai_family, in, addr, sizeof addr) || conn_start(c->R, c, addr) < 0)
        op_fail(op, "connection refused", 1);
}

/* sb.redis.connect([url [, opts]]) -> red | nil, err */
static int l_connect(lua_State *L) {
    struct script *s = get_script(L);
    struct script_redis *R = s->redis;
    size_t ulen;
    const char *url = lua_isnoneornil(L, 1) ? s->srv->cfg.redis_url
                                            : script__arg_string(L, 1, 1, "connect", &ulen);
    if (!url)
        return script__arg_error(L, 1, "connect", "no URL given and the server has no --redis");
    double timeout = DEFAULT_TIMEOUT;
    if (!lua_isnoneornil(L, 2)) {
        if (lua_type(L, 2) != LUA_TTABLE)
            return script__type_error(L, 2, 2, "connect", "table");
        lua_getfield(L, 2, "timeout");
        timeout = opt_timeout(L, -1, 2, "connect", DEFAULT_TIMEOUT);
        lua_pop(L, 1);
    }
    char host[256], err[300];
    int port, db;
    if (redis_parse_url(url, host, sizeof host, &port, &db, err, sizeof err) < 0)
        return script__arg_error(L, 1, "connect", err + strlen("--redis "));
    if (R->closing) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        return 2;
    }
    struct rpool *p = pool_for(R, host, port, db);
    if (!p)
        return luaL_error(L, "out of memory");
    if (p->idle) { /* pooled: no round trip, but only where a connect could have waited */
        if (!s->cur_co)
            return luaL_error(L, "'connect' cannot wait here: only a handler or a timer "
                                 "function may wait (a script's top level runs at load)");
        struct rconn *c = p->idle;
        pool_unlink_idle(c);
        red_ud_new(L, c, timeout);
        s->srv->stats.redis_connects_reused++;
        return 1;
    }
    if (R->inflight >= s->srv->cfg.redis_max_calls) {
        s->srv->stats.redis_calls_refused++;
        lua_pushnil(L);
        lua_pushliteral(L, "too many calls");
        return 2;
    }
    if (!R->spare_conn && !(R->spare_conn = conn_alloc(R, p)))
        return luaL_error(L, "out of memory");
    struct rconn *c = R->spare_conn;
    c->pool = p;
    struct rop *op = spare_op(L, R);
    op->kind = OP_CONNECT;
    op->timeout = timeout;
    struct script_wait *w = script__wait_begin(L, on_cancel, op); /* raises outside a handler */
    R->spare = NULL;
    R->spare_conn = NULL;
    op->w = w;
    R->inflight++;
    op->c = c;
    c->op = op;
    conn_link(R, c);
    const char *derr = NULL;
    if (is_ip_literal(p->host)) {
        if (conn_start(R, c, p->host) < 0)
            op->fail = "connection refused"; /* refused at once: it ends on the next turn */
    } else {
        struct outbound_ctx *x = script__outbound(s);
        if (!x)
            op->fail = "out of memory";
        else if (!(c->dns = outbound_resolve(x, p->host, (unsigned)p->port, on_resolved, c, &derr)))
            op->fail = derr; /* a static string */
    }
    arm_timeout(c, op->fail ? 0 : timeout);
    return script__wait_yield(L, w);
}

/* ---- Lua: the red's methods --------------------------------------------------------- */

static struct red_ud *check_red(lua_State *L, const char *fn) {
    struct red_ud *u = luaL_testudata(L, 1, RED_MT);
    if (!u)
        script__type_error(L, 1, 1, fn, "redis connection");
    return u;
}

/* red:call(cmd, ...) -> value | nil, err */
static int l_call(lua_State *L) {
    struct script *s = get_script(L);
    struct script_redis *R = s->redis;
    struct red_ud *u = check_red(L, "call");
    int argc = lua_gettop(L) - 1;
    if (argc < 1)
        return script__type_error(L, 2, 1, "call", "string");
    if (argc > MAX_ARGS)
        return script__arg_error(L, argc + 1, "call", "too many arguments");
    for (int i = 2; i <= argc + 1; i++) {
        int t = lua_type(L, i);
        if (t != LUA_TSTRING && t != LUA_TNUMBER)
            return script__type_error(L, i, i - 1, "call", "string or number");
    }
    struct rconn *c = u->c;
    if (c && c->op)
        return script__arg_error(L, 1, "call", "another call is in flight on this connection");
    if (!c || !c->ac || (c->ac->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING)) || R->closing) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        return 2;
    }
    if (R->inflight >= s->srv->cfg.redis_max_calls) {
        s->srv->stats.redis_calls_refused++;
        lua_pushnil(L);
        lua_pushliteral(L, "too many calls");
        return 2;
    }
    const char **argv = lua_newuserdatauv(L, (size_t)argc * (sizeof(char *) + sizeof(size_t)), 0);
    size_t *argvlen = (size_t *)(argv + argc);
    for (int i = 0; i < argc; i++) {
        /* numbers become strings in place: the values stay on the stack. A float
         * with an integer value is written as an integer (JSON's numbers are floats:
         * LRANGE k 0 -1 must not become "0.0" "-1.0"), others with every digit. */
        if (lua_type(L, i + 2) == LUA_TNUMBER && !lua_isinteger(L, i + 2)) {
            lua_Number d = lua_tonumber(L, i + 2);
            lua_Integer n;
            if (lua_numbertointeger(d, &n) && (lua_Number)n == d)
                lua_pushfstring(L, "%I", (LUAI_UACINT)n);
            else {
                char num[64];
                snprintf(num, sizeof num, "%.17g", (double)d);
                lua_pushstring(L, num);
            }
        } else {
            lua_pushvalue(L, i + 2);
        }
        argv[i] = lua_tolstring(L, -1, &argvlen[i]);
        lua_replace(L, i + 2);
    }
    struct rop *op = spare_op(L, R);
    op->kind = OP_CALL;
    struct script_wait *w = script__wait_begin(L, on_cancel, op); /* raises outside a handler */
    R->spare = NULL;
    op->w = w;
    op->c = c;
    c->op = op;
    R->inflight++;
    if (redisAsyncCommandArgv(c->ac, on_reply, op, argc, argv, argvlen) != REDIS_OK) {
        /* hiredis is tearing it down: the call ends "closed" on the next turn */
        op->fail = "closed";
        conn_detach(c, 1);
        arm_timeout(c, 0);
        return script__wait_yield(L, w);
    }
    op->in_hiredis = 1;
    arm_timeout(c, u->timeout);
    return script__wait_yield(L, w);
}

/* Give u's connection back to its pool (or close it: dead, busy, pool full). */
static void red_release(struct red_ud *u) {
    struct rconn *c = u->c;
    if (!c)
        return;
    u->c = NULL;
    struct script_redis *R = c->R;
    if (c->ac && !c->op && !R->closing && c->pool->n_idle < R->s->srv->cfg.redis_pool) {
        c->owner = OWN_POOL;
        c->next_idle = c->pool->idle;
        c->pool->idle = c;
        c->pool->n_idle++;
        return;
    }
    if (c->op) { /* a call waits on it (another light thread): it ends "closed" */
        c->op->c = NULL;
        c->op = NULL;
    }
    conn_free(c);
}

/* red:close() -> true */
static int l_close(lua_State *L) {
    struct red_ud *u = check_red(L, "close");
    if (u->c && u->c->op)
        return script__arg_error(L, 1, "close", "a call is in flight on this connection");
    red_release(u);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_gc(lua_State *L) {
    struct red_ud *u = luaL_testudata(L, 1, RED_MT);
    if (u)
        red_release(u);
    return 0;
}

/* red:settimeout(seconds) */
static int l_settimeout(lua_State *L) {
    struct red_ud *u = check_red(L, "settimeout");
    if (lua_type(L, 2) != LUA_TNUMBER)
        return script__type_error(L, 2, 1, "settimeout", "number");
    u->timeout = opt_timeout(L, 2, 1, "settimeout", DEFAULT_TIMEOUT);
    return 0;
}

static int l_tostring(lua_State *L) {
    struct red_ud *u = luaL_checkudata(L, 1, RED_MT);
    if (u->c && u->c->ac)
        lua_pushfstring(L, "redis connection (%s:%d)", u->c->pool->host, u->c->pool->port);
    else
        lua_pushliteral(L, "redis connection (closed)");
    return 1;
}

/* ---- set-up ------------------------------------------------------------------------- */

void script__redis_open(lua_State *L) {
    struct script *s = get_script(L);
    static const luaL_Reg fns[] = {{"connect", l_connect}, {NULL, NULL}};
    luaL_newlib(L, fns);
    if (s->srv->cfg.redis_url) {
        lua_pushstring(L, s->srv->cfg.redis_url);
        lua_setfield(L, -2, "url");
    }
    lua_setfield(L, -2, "redis");
}

int script__redis_init(struct script *s) {
    lua_State *L = s->L;
    struct script_redis *R = calloc(1, sizeof *R);
    if (!R)
        return -1;
    R->s = s;
    R->conv = lua_newthread(L);
    R->conv_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    s->redis = R;
    luaL_newmetatable(L, RED_MT);
    static const luaL_Reg m[] = {
        {"call", l_call}, {"close", l_close}, {"settimeout", l_settimeout}, {NULL, NULL}};
    luaL_newlib(L, m);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_gc);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, l_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, "switchboard.redis");
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
    return 0;
}

void script__redis_free(struct script *s) {
    struct script_redis *R = s->redis;
    if (!R)
        return;
    R->closing = 1;
    /* ops still waiting stay allocated: their cancel may still come */
    while (R->conns) {
        struct rconn *c = R->conns;
        if (c->op) {
            c->op->c = NULL;
            c->op = NULL;
        }
        if (c->owner == OWN_POOL) {
            pool_unlink_idle(c);
            conn_free(c);
        } else if (c->owner == OWN_OP) {
            conn_free(c);
        } else {
            conn_detach(c, 1); /* the red's __gc frees the struct */
        }
    }
    while (R->pools) {
        struct rpool *p = R->pools;
        R->pools = p->next;
        free(p);
    }
    free(R->spare);
    R->spare = NULL;
    if (R->spare_conn) {
        event_free(R->spare_conn->tev);
        free(R->spare_conn);
        R->spare_conn = NULL;
    }
}

/* After lua_close: the reds' __gc ran. */
void script__redis_release(struct script *s) {
    free(s->redis);
    s->redis = NULL;
}
