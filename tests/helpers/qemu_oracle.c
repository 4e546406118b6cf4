/* qemu_oracle: qemu-img as the reference for tests (see qemu_oracle.h). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "qemu_oracle.h"

int qo_sh(char *out, size_t out_len, const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    FILE *p;
    size_t used = 0;
    int status;

    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd) - 8, fmt, ap);
    va_end(ap);
    strcat(cmd, " 2>&1");
    if (out && out_len)
        out[0] = '\0';
    p = popen(cmd, "r");
    if (!p)
        return -1;
    for (;;) {
        char buf[1024];
        size_t n = fread(buf, 1, sizeof(buf), p);
        if (n == 0)
            break;
        if (out && out_len && used + 1 < out_len) {
            size_t take = n < out_len - 1 - used ? n : out_len - 1 - used;
            memcpy(out + used, buf, take);
            used += take;
            out[used] = '\0';
        }
    }
    status = pclose(p);
    if (status == -1 || !WIFEXITED(status))
        return -1;
    return WEXITSTATUS(status);
}

bool qo_have_qemu(void)
{
    return qo_sh(NULL, 0, "qemu-img --version && qemu-io --version") == 0;
}

int qo_write_file(const char *path, const void *data, size_t len)
{
    const uint8_t *p = data;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

    if (fd < 0)
        return -errno;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            int e = errno;
            if (e == EINTR)
                continue;
            close(fd);
            return -e;
        }
        p += n;
        len -= (size_t)n;
    }
    if (close(fd) != 0)
        return -errno;
    return 0;
}

uint8_t *qo_read_file(const char *path, size_t *len_out)
{
    struct stat st;
    uint8_t *buf;
    size_t got = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return NULL;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return NULL;
    }
    buf = malloc((size_t)st.st_size + 1);
    while (buf && got < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
        if (n <= 0) {
            free(buf);
            buf = NULL;
            break;
        }
        got += (size_t)n;
    }
    close(fd);
    if (buf)
        buf[got] = '\0'; /* callers search text files with strstr */
    if (buf && len_out)
        *len_out = got;
    return buf;
}

int qo_dump_memfs(memfs *fs, const char *mpath, const char *dst)
{
    size_t len;
    const uint8_t *data = memfs_get(fs, mpath, &len);

    if (!data)
        return -ENOENT;
    return qo_write_file(dst, data, len);
}

int qo_check(const char *path, char *out, size_t out_len)
{
    return qo_sh(out, out_len, "qemu-img check '%s'", path);
}

int64_t qo_check_json_field(const char *path, const char *field)
{
    char out[8192], key[128];
    const char *p;
    long long v;
    int rc = qo_sh(out, sizeof(out), "qemu-img check --output=json '%s'", path);

    if (rc < 0 || rc == 1)
        return -1;
    snprintf(key, sizeof(key), "\"%s\":", field);
    p = strstr(out, key);
    if (!p || sscanf(p + strlen(key), " %lld", &v) != 1)
        return -1;
    return v;
}

int qo_mkdtemp(char *dir, size_t dir_len, const char *tag)
{
    if (snprintf(dir, dir_len, "/tmp/qcow2-%s-XXXXXX", tag) >= (int)dir_len)
        return -ENAMETOOLONG;
    if (!mkdtemp(dir))
        return -errno;
    return 0;
}

void qo_rmtree(const char *dir)
{
    if (strncmp(dir, "/tmp/", 5) != 0 || strstr(dir, ".."))
        return;
    (void)qo_sh(NULL, 0, "rm -rf '%s'", dir);
}

int qo_wait_output(int fd, const char *needle, int secs)
{
    char buf[256];
    size_t got = 0, keep = strlen(needle);
    struct timespec t0, t;

    if (keep > 64)
        return -1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    buf[0] = '\0';
    while (!strstr(buf, needle)) {
        struct pollfd pf = {fd, POLLIN, 0};
        ssize_t r;
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (t.tv_sec - t0.tv_sec >= secs)
            return -1;
        if (poll(&pf, 1, 1000) <= 0)
            continue;
        r = read(fd, buf + got, sizeof(buf) - 1 - got);
        if (r <= 0)
            return -1;
        got += (size_t)r;
        buf[got] = '\0';
        if (got > sizeof(buf) / 2) { /* keep the tail: the needle may straddle two reads */
            memmove(buf, buf + got - keep, keep + 1);
            got = keep;
        }
    }
    return 0;
}
