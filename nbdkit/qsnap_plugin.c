/*
 * nbdkit-qsnap-plugin: serve a qcow2 or raw image (with its backing chain),
 * or a snapshot or branch of a qsnap tree, over NBD through nbdkit. Built on
 * the public APIs of libqcow2 and libqsnap only.
 *
 *   nbdkit qsnap file=IMAGE [readonly=1] [handles=N]
 *   nbdkit qsnap disk=DISK [name=NAME] [readonly=1] [handles=N]
 *
 * Thread model: PARALLEL, made correct by the plugin itself. libqcow2 says a
 * qcow2_image (and the chain below it) may be used by one thread at a time
 * and that different handles may be used from different threads at once;
 * it has no global state besides the per-thread error record. So the plugin
 * opens a small pool of handles when the server gets ready, each with its
 * own mutex, and every request holds one handle's mutex while it uses that
 * handle. A read-only export opens `handles` handles (default 4) of the same
 * files, so that several requests (of one or several connections) read at
 * once. A writable export opens exactly one handle: there can be only one
 * writer of an image (a second read-write open would be refused by the lock,
 * and two writers would corrupt it), so its requests run one at a time, as
 * SERIALIZE_ALL_REQUESTS would run them, while nbdkit still overlaps the
 * network side. Because every connection uses the same handle(s) and a
 * flush flushes the one writable handle, a write acknowledged to one
 * connection is seen by every other one and a flush on any connection makes
 * every write durable: can_multi_conn is true.
 *
 * Locks: the handles take QEMU's image locks (libqcow2 does): shared for a
 * read-only export, exclusive on the head of a writable branch or file, for
 * as long as the server runs. A QEMU, or a qsnap tree command that would
 * touch a served head, is refused while it is served.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include <qcow2/qcow2.h>
#include <qsnap/qsnap.h>

#define MAX_HANDLES 64
#define DEFAULT_HANDLES 4

/* The configuration (set by config, fixed after config_complete). */
static char *cfg_file;     /* file=: an image path (absolute) */
static char *cfg_disk;     /* disk=: a disk with a qsnap store (absolute) */
static char *cfg_name;     /* name=: a snapshot or branch of the disk's tree */
static bool cfg_readonly;  /* readonly=1 */
static unsigned cfg_handles = DEFAULT_HANDLES; /* handles=N, read-only exports */

/* Decided in config_complete. */
static bool writable;      /* the export takes writes */

/* The pool, opened in get_ready, closed in cleanup. */
struct slot {
    pthread_mutex_t lock;
    qcow2_image *img;
};
static struct slot pool[MAX_HANDLES];
static unsigned n_slots;
static unsigned next_slot; /* round robin for threads' first request */
static pthread_mutex_t next_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t img_size;
static uint32_t img_cluster;   /* cluster size of the top layer (512 for raw) */
static uint32_t img_zero_unit; /* what a zero write can mark without writing data; 0 = none */

/* The errno for a libqcow2 code, and the message nbdkit logs and sends. WHAT names
 * the request that failed; NULL for the opening of file=, whose message names the file. */
static int fail(int rc, const char *what)
{
    const qcow2_error *e = qcow2_error_last();
    int err;

    switch (QCOW2_ERROR_CLASS(rc)) {
    case QCOW2_ENOMEM: err = ENOMEM; break;
    case QCOW2_ENOSPC: err = ENOSPC; break;
    case QCOW2_EINVAL: err = EINVAL; break;
    case QCOW2_ENOTFOUND: err = ENOENT; break;
    case QCOW2_EEXISTS: err = EEXIST; break;
    case QCOW2_EUNSUPPORTED: err = ENOTSUP; break;
    case QCOW2_EREADONLY: err = EROFS; break;
    case QCOW2_EBUSY: err = EBUSY; break;
    case QCOW2_EIO:
    case QCOW2_ECORRUPT:
    case QCOW2_EFATAL:
    case QCOW2_ERROR:
    case QCOW2_OK:
    default: err = EIO; break;
    }
    if (e->code == rc && e->sys_errno && QCOW2_ERROR_CLASS(rc) == QCOW2_EIO)
        err = e->sys_errno;
    if (e->code == rc && e->message && e->message[0] && !what)
        nbdkit_error("qsnap: %s", e->message); /* it names the file already */
    else
        nbdkit_error("qsnap: %s: %s", what ? what : cfg_file,
                     e->code == rc && e->message && e->message[0] ? e->message : qcow2_strerror(rc));
    if (!what && QCOW2_ERROR_CLASS(rc) == QCOW2_EBUSY)
        nbdkit_error("qsnap: hint: stop the program that uses it first");
    nbdkit_set_error(err);
    return -1;
}

static void qsnap_unload(void)
{
    free(cfg_file);
    free(cfg_disk);
    free(cfg_name);
    cfg_file = cfg_disk = cfg_name = NULL;
}

static int set_path(char **dst, const char *key, const char *value)
{
    char *p = nbdkit_realpath(value);

    if (!p)
        return -1;
    if (*dst) {
        nbdkit_error("qsnap: %s= given twice", key);
        free(p);
        return -1;
    }
    *dst = p;
    return 0;
}

static int qsnap_config(const char *key, const char *value)
{
    if (strcmp(key, "file") == 0)
        return set_path(&cfg_file, key, value);
    if (strcmp(key, "disk") == 0)
        return set_path(&cfg_disk, key, value);
    if (strcmp(key, "name") == 0) {
        if (cfg_name) {
            nbdkit_error("qsnap: name= given twice");
            return -1;
        }
        cfg_name = strdup(value);
        if (!cfg_name) {
            nbdkit_error("qsnap: out of memory");
            return -1;
        }
        return 0;
    }
    if (strcmp(key, "readonly") == 0) {
        int r = nbdkit_parse_bool(value);
        if (r < 0)
            return -1;
        cfg_readonly = r;
        return 0;
    }
    if (strcmp(key, "handles") == 0) {
        char *end;
        unsigned long v = strtoul(value, &end, 10);
        if (!*value || *end || v < 1 || v > MAX_HANDLES) {
            nbdkit_error("qsnap: handles=%s: expected a number from 1 to %d", value, MAX_HANDLES);
            return -1;
        }
        cfg_handles = (unsigned)v;
        return 0;
    }
    nbdkit_error("qsnap: unknown parameter '%s' (see nbdkit qsnap --help)", key);
    return -1;
}

/* The tree node the export names: its kind, and its name (current branch when none). */
static int resolve_node(void)
{
    qsnap_store *s = NULL;
    qsnap_node *list = NULL;
    size_t n = 0;
    int rc = qsnap_store_open(&s, cfg_disk, QSNAP_OPEN_READONLY);
    bool found = false;

    if (rc) {
        nbdkit_error("qsnap: %s", qsnap_error_last()->message);
        return -1;
    }
    if (!cfg_name) {
        qsnap_node *cur = NULL;
        rc = qsnap_current(s, &cur);
        if (rc == 0) {
            cfg_name = strdup(cur->name);
            qsnap_list_free(cur, 1);
            if (!cfg_name) {
                qsnap_store_close(s);
                nbdkit_error("qsnap: out of memory");
                return -1;
            }
        }
    }
    if (rc == 0)
        rc = qsnap_list(s, &list, &n);
    if (rc) {
        nbdkit_error("qsnap: %s", qsnap_error_last()->message);
        qsnap_store_close(s);
        return -1;
    }
    for (size_t i = 0; i < n && !found; i++) {
        if (strcmp(list[i].name, cfg_name) != 0 || list[i].kind == QSNAP_UNNAMED)
            continue;
        found = true;
        writable = list[i].kind == QSNAP_BRANCH && !cfg_readonly;
    }
    qsnap_list_free(list, n);
    qsnap_store_close(s);
    if (!found) {
        nbdkit_error("qsnap: %s: no snapshot or branch named '%s' ('qsnap list %s' shows the names)",
                     cfg_disk, cfg_name, cfg_disk);
        return -1;
    }
    return 0;
}

static int qsnap_config_complete(void)
{
    if (!cfg_file == !cfg_disk) {
        nbdkit_error("qsnap: give either file=IMAGE or disk=DISK [name=NAME]");
        return -1;
    }
    if (cfg_name && !cfg_disk) {
        nbdkit_error("qsnap: name= needs disk=");
        return -1;
    }
    if (cfg_file) {
        writable = !cfg_readonly;
        return 0;
    }
    return resolve_node();
}

#define qsnap_config_help                                                                          \
    "file=IMAGE           a qcow2 or raw image, with its backing chain\n"                          \
    "disk=DISK            a disk with a qsnap store: serve one of its states\n"                    \
    "name=NAME            with disk=: a snapshot (read-only) or a branch (its head\n"              \
    "                     takes the writes); default: the current branch\n"                        \
    "readonly=1           serve read-only (shared lock only)\n"                                    \
    "handles=N            read-only: images opened for parallel requests (default 4)"

static void qsnap_dump_plugin(void)
{
    unsigned v = qcow2_version_number();

    printf("qsnap_libqcow2_version=%u.%u.%u\n", v / 10000, v / 100 % 100, v % 100);
}

static int open_one(qcow2_image **out)
{
    int rc;

    if (cfg_file) {
        qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
        oo.flags = writable ? QCOW2_OPEN_RDWR : 0;
        rc = qcow2_image_open(out, cfg_file, &oo);
        if (rc)
            return fail(rc, NULL);
        return 0;
    }
    qsnap_store *s = NULL;
    rc = qsnap_store_open(&s, cfg_disk, QSNAP_OPEN_READONLY);
    if (rc == 0)
        rc = qsnap_open_image(s, cfg_name, writable ? QCOW2_OPEN_RDWR : 0, out);
    if (rc) {
        const qsnap_error *e = qsnap_error_last();
        nbdkit_error("qsnap: %s", e->message);
        if (e->hint && e->hint[0])
            nbdkit_error("qsnap: hint: %s", e->hint);
        nbdkit_set_error(rc == QSNAP_EBUSY ? EBUSY : rc == QSNAP_ENOTFOUND ? ENOENT : EIO);
    }
    qsnap_store_close(s);
    return rc ? -1 : 0;
}

static void qsnap_cleanup(void)
{
    for (unsigned i = 0; i < n_slots; i++) {
        if (pool[i].img) {
            int rc = writable ? qcow2_image_flush(pool[i].img) : 0;
            if (rc)
                fail(rc, "flush at exit");
            qcow2_image_close(pool[i].img);
            pool[i].img = NULL;
        }
        pthread_mutex_destroy(&pool[i].lock);
    }
    n_slots = 0;
}

/* Open the pool now, so that errors are seen before the server starts listening. */
static int qsnap_get_ready(void)
{
    unsigned want = writable ? 1 : cfg_handles;
    qcow2_info info;

    for (unsigned i = 0; i < want; i++) {
        if (open_one(&pool[i].img) != 0) {
            qsnap_cleanup();
            return -1;
        }
        pthread_mutex_init(&pool[i].lock, NULL);
        n_slots = i + 1;
    }
    img_size = qcow2_image_size(pool[0].img);
    img_cluster = qcow2_image_cluster_size(pool[0].img);
    qcow2_image_get_info(pool[0].img, &info);
    /* Zero writes that only touch metadata: a hole in a raw file, zero
       clusters (or subclusters) in qcow2 v3; v2 has no zero flag. */
    if (info.format == QCOW2_FORMAT_RAW)
        img_zero_unit = 1;
    else if (info.qcow2_version >= 3)
        img_zero_unit = info.extended_l2 ? img_cluster / 32 : img_cluster;
    else
        img_zero_unit = 0;
    return 0;
}

static int qsnap_thread_model(void)
{
    return NBDKIT_THREAD_MODEL_PARALLEL;
}

/* Take a handle: a free one if there is one, else wait for this thread's own. */
static struct slot *take(void)
{
    static __thread int mine = -1;

    if (mine < 0 || (unsigned)mine >= n_slots) {
        pthread_mutex_lock(&next_lock);
        mine = (int)(next_slot++ % n_slots);
        pthread_mutex_unlock(&next_lock);
    }
    for (unsigned i = 0; i < n_slots; i++) {
        struct slot *sl = &pool[((unsigned)mine + i) % n_slots];
        if (pthread_mutex_trylock(&sl->lock) == 0)
            return sl;
    }
    pthread_mutex_lock(&pool[mine].lock);
    return &pool[mine];
}

static void give(struct slot *sl)
{
    pthread_mutex_unlock(&sl->lock);
}

static void *qsnap_open(int readonly)
{
    (void)readonly;
    return &pool; /* every connection shares the pool */
}

static int64_t qsnap_get_size(void *h)
{
    (void)h;
    return (int64_t)img_size;
}

static int qsnap_block_size(void *h, uint32_t *minimum, uint32_t *preferred, uint32_t *maximum)
{
    (void)h;
    *minimum = 1;
    *preferred = img_cluster < 4096 ? 4096 : img_cluster;
    *maximum = 0xffffffff;
    return 0;
}

static int qsnap_can_write(void *h)
{
    (void)h;
    return writable;
}

static int qsnap_can_flush(void *h)
{
    (void)h;
    return writable;
}

static int qsnap_can_trim(void *h)
{
    (void)h;
    return writable;
}

static int qsnap_can_zero(void *h)
{
    (void)h;
    return writable;
}

static int qsnap_can_fast_zero(void *h)
{
    (void)h;
    return writable && img_zero_unit != 0;
}

static int qsnap_can_fua(void *h)
{
    (void)h;
    return writable ? NBDKIT_FUA_NATIVE : NBDKIT_FUA_NONE;
}

static int qsnap_can_multi_conn(void *h)
{
    (void)h;
    return 1;
}

static int qsnap_can_extents(void *h)
{
    (void)h;
    return 1;
}

static int qsnap_is_rotational(void *h)
{
    (void)h;
    return 0;
}

static int qsnap_pread(void *h, void *buf, uint32_t count, uint64_t offset, uint32_t flags)
{
    struct slot *sl = take();
    int rc = qcow2_image_read(sl->img, buf, count, offset);

    (void)h;
    (void)flags;
    give(sl);
    return rc ? fail(rc, "read") : 0;
}

/* After a write with FUA: make it durable before the reply. */
static int finish(struct slot *sl, int rc, uint32_t flags, const char *what)
{
    if (rc == 0 && (flags & NBDKIT_FLAG_FUA))
        rc = qcow2_image_flush(sl->img);
    if (rc) {
        fail(rc, what);
        give(sl);
        return -1;
    }
    give(sl);
    return 0;
}

static int qsnap_pwrite(void *h, const void *buf, uint32_t count, uint64_t offset, uint32_t flags)
{
    struct slot *sl = take();

    (void)h;
    return finish(sl, qcow2_image_write(sl->img, buf, count, offset), flags, "write");
}

static int qsnap_flush(void *h, uint32_t flags)
{
    struct slot *sl = take();
    int rc = qcow2_image_flush(sl->img);

    (void)h;
    (void)flags;
    give(sl);
    return rc ? fail(rc, "flush") : 0;
}

static int qsnap_trim(void *h, uint32_t count, uint64_t offset, uint32_t flags)
{
    struct slot *sl = take();

    (void)h;
    return finish(sl, qcow2_image_discard(sl->img, offset, count), flags, "trim");
}

/* Whether zeroing [offset, offset + count) needs no data written. */
static bool zero_is_fast(uint32_t count, uint64_t offset)
{
    uint64_t end = offset + count;

    if (!img_zero_unit)
        return false;
    return offset % img_zero_unit == 0 && (end % img_zero_unit == 0 || end == img_size);
}

static int qsnap_zero(void *h, uint32_t count, uint64_t offset, uint32_t flags)
{
    struct slot *sl;

    (void)h;
    if ((flags & NBDKIT_FLAG_FAST_ZERO) && !zero_is_fast(count, offset)) {
        nbdkit_set_error(ENOTSUP);
        return -1;
    }
    sl = take();
    return finish(sl,
                  qcow2_image_write_zeroes(sl->img, offset, count,
                                           flags & NBDKIT_FLAG_MAY_TRIM ? QCOW2_ZERO_MAY_UNMAP : 0),
                  flags, "zero");
}

/* Block status from the image's map: data or a hole, reads as zero or not. */
static int qsnap_extents(void *h, uint32_t count, uint64_t offset, uint32_t flags,
                         struct nbdkit_extents *extents)
{
    struct slot *sl = take();
    uint64_t end = offset + count;
    int rc = 0;

    (void)h;
    while (offset < end) {
        qcow2_extent e;
        uint32_t type = 0;

        rc = qcow2_image_block_status(sl->img, NULL, offset, end - offset, &e);
        if (rc)
            break;
        if (!(e.flags & QCOW2_EXT_DATA))
            type |= NBDKIT_EXTENT_HOLE;
        if ((e.flags & QCOW2_EXT_ZERO) || !(e.flags & QCOW2_EXT_PRESENT))
            type |= NBDKIT_EXTENT_ZERO;
        if (nbdkit_add_extent(extents, e.start, e.length, type) == -1) {
            give(sl);
            return -1;
        }
        offset = e.start + e.length;
        if (flags & NBDKIT_FLAG_REQ_ONE)
            break;
    }
    give(sl);
    return rc ? fail(rc, "block status") : 0;
}

static struct nbdkit_plugin plugin = {
    .name = "qsnap",
    .longname = "qsnap: qcow2 images and snapshot trees (libqcow2)",
    .version = QCOW2_VERSION_STRING,
    .description = "Serve a qcow2 or raw image, or a snapshot or branch of a qsnap tree",
    .unload = qsnap_unload,
    .config = qsnap_config,
    .config_complete = qsnap_config_complete,
    .config_help = qsnap_config_help,
    .magic_config_key = "file",
    .dump_plugin = qsnap_dump_plugin,
    .thread_model = qsnap_thread_model,
    .get_ready = qsnap_get_ready,
    .cleanup = qsnap_cleanup,
    .open = qsnap_open,
    .get_size = qsnap_get_size,
    .block_size = qsnap_block_size,
    .can_write = qsnap_can_write,
    .can_flush = qsnap_can_flush,
    .can_trim = qsnap_can_trim,
    .can_zero = qsnap_can_zero,
    .can_fast_zero = qsnap_can_fast_zero,
    .can_fua = qsnap_can_fua,
    .can_multi_conn = qsnap_can_multi_conn,
    .can_extents = qsnap_can_extents,
    .is_rotational = qsnap_is_rotational,
    .pread = qsnap_pread,
    .pwrite = qsnap_pwrite,
    .flush = qsnap_flush,
    .trim = qsnap_trim,
    .zero = qsnap_zero,
    .extents = qsnap_extents,
    .errno_is_preserved = 0,
};

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
/* nbdkit's entry point, defined by the macro below (declared for -Wmissing-prototypes). */
NBDKIT_DLL_PUBLIC struct nbdkit_plugin *plugin_init(void);
NBDKIT_REGISTER_PLUGIN(plugin)
