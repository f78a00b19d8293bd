/* script_history.c — switchboard.history (keep, read), the publish of a
 * history topic (a position, the format, the store) and ws:subscribe's
 * recovery (`since`, `epoch`). In process the store is history.c; with --redis
 * the positions, the epoch and the kept publications live in Redis (redis.c)
 * and every process formats a publication when it comes back from the channel. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "conn.h"
#include "history.h"
#include "log.h"
#include "loop.h"
#include "outq.h"
#include "pubsub.h"
#include "redis.h"
#include "script_int.h"

#include <hiredis/hiredis.h>

static int read_redis(lua_State *L, const char *topic, size_t tlen, uint64_t since, size_t limit,
                      int first_n);
static int subscribe_redis(lua_State *L, struct conn *c, const char *topic, size_t tlen,
                           uint64_t since, const char *epoch, int valid);

/* ---- the format ------------------------------------------------------------------ */

/* Log a format failure (the error or a bad result on top of L, popped). */
static void format_failed(struct script *s, lua_State *L, const struct history_rule *r,
                          const char *topic, size_t tlen, uint64_t pos, const char *why) {
    struct log_fields lf = {0};
    char rb[64];
    script__log_fields(s, &lf, rb, sizeof rb);
    log_with(LOG_ERROR, &lf,
             "history format of '%s' failed on %.*s at position %llu: %s; "
             "the message is sent as it was published",
             r->prefix, (int)tlen, topic, (unsigned long long)pos, why);
    s->srv->stats.history_format_errors++;
    (void)L;
}

/* The frame of a publication at pos: format(msg, pos, epoch, binary) of rule r
 * when it has one (the result framed), else the message itself. *in_frame
 * says the frame's payload is the message (nothing else to keep). L is the
 * running thread (a handler's coroutine, a script's top level) or, from the
 * loop (a publication back from Redis), s->L. NULL out of memory. */
static struct outbuf *format_frame(struct script *s, lua_State *L, const struct history_rule *r,
                                   const char *topic, size_t tlen, const char *msg, size_t len,
                                   int binary, uint64_t pos, const char *epoch, int *in_frame) {
    *in_frame = 1;
    if (!r || r->ref == LUA_NOREF || r->ref < 0)
        return outbuf_frame(binary ? WS_OP_BINARY : WS_OP_TEXT, msg, len);
    int top = lua_gettop(L);
    lua_checkstack(L, 8);
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->ref);
    lua_pushlstring(L, msg, len);
    lua_pushinteger(L, (lua_Integer)pos);
    lua_pushstring(L, epoch);
    lua_pushboolean(L, binary);
    int from_loop = !s->in_handler;
    s->in_format++;
    int rc;
    if (from_loop) {
        char what[160];
        snprintf(what, sizeof what, "history format of '%.64s' on %.*s", r->prefix,
                 (int)(tlen > 64 ? 64 : tlen), topic);
        rc = script__pcall(s, 4, 2, what, NULL, NULL);
    } else {
        rc = lua_pcall(L, 4, 2, 0);
        if (rc != LUA_OK && s->budget_hit) {
            s->in_format--;
            lua_error(L); /* the budget is not the format's to catch */
        }
    }
    s->in_format--;
    const char *why = NULL;
    if (rc != LUA_OK) {
        if (!from_loop) /* script__pcall logged it */
            why = lua_tostring(L, -1) ? lua_tostring(L, -1) : "(error object is not a string)";
        else
            s->srv->stats.history_format_errors++;
    } else if (lua_type(L, -2) != LUA_TSTRING) {
        why = lua_pushfstring(L, "it returned %s (string expected)", luaL_typename(L, -2));
    } else {
        size_t flen;
        const char *f = lua_tolstring(L, -2, &flen);
        int fbin = lua_isnoneornil(L, -1) ? binary : lua_toboolean(L, -1);
        if (!fbin && !script__is_utf8(f, flen))
            why = "it returned text that is not valid UTF-8 (return it with true as binary)";
        else if ((uint64_t)flen > s->srv->cfg.max_message)
            why = "it returned more than --max-message bytes";
        else {
            struct outbuf *b = outbuf_frame(fbin ? WS_OP_BINARY : WS_OP_TEXT, f, flen);
            lua_settop(L, top);
            *in_frame = 0;
            return b;
        }
    }
    if (why)
        format_failed(s, L, r, topic, tlen, pos, why);
    lua_settop(L, top);
    return outbuf_frame(binary ? WS_OP_BINARY : WS_OP_TEXT, msg, len);
}

/* ---- publish ------------------------------------------------------------------------ */

/* (script_int.h) The publish of a topic with a history rule: pushes the number
 * of local subscribers it was queued on (0 with --redis: they get it when it comes
 * back from Redis), or nil and "redis: ..." when Redis cannot take it. */
int script__history_publish(lua_State *L, struct sb_server *srv, const struct history_rule *r,
                            const char *topic, size_t tlen, const char *msg, size_t len, int binary,
                            struct conn *except, const char *fn) {
    struct script *s = get_script(L);
    if (s->in_format)
        return luaL_error(L, "%s: cannot publish to a history topic (%s) from a history format", fn,
                          topic);
    /* a copy: the format may call sb.history.keep, which may move the rules */
    struct history_rule rule = *r;
    r = &rule;
    if (srv->redis) {
        const char *why = redis_history_publish(srv->redis, topic, tlen, msg, len, binary, r->size,
                                                r->ttl, except ? except->id : 0);
        if (why) { /* no position: not published at all, and the script is told */
            lua_pushnil(L);
            lua_pushfstring(L, "redis: %s", why);
            return 2;
        }
        lua_pushinteger(L, 0);
        return 1;
    }
    struct history_stream *st = history_stream(srv->history, topic, tlen, 1);
    if (!st)
        return luaL_error(L, "%s: out of memory", fn);
    uint64_t pos = history_next(st);
    int in_frame;
    struct outbuf *f =
        format_frame(s, L, r, topic, tlen, msg, len, binary, pos, history_epoch(st), &in_frame);
    if (!f)
        return luaL_error(L, "%s: out of memory", fn);
    history_append(srv->history, st, r, pos, f, msg, len, binary, in_frame);
    size_t n = pubsub_deliver_frame(srv->pubsub, topic, tlen, f, pos, msg, len, binary, except, 0);
    outbuf_unref(f);
    lua_pushinteger(L, (lua_Integer)n);
    return 1;
}

/* ---- switchboard.history.keep --------------------------------------------------- */

static int hist_keep(lua_State *L) {
    struct script *s = get_script(L);
    struct sb_server *srv = s->srv;
    size_t plen;
    const char *prefix = script__arg_string(L, 1, 1, "keep", &plen);
    if (!lua_isnoneornil(L, 2) && !lua_istable(L, 2))
        return script__type_error(L, 2, 2, "keep", "table");
    int t = lua_istable(L, 2) ? 2 : 0;
    lua_Integer size = 100;
    if (script__opt_field(L, t, "size", LUA_TNUMBER, 2, "keep")) {
        int isint;
        size = lua_tointegerx(L, -1, &isint);
        lua_pop(L, 1);
        if (!isint || size < 1 || size > 1000000)
            return script__arg_error(L, 2, "keep", "opts.size must be an integer from 1 to 1e6");
    }
    double ttl = script__opt_seconds(L, t, "ttl", 3600, 2, "keep");
    int ref = LUA_NOREF;
    if (script__opt_field(L, t, "format", LUA_TFUNCTION, 2, "keep"))
        ref = luaL_ref(L, LUA_REGISTRYINDEX);
    if (!srv->history && !(srv->history = history_new(srv, srv->cfg.history_max_bytes))) {
        luaL_unref(L, LUA_REGISTRYINDEX, ref);
        return luaL_error(L, "keep: out of memory");
    }
    int old;
    if (history_keep(srv->history, prefix, plen, (uint32_t)size, ttl, ref, &old) < 0) {
        luaL_unref(L, LUA_REGISTRYINDEX, ref);
        return luaL_error(L, "keep: out of memory");
    }
    if (old != LUA_NOREF && old >= 0)
        luaL_unref(L, LUA_REGISTRYINDEX, old);
    return 0;
}

/* ---- switchboard.history.read -------------------------------------------------- */

/* opts.since: an integer >= 0, or (malformed) -1; absent: 0 and *given 0. */
static long long opt_since(lua_State *L, int t, int *given) {
    *given = 0;
    if (!t)
        return 0;
    int ty = lua_getfield(L, t, "since");
    long long v = 0;
    if (ty != LUA_TNIL) {
        *given = 1;
        int isint = 0;
        lua_Integer i = ty == LUA_TNUMBER || ty == LUA_TSTRING ? lua_tointegerx(L, -1, &isint) : 0;
        v = isint && i >= 0 ? (long long)i : -1;
    }
    lua_pop(L, 1);
    return v;
}

static void push_item(void *ud, const struct history_item *it) {
    lua_State *L = ud;
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, (lua_Integer)it->pos);
    lua_setfield(L, -2, "pos");
    lua_pushlstring(L, it->msg, it->len);
    lua_setfield(L, -2, "msg");
    lua_pushboolean(L, it->binary);
    lua_setfield(L, -2, "binary");
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
}

/* opts.limit of argument #n of fn: 0 when absent. */
static size_t opt_limit(lua_State *L, int t, int n, const char *fn) {
    if (!script__opt_field(L, t, "limit", LUA_TNUMBER, n, fn))
        return 0;
    int isint;
    lua_Integer v = lua_tointegerx(L, -1, &isint);
    lua_pop(L, 1);
    if (!isint || v < 1)
        script__arg_error(L, n, fn, "opts.limit must be an integer >= 1");
    return (size_t)v;
}

static int hist_read(lua_State *L) {
    struct script *s = get_script(L);
    struct sb_server *srv = s->srv;
    size_t tlen;
    const char *topic = script__arg_topic(L, 1, 1, "read", &tlen);
    if (!lua_isnoneornil(L, 2) && !lua_istable(L, 2))
        return script__type_error(L, 2, 2, "read", "table");
    int t = lua_istable(L, 2) ? 2 : 0;
    int given;
    long long since = opt_since(L, t, &given);
    if (since < 0)
        return script__arg_error(L, 2, "read", "opts.since must be an integer >= 0");
    size_t limit = opt_limit(L, t, 2, "read");
    const struct history_rule *r = history_match(srv->history, topic, tlen);
    if (srv->redis && r)
        return read_redis(L, topic, tlen, (uint64_t)since, limit, given);
    lua_newtable(L);
    /* a read makes nothing: a topic never published nor subscribed to has no epoch yet */
    struct history_stream *st = r ? history_stream(srv->history, topic, tlen, 0) : NULL;
    if (!st)
        return 1;
    history_each(srv->history, st, (uint64_t)since, limit, given, push_item, L);
    lua_pushstring(L, history_epoch(st));
    return 2;
}

/* ---- recovery: ws:subscribe(topic, { since = pos, epoch = e }) ---------------------- */

struct add_ctx {
    struct pubsub *ps;
    struct conn *c;
    const char *topic;
    size_t tlen;
};

static void add_item(void *ud, const struct history_item *it) {
    struct add_ctx *a = ud;
    pubsub_replay_add(a->ps, a->c, a->topic, a->tlen, it->frame, it->pos);
}

/* Whether `since`/`epoch` (argument t's fields) can be trusted: since >= 0 and
 * epoch a string equal to the stream's. *since is set (0 when it cannot). */
static int recovery_args(lua_State *L, int t, uint64_t *since, const char **epoch) {
    int given;
    long long v = opt_since(L, t, &given);
    *epoch = NULL;
    size_t elen = 0;
    if (lua_getfield(L, t, "epoch") == LUA_TSTRING)
        *epoch = lua_tolstring(L, -1, &elen); /* stays on the stack for the call */
    *since = v > 0 ? (uint64_t)v : 0;
    /* an epoch is a short string without NUL: anything else cannot be one */
    return given && v >= 0 && *epoch && elen < HISTORY_EPOCH_MAX && strlen(*epoch) == elen;
}

/* (script_int.h) ws:subscribe with an options table that has since or epoch:
 * pushes recovered, epoch. */
int script__history_subscribe(lua_State *L, struct conn *c, const char *topic, size_t tlen, int t) {
    struct script *s = get_script(L);
    struct sb_server *srv = s->srv;
    uint64_t since;
    const char *epoch;
    int valid = recovery_args(L, t, &since, &epoch);
    const struct history_rule *r = history_match(srv->history, topic, tlen);
    if (!r) { /* no history here: a plain subscribe that did not recover */
        if (pubsub_subscribe(srv->pubsub, c, topic, tlen) < 0)
            return luaL_error(L, "subscribe: out of memory");
        lua_pushboolean(L, 0);
        return 1;
    }
    if (srv->redis)
        return subscribe_redis(L, c, topic, tlen, valid ? since : 0, valid ? epoch : NULL, valid);
    struct history_stream *st = history_stream(srv->history, topic, tlen, 1);
    if (!st)
        return luaL_error(L, "subscribe: out of memory");
    int sr = pubsub_subscribe_replay(srv->pubsub, c, topic, tlen);
    if (sr < 0)
        return luaL_error(L, "subscribe: out of memory");
    if (sr == 0) { /* already subscribed: nothing is replayed twice */
        lua_pushboolean(L, 0);
        lua_pushstring(L, history_epoch(st));
        return 2;
    }
    uint64_t last = history_last(st), first = history_first(srv->history, st);
    int ok = valid && strcmp(epoch, history_epoch(st)) == 0 && since <= last && since + 1 >= first;
    struct add_ctx a = {srv->pubsub, c, topic, tlen};
    history_each(srv->history, st, ok ? since : 0, 0, 1, add_item, &a);
    if (pubsub_replay_start(srv->pubsub, c, topic, tlen) < 0)
        return luaL_error(L, "subscribe: out of memory");
    lua_pushboolean(L, ok);
    lua_pushstring(L, history_epoch(st));
    return 2;
}

/* Set `history` on the module table at the top of the stack. */
void script__history_open(lua_State *L) {
    static const luaL_Reg fns[] = {{"keep", hist_keep}, {"read", hist_read}, {NULL, NULL}};
    luaL_newlib(L, fns);
    lua_setfield(L, -2, "history");
}

/* ---- with --redis ------------------------------------------------------------------ */

/* A publication of a history topic back from the Redis channel (srv->history_in):
 * formatted once here, delivered to the local subscribers (and held for those that
 * recover). Runs from the loop. */
static void history_in(struct sb_server *srv, const char *topic, size_t tlen, uint64_t pos,
                       const char *epoch, uint64_t except_id, const void *msg, size_t len,
                       int binary) {
    struct script *s = srv->script;
    const struct history_rule *m = history_match(srv->history, topic, tlen);
    struct history_rule rule = m ? *m : (struct history_rule){0}; /* the format may move them */
    const struct history_rule *r = m ? &rule : NULL;
    struct history_stream *st = r ? history_stream(srv->history, topic, tlen, 1) : NULL;
    struct outbuf *f = NULL;
    if (st) {
        history_adopt(srv->history, st, epoch, pos);
        history_hear(st, pos);
        /* a recovery whose read came back before this did formatted it already */
        if ((f = history_frame(srv->history, st, pos)))
            f->refs++;
    }
    if (!f) {
        int in_frame;
        f = format_frame(s, s->L, r, topic, tlen, msg, len, binary, pos, epoch, &in_frame);
        if (!f)
            return;
        /* kept here too, so that a recovery reuses the frame instead of formatting again
         * (the stream is looked up again: the format ran Lua) */
        st = r ? history_stream(srv->history, topic, tlen, 1) : NULL;
        if (st) {
            history_adopt(srv->history, st, epoch, pos);
            history_append(srv->history, st, r, pos, f, msg, len, binary, in_frame);
        }
    }
    pubsub_deliver_frame(srv->pubsub, topic, tlen, f, pos, msg, len, binary, NULL, except_id);
    outbuf_unref(f);
}

/* The frames this process formatted for a topic (its cache with --redis), by position. */
struct cached {
    struct {
        uint64_t pos;
        struct outbuf *f;
    } * v;
    size_t n, cap;
};

static void cache_collect(void *ud, const struct history_item *it) {
    struct cached *c = ud;
    if (c->n == c->cap) {
        size_t nc = c->cap ? c->cap * 2 : 64;
        void *nv = realloc(c->v, nc * sizeof *c->v);
        if (!nv)
            return;
        c->v = nv;
        c->cap = nc;
    }
    c->v[c->n].pos = it->pos;
    c->v[c->n].f = it->frame;
    it->frame->refs++; /* a format that runs meanwhile may trim the store */
    c->n++;
}

void script__history_init(struct script *s) {
    s->srv->history_in = history_in;
}

/* A read or a recovery waiting for Redis: a userdata on the waiting coroutine's
 * stack (it lives as long as the wait). */
struct hwait {
    struct script *s;
    struct script_wait *w;
    struct conn *c;                /* recovery: the subscriber; NULL for a read */
    struct redis_barrier *barrier; /* in flight, or NULL */
    struct redis_cmd *cmd;         /* in flight, or NULL */
    int held;                      /* c is held by this wait (not by its handler call) */
    int valid;                     /* since/epoch are well formed */
    int recovered;                 /* the read's answer, while the channel catches up */
    uint64_t upto;                 /* the last position when Redis read */
    uint64_t since;
    double ttl;
    size_t elen, tlen;
    char epoch[HISTORY_EPOCH_MAX * 2]; /* the client's, when valid */
    char topic[];
};

/* The wait is over (its nres results are pushed): release what it holds. */
static void hw_end(struct hwait *h, int nres) {
    struct conn *held = h->held ? h->c : NULL;
    h->held = 0;
    h->barrier = NULL;
    h->cmd = NULL;
    script__wait_done(h->w, nres);
    if (held)
        conn_release(held);
}

/* A recovery that could not read Redis: live from now on, not recovered. */
static void hw_live(struct hwait *h) {
    lua_State *T = script__wait_thread(h->w);
    pubsub_replay_start(h->s->srv->pubsub, h->c, h->topic, h->tlen);
    lua_pushboolean(T, 0);
    lua_pushnil(T);
    hw_end(h, 2);
}

static void hw_cancel(void *ud) {
    struct hwait *h = ud;
    redis_barrier_cancel(h->barrier);
    redis_command_cancel(h->cmd);
    if (h->c)
        pubsub_replay_start(h->s->srv->pubsub, h->c, h->topic, h->tlen);
    if (h->held)
        conn_release(h->c);
    h->held = 0;
}

/* What is wrong with a reply to FCALL sb_history (an array of 3 + 3n, the epoch a
 * string), or NULL. */
static const char *reply_problem(const redisReply *rep, const char *err) {
    if (!rep)
        return err ? err : "connection to Redis lost";
    if (rep->type == REDIS_REPLY_ERROR)
        return rep->str;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 3 || (rep->elements - 3) % 3 ||
        rep->element[1]->type != REDIS_REPLY_STRING)
        return "unexpected reply to FCALL sb_history";
    for (size_t i = 3; i < rep->elements; i += 3)
        if (rep->element[i]->type != REDIS_REPLY_INTEGER ||
            rep->element[i + 1]->type != REDIS_REPLY_STRING ||
            rep->element[i + 2]->type != REDIS_REPLY_STRING)
            return "unexpected entry in the reply to FCALL sb_history";
    return NULL;
}

static void on_read_reply(void *ud, redisReply *rep, const char *err) {
    struct hwait *h = ud;
    h->cmd = NULL;
    lua_State *T = script__wait_thread(h->w);
    const char *why = reply_problem(rep, err);
    lua_checkstack(T, 6);
    if (why) {
        lua_pushnil(T);
        lua_pushfstring(T, "redis: %s", why);
        hw_end(h, 2);
        return;
    }
    size_t n = (rep->elements - 3) / 3;
    lua_createtable(T, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        redisReply **e = rep->element + 3 + 3 * i;
        lua_createtable(T, 0, 3);
        lua_pushinteger(T, (lua_Integer)e[0]->integer);
        lua_setfield(T, -2, "pos");
        lua_pushlstring(T, e[1]->str, e[1]->len);
        lua_setfield(T, -2, "msg");
        lua_pushboolean(T, e[2]->len == 1 && e[2]->str[0] == '1');
        lua_setfield(T, -2, "binary");
        lua_rawseti(T, -2, (lua_Integer)i + 1);
    }
    lua_pushlstring(T, rep->element[1]->str, rep->element[1]->len);
    hw_end(h, 2);
}

static struct hwait *hw_new(lua_State *L, const char *topic, size_t tlen) {
    struct hwait *h = lua_newuserdatauv(L, sizeof *h + tlen + 1, 0);
    memset(h, 0, sizeof *h);
    h->s = get_script(L);
    h->tlen = tlen;
    memcpy(h->topic, topic, tlen);
    h->topic[tlen] = 0;
    return h;
}

static int read_redis(lua_State *L, const char *topic, size_t tlen, uint64_t since, size_t limit,
                      int first_n) {
    struct script *s = get_script(L);
    const struct history_rule *r = history_match(s->srv->history, topic, tlen);
    struct hwait *h = hw_new(L, topic, tlen);
    h->w = script__wait_begin(L, hw_cancel, h);
    h->cmd = redis_history_read(s->srv->redis, topic, tlen, since, "*", 1, limit, first_n,
                                r ? r->ttl : 3600, on_read_reply, h);
    if (!h->cmd) {
        lua_State *T = script__wait_thread(h->w);
        lua_pushnil(T);
        lua_pushliteral(T, "redis: not connected (or --redis-out-max reached)");
        hw_end(h, 2);
    }
    return script__wait_yield(L, h->w);
}

/* The recovery is complete: the subscription goes live. */
static void hw_recovered(struct hwait *h) {
    pubsub_replay_start(h->s->srv->pubsub, h->c, h->topic, h->tlen);
    lua_State *T = script__wait_thread(h->w);
    lua_checkstack(T, 4);
    lua_pushboolean(T, h->recovered);
    lua_pushlstring(T, h->epoch, h->elen);
    hw_end(h, 2);
}

static void on_caught_up(void *ud, int ok) {
    struct hwait *h = ud;
    struct sb_server *srv = h->s->srv;
    h->barrier = NULL;
    /* everything up to the read is in: the next recovery of a quiet topic needs no PING
     * (when the connection went away, nothing more comes on the channel) */
    struct history_stream *st = ok ? history_stream(srv->history, h->topic, h->tlen, 0) : NULL;
    if (st && strcmp(history_epoch(st), h->epoch) == 0)
        history_hear(st, h->upto);
    hw_recovered(h);
}

static void on_recovery_reply(void *ud, redisReply *rep, const char *err) {
    struct hwait *h = ud;
    struct script *s = h->s;
    struct sb_server *srv = s->srv;
    h->cmd = NULL;
    const char *why = reply_problem(rep, err);
    if (why) {
        log_warn("history: recovery of %s failed: %s; it goes on live", h->topic, why);
        hw_live(h);
        return;
    }
    const struct history_rule *m = history_match(srv->history, h->topic, h->tlen);
    struct history_rule rule = m ? *m : (struct history_rule){0}; /* the format may move them */
    const struct history_rule *r = m ? &rule : NULL;
    const char *epoch = rep->element[1]->str;
    /* the frames formatted here already (same epoch) are reused, and those formatted
     * now are kept: a format runs once per publication per process, whatever the
     * number of recoveries */
    struct cached cache = {0};
    struct history_stream *st = r ? history_stream(srv->history, h->topic, h->tlen, 1) : NULL;
    if (st) {
        history_adopt(srv->history, st, epoch, 0);
        if (rep->elements > 3)
            history_each(srv->history, st, (uint64_t)rep->element[3]->integer - 1, 0, 1,
                         cache_collect, &cache);
    }
    size_t k = 0;
    for (size_t i = 3; i < rep->elements; i += 3) {
        redisReply **e = rep->element + i;
        uint64_t pos = (uint64_t)e[0]->integer;
        while (k < cache.n && cache.v[k].pos < pos)
            k++;
        struct outbuf *f;
        if (k < cache.n && cache.v[k].pos == pos) {
            f = cache.v[k].f;
            f->refs++;
        } else {
            int binary = e[2]->len == 1 && e[2]->str[0] == '1';
            int in_frame;
            f = format_frame(s, s->L, r, h->topic, h->tlen, e[1]->str, e[1]->len, binary, pos,
                             epoch, &in_frame);
            if (f && st) {
                history_adopt(srv->history, st, epoch, pos);
                history_append(srv->history, st, r, pos, f, e[1]->str, e[1]->len, binary, in_frame);
            }
        }
        if (!f)
            break;
        pubsub_replay_add(srv->pubsub, h->c, h->topic, h->tlen, f, pos);
        outbuf_unref(f);
    }
    for (size_t i = 0; i < cache.n; i++)
        outbuf_unref(cache.v[i].f);
    free(cache.v);
    h->recovered = rep->element[0]->type == REDIS_REPLY_INTEGER && rep->element[0]->integer == 1;
    h->elen = rep->element[1]->len < sizeof h->epoch ? rep->element[1]->len : sizeof h->epoch - 1;
    memcpy(h->epoch, epoch, h->elen);
    h->epoch[h->elen] = 0;
    /* The read is on the other connection: publications Redis made before it, which
     * its reply holds, may still be on their way on the channel. Until they are in
     * (a PING on the subscriber connection, answered after them), the subscription
     * keeps dropping the positions it has, or they would come twice. */
    uint64_t upto = rep->element[2]->type == REDIS_REPLY_INTEGER && rep->element[2]->integer > 0
                        ? (uint64_t)rep->element[2]->integer
                        : 0;
    h->upto = upto;
    if (upto && !(st && history_heard(st) >= upto)) {
        pubsub_replay_pump(srv->pubsub, h->c); /* the replay goes out meanwhile */
        if ((h->barrier = redis_sub_barrier(srv->redis, on_caught_up, h)))
            return;
    }
    hw_recovered(h);
}

static void on_barrier(void *ud, int ok) {
    struct hwait *h = ud;
    struct sb_server *srv = h->s->srv;
    h->barrier = NULL;
    if (ok)
        h->cmd =
            redis_history_read(srv->redis, h->topic, h->tlen, h->since, h->valid ? h->epoch : "",
                               h->valid ? h->elen : 0, 0, 1, h->ttl, on_recovery_reply, h);
    if (!h->cmd)
        hw_live(h);
}

static int subscribe_redis(lua_State *L, struct conn *c, const char *topic, size_t tlen,
                           uint64_t since, const char *epoch, int valid) {
    struct script *s = get_script(L);
    struct sb_server *srv = s->srv;
    const struct history_rule *r = history_match(srv->history, topic, tlen);
    size_t elen = epoch ? strlen(epoch) : 0;
    struct hwait *h = hw_new(L, topic, tlen);
    h->c = c;
    h->since = since;
    h->valid = valid && elen < sizeof h->epoch;
    h->ttl = r ? r->ttl : 3600;
    if (h->valid) {
        memcpy(h->epoch, epoch, elen + 1);
        h->elen = elen;
    }
    h->w = script__wait_begin(L, hw_cancel, h); /* raises where no wait is possible */
    lua_State *T = script__wait_thread(h->w);
    int sr = pubsub_subscribe_replay(srv->pubsub, c, topic, tlen);
    if (sr <= 0) { /* already subscribed (nothing is replayed twice), or out of memory */
        h->c = NULL;
        lua_pushboolean(T, 0);
        lua_pushnil(T);
        hw_end(h, 2);
        return script__wait_yield(L, h->w);
    }
    /* the channel's SUBSCRIBE (sent when c became the topic's first subscriber here)
     * takes effect before the read: what the read misses comes through the channel */
    h->barrier = redis_sub_barrier(srv->redis, on_barrier, h);
    if (!h->barrier) {
        hw_live(h);
        return script__wait_yield(L, h->w);
    }
    if (!(s->cur_call && s->cur_call->conn == c)) {
        conn_hold(c); /* a timer's (or another connection's) call: keep c until the end */
        h->held = 1;
    }
    return script__wait_yield(L, h->w);
}
