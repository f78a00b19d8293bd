/* script_task.c — handlers that wait (OpenResty's model, on our loop).
 *
 * Every handler and timer call runs in a coroutine taken from a pool (threads
 * that finished normally are reused). A call that never waits costs one
 * lua_resume instead of one lua_pcall: no allocation, no task. The first wait
 * (or sb.spawn) of a call makes it a task: a record of its coroutines (the
 * handler's own and its light threads), the connection it holds, its
 * --handler-timeout. A wait registers its I/O and yields; the I/O's callback
 * pushes the results and calls script__wait_done, which activates the
 * coroutine's event: it resumes from the loop. The call ends when its function
 * and every light thread it spawned have returned; then the caller's `done`
 * runs with the function's results (script_int.h). The instruction budget is
 * per resume. */
#define _GNU_SOURCE
#include <event2/event.h>
#include <event2/event_struct.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "conn.h"
#include "log.h"
#include "loop.h"
#include "script_int.h"

#define POOL_KEY "switchboard.pool" /* set of the pooled coroutines (anchors them) */
#define STOPPED_KEY "switchboard.stopped"
#define POOL_MAX 256
#define THREAD_MT "switchboard.thread"

enum { TH_RUN, TH_WAIT, TH_READY, TH_DONE, TH_FAILED };

struct script_wait {
    struct script_thread *th;
    script_wait_cancel_fn cancel;
    void *ud;
    int active;
};

/* One coroutine of a task. Owned by its task (freed in task_free). */
struct script_thread {
    struct script_task *task;
    lua_State *co;
    struct script_wait wait;         /* at most one at a time */
    struct event ev;                 /* resumes it from the loop (event_active) */
    int state;                       /* TH_* */
    int nargs;                       /* TH_READY: values on top of co to resume with */
    int nres;                        /* TH_DONE: results on top of co; TH_FAILED: 1 (the error) */
    int handle_ref;                  /* a light thread's handle (registry), or LUA_NOREF */
    struct script_thread *waited_by; /* the thread in sb.wait on this one, or NULL */
    struct script_thread *next;
};

/* A call that waits. Owned by s->tasks from the first wait to its end. */
struct script_task {
    struct script *s;
    struct script_call call;
    char *mod; /* owned copy of call.mod */
    struct script_thread *main, *threads;
    int live;   /* threads not ended */
    int in_run; /* its first resume, inside script__run: that reports the end */
    int ended, ok, linked, held;
    struct event *timeout;
    struct script_task *next, *prev;
};

struct thread_ud {
    struct script_thread *th; /* NULL once its call ended */
};

/* ---- the pool ---------------------------------------------------------------------- */

/* A coroutine ready to run a function: a pooled one, or a new one (anchored
 * in POOL_KEY; L is a running thread of the state to push with). */
static lua_State *pool_take(struct script *s, lua_State *L) {
    if (s->npool)
        return s->pool[--s->npool];
    lua_getfield(L, LUA_REGISTRYINDEX, POOL_KEY);
    lua_State *co = lua_newthread(L);
    lua_pushboolean(L, 1);
    lua_rawset(L, -3);
    lua_pop(L, 1);
    return co;
}

/* Forget co: it is collected once nothing else holds it. */
static void pool_drop(struct script *s, lua_State *co) {
    lua_State *L = s->L;
    lua_getfield(L, LUA_REGISTRYINDEX, POOL_KEY);
    lua_pushthread(co);
    lua_xmove(co, L, 1);
    lua_pushnil(L);
    lua_rawset(L, -3);
    lua_pop(L, 1);
}

/* co finished normally: back to the pool (or dropped past POOL_MAX). */
static void pool_give(struct script *s, lua_State *co) {
    lua_settop(co, 0);
    if (s->npool < s->pool_cap) {
        s->pool[s->npool++] = co;
        return;
    }
    pool_drop(s, co);
}

static int thread_stopped(lua_State *L, lua_State *co) {
    lua_getfield(L, LUA_REGISTRYINDEX, STOPPED_KEY);
    lua_pushthread(co);
    lua_xmove(co, L, 1);
    int stopped = lua_rawget(L, -2) != LUA_TNIL;
    lua_pop(L, 2);
    return stopped;
}

/* ---- errors ------------------------------------------------------------------------- */

/* Push onto s->L the error on top of the failed coroutine co with its
 * traceback, and note where it was raised (for the log line). */
static void push_traceback(struct script *s, lua_State *co) {
    lua_State *L = s->L;
    lua_Debug ar;
    s->err_line = 0;
    for (int level = 0; lua_getstack(co, level, &ar); level++) {
        if (lua_getinfo(co, "Sl", &ar) && ar.currentline > 0) {
            snprintf(s->err_src, sizeof s->err_src, "%s",
                     ar.source[0] == '@' ? ar.source + 1 : ar.short_src);
            s->err_line = ar.currentline;
            break;
        }
    }
    const char *msg = lua_tostring(co, -1);
    if (!msg)
        msg = luaL_tolstring(co, -1, NULL);
    luaL_traceback(L, co, msg, 0);
}

/* co failed with rc (its error on top): close its __close variables as a
 * protected call would have (not when the budget stopped it: those must never
 * run), within what is left of the budget. Returns 1 when the budget stopped it. */
static int close_failed(struct script *s, lua_State *co, int hit) {
    if (hit || thread_stopped(s->L, co))
        return 1;
    s->in_handler = 1; /* the rest of this resume's budget */
    lua_resetthread(co);
    return script__budget_end(s);
}

/* Move co's nr results (on its top) to s->L, adjusted to nres (no call
 * into Lua's API when there is nothing to move: this runs per message). */
static void move_results(struct script *s, lua_State *co, int nr, int nres) {
    lua_State *L = s->L;
    if (nr > nres) {
        lua_pop(co, nr - nres);
        nr = nres;
    }
    if (!nres)
        return;
    luaL_checkstack(L, nres, "handler results");
    if (nr)
        lua_xmove(co, L, nr);
    for (; nr < nres; nr++)
        lua_pushnil(L);
}

/* ---- tasks ------------------------------------------------------------------------ */

static void on_resume(evutil_socket_t fd, short what, void *arg);

static struct script_thread *thread_new(struct script_task *t, lua_State *co) {
    struct script_thread *th = calloc(1, sizeof *th);
    if (!th)
        return NULL;
    th->task = t;
    th->co = co;
    th->handle_ref = LUA_NOREF;
    th->wait.th = th;
    event_assign(&th->ev, t->s->srv->base, -1, 0, on_resume, th);
    th->next = t->threads;
    t->threads = th;
    t->live++;
    return th;
}

/* The running call becomes a task (its first wait or spawn). Returns the
 * running coroutine's record, or NULL on OOM. */
static struct script_thread *promote(struct script *s) {
    if (s->cur_thr)
        return s->cur_thr;
    struct script_task *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->s = s;
    t->call = *s->cur_call;
    /* a reload while it waits leaves it on this version (the timers it makes too) */
    t->call.version = t->call.route ? t->call.route->version : 0;
    if (t->call.mod && !(t->mod = strdup(t->call.mod))) {
        free(t);
        return NULL;
    }
    t->call.mod = t->mod;
    t->in_run = 1;
    t->main = thread_new(t, s->cur_co);
    if (!t->main) {
        free(t->mod);
        free(t);
        return NULL;
    }
    t->main->state = TH_RUN;
    s->cur_call = &t->call;
    s->cur_thr = t->main;
    return t->main;
}

static void task_free(struct script_task *t) {
    struct script *s = t->s;
    while (t->threads) {
        struct script_thread *th = t->threads;
        t->threads = th->next;
        event_del(&th->ev);
        if (th->handle_ref != LUA_NOREF) {
            lua_rawgeti(s->L, LUA_REGISTRYINDEX, th->handle_ref);
            struct thread_ud *u = lua_touserdata(s->L, -1);
            if (u)
                u->th = NULL;
            lua_pop(s->L, 1);
            luaL_unref(s->L, LUA_REGISTRYINDEX, th->handle_ref);
        }
        if (th->state == TH_DONE && lua_status(th->co) == LUA_OK)
            pool_give(s, th->co);
        else
            pool_drop(s, th->co);
        free(th);
    }
    if (t->timeout)
        event_free(t->timeout);
    free(t->mod);
    free(t);
}

/* Stop every thread of t that has not ended: cancel its wait (exactly once). */
static void task_stop_threads(struct script_task *t) {
    for (struct script_thread *th = t->threads; th; th = th->next) {
        if (th->state == TH_DONE || th->state == TH_FAILED)
            continue;
        event_del(&th->ev);
        th->waited_by = NULL;
        if (th->wait.active) {
            th->wait.active = 0;
            if (th->wait.cancel)
                th->wait.cancel(th->wait.ud);
        }
        th->state = TH_FAILED;
        t->live--;
    }
}

/* The call ended: its function's results (ok) to s->L, then the caller's
 * done (unless script__run is still on its first resume: it reports). */
static void task_end(struct script_task *t, int ok) {
    struct script *s = t->s;
    if (t->ended)
        return;
    t->ended = 1;
    t->ok = ok;
    task_stop_threads(t);
    if (ok)
        move_results(s, t->main->co, t->main->nres, t->call.nres);
    if (t->in_run)
        return;
    if (t->linked) {
        if (t->prev)
            t->prev->next = t->next;
        else
            s->tasks = t->next;
        if (t->next)
            t->next->prev = t->prev;
        s->srv->stats.handlers_waiting--;
    }
    if (t->call.done)
        t->call.done(s, &t->call, ok);
    else if (ok)
        lua_pop(s->L, t->call.nres);
    struct conn *held = t->held ? t->call.conn : NULL;
    task_free(t);
    if (held)
        conn_release(held);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg) {
    struct script_task *t = arg;
    struct script *s = t->s;
    (void)fd;
    (void)what;
    s->srv->now = server_clock();
    struct route *r = t->call.route;
    struct log_fields lf = {.route = r ? r->path : NULL, .script = r ? r->file : NULL};
    char rb[64];
    if (t->call.conn) {
        lf.conn = t->call.conn->id;
        lf.remote = conn_remote(t->call.conn, rb, sizeof rb);
    }
    if (r)
        log_with(LOG_ERROR, &lf,
                 "route %s (%s): %s handler timed out after %g s (--handler-timeout)", r->path,
                 r->file, t->call.handler, s->srv->cfg.handler_timeout);
    else
        log_with(LOG_ERROR, &lf, "module %s: %s handler timed out after %g s (--handler-timeout)",
                 t->mod ? t->mod : "?", t->call.handler, s->srv->cfg.handler_timeout);
    s->srv->stats.handler_errors++;
    s->srv->stats.handler_timeouts++;
    task_end(t, 0);
}

/* script__run's first resume is over and t goes on: list it, hold its
 * connection, start its clock. */
static void task_go_async(struct script_task *t) {
    struct script *s = t->s;
    t->in_run = 0;
    t->linked = 1;
    t->next = s->tasks;
    t->prev = NULL;
    if (s->tasks)
        s->tasks->prev = t;
    s->tasks = t;
    s->srv->stats.handlers_waiting++;
    s->srv->stats.handler_waits++;
    if (t->call.conn) {
        conn_hold(t->call.conn);
        t->held = 1;
    }
    double secs = s->srv->cfg.handler_timeout;
    if (secs > 0 && (t->timeout = event_new(s->srv->base, -1, 0, on_timeout, t))) {
        struct timeval tv = {(time_t)secs, (suseconds_t)((secs - floor(secs)) * 1e6)};
        event_add(t->timeout, &tv);
    }
}

/* Push th's outcome for sb.wait onto L: true, results... or false, err. */
static int push_outcome(struct script_thread *th, lua_State *L) {
    lua_State *co = th->co;
    int n = th->nres, base = lua_gettop(co) - n;
    luaL_checkstack(L, n + 1, "sb.wait results");
    lua_pushboolean(L, th->state == TH_DONE);
    for (int i = 1; i <= n; i++) {
        lua_pushvalue(co, base + i);
        lua_xmove(co, L, 1);
    }
    return n + 1;
}

/* th has ended (done or failed): wake its waiter; the task ends with its
 * function and its last light thread. */
static void thread_ended(struct script_thread *th) {
    struct script_task *t = th->task;
    t->live--;
    struct script_thread *w = th->waited_by;
    if (w) {
        th->waited_by = NULL;
        int n = push_outcome(th, w->co);
        script__wait_done(&w->wait, n);
    }
    if (!t->live)
        task_end(t, t->main->state == TH_DONE);
}

/* After a resume of th returned rc with nr results (hit: the budget stopped it). */
static void thread_after_resume(struct script_thread *th, int rc, int nr, int hit) {
    struct script_task *t = th->task;
    struct script *s = t->s;
    lua_State *co = th->co;
    if (rc == LUA_YIELD) {
        if (th->state == TH_WAIT || th->state == TH_READY)
            return; /* a wait: resumed from the loop */
        lua_pushliteral(co, "attempt to yield from a handler (coroutine.yield outside a "
                            "coroutine of the script's own; sb.sleep and sb.spawn wait)");
        rc = LUA_ERRRUN;
    } else if (rc == LUA_OK) {
        th->state = TH_DONE;
        th->nres = nr;
        thread_ended(th);
        return;
    }
    th->state = TH_FAILED;
    lua_pushvalue(co, -1); /* the error itself, for sb.wait */
    lua_xmove(co, s->L, 1);
    push_traceback(s, co);
    if (lua_status(co) != LUA_YIELD)
        hit = close_failed(s, co, hit) || hit;
    int whole = th == t->main || hit || rc == LUA_ERRMEM;
    script__log_failure(s, rc, hit, t->call.handler, whole ? "handler" : "light thread");
    if (whole) {
        lua_pop(s->L, 1);
        t->live--;
        th->waited_by = NULL;
        task_end(t, 0);
        return;
    }
    lua_settop(co, 0);
    lua_xmove(s->L, co, 1);
    th->nres = 1;
    thread_ended(th);
}

/* Resume th with its nargs values, as its task's call. */
static void thread_resume(struct script_thread *th, int nargs) {
    struct script_task *t = th->task;
    struct script *s = t->s;
    struct route *prev_route = s->cur_route;
    struct conn *prev_conn = s->cur_conn;
    const char *prev_mod = s->cur_mod;
    uint32_t prev_gen = s->cur_mod_gen, prev_version = s->cur_version;
    s->cur_route = t->call.route;
    s->cur_conn = t->call.conn;
    s->cur_mod = t->mod;
    s->cur_mod_gen = t->call.mod_gen;
    s->cur_version = t->call.version;
    s->cur_co = th->co;
    s->cur_call = &t->call;
    s->cur_thr = th;
    th->state = TH_RUN;
    double t0 = sb_metrics_on(s->srv) ? server_clock() : 0;
    script__budget_begin(s);
    int nr = 0;
    int rc = lua_resume(th->co, s->L, nargs, &nr);
    int hit = script__budget_end(s);
    if (t0 > 0)
        stats_observe_handler(&s->srv->stats, server_clock() - t0);
    s->cur_co = NULL;
    s->cur_call = NULL;
    s->cur_thr = NULL;
    thread_after_resume(th, rc, nr, hit);
    s->cur_route = prev_route;
    s->cur_conn = prev_conn;
    s->cur_mod = prev_mod;
    s->cur_mod_gen = prev_gen;
    s->cur_version = prev_version;
    script__after_call(s);
}

static void on_resume(evutil_socket_t fd, short what, void *arg) {
    struct script_thread *th = arg;
    (void)fd;
    (void)what;
    th->task->s->srv->now = server_clock();
    if (th->state == TH_READY)
        thread_resume(th, th->nargs);
}

/* ---- the entry point ------------------------------------------------------------ */

int script__run(struct script *s, const struct script_call *call, int nargs) {
    lua_State *L = s->L;
    if (s->in_handler || s->cur_co) /* nested (a finalizer's call): a plain call */
        return script__pcall(s, nargs, call->nres, NULL, call->handler, "handler");
    lua_State *co = pool_take(s, L);
    lua_xmove(L, co, nargs + 1);
    struct route *prev_route = s->cur_route;
    struct conn *prev_conn = s->cur_conn;
    const char *prev_mod = s->cur_mod;
    uint32_t prev_gen = s->cur_mod_gen, prev_version = s->cur_version;
    s->cur_version = 0;
    s->cur_route = call->route;
    s->cur_conn = call->conn;
    if (call->mod) {
        s->cur_mod = call->mod;
        s->cur_mod_gen = call->mod_gen;
    }
    s->cur_co = co;
    s->cur_call = call;
    s->cur_thr = NULL;
    double t0 = sb_metrics_on(s->srv) ? server_clock() : 0;
    script__budget_begin(s);
    int nr = 0;
    int rc = lua_resume(co, L, nargs, &nr);
    int hit = script__budget_end(s);
    if (t0 > 0) /* the time in Lua: each resume of a call that waits counts apart */
        stats_observe_handler(&s->srv->stats, server_clock() - t0);
    struct script_thread *th = s->cur_thr;
    s->cur_co = NULL;
    s->cur_call = NULL;
    s->cur_thr = NULL;
    int ret;
    if (!th) { /* nothing waited or spawned: the plain call's cost */
        if (rc == LUA_OK) {
            move_results(s, co, nr, call->nres); /* co's stack is empty after */
            if (s->npool < s->pool_cap)
                s->pool[s->npool++] = co;
            else
                pool_give(s, co);
            ret = 0;
        } else {
            if (rc == LUA_YIELD) {
                lua_pushliteral(co, "attempt to yield from a handler (coroutine.yield outside "
                                    "a coroutine of the script's own; sb.sleep and sb.spawn wait)");
                rc = LUA_ERRRUN;
            }
            push_traceback(s, co);
            if (lua_status(co) != LUA_YIELD)
                hit = close_failed(s, co, hit) || hit;
            script__log_failure(s, rc, hit, call->handler, "handler");
            pool_drop(s, co);
            ret = -1;
        }
    } else {
        struct script_task *t = th->task;
        thread_after_resume(th, rc, nr, hit);
        if (t->ended) {
            ret = t->ok ? 0 : -1;
            task_free(t);
        } else {
            task_go_async(t);
            ret = 1;
        }
    }
    s->cur_route = prev_route;
    s->cur_conn = prev_conn;
    s->cur_mod = prev_mod;
    s->cur_mod_gen = prev_gen;
    s->cur_version = prev_version;
    script__after_call(s);
    return ret;
}

unsigned script__waiting(struct script *s) {
    unsigned n = 0;
    for (struct script_task *t = s->tasks; t; t = t->next)
        n += t->call.conn != NULL;
    return n;
}

void script__cancel_all(struct script *s) {
    while (s->tasks)
        task_end(s->tasks, 0);
}

/* ---- waits ------------------------------------------------------------------------ */

/* The name of the running C function, for an error (only then: it costs a
 * search when the caller did not name it, e.g. pcall(sb.sleep, x)). */
static const char *fn_name(lua_State *L) {
    lua_Debug ar;
    if (!lua_getstack(L, 0, &ar))
        return "?";
    if (lua_getinfo(L, "n", &ar) && ar.name)
        return ar.name;
    const char *name = "?";
    lua_getinfo(L, "f", &ar); /* the function, then the module's tables to look in */
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    if (lua_getfield(L, -1, "switchboard") == LUA_TTABLE) {
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            if (lua_rawequal(L, -1, -5) && lua_type(L, -2) == LUA_TSTRING)
                name = lua_tostring(L, -2); /* a key of the module table: it stays alive */
            if (lua_type(L, -1) == LUA_TTABLE) {
                lua_pushnil(L);
                while (lua_next(L, -2)) {
                    if (lua_rawequal(L, -1, -7) && lua_type(L, -2) == LUA_TSTRING)
                        name = lua_tostring(L, -2);
                    lua_pop(L, 1);
                }
            }
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 3);
    return name;
}

/* The running handler's coroutine record for a function that waits (yields)
 * or spawns, or a raised "cannot wait here" naming fn (NULL: the running one). */
static struct script_thread *waiting_thread(lua_State *L, const char *fn, int yields) {
    struct script *s = get_script(L);
    if (!s->cur_co)
        luaL_error(L,
                   "'%s' cannot wait here: only a handler or a timer function may wait "
                   "(a script's top level runs at load)",
                   fn ? fn : fn_name(L));
    if (yields && L != s->cur_co)
        luaL_error(L,
                   "'%s' cannot wait inside a coroutine of the script's own "
                   "(coroutine.wrap/resume): use sb.spawn",
                   fn ? fn : fn_name(L));
    if (yields && !lua_isyieldable(L))
        luaL_error(L,
                   "'%s' cannot wait here: inside a metamethod, an iterator or a C "
                   "function that cannot yield",
                   fn ? fn : fn_name(L));
    struct script_thread *th = promote(s);
    if (!th)
        luaL_error(L, "out of memory");
    return th;
}

struct script_wait *script__wait_begin(lua_State *L, script_wait_cancel_fn cancel, void *ud) {
    struct script_thread *th = waiting_thread(L, NULL, 1);
    if (th->wait.active)
        luaL_error(L, "'%s': this coroutine already waits", fn_name(L));
    th->wait.cancel = cancel;
    th->wait.ud = ud;
    th->wait.active = 1;
    th->state = TH_WAIT;
    return &th->wait;
}

int script__wait_yield(lua_State *L, struct script_wait *w) {
    (void)w;
    return lua_yield(L, 0);
}

lua_State *script__wait_thread(struct script_wait *w) {
    return w->th->co;
}

void script__wait_done(struct script_wait *w, int nresults) {
    struct script_thread *th = w->th;
    w->active = 0;
    th->state = TH_READY;
    th->nargs = nresults;
    event_active(&th->ev, EV_TIMEOUT, 1);
}

/* ---- sb.sleep, sb.spawn, sb.wait ---------------------------------------------------- */

struct sleeper {
    struct event ev;
    struct script_wait *w;
};

static void sleep_fired(evutil_socket_t fd, short what, void *arg) {
    struct sleeper *sl = arg;
    (void)fd;
    (void)what;
    script__wait_done(sl->w, 0);
}

static void sleep_cancel(void *ud) {
    struct sleeper *sl = ud;
    event_del(&sl->ev);
}

/* sb.sleep(seconds): yields for that long (0: until the loop's next turn). */
static int sb_sleep(lua_State *L) {
    struct script *s = get_script(L);
    if (lua_type(L, 1) != LUA_TNUMBER)
        return script__type_error(L, 1, 1, "sleep", "number");
    lua_Number secs = lua_tonumber(L, 1);
    if (!(secs >= 0) || secs > 1e9)
        return script__arg_error(L, 1, "sleep", "seconds must be between 0 and 1e9");
    lua_settop(L, 1);
    /* a userdata on the waiting coroutine's stack: it lives while the wait does */
    struct sleeper *sl = lua_newuserdatauv(L, sizeof *sl, 0);
    memset(sl, 0, sizeof *sl);
    sl->w = script__wait_begin(L, sleep_cancel, sl);
    evtimer_assign(&sl->ev, s->srv->base, sleep_fired, sl);
    struct timeval tv = {(time_t)secs, (suseconds_t)((secs - floor(secs)) * 1e6)};
    event_base_update_cache_time(s->srv->base);
    event_add(&sl->ev, &tv);
    return script__wait_yield(L, sl->w); /* sl stays on this frame's stack meanwhile */
}

/* sb.spawn(fn, ...): run fn(...) as a light thread of this handler call,
 * starting on the loop's next turn; returns its handle for sb.wait. */
static int sb_spawn(lua_State *L) {
    struct script *s = get_script(L);
    if (lua_type(L, 1) != LUA_TFUNCTION)
        return script__type_error(L, 1, 1, "spawn", "function");
    struct script_thread *me = waiting_thread(L, "spawn", 0);
    struct script_task *t = me->task;
    int n = lua_gettop(L);
    struct thread_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->th = NULL;
    luaL_setmetatable(L, THREAD_MT);
    lua_State *co = pool_take(s, L);
    struct script_thread *th = thread_new(t, co);
    if (!th) {
        pool_give(s, co);
        return luaL_error(L, "out of memory");
    }
    u->th = th;
    lua_pushvalue(L, -1);
    th->handle_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_insert(L, 1); /* the handle below fn and its arguments */
    lua_xmove(L, co, n);
    th->state = TH_READY;
    th->nargs = n - 1;
    event_active(&th->ev, EV_TIMEOUT, 1);
    return 1;
}

static void wait_cancel(void *ud) {
    struct script_thread *th = ud;
    th->waited_by = NULL;
}

/* sb.wait(th): true and th's results, or false and its error; waits for it. */
static int sb_wait(lua_State *L) {
    struct script *s = get_script(L);
    struct thread_ud *u = luaL_testudata(L, 1, THREAD_MT);
    if (!u)
        return script__type_error(L, 1, 1, "wait", "thread from sb.spawn");
    struct script_thread *th = u->th;
    if (!th)
        return script__arg_error(L, 1, "wait", "its handler call has ended");
    if (!s->cur_thr || th->task != s->cur_thr->task)
        return script__arg_error(L, 1, "wait", "a thread of another handler call");
    if (th->state == TH_DONE || th->state == TH_FAILED)
        return push_outcome(th, L);
    if (th->waited_by)
        return script__arg_error(L, 1, "wait", "another thread already waits for it");
    if (th == s->cur_thr || (s->cur_thr && s->cur_co != L && th->co == L))
        return script__arg_error(L, 1, "wait", "a thread cannot wait for itself");
    struct script_wait *w = script__wait_begin(L, wait_cancel, th);
    th->waited_by = w->th;
    return script__wait_yield(L, w);
}

static int thread_tostring(lua_State *L) {
    lua_pushfstring(L, "switchboard.thread: %p", lua_touserdata(L, 1));
    return 1;
}

/* Set sleep, spawn and wait on the module table at the top of the stack. */
void script__task_open(lua_State *L) {
    static const luaL_Reg fns[] = {
        {"sleep", sb_sleep}, {"spawn", sb_spawn}, {"wait", sb_wait}, {NULL, NULL}};
    luaL_setfuncs(L, fns, 0);
}

void script__task_init(struct script *s) {
    lua_State *L = s->L;
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, POOL_KEY);
    s->pool_cap = POOL_MAX;
    s->pool = calloc((size_t)s->pool_cap, sizeof *s->pool);
    if (!s->pool)
        s->pool_cap = 0;
    luaL_newmetatable(L, THREAD_MT);
    lua_pushcfunction(L, thread_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, "switchboard.thread");
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
}

void script__task_free(struct script *s) {
    script__cancel_all(s);
    free(s->pool);
    s->pool = NULL;
    s->npool = s->pool_cap = 0;
}
