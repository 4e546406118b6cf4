/*
 * Content fingerprints: xxh3-128 over a stream of bytes, from the system
 * libxxhash's streaming API. Digests (image digest, frozen-layer
 * fingerprints) are the canonical big-endian 16 bytes, so they compare and
 * print the same on every host. Zero runs are hashed from a static buffer
 * without the caller allocating one.
 *
 * The image digest (qcow2__digest) cuts the disk into 4 KiB blocks and
 * hashes the non-zero blocks in order, then a trailer with the size and a
 * hash of the list of zero runs (start, length). docs/DIGEST.md is the
 * definition, byte by byte. A zero run costs one list entry whether it was
 * a hole, a zero cluster or written zeroes, so the digest costs what the
 * disk holds; consecutive data blocks are one hash update.
 */
#include <xxhash.h>

#include "qcow2_int.h"

/* Zero runs are fed in pieces of this size. */
#define HASH_ZERO_CHUNK (64u << 10)

struct qcow2__hash {
    XXH3_state_t *state; /* libxxhash's aligned streaming state */
};

static const uint8_t hash_zeroes[HASH_ZERO_CHUNK];

int qcow2__hash_new(qcow2__hash **out)
{
    qcow2__hash *h;

    *out = NULL;
    h = qcow2__calloc(1, sizeof(*h));
    if (!h)
        return qcow2__nomem();
    h->state = XXH3_createState();
    if (!h->state)
        goto out_free;
    if (XXH3_128bits_reset(h->state) != XXH_OK)
        goto out_free_state;
    *out = h;
    return 0;

out_free_state:
    XXH3_freeState(h->state);
out_free:
    qcow2__free(h);
    return qcow2__nomem();
}

void qcow2__hash_update(qcow2__hash *h, const void *buf, size_t len)
{
    if (len)
        (void)XXH3_128bits_update(h->state, buf, len);
}

void qcow2__hash_zeroes(qcow2__hash *h, uint64_t len)
{
    while (len) {
        size_t n = (size_t)qcow2__min(len, sizeof(hash_zeroes));
        (void)XXH3_128bits_update(h->state, hash_zeroes, n);
        len -= n;
    }
}

void qcow2__hash_final(qcow2__hash *h, uint8_t out[16])
{
    XXH128_canonical_t canon;

    XXH128_canonicalFromHash(&canon, XXH3_128bits_digest(h->state));
    _Static_assert(sizeof(canon.digest) == 16, "xxh128 canonical form is 16 bytes");
    memcpy(out, canon.digest, 16);
}

void qcow2__hash_free(qcow2__hash *h)
{
    if (!h)
        return;
    XXH3_freeState(h->state);
    qcow2__free(h);
}

/* ---- the image digest: data blocks and a zero-run list (docs/DIGEST.md) --- */

struct qcow2__digest {
    qcow2__hash *h;     /* the non-zero blocks, then the trailer */
    qcow2__hash *runs;  /* the zero-run list */
    uint64_t size;      /* virtual size: the last block may be short */
    uint64_t pos;       /* guest bytes fed so far */
    uint64_t zstart;    /* the zero run not yet listed: start and length */
    uint64_t zlen;
    uint64_t nruns;     /* zero runs listed */
    size_t fill;        /* bytes of blk held (a block cut by a run boundary) */
    uint8_t blk[QCOW2__DIGEST_BLOCK];
};

static const uint8_t digest_magic[8] = {'Q', 'S', 'N', 'A', 'P', 'D', 'G', '2'};

int qcow2__digest_new(qcow2__digest **out, uint64_t size)
{
    qcow2__digest *d;
    int rc;

    *out = NULL;
    d = qcow2__calloc(1, sizeof(*d));
    if (!d)
        return qcow2__nomem();
    rc = qcow2__hash_new(&d->h);
    if (!rc)
        rc = qcow2__hash_new(&d->runs);
    if (rc) {
        qcow2__digest_free(d);
        return rc;
    }
    d->size = size;
    *out = d;
    return 0;
}

/* Whether p[0..n) are all zero (n >= 1): one byte, then memcmp against itself. */
static bool digest_block_zero(const uint8_t *p, size_t n)
{
    return p[0] == 0 && memcmp(p, p + 1, n - 1) == 0;
}

/* A data block follows: the zero run before it (if any) goes into the list. */
static void digest_end_run(qcow2__digest *d)
{
    uint8_t rec[16];

    if (!d->zlen)
        return;
    qcow2__put_be64(rec, d->zstart);
    qcow2__put_be64(rec + 8, d->zlen);
    qcow2__hash_update(d->runs, rec, sizeof(rec));
    d->nruns++;
    d->zlen = 0;
}

/* n zero bytes of whole blocks (or the short last one) at d->pos. */
static void digest_zero_blocks(qcow2__digest *d, uint64_t n)
{
    if (!d->zlen)
        d->zstart = d->pos;
    d->zlen += n;
    d->pos += n;
}

/*
 * Whole blocks p[0..n) at d->pos (n a multiple of the block size, or ending
 * at the end of the disk): each run of non-zero blocks is one hash update.
 */
static void digest_blocks(qcow2__digest *d, const uint8_t *p, size_t n)
{
    size_t i = 0, run = 0; /* p[run..i) is data not yet hashed */

    while (i < n) {
        size_t b = (size_t)qcow2__min(QCOW2__DIGEST_BLOCK, n - i);

        if (digest_block_zero(p + i, b)) {
            if (i > run) {
                qcow2__hash_update(d->h, p + run, i - run);
                d->pos += i - run;
            }
            digest_zero_blocks(d, b);
            run = i + b;
        } else if (i == run) {
            digest_end_run(d);
        }
        i += b;
    }
    if (i > run) {
        qcow2__hash_update(d->h, p + run, i - run);
        d->pos += i - run;
    }
}

/* Bytes of the block at pos (a whole block, or what is left of the disk). */
static size_t digest_block_len(const qcow2__digest *d, uint64_t pos)
{
    return (size_t)qcow2__min(QCOW2__DIGEST_BLOCK, d->size - (pos - pos % QCOW2__DIGEST_BLOCK));
}

/* Gather a block cut by a run boundary; hash it once it is whole. */
static size_t digest_gather(qcow2__digest *d, const uint8_t *buf, size_t len)
{
    size_t want = digest_block_len(d, d->pos + d->fill);
    size_t n = qcow2__min(want - d->fill, len);

    if (buf)
        memcpy(d->blk + d->fill, buf, n);
    else
        memset(d->blk + d->fill, 0, n);
    d->fill += n;
    if (d->fill == want) {
        d->fill = 0;
        digest_blocks(d, d->blk, want);
    }
    return n;
}

void qcow2__digest_data(qcow2__digest *d, const uint8_t *buf, size_t len)
{
    while (len) {
        size_t n;

        if (d->fill || len < digest_block_len(d, d->pos)) {
            n = digest_gather(d, buf, len);
        } else {
            /* Whole blocks straight from the caller's buffer. */
            n = len - len % QCOW2__DIGEST_BLOCK;
            if (d->pos + len >= d->size)
                n = len; /* through the short last block */
            digest_blocks(d, buf, n);
        }
        buf += n;
        len -= n;
    }
}

void qcow2__digest_zeroes(qcow2__digest *d, uint64_t len)
{
    while (len) {
        uint64_t n;

        if (d->fill || len < digest_block_len(d, d->pos)) {
            n = digest_gather(d, NULL, (size_t)qcow2__min(len, QCOW2__DIGEST_BLOCK));
        } else {
            /* Whole zero blocks: listed, never touched. */
            n = len - len % QCOW2__DIGEST_BLOCK;
            if (d->pos + len >= d->size)
                n = len;
            digest_zero_blocks(d, n);
        }
        len -= n;
    }
}

void qcow2__digest_final(qcow2__digest *d, uint8_t out[16])
{
    uint8_t trailer[40];

    if (d->fill) {
        /* Only when fewer bytes than the size were fed: hash what is there. */
        size_t n = d->fill;
        d->fill = 0;
        digest_blocks(d, d->blk, n);
    }
    digest_end_run(d);
    memcpy(trailer, digest_magic, 8);
    qcow2__put_be64(trailer + 8, d->size);
    qcow2__put_be64(trailer + 16, d->nruns);
    qcow2__hash_final(d->runs, trailer + 24);
    qcow2__hash_update(d->h, trailer, sizeof(trailer));
    qcow2__hash_final(d->h, out);
}

void qcow2__digest_free(qcow2__digest *d)
{
    if (!d)
        return;
    qcow2__hash_free(d->h);
    qcow2__hash_free(d->runs);
    qcow2__free(d);
}
