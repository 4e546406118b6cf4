/*
 * Shared declarations of qsnap's snapshot tree commands (create, list,
 * revert, ...): cmd_tree.c holds the command table and the commands that
 * change files, cmd_tree_query.c the ones that only read, tree_view.c the
 * `list` filters and the --tree drawing. Everything here is presentation over
 * the public libqsnap API (include/qsnap/qsnap.h).
 */
#ifndef QSNAP_CLI_TREE_H
#define QSNAP_CLI_TREE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include <qsnap/qsnap.h>

#include "json.h"

/* The exit statuses every tree command's --help ends with. */
#define TREE_EXIT_HELP                                                                             \
    "Exit status: 0 ok, 1 error, 2 usage error, 3 refused as unsafe (the message names\n"          \
    "what blocks it and the flag that overrides it), 4 integrity problem found,\n"                 \
    "5 locked or in use, 6 not found.\n"

/*
 * Print the library's last error as "qsnap: MESSAGE" and, when it has one,
 * "qsnap: hint: HINT" (the word DISK in a hint replaced by disk, when given),
 * and return the exit status for rc (-rc for the library's codes -1..-6).
 */
int tree_fail(int rc, const char *disk);

/* A usage error: "qsnap: MESSAGE", the --help pointer for cmd, status 2. */
int tree_usage(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * Open the store of disk with flags (QSNAP_OPEN_*). On failure prints the
 * error and returns the exit status (> 0); 0 on success.
 */
int tree_open(qsnap_store **out, const char *disk, unsigned flags);

/*
 * Whether a short command frees its store and plan at its end: only under a
 * leak checker (sanitizer builds). Otherwise they are left to the process's
 * exit, which releases the lock and the memory at once (freeing a model
 * record by record was a tenth of the instructions of a command at 10,000
 * snapshots).
 */
#if defined(__SANITIZE_ADDRESS__)
#define TREE_FREE_AT_END 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(leak_sanitizer)
#define TREE_FREE_AT_END 1
#endif
#endif
#ifndef TREE_FREE_AT_END
#define TREE_FREE_AT_END 0
#endif

/* The end of a short command's use of store s (see TREE_FREE_AT_END); the command returns
 * right after. */
void tree_done(qsnap_store *s);

/* "snapshot", "unnamed" or "branch". */
const char *tree_kind_name(qsnap_kind k);

/* Local time as "YYYY-MM-DD HH:MM:SS" (or the number when it cannot be shown). */
const char *tree_fmt_time(long long t, char buf[32]);
/* Write n bytes of s to out, a control character but a tab (a terminal escape in a
 * description someone else wrote into the store, say) as \xHH, a C1 control in UTF-8
 * as \xc2\xHH. */
void tree_put_text(FILE *out, const char *s, size_t n);

/*
 * Refuse an output (a directory to write into, to mount on) that is in a
 * store directory or is a file of a store: prints "PATH: refused: ..." and
 * hint, returns CLI_EXIT_UNSAFE; 0 when path is no store's.
 */
int tree_refuse_in_store(const char *path, const char *hint);

/* The disk of a store: its path without the ".qsnap" suffix (malloc'd, or NULL). */
char *tree_disk_of(const qsnap_store *s);

/* Write a JSON null member (the shared writer has none). */
void tree_json_null(cli_json *j, const char *key);

/*
 * Describe plan p (dry_run; with json as JSON) or execute it on s (printing
 * its summary, or the plan as JSON with json). Frees p; returns the exit status.
 */
int tree_run_plan(qsnap_store *s, qsnap_plan *p, const char *disk, bool dry_run, bool json);

/* libvirt: adopt and libvirt-xml (cmd_adopt.c). */
int cli_tree_adopt(int argc, char **argv);
int cli_tree_libvirt_xml(int argc, char **argv);

/* The commands that only read (cmd_tree_query.c); argv[0] is the command's name. */
int cli_tree_list(int argc, char **argv);
int cli_tree_info(int argc, char **argv);
int cli_tree_current(int argc, char **argv);
int cli_tree_diff(int argc, char **argv);
int cli_tree_du(int argc, char **argv);
int cli_tree_why(int argc, char **argv);
int cli_tree_export(int argc, char **argv);
int cli_tree_verify(int argc, char **argv);

/* Filters of `qsnap list` (virsh snapshot-list's groups; see tree_view.c). */
typedef struct tree_filter {
    bool roots;       /* --roots: nodes without a parent */
    bool leaves;      /* --leaves: nodes without children */
    bool no_leaves;   /* --no-leaves: nodes with children */
    bool branches;    /* --branches: branches only */
    bool internal;    /* --internal: internal snapshots only */
    bool external;    /* --external: external ones only */
    const char *from; /* --from NAME: its children, or NAME's subtree with --tree */
    bool descendants; /* --descendants: all descendants of --from, not only children */
} tree_filter;

/*
 * Mark in sel[i] (n entries) the nodes of list that the filter selects.
 * @return 0, or -1 after printing "no snapshot or branch named" for --from
 *         (exit status 6)
 */
int tree_select(const qsnap_node *list, size_t n, const tree_filter *f, bool *sel);

/*
 * Draw the tree of list (as qsnap_list returns it) on out: the disk on the
 * first line, then every node under its parent with box-drawing lines. Only
 * selected nodes are shown in full; an unselected node that leads to a
 * selected one is shown by name only (dimmed with colour); the rest is left
 * out. With root set (--from), the drawing starts at that node instead.
 */
void tree_view_print(FILE *out, const char *disk, const qsnap_node *list, size_t n, const bool *sel,
                     const char *root, bool color);

#endif /* QSNAP_CLI_TREE_H */
