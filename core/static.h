/* static.h — files under the app's public/ folder over plain HTTP. */
#ifndef SB_STATIC_H
#define SB_STATIC_H

struct conn;
struct http_request;

/* Serve req (GET or HEAD) from public_dir. Queues a complete response on c and
 * returns its status (200, 304), or returns 0 without queuing anything when no
 * regular file inside public_dir matches (the caller answers 404). Paths that
 * try to leave the folder ("..", encoded or not, symlinks out) never match. */
int static_serve(struct conn *c, const char *public_dir, const struct http_request *req);

/* The Content-Type for a file name. */
const char *static_mime_type(const char *name);

#endif
