/*
 * libqsnap and libvirt: taking over a backing chain that libvirt (or
 * qemu-img, or a person) made, and handing a tree back to libvirt as
 * domainsnapshot documents.
 *
 * Thread-safety: as qsnap.h (one thread per store; errors per thread).
 */
#ifndef QSNAP_LIBVIRT_H
#define QSNAP_LIBVIRT_H

#include <stdbool.h>
#include <stddef.h>

#include "qsnap/qsnap.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QSNAP_ADOPT_OPTS_VERSION 1

/** Options of qsnap_plan_adopt(). */
typedef struct qsnap_adopt_opts {
    unsigned version; /**< QSNAP_ADOPT_OPTS_VERSION */
    /**
     * libvirt's snapshot directory of the domain (its NAME.xml files, as in
     * /var/lib/libvirt/qemu/snapshot/DOM), or NULL: the snapshots take the
     * names, descriptions and creation times libvirt recorded. Snapshot X is
     * matched by the overlay its \<disks\> names (the file writes went to
     * after X): X's content is that overlay's backing file.
     */
    const char *libvirt_snapshots;
} qsnap_adopt_opts;

#define QSNAP_ADOPT_OPTS_INIT {QSNAP_ADOPT_OPTS_VERSION, NULL}

/**
 * Plan the take-over of the backing chain whose top is image (the file a VM
 * uses): the bottom file becomes the disk and its store is made beside it;
 * every qcow2 overlay is moved into the store (renamed, no data copied) and
 * its backing link made relative; every frozen layer becomes a snapshot and
 * the top becomes the head of branch main; internal snapshots inside any
 * layer become internal nodes. Nothing is written until the plan is
 * executed (journaled, like every plan), on *store_out.
 *
 * Refused, with nothing changed: a file of the chain in use by a QEMU
 * (QSNAP_EBUSY); a loop, a missing file, a chain without a backing file, a
 * file that is not a plain qcow2 or raw image or that the tree cannot hold
 * (a symbolic or hard link, another file system than the disk, a dirty or
 * corrupt image) (QSNAP_EREFUSED); a chain that already belongs to a store
 * (QSNAP_EREFUSED); libvirt XML that is damaged or names files outside the
 * chain (QSNAP_EUSAGE).
 *
 * @param[out] out        the plan (qsnap_plan_free())
 * @param[out] store_out  the bottom file's store, open and locked
 *                        (qsnap_store_close()); execute the plan on it
 * @param[in] image       the top of the chain
 * @param[in] o           options, or NULL
 * @return 0 or a QSNAP_E* code (both outputs NULL)
 */
QSNAP_API int qsnap_plan_adopt(qsnap_plan **out, qsnap_store **store_out, const char *image,
                               const qsnap_adopt_opts *o);

/** One domainsnapshot document. Strings live as long as the result. */
typedef struct qsnap_libvirt_doc {
    const char *name; /**< the snapshot's name */
    const char *file; /**< suggested file name, "NNN-NAME.xml" (NNN: parents first) */
    const char *xml;  /**< the document */
    bool current;     /**< register it with --current (the current branch's snapshot) */
} qsnap_libvirt_doc;

/** What qsnap_libvirt_xml_make() makes. */
typedef struct qsnap_libvirt_xml {
    const char *domain;     /**< the domain's name, from its XML */
    const char *target;     /**< the disk's target device (vda, ...) */
    const char *old_source; /**< the disk's source file in the domain XML given */
    const char *new_source; /**< the image the domain must use (the current branch's) */
    const char *domain_xml; /**< the domain XML with only that disk's source (and format) changed */
    qsnap_libvirt_doc *docs; /**< one per named snapshot, parents first */
    size_t n;                /**< documents */
} qsnap_libvirt_xml;

/**
 * The store's named snapshots as libvirt domainsnapshot documents, for
 * `virsh snapshot-create DOM FILE --redefine` in order: name, description,
 * creationTime, state shutoff, parent (the nearest named ancestor), the disk
 * as an external snapshot (or internal, for an internal snapshot), and the
 * domain of domain_xml with that disk's source set to the snapshot's image.
 *
 * @param[out] out         the result (qsnap_libvirt_xml_free())
 * @param[in] s            an open store
 * @param[in] domain_xml   a domain's XML file (virsh dumpxml DOM)
 * @param[in] target       the disk's target device, or NULL: the disk whose
 *                         source is a file of the store, else the only disk
 * @return 0; QSNAP_EUSAGE (a damaged domain XML, no or no matching disk),
 *         QSNAP_ENOTFOUND (no snapshot yet), QSNAP_ERROR
 */
QSNAP_API int qsnap_libvirt_xml_make(qsnap_libvirt_xml **out, qsnap_store *s,
                                     const char *domain_xml, const char *target);

/** Free what qsnap_libvirt_xml_make() returned (NULL allowed). */
QSNAP_API void qsnap_libvirt_xml_free(qsnap_libvirt_xml *x);

#ifdef __cplusplus
}
#endif

#endif /* QSNAP_LIBVIRT_H */
