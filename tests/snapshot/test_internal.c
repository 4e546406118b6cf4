/*
 * Internal snapshots as nodes of the tree (qsnap create --internal): real
 * files in a mkdtemp directory, a model of every state's content (checked by
 * digest, internal nodes through qsnap_export), qemu-img check clean and
 * `qemu-img snapshot -l` on every head agreeing with the tree after every
 * step. On a qcow2 disk (the first create sets the store up) and on the
 * head of a branch over a raw disk: create, write, create another, list and
 * its internal/external split, diff (against the model's bytes), export
 * (against qemu-img convert -l), revert in place (the head's state kept as
 * another internal snapshot, or --discard), delete, verify; the refusals
 * (external create, commit, branch at, branch delete, revert --discard away,
 * revert from another branch, delete --children, a name the head already
 * holds). Crash safety of the new steps: a child is killed after every step
 * of each plan; verify(repair) returns 0 and the store holds the state
 * before (killed before executing) or after (the journal rolls it forward).
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

TestSuite(internal, .init = setup, .fini = tf_suite_fini, .timeout = 240);

static int create_internal(qsnap_store *s, const char *name)
{
    qsnap_create_opts co = QSNAP_CREATE_OPTS_INIT;

    co.name = name;
    co.internal = true;
    return tf_create_opts(s, &co);
}

/* `qemu-img snapshot -l` on every head lists exactly the tree's internal nodes in it. */
static void check_qemu_agrees(qsnap_store *s, const char *step)
{
    qsnap_node *l = NULL;
    size_t n = 0;

    tf_ok(qsnap_list(s, &l, &n), "list");
    for (size_t i = 0; i < n; i++) {
        char out[8192];
        size_t want = 0, got = 0;
        if (l[i].kind != QSNAP_BRANCH)
            continue;
        cr_assert_eq(qo_sh(out, sizeof(out), "qemu-img snapshot -U -l '%s'", l[i].file), 0,
                     "%s: qemu-img snapshot -l: %s", step, out);
        for (char *line = strchr(out, '\n'); line && line[1]; line = strchr(line + 1, '\n')) {
            if (strncmp(line + 1, "ID", 2) != 0)
                got++;
        }
        for (size_t k = 0; k < n; k++) {
            char tag[256];
            if (!l[k].internal || strcmp(l[k].file, l[i].file) != 0)
                continue;
            want++;
            snprintf(tag, sizeof(tag), " %s ", l[k].name);
            cr_assert(strstr(out, tag), "%s: qemu-img does not list %s in %s:\n%s", step,
                      l[k].name, l[i].file, out);
        }
        cr_assert_eq(got, want, "%s: %s holds %zu internal snapshots, the tree names %zu:\n%s",
                     step, l[i].file, got, want, out);
    }
    qsnap_list_free(l, n);
}

static void check(qsnap_store *s, const tf_model *m, const char *step)
{
    tf_check_store(s, m, tf_dir, step);
    check_qemu_agrees(s, step);
}

/* qsnap_diff(a, b) is exactly the 512-byte sectors where the model's buffers differ. */
static void check_diff(qsnap_store *s, tf_model *m, const char *a, const char *b)
{
    const uint8_t *x = tf_model_get(m, a), *y = tf_model_get(m, b);
    qsnap_range *r = NULL;
    size_t n = 0, k = 0;

    tf_ok(qsnap_diff(s, a, b, &r, &n), "diff");
    for (uint64_t off = 0; off < TF_SIZE;) {
        uint64_t start, end;
        if (!memcmp(x + off, y + off, 512)) {
            off += 512;
            continue;
        }
        start = off;
        while (off < TF_SIZE && memcmp(x + off, y + off, 512))
            off += 512;
        end = off;
        cr_assert_lt(k, n, "diff %s %s: range at %#llx missing", a, b, (unsigned long long)start);
        cr_assert_eq(r[k].start, start, "diff %s %s: range %zu starts at %#llx, want %#llx", a, b,
                     k, (unsigned long long)r[k].start, (unsigned long long)start);
        cr_assert_eq(r[k].length, end - start, "diff %s %s: range %zu length", a, b, k);
        k++;
    }
    cr_assert_eq(k, n, "diff %s %s: %zu ranges, want %zu", a, b, n, k);
    free(r);
}

/* Export an internal snapshot and compare it with qemu-img convert -l of its head. */
static void check_export(qsnap_store *s, const char *name)
{
    char a[600], b[600], out[4096], *f = tf_file_of(s, name);

    snprintf(a, sizeof(a), "%s/exp-%s.raw", tf_dir, name);
    snprintf(b, sizeof(b), "%s/qemu-%s.raw", tf_dir, name);
    tf_ok(qsnap_export(s, name, a, QCOW2_FORMAT_RAW, NULL, NULL), "export");
    cr_assert_eq(qo_sh(out, sizeof(out), "qemu-img convert -U -l '%s' -O raw '%s' '%s'", name, f, b),
                 0, "qemu-img convert -l: %s", out);
    cr_assert_eq(qo_sh(out, sizeof(out), "qemu-img compare -U -f raw -F raw '%s' '%s'", a, b), 0,
                 "export of %s differs from qemu-img convert -l: %s", name, out);
    unlink(a);
    unlink(b);
    free(f);
}

static bool listed_internal(qsnap_store *s, const char *name, bool *internal)
{
    qsnap_node *l = NULL;
    size_t n = 0;
    bool found = false;

    tf_ok(qsnap_list(s, &l, &n), "list");
    for (size_t i = 0; i < n; i++) {
        if (!strcmp(l[i].name, name)) {
            found = true;
            *internal = l[i].internal;
        }
    }
    qsnap_list_free(l, n);
    return found;
}

static void expect_refused(int rc, int code, const char *what, const char *needle)
{
    cr_assert_eq(rc, code, "%s: rc %d, want %d (%s)", what, rc, code, qsnap_error_last()->message);
    if (needle)
        cr_assert(strstr(qsnap_error_last()->message, needle), "%s: message '%s' lacks '%s'", what,
                  qsnap_error_last()->message, needle);
}

Test(internal, story_on_qcow2_disk)
{
    tf_model m = {0};
    qsnap_store *s;
    qsnap_plan *p = NULL;
    char *sum = NULL, *text = NULL;
    bool in = false;

    tf_setup(tf_dir, sizeof(tf_dir), tf_disk, sizeof(tf_disk), "internal", true, tf_d0);
    s = tf_open(tf_disk, QSNAP_OPEN_CREATE);
    tf_ok(create_internal(s, "i1"), "create --internal i1 on a fresh disk");
    tf_model_set(&m, "i1", false, tf_d0);
    tf_model_set(&m, "main", true, tf_d0);
    check(s, &m, "i1");
    cr_assert(listed_internal(s, "i1", &in) && in, "i1 is listed as internal");
    cr_assert(listed_internal(s, "main", &in) && !in);

    tf_write_state(s, &m, "main", 0x21, 1 * MiB, 192 * KiB);
    tf_ok(create_internal(s, "i2"), "create --internal i2");
    tf_model_set(&m, "i2", false, tf_model_get(&m, "main"));
    tf_write_state(s, &m, "main", 0x31, 0, 64 * KiB);
    tf_write_state(s, &m, "main", 0x32, 3 * MiB + 4 * KiB, 100 * KiB);
    check(s, &m, "i2");
    {
        /* The head is still the branch's head, writable, and the same file. */
        char *f1 = tf_file_of(s, "i1"), *f2 = tf_file_of(s, "i2"), *h = tf_file_of(s, "main");
        cr_assert_str_eq(f1, h);
        cr_assert_str_eq(f2, h);
        cr_assert_eq(access(h, W_OK), 0);
        free(f1);
        free(f2);
        free(h);
    }
    check_diff(s, &m, "i1", "i2");
    check_diff(s, &m, "i2", "main");
    check_diff(s, &m, "i1", "main");
    check_export(s, "i1");
    check_export(s, "i2");

    /* Revert in place: main's changes are kept as another internal snapshot. */
    tf_ok(qsnap_plan_revert(&p, s, "i1", NULL, false), "plan revert i1");
    tf_ok(qsnap_plan_describe(p, false, &text), "describe");
    cr_assert(strstr(text, "record internal snapshot main-before-revert-1"), "%s", text);
    cr_assert(strstr(text, "in place to its internal snapshot i1"), "%s", text);
    free(text);
    tf_ok(qsnap_plan_describe(p, true, &text), "describe json");
    cr_assert(strstr(text, "\"internal-create\"") && strstr(text, "\"internal-apply\""), "%s",
              text);
    free(text);
    tf_ok(tf_exec(s, p, &sum), "revert i1");
    cr_assert(strstr(sum, "kept as internal snapshot main-before-revert-1"), "%s", sum);
    free(sum);
    tf_model_set(&m, "main-before-revert-1", false, tf_model_get(&m, "main"));
    tf_model_set(&m, "main", true, tf_model_get(&m, "i1"));
    check(s, &m, "revert i1");

    /* A revert of a state already kept keeps nothing new. */
    tf_ok(tf_revert(s, "i2", NULL, false, &sum), "revert i2 (clean)");
    cr_assert(strstr(sum, "already kept"), "%s", sum);
    free(sum);
    tf_model_set(&m, "main", true, tf_model_get(&m, "i2"));
    check(s, &m, "revert i2");

    /* --discard drops the head's changes. */
    tf_write_state(s, &m, "main", 0x41, 2 * MiB, 64 * KiB);
    tf_ok(tf_revert(s, "i1", NULL, true, &sum), "revert i1 --discard");
    cr_assert(strstr(sum, "discarded"), "%s", sum);
    free(sum);
    tf_model_set(&m, "main", true, tf_model_get(&m, "i1"));
    check(s, &m, "revert --discard");
    expect_refused(qsnap_plan_revert(&p, s, "i1", "x", false), QSNAP_EUSAGE, "revert --branch",
                   "in place");

    /* Delete. */
    tf_ok(tf_delete(s, "i2", 0, &sum), "delete i2");
    free(sum);
    tf_model_del(&m, "i2");
    check(s, &m, "delete i2");

    /* A snapshot made outside qsnap is not the tree's: left alone, its name refused. */
    {
        char out[4096], *h = tf_file_of(s, "main");
        cr_assert_eq(qo_sh(out, sizeof(out), "qemu-img snapshot -c outside '%s'", h), 0, "%s",
                     out);
        free(h);
    }
    expect_refused(create_internal(s, "outside"), QSNAP_EUSAGE, "name in the head", "outside");
    tf_ok(tf_delete(s, "i1", 0, NULL), "delete i1");
    tf_model_del(&m, "i1");
    /* verify names it (tests/tree/foreign_internal.sh); gone, the store is clean. */
    {
        char out[4096], *h = tf_file_of(s, "main");
        cr_assert_eq(qo_sh(out, sizeof(out), "qemu-img snapshot -d outside '%s'", h), 0, "%s",
                     out);
        free(h);
    }
    tf_check_store(s, &m, tf_dir, "delete i1");
    qsnap_store_close(s);
    tf_model_free(&m);
}

Test(internal, on_a_branch_head_and_refusals)
{
    tf_model m = {0};
    qsnap_store *s;
    qsnap_plan *p = NULL;
    char *sum = NULL;
    bool in = true;

    s = tf_start_s1("internal", &m);
    tf_write_state(s, &m, "main", 0x21, 1 * MiB, 64 * KiB);
    tf_ok(tf_create(s, "s2"), "create s2");
    tf_model_set(&m, "s2", false, tf_model_get(&m, "main"));
    tf_write_state(s, &m, "main", 0x22, 0, 64 * KiB);
    tf_ok(create_internal(s, "i1"), "create --internal on a head");
    tf_model_set(&m, "i1", false, tf_model_get(&m, "main"));
    tf_write_state(s, &m, "main", 0x23, 512 * KiB, 64 * KiB);
    check(s, &m, "i1 on a head");
    cr_assert(listed_internal(s, "s2", &in) && !in);
    cr_assert(listed_internal(s, "i1", &in) && in);
    check_diff(s, &m, "s2", "i1");
    check_diff(s, &m, "i1", "main");
    check_export(s, "i1");

    /* What cannot be done safely is refused, and says why. */
    expect_refused(tf_create(s, "ext"), QSNAP_EREFUSED, "external create", "internal snapshot");
    expect_refused(tf_commit(s, "main"), QSNAP_EREFUSED, "commit", "a commit empties the head");
    expect_refused(qsnap_plan_branch_create(&p, s, "b", "i1"), QSNAP_EREFUSED, "branch at i1",
                   "overlay");
    expect_refused(qsnap_plan_delete(&p, s, "s2", QSNAP_DELETE_CHILDREN), QSNAP_EREFUSED,
                   "delete --children", "internal snapshot i1");
    expect_refused(qsnap_plan_delete(&p, s, "s2", QSNAP_DELETE_STREAM), QSNAP_EREFUSED,
                   "delete --stream", "streaming");
    expect_refused(qsnap_plan_delete(&p, s, "i1", QSNAP_DELETE_METADATA), QSNAP_EUSAGE,
                   "delete --metadata of an internal snapshot", "--metadata");
    expect_refused(qsnap_plan_revert(&p, s, "s1", NULL, true), QSNAP_EREFUSED,
                   "revert --discard away", "--discard");
    check(s, &m, "after refusals");

    /* Deleting s2 keeps its data (the head with i1 reads through it). */
    tf_ok(tf_delete(s, "s2", 0, &sum), "delete s2");
    cr_assert(strstr(sum, "unnamed"), "%s", sum);
    free(sum);
    tf_model_del(&m, "s2");
    check(s, &m, "delete s2");

    /* Reverting away keeps main (its head holds i1) even when clean relative to i1. */
    tf_ok(tf_revert(s, "s1", "other", false, NULL), "revert s1");
    tf_model_set(&m, "other", true, tf_d0);
    check(s, &m, "revert away");
    expect_refused(qsnap_plan_revert(&p, s, "i1", NULL, false), QSNAP_EREFUSED,
                   "revert from another branch", "own branch");
    expect_refused(qsnap_plan_branch_delete(&p, s, "main", true), QSNAP_EREFUSED,
                   "branch delete", "internal snapshot");
    tf_ok(tf_switch(s, "main"), "switch main");
    tf_ok(tf_revert(s, "i1", NULL, false, NULL), "revert i1");
    tf_model_set(&m, "main-before-revert-1", false, tf_model_get(&m, "main"));
    tf_model_set(&m, "main", true, tf_model_get(&m, "i1"));
    check(s, &m, "revert i1 on main");
    tf_ok(tf_delete(s, "i1", 0, NULL), "delete i1");
    tf_ok(tf_delete(s, "main-before-revert-1", 0, NULL), "delete the kept one");
    tf_model_del(&m, "i1");
    tf_model_del(&m, "main-before-revert-1");
    check(s, &m, "deleted");
    /* With no internal snapshot left in the head, an external one is fine again. */
    tf_ok(tf_create(s, "s3"), "create s3");
    tf_model_set(&m, "s3", false, tf_model_get(&m, "main"));
    check(s, &m, "s3");
    qsnap_store_close(s);
    tf_model_free(&m);
}

Test(internal, metadata_without_the_field_parses)
{
    /* A store written before internal nodes existed still opens. */
    tf_model m = {0};
    qsnap_store *s;

    tf_setup(tf_dir, sizeof(tf_dir), tf_disk, sizeof(tf_disk), "internal", false, tf_d0);
    s = tf_open(tf_disk, QSNAP_OPEN_CREATE);
    tf_ok(tf_create(s, "s1"), "create");
    qsnap_store_close(s);
    {
        char path[700], *text;
        size_t len;
        snprintf(path, sizeof(path), "%s.qsnap/meta", tf_disk);
        text = (char *)qo_read_file(path, &len);
        cr_assert_not_null(text, "%s", path);
        cr_assert(!memmem(text, len, "internal=", 9));
        free(text);
    }
    s = tf_open(tf_disk, 0);
    tf_model_set(&m, "s1", false, tf_d0);
    tf_model_set(&m, "main", true, tf_d0);
    tf_ok(create_internal(s, "i1"), "create --internal");
    tf_model_set(&m, "i1", false, tf_d0);
    qsnap_store_close(s);
    s = tf_open(tf_disk, 0); /* and the field is read back */
    check(s, &m, "reopened");
    qsnap_store_close(s);
    tf_model_free(&m);
}

/* ---- crash safety of the new steps ------------------------------------------------ */

struct iop {
    const char *name;
    bool fresh;                                        /* the op runs on a disk without a store */
    void (*build)(qsnap_store *, tf_model *);          /* before the op */
    int (*plan)(qsnap_store *, qsnap_plan **);
    void (*after)(tf_model *);
};

static void build_head(qsnap_store *s, tf_model *m)
{
    tf_ok(tf_create(s, "s1"), "s1");
    tf_model_set(m, "s1", false, tf_d0);
    tf_model_set(m, "main", true, tf_d0);
    tf_write_state(s, m, "main", 0x21, 1 * MiB, 64 * KiB);
    tf_ok(create_internal(s, "i1"), "i1");
    tf_model_set(m, "i1", false, tf_model_get(m, "main"));
    tf_write_state(s, m, "main", 0x22, 0, 128 * KiB);
}

static int plan_create_fresh(qsnap_store *s, qsnap_plan **p)
{
    qsnap_create_opts co = QSNAP_CREATE_OPTS_INIT;

    co.name = "i0";
    co.internal = true;
    return qsnap_plan_create(p, s, &co);
}
static void after_create_fresh(tf_model *m)
{
    tf_model_set(m, "i0", false, tf_d0);
    tf_model_set(m, "main", true, tf_d0);
}
static int plan_create_head(qsnap_store *s, qsnap_plan **p)
{
    qsnap_create_opts co = QSNAP_CREATE_OPTS_INIT;

    co.name = "i2";
    co.internal = true;
    return qsnap_plan_create(p, s, &co);
}
static void after_create_head(tf_model *m)
{
    tf_model_set(m, "i2", false, tf_model_get(m, "main"));
}
static int plan_revert_keep(qsnap_store *s, qsnap_plan **p)
{
    return qsnap_plan_revert(p, s, "i1", NULL, false);
}
static void after_revert_keep(tf_model *m)
{
    tf_model_set(m, "main-before-revert-1", false, tf_model_get(m, "main"));
    tf_model_set(m, "main", true, tf_model_get(m, "i1"));
}
static int plan_revert_discard(qsnap_store *s, qsnap_plan **p)
{
    return qsnap_plan_revert(p, s, "i1", NULL, true);
}
static void after_revert_discard(tf_model *m)
{
    tf_model_set(m, "main", true, tf_model_get(m, "i1"));
}
static int plan_delete(qsnap_store *s, qsnap_plan **p)
{
    return qsnap_plan_delete(p, s, "i1", 0);
}
static void after_delete(tf_model *m)
{
    tf_model_del(m, "i1");
}
static void build_none(qsnap_store *s, tf_model *m)
{
    (void)s;
    (void)m;
}

static const struct iop IOPS[] = {
    {"create-fresh", true, build_none, plan_create_fresh, after_create_fresh},
    {"create-head", false, build_head, plan_create_head, after_create_head},
    {"revert-keep", false, build_head, plan_revert_keep, after_revert_keep},
    {"revert-discard", false, build_head, plan_revert_discard, after_revert_discard},
    {"delete", false, build_head, plan_delete, after_delete},
};

static void hook(unsigned step, void *payload)
{
    if (step == *(const unsigned *)payload)
        kill(getpid(), SIGKILL);
}

static void sweep(const struct iop *op)
{
    size_t steps;

    {
        tf_model m = {0};
        qsnap_store *s;
        qsnap_plan *p = NULL;
        tf_setup(tf_dir, sizeof(tf_dir), tf_disk, sizeof(tf_disk), "internal-crash", true, tf_d0);
        s = tf_open(tf_disk, QSNAP_OPEN_CREATE);
        op->build(s, &m);
        tf_ok(op->plan(s, &p), op->name);
        steps = tf_plan_steps(p);
        qsnap_plan_free(p);
        qsnap_store_close(s);
        tf_model_free(&m);
    }
    for (unsigned k = 0; k <= steps; k++) {
        tf_model before = {0}, after = {0};
        qsnap_store *s;
        qsnap_finding *f = NULL;
        size_t nf = 0;
        char why[1024], step[128];
        pid_t pid;
        int status, rc;

        qo_rmtree(tf_dir);
        tf_setup(tf_dir, sizeof(tf_dir), tf_disk, sizeof(tf_disk), "internal-crash", true, tf_d0);
        s = tf_open(tf_disk, QSNAP_OPEN_CREATE);
        op->build(s, &before);
        qsnap_store_close(s);
        tf_model_copy(&after, &before);
        op->after(&after);
        pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
            qsnap_store *cs = NULL;
            qsnap_plan *p = NULL;
            qsnap_exec_opts eo = QSNAP_EXEC_OPTS_INIT;
            if (qsnap_store_open(&cs, tf_disk, QSNAP_OPEN_CREATE) || op->plan(cs, &p))
                _exit(3);
            if (k == 0)
                kill(getpid(), SIGKILL);
            eo.step_hook = hook;
            eo.payload = &k;
            _exit(qsnap_plan_execute(cs, p, &eo) ? 4 : 0);
        }
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) == 0),
                  "%s: child exit %d", op->name, WEXITSTATUS(status));
        snprintf(step, sizeof(step), "%s, killed after step %u of %zu", op->name, k, steps);
        s = tf_open(tf_disk, QSNAP_OPEN_CREATE);
        rc = qsnap_verify(s, true, &f, &nf);
        qsnap_verify_free(f, nf);
        if (k == 0 && before.n == 0) {
            cr_assert_eq(rc, QSNAP_ENOTFOUND, "%s: verify rc %d", step, rc);
        } else {
            cr_assert_eq(rc, 0, "%s: verify(repair) rc %d: %s", step, rc,
                         qsnap_error_last()->message);
            cr_assert(tf_store_matches(s, k == 0 ? &before : &after, tf_dir, why, sizeof(why)),
                      "%s: not the %s state: %s", step, k == 0 ? "before" : "after", why);
            tf_check_store(s, k == 0 ? &before : &after, tf_dir, step);
            check_qemu_agrees(s, step);
        }
        qsnap_store_close(s);
        tf_model_free(&before);
        tf_model_free(&after);
    }
    qo_rmtree(tf_dir);
}

Test(internal, crash_after_every_step)
{
    for (size_t i = 0; i < sizeof(IOPS) / sizeof(IOPS[0]); i++)
        sweep(&IOPS[i]);
}

/*
 * What a plan decides from a head's internal snapshots (the head's state is
 * already that of the snapshot reverted to, so nothing is kept; a name is
 * free in the head's table) is read before the operation holds the head: a
 * head changed in between (a VM wrote it, `qemu-img snapshot -c` took that
 * name) stops the execution, with nothing changed.
 */
Test(internal, internal_snapshots_are_read_again_under_the_hold)
{
    tf_model m = {0};
    qsnap_store *s;
    qsnap_plan *p = NULL;
    qsnap_create_opts co = QSNAP_CREATE_OPTS_INIT;
    char *head, *before, *after, out[4096];
    int rc;

    if (!qo_have_qemu())
        cr_skip_test("qemu-img not installed");
    s = tf_start_s1("intrecheck", &m);
    tf_write_state(s, &m, "main", 0x21, 1 * MiB, 64 * KiB);
    tf_ok(create_internal(s, "i1"), "create --internal i1");
    tf_model_set(&m, "i1", false, tf_model_get(&m, "main"));
    head = tf_file_of(s, "main");
    cr_assert_not_null(head);

    /* Planned while main's state is i1's (nothing to keep), written before it runs. */
    tf_ok(qsnap_plan_revert(&p, s, "i1", NULL, false), "revert plan");
    cr_assert(!strstr(qsnap_plan_summary(p), "kept as"), "the plan keeps a state: %s",
              qsnap_plan_summary(p));
    tf_write_state(s, &m, "main", 0x31, 2 * MiB, 64 * KiB);
    before = tf_tree_snapshot(tf_dir);
    rc = qsnap_plan_execute(s, p, NULL);
    qsnap_plan_free(p);
    expect_refused(rc, QSNAP_EBUSY, "revert over a head written after the plan",
                   "changed while the operation was planned");
    cr_assert(strstr(qsnap_error_last()->message, "i1"), "%s", qsnap_error_last()->message);
    after = tf_tree_snapshot(tf_dir);
    cr_assert_str_eq(before, after, "the refused revert changed files");
    free(before);
    free(after);
    check(s, &m, "revert refused: the write is still there");

    /* A name found free in the head's table, taken by qemu-img before the plan runs. */
    co.name = "i2";
    co.internal = true;
    tf_ok(qsnap_plan_create(&p, s, &co), "create --internal i2 plan");
    cr_assert_eq(qo_sh(out, sizeof(out), "qemu-img snapshot -c i2 '%s'", head), 0,
                 "qemu-img snapshot -c: %s", out);
    tf_write_state(s, &m, "main", 0x32, 3 * MiB, 64 * KiB); /* i2 must not be qemu-img's */
    before = tf_tree_snapshot(tf_dir);
    rc = qsnap_plan_execute(s, p, NULL);
    qsnap_plan_free(p);
    expect_refused(rc, QSNAP_EBUSY, "create over a name qemu-img took after the plan",
                   "changed while the operation was planned");
    cr_assert(strstr(qsnap_error_last()->message, "i2"), "%s", qsnap_error_last()->message);
    after = tf_tree_snapshot(tf_dir);
    cr_assert_str_eq(before, after, "the refused create changed files");
    free(before);
    free(after);
    cr_assert(!listed_internal(s, "i2", &(bool){false}), "i2 is in the tree");
    cr_assert_eq(qo_sh(out, sizeof(out), "qemu-img snapshot -d i2 '%s'", head), 0,
                 "qemu-img snapshot -d: %s", out);
    check(s, &m, "create refused");

    /* Unchanged between plan and execution: both go through. */
    tf_ok(create_internal(s, "i2"), "create --internal i2");
    tf_model_set(&m, "i2", false, tf_model_get(&m, "main"));
    tf_ok(tf_revert(s, "i1", NULL, false, NULL), "revert i1 (main's state is i2's: kept)");
    tf_model_set(&m, "main", true, tf_model_get(&m, "i1"));
    check(s, &m, "after both");
    free(head);
    qsnap_store_close(s);
    tf_model_free(&m);
}
