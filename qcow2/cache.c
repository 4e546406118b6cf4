/*
 * The metadata cache: one-cluster tables (L2 tables, refcount blocks) kept
 * in memory, read on demand and, for the writer, written back in the order
 * qcow2__metadata_flush() imposes. cluster.c and refcount.c use it; nothing
 * else reads or writes those tables.
 *
 * A table's host offset picks a set of up to CACHE_WAYS slots, replaced
 * least recently used first. Buffers come from the chain's pool (pool.c) on
 * first use, so the
 * memory used is bounded by the budget and by what was touched, never by
 * the virtual size. A dirty slot is never dropped silently: evicting one
 * first runs an ordered metadata flush.
 */
#include <inttypes.h>

#include "qcow2_int.h"

#define CACHE_WAYS 8u

int qcow2__cache_init(qcow2_image *img, struct qcow2__cache *c, uint64_t budget, uint64_t most,
                      const char *what)
{
    uint64_t slots = budget / img->cluster_size;

    /* No more slots than the image has tables (most; UINT64_MAX: no bound): the slot
     * array is zeroed at open and walked at close, so an image with a few tables must
     * not pay for the budget's worth (65,536 slots for 512-byte clusters). At least
     * four, so neighbours and a copy-on-write pair do not thrash. */
    slots = qcow2__min(slots, most);
    slots = qcow2__max(slots, 4);
    slots = qcow2__min(slots, 1u << 16);
    if (slots > CACHE_WAYS)
        slots -= slots % CACHE_WAYS;
    c->slots = qcow2__calloc((size_t)slots, sizeof(*c->slots));
    if (!c->slots)
        return qcow2__nomem();
    c->nb_slots = (uint32_t)slots;
    c->last = 0;
    c->tick = 0;
    c->what = what;
    c->pool = img->pool;
    c->buf_len = (size_t)img->cluster_size;
    return 0;
}

void qcow2__cache_free(struct qcow2__cache *c)
{
    for (uint32_t i = 0; i < c->nb_slots; i++)
        qcow2__pool_put(c->pool, c->slots[i].data, c->buf_len);
    qcow2__free(c->slots);
    c->slots = NULL;
    c->nb_slots = 0;
}

static uint32_t set_first(const qcow2_image *img, const struct qcow2__cache *c, uint64_t off,
                          uint32_t ways)
{
    uint32_t nb_sets = c->nb_slots / ways;
    uint64_t h = (off >> img->cluster_bits) * 0x9e3779b97f4a7c15ull;

    return (uint32_t)((h >> 32) % nb_sets) * ways;
}

int qcow2__cache_get(qcow2_image *img, struct qcow2__cache *c, uint64_t off, bool load,
                     struct qcow2__cslot **out)
{
    struct qcow2__cslot *slot = &c->slots[c->last];
    uint32_t ways, first, victim;
    int rc;

    assert(off != 0);
    if (slot->off == off) {
        slot->used = ++c->tick;
        if (!load) /* a new table in a cluster that held an old one: start empty */
            memset(slot->data, 0, (size_t)img->cluster_size);
        *out = slot;
        return 0;
    }
    ways = (uint32_t)qcow2__min(CACHE_WAYS, c->nb_slots);
    first = set_first(img, c, off, ways);
    victim = first;
    for (uint32_t i = first; i < first + ways; i++) {
        slot = &c->slots[i];
        if (slot->off == off) {
            slot->used = ++c->tick;
            c->last = i;
            if (!load)
                memset(slot->data, 0, (size_t)img->cluster_size);
            *out = slot;
            return 0;
        }
        if (slot->used < c->slots[victim].used)
            victim = i;
    }
    slot = &c->slots[victim];
    if (slot->dirty) {
        rc = qcow2__metadata_flush(img);
        if (rc)
            return rc;
        assert(!slot->dirty);
    }
    if (!slot->data) {
        slot->data = qcow2__pool_get(c->pool, c->buf_len);
        if (!slot->data)
            return qcow2__nomem();
    }
    slot->off = 0;
    if (load) {
        rc = qcow2__io_read(img->io, img->name, slot->data, (size_t)img->cluster_size, off);
        if (rc)
            return rc;
    } else {
        memset(slot->data, 0, (size_t)img->cluster_size);
    }
    slot->off = off;
    slot->checked = false;
    slot->used = ++c->tick;
    c->last = victim;
    *out = slot;
    return 0;
}

void qcow2__cache_drop(struct qcow2__cache *c, uint64_t off)
{
    for (uint32_t i = 0; i < c->nb_slots; i++) {
        if (c->slots[i].off == off) {
            c->slots[i].off = 0;
            c->slots[i].dirty = false;
            c->slots[i].used = 0;
        }
    }
}

int qcow2__cache_writeback(qcow2_image *img, struct qcow2__cache *c)
{
    for (uint32_t i = 0; i < c->nb_slots; i++) {
        struct qcow2__cslot *slot = &c->slots[i];
        int rc;

        if (!slot->dirty)
            continue;
        rc = qcow2__io_write(img->io, img->name, slot->data, (size_t)img->cluster_size, slot->off);
        if (rc)
            return rc;
        slot->dirty = false;
    }
    return 0;
}

bool qcow2__cache_is_dirty(const struct qcow2__cache *c)
{
    for (uint32_t i = 0; i < c->nb_slots; i++) {
        if (c->slots[i].dirty)
            return true;
    }
    return false;
}
