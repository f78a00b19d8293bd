/* script_check.c — `switchboard --check APP_DIR`: load every route script and
 * every lib/ module the way the server does (instruction budget and memory cap
 * on, the same environments and `require`), with no listener and no loop, and
 * report on stdout, one line each, in the FILE:LINE form compilers use:
 *   app/chat.lua:14: error: ')' expected near 'end'
 *   app/chat.lua:20: warning: unknown handler 'mesage' (did you mean 'message'?)
 *   app/chat.lua:3: warning: global 'count' written at top level (make it local)
 * Paths are spelled as APP_DIR was given. */
#define _GNU_SOURCE
#include <dirent.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <lauxlib.h>
#include <lua.h>

#include "log.h"
#include "script_int.h"

#define SEEN_KEY "switchboard.check.seen" /* "file\nglobal" -> true: warn once */

struct script_check {
    const char *file; /* what is loading (a route's r->file, or a string of walk_lib) */
    int errors, warnings;
};

/* One line: "where:line: kind: message[ctx]", once per "where:line: kind: message". */
static void report(struct script *s, const char *where, int line, const char *kind, const char *ctx,
                   const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static void report(struct script *s, const char *where, int line, const char *kind, const char *ctx,
                   const char *fmt, ...) {
    char text[2048];
    int n = line > 0 ? snprintf(text, sizeof text, "%s:%d: %s: ", where, line, kind)
                     : snprintf(text, sizeof text, "%s: %s: ", where, kind);
    if (n < 0 || n >= (int)sizeof text)
        n = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text + n, sizeof text - (size_t)n, fmt, ap);
    va_end(ap);
    /* once: a lib/ module that failed for a route fails again when walked */
    lua_State *L = s->L;
    lua_getfield(L, LUA_REGISTRYINDEX, SEEN_KEY);
    int seen = lua_getfield(L, -1, text) != LUA_TNIL;
    lua_pop(L, 1);
    if (!seen) {
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, text);
    }
    lua_pop(L, 1);
    if (seen)
        return;
    printf("%s%s\n", text, ctx ? ctx : "");
    fflush(stdout);
    if (strcmp(kind, "error") == 0)
        s->check->errors++;
    else
        s->check->warnings++;
}

void script__check_loading(struct script *s, const char *file) {
    s->check->file = file;
}

/* "FILE:LINE: message\nstack traceback: ..." -> reported at FILE:LINE; an
 * error raised elsewhere (a lib/ module the route required) also names the
 * file being loaded. */
void script__check_error(struct script *s, const char *msg) {
    const char *file = s->check->file ? s->check->file : s->app_dir;
    size_t n = strcspn(msg, "\n");
    const char *p = msg;
    while (p < msg + n) { /* the first ":DIGITS: " */
        const char *colon = memchr(p, ':', (size_t)(msg + n - p));
        if (!colon)
            break;
        char *end;
        long line = strtol(colon + 1, &end, 10);
        if (end > colon + 1 && colon[1] >= '0' && colon[1] <= '9' && end[0] == ':' &&
            end[1] == ' ') {
            char where[PATH_MAX], ctx[PATH_MAX + 16] = "";
            snprintf(where, sizeof where, "%.*s", (int)(colon - msg), msg);
            if (strcmp(where, file) != 0)
                snprintf(ctx, sizeof ctx, " (loading %s)", file);
            report(s, where, (int)line, "error", ctx, "%.*s", (int)(msg + n - end - 2), end + 2);
            return;
        }
        p = colon + 1;
    }
    /* no position (the budget, a bad return value): the file's line in the traceback */
    int line = 0;
    char at[PATH_MAX + 4];
    snprintf(at, sizeof at, "\n\t%s:", file);
    const char *t = strstr(msg, at);
    if (t)
        line = atoi(t + strlen(at));
    report(s, file, line, "error", NULL, "%.*s", (int)n, msg);
}

/* Edits (insert, delete, replace, swap two neighbours) from a to b, capped at 3. */
static int distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la > 32 || lb > 32 || (la > lb ? la - lb : lb - la) > 2)
        return 3;
    int d[33][33];
    for (size_t i = 0; i <= la; i++)
        d[i][0] = (int)i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        for (size_t j = 1; j <= lb; j++) {
            int cost = a[i - 1] == b[j - 1] ? 0 : 1;
            int v = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < v)
                v = d[i][j - 1] + 1;
            if (d[i - 1][j - 1] + cost < v)
                v = d[i - 1][j - 1] + cost;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < v)
                v = d[i - 2][j - 2] + 1;
            d[i][j] = v;
        }
    }
    return d[la][lb] < 3 ? d[la][lb] : 3;
}

/* Raw reads only (lua_next): no metamethod of the script's table runs here. */
void script__check_handlers(struct script *s, int idx) {
    lua_State *L = s->L;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -2) != LUA_TSTRING || !lua_isfunction(L, -1)) {
            lua_pop(L, 1);
            continue;
        }
        const char *k = lua_tostring(L, -2);
        const char *near = NULL;
        int known = 0, best = 3;
        for (int i = 0; script__handler_names[i]; i++) {
            const char *h = script__handler_names[i];
            int d = strcasecmp(k, h) == 0 ? 1 : distance(k, h);
            known |= strcmp(k, h) == 0;
            if (d < best && d <= 2)
                best = d, near = h;
        }
        if (!known) {
            lua_Debug ar;
            lua_pushvalue(L, -1);
            lua_getinfo(L, ">S", &ar);
            const char *where = ar.what[0] == 'C' ? s->check->file : ar.short_src;
            if (near)
                report(s, where, ar.linedefined, "warning", NULL,
                       "unknown handler '%s' (did you mean '%s'?)", k, near);
            else
                report(s, where, ar.linedefined, "warning", NULL,
                       "unknown handler '%s': the server never calls it (handlers: upgrade, "
                       "open, message, close, drain, request, reload)",
                       k);
        }
        lua_pop(L, 1);
    }
}

int script__check_newindex(lua_State *L) {
    struct script *s = get_script(L);
    lua_settop(L, 3);
    if (lua_type(L, 2) == LUA_TSTRING) {
        lua_Debug ar;
        const char *where = s->check->file;
        int line = 0;
        if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "Sl", &ar) && ar.currentline > 0) {
            where = ar.short_src;
            line = ar.currentline;
        }
        lua_getfield(L, LUA_REGISTRYINDEX, SEEN_KEY);
        lua_pushfstring(L, "%s\n%s", where, lua_tostring(L, 2));
        if (lua_rawget(L, -2) == LUA_TNIL) {
            lua_pop(L, 1);
            lua_pushfstring(L, "%s\n%s", where, lua_tostring(L, 2));
            lua_pushboolean(L, 1);
            lua_rawset(L, -3);
            report(s, where, line, "warning", NULL,
                   "global '%s' written at top level (make it local)", lua_tostring(L, 2));
        }
        lua_settop(L, 3);
    }
    lua_rawset(L, 1);
    return 0;
}

/* Every *.lua under lib/ (the layout rules apply), required by module name as
 * a route would: lib/chat/validate.lua is "chat.validate", lib/x/init.lua is "x". */
static void walk_lib(struct script *s, const char *dir, const char *mod, int *n) {
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    size_t al = strlen(s->app_dir);
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char path[PATH_MAX], name[PATH_MAX];
        if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= (int)sizeof path)
            continue;
        struct stat st;
        if (stat(path, &st) < 0 || script__layout_skip(s, path + al + 1, S_ISDIR(st.st_mode)))
            continue;
        size_t nl = strlen(e->d_name);
        if (S_ISDIR(st.st_mode)) {
            snprintf(name, sizeof name, "%s%s%s", mod, mod[0] ? "." : "", e->d_name);
            walk_lib(s, path, name, n);
            continue;
        }
        if (!S_ISREG(st.st_mode) || nl < 5 || strcmp(e->d_name + nl - 4, ".lua") != 0)
            continue;
        if (strcmp(e->d_name, "init.lua") == 0 && mod[0])
            snprintf(name, sizeof name, "%s", mod);
        else
            snprintf(name, sizeof name, "%s%s%.*s", mod, mod[0] ? "." : "", (int)(nl - 4),
                     e->d_name);
        (*n)++;
        lua_State *L = s->L;
        lua_getglobal(L, "require"); /* script_route.c's: lib/ first, tracked */
        lua_pushstring(L, name);
        script__check_loading(s, path);
        char what[PATH_MAX + 16];
        snprintf(what, sizeof what, "loading %s", path);
        protected_call(s, 1, 0, what);
        s->check->file = NULL;
    }
    closedir(d);
}

int script_check(struct sb_server *srv, const char *app_dir, int strict) {
    struct script *s = script__state_new(srv, app_dir, 0);
    if (!s) {
        fprintf(stderr, "switchboard: could not create a Lua state\n");
        return 1;
    }
    struct script_check check = {0};
    s->check = &check;
    lua_State *L = s->L;
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, SEEN_KEY);
    /* lib/ modules run in the global table: report what their top level writes */
    lua_pushglobaltable(L);
    lua_newtable(L);
    lua_pushcfunction(L, script__check_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_setmetatable(L, -2);
    lua_pop(L, 1);
    int loaded = 0, failed = 0, mods = 0;
    script__routes_scan(s, &loaded, &failed);
    walk_lib(s, s->lib_dir, "", &mods);
    if (loaded + failed == 0)
        report(s, s->app_dir, 0, "error", NULL,
               "no route script (the server would not start; see the app layout rules)");
    int bad = check.errors || (strict && check.warnings);
    printf("%s: %d route(s), %d lib module(s): %d error(s), %d warning(s)%s\n", s->app_dir,
           loaded + failed, mods, check.errors, check.warnings,
           bad ? (check.errors ? "" : " (--strict)") : ": ok");
    fflush(stdout);
    s->check = NULL;
    script_free(s);
    return bad ? 1 : 0;
}
