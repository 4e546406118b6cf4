/*
 * The store's metadata on disk (store version 3 or 4): a base file and a log of
 * changes, so that a tree operation writes what it changed, not the whole
 * tree.
 *
 * FILES
 *   meta      the whole model at some generation G (metabin.c's binary
 *             form, "qsnap-store 3", or 4 while a node has the for_deps flag;
 *             versions 1 and 2, model.c's text
 *             form, are read too); written only whole: a temporary file,
 *             fsync, rename, fsync of the directory.
 *   meta.log  optional: the changes after it, one record per saved
 *             generation:
 *
 *               qsnap-log 2\n
 *               rec GEN LEN CRC\n<LEN bytes>     (CRC: CRC-32 of the LEN bytes,
 *               rec GEN LEN CRC\n<LEN bytes>      8 lower-case hex digits)
 *               ...
 *
 *             The LEN bytes of a record are a change: lines
 *               drop-layer ID / drop-node ID / drop-branch NAME
 *             and place-layer ID INDEX / place-node ID INDEX /
 *             place-branch NAME INDEX (where a new record stands in its
 *             list), then a text in model.c's form ("qsnap-store 2", gen, seq, disk,
 *             [current], the layer, node and branch records that are new or
 *             changed, "end"). Applying it: the dropped records go, each
 *             record given replaces the one with its id (a branch: its name)
 *             or is added at the end, each placed record moves to its
 *             index (in increasing order per kind), and gen, seq, disk and current
 *             are set. The model after the last record is the store's.
 *
 * READING: records whose GEN is not above meta's are already in meta (a
 * compaction was cut short after its rename) and are skipped; each other
 * one must be the next generation. A record that is cut short or fails its
 * CRC at the end of the file, while the journal of an operation is there, is
 * the tail of an append a crash interrupted: not committed, ignored, and cut
 * off by the next append (or by the undo of that operation, before its
 * journal goes). Without a journal it was committed: damage (torn_tail). One
 * that fails with more bytes after it is damage (an error naming the offset).
 *
 * WRITING (one writer: the store lock):
 *   append   ftruncate to the end of the last whole record, write the
 *            record, fdatasync: the commit point is the fdatasync.
 *   new log  (none yet, or one holding skipped records) the header and
 *            the record go to meta.log.tmp, fsync, rename, fsync the
 *            directory.
 *   compact  (first save of a store, a version 1 or 2 meta file, the log past
 *            its bound, or a change that replayed would not give the
 *            target in the same order) meta is rewritten whole with the
 *            new generation, then meta.log is removed (fsync of the
 *            directory). A crash between the two leaves a log whose
 *            records are all skipped.
 * At every point a crash leaves the old model or the new one.
 *
 * An older qsnap reads the first line, "qsnap-store 3", as an unknown store
 * version and refuses the store with that message; a version 1 or 2 meta
 * file (from an older qsnap) is read and becomes version 3 at the first
 * save (a log is allowed beside version 2 and up). The first save of a node
 * with the for_deps flag rewrites meta whole as version 4, so that a qsnap
 * that reads up to 3 refuses the store by its version before it reads a
 * change record with the flag; later records are appended as usual.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qsnap_int.h"

#define META_FILE "meta"
#define LOG_FILE "meta.log"
#define LOG_TMP "meta.log.tmp"
#define LOG_MAGIC "qsnap-log 2\n"
/*
 * A log past this many bytes and past a 64th of the meta file's size is
 * folded into meta. Every command replays the whole log at open, record by
 * record, and a record's replay still walks the model (at 10,000 snapshots
 * about 140,000 instructions, where reading the whole binary meta file takes
 * 4 million): the bound keeps the replay at most about as costly as reading
 * meta (at 10,000 snapshots: about 35 records), while a fold, which rewrites
 * meta (1 MB at that size), comes once per tens of changes.
 */
#define LOG_MIN_BOUND (16u << 10)
#define LOG_META_SHARE 64
/*
 * Node drops the live records may hold before the next change folds the log
 * into meta. A dropped node moves the nodes after it down (they keep their
 * order), so every command's replay of the log pays a pass over the nodes per
 * drop: at 10,000 snapshots, 40 deletes in a row made `current` 3.6 times
 * dearer. A fold costs one write of meta.
 */
#define LOG_MAX_SHIFTS 8u

/* The drop-node lines of a change's text (len bytes). */
static size_t node_drops(const char *text, size_t len)
{
    static const char key[] = "drop-node ";
    size_t n = 0;

    for (const char *p = text, *end = text + len; p < end;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t left = (size_t)(end - p);
        if (left >= sizeof(key) - 1 && !memcmp(p, key, sizeof(key) - 1))
            n++;
        else if ((left < 5 || memcmp(p, "drop-", 5)) && (left < 6 || memcmp(p, "place-", 6)))
            break; /* past the drop and place lines */
        p = nl ? nl + 1 : end;
    }
    return n;
}

static int nomem(void)
{
    return qsnap__err(QSNAP_ERROR, NULL, "out of memory");
}

uint32_t qsnap__crc32(const void *p, size_t n)
{
    /* Reflected polynomial 0xEDB88320, four bits at a time. */
    static const uint32_t t[16] = {0x00000000, 0x1DB71064, 0x3B6E20C8, 0x26D930AC,
                                   0x76DC4190, 0x6B6B51F4, 0x4DB26158, 0x5005713C,
                                   0xEDB88320, 0xF00F9344, 0xD6D6A3E8, 0xCB61B38C,
                                   0x9B64C2B0, 0x86D3D2D4, 0xA00AE278, 0xBDBDF21C};
    const unsigned char *b = p;
    uint32_t c = 0xFFFFFFFFu;

    for (size_t i = 0; i < n; i++) {
        c ^= b[i];
        c = (c >> 4) ^ t[c & 15];
        c = (c >> 4) ^ t[c & 15];
    }
    return ~c;
}

/* ---- comparing models ----------------------------------------------------- */

static bool str_eq(const char *a, const char *b)
{
    return a == b || (a && b && !strcmp(a, b));
}

/*
 * Records with the same bytes are the same record (their strings are the same
 * pointers): a copy of a model that a plan did not touch compares a run at a time.
 * The number of records from a and b on (an and bn left in each), at most
 * SAME_RUN, that have the same bytes: all of them in one comparison, else the
 * longest such prefix in a few more (halving), so that a changed record costs
 * about log2(SAME_RUN) comparisons wherever it lies. 0: the first records differ.
 */
#define SAME_RUN 64u

static size_t same_run(const void *a, const void *b, size_t an, size_t bn, size_t size)
{
    size_t run = an < bn ? an : bn, lo = 0, hi;

    run = run < SAME_RUN ? run : SAME_RUN;
    if (!run || !memcmp(a, b, run * size))
        return run;
    for (hi = run; hi - lo > 1;) { /* the first lo records are the same; the first hi not */
        size_t mid = lo + (hi - lo) / 2;
        if (!memcmp(a, b, mid * size))
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

/*
 * In the id tables' walk of the new model's records of one kind (layers or
 * nodes: each record's id is its first field): the run of them from nrec on
 * (nleft left) that have the bytes of the old model's from orec on (oleft left;
 * orec NULL: nrec's id is new), their places noted in nw (position + 1, nrec
 * being at position j). 0: nrec is compared alone.
 */
_Static_assert(offsetof(struct qsnap__layer, id) == 0 && offsetof(struct qsnap__node, id) == 0,
               "table_run reads a record's id at its start");

static size_t table_run(const void *orec, size_t oleft, const void *nrec, size_t nleft,
                        size_t size, uint32_t *nw, size_t j)
{
    size_t run = orec ? same_run(orec, nrec, oleft, nleft, size) : 0;

    for (size_t r = 0; r < run; r++) {
        unsigned id;
        memcpy(&id, (const char *)nrec + r * size, sizeof(id));
        nw[id] = (uint32_t)(j + r + 1);
    }
    return run;
}

/* Equal as the text form writes them. */
static bool layer_eq(const struct qsnap__layer *a, const struct qsnap__layer *b)
{
    if (a->id != b->id || !str_eq(a->file, b->file) || a->fmt != b->fmt ||
        a->backing != b->backing || a->frozen != b->frozen || a->is_disk != b->is_disk ||
        a->have_fp != b->have_fp || a->have_fpd != b->have_fpd || a->have_vsize != b->have_vsize ||
        (a->have_vsize && a->vsize != b->vsize))
        return false;
    if (a->have_fp && (memcmp(a->fp, b->fp, 16) || a->size != b->size || a->mtime_ns != b->mtime_ns))
        return false;
    return !a->have_fpd || !memcmp(a->fpd, b->fpd, 16);
}

static bool node_eq(const struct qsnap__node *a, const struct qsnap__node *b)
{
    return a->id == b->id && a->parent == b->parent && a->layer == b->layer &&
           a->created == b->created && str_eq(a->name, b->name) && str_eq(a->desc, b->desc) &&
           str_eq(a->state, b->state) && str_eq(a->sfp, b->sfp) &&
           str_eq(a->internal, b->internal) && a->for_deps == b->for_deps;
}

static bool branch_eq(const struct qsnap__branch *a, const struct qsnap__branch *b)
{
    return str_eq(a->name, b->name) && a->head == b->head && a->base == b->base &&
           a->created == b->created;
}

bool qsnap__model_equal(const struct qsnap__model *a, const struct qsnap__model *b)
{
    if (a->gen != b->gen || a->seq != b->seq || !str_eq(a->disk, b->disk) ||
        !str_eq(a->current, b->current) || !str_eq(a->below, b->below) || a->nl != b->nl ||
        a->nn != b->nn || a->nb != b->nb)
        return false;
    for (size_t i = 0, r; i < a->nl; i += r) {
        r = same_run(&a->layers[i], &b->layers[i], a->nl - i, a->nl - i, sizeof(a->layers[i]));
        if (!r && !layer_eq(&a->layers[i], &b->layers[i]))
            return false;
        r += !r;
    }
    for (size_t i = 0, r; i < a->nn; i += r) {
        r = same_run(&a->nodes[i], &b->nodes[i], a->nn - i, a->nn - i, sizeof(a->nodes[i]));
        if (!r && !node_eq(&a->nodes[i], &b->nodes[i]))
            return false;
        r += !r;
    }
    for (size_t i = 0; i < a->nb; i++) {
        if (!branch_eq(&a->branches[i], &b->branches[i]))
            return false;
    }
    return true;
}

/* A table of ids 0..max_id: 1 for those in a or b (either may be NULL); NULL when out of memory. */
static unsigned char *id_marks(unsigned max_id, const struct qsnap__ids *a,
                               const struct qsnap__ids *b)
{
    unsigned char *mark = calloc((size_t)max_id + 1, 1);

    for (size_t i = 0; mark && a && i < a->n; i++) {
        if (a->v[i] <= max_id)
            mark[a->v[i]] = 1;
    }
    for (size_t i = 0; mark && b && i < b->n; i++) {
        if (b->v[i] <= max_id)
            mark[b->v[i]] = 1;
    }
    return mark;
}

/* b's layers by id: position + 1 for ids up to max_id (larger ones are left out); NULL when
 * out of memory. */
static uint32_t *layer_places(const struct qsnap__model *b, unsigned max_id)
{
    uint32_t *at = calloc((size_t)max_id + 1, sizeof(*at));

    for (size_t j = 0; at && j < b->nl; j++) {
        if (b->layers[j].id <= max_id)
            at[b->layers[j].id] = (uint32_t)(j + 1);
    }
    return at;
}

/*
 * a and b the same, where every record of b whose id neither `only` nor `given`
 * names is known to be the same as a's record with its id: the places of all
 * records are compared, the named ones in full. Layers are compared by id, in
 * whatever order: a change that drops several replays to another order than the
 * plan left them in (each drop moves the last layer into the hole, in another
 * sequence), and that is the same model.
 */
static bool equal_known(const struct qsnap__model *a, const struct qsnap__model *b,
                        const struct qsnap__ids *only, const struct qsnap__ids *given)
{
    unsigned max_id = 0;
    unsigned char *mark;
    uint32_t *bpos = NULL; /* b's layers by id, made at the first one out of place */
    bool same = true;

    if (a->gen != b->gen || a->seq != b->seq || !str_eq(a->disk, b->disk) ||
        !str_eq(a->current, b->current) || !str_eq(a->below, b->below) || a->nl != b->nl ||
        a->nn != b->nn || a->nb != b->nb)
        return false;
    for (size_t i = 0; i < a->nl; i++)
        max_id = a->layers[i].id > max_id ? a->layers[i].id : max_id;
    for (size_t i = 0; i < a->nn; i++)
        max_id = a->nodes[i].id > max_id ? a->nodes[i].id : max_id;
    if (max_id > 4 * (a->nl + a->nn) + 1024 || !(mark = id_marks(max_id, only, given)))
        return qsnap__model_equal(a, b);
    for (size_t i = 0, r; same && i < a->nl; i += r) {
        const struct qsnap__layer *x = &a->layers[i], *y = &b->layers[i];
        r = same_run(x, y, a->nl - i, a->nl - i, sizeof(*x));
        if (!r && x->id != y->id) {
            if (!bpos && !(bpos = layer_places(b, max_id))) {
                free(mark);
                return qsnap__model_equal(a, b);
            }
            y = bpos[x->id] ? &b->layers[bpos[x->id] - 1] : NULL;
        }
        same = r || (y && x->id == y->id && (!mark[x->id] || layer_eq(x, y)));
        r += !r;
    }
    /* Looked up by id: and every layer of b is one of a's (counts alone would not tell an
     * id that a has twice). */
    if (same && bpos) {
        uint32_t *apos = layer_places(a, max_id);
        for (size_t j = 0; same && j < b->nl; j++)
            same = apos && b->layers[j].id <= max_id && apos[b->layers[j].id];
        free(apos);
    }
    for (size_t i = 0, r; same && i < a->nn; i += r) {
        const struct qsnap__node *x = &a->nodes[i], *y = &b->nodes[i];
        r = same_run(x, y, a->nn - i, a->nn - i, sizeof(*x));
        same = r || (x->id == y->id && (!mark[x->id] || node_eq(x, y)));
        r += !r;
    }
    for (size_t i = 0; same && i < a->nb; i++)
        same = branch_eq(&a->branches[i], &b->branches[i]);
    free(mark);
    free(bpos);
    return same;
}

/* ---- the text of a change ------------------------------------------------- */

/* Append one element (a shallow copy: the strings stay the new model's). */
static bool push(void **arr, size_t *n, size_t *cap, const void *e, size_t size)
{
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 8;
        void *p = realloc(*arr, c * size);
        if (!p)
            return false;
        *arr = p;
        *cap = c;
    }
    memcpy((char *)*arr + *n * size, e, size);
    (*n)++;
    return true;
}

/* After this many lookups of branch names, the walk of a change indexes them. */
#define BRANCH_WALKS 16u

/*
 * Has m a branch named so: a walk of m's branches for the first few questions,
 * then a lookup in x, built here, so that a change that moves many branches (each
 * asked about) costs time linear in the branches, not their square.
 */
static bool has_branch(const struct qsnap__model *m, struct qsnap__index *x, unsigned *asked,
                       const char *name)
{
    /* Built once, when the count passes the bound (out of memory: walks, as before). */
    if (*asked <= BRANCH_WALKS && ++*asked > BRANCH_WALKS && qsnap__index_build_branches(x, m))
        qsnap__index_free(x);
    if (x->bnames.slot)
        return qsnap__index_branch(x, name) != NULL;
    return qsnap__branch_by_name(m, name) != NULL;
}

/* A branch name as the text form writes it (percent-encoded), after "drop-branch " etc. */
static int put_branch_name(FILE *f, const char *key, const struct qsnap__branch *b,
                           const char *disk, bool with_at, size_t at)
{
    struct qsnap__model one;
    char *t = NULL, *sp, *nl;
    int rc;

    memset(&one, 0, sizeof(one));
    one.branches = (struct qsnap__branch *)(uintptr_t)b;
    one.nb = 1;
    one.disk = (char *)(uintptr_t)disk;
    rc = qsnap__model_format(&one, &t);
    if (rc)
        return rc;
    sp = strstr(t, "\nbranch ");
    nl = sp ? strchr(sp + 8, ' ') : NULL;
    if (sp && nl) {
        fprintf(f, "%s %.*s", key, (int)(nl - (sp + 8)), sp + 8);
        if (with_at)
            fprintf(f, " %zu", at);
        fputc('\n', f);
    }
    free(t);
    return sp && nl ? 0 : qsnap__err(QSNAP_ERROR, NULL, "cannot format a branch name");
}

bool qsnap__ids_add(struct qsnap__ids *set, unsigned id)
{
    return push((void **)&set->v, &set->n, &set->cap, &id, sizeof(id));
}

void qsnap__ids_free(struct qsnap__ids *set)
{
    free(set->v);
    memset(set, 0, sizeof(*set));
}

int qsnap__delta_format(const struct qsnap__model *o, const struct qsnap__model *n, char **out,
                        bool *exact)
{
    return qsnap__delta_format_ex(o, n, out, exact, NULL, NULL);
}

/* Whether the ids of the cnt records at v (each sz bytes, the id first) ascend. */
static bool ids_ascend(const void *v, size_t cnt, size_t sz)
{
    const unsigned char *p = v;
    unsigned prev = 0;

    for (size_t i = 0; i < cnt; i++, p += sz) {
        unsigned id;
        memcpy(&id, p, sizeof(id));
        if (i && id <= prev)
            return false;
        prev = id;
    }
    return true;
}

/*
 * The change of the layers (layers true) or the nodes of o into n's, when the
 * ids of both ascend (as a model keeps them: a new record goes at the end with
 * the next id, a dropped one leaves the others in order): one walk of both in
 * id order finds what the id tables of qsnap__delta_format_ex find, in the same
 * order (new records where n has them, with their place lines, then the drops),
 * without the tables. mark: the ids to compare (NULL: all). False: out of memory.
 */
static bool diff_ascending(const struct qsnap__model *o, const struct qsnap__model *n, bool layers,
                           const struct qsnap__ids *only, struct qsnap__model *part, size_t *cap,
                           FILE *f, struct qsnap__ids *changed)
{
    size_t on = layers ? o->nl : o->nn, nn = layers ? n->nl : n->nn, i = 0, j = 0;
    struct qsnap__ids drops = {NULL, 0, 0};
    unsigned char *mark = NULL;
    unsigned max_id = 0;
    bool ok = true;

    if (only) { /* the ids to compare, below the largest id of either (the last) */
        if (on)
            max_id = layers ? o->layers[on - 1].id : o->nodes[on - 1].id;
        if (nn)
            max_id = (layers ? n->layers[nn - 1].id : n->nodes[nn - 1].id) > max_id
                         ? (layers ? n->layers[nn - 1].id : n->nodes[nn - 1].id)
                         : max_id;
        mark = id_marks(max_id, only, NULL);
        if (!mark)
            return false;
    }

    while (ok && (i < on || j < nn)) {
        unsigned oid = i < on ? (layers ? o->layers[i].id : o->nodes[i].id) : 0;
        unsigned nid = j < nn ? (layers ? n->layers[j].id : n->nodes[j].id) : 0;
        if (i < on && (j >= nn || oid < nid)) { /* not in n: dropped */
            ok = qsnap__ids_add(&drops, oid);
            i++;
            continue;
        }
        if (i < on && oid == nid) { /* in both: compared where it may differ */
            size_t run = layers ? same_run(&o->layers[i], &n->layers[j], on - i, nn - j,
                                           sizeof(*o->layers))
                                : same_run(&o->nodes[i], &n->nodes[j], on - i, nn - j,
                                           sizeof(*o->nodes));
            if (run) {
                i += run;
                j += run;
                continue;
            }
            bool same = (mark && !mark[nid]) ||
                        (layers ? layer_eq(&o->layers[i], &n->layers[j])
                                : node_eq(&o->nodes[i], &n->nodes[j]));
            i++;
            if (same) {
                j++;
                continue;
            }
        } else if (fprintf(f, "place-%s %u %zu\n", layers ? "layer" : "node", nid, j) < 0) {
            ok = false; /* new in n */
        }
        if (ok && layers)
            ok = push((void **)&part->layers, &part->nl, cap, &n->layers[j], sizeof(n->layers[j]));
        else if (ok)
            ok = push((void **)&part->nodes, &part->nn, cap, &n->nodes[j], sizeof(n->nodes[j]));
        if (ok && changed)
            ok = qsnap__ids_add(changed, nid);
        j++;
    }
    for (size_t k = 0; ok && k < drops.n; k++)
        fprintf(f, "drop-%s %u\n", layers ? "layer" : "node", drops.v[k]);
    qsnap__ids_free(&drops);
    free(mark);
    return ok;
}

int qsnap__delta_format_ex(const struct qsnap__model *o, const struct qsnap__model *n, char **out,
                           bool *exact, const struct qsnap__ids *only, struct qsnap__ids *changed)
{
    struct qsnap__model part;
    struct qsnap__index ox, nx; /* o's and n's branch names, once asked about often */
    unsigned asked_o = 0, asked_n = 0;
    size_t capl = 0, capn = 0, capb = 0, i, j;
    char *drops = NULL, *text = NULL;
    size_t dlen = 0;
    FILE *f = open_memstream(&drops, &dlen);
    bool ok = f != NULL;
    int rc = 0;

    *out = NULL;
    *exact = true;
    memset(&part, 0, sizeof(part));
    memset(&ox, 0, sizeof(ox));
    memset(&nx, 0, sizeof(nx));
    part.gen = n->gen;
    part.seq = n->seq;
    part.disk = n->disk;
    part.current = n->current;
    part.below = n->below;
    /* Each kind in id order (always the nodes; the layers until one is dropped, which
     * moves the last into its place): one walk of both models. Else by tables. */
    bool lay_asc = ids_ascend(o->layers, o->nl, sizeof(*o->layers)) &&
                   ids_ascend(n->layers, n->nl, sizeof(*n->layers));
    bool nod_asc = ids_ascend(o->nodes, o->nn, sizeof(*o->nodes)) &&
                   ids_ascend(n->nodes, n->nn, sizeof(*n->nodes));
    if (ok && lay_asc)
        ok = diff_ascending(o, n, true, only, &part, &capl, f, changed);
    if (ok && (!lay_asc || !nod_asc))
    /* Layers and nodes not in id order (a plan may reuse a slot; nodes only in a damaged
     * model) by id, whatever their order: ids index two tables (old, new) of positions + 1.
     * A new record is placed where the new model has it. */
    {
        unsigned max_id = 0;
        uint32_t *ol = NULL, *nw = NULL; /* position + 1 (at most QSNAP_MAX_ITEMS) */
        unsigned char *mark = NULL; /* ids of only: the records compared */
        size_t cnt = (lay_asc ? 0 : o->nl + n->nl) + (nod_asc ? 0 : o->nn + n->nn);
        for (i = 0; !lay_asc && i < o->nl; i++)
            max_id = o->layers[i].id > max_id ? o->layers[i].id : max_id;
        for (i = 0; !lay_asc && i < n->nl; i++)
            max_id = n->layers[i].id > max_id ? n->layers[i].id : max_id;
        for (i = 0; !nod_asc && i < o->nn; i++)
            max_id = o->nodes[i].id > max_id ? o->nodes[i].id : max_id;
        for (i = 0; !nod_asc && i < n->nn; i++)
            max_id = n->nodes[i].id > max_id ? n->nodes[i].id : max_id;
        if (max_id > 4 * cnt + 1024) {
            *exact = false; /* ids far apart: not worth tables; the whole file says it */
        } else {
            ol = calloc((size_t)max_id + 1, sizeof(*ol));
            nw = calloc((size_t)max_id + 1, sizeof(*nw));
            mark = only ? id_marks(max_id, only, NULL) : NULL;
            ok = ol && nw && (!only || mark);
        }
        /* Layers. */
        for (i = 0; ok && *exact && !lay_asc && i < o->nl; i++)
            ol[o->layers[i].id] = (uint32_t)(i + 1);
        for (j = 0; ok && *exact && !lay_asc && j < n->nl; j++) {
            const struct qsnap__layer *x = &n->layers[j];
            size_t at = ol[x->id], run = table_run(at ? &o->layers[at - 1] : NULL, o->nl - at + 1,
                                                   x, n->nl - j, sizeof(*x), nw, j);
            if (run) {
                j += run - 1;
                continue;
            }
            nw[x->id] = (uint32_t)(j + 1);
            if (at && ((mark && !mark[x->id]) || layer_eq(&o->layers[at - 1], x)))
                continue;
            ok = push((void **)&part.layers, &part.nl, &capl, x, sizeof(*x));
            if (ok && changed)
                ok = qsnap__ids_add(changed, x->id);
            if (ok && !ol[x->id])
                fprintf(f, "place-layer %u %zu\n", x->id, j);
        }
        for (i = 0; ok && *exact && !lay_asc && i < o->nl; i++) {
            if (!nw[o->layers[i].id])
                fprintf(f, "drop-layer %u\n", o->layers[i].id);
        }
        /* Nodes (ids are shared with layers: the tables are cleared first). */
        for (i = 0; ok && *exact && !lay_asc && !nod_asc && i < o->nl; i++)
            ol[o->layers[i].id] = 0;
        for (j = 0; ok && *exact && !lay_asc && !nod_asc && j < n->nl; j++)
            nw[n->layers[j].id] = 0;
        for (i = 0; ok && *exact && !nod_asc && i < o->nn; i++)
            ol[o->nodes[i].id] = (uint32_t)(i + 1);
        for (j = 0; ok && *exact && !nod_asc && j < n->nn; j++) {
            const struct qsnap__node *x = &n->nodes[j];
            size_t at = ol[x->id], run = table_run(at ? &o->nodes[at - 1] : NULL, o->nn - at + 1,
                                                   x, n->nn - j, sizeof(*x), nw, j);
            if (run) {
                j += run - 1;
                continue;
            }
            nw[x->id] = (uint32_t)(j + 1);
            if (at && ((mark && !mark[x->id]) || node_eq(&o->nodes[at - 1], x)))
                continue;
            ok = push((void **)&part.nodes, &part.nn, &capn, x, sizeof(*x));
            if (ok && changed)
                ok = qsnap__ids_add(changed, x->id);
            if (ok && !ol[x->id])
                fprintf(f, "place-node %u %zu\n", x->id, j);
        }
        for (i = 0; ok && *exact && !nod_asc && i < o->nn; i++) {
            if (!nw[o->nodes[i].id])
                fprintf(f, "drop-node %u\n", o->nodes[i].id);
        }
        free(ol);
        free(nw);
        free(mark);
    }
    if (ok && *exact && nod_asc)
        ok = diff_ascending(o, n, false, only, &part, &capn, f, changed);
    /* Branches by name: the same name at the same place is the usual case. */
    for (i = 0, j = 0; ok && *exact && (i < o->nb || j < n->nb);) {
        if (i < o->nb && j < n->nb && !strcmp(o->branches[i].name, n->branches[j].name)) {
            if (!branch_eq(&o->branches[i], &n->branches[j]))
                ok = push((void **)&part.branches, &part.nb, &capb, &n->branches[j],
                          sizeof(n->branches[j]));
            i++, j++;
        } else if (i < o->nb && !has_branch(n, &nx, &asked_n, o->branches[i].name)) {
            /* Gone: dropped by its name. */
            rc = put_branch_name(f, "drop-branch", &o->branches[i], n->disk, false, 0);
            if (rc) {
                ok = false;
                break;
            }
            i++;
        } else if (j < n->nb) {
            ok = push((void **)&part.branches, &part.nb, &capb, &n->branches[j],
                      sizeof(n->branches[j]));
            /* A new one goes where the new model has it (a plan may put it in the
             * place of one it removed). */
            if (ok && !has_branch(o, &ox, &asked_o, n->branches[j].name) &&
                put_branch_name(f, "place-branch", &n->branches[j], n->disk, true, j) != 0)
                ok = false;
            j++;
        } else {
            /* An old branch still in the new model, out of place: order differs. */
            *exact = false;
            break;
        }
    }
    if (f && fclose(f) != 0)
        ok = false;
    if (ok && *exact && !rc)
        rc = qsnap__model_format(&part, &text);
    if (!ok && !rc)
        rc = nomem();
    if (!rc && *exact) {
        size_t tl = strlen(text);
        char *all = malloc(dlen + tl + 1);
        if (!all) {
            rc = nomem();
        } else {
            memcpy(all, drops ? drops : "", dlen);
            memcpy(all + dlen, text, tl + 1);
            *out = all;
        }
    }
    free(text);
    free(drops);
    free(part.layers);
    free(part.nodes);
    free(part.branches);
    qsnap__index_free(&ox);
    qsnap__index_free(&nx);
    return rc;
}

static int damaged(const char *what, const char *why)
{
    return qsnap__err(QSNAP_EINTEGRITY,
                      "restore the store from a backup (the layers under layers/ are untouched)",
                      "%s: damaged change record (%s)", what, why);
}

/* A string of the change (src, its own) for a field of m (dst). */
static void take(const struct qsnap__model *m, char **dst, char **src)
{
    qsnap__str_free(m, *dst);
    *dst = *src;
    *src = NULL;
}

/* A percent-encoded branch name, decoded and checked as the text form's parser does. */
static int decode_branch_name(const char *enc, const char *what, char **out)
{
    struct qsnap__model one;
    char *rec = NULL;
    int rc;

    *out = NULL;
    if (asprintf(&rec, "qsnap-store %u\ngen 0\nseq 1\ndisk x\nbranch %s head=1 base=0 created=0\nend\n",
                 QSNAP_TEXT_VERSION, enc) < 0)
        return nomem();
    rc = qsnap__model_parse_part(&one, rec, strlen(rec), what);
    free(rec);
    if (rc)
        return rc;
    if (one.nb == 1) {
        *out = one.branches[0].name;
        one.branches[0].name = NULL;
    }
    qsnap__model_free(&one);
    return *out ? 0 : damaged(what, "a branch name");
}

struct place {
    char kind;   /* 'l'ayer, 'n'ode, 'b'ranch */
    unsigned id; /* layer or node */
    char *name;  /* branch */
    size_t at;
};

/* Move element `from` of an array of n elements of size sz to index `at`. */
static void move_to(void *arr, size_t sz, size_t from, size_t at)
{
    char *a = arr, tmp[sizeof(struct qsnap__node) > sizeof(struct qsnap__layer)
                          ? (sizeof(struct qsnap__node) > sizeof(struct qsnap__branch)
                                 ? sizeof(struct qsnap__node)
                                 : sizeof(struct qsnap__branch))
                          : (sizeof(struct qsnap__layer) > sizeof(struct qsnap__branch)
                                 ? sizeof(struct qsnap__layer)
                                 : sizeof(struct qsnap__branch))];

    memcpy(tmp, a + from * sz, sz);
    if (from > at)
        memmove(a + (at + 1) * sz, a + at * sz, (from - at) * sz);
    else if (from < at)
        memmove(a + from * sz, a + (from + 1) * sz, (at - from) * sz);
    memcpy(a + at * sz, tmp, sz);
}

/*
 * Where m's layers and nodes are, by id, and its branches, by name: made at
 * a change's first lookup and kept through the replay of a whole log (each
 * record would otherwise walk the model to find the records it changes: at
 * 10,000 snapshots a log of a few dozen records cost more than reading meta).
 * pos[id] = position + 1, for ids below n; max: the largest id in the model. A lookup trusts a position only where that record has that id,
 * and an empty slot only for an id past max (a new record); anything else is
 * a walk, so a stale table costs time, never a wrong answer.
 *
 * The answer is the walk's: the first record with the id, the first branch
 * with the name. Only a damaged meta file (read unchecked: the graph is
 * checked once the log is applied) repeats one, and then the record a change
 * replaces or drops must not depend on how old the table is. An id found
 * twice when the table is made is marked REPEATED and always walked for (a
 * change never adds a record with an id that is there, so no id repeats
 * later that did not then); a name is looked for at every place it may have.
 */
struct qsnap__apply_cache {
    uint32_t *pos[2]; /* layers, nodes */
    unsigned max[2];
    size_t n;
    bool built[2];
    /* Records of each kind dropped since its table was made that moved the records after
     * them down by one (nodes; a dropped layer's place is taken by the last, noted), so a
     * record noted at p is looked for at p, p - 1, ... p - dels (made again past 32). */
    unsigned dels[2];
    /* Branches by name: an open-addressing table of positions + 1. A branch removed
     * since the table was made moves the ones after it down by one, so a branch found
     * at p is looked for at p, p - 1, ... p - bdels. */
    uint32_t *bslot;
    size_t bcap;
    unsigned bdels;
    bool bbuilt;
};

static uint64_t bname_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */

    while (*s)
        h = (h ^ (unsigned char)*s++) * 1099511628211ull;
    return h;
}

static void bcache_insert(struct qsnap__apply_cache *c, const struct qsnap__model *m, size_t i)
{
    size_t k = (size_t)bname_hash(m->branches[i].name) & (c->bcap - 1);

    while (c->bslot[k])
        k = (k + 1) & (c->bcap - 1);
    c->bslot[k] = (uint32_t)(i + 1);
}

static void bcache_build(struct qsnap__apply_cache *c, const struct qsnap__model *m)
{
    size_t cap = 64;

    c->bbuilt = false;
    while (cap < 2 * (m->nb + 64))
        cap *= 2;
    if (cap != c->bcap) {
        free(c->bslot);
        c->bslot = NULL;
        c->bcap = cap;
    }
    if (!c->bslot && !(c->bslot = malloc(cap * sizeof(*c->bslot))))
        return;
    memset(c->bslot, 0, cap * sizeof(*c->bslot));
    for (size_t i = 0; i < m->nb; i++)
        bcache_insert(c, m, i);
    c->bdels = 0;
    c->bbuilt = true;
}

/* The position of m's branch named so, or -1. */
static long bcache_find(struct qsnap__apply_cache *c, const struct qsnap__model *m, const char *name)
{
    if (!c->bbuilt || c->bdels > 32 || 2 * (m->nb + 1) > c->bcap)
        bcache_build(c, m);
    if (!c->bbuilt) { /* out of memory: a walk */
        struct qsnap__branch *b = qsnap__branch_by_name(m, name);
        return b ? (long)(b - m->branches) : -1;
    }
    /* Every place the branch may have: the first one that has its name (two have it only in
     * a damaged model; a walk finds the first). */
    long first = -1;
    for (size_t k = (size_t)bname_hash(name) & (c->bcap - 1); c->bslot[k];
         k = (k + 1) & (c->bcap - 1)) {
        size_t p = c->bslot[k] - 1;
        for (size_t d = 0; d <= c->bdels && d <= p; d++) {
            if (p - d < m->nb && (first < 0 || p - d < (size_t)first) &&
                !strcmp(m->branches[p - d].name, name))
                first = (long)(p - d);
        }
    }
    return first;
}

#define REPEATED UINT32_MAX /* pos[id] of an id two records have: walked for */

static unsigned rec_id(const struct qsnap__model *m, int k, size_t i)
{
    return k ? m->nodes[i].id : m->layers[i].id;
}

static void cache_build(struct qsnap__apply_cache *c, const struct qsnap__model *m, int k)
{
    size_t cnt = k ? m->nn : m->nl;

    c->built[k] = false;
    if (!c->n) {
        /* Room for the ids below seq (qsnap's own: dense) and the records the log adds;
         * at most a few times the records (hostile ids far apart are walked for). */
        c->n = (size_t)m->seq + 4096;
        if (c->n > 4 * ((size_t)m->nl + m->nn) + 8192)
            c->n = 4 * ((size_t)m->nl + m->nn) + 8192;
    }
    if (!c->pos[k]) {
        if (!(c->pos[k] = calloc(c->n, sizeof(*c->pos[k]))))
            return;
    } else {
        memset(c->pos[k], 0, c->n * sizeof(*c->pos[k]));
    }
    c->max[k] = 0;
    c->dels[k] = 0;
    for (size_t i = 0; i < cnt; i++) {
        unsigned id = rec_id(m, k, i);
        if (id < c->n)
            c->pos[k][id] = c->pos[k][id] ? REPEATED : (uint32_t)(i + 1);
        c->max[k] = id > c->max[k] ? id : c->max[k];
    }
    c->built[k] = true;
}

/* The position of the record of kind k (0 layers, 1 nodes) with this id in m, or -1. */
static long cache_find(struct qsnap__apply_cache *c, const struct qsnap__model *m, int k, unsigned id)
{
    size_t cnt = k ? m->nn : m->nl;

    if (!c->built[k] || c->dels[k] > 32)
        cache_build(c, m, k);
    if (c->built[k]) {
        uint32_t p = id < c->n ? c->pos[k][id] : 0;
        for (size_t d = 0; p && p != REPEATED && d <= c->dels[k] && d < p; d++) {
            if (p - 1 - d < cnt && rec_id(m, k, p - 1 - d) == id)
                return (long)(p - 1 - d);
        }
        if (!p && id > c->max[k])
            return -1;
    }
    for (size_t i = 0; i < cnt; i++) {
        if (rec_id(m, k, i) == id)
            return (long)i;
    }
    return -1;
}

/* Record i of kind k now has its id (added, or moved there). */
static void cache_note(struct qsnap__apply_cache *c, const struct qsnap__model *m, int k, size_t i)
{
    unsigned id = rec_id(m, k, i);

    if (!c->built[k])
        return;
    if (id < c->n && c->pos[k][id] != REPEATED)
        c->pos[k][id] = (uint32_t)(i + 1);
    c->max[k] = id > c->max[k] ? id : c->max[k];
}

static void cache_free(struct qsnap__apply_cache *c)
{
    free(c->pos[0]);
    free(c->pos[1]);
    free(c->bslot);
}

static int delta_apply(struct qsnap__model *m, const char *text, size_t len, const char *what,
                       struct qsnap__apply_cache *c);

int qsnap__delta_apply(struct qsnap__model *m, const char *text, size_t len, const char *what)
{
    struct qsnap__apply_cache c;
    int rc;

    memset(&c, 0, sizeof(c));
    rc = delta_apply(m, text, len, what, &c);
    cache_free(&c);
    return rc;
}

struct qsnap__apply_cache *qsnap__apply_cache_new(void)
{
    return calloc(1, sizeof(struct qsnap__apply_cache));
}

void qsnap__apply_cache_free(struct qsnap__apply_cache *c)
{
    if (c) {
        cache_free(c);
        free(c);
    }
}

int qsnap__delta_apply_cached(struct qsnap__model *m, const char *text, size_t len,
                              const char *what, struct qsnap__apply_cache *c)
{
    if (!c)
        return qsnap__delta_apply(m, text, len, what);
    return delta_apply(m, text, len, what, c);
}

static int delta_apply(struct qsnap__model *m, const char *text, size_t len, const char *what,
                       struct qsnap__apply_cache *c)
{
    struct qsnap__model part;
    const char *p = text, *end = text + len;
    struct place *places = NULL;
    size_t nplaces = 0, capp = 0;
    int rc;

    /* The drops first: whole lines before the "qsnap-store" header. */
    /* (The text is len bytes, not a string: compared only where it has the bytes.) */
    while ((end - p >= 5 && !memcmp(p, "drop-", 5)) || (end - p >= 6 && !memcmp(p, "place-", 6))) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        char line[QSNAP_MAX_NAME * 3 + 32], *arg;
        if (!nl || (size_t)(nl - p) >= sizeof(line)) {
            rc = damaged(what, "a drop line");
            goto fail;
        }
        memcpy(line, p, (size_t)(nl - p));
        line[nl - p] = '\0';
        p = nl + 1;
        arg = strchr(line, ' ');
        if (!arg) {
            rc = damaged(what, "a drop line");
            goto fail;
        }
        *arg++ = '\0';
        if (!strcmp(line, "drop-layer") || !strcmp(line, "drop-node")) {
            char *e;
            unsigned long id;
            errno = 0;
            id = strtoul(arg, &e, 10);
            if (errno || *e || !*arg || !id || id > 0x7fffffff) {
                rc = damaged(what, "a drop line");
                goto fail;
            }
            long at = cache_find(c, m, line[5] == 'l' ? 0 : 1, (unsigned)id);
            if (at < 0) {
                rc = damaged(what, "it drops a record that is not there");
                goto fail;
            }
            if (line[5] == 'l') {
                qsnap__del_layer_at(m, (size_t)at); /* the last layer takes its place */
                if ((size_t)at < m->nl)
                    cache_note(c, m, 0, (size_t)at);
            } else {
                qsnap__del_node_at(m, (size_t)at);
                c->dels[1]++; /* the nodes after it moved down */
            }
        } else if (!strcmp(line, "drop-branch")) {
            char *name = NULL;
            rc = decode_branch_name(arg, what, &name);
            if (rc)
                goto fail;
            long at = bcache_find(c, m, name);
            free(name);
            if (at < 0) {
                rc = damaged(what, "it drops a branch that is not there");
                goto fail;
            }
            qsnap__del_branch_at(m, (size_t)at); /* the branches after it move down */
            c->bdels++;
        } else if (!strcmp(line, "place-layer") || !strcmp(line, "place-node")) {
            struct place pl = {line[6], 0, NULL, 0};
            unsigned long id, at;
            char *e;
            errno = 0;
            id = strtoul(arg, &e, 10);
            if (errno || *e != ' ' || !id || id > 0x7fffffff) {
                rc = damaged(what, "a place line");
                goto fail;
            }
            at = strtoul(e + 1, &e, 10);
            if (errno || *e || at >= QSNAP_MAX_ITEMS) {
                rc = damaged(what, "a place line");
                goto fail;
            }
            pl.id = (unsigned)id;
            pl.at = at;
            if (!push((void **)&places, &nplaces, &capp, &pl, sizeof(pl))) {
                rc = nomem();
                goto fail;
            }
        } else if (!strcmp(line, "place-branch")) {
            struct place pl = {'b', 0, NULL, 0};
            char *sp = strchr(arg, ' '), *e;
            if (!sp) {
                rc = damaged(what, "a place line");
                goto fail;
            }
            *sp++ = '\0';
            errno = 0;
            pl.at = strtoul(sp, &e, 10);
            if (errno || *e || !*sp || pl.at >= QSNAP_MAX_ITEMS) {
                rc = damaged(what, "a place line");
                goto fail;
            }
            rc = decode_branch_name(arg, what, &pl.name);
            if (rc)
                goto fail;
            if (!push((void **)&places, &nplaces, &capp, &pl, sizeof(pl))) {
                free(pl.name);
                rc = nomem();
                goto fail;
            }
        } else {
            rc = damaged(what, "an unknown line");
            goto fail;
        }
    }
    rc = qsnap__model_parse_part(&part, p, (size_t)(end - p), what);
    if (rc)
        goto fail;
    for (size_t i = 0; i < part.nl; i++) {
        long at = cache_find(c, m, 0, part.layers[i].id);
        struct qsnap__layer *l = at < 0 ? NULL : &m->layers[at];
        if (!l) {
            unsigned seq = m->seq;
            l = qsnap__add_layer(m);
            m->seq = seq;
            if (!l)
                goto oom;
        }
        qsnap__str_free(m, l->file);
        *l = part.layers[i];
        part.layers[i].file = NULL;
        cache_note(c, m, 0, (size_t)(l - m->layers));
    }
    for (size_t i = 0; i < part.nn; i++) {
        struct qsnap__node *src = &part.nodes[i];
        long at = cache_find(c, m, 1, src->id);
        struct qsnap__node *n = at < 0 ? NULL : &m->nodes[at];
        if (!n) {
            unsigned seq = m->seq;
            n = qsnap__add_node(m);
            m->seq = seq;
            if (!n)
                goto oom;
        }
        take(m, &n->name, &src->name);
        take(m, &n->desc, &src->desc);
        take(m, &n->state, &src->state);
        take(m, &n->sfp, &src->sfp);
        take(m, &n->internal, &src->internal);
        n->id = src->id;
        n->parent = src->parent;
        n->layer = src->layer;
        n->created = src->created;
        n->for_deps = src->for_deps;
        cache_note(c, m, 1, (size_t)(n - m->nodes));
    }
    for (size_t i = 0; i < part.nb; i++) {
        long at = bcache_find(c, m, part.branches[i].name);
        struct qsnap__branch *b = at < 0 ? qsnap__add_branch(m) : &m->branches[at];
        if (!b)
            goto oom;
        take(m, &b->name, &part.branches[i].name);
        if (at < 0 && c->bbuilt)
            bcache_insert(c, m, m->nb - 1);
        b->head = part.branches[i].head;
        b->base = part.branches[i].base;
        b->created = part.branches[i].created;
    }
    m->gen = part.gen;
    m->seq = part.seq;
    take(m, &m->disk, &part.disk);
    take(m, &m->current, &part.current);
    take(m, &m->below, &part.below);
    qsnap__model_free(&part);
    /* New records to their places, each kind in increasing order of place. */
    {
        size_t last[3] = {0, 0, 0};
        bool seen[3] = {false, false, false};
        for (size_t k = 0; k < nplaces; k++) {
            struct place *pl = &places[k];
            int t = pl->kind == 'l' ? 0 : pl->kind == 'n' ? 1 : 2;
            size_t n = t == 0 ? m->nl : t == 1 ? m->nn : m->nb, from;
            if (pl->at >= n || (seen[t] && pl->at <= last[t])) {
                rc = damaged(what, "a record placed where it cannot be");
                goto fail;
            }
            /* A placed record is new: added at the end just now (the last one when
             * ids repeat, which only a damaged model has, and the check refuses). */
            if (t < 2) {
                long at = rec_id(m, t, n - 1) == pl->id ? (long)n - 1 : cache_find(c, m, t, pl->id);
                if (at < 0) {
                    rc = damaged(what, t ? "it places a node that is not there"
                                         : "it places a layer that is not there");
                    goto fail;
                }
                from = (size_t)at;
                if (t == 0)
                    move_to(m->layers, sizeof(*m->layers), from, pl->at);
                else
                    move_to(m->nodes, sizeof(*m->nodes), from, pl->at);
                /* The records between moved by one. */
                for (size_t i = from < pl->at ? from : pl->at; i <= (from > pl->at ? from : pl->at);
                     i++)
                    cache_note(c, m, t, i);
            } else {
                long at = bcache_find(c, m, pl->name);
                if (at < 0) {
                    rc = damaged(what, "it places a branch that is not there");
                    goto fail;
                }
                from = (size_t)at;
                move_to(m->branches, sizeof(*m->branches), from, pl->at);
                if (from != pl->at)
                    c->bbuilt = false; /* the branches between moved */
            }
            seen[t] = true;
            last[t] = pl->at;
        }
    }
    for (size_t k = 0; k < nplaces; k++)
        free(places[k].name);
    free(places);
    return 0;
oom:
    qsnap__model_free(&part);
    rc = nomem();
fail:
    for (size_t k = 0; k < nplaces; k++)
        free(places[k].name);
    free(places);
    return rc;
}

/* ---- reading -------------------------------------------------------------- */

static int read_all(const qsnap_store *s, const char *rel, struct qsnap__pool **out)
{
    struct stat st;
    struct qsnap__pool *buf = NULL;
    size_t done = 0;
    int fd = -1, rc;

    *out = NULL;
    rc = qsnap__open_store_file(s, rel, O_RDONLY, &fd);
    if (rc)
        return rc;
    if (fstat(fd, &st) < 0) {
        rc = qsnap__err(QSNAP_ERROR, NULL, "%s/%s: %s", s->dir, rel, strerror(errno));
        goto out;
    }
    if ((uint64_t)st.st_size > QSNAP_MAX_META_BYTES) {
        rc = qsnap__err(QSNAP_EINTEGRITY, "restore the store from a backup",
                        "%s/%s: %" PRIu64 " bytes is too large for qsnap metadata", s->dir, rel,
                        (uint64_t)st.st_size);
        goto out;
    }
    buf = qsnap__pool_new((size_t)st.st_size);
    if (!buf) {
        rc = nomem();
        goto out;
    }
    while (done < (size_t)st.st_size) {
        ssize_t r = read(fd, buf->data + done, (size_t)st.st_size - done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = qsnap__err(QSNAP_ERROR, NULL, "%s/%s: read failed: %s", s->dir, rel,
                            strerror(errno));
            goto out;
        }
        if (r == 0)
            break;
        done += (size_t)r;
    }
    buf->data[done] = '\0';
    buf->len = done;
    *out = buf;
    buf = NULL;
out:
    qsnap__pool_unref(buf);
    close(fd);
    return rc;
}

/*
 * The log goes on past its last whole record. An append is the commit point of
 * an operation whose journal is there until the append is durable, and an
 * operation taken back cuts such a tail before its journal goes (undo): with a
 * journal, the tail is an append a crash or a failure cut short, not committed,
 * which the repair finishes or takes back. Without one, the record was
 * committed and is damaged: taking the tree without it would hand out its ids
 * again, over files made after it.
 */
static int torn_tail(const qsnap_store *s, const char *what)
{
    bool pending = false;
    int rc;

    /* Every whole record already in meta: the log a fold left when it was cut short
     * between writing meta and removing the log, whose tail meta supersedes too. */
    if (s->log.stale && !s->log.live)
        return 0;
    rc = qsnap__journal_pending(s, &pending);
    if (rc || pending)
        return rc;
    return qsnap__err(QSNAP_EINTEGRITY, "restore the store from a backup",
                      "%s: its last change record is damaged or cut short, and no operation "
                      "was interrupted: a committed change is lost",
                      what);
}

/* Apply meta.log's records to s->m (see the top of the file). */
static int log_load(qsnap_store *s, const char *what)
{
    struct qsnap__pool *pool = NULL;
    struct qsnap__apply_cache cache;
    char *text;
    size_t len, off, ml = strlen(LOG_MAGIC);
    int rc = read_all(s, LOG_FILE, &pool);

    if (rc == QSNAP_ENOTFOUND)
        return 0;
    if (rc)
        return rc;
    text = pool->data;
    len = pool->len;
    s->log.exists = true;
    s->log.size = len;
    if (s->log.meta_version < 2) {
        qsnap__pool_unref(pool);
        return qsnap__err(QSNAP_EINTEGRITY, "restore the store from a backup",
                          "%s: a change log beside a version %u meta file", what,
                          s->log.meta_version);
    }
    if (len < ml && !memcmp(text, LOG_MAGIC, len)) {
        /* Shorter than its first line: a new log is written whole (a temporary file,
         * synced, renamed), so this is damage unless an operation is unfinished. */
        qsnap__pool_unref(pool);
        return torn_tail(s, what);
    }
    if (memcmp(text, LOG_MAGIC, ml)) {
        qsnap__pool_unref(pool);
        return qsnap__err(QSNAP_EINTEGRITY, "restore the store from a backup",
                          "%s: not a qsnap change log (or of an unknown version)", what);
    }
    s->log.good = off = ml;
    memset(&cache, 0, sizeof(cache));
    while (off < len) {
        const char *nl = memchr(text + off, '\n', len - off);
        uint64_t gen, rlen;
        unsigned crc;
        char tail;
        int used = 0;
        bool whole;

        if (!nl)
            break; /* a header cut short: the tail of an interrupted append */
        if (nl - (text + off) > 80 ||
            sscanf(text + off, "rec %" SCNu64 " %" SCNu64 " %8x%c%n", &gen, &rlen, &crc, &tail,
                   &used) != 4 ||
            tail != '\n' || text + off + used != nl + 1) {
            rc = damaged(what, "a record header");
            break;
        }
        whole = rlen <= len - (size_t)(nl + 1 - text);
        if (!whole || qsnap__crc32(nl + 1, (size_t)rlen) != crc) {
            if (!whole || (size_t)(nl + 1 - text) + rlen == len)
                break; /* the last record, cut short or torn: not committed */
            rc = qsnap__err(QSNAP_EINTEGRITY, "restore the store from a backup",
                            "%s: the change record at byte %zu fails its checksum", what, off);
            break;
        }
        if (gen <= s->m.gen) {
            s->log.stale++;
        } else if (gen == s->m.gen + 1) {
            rc = delta_apply(&s->m, nl + 1, (size_t)rlen, what, &cache);
            if (!rc && s->m.gen != gen)
                rc = damaged(what, "its generation");
            if (rc)
                break;
            s->log.live++;
            s->log.shifts += node_drops(nl + 1, (size_t)rlen);
        } else {
            rc = qsnap__err(QSNAP_EINTEGRITY, "restore the store from a backup",
                            "%s: change record for generation %" PRIu64
                            " does not follow generation %" PRIu64,
                            what, gen, s->m.gen);
            break;
        }
        off = (size_t)(nl + 1 - text) + (size_t)rlen;
        s->log.good = off;
    }
    if (!rc && s->log.good < len)
        rc = torn_tail(s, what);
    cache_free(&cache);
    qsnap__pool_unref(pool);
    return rc;
}

/*
 * A failure once the log was applied: when the meta file alone fails its
 * check, that is the error (the one reported before the log was read).
 */
static int blame_base(int rc, struct qsnap__pool *pool, const char *path)
{
    struct qsnap__model base;
    unsigned version;
    qsnap_error e = *qsnap_error_last();
    char msg[1024], hint[1024];
    int brc;

    /* e's strings point at the buffers the next qsnap__err() writes: copied first. */
    snprintf(msg, sizeof(msg), "%s", e.message ? e.message : "");
    snprintf(hint, sizeof(hint), "%s", e.hint ? e.hint : "");
    brc = qsnap__model_read(&base, pool, path, &version, true);
    if (brc)
        return brc;
    qsnap__model_free(&base);
    return qsnap__err(rc, hint[0] ? hint : NULL, "%s", msg);
}

int qsnap__meta_load(qsnap_store *s)
{
    char *path = qsnap__path(s, META_FILE), *lpath = qsnap__path(s, LOG_FILE);
    struct qsnap__pool *pool = NULL;
    int rc;

    memset(&s->log, 0, sizeof(s->log));
    if (!path || !lpath) {
        free(path);
        free(lpath);
        return nomem();
    }
    rc = read_all(s, META_FILE, &pool);
    /* The graph is checked once, with the log applied (it was checked before and after:
     * twice the cost of a check at every command of a store with a log). The file's
     * bytes are kept until then, for blame_base. */
    if (!rc) {
        s->log.meta_bytes = pool->len;
        pool->refs++;
        rc = qsnap__model_read(&s->m, pool, path, &s->log.meta_version, false);
    }
    if (!rc) {
        rc = log_load(s, lpath);
        if (!rc)
            rc = qsnap__model_check(&s->m, s->log.live ? lpath : path);
        if (rc && rc != QSNAP_ERROR && (s->log.live || s->log.exists)) {
            pool->refs++;
            rc = blame_base(rc, pool, path);
        }
    }
    qsnap__pool_unref(pool);
    if (rc)
        qsnap__model_free(&s->m);
    free(path);
    free(lpath);
    return rc;
}

/* ---- writing -------------------------------------------------------------- */

static int write_full(int fd, const char *data, size_t len, const char *what)
{
    size_t done = 0;

    while (done < len) {
        ssize_t w = write(fd, data + done, len - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return qsnap__err(QSNAP_ERROR, NULL, "%s: write failed: %s", what,
                              w < 0 ? strerror(errno) : "short write");
        done += (size_t)w;
    }
    return 0;
}

/* The whole model to meta, then no log. */
static int compact(qsnap_store *s, struct qsnap__model *m)
{
    char *text = NULL;
    size_t len;
    int rc = qsnap__model_bin_format(m, &text, &len);

    if (rc)
        return rc;
    rc = qsnap__write_atomic(s, META_FILE, text, len);
    free(text);
    if (rc)
        return rc;
    /* Committed: the log's records are all at or below m->gen now. */
    s->log.meta_version = qsnap__model_version(m);
    s->log.meta_bytes = len;
    if (s->log.exists) {
        rc = qsnap__unlink_store_file(s, LOG_FILE);
        if (!rc)
            rc = qsnap__fsync_dir(s->dir);
        if (rc)
            return rc;
    }
    s->log.exists = false;
    s->log.size = s->log.good = 0;
    s->log.live = s->log.stale = 0;
    s->log.shifts = 0;
    return 0;
}

/* rec header + change text. */
static char *record(uint64_t gen, const char *delta, size_t dl, size_t *len)
{
    char head[80], *r;
    int hl = snprintf(head, sizeof(head), "rec %" PRIu64 " %zu %08x\n", gen, dl,
                      qsnap__crc32(delta, dl));

    r = malloc((size_t)hl + dl + sizeof(LOG_MAGIC));
    if (!r)
        return NULL;
    memcpy(r, head, (size_t)hl);
    memcpy(r + hl, delta, dl);
    *len = (size_t)hl + dl;
    return r;
}

static int append(qsnap_store *s, const char *rec, size_t rl)
{
    char *path = qsnap__path(s, LOG_FILE);
    int fd = -1, rc = 0;

    if (!path)
        return nomem();
    if (!s->log.exists || s->log.stale || s->log.good < strlen(LOG_MAGIC)) {
        /* A new log, whole or not at all. */
        size_t ml = strlen(LOG_MAGIC);
        char *all = malloc(ml + rl);
        if (!all) {
            free(path);
            return nomem();
        }
        memcpy(all, LOG_MAGIC, ml);
        memcpy(all + ml, rec, rl);
        rc = qsnap__write_atomic(s, LOG_FILE, all, ml + rl);
        free(all);
        if (!rc) {
            s->log.exists = true;
            s->log.stale = 0;
            s->log.size = s->log.good = ml + rl;
        }
        free(path);
        return rc;
    }
    rc = qsnap__open_store_file(s, LOG_FILE, O_WRONLY, &fd);
    if (rc) {
        free(path);
        return rc;
    }
    /* A torn tail of an interrupted append goes first. */
    if (s->log.size != s->log.good && ftruncate(fd, (off_t)s->log.good) < 0)
        rc = qsnap__err(QSNAP_ERROR, NULL, "%s: truncate failed: %s", path, strerror(errno));
    if (!rc && lseek(fd, (off_t)s->log.good, SEEK_SET) < 0)
        rc = qsnap__err(QSNAP_ERROR, NULL, "%s: seek failed: %s", path, strerror(errno));
    if (!rc) {
        s->log.size = s->log.good; /* as far as anyone knows now */
        rc = write_full(fd, rec, rl, path);
    }
    if (!rc && fdatasync(fd) < 0)
        rc = qsnap__err(QSNAP_ERROR, NULL, "%s: fsync failed: %s", path, strerror(errno));
    if (!rc)
        s->log.size = s->log.good = s->log.good + rl;
    else
        s->log.size = s->log.good + rl; /* unknown: cut back by the next append */
    close(fd);
    free(path);
    return rc;
}

int qsnap__meta_save(qsnap_store *s, struct qsnap__model *m)
{
    return qsnap__meta_save_known(s, m, NULL);
}

int qsnap__meta_save_known(qsnap_store *s, struct qsnap__model *m, const struct qsnap__ids *only)
{
    char *delta = NULL, *rec = NULL;
    bool exact = false, committed = false;
    struct qsnap__ids given = {NULL, 0, 0};
    size_t rl = 0, hl, shifts;
    uint64_t bound;
    int rc;

    m->gen++;
    /* A change that brings the first fingerprint record or for_deps node goes into a
     * version 4 meta file (whole): a qsnap that reads version 3 only then refuses the store
     * by its version instead of finding a record it does not know in the log. */
    if (m == &s->m || !s->exists || s->log.meta_version < QSNAP_META_VERSION_BIN ||
        s->log.meta_version < qsnap__model_version(m))
        goto whole;
    rc = qsnap__delta_format_ex(&s->m, m, &delta, &exact, only, only ? &given : NULL);
    if (rc)
        goto fail;
    if (!exact)
        goto whole;
    rec = record(m->gen, delta, strlen(delta), &rl);
    free(delta);
    delta = NULL;
    if (!rec) {
        rc = nomem();
        goto fail;
    }
    bound = s->log.meta_bytes / LOG_META_SHARE;
    if (bound < LOG_MIN_BOUND)
        bound = LOG_MIN_BOUND;
    hl = (size_t)(strchr(rec, '\n') - rec) + 1;
    shifts = node_drops(rec + hl, rl - hl);
    if (s->log.good + rl > bound || s->log.shifts + shifts > LOG_MAX_SHIFTS) {
        free(rec);
        goto whole;
    }
    rc = append(s, rec, rl);
    if (rc) {
        free(rec);
        goto fail;
    }
    s->log.shifts += shifts;
    /* Committed. The model in memory takes the same change, as a reader would;
     * when that does not give m exactly (the same content in another order, or
     * out of memory), the whole file says m. */
    committed = true;
    rc = qsnap__delta_apply(&s->m, rec + hl, rl - hl, "change record");
    free(rec);
    /* Known the same before (only), and not given by the change: the same now. */
    if (!rc && (only ? equal_known(&s->m, m, only, &given) : qsnap__model_equal(&s->m, m))) {
        qsnap__ids_free(&given);
        return 0;
    }
whole:
    qsnap__ids_free(&given);
    rc = compact(s, m);
    if (!rc && m != &s->m) {
        struct qsnap__model copy;
        rc = qsnap__model_clone(&copy, m);
        if (!rc) {
            qsnap__model_free(&s->m);
            s->m = copy;
        }
    }
    if (!rc || committed)
        return rc;
fail:
    qsnap__ids_free(&given);
    free(delta);
    m->gen--;
    return rc;
}

int qsnap__log_torn(const qsnap_store *s)
{
    return s->log.exists && s->log.size != s->log.good;
}

int qsnap__log_cut(qsnap_store *s)
{
    char *path = qsnap__path(s, LOG_FILE);
    int fd = -1, rc;

    if (!path)
        return nomem();
    rc = qsnap__open_store_file(s, LOG_FILE, O_WRONLY, &fd);
    if (!rc && (ftruncate(fd, (off_t)s->log.good) < 0 || fdatasync(fd) < 0))
        rc = qsnap__err(QSNAP_ERROR, NULL, "%s: truncate failed: %s", path, strerror(errno));
    if (!rc)
        s->log.size = s->log.good;
    if (fd >= 0)
        close(fd);
    free(path);
    return rc;
}
