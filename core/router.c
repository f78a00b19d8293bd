/* router.c — requests to responses, upgrades and WebSocket events to scripts. */
#define _GNU_SOURCE
#include "router.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "handshake.h"
#include "http.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"
#include "pubsub.h"
#include "script.h"
#include "static.h"

/* A text answer; close: the connection ends after it. */
static void text(struct conn_response *res, int status, const char *extra, const char *body,
                 int close) {
    static const char ctype[] = "Content-Type: text/plain; charset=utf-8\r\n";
    char line[128];
    if (!body) {
        snprintf(line, sizeof line, "%d %s\n", status, http_status_text(status));
        body = line;
    }
    res->status = status;
    res->close = (uint8_t)close;
    size_t el = extra ? strlen(extra) : 0;
    res->headers = malloc(sizeof ctype + el);
    if (res->headers) {
        memcpy(res->headers, extra ? extra : "", el);
        memcpy(res->headers + el, ctype, sizeof ctype);
    }
    res->body = strdup(body);
    res->body_len = res->body ? strlen(body) : 0;
    if (!res->headers || !res->body) {
        res->status = 500;
        res->close = 1;
    }
}

static void serve_metrics(struct sb_server *srv, struct conn *c, const char *path, int get_or_head,
                          struct conn_response *res) {
    if (c->metrics_only && strcmp(path, "/metrics") != 0) {
        text(res, 404, NULL, "metrics are at /metrics\n", 1);
        return;
    }
    if (!get_or_head) {
        text(res, 405, "Allow: GET, HEAD\r\n", NULL, 1);
        return;
    }
    res->body = metrics_format(srv, &res->body_len);
    res->headers = strdup("Content-Type: " METRICS_CONTENT_TYPE "\r\n");
    if (!res->body || !res->headers) {
        free(res->body);
        free(res->headers);
        res->body = res->headers = NULL;
        text(res, 500, NULL, NULL, 1);
        return;
    }
    res->status = 200;
}

static void on_request(void *ud, struct conn *c, const struct http_request *req, const char *path,
                       const char *body, size_t body_len, struct conn_response *res) {
    struct sb_server *srv = ud;
    int is_get = req->method_len == 3 && memcmp(req->method, "GET", 3) == 0;
    int is_head = req->method_len == 4 && memcmp(req->method, "HEAD", 4) == 0;
    if (c->metrics_only || (srv->cfg.metrics_path && strcmp(path, srv->cfg.metrics_path) == 0)) {
        serve_metrics(srv, c, path, is_get || is_head, res);
        return;
    }
    struct route *route = script_find_route(srv->script, path, strlen(path));
    if (route && route->gone)
        route = NULL;
    if (route && (route->has & ROUTE_REQUEST)) {
        struct http_answer ans = {0};
        if (script_request(srv->script, c, route, req, body, body_len, &ans)) {
            res->pending = 1; /* the script answers with conn_respond */
            return;
        }
        res->status = ans.status;
        res->headers = ans.headers;
        res->body = ans.body;
        res->body_len = ans.body_len;
        return; /* ans's strings now belong to res */
    }
    if ((is_get || is_head) && static_serve(c, srv->cfg.app_dir, req, res))
        return;
    if (route) {
        if (is_get || is_head)
            text(res, 426,
                 "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n",
                 "this route speaks WebSocket: send an Upgrade request\n", 1);
        else
            text(res, 405, "Allow: GET\r\n", NULL, 1);
        return;
    }
    if (!is_get && !is_head)
        text(res, 405, "Allow: GET, HEAD\r\n", NULL, 1);
    else
        text(res, 404, NULL, NULL, 1);
}

/* --allowed-origins: a browser's upgrade from a page on another origin is
 * refused before any script runs (cross-site WebSocket hijacking rides on the
 * victim's cookies). No Origin header: not a browser, let the script decide.
 * Returns 0 to go on, or 403. Logged, ORIGIN_LOGS_PER_SECOND at most: a page
 * hammering the server cannot flood the log. */
#define ORIGIN_LOGS_PER_SECOND 20
static int check_origin(struct sb_server *srv, struct conn *c, const struct http_request *req,
                        const char *path) {
    const struct http_header *h;
    if (!srv->cfg.allowed_origins || !(h = http_find_header(req, "Origin")))
        return 0;
    if (handshake_origin_allowed(srv->cfg.allowed_origins, h->value, h->value_len))
        return 0;
    if (srv->now - srv->origin_log_at >= 1.0) { /* a new second */
        if (srv->origin_log_skipped)
            log_warn("%llu more upgrades refused for their Origin (not logged)",
                     (unsigned long long)srv->origin_log_skipped);
        srv->origin_log_at = srv->now;
        srv->origin_log_n = srv->origin_log_skipped = 0;
    }
    if (srv->origin_log_n++ < ORIGIN_LOGS_PER_SECOND) {
        char rb[64], shown[201]; /* the client's bytes: printable, bounded */
        size_t n = h->value_len < sizeof shown - 1 ? h->value_len : sizeof shown - 1;
        for (size_t i = 0; i < n; i++)
            shown[i] = h->value[i] >= 0x20 && h->value[i] < 0x7f ? h->value[i] : '?';
        shown[n] = 0;
        log_warn("%s %s: upgrade refused (403): Origin '%s' is not in --allowed-origins",
                 conn_remote(c, rb, sizeof rb), path, shown);
    } else {
        srv->origin_log_skipped++;
    }
    return 403;
}

static void on_upgrade(void *ud, struct conn *c, const struct http_request *req, const char *path,
                       struct conn_upgrade *ans) {
    struct sb_server *srv = ud;
    struct route *r = script_find_route(srv->script, path, strlen(path));
    if (!r || r->gone) {
        ans->status = 404;
        return;
    }
    if ((ans->status = check_origin(srv, c, req, path)))
        return;
    c->route = r;
    ans->no_compression = (uint8_t)r->no_compression;
    if (!(r->has & ROUTE_UPGRADE))
        return;
    struct upgrade_answer ua = {0};
    if (script_upgrade(srv->script, c, req, &ua)) {
        ans->pending = 1; /* the script answers with conn_upgrade_done */
        return;
    }
    ans->status = ua.status;
    ans->headers = ua.headers;
    ans->body = ua.body;
    ans->body_len = ua.body_len;
    ans->protocol = ua.protocol;
}

static void on_open(void *ud, struct conn *c) {
    struct sb_server *srv = ud;
    c->route->ws_open++;
    c->route->ws_total++;
    if (c->route->has & ROUTE_OPEN)
        script_open(srv->script, c);
}

static void on_message(void *ud, struct conn *c, const uint8_t *data, size_t len, int binary) {
    struct sb_server *srv = ud;
    if (c->route->has & ROUTE_MESSAGE)
        script_message(srv->script, c, data, len, binary);
}

static void on_drain(void *ud, struct conn *c) {
    struct sb_server *srv = ud;
    /* a recovering subscription's replay goes on first (ws:subscribe since) */
    if (c->nsubs) {
        pubsub_replay_pump(srv->pubsub, c);
        if (c->over_high)
            return; /* the app's drain comes when it is all out */
    }
    script_drain(srv->script, c);
}

static void on_close(void *ud, struct conn *c, unsigned code, const char *reason) {
    struct sb_server *srv = ud;
    c->route->ws_open--;
    pubsub_unsubscribe_all(srv->pubsub, c);
    script_close(srv->script, c, code, reason);
}

static const struct conn_callbacks callbacks = {on_request, on_upgrade, on_open,
                                                on_message, on_drain,   on_close};

void router_install(struct sb_server *srv) {
    srv->conn_cb = &callbacks;
    srv->conn_ud = srv;
}
