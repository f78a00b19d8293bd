/* reload.c — the app directory watcher: inotify on the event loop, a debounce
 * timer, and script_reload for every path that changed. */
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

struct reload {
    struct sb_server *srv;
    char *app_dir; /* realpath, the same spelling script.c uses for route files */
    int fd;
    struct event *ev;    /* the inotify fd */
    struct event *timer; /* debounce: fires once the saves stop */
    struct watch *w;     /* one per watched folder */
    size_t nw, capw;
    char **pending; /* changed paths since the last reload (owned) */
    size_t np, capp;
    int everything; /* the kernel queue overflowed, or .sbignore changed: reload all */
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

static void pend(struct reload *rl, const char *path) {
    for (size_t i = 0; i < rl->np; i++)
        if (strcmp(rl->pending[i], path) == 0)
            goto arm;
    if (rl->np == rl->capp) {
        size_t cap = rl->capp ? rl->capp * 2 : 8;
        char **n = realloc(rl->pending, cap * sizeof *n);
        if (!n)
            return;
        rl->pending = n;
        rl->capp = cap;
    }
    char *p = strdup(path);
    if (!p)
        return;
    rl->pending[rl->np++] = p;
arm:;
    double d = rl->srv->cfg.reload_debounce;
    struct timeval tv = {(time_t)d, (suseconds_t)((d - (double)(time_t)d) * 1e6)};
    event_add(rl->timer, &tv); /* re-arms: the debounce restarts with every change */
}

static int skipped_dir(struct reload *rl, const char *parent, const char *name) {
    return name[0] == '.' || (strcmp(name, "public") == 0 && strcmp(parent, rl->app_dir) == 0);
}

/* APP_DIR/.sbignore: a change reloads everything under the new rules. */
static int is_ignore_file(struct reload *rl, const char *parent, const char *name) {
    return strcmp(name, ".sbignore") == 0 && strcmp(parent, rl->app_dir) == 0;
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
            pend(rl, path);
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
        pend(rl, rl->app_dir);
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
        pend(rl, rl->app_dir);
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
            pend(rl, path); /* every route under it is gone */
        }
        return;
    }
    if (is_lua(ev->name))
        pend(rl, path);
}

static void on_inotify(evutil_socket_t fd, short what, void *arg) {
    struct reload *rl = arg;
    (void)what;
    char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0) {
            if (n < 0 && errno == EINTR)
                continue;
            return; /* EAGAIN: drained */
        }
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            on_event(rl, ev);
            p += sizeof *ev + ev->len;
        }
    }
}

static void on_debounce(evutil_socket_t fd, short what, void *arg) {
    struct reload *rl = arg;
    struct script *s = rl->srv->script;
    (void)fd;
    (void)what;
    rl->srv->now = server_clock();
    char **paths = rl->pending;
    size_t n = rl->np;
    int all = rl->everything;
    rl->pending = NULL;
    rl->np = rl->capp = 0;
    rl->everything = 0;
    if (all) { /* the scripts first: that reads .sbignore, which watch_tree follows */
        script_reload(s, NULL);
        watch_tree(rl, rl->app_dir, 0, 0);
    }
    for (size_t i = 0; i < n; i++) {
        struct stat st;
        int exists = stat(paths[i], &st) == 0;
        if (all) {
            /* done above */
        } else if (exists && S_ISREG(st.st_mode) && st.st_size == 0) {
            /* created, not written yet: its CLOSE_WRITE pends it again */
            log_info("reload: %s is empty: not loaded", paths[i]);
        } else if (!exists || S_ISREG(st.st_mode)) {
            script_reload(s, paths[i]); /* changed, new or deleted */
        }
        free(paths[i]);
    }
    free(paths);
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
    log_info("reload: watching %zu folder(s) under %s (debounce %.0f ms)", rl->nw, rl->app_dir,
             srv->cfg.reload_debounce * 1e3);
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
        free(rl->pending[i]);
    free(rl->pending);
    free(rl->app_dir);
    free(rl);
}
