/* sbt_proc — test-only process control for specs: spawn with redirected
 * output, signal, wait, sleep, monotonic clock. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

extern char **environ;

/* spawn(argv, {stdout=path, stderr=path, env={K=V,...}}) -> pid | nil, err */
static int l_spawn(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    int n = (int)luaL_len(L, 1);
    luaL_argcheck(L, n >= 1, 1, "empty argv");
    const char **argv = lua_newuserdatauv(L, sizeof(char *) * (size_t)(n + 1), 0);
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, 1, i + 1);
        argv[i] = luaL_checkstring(L, -1);
        lua_pop(L, 1); /* strings stay alive: referenced by the argv table */
    }
    argv[n] = NULL;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    const char *out = NULL, *err = NULL;
    if (lua_istable(L, 2)) {
        lua_getfield(L, 2, "stdout");
        out = lua_tostring(L, -1);
        lua_getfield(L, 2, "stderr");
        err = lua_tostring(L, -1);
        lua_pop(L, 2);
    }
    if (out)
        posix_spawn_file_actions_addopen(&fa, 1, out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (err)
        posix_spawn_file_actions_addopen(&fa, 2, err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    /* the child gets stdio only: a client socket a spec holds must not stay open in a
     * server it starts later, or closing it would not reach the peer */
    posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    /* environment: inherited, plus overrides */
    size_t envc = 0;
    while (environ[envc])
        envc++;
    int extra = 0;
    if (lua_istable(L, 2)) {
        lua_getfield(L, 2, "env");
        if (lua_istable(L, -1)) {
            lua_pushnil(L);
            while (lua_next(L, -2)) {
                extra++;
                lua_pop(L, 1);
            }
        }
        lua_pop(L, 1);
    }
    const char **envp = lua_newuserdatauv(L, sizeof(char *) * (envc + (size_t)extra + 1), 0);
    size_t k = 0;
    for (size_t i = 0; i < envc; i++)
        envp[k++] = environ[i];
    if (extra) {
        lua_getfield(L, 2, "env");
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            const char *key = luaL_checkstring(L, -2);
            const char *val = luaL_checkstring(L, -1);
            size_t kl = strlen(key);
            /* drop an inherited value of the same name */
            for (size_t i = 0; i < k; i++)
                if (strncmp(envp[i], key, kl) == 0 && envp[i][kl] == '=')
                    envp[i] = "SB_UNSET_=1";
            lua_pushfstring(L, "%s=%s", key, val);
            envp[k++] = lua_tostring(L, -1);
            lua_rawsetp(L, LUA_REGISTRYINDEX, envp + k); /* keep the string alive */
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    envp[k] = NULL;
    pid_t pid;
    int rc = posix_spawn(&pid, argv[0], &fa, NULL, (char *const *)argv, (char *const *)envp);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
        lua_pushnil(L);
        lua_pushstring(L, strerror(rc));
        return 2;
    }
    lua_pushinteger(L, pid);
    return 1;
}

static int l_kill(lua_State *L) {
    pid_t pid = (pid_t)luaL_checkinteger(L, 1);
    int sig = (int)luaL_optinteger(L, 2, SIGTERM);
    lua_pushboolean(L, kill(pid, sig) == 0);
    return 1;
}

/* wait(pid [, nohang]) -> "exited", code | "signaled", sig | nil (still running) */
static int l_wait(lua_State *L) {
    pid_t pid = (pid_t)luaL_checkinteger(L, 1);
    int status;
    pid_t r = waitpid(pid, &status, lua_toboolean(L, 2) ? WNOHANG : 0);
    if (r == 0)
        return 0;
    if (r < 0) {
        lua_pushnil(L);
        lua_pushstring(L, strerror(errno));
        return 2;
    }
    if (WIFEXITED(status)) {
        lua_pushliteral(L, "exited");
        lua_pushinteger(L, WEXITSTATUS(status));
    } else {
        lua_pushliteral(L, "signaled");
        lua_pushinteger(L, WTERMSIG(status));
    }
    return 2;
}

static int l_sleep(lua_State *L) {
    double s = luaL_checknumber(L, 1);
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
    return 0;
}

static int l_now(lua_State *L) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    lua_pushnumber(L, (double)ts.tv_sec + (double)ts.tv_nsec / 1e9);
    return 1;
}

static int l_getpid(lua_State *L) {
    lua_pushinteger(L, getpid());
    return 1;
}

int luaopen_sbt_proc(lua_State *L) {
    static const luaL_Reg fns[] = {{"spawn", l_spawn}, {"kill", l_kill},     {"wait", l_wait},
                                   {"sleep", l_sleep}, {"now", l_now},       {"getpid", l_getpid},
                                   {NULL, NULL}};
    luaL_newlib(L, fns);
    lua_pushinteger(L, SIGTERM);
    lua_setfield(L, -2, "SIGTERM");
    lua_pushinteger(L, SIGKILL);
    lua_setfield(L, -2, "SIGKILL");
    lua_pushinteger(L, SIGHUP);
    lua_setfield(L, -2, "SIGHUP");
    lua_pushinteger(L, SIGINT);
    lua_setfield(L, -2, "SIGINT");
    lua_pushinteger(L, SIGSTOP);
    lua_setfield(L, -2, "SIGSTOP");
    lua_pushinteger(L, SIGCONT);
    lua_setfield(L, -2, "SIGCONT");
    return 1;
}
