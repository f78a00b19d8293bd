/* tls.h — OpenSSL 3 server contexts and the TLS side of the connection I/O
 * path.
 *
 * A tls_ctx holds the SSL_CTX built from a certificate chain and key file
 * (TLS 1.2 and 1.3 only, ECDHE + AEAD ciphers only, ALPN http/1.1, session
 * tickets, no renegotiation). tls_ctx_reload() swaps in a context built from
 * the same files; connections already open keep the context they started
 * with (SSL objects hold a reference to it).
 *
 * A connection's SSL reads into the caller's buffer (the loop-wide read buffer)
 * and writes the caller's queued segments: no buffers of its own beyond what
 * OpenSSL holds (a read-ahead buffer of up to 64 KiB while bytes arrive), and
 * SSL_MODE_RELEASE_BUFFERS drops those while idle. */
#ifndef SB_TLS_H
#define SB_TLS_H

#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

struct ssl_st;
struct tls_ctx;

/* What a call that returned TLS_AGAIN is waiting for. */
enum tls_want { TLS_WANT_NONE = 0, TLS_WANT_READ = 1, TLS_WANT_WRITE = 2 };

#define TLS_AGAIN (-1) /* try again when *want is ready */
#define TLS_FAIL (-2)  /* the TLS session is broken (bad handshake, garbage, reset): close */

/* Build a context from PEM files. On failure logs one line naming the file
 * and what is wrong with it (missing, unreadable, not PEM, key does not match
 * the certificate) and returns NULL. */
struct tls_ctx *tls_ctx_new(const char *cert_file, const char *key_file);
/* Reload the files; on failure logs why and keeps the current context.
 * Returns 0 or -1. */
int tls_ctx_reload(struct tls_ctx *t);
void tls_ctx_free(struct tls_ctx *t);

/* A server-side SSL on a connected non-blocking socket. NULL on OOM. */
struct ssl_st *tls_conn_new(struct tls_ctx *t, int fd);
/* Send close_notify if the session is up (best effort, never blocks) and free. */
void tls_conn_free(struct ssl_st *ssl);
/* Best-effort close_notify before the socket's write side is shut. */
void tls_conn_shutdown(struct ssl_st *ssl);

/* Read decrypted bytes into buf (the handshake runs as needed). Returns bytes
 * (> 0), 0 at a clean or unclean end of stream, TLS_AGAIN with *want set, or
 * TLS_FAIL. With read-ahead one read() brings every record that has arrived;
 * their plaintext fills buf until it is full or no record is left buffered
 * (no read() just to see EAGAIN; a socket that holds more than the read-ahead
 * buffer took stays readable, so its event comes back for the rest). */
ssize_t tls_read(struct ssl_st *ssl, void *buf, size_t cap, int *want);
/* Write iov in order; returns bytes taken (> 0, maybe fewer than offered),
 * TLS_AGAIN with *want set (retry later with the same bytes), or TLS_FAIL. */
ssize_t tls_writev(struct ssl_st *ssl, const struct iovec *iov, int n, int *want);
/* Bytes OpenSSL holds (decrypted, or records read ahead, maybe a partial one)
 * that no socket event will announce. */
int tls_pending(struct ssl_st *ssl);

/* Make sure DIR/cert.pem and DIR/key.pem exist: when either is missing, create
 * DIR (0700) and write a fresh self-signed P-256 certificate for localhost,
 * 127.0.0.1 and ::1, valid for a year. Fills cert/key with the paths.
 * Returns 0, or -1 after logging why. */
int tls_self_signed(const char *dir, char *cert, char *key, size_t cap);

#endif
