/* main.c — command line and start-up.
 *
 * Every option is one row of `options[]`: its name, where its value goes, how it is
 * parsed, its bounds and its help. The same rows drive getopt, validation and
 * --help, so a flag cannot be parsed without being documented or bounded. */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "handshake.h"
#include "http.h"
#include "log.h"
#include "redis.h"
#include "script.h"
#include "server.h"
#include "tls.h"
#include "supervisor.h"

#ifndef SB_VERSION
#define SB_VERSION "0.0.0"
#endif

#define KIB 1024ull
#define MIB (1024ull * KIB)
#define GIB (1024ull * MIB)
#define MAX_SECONDS 1000000 /* ~11.5 days: any timeout longer than this is a mistake */

/* Where the options land: the server's configuration plus what only main.c uses. */
struct options {
    struct sb_config cfg;
    const char *tls_dir;  /* --tls-self-signed */
    int help, version;
    int check, strict, init; /* --check [--strict], --init: commands, not a server */
};

struct opt;
/* Store arg for o into *opts. Returns 0, or 2 after printing a usage error. */
typedef int (*opt_setter)(struct options *opts, const struct opt *o, const char *arg);

struct opt {
    const char *name; /* long name without "--" */
    const char *arg;  /* its value's name in --help; NULL: a flag without a value */
    opt_setter set;
    size_t off, width; /* the field in struct options */
    uint64_t min, max; /* inclusive bounds of an integer or of seconds */
    const char *help;  /* '\n' continues on the next line */
    const char *def;   /* the default as --help shows it; NULL: none */
};

static int die_usage(const char *fmt, const char *arg) {
    fprintf(stderr, "switchboard: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nTry 'switchboard --help'.\n");
    return 2;
}

/* A size or count as people write it: 1000, 64k, 16m, 1g (powers of 1024, an optional
 * trailing b). Decimal digits only: no sign, no fraction, no exponent. Returns 0, 1 when
 * the value does not fit 64 bits, or -1 when it is not a size. */
static int parse_count(const char *s, uint64_t *out) {
    uint64_t v = 0;
    const char *p = s;
    if (*p < '0' || *p > '9')
        return -1;
    int big = 0;
    for (; *p >= '0' && *p <= '9'; p++) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            big = 1;
        else
            v = v * 10 + d;
    }
    uint64_t mult = 1;
    switch (*p) {
    case 'k':
    case 'K':
        mult = KIB, p++;
        break;
    case 'm':
    case 'M':
        mult = MIB, p++;
        break;
    case 'g':
    case 'G':
        mult = GIB, p++;
        break;
    }
    if (*p == 'b' || *p == 'B')
        p++;
    if (*p)
        return -1;
    if (big || v > UINT64_MAX / mult)
        return 1;
    *out = v * mult;
    return 0;
}

/* A bound as --help and errors show it: 1048576 -> "1m". */
static const char *fmt_count(uint64_t v, char *buf, size_t cap) {
    if (v >= GIB && v % GIB == 0 && v / GIB < 10000)
        snprintf(buf, cap, "%llug", (unsigned long long)(v / GIB));
    else if (v >= MIB && v % MIB == 0 && v / MIB < 10000)
        snprintf(buf, cap, "%llum", (unsigned long long)(v / MIB));
    else if (v >= KIB && v % KIB == 0 && v / KIB < 10000)
        snprintf(buf, cap, "%lluk", (unsigned long long)(v / KIB));
    else
        snprintf(buf, cap, "%llu", (unsigned long long)v);
    return buf;
}

static void *field(struct options *opts, const struct opt *o) {
    return (char *)opts + o->off;
}

static int range_error(const struct opt *o, const char *arg, const char *unit) {
    char lo[32], hi[32], fmt[160];
    snprintf(fmt, sizeof fmt, "--%s must be %s..%s%s: %%s", o->name,
             fmt_count(o->min, lo, sizeof lo), fmt_count(o->max, hi, sizeof hi), unit);
    return die_usage(fmt, arg);
}

/* An integer field of any width (size_t, uint64_t, unsigned, long, int): the
 * bounds keep the value inside the field (checked in check_table). */
static int set_count(struct options *opts, const struct opt *o, const char *arg) {
    uint64_t n;
    int r = parse_count(arg, &n);
    if (r < 0)
        return die_usage("not a size or count: '%s'", arg);
    if (r > 0 || n < o->min || n > o->max)
        return range_error(o, arg, "");
    if (o->width == 8) {
        memcpy(field(opts, o), &n, 8);
    } else {
        uint32_t v = (uint32_t)n;
        memcpy(field(opts, o), &v, 4);
    }
    return 0;
}

static int set_seconds(struct options *opts, const struct opt *o, const char *arg) {
    char *end;
    errno = 0;
    double v = strtod(arg, &end);
    if (end == arg || *end || errno || !isfinite(v) || v < 0)
        return die_usage("not a number of seconds: '%s'", arg);
    if (v < (double)o->min || v > (double)o->max)
        return range_error(o, arg, " seconds");
    *(double *)field(opts, o) = v;
    return 0;
}

static int set_string(struct options *opts, const struct opt *o, const char *arg) {
    *(const char **)field(opts, o) = arg;
    return 0;
}

static int set_true(struct options *opts, const struct opt *o, const char *arg) {
    *(int *)field(opts, o) = 1;
    return 0;
}

static int set_false(struct options *opts, const struct opt *o, const char *arg) {
    *(int *)field(opts, o) = 0;
    return 0;
}

static int set_listen(struct options *opts, const struct opt *o, const char *arg) {
    int tls = strcmp(o->name, "listen-tls") == 0;
    int *n = tls ? &opts->cfg.n_listen_tls : &opts->cfg.n_listen;
    if (*n == SB_MAX_LISTEN)
        return die_usage(tls ? "too many --listen-tls (at most 16): %s"
                             : "too many --listen (at most 16): %s",
                         arg);
    (tls ? opts->cfg.listen_tls : opts->cfg.listen)[(*n)++] = arg;
    return 0;
}

static int set_path(struct options *opts, const struct opt *o, const char *arg) {
    if (arg[0] != '/')
        return die_usage("--metrics-path must start with '/': %s", arg);
    return set_string(opts, o, arg);
}

static int set_origins(struct options *opts, const struct opt *o, const char *arg) {
    if (!handshake_origin_list_valid(arg))
        return die_usage("--allowed-origins takes origins like https://chat.example.com or"
                         " *.example.com, separated by commas: '%s'",
                         arg);
    return set_string(opts, o, arg);
}

static int set_slow_policy(struct options *opts, const struct opt *o, const char *arg) {
    if (strcmp(arg, "drop") == 0)
        opts->cfg.slow = SLOW_DROP;
    else if (strcmp(arg, "close") == 0)
        opts->cfg.slow = SLOW_CLOSE;
    else
        return die_usage("--slow-policy is drop or close, not '%s'", arg);
    return 0;
}

static int set_log_level(struct options *opts, const struct opt *o, const char *arg) {
    int lvl = log_parse_level(arg);
    if (lvl < 0)
        return die_usage("--log-level is debug, info, warn or error, not '%s'", arg);
    log_set_level((enum log_level)lvl);
    return 0;
}

static int set_log_format(struct options *opts, const struct opt *o, const char *arg) {
    int fmt = log_parse_format(arg);
    if (fmt < 0)
        return die_usage("--log-format is text or json, not '%s'", arg);
    log_set_format((enum log_format)fmt);
    return 0;
}

/* One value for both directions. */
static int set_window_bits(struct options *opts, const struct opt *o, const char *arg) {
    int rc = set_count(opts, o, arg);
    if (!rc)
        opts->cfg.deflate.client_max_window_bits = opts->cfg.deflate.server_max_window_bits;
    return rc;
}

#define F(member) offsetof(struct options, member), sizeof(((struct options *)0)->member)
#define NOF 0, 0

static const struct opt options[] = {
    {"listen", "ADDR:PORT", set_listen, NOF, 0, 0, "listen here (repeatable; [::1]:8080 for IPv6)",
     "127.0.0.1:8080"},
    {"max-header-bytes", "N", set_count, F(cfg.max_header_bytes), 64, MIB,
     "request head size limit (431)", "8192"},
    /* the loop's header array has max-headers + 1 fields and script_ws.c re-parses a
     * kept head with room for HTTP_MAX_HEADERS_LIMIT: the bound keeps them agreeing */
    {"max-headers", "N", set_count, F(cfg.max_headers), 1, HTTP_MAX_HEADERS_LIMIT,
     "request header count limit (431)", "100"},
    /* a request being read is held in a buffer with 32-bit lengths */
    {"max-body", "N", set_count, F(cfg.max_body), 0, GIB, "plain HTTP request body limit (413)",
     "1m"},
    {"max-message", "N", set_count, F(cfg.max_message), 1, 2 * GIB,
     "WebSocket message size limit (1009)", "16m"},
    {"out-high", "N", set_count, F(cfg.out_high), 1, 4 * GIB,
     "queued output where send() returns false", "1m"},
    {"out-low", "N", set_count, F(cfg.out_low), 0, 4 * GIB, "drain(ws) fires below this", "256k"},
    {"out-max", "N", set_count, F(cfg.out_max), 1, 4 * GIB,
     "hard output cap: close with 1008 (raised to --out-high)", "64m"},
    {"slow-policy", "drop|close", set_slow_policy, NOF, 0, 0,
     "subscriber past --out-high: drop its publishes, or\n"
     "close it with 1008 after --slow-grace",
     "drop"},
    {"slow-grace", "SECONDS", set_seconds, F(cfg.slow_grace), 0, MAX_SECONDS,
     "past --out-high this long: close (--slow-policy close)", "10"},
    {"handshake-timeout", "SECONDS", set_seconds, F(cfg.handshake_timeout), 0, MAX_SECONDS,
     "request head + upgrade", "10"},
    {"idle-timeout", "SECONDS", set_seconds, F(cfg.idle_timeout), 0, MAX_SECONDS,
     "close a WebSocket silent this long (0 = never)", "0"},
    {"ping-interval", "SECONDS", set_seconds, F(cfg.ping_interval), 0, MAX_SECONDS,
     "ping a silent peer (0 = never)", "30"},
    {"pong-timeout", "SECONDS", set_seconds, F(cfg.pong_timeout), 0, MAX_SECONDS,
     "drop a peer that does not answer a ping", "20"},
    {"close-timeout", "SECONDS", set_seconds, F(cfg.close_timeout), 0, MAX_SECONDS,
     "wait for the peer's close frame", "5"},
    {"handler-timeout", "SECONDS", set_seconds, F(cfg.handler_timeout), 0, MAX_SECONDS,
     "end a handler call that waits longer, as if it\nraised (0 = no limit)", "30"},
    {"drain-timeout", "SECONDS", set_seconds, F(cfg.drain_timeout), 0, MAX_SECONDS,
     "SIGTERM/SIGINT: wait this long for close frames and\n"
     "queued output, then drop the rest",
     "10"},
    {"metrics", "ADDR:PORT", set_string, F(cfg.metrics_listen), 0, 0,
     "serve Prometheus metrics on their own listener", NULL},
    {"metrics-path", "PATH", set_path, F(cfg.metrics_path), 0, 0,
     "serve them at PATH on the main listeners (e.g. /metrics)", NULL},
    {"max-connections", "N", set_count, F(cfg.max_connections), 0, 10000000,
     "refuse past this many (0 = fd limit)", "0"},
    {"lua-budget", "N", set_count, F(cfg.lua_budget), 1000, 1000000000000ull,
     "VM instructions per handler resume", "100000000"},
    {"lua-memory", "N", set_count, F(cfg.lua_memory), KIB, 64 * GIB, "Lua state memory cap",
     "512m"},
    {"no-watch", NULL, set_false, F(cfg.watch), 0, 0, "do not reload scripts when they change",
     NULL},
    {"reload-debounce", "SECONDS", set_seconds, F(cfg.reload_debounce), 0, 10,
     "a save reloads at once; a burst of saves reloads\n"
     "once it has been quiet this long",
     "0.05"},
    {"listen-tls", "ADDR:PORT", set_listen, NOF, 0, 0,
     "serve https:// and wss:// here (repeatable, beside --listen)", NULL},
    {"tls-cert", "FILE", set_string, F(cfg.tls_cert), 0, 0,
     "PEM certificate chain for --listen-tls (SIGHUP reloads it)", NULL},
    {"tls-key", "FILE", set_string, F(cfg.tls_key), 0, 0, "PEM private key for --tls-cert", NULL},
    {"tls-self-signed", "DIR", set_string, F(tls_dir), 0, 0,
     "use DIR/cert.pem + DIR/key.pem, creating a self-signed\n"
     "pair for localhost when missing; without --listen-tls\n"
     "it listens on 127.0.0.1:8443",
     NULL},
    {"no-compression", NULL, set_false, F(cfg.deflate.enabled), 0, 0,
     "never negotiate permessage-deflate", NULL},
    {"deflate-window-bits", "N", set_window_bits, F(cfg.deflate.server_max_window_bits), 8, 15,
     "zlib window for each direction", "15"},
    {"deflate-mem-level", "N", set_count, F(cfg.deflate.mem_level), 1, 9,
     "zlib memLevel of the compressor", "8"},
    {"deflate-level", "N", set_count, F(cfg.deflate.level), 0, 9,
     "zlib compression level (1 fastest)", "1"},
    {"deflate-min-size", "N", set_count, F(cfg.deflate.min_size), 0, 2 * GIB,
     "send messages shorter than this uncompressed", "64"},
    {"workers", "N", set_count, F(cfg.workers), 1, 256,
     "run N worker processes under a supervisor, sharing\n"
     "the listeners (SO_REUSEPORT)",
     "one process"},
    {"redis", "URL", set_string, F(cfg.redis_url), 0, 0,
     "publish across processes through Redis:\n"
     "redis://host[:port][/db] (the db is SELECTed)",
     NULL},
    {"redis-optional", NULL, set_true, F(cfg.redis_optional), 0, 0,
     "start local-only (with a warning) when Redis is down", NULL},
    {"redis-out-max", "N", set_count, F(cfg.redis_out_max), 64 * KIB, GIB,
     "bytes of publishes Redis has not answered yet; past it\n"
     "publishes stay local (counted, logged)",
     "16m"},
    {"history-max-bytes", "N", set_count, F(cfg.history_max_bytes), 0, 64 * GIB,
     "bytes of topic history kept in the process (every\n"
     "topic; the oldest go first), without --redis",
     "64m"},
    {"max-outbound", "N", set_count, F(cfg.max_outbound), 1, 1000000,
     "sb.http and sb.tcp connections open at once; past it\n"
     "they return nil, \"too many outbound connections\"",
     "4096"},
    {"max-response-body", "N", set_count, F(cfg.max_response_body), 0, GIB,
     "largest sb.http response body (opts.max_body may\n"
     "lower it) and sock:receive result",
     "16m"},
    {"redis-pool", "N", set_count, F(cfg.redis_pool), 0, 100000,
     "switchboard.redis: idle connections kept per URL for\n"
     "the next connect",
     "32"},
    {"redis-max-calls", "N", set_count, F(cfg.redis_max_calls), 1, 10000000,
     "switchboard.redis: calls and connects in flight; past\n"
     "it they return nil, \"too many calls\"",
     "10000"},
    {"subscribe-queue-max", "N", set_count, F(cfg.subscribe_queue_max), 64 * KIB, GIB,
     "bytes of messages waiting for switchboard.subscribe\n"
     "functions that are busy; past it they are dropped\n"
     "(counted, logged)",
     "16m"},
    {"presence-ttl", "SECONDS", set_seconds, F(cfg.presence_ttl), 1, 3600,
     "with --redis: each process writes its presence\n"
     "entries again every third of this; a dead process's\n"
     "entries are gone from sb.presence after it",
     "15"},
    {"allowed-origins", "LIST", set_origins, F(cfg.allowed_origins), 0, 0,
     "refuse (403) a browser's upgrade whose Origin is not\n"
     "listed: https://chat.example.com,*.example.com (an\n"
     "upgrade without Origin is not from a browser: allowed)",
     "any origin"},
    {"log-level", "LEVEL", set_log_level, NOF, 0, 0, "debug, info, warn, error", "info"},
    {"log-format", "text|json", set_log_format, NOF, 0, 0,
     "json: one object per line with time, level, msg and,\n"
     "where known, route, script, line, conn, remote",
     "text"},
    {"check", NULL, set_true, F(check), 0, 0,
     "do not serve: load every route script and lib/ module\n"
     "of APP_DIR as the server would (budgets on), print each\n"
     "error and warning as FILE:LINE, exit 0 clean, 1 on errors",
     NULL},
    {"strict", NULL, set_true, F(strict), 0, 0,
     "with --check: warnings fail too (unknown handler names,\n"
     "globals written at top level)",
     NULL},
    {"init", NULL, set_true, F(init), 0, 0,
     "do not serve: write APP_DIR/.busted and APP_DIR/.luarc.json\n"
     "so that busted and the editor (LuaLS) find switchboard's\n"
     "Lua modules (switchboard.testing) and types",
     NULL},
    {"help", NULL, set_true, F(help), 0, 0, "this text (-h)", NULL},
    {"version", NULL, set_true, F(version), 0, 0, "the version (-V)", NULL},
};

#define N_OPTIONS (sizeof options / sizeof options[0])
#define HELP_COL 28

static void print_help(FILE *f) {
    fputs("usage: switchboard [options] APP_DIR\n"
          "       switchboard --check [--strict] [--lua-budget N] [--lua-memory N] APP_DIR\n"
          "       switchboard --init APP_DIR\n"
          "\n"
          "Serves the Lua route scripts in APP_DIR over WebSocket (APP_DIR/chat.lua answers\n"
          "ws://host/chat) and the files in APP_DIR/public over plain HTTP.\n"
          "\n"
          "options:\n",
          f);
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const struct opt *o = &options[i];
        char left[64];
        int n = snprintf(left, sizeof left, "  --%s%s%s", o->name, o->arg ? " " : "",
                         o->arg ? o->arg : "");
        fprintf(f, "%s", left);
        if (n >= HELP_COL - 1)
            fprintf(f, "\n%*s", HELP_COL, "");
        else
            fprintf(f, "%*s", HELP_COL - n, "");
        for (const char *h = o->help; *h; h++) {
            fputc(*h, f);
            if (*h == '\n')
                fprintf(f, "%*s", HELP_COL, "");
        }
        char tail[96] = "", lo[32], hi[32];
        if (o->min != o->max)
            snprintf(tail, sizeof tail, "%s..%s%s", fmt_count(o->min, lo, sizeof lo),
                     fmt_count(o->max, hi, sizeof hi), o->set == set_seconds ? " s" : "");
        if (o->def)
            snprintf(tail + strlen(tail), sizeof tail - strlen(tail), "%sdefault %s",
                     tail[0] ? ", " : "", o->def);
        const char *last = strrchr(o->help, '\n');
        size_t col = HELP_COL + strlen(last ? last + 1 : o->help);
        if (tail[0] && col + 2 + strlen(tail) > 96)
            fprintf(f, "\n%*s%s", HELP_COL, "", tail);
        else if (tail[0])
            fprintf(f, "; %s", tail);
        fputc('\n', f);
    }
    fputs("\nSizes and counts are whole numbers with an optional suffix: 64k, 16m, 1g\n"
          "(powers of 1024). Seconds may have a fraction: 0.5.\n",
          f);
}

/* Our own bug, not bad input: a row whose bounds do not fit its field. */
static void check_table(void) {
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const struct opt *o = &options[i];
        int bad = o->set == set_count || o->set == set_window_bits
                      ? (o->width != 4 && o->width != 8) || o->min > o->max ||
                            (o->width == 4 && o->max > INT32_MAX)
                      : 0;
        if (bad) {
            fprintf(stderr, "switchboard: option table: --%s\n", o->name);
            abort();
        }
    }
}

/* One server process: the whole server, or one worker under --workers. */
static int run_server(struct sb_config *cfg) {
    struct sb_server srv;
    if (server_init(&srv, cfg) < 0) {
        server_free(&srv);
        return 1;
    }
    if (cfg->redis_url && !(srv.redis = redis_new(&srv, cfg->redis_url, cfg->redis_out_max))) {
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

/* Parse argv into opts. Returns -1 to go on, or the exit status. */
static int parse_args(int argc, char **argv, struct options *opts) {
    struct option lo[N_OPTIONS + 1];
    for (size_t i = 0; i < N_OPTIONS; i++)
        lo[i] = (struct option){options[i].name, options[i].arg ? required_argument : no_argument,
                                NULL, (int)(256 + i)};
    lo[N_OPTIONS] = (struct option){0, 0, 0, 0};
    opterr = 0;
    int o;
    while ((o = getopt_long(argc, argv, ":hV", lo, NULL)) != -1) {
        if (o == 'h') {
            opts->help = 1;
        } else if (o == 'V') {
            opts->version = 1;
        } else if (o >= 256 && o < 256 + (int)N_OPTIONS) {
            const struct opt *op = &options[o - 256];
            int rc = op->set(opts, op, optarg);
            if (rc)
                return rc;
        } else if (o == ':') {
            return die_usage("option '%s' needs a value", argv[optind - 1]);
        } else {
            return die_usage("unknown option '%s'", argv[optind - 1]);
        }
        if (opts->help) {
            print_help(stdout);
            return 0;
        }
        if (opts->version) {
            printf("switchboard %s\n", SB_VERSION);
            return 0;
        }
    }
    if (optind != argc - 1)
        return die_usage("%s", optind >= argc ? "missing APP_DIR" : "more than one APP_DIR");
    return -1;
}

/* Returns -1 when app_dir is a readable directory, else 2 after saying why. */
static int check_app_dir(const char *app_dir) {
    struct stat st;
    errno = 0;
    if (stat(app_dir, &st) < 0 || !S_ISDIR(st.st_mode) || access(app_dir, R_OK | X_OK)) {
        fprintf(stderr, "switchboard: APP_DIR '%s' is not a readable directory%s%s\n", app_dir,
                errno ? ": " : "", errno ? strerror(errno) : "");
        return 2;
    }
    return -1;
}

/* What no single option can check. Returns -1 to go on, or the exit status. */
static int check_config(struct options *opts, const char *app_dir) {
    struct sb_config *cfg = &opts->cfg;
    if (cfg->out_low > cfg->out_high)
        return die_usage("%s", "--out-low must not exceed --out-high");
    if (cfg->out_max < cfg->out_high)
        cfg->out_max = cfg->out_high;
    cfg->app_dir = app_dir;
    int rc = check_app_dir(app_dir);
    if (rc >= 0)
        return rc;
    if (cfg->n_listen == 0)
        cfg->listen[cfg->n_listen++] = "127.0.0.1:8080";
    static char tls_cert[4096], tls_key[4096];
    if (opts->tls_dir) {
        if (cfg->tls_cert || cfg->tls_key)
            return die_usage("%s", "--tls-self-signed replaces --tls-cert and --tls-key");
        if (tls_self_signed(opts->tls_dir, tls_cert, tls_key, sizeof tls_cert) < 0)
            return 1;
        cfg->tls_cert = tls_cert;
        cfg->tls_key = tls_key;
        if (!cfg->n_listen_tls)
            cfg->listen_tls[cfg->n_listen_tls++] = "127.0.0.1:8443";
    }
    if (cfg->n_listen_tls && (!cfg->tls_cert || !cfg->tls_key))
        return die_usage("%s", "--listen-tls needs --tls-cert FILE and --tls-key FILE");
    if (!cfg->n_listen_tls && (cfg->tls_cert || cfg->tls_key))
        return die_usage("%s", "--tls-cert/--tls-key without --listen-tls ADDR:PORT");
    if (cfg->redis_url) {
        char err[512], host[256];
        int port, db;
        if (redis_parse_url(cfg->redis_url, host, sizeof host, &port, &db, err, sizeof err) < 0)
            return die_usage("%s", err);
        if (redis_probe(cfg->redis_url, err, sizeof err) < 0) {
            if (!cfg->redis_optional) {
                log_error("%s (--redis-optional starts without it)", err);
                return 1;
            }
            log_warn("%s: publishing locally only until it comes up (--redis-optional)", err);
        }
    }
    return -1;
}

/* Write dir/name with text unless a file is there that `marker` (its first
 * bytes) does not start: that one is the user's. Returns 0, or -1 after saying why. */
static int write_init_file(const char *dir, const char *name, const char *text,
                           const char *marker) {
    char path[PATH_MAX], head[128] = "";
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "r");
    if (f) {
        size_t n = fread(head, 1, sizeof head - 1, f);
        head[n] = 0;
        fclose(f);
        if (!marker || strncmp(head, marker, strlen(marker)) != 0) {
            printf("kept %s (yours): it should read\n%s", path, text);
            return 0;
        }
    }
    f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        fprintf(stderr, "switchboard: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    printf("wrote %s\n", path);
    return 0;
}

/* --init: the two files that let busted and LuaLS, run in the app folder, find
 * the Lua modules this binary ships (switchboard.testing, the ---@meta types). */
static int init_app(const char *app_dir) {
    char lua[PATH_MAX], esc[2 * PATH_MAX];
    if (script_lua_dir(lua, sizeof lua) < 0) {
        fprintf(stderr,
                "switchboard: cannot find switchboard/testing.lua beside this binary or in %s\n",
                SB_LUA_DIR);
        return 1;
    }
    size_t j = 0; /* for a Lua string and a JSON string alike */
    for (const char *p = lua; *p && j < sizeof esc - 2; p++) {
        if (*p == '"' || *p == '\\')
            esc[j++] = '\\';
        esc[j++] = *p;
    }
    esc[j] = 0;
    static const char busted_mark[] = "-- Written by `switchboard --init`";
    char busted[8 * PATH_MAX], luarc[8 * PATH_MAX];
    snprintf(busted, sizeof busted,
             "%s: busted, run in this folder, finds\n"
             "-- switchboard.testing and this app's lib/ modules, and runs every *_spec.lua\n"
             "-- under it. `switchboard --init .` rewrites it (after moving or reinstalling\n"
             "-- switchboard); delete this first line to keep your own edits.\n"
             "return {\n"
             "    _all = {\n"
             "        lua = \"lua5.4\",\n"
             "        ROOT = { \".\" },\n"
             "        lpath = \"%s/?.lua;%s/?/init.lua;lib/?.lua;lib/?/init.lua\",\n"
             "    },\n"
             "}\n",
             busted_mark, esc, esc);
    snprintf(luarc, sizeof luarc,
             "{\n"
             "    \"runtime.version\": \"Lua 5.4\",\n"
             "    \"workspace.library\": [\n"
             "        \"%s/switchboard/meta\",\n"
             "        \"${3rd}/busted/library\",\n"
             "        \"${3rd}/luassert/library\"\n"
             "    ],\n"
             "    \"workspace.ignoreDir\": [\"public\"],\n"
             "    \"workspace.checkThirdParty\": false\n"
             "}\n",
             esc);
    if (write_init_file(app_dir, ".busted", busted, busted_mark) < 0 ||
        write_init_file(app_dir, ".luarc.json", luarc, NULL) < 0)
        return 1;
    return 0;
}

int main(int argc, char **argv) {
    check_table();
    struct options opts = {0};
    config_defaults(&opts.cfg);
    int rc = parse_args(argc, argv, &opts);
    if (rc >= 0)
        return rc;
    if (opts.strict && !opts.check)
        return die_usage("%s", "--strict goes with --check");
    if (opts.check && opts.init)
        return die_usage("%s", "--check and --init are two commands: one at a time");
    if (opts.check || opts.init) {
        rc = check_app_dir(argv[optind]);
        if (rc >= 0)
            return rc;
        if (opts.init)
            return init_app(argv[optind]);
        size_t n = strlen(argv[optind]); /* reported paths read "app/chat.lua", not "app//" */
        while (n > 1 && argv[optind][n - 1] == '/')
            argv[optind][--n] = 0;
        opts.cfg.app_dir = argv[optind];
        if (log_get_level() == LOG_INFO) /* the report is on stdout: no start-up chatter */
            log_set_level(LOG_WARN);
        return server_check(&opts.cfg, opts.strict);
    }
    signal(SIGPIPE, SIG_IGN);
    rc = check_config(&opts, argv[optind]);
    if (rc >= 0)
        return rc;
    if (opts.cfg.workers)
        return supervisor_run(&opts.cfg, run_server);
    return run_server(&opts.cfg);
}
