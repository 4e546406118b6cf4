/*
 * Shared declarations of the qsnap program: the command entry points and the
 * helpers the commands share. Commands return their process exit status.
 */
#ifndef QSNAP_CLI_H
#define QSNAP_CLI_H

#include <stdbool.h>

#include <qcow2/qcow2.h>

/*
 * A command: argv[0] is the command's name, the rest its arguments.
 * Returns the exit status.
 */
typedef int (*cli_cmd_fn)(int argc, char **argv);

int cli_image_main(int argc, char **argv);
int cli_image_info(int argc, char **argv);
int cli_image_map(int argc, char **argv);
int cli_image_convert(int argc, char **argv);
int cli_image_compare(int argc, char **argv);
int cli_image_digest(int argc, char **argv);
int cli_image_io(int argc, char **argv);
int cli_image_create(int argc, char **argv);
int cli_image_check(int argc, char **argv);
int cli_image_resize(int argc, char **argv);
int cli_image_snapshot(int argc, char **argv);
int cli_image_commit(int argc, char **argv);
int cli_image_rebase(int argc, char **argv);
int cli_image_measure(int argc, char **argv);

/* The snapshot tree command named name (cmd_tree.c), or NULL. */
cli_cmd_fn cli_tree_lookup(const char *name);

/* One line per tree command for `qsnap --help`. */
void cli_tree_print_commands(void);

/*
 * Turn a -f/-F/-O argument into a format; prints "Unknown file format" and
 * returns false for a name the library does not know.
 */
bool cli_parse_format(const char *name, qcow2_format *out);

/*
 * Open path read-only (never taking a write lock): with its backing chain
 * unless no_backing, without any lock if no_lock. On failure prints the
 * library's message and returns the library code (< 0).
 */
int cli_open_image(qcow2_image **out, const char *path, qcow2_format fmt, bool no_backing,
                   bool no_lock);

/*
 * Before an image command writes into path (replace: makes or replaces the
 * file): refuse a frozen file of a qsnap store (the disk once it has
 * snapshots, a snapshot's layer, a state file) and, with replace, any file of
 * a store or a name in a store directory, printing the library's message and
 * hint. Returns 0 (go on) or 1 (qemu-img's status for an error).
 */
int cli_refuse_store_write(const char *path, bool replace);
/* The same for -a/-d of internal snapshot snap (NULL: -c) of path: the tree's own refused. */
int cli_refuse_snapshot_edit(const char *path, const char *snap);

/*
 * Converters of the image commands' options (see opt.h): -f/-O FMT into a
 * qcow2_format, --output=human|json into a bool (true: json). A bad value is
 * reported as qemu-img does and the command exits 1.
 */
int cli_opt_format(const char *arg, void *field);
int cli_opt_output(const char *arg, void *field);

/* The operands of an image command that takes one FILE, in qemu-img's words. */
#define CLI_ONE_IMAGE                                                                              \
    CLI_OPERANDS(1, "Expecting one image file name"), .extra = "Expecting one image file name"

/* The "Format specific information:" block of qemu-img info (nothing for raw). */
void cli_print_format_specific(const qcow2_info *in);

/* Print "Try 'qsnap CMD --help' for more information" to stderr; return status. */
int cli_usage_hint(const char *cmd, int status);

#endif /* QSNAP_CLI_H */
