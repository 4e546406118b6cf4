/*
 * Planning create: the first snapshot of a disk (the store is made around
 * it: the disk becomes the frozen root layer under a new head) and every
 * later external snapshot of the current branch. plan.c says how plans are
 * built; internal snapshots are planned in plan_internal.c.
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

/* ---- create ----------------------------------------------------------------- */

int qsnap__attach_state(qsnap_plan *p, struct qsnap__node *n, const char *state_file)
{
    char *abs, *rel;
    const char *base;
    struct stat st;

    if (!state_file)
        return 0;
    if (stat(state_file, &st) < 0 || !S_ISREG(st.st_mode))
        return qsnap__err(QSNAP_ENOTFOUND, "give the path of an existing regular file",
                          "%s: state file not found (a regular file is needed)", state_file);
    abs = realpath(state_file, NULL);
    if (!abs)
        return nomem();
    base = strrchr(abs, '/') + 1;
    if (asprintf(&rel, "state/%u-%s", n->id, base) < 0) {
        free(abs);
        return nomem();
    }
    n->state = rel;
    {
        int rc = qsnap__add_step(p, QSNAP__ST_MKDIR, 0, 0, 0, "state", NULL);
        if (!rc)
            rc = qsnap__add_step(p, QSNAP__ST_LINK_STATE, 0, 0, 0, abs, rel);
        free(abs);
        return rc;
    }
}

/*
 * The first operation on a disk sets up the store: the disk (opened for
 * writing, which proves no QEMU uses it) becomes the frozen root layer with a
 * root node on it, and branch main's head goes on top. Steps: make the store
 * and layers/, link the state file (if any), create the head, freeze the
 * disk. *root_out stays valid until the next node is added.
 */
int qsnap__plan_first(qsnap_store *s, struct qsnap__model *t, qsnap_plan *p, const char *state_file,
                      struct qsnap__node **root_out, unsigned *head_out)
{
    qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img = NULL;
    struct qsnap__layer *disk, *head;
    struct qsnap__node *root;
    struct qsnap__branch *b;
    unsigned disk_id;
    int rc;

    oo.flags = QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_RDWR;
    rc = qcow2_image_open(&img, s->disk_abs, &oo);
    if (rc)
        return qsnap__from_qcow2(rc, "stop the virtual machine that uses the disk first");
    disk = qsnap__add_layer(t);
    if (!disk || !(disk->file = strdup(t->disk))) {
        qcow2_image_close(img);
        return nomem();
    }
    disk->fmt = qcow2_image_format(img);
    disk->is_disk = true;
    disk->frozen = true;
    disk_id = disk->id;
    qcow2_image_close(img);
    root = qsnap__add_node(t);
    head = root ? qsnap__new_overlay(t, disk_id) : NULL; /* may move the layers, not the nodes */
    b = head ? qsnap__add_branch(t) : NULL;
    if (!b || !(b->name = strdup("main")) || !(t->current = strdup("main")))
        return nomem();
    root->layer = disk_id;
    root->created = qsnap__now();
    b->head = head->id;
    b->base = root->id;
    b->created = root->created;
    *root_out = root;
    *head_out = head->id;
    rc = qsnap__add_step(p, QSNAP__ST_MKDIR, 0, 0, 0, "", NULL);
    if (!rc)
        rc = qsnap__add_step(p, QSNAP__ST_MKDIR, 0, 0, 0, "layers", NULL);
    if (!rc)
        rc = qsnap__attach_state(p, root, state_file);
    if (!rc)
        rc = qsnap__add_step(p, QSNAP__ST_CREATE, head->id, 0, 0, NULL, NULL);
    if (!rc)
        rc = qsnap__add_step(p, QSNAP__ST_FREEZE, disk_id, 0, 0, NULL, NULL);
    return rc;
}

int qsnap_plan_create(qsnap_plan **out, qsnap_store *s, const qsnap_create_opts *o)
{
    qsnap_create_opts opts = QSNAP_CREATE_OPTS_INIT;
    struct qsnap__model t;
    qsnap_plan *p = NULL;
    struct qsnap__node *n;
    struct qsnap__layer *head;
    char *name = NULL;
    int rc;

    if (o)
        opts = *o;
    rc = qsnap__desc_check(opts.description, "create");
    if (rc)
        return rc;
    if (o && o->internal)
        return qsnap__plan_create_internal(out, s, o);
    rc = s->exists ? qsnap__check_writable_store(s) : qsnap__check_no_pending(s);
    if (rc)
        return rc;
    rc = qsnap__plan_open(s, "create", &t, &p, NULL, NULL, NULL);
    if (rc)
        return rc;
    if (opts.name) {
        rc = qsnap__check_new_name(&t, opts.name);
        if (rc)
            goto fail;
        name = strdup(opts.name);
    } else {
        name = qsnap__gen_name(&t, "snap");
    }
    if (!name) {
        rc = nomem();
        goto fail;
    }
    if (!s->exists) {
        /* First snapshot: the root node on the disk is this snapshot. */
        unsigned head_id;
        rc = qsnap__plan_first(s, &t, p, opts.state_file, &n, &head_id);
        if (rc)
            goto fail;
        n->name = name;
        name = NULL;
        n->desc = opts.description ? strdup(opts.description) : NULL;
        rc = qsnap__add_last_save(p, &t);
        if (!rc) {
            /* Internal snapshots the disk holds already are frozen with it: kept, and
             * readable ('qemu-img convert -l'), but not for reverting to: said. */
            qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
            qcow2_image *img = NULL;
            char *names = NULL;
            size_t k = 0;
            oo.flags = QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_NO_LOCK;
            if (qcow2_image_open(&img, s->disk_abs, &oo) == 0)
                k = qsnap__unknown_internal(img, &t, n->layer, &names);
            qcow2_image_close(img);
            if (!rc)
                rc = qsnap__set_summary(
                    p, "created snapshot %s of %s; branch main continues from it%s%s%s", n->name,
                    strrchr(s->disk_abs, '/') + 1,
                    k ? "; the disk's own internal snapshots (" : "", k && names ? names : "",
                    k ? ") are frozen with it: kept and readable, no longer for reverting to"
                      : "");
            free(names);
        }
    } else {
        struct qsnap__branch *b;
        struct qsnap__layer *old_head;
        bool dirty = true;

        rc = qsnap__current_branch(s, &t, &b, &old_head);
        if (rc)
            goto fail;

        rc = qsnap__refuse_internal_in(
            &t, old_head->id,
            "an external snapshot would freeze them inside a read-only "
            "layer, where they could no longer be reverted to or deleted",
            "take an internal one with --internal, or delete the internal "
            "snapshots first ('qsnap delete DISK SNAPSHOT')");
        if (!rc)
            rc = qsnap__refuse_foreign_internal(
                s, &t, old_head->id,
                "an external snapshot would freeze it inside a read-only layer, where it "
                "could no longer be reverted to or deleted");
        if (!rc)
            rc = qsnap__check_free(s, &t, old_head->id);
        if (!rc)
            rc = qsnap__check_link(s, &t, old_head->id);
        if (!rc)
            rc = qsnap__check_chain(s, &t, old_head->backing);
        if (!rc)
            rc = qsnap__head_dirty(s, old_head, &dirty, NULL);
        if (rc)
            goto fail;
        if (!dirty) {
            /* Nothing written since the branch's base: the new snapshot's content is
             * the layer under the head already. No file changes, no deeper chain. */
            unsigned layer = old_head->backing;
            n = qsnap__add_node(&t);
            if (!n) {
                rc = nomem();
                goto fail;
            }
            b = qsnap__branch_by_name(&t, t.current);
            n->name = name;
            name = NULL;
            n->parent = b->base;
            n->layer = layer;
            n->created = qsnap__now();
            n->desc = opts.description ? strdup(opts.description) : NULL;
            b->base = n->id;
            rc = qsnap__attach_state(p, n, opts.state_file);
            if (!rc)
                rc = qsnap__add_last_save(p, &t);
            if (!rc)
                rc = qsnap__set_summary(
                    p,
                    "created snapshot %s of branch %s (no changes since its base: "
                    "no new layer)",
                    n->name, b->name);
            if (rc)
                goto fail;
            return qsnap__plan_close(out, p, &t, 0);
        }
        rc = qsnap__check_depth(&t, old_head->id);
        if (rc)
            goto fail;
        n = qsnap__add_node(&t);
        if (!n) {
            rc = nomem();
            goto fail;
        }
        b = qsnap__branch_by_name(&t, t.current); /* arrays may have moved */
        old_head = qsnap__layer(&t, b->head);
        n->name = name;
        name = NULL;
        n->parent = b->base;
        n->layer = old_head->id;
        n->created = qsnap__now();
        n->desc = opts.description ? strdup(opts.description) : NULL;
        head = qsnap__new_overlay(&t, old_head->id);
        if (!head) {
            rc = nomem();
            goto fail;
        }
        b = qsnap__branch_by_name(&t, t.current);
        old_head = qsnap__layer(&t, b->head);
        old_head->frozen = true;
        b->head = head->id;
        b->base = n->id;
        rc = qsnap__attach_state(p, n, opts.state_file);
        if (!rc)
            rc = qsnap__add_step(p, QSNAP__ST_CREATE, head->id, 0, 0, NULL, NULL);
        if (!rc)
            rc = qsnap__add_step(p, QSNAP__ST_FREEZE, old_head->id, 0, 0, NULL, NULL);
        if (!rc)
            rc = qsnap__add_last_save(p, &t);
        if (!rc)
            rc = qsnap__set_summary(p, "created snapshot %s of branch %s", n->name, b->name);
    }
    if (rc)
        goto fail;
    return qsnap__plan_close(out, p, &t, 0);
fail:
    free(name);
    return qsnap__plan_close(out, p, &t, rc);
}
