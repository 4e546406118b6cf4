/*
 * tree_fixture: helpers for the snapshot-tree suites (tests/snapshot/).
 *
 * A disk and its store live in a mkdtemp directory. The tests keep a model
 * of what every snapshot and branch must contain (one byte buffer per name)
 * and check the store against it by digest: the expected digest is computed
 * with the same function (qcow2_image_digest) over a raw file holding the
 * model's buffer, never hard-coded. qemu-io plays the VM, qemu-img is the
 * oracle for check and compare.
 */
#ifndef QSNAP_TEST_TREE_FIXTURE_H
#define QSNAP_TEST_TREE_FIXTURE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "qsnap/qsnap.h"

#define TF_SIZE (4u << 20) /* virtual size of every test disk */
#define TF_MAX_STATES 64
#define TF_MAX_FROZEN 256

/* What one snapshot or branch must contain. */
typedef struct tf_state {
    char name[64];
    bool branch;
    uint8_t *data; /* TF_SIZE bytes */
} tf_state;

typedef struct tf_model {
    size_t n;
    tf_state s[TF_MAX_STATES];
} tf_model;

void tf_model_free(tf_model *m);
void tf_model_copy(tf_model *dst, const tf_model *src);
/* The buffer of name (NULL when absent). */
uint8_t *tf_model_get(tf_model *m, const char *name);
/* Set name to a copy of data (adds it when absent). */
void tf_model_set(tf_model *m, const char *name, bool branch, const uint8_t *data);
void tf_model_del(tf_model *m, const char *name);
/* Fill len bytes at off of name's buffer with pattern. */
void tf_model_write(tf_model *m, const char *name, int pattern, uint64_t off, uint64_t len);

/*
 * The per-test state the tree suites share: the test's directory and disk
 * (tf_setup fills them), the disk's first content and a model. A suite's
 * .init calls tf_suite_init(); its .fini is tf_suite_fini.
 */
extern char tf_dir[256], tf_disk[512];
extern uint8_t *tf_d0; /* TF_SIZE bytes */
extern tf_model tf_m;
/* tf_d0 zeroed but for its first MiB, filled with pattern; no directory yet. */
void tf_suite_init(int pattern);
/* Free tf_d0 and tf_m; remove tf_dir when a test made it. */
void tf_suite_fini(void);

/*
 * A raw disk holding tf_d0 in a fresh tf_dir (tf_setup with tag), its store
 * created and snapshot s1 taken (asserted); m gets s1 and main, both tf_d0.
 * Returns the open store.
 */
qsnap_store *tf_start_s1(const char *tag, tf_model *m);

/* Assert rc is 0; otherwise fail with what and qsnap's last message. */
void tf_ok(int rc, const char *what);
/* Write pattern to name's file (libqcow2, asserting it has one) and to the model's buffer. */
void tf_write_state(qsnap_store *s, tf_model *m, const char *name, int pattern, uint64_t off,
                    uint64_t len);

/* A fresh directory under /tmp; the disk path is DIR/disk.img (raw) or DIR/disk.qcow2. */
void tf_setup(char *dir, size_t dir_len, char *disk, size_t disk_len, const char *tag, bool qcow2,
              const uint8_t *content);

/* Write with qemu-io, as a VM would (qcow2 head). Asserts success. */
void tf_vm_write(const char *path, int pattern, uint64_t off, uint64_t len);
/* Write with libqcow2 (fast, for fixtures). Asserts success. */
void tf_lib_write(const char *path, int pattern, uint64_t off, uint64_t len);

/* Digest of an image's chain (opened without locks). 0 or a qcow2 error. */
int tf_digest_file(const char *path, uint8_t out[16]);
/* Digest of a raw buffer (written to a temporary raw file in dir). */
void tf_digest_buf(const char *dir, const uint8_t *buf, size_t len, uint8_t out[16]);

/*
 * Rewrite disk's meta file in the text form of store version 1 or 2 (the
 * log folded into it first), for tests that damage the text or read old
 * stores; the store writes version 3 (binary) at its next save.
 */
void tf_meta_as_text(const char *disk, unsigned version);

/* Open the store (asserting success). */
qsnap_store *tf_open(const char *disk, unsigned flags);

/* Execute a plan; returns the rc; *summary (if non-NULL) gets a malloc'd copy of the summary. */
int tf_exec(qsnap_store *s, qsnap_plan *p, char **summary);
/* Convenience wrappers: build, execute, free. Return the first non-zero rc. */
int tf_create(qsnap_store *s, const char *name);
int tf_create_opts(qsnap_store *s, const qsnap_create_opts *co);
int tf_revert(qsnap_store *s, const char *snap, const char *new_branch, bool discard,
              char **summary);
int tf_switch(qsnap_store *s, const char *branch);
int tf_branch(qsnap_store *s, const char *name, const char *at);
int tf_delete(qsnap_store *s, const char *snap, unsigned flags, char **summary);
int tf_commit(qsnap_store *s, const char *branch);

/* The file of a snapshot or branch from qsnap_list (malloc'd), or NULL. */
char *tf_file_of(qsnap_store *s, const char *name);
/* The current branch's head path (malloc'd) and name (name_out may be NULL). */
char *tf_current_path(qsnap_store *s, char *name_out, size_t name_len);

/*
 * Check the store against the model: the named snapshots and branches
 * listed are exactly the model's (kinds too), each has the model's content
 * by digest, and `qemu-img check` is clean on every qcow2 in the store (and
 * on the disk when it is qcow2). Asserts; `step` names the step in messages.
 */
void tf_check_store(qsnap_store *s, const tf_model *m, const char *dir, const char *step);

/* Whether the store's content equals the model's (no asserts; a reason in why). */
bool tf_store_matches(qsnap_store *s, const tf_model *m, const char *dir, char *why,
                      size_t why_len);

/* qemu-img check on every qcow2 in the store directory and the disk; asserts clean. */
void tf_qemu_check_all(const char *store_dir, const char *disk, const char *step);

/* Frozen layers: fingerprint and mtime recorded when first seen frozen. */
typedef struct tf_frozen {
    size_t n;
    struct {
        char path[512];
        uint8_t fp[16];
        int64_t mtime_ns;
    } f[TF_MAX_FROZEN];
} tf_frozen;

/* Record every snapshot's and unnamed node's layer file not yet known. */
void tf_frozen_record(tf_frozen *fz, qsnap_store *s);
/* Forget everything and record again (after commit, which may rewrite frozen layers). */
void tf_frozen_reset(tf_frozen *fz, qsnap_store *s);
/*
 * Assert every recorded file that still exists kept its fingerprint and
 * mtime, except paths listed in `exempt` (NULL-terminated; their record is
 * taken again). Files that are gone are forgotten.
 */
void tf_frozen_check(tf_frozen *fz, const char *const *exempt, const char *step);

/*
 * A snapshot of every file under dir: relative path, type, size, mode, mtime
 * and content fingerprint, one line each (malloc'd). Equal strings mean no
 * file changed.
 */
char *tf_tree_snapshot(const char *dir);

/* Number of steps of a plan (numbered lines of its text description). */
size_t tf_plan_steps(const qsnap_plan *p);

#endif /* QSNAP_TEST_TREE_FIXTURE_H */
