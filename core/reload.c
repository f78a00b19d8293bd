/* reload.c — the app directory watcher: inotify on the event loop, script_reload
 * for every path that changed: at once for a finished save, after a quiet
 * period (the debounce timer) for a burst of changes. */
#define _GNU_SOURCE
#include "reload.h"

#include <dirent.h>
#include <errno.h>
#include <event2/event.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "script.h"
#include "loop.h"

/* What a save looks like to inotify: written in place (CLOSE_WRITE), renamed
 * into place (MOVED_TO), deleted and created again (DELETE, CREATE, CLOSE_WRITE),
 * or renamed away first (MOVED_FROM). Plain MODIFY is left out on purpose: a file
 * is loaded once its writer closed it, never half-written. */
#define WATCH_MASK                                                                                 \
    (IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_DONT_FOLLOW |       \
     IN_ONLYDIR | IN_EXCL_UNLINK)
#define MAX_DEPTH 32

struct watch {
    int wd;
    char *path; /* owned */
};

/* A changed path waiting for its reload. */
struct pending {
    char *path; /* owned */
    int wait;   /* only the debounce timer reloads it; else the end of this inotify read */
};

struct reload {
    struct sb_server *srv;
    char *app_dir; /* realpath, the same spelling script.c uses for route files */
    int fd;
    struct event *ev;    /* the inotify fd */
    struct event *timer; /* debounce: fires once a burst of changes stops */
    struct watch *w;     /* one per watched folder */
    size_t nw, capw;
    struct pending *pending; /* changed paths since the last reload */
    size_t np, capp;
    int everything;    /* the kernel queue overflowed, or .sbignore changed: reload all */
    int now;           /* a finished save is pending: reload after this read */
    double last_saved; /* server_clock() of the last finished save (a burst is saves closer) */
};

static struct watch *watch_find(struct reload *rl, int wd) {
    for (size_t i = 0; i < rl->nw; i++)
        if (rl->w[i].wd == wd)
            return &rl->w[i];
    return NULL;
}

static void watch_drop(struct reload *rl, size_t i) {
    free(rl->w[i].path);
    rl->w[i] = rl->w[--rl->nw];
}

static int watch_add(struct reload *rl, const char *path) {
    int wd = inotify_add_watch(rl->fd, path, WATCH_MASK);
    if (wd < 0) {
        if (errno != ENOENT && errno != ENOTDIR)
            log_warn("reload: cannot watch %s: %s", path, strerror(errno));
        return -1;
    }
    struct watch *w = watch_find(rl, wd);
    char *p = strdup(path);
    if (!p)
        return -1;
    if (w) { /* the same folder under a new name (moved back in) */
        free(w->path);
        w->path = p;
        return 0;
    }
    if (rl->nw == rl->capw) {
        size_t cap = rl->capw ? rl->capw * 2 : 16;
        struct watch *n = realloc(rl->w, cap * sizeof *n);
        if (!n) {
            free(p);
            return -1;
        }
        rl->w = n;
        rl->capw = cap;
    }
    rl->w[rl->nw++] = (struct watch){wd, p};
    return 0;
}

static int is_lua(const char *name) {
    size_t n = strlen(name);
    return n > 4 && strcmp(name + n - 4, ".lua") == 0;
}

/* Queue path for a reload: with wait, once the changes have stopped for the
 * debounce period; without, at the end of this inotify read. The latest change
 * of a path decides. */
static void pend(struct reload *rl, const char *path, int wait) {
    struct pending *p = NULL;
    for (size_t i = 0; i < rl->np && !p; i++)
        if (strcmp(rl->pending[i].path, path) == 0)
            p = &rl->pending[i];
    if (!p) {
        if (rl->np == rl->capp) {
            size_t cap = rl->capp ? rl->capp * 2 : 8;
            struct pending *n = realloc(rl->pending, cap * sizeof *n);
            if (!n)
                return;
            rl->pending = n;
            rl->capp = cap;
        }
        char *copy = strdup(path);
        if (!copy)
            return;
        p = &rl->pending[rl->np++];
        p->path = copy;
    }
    p->wait = wait;
    if (!wait) {
        rl->now = 1;
        return;
    }
    double d = rl->srv->cfg.reload_debounce;
    struct timeval tv = {(time_t)d, (suseconds_t)((d - (double)(time_t)d) * 1e6)};
    event_add(rl->timer, &tv); /* re-arms: the debounce restarts with every change */
}

/* APP_DIR/.sbignore: a change reloads everything under the new rules. */
static int is_ignore_file(struct reload *rl, const char *parent, const char *name) {
    return strcmp(name, ".sbignore") == 0 && strcmp(parent, rl->app_dir) == 0;
}

static int skipped_dir(struct reload *rl, const char *parent, const char *name) {
    return name[0] == '.' || (strcmp(name, "public") == 0 && strcmp(parent, rl->app_dir) == 0);
}

/* Watch dir and the folders under it. With queue, every script found is
 * pending too: it may have been written before its folder was watched. */
static void watch_tree(struct reload *rl, const char *dir, int queue, int depth) {
    if (depth > MAX_DEPTH || watch_add(rl, dir) < 0)
        return;
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (skipped_dir(rl, dir, e->d_name))
            continue;
        char path[PATH_MAX];
        if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= (int)sizeof path)
            continue;
        struct stat st;
        if (stat(path, &st) < 0 || script_is_ignored(rl->srv->script, path, S_ISDIR(st.st_mode)))
            continue; /* the app layout rules: spec/, test/, *_spec.lua, .sbignore */
        if (S_ISDIR(st.st_mode))
            watch_tree(rl, path, queue, depth + 1);
        else if (queue && S_ISREG(st.st_mode) && is_lua(e->d_name))
            pend(rl, path, 1);
    }
    closedir(d);
}

/* A folder was moved away or deleted: forget its watches (a moved folder's
 * watch would otherwise report under its old name). */
static void unwatch_tree(struct reload *rl, const char *dir) {
    size_t dl = strlen(dir);
    for (size_t i = 0; i < rl->nw;) {
        const char *p = rl->w[i].path;
        if (strncmp(p, dir, dl) == 0 && (p[dl] == 0 || p[dl] == '/')) {
            inotify_rm_watch(rl->fd, rl->w[i].wd);
            watch_drop(rl, i);
        } else {
            i++;
        }
    }
}

static void on_event(struct reload *rl, const struct inotify_event *ev) {
    if (ev->mask & IN_Q_OVERFLOW) {
        log_warn("reload: inotify queue overflowed: reloading every script");
        rl->everything = 1;
        pend(rl, rl->app_dir, 1);
        return;
    }
    struct watch *w = watch_find(rl, ev->wd);
    if (!w)
        return;
    if (ev->mask & IN_IGNORED) {
        watch_drop(rl, (size_t)(w - rl->w));
        return;
    }
    if (ev->len && is_ignore_file(rl, w->path, ev->name) && !(ev->mask & IN_ISDIR)) {
        rl->everything = 1; /* every script again, under the new rules */
        pend(rl, rl->app_dir, 1);
        return;
    }
    if (!ev->len || skipped_dir(rl, w->path, ev->name))
        return;
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/%s", w->path, ev->name) >= (int)sizeof path)
        return;
    if (script_is_ignored(rl->srv->script, path, (ev->mask & IN_ISDIR) != 0))
        return;
    log_debug("reload: %s (inotify 0x%x)", path, ev->mask);
    if (ev->mask & IN_ISDIR) {
        if (ev->mask & (IN_CREATE | IN_MOVED_TO))
            watch_tree(rl, path, 1, 0);
        if (ev->mask & (IN_MOVED_FROM | IN_DELETE)) {
            unwatch_tree(rl, path);
            pend(rl, path, 1); /* every route under it is gone */
        }
        return;
    }
    if (!is_lua(ev->name))
        return;
    /* A finished save (closed after writing, or renamed into place) is loaded at
     * once, unless it comes within the debounce period of the previous one (a
     * burst: a checkout, a tool writing several files, an editor writing in
     * parts) or does not compile (most likely a file written in parts: its next
     * write follows). Other changes (created, deleted, moved away) wait: a
     * finished save usually follows them. */
    if (ev->mask & (IN_CLOSE_WRITE | IN_MOVED_TO)) {
        double now = server_clock();
        int burst = now - rl->last_saved < rl->srv->cfg.reload_debounce;
        rl->last_saved = now;
        pend(rl, path, burst || rl->everything || !script_compiles(rl->srv->script, path));
    } else {
        pend(rl, path, 1);
    }
}

static void flush(struct reload *rl, int all);

static void on_inotify(evutil_socket_t fd, short what, void *arg) {
    struct reload *rl = arg;
    (void)what;
    char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0) {
            if (n < 0 && errno == EINTR)
                continue;
            break; /* EAGAIN: drained */
        }
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            on_event(rl, ev);
            p += sizeof *ev + ev->len;
        }
    }
    if (rl->now)
        flush(rl, 0);
}

/* Reload the pending paths: all of them, or (all = 0) those not waiting for the
 * debounce timer, which stays armed for the rest. */
static void flush(struct reload *rl, int all) {
    struct script *s = rl->srv->script;
    rl->srv->now = server_clock();
    int every = all && rl->everything;
    size_t n = 0, kept = 0;
    struct pending *due = malloc((rl->np ? rl->np : 1) * sizeof *due);
    if (!due)
        return;
    for (size_t i = 0; i < rl->np; i++) {
        if (all || !rl->pending[i].wait)
            due[n++] = rl->pending[i];
        else
            rl->pending[kept++] = rl->pending[i];
    }
    /* script_reload runs scripts: the list is consistent before the first one */
    rl->np = kept;
    rl->now = 0;
    if (every) {
        rl->everything = 0;
        /* the scripts first: that reads .sbignore, which watch_tree follows */
        script_reload(s, NULL);
        watch_tree(rl, rl->app_dir, 0, 0);
    }
    if (all || !kept)
        event_del(rl->timer);
    for (size_t i = 0; i < n; i++) {
        const char *path = due[i].path;
        struct stat st;
        int exists = stat(path, &st) == 0;
        if (every) {
            /* done above */
        } else if (exists && S_ISREG(st.st_mode) && st.st_size == 0) {
            /* created, not written yet: its CLOSE_WRITE pends it again */
            log_info("reload: %s is empty: not loaded", path);
        } else if (!exists || S_ISREG(st.st_mode)) {
            script_reload(s, path); /* changed, new or deleted */
        }
        free(due[i].path);
    }
    free(due);
}

static void on_debounce(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    flush(arg, 1);
}

struct reload *reload_new(struct sb_server *srv, const char *app_dir) {
    struct reload *rl = calloc(1, sizeof *rl);
    if (!rl)
        return NULL;
    rl->srv = srv;
    char real[PATH_MAX];
    rl->app_dir = strdup(realpath(app_dir, real) ? real : app_dir);
    rl->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (rl->fd < 0 || !rl->app_dir) {
        log_warn("reload: inotify unavailable (%s): scripts are not watched; SIGHUP reloads",
                 strerror(errno));
        reload_free(rl);
        return NULL;
    }
    rl->ev = event_new(srv->base, rl->fd, EV_READ | EV_PERSIST, on_inotify, rl);
    rl->timer = evtimer_new(srv->base, on_debounce, rl);
    if (!rl->ev || !rl->timer || event_add(rl->ev, NULL) < 0) {
        reload_free(rl);
        return NULL;
    }
    watch_tree(rl, rl->app_dir, 0, 0);
    log_info("reload: watching %zu folder(s) under %s (a save reloads at once, a burst once "
             "quiet for %.0f ms)",
             rl->nw, rl->app_dir, srv->cfg.reload_debounce * 1e3);
    return rl;
}

void reload_free(struct reload *rl) {
    if (!rl)
        return;
    if (rl->ev)
        event_free(rl->ev);
    if (rl->timer)
        event_free(rl->timer);
    if (rl->fd >= 0)
        close(rl->fd);
    for (size_t i = 0; i < rl->nw; i++)
        free(rl->w[i].path);
    free(rl->w);
    for (size_t i = 0; i < rl->np; i++)
        free(rl->pending[i].path);
    free(rl->pending);
    free(rl->app_dir);
    free(rl);
}
