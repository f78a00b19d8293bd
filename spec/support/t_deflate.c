/* sbt_deflate — test-only Lua bindings for core/deflate.c, plus a reference
 * zlib inflater/deflater (independent of the codec) to check its output. */
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <lauxlib.h>
#include <lua.h>
#include <zlib.h>

#include "deflate.h"

#define CFG_MT "sbt_deflate.config"
#define CONN_MT "sbt_deflate.conn"
#define SHARED_MT "sbt_deflate.shared"
#define REF_MT "sbt_deflate.ref"
#define ZSTREAM_MT "sbt_deflate.zstream"

static int opt_int(lua_State *L, int t, const char *k, int def) {
    lua_getfield(L, t, k);
    int v = def;
    if (lua_isboolean(L, -1))
        v = lua_toboolean(L, -1);
    else if (!lua_isnil(L, -1))
        v = (int)luaL_checkinteger(L, -1);
    lua_pop(L, 1);
    return v;
}

/* config{enabled=, server_max_window_bits=, ...} -> config userdata */
static int l_config(lua_State *L) {
    struct deflate_config *cfg = lua_newuserdatauv(L, sizeof *cfg, 0);
    deflate_config_default(cfg);
    if (lua_istable(L, 1)) {
        cfg->enabled = opt_int(L, 1, "enabled", cfg->enabled);
        cfg->server_max_window_bits =
            opt_int(L, 1, "server_max_window_bits", cfg->server_max_window_bits);
        cfg->client_max_window_bits =
            opt_int(L, 1, "client_max_window_bits", cfg->client_max_window_bits);
        cfg->mem_level = opt_int(L, 1, "mem_level", cfg->mem_level);
        cfg->level = opt_int(L, 1, "level", cfg->level);
        cfg->server_no_context_takeover =
            opt_int(L, 1, "server_no_context_takeover", cfg->server_no_context_takeover);
        cfg->client_no_context_takeover =
            opt_int(L, 1, "client_no_context_takeover", cfg->client_no_context_takeover);
        cfg->min_size = (size_t)opt_int(L, 1, "min_size", (int)cfg->min_size);
    }
    luaL_setmetatable(L, CFG_MT);
    return 1;
}

static void push_params(lua_State *L, const struct deflate_params *p) {
    lua_createtable(L, 0, 6);
    lua_pushboolean(L, p->server_no_context_takeover);
    lua_setfield(L, -2, "server_no_context_takeover");
    lua_pushboolean(L, p->client_no_context_takeover);
    lua_setfield(L, -2, "client_no_context_takeover");
    lua_pushinteger(L, p->server_max_window_bits);
    lua_setfield(L, -2, "server_max_window_bits");
    lua_pushinteger(L, p->client_max_window_bits);
    lua_setfield(L, -2, "client_max_window_bits");
    lua_pushboolean(L, p->server_bits_declared);
    lua_setfield(L, -2, "server_bits_declared");
    lua_pushboolean(L, p->client_bits_declared);
    lua_setfield(L, -2, "client_bits_declared");
}

/* negotiate(cfg, "header" | {"value1", "value2"}) -> response, params | nil */
static int l_negotiate(lua_State *L) {
    const struct deflate_config *cfg = luaL_checkudata(L, 1, CFG_MT);
    const char *vals[16];
    size_t lens[16];
    size_t n = 0;
    if (lua_istable(L, 2)) {
        n = (size_t)luaL_len(L, 2);
        luaL_argcheck(L, n <= 16, 2, "at most 16 values");
        for (size_t i = 0; i < n; i++) {
            lua_rawgeti(L, 2, (lua_Integer)i + 1);
            vals[i] = luaL_checklstring(L, -1, &lens[i]);
            lua_pop(L, 1); /* kept alive by the table */
        }
    } else {
        vals[0] = luaL_checklstring(L, 2, &lens[0]);
        n = 1;
    }
    struct deflate_params p;
    char resp[DEFLATE_RESPONSE_MAX];
    if (!deflate_negotiate(cfg, vals, lens, n, &p, resp)) {
        lua_pushnil(L);
        return 1;
    }
    lua_pushstring(L, resp);
    push_params(L, &p);
    return 2;
}

static int get_bool(lua_State *L, int t, const char *k) {
    lua_getfield(L, t, k);
    int v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

/* new(cfg [, params]) -> conn; params as returned by negotiate (bits default 15) */
static int l_new(lua_State *L) {
    const struct deflate_config *cfg = luaL_checkudata(L, 1, CFG_MT);
    struct deflate_params p = {0, 0, 15, 15, 0, 0};
    if (lua_istable(L, 2)) {
        p.server_no_context_takeover = (uint8_t)get_bool(L, 2, "server_no_context_takeover");
        p.client_no_context_takeover = (uint8_t)get_bool(L, 2, "client_no_context_takeover");
        p.server_max_window_bits = (uint8_t)opt_int(L, 2, "server_max_window_bits", 15);
        p.client_max_window_bits = (uint8_t)opt_int(L, 2, "client_max_window_bits", 15);
    }
    struct ws_deflate *d = lua_newuserdatauv(L, sizeof *d, 1);
    deflate_init(d, cfg, &p);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1); /* keep the config alive */
    luaL_setmetatable(L, CONN_MT);
    return 1;
}

static int l_conn_gc(lua_State *L) {
    deflate_free(luaL_checkudata(L, 1, CONN_MT));
    return 0;
}

/* conn:inflate(payload [, max_out]) -> message | nil, code */
static int l_conn_inflate(lua_State *L) {
    struct ws_deflate *d = luaL_checkudata(L, 1, CONN_MT);
    size_t len;
    const char *in = luaL_checklstring(L, 2, &len);
    size_t max_out = (size_t)luaL_optinteger(L, 3, 64 * 1024 * 1024);
    uint8_t *out;
    size_t out_len;
    int rc = deflate_inflate_message(d, (const uint8_t *)in, len, max_out, &out, &out_len);
    if (rc != 0) {
        lua_pushnil(L);
        lua_pushinteger(L, -rc);
        return 2;
    }
    lua_pushlstring(L, out_len ? (const char *)out : "", out_len);
    free(out);
    return 1;
}

static int push_compressed(lua_State *L, int rc, uint8_t *out, size_t headroom, size_t out_len) {
    if (rc != 0) {
        lua_pushnil(L);
        lua_pushinteger(L, -rc);
        return 2;
    }
    /* the headroom must be there and writable */
    memset(out, 0xAA, headroom);
    lua_pushlstring(L, (const char *)out + headroom, out_len);
    free(out);
    return 1;
}

/* conn:compress(message [, headroom]) -> payload */
static int l_conn_compress(lua_State *L) {
    struct ws_deflate *d = luaL_checkudata(L, 1, CONN_MT);
    size_t len;
    const char *in = luaL_checklstring(L, 2, &len);
    size_t headroom = (size_t)luaL_optinteger(L, 3, 0);
    uint8_t *out;
    size_t out_len;
    int rc = deflate_compress_message(d, (const uint8_t *)in, len, headroom, &out, &out_len);
    return push_compressed(L, rc, out, headroom, out_len);
}

static int l_conn_trim(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)deflate_trim(luaL_checkudata(L, 1, CONN_MT)));
    return 1;
}

/* conn:mem() -> bytes held, has inflater state, has deflater state */
static int l_conn_mem(lua_State *L) {
    struct ws_deflate *d = luaL_checkudata(L, 1, CONN_MT);
    lua_pushinteger(L, (lua_Integer)d->mem);
    lua_pushboolean(L, d->rx != NULL);
    lua_pushboolean(L, d->tx != NULL);
    return 3;
}

static int l_conn_note_shared(lua_State *L) {
    deflate_note_shared(luaL_checkudata(L, 1, CONN_MT));
    return 0;
}

static int l_conn_shared_bits(lua_State *L) {
    lua_pushinteger(L, deflate_shared_bits(luaL_checkudata(L, 1, CONN_MT)));
    return 1;
}

static int l_conn_wants(lua_State *L) {
    struct ws_deflate *d = luaL_checkudata(L, 1, CONN_MT);
    lua_pushboolean(L, deflate_wants(d, (size_t)luaL_checkinteger(L, 2)));
    return 1;
}

static int l_sizeof(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)sizeof(struct ws_deflate));
    return 1;
}

/* shared(cfg) -> shared compressor */
static int l_shared(lua_State *L) {
    const struct deflate_config *cfg = luaL_checkudata(L, 1, CFG_MT);
    struct deflate_shared *s = lua_newuserdatauv(L, sizeof *s, 1);
    deflate_shared_init(s, cfg);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1);
    luaL_setmetatable(L, SHARED_MT);
    return 1;
}

static int l_shared_gc(lua_State *L) {
    deflate_shared_free(luaL_checkudata(L, 1, SHARED_MT));
    return 0;
}

/* shared:compress(bits, message [, headroom]) -> payload */
static int l_shared_compress(lua_State *L) {
    struct deflate_shared *s = luaL_checkudata(L, 1, SHARED_MT);
    int bits = (int)luaL_checkinteger(L, 2);
    size_t len;
    const char *in = luaL_checklstring(L, 3, &len);
    size_t headroom = (size_t)luaL_optinteger(L, 4, 0);
    uint8_t *out;
    size_t out_len;
    int rc = deflate_shared_compress(s, bits, (const uint8_t *)in, len, headroom, &out, &out_len);
    return push_compressed(L, rc, out, headroom, out_len);
}

static int l_shared_mem(lua_State *L) {
    lua_pushinteger(L,
                    (lua_Integer)((struct deflate_shared *)luaL_checkudata(L, 1, SHARED_MT))->mem);
    return 1;
}

/* Reference: plain zlib, raw inflate with takeover across messages. */
static int l_ref(lua_State *L) {
    int bits = (int)luaL_optinteger(L, 1, 15);
    z_stream *zs = lua_newuserdatauv(L, sizeof *zs, 0);
    memset(zs, 0, sizeof *zs);
    if (inflateInit2(zs, -bits) != Z_OK)
        return luaL_error(L, "inflateInit2 failed");
    luaL_setmetatable(L, REF_MT);
    return 1;
}

static int l_ref_gc(lua_State *L) {
    inflateEnd(luaL_checkudata(L, 1, REF_MT));
    return 0;
}

/* ref:feed(payload) -> message | nil, zlib message */
static int l_ref_feed(lua_State *L) {
    z_stream *zs = luaL_checkudata(L, 1, REF_MT);
    size_t len;
    const char *in = luaL_checklstring(L, 2, &len);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    static const uint8_t tail[4] = {0, 0, 0xff, 0xff};
    for (int part = 0; part < 2; part++) {
        zs->next_in = part ? (Bytef *)tail : (Bytef *)in;
        zs->avail_in = part ? 4 : (uInt)len;
        do {
            char *p = luaL_prepbuffsize(&b, 65536);
            zs->next_out = (Bytef *)p;
            zs->avail_out = 65536;
            int rc = inflate(zs, Z_SYNC_FLUSH);
            if (rc != Z_OK && rc != Z_BUF_ERROR && rc != Z_STREAM_END) {
                lua_pushnil(L);
                lua_pushstring(L, zs->msg ? zs->msg : "inflate error");
                return 2;
            }
            luaL_addsize(&b, 65536 - zs->avail_out);
            if (rc == Z_STREAM_END)
                break;
        } while (zs->avail_out == 0);
    }
    luaL_pushresult(&b);
    return 1;
}

/* zdeflate(message, bits [, level]) -> raw deflate payload, Z_SYNC_FLUSH, tail
 * stripped, fresh context (plain zlib, for feeding the inflater). */
static int l_zdeflate(lua_State *L) {
    size_t len;
    const char *in = luaL_checklstring(L, 1, &len);
    int bits = (int)luaL_optinteger(L, 2, 15);
    int level = (int)luaL_optinteger(L, 3, -1);
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (deflateInit2(&zs, level, Z_DEFLATED, -bits, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        return luaL_error(L, "deflateInit2 failed");
    size_t cap = deflateBound(&zs, len) + 16;
    char *out = malloc(cap);
    zs.next_in = (Bytef *)in;
    zs.avail_in = (uInt)len;
    zs.next_out = (Bytef *)out;
    zs.avail_out = (uInt)cap;
    deflate(&zs, Z_SYNC_FLUSH);
    size_t n = cap - zs.avail_out;
    deflateEnd(&zs);
    lua_pushlstring(L, out, n >= 4 ? n - 4 : n);
    free(out);
    return 1;
}

/* zeros_bomb(n) -> compressed payload of n zero bytes (streamed: never holds n bytes) */
static int l_zeros_bomb(lua_State *L) {
    lua_Integer n = luaL_checkinteger(L, 1);
    static const uint8_t zeros[65536];
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (deflateInit2(&zs, 9, Z_DEFLATED, -15, 9, Z_DEFAULT_STRATEGY) != Z_OK)
        return luaL_error(L, "deflateInit2 failed");
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    lua_Integer left = n;
    for (;;) {
        uInt take = left > 65536 ? 65536 : (uInt)left;
        left -= take;
        zs.next_in = (Bytef *)zeros;
        zs.avail_in = take;
        int flush = left == 0 ? Z_SYNC_FLUSH : Z_NO_FLUSH;
        do {
            char *p = luaL_prepbuffsize(&b, 65536);
            zs.next_out = (Bytef *)p;
            zs.avail_out = 65536;
            deflate(&zs, flush);
            luaL_addsize(&b, 65536 - zs.avail_out);
        } while (zs.avail_out == 0);
        if (left == 0)
            break;
    }
    deflateEnd(&zs);
    luaL_pushresult(&b);
    size_t blen;
    const char *s = lua_tolstring(L, -1, &blen);
    lua_pushlstring(L, s, blen - 4);
    return 1;
}

/* zstream(bits [, level]) -> a raw deflater that keeps its context across
 * messages, as a client with context takeover compresses (plain zlib). */
static int l_zstream(lua_State *L) {
    int bits = (int)luaL_optinteger(L, 1, 15);
    int level = (int)luaL_optinteger(L, 2, -1);
    z_stream *zs = lua_newuserdatauv(L, sizeof *zs, 0);
    memset(zs, 0, sizeof *zs);
    /* zlib refuses a raw window of 8; 9 also fits an 8-bit window's peer */
    if (deflateInit2(zs, level, Z_DEFLATED, -(bits < 9 ? 9 : bits), 8, Z_DEFAULT_STRATEGY) != Z_OK)
        return luaL_error(L, "deflateInit2 failed");
    luaL_setmetatable(L, ZSTREAM_MT);
    return 1;
}

static int l_zstream_gc(lua_State *L) {
    deflateEnd(luaL_checkudata(L, 1, ZSTREAM_MT));
    return 0;
}

/* zstream:push(message) -> payload (Z_SYNC_FLUSH, the 00 00 ff ff tail stripped) */
static int l_zstream_push(lua_State *L) {
    z_stream *zs = luaL_checkudata(L, 1, ZSTREAM_MT);
    size_t len;
    const char *in = luaL_checklstring(L, 2, &len);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    zs->next_in = (Bytef *)in;
    zs->avail_in = (uInt)len;
    do {
        char *p = luaL_prepbuffsize(&b, 65536);
        zs->next_out = (Bytef *)p;
        zs->avail_out = 65536;
        deflate(zs, Z_SYNC_FLUSH);
        luaL_addsize(&b, 65536 - zs->avail_out);
    } while (zs->avail_out == 0);
    luaL_pushresult(&b);
    size_t blen;
    const char *s = lua_tolstring(L, -1, &blen);
    lua_pushlstring(L, s, blen - 4);
    return 1;
}

/* maxrss() -> peak resident set of this process, KiB */
static int l_maxrss(lua_State *L) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    lua_pushinteger(L, ru.ru_maxrss);
    return 1;
}

static void new_mt(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction gc) {
    luaL_newmetatable(L, name);
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    if (gc) {
        lua_pushcfunction(L, gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
}

int luaopen_sbt_deflate(lua_State *L) {
    static const luaL_Reg conn[] = {{"inflate", l_conn_inflate},
                                    {"compress", l_conn_compress},
                                    {"trim", l_conn_trim},
                                    {"mem", l_conn_mem},
                                    {"note_shared", l_conn_note_shared},
                                    {"shared_bits", l_conn_shared_bits},
                                    {"wants", l_conn_wants},
                                    {NULL, NULL}};
    static const luaL_Reg shared[] = {
        {"compress", l_shared_compress}, {"mem", l_shared_mem}, {NULL, NULL}};
    static const luaL_Reg ref[] = {{"feed", l_ref_feed}, {NULL, NULL}};
    static const luaL_Reg zstream[] = {{"push", l_zstream_push}, {NULL, NULL}};
    static const luaL_Reg none[] = {{NULL, NULL}};
    new_mt(L, CFG_MT, none, NULL);
    new_mt(L, CONN_MT, conn, l_conn_gc);
    new_mt(L, SHARED_MT, shared, l_shared_gc);
    new_mt(L, REF_MT, ref, l_ref_gc);
    new_mt(L, ZSTREAM_MT, zstream, l_zstream_gc);
    static const luaL_Reg fns[] = {{"config", l_config},
                                   {"negotiate", l_negotiate},
                                   {"new", l_new},
                                   {"shared", l_shared},
                                   {"ref", l_ref},
                                   {"zdeflate", l_zdeflate},
                                   {"zeros_bomb", l_zeros_bomb},
                                   {"zstream", l_zstream},
                                   {"maxrss", l_maxrss},
                                   {"sizeof", l_sizeof},
                                   {NULL, NULL}};
    luaL_newlib(L, fns);
    return 1;
}
