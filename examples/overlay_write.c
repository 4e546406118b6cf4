/*
 * overlay_write: create a qcow2 overlay over a raw image and write a byte
 * pattern into it, using only the installed libqcow2 (pkg-config qcow2).
 *
 *   overlay_write RAW OVERLAY [OFFSET [LENGTH [PATTERN]]]
 *
 * OVERLAY must not exist; it records RAW as its backing file, so reading
 * OVERLAY shows RAW except where the pattern was written. RAW is never
 * written. OFFSET and LENGTH are bytes (default 0 and 65536), PATTERN a byte
 * value (default 0xab). Compare with qemu-io: `write -P PATTERN OFFSET LENGTH`.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qcow2/qcow2.h>

static int fail(const char *what)
{
    const qcow2_error *e = qcow2_error_last();

    fprintf(stderr, "overlay_write: %s: %s (%s)\n", what, e->message, qcow2_strerror(e->code));
    return 1;
}

int main(int argc, char **argv)
{
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;
    qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img = NULL;
    uint64_t off = 0, len = 65536;
    unsigned pattern = 0xab;
    unsigned char *buf;
    int status = 1;

    if (argc < 3 || argc > 6) {
        fprintf(stderr, "usage: overlay_write RAW OVERLAY [OFFSET [LENGTH [PATTERN]]]\n");
        return 2;
    }
    if (argc > 3)
        off = strtoull(argv[3], NULL, 0);
    if (argc > 4)
        len = strtoull(argv[4], NULL, 0);
    if (argc > 5)
        pattern = (unsigned)strtoul(argv[5], NULL, 0) & 0xff;

    /* A qcow2 v3 image with 64 KiB clusters; size 0 takes the backing file's. */
    co.backing_file = argv[1];
    co.backing_format = "raw";
    if (qcow2_image_create(argv[2], &co) != 0)
        return fail("create");

    oo.flags = QCOW2_OPEN_RDWR;
    if (qcow2_image_open(&img, argv[2], &oo) != 0)
        return fail("open");
    if (off > qcow2_image_size(img) || len > qcow2_image_size(img) - off) {
        fprintf(stderr, "overlay_write: %" PRIu64 "+%" PRIu64 " is beyond the size %" PRIu64 "\n",
                off, len, qcow2_image_size(img));
        goto out;
    }
    buf = malloc(len ? len : 1);
    if (!buf) {
        fprintf(stderr, "overlay_write: out of memory\n");
        goto out;
    }
    memset(buf, (int)pattern, len);
    if (qcow2_image_write(img, buf, len, off) != 0 || qcow2_image_flush(img) != 0)
        status = fail("write");
    else
        status = 0;
    free(buf);
    if (status == 0) {
        printf("created %s (qcow2, %" PRIu32 "-byte clusters, %" PRIu64 " bytes) over %s (raw)\n",
               argv[2], qcow2_image_cluster_size(img), qcow2_image_size(img), argv[1]);
        printf("wrote %" PRIu64 " bytes of 0x%02x at offset %" PRIu64 "\n", len, pattern, off);
    }
out:
    qcow2_image_close(img); /* flushes; NULL is fine */
    return status;
}
