/* sbt_outbound — test-only: outbound.c and httpc.c on a private event loop,
 * driven by blocking calls (each runs the loop until its callback), so the
 * unit specs reach DNS, connect, TLS and the HTTP client without a server.
 *
 *   http(url, {method, headers, body, timeout, verify, ca, max_body})
 *       -> status, headers, body | nil, err
 *   http_many(url, n, opts) -> ok_count, seconds, first_error
 *   connect(host, port, {tls, server_name, verify, ca, timeout}) -> sock | nil, err
 *   sock:send(data [, timeout]) -> bytes | nil, err
 *   sock:receive(n | "*l" | "*a" [, timeout [, max]]) -> data | nil, err, partial
 *   sock:close(); open_count() */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>
#include <lauxlib.h>
#include <lua.h>

#include "httpc.h"
#include "outbound.h"

#define SOCK_MT "sbt_outbound.sock"

static struct event_base *base;
static struct outbound_ctx *ctx;

static void ensure(void) {
    if (!base) {
        base = event_base_new();
        ctx = outbound_ctx_new(base, 100000, NULL);
    }
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void run_until(const int *done) {
    while (!*done)
        event_base_loop(base, EVLOOP_ONCE);
}

static double opt_number(lua_State *L, int t, const char *k, double d) {
    double v = d;
    if (lua_getfield(L, t, k) != LUA_TNIL)
        v = luaL_checknumber(L, -1);
    lua_pop(L, 1);
    return v;
}

static int opt_bool(lua_State *L, int t, const char *k, int d) {
    int v = d;
    if (lua_getfield(L, t, k) != LUA_TNIL)
        v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

/* a string kept alive by the opts table */
static const char *opt_string(lua_State *L, int t, const char *k, const char *d, size_t *len) {
    const char *v = d;
    if (len)
        *len = d ? strlen(d) : 0;
    if (lua_getfield(L, t, k) != LUA_TNIL)
        v = luaL_checklstring(L, -1, len);
    lua_pop(L, 1);
    return v;
}

/* ---- http ----------------------------------------------------------------------- */

struct http_wait {
    lua_State *L;
    int done, nres;
};

static void on_http(void *ud, const char *err, const struct httpc_response *res) {
    struct http_wait *w = ud;
    lua_State *L = w->L;
    w->done = 1;
    if (err) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        w->nres = 2;
        return;
    }
    lua_pushinteger(L, res->status);
    lua_newtable(L);
    for (size_t i = 0; i < res->n_headers; i++) {
        lua_pushlstring(L, res->headers[i].value, res->headers[i].value_len);
        lua_setfield(L, -2, res->headers[i].name);
    }
    lua_pushlstring(L, res->body, res->body_len);
    w->nres = 3;
}

static void read_request(lua_State *L, int t, struct httpc_request *rq, struct httpc_header *hdr,
                         size_t cap) {
    rq->method = opt_string(L, t, "method", "GET", NULL);
    rq->body = opt_string(L, t, "body", "", &rq->body_len);
    rq->timeout = opt_number(L, t, "timeout", 10);
    rq->verify = opt_bool(L, t, "verify", 1);
    rq->ca = opt_string(L, t, "ca", NULL, NULL);
    rq->max_body = (size_t)opt_number(L, t, "max_body", 16 * 1024 * 1024);
    rq->headers = hdr;
    rq->n_headers = 0;
    if (lua_getfield(L, t, "headers") == LUA_TTABLE) {
        lua_pushnil(L);
        while (lua_next(L, -2) && rq->n_headers < cap) {
            struct httpc_header *h = &hdr[rq->n_headers++];
            h->name = lua_tolstring(L, -2, &h->name_len);
            h->value = lua_tolstring(L, -1, &h->value_len);
            lua_pop(L, 1); /* both strings stay referenced by the table */
        }
    }
    lua_pop(L, 1);
}

static int l_http(lua_State *L) {
    ensure();
    struct httpc_request rq = {.url = luaL_checkstring(L, 1)};
    lua_settop(L, 2);
    if (lua_isnil(L, 2))
        lua_newtable(L), lua_replace(L, 2);
    struct httpc_header hdr[32];
    read_request(L, 2, &rq, hdr, 32);
    struct http_wait w = {.L = L};
    const char *err;
    int top = lua_gettop(L);
    if (!httpc_request(ctx, &rq, on_http, &w, &err)) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    run_until(&w.done);
    return lua_gettop(L) - top;
}

struct many {
    int left, ok;
    char first_err[256];
};

static void on_many(void *ud, const char *err, const struct httpc_response *res) {
    struct many *m = ud;
    m->left--;
    if (err && !m->first_err[0])
        strncpy(m->first_err, err, sizeof m->first_err - 1);
    if (res && res->status == 200)
        m->ok++;
}

static int l_http_many(lua_State *L) {
    ensure();
    struct httpc_request rq = {.url = luaL_checkstring(L, 1)};
    int n = (int)luaL_checkinteger(L, 2);
    lua_settop(L, 3);
    if (lua_isnil(L, 3))
        lua_newtable(L), lua_replace(L, 3);
    struct httpc_header hdr[32];
    read_request(L, 3, &rq, hdr, 32);
    struct many m = {0};
    double t0 = now_s();
    for (int i = 0; i < n; i++) {
        const char *err;
        m.left++;
        if (!httpc_request(ctx, &rq, on_many, &m, &err)) {
            m.left--;
            if (!m.first_err[0])
                strncpy(m.first_err, err, sizeof m.first_err - 1);
        }
    }
    while (m.left > 0)
        event_base_loop(base, EVLOOP_ONCE);
    lua_pushinteger(L, m.ok);
    lua_pushnumber(L, now_s() - t0);
    if (m.first_err[0])
        lua_pushstring(L, m.first_err);
    else
        lua_pushnil(L);
    return 3;
}

/* ---- tcp ------------------------------------------------------------------------ */

struct sock {
    struct outbound *o;
};

struct op_wait {
    int done;
    char err[256];
};

static void on_op(void *ud, const char *err) {
    struct op_wait *w = ud;
    w->done = 1;
    w->err[0] = 0;
    if (err)
        strncpy(w->err, err, sizeof w->err - 1);
}

static int l_connect(lua_State *L) {
    ensure();
    struct outbound_opts oo = {.host = luaL_checkstring(L, 1),
                               .port = (unsigned)luaL_checkinteger(L, 2)};
    lua_settop(L, 3);
    if (lua_isnil(L, 3))
        lua_newtable(L), lua_replace(L, 3);
    oo.tls = opt_bool(L, 3, "tls", 0);
    oo.verify = opt_bool(L, 3, "verify", 1);
    oo.ca = opt_string(L, 3, "ca", NULL, NULL);
    oo.server_name = opt_string(L, 3, "server_name", NULL, NULL);
    oo.timeout = opt_number(L, 3, "timeout", 10);
    struct sock *s = lua_newuserdatauv(L, sizeof *s, 0);
    s->o = NULL;
    luaL_setmetatable(L, SOCK_MT);
    struct op_wait w = {0};
    const char *err;
    s->o = outbound_connect(ctx, &oo, on_op, &w, &err);
    if (!s->o) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    run_until(&w.done);
    if (w.err[0]) {
        outbound_close(s->o);
        s->o = NULL;
        lua_pushnil(L);
        lua_pushstring(L, w.err);
        return 2;
    }
    return 1;
}

static struct sock *check_sock(lua_State *L) {
    struct sock *s = luaL_checkudata(L, 1, SOCK_MT);
    luaL_argcheck(L, s->o != NULL, 1, "closed socket");
    return s;
}

static int l_send(lua_State *L) {
    struct sock *s = check_sock(L);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    struct op_wait w = {0};
    outbound_send(s->o, data, len, luaL_optnumber(L, 3, 10), on_op, &w);
    run_until(&w.done);
    if (w.err[0]) {
        lua_pushnil(L);
        lua_pushstring(L, w.err);
        return 2;
    }
    lua_pushinteger(L, (lua_Integer)len);
    return 1;
}

static int l_receive(lua_State *L) {
    struct sock *s = check_sock(L);
    enum outbound_take mode = OUTBOUND_TAKE_LINE;
    size_t n = 0;
    if (lua_type(L, 2) == LUA_TNUMBER) {
        mode = OUTBOUND_TAKE_N;
        n = (size_t)lua_tointeger(L, 2);
    } else if (lua_type(L, 2) == LUA_TSTRING && strcmp(lua_tostring(L, 2), "*a") == 0) {
        mode = OUTBOUND_TAKE_ALL;
    }
    double deadline = now_s() + luaL_optnumber(L, 3, 10);
    size_t max = (size_t)luaL_optinteger(L, 4, 16 * 1024 * 1024);
    for (;;) {
        const char *data, *err;
        size_t len;
        int r = outbound_take(s->o, mode, n, max, &data, &len, &err);
        if (r > 0) {
            lua_pushlstring(L, data, len);
            return 1;
        }
        if (r < 0) {
            lua_pushnil(L);
            lua_pushstring(L, err);
            lua_pushlstring(L, data, len);
            return 3;
        }
        struct op_wait w = {0};
        double left = deadline - now_s();
        outbound_wait_input(s->o, left > 0 ? left : 0, on_op, &w);
        run_until(&w.done);
        if (w.err[0]) {
            outbound_take(s->o, OUTBOUND_TAKE_N, 0, max, &data, &len, &err);
            lua_pushnil(L);
            lua_pushstring(L, w.err);
            return 2;
        }
    }
}

static int l_close(lua_State *L) {
    struct sock *s = luaL_checkudata(L, 1, SOCK_MT);
    outbound_close(s->o);
    s->o = NULL;
    return 0;
}

static int l_open_count(lua_State *L) {
    ensure();
    lua_pushinteger(L, outbound_open_count(ctx));
    return 1;
}

int luaopen_sbt_outbound(lua_State *L) {
    static const luaL_Reg sock_m[] = {
        {"send", l_send}, {"receive", l_receive}, {"close", l_close}, {NULL, NULL}};
    luaL_newmetatable(L, SOCK_MT);
    luaL_newlib(L, sock_m);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_close);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    static const luaL_Reg fns[] = {{"http", l_http},
                                   {"http_many", l_http_many},
                                   {"connect", l_connect},
                                   {"open_count", l_open_count},
                                   {NULL, NULL}};
    luaL_newlib(L, fns);
    return 1;
}
