/*
 * Building plans: each operation works on a copy of the store's model,
 * changes it into the state the operation leads to, and records the file
 * steps that get the files there, in an order that keeps every state's
 * content intact at every point (see exec.c for how each step is made
 * idempotent and crash-safe). Refusals happen here, before anything is
 * written, and name what blocks them and the flag that overrides.
 *
 * This file holds what every planner uses: the plan itself (steps, commit
 * points, deferred removals, summary), the checks made before anything is
 * written, and the printer (qsnap_plan_describe). The planners: create in
 * plan_create.c; revert, switch and branches in plan_branch.c; delete and
 * commit in plan_delete.c; internal snapshots in plan_internal.c.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "qsnap_int.h"

static int nomem(void);

int qsnap__plan_new(qsnap_plan **out, const qsnap_store *s, const char *op)
{
    qsnap_plan *p = calloc(1, sizeof(*p));

    *out = NULL;
    if (!p || !(p->op = strdup(op))) {
        free(p);
        return qsnap__err(QSNAP_ERROR, NULL, "out of memory");
    }
    p->base_gen = s->m.gen;
    /* What this plan reads of its heads from now on is checked again under the
     * hold when it runs (qsnap__recheck_seen): earlier looks do not count. */
    qsnap__seen_reset(s);
    *out = p;
    return 0;
}

/*
 * The opening every planner shares: *t becomes a copy of the store's model;
 * when n (or b) is not NULL, the snapshot (or branch) called name is found
 * in it; when p is not NULL, a new plan for op is made. The steps run in
 * that order and the first failure ends it, which keeps the error each
 * planner returned before this helper existed: out of memory copying the
 * model wins over everything, a name not found (QSNAP_ENOTFOUND, naming it)
 * over out of memory for the plan. Planners that check more before making
 * their plan pass p = NULL and call qsnap__plan_new themselves, so those
 * checks still win over an out-of-memory plan. On failure *t is left freed
 * (and emptied, so freeing it again is harmless) and nothing else is made.
 */
int qsnap__plan_open(const qsnap_store *s, const char *op, struct qsnap__model *t, qsnap_plan **p,
                     const char *name, struct qsnap__node **n, struct qsnap__branch **b)
{
    int rc = qsnap__model_clone(t, &s->m);

    if (!rc && n)
        rc = qsnap__find_snapshot(t, name, n);
    if (!rc && b)
        rc = qsnap__find_branch(t, name, b);
    if (!rc && p)
        rc = qsnap__plan_new(p, s, op);
    if (rc)
        qsnap__model_free(t);
    return rc;
}

/*
 * The close every planner shares: the model copy goes; when rc is not 0 the
 * plan goes too and rc is returned, else the plan is the result (*out).
 */
int qsnap__plan_close(qsnap_plan **out, qsnap_plan *p, struct qsnap__model *t, int rc)
{
    qsnap__model_free(t);
    if (rc) {
        qsnap_plan_free(p);
        return rc;
    }
    *out = p;
    return 0;
}

void qsnap_plan_free(qsnap_plan *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n; i++) {
        free(p->steps[i].a);
        free(p->steps[i].b);
    }
    for (size_t i = 0; i < p->npost; i++) {
        free(p->post[i].a);
        free(p->post[i].b);
    }
    free(p->post);
    qsnap__touch_release(p->touch, p->ntouch);
    qsnap__touch_free(p->touch, p->ntouch);
    qsnap__touch_release(p->made, p->nmade);
    qsnap__touch_free(p->made, p->nmade);
    for (size_t i = 0; i < p->nm; i++)
        qsnap__model_free(&p->models[i]);
    free(p->models);
    qsnap__ids_free(&p->changed);
    free(p->steps);
    free(p->summary);
    free(p->lost);
    free(p->op);
    free(p);
}

int qsnap__add_step(qsnap_plan *p, enum qsnap__step_kind kind, unsigned x, unsigned y, unsigned z,
                    const char *a, const char *b)
{
    struct qsnap__step *st = realloc(p->steps, (p->n + 1) * sizeof(*st));

    if (!st)
        return qsnap__err(QSNAP_ERROR, NULL, "out of memory");
    p->steps = st;
    st = &p->steps[p->n];
    memset(st, 0, sizeof(*st));
    st->kind = kind;
    st->x = x;
    st->y = y;
    st->z = z;
    st->a = a ? strdup(a) : NULL;
    st->b = b ? strdup(b) : NULL;
    if ((a && !st->a) || (b && !st->b))
        return qsnap__err(QSNAP_ERROR, NULL, "out of memory");
    p->n++;
    return 0;
}

/* A removal that must wait for the next commit point (the metadata still names the file). */
int qsnap__defer_unlink(qsnap_plan *p, const char *rel)
{
    struct qsnap__step *st = realloc(p->post, (p->npost + 1) * sizeof(*st));

    if (!st)
        return qsnap__err(QSNAP_ERROR, NULL, "out of memory");
    p->post = st;
    st = &p->post[p->npost];
    memset(st, 0, sizeof(*st));
    st->kind = QSNAP__ST_UNLINK;
    st->a = strdup(rel);
    if (!st->a)
        return qsnap__err(QSNAP_ERROR, NULL, "out of memory");
    p->npost++;
    return 0;
}

/* A commit point: model m, copied (or take, moved and left empty), becomes target model k. */
static int add_save(qsnap_plan *p, const struct qsnap__model *m, struct qsnap__model *take)
{
    struct qsnap__model *ms = realloc(p->models, (p->nm + 1) * sizeof(*ms));
    int rc;

    if (!ms)
        return qsnap__err(QSNAP_ERROR, NULL, "out of memory");
    p->models = ms;
    if (take) {
        p->models[p->nm] = *take;
        memset(take, 0, sizeof(*take));
    } else {
        rc = qsnap__model_clone(&p->models[p->nm], m);
        if (rc)
            return rc;
    }
    p->nm++;
    rc = qsnap__add_step(p, QSNAP__ST_SAVE, 0, (unsigned)(p->nm - 1), 0, NULL, NULL);
    /* Deferred removals follow the commit point that stops naming their files. */
    for (size_t i = 0; !rc && i < p->npost; i++)
        rc = qsnap__add_step(p, p->post[i].kind, 0, 0, 0, p->post[i].a, NULL);
    for (size_t i = 0; i < p->npost; i++)
        free(p->post[i].a);
    p->npost = 0;
    return rc;
}

int qsnap__add_save(qsnap_plan *p, const struct qsnap__model *m)
{
    return add_save(p, m, NULL);
}

int qsnap__add_last_save(qsnap_plan *p, struct qsnap__model *m)
{
    return add_save(p, NULL, m);
}

int qsnap__set_summary(qsnap_plan *p, const char *fmt, ...)
{
    va_list ap;
    int n;

    free(p->summary);
    va_start(ap, fmt);
    n = vasprintf(&p->summary, fmt, ap);
    va_end(ap);
    if (n < 0) {
        p->summary = NULL;
        return qsnap__err(QSNAP_ERROR, NULL, "out of memory");
    }
    return 0;
}

const char *qsnap_plan_summary(const qsnap_plan *p)
{
    return p->summary ? p->summary : "";
}

/* A new overlay layer in the target model, backed by layer `backing`. */
struct qsnap__layer *qsnap__new_overlay(struct qsnap__model *m, unsigned backing)
{
    struct qsnap__layer *l = qsnap__add_layer(m);

    if (!l)
        return NULL;
    if (asprintf(&l->file, "layers/%u.qcow2", l->id) < 0) {
        l->file = NULL;
        m->nl--;
        return NULL;
    }
    l->fmt = QCOW2_FORMAT_QCOW2;
    l->backing = backing;
    return l;
}

/* Refuse while a journal says an operation is unfinished. */
int qsnap__check_no_pending(const qsnap_store *s)
{
    bool pending = false;
    int rc = qsnap__store_dirs_recheck(s); /* a plan starts: the directories as they are now */

    if (!rc)
        rc = qsnap__journal_pending(s, &pending);
    if (rc)
        return rc;
    if (pending) {
        /* A journal that cannot be read cannot be finished: said as what it is. */
        qsnap_plan *jp = NULL;
        rc = qsnap__journal_read(s, &jp);
        qsnap_plan_free(jp);
        if (rc == QSNAP_EINTEGRITY)
            return rc;
        return qsnap__err(QSNAP_EINTEGRITY, QSNAP__GC_HINT,
                          "%s: an earlier operation was interrupted and is not finished", s->dir);
    }
    return 0;
}

int qsnap__check_writable_store(const qsnap_store *s)
{
    if (s->readonly)
        return qsnap__err(QSNAP_EUSAGE, NULL, "store opened read-only");
    return qsnap__check_no_pending(s);
}

/*
 * The files of the disk's own backing chain as the store recorded them when it
 * was made (their size and mtime: a stat each): every state reads them.
 */
static int check_disk_chain(const qsnap_store *s)
{
    const char *hint = "'qsnap verify DISK' checks its fingerprint";
    const struct qsnap__chain *c;
    const char *p = s->m.below;
    size_t i = 0;

    if (!p)
        return 0;
    c = qsnap__disk_chain(s);
    for (struct qsnap__fprec r; *p && qsnap__fprec_parse(&p, true, &r); i++) {
        struct stat st;
        if (!c || i >= c->n)
            return qsnap__err(QSNAP_EINTEGRITY, hint,
                              "%.*s: a file of the disk's own backing chain is missing (the "
                              "chain is not what it was when the store was made)",
                              (int)r.path_len, r.path);
        if (stat(c->path[i], &st) < 0 || (uint64_t)st.st_size != r.size ||
            (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec != r.mtime_ns)
            return qsnap__err(QSNAP_EINTEGRITY, hint,
                              "%s: a file of the disk's own backing chain was modified after the "
                              "store was made",
                              c->path[i]);
    }
    if (c && i < c->n)
        return qsnap__err(QSNAP_EINTEGRITY, hint,
                          "%s: the disk's own backing chain has more files than when the store "
                          "was made",
                          c->path[i]);
    return 0;
}

/* A frozen layer that changed since it was frozen is an integrity problem: refuse. */
int qsnap__check_unchanged(const qsnap_store *s, const struct qsnap__layer *l)
{
    char *path;
    struct stat st;
    int rc = 0;

    if (l->is_disk && (rc = check_disk_chain(s)) != 0)
        return rc;
    if (!l->frozen || !l->have_fp)
        return 0;
    path = qsnap__path(s, l->file);
    if (!path)
        return qsnap__err(QSNAP_ERROR, NULL, "out of memory");
    if (stat(path, &st) < 0)
        rc = qsnap__err(QSNAP_EINTEGRITY, "'qsnap verify DISK' shows what is missing",
                        "%s: layer file is missing", path);
    else if ((uint64_t)st.st_size != l->size ||
             (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec != l->mtime_ns)
        rc = qsnap__err(QSNAP_EINTEGRITY, "'qsnap verify DISK' checks its fingerprint",
                        "%s: frozen layer was modified after it was frozen", path);
    free(path);
    return rc;
}

/* The layer of m with this id through z (m's layers), or NULL; *rc when out of memory. */
static const struct qsnap__layer *chain_layer(struct qsnap__lookup *z,
                                              const struct qsnap__model *m, unsigned id, int *rc)
{
    long at = -1;

    if (!*rc)
        *rc = qsnap__lookup_find(z, id, &at);
    return at >= 0 ? &m->layers[at] : NULL;
}

/* Every frozen layer in the chain of layer id: unchanged. */
int qsnap__check_chain(const qsnap_store *s, const struct qsnap__model *m, unsigned id)
{
    struct qsnap__lookup z;
    int rc = 0;

    qsnap__lookup_layers(&z, m);
    for (const struct qsnap__layer *l = chain_layer(&z, m, id, &rc); l && !rc;
         l = chain_layer(&z, m, l->backing, &rc))
        rc = qsnap__check_unchanged(s, l);
    qsnap__lookup_free(&z);
    return rc;
}

/*
 * A layer's header must name the backing layer the metadata names: a link
 * changed behind qsnap's back (qemu-img rebase -u) would make an operation
 * freeze or copy the wrong content. Refused until verify re-points it.
 */
int qsnap__check_link(const qsnap_store *s, const struct qsnap__model *m, unsigned id)
{
    const struct qsnap__layer *l = qsnap__layer(m, id), *b;
    qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img = NULL;
    qcow2_info info;
    char *path, *want;
    bool ok;
    int rc;

    if (!l || l->fmt != QCOW2_FORMAT_QCOW2 || l->is_disk)
        return 0;
    b = qsnap__layer(m, l->backing);
    path = qsnap__path(s, l->file);
    want = b ? qsnap__path(s, b->file) : NULL;
    if (!path || (b && !want)) {
        free(path);
        free(want);
        return nomem();
    }
    oo.flags = QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_NO_LOCK;
    oo.format = QCOW2_FORMAT_QCOW2;
    rc = qsnap__image_open(s, path, &oo, &img, "'qsnap verify DISK' checks the store");
    if (!rc) {
        qcow2_image_get_info(img, &info);
        /* Exactly the link qsnap wrote: any other name (even one that leads to
         * the same file today, through a link) can lead elsewhere tomorrow. */
        char *link = b ? qsnap__link_name(l->file, b->file) : NULL;
        ok = b ? link && info.backing_name && !strcmp(info.backing_name, link) &&
                     info.backing_format && qcow2_format_from_name(info.backing_format) == b->fmt
               : !info.backing_name;
        free(link);
        if (!ok)
            rc = qsnap__err(QSNAP_EINTEGRITY, "'qsnap verify DISK --repair' re-points it",
                            "%s: backing link was changed behind qsnap's back (it names '%s'; "
                            "the store expects %s)",
                            path, info.backing_name ? info.backing_name : "nothing",
                            b ? b->file : "none");
    }
    qcow2_image_close(img);
    free(path);
    free(want);
    return rc;
}

/*
 * A new overlay on layer `base` makes a chain one deeper than base's: refuse
 * before anything is written when that passes what images may hold.
 */
int qsnap__check_depth(const struct qsnap__model *m, unsigned base)
{
    struct qsnap__lookup z;
    unsigned depth = 1;
    int rc = 0;

    qsnap__lookup_layers(&z, m);
    for (const struct qsnap__layer *l = chain_layer(&z, m, base, &rc); l;
         l = chain_layer(&z, m, l->backing, &rc))
        depth++;
    qsnap__lookup_free(&z);
    if (rc)
        return rc;
    if (depth > QCOW2_MAX_CHAIN_DEPTH)
        return qsnap__err(QSNAP_EREFUSED,
                          "delete snapshots you no longer need ('qsnap delete DISK SNAPSHOT "
                          "--stream' merges their layers), or commit the branch",
                          "a new layer here would make a backing chain of %u layers (at most %u)",
                          depth, QCOW2_MAX_CHAIN_DEPTH);
    return 0;
}

/*
 * A file the plan changes must exist. Whether a running QEMU holds it is
 * found for every touched file at once when the plan runs (inuse.c), so a
 * dry run can list them all.
 */
int qsnap__check_free(const qsnap_store *s, const struct qsnap__model *m, unsigned layer)
{
    const struct qsnap__layer *l = qsnap__layer(m, layer);

    return l ? qsnap__layer_exists(s, l) : 0;
}

bool qsnap__name_taken(const struct qsnap__model *m, const char *name)
{
    return qsnap__node_by_name(m, name) || qsnap__branch_by_name(m, name);
}

int qsnap__check_new_name(const struct qsnap__model *m, const char *name)
{
    int rc = qsnap_name_check(name);

    if (rc)
        return rc;
    if (qsnap__name_taken(m, name))
        return qsnap__err(QSNAP_EUSAGE, "names are unique across snapshots and branches",
                          "'%s' is already the name of a %s", name,
                          qsnap__node_by_name(m, name) ? "snapshot" : "branch");
    return 0;
}

/* N when name is "PREFIX-N" (N in decimal, no leading zero, at most max), else 0. */
static size_t gen_number(const char *name, const char *prefix, size_t pl, size_t max)
{
    size_t v = 0;
    const char *c;

    if (!name || strncmp(name, prefix, pl) || name[pl] != '-' || name[pl + 1] < '1' ||
        name[pl + 1] > '9')
        return 0;
    for (c = name + pl + 1; *c >= '0' && *c <= '9'; c++) {
        v = v * 10 + (size_t)(*c - '0');
        if (v > max)
            return 0;
    }
    return *c ? 0 : v;
}

/*
 * A generated name "PREFIX-N" not yet taken: the smallest such N. The
 * numbers taken are found in one walk of the names (a store whose snapshots
 * all have generated names would otherwise cost a walk per number tried).
 */
char *qsnap__gen_name(const struct qsnap__model *m, const char *prefix)
{
    size_t pl = strlen(prefix), max = m->nn + m->nb + 1; /* a free N is at most this */
    unsigned char *taken = calloc(max + 1, 1);

    if (!taken)
        return NULL;
    for (size_t i = 0; i < m->nn; i++)
        taken[gen_number(m->nodes[i].name, prefix, pl, max)] = 1;
    for (size_t i = 0; i < m->nb; i++)
        taken[gen_number(m->branches[i].name, prefix, pl, max)] = 1;
    for (unsigned i = 1; i < 1000000; i++) {
        char *name;
        if (i <= max && taken[i])
            continue;
        if (asprintf(&name, "%s-%u", prefix, i) < 0)
            break;
        if (!qsnap__name_taken(m, name) && qsnap_name_check(name) == 0) {
            free(taken);
            return name;
        }
        free(name);
    }
    free(taken);
    return NULL;
}

/*
 * The current branch of t and, when head is not NULL, its head layer. A store
 * whose current branch (or its head) is gone is damaged.
 */
int qsnap__current_branch(const qsnap_store *s, const struct qsnap__model *t,
                          struct qsnap__branch **b, struct qsnap__layer **head)
{
    *b = qsnap__branch_by_name(t, t->current);
    if (head)
        *head = *b ? qsnap__layer(t, (*b)->head) : NULL;
    if (!*b || (head && !*head))
        return qsnap__err(QSNAP_EINTEGRITY, QSNAP__GC_HINT, "%s: the current branch is missing",
                          s->dir);
    return 0;
}

int qsnap__find_snapshot(const struct qsnap__model *m, const char *name, struct qsnap__node **out)
{
    *out = qsnap__node_by_name(m, name);
    if (!*out)
        return qsnap__err(QSNAP_ENOTFOUND, "'qsnap list DISK' shows the snapshots",
                          "no snapshot named '%s'%s", name ? name : "",
                          qsnap__branch_by_name(m, name) ? " (that is a branch)" : "");
    return 0;
}

int qsnap__find_branch(const struct qsnap__model *m, const char *name, struct qsnap__branch **out)
{
    *out = qsnap__branch_by_name(m, name);
    if (!*out)
        return qsnap__err(QSNAP_ENOTFOUND, "'qsnap branch DISK' lists the branches",
                          "no branch named '%s'%s", name ? name : "",
                          qsnap__node_by_name(m, name) ? " (that is a snapshot)" : "");
    return 0;
}

static int nomem(void)
{
    return qsnap__err(QSNAP_ERROR, NULL, "out of memory");
}

/* ---- describe ---------------------------------------------------------------- */

static const char *step_name(enum qsnap__step_kind k)
{
    switch (k) {
    case QSNAP__ST_MKDIR:
        return "mkdir";
    case QSNAP__ST_CREATE:
        return "create";
    case QSNAP__ST_FREEZE:
        return "freeze";
    case QSNAP__ST_THAW:
        return "thaw";
    case QSNAP__ST_LINK_STATE:
        return "link-state";
    case QSNAP__ST_STREAM:
        return "stream";
    case QSNAP__ST_SET_BACKING:
        return "set-backing";
    case QSNAP__ST_PRESERVE:
        return "preserve";
    case QSNAP__ST_COMMIT:
        return "commit";
    case QSNAP__ST_SAVE:
        return "save-metadata";
    case QSNAP__ST_UNLINK:
        return "remove";
    case QSNAP__ST_INTERNAL_CREATE:
        return "internal-create";
    case QSNAP__ST_INTERNAL_APPLY:
        return "internal-apply";
    case QSNAP__ST_INTERNAL_DELETE:
        return "internal-delete";
    case QSNAP__ST_ADOPT:
        return "adopt";
    }
    return "?";
}

/* The file of layer id in whichever model knows it (the last target first). */
static const char *layer_file(const qsnap_plan *p, unsigned id)
{
    for (size_t k = p->nm; k-- > 0;) {
        const struct qsnap__layer *l = qsnap__layer(&p->models[k], id);
        if (l)
            return l->file;
    }
    return "?";
}

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c == '"' || *c == '\\')
            fprintf(f, "\\%c", *c);
        else if (*c < 0x20)
            fprintf(f, "\\u%04x", *c);
        else
            fputc(*c, f);
    }
    fputc('"', f);
}

int qsnap_plan_describe(const qsnap_plan *p, bool json, char **out)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);

    if (!f)
        return nomem();
    if (json) {
        fprintf(f, "{\"version\": 1, \"op\": ");
        json_str(f, p->op);
        fprintf(f, ", \"summary\": ");
        json_str(f, qsnap_plan_summary(p));
        fprintf(f, ", \"steps\": [");
    }
    for (size_t i = 0; i < p->n; i++) {
        const struct qsnap__step *st = &p->steps[i];
        char line[1024];
        switch (st->kind) {
        case QSNAP__ST_MKDIR:
            snprintf(line, sizeof(line), "make directory %s", st->a[0] ? st->a : "(the store)");
            break;
        case QSNAP__ST_CREATE:
            snprintf(line, sizeof(line), "create empty overlay %s on %s", layer_file(p, st->x),
                     layer_file(p, qsnap__layer(&p->models[p->nm - 1], st->x)
                                       ? qsnap__layer(&p->models[p->nm - 1], st->x)->backing
                                       : 0));
            break;
        case QSNAP__ST_FREEZE:
            snprintf(line, sizeof(line), "freeze %s (read-only, fingerprint)", layer_file(p, st->x));
            break;
        case QSNAP__ST_THAW:
            snprintf(line, sizeof(line), "make %s writable", layer_file(p, st->x));
            break;
        case QSNAP__ST_LINK_STATE:
            snprintf(line, sizeof(line), "copy state file %s to %s", st->a, st->b);
            break;
        case QSNAP__ST_STREAM:
            snprintf(line, sizeof(line), "stream into %s what it reads through, then back it by %s",
                     layer_file(p, st->x), st->y ? layer_file(p, st->y) : "nothing");
            break;
        case QSNAP__ST_SET_BACKING:
            snprintf(line, sizeof(line), "re-point %s at %s (same content)", layer_file(p, st->x),
                     layer_file(p, st->y));
            break;
        case QSNAP__ST_PRESERVE:
            snprintf(line, sizeof(line),
                     "create %s on %s holding %s's data where %s has changes",
                     layer_file(p, st->x), layer_file(p, st->y), layer_file(p, st->y),
                     layer_file(p, st->z));
            break;
        case QSNAP__ST_COMMIT:
            snprintf(line, sizeof(line), "commit %s into %s and empty it", layer_file(p, st->x),
                     layer_file(p, st->y));
            break;
        case QSNAP__ST_SAVE:
            snprintf(line, sizeof(line), "save the metadata (commit point %u)", st->y + 1);
            break;
        case QSNAP__ST_UNLINK:
            snprintf(line, sizeof(line), "remove %s", st->a);
            break;
        case QSNAP__ST_INTERNAL_CREATE:
            snprintf(line, sizeof(line), "record internal snapshot %s inside %s (its qcow2 "
                     "snapshot table; the file stays the writable head)", st->a,
                     layer_file(p, st->x));
            break;
        case QSNAP__ST_INTERNAL_APPLY:
            snprintf(line, sizeof(line), "revert %s in place to its internal snapshot %s",
                     layer_file(p, st->x), st->a);
            break;
        case QSNAP__ST_INTERNAL_DELETE:
            snprintf(line, sizeof(line), "delete internal snapshot %s from %s", st->a,
                     layer_file(p, st->x));
            break;
        case QSNAP__ST_ADOPT:
            snprintf(line, sizeof(line), "move %s into the store as %s", st->a,
                     layer_file(p, st->x));
            break;
        }
        if (json) {
            fprintf(f, "%s{\"step\": ", i ? ", " : "");
            json_str(f, step_name(st->kind));
            fprintf(f, ", \"text\": ");
            json_str(f, line);
            fprintf(f, "}");
        } else {
            fprintf(f, "%2zu. %s\n", i + 1, line);
        }
    }
    if (json)
        fprintf(f, "]");
    else if (p->lost)
        fprintf(f, "changes lost (no snapshot keeps them): %s\n", p->lost);
    if (p->checked) {
        /* What qsnap_plan_check() found (inuse.c). */
        if (json)
            fprintf(f, ", \"checked\": [");
        else
            fprintf(f, "files checked for other users (QEMU's image locks):\n");
        for (size_t i = 0; i < p->ntouch; i++) {
            const struct qsnap__touch *t = &p->touch[i];
            if (json) {
                fprintf(f, "%s{\"file\": ", i ? ", " : "");
                json_str(f, t->file);
                fprintf(f, ", \"role\": ");
                json_str(f, t->role);
                fprintf(f, ", \"held\": %s}", t->held ? "true" : "false");
            } else {
                fprintf(f, "    %s (%s): %s\n", t->file, t->role,
                        t->held ? "HELD by another process (a running QEMU?)" : "free");
            }
        }
        if (json)
            fprintf(f, "]");
    }
    if (json)
        fprintf(f, "}\n");
    if (fclose(f) != 0 || !buf) {
        free(buf);
        return nomem();
    }
    *out = buf;
    return 0;
}
