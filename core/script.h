/* script.h — the Lua side: one lua_State, the route table, event dispatch,
 * the `ws` userdata and the `switchboard` module. No other module touches Lua. */
#ifndef SB_SCRIPT_H
#define SB_SCRIPT_H

#include <stddef.h>
#include <stdint.h>

struct sb_server;
struct conn;
struct http_request;

enum {
    ROUTE_UPGRADE = 1 << 0,
    ROUTE_OPEN = 1 << 1,
    ROUTE_MESSAGE = 1 << 2,
    ROUTE_CLOSE = 1 << 3,
    ROUTE_DRAIN = 1 << 4,
    ROUTE_REQUEST = 1 << 5,
};

/* A route: one script file. Routes are never freed while the server runs (a
 * deleted script's route is marked gone), so a conn may point at one. */
struct route {
    char *path; /* "/chat" */
    char *file; /* absolute or app-relative path of the script */
    int ref;    /* registry ref of the handler table, LUA_NOREF when not loaded */
    unsigned has; /* ROUTE_* bits of the loaded version */
    int gone;     /* script deleted: no new upgrades */
    int no_compression; /* the script returned `compression = false` */
    uint32_t version;
    uint64_t ws_open, ws_total; /* WebSocket connections open now / accepted (101) */
    struct route *next;
};

/* Answer of an upgrade handler. Strings are owned (malloc) and freed by
 * script_upgrade_free. */
struct upgrade_answer {
    int status;     /* 0: accept; else the HTTP status to refuse with */
    char *protocol; /* chosen subprotocol or NULL */
    char *headers;  /* extra response header lines "Name: value\r\n" or NULL */
    char *body;     /* refusal body or NULL */
    size_t body_len;
};

/* Answer of a request handler (owned; freed by script_response_free). */
struct http_answer {
    int status;
    char *headers;
    char *body;
    size_t body_len;
};

/* Create the Lua state and load every route under app_dir. Returns NULL (after
 * logging every failure) when no route loads. */
struct script *script_new(struct sb_server *srv, const char *app_dir);
void script_free(struct script *s);

/* The route for a decoded path, or NULL. */
struct route *script_find_route(struct script *s, const char *path, size_t len);

/* Handlers. Each runs in a coroutine under the instruction budget (per
 * resume) and memory cap; a handler that fails is logged with its traceback,
 * and: upgrade/request -> answer 500; open/message/drain -> the connection is
 * closed with 1011. A handler may wait (script_int.h): its connection is then
 * held (conn_hold) until it ends. script_upgrade and script_request return 1
 * when the answer is pending (given later with conn_upgrade_done /
 * conn_respond), else 0 with ans filled. */
int script_upgrade(struct script *s, struct conn *c, const struct http_request *req,
                    struct upgrade_answer *ans);
void script_upgrade_free(struct upgrade_answer *ans);
int script_request(struct script *s, struct conn *c, struct route *r,
                    const struct http_request *req, const char *body, size_t body_len,
                    struct http_answer *ans);
void script_response_free(struct http_answer *ans);
void script_open(struct script *s, struct conn *c);
void script_message(struct script *s, struct conn *c, const uint8_t *data, size_t len,
                    int binary);
void script_drain(struct script *s, struct conn *c);
/* Called exactly once for an opened connection, then the ws is invalidated
 * (when its close handler ends, if it waits). */
void script_close(struct script *s, struct conn *c, unsigned code, const char *reason);
/* End every handler call that waits, as failed (shutdown). */
void script_cancel_waits(struct script *s);
/* Handler calls of connections waiting now: shutdown waits for them (up to
 * --drain-timeout); timer functions that wait are ended with the rest. */
unsigned script_waiting(struct script *s);

/* 1 when path (absolute, as reload.c spells it) lies under the app dir and the
 * app layout rules keep it from being a route: a dot-file or dot-folder, a
 * folder named spec or test, a *_spec.lua, a match of APP_DIR/.sbignore. Never
 * for lib/ (modules) nor for paths outside the app dir. */
int script_is_ignored(struct script *s, const char *path, int is_dir);

/* Reload one script file (added, changed or deleted) or, with NULL, all (which
 * reads APP_DIR/.sbignore again). */
void script_reload(struct script *s, const char *file);
/* 1 if file compiles as Lua (nothing runs, nothing is logged), else 0: how the
 * watcher tells a finished save from a half-written file. */
int script_compiles(struct script *s, const char *file);

/* --check: load every route script and lib/ module under app_dir as the server
 * would (srv: its config, loop and pub/sub; no connection), print each error
 * and warning as "FILE:LINE: error|warning: message" and a summary on stdout.
 * Returns the exit status: 1 on an error (or, with strict, a warning), else 0. */
int script_check(struct sb_server *srv, const char *app_dir, int strict);

/* The folder that holds switchboard's own Lua modules (switchboard/testing.lua
 * and the editor types in switchboard/meta/), as `require` finds them: beside
 * the binary (../lua in a build tree, ../share/lua/5.4 when installed) or the
 * install prefix's. Writes its real path to out; returns 0, or -1 when none. */
int script_lua_dir(char *out, size_t cap);

/* Lua memory in use (bytes). */
size_t script_memory(struct script *s);
/* switchboard.subscribe subscriptions live now (0 for NULL). */
size_t script_subscriptions(struct script *s);
/* Presence entries of this process's connections, all topics (0 for NULL). */
size_t script_presence_entries(struct script *s);
/* Every route ever seen (a list through route->next; version 0: never loaded). */
struct route *script_routes(struct script *s);

#endif
