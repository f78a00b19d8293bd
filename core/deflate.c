/* deflate.c — permessage-deflate (RFC 7692) with zlib. See deflate.h. */
#include "deflate.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

/* ------------------------------------------------------------------------ */
/* Negotiation (RFC 7692 §5, §7.1) over the RFC 6455 §9.1 header grammar.   */

void deflate_config_default(struct deflate_config *cfg) {
    cfg->enabled = 1;
    cfg->server_max_window_bits = 15;
    cfg->client_max_window_bits = 15;
    cfg->mem_level = 8;
    cfg->level = 1; /* fastest: +50% echo throughput on incompressible text vs 6 */
    cfg->server_no_context_takeover = 0;
    cfg->client_no_context_takeover = 0;
    cfg->min_size = 64;
}

struct cursor {
    const char *p, *end;
};

static int is_tchar(unsigned char c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return 1;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static void skip_ows(struct cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t'))
        c->p++;
}

static size_t take_token(struct cursor *c, const char **tok) {
    *tok = c->p;
    while (c->p < c->end && is_tchar((unsigned char)*c->p))
        c->p++;
    return (size_t)(c->p - *tok);
}

/* A parameter value: token or quoted-string. The unescaped value goes into
 * buf (truncated past cap, *len is the full length). Returns 0 on a syntax
 * error. */
static int take_value(struct cursor *c, char *buf, size_t cap, size_t *len) {
    *len = 0;
    if (c->p < c->end && *c->p == '"') {
        c->p++;
        while (c->p < c->end && *c->p != '"') {
            unsigned char ch = (unsigned char)*c->p++;
            if (ch == '\\') {
                if (c->p == c->end)
                    return 0;
                ch = (unsigned char)*c->p++;
            }
            if (ch < 0x20 && ch != '\t')
                return 0;
            if (*len < cap)
                buf[*len] = (char)ch;
            (*len)++;
        }
        if (c->p == c->end)
            return 0;
        c->p++;
        return 1;
    }
    const char *tok;
    size_t n = take_token(c, &tok);
    if (n == 0)
        return 0;
    memcpy(buf, tok, n < cap ? n : cap);
    *len = n;
    return 1;
}

/* Skip the rest of a list element, honouring quoted strings. */
static void skip_element(struct cursor *c) {
    int quoted = 0;
    while (c->p < c->end) {
        char ch = *c->p;
        if (quoted && ch == '\\' && c->p + 1 < c->end) {
            c->p += 2;
            continue;
        }
        if (ch == '"')
            quoted = !quoted;
        else if (ch == ',' && !quoted)
            return;
        c->p++;
    }
}

static int name_is(const char *s, size_t n, const char *lit) {
    size_t l = strlen(lit);
    if (n != l)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char a = s[i];
        if (a >= 'A' && a <= 'Z')
            a = (char)(a - 'A' + 'a');
        if (a != lit[i])
            return 0;
    }
    return 1;
}

/* Window bits value: 1*DIGIT naming 8..15 without leading zeros (RFC 7692 §7.1.2.1,
 * §7.1.2.2); anything else makes the offer invalid, and it is declined. */
static int window_value(const char *v, size_t len) {
    if (len == 0 || len > 2 || v[0] == '0')
        return -1;
    int n = 0;
    for (size_t i = 0; i < len; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        n = n * 10 + (v[i] - '0');
    }
    return n >= 8 && n <= 15 ? n : -1;
}

struct offer {
    int snct, cnct; /* seen */
    int smwb;       /* 0 absent, else 8..15 */
    int cmwb;       /* 0 absent, -1 without value, else 8..15 */
};

enum { EL_OTHER, EL_BAD, EL_OFFER };

/* Parse one list element at c (up to the next top-level comma or the end).
 * EL_OFFER: a permessage-deflate offer with valid parameters in *o. */
static int parse_element(struct cursor *c, struct offer *o) {
    const char *name;
    size_t nlen = take_token(c, &name);
    if (nlen == 0)
        return EL_BAD;
    int ours = name_is(name, nlen, "permessage-deflate");
    int ok = 1;
    memset(o, 0, sizeof *o);
    for (;;) {
        skip_ows(c);
        if (c->p == c->end || *c->p == ',')
            break;
        if (*c->p != ';')
            return EL_BAD;
        c->p++;
        skip_ows(c);
        const char *pn;
        size_t pnlen = take_token(c, &pn);
        if (pnlen == 0)
            return EL_BAD;
        skip_ows(c);
        int has_value = 0;
        char v[8];
        size_t vlen = 0;
        if (c->p < c->end && *c->p == '=') {
            c->p++;
            skip_ows(c);
            if (!take_value(c, v, sizeof v, &vlen))
                return EL_BAD;
            has_value = 1;
        }
        if (!ours || !ok)
            continue; /* still parse the syntax to find the element's end */
        int bits = has_value ? window_value(v, vlen) : 0;
        if (name_is(pn, pnlen, "server_no_context_takeover")) {
            ok = !o->snct && !has_value;
            o->snct = 1;
        } else if (name_is(pn, pnlen, "client_no_context_takeover")) {
            ok = !o->cnct && !has_value;
            o->cnct = 1;
        } else if (name_is(pn, pnlen, "server_max_window_bits")) {
            ok = !o->smwb && has_value && bits > 0;
            o->smwb = bits;
        } else if (name_is(pn, pnlen, "client_max_window_bits")) {
            ok = !o->cmwb && (!has_value || bits > 0);
            o->cmwb = has_value ? bits : -1;
        } else {
            ok = 0;
        }
    }
    return ours && ok ? EL_OFFER : EL_OTHER;
}

static int clamp_bits(int b) {
    return b < 8 ? 8 : b > 15 ? 15 : b;
}

/* Every well-formed offer can be honoured: we can always reset our own
 * deflater, and any server window of 8..15 can be met (8 included: see
 * deflater_bits). So the first valid offer wins. */
static void agree(const struct deflate_config *cfg, const struct offer *o,
                  struct deflate_params *p) {
    int sbits = clamp_bits(cfg->server_max_window_bits);
    int cbits = clamp_bits(cfg->client_max_window_bits);
    memset(p, 0, sizeof *p);
    p->server_no_context_takeover = (uint8_t)(o->snct || cfg->server_no_context_takeover);
    /* Echo the client's own no-takeover hint: it lets us free the inflater
     * between messages (§7.1.1.2). */
    p->client_no_context_takeover = (uint8_t)(o->cnct || cfg->client_no_context_takeover);
    if (o->smwb) {
        /* §7.1.2.1: the answer must be present and not larger. */
        p->server_max_window_bits = (uint8_t)(o->smwb < sbits ? o->smwb : sbits);
        p->server_bits_declared = 1;
    } else {
        /* Say so only when we use less than the client must assume. */
        p->server_max_window_bits = (uint8_t)sbits;
        p->server_bits_declared = sbits < 15;
    }
    if (o->cmwb > 0) {
        p->client_max_window_bits = (uint8_t)(o->cmwb < cbits ? o->cmwb : cbits);
        p->client_bits_declared = 1;
    } else if (o->cmwb < 0) {
        p->client_max_window_bits = (uint8_t)cbits;
        p->client_bits_declared = cbits < 15;
    } else {
        /* §7.1.2.2: a client that did not offer the parameter may use up to
         * 15 bits whatever we prefer; we must not send it. */
        p->client_max_window_bits = 15;
    }
}

int deflate_negotiate(const struct deflate_config *cfg, const char *const *values,
                      const size_t *lens, size_t n, struct deflate_params *out,
                      char resp[DEFLATE_RESPONSE_MAX]) {
    if (!cfg->enabled)
        return 0;
    for (size_t i = 0; i < n; i++) {
        struct cursor c = {values[i], values[i] + lens[i]};
        while (c.p < c.end) {
            skip_ows(&c);
            if (c.p == c.end)
                break;
            if (*c.p == ',') { /* empty list element: ignored (RFC 7230 §7) */
                c.p++;
                continue;
            }
            struct offer o;
            int kind = parse_element(&c, &o);
            if (kind == EL_OFFER) {
                agree(cfg, &o, out);
                if (resp)
                    deflate_response(out, resp);
                return 1;
            }
            skip_element(&c); /* no-op unless the element was broken */
        }
    }
    return 0;
}

int deflate_negotiate1(const struct deflate_config *cfg, const char *value, size_t len,
                       struct deflate_params *out, char resp[DEFLATE_RESPONSE_MAX]) {
    return deflate_negotiate(cfg, &value, &len, 1, out, resp);
}

size_t deflate_response(const struct deflate_params *p, char resp[DEFLATE_RESPONSE_MAX]) {
    int n = snprintf(resp, DEFLATE_RESPONSE_MAX, "permessage-deflate%s%s",
                     p->server_no_context_takeover ? "; server_no_context_takeover" : "",
                     p->client_no_context_takeover ? "; client_no_context_takeover" : "");
    if (p->server_bits_declared)
        n += snprintf(resp + n, DEFLATE_RESPONSE_MAX - (size_t)n, "; server_max_window_bits=%d",
                      p->server_max_window_bits);
    if (p->client_bits_declared)
        n += snprintf(resp + n, DEFLATE_RESPONSE_MAX - (size_t)n, "; client_max_window_bits=%d",
                      p->client_max_window_bits);
    return (size_t)n;
}

/* ------------------------------------------------------------------------ */
/* zlib state, counted                                                       */

/* One direction: a live z_stream, or (live == 0) a parked window. */
struct deflate_side {
    z_stream zs;
    size_t *mem;   /* the owner's counter, charged by zalloc/zfree */
    uint8_t live;  /* zs initialised */
    uint8_t *dict; /* parked window (owned), dict_len bytes */
    uint32_t dict_len;
};

/* zalloc/zfree keep a size header so the owner's byte count stays exact. */
union zhdr {
    size_t size;
    max_align_t align;
};

static voidpf z_alloc(voidpf opaque, uInt items, uInt size) {
    struct deflate_side *s = opaque;
    size_t n = (size_t)items * size;
    union zhdr *h = malloc(sizeof *h + n);
    if (!h)
        return Z_NULL;
    h->size = n;
    *s->mem += n;
    return h + 1;
}

static void z_free(voidpf opaque, voidpf p) {
    struct deflate_side *s = opaque;
    if (!p)
        return;
    union zhdr *h = (union zhdr *)p - 1;
    *s->mem -= h->size;
    free(h);
}

static struct deflate_side *side_new(size_t *mem) {
    struct deflate_side *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->mem = mem;
    *mem += sizeof *s;
    s->zs.zalloc = z_alloc;
    s->zs.zfree = z_free;
    s->zs.opaque = s;
    return s;
}

static void side_unpark(struct deflate_side *s) {
    if (s->dict) {
        free(s->dict);
        *s->mem -= s->dict_len;
        s->dict = NULL;
        s->dict_len = 0;
    }
}

static void side_end(struct deflate_side *s, int inflater) {
    if (s->live) {
        if (inflater)
            inflateEnd(&s->zs);
        else
            deflateEnd(&s->zs);
        s->live = 0;
    }
}

static void side_free(struct deflate_side **sp, int inflater) {
    struct deflate_side *s = *sp;
    if (!s)
        return;
    side_end(s, inflater);
    side_unpark(s);
    *s->mem -= sizeof *s;
    free(s);
    *sp = NULL;
}

/* zlib refuses windowBits 8 for raw deflate. Its deflater never emits a
 * distance above w_size - MIN_LOOKAHEAD (512 - 262 = 250 at 9 bits), so a
 * 9-bit deflater only produces streams a 256-byte window decodes: we can
 * honour server_max_window_bits=8 and declare 8 truthfully. The spec checks
 * it by inflating 9-bit output with an 8-bit inflater. */
static int deflater_bits(int bits) {
    return bits < 9 ? 9 : bits;
}

static int deflater_start(struct deflate_side *s, const struct deflate_config *cfg, int bits) {
    int mem_level = cfg->mem_level < 1 ? 1 : cfg->mem_level > 9 ? 9 : cfg->mem_level;
    int level = cfg->level < -1 ? -1 : cfg->level > 9 ? 9 : cfg->level;
    if (deflateInit2(&s->zs, level, Z_DEFLATED, -deflater_bits(bits), mem_level,
                     Z_DEFAULT_STRATEGY) != Z_OK)
        return -1;
    s->live = 1;
    if (s->dict) {
        int rc = deflateSetDictionary(&s->zs, s->dict, s->dict_len);
        side_unpark(s);
        if (rc != Z_OK)
            return -1;
    }
    return 0;
}

static int inflater_start(struct deflate_side *s, int bits) {
    if (inflateInit2(&s->zs, -bits) != Z_OK)
        return -1;
    s->live = 1;
    if (s->dict) {
        int rc = inflateSetDictionary(&s->zs, s->dict, s->dict_len);
        side_unpark(s);
        if (rc != Z_OK)
            return -1;
    }
    return 0;
}

/* Park a live side as its window: the last up-to-2^bits bytes of history. */
static size_t side_park(struct deflate_side *s, int inflater, int bits) {
    if (!s || !s->live)
        return 0;
    size_t before = *s->mem;
    uint8_t *buf = malloc((size_t)1 << bits);
    uInt len = 0;
    int rc = Z_STREAM_ERROR;
    if (buf)
        rc = inflater ? inflateGetDictionary(&s->zs, buf, &len)
                      : deflateGetDictionary(&s->zs, buf, &len);
    if (rc != Z_OK) {
        free(buf);
        return 0; /* keep it live: still correct, only not smaller */
    }
    side_end(s, inflater);
    if (len > 0) {
        uint8_t *shrunk = realloc(buf, len);
        s->dict = shrunk ? shrunk : buf;
        s->dict_len = len;
        *s->mem += len;
    } else {
        free(buf);
    }
    return before > *s->mem ? before - *s->mem : 0;
}

/* ------------------------------------------------------------------------ */
/* Per-connection codec                                                      */

static const uint8_t TAIL[4] = {0x00, 0x00, 0xff, 0xff};

void deflate_init(struct ws_deflate *d, const struct deflate_config *cfg,
                  const struct deflate_params *p) {
    memset(d, 0, sizeof *d);
    d->cfg = cfg;
    d->p = *p;
}

void deflate_free(struct ws_deflate *d) {
    side_free(&d->rx, 1);
    side_free(&d->tx, 0);
}

int deflate_wants(const struct ws_deflate *d, size_t len) {
    return len >= d->cfg->min_size;
}

size_t deflate_trim(struct ws_deflate *d) {
    size_t freed = 0;
    if (d->rx)
        freed += side_park(d->rx, 1, d->p.client_max_window_bits);
    if (d->tx && d->tx_stale) {
        size_t before = d->mem;
        side_free(&d->tx, 0);
        d->tx_stale = 0;
        freed += before - d->mem;
    } else if (d->tx) {
        freed += side_park(d->tx, 0, deflater_bits(d->p.server_max_window_bits));
    }
    return freed;
}

static uInt chunk(size_t n) {
    return n > UINT_MAX ? UINT_MAX : (uInt)n;
}

/* After a final block (Z_STREAM_END) the payload may only hold the header
 * byte of the empty stored block the sender appended (§7.2.3.4: the RFC's
 * example ends "... 07 00 00"). With takeover the window carries over into a
 * fresh stream for the next message. */
static int inflate_after_final(struct ws_deflate *d, size_t left) {
    z_stream *zs = &d->rx->zs;
    if (left > 1 || (left == 1 && zs->next_in[0] != 0x00))
        return DEFLATE_ERR_DATA;
    if (d->p.client_no_context_takeover)
        return 0;
    size_t wsize = (size_t)1 << d->p.client_max_window_bits;
    uint8_t *win = malloc(wsize);
    uInt wlen = 0;
    if (!win || inflateGetDictionary(zs, win, &wlen) != Z_OK || inflateReset(zs) != Z_OK ||
        (wlen > 0 && inflateSetDictionary(zs, win, wlen) != Z_OK)) {
        free(win);
        return DEFLATE_ERR_INTERNAL;
    }
    free(win);
    return 0;
}

static int inflate_run(struct ws_deflate *d, const uint8_t *in, size_t len, size_t max_out,
                       uint8_t **out, size_t *out_len) {
    z_stream *zs = &d->rx->zs;
    size_t limit = max_out == SIZE_MAX ? SIZE_MAX : max_out + 1;
    size_t cap = len <= (SIZE_MAX - 256) / 4 ? len * 4 + 256 : limit;
    if (cap > limit)
        cap = limit;
    uint8_t *buf = malloc(cap ? cap : 1);
    if (!buf)
        return DEFLATE_ERR_INTERNAL;
    size_t produced = 0;
    size_t in_left = len; /* payload bytes not yet handed to zlib */
    int tail_fed = 0;
    int out_full = 0; /* the last call filled the buffer: zlib may hold more */
    int rc = 0;
    zs->next_in = (Bytef *)in;
    zs->avail_in = 0;
    for (;;) {
        if (zs->avail_in == 0) {
            if (in_left > 0) {
                zs->avail_in = chunk(in_left);
                in_left -= zs->avail_in;
            } else if (!tail_fed) {
                zs->next_in = (Bytef *)TAIL;
                zs->avail_in = sizeof TAIL;
                tail_fed = 1;
            } else if (!out_full) {
                break;
            }
        }
        if (produced == cap) {
            if (cap == limit) {
                rc = DEFLATE_ERR_TOO_BIG;
                break;
            }
            size_t ncap = cap <= limit / 2 ? cap * 2 : limit;
            uint8_t *nbuf = realloc(buf, ncap);
            if (!nbuf) {
                rc = DEFLATE_ERR_INTERNAL;
                break;
            }
            buf = nbuf;
            cap = ncap;
        }
        zs->next_out = buf + produced;
        zs->avail_out = chunk(cap - produced);
        uInt room = zs->avail_out;
        int zr = inflate(zs, Z_SYNC_FLUSH);
        produced += room - zs->avail_out;
        out_full = zs->avail_out == 0;
        if (produced > max_out) {
            rc = DEFLATE_ERR_TOO_BIG;
            break;
        }
        if (zr == Z_STREAM_END) {
            /* payload bytes left: what zlib did not take, unless it is in the tail */
            size_t left = tail_fed ? 0 : zs->avail_in + in_left;
            rc = inflate_after_final(d, left);
            tail_fed = 2;
            break;
        }
        if (zr == Z_MEM_ERROR) {
            rc = DEFLATE_ERR_INTERNAL;
            break;
        }
        if (zr != Z_OK && zr != Z_BUF_ERROR) {
            rc = DEFLATE_ERR_DATA; /* Z_DATA_ERROR, Z_NEED_DICT, Z_STREAM_ERROR */
            break;
        }
    }
    /* A whole message ends where its appended empty stored block ends, between
     * blocks (zlib sets 128 in data_type when it stopped there). Anything else
     * is a truncated message and would corrupt the next one under takeover. */
    if (rc == 0 && tail_fed == 1 && !(zs->data_type & 128))
        rc = DEFLATE_ERR_DATA;
    if (rc != 0) {
        free(buf);
        return rc;
    }
    if (produced == 0) {
        free(buf);
        buf = NULL;
    }
    *out = buf;
    *out_len = produced;
    return 0;
}

int deflate_inflate_message(struct ws_deflate *d, const uint8_t *in, size_t len, size_t max_out,
                            uint8_t **out, size_t *out_len) {
    *out = NULL;
    *out_len = 0;
    /* An empty payload is the empty message. Feeding 00 00 ff ff alone would
     * leave zlib waiting inside a stored-block header and break the next
     * message under takeover, so the inflater is not touched. */
    if (len == 0)
        return 0;
    if (!d->rx && !(d->rx = side_new(&d->mem)))
        return DEFLATE_ERR_INTERNAL;
    if (!d->rx->live && inflater_start(d->rx, d->p.client_max_window_bits) != 0) {
        side_free(&d->rx, 1);
        return DEFLATE_ERR_INTERNAL;
    }
    int rc = inflate_run(d, in, len, max_out, out, out_len);
    if (rc != 0 || d->p.client_no_context_takeover)
        side_free(&d->rx, 1);
    return rc;
}

/* Deflate in[0..len) with Z_SYNC_FLUSH into a fresh buffer after headroom
 * bytes, and drop the trailing 00 00 ff ff. */
static int deflate_run(z_stream *zs, const uint8_t *in, size_t len, size_t headroom, uint8_t **out,
                       size_t *out_len) {
    uLong bound = deflateBound(zs, len > ULONG_MAX ? ULONG_MAX : (uLong)len);
    size_t cap = headroom + (size_t)bound + 16;
    uint8_t *buf = malloc(cap);
    if (!buf)
        return DEFLATE_ERR_INTERNAL;
    size_t produced = headroom;
    size_t in_left = len;
    zs->next_in = (Bytef *)in;
    zs->avail_in = 0;
    for (;;) {
        if (zs->avail_in == 0 && in_left > 0) {
            zs->avail_in = chunk(in_left);
            in_left -= zs->avail_in;
        }
        if (produced == cap) {
            size_t ncap = cap * 2;
            uint8_t *nbuf = realloc(buf, ncap);
            if (!nbuf) {
                free(buf);
                return DEFLATE_ERR_INTERNAL;
            }
            buf = nbuf;
            cap = ncap;
        }
        int flush = in_left == 0 ? Z_SYNC_FLUSH : Z_NO_FLUSH;
        zs->next_out = buf + produced;
        zs->avail_out = chunk(cap - produced);
        uInt room = zs->avail_out;
        int zr = deflate(zs, flush);
        produced += room - zs->avail_out;
        if (zr != Z_OK && zr != Z_BUF_ERROR) {
            free(buf);
            return DEFLATE_ERR_INTERNAL;
        }
        /* Done once the flush completed with output room to spare. */
        if (flush == Z_SYNC_FLUSH && zs->avail_in == 0 && zs->avail_out != 0)
            break;
    }
    size_t n = produced - headroom;
    if (n < 4 || memcmp(buf + produced - 4, TAIL, 4) != 0) {
        free(buf);
        return DEFLATE_ERR_INTERNAL; /* cannot happen after Z_SYNC_FLUSH of input */
    }
    *out = buf;
    *out_len = n - 4;
    return 0;
}

/* §7.2.3.6: the empty message is one byte, the header bits of an empty stored
 * block. zlib would refuse a second flush with no input in between anyway. */
static int empty_payload(size_t headroom, uint8_t **out, size_t *out_len) {
    uint8_t *buf = malloc(headroom + 1);
    if (!buf)
        return DEFLATE_ERR_INTERNAL;
    buf[headroom] = 0x00;
    *out = buf;
    *out_len = 1;
    return 0;
}

int deflate_compress_message(struct ws_deflate *d, const uint8_t *in, size_t len, size_t headroom,
                             uint8_t **out, size_t *out_len) {
    *out = NULL;
    *out_len = 0;
    if (len == 0)
        return empty_payload(headroom, out, out_len);
    if (d->tx_stale) {
        side_free(&d->tx, 0);
        d->tx_stale = 0;
    }
    if (!d->tx && !(d->tx = side_new(&d->mem)))
        return DEFLATE_ERR_INTERNAL;
    if (!d->tx->live && deflater_start(d->tx, d->cfg, d->p.server_max_window_bits) != 0) {
        side_free(&d->tx, 0);
        return DEFLATE_ERR_INTERNAL;
    }
    int rc = deflate_run(&d->tx->zs, in, len, headroom, out, out_len);
    if (rc != 0 || d->p.server_no_context_takeover)
        side_free(&d->tx, 0);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Compress once, send to many                                               */

void deflate_shared_init(struct deflate_shared *s, const struct deflate_config *cfg) {
    memset(s, 0, sizeof *s);
    s->cfg = cfg;
}

void deflate_shared_free(struct deflate_shared *s) {
    for (int i = 0; i < 8; i++)
        side_free(&s->side[i], 0);
}

int deflate_shared_bits(const struct ws_deflate *d) {
    return deflater_bits(d->p.server_max_window_bits);
}

int deflate_shared_compress(struct deflate_shared *s, int window_bits, const uint8_t *in,
                            size_t len, size_t headroom, uint8_t **out, size_t *out_len) {
    *out = NULL;
    *out_len = 0;
    if (len == 0)
        return empty_payload(headroom, out, out_len);
    int bits = deflater_bits(clamp_bits(window_bits));
    struct deflate_side **sp = &s->side[bits - 8];
    if (!*sp && !(*sp = side_new(&s->mem)))
        return DEFLATE_ERR_INTERNAL;
    if (!(*sp)->live && deflater_start(*sp, s->cfg, bits) != 0) {
        side_free(sp, 0);
        return DEFLATE_ERR_INTERNAL;
    }
    /* Kept between messages (one per process and window size), reset after
     * each so no frame refers to another. */
    int rc = deflate_run(&(*sp)->zs, in, len, headroom, out, out_len);
    if (rc != 0 || deflateReset(&(*sp)->zs) != Z_OK) {
        side_free(sp, 0);
        if (rc == 0) {
            free(*out);
            *out = NULL;
            *out_len = 0;
        }
        return DEFLATE_ERR_INTERNAL;
    }
    return 0;
}

void deflate_note_shared(struct ws_deflate *d) {
    /* The client's inflater window now ends with the shared message; ours
     * does not. Referring back from our next message would land on the wrong
     * bytes, so that message starts from a fresh context: valid for a client
     * with takeover, which only ever looks back within what it received.
     * (Resetting lazily keeps fan-out O(1) per subscriber; feeding the
     * message into our history instead would cost O(len) each.) */
    if (!d->p.server_no_context_takeover && d->tx)
        d->tx_stale = 1;
}
