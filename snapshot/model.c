/*
 * The store's model in memory, and its text form: the meta file of store
 * versions 1 and 2, and the form of meta.log's records and of the journal's
 * models in every version (version 3's meta file is binary: metabin.c).
 *
 * FORMAT (one record a line, fields separated by one space, values
 * percent-encoded; unknown keys are an error: the version says what is known)
 *
 *   qsnap-store 1
 *   gen N
 *   seq N
 *   disk PATH
 *   current NAME                  (absent before the first snapshot)
 *   below RECORDS                 (the disk's own backing chain as the store
 *                                  was made on it: fingerprint records with
 *                                  paths, one a line, qsnap__fprec_parse;
 *                                  absent: none, or a store made before it
 *                                  was recorded)
 *   layer ID file=PATH fmt=raw|qcow2 backing=ID|0 frozen=0|1 disk=0|1
 *         [fp=HEX32 size=N mtime=NS] [fpd=HEX32] [vsize=N]
 *                                 (vsize: the virtual size of a frozen qcow2
 *                                  layer, recorded with its fingerprints; a
 *                                  store without it still parses)
 *   node ID parent=ID|0 layer=ID created=T [name=NAME] [desc=TEXT] [state=PATH]
 *        [sfp=RECORD]             (the state file's fingerprint record, taken
 *                                  when it was copied into the store; absent
 *                                  for one an older qsnap hard-linked there)
 *        [internal=SNAPNAME]      (an internal node: its content is the qcow2
 *                                  snapshot SNAPNAME inside layer ID, a branch
 *                                  head; files without the field still parse)
 *        [deps=1]                 (an unnamed node only for what is built on
 *                                  it: it goes when nothing is; the meta file
 *                                  is then version 4)
 *   branch NAME head=ID base=ID|0 created=T
 *   end
 *
 * The "end" line proves the file is whole. Every value is checked when read:
 * the file is input, like image bytes.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "qsnap_int.h"

/*
 * A large pool (a big store's meta file) is mapped on its own, aligned to
 * 2 MiB and marked for transparent huge pages: reading a file into fresh 4
 * KiB pages takes a page fault and, on some virtual machines, a costly first
 * touch per page, which cost more than everything else a command does with a
 * 1 MB meta file. Where huge pages are not to be had it is an ordinary
 * mapping.
 */
#define POOL_MAP_MIN (256u << 10)
#define POOL_ALIGN ((size_t)2 << 20)

static struct qsnap__pool *pool_map(size_t bytes, size_t *mapped)
{
    size_t size = (bytes + POOL_ALIGN - 1) & ~(POOL_ALIGN - 1), head;
    char *raw = mmap(NULL, size + POOL_ALIGN, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), *p;

    if (raw == MAP_FAILED)
        return NULL;
    p = (char *)(((uintptr_t)raw + POOL_ALIGN - 1) & ~(uintptr_t)(POOL_ALIGN - 1));
    head = (size_t)(p - raw);
    if (head)
        munmap(raw, head);
    munmap(p + size, POOL_ALIGN - head);
    (void)madvise(p, size, MADV_HUGEPAGE);
    *mapped = size;
    return (struct qsnap__pool *)(void *)p;
}

struct qsnap__pool *qsnap__pool_new(size_t len)
{
    size_t bytes = sizeof(struct qsnap__pool) + len + 1, mapped = 0;
    struct qsnap__pool *p = NULL;

    if (bytes >= POOL_MAP_MIN)
        p = pool_map(bytes, &mapped);
    if (!p && !(p = malloc(bytes)))
        return NULL;
    p->refs = 1;
    p->len = len;
    p->mapped = mapped;
    p->data[len] = '\0';
    return p;
}

void qsnap__pool_unref(struct qsnap__pool *p)
{
    if (!p || __atomic_sub_fetch(&p->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    if (p->mapped)
        munmap(p, p->mapped);
    else
        free(p);
}

static bool pooled(const struct qsnap__model *m, const char *str)
{
    uintptr_t a = (uintptr_t)str, b;

    if (!m->pool)
        return false;
    b = (uintptr_t)m->pool->data;
    return a >= b && a - b < m->pool->len;
}

void qsnap__str_free(const struct qsnap__model *m, char *str)
{
    if (str && !pooled(m, str))
        free(str);
}

void qsnap__model_free(struct qsnap__model *m)
{
    for (size_t i = 0; i < m->nl; i++)
        qsnap__str_free(m, m->layers[i].file);
    for (size_t i = 0; i < m->nn; i++) {
        qsnap__str_free(m, m->nodes[i].name);
        qsnap__str_free(m, m->nodes[i].desc);
        qsnap__str_free(m, m->nodes[i].state);
        qsnap__str_free(m, m->nodes[i].sfp);
        qsnap__str_free(m, m->nodes[i].internal);
    }
    for (size_t i = 0; i < m->nb; i++)
        qsnap__str_free(m, m->branches[i].name);
    free(m->layers);
    free(m->nodes);
    free(m->branches);
    qsnap__str_free(m, m->disk);
    qsnap__str_free(m, m->current);
    qsnap__str_free(m, m->below);
    qsnap__pool_unref(m->pool);
    memset(m, 0, sizeof(*m));
}

/* A string of src for dst, which shares src's pool: the same pointer when in it. */
static bool copy_str(const struct qsnap__model *src, char **dst, const char *str)
{
    if (!str || pooled(src, str)) {
        *dst = (char *)(uintptr_t)str;
        return true;
    }
    return (*dst = strdup(str)) != NULL;
}

int qsnap__model_clone(struct qsnap__model *dst, const struct qsnap__model *src)
{
    bool ok = true;

    memset(dst, 0, sizeof(*dst));
    dst->gen = src->gen;
    dst->seq = src->seq;
    dst->pool = src->pool;
    if (dst->pool)
        __atomic_add_fetch(&dst->pool->refs, 1, __ATOMIC_RELAXED);
    /* As much room as growing them would give (qsnap__add_*): the first record a plan adds
     * does not move the arrays. */
    dst->layers = malloc(qsnap__array_cap(src->nl + 1) * sizeof(*dst->layers));
    dst->nodes = malloc(qsnap__array_cap(src->nn + 1) * sizeof(*dst->nodes));
    dst->branches = malloc(qsnap__array_cap(src->nb + 1) * sizeof(*dst->branches));
    if (!dst->layers || !dst->nodes || !dst->branches || !copy_str(src, &dst->disk, src->disk) ||
        !copy_str(src, &dst->current, src->current) || !copy_str(src, &dst->below, src->below))
        goto nomem;
    /* The records whole, then each string: shared when in the pool, else copied. A
     * failure leaves the strings not yet copied NULL, so the free below is right. */
    if (src->nl) /* (an empty model's arrays may be NULL) */
        memcpy(dst->layers, src->layers, src->nl * sizeof(*dst->layers));
    if (src->nn)
        memcpy(dst->nodes, src->nodes, src->nn * sizeof(*dst->nodes));
    if (src->nb)
        memcpy(dst->branches, src->branches, src->nb * sizeof(*dst->branches));
    dst->nl = src->nl;
    dst->nn = src->nn;
    dst->nb = src->nb;
    for (size_t i = 0; i < src->nl; i++) {
        if (ok)
            ok = copy_str(src, &dst->layers[i].file, src->layers[i].file);
        else
            dst->layers[i].file = NULL;
    }
    for (size_t i = 0; i < src->nn; i++) {
        const struct qsnap__node *a = &src->nodes[i];
        struct qsnap__node *b = &dst->nodes[i];
        b->name = b->desc = b->state = b->sfp = b->internal = NULL;
        ok = ok && copy_str(src, &b->name, a->name) && copy_str(src, &b->desc, a->desc) &&
             copy_str(src, &b->state, a->state) && copy_str(src, &b->sfp, a->sfp) &&
             copy_str(src, &b->internal, a->internal);
    }
    for (size_t i = 0; i < src->nb; i++) {
        if (ok)
            ok = copy_str(src, &dst->branches[i].name, src->branches[i].name);
        else
            dst->branches[i].name = NULL;
    }
    if (ok)
        return 0;
nomem:
    qsnap__model_free(dst);
    return qsnap__err(QSNAP_ERROR, NULL, "out of memory");
}

struct qsnap__layer *qsnap__layer(const struct qsnap__model *m, unsigned id)
{
    for (size_t i = 0; id && i < m->nl; i++) {
        if (m->layers[i].id == id)
            return &m->layers[i];
    }
    return NULL;
}

struct qsnap__node *qsnap__node(const struct qsnap__model *m, unsigned id)
{
    for (size_t i = 0; id && i < m->nn; i++) {
        if (m->nodes[i].id == id)
            return &m->nodes[i];
    }
    return NULL;
}

/* The first byte first: most names differ there, and a call to strcmp costs more. */
struct qsnap__node *qsnap__node_by_name(const struct qsnap__model *m, const char *name)
{
    for (size_t i = 0; name && i < m->nn; i++) {
        const char *v = m->nodes[i].name;
        if (v && v[0] == name[0] && strcmp(v, name) == 0)
            return &m->nodes[i];
    }
    return NULL;
}

struct qsnap__branch *qsnap__branch_by_name(const struct qsnap__model *m, const char *name)
{
    for (size_t i = 0; name && i < m->nb; i++) {
        const char *v = m->branches[i].name;
        if (v[0] == name[0] && strcmp(v, name) == 0)
            return &m->branches[i];
    }
    return NULL;
}

/* Grow an array by one zeroed element; NULL when out of memory. The size asked
 * for is rounded up to a power of two, so that realloc finds the room it has
 * (no copy, no mremap) between two of them: n appends cost O(n), not O(n^2). */
size_t qsnap__array_cap(size_t n)
{
    size_t cap = 8;

    while (cap < n)
        cap *= 2;
    return cap;
}

static void *grow(void **arr, size_t *n, size_t elem)
{
    size_t cap = qsnap__array_cap(*n + 1);
    char *p;

    p = realloc(*arr, cap * elem);

    if (!p)
        return NULL;
    memset(p + *n * elem, 0, elem);
    *arr = p;
    return p + (*n)++ * elem;
}

/* Like grow, with the capacity kept by the caller: realloc only when it doubles. */
static void *grow_cap(void **arr, size_t *n, size_t *cap, size_t elem)
{
    char *p = *arr;

    if (*n + 1 > *cap) {
        size_t c = *cap < 8 ? 8 : *cap * 2;
        if (!(p = realloc(*arr, c * elem)))
            return NULL;
        *arr = p;
        *cap = c;
    }
    memset(p + *n * elem, 0, elem);
    return p + (*n)++ * elem;
}

struct qsnap__layer *qsnap__add_layer(struct qsnap__model *m)
{
    struct qsnap__layer *l = grow((void **)&m->layers, &m->nl, sizeof(*l));

    if (l)
        l->id = m->seq++;
    return l;
}

struct qsnap__node *qsnap__add_node(struct qsnap__model *m)
{
    struct qsnap__node *n = grow((void **)&m->nodes, &m->nn, sizeof(*n));

    if (n)
        n->id = m->seq++;
    return n;
}

struct qsnap__branch *qsnap__add_branch(struct qsnap__model *m)
{
    return grow((void **)&m->branches, &m->nb, sizeof(struct qsnap__branch));
}

void qsnap__del_layer_at(struct qsnap__model *m, size_t i)
{
    qsnap__str_free(m, m->layers[i].file);
    /* The last takes its place: a constant cost, where moving the rest down would cost
     * the replay of a log a pass over the layers per dropped one. Layers have no order
     * of their own (metalog.c compares them by id). */
    m->layers[i] = m->layers[--m->nl];
}

void qsnap__del_layer(struct qsnap__model *m, unsigned id)
{
    for (size_t i = 0; i < m->nl; i++) {
        if (m->layers[i].id == id) {
            qsnap__del_layer_at(m, i);
            return;
        }
    }
}

static void node_strings_free(const struct qsnap__model *m, const struct qsnap__node *n)
{
    qsnap__str_free(m, n->name);
    qsnap__str_free(m, n->desc);
    qsnap__str_free(m, n->state);
    qsnap__str_free(m, n->sfp);
    qsnap__str_free(m, n->internal);
}

void qsnap__del_node_at(struct qsnap__model *m, size_t i)
{
    node_strings_free(m, &m->nodes[i]);
    /* Keep creation order: nodes are listed in the order they were made. */
    memmove(&m->nodes[i], &m->nodes[i + 1], (m->nn - i - 1) * sizeof(m->nodes[0]));
    m->nn--;
}

void qsnap__del_nodes_marked(struct qsnap__model *m, const bool *drop)
{
    size_t w = 0;

    for (size_t i = 0; i < m->nn; i++) {
        if (drop[i]) {
            node_strings_free(m, &m->nodes[i]);
        } else {
            m->nodes[w++] = m->nodes[i];
        }
    }
    m->nn = w;
}

void qsnap__del_node(struct qsnap__model *m, unsigned id)
{
    for (size_t i = 0; i < m->nn; i++) {
        if (m->nodes[i].id == id) {
            qsnap__del_node_at(m, i);
            return;
        }
    }
}

void qsnap__del_branch_at(struct qsnap__model *m, size_t i)
{
    qsnap__str_free(m, m->branches[i].name);
    memmove(&m->branches[i], &m->branches[i + 1], (m->nb - i - 1) * sizeof(m->branches[0]));
    m->nb--;
}

void qsnap__del_branch(struct qsnap__model *m, const char *name)
{
    for (size_t i = 0; i < m->nb; i++) {
        if (strcmp(m->branches[i].name, name) == 0) {
            qsnap__del_branch_at(m, i);
            return;
        }
    }
}

/* ---- text form ------------------------------------------------------------ */

struct buf {
    char *p;
    size_t len, cap;
    bool oom;
};

static void put(struct buf *b, const char *fmt, ...) QSNAP_PRINTF(2, 3);
static void put(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (b->oom)
        return;
    for (;;) {
        va_start(ap, fmt);
        n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = true;
            return;
        }
        if (b->p && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        {
            size_t cap = (b->cap ? b->cap * 2 : 4096) + (size_t)n;
            char *p = realloc(b->p, cap);
            if (!p) {
                b->oom = true;
                return;
            }
            b->p = p;
            b->cap = cap;
        }
    }
}

/* Append n bytes as they are (the hot path: names and fingerprints, byte by byte). */
static void put_raw(struct buf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->cap - b->len <= n) {
        size_t cap = (b->cap ? b->cap * 2 : 4096) + n;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

/* key, then 16 bytes as 32 lower-case hex digits (a fingerprint). */
static void put_hex16(struct buf *b, const char *key, const uint8_t v[16])
{
    static const char digits[] = "0123456789abcdef";
    char h[32];

    for (int k = 0; k < 16; k++) {
        h[2 * k] = digits[v[k] >> 4];
        h[2 * k + 1] = digits[v[k] & 15];
    }
    put_raw(b, key, strlen(key));
    put_raw(b, h, sizeof(h));
}

static bool plain_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '_' || c == '-' || c == '+' || c == '/' || c == ':' || c == '@';
}

/* A value, percent-encoded (upper-case hex, as "%%%02X" prints it). */
static void put_enc(struct buf *b, const char *s)
{
    static const char digits[] = "0123456789ABCDEF";

    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        size_t run = 0;
        while (c[run] && plain_char(c[run]))
            run++;
        if (run) {
            put_raw(b, (const char *)c, run);
            c += run - 1;
            continue;
        }
        {
            char e[3] = {'%', digits[*c >> 4], digits[*c & 15]};
            put_raw(b, e, 3);
        }
    }
}

static const char *fmt_name(qcow2_format f)
{
    return f == QCOW2_FORMAT_RAW ? "raw" : "qcow2";
}

int qsnap__model_format(const struct qsnap__model *m, char **out)
{
    struct buf b = {NULL, 0, 0, false};

    put(&b, "qsnap-store %u\ngen %" PRIu64 "\nseq %u\ndisk ", QSNAP_TEXT_VERSION, m->gen, m->seq);
    put_enc(&b, m->disk ? m->disk : "");
    put(&b, "\n");
    if (m->current) {
        put(&b, "current ");
        put_enc(&b, m->current);
        put(&b, "\n");
    }
    if (m->below) {
        put(&b, "below ");
        put_enc(&b, m->below);
        put(&b, "\n");
    }
    for (size_t i = 0; i < m->nl; i++) {
        const struct qsnap__layer *l = &m->layers[i];
        put(&b, "layer %u file=", l->id);
        put_enc(&b, l->file);
        put(&b, " fmt=%s backing=%u frozen=%d disk=%d", fmt_name(l->fmt), l->backing, l->frozen,
            l->is_disk);
        if (l->have_fp) {
            put_hex16(&b, " fp=", l->fp);
            put(&b, " size=%" PRIu64 " mtime=%" PRId64, l->size, l->mtime_ns);
        }
        if (l->have_fpd) {
            put_hex16(&b, " fpd=", l->fpd);
        }
        if (l->have_vsize)
            put(&b, " vsize=%" PRIu64, l->vsize);
        put(&b, "\n");
    }
    for (size_t i = 0; i < m->nn; i++) {
        const struct qsnap__node *n = &m->nodes[i];
        put(&b, "node %u parent=%u layer=%u created=%" PRId64, n->id, n->parent, n->layer,
            n->created);
        if (n->name) {
            put(&b, " name=");
            put_enc(&b, n->name);
        }
        if (n->desc) {
            put(&b, " desc=");
            put_enc(&b, n->desc);
        }
        if (n->state) {
            put(&b, " state=");
            put_enc(&b, n->state);
        }
        if (n->sfp) {
            put(&b, " sfp=");
            put_enc(&b, n->sfp);
        }
        if (n->internal) {
            put(&b, " internal=");
            put_enc(&b, n->internal);
        }
        if (n->for_deps)
            put(&b, " deps=1");
        put(&b, "\n");
    }
    for (size_t i = 0; i < m->nb; i++) {
        const struct qsnap__branch *br = &m->branches[i];
        put(&b, "branch ");
        put_enc(&b, br->name);
        put(&b, " head=%u base=%u created=%" PRId64 "\n", br->head, br->base, br->created);
    }
    put(&b, "end\n");
    if (b.oom) {
        free(b.p);
        return qsnap__err(QSNAP_ERROR, NULL, "out of memory");
    }
    *out = b.p;
    return 0;
}

static int hexval(char c)
{
    unsigned u = (unsigned char)c;

    if (u - '0' < 10u)
        return (int)(u - '0');
    u |= 0x20; /* 'A'-'F' to 'a'-'f'; nothing else lands there */
    if (u - 'a' < 6u)
        return (int)(u - 'a' + 10);
    return -1;
}

/* Each byte's value as a hex digit, plus one (0: not a hex digit). */
static const unsigned char hex1[256] = {
    ['0'] = 1, ['1'] = 2, ['2'] = 3, ['3'] = 4, ['4'] = 5, ['5'] = 6, ['6'] = 7, ['7'] = 8,
    ['8'] = 9, ['9'] = 10, ['a'] = 11, ['b'] = 12, ['c'] = 13, ['d'] = 14, ['e'] = 15,
    ['f'] = 16, ['A'] = 11, ['B'] = 12, ['C'] = 13, ['D'] = 14, ['E'] = 15, ['F'] = 16,
};

/* Exactly 32 hex digits into 16 bytes (a fingerprint). */
static bool parse_hex16(const char *s, uint8_t out[16])
{
    const unsigned char *u = (const unsigned char *)s;

    /* A NUL among the 32 is a 0 in the table: a shorter value is refused before u[32]. */
    for (int k = 0; k < 16; k++) {
        unsigned hi = hex1[u[2 * k]], lo = hi ? hex1[u[2 * k + 1]] : 0;
        if (!hi || !lo)
            return false;
        out[k] = (uint8_t)((hi - 1) * 16 + (lo - 1));
    }
    return u[32] == '\0';
}

/* Decode a percent-encoded value; NULL when malformed or holding a NUL. */
static char *decode(const char *s, size_t len)
{
    char *out = malloc(len + 1);
    size_t n = 0;

    if (!out)
        return NULL;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '%') {
            int hi, lo;
            if (i + 2 >= len) { /* "%X" or "%" at the end */
                free(out);
                return NULL;
            }
            hi = hexval(s[i + 1]);
            lo = hexval(s[i + 2]);
            /* No NUL inside a value (a newline is fine: a description may have lines). */
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
                free(out);
                return NULL;
            }
            out[n++] = (char)(hi * 16 + lo);
            i += 2;
        } else if (plain_char((unsigned char)s[i])) {
            out[n++] = s[i];
        } else {
            free(out);
            return NULL;
        }
    }
    out[n] = '\0';
    return out;
}

/* Decimal digits only (no sign, no space), and no overflow. */
static bool parse_u64(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    size_t n = 0;

    if (!*s)
        return false;
    for (; s[n]; n++) {
        unsigned d = (unsigned char)s[n] - '0';
        if (d > 9)
            return false;
        /* 19 digits always fit; only past them is the sum checked (no division per digit:
         * it was much of the cost of reading a big store). */
        if (n >= 19 && (v > UINT64_MAX / 10 || (v == UINT64_MAX / 10 && d > UINT64_MAX % 10)))
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

/* An optional '-', then as parse_u64, in the range of int64_t. */
static bool parse_i64(const char *s, int64_t *out)
{
    bool neg = *s == '-';
    uint64_t v;

    if (!parse_u64(s + neg, &v) || v > (uint64_t)INT64_MAX + neg)
        return false;
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return true;
}

static bool parse_id(const char *s, unsigned *out)
{
    uint64_t v;

    if (!parse_u64(s, &v) || v > 0x7fffffff)
        return false;
    *out = (unsigned)v;
    return true;
}

/* Parse state: one line split into words. */
#define MAX_WORDS 16

/*
 * A word is this key: compared with memcmp over the key and its NUL, which
 * the compiler inlines; the line buffer has KEY_PAD zero bytes after the
 * line, so the compare never reads past it.
 */
#define KEY_PAD 16
#define IS(word, key) (memcmp((word), key, sizeof(key)) == 0)

static int parse_text(struct qsnap__model *m, const char *text, size_t len, const char *what,
                      bool whole, unsigned *version);

int qsnap__model_parse(struct qsnap__model *m, const char *text, size_t len, const char *what)
{
    unsigned version;

    return parse_text(m, text, len, what, true, &version);
}

int qsnap__model_parse_v(struct qsnap__model *m, const char *text, size_t len, const char *what,
                         unsigned *version, bool check)
{
    return parse_text(m, text, len, what, check, version);
}

int qsnap__model_parse_part(struct qsnap__model *m, const char *text, size_t len, const char *what)
{
    unsigned version;

    return parse_text(m, text, len, what, false, &version);
}

/*
 * whole: a model of its own (checked: every reference resolves); else the
 * records of a change (metalog.c), whose references point into the model it
 * changes.
 */
static int parse_text(struct qsnap__model *m, const char *text, size_t len, const char *what,
                      bool whole, unsigned *version)
{
    const char *p = text, *endp = text + len;
    unsigned line_no = 0;
    bool have_header = false, have_end = false, have_gen = false, have_seq = false,
         have_disk = false;
    size_t capl = 0, capn = 0, capb = 0;
    char sline[4096 + KEY_PAD], *big = NULL;
    int rc = 0;

    memset(m, 0, sizeof(*m));
    if (len > QSNAP_MAX_META_BYTES)
        return qsnap__err(QSNAP_EINTEGRITY, "restore it from a backup, or run 'qsnap verify'",
                          "%s: metadata file is larger than %u bytes", what,
                          QSNAP_MAX_META_BYTES);
    while (p < endp && !rc) {
        const char *nl = memchr(p, '\n', (size_t)(endp - p));
        size_t ll = nl ? (size_t)(nl - p) : (size_t)(endp - p);
        char *line = sline;
        char *words[MAX_WORDS];
        int nw = 0;

        line_no++;
        if (!nl)
            goto bad; /* every line ends with a newline: a torn file does not */
        if (ll >= QSNAP_MAX_LINE || have_end)
            goto bad;
        if (ll >= sizeof(sline) - KEY_PAD) {
            /* A long record (a long description): a buffer from the heap, kept. */
            if (!big && !(big = malloc(QSNAP_MAX_LINE + KEY_PAD)))
                goto bad;
            line = big;
        }
        /* No NUL inside a line (memchr: the byte-by-byte look was the cost of a big store). */
        if (memchr(p, '\0', ll))
            goto bad;
        memcpy(line, p, ll);
        memset(line + ll, 0, KEY_PAD);
        p = nl + 1;
        /* Words are separated by runs of spaces. */
        for (size_t i = 0; i < ll;) {
            char *sp;
            if (line[i] == ' ') {
                line[i++] = '\0';
                continue;
            }
            if (nw == MAX_WORDS)
                goto bad;
            words[nw++] = &line[i];
            sp = memchr(&line[i], ' ', ll - i);
            i = sp ? (size_t)(sp - line) : ll;
        }
        if (nw == 0)
            goto bad;
        if (!have_header) {
            uint64_t v;
            if (nw != 2 || strcmp(words[0], "qsnap-store") != 0 || !parse_u64(words[1], &v)) {
                rc = qsnap__err(QSNAP_EINTEGRITY, "check that DISK.qsnap is a qsnap store",
                                "%s: not a qsnap metadata file", what);
                break;
            }
            /* (Versions 3 and 4 are the binary form: qsnap__model_read.) */
            if (v < QSNAP_META_VERSION_MIN || v > QSNAP_TEXT_VERSION) {
                rc = qsnap__err(QSNAP_EINTEGRITY, "use a qsnap that knows this store version",
                                "%s: unknown store version %" PRIu64 " (this qsnap reads %u to %u)",
                                what, v, QSNAP_META_VERSION_MIN, QSNAP_META_VERSION);
                break;
            }
            *version = (unsigned)v;
            have_header = true;
            continue;
        }
        if (IS(words[0], "end") && nw == 1) {
            have_end = true;
        } else if (IS(words[0], "gen") && nw == 2 && parse_u64(words[1], &m->gen)) {
            have_gen = true;
        } else if (IS(words[0], "seq") && nw == 2 && parse_id(words[1], &m->seq)) {
            have_seq = true;
        } else if (IS(words[0], "disk") && nw == 2 && !m->disk) {
            m->disk = decode(words[1], strlen(words[1]));
            if (!m->disk)
                goto bad;
            have_disk = true;
        } else if (IS(words[0], "current") && nw == 2 && !m->current) {
            m->current = decode(words[1], strlen(words[1]));
            if (!m->current)
                goto bad;
        } else if (IS(words[0], "below") && nw == 2 && !m->below) {
            m->below = decode(words[1], strlen(words[1]));
            if (!m->below || !qsnap__fprec_ok(m->below, true))
                goto bad;
        } else if (IS(words[0], "layer") && nw >= 6) {
            struct qsnap__layer *l;
            if (m->nl >= QSNAP_MAX_ITEMS || !(l = grow_cap((void **)&m->layers, &m->nl, &capl, sizeof(*l))))
                goto bad;
            if (!parse_id(words[1], &l->id) || !l->id)
                goto bad;
            for (int w = 2; w < nw; w++) {
                char *eq = strchr(words[w], '=');
                uint64_t v;
                if (!eq)
                    goto bad;
                *eq++ = '\0';
                if (IS(words[w], "file") && !l->file) {
                    if (!(l->file = decode(eq, strlen(eq))) || !l->file[0])
                        goto bad;
                } else if (IS(words[w], "fmt")) {
                    l->fmt = qcow2_format_from_name(eq);
                    if (l->fmt == QCOW2_FORMAT_AUTO)
                        goto bad;
                } else if (IS(words[w], "backing")) {
                    if (!parse_id(eq, &l->backing))
                        goto bad;
                } else if (IS(words[w], "frozen") && parse_u64(eq, &v) && v <= 1) {
                    l->frozen = v;
                } else if (IS(words[w], "disk") && parse_u64(eq, &v) && v <= 1) {
                    l->is_disk = v;
                } else if (IS(words[w], "fp")) {
                    if (!parse_hex16(eq, l->fp))
                        goto bad;
                    l->have_fp = true;
                } else if (IS(words[w], "fpd")) {
                    if (!parse_hex16(eq, l->fpd))
                        goto bad;
                    l->have_fpd = true;
                } else if (IS(words[w], "vsize") && !l->have_vsize && parse_u64(eq, &l->vsize)) {
                    l->have_vsize = true;
                } else if (IS(words[w], "size") && parse_u64(eq, &l->size)) {
                } else if (IS(words[w], "mtime") && parse_i64(eq, &l->mtime_ns)) {
                } else {
                    goto bad;
                }
            }
            if (!l->file || l->fmt == QCOW2_FORMAT_AUTO)
                goto bad;
        } else if (IS(words[0], "node") && nw >= 5) {
            struct qsnap__node *n;
            if (m->nn >= QSNAP_MAX_ITEMS || !(n = grow_cap((void **)&m->nodes, &m->nn, &capn, sizeof(*n))))
                goto bad;
            if (!parse_id(words[1], &n->id) || !n->id)
                goto bad;
            n->layer = 0;
            for (int w = 2; w < nw; w++) {
                char *eq = strchr(words[w], '=');
                if (!eq)
                    goto bad;
                *eq++ = '\0';
                if (IS(words[w], "parent") && parse_id(eq, &n->parent)) {
                } else if (IS(words[w], "layer") && parse_id(eq, &n->layer)) {
                } else if (IS(words[w], "created") && parse_i64(eq, &n->created)) {
                } else if (IS(words[w], "name") && !n->name) {
                    if (!(n->name = decode(eq, strlen(eq))) || qsnap_name_check(n->name))
                        goto bad;
                } else if (IS(words[w], "desc") && !n->desc) {
                    if (!(n->desc = decode(eq, strlen(eq))))
                        goto bad;
                } else if (IS(words[w], "state") && !n->state) {
                    if (!(n->state = decode(eq, strlen(eq))) || !n->state[0])
                        goto bad;
                } else if (IS(words[w], "sfp") && !n->sfp) {
                    if (!(n->sfp = decode(eq, strlen(eq))) || !qsnap__fprec_ok(n->sfp, false))
                        goto bad;
                } else if (IS(words[w], "internal") && !n->internal) {
                    if (!(n->internal = decode(eq, strlen(eq))) || !n->internal[0] ||
                        strlen(n->internal) > QSNAP_MAX_INTERNAL)
                        goto bad;
                } else if (IS(words[w], "deps") && !n->for_deps && !strcmp(eq, "1")) {
                    n->for_deps = true;
                } else {
                    goto bad;
                }
            }
            if (!n->layer || (n->sfp && !n->state))
                goto bad;
        } else if (IS(words[0], "branch") && nw == 5) {
            struct qsnap__branch *br;
            if (m->nb >= QSNAP_MAX_ITEMS ||
                !(br = grow_cap((void **)&m->branches, &m->nb, &capb, sizeof(*br))))
                goto bad;
            if (!(br->name = decode(words[1], strlen(words[1]))) || qsnap_name_check(br->name))
                goto bad;
            for (int w = 2; w < nw; w++) {
                char *eq = strchr(words[w], '=');
                if (!eq)
                    goto bad;
                *eq++ = '\0';
                if (IS(words[w], "head") && parse_id(eq, &br->head)) {
                } else if (IS(words[w], "base") && parse_id(eq, &br->base)) {
                } else if (IS(words[w], "created") && parse_i64(eq, &br->created)) {
                } else {
                    goto bad;
                }
            }
            if (!br->head)
                goto bad;
        } else {
            goto bad;
        }
        continue;
bad:
        rc = qsnap__err(QSNAP_EINTEGRITY,
                        "restore the store's meta file from a backup (the layers under layers/ are untouched)",
                        "%s: line %u is damaged", what, line_no);
    }
    if (!rc && (!have_header || !have_end || !have_gen || !have_seq || !have_disk))
        rc = qsnap__err(QSNAP_EINTEGRITY,
                        "restore the store's meta file from a backup (the layers under layers/ are untouched)",
                        "%s: metadata is truncated or incomplete", what);
    free(big);
    if (!rc && whole)
        rc = qsnap__model_check(m, what);
    if (rc)
        qsnap__model_free(m);
    return rc;
}

/*
 * A walk along next-links (backing, or parent) from every item: each item is
 * visited once (state 1 while on the current path, 2 when known to end), so
 * a loop is found in linear time however deep the tree is. next[i] is the
 * index item i links to, or -1.
 */
static bool has_loop(size_t n, const long *next, unsigned char *state, size_t *bad)
{
    memset(state, 0, n);
    for (size_t i = 0; i < n; i++) {
        size_t j = i;

        while (state[j] == 0) {
            state[j] = 1;
            if (next[j] < 0)
                break;
            j = (size_t)next[j];
        }
        if (state[j] == 1 && next[j] >= 0 && state[(size_t)next[j]] == 1) {
            *bad = j;
            return true;
        }
        /* Mark the path just walked as ending well. */
        for (j = i; state[j] == 1;) {
            state[j] = 2;
            if (next[j] < 0)
                break;
            j = (size_t)next[j];
        }
    }
    return false;
}

int qsnap__model_check(const struct qsnap__model *m, const char *what)
{
    const char *hint = "restore the store's meta file from a backup (the layers under layers/ are untouched)";
    size_t nmax = m->nl > m->nn ? m->nl : m->nn, bad = 0, ndisk = 0;
    bool back = true; /* every link so far goes to an earlier record: no loop possible */
    const size_t ls = sizeof(m->layers[0]), ns = sizeof(m->nodes[0]);
    const unsigned *lid = m->layers ? &m->layers[0].id : NULL,
                   *nid = m->nodes ? &m->nodes[0].id : NULL;
    struct qsnap__index x;
    unsigned char *state = calloc(nmax + 1, 1);
    long *next = malloc((nmax + 1) * sizeof(*next));
    int rc = qsnap__index_build(&x, m, true);

    if (!rc && (!state || !next))
        rc = qsnap__err(QSNAP_ERROR, NULL, "out of memory");
    if (rc)
        goto out;
    if (x.dup_layer)
        rc = qsnap__err(QSNAP_EINTEGRITY, hint, "%s: layer %u appears twice", what, x.dup_layer);
    else if (x.dup_node)
        rc = qsnap__err(QSNAP_EINTEGRITY, hint, "%s: node %u appears twice", what, x.dup_node);
    for (size_t i = 0; i < m->nl && !rc; i++) {
        const struct qsnap__layer *l = &m->layers[i];
        next[i] = l->backing ? qsnap__idmap_find(&x.layers, lid, ls, l->backing) : -1;
        back = back && next[i] < (long)i;
        if (l->id >= m->seq)
            rc = qsnap__err(QSNAP_EINTEGRITY, hint, "%s: layer %u has an id past seq", what, l->id);
        else if (l->backing && next[i] < 0)
            rc = qsnap__err(QSNAP_EINTEGRITY, hint, "%s: layer %u is backed by missing layer %u",
                            what, l->id, l->backing);
        else if (strlen(l->file) > QSNAP_MAX_PATH)
            rc = qsnap__err(QSNAP_EINTEGRITY, hint, "%s: layer %u's file name is too long", what,
                            l->id);
        else if (!l->is_disk && (strstr(l->file, "..") || l->file[0] == '/'))
            rc = qsnap__err(QSNAP_EINTEGRITY, hint, "%s: layer %u's file leaves the store", what,
                            l->id);
        else if (l->is_disk && (ndisk++ || !m->disk || strcmp(l->file, m->disk)))
            rc = qsnap__err(QSNAP_EINTEGRITY, hint,
                            "%s: layer %u is marked as the disk but is not the recorded disk", what,
                            l->id);
    }
    /* The disk sits beside the store: "../NAME", nothing else. */
    if (!rc && m->disk &&
        (strncmp(m->disk, "../", 3) || !m->disk[3] || strchr(m->disk + 3, '/') ||
         !strcmp(m->disk + 3, "..") || !strcmp(m->disk + 3, ".")))
        rc = qsnap__err(QSNAP_EINTEGRITY, hint, "%s: the recorded disk is not beside the store",
                        what);
    /* A walk along links that each go to an earlier record ends (the usual model: a
     * layer's backing and a node's parent were made before it); else the walk is needed. */
    if (!rc && !back && has_loop(m->nl, next, state, &bad))
        rc = qsnap__err(QSNAP_EINTEGRITY, hint, "%s: layer %u's backing links loop", what,
                        m->layers[bad].id);
    back = true;
    for (size_t i = 0; i < m->nn && !rc; i++) {
        const struct qsnap__node *n = &m->nodes[i];
        long l = qsnap__idmap_find(&x.layers, lid, ls, n->layer);
        next[i] = n->parent ? qsnap__idmap_find(&x.nodes, nid, ns, n->parent) : -1;
        back = back && next[i] < (long)i;
        if (n->id >= m->seq || !n->layer || l < 0)
            rc = qsnap__err(QSNAP_EINTEGRITY, hint, "%s: node %u refers to a missing layer", what,
                            n->id);
        else if (n->parent && next[i] < 0)
            rc = qsnap__err(QSNAP_EINTEGRITY, hint, "%s: node %u has a missing parent", what,
                            n->id);
        else if ((n->state && strlen(n->state) > QSNAP_MAX_PATH) ||
                 (n->desc && strlen(n->desc) > QSNAP_MAX_DESC) ||
                 (n->internal && strlen(n->internal) > QSNAP_MAX_INTERNAL))
            rc = qsnap__err(QSNAP_EINTEGRITY, hint, "%s: node %u has a field that is too long",
                            what, n->id);
        else if (n->state && (strstr(n->state, "..") || n->state[0] == '/'))
            rc = qsnap__err(QSNAP_EINTEGRITY, hint, "%s: node %u's state file leaves the store",
                            what, n->id);
        else if (n->internal && m->layers[l].fmt != QCOW2_FORMAT_QCOW2)
            rc = qsnap__err(QSNAP_EINTEGRITY, hint,
                            "%s: internal node %u lives in a layer that is not qcow2", what, n->id);
    }
    if (!rc && !back && has_loop(m->nn, next, state, &bad))
        rc = qsnap__err(QSNAP_EINTEGRITY, hint, "%s: node %u's parents loop", what,
                        m->nodes[bad].id);
    for (size_t i = 0; i < m->nb && !rc; i++) {
        const struct qsnap__branch *b = &m->branches[i];
        long h = b->head ? qsnap__idmap_find(&x.layers, lid, ls, b->head) : -1;
        if (h < 0 || m->layers[h].frozen)
            rc = qsnap__err(QSNAP_EINTEGRITY, hint, "%s: branch %s has no writable head", what,
                            b->name);
        else if (b->base && qsnap__idmap_find(&x.nodes, nid, ns, b->base) < 0)
            rc = qsnap__err(QSNAP_EINTEGRITY, hint, "%s: branch %s has a missing base", what,
                            b->name);
    }
    /* Names are unique across snapshots and branches. */
    if (!rc && x.dup_name)
        rc = qsnap__err(QSNAP_EINTEGRITY, hint, "%s: the name %s is used twice", what, x.dup_name);
    if (!rc && m->current && !qsnap__index_branch(&x, m->current))
        rc = qsnap__err(QSNAP_EINTEGRITY, hint, "%s: current branch %s does not exist", what,
                        m->current);
    if (!rc && (!m->disk || !m->disk[0] || strlen(m->disk) > QSNAP_MAX_PATH))
        rc = qsnap__err(QSNAP_EINTEGRITY, hint, "%s: no disk recorded", what);
out:
    qsnap__index_free(&x);
    free(state);
    free(next);
    return rc;
}

size_t qsnap__internal_nodes_in(const struct qsnap__model *m, unsigned layer, char **names)
{
    size_t k = 0, len = 0;
    char *out = NULL;

    for (size_t i = 0; i < m->nn; i++) {
        const struct qsnap__node *n = &m->nodes[i];
        const char *nm;
        char *p;
        if (!n->internal || n->layer != layer)
            continue;
        k++;
        if (!names)
            continue;
        nm = n->name ? n->name : n->internal;
        p = realloc(out, len + strlen(nm) + 3);
        if (!p)
            continue;
        out = p;
        len += (size_t)sprintf(out + len, "%s%s", len ? ", " : "", nm);
    }
    if (names)
        *names = out;
    return k;
}

bool qsnap__name_ok(const char *name)
{
    /* The bytes a name may not hold: controls, space, '/', DEL (and the end, 0). */
#define BAD(b) ((b) < 0x21 || (b) == '/' || (b) == 0x7f)
#define ROW(b) BAD(b), BAD(b + 1), BAD(b + 2), BAD(b + 3), BAD(b + 4), BAD(b + 5), BAD(b + 6), BAD(b + 7)
    static const bool bad[128] = {ROW(0),  ROW(8),  ROW(16), ROW(24), ROW(32), ROW(40),
                                  ROW(48), ROW(56), ROW(64), ROW(72), ROW(80), ROW(88),
                                  ROW(96), ROW(104), ROW(112), ROW(120)};
#undef ROW
#undef BAD
    const unsigned char *c = (const unsigned char *)name, *p;

    if (!c || !c[0] || c[0] == '-' || (c[0] == '.' && (!c[1] || (c[1] == '.' && !c[2]))))
        return false;
    for (p = c; *p >= 128 || !bad[*p]; p++)
        ;
    return !*p && (size_t)(p - c) <= QSNAP_MAX_NAME;
}

int qsnap_name_check(const char *name)
{
    size_t len = name ? strlen(name) : 0;

    if (!len)
        return qsnap__err(QSNAP_EUSAGE, "give a non-empty name", "a name cannot be empty");
    if (len > QSNAP_MAX_NAME)
        return qsnap__err(QSNAP_EUSAGE, NULL, "name '%.20s...' is longer than %u characters",
                          name, QSNAP_MAX_NAME);
    if (name[0] == '-')
        return qsnap__err(QSNAP_EUSAGE, NULL, "name '%s' must not start with '-'", name);
    if (!strcmp(name, ".") || !strcmp(name, ".."))
        return qsnap__err(QSNAP_EUSAGE, NULL, "'%s' is not a valid name", name);
    for (const unsigned char *c = (const unsigned char *)name; *c; c++) {
        if (*c == '/' || *c < 0x21 || *c == 0x7f)
            return qsnap__err(QSNAP_EUSAGE, "use letters, digits and . _ + - @ :",
                              "name '%s' contains '%s'", name,
                              *c == '/' ? "/" : "a space or control character");
    }
    return 0;
}

int qsnap__desc_check(const char *desc, const char *what)
{
    if (desc && strlen(desc) > QSNAP_MAX_DESC)
        return qsnap__err(QSNAP_EUSAGE, "give a shorter description",
                          "%s: the description is longer than %u bytes", what, QSNAP_MAX_DESC);
    return 0;
}

/* ---- fingerprint records --------------------------------------------------- */

char *qsnap__fprec_format(const struct qsnap__fprec *r, const char *path)
{
    static const char digits[] = "0123456789abcdef";
    char h[33], *out = NULL;

    for (int k = 0; k < 16; k++) {
        h[2 * k] = digits[r->fp[k] >> 4];
        h[2 * k + 1] = digits[r->fp[k] & 15];
    }
    h[32] = '\0';
    if (asprintf(&out, "%s:%" PRIu64 ":%" PRId64 "%s%s", h, r->size, r->mtime_ns, path ? ":" : "",
                 path ? path : "") < 0)
        return NULL;
    return out;
}

bool qsnap__fprec_parse(const char **text, bool with_path, struct qsnap__fprec *r)
{
    const char *p = *text, *end = strchr(p, '\n'), *c1, *c2;
    char num[24], hex[33];
    size_t n;

    if (!end)
        end = p + strlen(p);
    memset(r, 0, sizeof(*r));
    if (end - p < 32 + 4 || p[32] != ':')
        return false;
    memcpy(hex, p, 32);
    hex[32] = '\0';
    if (!parse_hex16(hex, r->fp))
        return false;
    p += 33;
    c1 = memchr(p, ':', (size_t)(end - p));
    if (!c1 || (n = (size_t)(c1 - p)) >= sizeof(num))
        return false;
    memcpy(num, p, n);
    num[n] = '\0';
    if (!parse_u64(num, &r->size))
        return false;
    p = c1 + 1;
    c2 = memchr(p, ':', (size_t)(end - p));
    if ((c2 != NULL) != with_path)
        return false;
    n = (size_t)((c2 ? c2 : end) - p);
    if (n >= sizeof(num))
        return false;
    memcpy(num, p, n);
    num[n] = '\0';
    if (!parse_i64(num, &r->mtime_ns))
        return false;
    if (c2) {
        r->path = c2 + 1;
        r->path_len = (size_t)(end - r->path);
        if (!r->path_len)
            return false;
    }
    *text = *end ? end + 1 : end;
    return true;
}

bool qsnap__fprec_ok(const char *value, bool with_path)
{
    struct qsnap__fprec r;
    const char *p = value;

    if (!*p)
        return false;
    while (*p) {
        if (!qsnap__fprec_parse(&p, with_path, &r))
            return false;
        if (!with_path && *p)
            return false; /* one record */
    }
    /* A newline at the very end would leave an empty last line. */
    return p[-1] != '\n';
}
