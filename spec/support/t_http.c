/* sbt_http — test-only Lua bindings for core/http.c and core/handshake.c.
 *
 *   parse(buf [, last_len [, {max_header_bytes=, max_headers=, headers_cap=}]])
 *       -> consumed, req | "need_more" | "error", status
 *   validate(raw) -> true, key | status, reason
 *   is_upgrade(raw), find_header(raw, name), has_token(raw, name, token)
 *   accept_key(key), protocols(raw) -> list, count
 *   percent_decode(s [, plus_is_space]) -> string | nil   (decodes in place)
 *   query(q) -> list of {k, v}   (v nil for a key without '=')
 *   format_head(status, extra, content_length, keep_alive [, cap]) -> string | nil
 *   status_text(code)
 */
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "handshake.h"
#include "http.h"

static void set_slice(lua_State *L, const char *field, const char *p, size_t n) {
    if (p)
        lua_pushlstring(L, p, n);
    else
        lua_pushnil(L);
    lua_setfield(L, -2, field);
}

static void push_request(lua_State *L, const char *buf, const struct http_request *req) {
    lua_createtable(L, 0, 10);
    set_slice(L, "method", req->method, req->method_len);
    set_slice(L, "target", req->target, req->target_len);
    set_slice(L, "path", req->path, req->path_len);
    set_slice(L, "query", req->query, req->query_len);
    lua_pushinteger(L, req->minor_version);
    lua_setfield(L, -2, "minor_version");
    if (req->content_length >= 0) {
        lua_pushinteger(L, (lua_Integer)req->content_length);
        lua_setfield(L, -2, "content_length");
    }
    lua_pushboolean(L, req->keep_alive);
    lua_setfield(L, -2, "keep_alive");
    lua_createtable(L, (int)req->num_headers, 0);
    for (size_t i = 0; i < req->num_headers; i++) {
        const struct http_header *h = &req->headers[i];
        lua_createtable(L, 2, 1);
        lua_pushlstring(L, h->name, h->name_len);
        lua_rawseti(L, -2, 1);
        lua_pushlstring(L, h->value, h->value_len);
        lua_rawseti(L, -2, 2);
        lua_pushinteger(L, (lua_Integer)(h->value - buf) + 1); /* 1-based, for slice checks */
        lua_setfield(L, -2, "value_at");
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "headers");
}

static size_t opt_field(lua_State *L, int t, const char *name, size_t def) {
    if (!lua_istable(L, t))
        return def;
    lua_getfield(L, t, name);
    lua_Integer v = lua_isnil(L, -1) ? (lua_Integer)def : luaL_checkinteger(L, -1);
    lua_pop(L, 1);
    luaL_argcheck(L, v >= 0, t, "limits must be >= 0");
    return (size_t)v;
}

/* Parses buf; on success leaves the request in *req with headers in a userdata
 * on the stack. Returns the parser's result. */
static int do_parse(lua_State *L, const char *buf, size_t len, size_t last_len, int limits_idx,
                    struct http_request *req, int *status) {
    struct http_limits lim = {
        .max_header_bytes = opt_field(L, limits_idx, "max_header_bytes", 0),
        .max_headers = opt_field(L, limits_idx, "max_headers", 0),
    };
    size_t def_cap = lim.max_headers ? lim.max_headers : HTTP_DEFAULT_MAX_HEADERS;
    size_t cap = opt_field(L, limits_idx, "headers_cap", def_cap);
    memset(req, 0, sizeof *req);
    req->headers = lua_newuserdatauv(L, sizeof(struct http_header) * (cap ? cap : 1), 0);
    req->headers_cap = cap;
    *status = 0;
    return http_parse_request(buf, len, last_len, &lim, req, status);
}

static int l_parse(lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    lua_Integer last = luaL_optinteger(L, 2, 0);
    luaL_argcheck(L, last >= 0, 2, "last_len must be >= 0");
    /* a copy of exactly len bytes: under ASan, a read past the end is caught */
    char *buf = lua_newuserdatauv(L, len ? len : 1, 0);
    memcpy(buf, s, len);
    struct http_request req;
    int status;
    int r = do_parse(L, buf, len, (size_t)last, 3, &req, &status);
    if (r == HTTP_NEED_MORE) {
        lua_pushliteral(L, "need_more");
        return 1;
    }
    if (r == HTTP_ERROR) {
        lua_pushliteral(L, "error");
        lua_pushinteger(L, status);
        return 2;
    }
    lua_pushinteger(L, r);
    push_request(L, buf, &req);
    return 2;
}

/* Parses a complete request or raises: for the handshake helpers. */
static void parse_whole(lua_State *L, struct http_request *req) {
    size_t len;
    const char *buf = luaL_checklstring(L, 1, &len);
    int status;
    int r = do_parse(L, buf, len, 0, lua_gettop(L) + 1, req, &status); /* no limits */
    if (r < 0)
        luaL_error(L, "request does not parse (%s, status %d)",
                   r == HTTP_NEED_MORE ? "need_more" : "error", status);
}

static int l_validate(lua_State *L) {
    struct http_request req;
    parse_whole(L, &req);
    const char *key = NULL, *reason = NULL;
    size_t key_len = 0;
    int st = handshake_validate(&req, &key, &key_len, &reason);
    if (st == 0) {
        lua_pushboolean(L, 1);
        lua_pushlstring(L, key, key_len);
    } else {
        lua_pushinteger(L, st);
        lua_pushstring(L, reason);
    }
    return 2;
}

static int l_is_upgrade(lua_State *L) {
    struct http_request req;
    parse_whole(L, &req);
    lua_pushboolean(L, handshake_is_upgrade(&req));
    return 1;
}

static int l_find_header(lua_State *L) {
    const char *name = luaL_checkstring(L, 2);
    struct http_request req;
    parse_whole(L, &req);
    const struct http_header *h = http_find_header(&req, name);
    if (h)
        lua_pushlstring(L, h->value, h->value_len);
    else
        lua_pushnil(L);
    return 1;
}

static int l_has_token(lua_State *L) {
    const char *name = luaL_checkstring(L, 2);
    const char *token = luaL_checkstring(L, 3);
    struct http_request req;
    parse_whole(L, &req);
    lua_pushboolean(L, http_header_has_token(&req, name, token));
    return 1;
}

static int l_accept_key(lua_State *L) {
    size_t len;
    const char *key = luaL_checklstring(L, 1, &len);
    char out[HANDSHAKE_ACCEPT_LEN + 1];
    handshake_accept_key(key, len, out);
    lua_pushstring(L, out);
    return 1;
}

struct list {
    lua_State *L;
    int t;
    lua_Integer n;
};

static void add_protocol(void *ud, const char *p, size_t len) {
    struct list *l = ud;
    lua_pushlstring(l->L, p, len);
    lua_rawseti(l->L, l->t, ++l->n);
}

static int l_protocols(lua_State *L) {
    struct http_request req;
    parse_whole(L, &req);
    lua_newtable(L);
    struct list l = {L, lua_gettop(L), 0};
    size_t count = handshake_each_protocol(&req, add_protocol, &l);
    lua_pushinteger(L, (lua_Integer)count);
    lua_pushinteger(L, (lua_Integer)handshake_each_protocol(&req, NULL, NULL));
    return 3;
}

/* origin_allowed(list, origin) -> boolean; origin_list_valid(list) -> boolean */
static int l_origin_allowed(lua_State *L) {
    size_t len;
    const char *list = luaL_checkstring(L, 1);
    const char *origin = luaL_checklstring(L, 2, &len);
    /* the value as the parser leaves it: a slice, not NUL-terminated */
    char *copy = malloc(len ? len : 1);
    memcpy(copy, origin, len);
    int ok = handshake_origin_allowed(list, copy, len);
    free(copy);
    lua_pushboolean(L, ok);
    return 1;
}

static int l_origin_list_valid(lua_State *L) {
    lua_pushboolean(L, handshake_origin_list_valid(luaL_checkstring(L, 1)));
    return 1;
}

static int l_percent_decode(lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    int plus = lua_toboolean(L, 2);
    char *buf = lua_newuserdatauv(L, len ? len : 1, 0);
    memcpy(buf, s, len);
    long n = http_percent_decode(buf, buf, len, plus); /* in place, as the server does */
    if (n < 0)
        lua_pushnil(L);
    else
        lua_pushlstring(L, buf, (size_t)n);
    return 1;
}

static void add_pair(void *ud, const char *k, size_t kl, const char *v, size_t vl) {
    struct list *l = ud;
    lua_createtable(l->L, 2, 0);
    lua_pushlstring(l->L, k, kl);
    lua_rawseti(l->L, -2, 1);
    if (v) {
        lua_pushlstring(l->L, v, vl);
        lua_rawseti(l->L, -2, 2);
    }
    lua_rawseti(l->L, l->t, ++l->n);
}

static int l_query(lua_State *L) {
    size_t len;
    const char *q = luaL_checklstring(L, 1, &len);
    lua_newtable(L);
    struct list l = {L, lua_gettop(L), 0};
    http_query_each(q, len, add_pair, &l);
    return 1;
}

static int l_format_head(lua_State *L) {
    int status = (int)luaL_checkinteger(L, 1);
    const char *extra = luaL_optstring(L, 2, NULL);
    lua_Integer cl = luaL_optinteger(L, 3, -1);
    int keep = lua_toboolean(L, 4);
    lua_Integer cap = luaL_optinteger(L, 5, 4096);
    luaL_argcheck(L, cap >= 0 && cap <= 1 << 20, 5, "cap out of range");
    /* exactly cap bytes, so ASan sees any write past it */
    char *out = lua_newuserdatauv(L, cap ? (size_t)cap : 1, 0);
    long n = http_format_head(out, (size_t)cap, status, extra, cl, keep);
    if (n < 0)
        lua_pushnil(L);
    else
        lua_pushlstring(L, out, (size_t)n);
    return 1;
}

static int l_status_text(lua_State *L) {
    lua_pushstring(L, http_status_text((int)luaL_checkinteger(L, 1)));
    return 1;
}

int luaopen_sbt_http(lua_State *L) {
    static const luaL_Reg fns[] = {
        {"parse", l_parse},
        {"validate", l_validate},
        {"is_upgrade", l_is_upgrade},
        {"find_header", l_find_header},
        {"has_token", l_has_token},
        {"accept_key", l_accept_key},
        {"protocols", l_protocols},
        {"origin_allowed", l_origin_allowed},
        {"origin_list_valid", l_origin_list_valid},
        {"percent_decode", l_percent_decode},
        {"query", l_query},
        {"format_head", l_format_head},
        {"status_text", l_status_text},
        {NULL, NULL},
    };
    luaL_newlib(L, fns);
    return 1;
}
