/* pubsub.c — topics -> subscribers, with two-way indices so that subscribe,
 * unsubscribe and a closing connection are O(1) per topic, and a publish is
 * one frame shared by every subscriber's queue. */
#include "pubsub.h"

#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "loop.h"

struct sub_ref {
    struct conn *c;
    uint32_t idx;    /* index in c->subs */
    uint32_t replay; /* index + 1 in ps->replays while it recovers, else 0 */
};

/* A frame queued for one recovering subscriber (one reference owned). */
struct ritem {
    struct outbuf *f;
    uint64_t pos;  /* 0: none (a publication without a position) */
    uint8_t live;  /* arrived live (counted in held): not part of the replay itself */
};

/* A subscriber that recovers (pubsub_subscribe_replay): what it must still be
 * sent, in order, paced by its queue's watermarks. Owned by ps->replays. */
struct replay {
    struct conn *c;
    struct ritem *q; /* ring: head, n, cap */
    uint32_t head, n, cap;
    struct ritem *early; /* live arrivals while waiting (not yet merged) */
    uint32_t nearly, early_cap;
    uint64_t last;  /* the last position queued (dedup) */
    size_t held;    /* bytes of live arrivals queued here: bounded by --out-max */
    uint8_t waiting;
};

struct topic {
    struct topic *next; /* hash chain */
    uint64_t hash;
    struct sub_ref *subs;
    uint32_t n, cap;
    uint32_t watches; /* pubsub_watch count: live while n + watches > 0 */
    size_t len;
    char name[];
};

struct pubsub {
    struct topic **buckets;
    size_t nbuckets, ntopics;
    pubsub_topic_hook hook;
    void *hook_ud;
    pubsub_publish_hook out; /* --redis: where the app's publishes go too */
    void *out_ud;
    struct replay **replays; /* slots, index + 1 in sub_ref.replay; NULL when free */
    uint32_t nreplays, replays_cap;
    uint32_t free_replay; /* no free slot below this index */
    pubsub_watch_hook watch; /* script-level subscribers */
    void *watch_ud;
};

void pubsub_set_watch_hook(struct pubsub *ps, pubsub_watch_hook fn, void *ud) {
    ps->watch = fn;
    ps->watch_ud = ud;
}

void pubsub_set_publish_hook(struct pubsub *ps, pubsub_publish_hook fn, void *ud) {
    ps->out = fn;
    ps->out_ud = ud;
}

void pubsub_set_hook(struct pubsub *ps, pubsub_topic_hook fn, void *ud) {
    ps->hook = fn;
    ps->hook_ud = ud;
}

static uint64_t hash_name(const char *s, size_t len) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

struct pubsub *pubsub_new(void) {
    struct pubsub *ps = calloc(1, sizeof *ps);
    if (!ps)
        return NULL;
    ps->nbuckets = 64;
    ps->buckets = calloc(ps->nbuckets, sizeof *ps->buckets);
    if (!ps->buckets) {
        free(ps);
        return NULL;
    }
    return ps;
}

static void replay_free(struct pubsub *ps, uint32_t id);

void pubsub_free(struct pubsub *ps) {
    for (uint32_t i = 0; i < ps->nreplays; i++)
        if (ps->replays[i])
            replay_free(ps, i + 1);
    free(ps->replays);
    for (size_t i = 0; i < ps->nbuckets; i++) {
        struct topic *t = ps->buckets[i];
        while (t) {
            struct topic *n = t->next;
            free(t->subs);
            free(t);
            t = n;
        }
    }
    free(ps->buckets);
    free(ps);
}

static struct topic *find(struct pubsub *ps, const char *name, size_t len, uint64_t h) {
    for (struct topic *t = ps->buckets[h & (ps->nbuckets - 1)]; t; t = t->next)
        if (t->hash == h && t->len == len && memcmp(t->name, name, len) == 0)
            return t;
    return NULL;
}

static void grow(struct pubsub *ps) {
    size_t nb = ps->nbuckets * 2;
    struct topic **b = calloc(nb, sizeof *b);
    if (!b)
        return; /* keep the longer chains */
    for (size_t i = 0; i < ps->nbuckets; i++) {
        struct topic *t = ps->buckets[i];
        while (t) {
            struct topic *n = t->next;
            t->next = b[t->hash & (nb - 1)];
            b[t->hash & (nb - 1)] = t;
            t = n;
        }
    }
    free(ps->buckets);
    ps->buckets = b;
    ps->nbuckets = nb;
}

static void topic_remove(struct pubsub *ps, struct topic *t) {
    struct topic **pp = &ps->buckets[t->hash & (ps->nbuckets - 1)];
    while (*pp != t)
        pp = &(*pp)->next;
    *pp = t->next;
    ps->ntopics--;
    free(t->subs);
    free(t);
}

static struct topic *topic_add(struct pubsub *ps, const char *name, size_t len, uint64_t h) {
    struct topic *t = calloc(1, sizeof *t + len + 1);
    if (!t)
        return NULL;
    t->hash = h;
    t->len = len;
    memcpy(t->name, name, len);
    if (ps->ntopics >= ps->nbuckets)
        grow(ps);
    t->next = ps->buckets[h & (ps->nbuckets - 1)];
    ps->buckets[h & (ps->nbuckets - 1)] = t;
    ps->ntopics++;
    return t;
}

int pubsub_watch(struct pubsub *ps, const char *name, size_t len) {
    uint64_t h = hash_name(name, len);
    struct topic *t = find(ps, name, len, h);
    if (!t && !(t = topic_add(ps, name, len, h)))
        return -1;
    if (++t->watches == 1 && t->n == 0 && ps->hook)
        ps->hook(ps->hook_ud, t->name, t->len, 1);
    return 0;
}

void pubsub_unwatch(struct pubsub *ps, const char *name, size_t len) {
    struct topic *t = find(ps, name, len, hash_name(name, len));
    if (!t || !t->watches)
        return;
    if (--t->watches == 0 && t->n == 0) {
        if (ps->hook)
            ps->hook(ps->hook_ud, t->name, t->len, 0);
        topic_remove(ps, t);
    }
}

int pubsub_subscribe(struct pubsub *ps, struct conn *c, const char *name, size_t len) {
    uint64_t h = hash_name(name, len);
    struct topic *t = find(ps, name, len, h);
    if (t) {
        for (uint32_t i = 0; i < c->nsubs; i++)
            if (c->subs[i].topic == t)
                return 0;
    } else if (!(t = topic_add(ps, name, len, h))) {
        return -1;
    }
    if (t->n == t->cap) {
        uint32_t nc = t->cap ? t->cap * 2 : 4;
        struct sub_ref *ns = realloc(t->subs, nc * sizeof *ns);
        if (!ns)
            goto oom;
        t->subs = ns;
        t->cap = nc;
    }
    if (c->nsubs == c->subs_cap) {
        uint32_t nc = c->subs_cap ? c->subs_cap * 2 : 2;
        struct subscription *ns = realloc(c->subs, nc * sizeof *ns);
        if (!ns)
            goto oom;
        c->subs = ns;
        c->subs_cap = nc;
    }
    c->subs[c->nsubs] = (struct subscription){t, t->n};
    t->subs[t->n] = (struct sub_ref){c, c->nsubs, 0};
    c->nsubs++;
    t->n++;
    if (t->n == 1 && !t->watches && ps->hook)
        ps->hook(ps->hook_ud, t->name, t->len, 1);
    return 1;
oom:
    if (t->n == 0 && !t->watches)
        topic_remove(ps, t);
    return -1;
}

/* Remove c's subscription at index i (swap-remove on both sides). */
static void drop(struct pubsub *ps, struct conn *c, uint32_t i) {
    struct topic *t = c->subs[i].topic;
    uint32_t slot = c->subs[i].slot;
    if (t->subs[slot].replay)
        replay_free(ps, t->subs[slot].replay);
    /* topic side: move the last subscriber into slot */
    t->n--;
    if (slot != t->n) {
        t->subs[slot] = t->subs[t->n];
        struct sub_ref *moved = &t->subs[slot];
        moved->c->subs[moved->idx].slot = slot;
    }
    /* conn side: move the last subscription into i */
    c->nsubs--;
    if (i != c->nsubs) {
        c->subs[i] = c->subs[c->nsubs];
        struct subscription *m = &c->subs[i];
        m->topic->subs[m->slot].idx = i;
    }
    if (t->n == 0 && !t->watches) {
        if (ps->hook)
            ps->hook(ps->hook_ud, t->name, t->len, 0);
        topic_remove(ps, t);
    }
}

int pubsub_unsubscribe(struct pubsub *ps, struct conn *c, const char *name, size_t len) {
    struct topic *t = find(ps, name, len, hash_name(name, len));
    if (!t)
        return 0;
    for (uint32_t i = 0; i < c->nsubs; i++) {
        if (c->subs[i].topic == t) {
            drop(ps, c, i);
            return 1;
        }
    }
    return 0;
}

void pubsub_unsubscribe_all(struct pubsub *ps, struct conn *c) {
    while (c->nsubs)
        drop(ps, c, c->nsubs - 1);
    free(c->subs);
    c->subs = NULL;
    c->subs_cap = 0;
}

/* A frame compressed once from a fresh context of `bits` window bits: valid
 * for every subscriber whose deflate_shared_bits() is at least that. */
static struct outbuf *deflated_frame(struct deflate_shared *ds, int bits, int opcode,
                                     const void *msg, size_t len) {
    uint8_t *z;
    size_t zlen;
    if (deflate_shared_compress(ds, bits, msg, len, 0, &z, &zlen) < 0)
        return NULL;
    struct outbuf *b = outbuf_new(zlen + 10);
    if (b) {
        b->len = (uint32_t)ws_frame_header(b->data, opcode, 1, 1, zlen);
        memcpy(b->data + b->len, z, zlen);
        b->len += (uint32_t)zlen;
        b->cap = b->len; /* shared: never appended to */
    }
    free(z);
    return b;
}

size_t pubsub_publish(struct pubsub *ps, const char *name, size_t tlen, const void *msg,
                      size_t len, int binary, struct conn *except) {
    size_t n = pubsub_deliver(ps, name, tlen, msg, len, binary, except);
    if (ps->out)
        ps->out(ps->out_ud, name, tlen, msg, len, binary);
    return n;
}

/* ---- subscribers that recover ---------------------------------------------------- */

static void replay_free(struct pubsub *ps, uint32_t id) {
    struct replay *rp = ps->replays[id - 1];
    for (uint32_t i = 0; i < rp->n; i++)
        outbuf_unref(rp->q[(rp->head + i) % rp->cap].f);
    for (uint32_t i = 0; i < rp->nearly; i++)
        outbuf_unref(rp->early[i].f);
    free(rp->q);
    free(rp->early);
    free(rp);
    ps->replays[id - 1] = NULL;
    if (id - 1 < ps->free_replay)
        ps->free_replay = id - 1;
}

/* A free slot in ps->replays (index + 1), or 0 out of memory. */
static uint32_t replay_slot(struct pubsub *ps) {
    for (uint32_t i = ps->free_replay; i < ps->nreplays; i++)
        if (!ps->replays[i]) {
            ps->free_replay = i + 1;
            return i + 1;
        }
    if (ps->nreplays == ps->replays_cap) {
        uint32_t nc = ps->replays_cap ? ps->replays_cap * 2 : 16;
        struct replay **nr = realloc(ps->replays, nc * sizeof *nr);
        if (!nr)
            return 0;
        ps->replays = nr;
        ps->replays_cap = nc;
    }
    ps->replays[ps->nreplays++] = NULL;
    ps->free_replay = ps->nreplays;
    return ps->nreplays;
}

/* The sub_ref of c on topic t, or NULL. */
static struct sub_ref *sub_of(struct conn *c, struct topic *t) {
    for (uint32_t i = 0; i < c->nsubs; i++)
        if (c->subs[i].topic == t)
            return &t->subs[c->subs[i].slot];
    return NULL;
}

static struct replay *replay_of(struct pubsub *ps, struct conn *c, const char *name, size_t len) {
    struct topic *t = find(ps, name, len, hash_name(name, len));
    struct sub_ref *sr = t ? sub_of(c, t) : NULL;
    return sr && sr->replay ? ps->replays[sr->replay - 1] : NULL;
}

static int q_push(struct replay *rp, struct outbuf *f, uint64_t pos, int live) {
    if (rp->n == rp->cap) {
        uint32_t nc = rp->cap ? rp->cap * 2 : 16;
        struct ritem *nq = malloc(nc * sizeof *nq);
        if (!nq)
            return -1;
        for (uint32_t i = 0; i < rp->n; i++)
            nq[i] = rp->q[(rp->head + i) % rp->cap];
        free(rp->q);
        rp->q = nq;
        rp->head = 0;
        rp->cap = nc;
    }
    f->refs++;
    rp->q[(rp->head + rp->n) % rp->cap] = (struct ritem){f, pos, (uint8_t)live};
    rp->n++;
    if (pos)
        rp->last = pos;
    if (live)
        rp->held += f->len;
    return 0;
}

/* Give subscription sr (of conn c) a replay. Returns it, or NULL out of memory. */
static struct replay *replay_attach(struct pubsub *ps, struct sub_ref *sr, int waiting) {
    struct replay *rp = calloc(1, sizeof *rp);
    uint32_t id = rp ? replay_slot(ps) : 0;
    if (!id) {
        free(rp);
        return NULL;
    }
    rp->c = sr->c;
    rp->waiting = (uint8_t)waiting;
    ps->replays[id - 1] = rp;
    sr->replay = id;
    return rp;
}

int pubsub_subscribe_replay(struct pubsub *ps, struct conn *c, const char *name, size_t len) {
    int r = pubsub_subscribe(ps, c, name, len);
    if (r != 1)
        return r;
    struct topic *t = find(ps, name, len, hash_name(name, len));
    if (!replay_attach(ps, sub_of(c, t), 1)) {
        pubsub_unsubscribe(ps, c, name, len);
        return -1;
    }
    return 1;
}

int pubsub_replay_add(struct pubsub *ps, struct conn *c, const char *name, size_t len,
                      struct outbuf *frame, uint64_t pos) {
    struct replay *rp = replay_of(ps, c, name, len);
    if (!rp || (pos && pos <= rp->last))
        return 0;
    return q_push(rp, frame, pos, 0) < 0 ? -1 : 1;
}

/* Send what c's replay rp holds while c's queue is below --out-high. Returns 1
 * when it is done (nothing left and not waiting): the subscription is live. */
static int replay_pump(struct replay *rp) {
    struct conn *c = rp->c;
    while (rp->n && !c->over_high) {
        struct ritem *it = &rp->q[rp->head];
        if (conn_send_shared(c, it->f) < 0 && (c->state != CONN_WS || c->close_sent))
            break; /* closing: its unsubscribe frees the rest */
        if (it->live)
            rp->held -= it->f->len;
        outbuf_unref(it->f);
        rp->head = (rp->head + 1) % rp->cap;
        rp->n--;
    }
    return !rp->n && !rp->waiting;
}

void pubsub_replay_pump(struct pubsub *ps, struct conn *c) {
    for (uint32_t i = 0; i < c->nsubs; i++) {
        struct sub_ref *sr = &c->subs[i].topic->subs[c->subs[i].slot];
        if (sr->replay && replay_pump(ps->replays[sr->replay - 1])) {
            replay_free(ps, sr->replay);
            sr->replay = 0;
        }
    }
}

int pubsub_replay_start(struct pubsub *ps, struct conn *c, const char *name, size_t len) {
    struct replay *rp = replay_of(ps, c, name, len);
    if (!rp)
        return 0;
    int rc = 1;
    rp->waiting = 0;
    for (uint32_t i = 0; i < rp->nearly; i++) {
        struct ritem *it = &rp->early[i];
        if ((!it->pos || it->pos > rp->last) && q_push(rp, it->f, it->pos, 1) < 0)
            rc = -1;
        outbuf_unref(it->f);
    }
    free(rp->early);
    rp->early = NULL;
    rp->nearly = rp->early_cap = 0;
    pubsub_replay_pump(ps, c);
    return rc;
}

/* A publication for subscription sr, which has a replay: queued behind it (and sent
 * at once when the connection takes it; then the replay ends). */
static void replay_arrival(struct pubsub *ps, struct sub_ref *sr, struct outbuf *f, uint64_t pos) {
    struct replay *rp = ps->replays[sr->replay - 1];
    struct conn *c = rp->c;
    if (c->state != CONN_WS || c->close_sent)
        return;
    if (rp->held + f->len > c->srv->cfg.out_max) {
        /* it reads slower than the topic is published: as past --out-max */
        c->srv->stats.slow_closed++;
        conn_close(c, WS_CLOSE_POLICY, "too slow to read", 16);
        return;
    }
    if (rp->waiting) {
        if (rp->nearly == rp->early_cap) {
            uint32_t nc = rp->early_cap ? rp->early_cap * 2 : 8;
            struct ritem *ne = realloc(rp->early, nc * sizeof *ne);
            if (!ne)
                return;
            rp->early = ne;
            rp->early_cap = nc;
        }
        f->refs++;
        rp->early[rp->nearly++] = (struct ritem){f, pos, 1};
        rp->held += f->len;
        return;
    }
    if (pos && pos <= rp->last)
        return; /* the replay had it */
    if (q_push(rp, f, pos, 1) < 0)
        return;
    if (replay_pump(rp)) { /* all out: live again */
        replay_free(ps, sr->replay);
        sr->replay = 0;
    }
}

/* ---- delivery ------------------------------------------------------------------------ */

/* The payload of a complete unmasked frame. */
static const uint8_t *frame_payload(const struct outbuf *f, size_t *len, int *binary) {
    uint8_t l7 = f->data[1] & 0x7f;
    size_t hl = l7 < 126 ? 2 : l7 == 126 ? 4 : 10;
    *len = f->len - hl;
    *binary = (f->data[0] & 0x0f) == WS_OP_BINARY;
    return f->data + hl;
}

static size_t deliver(struct pubsub *ps, struct topic *t, const void *msg, size_t len, int binary,
                      struct outbuf *plain, uint64_t pos, struct conn *except,
                      uint64_t except_id) {
    int opcode = binary ? WS_OP_BINARY : WS_OP_TEXT;
    /* One plain frame for every subscriber without compression, and one
     * compressed frame per window size for those with it: made on first need. */
    struct outbuf *frames[16] = {0};
    if (plain) {
        frames[0] = plain;
        plain->refs++;
    }
    size_t n = 0;
    /* a send may close a subscriber (hard cap), which only marks it: the
     * array is not modified until the reap */
    for (uint32_t i = 0; i < t->n; i++) {
        struct conn *c = t->subs[i].c;
        if (i + 4 < t->n) /* thousands of subscribers are not all in cache */
            __builtin_prefetch(t->subs[i + 4].c);
        if (c == except || (except_id && c->id == except_id))
            continue;
        /* a history publication is never dropped for --out-high: it waits behind
         * what the subscriber has not taken yet, sent at its drains (no gap) */
        if (t->subs[i].replay || (pos && c->over_high && replay_attach(ps, &t->subs[i], 0))) {
            if (!frames[0])
                frames[0] = outbuf_frame(opcode, msg, len);
            if (frames[0])
                replay_arrival(ps, &t->subs[i], frames[0], pos);
            continue;
        }
        int bits = c->defl && deflate_wants(c->defl, len) ? deflate_shared_bits(c->defl) : 0;
        if (!frames[bits])
            frames[bits] = bits ? deflated_frame(c->srv->deflate_shared, bits, opcode, msg, len)
                                : outbuf_frame(opcode, msg, len);
        if (!frames[bits])
            continue;
        if (conn_send_shared(c, frames[bits]) >= 0) {
            n++;
            if (bits)
                deflate_note_shared(c->defl);
        }
    }
    for (int i = 0; i < 16; i++)
        outbuf_unref(frames[i]);
    return n;
}

size_t pubsub_deliver(struct pubsub *ps, const char *name, size_t tlen, const void *msg,
                      size_t len, int binary, struct conn *except) {
    struct topic *t = find(ps, name, tlen, hash_name(name, tlen));
    if (!t)
        return 0;
    if (t->watches && ps->watch)
        ps->watch(ps->watch_ud, name, tlen, msg, len, binary);
    if (t->n == 0 || (t->n == 1 && t->subs[0].c == except))
        return 0;
    return deliver(ps, t, msg, len, binary, NULL, 0, except, 0);
}

size_t pubsub_deliver_frame(struct pubsub *ps, const char *name, size_t tlen, struct outbuf *frame,
                            uint64_t pos, const void *raw, size_t rawlen, int rawbin,
                            struct conn *except, uint64_t except_id) {
    struct topic *t = find(ps, name, tlen, hash_name(name, tlen));
    if (!t)
        return 0;
    if (t->watches && ps->watch)
        ps->watch(ps->watch_ud, name, tlen, raw, rawlen, rawbin);
    if (t->n == 0)
        return 0;
    size_t len;
    int binary;
    const uint8_t *msg = frame_payload(frame, &len, &binary);
    return deliver(ps, t, msg, len, binary, frame, pos, except, except_id);
}

size_t pubsub_count(struct pubsub *ps, const char *name, size_t len) {
    struct topic *t = find(ps, name, len, hash_name(name, len));
    return t ? t->n : 0;
}

void pubsub_each_topic(struct pubsub *ps, void (*cb)(void *ud, const char *t, size_t len),
                       void *ud) {
    for (size_t i = 0; i < ps->nbuckets; i++)
        for (struct topic *t = ps->buckets[i]; t; t = t->next)
            cb(ud, t->name, t->len);
}
