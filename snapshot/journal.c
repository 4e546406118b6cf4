/*
 * The journal, DIR/journal: the plan being carried out (its steps and every
 * target model), written atomically before its first step and removed after
 * its last (exec.c says how it is replayed after a crash). A text file: a
 * "qsnap-journal 2" line, the base generation, the step and model counts,
 * one "step" line per step (fields percent-encoded, "-" when empty), then
 * each target model: "delta LEN" and its change from the model before it
 * (the first: from the store's model at the base generation; metalog.c's
 * change form), or "model LEN" and the whole model (when the change cannot
 * say it exactly, and in version 1 journals). Read back, it is hostile input
 * like any store file: every field and path is checked.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "qsnap_int.h"

static int nomem(void)
{
    return qsnap__err(QSNAP_ERROR, NULL, "out of memory");
}

#define JOURNAL_FILE "journal"

/* What `verify` does with a journal that cannot be read (verify.c, docs/ROBUSTNESS.md). */
#define DAMAGED_HINT "'qsnap verify DISK' says what can be done"

/* A journal that cannot be parsed: "PATH: journal is damaged: WHAT". */
static int damaged(const char *path, const char *fmt, ...) QSNAP_PRINTF(2, 3);
static int damaged(const char *path, const char *fmt, ...)
{
    char what[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    return qsnap__err(QSNAP_EINTEGRITY, DAMAGED_HINT, "%s: journal is damaged: %s", path, what);
}

int qsnap__journal_pending(const qsnap_store *s, bool *out)
{
    char *path = qsnap__path(s, JOURNAL_FILE);

    if (!path)
        return nomem();
    *out = qsnap__file_exists(path);
    free(path);
    return 0;
}

/* ---- the journal ---------------------------------------------------------------- */

static void put_field(FILE *f, const char *v)
{
    if (!v || !*v) {
        fputs(" -", f);
        return;
    }
    fputc(' ', f);
    for (const unsigned char *c = (const unsigned char *)v; *c; c++) {
        if ((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
            *c == '.' || *c == '_' || *c == '/' || *c == '+')
            fputc(*c, f);
        else
            fprintf(f, "%%%02X", *c);
    }
}

int qsnap__journal_write(qsnap_store *s, qsnap_plan *p)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f;
    bool all_exact = true;
    int rc = 0;

    /* The records each change gives are what the SAVE steps compare (exec.c). */
    p->changed.n = 0;
    p->changed_known = false;
    f = open_memstream(&buf, &len);
    if (!f)
        return nomem();
    fprintf(f, "qsnap-journal 2\nbase-gen %" PRIu64 "\nsteps %zu\nmodels %zu\n", p->base_gen, p->n,
            p->nm);
    for (size_t i = 0; i < p->n; i++) {
        const struct qsnap__step *st = &p->steps[i];
        fprintf(f, "step %d %u %u %u", (int)st->kind, st->x, st->y, st->z);
        put_field(f, st->a);
        put_field(f, st->b);
        fputc('\n', f);
    }
    for (size_t k = 0; k < p->nm && !rc; k++) {
        char *text = NULL;
        bool exact = false;
        rc = qsnap__delta_format_ex(k ? &p->models[k - 1] : &s->m, &p->models[k], &text, &exact,
                                    NULL, &p->changed);
        all_exact = all_exact && exact;
        if (!rc && exact) {
            fprintf(f, "delta %zu\n%s", strlen(text), text);
        } else if (!rc) {
            rc = qsnap__model_format(&p->models[k], &text);
            if (!rc)
                fprintf(f, "model %zu\n%s", strlen(text), text);
        }
        free(text);
    }
    if (fclose(f) != 0 || !buf) {
        free(buf);
        return nomem();
    }
    if (!rc)
        rc = qsnap__write_atomic(s, JOURNAL_FILE, buf, len);
    free(buf);
    p->changed_known = !rc && all_exact;
    return rc;
}

static char *decode_field(const char *s)
{
    size_t n = strlen(s), j = 0;
    char *out;

    if (!strcmp(s, "-"))
        return NULL;
    out = malloc(n + 1);
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (s[i] == '%' && i + 2 < n + 1 && sscanf(s + i + 1, "%2x", &v) == 1 && v) {
            out[j++] = (char)v;
            i += 2;
        } else {
            out[j++] = s[i];
        }
    }
    out[j] = '\0';
    return out;
}

/* A store-relative path under one of the store's directories, without "..". */
static bool store_rel_ok(const char *rel, bool dirs_only)
{
    if (!rel)
        return false;
    if (dirs_only)
        return !strcmp(rel, "") || !strcmp(rel, "layers") || !strcmp(rel, "state");
    return (!strncmp(rel, "layers/", 7) || !strncmp(rel, "state/", 6)) && !strstr(rel, "..") &&
           !strchr(rel + (rel[0] == 'l' ? 7 : 6), '/');
}

/* Steps that name paths (the others name layer ids, whose files come from checked models). */
static bool journal_path_ok(const struct qsnap__step *st)
{
    if (st->kind == QSNAP__ST_MKDIR)
        return !st->a || store_rel_ok(st->a, true);
    if (st->kind == QSNAP__ST_UNLINK)
        return store_rel_ok(st->a, false);
    if (st->kind == QSNAP__ST_LINK_STATE)
        return st->a && st->a[0] == '/' && store_rel_ok(st->b, false) &&
               !strncmp(st->b, "state/", 6);
    if (st->kind == QSNAP__ST_ADOPT)
        return st->a && st->a[0] == '/' && !strstr(st->a, "/../") && !strstr(st->a, "/./");
    return true;
}

/* Parse a journal (hostile input, like any store file). */
int qsnap__journal_read(const qsnap_store *s, qsnap_plan **out)
{
    char *path = qsnap__path(s, JOURNAL_FILE), *text = NULL, *cur;
    qsnap_plan *p = calloc(1, sizeof(*p));
    size_t nsteps = 0, nmodels = 0, len = 0;
    unsigned jversion = 0;
    FILE *f = NULL;
    struct stat st;
    int rc = 0;

    if (!path || !p) {
        rc = nomem();
        goto out;
    }
    p->op = strdup("recovery");
    {
        /* Without following a link (safe.c). */
        int fd = -1;
        rc = qsnap__open_store_file(s, JOURNAL_FILE, O_RDONLY, &fd);
        if (rc)
            goto out;
        f = fdopen(fd, "r");
        if (!f)
            close(fd);
    }
    if (!f || fstat(fileno(f), &st) < 0) {
        rc = qsnap__err(QSNAP_ERROR, NULL, "%s: cannot read it: %s", path, strerror(errno));
        goto out;
    }
    if ((uint64_t)st.st_size > QSNAP_MAX_META_BYTES * 4u) {
        rc = damaged(path, "%jd bytes, more than a journal can be", (intmax_t)st.st_size);
        goto out;
    }
    text = calloc(1, (size_t)st.st_size + 1);
    if (!text || fread(text, 1, (size_t)st.st_size, f) != (size_t)st.st_size) {
        rc = text ? damaged(path, "short read") : nomem();
        goto out;
    }
    len = (size_t)st.st_size;
    cur = text;
    if (sscanf(cur, "qsnap-journal %u\nbase-gen %" SCNu64 "\nsteps %zu\nmodels %zu\n",
               &jversion, &p->base_gen, &nsteps, &nmodels) != 4 ||
        jversion < 1 || jversion > 2 || nsteps > 100000 || nmodels > 16) {
        rc = damaged(path, "no valid header (\"qsnap-journal 1\" or \"2\", base-gen, steps, "
                           "models)");
        goto out;
    }
    for (int k = 0; k < 4; k++)
        cur = strchr(cur, '\n') ? strchr(cur, '\n') + 1 : cur + strlen(cur);
    p->steps = calloc(nsteps + 1, sizeof(*p->steps));
    p->models = calloc(nmodels + 1, sizeof(*p->models));
    if (!p->steps || !p->models) {
        rc = nomem();
        goto out;
    }
    for (size_t i = 0; i < nsteps; i++) {
        char a[PATH_MAX * 3], b[PATH_MAX * 3];
        int kind;
        struct qsnap__step *sp = &p->steps[i];
        char *nl = strchr(cur, '\n');
        if (!nl || (size_t)(nl - cur) >= sizeof(a) ||
            sscanf(cur, "step %d %u %u %u %s %s", &kind, &sp->x, &sp->y, &sp->z, a, b) != 6 ||
            kind < QSNAP__ST_MKDIR || kind > QSNAP__ST_LAST) {
            rc = damaged(path, "step %zu of %zu", i + 1, nsteps);
            goto out;
        }
        sp->kind = (enum qsnap__step_kind)kind;
        sp->a = decode_field(a);
        sp->b = decode_field(b);
        p->n++;
        /* Paths a journal may name: inside the store, in its own directories. */
        if (!journal_path_ok(sp)) {
            rc = damaged(path, "step %zu names a path outside the store", i + 1);
            goto out;
        }
        if ((sp->kind == QSNAP__ST_SAVE && sp->y >= nmodels) ||
            (sp->kind >= QSNAP__ST_INTERNAL_CREATE && !sp->a) ||
            ((sp->kind == QSNAP__ST_UNLINK || sp->kind == QSNAP__ST_MKDIR) && !sp->a &&
             sp->kind != QSNAP__ST_MKDIR)) {
            rc = damaged(path, "step %zu of %zu", i + 1, nsteps);
            goto out;
        }
        if (sp->kind == QSNAP__ST_MKDIR && !sp->a && !(sp->a = strdup(""))) {
            rc = nomem();
            goto out;
        }
        cur = nl + 1;
    }
    /*
     * A change ("delta") applies to the model before it: the first to the
     * store's model at base-gen. When the store is past a commit point of
     * the plan, its model is that target's (and those before it are not
     * needed to finish the plan: they stand in as copies of it).
     */
    {
        uint64_t at = s->m.gen > p->base_gen ? s->m.gen - p->base_gen - 1 : 0;
        bool past = s->m.gen > p->base_gen;
        for (size_t k = 0; k < nmodels; k++) {
            size_t mlen;
            bool delta;
            char *nl = strchr(cur, '\n');
            if (!nl || (sscanf(cur, "model %zu", &mlen) != 1 &&
                        (jversion < 2 || sscanf(cur, "delta %zu", &mlen) != 1)) ||
                mlen > len - (size_t)(nl + 1 - text)) {
                rc = damaged(path, "model %zu of %zu", k + 1, nmodels);
                goto out;
            }
            delta = cur[0] == 'd';
            if (!delta) {
                rc = qsnap__model_parse(&p->models[k], nl + 1, mlen, path);
            } else if (past && k <= at) {
                rc = qsnap__model_clone(&p->models[k], &s->m);
            } else {
                rc = qsnap__model_clone(&p->models[k], k ? &p->models[k - 1] : &s->m);
                if (!rc)
                    rc = qsnap__delta_apply(&p->models[k], nl + 1, mlen, path);
                if (!rc)
                    rc = qsnap__model_check(&p->models[k], path);
                if (rc)
                    qsnap__model_free(&p->models[k]);
            }
            if (rc == QSNAP_EINTEGRITY) {
                /* The model's own message names the journal: said as damage to it. */
                char msg[1024];
                size_t pl = strlen(path);
                const char *m = qsnap_error_last()->message;
                snprintf(msg, sizeof(msg), "%s",
                         !strncmp(m, path, pl) && !strncmp(m + pl, ": ", 2) ? m + pl + 2 : m);
                rc = damaged(path, "model %zu of %zu: %s", k + 1, nmodels, msg);
            }
            if (rc)
                goto out;
            p->nm++;
            cur = nl + 1 + mlen;
        }
    }
out:
    if (f)
        fclose(f);
    free(text);
    free(path);
    if (rc) {
        qsnap_plan_free(p);
        return rc;
    }
    *out = p;
    return 0;
}

int qsnap__journal_load(qsnap_store *s, qsnap_plan **out)
{
    return qsnap__journal_read(s, out);
}

int qsnap__journal_remove(qsnap_store *s)
{
    int rc = qsnap__unlink_store_file(s, JOURNAL_FILE);

    return rc ? rc : qsnap__fsync_dir(s->dir);
}

int qsnap__journal_set_aside(qsnap_store *s, char *name, size_t size)
{
    time_t now = time(NULL);
    struct tm tm;
    char stamp[32];
    struct stat st;

    if (!gmtime_r(&now, &tm) || !strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", &tm))
        snprintf(stamp, sizeof(stamp), "%jd", (intmax_t)now);
    /* A name no earlier one has: never replaced. */
    snprintf(name, size, "%s.damaged-%s", JOURNAL_FILE, stamp);
    for (unsigned i = 2; qsnap__lstat_store_file(s, name, &st) != QSNAP_ENOTFOUND; i++) {
        if (i > 1000)
            return qsnap__err(QSNAP_ERROR, NULL, "%s/%s: taken", s->dir, name);
        snprintf(name, size, "%s.damaged-%s-%u", JOURNAL_FILE, stamp, i);
    }
    /* renameat from the store directory (safe.c), then that directory synced. */
    return qsnap__rename_store_file(s, JOURNAL_FILE, name);
}
