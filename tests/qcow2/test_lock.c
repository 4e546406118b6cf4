/*
 * Image locking at the API level against real qemu processes: a qemu-io
 * holding an image read-write makes qcow2_image_open(RDWR) fail with
 * QCOW2_EBUSY and an "in use" message, and succeed once qemu-io is gone;
 * while we hold an image read-write, `qemu-img info` fails and
 * `qemu-img info -U` works. (test_io_posix.c covers the lock bytes.)
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "qcow2_int.h"
#include "qemu_oracle.h"

static char dir[64];
static char path[128];

static void setup(void)
{
    cr_assert_eq(qo_mkdtemp(dir, sizeof(dir), "lock"), 0);
    snprintf(path, sizeof(path), "%s/img.qcow2", dir);
}

static void teardown(void)
{
    qo_rmtree(dir);
}

TestSuite(lock, .init = setup, .fini = teardown, .timeout = 60);

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

struct qproc {
    pid_t pid;
    int cmd_fd; /* qemu-io's stdin; closing it makes qemu-io quit */
    int out_fd; /* its stdout */
};

/* Whether some open file description holds a lock on byte of path. */
static bool byte_locked(const char *p, off_t byte)
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

/*
 * Start qemu-io on path (read-write unless ro); ready once it prints its
 * first prompt, after its open. Its lock byte alone is not enough: QEMU sets
 * its bytes and checks the others' afterwards, so an open that locks in
 * between makes both fail, and qemu-io exits.
 */
static void qemu_io_start(struct qproc *q, bool ro)
{
    int in[2], out[2];

    cr_assert_eq(pipe2(in, O_CLOEXEC), 0);
    cr_assert_eq(pipe2(out, O_CLOEXEC), 0);
    q->pid = fork();
    cr_assert_geq(q->pid, 0);
    if (q->pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(in[0], 0);
        dup2(out[1], 1);
        dup2(null, 2);
        if (ro)
            execlp("qemu-io", "qemu-io", "-r", path, (char *)NULL);
        else
            execlp("qemu-io", "qemu-io", path, (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    q->cmd_fd = in[1];
    q->out_fd = out[0];
    cr_assert_eq(qo_wait_output(q->out_fd, "qemu-io> ", 120), 0,
                 "qemu-io exited, or gave no prompt within 120 s");
    cr_assert(byte_locked(path, ro ? 100 : 101), "qemu-io is ready but does not lock the image");
}

static void qemu_io_stop(struct qproc *q)
{
    int status;

    close(q->cmd_fd);
    for (int i = 0; i < 500; i++) {
        if (waitpid(q->pid, &status, WNOHANG) == q->pid)
            goto out;
        sleep_ms(10);
    }
    kill(q->pid, SIGKILL);
    waitpid(q->pid, &status, 0);
out:
    close(q->out_fd);
}

static int open_image(qcow2_image **img, unsigned flags)
{
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;

    o.flags = flags;
    *img = NULL;
    return qcow2_image_open(img, path, &o);
}

static void create_image(void)
{
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;

    co.size = 1 << 20;
    cr_assert_eq(qcow2_image_create(path, &co), 0, "%s", qcow2_error_last()->message);
}

Test(lock, qemu_io_writer_makes_our_writer_busy)
{
    struct qproc q;
    qcow2_image *img;
    const char *msg;
    int rc;

    if (!qo_have_qemu())
        cr_skip_test("qemu-img/qemu-io not installed");
    create_image();
    qemu_io_start(&q, false);
    rc = open_image(&img, QCOW2_OPEN_RDWR);
    msg = qcow2_error_last()->message;
    if (rc == 0)
        qcow2_image_close(img);
    cr_assert_eq(rc, QCOW2_EBUSY, "open RDWR while qemu-io writes: %d", rc);
    cr_assert_not_null(msg);
    cr_assert_not_null(strstr(msg, "in use"), "message: %s", msg);
    cr_assert_not_null(strstr(msg, "img.qcow2"), "message names the file: %s", msg);
    /* A reader is refused too: qemu-io's writer does not share its write permission. */
    rc = open_image(&img, 0);
    if (rc == 0)
        qcow2_image_close(img);
    cr_assert_eq(rc, QCOW2_EBUSY, "open RO while qemu-io writes: %d", rc);
    /* -U style: no lock, so it opens. */
    rc = open_image(&img, QCOW2_OPEN_NO_LOCK);
    cr_assert_eq(rc, 0, "open NO_LOCK: %s", qcow2_error_last()->message);
    qcow2_image_close(img);
    qemu_io_stop(&q);

    rc = open_image(&img, QCOW2_OPEN_RDWR);
    cr_assert_eq(rc, 0, "open RDWR after qemu-io exited: %d %s", rc, qcow2_error_last()->message);
    cr_assert_eq(qcow2_image_write(img, "x", 1, 0), 0);
    qcow2_image_close(img);
}

Test(lock, qemu_io_reader_allows_our_reader_not_our_writer)
{
    struct qproc q;
    qcow2_image *img;
    int rc;

    if (!qo_have_qemu())
        cr_skip_test("qemu-img/qemu-io not installed");
    create_image();
    qemu_io_start(&q, true);
    rc = open_image(&img, QCOW2_OPEN_RDWR);
    if (rc == 0)
        qcow2_image_close(img);
    cr_assert_eq(rc, QCOW2_EBUSY, "open RDWR while qemu-io reads: %d", rc);
    cr_assert_not_null(strstr(qcow2_error_last()->message, "in use"), "message: %s",
                       qcow2_error_last()->message);
    rc = open_image(&img, 0);
    cr_assert_eq(rc, 0, "open RO while qemu-io reads: %s", qcow2_error_last()->message);
    qcow2_image_close(img);
    qemu_io_stop(&q);
}

Test(lock, our_writer_refuses_qemu_img_info_without_U)
{
    qcow2_image *img;
    char out[4096];
    int rc;

    if (!qo_have_qemu())
        cr_skip_test("qemu-img/qemu-io not installed");
    create_image();
    cr_assert_eq(open_image(&img, QCOW2_OPEN_RDWR), 0, "%s", qcow2_error_last()->message);
    cr_assert_eq(qcow2_image_write(img, "abc", 3, 4096), 0);
    rc = qo_sh(out, sizeof(out), "qemu-img info '%s'", path);
    cr_assert_neq(rc, 0, "qemu-img info got in while we write:\n%s", out);
    cr_assert_not_null(strstr(out, "lock"), "qemu-img says why: %s", out);
    rc = qo_sh(out, sizeof(out), "qemu-img info -U '%s'", path);
    cr_assert_eq(rc, 0, "qemu-img info -U: %s", out);
    rc = qo_sh(out, sizeof(out), "qemu-io -c 'write 0 512' '%s'", path);
    cr_assert_neq(rc, 0, "a qemu writer got in while we write:\n%s", out);
    /* A second writer of our own is refused as well. */
    {
        qcow2_image *img2;
        rc = open_image(&img2, QCOW2_OPEN_RDWR);
        if (rc == 0)
            qcow2_image_close(img2);
        cr_assert_eq(rc, QCOW2_EBUSY);
    }
    qcow2_image_close(img);
    rc = qo_sh(out, sizeof(out), "qemu-img info '%s'", path);
    cr_assert_eq(rc, 0, "qemu-img info after close: %s", out);
    rc = qo_sh(out, sizeof(out), "qemu-io -c 'read -P 0x61 4096 1' '%s'", path);
    cr_assert_eq(rc, 0, "qemu-io reads our write after close: %s", out);
    cr_assert_null(strstr(out, "Pattern verification failed"), "%s", out);
}
