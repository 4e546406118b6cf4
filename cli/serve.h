/*
 * `qsnap serve` (cmd_serve.c), `qsnap mount` and `qsnap umount`
 * (cmd_mount.c), and what they share: the per-user run-time directory where
 * a running server or mount is recorded (so --stop and umount find it),
 * and the exit status of a libqsnap code.
 */
#ifndef QSNAP_CLI_SERVE_H
#define QSNAP_CLI_SERVE_H

#include <stdbool.h>
#include <sys/types.h>

int cli_tree_serve(int argc, char **argv);
int cli_tree_mount(int argc, char **argv);
int cli_tree_umount(int argc, char **argv);

/*
 * The run-time directory ($XDG_RUNTIME_DIR/qsnap, else /tmp/qsnap-UID),
 * made (mode 0700) when missing and refused when another user owns it.
 * @return a malloc'd path, or NULL after printing why
 */
char *serve_runtime_dir(void);

/*
 * A record of a running server or mount: KIND-PID in the run-time
 * directory, holding "key=value" lines. serve_record_write() makes it
 * atomically; serve_record_get() reads one key of a record file (malloc'd
 * value, or NULL).
 */
int serve_record_write(const char *dir, const char *kind, pid_t pid, const char *const *kv);
char *serve_record_get(const char *path, const char *key);

/* Whether pid runs a program whose command line contains word. */
bool serve_pid_runs(pid_t pid, const char *word);

/* Wait up to secs seconds for pid (not a child) to exit. @return true when it has. */
bool serve_wait_gone(pid_t pid, double secs);

#endif /* QSNAP_CLI_SERVE_H */
