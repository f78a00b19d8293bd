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

/* The header's value as a C string in buf (cap bytes), or NULL. */
static const char *header_value(const struct http_request *req, const char *name, char *buf,
                                size_t cap) {
    const struct http_header *h = http_find_header(req, name);
    if (!h || h->value_len >= cap)
        return NULL;
    memcpy(buf, h->value, h->value_len);
    buf[h->value_len] = 0;
    return buf;
}

/* If-None-Match: does the list name our tag (weak comparison) or "*"? */
static int etag_listed(const char *list, const char *etag) {
    const char *bare = etag + 2; /* without W/ */
    size_t bl = strlen(bare);
    for (const char *p = list; *p;) {
        p += strspn(p, " \t,");
        if (!*p)
            break;
        size_t n = strcspn(p, ",");
        size_t m = n;
        while (m && (p[m - 1] == ' ' || p[m - 1] == '\t'))
            m--;
        const char *t = p;
        if (m == 1 && *t == '*')
            return 1;
        if (m > 2 && t[0] == 'W' && t[1] == '/') {
            t += 2;
            m -= 2;
        }
        if (m == bl && memcmp(t, bare, bl) == 0)
            return 1;
        p += n;
    }
    return 0;
}

/* One byte range of a file of size bytes: "bytes=a-b", "bytes=a-", "bytes=-n".
 * Returns 1 with [*from, *from + *len), 0 to send the whole file (no range, a
 * list of ranges, a form we do not take), -1 when it cannot be satisfied. */
static int parse_range(const char *v, uint64_t size, uint64_t *from, uint64_t *len) {
    if (strncmp(v, "bytes=", 6) != 0 || strchr(v, ','))
        return 0;
    v += 6;
    char *end;
    if (*v == '-') {
        if (v[1] < '0' || v[1] > '9')
            return 0;
        unsigned long long n = strtoull(v + 1, &end, 10);
        if (*end)
            return 0;
        if (n == 0 || size == 0)
            return -1;
        *len = n < size ? n : size;
        *from = size - *len;
        return 1;
    }
    if (*v < '0' || *v > '9')
        return 0;
    unsigned long long a = strtoull(v, &end, 10), b = UINT64_MAX;
    if (*end != '-')
        return 0;
    if (end[1]) {
        if (end[1] < '0' || end[1] > '9')
            return 0;
        b = strtoull(end + 1, &end, 10);
        if (*end || b < a)
            return 0;
    }
    if (a >= size)
        return -1;
    if (b >= size)
        b = size - 1;
    *from = a;
    *len = b - a + 1;
    return 1;
}

int static_serve(struct conn *c, const char *app_dir, const struct http_request *req,
                 struct conn_response *res) {
    char pub[PATH_MAX], file[PATH_MAX];
    struct stat st;
    (void)c;
    snprintf(pub, sizeof pub, "%s/public", app_dir);
    if (resolve(pub, req, file, &st) < 0)
        return 0;
    int fd = open(file, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        if (fd >= 0)
            close(fd);
        return 0;
    }
    uint64_t size = (uint64_t)st.st_size;
    char lm[64], etag[64], v[256];
    http_date(st.st_mtime, lm, sizeof lm);
    snprintf(etag, sizeof etag, "W/\"%llx-%llx\"", (unsigned long long)size,
             (unsigned long long)st.st_mtime);
    /* If-None-Match wins over If-Modified-Since (RFC 9110 13.2.2) */
    int not_modified = 0;
    if (header_value(req, "If-None-Match", v, sizeof v)) {
        not_modified = etag_listed(v, etag);
    } else if (header_value(req, "If-Modified-Since", v, sizeof v)) {
        struct tm tm = {0};
        char *end = strptime(v, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        not_modified = end && !*end && timegm(&tm) >= st.st_mtime;
    }
    if (not_modified) {
        close(fd);
        /* 304 carries no body and no Content-Length of its own */
        if (asprintf(&res->headers, "ETag: %s\r\nLast-Modified: %s\r\n", etag, lm) < 0) {
            res->headers = NULL;
            return 0;
        }
        res->status = 304;
        res->no_length = 1;
        return 304;
    }
    uint64_t from = 0, len = size;
    int ranged = 0;
    int is_get = req->method_len == 3 && memcmp(req->method, "GET", 3) == 0;
    if (is_get && header_value(req, "Range", v, sizeof v)) {
        char ir[128];
        /* If-Range: the range only while the file is the one the client has */
        const char *cond = header_value(req, "If-Range", ir, sizeof ir);
        if (!cond || strcmp(cond, lm) == 0)
            ranged = parse_range(v, size, &from, &len);
    }
    if (ranged < 0) {
        close(fd);
        if (asprintf(&res->headers,
                     "Content-Range: bytes */%llu\r\nContent-Type: text/plain; charset=utf-8\r\n",
                     (unsigned long long)size) < 0) {
            res->headers = NULL;
            return 0;
        }
        res->status = 416;
        res->body = strdup("416 Range Not Satisfiable\n");
        res->body_len = res->body ? strlen(res->body) : 0;
        return 416;
    }
    char crange[96] = "";
    if (ranged)
        snprintf(crange, sizeof crange, "Content-Range: bytes %llu-%llu/%llu\r\n",
                 (unsigned long long)from, (unsigned long long)(from + len - 1),
                 (unsigned long long)size);
    if (asprintf(&res->headers,
                 "Content-Type: %s\r\nLast-Modified: %s\r\nETag: %s\r\nAccept-Ranges: bytes\r\n"
                 "%sCache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\n",
                 static_mime_type(file), lm, etag, crange) < 0) {
        res->headers = NULL;
        close(fd);
        return 0;
    }
    res->status = ranged ? 206 : 200;
    res->file_fd = fd;
    res->file_off = from;
    res->file_len = len;
    return res->status;
}
