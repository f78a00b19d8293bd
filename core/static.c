/* static.c — files under the app's public/ folder over plain HTTP. */
#define _GNU_SOURCE
#include "static.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "conn.h"
#include "http.h"

#define STATIC_MAX_FILE (64u << 20)

static const struct {
    const char *ext;
    const char *type;
} mime[] = {
    {"html", "text/html; charset=utf-8"},
    {"htm", "text/html; charset=utf-8"},
    {"css", "text/css; charset=utf-8"},
    {"js", "text/javascript; charset=utf-8"},
    {"mjs", "text/javascript; charset=utf-8"},
    {"json", "application/json"},
    {"map", "application/json"},
    {"txt", "text/plain; charset=utf-8"},
    {"md", "text/markdown; charset=utf-8"},
    {"xml", "application/xml"},
    {"svg", "image/svg+xml"},
    {"png", "image/png"},
    {"jpg", "image/jpeg"},
    {"jpeg", "image/jpeg"},
    {"gif", "image/gif"},
    {"webp", "image/webp"},
    {"avif", "image/avif"},
    {"ico", "image/x-icon"},
    {"woff", "font/woff"},
    {"woff2", "font/woff2"},
    {"ttf", "font/ttf"},
    {"otf", "font/otf"},
    {"wasm", "application/wasm"},
    {"pdf", "application/pdf"},
    {"mp3", "audio/mpeg"},
    {"mp4", "video/mp4"},
    {"webm", "video/webm"},
    {"ogg", "audio/ogg"},
    {"wav", "audio/wav"},
    {"webmanifest", "application/manifest+json"},
};

const char *static_mime_type(const char *name) {
    const char *dot = strrchr(name, '.');
    const char *slash = strrchr(name, '/');
    if (dot && (!slash || dot > slash)) {
        for (size_t i = 0; i < sizeof mime / sizeof mime[0]; i++)
            if (strcasecmp(dot + 1, mime[i].ext) == 0)
                return mime[i].type;
    }
    return "application/octet-stream";
}

static void http_date(time_t t, char *out, size_t cap) {
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, cap, "%a, %d %b %Y %H:%M:%S GMT", &tm);
}

/* Decode the request path and map it under public_dir. Returns 0 and the real
 * path of a regular file inside the folder, or -1. */
static int resolve(const char *public_dir, const struct http_request *req, char *out,
                   struct stat *st) {
    char path[PATH_MAX];
    if (req->path_len == 0 || req->path_len >= sizeof path - 16 || req->path[0] != '/')
        return -1;
    long n = http_percent_decode(path, req->path, req->path_len, 0);
    if (n <= 0 || memchr(path, 0, (size_t)n) || memchr(path, '\\', (size_t)n))
        return -1;
    path[n] = 0;
    /* no "." or ".." segments and no hidden files */
    for (char *p = path; (p = strchr(p, '/'));) {
        p++;
        if (*p == '.')
            return -1;
    }
    if (path[n - 1] == '/')
        strcat(path, "index.html");
    char root[PATH_MAX], full[PATH_MAX * 2], real[PATH_MAX];
    if (!realpath(public_dir, root))
        return -1;
    snprintf(full, sizeof full, "%s%s", root, path);
    if (!realpath(full, real))
        return -1;
    size_t rl = strlen(root);
    if (strncmp(real, root, rl) != 0 || real[rl] != '/') /* a symlink out */
        return -1;
    if (stat(real, st) < 0)
        return -1;
    if (S_ISDIR(st->st_mode)) {
        /* "/docs" -> "/docs/index.html" without a listing */
        size_t l = strlen(real);
        if (l + 12 > PATH_MAX)
            return -1;
        strcpy(real + l, "/index.html");
        if (stat(real, st) < 0)
            return -1;
    }
    if (!S_ISREG(st->st_mode))
        return -1;
    strcpy(out, real);
    return 0;
}

int static_serve(struct conn *c, const char *public_dir, const struct http_request *req) {
    char file[PATH_MAX];
    struct stat st;
    if (resolve(public_dir, req, file, &st) < 0)
        return 0;
    int head_only = req->method_len == 4 && memcmp(req->method, "HEAD", 4) == 0;
    char lm[64];
    http_date(st.st_mtime, lm, sizeof lm);
    const struct http_header *ims = http_find_header(req, "If-Modified-Since");
    if (ims && ims->value_len < 64) {
        char v[64];
        memcpy(v, ims->value, ims->value_len);
        v[ims->value_len] = 0;
        struct tm tm = {0};
        char *end = strptime(v, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        if (end && !*end && timegm(&tm) >= st.st_mtime) {
            char hdrs[160];
            snprintf(hdrs, sizeof hdrs, "Last-Modified: %s\r\n", lm);
            /* 304 carries no body and no Content-Length of its own */
            char head[512];
            long hl = http_format_head(head, sizeof head, 304, hdrs, -1, c->keep_alive);
            if (hl > 0)
                conn_write(c, head, (size_t)hl);
            return 304;
        }
    }
    if ((uint64_t)st.st_size > STATIC_MAX_FILE)
        return 0;
    char *body = NULL;
    size_t len = (size_t)st.st_size;
    if (!head_only && len) {
        int fd = open(file, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return 0;
        body = malloc(len);
        size_t got = 0;
        while (body && got < len) {
            ssize_t r = read(fd, body + got, len - got);
            if (r <= 0) {
                if (r < 0 && errno == EINTR)
                    continue;
                break;
            }
            got += (size_t)r;
        }
        close(fd);
        if (!body || got != len) {
            free(body);
            return 0;
        }
    }
    char hdrs[512];
    snprintf(hdrs, sizeof hdrs,
             "Content-Type: %s\r\nLast-Modified: %s\r\nCache-Control: no-cache\r\n"
             "X-Content-Type-Options: nosniff\r\n",
             static_mime_type(file), lm);
    conn_http_respond(c, 200, hdrs, body, len, head_only);
    free(body);
    return 200;
}
