/* script.c — the Lua side's core: the lua_State (memory cap, instruction
 * budget, the guards that keep a spent budget spent), protected calls, the
 * request tables and the dispatch of events to route handlers. The `ws`
 * userdata is in script_ws.c, the `switchboard` module and timers in
 * script_module.c, route loading and reload in script_route.c. */
#define _GNU_SOURCE
#include "script.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "conn.h"
#include "handshake.h"
#include "http.h"
#include "log.h"
#include "script_int.h"
#include "loop.h"
#include "utf8.h"

#define STOPPED_KEY "switchboard.stopped" /* weak keys: coroutines the budget stopped */

/* ---- memory cap and instruction budget --------------------------------------- */

static void *l_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
    struct script *s = ud;
    if (nsize == 0) {
        if (ptr)
            s->mem -= osize;
        free(ptr);
        return NULL;
    }
    size_t old = ptr ? osize : 0;
    if (nsize > old && s->in_handler && s->mem + (nsize - old) > s->mem_cap)
        return NULL; /* Lua raises a memory error in the running handler */
    void *p = realloc(ptr, nsize);
    if (p)
        s->mem = s->mem - old + nsize;
    return p;
}

/* Count hook, every HOOK_EVERY instructions of a handler. Once the budget is
 * spent it raises at every instruction of every thread (count 1) until the
 * outermost protected call returns: a pcall, an xpcall message handler, a
 * __close or a coroutine that catches the error gets no instruction to go on
 * with, so the error climbs to the handler's own protected call. */
static void l_hook(lua_State *L, lua_Debug *ar) {
    (void)ar;
    struct script *s = get_script(L);
    if (!s->in_handler)
        return;
    if (!s->budget_hit) {
        if (lua_gethookcount(L) != HOOK_EVERY) { /* a thread left at count 1 by a spent budget */
            lua_sethook(L, l_hook, LUA_MASKCOUNT, HOOK_EVERY);
            return;
        }
        if (--s->budget_ticks >= 0)
            return;
        s->budget_hit = 1;
    }
    lua_sethook(L, l_hook, LUA_MASKCOUNT, 1);
    if (L != s->L) {
        lua_sethook(s->L, l_hook, LUA_MASKCOUNT, 1); /* new coroutines copy the main hook */
        if (s->cur_co && s->cur_co != L) /* the handler's own coroutine, under a script's */
            lua_sethook(s->cur_co, l_hook, LUA_MASKCOUNT, 1);
        /* an error raised in a hook leaves the thread with hooks off: its
         * __close variables must never run (see sb_coclose) */
        lua_getfield(L, LUA_REGISTRYINDEX, STOPPED_KEY);
        lua_pushthread(L);
        lua_pushboolean(L, 1);
        lua_rawset(L, -3);
        lua_pop(L, 1);
    }
    luaL_error(L, "instruction budget exceeded (--lua-budget %I)",
               (lua_Integer)s->srv->cfg.lua_budget);
}

static int l_traceback(lua_State *L) {
    /* the innermost Lua function on the stack raised it (or called `error`) */
    struct script *s = get_script(L);
    lua_Debug ar;
    s->err_line = 0;
    for (int level = 1; lua_getstack(L, level, &ar); level++) {
        if (lua_getinfo(L, "Sl", &ar) && ar.currentline > 0) {
            snprintf(s->err_src, sizeof s->err_src, "%s",
                     ar.source[0] == '@' ? ar.source + 1 : ar.short_src);
            s->err_line = ar.currentline;
            break;
        }
    }
    const char *msg = lua_tostring(L, 1);
    if (!msg)
        msg = luaL_tolstring(L, 1, NULL);
    luaL_traceback(L, L, msg, 1);
    return 1;
}

static void run_finalizers(struct script *s);
static void log_error_what(struct script *s, int rc, int hit, const char *what, const char *handler,
                           const char *kind, int outer);

/* (script_int.h) */
void script__log_fields(struct script *s, struct log_fields *f, char *rb, size_t cap) {
    struct route *r = s->cur_route;
    if (r) {
        f->route = r->path;
        f->script = r->file;
    }
    if (s->err_line > 0) {
        f->script = s->err_src;
        f->line = s->err_line;
    }
    if (s->cur_conn) {
        f->conn = s->cur_conn->id;
        f->remote = conn_remote(s->cur_conn, rb, cap);
    }
}

/* (script_int.h) */
void script__budget_rehook(struct script *s) {
    lua_sethook(s->L, l_hook, LUA_MASKCOUNT, HOOK_EVERY);
}

/* (script_int.h) The failure text is formatted only on failure, since this
 * runs per message. */
void script__log_failure(struct script *s, int rc, int hit, const char *handler, const char *kind) {
    log_error_what(s, rc, hit, NULL, handler, kind, 0);
}

static void log_error_what(struct script *s, int rc, int hit, const char *what, const char *handler,
                           const char *kind, int outer) {
    lua_State *L = s->L;
    const char *err = lua_tostring(L, -1);
    char buf[512];
    if (!what && !s->cur_route && s->cur_mod) {
        int top = lua_gettop(L);
        lua_getfield(L, LUA_REGISTRYINDEX, MODS_KEY);
        const char *file = lua_getfield(L, -1, s->cur_mod) == LUA_TTABLE &&
                                   lua_getfield(L, -1, "file") == LUA_TSTRING
                               ? lua_tostring(L, -1)
                               : "?";
        snprintf(buf, sizeof buf, "module %s (%s): %s %s failed", s->cur_mod, file,
                 handler ? handler : "a", kind);
        lua_settop(L, top);
        what = buf;
    }
    if (!what) {
        struct route *r = s->cur_route;
        snprintf(buf, sizeof buf, "route %s (%s): %s %s failed", r ? r->path : "?",
                 r ? r->file : "?", handler ? handler : "a", kind);
        what = buf;
    }
    s->srv->stats.handler_errors++;
    if (hit)
        s->srv->stats.budget_stops++;
    struct log_fields lf = {0};
    char rb[64];
    script__log_fields(s, &lf, rb, sizeof rb);
    if (s->check) {
        char oom[128];
        snprintf(oom, sizeof oom, "out of memory (Lua state past --lua-memory %zu bytes)",
                 s->mem_cap);
        script__check_error(s, rc == LUA_ERRMEM ? oom
                               : err            ? err
                                                : "(error object is not a string)");
    } else if (rc == LUA_ERRMEM)
        log_with(LOG_ERROR, &lf, "%s: out of memory (Lua state past --lua-memory %zu bytes)", what,
                 s->mem_cap);
    else
        log_with(LOG_ERROR, &lf, "%s: %s", what, err ? err : "(error object is not a string)");
    s->err_line = 0;
    lua_pop(L, 1);
    /* No collection after an error: a client that makes a handler raise
     * must not buy a full GC per message, and an allocation past the cap
     * makes Lua collect in an emergency first. Only past the cap: a
     * memory error raised inside a collection step can leave Lua's
     * emergency collector off for good (with the collector stopped by a
     * script nothing turns it back on), and this handler's garbage is
     * still there; one full collection outside the cap resets both. */
    if (rc == LUA_ERRMEM && !outer)
        lua_gc(L, LUA_GCCOLLECT);
}

/* (script_int.h) */
void script__after_call(struct script *s) {
    if (s->gc_queued && !s->in_finalizers)
        run_finalizers(s);
}

/* (script_int.h) The failure text is formatted only on failure, since this
 * runs per message. The scripts' __gc finalizers queued meanwhile run after
 * the outermost call. */
int script__pcall(struct script *s, int nargs, int nres, const char *what, const char *handler,
                  const char *kind) {
    lua_State *L = s->L;
    int outer = s->in_handler;
    if (!outer)
        script__budget_begin(s);
    double t0 = !outer && sb_metrics_on(s->srv) ? server_clock() : 0;
    /* the message handler lives at stack index 1 of the main state for good
     * (pushed in script_new): no push and rotate per call */
    int rc = lua_pcall(L, nargs, nres, TRACEBACK_INDEX);
    if (t0 > 0)
        stats_observe_handler(&s->srv->stats, server_clock() - t0);
    int hit = outer ? s->budget_hit : script__budget_end(s);
    if (rc != LUA_OK)
        log_error_what(s, rc, hit, what, handler, kind, outer);
    if (!outer)
        script__after_call(s);
    return rc == LUA_OK ? 0 : -1;
}

/* ---- what could run on past a spent budget ------------------------------------- */

/* An error raised from a hook leaves Lua's hooks off until a protected call
 * catches it, so Lua code the VM runs before that point (an xpcall message
 * handler; the __close variables of a coroutine closed after it died) would
 * run unbounded. These replace the standard functions that could run it. */

static int budget_error(lua_State *L, struct script *s) {
    return luaL_error(L, "instruction budget exceeded (--lua-budget %I)",
                      (lua_Integer)s->srv->cfg.lua_budget);
}

static int xpcall_handler(lua_State *L) {
    if (get_script(L)->budget_hit) /* no Lua handler while stopping */
        return 1;
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    return 1;
}

static int xpcall_cont(lua_State *L, int status, lua_KContext ctx) {
    (void)status;
    (void)ctx;
    return lua_gettop(L);
}

/* xpcall(f, msgh, ...): the standard one (upvalue 1) with msgh behind
 * xpcall_handler; f may wait (a continuation: yields pass through). */
static int sb_xpcall(lua_State *L) {
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_pushvalue(L, 2);
    lua_pushcclosure(L, xpcall_handler, 1);
    lua_replace(L, 2);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_callk(L, lua_gettop(L) - 1, LUA_MULTRET, 0, xpcall_cont);
    return xpcall_cont(L, LUA_OK, 0);
}

static int thread_stopped(lua_State *L, int idx) {
    idx = lua_absindex(L, idx);
    lua_getfield(L, LUA_REGISTRYINDEX, STOPPED_KEY);
    lua_pushvalue(L, idx);
    int stopped = lua_rawget(L, -2) != LUA_TNIL;
    lua_pop(L, 2);
    return stopped;
}

/* coroutine.close(co): as the standard one (upvalue 1), but a coroutine the
 * budget stopped is dead without running its __close variables. */
static int sb_coclose(lua_State *L) {
    struct script *s = get_script(L);
    if (lua_type(L, 1) == LUA_TTHREAD && thread_stopped(L, 1)) {
        lua_pushboolean(L, 0);
        lua_pushfstring(L, "instruction budget exceeded (--lua-budget %I)",
                        (lua_Integer)s->srv->cfg.lua_budget);
        return 2;
    }
    if (s->budget_hit)
        return budget_error(L, s);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

/* The function coroutine.wrap returns (lcorolib's auxwrap), closing a failed
 * coroutine's __close variables only when the budget did not stop it. */
static int wrap_resume(lua_State *L) {
    lua_State *co = lua_tothread(L, lua_upvalueindex(1));
    int narg = lua_gettop(L), nres;
    if (!lua_checkstack(co, narg))
        return luaL_error(L, "too many arguments to resume");
    lua_xmove(L, co, narg);
    int rc = lua_resume(co, L, narg, &nres);
    if (rc == LUA_OK || rc == LUA_YIELD) {
        if (!lua_checkstack(L, nres + 1)) {
            lua_pop(co, nres);
            return luaL_error(L, "too many results to resume");
        }
        lua_xmove(co, L, nres);
        return nres;
    }
    int st = lua_status(co);
    if (st != LUA_OK && st != LUA_YIELD) { /* an error in the coroutine */
        lua_pushthread(co);
        int stopped = thread_stopped(co, -1);
        lua_pop(co, 1);
        if (!stopped)
            st = lua_resetthread(co);
    }
    lua_xmove(co, L, 1);
    if (st != LUA_ERRMEM && lua_type(L, -1) == LUA_TSTRING) {
        luaL_where(L, 1);
        lua_insert(L, -2);
        lua_concat(L, 2);
    }
    return lua_error(L);
}

static int sb_cowrap(lua_State *L) {
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_State *co = lua_newthread(L);
    lua_pushvalue(L, 1);
    lua_xmove(L, co, 1);
    lua_pushcclosure(L, wrap_resume, 1);
    return 1;
}

/* Put the guarded functions in place of the standard ones. */
static void install_guards(lua_State *L) {
    lua_newtable(L);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_pushvalue(L, -1);
    lua_setmetatable(L, -3);
    lua_setfield(L, LUA_REGISTRYINDEX, "switchboard.weakk");
    lua_setfield(L, LUA_REGISTRYINDEX, STOPPED_KEY);
    lua_getglobal(L, "xpcall");
    lua_pushcclosure(L, sb_xpcall, 1);
    lua_setglobal(L, "xpcall");
    lua_getglobal(L, "coroutine");
    lua_getfield(L, -1, "close");
    lua_pushcclosure(L, sb_coclose, 1);
    lua_setfield(L, -2, "close");
    lua_pushcfunction(L, sb_cowrap);
    lua_setfield(L, -2, "wrap");
    lua_pop(L, 1);
}

/* ---- __gc finalizers of scripts ---------------------------------------------------- */

/* Lua runs finalizers inside the collector with hooks off, where the budget
 * cannot stop one that loops. So a script's __gc (a Lua function, or anything
 * else but a C function: a table's __call is Lua too) is replaced, when
 * setmetatable or debug.setmetatable sees it, by gc_defer, which queues the object and its
 * finalizer; run_finalizers calls them after the handler, each under its own
 * budget. A finalizer still runs once per object, only later. */
#define GC_FNS_KEY "switchboard.gcfns"     /* weak keys: metatable -> the script's __gc */
#define GC_QUEUE_KEY "switchboard.gcqueue" /* list of {finalizer, object} to run */

static int gc_defer(lua_State *L) {
    struct script *s = get_script(L);
    if (!lua_getmetatable(L, 1))
        return 0;
    lua_getfield(L, LUA_REGISTRYINDEX, GC_FNS_KEY);
    lua_insert(L, -2);
    if (lua_rawget(L, -2) == LUA_TNIL)
        return 0;
    lua_getfield(L, LUA_REGISTRYINDEX, GC_QUEUE_KEY);
    lua_createtable(L, 2, 0);
    lua_pushvalue(L, -3);
    lua_rawseti(L, -2, 1);
    lua_pushvalue(L, 1); /* the object lives on until its finalizer ran */
    lua_rawseti(L, -2, 2);
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
    s->gc_queued = 1;
    return 0;
}

/* setmetatable (and debug.setmetatable) for scripts: the standard one
 * (upvalue 1), after moving the metatable's __gc to GC_FNS_KEY and putting
 * gc_defer in its place. */
static int sb_setmetatable(lua_State *L) {
    if (lua_type(L, 2) == LUA_TTABLE) {
        lua_pushliteral(L, "__gc");
        if (lua_rawget(L, 2) != LUA_TNIL && !lua_iscfunction(L, -1)) {
            lua_getfield(L, LUA_REGISTRYINDEX, GC_FNS_KEY);
            lua_pushvalue(L, 2);
            lua_pushvalue(L, -3);
            lua_rawset(L, -3);
            lua_pop(L, 1);
            lua_pushliteral(L, "__gc");
            lua_pushcfunction(L, gc_defer);
            lua_rawset(L, 2);
        }
        lua_pop(L, 1);
    }
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

static void install_finalizers(lua_State *L) {
    lua_newtable(L);
    lua_getfield(L, LUA_REGISTRYINDEX, "switchboard.weakk");
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, GC_FNS_KEY);
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, GC_QUEUE_KEY);
    lua_getglobal(L, "setmetatable");
    lua_pushcclosure(L, sb_setmetatable, 1);
    lua_setglobal(L, "setmetatable");
    if (lua_getglobal(L, "debug") == LUA_TTABLE) {
        lua_getfield(L, -1, "setmetatable");
        lua_pushcclosure(L, sb_setmetatable, 1);
        lua_setfield(L, -2, "setmetatable");
    }
    lua_pop(L, 1);
}

/* Run the queued finalizers, each a handler call of its own. A few rounds
 * (finalizers may free more objects with finalizers); the rest wait for the
 * next handler, so a chain of them cannot hold the loop. */
static void run_finalizers(struct script *s) {
    lua_State *L = s->L;
    s->in_finalizers = 1;
    for (int round = 0; round < 4 && s->gc_queued; round++) {
        s->gc_queued = 0;
        lua_getfield(L, LUA_REGISTRYINDEX, GC_QUEUE_KEY);
        lua_newtable(L);
        lua_setfield(L, LUA_REGISTRYINDEX, GC_QUEUE_KEY);
        lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
        for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, i);
            lua_rawgeti(L, -1, 1);
            lua_rawgeti(L, -2, 2);
            lua_remove(L, -3);
            protected_call(s, 1, 0, "__gc finalizer failed");
        }
        lua_pop(L, 1);
    }
    s->in_finalizers = 0;
}

/* ---- misuse errors ------------------------------------------------------------- */

/* Misuse errors worded like lauxlib's, but naming the function and counting
 * arguments as a method call does (ws:send(x): x is #1) however the function
 * was called (pcall(ws.send, ws, x) included), at the calling script's line. */
int script__arg_error(lua_State *L, int n, const char *fn, const char *msg) {
    luaL_where(L, 1);
    lua_pushfstring(L, "bad argument #%d to '%s' (%s)", n, fn, msg);
    lua_concat(L, 2);
    return lua_error(L);
}

int script__type_error(lua_State *L, int idx, int n, const char *fn, const char *want) {
    const char *got = lua_isnone(L, idx) ? "no value" : luaL_typename(L, idx);
    return script__arg_error(L, n, fn, lua_pushfstring(L, "%s expected, got %s", want, got));
}

/* Argument idx as a string (a number converts), or a misuse error for #n. */
const char *script__arg_string(lua_State *L, int idx, int n, const char *fn, size_t *len) {
    int t = lua_type(L, idx);
    if (t != LUA_TSTRING && t != LUA_TNUMBER)
        script__type_error(L, idx, n, fn, "string");
    return lua_tolstring(L, idx, len);
}

const char *script__arg_optstring(lua_State *L, int idx, int n, const char *fn, size_t *len) {
    if (lua_isnoneornil(L, idx)) {
        *len = 0;
        return "";
    }
    return script__arg_string(L, idx, n, fn, len);
}

const char *script__arg_topic(lua_State *L, int idx, int n, const char *fn, size_t *len) {
    const char *t = script__arg_string(L, idx, n, fn, len);
    if (*len == 0)
        script__arg_error(L, n, fn, "topic must not be empty");
    return t;
}

int script__is_utf8(const char *p, size_t len) {
    return utf8_validate(UTF8_ACCEPT, (const uint8_t *)p, len) == UTF8_ACCEPT;
}

int script__text_ok(struct script *s, const char *p, size_t len) {
    if (p == s->valid_text && len == s->valid_len)
        return 1;
    return script__is_utf8(p, len);
}

/* ---- request tables ------------------------------------------------------------- */

void script__push_path(lua_State *L, const struct http_request *req) {
    luaL_Buffer b;
    char *p = luaL_buffinitsize(L, &b, req->path_len + 1);
    long n = http_percent_decode(p, req->path, req->path_len, 0);
    luaL_pushresultsize(&b, n < 0 ? 0 : (size_t)n);
}

struct qctx {
    lua_State *L;
};

static void query_pair(void *ud, const char *k, size_t kl, const char *v, size_t vl) {
    lua_State *L = ((struct qctx *)ud)->L;
    if (kl == 0)
        return;
    luaL_Buffer b;
    char *p = luaL_buffinitsize(L, &b, kl);
    long n = http_percent_decode(p, k, kl, 1);
    if (n < 0) {
        luaL_pushresultsize(&b, 0);
        lua_pop(L, 1);
        return;
    }
    luaL_pushresultsize(&b, (size_t)n);
    if (v) {
        char *pv = luaL_buffinitsize(L, &b, vl + 1);
        long m = http_percent_decode(pv, v, vl, 1);
        luaL_pushresultsize(&b, m < 0 ? 0 : (size_t)m);
    } else {
        lua_pushliteral(L, "");
    }
    /* table key value */
    lua_pushvalue(L, -2);
    int t = lua_rawget(L, -4);
    if (t == LUA_TNIL) {
        lua_pop(L, 1);
        lua_rawset(L, -3);
    } else if (t == LUA_TTABLE) {
        lua_insert(L, -2); /* key list value */
        lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
        lua_pop(L, 2);
    } else { /* second value: make a list */
        lua_newtable(L);
        lua_insert(L, -2);
        lua_rawseti(L, -2, 1); /* key value list */
        lua_insert(L, -2);     /* key list value */
        lua_rawseti(L, -2, 2);
        lua_rawset(L, -3);
    }
}

void script__push_query(lua_State *L, const char *q, size_t len) {
    lua_newtable(L);
    struct qctx ctx = {L};
    if (q && len)
        http_query_each(q, len, query_pair, &ctx);
}

void script__push_headers(lua_State *L, const struct http_request *req) {
    lua_newtable(L);
    for (size_t i = 0; i < req->num_headers; i++) {
        const struct http_header *h = &req->headers[i];
        char name[256];
        size_t n = h->name_len < sizeof name ? h->name_len : sizeof name - 1;
        for (size_t j = 0; j < n; j++) {
            char ch = h->name[j];
            name[j] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
        }
        lua_pushlstring(L, name, n);
        lua_pushvalue(L, -1);
        if (lua_rawget(L, -3) == LUA_TSTRING) { /* repeated: join with ", " */
            lua_pushliteral(L, ", ");
            lua_pushlstring(L, h->value, h->value_len);
            lua_concat(L, 3);
        } else {
            lua_pop(L, 1);
            lua_pushlstring(L, h->value, h->value_len);
        }
        lua_rawset(L, -3);
    }
}

static void push_proto(void *ud, const char *p, size_t len) {
    lua_State *L = ud;
    lua_pushlstring(L, p, len);
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
}

static void push_request(lua_State *L, struct conn *c, const struct http_request *req,
                         const char *body, size_t body_len) {
    lua_createtable(L, 0, 9);
    lua_pushlstring(L, req->method, req->method_len);
    lua_setfield(L, -2, "method");
    script__push_path(L, req);
    lua_setfield(L, -2, "path");
    script__push_query(L, req->query, req->query_len);
    lua_setfield(L, -2, "query");
    script__push_headers(L, req);
    lua_setfield(L, -2, "headers");
    char rb[64];
    lua_pushstring(L, conn_remote(c, rb, sizeof rb));
    lua_setfield(L, -2, "remote");
    lua_newtable(L);
    handshake_each_protocol(req, push_proto, L);
    lua_setfield(L, -2, "protocols");
    const struct http_header *origin = http_find_header(req, "Origin");
    if (origin) { /* the page's origin, when a browser sent it (nil otherwise) */
        lua_pushlstring(L, origin->value, origin->value_len);
        lua_setfield(L, -2, "origin");
    }
    if (body) {
        lua_pushlstring(L, body, body_len);
        lua_setfield(L, -2, "body");
    }
}

/* Format the Lua table of headers {Name = "value"} at idx into "Name: value\r\n"
 * lines in *out (malloc'd; the caller's to free, also after an error raised
 * mid-way). Names/values with CR, LF or NUL are refused: returns why, or NULL. */
static const char *format_headers(lua_State *L, int idx, char **out) {
    if (!lua_istable(L, idx))
        return NULL;
    size_t cap = 256, len = 0;
    char *buf = *out = malloc(cap);
    if (!buf)
        return "out of memory";
    buf[0] = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) { /* raw: no __pairs, no __index */
        size_t kl, vl;
        if (lua_type(L, -2) != LUA_TSTRING || !lua_isstring(L, -1)) {
            lua_pop(L, 2);
            return "header names and values must be strings";
        }
        const char *k = lua_tolstring(L, -2, &kl);
        const char *v = lua_tolstring(L, -1, &vl);
        if (kl == 0 || strcspn(k, "\r\n: \t") != kl || strcspn(v, "\r\n") != vl) {
            lua_pop(L, 2);
            return "header name or value has a forbidden character";
        }
        size_t need = len + kl + vl + 5;
        if (need > cap) {
            while (cap < need)
                cap *= 2;
            char *n = realloc(buf, cap);
            if (!n) {
                lua_pop(L, 2);
                return "out of memory";
            }
            buf = *out = n;
        }
        len += (size_t)sprintf(buf + len, "%.*s: %.*s\r\n", (int)kl, k, (int)vl, v);
        lua_pop(L, 1);
    }
    return NULL;
}

/* lua_CFunction: (upgrade_answer, accept table) -> nil, or why it is refused.
 * The table is the script's: this runs under a protected call. */
static int read_accept(lua_State *L) {
    struct upgrade_answer *ans = lua_touserdata(L, 1);
    if (lua_getfield(L, 2, "protocol") == LUA_TSTRING) {
        ans->protocol = strdup(lua_tostring(L, -1));
        if (!ans->protocol)
            return luaL_error(L, "out of memory");
    }
    lua_getfield(L, 2, "headers");
    const char *err = format_headers(L, lua_gettop(L), &ans->headers);
    if (!err)
        return 0;
    lua_pushstring(L, err);
    return 1;
}

/* lua_CFunction: (http_answer, the request handler's result) -> nil, or why
 * it is refused. Under a protected call, as read_accept. */
static int read_response(lua_State *L) {
    struct http_answer *ans = lua_touserdata(L, 1);
    if (!lua_istable(L, 2)) {
        lua_pushfstring(L, "must return a table {status=, headers=, body=}, not %s",
                        luaL_typename(L, 2));
        return 1;
    }
    lua_getfield(L, 2, "status");
    lua_Integer st = lua_isinteger(L, -1) ? lua_tointeger(L, -1) : 200;
    if ((st < 200 || st > 599) && st != 204 && st != 304)
        st = 500;
    lua_getfield(L, 2, "headers");
    const char *err = format_headers(L, lua_gettop(L), &ans->headers);
    if (err) {
        lua_pushfstring(L, "bad headers: %s", err);
        return 1;
    }
    lua_getfield(L, 2, "body");
    size_t bl = 0;
    const char *bd = lua_tolstring(L, -1, &bl); /* a string or a number, never __tostring */
    if (bd) {
        ans->body = malloc(bl ? bl : 1);
        if (!ans->body)
            return luaL_error(L, "out of memory");
        memcpy(ans->body, bd, bl);
        ans->body_len = bl;
    }
    ans->status = (int)st;
    return 0;
}

/* Read the `nvals` values on top of the stack (a handler's result) with
 * `reader` under a protected call, for route r's `handler`; pops them.
 * Returns 0, or -1 after logging why. */
static int read_answer(struct script *s, struct route *r, const char *handler, lua_CFunction reader,
                       void *ans, int nvals) {
    lua_State *L = s->L;
    lua_pushcfunction(L, reader);
    lua_pushlightuserdata(L, ans);
    lua_rotate(L, -nvals - 2, 2);
    struct route *prev = s->cur_route;
    s->cur_route = r;
    int rc = script__pcall(s, nvals + 1, 1, NULL, handler, "answer");
    s->cur_route = prev;
    if (rc < 0)
        return -1;
    if (!lua_isnil(L, -1)) {
        log_with(LOG_ERROR, &(struct log_fields){.route = r->path, .script = r->file},
                 "route %s (%s): %s handler returned a bad answer: %s", r->path, r->file, handler,
                 lua_tostring(L, -1));
        rc = -1;
    }
    lua_pop(L, 1);
    return rc;
}

/* ---- dispatch ------------------------------------------------------------------- */

/* Push the route's handler `name`; returns 0 if it is not a function (nothing pushed). */
static int push_handler(struct script *s, struct route *r, const char *name) {
    lua_State *L = s->L;
    if (r->ref == LUA_NOREF)
        return 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->ref);
    lua_getfield(L, -1, name);
    lua_remove(L, -2);
    if (!lua_isfunction(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    return 1;
}

/* Run route r's handler `name` (pushed, below its nargs arguments) for c as a
 * call that may wait; done ends it if it does. Returns 0 (its nres results
 * pushed), -1 (failed, logged) or 1 (it waits: done runs later). */
static int run_handler(struct script *s, struct conn *c, struct route *r, const char *name,
                       int nargs, int nres,
                       void (*done)(struct script *, const struct script_call *, int)) {
    struct script_call call = {.route = r, .conn = c, .handler = name, .nres = nres, .done = done};
    return script__run(s, &call, nargs);
}

/* The upgrade handler's 3 results (on top; popped) into ans; ok=0: it failed. */
static void upgrade_results(struct script *s, struct conn *c, struct upgrade_answer *ans, int ok) {
    lua_State *L = s->L;
    memset(ans, 0, sizeof *ans);
    if (!ok) {
        ans->status = 500;
        return;
    }
    int top = lua_gettop(L);
    if (lua_toboolean(L, top - 2)) {
        if (lua_istable(L, top - 1)) {
            lua_pushvalue(L, top - 1);
            if (read_answer(s, c->route, "upgrade", read_accept, ans, 1) < 0) {
                free(ans->protocol);
                free(ans->headers);
                ans->protocol = ans->headers = NULL;
                ans->status = 500;
            }
        }
        if (ans->protocol) {
            free(c->protocol);
            c->protocol = strdup(ans->protocol);
        }
    } else {
        /* raw reads only: no metamethod runs here */
        lua_Integer st = lua_isinteger(L, top - 1) ? lua_tointeger(L, top - 1) : 403;
        if (st < 400 || st > 599) {
            char rb[64];
            log_with(LOG_ERROR,
                     &(struct log_fields){.route = c->route->path,
                                          .script = c->route->file,
                                          .conn = c->id,
                                          .remote = conn_remote(c, rb, sizeof rb)},
                     "route %s: upgrade refused with status %lld; using 403", c->route->path,
                     (long long)st);
            st = 403;
        }
        ans->status = (int)st;
        if (lua_type(L, top) == LUA_TSTRING) {
            size_t bl;
            const char *bd = lua_tolstring(L, top, &bl);
            ans->body = malloc(bl + 1);
            if (ans->body) {
                memcpy(ans->body, bd, bl);
                ans->body[bl] = 0;
                ans->body_len = bl;
            }
        }
    }
    lua_settop(L, top - 3);
}

static void upgrade_done(struct script *s, const struct script_call *call, int ok) {
    struct upgrade_answer ua;
    upgrade_results(s, call->conn, &ua, ok);
    struct conn_upgrade cu = {.status = ua.status,
                              .headers = ua.headers,
                              .body = ua.body,
                              .body_len = ua.body_len,
                              .protocol = ua.protocol};
    conn_upgrade_done(call->conn, &cu);
}

int script_upgrade(struct script *s, struct conn *c, const struct http_request *req,
                   struct upgrade_answer *ans) {
    memset(ans, 0, sizeof *ans);
    if (!push_handler(s, c->route, "upgrade"))
        return 0;
    push_request(s->L, c, req, NULL, 0);
    int rc = run_handler(s, c, c->route, "upgrade", 1, 3, upgrade_done);
    if (rc > 0)
        return 1;
    upgrade_results(s, c, ans, rc == 0);
    return 0;
}

void script_upgrade_free(struct upgrade_answer *ans) {
    free(ans->protocol);
    free(ans->headers);
    free(ans->body);
    memset(ans, 0, sizeof *ans);
}

/* The request handler's result (on top; popped) into ans; ok=0: it failed. */
static void request_results(struct script *s, struct route *r, struct http_answer *ans, int ok) {
    memset(ans, 0, sizeof *ans);
    ans->status = 500;
    if (ok && read_answer(s, r, "request", read_response, ans, 1) < 0) {
        script_response_free(ans);
        ans->status = 500;
    }
}

static void request_done(struct script *s, const struct script_call *call, int ok) {
    struct http_answer ans;
    request_results(s, call->route, &ans, ok);
    struct conn_response res = {.status = ans.status,
                                .headers = ans.headers,
                                .body = ans.body,
                                .body_len = ans.body_len,
                                .file_fd = -1};
    conn_respond(call->conn, &res);
}

int script_request(struct script *s, struct conn *c, struct route *r,
                   const struct http_request *req, const char *body, size_t body_len,
                   struct http_answer *ans) {
    memset(ans, 0, sizeof *ans);
    ans->status = 500;
    if (!push_handler(s, r, "request"))
        return 0;
    push_request(s->L, c, req, body, body_len);
    int rc = run_handler(s, c, r, "request", 1, 1, request_done);
    if (rc > 0)
        return 1;
    request_results(s, r, ans, rc == 0);
    return 0;
}

void script_response_free(struct http_answer *ans) {
    free(ans->headers);
    free(ans->body);
    memset(ans, 0, sizeof *ans);
}

/* open, message, drain: a handler that failed closes its connection with 1011. */
static void ws_done(struct script *s, const struct script_call *call, int ok) {
    (void)s;
    if (!ok)
        conn_close(call->conn, WS_CLOSE_INTERNAL, "internal error", 14);
}

void script_open(struct script *s, struct conn *c) {
    if (!push_handler(s, c->route, "open"))
        return;
    script__push_ws(s, c);
    if (run_handler(s, c, c->route, "open", 1, 0, ws_done) < 0)
        conn_close(c, WS_CLOSE_INTERNAL, "internal error", 14);
}

void script_message(struct script *s, struct conn *c, const uint8_t *data, size_t len, int binary) {
    lua_State *L = s->L;
    if (!push_handler(s, c->route, "message"))
        return;
    /* the message stays on L below the handler for the call: while it is
     * anchored there, its address names these bytes and no other string's */
    lua_pushlstring(L, (const char *)data, len);
    lua_insert(L, -2);
    int anchor = lua_gettop(L) - 1;
    script__push_ws(s, c);
    lua_pushvalue(L, anchor);
    lua_pushboolean(L, binary);
    const char *prev = s->valid_text;
    size_t prev_len = s->valid_len;
    if (!binary) { /* text reaches the app UTF-8 checked (frame.c, conn.c) */
        s->valid_text = lua_tostring(L, anchor);
        s->valid_len = len;
    }
    if (run_handler(s, c, c->route, "message", 3, 0, ws_done) < 0)
        conn_close(c, WS_CLOSE_INTERNAL, "internal error", 14);
    s->valid_text = prev; /* a nested call's (its string is still anchored) */
    s->valid_len = prev_len;
    lua_settop(L, anchor - 1);
}

void script_drain(struct script *s, struct conn *c) {
    if (!push_handler(s, c->route, "drain"))
        return;
    script__push_ws(s, c);
    if (run_handler(s, c, c->route, "drain", 1, 0, ws_done) < 0)
        conn_close(c, WS_CLOSE_INTERNAL, "internal error", 14);
}

static void close_done(struct script *s, const struct script_call *call, int ok) {
    (void)ok;
    script__ws_release(s, call->conn);
}

void script_close(struct script *s, struct conn *c, unsigned code, const char *reason) {
    lua_State *L = s->L;
    script__presence_leave_all(s, c); /* before the handler: it is gone from its topics */
    if (push_handler(s, c->route, "close")) {
        script__push_ws(s, c);
        lua_pushinteger(L, code);
        lua_pushstring(L, reason);
        if (run_handler(s, c, c->route, "close", 3, 0, close_done) > 0)
            return; /* it waits: the ws goes when it ends (close_done) */
    }
    script__ws_release(s, c);
}

void script_cancel_waits(struct script *s) {
    script__cancel_all(s);
}

unsigned script_waiting(struct script *s) {
    return s ? script__waiting(s) : 0;
}

/* ---- state ------------------------------------------------------------------------ */

/* (script_int.h) */
struct script *script__state_new(struct sb_server *srv, const char *app_dir, int real_path) {
    struct script *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->srv = srv;
    s->mem_cap = srv->cfg.lua_memory;
    s->budget_full = srv->cfg.lua_budget / HOOK_EVERY + 1;
    char real[PATH_MAX];
    s->app_dir = strdup(real_path && realpath(app_dir, real) ? real : app_dir);
    size_t ll = strlen(s->app_dir) + 5;
    s->lib_dir = malloc(ll);
    snprintf(s->lib_dir, ll, "%s/lib", s->app_dir);
    uint64_t rnd = 0;
    if (getrandom(&rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
        rnd = (uint64_t)getpid() << 32 ^ (uint64_t)(server_clock() * 1e9);
    snprintf(s->node, sizeof s->node, "%016llx", (unsigned long long)rnd);
    s->L = lua_newstate(l_alloc, s);
    if (!s->L) {
        free(s);
        return NULL;
    }
    lua_State *L = s->L;
    lua_pushcfunction(L, l_traceback); /* TRACEBACK_INDEX, never popped */
    luaL_openlibs(L);
    lua_sethook(L, l_hook, LUA_MASKCOUNT, HOOK_EVERY);
    script__routes_init(s);
    install_guards(L);
    install_finalizers(L);
    script__module_init(s);
    script__ws_init(s);
    script__task_init(s);
    script__history_init(s);
    if (script__redis_init(s) < 0 || script__sub_init(s) < 0 || script__presence_init(s) < 0) {
        script_free(s);
        return NULL;
    }
    return s;
}

struct script *script_new(struct sb_server *srv, const char *app_dir) {
    struct script *s = script__state_new(srv, app_dir, 1);
    if (!s)
        return NULL;
    int loaded = 0, failed = 0;
    script__routes_scan(s, &loaded, &failed);
    if (!loaded) {
        log_error("no route script loaded from %s (%d failed)", s->app_dir, failed);
        script_free(s);
        return NULL;
    }
    log_info("loaded %d route(s) from %s%s", loaded, s->app_dir,
             failed ? " (some failed: see above)" : "");
    for (struct route *r = s->routes; r; r = r->next)
        if (r->ref != LUA_NOREF)
            log_info("route %s -> %s", r->path, r->file);
    s->started = 1;
    return s;
}

void script_free(struct script *s) {
    script__task_free(s);
    script__cancel_route_timers(s, NULL, 0, 0);
    script__sub_free(s);
    script__presence_free(s);
    script__redis_free(s);
    lua_close(s->L);
    script__redis_release(s);
    while (s->routes) {
        struct route *r = s->routes;
        s->routes = r->next;
        free(r->path);
        free(r->file);
        free(r);
    }
    for (size_t i = 0; i < s->n_ignore; i++)
        free(s->ignore[i]);
    free(s->ignore);
    free(s->app_dir);
    free(s->lib_dir);
    free(s);
}

size_t script_memory(struct script *s) {
    return s->mem;
}

size_t script_subscriptions(struct script *s) {
    return s ? script__sub_count(s) : 0;
}

size_t script_presence_entries(struct script *s) {
    return s ? script__presence_entries(s) : 0;
}

struct route *script_routes(struct script *s) {
    return s->routes;
}
