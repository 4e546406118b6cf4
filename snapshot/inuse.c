/*
 * Files in use by a running VM: which files an operation touches, whether
 * another process holds them, and holding them while the operation runs.
 *
 * WHAT IS TOUCHED. Every image file a plan writes, re-points, freezes,
 * makes writable, removes or makes current, plus the current branch's head
 * (a VM configured with the store's VM path runs on it):
 *   - the layer of every FREEZE, THAW, STREAM, SET_BACKING, COMMIT (head and
 *     base), PRESERVE (the layer preserved and the head it reads), INTERNAL_*
 *     step and every file an UNLINK step removes;
 *   - every layer whose record a target model changes (frozen, backing) or
 *     drops, and the head of every branch a target model changes (renamed,
 *     deleted, moved to another base);
 *   - the current branch's head before the plan, and in every target model;
 *   - the file the VM path names now, when that is not the current head (a
 *     link re-pointed by hand: a VM configured with the VM path runs on it,
 *     and the operation would re-point the link under it; vmpath.c).
 * Only files that exist are checked (new files appear under names nothing
 * else knows yet; they are held from the moment a step makes them, below).
 *
 * IN USE. QEMU's file-posix driver (and libqcow2, and a plugin that serves a
 * head as QEMU does) take shared OFD locks on bytes 100 + bit (permissions
 * held) and 200 + bit (permissions refused to others). Any OFD lock of
 * another open file on bytes 100..299 means another process has the image
 * open, read-write or as a read-only backing file: either way a tree
 * operation that changes the file, or the branch the VM's path opens, must
 * wait. One F_OFD_GETLK for a write lock over that range finds it.
 *
 * HOLDING. Before the first step (before the journal, before the store
 * directory of a first create), each touched file is opened read-only and
 * given a writer's bytes: read locks on 100, 101, 103 (consistent read,
 * write, resize) and 201, 203 (write and resize not shared), as QEMU and
 * libqcow2 take them for a read-write image. The locks are set first and
 * checked afterwards, as QEMU does, so two racing openers can both fail but
 * never both succeed. While they are held, any QEMU that opens the file
 * (read-write: byte 201 is taken; read-only as a backing file: it refuses to
 * share write, and byte 101 is taken) fails to start instead of racing the
 * operation. The steps themselves then open images without taking locks
 * (the store lock and these locks already exclude every other writer); the
 * descriptors are closed, dropping the locks, when the operation ends.
 * Files the steps make are held the same way from the moment they exist,
 * before they get their final names (qsnap__touch_hold_new).
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qsnap_int.h"

#define LOCK_RANGE_START 100 /* QEMU's permission bytes ... */
#define LOCK_RANGE_LEN 200   /* ... and its share bytes, 100..299 */

static int nomem(void)
{
    return qsnap__err(QSNAP_ERROR, NULL, "out of memory");
}

void qsnap__touch_free(struct qsnap__touch *t, size_t n)
{
    for (size_t i = 0; t && i < n; i++) {
        free(t[i].file);
        free(t[i].path);
        free(t[i].role);
    }
    free(t);
}

struct touch_set {
    struct qsnap__touch *t;
    size_t n;
    dev_t *dev;
    ino_t *ino;
    bool lenient; /* a file that is not a regular one is left out, not refused */
};

/* The store-relative name of a file given store-relative or absolute ("" for the disk). */
static const char *touch_rel(const qsnap_store *s, const char *name)
{
    size_t dl = strlen(s->dir);

    if (!strncmp(name, "../", 3) || !strcmp(name, s->disk_abs))
        return "";
    if (name[0] == '/')
        return !strncmp(name, s->dir, dl) && name[dl] == '/' ? name + dl + 1 : NULL;
    return name;
}

/* Add store-relative file rel (when it exists and is not in the set yet). */
static int add_file(struct touch_set *ts, const qsnap_store *s, const char *rel, const char *role)
{
    struct qsnap__touch *t;
    struct stat st;
    dev_t *dev;
    ino_t *ino;
    char *path;

    if (!rel)
        return 0;
    {
        /* Looked at without following links: from the store's directories,
         * and the disk by the name it had when the store was opened. */
        const char *r = touch_rel(s, rel);
        int rc;
        if (!r)
            return 0; /* not a file of the store */
        path = r[0] ? qsnap__path(s, r) : strdup(s->disk_abs);
        if (!path)
            return nomem();
        if (!r[0])
            rc = lstat(path, &st) < 0 ? (errno == ENOENT ? QSNAP_ENOTFOUND : QSNAP_ERROR) : 0;
        else
            rc = qsnap__lstat_store_file(s, r, &st);
        if (rc == QSNAP_ENOTFOUND) {
            free(path);
            return 0; /* made by the plan: nothing else knows its name yet */
        }
        if (!rc && !(S_ISREG(st.st_mode) || (!r[0] && S_ISBLK(st.st_mode)))) {
            if (ts->lenient) {
                free(path);
                return 0;
            }
            rc = qsnap__unsafe_err(path, S_ISLNK(st.st_mode) ? ELOOP : ENODEV);
        }
        if (rc) {
            free(path);
            return rc;
        }
        /* The disk by its store-relative name ("../NAME"), as messages show it. */
        rel = r[0] ? r : !strncmp(rel, "../", 3) ? rel : s->m.disk ? s->m.disk : "../";
    }
    for (size_t i = 0; i < ts->n; i++) {
        if (ts->dev[i] == st.st_dev && ts->ino[i] == st.st_ino) {
            free(path);
            return 0;
        }
    }
    t = realloc(ts->t, (ts->n + 1) * sizeof(*t));
    if (t)
        ts->t = t;
    dev = realloc(ts->dev, (ts->n + 1) * sizeof(*dev));
    if (dev)
        ts->dev = dev;
    ino = realloc(ts->ino, (ts->n + 1) * sizeof(*ino));
    if (ino)
        ts->ino = ino;
    if (!t || !dev || !ino) {
        free(path);
        return nomem();
    }
    t = &ts->t[ts->n];
    memset(t, 0, sizeof(*t));
    t->path = path;
    t->file = strdup(rel);
    t->role = strdup(role);
    t->fd = -1;
    ts->dev[ts->n] = st.st_dev;
    ts->ino[ts->n] = st.st_ino;
    ts->n++;
    if (!t->file || !t->role)
        return nomem();
    return 0;
}

static bool named_external(const void *arg, size_t i)
{
    const struct qsnap__node *n = &((const struct qsnap__model *)arg)->nodes[i];

    return n->name && !n->internal;
}

/*
 * What the files of a plan are looked up in: the layers of the store's model
 * (0) and of each target model (k + 1); the branches of the store's and of
 * the last target model by head; the store's named snapshots by layer.
 */
struct touch_ctx {
    const qsnap_store *s;
    const qsnap_plan *p;
    struct qsnap__lookup *layers;
    size_t nlayers;
    struct qsnap__lookup head_s, head_t, snap_s;
};

static void ctx_free(struct touch_ctx *c)
{
    for (size_t k = 0; k < c->nlayers; k++)
        qsnap__lookup_free(&c->layers[k]);
    free(c->layers);
    qsnap__lookup_free(&c->head_s);
    qsnap__lookup_free(&c->head_t);
    qsnap__lookup_free(&c->snap_s);
    memset(c, 0, sizeof(*c));
}

static int ctx_init(struct touch_ctx *c, const qsnap_store *s, const qsnap_plan *p)
{
    size_t nm = p ? p->nm : 0;

    memset(c, 0, sizeof(*c));
    c->s = s;
    c->p = p;
    c->layers = calloc(nm + 1, sizeof(*c->layers));
    if (!c->layers)
        return nomem();
    c->nlayers = nm + 1;
    for (size_t k = 0; k <= nm; k++)
        qsnap__lookup_layers(&c->layers[k], k ? &p->models[k - 1] : &s->m);
    qsnap__lookup_heads(&c->head_s, &s->m);
    if (nm)
        qsnap__lookup_heads(&c->head_t, &p->models[nm - 1]);
    qsnap__lookup_init(&c->snap_s, s->m.nn ? &s->m.nodes[0].layer : NULL, sizeof(s->m.nodes[0]),
                s->m.nn, named_external, &s->m);
    return 0;
}

/* The layer record for id: the latest target model that has it, else the store's. */
static int plan_layer(struct touch_ctx *c, unsigned id, const struct qsnap__layer **out)
{
    *out = NULL;
    for (size_t k = c->nlayers; k-- > 0;) {
        const struct qsnap__model *m = k ? &c->p->models[k - 1] : &c->s->m;
        long at;
        int rc = qsnap__lookup_find(&c->layers[k], id, &at);
        if (rc)
            return rc;
        if (at >= 0) {
            *out = &m->layers[at];
            break;
        }
    }
    return 0;
}

/* What a layer is to the user, for messages ("head of the current branch main"). */
static int layer_role(struct touch_ctx *c, const struct qsnap__layer *l, char *buf, size_t size)
{
    const struct qsnap__model *m = &c->s->m, *t = c->p && c->p->nm ? &c->p->models[c->p->nm - 1]
                                                                   : NULL;
    long at;
    int rc = qsnap__lookup_find(&c->head_s, l->id, &at);

    if (!rc && at >= 0) {
        const struct qsnap__branch *b = &m->branches[at];
        snprintf(buf, size, "head of %sbranch %s",
                 m->current && !strcmp(m->current, b->name) ? "the current " : "", b->name);
        return 0;
    }
    if (!rc && t)
        rc = qsnap__lookup_find(&c->head_t, l->id, &at);
    if (!rc && t && at >= 0) {
        snprintf(buf, size, "head of branch %s", t->branches[at].name);
        return 0;
    }
    if (!rc && l->is_disk) {
        snprintf(buf, size, "the disk");
        return 0;
    }
    if (!rc)
        rc = qsnap__lookup_find(&c->snap_s, l->id, &at);
    if (!rc && at >= 0)
        snprintf(buf, size, "layer of snapshot %s", m->nodes[at].name);
    else if (!rc)
        snprintf(buf, size, "layer");
    return rc;
}

static int add_layer(struct touch_set *ts, struct touch_ctx *c, unsigned id)
{
    const struct qsnap__layer *l = NULL;
    char role[256];
    int rc = id ? plan_layer(c, id, &l) : 0;

    if (rc || !l)
        return rc;
    rc = layer_role(c, l, role, sizeof(role));
    return rc ? rc : add_file(ts, c->s, l->file, role);
}

/* The head of the current branch of model m (0: none). */
static unsigned current_head(const struct qsnap__model *m)
{
    const struct qsnap__branch *b = m->current ? qsnap__branch_by_name(m, m->current) : NULL;

    return b ? b->head : 0;
}

/*
 * The file the VM path names now: the current head, unless the link was
 * re-pointed behind qsnap's back (at another branch's head, say), and then
 * a VM may run on that file. Whatever stands there that is not a regular
 * file is left out (the store's scan refuses it).
 */
static int add_vm_target(struct touch_set *ts, struct touch_ctx *c)
{
    const struct qsnap__model *m = &c->s->m;
    const struct qsnap__layer *l = NULL;
    char role[256];
    char *rel = NULL;
    bool lenient = ts->lenient;
    long at = -1;
    int rc = qsnap__vm_path_target(c->s, &rel);

    if (!rc && rel && current_head(m))
        rc = qsnap__lookup_find(&c->layers[0], current_head(m), &at);
    if (rc || !rel || (at >= 0 && !strcmp(m->layers[at].file, rel))) {
        free(rel);
        return rc;
    }
    for (size_t i = 0; i < m->nl && !l; i++) {
        if (!strcmp(m->layers[i].file, rel))
            l = &m->layers[i];
    }
    snprintf(role, sizeof(role), "the VM path's target");
    if (l) {
        rc = layer_role(c, l, role, sizeof(role) - 32);
        strcat(role, ", which the VM path names");
    }
    ts->lenient = true;
    if (!rc)
        rc = add_file(ts, c->s, rel, role);
    ts->lenient = lenient;
    free(rel);
    return rc;
}

static int touched(struct touch_set *ts, const qsnap_store *s, const qsnap_plan *p)
{
    struct touch_ctx c;
    int rc = ctx_init(&c, s, p);

    if (rc)
        return rc;
    rc = add_layer(ts, &c, current_head(&s->m));
    if (!rc)
        rc = add_vm_target(ts, &c);
    for (size_t i = 0; !rc && p && i < p->n; i++) {
        const struct qsnap__step *st = &p->steps[i];
        switch (st->kind) {
        case QSNAP__ST_CREATE:
        case QSNAP__ST_FREEZE:
        case QSNAP__ST_THAW:
        case QSNAP__ST_STREAM:
        case QSNAP__ST_SET_BACKING:
        case QSNAP__ST_INTERNAL_CREATE:
        case QSNAP__ST_INTERNAL_APPLY:
        case QSNAP__ST_INTERNAL_DELETE:
            rc = add_layer(ts, &c, st->x);
            break;
        case QSNAP__ST_COMMIT:
            rc = add_layer(ts, &c, st->x);
            if (!rc)
                rc = add_layer(ts, &c, st->y);
            break;
        case QSNAP__ST_PRESERVE:
            rc = add_layer(ts, &c, st->x);
            if (!rc)
                rc = add_layer(ts, &c, st->y);
            if (!rc)
                rc = add_layer(ts, &c, st->z);
            break;
        case QSNAP__ST_UNLINK: {
            const struct qsnap__layer *l = NULL;
            for (size_t k = 0; k < s->m.nl && !l; k++) {
                if (!strcmp(s->m.layers[k].file, st->a))
                    l = &s->m.layers[k];
            }
            rc = l ? add_layer(ts, &c, l->id) : add_file(ts, s, st->a, "removed file");
            break;
        }
        case QSNAP__ST_MKDIR:
        case QSNAP__ST_LINK_STATE:
        case QSNAP__ST_SAVE:
            break;
        case QSNAP__ST_ADOPT:
            /* A file of the chain being adopted, outside the store until this
             * step moves it in: qsnap_plan_adopt() tested every one of them for
             * QEMU's locks (a writer's open) before planning. */
            break;
        }
    }
    for (size_t k = 0; !rc && p && k < p->nm; k++) {
        const struct qsnap__model *t = &p->models[k];
        struct qsnap__lookup heads;
        rc = add_layer(ts, &c, current_head(t));
        /* Plans keep the records' places mostly: the same place first. */
        for (size_t i = 0; !rc && i < s->m.nl; i++) {
            const struct qsnap__layer *o = &s->m.layers[i], *n = NULL;
            long at = -1;
            if (i < t->nl && t->layers[i].id == o->id)
                at = (long)i;
            else
                rc = qsnap__lookup_find(&c.layers[k + 1], o->id, &at);
            if (at >= 0)
                n = &t->layers[at];
            if (!rc && (!n || n->frozen != o->frozen || n->backing != o->backing))
                rc = add_layer(ts, &c, o->id);
        }
        qsnap__lookup_heads(&heads, t);
        for (size_t i = 0; !rc && i < s->m.nb; i++) {
            const struct qsnap__branch *o = &s->m.branches[i], *n = NULL;
            long at = -1;
            if (i < t->nb && t->branches[i].head == o->head)
                at = (long)i;
            else
                rc = qsnap__lookup_find(&heads, o->head, &at);
            if (at >= 0)
                n = &t->branches[at];
            if (!rc && (!n || strcmp(n->name, o->name) || n->base != o->base))
                rc = add_layer(ts, &c, o->head);
        }
        qsnap__lookup_free(&heads);
    }
    ctx_free(&c);
    return rc;
}

int qsnap__touched(const qsnap_store *s, const qsnap_plan *p, struct qsnap__touch **out,
                   size_t *n_out)
{
    struct touch_set ts = {NULL, 0, NULL, NULL, false};
    int rc = touched(&ts, s, p);

    free(ts.dev);
    free(ts.ino);
    if (rc) {
        qsnap__touch_free(ts.t, ts.n);
        return rc;
    }
    *out = ts.t;
    *n_out = ts.n;
    return 0;
}

int qsnap__touch_add(const qsnap_store *s, struct qsnap__touch **t, size_t *n, const char *rel,
                     const char *role)
{
    struct touch_set ts = {*t, *n, calloc(*n + 1, sizeof(dev_t)), calloc(*n + 1, sizeof(ino_t)),
                           true};
    int rc = 0;

    if (!ts.dev || !ts.ino)
        rc = nomem();
    for (size_t i = 0; !rc && i < *n; i++) {
        struct stat st;
        if (lstat((*t)[i].path, &st) == 0) {
            ts.dev[i] = st.st_dev;
            ts.ino[i] = st.st_ino;
        }
    }
    if (!rc)
        rc = add_file(&ts, s, rel, role);
    free(ts.dev);
    free(ts.ino);
    *t = ts.t;
    *n = ts.n;
    return rc;
}

/* Whether another open file holds any of QEMU's lock bytes on fd's file. */
static int others_hold(int fd, const char *path, bool *held)
{
    struct flock fl;

    memset(&fl, 0, sizeof(fl));
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = LOCK_RANGE_START;
    fl.l_len = LOCK_RANGE_LEN;
    while (fcntl(fd, F_OFD_GETLK, &fl) < 0) {
        if (errno != EINTR)
            return qsnap__err(QSNAP_ERROR, NULL, "%s: cannot test its locks: %s", path,
                              strerror(errno));
    }
    *held = fl.l_type != F_UNLCK;
    return 0;
}

/*
 * Open a touched file to test or hold its locks: a store file from its
 * directory without following links (never blocking on a FIFO put there), a
 * regular file only; the disk only as the file it was when the store was
 * opened.
 */
static int open_file(const qsnap_store *s, const struct qsnap__touch *t, int *fd)
{
    int rc;

    if (!strncmp(t->file, "../", 3)) {
        *fd = qsnap__open_disk(s, O_RDONLY);
        if (*fd >= 0)
            return 0;
        rc = -*fd;
        *fd = -1;
        return rc == EXDEV ? qsnap__err(QSNAP_EINTEGRITY, "run the command again",
                                         "%s: the disk's name now leads to another file",
                                         s->disk_abs)
                           : qsnap__err(QSNAP_ERROR, NULL,
                                        "%s: cannot open it to check its locks: %s", t->path,
                                        strerror(rc));
    }
    rc = qsnap__open_store_file(s, t->file, O_RDONLY | O_NOCTTY, fd);
    if (rc == QSNAP_ENOTFOUND)
        rc = qsnap__err(QSNAP_ERROR, NULL, "%s: cannot open it to check its locks: it is gone",
                        t->path);
    return rc;
}

/*
 * Who holds the files: the processes this user may look at (/proc/PID/fd)
 * with one of them open, named by their program ("qemu-system-x86 (pid
 * 4242)"; a qsnap by its command: "qsnap mount (pid 77)"), at most three,
 * appended to out. The descriptors are compared by the path their link
 * names (readlink, never a stat through them: a descriptor on a hung mount
 * must not hang the refusal) with the files' real paths. Only when a
 * refusal is given, so its cost is never that of an operation. *own: a
 * qsnap mount (OWN_MOUNT) or server (OWN_SERVE: qsnap serve, or nbdkit with
 * qsnap's plugin) is among them.
 */
#define OWN_MOUNT 1
#define OWN_SERVE 2
static void holders(char *const *paths, size_t nfiles, char *out, size_t size, int *own)
{
    size_t len = strlen(out), found = 0, looked = 0;
    struct dirent *e;
    DIR *proc = opendir("/proc");

    while (proc && found < 3 && looked < 200000 && (e = readdir(proc)) != NULL) {
        char dir[64], comm[64] = "?", cmd[256] = "", link[PATH_MAX];
        long pid = isdigit((unsigned char)e->d_name[0]) ? strtol(e->d_name, NULL, 10) : 0;
        bool match = false;
        struct dirent *fe;
        DIR *fds;
        int dfd;

        if (pid <= 0 || pid == (long)getpid())
            continue;
        snprintf(dir, sizeof(dir), "/proc/%ld/fd", pid);
        fds = opendir(dir);
        if (!fds)
            continue;
        dfd = dirfd(fds);
        while (!match && looked++ < 200000 && (fe = readdir(fds)) != NULL) {
            ssize_t r = fe->d_name[0] == '.'
                            ? -1
                            : readlinkat(dfd, fe->d_name, link, sizeof(link) - 1);
            if (r <= 0)
                continue;
            link[r] = '\0';
            for (size_t i = 0; i < nfiles && !match; i++)
                match = paths[i] && !strcmp(link, paths[i]);
        }
        closedir(fds);
        if (!match)
            continue;
        snprintf(dir, sizeof(dir), "/proc/%ld/comm", pid);
        {
            FILE *f = fopen(dir, "re");
            if (f) {
                if (fgets(comm, sizeof(comm), f))
                    comm[strcspn(comm, "\n")] = '\0';
                fclose(f);
            }
        }
        snprintf(dir, sizeof(dir), "/proc/%ld/cmdline", pid);
        {
            int fd = open(dir, O_RDONLY | O_CLOEXEC);
            ssize_t r = fd >= 0 ? read(fd, cmd, sizeof(cmd) - 1) : -1;
            if (fd >= 0)
                close(fd);
            cmd[r > 0 ? r : 0] = '\0';
        }
        for (char *c = comm; *c; c++)
            *c = isprint((unsigned char)*c) ? *c : '?';
        if (len >= size)
            break;
        if (!strcmp(comm, "qsnap")) {
            /* argv[1], the command: "qsnap mount", "qsnap serve", "qsnap image" */
            const char *sub = cmd + strlen(cmd) + 1;
            char word[16] = "";
            size_t w = 0;
            if (sub < cmd + sizeof(cmd))
                for (; w + 1 < sizeof(word) && sub[w] && isalnum((unsigned char)sub[w]); w++)
                    word[w] = sub[w];
            word[w] = '\0';
            if (!strcmp(word, "mount"))
                *own |= OWN_MOUNT;
            else if (!strcmp(word, "serve"))
                *own |= OWN_SERVE;
            len += (size_t)snprintf(out + len, size - len, "%sqsnap%s%s (pid %ld)",
                                    found ? ", " : "", w ? " " : "", word, pid);
        } else {
            if (!strcmp(comm, "nbdkit") && memmem(cmd, sizeof(cmd), "qsnap", 5))
                *own |= OWN_SERVE;
            len += (size_t)snprintf(out + len, size - len, "%s%s (pid %ld)", found ? ", " : "",
                                    comm, pid);
        }
        found++;
    }
    if (proc)
        closedir(proc);
    if (found == 3 && len < size)
        snprintf(out + len, size - len, ", ...");
}

/* The refusal for the held files of t: it names them all (up to four), and who holds them. */
static int busy_error(const struct qsnap__touch *t, size_t n)
{
    char names[1024] = "", who[512] = "", *real[8];
    size_t held = 0, len = 0, k = 0;
    int own = 0;

    for (size_t i = 0; i < n; i++) {
        if (!t[i].held)
            continue;
        if (held < 4 && len < sizeof(names))
            len += (size_t)snprintf(names + len, sizeof(names) - len, "%s%s (%s)",
                                    held ? ", " : "", t[i].path, t[i].role);
        if (k < 8 && (real[k] = realpath(t[i].path, NULL)) != NULL)
            k++;
        held++;
    }
    if (!held)
        return 0;
    if (held > 4 && len < sizeof(names))
        snprintf(names + len, sizeof(names) - len, " and %zu more", held - 4);
    holders(real, k, who, sizeof(who), &own);
    for (size_t i = 0; i < k; i++)
        free(real[i]);
    if (own)
        return qsnap__err(QSNAP_EBUSY,
                          own == OWN_MOUNT ? "close the files open in the mount, or end it "
                                             "('qsnap umount DIR'), then run the command again "
                                             "(nothing was changed)"
                          : own == OWN_SERVE
                              ? "stop the server ('qsnap serve --stop DISK'), then run the "
                                "command again (nothing was changed)"
                              : "end the mount ('qsnap umount DIR') and stop the server ('qsnap "
                                "serve --stop DISK'), then run the command again (nothing was "
                                "changed)",
                          "%s %s in use: held by %s (a qsnap mount holds the images of its open "
                          "files, a server those it serves)",
                          names, held == 1 ? "is" : "are", who);
    if (held == 1)
        return qsnap__err(QSNAP_EBUSY,
                          "shut down the virtual machine that uses it, then run the command "
                          "again (nothing was changed)",
                          "%s is in use: %s holds its image lock", names,
                          who[0] ? who : "a running QEMU (or another process)");
    return qsnap__err(QSNAP_EBUSY,
                      "shut down the virtual machines that use them ('--dry-run' lists what "
                      "was checked), then run the command again (nothing was changed)",
                      "%s are in use: %s hold%s their image locks", names,
                      who[0] ? who : "a running QEMU (or another process)",
                      who[0] && !strchr(who, ',') ? "s" : "");
}

int qsnap__touch_check(const qsnap_store *s, struct qsnap__touch *t, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int fd, rc = open_file(s, &t[i], &fd);
        if (rc)
            return rc;
        rc = others_hold(fd, t[i].path, &t[i].held);
        close(fd);
        if (rc)
            return rc;
    }
    return busy_error(t, n);
}

void qsnap__touch_release(struct qsnap__touch *t, size_t n)
{
    for (size_t i = 0; t && i < n; i++) {
        if (t[i].fd >= 0)
            close(t[i].fd); /* drops its OFD locks */
        t[i].fd = -1;
    }
}

int qsnap__touch_hold(const qsnap_store *s, struct qsnap__touch *t, size_t n)
{
    static const off_t bytes[] = {100, 101, 103, 201, 203};
    int rc = 0;

    for (size_t i = 0; i < n && !rc; i++) {
        struct flock fl;
        rc = open_file(s, &t[i], &t[i].fd);
        for (size_t b = 0; !rc && b < sizeof(bytes) / sizeof(bytes[0]); b++) {
            memset(&fl, 0, sizeof(fl));
            fl.l_type = F_RDLCK;
            fl.l_whence = SEEK_SET;
            fl.l_start = bytes[b];
            fl.l_len = 1;
            while (fcntl(t[i].fd, F_OFD_SETLK, &fl) < 0 && !rc) {
                if (errno == EAGAIN || errno == EACCES)
                    t[i].held = true; /* someone holds a write lock there */
                else if (errno != EINTR)
                    rc = qsnap__err(QSNAP_ERROR, NULL, "%s: cannot lock: %s", t[i].path,
                                    strerror(errno));
                if (t[i].held)
                    break;
            }
        }
        if (!rc && !t[i].held)
            rc = others_hold(t[i].fd, t[i].path, &t[i].held);
        if (!rc && t[i].held) {
            /* Test the others too, so that the message counts them all. */
            for (size_t j = i + 1; j < n && !rc; j++) {
                int fd;
                rc = open_file(s, &t[j], &fd);
                if (!rc) {
                    rc = others_hold(fd, t[j].path, &t[j].held);
                    close(fd);
                }
            }
            if (!rc)
                rc = busy_error(t, n);
        }
    }
    if (rc)
        qsnap__touch_release(t, n);
    return rc;
}

/*
 * A file a step makes (a new head, a layer that preserves content) has a name
 * nothing else knew when the touched files were held; from the moment it
 * exists it is a file of the operation, which may still write it (an
 * internal snapshot taken in a new head, a preserved layer topped up before a
 * commit, fingerprinted when frozen) or remove it again (a failed operation
 * is undone by deleting what it made). Held from there on like the others,
 * so a QEMU that opens it meanwhile is refused instead of running on a file
 * that changes or goes under it.
 */
int qsnap__touch_hold_new(const qsnap_store *s, qsnap_plan *p, const char *rel, const char *role)
{
    size_t n = p->nmade;
    int rc;

    if (!s->holding)
        return 0;
    /* Apart from the files the plan was checked on (which describe lists). */
    rc = qsnap__touch_add(s, &p->made, &p->nmade, rel, role);
    if (rc || p->nmade == n)
        return rc; /* held already (the same file) */
    return qsnap__touch_hold(s, &p->made[n], 1);
}

int qsnap_plan_check(qsnap_store *s, qsnap_plan *p)
{
    int rc;

    qsnap__touch_free(p->touch, p->ntouch);
    p->touch = NULL;
    p->ntouch = 0;
    p->checked = false;
    rc = qsnap__touched(s, p, &p->touch, &p->ntouch);
    if (rc)
        return rc;
    p->checked = true;
    rc = qsnap__touch_check(s, p->touch, p->ntouch);
    /* The refusal a real run makes before its first step (exec.c), in the same order. */
    if (!rc && p->n)
        rc = qsnap__refuse_foreign_layers(s);
    if (!rc && p->n)
        rc = qsnap__vm_path_refuse(s);
    return rc;
}
