/*
 * timeit: time one process precisely, for the shell benchmarks (bench/bench_tree.sh).
 *
 *   timeit [-o FILE] COMMAND [ARG...]
 *
 * Runs COMMAND (looked up in PATH) as a child, reaps it with wait4() and prints one
 * line: the wall time in ms (CLOCK_MONOTONIC, from just before the spawn to just after
 * the reap), the child's CPU time in ms (ru_utime + ru_stime, microsecond resolution)
 * and its peak RSS in KiB (ru_maxrss), separated by spaces. The line goes to FILE with
 * -o (replaced), else to stderr, so the child's own output is left alone. The exit
 * status is the child's (128 + the signal number when a signal ended it; 127 when the
 * command could not be run). Nothing else runs between the two clock readings, so the
 * figures are of the child process alone, not of the shell, date or perf around it.
 *
 * The child is started with posix_spawnp() (a fork and exec that shares this process's
 * memory until the exec, as vfork does) rather than fork(): after a fork, the child's
 * copy-on-write faults up to the exec are charged to the child's CPU time, which on this
 * kind of virtual machine adds about 1 ms to every figure, /bin/true's included.
 */
#include <errno.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double ts_ms(const struct timespec *ts)
{
    return (double)ts->tv_sec * 1e3 + (double)ts->tv_nsec / 1e6;
}

static double tv_ms(const struct timeval *tv)
{
    return (double)tv->tv_sec * 1e3 + (double)tv->tv_usec / 1e3;
}

static int usage(void)
{
    fprintf(stderr, "usage: timeit [-o FILE] COMMAND [ARG...]\n");
    return 2;
}

int main(int argc, char **argv)
{
    const char *out_path = NULL;
    int argi = 1;

    if (argi + 1 < argc && strcmp(argv[argi], "-o") == 0) {
        out_path = argv[argi + 1];
        argi += 2;
    }
    if (argi < argc && strcmp(argv[argi], "--") == 0)
        argi++;
    if (argi >= argc || (argv[argi][0] == '-' && argv[argi][1] != '\0'))
        return usage();

    /* Open the output first: nothing but the spawn and wait4 between the clocks. */
    FILE *out = stderr;
    if (out_path && !(out = fopen(out_path, "w"))) {
        fprintf(stderr, "timeit: %s: %s\n", out_path, strerror(errno));
        return 127;
    }

    struct timespec t0, t1;
    struct rusage ru;
    int status = 0;
    pid_t pid, w;
    int err;

    clock_gettime(CLOCK_MONOTONIC, &t0);
    err = posix_spawnp(&pid, argv[argi], NULL, NULL, argv + argi, environ);
    if (err != 0) {
        fprintf(stderr, "timeit: %s: %s\n", argv[argi], strerror(err));
        return 127;
    }
    do {
        w = wait4(pid, &status, 0, &ru);
    } while (w < 0 && errno == EINTR);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (w < 0) {
        fprintf(stderr, "timeit: wait4: %s\n", strerror(errno));
        return 127;
    }

    fprintf(out, "%.3f %.3f %ld\n", ts_ms(&t1) - ts_ms(&t0),
            tv_ms(&ru.ru_utime) + tv_ms(&ru.ru_stime), ru.ru_maxrss);
    if (out != stderr && fclose(out) != 0) {
        fprintf(stderr, "timeit: %s: %s\n", out_path, strerror(errno));
        return 127;
    }
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return 127;
}
