#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static enum log_level min_level = LOG_INFO;
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

void log_msg(enum log_level lvl, const char *fmt, ...) {
    if (lvl < min_level)
        return;
    char line[4096];
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    int n = (int)strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
    n += snprintf(line + n, sizeof line - (size_t)n, ".%03dZ %-5s %s", (int)(tv.tv_usec / 1000),
                  names[lvl], prefix);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        m = 0;
    n += m;
    if (n > (int)sizeof line - 2)
        n = (int)sizeof line - 2;
    line[n++] = '\n';
    /* one write per line so lines from several workers do not interleave */
    ssize_t w = write(2, line, (size_t)n);
    (void)w;
}
