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
    uint32_t idx; /* index in c->subs */
};

struct topic {
    struct topic *next; /* hash chain */
    uint64_t hash;
    struct sub_ref *subs;
    uint32_t n, cap;
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
};

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

void pubsub_free(struct pubsub *ps) {
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

int pubsub_subscribe(struct pubsub *ps, struct conn *c, const char *name, size_t len) {
    uint64_t h = hash_name(name, len);
    struct topic *t = find(ps, name, len, h);
    if (t) {
        for (uint32_t i = 0; i < c->nsubs; i++)
            if (c->subs[i].topic == t)
                return 0;
    } else {
        t = calloc(1, sizeof *t + len + 1);
        if (!t)
            return -1;
        t->hash = h;
        t->len = len;
        memcpy(t->name, name, len);
        if (ps->ntopics >= ps->nbuckets)
            grow(ps);
        t->next = ps->buckets[h & (ps->nbuckets - 1)];
        ps->buckets[h & (ps->nbuckets - 1)] = t;
        ps->ntopics++;
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
    t->subs[t->n] = (struct sub_ref){c, c->nsubs};
    c->nsubs++;
    t->n++;
    if (t->n == 1 && ps->hook)
        ps->hook(ps->hook_ud, t->name, t->len, 1);
    return 1;
oom:
    if (t->n == 0)
        topic_remove(ps, t);
    return -1;
}

/* Remove c's subscription at index i (swap-remove on both sides). */
static void drop(struct pubsub *ps, struct conn *c, uint32_t i) {
    struct topic *t = c->subs[i].topic;
    uint32_t slot = c->subs[i].slot;
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
    if (t->n == 0) {
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

size_t pubsub_deliver(struct pubsub *ps, const char *name, size_t tlen, const void *msg,
                      size_t len, int binary, struct conn *except) {
    struct topic *t = find(ps, name, tlen, hash_name(name, tlen));
    if (!t || (t->n == 1 && t->subs[0].c == except))
        return 0;
    int opcode = binary ? WS_OP_BINARY : WS_OP_TEXT;
    /* One plain frame for every subscriber without compression, and one
     * compressed frame per window size for those with it: made on first need. */
    struct outbuf *frames[16] = {0};
    size_t n = 0;
    /* a send may close a subscriber (hard cap), which only marks it: the
     * array is not modified until the reap */
    for (uint32_t i = 0; i < t->n; i++) {
        struct conn *c = t->subs[i].c;
        if (i + 4 < t->n) /* thousands of subscribers are not all in cache */
            __builtin_prefetch(t->subs[i + 4].c);
        if (c == except)
            continue;
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
