/*
 * Opening store files without following links.
 *
 * A store may be writable by someone other than the user who runs qsnap
 * (root working on a user's disk, say). Whoever can write to the store's
 * directories can put a symbolic link, a FIFO or a device where a store file
 * should be; a program that opened store files by name would then read,
 * write, chmod or truncate whatever the link points at. So every store file
 * (the meta file, the journal, the lock file, layers, state files, and the
 * temporary files beside them) is opened here, relative to the store's
 * directory opened with O_NOFOLLOW, with O_NOFOLLOW on the file itself, and
 * accepted only when it is a regular file. New files are created with O_EXCL.
 * A link or another kind of file where a store file should be is an
 * integrity problem (QSNAP_EINTEGRITY) that names the file: nothing is ever
 * read or written through it; `verify` lists every one.
 *
 * The disk is the user's own file, outside the store: the path the user
 * gives is resolved once (realpath) when the store is opened, the store is
 * the directory beside the file it resolves to, and the metadata names that
 * file. Layers reach it through their backing links by that name.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "qcow2/sys/io.h"
#include "qsnap_int.h"

static int nomem(void)
{
    return qsnap__err(QSNAP_ERROR, NULL, "out of memory");
}

/* Note a refused open (the store's own record: libqcow2 only passes an errno up). */
static void note_refusal(const qsnap_store *s, const char *path, int e)
{
    if (!s->refusal)
        return;
    snprintf(s->refusal->path, sizeof(s->refusal->path), "%s", path);
    s->refusal->err = e;
}

int qsnap__unsafe_err(const char *path, int e)
{
    const char *what = e == ELOOP     ? "is a symbolic link"
                       : e == ENOTDIR ? "is not a directory"
                       : e == EMLINK  ? "is a file with more than one hard link"
                                      : "is not a regular file";
    return qsnap__err(QSNAP_EINTEGRITY,
                      "a store file must be a regular file of the store; qsnap never opens it "
                      "through a link: remove it and restore the file from a backup "
                      "('qsnap verify DISK' lists them)",
                      "%s: %s where a store file should be", path, what);
}

static int open_sub(const qsnap_store *s, int dfd, const char *sub, int *out);
static void layers_touch(const qsnap_store *s, const char *dir, int dfd, bool after);

/* A copy of descriptor fd (of the store's directory dir) for a caller to close. */
static int dup_dir(const qsnap_store *s, int fd, int *out)
{
    *out = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (*out < 0)
        return qsnap__err(QSNAP_ERROR, NULL, "%s: %s", s->dir, strerror(errno));
    return 0;
}

static int store_dir(const qsnap_store *s, const char *sub, bool borrow, int *out);

/*
 * Open the store directory (and a subdirectory of it: "" for none) without
 * following links. The store directory is opened once per handle and kept
 * (s->dir_fd), and each later open is relative to the directory the first one
 * found; layers/ and state/ are kept too for qsnap__store_dir_get, which an
 * operation calls tens of times (a create at any size opened layers/ 26 times).
 */
int qsnap__store_dirfd(const qsnap_store *s, const char *sub, int *out)
{
    return store_dir(s, sub, false, out);
}

int qsnap__store_dir_get(const qsnap_store *s, const char *sub, int *out)
{
    return store_dir(s, sub, true, out);
}

void qsnap__store_dir_put(const qsnap_store *s, int fd)
{
    if (fd < 0)
        return;
    for (int i = 0; s->dir_fd && i < QSNAP__DIR_FDS; i++) {
        if (s->dir_fd[i] == fd)
            return;
    }
    close(fd);
}

/*
 * Where an operation starts (the store's scans, qsnap__check_writable_store), so
 * that a handle kept across operations never works in a directory the store no
 * longer uses: a kept layers/ or state/ that is no longer the one its name finds
 * in the store directory (replaced while the handle was open: moved away,
 * restored from a copy) is forgotten, and the next use opens it again; a store
 * directory that its name no longer finds is an error, since the lock this
 * handle holds is in the old one (another qsnap may be working in the new one).
 */
int qsnap__store_dirs_recheck(const qsnap_store *s)
{
    static const char *const sub[QSNAP__DIR_FDS] = {NULL, "layers", "state"};
    struct stat kept, now;

    if (!s->dir_fd || s->dir_fd[0] < 0)
        return 0;
    if (fstat(s->dir_fd[0], &kept) < 0 || lstat(s->dir, &now) < 0 ||
        kept.st_dev != now.st_dev || kept.st_ino != now.st_ino)
        return qsnap__err(QSNAP_ERROR, "open the store again",
                          "%s: the store directory was moved, replaced or removed while it "
                          "was open",
                          s->dir);
    for (int i = 1; i < QSNAP__DIR_FDS; i++) {
        if (s->dir_fd[i] < 0)
            continue;
        if (fstat(s->dir_fd[i], &kept) == 0 &&
            fstatat(s->dir_fd[0], sub[i], &now, AT_SYMLINK_NOFOLLOW) == 0 &&
            kept.st_dev == now.st_dev && kept.st_ino == now.st_ino)
            continue;
        close(s->dir_fd[i]);
        s->dir_fd[i] = -1;
    }
    return 0;
}

/* Which of s->dir_fd keeps directory sub (-1: none). */
static int kept_slot(const char *sub)
{
    if (!sub || !sub[0])
        return 0;
    return !strcmp(sub, "layers") ? 1 : !strcmp(sub, "state") ? 2 : -1;
}

/* qsnap__store_dirfd, or with borrow the kept descriptor itself where there is one. */
static int store_dir(const qsnap_store *s, const char *sub, bool borrow, int *out)
{
    int dfd, fd = -1;

    *out = -1;
    if (s->dir_fd && s->dir_fd[0] >= 0) {
        int slot = kept_slot(sub);
        /* A caller's own descriptor of a subdirectory is opened afresh: a copy of a kept
         * one would share its position, and a listing (fdopendir) would start where the
         * last one ended. */
        if (slot < 0 || (slot > 0 && !borrow))
            return open_sub(s, s->dir_fd[0], sub, out);
        if (s->dir_fd[slot] < 0) {
            int rc = open_sub(s, s->dir_fd[0], sub, &fd);
            if (rc)
                return rc;
            s->dir_fd[slot] = fd;
        }
        if (borrow) {
            *out = s->dir_fd[slot];
            return 0;
        }
        return dup_dir(s, s->dir_fd[slot], out);
    }
    dfd = open(s->dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0) {
        int e = errno;
        struct stat st;
        if (e == ENOTDIR && lstat(s->dir, &st) == 0 && S_ISLNK(st.st_mode))
            e = ELOOP;
        if (e == ELOOP || e == ENOTDIR) {
            note_refusal(s, s->dir, e);
            return qsnap__unsafe_err(s->dir, e);
        }
        return qsnap__err(e == ENOENT ? QSNAP_ENOTFOUND : QSNAP_ERROR, NULL,
                          "%s: cannot open the store: %s", s->dir, strerror(e));
    }
    if (s->dir_fd) {
        s->dir_fd[0] = dfd;
        return store_dir(s, sub, borrow, out);
    }
    if (!sub || !sub[0]) {
        *out = dfd;
        return 0;
    }
    fd = open_sub(s, dfd, sub, out);
    close(dfd);
    return fd;
}

/* Subdirectory sub of the store directory dfd, without following links, into *out. */
static int open_sub(const qsnap_store *s, int dfd, const char *sub, int *out)
{
    int fd = openat(dfd, sub, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

    if (fd < 0) {
        int e = errno;
        if (e == ELOOP || e == ENOTDIR) {
            char path[PATH_MAX];
            struct stat st;
            snprintf(path, sizeof(path), "%s/%s", s->dir, sub);
            if (e == ENOTDIR && lstat(path, &st) == 0 && S_ISLNK(st.st_mode))
                e = ELOOP;
            note_refusal(s, path, e);
            return qsnap__unsafe_err(path, e);
        }
        return qsnap__err(e == ENOENT ? QSNAP_ENOTFOUND : QSNAP_ERROR, NULL,
                          "%s/%s: cannot open: %s", s->dir, sub, strerror(e));
    }
    *out = fd;
    return 0;
}

/*
 * Files and directories the store makes belong to the disk's owner (root
 * running qsnap for a user's disk must not leave a store that user cannot
 * change); their modes come from the umask. Best effort: without the right
 * to chown, the file stays the caller's. Never through a link: the file is
 * named from its directory, opened without following links.
 */
void qsnap__own_at(const qsnap_store *s, int dfd, const char *name)
{
    struct stat st;

    if (geteuid() == 0 && s->disk_abs && stat(s->disk_abs, &st) == 0 &&
        fchownat(dfd, name, st.st_uid, st.st_gid, AT_SYMLINK_NOFOLLOW) < 0) {
        /* Nothing to do: the file keeps its owner. */
    }
}

static int split_rel(const char *rel, char *dir, size_t dir_size, const char **base);
static int64_t ts_ns(struct timespec t);

void qsnap__own(const qsnap_store *s, const char *path)
{
    size_t dl = strlen(s->dir);
    char dir[64];
    const char *base;
    int dfd;

    if (geteuid() != 0 || strncmp(path, s->dir, dl) != 0)
        return;
    if (!path[dl]) {
        /* The store directory itself. */
        struct stat st;
        dfd = open(s->dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (dfd >= 0 && stat(s->disk_abs, &st) == 0 && fchown(dfd, st.st_uid, st.st_gid) < 0) {
            /* Nothing to do: it keeps its owner. */
        }
        if (dfd >= 0)
            close(dfd);
        return;
    }
    if (path[dl] != '/' || split_rel(path + dl + 1, dir, sizeof(dir), &base) < 0 ||
        qsnap__store_dir_get(s, dir, &dfd) != 0)
        return;
    qsnap__own_at(s, dfd, base);
    qsnap__store_dir_put(s, dfd);
}

/* Split a store-relative path "DIR/NAME" or "NAME" into its directory and base name. */
static int split_rel(const char *rel, char *dir, size_t dir_size, const char **base)
{
    const char *slash = strrchr(rel, '/');

    if (!slash) {
        dir[0] = '\0';
        *base = rel;
        return 0;
    }
    if ((size_t)(slash - rel) >= dir_size || memchr(rel, '/', (size_t)(slash - rel)) ||
        !slash[1] || !strncmp(rel, "..", 2))
        return -EINVAL;
    memcpy(dir, rel, (size_t)(slash - rel));
    dir[slash - rel] = '\0';
    *base = slash + 1;
    return 0;
}

/*
 * Open the disk by the name it resolved to when the store was opened, and
 * only if it is still that file (same device and inode): a name re-pointed
 * meanwhile (a link put there, a rename) is never opened. -errno on failure,
 * -EXDEV when the name now leads to another file.
 */
int qsnap__open_disk(const qsnap_store *s, int oflags)
{
    struct stat st;
    int fd;

    do {
        fd = open(s->disk_abs, oflags | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0)
        return errno == ELOOP ? -EXDEV : -errno;
    if (fstat(fd, &st) < 0 || st.st_dev != s->disk_dev || st.st_ino != s->disk_ino ||
        !(S_ISREG(st.st_mode) || S_ISBLK(st.st_mode))) {
        close(fd);
        return -EXDEV;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    return fd;
}

static int disk_changed(const qsnap_store *s)
{
    return qsnap__err(QSNAP_EINTEGRITY, "run the command again; 'qsnap verify DISK' checks the store",
                      "%s: the disk's name now leads to another file than when the command "
                      "started",
                      s->disk_abs);
}

int qsnap__open_store_file(const qsnap_store *s, const char *rel, int oflags, int *fd_out)
{
    char dir[64], path[PATH_MAX];
    const char *base;
    struct stat st;
    int dfd, fd, rc;

    *fd_out = -1;
    if (!strncmp(rel, "../", 3)) {
        /* The disk: the user's own file (or block device), by its resolved name. */
        char *disk = qsnap__path(s, rel);
        if (!disk)
            return nomem();
        fd = qsnap__open_disk(s, oflags);
        if (fd < 0) {
            int e = -fd;
            rc = e == EXDEV ? disk_changed(s)
                            : qsnap__err(e == ENOENT ? QSNAP_ENOTFOUND : QSNAP_ERROR, NULL,
                                         "%s: cannot open: %s", disk, strerror(e));
            free(disk);
            errno = e;
            return rc;
        }
        free(disk);
        *fd_out = fd;
        return 0;
    }
    snprintf(path, sizeof(path), "%s/%s", s->dir, rel);
    if (split_rel(rel, dir, sizeof(dir), &base) < 0)
        return qsnap__err(QSNAP_ERROR, NULL, "%s: not a store file", path);
    rc = qsnap__store_dir_get(s, dir, &dfd);
    if (rc)
        return rc;
    do {
        fd = openat(dfd, base, oflags | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, 0666);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        int e = errno;
        qsnap__store_dir_put(s, dfd);
        if (e == ELOOP) {
            note_refusal(s, path, e);
            return qsnap__unsafe_err(path, e);
        }
        errno = e;
        return qsnap__err(e == ENOENT ? QSNAP_ENOTFOUND : QSNAP_ERROR, NULL, "%s: cannot open: %s", path, strerror(e));
    }
    qsnap__store_dir_put(s, dfd);
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        note_refusal(s, path, ENODEV);
        return qsnap__unsafe_err(path, ENODEV);
    }
    /* O_NONBLOCK means nothing to a regular file; cleared all the same. */
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    *fd_out = fd;
    return 0;
}

int qsnap__lstat_store_file(const qsnap_store *s, const char *rel, struct stat *st)
{
    char dir[64];
    const char *base;
    int dfd, rc;

    if (!strncmp(rel, "../", 3)) {
        /* The disk (see the top of this file): followed, as the user named it. */
        char *disk = qsnap__path(s, rel);
        int e;
        if (!disk)
            return nomem();
        rc = stat(disk, st);
        e = errno;
        free(disk);
        return rc < 0 ? qsnap__err(e == ENOENT ? QSNAP_ENOTFOUND : QSNAP_ERROR, NULL, "%s/%s: %s",
                                   s->dir, rel, strerror(e))
                      : 0;
    }

    if (split_rel(rel, dir, sizeof(dir), &base) < 0)
        return qsnap__err(QSNAP_ERROR, NULL, "%s/%s: not a store file", s->dir, rel);
    rc = qsnap__store_dir_get(s, dir, &dfd);
    if (rc)
        return rc;
    rc = fstatat(dfd, base, st, AT_SYMLINK_NOFOLLOW);
    if (rc < 0) {
        int e = errno;
        qsnap__store_dir_put(s, dfd);
        return qsnap__err(e == ENOENT ? QSNAP_ENOTFOUND : QSNAP_ERROR, NULL, "%s/%s: %s", s->dir,
                          rel, strerror(e));
    }
    qsnap__store_dir_put(s, dfd);
    return 0;
}

int qsnap__check_store_file(const qsnap_store *s, const char *rel)
{
    struct stat st;
    int rc = qsnap__lstat_store_file(s, rel, &st);

    if (rc)
        return rc;
    if (!S_ISREG(st.st_mode) && !(S_ISBLK(st.st_mode) && !strncmp(rel, "../", 3))) {
        char path[PATH_MAX];
        int e = S_ISLNK(st.st_mode) ? ELOOP : ENODEV;
        snprintf(path, sizeof(path), "%s/%s", s->dir, rel);
        note_refusal(s, path, e);
        return qsnap__unsafe_err(path, e);
    }
    return 0;
}

int qsnap__clear_tmp(const qsnap_store *s, const char *rel)
{
    struct stat st;
    char dir[64];
    const char *base;
    int dfd, rc;

    rc = qsnap__lstat_store_file(s, rel, &st);
    if (rc == QSNAP_ENOTFOUND)
        return 0;
    if (rc)
        return rc;
    if (!S_ISREG(st.st_mode))
        return qsnap__check_store_file(s, rel);
    if (split_rel(rel, dir, sizeof(dir), &base) < 0 || qsnap__store_dir_get(s, dir, &dfd) != 0)
        return qsnap__err(QSNAP_ERROR, NULL, "%s/%s: cannot remove", s->dir, rel);
    layers_touch(s, dir, dfd, false);
    rc = unlinkat(dfd, base, 0) < 0 && errno != ENOENT
             ? qsnap__err(QSNAP_ERROR, NULL, "%s/%s: cannot remove: %s", s->dir, rel,
                          strerror(errno))
             : 0;
    layers_touch(s, dir, dfd, true);
    qsnap__store_dir_put(s, dfd);
    return rc;
}

int qsnap__chmod_store_file(const qsnap_store *s, const char *rel, bool writable)
{
    struct stat st;
    int fd, rc;

    rc = qsnap__open_store_file(s, rel, O_RDONLY, &fd);
    if (rc)
        return rc;
    /* A layer with a second name could be any file of the system: its mode stays. */
    if (!strncmp(rel, "layers/", 7) && fstat(fd, &st) == 0 && st.st_nlink > 1) {
        char path[PATH_MAX];
        close(fd);
        snprintf(path, sizeof(path), "%s/%s", s->dir, rel);
        note_refusal(s, path, EMLINK);
        return qsnap__unsafe_err(path, EMLINK);
    }
    /* The new mode is made durable before the step is done: the journal that would
     * redo it goes once the operation's steps are (a file system need not write one
     * file's inode change with another's sync). Synced even when the mode is already
     * the one asked for: a run killed between its fchmod and its fsync left it so,
     * in the page cache only, and the replay of its journal finds it so. */
    bool done = fstat(fd, &st) == 0;
    if (done) {
        mode_t mode = writable ? (st.st_mode | 0200) : (st.st_mode & ~(mode_t)0222);
        done = mode == st.st_mode || fchmod(fd, mode) == 0;
    }
    if (!done || fsync(fd) < 0)
        rc = qsnap__err(QSNAP_ERROR, NULL, "%s/%s: chmod failed: %s", s->dir, rel,
                        strerror(errno));
    close(fd);
    return rc;
}

/*
 * The store-relative name of an absolute path libqcow2 made (a layer's
 * directory joined with a backing name: "/S/layers/../../disk" or
 * "/S/layers/3.qcow2"), resolved lexically; NULL when it is outside the store.
 * *is_disk: it is the disk.
 */
static const char *store_rel(const qsnap_store *s, const char *path, char *buf, size_t size,
                             bool *is_disk)
{
    size_t n = 0, dl = strlen(s->dir);
    const char *p = path;

    *is_disk = false;
    buf[0] = '\0';
    if (path[0] != '/' || strlen(path) >= size)
        return NULL;
    /* Lexical normalisation: drop "." and empty parts, apply "..". */
    buf[0] = '\0';
    while (*p) {
        const char *e;
        size_t len;
        while (*p == '/')
            p++;
        e = strchr(p, '/');
        len = e ? (size_t)(e - p) : strlen(p);
        if (len == 0)
            break;
        if (len == 1 && p[0] == '.') {
            /* nothing */
        } else if (len == 2 && p[0] == '.' && p[1] == '.') {
            char *slash = n ? memrchr(buf, '/', n) : NULL;
            n = slash ? (size_t)(slash - buf) : 0;
            buf[n] = '\0';
        } else {
            buf[n++] = '/';
            memcpy(buf + n, p, len);
            n += len;
            buf[n] = '\0';
        }
        p += len;
    }
    if (s->disk_abs && !strcmp(buf, s->disk_abs)) {
        *is_disk = true;
        return NULL;
    }
    if (strncmp(buf, s->dir, dl) != 0 || buf[dl] != '/')
        return NULL;
    return buf + dl + 1;
}

/*
 * Whether normalised path norm is a file of the disk's own backing chain
 * (what the disk's header named before it had a store: the user's files).
 * The chain is read once, by the disk's resolved name, in the format the
 * metadata records for it (before the first snapshot: as the first create
 * finds it).
 */
static bool in_disk_chain(const qsnap_store *s, const char *norm)
{
    struct qsnap__chain *c = s->chain;

    if (!c)
        return false;
    if (!c->known) {
        const struct qsnap__layer *d = NULL;
        qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
        qcow2_image *img = NULL;
        c->known = true;
        for (size_t i = 0; i < s->m.nl && !d; i++)
            if (s->m.layers[i].is_disk)
                d = &s->m.layers[i];
        /* Before the first snapshot the disk's format is what the first create probes. */
        if (d && d->fmt != QCOW2_FORMAT_QCOW2)
            return false;
        oo.flags = QCOW2_OPEN_NO_LOCK;
        if (d)
            oo.format = QCOW2_FORMAT_QCOW2;
        if (qcow2_image_open(&img, s->disk_abs, &oo) != 0)
            return false;
        for (qcow2_image *b = qcow2_image_backing(img); b; b = qcow2_image_backing(b)) {
            char nb[PATH_MAX];
            bool dummy;
            char **v = realloc(c->path, (c->n + 1) * sizeof(*v));
            if (!v)
                break;
            c->path = v;
            (void)store_rel(s, qcow2_image_filename(b), nb, sizeof(nb), &dummy);
            if (!nb[0] || !(c->path[c->n] = strdup(nb)))
                break;
            c->n++;
        }
        qcow2_image_close(img);
    }
    for (size_t i = 0; i < c->n; i++)
        if (!strcmp(c->path[i], norm))
            return true;
    return false;
}

const struct qsnap__chain *qsnap__disk_chain(const qsnap_store *s)
{
    (void)in_disk_chain(s, "");
    return s->chain;
}

int qsnap__fingerprint_file(const char *path, struct qsnap__fprec *r)
{
    char proc[64];
    struct stat st;
    int fd, rc;

    memset(r, 0, sizeof(*r));
    do {
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0 || fstat(fd, &st) < 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        return qsnap__err(e == ENOENT ? QSNAP_ENOTFOUND : QSNAP_ERROR, NULL, "%s: %s", path,
                          strerror(e));
    }
    /* The file this descriptor holds, by a name no link can redirect. */
    snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
    rc = qcow2_file_fingerprint(proc, r->fp);
    if (rc)
        rc = qsnap__from_qcow2(rc, NULL);
    r->size = (uint64_t)st.st_size;
    r->mtime_ns = ts_ns(st.st_mtim);
    close(fd);
    return rc;
}

int qsnap__disk_chain_record(const qsnap_store *s, char **out)
{
    const struct qsnap__chain *c = qsnap__disk_chain(s);
    char *all = NULL;
    size_t len = 0;
    int rc = 0;

    *out = NULL;
    for (size_t i = 0; c && !rc && i < c->n; i++) {
        struct qsnap__fprec r;
        char *rec, *more;
        /* A name with a newline would split its record: such a chain is not recorded. */
        if (strchr(c->path[i], '\n')) {
            free(all);
            return 0;
        }
        rc = qsnap__fingerprint_file(c->path[i], &r);
        rec = rc ? NULL : qsnap__fprec_format(&r, c->path[i]);
        if (!rc && !rec)
            rc = nomem();
        if (rc)
            break;
        more = realloc(all, len + strlen(rec) + 2);
        if (!more) {
            free(rec);
            rc = nomem();
            break;
        }
        all = more;
        len += (size_t)sprintf(all + len, "%s%s", len ? "\n" : "", rec);
        free(rec);
    }
    if (rc)
        free(all);
    else
        *out = all;
    return rc;
}

/*
 * libqcow2's open function for every image qsnap opens or creates in a store
 * (payload: the store). The path libqcow2 hands over (a layer's directory
 * joined with a backing name) is never given to the kernel as it is: it is
 * normalised lexically and must then be either
 *   - a file of layers/: opened from that directory (opened without
 *     following links) without following a link, a regular file with one
 *     hard link only (a second name could be any file of the system); or
 *   - the disk: opened by its resolved name and only when it is still the
 *     file it was when the store was opened (open_disk).
 *   - a file of the backing chain the disk itself had before it had a store
 *     (in_disk_chain): the user's own files, opened read-only only.
 * Anything else, in the store or outside it, is refused (EXDEV): the store's
 * layers back onto each other and onto the disk only, and a backing name
 * edited in a user-writable head must not lead a root qsnap anywhere.
 * Existing files are reopened through /proc/self/fd of the descriptor that
 * was checked, so what is checked is what is opened.
 */
int qsnap__io_open(qcow2_io **out, const char *path, unsigned flags, void *payload)
{
    const qsnap_store *s = payload;
    char buf[PATH_MAX], dir[64], proc[64];
    const char *rel, *base;
    struct stat st;
    bool is_disk;
    int dfd, fd, rc;

    *out = NULL;
    rel = store_rel(s, path, buf, sizeof(buf), &is_disk);
    if (is_disk) {
        if (flags & QCOW2_IO_CREATE) {
            note_refusal(s, path, EXDEV);
            return -EXDEV;
        }
        fd = qsnap__open_disk(s, (flags & QCOW2_IO_RDWR) ? O_RDWR : O_RDONLY);
        if (fd == -EXDEV)
            note_refusal(s, s->disk_abs, ESTALE);
        if (fd < 0)
            return fd;
        snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
        rc = qcow2_io_posix_open(out, proc, flags & ~(unsigned)QCOW2_IO_NOFOLLOW);
        close(fd);
        return rc;
    }
    if (!rel && buf[0] == '/' && !(flags & (QCOW2_IO_RDWR | QCOW2_IO_CREATE)) &&
        in_disk_chain(s, buf)) {
        /* The disk's own chain: the user's files, read only, by their normalised names. */
        return qcow2_io_posix_open(out, buf, flags & ~(unsigned)QCOW2_IO_NOFOLLOW);
    }
    if (!rel || split_rel(rel, dir, sizeof(dir), &base) < 0 || strcmp(dir, "layers") != 0) {
        note_refusal(s, path, EXDEV);
        return -EXDEV;
    }
    if (qsnap__store_dir_get(s, "layers", &dfd) != 0) {
        int e = s->refusal && s->refusal->err ? s->refusal->err : ENOENT;
        return -e;
    }
    if (flags & QCOW2_IO_CREATE) {
        /* A new file (O_EXCL): nothing else can be behind its name. */
        layers_touch(s, "layers", dfd, false);
        rc = qcow2_io_posix_openat(out, dfd, base, flags | QCOW2_IO_NOFOLLOW);
        layers_touch(s, "layers", dfd, true);
        qsnap__store_dir_put(s, dfd);
        if (rc == -ELOOP || rc == -ENODEV)
            note_refusal(s, path, -rc);
        return rc;
    }
    do {
        fd = openat(dfd, base,
                    ((flags & QCOW2_IO_RDWR) ? O_RDWR : O_RDONLY) | O_NOFOLLOW | O_NONBLOCK |
                        O_CLOEXEC | O_NOCTTY);
    } while (fd < 0 && errno == EINTR);
    rc = fd < 0 ? -errno : 0;
    qsnap__store_dir_put(s, dfd);
    if (rc == -ELOOP) {
        note_refusal(s, path, ELOOP);
        return rc;
    }
    if (rc == -ENXIO || rc == -ENODEV) {
        note_refusal(s, path, ENODEV);
        return -ENODEV;
    }
    if (rc)
        return rc;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_nlink > 1) {
        rc = S_ISREG(st.st_mode) ? EMLINK : ENODEV;
        close(fd);
        note_refusal(s, path, rc);
        return -rc;
    }
    snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
    rc = qcow2_io_posix_open(out, proc, flags & ~(unsigned)QCOW2_IO_NOFOLLOW);
    close(fd);
    return rc;
}

/* After libqcow2 failed with rc: the refusal qsnap__io_open noted, or rc mapped. */
static int open_failed(const qsnap_store *s, int rc, const char *hint)
{
    if (s->refusal && s->refusal->err) {
        int e = s->refusal->err;
        s->refusal->err = 0;
        if (e == ESTALE)
            return disk_changed(s);
        if (e == EXDEV)
            return qsnap__err(QSNAP_EINTEGRITY, "'qsnap verify DISK' checks the links",
                              "%s: not a file of the store or its disk (a backing link leads "
                              "outside the store)",
                              s->refusal->path);
        return qsnap__unsafe_err(s->refusal->path, e);
    }
    return qsnap__from_qcow2(rc, hint);
}

int qsnap__image_open(const qsnap_store *s, const char *path, qcow2_open_opts *oo,
                      qcow2_image **out, const char *hint)
{
    int rc;

    oo->open_fn = qsnap__io_open;
    oo->open_payload = (void *)(uintptr_t)s;
    if (s->refusal)
        s->refusal->err = 0;
    rc = qcow2_image_open(out, path, oo);
    return rc ? open_failed(s, rc, hint) : 0;
}

int qsnap__image_create(const qsnap_store *s, const char *path, qcow2_create_opts *co)
{
    int rc;

    co->open_fn = qsnap__io_open;
    co->open_payload = (void *)(uintptr_t)s;
    if (s->refusal)
        s->refusal->err = 0;
    rc = qcow2_image_create(path, co);
    return rc ? open_failed(s, rc, NULL) : 0;
}

int qsnap__fingerprint_store_file(const qsnap_store *s, const char *rel, uint64_t from,
                                  uint8_t all[16], uint8_t tail[16], struct stat *st)
{
    char proc[64];
    int fd, rc;

    rc = qsnap__open_store_file(s, rel, O_RDONLY, &fd);
    if (rc)
        return rc;
    /* The file this descriptor holds, by a name no link can redirect. */
    snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
    rc = tail ? qcow2_file_fingerprints(proc, from, all, tail) : qcow2_file_fingerprint(proc, all);
    if (rc)
        rc = qsnap__from_qcow2(rc, NULL);
    else if (st && fstat(fd, st) < 0)
        rc = qsnap__err(QSNAP_ERROR, NULL, "%s/%s: %s", s->dir, rel, strerror(errno));
    close(fd);
    return rc;
}

/* unlinkat from the file's store directory: a link is removed itself; a missing file is fine. */
int qsnap__unlink_store_file(const qsnap_store *s, const char *rel)
{
    char dir[64];
    const char *base;
    int dfd, rc;

    if (split_rel(rel, dir, sizeof(dir), &base) < 0)
        return qsnap__err(QSNAP_ERROR, NULL, "%s/%s: not a store file", s->dir, rel);
    rc = qsnap__store_dir_get(s, dir, &dfd);
    if (rc)
        return rc == QSNAP_ENOTFOUND ? 0 : rc;
    layers_touch(s, dir, dfd, false);
    rc = unlinkat(dfd, base, 0) < 0 && errno != ENOENT
             ? qsnap__err(QSNAP_ERROR, NULL, "%s/%s: cannot remove: %s", s->dir, rel,
                          strerror(errno))
             : 0;
    layers_touch(s, dir, dfd, true);
    qsnap__store_dir_put(s, dfd);
    return rc;
}

/* renameat within one store directory, then fsync that directory. */
int qsnap__rename_store_file(const qsnap_store *s, const char *from_rel, const char *to_rel)
{
    char dir[64], dir2[64];
    const char *base, *base2;
    int dfd, rc;

    if (split_rel(from_rel, dir, sizeof(dir), &base) < 0 ||
        split_rel(to_rel, dir2, sizeof(dir2), &base2) < 0 || strcmp(dir, dir2) != 0)
        return qsnap__err(QSNAP_ERROR, NULL, "%s/%s: not a store file", s->dir, to_rel);
    rc = qsnap__store_dir_get(s, dir, &dfd);
    if (rc)
        return rc;
    layers_touch(s, dir, dfd, false);
    if (renameat(dfd, base, dfd, base2) < 0)
        rc = qsnap__err(QSNAP_ERROR, NULL, "%s/%s: rename failed: %s", s->dir, to_rel,
                        strerror(errno));
    layers_touch(s, dir, dfd, true);
    if (!rc && fsync(dfd) < 0 && errno != EINVAL)
        rc = qsnap__err(QSNAP_ERROR, NULL, "%s/%s: fsync failed: %s", s->dir, dir,
                        strerror(errno));
    qsnap__store_dir_put(s, dfd);
    return rc;
}

/*
 * Copy from in to out (a new, empty file) up to in's end: its blocks shared
 * where the file system can (FICLONE: nothing is copied), else copied in the
 * kernel (copy_file_range), else read and written. -errno on failure.
 */
static int copy_data(int in, int out)
{
    const size_t chunk = 4u << 20;
    bool kernel = true;
    uint64_t done = 0;
    char *buf = NULL;

    if (ioctl(out, FICLONE, in) == 0)
        return 0;
    for (;;) {
        ssize_t n;
        if (kernel) {
            loff_t oi = (loff_t)done, oo = (loff_t)done;
            n = copy_file_range(in, &oi, out, &oo, 1u << 30, 0);
            /* Not between these files (another file system, an old kernel): the plain way. */
            if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EOPNOTSUPP ||
                          errno == EINVAL || errno == EBADF)) {
                kernel = false;
                continue;
            }
        } else {
            ssize_t w = 0;
            if (!buf && !(buf = malloc(chunk)))
                return -ENOMEM;
            n = pread(in, buf, chunk, (off_t)done);
            for (ssize_t k = 0; n > 0 && k < n; k += w) {
                w = pwrite(out, buf + k, (size_t)(n - k), (off_t)(done + (uint64_t)k));
                if (w < 0 && errno == EINTR)
                    w = 0;
                else if (w <= 0) {
                    n = w < 0 ? -1 : (errno = EIO, -1);
                    break;
                }
            }
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int e = n < 0 ? errno : 0;
            free(buf);
            return -e;
        }
        done += (uint64_t)n;
    }
}

int qsnap__copy_into_store(const qsnap_store *s, const char *src, const char *rel)
{
    char dir[64], tmp[NAME_MAX + 1];
    const char *base;
    struct stat st;
    int in = -1, out = -1, dfd = -1, rc = 0, e;

    if (split_rel(rel, dir, sizeof(dir), &base) < 0 ||
        (size_t)snprintf(tmp, sizeof(tmp), ".tmp-%s", base) >= sizeof(tmp))
        return qsnap__err(QSNAP_ERROR, NULL, "%s/%s: not a store file", s->dir, rel);
    do {
        in = open(src, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    } while (in < 0 && errno == EINTR);
    if (in < 0 || fstat(in, &st) < 0 || !S_ISREG(st.st_mode)) {
        e = in < 0 ? errno : ENODEV;
        if (in >= 0)
            close(in);
        return qsnap__err(e == ENOENT ? QSNAP_ENOTFOUND : QSNAP_ERROR,
                          "give the path of an existing regular file",
                          "%s: cannot read the state file: %s", src,
                          e == ENODEV ? "not a regular file" : strerror(e));
    }
    fcntl(in, F_SETFL, fcntl(in, F_GETFL) & ~O_NONBLOCK);
    /* A leftover of a killed run goes first (a link there is refused). */
    {
        char trel[sizeof(dir) + sizeof(tmp) + 1];
        snprintf(trel, sizeof(trel), "%s/%s", dir, tmp);
        rc = qsnap__clear_tmp(s, trel);
    }
    if (!rc)
        rc = qsnap__store_dir_get(s, dir, &dfd);
    if (rc) {
        close(in);
        return rc;
    }
    out = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (out < 0) {
        rc = qsnap__err(QSNAP_ERROR, NULL, "%s/%s/%s: cannot create: %s", s->dir, dir, tmp,
                        strerror(errno));
        goto out;
    }
    qsnap__own_at(s, dfd, tmp);
    e = -copy_data(in, out);
    if (e)
        rc = qsnap__err(QSNAP_ERROR, e == ENOSPC ? "make room on the store's file system" : NULL,
                        "%s: cannot copy it into the store: %s", src, strerror(e));
    /* Read-only, durable, then under its name: a final name is always a whole copy. */
    if (!rc && (fchmod(out, 0444) < 0 || fsync(out) < 0))
        rc = qsnap__err(QSNAP_ERROR, NULL, "%s/%s/%s: %s", s->dir, dir, tmp, strerror(errno));
    if (!rc && renameat(dfd, tmp, dfd, base) < 0)
        rc = qsnap__err(QSNAP_ERROR, NULL, "%s/%s: rename: %s", s->dir, rel, strerror(errno));
    if (!rc && fsync(dfd) < 0 && errno != EINVAL)
        rc = qsnap__err(QSNAP_ERROR, NULL, "%s/%s: fsync failed: %s", s->dir, dir,
                        strerror(errno));
    if (rc && out >= 0)
        (void)unlinkat(dfd, tmp, 0); /* made with O_EXCL: ours */
out:
    if (out >= 0)
        close(out);
    close(in);
    qsnap__store_dir_put(s, dfd);
    return rc;
}

static int64_t ts_ns(struct timespec t)
{
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* The mark of directory sub (layers/ or state/), or NULL. */
static struct qsnap__scan_mark *mark_of(const qsnap_store *s, const char *sub)
{
    return s->marks ? &s->marks[strcmp(sub, "layers") ? 1 : 0] : NULL;
}

/* The mark says directory st: its device, inode and change time. */
static void mark_dir(struct qsnap__scan_mark *mk, const struct stat *st)
{
    mk->dev = st->st_dev;
    mk->ino = st->st_ino;
    mk->ctime_ns = ts_ns(st->st_ctim);
}

/* Whether st is the directory the mark says, unchanged. */
static bool mark_same(const struct qsnap__scan_mark *mk, const struct stat *st)
{
    return st->st_dev == mk->dev && st->st_ino == mk->ino && ts_ns(st->st_ctim) == mk->ctime_ns;
}

/*
 * Before a walk: the directory as it is (st) and the time now. After a clean
 * walk, the mark says whether a later check may trust an unchanged change
 * time: only when that time is older than the walk by more than twice the
 * coarse clock's tick, since a change made after the walk began is stamped
 * with a time at most one tick before it, so it shows as a different one.
 */
static void mark_set(struct qsnap__scan_mark *mk, const struct stat *st, int64_t began)
{
    struct timespec res;
    int64_t tick = clock_getres(CLOCK_REALTIME_COARSE, &res) == 0 ? ts_ns(res) : 0;

    mark_dir(mk, st);
    mk->quiet = tick > 0 && tick < 1000000000 && mk->ctime_ns + 2 * tick < began;
}

/*
 * The seal of layers/. At 10,000 snapshots layers/ holds 6,000 entries and
 * the walk that checks them (above) was a sixth of every operation's time.
 * The walk is skipped when layers/ is exactly as qsnap itself last left it:
 *
 *  - a command that found layers/ clean (a whole walk, with its change time
 *    older than the walk by more than two clock ticks, or the seal below) and
 *    no name there that qsnap did not make, follows every change it makes to
 *    layers/ (layers_touch): before the change the directory's device, inode
 *    and change time must still be what it last saw, after it they are
 *    recorded again. A change made by anything else in between breaks the
 *    chain;
 *  - at the end of an operation, under the store's write lock, an unbroken
 *    chain is written to the lock file as the seal: "qsnap-seal 2 DEV INO
 *    CTIME_NS GEN CRC", GEN the generation of the metadata the operation
 *    left. A broken one clears it;
 *  - a later command whose fstat of layers/ gives exactly the sealed device,
 *    inode and change time takes layers/ as clean without reading it (the VM
 *    path is still checked, by its name), once the metadata it then loads is
 *    of the sealed generation (qsnap__layers_check_meta); metadata of another
 *    generation (meta.log removed, an older meta put back) is a walk.
 *
 * Anything that adds, removes or renames an entry of layers/ changes its
 * change time, so the walk comes back with any change qsnap did not make.
 * What the seal cannot see is a change made within the same clock tick as
 * qsnap's own last one, on a file system whose times are that coarse (those
 * with fine-grained times on Linux 6.13 and later stamp the next change apart
 * from one that was looked at). Such a change is still refused where it
 * matters: every open of a store file refuses a link, a device or a second
 * hard link by itself, and `qsnap verify` always walks. The lock file's
 * content is advisory: a seal that does not parse, or does not match, is a
 * walk; writing it is not synced.
 */
#define SEAL_MAGIC "qsnap-seal 2 "

/* Follow a change qsnap makes to an entry of directory dir (dfd), before it (after false)
 * and after it: see the seal above. Only layers/ is followed. */
static void layers_touch(const qsnap_store *s, const char *dir, int dfd, bool after)
{
    struct qsnap__scan_mark *mk = strcmp(dir, "layers") ? NULL : mark_of(s, "layers");
    struct stat st;

    if (!mk || !mk->own)
        return;
    if (fstat(dfd, &st) < 0)
        mk->own = false;
    else if (!after)
        mk->own = mark_same(mk, &st);
    else
        mark_dir(mk, &st);
}

void qsnap__layers_touch(const qsnap_store *s, int dfd, bool after)
{
    layers_touch(s, "layers", dfd, after);
}

void qsnap__layers_forget(const qsnap_store *s)
{
    struct qsnap__scan_mark *mk = mark_of(s, "layers");

    if (mk)
        mk->own = false;
}

/* The seal of st (layers/ as fstat saw it) and gen as the lock file holds it: n bytes in buf. */
static int seal_format(const struct stat *st, uint64_t gen, char *buf, size_t size)
{
    char body[128];
    int n = snprintf(body, sizeof(body), SEAL_MAGIC "%llu %llu %lld %llu",
                     (unsigned long long)st->st_dev, (unsigned long long)st->st_ino,
                     (long long)ts_ns(st->st_ctim), (unsigned long long)gen);

    if (n < 0 || (size_t)n >= sizeof(body))
        return -1;
    n = snprintf(buf, size, "%s %08x\n", body, qsnap__crc32(body, (size_t)n));
    return n < 0 || (size_t)n >= size ? -1 : n;
}

/* Whether the lock file holds the seal of layers/ as st shows it now; its generation in *gen. */
static bool sealed(const qsnap_store *s, const struct stat *st, uint64_t *gen)
{
    char want[160], got[160];
    unsigned long long dev, ino, g;
    long long ct;
    ssize_t r;
    int n;

    if (s->lock_fd < 0)
        return false;
    r = pread(s->lock_fd, got, sizeof(got) - 1, 0);
    if (r <= 0)
        return false;
    got[r] = '\0';
    if (sscanf(got, SEAL_MAGIC "%llu %llu %lld %llu ", &dev, &ino, &ct, &g) != 4)
        return false;
    n = seal_format(st, g, want, sizeof(want));
    if (n < 0 || r != n || memcmp(got, want, (size_t)n))
        return false;
    *gen = g;
    return true;
}

void qsnap__seal_layers(const qsnap_store *s)
{
    const struct qsnap__scan_mark *mk = mark_of(s, "layers");
    char buf[160];
    struct stat st;
    bool ok = false;
    int dfd = -1, n = -1;

    if (s->readonly || s->lock_fd < 0)
        return;
    if (mk && mk->own && mk->listed && !mk->nothers && qsnap__store_dir_get(s, "layers", &dfd) == 0 &&
        fstat(dfd, &st) == 0 && mark_same(mk, &st))
        n = seal_format(&st, s->m.gen, buf, sizeof(buf));
    qsnap__store_dir_put(s, dfd);
    if (n > 0)
        ok = pwrite(s->lock_fd, buf, (size_t)n, 0) == n && ftruncate(s->lock_fd, n) == 0;
    if (!ok) /* no seal: the next command walks */
        (void)ftruncate(s->lock_fd, 0);
}

/* Forget the names a walk of layers/ recorded. */
static void others_clear(struct qsnap__scan_mark *mk)
{
    for (size_t i = 0; i < mk->nothers; i++)
        free(mk->others[i]);
    free(mk->others);
    mk->others = NULL;
    mk->nothers = 0;
    mk->listed = false;
}

/* Record name (false: out of memory; the list is then not whole). */
static bool others_add(struct qsnap__scan_mark *mk, const char *name)
{
    char **v = realloc(mk->others, (mk->nothers + 1) * sizeof(*v));
    char *dup = v ? strdup(name) : NULL;

    if (v)
        mk->others = v;
    if (!dup)
        return false;
    mk->others[mk->nothers++] = dup;
    return true;
}

void qsnap__scan_marks_free(qsnap_store *s)
{
    for (size_t i = 0; s->marks && i < 2; i++)
        others_clear(&s->marks[i]);
    free(s->marks);
    s->marks = NULL;
}

unsigned qsnap__layer_id(const char *name)
{
    unsigned long long id = 0;
    const char *p = name;

    if (*p < '1' || *p > '9')
        return 0;
    for (; *p >= '0' && *p <= '9' && id < UINT_MAX; p++)
        id = id * 10 + (unsigned)(*p - '0');
    return strcmp(p, ".qcow2") || id >= UINT_MAX ? 0 : (unsigned)id;
}

/* QSNAP_EINTEGRITY naming the first entry of directory sub that is not a regular file
 * (trust_seal: layers/ as sealed is taken as it was, without a walk). */
static int scan_dir(const qsnap_store *s, const char *sub, bool trust_seal)
{
    bool layers = !strcmp(sub, "layers");
    struct qsnap__scan_mark *mk = mark_of(s, sub);
    struct timespec now;
    struct stat dst;
    bool can_mark, lost = false;
    struct dirent *e;
    DIR *d;
    int dfd, rc = 0;

    if (mk) {
        mk->quiet = mk->own = mk->by_seal = false;
        mk->top = 0;
        others_clear(mk);
    }
    rc = qsnap__store_dirfd(s, sub, &dfd);
    if (rc)
        return rc == QSNAP_ENOTFOUND ? 0 : rc;
    /* Stat first, then the clock, then the entries: a change after the stat is seen. */
    can_mark = mk && fstat(dfd, &dst) == 0 && clock_gettime(CLOCK_REALTIME, &now) == 0;
    if (layers && can_mark && trust_seal && sealed(s, &dst, &mk->seal_gen)) {
        /* As qsnap left it (the seal above): only the VM path is looked at. */
        mark_dir(mk, &dst);
        mk->quiet = mk->listed = mk->own = mk->by_seal = true;
        rc = qsnap__vm_link_check(s, dfd, &s->m);
        close(dfd);
        return rc;
    }
    d = fdopendir(dfd);
    if (!d) {
        close(dfd);
        return qsnap__err(QSNAP_ERROR, NULL, "%s/%s: %s", s->dir, sub, strerror(errno));
    }
    while (!rc && (e = readdir(d)) != NULL) {
        unsigned char type = e->d_type;
        if (e->d_name[0] == '.' && (!e->d_name[1] || (e->d_name[1] == '.' && !e->d_name[2])))
            continue;
        if (layers && !strcmp(e->d_name, "current.qcow2")) {
            /* The VM path: the one link qsnap makes itself (vmpath.c). */
            rc = qsnap__vm_link_check(s, dirfd(d), &s->m);
            continue;
        }
        if (layers && type == DT_UNKNOWN) {
            /* A layer with a second name could be any file of the system. Where the
             * directory tells the type (DT_REG), no stat per file here: with thousands
             * of layers it is the cost of every command; every open of a layer
             * (qsnap__io_open) and every chmod of one checks its link count instead. */
            struct stat st;
            if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                continue;
            type = S_ISREG(st.st_mode) ? DT_REG : S_ISLNK(st.st_mode) ? DT_LNK : DT_FIFO;
            if (type == DT_REG && st.st_nlink > 1) {
                char path[PATH_MAX];
                snprintf(path, sizeof(path), "%s/%s/%s", s->dir, sub, e->d_name);
                note_refusal(s, path, EMLINK);
                rc = qsnap__unsafe_err(path, EMLINK);
                continue;
            }
        }
        if (type == DT_UNKNOWN) {
            struct stat st;
            if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                continue;
            type = S_ISREG(st.st_mode) ? DT_REG : S_ISLNK(st.st_mode) ? DT_LNK : DT_FIFO;
        }
        /* A temporary link of the VM path left by a kill: removed by the next switch. */
        if (layers && type == DT_LNK && !strcmp(e->d_name, ".tmp-current"))
            continue;
        if (type != DT_REG) {
            char path[PATH_MAX];
            snprintf(path, sizeof(path), "%s/%s/%s", s->dir, sub, e->d_name);
            rc = qsnap__unsafe_err(path, type == DT_LNK ? ELOOP : ENODEV);
        } else if (layers && mk && !qsnap__layer_name_ours(e->d_name) &&
                   !others_add(mk, e->d_name)) {
            lost = true; /* qsnap__refuse_foreign_layers walks again */
        } else if (layers && mk) {
            unsigned id = qsnap__layer_id(e->d_name);
            if (id > mk->top)
                mk->top = id;
        }
    }
    closedir(d);
    if (!rc && layers && mk)
        mk->listed = !lost;
    if (!rc && can_mark)
        mark_set(mk, &dst, ts_ns(now));
    if (layers && mk)
        mk->own = !rc && can_mark && mk->quiet && mk->listed && !mk->nothers;
    return rc;
}

bool qsnap__layer_name_ours(const char *name)
{
    const char *p = name;

    if (!strncmp(p, ".tmp-", 5))
        p += 5;
    if (*p < '0' || *p > '9')
        return false;
    while (*p >= '0' && *p <= '9')
        p++;
    return !strcmp(p, ".qcow2") || !strcmp(p, ".qcow2.tmp");
}

/* QSNAP_EINTEGRITY when name, in layers/ (dfd), is a regular file qsnap did not make. */
static int foreign_check(const qsnap_store *s, int dfd, const char *name)
{
    char rel[PATH_MAX];
    struct stat st;

    if (!strcmp(name, "current.qcow2") || !strcmp(name, ".tmp-current") ||
        qsnap__layer_name_ours(name))
        return 0;
    snprintf(rel, sizeof(rel), "layers/%s", name);
    for (size_t i = 0; i < s->m.nl; i++) {
        if (!strcmp(s->m.layers[i].file, rel))
            return 0;
    }
    if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
        return 0; /* gone, or a link or device: the store walk's */
    return qsnap__err(QSNAP_EINTEGRITY,
                      "with the VM shut down, merge it into the branch it was made on "
                      "('qsnap image commit FILE') and point the VM at 'qsnap current DISK "
                      "--path' again, or move it out of the store; then run the command again",
                      "%s/%s: a file qsnap did not make (an overlay another program made on the "
                      "VM path, as 'virsh snapshot-create-as' does?): changing the tree would "
                      "change what it reads through; nothing was changed",
                      s->dir, rel);
}

/*
 * Right after a check of the store (qsnap__rescan_store), the walk that
 * stands for layers/ as it is now recorded the names not of qsnap's form:
 * only those are looked at (at 10,000 snapshots a second walk of layers/
 * is a cost of every operation). Without a whole record, layers/ is walked.
 */
int qsnap__refuse_foreign_layers(const qsnap_store *s)
{
    const struct qsnap__scan_mark *mk = s->marks;
    struct dirent *e;
    DIR *d;
    int dfd, rc = qsnap__store_dirfd(s, "layers", &dfd);

    if (rc)
        return rc == QSNAP_ENOTFOUND ? 0 : rc;
    if (mk && mk->listed) {
        for (size_t i = 0; !rc && i < mk->nothers; i++)
            rc = foreign_check(s, dfd, mk->others[i]);
        close(dfd);
        return rc;
    }
    d = fdopendir(dfd);
    if (!d) {
        close(dfd);
        return qsnap__err(QSNAP_ERROR, NULL, "%s/layers: %s", s->dir, strerror(errno));
    }
    while (!rc && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' && (!e->d_name[1] || (e->d_name[1] == '.' && !e->d_name[2])))
            continue;
        rc = foreign_check(s, dirfd(d), e->d_name);
    }
    closedir(d);
    return rc;
}

/* Directory sub is as the last clean walk found it, and that walk may be trusted. */
static bool unchanged(const qsnap_store *s, int sfd, const char *sub)
{
    const struct qsnap__scan_mark *mk = mark_of(s, sub);
    struct stat st;

    return mk && mk->quiet && fstatat(sfd, sub, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
           S_ISDIR(st.st_mode) && mark_same(mk, &st);
}

static int scan(const qsnap_store *s, bool again)
{
    static const char *const files[] = {"meta", "lock", "journal", "meta.tmp", "journal.tmp",
                                        "meta.log", "meta.log.tmp"};
    static const char *const dirs[] = {"layers", "state"};
    int rc = qsnap__store_dirs_recheck(s), sfd = -1;

    if (rc)
        return rc;
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        rc = qsnap__check_store_file(s, files[i]);
        if (rc && rc != QSNAP_ENOTFOUND)
            return rc;
    }
    if (again && qsnap__store_dir_get(s, "", &sfd))
        sfd = -1;
    rc = 0;
    for (size_t i = 0; !rc && i < sizeof(dirs) / sizeof(dirs[0]); i++) {
        if (sfd < 0 || !unchanged(s, sfd, dirs[i]))
            rc = scan_dir(s, dirs[i], true);
    }
    qsnap__store_dir_put(s, sfd);
    return rc;
}

int qsnap__scan_store(const qsnap_store *s)
{
    return scan(s, false);
}

int qsnap__rescan_store(const qsnap_store *s)
{
    return scan(s, true);
}

/*
 * Right after a command that checked the store (qsnap__scan_store) loaded
 * the metadata: a file of layers/ whose id the metadata has not handed out
 * yet is never qsnap's without an operation's journal (new layers are made
 * while it is there, and an undo removes them before it goes). Then the
 * metadata is older than layers/ (meta.log removed, an older meta put back):
 * the tree it describes would hand those ids out again and write into heads
 * that later changes froze. A seal of layers/ names the generation of the
 * metadata the last operation left: metadata of another one is a walk.
 */
int qsnap__layers_check_meta(const qsnap_store *s)
{
    struct qsnap__scan_mark *mk = mark_of(s, "layers");
    bool pending = true;
    int rc;

    if (!mk)
        return 0;
    if (mk->by_seal) {
        if (mk->seal_gen == s->m.gen)
            return 0;
        rc = scan_dir(s, "layers", false);
        if (rc)
            return rc;
    }
    if (!mk->top || mk->top < s->m.seq)
        return 0;
    if (qsnap__journal_pending(s, &pending) || pending)
        return 0; /* an operation's own new layers: its replay or undo decides */
    return qsnap__err(QSNAP_EINTEGRITY,
                      "'qsnap verify DISK' names every file the metadata does not know; put the "
                      "lost meta.log (or the newer meta) back, or restore the whole store from "
                      "one backup",
                      "%s/layers/%u.qcow2: newer than the store's metadata (it has handed out "
                      "ids below %u): the metadata is older than its layers (meta.log removed, "
                      "or an older meta put back?); nothing was changed",
                      s->dir, mk->top, s->m.seq);
}

int qsnap__repair_layer(const qsnap_store *s, const struct qsnap__layer *l)
{
    qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
    qcow2_check_result cr;
    qcow2_image *img = NULL;
    char *path;
    int rc;

    if (l->fmt != QCOW2_FORMAT_QCOW2)
        return 0;
    path = qsnap__path(s, l->file);
    if (!path)
        return nomem();
    /* CHECK: the image as it is (no repair at open); the image lock keeps a VM out. */
    oo.flags = QCOW2_OPEN_RDWR | QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_CHECK | QSNAP__LOCK_FLAGS(s);
    oo.format = QCOW2_FORMAT_QCOW2;
    rc = qsnap__image_open(s, path, &oo, &img, NULL);
    if (!rc) {
        memset(&cr, 0, sizeof(cr));
        rc = qcow2_image_check(img, QCOW2_CHECK_FIX_LEAKS | QCOW2_CHECK_FIX_ERRORS, &cr);
        if (!rc)
            rc = qcow2_image_flush(img);
        if (rc)
            rc = qsnap__from_qcow2(rc, NULL);
        else if (cr.corruptions > cr.corruptions_fixed || cr.leaks > cr.leaks_fixed)
            rc = qsnap__err(QSNAP_EINTEGRITY, "restore it from a backup",
                            "%s: check could not repair everything", path);
    }
    qcow2_image_close(img);
    free(path);
    return rc;
}
