/*
 * The store on disk: locating DISK.qsnap beside the disk, the lock file,
 * atomic metadata writes (tmp, fsync, rename, fsync the directory), and
 * opening and closing a store. plan.c builds operations on the model this
 * file loads; exec.c carries them out.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "qsnap_int.h"

/* How long a read-only open waits for a writer's lock to go (ms), in steps of (ms). */
#define READ_WAIT_MS 3000u
#define READ_WAIT_STEP_MS 10u

#define META_FILE "meta"
#define LOCK_FILE "lock"

int64_t qsnap__now(void)
{
    return (int64_t)time(NULL);
}

bool qsnap__file_exists(const char *path)
{
    struct stat st;

    return lstat(path, &st) == 0;
}

char *qsnap__path(const qsnap_store *s, const char *rel)
{
    size_t dir_len = strlen(s->dir), n;
    char *p;

    /* "../NAME" (the disk beside the store) without a ".." in the result. */
    while (!strncmp(rel, "../", 3)) {
        const char *slash = memrchr(s->dir, '/', dir_len);
        if (!slash || slash == s->dir)
            break;
        dir_len = (size_t)(slash - s->dir);
        rel += 3;
    }
    n = dir_len + strlen(rel) + 2;
    p = malloc(n);
    if (p)
        snprintf(p, n, "%.*s%s%s", (int)dir_len, s->dir, rel[0] ? "/" : "", rel);
    return p;
}

/*
 * The backing link from the layer file from_rel to the layer file to_rel,
 * both relative to the store: relative to from_rel's directory, so a store
 * and its disk can move together.
 */
char *qsnap__link_name(const char *from_rel, const char *to_rel)
{
    const char *slash = strrchr(from_rel, '/');
    size_t dir_len = slash ? (size_t)(slash - from_rel) + 1 : 0;
    size_t ups = 0, n;
    char *out;

    /* Common directory prefix (store-relative paths have no "." parts). */
    while (dir_len && strncmp(from_rel, to_rel, dir_len) != 0) {
        const char *prev = dir_len > 1 ? memrchr(from_rel, '/', dir_len - 1) : NULL;
        ups++;
        dir_len = prev ? (size_t)(prev - from_rel) + 1 : 0;
    }
    n = ups * 3 + strlen(to_rel + dir_len) + 1;
    out = malloc(n);
    if (!out)
        return NULL;
    out[0] = '\0';
    for (size_t i = 0; i < ups; i++)
        strcat(out, "../");
    strcat(out, to_rel + dir_len);
    return out;
}

int qsnap__fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc = 0;

    if (fd < 0)
        return qsnap__err(QSNAP_ERROR, NULL, "%s: cannot open directory: %s", dir,
                          strerror(errno));
    if (fsync(fd) < 0 && errno != EINVAL)
        rc = qsnap__err(QSNAP_ERROR, NULL, "%s: fsync failed: %s", dir, strerror(errno));
    close(fd);
    return rc;
}

int qsnap__write_atomic(const qsnap_store *s, const char *rel, const char *data, size_t len)
{
    char *path = qsnap__path(s, rel), *tmp = NULL;
    int fd = -1, dfd = -1, rc = 0;
    size_t done = 0;

    if (!path || asprintf(&tmp, "%s.tmp", rel) < 0) {
        tmp = NULL;
        rc = qsnap__err(QSNAP_ERROR, NULL, "out of memory");
        goto out;
    }
    /* A regular leftover of a killed run goes; a link or device there is refused. */
    rc = qsnap__clear_tmp(s, tmp);
    if (!rc)
        rc = qsnap__open_store_file(s, tmp, O_WRONLY | O_CREAT | O_EXCL, &fd);
    if (rc)
        goto out;
    {
        char *abs = qsnap__path(s, tmp);
        if (abs)
            qsnap__own(s, abs);
        free(abs);
    }
    while (done < len) {
        ssize_t w = write(fd, data + done, len - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            rc = qsnap__err(QSNAP_ERROR, NULL, "%s/%s: write failed: %s", s->dir, tmp,
                            w < 0 ? strerror(errno) : "short write");
            goto out;
        }
        done += (size_t)w;
    }
    if (fsync(fd) < 0) {
        rc = qsnap__err(QSNAP_ERROR, NULL, "%s/%s: fsync failed: %s", s->dir, tmp,
                        strerror(errno));
        goto out;
    }
    close(fd);
    fd = -1;
    /* rename() replaces a link at rel itself, never what it points at. */
    rc = qsnap__store_dir_get(s, "", &dfd);
    if (rc)
        goto out;
    if (renameat(dfd, tmp, dfd, rel) < 0) {
        rc = qsnap__err(QSNAP_ERROR, NULL, "%s: rename failed: %s", path, strerror(errno));
        goto out;
    }
    rc = fsync(dfd) < 0 && errno != EINVAL
             ? qsnap__err(QSNAP_ERROR, NULL, "%s: fsync failed: %s", s->dir, strerror(errno))
             : 0;
out:
    if (fd >= 0) {
        close(fd);
        if (dfd >= 0 || qsnap__store_dir_get(s, "", &dfd) == 0)
            unlinkat(dfd, tmp, 0);
    }
    qsnap__store_dir_put(s, dfd);
    free(tmp);
    free(path);
    return rc;
}

int qsnap__save_model(qsnap_store *s, struct qsnap__model *m)
{
    return qsnap__meta_save(s, m);
}

/* Take the store lock: an OFD lock on DIR/lock, exclusive for writers. */
static int take_lock(qsnap_store *s)
{
    struct flock fl;
    int fd = -1, rc;

    /* Opened without following a link; made exclusively when missing. */
    rc = qsnap__open_store_file(s, LOCK_FILE, s->readonly ? O_RDONLY : O_RDWR, &fd);
    if (rc == QSNAP_ENOTFOUND && s->readonly)
        return 0; /* nothing to lock against yet */
    if (rc == QSNAP_ENOTFOUND) {
        rc = qsnap__open_store_file(s, LOCK_FILE, O_RDWR | O_CREAT | O_EXCL, &fd);
        if (rc == QSNAP_ERROR) /* made meanwhile by another qsnap */
            rc = qsnap__open_store_file(s, LOCK_FILE, O_RDWR, &fd);
        if (!rc) {
            char *path = qsnap__path(s, LOCK_FILE);
            if (path)
                qsnap__own(s, path);
            free(path);
        }
    }
    if (rc)
        return rc;
    memset(&fl, 0, sizeof(fl));
    fl.l_type = s->readonly ? F_RDLCK : F_WRLCK;
    fl.l_whence = SEEK_SET;
    /* A reader waits a little for a writer to finish (a tree operation takes milliseconds):
     * a VM's start script asking for the VM path while a snapshot is being taken gets it,
     * not "busy". A writer does not wait: two changes at once are the user's to order. */
    for (unsigned waited = 0; fcntl(fd, F_OFD_SETLK, &fl) < 0; waited += READ_WAIT_STEP_MS) {
        int e = errno;
        if ((e == EAGAIN || e == EACCES) && s->readonly && waited < READ_WAIT_MS) {
            struct timespec ts = {0, READ_WAIT_STEP_MS * 1000000L};
            nanosleep(&ts, NULL);
            continue;
        }
        close(fd);
        if (e == EAGAIN || e == EACCES)
            return qsnap__err(QSNAP_EBUSY, "wait for the other qsnap to finish",
                              "%s: another qsnap is working on this store", s->dir);
        return qsnap__err(QSNAP_ERROR, NULL, "%s: cannot lock the store: %s", s->dir,
                          strerror(e));
    }
    s->lock_fd = fd;
    return 0;
}

/* DISK.qsnap for a disk path, both absolute. */
static int locate(qsnap_store *s, const char *disk)
{
    char buf[PATH_MAX];
    struct stat st;

    if (stat(disk, &st) < 0) {
        /* Its store still there: the disk went, and every snapshot of it needs it back. */
        bool orphan = snprintf(buf, sizeof(buf), "%s.qsnap", disk) < (int)sizeof(buf) &&
                      stat(buf, &st) == 0 && S_ISDIR(st.st_mode);
        if (orphan)
            return qsnap__err(QSNAP_ENOTFOUND,
                              "restore the disk from a backup (its snapshots stand on it); "
                              "'qsnap verify DISK' then checks the store",
                              "%s: the disk image is missing, but its store %s is there", disk,
                              buf);
        return qsnap__err(QSNAP_ENOTFOUND, NULL, "%s: no such disk image", disk);
    }
    /* A block device's store would go beside its node, in /dev: a file system in memory,
     * gone at the next boot with every layer, and the node itself would be frozen. */
    if (S_ISBLK(st.st_mode))
        return qsnap__err(QSNAP_EUSAGE,
                          "copy the device into an image file ('qsnap image convert -O qcow2 "
                          "DEVICE FILE') and snapshot the file",
                          "%s: a block device: its snapshot store would live beside the device node "
                          "(in /dev, a file system in memory)",
                          disk);
    if (!S_ISREG(st.st_mode))
        return qsnap__err(QSNAP_EUSAGE, NULL, "%s: not a regular file", disk);
    if (!realpath(disk, buf))
        return qsnap__err(QSNAP_ERROR, NULL, "%s: %s", disk, strerror(errno));
    /* The file the name resolved to: later opens of the disk must find it. */
    if (stat(buf, &st) < 0 || !S_ISREG(st.st_mode))
        return qsnap__err(QSNAP_ERROR, NULL, "%s: changed while it was opened", disk);
    s->disk_dev = st.st_dev;
    s->disk_ino = st.st_ino;
    s->disk_abs = strdup(buf);
    if (!s->disk_abs || asprintf(&s->dir, "%s.qsnap", buf) < 0) {
        s->dir = NULL;
        return qsnap__err(QSNAP_ERROR, NULL, "out of memory");
    }
    return 0;
}

/*
 * A new store for a disk inside another store's directory (a layer, the VM
 * path, a state file): it would be a directory in the other store's layers/
 * or state/, where that store's commands refuse every file they did not
 * make. Refused before anything is written; a store already there is used.
 */
static int refuse_nested(const qsnap_store *s)
{
    char *outer = NULL, *meta = NULL;
    int rc = qsnap__store_above(s->disk_abs, &outer);

    if (rc || !outer)
        return rc;
    if (asprintf(&meta, "%s/meta", s->dir) < 0) {
        meta = NULL;
        rc = qsnap__err(QSNAP_ERROR, NULL, "out of memory");
    } else if (!qsnap__file_exists(meta)) {
        char *hint = NULL;
        size_t len = strlen(outer) - 6; /* its disk: the directory without ".qsnap" */
        if (asprintf(&hint, "snapshot the disk of that store instead: 'qsnap create %.*s' (the "
                            "VM path is 'qsnap current %.*s --path')",
                     (int)len, outer, (int)len, outer) < 0)
            hint = NULL;
        rc = qsnap__err(QSNAP_EREFUSED, hint,
                        "%s: refused: a file of the store %s; a store of its own inside it would "
                        "break that store (nothing was written)",
                        s->disk_abs, outer);
        free(hint);
    }
    free(meta);
    free(outer);
    return rc;
}

int qsnap__refuse_orphan_layers(const qsnap_store *s)
{
    struct dirent *de;
    bool found = false;
    DIR *d;
    int dfd, rc;

    /* From the store's directory without following links (safe.c): a layers/ that is a
     * link to another directory is refused, never read. */
    rc = qsnap__store_dirfd(s, "layers", &dfd);
    if (rc)
        return rc == QSNAP_ENOTFOUND ? 0 : rc;
    d = fdopendir(dfd);
    if (!d) {
        rc = errno;
        close(dfd);
        return qsnap__err(QSNAP_ERROR, NULL, "%s/layers: %s", s->dir, strerror(rc));
    }
    while (!found && (de = readdir(d)) != NULL)
        found = strcmp(de->d_name, ".") && strcmp(de->d_name, "..");
    closedir(d);
    if (!found)
        return 0;
    return qsnap__err(QSNAP_EINTEGRITY,
                      "restore its meta file from a backup, or move the directory away to start "
                      "a new store",
                      "%s: holds layers but no metadata (the meta file is missing)", s->dir);
}

int qsnap_store_open(qsnap_store **out, const char *disk, unsigned flags)
{
    qsnap_store *s;
    struct stat st;
    int rc;

    *out = NULL;
    if (!disk)
        return qsnap__err(QSNAP_EUSAGE, NULL, "no disk given");
    s = calloc(1, sizeof(*s));
    if (!s)
        return qsnap__err(QSNAP_ERROR, NULL, "out of memory");
    s->lock_fd = -1;
    s->readonly = (flags & QSNAP_OPEN_READONLY) != 0;
    rc = locate(s, disk);
    if (!rc && (flags & QSNAP_OPEN_CREATE))
        rc = refuse_nested(s);
    if (rc)
        goto fail;
    s->refusal = calloc(1, sizeof(*s->refusal));
    s->marks = calloc(2, sizeof(*s->marks));
    s->seen = calloc(1, sizeof(*s->seen));
    s->chain = calloc(1, sizeof(*s->chain));
    s->dir_fd = malloc(QSNAP__DIR_FDS * sizeof(*s->dir_fd));
    for (int i = 0; s->dir_fd && i < QSNAP__DIR_FDS; i++)
        s->dir_fd[i] = -1;
    if (lstat(s->dir, &st) == 0) {
        if (S_ISLNK(st.st_mode)) {
            rc = qsnap__unsafe_err(s->dir, ELOOP);
            goto fail;
        }
        if (!S_ISDIR(st.st_mode)) {
            rc = qsnap__err(QSNAP_EINTEGRITY, "move it away", "%s: exists and is not a store "
                                                              "directory",
                            s->dir);
            goto fail;
        }
        rc = take_lock(s);
        /* A store with a link or a device for one of its files: refused (safe.c). */
        if (!rc && !(flags & QSNAP_OPEN_ANY_FILES))
            rc = qsnap__scan_store(s);
        if (rc)
            goto fail;
        {
            char *meta = qsnap__path(s, META_FILE);
            s->exists = meta && qsnap__file_exists(meta);
            free(meta);
        }
    }
    if (s->exists) {
        rc = qsnap__meta_load(s);
        /* Metadata older than layers/ (safe.c), where the store was checked. */
        if (!rc && !(flags & QSNAP_OPEN_ANY_FILES))
            rc = qsnap__layers_check_meta(s);
        if (rc)
            goto fail;
    } else {
        const char *base = strrchr(s->disk_abs, '/');
        bool pending = false;
        rc = qsnap__journal_pending(s, &pending);
        /* An interrupted first create has layers and a journal; without one they are orphans. */
        if (!rc && !pending)
            rc = qsnap__refuse_orphan_layers(s);
        if (!rc && !(flags & QSNAP_OPEN_CREATE))
            rc = pending ? qsnap__err(QSNAP_EINTEGRITY, "'qsnap verify DISK --repair' finishes it",
                                      "%s: the first snapshot was interrupted and is not finished",
                                      s->dir)
                         : qsnap__err(QSNAP_ENOTFOUND, "'qsnap create DISK' makes the first snapshot",
                                      "%s: no snapshots yet (no store at %s)", s->disk_abs, s->dir);
        if (rc)
            goto fail;
        if (asprintf(&s->m.disk, "../%s", base ? base + 1 : s->disk_abs) < 0) {
            s->m.disk = NULL;
            rc = qsnap__err(QSNAP_ERROR, NULL, "out of memory");
            goto fail;
        }
        s->m.seq = 1;
    }
    *out = s;
    return 0;
fail:
    qsnap_store_close(s);
    return rc;
}

/*
 * Lock the store after creating its directory (first create): the lock is
 * taken as soon as the directory exists.
 */
int qsnap__lock_new_store(qsnap_store *s)
{
    return s->lock_fd >= 0 ? 0 : take_lock(s);
}

void qsnap_store_close(qsnap_store *s)
{
    if (!s)
        return;
    if (s->lock_fd >= 0)
        close(s->lock_fd);
    for (int i = 0; s->dir_fd && i < QSNAP__DIR_FDS; i++) {
        if (s->dir_fd[i] >= 0)
            close(s->dir_fd[i]);
    }
    free(s->dir_fd);
    qsnap__model_free(&s->m);
    free(s->refusal);
    qsnap__seen_reset(s);
    qsnap__scan_marks_free(s);
    if (s->seen) {
        free(s->seen->v);
        free(s->seen->iv);
    }
    free(s->seen);
    for (size_t i = 0; s->chain && i < s->chain->n; i++)
        free(s->chain->path[i]);
    if (s->chain)
        free(s->chain->path);
    free(s->chain);
    free(s->disk_abs);
    free(s->dir);
    free(s);
}

bool qsnap_store_initialized(const qsnap_store *s)
{
    return s->exists;
}

const char *qsnap_store_path(const qsnap_store *s)
{
    return s->dir;
}
