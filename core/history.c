/* history.c — the in-process store of topic history (see history.h).
 *
 * Streams live in a hash by topic name. Entries are on two lists: their
 * stream's (by position) and the store's age list (oldest first), so the byte
 * bound drops the entry kept longest in O(1). In process that is its stream's
 * lowest position too; the cache of --redis may put an older position later. */
#define _GNU_SOURCE
#include "history.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "loop.h"
#include "outq.h"

struct hentry {
    struct hentry *gprev, *gnext; /* the store's age list */
    struct hentry *tprev, *tnext; /* the stream's list, by position */
    struct history_stream *st;
    uint64_t pos;
    double expires;
    struct outbuf *frame; /* one reference owned */
    size_t bytes;         /* counted in h->bytes */
    uint32_t len;
    uint8_t binary, msg_in_frame;
    char msg[]; /* the message, unless msg_in_frame */
};

struct history_stream {
    struct history_stream *next; /* hash chain */
    uint64_t hash;
    struct hentry *head, *tail;
    uint32_t n;
    uint64_t seq;     /* the last position given */
    uint64_t heard;   /* --redis: the last position heard on the channel */
    double last_used; /* monotonic seconds of the last publication or creation */
    double ttl;       /* of the last publication's rule: when an empty stream is dropped */
    char epoch[HISTORY_EPOCH_MAX];
    size_t len;
    char name[];
};

struct history {
    struct sb_server *srv;
    struct history_rule *rules;
    size_t nrules;
    struct history_stream **buckets;
    size_t nbuckets, nstreams;
    struct hentry *oldest, *newest;
    size_t bytes, max_bytes;
    uint64_t evictions;
    uint32_t node;    /* random per process: part of every epoch */
    uint64_t streams; /* streams made: the rest of the epoch */
    struct event *sweep;
};

static uint64_t hash_name(const char *s, size_t len) {
    uint64_t x = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < len; i++) {
        x ^= (unsigned char)s[i];
        x *= 1099511628211ull;
    }
    return x;
}

static void entry_unlink(struct history *h, struct hentry *e) {
    struct history_stream *st = e->st;
    if (e->tprev)
        e->tprev->tnext = e->tnext;
    else
        st->head = e->tnext;
    if (e->tnext)
        e->tnext->tprev = e->tprev;
    else
        st->tail = e->tprev;
    st->n--;
    if (e->gprev)
        e->gprev->gnext = e->gnext;
    else
        h->oldest = e->gnext;
    if (e->gnext)
        e->gnext->gprev = e->gprev;
    else
        h->newest = e->gprev;
    h->bytes -= e->bytes;
    outbuf_unref(e->frame);
    free(e);
}

/* Drop the stream's entries that expired. */
static void expire(struct history *h, struct history_stream *st, double now) {
    while (st->head && st->head->expires <= now)
        entry_unlink(h, st->head);
}

static void stream_remove(struct history *h, struct history_stream *st) {
    while (st->head)
        entry_unlink(h, st->head);
    struct history_stream **pp = &h->buckets[st->hash & (h->nbuckets - 1)];
    while (*pp != st)
        pp = &(*pp)->next;
    *pp = st->next;
    h->nstreams--;
    h->bytes -= sizeof *st + st->len + 1;
    free(st);
}

/* Once a second: drop what expired, and the streams left empty and unused
 * for their ttl (abandoned topics). */
static void on_sweep(evutil_socket_t fd, short what, void *arg) {
    struct history *h = arg;
    (void)fd;
    (void)what;
    double now = server_clock();
    for (size_t i = 0; i < h->nbuckets; i++) {
        struct history_stream *st = h->buckets[i];
        while (st) {
            struct history_stream *n = st->next;
            expire(h, st, now);
            if (!st->head && now - st->last_used >= st->ttl)
                stream_remove(h, st);
            st = n;
        }
    }
}

struct history *history_new(struct sb_server *srv, size_t max_bytes) {
    struct history *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->srv = srv;
    h->max_bytes = max_bytes;
    h->nbuckets = 64;
    h->buckets = calloc(h->nbuckets, sizeof *h->buckets);
    if (getrandom(&h->node, sizeof h->node, 0) != (ssize_t)sizeof h->node)
        h->node = (uint32_t)getpid() ^ (uint32_t)(server_clock() * 1e6);
    h->sweep = event_new(srv->base, -1, EV_PERSIST, on_sweep, h);
    if (!h->buckets || !h->sweep) {
        if (h->sweep)
            event_free(h->sweep);
        free(h->buckets);
        free(h);
        return NULL;
    }
    struct timeval one = {1, 0};
    event_add(h->sweep, &one);
    return h;
}

void history_free(struct history *h) {
    if (!h)
        return;
    for (size_t i = 0; i < h->nbuckets; i++) {
        while (h->buckets[i])
            stream_remove(h, h->buckets[i]);
    }
    for (size_t i = 0; i < h->nrules; i++)
        free(h->rules[i].prefix);
    free(h->rules);
    free(h->buckets);
    event_free(h->sweep);
    free(h);
}

int history_keep(struct history *h, const char *prefix, size_t plen, uint32_t size, double ttl,
                 int ref, int *old_ref) {
    *old_ref = -1;
    for (size_t i = 0; i < h->nrules; i++) {
        struct history_rule *r = &h->rules[i];
        if (r->plen == plen && memcmp(r->prefix, prefix, plen) == 0) {
            *old_ref = r->ref;
            r->size = size;
            r->ttl = ttl;
            r->ref = ref;
            return 0;
        }
    }
    struct history_rule *nr = realloc(h->rules, (h->nrules + 1) * sizeof *nr);
    if (!nr)
        return -1;
    h->rules = nr;
    char *p = malloc(plen + 1);
    if (!p)
        return -1;
    memcpy(p, prefix, plen);
    p[plen] = 0;
    h->rules[h->nrules++] = (struct history_rule){p, plen, size, ttl, ref};
    return 0;
}

const struct history_rule *history_match(const struct history *h, const char *topic, size_t tlen) {
    if (!h)
        return NULL;
    const struct history_rule *best = NULL;
    for (size_t i = 0; i < h->nrules; i++) {
        const struct history_rule *r = &h->rules[i];
        if (r->plen <= tlen && (!best || r->plen > best->plen) &&
            memcmp(r->prefix, topic, r->plen) == 0)
            best = r;
    }
    return best;
}

static void grow(struct history *h) {
    size_t nb = h->nbuckets * 2;
    struct history_stream **b = calloc(nb, sizeof *b);
    if (!b)
        return;
    for (size_t i = 0; i < h->nbuckets; i++) {
        struct history_stream *st = h->buckets[i];
        while (st) {
            struct history_stream *n = st->next;
            st->next = b[st->hash & (nb - 1)];
            b[st->hash & (nb - 1)] = st;
            st = n;
        }
    }
    free(h->buckets);
    h->buckets = b;
    h->nbuckets = nb;
}

struct history_stream *history_stream(struct history *h, const char *topic, size_t tlen,
                                      int create) {
    uint64_t x = hash_name(topic, tlen);
    for (struct history_stream *st = h->buckets[x & (h->nbuckets - 1)]; st; st = st->next)
        if (st->hash == x && st->len == tlen && memcmp(st->name, topic, tlen) == 0)
            return st;
    if (!create)
        return NULL;
    struct history_stream *st = calloc(1, sizeof *st + tlen + 1);
    if (!st)
        return NULL;
    st->hash = x;
    st->len = tlen;
    memcpy(st->name, topic, tlen);
    st->last_used = server_clock();
    const struct history_rule *r = history_match(h, topic, tlen);
    st->ttl = r ? r->ttl : 60;
    snprintf(st->epoch, sizeof st->epoch, "%08x.%llx", h->node, (unsigned long long)++h->streams);
    if (h->nstreams >= h->nbuckets)
        grow(h);
    st->next = h->buckets[x & (h->nbuckets - 1)];
    h->buckets[x & (h->nbuckets - 1)] = st;
    h->nstreams++;
    h->bytes += sizeof *st + tlen + 1; /* counted: a flood of topics is bounded too */
    return st;
}

const char *history_epoch(const struct history_stream *st) {
    return st->epoch;
}

uint64_t history_last(const struct history_stream *st) {
    return st->seq;
}

uint64_t history_first(struct history *h, struct history_stream *st) {
    expire(h, st, server_clock());
    return st->head ? st->head->pos : st->seq + 1;
}

int history_adopt(struct history *h, struct history_stream *st, const char *epoch, uint64_t pos) {
    if (strcmp(st->epoch, epoch) != 0) {
        while (st->head)
            entry_unlink(h, st->head);
        snprintf(st->epoch, sizeof st->epoch, "%s", epoch);
        st->seq = st->heard = 0;
    }
    if (pos <= st->seq)
        return 0;
    st->seq = pos;
    return 1;
}

uint64_t history_heard(const struct history_stream *st) {
    return st->heard;
}

void history_hear(struct history_stream *st, uint64_t pos) {
    if (pos > st->heard)
        st->heard = pos;
}

struct outbuf *history_frame(struct history *h, struct history_stream *st, uint64_t pos) {
    expire(h, st, server_clock());
    for (struct hentry *x = st->tail; x && x->pos >= pos; x = x->tprev)
        if (x->pos == pos)
            return x->frame;
    return NULL;
}

uint64_t history_next(struct history_stream *st) {
    return ++st->seq;
}

/* Insert e into st's list by position (at the tail when it is the newest). */
static void stream_insert(struct history_stream *st, struct hentry *e) {
    struct hentry *after = st->tail;
    while (after && after->pos > e->pos)
        after = after->tprev;
    e->tprev = after;
    e->tnext = after ? after->tnext : st->head;
    if (e->tnext)
        e->tnext->tprev = e;
    else
        st->tail = e;
    if (after)
        after->tnext = e;
    else
        st->head = e;
    st->n++;
}

int history_append(struct history *h, struct history_stream *st, const struct history_rule *rule,
                   uint64_t pos, struct outbuf *frame, const void *msg, size_t len, int binary,
                   int msg_in_frame) {
    double now = server_clock();
    st->last_used = now;
    st->ttl = rule->ttl;
    for (struct hentry *x = st->tail; x && x->pos >= pos; x = x->tprev)
        if (x->pos == pos)
            return 0; /* kept already */
    struct hentry *e = malloc(sizeof *e + (msg_in_frame ? 0 : len));
    if (!e)
        return -1;
    e->st = st;
    e->pos = pos;
    e->expires = now + rule->ttl;
    e->frame = frame;
    frame->refs++;
    e->len = (uint32_t)len;
    e->binary = (uint8_t)(binary != 0);
    e->msg_in_frame = (uint8_t)(msg_in_frame != 0);
    if (!msg_in_frame && len)
        memcpy(e->msg, msg, len);
    e->bytes = sizeof *e + (msg_in_frame ? 0 : len) + frame->len;
    stream_insert(st, e);
    e->gnext = NULL;
    e->gprev = h->newest;
    if (h->newest)
        h->newest->gnext = e;
    else
        h->oldest = e;
    h->newest = e;
    h->bytes += e->bytes;
    expire(h, st, now);
    while (st->n > rule->size)
        entry_unlink(h, st->head);
    while (h->bytes > h->max_bytes && h->oldest) {
        struct history_stream *of = h->oldest->st;
        entry_unlink(h, h->oldest);
        h->evictions++;
        /* a stream whose history is all gone goes too (its next publication starts a
         * new epoch): what the bound frees must include the streams */
        if (!of->head && of != st)
            stream_remove(h, of);
    }
    return 0;
}

size_t history_each(struct history *h, struct history_stream *st, uint64_t since, size_t limit,
                    int first_n, void (*cb)(void *ud, const struct history_item *it), void *ud) {
    expire(h, st, server_clock());
    struct hentry *e = st->head;
    while (e && e->pos <= since)
        e = e->tnext;
    if (limit && !first_n) {
        /* the last `limit`: skip the rest */
        size_t after = 0;
        for (struct hentry *x = e; x; x = x->tnext)
            after++;
        while (e && after > limit) {
            e = e->tnext;
            after--;
        }
    }
    size_t n = 0;
    for (; e && (!limit || n < limit); e = e->tnext) {
        struct history_item it = {e->pos, e->frame, e->msg, e->len, e->binary};
        if (e->msg_in_frame) {
            uint8_t l7 = e->frame->data[1] & 0x7f;
            it.msg = (const char *)e->frame->data + (l7 < 126 ? 2 : l7 == 126 ? 4 : 10);
        }
        n++;
        cb(ud, &it);
    }
    return n;
}

size_t history_bytes(const struct history *h) {
    return h ? h->bytes : 0;
}

uint64_t history_evictions(const struct history *h) {
    return h ? h->evictions : 0;
}
