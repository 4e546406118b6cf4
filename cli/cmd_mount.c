/*
 * qsnap mount / umount: a FUSE view of a snapshot tree (libfuse3). The
 * mount point shows one file per snapshot and per branch, NAME.raw, holding
 * its guest content; read-only, or with --rw the branch files are writable
 * and writes go to the branch's head. Files are sparse where the image is
 * (SEEK_DATA and SEEK_HOLE answer from the image's map). Built with FUSE
 * only when libfuse3's headers exist (QSNAP_HAVE_FUSE); otherwise the
 * commands say so.
 *
 * A read-only mount opens an image only while one of its files is open (each
 * open(2) its own, closed with it): a mount nobody reads
 * holds no image, so tree commands and VMs work as without it. An image
 * that another program holds (a running QEMU on a branch's head) fails the
 * open(2) with EBUSY, and reads again once that program is gone. A file
 * reads what its name names when it is opened (a tree changed since the
 * mount shows through; a name gone is ENOENT), so no page cache is kept
 * across opens. A writable mount needs its branches' heads: it opens every
 * image at the start, keeps them to the unmount, and is refused as a whole
 * while one is held.
 *
 * The file system runs in a process of its own (one thread: each image is
 * used by one thread at a time, as libqcow2 requires), recorded in the
 * run-time directory as mount-PID so `qsnap umount` can wait for it to
 * close its images (and release their locks) before it returns.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <qsnap/qsnap.h>

#include "cli.h"
#include "cli_error.h"
#include "opt.h"
#include "serve.h"
#include "tree.h"

static const char mount_help[] =
    "Usage: qsnap mount DISK DIR [--rw] [--foreground]\n"
    "\n"
    "Show every snapshot and branch of DISK as a file DIR/NAME.raw holding its guest\n"
    "content (FUSE). The files are read-only; with --rw, branch files are writable\n"
    "and the writes go to the branch's head (which is then locked as QEMU locks an\n"
    "image, so tree commands that would touch it are refused until the unmount).\n"
    "A read-only mount opens an image only while a file of it is open, so tree\n"
    "commands work beside an idle mount. While a running program (a VM) holds a\n"
    "branch's head, that branch's file (and its internal snapshots) is listed, but\n"
    "opening it fails with EBUSY until the program is gone; --rw is refused.\n"
    "Files are sparse where the image is (SEEK_DATA/SEEK_HOLE), so 'cp --sparse'\n"
    "and 'qemu-img convert' of them skip the holes. 'qsnap umount DIR' or\n"
    "'fusermount3 -u DIR' ends it.\n"
    "\n"
    "Options:\n"
    "      --rw             make branch files writable\n"
    "  -f, --foreground     stay in the foreground until unmounted\n"
    "  -h, --help           show this help and exit\n"
    "\n" TREE_EXIT_HELP;

static const char umount_help[] =
    "Usage: qsnap umount DIR\n"
    "\n"
    "End a 'qsnap mount' at DIR and wait until its images are closed.\n"
    "\n"
    "Options:\n"
    "  -h, --help           show this help and exit\n"
    "\n" TREE_EXIT_HELP;


#ifdef QSNAP_HAVE_FUSE

#define FUSE_USE_VERSION 35
#include <fuse.h>

struct mfile {
    char *name;        /* NAME.raw */
    char *node;        /* the snapshot's or branch's name */
    qcow2_image *img;  /* its content with --rw (a read-only mount: each open's own, fi->fh) */
    bool writable;     /* a branch with --rw */
    uint64_t size;     /* virtual size */
    uint64_t data;     /* bytes of data (for st_blocks): counted at mount, kept by m_write */
};

struct mctx {
    struct mfile *files;
    size_t n;
    time_t when;
    bool rw;           /* --rw: every image opened at the start, kept */
    char *disk;        /* the disk, absolute: a read-only mount opens the store per open(2) */
};

static struct mctx *ctx(void)
{
    return fuse_get_context()->private_data;
}

static struct mfile *lookup(const char *path)
{
    struct mctx *c = ctx();

    if (path[0] != '/')
        return NULL;
    for (size_t i = 0; i < c->n; i++)
        if (strcmp(path + 1, c->files[i].name) == 0)
            return &c->files[i];
    return NULL;
}

static int errno_of(int rc)
{
    switch (QCOW2_ERROR_CLASS(rc)) {
    case QCOW2_ENOMEM: return ENOMEM;
    case QCOW2_ENOSPC: return ENOSPC;
    case QCOW2_EINVAL: return EINVAL;
    case QCOW2_EREADONLY: return EROFS;
    default: return EIO;
    }
}

/* Bytes of data in [off, end) of img (what st_blocks counts); -1 when the map
 * cannot be read. */
static int64_t data_in(qcow2_image *img, uint64_t off, uint64_t end)
{
    uint64_t n = 0;

    while (off < end) {
        qcow2_extent e;
        uint64_t stop;
        if (qcow2_image_block_status(img, NULL, off, end - off, &e) != 0 || e.length == 0)
            return -1;
        stop = e.start + e.length < end ? e.start + e.length : end;
        if ((e.flags & QCOW2_EXT_DATA) && !(e.flags & QCOW2_EXT_ZERO))
            n += stop - (e.start > off ? e.start : off);
        off = stop;
    }
    return (int64_t)n;
}

static int m_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
    struct mctx *c = ctx();
    struct mfile *f;

    (void)fi;
    memset(st, 0, sizeof(*st));
    st->st_uid = getuid();
    st->st_gid = getgid();
    st->st_atime = st->st_mtime = st->st_ctime = c->when;
    if (strcmp(path, "/") == 0) {
        st->st_mode = S_IFDIR | 0555;
        st->st_nlink = 2;
        return 0;
    }
    f = lookup(path);
    if (!f)
        return -ENOENT;
    st->st_mode = S_IFREG | (f->writable ? 0644 : 0444); /* a held file too: opening says why */
    st->st_nlink = 1;
    st->st_size = (off_t)f->size;
    st->st_blksize = 65536;
    st->st_blocks = (blkcnt_t)((f->data + 511) / 512);
    return 0;
}

static int m_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
                     struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
    struct mctx *c = ctx();

    (void)off;
    (void)fi;
    (void)flags;
    if (strcmp(path, "/") != 0)
        return -ENOENT;
    fill(buf, ".", NULL, 0, 0);
    fill(buf, "..", NULL, 0, 0);
    for (size_t i = 0; i < c->n; i++)
        fill(buf, c->files[i].name, NULL, 0, 0);
    return 0;
}

/* Read-only mount: the image f's name names now, opened for one open(2) (0 or -errno). */
static int image_open(struct mctx *c, struct mfile *f, qcow2_image **img)
{
    qsnap_store *s = NULL;
    int rc;

    *img = NULL;
    rc = qsnap_store_open(&s, c->disk, QSNAP_OPEN_READONLY);
    if (rc == 0)
        rc = qsnap_open_image(s, f->node, 0, img);
    qsnap_store_close(s);
    switch (rc) {
    case 0: return 0;
    case QSNAP_EBUSY: return -EBUSY;
    case QSNAP_ENOTFOUND: return -ENOENT;
    default: return -EIO;
    }
}

/* The image an open file reads: its own in a read-only mount (fi->fh), else f's. */
static qcow2_image *image_of(const struct mfile *f, const struct fuse_file_info *fi)
{
    if (f->writable || ctx()->rw)
        return f->img;
    return fi ? (qcow2_image *)(uintptr_t)fi->fh : NULL;
}

static int m_open(const char *path, struct fuse_file_info *fi)
{
    struct mctx *c = ctx();
    struct mfile *f = lookup(path);
    qcow2_image *img = NULL;
    int rc;

    if (!f)
        return -ENOENT;
    if ((fi->flags & O_ACCMODE) != O_RDONLY && !f->writable)
        return -EROFS;
    if (fi->flags & O_TRUNC)
        return -EPERM; /* the size of a disk is fixed */
    if (c->rw) {
        if (!f->img)
            return -EBUSY;
        fi->keep_cache = !f->writable;
        return 0;
    }
    /* Each open(2) its own image: what the name names at this open, never an image
     * another open made when the name named another snapshot. */
    rc = image_open(c, f, &img);
    if (rc)
        return rc;
    fi->fh = (uint64_t)(uintptr_t)img;
    fi->keep_cache = 0; /* the name may name other content than at the last open */
    return 0;
}

static int m_release(const char *path, struct fuse_file_info *fi)
{
    struct mctx *c = ctx();

    (void)path;
    if (!c->rw && fi && fi->fh) {
        qcow2_image_close((qcow2_image *)(uintptr_t)fi->fh);
        fi->fh = 0;
    }
    return 0;
}

static int m_read(const char *path, char *buf, size_t len, off_t off, struct fuse_file_info *fi)
{
    struct mfile *f = lookup(path);
    qcow2_image *img;
    int rc;

    if (!f)
        return -ENOENT;
    img = image_of(f, fi);
    if (!img)
        return -EBUSY;
    if (off < 0 || (uint64_t)off >= f->size)
        return 0;
    if (len > f->size - (uint64_t)off)
        len = (size_t)(f->size - (uint64_t)off);
    rc = qcow2_image_read(img, buf, len, (uint64_t)off);
    return rc ? -errno_of(rc) : (int)len;
}

static int m_write(const char *path, const char *buf, size_t len, off_t off,
                   struct fuse_file_info *fi)
{
    struct mfile *f = lookup(path);
    int64_t before, after;
    uint64_t lo, hi;
    uint32_t cs;
    int rc;

    (void)fi;
    if (!f)
        return -ENOENT;
    if (!f->writable)
        return -EROFS;
    if (off < 0 || (uint64_t)off >= f->size)
        return len ? -ENOSPC : 0;
    if (len > f->size - (uint64_t)off)
        len = (size_t)(f->size - (uint64_t)off);
    /* A write changes the allocation of the clusters it touches only: their
     * data before and after keep st_blocks true at the cost of the write's
     * own map, never the whole file's. */
    cs = qcow2_image_cluster_size(f->img);
    lo = cs ? (uint64_t)off / cs * cs : (uint64_t)off;
    hi = (uint64_t)off + len;
    if (cs && hi % cs)
        hi += cs - hi % cs;
    if (hi > f->size)
        hi = f->size;
    before = data_in(f->img, lo, hi);
    rc = qcow2_image_write(f->img, buf, len, (uint64_t)off);
    after = data_in(f->img, lo, hi);
    if (before >= 0 && after >= 0 && (int64_t)f->data + after - before >= 0)
        f->data = (uint64_t)((int64_t)f->data + after - before);
    return rc ? -errno_of(rc) : (int)len;
}

static int m_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
    struct mfile *f = lookup(path);
    int rc;

    (void)datasync;
    (void)fi;
    if (!f)
        return -ENOENT;
    rc = f->writable ? qcow2_image_flush(f->img) : 0;
    return rc ? -errno_of(rc) : 0;
}

static int m_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
    struct mfile *f = lookup(path);

    (void)fi;
    if (!f)
        return -ENOENT;
    return (uint64_t)size == f->size ? 0 : -EPERM;
}

/* SEEK_DATA / SEEK_HOLE from the image's map: data is what a file holds. */
static off_t m_lseek(const char *path, off_t off, int whence, struct fuse_file_info *fi)
{
    struct mfile *f = lookup(path);
    uint64_t pos = (uint64_t)off;

    qcow2_image *img;

    if (!f)
        return -ENOENT;
    img = image_of(f, fi);
    if (!img)
        return -EBUSY;
    if (whence != SEEK_DATA && whence != SEEK_HOLE)
        return -EINVAL;
    if (off < 0 || pos >= f->size)
        return -ENXIO;
    while (pos < f->size) {
        qcow2_extent e;
        int rc = qcow2_image_block_status(img, NULL, pos, f->size - pos, &e);
        bool data;
        if (rc)
            return -errno_of(rc);
        data = (e.flags & QCOW2_EXT_DATA) && !(e.flags & QCOW2_EXT_ZERO);
        if (data == (whence == SEEK_DATA))
            return (off_t)(pos > e.start ? pos : e.start);
        pos = e.start + e.length;
    }
    return whence == SEEK_DATA ? -ENXIO : (off_t)f->size;
}

static void *m_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
    /* Larger requests (up to 1 MiB; the kernel caps them) cost fewer round trips. */
    conn->max_readahead = 1u << 20;
    conn->max_write = 1u << 20;
    cfg->kernel_cache = 0; /* each open says (keep_cache) */
    cfg->entry_timeout = 60;
    cfg->attr_timeout = 60;
    return fuse_get_context()->private_data;
}

static const struct fuse_operations mount_ops = {
    .getattr = m_getattr,
    .readdir = m_readdir,
    .open = m_open,
    .release = m_release,
    .read = m_read,
    .write = m_write,
    .fsync = m_fsync,
    .truncate = m_truncate,
    .lseek = m_lseek,
    .init = m_init,
};

static void close_files(struct mctx *c)
{
    for (size_t i = 0; i < c->n; i++) {
        if (c->files[i].writable && c->files[i].img && qcow2_image_flush(c->files[i].img) != 0)
            fprintf(stderr, "qsnap: %s\n", qcow2_error_last()->message);
        qcow2_image_close(c->files[i].img);
        free(c->files[i].name);
        free(c->files[i].node);
    }
    free(c->files);
    c->files = NULL;
    c->n = 0;
    free(c->disk);
    c->disk = NULL;
}

static int open_files(struct mctx *c, const char *disk, bool rw)
{
    qsnap_store *s = NULL;
    qsnap_node *list = NULL;
    size_t n = 0;
    int64_t n_data;
    int rc, status;

    c->rw = rw;
    c->disk = realpath(disk, NULL);
    if (!c->disk) {
        cli_errorf("%s: %s", disk, strerror(errno));
        return CLI_EXIT_NOTFOUND;
    }
    status = tree_open(&s, disk, QSNAP_OPEN_READONLY);
    if (status) {
        free(c->disk);
        c->disk = NULL;
        return status;
    }
    rc = qsnap_list(s, &list, &n);
    if (rc == 0 && n == 0) {
        qsnap_store_close(s);
        cli_errorf("%s: no snapshot or branch yet ('qsnap create %s' makes the first)", disk, disk);
        return CLI_EXIT_NOTFOUND;
    }
    c->files = calloc(n ? n : 1, sizeof(*c->files));
    if (rc == 0 && !c->files)
        rc = QSNAP_ERROR;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        struct mfile *f = &c->files[c->n];
        bool branch = list[i].kind == QSNAP_BRANCH;
        if (list[i].kind == QSNAP_UNNAMED)
            continue;
        f->writable = branch && rw;
        rc = qsnap_open_image(s, list[i].name, f->writable ? QCOW2_OPEN_RDWR : 0, &f->img);
        if (rc == QSNAP_EBUSY && !rw) {
            /* Another program writes it (a running QEMU on a branch's head): a
             * read could see it half-written. Listed; opening it fails with EBUSY
             * while that program holds it. */
            fprintf(stderr,
                    "qsnap: %s.raw is listed but cannot be opened while another program "
                    "holds it (EBUSY): %s\n",
                    list[i].name, qsnap_error_last()->message);
            rc = 0;
        }
        if (rc)
            break;
        f->name = NULL;
        f->node = strdup(list[i].name);
        if (!f->node || asprintf(&f->name, "%s.raw", list[i].name) < 0) {
            qcow2_image_close(f->img);
            free(f->node);
            rc = QSNAP_ERROR;
            break;
        }
        f->size = f->img ? qcow2_image_size(f->img) : list[i].virtual_size;
        n_data = f->img ? data_in(f->img, 0, f->size) : 0;
        f->data = n_data >= 0 ? (uint64_t)n_data : f->size;
        if (!rw) {
            /* Opened again by the first open(2) of its file. */
            qcow2_image_close(f->img);
            f->img = NULL;
        }
        c->n++;
    }
    if (rc)
        status = tree_fail(rc, disk);
    qsnap_list_free(list, n);
    qsnap_store_close(s);
    if (status)
        close_files(c);
    return status;
}

/*
 * The mount's options: the disk's name goes in fsname=, where a comma would
 * end the option and start another (a disk named "d,allow_other" would open
 * the mount to every user) and a backslash escapes; both are escaped, as
 * FUSE's option parser reads them. NULL when out of memory.
 */
static char *mount_opts(const char *disk, bool rw)
{
    size_t n = 0;
    char *esc, *opts = NULL;

    for (const char *c = disk; *c; c++)
        n += (*c == ',' || *c == '\\') ? 2 : 1;
    esc = malloc(n + 1);
    if (!esc)
        return NULL;
    n = 0;
    for (const char *c = disk; *c; c++) {
        if (*c == ',' || *c == '\\')
            esc[n++] = '\\';
        esc[n++] = *c;
    }
    esc[n] = '\0';
    if (asprintf(&opts, "fsname=qsnap:%s,subtype=qsnap,default_permissions%s", esc,
                 rw ? "" : ",ro") < 0)
        opts = NULL;
    free(esc);
    return opts;
}

/* Run the file system; tell the parent (fd ready, -1 in the foreground) how the mount went. */
static int run(const char *disk, const char *dir, bool rw, int ready)
{
    struct mctx c = {NULL, 0, time(NULL), rw, NULL};
    struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
    struct fuse *fs = NULL;
    char *opts = NULL, *rundir = NULL, *record = NULL, pidbuf[32];
    unsigned char st;
    int status = open_files(&c, disk, rw);

    if (status)
        goto out;
    status = CLI_EXIT_ERROR;
    opts = mount_opts(disk, rw);
    if (!opts || fuse_opt_add_arg(&args, "qsnap") != 0 || fuse_opt_add_arg(&args, "-o") != 0 ||
        fuse_opt_add_arg(&args, opts) != 0) {
        cli_errorf("out of memory");
        goto out;
    }
    fs = fuse_new(&args, &mount_ops, sizeof(mount_ops), &c);
    if (!fs) {
        cli_errorf("%s: FUSE could not start", dir);
        goto out;
    }
    if (fuse_mount(fs, dir) != 0) {
        cli_errorf("%s: cannot mount here (is /dev/fuse there, and may this user mount?)", dir);
        goto out;
    }
    rundir = serve_runtime_dir();
    snprintf(pidbuf, sizeof(pidbuf), "%ld", (long)getpid());
    if (rundir) {
        const char *kv[] = {"pid", pidbuf, "dir", dir, "disk", disk, NULL, NULL};
        if (serve_record_write(rundir, "mount", getpid(), kv) == 0 &&
            asprintf(&record, "%s/mount-%ld", rundir, (long)getpid()) < 0)
            record = NULL;
    }
    if (fuse_set_signal_handlers(fuse_get_session(fs)) != 0) {
        fuse_unmount(fs);
        goto out;
    }
    status = CLI_EXIT_OK;
    if (ready >= 0) {
        int null = open("/dev/null", O_RDWR);
        st = 0;
        if (write(ready, &st, 1) != 1)
            status = CLI_EXIT_ERROR;
        close(ready);
        ready = -1;
        if (null >= 0) {
            dup2(null, 0);
            dup2(null, 1);
            dup2(null, 2);
            if (null > 2)
                close(null);
        }
    }
    if (fuse_loop(fs) != 0)
        status = CLI_EXIT_ERROR;
    fuse_remove_signal_handlers(fuse_get_session(fs));
    fuse_unmount(fs);
out:
    if (fs)
        fuse_destroy(fs);
    fuse_opt_free_args(&args);
    close_files(&c);
    if (record)
        unlink(record);
    free(record);
    free(rundir);
    free(opts);
    if (ready >= 0) {
        st = (unsigned char)(status ? status : CLI_EXIT_ERROR);
        if (write(ready, &st, 1) != 1)
            status = CLI_EXIT_ERROR;
        close(ready);
    }
    return status;
}

static int do_mount(const char *disk, const char *dir_arg, bool rw, bool foreground)
{
    char *dir = realpath(dir_arg, NULL);
    int fds[2], status;
    unsigned char st = CLI_EXIT_ERROR;
    pid_t pid;

    if (!dir) {
        cli_errorf("%s: %s", dir_arg, strerror(errno));
        return CLI_EXIT_NOTFOUND;
    }
    /* A mount there would hide the store's own files from its commands. */
    status = tree_refuse_in_store(dir_arg, "mount on a directory outside the store directory");
    if (status) {
        free(dir);
        return status;
    }
    if (foreground) {
        status = run(disk, dir, rw, -1);
        free(dir);
        return status;
    }
    if (pipe(fds) != 0) {
        cli_errorf("pipe: %s", strerror(errno));
        free(dir);
        return CLI_EXIT_ERROR;
    }
    fflush(stdout);
    pid = fork();
    if (pid < 0) {
        cli_errorf("fork: %s", strerror(errno));
        free(dir);
        return CLI_EXIT_ERROR;
    }
    if (pid == 0) {
        close(fds[0]);
        setsid();
        if (fork() > 0) /* the file system's process is not a child of the caller's shell */
            _exit(0);
        status = run(disk, dir, rw, fds[1]);
        if (chdir("/") != 0)
            status = CLI_EXIT_ERROR;
        _exit(status);
    }
    close(fds[1]);
    waitpid(pid, NULL, 0);
    if (read(fds[0], &st, 1) != 1)
        st = CLI_EXIT_ERROR;
    close(fds[0]);
    free(dir);
    return st;
}

/* End a mount: fusermount3 -u (or umount(2) as root), then wait for its process. */
static int do_umount(const char *dir_arg)
{
    char *dir = realpath(dir_arg, NULL), *rundir;
    pid_t pid = 0, child;
    int ws = 0;

    if (!dir) {
        cli_errorf("%s: %s", dir_arg, strerror(errno));
        return CLI_EXIT_NOTFOUND;
    }
    rundir = serve_runtime_dir();
    if (rundir) {
        DIR *d = opendir(rundir);
        struct dirent *de;
        while (d && !pid && (de = readdir(d)) != NULL) {
            char *path = NULL, *r_dir, *pid_s;
            if (strncmp(de->d_name, "mount-", 6) != 0 ||
                asprintf(&path, "%s/%s", rundir, de->d_name) < 0)
                continue;
            r_dir = serve_record_get(path, "dir");
            pid_s = serve_record_get(path, "pid");
            if (r_dir && pid_s && strcmp(r_dir, dir) == 0) {
                pid = (pid_t)atol(pid_s);
                if (!serve_pid_runs(pid, "qsnap")) {
                    unlink(path);
                    pid = 0;
                }
            }
            free(r_dir);
            free(pid_s);
            free(path);
        }
        if (d)
            closedir(d);
    }
    free(rundir);
    fflush(stdout);
    child = fork();
    if (child == 0) {
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0)
            dup2(null, 2);
        execlp("fusermount3", "fusermount3", "-u", dir, (char *)NULL);
        _exit(127);
    }
    if (child > 0)
        waitpid(child, &ws, 0);
    if (child < 0 || !WIFEXITED(ws) || WEXITSTATUS(ws) != 0) {
        if (umount(dir) != 0) {
            cli_errorf("%s: not a qsnap mount, or cannot unmount it: %s", dir,
                       strerror(errno));
            free(dir);
            return errno == EBUSY ? CLI_EXIT_BUSY : CLI_EXIT_ERROR;
        }
    }
    if (pid && !serve_wait_gone(pid, 60)) {
        cli_errorf("%s: unmounted, but the file system's process %ld is still running", dir,
                   (long)pid);
        free(dir);
        return CLI_EXIT_BUSY;
    }
    free(dir);
    return CLI_EXIT_OK;
}

#else /* !QSNAP_HAVE_FUSE */

static int do_mount(const char *disk, const char *dir, bool rw, bool foreground)
{
    (void)disk;
    (void)dir;
    (void)rw;
    (void)foreground;
    cli_errorf("this qsnap was built without FUSE (libfuse3's headers were missing)");
    return CLI_EXIT_ERROR;
}

static int do_umount(const char *dir)
{
    (void)dir;
    cli_errorf("this qsnap was built without FUSE (libfuse3's headers were missing)");
    return CLI_EXIT_ERROR;
}

#endif

struct mount_args {
    bool rw, foreground;
};

static const cli_command mount_cmd = {
    .prog = "qsnap mount",
    .help = mount_help,
    .usage_status = CLI_EXIT_USAGE,
    .options = (const cli_option[]){
        CLI_FLAG("rw", 0, struct mount_args, rw),
        CLI_FLAG("foreground", 'f', struct mount_args, foreground),
        CLI_OPTIONS_END,
    },
    CLI_OPERANDS(2, "missing disk", "missing mount point"),
};

int cli_tree_mount(int argc, char **argv)
{
    struct mount_args a = {false, false};
    cli_operands op;
    int status;

    if (!cli_cmd_parse(&mount_cmd, argc, argv, &a, &op, &status))
        return status;
    return do_mount(op.v[0], op.v[1], a.rw, a.foreground);
}

static const cli_command umount_cmd = {
    .prog = "qsnap umount",
    .help = umount_help,
    .usage_status = CLI_EXIT_USAGE,
    .options = (const cli_option[]){CLI_OPTIONS_END},
    CLI_OPERANDS(1, "missing mount point"),
};

int cli_tree_umount(int argc, char **argv)
{
    bool none;
    cli_operands op;
    int status;

    if (!cli_cmd_parse(&umount_cmd, argc, argv, &none, &op, &status))
        return status;
    return do_umount(op.v[0]);
}
