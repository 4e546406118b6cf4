/*
 * The image digest of docs/DIGEST.md computed the plain way from flat
 * content, as a model the tests compare libqcow2's streaming digest with.
 */
#ifndef DIGEST_MODEL_H
#define DIGEST_MODEL_H

#include <stddef.h>
#include <stdint.h>

/* One-shot XXH3-128 of buf in canonical (big-endian) form. */
void dm_xxh128_be(const void *buf, size_t len, uint8_t out[16]);

/* Big-endian 64-bit store. */
void dm_put_be64(uint8_t *p, uint64_t v);

/*
 * The digest of size bytes of content: the non-zero 4 KiB blocks in order,
 * then the trailer (magic, size, number of zero runs, XXH3-128 of the
 * zero-run list), one-shot.
 */
void dm_image_digest(const uint8_t *buf, uint64_t size, uint8_t out[16]);

#endif
