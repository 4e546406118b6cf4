/*
 * memfs: an in-memory "file system" for tests and fuzzers. Named files live
 * in memory; memfs_open() is a qcow2_io_open_fn, so a whole backing chain can
 * be opened from memory:
 *
 *     memfs *fs = memfs_new();
 *     memfs_put(fs, "/m/base.raw", base, base_len);
 *     memfs_put(fs, "/m/top.qcow2", top, top_len);   // backing "base.raw"
 *     qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
 *     o.open_fn = memfs_open; o.open_payload = fs;
 *     memfs_open(&io, "/m/top.qcow2", 0, fs);
 *     qcow2_image_open_io(&img, io, "/m/top.qcow2", &o);
 *
 * Paths are normalised ("a//b", "a/./b", "a/x/../b" all name "a/b"); there
 * are no directories. Each open returns its own handle; all handles of one
 * file share its bytes. Writes through a handle opened without
 * QCOW2_IO_RDWR fail with -EBADF. Handles emulate the image lock: a WRITE
 * lock excludes every other lock on the file, READ locks coexist. A file
 * grows at most to MEMFS_MAX_FILE_BYTES (-EFBIG past it).
 *
 * Every handle must be closed before memfs_free(). Not thread-safe.
 */
#ifndef QCOW2_TEST_MEMFS_H
#define QCOW2_TEST_MEMFS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qcow2/sys/io.h"

#define MEMFS_MAX_FILE_BYTES (4ull << 30)

typedef struct memfs memfs;

/* A new empty file system, or NULL when out of memory. */
memfs *memfs_new(void);

/* Free the file system and all its files (every handle must be closed). */
void memfs_free(memfs *fs);

/* Create or replace path with a copy of data[0..len). 0 or -ENOMEM/-EFBIG. */
int memfs_put(memfs *fs, const char *path, const void *data, size_t len);

/* The bytes of path (borrowed, valid until the next write), or NULL if absent. */
const uint8_t *memfs_get(memfs *fs, const char *path, size_t *len_out);

/* Whether path exists. */
bool memfs_exists(memfs *fs, const char *path);

/* Remove path; open handles keep working on the removed bytes. 0 or -ENOENT. */
int memfs_remove(memfs *fs, const char *path);

/*
 * qcow2_io_open_fn: open path in the memfs given as payload. Flags as for
 * files: QCOW2_IO_RDWR; QCOW2_IO_CREATE (-EEXIST if present, with
 * QCOW2_IO_TRUNC: replace); absent without CREATE: -ENOENT.
 */
int memfs_open(qcow2_io **out, const char *path, unsigned flags, void *payload);

#endif /* QCOW2_TEST_MEMFS_H */
