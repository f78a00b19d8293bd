/* history.h — the in-process store of topic history (without --redis).
 *
 * A rule (history_keep) says that topics starting with a prefix keep their last
 * `size` publications for `ttl` seconds; the longest matching prefix wins. A
 * topic with a rule has a stream: its last position (increasing by one per
 * publication), its epoch (a short string that changes when the stream is lost:
 * another process, or the stream dropped after being abandoned) and its kept
 * entries, oldest first. Each entry holds the framed publication (shared by
 * reference with every queue it is on) and the message as published.
 *
 * Bounds: per topic `size` and `ttl`; over every topic, max_bytes
 * (--history-max-bytes, streams counted too): past it the oldest entries of any
 * topic go first, counted as evictions, with the streams they leave empty. A stream with nothing
 * kept and no publication for its ttl is dropped by the once-a-second sweep (a later publication
 * starts a new epoch at position 1). history_append may drop other streams (never the one it
 * appends to): hold no stream pointer across it but that one.
 *
 * With --redis the store caches the frames this process formatted (history_adopt):
 * a recovery reuses them rather than format again.
 *
 * Ownership: the store owns its rules, streams and entries, and one reference
 * to each entry's frame. A stream pointer stays valid until the sweep (which
 * runs from the loop, never inside a history_* call). */
#ifndef SB_HISTORY_H
#define SB_HISTORY_H

#include <stddef.h>
#include <stdint.h>

struct sb_server;
struct outbuf;
struct history;
struct history_stream;

#define HISTORY_EPOCH_MAX 32

struct history_rule {
    char *prefix; /* owned */
    size_t plen;
    uint32_t size;
    double ttl;
    int ref; /* the caller's handle for the format (a Lua registry ref), or -1 */
};

/* One kept publication, as history_each shows it. */
struct history_item {
    uint64_t pos;
    struct outbuf *frame; /* the framed publication (borrowed) */
    const char *msg;      /* the message as published (borrowed) */
    size_t len;
    int binary;
};

/* A store bounded by max_bytes; its sweep runs on srv's loop. NULL on OOM. */
struct history *history_new(struct sb_server *srv, size_t max_bytes);
void history_free(struct history *h);

/* Add or replace the rule for prefix. *old_ref receives the replaced rule's
 * ref (-1 when new). Returns 0, or -1 out of memory. */
int history_keep(struct history *h, const char *prefix, size_t plen, uint32_t size, double ttl,
                 int ref, int *old_ref);
/* The rule of the longest prefix of topic, or NULL (one branch when no rule exists). */
const struct history_rule *history_match(const struct history *h, const char *topic, size_t tlen);

/* The stream of topic, made (position 0, a new epoch) when create is set and it
 * does not exist; NULL when absent (or out of memory). */
struct history_stream *history_stream(struct history *h, const char *topic, size_t tlen,
                                      int create);
/* The stream's epoch (NUL-terminated) and its last position. */
const char *history_epoch(const struct history_stream *st);
uint64_t history_last(const struct history_stream *st);
/* The oldest kept position (after dropping what expired), or last + 1 when none. */
uint64_t history_first(struct history *h, struct history_stream *st);
/* With --redis the store is a cache of the frames formatted here: make st's epoch
 * `epoch` (dropping what it kept under another one) and set its last position to pos
 * when pos is newer. Returns 1 when pos is newer than what st kept (append it), else 0. */
int history_adopt(struct history *h, struct history_stream *st, const char *epoch, uint64_t pos);
/* With --redis: the last position this process heard live on the topic's channel
 * (0 after an epoch change), and note one heard. */
uint64_t history_heard(const struct history_stream *st);
void history_hear(struct history_stream *st, uint64_t pos);
/* The frame kept at pos (borrowed), or NULL. */
struct outbuf *history_frame(struct history *h, struct history_stream *st, uint64_t pos);
/* Take the next position of the stream (for the publication being made). */
uint64_t history_next(struct history_stream *st);
/* Keep the publication at pos (from history_next; with --redis any position, put in
 * its place, nothing done when it is kept already) with its frame (a reference is
 * taken) and its message (copied, unless msg_in_frame says the frame's payload is
 * the message). Trims to the rule's size (the lowest positions go) and the store's
 * bound (the entries kept longest go). Returns 0, or -1 out of memory (the
 * publication is then not kept). */
int history_append(struct history *h, struct history_stream *st, const struct history_rule *rule,
                   uint64_t pos, struct outbuf *frame, const void *msg, size_t len, int binary,
                   int msg_in_frame);
/* Call cb for each kept entry after `since`, oldest first: when first_n, the
 * first `limit` of them, else the last `limit` (limit 0: all). Returns how many. */
size_t history_each(struct history *h, struct history_stream *st, uint64_t since, size_t limit,
                    int first_n, void (*cb)(void *ud, const struct history_item *it), void *ud);

/* Bytes kept now (messages and frames), and entries dropped for max_bytes. */
size_t history_bytes(const struct history *h);
uint64_t history_evictions(const struct history *h);

#endif
