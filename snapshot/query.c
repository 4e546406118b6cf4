/*
 * Reading a store: listings, the current branch, dirty state, diff, du,
 * why and export. Nothing here changes a file. verify (which also repairs)
 * is in verify.c.
 */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qsnap_int.h"

static int nomem(void)
{
    return qsnap__err(QSNAP_ERROR, NULL, "out of memory");
}

/* Open a layer file read-only without its chain and without locking. */
int qsnap__open_layer(const qsnap_store *s, const struct qsnap__layer *l, unsigned flags,
                      qcow2_image **out)
{
    qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
    char *path = qsnap__path(s, l->file);
    int rc;

    if (!path)
        return nomem();
    oo.flags = flags;
    oo.format = l->fmt;
    /* One layer's own tables (sizes, allocation): a small cache, cheap to set up and
     * free, for commands that open thousands of layers (list). */
    if (flags & QCOW2_OPEN_NO_BACKING)
        oo.cache_bytes = 256u << 10;
    rc = qsnap__image_open(s, path, &oo, out, "'qsnap verify DISK' checks the store");
    free(path);
    return rc;
}

static int head_dirty(const qsnap_store *s, const struct qsnap__layer *l, bool *dirty,
                      uint64_t *bytes);

int qsnap__head_dirty(const qsnap_store *s, const struct qsnap__layer *l, bool *dirty,
                      uint64_t *bytes)
{
    int rc = head_dirty(s, l, dirty, bytes);

    /* Noted for the execution, which checks it again under its hold. */
    if (!rc && l && s->seen) {
        struct qsnap__seen *sn = s->seen;
        struct qsnap__seen_head *v;
        /* The latest look at a head is what a plan decided on. */
        for (size_t i = 0; i < sn->n; i++) {
            if (sn->v[i].id == l->id) {
                sn->v[i].dirty = *dirty;
                return 0;
            }
        }
        v = realloc(sn->v, (sn->n + 1) * sizeof(*v));
        if (!v)
            return nomem();
        sn->v = v;
        v[sn->n].id = l->id;
        v[sn->n].dirty = *dirty;
        sn->n++;
    }
    return rc;
}

void qsnap__seen_reset(const qsnap_store *s)
{
    struct qsnap__seen *sn = s->seen;

    if (!sn)
        return;
    for (size_t i = 0; i < sn->ni; i++)
        free(sn->iv[i].snap);
    sn->n = 0;
    sn->ni = 0;
}

int qsnap__seen_internal(const qsnap_store *s, const struct qsnap__layer *l, const char *snap,
                         bool compared, bool value)
{
    struct qsnap__seen *sn = s->seen;
    struct qsnap__seen_internal *v;

    if (!sn || !l || !snap)
        return 0;
    /* The latest look is what a plan decided on. */
    for (size_t i = 0; i < sn->ni; i++) {
        if (sn->iv[i].id == l->id && sn->iv[i].compared == compared &&
            !strcmp(sn->iv[i].snap, snap)) {
            sn->iv[i].value = value;
            return 0;
        }
    }
    v = realloc(sn->iv, (sn->ni + 1) * sizeof(*v));
    if (!v)
        return nomem();
    sn->iv = v;
    v[sn->ni].snap = strdup(snap);
    if (!v[sn->ni].snap)
        return nomem();
    v[sn->ni].id = l->id;
    v[sn->ni].compared = compared;
    v[sn->ni].value = value;
    sn->ni++;
    return 0;
}

static int differs_internal(const qsnap_store *s, const struct qsnap__layer *l, const char *snap,
                            bool *differs);

/* Whether head l's snapshot table holds one named snap. */
static int has_internal(const qsnap_store *s, const struct qsnap__layer *l, const char *snap,
                        bool *has)
{
    qcow2_image *img = NULL;
    int rc = qsnap__open_layer(s, l, QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_NO_LOCK, &img);

    *has = false;
    if (rc)
        return rc;
    *has = qsnap__find_internal(img, snap) >= 0;
    qcow2_image_close(img);
    return 0;
}

static int changed_err(const qsnap_store *s, const struct qsnap__layer *l, const char *what)
{
    char *path = qsnap__path(s, l->file);
    int rc = qsnap__err(QSNAP_EBUSY,
                        "stop the virtual machine that uses it, then run the command again "
                        "(nothing was changed)",
                        "%s: changed while the operation was planned (%s): something wrote it",
                        path ? path : l->file, what);

    free(path);
    return rc;
}

int qsnap__recheck_seen(const qsnap_store *s)
{
    struct qsnap__seen *sn = s->seen;
    char what[512];
    int rc = 0;

    for (size_t i = 0; sn && !rc && i < sn->n; i++) {
        const struct qsnap__layer *l = qsnap__layer(&s->m, sn->v[i].id);
        bool dirty = false;
        if (!l || l->frozen)
            continue;
        rc = head_dirty(s, l, &dirty, NULL);
        if (!rc && dirty != sn->v[i].dirty) {
            snprintf(what, sizeof(what), "it was %s, now it is %s",
                     sn->v[i].dirty ? "dirty" : "clean", dirty ? "dirty" : "clean");
            rc = changed_err(s, l, what);
        }
    }
    /* Internal snapshots: a qemu-img snapshot made meanwhile, a head written since one. */
    for (size_t i = 0; sn && !rc && i < sn->ni; i++) {
        const struct qsnap__seen_internal *v = &sn->iv[i];
        const struct qsnap__layer *l = qsnap__layer(&s->m, v->id);
        bool now = false;
        if (!l)
            continue;
        rc = v->compared ? differs_internal(s, l, v->snap, &now) : has_internal(s, l, v->snap, &now);
        if (rc || now == v->value)
            continue;
        if (v->compared)
            snprintf(what, sizeof(what), "its state %s internal snapshot %.200s, now it %s",
                     v->value ? "differed from" : "was that of", v->snap,
                     now ? "differs" : "is the same");
        else
            snprintf(what, sizeof(what), "it held %s internal snapshot named %.200s, now it %s",
                     v->value ? "an" : "no", v->snap, now ? "does" : "does not");
        rc = changed_err(s, l, what);
    }
    qsnap__seen_reset(s);
    return rc;
}

static int head_dirty(const qsnap_store *s, const struct qsnap__layer *l, bool *dirty,
                      uint64_t *bytes)
{
    qcow2_image *img = NULL;
    int rc;

    *dirty = false;
    if (bytes)
        *bytes = 0;
    if (!l)
        return 0;
    rc = qsnap__open_layer(s, l, QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_NO_LOCK, &img);
    if (rc)
        return rc;
    for (uint64_t off = 0; off < qcow2_image_size(img);) {
        qcow2_extent e;
        rc = qcow2_image_block_status(img, NULL, off, qcow2_image_size(img) - off, &e);
        if (rc) {
            rc = qsnap__from_qcow2(rc, NULL);
            break;
        }
        if ((e.flags & QCOW2_EXT_PRESENT) && e.depth == 0) {
            *dirty = true;
            if (!bytes)
                break;
            *bytes += e.length;
        }
        off += e.length;
    }
    qcow2_image_close(img);
    return rc;
}

int qsnap__layer_exists(const qsnap_store *s, const struct qsnap__layer *l)
{
    char *path = qsnap__path(s, l->file);
    int rc = 0;

    if (!path)
        return nomem();
    if (!qsnap__file_exists(path))
        rc = qsnap__err(QSNAP_EINTEGRITY, "'qsnap verify DISK' shows what is missing",
                        "%s: file is missing", path);
    free(path);
    return rc;
}

static uint64_t file_bytes(const qsnap_store *s, const struct qsnap__layer *l)
{
    char *path = qsnap__path(s, l->file);
    struct stat st;
    uint64_t v = 0;

    if (path && lstat(path, &st) == 0 && S_ISREG(st.st_mode))
        v = (uint64_t)st.st_blocks * 512;
    free(path);
    return v;
}

static uint64_t virtual_size(const qsnap_store *s, const struct qsnap__layer *l)
{
    qcow2_image *img = NULL;
    uint64_t v = 0;

    if (qsnap__open_layer(s, l, QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_NO_LOCK, &img) == 0)
        v = qcow2_image_size(img);
    qcow2_image_close(img);
    return v;
}

void qsnap_list_free(qsnap_node *list, size_t n)
{
    for (size_t i = 0; list && i < n; i++) {
        free((char *)(uintptr_t)list[i].name);
        free((char *)(uintptr_t)list[i].parent_name);
        free((char *)(uintptr_t)list[i].file);
        free((char *)(uintptr_t)list[i].description);
        free((char *)(uintptr_t)list[i].state_file);
    }
    free(list);
}

static char *node_display_name(const struct qsnap__node *n)
{
    char *s;

    if (n->name)
        return strdup(n->name);
    return asprintf(&s, "(unnamed %u)", n->id) < 0 ? NULL : s;
}

/*
 * What qsnap_list computes once for the whole tree (not once per node: with
 * thousands of nodes, per-node scans of the model are O(n^2)): the number of
 * children per node id, and the virtual size per layer id (many nodes share
 * a layer; 0 = not read yet, else size + 1).
 */
struct list_ctx {
    unsigned max_id;     /* ids above it are not counted (a hostile model) */
    unsigned *children;  /* [max_id + 1] */
    uint64_t *vsize;     /* [max_id + 1] */
    size_t *node_at;     /* [max_id + 1]: index + 1 of the node with this id, 0 = none */
    size_t *layer_at;    /* [max_id + 1]: the same for layers */
};

static struct qsnap__node *ctx_node(const qsnap_store *s, const struct list_ctx *c, unsigned id)
{
    if (!c || id > c->max_id)
        return qsnap__node(&s->m, id);
    return c->node_at[id] ? &s->m.nodes[c->node_at[id] - 1] : NULL;
}

static struct qsnap__layer *ctx_layer(const qsnap_store *s, const struct list_ctx *c, unsigned id)
{
    if (!c || id > c->max_id)
        return qsnap__layer(&s->m, id);
    return c->layer_at[id] ? &s->m.layers[c->layer_at[id] - 1] : NULL;
}

static uint64_t virtual_size_memo(const qsnap_store *s, const struct qsnap__layer *l,
                                  struct list_ctx *c)
{
    uint64_t v;

    /* A frozen layer never changes: its size was recorded when it was frozen. */
    if (l->frozen && l->have_vsize)
        return l->vsize;
    if (!c || l->id > c->max_id)
        return virtual_size(s, l);
    if (c->vsize[l->id])
        return c->vsize[l->id] - 1;
    v = virtual_size(s, l);
    c->vsize[l->id] = v + 1;
    return v;
}

/*
 * What the model says of node n, nothing read from a file: its sizes are left 0,
 * and its child count too unless count (a pass over the model without c).
 */
static int fill_node_meta(const qsnap_store *s, const struct qsnap__node *n, qsnap_node *out,
                          unsigned current_base, const struct list_ctx *c, bool count)
{
    const struct qsnap__node *par = ctx_node(s, c, n->parent);
    const struct qsnap__layer *l = ctx_layer(s, c, n->layer);

    memset(out, 0, sizeof(*out));
    out->kind = n->name ? QSNAP_SNAPSHOT : QSNAP_UNNAMED;
    out->id = n->id;
    out->name = node_display_name(n);
    out->parent = n->parent;
    out->parent_name = par ? node_display_name(par) : NULL;
    out->file = l ? qsnap__path(s, l->file) : NULL;
    out->description = strdup(n->desc ? n->desc : "");
    out->created = n->created;
    out->current = n->id == current_base;
    out->internal = n->internal != NULL;
    out->state_file = n->state ? qsnap__path(s, n->state) : NULL;
    if (c && n->id <= c->max_id) {
        out->nb_children = c->children[n->id];
    } else if (count) {
        for (size_t i = 0; i < s->m.nn; i++)
            out->nb_children += s->m.nodes[i].parent == n->id;
        for (size_t i = 0; i < s->m.nb; i++)
            out->nb_children += s->m.branches[i].base == n->id;
    }
    if (!out->name || (l && !out->file) || !out->description || (n->state && !out->state_file))
        return nomem();
    return 0;
}

static int fill_node(const qsnap_store *s, const struct qsnap__node *n, qsnap_node *out,
                     unsigned current_base, struct list_ctx *c)
{
    const struct qsnap__layer *l = ctx_layer(s, c, n->layer);
    int rc = fill_node_meta(s, n, out, current_base, c, true);

    if (rc)
        return rc;
    if (!l)
        return nomem(); /* (as before: a node without its layer has no file to show) */
    if (n->internal) {
        /* It shares its head's file: its size is the snapshot's. */
        qcow2_image *img = NULL;
        long at;
        qcow2_snapshot_info si;
        if (qsnap__open_layer(s, l, QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_NO_LOCK, &img) == 0 &&
            (at = qsnap__find_internal(img, n->internal)) >= 0 &&
            qcow2_snapshot_get(img, (size_t)at, &si) == 0)
            out->virtual_size = si.disk_size;
        qcow2_image_close(img);
    } else {
        out->virtual_size = virtual_size_memo(s, l, c);
        out->file_bytes = file_bytes(s, l);
    }
    return 0;
}

/* What the model says of branch b, nothing read from a file (sizes 0, dirty false). */
static int fill_branch_meta(const qsnap_store *s, const struct qsnap__branch *b, qsnap_node *out,
                            const struct list_ctx *c)
{
    const struct qsnap__node *base = ctx_node(s, c, b->base);
    const struct qsnap__layer *h = ctx_layer(s, c, b->head);

    memset(out, 0, sizeof(*out));
    out->kind = QSNAP_BRANCH;
    out->id = b->head;
    out->name = strdup(b->name);
    out->parent = b->base;
    out->parent_name = base ? node_display_name(base) : NULL;
    out->file = h ? qsnap__path(s, h->file) : NULL;
    out->description = strdup("");
    out->created = b->created;
    out->current = s->m.current && !strcmp(s->m.current, b->name);
    if (!out->name || !out->file || !out->description)
        return nomem();
    return 0;
}

static int fill_branch(const qsnap_store *s, const struct qsnap__branch *b, qsnap_node *out,
                       const struct list_ctx *c)
{
    const struct qsnap__node *base = ctx_node(s, c, b->base);
    const struct qsnap__layer *h = ctx_layer(s, c, b->head);
    int rc = fill_branch_meta(s, b, out, c);

    if (rc)
        return rc;
    if (base && base->internal && h && base->layer == h->id)
        rc = qsnap__differs_from_internal(s, h, base->internal, &out->dirty);
    else
        rc = qsnap__head_dirty(s, h, &out->dirty, NULL);
    out->virtual_size = h ? virtual_size(s, h) : 0;
    out->file_bytes = h ? file_bytes(s, h) : 0;
    return rc;
}

/*
 * Depth-first order from the roots, children by creation (their order in the
 * model). kids: node indexes grouped by parent id (first[p] .. first[p + 1]),
 * so that each node is visited once. An explicit stack: a chain of thousands
 * of snapshots is no deep recursion.
 */
static int topo(const struct qsnap__model *m, unsigned max_id, unsigned *order, size_t *n)
{
    size_t *first = calloc((size_t)max_id + 2, sizeof(size_t)), *fill = NULL;
    unsigned *kids = calloc(m->nn + 1, sizeof(unsigned));
    struct frame {
        unsigned parent;
        size_t next;
    } *stack = calloc(m->nn + 1, sizeof(*stack));
    size_t depth = 0;

    if (!first || !kids || !stack)
        goto oom;
    for (size_t i = 0; i < m->nn; i++) {
        if (m->nodes[i].parent <= max_id)
            first[m->nodes[i].parent + 1]++;
    }
    for (size_t p = 0; p <= max_id; p++)
        first[p + 1] += first[p];
    fill = malloc(((size_t)max_id + 1) * sizeof(size_t));
    if (!fill)
        goto oom;
    memcpy(fill, first, ((size_t)max_id + 1) * sizeof(size_t));
    for (size_t i = 0; i < m->nn; i++) {
        if (m->nodes[i].parent <= max_id)
            kids[fill[m->nodes[i].parent]++] = (unsigned)i;
    }
    stack[0].parent = 0;
    stack[0].next = first[0];
    depth = 1;
    while (depth) {
        struct frame *f = &stack[depth - 1];
        unsigned i;
        if (f->next >= first[f->parent + 1]) {
            depth--;
            continue;
        }
        i = kids[f->next++];
        order[(*n)++] = i;
        /* A node that is its own ancestor (a hostile model) is not followed. */
        if (m->nodes[i].id <= max_id && depth <= m->nn && *n <= m->nn) {
            stack[depth].parent = m->nodes[i].id;
            stack[depth].next = first[m->nodes[i].id];
            depth++;
        }
    }
    free(first);
    free(fill);
    free(kids);
    free(stack);
    return 0;
oom:
    free(first);
    free(fill);
    free(kids);
    free(stack);
    return nomem();
}

int qsnap_list(qsnap_store *s, qsnap_node **out, size_t *n_out)
{
    const struct qsnap__branch *cur = qsnap__branch_by_name(&s->m, s->m.current);
    size_t total = s->m.nn + s->m.nb, k = 0, norder = 0;
    unsigned *order = calloc(s->m.nn + 1, sizeof(unsigned));
    qsnap_node *list = calloc(total + 1, sizeof(*list));
    struct list_ctx ctx = {0, NULL, NULL, NULL, NULL};
    int rc = 0;

    *out = NULL;
    *n_out = 0;
    if (!order || !list) {
        free(order);
        free(list);
        return nomem();
    }
    {
        unsigned max_id = 0;
        for (size_t i = 0; i < s->m.nl; i++)
            max_id = s->m.layers[i].id > max_id ? s->m.layers[i].id : max_id;
        for (size_t i = 0; i < s->m.nn; i++)
            max_id = s->m.nodes[i].id > max_id ? s->m.nodes[i].id : max_id;
        ctx.max_id = max_id;
        ctx.children = calloc((size_t)max_id + 1, sizeof(unsigned));
        ctx.vsize = calloc((size_t)max_id + 1, sizeof(uint64_t));
        ctx.node_at = calloc((size_t)max_id + 1, sizeof(size_t));
        ctx.layer_at = calloc((size_t)max_id + 1, sizeof(size_t));
        if (!ctx.children || !ctx.vsize || !ctx.node_at || !ctx.layer_at)
            rc = nomem();
        for (size_t i = 0; !rc && i < s->m.nl; i++)
            ctx.layer_at[s->m.layers[i].id] = i + 1;
        for (size_t i = 0; !rc && i < s->m.nn; i++)
            ctx.node_at[s->m.nodes[i].id] = i + 1;
        for (size_t i = 0; !rc && i < s->m.nn; i++) {
            if (s->m.nodes[i].parent && s->m.nodes[i].parent <= max_id)
                ctx.children[s->m.nodes[i].parent]++;
        }
        for (size_t i = 0; !rc && i < s->m.nb; i++) {
            if (s->m.branches[i].base && s->m.branches[i].base <= max_id)
                ctx.children[s->m.branches[i].base]++;
        }
        if (!rc)
            rc = topo(&s->m, max_id, order, &norder);
    }
    for (size_t i = 0; i < norder && !rc; i++)
        rc = fill_node(s, &s->m.nodes[order[i]], &list[k++], cur ? cur->base : 0, &ctx);
    for (size_t i = 0; i < s->m.nb && !rc; i++)
        rc = fill_branch(s, &s->m.branches[i], &list[k++], &ctx);
    free(order);
    free(ctx.children);
    free(ctx.vsize);
    free(ctx.node_at);
    free(ctx.layer_at);
    if (rc) {
        qsnap_list_free(list, k);
        return rc;
    }
    *out = list;
    *n_out = k;
    return 0;
}

int qsnap_current(qsnap_store *s, qsnap_node **out)
{
    const struct qsnap__branch *cur = qsnap__branch_by_name(&s->m, s->m.current);
    qsnap_node *n;
    int rc;

    *out = NULL;
    if (!cur)
        return qsnap__err(QSNAP_ENOTFOUND, "'qsnap create DISK' makes the first snapshot",
                          "%s: no current branch", s->disk_abs);
    n = calloc(1, sizeof(*n));
    if (!n)
        return nomem();
    rc = fill_branch(s, cur, n, NULL);
    if (rc) {
        qsnap_list_free(n, 1);
        return rc;
    }
    *out = n;
    return 0;
}

/* The node called name, or "(unnamed N)" for the unnamed node N (the listing's name). */
static const struct qsnap__node *node_by_display_name(const struct qsnap__model *m,
                                                      const char *name)
{
    static const char un[] = "(unnamed ";
    const struct qsnap__node *n;
    char *end;
    unsigned long id;

    if (strncmp(name, un, sizeof(un) - 1))
        return qsnap__node_by_name(m, name);
    if (name[sizeof(un) - 1] < '1' || name[sizeof(un) - 1] > '9')
        return NULL;
    errno = 0;
    id = strtoul(name + sizeof(un) - 1, &end, 10);
    if (errno || id > UINT_MAX || strcmp(end, ")"))
        return NULL;
    n = qsnap__node(m, (unsigned)id);
    return n && !n->name ? n : NULL;
}

int qsnap_info(qsnap_store *s, const char *name, qsnap_node **out, size_t *n_out)
{
    const struct qsnap__branch *cur = qsnap__branch_by_name(&s->m, s->m.current);
    const struct qsnap__node *n = name ? node_by_display_name(&s->m, name) : NULL;
    const struct qsnap__branch *b = name && !n ? qsnap__branch_by_name(&s->m, name) : NULL;
    size_t kids = 0, k = 1;
    qsnap_node *list;
    int rc;

    *out = NULL;
    *n_out = 0;
    if (!n && !b)
        return qsnap__err(QSNAP_ENOTFOUND, "'qsnap list DISK' shows the names",
                          "no snapshot or branch named '%s'", name ? name : "");
    /* A branch has no children; a node's are the nodes and branches on it. */
    for (size_t i = 0; n && i < s->m.nn; i++)
        kids += s->m.nodes[i].parent == n->id;
    for (size_t i = 0; n && i < s->m.nb; i++)
        kids += s->m.branches[i].base == n->id;
    list = calloc(kids + 1, sizeof(*list));
    if (!list)
        return nomem();
    rc = n ? fill_node(s, n, &list[0], cur ? cur->base : 0, NULL)
           : fill_branch(s, b, &list[0], NULL);
    for (size_t i = 0; n && !rc && i < s->m.nn; i++) {
        if (s->m.nodes[i].parent == n->id)
            rc = fill_node_meta(s, &s->m.nodes[i], &list[k++], cur ? cur->base : 0, NULL, false);
    }
    for (size_t i = 0; n && !rc && i < s->m.nb; i++) {
        if (s->m.branches[i].base == n->id)
            rc = fill_branch_meta(s, &s->m.branches[i], &list[k++], NULL);
    }
    if (rc) {
        qsnap_list_free(list, k);
        return rc;
    }
    *out = list;
    *n_out = k;
    return 0;
}

/* ---- diff, du, why, export ------------------------------------------------------ */

/* The file whose chain holds a snapshot's or branch's content. */
static int resolve(const qsnap_store *s, const char *name, const struct qsnap__layer **out)
{
    const struct qsnap__node *n = qsnap__node_by_name(&s->m, name);
    const struct qsnap__branch *b = qsnap__branch_by_name(&s->m, name);

    *out = n ? qsnap__layer(&s->m, n->layer) : b ? qsnap__layer(&s->m, b->head) : NULL;
    if (!*out)
        return qsnap__err(QSNAP_ENOTFOUND, "'qsnap list DISK' shows the names",
                          "no snapshot or branch named '%s'", name ? name : "");
    return 0;
}

static int open_chain_flags(const qsnap_store *s, const char *name, unsigned flags,
                            qcow2_image **out)
{
    const struct qsnap__node *n = qsnap__node_by_name(&s->m, name);
    const struct qsnap__layer *l;
    int rc = resolve(s, name, &l);

    if (!rc)
        rc = qsnap__open_layer(s, l, flags, out);
    if (!rc && n && n->internal) {
        /* An internal node: the head file (read-only) showing the snapshot. */
        long at = qsnap__find_internal(*out, n->internal);
        qcow2_snapshot_info si;
        int qrc = at < 0 ? QCOW2_ENOTFOUND : qcow2_snapshot_get(*out, (size_t)at, &si);
        if (!qrc)
            qrc = qcow2_image_view_snapshot(*out, si.id);
        if (qrc) {
            rc = at < 0 ? qsnap__err(QSNAP_EINTEGRITY, "'qsnap verify DISK' checks the store",
                                     "%s: internal snapshot %s of %s is missing", l->file,
                                     n->internal, name)
                        : qsnap__from_qcow2(qrc, NULL);
            qcow2_image_close(*out);
            *out = NULL;
        }
    }
    return rc;
}

/*
 * The chain of a snapshot or branch for reading (diff, export), with the shared
 * read locks qemu-img convert takes: a head a running QEMU writes is refused
 * (QSNAP_EBUSY), not read half-written.
 */
static int open_chain(const qsnap_store *s, const char *name, qcow2_image **out)
{
    const struct qsnap__layer *l = NULL;
    int rc = open_chain_flags(s, name, 0, out);

    /* Every frozen file of the chain as it was frozen (its size and mtime: a stat each,
     * no hashing), once open: data read through one changed behind qsnap's back is not
     * the snapshot's. */
    if (!rc && resolve(s, name, &l) == 0) {
        rc = qsnap__check_chain(s, &s->m, l->id);
        if (rc) {
            qcow2_image_close(*out);
            *out = NULL;
        }
    }

    if (rc == QSNAP_EBUSY) {
        char *msg = strdup(qsnap_error_last()->message);
        rc = qsnap__err(QSNAP_EBUSY,
                        "shut down the virtual machine that uses it, then run the command again "
                        "(nothing was changed)",
                        "%s", msg ? msg : "an image is in use");
        free(msg);
    }
    return rc;
}

int qsnap_open_image(qsnap_store *s, const char *name, unsigned flags, qcow2_image **out)
{
    if (!out)
        return qsnap__err(QSNAP_EUSAGE, NULL, "qsnap_open_image: no place for the image");
    *out = NULL;
    if (!s || !name)
        return qsnap__err(QSNAP_EUSAGE, NULL, "qsnap_open_image: no store or name");
    if (flags & ~(unsigned)QCOW2_OPEN_RDWR)
        return qsnap__err(QSNAP_EUSAGE, NULL, "qsnap_open_image: unknown flags 0x%x", flags);
    /* A handle whose store directory was replaced would give out the old one's files. */
    if (qsnap__store_dirs_recheck(s))
        return QSNAP_ERROR;
    if ((flags & QCOW2_OPEN_RDWR) && !qsnap__branch_by_name(&s->m, name)) {
        if (!qsnap__node_by_name(&s->m, name))
            return qsnap__err(QSNAP_ENOTFOUND, "'qsnap list DISK' shows the names",
                              "no snapshot or branch named '%s'", name);
        return qsnap__err(QSNAP_EUSAGE, "snapshots are served and mounted read-only",
                          "'%s' is a snapshot: it cannot be written", name);
    }
    /* Locks as QEMU takes them: shared for reading, exclusive on a written head. */
    int rc = open_chain_flags(s, name, flags, out);
    if (rc == QSNAP_EBUSY) {
        char *msg = strdup(qsnap_error_last()->message);
        rc = qsnap__err(QSNAP_EBUSY, "stop the program that uses it first", "%s",
                        msg ? msg : "an image is in use");
        free(msg);
    }
    return rc;
}

static int add_range(qsnap_range **r, size_t *n, size_t *cap, uint64_t start, uint64_t len)
{
    if (*n && (*r)[*n - 1].start + (*r)[*n - 1].length == start) {
        (*r)[*n - 1].length += len;
        return 0;
    }
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 64;
        qsnap_range *p = realloc(*r, c * sizeof(*p));
        if (!p)
            return nomem();
        *r = p;
        *cap = c;
    }
    (*r)[*n].start = start;
    (*r)[*n].length = len;
    (*n)++;
    return 0;
}

/* Whether two runs map to the same bytes of the same file (so they hold the same data). */
static bool same_storage(const qcow2_extent *a, const qcow2_extent *b)
{
    struct stat sa, sb;

    if (!(a->flags & QCOW2_EXT_OFFSET_VALID) || !(b->flags & QCOW2_EXT_OFFSET_VALID) ||
        a->host_off != b->host_off || (a->flags & QCOW2_EXT_ZERO) != (b->flags & QCOW2_EXT_ZERO))
        return false;
    return stat(qcow2_image_filename(a->layer), &sa) == 0 &&
           stat(qcow2_image_filename(b->layer), &sb) == 0 && sa.st_ino == sb.st_ino &&
           sa.st_dev == sb.st_dev;
}

int qsnap__differs_from_internal(const qsnap_store *s, const struct qsnap__layer *l,
                                 const char *snap, bool *differs)
{
    int rc = differs_internal(s, l, snap, differs);

    /* Noted for the execution, which compares again under its hold. */
    return rc ? rc : qsnap__seen_internal(s, l, snap, true, *differs);
}

static int differs_internal(const qsnap_store *s, const struct qsnap__layer *l, const char *snap,
                            bool *differs)
{
    qcow2_image *act = NULL, *img = NULL;
    const unsigned flags = QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_NO_LOCK;
    long at;
    int rc;

    *differs = true;
    rc = qsnap__open_layer(s, l, flags, &act);
    if (!rc)
        rc = qsnap__open_layer(s, l, flags, &img);
    if (rc)
        goto out;
    at = qsnap__find_internal(img, snap);
    if (at < 0) {
        rc = qsnap__err(QSNAP_EINTEGRITY, "'qsnap verify DISK' checks the store",
                        "%s: internal snapshot %s is missing", l->file, snap);
        goto out;
    }
    {
        qcow2_snapshot_info si;
        rc = qcow2_snapshot_get(img, (size_t)at, &si);
        if (!rc)
            rc = qcow2_image_view_snapshot(img, si.id);
        if (rc) {
            rc = qsnap__from_qcow2(rc, NULL);
            goto out;
        }
    }
    if (qcow2_image_size(act) != qcow2_image_size(img))
        goto out;
    /* The same clusters (or both unallocated, or both zero) everywhere: the same state. */
    for (uint64_t off = 0, size = qcow2_image_size(act); off < size;) {
        qcow2_extent ea, eb;
        bool pa, pb;
        rc = qcow2_image_block_status(act, NULL, off, size - off, &ea);
        if (!rc)
            rc = qcow2_image_block_status(img, NULL, off, ea.length, &eb);
        if (rc) {
            rc = qsnap__from_qcow2(rc, NULL);
            goto out;
        }
        pa = (ea.flags & QCOW2_EXT_PRESENT) && ea.depth == 0;
        pb = (eb.flags & QCOW2_EXT_PRESENT) && eb.depth == 0;
        if (pa != pb)
            goto out;
        if (pa && !same_storage(&ea, &eb) &&
            !((ea.flags & QCOW2_EXT_ZERO) && (eb.flags & QCOW2_EXT_ZERO)))
            goto out;
        off += eb.length;
    }
    *differs = false;
out:
    qcow2_image_close(act);
    qcow2_image_close(img);
    return rc;
}

int qsnap_diff(qsnap_store *s, const char *a, const char *b, qsnap_range **out, size_t *n_out)
{
    qcow2_image *ia = NULL, *ib = NULL;
    const size_t chunk = 1u << 20;
    uint8_t *ba = malloc(chunk), *bb = malloc(chunk);
    qsnap_range *r = NULL;
    size_t n = 0, cap = 0;
    uint64_t size;
    int rc;

    *out = NULL;
    *n_out = 0;
    rc = (ba && bb) ? open_chain(s, a, &ia) : nomem();
    if (!rc)
        rc = open_chain(s, b, &ib);
    if (rc)
        goto out;
    size = qcow2_image_size(ia) > qcow2_image_size(ib) ? qcow2_image_size(ia) : qcow2_image_size(ib);
    for (uint64_t off = 0; off < size && !rc;) {
        qcow2_extent ea, eb;
        uint64_t len = size - off < chunk ? size - off : chunk;
        bool a_in = off < qcow2_image_size(ia), b_in = off < qcow2_image_size(ib);

        if (a_in && b_in) {
            uint64_t lim = qcow2_image_size(ia) < qcow2_image_size(ib) ? qcow2_image_size(ia)
                                                                       : qcow2_image_size(ib);
            len = len < lim - off ? len : lim - off;
            rc = qcow2_image_block_status(ia, NULL, off, len, &ea);
            if (!rc)
                rc = qcow2_image_block_status(ib, NULL, off, ea.length, &eb);
            if (rc)
                break;
            len = eb.length;
            if (((ea.flags & QCOW2_EXT_ZERO) && (eb.flags & QCOW2_EXT_ZERO)) ||
                same_storage(&ea, &eb)) {
                off += len;
                continue;
            }
        } else {
            uint64_t lim = a_in ? qcow2_image_size(ia) : qcow2_image_size(ib);
            len = len < lim - off ? len : lim - off;
        }
        memset(ba, 0, (size_t)len);
        memset(bb, 0, (size_t)len);
        if (a_in)
            rc = qcow2_image_read(ia, ba, (size_t)len, off);
        if (!rc && b_in)
            rc = qcow2_image_read(ib, bb, (size_t)len, off);
        for (uint64_t i = 0; !rc && i < len; i += 512) {
            uint64_t m = len - i < 512 ? len - i : 512;
            if (memcmp(ba + i, bb + i, (size_t)m) != 0)
                rc = add_range(&r, &n, &cap, off + i, m);
        }
        off += len;
    }
    if (rc && rc != QSNAP_ERROR)
        rc = qsnap__from_qcow2(rc, NULL); /* a libqcow2 code from a read or status call */
out:
    qcow2_image_close(ia);
    qcow2_image_close(ib);
    free(ba);
    free(bb);
    if (rc) {
        free(r);
        return rc;
    }
    *out = r;
    *n_out = n;
    return 0;
}

void qsnap_du_free(qsnap_usage *u, size_t n)
{
    for (size_t i = 0; u && i < n; i++)
        free((char *)(uintptr_t)u[i].name);
    free(u);
}

/*
 * What merging layer l into its one dependent d (a delete, plan_delete.c: d
 * streams what l holds where d holds nothing itself) adds to d's file: a data
 * cluster of d for each one l's data touches there, and an L2 table for each
 * table's worth of guest space d had nothing in. Zero clusters cost no data.
 * Refcount blocks d may need on top are not counted (one per several GiB).
 * *grow: the bytes; unknown (a file that does not open): UINT64_MAX.
 */
static void merge_growth(const qsnap_store *s, const struct qsnap__layer *l,
                        const struct qsnap__layer *d, uint64_t *grow)
{
    qcow2_image *li = NULL, *di = NULL;
    qcow2_info info;
    uint64_t cs, span, end, last_c = UINT64_MAX, last_t = UINT64_MAX, g = 0;
    int rc = 0;

    *grow = UINT64_MAX;
    if (qsnap__open_layer(s, l, QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_NO_LOCK, &li) ||
        qsnap__open_layer(s, d, QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_NO_LOCK, &di) ||
        qcow2_image_get_info(di, &info) || !info.cluster_size) {
        qcow2_image_close(li);
        qcow2_image_close(di);
        return;
    }
    cs = info.cluster_size;
    span = cs / (info.extended_l2 ? 16 : 8) * cs; /* guest bytes one L2 table maps */
    end = qcow2_image_size(li) < qcow2_image_size(di) ? qcow2_image_size(li)
                                                      : qcow2_image_size(di);
    for (uint64_t off = 0; !rc && off < end;) {
        qcow2_extent e, f;
        rc = qcow2_image_block_status(li, NULL, off, end - off, &e);
        if (rc || !(e.flags & QCOW2_EXT_PRESENT)) {
            off += rc ? 0 : e.length;
            continue;
        }
        /* Where d holds nothing itself, this run of l goes into d. */
        for (uint64_t o = off; !rc && o < off + e.length; o += f.length) {
            rc = qcow2_image_block_status(di, NULL, o, off + e.length - o, &f);
            if (rc || (f.flags & QCOW2_EXT_PRESENT))
                continue;
            if (!(e.flags & QCOW2_EXT_ZERO)) {
                for (uint64_t c = o / cs; c <= (o + f.length - 1) / cs; c++) {
                    g += c != last_c ? cs : 0;
                    last_c = c;
                }
            }
            /* A table's worth of guest space d has nothing in: a new L2 table. */
            for (uint64_t t = o / span; t <= (o + f.length - 1) / span; t++) {
                qcow2_extent h;
                uint64_t t0 = t * span, tn = span < qcow2_image_size(di) - t0
                                                ? span
                                                : qcow2_image_size(di) - t0;
                if (t == last_t)
                    continue;
                last_t = t;
                if (qcow2_image_block_status(di, NULL, t0, tn, &h) == 0 &&
                    !(h.flags & QCOW2_EXT_PRESENT) && h.length == tn)
                    g += cs;
            }
        }
        off += e.length;
    }
    qcow2_image_close(li);
    qcow2_image_close(di);
    if (!rc)
        *grow = g;
}

/*
 * What a delete of leaf n also frees: the unnamed nodes above it that were only
 * for their dependents and that nothing else needs once n goes (plan_delete.c,
 * drop_unnamed_leaves), each with its layer. kids: child nodes and branches per
 * node position; users, deps: nodes of, and layers on, each layer (by position).
 */
static uint64_t pruned_bytes(const qsnap_store *s, const struct qsnap__index *x,
                             const struct qsnap__node *n, const unsigned *kids,
                             const unsigned *users, const unsigned *deps)
{
    const struct qsnap__layer *below = qsnap__index_layer(x, n->layer);
    uint64_t b = 0;

    for (size_t steps = 0; below && steps < s->m.nn; steps++) {
        const struct qsnap__node *u = n->parent ? qsnap__index_node(x, n->parent) : NULL;
        const struct qsnap__layer *l = u ? qsnap__index_layer(x, u->layer) : NULL;
        /* Its one child node is the one going, its layer backs only that one's. */
        if (!l || u->name || !u->for_deps || u->internal || u->state || l->is_disk ||
            users[l - s->m.layers] > 1 || deps[l - s->m.layers] != 1 ||
            kids[u - s->m.nodes] != 1 || below->backing != l->id)
            break;
        b += file_bytes(s, l);
        n = u;
        below = l;
    }
    return b;
}

int qsnap_du(qsnap_store *s, qsnap_usage **out, size_t *n_out)
{
    qsnap_node *list = NULL;
    size_t n = 0;
    qsnap_usage *u;
    struct qsnap__index x;
    /* By layer position: layers on it, nodes of it, the last layer on it, internal nodes. */
    unsigned *deps_of = NULL, *users_of = NULL;
    size_t *dep_at = NULL;
    bool *internal_in = NULL;
    unsigned *kids = NULL; /* by node position: child nodes and branches */
    int rc = qsnap_list(s, &list, &n);

    if (rc)
        return rc;
    rc = qsnap__index_build(&x, &s->m, false);
    if (rc) {
        qsnap_list_free(list, n);
        return rc;
    }
    u = calloc(n + 1, sizeof(*u));
    deps_of = calloc(s->m.nl + 1, sizeof(*deps_of));
    users_of = calloc(s->m.nl + 1, sizeof(*users_of));
    dep_at = calloc(s->m.nl + 1, sizeof(*dep_at));
    internal_in = calloc(s->m.nl + 1, sizeof(*internal_in));
    kids = calloc(s->m.nn + 1, sizeof(*kids));
    if (!u || !deps_of || !users_of || !dep_at || !internal_in || !kids) {
        free(kids);
        free(u);
        free(deps_of);
        free(users_of);
        free(dep_at);
        free(internal_in);
        qsnap__index_free(&x);
        qsnap_list_free(list, n);
        return nomem();
    }
    /* Counted once for all entries (each entry walking the model made du quadratic). */
    for (size_t j = 0; j < s->m.nl; j++) {
        const struct qsnap__layer *b = qsnap__index_layer(&x, s->m.layers[j].backing);
        if (b) {
            deps_of[b - s->m.layers]++;
            dep_at[b - s->m.layers] = j;
        }
    }
    for (size_t j = 0; j < s->m.nn; j++) {
        const struct qsnap__layer *b = qsnap__index_layer(&x, s->m.nodes[j].layer);
        if (b) {
            users_of[b - s->m.layers]++;
            internal_in[b - s->m.layers] |= s->m.nodes[j].internal != NULL;
        }
        const struct qsnap__node *up = s->m.nodes[j].parent
                                           ? qsnap__index_node(&x, s->m.nodes[j].parent)
                                           : NULL;
        if (up)
            kids[up - s->m.nodes]++;
    }
    for (size_t j = 0; j < s->m.nb; j++) {
        const struct qsnap__node *up = s->m.branches[j].base
                                           ? qsnap__index_node(&x, s->m.branches[j].base)
                                           : NULL;
        if (up)
            kids[up - s->m.nodes]++;
    }
    for (size_t i = 0; i < n; i++) {
        const struct qsnap__layer *l = NULL;
        size_t deps = 0;
        bool shared = false;

        u[i].id = list[i].id;
        u[i].kind = list[i].kind;
        u[i].name = strdup(list[i].name);
        u[i].holds = list[i].file_bytes;
        if (list[i].kind == QSNAP_BRANCH) {
            u[i].frees = list[i].file_bytes; /* deleting a branch removes its head */
            continue;
        }
        const struct qsnap__node *nd = qsnap__index_node(&x, list[i].id);
        l = nd ? qsnap__index_layer(&x, nd->layer) : NULL;
        if (!l) /* the graph is checked: every node has its layer */
            continue;
        if (list[i].internal) {
            /* Inside its head's file: what only it references there, which deleting it frees. */
            const char *snap = nd->internal;
            qcow2_image *img = NULL;
            uint64_t b = 0;
            if (qsnap__open_layer(s, l, QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_NO_LOCK, &img) == 0 &&
                qcow2_snapshot_unique_bytes(img, snap, &b) != 0)
                b = 0;
            qcow2_image_close(img);
            u[i].holds = b;
            /* One kept in an adopted frozen layer cannot be deleted: it frees nothing. */
            u[i].frees = l->frozen ? 0 : b;
            continue;
        }
        deps = deps_of[l - s->m.layers];
        shared = users_of[l - s->m.layers] > 1; /* another node has it too */
        /* A leaf's layer goes; a layer with one dependent is merged into it (what it frees:
         * its file less what the dependent grows by); else kept (the delete plan's rules). */
        if (deps == 1 && !l->is_disk && !shared) {
            size_t d = dep_at[l - s->m.layers];
            uint64_t grow = 0;
            if (qsnap__delete_merges(&s->m.layers[d], internal_in[d], 0))
                merge_growth(s, l, &s->m.layers[d], &grow);
            else
                grow = UINT64_MAX; /* kept as an unnamed node */
            u[i].frees = grow < list[i].file_bytes ? list[i].file_bytes - grow : 0;
            continue;
        }
        u[i].frees = (l->is_disk || shared || deps > 0) ? 0 : list[i].file_bytes;
        if (deps == 0 && !l->is_disk && !shared) /* a leaf: unnamed nodes may go with it */
            u[i].frees += pruned_bytes(s, &x, nd, kids, users_of, deps_of);
    }
    free(deps_of);
    free(users_of);
    free(dep_at);
    free(internal_in);
    free(kids);
    qsnap__index_free(&x);
    qsnap_list_free(list, n);
    *out = u;
    *n_out = n;
    return 0;
}

int qsnap_why(qsnap_store *s, const char *name, char **out)
{
    const struct qsnap__node *n = qsnap__node_by_name(&s->m, name);
    const struct qsnap__branch *b = qsnap__branch_by_name(&s->m, name);
    const struct qsnap__layer *l;
    char *buf = NULL;
    size_t len = 0, deps = 0;
    FILE *f;
    int rc = resolve(s, name, &l);

    if (rc)
        return rc;
    f = open_memstream(&buf, &len);
    if (!f)
        return nomem();
    if (n && n->internal) {
        fprintf(f, "snapshot %s: internal snapshot %s inside %s (%s)\n", name, n->internal,
                l->file, l->frozen ? "frozen" : "a branch's writable head");
        if (l->frozen) {
            /* Adopted with its file: read-only like the layer that holds it. */
            fprintf(f, "revert: refused (its layer is frozen); export and diff read it\n");
            fprintf(f, "delete: refused (it would write into frozen %s)\n", l->file);
            goto done;
        }
        fprintf(f, "revert: applies it in place when that head is the current branch's (the "
                   "head's state is kept as another internal snapshot unless --discard)\n");
        fprintf(f, "delete: removes it from %s's snapshot table; nothing else depends on it\n",
                l->file);
        goto done;
    }
    fprintf(f, "%s %s: %s (%s%s)\n", n ? "snapshot" : "branch", name, l->file,
            l->frozen ? "frozen" : "writable head", l->is_disk ? ", the disk itself" : "");
    for (size_t i = 0; i < s->m.nl; i++) {
        const struct qsnap__layer *d = &s->m.layers[i];
        if (d->backing != l->id)
            continue;
        deps++;
        for (size_t j = 0; j < s->m.nn; j++) {
            if (s->m.nodes[j].layer == d->id)
                fprintf(f, "  %s is built on it (%s)\n",
                        s->m.nodes[j].name ? s->m.nodes[j].name : "an unnamed node", d->file);
        }
        for (size_t j = 0; j < s->m.nb; j++) {
            if (s->m.branches[j].head == d->id)
                fprintf(f, "  branch %s is built on it (%s)\n", s->m.branches[j].name, d->file);
        }
    }
    if (!deps)
        fprintf(f, "  nothing depends on it\n");
    if (n) {
        if (l->is_disk)
            fprintf(f, "delete: the disk is never removed; the snapshot's name goes%s\n",
                    deps ? " and it stays as an unnamed node" : "");
        else if (deps == 0)
            fprintf(f, "delete: removes %s\n", l->file);
        else if (deps == 1)
            fprintf(f, "delete: merges its data into the one state built on it, then removes "
                       "%s\n",
                    l->file);
        else
            fprintf(f, "delete: keeps its data as an unnamed node for the %zu states built on "
                       "it; --stream copies the data into each of them instead\n",
                    deps);
    } else {
        fprintf(f, "delete: 'qsnap branch DISK -d %s'%s\n", name,
                s->m.current && !strcmp(s->m.current, b->name)
                    ? " is refused: it is the current branch (switch first)"
                    : "; a branch with changes needs --force");
        const struct qsnap__layer *under = qsnap__layer(&s->m, l->backing);
        const char *into = under ? under->file : "?";
        if (under && under->is_disk && !strncmp(into, "../", 3))
            into += 3; /* the disk, named as the user names it */
        fprintf(f, "commit: writes its changes into %s; everything else built on that layer "
                   "moves to a new layer that keeps its content\n",
                into);
        if (qsnap__internal_nodes_in(&s->m, l->id, NULL))
            fprintf(f, "its head holds internal snapshots: commit, branch delete and an external "
                       "snapshot are refused until they are deleted\n");
    }
done:
    if (fclose(f) != 0 || !buf) {
        free(buf);
        return nomem();
    }
    *out = buf;
    return 0;
}

/* Whether a and b are the same file (block devices: the same device, by any node). */
static bool same_file(const struct stat *a, const struct stat *b)
{
    if (S_ISBLK(a->st_mode) && S_ISBLK(b->st_mode))
        return a->st_rdev == b->st_rdev;
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino;
}

/* Whether directory dir (absolute, links resolved) is the store directory or inside it. */
static bool in_store_dir(const struct stat *store, const char *dir)
{
    char *d = strdup(dir);
    bool in = false;

    for (char *slash; d && !in;) {
        struct stat st;
        in = stat(d[0] ? d : "/", &st) == 0 && S_ISDIR(st.st_mode) && same_file(&st, store);
        slash = strrchr(d, '/');
        if (!slash)
            break;
        *slash = '\0'; /* the parent ("" for the root) */
        if (!d[0] && !slash[1])
            break; /* the root was looked at */
    }
    free(d);
    return in;
}

/* The directory of path (links in it resolved), or NULL when it does not exist. */
static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, (size_t)(slash - path) + (slash == path)) : strdup(".");
    char *real = dir ? realpath(dir, NULL) : NULL;

    free(dir);
    return real;
}

/*
 * Where a file opened or created at path lands: a link as its last component
 * is followed, a dangling one too (open with O_CREAT creates its target).
 * NULL when that cannot be told (a loop, a missing directory: the write fails
 * there by itself).
 */
static char *landing(const char *path)
{
    char *cur = strdup(path);

    for (int hops = 0; cur && hops < 40; hops++) {
        struct stat st;
        char target[PATH_MAX];
        ssize_t n;
        if (lstat(cur, &st) < 0 || !S_ISLNK(st.st_mode))
            return cur;
        n = readlink(cur, target, sizeof(target) - 1);
        if (n < 0) {
            free(cur);
            return NULL;
        }
        target[n] = '\0';
        if (target[0] != '/') {
            const char *slash = strrchr(cur, '/');
            char *next = NULL;
            if (slash && asprintf(&next, "%.*s/%s", (int)(slash - cur), cur, target) < 0)
                next = NULL;
            else if (!slash)
                next = strdup(target);
            free(cur);
            cur = next;
        } else {
            free(cur);
            cur = strdup(target);
        }
    }
    free(cur);
    return NULL;
}

/* Whether a file inside the store directory (walked without following links) is st's. */
static bool store_has_file(const char *dir, const struct stat *st, int depth)
{
    DIR *d = depth < 8 ? opendir(dir) : NULL;
    struct dirent *e;
    bool found = false;

    if (!d)
        return false;
    while (!found && (e = readdir(d)) != NULL) {
        struct stat es;
        char *p = NULL;
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        if (asprintf(&p, "%s/%s", dir, e->d_name) < 0)
            break;
        if (lstat(p, &es) == 0) {
            if (S_ISDIR(es.st_mode))
                found = store_has_file(p, st, depth + 1);
            else
                found = S_ISREG(es.st_mode) && same_file(&es, st);
        }
        free(p);
    }
    closedir(d);
    return found;
}

static int refuse_out(const char *out, const char *why)
{
    return qsnap__err(QSNAP_EREFUSED,
                      "export to a new file outside the store directory (nothing was changed)",
                      "%s: refused as unsafe: the output %s", out, why);
}

/*
 * An export's output must not be a file the export reads, the disk, or any
 * file of the store (the VM path and the heads included), by any name: its
 * directory (as named, and where a link as its last component leads) must not
 * be the store directory or inside it, and the file it names (links followed)
 * must not be a file of img's chain, the disk or, when it has more hard links,
 * any file in the store.
 */
static int check_out(const qsnap_store *s, qcow2_image *img, const char *out)
{
    struct stat store, st;
    char *dirs[2] = {dir_of(out), NULL};
    char *land = landing(out), *why = NULL;
    int rc = 0;

    if (land)
        dirs[1] = dir_of(land);
    if (stat(s->dir, &store) == 0 &&
        ((dirs[0] && in_store_dir(&store, dirs[0])) || (dirs[1] && in_store_dir(&store, dirs[1]))))
        rc = asprintf(&why, "would be inside the store directory %s, whose files only qsnap writes",
                      s->dir);
    free(dirs[0]);
    free(dirs[1]);
    free(land);
    if (!why && rc == 0 && stat(out, &st) == 0) {
        if ((st.st_dev == s->disk_dev && st.st_ino == s->disk_ino) ||
            (S_ISBLK(st.st_mode) && stat(s->disk_abs, &store) == 0 && same_file(&st, &store)))
            rc = asprintf(&why, "is the disk %s", s->disk_abs);
        for (qcow2_image *l = img; l && !why && rc == 0; l = qcow2_image_backing(l)) {
            struct stat ls;
            if (stat(qcow2_image_filename(l), &ls) == 0 && same_file(&st, &ls)) {
                char *real = realpath(qcow2_image_filename(l), NULL);
                rc = asprintf(&why, "is %s, a file of the chain being exported",
                              real ? real : qcow2_image_filename(l));
                free(real);
            }
        }
        if (!why && rc == 0 && S_ISREG(st.st_mode) && st.st_nlink > 1 &&
            store_has_file(s->dir, &st, 0))
            rc = asprintf(&why, "is a hard link of a file in the store directory %s", s->dir);
    }
    if (rc < 0)
        return nomem();
    rc = why ? refuse_out(out, why) : 0;
    free(why);
    return rc;
}

int qsnap_export(qsnap_store *s, const char *name, const char *out_path, qcow2_format format,
                 qcow2_progress_fn progress, void *payload)
{
    qcow2_convert_opts co = QCOW2_CONVERT_OPTS_INIT;
    qcow2_image *img = NULL;
    int rc = open_chain(s, name, &img);

    if (!rc)
        rc = check_out(s, img, out_path);
    if (rc) {
        qcow2_image_close(img);
        return rc;
    }
    co.format = format == QCOW2_FORMAT_AUTO ? QCOW2_FORMAT_RAW : format;
    co.progress = progress;
    co.payload = payload;
    rc = qcow2_image_convert(img, out_path, &co);
    qcow2_image_close(img);
    return rc ? qsnap__from_qcow2(rc, NULL) : 0;
}

/* ---- what a path is to a store ----------------------------------------------- */

/* Whether dir (absolute, links resolved) is a store directory: *.qsnap with metadata or layers. */
static bool is_store_dir(const char *dir)
{
    size_t len = strlen(dir);
    struct stat st;
    char *p = NULL;
    bool yes;

    if (len < 7 || strcmp(dir + len - 6, ".qsnap") != 0 || dir[len - 7] == '/' ||
        stat(dir, &st) < 0 || !S_ISDIR(st.st_mode))
        return false;
    if (asprintf(&p, "%s/layers", dir) < 0)
        return false;
    yes = lstat(p, &st) == 0 && S_ISDIR(st.st_mode);
    strcpy(p + len, "/meta"); /* shorter */
    yes = yes || lstat(p, &st) == 0;
    free(p);
    return yes;
}

int qsnap__store_above(const char *real, char **dir)
{
    char *d = strdup(real);

    *dir = NULL;
    if (!d)
        return nomem();
    for (;;) {
        char *slash;
        if (d[0] && is_store_dir(d)) {
            *dir = d;
            return 0;
        }
        slash = strrchr(d, '/');
        if (!slash || slash == d)
            break;
        *slash = '\0';
    }
    free(d);
    return 0;
}

/*
 * The absolute name path resolves to, links followed (a dangling last one to
 * where a new file would land): realpath() of it, or of its directory and its
 * last component when it does not exist. NULL when that cannot be told.
 */
static char *resolve_path(const char *path)
{
    char *land = landing(path), *real = NULL, *dir;
    const char *base;

    if (!land)
        return NULL;
    real = realpath(land, NULL);
    if (!real && (dir = dir_of(land)) != NULL) {
        base = strrchr(land, '/');
        base = base ? base + 1 : land;
        if (base[0] && strcmp(base, ".") && strcmp(base, "..") &&
            asprintf(&real, "%s%s%s", dir, strcmp(dir, "/") ? "/" : "", base) < 0)
            real = NULL;
        free(dir);
    }
    free(land);
    return real;
}

/* What the regular file st (at real, inside store directory dir) is, by the store's model. */
/* The layer of s (not the disk) whose file is st, or NULL. */
static const struct qsnap__layer *layer_of_file(const qsnap_store *s, const struct stat *st)
{
    for (size_t i = 0; i < s->m.nl; i++) {
        const struct qsnap__layer *l = &s->m.layers[i];
        char *p = qsnap__path(s, l->file);
        struct stat ls;
        bool same = p && !l->is_disk && stat(p, &ls) == 0 && same_file(st, &ls);
        free(p);
        if (same)
            return l;
    }
    return NULL;
}

static int kind_in_store(const char *dir, const char *real, const struct stat *st,
                         qsnap_file_kind *kind)
{
    size_t len = strlen(dir);
    const char *rel = real + len;
    qsnap_store *s = NULL;
    char *disk = strndup(dir, len - 6);
    int rc;

    if (!disk)
        return nomem();
    if (!strncmp(rel, "/state/", 7)) {
        *kind = QSNAP_FILE_FROZEN; /* a snapshot's state file: never written again */
        free(disk);
        return 0;
    }
    rc = qsnap_store_open(&s, disk, QSNAP_OPEN_READONLY | QSNAP_OPEN_ANY_FILES);
    free(disk);
    if (rc && !strncmp(rel, "/layers/", 8)) {
        /* The metadata cannot be read (busy, an operation unfinished, damaged): when the
         * image commands are needed most. Told by its mode, which freezing sets: a frozen
         * layer is read-only, a head is writable. */
        *kind = st->st_mode & 0222 ? QSNAP_FILE_HEAD : QSNAP_FILE_FROZEN;
        return 0;
    }
    if (rc)
        return 0;
    {
        const struct qsnap__layer *l = layer_of_file(s, st);
        if (l)
            *kind = l->frozen ? QSNAP_FILE_FROZEN : QSNAP_FILE_HEAD;
    }
    qsnap_store_close(s);
    return 0;
}

int qsnap_file_kind_of(const char *path, qsnap_file_kind *kind, char **store_dir)
{
    char *real, *dir = NULL;
    struct stat st;
    int rc;

    *kind = QSNAP_FILE_NONE;
    if (store_dir)
        *store_dir = NULL;
    if (!path || !path[0] || !(real = resolve_path(path)))
        return 0; /* no file can land there: nothing of a store's is written */
    rc = qsnap__store_above(real, &dir);
    if (!rc && dir) {
        *kind = QSNAP_FILE_STORE;
        if (stat(real, &st) == 0 && S_ISREG(st.st_mode))
            rc = kind_in_store(dir, real, &st, kind);
    } else if (!rc && stat(real, &st) == 0 && S_ISREG(st.st_mode)) {
        /* The disk of a store with snapshots (or with its first one under way). */
        char *p = NULL;
        if (asprintf(&dir, "%s.qsnap", real) < 0) {
            dir = NULL;
            rc = nomem();
        } else if (is_store_dir(dir) && asprintf(&p, "%s/journal", dir) >= 0) {
            struct stat ms;
            bool made = lstat(p, &ms) == 0;
            strcpy(p + strlen(dir), "/meta"); /* shorter */
            if (made || lstat(p, &ms) == 0)
                *kind = QSNAP_FILE_FROZEN;
        }
        free(p);
    }
    free(real);
    if (*kind != QSNAP_FILE_NONE && store_dir)
        *store_dir = dir;
    else
        free(dir);
    return rc;
}

/*
 * Whether snapshot snap (an id, then a name, as qemu-img looks it up) of the
 * branch head at real (st) is one of the tree's internal snapshots: its node
 * name in *node (malloc'd), NULL when not.
 */
static int tree_snapshot_of(const char *dir, const char *real, const struct stat *st,
                            const char *snap, char **node)
{
    qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img = NULL;
    qsnap_store *s = NULL;
    char *disk = strndup(dir, strlen(dir) - 6), *name = NULL;
    int rc;

    *node = NULL;
    if (!disk)
        return nomem();
    rc = qsnap_store_open(&s, disk, QSNAP_OPEN_READONLY | QSNAP_OPEN_ANY_FILES);
    free(disk);
    if (rc)
        return rc;
    oo.flags = QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_NO_LOCK;
    if (qcow2_image_open(&img, real, &oo) == 0) {
        size_t n = qcow2_snapshot_count(img);
        for (int pass = 0; pass < 2 && !name; pass++) {
            for (size_t i = 0; i < n && !name; i++) {
                qcow2_snapshot_info si;
                const char *key;
                if (qcow2_snapshot_get(img, i, &si) != 0)
                    continue;
                key = pass == 0 ? si.id : si.name;
                if (key && !strcmp(key, snap) && si.name)
                    name = strdup(si.name);
            }
        }
        qcow2_image_close(img);
    }
    {
        const struct qsnap__layer *l = name ? layer_of_file(s, st) : NULL;
        for (size_t k = 0; l && k < s->m.nn && !*node; k++) {
            const struct qsnap__node *nd = &s->m.nodes[k];
            if (nd->layer == l->id && nd->internal && !strcmp(nd->internal, name))
                *node = strdup(nd->name ? nd->name : nd->internal);
        }
    }
    free(name);
    qsnap_store_close(s);
    return 0;
}

int qsnap_check_snapshot_edit(const char *path, const char *snap)
{
    qsnap_file_kind kind;
    char *dir = NULL, *real = NULL, *node = NULL;
    struct stat st;
    int rc = snap ? qsnap_file_kind_of(path, &kind, &dir) : 0;

    /* Anything but a head: what any write into it meets (a head may be written). */
    if (!snap || rc || kind != QSNAP_FILE_HEAD) {
        free(dir);
        return qsnap_check_outside_write(path, false);
    }
    if ((real = resolve_path(path)) != NULL && stat(real, &st) == 0)
        rc = tree_snapshot_of(dir, real, &st, snap, &node);
    if (!rc && node) {
        char hint[PATH_MAX * 2 + 256];
        int dl = (int)strlen(dir) - 6; /* the store's disk: its directory without ".qsnap" */
        snprintf(hint, sizeof(hint),
                 "the tree commands change it: 'qsnap revert %.*s %s', 'qsnap delete %.*s %s'", dl,
                 dir, node, dl, dir, node);
        rc = qsnap__err(QSNAP_EREFUSED, hint,
                        "%s: refused: internal snapshot %s is the tree's snapshot %s in the store "
                        "%s (nothing was written)",
                        path, snap, node, dir);
    }
    free(node);
    free(real);
    free(dir);
    return rc;
}

/* A file in layers/ that cannot be told frozen or a head: the store's own error, saying so. */
static int untold(const char *path, const char *dir, int rc)
{
    const qsnap_error *e = qsnap_error_last();
    char *msg = strdup(e->message ? e->message : ""), *hint = strdup(e->hint ? e->hint : "");

    if (!msg || !hint)
        rc = nomem();
    else
        rc = qsnap__err(rc, hint[0] ? hint : NULL,
                        "%s: a file of the store %s, which cannot be read to tell whether it is a "
                        "frozen snapshot layer (nothing was written): %s",
                        path, dir, msg);
    free(msg);
    free(hint);
    return rc;
}

int qsnap_check_outside_write(const char *path, bool replace)
{
    qsnap_file_kind kind;
    char *dir = NULL, *hint = NULL;
    size_t len;
    int rc = qsnap_file_kind_of(path, &kind, &dir);

    if (rc && dir) {
        rc = untold(path, dir, rc);
    } else if (!rc && (kind == QSNAP_FILE_FROZEN || (replace && kind != QSNAP_FILE_NONE))) {
        len = strlen(dir) - 6; /* the store's disk: its directory without ".qsnap" */
        if (kind == QSNAP_FILE_FROZEN)
            rc = asprintf(&hint, "only the tree commands change a snapshot: 'qsnap commit %.*s' "
                                 "writes a branch's changes into its snapshot",
                          (int)len, dir);
        else
            rc = asprintf(&hint, "write a file outside the store directory; the tree commands "
                                 "change its files ('qsnap create %.*s' makes a snapshot)",
                          (int)len, dir);
        if (rc < 0) {
            hint = NULL;
            rc = nomem();
        } else {
            char *real = resolve_path(path);
            bool state = real && !strncmp(real, dir, len + 6) && /* then real + len + 6 is in it */
                         !strncmp(real + len + 6, "/state/", 7);
            free(real);
            rc = qsnap__err(QSNAP_EREFUSED, hint, "%s: refused: %s %s (nothing was written)", path,
                            state ? "a snapshot's state file (frozen) in the store"
                            : kind == QSNAP_FILE_FROZEN ? "a frozen snapshot layer of the store"
                            : kind == QSNAP_FILE_HEAD ? "a branch's head in the store"
                                                      : "inside the store directory",
                            dir);
        }
    }
    free(hint);
    free(dir);
    return rc;
}
