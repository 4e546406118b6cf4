/*
 * Checks that qcow2_image_check on any image that opens runs to the end
 * without crashing, leaking or writing to the file, that a repair (leaks or
 * all) either fails cleanly or leaves an image whose re-check, on the same
 * handle and after reopening the repaired bytes, finds no corruption when
 * the repair said none was left, and that reads after a repair never crash.
 */
#include <stdlib.h>
#include <string.h>

#include "qcow2/qcow2.h"
#include "fuzz_helpers.h"

#define FUZZ_NAME "fuzz.qcow2"
#define PARAM_BYTES 16
#define MAX_READS 4
#define MAX_READ_LEN (64u << 10)

static void check_error(int rc)
{
    const qcow2_error *err = qcow2_error_last();

    FUZZ_ASSERT(rc < 0);
    FUZZ_ASSERT(err->message != NULL && err->message[0] != '\0');
    FUZZ_ASSERT(strchr(err->message, '\n') == NULL);
}

/* Each finding is one non-empty line. */
static void report(const char *line, void *payload)
{
    (void)payload;
    FUZZ_ASSERT(line != NULL && line[0] != '\0');
    FUZZ_ASSERT(strchr(line, '\n') == NULL);
}

static int open_mem(qcow2_image **img, qcow2_io **io_out, const uint8_t *data, size_t len,
                    unsigned flags)
{
    qcow2_open_opts opts = QCOW2_OPEN_OPTS_INIT;
    qcow2_io *io = NULL;
    int rc;

    if (qcow2_io_mem_new(&io, data, len) != 0)
        return -1;
    if (io_out)
        *io_out = io;
    opts.flags = flags | QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_NO_LOCK | QCOW2_OPEN_CHECK;
    opts.format = QCOW2_FORMAT_QCOW2;
    opts.cache_bytes = 1u << 20;
    rc = qcow2_image_open_io(img, io, FUZZ_NAME, &opts); /* takes io, also on failure */
    if (rc != 0) {
        check_error(rc);
        *img = NULL;
    }
    return rc;
}

static void read_some(qcow2_image *img, fuzz_producer *fp)
{
    uint64_t vsize = qcow2_image_size(img);
    unsigned n = (unsigned)fuzz_producer_range(fp, 1, MAX_READS);
    uint8_t *buf = malloc(MAX_READ_LEN);

    FUZZ_ASSERT(buf != NULL);
    for (unsigned i = 0; i < n && vsize > 0; i++) {
        uint64_t off = fuzz_producer_range(fp, 0, vsize - 1);
        uint64_t room = vsize - off;
        size_t len = (size_t)fuzz_producer_range(fp, 1, room < MAX_READ_LEN ? room : MAX_READ_LEN);
        int rc = qcow2_image_read(img, buf, len, off);

        if (rc != 0)
            check_error(rc);
    }
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    qcow2_image *img = NULL, *again = NULL;
    qcow2_io *io = NULL;
    qcow2_check_result plain, fixed, recheck;
    fuzz_producer fp;
    const uint8_t *bytes;
    uint8_t *copy;
    size_t len;
    unsigned fix;
    int rc, rc_fix;
    bool claims_clean;

    fuzz_producer_init(&fp, data, size, PARAM_BYTES);
    fix = fuzz_producer_range(&fp, 0, 1) ? QCOW2_CHECK_FIX_LEAKS
                                          : QCOW2_CHECK_FIX_LEAKS | QCOW2_CHECK_FIX_ERRORS;
    if (open_mem(&img, &io, fp.payload, fp.payload_len, QCOW2_OPEN_RDWR) != 0)
        return 0;

    /* A check without repair never writes to the file. */
    memset(&plain, 0, sizeof(plain));
    plain.report = report;
    rc = qcow2_image_check(img, 0, &plain);
    if (rc != 0)
        check_error(rc);
    bytes = qcow2_io_mem_data(io, &len);
    FUZZ_ASSERT_MSG(len == fp.payload_len && memcmp(bytes, fp.payload, len) == 0,
                    "a check without repair changed the file");

    memset(&fixed, 0, sizeof(fixed));
    fixed.report = report;
    rc_fix = qcow2_image_check(img, fix, &fixed);
    if (rc_fix != 0)
        check_error(rc_fix);
    /*
     * Not asserted: corruptions_fixed == 0 for a leaks-only repair. Like
     * qemu-img check -r leaks, it also repairs COPIED flags once the
     * refcounts are clean (found by this target; see docs/ROBUSTNESS.md).
     */
    /* The repair says nothing is left to fix (of what it was asked to fix). */
    claims_clean = rc_fix == 0 && fixed.check_errors == 0 && fixed.corruptions == 0 &&
                   (fix & QCOW2_CHECK_FIX_ERRORS);

    read_some(img, &fp);

    memset(&recheck, 0, sizeof(recheck));
    rc = qcow2_image_check(img, 0, &recheck);
    if (rc != 0)
        check_error(rc);
    else if (claims_clean)
        FUZZ_ASSERT_MSG(recheck.corruptions == 0 && recheck.check_errors == 0,
                        "repair claimed success but a re-check finds %llu corruptions, %llu errors",
                        (unsigned long long)recheck.corruptions,
                        (unsigned long long)recheck.check_errors);

    /* The repaired bytes, reopened read-only: same verdict, and reads do not crash. */
    rc = qcow2_image_flush(img);
    if (rc != 0)
        check_error(rc);
    bytes = qcow2_io_mem_data(io, &len);
    copy = malloc(len ? len : 1);
    FUZZ_ASSERT(copy != NULL);
    memcpy(copy, bytes, len);
    qcow2_image_close(img);

    if (open_mem(&again, NULL, copy, len, 0) == 0) {
        memset(&recheck, 0, sizeof(recheck));
        rc = qcow2_image_check(again, 0, &recheck);
        if (rc != 0)
            check_error(rc);
        else if (claims_clean)
            FUZZ_ASSERT_MSG(recheck.corruptions == 0 && recheck.check_errors == 0,
                            "repair claimed success but the reopened image has %llu corruptions",
                            (unsigned long long)recheck.corruptions);
        read_some(again, &fp);
        qcow2_image_close(again);
    } else {
        /* A repaired image that opened before must still open. */
        FUZZ_ASSERT_MSG(!claims_clean, "the image no longer opens after a successful repair");
    }
    free(copy);
    return 0;
}
