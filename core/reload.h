/* reload.h — watches the app directory with inotify (one event on the loop,
 * no thread) and hands every changed route script or lib/ module to
 * script_reload: a finished save at once, a burst of changes once it stops. */
#ifndef SB_RELOAD_H
#define SB_RELOAD_H

struct sb_server;
struct reload;

/* Watch app_dir and every folder under it (including folders created later),
 * except the top-level public/ folder, dot-folders and what the app layout
 * rules leave out (script_is_ignored). A *.lua file closed after writing or
 * renamed into place is reloaded as soon as the event is read, if it compiles
 * and no other such save came in the last cfg.reload_debounce seconds.
 * Anything else (a burst of saves, a file that does not compile yet, a
 * deletion, a folder moved) is collected until no new change arrives for
 * cfg.reload_debounce seconds. Each changed path goes to
 * script_reload(srv->script, path); a change to APP_DIR/.sbignore reloads
 * every script. Returns NULL after logging why when inotify is unavailable
 * (the server runs unwatched). */
struct reload *reload_new(struct sb_server *srv, const char *app_dir);
void reload_free(struct reload *rl);

#endif
