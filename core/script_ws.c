/* script_ws.c — the `ws` userdata: one per open WebSocket a script has
 * seen, created on first use; its request fields are parsed from the kept
 * request head on first read. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "conn.h"
#include "history.h"
#include "http.h"
#include "pubsub.h"
#include "script_int.h"
#include "loop.h"

/* ---- the ws userdata ------------------------------------------------------------- */

void script__push_ws(struct script *s, struct conn *c) {
    lua_State *L = s->L;
    if (c->ws_ref != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, c->ws_ref);
        return;
    }
    struct ws_ud *u = lua_newuserdatauv(L, sizeof *u, 2);
    u->c = c;
    u->id = c->id;
    luaL_setmetatable(L, WS_MT);
    lua_pushvalue(L, -1);
    c->ws_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

static struct ws_ud *check_ws(lua_State *L) {
    /* per call on the hot path: compare metatables by pointer rather than
     * looking the name up in the registry */
    struct ws_ud *u = lua_touserdata(L, 1);
    if (u && lua_getmetatable(L, 1)) {
        int ok = lua_topointer(L, -1) == get_script(L)->ws_mt;
        lua_pop(L, 1);
        if (ok)
            return u;
    }
    return luaL_checkudata(L, 1, WS_MT);
}

/* The conn behind a ws, or a Lua error naming the function. */
static struct conn *ws_conn(lua_State *L, const char *fn) {
    if (lua_type(L, 1) != LUA_TUSERDATA)
        luaL_error(L, "calling '%s' on bad self (ws expected, got %s)", fn, luaL_typename(L, 1));
    struct ws_ud *u = check_ws(L);
    if (!u->c) {
        luaL_where(L, 1);
        lua_pushfstring(L, "bad argument #1 to '%s' (ws %d is closed)", fn, (int)u->id);
        lua_concat(L, 2);
        lua_error(L);
    }
    return u->c;
}

/* Open for sending: not closing, not closed (a closing ws's send returns false). */
static int ws_is_open(const struct conn *c) {
    return c->state == CONN_WS && !c->close_sent;
}

static int ws_send(lua_State *L) {
    struct conn *c = ws_conn(L, "send");
    size_t len;
    const char *msg = script__arg_string(L, 2, 1, "send", &len);
    int binary = lua_toboolean(L, 3);
    if (!binary && !script__text_ok(get_script(L), msg, len))
        return script__arg_error(L, 1, "send", "text is not valid UTF-8 (send it as binary)");
    if ((uint64_t)len > c->srv->cfg.max_message)
        return script__arg_error(L, 1, "send", "message longer than --max-message");
    int r = conn_send(c, binary ? WS_OP_BINARY : WS_OP_TEXT, msg, len);
    lua_pushboolean(L, r == 1);
    return 1;
}

static int ws_close(lua_State *L) {
    struct conn *c = ws_conn(L, "close");
    lua_Integer code = 1000;
    if (!lua_isnoneornil(L, 2)) {
        if (lua_type(L, 2) != LUA_TNUMBER)
            return script__type_error(L, 2, 1, "close", "number");
        int isint = 0;
        code = lua_tointegerx(L, 2, &isint);
        if (!isint)
            code = 0;
    }
    size_t rlen = 0;
    const char *reason = script__arg_optstring(L, 3, 2, "close", &rlen);
    if (!(code == 1000 || (code >= 3000 && code <= 4999)))
        return script__arg_error(L, 1, "close", "close code must be 1000 or 3000-4999");
    if (rlen > 123)
        return script__arg_error(L, 2, "close", "reason longer than 123 bytes");
    if (!script__is_utf8(reason, rlen))
        return script__arg_error(L, 2, "close", "reason is not valid UTF-8");
    conn_close(c, (unsigned)code, reason, rlen);
    return 0;
}

static int ws_ping(lua_State *L) {
    struct conn *c = ws_conn(L, "ping");
    size_t len = 0;
    const char *data = script__arg_optstring(L, 2, 1, "ping", &len);
    if (len > 125)
        return script__arg_error(L, 1, "ping", "ping payload longer than 125 bytes");
    lua_pushboolean(L, ws_is_open(c) && conn_send(c, WS_OP_PING, data, len) >= 0);
    return 1;
}

/* ws:subscribe(topic [, opts]): opts.presence (script_presence.c), opts.since and
 * opts.epoch (script_history.c). */
static int ws_subscribe(lua_State *L) {
    struct conn *c = ws_conn(L, "subscribe");
    size_t len;
    const char *t = script__arg_topic(L, 2, 1, "subscribe", &len);
    int presence = 0;
    if (!lua_isnoneornil(L, 3)) {
        if (!lua_istable(L, 3))
            return script__type_error(L, 3, 2, "subscribe", "table");
        presence = script__presence_encode(L, 3, 2, "subscribe");
    }
    if (!ws_is_open(c)) { /* it would leave the topic at once */
        lua_pushboolean(L, 0);
        return 1;
    }
    /* before the subscribe, which may wait (a recovery with --redis) */
    if (presence)
        script__presence_join(L, c, t, len, -1);
    if (lua_istable(L, 3)) {
        lua_getfield(L, 3, "since");
        lua_getfield(L, 3, "epoch");
        int recover = !lua_isnil(L, -1) || !lua_isnil(L, -2);
        lua_pop(L, 2);
        if (recover)
            return script__history_subscribe(L, c, t, len, 3);
    }
    int r = pubsub_subscribe(c->srv->pubsub, c, t, len);
    if (r < 0)
        return luaL_error(L, "subscribe: out of memory");
    lua_pushboolean(L, r == 1);
    return 1;
}

static int ws_unsubscribe(lua_State *L) {
    struct conn *c = ws_conn(L, "unsubscribe");
    size_t len;
    const char *t = script__arg_topic(L, 2, 1, "unsubscribe", &len);
    int r = pubsub_unsubscribe(c->srv->pubsub, c, t, len);
    if (r == 1)
        script__presence_leave(L, c, t, len);
    lua_pushboolean(L, r == 1);
    return 1;
}

int script__publish(lua_State *L, int first, struct sb_server *srv, struct conn *except,
                    const char *fn) {
    size_t tlen, len;
    const char *t = script__arg_topic(L, first, 1, fn, &tlen);
    const char *msg = script__arg_string(L, first + 1, 2, fn, &len);
    int binary = lua_toboolean(L, first + 2);
    if (!binary && !script__text_ok(get_script(L), msg, len))
        return script__arg_error(L, 2, fn, "text is not valid UTF-8 (send it as binary)");
    if ((uint64_t)len > srv->cfg.max_message)
        return script__arg_error(L, 2, fn, "message longer than --max-message");
    srv->stats.publishes++;
    const struct history_rule *hr = history_match(srv->history, t, tlen);
    if (hr)
        return script__history_publish(L, srv, hr, t, tlen, msg, len, binary, except, fn);
    size_t n = pubsub_publish(srv->pubsub, t, tlen, msg, len, binary, except);
    lua_pushinteger(L, (lua_Integer)n);
    return 1;
}

static int ws_publish(lua_State *L) {
    struct conn *c = ws_conn(L, "publish");
    return script__publish(L, 2, c->srv, c, "publish");
}

static int ws_buffered(lua_State *L) {
    struct conn *c = ws_conn(L, "buffered");
    lua_pushinteger(L, (lua_Integer)conn_buffered(c));
    return 1;
}

static int parse_kept_head(struct conn *c, struct http_request *req, struct http_header *h,
                           size_t cap) {
    memset(req, 0, sizeof *req);
    req->headers = h;
    req->headers_cap = cap;
    struct http_limits lim = {c->head_len + 1, cap - 1};
    int status;
    return c->head && http_parse_request(c->head, c->head_len, 0, &lim, req, &status) > 0;
}

/* The fields derived from the kept request head, built on first use and
 * cached in the userdata's second user value. */
static void ws_fill_cache(lua_State *L, struct conn *c) {
    lua_newtable(L);
    struct http_header h[HTTP_MAX_HEADERS_LIMIT + 1];
    struct http_request req;
    if (!parse_kept_head(c, &req, h, sizeof h / sizeof h[0]))
        return;
    script__push_path(L, &req);
    lua_setfield(L, -2, "path");
    script__push_query(L, req.query, req.query_len);
    lua_setfield(L, -2, "query");
    script__push_headers(L, &req);
    /* the usual handshake fields were kept as bits (conn.c keep_head) */
    if (c->head_std & CONN_STD_UPGRADE) {
        lua_pushliteral(L, "websocket");
        lua_setfield(L, -2, "upgrade");
    }
    if (c->head_std & CONN_STD_CONNECTION) {
        lua_pushliteral(L, "Upgrade");
        lua_setfield(L, -2, "connection");
    }
    if (c->head_std & CONN_STD_VERSION) {
        lua_pushliteral(L, "13");
        lua_setfield(L, -2, "sec-websocket-version");
    }
    lua_setfield(L, -2, "headers");
    char rb[64];
    lua_pushstring(L, conn_remote(c, rb, sizeof rb));
    lua_setfield(L, -2, "remote");
    if (c->protocol) {
        lua_pushstring(L, c->protocol);
        lua_setfield(L, -2, "protocol");
    }
    char ext[DEFLATE_RESPONSE_MAX];
    if (conn_extensions(c, ext)) {
        lua_pushstring(L, ext);
        lua_setfield(L, -2, "extensions");
    }
}

static int ws_index(lua_State *L) {
    /* only the VM calls this, on a ws: the metatable is hidden (__metatable) */
    struct ws_ud *u = lua_touserdata(L, 1);
    lua_pushvalue(L, 2);
    if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) /* a method */
        return 1;
    lua_pop(L, 1);
    const char *k = luaL_checkstring(L, 2);
    if (strcmp(k, "id") == 0) {
        lua_pushinteger(L, (lua_Integer)u->id);
        return 1;
    }
    if (strcmp(k, "data") == 0) {
        if (lua_getiuservalue(L, 1, 1) != LUA_TTABLE) {
            lua_pop(L, 1);
            lua_newtable(L);
            lua_pushvalue(L, -1);
            lua_setiuservalue(L, 1, 1);
        }
        return 1;
    }
    if (lua_getiuservalue(L, 1, 2) != LUA_TTABLE) {
        lua_pop(L, 1);
        if (!u->c)
            return 0;
        ws_fill_cache(L, u->c);
        lua_pushvalue(L, -1);
        lua_setiuservalue(L, 1, 2);
    }
    lua_getfield(L, -1, k);
    return 1;
}

static int ws_newindex(lua_State *L) {
    const char *k = luaL_checkstring(L, 2);
    if (strcmp(k, "data") == 0) {
        luaL_checktype(L, 3, LUA_TTABLE);
        lua_settop(L, 3);
        lua_setiuservalue(L, 1, 1);
        return 0;
    }
    return luaL_error(L, "ws.%s is read-only (keep your state in ws.data)", k);
}

static int ws_tostring(lua_State *L) {
    struct ws_ud *u = check_ws(L);
    lua_pushfstring(L, "ws %d%s", (int)u->id, u->c ? "" : " (closed)");
    return 1;
}

static int ws_eq(lua_State *L) {
    struct ws_ud *a = luaL_testudata(L, 1, WS_MT), *b = luaL_testudata(L, 2, WS_MT);
    lua_pushboolean(L, a && b && a->id == b->id);
    return 1;
}

void script__ws_release(struct script *s, struct conn *c) {
    lua_State *L = s->L;
    if (c->ws_ref == LUA_NOREF)
        return;
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->ws_ref);
    struct ws_ud *u = lua_touserdata(L, -1);
    if (u)
        u->c = NULL;
    lua_pop(L, 1);
    luaL_unref(L, LUA_REGISTRYINDEX, c->ws_ref);
    c->ws_ref = LUA_NOREF;
}

void script__ws_init(struct script *s) {
    lua_State *L = s->L;
    static const luaL_Reg methods[] = {
        {"send", ws_send},
        {"close", ws_close},
        {"ping", ws_ping},
        {"subscribe", ws_subscribe},
        {"unsubscribe", ws_unsubscribe},
        {"publish", ws_publish},
        {"buffered", ws_buffered},
        {NULL, NULL},
    };
    luaL_newmetatable(L, WS_MT);
    s->ws_mt = lua_topointer(L, -1);
    luaL_newlib(L, methods);
    lua_pushcclosure(L, ws_index, 1);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, ws_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushcfunction(L, ws_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushcfunction(L, ws_eq);
    lua_setfield(L, -2, "__eq");
    lua_pushliteral(L, "ws");
    lua_setfield(L, -2, "__name");
    lua_pushliteral(L, "ws");
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
}
