/*
 * What adopt.c learns from libvirt's snapshot directory (libvirt.c).
 */
#ifndef QSNAP_LIBVIRT_INT_H
#define QSNAP_LIBVIRT_INT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

/* One libvirt snapshot, matched to the chain. */
struct qsnap__lv_snap {
    char *name;      /* libvirt's name */
    char *desc;      /* its description, or NULL */
    int64_t created; /* its creationTime, or -1 when it has none */
    size_t layer;    /* external: index in the chain (0 = top) of the file it froze;
                      * SIZE_MAX for an internal one */
    char *file;      /* the XML file it came from (for messages) */
};

/*
 * Read every NAME.xml in dir and match each snapshot to the chain whose
 * files are st[0..n) (top first, as stat() saw them; paths[] for messages):
 * an external snapshot's disk source must be a file of the chain other than
 * the bottom, and its content is the file below it; an internal one (no
 * external disk) is matched later by name. Snapshots that name files outside
 * the chain, two snapshots of one layer, damaged XML: QSNAP_EUSAGE naming
 * the file. *out (n_out entries) is freed with qsnap__lv_free().
 */
int qsnap__lv_read(const char *dir, const struct stat *st, char *const *paths, size_t n,
                   struct qsnap__lv_snap **out, size_t *n_out);
void qsnap__lv_free(struct qsnap__lv_snap *v, size_t n);

#endif /* QSNAP_LIBVIRT_INT_H */
