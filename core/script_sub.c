/* script_sub.c — switchboard.subscribe / unsubscribe: a script's own subscriber to a
 * topic. Each subscription is a pubsub watch (pubsub.h): the topic stays live, and
 * subscribed in Redis with --redis, without a connection. pubsub_deliver hands every
 * message on a watched topic to on_watch, which only queues it on each subscription of
 * the topic (it may run inside a handler's publish); an event then runs the functions
 * from the loop, each message in a coroutine like a timer's (it may wait). One
 * subscription's messages run one at a time, in order: while its function waits, its
 * next messages wait. What waits is bounded by --subscribe-queue-max bytes for the
 * process; past it messages are dropped for that subscription (counted, logged once a
 * second). A subscription is owned like a timer: by the lib/ module or route version
 * whose code made it, and goes with it on a reload. */
#define _GNU_SOURCE
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "log.h"
#include "pubsub.h"
#include "script_int.h"
#include "loop.h"

#define RUNS_PER_PASS 256 /* messages run per loop pass before yielding to the loop */
#define MSG_OVERHEAD 48   /* bytes counted per queued message beside its payload */

/* One message queued for the subscriptions of its topic (shared, refcounted). */
struct sub_msg {
    unsigned refs;
    int binary;
    size_t len;
    char data[];
};

struct sub_node {
    struct sub_node *next;
    struct sub_msg *m;
};

/* Owned by the state's struct subs (all, in creation order); freed by sub_free once it
 * is neither running nor waiting. */
struct script_sub {
    struct subs *S;
    struct script_sub *next, *prev;   /* S->all */
    struct script_sub *tnext;         /* its topic's list */
    struct script_sub *ready_next;    /* S->ready */
    struct sub_topic *topic;          /* NULL once unsubscribed */
    struct route *owner;              /* NULL for a module's */
    char *mod;                        /* owning lib/ module (malloc'd), or NULL */
    uint32_t version;                 /* the owner's version (a module's generation) */
    int fn_ref;
    struct sub_node *head, *tail;     /* queued messages (owned) */
    unsigned on_ready : 1, busy : 1, dead : 1;
};

/* The subscriptions of one topic (hash chained; freed with its last subscription). */
struct sub_topic {
    struct sub_topic *next;
    uint64_t hash;
    struct script_sub *subs;
    size_t len;
    char name[];
};

struct subs {
    struct script *s;
    struct script_sub *all;
    struct sub_topic **buckets;
    size_t nbuckets, ntopics;
    struct script_sub *ready, *ready_tail; /* with messages, not busy */
    struct event *ev;                      /* runs the ready ones */
    size_t bytes;                          /* queued, counted against the cap */
    uint64_t drops_unlogged;
    double drop_logged;
};

static uint64_t hash_name(const char *p, size_t len) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)p[i];
        h *= 1099511628211ull;
    }
    return h;
}

static struct sub_topic *topic_find(struct subs *S, const char *name, size_t len, uint64_t h) {
    for (struct sub_topic *t = S->buckets[h & (S->nbuckets - 1)]; t; t = t->next)
        if (t->hash == h && t->len == len && memcmp(t->name, name, len) == 0)
            return t;
    return NULL;
}

static void topic_grow(struct subs *S) {
    size_t nb = S->nbuckets * 2;
    struct sub_topic **b = calloc(nb, sizeof *b);
    if (!b)
        return;
    for (size_t i = 0; i < S->nbuckets; i++) {
        while (S->buckets[i]) {
            struct sub_topic *t = S->buckets[i];
            S->buckets[i] = t->next;
            t->next = b[t->hash & (nb - 1)];
            b[t->hash & (nb - 1)] = t;
        }
    }
    free(S->buckets);
    S->buckets = b;
    S->nbuckets = nb;
}

static void msg_unref(struct subs *S, struct sub_msg *m) {
    S->bytes -= m->len + MSG_OVERHEAD;
    if (--m->refs == 0)
        free(m);
}

static void drop_queue(struct script_sub *sub) {
    while (sub->head) {
        struct sub_node *n = sub->head;
        sub->head = n->next;
        msg_unref(sub->S, n->m);
        free(n);
    }
    sub->tail = NULL;
}

static void make_ready(struct script_sub *sub) {
    struct subs *S = sub->S;
    if (sub->on_ready || sub->busy || sub->dead || !sub->head)
        return;
    sub->on_ready = 1;
    sub->ready_next = NULL;
    if (S->ready_tail)
        S->ready_tail->ready_next = sub;
    else
        S->ready = sub;
    S->ready_tail = sub;
    event_active(S->ev, EV_TIMEOUT, 1);
}

static void sub_free(struct script_sub *sub) {
    struct subs *S = sub->S;
    drop_queue(sub);
    if (S->s->L)
        luaL_unref(S->s->L, LUA_REGISTRYINDEX, sub->fn_ref);
    free(sub->mod);
    free(sub);
}

/* Take sub off its topic (releasing the pubsub watch) and off S->all; free it unless
 * it runs, waits or sits on the ready list (then it goes when that ends). */
static void sub_remove(struct script_sub *sub) {
    struct subs *S = sub->S;
    if (sub->dead)
        return;
    sub->dead = 1;
    struct sub_topic *t = sub->topic;
    struct script_sub **pp = &t->subs;
    while (*pp != sub)
        pp = &(*pp)->tnext;
    *pp = sub->tnext;
    pubsub_unwatch(S->s->srv->pubsub, t->name, t->len);
    if (!t->subs) {
        struct sub_topic **tp = &S->buckets[t->hash & (S->nbuckets - 1)];
        while (*tp != t)
            tp = &(*tp)->next;
        *tp = t->next;
        S->ntopics--;
        free(t);
    }
    sub->topic = NULL;
    if (sub->prev)
        sub->prev->next = sub->next;
    else
        S->all = sub->next;
    if (sub->next)
        sub->next->prev = sub->prev;
    drop_queue(sub);
    if (!sub->busy && !sub->on_ready)
        sub_free(sub);
}

/* Say how many messages were dropped for --subscribe-queue-max, at most once a second. */
static void log_drops(struct subs *S) {
    double now = server_clock();
    if (!S->drops_unlogged || (S->drop_logged > 0 && now - S->drop_logged < 1.0))
        return;
    log_warn("switchboard.subscribe: %zu bytes wait for busy subscribers "
             "(--subscribe-queue-max %zu): %llu message(s) dropped",
             S->bytes, S->s->srv->cfg.subscribe_queue_max,
             (unsigned long long)S->drops_unlogged);
    S->drops_unlogged = 0;
    S->drop_logged = now;
}

/* pubsub's watch hook: queue msg on every subscription of the topic (never runs Lua). */
static void on_watch(void *ud, const char *name, size_t tlen, const void *msg, size_t len,
                     int binary) {
    struct subs *S = ud;
    struct sb_server *srv = S->s->srv;
    struct sub_topic *t = topic_find(S, name, tlen, hash_name(name, tlen));
    if (!t)
        return;
    struct sub_msg *m = NULL;
    for (struct script_sub *sub = t->subs; sub; sub = sub->tnext) {
        struct sub_node *n = NULL;
        if (!m && S->bytes + len + MSG_OVERHEAD <= srv->cfg.subscribe_queue_max &&
            (m = malloc(sizeof *m + len))) {
            m->refs = 0;
            m->binary = binary;
            m->len = len;
            memcpy(m->data, msg, len);
        }
        if (!m || S->bytes + len + MSG_OVERHEAD > srv->cfg.subscribe_queue_max ||
            !(n = malloc(sizeof *n))) {
            srv->stats.sub_dropped++;
            S->drops_unlogged++;
            log_drops(S);
            continue;
        }
        m->refs++;
        S->bytes += len + MSG_OVERHEAD;
        n->m = m;
        n->next = NULL;
        if (sub->tail)
            sub->tail->next = n;
        else
            sub->head = n;
        sub->tail = n;
        make_ready(sub);
    }
    if (m && m->refs == 0)
        free(m);
}

static void sub_done(struct script *s, const struct script_call *call, int ok) {
    struct script_sub *sub = call->ud;
    (void)s;
    (void)ok; /* a failure is logged; the next message runs all the same */
    sub->busy = 0;
    if (sub->dead)
        sub_free(sub);
    else
        make_ready(sub);
}

/* Run sub's first queued message. */
static void run_one(struct script_sub *sub) {
    struct subs *S = sub->S;
    struct script *s = S->s;
    lua_State *L = s->L;
    struct sub_node *n = sub->head;
    sub->head = n->next;
    if (!sub->head)
        sub->tail = NULL;
    int top = lua_gettop(L);
    if (sub->mod) /* on the stack under the call: sub may go first */
        lua_pushstring(L, sub->mod);
    struct script_call call = {.route = sub->owner,
                               .handler = "subscription",
                               .mod = sub->mod ? lua_tostring(L, -1) : NULL,
                               .mod_gen = sub->version,
                               .done = sub_done,
                               .ud = sub};
    lua_rawgeti(L, LUA_REGISTRYINDEX, sub->fn_ref);
    lua_pushlstring(L, n->m->data, n->m->len);
    lua_pushboolean(L, n->m->binary);
    msg_unref(S, n->m);
    free(n);
    s->srv->stats.sub_runs++;
    sub->busy = 1;
    if (script__run(s, &call, 2) != 1)
        sub->busy = 0; /* it ended: no done */
    lua_settop(L, top);
}

static void on_ready(evutil_socket_t fd, short what, void *arg) {
    struct subs *S = arg;
    (void)fd;
    (void)what;
    S->s->srv->now = server_clock();
    for (int i = 0; i < RUNS_PER_PASS && S->ready; i++) {
        struct script_sub *sub = S->ready;
        S->ready = sub->ready_next;
        if (!S->ready)
            S->ready_tail = NULL;
        sub->on_ready = 0;
        if (!sub->dead && sub->head)
            run_one(sub);
        if (sub->dead) {
            if (!sub->busy)
                sub_free(sub);
        } else {
            make_ready(sub); /* to the back: the subscriptions take turns */
        }
    }
    if (S->ready)
        event_active(S->ev, EV_TIMEOUT, 1);
}

/* ---- the Lua functions ------------------------------------------------------------ */

/* switchboard.subscribe(topic, fn) -> true, or false when fn already is subscribed. */
static int sb_subscribe(lua_State *L) {
    struct script *s = get_script(L);
    struct subs *S = s->subs;
    size_t len;
    const char *name = script__arg_topic(L, 1, 1, "subscribe", &len);
    if (lua_type(L, 2) != LUA_TFUNCTION)
        return script__type_error(L, 2, 2, "subscribe", "function");
    uint64_t h = hash_name(name, len);
    struct sub_topic *t = topic_find(S, name, len, h);
    for (struct script_sub *sub = t ? t->subs : NULL; sub; sub = sub->tnext) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, sub->fn_ref);
        int same = lua_rawequal(L, -1, 2);
        lua_pop(L, 1);
        if (same) {
            lua_pushboolean(L, 0);
            return 1;
        }
    }
    struct script_sub *sub = calloc(1, sizeof *sub);
    const char *mod = s->loading_mod ? s->loading_mod : s->cur_mod;
    if (!sub || (mod && !(sub->mod = strdup(mod)))) {
        free(sub);
        return luaL_error(L, "subscribe: out of memory");
    }
    if (!t) {
        if (!(t = calloc(1, sizeof *t + len + 1))) {
            free(sub->mod);
            free(sub);
            return luaL_error(L, "subscribe: out of memory");
        }
        t->hash = h;
        t->len = len;
        memcpy(t->name, name, len);
        if (S->ntopics >= S->nbuckets)
            topic_grow(S);
        t->next = S->buckets[h & (S->nbuckets - 1)];
        S->buckets[h & (S->nbuckets - 1)] = t;
        S->ntopics++;
    }
    if (pubsub_watch(s->srv->pubsub, name, len) < 0) {
        if (!t->subs) {
            S->buckets[h & (S->nbuckets - 1)] = t->next; /* it was just put first */
            S->ntopics--;
            free(t);
        }
        free(sub->mod);
        free(sub);
        return luaL_error(L, "subscribe: out of memory");
    }
    sub->S = S;
    sub->topic = t;
    if (mod) {
        sub->version = s->loading_mod ? s->loading_gen : s->cur_mod_gen;
    } else {
        sub->owner = s->cur_route;
        sub->version =
            s->loading_version ? s->loading_version : (sub->owner ? sub->owner->version : 0);
    }
    lua_pushvalue(L, 2);
    sub->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    sub->tnext = t->subs;
    t->subs = sub;
    sub->next = S->all;
    if (S->all)
        S->all->prev = sub;
    S->all = sub;
    lua_pushboolean(L, 1);
    return 1;
}

/* switchboard.unsubscribe(topic [, fn]) -> true when a subscription went. */
static int sb_unsubscribe(lua_State *L) {
    struct subs *S = get_script(L)->subs;
    size_t len;
    const char *name = script__arg_topic(L, 1, 1, "unsubscribe", &len);
    if (!lua_isnoneornil(L, 2) && lua_type(L, 2) != LUA_TFUNCTION)
        return script__type_error(L, 2, 2, "unsubscribe", "function");
    int any = lua_isnoneornil(L, 2), n = 0;
    struct sub_topic *t = topic_find(S, name, len, hash_name(name, len));
    struct script_sub *sub = t ? t->subs : NULL;
    while (sub) {
        struct script_sub *next = sub->tnext; /* t goes with its last subscription */
        int match = any;
        if (!match) {
            lua_rawgeti(L, LUA_REGISTRYINDEX, sub->fn_ref);
            match = lua_rawequal(L, -1, 2);
            lua_pop(L, 1);
        }
        if (match) {
            sub_remove(sub);
            n++;
        }
        sub = next;
    }
    lua_pushboolean(L, n > 0);
    return 1;
}

/* ---- owners and the state --------------------------------------------------------- */

void script__cancel_route_subs(struct script *s, struct route *r, uint32_t version, int same) {
    if (!s->subs)
        return;
    for (struct script_sub *sub = s->subs->all; sub;) {
        struct script_sub *n = sub->next;
        if (!r || (sub->owner == r && !sub->mod && (sub->version == version) == same))
            sub_remove(sub);
        sub = n;
    }
}

void script__cancel_module_subs(struct script *s, const char *mod, uint32_t gen, int same) {
    if (!s->subs)
        return;
    for (struct script_sub *sub = s->subs->all; sub;) {
        struct script_sub *n = sub->next;
        if (sub->mod && strcmp(sub->mod, mod) == 0 && (sub->version == gen) == same)
            sub_remove(sub);
        sub = n;
    }
}

size_t script__sub_count(struct script *s) {
    size_t n = 0;
    for (struct script_sub *sub = s->subs ? s->subs->all : NULL; sub; sub = sub->next)
        n++;
    return n;
}

void script__sub_open(lua_State *L) {
    lua_pushcfunction(L, sb_subscribe);
    lua_setfield(L, -2, "subscribe");
    lua_pushcfunction(L, sb_unsubscribe);
    lua_setfield(L, -2, "unsubscribe");
}

int script__sub_init(struct script *s) {
    struct subs *S = calloc(1, sizeof *S);
    if (!S)
        return -1;
    S->s = s;
    S->nbuckets = 16;
    S->buckets = calloc(S->nbuckets, sizeof *S->buckets);
    S->ev = event_new(s->srv->base, -1, 0, on_ready, S);
    if (!S->buckets || !S->ev) {
        free(S->buckets);
        if (S->ev)
            event_free(S->ev);
        free(S);
        return -1;
    }
    s->subs = S;
    if (s->srv->pubsub)
        pubsub_set_watch_hook(s->srv->pubsub, on_watch, S);
    return 0;
}

void script__sub_free(struct script *s) {
    struct subs *S = s->subs;
    if (!S)
        return;
    while (S->all)
        sub_remove(S->all);
    /* what is left was on the ready list (calls that waited ended before this) */
    for (struct script_sub *sub = S->ready; sub;) {
        struct script_sub *n = sub->ready_next;
        sub_free(sub);
        sub = n;
    }
    if (s->srv->pubsub)
        pubsub_set_watch_hook(s->srv->pubsub, NULL, NULL);
    event_free(S->ev);
    free(S->buckets);
    free(S);
    s->subs = NULL;
}
