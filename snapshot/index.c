/*
 * A model's records by key: layers and nodes by id, snapshots and branches by
 * name. Built once in time linear in the model's size, then each lookup costs
 * O(1) where qsnap__layer() and friends walk the arrays: what an operation
 * does once per record of a large tree (the graph check of every open, the
 * files a plan touches) uses an index.
 *
 * An index points into the model's arrays: it stays valid while no record is
 * added, removed or moved, and must be built again after that.
 *
 * Ids are kept in a direct table (id -> position) when they are dense, as
 * qsnap's own ids are (every id is below seq, and seq grows by one per
 * record); ids far apart (hostile metadata, say) go to an open-addressing
 * hash table instead, so memory stays proportional to the number of records
 * whatever the ids are. Names always go to a hash table. A slot holds a
 * position + 1; 0 is empty.
 */
#include <stdlib.h>
#include <string.h>

#include "qsnap_int.h"

/* Ids up to this many times the count of records (plus a little) get a direct table. */
#define DENSE_FACTOR 4u
#define DENSE_SLACK 1024u

static size_t pow2_at_least(size_t n)
{
    size_t cap = 16;

    while (cap < n)
        cap *= 2;
    return cap;
}

static size_t id_hash(unsigned id)
{
    return (size_t)((id * UINT64_C(0x9E3779B97F4A7C15)) >> 32);
}

static uint64_t str_hash(const char *s)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325);

    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * UINT64_C(0x100000001b3);
    return h ^ (h >> 29);
}

/* The id of record `at`: ids points at record 0's id, records are stride bytes apart. */
static unsigned id_at(const unsigned *ids, size_t stride, size_t at)
{
    unsigned v;

    memcpy(&v, (const char *)ids + at * stride, sizeof(v));
    return v;
}

static bool idmap_init(struct qsnap__idmap *h, const unsigned *ids, size_t stride, size_t n)
{
    unsigned max = 0;

    for (size_t i = 0; i < n; i++) {
        unsigned v = id_at(ids, stride, i);
        max = v > max ? v : max;
    }
    h->direct = (size_t)max <= DENSE_FACTOR * n + DENSE_SLACK;
    h->cap = h->direct ? (size_t)max + 1 : pow2_at_least(2 * n);
    h->slot = calloc(h->cap, sizeof(*h->slot));
    return h->slot != NULL;
}

long qsnap__idmap_find(const struct qsnap__idmap *h, const unsigned *ids, size_t stride,
                       unsigned id)
{
    if (h->direct)
        return id < h->cap && h->slot[id] ? (long)h->slot[id] - 1 : -1;
    for (size_t k = id_hash(id) & (h->cap - 1); h->slot[k]; k = (k + 1) & (h->cap - 1)) {
        size_t at = h->slot[k] - 1;
        if (id_at(ids, stride, at) == id)
            return (long)at;
    }
    return -1;
}

/* Add record `at` with this id; false when a record with the id is there already. */
static bool idmap_add(struct qsnap__idmap *h, const unsigned *ids, size_t stride, unsigned id,
                      size_t at)
{
    size_t k;

    if (h->direct) {
        if (h->slot[id])
            return false;
        h->slot[id] = (uint32_t)(at + 1);
        return true;
    }
    for (k = id_hash(id) & (h->cap - 1); h->slot[k]; k = (k + 1) & (h->cap - 1)) {
        if (id_at(ids, stride, h->slot[k] - 1) == id)
            return false;
    }
    h->slot[k] = (uint32_t)(at + 1);
    return true;
}

int qsnap__idmap_build(struct qsnap__idmap *h, const unsigned *keys, size_t stride, size_t n,
                       bool (*keep)(const void *arg, size_t i), const void *arg)
{
    memset(h, 0, sizeof(*h));
    if (n > QSNAP_MAX_ITEMS)
        return qsnap__err(QSNAP_ERROR, NULL, "too many records to index");
    if (!idmap_init(h, keys, stride, n))
        return qsnap__err(QSNAP_ERROR, NULL, "out of memory");
    for (size_t i = 0; i < n; i++) {
        unsigned k = id_at(keys, stride, i);
        if (k && (!keep || keep(arg, i)))
            (void)idmap_add(h, keys, stride, k, i); /* the first record with a key wins */
    }
    return 0;
}

/* The name of entry e of a name table: a node's (branches false) or a branch's. */
static const char *name_of(const struct qsnap__model *m, bool branches, size_t e)
{
    return branches ? m->branches[e].name : m->nodes[e].name;
}

/*
 * A name slot holds the entry + 1 in its low NAME_BITS bits and bits of the
 * name's hash above them, so that a probe compares names only when those match.
 */
#define NAME_BITS 20u /* QSNAP_MAX_ITEMS < 2^20 */
#define NAME_ENTRY(v) (((v) & ((1u << NAME_BITS) - 1)) - 1)
#define NAME_TAG(h) ((uint32_t)((h) >> 40) & ~((1u << NAME_BITS) - 1))

/* The entry of table h named so, or -1. */
static long names_find(const struct qsnap__index *x, bool branches, const char *name)
{
    const struct qsnap__idmap *h = branches ? &x->bnames : &x->nnames;
    uint64_t hash;
    uint32_t tag;

    if (!name || !h->slot)
        return -1;
    hash = str_hash(name);
    tag = NAME_TAG(hash);
    for (size_t k = (size_t)hash & (h->cap - 1); h->slot[k]; k = (k + 1) & (h->cap - 1)) {
        size_t e = NAME_ENTRY(h->slot[k]);
        if ((h->slot[k] & ~((1u << NAME_BITS) - 1)) == tag &&
            !strcmp(name_of(x->m, branches, e), name))
            return (long)e;
    }
    return -1;
}

/* Add entry e to its table; false when the table has its name already. */
static bool names_add(struct qsnap__index *x, bool branches, size_t e)
{
    struct qsnap__idmap *h = branches ? &x->bnames : &x->nnames;
    const char *name = name_of(x->m, branches, e);
    uint64_t hash = str_hash(name);
    size_t k = (size_t)hash & (h->cap - 1);
    uint32_t tag = NAME_TAG(hash);

    for (; h->slot[k]; k = (k + 1) & (h->cap - 1)) {
        if ((h->slot[k] & ~((1u << NAME_BITS) - 1)) == tag &&
            !strcmp(name_of(x->m, branches, NAME_ENTRY(h->slot[k])), name))
            return false;
    }
    h->slot[k] = tag | (uint32_t)(e + 1);
    return true;
}

/* An empty name table for n names (half full at most); false when out of memory. */
static bool names_init(struct qsnap__idmap *h, size_t n)
{
    h->cap = pow2_at_least(2 * n);
    h->slot = calloc(h->cap, sizeof(*h->slot));
    return h->slot != NULL;
}

int qsnap__index_build(struct qsnap__index *x, const struct qsnap__model *m, bool names)
{
    const unsigned *lid = m->nl ? &m->layers[0].id : NULL, *nid = m->nn ? &m->nodes[0].id : NULL;

    memset(x, 0, sizeof(*x));
    x->m = m;
    if (m->nl > QSNAP_MAX_ITEMS || m->nn > QSNAP_MAX_ITEMS || m->nb > QSNAP_MAX_ITEMS)
        return qsnap__err(QSNAP_ERROR, NULL, "too many records to index");
    if (!idmap_init(&x->layers, lid, sizeof(m->layers[0]), m->nl) ||
        !idmap_init(&x->nodes, nid, sizeof(m->nodes[0]), m->nn)) {
        qsnap__index_free(x);
        return qsnap__err(QSNAP_ERROR, NULL, "out of memory");
    }
    if (names && (!names_init(&x->nnames, m->nn) || !names_init(&x->bnames, m->nb))) {
        qsnap__index_free(x);
        return qsnap__err(QSNAP_ERROR, NULL, "out of memory");
    }
    for (size_t i = 0; i < m->nl; i++) {
        if (!idmap_add(&x->layers, lid, sizeof(m->layers[0]), m->layers[i].id, i) &&
            !x->dup_layer)
            x->dup_layer = m->layers[i].id;
    }
    for (size_t i = 0; i < m->nn; i++) {
        if (!idmap_add(&x->nodes, nid, sizeof(m->nodes[0]), m->nodes[i].id, i) && !x->dup_node)
            x->dup_node = m->nodes[i].id;
    }
    /* Names are unique across snapshots and branches: the first one found twice, snapshots
     * first, then branches (against both). */
    for (size_t e = 0; names && e < m->nn; e++) {
        if (m->nodes[e].name && !names_add(x, false, e) && !x->dup_name)
            x->dup_name = m->nodes[e].name;
    }
    for (size_t e = 0; names && e < m->nb; e++) {
        bool fresh = names_add(x, true, e);
        if ((!fresh || names_find(x, false, m->branches[e].name) >= 0) && !x->dup_name)
            x->dup_name = m->branches[e].name;
    }
    return 0;
}

int qsnap__index_build_branches(struct qsnap__index *x, const struct qsnap__model *m)
{
    memset(x, 0, sizeof(*x));
    x->m = m;
    if (m->nb > QSNAP_MAX_ITEMS)
        return qsnap__err(QSNAP_ERROR, NULL, "too many records to index");
    if (!names_init(&x->bnames, m->nb))
        return qsnap__err(QSNAP_ERROR, NULL, "out of memory");
    for (size_t e = 0; e < m->nb; e++) {
        if (!names_add(x, true, e) && !x->dup_name)
            x->dup_name = m->branches[e].name;
    }
    return 0;
}

void qsnap__index_free(struct qsnap__index *x)
{
    free(x->layers.slot);
    free(x->nodes.slot);
    free(x->nnames.slot);
    free(x->bnames.slot);
    memset(x, 0, sizeof(*x));
}

struct qsnap__layer *qsnap__index_layer(const struct qsnap__index *x, unsigned id)
{
    long at = id && x->m->nl
                  ? qsnap__idmap_find(&x->layers, &x->m->layers[0].id, sizeof(x->m->layers[0]), id)
                  : -1;

    return at < 0 ? NULL : &x->m->layers[at];
}

struct qsnap__node *qsnap__index_node(const struct qsnap__index *x, unsigned id)
{
    long at = id && x->m->nn
                  ? qsnap__idmap_find(&x->nodes, &x->m->nodes[0].id, sizeof(x->m->nodes[0]), id)
                  : -1;

    return at < 0 ? NULL : &x->m->nodes[at];
}

struct qsnap__node *qsnap__index_node_by_name(const struct qsnap__index *x, const char *name)
{
    long e = names_find(x, false, name);

    return e >= 0 ? &x->m->nodes[e] : NULL;
}

struct qsnap__branch *qsnap__index_branch(const struct qsnap__index *x, const char *name)
{
    long e = names_find(x, true, name);

    return e >= 0 ? &x->m->branches[e] : NULL;
}

/*
 * Records by a key field (a layer by id, a branch by head, a named snapshot
 * by layer): a walk for the first few lookups, a map built at the next one.
 * A plan touches a handful of files and a chain is short, which a walk finds
 * for less than a map costs to build; a plan that touches many files (a big
 * subtree deleted) or a deep chain builds the map once instead of walking the
 * tree per record.
 */
#define WALKED_LOOKUPS 8u

void qsnap__lookup_init(struct qsnap__lookup *z, const unsigned *keys, size_t stride, size_t n,
                        bool (*keep)(const void *arg, size_t i), const void *arg)
{
    memset(z, 0, sizeof(*z));
    z->keys = n ? keys : NULL;
    z->stride = stride;
    z->n = n;
    z->keep = keep;
    z->arg = arg;
}

int qsnap__lookup_find(struct qsnap__lookup *z, unsigned key, long *at)
{
    *at = -1;
    if (!key || !z->n)
        return 0;
    if (z->used < WALKED_LOOKUPS) {
        z->used++;
        for (size_t i = 0; i < z->n; i++) {
            unsigned k;
            memcpy(&k, (const char *)z->keys + i * z->stride, sizeof(k));
            if (k == key && (!z->keep || z->keep(z->arg, i))) {
                *at = (long)i;
                break;
            }
        }
        return 0;
    }
    if (!z->built) {
        int rc = qsnap__idmap_build(&z->map, z->keys, z->stride, z->n, z->keep, z->arg);
        if (rc)
            return rc;
        z->built = true;
    }
    *at = qsnap__idmap_find(&z->map, z->keys, z->stride, key);
    return 0;
}

void qsnap__lookup_free(struct qsnap__lookup *z)
{
    free(z->map.slot);
    memset(z, 0, sizeof(*z));
}

void qsnap__lookup_layers(struct qsnap__lookup *z, const struct qsnap__model *m)
{
    qsnap__lookup_init(z, m->nl ? &m->layers[0].id : NULL, sizeof(m->layers[0]), m->nl, NULL, NULL);
}

void qsnap__lookup_heads(struct qsnap__lookup *z, const struct qsnap__model *m)
{
    qsnap__lookup_init(z, m->nb ? &m->branches[0].head : NULL, sizeof(m->branches[0]), m->nb, NULL,
                NULL);
}
