/* outq.h — the output queue: refcounted buffers and a ring of segments.
 *
 * An outbuf holds one or more complete frames (or HTTP bytes). A published
 * message is one outbuf shared by every subscriber's queue: each queue holds a
 * reference and its own offset, never a copy. The queue knows no socket: the
 * caller gathers iovecs with outq_iov, writes them, and reports what the
 * kernel took with outq_consume.
 *
 * Ownership: a queue owns one reference to each buffer in its ring and the
 * ring array itself; outq_clear releases both. */
#ifndef SB_OUTQ_H
#define SB_OUTQ_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

struct outbuf {
    uint32_t refs;
    uint32_t len, cap;
    uint8_t data[];
};

/* A new buffer with one reference and room for cap bytes, or NULL. */
struct outbuf *outbuf_new(size_t cap);
/* Drop one reference; the last one frees the buffer. NULL is fine. */
void outbuf_unref(struct outbuf *b);
/* A buffer holding one complete unmasked server frame, or NULL (OOM). */
struct outbuf *outbuf_frame(int opcode, const void *payload, size_t len);

struct outseg {
    struct outbuf *b;
    uint32_t off; /* bytes of b already written */
};

struct outq {
    struct outseg *seg; /* ring of cap segments (a power of two), or NULL while empty and trimmed */
    uint32_t head, len, cap;
    size_t bytes; /* not yet written */
};

/* Queue a reference to b (the caller's reference is taken over on success).
 * Returns 0, or -1 on OOM (the caller still owns its reference). */
int outq_push(struct outq *q, struct outbuf *b);
/* Queue a copy of a[alen] then p[plen], appending to the tail buffer when the
 * queue alone holds it and it has room. Returns 0, or -1 on OOM. */
int outq_append(struct outq *q, const void *a, size_t alen, const void *p, size_t plen);
/* Fill at most max iovecs with the queued bytes, in order. Returns the count. */
int outq_iov(const struct outq *q, struct iovec *iov, int max);
/* The first n queued bytes were written: release what is done. */
void outq_consume(struct outq *q, size_t n);
/* Drop every segment that has not started to go out (a partly written one
 * stays, so the peer never sees half a frame). Returns the bytes dropped. */
size_t outq_drop_unstarted(struct outq *q);
/* Free the ring array of an empty queue (an idle connection keeps none). */
void outq_trim(struct outq *q);
/* Release every buffer and the ring. */
void outq_clear(struct outq *q);

#endif
