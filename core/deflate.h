/* deflate.h — permessage-deflate (RFC 7692) with zlib: negotiation and the
 * per-message codec.
 *
 * Pure codec: no sockets, no libevent, no Lua. The connection decides when a
 * message is compressed (RSV1 on its first frame) and hands whole messages in
 * and out; this module turns them into payloads and back.
 *
 * Memory per connection (zlib 1.2.13, counted through zalloc; deflate_spec.lua):
 *   struct ws_deflate: 40 bytes; nothing else until a direction is used.
 *   inflater (client -> server): ~7.3 KiB of state + a 2^client_max_window_bits
 *     window: 40,072 B at 15 bits, 11,400 B at 12, 7,816 B at 9.
 *   deflater (server -> client): ~5.9 KiB + 2^(w+2) + 2^(mem_level+9) bytes:
 *     268,240 B at w 15 / mem_level 8, 202,704 B at 15/7, 153,552 B at 12/8,
 *     18,384 B at 10/4, 9,168 B at 9/1.
 * Both are created on first use. Without context takeover in a direction its
 * state is freed after every message, so an idle connection holds only the
 * 40 bytes. With takeover the state must survive between messages;
 * deflate_trim() parks it as its window (2^w bytes + 144 at most per
 * direction: 32,912 B at 15 bits) and rebuilds it on the next message, for
 * connections that go quiet.
 */
#ifndef SB_DEFLATE_H
#define SB_DEFLATE_H

#include <stddef.h>
#include <stdint.h>

/* Errors returned by the message functions: negated close codes. */
#define DEFLATE_ERR_DATA (-1007)     /* the payload is not valid DEFLATE data */
#define DEFLATE_ERR_TOO_BIG (-1009)  /* inflating would pass max_out */
#define DEFLATE_ERR_INTERNAL (-1011) /* out of memory, or zlib refused */

/* "permessage-deflate; server_no_context_takeover; client_no_context_takeover;
 * server_max_window_bits=15; client_max_window_bits=15" (128 bytes) plus NUL fits. */
#define DEFLATE_RESPONSE_MAX 144

/* Server-wide settings. Fill with deflate_config_default, then adjust. Must
 * outlive every struct ws_deflate / deflate_shared that points at it. */
struct deflate_config {
    int enabled;                    /* 0: decline every offer */
    int server_max_window_bits;     /* 8..15: the most we use; 8 runs zlib at 9 (see .c) */
    int client_max_window_bits;     /* 8..15: the most we ask of a client that lets us pick */
    int mem_level;                  /* 1..9: zlib deflate memLevel */
    int level;                      /* 0..9, or -1 for zlib's default (6) */
    int server_no_context_takeover; /* 1: always reset our deflater (and say so) */
    int client_no_context_takeover; /* 1: always ask the client to reset its deflater */
    size_t min_size;                /* messages shorter than this are sent uncompressed */
};

/* What was agreed with one client. Window bits are 8..15 as declared (15 when
 * nothing was said); the *_declared flags say what the response carries. */
struct deflate_params {
    uint8_t server_no_context_takeover;
    uint8_t client_no_context_takeover;
    uint8_t server_max_window_bits;
    uint8_t client_max_window_bits;
    uint8_t server_bits_declared;
    uint8_t client_bits_declared;
};

/* Defaults: enabled, 15/15 window bits, mem_level 8, level 1, context
 * takeover allowed both ways, min_size 64. */
void deflate_config_default(struct deflate_config *cfg);

/* Negotiate from the Sec-WebSocket-Extensions header values (n of them, in
 * order; each value is a comma-separated list, as if all were joined with
 * commas). Accepts the first permessage-deflate offer whose parameters are all
 * known, not repeated and valid (RFC 7692 §7.1); an offer that is not is
 * skipped, as is any other extension and any syntactically broken element.
 * Returns 1 and fills *out (and resp with the response header value,
 * NUL-terminated, when resp is not NULL) on agreement; 0 when compression is
 * disabled or no offer fits (answer without the extension). Never fails
 * otherwise: a malformed header only means no compression. */
int deflate_negotiate(const struct deflate_config *cfg, const char *const *values,
                      const size_t *lens, size_t n, struct deflate_params *out,
                      char resp[DEFLATE_RESPONSE_MAX]);

/* deflate_negotiate over one (possibly comma-joined) header value. */
int deflate_negotiate1(const struct deflate_config *cfg, const char *value, size_t len,
                       struct deflate_params *out, char resp[DEFLATE_RESPONSE_MAX]);

/* Format the response header value for p into resp; returns its length. */
size_t deflate_response(const struct deflate_params *p, char resp[DEFLATE_RESPONSE_MAX]);

struct deflate_side; /* one direction's zlib state, or its parked window */

/* Per-connection state: ~40 bytes while no zlib state is held. */
struct ws_deflate {
    const struct deflate_config *cfg; /* not owned; outlives the connection */
    struct deflate_side *rx;          /* owned; inflater, NULL until needed */
    struct deflate_side *tx;          /* owned; deflater, NULL until needed */
    size_t mem;                       /* bytes held now for rx + tx (zlib + parked windows) */
    struct deflate_params p;
    uint8_t tx_stale; /* a shared frame went out: the next own message starts fresh */
};

/* Set up d for negotiated parameters p. Allocates nothing. */
void deflate_init(struct ws_deflate *d, const struct deflate_config *cfg,
                  const struct deflate_params *p);

/* Release all zlib state and parked windows; d may be re-initialised. */
void deflate_free(struct ws_deflate *d);

/* Should an outgoing message of len bytes be compressed (len >= min_size)? */
int deflate_wants(const struct ws_deflate *d, size_t len);

/* Inflate one whole compressed message (the payloads of all its frames,
 * concatenated), appending the 00 00 ff ff tail of RFC 7692 §7.2.2. Output is
 * bounded while it is produced: the buffer never grows past max_out + 1 bytes,
 * and a message that would inflate past max_out bytes returns
 * DEFLATE_ERR_TOO_BIG. Invalid data, data after a final block other than the
 * sender's empty-block header byte (§7.2.3.4), or a message that stops
 * mid-block returns DEFLATE_ERR_DATA; zlib/malloc failure DEFLATE_ERR_INTERNAL.
 * An empty payload is the empty message and leaves the inflater untouched.
 * Returns 0 with *out (malloc'd, caller frees; NULL when *out_len is 0) and
 * *out_len. On error nothing is returned and the inflater's context is gone:
 * the connection is expected to close. With client_no_context_takeover the
 * inflater is freed after every message. */
int deflate_inflate_message(struct ws_deflate *d, const uint8_t *in, size_t len, size_t max_out,
                            uint8_t **out, size_t *out_len);

/* Compress one whole message for this connection: the payload of a frame (or
 * of its fragments, in order) sent with RSV1 on the first one. Z_SYNC_FLUSH,
 * trailing 00 00 ff ff removed; an empty message is the single byte 00
 * (§7.2.3.6). *out is malloc'd (caller frees) with the payload at
 * *out + headroom (room for the frame header), *out_len payload bytes.
 * Returns 0, or DEFLATE_ERR_INTERNAL. With server_no_context_takeover the
 * deflater is freed after every message. */
int deflate_compress_message(struct ws_deflate *d, const uint8_t *in, size_t len, size_t headroom,
                             uint8_t **out, size_t *out_len);

/* Park takeover state as plain windows (see the top of this file); a no-op
 * for a direction without state. Returns the bytes released. */
size_t deflate_trim(struct ws_deflate *d);

/* Compress-once for fan-out. A shared frame is compressed from a fresh context
 * with a window of deflate_shared_bits(d) bits: it refers to nothing sent
 * before, so any client decodes it, with or without context takeover. After
 * queueing a shared compressed frame on a connection, call
 * deflate_note_shared(d): the client's window now holds that message but our
 * deflater's history does not, so its next own message must not refer back
 * past it (it starts from a fresh context). Group subscribers by
 * deflate_shared_bits(); a frame made with w bits is valid for every
 * connection whose value is >= w. */
struct deflate_shared {
    const struct deflate_config *cfg; /* not owned */
    struct deflate_side *side[8];     /* owned; by window bits 8..15, created on use */
    size_t mem;
};

void deflate_shared_init(struct deflate_shared *s, const struct deflate_config *cfg);
void deflate_shared_free(struct deflate_shared *s);

/* The window bits a shared frame must not exceed for this connection (9..15). */
int deflate_shared_bits(const struct ws_deflate *d);

/* As deflate_compress_message, from a fresh context of window_bits (8..15). */
int deflate_shared_compress(struct deflate_shared *s, int window_bits, const uint8_t *in,
                            size_t len, size_t headroom, uint8_t **out, size_t *out_len);

/* A shared compressed frame was queued on d (see above). */
void deflate_note_shared(struct ws_deflate *d);

#endif
