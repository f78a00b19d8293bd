/* reload.h — watches the app directory with inotify (one event on the loop,
 * no thread) and hands every changed route script or lib/ module to
 * script_reload, debounced so that one editor save is one reload. */
#ifndef SB_RELOAD_H
#define SB_RELOAD_H

struct sb_server;
struct reload;

/* Watch app_dir and every folder under it (including folders created later),
 * except the top-level public/ folder, dot-folders and what the app layout
 * rules leave out (script_is_ignored). Changes to *.lua files
 * are collected until no new one arrives for cfg.reload_debounce seconds, then
 * each changed path goes to script_reload(srv->script, path); a change to
 * APP_DIR/.sbignore reloads every script. Returns NULL
 * after logging why when inotify is unavailable (the server runs unwatched). */
struct reload *reload_new(struct sb_server *srv, const char *app_dir);
void reload_free(struct reload *rl);

#endif
