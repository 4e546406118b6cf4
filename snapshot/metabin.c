/*
 * The store's meta file, versions 3 and 4: the model in a binary form that is
 * read without parsing (the text form took most of a command's time at 10,000
 * snapshots). meta.log's records and the journal keep the text form.
 * Version 4 is written only for a model that needs it (a fingerprint record
 * below, or a node kept only for its dependents), so that a qsnap that does
 * not know those refuses the store by its version (it would drop the records,
 * keep such a node for ever, or write the flag away); otherwise version 3.
 *
 * LAYOUT (integers little-endian; offsets in bytes)
 *
 *   0   "qsnap-store 3\n"   (an older qsnap reads this line and refuses the
 *                            store by its version), or "qsnap-store 4\n":
 *                            the same layout, where two fields that version
 *                            3 keeps 0 are strings and bit 31 of a node's
 *                            layer is a flag (below). A model that has none
 *                            of them is written as version 3, so a qsnap
 *                            that reads only 3 still opens it.
 *   14  2 zero bytes
 *   16  u64 check           XXH3-64 (seed 0) of bytes 24 to the end
 *   24  u64 gen
 *   32  u32 seq             next id for layers and nodes
 *   36  u32 nl, 40 u32 nn, 44 u32 nb     counts of layers, nodes, branches
 *   48  u32 strs            bytes of the string table
 *   52  u32 disk            string (below)
 *   56  u32 current         string, or 0 before the first snapshot
 *   60  u32 0               version 4: below, string, or 0 (the disk's own
 *                            backing chain's fingerprint records)
 *   64  nl layer records of 72 bytes:
 *         0 u32 id, 4 u32 file (string), 8 u32 backing (0: none),
 *         12 u8 fmt (0 raw, 1 qcow2), 13 u8 flags (1 frozen, 2 the disk,
 *         4 fp/size/mtime known, 8 fpd known, 16 vsize known), 14 u16 0,
 *         16 fp[16], 32 fpd[16], 48 u64 size, 56 i64 mtime (ns), 64 u64 vsize
 *       nn node records of 40 bytes:
 *         0 u32 id, 4 u32 parent (0: root), 8 u32 layer (version 4: bit 31
 *         set: the node is kept only for the snapshots built on it, and
 *         goes with the last of them), 12 u32 name,
 *         16 u32 desc, 20 u32 state, 24 u32 internal (strings, 0: none),
 *         28 u32 0 (version 4: sfp, string: the state file's fingerprint
 *         record, or 0), 32 i64 created (seconds)
 *       nb branch records of 24 bytes:
 *         0 u32 name (string), 4 u32 head (layer id), 8 u32 base (node id,
 *         0: none), 12 u32 0, 16 i64 created
 *       the string table: strs bytes, the first and the last 0; a string is
 *         its offset in the table and ends at the next 0 byte; offset 0 is
 *         "none".
 *   The file ends with the string table: its size is exactly
 *   64 + 72 nl + 40 nn + 24 nb + strs.
 *
 * Read, it is hostile input like the text form: the checksum finds damage,
 * and every count, offset, flag and string is checked as the text form's
 * parser checks its fields, then the graph (qsnap__model_check). The model's
 * strings point into the file's bytes, which it keeps (struct qsnap__pool).
 */
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "qsnap_int.h"

#define HEAD 64u
#define LREC 72u
#define NREC 40u
#define BREC 24u

#define F_FROZEN 1u
#define F_DISK 2u
#define F_FP 4u
#define F_FPD 8u
#define F_VSIZE 16u

#define N_FOR_DEPS 0x80000000u /* version 4: bit 31 of a node's layer (ids stop below it) */

static void put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const unsigned char *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

/* ---- writing -------------------------------------------------------------- */

unsigned qsnap__model_version(const struct qsnap__model *m)
{
    if (m->below)
        return 4;
    for (size_t i = 0; i < m->nn; i++) {
        if (m->nodes[i].sfp || m->nodes[i].for_deps)
            return 4;
    }
    return 3;
}

struct strtab {
    unsigned char *p;
    size_t len;
};

/* Append s (or nothing for NULL: offset 0) and return its offset. */
static uint32_t add_str(struct strtab *t, const char *s)
{
    size_t n;
    uint32_t off;

    if (!s)
        return 0;
    n = strlen(s) + 1;
    off = (uint32_t)t->len;
    memcpy(t->p + t->len, s, n);
    t->len += n;
    return off;
}

static size_t str_bytes(const char *s)
{
    return s ? strlen(s) + 1 : 0;
}

int qsnap__model_bin_format(const struct qsnap__model *m, char **out, size_t *len)
{
    size_t strs = 2 + str_bytes(m->disk) + str_bytes(m->current), total;
    unsigned char *f, *r;
    struct strtab t;

    *out = NULL;
    *len = 0;
    for (size_t i = 0; i < m->nl; i++)
        strs += str_bytes(m->layers[i].file);
    bool v4 = qsnap__model_version(m) == 4;

    for (size_t i = 0; i < m->nn; i++)
        strs += str_bytes(m->nodes[i].name) + str_bytes(m->nodes[i].desc) +
                str_bytes(m->nodes[i].state) + str_bytes(m->nodes[i].sfp) +
                str_bytes(m->nodes[i].internal);
    strs += str_bytes(m->below);
    for (size_t i = 0; i < m->nb; i++)
        strs += str_bytes(m->branches[i].name);
    total = HEAD + LREC * m->nl + NREC * m->nn + BREC * m->nb + strs;
    if (m->nl > QSNAP_MAX_ITEMS || m->nn > QSNAP_MAX_ITEMS || m->nb > QSNAP_MAX_ITEMS ||
        total > QSNAP_MAX_META_BYTES)
        return qsnap__err(QSNAP_ERROR, NULL, "the tree is too large for a store's meta file");
    f = calloc(1, total);
    if (!f)
        return qsnap__err(QSNAP_ERROR, NULL, "out of memory");
    t.p = f + total - strs;
    t.len = 1; /* offset 0: "none" */
    memcpy(f, v4 ? QSNAP_BIN_MAGIC4 : QSNAP_BIN_MAGIC, sizeof(QSNAP_BIN_MAGIC) - 1);
    put64(f + 24, m->gen);
    put32(f + 32, m->seq);
    put32(f + 36, (uint32_t)m->nl);
    put32(f + 40, (uint32_t)m->nn);
    put32(f + 44, (uint32_t)m->nb);
    put32(f + 48, (uint32_t)strs);
    put32(f + 52, add_str(&t, m->disk));
    put32(f + 56, add_str(&t, m->current));
    put32(f + 60, add_str(&t, m->below));
    r = f + HEAD;
    for (size_t i = 0; i < m->nl; i++, r += LREC) {
        const struct qsnap__layer *l = &m->layers[i];
        put32(r, l->id);
        put32(r + 4, add_str(&t, l->file));
        put32(r + 8, l->backing);
        r[12] = l->fmt == QCOW2_FORMAT_RAW ? 0 : 1;
        r[13] = (unsigned char)((l->frozen ? F_FROZEN : 0) | (l->is_disk ? F_DISK : 0) |
                                (l->have_fp ? F_FP : 0) | (l->have_fpd ? F_FPD : 0) |
                                (l->have_vsize ? F_VSIZE : 0));
        memcpy(r + 16, l->fp, 16);
        memcpy(r + 32, l->fpd, 16);
        put64(r + 48, l->size);
        put64(r + 56, (uint64_t)l->mtime_ns);
        put64(r + 64, l->vsize);
    }
    for (size_t i = 0; i < m->nn; i++, r += NREC) {
        const struct qsnap__node *n = &m->nodes[i];
        put32(r, n->id);
        put32(r + 4, n->parent);
        put32(r + 8, n->layer | (n->for_deps ? N_FOR_DEPS : 0));
        put32(r + 12, add_str(&t, n->name));
        put32(r + 16, add_str(&t, n->desc));
        put32(r + 20, add_str(&t, n->state));
        put32(r + 24, add_str(&t, n->internal));
        put32(r + 28, add_str(&t, n->sfp));
        put64(r + 32, (uint64_t)n->created);
    }
    for (size_t i = 0; i < m->nb; i++, r += BREC) {
        const struct qsnap__branch *b = &m->branches[i];
        put32(r, add_str(&t, b->name));
        put32(r + 4, b->head);
        put32(r + 8, b->base);
        put64(r + 16, (uint64_t)b->created);
    }
    /* The table's last byte stays 0 (calloc): every string ends inside it. */
    put64(f + 16, XXH3_64bits(f + 24, total - 24));
    *out = (char *)f;
    *len = total;
    return 0;
}

/* ---- reading -------------------------------------------------------------- */

struct reader {
    const char *strs; /* the string table */
    uint32_t nstrs;
};

/* String at offset off: NULL for 0; false when off is outside the table. */
static bool str_at(const struct reader *r, uint32_t off, char **out)
{
    if (off >= r->nstrs)
        return false;
    *out = off ? (char *)(uintptr_t)(r->strs + off) : NULL;
    return true;
}

static bool id_ok(uint32_t id)
{
    return id <= 0x7fffffff;
}

static int bin_parse(struct qsnap__model *m, const struct qsnap__pool *pool, bool v4)
{
    const unsigned char *f = (const unsigned char *)pool->data, *r;
    uint64_t nl, nn, nb, strs, need;
    struct reader rd;

    if (pool->len < HEAD || f[14] || f[15] || (!v4 && get32(f + 60)))
        return 1;
    if (get64(f + 16) != XXH3_64bits(f + 24, pool->len - 24))
        return 2;
    nl = get32(f + 36);
    nn = get32(f + 40);
    nb = get32(f + 44);
    strs = get32(f + 48);
    if (nl > QSNAP_MAX_ITEMS || nn > QSNAP_MAX_ITEMS || nb > QSNAP_MAX_ITEMS)
        return 1;
    need = HEAD + LREC * nl + NREC * nn + BREC * nb + strs;
    if (need != pool->len || strs < 2)
        return 1;
    rd.strs = pool->data + (pool->len - strs);
    rd.nstrs = (uint32_t)strs;
    if (rd.strs[0] || rd.strs[strs - 1])
        return 1;
    m->gen = get64(f + 24);
    m->seq = get32(f + 32);
    if (!id_ok(m->seq) || !str_at(&rd, get32(f + 52), &m->disk) || !m->disk || !m->disk[0] ||
        !str_at(&rd, get32(f + 56), &m->current) || (m->current && !qsnap__name_ok(m->current)) ||
        !str_at(&rd, get32(f + 60), &m->below) || (m->below && !qsnap__fprec_ok(m->below, true)))
        return 1;
    /* Room to grow, as qsnap__add_* would make it. */
    m->layers = malloc(qsnap__array_cap((size_t)nl + 1) * sizeof(*m->layers));
    m->nodes = malloc(qsnap__array_cap((size_t)nn + 1) * sizeof(*m->nodes));
    m->branches = malloc(qsnap__array_cap((size_t)nb + 1) * sizeof(*m->branches));
    if (!m->layers || !m->nodes || !m->branches)
        return -1;
    r = f + HEAD;
    for (size_t i = 0; i < nl; i++, r += LREC) {
        struct qsnap__layer *l = &m->layers[i];
        unsigned flags = r[13];
        memset(l, 0, sizeof(*l));
        m->nl = i + 1;
        l->id = get32(r);
        l->backing = get32(r + 8);
        if (!l->id || !id_ok(l->id) || !id_ok(l->backing) || r[12] > 1 || get32(r + 12) >> 16 ||
            flags > 31 || !str_at(&rd, get32(r + 4), &l->file) || !l->file || !l->file[0])
            return 1;
        l->fmt = r[12] ? QCOW2_FORMAT_QCOW2 : QCOW2_FORMAT_RAW;
        l->frozen = flags & F_FROZEN;
        l->is_disk = flags & F_DISK;
        l->have_fp = flags & F_FP;
        l->have_fpd = flags & F_FPD;
        l->have_vsize = flags & F_VSIZE;
        memcpy(l->fp, r + 16, 16);
        memcpy(l->fpd, r + 32, 16);
        l->size = get64(r + 48);
        l->mtime_ns = (int64_t)get64(r + 56);
        l->vsize = get64(r + 64);
    }
    for (size_t i = 0; i < nn; i++, r += NREC) {
        struct qsnap__node *n = &m->nodes[i];
        uint32_t layer = get32(r + 8);
        memset(n, 0, sizeof(*n));
        m->nn = i + 1;
        n->id = get32(r);
        n->parent = get32(r + 4);
        n->for_deps = v4 && (layer & N_FOR_DEPS);
        n->layer = v4 ? layer & ~N_FOR_DEPS : layer;
        n->created = (int64_t)get64(r + 32);
        if (!n->id || !id_ok(n->id) || !id_ok(n->parent) || !n->layer || !id_ok(n->layer) ||
            (!v4 && get32(r + 28)) || !str_at(&rd, get32(r + 12), &n->name) ||
            !str_at(&rd, get32(r + 16), &n->desc) || !str_at(&rd, get32(r + 20), &n->state) ||
            !str_at(&rd, get32(r + 24), &n->internal) || (n->name && !qsnap__name_ok(n->name)) ||
            (n->state && !n->state[0]) || (n->internal && !n->internal[0]) ||
            !str_at(&rd, get32(r + 28), &n->sfp) ||
            (n->sfp && (!n->state || !qsnap__fprec_ok(n->sfp, false))))
            return 1;
    }
    for (size_t i = 0; i < nb; i++, r += BREC) {
        struct qsnap__branch *b = &m->branches[i];
        memset(b, 0, sizeof(*b));
        m->nb = i + 1;
        b->head = get32(r + 4);
        b->base = get32(r + 8);
        b->created = (int64_t)get64(r + 16);
        if (!b->head || !id_ok(b->head) || !id_ok(b->base) || get32(r + 12) ||
            !str_at(&rd, get32(r), &b->name) || !qsnap__name_ok(b->name))
            return 1;
    }
    return 0;
}

int qsnap__model_read(struct qsnap__model *m, struct qsnap__pool *pool, const char *what,
                      unsigned *version, bool check)
{
    const size_t ml = sizeof(QSNAP_BIN_MAGIC) - 1;
    bool v4 = pool->len >= ml && !memcmp(pool->data, QSNAP_BIN_MAGIC4, ml);
    int rc;

    if (!v4 && (pool->len < ml || memcmp(pool->data, QSNAP_BIN_MAGIC, ml))) {
        /* Versions 1 and 2: the text form (its strings are its own). */
        rc = qsnap__model_parse_v(m, pool->data, pool->len, what, version, check);
        qsnap__pool_unref(pool);
        return rc;
    }
    memset(m, 0, sizeof(*m));
    m->pool = pool;
    *version = v4 ? 4 : 3;
    rc = bin_parse(m, pool, v4);
    if (rc < 0) {
        qsnap__model_free(m);
        return qsnap__err(QSNAP_ERROR, NULL, "out of memory");
    }
    if (rc) {
        qsnap__model_free(m);
        return qsnap__err(QSNAP_EINTEGRITY,
                          "restore the store's meta file from a backup (the layers under layers/ are untouched)",
                          "%s: metadata is damaged (%s)", what,
                          rc == 2 ? "its checksum does not match" : "a count, offset or field is out of range");
    }
    if (check) {
        rc = qsnap__model_check(m, what);
        if (rc)
            qsnap__model_free(m);
    }
    return rc;
}
