/* supervisor.h — `--workers N`: one supervisor process forks N workers, each a whole
 * server (its own loop, Lua state and listeners), restarts those that die and
 * forwards SIGHUP / SIGTERM / SIGINT to all of them. */
#ifndef SB_SUPERVISOR_H
#define SB_SUPERVISOR_H

#include "server.h"

/* Runs a worker: called in the forked child with cfg->worker set (1..workers) and
 * every cfg->listen resolved to a concrete port. Returns the worker's exit status. */
typedef int (*supervisor_worker_fn)(struct sb_config *cfg);

/* Resolves the listen addresses once (port 0 becomes the port the kernel picked, so
 * every worker binds the same one with SO_REUSEPORT), starts cfg->workers workers and
 * supervises them until a SIGTERM/SIGINT has stopped them all. Returns the
 * supervisor's exit status: 0 after a shutdown, 1 when a worker failed to start. */
int supervisor_run(const struct sb_config *cfg, supervisor_worker_fn fn);

/* Called by a worker once it listens: lets the supervisor announce the addresses.
 * A no-op outside a worker. */
void supervisor_worker_ready(void);

#endif
