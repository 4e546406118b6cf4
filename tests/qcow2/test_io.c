/*
 * Tests for the in-memory backend (qcow2/io_mem.c) and the test backends
 * built on the I/O seam: memfs (named in-memory files) and io_fault (call
 * counters, N-th call failures, crash simulation).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "io_fault.h"
#include "memfs.h"
#include "qcow2_int.h"

static bool all_bytes(const uint8_t *p, size_t len, uint8_t v)
{
    for (size_t i = 0; i < len; i++)
        if (p[i] != v)
            return false;
    return true;
}

static uint64_t io_size(qcow2_io *io)
{
    uint64_t size = ~0ull;

    cr_assert_eq(io->ops->get_size(io, &size), 0);
    return size;
}

/* ---- io_mem ------------------------------------------------------------------ */

Test(io_mem, starts_with_a_copy_and_reads_past_end_as_zeroes)
{
    uint8_t src[100], buf[300];
    qcow2_io *io;

    memset(src, 0x5a, sizeof(src));
    cr_assert_eq(qcow2_io_mem_new(&io, src, sizeof(src)), 0);
    src[0] = 0; /* a copy, not a borrow */
    memset(buf, 0xff, sizeof(buf));
    cr_assert_eq(io->ops->pread(io, buf, sizeof(buf), 0), 0);
    cr_assert(all_bytes(buf, 100, 0x5a));
    cr_assert(all_bytes(buf + 100, 200, 0));
    memset(buf, 0xff, sizeof(buf));
    cr_assert_eq(io->ops->pread(io, buf, 10, 1u << 30), 0);
    cr_assert(all_bytes(buf, 10, 0));
    cr_assert_eq(io_size(io), 100);
    qcow2_io_close(io);
}

Test(io_mem, write_past_end_grows_with_zero_gap)
{
    qcow2_io *io;
    const uint8_t *data;
    size_t len;
    uint8_t x[4] = {1, 2, 3, 4};

    cr_assert_eq(qcow2_io_mem_new(&io, NULL, 0), 0);
    data = qcow2_io_mem_data(io, &len);
    cr_assert_not_null(data);
    cr_assert_eq(len, 0);
    cr_assert_eq(io->ops->pwrite(io, x, 4, 200000), 0);
    data = qcow2_io_mem_data(io, &len);
    cr_assert_eq(len, 200004);
    cr_assert(all_bytes(data, 200000, 0));
    cr_assert_eq(memcmp(data + 200000, x, 4), 0);
    qcow2_io_close(io);
}

Test(io_mem, truncate_shrinks_and_grows_with_zeroes)
{
    uint8_t src[1000], buf[1000];
    qcow2_io *io;

    memset(src, 7, sizeof(src));
    cr_assert_eq(qcow2_io_mem_new(&io, src, sizeof(src)), 0);
    cr_assert_eq(io->ops->truncate(io, 10), 0);
    cr_assert_eq(io_size(io), 10);
    cr_assert_eq(io->ops->truncate(io, 1000), 0);
    cr_assert_eq(io_size(io), 1000);
    cr_assert_eq(io->ops->pread(io, buf, 1000, 0), 0);
    cr_assert(all_bytes(buf, 10, 7));
    cr_assert(all_bytes(buf + 10, 990, 0), "old bytes must not come back");
    qcow2_io_close(io);
}

Test(io_mem, punch_zeroes_without_resizing)
{
    uint8_t src[4096], buf[4096];
    qcow2_io *io;

    memset(src, 9, sizeof(src));
    cr_assert_eq(qcow2_io_mem_new(&io, src, sizeof(src)), 0);
    cr_assert_eq(io->ops->punch(io, 1000, 1000), 0);
    cr_assert_eq(io->ops->punch(io, 4000, 100000), 0);
    cr_assert_eq(io_size(io), 4096);
    cr_assert_eq(io->ops->pread(io, buf, sizeof(buf), 0), 0);
    cr_assert(all_bytes(buf, 1000, 9));
    cr_assert(all_bytes(buf + 1000, 1000, 0));
    cr_assert(all_bytes(buf + 2000, 2000, 9));
    cr_assert(all_bytes(buf + 4000, 96, 0));
    qcow2_io_close(io);
}

Test(io_mem, growth_is_capped)
{
    qcow2_io *io;
    uint8_t b = 1;

    cr_assert_eq(qcow2_io_mem_new(&io, NULL, 0), 0);
    cr_assert_eq(io->ops->truncate(io, (4ull << 30) + 1), -EFBIG);
    cr_assert_eq(io->ops->pwrite(io, &b, 1, 4ull << 30), -EFBIG);
    cr_assert_eq(io->ops->pwrite(io, &b, 1, UINT64_MAX), -EFBIG);
    cr_assert_eq(io_size(io), 0);
    qcow2_io_close(io);
}

Test(io_mem, data_of_another_backend_is_null)
{
    memfs *fs = memfs_new();
    qcow2_io *io;
    size_t len = 5;

    cr_assert_eq(memfs_put(fs, "a", "x", 1), 0);
    cr_assert_eq(memfs_open(&io, "a", 0, fs), 0);
    cr_assert_null(qcow2_io_mem_data(io, &len));
    cr_assert_eq(len, 0);
    qcow2_io_close(io);
    memfs_free(fs);
}

Test(io_mem, choke_point_names_the_file)
{
    qcow2_io *io;
    uint8_t b = 0;

    cr_assert_eq(qcow2_io_mem_new(&io, NULL, 0), 0);
    cr_assert_eq(qcow2__io_write(io, "disk.img", &b, 1, 5ull << 30), QCOW2_EIO);
    cr_assert_not_null(strstr(qcow2_error_last()->message, "disk.img"));
    qcow2_io_close(io);
}

/* ---- memfs ------------------------------------------------------------------- */

Test(memfs, put_get_and_normalised_names)
{
    memfs *fs = memfs_new();
    const uint8_t *d;
    size_t len;

    cr_assert_not_null(fs);
    cr_assert_eq(memfs_put(fs, "/m/dir/../base.raw", "abc", 3), 0);
    cr_assert(memfs_exists(fs, "/m/base.raw"));
    cr_assert(memfs_exists(fs, "//m/./base.raw"));
    cr_assert(!memfs_exists(fs, "m/base.raw"), "relative and absolute differ");
    d = memfs_get(fs, "/m/base.raw", &len);
    cr_assert_eq(len, 3);
    cr_assert_eq(memcmp(d, "abc", 3), 0);
    cr_assert_null(memfs_get(fs, "/nope", &len));
    memfs_free(fs);
}

Test(memfs, open_flags)
{
    memfs *fs = memfs_new();
    qcow2_io *io, *io2;
    uint8_t buf[4];

    cr_assert_eq(memfs_open(&io, "/x", 0, fs), -ENOENT);
    cr_assert_null(io);
    cr_assert_eq(memfs_open(&io, "/x", QCOW2_IO_CREATE, fs), 0);
    cr_assert_eq(io->ops->pwrite(io, "data", 4, 0), 0);
    cr_assert_eq(memfs_open(&io2, "/x", QCOW2_IO_CREATE, fs), -EEXIST);
    /* A read-only handle sees the bytes but cannot change them. */
    cr_assert_eq(memfs_open(&io2, "/x", 0, fs), 0);
    cr_assert_eq(io2->ops->pread(io2, buf, 4, 0), 0);
    cr_assert_eq(memcmp(buf, "data", 4), 0);
    cr_assert_eq(io2->ops->pwrite(io2, "zzzz", 4, 0), -EBADF);
    cr_assert_eq(io2->ops->truncate(io2, 0), -EBADF);
    qcow2_io_close(io2);
    qcow2_io_close(io);
    /* CREATE|TRUNC replaces. */
    cr_assert_eq(memfs_open(&io, "/x", QCOW2_IO_CREATE | QCOW2_IO_TRUNC, fs), 0);
    cr_assert_eq(io_size(io), 0);
    qcow2_io_close(io);
    memfs_free(fs);
}

Test(memfs, files_survive_close_and_removed_files_stay_readable)
{
    memfs *fs = memfs_new();
    qcow2_io *io;
    uint8_t buf[3];
    size_t len;

    cr_assert_eq(memfs_open(&io, "/f", QCOW2_IO_CREATE, fs), 0);
    cr_assert_eq(io->ops->pwrite(io, "xyz", 3, 10), 0);
    qcow2_io_close(io);
    memfs_get(fs, "/f", &len);
    cr_assert_eq(len, 13);

    cr_assert_eq(memfs_open(&io, "/f", 0, fs), 0);
    cr_assert_eq(memfs_remove(fs, "/f"), 0);
    cr_assert(!memfs_exists(fs, "/f"));
    cr_assert_eq(memfs_remove(fs, "/f"), -ENOENT);
    cr_assert_eq(io->ops->pread(io, buf, 3, 10), 0);
    cr_assert_eq(memcmp(buf, "xyz", 3), 0);
    qcow2_io_close(io);
    memfs_free(fs);
}

Test(memfs, locks_one_writer_or_many_readers)
{
    memfs *fs = memfs_new();
    qcow2_io *a, *b, *c;

    cr_assert_eq(memfs_put(fs, "/img", "", 0), 0);
    cr_assert_eq(memfs_open(&a, "/img", QCOW2_IO_RDWR, fs), 0);
    cr_assert_eq(memfs_open(&b, "/img", 0, fs), 0);
    cr_assert_eq(memfs_open(&c, "/img", 0, fs), 0);
    cr_assert_eq(a->ops->lock(a, QCOW2_IO_LOCK_WRITE), 0);
    cr_assert_eq(b->ops->lock(b, QCOW2_IO_LOCK_READ), -EAGAIN);
    cr_assert_eq(a->ops->lock(a, QCOW2_IO_LOCK_READ), 0, "downgrade");
    cr_assert_eq(b->ops->lock(b, QCOW2_IO_LOCK_READ), 0);
    cr_assert_eq(c->ops->lock(c, QCOW2_IO_LOCK_READ), 0);
    cr_assert_eq(a->ops->lock(a, QCOW2_IO_LOCK_WRITE), -EAGAIN, "readers block a writer");
    qcow2_io_close(b);
    cr_assert_eq(c->ops->lock(c, QCOW2_IO_UNLOCK), 0);
    cr_assert_eq(a->ops->lock(a, QCOW2_IO_LOCK_WRITE), 0, "close and unlock release");
    qcow2_io_close(a);
    qcow2_io_close(c);
    memfs_free(fs);
}

/* ---- io_fault: counters and failures --------------------------------------------- */

Test(io_fault, counts_calls_per_method)
{
    qcow2_io *mem, *io;
    io_fault *f;
    uint8_t buf[8] = {0};
    uint64_t size;

    cr_assert_eq(qcow2_io_mem_new(&mem, NULL, 0), 0);
    f = io_fault_new(mem);
    io = io_fault_io(f);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(io->ops->pwrite(io, buf, 8, (uint64_t)i * 8), 0);
    cr_assert_eq(io->ops->pread(io, buf, 8, 0), 0);
    cr_assert_eq(io->ops->flush(io), 0);
    cr_assert_eq(io->ops->get_size(io, &size), 0);
    cr_assert_eq(size, 24);
    cr_assert_eq(io_fault_count(f, IO_FAULT_PWRITE), 3);
    cr_assert_eq(io_fault_count(f, IO_FAULT_PREAD), 1);
    cr_assert_eq(io_fault_count(f, IO_FAULT_FLUSH), 1);
    cr_assert_eq(io_fault_count(f, IO_FAULT_GET_SIZE), 1);
    cr_assert_eq(io_fault_count(f, IO_FAULT_TRUNCATE), 0);
    io_fault_reset_counts(f);
    cr_assert_eq(io_fault_count(f, IO_FAULT_PWRITE), 0);
    /* close() leaves the counters readable and the inner backend open. */
    qcow2_io_close(io);
    cr_assert_eq(io->ops->pread(io, buf, 8, 0), -EIO, "closed wrapper refuses");
    cr_assert_eq(io_fault_count(f, IO_FAULT_PREAD), 1);
    io_fault_free(f);
    cr_assert_eq(io_size(mem), 24);
    qcow2_io_close(mem);
}

Test(io_fault, transient_fails_only_the_nth_masked_call)
{
    qcow2_io *mem, *io;
    io_fault *f;
    uint8_t buf[8] = {0};

    cr_assert_eq(qcow2_io_mem_new(&mem, NULL, 64), 0);
    f = io_fault_new(mem);
    io = io_fault_io(f);
    io_fault_fail(f, IO_FAULT_MASK(IO_FAULT_PWRITE), 3, ENOSPC, false);
    cr_assert_eq(io->ops->pread(io, buf, 8, 0), 0, "reads are not counted");
    cr_assert_eq(io->ops->pwrite(io, buf, 8, 0), 0);
    cr_assert_eq(io->ops->pwrite(io, buf, 8, 0), 0);
    cr_assert(!io_fault_fired(f));
    cr_assert_eq(io->ops->pwrite(io, buf, 8, 0), -ENOSPC);
    cr_assert(io_fault_fired(f));
    cr_assert_eq(io->ops->pwrite(io, buf, 8, 0), 0, "transient: the next call works");
    cr_assert_eq(io_fault_count(f, IO_FAULT_PWRITE), 4);
    qcow2_io_close(io);
    io_fault_free(f);
    qcow2_io_close(mem);
}

Test(io_fault, persistent_fails_from_the_nth_call_on)
{
    qcow2_io *mem, *io;
    io_fault *f;
    uint8_t buf[8] = {0};

    cr_assert_eq(qcow2_io_mem_new(&mem, NULL, 64), 0);
    f = io_fault_new(mem);
    io = io_fault_io(f);
    io_fault_fail(f, IO_FAULT_WRITES, 2, EIO, true);
    cr_assert_eq(io->ops->pwrite(io, buf, 8, 0), 0);
    cr_assert_eq(io->ops->flush(io), -EIO);
    cr_assert_eq(io->ops->pwrite(io, buf, 8, 0), -EIO);
    cr_assert_eq(io->ops->truncate(io, 0), -EIO);
    cr_assert_eq(io->ops->pread(io, buf, 8, 0), 0, "unmasked method unaffected");
    cr_assert_eq(io_size(mem), 64, "the failed truncate never reached inner");
    io_fault_fail(f, 0, 0, 0, false);
    cr_assert_eq(io->ops->pwrite(io, buf, 8, 0), 0, "disarmed");
    qcow2_io_close(io);
    io_fault_free(f);
    qcow2_io_close(mem);
}

Test(io_fault, errors_reach_the_engine_as_codes)
{
    qcow2_io *mem;
    io_fault *f;
    uint8_t b = 0;

    cr_assert_eq(qcow2_io_mem_new(&mem, NULL, 0), 0);
    f = io_fault_new(mem);
    io_fault_fail(f, IO_FAULT_MASK(IO_FAULT_PWRITE), 1, ENOSPC, false);
    cr_assert_eq(qcow2__io_write(io_fault_io(f), "t", &b, 1, 0), QCOW2_ENOSPC);
    io_fault_fail(f, IO_FAULT_MASK(IO_FAULT_FLUSH), 1, EIO, false);
    cr_assert_eq(qcow2__io_flush(io_fault_io(f), "t"), QCOW2_EIO);
    io_fault_free(f);
    qcow2_io_close(mem);
}

/* ---- io_fault: crash mode ---------------------------------------------------------- */

#define CRASH_FILE 8192u

/* Start: a file of 0x11 bytes. Queue: writes of 0x22 and 0x33, a punch. */
static io_fault *crash_setup(qcow2_io **mem_out)
{
    uint8_t old[CRASH_FILE], v22[3000], v33[1500];
    qcow2_io *io;
    io_fault *f;

    memset(old, 0x11, sizeof(old));
    memset(v22, 0x22, sizeof(v22));
    memset(v33, 0x33, sizeof(v33));
    cr_assert_eq(qcow2_io_mem_new(mem_out, old, sizeof(old)), 0);
    f = io_fault_new(*mem_out);
    io = io_fault_io(f);
    cr_assert_eq(io_fault_crash_mode(f, true), 0);
    cr_assert_eq(io->ops->pwrite(io, v22, sizeof(v22), 100), 0);
    cr_assert_eq(io->ops->pwrite(io, v33, sizeof(v33), 6000), 0);
    cr_assert_eq(io->ops->punch(io, 7600, 10000), 0);
    cr_assert_eq(io->ops->pwrite(io, v33, 10, CRASH_FILE + 100), 0, "grows the file");
    return f;
}

Test(io_fault, crash_mode_holds_writes_until_flush)
{
    qcow2_io *mem, *io;
    io_fault *f = crash_setup(&mem);
    uint8_t buf[CRASH_FILE + 110];
    uint64_t size;

    io = io_fault_io(f);
    cr_assert_eq(io_fault_pending(f), 4);
    /* Inner is untouched... */
    cr_assert_eq(mem->ops->pread(mem, buf, CRASH_FILE, 0), 0);
    cr_assert(all_bytes(buf, CRASH_FILE, 0x11));
    cr_assert_eq(io_size(mem), CRASH_FILE);
    /* ...but the wrapper reads the queued state. */
    cr_assert_eq(io->ops->get_size(io, &size), 0);
    cr_assert_eq(size, CRASH_FILE + 110);
    cr_assert_eq(io->ops->pread(io, buf, sizeof(buf), 0), 0);
    cr_assert(all_bytes(buf, 100, 0x11));
    cr_assert(all_bytes(buf + 100, 3000, 0x22));
    cr_assert(all_bytes(buf + 6000, 1500, 0x33));
    cr_assert(all_bytes(buf + 7600, CRASH_FILE - 7600, 0));
    cr_assert(all_bytes(buf + CRASH_FILE + 100, 10, 0x33));
    /* Flush applies everything in order. */
    cr_assert_eq(io->ops->flush(io), 0);
    cr_assert_eq(io_fault_pending(f), 0);
    cr_assert_eq(io_size(mem), CRASH_FILE + 110);
    cr_assert_eq(mem->ops->pread(mem, buf, sizeof(buf), 0), 0);
    cr_assert(all_bytes(buf + 100, 3000, 0x22));
    cr_assert(all_bytes(buf + 7600, CRASH_FILE - 7600, 0));
    io_fault_free(f);
    qcow2_io_close(mem);
}

/*
 * After a crash every 512-byte sector holds either its old or its new
 * content (never anything else), and the same seed gives the same file.
 */
Test(io_fault, crash_applies_a_seeded_subset_by_sector)
{
    uint8_t first[CRASH_FILE + 110], buf[CRASH_FILE + 110];
    bool saw_old_22 = false, saw_new_22 = false, saw_torn = false;

    for (uint64_t seed = 0; seed < 64; seed++) {
        qcow2_io *mem;
        io_fault *f = crash_setup(&mem);
        uint8_t b;

        cr_assert_eq(io_fault_crash(f, seed), 0);
        cr_assert_eq(io_fault_io(f)->ops->pread(io_fault_io(f), &b, 1, 0), -EIO,
                     "dead after crash");
        memset(buf, 0xee, sizeof(buf));
        cr_assert_eq(mem->ops->pread(mem, buf, sizeof(buf), 0), 0);
        for (size_t s = 0; s < sizeof(buf); s += 512) {
            size_t e = s + 512 < sizeof(buf) ? s + 512 : sizeof(buf);
            for (size_t i = s; i < e; i++) {
                uint8_t v = buf[i];
                bool in22 = i >= 100 && i < 3100, in33 = i >= 6000 && i < 7500;
                bool inpunch = i >= 7600 && i < CRASH_FILE;
                bool ok = v == 0x11 || (in22 && v == 0x22) || (in33 && v == 0x33) ||
                          (inpunch && v == 0) || (i >= CRASH_FILE && (v == 0 || v == 0x33));
                cr_assert(ok, "seed %llu byte %zu = %#x", (unsigned long long)seed, i, v);
                if (i >= CRASH_FILE && i < CRASH_FILE + 100)
                    cr_assert(v == 0, "gap before a grown write reads as zero");
            }
        }
        /* Sectors of the 0x22 write: 100..511 | 512..1023 | ... */
        {
            unsigned n22 = 0;
            for (size_t s = 512; s < 3072; s += 512)
                n22 += buf[s] == 0x22;
            if (n22 == 0)
                saw_old_22 = true;
            else if (n22 == 5)
                saw_new_22 = true;
            else
                saw_torn = true;
        }
        if (seed == 5)
            memcpy(first, buf, sizeof(buf));
        io_fault_free(f);
        qcow2_io_close(mem);
    }
    cr_assert(saw_old_22 && saw_new_22 && saw_torn, "drop, keep and tear all happen");

    /* Determinism. */
    {
        qcow2_io *mem;
        io_fault *f = crash_setup(&mem);

        cr_assert_eq(io_fault_crash(f, 5), 0);
        memset(buf, 0xee, sizeof(buf));
        cr_assert_eq(mem->ops->pread(mem, buf, sizeof(buf), 0), 0);
        cr_assert_eq(memcmp(buf, first, sizeof(buf)), 0);
        io_fault_free(f);
        qcow2_io_close(mem);
    }
}

Test(io_fault, flushed_writes_survive_a_crash)
{
    qcow2_io *mem, *io;
    io_fault *f = crash_setup(&mem);
    uint8_t buf[3000], v44[100];

    io = io_fault_io(f);
    cr_assert_eq(io->ops->flush(io), 0);
    memset(v44, 0x44, sizeof(v44));
    cr_assert_eq(io->ops->pwrite(io, v44, sizeof(v44), 200), 0);
    cr_assert_eq(io_fault_crash(f, 1), 0);
    cr_assert_eq(mem->ops->pread(mem, buf, sizeof(buf), 100), 0);
    cr_assert(all_bytes(buf, 100, 0x22));
    cr_assert(all_bytes(buf + 200, 2800, 0x22));
    io_fault_free(f);
    qcow2_io_close(mem);
}
