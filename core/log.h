/* log.h — one line per event on stderr. Text (the default):
 *   "2026-11-25T17:40:21.123Z level message"
 * or JSON (--log-format json), one object per line:
 *   {"time":"…","level":"info","msg":"…","route":"/chat","script":"/app/chat.lua","line":12,
 *    "conn":7,"remote":"127.0.0.1:5000","worker":"w1"}
 * where the fields after msg appear only when known. Strings are JSON-escaped;
 * bytes that are not UTF-8 become U+FFFD. */
#ifndef SB_LOG_H
#define SB_LOG_H

#include <stdint.h>

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };
enum log_format { LOG_TEXT, LOG_JSON };

/* Lines below this level are dropped (default LOG_INFO). */
void log_set_level(enum log_level lvl);
enum log_level log_get_level(void);
/* Parse "debug" / "info" / "warn" / "error"; -1 if unknown. */
int log_parse_level(const char *s);

void log_set_format(enum log_format fmt);
/* Parse "text" / "json"; -1 if unknown. */
int log_parse_format(const char *s);

/* Text put before every message, e.g. "[w1] " in worker 1 (copied; NULL or "" for none).
 * JSON lines carry it as "worker" without the brackets and spaces. */
void log_set_prefix(const char *prefix);

/* What a line is about, where known: NULL strings and zero numbers are left out.
 * The text format shows only the message, which names them as it sees fit. */
struct log_fields {
    const char *route;  /* URL path of the route */
    const char *script; /* file the line is about */
    int line;           /* line in script */
    uint64_t conn;      /* connection id (ids start at 1) */
    const char *remote; /* the peer, "addr:port" */
};

void log_msg(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* log_msg with fields (f may be NULL). */
void log_with(enum log_level lvl, const struct log_fields *f, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* A line about one connection. */
void log_conn(enum log_level lvl, uint64_t conn, const char *remote, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif
