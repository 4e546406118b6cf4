/*
 * libqcow2 version macros. The API version follows semantic versioning; the
 * shared-object version (QCOW2_SOVERSION) is bumped only when the ABI breaks.
 */
#ifndef QCOW2_VERSION_H
#define QCOW2_VERSION_H

#define QCOW2_VERSION_MAJOR 0
#define QCOW2_VERSION_MINOR 1
#define QCOW2_VERSION_PATCH 0

/** One integer that orders versions: MAJOR*10000 + MINOR*100 + PATCH. */
#define QCOW2_VERSION_NUMBER \
    (QCOW2_VERSION_MAJOR * 10000 + QCOW2_VERSION_MINOR * 100 + QCOW2_VERSION_PATCH)

/** True when the headers are at least version a.b.c. */
#define QCOW2_VERSION_CHECK(a, b, c) (QCOW2_VERSION_NUMBER >= ((a) * 10000 + (b) * 100 + (c)))

#define QCOW2_VERSION_STRING "0.1.0"

/** Shared-object version: libqcow2.so.QCOW2_SOVERSION. */
#define QCOW2_SOVERSION 0

#endif /* QCOW2_VERSION_H */
