/* pubsub.h — topics -> subscribers. A message is framed once and the same
 * refcounted buffer is queued on every subscriber. */
#ifndef SB_PUBSUB_H
#define SB_PUBSUB_H

#include <stddef.h>
#include <stdint.h>

struct conn;
struct outbuf;
struct pubsub;

/* One topic a connection is subscribed to (array owned by the conn). */
struct subscription {
    struct topic *topic;
    uint32_t slot; /* index in the topic's subscriber array */
};

struct pubsub *pubsub_new(void);

/* Called when a topic gains its first subscriber (added = 1) or loses its last (0):
 * how --redis follows which channels to subscribe. NULL fn removes it. */
typedef void (*pubsub_topic_hook)(void *ud, const char *topic, size_t len, int added);
void pubsub_set_hook(struct pubsub *ps, pubsub_topic_hook fn, void *ud);
/* Called for every pubsub_publish (not for pubsub_deliver): how --redis sends
 * the app's publishes to the other processes. NULL fn removes it. */
typedef void (*pubsub_publish_hook)(void *ud, const char *topic, size_t tlen, const void *msg,
                                    size_t len, int binary);
void pubsub_set_publish_hook(struct pubsub *ps, pubsub_publish_hook fn, void *ud);
/* A watch is a subscriber that is no connection (a script's switchboard.subscribe):
 * it keeps its topic live (for the topic hook, so --redis subscribes the channel) and
 * makes pubsub_deliver hand every message on the topic to the watch hook first. The
 * hook must not run Lua or change subscriptions (it queues). Watches are counted:
 * pubsub_watch returns 0 (-1 out of memory), each pubsub_unwatch undoes one. */
typedef void (*pubsub_watch_hook)(void *ud, const char *topic, size_t tlen, const void *msg,
                                  size_t len, int binary);
void pubsub_set_watch_hook(struct pubsub *ps, pubsub_watch_hook fn, void *ud);
int pubsub_watch(struct pubsub *ps, const char *topic, size_t len);
void pubsub_unwatch(struct pubsub *ps, const char *topic, size_t len);
void pubsub_free(struct pubsub *ps);

/* Returns 1 subscribed, 0 already subscribed, -1 out of memory. */
int pubsub_subscribe(struct pubsub *ps, struct conn *c, const char *topic, size_t len);
/* Returns 1 unsubscribed, 0 was not subscribed. */
int pubsub_unsubscribe(struct pubsub *ps, struct conn *c, const char *topic, size_t len);
/* Leave every topic (a closing connection). */
void pubsub_unsubscribe_all(struct pubsub *ps, struct conn *c);
/* The app's publish: deliver here (pubsub_deliver), then hand it to the
 * publish hook. Returns the number of local subscribers it was queued on. */
size_t pubsub_publish(struct pubsub *ps, const char *topic, size_t tlen, const void *msg,
                      size_t len, int binary, struct conn *except);
/* Frame once, queue on every subscriber here except `except` (may be NULL):
 * a publish that came from elsewhere. Returns the number queued on. */
size_t pubsub_deliver(struct pubsub *ps, const char *topic, size_t tlen, const void *msg,
                      size_t len, int binary, struct conn *except);
/* The same with the publication already framed (a whole plain frame, shared: a
 * reference is taken per queue) and its position in the topic's history (0:
 * none): how history topics deliver. raw/rawlen/rawbin: the message as it was
 * published, for the watch hook. Subscribers whose id is except_id (when not 0)
 * are skipped too. */
size_t pubsub_deliver_frame(struct pubsub *ps, const char *topic, size_t tlen,
                            struct outbuf *frame, uint64_t pos, const void *raw, size_t rawlen,
                            int rawbin, struct conn *except, uint64_t except_id);

/* Recovery (ws:subscribe with `since`). pubsub_subscribe_replay subscribes c
 * (same return as pubsub_subscribe) with a replay that is waiting: what is
 * published meanwhile is held for c (not sent). pubsub_replay_add queues a kept
 * publication for c, in position order (one at or below the last queued is
 * skipped; returns 1 queued, 0 skipped or no replay, -1 out of memory).
 * pubsub_replay_start ends the wait: the publications held meanwhile follow
 * the replay, those it already had (by position) left out, and sending starts.
 * From then on c is sent its replay while its queue is below --out-high and
 * the rest at each drain (pubsub_replay_pump, which the drain calls), live
 * publications queued behind it; when it is empty the subscription is live.
 * Live publications held for c past --out-max bytes close it with 1008. */
int pubsub_subscribe_replay(struct pubsub *ps, struct conn *c, const char *topic, size_t len);
int pubsub_replay_add(struct pubsub *ps, struct conn *c, const char *topic, size_t len,
                      struct outbuf *frame, uint64_t pos);
int pubsub_replay_start(struct pubsub *ps, struct conn *c, const char *topic, size_t len);
void pubsub_replay_pump(struct pubsub *ps, struct conn *c);

/* The topic's connection subscribers (watches not counted). */
size_t pubsub_count(struct pubsub *ps, const char *topic, size_t len);
/* Calls cb for every live topic: with a connection subscriber or a watch. */
void pubsub_each_topic(struct pubsub *ps, void (*cb)(void *ud, const char *t, size_t len),
                       void *ud);

#endif
