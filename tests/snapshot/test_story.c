/*
 * The scripted story of the snapshot tree on a raw disk and again on a qcow2 disk,
 * through libqsnap's API, with qemu-io as the VM (writing to the path
 * qsnap_current() gives) and qemu-img as the oracle:
 *
 *   create s1, write, create s2, write, revert to s1 (the dirty main is
 *   kept), write, revert with discard (dropped, reported), revert to s2
 *   (the clean branch is dropped), write, create s3, write, switch back to
 *   main, write, create s4, create s5, write, delete s4 (one frozen
 *   dependent: merged), delete s3 (one dependent: merged into a head),
 *   delete s2 (two dependents: kept unnamed), branch b2, write, delete s5
 *   with QSNAP_DELETE_STREAM, a subtree s6/s7/work removed with
 *   QSNAP_DELETE_CHILDREN (refused while work is current, then while it holds
 *   changes, until QSNAP_DELETE_FORCE), branch c at s1,
 *   write, delete s1 (the root: the disk), commit c into the disk (the disk
 *   file then holds c's content: qemu-img compare), export every state.
 *
 * After every step: every snapshot and branch has the model's content (by
 * digest), qemu-img check is clean on every qcow2 in the store, qsnap_verify
 * finds nothing, and every frozen layer kept its fingerprint and mtime
 * (commit exempt; a delete that merges into a frozen layer exempts that
 * layer only).
 */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qcow2/qcow2.h"
#include "qemu_oracle.h"
#include "qsnap/qsnap.h"
#include "tree_fixture.h"

#define KiB 1024u
#define MiB (1024u * 1024u)

static tf_frozen FZ;
static qsnap_store *S;

static void teardown(void)
{
    qsnap_store_close(S);
    S = NULL;
    tf_suite_fini();
}

TestSuite(story, .fini = teardown, .timeout = 120);

/* After every step: content, qemu-img check, verify, frozen layers untouched. */
static void step_done(const char *step, const char *const *exempt)
{
    tf_check_store(S, &tf_m, tf_dir, step);
    tf_frozen_check(&FZ, exempt, step);
    tf_frozen_record(&FZ, S);
}

/* The VM writes to the current head (the path qsnap_current gives); the model follows. */
static void vm_write(int pattern, uint64_t off, uint64_t len)
{
    char name[128];
    char *path = tf_current_path(S, name, sizeof(name));

    tf_vm_write(path, pattern, off, len);
    tf_model_write(&tf_m, name, pattern, off, len);
    free(path);
}

static void expect_ok(int rc, const char *what)
{
    cr_assert_eq(rc, 0, "%s: rc %d: %s (hint: %s)", what, rc, qsnap_error_last()->message,
                 qsnap_error_last()->hint);
}

static void snapshot_of_current(const char *snap)
{
    char cur[128];
    char *p = tf_current_path(S, cur, sizeof(cur));

    free(p);
    expect_ok(tf_create(S, snap), snap);
    tf_model_set(&tf_m, snap, false, tf_model_get(&tf_m, cur));
}

static size_t count_kind(qsnap_kind kind)
{
    qsnap_node *l = NULL;
    size_t n = 0, c = 0;

    cr_assert_eq(qsnap_list(S, &l, &n), 0);
    for (size_t i = 0; i < n; i++)
        c += l[i].kind == kind;
    qsnap_list_free(l, n);
    return c;
}

static bool is_dirty(const char *branch)
{
    qsnap_node *l = NULL;
    size_t n = 0;
    bool d = false, found = false;

    cr_assert_eq(qsnap_list(S, &l, &n), 0);
    for (size_t i = 0; i < n; i++) {
        if (l[i].kind == QSNAP_BRANCH && !strcmp(l[i].name, branch)) {
            d = l[i].dirty;
            found = true;
        }
    }
    qsnap_list_free(l, n);
    cr_assert(found, "no branch %s", branch);
    return d;
}

static void expect_current(const char *want)
{
    char name[128];
    char *p = tf_current_path(S, name, sizeof(name));

    cr_assert_str_eq(name, want);
    cr_assert(strncmp(p, qsnap_store_path(S), strlen(qsnap_store_path(S))) == 0,
              "current head %s is not in the store", p);
    free(p);
}

/* The image file at path (format fmt) has exactly buf's content: qemu-img compare. */
static void expect_file_content(const char *path, const char *fmt, const uint8_t *buf,
                                const char *what)
{
    char exp[600], out[4096];

    snprintf(exp, sizeof(exp), "%s/.want.raw", tf_dir);
    cr_assert_eq(qo_write_file(exp, buf, TF_SIZE), 0);
    cr_assert_eq(qo_sh(out, sizeof(out), "qemu-img compare -U -f %s -F raw '%s' '%s'", fmt, path,
                       exp),
                 0, "%s: %s differs from the expected content: %s", what, path, out);
    unlink(exp);
}

static void export_all(bool qcow2_disk)
{
    char out[600], msg[4096];

    for (size_t i = 0; i < tf_m.n; i++) {
        const char *name = tf_m.s[i].name;
        uint8_t got[16], want[16];

        snprintf(out, sizeof(out), "%s/export-%s.raw", tf_dir, name);
        expect_ok(qsnap_export(S, name, out, QCOW2_FORMAT_RAW, NULL, NULL), "export raw");
        expect_file_content(out, "raw", tf_m.s[i].data, name);
        unlink(out);
        snprintf(out, sizeof(out), "%s/export-%s.qcow2", tf_dir, name);
        expect_ok(qsnap_export(S, name, out, QCOW2_FORMAT_QCOW2, NULL, NULL), "export qcow2");
        cr_assert_eq(qo_sh(msg, sizeof(msg), "qemu-img check '%s'", out), 0, "%s", msg);
        cr_assert_eq(qo_sh(msg, sizeof(msg), "qemu-img info --output=json '%s'", out), 0);
        cr_assert_null(strstr(msg, "backing-filename"), "export %s is not standalone: %s", name,
                       msg);
        cr_assert_eq(tf_digest_file(out, got), 0);
        tf_digest_buf(tf_dir, tf_m.s[i].data, TF_SIZE, want);
        cr_assert(!memcmp(got, want, 16), "export of %s differs from the model", name);
        expect_file_content(out, "qcow2", tf_m.s[i].data, name);
        unlink(out);
    }
    (void)qcow2_disk;
    /* An unknown name is ENOTFOUND and writes nothing. */
    snprintf(out, sizeof(out), "%s/export-none.raw", tf_dir);
    cr_assert_eq(qsnap_export(S, "no-such", out, QCOW2_FORMAT_RAW, NULL, NULL), QSNAP_ENOTFOUND);
    cr_assert_neq(access(out, F_OK), 0);
}

static void story(bool qcow2_disk)
{
    uint8_t *d0 = calloc(1, TF_SIZE);
    char gen[128], *sum = NULL, *before, *after, *s5file, *s2file;

    if (!qo_have_qemu())
        cr_skip_test("qemu-img/qemu-io not installed");
    cr_assert_not_null(d0);
    memset(d0, 0x11, 1 * MiB);
    memset(d0 + 3 * MiB, 0x12, 64 * KiB);
    tf_setup(tf_dir, sizeof(tf_dir), tf_disk, sizeof(tf_disk), qcow2_disk ? "story-q" : "story-r",
             qcow2_disk, d0);
    S = tf_open(tf_disk, QSNAP_OPEN_CREATE);
    cr_assert_not(qsnap_store_initialized(S));

    /* 1. The first snapshot sets up the store; branch main goes on from it. */
    expect_ok(tf_create(S, "s1"), "create s1");
    tf_model_set(&tf_m, "s1", false, d0);
    tf_model_set(&tf_m, "main", true, d0);
    cr_assert(qsnap_store_initialized(S));
    expect_current("main");
    cr_assert_not(is_dirty("main"));
    {
        char *f = tf_file_of(S, "s1");
        char real[1024];
        cr_assert_not_null(realpath(tf_disk, real));
        cr_assert_str_eq(f, real, "the root snapshot's layer is the disk itself");
        free(f);
    }
    step_done("create s1", NULL);

    /* 2. The VM writes; main is dirty. */
    vm_write(0x21, 1 * MiB, 256 * KiB);
    cr_assert(is_dirty("main"));
    step_done("write 1", NULL);

    /* 3. Snapshot again, write again (one write not cluster-aligned: COW over the backing). */
    snapshot_of_current("s2");
    cr_assert_not(is_dirty("main"));
    step_done("create s2", NULL);
    vm_write(0x31, 0, 64 * KiB);
    vm_write(0x32, 3 * MiB + 32 * KiB, 64 * KiB);
    step_done("write 2", NULL);

    /* 4. Revert to s1: the dirty main is kept; a new branch (generated name) is current. */
    expect_ok(tf_revert(S, "s1", NULL, false, &sum), "revert s1");
    free(tf_current_path(S, gen, sizeof(gen)));
    cr_assert_str_neq(gen, "main");
    cr_assert_eq(qsnap_name_check(gen), 0);
    cr_assert(strstr(sum, "main"), "summary does not say main is kept: %s", sum);
    free(sum);
    tf_model_set(&tf_m, gen, true, tf_model_get(&tf_m, "s1"));
    cr_assert(is_dirty("main"));
    step_done("revert s1", NULL);

    vm_write(0x41, 2 * MiB, 128 * KiB);
    step_done("write 3", NULL);

    /* 5. Revert with discard: the dirty branch is dropped, and the summary says so. */
    expect_ok(tf_revert(S, "s1", NULL, true, &sum), "revert s1 --discard");
    cr_assert(strstr(sum, "discard"), "summary does not report the discard: %s", sum);
    cr_assert(strstr(sum, "128"), "summary does not say how much was dropped: %s", sum);
    free(sum);
    expect_current(gen);
    tf_model_set(&tf_m, gen, true, tf_model_get(&tf_m, "s1"));
    cr_assert_eq(count_kind(QSNAP_BRANCH), 2);
    step_done("revert s1 --discard", NULL);

    /* 6. Revert to s2 from a clean branch: the clean branch is dropped. */
    expect_ok(tf_revert(S, "s2", "work", false, &sum), "revert s2");
    free(sum);
    tf_model_del(&tf_m, gen);
    tf_model_set(&tf_m, "work", true, tf_model_get(&tf_m, "s2"));
    expect_current("work");
    cr_assert_eq(count_kind(QSNAP_BRANCH), 2, "the clean branch %s was not dropped", gen);
    step_done("revert s2", NULL);

    vm_write(0x51, 512 * KiB, 64 * KiB);
    snapshot_of_current("s3");
    step_done("create s3", NULL);
    vm_write(0x61, 2 * MiB + 4 * KiB, 8 * KiB);
    step_done("write 4", NULL);

    /* 7. Switch back to main: it still has its changes. */
    expect_ok(tf_switch(S, "main"), "switch main");
    expect_current("main");
    step_done("switch main", NULL);
    vm_write(0x71, 1 * MiB + 64 * KiB, 64 * KiB);
    snapshot_of_current("s4");
    step_done("create s4", NULL);
    snapshot_of_current("s5");
    vm_write(0x81, 3 * MiB + 512 * KiB, 64 * KiB);
    step_done("create s5", NULL);

    /* 8. Delete s4: s5 was taken right after it, with nothing written between, so
     * both are the same layer (a snapshot of an unchanged branch adds none): only
     * the name goes, and no file changes. */
    s5file = tf_file_of(S, "s5");
    {
        char *s4file = tf_file_of(S, "s4");
        cr_assert_str_eq(s4file, s5file, "s5 should share s4's layer");
        free(s4file);
    }
    expect_ok(tf_delete(S, "s4", 0, &sum), "delete s4");
    cr_assert(strstr(sum, "still used"), "%s", sum);
    free(sum);
    tf_model_del(&tf_m, "s4");
    cr_assert_eq(count_kind(QSNAP_UNNAMED), 0);
    step_done("delete s4 (its layer is s5's too)", NULL);
    free(s5file);

    /* 9. Delete s3: one dependent, work's head: merged. */
    expect_ok(tf_delete(S, "s3", 0, &sum), "delete s3");
    free(sum);
    tf_model_del(&tf_m, "s3");
    cr_assert_eq(count_kind(QSNAP_UNNAMED), 0);
    step_done("delete s3 (merge into a head)", NULL);

    /* 10. Delete s2: two dependents (s5, work): kept as an unnamed node by default. */
    s2file = tf_file_of(S, "s2");
    expect_ok(tf_delete(S, "s2", 0, &sum), "delete s2");
    cr_assert(strstr(sum, "unnamed"), "%s", sum);
    free(sum);
    tf_model_del(&tf_m, "s2");
    cr_assert_eq(count_kind(QSNAP_UNNAMED), 1);
    cr_assert_eq(access(s2file, F_OK), 0, "the kept layer %s is gone", s2file);
    free(s2file);
    step_done("delete s2 (kept unnamed)", NULL);

    /* 11. A second branch on s5, then delete s5 with stream: copied into both heads. */
    expect_ok(tf_branch(S, "b2", "s5"), "branch b2");
    tf_model_set(&tf_m, "b2", true, tf_model_get(&tf_m, "s5"));
    expect_current("main");
    {
        char *b2 = tf_file_of(S, "b2");
        tf_vm_write(b2, 0x91, 0, 4 * KiB);
        tf_model_write(&tf_m, "b2", 0x91, 0, 4 * KiB);
        free(b2);
    }
    step_done("branch b2", NULL);
    s5file = tf_file_of(S, "s5");
    expect_ok(tf_delete(S, "s5", QSNAP_DELETE_STREAM, &sum), "delete s5 --stream");
    free(sum);
    tf_model_del(&tf_m, "s5");
    cr_assert_eq(count_kind(QSNAP_UNNAMED), 1, "--stream must not keep an unnamed node");
    cr_assert_neq(access(s5file, F_OK), 0, "the streamed layer %s is still there", s5file);
    free(s5file);
    step_done("delete s5 --stream", NULL);

    /* 12. A subtree: s6 -> s7 -> work; --children removes it, not while work is current. */
    expect_ok(tf_switch(S, "work"), "switch work");
    snapshot_of_current("s6");
    vm_write(0xa1, 1 * MiB, 64 * KiB);
    snapshot_of_current("s7");
    vm_write(0xa2, 1 * MiB + 64 * KiB, 64 * KiB);
    step_done("create s6, s7", NULL);
    before = tf_tree_snapshot(tf_dir);
    {
        qsnap_plan *p = NULL;
        int rc = qsnap_plan_delete(&p, S, "s6", QSNAP_DELETE_CHILDREN);
        qsnap_plan_free(p);
        cr_assert_eq(rc, QSNAP_EREFUSED, "deleting the subtree of the current branch: rc %d", rc);
        cr_assert(strstr(qsnap_error_last()->message, "work"), "%s",
                  qsnap_error_last()->message);
        cr_assert(qsnap_error_last()->hint[0], "a refusal gives a hint");
    }
    after = tf_tree_snapshot(tf_dir);
    cr_assert_str_eq(before, after, "a refused delete changed files");
    free(before);
    free(after);
    expect_ok(tf_switch(S, "main"), "switch main");
    /* work holds changes that no snapshot keeps: refused without force, naming it. */
    before = tf_tree_snapshot(tf_dir);
    {
        qsnap_plan *p = NULL;
        int rc = qsnap_plan_delete(&p, S, "s6", QSNAP_DELETE_CHILDREN);
        qsnap_plan_free(p);
        cr_assert_eq(rc, QSNAP_EREFUSED, "deleting a subtree with a dirty branch: rc %d", rc);
        cr_assert(strstr(qsnap_error_last()->message, "branch work (64.0 KiB)"), "%s",
                  qsnap_error_last()->message);
        cr_assert(strstr(qsnap_error_last()->hint, "--force"), "%s", qsnap_error_last()->hint);
    }
    after = tf_tree_snapshot(tf_dir);
    cr_assert_str_eq(before, after, "a refused delete changed files");
    free(before);
    free(after);
    expect_ok(tf_delete(S, "s6", QSNAP_DELETE_CHILDREN | QSNAP_DELETE_FORCE, &sum),
              "delete s6 --children --force");
    cr_assert(strstr(sum, "dropped the changes of branch work (64.0 KiB)"), "%s", sum);
    free(sum);
    tf_model_del(&tf_m, "s6");
    tf_model_del(&tf_m, "s7");
    tf_model_del(&tf_m, "work");
    cr_assert_eq(count_kind(QSNAP_BRANCH), 2);
    step_done("delete s6 --children", NULL);

    /* 13. A branch right on the disk, written, then delete the root snapshot s1. */
    expect_ok(tf_branch(S, "c", "s1"), "branch c");
    tf_model_set(&tf_m, "c", true, tf_model_get(&tf_m, "s1"));
    {
        char *c = tf_file_of(S, "c");
        tf_vm_write(c, 0xb1, 1 * MiB + 128 * KiB, 64 * KiB);
        tf_model_write(&tf_m, "c", 0xb1, 1 * MiB + 128 * KiB, 64 * KiB);
        tf_vm_write(c, 0xb2, TF_SIZE - 64 * KiB, 64 * KiB);
        tf_model_write(&tf_m, "c", 0xb2, TF_SIZE - 64 * KiB, 64 * KiB);
        tf_vm_write(c, 0xb3, 10 * KiB, 3 * KiB);
        tf_model_write(&tf_m, "c", 0xb3, 10 * KiB, 3 * KiB);
        free(c);
    }
    step_done("branch c, write", NULL);
    expect_ok(tf_delete(S, "s1", 0, &sum), "delete s1 (root)");
    free(sum);
    tf_model_del(&tf_m, "s1");
    cr_assert_eq(access(tf_disk, F_OK), 0, "the disk is never removed");
    step_done("delete s1 (the root)", NULL);

    /* 14. Commit c into the disk: the disk file holds c's content, nothing else changes. */
    expect_ok(tf_commit(S, "c"), "commit c");
    expect_file_content(tf_disk, qcow2_disk ? "qcow2" : "raw", tf_model_get(&tf_m, "c"),
                        "disk after commit");
    cr_assert_not(is_dirty("c"), "the committed branch's head was not emptied");
    tf_frozen_reset(&FZ, S); /* commit is allowed to rewrite frozen layers */
    step_done("commit c", NULL);
    /* The branch goes on: write more and commit again. */
    {
        char *c = tf_file_of(S, "c");
        tf_vm_write(c, 0xc1, 2 * MiB, 64 * KiB);
        tf_model_write(&tf_m, "c", 0xc1, 2 * MiB, 64 * KiB);
        free(c);
    }
    step_done("write c", NULL);
    expect_ok(tf_commit(S, "c"), "commit c again");
    expect_file_content(tf_disk, qcow2_disk ? "qcow2" : "raw", tf_model_get(&tf_m, "c"),
                        "disk after the second commit");
    tf_frozen_reset(&FZ, S);
    step_done("commit c again", NULL);

    /* 15. Export every snapshot and branch. */
    export_all(qcow2_disk);
    step_done("export", NULL);

    /* Closing and opening again sees the same tree. */
    qsnap_store_close(S);
    S = tf_open(tf_disk, 0);
    step_done("reopen", NULL);
    free(d0);
}

Test(story, raw_disk)
{
    story(false);
}

Test(story, qcow2_disk)
{
    story(true);
}
