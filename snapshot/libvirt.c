/*
 * libvirt's snapshot documents, both ways.
 *
 * IN (adopt): libvirt keeps one domainsnapshot document per snapshot in its
 * per-domain directory (NAME.xml; the daemon's own copies add a comment and
 * an <active> element). For an external disk-only snapshot X, the
 * <disks><disk snapshot='external'><source file=OVERLAY/> entry names the
 * overlay X created (where writes went after X), and the disk of X's inner
 * <domain> names the image X froze: X's content is OVERLAY's backing file.
 * Every document is hostile input (xml.c reads it), and every file it names
 * must be a file of the chain being adopted.
 *
 * OUT (libvirt-xml): one domainsnapshot document per named snapshot, in the
 * order `virsh snapshot-create DOM FILE --redefine` needs (parents first),
 * with the same meaning: <disks> names the overlay made on the snapshot's
 * layer (on the way to the current branch's head where there is one), and
 * the inner <domain> (the user's domain XML) names the layer itself.
 */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "qsnap/libvirt.h"
#include "libvirt_int.h"
#include "qsnap_int.h"
#include "xml_int.h"

#define LV_MAX_FILES 100000u /* snapshot documents read from one directory */

static int nomem(void)
{
    return qsnap__err(QSNAP_ERROR, NULL, "out of memory");
}

/* The text of child name of e, trimmed (malloc'd), or NULL when there is no such child. */
static char *child_text(const struct qsnap__xml *e, const char *name, bool *oom)
{
    struct qsnap__xml *c = qsnap__xml_child(e, name, NULL);
    char *t, *a, *z;

    *oom = false;
    if (!c)
        return NULL;
    t = qsnap__xml_text(c);
    if (!t) {
        *oom = true;
        return NULL;
    }
    for (a = t; *a == ' ' || *a == '\t' || *a == '\n' || *a == '\r'; a++)
        ;
    z = a + strlen(a);
    while (z > a && (z[-1] == ' ' || z[-1] == '\t' || z[-1] == '\n' || z[-1] == '\r'))
        z--;
    *z = '\0';
    memmove(t, a, (size_t)(z - a) + 1);
    return t;
}

void qsnap__lv_free(struct qsnap__lv_snap *v, size_t n)
{
    for (size_t i = 0; v && i < n; i++) {
        free(v[i].name);
        free(v[i].desc);
        free(v[i].file);
    }
    free(v);
}

/* Index of the chain file that path names (same inode), or -1 (missing files included). */
static long chain_index(const struct stat *st, size_t n, const char *path)
{
    struct stat ps;

    if (!path || stat(path, &ps) < 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (st[i].st_dev == ps.st_dev && st[i].st_ino == ps.st_ino)
            return (long)i;
    }
    return -1;
}

/* The inner <domain>'s disk whose <target dev> is dev, or NULL. */
static struct qsnap__xml *domain_disk(const struct qsnap__xml *domain, const char *dev)
{
    struct qsnap__xml *devs = qsnap__xml_child(domain, "devices", NULL);

    for (struct qsnap__xml *d = qsnap__xml_child(devs, "disk", NULL); d;
         d = qsnap__xml_child(devs, "disk", d)) {
        const char *t = qsnap__xml_attr(qsnap__xml_child(d, "target", NULL), "dev");
        if (t && dev && !strcmp(t, dev))
            return d;
    }
    return NULL;
}

/* Read one snapshot document and match it to the chain. */
static int lv_one(const char *path, const struct stat *st, char *const *paths, size_t n,
                  struct qsnap__lv_snap *v)
{
    struct qsnap__xml *root = NULL, *disks;
    const char *outside = NULL, *ext_dev = NULL;
    char *ctime = NULL;
    long match = -1;
    bool oom = false, any_external = false;
    int rc = qsnap__xml_parse_file(&root, path);

    memset(v, 0, sizeof(*v));
    v->created = -1;
    v->layer = SIZE_MAX;
    if (rc)
        return rc;
    if (!(v->file = strdup(path))) {
        rc = nomem();
        goto out;
    }
    if (strcmp(root->name, "domainsnapshot")) {
        rc = qsnap__err(QSNAP_EUSAGE, NULL,
                        "%s: not a libvirt snapshot document (its root is <%s>, not "
                        "<domainsnapshot>)",
                        path, root->name);
        goto out;
    }
    v->name = child_text(root, "name", &oom);
    if (!oom && v->name && qsnap__xml_child(root, "description", NULL))
        v->desc = child_text(root, "description", &oom);
    if (!oom)
        ctime = child_text(root, "creationTime", &oom);
    if (oom) {
        rc = nomem();
        goto out;
    }
    if (!v->name || !v->name[0]) {
        rc = qsnap__err(QSNAP_EUSAGE, NULL, "%s: the snapshot has no <name>", path);
        goto out;
    }
    if (ctime) {
        char *end;
        errno = 0;
        long long t = strtoll(ctime, &end, 10);
        if (errno || end == ctime || *end || t < 0) {
            rc = qsnap__err(QSNAP_EUSAGE, NULL, "%s: bad <creationTime> '%.40s'", path, ctime);
            goto out;
        }
        v->created = (int64_t)t;
    }
    disks = qsnap__xml_child(root, "disks", NULL);
    for (struct qsnap__xml *d = qsnap__xml_child(disks, "disk", NULL); d;
         d = qsnap__xml_child(disks, "disk", d)) {
        const char *kind = qsnap__xml_attr(d, "snapshot");
        struct qsnap__xml *src = qsnap__xml_child(d, "source", NULL);
        const char *file = qsnap__xml_attr(src, "file");
        long at;
        if (kind && strcmp(kind, "external"))
            continue; /* internal, or not snapshotted */
        if (!kind && !src)
            continue;
        any_external = true;
        if (!file) {
            rc = qsnap__err(QSNAP_EUSAGE, NULL,
                            "%s: disk %s of snapshot %s is not a file (only file sources can be "
                            "adopted)",
                            path, qsnap__xml_attr(d, "name") ? qsnap__xml_attr(d, "name") : "?",
                            v->name);
            goto out;
        }
        at = chain_index(st, n, file);
        if (at < 0) {
            if (!outside)
                outside = file;
            continue;
        }
        if (match >= 0) {
            rc = qsnap__err(QSNAP_EUSAGE, NULL,
                            "%s: snapshot %s names two files of the chain (%s and %s)", path,
                            v->name, paths[match], file);
            goto out;
        }
        if ((size_t)at + 1 >= n) {
            rc = qsnap__err(QSNAP_EUSAGE, NULL,
                            "%s: snapshot %s names %s as its overlay, but that is the bottom of "
                            "the chain",
                            path, v->name, file);
            goto out;
        }
        match = at;
        ext_dev = qsnap__xml_attr(d, "name");
    }
    if (match < 0 && any_external) {
        rc = qsnap__err(QSNAP_EUSAGE,
                        "give the snapshot directory of the domain that uses this chain",
                        "%s: snapshot %s names %s, which is not a file of the chain", path, v->name,
                        outside ? outside : "?");
        goto out;
    }
    if (match >= 0) {
        /* Its frozen image, as the inner domain names it, must be the file below. */
        struct qsnap__xml *dd = domain_disk(qsnap__xml_child(root, "domain", NULL), ext_dev);
        const char *frozen = qsnap__xml_attr(qsnap__xml_child(dd, "source", NULL), "file");
        if (frozen && chain_index(st, n, frozen) != match + 1) {
            rc = qsnap__err(QSNAP_EUSAGE, NULL,
                            "%s: snapshot %s froze %s, but the chain has %s below %s", path,
                            v->name, frozen, paths[match + 1], paths[match]);
            goto out;
        }
        v->layer = (size_t)match + 1;
    }
out:
    free(ctime);
    qsnap__xml_free(root);
    return rc;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int qsnap__lv_read(const char *dir, const struct stat *st, char *const *paths, size_t n,
                   struct qsnap__lv_snap **out, size_t *n_out)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    char **names = NULL;
    size_t nn = 0;
    struct qsnap__lv_snap *v = NULL;
    size_t nv = 0;
    int rc = 0;

    *out = NULL;
    *n_out = 0;
    if (!d)
        return qsnap__err(errno == ENOENT ? QSNAP_ENOTFOUND : QSNAP_EUSAGE, NULL,
                          "%s: cannot read the libvirt snapshot directory: %s", dir,
                          strerror(errno));
    while (!rc && (de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        char **nm;
        if (len < 5 || strcmp(de->d_name + len - 4, ".xml") || de->d_name[0] == '.')
            continue;
        if (nn >= LV_MAX_FILES) {
            rc = qsnap__err(QSNAP_EUSAGE, NULL, "%s: more than %u snapshot documents", dir,
                            LV_MAX_FILES);
            break;
        }
        nm = realloc(names, (nn + 1) * sizeof(*nm));
        if (!nm || asprintf(&nm[nn], "%s/%s", dir, de->d_name) < 0) {
            if (nm)
                names = nm;
            rc = nomem();
            break;
        }
        names = nm;
        nn++;
    }
    closedir(d);
    if (!rc && nn)
        qsort(names, nn, sizeof(*names), cmp_str);
    if (!rc && nn && !(v = calloc(nn, sizeof(*v))))
        rc = nomem();
    for (size_t i = 0; i < nn && !rc; i++) {
        rc = lv_one(names[i], st, paths, n, &v[nv]);
        nv++;
        for (size_t k = 0; k + 1 < nv && !rc; k++) {
            if (!strcmp(v[k].name, v[nv - 1].name))
                rc = qsnap__err(QSNAP_EUSAGE, NULL, "%s and %s both define snapshot %s", v[k].file,
                                v[nv - 1].file, v[k].name);
            else if (v[k].layer != SIZE_MAX && v[k].layer == v[nv - 1].layer)
                rc = qsnap__err(QSNAP_EUSAGE, NULL,
                                "%s and %s both say they froze %s (snapshots %s and %s)", v[k].file,
                                v[nv - 1].file, paths[v[k].layer], v[k].name, v[nv - 1].name);
        }
    }
    for (size_t i = 0; i < nn; i++)
        free(names[i]);
    free(names);
    if (rc) {
        qsnap__lv_free(v, nv);
        return rc;
    }
    *out = v;
    *n_out = nv;
    return 0;
}

/* ---- OUT: domainsnapshot documents ------------------------------------------------- */

struct lvx {
    qsnap_libvirt_xml pub;
    char *domain, *target, *old_source, *new_source, *domain_xml;
    size_t cap;
};

void qsnap_libvirt_xml_free(qsnap_libvirt_xml *x)
{
    struct lvx *l = (struct lvx *)x;

    if (!l)
        return;
    for (size_t i = 0; i < l->pub.n; i++) {
        free((char *)(uintptr_t)l->pub.docs[i].name);
        free((char *)(uintptr_t)l->pub.docs[i].file);
        free((char *)(uintptr_t)l->pub.docs[i].xml);
    }
    free(l->pub.docs);
    free(l->domain);
    free(l->target);
    free(l->old_source);
    free(l->new_source);
    free(l->domain_xml);
    free(l);
}

/* Whether path is the disk or a layer file of the store (same inode). */
static bool store_file(const qsnap_store *s, const char *path)
{
    struct stat ps, ls;

    if (!path || stat(path, &ps) < 0)
        return false;
    for (size_t i = 0; i < s->m.nl; i++) {
        char *lp = qsnap__path(s, s->m.layers[i].file);
        bool same = lp && stat(lp, &ls) == 0 && ls.st_dev == ps.st_dev && ls.st_ino == ps.st_ino;
        free(lp);
        if (same)
            return true;
    }
    return false;
}

/* The disks of a domain that are disks (not CD-ROMs or floppies). */
static size_t list_disks(struct qsnap__xml *devs, struct qsnap__xml **out, size_t max)
{
    size_t k = 0;

    for (struct qsnap__xml *d = qsnap__xml_child(devs, "disk", NULL); d;
         d = qsnap__xml_child(devs, "disk", d)) {
        const char *dev = qsnap__xml_attr(d, "device");
        if (dev && strcmp(dev, "disk"))
            continue;
        if (k < max)
            out[k] = d;
        k++;
    }
    return k;
}

/* Point disk d at file (format fmt): source, type, driver; no backingStore. */
static int repoint(struct qsnap__xml *d, const char *file, qcow2_format fmt)
{
    struct qsnap__xml *src = qsnap__xml_child(d, "source", NULL), *drv, *bs;
    int rc = qsnap__xml_set_attr(d, "type", "file");

    while ((bs = qsnap__xml_child(d, "backingStore", NULL)) != NULL)
        qsnap__xml_remove(d, bs);
    if (!rc && src) {
        /* A file source has only the file (and the index libvirt adds). */
        for (size_t i = 0; i < src->nattr;) {
            if (strcmp(src->attr[i * 2], "file") && strcmp(src->attr[i * 2], "index")) {
                free(src->attr[i * 2]);
                free(src->attr[i * 2 + 1]);
                memmove(&src->attr[i * 2], &src->attr[i * 2 + 2],
                        (src->nattr - i - 1) * 2 * sizeof(*src->attr));
                src->nattr--;
            } else {
                i++;
            }
        }
    } else if (!rc) {
        src = qsnap__xml_add(d, "source");
        if (!src)
            rc = nomem();
    }
    if (!rc)
        rc = qsnap__xml_set_attr(src, "file", file);
    drv = qsnap__xml_child(d, "driver", NULL);
    if (!rc && !drv) {
        drv = qsnap__xml_add(d, "driver");
        rc = drv ? qsnap__xml_set_attr(drv, "name", "qemu") : nomem();
    }
    if (!rc)
        rc = qsnap__xml_set_attr(drv, "type", qcow2_format_name(fmt));
    return rc;
}

/* The file an overlay of layer l lives in: on the way to the current head if
 * there is one, else any layer backed by l, else l itself. */
static const struct qsnap__layer *overlay_of(const struct qsnap__model *m,
                                             const struct qsnap__layer *l)
{
    const struct qsnap__branch *cur = qsnap__branch_by_name(m, m->current);

    for (const struct qsnap__layer *x = cur ? qsnap__layer(m, cur->head) : NULL; x;
         x = qsnap__layer(m, x->backing)) {
        if (x->backing == l->id)
            return x;
    }
    for (size_t i = 0; i < m->nl; i++) {
        if (m->layers[i].backing == l->id)
            return &m->layers[i];
    }
    return l;
}

/* Nearest named ancestor of node n, or NULL. */
static const struct qsnap__node *named_parent(const struct qsnap__model *m,
                                              const struct qsnap__node *n)
{
    size_t guard = 0;

    for (n = qsnap__node(m, n->parent); n && guard++ <= m->nn; n = qsnap__node(m, n->parent)) {
        if (n->name)
            return n;
    }
    return NULL;
}

/* One document for node n. */
static int make_doc(const qsnap_store *s, struct qsnap__xml *domain, struct qsnap__xml *disk,
                    const char *target, struct qsnap__xml **others, size_t nothers,
                    const struct qsnap__node *n, char **out)
{
    const struct qsnap__model *m = &s->m;
    const struct qsnap__layer *l = qsnap__layer(m, n->layer), *ov;
    const struct qsnap__node *par = named_parent(m, n);
    char *lpath = NULL, *opath = NULL, *buf = NULL;
    size_t len = 0;
    FILE *f;
    int rc;

    if (!l)
        return qsnap__err(QSNAP_EINTEGRITY, NULL, "%s: node %u has no layer", s->dir, n->id);
    ov = overlay_of(m, l);
    lpath = qsnap__path(s, l->file);
    opath = qsnap__path(s, ov->file);
    if (!lpath || !opath) {
        rc = nomem();
        goto out;
    }
    rc = repoint(disk, lpath, l->fmt);
    if (rc)
        goto out;
    f = open_memstream(&buf, &len);
    if (!f) {
        rc = nomem();
        goto out;
    }
    fputs("<domainsnapshot>\n  <name>", f);
    qsnap__xml_escape(f, n->name, 0);
    fputs("</name>\n", f);
    if (n->desc && n->desc[0]) {
        fputs("  <description>", f);
        qsnap__xml_escape(f, n->desc, 0);
        fputs("</description>\n", f);
    }
    fputs("  <state>shutoff</state>\n", f);
    if (par) {
        fputs("  <parent>\n    <name>", f);
        qsnap__xml_escape(f, par->name, 0);
        fputs("</name>\n  </parent>\n", f);
    }
    fprintf(f, "  <creationTime>%" PRId64 "</creationTime>\n", n->created < 0 ? 0 : n->created);
    fputs("  <memory snapshot='no'/>\n  <disks>\n", f);
    if (n->internal) {
        fputs("    <disk name='", f);
        qsnap__xml_escape(f, target, 1);
        fputs("' snapshot='internal'/>\n", f);
    } else {
        fputs("    <disk name='", f);
        qsnap__xml_escape(f, target, 1);
        fprintf(f,
                "' snapshot='external' type='file'>\n      <driver type='%s'/>\n"
                "      <source file='",
                qcow2_format_name(ov->fmt));
        qsnap__xml_escape(f, opath, 1);
        fputs("'/>\n    </disk>\n", f);
    }
    for (size_t i = 0; i < nothers; i++) {
        const char *dev = qsnap__xml_attr(qsnap__xml_child(others[i], "target", NULL), "dev");
        if (!dev || !strcmp(dev, target))
            continue;
        fputs("    <disk name='", f);
        qsnap__xml_escape(f, dev, 1);
        fputs("' snapshot='no'/>\n", f);
    }
    fputs("  </disks>\n  ", f);
    qsnap__xml_write(f, domain);
    fputs("\n</domainsnapshot>\n", f);
    if (fclose(f) != 0 || !buf)
        rc = nomem();
out:
    free(lpath);
    free(opath);
    if (rc) {
        free(buf);
        return rc;
    }
    *out = buf;
    return 0;
}

static int cmp_node(const void *a, const void *b)
{
    const struct qsnap__node *x = *(const struct qsnap__node *const *)a,
                             *y = *(const struct qsnap__node *const *)b;

    if (x->created != y->created)
        return x->created < y->created ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* Nodes in an order with every parent before its children (siblings by creation). */
static int topo_order(const struct qsnap__model *m, const struct qsnap__node ***out)
{
    const struct qsnap__node **sorted = calloc(m->nn + 1, sizeof(*sorted));
    const struct qsnap__node **order = calloc(m->nn + 1, sizeof(*order));
    bool *done = calloc(m->nn + 1, sizeof(*done));
    size_t k = 0;

    if (!sorted || !order || !done) {
        free(sorted);
        free(order);
        free(done);
        return nomem();
    }
    for (size_t i = 0; i < m->nn; i++)
        sorted[i] = &m->nodes[i];
    qsort(sorted, m->nn, sizeof(*sorted), cmp_node);
    /* Repeated passes: a node goes once its parent has (the model has no loops). */
    for (size_t pass = 0; k < m->nn && pass <= m->nn; pass++) {
        for (size_t i = 0; i < m->nn; i++) {
            const struct qsnap__node *n = sorted[i];
            bool ready = !n->parent;
            if (done[i])
                continue;
            for (size_t j = 0; j < k && !ready; j++)
                ready = order[j]->id == n->parent;
            if (!ready)
                continue;
            order[k++] = n;
            done[i] = true;
        }
    }
    free(sorted);
    free(done);
    *out = order;
    return 0;
}

static int add_doc(struct lvx *l, const struct qsnap__node *n, char *xml, bool current)
{
    qsnap_libvirt_doc *d;
    char *file = NULL, *name = strdup(n->name);

    if (l->pub.n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        d = realloc(l->pub.docs, cap * sizeof(*d));
        if (!d) {
            free(name);
            free(xml);
            return nomem();
        }
        l->pub.docs = d;
        l->cap = cap;
    }
    if (!name || asprintf(&file, "%03zu-%s.xml", l->pub.n + 1, n->name) < 0) {
        free(name);
        free(xml);
        return nomem();
    }
    d = &l->pub.docs[l->pub.n++];
    d->name = name;
    d->file = file;
    d->xml = xml;
    d->current = current;
    return 0;
}

int qsnap_libvirt_xml_make(qsnap_libvirt_xml **out, qsnap_store *s, const char *domain_xml,
                           const char *target)
{
    struct qsnap__xml *root = NULL, *devs, *disk = NULL, *cand[64];
    const struct qsnap__node **order = NULL;
    const struct qsnap__node *cur_base = NULL;
    const struct qsnap__branch *cur;
    const struct qsnap__layer *head;
    struct lvx *l = NULL;
    size_t nd;
    bool oom = false;
    char *dom_name = NULL, *uuid = NULL, *buf = NULL;
    size_t len = 0;
    FILE *f;
    int rc;

    *out = NULL;
    if (!s->exists)
        return qsnap__err(QSNAP_ENOTFOUND, "'qsnap create DISK' makes the first snapshot",
                          "%s: no snapshots yet", s->disk_abs);
    if (!domain_xml)
        return qsnap__err(QSNAP_EUSAGE, "give the domain's XML (virsh dumpxml DOM)",
                          "no domain XML given");
    rc = qsnap__xml_parse_file(&root, domain_xml);
    if (rc)
        return rc;
    if (strcmp(root->name, "domain")) {
        rc = qsnap__err(QSNAP_EUSAGE, "give the output of 'virsh dumpxml DOM'",
                        "%s: not a libvirt domain (its root is <%s>, not <domain>)", domain_xml,
                        root->name);
        goto out;
    }
    dom_name = child_text(root, "name", &oom);
    if (!oom)
        uuid = child_text(root, "uuid", &oom);
    if (oom) {
        rc = nomem();
        goto out;
    }
    if (!dom_name || !dom_name[0] || !uuid || !uuid[0]) {
        rc = qsnap__err(QSNAP_EUSAGE, "give the output of 'virsh dumpxml DOM' of a defined domain",
                        "%s: the domain has no <%s> (libvirt needs it to redefine snapshots)",
                        domain_xml, !dom_name || !dom_name[0] ? "name" : "uuid");
        goto out;
    }
    devs = qsnap__xml_child(root, "devices", NULL);
    nd = list_disks(devs, cand, sizeof(cand) / sizeof(cand[0]));
    if (nd > sizeof(cand) / sizeof(cand[0])) {
        rc = qsnap__err(QSNAP_EUSAGE, NULL, "%s: more than %zu disks", domain_xml,
                        sizeof(cand) / sizeof(cand[0]));
        goto out;
    }
    if (!nd) {
        rc = qsnap__err(QSNAP_EUSAGE, "give the XML of the domain that uses this disk",
                        "%s: the domain has no disk", domain_xml);
        goto out;
    }
    for (size_t i = 0; i < nd && !disk; i++) {
        const char *dev = qsnap__xml_attr(qsnap__xml_child(cand[i], "target", NULL), "dev");
        const char *file = qsnap__xml_attr(qsnap__xml_child(cand[i], "source", NULL), "file");
        if (target ? dev && !strcmp(dev, target) : store_file(s, file))
            disk = cand[i];
    }
    if (!disk && !target && nd == 1)
        disk = cand[0];
    if (!disk) {
        rc = target ? qsnap__err(QSNAP_EUSAGE, NULL, "%s: the domain has no disk with target %s",
                                 domain_xml, target)
                    : qsnap__err(QSNAP_EUSAGE, "name the disk with --target DEV",
                                 "%s: the domain has %zu disks and none uses a file of this store",
                                 domain_xml, nd);
        goto out;
    }
    target = qsnap__xml_attr(qsnap__xml_child(disk, "target", NULL), "dev");
    if (!target || !target[0]) {
        rc = qsnap__err(QSNAP_EUSAGE, NULL, "%s: the disk has no <target dev=...>", domain_xml);
        goto out;
    }
    l = calloc(1, sizeof(*l));
    if (!l || !(l->domain = strdup(dom_name)) || !(l->target = strdup(target)) ||
        !(l->old_source =
              strdup(qsnap__xml_attr(qsnap__xml_child(disk, "source", NULL), "file")
                         ? qsnap__xml_attr(qsnap__xml_child(disk, "source", NULL), "file")
                         : ""))) {
        rc = nomem();
        goto out;
    }
    /* The image the VM uses: the VM path, what 'qsnap current DISK --path' prints. */
    rc = qsnap_vm_path(s, &l->new_source);
    if (rc)
        goto out;
    cur = qsnap__branch_by_name(&s->m, s->m.current);
    head = cur ? qsnap__layer(&s->m, cur->head) : NULL;
    if (cur) {
        cur_base = qsnap__node(&s->m, cur->base);
        if (cur_base && !cur_base->name)
            cur_base = named_parent(&s->m, cur_base);
    }
    rc = topo_order(&s->m, &order);
    for (size_t i = 0; i < s->m.nn && !rc && order[i]; i++) {
        char *xml = NULL;
        if (!order[i]->name)
            continue;
        rc = make_doc(s, root, disk, target, cand, nd, order[i], &xml);
        if (!rc)
            rc = add_doc(l, order[i], xml, order[i] == cur_base);
    }
    /* The domain itself: the disk on the current image. */
    if (!rc)
        rc = repoint(disk, l->new_source, head ? head->fmt : QCOW2_FORMAT_QCOW2);
    if (!rc) {
        f = open_memstream(&buf, &len);
        if (!f) {
            rc = nomem();
        } else {
            qsnap__xml_write(f, root);
            fputc('\n', f);
            if (fclose(f) != 0 || !buf)
                rc = nomem();
            l->domain_xml = buf;
        }
    }
out:
    free(order);
    free(dom_name);
    free(uuid);
    qsnap__xml_free(root);
    if (rc) {
        qsnap_libvirt_xml_free(l ? &l->pub : NULL);
        return rc;
    }
    l->pub.domain = l->domain;
    l->pub.target = l->target;
    l->pub.old_source = l->old_source;
    l->pub.new_source = l->new_source;
    l->pub.domain_xml = l->domain_xml;
    *out = &l->pub;
    return 0;
}
