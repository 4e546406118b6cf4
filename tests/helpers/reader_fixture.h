/*
 * reader_fixture: small helpers for the reader suites (test_header, test_image,
 * test_cluster, test_read, test_ops). Images are made by the library itself
 * in a memfs, opened from it with memfs as the backing-file opener, and
 * damaged by poking big-endian fields of the file's bytes.
 */
#ifndef QCOW2_TEST_READER_FIXTURE_H
#define QCOW2_TEST_READER_FIXTURE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "memfs.h"
#include "qcow2/qcow2.h"

/* Create a qcow2 image at path in fs (co: options; format, open_fn filled in). 0 or QCOW2_E*. */
int rfx_create(memfs *fs, const char *path, const qcow2_create_opts *co);

/* Create a v3 qcow2 image of size bytes, cluster_size bytes per cluster, no backing file. */
int rfx_create_simple(memfs *fs, const char *path, uint64_t size, uint32_t cluster_size);

/* Open path from fs with flags (QCOW2_OPEN_*) and cache_bytes (0 = default). */
int rfx_open(memfs *fs, const char *path, unsigned flags, uint64_t cache_bytes, qcow2_image **out);

/* As rfx_open with full options (open_fn and payload are set here). */
int rfx_open_opts(memfs *fs, const char *path, qcow2_open_opts *o, qcow2_image **out);

/* Open read-write, write buf[0..len) at off, flush and close. 0 or QCOW2_E*. */
int rfx_write(memfs *fs, const char *path, uint64_t off, const void *buf, size_t len);

/* Write len bytes of one byte value (pattern) at off. */
int rfx_fill(memfs *fs, const char *path, uint64_t off, size_t len, int pattern);

/* Open read-write and make [off, off+len) zero (flags QCOW2_ZERO_*). */
int rfx_zero(memfs *fs, const char *path, uint64_t off, uint64_t len, unsigned flags);

/* Write len bytes of pattern compressed at off (cluster aligned). */
int rfx_compressed(memfs *fs, const char *path, uint64_t off, size_t len, int pattern);

/* Overwrite bytes of a memfs file in place (the file grows when needed). */
void rfx_poke(memfs *fs, const char *path, uint64_t off, const void *buf, size_t len);
void rfx_poke8(memfs *fs, const char *path, uint64_t off, uint8_t v);
void rfx_poke32(memfs *fs, const char *path, uint64_t off, uint32_t v);
void rfx_poke64(memfs *fs, const char *path, uint64_t off, uint64_t v);
uint32_t rfx_peek32(memfs *fs, const char *path, uint64_t off);
uint64_t rfx_peek64(memfs *fs, const char *path, uint64_t off);

/* Truncate or extend a memfs file (zero-filled). */
void rfx_resize(memfs *fs, const char *path, size_t len);

/*
 * Rewrite the extension area of a qcow2 file in fs: from header_length (72
 * for v2), a backing-format extension when fmt is not NULL, then the end
 * marker; the backing name (NULL: none) is stored at name_off (0: just after
 * the end marker) and the header's backing fields set to match.
 */
void rfx_set_backing(memfs *fs, const char *path, const char *name, const char *fmt,
                     uint64_t name_off);

/* The message of the last error on this thread ("" when none). */
const char *rfx_msg(void);

/* Whether s contains every one of the NULL-terminated list of needles. */
bool rfx_has_all(const char *s, ...);

/* Deterministic pseudo-random bytes. */
void rfx_random(uint64_t seed, void *buf, size_t len);

#endif /* QCOW2_TEST_READER_FIXTURE_H */
