/*
 * Verifying a store (qsnap_verify): every layer, internal snapshot, orphan
 * file, store file and the VM path checked against the metadata, each
 * problem a finding. With repair, what can be fixed is, and the finding
 * says so; repair goes through exec.c's recovery and plain link and cleanup
 * steps, never anything else that changes a file.
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

/* ---- verify ---------------------------------------------------------------------- */

struct findings {
    qsnap_finding *f;
    size_t n, cap;
    size_t problems;
    size_t fixable; /* problems whose finding says --repair fixes them (repair_fixes) */
};

/*
 * Whether a finding's message says that --repair fixes it: every finding of a
 * problem --repair fixes says "--repair " and what it does ("--repair removes
 * it"); a problem it does not fix says what to do instead, or "--repair leaves
 * it" / "--repair cannot fix". The final hint offers --repair only when one does.
 */
static bool repair_fixes(const char *msg)
{
    static const char *const does[] = {"repairs", "re-points", "records", "makes", "removes",
                                       "fixes", "points", "finishes", "sets"};
    size_t k = strlen("--repair ");

    for (const char *p = msg; p && (p = strstr(p, "--repair ")) != NULL; p += k) {
        for (size_t i = 0; i < sizeof(does) / sizeof(does[0]); i++) {
            if (!strncmp(p + k, does[i], strlen(does[i])) && p[k + strlen(does[i])] == ' ')
                return true;
        }
    }
    return false;
}

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
    if (problem && !repaired) {
        fs->problems++;
        if (repair_fixes(msg))
            fs->fixable++;
    }
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
    if (l->frozen && qsnap__chmod_store_file(s, l->file, true) != 0) {
        free(link);
        return false;
    }
    if (qsnap__image_open(s, path, &wo, &w, NULL) == 0 &&
        qcow2_image_rebase(w, link, qcow2_format_name(b->fmt), true, NULL, NULL) == 0 &&
        qcow2_image_flush(w) == 0)
        fixed = true;
    qcow2_image_close(w);
    /* Made read-only again; when that fails, the layer's mode check (below, in the
     * same walk) finds it writable and says so. */
    if (l->frozen)
        (void)qsnap__chmod_store_file(s, l->file, false);
    free(link);
    return fixed;
}

/* ---- a trial repair --------------------------------------------------------------- */

/*
 * A scratch view of a store file for a trial repair: reads come from the file
 * (opened read-only through qsnap__io_open, so with the store's link checks),
 * writes stay in memory in 4 KiB pages, the file is never written. check -r all
 * run on it tells whether --repair would fix everything, without doing it.
 */
#define SCRATCH_PAGE 4096u

struct scratch_page {
    uint64_t idx;
    uint8_t *data;
};

struct scratch_io {
    qcow2_io base;
    qcow2_io *under;
    uint64_t size; /* the size as written */
    uint64_t keep; /* bytes of the file still seen: the smallest size truncated to */
    struct scratch_page *pages; /* ascending idx */
    size_t n, cap;
};

/* Index in io->pages of page idx, or where it would go (*found false). */
static size_t scratch_find(const struct scratch_io *io, uint64_t idx, bool *found)
{
    size_t lo = 0, hi = io->n;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (io->pages[mid].idx < idx)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = lo < io->n && io->pages[lo].idx == idx;
    return lo;
}

/* Page idx as the file and the writes so far make it. */
static int scratch_fill(struct scratch_io *io, uint64_t idx, uint8_t *buf)
{
    uint64_t off = idx * SCRATCH_PAGE;
    bool found;
    size_t at = scratch_find(io, idx, &found);

    memset(buf, 0, SCRATCH_PAGE);
    if (found) {
        memcpy(buf, io->pages[at].data, SCRATCH_PAGE);
        return 0;
    }
    if (off >= io->keep)
        return 0;
    return io->under->ops->pread(io->under, buf,
                                 (size_t)(io->keep - off < SCRATCH_PAGE ? io->keep - off
                                                                        : SCRATCH_PAGE),
                                 off);
}

static int scratch_pread(qcow2_io *base, void *buf, size_t len, uint64_t off)
{
    struct scratch_io *io = (struct scratch_io *)base;
    uint8_t page[SCRATCH_PAGE], *out = buf;

    while (len) {
        uint64_t idx = off / SCRATCH_PAGE, in = off % SCRATCH_PAGE;
        size_t n = SCRATCH_PAGE - in < len ? (size_t)(SCRATCH_PAGE - in) : len;
        int rc = scratch_fill(io, idx, page);
        if (rc)
            return rc;
        memcpy(out, page + in, n);
        out += n;
        off += n;
        len -= n;
    }
    return 0;
}

static int scratch_pwrite(qcow2_io *base, const void *buf, size_t len, uint64_t off)
{
    struct scratch_io *io = (struct scratch_io *)base;
    const uint8_t *in = buf;

    if (off + len > io->size)
        io->size = off + len;
    while (len) {
        uint64_t idx = off / SCRATCH_PAGE, at_in = off % SCRATCH_PAGE;
        size_t n = SCRATCH_PAGE - at_in < len ? (size_t)(SCRATCH_PAGE - at_in) : len;
        bool found;
        size_t at = scratch_find(io, idx, &found);
        if (!found) {
            uint8_t *data = malloc(SCRATCH_PAGE);
            int rc;
            if (!data)
                return -ENOMEM;
            rc = scratch_fill(io, idx, data);
            if (!rc && io->n == io->cap) {
                size_t c = io->cap ? io->cap * 2 : 64;
                struct scratch_page *p = realloc(io->pages, c * sizeof(*p));
                if (p) {
                    io->pages = p;
                    io->cap = c;
                } else {
                    rc = -ENOMEM;
                }
            }
            if (rc) {
                free(data);
                return rc;
            }
            memmove(&io->pages[at + 1], &io->pages[at], (io->n - at) * sizeof(*io->pages));
            io->pages[at].idx = idx;
            io->pages[at].data = data;
            io->n++;
        }
        memcpy(io->pages[at].data + at_in, in, n);
        in += n;
        off += n;
        len -= n;
    }
    return 0;
}

static int scratch_flush(qcow2_io *base)
{
    (void)base;
    return 0;
}

static int scratch_truncate(qcow2_io *base, uint64_t size)
{
    struct scratch_io *io = (struct scratch_io *)base;

    if (size < io->size) {
        /* Pages past the new end go; the part of the last one past it reads as zero. */
        while (io->n && io->pages[io->n - 1].idx * SCRATCH_PAGE >= size)
            free(io->pages[--io->n].data);
        if (io->n && io->pages[io->n - 1].idx == size / SCRATCH_PAGE)
            memset(io->pages[io->n - 1].data + size % SCRATCH_PAGE, 0,
                   SCRATCH_PAGE - size % SCRATCH_PAGE);
        if (size < io->keep)
            io->keep = size;
    }
    io->size = size;
    return 0;
}

static int scratch_get_size(qcow2_io *base, uint64_t *size_out)
{
    *size_out = ((struct scratch_io *)base)->size;
    return 0;
}

static void scratch_close(qcow2_io *base)
{
    struct scratch_io *io = (struct scratch_io *)base;

    for (size_t i = 0; i < io->n; i++)
        free(io->pages[i].data);
    free(io->pages);
    io->under->ops->close(io->under);
    free(io);
}

static const qcow2_io_ops scratch_ops = {
    .version = QCOW2_IO_OPS_VERSION,
    .pread = scratch_pread,
    .pwrite = scratch_pwrite,
    .flush = scratch_flush,
    .truncate = scratch_truncate,
    .get_size = scratch_get_size,
    .close = scratch_close,
};

static int scratch_open(qcow2_io **out, const char *path, unsigned flags, void *payload)
{
    struct scratch_io *io;
    qcow2_io *under = NULL;
    uint64_t size = 0;
    int rc;

    *out = NULL;
    if (flags & (QCOW2_IO_CREATE | QCOW2_IO_TRUNC))
        return -EROFS;
    rc = qsnap__io_open(&under, path, flags & ~(unsigned)QCOW2_IO_RDWR, payload);
    if (!rc)
        rc = under->ops->get_size(under, &size);
    if (!rc && !(io = calloc(1, sizeof(*io))))
        rc = -ENOMEM;
    if (rc) {
        if (under)
            under->ops->close(under);
        return rc;
    }
    io->base.ops = &scratch_ops;
    io->under = under;
    io->size = io->keep = size;
    *out = &io->base;
    return 0;
}

/*
 * Whether check -r all (what --repair runs on a head: qsnap__repair_layer) would
 * fix everything check finds in layer l, by the same measure: run on a scratch
 * view of the file, so nothing is written.
 */
static bool repair_would_fix(qsnap_store *s, const struct qsnap__layer *l)
{
    qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
    qcow2_check_result cr;
    qcow2_image *img = NULL;
    char *path = qsnap__path(s, l->file);
    bool fixed = false;

    if (!path || l->fmt != QCOW2_FORMAT_QCOW2) {
        free(path);
        return false;
    }
    oo.flags = QCOW2_OPEN_RDWR | QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_CHECK | QCOW2_OPEN_NO_LOCK;
    oo.format = QCOW2_FORMAT_QCOW2;
    oo.open_fn = scratch_open;
    oo.open_payload = s;
    if (qcow2_image_open(&img, path, &oo) == 0) {
        memset(&cr, 0, sizeof(cr));
        fixed = qcow2_image_check(img, QCOW2_CHECK_FIX_LEAKS | QCOW2_CHECK_FIX_ERRORS, &cr) == 0 &&
                qcow2_image_flush(img) == 0 && cr.corruptions <= cr.corruptions_fixed &&
                cr.leaks <= cr.leaks_fixed;
    }
    qcow2_image_close(img);
    free(path);
    return fixed;
}

/*
 * What check found in layer l's own metadata. A branch head (writable) is
 * repaired by --repair (leaked clusters freed, refcounts and flags fixed, as
 * 'qemu-img check -r all') when that fixes everything (tried first on a scratch
 * view: repair_would_fix); what it cannot fix (an L2 entry past the end of the
 * file, say) is said so, with the ways out there are. A frozen layer is never
 * written: its leaks are harmless and only noted, its corruptions are a problem.
 */
static void verify_image_check(qsnap_store *s, const struct qsnap__layer *l, bool repair,
                               const qcow2_check_result *cr, struct findings *fs)
{
    char *path = qsnap__path(s, l->file);
    const char *branch = NULL;

    if (!path)
        return;
    for (size_t i = 0; i < s->m.nb && !branch; i++) {
        if (s->m.branches[i].head == l->id)
            branch = s->m.branches[i].name;
    }
    if (!l->frozen && repair_would_fix(s, l)) {
        if (repair && qsnap__repair_layer(s, l) == 0)
            find(fs, true, true, path,
                 "%s: %" PRIu64 " corruptions and %" PRIu64 " leaked clusters repaired", l->file,
                 cr->corruptions, cr->leaks);
        else
            find(fs, true, false, path,
                 "%s: %" PRIu64 " corruptions and %" PRIu64 " leaked clusters found by check "
                 "(--repair repairs them)",
                 l->file, cr->corruptions, cr->leaks);
    } else if (!l->frozen && branch) {
        find(fs, true, false, path,
             "%s: %" PRIu64 " corruptions and %" PRIu64 " leaked clusters found by check, which "
             "--repair cannot fix (nor 'qsnap image check -r all'): restore it from a backup, or "
             "copy out what still reads ('qsnap export DISK %s OUT') and give up the branch's "
             "changes ('qsnap branch DISK -d %s --force'; for the current branch 'qsnap revert "
             "DISK SNAPSHOT --discard')",
             l->file, cr->corruptions, cr->leaks, branch, branch);
    } else if (!l->frozen) {
        find(fs, true, false, path,
             "%s: %" PRIu64 " corruptions and %" PRIu64 " leaked clusters found by check, which "
             "--repair cannot fix (nor 'qsnap image check -r all'): restore it from a backup",
             l->file, cr->corruptions, cr->leaks);
    } else if (cr->corruptions && repair_would_fix(s, l)) {
        find(fs, true, false, path, "%s: %" PRIu64 " corruptions found by check "
                                    "('qsnap image check -r all' repairs them)",
             l->file, cr->corruptions);
    } else if (cr->corruptions) {
        find(fs, true, false, path,
             "%s: %" PRIu64 " corruptions found by check, which no repair fixes (nor 'qsnap "
             "image check -r all'): restore it from a backup; the states built on it may not "
             "read",
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
        int frc = qsnap__layer_fingerprint(s, &now);
        /* The recorded virtual size (what list shows without opening the layer). */
        if (frc == 0 && !memcmp(now.fp, l->fp, 16) && l->have_vsize &&
            (!now.have_vsize || now.vsize != l->vsize)) {
            if (repair && now.have_vsize) {
                find(fs, true, true, path,
                     "%s: the metadata recorded a virtual size of %" PRIu64
                     " bytes, the image has %" PRIu64 "; recorded again",
                     l->file, l->vsize, now.vsize);
                l->vsize = now.vsize;
            } else {
                find(fs, true, false, path,
                     "%s: the metadata records a virtual size of %" PRIu64
                     " bytes, not the image's (--repair records it again)",
                     l->file, l->vsize);
            }
        }
        if (frc == 0 && memcmp(now.fp, l->fp, 16) != 0) {
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
    /* 4. Internal snapshots qsnap did not make: nothing of the tree reaches them. In a
     * head, tree operations that would drop, freeze or change them refuse; in a frozen
     * layer (frozen with it by an older qsnap) they are kept, and only said. */
    if (img && l->fmt == QCOW2_FORMAT_QCOW2) {
        char *names = NULL;
        size_t k = qsnap__unknown_internal(img, &s->m, l->id, &names);
        if (k && !l->frozen)
            find(fs, true, false, path,
                 "%s holds %s that qsnap did not make (%s): operations that would drop, "
                 "freeze or change %s refuse; with the VM shut down, delete %s ('qsnap image "
                 "snapshot -d NAME FILE')",
                 l->file, k == 1 ? "an internal snapshot" : "internal snapshots",
                 names ? names : "?", k == 1 ? "it" : "them", k == 1 ? "it" : "them");
        else if (k)
            find(fs, false, false, path,
                 "%s holds %s that qsnap did not make (%s), frozen with it: kept, but no "
                 "longer for reverting to",
                 l->file, k == 1 ? "an internal snapshot" : "internal snapshots",
                 names ? names : "?");
        free(names);
    }
    qcow2_image_close(img);
    free(path);
}

/*
 * The files of the disk's own backing chain (the user's, outside the store,
 * which every state reads): as their fingerprints were when the store was
 * made. A file whose bytes are the same but whose time changed (touched) has
 * its record taken again by --repair (the commands that change the tree
 * compare the time).
 */
static void verify_disk_chain(qsnap_store *s, bool repair, struct findings *fs)
{
    const struct qsnap__chain *c;
    const char *p = s->m.below;
    bool touched = false, bad = false;
    size_t i = 0;

    if (!p) {
        /* A store an older qsnap made: its disk's chain was never recorded. */
        const struct qsnap__layer *d = NULL;
        char *rec = NULL;
        for (size_t k = 0; k < s->m.nl && !d; k++)
            d = s->m.layers[k].is_disk ? &s->m.layers[k] : NULL;
        c = d && d->fmt == QCOW2_FORMAT_QCOW2 ? qsnap__disk_chain(s) : NULL;
        if (!c || !c->n)
            return;
        if (repair && qsnap__disk_chain_record(s, &rec) == 0 && rec) {
            s->m.below = rec;
            find(fs, true, true, s->disk_abs,
                 "the disk's own backing chain (%zu files) had no fingerprints (a store made by "
                 "an older qsnap); recorded as the files are now",
                 c->n);
        } else {
            free(rec);
            find(fs, false, false, s->disk_abs,
                 "the disk's own backing chain (%zu files) has no fingerprints (a store made by "
                 "an older qsnap): 'verify --repair' records them as the files are now",
                 c->n);
        }
        return;
    }
    c = qsnap__disk_chain(s);
    for (struct qsnap__fprec r, now; *p && qsnap__fprec_parse(&p, true, &r); i++) {
        if (!c || i >= c->n) {
            find(fs, true, false, s->disk_abs,
                 "%.*s (a file of the disk's own backing chain) is missing, or the disk no "
                 "longer names it: every state of the disk reads it; put it back",
                 (int)r.path_len, r.path);
            bad = true;
            break;
        }
        if (qsnap__fingerprint_file(c->path[i], &now) != 0) {
            find(fs, true, false, c->path[i],
                 "%s (a file of the disk's own backing chain) "
                 "cannot be read: %s",
                 c->path[i], qsnap_error_last()->message);
            bad = true;
        } else if (memcmp(now.fp, r.fp, 16) != 0) {
            find(fs, true, false, c->path[i],
                 "%s (a file of the disk's own backing chain) was modified after the store "
                 "was made (fingerprint differs): every state built on it may be damaged; "
                 "restore it from a backup",
                 c->path[i]);
            bad = true;
        } else if (now.size != r.size || now.mtime_ns != r.mtime_ns) {
            touched = true;
        }
    }
    if (!bad && c && i < c->n) {
        find(fs, true, false, c->path[i],
             "%s: the disk's own backing chain has more files than when the store was made",
             c->path[i]);
        bad = true;
    }
    if (!bad && touched) {
        char *rec = NULL;
        if (repair && qsnap__disk_chain_record(s, &rec) == 0 && rec) {
            qsnap__str_free(&s->m, s->m.below);
            s->m.below = rec;
            find(fs, true, true, s->disk_abs,
                 "the disk's own backing chain has its content "
                 "as recorded but new file times; recorded again");
        } else {
            free(rec);
            find(fs, true, false, s->disk_abs,
                 "the disk's own backing chain has its content "
                 "as recorded but new file times (--repair records them again)");
        }
    }
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

/*
 * Whether name, in layers/, is a layer file "N.qcow2" whose id the metadata has
 * not handed out yet (N at or past seq). Such a file is never a leftover of
 * qsnap's: an operation makes new layers while its journal is there, and one
 * taken back removes them before its journal goes. With no journal, the metadata
 * is older than the layers (a change of it lost, or an old copy put back), or the
 * file was put there: it may hold a branch's data, and is not removed.
 */
static bool newer_than_metadata(const qsnap_store *s, const char *name, bool pending)
{
    unsigned id = pending ? 0 : qsnap__layer_id(name);

    return id && id >= s->m.seq;
}

/* Files in layers/ and state/ that the metadata does not name: half-made or orphaned. */
static void verify_orphans(qsnap_store *s, bool repair, struct findings *fs)
{
    static const char *const dirs[] = {"layers", "state"};
    bool pending = true;

    if (qsnap__journal_pending(s, &pending))
        pending = true; /* unknown: taken as an operation's own files */
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
            } else if (d == 0 && !qsnap__layer_name_ours(e->d_name)) {
                /* Not a name qsnap gives: another program's file, such as the overlay
                 * 'virsh snapshot-create-as' makes beside the VM path, which a VM may be
                 * writing. --repair never removes it. */
                find(fs, true, false, rel,
                     "%s: a file qsnap did not make (an overlay another program made on the "
                     "VM path?); commands that change the tree refuse to run while it is there, and --repair "
                     "leaves it: merge it into its branch ('qsnap image commit') or move it "
                     "out of the store",
                     rel);
            } else if (d == 0 && newer_than_metadata(s, e->d_name, pending)) {
                find(fs, true, false, rel,
                     "%s: a layer file with an id the metadata has not given out yet (a change "
                     "of the metadata lost, or an old copy of it put back?); it may hold a "
                     "branch's data, and --repair leaves it: restore DISK.qsnap/meta and meta.log "
                     "from a backup, or look at it ('qsnap image info') and move it out of the "
                     "store",
                     rel);
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

/* A state file's fingerprint record taken now: 0, or an error. */
static int state_record(qsnap_store *s, const char *rel, char **out)
{
    struct qsnap__fprec r;
    struct stat st;
    int rc = qsnap__fingerprint_store_file(s, rel, 0, r.fp, NULL, &st);

    *out = NULL;
    if (rc)
        return rc;
    r.size = (uint64_t)st.st_size;
    r.mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
    *out = qsnap__fprec_format(&r, NULL);
    return *out ? 0 : qsnap__err(QSNAP_ERROR, NULL, "out of memory");
}

/*
 * A state file that has a name outside the store too (an older qsnap hard-linked
 * the user's file): a write there (the next save to that path) changes this
 * snapshot's state. --repair gives the store its own read-only copy, and records
 * its fingerprint.
 */
static void verify_state_shared(qsnap_store *s, struct qsnap__node *n, bool repair,
                                struct findings *fs)
{
    char *path = qsnap__path(s, n->state), *rec = NULL;
    const char *who = n->name ? n->name : "an unnamed node";

    if (!path)
        return;
    if (repair && qsnap__copy_into_store(s, path, n->state) == 0 &&
        state_record(s, n->state, &rec) == 0) {
        qsnap__str_free(&s->m, n->sfp);
        n->sfp = rec;
        find(fs, true, true, path,
             "%s/%s: the state file of %s shared its inode with a file outside the store; "
             "the store has its own read-only copy now",
             s->dir, n->state, who);
    } else {
        free(rec);
        find(fs, true, false, path,
             "%s/%s: the state file of %s shares its inode with a file outside the store (an "
             "older qsnap hard-linked it): a write to that file changes this state (--repair "
             "gives the store its own copy)",
             s->dir, n->state, who);
    }
    free(path);
}

/* A state file copied into the store: read-only, and as its record says. */
static void verify_state_content(qsnap_store *s, const struct qsnap__node *n, const struct stat *st,
                                 bool repair, struct findings *fs)
{
    const char *who = n->name ? n->name : "an unnamed node";
    struct qsnap__fprec want;
    const char *p = n->sfp;
    char *now = NULL;

    if (!n->sfp || !qsnap__fprec_parse(&p, false, &want))
        return; /* hard-linked by an older qsnap, its only name now: nothing recorded */
    if (state_record(s, n->state, &now) == 0 && strcmp(now, n->sfp) != 0) {
        struct qsnap__fprec got;
        p = now;
        if (qsnap__fprec_parse(&p, false, &got) && !memcmp(got.fp, want.fp, 16)) {
            /* Same bytes, touched (its mtime): only the record is out of date. */
        } else {
            find(fs, true, false, n->state,
                 "%s/%s: the state file of %s was modified after it was attached "
                 "(fingerprint differs): restore it from a backup",
                 s->dir, n->state, who);
        }
    }
    free(now);
    if (st->st_mode & 0222) {
        if (repair && qsnap__chmod_store_file(s, n->state, false) == 0)
            find(fs, true, true, n->state,
                 "%s/%s: the state file of %s was writable; made "
                 "read-only again",
                 s->dir, n->state, who);
        else
            find(fs, true, false, n->state,
                 "%s/%s: the state file of %s is writable (--repair "
                 "makes it read-only)",
                 s->dir, n->state, who);
    }
}

/*
 * The store's own files, by kind (safe.c): the directories, the meta file,
 * the lock, the journal and state files must be what they are (no links, no
 * devices); temporary files (meta.tmp, journal.tmp, meta.log.tmp) are what a killed
 * command left behind and go with --repair (a link there is removed itself).
 * Layer files are checked by verify_layer, the other files of layers/ and
 * state/ by verify_orphans. Returns false when a directory of the store is
 * not one: nothing in it is looked at.
 */
static bool verify_store_files(qsnap_store *s, bool repair, struct findings *fs)
{
    static const char *const fixed[] = {"meta", "lock", "journal", "meta.log"};
    static const char *const tmps[] = {"meta.tmp", "journal.tmp", "meta.log.tmp"};
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
    for (size_t i = 0; i < 4; i++) {
        if (qsnap__check_store_file(s, fixed[i]) == QSNAP_EINTEGRITY)
            find(fs, true, false, fixed[i], "%s", qsnap_error_last()->message);
    }
    /* The tail of a change record an interrupted save left (metalog.c): not committed. */
    if (qsnap__log_torn(s)) {
        if (repair && qsnap__log_cut(s) == 0)
            find(fs, true, true, "meta.log",
                 "%s/meta.log: ends in a change record a crash cut short (not committed); "
                 "removed", s->dir);
        else
            find(fs, true, false, "meta.log",
                 "%s/meta.log: ends in a change record a crash cut short (not committed; "
                 "--repair removes it)", s->dir);
    }
    for (size_t i = 0; i < 3; i++) {
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
        else if ((size_t)st.st_nlink > names)
            verify_state_shared(s, &s->m.nodes[i], repair, fs);
        else
            verify_state_content(s, n, &st, repair, fs);
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

static int verify_store(qsnap_store *s, bool repair, bool no_journal, qsnap_finding **out,
                        size_t *n_out);

/*
 * A repair changes files only after every file it may touch was found free
 * and is held (inuse.c): the files of the pending operation, the current
 * head, and every file a check without repair finds a problem with.
 */
/* Whether layers/ holds a layer file newer than the metadata (newer_than_metadata). */
static bool metadata_older(const qsnap_store *s)
{
    struct dirent *e;
    bool older = false;
    DIR *d;
    int dfd;

    if (qsnap__store_dirfd(s, "layers", &dfd) != 0)
        return false;
    d = fdopendir(dfd);
    if (!d) {
        close(dfd);
        return false;
    }
    while (!older && (e = readdir(d)) != NULL)
        older = newer_than_metadata(s, e->d_name, false);
    closedir(d);
    return older;
}

/*
 * verify --repair over metadata older than layers/ (meta.log removed, an
 * older meta put back) would repair towards that older tree: make writable
 * the heads it knows, which later changes froze under newer layers, and
 * point the VM path at one of them, so that a VM started then writes into
 * the backing file of the newer layers. It checks only, and says why.
 */
static int verify_refused_older(qsnap_store *s, qsnap_finding **out, size_t *n_out)
{
    int rc = verify_store(s, false, false, out, n_out);
    qsnap_finding *f = realloc(*out, (*n_out + 1) * sizeof(*f));
    const char *msg = "--repair refused: the metadata is older than layers/ (the file named "
                      "above is newer than it); repairing towards the older tree would make "
                      "layers that later changes froze writable again; nothing was repaired";

    if (!f)
        return rc;
    *out = f;
    /* Before the last line (what was checked), which sums up. */
    if (*n_out)
        f[*n_out] = f[*n_out - 1];
    f[*n_out ? *n_out - 1 : 0] = (qsnap_finding){true, false, strdup(""), strdup(msg)};
    (*n_out)++;
    return qsnap__err(QSNAP_EINTEGRITY,
                      "put the lost meta.log (or the newer meta) back, or restore the whole "
                      "store from one backup; then 'qsnap verify DISK --repair'",
                      "%s: the metadata is older than its layers: --repair refused", s->disk_abs);
}

int qsnap_verify(qsnap_store *s, bool repair, qsnap_finding **out, size_t *n_out)
{
    struct qsnap__touch *t = NULL;
    qsnap_finding *f = NULL;
    qsnap_plan *jp = NULL;
    size_t nt = 0, nf = 0;
    bool pending = false;
    int rc;

    *out = NULL;
    *n_out = 0;
    /* A handle whose store directory was replaced would check (and repair) the old one. */
    rc = qsnap__store_dirs_recheck(s);
    if (rc)
        return rc;
    if (!repair)
        return verify_store(s, false, false, out, n_out);
    rc = qsnap__journal_pending(s, &pending);
    if (!rc && !pending && metadata_older(s))
        return verify_refused_older(s, out, n_out);
    if (!rc && pending && qsnap__journal_load(s, &jp) != 0)
        jp = NULL; /* a damaged journal: the check below reports it */
    if (!rc)
        rc = qsnap__touched(s, jp, &t, &nt);
    qsnap_plan_free(jp);
    if (!rc) {
        (void)verify_store(s, false, false, &f, &nf);
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
        rc = verify_store(s, true, false, out, n_out);
        s->holding = false;
        qsnap__touch_release(t, nt);
    }
    qsnap__touch_free(t, nt);
    return rc;
}

#define JOURNAL_STUCK                                                                          \
    "nothing in it can be replayed, and the store does not verify without it (%s), so "          \
    "--repair repairs nothing while it is there: restore the store from a backup, or find out "  \
    "what the interrupted operation did, move the journal out of the store and run 'qsnap "      \
    "verify DISK --repair' again"

/*
 * A journal that cannot be parsed (why: the message saying so, which names it).
 * Nothing in it can be replayed, and nothing says what its operation did: the
 * store is judged without it. Without repair that is a finding (its words are
 * settled when the other findings are known: journal_said), and the rest of the
 * check goes on as if there were no journal. With repair, when the store
 * verifies without it (every layer, link, mode and fingerprint as the metadata
 * says, no file the metadata does not name), the operation changed nothing that
 * matters, or was finished by every step but the journal's removal: the journal
 * is set aside as journal.damaged-<time> (kept, for whoever wants to look into
 * it). Otherwise it stays, nothing is repaired (a repair could undo what a
 * person reading the journal could still finish), and the problems are listed.
 * Returns false when the check stops there.
 */
static bool journal_damaged(qsnap_store *s, bool repair, const char *why, struct findings *fs)
{
    qsnap_finding *f = NULL;
    size_t nf = 0;
    char name[128];
    int rc;

    if (!repair) {
        find(fs, true, false, "journal", "%s", why);
        return true;
    }
    rc = verify_store(s, false, true, &f, &nf);
    if (rc == 0) {
        qsnap_verify_free(f, nf);
        if (qsnap__journal_set_aside(s, name, sizeof(name)) == 0) {
            find(fs, true, true, "journal",
                 "%s; the store verifies without it: set aside as %s/%s", why, s->dir, name);
            return true;
        }
        find(fs, true, false, "journal", "%s; it could not be set aside: %s", why,
             qsnap_error_last()->message);
        return false;
    }
    find(fs, true, false, "journal", "%s; " JOURNAL_STUCK, why, "below");
    for (size_t i = 0; i < nf; i++)
        find(fs, f[i].problem, false, f[i].file, "%s", f[i].message);
    if (!nf)
        find(fs, true, false, "", "%s", qsnap_error_last()->message);
    qsnap_verify_free(f, nf);
    return false;
}

/*
 * Verify without repair: the words of the damaged journal's finding (jf), once the
 * other findings are known: --repair sets it aside when there are none, and repairs
 * nothing while there are (so none of them counts as one --repair fixes).
 */
static void journal_said(struct findings *fs, size_t jf)
{
    qsnap_finding *j = &fs->f[jf];
    char *msg = NULL;
    int n;

    if (fs->problems > 1) {
        n = asprintf(&msg, "%s; " JOURNAL_STUCK, j->message, "the other problems");
        fs->fixable = 0;
    } else {
        n = asprintf(&msg, "%s; nothing in it can be replayed, but the store verifies without "
                           "it (--repair sets it aside)",
                     j->message);
        fs->fixable = 1;
    }
    if (n >= 0) {
        free((char *)(uintptr_t)j->message);
        j->message = msg;
    }
}

static int verify_store(qsnap_store *s, bool repair, bool no_journal, qsnap_finding **out,
                        size_t *n_out)
{
    size_t jf = SIZE_MAX; /* the finding of a damaged journal (verify without repair) */
    struct findings fs = {NULL, 0, 0, 0, 0};
    bool pending = false;
    int rc;

    *out = NULL;
    *n_out = 0;
    rc = qsnap__journal_pending(s, &pending);
    if (rc)
        return rc;
    if (pending && s->exists) {
        qsnap_plan *jp = NULL;
        int jrc = no_journal ? QSNAP_EINTEGRITY : qsnap__journal_read(s, &jp);
        char why[1024];
        qsnap_plan_free(jp);
        snprintf(why, sizeof(why), "%s", qsnap_error_last()->message);
        if (jrc == QSNAP_EINTEGRITY && qsnap__check_store_file(s, "journal") == 0) {
            /* A journal (a regular file: verify_store_files names anything else) that
             * cannot be parsed. */
            size_t at = fs.n;
            pending = false;
            if (!no_journal && !journal_damaged(s, repair, why, &fs))
                goto done;
            if (!no_journal && !repair && fs.n > at)
                jf = at;
        }
    }
    if (pending) {
        if (repair) {
            bool did = false;
            /* A VM path re-pointed behind qsnap's back stops the replay: point it first. */
            if (qsnap__vm_path_ok(s, &s->m) == 0)
                (void)qsnap__vm_path_update(s, &s->m);
            rc = qsnap__recover(s, &did);
            if (rc) {
                /* Links re-pointed behind qsnap's back can stop it: put them back, retry. */
                struct findings tmp = {NULL, 0, 0, 0, 0};
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
    verify_disk_chain(s, repair, &fs);
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
    find(&fs, false, false, "", "checked %zu layer%s, %zu snapshot%s and node%s, %zu branch%s",
         s->m.nl, s->m.nl == 1 ? "" : "s", s->m.nn, s->m.nn == 1 ? "" : "s",
         s->m.nn == 1 ? "" : "s", s->m.nb, s->m.nb == 1 ? "" : "es");
done:
    if (jf < fs.n)
        journal_said(&fs, jf);
    *out = fs.f;
    *n_out = fs.n;
    if (fs.problems)
        return qsnap__err(QSNAP_EINTEGRITY,
                          repair        ? "see the messages above"
                          : fs.fixable  ? "'qsnap verify DISK --repair' fixes what it can"
                                        : "--repair fixes none of these: see the messages above",
                          "%s: %zu problem%s found", s->disk_abs, fs.problems,
                          fs.problems == 1 ? "" : "s");
    return 0;
}
