/* supervisor.c — the `--workers N` process tree.
 *
 * Listening: the supervisor binds every --listen address once (without listening) to
 * resolve port 0 and to hold the port while a worker restarts; each worker then binds
 * its own socket to that concrete address with SO_REUSEPORT, so the kernel spreads new
 * connections over the workers by hash. The supervisor's socket never listens, so no
 * connection is queued on it.
 *
 * The supervisor has no event loop: signals arrive on a signalfd, and it polls that and
 * one pipe per starting worker (a byte on it means "listening"). */
#define _GNU_SOURCE
#include "supervisor.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"

#define MAX_WORKERS 256
#define BACKOFF_MIN 0.1  /* seconds before the first restart */
#define BACKOFF_MAX 10.0
#define STABLE_AFTER 5.0 /* a worker that ran this long restarts without backoff */

struct worker {
    pid_t pid;          /* 0: not running */
    int ready_fd;       /* read end of the readiness pipe while starting, else -1 */
    int ever_ready;     /* this slot has had a worker listening */
    unsigned fails;     /* quick deaths in a row: the backoff exponent */
    double started;     /* server_clock() at fork */
    double restart_at;  /* when to fork again (0: not scheduled) */
};

static int ready_wfd = -1; /* in a worker: write end of its readiness pipe */

void supervisor_worker_ready(void) {
    if (ready_wfd < 0)
        return;
    ssize_t w = write(ready_wfd, "r", 1);
    (void)w;
    close(ready_wfd);
    ready_wfd = -1;
}

struct sup {
    struct sb_config cfg; /* listen[] points at names[] */
    char names[SB_MAX_LISTEN][64];
    int hold_fd[SB_MAX_LISTEN];
    struct worker w[MAX_WORKERS];
    unsigned n;
    int sfd;           /* signalfd */
    sigset_t oldmask;  /* restored in the workers */
    int stopping;      /* SIGTERM/SIGINT received */
    int announced;     /* "listening on" logged */
    int status;        /* exit status */
    supervisor_worker_fn fn;
};

static void spawn(struct sup *s, unsigned i) {
    struct worker *w = &s->w[i];
    int p[2];
    w->restart_at = 0;
    if (pipe2(p, O_CLOEXEC) < 0) {
        log_error("worker w%u: pipe: %s", i + 1, strerror(errno));
        w->restart_at = server_clock() + BACKOFF_MAX;
        return;
    }
    pid_t ppid = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        log_error("worker w%u: fork: %s", i + 1, strerror(errno));
        close(p[0]);
        close(p[1]);
        w->restart_at = server_clock() + BACKOFF_MAX;
        return;
    }
    if (pid == 0) {
        /* the worker: drop everything of the supervisor's but the config */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != ppid)
            _exit(0);
        close(s->sfd);
        close(p[0]);
        for (unsigned j = 0; j < s->n; j++)
            if (s->w[j].ready_fd >= 0)
                close(s->w[j].ready_fd);
        for (int j = 0; j < s->cfg.n_listen; j++)
            close(s->hold_fd[j]);
        sigprocmask(SIG_SETMASK, &s->oldmask, NULL);
        ready_wfd = p[1];
        char prefix[16];
        snprintf(prefix, sizeof prefix, "[w%u] ", i + 1);
        log_set_prefix(prefix);
        struct sb_config cfg = s->cfg;
        cfg.worker = i + 1;
        exit(s->fn(&cfg));
    }
    close(p[1]);
    w->pid = pid;
    w->ready_fd = p[0];
    w->started = server_clock();
    log_info("worker w%u started (pid %d)", i + 1, (int)pid);
}

static void signal_all(struct sup *s, int sig) {
    for (unsigned i = 0; i < s->n; i++)
        if (s->w[i].pid)
            kill(s->w[i].pid, sig);
}

static unsigned running(const struct sup *s) {
    unsigned n = 0;
    for (unsigned i = 0; i < s->n; i++)
        n += s->w[i].pid != 0;
    return n;
}

static void on_exit_status(struct sup *s, pid_t pid, int st) {
    unsigned i;
    for (i = 0; i < s->n && s->w[i].pid != pid; i++)
        ;
    if (i == s->n)
        return;
    struct worker *w = &s->w[i];
    w->pid = 0;
    if (w->ready_fd >= 0) {
        close(w->ready_fd);
        w->ready_fd = -1;
    }
    char how[96];
    if (WIFSIGNALED(st))
        snprintf(how, sizeof how, "killed by signal %d (%s)", WTERMSIG(st),
                 strsignal(WTERMSIG(st)));
    else
        snprintf(how, sizeof how, "exited with status %d", WEXITSTATUS(st));
    if (s->stopping) {
        log_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0 ? LOG_INFO : LOG_WARN,
                "worker w%u (pid %d) %s", i + 1, (int)pid, how);
        return;
    }
    if (!w->ever_ready) {
        /* it never listened: restarting would fail the same way */
        log_error("worker w%u (pid %d) %s before it was ready; stopping", i + 1, (int)pid, how);
        s->status = 1;
        s->stopping = 1;
        signal_all(s, SIGTERM);
        return;
    }
    double now = server_clock();
    if (now - w->started >= STABLE_AFTER)
        w->fails = 0;
    double delay = fmin(BACKOFF_MAX, BACKOFF_MIN * pow(2, w->fails));
    w->fails++;
    w->restart_at = now + delay;
    log_warn("worker w%u (pid %d) %s; restarting in %.1f s", i + 1, (int)pid, how, delay);
}

static void on_signal(struct sup *s, int sig) {
    if (sig == SIGCHLD) {
        int st;
        pid_t pid;
        while ((pid = waitpid(-1, &st, WNOHANG)) > 0)
            on_exit_status(s, pid, st);
        return;
    }
    if (sig == SIGHUP) {
        log_info("SIGHUP: reloading every script in %u worker(s)", running(s));
        signal_all(s, SIGHUP);
        return;
    }
    log_info("%s: %s %u worker(s)", sig == SIGTERM ? "SIGTERM" : "SIGINT",
             s->stopping ? "again: telling" : "graceful shutdown of", running(s));
    s->stopping = 1;
    for (unsigned i = 0; i < s->n; i++)
        s->w[i].restart_at = 0;
    signal_all(s, sig);
}

static void on_ready(struct sup *s, unsigned i) {
    struct worker *w = &s->w[i];
    char b;
    ssize_t r = read(w->ready_fd, &b, 1);
    close(w->ready_fd);
    w->ready_fd = -1;
    if (r != 1)
        return; /* it died first: SIGCHLD says how */
    w->ever_ready = 1;
    log_info("worker w%u ready (pid %d)", i + 1, (int)w->pid);
    if (!s->announced) {
        s->announced = 1;
        for (int j = 0; j < s->cfg.n_listen; j++)
            log_info("listening on %s (ws://%s/) with %u workers", s->names[j], s->names[j], s->n);
    }
}

static int supervise(struct sup *s) {
    struct pollfd pfd[MAX_WORKERS + 1];
    unsigned idx[MAX_WORKERS + 1];
    for (;;) {
        if (s->stopping && !running(s))
            return s->status;
        double now = server_clock(), next = 0;
        for (unsigned i = 0; i < s->n; i++) {
            struct worker *w = &s->w[i];
            if (!w->pid && w->restart_at && !s->stopping) {
                if (w->restart_at <= now)
                    spawn(s, i);
                if (w->restart_at && (!next || w->restart_at < next))
                    next = w->restart_at;
            }
        }
        nfds_t n = 0;
        pfd[n++] = (struct pollfd){.fd = s->sfd, .events = POLLIN};
        for (unsigned i = 0; i < s->n; i++)
            if (s->w[i].ready_fd >= 0) {
                idx[n] = i;
                pfd[n++] = (struct pollfd){.fd = s->w[i].ready_fd, .events = POLLIN};
            }
        int timeout = next ? (int)ceil((next - now) * 1000) : -1;
        if (poll(pfd, n, timeout) < 0 && errno != EINTR) {
            log_error("supervisor: poll: %s", strerror(errno));
            signal_all(s, SIGTERM);
            return 1;
        }
        for (nfds_t k = 1; k < n; k++)
            if (pfd[k].revents)
                on_ready(s, idx[k]);
        if (pfd[0].revents & POLLIN) {
            struct signalfd_siginfo si;
            while (read(s->sfd, &si, sizeof si) == (ssize_t)sizeof si)
                on_signal(s, (int)si.ssi_signo);
        }
    }
}

int supervisor_run(const struct sb_config *cfg, supervisor_worker_fn fn) {
    static struct sup sup; /* big (pollfds, workers): keep it off the stack */
    struct sup *s = &sup;
    memset(s, 0, sizeof *s);
    s->cfg = *cfg;
    s->fn = fn;
    s->n = cfg->workers > MAX_WORKERS ? MAX_WORKERS : cfg->workers;
    for (int j = 0; j < cfg->n_listen; j++) {
        s->hold_fd[j] = server_bind(cfg->listen[j], -1, s->names[j], sizeof s->names[j]);
        if (s->hold_fd[j] < 0) {
            while (j--)
                close(s->hold_fd[j]);
            return 1;
        }
        s->cfg.listen[j] = s->names[j];
    }
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigprocmask(SIG_BLOCK, &set, &s->oldmask);
    s->sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (s->sfd < 0) {
        log_error("supervisor: signalfd: %s", strerror(errno));
        return 1;
    }
    for (unsigned i = 0; i < s->n; i++)
        s->w[i].ready_fd = -1;
    log_info("supervisor (pid %d): starting %u workers", (int)getpid(), s->n);
    for (unsigned i = 0; i < s->n; i++)
        spawn(s, i);
    int rc = supervise(s);
    log_info("supervisor: every worker has exited");
    close(s->sfd);
    for (int j = 0; j < s->cfg.n_listen; j++)
        close(s->hold_fd[j]);
    return rc;
}
