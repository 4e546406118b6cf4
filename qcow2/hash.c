/*
 * Content fingerprints: xxh3-128 over a stream of bytes, from the system
 * libxxhash's streaming API. Digests (image digest, frozen-layer
 * fingerprints) are the canonical big-endian 16 bytes, so they compare and
 * print the same on every host. Zero runs are hashed from a static buffer
 * without the caller allocating one.
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
