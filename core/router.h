/* router.h — the application side of every connection: plain HTTP requests
 * (the metrics path, route scripts' request handlers, static files, and the
 * refusals) become responses, upgrades go to the route's script, and the
 * WebSocket events reach the route's handlers and pub/sub. conn.c sees only
 * the callback table. */
#ifndef SB_ROUTER_H
#define SB_ROUTER_H

struct sb_server;

/* Install the callbacks on srv (srv->conn_cb / conn_ud). */
void router_install(struct sb_server *srv);

#endif
