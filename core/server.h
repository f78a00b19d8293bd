/* server.h — the server: configuration, listeners, the event loop, limits,
 * statistics and shutdown. One server per process, passed explicitly. */
#ifndef SB_SERVER_H
#define SB_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "loop.h"

/* Create the loop, listeners and Lua state. Returns 0, or -1 after logging why. */
int server_init(struct sb_server *srv, const struct sb_config *cfg);
/* --check: load the app in cfg->app_dir as server_init would, without a
 * listener or a watcher, and report what fails (script_check). Returns the
 * process exit status. */
int server_check(const struct sb_config *cfg, int strict);
/* Run until shut down. Returns the process exit status. */
int server_run(struct sb_server *srv);
void server_free(struct sb_server *srv);

/* Bind a listening socket for "ADDR:PORT" (port 0: the kernel picks) with SO_REUSEPORT,
 * and listen on it unless backlog < 0. Writes the bound address to name.
 * Returns the socket, or -1 after logging why. */
int server_bind(const char *spec, int backlog, char *name, size_t cap);


#endif
