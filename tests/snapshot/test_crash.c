/*
 * Crash safety of the snapshot tree. For each operation (create, the first
 * create, revert keeping and discarding, delete merging into a head and into
 * a frozen layer, keeping unnamed, streaming, removing a subtree, commit into
 * a raw disk, a qcow2 disk and a frozen layer, the last snapshot on an unnamed
 * node, which goes with it) and for every N from 0 to the
 * number of steps of its plan: a child process opens the store, builds the
 * plan and executes it with a step_hook that SIGKILLs it after step N (N = 0:
 * killed before the execution starts, so before the journal is written;
 * N = steps: after the last step, before the journal is removed). Data-copying
 * steps are also killed in the middle, from the progress callback. Then the
 * parent opens the store and runs qsnap_verify(repair) which must return 0;
 * afterwards every snapshot and branch has its content from before the
 * operation (N = 0) or after it (N >= 1: the journal rolls it forward), never
 * a mix, the disk file holds what it must, qemu-img check is clean on every
 * qcow2 in the store, a second verify finds nothing and the store takes a
 * new operation.
 *
 * Fault injection: a step that fails (a directory planted where the commit
 * makes its preserving layer) leaves the journal; operations are refused
 * until verify(repair) finishes it, which fails while the cause is there and
 * succeeds once it is removed.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "qcow2/qcow2.h"
#include "qemu_oracle.h"
#include "qsnap/qsnap.h"
#include "tree_fixture.h"

#define KiB 1024u
#define MiB (1024u * 1024u)

static void setup(void)
{
    tf_suite_init(0x11);
    memset(tf_d0 + 2 * MiB, 0x12, 128 * KiB);
}

TestSuite(crash, .init = setup, .fini = tf_suite_fini, .timeout = 240);

static void snap(qsnap_store *s, tf_model *m, const char *name, const char *branch)
{
    tf_ok(tf_create(s, name), name);
    tf_model_set(m, name, false, tf_model_get(m, branch));
}

/* s1 -> s2 -> main (dirty). */
static void build_base(qsnap_store *s, tf_model *m)
{
    tf_ok(tf_create(s, "s1"), "create s1");
    tf_model_set(m, "s1", false, tf_d0);
    tf_model_set(m, "main", true, tf_d0);
    tf_write_state(s, m, "main", 0x21, 1 * MiB, 192 * KiB);
    snap(s, m, "s2", "main");
    tf_write_state(s, m, "main", 0x31, 0, 64 * KiB);
    tf_write_state(s, m, "main", 0x32, 3 * MiB + 4 * KiB, 100 * KiB);
}

static void build_none(qsnap_store *s, tf_model *m)
{
    (void)s;
    (void)m;
}

/* s1 -> s2 -> s3 -> main: s2's layer has one frozen dependent. */
static void build_chain(qsnap_store *s, tf_model *m)
{
    build_base(s, m);
    snap(s, m, "s3", "main");
    tf_write_state(s, m, "main", 0x41, 2 * MiB, 64 * KiB);
}

/* s1 -> s2 -> {main, b}: s2's layer has two dependents. */
static void build_two(qsnap_store *s, tf_model *m)
{
    build_base(s, m);
    tf_ok(tf_branch(s, "b", "s2"), "branch b");
    tf_model_set(m, "b", true, tf_model_get(m, "s2"));
    tf_write_state(s, m, "b", 0x51, 1 * MiB + 64 * KiB, 64 * KiB);
}

/* base, then revert to s1 on branch other (main kept dirty): s2's subtree holds main. */
static void build_other(qsnap_store *s, tf_model *m)
{
    build_base(s, m);
    tf_ok(tf_revert(s, "s1", "other", false, NULL), "revert s1");
    tf_model_set(m, "other", true, tf_model_get(m, "s1"));
    tf_write_state(s, m, "other", 0x61, 512 * KiB, 64 * KiB);
}

/* two, plus branch c on s1 (on the disk) with writes. */
static void build_c(qsnap_store *s, tf_model *m)
{
    build_two(s, m);
    tf_ok(tf_branch(s, "c", "s1"), "branch c");
    tf_model_set(m, "c", true, tf_model_get(m, "s1"));
    tf_write_state(s, m, "c", 0x71, 1 * MiB + 128 * KiB, 256 * KiB);
    tf_write_state(s, m, "c", 0x72, TF_SIZE - 4 * KiB, 4 * KiB);
}

static int plan_create_first(qsnap_store *s, qsnap_plan **p)
{
    qsnap_create_opts o = QSNAP_CREATE_OPTS_INIT;

    o.name = "s1";
    return qsnap_plan_create(p, s, &o);
}
static void after_create_first(tf_model *m)
{
    tf_model_set(m, "s1", false, tf_d0);
    tf_model_set(m, "main", true, tf_d0);
}

static int plan_create(qsnap_store *s, qsnap_plan **p)
{
    qsnap_create_opts o = QSNAP_CREATE_OPTS_INIT;

    o.name = "s3";
    return qsnap_plan_create(p, s, &o);
}
static void after_create(tf_model *m)
{
    tf_model_set(m, "s3", false, tf_model_get(m, "main"));
}

static int plan_revert_keep(qsnap_store *s, qsnap_plan **p)
{
    return qsnap_plan_revert(p, s, "s1", "r", false);
}
static void after_revert_keep(tf_model *m)
{
    tf_model_set(m, "r", true, tf_model_get(m, "s1"));
}

static int plan_revert_discard(qsnap_store *s, qsnap_plan **p)
{
    return qsnap_plan_revert(p, s, "s1", NULL, true);
}
static void after_revert_discard(tf_model *m)
{
    tf_model_set(m, "main", true, tf_model_get(m, "s1"));
}

static int plan_delete_s2(qsnap_store *s, qsnap_plan **p)
{
    return qsnap_plan_delete(p, s, "s2", 0);
}
static int plan_delete_s2_stream(qsnap_store *s, qsnap_plan **p)
{
    return qsnap_plan_delete(p, s, "s2", QSNAP_DELETE_STREAM);
}
static void after_delete_s2(tf_model *m)
{
    tf_model_del(m, "s2");
}

static int plan_delete_children(qsnap_store *s, qsnap_plan **p)
{
    return qsnap_plan_delete(p, s, "s2", QSNAP_DELETE_CHILDREN | QSNAP_DELETE_FORCE);
}
static void after_delete_children(tf_model *m)
{
    tf_model_del(m, "s2");
    tf_model_del(m, "main");
}

/* s1 -> s2 -> s3 -> main, then revert to s1 on branch other (main clean: dropped) and delete
 * s2 (s3 is built on it: kept unnamed). */
static void build_unnamed(qsnap_store *s, tf_model *m)
{
    build_base(s, m);
    snap(s, m, "s3", "main");
    tf_ok(tf_revert(s, "s1", "other", false, NULL), "revert s1");
    tf_model_del(m, "main");
    tf_model_set(m, "other", true, tf_model_get(m, "s1"));
    tf_ok(tf_delete(s, "s2", 0, NULL), "delete s2");
    tf_model_del(m, "s2");
}

/* The last snapshot on the unnamed node: the node and its layer go with it. */
static int plan_delete_s3(qsnap_store *s, qsnap_plan **p)
{
    return qsnap_plan_delete(p, s, "s3", 0);
}
static void after_delete_s3(tf_model *m)
{
    tf_model_del(m, "s3");
}

static int plan_commit_c(qsnap_store *s, qsnap_plan **p)
{
    return qsnap_plan_commit(p, s, "c");
}
static int plan_commit_main(qsnap_store *s, qsnap_plan **p)
{
    return qsnap_plan_commit(p, s, "main");
}
static void after_same(tf_model *m)
{
    (void)m;
}

struct op {
    const char *name;
    bool qcow2;
    void (*build)(qsnap_store *, tf_model *);
    int (*plan)(qsnap_store *, qsnap_plan **);
    void (*after)(tf_model *);
    const char *disk_branch; /* after the op, the disk holds this branch's content (commit) */
};

static const struct op OPS[] = {
    {"create-first", false, build_none, plan_create_first, after_create_first, NULL},
    {"create-first-qcow2", true, build_none, plan_create_first, after_create_first, NULL},
    {"create", false, build_base, plan_create, after_create, NULL},
    {"revert-keep", false, build_base, plan_revert_keep, after_revert_keep, NULL},
    {"revert-discard", false, build_base, plan_revert_discard, after_revert_discard, NULL},
    {"delete-merge-head", false, build_base, plan_delete_s2, after_delete_s2, NULL},
    {"delete-merge-frozen", false, build_chain, plan_delete_s2, after_delete_s2, NULL},
    {"delete-keep", false, build_two, plan_delete_s2, after_delete_s2, NULL},
    {"delete-stream", false, build_two, plan_delete_s2_stream, after_delete_s2, NULL},
    {"delete-children", false, build_other, plan_delete_children, after_delete_children, NULL},
    {"commit-raw-disk", false, build_c, plan_commit_c, after_same, "c"},
    {"commit-qcow2-disk", true, build_c, plan_commit_c, after_same, "c"},
    {"commit-frozen-layer", false, build_c, plan_commit_main, after_same, NULL},
    {"delete-unnamed-leaf", false, build_unnamed, plan_delete_s3, after_delete_s3, NULL},
};

/* A fresh directory with the op's fixture; before gets the model. */
static void fixture(const struct op *op, tf_model *before)
{
    qsnap_store *s;

    if (tf_dir[0])
        qo_rmtree(tf_dir);
    tf_setup(tf_dir, sizeof(tf_dir), tf_disk, sizeof(tf_disk), "crash", op->qcow2, tf_d0);
    s = tf_open(tf_disk, QSNAP_OPEN_CREATE);
    op->build(s, before);
    qsnap_store_close(s);
}

struct kill_at {
    unsigned step;   /* kill after this step (0: never from the hook) */
    bool in_copy;    /* kill from the progress callback, in the middle of a copy */
    double frac;     /* in_copy: once done reaches this part of total (0: at once) */
};

static void hook(unsigned step, void *payload)
{
    const struct kill_at *k = payload;

    if (k->step && step == k->step)
        kill(getpid(), SIGKILL);
}

static void progress(uint64_t done, uint64_t total, void *payload)
{
    const struct kill_at *k = payload;

    if (k->in_copy && done > 0 && done < total && (double)done >= k->frac * (double)total)
        kill(getpid(), SIGKILL);
}

/*
 * In a child: open, plan, execute with the kill point. Returns how the child
 * ended: 'K' killed, 'E' exited 0 (the kill point was never reached),
 * 'F' failed before executing.
 */
static char run_child(const struct op *op, struct kill_at k, bool before_exec)
{
    pid_t pid = fork();
    int status;

    cr_assert_geq(pid, 0);
    if (pid == 0) {
        qsnap_store *s = NULL;
        qsnap_plan *p = NULL;
        qsnap_exec_opts eo = QSNAP_EXEC_OPTS_INIT;
        if (qsnap_store_open(&s, tf_disk, QSNAP_OPEN_CREATE) || op->plan(s, &p))
            _exit(3);
        if (before_exec)
            kill(getpid(), SIGKILL);
        eo.step_hook = hook;
        eo.progress = progress;
        eo.payload = &k;
        _exit(qsnap_plan_execute(s, p, &eo) ? 4 : 0);
    }
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        return 'K';
    cr_assert(WIFEXITED(status));
    if (WEXITSTATUS(status) == 0)
        return 'E';
    cr_assert_fail("%s: the child failed (exit %d)", op->name, WEXITSTATUS(status));
    return 'F';
}

/* Record a failure (the sweep goes on to the next crash point) and leave. */
#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            cr_expect_fail(__VA_ARGS__);                                                           \
            goto out;                                                                              \
        }                                                                                          \
    } while (0)

/* After the crash: repair, then the state is exactly `want` (and never a mix). */
static void check_after_crash(const struct op *op, const char *point, const tf_model *want,
                              const tf_model *other, const uint8_t *disk_want)
{
    qsnap_store *s = tf_open(tf_disk, QSNAP_OPEN_CREATE);
    qsnap_finding *f = NULL;
    size_t nf = 0;
    char why[1024], why2[1024], msg[4096] = "", out[4096], exp[600];
    int rc = qsnap_verify(s, true, &f, &nf);

    for (size_t i = 0; i < nf; i++) {
        if (f[i].problem && !f[i].repaired && strlen(msg) + strlen(f[i].message) + 3 < sizeof(msg)) {
            strcat(msg, f[i].message);
            strcat(msg, "; ");
        }
    }
    qsnap_verify_free(f, nf);
    EXPECT(rc == 0 || (rc == QSNAP_ENOTFOUND && want->n == 0),
           "%s, %s: verify(repair) rc %d: %s %s", op->name, point, rc,
           qsnap_error_last()->message, msg);
    if (!tf_store_matches(s, want, tf_dir, why, sizeof(why))) {
        bool is_other = tf_store_matches(s, other, tf_dir, why2, sizeof(why2));
        EXPECT(false, "%s, %s: the store is not in the expected state (%s); it %s", op->name,
               point, why,
               is_other ? "is in the other complete state"
                        : "matches neither the state before nor after (a mix or a loss)");
    }
    if (want->n) {
        f = NULL;
        nf = 0;
        rc = qsnap_verify(s, false, &f, &nf);
        msg[0] = '\0';
        for (size_t i = 0; i < nf; i++) {
            if (f[i].problem && strlen(msg) + strlen(f[i].message) + 3 < sizeof(msg)) {
                strcat(msg, f[i].message);
                strcat(msg, "; ");
            }
        }
        qsnap_verify_free(f, nf);
        EXPECT(rc == 0, "%s, %s: a second verify found problems: %s", op->name, point, msg);
    }
    tf_qemu_check_all(qsnap_store_path(s), tf_disk, point);
    snprintf(exp, sizeof(exp), "%s/.want.raw", tf_dir);
    cr_assert_eq(qo_write_file(exp, disk_want, TF_SIZE), 0);
    rc = qo_sh(out, sizeof(out), "qemu-img compare -U -f %s -F raw '%s' '%s'",
               op->qcow2 ? "qcow2" : "raw", tf_disk, exp);
    unlink(exp);
    EXPECT(rc == 0, "%s, %s: the disk file does not hold what it must: %s", op->name, point, out);
    /* The store takes a new operation. */
    if (want->n) {
        char cur[128];
        free(tf_current_path(s, cur, sizeof(cur)));
        rc = tf_create(s, "after-crash");
        EXPECT(rc == 0, "%s, %s: create after repair: %s", op->name, point,
               qsnap_error_last()->message);
    }
out:
    qsnap_store_close(s);
}

static void crash_sweep(const struct op *op, unsigned *points)
{
    tf_model before = {0}, after = {0};
    const uint8_t *disk_after;
    qsnap_store *s;
    qsnap_plan *p = NULL;
    size_t n;
    bool copies = false;

    fixture(op, &before);
    tf_model_copy(&after, &before);
    op->after(&after);
    disk_after = op->disk_branch ? tf_model_get(&after, op->disk_branch) : tf_d0;
    s = tf_open(tf_disk, QSNAP_OPEN_CREATE);
    tf_ok(op->plan(s, &p), op->name);
    n = tf_plan_steps(p);
    {
        char *text = NULL;
        cr_assert_eq(qsnap_plan_describe(p, false, &text), 0);
        copies = strstr(text, "stream") || strstr(text, "commit ") || strstr(text, "preserve") ||
                 strstr(text, "holding");
        free(text);
    }
    qsnap_plan_free(p);
    qsnap_store_close(s);
    cr_assert_gt(n, 0, "%s: empty plan", op->name);

    for (unsigned k = 0; k <= n + 1; k++) {
        struct kill_at ka = {k, false, 0};
        tf_model scratch = {0};
        char point[128], how;

        if (k > 0)
            fixture(op, &scratch);
        else
            fixture(op, &scratch);
        tf_model_free(&scratch);
        how = run_child(op, ka, k == 0);
        snprintf(point, sizeof(point), k == 0 ? "killed before execution"
                                      : k <= n ? "killed after step %u of %zu"
                                               : "no kill (%u)",
                 k, n);
        if (k == 0 || k <= n)
            cr_assert_eq(how, 'K', "%s, %s: the step hook was not called for step %u (plan of %zu "
                                   "steps)",
                         op->name, point, k, n);
        else
            cr_assert_eq(how, 'E', "%s: execution did not succeed", op->name);
        if (k == 0)
            check_after_crash(op, point, &before, &after, tf_d0);
        else
            check_after_crash(op, point, &after, &before, disk_after);
        (*points)++;
    }
    if (copies) {
        struct kill_at ka = {0, true, 0};
        tf_model scratch = {0};
        char how;

        fixture(op, &scratch);
        tf_model_free(&scratch);
        how = run_child(op, ka, false);
        if (how == 'K') {
            check_after_crash(op, "killed in the middle of a copy", &after, &before, disk_after);
            (*points)++;
        }
    }
    tf_model_free(&before);
    tf_model_free(&after);
}

#define CRASH_TEST(ident, idx)                                                                     \
    Test(crash, ident)                                                                             \
    {                                                                                              \
        unsigned points = 0;                                                                       \
        if (!qo_have_qemu())                                                                       \
            cr_skip_test("qemu-img/qemu-io not installed");                                        \
        crash_sweep(&OPS[idx], &points);                                                           \
        cr_log_info("%s: %u crash points", OPS[idx].name, points);                                 \
    }

CRASH_TEST(create_first, 0)
CRASH_TEST(create_first_qcow2, 1)
CRASH_TEST(create, 2)
CRASH_TEST(revert_keep, 3)
CRASH_TEST(revert_discard, 4)
CRASH_TEST(delete_merge_head, 5)
CRASH_TEST(delete_merge_frozen, 6)
CRASH_TEST(delete_keep_unnamed, 7)
CRASH_TEST(delete_stream, 8)
CRASH_TEST(delete_children, 9)
CRASH_TEST(commit_raw_disk, 10)
CRASH_TEST(commit_qcow2_disk, 11)
CRASH_TEST(commit_frozen_layer, 12)
CRASH_TEST(delete_unnamed_leaf, 13)

/*
 * A step that fails before the first commit point is taken back: nothing
 * changes, no journal is left, and the same operation works once the cause
 * is gone. (Failures after a commit point are finished forward: the crash
 * tests above cover those.)
 */
Test(crash, failed_step_before_a_commit_point_changes_nothing)
{
    const struct op *op = &OPS[10]; /* commit c into the raw disk */
    tf_model before = {0};
    qsnap_store *s;
    qsnap_plan *p = NULL;
    qsnap_finding *f = NULL;
    size_t nf = 0;
    char *text = NULL, tmp[1024], layer[1024], *b;
    unsigned id = 0;
    int rc;

    if (!qo_have_qemu())
        cr_skip_test("qemu-img/qemu-io not installed");
    fixture(op, &before);
    s = tf_open(tf_disk, 0);
    tf_ok(op->plan(s, &p), "plan commit");
    cr_assert_eq(qsnap_plan_describe(p, false, &text), 0);
    /* The preserving layer is the first file the plan creates: "create layers/N.qcow2 on
     * ... where layers/H.qcow2 has changes"; it reads the head H. */
    b = strstr(text, "create layers/");
    cr_assert_not_null(b, "%s", text);
    cr_assert_eq(sscanf(b, "create layers/%u.qcow2", &id), 1, "%s", text);
    snprintf(layer, sizeof(layer), "%s/layers/%u.qcow2", qsnap_store_path(s), id);
    b = strstr(b, "where layers/");
    cr_assert_not_null(b, "%s", text);
    {
        unsigned hid = 0;
        cr_assert_eq(sscanf(b, "where layers/%u.qcow2", &hid), 1, "%s", text);
        snprintf(tmp, sizeof(tmp), "%s/layers/%u.qcow2", qsnap_store_path(s), hid);
    }
    free(text);
    /* The step fails when it reads the head: its magic is spoiled (and put back below).
     * (A foreign file in layers/ would be refused before any step: see safe.c.) */
    {
        int fd = open(tmp, O_WRONLY);
        cr_assert_geq(fd, 0);
        cr_assert_eq(pwrite(fd, "XXXX", 4, 0), 4);
        close(fd);
    }

    rc = tf_exec(s, p, NULL);
    cr_assert_neq(rc, 0, "the commit succeeded although its preserving layer cannot be made");
    cr_assert(strstr(qsnap_error_last()->message, "nothing was changed"), "%s",
              qsnap_error_last()->message);
    cr_assert(qsnap_error_last()->hint[0], "a failed execution gives a hint");
    cr_assert_neq(access(layer, F_OK), 0, "the half-made layer %s stayed", layer);
    /* Remove the cause: the head's magic back. */
    {
        int fd = open(tmp, O_WRONLY);
        cr_assert_geq(fd, 0);
        cr_assert_eq(pwrite(fd, "QFI\xfb", 4, 0), 4);
        close(fd);
    }
    /* Nothing pending: verify is clean and the store holds the states from before. */
    cr_assert_eq(qsnap_verify(s, false, &f, &nf), 0, "%s", qsnap_error_last()->message);
    qsnap_verify_free(f, nf);
    tf_check_store(s, &before, tf_dir, "a failed commit taken back");
    qsnap_store_close(s);
    /* The same commit now works and reaches the disk. */
    s = tf_open(tf_disk, 0);
    tf_ok(op->plan(s, &p), "plan commit again");
    cr_assert_eq(tf_exec(s, p, NULL), 0, "%s", qsnap_error_last()->message);
    qsnap_store_close(s);
    {
        char exp[600], out[4096];
        snprintf(exp, sizeof(exp), "%s/.want.raw", tf_dir);
        cr_assert_eq(qo_write_file(exp, tf_model_get(&before, "c"), TF_SIZE), 0);
        cr_assert_eq(
            qo_sh(out, sizeof(out), "qemu-img compare -U -f raw -F raw '%s' '%s'", tf_disk, exp), 0,
            "the commit did not reach the disk: %s", out);
    }
    tf_model_free(&before);
}

/*
 * A crash in the middle of the very first create leaves DISK.qsnap with a
 * journal but no metadata yet. Opening it the way verify does (without
 * QSNAP_OPEN_CREATE) must find the unfinished operation, not report "no
 * store", so that verify(repair) can finish it.
 */
Test(crash, first_create_interrupted_is_found_without_open_create)
{
    const struct op *op = &OPS[0];
    tf_model before = {0}, after = {0};
    struct kill_at ka = {3, false, 0};
    qsnap_store *s = NULL;
    qsnap_finding *f = NULL;
    size_t nf = 0;
    char why[1024];
    int rc;

    if (!qo_have_qemu())
        cr_skip_test("qemu-img/qemu-io not installed");
    fixture(op, &before);
    op->after(&after);
    cr_assert_eq(run_child(op, ka, false), 'K');
    /* A query finds it and says how to finish it... */
    rc = qsnap_store_open(&s, tf_disk, 0);
    cr_assert_eq(rc, QSNAP_EINTEGRITY, "opening a store whose first create was interrupted: rc %d",
                 rc);
    cr_assert(strstr(qsnap_error_last()->hint, "verify DISK --repair"), "%s",
              qsnap_error_last()->hint);
    /* ...and verify (which opens it as a store being made) finishes it. */
    rc = qsnap_store_open(&s, tf_disk, QSNAP_OPEN_CREATE);
    cr_assert_eq(rc, 0, "%s", qsnap_error_last()->message);
    rc = qsnap_verify(s, true, &f, &nf);
    qsnap_verify_free(f, nf);
    cr_assert_eq(rc, 0, "%s", qsnap_error_last()->message);
    cr_assert(tf_store_matches(s, &after, tf_dir, why, sizeof(why)), "%s", why);
    qsnap_store_close(s);
    tf_model_free(&before);
    tf_model_free(&after);
}

/*
 * A commit killed after its first commit point leaves the branch head as the
 * branch's writable head, and a guest may write to it before anyone runs
 * verify --repair. Ranges it allocates then were not preserved; finishing the
 * commit must keep them first, or the snapshots built on the committed layer
 * would read the guest's new data. For every kill point: write to the head
 * where it held nothing, repair, and every snapshot still reads what it did.
 */
Test(crash, commit_finished_after_a_guest_wrote_to_the_head)
{
    const struct op *op = &OPS[10]; /* commit-raw-disk: branch c into the disk */
    const uint64_t woff = 2 * MiB + 64 * KiB, wlen = 128 * KiB;
    tf_model before = {0};
    qsnap_store *s;
    qsnap_plan *p = NULL;
    size_t n;

    if (!qo_have_qemu())
        cr_skip_test("qemu-img/qemu-io not installed");
    fixture(op, &before);
    s = tf_open(tf_disk, QSNAP_OPEN_CREATE);
    tf_ok(op->plan(s, &p), op->name);
    n = tf_plan_steps(p);
    qsnap_plan_free(p);
    qsnap_store_close(s);
    tf_model_write(&before, "c", 0x99, woff, wlen);

    for (unsigned k = 1; k <= n; k++) {
        tf_model scratch = {0};
        char point[128], why[1024], *head;
        qsnap_finding *f = NULL;
        size_t nf = 0;

        fixture(op, &scratch);
        tf_model_free(&scratch);
        s = tf_open(tf_disk, QSNAP_OPEN_CREATE);
        head = tf_file_of(s, "c");
        qsnap_store_close(s);
        cr_assert_not_null(head);
        cr_assert_eq(run_child(op, (struct kill_at){k, false, 0}, false), 'K');
        /* The guest writes where the head held nothing (data and zeroes of the disk below). */
        tf_lib_write(head, 0x99, woff, wlen);
        free(head);
        snprintf(point, sizeof(point), "killed after step %u of %zu, then a guest write", k, n);
        s = tf_open(tf_disk, QSNAP_OPEN_CREATE);
        tf_ok(qsnap_verify(s, true, &f, &nf), point);
        qsnap_verify_free(f, nf);
        cr_expect(tf_store_matches(s, &before, tf_dir, why, sizeof(why)), "%s: %s", point, why);
        f = NULL;
        nf = 0;
        cr_expect_eq(qsnap_verify(s, false, &f, &nf), 0, "%s: a second verify found problems",
                     point);
        qsnap_verify_free(f, nf);
        tf_qemu_check_all(qsnap_store_path(s), tf_disk, point);
        qsnap_store_close(s);
    }
    tf_model_free(&before);
}

/*
 * Kills at seeded random moments: after a random step, or in a copy once a
 * random part of it is done, of the operations that copy data (commit into
 * a raw disk, a qcow2 disk and a frozen layer; delete with --stream; delete
 * merging into a frozen layer). Each is then repaired and checked as above.
 * The seeds are fixed so a failure can be replayed.
 */
Test(crash, seeded_random_kills_of_copying_operations)
{
    static const unsigned ops[] = {10, 11, 12, 8, 6};
    unsigned points = 0;
    uint64_t rng = 0x9e3779b97f4a7c15ull;

    if (!qo_have_qemu())
        cr_skip_test("qemu-img/qemu-io not installed");
    for (size_t o = 0; o < sizeof(ops) / sizeof(ops[0]); o++) {
        const struct op *op = &OPS[ops[o]];
        tf_model before = {0}, after = {0};
        qsnap_store *s;
        qsnap_plan *p = NULL;
        size_t n;

        fixture(op, &before);
        tf_model_copy(&after, &before);
        op->after(&after);
        s = tf_open(tf_disk, QSNAP_OPEN_CREATE);
        tf_ok(op->plan(s, &p), op->name);
        n = tf_plan_steps(p);
        qsnap_plan_free(p);
        qsnap_store_close(s);
        for (unsigned seed = 0; seed < 4; seed++) {
            struct kill_at ka = {0, false, 0};
            tf_model scratch = {0};
            char point[160], how;

            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            if (rng & 1) {
                ka.step = 1 + (unsigned)((rng >> 8) % n);
                snprintf(point, sizeof(point), "seed %u: killed after step %u of %zu", seed,
                         ka.step, n);
            } else {
                ka.in_copy = true;
                ka.frac = (double)((rng >> 8) % 1000) / 1000.0;
                snprintf(point, sizeof(point), "seed %u: killed at %.1f%% of a copy", seed,
                         ka.frac * 100.0);
            }
            fixture(op, &scratch);
            tf_model_free(&scratch);
            how = run_child(op, ka, false);
            cr_assert(how == 'K' || how == 'E', "%s, %s: child ended with %c", op->name, point,
                      how);
            check_after_crash(op, point, &after, &before,
                              op->disk_branch ? tf_model_get(&after, op->disk_branch) : tf_d0);
            points++;
        }
        tf_model_free(&before);
        tf_model_free(&after);
    }
    cr_log_info("seeded random kills: %u points", points);
}
