/*
 * qsnap's snapshot tree commands that read: current, list, info, diff, du,
 * why and export (which writes only its output file), and verify (which
 * repairs with --repair). Each opens the store through libqsnap and prints
 * what the library reports: text for people, --json documents with a
 * "version" field for scripts (described in docs/qsnap.1).
 */
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <qsnap/qsnap.h>

#include "cli.h"
#include "cli_error.h"
#include "fmt.h"
#include "opt.h"
#include "progress.h"
#include "tree.h"

/* The version of every JSON document the tree commands print. */
#define TREE_JSON_VERSION 1

/* The options of a command that takes --json only (or nothing). */
struct json_args {
    bool json;
};

/*
 * The opening of the query commands: parse argv with cmd into args and op,
 * run check on the options (NULL: none; it returns 0 or a usage error's exit
 * status), then open the store of the disk, op->v[0], read-only. True with
 * *s open; else false with the exit status in *status (0 after --help).
 */
static bool tree_parse_open(const cli_command *cmd, int argc, char **argv, void *args,
                            int (*check)(const void *args), cli_operands *op, qsnap_store **s,
                            int *status)
{
    if (!cli_cmd_parse(cmd, argc, argv, args, op, status))
        return false;
    if (check && (*status = check(args)) != 0)
        return false;
    *status = tree_open(s, op->v[0], QSNAP_OPEN_READONLY);
    return *status == 0;
}

/* The members of one node in list, info and current documents. */
static void json_node_members(cli_json *j, const qsnap_node *e)
{
    cli_json_uint(j, "id", e->id);
    cli_json_string(j, "name", e->name);
    cli_json_string(j, "kind", tree_kind_name(e->kind));
    if (e->parent)
        cli_json_uint(j, "parent", e->parent);
    else
        tree_json_null(j, "parent");
    if (e->parent_name)
        cli_json_string(j, "parent_name", e->parent_name);
    else
        tree_json_null(j, "parent_name");
    cli_json_string(j, "file", e->file);
    cli_json_string(j, "description", e->description);
    cli_json_int(j, "created", e->created);
    cli_json_bool(j, "current", e->current);
    cli_json_bool(j, "dirty", e->dirty);
    cli_json_bool(j, "internal", e->internal);
    cli_json_uint(j, "virtual_size", e->virtual_size);
    cli_json_uint(j, "file_bytes", e->file_bytes);
    cli_json_uint(j, "nb_children", e->nb_children);
    if (e->state_file)
        cli_json_string(j, "state_file", e->state_file);
    else
        tree_json_null(j, "state_file");
}

/* ---- current ----------------------------------------------------------------- */

static const char current_help[] =
    "Usage: qsnap current DISK [--path | --head] [--json]\n"
    "\n"
    "Show the current branch, the snapshot it starts from and whether it holds\n"
    "changes (read from the overlay itself, no VM needed).\n"
    "\n"
    "Options:\n"
    "      --path           print only the VM path: the one path a VM's\n"
    "                       configuration names for the life of the store; every\n"
    "                       tree command points it at the current branch's head\n"
    "      --head           print only the current branch's own head file\n"
    "      --json           print a JSON document\n"
    "  -h, --help           show this help and exit\n"
    "\n" TREE_EXIT_HELP;

struct current_args {
    bool path, head, json;
};

static const cli_command current_cmd = {
    .prog = "qsnap current",
    .help = current_help,
    .usage_status = CLI_EXIT_USAGE,
    .options = (const cli_option[]){
        CLI_FLAG("path", 0, struct current_args, path),
        CLI_FLAG("head", 0, struct current_args, head),
        CLI_FLAG("json", 0, struct current_args, json),
        CLI_OPTIONS_END,
    },
    CLI_OPERANDS(1, "missing disk"),
};

static int current_check(const void *args)
{
    const struct current_args *a = args;

    if ((a->path || a->head) && a->json)
        return tree_usage("current", "--%s and --json exclude each other",
                          a->path ? "path" : "head");
    if (a->path && a->head)
        return tree_usage("current", "--path and --head exclude each other");
    return 0;
}

int cli_tree_current(int argc, char **argv)
{
    struct current_args a = {false, false, false};
    bool path, head, json;
    char *vm_path = NULL;
    qsnap_node *cur = NULL;
    qsnap_store *s;
    cli_operands op;
    int rc, status;

    if (!tree_parse_open(&current_cmd, argc, argv, &a, current_check, &op, &s, &status))
        return status;
    path = a.path;
    head = a.head;
    json = a.json;
    rc = qsnap_current(s, &cur);
    if (rc >= 0 && !head)
        rc = qsnap_vm_path(s, &vm_path);
    if (rc < 0) {
        status = tree_fail(rc, op.v[0]);
    } else if (path) {
        printf("%s\n", vm_path);
    } else if (head) {
        printf("%s\n", cur->file);
    } else if (json) {
        cli_json j;

        cli_json_init(&j, stdout);
        cli_json_begin_object(&j, NULL);
        cli_json_uint(&j, "version", TREE_JSON_VERSION);
        cli_json_string(&j, "branch", cur->name);
        if (cur->parent_name)
            cli_json_string(&j, "base", cur->parent_name);
        else
            tree_json_null(&j, "base");
        cli_json_bool(&j, "dirty", cur->dirty);
        cli_json_string(&j, "head", cur->file);
        cli_json_string(&j, "path", vm_path);
        cli_json_uint(&j, "virtual_size", cur->virtual_size);
        cli_json_uint(&j, "file_bytes", cur->file_bytes);
        cli_json_end_object(&j);
        cli_json_finish(&j);
    } else {
        printf("branch: %s\n"
               "base:   %s\n"
               "state:  %s\n"
               "head:   %s\n"
               "path:   %s\n",
               cur->name, cur->parent_name ? cur->parent_name : "(none)",
               cur->dirty ? "dirty (changes since the snapshot)" : "clean", cur->file, vm_path);
    }
    free(vm_path);
    if (TREE_FREE_AT_END)
        qsnap_list_free(cur, cur ? 1 : 0);
    tree_done(s);
    return status;
}

/* ---- list -------------------------------------------------------------------- */

static const char list_help[] =
    "Usage: qsnap list DISK [--tree] [--json] [--roots | --leaves | --no-leaves]\n"
    "                  [--parent] [--from NAME [--descendants]] [--branches]\n"
    "                  [--internal | --external]\n"
    "\n"
    "List the snapshots, unnamed nodes (states kept for their dependents) and\n"
    "branches of a disk: a table by default ('*' marks the current branch), a\n"
    "drawing with --tree (the current branch marked 'you are here'), or JSON.\n"
    "\n"
    "Options:\n"
    "      --tree           draw the tree; filters keep the nodes that lead to a\n"
    "                       selected one, by name only\n"
    "      --json           print a JSON document (filters apply)\n"
    "      --parent         add a PARENT column to the table\n"
    "      --roots          only nodes without a parent\n"
    "      --leaves         only nodes without children (branches count as children)\n"
    "      --no-leaves      only nodes with children\n"
    "      --from=NAME      only NAME's children (with --tree: the tree from NAME)\n"
    "      --descendants    with --from: all of NAME's descendants\n"
    "      --branches       only branches\n"
    "      --internal       only internal snapshots (create --internal: kept in the\n"
    "                       qcow2 snapshot table of a branch's head)\n"
    "      --external       everything else (external snapshots, unnamed nodes,\n"
    "                       branches)\n"
    "  -h, --help           show this help and exit\n"
    "\n"
    "Colour is used on a terminal only, and never when NO_COLOR is set.\n"
    "\n" TREE_EXIT_HELP;

static void list_json(const char *disk_abs, const char *store, const qsnap_node *list, size_t n,
                      const bool *sel)
{
    const char *current = NULL;
    cli_json j;

    for (size_t i = 0; i < n; i++)
        if (list[i].kind == QSNAP_BRANCH && list[i].current)
            current = list[i].name;
    cli_json_init(&j, stdout);
    cli_json_begin_object(&j, NULL);
    cli_json_uint(&j, "version", TREE_JSON_VERSION);
    cli_json_string(&j, "disk", disk_abs);
    cli_json_string(&j, "store", store);
    if (current)
        cli_json_string(&j, "current", current);
    else
        tree_json_null(&j, "current");
    cli_json_begin_array(&j, "nodes");
    for (size_t i = 0; i < n; i++) {
        if (!sel[i])
            continue;
        cli_json_begin_object(&j, NULL);
        json_node_members(&j, &list[i]);
        cli_json_end_object(&j);
    }
    cli_json_end_array(&j);
    cli_json_end_object(&j);
    cli_json_finish(&j);
}

static void list_table(const qsnap_node *list, size_t n, const bool *sel, bool parent_col)
{
    size_t wname = 4, wparent = 6;

    for (size_t i = 0; i < n; i++) {
        if (!sel[i])
            continue;
        if (cli_text_width(list[i].name) > wname)
            wname = cli_text_width(list[i].name);
        if (list[i].parent_name && cli_text_width(list[i].parent_name) > wparent)
            wparent = cli_text_width(list[i].parent_name);
    }
    printf("  %-*s  ", (int)wname, "NAME");
    if (parent_col)
        printf("%-*s  ", (int)wparent, "PARENT");
    printf("%-8s  %-19s  %10s  %s\n", "KIND", "CREATED", "SIZE", "DIRTY");
    for (size_t i = 0; i < n; i++) {
        const qsnap_node *e = &list[i];
        char when[32], size[CLI_SIZE_STR_MAX];

        if (!sel[i])
            continue;
        printf("%c ", e->kind == QSNAP_BRANCH && e->current ? '*' : ' ');
        cli_put_padded(stdout, e->name, wname);
        fputs("  ", stdout);
        if (parent_col) {
            cli_put_padded(stdout, e->parent_name ? e->parent_name : "-", wparent);
            fputs("  ", stdout);
        }
        printf("%-8s  %-19s  %10s  %s\n", e->internal ? "internal" : tree_kind_name(e->kind),
               tree_fmt_time(e->created, when),
               cli_fmt_size(e->file_bytes, size),
               e->kind != QSNAP_BRANCH ? "-"
               : e->dirty              ? "yes"
                                       : "no");
    }
}

struct list_args {
    tree_filter f;
    bool tree, json, parent_col;
};

static const cli_command list_cmd = {
    .prog = "qsnap list",
    .help = list_help,
    .usage_status = CLI_EXIT_USAGE,
    .options = (const cli_option[]){
        CLI_FLAG("tree", 0, struct list_args, tree),
        CLI_FLAG("json", 0, struct list_args, json),
        CLI_FLAG("roots", 0, struct list_args, f.roots),
        CLI_FLAG("leaves", 0, struct list_args, f.leaves),
        CLI_FLAG("no-leaves", 0, struct list_args, f.no_leaves),
        CLI_FLAG("parent", 0, struct list_args, parent_col),
        CLI_STRING("from", 0, struct list_args, f.from),
        CLI_FLAG("descendants", 0, struct list_args, f.descendants),
        CLI_FLAG("branches", 0, struct list_args, f.branches),
        CLI_FLAG("internal", 0, struct list_args, f.internal),
        CLI_FLAG("external", 0, struct list_args, f.external),
        CLI_OPTIONS_END,
    },
    CLI_OPERANDS(1, "missing disk"),
};

static int list_check(const void *args)
{
    const struct list_args *a = args;
    const tree_filter *f = &a->f;

    if (f->roots + f->leaves + f->no_leaves > 1)
        return tree_usage("list", "--roots, --leaves and --no-leaves exclude each other");
    if (f->internal && f->external)
        return tree_usage("list", "--internal and --external exclude each other");
    if (f->descendants && !f->from)
        return tree_usage("list", "--descendants needs --from");
    if (f->roots && f->from)
        return tree_usage("list", "--roots and --from exclude each other");
    if (a->tree && a->json)
        return tree_usage("list", "--tree and --json exclude each other (the JSON "
                                  "document has parent links)");
    if (a->tree && a->parent_col)
        return tree_usage("list", "--parent is for the table; --tree shows parents");
    return 0;
}

int cli_tree_list(int argc, char **argv)
{
    struct list_args a;
    tree_filter f;
    bool tree, json, parent_col, *sel = NULL;
    qsnap_node *list = NULL;
    qsnap_store *s = NULL;
    char *disk_abs = NULL;
    size_t n = 0;
    cli_operands op;
    int rc, status;

    memset(&a, 0, sizeof(a));
    if (!tree_parse_open(&list_cmd, argc, argv, &a, list_check, &op, &s, &status))
        return status;
    f = a.f;
    tree = a.tree;
    json = a.json;
    parent_col = a.parent_col;
    rc = qsnap_list(s, &list, &n);
    if (rc < 0) {
        status = tree_fail(rc, op.v[0]);
        goto out;
    }
    sel = calloc(n + 1, sizeof(*sel));
    disk_abs = tree_disk_of(s);
    if (!sel || !disk_abs) {
        cli_errorf("out of memory");
        status = CLI_EXIT_ERROR;
        goto out;
    }
    if (tree && f.from)
        f.descendants = true; /* as virsh: the tree from NAME is its whole subtree */
    if (tree_select(list, n, &f, sel) < 0) {
        status = f.from ? CLI_EXIT_NOTFOUND : CLI_EXIT_ERROR;
        if (f.from)
            fprintf(stderr, "qsnap: hint: 'qsnap list %s' shows the names\n", op.v[0]);
        goto out;
    }
    if (json) {
        list_json(disk_abs, qsnap_store_path(s), list, n, sel);
    } else if (tree) {
        bool color = isatty(STDOUT_FILENO) && !getenv("NO_COLOR");

        tree_view_print(stdout, op.v[0], list, n, sel, f.from, color);
    } else {
        list_table(list, n, sel, parent_col);
    }
out:
    free(sel);
    free(disk_abs);
    if (TREE_FREE_AT_END)
        qsnap_list_free(list, n);
    tree_done(s);
    return status;
}

/* ---- info -------------------------------------------------------------------- */

static const char info_help[] =
    "Usage: qsnap info DISK NAME [--json]\n"
    "\n"
    "Show one snapshot, unnamed node ('(unnamed N)') or branch: its file, parent,\n"
    "children, sizes and state.\n"
    "\n"
    "Options:\n"
    "      --json           print a JSON document\n"
    "  -h, --help           show this help and exit\n"
    "\n" TREE_EXIT_HELP;

/* list[0] is the entry, list[1..n-1] its children (qsnap_info). */
static void info_text(const qsnap_node *list, size_t n)
{
    const qsnap_node *e = &list[0];
    char when[32], vs[CLI_SIZE_STR_MAX], fb[CLI_SIZE_STR_MAX];
    bool first = true;

    printf("name:          %s\n", e->name);
    printf("kind:          %s\n", e->internal ? "internal snapshot" : tree_kind_name(e->kind));
    printf("id:            %u\n", e->id);
    printf("%-15s%s\n", e->kind == QSNAP_BRANCH ? "starts at:" : "parent:",
           e->parent_name ? e->parent_name : "(none)");
    printf("created:       %s\n", tree_fmt_time(e->created, when));
    if (e->description[0]) {
        /* Each line of it under the first, at the same column. */
        const char *d = e->description;
        size_t k = strcspn(d, "\n");
        fputs("description:   ", stdout);
        tree_put_text(stdout, d, k);
        putchar('\n');
        while (d[k] && d[k + 1]) { /* (a newline at the end adds no line) */
            d += k + 1;
            k = strcspn(d, "\n");
            fputs(k ? "               " : "", stdout);
            tree_put_text(stdout, d, k);
            putchar('\n');
        }
    }
    printf("file:          %s\n", e->file);
    printf("virtual size:  %s (%" PRIu64 " bytes)\n", cli_fmt_size(e->virtual_size, vs),
           e->virtual_size);
    printf("file size:     %s (%" PRIu64 " bytes)\n", cli_fmt_size(e->file_bytes, fb),
           e->file_bytes);
    if (e->kind == QSNAP_BRANCH) {
        printf("state:         %s\n", e->dirty ? "dirty" : "clean");
        printf("current:       %s\n", e->current ? "yes" : "no");
    } else {
        printf("children:      ");
        for (size_t k = 1; k < n; k++) {
            printf("%s%s%s", first ? "" : ", ", list[k].kind == QSNAP_BRANCH ? "branch " : "",
                   list[k].name);
            first = false;
        }
        printf("%s\n", first ? "(none)" : "");
        if (e->state_file)
            printf("state file:    %s\n", e->state_file);
    }
}

static const cli_command info_cmd = {
    .prog = "qsnap info",
    .help = info_help,
    .usage_status = CLI_EXIT_USAGE,
    .options = (const cli_option[]){
        CLI_FLAG("json", 0, struct json_args, json),
        CLI_OPTIONS_END,
    },
    CLI_OPERANDS(2, "missing disk", "missing snapshot or branch name"),
};

int cli_tree_info(int argc, char **argv)
{
    struct json_args a = {false};
    qsnap_node *list = NULL;
    qsnap_store *s;
    size_t n = 0;
    bool json;
    cli_operands op;
    int rc, status;

    if (!tree_parse_open(&info_cmd, argc, argv, &a, NULL, &op, &s, &status))
        return status;
    json = a.json;
    rc = qsnap_info(s, op.v[1], &list, &n);
    if (rc < 0) {
        status = tree_fail(rc, op.v[0]);
    } else if (json) {
        cli_json j;

        cli_json_init(&j, stdout);
        cli_json_begin_object(&j, NULL);
        cli_json_uint(&j, "version", TREE_JSON_VERSION);
        json_node_members(&j, &list[0]);
        cli_json_begin_array(&j, "children");
        for (size_t k = 1; k < n; k++)
            cli_json_string(&j, NULL, list[k].name);
        cli_json_end_array(&j);
        cli_json_end_object(&j);
        cli_json_finish(&j);
    } else {
        info_text(list, n);
    }
    qsnap_list_free(list, n);
    qsnap_store_close(s);
    return status;
}

/* ---- diff -------------------------------------------------------------------- */

static const char diff_help[] =
    "Usage: qsnap diff DISK A B [--json]\n"
    "\n"
    "The guest byte ranges whose content differs between A and B (snapshots,\n"
    "unnamed nodes or branches), in 512-byte units: start and end offsets (end\n"
    "excluded, in hex) and the length; --json gives exact bytes. A branch head\n"
    "a running VM writes is not read (exit 5).\n"
    "\n"
    "Options:\n"
    "      --json           print a JSON document\n"
    "  -h, --help           show this help and exit\n"
    "\n" TREE_EXIT_HELP;

static const cli_command diff_cmd = {
    .prog = "qsnap diff",
    .help = diff_help,
    .usage_status = CLI_EXIT_USAGE,
    .options = (const cli_option[]){
        CLI_FLAG("json", 0, struct json_args, json),
        CLI_OPTIONS_END,
    },
    CLI_OPERANDS(3, "missing disk", "diff needs two snapshots or branches",
                 "diff needs two snapshots or branches"),
};

int cli_tree_diff(int argc, char **argv)
{
    struct json_args a = {false};
    qsnap_range *r = NULL;
    qsnap_store *s;
    size_t n = 0;
    uint64_t total = 0;
    bool json;
    cli_operands op;
    int rc, status;

    if (!tree_parse_open(&diff_cmd, argc, argv, &a, NULL, &op, &s, &status))
        return status;
    json = a.json;
    rc = qsnap_diff(s, op.v[1], op.v[2], &r, &n);
    if (rc < 0) {
        status = tree_fail(rc, op.v[0]);
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        total += r[i].length;
    if (json) {
        cli_json j;

        cli_json_init(&j, stdout);
        cli_json_begin_object(&j, NULL);
        cli_json_uint(&j, "version", TREE_JSON_VERSION);
        cli_json_string(&j, "a", op.v[1]);
        cli_json_string(&j, "b", op.v[2]);
        cli_json_uint(&j, "bytes", total);
        cli_json_begin_array(&j, "ranges");
        for (size_t i = 0; i < n; i++) {
            cli_json_begin_object(&j, NULL);
            cli_json_uint(&j, "start", r[i].start);
            cli_json_uint(&j, "length", r[i].length);
            cli_json_end_object(&j);
        }
        cli_json_end_array(&j);
        cli_json_end_object(&j);
        cli_json_finish(&j);
    } else {
        char size[CLI_SIZE_STR_MAX];

        for (size_t i = 0; i < n; i++)
            printf("0x%010" PRIx64 "-0x%010" PRIx64 "  %s\n", r[i].start, r[i].start + r[i].length,
                   cli_fmt_size(r[i].length, size));
        if (n == 0)
            printf("%s and %s have the same content\n", op.v[1], op.v[2]);
        else
            printf("%zu range%s, %s differ\n", n, n == 1 ? "" : "s", cli_fmt_size(total, size));
    }
out:
    free(r);
    qsnap_store_close(s);
    return status;
}

/* ---- du ---------------------------------------------------------------------- */

static const char du_help[] =
    "Usage: qsnap du DISK [--json]\n"
    "\n"
    "For every snapshot, unnamed node and branch: the bytes its own file holds\n"
    "(HOLDS) and the bytes 'qsnap delete' would give back (FREES). A snapshot\n"
    "with one dependent has its data merged into it: it frees its file less\n"
    "what the dependent grows by. FREES is 0 when its data stays for others, or\n"
    "is the disk itself. An internal snapshot holds the clusters of its head's\n"
    "file that only it references; the total leaves those out.\n"
    "\n"
    "Options:\n"
    "      --json           print a JSON document (exact bytes)\n"
    "  -h, --help           show this help and exit\n"
    "\n" TREE_EXIT_HELP;

static const cli_command du_cmd = {
    .prog = "qsnap du",
    .help = du_help,
    .usage_status = CLI_EXIT_USAGE,
    .options = (const cli_option[]){
        CLI_FLAG("json", 0, struct json_args, json),
        CLI_OPTIONS_END,
    },
    CLI_OPERANDS(1, "missing disk"),
};

int cli_tree_du(int argc, char **argv)
{
    struct json_args args = {false};
    qsnap_usage *u = NULL;
    qsnap_store *s;
    size_t n = 0;
    uint64_t holds = 0;
    bool json;
    cli_operands op;
    int rc, status;

    if (!tree_parse_open(&du_cmd, argc, argv, &args, NULL, &op, &s, &status))
        return status;
    json = args.json;
    rc = qsnap_du(s, &u, &n);
    if (rc < 0) {
        status = tree_fail(rc, op.v[0]);
        goto out;
    }
    {
        /* Internal snapshots hold bytes inside their head's file, which is counted already. */
        qsnap_node *list = NULL;
        size_t nl = 0;
        rc = qsnap_list(s, &list, &nl);
        if (rc < 0) {
            status = tree_fail(rc, op.v[0]);
            goto out;
        }
        for (size_t i = 0; i < n; i++) {
            bool inside = false;
            for (size_t k = 0; k < nl; k++)
                inside |= list[k].id == u[i].id && list[k].kind == u[i].kind && list[k].internal;
            holds += inside ? 0 : u[i].holds;
        }
        qsnap_list_free(list, nl);
    }
    if (json) {
        cli_json j;

        cli_json_init(&j, stdout);
        cli_json_begin_object(&j, NULL);
        cli_json_uint(&j, "version", TREE_JSON_VERSION);
        cli_json_uint(&j, "total_bytes", holds);
        cli_json_begin_array(&j, "nodes");
        for (size_t i = 0; i < n; i++) {
            cli_json_begin_object(&j, NULL);
            cli_json_uint(&j, "id", u[i].id);
            cli_json_string(&j, "name", u[i].name);
            cli_json_string(&j, "kind", tree_kind_name(u[i].kind));
            cli_json_uint(&j, "holds", u[i].holds);
            cli_json_uint(&j, "frees", u[i].frees);
            cli_json_end_object(&j);
        }
        cli_json_end_array(&j);
        cli_json_end_object(&j);
        cli_json_finish(&j);
    } else {
        char a[CLI_SIZE_STR_MAX], b[CLI_SIZE_STR_MAX];
        size_t w = 5;

        for (size_t i = 0; i < n; i++)
            if (cli_text_width(u[i].name) > w)
                w = cli_text_width(u[i].name);
        printf("%-*s  %-8s  %10s  %10s\n", (int)w, "NAME", "KIND", "HOLDS", "FREES");
        for (size_t i = 0; i < n; i++) {
            cli_put_padded(stdout, u[i].name, w);
            printf("  %-8s  %10s  %10s\n", tree_kind_name(u[i].kind),
                   cli_fmt_size(u[i].holds, a), cli_fmt_size(u[i].frees, b));
        }
        printf("%-*s  %-8s  %10s\n", (int)w, "total", "", cli_fmt_size(holds, a));
    }
out:
    qsnap_du_free(u, n);
    qsnap_store_close(s);
    return status;
}

/* ---- why --------------------------------------------------------------------- */

static const char why_help[] =
    "Usage: qsnap why DISK NAME\n"
    "\n"
    "What depends on a snapshot or branch, and what deleting (or committing) it\n"
    "would do.\n"
    "\n"
    "Options:\n"
    "  -h, --help           show this help and exit\n"
    "\n" TREE_EXIT_HELP;

static const cli_command why_cmd = {
    .prog = "qsnap why",
    .help = why_help,
    .usage_status = CLI_EXIT_USAGE,
    .options = (const cli_option[]){
        CLI_OPTIONS_END,
    },
    CLI_OPERANDS(2, "missing disk", "missing snapshot or branch name"),
};

int cli_tree_why(int argc, char **argv)
{
    struct json_args a = {false};
    qsnap_store *s;
    char *text = NULL;
    cli_operands op;
    int rc, status;

    if (!tree_parse_open(&why_cmd, argc, argv, &a, NULL, &op, &s, &status))
        return status;
    rc = qsnap_why(s, op.v[1], &text);
    if (rc < 0)
        status = tree_fail(rc, op.v[0]);
    else
        fputs(text, stdout);
    free(text);
    qsnap_store_close(s);
    return status;
}

/* ---- export ------------------------------------------------------------------ */

static const char export_help[] =
    "Usage: qsnap export DISK NAME OUT [-O raw|qcow2] [-p]\n"
    "\n"
    "Write the content of a snapshot or branch as a standalone image OUT (no\n"
    "backing file) and say what was written: the file, its format and virtual\n"
    "size. The store is not changed. OUT is replaced if it exists, but not when\n"
    "it is (by any name) the disk, a file the export reads or anything in the\n"
    "store directory: that is refused (exit 3). A branch head a running VM\n"
    "writes is not read (exit 5).\n"
    "\n"
    "Options:\n"
    "  -O, --format=FMT     raw (default) or qcow2\n"
    "  -p, --progress       show progress\n"
    "  -h, --help           show this help and exit\n"
    "\n" TREE_EXIT_HELP;

struct export_args {
    qcow2_format fmt;
    bool progress;
};

/* -O: raw or qcow2 (the tree's own message, not qemu-img's). */
static int export_format(const char *arg, void *field)
{
    qcow2_format *fmt = field;

    *fmt = qcow2_format_from_name(arg);
    if (*fmt != QCOW2_FORMAT_RAW && *fmt != QCOW2_FORMAT_QCOW2)
        return tree_usage("export", "unknown output format '%s' (raw or qcow2)", arg);
    return 0;
}

static const cli_command export_cmd = {
    .prog = "qsnap export",
    .help = export_help,
    .usage_status = CLI_EXIT_USAGE,
    .options = (const cli_option[]){
        CLI_CONVERT("format", 'O', struct export_args, fmt, export_format),
        CLI_FLAG("progress", 'p', struct export_args, progress),
        CLI_OPTIONS_END,
    },
    CLI_OPERANDS(3, "missing disk", "export needs a snapshot or branch and an output file",
                 "export needs a snapshot or branch and an output file"),
};

/* The line that says what export wrote: its virtual size from the file itself. */
static void export_said(const char *name, const char *out, qcow2_format fmt)
{
    qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img = NULL;
    char nb[256], ob[PATH_MAX], vs[CLI_SIZE_STR_MAX];

    printf("exported %s to %s (%s", cli_safe(name, nb, sizeof(nb)), cli_safe(out, ob, sizeof(ob)),
           qcow2_format_name(fmt));
    oo.format = fmt;
    oo.flags = QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_NO_LOCK;
    /* Not a file that opens again (a device, a pipe): the size is left out. */
    if (qcow2_image_open(&img, out, &oo) == 0)
        printf(", virtual size %s", cli_fmt_size(qcow2_image_size(img), vs));
    qcow2_image_close(img);
    printf(")\n");
}

int cli_tree_export(int argc, char **argv)
{
    struct export_args a = {QCOW2_FORMAT_RAW, false};
    qsnap_store *s;
    cli_progress pr;
    cli_operands op;
    int rc, status;

    if (!tree_parse_open(&export_cmd, argc, argv, &a, NULL, &op, &s, &status))
        return status;
    cli_progress_begin(&pr, a.progress, true);
    rc = qsnap_export(s, op.v[1], op.v[2], a.fmt, cli_progress_update, &pr);
    if (rc < 0) {
        cli_progress_abort(&pr);
        status = tree_fail(rc, op.v[0]);
    } else {
        cli_progress_end(&pr);
        export_said(op.v[1], op.v[2], a.fmt);
    }
    qsnap_store_close(s);
    return status;
}

/* ---- verify ------------------------------------------------------------------ */

static const char verify_help[] =
    "Usage: qsnap verify DISK [--repair] [--json]\n"
    "\n"
    "Check the store: every file exists and passes a check, every backing link and\n"
    "format matches the metadata, no snapshot changed since it was taken (xxh3-128\n"
    "fingerprints), no interrupted operation is pending, no stray files, no store\n"
    "file that is a symbolic link or not a regular file, no leaked cluster in a head.\n"
    "\n"
    "Options:\n"
    "      --repair         finish an interrupted operation (repairing the images it\n"
    "                       was writing), re-point links that differ, restore file\n"
    "                       modes, free leaked clusters of heads and remove\n"
    "                       half-made and temporary files (never a link, nor a\n"
    "                       file of layers/ that qsnap did not make); set aside\n"
    "                       a journal that cannot be read when the store verifies\n"
    "                       without it (as journal.damaged-TIME)\n"
    "      --json           print a JSON document\n"
    "  -h, --help           show this help and exit\n"
    "\n" TREE_EXIT_HELP;

struct verify_args {
    bool repair, json;
};

static const cli_command verify_cmd = {
    .prog = "qsnap verify",
    .help = verify_help,
    .usage_status = CLI_EXIT_USAGE,
    .options = (const cli_option[]){
        CLI_FLAG("repair", 0, struct verify_args, repair),
        CLI_FLAG("json", 0, struct verify_args, json),
        CLI_OPTIONS_END,
    },
    CLI_OPERANDS(1, "missing disk"),
};

int cli_tree_verify(int argc, char **argv)
{
    struct verify_args a = {false, false};
    bool repair, json;
    qsnap_finding *f = NULL;
    qsnap_store *s;
    size_t n = 0, problems = 0;
    cli_operands op;
    int rc, status;

    if (!cli_cmd_parse(&verify_cmd, argc, argv, &a, &op, &status))
        return status;
    repair = a.repair;
    json = a.json;
    /* CREATE: a first create that was interrupted has a journal but no metadata yet. */
    status =
        tree_open(&s, op.v[0], QSNAP_OPEN_CREATE | QSNAP_OPEN_ANY_FILES |
                                     (repair ? 0u : (unsigned)QSNAP_OPEN_READONLY));
    if (status)
        return status;
    rc = qsnap_verify(s, repair, &f, &n);
    for (size_t i = 0; i < n; i++)
        problems += f[i].problem && !f[i].repaired;
    if (json && (rc == 0 || rc == QSNAP_EINTEGRITY)) {
        cli_json j;

        cli_json_init(&j, stdout);
        cli_json_begin_object(&j, NULL);
        cli_json_uint(&j, "version", TREE_JSON_VERSION);
        cli_json_bool(&j, "ok", rc == 0);
        cli_json_bool(&j, "repair", repair);
        cli_json_uint(&j, "problems", problems);
        cli_json_begin_array(&j, "findings");
        for (size_t i = 0; i < n; i++) {
            cli_json_begin_object(&j, NULL);
            cli_json_bool(&j, "problem", f[i].problem);
            cli_json_bool(&j, "repaired", f[i].repaired);
            cli_json_string(&j, "file", f[i].file);
            cli_json_string(&j, "message", f[i].message);
            cli_json_end_object(&j);
        }
        cli_json_end_array(&j);
        cli_json_end_object(&j);
        cli_json_finish(&j);
    } else {
        /* The last line sums up: "ok" only when nothing is left to fix. */
        for (size_t i = 0; i < n; i++)
            printf("%s: %s\n",
                   f[i].problem    ? (f[i].repaired ? "repaired" : "problem")
                   : i + 1 < n || rc == 0 ? "ok"
                                          : "not ok",
                   f[i].message);
    }
    if (rc < 0)
        status = tree_fail(rc, op.v[0]);
    qsnap_verify_free(f, n);
    qsnap_store_close(s);
    return status;
}
