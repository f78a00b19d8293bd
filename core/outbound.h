/* outbound.h — connections the server opens (sb.tcp, sb.http): non-blocking DNS
 * (evdns, /etc/hosts honoured), TCP connect trying each address in turn, an
 * optional TLS client session (system CAs, an extra CA file, hostname check,
 * SNI) and a bufferevent for the bytes. No Lua: callers get callbacks.
 *
 * Callback timing: a callback never runs inside the call that started its
 * operation; it runs from the loop (an active event), exactly once per
 * operation, unless outbound_close came first (then never). One operation at
 * a time per connection; each has a timeout. Errors are short stable strings
 * (static or held by the connection until its next operation):
 * "timeout", "closed", "connection refused", "connection reset",
 * "dns: ...", "tls: ...", "too many outbound connections". */
#ifndef SB_OUTBOUND_H
#define SB_OUTBOUND_H

#include <stddef.h>
#include <stdint.h>

#include <event2/util.h> /* struct evutil_addrinfo */

struct event_base;
struct evbuffer;
struct outbound_ctx;
struct outbound;

/* What the outbound connections of one loop share: the DNS base, the TLS
 * client contexts (one per extra CA file), the count open against the limit.
 * max_open: connections open at once (--max-outbound). resolver: a nameserver
 * ("ADDR[:PORT]", --resolver) used instead of /etc/resolv.conf's, or NULL;
 * /etc/hosts is honoured either way. NULL on failure. Free after every
 * connection is closed (kept idle ones are closed here); when lookups were
 * cancelled, freeing turns the loop once more (evdns frees them from deferred
 * callbacks), so free whatever else has events on the loop first. */
struct outbound_ctx *outbound_ctx_new(struct event_base *base, unsigned max_open,
                                      const char *resolver);
/* 1 when addr is an IPv4/IPv6 address with an optional port, as --resolver takes. */
int outbound_resolver_valid(const char *addr);
void outbound_ctx_free(struct outbound_ctx *x);
/* Connections open now (connecting or connected, not yet closed). */
unsigned outbound_open_count(const struct outbound_ctx *x);

struct outbound_opts {
    const char *host; /* a name (DNS, /etc/hosts) or an IPv4/IPv6 literal */
    unsigned port;
    int tls;
    const char *server_name; /* TLS: SNI and the name checked; NULL: host */
    int verify;              /* TLS: check the chain against the system CAs (+ ca) and the name */
    const char *ca;          /* TLS: a PEM file of CAs trusted as well, or NULL */
    double timeout;          /* seconds for DNS + connect + TLS handshake */
};

/* err NULL on success; else valid until the next call on the connection. */
typedef void (*outbound_cb)(void *ud, const char *err);

/* A new connection to opts->host:port; cb reports when it is ready (TLS
 * handshake done) or why not. Returns NULL with *err set ("too many outbound
 * connections", "tls: ...") when it cannot start; cb is then never called. */
struct outbound *outbound_connect(struct outbound_ctx *x, const struct outbound_opts *opts,
                                  outbound_cb cb, void *ud, const char **err);

/* Queue len bytes; cb when the kernel has taken them all (or the error). */
void outbound_send(struct outbound *o, const void *data, size_t len, double timeout, outbound_cb cb,
                   void *ud);

/* cb when more input has arrived, the peer has finished (outbound_eof), or
 * the error. The caller takes what it wants from outbound_input and waits
 * again: reading is paused between waits, so unread input stays bounded. */
void outbound_wait_input(struct outbound *o, double timeout, outbound_cb cb, void *ud);

/* The bytes received and not yet taken (the caller drains what it takes). */
struct evbuffer *outbound_input(struct outbound *o);
/* 1 once the peer has finished sending (no more input will come). */
int outbound_eof(const struct outbound *o);

enum outbound_take { OUTBOUND_TAKE_N, OUTBOUND_TAKE_LINE, OUTBOUND_TAKE_ALL };

/* Take from the input what mode asks for: n bytes; a line (its "\n" or
 * "\r\n" not included); everything up to the peer's end. Returns 1 with
 * data and len set; 0 when it must wait for input first (outbound_wait_input);
 * -1 with *err: "closed" (the peer ended first; data and len hold what there
 * was), "too large" (more than max bytes without a line end or the end), or
 * the connection's error. The bytes stay valid until the next call on o and
 * are then dropped from the input. */
int outbound_take(struct outbound *o, enum outbound_take mode, size_t n, size_t max,
                  const char **data, size_t *len, const char **err);

/* Close the socket and free; a pending operation's callback is never called. */
void outbound_close(struct outbound *o);

/* Idle connections kept for reuse (HTTP keep-alive): at most max_idle per key,
 * each closed after idle_timeout seconds unused, or at once when the peer
 * closes it or sends anything. Parked connections count as open; one that
 * would go past max_open closes the oldest parked one first. max_idle 0 or
 * idle_timeout 0: nothing is kept. */
void outbound_ctx_set_pool(struct outbound_ctx *x, unsigned max_idle, double idle_timeout);
/* Park o under key (the caller's: what makes two connections interchangeable),
 * or close it when it cannot be reused (an operation pending, input unread,
 * the peer finished, an error, the key's pool full). o is the pool's now. */
void outbound_park(struct outbound *o, const char *key);
/* A parked connection of key, now the caller's as from outbound_connect's
 * callback, or NULL. It may still turn out closed: its next operation says so. */
struct outbound *outbound_unpark(struct outbound_ctx *x, const char *key);
unsigned outbound_idle_count(const struct outbound_ctx *x);
unsigned long long outbound_reused_count(const struct outbound_ctx *x);

/* A name alone (for a client library that connects by itself, given an
 * address): cb gets the addresses (valid during the call, freed after it) or
 * err ("dns: ..."), from the loop, exactly once unless outbound_resolve_cancel
 * came first (then never). The resolve carries no timeout: the caller's own
 * timer cancels it. NULL with *err when it cannot start. */
struct outbound_dns;
typedef void (*outbound_resolve_cb)(void *ud, const struct evutil_addrinfo *ai, const char *err);
struct outbound_dns *outbound_resolve(struct outbound_ctx *x, const char *host, unsigned port,
                                      outbound_resolve_cb cb, void *ud, const char **err);
void outbound_resolve_cancel(struct outbound_dns *d);

#endif
