/* tree_fixture: helpers for the snapshot-tree suites (see tree_fixture.h). */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qcow2/qcow2.h"
#include "qemu_oracle.h"
#include "qsnap_int.h"
#include "tree_fixture.h"

/* ---- the suites' per-test state -------------------------------------------- */

char tf_dir[256], tf_disk[512];
uint8_t *tf_d0;
tf_model tf_m;

void tf_suite_init(int pattern)
{
    tf_d0 = calloc(1, TF_SIZE);
    cr_assert_not_null(tf_d0);
    memset(tf_d0, pattern, 1u << 20);
    tf_dir[0] = '\0';
}

void tf_suite_fini(void)
{
    free(tf_d0);
    tf_d0 = NULL;
    tf_model_free(&tf_m);
    if (tf_dir[0])
        qo_rmtree(tf_dir);
    tf_dir[0] = '\0';
}

void tf_ok(int rc, const char *what)
{
    cr_assert_eq(rc, 0, "%s: rc %d: %s", what, rc, qsnap_error_last()->message);
}

qsnap_store *tf_start_s1(const char *tag, tf_model *m)
{
    qsnap_store *s;

    tf_setup(tf_dir, sizeof(tf_dir), tf_disk, sizeof(tf_disk), tag, false, tf_d0);
    s = tf_open(tf_disk, QSNAP_OPEN_CREATE);
    tf_ok(tf_create(s, "s1"), "create s1");
    tf_model_set(m, "s1", false, tf_d0);
    tf_model_set(m, "main", true, tf_d0);
    return s;
}

void tf_write_state(qsnap_store *s, tf_model *m, const char *name, int pattern, uint64_t off,
                    uint64_t len)
{
    char *f = tf_file_of(s, name);

    cr_assert_not_null(f, "no file for %s", name);
    tf_lib_write(f, pattern, off, len);
    tf_model_write(m, name, pattern, off, len);
    free(f);
}

/* ---- the model ------------------------------------------------------------ */

void tf_model_free(tf_model *m)
{
    for (size_t i = 0; i < m->n; i++)
        free(m->s[i].data);
    m->n = 0;
}

void tf_model_copy(tf_model *dst, const tf_model *src)
{
    dst->n = 0;
    for (size_t i = 0; i < src->n; i++)
        tf_model_set(dst, src->s[i].name, src->s[i].branch, src->s[i].data);
}

static tf_state *find_state(tf_model *m, const char *name)
{
    for (size_t i = 0; i < m->n; i++) {
        if (!strcmp(m->s[i].name, name))
            return &m->s[i];
    }
    return NULL;
}

uint8_t *tf_model_get(tf_model *m, const char *name)
{
    tf_state *st = find_state(m, name);

    return st ? st->data : NULL;
}

void tf_model_set(tf_model *m, const char *name, bool branch, const uint8_t *data)
{
    tf_state *st = find_state(m, name);

    if (!st) {
        cr_assert_lt(m->n, TF_MAX_STATES);
        st = &m->s[m->n++];
        snprintf(st->name, sizeof(st->name), "%s", name);
        st->data = malloc(TF_SIZE);
        cr_assert_not_null(st->data);
    }
    st->branch = branch;
    if (data != st->data)
        memcpy(st->data, data, TF_SIZE);
}

void tf_model_del(tf_model *m, const char *name)
{
    for (size_t i = 0; i < m->n; i++) {
        if (!strcmp(m->s[i].name, name)) {
            free(m->s[i].data);
            m->s[i] = m->s[m->n - 1];
            m->n--;
            return;
        }
    }
    cr_assert_fail("model: no state named %s", name);
}

void tf_model_write(tf_model *m, const char *name, int pattern, uint64_t off, uint64_t len)
{
    uint8_t *d = tf_model_get(m, name);

    cr_assert_not_null(d, "model: no state named %s", name);
    cr_assert_leq(off + len, TF_SIZE);
    memset(d + off, pattern, len);
}

/* ---- files and processes --------------------------------------------------- */

void tf_setup(char *dir, size_t dir_len, char *disk, size_t disk_len, const char *tag, bool qcow2,
              const uint8_t *content)
{
    char tmp[512], out[4096];

    cr_assert_eq(qo_mkdtemp(dir, dir_len, tag), 0);
    snprintf(disk, disk_len, "%s/%s", dir, qcow2 ? "disk.qcow2" : "disk.img");
    if (!qcow2) {
        cr_assert_eq(qo_write_file(disk, content, TF_SIZE), 0);
        return;
    }
    snprintf(tmp, sizeof(tmp), "%s/.src.raw", dir);
    cr_assert_eq(qo_write_file(tmp, content, TF_SIZE), 0);
    cr_assert_eq(qo_sh(out, sizeof(out), "qemu-img convert -f raw -O qcow2 '%s' '%s'", tmp, disk),
                 0, "%s", out);
    unlink(tmp);
}

void tf_vm_write(const char *path, int pattern, uint64_t off, uint64_t len)
{
    char out[4096];
    int rc = qo_sh(out, sizeof(out), "qemu-io -f qcow2 -c 'write -P %d %" PRIu64 " %" PRIu64 "' '%s'",
                   pattern, off, len, path);

    cr_assert_eq(rc, 0, "qemu-io write on %s failed: %s", path, out);
    cr_assert(strstr(out, "wrote"), "qemu-io on %s: %s", path, out);
}

void tf_lib_write(const char *path, int pattern, uint64_t off, uint64_t len)
{
    qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img = NULL;
    uint8_t *buf = malloc(len);
    int rc;

    cr_assert_not_null(buf);
    memset(buf, pattern, len);
    oo.flags = QCOW2_OPEN_RDWR;
    rc = qcow2_image_open(&img, path, &oo);
    cr_assert_eq(rc, 0, "open %s: %s", path, qcow2_error_last()->message);
    rc = qcow2_image_write(img, buf, len, off);
    if (!rc)
        rc = qcow2_image_flush(img);
    cr_assert_eq(rc, 0, "write %s: %s", path, qcow2_error_last()->message);
    qcow2_image_close(img);
    free(buf);
}

int tf_digest_file(const char *path, uint8_t out[16])
{
    qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img = NULL;
    int rc;

    oo.flags = QCOW2_OPEN_NO_LOCK;
    rc = qcow2_image_open(&img, path, &oo);
    if (rc)
        return rc;
    rc = qcow2_image_digest(img, out, NULL, NULL);
    qcow2_image_close(img);
    return rc;
}

void tf_digest_buf(const char *dir, const uint8_t *buf, size_t len, uint8_t out[16])
{
    char path[512];
    qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img = NULL;

    snprintf(path, sizeof(path), "%s/.expected.raw", dir);
    cr_assert_eq(qo_write_file(path, buf, len), 0);
    oo.format = QCOW2_FORMAT_RAW;
    oo.flags = QCOW2_OPEN_NO_LOCK;
    cr_assert_eq(qcow2_image_open(&img, path, &oo), 0, "%s", qcow2_error_last()->message);
    cr_assert_eq(qcow2_image_digest(img, out, NULL, NULL), 0);
    qcow2_image_close(img);
    unlink(path);
}

/* ---- store operations ------------------------------------------------------- */

qsnap_store *tf_open(const char *disk, unsigned flags)
{
    qsnap_store *s = NULL;
    int rc = qsnap_store_open(&s, disk, flags);

    cr_assert_eq(rc, 0, "qsnap_store_open(%s): %d %s", disk, rc, qsnap_error_last()->message);
    return s;
}

int tf_exec(qsnap_store *s, qsnap_plan *p, char **summary)
{
    qsnap_exec_opts eo = QSNAP_EXEC_OPTS_INIT;
    int rc = qsnap_plan_execute(s, p, &eo);

    if (summary)
        *summary = strdup(qsnap_plan_summary(p));
    qsnap_plan_free(p);
    return rc;
}

int tf_create_opts(qsnap_store *s, const qsnap_create_opts *co)
{
    qsnap_plan *p = NULL;
    int rc = qsnap_plan_create(&p, s, co);

    return rc ? rc : tf_exec(s, p, NULL);
}

int tf_create(qsnap_store *s, const char *name)
{
    qsnap_create_opts co = QSNAP_CREATE_OPTS_INIT;

    co.name = name;
    return tf_create_opts(s, &co);
}

int tf_revert(qsnap_store *s, const char *snap, const char *new_branch, bool discard,
              char **summary)
{
    qsnap_plan *p = NULL;
    int rc = qsnap_plan_revert(&p, s, snap, new_branch, discard);

    return rc ? rc : tf_exec(s, p, summary);
}

int tf_switch(qsnap_store *s, const char *branch)
{
    qsnap_plan *p = NULL;
    int rc = qsnap_plan_switch(&p, s, branch);

    return rc ? rc : tf_exec(s, p, NULL);
}

int tf_branch(qsnap_store *s, const char *name, const char *at)
{
    qsnap_plan *p = NULL;
    int rc = qsnap_plan_branch_create(&p, s, name, at);

    return rc ? rc : tf_exec(s, p, NULL);
}

int tf_delete(qsnap_store *s, const char *snap, unsigned flags, char **summary)
{
    qsnap_plan *p = NULL;
    int rc = qsnap_plan_delete(&p, s, snap, flags);

    return rc ? rc : tf_exec(s, p, summary);
}

int tf_commit(qsnap_store *s, const char *branch)
{
    qsnap_plan *p = NULL;
    int rc = qsnap_plan_commit(&p, s, branch);

    return rc ? rc : tf_exec(s, p, NULL);
}

char *tf_file_of(qsnap_store *s, const char *name)
{
    qsnap_node *l = NULL;
    size_t n = 0;
    char *file = NULL;

    cr_assert_eq(qsnap_list(s, &l, &n), 0, "%s", qsnap_error_last()->message);
    for (size_t i = 0; i < n; i++) {
        if (!strcmp(l[i].name, name))
            file = strdup(l[i].file);
    }
    qsnap_list_free(l, n);
    return file;
}

char *tf_current_path(qsnap_store *s, char *name_out, size_t name_len)
{
    qsnap_node *c = NULL;
    char *path;

    cr_assert_eq(qsnap_current(s, &c), 0, "%s", qsnap_error_last()->message);
    cr_assert_eq(c->kind, QSNAP_BRANCH);
    cr_assert(c->current);
    path = strdup(c->file);
    if (name_out)
        snprintf(name_out, name_len, "%s", c->name);
    qsnap_list_free(c, 1);
    return path;
}

/* ---- checks ------------------------------------------------------------------ */

bool tf_store_matches(qsnap_store *s, const tf_model *m, const char *dir, char *why,
                      size_t why_len)
{
    qsnap_node *l = NULL;
    size_t n = 0, named = 0;
    bool ok = true;
    int rc = qsnap_list(s, &l, &n);

    if (rc) {
        snprintf(why, why_len, "qsnap_list: %s", qsnap_error_last()->message);
        return false;
    }
    for (size_t i = 0; i < n && ok; i++) {
        const tf_state *st = NULL;
        uint8_t got[16], want[16];

        if (l[i].kind == QSNAP_UNNAMED)
            continue;
        named++;
        for (size_t k = 0; k < m->n; k++) {
            if (!strcmp(m->s[k].name, l[i].name))
                st = &m->s[k];
        }
        if (!st) {
            snprintf(why, why_len, "%s %s is listed but not expected",
                     l[i].kind == QSNAP_BRANCH ? "branch" : "snapshot", l[i].name);
            ok = false;
            break;
        }
        if (st->branch != (l[i].kind == QSNAP_BRANCH)) {
            snprintf(why, why_len, "%s is listed as a %s", l[i].name,
                     l[i].kind == QSNAP_BRANCH ? "branch" : "snapshot");
            ok = false;
            break;
        }
        if (l[i].internal) {
            /* An internal snapshot lives inside its head: read it through export. */
            char out[1024];
            snprintf(out, sizeof(out), "%s/.tf-internal.raw", dir);
            rc = qsnap_export(s, l[i].name, out, QCOW2_FORMAT_RAW, NULL, NULL);
            if (!rc)
                rc = tf_digest_file(out, got);
            unlink(out);
            if (rc) {
                snprintf(why, why_len, "internal %s: export or digest failed: %s", l[i].name,
                         qsnap_error_last()->message);
                ok = false;
                break;
            }
            tf_digest_buf(dir, st->data, TF_SIZE, want);
            if (memcmp(got, want, 16) != 0) {
                snprintf(why, why_len, "internal snapshot %s: content differs from the model",
                         l[i].name);
                ok = false;
                break;
            }
            continue;
        }
        rc = tf_digest_file(l[i].file, got);
        if (rc) {
            snprintf(why, why_len, "%s (%s): digest failed: %s", l[i].name, l[i].file,
                     qcow2_error_last()->message);
            ok = false;
            break;
        }
        tf_digest_buf(dir, st->data, TF_SIZE, want);
        if (memcmp(got, want, 16) != 0) {
            /* Find the first differing 64 KiB for the message. */
            qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
            qcow2_image *img = NULL;
            uint8_t *buf = malloc(TF_SIZE);
            uint64_t first = UINT64_MAX;
            oo.flags = QCOW2_OPEN_NO_LOCK;
            if (buf && qcow2_image_open(&img, l[i].file, &oo) == 0 &&
                qcow2_image_read(img, buf, TF_SIZE, 0) == 0) {
                for (uint64_t o = 0; o < TF_SIZE && first == UINT64_MAX; o++)
                    if (buf[o] != st->data[o])
                        first = o;
            }
            snprintf(why, why_len,
                     "%s %s (%s): content differs from the model (first at 0x%" PRIx64
                     ": got 0x%02x, want 0x%02x)",
                     st->branch ? "branch" : "snapshot", l[i].name, l[i].file, first,
                     first < TF_SIZE ? buf[first] : 0, first < TF_SIZE ? st->data[first] : 0);
            qcow2_image_close(img);
            free(buf);
            ok = false;
        }
    }
    if (ok && named != m->n) {
        snprintf(why, why_len, "%zu snapshots and branches listed, the model has %zu", named, m->n);
        ok = false;
    }
    qsnap_list_free(l, n);
    return ok;
}

void tf_qemu_check_all(const char *store_dir, const char *disk, const char *step)
{
    char path[1024], out[8192];
    DIR *d;
    struct dirent *e;
    size_t len = strlen(disk);

    if (len > 6 && !strcmp(disk + len - 6, ".qcow2")) {
        cr_assert_eq(qo_sh(out, sizeof(out), "qemu-img check -f qcow2 '%s'", disk), 0,
                     "%s: qemu-img check %s: %s", step, disk, out);
    }
    snprintf(path, sizeof(path), "%s/layers", store_dir);
    d = opendir(path);
    if (!d)
        return;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (e->d_name[0] == '.' || n < 6 || strcmp(e->d_name + n - 6, ".qcow2"))
            continue;
        snprintf(path, sizeof(path), "%s/layers/%s", store_dir, e->d_name);
        cr_assert_eq(qo_sh(out, sizeof(out), "qemu-img check -f qcow2 '%s'", path), 0,
                     "%s: qemu-img check %s: %s", step, path, out);
    }
    closedir(d);
}

void tf_check_store(qsnap_store *s, const tf_model *m, const char *dir, const char *step)
{
    char why[1024];
    qsnap_finding *f = NULL;
    size_t nf = 0;
    int rc;

    cr_assert(tf_store_matches(s, m, dir, why, sizeof(why)), "after %s: %s", step, why);
    {
        char disk[1024];
        snprintf(disk, sizeof(disk), "%s", qsnap_store_path(s));
        if (strlen(disk) > 6)
            disk[strlen(disk) - 6] = '\0'; /* DISK.qsnap -> DISK */
        tf_qemu_check_all(qsnap_store_path(s), disk, step);
    }
    rc = qsnap_verify(s, false, &f, &nf);
    if (rc) {
        char msg[4096] = "";
        for (size_t i = 0; i < nf; i++) {
            if (f[i].problem && strlen(msg) + strlen(f[i].message) + 4 < sizeof(msg)) {
                strcat(msg, f[i].message);
                strcat(msg, "; ");
            }
        }
        cr_assert_eq(rc, 0, "after %s: qsnap_verify found problems: %s", step, msg);
    }
    qsnap_verify_free(f, nf);
}

/* ---- frozen layers ------------------------------------------------------------ */

static int64_t mtime_ns(const char *path)
{
    struct stat st;

    if (stat(path, &st) < 0)
        return -1;
    return (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
}

void tf_frozen_record(tf_frozen *fz, qsnap_store *s)
{
    qsnap_node *l = NULL;
    size_t n = 0;

    cr_assert_eq(qsnap_list(s, &l, &n), 0);
    for (size_t i = 0; i < n; i++) {
        bool known = false;
        if (l[i].kind == QSNAP_BRANCH || l[i].internal) /* internal: inside a writable head */
            continue;
        for (size_t k = 0; k < fz->n && !known; k++)
            known = !strcmp(fz->f[k].path, l[i].file);
        if (known)
            continue;
        cr_assert_lt(fz->n, TF_MAX_FROZEN);
        snprintf(fz->f[fz->n].path, sizeof(fz->f[fz->n].path), "%s", l[i].file);
        cr_assert_eq(qcow2_file_fingerprint(l[i].file, fz->f[fz->n].fp), 0);
        fz->f[fz->n].mtime_ns = mtime_ns(l[i].file);
        fz->n++;
    }
    qsnap_list_free(l, n);
}

void tf_frozen_reset(tf_frozen *fz, qsnap_store *s)
{
    fz->n = 0;
    tf_frozen_record(fz, s);
}

void tf_frozen_check(tf_frozen *fz, const char *const *exempt, const char *step)
{
    for (size_t k = 0; k < fz->n;) {
        uint8_t fp[16];
        bool ex = false;
        struct stat st;

        if (stat(fz->f[k].path, &st) < 0) {
            fz->f[k] = fz->f[--fz->n];
            continue;
        }
        for (size_t e = 0; exempt && exempt[e] && !ex; e++)
            ex = !strcmp(exempt[e], fz->f[k].path);
        cr_assert_eq(qcow2_file_fingerprint(fz->f[k].path, fp), 0);
        if (ex) {
            memcpy(fz->f[k].fp, fp, 16);
            fz->f[k].mtime_ns = mtime_ns(fz->f[k].path);
        } else {
            cr_assert(!memcmp(fp, fz->f[k].fp, 16),
                      "after %s: frozen layer %s changed (fingerprint)", step, fz->f[k].path);
            cr_assert_eq(mtime_ns(fz->f[k].path), fz->f[k].mtime_ns,
                         "after %s: frozen layer %s changed (mtime)", step, fz->f[k].path);
        }
        k++;
    }
}

/* ---- file tree snapshots -------------------------------------------------------- */

static void snap_dir(FILE *f, const char *root, const char *rel)
{
    char path[1024];
    struct dirent **ents = NULL;
    int n;

    snprintf(path, sizeof(path), "%s%s%s", root, rel[0] ? "/" : "", rel);
    n = scandir(path, &ents, NULL, alphasort);
    for (int i = 0; i < n; i++) {
        char r[1024], p[1200];
        struct stat st;
        const char *nm = ents[i]->d_name;
        if (!strcmp(nm, ".") || !strcmp(nm, "..")) {
            free(ents[i]);
            continue;
        }
        snprintf(r, sizeof(r), "%s%s%s", rel, rel[0] ? "/" : "", nm);
        snprintf(p, sizeof(p), "%s/%s", root, r);
        free(ents[i]);
        if (lstat(p, &st) < 0)
            continue;
        if (S_ISDIR(st.st_mode)) {
            fprintf(f, "%s/ mode %o\n", r, (unsigned)st.st_mode);
            snap_dir(f, root, r);
        } else {
            uint8_t fp[16] = {0};
            if (S_ISREG(st.st_mode))
                (void)qcow2_file_fingerprint(p, fp);
            fprintf(f, "%s size %lld mode %o ino %llu mtime %lld.%09ld fp ", r,
                    (long long)st.st_size, (unsigned)st.st_mode, (unsigned long long)st.st_ino,
                    (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
            for (int b = 0; b < 16; b++)
                fprintf(f, "%02x", fp[b]);
            fputc('\n', f);
        }
    }
    free(ents);
}

char *tf_tree_snapshot(const char *dir)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);

    cr_assert_not_null(f);
    snap_dir(f, dir, "");
    fclose(f);
    return buf;
}

size_t tf_plan_steps(const qsnap_plan *p)
{
    char *text = NULL;
    size_t n = 0;

    cr_assert_eq(qsnap_plan_describe(p, false, &text), 0);
    /* The numbered lines: the others say what the plan drops, or what it checked. */
    for (const char *c = text; c && *c; c = strchr(c, '\n'), c = c ? c + 1 : NULL) {
        size_t k;
        char dot;
        n += sscanf(c, "%zu%c", &k, &dot) == 2 && dot == '.';
    }
    free(text);
    return n;
}

void tf_meta_as_text(const char *disk, unsigned version)
{
    qsnap_store *s = NULL;
    char meta[600], log[600], *text = NULL;

    snprintf(meta, sizeof(meta), "%s.qsnap/meta", disk);
    snprintf(log, sizeof(log), "%s.qsnap/meta.log", disk);
    tf_ok(qsnap_store_open(&s, disk, 0), "open to rewrite meta as text");
    if (qsnap__file_exists(log)) {
        tf_ok(qsnap__save_model(s, &s->m), "fold the log");
        cr_assert(!qsnap__file_exists(log), "meta.log is still there after a compaction");
    }
    tf_ok(qsnap__model_format(&s->m, &text), "format the model");
    cr_assert(!strncmp(text, "qsnap-store 2\n", 14), "the text form is not version 2");
    text[12] = (char)('0' + version);
    cr_assert_eq(qo_write_file(meta, text, strlen(text)), 0, "write %s", meta);
    free(text);
    qsnap_store_close(s);
}
