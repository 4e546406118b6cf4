/*
 * Helpers shared by the benchmarks: a deterministic data generator, timing
 * of child processes (wall clock, CPU time and peak RSS through wait4),
 * medians, page-cache dropping and the BENCH_RUNS knob.
 *
 * Every timed operation runs in a child process, ours as well as qemu-img's,
 * so peak RSS figures describe the same thing: one process doing one job.
 */
#ifndef BENCH_UTIL_H
#define BENCH_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BU_KiB (1024ull)
#define BU_MiB (1024ull * 1024)
#define BU_GiB (1024ull * 1024 * 1024)
#define BU_TiB (1024ull * 1024 * 1024 * 1024)

/* The fixed seed of every generated data set. */
#define BU_SEED 0x5eed0f0c0ffee123ull

/** Deterministic pseudo-random generator (splitmix64 seeding xoshiro256**). */
typedef struct bu_rng {
    uint64_t s[4];
} bu_rng;

void bu_rng_init(bu_rng *r, uint64_t seed);
uint64_t bu_rng_next(bu_rng *r);
/** Uniform in [0, n), n > 0. */
uint64_t bu_rng_below(bu_rng *r, uint64_t n);
/** Fill buf with random bytes (incompressible). */
void bu_fill_random(bu_rng *r, void *buf, size_t len);
/** Fill buf with text-like bytes that compress about 3:1 (for compression benchmarks). */
void bu_fill_text(bu_rng *r, void *buf, size_t len);

/** What one child process cost. */
typedef struct bu_result {
    double wall;    /**< seconds, fork to reap */
    double user;    /**< seconds of user CPU */
    double sys;     /**< seconds of system CPU */
    long maxrss_kb; /**< peak resident set, KiB */
    int status;     /**< exit status (0 = success), or 128 + signal */
} bu_result;

/**
 * Run argv[0] (looked up in PATH) with argv, stdout and stderr to
 * out_path (NULL: /dev/null), and measure it. Returns 0 when the child
 * exited with status 0, -1 otherwise (r is filled in either case).
 */
int bu_spawn(char *const argv[], const char *out_path, bu_result *r);

/** Run a shell command line quietly; exits the program with a message on failure. */
void bu_sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/** Monotonic clock, seconds. */
double bu_now(void);

/** sync and drop the page cache; false when not permitted. */
bool bu_drop_caches(void);

/** BENCH_RUNS from the environment when set (>= 1), else dflt. */
unsigned bu_runs(unsigned dflt);

/** Median of v[0..n) (v is sorted in place); 0 for n == 0. */
double bu_median(double *v, size_t n);

/** Print a message to stderr and exit(1). */
void bu_die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/** malloc that dies on failure. */
void *bu_xmalloc(size_t len);

/** Format a KiB figure as "12.3 MiB" into buf (size >= 16). */
const char *bu_fmt_kib(char *buf, size_t size, long kib);

#endif /* BENCH_UTIL_H */
