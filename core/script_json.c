/* script_json.c — switchboard.json: lua-cjson's decoder and null, with an
 * encoder of our own that fits what browsers expect: "/" is not escaped as
 * "\/", a table marked with json.array (even an empty one) is a JSON array,
 * integers keep every digit, and a float keeps enough digits to read back the
 * same number.
 * Otherwise it follows lua-cjson 2.1's defaults (so code written against
 * lua-cjson keeps working): an empty unmarked table is {}, a table whose keys
 * are 1..n is an array (holes become null, unless it is excessively sparse),
 * anything else is an object with string or number keys, metatables are not
 * consulted, and nesting stops at 1000. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "script_int.h"

#define JSON_MAX_DEPTH 1000
#define SPARSE_RATIO 2 /* lua-cjson's encode_sparse_array defaults */
#define SPARSE_SAFE 10
#define ARRAY_MT "switchboard.json.array"
#define JBUF_MT "switchboard.json.buffer"

/* The output, in memory from the Lua state's allocator (counted against
 * --lua-memory). One per state, owned by a userdata that is encode's upvalue:
 * encode calls no Lua code, so it is never used twice at once, and an error
 * mid-way leaves nothing behind that the next call does not reset. */
struct jbuf {
    char *p;
    size_t len, cap;
    lua_Alloc alloc;
    void *ud;
};

static int jbuf_gc(lua_State *L) {
    struct jbuf *b = luaL_checkudata(L, 1, JBUF_MT);
    if (b->p)
        b->alloc(b->ud, b->p, b->cap, 0);
    b->p = NULL;
    return 0;
}

static void jbuf_need(lua_State *L, struct jbuf *b, size_t n) {
    if (b->cap - b->len >= n)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < n)
        cap *= 2;
    char *p = b->alloc(b->ud, b->p, b->cap, cap);
    if (!p)
        luaL_error(L, "not enough memory");
    b->p = p;
    b->cap = cap;
}

static void put(lua_State *L, struct jbuf *b, const char *s, size_t n) {
    jbuf_need(L, b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void putc_(lua_State *L, struct jbuf *b, char c) {
    jbuf_need(L, b, 1);
    b->p[b->len++] = c;
}

static int enc_error(lua_State *L, const char *why) {
    return script__arg_error(L, 1, "encode", why);
}

static void put_string(lua_State *L, struct jbuf *b, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    jbuf_need(L, b, n + 2);
    b->p[b->len++] = '"';
    size_t run = 0; /* bytes copied as they are, flushed at each escape */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        put(L, b, s + run, i - run);
        run = i + 1;
        char esc[6] = {'\\', 0};
        size_t el = 2;
        switch (c) {
        case '"':
            esc[1] = '"';
            break;
        case '\\':
            esc[1] = '\\';
            break;
        case '\b':
            esc[1] = 'b';
            break;
        case '\f':
            esc[1] = 'f';
            break;
        case '\n':
            esc[1] = 'n';
            break;
        case '\r':
            esc[1] = 'r';
            break;
        case '\t':
            esc[1] = 't';
            break;
        default:
            memcpy(esc + 1, "u00", 3);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            el = 6;
        }
        put(L, b, esc, el);
    }
    put(L, b, s + run, n - run);
    putc_(L, b, '"');
}

/* An integer with every digit; a float with the fewest digits from 14
 * (lua-cjson's %.14g) to 17 that read back as the same number. */
static void put_number(lua_State *L, struct jbuf *b, int idx) {
    char num[64];
    int n;
    if (lua_isinteger(L, idx)) {
        n = snprintf(num, sizeof num, LUA_INTEGER_FMT, (LUAI_UACINT)lua_tointeger(L, idx));
    } else {
        double d = (double)lua_tonumber(L, idx);
        if (!isfinite(d))
            enc_error(L, "cannot encode NaN or infinity");
        for (int prec = 14; prec <= 17; prec++) {
            n = snprintf(num, sizeof num, "%.*g", prec, d);
            if (strtod(num, NULL) == d)
                break;
        }
    }
    put(L, b, num, (size_t)n);
}

/* lua-cjson's rule: the array length when every key is an integer >= 1 (and
 * the table not too sparse), -1 for an object. Raises when excessively sparse. */
static lua_Integer array_length(lua_State *L, int t) {
    lua_Integer max = 0, items = 0;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pop(L, 1);
        lua_Integer k;
        if (!lua_isinteger(L, -1) || (k = lua_tointeger(L, -1)) < 1) {
            lua_pop(L, 1);
            return -1;
        }
        if (k > max)
            max = k;
        items++;
    }
    if (max > SPARSE_SAFE && max > items * SPARSE_RATIO)
        enc_error(L, "excessively sparse array");
    return max;
}

static void encode(lua_State *L, struct jbuf *b, int idx, int depth);

static void encode_table(lua_State *L, struct jbuf *b, int t, int depth) {
    if (depth > JSON_MAX_DEPTH)
        enc_error(L, "nested more than 1000 deep (a table that contains itself?)");
    luaL_checkstack(L, 4, "JSON nesting");
    lua_Integer len;
    int marked = 0;
    if (lua_getmetatable(L, t)) {
        luaL_getmetatable(L, ARRAY_MT);
        marked = lua_rawequal(L, -1, -2);
        lua_pop(L, 2);
    }
    len = marked ? (lua_Integer)lua_rawlen(L, t) : array_length(L, t);
    if (marked || len > 0) {
        putc_(L, b, '[');
        for (lua_Integer i = 1; i <= len; i++) {
            if (i > 1)
                putc_(L, b, ',');
            lua_rawgeti(L, t, i);
            encode(L, b, lua_gettop(L), depth + 1);
            lua_pop(L, 1);
        }
        putc_(L, b, ']');
        return;
    }
    putc_(L, b, '{');
    int first = 1;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        if (!first)
            putc_(L, b, ',');
        first = 0;
        int kt = lua_type(L, -2);
        if (kt == LUA_TSTRING) {
            size_t kl;
            const char *k = lua_tolstring(L, -2, &kl);
            put_string(L, b, k, kl);
        } else if (kt == LUA_TNUMBER) {
            putc_(L, b, '"');
            put_number(L, b, lua_gettop(L) - 1);
            putc_(L, b, '"');
        } else {
            enc_error(L, "table keys must be strings or numbers");
        }
        putc_(L, b, ':');
        encode(L, b, lua_gettop(L), depth + 1);
        lua_pop(L, 1);
    }
    putc_(L, b, '}');
}

static void encode(lua_State *L, struct jbuf *b, int idx, int depth) {
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        put(L, b, "null", 4);
        break;
    case LUA_TBOOLEAN:
        if (lua_toboolean(L, idx))
            put(L, b, "true", 4);
        else
            put(L, b, "false", 5);
        break;
    case LUA_TNUMBER:
        put_number(L, b, idx);
        break;
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        put_string(L, b, s, n);
        break;
    }
    case LUA_TTABLE:
        encode_table(L, b, idx, depth);
        break;
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL) { /* json.null */
            put(L, b, "null", 4);
            break;
        }
        /* fall through */
    default:
        enc_error(L, lua_pushfstring(L, "cannot encode a %s", luaL_typename(L, idx)));
    }
}

#define JBUF_KEEP (64 * 1024) /* a bigger buffer is let go after its call */

/* json.encode(value) -> JSON text. */
static int json_encode(lua_State *L) {
    if (lua_isnone(L, 1))
        return script__arg_error(L, 1, "encode", "value expected");
    lua_settop(L, 1);
    struct jbuf *b = lua_touserdata(L, lua_upvalueindex(1));
    b->len = 0;
    encode(L, b, 1, 0);
    lua_pushlstring(L, b->p ? b->p : "", b->len);
    if (b->cap > JBUF_KEEP) {
        b->alloc(b->ud, b->p, b->cap, 0);
        b->p = NULL;
        b->cap = 0;
    }
    return 1;
}

/* json.array([t]) -> t (or a new table), marked to encode as a JSON array. */
static int json_array(lua_State *L) {
    if (lua_isnoneornil(L, 1)) {
        lua_settop(L, 0);
        lua_newtable(L);
    } else if (!lua_istable(L, 1)) {
        return script__type_error(L, 1, 1, "array", "table");
    }
    lua_settop(L, 1);
    if (lua_getmetatable(L, 1)) {
        luaL_getmetatable(L, ARRAY_MT);
        if (!lua_rawequal(L, -1, -2))
            return script__arg_error(L, 1, "array", "the table already has a metatable");
        lua_pop(L, 2);
    }
    luaL_setmetatable(L, ARRAY_MT);
    return 1;
}

int script__json_open(lua_State *L) {
    if (luaL_newmetatable(L, JBUF_MT)) {
        lua_pushcfunction(L, jbuf_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    if (luaL_newmetatable(L, ARRAY_MT)) {
        lua_pushliteral(L, "json.array");
        lua_setfield(L, -2, "__name");
    }
    lua_pop(L, 1);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "cjson");
    if (lua_pcall(L, 1, 1, 0) != LUA_OK)
        return 0; /* the message is on the stack */
    int cjson = lua_gettop(L);
    lua_createtable(L, 0, 5);
    struct jbuf *b = lua_newuserdatauv(L, sizeof *b, 0);
    memset(b, 0, sizeof *b);
    b->alloc = lua_getallocf(L, &b->ud);
    luaL_setmetatable(L, JBUF_MT);
    lua_pushcclosure(L, json_encode, 1);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, "switchboard.json_encode");
    lua_setfield(L, -2, "encode");
    lua_getfield(L, cjson, "decode");
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, "switchboard.json_decode");
    lua_setfield(L, -2, "decode");
    lua_getfield(L, cjson, "null");
    lua_setfield(L, -2, "null");
    lua_pushcfunction(L, json_array);
    lua_setfield(L, -2, "array");
    luaL_getmetatable(L, ARRAY_MT);
    lua_setfield(L, -2, "array_mt");
    lua_remove(L, cjson);
    return 1;
}
