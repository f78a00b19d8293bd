/* script_http.c — switchboard.http.request: an HTTP/1.1 request (httpc.c) that
 * the calling handler waits on (script__wait_*), and the loop's outbound
 * context that sb.tcp shares. */
#define _GNU_SOURCE
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "httpc.h"
#include "loop.h"
#include "outbound.h"
#include "script_int.h"

#define HTTP_OP_MT "switchboard.http_request"
#define REQ_HEADERS_MAX 100

struct outbound_ctx *script__outbound(struct script *s) {
    struct sb_server *srv = s->srv;
    if (!srv->outbound &&
        (srv->outbound = outbound_ctx_new(srv->base, srv->cfg.max_outbound, srv->cfg.resolver)))
        outbound_ctx_set_pool(srv->outbound, srv->cfg.http_pool, srv->cfg.http_keepalive);
    return srv->outbound;
}

/* ---- options --------------------------------------------------------------------- */

/* opts[k] when it is of type `want` (nil: absent, returns 0), else a misuse error
 * naming argument #n of fn. Leaves the value on the stack when it returns 1. */
int script__opt_field(lua_State *L, int t, const char *k, int want, int n, const char *fn) {
    if (t == 0)
        return 0;
    int got = lua_getfield(L, t, k);
    if (got == LUA_TNIL) {
        lua_pop(L, 1);
        return 0;
    }
    if (got != want && !(want == LUA_TSTRING && got == LUA_TNUMBER))
        return script__arg_error(L, n, fn,
                                 lua_pushfstring(L, "opts.%s must be a %s, not a %s", k,
                                                 lua_typename(L, want), luaL_typename(L, -1)));
    return 1;
}

/* opts.timeout: seconds, 0 < s <= 1e9; d when absent. */
double script__opt_seconds(lua_State *L, int t, const char *k, double d, int n, const char *fn) {
    if (!script__opt_field(L, t, k, LUA_TNUMBER, n, fn))
        return d;
    double v = lua_tonumber(L, -1);
    lua_pop(L, 1);
    if (!(v > 0) || v > 1e9)
        script__arg_error(L, n, fn, lua_pushfstring(L, "opts.%s must be 0 < seconds <= 1e9", k));
    return v;
}

int script__opt_bool(lua_State *L, int t, const char *k, int d, int n, const char *fn) {
    if (!script__opt_field(L, t, k, LUA_TBOOLEAN, n, fn))
        return d;
    int v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

/* A string option (a number converts). The value stays on the stack so that
 * the string lives as long as this C call. */
const char *script__opt_string(lua_State *L, int t, const char *k, const char *d, size_t *len,
                               int n, const char *fn) {
    if (!script__opt_field(L, t, k, LUA_TSTRING, n, fn)) {
        if (len)
            *len = d ? strlen(d) : 0;
        return d;
    }
    /* left on the stack: a number's string form has no other reference */
    return lua_tolstring(L, -1, len);
}

static int is_token(const char *p, size_t len) {
    static const char extra[] = "!#$%&'*+-.^_`|~";
    if (len == 0)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)p[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              (c && strchr(extra, c))))
            return 0;
    }
    return 1;
}

/* opts.headers into hdr (at most REQ_HEADERS_MAX): names are tokens, values
 * carry no CR, LF or NUL. Leaves the table and one holding the values' string
 * forms on the stack, so the strings stay valid while this call runs. */
static size_t read_headers(lua_State *L, int t, struct httpc_header *hdr, const char *fn) {
    if (!script__opt_field(L, t, "headers", LUA_TTABLE, 2, fn))
        return 0;
    int ht = lua_gettop(L);
    lua_newtable(L);
    int keep = lua_gettop(L);
    size_t n = 0;
    lua_pushnil(L);
    while (lua_next(L, ht)) {
        if (lua_type(L, -2) != LUA_TSTRING)
            script__arg_error(L, 2, fn, "opts.headers keys must be header names");
        int vt = lua_type(L, -1);
        if (vt != LUA_TSTRING && vt != LUA_TNUMBER)
            script__arg_error(
                L, 2, fn,
                lua_pushfstring(L, "opts.headers['%s'] must be a string", lua_tostring(L, -2)));
        if (n == REQ_HEADERS_MAX)
            script__arg_error(L, 2, fn, "more than 100 opts.headers");
        struct httpc_header *h = &hdr[n++];
        h->name = lua_tolstring(L, -2, &h->name_len);
        if (!is_token(h->name, h->name_len))
            script__arg_error(
                L, 2, fn, lua_pushfstring(L, "opts.headers: '%s' is not a header name", h->name));
        lua_pushvalue(L, -1); /* a number converts in this copy, never in the table's key */
        h->value = lua_tolstring(L, -1, &h->value_len);
        lua_rawseti(L, keep, (lua_Integer)n);
        for (size_t i = 0; i < h->value_len; i++)
            if (h->value[i] == '\r' || h->value[i] == '\n' || h->value[i] == 0)
                script__arg_error(
                    L, 2, fn,
                    lua_pushfstring(L, "opts.headers['%s'] has a CR, LF or NUL", h->name));
        lua_pop(L, 1);
    }
    return n;
}

/* ---- the wait --------------------------------------------------------------------- */

/* A full userdata, kept by the registry while its handler waits; its __gc
 * drops a request still running when the state closes. */
struct http_op {
    struct httpc *h; /* NULL once it has answered or been cancelled */
    struct script_wait *w;
    struct script *s;
    int ref;
    double t0; /* for the duration metric */
};

static void http_cancel(void *ud) {
    struct http_op *op = ud;
    httpc_cancel(op->h);
    op->h = NULL;
    stats_observe_outbound(&op->s->srv->stats, SB_OUT_HTTP, "cancelled", server_clock() - op->t0);
    luaL_unref(op->s->L, LUA_REGISTRYINDEX, op->ref);
    op->ref = LUA_NOREF;
}

/* res.headers: a repeated field's values joined with ", " in arrival order. */
static void push_response(lua_State *T, const struct httpc_response *res) {
    lua_createtable(T, 0, 3);
    lua_pushinteger(T, res->status);
    lua_setfield(T, -2, "status");
    lua_createtable(T, 0, (int)res->n_headers);
    for (size_t i = 0; i < res->n_headers; i++) {
        const struct httpc_header *h = &res->headers[i];
        if (lua_getfield(T, -1, h->name) == LUA_TSTRING) {
            lua_pushliteral(T, ", ");
            lua_pushlstring(T, h->value, h->value_len);
            lua_concat(T, 3);
        } else {
            lua_pop(T, 1);
            lua_pushlstring(T, h->value, h->value_len);
        }
        lua_setfield(T, -2, h->name);
    }
    lua_setfield(T, -2, "headers");
    lua_pushlstring(T, res->body, res->body_len);
    lua_setfield(T, -2, "body");
}

static void on_response(void *ud, const char *err, const struct httpc_response *res) {
    struct http_op *op = ud;
    op->h = NULL; /* httpc frees itself when this returns */
    struct script_wait *w = op->w;
    lua_State *T = script__wait_thread(w);
    lua_checkstack(T, 4);
    stats_observe_outbound(&op->s->srv->stats, SB_OUT_HTTP, err, server_clock() - op->t0);
    if (err) {
        lua_pushnil(T);
        lua_pushstring(T, err);
    } else {
        push_response(T, res);
    }
    luaL_unref(T, LUA_REGISTRYINDEX, op->ref); /* op may be collected from here on */
    op->ref = LUA_NOREF;
    script__wait_done(w, err ? 2 : 1);
}

static int http_op_gc(lua_State *L) {
    struct http_op *op = lua_touserdata(L, 1);
    httpc_cancel(op->h);
    op->h = NULL;
    return 0;
}

/* request(url [, opts]) -> res | nil, err */
static int http_request(lua_State *L) {
    static const char fn[] = "request";
    struct script *s = get_script(L);
    struct httpc_request rq = {0};
    rq.url = script__arg_string(L, 1, 1, fn, NULL);
    struct httpc_url u;
    const char *why;
    if (httpc_parse_url(rq.url, &u, &why) < 0)
        return script__arg_error(L, 1, fn, why);
    int t = 0;
    if (!lua_isnoneornil(L, 2)) {
        if (lua_type(L, 2) != LUA_TTABLE)
            return script__type_error(L, 2, 2, fn, "table");
        t = 2;
    }
    size_t mlen;
    rq.method = script__opt_string(L, t, "method", "GET", &mlen, 2, fn);
    if (!is_token(rq.method, mlen))
        return script__arg_error(L, 2, fn, "opts.method must be a token such as \"POST\"");
    rq.body = script__opt_string(L, t, "body", "", &rq.body_len, 2, fn);
    rq.timeout = script__opt_seconds(L, t, "timeout", 10, 2, fn);
    rq.verify = script__opt_bool(L, t, "verify", 1, 2, fn);
    rq.ca = script__opt_string(L, t, "ca", NULL, NULL, 2, fn);
    size_t cap = s->srv->cfg.max_response_body;
    rq.max_body = cap;
    rq.keepalive = s->srv->cfg.http_pool > 0 && s->srv->cfg.http_keepalive > 0;
    if (script__opt_field(L, t, "redirects", LUA_TNUMBER, 2, fn)) {
        lua_Number n = lua_tonumber(L, -1);
        if (!(n >= 0 && n <= 20) || n != (lua_Number)(int)n)
            return script__arg_error(L, 2, fn, "opts.redirects must be an integer 0..20");
        lua_pop(L, 1);
        rq.redirects = (int)n;
    }
    if (script__opt_field(L, t, "max_body", LUA_TNUMBER, 2, fn)) {
        lua_Integer mb = lua_tointeger(L, -1);
        lua_pop(L, 1);
        if (mb < 0)
            return script__arg_error(L, 2, fn, "opts.max_body must be a byte count >= 0");
        if ((lua_Unsigned)mb < cap)
            rq.max_body = (size_t)mb;
    }
    struct httpc_header hdr[REQ_HEADERS_MAX];
    rq.headers = hdr;
    rq.n_headers = read_headers(L, t, hdr, fn);

    struct outbound_ctx *x = script__outbound(s);
    if (!x)
        return luaL_error(L, "out of memory");
    struct http_op *op = lua_newuserdatauv(L, sizeof *op, 0);
    int opi = lua_gettop(L);
    *op = (struct http_op){.s = s, .ref = LUA_NOREF, .t0 = server_clock()};
    luaL_setmetatable(L, HTTP_OP_MT);
    /* raises outside a handler, before anything has started */
    op->w = script__wait_begin(L, http_cancel, op);
    lua_pushvalue(L, opi);
    op->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    const char *err;
    op->h = httpc_request(x, &rq, on_response, op, &err);
    if (!op->h) /* the handler still yields; it resumes with nil, err from the loop */
        on_response(op, err, NULL);
    return script__wait_yield(L, op->w);
}

void script__http_open(lua_State *L) {
    if (luaL_newmetatable(L, HTTP_OP_MT)) {
        lua_pushcfunction(L, http_op_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    static const luaL_Reg http[] = {{"request", http_request}, {NULL, NULL}};
    luaL_newlib(L, http);
    lua_setfield(L, -2, "http");
}
