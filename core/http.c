/* http.c — incremental HTTP/1.1 request parser and response helpers.
 *
 * The parser follows picohttpparser's shape: a pure function over (buf, len)
 * that allocates nothing and hands back slices. It first looks for the end of
 * the head, scanning only the bytes that arrived since the last call, and
 * parses the head once it is complete. Lines must end in CRLF: a bare LF is
 * rejected as soon as it arrives, so a client cannot smuggle a second reading
 * of the head past a proxy that splits lines differently.
 */
#include "http.h"

#include <limits.h>
#include <string.h>

/* RFC 9110 tchar: the bytes allowed in a method and a header name. */
static const char tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1,
    ['+'] = 1, ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1,  ['|'] = 1,
    ['~'] = 1, ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1,  ['5'] = 1,
    ['6'] = 1, ['7'] = 1, ['8'] = 1, ['9'] = 1, ['A'] = 1, ['B'] = 1,  ['C'] = 1,
    ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1, ['I'] = 1,  ['J'] = 1,
    ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1,  ['Q'] = 1,
    ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1,  ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1, ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1,  ['e'] = 1,
    ['f'] = 1, ['g'] = 1, ['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1,  ['l'] = 1,
    ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1,  ['s'] = 1,
    ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1,  ['z'] = 1,
};

static int lower(int c) {
    return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

static int ieq(const char *a, size_t alen, const char *b) {
    size_t blen = strlen(b);
    if (alen != blen)
        return 0;
    for (size_t i = 0; i < alen; i++)
        if (lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
            return 0;
    return 1;
}

static int is_ows(char c) {
    return c == ' ' || c == '\t';
}

/* A byte allowed inside a field value: VCHAR, obs-text, SP, HT. */
static int is_value_byte(unsigned char c) {
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

/* Looks for the CRLFCRLF that ends the head among the bytes that arrived since
 * last_len. Returns the head length, 0 when it is not there yet, or -1 on a
 * bare LF. Only buf[0..limit) is searched. */
static long find_head_end(const char *buf, size_t limit, size_t last_len) {
    for (size_t i = last_len; i < limit; i++) {
        const char *lf = memchr(buf + i, '\n', limit - i);
        if (lf == NULL)
            break;
        i = (size_t)(lf - buf);
        if (i == 0 || buf[i - 1] != '\r')
            return -1;
        if (i >= 3 && buf[i - 2] == '\n' && buf[i - 3] == '\r')
            return (long)(i + 1);
    }
    return 0;
}

/* Parses "HTTP/d.d" at p (8 bytes available). Returns the major version or -1. */
static int parse_version(const char *p, int *minor) {
    if (memcmp(p, "HTTP/", 5) != 0 || p[5] < '0' || p[5] > '9' || p[6] != '.' || p[7] < '0' ||
        p[7] > '9')
        return -1;
    *minor = p[7] - '0';
    return p[5] - '0';
}

/* Splits the request-target into path and query. Origin-form ("/p?q"), "*" for
 * OPTIONS, and absolute-form ("http://host/p?q", whose path is taken) are
 * accepted. Returns 0 or -1. */
static int split_target(struct http_request *req) {
    const char *t = req->target, *end = t + req->target_len;
    const char *p = t;
    if (req->target_len == 1 && *t == '*') {
        if (req->method_len != 7 || memcmp(req->method, "OPTIONS", 7) != 0)
            return -1; /* methods are case-sensitive */
        req->path = t;
        req->path_len = 1;
        return 0;
    }
    if (*t != '/') {
        /* absolute-form: scheme "://" authority [path-abempty] ["?" query] */
        const char *s = t;
        while (s < end && ((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
                           (s > t && ((*s >= '0' && *s <= '9') || *s == '+' || *s == '-' ||
                                      *s == '.'))))
            s++;
        if (s == t || end - s < 3 || memcmp(s, "://", 3) != 0)
            return -1;
        const char *auth = s + 3;
        p = auth;
        while (p < end && *p != '/' && *p != '?' && *p != '#')
            p++;
        if (p == auth || (p < end && *p == '#'))
            return -1;
    }
    const char *q = memchr(p, '?', (size_t)(end - p));
    const char *path_end = q ? q : end;
    if (memchr(p, '#', (size_t)(end - p)))
        return -1; /* a fragment is never sent on the wire */
    if (path_end == p) {
        req->path = "/"; /* "http://host" or "http://host?q" */
        req->path_len = 1;
    } else {
        req->path = p;
        req->path_len = (size_t)(path_end - p);
    }
    if (q) {
        req->query = q + 1;
        req->query_len = (size_t)(end - q - 1);
    }
    return 0;
}

/* Parses the request line in buf[0..len) (no CRLF). Returns 0 or an HTTP status. */
static int parse_request_line(const char *buf, size_t len, struct http_request *req) {
    size_t i = 0;
    while (i < len && tchar[(unsigned char)buf[i]])
        i++;
    if (i == 0 || i == len || buf[i] != ' ')
        return 400;
    req->method = buf;
    req->method_len = i;
    size_t t0 = ++i;
    while (i < len && (unsigned char)buf[i] > 0x20 && (unsigned char)buf[i] < 0x7f)
        i++;
    if (i == t0 || i == len || buf[i] != ' ')
        return 400;
    req->target = buf + t0;
    req->target_len = i - t0;
    i++;
    if (len - i != 8)
        return 400;
    int major = parse_version(buf + i, &req->minor_version);
    if (major < 0)
        return 400;
    if (major != 1)
        return 505;
    if (split_target(req) != 0)
        return 400;
    return 0;
}

/* Parses a Content-Length value: 1*DIGIT that fits an int64. */
static int64_t parse_content_length(const char *v, size_t len) {
    if (len == 0 || len > 18)
        return -1; /* 18 digits always fit; longer values are absurd for us */
    int64_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        n = n * 10 + (v[i] - '0');
    }
    return n;
}

/* Parses one header line buf[0..len) (no CRLF) into h. Returns 0 or 400. */
static int parse_header_line(const char *buf, size_t len, struct http_header *h) {
    size_t i = 0;
    while (i < len && tchar[(unsigned char)buf[i]])
        i++;
    if (i == 0 || i == len || buf[i] != ':')
        return 400; /* empty name, no colon, or a bad byte (space) before it */
    h->name = buf;
    h->name_len = i;
    i++;
    for (size_t j = i; j < len; j++)
        if (!is_value_byte((unsigned char)buf[j]))
            return 400;
    while (i < len && is_ows(buf[i]))
        i++;
    size_t end = len;
    while (end > i && is_ows(buf[end - 1]))
        end--;
    h->value = buf + i;
    h->value_len = end - i;
    return 0;
}

static int token_list_has(const char *v, size_t len, const char *token) {
    size_t i = 0;
    while (i < len) {
        size_t s = i;
        while (i < len && v[i] != ',')
            i++;
        size_t e = i;
        while (s < e && is_ows(v[s]))
            s++;
        while (e > s && is_ows(v[e - 1]))
            e--;
        if (ieq(v + s, e - s, token))
            return 1;
        i++;
    }
    return 0;
}

/* Parses the complete head buf[0..head_len) (ends in CRLFCRLF, no bare LF). */
static int parse_head(const char *buf, size_t head_len, size_t max_headers,
                      struct http_request *req) {
    const char *end = buf + head_len;
    const char *eol = memchr(buf, '\r', head_len);
    if (eol == NULL || eol[1] != '\n')
        return 400; /* a CR without its LF */
    int st = parse_request_line(buf, (size_t)(eol - buf), req);
    if (st)
        return st;
    int close = 0, keep = 0, have_cl = 0, ws = 0;
    size_t hosts = 0;
    const char *p = eol + 2;
    while (p < end - 2) {
        if (is_ows(*p))
            return 400; /* obs-fold, or whitespace before the first header */
        eol = memchr(p, '\r', (size_t)(end - p));
        if (eol[1] != '\n')
            return 400;
        if (req->num_headers >= max_headers)
            return 431;
        struct http_header *h = &req->headers[req->num_headers];
        st = parse_header_line(p, (size_t)(eol - p), h);
        if (st)
            return st;
        req->num_headers++;
        if (ieq(h->name, h->name_len, "content-length")) {
            int64_t n = parse_content_length(h->value, h->value_len);
            if (n < 0 || (have_cl && n != req->content_length))
                return 400;
            req->content_length = n;
            have_cl = 1;
        } else if (ieq(h->name, h->name_len, "transfer-encoding")) {
            return 501;
        } else if (ieq(h->name, h->name_len, "connection")) {
            close |= token_list_has(h->value, h->value_len, "close");
            keep |= token_list_has(h->value, h->value_len, "keep-alive");
        } else if (ieq(h->name, h->name_len, "host")) {
            hosts++;
        } else if (ieq(h->name, h->name_len, "upgrade")) {
            ws |= token_list_has(h->value, h->value_len, "websocket");
        } else if (ieq(h->name, h->name_len, "sec-websocket-key")) {
            ws = 1;
        }
        p = eol + 2;
    }
    /* RFC 9112 3.2: an HTTP/1.1 request without Host, or any request with more
     * than one, is answered 400. A WebSocket upgrade (what handshake_is_upgrade
     * calls one) is left to handshake_validate, which answers the same 400 with
     * its reason. */
    if (!ws && (hosts > 1 || (hosts == 0 && req->minor_version >= 1)))
        return 400;
    req->keep_alive = !close && (req->minor_version >= 1 || keep);
    return 0;
}

int http_parse_request(const char *buf, size_t len, size_t last_len,
                       const struct http_limits *lim, struct http_request *req, int *status) {
    size_t max_bytes = lim && lim->max_header_bytes ? lim->max_header_bytes
                                                    : HTTP_DEFAULT_MAX_HEADER_BYTES;
    size_t max_headers = lim && lim->max_headers ? lim->max_headers : HTTP_DEFAULT_MAX_HEADERS;
    if (max_bytes > INT_MAX)
        max_bytes = INT_MAX; /* the head length is returned as an int */
    if (max_headers > req->headers_cap)
        max_headers = req->headers_cap;
    size_t limit = len < max_bytes ? len : max_bytes;
    if (last_len > limit)
        last_len = 0; /* not a resumption of this buffer: scan it all */
    long head_len = find_head_end(buf, limit, last_len);
    if (head_len < 0) {
        *status = 400;
        return HTTP_ERROR;
    }
    if (head_len == 0) {
        if (len < max_bytes)
            return HTTP_NEED_MORE;
        *status = 431;
        return HTTP_ERROR;
    }
    req->method = req->target = req->path = req->query = NULL;
    req->method_len = req->target_len = req->path_len = req->query_len = 0;
    req->minor_version = 0;
    req->num_headers = 0;
    req->content_length = -1;
    req->keep_alive = 0;
    int st = parse_head(buf, (size_t)head_len, max_headers, req);
    if (st) {
        *status = st;
        return HTTP_ERROR;
    }
    return (int)head_len;
}

const struct http_header *http_find_header(const struct http_request *req, const char *name) {
    for (size_t i = 0; i < req->num_headers; i++) {
        const struct http_header *h = &req->headers[i];
        if (ieq(h->name, h->name_len, name))
            return h;
    }
    return NULL;
}

int http_header_has_token(const struct http_request *req, const char *name, const char *token) {
    for (size_t i = 0; i < req->num_headers; i++) {
        const struct http_header *h = &req->headers[i];
        if (ieq(h->name, h->name_len, name) && token_list_has(h->value, h->value_len, token))
            return 1;
    }
    return 0;
}

const char *http_status_text(int status) {
    switch (status) {
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 416: return "Range Not Satisfiable";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

static int hexval(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

long http_percent_decode(char *dst, const char *src, size_t len, int plus_is_space) {
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char c = src[i];
        if (c == '%') {
            int hi, lo;
            if (len - i < 3 || (hi = hexval(src[i + 1])) < 0 || (lo = hexval(src[i + 2])) < 0)
                return -1;
            c = (char)(hi << 4 | lo);
            i += 2;
        } else if (c == '+' && plus_is_space) {
            c = ' ';
        }
        dst[o++] = c; /* o <= i, so decoding in place never overtakes the reader */
    }
    return (long)o;
}

void http_query_each(const char *q, size_t len,
                     void (*cb)(void *ud, const char *k, size_t kl, const char *v, size_t vl),
                     void *ud) {
    size_t i = 0;
    while (i < len) {
        size_t s = i;
        while (i < len && q[i] != '&')
            i++;
        if (i > s) {
            const char *eq = memchr(q + s, '=', i - s);
            if (eq)
                cb(ud, q + s, (size_t)(eq - (q + s)), eq + 1, (size_t)(q + i - eq - 1));
            else
                cb(ud, q + s, i - s, NULL, 0);
        }
        i++;
    }
}

/* Appends n bytes at *o if they fit. */
static int put(char *out, size_t cap, size_t *o, const char *s, size_t n) {
    if (cap - *o < n)
        return -1;
    memcpy(out + *o, s, n);
    *o += n;
    return 0;
}

/* Decimal digits of v (>= 0) into tmp, returns the length. */
static size_t udec(char tmp[24], unsigned long long v) {
    char rev[24];
    size_t n = 0;
    do {
        rev[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        tmp[i] = rev[n - 1 - i];
    return n;
}

long http_format_head(char *out, size_t cap, int status, const char *extra_headers,
                      long long content_length, int keep_alive) {
    if (status < 100 || status > 999)
        return -1;
    size_t o = 0;
    char num[24];
    const char *text = http_status_text(status);
    int bad = put(out, cap, &o, "HTTP/1.1 ", 9) || put(out, cap, &o, num, udec(num, status)) ||
              put(out, cap, &o, " ", 1) || put(out, cap, &o, text, strlen(text)) ||
              put(out, cap, &o, "\r\n", 2);
    if (!bad && extra_headers)
        bad = put(out, cap, &o, extra_headers, strlen(extra_headers));
    if (!bad && content_length >= 0)
        bad = put(out, cap, &o, "Content-Length: ", 16) ||
              put(out, cap, &o, num, udec(num, (unsigned long long)content_length)) ||
              put(out, cap, &o, "\r\n", 2);
    if (!bad && !keep_alive)
        bad = put(out, cap, &o, "Connection: close\r\n", 19);
    if (!bad)
        bad = put(out, cap, &o, "\r\n", 2);
    return bad ? -1 : (long)o;
}
