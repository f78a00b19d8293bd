/* sbload — WebSocket load generator for switchboard (and any RFC 6455 server).
 * See usage() and bench/README.md. */
#include "sbload.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

static void usage(FILE *f) {
    fputs(
        "usage: sbload MODE --url ws://HOST:PORT/PATH [options]\n"
        "modes:\n"
        "  echo     -c C -d D -s S [--binary] [--raw] (-t SECONDS | -n MESSAGES)\n"
        "           C connections, D messages in flight each, S-byte messages; every echo\n"
        "           is verified. --raw: the peer is a plain TCP echo (no handshake), the\n"
        "           masked frames must come back unchanged.\n"
        "  --deflate (any mode) offers permessage-deflate and inflates compressed answers\n"
        "           (zlib, context takeover); messages are sent uncompressed.\n"
        "  fanout   -c SUBSCRIBERS -d D -s S [--binary] (-t SECONDS | -n MESSAGES)\n"
        "           subscribers connect to URL?role=sub, one publisher to URL?role=pub;\n"
        "           the route publishes each message from the publisher to every\n"
        "           subscriber (bench/fanout.lua). D published messages in flight.\n"
        "  connect  -c C [--pid SERVERPID] [--procs P] [--src N] [--hold SECONDS]\n"
        "           open C connections as fast as possible, hold them idle, report\n"
        "           handshakes/s and the server's resident memory per connection.\n"
        "options:\n"
        "  -c N           connections (echo, connect) or subscribers (fanout)   [100]\n"
        "  -d N           messages in flight per connection (fanout: in total)  [16]\n"
        "  -s BYTES       message size                                          [32]\n"
        "  -t SECONDS     measured duration                                     [5]\n"
        "  -n MESSAGES    stop after this many messages instead\n"
        "  --warmup S     run S seconds before measuring                        [0]\n"
        "  --timeout S    global deadline: fail if the run takes longer\n"
        "  --window N     handshakes in progress at once (per process)          [256]\n"
        "  --procs P      connect: processes to spread connections over  [C/16000+1]\n"
        "  --src N        connect: source addresses 127.0.0.2..  (0: none)  [C/16000+1]\n"
        "  --hold S       connect: seconds to hold the connections idle         [2]\n"
        "  --pid PID      the server's process: its CPU time per message (echo) or\n"
        "                 delivery (fanout) over the measured window; its VmRSS (connect)\n"
        "  --json         print one JSON object instead of text\n"
        "exit status: 0 ok, 1 protocol error / mismatch / unexpected close / deadline, 2 usage\n",
        f);
}

static long num(const char *opt, const char *v) {
    char *end;
    if (!v)
        sb_fail("%s needs a value", opt);
    long n = strtol(v, &end, 10);
    if (*end || n < 0) {
        fprintf(stderr, "sbload: %s: not a count: %s\n", opt, v);
        exit(2);
    }
    return n;
}

static double secs(const char *opt, const char *v) {
    char *end;
    if (!v)
        sb_fail("%s needs a value", opt);
    double d = strtod(v, &end);
    if (*end || d < 0) {
        fprintf(stderr, "sbload: %s: not a number of seconds: %s\n", opt, v);
        exit(2);
    }
    return d;
}

static void on_alarm(int sig) {
    (void)sig;
    static const char msg[] = "sbload: error: hard deadline passed, giving up\n";
    if (write(2, msg, sizeof msg - 1) < 0) {
    }
    _exit(1);
}

int main(int argc, char **argv) {
    struct opts *o = &G.o;
    o->conns = 100, o->depth = 16, o->size = 32, o->hold = 2, o->window = 256;
    o->procs = -1, o->nsrc = -1;
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    o->mode = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--url") || !strcmp(a, "-u"))
            o->url = v, i++;
        else if (!strcmp(a, "-c"))
            o->conns = num(a, v), i++;
        else if (!strcmp(a, "-d"))
            o->depth = num(a, v), i++;
        else if (!strcmp(a, "-s"))
            o->size = num(a, v), i++;
        else if (!strcmp(a, "-t"))
            o->seconds = secs(a, v), i++;
        else if (!strcmp(a, "-n"))
            o->messages = num(a, v), i++;
        else if (!strcmp(a, "--warmup"))
            o->warmup = secs(a, v), i++;
        else if (!strcmp(a, "--timeout"))
            o->timeout = secs(a, v), i++;
        else if (!strcmp(a, "--hold"))
            o->hold = secs(a, v), i++;
        else if (!strcmp(a, "--pid"))
            o->pid = num(a, v), i++;
        else if (!strcmp(a, "--procs"))
            o->procs = num(a, v), i++;
        else if (!strcmp(a, "--src"))
            o->nsrc = num(a, v), i++;
        else if (!strcmp(a, "--window"))
            o->window = num(a, v), i++;
        else if (!strcmp(a, "--binary"))
            o->binary = 1;
        else if (!strcmp(a, "--raw"))
            o->raw = 1;
        else if (!strcmp(a, "--deflate"))
            o->deflate = 1;
        else if (!strcmp(a, "--json"))
            o->json = 1;
        else {
            fprintf(stderr, "sbload: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (o->window < 1)
        o->window = 1;
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    int (*run)(void) = NULL;
    if (!strcmp(o->mode, "echo"))
        run = mode_echo;
    else if (!strcmp(o->mode, "fanout"))
        run = mode_fanout;
    else if (!strcmp(o->mode, "connect"))
        run = mode_connect;
    else {
        fprintf(stderr, "sbload: unknown mode %s\n", o->mode);
        usage(stderr);
        return 2;
    }
    if (o->raw && run != mode_echo)
        sb_fail("--raw is for echo only");
    /* Backstop for the loop's own deadline check (each mode sets o->timeout). */
    signal(SIGALRM, on_alarm);
    alarm(3600);
    return run();
}
