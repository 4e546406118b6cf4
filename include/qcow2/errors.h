/*
 * libqcow2 error model: every fallible function returns 0 or a negative
 * QCOW2_E* code; the detail (a one-line message naming the file and the
 * structure that is wrong) is kept per thread and read with qcow2_error_last().
 */
#ifndef QCOW2_ERRORS_H
#define QCOW2_ERRORS_H

#include <stddef.h>

#ifndef QCOW2_API
#define QCOW2_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/**
 * Error codes. The values are pinned: new codes are only ever appended.
 * A code may carry a sub-cause in bits 8 and up (as -(class | sub << 8));
 * QCOW2_ERROR_CLASS(rc) gives the class back.
 */
typedef enum qcow2_error_code {
    QCOW2_OK = 0,             /**< success */
    QCOW2_ERROR = -1,         /**< generic failure */
    QCOW2_ENOMEM = -2,        /**< out of memory, or a size above a documented cap */
    QCOW2_EIO = -3,           /**< the operating system reported an I/O error */
    QCOW2_ENOSPC = -4,        /**< no space left on the device */
    QCOW2_EINVAL = -5,        /**< the caller passed an invalid argument */
    QCOW2_ENOTFOUND = -6,     /**< a file, snapshot or name does not exist */
    QCOW2_EEXISTS = -7,       /**< the thing to create already exists */
    QCOW2_ECORRUPT = -8,      /**< the image's metadata is inconsistent or out of range */
    QCOW2_EUNSUPPORTED = -9,  /**< a feature, version or format this library does not handle */
    QCOW2_EREADONLY = -10,    /**< a write to an image opened read-only (or marked corrupt) */
    QCOW2_EBUSY = -11,        /**< the image is locked by another user */
    QCOW2_EFATAL = -12,       /**< the handle is in the sticky error state; close and reopen */
} qcow2_error_code;

/** The class of a code that may carry a sub-cause. */
#define QCOW2_ERROR_CLASS(rc) ((rc) >= 0 ? (rc) : -((-(rc)) & 0xff))

/** Detail of the most recent failure on this thread. */
typedef struct qcow2_error {
    int code;            /**< the QCOW2_E* code that was returned */
    int sys_errno;       /**< errno of the failed system call, or 0 */
    const char *message; /**< one line, lower case, naming the file and the fault */
} qcow2_error;

/**
 * The detail of the last failure on the calling thread. A successful call
 * may leave an older record in place (or clear it), so read it right after a
 * call returned a negative code: its code field then equals that value.
 *
 * @return never NULL. The record belongs to the library: do not free it; it
 *         (and its message) is overwritten by the next failure on the same
 *         thread and released when the thread exits. Thread-safe: each
 *         thread has its own record.
 */
QCOW2_API const qcow2_error *qcow2_error_last(void);

/**
 * Forget the last error on this thread: afterwards qcow2_error_last() has
 * code 0, sys_errno 0 and an empty message. Thread-safe (this thread only).
 */
QCOW2_API void qcow2_error_clear(void);

/**
 * A short, human-readable text for a code ("image is corrupt", ...), without
 * the detail of qcow2_error_last().
 * @param[in] code  0 or a QCOW2_E* code, with or without a sub-cause
 * @return a static string, never NULL ("unknown error" for values outside
 *         the enum). Thread-safe.
 */
QCOW2_API const char *qcow2_strerror(int code);

/**
 * A string made safe to print on one line: every control byte (0x00 to 0x1f
 * and 0x7f) becomes '?'. The library's own messages are already made so;
 * this is for names and text read from images and other files.
 * @param[in]  s    a NUL-terminated string
 * @param[out] buf  where the changed copy goes: s itself (in place) or an
 *                  area that does not overlap it
 * @param[in]  len  size of buf; a longer copy is cut to len - 1 bytes
 * @return s itself when it holds no control byte or len is 0 (buf is then
 *         left alone), else buf. Thread-safe; never allocates.
 */
QCOW2_API const char *qcow2_printable(const char *s, char *buf, size_t len);

#ifdef __cplusplus
}
#endif

#endif /* QCOW2_ERRORS_H */
