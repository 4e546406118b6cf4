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
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qsnap_int.h"

#define VM_LINK "layers/current.qcow2"
#define VM_LINK_TMP "layers/.tmp-current"

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

int qsnap__vm_path_ok(const qsnap_store *s, const struct qsnap__model *m)
{
    char *path = qsnap__vm_path(s), *want;
    char got[PATH_MAX];
    bool none;
    ssize_t n;
    int ok;

    if (!path)
        return qsnap__err(QSNAP_ERROR, NULL, "out of memory");
    want = want_target(m, &none);
    if (none) {
        free(path);
        return 1;
    }
    n = readlink(path, got, sizeof(got) - 1);
    ok = want && n > 0 && (size_t)n == strlen(want) && !memcmp(got, want, (size_t)n);
    free(path);
    free(want);
    return ok;
}

int qsnap__vm_path_update(const qsnap_store *s, const struct qsnap__model *m)
{
    char *path, *tmp = NULL, *want, *ldir = NULL;
    bool none;
    int rc = 0;

    rc = qsnap__vm_path_ok(s, m);
    if (rc != 0)
        return rc < 0 ? rc : 0;
    want = want_target(m, &none);
    path = qsnap__vm_path(s);
    tmp = qsnap__path(s, VM_LINK_TMP);
    ldir = qsnap__path(s, "layers");
    if (!want || !path || !tmp || !ldir) {
        rc = qsnap__err(QSNAP_ERROR, NULL, "out of memory");
        goto out;
    }
    if (unlink(tmp) < 0 && errno != ENOENT) {
        rc = qsnap__err(QSNAP_ERROR, NULL, "%s: cannot remove: %s", tmp, strerror(errno));
        goto out;
    }
    if (symlink(want, tmp) < 0) {
        rc = qsnap__err(QSNAP_ERROR, NULL, "%s: cannot make the VM path: %s", tmp,
                        strerror(errno));
        goto out;
    }
    qsnap__own(s, tmp);
    if (rename(tmp, path) < 0) {
        rc = qsnap__err(QSNAP_ERROR, NULL, "%s: cannot replace the VM path: %s", path,
                        strerror(errno));
        unlink(tmp);
        goto out;
    }
    rc = qsnap__fsync_dir(ldir);
out:
    free(ldir);
    free(tmp);
    free(path);
    free(want);
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
        int rc = qsnap__err(QSNAP_EINTEGRITY, "'qsnap verify --repair DISK' points it again",
                            "%s: the VM path is missing or does not point at the current "
                            "branch's head",
                            *out);
        free(*out);
        *out = NULL;
        return rc;
    }
    return 0;
}
