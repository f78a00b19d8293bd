/* pubsub.h — topics -> subscribers. A message is framed once and the same
 * refcounted buffer is queued on every subscriber. */
#ifndef SB_PUBSUB_H
#define SB_PUBSUB_H

#include <stddef.h>
#include <stdint.h>

struct conn;
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
/* The topic's connection subscribers (watches not counted). */
size_t pubsub_count(struct pubsub *ps, const char *topic, size_t len);
/* Calls cb for every live topic: with a connection subscriber or a watch. */
void pubsub_each_topic(struct pubsub *ps, void (*cb)(void *ud, const char *t, size_t len),
                       void *ud);

#endif
