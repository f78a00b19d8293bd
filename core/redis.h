/* redis.h — `--redis URL`: publish across processes and hosts through Redis pub/sub.
 *
 * A publish is delivered locally at once (pubsub.c) and also PUBLISHed to the Redis
 * channel "sb:<topic>", tagged with this process's random origin id, so a process skips
 * its own messages when they come back; an untagged payload is a backend's text (the
 * format is in redis.c and README, "Publishing from a backend"). A process SUBSCRIBEs to
 * "sb:<topic>" while the topic has a local subscriber (a connection or a script's
 * switchboard.subscribe). When Redis goes
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
 * none). Returns NULL once the command is sent, else why it cannot be (Redis is not
 * connected, or --redis-out-max bytes are unanswered): the publication is then not
 * made anywhere. One that Redis never answers (it goes away meanwhile) is logged. */
const char *redis_history_publish(struct sb_redis *r, const char *topic, size_t tlen,
                                  const void *msg, size_t len, int binary, uint32_t size,
                                  double ttl, uint64_t except_id);
/* One command on the publisher connection (so in order with the PUBLISHes), for the
 * app's side of the core (presence, history). cb runs exactly once, from the loop:
 * with the reply (an error reply included; hiredis frees it after cb) and err NULL,
 * or with reply NULL and err when the connection went away (also from redis_free).
 * cb may be NULL (nobody waits). Returns a handle, valid until cb runs, that
 * redis_command_cancel takes (then cb never runs); NULL at once when r is NULL, Redis
 * is down or --redis-out-max bytes are unanswered (then cb never runs). */
struct redisReply;
struct redis_cmd;
typedef void (*redis_reply_fn)(void *ud, struct redisReply *reply, const char *err);
struct redis_cmd *redis_command(struct sb_redis *r, int argc, const char **argv,
                                const size_t *argvlen, redis_reply_fn cb, void *ud);
void redis_command_cancel(struct redis_cmd *c);

/* fn(ud) runs each time both connections are (re)established: where state Redis lost
 * (presence entries) is written again. At most REDIS_UP_HOOKS of them; redis_on_up
 * returns -1 past that. */
#define REDIS_UP_HOOKS 4
typedef void (*redis_up_fn)(void *ud);
int redis_on_up(struct sb_redis *r, redis_up_fn fn, void *ud);
void redis_off_up(struct sb_redis *r, redis_up_fn fn, void *ud);
/* 1 when connected (0 for NULL). */
int redis_is_up(const struct sb_redis *r);

/* A read of a history topic (FCALL sb_history): the reply is an array: recovered (1
 * when epoch equals the topic's and since lies within what is kept; always 0 with
 * epoch "*", which reads without checking), the topic's epoch (made when it has
 * none), its last position, then position, message, binary ("1"/"0") of each kept
 * publication after `since` (after 0 when the check failed), oldest first: the first
 * `limit` (first_n) or the last `limit` (0: all). ttl: the topic's, for an epoch made
 * here. As redis_command for cb, the handle and NULL. */
struct redis_cmd *redis_history_read(struct sb_redis *r, const char *topic, size_t tlen,
                                     uint64_t since, const char *epoch, size_t elen,
                                     size_t limit, int first_n, double ttl, redis_reply_fn cb,
                                     void *ud);

/* cb(ud, 1) once every SUBSCRIBE sent before this call has taken effect in Redis (a
 * PING on the subscriber connection); cb(ud, 0) when the connection goes away first
 * (also from redis_free). NULL at once when Redis is down. Cancel: cb never runs. */
struct redis_barrier;
typedef void (*redis_barrier_fn)(void *ud, int ok);
struct redis_barrier *redis_sub_barrier(struct sb_redis *r, redis_barrier_fn cb, void *ud);
void redis_barrier_cancel(struct redis_barrier *b);

/* Publishes kept local because --redis-out-max was reached (0 for NULL). */
uint64_t redis_dropped(const struct sb_redis *r);

#endif
