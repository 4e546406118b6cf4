/*
 * Seed generator for the fuzz corpora that are not whole qemu-img images:
 * compressed clusters (decompress_cluster), store metadata files
 * (qsnap_meta), parameter strings (write_roundtrip) and change logs
 * (qsnap_log), all made by the library itself. Run by scripts/fuzz-seeds.sh:
 * seedgen OUTDIR; and seedgen --log STORE NAME OUTDIR, once per store the
 * qsnap command made, for the qsnap_log seeds made of a real meta.log.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2/qcow2.h"
#include "qcow2_format.h"
#include "qcow2_int.h"
#include "qsnap_int.h"
#include "qsnap_fuzz.h"

/* Parameters in the order the target takes them (see fuzz_helpers.h). */
struct params {
    uint8_t b[256];
    size_t n;
};

/* Append one parameter of nbytes, taken from the tail big-endian. */
static void param(struct params *p, uint64_t v, unsigned nbytes)
{
    for (unsigned i = 0; i < nbytes; i++)
        p->b[p->n++] = (uint8_t)(v >> (8 * (nbytes - 1 - i)));
}

/* DIR/NAME, created for writing (or the program stops). */
static FILE *seed_file(const char *dir, const char *name)
{
    char path[4096];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(1);
    }
    return f;
}

/* Payload, then the pool: the producer reads the pool from its last byte backwards. */
static void write_seed(const char *dir, const char *name, const void *payload, size_t len,
                       const struct params *p, size_t pool)
{
    FILE *f = seed_file(dir, name);

    fwrite(payload, 1, len, f);
    /* Unused pool bytes first (they are consumed last), then the parameters reversed. */
    for (size_t i = p->n; i < pool; i++)
        fputc(0, f);
    for (size_t i = p->n; i-- > 0;)
        fputc(p->b[i], f);
    fclose(f);
}

static void fill(uint8_t *buf, size_t len, unsigned kind)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = kind == 0 ? 0 : kind == 1 ? (uint8_t)(i / 7) : kind == 2 ? "qcow2 "[i % 6]
                                                                         : (uint8_t)(i * 2654435761u >> 13);
}

static void gen_decompress(const char *out)
{
    static const size_t lens[] = {512, 4096, 65536};
    char dir[4096], name[64];
    uint8_t src[65536], comp[65536 + 512];

    snprintf(dir, sizeof(dir), "%s/decompress_cluster", out);
    for (unsigned type = 0; type <= 1; type++)
        for (unsigned li = 0; li < 3; li++)
            for (unsigned kind = 0; kind < 4; kind++) {
                struct params p = {.n = 0};
                size_t len = lens[li];
                long clen;

                fill(src, len, kind);
                clen = qcow2__compress(type, comp, len - 1, src, len);
                if (clen <= 0)
                    continue; /* incompressible: no stream to seed with */
                /* Sector-rounded with garbage behind, as on disk. */
                size_t padded = ((size_t)clen + 511) & ~(size_t)511;
                memset(comp + clen, 0xee, padded - (size_t)clen);
                param(&p, type, 1);      /* type in [0,2] */
                param(&p, len, 4);       /* dst_len in [0, 2 MiB] */
                param(&p, len / 2, 4);   /* shorter */
                param(&p, 100, 2);       /* garbage behind the round-trip stream */
                snprintf(name, sizeof(name), "%s_%zu_k%u", type ? "zstd" : "zlib", len, kind);
                write_seed(dir, name, comp, padded, &p, 11);
            }
}

/* Store metadata made by the library's own formatter. */
static void gen_meta(const char *out)
{
    char dir[4096];
    char *text = NULL;
    struct qsnap__model m;

    snprintf(dir, sizeof(dir), "%s/qsnap_meta", out);

    /* A fresh store: the disk only. */
    memset(&m, 0, sizeof(m));
    m.gen = 1;
    m.seq = 2;
    m.disk = strdup("../disk.qcow2");
    m.layers = calloc(8, sizeof(*m.layers));
    m.nodes = calloc(8, sizeof(*m.nodes));
    m.branches = calloc(8, sizeof(*m.branches));
    m.layers[0] = (struct qsnap__layer){.id = 1, .file = strdup("../disk.qcow2"),
                                        .fmt = QCOW2_FORMAT_QCOW2, .is_disk = true};
    m.nl = 1;
    if (qsnap__model_format(&m, &text) == 0) {
        struct params p = {.n = 0};
        write_seed(dir, "fresh", text, strlen(text), &p, 0);
        free(text);
    }

    /* Two snapshots, a branch, a frozen disk, names and descriptions to encode. */
    m.gen = 7;
    m.seq = 9;
    m.current = strdup("main");
    m.layers[0].frozen = true;
    m.layers[0].have_fp = true;
    memcpy(m.layers[0].fp, "0123456789abcdef", 16);
    m.layers[0].size = 196624;
    m.layers[0].mtime_ns = 1700000000123456789ll;
    m.layers[1] = (struct qsnap__layer){.id = 3, .file = strdup("layers/3.qcow2"),
                                        .fmt = QCOW2_FORMAT_QCOW2, .backing = 1, .frozen = true,
                                        .have_fp = true, .size = 200704, .mtime_ns = 5};
    m.layers[2] = (struct qsnap__layer){.id = 5, .file = strdup("layers/5.qcow2"),
                                        .fmt = QCOW2_FORMAT_QCOW2, .backing = 3};
    m.layers[3] = (struct qsnap__layer){.id = 6, .file = strdup("layers/6 raw%.img"),
                                        .fmt = QCOW2_FORMAT_RAW};
    m.nl = 4;
    m.nodes[0] = (struct qsnap__node){.id = 2, .name = strdup("base"), .layer = 1,
                                      .created = 1700000000,
                                      .desc = strdup("fresh install, 100% clean\ttabs")};
    m.nodes[1] = (struct qsnap__node){.id = 4, .name = NULL, .parent = 2, .layer = 3,
                                      .created = -1};
    m.nodes[2] = (struct qsnap__node){.id = 7, .name = strdup("before-upgrade"), .parent = 4,
                                      .layer = 3, .created = 1700000100,
                                      .state = strdup("states/7.vmstate")};
    m.nn = 3;
    m.branches[0] = (struct qsnap__branch){.name = strdup("main"), .head = 5, .base = 7,
                                           .created = 1700000200};
    m.branches[1] = (struct qsnap__branch){.name = strdup("orphan"), .head = 6, .base = 0,
                                           .created = 0};
    m.nb = 2;
    if (qsnap__model_format(&m, &text) == 0) {
        struct params p = {.n = 0};
        write_seed(dir, "tree", text, strlen(text), &p, 0);
        free(text);
    }
    qsnap__model_free(&m);
}

/* write_roundtrip: the whole input is parameters. */
static void gen_roundtrip(const char *out)
{
    char dir[4096], name[64];

    snprintf(dir, sizeof(dir), "%s/write_roundtrip", out);
    for (unsigned s = 0; s < 8; s++) {
        uint8_t buf[256];
        uint32_t x = 0x9e3779b9u * (s + 1);
        struct params p = {.n = 0};

        for (size_t i = 0; i < sizeof(buf); i++) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            buf[i] = (uint8_t)x;
        }
        snprintf(name, sizeof(name), "ops_%u", s);
        write_seed(dir, name, buf, sizeof(buf), &p, 0);
    }
}

/* ---- qsnap_log: change texts joined by "FUZZSPLT", after an optional "base\n" part ---- */

#define LOG_SEP "FUZZSPLT"

static void *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    long n;

    if (!f || fseek(f, 0, SEEK_END) || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) ||
        !(buf = malloc((size_t)n + 1)) || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        perror(path);
        exit(1);
    }
    fclose(f);
    buf[n] = '\0';
    *len = (size_t)n;
    return buf;
}

/*
 * STORE/meta as the base (the text form; NAME_bin: the file's own bytes) and
 * the change of every record of STORE/meta.log, in order.
 */
static void gen_log_from_store(const char *store, const char *name, const char *dir)
{
    char path[4096], *log, *meta, *text = NULL;
    size_t llen, mlen, ml = strlen("qsnap-log 2\n");
    struct qsnap__pool *pool;
    struct qsnap__model m;
    unsigned version;

    snprintf(path, sizeof(path), "%s/meta", store);
    meta = slurp(path, &mlen);
    snprintf(path, sizeof(path), "%s/meta.log", store);
    log = slurp(path, &llen);
    pool = qsnap__pool_new(mlen);
    memcpy(pool->data, meta, mlen);
    if (qsnap__model_read(&m, pool, "meta", &version, true) || qsnap__model_format(&m, &text)) {
        fprintf(stderr, "%s: %s\n", store, qsnap_error_last()->message);
        exit(1);
    }
    if (llen < ml || memcmp(log, "qsnap-log 2\n", ml)) {
        fprintf(stderr, "%s: not a change log\n", path);
        exit(1);
    }
    for (int bin = 0; bin < 2; bin++) {
        char seed[256];
        FILE *f;
        size_t off = ml;

        snprintf(seed, sizeof(seed), "%s%s", name, bin ? "_bin" : "");
        f = seed_file(dir, seed);
        fputs("base\n", f);
        if (bin)
            fwrite(meta, 1, mlen, f);
        else
            fputs(text, f);
        while (off < llen) {
            unsigned long long gen, rlen;
            unsigned crc;
            int used = 0;
            if (sscanf(log + off, "rec %llu %llu %8x\n%n", &gen, &rlen, &crc, &used) != 3 ||
                !used || rlen > llen - off - (size_t)used) {
                fprintf(stderr, "%s: a record header at byte %zu\n", path, off);
                exit(1);
            }
            fputs(LOG_SEP, f);
            fwrite(log + off + used, 1, (size_t)rlen, f);
            off += (size_t)used + (size_t)rlen;
        }
        fclose(f);
    }
    qsnap__model_free(&m);
    free(text);
    free(meta);
    free(log);
}

/* A seed of changes: the model they start from and the one being made. */
struct chain {
    FILE *f;
    bool first;
    struct qsnap__model cur, next;
};

/* Start a seed from m (a copy), and its first change. */
static void chain_start(struct chain *c, const char *dir, const char *name,
                        const struct qsnap__model *m)
{
    c->f = seed_file(dir, name);
    c->first = true;
    if (qsnap__model_clone(&c->cur, m) || qsnap__model_clone(&c->next, m))
        exit(1);
    c->next.gen++;
}

/* The change from cur to next goes into the seed; next becomes cur, and a copy of it next. */
static void chain_step(struct chain *c)
{
    char *text = NULL;
    bool exact = false;

    if (qsnap__delta_format(&c->cur, &c->next, &text, &exact) || !exact) {
        fprintf(stderr, "seedgen: a change cannot be formatted\n");
        exit(1);
    }
    if (!c->first)
        fputs(LOG_SEP, c->f);
    fputs(text, c->f);
    free(text);
    c->first = false;
    qsnap__model_free(&c->cur);
    c->cur = c->next;
    if (qsnap__model_clone(&c->next, &c->cur))
        exit(1);
    c->next.gen++;
}

static void chain_end(struct chain *c)
{
    fclose(c->f);
    qsnap__model_free(&c->cur);
    qsnap__model_free(&c->next);
}

static char *dup_str(const char *s)
{
    char *d = strdup(s);

    if (!d)
        exit(1);
    return d;
}

/*
 * Changes to the built-in base (fuzz/qsnap_fuzz.h) made with the model's
 * API: one seed per kind of operation, each a chain of changes a store could
 * log.
 */
static void gen_log_builtin(const char *dir)
{
    struct qsnap__model base;
    struct qsnap__layer *l;
    struct qsnap__node *n;
    struct qsnap__branch *b;
    struct chain c;

    if (qsnap__model_parse(&base, qsnap_log_base, sizeof(qsnap_log_base) - 1, "base")) {
        fprintf(stderr, "seedgen: the built-in base: %s\n", qsnap_error_last()->message);
        exit(1);
    }

    /* create: the current head frozen as a snapshot, a new head over it; twice. */
    chain_start(&c, dir, "builtin_create", &base);
    for (int k = 0; k < 2; k++) {
        unsigned head;
        b = qsnap__branch_by_name(&c.next, c.next.current);
        head = b->head;
        l = qsnap__layer(&c.next, head);
        l->frozen = true;
        l->have_fp = true;
        l->size = 65536u * (unsigned)(k + 1);
        l->mtime_ns = 1700000500000000000ll + k;
        n = qsnap__add_node(&c.next);
        n->name = dup_str(k ? "created-2" : "created-1");
        n->parent = b->base;
        n->layer = head;
        n->created = 1700000500 + k;
        b->base = n->id;
        l = qsnap__add_layer(&c.next);
        l->file = NULL;
        if (asprintf(&l->file, "layers/%u.qcow2", l->id) < 0)
            exit(1);
        l->fmt = QCOW2_FORMAT_QCOW2;
        l->backing = head;
        qsnap__branch_by_name(&c.next, c.next.current)->head = l->id;
        chain_step(&c);
    }
    chain_end(&c);

    /* A branch made (placed first), renamed, switched to, then deleted. */
    chain_start(&c, dir, "builtin_branch", &base);
    l = qsnap__add_layer(&c.next);
    l->file = dup_str("layers/new.qcow2");
    l->fmt = QCOW2_FORMAT_QCOW2;
    l->backing = 3;
    b = qsnap__add_branch(&c.next);
    b->name = dup_str("feature");
    b->head = l->id;
    b->base = 4;
    b->created = 1700000600;
    {
        struct qsnap__branch tmp = c.next.branches[c.next.nb - 1];
        memmove(&c.next.branches[1], &c.next.branches[0], (c.next.nb - 1) * sizeof(tmp));
        c.next.branches[0] = tmp;
    }
    chain_step(&c);
    b = qsnap__branch_by_name(&c.next, "feature");
    qsnap__str_free(&c.next, b->name);
    b->name = dup_str("feature+2");
    chain_step(&c);
    qsnap__str_free(&c.next, c.next.current);
    c.next.current = dup_str("feature+2");
    chain_step(&c);
    qsnap__str_free(&c.next, c.next.current);
    c.next.current = dup_str("main");
    qsnap__del_layer(&c.next, qsnap__branch_by_name(&c.next, "feature+2")->head);
    qsnap__del_branch(&c.next, "feature+2");
    chain_step(&c);
    chain_end(&c);

    /* delete: a snapshot leaves the tree (its child moves up); then a description
     * goes, and a branch with its head. */
    chain_start(&c, dir, "builtin_delete", &base);
    qsnap__node(&c.next, 9)->parent = 4;
    qsnap__del_node(&c.next, 7);
    chain_step(&c);
    n = qsnap__node(&c.next, 2);
    qsnap__str_free(&c.next, n->desc);
    n->desc = NULL;
    qsnap__del_branch(&c.next, "\xe2\x9c\x93");
    qsnap__del_layer(&c.next, 12);
    chain_step(&c);
    chain_end(&c);

    /* An internal snapshot recorded, then reverted to (the head stays). */
    chain_start(&c, dir, "builtin_internal", &base);
    n = qsnap__add_node(&c.next);
    n->name = dup_str("int-2");
    n->parent = 9;
    n->layer = 11;
    n->created = 1700000700;
    if (asprintf(&n->internal, "qsnap-%u", n->id) < 0)
        exit(1);
    qsnap__branch_by_name(&c.next, "side")->base = n->id;
    chain_step(&c);
    qsnap__branch_by_name(&c.next, "side")->base = 9;
    chain_step(&c);
    chain_end(&c);
    qsnap__model_free(&base);
}

int main(int argc, char **argv)
{
    char dir[4096];

    if (argc == 5 && !strcmp(argv[1], "--log")) {
        gen_log_from_store(argv[2], argv[3], argv[4]);
        return 0;
    }
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUTDIR | %s --log STORE NAME OUTDIR\n", argv[0], argv[0]);
        return 2;
    }
    gen_decompress(argv[1]);
    gen_meta(argv[1]);
    gen_roundtrip(argv[1]);
    snprintf(dir, sizeof(dir), "%s/qsnap_log", argv[1]);
    gen_log_builtin(dir);
    return 0;
}
