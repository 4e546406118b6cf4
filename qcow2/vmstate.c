/*
 * The vm-state area of a qcow2 image: where a hypervisor's savevm puts the
 * memory and device state of a VM, read and written through the public
 * qcow2_vmstate_read()/qcow2_vmstate_write() (the qsnap CLI's `io read -b`
 * and `write -b`). It has no table of its own: it is the guest address range
 * that starts at the first L1 entry the virtual size does not need,
 *
 *     start = ceil(size / L2 coverage) * L2 coverage,
 *     L2 coverage = cluster_size * (entries per L2 table),
 *
 * mapped by the active L1 like guest data (the L1 grows to reach it, up to
 * QCOW2_MAX_L1_BYTES), so internal snapshots, check and refcounts treat its
 * clusters as any other. As in qemu, what this image does not hold there
 * reads through to the backing file at the same guest offset (zeroes past
 * the backing file's virtual size). Reads use read.c's layer walk with the
 * top's lookups allowed past its size (vm_end); writes use write.c's
 * allocating write on whole clusters, a partial one at either end completed
 * here first (write.c's copy on write stops at the virtual size).
 */
#include <inttypes.h>

#include "qcow2_int.h"

/* Guest offsets the L1 of img can map at most (its size cap). */
static uint64_t l1_reach(const qcow2_image *img)
{
    return (QCOW2_MAX_L1_BYTES / 8) << (img->cluster_bits + img->l2_bits);
}

/* The guest offset where the vm-state area starts. */
static uint64_t vmstate_start(const qcow2_image *img)
{
    uint64_t cover = 1ull << (img->cluster_bits + img->l2_bits);

    return qcow2__align_up(img->size, cover);
}

/*
 * Common checks; *guest_out: the guest offset of pos. The area is bounded by
 * what a signed 64-bit offset reaches (as qemu's requests), not by the L1 cap:
 * past the L1 nothing is mapped and reads give zeroes.
 */
static int vmstate_args(qcow2_image *img, const void *buf, size_t len, uint64_t pos,
                        const char *what, uint64_t *guest_out)
{
    uint64_t end;

    if (!img || (!buf && len))
        return qcow2__err(QCOW2_EINVAL, 0, NULL, "%s: missing argument", what);
    if (img->fmt != QCOW2_FORMAT_QCOW2)
        return qcow2__err(QCOW2_EUNSUPPORTED, 0, img->name,
                          "%s images have no vm-state area", qcow2_format_name(img->fmt));
    *guest_out = vmstate_start(img);
    if (qcow2__add_overflow(*guest_out, pos, guest_out) ||
        qcow2__add_overflow(*guest_out, len, &end) || end > (uint64_t)INT64_MAX)
        return qcow2__err(QCOW2_EINVAL, 0, img->name,
                          "vm-state range of %zu bytes at %" PRIu64 " is out of reach", len, pos);
    return 0;
}

int qcow2_vmstate_read(qcow2_image *img, void *buf, size_t len, uint64_t pos)
{
    uint64_t guest_off;
    int rc = vmstate_args(img, buf, len, pos, "qcow2_vmstate_read", &guest_off);

    if (rc || !len)
        return rc;
    img->vm_end = guest_off + len;
    rc = qcow2__read_walk(img, buf, len, guest_off);
    img->vm_end = 0;
    return rc;
}

/* Grow the active L1 so that it maps guest offsets below end (a cap check first). */
static int vmstate_room(qcow2_image *img, uint64_t end)
{
    uint64_t cover = 1ull << (img->cluster_bits + img->l2_bits);
    uint64_t need = end / cover + (end % cover != 0), max = QCOW2_MAX_L1_BYTES / 8, want;

    if (end > l1_reach(img))
        return qcow2__err(QCOW2_EINVAL, 0, img->name,
                          "the vm-state area ends at %" PRIu64
                          " bytes here: an L1 table of at most %llu bytes maps no further",
                          l1_reach(img) - vmstate_start(img), QCOW2_MAX_L1_BYTES);
    if (need <= img->hdr.l1_size)
        return 0;
    /* Half as large again at least (a savevm writes in order), as qemu grows it. */
    want = qcow2__min(qcow2__max(need, (uint64_t)img->hdr.l1_size + img->hdr.l1_size / 2), max);
    return qcow2__grow_l1(img, want);
}

/*
 * Write the cluster at guest offset cstart: bytes [a, b) of it from data, the
 * rest as the area holds it now (start: where the area begins).
 */
static int write_partial(qcow2_image *img, uint64_t start, uint64_t cstart, uint64_t a,
                         uint64_t b, const uint8_t *data)
{
    size_t cs = (size_t)img->cluster_size;
    uint8_t *bounce = qcow2__malloc(cs);
    int rc;

    if (!bounce)
        return qcow2__nomem();
    rc = qcow2_vmstate_read(img, bounce, cs, cstart - start);
    if (!rc) {
        memcpy(bounce + a, data, (size_t)(b - a));
        rc = qcow2__write_clusters(img, bounce, cs, cstart);
    }
    qcow2__free(bounce);
    return rc;
}

int qcow2_vmstate_write(qcow2_image *img, const void *buf, size_t len, uint64_t pos)
{
    const uint8_t *data = buf;
    uint64_t guest_off, start, end, cs, head, body_end;
    int rc = vmstate_args(img, buf, len, pos, "qcow2_vmstate_write", &guest_off);

    if (!rc)
        rc = qcow2__write_begin(img);
    if (rc || !len)
        return rc;
    start = guest_off - pos;
    end = guest_off + len;
    cs = img->cluster_size;
    rc = vmstate_room(img, qcow2__align_up(end, cs));
    if (rc)
        return rc;
    /* Whole clusters go straight to write.c; a partial one at either end is completed. */
    if (guest_off & (cs - 1)) {
        uint64_t cstart = guest_off & ~(cs - 1);

        head = qcow2__min(end, cstart + cs) - guest_off;
        rc = write_partial(img, start, cstart, guest_off - cstart, guest_off - cstart + head, data);
        if (rc)
            return rc;
        guest_off += head;
        data += head;
    }
    body_end = end & ~(cs - 1);
    if (guest_off < body_end) {
        rc = qcow2__write_clusters(img, data, body_end - guest_off, guest_off);
        if (rc)
            return rc;
        data += body_end - guest_off;
        guest_off = body_end;
    }
    if (guest_off < end)
        rc = write_partial(img, start, guest_off, 0, end - guest_off, data);
    return rc;
}

uint64_t qcow2_vmstate_offset(const qcow2_image *img)
{
    return img->fmt == QCOW2_FORMAT_QCOW2 ? vmstate_start(img) : 0;
}
