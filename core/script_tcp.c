/* script_tcp.c — switchboard.tcp.connect and its socket (send, receive,
 * settimeout, close) over an outbound connection (outbound.c): each call that
 * must wait suspends its handler (script__wait_*), with a timeout. */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>

#include <event2/buffer.h>
#include <lauxlib.h>
#include <lua.h>

#include "loop.h"
#include "outbound.h"
#include "script_int.h"

#define TCP_MT "switchboard.tcp"

enum tcp_op { TCP_IDLE, TCP_CONNECT, TCP_SEND, TCP_RECEIVE };

/* The socket userdata. While a handler waits on it, the registry holds it
 * (ref), so it cannot be collected under the wait. */
struct tcp_ud {
    struct outbound *o; /* owned; NULL once closed (or the connect failed) */
    struct script *s;
    struct script_wait *w; /* the waiting handler, or NULL */
    int ref;
    enum tcp_op op;
    double timeout;  /* seconds, for each send and receive */
    double deadline; /* of the receive in progress (it may wait several times) */
    enum outbound_take mode;
    size_t n, sent;
    double t0; /* of the connect, for the duration metric */
};

/* The operation ends: push nres results (already on T) to the waiting handler. */
static void finish(struct tcp_ud *u, lua_State *T, int nres) {
    struct script_wait *w = u->w;
    u->w = NULL;
    u->op = TCP_IDLE;
    luaL_unref(T, LUA_REGISTRYINDEX, u->ref); /* u may be collected once it returns */
    u->ref = LUA_NOREF;
    script__wait_done(w, nres);
}

/* Abandoned (the handler was stopped): the socket is closed with it, so that
 * no operation is left half done under a later user. */
static void tcp_cancel(void *ud) {
    struct tcp_ud *u = ud;
    if (u->op == TCP_CONNECT)
        stats_observe_outbound(&u->s->srv->stats, SB_OUT_TCP, "cancelled", server_clock() - u->t0);
    outbound_close(u->o);
    u->o = NULL;
    u->w = NULL;
    u->op = TCP_IDLE;
    luaL_unref(u->s->L, LUA_REGISTRYINDEX, u->ref);
    u->ref = LUA_NOREF;
}

/* Begin waiting on u (the userdata at index 1, or at idx) for op. */
static void begin(lua_State *L, struct tcp_ud *u, int idx, enum tcp_op op) {
    /* raises outside a handler, before anything has started */
    u->w = script__wait_begin(L, tcp_cancel, u);
    u->op = op;
    lua_pushvalue(L, idx);
    u->ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

/* ---- connect -------------------------------------------------------------------- */

static void on_connected(void *ud, const char *err) {
    struct tcp_ud *u = ud;
    lua_State *T = script__wait_thread(u->w);
    lua_checkstack(T, 3);
    stats_observe_outbound(&u->s->srv->stats, SB_OUT_TCP, err, server_clock() - u->t0);
    if (err) {
        lua_pushnil(T);
        lua_pushstring(T, err);
        outbound_close(u->o); /* err lived in it: pushed first */
        u->o = NULL;
        finish(u, T, 2);
    } else {
        lua_rawgeti(T, LUA_REGISTRYINDEX, u->ref);
        finish(u, T, 1);
    }
}

/* connect(host, port [, opts]) -> sock | nil, err */
static int tcp_connect(lua_State *L) {
    static const char fn[] = "connect";
    struct script *s = get_script(L);
    size_t hl;
    const char *host = script__arg_string(L, 1, 1, fn, &hl);
    if (hl == 0 || hl > 255 || strlen(host) != hl)
        return script__arg_error(L, 1, fn, "host must be a name or an address");
    if (lua_type(L, 2) != LUA_TNUMBER)
        return script__type_error(L, 2, 2, fn, "integer");
    int isint;
    lua_Integer port = lua_tointegerx(L, 2, &isint);
    if (!isint || port < 1 || port > 65535)
        return script__arg_error(L, 2, fn, "port must be 1..65535");
    int t = 0;
    if (!lua_isnoneornil(L, 3)) {
        if (lua_type(L, 3) != LUA_TTABLE)
            return script__type_error(L, 3, 3, fn, "table");
        t = 3;
    }
    struct outbound_opts oo = {.host = host, .port = (unsigned)port};
    oo.tls = script__opt_bool(L, t, "tls", 0, 3, fn);
    oo.timeout = script__opt_seconds(L, t, "timeout", 10, 3, fn);
    oo.server_name = script__opt_string(L, t, "server_name", NULL, NULL, 3, fn);
    oo.verify = script__opt_bool(L, t, "verify", 1, 3, fn);
    oo.ca = script__opt_string(L, t, "ca", NULL, NULL, 3, fn);
    struct outbound_ctx *x = script__outbound(s);
    if (!x)
        return luaL_error(L, "out of memory");
    struct tcp_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
    int ui = lua_gettop(L);
    *u = (struct tcp_ud){.s = s, .ref = LUA_NOREF, .timeout = oo.timeout, .t0 = server_clock()};
    luaL_setmetatable(L, TCP_MT);
    begin(L, u, ui, TCP_CONNECT); /* raises outside a handler, before anything has started */
    const char *err;
    u->o = outbound_connect(x, &oo, on_connected, u, &err);
    if (!u->o) { /* the handler still yields; it resumes with nil, err from the loop */
        lua_State *T = script__wait_thread(u->w);
        stats_observe_outbound(&s->srv->stats, SB_OUT_TCP, err, 0);
        lua_pushnil(T);
        lua_pushstring(T, err);
        finish(u, T, 2);
    }
    return script__wait_yield(L, u->w);
}

/* ---- the socket ----------------------------------------------------------------- */

static struct tcp_ud *check_sock(lua_State *L, const char *fn) {
    struct tcp_ud *u = luaL_testudata(L, 1, TCP_MT);
    if (!u)
        luaL_error(L, "calling '%s' on bad self (switchboard.tcp socket expected, got %s)", fn,
                   luaL_typename(L, 1));
    return u;
}

/* nil, err when u cannot start an operation now; 0 when it can. */
static int unusable(lua_State *L, struct tcp_ud *u) {
    if (u->o && !u->w)
        return 0;
    lua_pushnil(L);
    lua_pushstring(L, u->w ? "socket busy" : "closed");
    return 2;
}

static void on_sent(void *ud, const char *err) {
    struct tcp_ud *u = ud;
    lua_State *T = script__wait_thread(u->w);
    lua_checkstack(T, 3);
    if (err) {
        lua_pushnil(T);
        lua_pushstring(T, err);
    } else {
        lua_pushinteger(T, (lua_Integer)u->sent);
    }
    finish(u, T, err ? 2 : 1);
}

/* sock:send(data) -> bytes | nil, err */
static int sock_send(lua_State *L) {
    struct tcp_ud *u = check_sock(L, "send");
    size_t len;
    const char *data = script__arg_string(L, 2, 1, "send", &len);
    int r = unusable(L, u);
    if (r)
        return r;
    begin(L, u, 1, TCP_SEND);
    u->sent = len;
    outbound_send(u->o, data, len, u->timeout, on_sent, u); /* copies data */
    return script__wait_yield(L, u->w);
}

/* Push what receive returns now: 1 (data), 3 (nil, err, partial), or 0 (must wait). */
static int take(lua_State *T, struct tcp_ud *u) {
    const char *data, *err;
    size_t len;
    int r = outbound_take(u->o, u->mode, u->n, u->s->srv->cfg.max_response_body, &data, &len, &err);
    if (r == 0)
        return 0;
    if (r > 0) {
        lua_pushlstring(T, data, len);
        return 1;
    }
    lua_pushnil(T);
    lua_pushstring(T, err);
    lua_pushlstring(T, data, len);
    return 3;
}

static void on_input(void *ud, const char *err) {
    struct tcp_ud *u = ud;
    lua_State *T = script__wait_thread(u->w);
    lua_checkstack(T, 4);
    if (err) { /* what came so far is the partial */
        char e[200];
        snprintf(e, sizeof e, "%s", err);
        struct evbuffer *in = outbound_input(u->o);
        const char *data = "", *ignored;
        size_t len = in ? evbuffer_get_length(in) : 0;
        if (!len || outbound_take(u->o, OUTBOUND_TAKE_N, len, len, &data, &len, &ignored) < 0)
            data = "", len = 0;
        lua_pushnil(T);
        lua_pushstring(T, e);
        lua_pushlstring(T, data, len);
        finish(u, T, 3);
        return;
    }
    int n = take(T, u);
    if (n) {
        finish(u, T, n);
        return;
    }
    double left = u->deadline - server_clock();
    outbound_wait_input(u->o, left > 0 ? left : 0, on_input, u);
}

/* sock:receive([n | "*l" | "*a"]) -> data | nil, err, partial */
static int sock_receive(lua_State *L) {
    static const char fn[] = "receive";
    struct tcp_ud *u = check_sock(L, fn);
    enum outbound_take mode = OUTBOUND_TAKE_LINE;
    size_t n = 0;
    if (lua_type(L, 2) == LUA_TNUMBER) {
        int isint;
        lua_Integer v = lua_tointegerx(L, 2, &isint);
        if (!isint || v < 0)
            return script__arg_error(L, 1, fn, "byte count must be a whole number >= 0");
        mode = OUTBOUND_TAKE_N;
        n = (size_t)v;
    } else if (lua_type(L, 2) == LUA_TSTRING && strcmp(lua_tostring(L, 2), "*a") == 0) {
        mode = OUTBOUND_TAKE_ALL;
    } else if (!lua_isnoneornil(L, 2) &&
               !(lua_type(L, 2) == LUA_TSTRING && strcmp(lua_tostring(L, 2), "*l") == 0)) {
        return script__arg_error(L, 1, fn, "pattern must be a byte count, \"*l\" or \"*a\"");
    }
    int r = unusable(L, u);
    if (r)
        return r;
    u->mode = mode;
    u->n = n;
    r = take(L, u);
    if (r)
        return r;
    begin(L, u, 1, TCP_RECEIVE);
    u->deadline = server_clock() + u->timeout;
    outbound_wait_input(u->o, u->timeout, on_input, u);
    return script__wait_yield(L, u->w);
}

/* sock:settimeout(seconds) */
static int sock_settimeout(lua_State *L) {
    struct tcp_ud *u = check_sock(L, "settimeout");
    if (lua_type(L, 2) != LUA_TNUMBER)
        return script__type_error(L, 2, 1, "settimeout", "number");
    double v = lua_tonumber(L, 2);
    if (!(v > 0) || v > 1e9)
        return script__arg_error(L, 1, "settimeout", "seconds must be > 0 and <= 1e9");
    u->timeout = v;
    return 0;
}

/* sock:close() -> true | nil, err */
static int sock_close(lua_State *L) {
    struct tcp_ud *u = check_sock(L, "close");
    int r = unusable(L, u);
    if (r)
        return r;
    outbound_close(u->o);
    u->o = NULL;
    lua_pushboolean(L, 1);
    return 1;
}

/* __gc and __close: a socket nobody waits on goes with its userdata. */
static int sock_gc(lua_State *L) {
    struct tcp_ud *u = lua_touserdata(L, 1);
    if (u && !u->w) {
        outbound_close(u->o);
        u->o = NULL;
    }
    return 0;
}

static int sock_tostring(lua_State *L) {
    struct tcp_ud *u = check_sock(L, "__tostring");
    lua_pushfstring(L, "switchboard.tcp (%s): %p", u->o ? "open" : "closed", (void *)u);
    return 1;
}

void script__tcp_open(lua_State *L) {
    if (luaL_newmetatable(L, TCP_MT)) {
        static const luaL_Reg methods[] = {{"send", sock_send},
                                           {"receive", sock_receive},
                                           {"settimeout", sock_settimeout},
                                           {"close", sock_close},
                                           {NULL, NULL}};
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, sock_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, sock_gc);
        lua_setfield(L, -2, "__close");
        lua_pushcfunction(L, sock_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);
    static const luaL_Reg tcp[] = {{"connect", tcp_connect}, {NULL, NULL}};
    luaL_newlib(L, tcp);
    lua_setfield(L, -2, "tcp");
}
