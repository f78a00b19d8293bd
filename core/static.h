/* static.h — files under the app's public/ folder over plain HTTP. */
#ifndef SB_STATIC_H
#define SB_STATIC_H

struct conn;
struct http_request;
struct conn_response;

/* Answer req (GET or HEAD) from APP_DIR/public: fills res (the open file, sent
 * by conn in chunks, or a 304) and returns its status (200, 304), or returns 0
 * without filling anything when no regular file inside the folder matches (the
 * caller answers 404). Paths that try to leave the folder ("..", encoded or
 * not, symlinks out, a symlinked directory index) never match. */
int static_serve(struct conn *c, const char *app_dir, const struct http_request *req,
                 struct conn_response *res);

/* The Content-Type for a file name. */
const char *static_mime_type(const char *name);

#endif
