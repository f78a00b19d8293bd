/* log.h — one line per event on stderr: "2026-11-25T17:40:21.123Z level message". */
#ifndef SB_LOG_H
#define SB_LOG_H

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

/* Lines below this level are dropped (default LOG_INFO). */
void log_set_level(enum log_level lvl);
enum log_level log_get_level(void);
/* Parse "debug" / "info" / "warn" / "error"; -1 if unknown. */
int log_parse_level(const char *s);

/* Text put before every message, e.g. "[w1] " in worker 1 (copied; NULL or "" for none). */
void log_set_prefix(const char *prefix);

void log_msg(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif
