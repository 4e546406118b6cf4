/*
 * The store: locking (a second writer, a qemu-io holding the current head),
 * bad input (a missing layer, a backing link edited with qemu-img rebase -u,
 * a frozen layer modified with qemu-io, truncated or garbled metadata, an
 * unknown store version: the documented code, a message naming the file, a
 * hint, no crash and no further damage), state files (each snapshot's own
 * read-only copy), names (generated, validated, unique) and the dry run (describe
 * changes nothing and lists the steps the execution runs).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "qcow2/qcow2.h"
#include "qemu_oracle.h"
#include "qsnap/qsnap.h"
#include "qsnap_int.h"
#include "tree_fixture.h"

#define KiB 1024u
#define MiB (1024u * 1024u)

static void setup(void)
{
    tf_suite_init(0x11);
}

TestSuite(store, .init = setup, .fini = tf_suite_fini, .timeout = 120);

/* disk -> s1 -> s2 -> {main (dirty), b (dirty)}; the store stays open. */
static qsnap_store *base(const char *tag)
{
    qsnap_store *s = tf_start_s1(tag, &tf_m);

    tf_write_state(s, &tf_m, "main", 0x21, 1 * MiB, 128 * KiB);
    tf_ok(tf_create(s, "s2"), "create s2");
    tf_model_set(&tf_m, "s2", false, tf_model_get(&tf_m, "main"));
    tf_write_state(s, &tf_m, "main", 0x31, 0, 64 * KiB);
    tf_ok(tf_branch(s, "b", "s2"), "branch b");
    tf_model_set(&tf_m, "b", true, tf_model_get(&tf_m, "s2"));
    tf_write_state(s, &tf_m, "b", 0x41, 2 * MiB, 64 * KiB);
    return s;
}

/* The last error names `what` and has a hint. */
static void expect_error(int rc, int want, const char *what, const char *call)
{
    const qsnap_error *e = qsnap_error_last();

    cr_assert_eq(rc, want, "%s: rc %d, want %d (%s)", call, rc, want, e->message);
    cr_assert_eq(e->code, want, "%s: error code %d", call, e->code);
    cr_assert(e->message && e->message[0], "%s: no message", call);
    if (what)
        cr_assert(strstr(e->message, what), "%s: the message does not name %s: %s", call, what,
                  e->message);
    cr_assert(e->hint && e->hint[0], "%s: no hint (message: %s)", call, e->message);
}

/* Run a plan builder; it must fail with `want` and change no file. */
#define EXPECT_REFUSED(s, want, what, call)                                                        \
    do {                                                                                           \
        char *before_ = tf_tree_snapshot(tf_dir), *after_;                                         \
        qsnap_plan *p_ = NULL;                                                                     \
        int rc_ = (call);                                                                          \
        if (rc_ == 0) /* files in use are found when the plan runs */                              \
            rc_ = qsnap_plan_execute(s, p_, NULL);                                                 \
        qsnap_plan_free(p_);                                                                       \
        expect_error(rc_, want, what, #call);                                                      \
        after_ = tf_tree_snapshot(tf_dir);                                                         \
        cr_assert_str_eq(before_, after_, "%s changed files", #call);                              \
        free(before_);                                                                             \
        free(after_);                                                                              \
    } while (0)

/* ---- locking ---------------------------------------------------------------- */

Test(store, second_writer_is_busy)
{
    qsnap_store *s = base("lock"), *t = NULL;
    int rc;

    rc = qsnap_store_open(&t, tf_disk, 0);
    expect_error(rc, QSNAP_EBUSY, qsnap_store_path(s), "second qsnap_store_open");
    cr_assert_null(t);
    rc = qsnap_store_open(&t, tf_disk, QSNAP_OPEN_READONLY);
    expect_error(rc, QSNAP_EBUSY, NULL, "read-only open while a writer holds the store");
    /* Another process too. */
    {
        pid_t pid = fork();
        int status;
        cr_assert_geq(pid, 0);
        if (pid == 0) {
            qsnap_store *c = NULL;
            _exit(qsnap_store_open(&c, tf_disk, 0) == QSNAP_EBUSY ? 0 : 1);
        }
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "another process opened the store for writing");
    }
    qsnap_store_close(s);
    /* Readers share; a writer waits for them. */
    {
        qsnap_store *r1 = tf_open(tf_disk, QSNAP_OPEN_READONLY),
                    *r2 = tf_open(tf_disk, QSNAP_OPEN_READONLY);
        qsnap_plan *p = NULL;
        rc = qsnap_store_open(&t, tf_disk, 0);
        expect_error(rc, QSNAP_EBUSY, NULL, "writer while readers hold the store");
        cr_assert_neq(qsnap_plan_create(&p, r1, NULL), 0, "a plan on a read-only store");
        qsnap_store_close(r1);
        qsnap_store_close(r2);
    }
    t = tf_open(tf_disk, 0);
    tf_check_store(t, &tf_m, tf_dir, "after the lock tests");
    qsnap_store_close(t);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static bool byte_locked(const char *p, off_t byte)
{
    struct flock fl;
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    bool held;

    cr_assert_geq(fd, 0);
    memset(&fl, 0, sizeof(fl));
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = byte;
    fl.l_len = 1;
    cr_assert_eq(fcntl(fd, F_OFD_GETLK, &fl), 0);
    held = fl.l_type != F_UNLCK;
    close(fd);
    return held;
}

struct qproc {
    pid_t pid;
    int cmd_fd;
    int out_fd;
};

/*
 * qemu-io on path read-write, stdin a pipe so it stays. Ready once it prints
 * its first prompt: it opens the image, takes its locks and checks everyone
 * else's before its command loop starts. Its lock byte alone is not enough:
 * QEMU sets its bytes and checks the others' afterwards, so an operation that
 * takes its own locks in between makes both fail (inuse.c) and qemu-io exits.
 */
static void qemu_io_start(struct qproc *q, const char *path)
{
    int in[2], out[2];

    cr_assert_eq(pipe2(in, O_CLOEXEC), 0);
    cr_assert_eq(pipe2(out, O_CLOEXEC), 0);
    q->pid = fork();
    cr_assert_geq(q->pid, 0);
    if (q->pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(in[0], 0);
        dup2(out[1], 1);
        dup2(null, 2);
        execlp("qemu-io", "qemu-io", "-f", "qcow2", path, (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    q->cmd_fd = in[1];
    q->out_fd = out[0];
    cr_assert_eq(qo_wait_output(q->out_fd, "qemu-io> ", 120), 0,
                 "qemu-io on %s exited, or gave no prompt within 120 s", path);
    cr_assert(byte_locked(path, 101), "qemu-io is ready but does not lock %s", path);
}

static void qemu_io_stop(struct qproc *q)
{
    int status;

    close(q->cmd_fd);
    for (int i = 0; i < 500; i++) {
        if (waitpid(q->pid, &status, WNOHANG) == q->pid)
            goto out;
        sleep_ms(10);
    }
    kill(q->pid, SIGKILL);
    waitpid(q->pid, &status, 0);
out:
    close(q->out_fd);
}

/* A read-only open waits for a writer that is about to finish (a tree operation is short),
 * and gives up with EBUSY on one that holds the store longer. */
Test(store, a_reader_waits_briefly_for_a_writer)
{
    qsnap_store *s = base("readwait"), *r = NULL;
    struct timespec t0, t1;
    int fds[2], status;
    char c;
    pid_t pid;

    qsnap_store_close(s);
    cr_assert_eq(pipe(fds), 0);
    pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        qsnap_store *w = NULL;
        struct timespec hold = {0, 400 * 1000000L};
        if (qsnap_store_open(&w, tf_disk, 0))
            _exit(3);
        (void)!write(fds[1], "x", 1);
        nanosleep(&hold, NULL);
        qsnap_store_close(w);
        _exit(0);
    }
    close(fds[1]);
    cr_assert_eq(read(fds[0], &c, 1), 1, "the writer did not take the store");
    close(fds[0]);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    tf_ok(qsnap_store_open(&r, tf_disk, QSNAP_OPEN_READONLY), "read-only open while a writer ends");
    clock_gettime(CLOCK_MONOTONIC, &t1);
    cr_assert_geq((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000, 100,
                  "the open did not wait for the writer");
    qsnap_store_close(r);
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

Test(store, qemu_io_holding_the_head_makes_operations_busy)
{
    qsnap_store *s;
    struct qproc q;
    char *head;
    qsnap_create_opts co = QSNAP_CREATE_OPTS_INIT;

    if (!qo_have_qemu())
        cr_skip_test("qemu-img/qemu-io not installed");
    s = base("qemu");
    head = tf_file_of(s, "main");
    qemu_io_start(&q, head);

    /* main is dirty: revert with discard would drop the head the VM writes. */
    EXPECT_REFUSED(s, QSNAP_EBUSY, head, qsnap_plan_revert(&p_, s, "s1", NULL, true));
    EXPECT_REFUSED(s, QSNAP_EBUSY, head, qsnap_plan_commit(&p_, s, NULL));
    EXPECT_REFUSED(s, QSNAP_EBUSY, head, qsnap_plan_create(&p_, s, &co));
    /* s2's layer backs main's head: streaming s2 into it writes the head. */
    EXPECT_REFUSED(s, QSNAP_EBUSY, head, qsnap_plan_delete(&p_, s, "s2", QSNAP_DELETE_STREAM));
    /* Committing b writes s2's layer, which the running VM reads, and re-points main's head. */
    EXPECT_REFUSED(s, QSNAP_EBUSY, head, qsnap_plan_commit(&p_, s, "b"));
    /* Switching away from the head the VM runs on changes what the VM path opens. */
    EXPECT_REFUSED(s, QSNAP_EBUSY, head, qsnap_plan_switch(&p_, s, "b"));
    /* Every operation checks the current branch's head, even one that changes only names. */
    EXPECT_REFUSED(s, QSNAP_EBUSY, head, qsnap_plan_branch_rename(&p_, s, "b", "b2"));
    qemu_io_stop(&q);

    /* A VM on main, another branch than the current one (b). */
    tf_ok(tf_switch(s, "b"), "switch b");
    qemu_io_start(&q, head);
    /* s2's layer backs main's head: streaming s2 into it writes the head. */
    EXPECT_REFUSED(s, QSNAP_EBUSY, head, qsnap_plan_delete(&p_, s, "s2", QSNAP_DELETE_STREAM));
    EXPECT_REFUSED(s, QSNAP_EBUSY, head, qsnap_plan_switch(&p_, s, "main"));
    EXPECT_REFUSED(s, QSNAP_EBUSY, head, qsnap_plan_branch_delete(&p_, s, "main", true));
    /* Committing b writes s2's layer, which the VM on main reads through. */
    {
        char *s2 = tf_file_of(s, "s2");
        EXPECT_REFUSED(s, QSNAP_EBUSY, s2, qsnap_plan_commit(&p_, s, "b"));
        free(s2);
    }
    qemu_io_stop(&q);
    tf_ok(tf_switch(s, "main"), "switch main");

    /* Once qemu-io is gone, the same operations go through. */
    {
        qsnap_plan *p = NULL;
        tf_ok(qsnap_plan_commit(&p, s, NULL), "commit plan after qemu-io exited");
        qsnap_plan_free(p);
        tf_ok(tf_revert(s, "s1", "r", false, NULL), "revert after qemu-io exited");
        tf_model_set(&tf_m, "r", true, tf_model_get(&tf_m, "s1"));
    }
    tf_check_store(s, &tf_m, tf_dir, "after qemu-io");
    free(head);
    qsnap_store_close(s);
}

/*
 * export and diff read a head a running VM writes only as qemu-img convert
 * would: refused (busy, naming the head, nothing written); the snapshots
 * below it, which the VM only reads, still export.
 */
Test(store, qemu_io_holding_the_head_makes_export_and_diff_busy)
{
    qsnap_store *s;
    struct qproc q;
    qsnap_range *r = NULL;
    size_t nr = 0;
    char *head, out[600], *before, *after;

    if (!qo_have_qemu())
        cr_skip_test("qemu-img/qemu-io not installed");
    s = base("qexport");
    head = tf_file_of(s, "main");
    snprintf(out, sizeof(out), "%s/export.raw", tf_dir);
    qemu_io_start(&q, head);
    before = tf_tree_snapshot(tf_dir);
    expect_error(qsnap_export(s, "main", out, QCOW2_FORMAT_RAW, NULL, NULL), QSNAP_EBUSY, head,
                 "export of the head qemu-io writes");
    expect_error(qsnap_diff(s, "s1", "main", &r, &nr), QSNAP_EBUSY, head,
                 "diff against the head qemu-io writes");
    cr_assert(strstr(qsnap_error_last()->hint, "virtual machine"), "%s", qsnap_error_last()->hint);
    after = tf_tree_snapshot(tf_dir);
    cr_assert_str_eq(before, after, "a refused export or diff changed files");
    free(before);
    free(after);
    tf_ok(qsnap_export(s, "s2", out, QCOW2_FORMAT_RAW, NULL, NULL), "export of s2 under the VM");
    tf_ok(qsnap_diff(s, "s1", "s2", &r, &nr), "diff of snapshots under the VM");
    free(r);
    qemu_io_stop(&q);
    tf_ok(qsnap_export(s, "main", out, QCOW2_FORMAT_RAW, NULL, NULL), "export once qemu-io left");
    unlink(out);
    tf_check_store(s, &tf_m, tf_dir, "after the exports");
    free(head);
    qsnap_store_close(s);
}

/* An export whose output is expected to be refused as unsafe, with no file changed. */
static void export_refused(qsnap_store *s, const char *name, const char *out, const char *what)
{
    static const qcow2_format fmts[] = {QCOW2_FORMAT_RAW, QCOW2_FORMAT_QCOW2};

    for (size_t i = 0; i < 2; i++) {
        char *before = tf_tree_snapshot(tf_dir), *after;
        int rc = qsnap_export(s, name, out, fmts[i], NULL, NULL);
        cr_assert_eq(rc, QSNAP_EREFUSED, "export of %s to %s (%s): rc %d (%s)", name, out, what, rc,
                     qsnap_error_last()->message);
        cr_assert(strstr(qsnap_error_last()->message, out), "%s", qsnap_error_last()->message);
        cr_assert(qsnap_error_last()->hint && qsnap_error_last()->hint[0]);
        after = tf_tree_snapshot(tf_dir);
        cr_assert_str_eq(before, after, "a refused export to %s (%s) changed files", out, what);
        free(before);
        free(after);
    }
}

/*
 * export never writes over what it reads or what the store holds: the disk,
 * a layer of its chain, another branch's head, the VM path, a new file in the
 * store directory, by any name (a symbolic link, a dangling one, a hard link,
 * a link to a directory).
 */
Test(store, export_refuses_outputs_over_the_disk_and_the_store)
{
    qsnap_store *s = base("exportover");
    char *s2 = tf_file_of(s, "s2"), *bhead = tf_file_of(s, "b"), *vm = NULL;
    char p[600], q[600];

    tf_ok(qsnap_vm_path(s, &vm), "vm path");
    export_refused(s, "s2", tf_disk, "the disk");
    export_refused(s, "s2", s2, "s2's own layer");
    export_refused(s, "s1", s2, "a layer above the exported one");
    export_refused(s, "main", bhead, "another branch's head");
    export_refused(s, "s2", vm, "the VM path");
    snprintf(p, sizeof(p), "%s.qsnap/new.raw", tf_disk);
    export_refused(s, "s2", p, "a new file in the store directory");
    snprintf(p, sizeof(p), "%s/disk-link", tf_dir);
    cr_assert_eq(symlink(tf_disk, p), 0);
    export_refused(s, "s1", p, "a symbolic link to the disk");
    snprintf(p, sizeof(p), "%s/dangling", tf_dir);
    snprintf(q, sizeof(q), "%s.qsnap/layers/none.qcow2", tf_disk);
    cr_assert_eq(symlink(q, p), 0);
    export_refused(s, "s1", p, "a dangling link into the store");
    snprintf(p, sizeof(p), "%s/layers-link", tf_dir);
    snprintf(q, sizeof(q), "%s.qsnap/layers", tf_disk);
    cr_assert_eq(symlink(q, p), 0);
    snprintf(p, sizeof(p), "%s/layers-link/new.raw", tf_dir);
    export_refused(s, "s1", p, "a link to the store's layers directory");
    snprintf(p, sizeof(p), "%s/hard", tf_dir);
    cr_assert_eq(link(bhead, p), 0);
    export_refused(s, "s1", p, "a hard link of another branch's head");
    cr_assert_eq(unlink(p), 0);

    /* Beside the store, and over an earlier export, it writes. */
    snprintf(p, sizeof(p), "%s/export.qcow2", tf_dir);
    tf_ok(qsnap_export(s, "s2", p, QCOW2_FORMAT_QCOW2, NULL, NULL), "export beside the store");
    tf_ok(qsnap_export(s, "main", p, QCOW2_FORMAT_QCOW2, NULL, NULL), "export over the export");
    cr_assert_eq(unlink(p), 0);
    snprintf(p, sizeof(p), "%s/disk-link", tf_dir);
    cr_assert_eq(unlink(p), 0);
    snprintf(p, sizeof(p), "%s/dangling", tf_dir);
    cr_assert_eq(unlink(p), 0);
    snprintf(p, sizeof(p), "%s/layers-link", tf_dir);
    cr_assert_eq(unlink(p), 0);
    tf_check_store(s, &tf_m, tf_dir, "after the refused exports");
    free(vm);
    free(s2);
    free(bhead);
    qsnap_store_close(s);
}

/* What qsnap_file_kind_of() says of path, and the store it names (NULL: none). */
static void expect_kind(const char *path, qsnap_file_kind want, const char *store)
{
    qsnap_file_kind kind = (qsnap_file_kind)99;
    char *dir = NULL;

    tf_ok(qsnap_file_kind_of(path, &kind, &dir), path);
    cr_assert_eq(kind, want, "%s: kind %d, expected %d", path, kind, want);
    if (store)
        cr_assert(dir && !strcmp(dir, store), "%s: store %s", path, dir ? dir : "(none)");
    else
        cr_assert_null(dir, "%s: store %s", path, dir);
    free(dir);
}

/* A write from outside the tree commands that is expected to be refused, changing nothing. */
static void outside_refused(const char *path, bool replace, const char *what)
{
    char *before = tf_tree_snapshot(tf_dir), *after;
    int rc = qsnap_check_outside_write(path, replace);

    cr_assert_eq(rc, QSNAP_EREFUSED, "%s (%s): rc %d", path, what, rc);
    cr_assert(strstr(qsnap_error_last()->message, path), "%s", qsnap_error_last()->message);
    cr_assert(strstr(qsnap_error_last()->message, "store"), "%s", qsnap_error_last()->message);
    cr_assert(qsnap_error_last()->hint && qsnap_error_last()->hint[0]);
    after = tf_tree_snapshot(tf_dir);
    cr_assert_str_eq(before, after, "checking %s changed files", path);
    free(before);
    free(after);
}

/*
 * Which files of a store are frozen, by any name: the disk, a snapshot's layer
 * (also through a link, and as the VM path's backing file), a state file; the
 * heads (the VM path leads to one) are not; a new name in the store directory
 * is the store's. Writing into a frozen file is refused, into a head is not;
 * making or replacing a file is refused anywhere in the store.
 */
Test(store, frozen_files_are_told_from_heads_by_any_name)
{
    qsnap_store *s = base("kinds");
    char *s2 = tf_file_of(s, "s2"), *bhead = tf_file_of(s, "b"), *vm = NULL, *dir;
    char p[600], q[600];

    tf_ok(qsnap_vm_path(s, &vm), "vm path");
    dir = strdup(qsnap_store_path(s));
    qsnap_store_close(s);
    expect_kind(tf_disk, QSNAP_FILE_FROZEN, dir);
    expect_kind(s2, QSNAP_FILE_FROZEN, dir);
    expect_kind(bhead, QSNAP_FILE_HEAD, dir);
    expect_kind(vm, QSNAP_FILE_HEAD, dir);
    expect_kind(dir, QSNAP_FILE_STORE, dir);
    snprintf(p, sizeof(p), "%s/meta", dir);
    expect_kind(p, QSNAP_FILE_STORE, dir);
    snprintf(p, sizeof(p), "%s/layers/new.qcow2", dir);
    expect_kind(p, QSNAP_FILE_STORE, dir);
    snprintf(p, sizeof(p), "%s/outside.raw", tf_dir);
    expect_kind(p, QSNAP_FILE_NONE, NULL);
    expect_kind("", QSNAP_FILE_NONE, NULL);
    snprintf(p, sizeof(p), "%s/s2-link", tf_dir);
    cr_assert_eq(symlink(s2, p), 0);
    expect_kind(p, QSNAP_FILE_FROZEN, dir);
    outside_refused(p, false, "a link to s2's layer");
    cr_assert_eq(unlink(p), 0);
    snprintf(p, sizeof(p), "%s/layers-link", tf_dir);
    snprintf(q, sizeof(q), "%s/layers", dir);
    cr_assert_eq(symlink(q, p), 0);
    snprintf(q, sizeof(q), "%s/layers-link/new.qcow2", tf_dir);
    expect_kind(q, QSNAP_FILE_STORE, dir);
    outside_refused(q, true, "a new file through a link to layers/");
    cr_assert_eq(unlink(p), 0);

    outside_refused(tf_disk, false, "the disk");
    outside_refused(s2, false, "s2's layer");
    outside_refused(bhead, true, "a head, replaced");
    outside_refused(vm, true, "the VM path, replaced");
    snprintf(p, sizeof(p), "%s/layers/new.qcow2", dir);
    outside_refused(p, true, "a new file in layers/");
    tf_ok(qsnap_check_outside_write(bhead, false), "writing into a head");
    tf_ok(qsnap_check_outside_write(vm, false), "writing into the VM path");
    snprintf(p, sizeof(p), "%s/outside.raw", tf_dir);
    tf_ok(qsnap_check_outside_write(p, true), "a file beside the store");

    /* A store of its own for a file of the store: refused before anything is made. */
    {
        const char *inner[] = {s2, bhead, vm};
        for (size_t i = 0; i < 3; i++) {
            char *before = tf_tree_snapshot(tf_dir), *after;
            qsnap_store *t = NULL;
            int rc = qsnap_store_open(&t, inner[i], QSNAP_OPEN_CREATE);
            cr_assert_eq(rc, QSNAP_EREFUSED, "a store for %s: rc %d", inner[i], rc);
            cr_assert_null(t);
            cr_assert(strstr(qsnap_error_last()->message, dir), "%s", qsnap_error_last()->message);
            cr_assert(strstr(qsnap_error_last()->hint, tf_disk), "%s", qsnap_error_last()->hint);
            after = tf_tree_snapshot(tf_dir);
            cr_assert_str_eq(before, after, "a refused store for %s changed files", inner[i]);
            free(before);
            free(after);
        }
    }
    s = NULL;
    tf_ok(qsnap_store_open(&s, tf_disk, 0), "reopen");
    tf_check_store(s, &tf_m, tf_dir, "after the refusals");
    qsnap_store_close(s);
    free(dir);
    free(vm);
    free(s2);
    free(bhead);
}

/* Reverting away from a head a running VM writes (even a dirty one, which is kept). */
Test(store, qemu_io_holding_the_head_makes_revert_busy)
{
    qsnap_store *s;
    struct qproc q;
    char *head;

    if (!qo_have_qemu())
        cr_skip_test("qemu-img/qemu-io not installed");
    s = base("qemurev");
    head = tf_file_of(s, "main");
    qemu_io_start(&q, head);
    {
        char *before = tf_tree_snapshot(tf_dir), *after;
        qsnap_plan *p = NULL;
        int rc = qsnap_plan_revert(&p, s, "s1", NULL, false);
        if (rc == 0)
            rc = qsnap_plan_execute(s, p, NULL);
        qsnap_plan_free(p);
        after = tf_tree_snapshot(tf_dir);
        qemu_io_stop(&q);
        expect_error(rc, QSNAP_EBUSY, head, "revert (dirty head kept) while qemu-io holds it");
        cr_assert_str_eq(before, after);
        free(before);
        free(after);
    }
    free(head);
    qsnap_store_close(s);
}

/* The VM path: one path, a link beside the heads, on the current head after each operation. */
static void expect_vm_path_on(qsnap_store *s, const char *branch, const char *want_path)
{
    char *vm = NULL, *head = tf_file_of(s, branch), real[4096];

    tf_ok(qsnap_vm_path(s, &vm), "qsnap_vm_path");
    if (want_path)
        cr_assert_str_eq(vm, want_path, "the VM path moved");
    cr_assert_not_null(realpath(vm, real), "%s does not resolve", vm);
    cr_assert_str_eq(real, head, "the VM path opens %s, not %s's head %s", real, branch, head);
    free(vm);
    free(head);
}

Test(store, vm_path_follows_the_current_branch)
{
    qsnap_store *s = base("vmpath");
    char *vm = NULL, *link = NULL;

    tf_ok(qsnap_vm_path(s, &vm), "qsnap_vm_path");
    cr_assert(asprintf(&link, "%s.qsnap/layers/current.qcow2", tf_disk) > 0);
    cr_assert_str_eq(vm, link);
    expect_vm_path_on(s, "main", vm);
    tf_ok(tf_switch(s, "b"), "switch b");
    expect_vm_path_on(s, "b", vm);
    tf_ok(tf_revert(s, "s1", "r", false, NULL), "revert s1");
    tf_model_set(&tf_m, "r", true, tf_model_get(&tf_m, "s1"));
    expect_vm_path_on(s, "r", vm);
    tf_ok(tf_create(s, "s3"), "create s3");
    tf_model_set(&tf_m, "s3", false, tf_model_get(&tf_m, "r"));
    expect_vm_path_on(s, "r", vm);
    /* A link changed by hand: reported, and put back by the repair. */
    {
        qsnap_finding *f = NULL;
        size_t n = 0;
        cr_assert_eq(unlink(link), 0);
        cr_assert_eq(symlink("nothing.qcow2", link), 0);
        char *wrong = NULL;
        cr_assert_eq(qsnap_vm_path(s, &wrong), QSNAP_EINTEGRITY);
        cr_assert_null(wrong);
        cr_assert_eq(qsnap_verify(s, false, &f, &n), QSNAP_EINTEGRITY);
        qsnap_verify_free(f, n);
        tf_ok(qsnap_verify(s, true, &f, &n), "verify --repair");
        qsnap_verify_free(f, n);
        expect_vm_path_on(s, "r", vm);
    }
    free(vm);
    free(link);
    tf_check_store(s, &tf_m, tf_dir, "after the VM path tests");
    qsnap_store_close(s);
}

/* Point the VM path at file (by its bare name), as a user might by hand. */
static void vm_link_by_hand(const char *link, const char *file)
{
    cr_assert_eq(unlink(link), 0);
    cr_assert_eq(symlink(strrchr(file, '/') + 1, link), 0);
}

/* readlink of the VM path (malloc'd). */
static char *vm_link_target(const char *link)
{
    char buf[4096];
    ssize_t n = readlink(link, buf, sizeof(buf) - 1);

    cr_assert_gt(n, 0, "%s is not a link", link);
    buf[n] = '\0';
    return strdup(buf);
}

static void expect_link(const char *link, const char *want)
{
    char *got = vm_link_target(link);

    cr_assert_str_eq(got, want, "the VM path was re-pointed");
    free(got);
}

/*
 * The VM path re-pointed by hand at another branch's head (main's, b being
 * current): every operation that changes files refuses with nothing changed,
 * QSNAP_EINTEGRITY as qsnap_vm_path() does; with a VM running on the file the
 * link names, QSNAP_EBUSY naming that file, even for operations that touch
 * nothing of main. verify --repair refuses while the VM runs, and re-points
 * the link once it is gone.
 */
Test(store, vm_path_moved_by_hand_refuses_operations)
{
    qsnap_store *s = base("vmmoved");
    qsnap_create_opts co = QSNAP_CREATE_OPTS_INIT;
    qsnap_finding *f = NULL;
    qsnap_plan *p = NULL;
    char *link = NULL, *main_head, *target, *before, *after;
    size_t n = 0;

    tf_ok(tf_switch(s, "b"), "switch b");
    main_head = tf_file_of(s, "main");
    cr_assert(asprintf(&link, "%s.qsnap/layers/current.qcow2", tf_disk) > 0);
    vm_link_by_hand(link, main_head);
    target = vm_link_target(link);

    /* No VM: refused as an integrity problem, before anything changes. */
    EXPECT_REFUSED(s, QSNAP_EINTEGRITY, "does not point at the current branch's head",
                   qsnap_plan_create(&p_, s, &co));
    EXPECT_REFUSED(s, QSNAP_EINTEGRITY, link, qsnap_plan_revert(&p_, s, "s1", "y", false));
    EXPECT_REFUSED(s, QSNAP_EINTEGRITY, link, qsnap_plan_switch(&p_, s, "main"));
    EXPECT_REFUSED(s, QSNAP_EINTEGRITY, link, qsnap_plan_branch_create(&p_, s, "c", "s1"));
    EXPECT_REFUSED(s, QSNAP_EINTEGRITY, link, qsnap_plan_branch_rename(&p_, s, "main", "m2"));
    EXPECT_REFUSED(s, QSNAP_EINTEGRITY, link, qsnap_plan_branch_delete(&p_, s, "main", true));
    EXPECT_REFUSED(s, QSNAP_EINTEGRITY, link, qsnap_plan_delete(&p_, s, "s1", 0));
    EXPECT_REFUSED(s, QSNAP_EINTEGRITY, link, qsnap_plan_commit(&p_, s, NULL));
    /* The dry run's check says what the real run refuses. */
    tf_ok(qsnap_plan_create(&p, s, &co), "create plan");
    expect_error(qsnap_plan_check(s, p), QSNAP_EINTEGRITY, link, "qsnap_plan_check");
    qsnap_plan_free(p);
    p = NULL;
    expect_link(link, target);

    /* A VM on the file the link names (main's head): refused as in use, naming it. */
    if (qo_have_qemu()) {
        struct qproc q;
        qemu_io_start(&q, link);
        EXPECT_REFUSED(s, QSNAP_EBUSY, main_head, qsnap_plan_create(&p_, s, &co));
        EXPECT_REFUSED(s, QSNAP_EBUSY, main_head, qsnap_plan_revert(&p_, s, "s1", "y", false));
        EXPECT_REFUSED(s, QSNAP_EBUSY, main_head, qsnap_plan_branch_create(&p_, s, "c", "s1"));
        EXPECT_REFUSED(s, QSNAP_EBUSY, main_head, qsnap_plan_commit(&p_, s, NULL));
        EXPECT_REFUSED(s, QSNAP_EBUSY, main_head, qsnap_plan_delete(&p_, s, "s1", 0));
        tf_ok(qsnap_plan_create(&p, s, &co), "create plan");
        expect_error(qsnap_plan_check(s, p), QSNAP_EBUSY, main_head, "qsnap_plan_check");
        qsnap_plan_free(p);
        /* verify --repair would re-point the link under the VM: refused too. */
        before = tf_tree_snapshot(tf_dir);
        expect_error(qsnap_verify(s, true, &f, &n), QSNAP_EBUSY, main_head, "verify --repair");
        qsnap_verify_free(f, n);
        after = tf_tree_snapshot(tf_dir);
        qemu_io_stop(&q);
        cr_assert_str_eq(before, after, "verify --repair changed files under the VM");
        expect_link(link, target);
        free(before);
        free(after);
    }

    /* The repair points the link at b's head again; then operations go through. */
    cr_assert_eq(qsnap_verify(s, false, &f, &n), QSNAP_EINTEGRITY);
    qsnap_verify_free(f, n);
    tf_ok(qsnap_verify(s, true, &f, &n), "verify --repair");
    qsnap_verify_free(f, n);
    expect_vm_path_on(s, "b", link);
    tf_ok(tf_create(s, "s3"), "create after the repair");
    tf_model_set(&tf_m, "s3", false, tf_model_get(&tf_m, "b"));
    expect_vm_path_on(s, "b", link);
    tf_check_store(s, &tf_m, tf_dir, "after the repair");
    free(main_head);
    free(target);
    free(link);
    qsnap_store_close(s);
}

/* qsnap_plan_check: the files a plan touches and which are held, shown by describe. */
Test(store, plan_check_lists_touched_and_held_files)
{
    qsnap_store *s;
    struct qproc q;
    qsnap_plan *p = NULL;
    char *bhead, *mhead, *text = NULL;

    if (!qo_have_qemu())
        cr_skip_test("qemu-img/qemu-io not installed");
    s = base("check");
    bhead = tf_file_of(s, "b");
    mhead = tf_file_of(s, "main");
    tf_ok(qsnap_plan_switch(&p, s, "b"), "switch plan");
    tf_ok(qsnap_plan_check(s, p), "check with nothing held");
    tf_ok(qsnap_plan_describe(p, false, &text), "describe");
    cr_assert(strstr(text, strrchr(mhead, '/') + 1) && strstr(text, strrchr(bhead, '/') + 1),
              "both heads listed: %s", text);
    cr_assert(!strstr(text, "HELD"), "%s", text);
    free(text);
    qemu_io_start(&q, bhead);
    expect_error(qsnap_plan_check(s, p), QSNAP_EBUSY, bhead, "check while qemu-io holds b");
    tf_ok(qsnap_plan_describe(p, true, &text), "describe json");
    cr_assert(strstr(text, "\"held\": true") && strstr(text, "\"held\": false"), "%s", text);
    free(text);
    expect_error(qsnap_plan_execute(s, p, NULL), QSNAP_EBUSY, bhead, "execute while held");
    qemu_io_stop(&q);
    tf_ok(qsnap_plan_execute(s, p, NULL), "execute once qemu-io is gone");
    qsnap_plan_free(p);
    expect_vm_path_on(s, "b", NULL);
    free(bhead);
    free(mhead);
    tf_check_store(s, &tf_m, tf_dir, "after the check tests");
    qsnap_store_close(s);
}

/* While a plan runs, the files it touches are held: another opener is refused. */
static void try_open_in_step(unsigned step, void *payload)
{
    const char *path = payload;
    qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img = NULL;
    pid_t pid;
    int status;

    if (step != 1)
        return;
    /* Another process (OFD locks of this one's other descriptors would count too,
     * but the test is about other users). */
    pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        oo.flags = QCOW2_OPEN_NO_BACKING;
        _exit(qcow2_image_open(&img, path, &oo) == QCOW2_EBUSY ? 0 : 1);
    }
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "a reader could open %s while the plan held it", path);
}

Test(store, files_are_held_while_the_plan_runs)
{
    qsnap_store *s = base("hold");
    qsnap_exec_opts eo = QSNAP_EXEC_OPTS_INIT;
    qsnap_plan *p = NULL;
    char *s2 = tf_file_of(s, "s2");

    /* commit main: step 1 preserves s2's content, later steps write s2's layer. */
    tf_ok(qsnap_plan_commit(&p, s, NULL), "commit plan");
    eo.step_hook = try_open_in_step;
    eo.payload = s2;
    tf_ok(qsnap_plan_execute(s, p, &eo), "commit");
    qsnap_plan_free(p);
    /* And released at the end. */
    cr_assert(!byte_locked(s2, 100) && !byte_locked(s2, 201), "s2's layer still locked");
    free(s2);
    qsnap_store_close(s);
}

/*
 * Files a step makes (a new head, a layer that preserves content) are held too,
 * from the moment they exist to the end of the operation: a QEMU that opens one
 * meanwhile (its name is in the journal, and the VM path leads to a new head
 * once the metadata is saved) is refused instead of running on a file the
 * operation still writes, fingerprints or removes again on a failure.
 */
struct new_files {
    char path[8][1024];
    size_t n;
    unsigned tried, opened;
};

static void try_open_new_files(unsigned step, void *payload)
{
    struct new_files *nf = payload;

    (void)step;
    for (size_t i = 0; i < nf->n; i++) {
        qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
        qcow2_image *img = NULL;
        struct stat st;
        pid_t pid;
        int status;
        if (stat(nf->path[i], &st) != 0)
            continue; /* not made yet */
        nf->tried++;
        pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
            oo.flags = QCOW2_OPEN_NO_BACKING;
            _exit(qcow2_image_open(&img, nf->path[i], &oo) == QCOW2_EBUSY ? 0 : 1);
        }
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            nf->opened++;
    }
}

/* The files of the layers the plan's last model has and the store's has not. */
static void new_files_of(qsnap_store *s, const qsnap_plan *p, struct new_files *nf)
{
    const struct qsnap__model *t = &p->models[p->nm - 1];

    memset(nf, 0, sizeof(*nf));
    for (size_t i = 0; i < t->nl && nf->n < 8; i++) {
        if (qsnap__layer(&s->m, t->layers[i].id))
            continue;
        snprintf(nf->path[nf->n++], sizeof(nf->path[0]), "%s/%s", qsnap_store_path(s),
                 t->layers[i].file);
    }
}

Test(store, files_a_step_makes_are_held_while_the_plan_runs)
{
    qsnap_store *s = base("holdnew");
    qsnap_exec_opts eo = QSNAP_EXEC_OPTS_INIT;
    qsnap_create_opts co = QSNAP_CREATE_OPTS_INIT;
    struct new_files nf;
    qsnap_plan *p = NULL;

    /* create: main's new head. */
    tf_ok(qsnap_plan_create(&p, s, &co), "create plan");
    new_files_of(s, p, &nf);
    cr_assert_eq(nf.n, 1, "create makes %zu layers, want 1", nf.n);
    eo.step_hook = try_open_new_files;
    eo.payload = &nf;
    tf_ok(qsnap_plan_execute(s, p, &eo), "create");
    qsnap_plan_free(p);
    cr_assert_gt(nf.tried, 0, "the new head was never there between steps");
    cr_assert_eq(nf.opened, 0, "the new head %s could be opened %u of %u times while the plan ran",
                 nf.path[0], nf.opened, nf.tried);
    cr_assert(!byte_locked(nf.path[0], 100) && !byte_locked(nf.path[0], 201),
              "the new head is still locked after the operation");
    /* commit b: a new layer preserves s2's content before b is written into it. */
    tf_ok(qsnap_plan_commit(&p, s, "b"), "commit plan");
    new_files_of(s, p, &nf);
    cr_assert_geq(nf.n, 1, "commit b makes no layer");
    tf_ok(qsnap_plan_execute(s, p, &eo), "commit b");
    qsnap_plan_free(p);
    cr_assert_gt(nf.tried, 0, "the preserving layer was never there between steps");
    cr_assert_eq(nf.opened, 0, "a new layer (%s) could be opened %u of %u times while the plan ran",
                 nf.path[0], nf.opened, nf.tried);
    for (size_t i = 0; i < nf.n; i++) {
        struct stat st;
        if (stat(nf.path[i], &st) == 0)
            cr_assert(!byte_locked(nf.path[i], 100) && !byte_locked(nf.path[i], 201),
                      "%s is still locked after the operation", nf.path[i]);
    }
    qsnap_store_close(s);
}

/*
 * What a plan decides from its heads' content (a clean head dropped by revert,
 * nothing to commit) is read before the operation holds the files: a head
 * written in between (a VM that wrote and exited) stops the execution, with
 * nothing changed.
 */
Test(store, a_head_written_after_the_plan_is_not_dropped)
{
    qsnap_store *s = base("recheck");
    qsnap_plan *p = NULL;
    char *head;
    struct stat st;
    int rc;

    tf_ok(tf_create(s, "s3"), "create s3"); /* main is clean now */
    tf_model_set(&tf_m, "s3", false, tf_model_get(&tf_m, "main"));
    head = tf_file_of(s, "main");
    cr_assert_not_null(head);
    tf_ok(qsnap_plan_revert(&p, s, "s1", NULL, false), "revert plan");
    tf_lib_write(head, 0x77, 3 * MiB, 64 * KiB); /* between the plan and its execution */
    rc = qsnap_plan_execute(s, p, NULL);
    expect_error(rc, QSNAP_EBUSY, "changed while the operation was planned", "revert over a head written after the plan");
    qsnap_plan_free(p);
    cr_assert_eq(stat(head, &st), 0, "the head written after the plan was removed");
    tf_model_write(&tf_m, "main", 0x77, 3 * MiB, 64 * KiB);
    tf_check_store(s, &tf_m, tf_dir, "after the refused revert");
    free(head);
    qsnap_store_close(s);
}

Test(store, nothing_to_commit_is_checked_again_under_the_hold)
{
    qsnap_store *s = base("recheck2");
    qsnap_plan *p = NULL;
    char *head;
    int rc;

    tf_ok(tf_create(s, "s3"), "create s3");
    tf_model_set(&tf_m, "s3", false, tf_model_get(&tf_m, "main"));
    head = tf_file_of(s, "main");
    cr_assert_not_null(head);
    tf_ok(qsnap_plan_commit(&p, s, NULL), "commit plan (nothing to commit)");
    tf_lib_write(head, 0x78, 0, 64 * KiB);
    rc = qsnap_plan_execute(s, p, NULL);
    expect_error(rc, QSNAP_EBUSY, "changed while the operation was planned", "commit planned as nothing to do, then written");
    qsnap_plan_free(p);
    free(head);
    qsnap_store_close(s);
}

/* ---- bad input ------------------------------------------------------------------ */

/*
 * A store directory without metadata whose layers/ is a symbolic link to
 * another directory: refused as a link (the directory it leads to is never
 * read), whether it leads to files or to nothing, at open and when a first
 * create finds it made meanwhile.
 */
Test(store, symlinked_layers_without_metadata_is_refused_not_followed)
{
    char store[600], other[600], layers[700], file[700];
    qsnap_create_opts co = QSNAP_CREATE_OPTS_INIT;
    qsnap_store *s = NULL;
    qsnap_plan *p = NULL;
    int rc;

    tf_setup(tf_dir, sizeof(tf_dir), tf_disk, sizeof(tf_disk), "orphanlink", false, tf_d0);
    snprintf(store, sizeof(store), "%s.qsnap", tf_disk);
    snprintf(other, sizeof(other), "%s/elsewhere", tf_dir);
    snprintf(layers, sizeof(layers), "%s/layers", store);
    snprintf(file, sizeof(file), "%s/1.qcow2", other);
    cr_assert_eq(mkdir(store, 0777), 0);
    cr_assert_eq(mkdir(other, 0777), 0);
    cr_assert_eq(symlink(other, layers), 0);
    /* Leading to an empty directory, then to one with a file: the same refusal. */
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1)
            cr_assert_eq(qo_write_file(file, tf_d0, 4096), 0);
        rc = qsnap_store_open(&s, tf_disk, QSNAP_OPEN_CREATE | QSNAP_OPEN_ANY_FILES);
        cr_assert_null(s);
        expect_error(rc, QSNAP_EINTEGRITY, layers, "open over a symlinked layers/");
        cr_assert(strstr(qsnap_error_last()->message, "symbolic link"), "%s",
                  qsnap_error_last()->message);
    }
    /* A first create that finds it made after the store was opened. */
    {
        char out[1024];
        cr_assert_eq(qo_sh(out, sizeof(out), "rm -r '%s'", store), 0, "%s", out);
    }
    s = tf_open(tf_disk, QSNAP_OPEN_CREATE);
    tf_ok(qsnap_plan_create(&p, s, &co), "first create plan");
    cr_assert_eq(mkdir(store, 0777), 0);
    cr_assert_eq(symlink(other, layers), 0);
    rc = qsnap_plan_execute(s, p, NULL);
    qsnap_plan_free(p);
    expect_error(rc, QSNAP_EINTEGRITY, layers, "first create over a symlinked layers/");
    cr_assert(strstr(qsnap_error_last()->message, "symbolic link"), "%s",
              qsnap_error_last()->message);
    qsnap_store_close(s);
    {
        struct stat st;
        cr_assert_eq(lstat(layers, &st), 0);
        cr_assert(S_ISLNK(st.st_mode), "layers/ was replaced");
        cr_assert_eq(stat(file, &st), 0, "the file the link leads to is gone");
    }
}

/*
 * A handle kept across operations while layers/ is replaced by a copy of itself (a
 * restore, a move to other storage): the next operation works in the directory the
 * store now has, not in the one the handle first opened (which it keeps open).
 */
Test(store, layers_replaced_under_a_kept_handle)
{
    qsnap_store *s = base("replaced"), *r = NULL;
    char store[600], out[1024];
    qsnap_finding *f = NULL;
    size_t nf = 0, problems = 0;

    snprintf(store, sizeof(store), "%s.qsnap", tf_disk);
    tf_ok(tf_create(s, "s3"), "create s3");
    tf_model_set(&tf_m, "s3", false, tf_model_get(&tf_m, "main"));
    cr_assert_eq(qo_sh(out, sizeof(out), "cd '%s' && mv layers old && cp -a old layers", store), 0,
                 "%s", out);
    tf_write_state(s, &tf_m, "main", 0x51, 3 * MiB, 64 * KiB);
    tf_ok(tf_create(s, "s4"), "create s4 on the kept handle");
    tf_model_set(&tf_m, "s4", false, tf_model_get(&tf_m, "main"));
    qsnap_store_close(s);
    r = tf_open(tf_disk, 0);
    tf_ok(qsnap_verify(r, false, &f, &nf), "verify after the operation");
    for (size_t i = 0; i < nf; i++)
        problems += f[i].problem;
    cr_assert_eq(problems, 0, "verify found problems: %s", nf ? f[0].message : "");
    qsnap_verify_free(f, nf);
    tf_check_store(r, &tf_m, tf_dir, "after layers/ was replaced");
    qsnap_store_close(r);
}

/* The last call failed as a handle whose store directory was replaced must. */
static void expect_stale(int rc, const char *store, const char *call)
{
    cr_assert_eq(rc, QSNAP_ERROR, "%s on the kept handle: rc %d", call, rc);
    cr_assert(strstr(qsnap_error_last()->message, "while it was open"), "%s: %s", call,
              qsnap_error_last()->message);
    cr_assert(strstr(qsnap_error_last()->message, store), "%s: %s", call,
              qsnap_error_last()->message);
}

Test(store, store_replaced_under_a_kept_handle_is_refused)
{
    qsnap_store *s = base("replaced-store"), *r = NULL;
    char store[600], out[1024], *before, *after;
    qsnap_create_opts co = QSNAP_CREATE_OPTS_INIT;
    qsnap_finding *f = NULL;
    qcow2_image *img = NULL;
    size_t nf = 0;
    qsnap_plan *p = NULL;

    snprintf(store, sizeof(store), "%s.qsnap", tf_disk);
    /* The store restored from a copy while a handle (and its lock) is open on it. */
    cr_assert_eq(qo_sh(out, sizeof(out), "cd '%s' && mv '%s' old.qsnap && cp -a old.qsnap '%s'",
                       tf_dir, store, store),
                 0, "%s", out);
    before = tf_tree_snapshot(tf_dir);
    expect_stale(qsnap_plan_create(&p, s, &co), store, "plan create");
    expect_stale(qsnap_verify(s, false, &f, &nf), store, "verify");
    cr_assert_null(f);
    expect_stale(qsnap_verify(s, true, &f, &nf), store, "verify --repair");
    cr_assert_null(f);
    expect_stale(qsnap_open_image(s, "main", QCOW2_OPEN_RDWR, &img), store, "open main");
    cr_assert_null(img);
    after = tf_tree_snapshot(tf_dir);
    cr_assert_str_eq(before, after, "a file changed in either directory");
    free(before);
    free(after);
    qsnap_store_close(s);
    /* The store its name finds now works as any other. */
    r = tf_open(tf_disk, 0);
    tf_ok(tf_create(r, "s3"), "create s3 on a new handle");
    tf_model_set(&tf_m, "s3", false, tf_model_get(&tf_m, "main"));
    tf_check_store(r, &tf_m, tf_dir, "after the store was replaced");
    qsnap_store_close(r);
}

/* A plan made before the store directory went is refused when it runs, before it makes one. */
Test(store, store_moved_between_plan_and_execute_is_refused)
{
    qsnap_store *s;
    qsnap_plan *p = NULL;
    qsnap_create_opts co = QSNAP_CREATE_OPTS_INIT;
    char store[600], out[1024];
    struct stat st;

    tf_setup(tf_dir, sizeof(tf_dir), tf_disk, sizeof(tf_disk), "moved-first", false, tf_d0);
    snprintf(store, sizeof(store), "%s.qsnap", tf_disk);
    /* A store directory without metadata yet (the first create makes it). */
    cr_assert_eq(mkdir(store, 0755), 0);
    s = tf_open(tf_disk, QSNAP_OPEN_CREATE);
    tf_ok(qsnap_plan_create(&p, s, &co), "plan the first create");
    cr_assert_eq(qo_sh(out, sizeof(out), "mv '%s' '%s/old.qsnap'", store, tf_dir), 0, "%s", out);
    expect_stale(qsnap_plan_execute(s, p, NULL), store, "execute");
    cr_assert_eq(lstat(store, &st), -1, "the store directory was made again");
    qsnap_plan_free(p);
    expect_stale(qsnap_plan_create(&p, s, &co), store, "plan create");
    cr_assert_eq(lstat(store, &st), -1, "the store directory was made again");
    qsnap_store_close(s);
}

/* A file at the name a new layer needs, which the metadata does not know (a leftover of lost
 * metadata, or one put there), is neither taken for the new layer nor removed. */
Test(store, a_new_layer_never_takes_a_file_already_there)
{
    qsnap_store *s = base("taken");
    char path[700], out[1024], *before, *after;
    uint8_t d1[16], d2[16];
    int rc;

    snprintf(path, sizeof(path), "%s.qsnap/layers/%u.qcow2", tf_disk, s->m.seq);
    cr_assert_eq(qo_sh(out, sizeof(out),
                       "qemu-img create -q -f qcow2 '%s' 4M && qemu-io -c 'write -P 0x66 0 64k' '%s'",
                       path, path),
                 0, "%s", out);
    cr_assert_eq(tf_digest_file(path, d1), 0);
    before = tf_tree_snapshot(tf_dir);
    rc = tf_revert(s, "s1", "z", false, NULL);
    cr_assert_eq(rc, QSNAP_EINTEGRITY, "revert over a taken name: rc %d", rc);
    cr_assert(strstr(qsnap_error_last()->message, path) &&
                  strstr(qsnap_error_last()->message, "nothing was changed"),
              "%s", qsnap_error_last()->message);
    after = tf_tree_snapshot(tf_dir);
    cr_assert_str_eq(before, after, "files changed");
    cr_assert_eq(tf_digest_file(path, d2), 0);
    cr_assert(!memcmp(d1, d2, sizeof(d1)), "the file there was changed");
    free(before);
    free(after);
    cr_assert_eq(unlink(path), 0);
    tf_check_store(s, &tf_m, tf_dir, "after the refused revert");
    qsnap_store_close(s);
}

/* A store without its VM path (a build from before it, a copy that dropped links): an
 * operation goes ahead and makes the link. */
Test(store, a_missing_vm_path_is_made_by_the_next_operation)
{
    qsnap_store *s = base("novmpath");
    char link[700], *path = NULL;

    snprintf(link, sizeof(link), "%s.qsnap/layers/current.qcow2", tf_disk);
    cr_assert_eq(unlink(link), 0);
    cr_assert_neq(qsnap_vm_path(s, &path), 0, "a missing VM path is reported");
    tf_ok(tf_create(s, "s3"), "create without the VM path");
    tf_model_set(&tf_m, "s3", false, tf_model_get(&tf_m, "main"));
    tf_ok(qsnap_vm_path(s, &path), "the VM path after the create");
    free(path);
    tf_check_store(s, &tf_m, tf_dir, "after the create made the VM path");
    qsnap_store_close(s);
}

Test(store, missing_layer_file)
{
    qsnap_store *s = base("missing");
    char *s2 = tf_file_of(s, "s2"), *before, *after;
    qsnap_finding *f = NULL;
    size_t nf = 0;
    bool named = false;
    int rc;

    cr_assert_eq(unlink(s2), 0);
    qsnap_store_close(s);
    s = tf_open(tf_disk, 0);
    before = tf_tree_snapshot(tf_dir);
    rc = qsnap_verify(s, false, &f, &nf);
    expect_error(rc, QSNAP_EINTEGRITY, NULL, "verify");
    for (size_t i = 0; i < nf; i++)
        named |= f[i].problem && strstr(f[i].file, "layers/") && strstr(s2, strrchr(f[i].file, '/'));
    cr_assert(named, "no finding names the missing %s", s2);
    qsnap_verify_free(f, nf);
    after = tf_tree_snapshot(tf_dir);
    cr_assert_str_eq(before, after, "verify changed files");
    free(before);
    free(after);

    EXPECT_REFUSED(s, QSNAP_EINTEGRITY, "layers/", qsnap_plan_revert(&p_, s, "s2", NULL, false));
    EXPECT_REFUSED(s, QSNAP_EINTEGRITY, "layers/", qsnap_plan_create(&p_, s, NULL));
    EXPECT_REFUSED(s, QSNAP_EINTEGRITY, "layers/", qsnap_plan_branch_create(&p_, s, "x", "s2"));
    EXPECT_REFUSED(s, QSNAP_EINTEGRITY, "layers/", qsnap_plan_commit(&p_, s, NULL));
    {
        char out[600];
        snprintf(out, sizeof(out), "%s/export.raw", tf_dir);
        before = tf_tree_snapshot(tf_dir);
        rc = qsnap_export(s, "s2", out, QCOW2_FORMAT_RAW, NULL, NULL);
        cr_assert_neq(rc, 0, "export of a snapshot whose layer is missing succeeded");
        cr_assert(strstr(qsnap_error_last()->message, "layers/"), "%s",
                  qsnap_error_last()->message);
        unlink(out);
        after = tf_tree_snapshot(tf_dir);
        cr_assert_str_eq(before, after);
        free(before);
        free(after);
    }
    /* Repair cannot invent the data: it still reports the problem. */
    rc = qsnap_verify(s, true, &f, &nf);
    qsnap_verify_free(f, nf);
    cr_assert_eq(rc, QSNAP_EINTEGRITY);
    free(s2);
    qsnap_store_close(s);
}

static void rebase_unsafe(const char *path, const char *to, const char *fmt)
{
    char out[4096];

    cr_assert_eq(chmod(path, 0644), 0);
    cr_assert_eq(qo_sh(out, sizeof(out), "qemu-img rebase -u -f qcow2 -b '%s' -F %s '%s'", to, fmt,
                       path),
                 0, "%s", out);
}

Test(store, edited_backing_link_of_a_head)
{
    qsnap_store *s = base("link");
    char *head = tf_file_of(s, "main"), *before, *after;
    qsnap_finding *f = NULL;
    size_t nf = 0;
    bool named = false;
    int rc;

    if (!qo_have_qemu())
        cr_skip_test("qemu-img/qemu-io not installed");
    /* main's head now reads through the disk instead of s2. */
    rebase_unsafe(head, "../../disk.img", "raw");
    before = tf_tree_snapshot(tf_dir);
    rc = qsnap_verify(s, false, &f, &nf);
    expect_error(rc, QSNAP_EINTEGRITY, NULL, "verify");
    for (size_t i = 0; i < nf; i++)
        named |= f[i].problem && !strcmp(f[i].file, head) && strstr(f[i].message, "link");
    cr_assert(named, "no finding names the edited link of %s", head);
    qsnap_verify_free(f, nf);
    after = tf_tree_snapshot(tf_dir);
    cr_assert_str_eq(before, after, "verify without repair changed files");
    free(before);
    free(after);
    /* Repair re-points the link; the content is the model's again. */
    rc = qsnap_verify(s, true, &f, &nf);
    qsnap_verify_free(f, nf);
    cr_assert_eq(rc, 0, "verify(repair): %s", qsnap_error_last()->message);
    tf_check_store(s, &tf_m, tf_dir, "repair of an edited head link");
    free(head);
    qsnap_store_close(s);
}

/* Operations on a head whose link was edited are refused (rule 5), not carried out over it. */
Test(store, edited_backing_link_of_a_head_refuses_operations)
{
    qsnap_store *s = base("linkop");
    char *head = tf_file_of(s, "main");

    if (!qo_have_qemu())
        cr_skip_test("qemu-img/qemu-io not installed");
    rebase_unsafe(head, "../../disk.img", "raw");
    /* Committing would write the wrong content into s2's layer's replacement... */
    EXPECT_REFUSED(s, QSNAP_EINTEGRITY, "layers/", qsnap_plan_commit(&p_, s, NULL));
    /* ...and freezing the head would make a snapshot of the wrong content. */
    EXPECT_REFUSED(s, QSNAP_EINTEGRITY, "layers/", qsnap_plan_create(&p_, s, NULL));
    free(head);
    qsnap_store_close(s);
}

/*
 * Executing a commit over an edited head link fails mid-way and leaves a
 * journal; verify(repair) must still get the store out (re-point the link,
 * finish the commit), not stop at the journal forever.
 */
Test(store, commit_over_an_edited_head_link_is_recoverable)
{
    qsnap_store *s = base("linkcommit");
    char *head = tf_file_of(s, "main");
    qsnap_finding *f = NULL;
    size_t nf = 0;
    int rc = QSNAP_EINTEGRITY;

    if (!qo_have_qemu())
        cr_skip_test("qemu-img/qemu-io not installed");
    rebase_unsafe(head, "../../disk.img", "raw");
    (void)tf_commit(s, NULL); /* refused, or failed mid-way */
    for (int i = 0; i < 3 && rc; i++) {
        rc = qsnap_verify(s, true, &f, &nf);
        qsnap_verify_free(f, nf);
    }
    cr_assert_eq(rc, 0, "verify(repair) three times did not recover the store: %s",
                 qsnap_error_last()->message);
    tf_check_store(s, &tf_m, tf_dir, "repair after a commit over an edited link");
    free(head);
    qsnap_store_close(s);
}

Test(store, edited_backing_link_of_a_frozen_layer)
{
    qsnap_store *s = base("flink");
    char *s2 = tf_file_of(s, "s2"), *other;
    qsnap_finding *f = NULL;
    size_t nf = 0;
    int rc;

    if (!qo_have_qemu())
        cr_skip_test("qemu-img/qemu-io not installed");
    /* Point s2's layer at a copy of the disk: same bytes, another file. */
    qsnap_store_close(s);
    cr_assert_eq(asprintf(&other, "%s/other.img", tf_dir) > 0, true);
    cr_assert_eq(qo_write_file(other, tf_d0, TF_SIZE), 0);
    rebase_unsafe(s2, "../../other.img", "raw");
    cr_assert_eq(chmod(s2, 0444), 0);
    s = tf_open(tf_disk, 0);
    rc = qsnap_verify(s, false, &f, &nf);
    qsnap_verify_free(f, nf);
    expect_error(rc, QSNAP_EINTEGRITY, NULL, "verify");
    EXPECT_REFUSED(s, QSNAP_EINTEGRITY, "layers/", qsnap_plan_revert(&p_, s, "s2", NULL, false));
    EXPECT_REFUSED(s, QSNAP_EINTEGRITY, "layers/", qsnap_plan_create(&p_, s, NULL));
    /* Repair re-points it to the disk as the metadata says. */
    rc = qsnap_verify(s, true, &f, &nf);
    qsnap_verify_free(f, nf);
    cr_assert_eq(rc, 0, "verify(repair) did not settle an edited link: %s",
                 qsnap_error_last()->message);
    unlink(other);
    tf_check_store(s, &tf_m, tf_dir, "repair of an edited frozen link");
    free(other);
    free(s2);
    qsnap_store_close(s);
}

/* A frozen layer whose data was modified AND whose link was edited: repair re-points, never blesses. */
Test(store, repair_of_a_link_does_not_bless_modified_data)
{
    qsnap_store *s = base("bless");
    char *s2 = tf_file_of(s, "s2"), out[4096];
    qsnap_finding *f = NULL;
    size_t nf = 0;
    int rc;

    if (!qo_have_qemu())
        cr_skip_test("qemu-img/qemu-io not installed");
    qsnap_store_close(s);
    cr_assert_eq(chmod(s2, 0644), 0);
    cr_assert_eq(qo_sh(out, sizeof(out), "qemu-io -f qcow2 -c 'write -P 0x77 3M 64k' '%s'", s2), 0,
                 "%s", out);
    {
        char other[600];
        snprintf(other, sizeof(other), "%s/other.img", tf_dir);
        cr_assert_eq(qo_write_file(other, tf_d0, TF_SIZE), 0);
    }
    rebase_unsafe(s2, "../../other.img", "raw");
    cr_assert_eq(chmod(s2, 0444), 0);
    s = tf_open(tf_disk, 0);
    rc = qsnap_verify(s, true, &f, &nf);
    qsnap_verify_free(f, nf);
    cr_assert_eq(rc, QSNAP_EINTEGRITY);
    rc = qsnap_verify(s, false, &f, &nf);
    qsnap_verify_free(f, nf);
    cr_assert_eq(rc, QSNAP_EINTEGRITY,
                 "after verify(repair) re-pointed the link, the modified data of %s is no longer "
                 "reported (the repair took a new fingerprint)",
                 s2);
    EXPECT_REFUSED(s, QSNAP_EINTEGRITY, "layers/", qsnap_plan_revert(&p_, s, "s2", NULL, false));
    free(s2);
    qsnap_store_close(s);
}

Test(store, frozen_layer_modified_with_qemu_io)
{
    qsnap_store *s = base("modified");
    char *s2 = tf_file_of(s, "s2"), out[4096];
    qsnap_finding *f = NULL;
    size_t nf = 0;
    bool named = false;
    int rc;

    if (!qo_have_qemu())
        cr_skip_test("qemu-img/qemu-io not installed");
    qsnap_store_close(s);
    cr_assert_eq(chmod(s2, 0644), 0);
    cr_assert_eq(qo_sh(out, sizeof(out), "qemu-io -f qcow2 -c 'write -P 0x77 3M 64k' '%s'", s2), 0,
                 "%s", out);
    s = tf_open(tf_disk, 0);
    rc = qsnap_verify(s, false, &f, &nf);
    expect_error(rc, QSNAP_EINTEGRITY, NULL, "verify");
    for (size_t i = 0; i < nf; i++)
        named |= f[i].problem && !strcmp(f[i].file, s2) && strstr(f[i].message, "modified");
    cr_assert(named, "no finding says %s was modified", s2);
    qsnap_verify_free(f, nf);
    EXPECT_REFUSED(s, QSNAP_EINTEGRITY, "layers/", qsnap_plan_create(&p_, s, NULL));
    EXPECT_REFUSED(s, QSNAP_EINTEGRITY, "layers/", qsnap_plan_revert(&p_, s, "s2", NULL, false));
    EXPECT_REFUSED(s, QSNAP_EINTEGRITY, "layers/",
                   qsnap_plan_delete(&p_, s, "s2", QSNAP_DELETE_STREAM));
    EXPECT_REFUSED(s, QSNAP_EINTEGRITY, "layers/", qsnap_plan_commit(&p_, s, "b"));
    /* Repair must not bless the change by taking a new fingerprint. */
    rc = qsnap_verify(s, true, &f, &nf);
    qsnap_verify_free(f, nf);
    cr_assert_eq(rc, QSNAP_EINTEGRITY, "verify(repair) accepted a modified frozen layer");
    rc = qsnap_verify(s, false, &f, &nf);
    qsnap_verify_free(f, nf);
    cr_assert_eq(rc, QSNAP_EINTEGRITY, "the modification is no longer reported after repair");
    free(s2);
    qsnap_store_close(s);
}

Test(store, raw_disk_modified_with_qemu_io)
{
    qsnap_store *s = base("diskmod");
    char out[4096];
    qsnap_finding *f = NULL;
    size_t nf = 0;
    int rc;

    if (!qo_have_qemu())
        cr_skip_test("qemu-img/qemu-io not installed");
    qsnap_store_close(s);
    cr_assert_eq(qo_sh(out, sizeof(out), "qemu-io -f raw -c 'write -P 0x66 0 4k' '%s'", tf_disk), 0,
                 "%s", out);
    s = tf_open(tf_disk, 0);
    rc = qsnap_verify(s, false, &f, &nf);
    qsnap_verify_free(f, nf);
    expect_error(rc, QSNAP_EINTEGRITY, NULL, "verify of a modified disk");
    EXPECT_REFUSED(s, QSNAP_EINTEGRITY, "disk.img", qsnap_plan_revert(&p_, s, "s1", NULL, false));
    qsnap_store_close(s);
}

/* Damage the meta file by the shell command how, in its text form (version 2) when it is whole. */
static void damage_meta(const char *how)
{
    char meta[600], out[4096];
    size_t len = 0;
    char *bytes;

    snprintf(meta, sizeof(meta), "%s.qsnap/meta", tf_disk);
    bytes = (char *)qo_read_file(meta, &len);
    if (bytes && len > 14 && !memcmp(bytes, QSNAP_BIN_MAGIC, 14))
        tf_meta_as_text(tf_disk, 2);
    free(bytes);
    cr_assert_eq(qo_sh(out, sizeof(out), "%s '%s'", how, meta), 0, "%s", out);
}

static void expect_open_fails(int want, const char *what)
{
    char *before = tf_tree_snapshot(tf_dir), *after;
    qsnap_store *s = NULL;
    int rc = qsnap_store_open(&s, tf_disk, 0);

    expect_error(rc, want, what, "qsnap_store_open");
    cr_assert_null(s);
    rc = qsnap_store_open(&s, tf_disk, QSNAP_OPEN_READONLY);
    cr_assert_eq(rc, want, "read-only open: rc %d", rc);
    rc = qsnap_store_open(&s, tf_disk, QSNAP_OPEN_CREATE);
    cr_assert_eq(rc, want, "open with QSNAP_OPEN_CREATE over a damaged store: rc %d", rc);
    after = tf_tree_snapshot(tf_dir);
    cr_assert_str_eq(before, after, "a failed open changed files");
    free(before);
    free(after);
}

Test(store, truncated_metadata)
{
    qsnap_store_close(base("trunc"));
    damage_meta("truncate -s 100");
    expect_open_fails(QSNAP_EINTEGRITY, "meta");
}

Test(store, garbled_metadata)
{
    qsnap_store_close(base("garble"));
    damage_meta("sed -i 's/^layer 3 /lay#r 3 /; s/backing=1/backing=9x/'");
    expect_open_fails(QSNAP_EINTEGRITY, "meta");
}

Test(store, metadata_naming_a_missing_layer)
{
    qsnap_store_close(base("dangle"));
    damage_meta("sed -i 's/ layer=3 / layer=99 /'");
    expect_open_fails(QSNAP_EINTEGRITY, "meta");
}

Test(store, empty_and_binary_metadata)
{
    qsnap_store_close(base("binary"));
    damage_meta("head -c 4096 /dev/urandom >");
    expect_open_fails(QSNAP_EINTEGRITY, "meta");
    damage_meta(": >");
    expect_open_fails(QSNAP_EINTEGRITY, "meta");
}

Test(store, unknown_store_version)
{
    qsnap_store_close(base("version"));
    damage_meta("sed -i '1s/^qsnap-store 2$/qsnap-store 7/'");
    expect_open_fails(QSNAP_EINTEGRITY, "7");
}

/* A block device as the disk: its store would be made in /dev; refused, the node untouched. */
Test(store, a_block_device_is_not_a_disk)
{
    qsnap_store *s = NULL;
    char node[600], store[700];
    struct stat before, after;
    int rc;

    tf_setup(tf_dir, sizeof(tf_dir), tf_disk, sizeof(tf_disk), "blockdev", false, tf_d0);
    snprintf(node, sizeof(node), "%s/vda", tf_dir);
    snprintf(store, sizeof(store), "%s.qsnap", node);
    if (mknod(node, S_IFBLK | 0600, makedev(7, 250)) != 0)
        cr_skip_test("cannot make a block device node here: %s", strerror(errno));
    cr_assert_eq(stat(node, &before), 0);
    rc = qsnap_store_open(&s, node, QSNAP_OPEN_CREATE);
    expect_error(rc, QSNAP_EUSAGE, "block device", "open a block device");
    cr_assert(strstr(qsnap_error_last()->message, node), "%s", qsnap_error_last()->message);
    cr_assert_null(s);
    cr_assert_eq(stat(node, &after), 0);
    cr_assert_eq(before.st_mode, after.st_mode, "the node's mode changed");
    cr_assert_neq(access(store, F_OK), 0, "a store was made beside the node");
}

Test(store, no_disk_no_store)
{
    qsnap_store *s = NULL;
    char path[600];
    int rc;

    tf_setup(tf_dir, sizeof(tf_dir), tf_disk, sizeof(tf_disk), "nodisk", false, tf_d0);
    snprintf(path, sizeof(path), "%s/absent.img", tf_dir);
    rc = qsnap_store_open(&s, path, QSNAP_OPEN_CREATE);
    cr_assert_eq(rc, QSNAP_ENOTFOUND);
    cr_assert(strstr(qsnap_error_last()->message, "absent.img"), "%s",
              qsnap_error_last()->message);
    rc = qsnap_store_open(&s, tf_disk, 0);
    expect_error(rc, QSNAP_ENOTFOUND, "disk.img", "open without a store");
    cr_assert_neq(access(path, F_OK), 0);
    {
        char st[600];
        snprintf(st, sizeof(st), "%s.qsnap", tf_disk);
        cr_assert_neq(access(st, F_OK), 0, "a failed open made the store");
    }
}

/* ---- state files ------------------------------------------------------------------ */

static struct stat must_stat(const char *p)
{
    struct stat st;

    cr_assert_eq(stat(p, &st), 0, "%s", p);
    return st;
}

static char *state_of(qsnap_store *s, const char *name)
{
    qsnap_node *l = NULL;
    size_t n = 0;
    char *r = NULL;

    cr_assert_eq(qsnap_list(s, &l, &n), 0);
    for (size_t i = 0; i < n; i++) {
        if (!strcmp(l[i].name, name) && l[i].state_file)
            r = strdup(l[i].state_file);
    }
    qsnap_list_free(l, n);
    return r;
}

/*
 * One file attached to two snapshots: each gets its own read-only copy in the
 * store, so the next save to the same path (written in place: O_TRUNC on the
 * same inode, as 'cat >' or QEMU's "exec:cat > FILE" do) changes neither; the
 * user's file is never changed or moved; each copy goes with its own snapshot.
 */
Test(store, state_file_shared_by_two_snapshots)
{
    qsnap_store *s = base("state");
    qsnap_create_opts co = QSNAP_CREATE_OPTS_INIT;
    qsnap_plan *p = NULL;
    char state[600], *st3, *st4;
    uint8_t data[8192], later[100], *back;
    size_t len;
    struct stat orig, a, b;

    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (uint8_t)(i * 7 + 3);
    memset(later, 0x5a, sizeof(later));
    snprintf(state, sizeof(state), "%s/vm.state", tf_dir);
    cr_assert_eq(qo_write_file(state, data, sizeof(data)), 0);
    orig = must_stat(state);

    co.name = "s3";
    co.state_file = state;
    tf_ok(qsnap_plan_create(&p, s, &co), "plan s3 --state");
    tf_ok(tf_exec(s, p, NULL), "create s3 --state");
    tf_model_set(&tf_m, "s3", false, tf_model_get(&tf_m, "main"));
    co.name = "s4";
    tf_ok(qsnap_plan_create(&p, s, &co), "plan s4 --state");
    tf_ok(tf_exec(s, p, NULL), "create s4 --state");
    tf_model_set(&tf_m, "s4", false, tf_model_get(&tf_m, "main"));

    st3 = state_of(s, "s3");
    st4 = state_of(s, "s4");
    cr_assert_not_null(st3);
    cr_assert_not_null(st4);
    cr_assert(!strncmp(st3, qsnap_store_path(s), strlen(qsnap_store_path(s))),
              "%s is not in the store", st3);
    a = must_stat(st3);
    b = must_stat(st4);
    cr_assert_neq(a.st_ino, orig.st_ino, "the state file was hard-linked, not copied");
    cr_assert_neq(b.st_ino, orig.st_ino, "the state file was hard-linked, not copied");
    cr_assert_neq(a.st_ino, b.st_ino, "two snapshots share one copy");
    cr_assert_eq(a.st_mode & 0777, 0444, "the store's copy is not read-only: %o", a.st_mode);
    cr_assert_eq(must_stat(state).st_nlink, 1);
    tf_check_store(s, &tf_m, tf_dir, "two snapshots with one state file");

    /* The next save to the same path, in place: the snapshots' states stay. */
    {
        int fd = open(state, O_WRONLY | O_TRUNC);
        cr_assert(fd >= 0);
        cr_assert_eq(write(fd, later, sizeof(later)), (ssize_t)sizeof(later));
        close(fd);
    }
    for (int k = 0; k < 2; k++) {
        back = qo_read_file(k ? st4 : st3, &len);
        cr_assert_eq(len, sizeof(data), "a snapshot's state changed with the user's file");
        cr_assert(!memcmp(back, data, len), "a snapshot's state changed with the user's file");
        free(back);
    }
    {
        qsnap_finding *f = NULL;
        size_t nf = 0;
        cr_assert_eq(qsnap_verify(s, false, &f, &nf), 0, "verify after the user's save");
        qsnap_verify_free(f, nf);
    }

    /* Deleting the first keeps the second's copy. */
    tf_ok(tf_delete(s, "s3", 0, NULL), "delete s3");
    tf_model_del(&tf_m, "s3");
    cr_assert_neq(access(st3, F_OK), 0, "the state file stayed after its snapshot");
    cr_assert_eq(access(st4, F_OK), 0, "the state file went with the other snapshot");
    tf_check_store(s, &tf_m, tf_dir, "delete s3");
    /* Deleting the second removes it from the store. */
    tf_ok(tf_delete(s, "s4", 0, NULL), "delete s4");
    tf_model_del(&tf_m, "s4");
    cr_assert_neq(access(st4, F_OK), 0, "the state file stayed after its last snapshot");
    tf_check_store(s, &tf_m, tf_dir, "delete s4");
    /* The user's file: its inode, only what the user wrote. */
    a = must_stat(state);
    cr_assert_eq(a.st_ino, orig.st_ino);
    cr_assert_eq(a.st_nlink, 1);
    back = qo_read_file(state, &len);
    cr_assert_eq(len, sizeof(later));
    cr_assert(!memcmp(back, later, len), "the user's file changed");
    free(back);
    free(st3);
    free(st4);

    qsnap_store_close(s);
}

Test(store, missing_state_file)
{
    qsnap_store *s = base("nostate");
    qsnap_create_opts co = QSNAP_CREATE_OPTS_INIT;
    char state[600];

    /* A missing state file is refused before anything is written. */
    co.name = "s5";
    snprintf(state, sizeof(state), "%s/absent.state", tf_dir);
    co.state_file = state;
    EXPECT_REFUSED(s, QSNAP_ENOTFOUND, "absent.state", qsnap_plan_create(&p_, s, &co));
    qsnap_store_close(s);
}

/* ---- names -------------------------------------------------------------------------- */

Test(store, generated_names)
{
    qsnap_store *s;
    qsnap_node *l = NULL;
    size_t n = 0, snaps = 0;
    const char *names[3] = {NULL, NULL, NULL};

    tf_setup(tf_dir, sizeof(tf_dir), tf_disk, sizeof(tf_disk), "gen", false, tf_d0);
    s = tf_open(tf_disk, QSNAP_OPEN_CREATE);
    for (int i = 0; i < 3; i++)
        tf_ok(tf_create(s, NULL), "create without a name");
    cr_assert_eq(qsnap_list(s, &l, &n), 0);
    for (size_t i = 0; i < n; i++) {
        if (l[i].kind != QSNAP_SNAPSHOT)
            continue;
        cr_assert_lt(snaps, 3);
        names[snaps++] = l[i].name;
        cr_assert(l[i].name[0], "an empty generated name");
        cr_assert_eq(qsnap_name_check(l[i].name), 0, "generated name '%s' is invalid", l[i].name);
    }
    cr_assert_eq(snaps, 3);
    cr_assert_str_neq(names[0], names[1]);
    cr_assert_str_neq(names[1], names[2]);
    cr_assert_str_neq(names[0], names[2]);
    qsnap_list_free(l, n);
    qsnap_store_close(s);
}

Test(store, name_check)
{
    static const char *const bad[] = {"", "a/b", "/x", "-x", "--force", "a b", " a", "a\tb",
                                      "a\nb", "x/", "..", "."};
    static const char *const good[] = {"s1", "before-upgrade", "v1.2_3", "a+b", "x-", "A9"};
    char longname[300];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = qsnap_name_check(bad[i]);
        cr_assert_eq(rc, QSNAP_EUSAGE, "'%s' accepted", bad[i]);
        cr_assert(qsnap_error_last()->message[0], "no message for '%s'", bad[i]);
    }
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        cr_assert_eq(qsnap_name_check(good[i]), 0, "'%s' refused: %s", good[i],
                     qsnap_error_last()->message);
    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    cr_assert_eq(qsnap_name_check(longname), QSNAP_EUSAGE);
}

/* The quiet check the metadata reader uses agrees with qsnap_name_check on every name
 * above, at the length bound, and on every single byte in three places. */
Test(store, name_ok_agrees_with_name_check)
{
    static const char *const names[] = {"", "a/b", "/x", "-x", "--force", "a b", " a", "a\tb",
                                        "a\nb", "x/", "..", ".", "...", ".a", "a.", "s1",
                                        "before-upgrade", "v1.2_3", "a+b", "x-", "A9", "\xc3\xa9t\xc3\xa9",
                                        "a\x7f", "@:"};
    char n[QSNAP_MAX_NAME + 2];

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        cr_assert_eq(qsnap__name_ok(names[i]), qsnap_name_check(names[i]) == 0, "'%s'", names[i]);
    for (size_t len = QSNAP_MAX_NAME - 1; len <= QSNAP_MAX_NAME + 1; len++) {
        memset(n, 'b', len);
        n[len] = '\0';
        cr_assert_eq(qsnap__name_ok(n), qsnap_name_check(n) == 0, "length %zu", len);
        cr_assert_eq(qsnap__name_ok(n), len <= QSNAP_MAX_NAME);
    }
    for (int c = 1; c < 256; c++) {
        for (int at = 0; at < 3; at++) {
            memcpy(n, "abc", 4);
            n[at] = (char)c;
            cr_assert_eq(qsnap__name_ok(n), qsnap_name_check(n) == 0, "byte 0x%02x at %d", c, at);
        }
    }
    cr_assert(!qsnap__name_ok(NULL));
}

Test(store, names_are_unique_and_validated_by_operations)
{
    qsnap_store *s = base("names");
    qsnap_create_opts co = QSNAP_CREATE_OPTS_INIT;

    co.name = "s1";
    EXPECT_REFUSED(s, QSNAP_EUSAGE, "s1", qsnap_plan_create(&p_, s, &co));
    co.name = "main"; /* a branch's name */
    EXPECT_REFUSED(s, QSNAP_EUSAGE, "main", qsnap_plan_create(&p_, s, &co));
    co.name = "bad/name";
    {
        char *b = tf_tree_snapshot(tf_dir), *a;
        qsnap_plan *p = NULL;
        int rc = qsnap_plan_create(&p, s, &co);
        cr_assert_eq(rc, QSNAP_EUSAGE);
        cr_assert(strstr(qsnap_error_last()->message, "bad/name"), "%s",
                  qsnap_error_last()->message);
        a = tf_tree_snapshot(tf_dir);
        cr_assert_str_eq(a, b);
        free(a);
        free(b);
    }
    co.name = "-rf";
    cr_assert_eq(tf_create(s, co.name), QSNAP_EUSAGE);
    EXPECT_REFUSED(s, QSNAP_EUSAGE, "s2", qsnap_plan_branch_create(&p_, s, "s2", NULL));
    EXPECT_REFUSED(s, QSNAP_EUSAGE, "b", qsnap_plan_branch_create(&p_, s, "b", "s1"));
    EXPECT_REFUSED(s, QSNAP_EUSAGE, "s1", qsnap_plan_revert(&p_, s, "s2", "s1", false));
    EXPECT_REFUSED(s, QSNAP_EUSAGE, "b", qsnap_plan_branch_rename(&p_, s, "main", "b"));
    EXPECT_REFUSED(s, QSNAP_EUSAGE, "s2", qsnap_plan_branch_rename(&p_, s, "main", "s2"));
    cr_assert_eq(qsnap_plan_branch_create(&(qsnap_plan *){NULL}, s, "x y", "s1"), QSNAP_EUSAGE);
    /* Unknown names are ENOTFOUND with a hint. */
    EXPECT_REFUSED(s, QSNAP_ENOTFOUND, "nope", qsnap_plan_revert(&p_, s, "nope", NULL, false));
    EXPECT_REFUSED(s, QSNAP_ENOTFOUND, "nope", qsnap_plan_delete(&p_, s, "nope", 0));
    EXPECT_REFUSED(s, QSNAP_ENOTFOUND, "nope", qsnap_plan_switch(&p_, s, "nope"));
    EXPECT_REFUSED(s, QSNAP_ENOTFOUND, "b", qsnap_plan_delete(&p_, s, "b", 0)); /* a branch */
    /* A rename frees the old name; the tree's content is untouched. */
    tf_ok(({
              qsnap_plan *p = NULL;
              int r = qsnap_plan_branch_rename(&p, s, "b", "renamed");
              r ? r : tf_exec(s, p, NULL);
          }),
          "rename b");
    tf_model_set(&tf_m, "renamed", true, tf_model_get(&tf_m, "b"));
    tf_model_del(&tf_m, "b");
    tf_ok(tf_branch(s, "b", "s1"), "the freed name b");
    tf_model_set(&tf_m, "b", true, tf_model_get(&tf_m, "s1"));
    tf_check_store(s, &tf_m, tf_dir, "names");
    qsnap_store_close(s);
}

/* ---- the dry run -------------------------------------------------------------------- */

struct counter {
    unsigned calls, last;
    bool in_order;
};

static void count_hook(unsigned step, void *payload)
{
    struct counter *c = payload;

    c->in_order &= step == c->last + 1;
    c->last = step;
    c->calls++;
}

static void dry_then_run(qsnap_store *s, qsnap_plan *p, const char *what)
{
    char *before = tf_tree_snapshot(tf_dir), *after, *text = NULL, *json = NULL, path[600],
         out[4096];
    qsnap_exec_opts eo = QSNAP_EXEC_OPTS_INIT;
    struct counter c = {0, 0, true};
    size_t lines = 0, steps = 0;
    int rc;

    tf_ok(qsnap_plan_describe(p, false, &text), "describe");
    tf_ok(qsnap_plan_describe(p, true, &json), "describe json");
    cr_assert(qsnap_plan_summary(p)[0], "%s: no summary", what);
    after = tf_tree_snapshot(tf_dir);
    cr_assert_str_eq(before, after, "%s: the dry run changed files", what);
    free(before);
    free(after);
    for (const char *x = text; *x; x++)
        lines += *x == '\n';
    for (const char *x = json; (x = strstr(x, "\"step\"")); x++)
        steps++;
    cr_assert_gt(lines, 0, "%s: an empty plan", what);
    cr_assert_eq(steps, lines, "%s: JSON has %zu steps, text %zu", what, steps, lines);
    snprintf(path, sizeof(path), "%s/.plan.json", tf_dir);
    cr_assert_eq(qo_write_file(path, json, strlen(json)), 0);
    cr_assert_eq(qo_sh(out, sizeof(out),
                       "python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); "
                       "assert len(d[\"steps\"]) == %zu and d[\"summary\"]' '%s'",
                       lines, path),
                 0, "%s: invalid plan JSON: %s\n%s", what, out, json);
    unlink(path);
    eo.step_hook = count_hook;
    eo.payload = &c;
    rc = qsnap_plan_execute(s, p, &eo);
    cr_assert_eq(rc, 0, "%s: %s", what, qsnap_error_last()->message);
    cr_assert_eq(c.calls, lines, "%s: the dry run lists %zu steps, the execution ran %u", what,
                 lines, c.calls);
    cr_assert(c.in_order, "%s: steps ran out of order", what);
    qsnap_plan_free(p);
    free(text);
    free(json);
}

Test(store, dry_run_changes_nothing_and_lists_the_executed_steps)
{
    qsnap_store *s;
    qsnap_plan *p = NULL;
    qsnap_create_opts co = QSNAP_CREATE_OPTS_INIT;
    char state[600];

    tf_setup(tf_dir, sizeof(tf_dir), tf_disk, sizeof(tf_disk), "dry", false, tf_d0);
    s = tf_open(tf_disk, QSNAP_OPEN_CREATE);
    /* The first create's dry run must not even make the store directory. */
    co.name = "s1";
    tf_ok(qsnap_plan_create(&p, s, &co), "plan s1");
    {
        char st[600], *text = NULL;
        snprintf(st, sizeof(st), "%s.qsnap", tf_disk);
        tf_ok(qsnap_plan_describe(p, false, &text), "describe");
        free(text);
        cr_assert_neq(access(st, F_OK), 0, "the dry run of the first create made the store");
    }
    dry_then_run(s, p, "create s1");
    tf_model_set(&tf_m, "s1", false, tf_d0);
    tf_model_set(&tf_m, "main", true, tf_d0);
    tf_write_state(s, &tf_m, "main", 0x21, 0, 64 * KiB);
    snprintf(state, sizeof(state), "%s/vm.state", tf_dir);
    cr_assert_eq(qo_write_file(state, "state", 5), 0);
    co.name = "s2";
    co.state_file = state;
    tf_ok(qsnap_plan_create(&p, s, &co), "plan s2");
    dry_then_run(s, p, "create s2 --state");
    tf_model_set(&tf_m, "s2", false, tf_model_get(&tf_m, "main"));
    tf_write_state(s, &tf_m, "main", 0x31, 1 * MiB, 64 * KiB);
    tf_ok(qsnap_plan_revert(&p, s, "s1", "r", false), "plan revert");
    dry_then_run(s, p, "revert");
    tf_model_set(&tf_m, "r", true, tf_d0);
    tf_write_state(s, &tf_m, "r", 0x41, 2 * MiB, 64 * KiB);
    tf_ok(qsnap_plan_branch_create(&p, s, "b", "s2"), "plan branch");
    dry_then_run(s, p, "branch");
    tf_model_set(&tf_m, "b", true, tf_model_get(&tf_m, "s2"));
    tf_ok(qsnap_plan_commit(&p, s, "main"), "plan commit");
    dry_then_run(s, p, "commit main");
    tf_ok(qsnap_plan_delete(&p, s, "s2", QSNAP_DELETE_STREAM), "plan delete --stream");
    dry_then_run(s, p, "delete s2 --stream");
    tf_model_del(&tf_m, "s2");
    tf_ok(qsnap_plan_switch(&p, s, "b"), "plan switch");
    dry_then_run(s, p, "switch");
    tf_ok(qsnap_plan_branch_delete(&p, s, "r", true), "plan branch -d --force");
    dry_then_run(s, p, "branch delete");
    tf_model_del(&tf_m, "r");
    tf_check_store(s, &tf_m, tf_dir, "the dry runs");
    qsnap_store_close(s);
}

/* A plan made before the store changed is not executed over the change. */
Test(store, stale_plan_is_refused)
{
    qsnap_store *s = base("stale");
    qsnap_plan *p = NULL;
    char *before, *after;

    tf_ok(qsnap_plan_revert(&p, s, "s1", "r", false), "plan revert");
    tf_ok(tf_create(s, "s3"), "create s3");
    tf_model_set(&tf_m, "s3", false, tf_model_get(&tf_m, "main"));
    before = tf_tree_snapshot(tf_dir);
    cr_assert_neq(tf_exec(s, p, NULL), 0, "a stale plan was executed");
    after = tf_tree_snapshot(tf_dir);
    cr_assert_str_eq(before, after);
    free(before);
    free(after);
    tf_check_store(s, &tf_m, tf_dir, "stale plan");
    qsnap_store_close(s);
}

/* ---- ownership ------------------------------------------------------------- */

/* Every file and directory of a store root makes for a user's disk belongs to that user. */
Test(store, store_files_belong_to_the_disk_owner)
{
    const uid_t uid = 54321;
    const gid_t gid = 54322;
    qsnap_store *s;
    char cmd[1200], out[4096];

    if (geteuid() != 0)
        cr_skip_test("needs root to give files away");
    tf_setup(tf_dir, sizeof(tf_dir), tf_disk, sizeof(tf_disk), "owner", false, tf_d0);
    cr_assert_eq(chown(tf_disk, uid, gid), 0);
    s = tf_open(tf_disk, QSNAP_OPEN_CREATE);
    tf_ok(tf_create(s, "s1"), "create s1");
    tf_model_set(&tf_m, "s1", false, tf_d0);
    tf_model_set(&tf_m, "main", true, tf_d0);
    tf_write_state(s, &tf_m, "main", 0x21, 0, 64 * KiB);
    tf_ok(tf_create(s, "s2"), "create s2");
    qsnap_store_close(s);
    /* find prints what does not belong to the disk's owner: nothing may. */
    snprintf(cmd, sizeof(cmd), "find '%s.qsnap' ! -uid %u -o ! -gid %u", tf_disk, (unsigned)uid,
             (unsigned)gid);
    cr_assert_eq(qo_sh(out, sizeof(out), "%s", cmd), 0, "%s", out);
    cr_assert_str_eq(out, "", "not the disk owner's: %s", out);
    tf_model_free(&tf_m);
}

/* A store whose meta file is gone still holds layers: never "no store", never built over. */
Test(store, missing_metadata_with_layers_left)
{
    qsnap_store_close(base("nometa"));
    damage_meta("rm");
    expect_open_fails(QSNAP_EINTEGRITY, "no metadata");
}

/* A backup copy of disk and store (holes filled by the copy) verifies clean. */
Test(store, copied_store_verifies_clean)
{
    char copy[300], cdisk[800], out[4096];
    const char *slash;
    qsnap_store *s;
    qsnap_finding *f = NULL;
    size_t nf = 0;
    int rc;

    qsnap_store_close(base("copy"));
    snprintf(copy, sizeof(copy), "%s.copy", tf_dir);
    cr_assert_eq(qo_sh(out, sizeof(out), "cp -r --sparse=never '%s' '%s'", tf_dir, copy), 0, "%s",
                 out);
    slash = strrchr(tf_disk, '/');
    snprintf(cdisk, sizeof(cdisk), "%s%s", copy, slash);
    cr_assert_eq(qsnap_store_open(&s, cdisk, 0), 0, "%s", qsnap_error_last()->message);
    rc = qsnap_verify(s, false, &f, &nf);
    for (size_t i = 0; i < nf; i++)
        cr_expect(!f[i].problem, "%s", f[i].message);
    cr_assert_eq(rc, 0, "verify of a copy: rc %d", rc);
    qsnap_verify_free(f, nf);
    qsnap_store_close(s);
    qo_rmtree(copy);
}

/* The disk layer must be the recorded disk beside the store, never a path out of it. */
Test(store, disk_layer_outside_the_store_is_refused)
{
    qsnap_store_close(base("diskpath"));
    damage_meta("sed -i '/disk=1/s|file=\\.\\./|file=../../../../../etc/|'");
    expect_open_fails(QSNAP_EINTEGRITY, "disk");
}

Test(store, recorded_disk_outside_the_store_is_refused)
{
    qsnap_store_close(base("diskrec"));
    damage_meta("sed -i 's|^disk \\.\\./|disk ../../x/|; /disk=1/s|file=\\.\\./|file=../../x/|'");
    expect_open_fails(QSNAP_EINTEGRITY, "disk");
}

/* A disk that went away while its store stayed: the message says so and names the fix. */
Test(store, missing_disk_with_its_store_left)
{
    char moved[600];
    qsnap_store *s = NULL;

    qsnap_store_close(base("nodisk"));
    snprintf(moved, sizeof(moved), "%s.moved", tf_disk);
    cr_assert_eq(rename(tf_disk, moved), 0);
    expect_error(qsnap_store_open(&s, tf_disk, 0), QSNAP_ENOTFOUND, "its store",
                 "qsnap_store_open");
    cr_assert_null(s);
    cr_assert_eq(rename(moved, tf_disk), 0);
}

/* A branch whose head file is gone: refused without --force, dropped with it. */
Test(store, branch_with_a_missing_head_is_dropped_only_with_force)
{
    qsnap_store *s = base("nohead");
    qsnap_plan *p = NULL;
    char *head = tf_file_of(s, "b"), *summary = NULL;

    cr_assert_not_null(head);
    cr_assert_eq(unlink(head), 0);
    EXPECT_REFUSED(s, QSNAP_EREFUSED, "missing", qsnap_plan_branch_delete(&p_, s, "b", false));
    tf_ok(qsnap_plan_branch_delete(&p, s, "b", true), "branch -d --force");
    tf_ok(tf_exec(s, p, &summary), "execute");
    cr_assert(strstr(summary, "missing"), "%s", summary);
    free(summary);
    {
        qsnap_finding *f = NULL;
        size_t nf = 0;
        cr_assert_eq(qsnap_verify(s, false, &f, &nf), 0, "verify after dropping the branch");
        qsnap_verify_free(f, nf);
    }
    free(head);
    qsnap_store_close(s);
}

/*
 * The metadata text form: every byte outside [A-Za-z0-9._-+/:@] of a name,
 * description or path is written %XX (upper-case hex), fingerprints as
 * lower-case hex, and what is written parses back to the same and formats
 * to the same bytes again.
 */
Test(store, metadata_text_encodes_every_odd_byte_and_round_trips)
{
    struct qsnap__model m, back;
    struct qsnap__layer *l;
    struct qsnap__node *n;
    char *text = NULL, *again = NULL;

    memset(&m, 0, sizeof(m));
    memset(&back, 0, sizeof(back));
    m.seq = 10;
    m.disk = strdup("../my disk%1 #2.raw");
    m.nl = 1;
    m.layers = calloc(1, sizeof(*m.layers));
    l = &m.layers[0];
    l->id = 1;
    l->file = strdup("layers/1.qcow2");
    l->fmt = QCOW2_FORMAT_QCOW2;
    l->have_fp = true;
    for (int k = 0; k < 16; k++)
        l->fp[k] = (uint8_t)(k * 17);
    m.nn = 1;
    m.nodes = calloc(1, sizeof(*m.nodes));
    n = &m.nodes[0];
    n->id = 1;
    n->layer = 1;
    n->name = strdup("caf\xc3\xa9-1");
    n->desc = strdup("line one =%# \x01two");
    cr_assert_eq(qsnap__model_format(&m, &text), 0);
    cr_assert_not_null(strstr(text, "disk ../my%20disk%251%20%232.raw\n"), "%s", text);
    cr_assert_not_null(strstr(text, " name=caf%C3%A9-1"), "%s", text);
    cr_assert_not_null(strstr(text, " desc=line%20one%20%3D%25%23%20%01two"), "%s", text);
    cr_assert_not_null(strstr(text, " fp=00112233445566778899aabbccddeeff"), "%s", text);
    cr_assert_eq(qsnap__model_parse(&back, text, strlen(text), "test"), 0, "%s",
                 qsnap_error_last()->message);
    cr_assert_str_eq(back.nodes[0].name, n->name);
    cr_assert_str_eq(back.nodes[0].desc, n->desc);
    cr_assert_str_eq(back.disk, m.disk);
    cr_assert_eq(qsnap__model_format(&back, &again), 0);
    cr_assert_str_eq(again, text);
    free(text);
    free(again);
    qsnap__model_free(&m);
    qsnap__model_free(&back);
}

/*
 * The check under the lock before a plan's first step walks layers/ again
 * only when it changed since the walk at open (safe.c). A link planted
 * between the two, where no step of the plan looks, is still refused and
 * nothing is written through it; with nothing planted the same plan runs.
 */
Test(store, link_planted_after_open_is_refused_when_the_plan_runs)
{
    const struct timespec quiet = {0, 100 * 1000 * 1000};
    qsnap_create_opts o = QSNAP_CREATE_OPTS_INIT;
    qsnap_store *s = base("latelink");
    qsnap_plan *p = NULL;
    char *victim = NULL, *link = NULL, *text = NULL;
    size_t len = 0;
    FILE *f;

    cr_assert(asprintf(&victim, "%s/victim.txt", tf_dir) > 0);
    cr_assert(asprintf(&link, "%s.qsnap/layers/.tmp-77.qcow2", tf_disk) > 0);
    f = fopen(victim, "w");
    cr_assert_not_null(f);
    fputs("victim text\n", f);
    fclose(f);
    for (int planted = 1; planted >= 0; planted--) {
        /* layers/ left alone for longer than the clock's tick: the walk at open is trusted. */
        qsnap_store_close(s);
        nanosleep(&quiet, NULL);
        s = tf_open(tf_disk, 0);
        o.name = planted ? "late1" : "late2";
        tf_ok(qsnap_plan_create(&p, s, &o), "plan create");
        if (planted) {
            cr_assert_eq(symlink(victim, link), 0);
            expect_error(qsnap_plan_execute(s, p, NULL), QSNAP_EINTEGRITY, ".tmp-77.qcow2",
                         "execute with a link planted after open");
            cr_assert(strstr(qsnap_error_last()->message, "symbolic link"));
            cr_assert_eq(unlink(link), 0);
        } else {
            tf_ok(qsnap_plan_execute(s, p, NULL), "execute with nothing planted");
        }
        qsnap_plan_free(p);
        p = NULL;
    }
    f = fopen(victim, "r");
    cr_assert_not_null(f);
    cr_assert_eq(getline(&text, &len, f), 12);
    fclose(f);
    cr_assert_str_eq(text, "victim text\n", "the link's target was written");
    free(text);
    free(victim);
    free(link);
    qsnap_store_close(s);
}

/* Create snapshot name with description desc; the rc of the plan or its run. */
static int create_described(qsnap_store *s, const char *name, const char *desc)
{
    qsnap_create_opts co = QSNAP_CREATE_OPTS_INIT;

    co.name = name;
    co.description = desc;
    return tf_create_opts(s, &co);
}

/*
 * A description may have several lines and any byte but NUL, up to
 * QSNAP_MAX_DESC bytes: the store reads back what was written, in the log
 * and in the meta file alike. A longer one is refused before anything
 * changes (a store that took it could not be read again).
 */
Test(store, descriptions_with_lines_and_the_length_bound_read_back)
{
    qsnap_store *s = base("desc");
    char *big = malloc(QSNAP_MAX_DESC + 2);
    const char *lines = "first line\nsecond line\r\n\tthird %0A line\n";
    uint64_t gen;

    cr_assert_not_null(big);
    memset(big, '%', QSNAP_MAX_DESC + 1); /* each byte encoded: three times as long */
    big[QSNAP_MAX_DESC + 1] = '\0';
    tf_ok(create_described(s, "multi", lines), "create with a multi-line description");
    gen = s->m.gen;
    cr_assert_eq(create_described(s, "toolong", big), QSNAP_EUSAGE, "a description of %u bytes",
                 QSNAP_MAX_DESC + 1);
    cr_assert_not_null(strstr(qsnap_error_last()->message, "description is longer"), "%s",
                       qsnap_error_last()->message);
    cr_assert_eq(s->m.gen, gen, "a refused create changed the model");
    big[QSNAP_MAX_DESC] = '\0';
    tf_ok(create_described(s, "longest", big), "create with the longest description");
    for (int round = 0; round < 2; round++) {
        const struct qsnap__node *n;
        qsnap_store_close(s);
        s = tf_open(tf_disk, 0);
        n = qsnap__node_by_name(&s->m, "multi");
        cr_assert(n && n->desc && !strcmp(n->desc, lines), "round %d: multi-line description", round);
        n = qsnap__node_by_name(&s->m, "longest");
        cr_assert(n && n->desc && !strcmp(n->desc, big), "round %d: longest description", round);
        cr_assert_null(qsnap__node_by_name(&s->m, "toolong"));
        /* Round two reads the whole model from the meta file: fold the log into it. */
        tf_ok(qsnap__meta_save(s, &s->m), "fold the log into meta");
    }
    {
        qsnap_finding *f = NULL;
        size_t nf = 0;
        cr_assert_eq(qsnap_verify(s, false, &f, &nf), 0, "verify");
        for (size_t i = 0; i < nf; i++)
            cr_assert(!f[i].problem, "verify: %s: %s", f[i].file, f[i].message);
        qsnap_verify_free(f, nf);
    }
    free(big);
    qsnap_store_close(s);
}

/* ---- info: one entry and its children ----------------------------------------- */

static bool str_same(const char *a, const char *b)
{
    return a == b || (a && b && !strcmp(a, b));
}

/* Every field of two listed entries, or (meta_only) those that the metadata alone gives. */
static void expect_same_entry(const qsnap_node *a, const qsnap_node *b, bool meta_only,
                              const char *what)
{
    cr_assert_eq(a->kind, b->kind, "%s: kind", what);
    cr_assert_eq(a->id, b->id, "%s: id", what);
    cr_assert_str_eq(a->name, b->name, "%s: name", what);
    cr_assert_eq(a->parent, b->parent, "%s: parent", what);
    cr_assert(str_same(a->parent_name, b->parent_name), "%s: parent name", what);
    cr_assert_str_eq(a->file, b->file, "%s: file", what);
    cr_assert_str_eq(a->description, b->description, "%s: description", what);
    cr_assert_eq(a->created, b->created, "%s: created", what);
    cr_assert_eq(a->current, b->current, "%s: current", what);
    cr_assert_eq(a->internal, b->internal, "%s: internal", what);
    cr_assert(str_same(a->state_file, b->state_file), "%s: state file", what);
    if (meta_only) {
        cr_assert(!b->virtual_size && !b->file_bytes && !b->nb_children && !b->dirty,
                  "%s: a child's file facts are not read", what);
    } else {
        cr_assert_eq(a->virtual_size, b->virtual_size, "%s: virtual size", what);
        cr_assert_eq(a->file_bytes, b->file_bytes, "%s: file bytes", what);
        cr_assert_eq(a->nb_children, b->nb_children, "%s: children", what);
        cr_assert_eq(a->dirty, b->dirty, "%s: dirty", what);
    }
}

Test(store, info_is_the_listed_entry_and_its_children)
{
    qsnap_store *s = base("info");
    qsnap_create_opts co = QSNAP_CREATE_OPTS_INIT;
    qsnap_node *l = NULL, *e = NULL;
    size_t n = 0, ne = 0, unnamed = 0, with_kids = 0;
    char name[64];

    /* s1 -> s2 -> {s3 -> main, b, c}; s2 then loses its name; an internal snapshot on main. */
    tf_ok(tf_create(s, "s3"), "create s3");
    tf_ok(tf_branch(s, "c", "s2"), "branch c");
    tf_ok(tf_delete(s, "s2", QSNAP_DELETE_METADATA, NULL), "delete s2 --metadata");
    co.name = "in1";
    co.internal = true;
    tf_ok(tf_create_opts(s, &co), "create in1 --internal");
    cr_assert_eq(qsnap_list(s, &l, &n), 0);
    for (size_t i = 0; i < n; i++) {
        size_t k = 1;
        tf_ok(qsnap_info(s, l[i].name, &e, &ne), l[i].name);
        cr_assert_geq(ne, 1);
        expect_same_entry(&l[i], &e[0], false, l[i].name);
        /* The children: the listed entries under it, in the listing's order. */
        for (size_t j = 0; l[i].kind != QSNAP_BRANCH && j < n; j++) {
            if (l[j].parent != l[i].id)
                continue;
            cr_assert_lt(k, ne, "%s: child %s missing", l[i].name, l[j].name);
            expect_same_entry(&l[j], &e[k++], true, l[j].name);
        }
        cr_assert_eq(k, ne, "%s: %zu children, listed %zu", l[i].name, ne - 1, k - 1);
        cr_assert_eq(ne - 1, l[i].kind == QSNAP_BRANCH ? 0 : l[i].nb_children);
        unnamed += l[i].kind == QSNAP_UNNAMED;
        with_kids += ne > 2;
        qsnap_list_free(e, ne);
    }
    cr_assert_eq(unnamed, 1, "the tree has its unnamed node");
    cr_assert_geq(with_kids, 1, "a node with several children");
    /* Names that are not there, in the listing's spelling or near it. */
    for (size_t i = 0; i < n; i++) {
        if (l[i].kind == QSNAP_UNNAMED) {
            snprintf(name, sizeof(name), "(unnamed 0%u)", l[i].id);
            expect_error(qsnap_info(s, name, &e, &ne), QSNAP_ENOTFOUND, name, "info");
            snprintf(name, sizeof(name), "(unnamed %u) ", l[i].id);
            expect_error(qsnap_info(s, name, &e, &ne), QSNAP_ENOTFOUND, name, "info");
        } else if (l[i].kind == QSNAP_SNAPSHOT) {
            snprintf(name, sizeof(name), "(unnamed %u)", l[i].id);
            expect_error(qsnap_info(s, name, &e, &ne), QSNAP_ENOTFOUND, name, "info");
        }
    }
    static const char *const absent[] = {"nosuch",       "(unnamed 0)", "(unnamed 4294967297)",
                                         "(unnamed -1)", "(unnamed ",   "",
                                         NULL};
    for (const char *const *bad = absent; *bad; bad++) {
        e = (qsnap_node *)1;
        expect_error(qsnap_info(s, *bad, &e, &ne), QSNAP_ENOTFOUND, NULL, *bad);
        cr_assert_null(e);
        cr_assert_eq(ne, 0);
    }
    qsnap_list_free(l, n);
    qsnap_store_close(s);
}
