/* script_int.h — what the script*.c files share and nothing else includes:
 * the state struct, the userdata layouts, the registry keys and the internal
 * calls between the parts (script.c: state, protected calls, dispatch;
 * script_ws.c: the `ws` userdata; script_module.c: the `switchboard` module
 * and timers; script_crypto.c, script_json.c: its crypto, jwt and json tables;
 * script_route.c: route loading and reload). Internal names carry a `script__`
 * prefix. */
#ifndef SB_SCRIPT_INT_H
#define SB_SCRIPT_INT_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>

#include "script.h"

struct conn;
struct http_request;
struct log_fields;
struct sb_server;

#define WS_MT "switchboard.ws"
#define TIMER_MT "switchboard.timer"
#define HOOK_EVERY 1000
#define TRACEBACK_INDEX 1 /* l_traceback, at the bottom of the main state's stack */
/* registry[MODS_KEY][name] = { file = path under lib/, gen = top-level runs,
 * users = { [app module that required it] = true },
 * routes = { [route light userdata] = true } } */
#define MODS_KEY "switchboard.modules"

struct sb_timer;

/* Owned by the server (script_new/script_free); the lua_State's allocator
 * user data, so any C function reaches it through get_script. */
struct script {
    lua_State *L;
    struct sb_server *srv;
    char *app_dir;
    char *lib_dir;
    struct route *routes;
    struct route *cur_route; /* route whose code is running (owns new timers) */
    struct conn *cur_conn;   /* connection whose handler is running, for log lines */
    int err_line;            /* where the error being handled was raised (l_traceback), */
    char err_src[256];       /* for log lines; 0 when unknown */
    struct sb_timer *timers;
    size_t mem, mem_cap;
    long budget_ticks; /* hook ticks left in this handler call */
    int in_handler;
    int budget_hit;
    int gc_queued;            /* a script's __gc finalizer waits to run (script.c) */
    int in_finalizers;        /* they are running */
    int shared_ref;           /* switchboard.shared */
    uint32_t loading_version; /* version being loaded for cur_route, 0 otherwise */
    const char *loading_mod;  /* app module whose top level runs (a string on the Lua stack) */
    uint32_t loading_gen;     /* that run's generation of loading_mod (owns new timers) */
    const char *cur_mod;      /* module whose timer runs (on the Lua stack), or NULL */
    uint32_t cur_mod_gen;
    int started;       /* past the start-up scan: loads are reloads, counted */
    const void *ws_mt; /* the ws metatable, for a pointer check */
    char node[17];     /* switchboard.node: random hex, per process */
    char **ignore;     /* APP_DIR/.sbignore's patterns (owned, ignore_load) */
    size_t n_ignore;
    struct script_check *check; /* --check: what loading found (script_check.c); NULL */
};

/* A timer is owned by the app module whose top level (or whose timer) made
 * it, else by the route whose code did: it goes with that owner's version.
 * Listed on script->timers; freed by timer_free (script_module.c). */
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

static inline struct script *get_script(lua_State *L) {
    struct script *s;
    lua_getallocf(L, (void **)&s);
    return s;
}

/* ---- script.c ---- */

/* A Lua state for app_dir with every library, guard and module in place and
 * no route loaded yet (script_new loads them). real_path: use app_dir's
 * realpath (the server), or app_dir as given (--check reports paths as typed). */
struct script *script__state_new(struct sb_server *srv, const char *app_dir, int real_path);

/* Call the function below nargs arguments on the stack under the budget and
 * the memory cap. Returns 0, or -1 after logging the error with `what` (or,
 * when `what` is NULL, "route R (FILE): HANDLER KIND failed" for
 * s->cur_route, or "module M (FILE): ..." for s->cur_mod). */
int script__pcall(struct script *s, int nargs, int nres, const char *what, const char *handler,
                  const char *kind);

/* The log fields of what is running: its route and script, where the error being
 * handled was raised, its connection (whose remote is written into rb). */
void script__log_fields(struct script *s, struct log_fields *f, char *rb, size_t cap);

static inline int protected_call(struct script *s, int nargs, int nres, const char *what) {
    return script__pcall(s, nargs, nres, what, NULL, NULL);
}

/* Misuse errors worded like lauxlib's, naming function fn and argument #n. */
int script__arg_error(lua_State *L, int n, const char *fn, const char *msg);
int script__type_error(lua_State *L, int idx, int n, const char *fn, const char *want);
const char *script__arg_string(lua_State *L, int idx, int n, const char *fn, size_t *len);
const char *script__arg_optstring(lua_State *L, int idx, int n, const char *fn, size_t *len);
const char *script__arg_topic(lua_State *L, int idx, int n, const char *fn, size_t *len);
int script__is_utf8(const char *p, size_t len);

/* Request tables: push the decoded path, the query table, the headers table. */
void script__push_path(lua_State *L, const struct http_request *req);
void script__push_query(lua_State *L, const char *q, size_t len);
void script__push_headers(lua_State *L, const struct http_request *req);

/* ---- script_ws.c ---- */

void script__ws_init(struct script *s);
/* Push c's ws userdata, creating it on first use. */
void script__push_ws(struct script *s, struct conn *c);
/* The connection is gone: its ws turns closed and the registry lets it go. */
void script__ws_release(struct script *s, struct conn *c);
/* publish(topic, msg [, binary]) from argument `first` on: to every
 * subscriber but `except` (NULL: all), and through Redis. */
int script__publish(lua_State *L, int first, struct sb_server *srv, struct conn *except,
                    const char *fn);

/* ---- script_module.c ---- */

void script__module_init(struct script *s);
/* Cancel r's timers: with same=1 those of `version`, with same=0 all others.
 * r NULL: every timer. */
void script__cancel_route_timers(struct script *s, struct route *r, uint32_t version, int same);
/* Cancel module mod's timers: with same=1 those of generation gen, with
 * same=0 all others. */
void script__cancel_module_timers(struct script *s, const char *mod, uint32_t gen, int same);

/* ---- script_check.c ---- */

/* --check: a load failed with Lua error msg (its first line is reported, at
 * the position it names, else at the file being loaded). */
void script__check_error(struct script *s, const char *msg);
/* --check: a route's top level or a lib/ module is about to run from file. */
void script__check_loading(struct script *s, const char *file);
/* --check: the table route script `file` returned is at idx: warn on
 * function fields that are no handler the server calls. */
void script__check_handlers(struct script *s, int idx);
/* --check: __newindex for the environments scripts run in (warns, then rawset). */
int script__check_newindex(lua_State *L);

/* ---- script_crypto.c ---- */

/* Set `crypto` and `jwt` on the module table at the top of the stack. The
 * JWT functions decode and encode JSON through registry["switchboard.json_decode"]
 * and ["switchboard.json_encode"] (script_json.c). */
void script__crypto_open(lua_State *L);

/* ---- script_json.c ---- */

/* Push the switchboard.json table and return 1, or push lua-cjson's load
 * error and return 0. Sets registry["switchboard.json_encode"/"_decode"]. */
int script__json_open(lua_State *L);

/* ---- script_route.c ---- */

/* The handlers a route script may define: the six events, then "reload"; NULL-ended. */
extern const char *const script__handler_names[];

/* package.path for lib/ and the shipped modules; `require` that tracks app modules. */
void script__routes_init(struct script *s);
/* Load every route script under the app directory (counting loads and failures). */
void script__routes_scan(struct script *s, int *loaded, int *failed);
/* 1 when the app layout rules say `rel` (a path below the app dir, no leading
 * slash; is_dir: a folder) is never a route: a dot-file or dot-folder, a folder
 * named spec or test, a *_spec.lua, or a match of a .sbignore pattern. */
int script__layout_skip(struct script *s, const char *rel, int is_dir);

#endif
