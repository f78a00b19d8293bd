/* frame.h — RFC 6455 §5 frame codec: an incremental decoder for client frames
 * and an encoder for server frames.
 *
 * Pure codec: knows nothing of sockets, libevent or Lua. The decoder unmasks in
 * place, validates text as UTF-8 as bytes arrive, reassembles fragmented
 * messages, and reports every protocol violation as a close code.
 */
#ifndef SB_FRAME_H
#define SB_FRAME_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum ws_opcode {
    WS_OP_CONT = 0x0,
    WS_OP_TEXT = 0x1,
    WS_OP_BINARY = 0x2,
    WS_OP_CLOSE = 0x8,
    WS_OP_PING = 0x9,
    WS_OP_PONG = 0xA,
};

/* Close codes used by the codec (RFC 6455 §7.4.1). */
#define WS_CLOSE_NORMAL 1000
#define WS_CLOSE_GOING_AWAY 1001
#define WS_CLOSE_PROTOCOL 1002
#define WS_CLOSE_NO_STATUS 1005 /* never sent: "close frame had no code" */
#define WS_CLOSE_ABNORMAL 1006  /* never sent: "connection dropped" */
#define WS_CLOSE_INVALID_DATA 1007
#define WS_CLOSE_POLICY 1008
#define WS_CLOSE_TOO_BIG 1009
#define WS_CLOSE_INTERNAL 1011

/* Callbacks from ws_decoder_feed. Data pointers are valid only during the
 * call. Return 0 to go on, non-zero to make feed stop after this frame and
 * return (e.g. the connection is closing). */
struct ws_decoder_cb {
    /* A complete data message. opcode is WS_OP_TEXT or WS_OP_BINARY. When
     * compressed (RSV1 was set on its first frame), the bytes are the raw
     * deflated payload and have NOT been UTF-8 checked: the caller inflates and
     * checks. Otherwise text has been validated. */
    int (*message)(void *ud, int opcode, uint8_t *data, size_t len, int compressed);
    /* A complete control frame (close, ping, pong), payload <= 125 bytes. A close
     * payload has been validated (see ws_close_parse). */
    int (*control)(void *ud, int opcode, uint8_t *data, size_t len);
};

/* Decoder state for one connection. Zero-initialise, then set the config
 * fields. Buffers are allocated only while a partial frame or a fragmented
 * message is pending; ws_decoder_free releases them. */
struct ws_decoder {
    /* config */
    uint32_t max_message; /* payload bytes per message (all fragments); 0 = no limit
                             but 4 GiB - 1, the most one message may hold */
    uint8_t rsv1_ok;      /* permessage-deflate negotiated: RSV1 allowed on first frames */

    /* state (private); small fields first: an idle connection carries them all */
    uint8_t hdr_have;   /* bytes of a partial frame header held in hdr[] */
    uint8_t in_frame;   /* a frame header has been decoded, payload pending */
    uint8_t in_message; /* a fragmented data message is open (last data frame had FIN=0) */
    uint8_t msg_opcode; /* opcode of the current message */
    uint8_t msg_compressed;
    uint8_t fr_opcode, fr_fin, mask_off;
    uint8_t ctl_len;    /* bytes held in ctl[] */
    uint8_t why;        /* the last error's reason (ws_decoder_error), 0 = none */
    uint8_t utf8_state; /* of the current text message's payload so far */
    uint8_t mask[4];
    uint8_t hdr[14];
    int16_t err;             /* sticky negative close code once feed failed, else 0 */
    uint32_t msg_len, msg_cap;
    uint64_t fr_remaining; /* payload bytes of the current frame still to come */
    uint8_t *msg;          /* reassembly buffer (owned; freed when the message is
                              delivered and in ws_decoder_free) */
    uint8_t *ctl; /* partial control frame payload (owned, 125 bytes), only while one is split */
};

/* A short static reason for the last error of d, or NULL when none. */
const char *ws_decoder_error(const struct ws_decoder *d);

/* Feed bytes received from the client. buf is modified (unmasked in place).
 * Returns the number of bytes consumed (== len unless a callback asked to
 * stop: then the bytes up to the end of that frame), or a negative close code
 * (-1002, -1007, -1009) on a protocol violation, or -1011 when the reassembly
 * buffer cannot be allocated, with a short reason in ws_decoder_error(d). After an
 * error, feeding again returns the same code (it should not be fed again).
 * A complete unfragmented data frame found whole in buf is delivered in place
 * (zero copy); anything else is reassembled in d->msg, allocated as bytes
 * arrive and freed when the message is delivered.
 * Rules enforced: client frames must be masked; RSV bits only as negotiated;
 * no reserved opcodes; 64-bit lengths with the top bit set are invalid;
 * non-minimal length encodings are invalid; control frames are <= 125 bytes
 * and not fragmented; CONT only inside a message and a new data frame not
 * inside one; text must be valid UTF-8 (checked as bytes arrive); close
 * payloads: not 1 byte long, a valid code, UTF-8 reason; messages longer than
 * max_message -> 1009, detected from the frame header. */
ssize_t ws_decoder_feed(struct ws_decoder *d, uint8_t *buf, size_t len,
                        const struct ws_decoder_cb *cb, void *ud);

/* Release the decoder's buffers; it may be reused after zeroing its state. */
void ws_decoder_free(struct ws_decoder *d);

/* Is `code` valid on the wire in a close frame (1000-1003, 1007-1014, 3000-4999)?
 * 1012-1014 (service restart, try again later, bad gateway) are in the IANA
 * registry and sent by real servers and proxies, so they are accepted. */
int ws_close_code_valid(unsigned code);

/* Parse a close payload. Returns 0 and sets *code (1005 when empty), *reason and
 * *reason_len; or a negative close code: -1002 for a 1-byte payload or an invalid
 * code, -1007 for a reason that is not UTF-8. */
int ws_close_parse(const uint8_t *p, size_t len, unsigned *code, const char **reason,
                   size_t *reason_len);

/* Write the header of an unmasked server frame into out; returns its length
 * (2, 4 or 10). */
size_t ws_frame_header(uint8_t out[10], int opcode, int fin, int rsv1, uint64_t len);

/* XOR-unmask/mask len bytes with a 4-byte key, starting at key offset off (0-3). */
void ws_mask(uint8_t *p, size_t len, const uint8_t mask[4], unsigned off);
/* ws_mask(p, len, mask, 0), and the length of a leading part of the result
 * known to be ASCII (a multiple of 32 bytes; the rest was not looked at). */
size_t ws_unmask_ascii(uint8_t *p, size_t len, const uint8_t mask[4]);

#endif
