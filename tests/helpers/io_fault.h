/*
 * io_fault: a backend that wraps another one (sys/io.h) for error-path and
 * crash tests. It counts calls per method, fails the N-th call with a chosen
 * errno, and in crash mode holds writes back until flush so that a
 * simulated power cut can apply a random part of them.
 *
 *     io_fault *f = io_fault_new(inner);          // inner is NOT owned
 *     io_fault_fail(f, IO_FAULT_MASK(IO_FAULT_PWRITE), 3, EIO, false);
 *     qcow2_image_open_io(&img, io_fault_io(f), "x", &opts);
 *     ... run the operation, expect its error ...
 *     qcow2_image_close(img);                     // closes the wrapper only
 *     io_fault_count(f, IO_FAULT_PWRITE);         // still readable
 *     io_fault_free(f);
 *
 * Crash mode (io_fault_crash_mode): pwrite, truncate and punch are queued,
 * in order, instead of reaching inner; reads and get_size see the queue as
 * if it had been applied. flush applies the whole queue to inner, then
 * flushes inner. io_fault_crash(f, seed) simulates the power cut: each
 * queued write is, at random, dropped, kept whole, or torn (each 512-byte
 * sector of it, aligned to the file, kept or dropped on its own); each
 * queued truncate or punch is kept or dropped. After a crash every call on
 * the wrapper fails with -EIO; reopen the image from inner to inspect it.
 */
#ifndef QCOW2_TEST_IO_FAULT_H
#define QCOW2_TEST_IO_FAULT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qcow2/sys/io.h"

/* Methods, for counters and masks. */
enum io_fault_method {
    IO_FAULT_PREAD = 0,
    IO_FAULT_PWRITE,
    IO_FAULT_FLUSH,
    IO_FAULT_TRUNCATE,
    IO_FAULT_GET_SIZE,
    IO_FAULT_PUNCH,
    IO_FAULT_EXTENT,
    IO_FAULT_ALLOCATED,
    IO_FAULT_LOCK,
    IO_FAULT_COPY_FROM,
    IO_FAULT_ALLOCATE,
    IO_FAULT_NB_METHODS
};

#define IO_FAULT_MASK(m) (1u << (m))
#define IO_FAULT_ALL ((1u << IO_FAULT_NB_METHODS) - 1u)
/* Methods that change the file. */
#define IO_FAULT_WRITES                                                                            \
    (IO_FAULT_MASK(IO_FAULT_PWRITE) | IO_FAULT_MASK(IO_FAULT_FLUSH) |                              \
     IO_FAULT_MASK(IO_FAULT_TRUNCATE) | IO_FAULT_MASK(IO_FAULT_PUNCH) |                            \
     IO_FAULT_MASK(IO_FAULT_COPY_FROM))

typedef struct io_fault io_fault;

/* Wrap inner (borrowed: it must outlive the wrapper). NULL when out of memory. */
io_fault *io_fault_new(qcow2_io *inner);

/*
 * The wrapping backend. Its close() only marks it closed (and leaves queued
 * crash-mode writes unapplied); io_fault_free() releases it.
 */
qcow2_io *io_fault_io(io_fault *f);

/* Release the wrapper (closed or never handed out). Does not touch inner. */
void io_fault_free(io_fault *f);

/*
 * Fail the nth call (1-based) among calls to methods in mask, counted from
 * now, with -err. persistent: that call and every later call in mask fail.
 * nth == 0 disarms.
 */
void io_fault_fail(io_fault *f, unsigned mask, uint64_t nth, int err, bool persistent);

/* Whether the armed fault has fired. */
bool io_fault_fired(const io_fault *f);

/* Calls to one method since creation or the last reset (failed calls included). */
uint64_t io_fault_count(const io_fault *f, enum io_fault_method m);

/* Zero every counter. */
void io_fault_reset_counts(io_fault *f);

/* Start or stop crash mode (stopping applies the queue, like flush without inner flush). */
int io_fault_crash_mode(io_fault *f, bool on);

/* Operations queued since the last flush. */
size_t io_fault_pending(const io_fault *f);

/* Simulate a power cut now (see above). Returns 0 or the inner backend's error. */
int io_fault_crash(io_fault *f, uint64_t seed);

#endif /* QCOW2_TEST_IO_FAULT_H */
