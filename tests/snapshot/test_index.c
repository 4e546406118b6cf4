/*
 * Lookups by key in libqsnap (snapshot/index.c) and the graph check built on
 * them (qsnap__model_check): an index finds what a walk of the model's arrays
 * finds (the first record with an id or a name, nothing for one that is not
 * there), with dense ids (a direct table) and with ids far apart (a hash
 * table), and reports the first id or name held twice; a map by another key
 * field keeps only the records asked for. The check accepts a well-formed
 * tree and refuses each kind of malformed one with its message, whichever
 * table its lookups use. Every expected answer comes from a walk of the
 * arrays (the model), never from a fixed list.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qsnap/qsnap.h"
#include "qsnap_int.h"

/* A model of n layers (a chain with side branches), n nodes and n / 3 + 1
 * branches, ids spread by `scale` (1: dense, as qsnap makes them). */
static void make_model(struct qsnap__model *m, size_t n, unsigned scale, unsigned seed)
{
    char name[64];
    unsigned r = seed;

    memset(m, 0, sizeof(*m));
    m->disk = strdup("../d.img");
    cr_assert_not_null(m->disk);
    for (size_t i = 0; i < n; i++) {
        struct qsnap__layer *l = qsnap__add_layer(m);
        cr_assert_not_null(l);
        l->id = (unsigned)(2 * i + 1) * scale;
        snprintf(name, sizeof(name), "layers/%u.qcow2", l->id);
        l->file = strdup(name);
        r = r * 1103515245u + 12345u;
        l->backing = i ? (unsigned)(2 * ((r >> 8) % i) + 1) * scale : 0;
        l->fmt = QCOW2_FORMAT_QCOW2;
        l->frozen = i % 3 != 0;
    }
    for (size_t i = 0; i < n; i++) {
        struct qsnap__node *nd = qsnap__add_node(m);
        cr_assert_not_null(nd);
        nd->id = (unsigned)(2 * i + 2) * scale;
        r = r * 1103515245u + 12345u;
        nd->parent = i ? (unsigned)(2 * ((r >> 8) % i) + 2) * scale : 0;
        nd->layer = (unsigned)(2 * i + 1) * scale;
        if (i % 4 != 3) {
            snprintf(name, sizeof(name), "s%zu", i);
            nd->name = strdup(name);
        }
    }
    for (size_t i = 0; i < n / 3 + 1; i++) {
        struct qsnap__branch *b = qsnap__add_branch(m);
        cr_assert_not_null(b);
        snprintf(name, sizeof(name), "b%zu", i);
        b->name = strdup(name);
        b->head = (unsigned)(6 * i + 1) * scale;
    }
    m->seq = (unsigned)(2 * n + 1) * scale + 1;
}

static void assert_id_matches(const struct qsnap__index *x, const struct qsnap__model *m,
                              unsigned id)
{
    cr_assert_eq(qsnap__index_layer(x, id), qsnap__layer(m, id), "layer %u", id);
    cr_assert_eq(qsnap__index_node(x, id), qsnap__node(m, id), "node %u", id);
}

/* Every id from 0 past the largest (ids far apart: every id there and its
 * neighbours), every name and some that are not there: the index answers as
 * the walk does. */
static void assert_index_matches(const struct qsnap__model *m)
{
    struct qsnap__index x;
    char name[64];

    cr_assert_eq(qsnap__index_build(&x, m, true), 0, "%s", qsnap_error_last()->message);
    if (m->seq < 100000) {
        for (unsigned id = 0; id <= m->seq + 5; id++)
            assert_id_matches(&x, m, id);
    } else {
        for (size_t i = 0; i < m->nl + m->nn; i++) {
            unsigned id = i < m->nl ? m->layers[i].id : m->nodes[i - m->nl].id;
            for (unsigned d = 0; d < 3; d++)
                assert_id_matches(&x, m, id - 1 + d);
        }
        for (unsigned id = 0; id < 1000; id++)
            assert_id_matches(&x, m, id);
        assert_id_matches(&x, m, m->seq);
        assert_id_matches(&x, m, 0xffffffffu);
    }
    for (size_t i = 0; i < m->nn; i++) {
        const char *nm = m->nodes[i].name;
        if (!nm)
            continue;
        cr_assert_eq(qsnap__index_node_by_name(&x, nm), qsnap__node_by_name(m, nm), "%s", nm);
        cr_assert_eq(qsnap__index_branch(&x, nm), qsnap__branch_by_name(m, nm), "%s", nm);
    }
    for (size_t i = 0; i < m->nb; i++) {
        const char *nm = m->branches[i].name;
        cr_assert_eq(qsnap__index_branch(&x, nm), qsnap__branch_by_name(m, nm), "%s", nm);
        cr_assert_eq(qsnap__index_node_by_name(&x, nm), qsnap__node_by_name(m, nm), "%s", nm);
    }
    for (size_t i = 0; i < 50; i++) {
        snprintf(name, sizeof(name), "absent%zu", i);
        cr_assert_null(qsnap__index_branch(&x, name));
        cr_assert_null(qsnap__index_node_by_name(&x, name));
    }
    cr_assert_null(qsnap__index_branch(&x, NULL));
    qsnap__index_free(&x);
}

Test(index, dense_ids_use_a_direct_table)
{
    for (size_t n = 0; n < 300; n += 37) {
        struct qsnap__model m;
        struct qsnap__index x;
        make_model(&m, n, 1, (unsigned)n);
        cr_assert_eq(qsnap__index_build(&x, &m, false), 0);
        cr_assert(x.layers.direct && x.nodes.direct, "n %zu", n);
        cr_assert(!x.dup_layer && !x.dup_node && !x.dup_name);
        qsnap__index_free(&x);
        assert_index_matches(&m);
        qsnap__model_free(&m);
    }
}

Test(index, ids_far_apart_use_a_hash_table)
{
    for (size_t n = 1; n < 300; n += 41) {
        struct qsnap__model m;
        struct qsnap__index x;
        make_model(&m, n, 100003, (unsigned)n);
        cr_assert_eq(qsnap__index_build(&x, &m, false), 0);
        cr_assert(!x.layers.direct && !x.nodes.direct, "n %zu", n);
        qsnap__index_free(&x);
        assert_index_matches(&m);
        qsnap__model_free(&m);
    }
}

Test(index, without_names_finds_no_name)
{
    struct qsnap__model m;
    struct qsnap__index x;

    make_model(&m, 20, 1, 3);
    cr_assert_eq(qsnap__index_build(&x, &m, false), 0);
    cr_assert_null(qsnap__index_branch(&x, m.branches[0].name));
    cr_assert_null(qsnap__index_node_by_name(&x, m.nodes[0].name));
    cr_assert_eq(qsnap__index_layer(&x, m.layers[5].id), &m.layers[5]);
    qsnap__index_free(&x);
    qsnap__model_free(&m);
}

/* A key held twice: the first record wins (as a walk finds it) and is reported. */
Test(index, duplicates_are_reported_and_the_first_wins)
{
    for (unsigned scale = 1; scale <= 100003; scale += 100002) {
        struct qsnap__model m;
        struct qsnap__index x;
        make_model(&m, 30, scale, 7);
        m.layers[20].id = m.layers[4].id;
        m.nodes[25].id = m.nodes[9].id;
        free(m.branches[3].name);
        m.branches[3].name = strdup(m.nodes[12].name);
        cr_assert_eq(qsnap__index_build(&x, &m, true), 0);
        cr_assert_eq(x.dup_layer, m.layers[4].id);
        cr_assert_eq(x.dup_node, m.nodes[9].id);
        cr_assert_str_eq(x.dup_name, m.nodes[12].name);
        cr_assert_eq(qsnap__index_layer(&x, m.layers[4].id), &m.layers[4]);
        cr_assert_eq(qsnap__index_node(&x, m.nodes[9].id), &m.nodes[9]);
        qsnap__index_free(&x);
        assert_index_matches(&m);
        qsnap__model_free(&m);
    }
}

static bool named(const void *arg, size_t i)
{
    return ((const struct qsnap__model *)arg)->nodes[i].name != NULL;
}

/* A map by another field (nodes by layer), keeping named nodes only. */
Test(index, map_by_another_field_keeps_what_it_is_asked_to)
{
    for (unsigned scale = 1; scale <= 100003; scale += 100002) {
        struct qsnap__model m;
        struct qsnap__idmap h;
        make_model(&m, 60, scale, 11);
        /* Several nodes on one layer, the first of them unnamed. */
        for (size_t i = 30; i < 40; i++)
            m.nodes[i].layer = m.nodes[3].layer;
        cr_assert_eq(qsnap__idmap_build(&h, &m.nodes[0].layer, sizeof(m.nodes[0]), m.nn, named,
                                        &m),
                     0);
        for (size_t i = 0; i < m.nl; i++) {
            unsigned key = m.layers[i].id;
            long want = -1, got;
            for (size_t j = 0; j < m.nn && want < 0; j++) {
                if (m.nodes[j].layer == key && m.nodes[j].name)
                    want = (long)j;
            }
            got = qsnap__idmap_find(&h, &m.nodes[0].layer, sizeof(m.nodes[0]), key);
            cr_assert_eq(got, want, "layer %u: %ld, not %ld", key, got, want);
        }
        cr_assert_eq(qsnap__idmap_find(&h, &m.nodes[0].layer, sizeof(m.nodes[0]), 0), -1);
        free(h.slot);
        qsnap__model_free(&m);
    }
}

/* ---- the graph check ---------------------------------------------------------- */

/*
 * A small well-formed store in the text form; @A@ .. @F@ stand for ids
 * (1..6 times a scale) and @S@ for seq. Layers: A the raw disk, B head of
 * main, C frozen over A, D head of b1 over C. Nodes: E (root, on A), F (s1,
 * on C).
 */
static const char *tmpl =
    "qsnap-store 2\ngen 1\nseq @S@\ndisk ../d.img\ncurrent main\n"
    "layer @A@ file=../d.img fmt=raw backing=0 frozen=1 disk=1\n"
    "layer @B@ file=layers/b.qcow2 fmt=qcow2 backing=@A@ frozen=0 disk=0\n"
    "layer @C@ file=layers/c.qcow2 fmt=qcow2 backing=@A@ frozen=1 disk=0\n"
    "layer @D@ file=layers/d.qcow2 fmt=qcow2 backing=@C@ frozen=0 disk=0\n"
    "node @E@ parent=0 layer=@A@ created=1 name=root\n"
    "node @F@ parent=@E@ layer=@C@ created=1 name=s1\n"
    "branch main head=@B@ base=@E@ created=1\n"
    "branch b1 head=@D@ base=@F@ created=1\n"
    "end\n";

/* tmpl with `from` replaced by `to` (once), then the ids filled in. */
static char *store_text(const char *from, const char *to, unsigned scale)
{
    char *t = malloc(4096), *o = malloc(4096);
    const char *p;
    size_t k = 0;

    cr_assert(t && o);
    p = from ? strstr(tmpl, from) : NULL;
    cr_assert(!from || p, "'%s' is not in the template", from);
    if (p)
        snprintf(t, 4096, "%.*s%s%s", (int)(p - tmpl), tmpl, to, p + strlen(from));
    else
        snprintf(t, 4096, "%s", tmpl);
    for (p = t; *p;) {
        if (p[0] == '@' && p[1] && p[2] == '@') {
            unsigned v = p[1] == 'S' ? 7 * scale : (unsigned)(p[1] - 'A' + 1) * scale;
            k += (size_t)snprintf(o + k, 4096 - k, "%u", v);
            p += 3;
        } else {
            o[k++] = *p++;
        }
    }
    o[k] = '\0';
    free(t);
    return o;
}

/* The check's answer on tmpl changed so: 0, or the error with its message in *msg. */
static int check_text(const char *from, const char *to, unsigned scale, char *msg, size_t size)
{
    struct qsnap__model m;
    unsigned version = 0;
    char *text = store_text(from, to, scale);
    int rc = qsnap__model_parse_v(&m, text, strlen(text), "meta", &version, false);

    cr_assert_eq(rc, 0, "the records parse: %s\n%s", qsnap_error_last()->message, text);
    rc = qsnap__model_check(&m, "meta");
    snprintf(msg, size, "%s", rc ? qsnap_error_last()->message : "");
    qsnap__model_free(&m);
    free(text);
    return rc;
}

Test(index, check_accepts_a_good_tree)
{
    char msg[512];

    for (unsigned scale = 1; scale <= 100003; scale += 100002)
        cr_assert_eq(check_text(NULL, NULL, scale, msg, sizeof(msg)), 0, "%s", msg);
}

struct bad {
    const char *from, *to, *want;
};

Test(index, check_refuses_each_malformed_tree)
{
    static const struct bad cases[] = {
        {"layer @D@ ", "layer @C@ ", "layer @C@ appears twice"},
        {"node @F@ ", "node @E@ ", "node @E@ appears twice"},
        {"seq @S@", "seq @D@", "layer @D@ has an id past seq"},
        {"backing=@C@", "backing=@S@", "layer @D@ is backed by missing layer @S@"},
        {"file=layers/c.qcow2", "file=layers/../c.qcow2", "layer @C@'s file leaves the store"},
        {"file=layers/b.qcow2 fmt=qcow2 backing=@A@ frozen=0 disk=0",
         "file=../d.img fmt=qcow2 backing=@A@ frozen=0 disk=1",
         "layer @B@ is marked as the disk but is not the recorded disk"},
        {"layer @A@ file=../d.img fmt=raw backing=0", "layer @A@ file=../d.img fmt=raw backing=@D@",
         "backing links loop"},
        {"parent=@E@ layer=@C@", "parent=@E@ layer=@S@", "node @F@ refers to a missing layer"},
        {"parent=@E@ layer=@C@", "parent=@S@ layer=@C@", "node @F@ has a missing parent"},
        {"name=s1", "name=s1 state=../x", "node @F@'s state file leaves the store"},
        {"layer=@A@ created=1 name=root", "layer=@A@ created=1 name=root internal=x",
         "internal node @E@ lives in a layer that is not qcow2"},
        {"node @E@ parent=0", "node @E@ parent=@F@", "parents loop"},
        {"head=@D@", "head=@C@", "branch b1 has no writable head"},
        {"head=@D@", "head=@S@", "branch b1 has no writable head"},
        {"base=@F@", "base=@S@", "branch b1 has a missing base"},
        {"branch b1", "branch s1", "the name s1 is used twice"},
        {"branch b1", "branch main", "the name main is used twice"},
        {"name=s1", "name=root", "the name root is used twice"},
        {"current main", "current nosuch", "current branch nosuch does not exist"},
        {"current main", "current s1", "current branch s1 does not exist"},
    };
    char msg[512];

    for (unsigned scale = 1; scale <= 100003; scale += 100002) {
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
            char exp[256];
            size_t k = 0;
            int rc = check_text(cases[i].from, cases[i].to, scale, msg, sizeof(msg));
            cr_assert_eq(rc, QSNAP_EINTEGRITY, "case %zu (scale %u) accepted", i, scale);
            /* The expected message with its ids filled in. */
            for (const char *p = cases[i].want; *p && k + 12 < sizeof(exp);) {
                if (p[0] == '@' && p[1] && p[2] == '@') {
                    unsigned v = p[1] == 'S' ? 7 * scale : (unsigned)(p[1] - 'A' + 1) * scale;
                    k += (size_t)snprintf(exp + k, sizeof(exp) - k, "%u", v);
                    p += 3;
                } else {
                    exp[k++] = *p++;
                }
            }
            exp[k] = '\0';
            cr_assert(strstr(msg, exp) != NULL, "case %zu (scale %u): '%s' lacks '%s'", i, scale,
                      msg, exp);
            cr_assert(!strncmp(msg, "meta: ", 6), "names the file: %s", msg);
        }
    }
}

/* A large tree (the size a scale test reaches) is accepted, and one parent
 * link turned back on a descendant is found. */
Test(index, check_finds_a_loop_in_a_large_tree)
{
    struct qsnap__model m;

    make_model(&m, 20000, 1, 5);
    /* Layer 0 is the disk (and the head of branch b0, as a disk before its first snapshot). */
    free(m.layers[0].file);
    m.layers[0].file = strdup("../d.img");
    m.layers[0].is_disk = true;
    m.layers[0].fmt = QCOW2_FORMAT_RAW;
    m.current = strdup("b0");
    cr_assert_eq(qsnap__model_check(&m, "big"), 0, "%s", qsnap_error_last()->message);
    /* Every node descends from node 0 (parents come first): make it a child of one. */
    m.nodes[0].parent = m.nodes[15000].id;
    cr_assert_eq(qsnap__model_check(&m, "big"), QSNAP_EINTEGRITY);
    cr_assert(strstr(qsnap_error_last()->message, "parents loop"), "%s",
              qsnap_error_last()->message);
    qsnap__model_free(&m);
}

/* Links that go forward in the arrays (a model whose records are not in link order) are
 * walked: no loop is accepted, a loop among them (layers or nodes) is found. */
Test(index, check_walks_links_that_go_forward)
{
    struct qsnap__model m;
    struct qsnap__layer tl;
    struct qsnap__node tn;
    unsigned a, b;

    make_model(&m, 301, 1, 7);
    m.current = strdup("b0");
    /* Layer and node 0 (the roots) moved to the end: every link to them goes forward. */
    tl = m.layers[0];
    memmove(&m.layers[0], &m.layers[1], (m.nl - 1) * sizeof(tl));
    m.layers[m.nl - 1] = tl;
    tn = m.nodes[0];
    memmove(&m.nodes[0], &m.nodes[1], (m.nn - 1) * sizeof(tn));
    m.nodes[m.nn - 1] = tn;
    cr_assert_eq(qsnap__model_check(&m, "moved"), 0, "%s", qsnap_error_last()->message);
    /* Two layers backed by each other. */
    a = m.layers[10].id;
    b = m.layers[20].id;
    m.layers[10].backing = b;
    m.layers[20].backing = a;
    cr_assert_eq(qsnap__model_check(&m, "moved"), QSNAP_EINTEGRITY);
    cr_assert(strstr(qsnap_error_last()->message, "backing links loop"), "%s",
              qsnap_error_last()->message);
    qsnap__model_free(&m);
    /* A layer backed by itself, in a model otherwise in link order. */
    make_model(&m, 301, 1, 9);
    m.current = strdup("b0");
    m.layers[40].backing = m.layers[40].id;
    cr_assert_eq(qsnap__model_check(&m, "self"), QSNAP_EINTEGRITY);
    cr_assert(strstr(qsnap_error_last()->message, "backing links loop"), "%s",
              qsnap_error_last()->message);
    m.layers[40].backing = 0;
    m.nodes[50].parent = m.nodes[50].id;
    cr_assert_eq(qsnap__model_check(&m, "self"), QSNAP_EINTEGRITY);
    cr_assert(strstr(qsnap_error_last()->message, "parents loop"), "%s",
              qsnap_error_last()->message);
    qsnap__model_free(&m);
}

/* ---- a change compared only where it may differ (metalog.c) --------------------- */

static bool ids_have(const struct qsnap__ids *set, unsigned id)
{
    for (size_t i = 0; i < set->n; i++) {
        if (set->v[i] == id)
            return true;
    }
    return false;
}

/*
 * A change (records changed, added, dropped and moved) formatted in full names
 * the records it gives; formatted again comparing only those, it is the same
 * text; comparing only some of them, the others are left out (they are taken
 * to be the same), which is what the SAVE steps rely on the journal for.
 */
Test(index, a_change_compared_only_where_it_may_differ)
{
    struct qsnap__model o, n;
    struct qsnap__ids changed = {NULL, 0, 0}, again = {NULL, 0, 0}, some = {NULL, 0, 0};
    char *full = NULL, *known = NULL, *less = NULL;
    bool exact = false;
    unsigned dropped;

    make_model(&o, 500, 1, 21);
    o.current = strdup("b0");
    make_model(&n, 500, 1, 21);
    n.current = strdup("b0");
    /* Changed: a layer frozen, a node renamed; added: a layer; dropped: a node. */
    n.layers[30].frozen = !n.layers[30].frozen;
    free(n.nodes[40].name);
    n.nodes[40].name = strdup("renamed");
    {
        struct qsnap__layer *l = qsnap__add_layer(&n);
        cr_assert_not_null(l);
        l->file = strdup("layers/new.qcow2");
        l->fmt = QCOW2_FORMAT_QCOW2;
        l->backing = n.layers[0].id;
    }
    dropped = n.nodes[77].id;
    qsnap__del_node(&n, dropped);
    n.seq = n.seq > o.seq ? n.seq : o.seq;

    cr_assert_eq(qsnap__delta_format_ex(&o, &n, &full, &exact, NULL, &changed), 0);
    cr_assert(exact);
    cr_assert(ids_have(&changed, n.layers[30].id) && ids_have(&changed, n.nodes[40].id) &&
              ids_have(&changed, n.layers[n.nl - 1].id), "the changed and new records");
    cr_assert_eq(changed.n, 3, "only those: %zu", changed.n);
    cr_assert(strstr(full, "drop-node"), "%s", full);

    cr_assert_eq(qsnap__delta_format_ex(&o, &n, &known, &exact, &changed, &again), 0);
    cr_assert(exact);
    cr_assert_str_eq(known, full);
    cr_assert_eq(again.n, changed.n);

    /* Without the renamed node among those compared, its change is not seen. */
    cr_assert(qsnap__ids_add(&some, n.layers[30].id));
    cr_assert_eq(qsnap__delta_format_ex(&o, &n, &less, &exact, &some, NULL), 0);
    cr_assert(strstr(full, "renamed") && !strstr(less, "renamed"), "%s", less);
    cr_assert(strstr(less, "drop-node"), "drops are found whatever is compared: %s", less);

    /* The full change applied to the old model gives the new one. */
    cr_assert_eq(qsnap__delta_apply(&o, full, strlen(full), "change"), 0, "%s",
                 qsnap_error_last()->message);
    o.gen = n.gen;
    cr_assert(qsnap__model_equal(&o, &n));
    free(full);
    free(known);
    free(less);
    qsnap__ids_free(&changed);
    qsnap__ids_free(&again);
    qsnap__ids_free(&some);
    qsnap__model_free(&o);
    qsnap__model_free(&n);
}

static int layer_id_cmp(const void *a, const void *b)
{
    unsigned x = ((const struct qsnap__layer *)a)->id, y = ((const struct qsnap__layer *)b)->id;

    return x < y ? -1 : x > y;
}

/*
 * Random changes as plans make them (records changed in place, added at the end,
 * dropped from anywhere), on trees of 1 to 300 records whose ids are dense or far
 * apart: the change formatted in full names exactly the records that differ or are
 * new, formatted again comparing only those it is the same text, and applied to the
 * old model it gives the new one.
 */
Test(index, random_changes_format_and_apply_exactly)
{
    unsigned r = 7;

    for (int round = 0; round < 200; round++) {
        struct qsnap__model o, n;
        struct qsnap__ids changed = {NULL, 0, 0}, again = {NULL, 0, 0}, want = {NULL, 0, 0};
        char *full = NULL, *known = NULL;
        bool exact = false;
        size_t size = 1 + (size_t)round * 3 % 300;
        unsigned scale = round % 4 == 3 ? 1000 : 1;

        make_model(&o, size, scale, (unsigned)round);
        cr_assert_eq(qsnap__model_clone(&n, &o), 0);
        for (int k = 0; k < 1 + round % 7; k++) {
            r = r * 1103515245u + 12345u;
            switch ((r >> 8) % 5) {
            case 0: /* a layer changed */
                if (n.nl) {
                    struct qsnap__layer *l = &n.layers[(r >> 12) % n.nl];
                    l->have_vsize = true; /* a size no layer had */
                    l->vsize = 1000u * (unsigned)round + (unsigned)k + 1;
                    cr_assert(qsnap__ids_add(&want, l->id));
                }
                break;
            case 1: /* a node renamed */
                if (n.nn) {
                    struct qsnap__node *nd = &n.nodes[(r >> 12) % n.nn];
                    char name[32];
                    snprintf(name, sizeof(name), "x%d-%d", round, k);
                    qsnap__str_free(&n, nd->name);
                    nd->name = strdup(name);
                    cr_assert(qsnap__ids_add(&want, nd->id));
                }
                break;
            case 2: { /* a layer and a node added */
                struct qsnap__layer *l = qsnap__add_layer(&n);
                cr_assert_not_null(l);
                l->file = strdup("layers/added.qcow2");
                l->fmt = QCOW2_FORMAT_QCOW2;
                cr_assert(qsnap__ids_add(&want, l->id));
                struct qsnap__node *nd = qsnap__add_node(&n);
                cr_assert_not_null(nd);
                nd->layer = l->id;
                cr_assert(qsnap__ids_add(&want, nd->id));
                break;
            }
            case 3: /* a node dropped */
                if (n.nn)
                    qsnap__del_node(&n, n.nodes[(r >> 12) % n.nn].id);
                break;
            default: /* a layer dropped */
                if (n.nl)
                    qsnap__del_layer(&n, n.layers[(r >> 12) % n.nl].id);
                break;
            }
        }
        cr_assert_eq(qsnap__delta_format_ex(&o, &n, &full, &exact, NULL, &changed), 0);
        /* Not exact only for layers out of id order with ids far apart (no tables then:
         * the caller writes the whole model). */
        cr_assert(exact || scale > 1, "round %d", round);
        if (!exact)
            goto next;
        /* Exactly the records still there that were changed or added. */
        for (size_t i = 0; i < want.n; i++) {
            bool there = qsnap__layer(&n, want.v[i]) || qsnap__node(&n, want.v[i]);
            cr_assert_eq(ids_have(&changed, want.v[i]), there, "round %d: id %u", round,
                         want.v[i]);
        }
        for (size_t i = 0; i < changed.n; i++)
            cr_assert(ids_have(&want, changed.v[i]), "round %d: id %u is not changed", round,
                      changed.v[i]);
        cr_assert_eq(qsnap__delta_format_ex(&o, &n, &known, &exact, &changed, &again), 0);
        cr_assert_str_eq(known, full, "round %d", round);
        cr_assert_eq(qsnap__delta_apply(&o, full, strlen(full), "change"), 0, "round %d: %s",
                     round, qsnap_error_last()->message);
        o.gen = n.gen;
        o.seq = n.seq;
        /* The same records; layers may come in another order where several were dropped
         * (a drop moves the last layer into its place, and the change drops them in the
         * old model's order), which the save compares by id. */
        qsort(o.layers, o.nl, sizeof(*o.layers), layer_id_cmp);
        qsort(n.layers, n.nl, sizeof(*n.layers), layer_id_cmp);
        cr_assert(qsnap__model_equal(&o, &n), "round %d: applied, not the same", round);
    next:
        free(full);
        free(known);
        qsnap__ids_free(&changed);
        qsnap__ids_free(&again);
        qsnap__ids_free(&want);
        qsnap__model_free(&o);
        qsnap__model_free(&n);
    }
}

/* Lines of text that start with key. */
static size_t count_lines(const char *text, const char *key)
{
    size_t n = 0, kl = strlen(key);

    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        n += !strncmp(p, key, kl);
    return n;
}

/*
 * A change that drops, adds and moves many branches asks about more names than the
 * walk answers before it indexes them: the change still says exactly what differs
 * (exact when the branches kept stay in order) and replays to the new model.
 */
Test(index, many_branches_dropped_and_added_format_and_apply_exactly)
{
    for (int moved = 0; moved < 2; moved++) {
        struct qsnap__model o, n;
        char *text = NULL, *formatted = NULL, *want = NULL;
        bool exact = false;
        size_t drops = 0;

        make_model(&o, 300, 1, 3); /* 101 branches */
        cr_assert_eq(qsnap__model_clone(&n, &o), 0);
        for (size_t i = n.nb; i-- > 0;) {
            if (i % 3 == 1) {
                qsnap__del_branch_at(&n, i);
                drops++;
            }
        }
        for (int k = 0; k < 40; k++) {
            struct qsnap__branch *b = qsnap__add_branch(&n);
            char name[32];
            cr_assert_not_null(b);
            snprintf(name, sizeof(name), "new%d", k);
            b->name = strdup(name);
            b->head = n.layers[(size_t)k % n.nl].id;
        }
        if (moved) { /* the first branch to the end: the rest is out of place */
            struct qsnap__branch first = n.branches[0];
            memmove(&n.branches[0], &n.branches[1], (n.nb - 1) * sizeof(n.branches[0]));
            n.branches[n.nb - 1] = first;
        }
        cr_assert_eq(qsnap__delta_format(&o, &n, &text, &exact), 0);
        if (moved) {
            cr_assert_not(exact, "branches out of place were called an exact change");
        } else {
            cr_assert(exact);
            cr_assert_eq(count_lines(text, "drop-branch "), drops, "%s", text);
            cr_assert_eq(count_lines(text, "place-branch "), 40, "%s", text);
            cr_assert_eq(qsnap__delta_apply(&o, text, strlen(text), "change"), 0, "%s",
                         qsnap_error_last()->message);
            cr_assert_eq(qsnap__model_format(&o, &formatted), 0);
            n.gen = o.gen;
            cr_assert_eq(qsnap__model_format(&n, &want), 0);
            cr_assert_str_eq(formatted, want);
        }
        free(text);
        free(formatted);
        free(want);
        qsnap__model_free(&o);
        qsnap__model_free(&n);
    }
}

/* One random change to n (as a plan makes them), step k of round `round`. */
static void random_change(struct qsnap__model *n, unsigned *r, int round, int k)
{
    char name[48];

    *r = *r * 1103515245u + 12345u;
    switch ((*r >> 8) % 7) {
    case 0:
        if (n->nl) {
            struct qsnap__layer *l = &n->layers[(*r >> 12) % n->nl];
            l->have_vsize = true;
            l->vsize = 1000u * (unsigned)round + (unsigned)k + 1;
        }
        break;
    case 1:
        if (n->nn) {
            struct qsnap__node *nd = &n->nodes[(*r >> 12) % n->nn];
            snprintf(name, sizeof(name), "x%d-%d", round, k);
            qsnap__str_free(n, nd->name);
            nd->name = strdup(name);
        }
        break;
    case 2: {
        struct qsnap__layer *l = qsnap__add_layer(n);
        struct qsnap__node *nd;
        cr_assert_not_null(l);
        l->file = strdup("layers/added.qcow2");
        l->fmt = QCOW2_FORMAT_QCOW2;
        nd = qsnap__add_node(n);
        cr_assert_not_null(nd);
        nd->layer = l->id;
        break;
    }
    case 3:
        if (n->nn)
            qsnap__del_node(n, n->nodes[(*r >> 12) % n->nn].id);
        break;
    case 4:
        if (n->nl)
            qsnap__del_layer(n, n->layers[(*r >> 12) % n->nl].id);
        break;
    case 5: { /* a branch added, one dropped */
        struct qsnap__branch *b = qsnap__add_branch(n);
        cr_assert_not_null(b);
        snprintf(name, sizeof(name), "nb%d-%d", round, k);
        b->name = strdup(name);
        b->head = n->nl ? n->layers[0].id : 1;
        if (n->nb > 1)
            qsnap__del_branch(n, n->branches[(*r >> 12) % (n->nb - 1)].name);
        break;
    }
    default: /* a branch renamed */
        if (n->nb) {
            struct qsnap__branch *b = &n->branches[(*r >> 12) % n->nb];
            snprintf(name, sizeof(name), "rn%d-%d", round, k);
            qsnap__str_free(n, b->name);
            b->name = strdup(name);
        }
        break;
    }
}

/*
 * A log replayed with the lookup cache (qsnap__delta_apply_cached, what a
 * store's open does for its change log) gives the model that applying each
 * change alone gives, and the one the changes were made from: 60 chains of
 * 1 to 40 random changes (records changed, added, dropped, branches added,
 * dropped and renamed) on trees of up to 600 records.
 */
Test(index, a_log_replayed_with_the_cache_gives_what_each_change_gives)
{
    unsigned r = 11;

    for (int round = 0; round < 60; round++) {
        struct qsnap__model base, cur, plain, cached;
        struct qsnap__apply_cache *c = qsnap__apply_cache_new();
        int steps = 1 + round % 40;

        cr_assert_not_null(c);
        make_model(&base, 1 + (size_t)round * 10, 1, (unsigned)round);
        cr_assert_eq(qsnap__model_clone(&cur, &base), 0);
        cr_assert_eq(qsnap__model_clone(&plain, &base), 0);
        cr_assert_eq(qsnap__model_clone(&cached, &base), 0);
        for (int k = 0; k < steps; k++) {
            struct qsnap__model next;
            char *text = NULL;
            bool exact = false;
            cr_assert_eq(qsnap__model_clone(&next, &cur), 0);
            for (int j = 0; j < 1 + (round + k) % 4; j++)
                random_change(&next, &r, round, k * 8 + j);
            next.gen = cur.gen + 1;
            cr_assert_eq(qsnap__delta_format(&cur, &next, &text, &exact), 0);
            cr_assert(exact, "round %d step %d", round, k);
            cr_assert_eq(qsnap__delta_apply(&plain, text, strlen(text), "plain"), 0,
                         "round %d step %d: %s", round, k, qsnap_error_last()->message);
            cr_assert_eq(qsnap__delta_apply_cached(&cached, text, strlen(text), "cached", c), 0,
                         "round %d step %d: %s", round, k, qsnap_error_last()->message);
            cr_assert(qsnap__model_equal(&plain, &cached), "round %d step %d: the cache differs",
                      round, k);
            free(text);
            /* The next change is made from what a reader has (as the save keeps it). */
            qsnap__model_free(&cur);
            cr_assert_eq(qsnap__model_clone(&cur, &plain), 0);
            qsnap__model_free(&next);
        }
        qsnap__apply_cache_free(c);
        qsnap__model_free(&base);
        qsnap__model_free(&cur);
        qsnap__model_free(&plain);
        qsnap__model_free(&cached);
    }
}

/*
 * Hostile log records: valid changes with digits, letters and whole lines
 * altered at random (ids of records that are not there, places past the end,
 * drops repeated, names garbled) are applied with the lookup cache and
 * without it: the same answer every time, and, when one is accepted, the
 * same model. 400 records on one model, the cache kept across them.
 */
Test(index, damaged_records_get_the_same_answer_with_the_cache)
{
    unsigned r = 5;
    struct qsnap__model plain, cached, cur;
    struct qsnap__apply_cache *c = qsnap__apply_cache_new();

    cr_assert_not_null(c);
    make_model(&cur, 200, 1, 3);
    cr_assert_eq(qsnap__model_clone(&plain, &cur), 0);
    cr_assert_eq(qsnap__model_clone(&cached, &cur), 0);
    for (int k = 0; k < 400; k++) {
        struct qsnap__model next;
        char *text = NULL;
        bool exact = false;
        size_t len;
        int a, b;

        cr_assert_eq(qsnap__model_clone(&next, &cur), 0);
        for (int j = 0; j < 1 + k % 4; j++)
            random_change(&next, &r, 1000 + k, j);
        next.gen = cur.gen + 1;
        cr_assert_eq(qsnap__delta_format(&cur, &next, &text, &exact), 0);
        cr_assert(exact);
        len = strlen(text);
        for (int j = 0; j < 1 + k % 3 && len; j++) {
            size_t at;
            r = r * 1103515245u + 12345u;
            at = (r >> 8) % len;
            if (text[at] >= '0' && text[at] <= '9')
                text[at] = (char)('0' + (r >> 20) % 10); /* another digit */
            else if (text[at] != '\n' && (r >> 20) % 3 == 0)
                text[at] = (char)('a' + (r >> 22) % 26);
        }
        if (k % 7 == 3) { /* a drop line twice */
            char *dup = strstr(text, "drop-");
            if (dup) {
                size_t l = (size_t)(strchr(dup, '\n') - dup) + 1;
                char *t2 = malloc(len + l + 1);
                cr_assert_not_null(t2);
                memcpy(t2, text, (size_t)(dup - text));
                memcpy(t2 + (dup - text), dup, l);
                strcpy(t2 + (dup - text) + l, dup);
                free(text);
                text = t2;
                len = strlen(text);
            }
        }
        a = qsnap__delta_apply(&plain, text, len, "plain");
        b = qsnap__delta_apply_cached(&cached, text, len, "cached", c);
        cr_assert_eq(a, b, "record %d: %d without the cache, %d with it:\n%s", k, a, b, text);
        if (a == 0) {
            cr_assert(qsnap__model_equal(&plain, &cached), "record %d: the cache differs", k);
        } else {
            /* A refused record may have changed part of the model (the reader then
             * refuses the whole store): both start again from the same copy. */
            qsnap__model_free(&plain);
            qsnap__model_free(&cached);
            qsnap__apply_cache_free(c);
            c = qsnap__apply_cache_new();
            cr_assert_not_null(c);
            cr_assert_eq(qsnap__model_clone(&plain, &cur), 0);
            cr_assert_eq(qsnap__model_clone(&cached, &cur), 0);
        }
        free(text);
        qsnap__model_free(&cur);
        cr_assert_eq(qsnap__model_clone(&cur, &plain), 0);
        qsnap__model_free(&next);
    }
    qsnap__apply_cache_free(c);
    qsnap__model_free(&cur);
    qsnap__model_free(&plain);
    qsnap__model_free(&cached);
}

/*
 * A damaged meta file (read unchecked, as a store's open reads it before its
 * log) may hold an id or a branch name twice. A change replayed with the
 * lookup cache kept from earlier changes must touch the record a walk finds
 * (the first), as a change applied alone does: the answer may not depend on
 * how old the cache is. Two changes each: the first moves records (a drop
 * puts the last layer in the dropped one's place; a new node placed first
 * moves the others up; a dropped branch moves the ones after it down), the
 * second replaces the record with the repeated id or name. The first record with it, found by a walk here, is the one
 * changed, the other keeps its content.
 */
static const char *repeated_base =
    "qsnap-store 2\ngen 1\nseq 20\ndisk ../d.qcow2\n"
    "layer 1 file=../d.qcow2 fmt=qcow2 backing=0 frozen=0 disk=1\n"
    "layer 5 file=layers/5a.qcow2 fmt=qcow2 backing=0 frozen=0 disk=0\n"
    "layer 3 file=layers/3.qcow2 fmt=qcow2 backing=0 frozen=0 disk=0\n"
    "layer 7 file=layers/7.qcow2 fmt=qcow2 backing=0 frozen=0 disk=0\n"
    "layer 5 file=layers/5b.qcow2 fmt=qcow2 backing=0 frozen=0 disk=0\n"
    "node 2 parent=0 layer=1 created=0\n"
    "node 4 parent=2 layer=1 created=1\n"
    "node 6 parent=2 layer=1 created=2\n"
    "node 4 parent=2 layer=1 created=3\n"
    "branch X head=1 base=0 created=0\n"
    "branch A head=1 base=0 created=1\n"
    "branch A head=5 base=0 created=2\n"
    "end\n";

static void apply_both(struct qsnap__model *plain, struct qsnap__model *cached,
                       struct qsnap__apply_cache *c, const char *change)
{
    cr_assert_eq(qsnap__delta_apply(plain, change, strlen(change), "plain"), 0, "%s",
                 qsnap_error_last()->message);
    cr_assert_eq(qsnap__delta_apply_cached(cached, change, strlen(change), "cached", c), 0, "%s",
                 qsnap_error_last()->message);
}

Test(index, a_repeated_id_or_name_is_found_where_a_walk_finds_it_with_the_cache)
{
    static const char *const first[] = {
        "drop-layer 7\nqsnap-store 2\ngen 2\nseq 20\ndisk ../d.qcow2\nend\n",
        ("place-node 8 0\nqsnap-store 2\ngen 2\nseq 20\ndisk ../d.qcow2\n"
         "node 8 parent=2 layer=1 created=5\nend\n"),
        "drop-branch X\nqsnap-store 2\ngen 2\nseq 20\ndisk ../d.qcow2\nend\n",
    };
    static const char *const second[] = {
        ("qsnap-store 2\ngen 3\nseq 20\ndisk ../d.qcow2\n"
         "layer 5 file=layers/5c.qcow2 fmt=qcow2 backing=0 frozen=0 disk=0\nend\n"),
        "qsnap-store 2\ngen 3\nseq 20\ndisk ../d.qcow2\nnode 4 parent=2 layer=1 created=99\nend\n",
        "qsnap-store 2\ngen 3\nseq 20\ndisk ../d.qcow2\nbranch A head=7 base=0 created=99\nend\n",
    };

    for (int k = 0; k < 3; k++) {
        struct qsnap__model base, plain, cached;
        struct qsnap__apply_cache *c = qsnap__apply_cache_new();
        unsigned version;
        size_t seen = 0;

        cr_assert_not_null(c);
        cr_assert_eq(qsnap__model_parse_v(&base, repeated_base, strlen(repeated_base), "meta",
                                          &version, false), 0, "%s", qsnap_error_last()->message);
        cr_assert_eq(qsnap__model_clone(&plain, &base), 0);
        cr_assert_eq(qsnap__model_clone(&cached, &base), 0);
        /* The cache is made by a lookup of the same kind in an earlier change. */
        apply_both(&plain, &cached, c, first[k]);
        cr_assert(qsnap__model_equal(&plain, &cached), "kind %d: after the first change", k);
        apply_both(&plain, &cached, c, second[k]);
        cr_assert(qsnap__model_equal(&plain, &cached), "kind %d: the kept cache changed another "
                  "record than a cache of the change's own", k);
        /* Walk: the first record with the id or name took the change, the other did not. */
        if (k == 0) {
            for (size_t i = 0; i < cached.nl; i++) {
                if (cached.layers[i].id != 5)
                    continue;
                cr_assert_str_eq(cached.layers[i].file, seen++ ? "layers/5b.qcow2"
                                                               : "layers/5c.qcow2");
            }
        } else if (k == 1) {
            for (size_t i = 0; i < cached.nn; i++) {
                if (cached.nodes[i].id == 4)
                    cr_assert_eq(cached.nodes[i].created, seen++ ? 3 : 99);
            }
        } else {
            for (size_t i = 0; i < cached.nb; i++) {
                if (!strcmp(cached.branches[i].name, "A"))
                    cr_assert_eq(cached.branches[i].head, seen++ ? 5u : 7u);
            }
        }
        cr_assert_eq(seen, 2, "kind %d: both records with the id or name stay", k);
        qsnap__apply_cache_free(c);
        qsnap__model_free(&base);
        qsnap__model_free(&plain);
        qsnap__model_free(&cached);
    }
}

/*
 * Nodes out of id order (only a damaged meta file has them; qsnap adds each
 * at the end with the next id) while the layers are in order: a change to a
 * node, a new node and a dropped one are still in the change text, and
 * applying it gives the new model. Each of the three alone, then all at
 * once, on models of 30 records.
 */
Test(index, a_change_to_nodes_out_of_id_order_is_formatted_whole)
{
    for (int what = 0; what < 4; what++) {
        struct qsnap__model o, n, again;
        struct qsnap__node tmp;
        char *text = NULL;
        bool exact = false;

        make_model(&o, 30, 1, 7);
        tmp = o.nodes[3]; /* two nodes swapped: ids no longer ascend */
        o.nodes[3] = o.nodes[20];
        o.nodes[20] = tmp;
        cr_assert_eq(qsnap__model_clone(&n, &o), 0);
        n.gen = o.gen + 1;
        if (what == 0 || what == 3) {
            qsnap__str_free(&n, n.nodes[10].name);
            n.nodes[10].name = strdup("renamed");
            n.nodes[20].created += 5;
        }
        if (what == 1 || what == 3) {
            struct qsnap__node *nd = qsnap__add_node(&n);
            cr_assert_not_null(nd);
            nd->layer = n.layers[0].id;
            nd->name = strdup("added");
        }
        if (what == 2 || what == 3)
            qsnap__del_node(&n, n.nodes[5].id);
        cr_assert_eq(qsnap__delta_format(&o, &n, &text, &exact), 0);
        cr_assert_eq(qsnap__model_clone(&again, &o), 0);
        if (exact) {
            cr_assert_eq(qsnap__delta_apply(&again, text, strlen(text), "change"), 0, "%s",
                         qsnap_error_last()->message);
            cr_assert(qsnap__model_equal(&again, &n), "case %d: the change applied gives "
                      "another model:\n%s", what, text);
        }
        cr_assert(exact, "case %d: ids this close are formatted exactly", what);
        free(text);
        qsnap__model_free(&o);
        qsnap__model_free(&n);
        qsnap__model_free(&again);
    }
}

/*
 * A change is len bytes, not a string (a log record ends where the next one's
 * header starts): a text that ends inside "drop-" or "place-", or right
 * after it, is refused without a byte read past its end (each is copied into
 * a buffer of exactly its length, so that ASan sees such a read), and a
 * whole change cut anywhere is refused the same way.
 */
Test(index, a_change_cut_short_is_refused_without_reading_past_it)
{
    static const char *const cuts[] = {"", "d", "dro", "drop", "drop-", "p", "plac", "place",
                                       "place-", "drop-layer", "place-node 4"};
    const char *whole = "place-node 9 1\nqsnap-store 2\ngen 2\nseq 10\ndisk ../d.img\n"
                        "node 9 parent=2 layer=1 created=0\nend\n";
    size_t wl = strlen(whole);

    for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]) + wl; i++) {
        struct qsnap__model m;
        const char *src = i < sizeof(cuts) / sizeof(cuts[0]) ? cuts[i] : whole;
        size_t len = i < sizeof(cuts) / sizeof(cuts[0]) ? strlen(src)
                                                        : i - sizeof(cuts) / sizeof(cuts[0]);
        char *buf = malloc(len ? len : 1);
        int rc;

        cr_assert_not_null(buf);
        memcpy(buf, src, len);
        make_model(&m, 4, 1, 1);
        rc = qsnap__delta_apply(&m, buf, len, "change");
        cr_assert_eq(rc, QSNAP_EINTEGRITY, "%zu bytes of \"%s\": rc %d", len, src, rc);
        free(buf);
        qsnap__model_free(&m);
    }
    { /* and whole, it is a change */
        struct qsnap__model m;
        make_model(&m, 4, 1, 1);
        cr_assert_eq(qsnap__delta_apply(&m, whole, wl, "change"), 0, "%s",
                     qsnap_error_last()->message);
        cr_assert_not_null(qsnap__node(&m, 9));
        qsnap__model_free(&m);
    }
}

/* The smallest "PREFIX-N" that no snapshot or branch has, as trying 1, 2, ... finds it. */
static char *gen_by_trying(const struct qsnap__model *m, const char *prefix)
{
    for (unsigned i = 1;; i++) {
        char *name = NULL;
        cr_assert(asprintf(&name, "%s-%u", prefix, i) > 0);
        if (!qsnap__name_taken(m, name))
            return name;
        free(name);
    }
}

Test(index, generated_names_take_the_smallest_free_number)
{
    struct qsnap__model m;
    static const char *odd[] = {"snap-017", "snap-", "snap-x", "snap-3x", "snap--4", "snapshot-5",
                                "snap-99999999999999999999"};

    make_model(&m, 120, 1, 9);
    for (size_t round = 0; round < 6; round++) {
        /* Names: generated ones for most nodes (some left out), a branch, odd look-alikes. */
        for (size_t i = 0; i < m.nn; i++) {
            char name[64];
            free(m.nodes[i].name);
            m.nodes[i].name = NULL;
            if ((i * 7 + round) % 13 == 0)
                continue;
            if (i < sizeof(odd) / sizeof(odd[0]) && round % 2)
                snprintf(name, sizeof(name), "%s", odd[i]);
            else
                snprintf(name, sizeof(name), "snap-%zu", i + 1 + round);
            m.nodes[i].name = strdup(name);
        }
        free(m.branches[0].name);
        m.branches[0].name = strdup(round % 3 ? "snap-1" : "main");
        {
            char *got = qsnap__gen_name(&m, "snap"), *want = gen_by_trying(&m, "snap");
            cr_assert_not_null(got);
            cr_assert_str_eq(got, want, "round %zu", round);
            free(got);
            free(want);
        }
    }
    qsnap__model_free(&m);
}

/* A lookup answers as a walk does, before and after it builds its map (it does
 * after a few lookups), with a key held twice and with records left out. */
Test(index, lookups_answer_as_a_walk_before_and_after_the_map)
{
    for (unsigned scale = 1; scale <= 100003; scale += 100002) {
        struct qsnap__model m;
        struct qsnap__lookup layers, snaps;
        make_model(&m, 200, scale, 13);
        m.layers[150].id = m.layers[60].id;
        for (size_t i = 100; i < 110; i++)
            m.nodes[i].layer = m.nodes[5].layer;
        qsnap__lookup_layers(&layers, &m);
        qsnap__lookup_init(&snaps, &m.nodes[0].layer, sizeof(m.nodes[0]), m.nn, named, &m);
        for (unsigned round = 0; round < 3; round++) {
            for (size_t i = 0; i < m.nl; i++) {
                unsigned key = m.layers[i].id + round; /* round > 0: mostly keys not there */
                long at, want = -1;
                for (size_t j = 0; j < m.nn && want < 0; j++) {
                    if (m.nodes[j].layer == key && m.nodes[j].name)
                        want = (long)j;
                }
                cr_assert_eq(qsnap__lookup_find(&layers, key, &at), 0);
                cr_assert_eq(at < 0 ? NULL : &m.layers[at], qsnap__layer(&m, key), "layer %u",
                             key);
                cr_assert_eq(qsnap__lookup_find(&snaps, key, &at), 0);
                cr_assert_eq(at, want, "nodes on layer %u: %ld, not %ld", key, at, want);
            }
        }
        cr_assert(layers.built && snaps.built, "the maps were built");
        {
            long at = 0;
            cr_assert_eq(qsnap__lookup_find(&layers, 0, &at), 0);
            cr_assert_eq(at, -1, "key 0 is none");
        }
        qsnap__lookup_free(&layers);
        qsnap__lookup_free(&snaps);
        qsnap__model_free(&m);
    }
}
