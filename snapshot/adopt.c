/*
 * Adopting a backing chain that libvirt, qemu-img or a person made.
 *
 * The chain top -> ... -> bottom becomes a store: the bottom file is the
 * disk (it stays where it is and becomes the frozen root layer), every qcow2
 * overlay above it is moved into the store as layers/<id>.qcow2 (a rename:
 * no guest data is copied), each overlay's backing link is rewritten as the
 * store's relative one (header only), the frozen layers are made read-only
 * and fingerprinted, and the top becomes the head of branch main. Every file
 * below the top becomes a named snapshot; internal snapshots inside any
 * layer become internal nodes whose parent is the snapshot their layer
 * started from.
 *
 * Everything is checked before anything is written, and the plan is
 * journaled like every other one: a crash after the first move is finished
 * by 'qsnap verify --repair' of the bottom (the DISK); a failure before any link was
 * rewritten moves the files back. Refusals change nothing:
 *   - a QEMU holds a file of the chain (each file is opened for writing,
 *     which QEMU's OFD locks refuse, and closed again);
 *   - the chain loops, a file is missing, or the top has no backing file;
 *   - a file the tree cannot hold: not a plain qcow2 or raw image (libqcow2
 *     refuses encryption, data files, protocols), a dirty or corrupt image,
 *     an overlay that is a hard link, or on another file system than the
 *     bottom's directory (the move would have to copy);
 *   - a file of the chain is already a store's disk or inside a store.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qsnap/libvirt.h"
#include "libvirt_int.h"
#include "qsnap_int.h"

static int nomem(void)
{
    return qsnap__err(QSNAP_ERROR, NULL, "out of memory");
}

/* One internal snapshot of a chain file. */
struct isnap {
    char *name;
    int64_t created;
};

/* One file of the chain (index 0 = the top). */
struct cfile {
    char *path; /* absolute, without symbolic links */
    struct stat st;
    qcow2_format fmt;
    struct isnap *snaps; /* internal snapshots */
    size_t nsnaps;
    unsigned layer; /* its layer id in the target model */
    unsigned node;  /* its node id (files below the top) */
};

static void chain_free(struct cfile *c, size_t n)
{
    for (size_t i = 0; c && i < n; i++) {
        free(c[i].path);
        for (size_t k = 0; k < c[i].nsnaps; k++)
            free(c[i].snaps[k].name);
        free(c[i].snaps);
    }
    free(c);
}

static const char *const NOTHING = "(nothing was changed)";

/* Record one opened layer of the chain. */
static int chain_add(struct cfile *c, qcow2_image *img)
{
    const char *name = qcow2_image_filename(img);
    qcow2_info info;

    memset(c, 0, sizeof(*c));
    c->path = realpath(name, NULL);
    if (!c->path)
        return qsnap__err(QSNAP_ENOTFOUND, NULL, "%s: %s %s", name, strerror(errno), NOTHING);
    if (lstat(c->path, &c->st) < 0)
        return qsnap__err(QSNAP_ERROR, NULL, "%s: %s", c->path, strerror(errno));
    qcow2_image_get_info(img, &info);
    c->fmt = info.format;
    if (info.dirty || info.corrupt)
        return qsnap__err(QSNAP_EREFUSED,
                          "'qsnap image check -r all FILE' repairs it (with no VM running)",
                          "%s is marked %s: the tree cannot take it over as it is %s", c->path,
                          info.corrupt ? "corrupt" : "dirty (a QEMU did not close it)", NOTHING);
    c->nsnaps = qcow2_snapshot_count(img);
    if (c->nsnaps) {
        c->snaps = calloc(c->nsnaps, sizeof(*c->snaps));
        if (!c->snaps)
            return nomem();
        for (size_t k = 0; k < c->nsnaps; k++) {
            qcow2_snapshot_info si;
            if (qcow2_snapshot_get(img, k, &si) == 0 &&
                !(c->snaps[k].name = strdup(si.name ? si.name : "")))
                return nomem();
            c->snaps[k].created = si.date_sec;
        }
    }
    return 0;
}

/* Open the chain of image (no locks: the lock check comes next) and record it. */
static int read_chain(const char *image, struct cfile **out, size_t *n_out)
{
    qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img = NULL;
    struct cfile *c = NULL;
    size_t n = 0;
    int rc;

    *out = NULL;
    *n_out = 0;
    oo.flags = QCOW2_OPEN_NO_LOCK;
    rc = qcow2_image_open(&img, image, &oo);
    if (rc) {
        const qcow2_error *e = qcow2_error_last();
        int code = QCOW2_ERROR_CLASS(rc) == QCOW2_ENOTFOUND ? QSNAP_ENOTFOUND : QSNAP_EREFUSED;
        return qsnap__err(code, NULL, "%s %s",
                          e->message && e->message[0] ? e->message : qcow2_strerror(rc), NOTHING);
    }
    n = qcow2_image_chain_length(img);
    c = calloc(n, sizeof(*c));
    if (!c) {
        qcow2_image_close(img);
        return nomem();
    }
    rc = 0;
    n = 0;
    for (qcow2_image *l = img; l && !rc; l = qcow2_image_backing(l))
        rc = chain_add(&c[n++], l);
    qcow2_image_close(img);
    if (rc) {
        chain_free(c, n);
        return rc;
    }
    *out = c;
    *n_out = n;
    return 0;
}

/* Whether path names an existing directory entry. */
static bool exists(const char *path)
{
    struct stat st;

    return lstat(path, &st) == 0;
}

/* Everything the tree needs of the files, checked before anything is written. */
static int check_files(const struct cfile *c, size_t n, const char *image)
{
    const struct cfile *bottom = &c[n - 1];
    char *dir = strdup(bottom->path);
    struct stat dst;
    int rc = 0;

    if (!dir)
        return nomem();
    *strrchr(dir, '/') = '\0';
    if (stat(dir[0] ? dir : "/", &dst) < 0)
        rc = qsnap__err(QSNAP_ERROR, NULL, "%s: %s", dir, strerror(errno));
    free(dir);
    if (n < 2 && !rc)
        rc = qsnap__err(QSNAP_EREFUSED, "'qsnap create DISK' starts a tree on a single image",
                        "%s has no backing file: there is no chain to adopt %s", image, NOTHING);
    for (size_t i = 0; i < n && !rc; i++) {
        char *store = NULL;
        /* Loops through hard links or bind mounts: the same file twice. */
        for (size_t k = 0; k < i && !rc; k++) {
            if (c[k].st.st_dev == c[i].st.st_dev && c[k].st.st_ino == c[i].st.st_ino)
                rc = qsnap__err(QSNAP_EREFUSED, NULL,
                                "the backing chain of %s loops: %s and %s are the same file %s",
                                image, c[k].path, c[i].path, NOTHING);
        }
        if (rc)
            break;
        if (strstr(c[i].path, ".qsnap/")) {
            rc = qsnap__err(QSNAP_EREFUSED, "use the store's own commands on it",
                            "%s is inside a qsnap store: the chain already belongs to one %s",
                            c[i].path, NOTHING);
            break;
        }
        /* Freezing changes the mode: only the owner (or root) can. */
        if (geteuid() != 0 && c[i].st.st_uid != geteuid()) {
            rc = qsnap__err(QSNAP_EREFUSED, "run qsnap as the owner of the chain's files",
                            "%s belongs to another user: it cannot be frozen (made read-only) %s",
                            c[i].path, NOTHING);
            break;
        }
        if (asprintf(&store, "%s.qsnap", c[i].path) < 0)
            return nomem();
        if (i + 1 < n && exists(store))
            rc = qsnap__err(QSNAP_EREFUSED, "use the store's own commands on it",
                            "%s already has a store (%s): the chain already belongs to one %s",
                            c[i].path, store, NOTHING);
        free(store);
        if (rc || i + 1 == n)
            continue;
        /* An overlay: it is moved into the store and its header rewritten. */
        if (!S_ISREG(c[i].st.st_mode))
            rc =
                qsnap__err(QSNAP_EREFUSED, NULL, "%s is not a regular file %s", c[i].path, NOTHING);
        else if (c[i].fmt != QCOW2_FORMAT_QCOW2)
            rc = qsnap__err(QSNAP_EREFUSED, NULL, "%s is above the bottom but not qcow2 %s",
                            c[i].path, NOTHING);
        else if (c[i].st.st_nlink > 1)
            rc = qsnap__err(QSNAP_EREFUSED, "remove the other names (hard links) of the file",
                            "%s has %ju names (hard links): the tree cannot hold a layer that "
                            "another name can change %s",
                            c[i].path, (uintmax_t)c[i].st.st_nlink, NOTHING);
        else if (c[i].st.st_dev != dst.st_dev)
            rc = qsnap__err(QSNAP_EREFUSED,
                            "move the chain's files to one file system (qemu-img rebase -u "
                            "re-points the links)",
                            "%s is on another file system than %s: moving it into the store "
                            "would copy it %s",
                            c[i].path, bottom->path, NOTHING);
    }
    return rc;
}

/* No QEMU (nor another writer) holds any file of the chain: each opens for writing. */
static int check_free(const struct cfile *c, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
        qcow2_image *img = NULL;
        int rc;

        /* CHECK: a dirty image is not repaired here (nothing is written). */
        oo.flags = QCOW2_OPEN_RDWR | QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_CHECK;
        oo.format = c[i].fmt;
        rc = qcow2_image_open(&img, c[i].path, &oo);
        qcow2_image_close(img);
        img = NULL;
        if (QCOW2_ERROR_CLASS(rc) == QCOW2_EREADONLY && i + 1 == n) {
            /* A read-only bottom (a shared base image) is never written: a reader's
             * lock shows whether a QEMU writes it. */
            oo.flags = QCOW2_OPEN_NO_BACKING;
            rc = qcow2_image_open(&img, c[i].path, &oo);
            qcow2_image_close(img);
        }
        if (QCOW2_ERROR_CLASS(rc) == QCOW2_EBUSY)
            return qsnap__err(QSNAP_EBUSY, "stop the virtual machine that uses the chain first",
                              "%s is in use (a running QEMU holds its lock) %s", c[i].path,
                              NOTHING);
        if (QCOW2_ERROR_CLASS(rc) == QCOW2_EREADONLY)
            return qsnap__err(QSNAP_EREFUSED, "run qsnap as the owner of the files",
                              "%s cannot be opened for writing %s", c[i].path, NOTHING);
        if (rc)
            return qsnap__err(QSNAP_EREFUSED, NULL, "%s %s", qcow2_error_last()->message, NOTHING);
    }
    return 0;
}

static bool taken(const struct qsnap__model *m, const char *name)
{
    return qsnap__node_by_name(m, name) || qsnap__branch_by_name(m, name);
}

/* Give node nd the name want when it is valid and free; *ok says whether it was. */
static int try_name(struct qsnap__model *m, struct qsnap__node *nd, const char *want, bool *ok)
{
    *ok = false;
    if (!want || qsnap_name_check(want) || taken(m, want))
        return 0;
    nd->name = strdup(want);
    if (!nd->name)
        return nomem();
    *ok = true;
    return 0;
}

/*
 * A libvirt snapshot name qsnap cannot hold, made one it can: each space,
 * control character and '/' becomes '_', a leading '-' too, "." and ".." get
 * a '_' before them, and the result is cut to QSNAP_MAX_NAME bytes (at a
 * character's start) with room for a "-N" that makes it free. Given to nd;
 * the rename is added to *renames ("'a b' as a_b"). libvirt's own rename
 * (virsh snapshot-edit --rename) rewrites the children's XML, so the names
 * are mapped here rather than there.
 */
static int map_name(struct qsnap__model *m, struct qsnap__node *nd, const char *want,
                    char **renames)
{
    char base[QSNAP_MAX_NAME + 1], *name = NULL, *more;
    size_t len = 0, cap = QSNAP_MAX_NAME - 8;
    bool ok = false;

    if (!strcmp(want, ".") || !strcmp(want, ".."))
        base[len++] = '_';
    for (const unsigned char *c = (const unsigned char *)want; *c && len < cap; c++) {
        bool bad = *c == '/' || *c < 0x21 || *c == 0x7f || (c == (const unsigned char *)want &&
                                                              *c == '-');
        if ((*c & 0xc0) == 0x80 || *c < 0x80 || len + 4 <= cap)
            base[len++] = bad ? '_' : (char)*c;
        else
            break;
    }
    base[len] = '\0'; /* a character starts only with room for 4 bytes: none is cut */
    if (!len)
        snprintf(base, sizeof(base), "_");
    for (unsigned k = 1; !ok && k < 100000; k++) {
        int rc;
        free(name);
        if ((k == 1 ? asprintf(&name, "%s", base) : asprintf(&name, "%s-%u", base, k)) < 0)
            return nomem();
        rc = try_name(m, nd, name, &ok);
        if (rc) {
            free(name);
            return rc;
        }
    }
    if (!ok) {
        free(name);
        return qsnap__err(QSNAP_EUSAGE, NULL, "no free name for libvirt snapshot '%s'", want);
    }
    if (asprintf(&more, "%s%s'%s' as %s", *renames ? *renames : "", *renames ? ", " : "", want,
                 name) < 0) {
        free(name);
        return nomem();
    }
    free(name);
    free(*renames);
    *renames = more;
    return 0;
}

/* A generated "snap-N" for every node still without a name. */
static int name_the_rest(struct qsnap__model *m)
{
    unsigned k = 1;

    for (size_t i = 0; i < m->nn; i++) {
        struct qsnap__node *nd = &m->nodes[i];
        while (!nd->name) {
            char *name;
            if (asprintf(&name, "snap-%u", k++) < 0)
                return nomem();
            if (!taken(m, name))
                nd->name = name;
            else
                free(name);
        }
    }
    return 0;
}

static int add_step(qsnap_plan *p, enum qsnap__step_kind kind, unsigned x, unsigned y,
                    const char *a)
{
    struct qsnap__step *st = realloc(p->steps, (p->n + 1) * sizeof(*st));

    if (!st)
        return nomem();
    p->steps = st;
    st = &p->steps[p->n];
    memset(st, 0, sizeof(*st));
    st->kind = kind;
    st->x = x;
    st->y = y;
    if (a && !(st->a = strdup(a)))
        return nomem();
    p->n++;
    return 0;
}

/* The target model and the steps that get the files there. */
static int build(qsnap_plan *p, const qsnap_store *s, struct cfile *c, size_t n,
                 const struct qsnap__lv_snap *lv, size_t nlv)
{
    struct qsnap__model t;
    struct qsnap__branch *b;
    unsigned prev_layer = 0, prev_node = 0;
    char *renames = NULL; /* libvirt names qsnap cannot hold, as named here */
    int rc = qsnap__model_clone(&t, &s->m);

    if (rc)
        return rc;
    /* Layers and the chain's nodes, bottom up. */
    for (size_t i = n; i-- > 0 && !rc;) {
        struct qsnap__layer *l = qsnap__add_layer(&t);
        struct qsnap__node *nd;
        if (!l) {
            rc = nomem();
            break;
        }
        if (i == n - 1) {
            l->file = strdup(t.disk);
            l->is_disk = true;
        } else if (asprintf(&l->file, "layers/%u.qcow2", l->id) < 0) {
            l->file = NULL;
        }
        if (!l->file) {
            rc = nomem();
            break;
        }
        l->fmt = c[i].fmt;
        l->backing = prev_layer;
        l->frozen = i > 0;
        c[i].layer = prev_layer = l->id;
        if (i == 0)
            break;
        nd = qsnap__add_node(&t);
        if (!nd) {
            rc = nomem();
            break;
        }
        nd->parent = prev_node;
        nd->layer = l->id;
        nd->created = (int64_t)c[i].st.st_mtim.tv_sec;
        c[i].node = prev_node = nd->id;
    }
    /* Internal snapshots: children of the snapshot their layer started from. */
    for (size_t i = n; i-- > 0 && !rc;) {
        for (size_t k = 0; k < c[i].nsnaps && !rc; k++) {
            struct qsnap__node *nd = qsnap__add_node(&t);
            if (!nd || !(nd->internal = strdup(c[i].snaps[k].name))) {
                rc = nomem();
                break;
            }
            nd->parent = i + 1 < n ? c[i + 1].node : 0;
            nd->layer = c[i].layer;
            nd->created = c[i].snaps[k].created;
        }
    }
    if (rc)
        goto out;
    /* The branch first, then libvirt's names, then the internal snapshots' own. */
    b = qsnap__add_branch(&t);
    if (!b || !(b->name = strdup("main")) || !(t.current = strdup("main"))) {
        rc = nomem();
        goto out;
    }
    b->head = c[0].layer;
    b->base = c[1].node;
    b->created = qsnap__now();
    for (size_t j = 0; j < nlv && !rc; j++) {
        struct qsnap__node *nd = NULL;
        bool ok;
        if (lv[j].layer != SIZE_MAX) {
            nd = qsnap__node(&t, c[lv[j].layer].node);
        } else {
            for (size_t i = 0; i < t.nn && !nd; i++) {
                if (t.nodes[i].internal && !t.nodes[i].name &&
                    !strcmp(t.nodes[i].internal, lv[j].name))
                    nd = &t.nodes[i];
            }
            if (!nd) {
                rc = qsnap__err(QSNAP_EUSAGE, NULL,
                                "%s: internal snapshot %s is in no file of the chain %s",
                                lv[j].file, lv[j].name, NOTHING);
                break;
            }
        }
        rc = try_name(&t, nd, lv[j].name, &ok);
        if (!rc && !ok)
            rc = map_name(&t, nd, lv[j].name, &renames);
        if (!rc)
            rc = qsnap__desc_check(lv[j].desc, lv[j].file);
        if (!rc && lv[j].desc && !(nd->desc = strdup(lv[j].desc)))
            rc = nomem();
        if (!rc && lv[j].created >= 0)
            nd->created = lv[j].created;
    }
    for (size_t i = 0; i < t.nn && !rc; i++) {
        bool ok;
        if (t.nodes[i].internal && !t.nodes[i].name)
            rc = try_name(&t, &t.nodes[i], t.nodes[i].internal, &ok);
    }
    if (!rc)
        rc = name_the_rest(&t);
    if (!rc)
        rc = qsnap__model_check(&t, "the adopted tree");
    if (rc)
        goto out;

    /* Steps: the store, the moves, the links, the freezes, the metadata. */
    rc = add_step(p, QSNAP__ST_MKDIR, 0, 0, "");
    if (!rc)
        rc = add_step(p, QSNAP__ST_MKDIR, 0, 0, "layers");
    for (size_t i = n - 1; i-- > 0 && !rc;)
        rc = add_step(p, QSNAP__ST_ADOPT, c[i].layer, 0, c[i].path);
    for (size_t i = n - 1; i-- > 0 && !rc;)
        rc = add_step(p, QSNAP__ST_SET_BACKING, c[i].layer, c[i + 1].layer, NULL);
    for (size_t i = n; i-- > 1 && !rc;)
        rc = add_step(p, QSNAP__ST_FREEZE, c[i].layer, 0, NULL);
    if (!rc) {
        p->models = calloc(1, sizeof(*p->models));
        rc = p->models ? qsnap__model_clone(&p->models[0], &t) : nomem();
        if (!rc) {
            p->nm = 1;
            rc = add_step(p, QSNAP__ST_SAVE, 0, 0, NULL);
        }
    }
    if (!rc) {
        size_t named = 0;
        for (size_t i = 0; i < t.nn; i++)
            named += t.nodes[i].name != NULL;
        if (asprintf(&p->summary,
                     "adopted the chain of %zu files over %s: %zu snapshot%s, and branch main "
                     "with the content of %s%s%s",
                     n, c[n - 1].path, named, named == 1 ? "" : "s", c[0].path,
                     renames ? "; libvirt snapshots named otherwise here: " : "",
                     renames ? renames : "") < 0) {
            p->summary = NULL;
            rc = nomem();
        }
    }
out:
    free(renames);
    qsnap__model_free(&t);
    return rc;
}

int qsnap_plan_adopt(qsnap_plan **out, qsnap_store **store_out, const char *image,
                     const qsnap_adopt_opts *o)
{
    struct cfile *c = NULL;
    struct qsnap__lv_snap *lv = NULL;
    size_t n = 0, nlv = 0;
    qsnap_store *s = NULL;
    qsnap_plan *p = NULL;
    bool pending = false;
    int rc;

    if (out)
        *out = NULL;
    if (store_out)
        *store_out = NULL;
    if (!out || !store_out || !image)
        return qsnap__err(QSNAP_EUSAGE, NULL, "no image given");
    if (o && o->version != QSNAP_ADOPT_OPTS_VERSION)
        return qsnap__err(QSNAP_EUSAGE, NULL, "unknown qsnap_adopt_opts version %u", o->version);
    rc = read_chain(image, &c, &n);
    if (!rc)
        rc = check_files(c, n, image);
    if (!rc && o && o->libvirt_snapshots) {
        struct stat *st = calloc(n, sizeof(*st));
        char **paths = calloc(n, sizeof(*paths));
        if (!st || !paths) {
            rc = nomem();
        } else {
            for (size_t i = 0; i < n; i++) {
                st[i] = c[i].st;
                paths[i] = c[i].path;
            }
            rc = qsnap__lv_read(o->libvirt_snapshots, st, paths, n, &lv, &nlv);
        }
        free(st);
        free(paths);
    }
    if (!rc)
        rc = check_free(c, n);
    if (!rc)
        rc = qsnap_store_open(&s, c[n - 1].path, QSNAP_OPEN_CREATE);
    if (!rc && s->exists)
        rc = qsnap__err(QSNAP_EREFUSED, "use the store's own commands ('qsnap list DISK')",
                        "%s already has a store (%s): the chain already belongs to one %s",
                        c[n - 1].path, s->dir, NOTHING);
    if (!rc)
        rc = qsnap__journal_pending(s, &pending);
    if (!rc && pending)
        rc = qsnap__err(QSNAP_EINTEGRITY, "'qsnap verify DISK --repair' finishes it",
                        "%s: an earlier operation was interrupted and is not finished", s->dir);
    if (!rc) {
        p = calloc(1, sizeof(*p));
        if (!p || !(p->op = strdup("adopt")))
            rc = nomem();
        else
            p->base_gen = s->m.gen;
    }
    if (!rc)
        rc = build(p, s, c, n, lv, nlv);
    chain_free(c, n);
    qsnap__lv_free(lv, nlv);
    if (rc) {
        qsnap_plan_free(p);
        qsnap_store_close(s);
        return rc;
    }
    *out = p;
    *store_out = s;
    return 0;
}
