/*
 * qemu_oracle: run qemu-img / qemu-io as the reference implementation from
 * tests. Small wrappers around /bin/sh that return the exit status and keep
 * the combined output for failure messages, plus file dumps so that images
 * built in a memfs can be handed to qemu-img.
 */
#ifndef QCOW2_TEST_QEMU_ORACLE_H
#define QCOW2_TEST_QEMU_ORACLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "memfs.h"

/*
 * Run a shell command built from fmt. Returns its exit status (0..255), or
 * -1 when it could not be run or died from a signal. stdout and stderr are
 * captured into out (NUL-terminated, truncated to out_len; out may be NULL).
 */
int qo_sh(char *out, size_t out_len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Whether qemu-img and qemu-io can be run. */
bool qo_have_qemu(void);

/* Write data[0..len) to path (created or replaced). 0 or -errno. */
int qo_write_file(const char *path, const void *data, size_t len);

/* Read a whole file into a malloc'd buffer, followed by a NUL (not counted in *len_out).
 * NULL on failure. */
uint8_t *qo_read_file(const char *path, size_t *len_out);

/* Copy the memfs file mpath to the real file dst. 0 or -errno (-ENOENT if absent). */
int qo_dump_memfs(memfs *fs, const char *mpath, const char *dst);

/*
 * `qemu-img check` on path: returns its exit status (0 clean, 2 corrupt,
 * 3 leaks only, 1 check failed, -1 not run); its output goes to out.
 */
int qo_check(const char *path, char *out, size_t out_len);

/*
 * One integer field of `qemu-img check --output=json` (e.g. "leaks",
 * "compressed-clusters"); -1 when the field is absent or the run failed.
 */
int64_t qo_check_json_field(const char *path, const char *field);

/*
 * Wait until fd (the read end of a pipe from a child's stdout) has shown
 * needle (up to 64 bytes), for at most secs seconds. 0 when it has; -1 at end
 * of file (the child exited) or after secs.
 */
int qo_wait_output(int fd, const char *needle, int secs);

/* A fresh directory under /tmp (mkdtemp) named after tag, copied to dir. 0 or -errno. */
int qo_mkdtemp(char *dir, size_t dir_len, const char *tag);

/* rm -rf dir (only below /tmp). */
void qo_rmtree(const char *dir);

#endif /* QCOW2_TEST_QEMU_ORACLE_H */
