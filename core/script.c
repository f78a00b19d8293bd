/* script.c — the Lua side: one lua_State, routes, event dispatch, the `ws`
 * userdata and the `switchboard` module. */
#define _GNU_SOURCE
#include "script.h"

#include <dirent.h>
#include <errno.h>
#include <event2/event.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "conn.h"
#include "handshake.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "pubsub.h"
#include "redis.h"
#include "server.h"
#include "utf8.h"

#define WS_MT "switchboard.ws"
#define TIMER_MT "switchboard.timer"
#define HOOK_EVERY 1000
#define TRACEBACK_INDEX 1
/* registry[MODS_KEY][name] = { file = path under lib/, gen = top-level runs,
 * users = { [app module that required it] = true },
 * routes = { [route light userdata] = true } } */
#define MODS_KEY "switchboard.modules"
#define STOPPED_KEY "switchboard.stopped" /* weak keys: coroutines the budget stopped */ /* l_traceback, at the bottom of the main state's stack */

struct sb_timer;

struct script {
    lua_State *L;
    struct sb_server *srv;
    char *app_dir;
    char *lib_dir;
    struct route *routes;
    struct route *cur_route; /* route whose code is running (owns new timers) */
    struct sb_timer *timers;
    size_t mem, mem_cap;
    long budget_ticks; /* hook ticks left in this handler call */
    int in_handler;
    int budget_hit;
    int gc_queued;     /* a script's __gc finalizer waits in GC_QUEUE_KEY */
    int in_finalizers; /* run_finalizers is running them */
    int shared_ref; /* switchboard.shared */
    uint32_t loading_version; /* version being loaded for cur_route, 0 otherwise */
    const char *loading_mod;  /* app module whose top level runs (a string on the Lua stack) */
    uint32_t loading_gen;     /* that run's generation of loading_mod (owns new timers) */
    const char *cur_mod;      /* module whose timer runs (on the Lua stack), or NULL */
    uint32_t cur_mod_gen;
    int started;              /* past the start-up scan: loads are reloads, counted */
    const void *ws_mt;        /* the ws metatable, for a pointer check */
    char node[17];            /* switchboard.node: random hex, per process */
};

/* A timer is owned by the app module whose top level (or whose timer) made
 * it, else by the route whose code did: it goes with that owner's version. */
struct sb_timer {
    struct event *ev;
    struct script *s;
    struct route *owner; /* NULL for a module's timer */
    char *mod;           /* owning lib/ module (malloc'd), or NULL */
    uint32_t version;    /* the owner's version (a module's: its generation) that made it */
    int fn_ref, ud_ref;
    int repeat;
    struct sb_timer *next, *prev;
};

struct ws_ud {
    struct conn *c; /* NULL once the connection is closed */
    uint64_t id;
};

struct timer_ud {
    struct sb_timer *t; /* NULL once fired (one-shot) or cancelled */
};

static struct script *get_script(lua_State *L) {
    struct script *s;
    lua_getallocf(L, (void **)&s);
    return s;
}

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
    const char *msg = lua_tostring(L, 1);
    if (!msg)
        msg = luaL_tolstring(L, 1, NULL);
    luaL_traceback(L, L, msg, 1);
    return 1;
}

static void run_finalizers(struct script *s);

/* Call the function below nargs arguments on the stack under the budget and
 * the memory cap. Returns 0, or -1 after logging the error with `what` (or,
 * when `what` is NULL, "route R (FILE): HANDLER KIND failed" for
 * s->cur_route: formatted only on failure, since this runs per message).
 * The scripts' __gc finalizers queued meanwhile run after the outermost call. */
static int protected_call_h(struct script *s, int nargs, int nres, const char *what,
                            const char *handler, const char *kind) {
    lua_State *L = s->L;
    int outer = s->in_handler;
    if (!outer) {
        s->in_handler = 1;
        s->budget_hit = 0;
        s->budget_ticks = s->srv->cfg.lua_budget / HOOK_EVERY + 1;
    }
    double t0 = !outer && metrics_enabled(s->srv) ? server_clock() : 0;
    /* the message handler lives at stack index 1 of the main state for good
     * (pushed in script_new): no push and rotate per call */
    int rc = lua_pcall(L, nargs, nres, TRACEBACK_INDEX);
    if (t0 > 0)
        metrics_observe_handler(&s->srv->stats, server_clock() - t0);
    int hit = s->budget_hit;
    if (!outer) {
        s->in_handler = 0;
        if (hit) /* back from raising at every instruction */
            lua_sethook(L, l_hook, LUA_MASKCOUNT, HOOK_EVERY);
    }
    if (rc != LUA_OK) {
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
        if (rc == LUA_ERRMEM)
            log_error("%s: out of memory (Lua state past --lua-memory %zu bytes)", what,
                      s->mem_cap);
        else
            log_error("%s: %s", what, err ? err : "(error object is not a string)");
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
    if (!outer && s->gc_queued && !s->in_finalizers)
        run_finalizers(s);
    return rc == LUA_OK ? 0 : -1;
}

static int protected_call(struct script *s, int nargs, int nres, const char *what) {
    return protected_call_h(s, nargs, nres, what, NULL, NULL);
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

/* xpcall(f, msgh, ...): the standard one (upvalue 1) with msgh behind xpcall_handler. */
static int sb_xpcall(lua_State *L) {
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_pushvalue(L, 2);
    lua_pushcclosure(L, xpcall_handler, 1);
    lua_replace(L, 2);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
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
 * cannot stop one that loops. So a script's __gc (a Lua function) is replaced,
 * when setmetatable sees it, by gc_defer, which queues the object and its
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
    if (lua_rawget(L, -2) != LUA_TFUNCTION)
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

/* setmetatable for scripts: the standard one (upvalue 1), after moving a Lua
 * __gc of the metatable to GC_FNS_KEY and putting gc_defer in its place. */
static int sb_setmetatable(lua_State *L) {
    if (lua_type(L, 2) == LUA_TTABLE) {
        lua_pushliteral(L, "__gc");
        if (lua_rawget(L, 2) == LUA_TFUNCTION && !lua_iscfunction(L, -1)) {
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

/* ---- routes ---------------------------------------------------------------------- */

/* The handlers of a route, resolved once when its script loads: a plain table
 * { upgrade = fn, ..., reload = fn, compression = false,
 *   [ORIGINAL_KEY] = the table the script returned }
 * so that dispatch reads fields of a table without a metatable, and only
 * this, under a protected call, runs a metamethod of the script's table. */
static const char *const handler_names[] = {"upgrade", "open",  "message",
                                            "close",   "drain", "request"};
static const char ORIGINAL_KEY = 0; /* its address: a key no script can write */

/* lua_CFunction: resolve(returned value) -> resolved table, or nil and why not. */
static int resolve_route(lua_State *L) {
    if (!lua_istable(L, 1)) {
        lua_pushnil(L);
        lua_pushfstring(L, "the script must return a table of handlers, not %s",
                        luaL_typename(L, 1));
        return 2;
    }
    lua_createtable(L, 0, 8);
    for (int i = 0; i < 6; i++) {
        int t = lua_getfield(L, 1, handler_names[i]);
        if (t != LUA_TNIL && t != LUA_TFUNCTION) {
            lua_pushnil(L);
            lua_pushfstring(L, "handler '%s' must be a function, not %s", handler_names[i],
                            luaL_typename(L, -2));
            return 2;
        }
        lua_setfield(L, 2, handler_names[i]);
    }
    if (lua_getfield(L, 1, "reload") == LUA_TFUNCTION)
        lua_setfield(L, 2, "reload");
    else
        lua_pop(L, 1);
    lua_getfield(L, 1, "compression"); /* only `false` turns permessage-deflate off */
    lua_pushboolean(L, lua_isboolean(L, -1) && !lua_toboolean(L, -1));
    lua_setfield(L, 2, "no_compression");
    lua_pop(L, 1);
    lua_pushvalue(L, 1);
    lua_rawsetp(L, 2, &ORIGINAL_KEY);
    return 1;
}

static unsigned handler_bits(lua_State *L, int idx) {
    unsigned bits = 0;
    for (int i = 0; i < 6; i++) {
        lua_getfield(L, idx, handler_names[i]); /* a resolved table: no metamethod */
        if (lua_isfunction(L, -1))
            bits |= 1u << i;
        lua_pop(L, 1);
    }
    return bits;
}

/* ---- app modules (lib/) ------------------------------------------------------------- */


/* Where the app module `name` lives: a file under lib/ that package.path
 * finds, or, for a module found nowhere yet, where lib/ would hold it (so that
 * writing it reloads the routes that asked for it). 0: not an app module. */
static int mod_file(struct script *s, lua_State *L, const char *name, char *out, size_t cap) {
    size_t ll = strlen(s->lib_dir);
    int found = 0, top = lua_gettop(L);
    lua_getglobal(L, "package");
    if (!lua_istable(L, -1))
        goto done;
    static const char *const paths[] = {"path", "cpath"};
    for (int i = 0; i < 2; i++) {
        lua_getfield(L, top + 1, "searchpath");
        lua_pushstring(L, name);
        lua_getfield(L, top + 1, paths[i]);
        if (!lua_isfunction(L, -3) || !lua_isstring(L, -1) || lua_pcall(L, 2, 1, 0) != LUA_OK) {
            lua_settop(L, top + 1);
            continue;
        }
        const char *f = lua_tostring(L, -1);
        if (f) {
            found = i == 0 && strncmp(f, s->lib_dir, ll) == 0 && f[ll] == '/' &&
                    snprintf(out, cap, "%s", f) < (int)cap;
            goto done;
        }
        lua_pop(L, 1);
    }
    lua_getfield(L, top + 1, "preload");
    if (lua_istable(L, -1) && lua_getfield(L, -1, name) != LUA_TNIL)
        goto done;
    int n = snprintf(out, cap, "%s/%s.lua", s->lib_dir, name);
    if (n > 0 && (size_t)n < cap) {
        for (char *p = out + ll + 1; p < out + n - 4; p++)
            if (*p == '.')
                *p = '/';
        found = 1;
    }
done:
    lua_settop(L, top);
    return found;
}

/* Push the record of app module `name`, creating it the first time name is
 * required. Returns 0 (nothing pushed) for modules outside the app. */
static int mod_record(struct script *s, lua_State *L, const char *name) {
    lua_getfield(L, LUA_REGISTRYINDEX, MODS_KEY);
    if (lua_getfield(L, -1, name) == LUA_TTABLE) {
        lua_remove(L, -2);
        return 1;
    }
    lua_pop(L, 1);
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    int loaded = lua_getfield(L, -1, name) != LUA_TNIL;
    lua_pop(L, 2);
    char file[PATH_MAX];
    if (loaded || !mod_file(s, L, name, file, sizeof file)) {
        lua_pop(L, 1);
        return 0;
    }
    lua_createtable(L, 0, 3);
    lua_pushstring(L, file);
    lua_setfield(L, -2, "file");
    lua_newtable(L);
    lua_setfield(L, -2, "users");
    lua_newtable(L);
    lua_setfield(L, -2, "routes");
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, name);
    lua_remove(L, -2);
    return 1;
}

static void cancel_module_timers(struct script *s, const char *mod, uint32_t gen, int same);

/* `require` for scripts: the standard one (upvalue 1), noting which route and
 * which app module asked for which app module, so a change under lib/ reloads
 * exactly the routes that depend on it. */
static int sb_require(lua_State *L) {
    struct script *s = get_script(L);
    const char *name = luaL_checkstring(L, 1);
    lua_settop(L, 1);
    if (!mod_record(s, L, name)) {
        lua_pushvalue(L, lua_upvalueindex(1));
        lua_insert(L, 1);
        lua_call(L, 1, 2);
        return 2;
    }
    if (s->cur_route) {
        lua_getfield(L, -1, "routes");
        lua_pushboolean(L, 1);
        lua_rawsetp(L, -2, s->cur_route);
        lua_pop(L, 1);
    }
    if (s->loading_mod) {
        lua_getfield(L, -1, "users");
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, s->loading_mod);
        lua_pop(L, 1);
    }
    /* a module's top level runs again: a new generation owns its timers */
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    int fresh = lua_getfield(L, -1, name) == LUA_TNIL;
    lua_pop(L, 2);
    uint32_t gen = 0;
    if (fresh) {
        lua_getfield(L, -1, "gen");
        gen = (uint32_t)lua_tointeger(L, -1) + 1;
        lua_pop(L, 1);
        lua_pushinteger(L, gen);
        lua_setfield(L, -2, "gen");
    }
    lua_pop(L, 1);
    const char *prev = s->loading_mod;
    uint32_t prev_gen = s->loading_gen;
    s->loading_mod = name; /* anchored: argument 1 of this call */
    s->loading_gen = gen;
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushvalue(L, 1);
    int rc = lua_pcall(L, 1, 2, 0);
    s->loading_mod = prev;
    s->loading_gen = prev_gen;
    if (fresh) /* success: the older generations' timers go; failure: this one's */
        cancel_module_timers(s, name, gen, rc == LUA_OK ? 0 : 1);
    if (rc != LUA_OK)
        return lua_error(L);
    return 2;
}

/* Cancel r's timers: with same=1 those of `version`, with same=0 all others.
 * r NULL: every timer. */
static void cancel_route_timers(struct script *s, struct route *r, uint32_t version, int same);

/* Load (or reload) a route's script. Returns 0; on failure logs it and keeps
 * the previous version. */
static int route_load(struct script *s, struct route *r) {
    lua_State *L = s->L;
    double t0 = server_clock();
    char what[PATH_MAX + 32];
    snprintf(what, sizeof what, "loading %s", r->file);
    uint32_t version = r->version + 1;
    if (luaL_loadfile(L, r->file) != LUA_OK) {
        log_error("%s: %s", what, lua_tostring(L, -1));
        lua_pop(L, 1);
        goto fail;
    }
    /* a fresh environment whose globals do not leak into other scripts */
    lua_newtable(L);
    lua_newtable(L);
    lua_pushglobaltable(L);
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, -2);
    if (!lua_setupvalue(L, -2, 1))
        lua_pop(L, 1);
    struct route *prev_route = s->cur_route;
    uint32_t prev_loading = s->loading_version;
    s->cur_route = r;
    s->loading_version = version;
    int rc = protected_call(s, 0, 1, what);
    s->cur_route = prev_route;
    s->loading_version = prev_loading;
    if (rc < 0)
        goto fail;
    /* the returned table is the script's: read it under the budget too */
    lua_pushcfunction(L, resolve_route);
    lua_insert(L, -2);
    s->cur_route = r;
    s->loading_version = version;
    rc = protected_call(s, 1, 2, what);
    s->cur_route = prev_route;
    s->loading_version = prev_loading;
    if (rc < 0)
        goto fail;
    if (lua_isnil(L, -2)) {
        log_error("%s: %s", what, lua_tostring(L, -1));
        lua_pop(L, 2);
        goto fail;
    }
    lua_pop(L, 1);
    int tbl = lua_gettop(L);
    if (r->ref != LUA_NOREF) {
        /* migrate: the new version's reload(old) hook, given the old table */
        lua_getfield(L, tbl, "reload");
        if (lua_isfunction(L, -1)) {
            lua_rawgeti(L, LUA_REGISTRYINDEX, r->ref);
            lua_rawgetp(L, -1, &ORIGINAL_KEY);
            lua_remove(L, -2);
            s->cur_route = r;
            s->loading_version = version;
            protected_call(s, 1, 0, what);
            s->cur_route = prev_route;
            s->loading_version = prev_loading;
        } else {
            lua_pop(L, 1);
        }
        luaL_unref(L, LUA_REGISTRYINDEX, r->ref);
    }
    r->has = handler_bits(L, tbl);
    lua_getfield(L, tbl, "no_compression");
    r->no_compression = lua_toboolean(L, -1);
    lua_pop(L, 1);
    r->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    r->gone = 0;
    r->version = version;
    /* the old version's timers go with it */
    cancel_route_timers(s, r, version, 0);
    if (s->started) {
        s->srv->stats.reloads_ok++;
        log_info("reloaded %s (route %s, version %u%s) in %.1f ms", r->file, r->path, r->version,
                 version > 1 ? "" : ", new route", (server_clock() - t0) * 1e3);
    }
    return 0;

fail:
    /* timers created by a failed top level die with it */
    cancel_route_timers(s, r, version, 1);
    if (s->started) {
        s->srv->stats.reloads_failed++;
        if (r->ref != LUA_NOREF && !r->gone)
            log_error("reload of %s failed in %.1f ms: route %s keeps serving version %u",
                      r->file, (server_clock() - t0) * 1e3, r->path, r->version);
        else
            log_error("reload of %s failed in %.1f ms: route %s is not live", r->file,
                      (server_clock() - t0) * 1e3, r->path);
    }
    return -1;
}

/* The script was deleted: no new upgrades (404), open connections get 1001. */
static void route_delete(struct script *s, struct route *r) {
    double t0 = server_clock();
    size_t n = 0;
    r->gone = 1;
    cancel_route_timers(s, r, 0, 0);
    for (struct conn *c = s->srv->all; c; c = c->next) {
        if (c->route == r && c->state == CONN_WS) {
            conn_close(c, WS_CLOSE_GOING_AWAY, "route removed", 13);
            n++;
        }
    }
    s->srv->stats.reloads_ok++;
    log_info("deleted %s: route %s gone, %zu connection(s) closed with 1001, in %.1f ms", r->file,
             r->path, n, (server_clock() - t0) * 1e3);
}

static struct route *route_by_file(struct script *s, const char *file) {
    for (struct route *r = s->routes; r; r = r->next)
        if (strcmp(r->file, file) == 0)
            return r;
    return NULL;
}

/* "chat.lua" -> "/chat", "api/feed.lua" -> "/api/feed", "index.lua" -> "/",
 * "room/index.lua" -> "/room". rel has no leading slash. */
static char *route_path(const char *rel) {
    size_t n = strlen(rel) - 4; /* drop ".lua" */
    char *p = malloc(n + 2);
    if (!p)
        return NULL;
    p[0] = '/';
    memcpy(p + 1, rel, n);
    p[n + 1] = 0;
    size_t len = n + 1;
    if (len >= 6 && strcmp(p + len - 6, "/index") == 0) {
        p[len - 6] = 0;
        if (!p[0])
            strcpy(p, "/");
    }
    return p;
}

static struct route *route_add(struct script *s, const char *file, const char *rel) {
    struct route *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->file = strdup(file);
    r->path = route_path(rel);
    r->ref = LUA_NOREF;
    r->gone = 1;
    r->next = s->routes;
    s->routes = r;
    return r;
}

/* Walk dir for *.lua route scripts (not lib/ or public/ at the top). */
static void scan_dir(struct script *s, const char *dir, const char *rel, int *loaded, int *failed) {
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        if (!rel[0] && (strcmp(e->d_name, "lib") == 0 || strcmp(e->d_name, "public") == 0))
            continue;
        char path[PATH_MAX], sub[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        snprintf(sub, sizeof sub, "%s%s%s", rel, rel[0] ? "/" : "", e->d_name);
        struct stat st;
        if (stat(path, &st) < 0)
            continue;
        if (S_ISDIR(st.st_mode)) {
            scan_dir(s, path, sub, loaded, failed);
            continue;
        }
        size_t n = strlen(e->d_name);
        if (!S_ISREG(st.st_mode) || n < 5 || strcmp(e->d_name + n - 4, ".lua") != 0)
            continue;
        struct route *r = route_by_file(s, path);
        if (!r)
            r = route_add(s, path, sub);
        if (!r)
            continue;
        if (route_load(s, r) == 0)
            (*loaded)++;
        else
            (*failed)++;
    }
    closedir(d);
}

struct route *script_find_route(struct script *s, const char *path, size_t len) {
    for (struct route *r = s->routes; r; r = r->next)
        if (strlen(r->path) == len && memcmp(r->path, path, len) == 0 && r->ref != LUA_NOREF)
            return r;
    return NULL;
}

/* ---- the ws userdata ------------------------------------------------------------- */

static void push_ws(struct script *s, struct conn *c) {
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

/* Misuse errors worded like lauxlib's, but naming the function and counting
 * arguments as a method call does (ws:send(x): x is #1) however the function
 * was called (pcall(ws.send, ws, x) included), at the calling script's line. */
static int arg_error(lua_State *L, int n, const char *fn, const char *msg) {
    luaL_where(L, 1);
    lua_pushfstring(L, "bad argument #%d to '%s' (%s)", n, fn, msg);
    lua_concat(L, 2);
    return lua_error(L);
}

static int type_error(lua_State *L, int idx, int n, const char *fn, const char *want) {
    const char *got = lua_isnone(L, idx) ? "no value" : luaL_typename(L, idx);
    return arg_error(L, n, fn, lua_pushfstring(L, "%s expected, got %s", want, got));
}

/* Argument idx as a string (a number converts), or a misuse error for #n. */
static const char *arg_string(lua_State *L, int idx, int n, const char *fn, size_t *len) {
    int t = lua_type(L, idx);
    if (t != LUA_TSTRING && t != LUA_TNUMBER)
        type_error(L, idx, n, fn, "string");
    return lua_tolstring(L, idx, len);
}

static const char *arg_optstring(lua_State *L, int idx, int n, const char *fn, size_t *len) {
    if (lua_isnoneornil(L, idx)) {
        *len = 0;
        return "";
    }
    return arg_string(L, idx, n, fn, len);
}

static const char *arg_topic(lua_State *L, int idx, int n, const char *fn, size_t *len) {
    const char *t = arg_string(L, idx, n, fn, len);
    if (*len == 0)
        arg_error(L, n, fn, "topic must not be empty");
    return t;
}

static int is_utf8(const char *p, size_t len) {
    return utf8_validate(UTF8_ACCEPT, (const uint8_t *)p, len) == UTF8_ACCEPT;
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
    const char *msg = arg_string(L, 2, 1, "send", &len);
    int binary = lua_toboolean(L, 3);
    if (!binary && !is_utf8(msg, len))
        return arg_error(L, 1, "send", "text is not valid UTF-8 (send it as binary)");
    if ((uint64_t)len > c->srv->cfg.max_message)
        return arg_error(L, 1, "send", "message longer than --max-message");
    int r = conn_send(c, binary ? WS_OP_BINARY : WS_OP_TEXT, msg, len);
    lua_pushboolean(L, r == 1);
    return 1;
}

static int ws_close(lua_State *L) {
    struct conn *c = ws_conn(L, "close");
    lua_Integer code = 1000;
    if (!lua_isnoneornil(L, 2)) {
        if (lua_type(L, 2) != LUA_TNUMBER)
            return type_error(L, 2, 1, "close", "number");
        int isint = 0;
        code = lua_tointegerx(L, 2, &isint);
        if (!isint)
            code = 0;
    }
    size_t rlen = 0;
    const char *reason = arg_optstring(L, 3, 2, "close", &rlen);
    if (!(code == 1000 || (code >= 3000 && code <= 4999)))
        return arg_error(L, 1, "close", "close code must be 1000 or 3000-4999");
    if (rlen > 123)
        return arg_error(L, 2, "close", "reason longer than 123 bytes");
    if (!is_utf8(reason, rlen))
        return arg_error(L, 2, "close", "reason is not valid UTF-8");
    conn_close(c, (unsigned)code, reason, rlen);
    return 0;
}

static int ws_ping(lua_State *L) {
    struct conn *c = ws_conn(L, "ping");
    size_t len = 0;
    const char *data = arg_optstring(L, 2, 1, "ping", &len);
    if (len > 125)
        return arg_error(L, 1, "ping", "ping payload longer than 125 bytes");
    lua_pushboolean(L, ws_is_open(c) && conn_send(c, WS_OP_PING, data, len) >= 0);
    return 1;
}

static int ws_subscribe(lua_State *L) {
    struct conn *c = ws_conn(L, "subscribe");
    size_t len;
    const char *t = arg_topic(L, 2, 1, "subscribe", &len);
    if (!ws_is_open(c)) { /* it would leave the topic at once */
        lua_pushboolean(L, 0);
        return 1;
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
    const char *t = arg_topic(L, 2, 1, "unsubscribe", &len);
    lua_pushboolean(L, pubsub_unsubscribe(c->srv->pubsub, c, t, len) == 1);
    return 1;
}

static int do_publish(lua_State *L, int first, struct sb_server *srv, struct conn *except,
                      const char *fn) {
    size_t tlen, len;
    const char *t = arg_topic(L, first, 1, fn, &tlen);
    const char *msg = arg_string(L, first + 1, 2, fn, &len);
    int binary = lua_toboolean(L, first + 2);
    if (!binary && !is_utf8(msg, len))
        return arg_error(L, 2, fn, "text is not valid UTF-8 (send it as binary)");
    if ((uint64_t)len > srv->cfg.max_message)
        return arg_error(L, 2, fn, "message longer than --max-message");
    srv->stats.publishes++;
    size_t n = pubsub_publish(srv->pubsub, t, tlen, msg, len, binary, except);
    if (srv->redis)
        redis_publish(srv->redis, t, tlen, msg, len, binary);
    lua_pushinteger(L, (lua_Integer)n);
    return 1;
}

static int ws_publish(lua_State *L) {
    struct conn *c = ws_conn(L, "publish");
    return do_publish(L, 2, c->srv, c, "publish");
}

static int ws_buffered(lua_State *L) {
    struct conn *c = ws_conn(L, "buffered");
    lua_pushinteger(L, (lua_Integer)c->queued);
    return 1;
}

/* Fields derived from the kept request head, built on first use and cached
 * in the userdata's second user value. */
static void push_query_table(lua_State *L, const char *q, size_t len);
static void push_headers_table(lua_State *L, const struct http_request *req);

static int parse_kept_head(struct conn *c, struct http_request *req, struct http_header *h,
                           size_t cap) {
    memset(req, 0, sizeof *req);
    req->headers = h;
    req->headers_cap = cap;
    struct http_limits lim = {c->head_len + 1, cap - 1};
    int status;
    return c->head && http_parse_request(c->head, c->head_len, 0, &lim, req, &status) > 0;
}

static void push_decoded_path(lua_State *L, const struct http_request *req) {
    luaL_Buffer b;
    char *p = luaL_buffinitsize(L, &b, req->path_len + 1);
    long n = http_percent_decode(p, req->path, req->path_len, 0);
    luaL_pushresultsize(&b, n < 0 ? 0 : (size_t)n);
}

static void ws_fill_cache(lua_State *L, struct conn *c) {
    lua_newtable(L);
    struct http_header h[1001];
    struct http_request req;
    if (!parse_kept_head(c, &req, h, sizeof h / sizeof h[0]))
        return;
    push_decoded_path(L, &req);
    lua_setfield(L, -2, "path");
    push_query_table(L, req.query, req.query_len);
    lua_setfield(L, -2, "query");
    push_headers_table(L, &req);
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

/* ---- request tables ------------------------------------------------------------- */

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

static void push_query_table(lua_State *L, const char *q, size_t len) {
    lua_newtable(L);
    struct qctx ctx = {L};
    if (q && len)
        http_query_each(q, len, query_pair, &ctx);
}

static void push_headers_table(lua_State *L, const struct http_request *req) {
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
    lua_createtable(L, 0, 8);
    lua_pushlstring(L, req->method, req->method_len);
    lua_setfield(L, -2, "method");
    push_decoded_path(L, req);
    lua_setfield(L, -2, "path");
    push_query_table(L, req->query, req->query_len);
    lua_setfield(L, -2, "query");
    push_headers_table(L, req);
    lua_setfield(L, -2, "headers");
    char rb[64];
    lua_pushstring(L, conn_remote(c, rb, sizeof rb));
    lua_setfield(L, -2, "remote");
    lua_newtable(L);
    handshake_each_protocol(req, push_proto, L);
    lua_setfield(L, -2, "protocols");
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
static int read_answer(struct script *s, struct route *r, const char *handler,
                       lua_CFunction reader, void *ans, int nvals) {
    lua_State *L = s->L;
    lua_pushcfunction(L, reader);
    lua_pushlightuserdata(L, ans);
    lua_rotate(L, -nvals - 2, 2);
    struct route *prev = s->cur_route;
    s->cur_route = r;
    int rc = protected_call_h(s, nvals + 1, 1, NULL, handler, "answer");
    s->cur_route = prev;
    if (rc < 0)
        return -1;
    if (!lua_isnil(L, -1)) {
        log_error("route %s (%s): %s handler returned a bad answer: %s", r->path, r->file,
                  handler, lua_tostring(L, -1));
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

static int run_handler(struct script *s, struct conn *c, struct route *r, const char *name,
                       int nargs, int nres) {
    struct route *prev = s->cur_route;
    s->cur_route = r;
    int rc = protected_call_h(s, nargs, nres, NULL, name, "handler");
    s->cur_route = prev;
    (void)c;
    return rc;
}

void script_upgrade(struct script *s, struct conn *c, const struct http_request *req,
                    struct upgrade_answer *ans) {
    lua_State *L = s->L;
    memset(ans, 0, sizeof *ans);
    if (!push_handler(s, c->route, "upgrade"))
        return;
    push_request(L, c, req, NULL, 0);
    if (run_handler(s, c, c->route, "upgrade", 1, 3) < 0) {
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
            log_error("route %s: upgrade refused with status %lld; using 403", c->route->path,
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

void script_upgrade_free(struct upgrade_answer *ans) {
    free(ans->protocol);
    free(ans->headers);
    free(ans->body);
    memset(ans, 0, sizeof *ans);
}

void script_request(struct script *s, struct conn *c, struct route *r,
                    const struct http_request *req, const char *body, size_t body_len,
                    struct http_answer *ans) {
    lua_State *L = s->L;
    memset(ans, 0, sizeof *ans);
    ans->status = 500;
    if (!push_handler(s, r, "request"))
        return;
    push_request(L, c, req, body, body_len);
    if (run_handler(s, c, r, "request", 1, 1) < 0)
        return;
    if (read_answer(s, r, "request", read_response, ans, 1) < 0) {
        script_response_free(ans);
        ans->status = 500;
    }
}

void script_response_free(struct http_answer *ans) {
    free(ans->headers);
    free(ans->body);
    memset(ans, 0, sizeof *ans);
}

void script_open(struct script *s, struct conn *c) {
    if (!push_handler(s, c->route, "open"))
        return;
    push_ws(s, c);
    if (run_handler(s, c, c->route, "open", 1, 0) < 0)
        conn_close(c, WS_CLOSE_INTERNAL, "internal error", 14);
}

void script_message(struct script *s, struct conn *c, const uint8_t *data, size_t len,
                    int binary) {
    lua_State *L = s->L;
    if (!push_handler(s, c->route, "message"))
        return;
    push_ws(s, c);
    lua_pushlstring(L, (const char *)data, len);
    lua_pushboolean(L, binary);
    if (run_handler(s, c, c->route, "message", 3, 0) < 0)
        conn_close(c, WS_CLOSE_INTERNAL, "internal error", 14);
}

void script_drain(struct script *s, struct conn *c) {
    if (!push_handler(s, c->route, "drain"))
        return;
    push_ws(s, c);
    if (run_handler(s, c, c->route, "drain", 1, 0) < 0)
        conn_close(c, WS_CLOSE_INTERNAL, "internal error", 14);
}

void script_close(struct script *s, struct conn *c, unsigned code, const char *reason) {
    lua_State *L = s->L;
    if (push_handler(s, c->route, "close")) {
        push_ws(s, c);
        lua_pushinteger(L, code);
        lua_pushstring(L, reason);
        run_handler(s, c, c->route, "close", 3, 0);
    }
    if (c->ws_ref != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, c->ws_ref);
        struct ws_ud *u = lua_touserdata(L, -1);
        if (u)
            u->c = NULL;
        lua_pop(L, 1);
        luaL_unref(L, LUA_REGISTRYINDEX, c->ws_ref);
        c->ws_ref = LUA_NOREF;
    }
}

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

static void cancel_route_timers(struct script *s, struct route *r, uint32_t version, int same) {
    for (struct sb_timer *t = s->timers; t;) {
        struct sb_timer *n = t->next;
        if (!r || (t->owner == r && (t->version == version) == same))
            timer_free(t);
        t = n;
    }
}

/* Cancel module mod's timers: with same=1 those of generation gen, with
 * same=0 all others. */
static void cancel_module_timers(struct script *s, const char *mod, uint32_t gen, int same) {
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
    /* a one-shot timer is gone before its function runs (so it cannot be
     * cancelled from inside); the function and handle stay alive on the stack */
    if (!t->repeat)
        timer_free(t);
    protected_call_h(s, 1, 0, NULL, "timer", "handler");
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
        return type_error(L, 1, 1, fn, "number");
    if (lua_type(L, 2) != LUA_TFUNCTION)
        return type_error(L, 2, 2, fn, "function");
    lua_Number secs = lua_tonumber(L, 1);
    if (!(secs >= 0) || secs > 1e9)
        return arg_error(L, 1, fn, "seconds must be between 0 and 1e9");
    if (repeat && secs < 0.001)
        return arg_error(L, 1, fn, "an 'every' interval must be at least 0.001 seconds");
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
        t->version =
            s->loading_version ? s->loading_version : (t->owner ? t->owner->version : 0);
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
    return do_publish(L, 1, get_script(L)->srv, NULL, "publish");
}

static int sb_subscribers(lua_State *L) {
    size_t len;
    const char *t = arg_topic(L, 1, 1, "subscribers", &len);
    lua_pushinteger(L, (lua_Integer)pubsub_count(get_script(L)->srv->pubsub, t, len));
    return 1;
}

static void topic_cb(void *ud, const char *t, size_t len) {
    lua_State *L = ud;
    lua_pushlstring(L, t, len);
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
}

static int sb_topics(lua_State *L) {
    lua_settop(L, 0);
    lua_newtable(L);
    pubsub_each_topic(get_script(L)->srv->pubsub, topic_cb, L);
    /* sorted, so a spec (and switchboard.testing) sees a stable order */
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    if (lua_getfield(L, -1, "table") == LUA_TTABLE && lua_getfield(L, -1, "sort") == LUA_TFUNCTION) {
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
        return type_error(L, 1, 1, lvl == LOG_INFO ? "info" : lvl == LOG_WARN ? "warn" : "error",
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
    char where[256];
    script_name(L, where, sizeof where);
    log_msg(lvl, "[%s] %s", where, lua_tostring(L, -1));
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
    lua_pushinteger(L, (lua_Integer)metrics_resident_bytes());
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
#undef F
    lua_pushinteger(L, (lua_Integer)s->mem);
    lua_setfield(L, -2, "lua_memory");
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
    lua_getglobal(L, "require");
    lua_pushliteral(L, "cjson");
    if (lua_pcall(L, 1, 1, 0) == LUA_OK) {
        lua_setfield(L, -2, "json");
    } else {
        log_warn("lua-cjson not found: switchboard.json is unavailable (%s)", lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    lua_pushliteral(L, SB_VERSION);
    lua_setfield(L, -2, "version");
    /* this process's name among many (workers, --redis hosts): ws.id is unique
     * only within one process, so topics meant for one connection use both */
    lua_pushstring(L, s->node);
    lua_setfield(L, -2, "node");
    return 1;
}

/* ---- state ------------------------------------------------------------------------ */

static void set_package_path(struct script *s) {
    lua_State *L = s->L;
    char exe[PATH_MAX];
    char extra[PATH_MAX * 4 + 256] = "";
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        char *slash = strrchr(exe, '/');
        if (slash)
            *slash = 0;
        /* from a build dir in the source tree: ../lua; installed: ../share/lua/5.4 */
        snprintf(extra, sizeof extra,
                 "%s/../lua/?.lua;%s/../lua/?/init.lua;%s/../share/lua/5.4/?.lua;"
                 "%s/../share/lua/5.4/?/init.lua;",
                 exe, exe, exe, exe);
    }
    lua_getglobal(L, "package");
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s%s/?.lua;%s/?/init.lua;", s->lib_dir, s->lib_dir,
                    extra, SB_LUA_DIR, SB_LUA_DIR);
    lua_getfield(L, -2, "path");
    lua_concat(L, 2);
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);
}

struct script *script_new(struct sb_server *srv, const char *app_dir) {
    struct script *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->srv = srv;
    s->mem_cap = srv->cfg.lua_memory;
    char real[PATH_MAX];
    s->app_dir = strdup(realpath(app_dir, real) ? real : app_dir);
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
    set_package_path(s);
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, MODS_KEY);
    lua_getglobal(L, "require");
    lua_pushcclosure(L, sb_require, 1);
    lua_setglobal(L, "require");
    install_guards(L);
    lua_newtable(L);
    lua_getfield(L, LUA_REGISTRYINDEX, "switchboard.weakk");
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, GC_FNS_KEY);
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, GC_QUEUE_KEY);
    lua_getglobal(L, "setmetatable");
    lua_pushcclosure(L, sb_setmetatable, 1);
    lua_setglobal(L, "setmetatable");
    lua_newtable(L);
    s->shared_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_switchboard);
    lua_setfield(L, -2, "switchboard");
    lua_pop(L, 1);

    static const luaL_Reg methods[] = {
        {"send", ws_send},           {"close", ws_close},         {"ping", ws_ping},
        {"subscribe", ws_subscribe}, {"unsubscribe", ws_unsubscribe},
        {"publish", ws_publish},     {"buffered", ws_buffered},   {NULL, NULL},
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
    luaL_newmetatable(L, TIMER_MT);
    lua_newtable(L);
    lua_pushcfunction(L, timer_cancel);
    lua_setfield(L, -2, "cancel");
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);

    int loaded = 0, failed = 0;
    scan_dir(s, s->app_dir, "", &loaded, &failed);
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
    cancel_route_timers(s, NULL, 0, 0);
    lua_close(s->L);
    while (s->routes) {
        struct route *r = s->routes;
        s->routes = r->next;
        free(r->path);
        free(r->file);
        free(r);
    }
    free(s->app_dir);
    free(s->lib_dir);
    free(s);
}

/* Forget every app module in package.loaded, so the next require loads it
 * afresh. With `file`, only the modules loaded from it and, transitively, the
 * app modules that required them; the routes that required any of those are
 * pushed as light userdata keys of a table. Returns how many modules. */
static int forget_modules(struct script *s, const char *file) {
    lua_State *L = s->L;
    lua_getfield(L, LUA_REGISTRYINDEX, MODS_KEY);
    int mods = lua_gettop(L);
    lua_newtable(L); /* hit: name -> true */
    int hit = mods + 1;
    lua_newtable(L); /* work: list of names */
    int work = mods + 2;
    int nwork = 0, nmods = 0;
    lua_pushnil(L);
    while (lua_next(L, mods)) {
        lua_getfield(L, -1, "file");
        const char *f = lua_tostring(L, -1);
        if (!file || (f && strcmp(f, file) == 0)) {
            lua_pushvalue(L, -3);
            lua_pushboolean(L, 1);
            lua_rawset(L, hit);
            lua_pushvalue(L, -3);
            lua_rawseti(L, work, ++nwork);
        }
        lua_pop(L, 2);
    }
    while (nwork > 0) { /* add the app modules that required a hit one */
        lua_rawgeti(L, work, nwork);
        lua_pushnil(L);
        lua_rawseti(L, work, nwork--);
        if (lua_rawget(L, mods) != LUA_TTABLE) {
            lua_pop(L, 1);
            continue;
        }
        lua_getfield(L, -1, "users");
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            lua_pop(L, 1);
            lua_pushvalue(L, -1);
            if (lua_rawget(L, hit) == LUA_TNIL) {
                lua_pushvalue(L, -2);
                lua_pushboolean(L, 1);
                lua_rawset(L, hit);
                lua_pushvalue(L, -2);
                lua_rawseti(L, work, ++nwork);
            }
            lua_pop(L, 1);
        }
        lua_pop(L, 2);
    }
    lua_newtable(L); /* the result: route -> true */
    int routes = lua_gettop(L);
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_pushnil(L);
    while (lua_next(L, hit)) {
        lua_pop(L, 1);
        nmods++;
        lua_pushvalue(L, -1);
        lua_pushnil(L);
        lua_rawset(L, -4); /* package.loaded[name] = nil */
        lua_pushvalue(L, -1);
        if (lua_rawget(L, mods) != LUA_TTABLE) {
            lua_pop(L, 1);
            continue;
        }
        lua_getfield(L, -1, "routes");
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            lua_rawset(L, routes);
        }
        lua_pop(L, 2);
    }
    lua_pop(L, 1);
    lua_replace(L, mods); /* leave only the routes table */
    lua_settop(L, mods);
    return nmods;
}

/* A module under lib/ changed (or appeared, or went): every route that
 * required it, directly or through another app module, loads again. */
static void reload_lib(struct script *s, const char *file) {
    lua_State *L = s->L;
    int top = lua_gettop(L);
    int nmods = forget_modules(s, file);
    size_t n = 0, cap = 8;
    struct route **rs = malloc(cap * sizeof *rs);
    lua_pushnil(L);
    while (rs && lua_next(L, -2)) {
        lua_pop(L, 1);
        if (n == cap) {
            struct route **more = realloc(rs, (cap *= 2) * sizeof *rs);
            if (!more)
                break;
            rs = more;
        }
        rs[n++] = (struct route *)lua_touserdata(L, -1);
    }
    lua_settop(L, top);
    if (!nmods) {
        log_info("lib module %s changed: no route requires it", file);
    } else {
        log_info("lib module %s changed: reloading the %zu route(s) that require it", file, n);
        struct stat st;
        for (size_t i = 0; i < n; i++)
            if (stat(rs[i]->file, &st) == 0)
                route_load(s, rs[i]);
    }
    free(rs);
}

/* SIGHUP: every app module afresh, every route script again, deleted ones gone. */
static void reload_all(struct script *s) {
    double t0 = server_clock();
    forget_modules(s, NULL);
    lua_pop(s->L, 1);
    int loaded = 0, failed = 0;
    scan_dir(s, s->app_dir, "", &loaded, &failed);
    struct stat st;
    for (struct route *r = s->routes; r; r = r->next)
        if (!r->gone && stat(r->file, &st) < 0)
            route_delete(s, r);
    log_info("reloaded every script: %d loaded, %d failed, in %.1f ms", loaded, failed,
             (server_clock() - t0) * 1e3);
}

void script_reload(struct script *s, const char *file) {
    if (!file) {
        reload_all(s);
        return;
    }
    size_t ll = strlen(s->lib_dir), al = strlen(s->app_dir), fl = strlen(file);
    if (strncmp(file, s->lib_dir, ll) == 0 && file[ll] == '/') {
        reload_lib(s, file);
        return;
    }
    struct route *r = route_by_file(s, file);
    struct stat st;
    if (stat(file, &st) < 0) {
        if (r && !r->gone)
            route_delete(s, r);
        if (r)
            return;
        /* a folder went away: every route under it */
        for (r = s->routes; r; r = r->next)
            if (!r->gone && strncmp(r->file, file, fl) == 0 && r->file[fl] == '/')
                route_delete(s, r);
        return;
    }
    if (!S_ISREG(st.st_mode) || fl < 5 || strcmp(file + fl - 4, ".lua") != 0)
        return;
    if (!r) {
        if (strncmp(file, s->app_dir, al) != 0 || file[al] != '/')
            return;
        r = route_add(s, file, file + al + 1);
        if (!r)
            return;
    }
    route_load(s, r);
}

size_t script_memory(struct script *s) {
    return s->mem;
}

struct route *script_routes(struct script *s) {
    return s->routes;
}
