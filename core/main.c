/* main.c — command line and start-up. */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "redis.h"
#include "server.h"
#include "tls.h"
#include "supervisor.h"

#ifndef SB_VERSION
#define SB_VERSION "0.0.0"
#endif

static const char usage[] =
    "usage: switchboard [options] APP_DIR\n"
    "\n"
    "Serves the Lua route scripts in APP_DIR over WebSocket (APP_DIR/chat.lua answers\n"
    "ws://host/chat) and the files in APP_DIR/public over plain HTTP.\n"
    "\n"
    "options:\n"
    "  --listen ADDR:PORT        listen here (repeatable; [::1]:8080 for IPv6)\n"
    "                            default 127.0.0.1:8080\n"
    "  --max-header-bytes N      request head size limit (431)          default 8192\n"
    "  --max-headers N           request header count limit (431)       default 100\n"
    "  --max-body N              plain HTTP request body limit (413)    default 1MiB\n"
    "  --max-message N           WebSocket message size limit (1009)    default 16MiB\n"
    "  --out-high N              queued output where send() returns false  default 1MiB\n"
    "  --out-low N               drain(ws) fires below this             default 256KiB\n"
    "  --out-max N               hard output cap: close with 1008       default 64MiB\n"
    "  --slow-policy drop|close  subscriber past --out-high: drop its publishes, or\n"
    "                            close it with 1008 after --slow-grace   default drop\n"
    "  --slow-grace SECONDS      default 10\n"
    "  --handshake-timeout SECONDS  request head + upgrade              default 10\n"
    "  --idle-timeout SECONDS    close a WebSocket silent this long (0 = never)  default 0\n"
    "  --ping-interval SECONDS   ping a silent peer (0 = never)          default 30\n"
    "  --pong-timeout SECONDS    drop a peer that does not answer a ping default 20\n"
    "  --close-timeout SECONDS   wait for the peer's close frame          default 5\n"
    "  --drain-timeout SECONDS   SIGTERM/SIGINT: wait this long for close frames and\n"
    "                            queued output, then drop the rest       default 10\n"
    "  --metrics ADDR:PORT       serve Prometheus metrics on their own listener\n"
    "  --metrics-path PATH       serve them at PATH on the main listeners (e.g. /metrics)\n"
    "  --max-connections N       refuse past this many (0 = fd limit)   default 0\n"
    "  --lua-budget N            VM instructions per handler call       default 100000000\n"
    "  --lua-memory N            Lua state memory cap                   default 512MiB\n"
    "  --no-watch                do not reload scripts when they change\n"
    "  --listen-tls ADDR:PORT    serve https:// and wss:// here (repeatable, beside --listen)\n"
    "  --tls-cert FILE           PEM certificate chain for --listen-tls (SIGHUP reloads it)\n"
    "  --tls-key FILE            PEM private key for --tls-cert\n"
    "  --tls-self-signed DIR     use DIR/cert.pem + DIR/key.pem, creating a self-signed\n"
    "                            pair for localhost when missing; without --listen-tls\n"
    "                            it listens on 127.0.0.1:8443\n"
    "  --no-compression          never negotiate permessage-deflate\n"
    "  --deflate-window-bits N   8..15: zlib window for each direction    default 15\n"
    "  --deflate-mem-level N     1..9: zlib memLevel of the compressor    default 8\n"
    "  --deflate-level N         0..9: zlib compression level (1 fastest) default 1\n"
    "  --deflate-min-size N      send messages shorter than this uncompressed  default 64\n"
    "  --workers N               run N worker processes under a supervisor, sharing\n"
    "                            the listeners (SO_REUSEPORT)             default 0 (one process)\n"
    "  --redis URL               publish across processes through Redis:\n"
    "                            redis://host:port[/db]\n"
    "  --redis-optional          start local-only (with a warning) when Redis is down\n"
    "  --log-level LEVEL         debug, info, warn, error               default info\n"
    "  -h, --help                this text\n"
    "  -V, --version             the version\n"
    "\n"
    "Sizes take a suffix: 64k, 16m, 1g (powers of 1024).\n";

static int die_usage(const char *fmt, const char *arg) {
    fprintf(stderr, "switchboard: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nTry 'switchboard --help'.\n");
    return 2;
}

/* Parse a size with an optional k/m/g suffix. Returns 0 or -1. */
static int parse_size(const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || v < 0 || !isfinite(v))
        return -1;
    double mult = 1;
    if (*end == 'k' || *end == 'K')
        mult = 1024, end++;
    else if (*end == 'm' || *end == 'M')
        mult = 1024 * 1024, end++;
    else if (*end == 'g' || *end == 'G')
        mult = 1024.0 * 1024 * 1024, end++;
    if (*end == 'b' || *end == 'B')
        end++;
    if (*end)
        return -1;
    *out = (uint64_t)(v * mult);
    return 0;
}

static int parse_seconds(const char *s, double *out) {
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || v < 0 || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

enum {
    OPT_LISTEN = 256,
    OPT_MAX_HEADER_BYTES,
    OPT_MAX_HEADERS,
    OPT_MAX_BODY,
    OPT_MAX_MESSAGE,
    OPT_OUT_HIGH,
    OPT_OUT_LOW,
    OPT_OUT_MAX,
    OPT_SLOW_POLICY,
    OPT_SLOW_GRACE,
    OPT_HANDSHAKE_TIMEOUT,
    OPT_IDLE_TIMEOUT,
    OPT_PING_INTERVAL,
    OPT_PONG_TIMEOUT,
    OPT_CLOSE_TIMEOUT,
    OPT_DRAIN_TIMEOUT,
    OPT_METRICS,
    OPT_METRICS_PATH,
    OPT_MAX_CONNECTIONS,
    OPT_LUA_BUDGET,
    OPT_LUA_MEMORY,
    OPT_NO_WATCH,
    OPT_LOG_LEVEL,
    OPT_LISTEN_TLS,
    OPT_TLS_CERT,
    OPT_TLS_KEY,
    OPT_TLS_SELF_SIGNED,
    OPT_NO_COMPRESSION,
    OPT_DEFLATE_WINDOW_BITS,
    OPT_DEFLATE_MEM_LEVEL,
    OPT_DEFLATE_LEVEL,
    OPT_DEFLATE_MIN_SIZE,
    OPT_WORKERS,
    OPT_REDIS,
    OPT_REDIS_OPTIONAL,
};

/* One server process: the whole server, or one worker under --workers. */
static int run_server(struct sb_config *cfg) {
    struct sb_server srv;
    if (server_init(&srv, cfg) < 0) {
        server_free(&srv);
        return 1;
    }
    if (cfg->redis_url && !(srv.redis = redis_new(&srv, cfg->redis_url))) {
        server_free(&srv);
        return 1;
    }
    supervisor_worker_ready();
    int rc = server_run(&srv);
    redis_free(srv.redis);
    srv.redis = NULL;
    server_free(&srv);
    return rc;
}

int main(int argc, char **argv) {
    static const struct option opts[] = {
        {"listen", required_argument, 0, OPT_LISTEN},
        {"max-header-bytes", required_argument, 0, OPT_MAX_HEADER_BYTES},
        {"max-headers", required_argument, 0, OPT_MAX_HEADERS},
        {"max-body", required_argument, 0, OPT_MAX_BODY},
        {"max-message", required_argument, 0, OPT_MAX_MESSAGE},
        {"out-high", required_argument, 0, OPT_OUT_HIGH},
        {"out-low", required_argument, 0, OPT_OUT_LOW},
        {"out-max", required_argument, 0, OPT_OUT_MAX},
        {"slow-policy", required_argument, 0, OPT_SLOW_POLICY},
        {"slow-grace", required_argument, 0, OPT_SLOW_GRACE},
        {"handshake-timeout", required_argument, 0, OPT_HANDSHAKE_TIMEOUT},
        {"idle-timeout", required_argument, 0, OPT_IDLE_TIMEOUT},
        {"ping-interval", required_argument, 0, OPT_PING_INTERVAL},
        {"pong-timeout", required_argument, 0, OPT_PONG_TIMEOUT},
        {"close-timeout", required_argument, 0, OPT_CLOSE_TIMEOUT},
        {"drain-timeout", required_argument, 0, OPT_DRAIN_TIMEOUT},
        {"metrics", required_argument, 0, OPT_METRICS},
        {"metrics-path", required_argument, 0, OPT_METRICS_PATH},
        {"max-connections", required_argument, 0, OPT_MAX_CONNECTIONS},
        {"lua-budget", required_argument, 0, OPT_LUA_BUDGET},
        {"lua-memory", required_argument, 0, OPT_LUA_MEMORY},
        {"no-watch", no_argument, 0, OPT_NO_WATCH},
        {"log-level", required_argument, 0, OPT_LOG_LEVEL},
        {"listen-tls", required_argument, 0, OPT_LISTEN_TLS},
        {"tls-cert", required_argument, 0, OPT_TLS_CERT},
        {"tls-key", required_argument, 0, OPT_TLS_KEY},
        {"tls-self-signed", required_argument, 0, OPT_TLS_SELF_SIGNED},
        {"no-compression", no_argument, 0, OPT_NO_COMPRESSION},
        {"deflate-window-bits", required_argument, 0, OPT_DEFLATE_WINDOW_BITS},
        {"deflate-mem-level", required_argument, 0, OPT_DEFLATE_MEM_LEVEL},
        {"deflate-level", required_argument, 0, OPT_DEFLATE_LEVEL},
        {"deflate-min-size", required_argument, 0, OPT_DEFLATE_MIN_SIZE},
        {"workers", required_argument, 0, OPT_WORKERS},
        {"redis", required_argument, 0, OPT_REDIS},
        {"redis-optional", no_argument, 0, OPT_REDIS_OPTIONAL},
        {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, 'V'},
        {0, 0, 0, 0},
    };
    struct sb_config cfg;
    config_defaults(&cfg);
    const char *tls_dir = NULL; /* --tls-self-signed */
    opterr = 0;
    int o;
    while ((o = getopt_long(argc, argv, ":hV", opts, NULL)) != -1) {
        uint64_t n;
        double d;
        switch (o) {
        case 'h':
            fputs(usage, stdout);
            return 0;
        case 'V':
            printf("switchboard %s\n", SB_VERSION);
            return 0;
        case OPT_LISTEN:
            if (cfg.n_listen == SB_MAX_LISTEN)
                return die_usage("too many --listen (at most 16): %s", optarg);
            cfg.listen[cfg.n_listen++] = optarg;
            break;
        case OPT_MAX_HEADER_BYTES:
        case OPT_MAX_HEADERS:
        case OPT_MAX_BODY:
        case OPT_MAX_MESSAGE:
        case OPT_OUT_HIGH:
        case OPT_OUT_LOW:
        case OPT_OUT_MAX:
        case OPT_MAX_CONNECTIONS:
        case OPT_LUA_BUDGET:
        case OPT_LUA_MEMORY:
            if (parse_size(optarg, &n) < 0)
                return die_usage("not a size or count: '%s'", optarg);
            if (o == OPT_MAX_HEADER_BYTES) {
                if (n < 64 || n > (1u << 20))
                    return die_usage("--max-header-bytes must be 64..1m: %s", optarg);
                cfg.max_header_bytes = n;
            } else if (o == OPT_MAX_HEADERS) {
                if (n < 1 || n > 1000)
                    return die_usage("--max-headers must be 1..1000: %s", optarg);
                cfg.max_headers = n;
            } else if (o == OPT_MAX_BODY) {
                cfg.max_body = n;
            } else if (o == OPT_MAX_MESSAGE) {
                if (n < 1 || n > (1ull << 31))
                    return die_usage("--max-message must be 1..2g: %s", optarg);
                cfg.max_message = n;
            } else if (o == OPT_OUT_HIGH) {
                cfg.out_high = n;
            } else if (o == OPT_OUT_LOW) {
                cfg.out_low = n;
            } else if (o == OPT_OUT_MAX) {
                cfg.out_max = n;
            } else if (o == OPT_MAX_CONNECTIONS) {
                cfg.max_connections = (unsigned)n;
            } else if (o == OPT_LUA_BUDGET) {
                cfg.lua_budget = (long)n;
            } else {
                cfg.lua_memory = n;
            }
            break;
        case OPT_SLOW_POLICY:
            if (strcmp(optarg, "drop") == 0)
                cfg.slow = SLOW_DROP;
            else if (strcmp(optarg, "close") == 0)
                cfg.slow = SLOW_CLOSE;
            else
                return die_usage("--slow-policy is drop or close, not '%s'", optarg);
            break;
        case OPT_SLOW_GRACE:
        case OPT_HANDSHAKE_TIMEOUT:
        case OPT_IDLE_TIMEOUT:
        case OPT_PING_INTERVAL:
        case OPT_PONG_TIMEOUT:
        case OPT_CLOSE_TIMEOUT:
        case OPT_DRAIN_TIMEOUT:
            if (parse_seconds(optarg, &d) < 0)
                return die_usage("not a number of seconds: '%s'", optarg);
            if (o == OPT_SLOW_GRACE)
                cfg.slow_grace = d;
            else if (o == OPT_HANDSHAKE_TIMEOUT)
                cfg.handshake_timeout = d;
            else if (o == OPT_IDLE_TIMEOUT)
                cfg.idle_timeout = d;
            else if (o == OPT_PING_INTERVAL)
                cfg.ping_interval = d;
            else if (o == OPT_PONG_TIMEOUT)
                cfg.pong_timeout = d;
            else if (o == OPT_DRAIN_TIMEOUT)
                cfg.drain_timeout = d;
            else
                cfg.close_timeout = d;
            break;
        case OPT_METRICS:
            cfg.metrics_listen = optarg;
            break;
        case OPT_METRICS_PATH:
            if (optarg[0] != '/')
                return die_usage("--metrics-path must start with '/': %s", optarg);
            cfg.metrics_path = optarg;
            break;
        case OPT_NO_WATCH:
            cfg.watch = 0;
            break;
        case OPT_LOG_LEVEL: {
            int lvl = log_parse_level(optarg);
            if (lvl < 0)
                return die_usage("--log-level is debug, info, warn or error, not '%s'", optarg);
            log_set_level((enum log_level)lvl);
            break;
        }
        case OPT_WORKERS:
            if (parse_size(optarg, &n) < 0 || n < 1 || n > 256)
                return die_usage("--workers must be 1..256: %s", optarg);
            cfg.workers = (unsigned)n;
            break;
        case OPT_REDIS:
            cfg.redis_url = optarg;
            break;
        case OPT_REDIS_OPTIONAL:
            cfg.redis_optional = 1;
            break;
        case OPT_LISTEN_TLS:
            if (cfg.n_listen_tls == SB_MAX_LISTEN)
                return die_usage("too many --listen-tls (at most 16): %s", optarg);
            cfg.listen_tls[cfg.n_listen_tls++] = optarg;
            break;
        case OPT_TLS_CERT:
            cfg.tls_cert = optarg;
            break;
        case OPT_TLS_KEY:
            cfg.tls_key = optarg;
            break;
        case OPT_TLS_SELF_SIGNED:
            tls_dir = optarg;
            break;
        case OPT_NO_COMPRESSION:
            cfg.deflate.enabled = 0;
            break;
        case OPT_DEFLATE_WINDOW_BITS:
        case OPT_DEFLATE_MEM_LEVEL:
        case OPT_DEFLATE_LEVEL:
        case OPT_DEFLATE_MIN_SIZE:
            if (parse_size(optarg, &n) < 0)
                return die_usage("not a size or count: '%s'", optarg);
            if (o == OPT_DEFLATE_WINDOW_BITS) {
                if (n < 8 || n > 15)
                    return die_usage("--deflate-window-bits must be 8..15: %s", optarg);
                cfg.deflate.server_max_window_bits = cfg.deflate.client_max_window_bits = (int)n;
            } else if (o == OPT_DEFLATE_MEM_LEVEL) {
                if (n < 1 || n > 9)
                    return die_usage("--deflate-mem-level must be 1..9: %s", optarg);
                cfg.deflate.mem_level = (int)n;
            } else if (o == OPT_DEFLATE_LEVEL) {
                if (n > 9)
                    return die_usage("--deflate-level must be 0..9: %s", optarg);
                cfg.deflate.level = (int)n;
            } else {
                cfg.deflate.min_size = n;
            }
            break;
        case ':':
            return die_usage("option '%s' needs a value", argv[optind - 1]);
        default:
            return die_usage("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind != argc - 1)
        return die_usage("%s", optind >= argc ? "missing APP_DIR" : "more than one APP_DIR");
    if (cfg.out_low > cfg.out_high)
        return die_usage("%s", "--out-low must not exceed --out-high");
    if (cfg.out_max < cfg.out_high)
        cfg.out_max = cfg.out_high;
    cfg.app_dir = argv[optind];
    struct stat st;
    if (stat(cfg.app_dir, &st) < 0 || !S_ISDIR(st.st_mode) || access(cfg.app_dir, R_OK | X_OK)) {
        fprintf(stderr, "switchboard: APP_DIR '%s' is not a readable directory%s%s\n", cfg.app_dir,
                errno ? ": " : "", errno ? strerror(errno) : "");
        return 2;
    }
    if (cfg.n_listen == 0)
        cfg.listen[cfg.n_listen++] = "127.0.0.1:8080";
    static char tls_cert[4096], tls_key[4096];
    if (tls_dir) {
        if (cfg.tls_cert || cfg.tls_key)
            return die_usage("%s", "--tls-self-signed replaces --tls-cert and --tls-key");
        if (tls_self_signed(tls_dir, tls_cert, tls_key, sizeof tls_cert) < 0)
            return 1;
        cfg.tls_cert = tls_cert;
        cfg.tls_key = tls_key;
        if (!cfg.n_listen_tls)
            cfg.listen_tls[cfg.n_listen_tls++] = "127.0.0.1:8443";
    }
    if (cfg.n_listen_tls && (!cfg.tls_cert || !cfg.tls_key))
        return die_usage("%s", "--listen-tls needs --tls-cert FILE and --tls-key FILE");
    if (!cfg.n_listen_tls && (cfg.tls_cert || cfg.tls_key))
        return die_usage("%s", "--tls-cert/--tls-key without --listen-tls ADDR:PORT");
    signal(SIGPIPE, SIG_IGN);
    if (cfg.redis_url) {
        char err[512];
        int port, db;
        char host[256];
        if (redis_parse_url(cfg.redis_url, host, sizeof host, &port, &db, err, sizeof err) < 0)
            return die_usage("%s", err);
        if (redis_probe(cfg.redis_url, err, sizeof err) < 0) {
            if (!cfg.redis_optional) {
                log_error("%s (--redis-optional starts without it)", err);
                return 1;
            }
            log_warn("%s: publishing locally only until it comes up (--redis-optional)", err);
        }
    }
    if (cfg.workers)
        return supervisor_run(&cfg, run_server);
    return run_server(&cfg);
}
