/*
 * `qsnap image io`'s read/write family: read, readv (and aio_read), write,
 * writev (and aio_write) and discard, with qemu-io's options, checks and
 * output lines (see cmd_io.c for the dispatcher and the other commands).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <qcow2/qcow2.h>

#include "cli.h"
#include "cmd_io.h"
#include "fmt.h"
#include "opt.h"

/* The byte qemu-io's write fills its buffer with when no -P is given. */
#define IO_DEFAULT_PATTERN 0xcd
/* What qemu-io prints for a request outside the image (its -EIO). */
#define IO_RANGE_ERROR "Input/output error"
/* What qemu-io prints for a misaligned compressed write (its -EINVAL). */
#define IO_ALIGN_ERROR "Invalid argument"
/* Reads go through a buffer of this size, so memory does not grow with LEN. */
#define IO_CHUNK (1u << 20)
/* write -s: the most bytes taken from the source file (it repeats when shorter). */
#define IO_SOURCE_MAX (64u << 20)

/* A -P value as qemu-io reads it; -1 after its message. */
static int parse_pattern(const char *arg)
{
    char *end;
    long v = strtol(arg, &end, 0);

    if (*arg == '\0' || *end != '\0' || v < 0 || v > 255) {
        printf("%s is not a valid pattern byte\n", arg);
        return -1;
    }
    return (int)v;
}

/* Whether [off, off + len) lies inside the image (qemu-io's -EIO otherwise). */
static bool in_range(const struct io_ctx *ctx, uint64_t off, uint64_t len)
{
    uint64_t size = qcow2_image_size(ctx->img);

    return off <= size && len <= size - off;
}

static double now_sec(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* qemu-io's statistics line: "64 KiB, 1 ops; 00.00 sec (1.2 GiB/sec and 18875.4035 ops/sec)" */
static void print_stats(uint64_t bytes, double secs)
{
    char total[CLI_SIZE_STR_MAX], rate[CLI_SIZE_STR_MAX], when[32];

    if (secs < 1e-9)
        secs = 1e-9;
    if (secs < 1.0) {
        snprintf(when, sizeof(when), "%05.2f sec", secs);
    } else {
        unsigned long s = (unsigned long)secs;

        snprintf(when, sizeof(when), "%lu:%02lu:%05.2f", s / 3600, s / 60 % 60,
                 (double)(s % 60) + (secs - (double)s));
    }
    printf("%s, 1 ops; %s (%s/sec and %.4f ops/sec)\n", cli_fmt_size_io((double)bytes, total),
           when, cli_fmt_size_io((double)bytes / secs, rate), 1.0 / secs);
}

/*
 * What read and write print when they succeed: qemu-io's two lines ("read
 * LEN/LEN bytes at offset OFF" and the statistics), or with -C its one
 * machine-readable line: bytes,ops,h:mm:ss.ss,bytes/sec,ops/sec.
 */
static void report(const char *op, uint64_t off, uint64_t len, double secs, bool machine)
{
    unsigned long s;

    if (!machine) {
        printf("%s %" PRIu64 "/%" PRIu64 " bytes at offset %" PRIu64 "\n", op, len, len, off);
        print_stats(len, secs);
        return;
    }
    if (secs < 1e-9)
        secs = 1e-9;
    s = (unsigned long)secs;
    printf("%" PRIu64 ",1,%lu:%02lu:%05.2f,%.3f,%.3f\n", len, s / 3600, s / 60 % 60,
           (double)(s % 60) + (secs - (double)s), (double)len / secs, 1.0 / secs);
}

/* qemu-io's -v dump: 16 bytes a line; letters and digits shown, other bytes as '.'. */
static void dump_buffer(const unsigned char *buf, uint64_t off, uint64_t len)
{
    for (uint64_t i = 0; i < len; i += 16) {
        uint64_t j;

        printf("%08" PRIx64 ":  ", off + i);
        for (j = 0; j < 16 && i + j < len; j++)
            printf("%02x ", buf[i + j]);
        putchar(' ');
        for (j = 0; j < 16 && i + j < len; j++) {
            unsigned char ch = buf[i + j];
            bool alnum = (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
            putchar(alnum ? ch : '.');
        }
        putchar('\n');
    }
}

/*
 * Read [off, off + len) in chunks, from the vm-state area when vm; dump it
 * when dump, and compare bytes [vstart, vstart + vlen) with pattern when
 * pattern >= 0 (*mismatch set at the first difference).
 */
static int read_pass(struct io_ctx *ctx, unsigned char *buf, uint64_t off, uint64_t len, bool vm,
                     bool dump, int pattern, uint64_t vstart, uint64_t vlen, bool *mismatch)
{
    int rc = 0;

    for (uint64_t done = 0; done < len && rc == 0; done += IO_CHUNK) {
        size_t n = len - done < IO_CHUNK ? (size_t)(len - done) : IO_CHUNK;

        rc = vm ? qcow2_vmstate_read(ctx->img, buf, n, off + done)
                : qcow2_image_read(ctx->img, buf, n, off + done);
        if (rc == 0 && dump)
            dump_buffer(buf, off + done, n);
        if (rc < 0 || pattern < 0 || *mismatch)
            continue;
        for (size_t i = 0; i < n; i++) {
            if (done + i >= vstart && done + i - vstart < vlen && buf[i] != pattern) {
                *mismatch = true;
                break;
            }
        }
    }
    return rc;
}

/*
 * What qemu-io prints for a failed vm-state request: the errno text of its
 * -ENOTSUP (no vm-state area: raw) and -EFBIG (past what the L1 maps).
 */
static int vm_failed(const char *what, int rc)
{
    if (rc == QCOW2_EUNSUPPORTED || rc == QCOW2_EINVAL) {
        printf("%s failed: %s\n", what,
               rc == QCOW2_EUNSUPPORTED ? "Operation not supported" : "File too large");
        return -1;
    }
    return io_failed(what, rc);
}

/*
 * Read len bytes at off (in the vm-state area when vm) and print qemu-io's
 * lines: the verification result (pattern < 0: none, else bytes [vstart,
 * vstart + vlen) of the data must equal it), then unless quiet the dump (a
 * second pass when both are asked, so that the lines come in qemu-io's
 * order) and the statistics.
 */
static int do_read_range(struct io_ctx *ctx, uint64_t off, uint64_t len, int pattern, bool quiet,
                         bool dump, uint64_t vstart, uint64_t vlen, bool vm, bool machine)
{
    bool mismatch = false;
    unsigned char *buf;
    int rc;
    double t0, t1;

    if (!vm && !in_range(ctx, off, len)) {
        printf("read failed: %s\n", IO_RANGE_ERROR);
        return -1;
    }
    dump = dump && !quiet;
    buf = malloc(IO_CHUNK);
    if (!buf) {
        printf("read failed: out of memory\n");
        return -1;
    }
    t0 = now_sec();
    rc = read_pass(ctx, buf, off, len, vm, dump && pattern < 0, pattern, vstart, vlen, &mismatch);
    t1 = now_sec();
    if (rc < 0) {
        free(buf);
        return vm ? vm_failed("read", rc) : io_failed("read", rc);
    }
    if (mismatch)
        printf("Pattern verification failed at offset %" PRIu64 ", %" PRIu64 " bytes\n",
               off + vstart, vlen);
    if (dump && pattern >= 0) {
        rc = read_pass(ctx, buf, off, len, vm, true, -1, 0, 0, &mismatch);
        if (rc < 0) {
            free(buf);
            return vm ? vm_failed("read", rc) : io_failed("read", rc);
        }
    }
    free(buf);
    if (!quiet)
        report("read", off, len, t1 - t0, machine);
    return mismatch ? -1 : 0;
}

static int do_read(struct io_ctx *ctx, uint64_t off, uint64_t len, int pattern, bool quiet, bool dump)
{
    return do_read_range(ctx, off, len, pattern, quiet, dump, 0, len, false, false);
}

/* qemu-io's check on a vm-state (-b) or compressed (-c) request: whole 512-byte sectors. */
static bool sector_aligned(uint64_t off, uint64_t len)
{
    if (off % 512) {
        printf("%" PRIu64 " is not a sector-aligned value for 'offset'\n", off);
        return false;
    }
    if (len % 512) {
        printf("%" PRIu64 " is not a sector-aligned value for 'count'\n", len);
        return false;
    }
    return true;
}

/* Parse read's and readv's options; returns the number of operands or -1. */
static int parse_read_opts(const struct io_cmd *cmd, int argc, char **argv, cli_opt_parser *p,
                           int *pattern, bool *quiet, bool *dump)
{
    static const cli_opt_def defs[] = {
        {NULL, 'P', true}, {NULL, 'q', false}, {NULL, 'v', false}, {NULL, 0, false},
    };
    int c;

    *pattern = -1;
    *quiet = *dump = false;
    cli_opt_init(p, argc - 1, argv + 1, defs);
    p->prog = cmd->name;
    while ((c = cli_opt_next(p)) != 0) {
        switch (c) {
        case 'P':
            *pattern = parse_pattern(p->arg);
            if (*pattern < 0)
                return -1;
            break;
        case 'q':
            *quiet = true;
            break;
        case 'v':
            *dump = true;
            break;
        default:
            io_print_usage(cmd);
            return -1;
        }
    }
    return p->nb_operands;
}

int io_cmd_read(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv)
{
    static const cli_opt_def defs[] = {
        {NULL, 'P', true},  {NULL, 'q', false}, {NULL, 'v', false}, {NULL, 's', true},
        {NULL, 'l', true},  {NULL, 'p', false}, {NULL, 'C', false}, {NULL, 'b', false},
        {NULL, 0, false},
    };
    bool quiet = false, dump = false, have_s = false, have_l = false, vm = false, machine = false;
    uint64_t off, len, vstart = 0, vlen = 0;
    int pattern = -1, c;
    cli_opt_parser p;

    cli_opt_init(&p, argc - 1, argv + 1, defs);
    p.prog = cmd->name;
    while ((c = cli_opt_next(&p)) != 0) {
        switch (c) {
        case 'P':
            pattern = parse_pattern(p.arg);
            if (pattern < 0)
                return -1;
            break;
        case 'q':
            quiet = true;
            break;
        case 'v':
            dump = true;
            break;
        case 's':
            if (io_parse_num(p.arg, &vstart) < 0)
                return -1;
            have_s = true;
            break;
        case 'l':
            if (io_parse_num(p.arg, &vlen) < 0)
                return -1;
            have_l = true;
            break;
        case 'b':
            vm = true;
            break;
        case 'C':
            machine = true;
            break;
        case 'p': /* qemu-io's old pread switch: ignored, as in qemu-io */
            break;
        default:
            io_print_usage(cmd);
            return -1;
        }
    }
    if (p.nb_operands != 2 || ((have_s || have_l) && pattern < 0)) {
        io_print_usage(cmd);
        return -1;
    }
    if (io_parse_num(p.argv[0], &off) < 0 || io_parse_num(p.argv[1], &len) < 0)
        return -1;
    if (len > IO_MAX_REQUEST) {
        printf("length cannot exceed %llu, given %s\n", IO_MAX_REQUEST, p.argv[1]);
        return -1;
    }
    if (!have_l)
        vlen = vstart < len ? len - vstart : 0;
    if (vstart > len || vlen > len - vstart) {
        printf("pattern verification range exceeds end of read data\n");
        return -1;
    }
    if (vm && !sector_aligned(off, len))
        return -1;
    return do_read_range(ctx, off, len, pattern, quiet, dump, vstart, vlen, vm, machine);
}

/* The sum of the lengths in words[0..n), or -1 after qemu-io's message. */
static int parse_lengths(char **words, int n, uint64_t *total)
{
    *total = 0;
    for (int i = 0; i < n; i++) {
        uint64_t len;

        if (io_parse_num(words[i], &len) < 0)
            return -1;
        if (len > IO_MAX_REQUEST || *total + len > IO_MAX_REQUEST) {
            printf("length cannot exceed %llu, given %s\n", IO_MAX_REQUEST, words[i]);
            return -1;
        }
        *total += len;
    }
    return 0;
}

/* readv and aio_read: several lengths read as one request (aio: run in order). */
int io_cmd_readv(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv)
{
    cli_opt_parser p;
    bool quiet, dump;
    int pattern, n = parse_read_opts(cmd, argc, argv, &p, &pattern, &quiet, &dump);
    uint64_t off, len;

    if (n < 0)
        return -1;
    if (n < 2) {
        io_print_usage(cmd);
        return -1;
    }
    if (io_parse_num(p.argv[0], &off) < 0 || parse_lengths(p.argv + 1, n - 1, &len) < 0)
        return -1;
    return do_read(ctx, off, len, pattern, quiet, dump);
}

/*
 * The chunk a write of len bytes is done in: all of it up to IO_CHUNK, and
 * whole clusters for a compressed write (so each call stays cluster aligned).
 */
static size_t write_chunk(const struct io_ctx *ctx, uint64_t len, bool compressed)
{
    size_t chunk = IO_CHUNK;

    if (compressed) {
        size_t cs = qcow2_image_cluster_size(ctx->img);

        chunk = cs > IO_CHUNK ? cs : IO_CHUNK / cs * cs;
    }
    return len < chunk ? (size_t)len : chunk;
}

/* Whether a compressed write may start at off with len bytes (whole clusters). */
static bool compressed_aligned(const struct io_ctx *ctx, uint64_t off, uint64_t len)
{
    uint64_t cs = qcow2_image_cluster_size(ctx->img);

    if (qcow2_image_format(ctx->img) != QCOW2_FORMAT_QCOW2)
        return true; /* the library refuses compression for this format */
    return off % cs == 0 && (len % cs == 0 || off + len == qcow2_image_size(ctx->img));
}

/*
 * Whether the image itself (not its backing files) holds a cluster with a
 * host offset in [off, off + len): qemu-io's compressed writes fail with
 * -EIO there (they never overwrite), and so do ours, so that a command file
 * gives the same content through both tools. Returns 1, 0, or a library code.
 */
static int has_own_clusters(struct io_ctx *ctx, uint64_t off, uint64_t len)
{
    const qcow2_image *base = qcow2_image_backing(ctx->img);
    uint64_t end = off + len;

    while (off < end) {
        qcow2_extent e;
        int rc = qcow2_image_block_status(ctx->img, base, off, end - off, &e);

        if (rc < 0)
            return rc;
        if (e.length == 0)
            return QCOW2_ERROR;
        if (e.depth == 0 && (e.flags & (QCOW2_EXT_OFFSET_VALID | QCOW2_EXT_COMPRESSED)))
            return 1;
        off += e.length;
    }
    return 0;
}

/* Write len bytes at off, in chunks: src repeated (when src_len > 0), else pattern. */
static int write_data_from(struct io_ctx *ctx, uint64_t off, uint64_t len, const unsigned char *src,
                           size_t src_len, int pattern, bool compressed, bool vm);

/* Write len bytes of pattern at off, in chunks; returns the library's code. */
static int write_pattern(struct io_ctx *ctx, uint64_t off, uint64_t len, int pattern,
                         bool compressed)
{
    return write_data_from(ctx, off, len, NULL, 0, pattern, compressed, false);
}

static int write_data_from(struct io_ctx *ctx, uint64_t off, uint64_t len, const unsigned char *src,
                           size_t src_len, int pattern, bool compressed, bool vm)
{
    size_t chunk = write_chunk(ctx, len, compressed);
    uint64_t done;
    unsigned char *buf;
    int rc = 0;

    if (len == 0)
        return 0;
    buf = malloc(chunk);
    if (!buf)
        return QCOW2_ENOMEM;
    if (!src_len)
        memset(buf, pattern, chunk);
    for (done = 0; done < len && rc == 0; done += chunk) {
        size_t n = len - done < chunk ? (size_t)(len - done) : chunk;

        for (size_t i = 0; src_len && i < n; i++)
            buf[i] = src[(done + i) % src_len];

        if (vm)
            rc = qcow2_vmstate_write(ctx->img, buf, n, off + done);
        else if (compressed)
            rc = qcow2_image_write_compressed(ctx->img, buf, n, off + done);
        else
            rc = qcow2_image_write(ctx->img, buf, n, off + done);
    }
    free(buf);
    return rc;
}

int io_cmd_write(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv)
{
    static const cli_opt_def defs[] = {
        {NULL, 'P', true},  {NULL, 'q', false}, {NULL, 'z', false}, {NULL, 'u', false},
        {NULL, 'c', false}, {NULL, 'n', false}, {NULL, 'p', false}, {NULL, 's', true},
        {NULL, 'C', false}, {NULL, 'f', false}, {NULL, 'b', false}, {NULL, 0, false},
    };
    bool quiet = false, zero = false, unmap = false, compressed = false, no_cap = false;
    bool vm = false, fua = false, machine = false;
    bool have_pattern = false;
    const char *src_file = NULL;
    unsigned char *src = NULL;
    size_t src_len = 0;
    int pattern = IO_DEFAULT_PATTERN, c, rc;
    uint64_t off, len;
    cli_opt_parser p;
    double t0, t1;

    cli_opt_init(&p, argc - 1, argv + 1, defs);
    p.prog = cmd->name;
    while ((c = cli_opt_next(&p)) != 0) {
        switch (c) {
        case 'P':
            pattern = parse_pattern(p.arg);
            if (pattern < 0)
                return -1;
            have_pattern = true;
            break;
        case 'q':
            quiet = true;
            break;
        case 'z':
            zero = true;
            break;
        case 'u':
            unmap = true;
            break;
        case 'c':
            compressed = true;
            break;
        case 'n':
            no_cap = true;
            break;
        case 'p':
            break; /* ignored, as in qemu-io */
        case 'b':
            vm = true;
            break;
        case 'f':
            fua = true; /* each write is made durable at flush */
            break;
        case 'C':
            machine = true;
            break;
        case 's':
            src_file = p.arg;
            break;
        default:
            io_print_usage(cmd);
            return -1;
        }
    }
    if (p.nb_operands != 2) {
        io_print_usage(cmd);
        return -1;
    }
    /* In qemu-io's order. */
    if (vm && zero) {
        printf("-b and -z cannot be specified at the same time\n");
        return -1;
    }
    if (fua && (vm || compressed)) {
        printf("-f and -b or -c cannot be specified at the same time\n");
        return -1;
    }
    if (no_cap && !zero) {
        printf("-n requires -z to be specified\n");
        return -1;
    }
    if (unmap && !zero) {
        printf("-u requires -z to be specified\n");
        return -1;
    }
    if ((zero + have_pattern + (src_file != NULL)) > 1) {
        printf("Only one of -z, -P, and -s can be specified at the same time\n");
        return -1;
    }
    if (io_parse_num(p.argv[0], &off) < 0 || io_parse_num(p.argv[1], &len) < 0)
        return -1;
    if (len > IO_MAX_REQUEST && !no_cap) {
        printf("length cannot exceed %llu without -n, given %s\n", IO_MAX_REQUEST, p.argv[1]);
        return -1;
    }
    if ((vm || compressed) && !sector_aligned(off, len))
        return -1;
    /* -b wins over -z and -c, -z over -c, as in qemu-io. */
    compressed = compressed && !vm;
    if (!vm && !in_range(ctx, off, len)) {
        printf("write failed: %s\n", IO_RANGE_ERROR);
        return -1;
    }
    if (compressed && !zero && !compressed_aligned(ctx, off, len)) {
        printf("write failed: %s\n", IO_ALIGN_ERROR);
        return -1;
    }
    if (compressed && !zero && qcow2_image_format(ctx->img) == QCOW2_FORMAT_QCOW2) {
        rc = has_own_clusters(ctx, off, len);
        if (rc < 0)
            return io_failed("write", rc);
        if (rc > 0) {
            printf("write failed: %s\n", IO_RANGE_ERROR);
            return -1;
        }
    }
    if (src_file) {
        /* The data is the file's bytes, repeated when the file is shorter (as qemu-io). */
        FILE *f = fopen(src_file, "rb");
        size_t want = len < IO_SOURCE_MAX ? (size_t)len : IO_SOURCE_MAX;
        bool longer;

        if (!f) {
            fprintf(stderr, "%s: %s\n", src_file, strerror(errno));
            return -1;
        }
        src = malloc(want ? want : 1);
        src_len = src ? fread(src, 1, want, f) : 0;
        longer = src_len == want && want < len && fgetc(f) != EOF;
        fclose(f);
        if (!src || (len && src_len == 0) || longer) {
            fprintf(stderr, "%s: %s\n", src_file,
                    !src ? "out of memory" : longer ? "more than 64 MiB of data is used"
                                                    : "the file is empty");
            free(src);
            return -1;
        }
    }
    t0 = now_sec();
    if (zero)
        rc = len ? qcow2_image_write_zeroes(ctx->img, off, len, unmap ? QCOW2_ZERO_MAY_UNMAP : 0)
                 : 0;
    else
        rc = write_data_from(ctx, off, len, src, src_len, pattern, compressed, vm);
    t1 = now_sec();
    free(src);
    if (rc < 0)
        return vm ? vm_failed("write", rc) : io_failed("write", rc);
    if (!quiet)
        report("wrote", off, len, t1 - t0, machine);
    return 0;
}

int io_cmd_discard(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv)
{
    static const cli_opt_def defs[] = {
        {NULL, 'q', false},
        {NULL, 0, false},
    };
    bool quiet = false;
    uint64_t off, len;
    cli_opt_parser p;
    double t0, t1;
    int c, rc;

    cli_opt_init(&p, argc - 1, argv + 1, defs);
    p.prog = cmd->name;
    while ((c = cli_opt_next(&p)) != 0) {
        if (c != 'q') {
            io_print_usage(cmd);
            return -1;
        }
        quiet = true;
    }
    if (p.nb_operands != 2) {
        io_print_usage(cmd);
        return -1;
    }
    if (io_parse_num(p.argv[0], &off) < 0 || io_parse_num(p.argv[1], &len) < 0)
        return -1;
    if (len > IO_MAX_REQUEST) {
        printf("length cannot exceed %llu, given %s\n", IO_MAX_REQUEST, p.argv[1]);
        return -1;
    }
    if (!in_range(ctx, off, len)) {
        printf("discard failed: %s\n", IO_RANGE_ERROR);
        return -1;
    }
    t0 = now_sec();
    rc = len ? qcow2_image_discard(ctx->img, off, len) : 0;
    t1 = now_sec();
    if (rc < 0)
        return io_failed("discard", rc);
    if (!quiet) {
        printf("discard %" PRIu64 "/%" PRIu64 " bytes at offset %" PRIu64 "\n", len, len, off);
        print_stats(len, t1 - t0);
    }
    return 0;
}

/* writev and aio_write: several lengths written as one request (aio: run in order). */
int io_cmd_writev(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv)
{
    static const cli_opt_def defs[] = {
        {NULL, 'P', true}, {NULL, 'q', false}, {NULL, 'z', false},
        {NULL, 'u', false}, {NULL, 0, false},
    };
    bool aio = strcmp(cmd->name, "aio_write") == 0;
    bool quiet = false, zero = false, unmap = false, have_pattern = false;
    int pattern = IO_DEFAULT_PATTERN, c, rc;
    uint64_t off, len;
    cli_opt_parser p;
    double t0, t1;

    cli_opt_init(&p, argc - 1, argv + 1, defs);
    p.prog = cmd->name;
    while ((c = cli_opt_next(&p)) != 0) {
        if (c == 'P') {
            pattern = parse_pattern(p.arg);
            if (pattern < 0)
                return -1;
            have_pattern = true;
        } else if (c == 'q') {
            quiet = true;
        } else if (aio && c == 'z') {
            zero = true;
        } else if (aio && c == 'u') {
            unmap = true;
        } else {
            io_print_usage(cmd);
            return -1;
        }
    }
    if (p.nb_operands < 2) {
        io_print_usage(cmd);
        return -1;
    }
    if (zero && have_pattern) {
        printf("-z and -P cannot be specified at the same time\n");
        return -1;
    }
    if (unmap && !zero) {
        printf("-u requires -z to be specified\n");
        return -1;
    }
    if (io_parse_num(p.argv[0], &off) < 0 || parse_lengths(p.argv + 1, p.nb_operands - 1, &len) < 0)
        return -1;
    if (!in_range(ctx, off, len)) {
        printf("%s failed: %s\n", aio ? "aio_write" : "writev", IO_RANGE_ERROR);
        return -1;
    }
    t0 = now_sec();
    if (zero)
        rc = len ? qcow2_image_write_zeroes(ctx->img, off, len, unmap ? QCOW2_ZERO_MAY_UNMAP : 0)
                 : 0;
    else
        rc = write_pattern(ctx, off, len, pattern, false);
    t1 = now_sec();
    if (rc < 0)
        return io_failed(aio ? "aio_write" : "writev", rc);
    if (!quiet) {
        printf("wrote %" PRIu64 "/%" PRIu64 " bytes at offset %" PRIu64 "\n", len, len, off);
        print_stats(len, t1 - t0);
    }
    return 0;
}
