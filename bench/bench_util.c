/*
 * Benchmark helpers: see bench_util.h.
 */
#include "bench_util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- data ------------------------------------------------------------------ */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void bu_rng_init(bu_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t bu_rng_next(bu_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;

    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

uint64_t bu_rng_below(bu_rng *r, uint64_t n)
{
    /* Rejection sampling: no modulo bias. */
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t v;

    do
        v = bu_rng_next(r);
    while (v >= limit);
    return v % n;
}

void bu_fill_random(bu_rng *r, void *buf, size_t len)
{
    uint8_t *p = buf;

    while (len >= 8) {
        uint64_t v = bu_rng_next(r);
        memcpy(p, &v, 8);
        p += 8;
        len -= 8;
    }
    if (len) {
        uint64_t v = bu_rng_next(r);
        memcpy(p, &v, len);
    }
}

void bu_fill_text(bu_rng *r, void *buf, size_t len)
{
    static const char *const words[] = {
        "qcow2",   "cluster", "refcount", "table",  "backing", "overlay", "snapshot", "guest",
        "offset",  "image",   "commit",   "stream", "convert", "layer",   "header",   "zero",
        "the",     "a",       "of",       "and",    "to",      "in",      "is",       "data",
        "block",   "write",   "read",     "flush",  "chain",   "host",    "file",     "disk",
        "kernel",  "page",    "cache",    "buffer", "queue",   "thread",  "lock",     "entry",
        "journal", "inode",   "extent",   "sector", "device",  "driver",  "memory",   "map",
    };
    const size_t nwords = sizeof(words) / sizeof(words[0]);
    uint8_t *p = buf;
    size_t i = 0;

    while (i < len) {
        uint64_t v = bu_rng_next(r);
        const char *w = words[v % nwords];
        size_t wl = strlen(w);

        for (size_t j = 0; j < wl && i < len; j++)
            p[i++] = (uint8_t)w[j];
        if (i < len)
            p[i++] = (v >> 32) % 11 == 0 ? '\n' : ' ';
        /* Some digits, as logs and configs have. */
        if ((v >> 40) % 7 == 0) {
            char num[24];
            int n = snprintf(num, sizeof(num), "%u ", (unsigned)((v >> 48) % 100000));
            for (int j = 0; j < n && i < len; j++)
                p[i++] = (uint8_t)num[j];
        }
    }
}

/* ---- processes ------------------------------------------------------------ */

double bu_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double tv_sec(const struct timeval *tv)
{
    return (double)tv->tv_sec + (double)tv->tv_usec * 1e-6;
}

int bu_spawn(char *const argv[], const char *out_path, bu_result *r)
{
    struct rusage ru;
    double t0;
    pid_t pid, w;
    int status = 0;

    memset(r, 0, sizeof(*r));
    fflush(NULL);
    t0 = bu_now();
    pid = fork();
    if (pid < 0)
        bu_die("fork: %s", strerror(errno));
    if (pid == 0) {
        int fd = open(out_path ? out_path : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, STDOUT_FILENO);
            dup2(fd, STDERR_FILENO);
            if (fd > STDERR_FILENO)
                close(fd);
        }
        execvp(argv[0], argv);
        _exit(127);
    }
    do
        w = wait4(pid, &status, 0, &ru);
    while (w < 0 && errno == EINTR);
    r->wall = bu_now() - t0;
    if (w < 0)
        bu_die("wait4: %s", strerror(errno));
    r->user = tv_sec(&ru.ru_utime);
    r->sys = tv_sec(&ru.ru_stime);
    r->maxrss_kb = ru.ru_maxrss;
    if (WIFEXITED(status))
        r->status = WEXITSTATUS(status);
    else
        r->status = 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    return r->status == 0 ? 0 : -1;
}

void bu_sh(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    int rc;

    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    fflush(NULL);
    rc = system(cmd);
    if (rc != 0)
        bu_die("command failed (status %d): %s", rc, cmd);
}

bool bu_drop_caches(void)
{
    int fd;
    bool ok;

    sync();
    fd = open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ok = write(fd, "3\n", 2) == 2;
    close(fd);
    return ok;
}

unsigned bu_runs(unsigned dflt)
{
    const char *s = getenv("BENCH_RUNS");
    char *end;
    unsigned long v;

    if (!s || !*s)
        return dflt;
    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno || *end || v < 1 || v > 1000)
        bu_die("BENCH_RUNS must be a number from 1 to 1000 (got '%s')", s);
    return (unsigned)v;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

double bu_median(double *v, size_t n)
{
    if (!n)
        return 0;
    qsort(v, n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

void bu_die(const char *fmt, ...)
{
    va_list ap;

    fflush(stdout);
    fputs("bench: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

void *bu_xmalloc(size_t len)
{
    void *p = malloc(len ? len : 1);

    if (!p)
        bu_die("out of memory (%zu bytes)", len);
    return p;
}

const char *bu_fmt_kib(char *buf, size_t size, long kib)
{
    if (kib <= 0)
        snprintf(buf, size, "-");
    else if (kib < 1024)
        snprintf(buf, size, "%ld KiB", kib);
    else
        snprintf(buf, size, "%.1f MiB", (double)kib / 1024.0);
    return buf;
}
