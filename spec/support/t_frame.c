/* sbt_frame — test-only bindings of the frame codec and the UTF-8 validator.
 *
 *   local t = require "sbt_frame"
 *   local d = t.new{ max_message = 1024, rsv1_ok = true }
 *   local events, consumed, code, reason = d:feed(bytes [, stop])
 *     events: { {type = "message"|"control", opcode = n, data = s, compressed = b}, ... }
 *     consumed: bytes consumed, or nil on error (then code, reason)
 *     stop: when true every callback asks feed to stop after its frame
 *   d:buffers() -> has a reassembly buffer, has a control buffer, msg capacity
 *   d:close()   releases the C buffers (also __gc and __close)
 *   t.header(opcode, fin, rsv1, len) -> bytes
 *   t.mask(bytes, key4 [, off]) -> bytes
 *   t.unmask_ascii(bytes, key4) -> bytes (as t.mask from offset 0), ascii prefix length
 *   t.close_parse(bytes) -> code, reason | nil, errcode
 *   t.close_code_valid(code) -> boolean
 *   t.utf8(bytes [, state]) -> state, valid
 */
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "frame.h"
#include "utf8.h"

#define DECODER_MT "sbt_frame.decoder"

struct tdec {
    struct ws_decoder d; /* its buffers are owned here; freed in __gc/__close */
};

struct feed_ctx {
    lua_State *L;
    int events; /* stack index of the events table */
    int stop;
};

static void push_event(struct feed_ctx *c, const char *type, int opcode, const uint8_t *data,
                       size_t len) {
    lua_State *L = c->L;
    lua_createtable(L, 0, 4);
    lua_pushstring(L, type);
    lua_setfield(L, -2, "type");
    lua_pushinteger(L, opcode);
    lua_setfield(L, -2, "opcode");
    lua_pushlstring(L, (const char *)data, len);
    lua_setfield(L, -2, "data");
}

static int on_message(void *ud, int opcode, uint8_t *data, size_t len, int compressed) {
    struct feed_ctx *c = ud;
    push_event(c, "message", opcode, data, len);
    lua_pushboolean(c->L, compressed);
    lua_setfield(c->L, -2, "compressed");
    lua_rawseti(c->L, c->events, (lua_Integer)lua_rawlen(c->L, c->events) + 1);
    return c->stop;
}

static int on_control(void *ud, int opcode, uint8_t *data, size_t len) {
    struct feed_ctx *c = ud;
    push_event(c, "control", opcode, data, len);
    lua_rawseti(c->L, c->events, (lua_Integer)lua_rawlen(c->L, c->events) + 1);
    return c->stop;
}

static struct tdec *check_dec(lua_State *L) {
    return luaL_checkudata(L, 1, DECODER_MT);
}

static int l_new(lua_State *L) {
    struct tdec *t = lua_newuserdatauv(L, sizeof *t, 0);
    memset(t, 0, sizeof *t);
    luaL_setmetatable(L, DECODER_MT);
    if (lua_istable(L, 1)) {
        lua_getfield(L, 1, "max_message");
        t->d.max_message = (uint32_t)luaL_optinteger(L, -1, 0);
        lua_getfield(L, 1, "rsv1_ok");
        t->d.rsv1_ok = (uint8_t)lua_toboolean(L, -1);
        lua_pop(L, 2);
    }
    return 1;
}

static int l_feed(lua_State *L) {
    struct tdec *t = check_dec(L);
    size_t len;
    const char *s = luaL_checklstring(L, 2, &len);
    struct feed_ctx c = {L, 0, lua_toboolean(L, 3)};
    /* The decoder unmasks in place: give it a private copy of exactly len
     * bytes (Lua-owned, so a raise cannot leak it; ASan sees any overread). */
    uint8_t *buf = lua_newuserdatauv(L, len ? len : 1, 0);
    memcpy(buf, s, len);
    lua_newtable(L);
    c.events = lua_gettop(L);
    struct ws_decoder_cb cb = {on_message, on_control};
    ssize_t n = ws_decoder_feed(&t->d, buf, len, &cb, &c);
    if (n < 0) {
        lua_pushnil(L);
        lua_pushinteger(L, -n);
        lua_pushstring(L, ws_decoder_error(&t->d) ? ws_decoder_error(&t->d) : "?");
        return 4;
    }
    lua_pushinteger(L, n);
    return 2;
}

static int l_buffers(lua_State *L) {
    struct tdec *t = check_dec(L);
    lua_pushboolean(L, t->d.msg != NULL);
    lua_pushboolean(L, t->d.ctl != NULL);
    lua_pushinteger(L, (lua_Integer)t->d.msg_cap);
    return 3;
}

static int l_gc(lua_State *L) {
    struct tdec *t = check_dec(L);
    ws_decoder_free(&t->d);
    return 0;
}

static int l_header(lua_State *L) {
    int opcode = (int)luaL_checkinteger(L, 1);
    int fin = lua_toboolean(L, 2);
    int rsv1 = lua_toboolean(L, 3);
    lua_Integer len = luaL_checkinteger(L, 4);
    luaL_argcheck(L, len >= 0, 4, "negative length");
    uint8_t out[10];
    size_t n = ws_frame_header(out, opcode, fin, rsv1, (uint64_t)len);
    lua_pushlstring(L, (const char *)out, n);
    return 1;
}

static int l_mask(lua_State *L) {
    size_t len, klen;
    const char *s = luaL_checklstring(L, 1, &len);
    const char *key = luaL_checklstring(L, 2, &klen);
    luaL_argcheck(L, klen == 4, 2, "4-byte key expected");
    lua_Integer off = luaL_optinteger(L, 3, 0);
    luaL_argcheck(L, off >= 0 && off <= 3, 3, "offset 0-3 expected");
    uint8_t *buf = lua_newuserdatauv(L, len ? len : 1, 0);
    memcpy(buf, s, len);
    ws_mask(buf, len, (const uint8_t *)key, (unsigned)off);
    lua_pushlstring(L, (const char *)buf, len);
    return 1;
}

static int l_unmask_ascii(lua_State *L) {
    size_t len, klen;
    const char *s = luaL_checklstring(L, 1, &len);
    const char *key = luaL_checklstring(L, 2, &klen);
    luaL_argcheck(L, klen == 4, 2, "4-byte key expected");
    uint8_t *buf = lua_newuserdatauv(L, len ? len : 1, 0);
    memcpy(buf, s, len);
    size_t a = ws_unmask_ascii(buf, len, (const uint8_t *)key);
    lua_pushlstring(L, (const char *)buf, len);
    lua_pushinteger(L, (lua_Integer)a);
    return 2;
}

static int l_close_parse(lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    unsigned code;
    const char *reason;
    size_t rlen;
    int rc = ws_close_parse((const uint8_t *)s, len, &code, &reason, &rlen);
    if (rc) {
        lua_pushnil(L);
        lua_pushinteger(L, -rc);
        return 2;
    }
    lua_pushinteger(L, code);
    lua_pushlstring(L, reason, rlen);
    return 2;
}

static int l_close_code_valid(lua_State *L) {
    lua_Integer code = luaL_checkinteger(L, 1);
    lua_pushboolean(L, code >= 0 && code <= 0xffff && ws_close_code_valid((unsigned)code));
    return 1;
}

static int l_utf8(lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    lua_Integer st = luaL_optinteger(L, 2, UTF8_ACCEPT);
    uint32_t state = utf8_validate((uint32_t)st, (const uint8_t *)s, len);
    lua_pushinteger(L, state);
    lua_pushboolean(L, state == UTF8_ACCEPT);
    return 2;
}

int luaopen_sbt_frame(lua_State *L) {
    static const luaL_Reg methods[] = {
        {"feed", l_feed},
        {"buffers", l_buffers},
        {"close", l_gc},
        {NULL, NULL},
    };
    static const luaL_Reg funcs[] = {
        {"new", l_new},
        {"header", l_header},
        {"mask", l_mask},
        {"unmask_ascii", l_unmask_ascii},
        {"close_parse", l_close_parse},
        {"close_code_valid", l_close_code_valid},
        {"utf8", l_utf8},
        {NULL, NULL},
    };
    luaL_newmetatable(L, DECODER_MT);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_gc);
    lua_setfield(L, -2, "__close");
    lua_pop(L, 1);
    luaL_newlib(L, funcs);
    lua_pushinteger(L, UTF8_ACCEPT);
    lua_setfield(L, -2, "UTF8_ACCEPT");
    lua_pushinteger(L, UTF8_REJECT);
    lua_setfield(L, -2, "UTF8_REJECT");
    return 1;
}
