/* outq.c — refcounted output buffers and the per-connection segment ring. */
#include "outq.h"

#include <stdlib.h>
#include <string.h>

#include "frame.h"

#define OUTBUF_MIN 4096

struct outbuf *outbuf_new(size_t cap) {
    if (cap > UINT32_MAX - sizeof(struct outbuf))
        return NULL;
    struct outbuf *b = malloc(sizeof *b + cap);
    if (!b)
        return NULL;
    b->refs = 1;
    b->len = 0;
    b->cap = (uint32_t)cap;
    return b;
}

void outbuf_unref(struct outbuf *b) {
    if (b && --b->refs == 0)
        free(b);
}

struct outbuf *outbuf_frame(int opcode, const void *payload, size_t len) {
    struct outbuf *b = outbuf_new(len + 10);
    if (!b)
        return NULL;
    b->len = (uint32_t)ws_frame_header(b->data, opcode, 1, 0, len);
    if (len)
        memcpy(b->data + b->len, payload, len);
    b->len += (uint32_t)len;
    b->cap = b->len; /* never appended to: it may be shared */
    return b;
}

int outq_push(struct outq *q, struct outbuf *b) {
    if (q->len == q->cap) {
        uint32_t ncap = q->cap ? q->cap * 2 : 4;
        struct outseg *ns = malloc(sizeof *ns * ncap);
        if (!ns)
            return -1;
        for (uint32_t i = 0; i < q->len; i++)
            ns[i] = q->seg[(q->head + i) & (q->cap - 1)];
        free(q->seg);
        q->seg = ns;
        q->cap = ncap;
        q->head = 0;
    }
    q->seg[(q->head + q->len) & (q->cap - 1)] = (struct outseg){b, 0};
    q->len++;
    q->bytes += b->len;
    return 0;
}

int outq_append(struct outq *q, const void *a, size_t alen, const void *p, size_t plen) {
    size_t need = alen + plen;
    if (q->len) {
        struct outbuf *b = q->seg[(q->head + q->len - 1) & (q->cap - 1)].b;
        if (b->refs == 1 && (size_t)(b->cap - b->len) >= need) {
            memcpy(b->data + b->len, a, alen);
            if (plen)
                memcpy(b->data + b->len + alen, p, plen);
            b->len += (uint32_t)need;
            q->bytes += need;
            return 0;
        }
    }
    struct outbuf *b = outbuf_new(need < OUTBUF_MIN ? OUTBUF_MIN : need);
    if (!b)
        return -1;
    memcpy(b->data, a, alen);
    if (plen)
        memcpy(b->data + alen, p, plen);
    b->len = (uint32_t)need;
    if (outq_push(q, b) < 0) {
        outbuf_unref(b);
        return -1;
    }
    return 0;
}

int outq_iov(const struct outq *q, struct iovec *iov, int max) {
    int n = 0;
    for (uint32_t i = 0; i < q->len && n < max; i++, n++) {
        const struct outseg *s = &q->seg[(q->head + i) & (q->cap - 1)];
        iov[n].iov_base = s->b->data + s->off;
        iov[n].iov_len = s->b->len - s->off;
    }
    return n;
}

void outq_consume(struct outq *q, size_t n) {
    q->bytes -= n;
    while (n && q->len) {
        struct outseg *s = &q->seg[q->head];
        size_t avail = s->b->len - s->off;
        if (n < avail) {
            s->off += (uint32_t)n;
            return;
        }
        n -= avail;
        outbuf_unref(s->b);
        q->head = (q->head + 1) & (q->cap - 1);
        q->len--;
    }
    if (!q->len)
        q->head = 0;
}

size_t outq_drop_unstarted(struct outq *q) {
    size_t dropped = 0;
    uint32_t keep = q->len && q->seg[q->head].off ? 1 : 0;
    while (q->len > keep) {
        struct outseg *s = &q->seg[(q->head + q->len - 1) & (q->cap - 1)];
        dropped += s->b->len - s->off;
        outbuf_unref(s->b);
        q->len--;
    }
    q->bytes -= dropped;
    if (!q->len)
        q->head = 0;
    return dropped;
}

void outq_trim(struct outq *q) {
    if (!q->len && q->seg) {
        free(q->seg);
        q->seg = NULL;
        q->cap = q->head = 0;
    }
}

void outq_clear(struct outq *q) {
    for (uint32_t i = 0; i < q->len; i++)
        outbuf_unref(q->seg[(q->head + i) & (q->cap - 1)].b);
    free(q->seg);
    *q = (struct outq){0};
}
