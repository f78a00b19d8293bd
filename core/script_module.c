/* script_module.c — the `switchboard` module scripts require, and its
 * timers (after/every), each owned by the route or lib/ module that made it. */
#define _GNU_SOURCE
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>

#include "log.h"
#include "outbound.h"
#include "pubsub.h"
#include "script_int.h"
#include "loop.h"

/* ---- timers ------------------------------------------------------------------------ */

static void timer_free(struct sb_timer *t) {
    struct script *s = t->s;
    lua_State *L = s->L;
    if (t->prev)
        t->prev->next = t->next;
    else
        s->timers = t->next;
    if (t->next)
        t->next->prev = t->prev;
    event_free(t->ev);
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->ud_ref);
    struct timer_ud *u = lua_touserdata(L, -1);
    if (u)
        u->t = NULL;
    lua_pop(L, 1);
    luaL_unref(L, LUA_REGISTRYINDEX, t->ud_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, t->fn_ref);
    free(t->mod);
    free(t);
}

void script__cancel_route_timers(struct script *s, struct route *r, uint32_t version, int same) {
    for (struct sb_timer *t = s->timers; t;) {
        struct sb_timer *n = t->next;
        if (!r || (t->owner == r && (t->version == version) == same))
            timer_free(t);
        t = n;
    }
}

/* Cancel module mod's timers: with same=1 those of generation gen, with
 * same=0 all others. */
void script__cancel_module_timers(struct script *s, const char *mod, uint32_t gen, int same) {
    for (struct sb_timer *t = s->timers; t;) {
        struct sb_timer *n = t->next;
        if (t->mod && strcmp(t->mod, mod) == 0 && (t->version == gen) == same)
            timer_free(t);
        t = n;
    }
}

static void on_timer(evutil_socket_t fd, short what, void *arg) {
    struct sb_timer *t = arg;
    struct script *s = t->s;
    lua_State *L = s->L;
    (void)fd;
    (void)what;
    s->srv->now = server_clock();
    struct route *prev = s->cur_route;
    const char *prev_mod = s->cur_mod;
    uint32_t prev_gen = s->cur_mod_gen;
    s->cur_route = t->owner;
    s->cur_mod = NULL;
    if (t->mod) { /* the name stays on the stack under the call: t may go first */
        lua_pushstring(L, t->mod);
        s->cur_mod = lua_tostring(L, -1);
        s->cur_mod_gen = t->version;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->fn_ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->ud_ref);
    int has_mod = t->mod != NULL;
    /* it may wait: then it is a task of its own, outliving a one-shot timer */
    struct script_call call = {
        .route = t->owner, .handler = "timer", .mod = s->cur_mod, .mod_gen = s->cur_mod_gen};
    /* a one-shot timer is gone before its function runs (so it cannot be
     * cancelled from inside); the function and handle stay alive on the stack */
    if (!t->repeat)
        timer_free(t);
    script__run(s, &call, 1);
    if (has_mod)
        lua_pop(L, 1);
    s->cur_route = prev;
    s->cur_mod = prev_mod;
    s->cur_mod_gen = prev_gen;
}

static int new_timer(lua_State *L, int repeat) {
    struct script *s = get_script(L);
    const char *fn = repeat ? "every" : "after";
    if (lua_type(L, 1) != LUA_TNUMBER)
        return script__type_error(L, 1, 1, fn, "number");
    if (lua_type(L, 2) != LUA_TFUNCTION)
        return script__type_error(L, 2, 2, fn, "function");
    lua_Number secs = lua_tonumber(L, 1);
    if (!(secs >= 0) || secs > 1e9)
        return script__arg_error(L, 1, fn, "seconds must be between 0 and 1e9");
    if (repeat && secs < 0.001)
        return script__arg_error(L, 1, fn, "an 'every' interval must be at least 0.001 seconds");
    struct sb_timer *t = calloc(1, sizeof *t);
    if (!t)
        return luaL_error(L, "out of memory");
    t->s = s;
    const char *mod = s->loading_mod ? s->loading_mod : s->cur_mod;
    if (mod) {
        t->mod = strdup(mod);
        t->version = s->loading_mod ? s->loading_gen : s->cur_mod_gen;
        if (!t->mod) {
            free(t);
            return luaL_error(L, "out of memory");
        }
    } else {
        t->owner = s->cur_route;
        t->version = s->loading_version ? s->loading_version : (t->owner ? t->owner->version : 0);
    }
    t->repeat = repeat;
    t->ev = event_new(s->srv->base, -1, repeat ? EV_PERSIST : 0, on_timer, t);
    lua_pushvalue(L, 2);
    t->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    struct timer_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->t = t;
    luaL_setmetatable(L, TIMER_MT);
    lua_pushvalue(L, -1);
    t->ud_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    t->next = s->timers;
    if (s->timers)
        s->timers->prev = t;
    s->timers = t;
    struct timeval tv = {(time_t)secs, (suseconds_t)((secs - (double)(time_t)secs) * 1e6)};
    /* from now, not from the loop's cached time of this iteration (which a
     * long handler leaves behind): a timer never fires early */
    event_base_update_cache_time(s->srv->base);
    event_add(t->ev, &tv);
    return 1;
}

static int sb_after(lua_State *L) {
    return new_timer(L, 0);
}

static int sb_every(lua_State *L) {
    return new_timer(L, 1);
}

static int timer_cancel(lua_State *L) {
    struct timer_ud *u = luaL_checkudata(L, 1, TIMER_MT);
    int was = u->t != NULL;
    if (u->t)
        timer_free(u->t);
    lua_pushboolean(L, was);
    return 1;
}

/* ---- the switchboard module ------------------------------------------------------- */

static int sb_publish(lua_State *L) {
    return script__publish(L, 1, get_script(L)->srv, NULL, "publish");
}

static int sb_subscribers(lua_State *L) {
    size_t len;
    const char *t = script__arg_topic(L, 1, 1, "subscribers", &len);
    lua_pushinteger(L, (lua_Integer)pubsub_count(get_script(L)->srv->pubsub, t, len));
    return 1;
}

static void topic_cb(void *ud, const char *t, size_t len) {
    lua_State *L = ud;
    if (!pubsub_count(get_script(L)->srv->pubsub, t, len))
        return; /* only switchboard.subscribe's */
    lua_pushlstring(L, t, len);
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
}

static int sb_topics(lua_State *L) {
    lua_settop(L, 0);
    lua_newtable(L);
    pubsub_each_topic(get_script(L)->srv->pubsub, topic_cb, L);
    /* sorted, so a spec (and switchboard.testing) sees a stable order */
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    if (lua_getfield(L, -1, "table") == LUA_TTABLE &&
        lua_getfield(L, -1, "sort") == LUA_TFUNCTION) {
        lua_pushvalue(L, -4);
        lua_call(L, 1, 0);
    }
    lua_settop(L, 1);
    return 1;
}

static int sb_now(lua_State *L) {
    lua_pushnumber(L, server_clock());
    return 1;
}

static int script_name(lua_State *L, char *out, size_t cap) {
    struct script *s = get_script(L);
    lua_Debug ar;
    if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "Sl", &ar) && ar.currentline > 0) {
        const char *src = ar.short_src;
        size_t al = strlen(s->app_dir);
        if (strncmp(src, s->app_dir, al) == 0 && src[al] == '/')
            src += al + 1;
        snprintf(out, cap, "%s:%d", src, ar.currentline);
        return 1;
    }
    snprintf(out, cap, "%s", s->cur_route ? s->cur_route->path : "lua");
    return 0;
}

static int do_log(lua_State *L, enum log_level lvl) {
    int n = lua_gettop(L);
    if (n == 0)
        return script__type_error(L, 1, 1,
                                  lvl == LOG_INFO   ? "info"
                                  : lvl == LOG_WARN ? "warn"
                                                    : "error",
                                  "string");
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 1; i <= n; i++) {
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
        if (i < n)
            luaL_addchar(&b, ' ');
    }
    luaL_pushresult(&b);
    char where[256], rb[64];
    script_name(L, where, sizeof where);
    struct script *s = get_script(L);
    struct log_fields lf = {0};
    script__log_fields(s, &lf, rb, sizeof rb);
    lua_Debug ar; /* the line that called log.*, not an error's */
    if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "Sl", &ar) && ar.currentline > 0) {
        lf.script = ar.source[0] == '@' ? ar.source + 1 : ar.short_src;
        lf.line = ar.currentline;
    }
    log_with(lvl, &lf, "[%s] %s", where, lua_tostring(L, -1));
    return 0;
}

static int sb_log_info(lua_State *L) {
    return do_log(L, LOG_INFO);
}
static int sb_log_warn(lua_State *L) {
    return do_log(L, LOG_WARN);
}
static int sb_log_error(lua_State *L) {
    return do_log(L, LOG_ERROR);
}

/* t[key] = { ["number"] = count } for the non-zero counts; index i is number
 * base + i. String keys: the table is a map (and JSON-encodes as an object). */
static void push_counts(lua_State *L, const char *key, const uint64_t *v, unsigned n,
                        unsigned base) {
    lua_newtable(L);
    for (unsigned i = 0; i < n; i++) {
        if (v[i]) {
            lua_pushinteger(L, (lua_Integer)v[i]);
            char k[16];
            snprintf(k, sizeof k, "%u", base + i);
            lua_setfield(L, -2, k);
        }
    }
    lua_setfield(L, -2, key);
}

/* The labelled counters of the metrics, for switchboard.stats(). */
static void push_stats_detail(lua_State *L, struct script *s) {
    const struct sb_stats *st = &s->srv->stats;
    lua_pushinteger(L, (lua_Integer)stats_resident_bytes());
    lua_setfield(L, -2, "resident_memory");
    lua_pushinteger(L, (lua_Integer)st->ws_closed_clean);
    lua_setfield(L, -2, "ws_closed_clean");
    push_counts(L, "handshakes", st->handshake_status, 600, 0);
    /* close codes 1000..1015; everything else under "other" */
    push_counts(L, "close_sent", st->close_sent, SB_CLOSE_OTHER, 1000);
    lua_getfield(L, -1, "close_sent");
    lua_pushinteger(L, (lua_Integer)st->close_sent[SB_CLOSE_OTHER]);
    lua_setfield(L, -2, "other");
    lua_pop(L, 1);
    push_counts(L, "close_received", st->close_rcvd, SB_CLOSE_OTHER, 1000);
    lua_getfield(L, -1, "close_received");
    lua_pushinteger(L, (lua_Integer)st->close_rcvd[SB_CLOSE_OTHER]);
    lua_setfield(L, -2, "other");
    lua_pop(L, 1);
    lua_newtable(L);
    for (struct route *r = s->routes; r; r = r->next) {
        if (!r->version)
            continue;
        lua_createtable(L, 0, 2);
        lua_pushinteger(L, (lua_Integer)r->ws_open);
        lua_setfield(L, -2, "open");
        lua_pushinteger(L, (lua_Integer)r->ws_total);
        lua_setfield(L, -2, "total");
        lua_setfield(L, -2, r->path);
    }
    lua_setfield(L, -2, "routes");
}

static int sb_stats(lua_State *L) {
    struct script *s = get_script(L);
    const struct sb_stats *st = &s->srv->stats;
    lua_newtable(L);
#define F(name)                                                                                    \
    lua_pushinteger(L, (lua_Integer)st->name);                                                     \
    lua_setfield(L, -2, #name)
    F(accepted);
    F(open);
    F(ws_open);
    F(handshakes_ok);
    F(handshakes_refused);
    F(msgs_in);
    F(msgs_out);
    F(bytes_in);
    F(bytes_out);
    F(publishes);
    F(deliveries);
    F(dropped_deliveries);
    F(backpressure_events);
    F(slow_closed);
    F(handler_errors);
    F(budget_stops);
    F(reloads_ok);
    F(reloads_failed);
    F(timeouts);
    F(handlers_waiting);
    F(handler_waits);
    F(handler_timeouts);
#undef F
    lua_pushinteger(L, (lua_Integer)s->mem);
    lua_setfield(L, -2, "lua_memory");
    lua_pushinteger(L, (lua_Integer)outbound_open_count(s->srv->outbound));
    lua_setfield(L, -2, "outbound_open");
    /* outbound = { http = { ok = n, timeout = n, ... }, tcp = {...} }, non-zero counts */
    lua_createtable(L, 0, SB_OUT_KINDS);
    for (int k = 0; k < SB_OUT_KINDS; k++) {
        lua_newtable(L);
        for (int o = 0; o < SB_OUT_OUTCOMES; o++) {
            if (st->out_calls[k][o]) {
                lua_pushinteger(L, (lua_Integer)st->out_calls[k][o]);
                lua_setfield(L, -2, stats_out_outcomes[o]);
            }
        }
        lua_setfield(L, -2, stats_out_kinds[k]);
    }
    lua_setfield(L, -2, "outbound");
    push_stats_detail(L, s);
    return 1;
}

static int luaopen_switchboard(lua_State *L) {
    struct script *s = get_script(L);
    static const luaL_Reg fns[] = {
        {"publish", sb_publish}, {"subscribers", sb_subscribers},
        {"topics", sb_topics},   {"after", sb_after},
        {"every", sb_every},     {"now", sb_now},
        {"stats", sb_stats},     {NULL, NULL},
    };
    luaL_newlib(L, fns);
    static const luaL_Reg logf[] = {
        {"info", sb_log_info}, {"warn", sb_log_warn}, {"error", sb_log_error}, {NULL, NULL}};
    luaL_newlib(L, logf);
    lua_setfield(L, -2, "log");
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->shared_ref);
    lua_setfield(L, -2, "shared");
    if (script__json_open(L)) {
        lua_setfield(L, -2, "json");
    } else {
        log_warn("lua-cjson not found: switchboard.json is unavailable (%s)", lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    script__crypto_open(L);
    script__http_open(L);
    script__tcp_open(L);
    script__task_open(L);
    script__redis_open(L);
    script__history_open(L);
    script__sub_open(L);
    script__presence_open(L);
    lua_pushliteral(L, SB_VERSION);
    lua_setfield(L, -2, "version");
    /* this process's name among many (workers, --redis hosts): ws.id is unique
     * only within one process, so topics meant for one connection use both */
    lua_pushstring(L, s->node);
    lua_setfield(L, -2, "node");
    return 1;
}

void script__module_init(struct script *s) {
    lua_State *L = s->L;
    lua_newtable(L);
    s->shared_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_switchboard);
    lua_setfield(L, -2, "switchboard");
    lua_pop(L, 1);
    luaL_newmetatable(L, TIMER_MT);
    lua_newtable(L);
    lua_pushcfunction(L, timer_cancel);
    lua_setfield(L, -2, "cancel");
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}
