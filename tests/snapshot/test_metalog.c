/*
 * The metadata's change log (snapshot/metalog.c): a store's model read from
 * meta plus meta.log is the one its last save made; a record cut short at
 * any byte (a crash during an append) or torn at the end of the log is not
 * committed: the model is the one before it, verify reports the tail and
 * --repair cuts it, and the next save writes over it; a damaged record
 * followed by others is an error naming the log; a compaction cut short
 * (the new meta renamed, the old log still there; or only meta.tmp made)
 * reads as the model it wrote (or the one before); a version 1 meta file is
 * read and becomes version 2 at the first save; a log beside a version 1
 * meta file is refused; the log stays within its bound, folded into meta
 * when it grows past it. The model is compared as text (the whole meta
 * form), never with hard-coded values.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "qcow2/qcow2.h"
#include "qemu_oracle.h"
#include "qsnap/qsnap.h"
#include "qsnap_int.h"
#include "tree_fixture.h"

static char dir[256], disk[512], logp[600], metap[600];
static uint8_t *d0;

static void setup(void)
{
    d0 = calloc(1, TF_SIZE);
    cr_assert_not_null(d0);
}

static void teardown(void)
{
    free(d0);
    if (dir[0])
        qo_rmtree(dir);
    dir[0] = '\0';
}

TestSuite(metalog, .init = setup, .fini = teardown, .timeout = 300);

static void ok(int rc, const char *what)
{
    cr_assert_eq(rc, 0, "%s: rc %d: %s", what, rc, qsnap_error_last()->message);
}

/* The store's model as text (the whole meta form), or NULL when it does not open. */
static char *model_text(void)
{
    qsnap_store *s = NULL;
    char *t = NULL;

    if (qsnap_store_open(&s, disk, QSNAP_OPEN_READONLY) != 0)
        return NULL;
    ok(qsnap__model_format(&s->m, &t), "format");
    qsnap_store_close(s);
    return t;
}

/* Close s and check that the store reads back to the model s had in memory (the one its
 * last change saved). */
static void close_and_read_back(qsnap_store *s)
{
    char *mem = NULL, *disk_text;

    ok(qsnap__model_format(&s->m, &mem), "format");
    qsnap_store_close(s);
    disk_text = model_text();
    cr_assert_str_eq(disk_text, mem, "the model read back differs from the one in memory");
    free(mem);
    free(disk_text);
}

static void start(const char *tag)
{
    qsnap_store *s;

    tf_setup(dir, sizeof(dir), disk, sizeof(disk), tag, false, d0);
    snprintf(logp, sizeof(logp), "%s.qsnap/meta.log", disk);
    snprintf(metap, sizeof(metap), "%s.qsnap/meta", disk);
    s = tf_open(disk, QSNAP_OPEN_CREATE);
    ok(tf_create(s, "s1"), "create s1");
    qsnap_store_close(s);
}

/* One change through the library: a branch made at s1. */
static void change(const char *branch)
{
    qsnap_store *s = tf_open(disk, 0);

    ok(tf_branch(s, branch, "s1"), branch);
    qsnap_store_close(s);
}

static off_t fsize(const char *p)
{
    struct stat st;

    return stat(p, &st) == 0 ? st.st_size : -1;
}

static int verify(bool repair, size_t *problems)
{
    qsnap_store *s = NULL;
    qsnap_finding *f = NULL;
    size_t n = 0;
    int rc = qsnap_store_open(&s, disk, 0);

    if (rc)
        return rc;
    rc = qsnap_verify(s, repair, &f, &n);
    *problems = 0;
    for (size_t i = 0; i < n; i++)
        *problems += f[i].problem && !f[i].repaired;
    qsnap_verify_free(f, n);
    qsnap_store_close(s);
    return rc;
}

Test(metalog, changes_go_to_the_log_and_read_back)
{
    char *a, *b;
    off_t meta0;

    start("log");
    meta0 = fsize(metap);
    change("b1");
    change("b2");
    cr_assert_gt(fsize(logp), 0, "no change log after two saves");
    cr_assert_eq(fsize(metap), meta0, "the meta file was rewritten for a change");
    a = model_text();
    cr_assert_not_null(a);
    cr_assert(strstr(a, "branch b1 ") && strstr(a, "branch b2 "), "%s", a);
    /* The same model once folded into meta alone. */
    {
        qsnap_store *s = tf_open(disk, 0);
        s->m.gen--; /* the fold bumps it again: compare like for like */
        ok(qsnap__save_model(s, &s->m), "fold");
        qsnap_store_close(s);
    }
    cr_assert_eq(fsize(logp), -1, "the log stays after a compaction");
    b = model_text();
    cr_assert_str_eq(a, b);
    free(a);
    free(b);
}

/* Every kind of change is said in the log (no rewrite of meta), and reads back as it was made. */
Test(metalog, every_operation_appends)
{
    qsnap_store *s;
    off_t meta0;

    start("ops");
    change("b1");
    meta0 = fsize(metap);
    s = tf_open(disk, 0);
    ok(tf_create(s, "s2"), "create");
    ok(tf_revert(s, "s1", "r1", false, NULL), "revert");
    ok(tf_switch(s, "b1"), "switch");
    ok(tf_branch(s, "b2", "s2"), "branch");
    ok(tf_delete(s, "s2", 0, NULL), "delete");
    close_and_read_back(s);
    cr_assert_eq(fsize(metap), meta0, "an operation rewrote meta instead of appending");
}

/*
 * A revert that leaves a clean branch drops it and starts the new branch under its
 * name: in its place in the list, so the change is one branch record and the log
 * says it (a removal and an addition at the end moved every branch after it, and
 * the save rewrote the whole meta file).
 */
Test(metalog, a_revert_that_reuses_the_branch_name_appends)
{
    qsnap_store *s;
    off_t meta0;
    unsigned old_head;

    start("reuse");
    change("other");
    change("third");
    s = tf_open(disk, 0);
    ok(tf_switch(s, "other"), "switch other");
    ok(tf_create(s, "o1"), "create o1");
    ok(tf_switch(s, "main"), "switch main");
    qsnap_store_close(s);
    meta0 = fsize(metap);
    s = tf_open(disk, 0);
    old_head = qsnap__branch_by_name(&s->m, "main")->head;
    ok(tf_revert(s, "o1", NULL, false, NULL), "revert o1");
    cr_assert_str_eq(s->m.current, "main");
    cr_assert_str_eq(s->m.branches[0].name, "main", "the new main moved in the list");
    cr_assert_neq(s->m.branches[0].head, old_head, "main kept its old head");
    cr_assert_null(qsnap__layer(&s->m, old_head), "the left head is still in the model");
    close_and_read_back(s);
    cr_assert_eq(fsize(metap), meta0, "the revert rewrote meta instead of appending");
}

/*
 * A change that drops several layers (a subtree deleted) is said in the log too:
 * replaying it gives the layers in the order the plan left them, so the save does
 * not fall back to rewriting the whole meta file.
 */
Test(metalog, a_subtree_deleted_appends_and_reads_back)
{
    /* The subtree of a1 first, then layers made after it (which the drops must not move). */
    static const char *const snaps[][2] = {{"sub", "a1"},   {"sub", "a2"},   {"sub", "a3"},
                                           {"sub2", "c1"},  {"sub2", "c2"},  {"sub3", "d1"},
                                           {"other", "o1"}, {"other", "o2"}, {"other2", "p1"},
                                           {"other2", "p2"}};
    tf_model m;
    qsnap_store *s;
    off_t meta0;

    memset(&m, 0, sizeof(m));
    start("subtree");
    s = tf_open(disk, 0);
    for (size_t i = 0; i < sizeof(snaps) / sizeof(snaps[0]); i++) {
        const char *b = snaps[i][0];
        if (!tf_model_get(&m, b)) {
            ok(tf_branch(s, b, i && strncmp(b, "other", 5) ? snaps[i - 1][1] : "s1"), b);
            tf_model_set(&m, b, true, d0);
            ok(tf_switch(s, b), b);
        }
        tf_write_state(s, &m, b, 0x40 + (int)i, (uint64_t)i * 65536, 4096);
        ok(tf_create(s, snaps[i][1]), snaps[i][1]);
    }
    ok(tf_switch(s, "main"), "switch main");
    qsnap_store_close(s);
    meta0 = fsize(metap);
    s = tf_open(disk, 0);
    ok(tf_delete(s, "a1", QSNAP_DELETE_CHILDREN, NULL), "delete a1 --children");
    cr_assert_null(qsnap__node_by_name(&s->m, "c2"), "the subtree is still there");
    close_and_read_back(s);
    cr_assert_eq(fsize(metap), meta0, "the subtree's delete rewrote meta instead of appending");
    tf_model_free(&m);
}

/* The lines of the change log that start with key (0 when there is no log). */
static size_t log_lines(const char *key)
{
    FILE *f = fopen(logp, "r");
    char line[4096];
    size_t n = 0;

    while (f && fgets(line, sizeof(line), f))
        n += !strncmp(line, key, strlen(key));
    if (f)
        fclose(f);
    return n;
}

/*
 * Every node dropped moves the nodes after it, in every replay of the log: the log
 * holds at most 8 node drops before a change folds it into meta, and the model
 * reads back the same either way.
 */
Test(metalog, node_drops_in_the_log_are_bounded)
{
    qsnap_store *s;
    char name[16];
    size_t most = 0;

    start("shifts");
    s = tf_open(disk, 0);
    for (int i = 2; i <= 14; i++) {
        snprintf(name, sizeof(name), "s%d", i);
        ok(tf_create(s, name), name); /* a clean head: a node of its own, no layer */
    }
    qsnap_store_close(s);
    for (int i = 2; i <= 14; i++) {
        size_t n;
        snprintf(name, sizeof(name), "s%d", i);
        s = tf_open(disk, 0);
        ok(tf_delete(s, name, 0, NULL), name);
        close_and_read_back(s); /* appended or folded, the same model */
        n = log_lines("drop-node ");
        cr_assert_leq(n, 8, "%zu node drops in the log after deleting %s", n, name);
        most = n > most ? n : most;
    }
    cr_assert_eq(most, 8, "the log never held 8 node drops (%zu): the bound is not what is tested",
                 most);
    s = tf_open(disk, 0);
    cr_assert_null(qsnap__node_by_name(&s->m, "s14"), "s14 is still there");
    qsnap_store_close(s);
}

static void kill_after(unsigned step, void *payload)
{
    if (step == *(const unsigned *)payload)
        kill(getpid(), SIGKILL);
}

/* Branch `name` at s1 in a child killed after the plan's last step: the change is appended
 * to the log, and the journal (removed only after that) is still there. */
static void interrupted_change(const char *name)
{
    pid_t pid = fork();
    int status;

    cr_assert_geq(pid, 0);
    if (pid == 0) {
        qsnap_store *s = NULL;
        qsnap_plan *p = NULL;
        qsnap_exec_opts eo = QSNAP_EXEC_OPTS_INIT;
        unsigned last;
        if (qsnap_store_open(&s, disk, 0) || qsnap_plan_branch_create(&p, s, name, "s1"))
            _exit(3);
        last = (unsigned)tf_plan_steps(p);
        eo.step_hook = kill_after;
        eo.payload = &last;
        if (qsnap_plan_execute(s, p, &eo))
            fprintf(stderr, "interrupted_change: %s\n", qsnap_error_last()->message);
        _exit(4);
    }
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFSIGNALED(status), "the child was not killed (exit %d)", WEXITSTATUS(status));
}

/* The store open fails naming meta.log as damaged: no operation was interrupted. */
static void expect_damaged_log(const char *what)
{
    qsnap_store *s = NULL;

    cr_assert_eq(qsnap_store_open(&s, disk, QSNAP_OPEN_READONLY), QSNAP_EINTEGRITY,
                 "%s: opened", what);
    cr_assert(strstr(qsnap_error_last()->message, "meta.log") &&
                  strstr(qsnap_error_last()->message, "no operation was interrupted"),
              "%s: %s", what, qsnap_error_last()->message);
}

/*
 * The end of the log past its last whole record: with the journal of the operation
 * whose append it is, a crash cut the append short and the change is not committed
 * (the repair finishes the operation); with no journal the record was committed, and
 * the store is damaged (taking the tree without it would hand its ids out again).
 */
Test(metalog, a_record_cut_short_is_uncommitted_only_while_its_journal_is_there)
{
    char *before, *after, *got, *saved, jpath[700];
    off_t good, full;
    size_t len, problems;

    start("torn");
    change("b1");
    before = model_text();
    good = fsize(logp);
    change("b2");
    after = model_text();
    full = fsize(logp);
    cr_assert(before && after && good > 0 && full > good);
    saved = (char *)qo_read_file(logp, &len);
    cr_assert_not_null(saved);
    /* No journal: every cut, and a flipped byte in the last record, is damage. */
    for (off_t cut = good + 1; cut < full; cut++) {
        char what[64];
        cr_assert_eq(qo_write_file(logp, saved, (size_t)cut), 0);
        snprintf(what, sizeof(what), "cut at %lld of %lld", (long long)cut, (long long)full);
        expect_damaged_log(what);
    }
    saved[full - 3] ^= 0x20;
    cr_assert_eq(qo_write_file(logp, saved, (size_t)full), 0);
    expect_damaged_log("a flipped byte in the last record");
    cr_assert_eq(qo_write_file(logp, saved, 3), 0);
    expect_damaged_log("a log shorter than its first line");
    cr_assert_eq(verify(false, &problems), QSNAP_EINTEGRITY, "verify opens a damaged log");
    /* The log whole again (b1, b2), then b3's append interrupted by a kill, its journal
     * left: from here on the model before is b2's. */
    saved[full - 3] ^= 0x20;
    cr_assert_eq(qo_write_file(logp, saved, (size_t)full), 0);
    got = model_text();
    cr_assert(got && !strcmp(got, after), "the log whole again: not the model after b2");
    free(got);
    free(saved);
    free(before);
    before = after;
    after = NULL;
    good = full;
    interrupted_change("b3");
    snprintf(jpath, sizeof(jpath), "%s.qsnap/journal", disk);
    cr_assert(access(jpath, F_OK) == 0, "no journal after the kill");
    full = fsize(logp);
    cr_assert_gt(full, good);
    saved = (char *)qo_read_file(logp, &len);
    cr_assert_not_null(saved);
    for (off_t cut = good; cut < full; cut++) {
        cr_assert_eq(qo_write_file(logp, saved, (size_t)cut), 0);
        got = model_text();
        cr_assert_not_null(got, "cut at %lld: %s", (long long)cut, qsnap_error_last()->message);
        cr_assert_str_eq(got, before, "cut at byte %lld of %lld: not the model before",
                         (long long)cut, (long long)full);
        free(got);
    }
    saved[full - 3] ^= 0x20;
    cr_assert_eq(qo_write_file(logp, saved, (size_t)full), 0);
    got = model_text();
    cr_assert(got && !strcmp(got, before), "a torn last record with its journal: not committed");
    free(got);
    /* The repair finishes the operation from the last whole record, and leaves no tail. */
    cr_assert_eq(qo_write_file(logp, saved, (size_t)full - 5), 0);
    cr_assert_eq(verify(false, &problems), QSNAP_EINTEGRITY);
    cr_assert_geq(problems, 1);
    ok(verify(true, &problems), "verify --repair");
    cr_assert(access(jpath, F_OK) != 0, "the journal is still there");
    got = model_text();
    cr_assert(got && strstr(got, "branch b1 ") && strstr(got, "branch b2 ") &&
                  strstr(got, "branch b3 "),
              "%s", got ? got : qsnap_error_last()->message);
    ok(verify(false, &problems), "verify after the repair");
    free(got);
    free(saved);
    free(before);
    free(after);
}

Test(metalog, a_damaged_record_before_others_is_an_error)
{
    char *saved;
    size_t len;
    qsnap_store *s = NULL;
    char *rec;

    start("damaged");
    change("b1");
    change("b2");
    saved = (char *)qo_read_file(logp, &len);
    cr_assert_not_null(saved);
    rec = strstr(saved, "branch b1 ");
    cr_assert_not_null(rec);
    rec[7] = 'X'; /* "b1" -> "bX" inside the first record */
    cr_assert_eq(qo_write_file(logp, saved, len), 0);
    cr_assert_eq(qsnap_store_open(&s, disk, 0), QSNAP_EINTEGRITY);
    cr_assert(strstr(qsnap_error_last()->message, "meta.log"), "%s", qsnap_error_last()->message);
    free(saved);
}

Test(metalog, a_compaction_cut_short_reads_as_either_side)
{
    char *before, *got, *oldlog;
    size_t len;

    start("compact");
    change("b1");
    change("b2");
    before = model_text();
    oldlog = (char *)qo_read_file(logp, &len);
    cr_assert(before && oldlog);
    /* Killed before its rename: a meta.tmp, the old meta and log. */
    {
        char tmp[700];
        snprintf(tmp, sizeof(tmp), "%s.tmp", metap);
        cr_assert_eq(qo_write_file(tmp, "qsnap-store 2\ngen 9", 19), 0);
        got = model_text();
        cr_assert_str_eq(got, before);
        free(got);
        unlink(tmp);
    }
    /* Killed after its rename, before the log went: every record is skipped. */
    {
        qsnap_store *s = tf_open(disk, 0);
        ok(qsnap__save_model(s, &s->m), "fold");
        qsnap_store_close(s);
    }
    free(before);
    before = model_text();
    cr_assert_eq(qo_write_file(logp, oldlog, len), 0);
    got = model_text();
    cr_assert_str_eq(got, before, "the stale log changed the model");
    free(got);
    /* The next save starts a new log (the stale records go). */
    change("b3");
    free(oldlog);
    oldlog = (char *)qo_read_file(logp, &len);
    cr_assert(oldlog && !strstr(oldlog, "branch b1 ") && strstr(oldlog, "branch b3 "), "%s",
              oldlog);
    got = model_text();
    cr_assert(got && strstr(got, "branch b1 ") && strstr(got, "branch b3 "));
    free(got);
    free(before);
    free(oldlog);
}

Test(metalog, version_1_is_read_and_upgraded)
{
    char *got, *m;
    size_t len;
    qsnap_store *s = NULL;

    start("v1");
    change("b1");
    tf_meta_as_text(disk, 1);
    got = model_text();
    cr_assert(got && strstr(got, "branch b1 "), "a version 1 store does not open: %s",
              qsnap_error_last()->message);
    free(got);
    /* A log beside a version 1 meta file: not from any qsnap. */
    cr_assert_eq(qo_write_file(logp, "qsnap-log 2\n", 12), 0);
    cr_assert_eq(qsnap_store_open(&s, disk, 0), QSNAP_EINTEGRITY);
    unlink(logp);
    /* The first save writes version 3, whole. */
    change("b2");
    m = (char *)qo_read_file(metap, &len);
    cr_assert(m && len > 14 && !memcmp(m, QSNAP_BIN_MAGIC, 14), "meta is not version 3");
    cr_assert_eq(fsize(logp), -1);
    free(m);
    got = model_text();
    cr_assert(got && strstr(got, "branch b2 "), "%s", got ? got : qsnap_error_last()->message);
    free(got);
}

Test(metalog, the_log_stays_within_its_bound)
{
    char *a, *b;
    off_t most = 0;
    bool folded = false;

    start("bound");
    for (int i = 0; i < 400; i++) {
        char name[32];
        qsnap_store *s = tf_open(disk, 0);
        snprintf(name, sizeof(name), "branch-with-a-long-name-%d", i);
        ok(tf_branch(s, name, "s1"), name);
        qsnap_store_close(s);
        off_t n = fsize(logp);
        if (n > most)
            most = n;
        folded |= n < 0 && i > 0;
    }
    cr_assert(folded, "the log was never folded into meta");
    cr_assert_leq(most, 16 * 1024 + 4096, "the log grew to %lld bytes", (long long)most);
    a = model_text();
    {
        qsnap_store *s = tf_open(disk, 0);
        s->m.gen--;
        ok(qsnap__save_model(s, &s->m), "fold");
        qsnap_store_close(s);
    }
    b = model_text();
    cr_assert_str_eq(a, b);
    free(a);
    free(b);
}

/* The bytes of a version 3 meta file read as a model: the rc; m is freed. */
static int read_bin(const unsigned char *bytes, size_t len, char **text)
{
    struct qsnap__pool *pool = qsnap__pool_new(len);
    struct qsnap__model m;
    unsigned version = 0;
    int rc;

    cr_assert_not_null(pool);
    memcpy(pool->data, bytes, len);
    rc = qsnap__model_read(&m, pool, "test.meta", &version, true);
    if (text)
        *text = NULL;
    if (!rc) {
        cr_assert(version == 3 || version == 4, "version %u", version);
        if (text)
            ok(qsnap__model_format(&m, text), "format");
        qsnap__model_free(&m);
    } else {
        cr_assert_not_null(strstr(qsnap_error_last()->message, "test.meta"), "%s",
                           qsnap_error_last()->message);
    }
    return rc;
}

static uint64_t le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void set_le(unsigned char *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* A version 3 meta file with its checksum made right again after a change. */
static void reseal(unsigned char *f, size_t len)
{
    set_le(f + 16, XXH3_64bits(f + 24, len - 24), 8);
}

/* A store with layers, nodes (named, described, unnamed) and branches, folded into meta. */
static unsigned char *bin_store(const char *tag, size_t *len, char **text)
{
    qsnap_store *s;
    unsigned char *f;

    start(tag);
    change("b1");
    change("b2");
    s = tf_open(disk, 0);
    ok(tf_create(s, "s2"), "create s2");
    ok(qsnap__save_model(s, &s->m), "fold");
    qsnap_store_close(s);
    *text = model_text();
    cr_assert_not_null(*text);
    f = qo_read_file(metap, len);
    cr_assert(f && *len > 64 && !memcmp(f, QSNAP_BIN_MAGIC, 14), "meta is not version 3");
    cr_assert_eq(le64(f + 16), XXH3_64bits(f + 24, *len - 24), "the checksum");
    return f;
}

/*
 * Version 3 (binary) meta: what the store wrote reads back to the same model;
 * every truncation and every flipped byte is refused (the checksum, or the
 * magic); a file whose fields are wrong but whose checksum was made right
 * (hostile, not damaged) is refused field by field or read as a model that
 * passes the graph check, never a crash (the suite also runs under ASan).
 */
Test(metalog, version_3_reads_back_and_refuses_damage)
{
    size_t len;
    char *want, *got;
    unsigned char *f = bin_store("bin", &len, &want), *c = malloc(len);

    cr_assert_not_null(c);
    ok(read_bin(f, len, &got), "read the meta file");
    cr_assert_str_eq(got, want);
    free(got);
    for (size_t n = 0; n < len; n++)
        cr_assert_eq(read_bin(f, n, NULL), QSNAP_EINTEGRITY, "cut to %zu bytes", n);
    for (size_t i = 0; i < len; i++) {
        memcpy(c, f, len);
        c[i] ^= 0x20;
        cr_assert_eq(read_bin(c, len, NULL), QSNAP_EINTEGRITY, "byte %zu flipped", i);
    }
    /* Hostile: each 32-bit field (or byte) set to an odd value, the checksum made right. */
    {
        static const uint64_t odd[] = {0, 1, 2, 0x7fffffff, 0x80000000, 0xffffffff};
        size_t refused = 0, tried = 0;
        for (size_t i = 24; i + 4 <= len; i += 4) {
            for (size_t k = 0; k < sizeof(odd) / sizeof(odd[0]); k++) {
                int rc;
                memcpy(c, f, len);
                set_le(c + i, odd[k], 4);
                if (!memcmp(c, f, len))
                    continue;
                reseal(c, len);
                rc = read_bin(c, len, NULL);
                cr_assert(rc == 0 || rc == QSNAP_EINTEGRITY, "field at %zu = %#llx: rc %d", i,
                          (unsigned long long)odd[k], rc);
                tried++;
                refused += rc != 0;
            }
        }
        cr_assert_gt(refused, tried / 4, "only %zu of %zu hostile files refused", refused, tried);
    }
    /* Named cases, each refused. */
    {
        uint32_t nl = (uint32_t)le64(f + 36), nn = (uint32_t)le64(f + 40);
        size_t lrec = 64, nrec = 64 + 72 * (size_t)nl, brec = nrec + 40 * (size_t)nn;
        struct {
            const char *what;
            size_t at;
            uint64_t v;
            int n;
        } cases[] = {
            {"the disk offset 0 (no disk)", 52, 0, 4},
            {"a layer count past the file", 36, nl + 1, 4},
            {"an unknown layer flag", lrec + 13, 0x20, 1},
            {"an unknown layer format", lrec + 12, 2, 1},
            {"a layer id 0", lrec, 0, 4},
            {"a layer's file offset past the table", lrec + 4, 0xfffffff0, 4},
            {"a node on layer 0", nrec + 8, 0, 4},
            {"a node's reserved word", nrec + 28, 1, 4},
            {"a branch head 0", brec + 4, 0, 4},
            {"a branch without a name", brec, 0, 4},
            {"the string table's last byte", len - 1, 'x', 1},
            {"the version bytes", 14, 1, 1},
        };
        for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
            memcpy(c, f, len);
            set_le(c + cases[k].at, cases[k].v, cases[k].n);
            reseal(c, len);
            cr_assert_eq(read_bin(c, len, NULL), QSNAP_EINTEGRITY, "%s: read", cases[k].what);
        }
    }
    free(c);
    free(f);
    free(want);
}

/*
 * Version 4 marks a node kept only for what is built on it with bit 31 of its layer field
 * (ids stop below it): it reads back as the text form's deps=1 and is written back the same;
 * the bit in a version 3 file is refused (an id out of range), as is a version 4 node whose
 * fingerprint field is not a string of the table.
 */
Test(metalog, version_4_carries_the_node_flag)
{
    size_t len, len2;
    char *want, *got, *again;
    unsigned char *f = bin_store("v4f", &len, &want);
    size_t nrec = 64 + 72 * (size_t)(uint32_t)le64(f + 36);
    uint32_t layer = (uint32_t)le64(f + nrec + 8);
    struct qsnap__model m;
    struct qsnap__pool *pool;
    unsigned version;

    set_le(f + nrec + 8, layer | 0x80000000u, 4);
    reseal(f, len);
    cr_assert_eq(read_bin(f, len, NULL), QSNAP_EINTEGRITY, "the node flag in version 3");
    f[12] = '4';
    reseal(f, len);
    ok(read_bin(f, len, &got), "read version 4");
    cr_assert_not_null(strstr(got, " deps=1"), "%s", got);
    /* The model written again: version 4, the same bytes. */
    pool = qsnap__pool_new(len);
    cr_assert_not_null(pool);
    memcpy(pool->data, f, len);
    ok(qsnap__model_read(&m, pool, "meta", &version, true), "read");
    cr_assert_eq(version, 4);
    cr_assert(m.nodes[0].for_deps && m.nodes[0].layer == layer, "flag %d layer %u (want %u)",
              m.nodes[0].for_deps, m.nodes[0].layer, layer);
    ok(qsnap__model_bin_format(&m, &again, &len2), "format");
    cr_assert(len2 == len && !memcmp(again, f, len), "written back differently");
    free(again);
    qsnap__model_free(&m);
    set_le(f + nrec + 28, 0x7fffff, 4);
    reseal(f, len);
    cr_assert_eq(read_bin(f, len, NULL), QSNAP_EINTEGRITY, "a fingerprint field off the table");
    free(got);
    free(f);
    free(want);
}

/* An older build's view: a version it does not know is refused by name (the first line). */
Test(metalog, a_later_version_is_refused_by_its_number)
{
    size_t len;
    char *want;
    unsigned char *f = bin_store("v5", &len, &want);
    qsnap_store *s = NULL;

    /* (Version 4 is this build's own: a version 3 layout with fingerprint records.) */
    f[12] = '5';
    cr_assert_eq(qo_write_file(metap, f, len), 0);
    cr_assert_eq(qsnap_store_open(&s, disk, QSNAP_OPEN_READONLY), QSNAP_EINTEGRITY);
    cr_assert_not_null(strstr(qsnap_error_last()->message, "unknown store version 5"), "%s",
                       qsnap_error_last()->message);
    free(f);
    free(want);
}

/*
 * Fingerprint records (a state file's, sfp; the disk's own backing chain's,
 * below): the first change that brings one writes meta whole as version 4 (a
 * qsnap that reads 3 only refuses it by its version, never a log record it
 * does not know); later changes go to the log and read back; a malformed record
 * in the text form is damage.
 */
Test(metalog, fingerprint_records_make_version_4)
{
    qsnap_create_opts co = QSNAP_CREATE_OPTS_INIT;
    qsnap_plan *p = NULL;
    qsnap_store *s;
    char state[600], *text;
    unsigned char *f;
    size_t len;
    struct qsnap__model m;

    start("v4rec");
    f = qo_read_file(metap, &len);
    cr_assert(f && len > 14 && !memcmp(f, QSNAP_BIN_MAGIC, 14), "meta is not version 3");
    free(f);
    snprintf(state, sizeof(state), "%s/vm.state", dir);
    cr_assert_eq(qo_write_file(state, "memory", 6), 0);
    s = tf_open(disk, 0);
    co.name = "s2";
    co.state_file = state;
    ok(qsnap_plan_create(&p, s, &co), "plan s2 --state");
    ok(qsnap_plan_execute(s, p, NULL), "create s2 --state");
    qsnap_plan_free(p);
    cr_assert_not_null(qsnap__node_by_name(&s->m, "s2")->sfp, "no record of the state file");
    close_and_read_back(s);
    f = qo_read_file(metap, &len);
    cr_assert(f && len > 14 && !memcmp(f, QSNAP_BIN_MAGIC4, 14), "meta is not version 4");
    free(f);
    cr_assert_neq(access(logp, F_OK), 0, "the first record went to the log");
    /* The next change goes to the log of the version 4 file, and reads back. */
    change("b1");
    cr_assert_eq(access(logp, F_OK), 0, "the next change did not go to the log");
    text = model_text();
    cr_assert_not_null(text);
    cr_assert_not_null(strstr(text, " sfp="), "%s", text);
    /* Malformed records in the text form: damage. */
    {
        const char *bad[] = {"sfp=zz", "sfp=00000000000000000000000000000000:1",
                             "sfp=00000000000000000000000000000000:1:2:path"};
        for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
            char *t = strdup(text), *at = strstr(t, "sfp="), *end, *edited;
            cr_assert_not_null(t);
            end = strchr(at, '\n');
            cr_assert(asprintf(&edited, "%.*s%s%s", (int)(at - t), t, bad[k], end) > 0);
            cr_assert_eq(qsnap__model_parse(&m, edited, strlen(edited), "test"), QSNAP_EINTEGRITY,
                         "%s was read", bad[k]);
            free(edited);
            free(t);
        }
    }
    free(text);
}

/*
 * create --state killed after each of its steps: verify --repair finishes (or
 * takes back) the operation, and then the store is clean, every state file it
 * names is a whole read-only copy with its record (a copy renamed into place
 * before the kill is taken as it is, and fingerprinted again), and the user's
 * file is unchanged.
 */
Test(metalog, create_with_a_state_file_killed_at_each_step)
{
    char state[600], data[3000];
    unsigned steps, finished = 0;

    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (char)('a' + i % 26);
    {
        qsnap_store *s;
        qsnap_plan *p = NULL;
        qsnap_create_opts co = QSNAP_CREATE_OPTS_INIT;
        start("kill-state");
        snprintf(state, sizeof(state), "%s/vm.state", dir);
        cr_assert_eq(qo_write_file(state, data, sizeof(data)), 0);
        s = tf_open(disk, 0);
        co.name = "s2";
        co.state_file = state;
        ok(qsnap_plan_create(&p, s, &co), "plan");
        steps = (unsigned)tf_plan_steps(p);
        qsnap_plan_free(p);
        qsnap_store_close(s);
    }
    for (unsigned k = 1; k <= steps; k++) {
        pid_t pid;
        int status;
        size_t problems = 0;
        qsnap_store *s;
        const struct qsnap__node *n;

        start("kill-state");
        cr_assert_eq(qo_write_file(state, data, sizeof(data)), 0);
        pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
            qsnap_store *c = NULL;
            qsnap_plan *p = NULL;
            qsnap_exec_opts eo = QSNAP_EXEC_OPTS_INIT;
            qsnap_create_opts co = QSNAP_CREATE_OPTS_INIT;
            co.name = "s2";
            co.state_file = state;
            if (qsnap_store_open(&c, disk, 0) || qsnap_plan_create(&p, c, &co))
                _exit(3);
            eo.step_hook = kill_after;
            eo.payload = &k;
            qsnap_plan_execute(c, p, &eo);
            _exit(4);
        }
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFSIGNALED(status), "step %u: the child was not killed", k);
        ok(verify(true, &problems), "verify --repair");
        ok(verify(false, &problems), "verify");
        cr_assert_eq(problems, 0, "step %u: %zu problems after the repair", k, problems);
        s = tf_open(disk, 0);
        n = qsnap__node_by_name(&s->m, "s2");
        if (n) {
            char *path = qsnap__path(s, n->state);
            finished++;
            size_t len = 0;
            uint8_t *back = qo_read_file(path, &len);
            struct stat st;
            cr_assert_not_null(n->sfp, "step %u: no record of the state file", k);
            cr_assert(back && len == sizeof(data) && !memcmp(back, data, len),
                      "step %u: the store's copy is not the state", k);
            cr_assert(stat(path, &st) == 0 && (st.st_mode & 0777) == 0444, "step %u: mode", k);
            free(back);
            free(path);
        }
        qsnap_store_close(s);
        {
            size_t len = 0;
            uint8_t *back = qo_read_file(state, &len);
            cr_assert(back && len == sizeof(data) && !memcmp(back, data, len),
                      "step %u: the user's file changed", k);
            free(back);
        }
    }
    cr_assert_gt(finished, 0, "no interrupted create was finished");
}
