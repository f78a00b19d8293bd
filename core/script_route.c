/* script_route.c — routes: the route scripts under the app directory, the
 * app modules under lib/ they require, loading, and reload on change. */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <fnmatch.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "conn.h"
#include "frame.h"
#include "log.h"
#include "script_int.h"
#include "loop.h"

/* ---- app layout: what is never a route ------------------------------------------ */

/* Read APP_DIR/.sbignore again: one glob per line, blank lines and '#' comments
 * skipped, surrounding blanks trimmed, a leading and a trailing '/' dropped. */
static void ignore_load(struct script *s) {
    for (size_t i = 0; i < s->n_ignore; i++)
        free(s->ignore[i]);
    free(s->ignore);
    s->ignore = NULL;
    s->n_ignore = 0;
    char file[PATH_MAX];
    snprintf(file, sizeof file, "%s/.sbignore", s->app_dir);
    FILE *f = fopen(file, "r");
    if (!f)
        return;
    char line[1024];
    size_t cap = 0;
    while (fgets(line, sizeof line, f)) {
        char *p = line, *e = line + strlen(line);
        while (*p && isspace((unsigned char)*p))
            p++;
        while (e > p && isspace((unsigned char)e[-1]))
            e--;
        if (p < e && *p == '/')
            p++;
        if (e > p && e[-1] == '/')
            e--;
        if (p == e || *p == '#')
            continue;
        if (s->n_ignore == cap) {
            size_t ncap = cap ? cap * 2 : 8;
            char **n = realloc(s->ignore, ncap * sizeof *n);
            if (!n)
                break;
            s->ignore = n;
            cap = ncap;
        }
        if ((s->ignore[s->n_ignore] = strndup(p, (size_t)(e - p))))
            s->n_ignore++;
    }
    fclose(f);
    if (s->n_ignore)
        log_info("%s: %zu pattern(s) never routed", file, s->n_ignore);
}

/* (script_int.h) The layout rules, on a path below the app dir. */
int script__layout_skip(struct script *s, const char *rel, int is_dir) {
    char buf[PATH_MAX];
    size_t n = strlen(rel);
    if (n >= sizeof buf)
        return 1;
    const char *c = rel;
    for (;;) { /* each component: folders, then the name itself */
        const char *slash = strchr(c, '/');
        size_t cl = slash ? (size_t)(slash - c) : strlen(c);
        int folder = slash || is_dir;
        memcpy(buf, c, cl);
        buf[cl] = 0;
        if (buf[0] == '.')
            return 1;
        if (folder && (strcmp(buf, "spec") == 0 || strcmp(buf, "test") == 0))
            return 1;
        if (!folder && cl >= 9 && strcmp(buf + cl - 9, "_spec.lua") == 0)
            return 1;
        for (size_t i = 0; i < s->n_ignore; i++)
            if (!strchr(s->ignore[i], '/') && fnmatch(s->ignore[i], buf, 0) == 0)
                return 1;
        /* patterns with a '/' match from the app dir: the path up to here */
        memcpy(buf, rel, (size_t)(c - rel) + cl);
        buf[(c - rel) + cl] = 0;
        for (size_t i = 0; i < s->n_ignore; i++)
            if (strchr(s->ignore[i], '/') && fnmatch(s->ignore[i], buf, FNM_PATHNAME) == 0)
                return 1;
        if (!slash)
            return 0;
        c = slash + 1;
    }
}

int script_is_ignored(struct script *s, const char *path, int is_dir) {
    size_t al = strlen(s->app_dir), ll = strlen(s->lib_dir);
    if (strncmp(path, s->app_dir, al) != 0 || path[al] != '/')
        return 0;
    if (strncmp(path, s->lib_dir, ll) == 0 && (path[ll] == '/' || path[ll] == 0))
        return 0; /* modules: a route may require any of them */
    return script__layout_skip(s, path + al + 1, is_dir);
}

/* ---- routes ---------------------------------------------------------------------- */

/* The handlers of a route, resolved once when its script loads: a plain table
 * { upgrade = fn, ..., reload = fn, compression = false,
 *   [ORIGINAL_KEY] = the table the script returned }
 * so that dispatch reads fields of a table without a metatable, and only
 * this, under a protected call, runs a metamethod of the script's table. */
const char *const script__handler_names[] = {"upgrade", "open",    "message", "close",
                                             "drain",   "request", "reload",  NULL};
#define handler_names script__handler_names
static const char ORIGINAL_KEY = 0; /* its address: a key no script can write */

/* lua_CFunction: resolve(returned value) -> resolved table, or nil and why not. */
static int resolve_route(lua_State *L) {
    if (!lua_istable(L, 1)) {
        lua_pushnil(L);
        lua_pushfstring(L, "the script must return a table of handlers, not %s",
                        luaL_typename(L, 1));
        return 2;
    }
    lua_createtable(L, 0, 8);
    for (int i = 0; i < 6; i++) {
        int t = lua_getfield(L, 1, handler_names[i]);
        if (t != LUA_TNIL && t != LUA_TFUNCTION) {
            lua_pushnil(L);
            lua_pushfstring(L, "handler '%s' must be a function, not %s", handler_names[i],
                            luaL_typename(L, -2));
            return 2;
        }
        lua_setfield(L, 2, handler_names[i]);
    }
    if (lua_getfield(L, 1, "reload") == LUA_TFUNCTION)
        lua_setfield(L, 2, "reload");
    else
        lua_pop(L, 1);
    lua_getfield(L, 1, "compression"); /* only `false` turns permessage-deflate off */
    lua_pushboolean(L, lua_isboolean(L, -1) && !lua_toboolean(L, -1));
    lua_setfield(L, 2, "no_compression");
    lua_pop(L, 1);
    lua_pushvalue(L, 1);
    lua_rawsetp(L, 2, &ORIGINAL_KEY);
    return 1;
}

static unsigned handler_bits(lua_State *L, int idx) {
    unsigned bits = 0;
    for (int i = 0; i < 6; i++) {
        lua_getfield(L, idx, handler_names[i]); /* a resolved table: no metamethod */
        if (lua_isfunction(L, -1))
            bits |= 1u << i;
        lua_pop(L, 1);
    }
    return bits;
}

/* ---- app modules (lib/) ------------------------------------------------------------- */

/* Where the app module `name` lives: a file under lib/ that package.path
 * finds, or, for a module found nowhere yet, where lib/ would hold it (so that
 * writing it reloads the routes that asked for it). 0: not an app module. */
static int mod_file(struct script *s, lua_State *L, const char *name, char *out, size_t cap) {
    size_t ll = strlen(s->lib_dir);
    int found = 0, top = lua_gettop(L);
    lua_getglobal(L, "package");
    if (!lua_istable(L, -1))
        goto done;
    static const char *const paths[] = {"path", "cpath"};
    for (int i = 0; i < 2; i++) {
        lua_getfield(L, top + 1, "searchpath");
        lua_pushstring(L, name);
        lua_getfield(L, top + 1, paths[i]);
        if (!lua_isfunction(L, -3) || !lua_isstring(L, -1) || lua_pcall(L, 2, 1, 0) != LUA_OK) {
            lua_settop(L, top + 1);
            continue;
        }
        const char *f = lua_tostring(L, -1);
        if (f) {
            found = i == 0 && strncmp(f, s->lib_dir, ll) == 0 && f[ll] == '/' &&
                    snprintf(out, cap, "%s", f) < (int)cap;
            goto done;
        }
        lua_pop(L, 1);
    }
    lua_getfield(L, top + 1, "preload");
    if (lua_istable(L, -1) && lua_getfield(L, -1, name) != LUA_TNIL)
        goto done;
    int n = snprintf(out, cap, "%s/%s.lua", s->lib_dir, name);
    if (n > 0 && (size_t)n < cap) {
        for (char *p = out + ll + 1; p < out + n - 4; p++)
            if (*p == '.')
                *p = '/';
        found = 1;
    }
done:
    lua_settop(L, top);
    return found;
}

/* Push the record of app module `name`, creating it the first time name is
 * required. Returns 0 (nothing pushed) for modules outside the app. */
static int mod_record(struct script *s, lua_State *L, const char *name) {
    lua_getfield(L, LUA_REGISTRYINDEX, MODS_KEY);
    if (lua_getfield(L, -1, name) == LUA_TTABLE) {
        lua_remove(L, -2);
        return 1;
    }
    lua_pop(L, 1);
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    int loaded = lua_getfield(L, -1, name) != LUA_TNIL;
    lua_pop(L, 2);
    char file[PATH_MAX];
    if (loaded || !mod_file(s, L, name, file, sizeof file)) {
        lua_pop(L, 1);
        return 0;
    }
    lua_createtable(L, 0, 3);
    lua_pushstring(L, file);
    lua_setfield(L, -2, "file");
    lua_newtable(L);
    lua_setfield(L, -2, "users");
    lua_newtable(L);
    lua_setfield(L, -2, "routes");
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, name);
    lua_remove(L, -2);
    return 1;
}

/* `require` for scripts: the standard one (upvalue 1), noting which route and
 * which app module asked for which app module, so a change under lib/ reloads
 * exactly the routes that depend on it. */
static int sb_require(lua_State *L) {
    struct script *s = get_script(L);
    const char *name = luaL_checkstring(L, 1);
    lua_settop(L, 1);
    if (!mod_record(s, L, name)) {
        lua_pushvalue(L, lua_upvalueindex(1));
        lua_insert(L, 1);
        lua_call(L, 1, 2);
        return 2;
    }
    if (s->cur_route) {
        lua_getfield(L, -1, "routes");
        lua_pushboolean(L, 1);
        lua_rawsetp(L, -2, s->cur_route);
        lua_pop(L, 1);
    }
    if (s->loading_mod) {
        lua_getfield(L, -1, "users");
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, s->loading_mod);
        lua_pop(L, 1);
    }
    /* a module's top level runs again: a new generation owns its timers */
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    int fresh = lua_getfield(L, -1, name) == LUA_TNIL;
    lua_pop(L, 2);
    uint32_t gen = 0;
    if (fresh) {
        lua_getfield(L, -1, "gen");
        gen = (uint32_t)lua_tointeger(L, -1) + 1;
        lua_pop(L, 1);
        lua_pushinteger(L, gen);
        lua_setfield(L, -2, "gen");
    }
    lua_pop(L, 1);
    const char *prev = s->loading_mod;
    uint32_t prev_gen = s->loading_gen;
    s->loading_mod = name; /* anchored: argument 1 of this call */
    s->loading_gen = gen;
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushvalue(L, 1);
    int rc = lua_pcall(L, 1, 2, 0);
    s->loading_mod = prev;
    s->loading_gen = prev_gen;
    if (fresh) { /* success: the older generations' timers go; failure: this one's */
        script__cancel_module_timers(s, name, gen, rc == LUA_OK ? 0 : 1);
        script__cancel_module_subs(s, name, gen, rc == LUA_OK ? 0 : 1);
    }
    if (rc != LUA_OK)
        return lua_error(L);
    return 2;
}

static void load_error(struct script *s, const struct log_fields *lf, const char *what,
                       const char *msg) {
    if (s->check)
        script__check_error(s, msg);
    else
        log_with(LOG_ERROR, lf, "%s: %s", what, msg);
}

/* Load (or reload) a route's script. Returns 0; on failure logs it and keeps
 * the previous version. */
static int route_load(struct script *s, struct route *r) {
    lua_State *L = s->L;
    double t0 = server_clock();
    char what[PATH_MAX + 32];
    snprintf(what, sizeof what, "loading %s", r->file);
    uint32_t version = r->version + 1;
    struct log_fields lf = {.route = r->path, .script = r->file};
    if (s->check)
        script__check_loading(s, r->file);
    if (luaL_loadfile(L, r->file) != LUA_OK) {
        const char *err = lua_tostring(L, -1);
        /* "FILE:LINE: message" (FILE maybe shortened): the first ":digits:" */
        for (const char *p = err ? strchr(err, ':') : NULL; p; p = strchr(p + 1, ':')) {
            size_t d = strspn(p + 1, "0123456789");
            if (d && p[1 + d] == ':') {
                lf.line = atoi(p + 1);
                break;
            }
        }
        load_error(s, &lf, what, err);
        lua_pop(L, 1);
        goto fail;
    }
    /* a fresh environment whose globals do not leak into other scripts */
    lua_newtable(L);
    lua_newtable(L);
    lua_pushglobaltable(L);
    lua_setfield(L, -2, "__index");
    if (s->check) { /* report the globals its top level writes */
        lua_pushcfunction(L, script__check_newindex);
        lua_setfield(L, -2, "__newindex");
    }
    lua_setmetatable(L, -2);
    if (!lua_setupvalue(L, -2, 1))
        lua_pop(L, 1);
    struct route *prev_route = s->cur_route;
    uint32_t prev_loading = s->loading_version;
    s->cur_route = r;
    s->loading_version = version;
    int rc = protected_call(s, 0, 1, what);
    s->cur_route = prev_route;
    s->loading_version = prev_loading;
    if (rc < 0)
        goto fail;
    /* the returned table is the script's: read it under the budget too */
    lua_pushcfunction(L, resolve_route);
    lua_insert(L, -2);
    s->cur_route = r;
    s->loading_version = version;
    rc = protected_call(s, 1, 2, what);
    s->cur_route = prev_route;
    s->loading_version = prev_loading;
    if (rc < 0)
        goto fail;
    if (lua_isnil(L, -2)) {
        load_error(s, &lf, what, lua_tostring(L, -1));
        lua_pop(L, 2);
        goto fail;
    }
    lua_pop(L, 1);
    int tbl = lua_gettop(L);
    if (s->check) {
        lua_rawgetp(L, tbl, &ORIGINAL_KEY);
        script__check_handlers(s, lua_gettop(L));
        lua_pop(L, 1);
    }
    if (r->ref != LUA_NOREF) {
        /* migrate: the new version's reload(old) hook, given the old table */
        lua_getfield(L, tbl, "reload");
        if (lua_isfunction(L, -1)) {
            lua_rawgeti(L, LUA_REGISTRYINDEX, r->ref);
            lua_rawgetp(L, -1, &ORIGINAL_KEY);
            lua_remove(L, -2);
            s->cur_route = r;
            s->loading_version = version;
            protected_call(s, 1, 0, what);
            s->cur_route = prev_route;
            s->loading_version = prev_loading;
        } else {
            lua_pop(L, 1);
        }
        luaL_unref(L, LUA_REGISTRYINDEX, r->ref);
    }
    r->has = handler_bits(L, tbl);
    lua_getfield(L, tbl, "no_compression");
    r->no_compression = lua_toboolean(L, -1);
    lua_pop(L, 1);
    r->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    r->gone = 0;
    r->version = version;
    /* the old version's timers go with it */
    script__cancel_route_timers(s, r, version, 0);
    script__cancel_route_subs(s, r, version, 0);
    if (s->started) {
        s->srv->stats.reloads_ok++;
        log_info("reloaded %s (route %s, version %u%s) in %.1f ms", r->file, r->path, r->version,
                 version > 1 ? "" : ", new route", (server_clock() - t0) * 1e3);
    }
    return 0;

fail:
    /* timers created by a failed top level die with it */
    script__cancel_route_timers(s, r, version, 1);
    script__cancel_route_subs(s, r, version, 1);
    s->srv->stats.route_load_failures++; /* at start-up too */
    if (s->started) {
        s->srv->stats.reloads_failed++;
        lf.line = 0;
        if (r->ref != LUA_NOREF && !r->gone)
            log_with(LOG_ERROR, &lf,
                     "reload of %s failed in %.1f ms: route %s keeps serving version %u", r->file,
                     (server_clock() - t0) * 1e3, r->path, r->version);
        else
            log_with(LOG_ERROR, &lf, "reload of %s failed in %.1f ms: route %s is not live",
                     r->file, (server_clock() - t0) * 1e3, r->path);
    }
    return -1;
}

/* The script was deleted: no new upgrades (404), open connections get 1001. */
static void route_delete(struct script *s, struct route *r) {
    double t0 = server_clock();
    size_t n = 0;
    r->gone = 1;
    script__cancel_route_timers(s, r, 0, 0);
    script__cancel_route_subs(s, r, 0, 0);
    for (struct conn *c = s->srv->all; c; c = c->next) {
        if (c->route == r && c->state == CONN_WS) {
            conn_close(c, WS_CLOSE_GOING_AWAY, "route removed", 13);
            n++;
        }
    }
    s->srv->stats.reloads_ok++;
    log_info("deleted %s: route %s gone, %zu connection(s) closed with 1001, in %.1f ms", r->file,
             r->path, n, (server_clock() - t0) * 1e3);
}

static struct route *route_by_file(struct script *s, const char *file) {
    for (struct route *r = s->routes; r; r = r->next)
        if (strcmp(r->file, file) == 0)
            return r;
    return NULL;
}

/* "chat.lua" -> "/chat", "api/feed.lua" -> "/api/feed", "index.lua" -> "/",
 * "room/index.lua" -> "/room". rel has no leading slash. */
static char *route_path(const char *rel) {
    size_t n = strlen(rel) - 4; /* drop ".lua" */
    char *p = malloc(n + 2);
    if (!p)
        return NULL;
    p[0] = '/';
    memcpy(p + 1, rel, n);
    p[n + 1] = 0;
    size_t len = n + 1;
    if (len >= 6 && strcmp(p + len - 6, "/index") == 0) {
        p[len - 6] = 0;
        if (!p[0])
            strcpy(p, "/");
    }
    return p;
}

static struct route *route_add(struct script *s, const char *file, const char *rel) {
    struct route *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->file = strdup(file);
    r->path = route_path(rel);
    r->ref = LUA_NOREF;
    r->gone = 1;
    r->next = s->routes;
    s->routes = r;
    return r;
}

/* Walk dir for *.lua route scripts (not lib/ or public/ at the top, nothing the
 * layout rules leave out). */
static void scan_dir(struct script *s, const char *dir, const char *rel, int *loaded, int *failed) {
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if (!rel[0] && (strcmp(e->d_name, "lib") == 0 || strcmp(e->d_name, "public") == 0))
            continue;
        char path[PATH_MAX], sub[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        snprintf(sub, sizeof sub, "%s%s%s", rel, rel[0] ? "/" : "", e->d_name);
        struct stat st;
        if (stat(path, &st) < 0 || script__layout_skip(s, sub, S_ISDIR(st.st_mode)))
            continue;
        if (S_ISDIR(st.st_mode)) {
            scan_dir(s, path, sub, loaded, failed);
            continue;
        }
        size_t n = strlen(e->d_name);
        if (!S_ISREG(st.st_mode) || n < 5 || strcmp(e->d_name + n - 4, ".lua") != 0)
            continue;
        struct route *r = route_by_file(s, path);
        if (!r)
            r = route_add(s, path, sub);
        if (!r)
            continue;
        if (route_load(s, r) == 0)
            (*loaded)++;
        else
            (*failed)++;
    }
    closedir(d);
}

struct route *script_find_route(struct script *s, const char *path, size_t len) {
    for (struct route *r = s->routes; r; r = r->next)
        if (strlen(r->path) == len && memcmp(r->path, path, len) == 0 && r->ref != LUA_NOREF)
            return r;
    return NULL;
}

/* Where switchboard's own Lua modules may be, in the order `require` tries
 * them: beside the binary (a build dir in the source tree: ../lua; installed:
 * ../share/lua/5.4), then the install prefix's. Fills buf; returns how many. */
static int lua_dirs(char buf[2][PATH_MAX + 32], const char *dirs[3]) {
    char exe[PATH_MAX];
    int n = 0;
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len > 0) {
        exe[len] = 0;
        char *slash = strrchr(exe, '/');
        if (slash)
            *slash = 0;
        snprintf(buf[0], sizeof buf[0], "%s/../lua", exe);
        snprintf(buf[1], sizeof buf[1], "%s/../share/lua/5.4", exe);
        dirs[n++] = buf[0];
        dirs[n++] = buf[1];
    }
    dirs[n++] = SB_LUA_DIR;
    return n;
}

int script_lua_dir(char *out, size_t cap) {
    char buf[2][PATH_MAX + 32], probe[PATH_MAX + 64], real[PATH_MAX];
    const char *dirs[3];
    int n = lua_dirs(buf, dirs);
    for (int i = 0; i < n; i++) {
        snprintf(probe, sizeof probe, "%s/switchboard/testing.lua", dirs[i]);
        if (access(probe, R_OK) == 0 && realpath(dirs[i], real) && strlen(real) < cap) {
            memcpy(out, real, strlen(real) + 1);
            return 0;
        }
    }
    return -1;
}

/* lib/ first, then switchboard's own modules, then lua5.4's default path. */
static void set_package_path(struct script *s) {
    lua_State *L = s->L;
    char buf[2][PATH_MAX + 32];
    const char *dirs[3];
    int n = lua_dirs(buf, dirs);
    lua_getglobal(L, "package");
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;", s->lib_dir, s->lib_dir);
    for (int i = 0; i < n; i++)
        lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;", dirs[i], dirs[i]);
    lua_getfield(L, -1 - n - 1, "path");
    lua_concat(L, n + 2);
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);
}

void script__routes_init(struct script *s) {
    lua_State *L = s->L;
    ignore_load(s);
    set_package_path(s);
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, MODS_KEY);
    lua_getglobal(L, "require");
    lua_pushcclosure(L, sb_require, 1);
    lua_setglobal(L, "require");
}

void script__routes_scan(struct script *s, int *loaded, int *failed) {
    scan_dir(s, s->app_dir, "", loaded, failed);
}

/* Forget every app module in package.loaded, so the next require loads it
 * afresh. With `file`, only the modules loaded from it and, transitively, the
 * app modules that required them; the routes that required any of those are
 * pushed as light userdata keys of a table. Returns how many modules. */
static int forget_modules(struct script *s, const char *file) {
    lua_State *L = s->L;
    lua_getfield(L, LUA_REGISTRYINDEX, MODS_KEY);
    int mods = lua_gettop(L);
    lua_newtable(L); /* hit: name -> true */
    int hit = mods + 1;
    lua_newtable(L); /* work: list of names */
    int work = mods + 2;
    int nwork = 0, nmods = 0;
    lua_pushnil(L);
    while (lua_next(L, mods)) {
        lua_getfield(L, -1, "file");
        const char *f = lua_tostring(L, -1);
        if (!file || (f && strcmp(f, file) == 0)) {
            lua_pushvalue(L, -3);
            lua_pushboolean(L, 1);
            lua_rawset(L, hit);
            lua_pushvalue(L, -3);
            lua_rawseti(L, work, ++nwork);
        }
        lua_pop(L, 2);
    }
    while (nwork > 0) { /* add the app modules that required a hit one */
        lua_rawgeti(L, work, nwork);
        lua_pushnil(L);
        lua_rawseti(L, work, nwork--);
        if (lua_rawget(L, mods) != LUA_TTABLE) {
            lua_pop(L, 1);
            continue;
        }
        lua_getfield(L, -1, "users");
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            lua_pop(L, 1);
            lua_pushvalue(L, -1);
            if (lua_rawget(L, hit) == LUA_TNIL) {
                lua_pushvalue(L, -2);
                lua_pushboolean(L, 1);
                lua_rawset(L, hit);
                lua_pushvalue(L, -2);
                lua_rawseti(L, work, ++nwork);
            }
            lua_pop(L, 1);
        }
        lua_pop(L, 2);
    }
    lua_newtable(L); /* the result: route -> true */
    int routes = lua_gettop(L);
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_pushnil(L);
    while (lua_next(L, hit)) {
        lua_pop(L, 1);
        nmods++;
        lua_pushvalue(L, -1);
        lua_pushnil(L);
        lua_rawset(L, -4); /* package.loaded[name] = nil */
        lua_pushvalue(L, -1);
        if (lua_rawget(L, mods) != LUA_TTABLE) {
            lua_pop(L, 1);
            continue;
        }
        lua_getfield(L, -1, "routes");
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            lua_rawset(L, routes);
        }
        lua_pop(L, 2);
    }
    lua_pop(L, 1);
    lua_replace(L, mods); /* leave only the routes table */
    lua_settop(L, mods);
    return nmods;
}

/* A module under lib/ changed (or appeared, or went): every route that
 * required it, directly or through another app module, loads again. */
static void reload_lib(struct script *s, const char *file) {
    lua_State *L = s->L;
    int top = lua_gettop(L);
    int nmods = forget_modules(s, file);
    size_t n = 0, cap = 8;
    struct route **rs = malloc(cap * sizeof *rs);
    lua_pushnil(L);
    while (rs && lua_next(L, -2)) {
        lua_pop(L, 1);
        if (n == cap) {
            struct route **more = realloc(rs, (cap *= 2) * sizeof *rs);
            if (!more)
                break;
            rs = more;
        }
        rs[n++] = (struct route *)lua_touserdata(L, -1);
    }
    lua_settop(L, top);
    if (!nmods) {
        log_info("lib module %s changed: no route requires it", file);
    } else {
        log_info("lib module %s changed: reloading the %zu route(s) that require it", file, n);
        struct stat st;
        for (size_t i = 0; i < n; i++)
            if (stat(rs[i]->file, &st) == 0)
                route_load(s, rs[i]);
    }
    free(rs);
}

/* SIGHUP: every app module afresh, every route script again, deleted ones gone. */
static void reload_all(struct script *s) {
    double t0 = server_clock();
    forget_modules(s, NULL);
    lua_pop(s->L, 1);
    ignore_load(s);
    int loaded = 0, failed = 0;
    scan_dir(s, s->app_dir, "", &loaded, &failed);
    struct stat st;
    for (struct route *r = s->routes; r; r = r->next)
        if (!r->gone && (stat(r->file, &st) < 0 || script_is_ignored(s, r->file, 0)))
            route_delete(s, r);
    log_info("reloaded every script: %d loaded, %d failed, in %.1f ms", loaded, failed,
             (server_clock() - t0) * 1e3);
}

int script_compiles(struct script *s, const char *file) {
    int ok = luaL_loadfile(s->L, file) == LUA_OK;
    lua_pop(s->L, 1); /* the chunk or the message */
    return ok;
}

void script_reload(struct script *s, const char *file) {
    if (!file) {
        reload_all(s);
        return;
    }
    size_t ll = strlen(s->lib_dir), al = strlen(s->app_dir), fl = strlen(file);
    if (strncmp(file, s->lib_dir, ll) == 0 && file[ll] == '/') {
        reload_lib(s, file);
        return;
    }
    struct route *r = route_by_file(s, file);
    struct stat st;
    if (script_is_ignored(s, file, 0)) { /* .sbignore may have changed since it loaded */
        if (r && !r->gone)
            route_delete(s, r);
        return;
    }
    if (stat(file, &st) < 0) {
        if (r && !r->gone)
            route_delete(s, r);
        if (r)
            return;
        /* a folder went away: every route under it */
        for (r = s->routes; r; r = r->next)
            if (!r->gone && strncmp(r->file, file, fl) == 0 && r->file[fl] == '/')
                route_delete(s, r);
        return;
    }
    if (!S_ISREG(st.st_mode) || fl < 5 || strcmp(file + fl - 4, ".lua") != 0)
        return;
    if (!r) {
        if (strncmp(file, s->app_dir, al) != 0 || file[al] != '/')
            return;
        r = route_add(s, file, file + al + 1);
        if (!r)
            return;
    }
    route_load(s, r);
}
