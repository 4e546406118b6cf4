/*
 * Seed generator for the fuzz corpora that are not whole qemu-img images:
 * compressed clusters (decompress_cluster), store metadata files
 * (qsnap_meta) and parameter strings (write_roundtrip), all made by the
 * library itself. Run by scripts/fuzz-seeds.sh: seedgen OUTDIR.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2/qcow2.h"
#include "qcow2_format.h"
#include "qcow2_int.h"
#include "qsnap_int.h"

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

/* Payload, then the pool: the producer reads the pool from its last byte backwards. */
static void write_seed(const char *dir, const char *name, const void *payload, size_t len,
                       const struct params *p, size_t pool)
{
    char path[4096];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(1);
    }
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

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUTDIR\n", argv[0]);
        return 2;
    }
    gen_decompress(argv[1]);
    gen_meta(argv[1]);
    gen_roundtrip(argv[1]);
    return 0;
}
