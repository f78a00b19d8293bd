#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MSG_MAX 4096
/* every message byte may become a 6-byte escape; the fields and the frame fit in the rest */
#define LINE_MAX (MSG_MAX * 6 + 2048)

static enum log_level min_level = LOG_INFO;
static enum log_format format = LOG_TEXT;
static const char *const names[] = {"debug", "info", "warn", "error"};
static char prefix[32];

void log_set_prefix(const char *p) {
    snprintf(prefix, sizeof prefix, "%s", p ? p : "");
}

void log_set_level(enum log_level lvl) {
    min_level = lvl;
}

enum log_level log_get_level(void) {
    return min_level;
}

int log_parse_level(const char *s) {
    for (int i = 0; i < 4; i++)
        if (strcmp(s, names[i]) == 0)
            return i;
    return -1;
}

void log_set_format(enum log_format fmt) {
    format = fmt;
}

int log_parse_format(const char *s) {
    if (strcmp(s, "text") == 0)
        return LOG_TEXT;
    if (strcmp(s, "json") == 0)
        return LOG_JSON;
    return -1;
}

/* Length of the well-formed UTF-8 sequence at p (at most n bytes), 0 if there is none:
 * no overlong forms, no surrogates, nothing past U+10FFFF. */
static size_t utf8_seq(const unsigned char *p, size_t n) {
    unsigned c = p[0];
    size_t len;
    unsigned min;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        len = 2, min = 0x80;
    else if (c >= 0xe0 && c <= 0xef)
        len = 3, min = 0x800;
    else if (c >= 0xf0 && c <= 0xf4)
        len = 4, min = 0x10000;
    else
        return 0;
    if (n < len)
        return 0;
    unsigned cp = c & (0x3f >> (len - 1));
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (p[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

struct out {
    char *p;
    size_t len, cap;
};

static void put(struct out *o, const char *s, size_t n) {
    if (n > o->cap - o->len)
        n = o->cap - o->len;
    memcpy(o->p + o->len, s, n);
    o->len += n;
}

/* s as a JSON string, quotes included; stops early rather than split an escape
 * when the line is nearly full (ROOM bytes stay free for what closes the line). */
#define ROOM 64
static void put_json(struct out *o, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    put(o, "\"", 1);
    while (p < end && o->cap - o->len > ROOM) {
        unsigned char c = *p;
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\', esc[1] = (char)c;
            put(o, esc, 2);
            p++;
        } else if (c == '\n') {
            put(o, "\\n", 2), p++;
        } else if (c == '\t') {
            put(o, "\\t", 2), p++;
        } else if (c == '\r') {
            put(o, "\\r", 2), p++;
        } else if (c < 0x20 || c == 0x7f) {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4], esc[5] = hex[c & 15];
            put(o, esc, 6);
            p++;
        } else {
            size_t l = utf8_seq(p, (size_t)(end - p));
            if (l) {
                put(o, (const char *)p, l);
                p += l;
            } else {
                put(o, "\\ufffd", 6); /* one replacement per bad byte */
                p++;
            }
        }
    }
    put(o, "\"", 1);
}

/* A field is left out rather than cut when the line has no room for it. */
static void put_field(struct out *o, const char *name, const char *v, size_t n) {
    if (o->cap - o->len < 2 * ROOM)
        return;
    put(o, ",\"", 2);
    put(o, name, strlen(name));
    put(o, "\":", 2);
    put_json(o, v, n);
}

static void put_number(struct out *o, const char *name, unsigned long long v) {
    char num[48];
    if (o->cap - o->len < 2 * ROOM)
        return;
    int n = snprintf(num, sizeof num, ",\"%s\":%llu", name, v);
    put(o, num, (size_t)n);
}

static void emit(enum log_level lvl, const struct log_fields *f, const char *fmt, va_list ap) {
    if (lvl < min_level)
        return;
    static char line[LINE_MAX];
    char msg[MSG_MAX], stamp[64];
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    size_t sl = strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(stamp + sl, sizeof stamp - sl, ".%03dZ", (int)(tv.tv_usec / 1000));
    int m = vsnprintf(msg, sizeof msg, fmt, ap);
    size_t ml = m < 0 ? 0 : (size_t)m < sizeof msg ? (size_t)m : sizeof msg - 1;
    struct out o = {line, 0, sizeof line - 1}; /* room for the newline */
    if (format == LOG_JSON) {
        put(&o, "{\"time\":\"", 9);
        put(&o, stamp, strlen(stamp));
        put(&o, "\",\"level\":\"", 11);
        put(&o, names[lvl], strlen(names[lvl]));
        put(&o, "\",\"msg\":", 8);
        put_json(&o, msg, ml);
        if (f && f->route)
            put_field(&o, "route", f->route, strlen(f->route));
        if (f && f->script)
            put_field(&o, "script", f->script, strlen(f->script));
        if (f && f->line > 0)
            put_number(&o, "line", (unsigned long long)f->line);
        if (f && f->conn)
            put_number(&o, "conn", (unsigned long long)f->conn);
        if (f && f->remote)
            put_field(&o, "remote", f->remote, strlen(f->remote));
        if (prefix[0]) { /* "[w1] " -> "w1" */
            const char *w = prefix + strspn(prefix, "[ ");
            put_field(&o, "worker", w, strcspn(w, "] "));
        }
        put(&o, "}", 1);
    } else {
        char head[128];
        int n = snprintf(head, sizeof head, "%s %-5s %s", stamp, names[lvl], prefix);
        put(&o, head, (size_t)n);
        put(&o, msg, ml);
    }
    line[o.len++] = '\n';
    /* one write per line so lines from several workers do not interleave */
    ssize_t w = write(2, line, o.len);
    (void)w;
}

void log_msg(enum log_level lvl, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    emit(lvl, NULL, fmt, ap);
    va_end(ap);
}

void log_with(enum log_level lvl, const struct log_fields *f, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    emit(lvl, f, fmt, ap);
    va_end(ap);
}

void log_conn(enum log_level lvl, uint64_t conn, const char *remote, const char *fmt, ...) {
    struct log_fields f = {.conn = conn, .remote = remote};
    va_list ap;
    va_start(ap, fmt);
    emit(lvl, &f, fmt, ap);
    va_end(ap);
}
