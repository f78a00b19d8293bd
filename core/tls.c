/* tls.c — OpenSSL 3 contexts and the TLS side of the I/O path. */
#define _GNU_SOURCE
#include "tls.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "log.h"

/* TLS 1.2: forward secrecy (ECDHE) and AEAD only. TLS 1.3 suites all are. */
static const char tls12_ciphers[] =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";
static const unsigned char alpn_http11[] = "\x08http/1.1";
/* Bytes one read() may take into OpenSSL's record buffer (read-ahead). */
#define TLS_READ_AHEAD (64 * 1024)

struct tls_ctx {
    SSL_CTX *ctx; /* owned; open SSLs hold their own reference */
    char *cert_file, *key_file;
};

static const char *ssl_reason(void) {
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    return r ? r : "unknown error";
}

static int on_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg) {
    (void)ssl;
    (void)arg;
    unsigned char *sel;
    if (SSL_select_next_proto(&sel, outlen, alpn_http11, sizeof alpn_http11 - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK; /* no ALPN in the answer; HTTP/1.1 anyway */
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

/* Can the file be opened for reading? Logs "--FLAG FILE: why" when not. */
static int check_readable(const char *flag, const char *file) {
    FILE *f = fopen(file, "r");
    if (!f) {
        log_error("%s %s: %s", flag, file, strerror(errno));
        return -1;
    }
    fclose(f);
    return 0;
}

static const char *subject_of(X509 *x, char *buf, size_t cap) {
    buf[0] = 0;
    if (x)
        X509_NAME_oneline(X509_get_subject_name(x), buf, (int)cap);
    return buf;
}

static SSL_CTX *build_ctx(const char *cert, const char *key) {
    if (check_readable("--tls-cert", cert) < 0 || check_readable("--tls-key", key) < 0)
        return NULL;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        log_error("TLS: cannot create a context: %s", ssl_reason());
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_COMPRESSION |
                                 SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                              SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* Read-ahead: one read() takes every record that has arrived (up to the
     * buffer's size) instead of a header, a body and a final EAGAIN each. The
     * buffer is released while the connection is idle (RELEASE_BUFFERS). */
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_default_read_buffer_len(ctx, TLS_READ_AHEAD);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"switchboard", 11);
    SSL_CTX_set_num_tickets(ctx, 1);
    SSL_CTX_set_alpn_select_cb(ctx, on_alpn, NULL);
    if (!SSL_CTX_set_cipher_list(ctx, tls12_ciphers) ||
        !SSL_CTX_set1_groups_list(ctx, "X25519:P-256:P-384")) {
        log_error("TLS: cipher/group setup failed: %s", ssl_reason());
        goto fail;
    }
    ERR_clear_error();
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        log_error("--tls-cert %s: not a usable PEM certificate (%s)", cert, ssl_reason());
        goto fail;
    }
    ERR_clear_error();
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        /* OpenSSL checks the pair while loading: tell a mismatch from a bad file */
        unsigned long e = ERR_peek_last_error();
        if (ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH ||
            ERR_GET_REASON(e) == X509_R_KEY_TYPE_MISMATCH)
            log_error("--tls-key %s does not match the certificate in --tls-cert %s", key, cert);
        else
            log_error("--tls-key %s: not a usable PEM private key (%s)", key, ssl_reason());
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        log_error("--tls-key %s does not match the certificate in --tls-cert %s", key, cert);
        goto fail;
    }
    ERR_clear_error();
    return ctx;
fail:
    ERR_clear_error();
    SSL_CTX_free(ctx);
    return NULL;
}

static void log_loaded(const char *what, SSL_CTX *ctx, const char *cert) {
    X509 *x = SSL_CTX_get0_certificate(ctx);
    char subj[256];
    char serial[80] = "?";
    if (x) {
        BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
        char *hex = bn ? BN_bn2hex(bn) : NULL;
        if (hex)
            snprintf(serial, sizeof serial, "%s", hex);
        OPENSSL_free(hex);
        BN_free(bn);
    }
    log_info("TLS: %s %s (subject %s, serial %s)", what, cert, subject_of(x, subj, sizeof subj),
             serial);
}

struct tls_ctx *tls_ctx_new(const char *cert_file, const char *key_file) {
    SSL_CTX *ctx = build_ctx(cert_file, key_file);
    if (!ctx)
        return NULL;
    struct tls_ctx *t = calloc(1, sizeof *t);
    if (t) {
        t->cert_file = strdup(cert_file);
        t->key_file = strdup(key_file);
    }
    if (!t || !t->cert_file || !t->key_file) {
        SSL_CTX_free(ctx);
        tls_ctx_free(t);
        return NULL;
    }
    t->ctx = ctx;
    log_loaded("loaded", ctx, cert_file);
    return t;
}

int tls_ctx_reload(struct tls_ctx *t) {
    SSL_CTX *ctx = build_ctx(t->cert_file, t->key_file);
    if (!ctx) {
        log_warn("TLS: reload failed; new connections keep the previous certificate");
        return -1;
    }
    SSL_CTX_free(t->ctx); /* open connections keep their reference */
    t->ctx = ctx;
    log_loaded("reloaded", ctx, t->cert_file);
    return 0;
}

void tls_ctx_free(struct tls_ctx *t) {
    if (!t)
        return;
    SSL_CTX_free(t->ctx);
    free(t->cert_file);
    free(t->key_file);
    free(t);
}

/* ---- connections ------------------------------------------------------------ */

SSL *tls_conn_new(struct tls_ctx *t, int fd) {
    SSL *ssl = SSL_new(t->ctx);
    if (!ssl)
        return NULL;
    if (SSL_set_fd(ssl, fd) != 1) {
        SSL_free(ssl);
        ERR_clear_error();
        return NULL;
    }
    SSL_set_accept_state(ssl);
    return ssl;
}

void tls_conn_shutdown(SSL *ssl) {
    if (SSL_is_init_finished(ssl) && !(SSL_get_shutdown(ssl) & SSL_SENT_SHUTDOWN))
        SSL_shutdown(ssl);
    ERR_clear_error();
}

void tls_conn_free(SSL *ssl) {
    if (!ssl)
        return;
    tls_conn_shutdown(ssl);
    SSL_free(ssl);
}

/* Map a failed SSL call to TLS_AGAIN / 0 / TLS_FAIL. */
static ssize_t failed(SSL *ssl, int r, int *want) {
    int e = SSL_get_error(ssl, r);
    int saved = errno;
    ERR_clear_error();
    switch (e) {
    case SSL_ERROR_WANT_READ:
        *want = TLS_WANT_READ;
        return TLS_AGAIN;
    case SSL_ERROR_WANT_WRITE:
        *want = TLS_WANT_WRITE;
        return TLS_AGAIN;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        if (saved == EAGAIN || saved == EWOULDBLOCK || saved == EINTR) {
            *want = TLS_WANT_READ;
            return TLS_AGAIN;
        }
        return TLS_FAIL;
    default:
        return TLS_FAIL;
    }
}

ssize_t tls_read(SSL *ssl, void *buf, size_t cap, int *want) {
    size_t got = 0;
    *want = TLS_WANT_NONE;
    while (got < cap) {
        size_t n = cap - got < INT_MAX ? cap - got : INT_MAX;
        int r = SSL_read(ssl, (char *)buf + got, (int)n);
        if (r > 0) {
            got += (size_t)r;
            if (!SSL_has_pending(ssl))
                break; /* all that one read() brought is taken (more in the
                          socket keeps it readable: the loop comes back) */
            continue;
        }
        if (got) { /* what stopped us is seen again on the next call */
            ERR_clear_error();
            break;
        }
        return failed(ssl, r, want);
    }
    return (ssize_t)got;
}

/* Small queued segments (a frame per publish) are copied together and written
 * in one SSL_write: one TLS record and one syscall instead of one each. A
 * retry after WANT_WRITE starts from the same queue head, so it offers the
 * same bytes first (SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER allows the copy). */
#define TLS_GATHER 16384

int tls_pending(SSL *ssl) {
    /* with read-ahead, whole records may wait undecrypted in the buffer */
    return SSL_has_pending(ssl);
}

ssize_t tls_writev(SSL *ssl, const struct iovec *iov, int n, int *want) {
    size_t total = 0;
    char gather[TLS_GATHER];
    *want = TLS_WANT_NONE;
    for (int i = 0; i < n;) {
        const char *p = iov[i].iov_base;
        size_t len = iov[i].iov_len;
        int used = 1;
        if (len < TLS_GATHER && i + 1 < n && iov[i + 1].iov_len <= TLS_GATHER - len) {
            size_t g = 0;
            int j = i;
            for (; j < n && iov[j].iov_len <= TLS_GATHER - g; j++) {
                memcpy(gather + g, iov[j].iov_base, iov[j].iov_len);
                g += iov[j].iov_len;
            }
            p = gather;
            len = g;
            used = j - i;
        }
        while (len) {
            int chunk = len < INT_MAX ? (int)len : INT_MAX;
            int r = SSL_write(ssl, p, chunk);
            if (r <= 0) {
                if (total) {
                    ERR_clear_error();
                    return (ssize_t)total;
                }
                return failed(ssl, r, want);
            }
            total += (size_t)r;
            p += r;
            len -= (size_t)r;
        }
        i += used;
    }
    return (ssize_t)total;
}

/* ---- self-signed certificate -------------------------------------------------- */

static int write_pem(const char *path, int mode, EVP_PKEY *key, X509 *x) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!f) {
        log_error("--tls-self-signed: cannot write %s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    int ok = key ? PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL) : PEM_write_X509(f, x);
    if (fclose(f) != 0 || !ok) {
        log_error("--tls-self-signed: cannot write %s", path);
        return -1;
    }
    return 0;
}

static int make_self_signed(const char *cert, const char *key) {
    int rc = -1;
    EVP_PKEY *pk = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    if (!pk || !x)
        goto out;
    unsigned char rnd[16];
    if (RAND_bytes(rnd, sizeof rnd) != 1)
        goto out;
    rnd[0] &= 0x7f; /* a positive serial */
    BIGNUM *bn = BN_bin2bn(rnd, sizeof rnd, NULL);
    int serial_ok = bn && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
    BN_free(bn);
    if (!serial_ok)
        goto out;
    X509_set_version(x, 2);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 365L * 24 * 3600);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"switchboard", -1,
                               -1, 0);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"localhost", -1,
                               -1, 0);
    X509_set_issuer_name(x, name);
    X509_set_pubkey(x, pk);
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    static const struct {
        int nid;
        const char *value;
    } exts[] = {
        {NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1,IP:::1"},
        {NID_basic_constraints, "critical,CA:FALSE"},
        {NID_ext_key_usage, "serverAuth"},
    };
    for (size_t i = 0; i < sizeof exts / sizeof exts[0]; i++) {
        X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &v3, exts[i].nid, exts[i].value);
        if (!e || !X509_add_ext(x, e, -1)) {
            X509_EXTENSION_free(e);
            goto out;
        }
        X509_EXTENSION_free(e);
    }
    if (!X509_sign(x, pk, EVP_sha256()))
        goto out;
    if (write_pem(key, 0600, pk, NULL) < 0 || write_pem(cert, 0644, NULL, x) < 0)
        goto out;
    rc = 0;
out:
    if (rc < 0)
        log_error("--tls-self-signed: could not create a certificate: %s", ssl_reason());
    ERR_clear_error();
    X509_free(x);
    EVP_PKEY_free(pk);
    return rc;
}

int tls_self_signed(const char *dir, char *cert, char *key, size_t cap) {
    if ((size_t)snprintf(cert, cap, "%s/cert.pem", dir) >= cap ||
        (size_t)snprintf(key, cap, "%s/key.pem", dir) >= cap) {
        log_error("--tls-self-signed %s: path too long", dir);
        return -1;
    }
    if (access(cert, F_OK) == 0 && access(key, F_OK) == 0)
        return 0;
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        log_error("--tls-self-signed %s: %s", dir, strerror(errno));
        return -1;
    }
    if (make_self_signed(cert, key) < 0)
        return -1;
    log_info("TLS: wrote a self-signed certificate for localhost to %s", cert);
    return 0;
}
