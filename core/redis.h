/* redis.h — `--redis URL`: publish across processes and hosts through Redis pub/sub.
 *
 * A publish is delivered locally at once (pubsub.c) and also PUBLISHed to the Redis
 * channel "sb:<topic>"; the message carries this process's random origin id, so a
 * process skips its own messages when they come back. A process SUBSCRIBEs to
 * "sb:<topic>" while it has at least one local subscriber to the topic. When Redis goes
 * away, local delivery goes on; the connections are retried with backoff and every live
 * topic is subscribed again. Messages published while Redis is away do not cross. */
#ifndef SB_REDIS_H
#define SB_REDIS_H

#include <stddef.h>
#include <stdint.h>

struct sb_server;
struct sb_redis;

/* Parse "redis://host[:port][/db]" (port 6379 when absent). Returns 0, or -1 with a
 * message in err. */
int redis_parse_url(const char *url, char *host, size_t cap, int *port, int *db, char *err,
                    size_t errcap);

/* Blocking start-up check: connect and PING (or SELECT the URL's db) within 2 s.
 * Returns 0, or -1 with a message in err. */
int redis_probe(const char *url, char *err, size_t errcap);

/* Connect to Redis on srv's loop and hook srv's topics (never blocks: a Redis that is
 * down is retried with backoff). The URL's db, when not 0, is SELECTed on both
 * connections. Publishes Redis has not answered are bounded by out_max bytes
 * (--redis-out-max): past it a publish is delivered locally only, counted
 * (redis_dropped) and logged at most once a second. Returns NULL only when the URL is
 * bad or memory runs out. Free with redis_free before server_free. */
struct sb_redis *redis_new(struct sb_server *srv, const char *url, size_t out_max);
void redis_free(struct sb_redis *r);

/* Send one publish to the other processes (the local delivery is the caller's).
 * redis_new hooks it to pubsub_publish, so the app's publishes reach it alone. */
void redis_publish(struct sb_redis *r, const char *topic, size_t tlen, const void *msg,
                   size_t len, int binary);

/* The publish of a history topic (see README "History with --redis"): Redis
 * assigns the position, keeps the message (size, ttl) and publishes it on the
 * channel with its position and epoch; every process delivers it from there.
 * except_id: the id of this process's connection that must not receive it (0:
 * none). */
void redis_history_publish(struct sb_redis *r, const char *topic, size_t tlen, const void *msg,
                           size_t len, int binary, uint32_t size, double ttl, uint64_t except_id);

/* Publishes kept local because --redis-out-max was reached (0 for NULL). */
uint64_t redis_dropped(const struct sb_redis *r);

#endif
