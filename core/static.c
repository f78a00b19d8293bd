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

/* The real path of name if it lies inside root (root + "/..."), else -1. */
static int inside(const char *root, const char *name, char *real) {
    if (!realpath(name, real))
        return -1;
    size_t rl = strlen(root);
    return strncmp(real, root, rl) == 0 && real[rl] == '/' ? 0 : -1; /* a symlink out */
}

/* Decode the request path and map it under public_dir. Returns 0 and the real
 * path of a regular file inside the folder, or -1. Every path opened, the
 * directory index included, is checked against the folder after symlinks. */
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
    if (inside(root, full, real) < 0 || stat(real, st) < 0)
        return -1;
    if (S_ISDIR(st->st_mode)) {
        /* "/docs" -> "/docs/index.html" without a listing */
        char index[PATH_MAX + 16];
        snprintf(index, sizeof index, "%s/index.html", real);
        if (inside(root, index, real) < 0 || stat(real, st) < 0)
            return -1;
    }
    if (!S_ISREG(st->st_mode))
        return -1;
    strcpy(out, real);
    return 0;
}

int static_serve(struct conn *c, const char *app_dir, const struct http_request *req,
                 struct conn_response *res) {
    char pub[PATH_MAX], file[PATH_MAX];
    struct stat st;
    snprintf(pub, sizeof pub, "%s/public", app_dir);
    if (resolve(pub, req, file, &st) < 0)
        return 0;
    int fd = open(file, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        if (fd >= 0)
            close(fd);
        return 0;
    }
    (void)c;
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
            close(fd);
            /* 304 carries no body and no Content-Length of its own */
            if (asprintf(&res->headers, "Last-Modified: %s\r\n", lm) < 0) {
                res->headers = NULL;
                return 0;
            }
            res->status = 304;
            res->no_length = 1;
            return 304;
        }
    }
    if (asprintf(&res->headers,
                 "Content-Type: %s\r\nLast-Modified: %s\r\nCache-Control: no-cache\r\n"
                 "X-Content-Type-Options: nosniff\r\n",
                 static_mime_type(file), lm) < 0) {
        res->headers = NULL;
        close(fd);
        return 0;
    }
    res->status = 200;
    res->file_fd = fd;
    res->file_off = 0;
    res->file_len = (uint64_t)st.st_size;
    return 200;
}
