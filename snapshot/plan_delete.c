/*
 * Planning the operations that remove layers: delete (one snapshot; with
 * --children its subtree; with --stream its layer merged into the layers
 * built on it; with --metadata only its name) and commit (a branch's
 * changes merged down into the layer of its base). plan.c says how plans
 * are built.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "qsnap_int.h"

static int nomem(void)
{
    return qsnap__err(QSNAP_ERROR, NULL, "out of memory");
}

/* ---- delete ------------------------------------------------------------------- */

static size_t count_layer_deps(const struct qsnap__model *m, unsigned layer)
{
    size_t n = 0;

    for (size_t i = 0; i < m->nl; i++)
        n += m->layers[i].backing == layer;
    return n;
}

bool qsnap__delete_merges(const struct qsnap__layer *d, bool internal, unsigned flags)
{
    /* Merging rewrites the dependent: only branch heads are rewritten unasked. Frozen
     * layers change under commit alone; --stream asks for it. A head holding internal
     * snapshots must keep its backing content: they read through it (with --stream
     * the plan refuses). */
    return (flags & QSNAP_DELETE_STREAM) || (!d->frozen && !internal);
}

static bool other_node_uses(const struct qsnap__model *m, unsigned layer, unsigned except)
{
    for (size_t i = 0; i < m->nn; i++) {
        if (m->nodes[i].layer == layer && m->nodes[i].id != except)
            return true;
    }
    return false;
}

/* Node `id` leaves the tree: its children and branches move up to its parent. */
void qsnap__reparent(struct qsnap__model *t, unsigned id, unsigned parent)
{
    for (size_t i = 0; i < t->nn; i++) {
        if (t->nodes[i].parent == id)
            t->nodes[i].parent = parent;
    }
    for (size_t i = 0; i < t->nb; i++) {
        if (t->branches[i].base == id)
            t->branches[i].base = parent;
    }
}

/*
 * Node id lost a dependent: when it is an unnamed node that was only for its
 * dependents (for_deps: not one that delete --metadata left, whose data the
 * user keeps, nor one from a store before the flag; external, without a state
 * file) and nothing needs it any more (no child node, no branch on it, its
 * layer used by no other node and backing no layer, not the disk, unchanged
 * since it was frozen), no command could name it again: it goes with its layer
 * (the file after the next commit point), and so on up the tree while that
 * holds. *n counts the nodes that went.
 */
static int drop_unnamed_leaves(const qsnap_store *s, struct qsnap__model *t, qsnap_plan *p,
                               unsigned id, size_t *n)
{
    for (size_t steps = 0; id && steps <= t->nn; steps++) {
        const struct qsnap__node *u = qsnap__node(t, id);
        const struct qsnap__layer *l = u ? qsnap__layer(t, u->layer) : NULL;
        unsigned parent;
        int rc;

        if (!l || u->name || !u->for_deps || u->internal || u->state || l->is_disk ||
            other_node_uses(t, l->id, id) || count_layer_deps(t, l->id))
            return 0;
        for (size_t i = 0; i < t->nn; i++) {
            if (t->nodes[i].parent == id)
                return 0;
        }
        for (size_t i = 0; i < t->nb; i++) {
            if (t->branches[i].base == id)
                return 0;
        }
        /* A frozen layer changed since (verify reports it): kept, as before. */
        if (qsnap__check_unchanged(s, l))
            return 0;
        rc = qsnap__defer_unlink(p, l->file);
        if (rc)
            return rc;
        parent = u->parent;
        qsnap__del_layer(t, u->layer);
        qsnap__del_node(t, id);
        (*n)++;
        id = parent;
    }
    return 0;
}

/*
 * Node n leaves the tree and, when l is not NULL, its layer l with it (the
 * file goes after the commit point recorded here), and with them the unnamed
 * nodes it leaves that nothing needs (*pruned counts them). rc: an earlier
 * failure, after which the model still changes but no step is added.
 */
static int drop_node(const qsnap_store *s, struct qsnap__model *t, qsnap_plan *p,
                     const struct qsnap__node *n, const struct qsnap__layer *l, int rc,
                     size_t *pruned)
{
    unsigned id = n->id, parent = n->parent, layer = l ? l->id : 0;

    if (!rc && l)
        rc = qsnap__defer_unlink(p, l->file);
    qsnap__reparent(t, id, parent);
    qsnap__del_node(t, id);
    if (l)
        qsnap__del_layer(t, layer);
    if (!rc)
        rc = drop_unnamed_leaves(s, t, p, parent, pruned);
    if (!rc)
        rc = qsnap__add_save(p, t);
    return rc;
}

/* The summary's words for n unnamed nodes that went with a delete ("" for none). */
static const char *pruned_words(size_t n)
{
    return n == 0   ? ""
           : n == 1 ? "; the unnamed node it was built on went too (nothing else needed it)"
                    : "; the unnamed nodes it was built on went too (nothing else needed them)";
}

/* Steps that give dependent layer d the content of layer l, then drop l from its chain. */
static int stream_into(const qsnap_store *s, struct qsnap__model *t, qsnap_plan *p,
                       struct qsnap__layer *d, const struct qsnap__layer *l)
{
    int rc = d->frozen ? 0 : qsnap__check_free(s, t, d->id);

    if (!rc)
        rc = qsnap__check_link(s, t, d->id);

    if (!rc && d->frozen)
        rc = qsnap__add_step(p, QSNAP__ST_THAW, d->id, 0, 0, NULL, NULL);
    if (!rc)
        rc = qsnap__add_step(p, QSNAP__ST_STREAM, d->id, l->backing, 0, NULL, NULL);
    if (!rc && d->frozen)
        rc = qsnap__add_step(p, QSNAP__ST_FREEZE, d->id, 0, 0, NULL, NULL);
    d->backing = l->backing;
    return rc;
}

/*
 * Whether each node (by position) is in the subtree of the node at position root:
 * in[i] true. One walk up from each node, each node settled once (what a walk
 * reaches is settled with it), so the cost follows the tree's size, not its size
 * times the subtree's. Nodes are found by id through x (t's index).
 */
static bool subtree_marks(const struct qsnap__model *t, const struct qsnap__index *x, size_t root,
                          bool *in)
{
    unsigned char *state = calloc(t->nn + 1, 1); /* 0 not yet, 1 in, 2 out */
    size_t *path = malloc((t->nn + 1) * sizeof(*path));

    if (!state || !path) {
        free(state);
        free(path);
        return false;
    }
    state[root] = 1;
    for (size_t i = 0; i < t->nn; i++) {
        size_t n = 0, at = i;
        unsigned char found = 2;
        /* Up to a settled node or the top (the graph is checked: parents do not loop;
         * the walk still stops after nn steps). */
        while (!state[at] && n < t->nn) {
            const struct qsnap__node *up = t->nodes[at].parent
                                               ? qsnap__index_node(x, t->nodes[at].parent)
                                               : NULL;
            path[n++] = at;
            if (!up)
                break;
            at = (size_t)(up - t->nodes);
        }
        if (state[at])
            found = state[at];
        while (n)
            state[path[--n]] = found;
    }
    for (size_t i = 0; i < t->nn; i++)
        in[i] = state[i] == 1;
    free(state);
    free(path);
    return true;
}

/*
 * Whether the head of branch b holds changes (noted for the execution, which
 * checks it again); when it does, "NAME (SIZE)" is added to the list *names
 * (", " between) and *n counts it.
 */
static int note_dirty_branch(const qsnap_store *s, const struct qsnap__model *t,
                             const struct qsnap__branch *b, char **names, size_t *n)
{
    char *more = NULL, bytes[32];
    bool dirty = false;
    uint64_t used = 0;
    int rc = qsnap__head_dirty(s, qsnap__layer(t, b->head), &dirty, &used);

    if (rc || !dirty)
        return rc;
    qsnap__fmt_bytes(bytes, sizeof(bytes), used);
    if (asprintf(&more, "%s%s%s (%s)", *names ? *names : "", *names ? ", " : "", b->name,
                 bytes) < 0)
        return nomem();
    free(*names);
    *names = more;
    (*n)++;
    return 0;
}

static int plan_delete_subtree(const qsnap_store *s, struct qsnap__model *t, qsnap_plan *p,
                               struct qsnap__node *root, bool force)
{
    bool *in = calloc(t->nn + 1, sizeof(bool));
    bool *keep = calloc(t->nl + 1, sizeof(bool));
    size_t removed_branches = 0, nodes = 0, ndirty = 0, pruned = 0;
    unsigned root_parent = root->parent;
    char *root_name = strdup(root->name), *dirty = NULL;
    struct qsnap__index x;
    int rc = qsnap__index_build(&x, t, false);

    if (rc) {
        free(in);
        free(keep);
        free(root_name);
        return rc;
    }
    /* The subtree: the root and every node whose parent is in it. */
    if (!in || !keep || !root_name || !subtree_marks(t, &x, (size_t)(root - t->nodes), in)) {
        rc = nomem();
        goto out;
    }
    /* The branches based in it go too: not the current one, and none a VM holds. */
    for (size_t i = 0; i < t->nb; i++) {
        const struct qsnap__node *base = qsnap__index_node(&x, t->branches[i].base);
        if (!base || !in[base - t->nodes])
            continue;
        if (t->current && !strcmp(t->current, t->branches[i].name)) {
            rc = qsnap__err(QSNAP_EREFUSED, "'qsnap switch DISK BRANCH' to a branch outside it first",
                            "the current branch %s is in the subtree of %s", t->current,
                            root_name);
            goto out;
        }
        rc = qsnap__check_free(s, t, t->branches[i].head);
        if (!rc)
            rc = note_dirty_branch(s, t, &t->branches[i], &dirty, &ndirty);
        if (rc)
            goto out;
    }
    /* As for 'qsnap branch -d': changes no snapshot keeps go only when asked to. */
    if (ndirty && !force) {
        rc = qsnap__err(QSNAP_EREFUSED, "--force deletes them anyway",
                        "%s %s in the subtree of %s %s changes that no snapshot keeps",
                        ndirty == 1 ? "branch" : "branches", dirty, root_name,
                        ndirty == 1 ? "holds" : "hold");
        goto out;
    }
    /* State files: the root's first, then the others in the tree's order. */
    if (root->state)
        rc = qsnap__defer_unlink(p, root->state);
    for (size_t i = 0; i < t->nn && !rc; i++) {
        if (in[i] && &t->nodes[i] != root && t->nodes[i].state)
            rc = qsnap__defer_unlink(p, t->nodes[i].state);
    }
    if (rc)
        goto out;
    for (size_t i = 0; i < t->nb;) {
        const struct qsnap__node *base = qsnap__index_node(&x, t->branches[i].base);
        if (base && in[base - t->nodes]) {
            qsnap__del_branch_at(t, i);
            removed_branches++;
        } else {
            i++;
        }
    }
    /* The nodes of the subtree go (branches were looked up by position above: the index is
     * not used past here, as the nodes move). */
    for (size_t i = 0; i < t->nn; i++)
        nodes += in[i];
    qsnap__del_nodes_marked(t, in);
    qsnap__index_free(&x);
    /* Keep every layer a remaining node or branch needs (and the disk), with the layers
     * below each; drop the rest. */
    rc = qsnap__index_build(&x, t, false);
    if (rc)
        goto out_noindex;
    for (size_t i = 0; i < t->nl; i++)
        keep[i] = t->layers[i].is_disk;
    for (size_t j = 0; j < t->nn + t->nb; j++) {
        unsigned id = j < t->nn ? t->nodes[j].layer : t->branches[j - t->nn].head;
        const struct qsnap__layer *l = qsnap__index_layer(&x, id);
        if (l)
            keep[l - t->layers] = true;
    }
    for (size_t i = 0; i < t->nl; i++) {
        /* Down the backing links of a kept layer, to the first one already kept (each layer
         * is marked once; the graph is checked: no loop, and the walk stops after nl steps). */
        const struct qsnap__layer *l = keep[i] ? qsnap__index_layer(&x, t->layers[i].backing)
                                               : NULL;
        for (size_t n = 0; l && !keep[l - t->layers] && n < t->nl; n++) {
            keep[l - t->layers] = true;
            l = qsnap__index_layer(&x, l->backing);
        }
    }
    qsnap__index_free(&x);
    for (size_t i = t->nl; i-- > 0;) {
        if (keep[i])
            continue;
        /* Internal snapshots qsnap did not make go with the file: not qsnap's to drop
         * (the store's model knows the file's own nodes, which are gone from t). */
        rc = qsnap__refuse_foreign_internal(s, &s->m, t->layers[i].id,
                                            "deleting the subtree would delete it with its "
                                            "file");
        if (!rc)
            rc = qsnap__defer_unlink(p, t->layers[i].file);
        if (rc)
            goto out_noindex;
        qsnap__del_layer_at(t, i); /* the last (kept, or dropped already) takes its place */
    }
    rc = drop_unnamed_leaves(s, t, p, root_parent, &pruned);
    if (!rc)
        rc = qsnap__add_save(p, t);
    /* What is lost (with force), for the summary and the dry run's description. */
    if (!rc && ndirty &&
        asprintf(&p->lost, "%s %s", ndirty == 1 ? "branch" : "branches", dirty) < 0) {
        p->lost = NULL;
        rc = nomem();
    }
    if (!rc)
        rc = qsnap__set_summary(p,
                                "deleted snapshot %s and its subtree (%zu snapshot%s, %zu branch%s)"
                                "%s%s%s%s",
                                root_name, nodes, nodes == 1 ? "" : "s", removed_branches,
                                removed_branches == 1 ? "" : "es",
                                p->lost ? "; dropped the changes of " : "",
                                p->lost ? p->lost : "", p->lost ? " that no snapshot kept" : "",
                                pruned_words(pruned));
    goto out_noindex;
out:
    qsnap__index_free(&x);
out_noindex:
    free(root_name);
    free(dirty);
    free(in);
    free(keep);
    return rc;
}

int qsnap_plan_delete(qsnap_plan **out, qsnap_store *s, const char *snapshot, unsigned flags)
{
    struct qsnap__model t;
    struct qsnap__node *n;
    struct qsnap__layer *l;
    const struct qsnap__node *in;
    qsnap_plan *p = NULL;
    char *name = NULL;
    size_t deps, pruned = 0;
    bool l_foreign = false;
    int rc = qsnap__check_writable_store(s);

    if (rc)
        return rc;
    if ((flags & QSNAP_DELETE_METADATA) && (flags & (QSNAP_DELETE_CHILDREN | QSNAP_DELETE_STREAM)))
        return qsnap__err(QSNAP_EUSAGE, NULL,
                          "--metadata cannot be combined with --children or --stream");
    in = qsnap__node_by_name(&s->m, snapshot);
    if (in && in->internal) {
        /* In a frozen layer it can never be deleted (that would write into the
         * layer): only its name can go. In a head, unnamed, it would pin the head. */
        const struct qsnap__layer *il = qsnap__layer(&s->m, in->layer);
        bool frozen = il && il->frozen;
        if ((flags & QSNAP_DELETE_METADATA) && !frozen)
            return qsnap__err(QSNAP_EUSAGE, "delete it without --metadata",
                              "--metadata does not apply to internal snapshot %s of a branch's "
                              "head: unnamed, it could no longer be deleted and would pin the head",
                              snapshot);
        if (!(flags & (QSNAP_DELETE_CHILDREN | QSNAP_DELETE_METADATA)))
            return qsnap__plan_delete_internal(out, s, snapshot);
    }
    rc = qsnap__plan_open(s, "delete", &t, &p, snapshot, &n, NULL);
    if (!rc && !(name = strdup(snapshot)))
        rc = nomem();
    if (rc)
        goto out;
    if (flags & QSNAP_DELETE_CHILDREN) {
        rc = qsnap__check_subtree_external(&t, n);
        if (!rc)
            rc = plan_delete_subtree(s, &t, p, n, flags & QSNAP_DELETE_FORCE);
        goto out;
    }
    if (n->state) {
        rc = qsnap__defer_unlink(p, n->state);
        qsnap__str_free(&t, n->state);
        qsnap__str_free(&t, n->sfp);
        n->state = n->sfp = NULL;
        if (rc)
            goto out;
    }
    l = qsnap__layer(&t, n->layer);
    deps = count_layer_deps(&t, l->id);
    for (size_t i = 0; i < t.nl && deps == 1; i++) {
        if (t.layers[i].backing == l->id &&
            !qsnap__delete_merges(&t.layers[i],
                                  qsnap__internal_nodes_in(&t, t.layers[i].id, NULL) > 0, flags))
            deps = 2; /* keep, as for several dependents */
    }
    if (flags & QSNAP_DELETE_METADATA) {
        qsnap__str_free(&t, n->name);
        n->name = NULL;
        rc = qsnap__add_save(p, &t);
        if (!rc)
            rc = qsnap__set_summary(p, "forgot the name %s; its state stays as an unnamed node",
                                    name);
        goto out;
    }
    if (other_node_uses(&t, l->id, n->id) || (l->is_disk && deps == 0)) {
        /* Another node holds the same layer (or it is the disk itself): only the node goes. */
        rc = drop_node(s, &t, p, n, NULL, 0, &pruned);
        if (!rc)
            rc = qsnap__set_summary(p, "deleted snapshot %s (its data is still used)%s", name,
                                    pruned_words(pruned));
        goto out;
    }
    {
        /* Internal snapshots qsnap did not make in the snapshot's own file (a disk that
         * held them at its first create, or an older build): the file is not removed or
         * streamed away under them, and the node kept for them is never pruned. */
        size_t foreign = 0;
        rc = qsnap__foreign_internal(s, &t, l->id, NULL, &foreign);
        l_foreign = foreign > 0;
        if (!rc && foreign && (deps == 0 || (flags & QSNAP_DELETE_STREAM)))
            rc = qsnap__refuse_foreign_internal(s, &t, l->id,
                                                deps == 0 ? "deleting the snapshot would delete "
                                                            "it with its file"
                                                          : "streaming the file away would "
                                                            "delete it");
        if (rc)
            goto out;
        if (foreign && deps < 2)
            deps = 2; /* kept as an unnamed node, as for several dependents */
    }
    if (deps == 0) {
        rc = drop_node(s, &t, p, n, l, qsnap__check_unchanged(s, l), &pruned);
        if (!rc)
            rc = qsnap__set_summary(p, "deleted snapshot %s%s", name, pruned_words(pruned));
        goto out;
    }
    /* A head holding internal snapshots must keep its backing content: they read
     * through it. Streaming would change what they read. */
    for (size_t i = 0; i < t.nl && !rc; i++) {
        size_t foreign = 0;
        if (t.layers[i].backing != l->id)
            continue;
        if (qsnap__internal_nodes_in(&t, t.layers[i].id, NULL)) {
            if (flags & QSNAP_DELETE_STREAM)
                rc = qsnap__refuse_internal_in(
                    &t, t.layers[i].id,
                    "streaming this snapshot's data into their file would change "
                    "what they read",
                    "delete without --stream (its data stays as an unnamed node)");
            continue;
        }
        /* Internal snapshots made outside qsnap read through it the same way. */
        rc = qsnap__foreign_internal(s, &t, t.layers[i].id, NULL, &foreign);
        if (!rc && foreign && (flags & QSNAP_DELETE_STREAM))
            rc = qsnap__refuse_foreign_internal(s, &t, t.layers[i].id,
                                                "streaming this snapshot's data into its file "
                                                "would change what it reads");
        else if (!rc && foreign)
            deps = deps > 1 ? deps : 2; /* keep, as for several dependents */
    }
    if (rc)
        goto out;
    if (l->is_disk || (deps > 1 && !(flags & QSNAP_DELETE_STREAM))) {
        /* Several states are built on it: keep the data as an unnamed node, for them. */
        qsnap__str_free(&t, n->name);
        n->name = NULL;
        n->for_deps = !l_foreign; /* goes with the last dependent, but for the user's data */
        rc = qsnap__add_save(p, &t);
        if (!rc)
            rc = qsnap__set_summary(p,
                                    l->is_disk
                                        ? "deleted snapshot %s; the disk it names stays as an "
                                          "unnamed node under what is built on it"
                                        : "deleted snapshot %s; its data stays as an unnamed "
                                          "node for the snapshots built on it (--stream "
                                          "copies it into them instead)",
                                    name);
        goto out;
    }
    /* One dependent (or --stream): copy the layer's data into each, then remove it. */
    rc = qsnap__check_chain(s, &t, l->id);
    for (size_t i = 0; !rc && i < t.nl; i++) {
        if (t.layers[i].backing == l->id)
            rc = stream_into(s, &t, p, &t.layers[i], l);
    }
    if (rc)
        goto out;
    rc = drop_node(s, &t, p, n, l, 0, &pruned);
    if (!rc)
        rc = qsnap__set_summary(
            p,
            "deleted snapshot %s; its data was merged into the %zu state%s built "
            "on it",
            name, deps, deps == 1 ? "" : "s");
out:
    free(name);
    return qsnap__plan_close(out, p, &t, rc);
}

/* ---- commit ------------------------------------------------------------------- */

int qsnap_plan_commit(qsnap_plan **out, qsnap_store *s, const char *branch)
{
    struct qsnap__model t;
    struct qsnap__branch *b;
    struct qsnap__layer *h, *l, *keep;
    struct qsnap__node *nc;
    qsnap_plan *p = NULL;
    bool dirty = false, was_disk;
    uint64_t used = 0;
    unsigned base_id, l_id, h_id, keep_id;
    char *bname = NULL, *lfile = NULL, bytes[32];
    int rc = qsnap__check_writable_store(s);

    if (rc)
        return rc;
    /* The copy's current branch is the store's (s->m.current). */
    rc = qsnap__plan_open(s, "commit", &t, &p, branch ? branch : s->m.current, NULL, &b);
    if (rc)
        return rc;
    bname = strdup(b->name);
    h = qsnap__layer(&t, b->head);
    l = h ? qsnap__layer(&t, h->backing) : NULL;
    if (!bname || !l) {
        rc = bname ? qsnap__err(QSNAP_EINTEGRITY, QSNAP__GC_HINT, "branch %s has no base layer",
                                b->name)
                   : nomem();
        goto out;
    }
    lfile = strdup(l->file);
    rc = lfile ? qsnap__refuse_internal_in(
                     &t, h->id,
                     "a commit empties the head and writes its data into the layer "
                     "below, which would change what they read",
                     "delete the internal snapshots first ('qsnap delete DISK SNAPSHOT')")
               : nomem();
    if (!rc)
        rc = qsnap__refuse_internal_in(&t, l->id,
                                       "a commit would write into the layer that holds them",
                                       "delete the internal snapshots first");
    if (!rc)
        rc = qsnap__refuse_foreign_internal(s, &t, h->id,
                                            "a commit empties the head and writes its data "
                                            "into the layer below, which would change what it "
                                            "reads");

    if (!rc)
        rc = qsnap__check_free(s, &t, h->id);
    if (!rc)
        rc = qsnap__check_link(s, &t, h->id);
    if (!rc)
        rc = qsnap__head_dirty(s, h, &dirty, &used);
    if (!rc)
        rc = qsnap__check_chain(s, &t, l->id);
    if (rc)
        goto out;
    if (!dirty) {
        rc = qsnap__set_summary(p, "nothing to commit: branch %s has no changes", bname);
        goto out;
    }
    /* Every layer on l but the head also gets checked before anything moves. */
    for (size_t i = 0; !rc && i < t.nl; i++) {
        if (t.layers[i].backing == l->id && t.layers[i].id != h->id && !t.layers[i].frozen)
            rc = qsnap__check_free(s, &t, t.layers[i].id);
    }
    if (rc)
        goto out;
    base_id = b->base;
    l_id = l->id;
    h_id = h->id;
    was_disk = l->is_disk;

    /* 1. A new layer over l keeps l's content where the commit will overwrite it. */
    keep = qsnap__new_overlay(&t, l_id);
    if (!keep) {
        rc = nomem();
        goto out;
    }
    keep_id = keep->id;
    keep->frozen = true;
    rc = qsnap__add_step(p, QSNAP__ST_PRESERVE, keep_id, l_id, h_id, NULL, NULL);
    if (!rc)
        rc = qsnap__add_step(p, QSNAP__ST_FREEZE, keep_id, 0, 0, NULL, NULL);
    /* 2. Everything that was built on l now stands on the kept layer. */
    for (size_t i = 0; !rc && i < t.nl; i++) {
        struct qsnap__layer *d = &t.layers[i];
        if (d->backing != l_id || d->id == h_id || d->id == keep_id)
            continue;
        if (d->frozen)
            rc = qsnap__add_step(p, QSNAP__ST_THAW, d->id, 0, 0, NULL, NULL);
        if (!rc)
            rc = qsnap__add_step(p, QSNAP__ST_SET_BACKING, d->id, keep_id, 0, NULL, NULL);
        if (!rc && d->frozen)
            rc = qsnap__add_step(p, QSNAP__ST_FREEZE, d->id, 0, 0, NULL, NULL);
        d->backing = keep_id;
    }
    for (size_t i = 0; i < t.nn; i++) {
        if (t.nodes[i].layer == l_id)
            t.nodes[i].layer = keep_id;
    }
    if (!rc)
        rc = qsnap__add_save(p, &t);
    /* 3. Only the head depends on l now: write the head's changes into it. */
    if (!rc)
        rc = qsnap__add_step(p, QSNAP__ST_THAW, l_id, 0, 0, NULL, NULL);
    if (!rc)
        rc = qsnap__add_step(p, QSNAP__ST_COMMIT, h_id, l_id, 0, NULL, NULL);
    if (!rc)
        rc = qsnap__add_step(p, QSNAP__ST_FREEZE, l_id, 0, 0, NULL, NULL);
    if (rc)
        goto out;
    /* 4. The committed state is a node; the branch goes on from it. */
    nc = qsnap__add_node(&t);
    if (!nc) {
        rc = nomem();
        goto out;
    }
    nc->parent = base_id;
    nc->layer = l_id;
    nc->created = qsnap__now();
    b = qsnap__branch_by_name(&t, bname);
    b->base = nc->id;
    rc = qsnap__add_save(p, &t);
    qsnap__fmt_bytes(bytes, sizeof(bytes), used);
    if (!rc)
        rc = qsnap__set_summary(
            p, "committed branch %s (%s) into %s%s; every snapshot keeps its content", bname, bytes,
            was_disk && !strncmp(lfile, "../", 3) ? lfile + 3 : lfile,
            was_disk ? " (the disk)" : "");
out:
    free(bname);
    free(lfile);
    return qsnap__plan_close(out, p, &t, rc);
}
