/*
 * Header test: includes every public header of libqcow2 and uses a few of
 * their types, macros and declarations, so that `make headertest` proves the
 * headers are self-contained and compile as C11 -pedantic and as C++11.
 * Compiled with -fsyntax-only: nothing here is linked or run.
 */
#include "qcow2/errors.h"
#include "qcow2/sys/io.h"
#include "qcow2/version.h"
#include "qsnap/qsnap.h"
#include "qsnap/libvirt.h"
#include "qsnap/libvirt.h"
#include "qcow2/qcow2.h"
/* Included twice on purpose: the include guards must hold. */
#include "qcow2/qcow2.h"

#if !QCOW2_VERSION_CHECK(0, 0, 0)
#error "QCOW2_VERSION_CHECK is broken"
#endif

#if QCOW2_VERSION_NUMBER != (QCOW2_VERSION_MAJOR * 10000 + QCOW2_VERSION_MINOR * 100 + QCOW2_VERSION_PATCH)
#error "QCOW2_VERSION_NUMBER does not match its parts"
#endif

typedef char headertest_error_class_works[QCOW2_ERROR_CLASS(QCOW2_ECORRUPT) == QCOW2_ECORRUPT ? 1 : -1];

int headertest_use(const char *path);

int headertest_use(const char *path)
{
    qcow2_open_opts opts = QCOW2_OPEN_OPTS_INIT;
    qcow2_convert_opts copts = QCOW2_CONVERT_OPTS_INIT;
    qcow2_image *img = NULL;
    qcow2_info info;
    qcow2_extent ext;
    qcow2_io *io = NULL;
    const qcow2_error *err;
    uint8_t digest[16];
    int rc;

    opts.flags = QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_NO_LOCK;
    opts.format = qcow2_format_from_name("qcow2");
    rc = qcow2_image_open(&img, path, &opts);
    if (rc < 0) {
        err = qcow2_error_last();
        return err->code != rc ? QCOW2_ERROR : QCOW2_ERROR_CLASS(rc);
    }
    rc = qcow2_image_get_info(img, &info);
    if (rc == 0 && info.format == QCOW2_FORMAT_QCOW2 && qcow2_image_size(img) > 0) {
        rc = qcow2_image_block_status(img, NULL, 0, qcow2_image_size(img), &ext);
        if (rc == 0 && (ext.flags & QCOW2_EXT_DATA) != 0)
            rc = qcow2_image_digest(img, digest, NULL, NULL);
    }
    copts.min_sparse = 0;
    (void)copts;
    {
        qsnap_adopt_opts ao = QSNAP_ADOPT_OPTS_INIT;
        qsnap_libvirt_xml *lx = NULL;
        (void)ao;
        qsnap_libvirt_xml_free(lx);
    }
    qcow2_image_close(img);
    if (qcow2_io_mem_new(&io, "abc", 3) == 0)
        qcow2_io_close(io);
    (void)qcow2_strerror(rc);
    (void)qcow2_format_name(QCOW2_FORMAT_RAW);
    (void)qcow2_version_number();
    return rc;
}
