/*
 * Carrying out plans, crash-safely.
 *
 * Before the first step, the whole plan (its steps and every target model)
 * is written to DIR/journal atomically. Steps then run in order; a SAVE step
 * writes the metadata (atomically) and is a commit point. When the last step
 * is done the journal is removed. After a crash, the journal is replayed
 * from the step after the last commit point the metadata reached: every
 * step is idempotent, so replaying one that had completed changes nothing:
 *
 *   MKDIR        mkdir; an existing directory is fine
 *   CREATE       made under a temporary name, renamed into place: a final
 *                file that exists is complete and is left alone
 *   PRESERVE     the same, and it only reads the layer it preserves
 *   FREEZE/THAW  chmod (and fingerprint) again
 *   LINK_STATE   a copy made under a temporary name, renamed into place: a
 *                final file that exists is complete (fingerprinted again)
 *   STREAM       a layer already backed by the target has nothing to copy
 *   SET_BACKING  rewriting the same link is harmless
 *   COMMIT       the head keeps its data until the base holds it durably;
 *                an emptied head commits nothing
 *   UNLINK       a missing file is fine
 *   INTERNAL_CREATE  an internal snapshot of that name already in the head is
 *                the one this step made (plans refuse names the file already
 *                holds), so it is done; libqcow2 switches the snapshot table
 *                in one header write, so a crash leaves it whole or absent
 *   INTERNAL_APPLY   applying the same snapshot again gives the same state
 *   INTERNAL_DELETE  a snapshot already missing is done
 *   ADOPT        rename into the store: a final file that exists while the
 *                source is gone was moved by an earlier run
 *
 * Internal snapshots are looked up by exact name, and applied or deleted by
 * their unique id, never by qcow2_snapshot_find()'s id-or-name rule: a
 * snapshot named "2" must not hit another whose id is 2.
 *
 * Rollback is never needed: every step before a commit point keeps the
 * content of every state in both the old and the new metadata, and every
 * step after the last one only removes what nothing names any more.
 *
 * The journal itself (its format, writing and checked reading): journal.c.
 */
#include <errno.h>
#include <fcntl.h>
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

/* The layer record for id in the plan's targets (the latest first) or the store. */
static struct qsnap__layer *find_layer(qsnap_store *s, qsnap_plan *p, unsigned id)
{
    for (size_t k = p->nm; k-- > 0;) {
        struct qsnap__layer *l = qsnap__layer(&p->models[k], id);
        if (l)
            return l;
    }
    return qsnap__layer(&s->m, id);
}

int qsnap__layer_fingerprint(const qsnap_store *s, struct qsnap__layer *l)
{
    char *path = qsnap__path(s, l->file);
    uint64_t data_from = 0;
    struct stat st;
    int rc = 0;

    if (!path)
        return nomem();
    l->have_fpd = false;
    if (l->fmt == QCOW2_FORMAT_QCOW2) {
        /* Its header first: where the data starts (the cluster size), the virtual size. */
        qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
        qcow2_image *img = NULL;
        oo.flags = QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_NO_LOCK;
        oo.format = QCOW2_FORMAT_QCOW2;
        rc = qsnap__image_open(s, path, &oo, &img, NULL);
        l->have_vsize = rc == 0;
        l->vsize = rc ? 0 : qcow2_image_size(img);
        data_from = rc ? 0 : qcow2_image_cluster_size(img);
        qcow2_image_close(img);
    }
    /* Through a descriptor opened without following links (safe.c); for a qcow2 layer,
     * the whole file and the data alone (all but the header cluster) in one pass. */
    if (!rc)
        rc = qsnap__fingerprint_store_file(s, l->file, data_from, l->fp,
                                           data_from ? l->fpd : NULL, &st);
    if (!rc) {
        l->size = (uint64_t)st.st_size;
        l->mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
        l->have_fp = true;
        l->have_fpd = data_from != 0;
    }
    free(path);
    return rc;
}

/* ---- steps -------------------------------------------------------------------- */

static int st_mkdir(qsnap_store *s, const struct qsnap__step *st)
{
    char *path = qsnap__path(s, st->a);
    int rc = 0;

    if (!path)
        return nomem();
    qsnap__layers_forget(s);
    if (mkdir(path, 0777) < 0 && errno != EEXIST) {
        rc = qsnap__err(QSNAP_ERROR, NULL, "%s: cannot make directory: %s", path, strerror(errno));
    } else {
        /* One that was there already must be a directory, not a link to one. */
        int dfd = -1;
        rc = qsnap__store_dirfd(s, st->a, &dfd);
        if (dfd >= 0)
            close(dfd);
        if (!rc)
            qsnap__own(s, path);
    }
    free(path);
    return rc;
}

/* The virtual size of layer b, read from its own file alone. */
static int overlay_size(const qsnap_store *s, const struct qsnap__layer *b, uint64_t *size)
{
    qcow2_image *img = NULL;
    int rc = qsnap__open_layer(s, b, QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_NO_LOCK, &img);

    if (rc)
        return rc;
    *size = qcow2_image_size(img);
    qcow2_image_close(img);
    return 0;
}

/*
 * Create the qcow2 overlay for layer l (backed by layer b) at tmp (the caller
 * renames it to its final name), held (inuse.c) from before it has that name
 * to the end of the operation, as the files the plan touched are.
 */
static int make_overlay(qsnap_store *s, qsnap_plan *p, const struct qsnap__layer *l,
                        const struct qsnap__layer *b, char **tmp_out)
{
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;
    char *tmp = NULL, *link = qsnap__link_name(l->file, b->file);
    char *final = qsnap__path(s, l->file);
    int rc;

    *tmp_out = NULL;
    if (!link || !final || asprintf(&tmp, "%s/layers/.tmp-%u.qcow2", s->dir, l->id) < 0) {
        free(link);
        free(final);
        return nomem();
    }
    co.backing_file = link;
    co.backing_format = qcow2_format_name(b->fmt);
    /* The size from the backing layer's own header: opening it with its chain (what
     * a create without a size does) would read every layer down to the base, a cost
     * that grows with the branch's depth; the chain was checked when it was made. */
    rc = overlay_size(s, b, &co.size);
    /* A leftover of a killed run goes (a link there is refused); made with O_EXCL. */
    if (!rc)
        rc = qsnap__clear_tmp(s, tmp + strlen(s->dir) + 1);
    if (!rc)
        rc = qsnap__image_create(s, tmp, &co);
    if (!rc)
        qsnap__own(s, tmp);
    if (!rc)
        rc = qsnap__touch_hold_new(s, p, tmp + strlen(s->dir) + 1, "new layer");
    free(link);
    free(final);
    if (rc) {
        free(tmp);
        return rc;
    }
    *tmp_out = tmp;
    return 0;
}

static int rename_into_place(qsnap_store *s, const char *tmp, const char *rel)
{
    size_t dl = strlen(s->dir);

    if (strncmp(tmp, s->dir, dl) != 0 || tmp[dl] != '/')
        return qsnap__err(QSNAP_ERROR, NULL, "%s: not in the store", tmp);
    /* renameat in the store's directory (a link at rel is replaced, never followed). */
    return qsnap__rename_store_file(s, tmp + dl + 1, rel);
}

/*
 * Whether a layer's final name (rel, its path final) is taken already: on a replay
 * of the journal by the file an earlier run of the step made (complete, since it was
 * renamed into place last: a regular file, never a link); on a first run by a file
 * this operation did not make (a leftover whose metadata was lost, or one put
 * there), which the new layer must not be taken for: an error naming it.
 */
static int final_taken(qsnap_store *s, qsnap_plan *p, const char *rel, const char *final,
                       bool *taken)
{
    *taken = qsnap__file_exists(final);
    if (!*taken)
        return 0;
    if (p->replay)
        return qsnap__check_store_file(s, rel);
    p->taken = true;
    return qsnap__err(QSNAP_EINTEGRITY,
                      "'qsnap image info FILE' shows what it holds; move it out of the store",
                      "%s: a file of the name the new layer needs is there already, and this "
                      "operation did not make it",
                      final);
}

/* The last error again, said of an operation that changed nothing (hint: when it has none). */
static int nothing_changed(int rc, const char *hint)
{
    qsnap_error e = *qsnap_error_last();
    char msg[1024], h[1024];

    /* e's strings point at the buffers the next qsnap__err() writes: copied first. */
    snprintf(msg, sizeof(msg), "%s", e.message);
    snprintf(h, sizeof(h), "%s", e.hint ? e.hint : "");
    return qsnap__err(rc, h[0] ? h : hint, "%s (nothing was changed)", msg);
}

/* Every layer (or state file) the plan makes whose name a file has already: refused
 * (final_taken). */
static int refuse_taken_names(qsnap_store *s, qsnap_plan *p)
{
    int rc = 0;

    for (size_t i = 0; !rc && i < p->n; i++) {
        const struct qsnap__step *st = &p->steps[i];
        const struct qsnap__layer *l;
        char *final;
        bool taken;
        if (st->kind == QSNAP__ST_LINK_STATE) {
            struct stat sb;
            if (qsnap__lstat_store_file(s, st->b, &sb) == 0)
                rc = qsnap__err(QSNAP_EINTEGRITY, "look at it and move it out of the store",
                                "%s/%s: a file of the name the state file needs is there "
                                "already, and this operation did not make it",
                                s->dir, st->b);
            continue;
        }
        if (st->kind != QSNAP__ST_CREATE && st->kind != QSNAP__ST_PRESERVE)
            continue;
        l = find_layer(s, p, st->x);
        if (!l || qsnap__layer(&s->m, l->id)) /* (not a new layer: its step says so) */
            continue;
        final = qsnap__path(s, l->file);
        if (!final)
            return nomem();
        rc = final_taken(s, p, l->file, final, &taken);
        free(final);
    }
    p->taken = false; /* nothing of this run's to undo yet */
    return rc ? nothing_changed(rc, NULL) : 0;
}

/* ---- pre-flight: the images the plan reads or writes, before the journal ----------- */

/* Whether set holds id. */
static bool ids_has(const struct qsnap__ids *set, unsigned id)
{
    for (size_t i = 0; i < set->n; i++) {
        if (set->v[i] == id)
            return true;
    }
    return false;
}

/* Add layer id to set when the store has it now. False: out of memory. */
static bool preflight_one(const qsnap_store *s, struct qsnap__ids *set, unsigned id)
{
    return !id || !qsnap__layer(&s->m, id) || ids_has(set, id) || qsnap__ids_add(set, id);
}

/*
 * Add layer id to set, and the layers below it down to (not including) layer `to`
 * (0: the whole chain) to `below`, by its backing links in the store's model and in
 * each target model. False: out of memory.
 */
static bool preflight_add(const qsnap_store *s, const qsnap_plan *p, struct qsnap__ids *set,
                          unsigned id, unsigned to, struct qsnap__ids *below)
{
    if (!preflight_one(s, set, id))
        return false;
    for (size_t k = 0; below && k <= p->nm; k++) {
        const struct qsnap__model *m = k < p->nm ? &p->models[k] : &s->m;
        const struct qsnap__layer *l = qsnap__layer(m, id);
        /* (bounded: a model's chains are checked acyclic when it is loaded or made) */
        for (size_t depth = 0; l && l->backing && l->backing != to && depth <= m->nl; depth++) {
            if (!preflight_one(s, below, l->backing))
                return false;
            l = qsnap__layer(m, l->backing);
        }
    }
    return true;
}

/*
 * Open layer l as every step would, and with check, check its metadata as verify does
 * (its corruptions; leaks are harmless). An image a step would find damaged half-way
 * through the plan is found here, while nothing is written yet.
 */
static int preflight_layer(qsnap_store *s, const struct qsnap__layer *l, bool check)
{
    qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
    qcow2_check_result cr;
    qcow2_image *img = NULL;
    char *path = qsnap__path(s, l->file);
    int rc;

    if (!path)
        return nomem();
    if (!qsnap__file_exists(path)) {
        rc = qsnap__err(QSNAP_EINTEGRITY, NULL, "%s: layer file is missing", path);
        free(path);
        return rc;
    }
    oo.flags = QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_NO_LOCK;
    oo.format = l->fmt;
    /* A small cache: cheap to set up and free (a check reads each table once). */
    oo.cache_bytes = 256u << 10;
    rc = qsnap__image_open(s, path, &oo, &img, NULL);
    if (rc && rc != QSNAP_EBUSY && rc != QSNAP_EINTEGRITY) {
        /* A store file qsnap made that cannot be opened is damage, whatever the cause. */
        char msg[1024];
        snprintf(msg, sizeof(msg), "%s", qsnap_error_last()->message);
        rc = qsnap__err(QSNAP_EINTEGRITY, NULL, "%s", msg);
    }
    if (!rc && check && l->fmt == QCOW2_FORMAT_QCOW2) {
        memset(&cr, 0, sizeof(cr));
        rc = qcow2_image_check(img, 0, &cr);
        if (rc)
            rc = qsnap__from_qcow2(rc, NULL);
        else if (cr.corruptions || cr.check_errors)
            rc = qsnap__err(QSNAP_EINTEGRITY, NULL,
                            "%s: %" PRIu64 " corruptions found by check", path,
                            cr.corruptions + cr.check_errors);
    }
    qcow2_image_close(img);
    free(path);
    return rc;
}

/*
 * Every image the plan's steps read or write that exists now, before the journal is
 * written: a damaged one is refused, naming it, with nothing changed. Checked as verify
 * does (check: its tables and refcounts) is every image a step writes into, or reads
 * data from in a step that cannot be taken back: a stream's layer and those it copies
 * from (down to its new backing), a commit's head and base, an internal snapshot's
 * layer, a layer whose backing link is rewritten, and a preserve's base and head.
 * Opened only (what libqcow2 checks at open: header, where its tables are) is every
 * other image a step opens: the rest of those chains, a layer frozen or thawed, a new
 * layer's backing. A file the plan removes is not looked at. The cost: a check reads
 * a layer's L1, L2 and refcount tables once (about 0.5 ms for a small layer).
 */
static int preflight(qsnap_store *s, qsnap_plan *p)
{
    struct qsnap__ids open = {0}, check = {0};
    bool ok = true;
    int rc = 0;

    for (size_t i = 0; ok && i < p->n; i++) {
        const struct qsnap__step *st = &p->steps[i];
        const struct qsnap__layer *l;
        switch (st->kind) {
        case QSNAP__ST_STREAM:
            /* Copied from: the layers down to the new backing (all: when it has none). */
            ok = preflight_add(s, p, &check, st->x, st->y, &check) &&
                 preflight_add(s, p, &open, st->y, 0, &open);
            break;
        case QSNAP__ST_COMMIT:
            ok = preflight_add(s, p, &check, st->x, 0, NULL) &&
                 preflight_add(s, p, &check, st->y, 0, &open);
            break;
        case QSNAP__ST_PRESERVE:
            ok = preflight_add(s, p, &check, st->y, 0, &open) &&
                 preflight_add(s, p, &check, st->z, 0, NULL);
            break;
        case QSNAP__ST_SET_BACKING:
            ok = preflight_add(s, p, &check, st->x, 0, NULL) &&
                 preflight_add(s, p, &open, st->y, 0, NULL);
            break;
        case QSNAP__ST_INTERNAL_CREATE:
        case QSNAP__ST_INTERNAL_APPLY:
        case QSNAP__ST_INTERNAL_DELETE:
            ok = preflight_add(s, p, &check, st->x, 0, NULL);
            break;
        case QSNAP__ST_CREATE:
            l = find_layer(s, p, st->x);
            ok = !l || preflight_add(s, p, &open, l->backing, 0, NULL);
            break;
        case QSNAP__ST_FREEZE:
        case QSNAP__ST_THAW:
            ok = preflight_add(s, p, &open, st->x, 0, NULL);
            break;
        case QSNAP__ST_MKDIR:
        case QSNAP__ST_LINK_STATE:
        case QSNAP__ST_SAVE:
        case QSNAP__ST_UNLINK:
        case QSNAP__ST_ADOPT: /* a rename; adopt.c opened the file's chain */
            break;
        }
    }
    if (!ok)
        rc = nomem();
    for (size_t i = 0; !rc && i < check.n; i++)
        rc = preflight_layer(s, qsnap__layer(&s->m, check.v[i]), true);
    for (size_t i = 0; !rc && i < open.n; i++) {
        if (!ids_has(&check, open.v[i]))
            rc = preflight_layer(s, qsnap__layer(&s->m, open.v[i]), false);
    }
    qsnap__ids_free(&open);
    qsnap__ids_free(&check);
    return rc ? nothing_changed(rc, "'qsnap verify DISK' shows what is wrong") : 0;
}

static int st_create(qsnap_store *s, qsnap_plan *p, const struct qsnap__step *st)
{
    struct qsnap__layer *l = find_layer(s, p, st->x), *b;
    char *final, *tmp = NULL;
    bool done;
    int rc;

    b = l ? find_layer(s, p, l->backing) : NULL;
    if (!l || !b)
        return qsnap__err(QSNAP_ERROR, NULL, "plan refers to a missing layer %u", st->x);
    final = qsnap__path(s, l->file);
    if (!final)
        return nomem();
    rc = final_taken(s, p, l->file, final, &done);
    free(final);
    if (rc || done)
        return rc;
    rc = make_overlay(s, p, l, b, &tmp);
    if (!rc)
        rc = rename_into_place(s, tmp, l->file);
    free(tmp);
    return rc;
}

static int set_write_bit(qsnap_store *s, const struct qsnap__layer *l, bool writable)
{
    char *path = qsnap__path(s, l->file);
    int rc;

    if (!path)
        return nomem();
    /* fchmod on a descriptor opened without following links (safe.c). */
    rc = qsnap__chmod_store_file(s, l->file, writable);
    if (rc == QSNAP_ENOTFOUND)
        rc = qsnap__err(QSNAP_EINTEGRITY, "'qsnap verify DISK' shows what is missing",
                        "%s: layer file is missing", path);
    free(path);
    return rc;
}

/* Fingerprint layer x now and record it in every target model that has it. */
static int take_fingerprint(qsnap_store *s, qsnap_plan *p, const struct qsnap__layer *l)
{
    struct qsnap__layer tmp = *l;
    int rc;

    rc = qsnap__layer_fingerprint(s, &tmp);
    if (rc)
        return rc;
    /* The record changes after the journal compared the models (st_save). */
    if (!qsnap__ids_add(&p->changed, l->id))
        p->changed_known = false;
    for (size_t k = 0; k < p->nm; k++) {
        struct qsnap__layer *t = qsnap__layer(&p->models[k], l->id);
        if (t && t->frozen) {
            memcpy(t->fp, tmp.fp, sizeof(t->fp));
            memcpy(t->fpd, tmp.fpd, sizeof(t->fpd));
            t->have_fpd = tmp.have_fpd;
            t->have_vsize = tmp.have_vsize;
            t->vsize = tmp.vsize;
            t->size = tmp.size;
            t->mtime_ns = tmp.mtime_ns;
            t->have_fp = true;
        }
    }
    return 0;
}

/*
 * The disk frozen as the root: the files of its own backing chain (the user's,
 * outside the store, which every state reads) are fingerprinted too, into every
 * target model that has no record of them yet. They are not made read-only:
 * they are not the store's (a base image may back other disks too).
 */
static int record_disk_chain(qsnap_store *s, qsnap_plan *p)
{
    char *rec = NULL;
    int rc;

    if (s->m.below)
        return 0;
    rc = qsnap__disk_chain_record(s, &rec);
    for (size_t k = 0; !rc && rec && k < p->nm; k++) {
        struct qsnap__model *m = &p->models[k];
        if (m->below)
            continue;
        if (!(m->below = strdup(rec)))
            rc = nomem();
    }
    free(rec);
    return rc;
}

static int st_freeze(qsnap_store *s, qsnap_plan *p, const struct qsnap__step *st)
{
    struct qsnap__layer *l = find_layer(s, p, st->x);
    int rc;

    if (!l)
        return qsnap__err(QSNAP_ERROR, NULL, "plan refers to a missing layer %u", st->x);
    rc = set_write_bit(s, l, false);
    if (!rc)
        rc = take_fingerprint(s, p, l);
    if (!rc && l->is_disk)
        rc = record_disk_chain(s, p);
    return rc;
}

/*
 * The state file st->a copied into the store as st->b (qsnap__copy_into_store:
 * its own read-only file, renamed into place last, so a final name that is
 * there on a replay is a whole copy), then fingerprinted: the record goes to
 * every target model's node that names it, as take_fingerprint does for a layer.
 */
static int st_copy_state(qsnap_store *s, qsnap_plan *p, const struct qsnap__step *st)
{
    struct qsnap__fprec r;
    struct stat sb;
    char *rec;
    int rc = 0;

    if (!p->replay || qsnap__lstat_store_file(s, st->b, &sb) != 0)
        rc = qsnap__copy_into_store(s, st->a, st->b);
    else
        rc = qsnap__check_store_file(s, st->b);
    if (!rc)
        rc = qsnap__fingerprint_store_file(s, st->b, 0, r.fp, NULL, &sb);
    if (rc)
        return rc;
    r.size = (uint64_t)sb.st_size;
    r.mtime_ns = (int64_t)sb.st_mtim.tv_sec * 1000000000 + sb.st_mtim.tv_nsec;
    rec = qsnap__fprec_format(&r, NULL);
    if (!rec)
        return nomem();
    for (size_t k = 0; !rc && k < p->nm; k++) {
        struct qsnap__model *m = &p->models[k];
        for (size_t i = 0; !rc && i < m->nn; i++) {
            struct qsnap__node *n = &m->nodes[i];
            if (!n->state || strcmp(n->state, st->b))
                continue;
            qsnap__str_free(m, n->sfp);
            if (!(n->sfp = strdup(rec)))
                rc = nomem();
            /* The record changes after the journal compared the models (st_save). */
            else if (!qsnap__ids_add(&p->changed, n->id))
                p->changed_known = false;
        }
    }
    free(rec);
    return rc;
}

/* Open a layer (absolute path) for writing, with its chain. */
static int open_rw(qsnap_store *s, const struct qsnap__layer *l, unsigned extra, qcow2_image **out)
{
    qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
    char *path = qsnap__path(s, l->file);
    int rc;

    if (!path)
        return nomem();
    oo.flags = QCOW2_OPEN_RDWR | extra | QSNAP__LOCK_FLAGS(s);
    oo.format = l->fmt;
    rc = qsnap__image_open(s, path, &oo, out, NULL);
    free(path);
    return rc;
}

/* The image in img's chain that is the file of layer l (same inode), or NULL. */
static qcow2_image *chain_find(qsnap_store *s, qcow2_image *img, const struct qsnap__layer *l)
{
    char *path = qsnap__path(s, l->file);
    struct stat want, got;
    qcow2_image *found = NULL;

    if (path && stat(path, &want) == 0) {
        for (qcow2_image *c = qcow2_image_backing(img); c; c = qcow2_image_backing(c)) {
            if (stat(qcow2_image_filename(c), &got) == 0 && got.st_dev == want.st_dev &&
                got.st_ino == want.st_ino) {
                found = c;
                break;
            }
        }
    }
    free(path);
    return found;
}

static int st_stream(qsnap_store *s, qsnap_plan *p, const struct qsnap__step *st,
                     const qsnap_exec_opts *o)
{
    struct qsnap__layer *d = find_layer(s, p, st->x), *base = st->y ? find_layer(s, p, st->y) : NULL;
    qcow2_image *img = NULL, *b = NULL;
    int rc;

    if (!d || (st->y && !base))
        return qsnap__err(QSNAP_ERROR, NULL, "plan refers to a missing layer");
    rc = open_rw(s, d, 0, &img);
    if (rc)
        return rc;
    if (base) {
        b = chain_find(s, img, base);
        if (!b) {
            rc = qsnap__err(QSNAP_EINTEGRITY, "'qsnap verify DISK' checks the links",
                            "%s: %s is not in its backing chain", qcow2_image_filename(img),
                            base->file);
            goto out;
        }
    }
    if (qcow2_image_backing(img) != b) {
        rc = qcow2_image_stream(img, b, o ? o->progress : NULL, o ? o->payload : NULL);
        if (!rc)
            rc = qcow2_image_flush(img);
        if (rc)
            rc = qsnap__from_qcow2(rc, NULL);
    }
out:
    qcow2_image_close(img);
    return rc;
}

static int st_set_backing(qsnap_store *s, qsnap_plan *p, const struct qsnap__step *st)
{
    struct qsnap__layer *d = find_layer(s, p, st->x), *b = find_layer(s, p, st->y);
    qcow2_image *img = NULL;
    char *link;
    int rc;

    if (!d || !b)
        return qsnap__err(QSNAP_ERROR, NULL, "plan refers to a missing layer");
    link = qsnap__link_name(d->file, b->file);
    if (!link)
        return nomem();
    rc = open_rw(s, d, QCOW2_OPEN_NO_BACKING, &img);
    if (!rc) {
        rc = qcow2_image_rebase(img, link, qcow2_format_name(b->fmt), true, NULL, NULL);
        if (!rc)
            rc = qcow2_image_flush(img);
        if (rc)
            rc = qsnap__from_qcow2(rc, NULL);
    }
    qcow2_image_close(img);
    free(link);
    return rc;
}

/* Whether n bytes at b are all zero. */
static bool all_zero(const uint8_t *b, size_t n)
{
    return n == 0 || (b[0] == 0 && memcmp(b, b + 1, n - 1) == 0);
}

/*
 * The bytes from buf[i] up to the next cluster boundary (of guest offset
 * off + i) or n; *zero: they are a whole cluster, all zero.
 */
static uint64_t piece(const uint8_t *buf, uint64_t i, uint64_t n, uint64_t off, uint64_t cs,
                      bool *zero)
{
    uint64_t k = cs - (off + i) % cs;

    if (k > n - i)
        k = n - i;
    *zero = k == cs && all_zero(buf + i, (size_t)k);
    return k;
}

/*
 * Make overlay img hold itself what it reads in [off, off + len) (from its
 * backing chain), through buf (cap bytes). Where that reads as zeroes (a hole,
 * a zero cluster, data that is all zero) img gets zero clusters: they read as
 * zeroes whatever its backing file holds later, and take no data. Zero data
 * only where the format has no zero flag (v2) or for a cluster's part.
 */
static int copy_up(qcow2_image *img, uint8_t *buf, size_t cap, uint64_t off, uint64_t len)
{
    const uint64_t cs = qcow2_image_cluster_size(img) ? qcow2_image_cluster_size(img) : 65536;
    int rc = 0;

    for (uint64_t end = off + len; !rc && off < end;) {
        qcow2_extent e;
        uint64_t n = end - off < cap ? end - off : cap;
        rc = qcow2_image_block_status(img, NULL, off, n, &e);
        if (rc)
            break;
        n = e.length;
        if (e.flags & QCOW2_EXT_ZERO) {
            rc = qcow2_image_write_zeroes(img, off, n, 0);
            off += n;
            continue;
        }
        rc = qcow2_image_read(img, buf, (size_t)n, off);
        /* Runs of whole clusters that are all zero, or not. */
        for (uint64_t i = 0, j; !rc && i < n; i = j) {
            bool zero, z;
            j = i + piece(buf, i, n, off, cs, &zero);
            for (uint64_t k; j < n && (k = piece(buf, j, n, off, cs, &z), z == zero);)
                j += k;
            rc = zero ? qcow2_image_write_zeroes(img, off + i, j - i, 0)
                      : qcow2_image_write(img, buf + i, (size_t)(j - i), off + i);
        }
        off += n;
    }
    return rc;
}

/* A new layer over y holding y's content wherever head z allocates. */
static int st_preserve(qsnap_store *s, qsnap_plan *p, const struct qsnap__step *st)
{
    struct qsnap__layer *l = find_layer(s, p, st->x), *b = find_layer(s, p, st->y),
                        *h = find_layer(s, p, st->z);
    qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *keep = NULL, *head = NULL;
    char *final = NULL, *tmp = NULL, *hpath = NULL;
    uint8_t *buf = NULL;
    const size_t chunk = 4u << 20;
    bool done;
    int rc;

    if (!l || !b || !h)
        return qsnap__err(QSNAP_ERROR, NULL, "plan refers to a missing layer");
    final = qsnap__path(s, l->file);
    if (!final)
        return nomem();
    rc = final_taken(s, p, l->file, final, &done);
    if (rc || done) {
        free(final);
        return rc;
    }
    rc = make_overlay(s, p, l, b, &tmp);
    if (rc)
        goto out;
    oo.flags = QCOW2_OPEN_RDWR | QSNAP__LOCK_FLAGS(s);
    rc = qsnap__image_open(s, tmp, &oo, &keep, NULL);
    if (rc)
        goto out;
    hpath = qsnap__path(s, h->file);
    oo.flags = QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_NO_LOCK;
    oo.format = QCOW2_FORMAT_QCOW2;
    rc = hpath ? qsnap__image_open(s, hpath, &oo, &head, NULL) : nomem();
    if (rc)
        goto out;
    buf = malloc(chunk);
    if (!buf) {
        rc = nomem();
        goto out;
    }
    for (uint64_t off = 0; off < qcow2_image_size(head) && off < qcow2_image_size(keep);) {
        qcow2_extent e;
        uint64_t n = qcow2_image_size(head) - off;
        rc = qcow2_image_block_status(head, NULL, off, n < chunk ? n : chunk, &e);
        if (rc)
            goto out_qcow2;
        n = e.length;
        if ((e.flags & QCOW2_EXT_PRESENT) && e.depth == 0) {
            /* Copy what the layer reads there into the keeper (zeroes as zero clusters). */
            if (off + n > qcow2_image_size(keep))
                n = qcow2_image_size(keep) - off;
            rc = copy_up(keep, buf, chunk, off, n);
            if (rc)
                goto out_qcow2;
        }
        off += n;
    }
    rc = qcow2_image_flush(keep);
    if (rc)
        goto out_qcow2;
    qcow2_image_close(keep);
    keep = NULL;
    rc = rename_into_place(s, tmp, l->file);
    goto out;
out_qcow2:
    rc = qsnap__from_qcow2(rc, NULL);
out:
    qcow2_image_close(keep);
    qcow2_image_close(head);
    if (rc && tmp)
        qsnap__unlink_store_file(s, tmp + strlen(s->dir) + 1); /* made with O_EXCL: ours */
    free(buf);
    free(hpath);
    free(tmp);
    free(final);
    return rc;
}

/*
 * Walk the ranges head allocates itself (up to the size of k) that kept
 * layer k does not hold itself. With ki writable, copy what ki reads there
 * into it; otherwise only tell whether there is one (*gap).
 */
static int kept_gaps(qcow2_image *head, qcow2_image *ki, bool copy, bool *gap)
{
    const uint64_t chunk = 4u << 20, end = qcow2_image_size(ki) < qcow2_image_size(head)
                                               ? qcow2_image_size(ki)
                                               : qcow2_image_size(head);
    uint8_t *buf = copy ? malloc(chunk) : NULL;
    int rc = copy && !buf ? QCOW2_ENOMEM : 0;

    *gap = false;
    for (uint64_t off = 0; !rc && off < end;) {
        qcow2_extent e, g = {0};
        uint64_t n = end - off < chunk ? end - off : chunk;
        rc = qcow2_image_block_status(head, NULL, off, n, &e);
        if (rc || !(e.flags & QCOW2_EXT_PRESENT) || e.depth != 0) {
            off += rc ? 0 : e.length;
            continue;
        }
        for (uint64_t o = off; !rc && o < off + e.length; o += g.length) {
            rc = qcow2_image_block_status(ki, NULL, o, off + e.length - o, &g);
            if (rc || ((g.flags & QCOW2_EXT_PRESENT) && g.depth == 0))
                continue;
            *gap = true;
            if (!copy)
                return 0;
            rc = copy_up(ki, buf, (size_t)chunk, o, g.length);
        }
        off += e.length;
    }
    free(buf);
    return rc;
}

/*
 * Before a commit writes the head's data into l, the layer kept over l must
 * hold l's content wherever the head allocates. PRESERVE made it so for the
 * head as it was then; a guest that wrote to the head later (after a crash
 * past the first commit point the head is still its branch's writable head)
 * may have allocated more. Copy what the kept layer reads there (l's bytes:
 * l has only been written where the head allocated at PRESERVE time, which
 * the kept layer holds) into it. What it reads does not change, only where
 * it keeps it, so nothing built on it sees a difference; its fingerprint is
 * taken again, also when an earlier run did the copy and crashed.
 */
static int top_up_kept(qsnap_store *s, qsnap_plan *p, const struct qsnap__step *st,
                       qcow2_image *head)
{
    struct qsnap__layer *k = NULL;
    qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *ki = NULL;
    struct stat sb;
    char *path;
    bool gap = false;
    int rc;

    for (size_t i = 0; i < p->n && !k; i++) {
        const struct qsnap__step *q = &p->steps[i];
        if (q->kind == QSNAP__ST_PRESERVE && q->y == st->y && q->z == st->x)
            k = find_layer(s, p, q->x);
    }
    if (!k)
        return 0;
    path = qsnap__path(s, k->file);
    if (!path)
        return nomem();
    oo.format = QCOW2_FORMAT_QCOW2;
    oo.flags = QSNAP__LOCK_FLAGS(s);
    rc = qsnap__image_open(s, path, &oo, &ki, NULL);
    if (!rc)
        rc = kept_gaps(head, ki, false, &gap);
    else
        goto out;
    qcow2_image_close(ki);
    ki = NULL;
    if (!rc && gap) {
        int wrc;
        rc = set_write_bit(s, k, true);
        if (!rc) {
            oo.flags = QCOW2_OPEN_RDWR | QSNAP__LOCK_FLAGS(s);
            rc = qsnap__image_open(s, path, &oo, &ki, NULL);
            if (!rc) {
                rc = kept_gaps(head, ki, true, &gap);
                if (!rc)
                    rc = qcow2_image_flush(ki);
                qcow2_image_close(ki);
                if (rc)
                    rc = qsnap__from_qcow2(rc, "'qsnap verify DISK --repair' finishes it");
            }
        }
        /* Frozen again whatever happened (a crash here: see the mode check below). */
        wrc = set_write_bit(s, k, false);
        if (!rc)
            rc = wrc;
        gap = true;
    } else if (rc) {
        rc = qsnap__from_qcow2(rc, NULL);
    } else if (lstat(path, &sb) == 0 && (sb.st_mode & 0222)) {
        /* A run that crashed between its copy and refreezing left it writable. */
        rc = set_write_bit(s, k, false);
    }
    /* Copied now, or by a run that crashed before it saved the new fingerprint. */
    if (!rc && !gap && lstat(path, &sb) == 0 &&
        ((uint64_t)sb.st_size != k->size ||
         (int64_t)sb.st_mtim.tv_sec * 1000000000 + sb.st_mtim.tv_nsec != k->mtime_ns))
        gap = true;
out:
    free(path);
    return !rc && gap ? take_fingerprint(s, p, k) : rc;
}

static int st_commit(qsnap_store *s, qsnap_plan *p, const struct qsnap__step *st,
                     const qsnap_exec_opts *o)
{
    struct qsnap__layer *h = find_layer(s, p, st->x), *b = find_layer(s, p, st->y);
    qcow2_commit_opts co = QCOW2_COMMIT_OPTS_INIT;
    qcow2_image *img = NULL;
    int rc;

    if (!h || !b)
        return qsnap__err(QSNAP_ERROR, NULL, "plan refers to a missing layer");
    rc = open_rw(s, h, 0, &img);
    if (rc)
        return rc;
    co.base = chain_find(s, img, b);
    if (!co.base || co.base != qcow2_image_backing(img)) {
        rc = qsnap__err(QSNAP_EINTEGRITY, "'qsnap verify DISK' checks the links",
                        "%s is not backed by %s", h->file, b->file);
    } else {
        co.progress = o ? o->progress : NULL;
        co.payload = o ? o->payload : NULL;
        /* The head is held (inuse.c) from before the first step: no guest writes to it. */
        rc = top_up_kept(s, p, st, img);
        if (rc) {
            qcow2_image_close(img);
            return rc;
        }
        rc = qcow2_image_commit(img, &co);
        if (!rc)
            rc = qcow2_image_flush(img);
        if (rc)
            rc = qsnap__from_qcow2(rc, "'qsnap verify DISK --repair' finishes it");
    }
    qcow2_image_close(img);
    return rc;
}

static int st_unlink(qsnap_store *s, const struct qsnap__step *st)
{
    return qsnap__unlink_store_file(s, st->a);
}

long qsnap__find_internal(const qcow2_image *img, const char *name)
{
    size_t n = qcow2_snapshot_count(img);

    for (size_t i = 0; name && i < n; i++) {
        qcow2_snapshot_info si;
        if (qcow2_snapshot_get(img, i, &si) == 0 && si.name && !strcmp(si.name, name))
            return (long)i;
    }
    return -1;
}

/* INTERNAL_CREATE, _APPLY, _DELETE on layer x, snapshot a. */
static int st_internal(qsnap_store *s, qsnap_plan *p, const struct qsnap__step *st)
{
    struct qsnap__layer *l = find_layer(s, p, st->x);
    qcow2_image *img = NULL;
    qcow2_snapshot_info si;
    char *id = NULL;
    long at;
    int rc, qrc = 0;

    if (!l || !st->a)
        return qsnap__err(QSNAP_ERROR, NULL, "plan refers to a missing layer %u", st->x);
    /* Only the head's own file is written: no backing chain is needed. */
    rc = open_rw(s, l, QCOW2_OPEN_NO_BACKING, &img);
    if (rc)
        return rc;
    at = qsnap__find_internal(img, st->a);
    if (at >= 0 && qcow2_snapshot_get(img, (size_t)at, &si) == 0 && !(id = strdup(si.id))) {
        qcow2_image_close(img);
        return nomem();
    }
    if (st->kind == QSNAP__ST_INTERNAL_CREATE) {
        if (at < 0)
            qrc = qcow2_snapshot_create(img, st->a, NULL);
    } else if (st->kind == QSNAP__ST_INTERNAL_APPLY) {
        if (at < 0)
            rc = qsnap__err(QSNAP_EINTEGRITY, "'qsnap verify DISK' checks the store",
                            "%s: internal snapshot %s is missing", l->file, st->a);
        else
            qrc = qcow2_snapshot_apply(img, id);
    } else if (at >= 0) { /* INTERNAL_DELETE */
        qrc = qcow2_snapshot_delete(img, id);
    }
    if (!rc && !qrc)
        qrc = qcow2_image_flush(img);
    if (!rc && qrc)
        rc = qsnap__from_qcow2(qrc, NULL);
    qcow2_image_close(img);
    free(id);
    return rc;
}

/* Move an adopted file (absolute a) into the store as layer x's file. */
static int st_adopt(qsnap_store *s, qsnap_plan *p, const struct qsnap__step *st, bool back)
{
    struct qsnap__layer *l = find_layer(s, p, st->x);
    char *final = l ? qsnap__path(s, l->file) : NULL, *sdir = NULL;
    const char *from = back ? final : st->a, *to = back ? st->a : final;
    int rc = 0;

    if (!l || !st->a)
        return qsnap__err(QSNAP_ERROR, NULL, "plan refers to a missing layer %u", st->x);
    if (!final)
        return nomem();
    if (qsnap__file_exists(to) && !qsnap__file_exists(from)) {
        /* Moved by an earlier run: only the directories' durability is left. */
    } else if (qsnap__layers_forget(s), rename(from, to) < 0) {
        rc = qsnap__err(errno == EXDEV ? QSNAP_EREFUSED : QSNAP_ERROR, NULL,
                        "%s: cannot move it to %s: %s", from, to, strerror(errno));
    }
    if (!rc && (sdir = strdup(st->a)) != NULL) {
        *strrchr(sdir, '/') = '\0';
        rc = qsnap__fsync_dir(sdir[0] ? sdir : "/");
    }
    if (!rc) {
        char *ldir = qsnap__path(s, "layers");
        rc = ldir ? qsnap__fsync_dir(ldir) : nomem();
        free(ldir);
    }
    free(sdir);
    free(final);
    return rc;
}

static int st_save(qsnap_store *s, qsnap_plan *p, const struct qsnap__step *st)
{
    struct qsnap__model *m = &p->models[st->y];
    int rc;

    m->gen = p->base_gen + st->y;
    /* On success the store's model is m (metalog.c). The journal compared m with the
     * model before it and kept what differed (journal.c), and fingerprints taken since
     * are added (take_fingerprint): while the store's model is that one (every save
     * before this one went through), only those records need comparing. */
    if (p->changed_known && s->exists && s->m.gen == p->base_gen + st->y)
        rc = qsnap__meta_save_known(s, m, &p->changed);
    else
        rc = qsnap__save_model(s, m);
    if (rc)
        return rc;
    s->exists = true;
    /* The VM path follows the metadata (vmpath.c). */
    return qsnap__vm_path_update(s, &s->m);
}

static int run_step(qsnap_store *s, qsnap_plan *p, const struct qsnap__step *st,
                    const qsnap_exec_opts *o)
{
    switch (st->kind) {
    case QSNAP__ST_MKDIR:
        return st_mkdir(s, st);
    case QSNAP__ST_CREATE:
        return st_create(s, p, st);
    case QSNAP__ST_FREEZE:
        return st_freeze(s, p, st);
    case QSNAP__ST_THAW: {
        struct qsnap__layer *l = find_layer(s, p, st->x);
        return l ? set_write_bit(s, l, true)
                 : qsnap__err(QSNAP_ERROR, NULL, "plan refers to a missing layer");
    }
    case QSNAP__ST_LINK_STATE:
        return st_copy_state(s, p, st);
    case QSNAP__ST_STREAM:
        return st_stream(s, p, st, o);
    case QSNAP__ST_SET_BACKING:
        return st_set_backing(s, p, st);
    case QSNAP__ST_PRESERVE:
        return st_preserve(s, p, st);
    case QSNAP__ST_COMMIT:
        return st_commit(s, p, st, o);
    case QSNAP__ST_SAVE:
        return st_save(s, p, st);
    case QSNAP__ST_UNLINK:
        return st_unlink(s, st);
    case QSNAP__ST_INTERNAL_CREATE:
    case QSNAP__ST_INTERNAL_APPLY:
    case QSNAP__ST_INTERNAL_DELETE:
        return st_internal(s, p, st);
    case QSNAP__ST_ADOPT:
        return st_adopt(s, p, st, false);
    }
    return qsnap__err(QSNAP_ERROR, NULL, "unknown plan step %d", (int)st->kind);
}

/* Run steps from `from` on; the journal goes when they are done. *at: the step that failed. */
static int run_from(qsnap_store *s, qsnap_plan *p, size_t from, const qsnap_exec_opts *o,
                    size_t *at)
{
    int rc = 0;
    size_t i;

    for (i = from; i < p->n && !rc; i++) {
        rc = run_step(s, p, &p->steps[i], o);
        if (!rc && o && o->step_hook)
            o->step_hook((unsigned)(i + 1), o->payload);
    }
    *at = rc ? i - 1 : p->n;
    /* Before the journal goes: a crash between a commit point and its link is replayed. */
    if (!rc && s->exists)
        rc = qsnap__vm_path_update(s, &s->m);
    if (!rc)
        rc = qsnap__fsync_dir(s->dir);
    if (!rc)
        rc = qsnap__journal_remove(s);
    return rc;
}

/*
 * Whether the steps up to `upto` (which failed) can be undone: none saved the
 * metadata, and each only made a new file or changed a file's mode. Such a
 * failure leaves the old metadata true once the new files go and the modes
 * are put back; anything else is finished forward by verify --repair.
 */
static bool can_undo(const qsnap_plan *p, size_t upto)
{
    for (size_t i = 0; i <= upto && i < p->n; i++) {
        switch (p->steps[i].kind) {
        case QSNAP__ST_MKDIR:
        case QSNAP__ST_CREATE:
        case QSNAP__ST_FREEZE:
        case QSNAP__ST_THAW:
        case QSNAP__ST_LINK_STATE:
        case QSNAP__ST_PRESERVE:
        case QSNAP__ST_INTERNAL_CREATE: /* undone by deleting what it made */
        case QSNAP__ST_ADOPT:           /* undone by moving the file back */
            break;
        case QSNAP__ST_INTERNAL_APPLY:
        case QSNAP__ST_INTERNAL_DELETE:
        case QSNAP__ST_STREAM:
        case QSNAP__ST_SET_BACKING:
        case QSNAP__ST_COMMIT:
        case QSNAP__ST_SAVE:
        case QSNAP__ST_UNLINK:
            return false;
        }
    }
    return true;
}

/* Index of the first SAVE step (or the last step). */
static size_t first_save(const qsnap_plan *p)
{
    for (size_t i = 0; i < p->n; i++) {
        if (p->steps[i].kind == QSNAP__ST_SAVE)
            return i;
    }
    return p->n ? p->n - 1 : 0;
}

/*
 * Undo steps upto..0 (see can_undo); the store's model is the old one. False when
 * a step could not be undone (a layer's mode put back, a snapshot it made deleted,
 * an adopted file moved back) or the journal could not be removed: the journal then
 * stays, and `verify --repair` finishes the operation (as after a crash) instead of a
 * frozen layer left writable, or a head read-only, with nothing recording it.
 */
static bool undo(qsnap_store *s, qsnap_plan *p, size_t upto)
{
    bool whole = true;

    for (size_t i = upto + 1; i-- > 0;) {
        const struct qsnap__step *st = &p->steps[i];
        const struct qsnap__layer *old = qsnap__layer(&s->m, st->x);
        struct qsnap__layer *l = find_layer(s, p, st->x);
        char *path = NULL;

        switch (st->kind) {
        case QSNAP__ST_CREATE:
        case QSNAP__ST_PRESERVE:
            /* A layer the old metadata does not know: nothing refers to it. Left behind,
             * the next operation would find its name taken: the journal stays then. A
             * file the failed step found there before it is not this run's. */
            if (!old && l && !(i == upto && p->taken) &&
                qsnap__unlink_store_file(s, l->file) != 0)
                whole = false;
            break;
        case QSNAP__ST_FREEZE:
            if (old && !old->frozen && set_write_bit(s, old, true) != 0)
                whole = false;
            break;
        case QSNAP__ST_THAW:
            if (old && old->frozen && set_write_bit(s, old, false) != 0)
                whole = false;
            break;
        case QSNAP__ST_LINK_STATE: {
            /* A copy the old metadata does not name: this run's (a name found taken
             * before the journal was written is refused: refuse_taken_names). */
            bool named = false;
            for (size_t k = 0; k < s->m.nn && !named; k++)
                named = s->m.nodes[k].state && !strcmp(s->m.nodes[k].state, st->b);
            if (!named && qsnap__unlink_store_file(s, st->b) != 0)
                whole = false;
            break;
        }
        case QSNAP__ST_INTERNAL_CREATE: {
            /* A snapshot the old metadata does not name: nothing refers to it. */
            bool named = false;
            for (size_t k = 0; k < s->m.nn && !named; k++)
                named = s->m.nodes[k].layer == st->x && s->m.nodes[k].internal &&
                        !strcmp(s->m.nodes[k].internal, st->a);
            if (!named && old && l) {
                struct qsnap__step del = *st;
                del.kind = QSNAP__ST_INTERNAL_DELETE;
                if (st_internal(s, p, &del) != 0)
                    whole = false;
            }
            break;
        }
        case QSNAP__ST_ADOPT:
            /* The old metadata does not know the layer: its file goes back. */
            if (!old && l && st_adopt(s, p, st, true) != 0)
                whole = false;
            break;
        case QSNAP__ST_MKDIR:
        case QSNAP__ST_STREAM:
        case QSNAP__ST_SET_BACKING:
        case QSNAP__ST_COMMIT:
        case QSNAP__ST_SAVE:
        case QSNAP__ST_UNLINK:
        case QSNAP__ST_INTERNAL_APPLY:
        case QSNAP__ST_INTERNAL_DELETE:
            break;
        }
        free(path);
    }
    /* The tail of an append that was cut short goes first: without the journal, a log
     * that goes on past its last whole record is damage (metalog.c). */
    if (whole && qsnap__log_torn(s) && qsnap__log_cut(s) != 0)
        whole = false;
    /* The journal goes only once what was undone is durable; "nothing was changed" is
     * said only when it is gone. */
    return whole && qsnap__fsync_dir(s->dir) == 0 && qsnap__journal_remove(s) == 0;
}

static int execute(qsnap_store *s, qsnap_plan *p, const qsnap_exec_opts *o);

/*
 * Hold every file the plan touches (inuse.c) from before its first change to
 * its end: refused with nothing changed while another process holds one.
 */
int qsnap_plan_execute(qsnap_store *s, qsnap_plan *p, const qsnap_exec_opts *o)
{
    int rc;

    if (s->readonly)
        return qsnap__err(QSNAP_EUSAGE, NULL, "store opened read-only");
    p->taken = false;
    /* Before anything is made (a first create makes the store directory). */
    rc = qsnap__store_dirs_recheck(s);
    if (rc)
        return rc;
    if (p->n && p->base_gen != s->m.gen)
        return qsnap__err(QSNAP_ERROR, NULL, "the store changed since the plan was made");
    /* Even a plan with nothing to do: what it found (a clean head, say) is not
     * to be trusted while a VM runs on the files. */
    qsnap__touch_free(p->touch, p->ntouch);
    p->touch = NULL;
    p->ntouch = 0;
    rc = qsnap__touched(s, p, &p->touch, &p->ntouch);
    p->checked = rc == 0;
    if (!rc)
        rc = qsnap__touch_hold(s, p->touch, p->ntouch);
    if (rc)
        return rc;
    s->holding = true;
    /* What the plan read from its files (a clean head dropped, nothing to
     * commit) was read before the hold: it must still be so under it. */
    rc = qsnap__recheck_seen(s);
    if (rc && rc != QSNAP_EBUSY) /* a head that cannot be read again: no step ran */
        rc = nothing_changed(rc, "fix the cause and run the command again");
    if (!rc)
        rc = p->n ? execute(s, p, o) : 0;
    s->holding = false;
    qsnap__touch_release(p->touch, p->ntouch);
    qsnap__touch_release(p->made, p->nmade);
    return rc;
}

static int execute(qsnap_store *s, qsnap_plan *p, const qsnap_exec_opts *o)
{
    size_t at = 0;
    int rc;
    if (!s->exists) {
        /* First snapshot: the store directory is needed to hold the journal. */
        if (mkdir(s->dir, 0777) == 0)
            qsnap__own(s, s->dir);
        else if (errno != EEXIST)
            return qsnap__err(QSNAP_ERROR, NULL, "%s: cannot make the store: %s", s->dir,
                              strerror(errno));
        rc = qsnap__lock_new_store(s);
        if (rc)
            return rc;
        /* Another first create may have finished between our open and our lock. */
        {
            char *meta = qsnap__path(s, "meta");
            bool raced = !meta || qsnap__file_exists(meta);
            free(meta);
            if (raced)
                return qsnap__err(QSNAP_EBUSY, "run the command again",
                                  "%s: the store was set up by another qsnap meanwhile", s->dir);
        }
        /* Layers without metadata are a store that lost its meta file: never build over it. */
        rc = qsnap__refuse_orphan_layers(s);
        if (rc)
            return rc;
    }
    /* Nothing is done in a store where a link or device stands for a store file (safe.c). */
    rc = qsnap__rescan_store(s);
    if (!rc)
        rc = qsnap__refuse_foreign_layers(s);
    /* Nor while the VM path names another file than the current head (vmpath.c). */
    if (!rc)
        rc = qsnap__vm_path_refuse(s);
    /* Nor over a file at a new layer's name, found before the journal is written: a
     * replay of the journal takes a file there for the one an earlier run made. */
    if (!rc)
        rc = refuse_taken_names(s, p);
    /* Nor with an image it reads or writes damaged: found now, not half-way through. */
    if (!rc)
        rc = preflight(s, p);
    if (rc)
        return rc;
    rc = qsnap__journal_write(s, p);
    if (rc)
        return rc;
    rc = run_from(s, p, 0, o, &at);
    if (rc) {
        qsnap_error e = *qsnap_error_last();
        char msg[1024], hint[1024];
        snprintf(msg, sizeof(msg), "%s", e.message);
        /* e.hint points at the buffer the next qsnap__err() writes: copied first. */
        snprintf(hint, sizeof(hint), "%s", e.hint ? e.hint : "");
        /* Nothing was committed: put things back as they were. */
        if (can_undo(p, at) && undo(s, p, at))
            return qsnap__err(rc, hint[0] ? hint : "fix the cause and run the command again",
                              "%s (nothing was changed)", msg);
        /* The journal stays: the operation is finished by verify --repair. */
        return qsnap__err(rc, "fix the cause, then 'qsnap verify DISK --repair' finishes it",
                          "%s (the operation is unfinished)", msg);
    }
    /* layers/ as this operation leaves it, for the next command (the seal, safe.c). */
    qsnap__seal_layers(s);
    return 0;
}

/*
 * Before a journal is replayed: a kill inside a step that was writing into
 * a qcow2 layer (an internal snapshot made, applied or deleted, a stream, a
 * commit, the top-up of a kept layer) can leave leaked clusters or, between
 * the writes of one table update, wrong COPIED flags. Each layer that a step
 * still to run writes into, and that is writable now (a frozen layer is only
 * written after a THAW step, so a frozen one was not being written), is
 * checked and repaired (check -r all) so that the replay and every later
 * check find it clean. Content is not changed by the repair.
 */
static int repair_touched(qsnap_store *s, qsnap_plan *p, size_t from)
{
    for (size_t i = from; i < p->n; i++) {
        const struct qsnap__step *st = &p->steps[i];
        unsigned ids[2] = {0, 0};
        switch (st->kind) {
        case QSNAP__ST_INTERNAL_CREATE:
        case QSNAP__ST_INTERNAL_APPLY:
        case QSNAP__ST_INTERNAL_DELETE:
        case QSNAP__ST_STREAM:
        case QSNAP__ST_PRESERVE:
            ids[0] = st->x;
            break;
        case QSNAP__ST_COMMIT:
            ids[0] = st->x;
            ids[1] = st->y;
            break;
        case QSNAP__ST_MKDIR:
        case QSNAP__ST_CREATE:
        case QSNAP__ST_FREEZE:
        case QSNAP__ST_THAW:
        case QSNAP__ST_LINK_STATE:
        case QSNAP__ST_SET_BACKING:
        case QSNAP__ST_SAVE:
        case QSNAP__ST_UNLINK:
        case QSNAP__ST_ADOPT: /* a rename: no image is written */
            break;
        }
        for (size_t k = 0; k < 2; k++) {
            const struct qsnap__layer *l = ids[k] ? find_layer(s, p, ids[k]) : NULL;
            qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
            qcow2_check_result cr;
            qcow2_image *img = NULL;
            struct stat sb;
            char *path;
            bool bad;
            int rc;

            if (!l || l->fmt != QCOW2_FORMAT_QCOW2 ||
                qsnap__lstat_store_file(s, l->file, &sb) != 0 || !S_ISREG(sb.st_mode) ||
                !(sb.st_mode & 0200))
                continue;
            path = qsnap__path(s, l->file);
            if (!path)
                return nomem();
            oo.flags = QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_NO_LOCK | QCOW2_OPEN_CHECK;
            oo.format = QCOW2_FORMAT_QCOW2;
            rc = qsnap__image_open(s, path, &oo, &img, NULL);
            free(path);
            if (rc)
                return rc;
            memset(&cr, 0, sizeof(cr));
            bad = qcow2_image_check(img, 0, &cr) == 0 && (cr.corruptions || cr.leaks);
            qcow2_image_close(img);
            if (bad) {
                rc = qsnap__repair_layer(s, l);
                if (rc)
                    return rc;
            }
        }
    }
    return 0;
}

int qsnap__recover(qsnap_store *s, bool *did)
{
    qsnap_plan *p = NULL;
    bool pending = false;
    size_t from = 0, at = 0;
    int rc = qsnap__journal_pending(s, &pending);

    *did = false;
    if (rc || !pending)
        return rc;
    rc = qsnap__scan_store(s);
    if (rc)
        return rc;
    rc = qsnap__journal_read(s, &p);
    if (rc)
        return rc;
    p->replay = true;
    if (s->m.gen > p->base_gen) {
        /* Resume after the commit point the metadata reached. */
        uint64_t k = s->m.gen - p->base_gen - 1;
        for (size_t i = 0; i < p->n; i++) {
            if (p->steps[i].kind == QSNAP__ST_SAVE && p->steps[i].y == k)
                from = i + 1;
        }
        if (!from) {
            qsnap_plan_free(p);
            return qsnap__err(QSNAP_EINTEGRITY, NULL,
                              "%s: journal does not match the metadata (generation %" PRIu64 ")",
                              s->dir, s->m.gen);
        }
    }
    /* Fingerprints taken before the last commit point live in the saved metadata,
     * not in the journal's models (written before any step ran): carry them over.
     * Steps still to run take their own. */
    for (size_t k = 0; from && k < p->nm; k++) {
        for (size_t i = 0; i < p->models[k].nl; i++) {
            struct qsnap__layer *t = &p->models[k].layers[i];
            const struct qsnap__layer *known = qsnap__layer(&s->m, t->id);
            if (known && known->have_fp && t->frozen) {
                memcpy(t->fp, known->fp, sizeof(t->fp));
                memcpy(t->fpd, known->fpd, sizeof(t->fpd));
                t->have_fpd = known->have_fpd;
                t->have_vsize = known->have_vsize;
                t->vsize = known->vsize;
                t->size = known->size;
                t->mtime_ns = known->mtime_ns;
                t->have_fp = true;
            }
        }
    }
    rc = repair_touched(s, p, from);
    if (!rc)
        rc = run_from(s, p, from, NULL, &at);
    /* It cannot be finished, and nothing was committed (this replay stopped before the
     * first commit point): take it back when every step before that point can be taken
     * back. The crashed run may have gone further than this one, so all of those steps
     * are undone (one it never reached is nothing to undo). The journal stays when that
     * is not whole, for the next repair to try again. */
    {
        size_t save = first_save(p);
        if (rc && from == 0 && at < save && can_undo(p, save - 1) && undo(s, p, save - 1))
            rc = 0;
    }
    qsnap_plan_free(p);
    if (!rc)
        *did = true;
    return rc;
}
