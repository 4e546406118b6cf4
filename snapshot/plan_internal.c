/*
 * Planning with internal snapshots: create, revert and delete of a snapshot
 * kept inside a branch head's qcow2 file, and the refusals that keep such
 * snapshots safe from the external operations (plan.c says how plans are
 * built; the planners in plan_create.c, plan_branch.c and plan_delete.c
 * hand internal snapshots over to the ones here).
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

/* ---- internal snapshots -------------------------------------------------------- *
 *
 * An internal node's content is a qcow2 snapshot inside a branch head (the
 * head it was taken on, which stays the branch's writable head). What keeps
 * it safe: the head is never frozen while it holds one (external create is
 * refused), never dropped (branch delete, revert --discard refused; revert
 * keeps the branch), never emptied or streamed into (commit and delete
 * --stream refused), and its backing layer keeps its content (a snapshot
 * read through it). Reverting applies it to the head in place, which is only
 * done on the current branch (its head has no dependents); the head's state
 * is kept first as another internal snapshot unless --discard.
 */

/* Refuse (QSNAP_EREFUSED) when layer holds internal nodes; why and hint say the rest. */
int qsnap__refuse_internal_in(const struct qsnap__model *m, unsigned layer, const char *why,
                              const char *hint)
{
    const struct qsnap__branch *b = NULL;
    char *names = NULL;
    size_t k = qsnap__internal_nodes_in(m, layer, &names);
    int rc;

    if (!k)
        return 0;
    for (size_t i = 0; i < m->nb && !b; i++) {
        if (m->branches[i].head == layer)
            b = &m->branches[i];
    }
    if (b)
        rc = qsnap__err(QSNAP_EREFUSED, hint,
                        "the head of branch %s holds %sinternal snapshot%s (%s): %s", b->name,
                        k == 1 ? "an " : "", k == 1 ? "" : "s", names ? names : "?", why);
    else
        rc = qsnap__err(QSNAP_EREFUSED, hint, "%s holds internal snapshots (%s): %s",
                        qsnap__layer(m, layer) ? qsnap__layer(m, layer)->file : "a layer",
                        names ? names : "?", why);
    free(names);
    return rc;
}

/*
 * Internal snapshots in img (layer's file) that no node of m names (made
 * outside qsnap: 'virsh snapshot-create-as' without --disk-only, 'qemu-img
 * snapshot -c'): their count, their names joined in *names (when names is
 * not NULL; NULL when out of memory), control bytes shown as '?'.
 */
size_t qsnap__unknown_internal(const qcow2_image *img, const struct qsnap__model *m,
                               unsigned layer, char **names)
{
    size_t k = 0, len = 0;

    if (names)
        *names = NULL;
    for (size_t i = 0; img && i < qcow2_snapshot_count(img); i++) {
        qcow2_snapshot_info si;
        bool known = false;
        if (qcow2_snapshot_get(img, i, &si) != 0)
            continue;
        for (size_t j = 0; j < m->nn && !known; j++) {
            const struct qsnap__node *n = &m->nodes[j];
            known = n->internal && n->layer == layer && si.name && !strcmp(n->internal, si.name);
        }
        if (known)
            continue;
        k++;
        if (names && (k == 1 || *names) && len < 512) {
            const char *nm = si.name && si.name[0] ? si.name : si.id ? si.id : "?";
            char *more = realloc(*names, len + strlen(nm) + 3);
            if (!more) {
                free(*names);
                *names = NULL;
                continue;
            }
            *names = more;
            len += (size_t)sprintf(more + len, "%s", len ? ", " : "");
            /* The name is the file's (anyone may have made it): control bytes as '?'. */
            for (const unsigned char *c = (const unsigned char *)nm; *c; c++)
                more[len++] = *c < 0x20 || *c == 0x7f ? '?' : (char)*c;
            more[len] = '\0';
        }
    }
    return k;
}

/* The same for layer's file, opened here: a file that is gone, is not qcow2, or does not
 * open (damaged: what reads or writes it finds that, and dropping it stays possible) holds
 * none. */
int qsnap__foreign_internal(const qsnap_store *s, const struct qsnap__model *m, unsigned layer,
                            char **names, size_t *count)
{
    const struct qsnap__layer *l = qsnap__layer(m, layer);
    qcow2_image *img = NULL;
    char *path;
    int rc;

    *count = 0;
    if (names)
        *names = NULL;
    if (!l || l->fmt != QCOW2_FORMAT_QCOW2)
        return 0;
    path = qsnap__path(s, l->file);
    if (!path)
        return nomem();
    rc = qsnap__file_exists(path)
             ? qsnap__open_layer(s, l, QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_NO_LOCK, &img)
             : 0;
    free(path);
    if (rc)
        img = NULL; /* (its error is not this check's) */
    if (img)
        *count = qsnap__unknown_internal(img, m, layer, names);
    qcow2_image_close(img);
    return 0;
}

int qsnap__refuse_foreign_internal(const qsnap_store *s, const struct qsnap__model *m,
                                   unsigned layer, const char *why)
{
    const struct qsnap__layer *l = qsnap__layer(m, layer);
    char *names = NULL, *path;
    size_t k = 0;
    int rc = qsnap__foreign_internal(s, m, layer, &names, &k);

    if (rc || !k) {
        free(names);
        return rc;
    }
    path = qsnap__path(s, l->file);
    rc = qsnap__err(QSNAP_EINTEGRITY,
                    "with the VM shut down, delete it ('virsh snapshot-delete DOMAIN NAME', or "
                    "'qsnap image snapshot -d NAME FILE'), then run the command again",
                    "%s holds %s that qsnap did not make (%s; 'virsh snapshot-create-as' "
                    "without --disk-only makes one): %s; nothing was changed",
                    path ? path : l->file, k == 1 ? "an internal snapshot" : "internal snapshots",
                    names ? names : "?", why);
    free(path);
    free(names);
    return rc;
}

/* delete --children: the subtree must not hold internal nodes (delete them one by one). */
int qsnap__check_subtree_external(const struct qsnap__model *m, const struct qsnap__node *root)
{
    for (size_t i = 0; i < m->nn; i++) {
        const struct qsnap__node *n = &m->nodes[i];
        size_t steps = 0;
        if (!n->internal)
            continue;
        for (const struct qsnap__node *a = n; a && steps++ <= m->nn; a = qsnap__node(m, a->parent)) {
            if (a->id == root->id)
                return qsnap__err(QSNAP_EREFUSED,
                                  "'qsnap delete DISK SNAPSHOT' each internal snapshot first",
                                  "the subtree of %s holds internal snapshot %s: --children "
                                  "removes external snapshots and branches only",
                                  root->name ? root->name : "it",
                                  n->name ? n->name : n->internal);
        }
    }
    return 0;
}

/* Whether the qcow2 snapshot table of layer l holds a snapshot named name (noted: query.c). */
static int head_has_snapshot(const qsnap_store *s, const struct qsnap__layer *l, const char *name,
                             bool *has)
{
    qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img = NULL;
    char *path = qsnap__path(s, l->file);
    int rc;

    *has = false;
    if (!path)
        return nomem();
    oo.flags = QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_NO_LOCK;
    oo.format = QCOW2_FORMAT_QCOW2;
    rc = qsnap__image_open(s, path, &oo, &img, "'qsnap verify DISK' checks the store");
    free(path);
    if (rc)
        return rc;
    *has = qsnap__find_internal(img, name) >= 0;
    qcow2_image_close(img);
    /* A name found free must still be free when the step runs (a qemu-img snapshot of
     * that name made meanwhile would be taken for ours): checked again under the hold. */
    return qsnap__seen_internal(s, l, name, false, *has);
}

/* A generated name, free in the tree and in head l's snapshot table (NULL: out of memory). */
static int gen_internal_name(const qsnap_store *s, const struct qsnap__model *m,
                             const struct qsnap__layer *l, const char *prefix, char **out)
{
    *out = NULL;
    for (unsigned i = 1; i < 1000000; i++) {
        char *name;
        bool has = false;
        int rc;
        if (asprintf(&name, "%s-%u", prefix, i) < 0)
            return nomem();
        if (qsnap__name_taken(m, name) || qsnap_name_check(name) != 0) {
            free(name);
            continue;
        }
        rc = l ? head_has_snapshot(s, l, name, &has) : 0;
        if (rc || !has) {
            if (rc)
                free(name);
            else
                *out = name;
            return rc;
        }
        free(name);
    }
    return nomem();
}

int qsnap__plan_create_internal(qsnap_plan **out, qsnap_store *s, const qsnap_create_opts *o)
{
    struct qsnap__model t;
    qsnap_plan *p = NULL;
    struct qsnap__node *n;
    struct qsnap__branch *b;
    struct qsnap__layer *head;
    unsigned head_id, base_id;
    char *name = NULL, *bname = NULL;
    int rc = s->exists ? qsnap__check_writable_store(s) : qsnap__check_no_pending(s);

    if (rc)
        return rc;
    rc = qsnap__plan_open(s, "create", &t, &p, NULL, NULL, NULL);
    if (rc)
        return rc;
    if (o->name)
        rc = qsnap__check_new_name(&t, o->name);
    if (rc)
        goto out;
    if (!s->exists) {
        /* First snapshot: an unnamed root on the disk; the internal snapshot goes in
         * branch main's new head. */
        struct qsnap__node *root;
        rc = qsnap__plan_first(s, &t, p, NULL, &root, &head_id);
        if (rc)
            goto out;
        if (o->name)
            name = strdup(o->name);
        else
            rc = gen_internal_name(s, &t, NULL, "snap", &name);
    } else {
        rc = qsnap__current_branch(s, &t, &b, &head);
        if (rc)
            goto out;
        head_id = head->id;
        rc = qsnap__check_free(s, &t, head_id);
        if (!rc)
            rc = qsnap__check_link(s, &t, head_id);
        if (!rc)
            rc = qsnap__check_chain(s, &t, head->backing);
        if (!rc && head->fmt != QCOW2_FORMAT_QCOW2)
            rc = qsnap__err(QSNAP_EREFUSED, NULL, "the head of branch %s is not qcow2", b->name);
        if (rc)
            goto out;
        if (o->name) {
            bool has = false;
            rc = head_has_snapshot(s, head, o->name, &has);
            if (!rc && has)
                rc = qsnap__err(QSNAP_EUSAGE,
                                "choose another name ('qsnap image snapshot -l FILE' lists them)",
                                "%s already holds an internal snapshot named '%s' that the tree "
                                "does not know (made with qemu-img?)",
                                head->file, o->name);
            if (!rc && !(name = strdup(o->name)))
                rc = nomem();
        } else {
            rc = gen_internal_name(s, &t, head, "snap", &name);
        }
    }
    if (!rc && !name)
        rc = nomem();
    if (rc)
        goto out;
    b = qsnap__branch_by_name(&t, t.current);
    base_id = b->base;
    if (!(bname = strdup(b->name))) {
        rc = nomem();
        goto out;
    }
    n = qsnap__add_node(&t);
    if (!n) {
        rc = nomem();
        goto out;
    }
    n->name = name;
    name = NULL;
    n->internal = strdup(n->name);
    n->parent = base_id;
    n->layer = head_id;
    n->created = qsnap__now();
    n->desc = o->description ? strdup(o->description) : NULL;
    if (!n->internal || (o->description && !n->desc)) {
        rc = nomem();
        goto out;
    }
    b = qsnap__branch_by_name(&t, bname);
    b->base = n->id;
    rc = qsnap__attach_state(p, n, o->state_file);
    if (!rc)
        rc = qsnap__add_step(p, QSNAP__ST_INTERNAL_CREATE, head_id, 0, 0, n->internal, NULL);
    if (!rc)
        rc = qsnap__add_save(p, &t);
    if (!rc)
        rc = qsnap__set_summary(p,
                                "created internal snapshot %s of branch %s (inside %s, which stays "
                                "the branch's head)",
                                n->name, bname, qsnap__layer(&t, head_id)->file);
out:
    free(name);
    free(bname);
    return qsnap__plan_close(out, p, &t, rc);
}

int qsnap__plan_revert_internal(qsnap_plan **out, qsnap_store *s, const char *snapshot,
                                const char *new_branch, bool discard)
{
    struct qsnap__model t;
    struct qsnap__node *target, *base;
    struct qsnap__branch *cur, *owner = NULL;
    struct qsnap__layer *head;
    qsnap_plan *p = NULL;
    char *keep = NULL, *bname = NULL, *snap = NULL;
    bool differs = true, kept_already = false;
    unsigned target_id, head_id;
    int rc = qsnap__plan_open(s, "revert", &t, &p, snapshot, &target, NULL);

    if (rc)
        return rc;
    rc = qsnap__current_branch(s, &t, &cur, NULL);
    if (rc)
        goto out;
    for (size_t i = 0; i < t.nb; i++) {
        if (t.branches[i].head == target->layer)
            owner = &t.branches[i];
    }
    if (!owner) {
        rc = qsnap__err(QSNAP_EREFUSED, "'qsnap export DISK NAME OUT' copies it out",
                        "internal snapshot %s lives in a layer that is no longer a branch's "
                        "head: it can be read (diff, export) but not applied",
                        snapshot);
        goto out;
    }
    if (owner != cur) {
        char hint[256];
        snprintf(hint, sizeof(hint), "'qsnap switch DISK %s' first, then revert", owner->name);
        rc = qsnap__err(QSNAP_EREFUSED, hint,
                        "internal snapshot %s lives inside the head of branch %s, not of the "
                        "current branch %s: it is applied in place, on its own branch only",
                        snapshot, owner->name, cur->name);
        goto out;
    }
    if (new_branch) {
        rc = qsnap__err(QSNAP_EUSAGE, "revert without --branch",
                        "--branch does not apply: internal snapshot %s is reverted in place, on "
                        "branch %s's head (an overlay cannot start from an internal snapshot)",
                        snapshot, cur->name);
        goto out;
    }
    head = qsnap__layer(&t, cur->head);
    head_id = head->id;
    target_id = target->id;
    bname = strdup(cur->name);
    snap = strdup(target->internal);
    if (!bname || !snap) {
        rc = nomem();
        goto out;
    }
    rc = qsnap__check_free(s, &t, head_id);
    if (!rc)
        rc = qsnap__check_link(s, &t, head_id);
    if (!rc)
        rc = qsnap__check_chain(s, &t, head->backing);
    if (!rc)
        rc = qsnap__differs_from_internal(s, head, snap, &differs);
    if (rc)
        goto out;
    /* Is the head's state already kept by a node? (the target's, or the branch's base) */
    base = qsnap__node(&t, cur->base);
    kept_already = !differs;
    if (!kept_already && base && base->internal && base->layer == head_id) {
        bool d = true;
        rc = qsnap__differs_from_internal(s, head, base->internal, &d);
        kept_already = !d;
    } else if (!kept_already && base && base->layer == head->backing) {
        bool dirty = true;
        rc = qsnap__head_dirty(s, head, &dirty, NULL);
        kept_already = !dirty;
    }
    if (rc)
        goto out;
    if (!kept_already && !discard) {
        struct qsnap__node *k;
        char prefix[QSNAP_MAX_NAME];
        snprintf(prefix, sizeof(prefix), "%.100s-before-revert", bname);
        rc = gen_internal_name(s, &t, head, prefix, &keep);
        if (rc)
            goto out;
        k = qsnap__add_node(&t);
        if (!k || !(k->name = strdup(keep)) || !(k->internal = strdup(keep))) {
            rc = nomem();
            goto out;
        }
        cur = qsnap__branch_by_name(&t, bname);
        k->parent = cur->base;
        k->layer = head_id;
        k->created = qsnap__now();
        rc = qsnap__add_step(p, QSNAP__ST_INTERNAL_CREATE, head_id, 0, 0, keep, NULL);
        if (rc)
            goto out;
    }
    cur = qsnap__branch_by_name(&t, bname);
    cur->base = target_id;
    rc = qsnap__add_step(p, QSNAP__ST_INTERNAL_APPLY, head_id, 0, 0, snap, NULL);
    if (!rc)
        rc = qsnap__add_save(p, &t);
    if (rc)
        goto out;
    if (keep)
        rc = qsnap__set_summary(p,
                                "reverted branch %s to internal snapshot %s in place; its previous "
                                "state is kept as internal snapshot %s",
                                bname, snapshot, keep);
    else if (!kept_already)
        rc =
            qsnap__set_summary(p,
                               "reverted branch %s to internal snapshot %s in place; discarded its "
                               "changes",
                               bname, snapshot);
    else
        rc =
            qsnap__set_summary(p,
                               "reverted branch %s to internal snapshot %s in place (its state was "
                               "already kept)",
                               bname, snapshot);
out:
    free(keep);
    free(bname);
    free(snap);
    return qsnap__plan_close(out, p, &t, rc);
}

int qsnap__plan_delete_internal(qsnap_plan **out, qsnap_store *s, const char *snapshot)
{
    struct qsnap__model t;
    struct qsnap__node *n;
    struct qsnap__layer *l;
    qsnap_plan *p = NULL;
    char *snap = NULL;
    unsigned layer_id;
    int rc = qsnap__plan_open(s, "delete", &t, &p, snapshot, &n, NULL);

    if (rc)
        return rc;
    l = qsnap__layer(&t, n->layer);
    layer_id = l->id;
    if (l->frozen) {
        /* The layer as the user knows it: its path, not the store's name for it. */
        char *path = qsnap__path(s, l->file);
        rc = qsnap__err(QSNAP_EREFUSED, "'qsnap delete DISK SNAPSHOT --metadata' forgets the name only",
                        "internal snapshot %s lives in frozen layer %s: deleting it would write "
                        "into a layer others depend on",
                        snapshot, path ? path : l->file);
        free(path);
        goto out;
    }
    rc = qsnap__check_free(s, &t, layer_id);
    if (rc)
        goto out;
    if (!(snap = strdup(n->internal))) {
        rc = nomem();
        goto out;
    }
    if (n->state)
        rc = qsnap__defer_unlink(p, n->state);
    qsnap__reparent(&t, n->id, n->parent);
    qsnap__del_node(&t, n->id);
    /* The metadata stops naming it first; the snapshot goes after the commit point. */
    if (!rc)
        rc = qsnap__add_save(p, &t);
    if (!rc)
        rc = qsnap__add_step(p, QSNAP__ST_INTERNAL_DELETE, layer_id, 0, 0, snap, NULL);
    if (!rc)
        rc = qsnap__set_summary(p, "deleted internal snapshot %s (from %s)", snapshot,
                                qsnap__layer(&t, layer_id)->file);
out:
    free(snap);
    return qsnap__plan_close(out, p, &t, rc);
}
