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
struct outbound_ctx;

#define WS_MT "switchboard.ws"
#define TIMER_MT "switchboard.timer"
#define HOOK_EVERY 1000
#define TRACEBACK_INDEX 1 /* l_traceback, at the bottom of the main state's stack */
/* registry[MODS_KEY][name] = { file = path under lib/, gen = top-level runs,
 * users = { [app module that required it] = true },
 * routes = { [route light userdata] = true } } */
#define MODS_KEY "switchboard.modules"

struct sb_timer;
struct script_task;   /* a handler or timer call that waits (script_task.c) */
struct script_thread; /* one of its coroutines */
struct script_call;   /* what a handler call is (below) */

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
    long budget_ticks; /* hook ticks left in this handler call (resume) */
    long budget_full;  /* ticks of a whole budget: --lua-budget / HOOK_EVERY + 1 */
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
    uint32_t cur_version; /* the route version a resumed call runs on (0: cur_route's) */
    int started;       /* past the start-up scan: loads are reloads, counted */
    const void *ws_mt; /* the ws metatable, for a pointer check */
    char node[17];     /* switchboard.node: random hex, per process */
    char **ignore;     /* APP_DIR/.sbignore's patterns (owned, ignore_load) */
    size_t n_ignore;
    struct script_check *check; /* --check: what loading found (script_check.c); NULL */
    /* handlers run as coroutines (script_task.c) */
    lua_State *cur_co;                  /* the handler coroutine running now, or NULL */
    const struct script_call *cur_call; /* what it runs (owned by its caller or its task) */
    struct script_thread *cur_thr;      /* its record, once something in its call waited */
    lua_State **pool;                   /* idle coroutines, reused (anchored in POOL_KEY) */
    int npool, pool_cap;
    struct script_task *tasks;  /* calls that wait (owned; script_task.c) */
    struct script_redis *redis; /* switchboard.redis's client (script_redis.c); owned */
    int in_format;              /* a history format runs (script_history.c) */
    struct subs *subs;          /* switchboard.subscribe's subscriptions (script_sub.c); owned */
    struct presence *presence;  /* presence entries (script_presence.c); owned */
    /* The text message whose message handler runs now (already UTF-8 checked
     * by the decoder): anchored on L's stack for the call, so a send or
     * publish of this very string skips checking it again. NULL otherwise. */
    const char *valid_text;
    size_t valid_len;
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
/* script__is_utf8, but no pass over the bytes when they are the text message
 * being handled (s->valid_text), which the decoder checked. */
int script__text_ok(struct script *s, const char *p, size_t len);

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

/* ---- script_task.c: handlers that wait ---- */

/* A C function of the switchboard module that waits (OpenResty's cosocket model):
 *   struct script_wait *w = script__wait_begin(L, cancel, ud);  -- raises "cannot wait
 *       here" (luaL_error, naming the calling function) outside a handler or timer
 *       coroutine: at a script's top level, inside a metamethod or another C call
 *       that cannot yield, or inside a coroutine of the script's own (sb.* does not
 *       propagate yields through coroutine.resume/wrap: use sb.spawn);
 *   ... start the I/O, keep w ...
 *   return script__wait_yield(L, w);      -- yields the handler's coroutine
 * When the I/O completes, its callback pushes the results onto script__wait_thread(w)
 * (a lua_State *; lua_checkstack it for more than a few values) and calls
 * script__wait_done(w, nresults): the coroutine resumes from the loop (never nested
 * inside the I/O callback: an event_active'd event, so the I/O library's stack unwinds
 * first), and those values are what the waiting C function returns to Lua.
 * script__wait_done may also be called before script__wait_yield (an I/O that fails at
 * once): the coroutine still yields and resumes from the loop. If the wait is abandoned
 * (--handler-timeout, shutdown, the handler's state being torn down) cancel(ud) is
 * called exactly once instead (from the loop, never from inside script__wait_begin)
 * and the I/O must stop without calling script__wait_done. After script__wait_done or
 * cancel, w is invalid. cancel may be NULL (nothing to stop). Nothing may raise
 * between script__wait_begin and script__wait_yield: check the arguments and
 * allocate (a userdata on L's stack lives as long as the wait) before begin.
 * A handler call that waits holds its connection (conn_hold) until it ends: its
 * next events wait. The budget (--lua-budget) is per resume; --handler-timeout
 * bounds the whole call. */
struct script_wait;
typedef void (*script_wait_cancel_fn)(void *ud);
struct script_wait *script__wait_begin(lua_State *L, script_wait_cancel_fn cancel, void *ud);
int script__wait_yield(lua_State *L, struct script_wait *w);
lua_State *script__wait_thread(struct script_wait *w);
void script__wait_done(struct script_wait *w, int nresults);

/* What a handler (or timer) call is: set by its caller, read by the task that
 * runs it when it waits (copied then; mod strdup'd). */
struct script_call {
    struct route *route; /* whose handler (cur_route while it runs), or NULL */
    struct conn *conn;   /* whose event (held while the call waits), or NULL */
    const char *handler; /* "message", "timer", ... (static) */
    const char *mod;     /* lib/ module whose timer runs, or NULL */
    uint32_t mod_gen;
    uint32_t version; /* route's version when the call began (set when it first waits) */
    int nres; /* results the caller reads */
    /* Called from the loop when a call that waited ends: ok=1 with its nres
     * results on top of s->L's stack (done pops them), ok=0 when it failed
     * (logged: an error, --handler-timeout, shutdown) with nothing pushed. The
     * connection is still held during done and released after it. */
    void (*done)(struct script *s, const struct script_call *call, int ok);
    void *ud; /* for done (owned by the caller's done) */
};

/* Run the function below its nargs arguments on s->L's stack as call, in a
 * coroutine from the pool, under the budget (per resume) and the memory cap.
 * Returns 0 when it ended: its nres results are on s->L's stack; -1 when it
 * failed (logged); 1 when it waits: call->done runs later (call is copied). */
int script__run(struct script *s, const struct script_call *call, int nargs);
/* Handler calls of connections waiting now (timer calls not counted). */
unsigned script__waiting(struct script *s);
/* End every waiting call as failed (shutdown, script_free). */
void script__cancel_all(struct script *s);
void script__task_init(struct script *s);
/* Set sleep, spawn and wait on the module table at the top of the stack. */
void script__task_open(lua_State *L);
void script__task_free(struct script *s);

/* (script.c, for script_task.c) Start/end the instruction budget around one
 * resume; end returns 1 when the budget stopped it. Inline: per message. */
void script__budget_rehook(struct script *s);
static inline void script__budget_begin(struct script *s) {
    s->in_handler = 1;
    s->budget_hit = 0;
    s->budget_ticks = s->budget_full;
}
static inline int script__budget_end(struct script *s) {
    int hit = s->budget_hit;
    s->in_handler = 0;
    if (hit) /* back from raising at every instruction */
        script__budget_rehook(s);
    return hit;
}
/* Log and count a failed handler call: the error (a string with traceback)
 * on top of s->L's stack, popped; rc is Lua's status, hit the budget's. */
void script__log_failure(struct script *s, int rc, int hit, const char *handler, const char *kind);
/* Run the scripts' finalizers queued by the call that just ended. */
void script__after_call(struct script *s);

/* ---- script_http.c, script_tcp.c: outbound I/O that handlers wait on ---- */

/* The loop's outbound context (srv->outbound), made on first use; NULL on OOM. */
struct outbound_ctx *script__outbound(struct script *s);
/* Options table at index t (0: none) of argument #n of fn. opt_field pushes
 * opts[k] and returns 1 when it is of type want (a number passes as a
 * string), returns 0 when absent, raises otherwise; opt_seconds and opt_bool
 * pop it, opt_string leaves the string there (valid while the call runs). */
int script__opt_field(lua_State *L, int t, const char *k, int want, int n, const char *fn);
double script__opt_seconds(lua_State *L, int t, const char *k, double d, int n, const char *fn);
int script__opt_bool(lua_State *L, int t, const char *k, int d, int n, const char *fn);
const char *script__opt_string(lua_State *L, int t, const char *k, const char *d, size_t *len,
                               int n, const char *fn);
/* Set `http` (script_http.c) and `tcp` (script_tcp.c) on the module table at the top. */
void script__http_open(lua_State *L);
void script__tcp_open(lua_State *L);

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

/* ---- script_redis.c ---- */

/* The client, its connection metatable and its result thread: 0, or -1 out of memory. */
int script__redis_init(struct script *s);
/* Set `redis` on the module table at the top of the stack. */
void script__redis_open(lua_State *L);
/* Before lua_close: close every connection; calls still waiting end by their cancel. */
void script__redis_free(struct script *s);
/* After lua_close: free the client. */
void script__redis_release(struct script *s);

/* ---- script_history.c ---- */

struct history_rule;
/* Set `history` (keep, read) on the module table at the top of the stack. */
void script__history_open(lua_State *L);
/* The publish of a topic with history rule r (positions, format, store or
 * Redis): pushes the count of local subscribers queued on (0 with --redis:
 * delivery comes back through Redis), or nil, "redis: ..." when Redis cannot
 * take it (returns the number of results). */
int script__history_publish(lua_State *L, struct sb_server *srv, const struct history_rule *r,
                            const char *topic, size_t tlen, const char *msg, size_t len,
                            int binary, struct conn *except, const char *fn);
/* ws:subscribe(topic, opts) when opts has since or epoch (opts at index t):
 * pushes recovered (and the stream's epoch). May wait (with --redis). */
int script__history_subscribe(lua_State *L, struct conn *c, const char *topic, size_t tlen,
                              int t);
/* With --redis: hook the channel's history publications to the format and the
 * local subscribers (script_new). */
void script__history_init(struct script *s);
/* ---- script_sub.c: switchboard.subscribe ---- */

/* The subscriptions' state, and the pubsub watch hook: 0, or -1 out of memory. */
int script__sub_init(struct script *s);
/* Set subscribe and unsubscribe on the module table at the top of the stack. */
void script__sub_open(lua_State *L);
/* Before lua_close, after the waiting calls ended: every subscription goes. */
void script__sub_free(struct script *s);
/* As script__cancel_route_timers / script__cancel_module_timers, for subscriptions. */
void script__cancel_route_subs(struct script *s, struct route *r, uint32_t version, int same);
void script__cancel_module_subs(struct script *s, const char *mod, uint32_t gen, int same);
/* Subscriptions live now. */
size_t script__sub_count(struct script *s);

/* ---- script_presence.c: ws:subscribe(topic, { presence = info }), sb.presence ---- */

int script__presence_init(struct script *s);
/* Set presence on the module table at the top of the stack. */
void script__presence_open(lua_State *L);
/* Before lua_close. */
void script__presence_free(struct script *s);
/* The options table at index opts (absolute) of argument #n of fn: when it has
 * `presence`, push that table as JSON and return 1 (raises when it is no table, does
 * not encode or is longer than 1024 bytes); 0 with nothing pushed without it. */
int script__presence_encode(lua_State *L, int opts, int n, const char *fn);
/* c (subscribed to topic) is present there with the JSON at json_idx of L (the
 * running thread). */
void script__presence_join(lua_State *L, struct conn *c, const char *topic, size_t tlen,
                           int json_idx);
/* c left topic / every topic (unsubscribe, close): its entries go. Cheap when no
 * connection uses presence. */
void script__presence_leave(lua_State *L, struct conn *c, const char *topic, size_t tlen);
void script__presence_leave_all(struct script *s, struct conn *c);
/* This process's entries, all topics. */
size_t script__presence_entries(struct script *s);

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
