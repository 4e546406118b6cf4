/*
 * Reading a store: listings, the current branch, dirty state, diff, du,
 * why, export, and verify (which also repairs). Nothing here changes a file
 * except verify's repair, which goes through exec.c's recovery and plain
 * link and cleanup steps.
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

int qsnap__recheck_seen(const qsnap_store *s)
{
    struct qsnap__seen *sn = s->seen;
    int rc = 0;

    for (size_t i = 0; sn && !rc && i < sn->n; i++) {
        const struct qsnap__layer *l = qsnap__layer(&s->m, sn->v[i].id);
        bool dirty = false;
        if (!l || l->frozen)
            continue;
        rc = head_dirty(s, l, &dirty, NULL);
        if (!rc && dirty != sn->v[i].dirty) {
            char *path = qsnap__path(s, l->file);
            rc = qsnap__err(QSNAP_EBUSY,
                            "stop the virtual machine that uses it, then run the command again "
                            "(nothing was changed)",
                            "%s: changed while the operation was planned (it was %s, now it is "
                            "%s): something wrote it",
                            path ? path : l->file, sn->v[i].dirty ? "dirty" : "clean",
                            dirty ? "dirty" : "clean");
            free(path);
        }
    }
    if (sn) {
        free(sn->v);
        sn->v = NULL;
        sn->n = 0;
    }
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

static int fill_node(const qsnap_store *s, const struct qsnap__node *n, qsnap_node *out,
                     unsigned current_base)
{
    const struct qsnap__node *par = qsnap__node(&s->m, n->parent);
    const struct qsnap__layer *l = qsnap__layer(&s->m, n->layer);

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
    if (n->internal) {
        /* It shares its head's file: its size is the snapshot's. */
        qcow2_image *img = NULL;
        long at;
        qcow2_snapshot_info si;
        if (l && qsnap__open_layer(s, l, QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_NO_LOCK, &img) == 0 &&
            (at = qsnap__find_internal(img, n->internal)) >= 0 &&
            qcow2_snapshot_get(img, (size_t)at, &si) == 0)
            out->virtual_size = si.disk_size;
        qcow2_image_close(img);
    } else {
        out->virtual_size = l ? virtual_size(s, l) : 0;
        out->file_bytes = l ? file_bytes(s, l) : 0;
    }
    out->state_file = n->state ? qsnap__path(s, n->state) : NULL;
    for (size_t i = 0; i < s->m.nn; i++)
        out->nb_children += s->m.nodes[i].parent == n->id;
    for (size_t i = 0; i < s->m.nb; i++)
        out->nb_children += s->m.branches[i].base == n->id;
    if (!out->name || !out->file || !out->description || (n->state && !out->state_file))
        return nomem();
    return 0;
}

static int fill_branch(const qsnap_store *s, const struct qsnap__branch *b, qsnap_node *out)
{
    const struct qsnap__node *base = qsnap__node(&s->m, b->base);
    const struct qsnap__layer *h = qsnap__layer(&s->m, b->head);
    int rc;

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
    if (base && base->internal && h && base->layer == h->id)
        rc = qsnap__differs_from_internal(s, h, base->internal, &out->dirty);
    else
        rc = qsnap__head_dirty(s, h, &out->dirty, NULL);
    out->virtual_size = h ? virtual_size(s, h) : 0;
    out->file_bytes = h ? file_bytes(s, h) : 0;
    return rc;
}

/* Depth-first order from the roots, children by creation. */
static void topo(const struct qsnap__model *m, unsigned parent, unsigned *order, size_t *n,
                 unsigned depth)
{
    if (depth > m->nn)
        return;
    for (size_t i = 0; i < m->nn; i++) {
        if (m->nodes[i].parent == parent) {
            order[(*n)++] = (unsigned)i;
            topo(m, m->nodes[i].id, order, n, depth + 1);
        }
    }
}

int qsnap_list(qsnap_store *s, qsnap_node **out, size_t *n_out)
{
    const struct qsnap__branch *cur = qsnap__branch_by_name(&s->m, s->m.current);
    size_t total = s->m.nn + s->m.nb, k = 0, norder = 0;
    unsigned *order = calloc(s->m.nn + 1, sizeof(unsigned));
    qsnap_node *list = calloc(total + 1, sizeof(*list));
    int rc = 0;

    *out = NULL;
    *n_out = 0;
    if (!order || !list) {
        free(order);
        free(list);
        return nomem();
    }
    topo(&s->m, 0, order, &norder, 0);
    for (size_t i = 0; i < norder && !rc; i++)
        rc = fill_node(s, &s->m.nodes[order[i]], &list[k++], cur ? cur->base : 0);
    for (size_t i = 0; i < s->m.nb && !rc; i++)
        rc = fill_branch(s, &s->m.branches[i], &list[k++]);
    free(order);
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
    rc = fill_branch(s, cur, n);
    if (rc) {
        qsnap_list_free(n, 1);
        return rc;
    }
    *out = n;
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

static int open_chain(const qsnap_store *s, const char *name, qcow2_image **out)
{
    return open_chain_flags(s, name, QCOW2_OPEN_NO_LOCK, out);
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

int qsnap_du(qsnap_store *s, qsnap_usage **out, size_t *n_out)
{
    qsnap_node *list = NULL;
    size_t n = 0;
    qsnap_usage *u;
    int rc = qsnap_list(s, &list, &n);

    if (rc)
        return rc;
    u = calloc(n + 1, sizeof(*u));
    if (!u) {
        qsnap_list_free(list, n);
        return nomem();
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
        l = qsnap__layer(&s->m, qsnap__node(&s->m, list[i].id)->layer);
        if (list[i].internal) {
            /* Inside its head's file: what only it references there, which deleting it frees. */
            const char *snap = qsnap__node(&s->m, list[i].id)->internal;
            qcow2_image *img = NULL;
            uint64_t b = 0;
            if (l &&
                qsnap__open_layer(s, l, QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_NO_LOCK, &img) == 0 &&
                qcow2_snapshot_unique_bytes(img, snap, &b) != 0)
                b = 0;
            qcow2_image_close(img);
            u[i].holds = b;
            /* One kept in an adopted frozen layer cannot be deleted: it frees nothing. */
            u[i].frees = l && l->frozen ? 0 : b;
            continue;
        }
        for (size_t j = 0; j < s->m.nl; j++)
            deps += s->m.layers[j].backing == l->id;
        for (size_t j = 0; j < s->m.nn; j++)
            shared |= s->m.nodes[j].layer == l->id && s->m.nodes[j].id != list[i].id;
        /* A leaf's layer goes; a layer with one dependent is merged into it; else kept. */
        u[i].frees = (l->is_disk || shared || deps > 1) ? 0 : list[i].file_bytes;
    }
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

int qsnap_export(qsnap_store *s, const char *name, const char *out_path, qcow2_format format,
                 qcow2_progress_fn progress, void *payload)
{
    qcow2_convert_opts co = QCOW2_CONVERT_OPTS_INIT;
    qcow2_image *img = NULL;
    int rc = open_chain(s, name, &img);

    if (rc)
        return rc;
    co.format = format == QCOW2_FORMAT_AUTO ? QCOW2_FORMAT_RAW : format;
    co.progress = progress;
    co.payload = payload;
    rc = qcow2_image_convert(img, out_path, &co);
    qcow2_image_close(img);
    return rc ? qsnap__from_qcow2(rc, NULL) : 0;
}

/* ---- verify ---------------------------------------------------------------------- */

struct findings {
    qsnap_finding *f;
    size_t n, cap;
    size_t problems;
};

static void find(struct findings *fs, bool problem, bool repaired, const char *file,
                 const char *fmt, ...) QSNAP_PRINTF(5, 6);
static void find(struct findings *fs, bool problem, bool repaired, const char *file,
                 const char *fmt, ...)
{
    va_list ap;
    char *msg = NULL;

    if (fs->n == fs->cap) {
        size_t c = fs->cap ? fs->cap * 2 : 32;
        qsnap_finding *p = realloc(fs->f, c * sizeof(*p));
        if (!p)
            return;
        fs->f = p;
        fs->cap = c;
    }
    va_start(ap, fmt);
    if (vasprintf(&msg, fmt, ap) < 0)
        msg = NULL;
    va_end(ap);
    fs->f[fs->n].problem = problem;
    fs->f[fs->n].repaired = repaired;
    fs->f[fs->n].file = strdup(file ? file : "");
    fs->f[fs->n].message = msg ? msg : strdup("?");
    fs->n++;
    if (problem && !repaired)
        fs->problems++;
}

void qsnap_verify_free(qsnap_finding *f, size_t n)
{
    for (size_t i = 0; f && i < n; i++) {
        free((char *)(uintptr_t)f[i].file);
        free((char *)(uintptr_t)f[i].message);
    }
    free(f);
}

/* Re-point layer l's header at the backing layer the metadata names. */
static bool repoint(qsnap_store *s, struct qsnap__layer *l, const struct qsnap__layer *b,
                    const char *path, mode_t mode)
{
    qcow2_open_opts wo = QCOW2_OPEN_OPTS_INIT;
    char *link = qsnap__link_name(l->file, b->file);
    qcow2_image *w = NULL;
    bool fixed = false;

    if (!link)
        return false;
    wo.flags = QCOW2_OPEN_RDWR | QCOW2_OPEN_NO_BACKING | QSNAP__LOCK_FLAGS(s);
    (void)mode;
    /* Never through a link: the file must be the store's own (safe.c). */
    if (qsnap__check_store_file(s, l->file) != 0) {
        free(link);
        return false;
    }
    if (l->frozen)
        qsnap__chmod_store_file(s, l->file, true);
    if (qsnap__image_open(s, path, &wo, &w, NULL) == 0 &&
        qcow2_image_rebase(w, link, qcow2_format_name(b->fmt), true, NULL, NULL) == 0 &&
        qcow2_image_flush(w) == 0)
        fixed = true;
    qcow2_image_close(w);
    if (l->frozen)
        qsnap__chmod_store_file(s, l->file, false);
    free(link);
    return fixed;
}

/*
 * What check found in layer l's own metadata. A branch head (writable) is
 * repaired by --repair (leaked clusters freed, refcounts and flags fixed, as
 * 'qemu-img check -r all'); a frozen layer is never written: its leaks are
 * harmless and only noted, its corruptions are a problem to restore.
 */
static void verify_image_check(qsnap_store *s, const struct qsnap__layer *l, bool repair,
                               const qcow2_check_result *cr, struct findings *fs)
{
    char *path = qsnap__path(s, l->file);

    if (!path)
        return;
    if (!l->frozen && repair && qsnap__repair_layer(s, l) == 0) {
        find(fs, true, true, path,
             "%s: %" PRIu64 " corruptions and %" PRIu64 " leaked clusters repaired", l->file,
             cr->corruptions, cr->leaks);
    } else if (!l->frozen) {
        find(fs, true, false, path,
             "%s: %" PRIu64 " corruptions and %" PRIu64 " leaked clusters found by check "
             "(--repair repairs them)",
             l->file, cr->corruptions, cr->leaks);
    } else if (cr->corruptions) {
        find(fs, true, false, path, "%s: %" PRIu64 " corruptions found by check "
                                    "('qsnap image check -r all' repairs them)",
             l->file, cr->corruptions);
    } else {
        find(fs, false, false, path, "%s: %" PRIu64 " leaked clusters (harmless; the layer is "
                                     "frozen and stays as it is)",
             l->file, cr->leaks);
    }
    free(path);
}

static void verify_layer(qsnap_store *s, struct qsnap__layer *l, bool repair, struct findings *fs)
{
    char *path = qsnap__path(s, l->file);
    qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img = NULL;
    bool relinked = false;
    qcow2_info info;
    struct stat st;
    int rc;

    if (!path)
        return;
    if (stat(path, &st) < 0) {
        const char *branch = NULL;
        for (size_t i = 0; i < s->m.nb && !branch; i++) {
            if (s->m.branches[i].head == l->id)
                branch = s->m.branches[i].name;
        }
        if (branch && !l->is_disk)
            find(fs, true, false, path,
                 "%s is missing (the head of branch %s: restore it from a backup, or drop the "
                 "branch with 'qsnap branch DISK -d %s --force')",
                 l->file, branch, branch);
        else
            find(fs, true, false, path, "%s is missing (%s)", l->file,
                 l->is_disk ? "the disk was moved or removed: put it back beside its store"
                            : "restore it from a backup; the states built on it cannot be read");
        free(path);
        return;
    }
    if (qsnap__check_store_file(s, l->file) != 0) {
        /* Not read, not repaired: whatever it points at is not the store's. */
        find(fs, true, false, path, "%s", qsnap_error_last()->message);
        free(path);
        return;
    }
    oo.flags = QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_NO_LOCK;
    oo.format = l->fmt;
    rc = qsnap__image_open(s, path, &oo, &img, NULL);
    if (rc) {
        find(fs, true, false, path, "%s cannot be opened: %s", l->file,
             qcow2_error_last()->message);
        free(path);
        return;
    }
    qcow2_image_get_info(img, &info);
    /* 1. The backing link in the header against the metadata. */
    if (l->fmt == QCOW2_FORMAT_QCOW2 && !l->is_disk) {
        const struct qsnap__layer *b = qsnap__layer(&s->m, l->backing);
        char *want = b ? qsnap__path(s, b->file) : NULL;
        /* Exactly the link qsnap wrote (a name through a link could lead elsewhere later). */
        char *exact = b ? qsnap__link_name(l->file, b->file) : NULL;
        bool link_ok = b ? (exact && info.backing_name && !strcmp(info.backing_name, exact) &&
                            info.backing_format &&
                            qcow2_format_from_name(info.backing_format) == b->fmt)
                         : !info.backing_name;
        free(exact);
        if (!link_ok) {
            char *was = strdup(info.backing_name ? info.backing_name : "nothing");
            qcow2_image_close(img);
            img = NULL;
            relinked = repair && b && repoint(s, l, b, path, st.st_mode);
            if (relinked)
                find(fs, true, true, path, "%s: backing link re-pointed to %s, as the metadata "
                                           "says (it named '%s')",
                     l->file, b->file, was ? was : "?");
            else
                find(fs, true, false, path,
                     "%s: backing link names '%s' but the metadata says %s (--repair re-points "
                     "it)",
                     l->file, was ? was : "?", b ? b->file : "none");
            free(was);
        }
        free(want);
    }
    /* 2. Frozen content: the whole file, or (after a re-pointed link) the data alone. */
    if (l->frozen && l->have_fp) {
        struct qsnap__layer now = *l;
        if (qsnap__layer_fingerprint(s, &now) == 0 && memcmp(now.fp, l->fp, 16) != 0) {
            if (relinked && l->have_fpd && now.have_fpd && !memcmp(now.fpd, l->fpd, 16)) {
                *l = now; /* only the link changed, and it was put back: take the new bytes */
            } else {
                find(fs, true, false, path,
                     "%s was modified after it was frozen (fingerprint differs): every state "
                     "built on it may be damaged; restore it from a backup",
                     l->file);
            }
        }
    }
    if (l->frozen && stat(path, &st) == 0 && (st.st_mode & 0222)) {
        if (repair && qsnap__chmod_store_file(s, l->file, false) == 0)
            find(fs, true, true, path, "%s was writable; made read-only again", l->file);
        else
            find(fs, true, false, path, "%s is frozen but writable (--repair makes it read-only)",
                 l->file);
    }
    /* 3. The image's own metadata. */
    if (!img && qsnap__image_open(s, path, &oo, &img, NULL) != 0)
        img = NULL;
    if (img && l->fmt == QCOW2_FORMAT_QCOW2) {
        qcow2_check_result cr;
        memset(&cr, 0, sizeof(cr));
        if (qcow2_image_check(img, 0, &cr) == 0 && (cr.corruptions || cr.leaks)) {
            qcow2_image_close(img);
            img = NULL;
            verify_image_check(s, l, repair, &cr, fs);
        }
    }
    qcow2_image_close(img);
    free(path);
}

/*
 * An internal node: its snapshot is in its layer's table, and the layer is a
 * branch's head, or a frozen layer (an adopted file that held internal
 * snapshots: they stay read-only nodes there; plan.c never makes new ones in
 * frozen layers).
 */
static void verify_internal(qsnap_store *s, const struct qsnap__node *n, struct findings *fs)
{
    const struct qsnap__layer *l = qsnap__layer(&s->m, n->layer);
    const char *name = n->name ? n->name : "an unnamed node";
    qcow2_image *img = NULL;
    bool head = false;
    char *path;

    if (!n->internal || !l)
        return;
    for (size_t i = 0; i < s->m.nb; i++)
        head |= s->m.branches[i].head == l->id;
    path = qsnap__path(s, l->file);
    if (!path)
        return;
    if (!head && !l->frozen)
        find(fs, true, false, path, "internal snapshot %s lives in %s, which is not a branch's "
                                    "writable head",
             name, l->file);
    if (qsnap__file_exists(path) &&
        qsnap__open_layer(s, l, QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_NO_LOCK, &img) == 0) {
        if (qsnap__find_internal(img, n->internal) < 0)
            find(fs, true, false, path,
                 "internal snapshot %s of %s is missing from %s's snapshot table (removed "
                 "outside qsnap?): restore the file from a backup, or 'qsnap delete' %s to "
                 "forget it",
                 n->internal, name, l->file, name);
    }
    qcow2_image_close(img);
    free(path);
}

/* Files in layers/ and state/ that the metadata does not name: half-made or orphaned. */
static void verify_orphans(qsnap_store *s, bool repair, struct findings *fs)
{
    static const char *const dirs[] = {"layers", "state"};

    for (size_t d = 0; d < 2; d++) {
        int dfd = -1;
        DIR *dir = NULL;
        struct dirent *e;

        /* Listed from the directory opened without following links (safe.c). */
        if (qsnap__store_dirfd(s, dirs[d], &dfd) == 0) {
            dir = fdopendir(dfd);
            if (!dir)
                close(dfd);
        }

        while (dir && (e = readdir(dir))) {
            char rel[PATH_MAX];
            bool named = false;
            if (e->d_name[0] == '.' && (!e->d_name[1] || (e->d_name[1] == '.' && !e->d_name[2])))
                continue;
            snprintf(rel, sizeof(rel), "%s/%s", dirs[d], e->d_name);
            /* The VM path (vmpath.c) is checked on its own. */
            if (!strcmp(rel, "layers/current.qcow2"))
                continue;
            /* A temporary link of the VM path a killed switch left: it goes too. */
            if (!strcmp(rel, "layers/.tmp-current")) {
                struct stat st;
                if (qsnap__lstat_store_file(s, rel, &st) == 0 && S_ISLNK(st.st_mode)) {
                    if (repair) {
                        bool ok = qsnap__unlink_store_file(s, rel) == 0;
                        find(fs, true, ok, rel, ok ? "%s: temporary link of the VM path removed"
                                                   : "%s: temporary link of the VM path could "
                                                     "not be removed",
                             rel);
                    } else {
                        find(fs, true, false, rel, "%s: temporary link of the VM path left by an "
                                                   "interrupted command (--repair removes it)",
                             rel);
                    }
                    continue;
                }
            }
            for (size_t i = 0; i < s->m.nl && !named; i++)
                named = !strcmp(s->m.layers[i].file, rel);
            for (size_t i = 0; i < s->m.nn && !named; i++)
                named = s->m.nodes[i].state && !strcmp(s->m.nodes[i].state, rel);
            if (named)
                continue;
            if (qsnap__check_store_file(s, rel) == QSNAP_EINTEGRITY) {
                /* Not removed by --repair: whoever planted it is worth a look. */
                find(fs, true, false, rel, "%s", qsnap_error_last()->message);
            } else if (repair) {
                bool ok = qsnap__unlink_store_file(s, rel) == 0;
                find(fs, true, ok, rel, ok ? "%s: half-made or orphaned file removed"
                                           : "%s: orphaned file could not be removed",
                     rel);
            } else {
                find(fs, true, false, rel, "%s is not named by the metadata (half-made or "
                                           "orphaned; --repair removes it)",
                     rel);
            }
        }
        if (dir)
            closedir(dir);
    }
}

/*
 * The store's own files, by kind (safe.c): the directories, the meta file,
 * the lock, the journal and state files must be what they are (no links, no
 * devices); temporary files (meta.tmp, journal.tmp) are what a killed
 * command left behind and go with --repair (a link there is removed itself).
 * Layer files are checked by verify_layer, the other files of layers/ and
 * state/ by verify_orphans. Returns false when a directory of the store is
 * not one: nothing in it is looked at.
 */
static bool verify_store_files(qsnap_store *s, bool repair, struct findings *fs)
{
    static const char *const fixed[] = {"meta", "lock", "journal"};
    static const char *const tmps[] = {"meta.tmp", "journal.tmp"};
    static const char *const dirs[] = {"layers", "state"};
    bool ok = true;

    for (size_t i = 0; i < 2; i++) {
        int dfd = -1;
        if (qsnap__store_dirfd(s, dirs[i], &dfd) == QSNAP_EINTEGRITY) {
            find(fs, true, false, dirs[i], "%s", qsnap_error_last()->message);
            ok = false;
        }
        if (dfd >= 0)
            close(dfd);
    }
    for (size_t i = 0; i < 3; i++) {
        if (qsnap__check_store_file(s, fixed[i]) == QSNAP_EINTEGRITY)
            find(fs, true, false, fixed[i], "%s", qsnap_error_last()->message);
    }
    for (size_t i = 0; i < 2; i++) {
        struct stat st;
        if (qsnap__lstat_store_file(s, tmps[i], &st) != 0)
            continue;
        /* A regular leftover goes; a link or device stays for whoever looks into it. */
        if (repair && S_ISREG(st.st_mode) && qsnap__unlink_store_file(s, tmps[i]) == 0)
            find(fs, true, true, tmps[i], "%s/%s: left by an interrupted command; removed", s->dir,
                 tmps[i]);
        else
            find(fs, true, false, tmps[i],
                 S_ISREG(st.st_mode) ? "%s/%s: left by an interrupted command (--repair removes it)"
                                     : "%s/%s: a link or device where a temporary file of the "
                                       "store should be (remove it by hand)",
                 s->dir, tmps[i]);
    }
    for (size_t i = 0; ok && i < s->m.nn; i++) {
        const struct qsnap__node *n = &s->m.nodes[i];
        struct stat st;
        size_t names = 0;
        if (!n->state || qsnap__lstat_store_file(s, n->state, &st) != 0)
            continue; /* a missing one is reported below */
        if (qsnap__check_store_file(s, n->state) == QSNAP_EINTEGRITY) {
            find(fs, true, false, n->state, "%s", qsnap_error_last()->message);
            continue;
        }
        /* Every name the store has for this file is one of its links. */
        for (size_t k = 0; k < s->m.nn; k++) {
            struct stat o;
            if (s->m.nodes[k].state &&
                qsnap__lstat_store_file(s, s->m.nodes[k].state, &o) == 0 &&
                o.st_ino == st.st_ino && o.st_dev == st.st_dev)
                names++;
        }
        if ((size_t)st.st_nlink < names)
            find(fs, true, false, n->state,
                 "%s/%s: has %lu links but the store names it %zu times", s->dir, n->state,
                 (unsigned long)st.st_nlink, names);
    }
    return ok;
}

/* The VM path points at the current head (vmpath.c). */
static void verify_vm_path(qsnap_store *s, bool repair, struct findings *fs)
{
    char *path = qsnap__vm_path(s);
    int ok = s->exists ? qsnap__vm_path_ok(s, &s->m) : 1;

    if (ok == QSNAP_EINTEGRITY) {
        /* A file or directory at the VM path: qsnap made none, and replaces none. */
        find(fs, true, false, path, "%s", qsnap_error_last()->message);
        free(path);
        return;
    }
    if (!path || ok < 0 || ok == 1) {
        free(path);
        return;
    }
    if (repair && qsnap__vm_path_update(s, &s->m) == 0)
        find(fs, true, true, path, "the VM path layers/current.qcow2 pointed elsewhere or was "
                                   "missing; it points at the current branch's head again");
    else
        find(fs, true, false, path, "the VM path layers/current.qcow2 does not point at the "
                                    "current branch's head (--repair points it again)");
    free(path);
}

static int verify_store(qsnap_store *s, bool repair, qsnap_finding **out, size_t *n_out);

/*
 * A repair changes files only after every file it may touch was found free
 * and is held (inuse.c): the files of the pending operation, the current
 * head, and every file a check without repair finds a problem with.
 */
int qsnap_verify(qsnap_store *s, bool repair, qsnap_finding **out, size_t *n_out)
{
    struct qsnap__touch *t = NULL;
    qsnap_finding *f = NULL;
    qsnap_plan *jp = NULL;
    size_t nt = 0, nf = 0;
    bool pending = false;
    int rc;

    if (!repair)
        return verify_store(s, false, out, n_out);
    *out = NULL;
    *n_out = 0;
    rc = qsnap__journal_pending(s, &pending);
    if (!rc && pending && qsnap__journal_load(s, &jp) != 0)
        jp = NULL; /* a damaged journal: the check below reports it */
    if (!rc)
        rc = qsnap__touched(s, jp, &t, &nt);
    qsnap_plan_free(jp);
    if (!rc) {
        (void)verify_store(s, false, &f, &nf);
        for (size_t i = 0; !rc && i < nf; i++) {
            if (f[i].problem && f[i].file[0] && strcmp(f[i].file, s->dir))
                rc = qsnap__touch_add(s, &t, &nt, f[i].file, "a file the repair changes");
        }
        qsnap_verify_free(f, nf);
    }
    if (!rc)
        rc = qsnap__touch_hold(s, t, nt);
    if (!rc) {
        s->holding = true;
        rc = verify_store(s, true, out, n_out);
        s->holding = false;
        qsnap__touch_release(t, nt);
    }
    qsnap__touch_free(t, nt);
    return rc;
}

static int verify_store(qsnap_store *s, bool repair, qsnap_finding **out, size_t *n_out)
{
    struct findings fs = {NULL, 0, 0, 0};
    bool pending = false;
    int rc;

    *out = NULL;
    *n_out = 0;
    rc = qsnap__journal_pending(s, &pending);
    if (rc)
        return rc;
    if (pending) {
        if (repair) {
            bool did = false;
            /* A VM path re-pointed behind qsnap's back stops the replay: point it first. */
            if (qsnap__vm_path_ok(s, &s->m) == 0)
                (void)qsnap__vm_path_update(s, &s->m);
            rc = qsnap__recover(s, &did);
            if (rc) {
                /* Links re-pointed behind qsnap's back can stop it: put them back, retry. */
                struct findings tmp = {NULL, 0, 0, 0};
                for (size_t i = 0; i < s->m.nl; i++)
                    verify_layer(s, &s->m.layers[i], true, &tmp);
                qsnap_verify_free(tmp.f, tmp.n);
                rc = qsnap__recover(s, &did);
            }
            if (rc) {
                find(&fs, true, false, s->dir, "an interrupted operation could not be finished: %s",
                     qsnap_error_last()->message);
                goto done;
            }
            find(&fs, true, true, s->dir, "an interrupted operation was finished (or, when it could not be, taken back)");
        } else {
            find(&fs, true, false, s->dir,
                 "an interrupted operation is pending (--repair finishes it)");
        }
    }
    if (!s->exists && !pending) {
        qsnap_verify_free(fs.f, fs.n);
        return qsnap__err(QSNAP_ENOTFOUND, "'qsnap create DISK' makes the first snapshot",
                          "%s: no snapshots yet", s->disk_abs);
    }
    if (!verify_store_files(s, repair, &fs))
        goto done_checked;
    for (size_t i = 0; i < s->m.nl; i++)
        verify_layer(s, &s->m.layers[i], repair, &fs);
    for (size_t i = 0; i < s->m.nn; i++)
        verify_internal(s, &s->m.nodes[i], &fs);
    for (size_t i = 0; i < s->m.nn; i++) {
        const struct qsnap__node *n = &s->m.nodes[i];
        char *p = n->state ? qsnap__path(s, n->state) : NULL;
        if (p && !qsnap__file_exists(p))
            find(&fs, true, false, p, "state file %s of %s is missing", n->state,
                 n->name ? n->name : "an unnamed node");
        free(p);
    }
    for (size_t i = 0; i < s->m.nb; i++) {
        const struct qsnap__layer *h = qsnap__layer(&s->m, s->m.branches[i].head);
        char *p = h ? qsnap__path(s, h->file) : NULL;
        struct stat st;
        if (p && h && qsnap__check_store_file(s, h->file) == 0 && stat(p, &st) == 0 &&
            !(st.st_mode & 0200)) {
            if (repair && qsnap__chmod_store_file(s, h->file, true) == 0)
                find(&fs, true, true, p, "head of branch %s was read-only; made writable",
                     s->m.branches[i].name);
            else
                find(&fs, true, false, p, "head of branch %s is read-only (--repair fixes it)",
                     s->m.branches[i].name);
        }
        free(p);
    }
    if (!pending || repair)
        verify_vm_path(s, repair, &fs);
    /* While an operation is pending, its half-made files are not orphans. */
    if (!pending || repair)
        verify_orphans(s, repair, &fs);
    if (repair) {
        /* Fingerprints re-taken by a repair are saved. */
        bool changed = false;
        for (size_t i = 0; i < fs.n; i++)
            changed |= fs.f[i].repaired;
        if (changed && s->exists)
            qsnap__save_model(s, &s->m);
    }
done_checked:
    find(&fs, false, false, "", "checked %zu layers, %zu snapshots and nodes, %zu branches", s->m.nl,
         s->m.nn, s->m.nb);
done:
    *out = fs.f;
    *n_out = fs.n;
    if (fs.problems)
        return qsnap__err(QSNAP_EINTEGRITY, repair ? "see the messages above"
                                                   : "'qsnap verify --repair DISK' fixes what it can",
                          "%s: %zu problem%s found", s->disk_abs, fs.problems,
                          fs.problems == 1 ? "" : "s");
    return 0;
}
