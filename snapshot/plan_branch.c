/*
 * Planning the moves between branches: revert (a new branch on a snapshot,
 * the branch left kept or, with --discard, dropped), switch, and branch
 * create, delete and rename. plan.c says how plans are built.
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

/* ---- revert, switch, branch ------------------------------------------------- */

/*
 * Branch `name` with a fresh head on node node_id's layer: a new branch, or, when
 * b is given, b started again where it stands in the list (its old head dropped
 * first): a change of one record, where a removal and an addition at the end
 * would move every branch after it.
 */
static int start_branch(struct qsnap__model *t, qsnap_plan *p, struct qsnap__branch *b,
                        const char *name, unsigned node_id)
{
    struct qsnap__node *n = qsnap__node(t, node_id);
    struct qsnap__layer *head = n ? qsnap__new_overlay(t, n->layer) : NULL;

    if (!head)
        return nomem();
    if (!b) {
        b = qsnap__add_branch(t);
        if (!b || !(b->name = strdup(name)))
            return nomem();
    }
    b->head = head->id;
    b->base = node_id;
    b->created = qsnap__now();
    return qsnap__add_step(p, QSNAP__ST_CREATE, head->id, 0, 0, NULL, NULL);
}

/* Remove branch b's head layer and (after the commit point) its file. */
static int drop_head(struct qsnap__model *t, qsnap_plan *p, const struct qsnap__branch *b)
{
    struct qsnap__layer *h = qsnap__layer(t, b->head);
    int rc;

    if (!h)
        return 0;
    rc = qsnap__defer_unlink(p, h->file);
    qsnap__del_layer(t, h->id);
    return rc;
}

/* Remove a branch and (after the commit point) its head file. */
static int drop_branch(struct qsnap__model *t, qsnap_plan *p, const char *name)
{
    struct qsnap__branch *b = qsnap__branch_by_name(t, name);
    int rc;

    if (!b || !qsnap__layer(t, b->head))
        return 0;
    rc = drop_head(t, p, b);
    qsnap__del_branch(t, name);
    return rc;
}

void qsnap__fmt_bytes(char *buf, size_t len, uint64_t v)
{
    static const char *const unit[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    double d = (double)v;
    int u = 0;

    while (d >= 1024 && u < 5) {
        d /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(buf, len, "%" PRIu64 " B", v);
    else
        snprintf(buf, len, "%.1f %s", d, unit[u]);
}

/*
 * Whether branch b is the only way to name the state it stands on: its base
 * is an unnamed node (a commit makes one: the committed state) that no other
 * branch stands on. Dropping such a branch, even a clean one, would leave a
 * state that differs from every named one and that no command can name.
 */
static bool only_name_of_base(const struct qsnap__model *t, const struct qsnap__branch *b)
{
    const struct qsnap__node *n = qsnap__node(t, b->base);

    if (!n || n->name)
        return false;
    for (size_t i = 0; i < t->nb; i++) {
        if (&t->branches[i] != b && t->branches[i].base == b->base)
            return false;
    }
    return true;
}

int qsnap_plan_revert(qsnap_plan **out, qsnap_store *s, const char *snapshot,
                      const char *new_branch, bool discard)
{
    struct qsnap__model t;
    struct qsnap__node *target;
    struct qsnap__branch *cur;
    qsnap_plan *p = NULL;
    char *left = NULL, *newname = NULL, bytes[32];
    const char *kept_why = "the state it stands on has no snapshot name";
    bool dirty = false, drop, restart;
    uint64_t used = 0;
    int rc = qsnap__check_writable_store(s);

    if (rc)
        return rc;
    if (qsnap__node_by_name(&s->m, snapshot) && qsnap__node_by_name(&s->m, snapshot)->internal)
        return qsnap__plan_revert_internal(out, s, snapshot, new_branch, discard);
    rc = qsnap__plan_open(s, "revert", &t, &p, snapshot, &target, NULL);
    if (rc)
        return rc;
    rc = qsnap__current_branch(s, &t, &cur, NULL);
    if (rc)
        goto out;
    left = strdup(cur->name);
    if (!left) {
        rc = nomem();
        goto out;
    }
    rc = qsnap__head_dirty(s, qsnap__layer(&t, cur->head), &dirty, &used);
    if (!rc)
        rc = qsnap__check_chain(s, &t, target->layer);
    if (!rc)
        rc = qsnap__check_depth(&t, target->layer);
    if (rc)
        goto out;
    drop = discard || !dirty;
    /* A clean branch on an unnamed state is that state's only name: kept (see above). */
    if (drop && !discard && only_name_of_base(&t, cur))
        drop = false;
    if (qsnap__internal_nodes_in(&t, cur->head, NULL)) {
        kept_why = "its head holds internal snapshots";
        /* Its head holds internal snapshots: dropping it would delete them. */
        if (discard) {
            rc = qsnap__refuse_internal_in(
                &t, cur->head, "--discard would delete them with the branch",
                "revert without --discard (the branch is kept), or delete "
                "the internal snapshots first");
            goto out;
        }
        drop = false;
    }
    if (drop) {
        /* Internal snapshots made outside qsnap in its head: the same, but for --discard
         * they are not qsnap's to drop. */
        size_t foreign = 0;
        rc = qsnap__foreign_internal(s, &t, cur->head, NULL, &foreign);
        if (!rc && foreign && discard)
            rc = qsnap__refuse_foreign_internal(s, &t, cur->head,
                                                "--discard would delete it with the branch");
        if (rc)
            goto out;
        drop = !foreign;
        if (foreign)
            kept_why = "its head holds internal snapshots that qsnap did not make";
    }
    /* A VM still running on the head it would leave: stop it first (it is about to
     * be left, and, when clean or discarded, removed). */
    rc = qsnap__check_free(s, &t, cur->head);
    if (rc)
        goto out;
    if (new_branch) {
        if (!(drop && !strcmp(new_branch, left))) {
            rc = qsnap__check_new_name(&t, new_branch);
            if (rc)
                goto out;
        }
        newname = strdup(new_branch);
    } else {
        newname = drop ? strdup(left) : qsnap__gen_name(&t, snapshot);
    }
    if (!newname) {
        rc = nomem();
        goto out;
    }
    /* The new branch takes the dropped one's place when it takes its name. */
    restart = drop && !strcmp(newname, left);
    if (restart)
        rc = drop_head(&t, p, cur);
    else if (drop)
        rc = drop_branch(&t, p, left);
    if (!rc)
        rc = start_branch(&t, p, restart ? cur : NULL, newname, target->id);
    if (rc)
        goto out;
    qsnap__str_free(&t, t.current);
    t.current = strdup(newname);
    if (!t.current) {
        rc = nomem();
        goto out;
    }
    /* The new head exists before the metadata names it; the old head goes after. */
    rc = qsnap__add_last_save(p, &t);
    if (rc)
        goto out;
    qsnap__fmt_bytes(bytes, sizeof(bytes), used);
    if (!drop && !dirty)
        rc = qsnap__set_summary(p,
                                "reverted to %s on new branch %s; branch %s is kept (%s)",
                                snapshot, newname, left, kept_why);
    else if (!drop)
        rc = qsnap__set_summary(p,
                                "reverted to %s on new branch %s; branch %s keeps its changes (%s)",
                                snapshot, newname, left, bytes);
    else if (dirty)
        rc = qsnap__set_summary(p,
                                "reverted to %s on branch %s; discarded %s of changes on branch %s",
                                snapshot, newname, bytes, left);
    else
        rc = qsnap__set_summary(p, "reverted to %s on branch %s (branch %s had no changes)",
                                snapshot, newname, left);
out:
    free(left);
    free(newname);
    return qsnap__plan_close(out, p, &t, rc);
}

int qsnap_plan_switch(qsnap_plan **out, qsnap_store *s, const char *branch)
{
    struct qsnap__model t;
    struct qsnap__branch *b;
    qsnap_plan *p = NULL;
    int rc = qsnap__check_writable_store(s);

    if (rc)
        return rc;
    rc = qsnap__plan_open(s, "switch", &t, &p, branch, NULL, &b);
    if (!rc) {
        qsnap__str_free(&t, t.current);
        t.current = strdup(branch);
        rc = t.current ? qsnap__add_last_save(p, &t) : nomem();
    }
    if (!rc)
        rc = qsnap__set_summary(p, "switched to branch %s", branch);
    return qsnap__plan_close(out, p, &t, rc);
}

int qsnap_plan_branch_create(qsnap_plan **out, qsnap_store *s, const char *name, const char *at)
{
    struct qsnap__model t;
    struct qsnap__node *n = NULL;
    qsnap_plan *p = NULL;
    int rc = qsnap__check_writable_store(s);

    if (rc)
        return rc;
    /* The new name is checked before the snapshot is looked for: only the copy here. */
    rc = qsnap__plan_open(s, NULL, &t, NULL, NULL, NULL, NULL);
    if (rc)
        return rc;
    rc = qsnap__check_new_name(&t, name);
    if (!rc && at) {
        rc = qsnap__find_snapshot(&t, at, &n);
    } else if (!rc) {
        struct qsnap__branch *cur = qsnap__branch_by_name(&t, t.current);
        n = cur ? qsnap__node(&t, cur->base) : NULL;
        if (!n)
            rc = qsnap__err(QSNAP_EUSAGE, "name one with --at SNAPSHOT",
                            "the current branch has no base snapshot");
    }
    if (!rc && n->internal)
        rc = qsnap__err(QSNAP_EREFUSED,
                        "'qsnap revert DISK SNAPSHOT' applies it on its own branch; 'qsnap export "
                        "DISK NAME OUT' copies it out; --at names an external snapshot",
                        "%s is an internal snapshot: a new branch needs an overlay, and an "
                        "overlay cannot be backed by an internal snapshot of another file",
                        n->name ? n->name : "the current branch's base");
    if (!rc)
        rc = qsnap__check_chain(s, &t, n->layer);
    if (!rc)
        rc = qsnap__check_depth(&t, n->layer);
    if (!rc)
        rc = qsnap__plan_new(&p, s, "branch");
    if (!rc)
        rc = start_branch(&t, p, NULL, name, n->id);
    if (!rc)
        rc = qsnap__add_save(p, &t);
    if (!rc)
        rc = qsnap__set_summary(p, "created branch %s at %s", name,
                                n->name ? n->name : "(unnamed node)");
    return qsnap__plan_close(out, p, &t, rc);
}

int qsnap_plan_branch_delete(qsnap_plan **out, qsnap_store *s, const char *name, bool force)
{
    struct qsnap__model t;
    struct qsnap__branch *b;
    qsnap_plan *p = NULL;
    bool dirty = false, gone = false;
    uint64_t used = 0;
    char bytes[32];
    int rc = qsnap__check_writable_store(s);

    if (rc)
        return rc;
    rc = qsnap__plan_open(s, NULL, &t, NULL, name, NULL, &b);
    if (rc)
        return rc;
    if (t.current && !strcmp(t.current, name))
        rc = qsnap__err(QSNAP_EREFUSED, "'qsnap switch DISK BRANCH' first",
                        "branch %s is the current branch", name);
    if (!rc)
        rc = qsnap__refuse_internal_in(&t, b->head, "deleting the branch would delete them",
                                       "'qsnap delete DISK SNAPSHOT' each of them first");
    if (!rc)
        rc = qsnap__refuse_foreign_internal(s, &t, b->head,
                                            "deleting the branch would delete it");
    /* Made before the head is looked at (qsnap__plan_new starts what the plan read afresh). */
    if (!rc)
        rc = qsnap__plan_new(&p, s, "branch-delete");
    if (!rc) {
        /* A head file that is gone (verify reports it): only --force drops the branch. */
        const struct qsnap__layer *h = qsnap__layer(&t, b->head);
        char *hpath = h ? qsnap__path(s, h->file) : NULL;
        gone = hpath && !qsnap__file_exists(hpath);
        free(hpath);
        if (gone && !force)
            rc = qsnap__err(QSNAP_EREFUSED, "--force deletes the branch anyway",
                            "branch %s: its head %s is missing", name, h->file);
    }
    if (!rc && !gone)
        rc = qsnap__head_dirty(s, qsnap__layer(&t, b->head), &dirty, &used);
    qsnap__fmt_bytes(bytes, sizeof(bytes), used);
    if (!rc && dirty && !force)
        rc = qsnap__err(QSNAP_EREFUSED, "--force deletes it anyway",
                        "branch %s holds %s of changes that no snapshot keeps", name, bytes);
    if (!rc && !gone)
        rc = qsnap__check_free(s, &t, b->head);
    if (!rc)
        rc = drop_branch(&t, p, name);
    if (!rc)
        rc = qsnap__add_save(p, &t);
    if (!rc)
        rc = qsnap__set_summary(
            p, dirty ? "deleted branch %s (%s of changes dropped)" : "deleted branch %s%s", name,
            dirty  ? bytes
            : gone ? " (its head file was missing)"
                   : "");
    return qsnap__plan_close(out, p, &t, rc);
}

int qsnap_plan_branch_rename(qsnap_plan **out, qsnap_store *s, const char *old_name,
                             const char *new_name)
{
    struct qsnap__model t;
    struct qsnap__branch *b;
    qsnap_plan *p = NULL;
    int rc = qsnap__check_writable_store(s);

    if (rc)
        return rc;
    rc = qsnap__plan_open(s, NULL, &t, NULL, old_name, NULL, &b);
    if (rc)
        return rc;
    rc = qsnap__check_new_name(&t, new_name);
    if (!rc)
        rc = qsnap__plan_new(&p, s, "branch-rename");
    if (!rc) {
        char *nn = strdup(new_name);
        if (!nn) {
            rc = nomem();
        } else {
            if (t.current && !strcmp(t.current, old_name)) {
                qsnap__str_free(&t, t.current);
                t.current = strdup(new_name);
            }
            qsnap__str_free(&t, b->name);
            b->name = nn;
            rc = qsnap__add_save(p, &t);
        }
    }
    if (!rc)
        rc = qsnap__set_summary(p, "renamed branch %s to %s", old_name, new_name);
    return qsnap__plan_close(out, p, &t, rc);
}
