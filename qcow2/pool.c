/*
 * Table memory shared by the layers of one chain. The metadata caches of a
 * chain (cache.c) take their cluster-sized buffers from one pool, carved out
 * of 2 MiB chunks, instead of one malloc per table:
 *
 *  - a deep chain loads a few tables in each of many layers (a 64-deep chain
 *    read front to back loads 128 L2 tables, 8 MiB). Fresh pages cost one
 *    fault each; chunks are 2 MiB aligned and advised for transparent huge
 *    pages (the first one only in a chain of three layers or more, so a
 *    single image does not hold 2 MiB for one table), so the kernel can
 *    fault one in at once;
 *  - a layer closed while the chain lives on (commit and stream drop
 *    layers) gives its buffers back to the pool, and the next table of any
 *    layer reuses them.
 *
 * The pool also carries the chain's mapping generation: any change to any
 * layer's mapping, or to the chain's shape, bumps it, and the chain maps
 * (read.c) built under an older generation are thrown away.
 *
 * Memory stays bounded by the caches' budgets: the pool only ever holds
 * buffers that some cache asked for, and it is released with the last layer
 * that holds a reference. Buffers larger than POOL_MAX_BUF come from malloc.
 *
 * A released pool's chunks are not unmapped at once: up to STASH_MAX of them
 * wait in a process-wide stash for the next pool. A program that opens one
 * image after another (a snapshot operation opens the same few layers five
 * or ten times) then reads its tables into pages it already has, instead of
 * taking a page fault for every 4 KiB of every table of every open, which
 * cost more than the reads. The stash holds at most STASH_MAX * 2 MiB of
 * what was touched; its buffers are always filled by a read (or zeroed)
 * before use, as a pool's recycled buffers already are.
 * A mutex guards the pool: layers of one chain may end up in another
 * chain's handle after a layer operation.
 */
#include <pthread.h>
#include <sys/mman.h>

#include "qcow2_int.h"

#define POOL_CHUNK (2u << 20)
#define POOL_MAX_BUF (256u << 10)
#define POOL_CLASSES 10 /* 512 B (2^9) .. 256 KiB (2^18) */

struct pool_chunk {
    struct pool_chunk *next;
    void *map; /* what mmap returned, for munmap */
    size_t map_len;
};

#define STASH_MAX 2

/* Chunks of released pools, for the next pool of this process. */
static pthread_mutex_t stash_lock = PTHREAD_MUTEX_INITIALIZER;
static struct pool_chunk *stash;
static unsigned stash_n;

struct qcow2__pool {
    pthread_mutex_t lock;
    unsigned refs;
    struct pool_chunk *chunks; /* newest first */
    uint8_t *cur;              /* carving position in the newest chunk */
    size_t left;               /* bytes left there */
    void *free[POOL_CLASSES];  /* returned buffers, linked through their first bytes */
    uint64_t gen;              /* mapping generation of the chain (read.c) */
    bool deep;                 /* a chain of three or more layers: huge pages from the start */
};

int qcow2__pool_new(struct qcow2__pool **out)
{
    struct qcow2__pool *p = qcow2__calloc(1, sizeof(*p));

    *out = NULL;
    if (!p)
        return qcow2__nomem();
    if (pthread_mutex_init(&p->lock, NULL)) {
        qcow2__free(p);
        return qcow2__nomem();
    }
    p->refs = 1;
    p->gen = 1;
    *out = p;
    return 0;
}

void qcow2__pool_deep(struct qcow2__pool *p)
{
    if (p) {
        pthread_mutex_lock(&p->lock);
        p->deep = true;
        pthread_mutex_unlock(&p->lock);
    }
}

uint64_t qcow2__pool_gen(const struct qcow2__pool *p)
{
    return p ? __atomic_load_n(&p->gen, __ATOMIC_RELAXED) : 0;
}

void qcow2__pool_bump(struct qcow2__pool *p)
{
    if (p)
        __atomic_add_fetch(&p->gen, 1, __ATOMIC_RELAXED);
}

struct qcow2__pool *qcow2__pool_ref(struct qcow2__pool *p)
{
    if (p) {
        pthread_mutex_lock(&p->lock);
        p->refs++;
        pthread_mutex_unlock(&p->lock);
    }
    return p;
}

void qcow2__pool_unref(struct qcow2__pool *p)
{
    unsigned refs;

    if (!p)
        return;
    pthread_mutex_lock(&p->lock);
    refs = --p->refs;
    pthread_mutex_unlock(&p->lock);
    if (refs)
        return;
    while (p->chunks) {
        struct pool_chunk *c = p->chunks;
        p->chunks = c->next;
        pthread_mutex_lock(&stash_lock);
        if (stash_n < STASH_MAX) {
            c->next = stash;
            stash = c;
            stash_n++;
            c = NULL;
        }
        pthread_mutex_unlock(&stash_lock);
        if (c) {
            munmap(c->map, c->map_len);
            qcow2__free(c);
        }
    }
    pthread_mutex_destroy(&p->lock);
    qcow2__free(p);
}

static int size_class(size_t len)
{
    int k = 0;

    if (len > POOL_MAX_BUF || len < 512 || (len & (len - 1)))
        return -1;
    while ((512u << k) < len)
        k++;
    return k;
}

/* A new 2 MiB chunk, aligned to 2 MiB; huge pages advised for all but the first. */
static bool add_chunk(struct qcow2__pool *p)
{
    size_t map_len = 2 * (size_t)POOL_CHUNK;
    struct pool_chunk *c;
    uint8_t *map, *start;

    pthread_mutex_lock(&stash_lock);
    c = stash;
    if (c) {
        stash = c->next;
        stash_n--;
    }
    pthread_mutex_unlock(&stash_lock);
    if (c) { /* a released pool's chunk, its pages already there */
        map = c->map;
    } else {
        c = qcow2__malloc(sizeof(*c));
        if (!c)
            return false;
        map = mmap(NULL, map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (map == MAP_FAILED) {
            qcow2__free(c);
            return false;
        }
    }
    start = (uint8_t *)(((uintptr_t)map + POOL_CHUNK - 1) & ~(uintptr_t)(POOL_CHUNK - 1));
#ifdef MADV_HUGEPAGE
    if (p->chunks || p->deep)
        (void)madvise(start, POOL_CHUNK, MADV_HUGEPAGE); /* a hint: fine if refused */
#endif
    c->map = map;
    c->map_len = map_len;
    c->next = p->chunks;
    p->chunks = c;
    p->cur = start;
    p->left = POOL_CHUNK;
    return true;
}

void *qcow2__pool_get(struct qcow2__pool *p, size_t len)
{
    int k = p ? size_class(len) : -1;
    void *buf = NULL;

    if (k < 0)
        return qcow2__malloc(len);
    pthread_mutex_lock(&p->lock);
    if (p->free[k]) {
        buf = p->free[k];
        memcpy(&p->free[k], buf, sizeof(void *));
    } else if (p->left >= len || add_chunk(p)) {
        buf = p->cur;
        p->cur += len;
        p->left -= len;
    }
    pthread_mutex_unlock(&p->lock);
    return buf;
}

void qcow2__pool_put(struct qcow2__pool *p, void *buf, size_t len)
{
    int k = p ? size_class(len) : -1;

    if (!buf)
        return;
    if (k < 0) {
        qcow2__free(buf);
        return;
    }
    pthread_mutex_lock(&p->lock);
    memcpy(buf, &p->free[k], sizeof(void *));
    p->free[k] = buf;
    pthread_mutex_unlock(&p->lock);
}
