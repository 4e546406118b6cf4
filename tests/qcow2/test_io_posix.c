/*
 * Tests for the POSIX backend (qcow2/io_posix.c) on real files under /tmp:
 * reads, writes, zero fill past EOF, create flags, holes through extent,
 * punch, copy_from, and the QEMU-compatible image lock, checked against our
 * own handles, /proc/locks, and real qemu-io / qemu-img processes.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "io_fault.h"
#include "qcow2_int.h"
#include "qemu_oracle.h"

static char tmpdir[64];
static char path[128];

static void setup(void)
{
    strcpy(tmpdir, "/tmp/qcow2-posix-XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir));
    snprintf(path, sizeof(path), "%s/img", tmpdir);
}

static void teardown(void)
{
    char cmd[128];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(io_posix, .init = setup, .fini = teardown);

static qcow2_io *open_or_die(const char *p, unsigned flags)
{
    qcow2_io *io = NULL;
    int rc = qcow2_io_posix_open(&io, p, flags);

    cr_assert_eq(rc, 0, "open %s: %s", p, strerror(-rc));
    return io;
}

static bool all_bytes(const uint8_t *p, size_t len, uint8_t v)
{
    for (size_t i = 0; i < len; i++)
        if (p[i] != v)
            return false;
    return true;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

    nanosleep(&ts, NULL);
}

/* ---- data path ------------------------------------------------------------------ */

Test(io_posix, write_read_and_zero_fill_past_eof)
{
    qcow2_io *io = open_or_die(path, QCOW2_IO_CREATE);
    uint8_t buf[8192];
    uint64_t size;

    memset(buf, 0xab, 5000);
    cr_assert_eq(io->ops->pwrite(io, buf, 5000, 1000), 0);
    cr_assert_eq(io->ops->get_size(io, &size), 0);
    cr_assert_eq(size, 6000);
    memset(buf, 0xff, sizeof(buf));
    cr_assert_eq(io->ops->pread(io, buf, sizeof(buf), 0), 0);
    cr_assert(all_bytes(buf, 1000, 0));
    cr_assert(all_bytes(buf + 1000, 5000, 0xab));
    cr_assert(all_bytes(buf + 6000, sizeof(buf) - 6000, 0), "past EOF reads zeroes");
    memset(buf, 0xff, sizeof(buf));
    cr_assert_eq(io->ops->pread(io, buf, 100, 1ull << 40), 0);
    cr_assert(all_bytes(buf, 100, 0));
    cr_assert_eq(io->ops->flush(io), 0);
    cr_assert_eq(io->ops->truncate(io, 10), 0);
    cr_assert_eq(io->ops->get_size(io, &size), 0);
    cr_assert_eq(size, 10);
    qcow2_io_close(io);
}

Test(io_posix, open_flags)
{
    qcow2_io *io;
    uint64_t size;
    uint8_t b = 1;

    cr_assert_eq(qcow2_io_posix_open(&io, path, 0), -ENOENT);
    cr_assert_null(io);
    io = open_or_die(path, QCOW2_IO_CREATE);
    cr_assert_eq(io->ops->pwrite(io, "hello", 5, 0), 0);
    qcow2_io_close(io);
    cr_assert_eq(qcow2_io_posix_open(&io, path, QCOW2_IO_CREATE), -EEXIST);
    /* Read-only handles cannot write. */
    io = open_or_die(path, 0);
    cr_assert_eq(io->ops->pwrite(io, &b, 1, 0), -EBADF);
    qcow2_io_close(io);
    /* DIRECT is accepted (and harmless for unaligned I/O). */
    io = open_or_die(path, QCOW2_IO_RDWR | QCOW2_IO_DIRECT);
    cr_assert_eq(io->ops->pwrite(io, &b, 1, 3), 0);
    qcow2_io_close(io);
    /* CREATE|TRUNC replaces. */
    io = open_or_die(path, QCOW2_IO_CREATE | QCOW2_IO_TRUNC);
    cr_assert_eq(io->ops->get_size(io, &size), 0);
    cr_assert_eq(size, 0);
    qcow2_io_close(io);
    cr_assert_eq(qcow2_io_posix_open(&io, path, 0x100), -EINVAL);
}

Test(io_posix, openat_nofollow_refuses_links_and_non_files)
{
    char dir[600], link[700], sub[700];
    qcow2_io *io = NULL;
    int dfd;

    /* A file opened relative to its directory, and a link to it refused with NOFOLLOW. */
    qcow2_io_close(open_or_die(path, QCOW2_IO_CREATE));
    snprintf(dir, sizeof(dir), "%s", path);
    *strrchr(dir, '/') = '\0';
    dfd = open(dir, O_RDONLY | O_DIRECTORY);
    cr_assert_geq(dfd, 0);
    cr_assert_eq(qcow2_io_posix_openat(&io, dfd, "img", QCOW2_IO_RDWR | QCOW2_IO_NOFOLLOW), 0);
    cr_assert_eq(io->ops->pwrite(io, "abc", 3, 0), 0);
    qcow2_io_close(io);
    snprintf(link, sizeof(link), "%s/link", dir);
    cr_assert_eq(symlink(path, link), 0);
    cr_assert_eq(qcow2_io_posix_openat(&io, dfd, "link", QCOW2_IO_RDWR | QCOW2_IO_NOFOLLOW),
                 -ELOOP);
    cr_assert_null(io);
    /* Without the flag, the link is followed (as before). */
    cr_assert_eq(qcow2_io_posix_openat(&io, dfd, "link", 0), 0);
    qcow2_io_close(io);
    /* CREATE with NOFOLLOW never creates through a dangling link. */
    cr_assert_eq(unlink(link), 0);
    snprintf(sub, sizeof(sub), "%s/target", dir);
    cr_assert_eq(symlink(sub, link), 0);
    cr_assert_neq(qcow2_io_posix_openat(&io, dfd, "link", QCOW2_IO_CREATE | QCOW2_IO_NOFOLLOW), 0);
    cr_assert_neq(access(sub, F_OK), 0, "a file was created through the link");
    /* A directory or FIFO is not a regular file. */
    snprintf(sub, sizeof(sub), "%s/fifo", dir);
    cr_assert_eq(mkfifo(sub, 0600), 0);
    cr_assert_eq(qcow2_io_posix_openat(&io, dfd, "fifo", QCOW2_IO_NOFOLLOW), -ENODEV);
    cr_assert_eq(qcow2_io_posix_openat(&io, dfd, ".", QCOW2_IO_NOFOLLOW), -ENODEV);
    close(dfd);
}

Test(io_posix, descriptor_is_close_on_exec)
{
    qcow2_io *io = open_or_die(path, QCOW2_IO_CREATE);
    char link[64], target[256];
    bool found = false;

    /* Find our descriptor by its target and check FD_CLOEXEC. */
    for (int fd = 3; fd < 1024 && !found; fd++) {
        ssize_t n;
        snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
        n = readlink(link, target, sizeof(target) - 1);
        if (n <= 0)
            continue;
        target[n] = '\0';
        if (strcmp(target, path) == 0) {
            found = true;
            cr_assert(fcntl(fd, F_GETFD) & FD_CLOEXEC);
        }
    }
    cr_assert(found);
    qcow2_io_close(io);
}

Test(io_posix, extent_reports_holes_and_data)
{
    qcow2_io *io = open_or_die(path, QCOW2_IO_CREATE);
    uint8_t data[4096];
    uint64_t run, alloc;
    bool hole;

    memset(data, 1, sizeof(data));
    cr_assert_eq(io->ops->truncate(io, 4u << 20), 0);
    cr_assert_eq(io->ops->pwrite(io, data, sizeof(data), 1u << 20), 0);
    cr_assert_eq(io->ops->extent(io, 0, 4u << 20, &run, &hole), 0);
    cr_assert(hole);
    cr_assert_eq(run, 1u << 20);
    cr_assert_eq(io->ops->extent(io, 1u << 20, 3u << 20, &run, &hole), 0);
    cr_assert(!hole);
    cr_assert_eq(run, 4096);
    cr_assert_eq(io->ops->extent(io, (1u << 20) + 4096, (3u << 20) - 4096, &run, &hole), 0);
    cr_assert(hole, "no data after the last extent: hole to the end");
    cr_assert_eq(run, (3u << 20) - 4096);
    /* Capped at len. */
    cr_assert_eq(io->ops->extent(io, 0, 100, &run, &hole), 0);
    cr_assert(hole);
    cr_assert_eq(run, 100);
    cr_assert_eq(io->ops->allocated_size(io, &alloc), 0);
    cr_assert_lt(alloc, 1u << 20, "sparse file allocates little");
    cr_assert_geq(alloc, 4096);
    qcow2_io_close(io);
}

Test(io_posix, punch_makes_a_hole_and_keeps_the_size)
{
    qcow2_io *io = open_or_die(path, QCOW2_IO_CREATE);
    uint8_t *buf = malloc(1u << 20);
    uint64_t size, run, before, after;
    bool hole;

    memset(buf, 0x77, 1u << 20);
    cr_assert_eq(io->ops->pwrite(io, buf, 1u << 20, 0), 0);
    cr_assert_eq(io->ops->flush(io), 0);
    cr_assert_eq(io->ops->allocated_size(io, &before), 0);
    cr_assert_eq(io->ops->punch(io, 256u << 10, 512u << 10), 0);
    cr_assert_eq(io->ops->punch(io, 900u << 10, 1u << 30), 0, "past EOF");
    cr_assert_eq(io->ops->get_size(io, &size), 0);
    cr_assert_eq(size, 1u << 20);
    cr_assert_eq(io->ops->pread(io, buf, 1u << 20, 0), 0);
    cr_assert(all_bytes(buf, 256u << 10, 0x77));
    cr_assert(all_bytes(buf + (256u << 10), 512u << 10, 0));
    cr_assert(all_bytes(buf + (768u << 10), 132u << 10, 0x77));
    cr_assert(all_bytes(buf + (900u << 10), 124u << 10, 0));
    cr_assert_eq(io->ops->extent(io, 256u << 10, 1u << 20, &run, &hole), 0);
    cr_assert(hole);
    cr_assert_eq(run, 512u << 10);
    cr_assert_eq(io->ops->allocated_size(io, &after), 0);
    cr_assert_lt(after, before);
    free(buf);
    qcow2_io_close(io);
}

Test(io_posix, copy_from_posix_and_from_memory)
{
    char src_path[160];
    qcow2_io *src, *dst, *mem;
    uint8_t *buf = malloc(300000), *out = malloc(300000 + 5000);

    for (size_t i = 0; i < 300000; i++)
        buf[i] = (uint8_t)(i * 7 + 3);
    snprintf(src_path, sizeof(src_path), "%s/src", tmpdir);
    src = open_or_die(src_path, QCOW2_IO_CREATE);
    cr_assert_eq(src->ops->pwrite(src, buf, 300000, 0), 0);
    dst = open_or_die(path, QCOW2_IO_CREATE);
    /* The last 5000 bytes come from past the source's end: zeroes. */
    cr_assert_eq(dst->ops->copy_from(dst, 4096, src, 0, 305000), 0);
    cr_assert_eq(dst->ops->pread(dst, out, 305000, 4096), 0);
    cr_assert_eq(memcmp(out, buf, 300000), 0);
    cr_assert(all_bytes(out + 300000, 5000, 0));

    cr_assert_eq(qcow2_io_mem_new(&mem, buf + 1000, 2000), 0);
    cr_assert_eq(dst->ops->copy_from(dst, 0, mem, 0, 2000), 0);
    cr_assert_eq(dst->ops->pread(dst, out, 2000, 0), 0);
    cr_assert_eq(memcmp(out, buf + 1000, 2000), 0);
    qcow2_io_close(mem);
    qcow2_io_close(src);
    qcow2_io_close(dst);
    free(buf);
    free(out);
}

/*
 * fdatasync as the library calls it, counted (this definition takes the
 * place of the C library's in this program); every call still syncs.
 */
static unsigned datasyncs;

int fdatasync(int fd)
{
    datasyncs++;
    return (int)syscall(SYS_fdatasync, fd);
}

/* Flush io and return how many fdatasync calls that took. */
static unsigned syncs_of_flush(qcow2_io *io)
{
    unsigned before = datasyncs;

    cr_assert_eq(io->ops->flush(io), 0);
    return datasyncs - before;
}

Test(io_posix, flush_syncs_only_what_changed_through_the_handle)
{
    char src_path[160];
    uint8_t buf[8192];
    qcow2_io *io, *src;

    memset(buf, 0x5a, sizeof(buf));
    snprintf(src_path, sizeof(src_path), "%s/src", tmpdir);
    src = open_or_die(src_path, QCOW2_IO_CREATE);
    cr_assert_eq(src->ops->pwrite(src, buf, sizeof(buf), 0), 0);
    io = open_or_die(path, QCOW2_IO_CREATE);
    /* The first flush of a handle syncs: the file may hold what others wrote before. */
    cr_assert_eq(syncs_of_flush(io), 1);
    cr_assert_eq(syncs_of_flush(io), 0, "nothing changed: no second sync");
    cr_assert_eq(io->ops->pwrite(io, buf, 100, 4096), 0);
    cr_assert_eq(syncs_of_flush(io), 1, "a write is synced");
    cr_assert_eq(syncs_of_flush(io), 0);
    cr_assert_eq(io->ops->truncate(io, 1 << 20), 0);
    cr_assert_eq(syncs_of_flush(io), 1, "a truncate is synced");
    cr_assert_eq(io->ops->punch(io, 0, 8192), 0);
    cr_assert_eq(syncs_of_flush(io), 1, "a punch is synced");
    cr_assert_eq(io->ops->allocate(io, 65536, 4096), 0);
    cr_assert_eq(syncs_of_flush(io), 1, "an allocation is synced");
    cr_assert_eq(io->ops->copy_from(io, 8192, src, 0, sizeof(buf)), 0);
    cr_assert_eq(syncs_of_flush(io), 1, "a copy into the handle is synced");
    cr_assert_eq(syncs_of_flush(src), 1, "the source's own first flush");
    cr_assert_eq(src->ops->copy_from(src, 0, io, 8192, 100), 0);
    cr_assert_eq(syncs_of_flush(src), 1, "the copy's target is synced");
    cr_assert_eq(syncs_of_flush(io), 0, "the copy's source is not");
    /* Where the file system shares blocks (XFS, btrfs), a share is synced too. */
    if (io->ops->clone_from(io, 0, src, 0, 4096) == 0)
        cr_assert_eq(syncs_of_flush(io), 1, "a share is synced");
    qcow2_io_close(src);
    qcow2_io_close(io);
}

/* ---- locking ------------------------------------------------------------------- */

/* The bytes (0..299) that any process holds locked on path, from /proc/locks. */
static void locked_bytes(const char *p, bool held[300])
{
    struct stat st;
    char line[256], want[32];
    FILE *fp;

    memset(held, 0, 300 * sizeof(bool));
    cr_assert_eq(stat(p, &st), 0);
    snprintf(want, sizeof(want), ":%lu ", (unsigned long)st.st_ino);
    fp = fopen("/proc/locks", "r");
    cr_assert_not_null(fp);
    while (fgets(line, sizeof(line), fp)) {
        char *ino = strstr(line, want);
        unsigned long start, end;
        if (!ino || !strstr(line, "OFDLCK"))
            continue;
        if (sscanf(ino + strlen(want), "%lu %lu", &start, &end) != 2)
            continue;
        for (unsigned long b = start; b <= end && b < 300; b++)
            held[b] = true;
    }
    fclose(fp);
}

static void create_qcow2(void)
{
    char cmd[256];

    snprintf(cmd, sizeof(cmd), "qemu-img create -q -f qcow2 '%s' 1M", path);
    cr_assert_eq(system(cmd), 0);
}

static bool have_qemu(void)
{
    return system("qemu-img --version >/dev/null 2>&1 && qemu-io --version >/dev/null 2>&1") == 0;
}

Test(io_posix, lock_bytes_match_qemu)
{
    qcow2_io *io;
    bool held[300];

    io = open_or_die(path, QCOW2_IO_CREATE);
    cr_assert_eq(io->ops->lock(io, QCOW2_IO_LOCK_WRITE), 0);
    locked_bytes(path, held);
    for (int b = 0; b < 300; b++) {
        bool want = b == 100 || b == 101 || b == 103 || b == 201 || b == 203;
        cr_assert_eq(held[b], want, "writer, byte %d", b);
    }
    cr_assert_eq(io->ops->lock(io, QCOW2_IO_LOCK_READ), 0);
    locked_bytes(path, held);
    for (int b = 0; b < 300; b++) {
        bool want = b == 100 || b == 201 || b == 203;
        cr_assert_eq(held[b], want, "reader, byte %d", b);
    }
    cr_assert_eq(io->ops->lock(io, QCOW2_IO_UNLOCK), 0);
    locked_bytes(path, held);
    for (int b = 0; b < 300; b++)
        cr_assert(!held[b], "unlocked, byte %d", b);
    /* Only the bytes that differ change: up from nothing, then reader to writer. */
    cr_assert_eq(io->ops->lock(io, QCOW2_IO_LOCK_READ), 0);
    locked_bytes(path, held);
    for (int b = 0; b < 300; b++)
        cr_assert_eq(held[b], b == 100 || b == 201 || b == 203, "reader again, byte %d", b);
    cr_assert_eq(io->ops->lock(io, QCOW2_IO_LOCK_WRITE), 0);
    locked_bytes(path, held);
    for (int b = 0; b < 300; b++) {
        bool want = b == 100 || b == 101 || b == 103 || b == 201 || b == 203;
        cr_assert_eq(held[b], want, "writer again, byte %d", b);
    }
    qcow2_io_close(io);
}

Test(io_posix, refused_upgrade_keeps_exactly_the_reader_bytes)
{
    qcow2_io *a, *other;
    bool held[300];

    a = open_or_die(path, QCOW2_IO_CREATE | QCOW2_IO_RDWR);
    other = open_or_die(path, 0);
    cr_assert_eq(other->ops->lock(other, QCOW2_IO_LOCK_READ), 0);
    cr_assert_eq(a->ops->lock(a, QCOW2_IO_LOCK_READ), 0);
    cr_assert_eq(a->ops->lock(a, QCOW2_IO_LOCK_WRITE), -EAGAIN);
    qcow2_io_close(other);
    locked_bytes(path, held);
    for (int b = 0; b < 300; b++)
        cr_assert_eq(held[b], b == 100 || b == 201 || b == 203, "after the refusal, byte %d", b);
    qcow2_io_close(a);
}

Test(io_posix, our_handles_exclude_each_other)
{
    qcow2_io *a, *b, *c;

    a = open_or_die(path, QCOW2_IO_CREATE);
    b = open_or_die(path, QCOW2_IO_RDWR);
    c = open_or_die(path, 0);
    cr_assert_eq(a->ops->lock(a, QCOW2_IO_LOCK_WRITE), 0);
    cr_assert_eq(b->ops->lock(b, QCOW2_IO_LOCK_WRITE), -EAGAIN);
    cr_assert_eq(c->ops->lock(c, QCOW2_IO_LOCK_READ), -EAGAIN);
    cr_assert_eq(qcow2__io_lock(b, "img", QCOW2_IO_LOCK_WRITE), QCOW2_EBUSY);
    cr_assert_not_null(strstr(qcow2_error_last()->message, "img: "));
    /* A refused upgrade leaves the reader's lock as it was. */
    cr_assert_eq(a->ops->lock(a, QCOW2_IO_LOCK_READ), 0);
    cr_assert_eq(c->ops->lock(c, QCOW2_IO_LOCK_READ), 0, "readers coexist");
    cr_assert_eq(a->ops->lock(a, QCOW2_IO_LOCK_WRITE), -EAGAIN);
    cr_assert_eq(b->ops->lock(b, QCOW2_IO_LOCK_WRITE), -EAGAIN);
    qcow2_io_close(c); /* closing drops the lock */
    cr_assert_eq(b->ops->lock(b, QCOW2_IO_LOCK_READ), 0);
    cr_assert_eq(a->ops->lock(a, QCOW2_IO_LOCK_WRITE), -EAGAIN, "a refused, still a reader");
    cr_assert_eq(b->ops->lock(b, QCOW2_IO_UNLOCK), 0);
    cr_assert_eq(a->ops->lock(a, QCOW2_IO_LOCK_WRITE), 0);
    qcow2_io_close(a);
    qcow2_io_close(b);
}

/* A qemu-io process holding path open, reading commands from a pipe we hold. */
struct qemu_io_proc {
    pid_t pid;
    int cmd_fd;
};

/* Whether another open file holds byte on p (F_OFD_GETLK; takes no lock). */
static bool byte_held(const char *p, off_t byte)
{
    struct flock fl = {0};
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    bool held;

    cr_assert_geq(fd, 0);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = byte;
    fl.l_len = 1;
    cr_assert_eq(fcntl(fd, F_OFD_GETLK, &fl), 0);
    held = fl.l_type != F_UNLCK;
    close(fd);
    return held;
}

static void qemu_io_start(struct qemu_io_proc *q, bool read_only)
{
    int pfd[2];

    cr_assert_eq(pipe2(pfd, O_CLOEXEC), 0);
    q->pid = fork();
    cr_assert_geq(q->pid, 0);
    if (q->pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(pfd[0], 0);
        dup2(null, 1);
        dup2(null, 2);
        if (read_only)
            execlp("qemu-io", "qemu-io", "-r", path, (char *)NULL);
        else
            execlp("qemu-io", "qemu-io", path, (char *)NULL);
        _exit(127);
    }
    close(pfd[0]);
    q->cmd_fd = pfd[1];
    /* Wait (at most 10 s) until qemu-io holds its consistent-read byte. */
    for (int i = 0; i < 1000 && !byte_held(path, 100); i++) {
        int status;
        cr_assert_eq(waitpid(q->pid, &status, WNOHANG), 0, "qemu-io exited early");
        sleep_ms(10);
    }
    cr_assert(byte_held(path, 100), "qemu-io did not lock the image");
}

/* EOF on stdin makes qemu-io quit; kill it if it does not within 5 s. */
static void qemu_io_stop(struct qemu_io_proc *q)
{
    int status;

    close(q->cmd_fd);
    for (int i = 0; i < 500; i++) {
        if (waitpid(q->pid, &status, WNOHANG) == q->pid)
            return;
        sleep_ms(10);
    }
    kill(q->pid, SIGKILL);
    waitpid(q->pid, &status, 0);
}

Test(io_posix, qemu_writer_refuses_our_writer_and_reader)
{
    struct qemu_io_proc q;
    qcow2_io *io;

    if (!have_qemu())
        cr_skip_test("qemu-img/qemu-io not installed");
    create_qcow2();
    qemu_io_start(&q, false);
    io = open_or_die(path, QCOW2_IO_RDWR);
    cr_assert_eq(io->ops->lock(io, QCOW2_IO_LOCK_WRITE), -EAGAIN);
    cr_assert_eq(io->ops->lock(io, QCOW2_IO_LOCK_READ), -EAGAIN,
                 "qemu holds write; a reader does not share write");
    qemu_io_stop(&q);
    cr_assert(!byte_held(path, 101));
    cr_assert_eq(io->ops->lock(io, QCOW2_IO_LOCK_WRITE), 0, "free once qemu-io is gone");
    qcow2_io_close(io);
}

Test(io_posix, qemu_reader_allows_our_reader_not_our_writer)
{
    struct qemu_io_proc q;
    qcow2_io *io;

    if (!have_qemu())
        cr_skip_test("qemu-img/qemu-io not installed");
    create_qcow2();
    qemu_io_start(&q, true);
    io = open_or_die(path, QCOW2_IO_RDWR);
    cr_assert_eq(io->ops->lock(io, QCOW2_IO_LOCK_WRITE), -EAGAIN);
    cr_assert_eq(io->ops->lock(io, QCOW2_IO_LOCK_READ), 0);
    qemu_io_stop(&q);
    qcow2_io_close(io);
}

/* Run cmd on path; return its exit status, with its stderr in err. */
static int run_qemu(const char *args, char *err, size_t err_len)
{
    char cmd[512], errfile[160];
    FILE *fp;
    size_t n;
    int status;

    snprintf(errfile, sizeof(errfile), "%s/stderr", tmpdir);
    snprintf(cmd, sizeof(cmd), "%s '%s' >/dev/null 2>'%s'", args, path, errfile);
    status = system(cmd);
    fp = fopen(errfile, "r");
    cr_assert_not_null(fp);
    n = fread(err, 1, err_len - 1, fp);
    err[n] = '\0';
    fclose(fp);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

Test(io_posix, our_writer_refuses_qemu_img_info_without_U)
{
    qcow2_io *io;
    char err[1024];

    if (!have_qemu())
        cr_skip_test("qemu-img/qemu-io not installed");
    create_qcow2();
    io = open_or_die(path, QCOW2_IO_RDWR);
    cr_assert_eq(io->ops->lock(io, QCOW2_IO_LOCK_WRITE), 0);
    cr_assert_neq(run_qemu("qemu-img info", err, sizeof(err)), 0);
    cr_assert_not_null(strstr(err, "Failed to get shared \"write\" lock"), "stderr: %s", err);
    cr_assert_eq(run_qemu("qemu-img info -U", err, sizeof(err)), 0, "stderr: %s", err);
    cr_assert_neq(run_qemu("qemu-io -c quit", err, sizeof(err)), 0);
    cr_assert_not_null(strstr(err, "lock"), "stderr: %s", err);

    /* As a reader we let qemu-img info in, but still keep a qemu writer out. */
    cr_assert_eq(io->ops->lock(io, QCOW2_IO_LOCK_READ), 0);
    cr_assert_eq(run_qemu("qemu-img info", err, sizeof(err)), 0, "stderr: %s", err);
    cr_assert_neq(run_qemu("qemu-io -c quit", err, sizeof(err)), 0);
    cr_assert_not_null(strstr(err, "Failed to get \"write\" lock"), "stderr: %s", err);

    qcow2_io_close(io);
    cr_assert_eq(run_qemu("qemu-io -c quit", err, sizeof(err)), 0, "stderr: %s", err);
}

/* ---- raw layers: charting data and holes --------------------------------------- */

/* A sparse raw file with nb data runs of 8 KiB, 64 KiB apart; the bytes in model. */
static void sparse_raw(unsigned nb, uint8_t *model, uint64_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

    cr_assert_geq(fd, 0);
    memset(model, 0, size);
    cr_assert_eq(ftruncate(fd, (off_t)size), 0);
    for (unsigned i = 0; i < nb; i++) {
        uint64_t off = (uint64_t)i * 65536 + 4096;
        for (int k = 0; k < 8192; k++)
            model[off + k] = (uint8_t)(i * 7 + k % 251 + 1);
        cr_assert_eq(pwrite(fd, model + off, 8192, (off_t)off), 8192);
    }
    cr_assert_eq(close(fd), 0);
}

/* 2000 random reads of up to 20 KiB through qcow2_image_read; returns extent calls made. */
static uint64_t random_reads(const uint8_t *model, uint64_t size)
{
    qcow2_io *posix;
    io_fault *f;
    qcow2_image *img;
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
    uint8_t buf[20480];
    uint64_t s = 5, calls;

    cr_assert_eq(qcow2_io_posix_open(&posix, path, 0), 0);
    f = io_fault_new(posix);
    o.format = QCOW2_FORMAT_RAW;
    cr_assert_eq(qcow2_image_open_io(&img, io_fault_io(f), path, &o), 0, "%s",
                 qcow2_error_last()->message);
    for (int n = 0; n < 2000; n++) {
        uint64_t off, len;
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        off = (s >> 20) % size;
        len = 1 + (s >> 8) % qcow2__min(size - off, sizeof(buf));
        cr_assert_eq(qcow2_image_read(img, buf, len, off), 0);
        cr_assert_eq(memcmp(buf, model + off, len), 0, "%llu bytes at 0x%llx",
                     (unsigned long long)len, (unsigned long long)off);
    }
    calls = io_fault_count(f, IO_FAULT_EXTENT);
    qcow2_image_close(img);
    io_fault_free(f);
    qcow2_io_close(posix);
    return calls;
}

Test(io_posix, a_raw_layer_is_charted_once_and_read_at_random_without_seeking)
{
    const uint64_t size = 4u << 20;
    uint8_t *model = malloc(size);
    uint64_t calls;

    sparse_raw(64, model, size); /* 129 runs */
    calls = random_reads(model, size);
    cr_assert_leq(calls, 129, "charted once: %llu extent calls", (unsigned long long)calls);
    cr_assert_geq(calls, 64, "every run was charted");
    free(model);
}

Test(io_posix, a_raw_layer_with_too_many_runs_is_asked_per_read_and_reads_right)
{
    const uint64_t size = 1200ull * 65536;
    uint8_t *model = malloc(size);
    uint64_t calls;

    sparse_raw(1200, model, size); /* 2401 runs: more than the chart holds */
    calls = random_reads(model, size);
    cr_assert_gt(calls, 1024, "%llu extent calls", (unsigned long long)calls);
    free(model);
}

/* ---- preallocation=falloc reserves, it does not write ----------------------------- */

/* Create path with preallocation mode through a counting wrapper; pwrite bytes in *written. */
static uint64_t create_counted(qcow2_prealloc mode, qcow2_format fmt, uint64_t size,
                               uint64_t *written)
{
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;
    qcow2_io *posix;
    io_fault *f;
    uint64_t allocations;

    co.size = size;
    co.format = fmt;
    co.preallocation = mode;
    cr_assert_eq(qcow2_io_posix_open(&posix, path, QCOW2_IO_CREATE | QCOW2_IO_TRUNC), 0);
    f = io_fault_new(posix);
    cr_assert_eq(qcow2_image_create_io(io_fault_io(f), path, &co), 0, "%s",
                 qcow2_error_last()->message);
    *written = io_fault_count(f, IO_FAULT_PWRITE);
    allocations = io_fault_count(f, IO_FAULT_ALLOCATE);
    io_fault_free(f);
    qcow2_io_close(posix);
    return allocations;
}

static void assert_reads_zero(const char *p, uint64_t size)
{
    qcow2_image *img;
    uint8_t buf[65536];

    cr_assert_eq(qcow2_image_open(&img, p, NULL), 0, "%s", qcow2_error_last()->message);
    cr_assert_eq(qcow2_image_size(img), size);
    for (uint64_t off = 0; off < size; off += sizeof(buf)) {
        cr_assert_eq(qcow2_image_read(img, buf, sizeof(buf), off), 0);
        for (size_t i = 0; i < sizeof(buf); i++)
            cr_assert_eq(buf[i], 0, "byte 0x%llx", (unsigned long long)(off + i));
    }
    qcow2_image_close(img);
}

Test(io_posix, falloc_preallocation_reserves_the_space_without_writing_it)
{
    const uint64_t size = 64u << 20;
    uint64_t writes, alloc;
    struct stat st;
    char out[4096];

    /* qcow2: every data cluster reserved with fallocate, only metadata written. */
    cr_assert_geq(create_counted(QCOW2_PREALLOC_FALLOC, QCOW2_FORMAT_QCOW2, size, &writes), 1);
    cr_assert_leq(writes, 16, "%llu writes: metadata only", (unsigned long long)writes);
    cr_assert_eq(stat(path, &st), 0);
    alloc = (uint64_t)st.st_blocks * 512;
    cr_assert_geq(alloc, size, "the data clusters hold space: %llu bytes", (unsigned long long)alloc);
    assert_reads_zero(path, size);
    if (qo_have_qemu())
        cr_assert_eq(qo_check(path, out, sizeof(out)), 0, "qemu-img check: %s", out);
    /* full writes its zeroes; raw falloc reserves too. */
    cr_assert_eq(create_counted(QCOW2_PREALLOC_FULL, QCOW2_FORMAT_QCOW2, size, &writes), 0);
    cr_assert_geq(writes, size / 65536, "full preallocation writes every cluster");
    cr_assert_eq(create_counted(QCOW2_PREALLOC_FALLOC, QCOW2_FORMAT_RAW, size, &writes), 1);
    cr_assert_eq(writes, 0);
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq((uint64_t)st.st_size, size);
    cr_assert_geq((uint64_t)st.st_blocks * 512, size);
}

/* ---- a raw base written by commit's copy offload ----------------------------------- */

Test(io_posix, a_charted_raw_base_reads_what_commit_copied_into_its_holes)
{
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img;
    char top[160];
    uint8_t buf[65536], got[65536];
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

    cr_assert_geq(fd, 0);
    cr_assert_eq(ftruncate(fd, 1 << 20), 0); /* all hole */
    cr_assert_eq(close(fd), 0);
    snprintf(top, sizeof(top), "%s.top.qcow2", path);
    co.size = 1 << 20;
    co.backing_file = strrchr(path, '/') + 1;
    co.backing_format = "raw";
    cr_assert_eq(qcow2_image_create(top, &co), 0, "%s", qcow2_error_last()->message);
    o.flags = QCOW2_OPEN_RDWR;
    cr_assert_eq(qcow2_image_open(&img, top, &o), 0, "%s", qcow2_error_last()->message);
    memset(buf, 7, sizeof(buf));
    cr_assert_eq(qcow2_image_write(img, buf, sizeof(buf), 0), 0);
    /* Reading the base charts it: a hole, all of it. */
    cr_assert_eq(qcow2_image_read(img, got, 4096, 512 << 10), 0);
    cr_assert_eq(qcow2_image_commit(img, NULL), 0, "%s", qcow2_error_last()->message);
    cr_assert_eq(qcow2_image_read(img, got, sizeof(got), 0), 0);
    cr_assert_eq(memcmp(got, buf, sizeof(buf)), 0, "the committed bytes read as %u", got[0]);
    qcow2_image_close(img);
    unlink(top);
}
