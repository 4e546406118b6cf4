/*
 * The VM path: one path a VM's configuration names for the life of a store,
 * that always opens the current branch's head.
 *
 * It is DIR/layers/current.qcow2, a symbolic link to the current head
 * ("5.qcow2"), in the same directory as every head and layer. QEMU and
 * libvirt resolve a relative backing name against the directory of the path
 * they opened, not against the link's target; since link and heads share
 * one directory, both resolve every backing name of the chain to the same
 * file, and so does anything that follows the link first.
 *
 * Changing it is atomic: a new link is made under a temporary name
 * (layers/.tmp-current) and renamed over the old one, then the directory is
 * synced. Anything that opens the path while a switch runs opens the old
 * head or the new one, never neither; and while an operation runs it holds
 * the locks of both heads (inuse.c), so a QEMU started meanwhile fails to
 * take its image lock instead of running on a head that stops being current.
 *
 * The link is derived from the metadata: exec.c points it at the current
 * head right after each commit point that saves the metadata and again when
 * a plan (or the replay of a journal) ends, before the journal goes. A crash
 * between the metadata and the link leaves the journal, and the replay
 * points the link. verify reports a link that is missing or points
 * elsewhere, and --repair points it again.
 *
 * A link that points elsewhere (re-pointed by hand) may have a VM running on
 * the file it names: every operation tests and holds that file too
 * (inuse.c), and one with steps refuses while the link does not point at
 * the current head (qsnap__vm_path_refuse, before anything changes), so
 * only verify --repair re-points it, and only while no VM holds that file.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qsnap_int.h"

#define VM_LINK "layers/current.qcow2"
#define VM_LINK_TMP "layers/.tmp-current"
#define VM_LINK_BASE "current.qcow2"
#define VM_LINK_TMP_BASE ".tmp-current"

char *qsnap__vm_path(const qsnap_store *s)
{
    return qsnap__path(s, VM_LINK);
}

/* What the link must hold for model m (malloc'd), or NULL with *none when m has no current head. */
static char *want_target(const struct qsnap__model *m, bool *none)
{
    const struct qsnap__branch *b = m->current ? qsnap__branch_by_name(m, m->current) : NULL;
    const struct qsnap__layer *h = b ? qsnap__layer(m, b->head) : NULL;

    *none = !h;
    return h ? qsnap__link_name(VM_LINK, h->file) : NULL;
}

/* Whether name is a bare file name (no '/', not "." or ".."). */
static bool bare_name(const char *name)
{
    return name[0] && !strchr(name, '/') && strcmp(name, ".") && strcmp(name, "..");
}

/*
 * What stands at the VM path, read from layers/ opened without following
 * links: *is_link with its target in got (NUL-terminated), or nothing
 * (ENOENT: 0 with !*is_link and got empty). Anything else there (a file, a
 * directory, a device) is QSNAP_EINTEGRITY: qsnap made no such thing and
 * leaves it for whoever looks into it.
 */
static int read_vm_link(const qsnap_store *s, int dfd, char *got, size_t size, bool *is_link)
{
    struct stat st;
    ssize_t n;

    *is_link = false;
    got[0] = '\0';
    if (fstatat(dfd, VM_LINK_BASE, &st, AT_SYMLINK_NOFOLLOW) < 0) {
        if (errno == ENOENT)
            return 0;
        return qsnap__err(QSNAP_ERROR, NULL, "%s/%s: %s", s->dir, VM_LINK, strerror(errno));
    }
    if (S_ISREG(st.st_mode))
        return qsnap__err(QSNAP_EINTEGRITY,
                          "a copy that followed links (cp -rL, scp -r) makes it a file: a VM run "
                          "on it since wrote there, so compare it with the current head "
                          "('qsnap image compare FILE \"$(qsnap current DISK --head)\"') and keep "
                          "it if they differ; then remove it, and 'qsnap verify DISK --repair' "
                          "makes the link again",
                          "%s/%s: a regular file where the VM path (a symbolic link) should be",
                          s->dir, VM_LINK);
    if (!S_ISLNK(st.st_mode))
        return qsnap__err(QSNAP_EINTEGRITY,
                          "remove it by hand; 'qsnap verify DISK --repair' then makes the link "
                          "again",
                          "%s/%s: not a symbolic link where the VM path should be", s->dir,
                          VM_LINK);
    n = readlinkat(dfd, VM_LINK_BASE, got, size - 1);
    if (n < 0)
        return qsnap__err(QSNAP_ERROR, NULL, "%s/%s: %s", s->dir, VM_LINK, strerror(errno));
    got[n] = '\0';
    *is_link = true;
    return 0;
}

int qsnap__vm_link_check(const qsnap_store *s, int dfd, const struct qsnap__model *m)
{
    char got[PATH_MAX];
    bool is_link, known = false;
    int rc = read_vm_link(s, dfd, got, sizeof(got), &is_link);

    if (rc || !is_link)
        return rc;
    if (bare_name(got)) {
        /* One of the store's layers (not the disk, nothing else in layers/) ... */
        for (size_t i = 0; m && i < m->nl && !known; i++) {
            const char *f = m->layers[i].file;
            known = !m->layers[i].is_disk && !strncmp(f, "layers/", 7) && !strcmp(f + 7, got);
        }
        /* ... or, before the metadata is read or while an interrupted operation
         * is pending (its layers are not all in the metadata yet), a regular file
         * of layers/ named as layers are. */
        if (!known) {
            struct stat st;
            size_t d = strspn(got, "0123456789");
            known = d > 0 && !strcmp(got + d, ".qcow2") &&
                    fstatat(dfd, got, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode);
        }
    }
    if (known)
        return 0;
    return qsnap__err(QSNAP_EINTEGRITY, "'qsnap verify DISK --repair' points it at the current head",
                      "%s/%s: the VM path links to '%s', not to a layer of the store", s->dir,
                      VM_LINK, got);
}

int qsnap__vm_path_ok(const qsnap_store *s, const struct qsnap__model *m)
{
    char *want;
    char got[PATH_MAX];
    bool none, is_link;
    int ok, dfd;

    want = want_target(m, &none);
    if (none)
        return 1;
    if (!want)
        return qsnap__err(QSNAP_ERROR, NULL, "out of memory");
    ok = qsnap__store_dir_get(s, "layers", &dfd);
    if (!ok) {
        ok = read_vm_link(s, dfd, got, sizeof(got), &is_link);
        qsnap__store_dir_put(s, dfd);
    }
    if (!ok)
        ok = is_link && !strcmp(got, want);
    free(want);
    return ok;
}

/*
 * Point the VM path at m's current head: a new link under the temporary name
 * (a leftover there, link or file, goes first), owned like the store, renamed
 * over the old link, the directory synced. Every call works from layers/
 * opened without following links: a layers/ swapped for a link is refused,
 * never written through. A file or directory standing at the VM path is
 * never replaced (QSNAP_EINTEGRITY).
 */
int qsnap__vm_path_update(const qsnap_store *s, const struct qsnap__model *m)
{
    char got[PATH_MAX];
    char *want;
    bool none, is_link;
    struct stat st;
    int rc, dfd = -1;

    rc = qsnap__vm_path_ok(s, m);
    if (rc != 0)
        return rc < 0 ? rc : 0;
    want = want_target(m, &none);
    if (!want)
        return qsnap__err(QSNAP_ERROR, NULL, "out of memory");
    rc = qsnap__store_dir_get(s, "layers", &dfd);
    if (!rc)
        rc = read_vm_link(s, dfd, got, sizeof(got), &is_link);
    if (rc)
        goto out;
    if (fstatat(dfd, VM_LINK_TMP_BASE, &st, AT_SYMLINK_NOFOLLOW) == 0) {
        if (!S_ISLNK(st.st_mode) && !S_ISREG(st.st_mode)) {
            rc = qsnap__err(QSNAP_EINTEGRITY, "remove it by hand",
                            "%s/%s: neither a link nor a file where a temporary link of the "
                            "VM path should be",
                            s->dir, VM_LINK_TMP);
            goto out;
        }
        qsnap__layers_touch(s, dfd, false);
        if (unlinkat(dfd, VM_LINK_TMP_BASE, 0) < 0 && errno != ENOENT) {
            rc = qsnap__err(QSNAP_ERROR, NULL, "%s/%s: cannot remove: %s", s->dir, VM_LINK_TMP,
                            strerror(errno));
            goto out;
        }
        qsnap__layers_touch(s, dfd, true);
    }
    qsnap__layers_touch(s, dfd, false);
    if (symlinkat(want, dfd, VM_LINK_TMP_BASE) < 0) {
        rc = qsnap__err(QSNAP_ERROR, NULL, "%s/%s: cannot make the VM path: %s", s->dir,
                        VM_LINK_TMP, strerror(errno));
        goto out;
    }
    qsnap__layers_touch(s, dfd, true);
    qsnap__own_at(s, dfd, VM_LINK_TMP_BASE);
    qsnap__layers_touch(s, dfd, false);
    if (renameat(dfd, VM_LINK_TMP_BASE, dfd, VM_LINK_BASE) < 0) {
        rc = qsnap__err(QSNAP_ERROR, NULL, "%s/%s: cannot replace the VM path: %s", s->dir,
                        VM_LINK, strerror(errno));
        unlinkat(dfd, VM_LINK_TMP_BASE, 0);
        qsnap__layers_forget(s);
        goto out;
    }
    qsnap__layers_touch(s, dfd, true);
    if (fsync(dfd) < 0 && errno != EINVAL)
        rc = qsnap__err(QSNAP_ERROR, NULL, "%s/layers: fsync failed: %s", s->dir,
                        strerror(errno));
out:
    qsnap__store_dir_put(s, dfd);
    free(want);
    return rc;
}

int qsnap__vm_path_target(const qsnap_store *s, char **out)
{
    char got[PATH_MAX];
    bool is_link = false;
    int rc, dfd;

    *out = NULL;
    if (!s->exists)
        return 0;
    rc = qsnap__store_dir_get(s, "layers", &dfd);
    if (rc)
        return rc;
    rc = read_vm_link(s, dfd, got, sizeof(got), &is_link);
    qsnap__store_dir_put(s, dfd);
    if (rc == QSNAP_EINTEGRITY)
        return 0; /* no link: nothing that a VM opens through it */
    if (rc || !is_link || !bare_name(got))
        return rc;
    *out = malloc(strlen("layers/") + strlen(got) + 1);
    if (!*out)
        return qsnap__err(QSNAP_ERROR, NULL, "out of memory");
    strcpy(*out, "layers/");
    strcat(*out, got);
    return 0;
}

int qsnap__vm_path_refuse(const qsnap_store *s)
{
    char *path, *target = NULL;
    bool linked;
    int rc, ok = qsnap__vm_path_ok(s, &s->m);

    if (ok != 0)
        return ok < 0 ? ok : 0;
    /* No link at all (a store of a build before the VM path, a copy that dropped links):
     * no VM can run through it, and the operation makes it. */
    rc = qsnap__vm_path_target(s, &target);
    linked = target != NULL;
    free(target);
    if (rc || !linked)
        return rc;
    path = qsnap__vm_path(s);
    if (!path)
        return qsnap__err(QSNAP_ERROR, NULL, "out of memory");
    rc = qsnap__err(QSNAP_EINTEGRITY,
                    "'qsnap verify DISK --repair' points it again (once no VM runs on the file "
                    "it names now), then run the command again",
                    "%s: the VM path does not point at the current branch's head; "
                    "nothing was changed",
                    path);
    free(path);
    return rc;
}

int qsnap_vm_path(qsnap_store *s, char **out)
{
    int ok;

    *out = NULL;
    if (!s->exists || !s->m.current)
        return qsnap__err(QSNAP_ENOTFOUND, "'qsnap create DISK' makes the first snapshot",
                          "%s: no snapshots yet", s->disk_abs);
    ok = qsnap__vm_path_ok(s, &s->m);
    if (ok < 0)
        return ok;
    *out = qsnap__vm_path(s);
    if (!*out)
        return qsnap__err(QSNAP_ERROR, NULL, "out of memory");
    if (!ok) {
        int rc = qsnap__err(QSNAP_EINTEGRITY, "'qsnap verify DISK --repair' points it again",
                            "%s: the VM path is missing or does not point at the current "
                            "branch's head",
                            *out);
        free(*out);
        *out = NULL;
        return rc;
    }
    return 0;
}
