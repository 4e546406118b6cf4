/*
 * `qsnap list`: which nodes the virsh-style filters select, and the --tree
 * drawing. The input is qsnap_list()'s array (snapshots and unnamed nodes,
 * parents first, then branches); a node's parent is the id of a snapshot or
 * unnamed node, a branch's parent the snapshot it starts from.
 *
 * Filters (all given filters must hold):
 *   --roots          nodes without a parent
 *   --leaves         nodes without children (branches count as children, so
 *                    every branch is a leaf, and a snapshot with a branch on
 *                    it is not)
 *   --no-leaves      nodes with children
 *   --from NAME      NAME's children (snapshots, unnamed nodes and branches),
 *                    or with --descendants its whole subtree, NAME excluded;
 *                    --tree draws from NAME and includes it (as virsh does)
 *   --branches       branches only
 *   --internal       internal snapshots only (qsnap_node.internal: kept in
 *                    the qcow2 snapshot table of a branch head, made by
 *                    create --internal); --external: every other node
 *                    (external snapshots, unnamed nodes, branches)
 *
 * With --tree, a node that is not selected but leads to one that is stays in
 * the drawing as structure (its name only, dimmed on a terminal); nodes that
 * lead to nothing selected are left out.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cli_error.h"
#include "fmt.h"
#include "tree.h"

#define COLOR_DIM "\033[2m"
#define COLOR_BOLD "\033[1m"
#define COLOR_GREEN "\033[1;32m"
#define COLOR_YELLOW "\033[33m"
#define COLOR_OFF "\033[0m"

/* Details start at this column at most, so a deep tree does not push them off the screen. */
#define TREE_MAX_ALIGN 48

/* The index of every node's parent in the list (-1: none), from the ids. */
struct id_index {
    unsigned id; /* node id (snapshots and unnamed nodes) */
    size_t idx;  /* its index in the list */
};

static int cmp_id(const void *a, const void *b)
{
    const struct id_index *x = a, *y = b;

    return x->id < y->id ? -1 : x->id > y->id;
}

/* parent[i] for every entry; false when out of memory. */
static bool parent_indexes(const qsnap_node *list, size_t n, long *parent)
{
    struct id_index *ix = malloc((n + 1) * sizeof(*ix));
    size_t k = 0;

    if (!ix)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (list[i].kind != QSNAP_BRANCH) {
            ix[k].id = list[i].id;
            ix[k].idx = i;
            k++;
        }
    }
    qsort(ix, k, sizeof(*ix), cmp_id);
    for (size_t i = 0; i < n; i++) {
        struct id_index key = {list[i].parent, 0};
        const struct id_index *hit =
            list[i].parent ? bsearch(&key, ix, k, sizeof(*ix), cmp_id) : NULL;

        parent[i] = hit ? (long)hit->idx : -1;
    }
    free(ix);
    return true;
}

/* The index of the node named name, or -1. */
static long find_name(const qsnap_node *list, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(list[i].name, name) == 0)
            return (long)i;
    return -1;
}

int tree_select(const qsnap_node *list, size_t n, const tree_filter *f, bool *sel)
{
    long *parent = malloc((n + 1) * sizeof(*parent));
    long from = -1;

    if (!parent || !parent_indexes(list, n, parent)) {
        free(parent);
        cli_errorf("out of memory");
        return -1;
    }
    if (f->from) {
        from = find_name(list, n, f->from);
        if (from < 0) {
            free(parent);
            cli_errorf("no snapshot or branch named '%s'", f->from);
            return -1;
        }
    }
    for (size_t i = 0; i < n; i++) {
        const qsnap_node *e = &list[i];
        bool ok = true;

        if (f->branches && e->kind != QSNAP_BRANCH)
            ok = false;
        if ((f->internal && !e->internal) || (f->external && e->internal))
            ok = false;
        if (f->roots && parent[i] >= 0)
            ok = false;
        if (f->leaves && e->nb_children > 0)
            ok = false;
        if (f->no_leaves && e->nb_children == 0)
            ok = false;
        if (ok && from >= 0) {
            long p = parent[i];
            size_t steps = 0;

            /* Parents come first in the list, so the walk ends within n steps. */
            while (p >= 0 && p != from && f->descendants && steps++ < n)
                p = parent[p];
            ok = p == from;
        }
        sel[i] = ok;
    }
    free(parent);
    return 0;
}

struct view {
    FILE *out;
    const qsnap_node *list;
    size_t n;
    const bool *sel;     /* shown in full */
    const bool *visible; /* shown at all */
    const long *first;   /* first child's index, or -1 */
    const long *next;    /* next sibling's index, or -1 */
    char *prefix;        /* the lines of the levels above */
    size_t prefix_len;   /* bytes used in prefix */
    size_t align;        /* column where details start */
    bool color;
};

/*
 * Columns the lines, marker and name of a node take at depth (0: the --from
 * start, drawn without a line; 1: hanging from the first line).
 */
static size_t label_width(const qsnap_node *e, size_t depth)
{
    return 3 * depth + (e->kind == QSNAP_BRANCH ? 2 : 0) + cli_text_width(e->name);
}

static void put(const struct view *v, const char *color, const char *text)
{
    if (v->color && color)
        fprintf(v->out, "%s%s%s", color, text, COLOR_OFF);
    else
        fputs(text, v->out);
}

/* The details of a node shown in full: date, size and description, or branch state. */
static void details(const struct view *v, const qsnap_node *e, size_t width)
{
    char size[CLI_SIZE_STR_MAX], when[32];

    fprintf(v->out, "%*s", (int)(width < v->align ? v->align - width + 2 : 2), "");
    cli_fmt_size(e->file_bytes, size);
    if (e->kind == QSNAP_BRANCH) {
        put(v, e->dirty ? COLOR_YELLOW : NULL, e->dirty ? "dirty" : "clean");
        fprintf(v->out, "  %s", size);
        if (e->current) {
            fputs("  ", v->out);
            put(v, COLOR_GREEN, "\xe2\x86\x90 you are here");
        }
        return;
    }
    tree_fmt_time(e->created, when);
    when[16] = '\0'; /* minutes are enough in a drawing */
    if (e->internal) /* inside its head's file: no bytes of its own to show */
        fprintf(v->out, "%s  internal", when);
    else
        fprintf(v->out, "%s  %s", when, size);
    if (e->description[0]) {
        /* One line per node: the description's first line, "..." when it has more. */
        size_t first = strcspn(e->description, "\r\n");
        fputs("  \"", v->out);
        tree_put_text(v->out, e->description, first);
        fputs(e->description[first + strspn(e->description + first, "\r\n")] ? "...\"" : "\"",
              v->out);
    }
    if (e->state_file)
        fputs("  +state", v->out);
}

static void draw(struct view *v, long i, size_t depth, bool last)
{
    const qsnap_node *e = &v->list[i];
    size_t saved = v->prefix_len;
    const char *name_color = NULL;

    if (v->prefix_len)
        put(v, COLOR_DIM, v->prefix);
    if (depth > 0)
        put(v, COLOR_DIM, last ? "\xe2\x94\x94\xe2\x94\x80 " : "\xe2\x94\x9c\xe2\x94\x80 ");
    if (e->kind == QSNAP_BRANCH)
        fputs(e->current ? "\xe2\x97\x89 " : "\xe2\x97\x8b ", v->out);
    if (!v->sel[i])
        name_color = COLOR_DIM;
    else if (e->kind == QSNAP_BRANCH && e->current)
        name_color = COLOR_GREEN;
    else if (e->kind == QSNAP_SNAPSHOT)
        name_color = COLOR_BOLD;
    put(v, name_color, e->name);
    if (v->sel[i])
        details(v, e, label_width(e, depth));
    fputc('\n', v->out);
    if (depth > 0) {
        const char *more = last ? "   " : "\xe2\x94\x82  ";
        size_t len = strlen(more);

        memcpy(v->prefix + v->prefix_len, more, len + 1);
        v->prefix_len += len;
    }
    for (long c = v->first[i]; c >= 0;) {
        long nx = v->next[c];

        while (nx >= 0 && !v->visible[nx])
            nx = v->next[nx];
        if (v->visible[c])
            draw(v, c, depth + 1, nx < 0);
        c = nx;
    }
    v->prefix_len = saved;
    v->prefix[saved] = '\0';
}

void tree_view_print(FILE *out, const char *disk, const qsnap_node *list, size_t n, const bool *sel,
                     const char *root, bool color)
{
    long *parent = malloc((n + 1) * sizeof(long));
    long *first = malloc((n + 1) * sizeof(long));
    long *next = malloc((n + 1) * sizeof(long));
    long *tail = malloc((n + 1) * sizeof(long));
    bool *visible = calloc(n + 1, sizeof(bool));
    char *prefix = malloc(6 * (n + 2));
    struct view v;
    long start = root ? find_name(list, n, root) : -1;
    long top_first = -1, top_tail = -1;
    size_t align = 0;

    if (!parent || !first || !next || !tail || !visible || !prefix ||
        !parent_indexes(list, n, parent)) {
        cli_errorf("out of memory");
        goto out;
    }
    /* Children in list order: snapshots by creation, then branches. */
    for (size_t i = 0; i < n; i++) {
        first[i] = next[i] = tail[i] = -1;
    }
    for (size_t i = 0; i < n; i++) {
        long p = parent[i];
        long *head = p >= 0 ? &first[p] : &top_first, *end = p >= 0 ? &tail[p] : &top_tail;

        if (*end >= 0)
            next[*end] = (long)i;
        else
            *head = (long)i;
        *end = (long)i;
    }
    /* Parents come before children, so one backward pass marks every path to a selected node. */
    for (size_t i = n; i-- > 0;) {
        if (sel[i])
            visible[i] = true;
        if (visible[i] && parent[i] >= 0)
            visible[parent[i]] = true;
    }
    memset(&v, 0, sizeof(v));
    v.out = out;
    v.list = list;
    v.n = n;
    v.sel = sel;
    v.visible = visible;
    v.first = first;
    v.next = next;
    v.prefix = prefix;
    v.color = color;
    prefix[0] = '\0';
    if (start >= 0)
        visible[start] = true;
    for (size_t i = 0; i < n; i++) {
        size_t depth = 0, w;
        long p = (long)i;

        if (!visible[i])
            continue;
        for (; p >= 0 && p != start && depth <= n; p = parent[p])
            depth++;
        if (start >= 0 && p != start)
            continue; /* outside the drawn subtree */
        w = label_width(&list[i], depth);
        if (w > align)
            align = w;
    }
    v.align = align < TREE_MAX_ALIGN ? align : TREE_MAX_ALIGN;
    if (start >= 0) {
        draw(&v, start, 0, true);
        goto out;
    }
    put(&v, COLOR_BOLD, disk);
    fputc('\n', out);
    for (long c = top_first; c >= 0;) {
        long nx = next[c];

        while (nx >= 0 && !visible[nx])
            nx = next[nx];
        if (visible[c])
            draw(&v, c, 1, nx < 0);
        c = nx;
    }
out:
    free(parent);
    free(first);
    free(next);
    free(tail);
    free(visible);
    free(prefix);
}
