/* script_presence.c — presence: ws:subscribe(topic, { presence = info }) and
 * switchboard.presence(topic).
 *
 * This process's entries live in two registry tables: PRES_KEY[topic][field] = the
 * info as JSON, where field is "<switchboard.node>:<ws.id>", and
 * PRES_CONN_KEY[ws.id][topic] = true, so a closing connection finds its entries. A
 * connection's entry leaves with ws:unsubscribe(topic) or its close.
 *
 * With --redis the entries of every process meet in Redis, as Centrifugo keeps them:
 * a hash "sb:presence:<topic>" (field -> JSON) and a sorted set
 * "sb:presence-expire:<topic>" (field -> when it expires, on Redis's clock). Each process
 * writes its entries again every third of --presence-ttl (and at once after a
 * reconnection), pushing their expiry on; a process that dies stops doing so, and its
 * entries are left out (and deleted) by the next read once --presence-ttl has passed.
 * Both keys expire --presence-ttl after their last write, so abandoned topics vanish.
 * Every command goes on the core's Redis connection (redis_command), in order with
 * the publishes. */
#define _GNU_SOURCE
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>
#include <lauxlib.h>
#include <lua.h>

#include "conn.h"
#include "log.h"
#include "redis.h"
#include "script_int.h"
#include "loop.h"

#define PRES_KEY "switchboard.presence"
#define PRES_CONN_KEY "switchboard.presence_conns"
#define PRESENCE_MAX 1024 /* bytes of one entry's JSON */
#define CHUNK 256         /* entries per write */
#define HASH_PREFIX "sb:presence:"
#define ZSET_PREFIX "sb:presence-expire:"

/* KEYS: hash, zset. ARGV: ttl (seconds), then field, json pairs. */
static const char ADD_LUA[] =
    "local t = redis.call('TIME')\n"
    "local ttl = tonumber(ARGV[1])\n"
    "local exp = tonumber(t[1]) + tonumber(t[2]) / 1e6 + ttl\n"
    "for i = 2, #ARGV, 2 do\n"
    "  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])\n"
    "  redis.call('ZADD', KEYS[2], exp, ARGV[i])\n"
    "end\n"
    "local ms = math.ceil(ttl * 1000)\n"
    "redis.call('PEXPIRE', KEYS[1], ms)\n"
    "redis.call('PEXPIRE', KEYS[2], ms)\n"
    "return 1\n";

/* KEYS: hash, zset. ARGV: fields. */
static const char DEL_LUA[] = "redis.call('HDEL', KEYS[1], unpack(ARGV))\n"
                              "redis.call('ZREM', KEYS[2], unpack(ARGV))\n"
                              "return 1\n";

/* KEYS: hash, zset. The live entries' JSON, after deleting the expired ones. */
static const char GET_LUA[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) + tonumber(t[2]) / 1e6\n"
    "local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)\n"
    "for i = 1, #old, 1000 do\n"
    "  redis.call('HDEL', KEYS[1], unpack(old, i, math.min(i + 999, #old)))\n"
    "end\n"
    "if #old > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now) end\n"
    "return redis.call('HVALS', KEYS[1])\n";

/* Owned by struct script (s->presence). */
struct presence {
    struct script *s;
    size_t entries;          /* this process's, all topics */
    double err_logged;       /* when a failed write was last logged */
    struct event *refresh;   /* --redis: every third of --presence-ttl */
    struct sb_redis *hooked; /* the Redis whose up hook is ours, or NULL */
};

/* ---- Redis commands ------------------------------------------------------------------ */

/* argv[1..2] = the topic's two keys, built in buf (cap >= 2 * (tlen + 32)). */
static void keys_for(const char *topic, size_t tlen, char *buf, const char **argv,
                     size_t *argvlen) {
    char *h = buf, *z = buf + sizeof HASH_PREFIX - 1 + tlen;
    memcpy(h, HASH_PREFIX, sizeof HASH_PREFIX - 1);
    memcpy(h + sizeof HASH_PREFIX - 1, topic, tlen);
    memcpy(z, ZSET_PREFIX, sizeof ZSET_PREFIX - 1);
    memcpy(z + sizeof ZSET_PREFIX - 1, topic, tlen);
    argv[0] = h;
    argvlen[0] = sizeof HASH_PREFIX - 1 + tlen;
    argv[1] = z;
    argvlen[1] = sizeof ZSET_PREFIX - 1 + tlen;
}

/* A write's reply: an error (a Redis without scripting, a full memory) is logged at
 * most once a minute; it is counted in redis_errors by redis.c. ud is the presence
 * state, which outlives every reply: main.c frees the Redis client (whose pending
 * callbacks run then) before the server and its script. */
static void on_write(void *ud, struct redisReply *reply, const char *err) {
    struct presence *P = ud;
    (void)err; /* a lost connection is logged by redis.c; on_up writes everything again */
    if (!reply || reply->type != REDIS_REPLY_ERROR)
        return;
    double now = server_clock();
    if (P->err_logged > 0 && now - P->err_logged < 60)
        return;
    P->err_logged = now;
    log_warn("presence: Redis refused a write: %s", reply->str);
}

/* EVAL script 2 keys(topic) args...: nobody waits for the reply. */
static void eval(struct presence *P, const char *script, const char *topic, size_t tlen,
                 int nargs, const char **args, const size_t *arglens) {
    struct sb_redis *r = P->s->srv->redis;
    if (!redis_is_up(r))
        return; /* written again on reconnection */
    char *keys = malloc(2 * (tlen + 32));
    const char **argv = malloc((size_t)(nargs + 5) * sizeof *argv);
    size_t *argvlen = malloc((size_t)(nargs + 5) * sizeof *argvlen);
    if (keys && argv && argvlen) {
        argv[0] = "EVAL";
        argvlen[0] = 4;
        argv[1] = script;
        argvlen[1] = strlen(script);
        argv[2] = "2";
        argvlen[2] = 1;
        keys_for(topic, tlen, keys, argv + 3, argvlen + 3);
        for (int i = 0; i < nargs; i++) {
            argv[5 + i] = args[i];
            argvlen[5 + i] = arglens[i];
        }
        redis_command(r, nargs + 5, argv, argvlen, on_write, P);
    }
    free(keys);
    free(argv);
    free(argvlen);
}

/* Write the entries of the table at the top of s->L (field -> json) for topic. The
 * strings are the table's own: no Lua runs and nothing changes the table meanwhile,
 * so their pointers hold while the batch is built. */
static void write_topic(struct presence *P, const char *topic, size_t tlen) {
    lua_State *L = P->s->L;
    int tbl = lua_gettop(L);
    char ttl[32];
    snprintf(ttl, sizeof ttl, "%g", P->s->srv->cfg.presence_ttl);
    const char *args[1 + 2 * CHUNK];
    size_t lens[1 + 2 * CHUNK];
    args[0] = ttl;
    lens[0] = strlen(ttl);
    int n = 1;
    lua_pushnil(L);
    while (lua_next(L, tbl)) {
        args[n] = lua_tolstring(L, -2, &lens[n]); /* a string key: never converted */
        args[n + 1] = lua_tolstring(L, -1, &lens[n + 1]);
        n += 2;
        lua_pop(L, 1);
        if (n == 1 + 2 * CHUNK) {
            eval(P, ADD_LUA, topic, tlen, n, args, lens);
            n = 1;
        }
    }
    if (n > 1)
        eval(P, ADD_LUA, topic, tlen, n, args, lens);
    lua_settop(L, tbl);
}

/* Every entry of this process, written again (a refresh; after a reconnection). */
static void write_all(struct presence *P) {
    lua_State *L = P->s->L;
    if (!P->entries || !redis_is_up(P->s->srv->redis))
        return;
    int top = lua_gettop(L);
    lua_getfield(L, LUA_REGISTRYINDEX, PRES_KEY);
    lua_pushnil(L);
    while (lua_next(L, top + 1)) {
        size_t tlen;
        const char *topic = lua_tolstring(L, -2, &tlen);
        write_topic(P, topic, tlen);
        lua_pop(L, 1);
    }
    lua_settop(L, top);
}

static void on_refresh(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    write_all(arg);
}

static void on_up(void *ud) {
    write_all(ud);
}

/* With --redis: the refresh timer and the up hook, once. */
static void hook_redis(struct presence *P) {
    struct sb_server *srv = P->s->srv;
    if (!srv->redis || P->hooked)
        return;
    if (redis_on_up(srv->redis, on_up, P) < 0)
        return;
    P->hooked = srv->redis;
    double every = srv->cfg.presence_ttl / 3;
    struct timeval tv = {(time_t)every, (suseconds_t)((every - (double)(time_t)every) * 1e6)};
    P->refresh = event_new(srv->base, -1, EV_PERSIST, on_refresh, P);
    if (P->refresh)
        event_add(P->refresh, &tv);
}

/* ---- this process's entries ------------------------------------------------------------ */

/* "<node>:<id>" into buf; returns its length. */
static size_t field_of(struct script *s, uint64_t id, char *buf, size_t cap) {
    int n = snprintf(buf, cap, "%s:%llu", s->node, (unsigned long long)id);
    return n < 0 ? 0 : (size_t)n;
}

int script__presence_encode(lua_State *L, int opts, int n, const char *fn) {
    if (lua_getfield(L, opts, "presence") == LUA_TNIL) {
        lua_pop(L, 1);
        return 0;
    }
    if (lua_type(L, -1) != LUA_TTABLE)
        return script__arg_error(L, n, fn, "presence must be a table");
    if (lua_getfield(L, LUA_REGISTRYINDEX, "switchboard.json_encode") != LUA_TFUNCTION)
        return luaL_error(L, "%s: presence needs switchboard.json (lua-cjson)", fn);
    lua_insert(L, -2);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) /* a function, a sparse array, NaN, a cycle */
        return script__arg_error(
            L, n, fn, lua_pushfstring(L, "presence does not encode as JSON: %s", lua_tostring(L, -1)));
    size_t len;
    lua_tolstring(L, -1, &len);
    if (len > PRESENCE_MAX)
        return script__arg_error(L, n, fn, "presence longer than 1024 bytes as JSON");
    return 1;
}

void script__presence_join(lua_State *L, struct conn *c, const char *topic, size_t tlen,
                           int json_idx) {
    struct script *s = get_script(L);
    struct presence *P = s->presence;
    int top = lua_gettop(L);
    json_idx = lua_absindex(L, json_idx);
    hook_redis(P);
    char field[64];
    size_t flen = field_of(s, c->id, field, sizeof field);
    /* PRES_KEY[topic][field] = json */
    lua_getfield(L, LUA_REGISTRYINDEX, PRES_KEY);
    lua_pushlstring(L, topic, tlen);
    if (lua_rawget(L, -2) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_createtable(L, 0, 4);
        lua_pushlstring(L, topic, tlen);
        lua_pushvalue(L, -2);
        lua_rawset(L, -4);
    }
    lua_pushlstring(L, field, flen);
    if (lua_rawget(L, -2) == LUA_TNIL)
        P->entries++;
    lua_pop(L, 1);
    lua_pushlstring(L, field, flen);
    lua_pushvalue(L, json_idx);
    lua_rawset(L, -3);
    /* PRES_CONN_KEY[id][topic] = true */
    lua_getfield(L, LUA_REGISTRYINDEX, PRES_CONN_KEY);
    if (lua_rawgeti(L, -1, (lua_Integer)c->id) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_createtable(L, 0, 1);
        lua_pushvalue(L, -1);
        lua_rawseti(L, -3, (lua_Integer)c->id);
    }
    lua_pushlstring(L, topic, tlen);
    lua_pushboolean(L, 1);
    lua_rawset(L, -3);
    if (s->srv->redis) {
        const char *args[3];
        size_t lens[3];
        char ttl[32];
        snprintf(ttl, sizeof ttl, "%g", s->srv->cfg.presence_ttl);
        args[0] = ttl;
        lens[0] = strlen(ttl);
        args[1] = field;
        lens[1] = flen;
        args[2] = lua_tolstring(L, json_idx, &lens[2]);
        eval(P, ADD_LUA, topic, tlen, 3, args, lens);
    }
    lua_settop(L, top);
}

/* Remove c's entry in the topic table at the top of s->L (PRES_KEY[topic]), and the
 * topic's table when it empties (PRES_KEY at top - 1). */
static void leave_one(lua_State *L, struct presence *P, struct conn *c, const char *topic,
                      size_t tlen) {
    struct script *s = P->s;
    char field[64];
    size_t flen = field_of(s, c->id, field, sizeof field);
    lua_pushlstring(L, field, flen);
    if (lua_rawget(L, -2) != LUA_TNIL)
        P->entries--;
    lua_pop(L, 1);
    lua_pushlstring(L, field, flen);
    lua_pushnil(L);
    lua_rawset(L, -3);
    lua_pushnil(L);
    if (!lua_next(L, -2)) { /* empty */
        lua_pushlstring(L, topic, tlen);
        lua_pushnil(L);
        lua_rawset(L, -4);
    } else {
        lua_pop(L, 2);
    }
    if (s->srv->redis) {
        const char *args[1] = {field};
        size_t lens[1] = {flen};
        eval(P, DEL_LUA, topic, tlen, 1, args, lens);
    }
}

void script__presence_leave(lua_State *L, struct conn *c, const char *topic, size_t tlen) {
    struct presence *P = get_script(L)->presence;
    if (!P || !P->entries)
        return; /* the common case: nobody uses presence */
    int top = lua_gettop(L);
    lua_getfield(L, LUA_REGISTRYINDEX, PRES_CONN_KEY);
    if (lua_rawgeti(L, -1, (lua_Integer)c->id) == LUA_TTABLE) {
        lua_pushlstring(L, topic, tlen);
        if (lua_rawget(L, -2) != LUA_TNIL) {
            lua_pushlstring(L, topic, tlen);
            lua_pushnil(L);
            lua_rawset(L, -4);
            lua_pushnil(L);
            if (!lua_next(L, -3)) { /* its last topic */
                lua_pushnil(L);
                lua_rawseti(L, -4, (lua_Integer)c->id);
            }
            lua_getfield(L, LUA_REGISTRYINDEX, PRES_KEY);
            lua_pushlstring(L, topic, tlen);
            if (lua_rawget(L, -2) == LUA_TTABLE)
                leave_one(L, P, c, topic, tlen);
        }
    }
    lua_settop(L, top);
}

void script__presence_leave_all(struct script *s, struct conn *c) {
    struct presence *P = s->presence;
    if (!P || !P->entries)
        return;
    lua_State *L = s->L;
    int top = lua_gettop(L);
    lua_getfield(L, LUA_REGISTRYINDEX, PRES_CONN_KEY);
    if (lua_rawgeti(L, -1, (lua_Integer)c->id) == LUA_TTABLE) {
        int topics = lua_gettop(L);
        lua_pushnil(L);
        lua_rawseti(L, top + 1, (lua_Integer)c->id);
        lua_getfield(L, LUA_REGISTRYINDEX, PRES_KEY);
        int pres = lua_gettop(L);
        lua_pushnil(L);
        while (lua_next(L, topics)) {
            lua_pop(L, 1);
            size_t tlen;
            const char *topic = lua_tolstring(L, -1, &tlen);
            lua_pushvalue(L, pres);
            lua_pushvalue(L, -2);
            if (lua_rawget(L, -2) == LUA_TTABLE)
                leave_one(L, P, c, topic, tlen);
            lua_settop(L, pres + 1); /* the iteration key */
        }
    }
    lua_settop(L, top);
}

/* ---- switchboard.presence(topic) ---------------------------------------------------------- */

/* Decode the JSON strings of list (an array at idx of s->L) into a new array pushed on
 * s->L; a string that does not decode is left out. */
static void push_decoded(lua_State *L, int idx, int n) {
    lua_createtable(L, n, 0);
    int out = lua_gettop(L), k = 0;
    for (int i = 1; i <= n; i++) {
        lua_getfield(L, LUA_REGISTRYINDEX, "switchboard.json_decode");
        lua_rawgeti(L, idx, i);
        if (lua_pcall(L, 1, 1, 0) == LUA_OK)
            lua_rawseti(L, out, ++k);
        else
            lua_pop(L, 1);
    }
}

/* A sb.presence that waits on Redis: a userdata on the waiting thread's stack. */
struct pres_get {
    struct script *s;
    struct script_wait *w;
    struct redis_cmd *cmd;
};

static void get_cancel(void *ud) {
    struct pres_get *g = ud;
    redis_command_cancel(g->cmd);
}

static void on_get(void *ud, struct redisReply *reply, const char *err) {
    struct pres_get *g = ud;
    lua_State *co = script__wait_thread(g->w);
    lua_State *L = g->s->L;
    lua_checkstack(co, 4);
    if (!reply || reply->type != REDIS_REPLY_ARRAY) {
        lua_pushnil(co);
        if (reply && reply->type == REDIS_REPLY_ERROR)
            lua_pushfstring(co, "redis: %s", reply->str);
        else
            lua_pushfstring(co, "redis: %s", err ? err : "unexpected reply");
        script__wait_done(g->w, 2);
        return;
    }
    int top = lua_gettop(L);
    int n = 0;
    lua_createtable(L, (int)reply->elements, 0);
    for (size_t i = 0; i < reply->elements; i++) {
        const redisReply *e = reply->element[i];
        if (e->type == REDIS_REPLY_STRING) {
            lua_pushlstring(L, e->str, e->len);
            lua_rawseti(L, top + 1, ++n);
        }
    }
    push_decoded(L, top + 1, n);
    lua_xmove(L, co, 1);
    lua_settop(L, top);
    script__wait_done(g->w, 1);
}

static int sb_presence(lua_State *L) {
    struct script *s = get_script(L);
    size_t tlen;
    const char *topic = script__arg_topic(L, 1, 1, "presence", &tlen);
    struct sb_redis *r = s->srv->redis;
    if (!r) {
        lua_settop(L, 1);
        lua_newtable(L); /* 2: the JSON strings */
        int n = 0;
        lua_getfield(L, LUA_REGISTRYINDEX, PRES_KEY);
        lua_pushvalue(L, 1);
        if (lua_rawget(L, -2) == LUA_TTABLE) {
            lua_pushnil(L);
            while (lua_next(L, -2))
                lua_rawseti(L, 2, ++n);
        }
        push_decoded(L, 2, n);
        return 1;
    }
    struct pres_get *g = lua_newuserdatauv(L, sizeof *g, 0);
    g->s = s;
    g->cmd = NULL;
    if (!redis_is_up(r)) {
        lua_pushnil(L);
        lua_pushliteral(L, "redis: not connected");
        return 2;
    }
    char *keys = lua_newuserdatauv(L, 2 * (tlen + 32), 0);
    const char *argv[5] = {"EVAL", GET_LUA, "2"};
    size_t argvlen[5] = {4, sizeof GET_LUA - 1, 1};
    keys_for(topic, tlen, keys, argv + 3, argvlen + 3);
    g->w = script__wait_begin(L, get_cancel, g); /* raises outside a handler */
    g->cmd = redis_command(r, 5, argv, argvlen, on_get, g);
    if (!g->cmd) {
        lua_State *co = script__wait_thread(g->w);
        lua_pushnil(co);
        lua_pushliteral(co, "redis: not connected or too much unanswered (--redis-out-max)");
        script__wait_done(g->w, 2);
    }
    return script__wait_yield(L, g->w);
}

/* ---- the state ------------------------------------------------------------------------ */

size_t script__presence_entries(struct script *s) {
    return s->presence ? s->presence->entries : 0;
}

void script__presence_open(lua_State *L) {
    lua_pushcfunction(L, sb_presence);
    lua_setfield(L, -2, "presence");
}

int script__presence_init(struct script *s) {
    struct presence *P = calloc(1, sizeof *P);
    if (!P)
        return -1;
    P->s = s;
    s->presence = P;
    lua_newtable(s->L);
    lua_setfield(s->L, LUA_REGISTRYINDEX, PRES_KEY);
    lua_newtable(s->L);
    lua_setfield(s->L, LUA_REGISTRYINDEX, PRES_CONN_KEY);
    return 0;
}

void script__presence_free(struct script *s) {
    struct presence *P = s->presence;
    if (!P)
        return;
    if (P->refresh)
        event_free(P->refresh);
    if (P->hooked && P->hooked == s->srv->redis)
        redis_off_up(P->hooked, on_up, P);
    free(P);
    s->presence = NULL;
}
