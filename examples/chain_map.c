/*
 * chain_map: open an image, print each layer of its backing chain, then its
 * allocation map in the layout of `qemu-img map` (human output), using only
 * the installed libqcow2 (pkg-config qcow2).
 *
 *   chain_map IMAGE
 *
 * The map lists the guest ranges whose data lies in a file: guest offset,
 * length, offset in that file and the file's name. Runs that continue each
 * other (same layer, same status, adjacent in the file) are merged, as
 * qemu-img does; zero and unallocated ranges are not listed.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <qcow2/qcow2.h>

#define STATUS_BITS (QCOW2_EXT_PRESENT | QCOW2_EXT_ZERO | QCOW2_EXT_DATA | QCOW2_EXT_OFFSET_VALID)

/* Whether run b continues run a. */
static bool continues(const qcow2_extent *a, const qcow2_extent *b)
{
    if (a->layer != b->layer || a->depth != b->depth)
        return false;
    if ((a->flags & STATUS_BITS) != (b->flags & STATUS_BITS))
        return false;
    return !(a->flags & QCOW2_EXT_OFFSET_VALID) || a->host_off + a->length == b->host_off;
}

/* Print one run if its data lies in a file (as qemu-img map does). */
static void print_run(const qcow2_extent *e)
{
    unsigned want = QCOW2_EXT_DATA | QCOW2_EXT_OFFSET_VALID;

    if ((e->flags & want) != want || (e->flags & QCOW2_EXT_ZERO))
        return;
    printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n", e->start, e->length, e->host_off,
           qcow2_image_filename(e->layer));
}

int main(int argc, char **argv)
{
    qcow2_image *img, *layer;
    qcow2_extent run, next;
    uint64_t size, off;
    unsigned depth = 0;
    int rc = 0;

    if (argc != 2) {
        fprintf(stderr, "usage: chain_map IMAGE\n");
        return 2;
    }
    /* NULL options: read-only, probe the format, open the whole chain. */
    if (qcow2_image_open(&img, argv[1], NULL) != 0) {
        fprintf(stderr, "chain_map: %s\n", qcow2_error_last()->message);
        return 1;
    }
    printf("chain of %s: %u layer(s)\n", argv[1], qcow2_image_chain_length(img));
    for (layer = img; layer; layer = qcow2_image_backing(layer), depth++) {
        qcow2_info info;

        qcow2_image_get_info(layer, &info);
        printf("  %u: %s (%s, %" PRIu64 " bytes, file %" PRIu64 " bytes)\n", depth,
               info.filename, qcow2_format_name(info.format), info.virtual_size, info.file_size);
    }

    printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
    size = qcow2_image_size(img);
    memset(&run, 0, sizeof(run));
    for (off = 0; off < size; off += next.length) {
        rc = qcow2_image_block_status(img, NULL, off, size - off, &next);
        if (rc != 0)
            break;
        if (off > 0 && continues(&run, &next)) {
            run.length += next.length;
            continue;
        }
        if (off > 0)
            print_run(&run);
        run = next;
    }
    if (rc == 0 && size > 0)
        print_run(&run);
    if (rc != 0)
        fprintf(stderr, "chain_map: %s\n", qcow2_error_last()->message);
    qcow2_image_close(img);
    return rc != 0;
}
