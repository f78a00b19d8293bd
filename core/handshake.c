/* handshake.c — RFC 6455 §4.2 opening handshake on the server side. */
#include "handshake.h"

#include <ctype.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>


#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define WS_KEY_LEN 24 /* base64 of 16 bytes: 22 characters and "==" */

static int is_ows(char c) {
    return c == ' ' || c == '\t';
}

static int b64val(char c) {
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Is v the canonical base64 of exactly 16 bytes? The last character before
 * "==" carries 2 bits of data and 4 bits that an encoder always leaves zero. */
static int is_key(const char *v, size_t len) {
    if (len != WS_KEY_LEN || v[22] != '=' || v[23] != '=')
        return 0;
    for (size_t i = 0; i < 22; i++)
        if (b64val(v[i]) < 0)
            return 0;
    return (b64val(v[21]) & 0x0f) == 0;
}

static int name_is(const struct http_header *h, const char *name) {
    size_t n = strlen(name);
    if (h->name_len != n)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = h->name[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c + ('a' - 'A'));
        if (c != name[i])
            return 0;
    }
    return 1;
}

/* How many headers are named `name` (lower-case); *first gets the first. */
static size_t count_headers(const struct http_request *req, const char *name,
                            const struct http_header **first) {
    size_t n = 0;
    *first = NULL;
    for (size_t i = 0; i < req->num_headers; i++) {
        if (name_is(&req->headers[i], name)) {
            if (n++ == 0)
                *first = &req->headers[i];
        }
    }
    return n;
}

int handshake_is_upgrade(const struct http_request *req) {
    const struct http_header *h;
    /* a key means a WebSocket client, even one whose Upgrade header is wrong:
     * it gets the handshake's 400 with a reason, not a plain-GET answer */
    return http_header_has_token(req, "upgrade", "websocket") ||
           count_headers(req, "sec-websocket-key", &h) > 0;
}

int handshake_validate(const struct http_request *req, const char **key, size_t *key_len,
                       const char **reason) {
    const struct http_header *h;
    if (req->method_len != 3 || memcmp(req->method, "GET", 3) != 0) {
        *reason = "WebSocket upgrade needs GET";
        return 400;
    }
    if (req->minor_version < 1) {
        *reason = "WebSocket upgrade needs HTTP/1.1";
        return 400;
    }
    if (count_headers(req, "host", &h) != 1 || h->value_len == 0) {
        *reason = "Host header missing or repeated";
        return 400;
    }
    if (!http_header_has_token(req, "upgrade", "websocket")) {
        *reason = "Upgrade header must name websocket";
        return 400;
    }
    if (!http_header_has_token(req, "connection", "upgrade")) {
        *reason = "Connection header must name upgrade";
        return 400;
    }
    if (count_headers(req, "sec-websocket-key", &h) != 1 || !is_key(h->value, h->value_len)) {
        *reason = "Sec-WebSocket-Key missing, repeated or not 16 bytes of base64";
        return 400;
    }
    const struct http_header *ver;
    size_t nver = count_headers(req, "sec-websocket-version", &ver);
    int ok = nver > 0;
    for (size_t i = 0; ok && i < req->num_headers; i++) {
        const struct http_header *v = &req->headers[i];
        if (name_is(v, "sec-websocket-version") && (v->value_len != 2 || memcmp(v->value, "13", 2)))
            ok = 0;
    }
    if (!ok) {
        *reason = "Sec-WebSocket-Version must be 13";
        return 426;
    }
    *key = h->value;
    *key_len = h->value_len;
    *reason = NULL;
    return 0;
}

/* SHA-1 (FIPS 180-4 §6.1) of the key and the GUID, for the accept key only.
 * Not OpenSSL's: its digest fetch allocates per call and its first use pulls
 * ~2 MiB of libcrypto's pages into a plain server that needs no other part
 * of it. */
#define ROL32(x, n) ((uint32_t)((x) << (n)) | ((x) >> (32 - (n))))

static void sha1_block(uint32_t h[5], const uint8_t *p) {
    uint32_t w[80];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 80; i++)
        w[i] = ROL32(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20)
            f = (b & c) | (~b & d), k = 0x5A827999;
        else if (i < 40)
            f = b ^ c ^ d, k = 0x6ED9EBA1;
        else if (i < 60)
            f = (b & c) | (b & d) | (c & d), k = 0x8F1BBCDC;
        else
            f = b ^ c ^ d, k = 0xCA62C1D6;
        uint32_t t = ROL32(a, 5) + f + e + k + w[i];
        e = d, d = c, c = ROL32(b, 30), b = a, a = t;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e;
}

void handshake_accept_key(const char *key, size_t key_len, char out[HANDSHAKE_ACCEPT_LEN + 1]) {
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    const size_t glen = sizeof WS_GUID - 1;
    uint64_t total = (uint64_t)key_len + glen;
    uint8_t blk[64];
    size_t fill = 0;
    /* the message (key, then GUID), 0x80, zeros, its bit length: whole blocks */
    for (uint64_t i = 0; i < total; i++) {
        blk[fill++] = (uint8_t)(i < key_len ? key[i] : WS_GUID[i - key_len]);
        if (fill == 64) {
            sha1_block(h, blk);
            fill = 0;
        }
    }
    blk[fill++] = 0x80;
    if (fill > 56) {
        memset(blk + fill, 0, 64 - fill);
        sha1_block(h, blk);
        fill = 0;
    }
    memset(blk + fill, 0, 56 - fill);
    for (int i = 0; i < 8; i++)
        blk[56 + i] = (uint8_t)((total * 8) >> (56 - 8 * i));
    sha1_block(h, blk);
    uint8_t md[21];
    for (int i = 0; i < 20; i++)
        md[i] = (uint8_t)(h[i / 4] >> (24 - 8 * (i % 4)));
    md[20] = 0;
    /* base64 of 20 bytes: 6 groups of 3, then 2 bytes and one '=' (28 characters) */
    size_t o = 0;
    for (int i = 0; i < 21; i += 3) {
        uint32_t v = (uint32_t)md[i] << 16 | (uint32_t)md[i + 1] << 8 | (i + 2 < 21 ? md[i + 2] : 0);
        out[o++] = b64[v >> 18 & 63];
        out[o++] = b64[v >> 12 & 63];
        out[o++] = b64[v >> 6 & 63];
        out[o++] = i + 2 < 20 ? b64[v & 63] : '=';
    }
    out[HANDSHAKE_ACCEPT_LEN] = 0;
}

size_t handshake_each_protocol(const struct http_request *req,
                               void (*cb)(void *ud, const char *p, size_t len), void *ud) {
    size_t count = 0;
    for (size_t i = 0; i < req->num_headers; i++) {
        const struct http_header *h = &req->headers[i];
        if (!name_is(h, "sec-websocket-protocol"))
            continue;
        size_t j = 0, len = h->value_len;
        const char *v = h->value;
        while (j < len) {
            size_t s = j;
            while (j < len && v[j] != ',')
                j++;
            size_t e = j++;
            while (s < e && is_ows(v[s]))
                s++;
            while (e > s && is_ows(v[e - 1]))
                e--;
            if (e > s) {
                if (cb)
                    cb(ud, v + s, e - s);
                count++;
            }
        }
    }
    return count;
}

/* An origin or a list entry split as "scheme://host[:port]" (scheme optional
 * only in an entry). Returns 0, or -1 when it does not have that shape. */
struct origin_parts {
    const char *scheme, *host, *port;
    size_t scheme_len, host_len, port_len;
};

static int split_origin(const char *s, size_t len, struct origin_parts *o) {
    memset(o, 0, sizeof *o);
    const char *sep = NULL;
    for (size_t i = 0; i + 2 < len; i++)
        if (s[i] == ':' && s[i + 1] == '/' && s[i + 2] == '/') {
            sep = s + i;
            break;
        }
    if (sep) {
        o->scheme = s;
        o->scheme_len = (size_t)(sep - s);
        len -= o->scheme_len + 3;
        s = sep + 3;
        if (!o->scheme_len)
            return -1;
    }
    /* the host ends at the last ':' outside an IPv6 literal's brackets */
    size_t host_end = len;
    const char *close = len && s[0] == '[' ? memchr(s, ']', len) : NULL;
    size_t from = close ? (size_t)(close - s) : 0;
    for (size_t i = len; i > from; i--)
        if (s[i - 1] == ':') {
            host_end = i - 1;
            break;
        }
    o->host = s;
    o->host_len = host_end;
    if (host_end < len) {
        o->port = s + host_end + 1;
        o->port_len = len - host_end - 1;
        if (!o->port_len)
            return -1;
        for (size_t i = 0; i < o->port_len; i++)
            if (o->port[i] < '0' || o->port[i] > '9')
                return -1;
    }
    if (!o->host_len)
        return -1;
    /* a host name (an entry's may start with "*.") or a bracketed IPv6 literal:
     * what a browser serializes, nothing that could hide another host */
    const char *h = o->host;
    size_t hl = o->host_len, i = 0;
    if (h[0] == '[') {
        if (hl < 3 || h[hl - 1] != ']')
            return -1;
        for (i = 1; i < hl - 1; i++)
            if (!isxdigit((unsigned char)h[i]) && h[i] != ':' && h[i] != '.')
                return -1;
        return 0;
    }
    if (hl > 2 && h[0] == '*' && h[1] == '.')
        i = 2;
    for (; i < hl; i++)
        if (!isalnum((unsigned char)h[i]) && h[i] != '-' && h[i] != '.')
            return -1;
    return 0;
}

static int same_ci(const char *a, size_t al, const char *b, size_t bl) {
    return al == bl && strncasecmp(a, b, al) == 0;
}

static int entry_matches(const char *e, size_t el, const char *origin, size_t len) {
    if (same_ci(e, el, origin, len)) /* exact, including "null" */
        return 1;
    struct origin_parts want, got;
    if (split_origin(e, el, &want) < 0 || split_origin(origin, len, &got) < 0 || !got.scheme)
        return 0;
    if (want.scheme && !same_ci(want.scheme, want.scheme_len, got.scheme, got.scheme_len))
        return 0;
    if (!same_ci(want.port ? want.port : "", want.port_len, got.port ? got.port : "", got.port_len))
        return 0;
    if (want.host_len > 2 && want.host[0] == '*' && want.host[1] == '.') {
        /* "*.example.com": any subdomain (one label or more), not example.com */
        size_t suffix = want.host_len - 1; /* ".example.com" */
        return got.host_len > suffix &&
               same_ci(got.host + got.host_len - suffix, suffix, want.host + 1, suffix);
    }
    return same_ci(want.host, want.host_len, got.host, got.host_len);
}

/* The comma-separated element of list at *p, trimmed of spaces, as [*a, *b);
 * *p moves past its comma. Returns 0 after the last element (the empty one
 * after a trailing comma included), 1 while there is one. */
static int list_element(const char **p, const char **a, const char **b) {
    if (!*p)
        return 0;
    const char *end = strchr(*p, ',');
    if (!end)
        end = *p + strlen(*p);
    *a = *p;
    *b = end;
    while (*a < *b && is_ows(**a))
        (*a)++;
    while (*b > *a && is_ows((*b)[-1]))
        (*b)--;
    *p = *end ? end + 1 : NULL;
    return 1;
}

int handshake_origin_allowed(const char *list, const char *origin, size_t len) {
    const char *p = list, *a, *b;
    while (list_element(&p, &a, &b))
        if (b > a && entry_matches(a, (size_t)(b - a), origin, len))
            return 1;
    return 0;
}

int handshake_origin_list_valid(const char *list) {
    const char *p = list, *a, *b;
    while (list_element(&p, &a, &b)) { /* every element, the one after a last comma too */
        struct origin_parts o;
        if (b == a ||
            (!same_ci(a, (size_t)(b - a), "null", 4) && split_origin(a, (size_t)(b - a), &o) < 0))
            return 0;
    }
    return 1;
}
