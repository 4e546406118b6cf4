/*
 * Deleting a subtree (QSNAP_DELETE_CHILDREN) on a random tree, against a model
 * worked out here the slow way from the store's own records: the snapshots
 * that remain are exactly those that are not the root or below it; the
 * branches that remain are those not based in the subtree; the layers that
 * remain are exactly the disk's, those a remaining snapshot or branch uses,
 * and the ones under those (backing links), and only their files are left in
 * layers/; verify finds nothing. Repeated for several subtrees of one tree.
 * A subtree with branches that hold changes is refused without
 * QSNAP_DELETE_FORCE (each named, nothing changes) and deleted with it, every
 * state left keeping the model's content.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qcow2/qcow2.h"
#include "qemu_oracle.h"
#include "qsnap/qsnap.h"
#include "qsnap_int.h"
#include "tree_fixture.h"

static void setup(void)
{
    tf_suite_init(0);
}

TestSuite(subtree, .init = setup, .fini = tf_suite_fini, .timeout = 300);

/* Whether node id is root or below it (a walk up the parents, one lookup per step). */
static bool below(const struct qsnap__model *m, unsigned id, unsigned root)
{
    for (size_t steps = 0; id && steps <= m->nn; steps++) {
        const struct qsnap__node *n = qsnap__node(m, id);
        if (id == root)
            return true;
        id = n ? n->parent : 0;
    }
    return false;
}

/* Whether layer id is needed by m: the disk, used by a node or a branch, or under one that is. */
static bool needed(const struct qsnap__model *m, unsigned id)
{
    for (size_t i = 0; i < m->nl; i++) {
        const struct qsnap__layer *l = &m->layers[i];
        bool used = l->is_disk;
        for (size_t j = 0; j < m->nn && !used; j++)
            used = m->nodes[j].layer == l->id;
        for (size_t j = 0; j < m->nb && !used; j++)
            used = m->branches[j].head == l->id;
        /* Down l's backing links: id among them makes it needed. */
        for (const struct qsnap__layer *d = l; used && d; d = qsnap__layer(m, d->backing)) {
            if (d->id == id)
                return true;
            if (!d->backing)
                break;
        }
    }
    return false;
}

/* A copy of the ids of m's nodes (or layers); *n of them. */
static unsigned *ids_of(const struct qsnap__model *m, bool layers, size_t *n)
{
    size_t cnt = layers ? m->nl : m->nn;
    unsigned *v = calloc(cnt + 1, sizeof(*v));

    cr_assert_not_null(v);
    for (size_t i = 0; i < cnt; i++)
        v[i] = layers ? m->layers[i].id : m->nodes[i].id;
    *n = cnt;
    return v;
}

static bool has(const unsigned *v, size_t n, unsigned id)
{
    for (size_t i = 0; i < n; i++) {
        if (v[i] == id)
            return true;
    }
    return false;
}

Test(subtree, deletes_exactly_the_subtree_and_the_layers_only_it_needed)
{
    tf_model *m = &tf_m;
    qsnap_store *s;
    unsigned r = 12345;
    char name[32], branch[32];
    int nbranch = 0;

    tf_setup(tf_dir, sizeof(tf_dir), tf_disk, sizeof(tf_disk), "subtree", false, tf_d0);
    s = tf_open(tf_disk, QSNAP_OPEN_CREATE);
    tf_ok(tf_create(s, "s0"), "create s0");
    tf_model_set(m, "main", true, tf_d0);
    /* A random tree: 36 snapshots, a new branch at a random snapshot now and then, a write
     * before most snapshots (a clean head gives a snapshot without a layer of its own). */
    for (int i = 1; i <= 36; i++) {
        r = r * 1103515245u + 12345u;
        if (i % 5 == 0) {
            snprintf(branch, sizeof(branch), "b%d", ++nbranch);
            snprintf(name, sizeof(name), "s%u", (r >> 8) % (unsigned)i);
            tf_ok(tf_branch(s, branch, name), branch);
            tf_model_set(m, branch, true, tf_d0);
            tf_ok(tf_switch(s, branch), branch);
        }
        if ((r >> 16) % 4) {
            const char *cur = nbranch ? branch : "main";
            tf_write_state(s, m, cur, 0x10 + i, (uint64_t)((r >> 4) % 64) * 4096, 4096);
        }
        snprintf(name, sizeof(name), "s%d", i);
        tf_ok(tf_create(s, name), name);
    }
    tf_ok(tf_switch(s, "main"), "switch main");
    qsnap_store_close(s);

    /* Subtrees that do not hold main's base, in turn. */
    int done = 0;
    for (int round = 0; round < 40 && done < 5; round++) {
        struct qsnap__model *t;
        const struct qsnap__node *root;
        unsigned *nodes0, *layers0, rid;
        size_t nn0, nl0, left = 0;
        char rname[32];

        r = r * 1103515245u + 12345u;
        s = tf_open(tf_disk, 0);
        t = &s->m;
        root = t->nn ? &t->nodes[(r >> 8) % t->nn] : NULL;
        if (!root || !root->name) {
            qsnap_store_close(s);
            continue;
        }
        rid = root->id;
        snprintf(rname, sizeof(rname), "%s", root->name);
        {
            const struct qsnap__branch *cur = qsnap__branch_by_name(t, t->current);
            if (cur && cur->base && below(t, cur->base, rid)) {
                qsnap_store_close(s); /* the current branch is in it: refused, tested elsewhere */
                continue;
            }
        }
        nodes0 = ids_of(t, false, &nn0);
        layers0 = ids_of(t, true, &nl0);
        /* The expected model, from the records before the delete. */
        bool *node_stays = calloc(nn0 + 1, sizeof(bool));
        cr_assert_not_null(node_stays);
        for (size_t i = 0; i < nn0; i++) {
            node_stays[i] = !below(t, nodes0[i], rid);
            left += node_stays[i];
        }
        tf_ok(tf_delete(s, rname, QSNAP_DELETE_CHILDREN, NULL), rname);
        qsnap_store_close(s);

        s = tf_open(tf_disk, 0);
        t = &s->m;
        cr_assert_eq(t->nn, left, "delete %s: %zu snapshots and nodes left, want %zu", rname, t->nn,
                     left);
        for (size_t i = 0; i < nn0; i++)
            cr_assert_eq(qsnap__node(t, nodes0[i]) != NULL, node_stays[i],
                         "delete %s: node %u %s", rname, nodes0[i],
                         node_stays[i] ? "is gone" : "is still there");
        for (size_t i = 0; i < t->nb; i++)
            cr_assert(!t->branches[i].base || qsnap__node(t, t->branches[i].base),
                      "delete %s: branch %s is based on a deleted node", rname,
                      t->branches[i].name);
        /* Layers: exactly the needed ones of those there were, their files and no others. */
        for (size_t i = 0; i < nl0; i++) {
            const struct qsnap__layer *l = qsnap__layer(t, layers0[i]);
            cr_assert_eq(l != NULL, needed(t, layers0[i]), "delete %s: layer %u %s", rname,
                         layers0[i], l ? "is kept but nothing needs it" : "is gone but needed");
        }
        for (size_t i = 0; i < t->nl; i++) {
            char path[1024];
            cr_assert(has(layers0, nl0, t->layers[i].id), "delete %s: a new layer %u", rname,
                      t->layers[i].id);
            if (t->layers[i].is_disk)
                continue;
            snprintf(path, sizeof(path), "%s.qsnap/%s", tf_disk, t->layers[i].file);
            cr_assert_eq(access(path, F_OK), 0, "delete %s: %s is gone", rname, path);
        }
        {
            char cmd[1200];
            size_t files = 0;
            FILE *f;
            snprintf(cmd, sizeof(cmd), "ls '%s.qsnap/layers' | grep -c '^[0-9]*\\.qcow2$'", tf_disk);
            f = popen(cmd, "r");
            cr_assert_not_null(f);
            cr_assert_eq(fscanf(f, "%zu", &files), 1);
            pclose(f);
            size_t want = 0;
            for (size_t i = 0; i < t->nl; i++)
                want += !t->layers[i].is_disk;
            cr_assert_eq(files, want, "delete %s: %zu layer files, want %zu", rname, files, want);
        }
        {
            qsnap_finding *fs = NULL;
            size_t nf = 0;
            tf_ok(qsnap_verify(s, false, &fs, &nf), "verify");
            for (size_t i = 0; i < nf; i++)
                cr_assert(!fs[i].problem, "delete %s: verify: %s", rname, fs[i].message);
            qsnap_verify_free(fs, nf);
        }
        qsnap_store_close(s);
        free(node_stays);
        free(nodes0);
        free(layers0);
        done++;
    }
    cr_assert_eq(done, 5, "only %d subtrees deleted", done);
}

/*
 * s1 -> s2 -> main (128 KiB written), c (64 KiB written), d (clean); s1 -> b2
 * (current): deleting the subtree of s2 is refused without force, naming main
 * and c with what each holds, and changes no file; with force the plan's
 * description and summary name them, and every state left has its content.
 */
Test(subtree, dirty_branches_need_force)
{
    tf_model *m = &tf_m;
    qsnap_store *s = tf_start_s1("subtree-dirty", m);
    qsnap_plan *p = NULL;
    char *before, *after, *text = NULL, *sum = NULL;
    const char *lost = "branches main (128.0 KiB), c (64.0 KiB)";
    int rc;

    tf_write_state(s, m, "main", 0x21, 0, 64 * 1024);
    tf_ok(tf_create(s, "s2"), "create s2");
    tf_model_set(m, "s2", false, tf_model_get(m, "main"));
    tf_write_state(s, m, "main", 0x22, 1 << 20, 128 * 1024);
    tf_ok(tf_branch(s, "c", "s2"), "branch c");
    tf_model_set(m, "c", true, tf_model_get(m, "s2"));
    tf_write_state(s, m, "c", 0x23, 2 << 20, 64 * 1024);
    tf_ok(tf_branch(s, "d", "s2"), "branch d");
    tf_model_set(m, "d", true, tf_model_get(m, "s2"));
    tf_ok(tf_branch(s, "b2", "s1"), "branch b2");
    tf_model_set(m, "b2", true, tf_d0);
    tf_ok(tf_switch(s, "b2"), "switch b2");
    tf_write_state(s, m, "b2", 0x24, 0, 4096);
    tf_check_store(s, m, tf_dir, "the tree");

    before = tf_tree_snapshot(tf_dir);
    rc = qsnap_plan_delete(&p, s, "s2", QSNAP_DELETE_CHILDREN);
    cr_assert_eq(rc, QSNAP_EREFUSED, "a subtree with dirty branches: rc %d", rc);
    cr_assert_null(p);
    cr_assert(strstr(qsnap_error_last()->message, lost), "%s", qsnap_error_last()->message);
    cr_assert(strstr(qsnap_error_last()->hint, "--force"), "%s", qsnap_error_last()->hint);
    after = tf_tree_snapshot(tf_dir);
    cr_assert_str_eq(before, after, "a refused delete changed files");
    free(after);
    tf_check_store(s, m, tf_dir, "refused");

    tf_ok(qsnap_plan_delete(&p, s, "s2", QSNAP_DELETE_CHILDREN | QSNAP_DELETE_FORCE), "plan");
    tf_ok(qsnap_plan_describe(p, false, &text), "describe");
    cr_assert(strstr(text, "changes lost (no snapshot keeps them): "), "%s", text);
    cr_assert(strstr(text, lost), "%s", text);
    free(text);
    after = tf_tree_snapshot(tf_dir);
    cr_assert_str_eq(before, after, "planning changed files");
    free(after);
    free(before);
    tf_ok(tf_exec(s, p, &sum), "delete s2 --children --force");
    cr_assert(strstr(sum, "(1 snapshot, 3 branches); dropped the changes of "), "%s", sum);
    cr_assert(strstr(sum, lost), "%s", sum);
    free(sum);
    tf_model_del(m, "s2");
    tf_model_del(m, "main");
    tf_model_del(m, "c");
    tf_model_del(m, "d");
    tf_check_store(s, m, tf_dir, "delete s2 --children --force");
    qsnap_store_close(s);
}
