/*
 * `qsnap image io`: a subset of qemu-io. Commands come from each -c in
 * order, or else one per line from stdin; each is split on blanks and run
 * against one open image, read-write unless -r. The output lines follow
 * qemu-io's so that scripts written for it read ours, and a command file
 * gives the same image content through either tool (write fills with the
 * same pattern bytes). The exit status is 1 when any command failed, as in
 * qemu-io.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <qcow2/qcow2.h>

#include "cli.h"
#include "cli_error.h"
#include "fmt.h"
#include "opt.h"

/* qemu-io's cap on one request, in bytes. */
#define IO_MAX_REQUEST 2147483136ull
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
/* Words in one command line. */
#define IO_MAX_WORDS 64

struct io_cmd;

/* The state one command runs against. */
struct io_ctx {
    qcow2_image *img; /* the open image, or NULL after close */
    bool quit;        /* a quit command was run */
    char *path;       /* the image's path (for reopen), owned */
    qcow2_open_opts oo; /* how it was opened */
};

/* A command: returns 0, or -1 when it failed (after printing why). */
typedef int (*io_cmd_fn)(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv);

struct io_cmd {
    const char *name;    /* the command word */
    const char *alias;   /* a short form, or NULL */
    io_cmd_fn fn;        /* what runs it */
    int min_args;        /* fewest words after the command word */
    int max_args;        /* most, or -1 for any */
    const char *args;    /* synopsis of the arguments */
    const char *oneline; /* what it does */
    const char *help;    /* longer help, or NULL */
};

static int cmd_read(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv);
static int cmd_map(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv);
static int cmd_info(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv);
static int cmd_help(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv);
static int cmd_quit(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv);
static int cmd_write(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv);
static int cmd_discard(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv);
static int cmd_flush(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv);
static int cmd_readv(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv);
static int cmd_writev(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv);
static int cmd_aio_flush(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv);
static int cmd_alloc(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv);
static int cmd_length(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv);
static int cmd_truncate(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv);
static int cmd_open(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv);
static int cmd_close(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv);
static int cmd_reopen(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv);

static const struct io_cmd io_cmds[] = {
    {"read", "r", cmd_read, 2, -1, "[-Cpqv] [-P pattern [-s off] [-l len]] off len",
     "reads a number of bytes at a specified offset",
     " Reads LEN bytes of guest data at offset OFF (through the backing chain).\n"
     " OFF and LEN take the suffixes k, M, G, T, P, E (powers of 1024).\n"
     " -P, -- verify that every byte read equals PATTERN (0..255)\n"
     " -q, -- quiet mode, do not show I/O statistics\n"
     " -v, -- dump the data read (hexadecimal and characters)\n"
     " -s, -- with -P: start of the verified range in the data read\n"
     " -l, -- with -P: length of the verified range\n"
     " -p, -C, -- accepted and ignored\n"},
    {"readv", NULL, cmd_readv, 2, -1, "[-qv] [-P pattern] off len [len..]",
     "reads a number of bytes at a specified offset",
     " Reads the sum of the LENs at offset OFF in one request.\n"
     " -P, -- verify that every byte read equals PATTERN (0..255)\n"
     " -q, -- quiet mode, do not show I/O statistics\n"
     " -v, -- dump the data read (hexadecimal and characters)\n"},
    {"writev", NULL, cmd_writev, 2, -1, "[-q] [-P pattern] off len [len..]",
     "writes a number of bytes at a specified offset",
     " Writes the sum of the LENs at offset OFF in one request, filled with\n"
     " PATTERN (default 0xcd).\n"
     " -P, -- fill the data with PATTERN (0..255)\n"
     " -q, -- quiet mode, do not show I/O statistics\n"},
    {"aio_read", NULL, cmd_readv, 2, -1, "[-qv] [-P pattern] off len [len..]",
     "asynchronously reads a number of bytes",
     " As readv; requests run in order, each done before the next command.\n"},
    {"aio_write", NULL, cmd_writev, 2, -1, "[-quz] [-P pattern] off len [len..]",
     "asynchronously writes a number of bytes",
     " As writev (-z: write zeroes, -u: may free the clusters); requests run\n"
     " in order, each done before the next command.\n"},
    {"aio_flush", NULL, cmd_aio_flush, 0, 0, "", "completes all outstanding aio requests",
     " Requests run in order, so none is outstanding: this flushes.\n"},
    {"alloc", NULL, cmd_alloc, 1, 2, "offset [count]",
     "checks if offset is allocated in the file",
     " Counts the bytes of [OFF, OFF+COUNT) (COUNT default 512) that the image\n"
     " itself allocates (data or zero clusters; not its backing files).\n"},
    {"length", "l", cmd_length, 0, 0, "", "gets the length of the current file", NULL},
    {"truncate", "t", cmd_truncate, 1, 3, "[-m prealloc_mode] off",
     "truncates the current file at the given offset",
     " Sets the virtual size to OFF (shrinking discards what lies past it). Only\n"
     " -m off is taken.\n"},
    {"open", "o", cmd_open, 1, -1, "[-rsCnkU] [-t cache] [-d discard] [-o options] [path]",
     "open the file specified by path",
     " Opens PATH (after close) for the other commands. -r read-only, -U without\n"
     " the image lock (with -r). -C, -n, -k, -s, -t, -d and -o are accepted and\n"
     " ignored (there is no host cache mode, copy-on-read or snapshot mode).\n"},
    {"close", "c", cmd_close, 0, 0, "", "close the current open file", NULL},
    {"reopen", NULL, cmd_reopen, 0, -1, "[(-r|-w)] [-c cache] [-o options]",
     "reopens an image with new options",
     " -r reopens read-only, -w read-write; -c and -o are accepted and ignored.\n"},
    {"map", NULL, cmd_map, 0, 0, "", "prints the allocated areas of a file",
     " Lists the ranges allocated in the image itself (not in its backing files).\n"},
    {"info", "i", cmd_info, 0, 0, "", "prints information about the current file", NULL},
    {"help", "?", cmd_help, 0, 1, "[command]", "help for one or all commands", NULL},
    {"quit", "q", cmd_quit, 0, 0, "", "exit the program", NULL},
    {"write", "w", cmd_write, 2, -1, "[-cnquz] [-P pattern | -s source_file] off len",
     "writes a number of bytes at a specified offset",
     " Writes LEN bytes at offset OFF, filled with PATTERN (default 0xcd).\n"
     " OFF and LEN take the suffixes k, M, G, T, P, E (powers of 1024).\n"
     " -c, -- write compressed clusters (OFF and LEN cluster aligned, or LEN\n"
     "        reaching the end of the image)\n"
     " -n, -- with -z, allow LEN beyond the usual request cap\n"
     " -P, -- fill the data with PATTERN (0..255)\n"
     " -s, -- take the data from SOURCE_FILE (repeated when shorter)\n"
     " -q, -- quiet mode, do not show I/O statistics\n"
     " -u, -- with -z, allow the clusters to be freed\n"
     " -p, -C, -f, -- accepted and ignored\n"
     " -z, -- write zeroes (zero clusters where the format has them)\n"},
    {"discard", "d", cmd_discard, 2, -1, "[-q] off len",
     "discards a number of bytes at a specified offset",
     " Discards the whole clusters of LEN bytes at offset OFF.\n"
     " -q, -- quiet mode, do not show I/O statistics\n"},
    {"flush", "f", cmd_flush, 0, 0, "", "flush all in-core file state to disk", NULL},
};

#define NB_IO_CMDS (sizeof(io_cmds) / sizeof(io_cmds[0]))

static void print_cmd_usage(const struct io_cmd *cmd)
{
    printf("%s%s%s -- %s\n", cmd->name, cmd->args[0] ? " " : "", cmd->args, cmd->oneline);
}

/* The number in word, or -1 after qemu-io's parsing message. */
static int parse_num(const char *word, uint64_t *out)
{
    if (cli_parse_size(word, out) == 0)
        return 0;
    printf("Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- %s\n", word);
    return -1;
}

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

/* "<what> failed: <the library's message>" on stdout, as qemu-io prints it. */
static int io_failed(const char *what, int rc)
{
    const qcow2_error *e = qcow2_error_last();

    printf("%s failed: %s\n", what,
           e->code == rc && e->message && e->message[0] ? e->message : qcow2_strerror(rc));
    return -1;
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
    if (secs < 60.0) {
        snprintf(when, sizeof(when), "%05.2f sec", secs);
    } else {
        unsigned long s = (unsigned long)secs;

        snprintf(when, sizeof(when), "%lu:%02lu:%02lu.%02lu", s / 3600, s / 60 % 60, s % 60,
                 (unsigned long)((secs - (double)s) * 100.0));
    }
    printf("%s, 1 ops; %s (%s/sec and %.4f ops/sec)\n", cli_fmt_size_io((double)bytes, total),
           when, cli_fmt_size_io((double)bytes / secs, rate), 1.0 / secs);
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

/* Read len bytes at off and print qemu-io's lines; pattern < 0: no verification. */
/*
 * Read len bytes at off and print qemu-io's lines; pattern < 0: no
 * verification, else bytes [vstart, vstart + vlen) of the data must equal it.
 */
static int do_read_range(struct io_ctx *ctx, uint64_t off, uint64_t len, int pattern, bool quiet,
                         bool dump, uint64_t vstart, uint64_t vlen)
{
    bool verify = pattern >= 0, mismatch = false;
    uint64_t done;
    unsigned char *buf;
    int rc = 0;
    double t0, t1;

    if (!in_range(ctx, off, len)) {
        printf("read failed: %s\n", IO_RANGE_ERROR);
        return -1;
    }
    buf = malloc(IO_CHUNK);
    if (!buf) {
        printf("read failed: out of memory\n");
        return -1;
    }
    t0 = now_sec();
    for (done = 0; done < len && rc == 0; done += IO_CHUNK) {
        size_t n = len - done < IO_CHUNK ? (size_t)(len - done) : IO_CHUNK;
        size_t i;

        rc = qcow2_image_read(ctx->img, buf, n, off + done);
        if (rc == 0 && dump)
            dump_buffer(buf, off + done, n);
        if (rc < 0 || !verify || mismatch)
            continue;
        for (i = 0; i < n; i++) {
            if (done + i >= vstart && done + i - vstart < vlen && buf[i] != pattern) {
                mismatch = true;
                break;
            }
        }
    }
    t1 = now_sec();
    free(buf);
    if (rc < 0)
        return io_failed("read", rc);
    if (mismatch)
        printf("Pattern verification failed at offset %" PRIu64 ", %" PRIu64 " bytes\n",
               off + vstart, vlen);
    if (!quiet) {
        printf("read %" PRIu64 "/%" PRIu64 " bytes at offset %" PRIu64 "\n", len, len, off);
        print_stats(len, t1 - t0);
    }
    return mismatch ? -1 : 0;
}

static int do_read(struct io_ctx *ctx, uint64_t off, uint64_t len, int pattern, bool quiet, bool dump)
{
    return do_read_range(ctx, off, len, pattern, quiet, dump, 0, len);
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
            print_cmd_usage(cmd);
            return -1;
        }
    }
    return p->nb_operands;
}

static int cmd_read(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv)
{
    static const cli_opt_def defs[] = {
        {NULL, 'P', true},  {NULL, 'q', false}, {NULL, 'v', false}, {NULL, 's', true},
        {NULL, 'l', true},  {NULL, 'p', false}, {NULL, 'C', false}, {NULL, 0, false},
    };
    bool quiet = false, dump = false, have_s = false, have_l = false;
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
            if (parse_num(p.arg, &vstart) < 0)
                return -1;
            have_s = true;
            break;
        case 'l':
            if (parse_num(p.arg, &vlen) < 0)
                return -1;
            have_l = true;
            break;
        case 'p': /* qemu-io's old pread switch: ignored, as in qemu-io */
        case 'C': /* copy-on-read for this request: accepted and ignored */
            break;
        default:
            print_cmd_usage(cmd);
            return -1;
        }
    }
    if (p.nb_operands != 2 || ((have_s || have_l) && pattern < 0)) {
        print_cmd_usage(cmd);
        return -1;
    }
    if (parse_num(p.argv[0], &off) < 0 || parse_num(p.argv[1], &len) < 0)
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
    return do_read_range(ctx, off, len, pattern, quiet, dump, vstart, vlen);
}

/* The sum of the lengths in words[0..n), or -1 after qemu-io's message. */
static int parse_lengths(char **words, int n, uint64_t *total)
{
    *total = 0;
    for (int i = 0; i < n; i++) {
        uint64_t len;

        if (parse_num(words[i], &len) < 0)
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
static int cmd_readv(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv)
{
    cli_opt_parser p;
    bool quiet, dump;
    int pattern, n = parse_read_opts(cmd, argc, argv, &p, &pattern, &quiet, &dump);
    uint64_t off, len;

    if (n < 0)
        return -1;
    if (n < 2) {
        print_cmd_usage(cmd);
        return -1;
    }
    if (parse_num(p.argv[0], &off) < 0 || parse_lengths(p.argv + 1, n - 1, &len) < 0)
        return -1;
    return do_read(ctx, off, len, pattern, quiet, dump);
}

/* alloc: the bytes of a range the image itself allocates, as qemu-io counts them. */
static int cmd_alloc(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv)
{
    const qcow2_image *base = qcow2_image_backing(ctx->img);
    uint64_t size = qcow2_image_size(ctx->img), off, count = 512, sum = 0, pos;
    char off_str[CLI_SIZE_STR_MAX];

    (void)cmd;
    if (parse_num(argv[1], &off) < 0 || (argc == 3 && parse_num(argv[2], &count) < 0))
        return -1;
    /* Past the end nothing is counted, and the count shrinks to what lies inside. */
    count = off >= size ? 0 : count < size - off ? count : size - off;
    for (pos = off; pos < off + count;) {
        qcow2_extent e;
        int rc = qcow2_image_block_status(ctx->img, base, pos, off + count - pos, &e);

        if (rc < 0)
            return io_failed("alloc", rc);
        if (e.length == 0)
            break;
        if (e.flags & QCOW2_EXT_PRESENT)
            sum += e.length;
        pos += e.length;
    }
    printf("%" PRIu64 "/%" PRIu64 " bytes allocated at offset %s\n", sum, count,
           cli_fmt_size_io((double)off, off_str));
    return 0;
}

static int cmd_length(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv)
{
    char size[CLI_SIZE_STR_MAX];

    (void)cmd;
    (void)argc;
    (void)argv;
    printf("%s\n", cli_fmt_size_io((double)qcow2_image_size(ctx->img), size));
    return 0;
}

/* Allocation in the image itself, merged into runs, as qemu-io's map prints it. */
static int cmd_map(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv)
{
    const qcow2_image *base = qcow2_image_backing(ctx->img);
    uint64_t size = qcow2_image_size(ctx->img), off = 0;

    (void)cmd;
    (void)argc;
    (void)argv;
    while (off < size) {
        uint64_t start = off;
        bool allocated = false;
        char len_str[CLI_SIZE_STR_MAX], off_str[CLI_SIZE_STR_MAX];

        while (off < size) {
            qcow2_extent e;
            int rc = qcow2_image_block_status(ctx->img, base, off, size - off, &e);
            bool a;

            if (rc < 0) {
                fprintf(stderr, "map failed: %s\n", qcow2_error_last()->message);
                return -1;
            }
            if (e.length == 0 || e.length > size - off) {
                fprintf(stderr, "map failed: bad block status at offset %" PRIu64 "\n", off);
                return -1;
            }
            a = (e.flags & QCOW2_EXT_PRESENT) != 0;
            if (off > start && a != allocated)
                break;
            allocated = a;
            off += e.length;
        }
        printf("%s (0x%" PRIx64 ") bytes %s at offset %s (0x%" PRIx64 ")\n",
               cli_fmt_size_io((double)(off - start), len_str), off - start,
               allocated ? "    allocated" : "not allocated", cli_fmt_size_io((double)start, off_str),
               start);
    }
    return 0;
}

static int cmd_info(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv)
{
    char size[CLI_SIZE_STR_MAX];
    qcow2_info in;
    int rc;

    (void)cmd;
    (void)argc;
    (void)argv;
    rc = qcow2_image_get_info(ctx->img, &in);
    if (rc < 0) {
        fprintf(stderr, "info failed: %s\n", qcow2_error_last()->message);
        return -1;
    }
    printf("format name: %s\n", qcow2_format_name(in.format));
    printf("cluster size: %s\n", cli_fmt_size_io((double)in.cluster_size, size));
    cli_print_format_specific(&in);
    return 0;
}

static const struct io_cmd *find_cmd(const char *word)
{
    size_t i;

    for (i = 0; i < NB_IO_CMDS; i++)
        if (strcmp(word, io_cmds[i].name) == 0 ||
            (io_cmds[i].alias && strcmp(word, io_cmds[i].alias) == 0))
            return &io_cmds[i];
    return NULL;
}

static int cmd_help(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv)
{
    const struct io_cmd *c;
    size_t i;

    (void)ctx;
    (void)cmd;
    if (argc == 2) {
        c = find_cmd(argv[1]);
        if (!c) {
            fprintf(stderr, "command %s not found\n", argv[1]);
            return -1;
        }
        print_cmd_usage(c);
        if (c->help)
            printf("\n%s", c->help);
        return 0;
    }
    for (i = 0; i < NB_IO_CMDS; i++)
        print_cmd_usage(&io_cmds[i]);
    printf("\nUse 'help commandname' for extended help.\n");
    return 0;
}

static int cmd_quit(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv)
{
    (void)cmd;
    (void)argc;
    (void)argv;
    ctx->quit = true;
    return 0;
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
                           size_t src_len, int pattern, bool compressed);

/* Write len bytes of pattern at off, in chunks; returns the library's code. */
static int write_pattern(struct io_ctx *ctx, uint64_t off, uint64_t len, int pattern,
                         bool compressed)
{
    return write_data_from(ctx, off, len, NULL, 0, pattern, compressed);
}

static int write_data_from(struct io_ctx *ctx, uint64_t off, uint64_t len, const unsigned char *src,
                           size_t src_len, int pattern, bool compressed)
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

        if (compressed)
            rc = qcow2_image_write_compressed(ctx->img, buf, n, off + done);
        else
            rc = qcow2_image_write(ctx->img, buf, n, off + done);
    }
    free(buf);
    return rc;
}

static int cmd_write(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv)
{
    static const cli_opt_def defs[] = {
        {NULL, 'P', true},  {NULL, 'q', false}, {NULL, 'z', false}, {NULL, 'u', false},
        {NULL, 'c', false}, {NULL, 'n', false}, {NULL, 'p', false}, {NULL, 's', true},
        {NULL, 'C', false}, {NULL, 'f', false}, {NULL, 0, false},
    };
    bool quiet = false, zero = false, unmap = false, compressed = false, no_cap = false;
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
        case 'C':
        case 'f':
            break; /* qemu-io's compressed-request and FUA flags: each write is made durable at flush */
        case 's':
            src_file = p.arg;
            break;
        default:
            print_cmd_usage(cmd);
            return -1;
        }
    }
    if (p.nb_operands != 2) {
        print_cmd_usage(cmd);
        return -1;
    }
    if ((zero + have_pattern + (src_file != NULL)) > 1) {
        printf("Only one of -z, -P, and -s can be specified at the same time\n");
        return -1;
    }
    if (zero && have_pattern) {
        printf("Only one of -z, -P, and -s can be specified at the same time\n");
        return -1;
    }
    if (unmap && !zero) {
        printf("-u requires -z to be specified\n");
        return -1;
    }
    if (no_cap && !zero) {
        printf("-n requires -z to be specified\n");
        return -1;
    }
    if (parse_num(p.argv[0], &off) < 0 || parse_num(p.argv[1], &len) < 0)
        return -1;
    if (len > IO_MAX_REQUEST && !no_cap) {
        printf("length cannot exceed %llu without -n, given %s\n", IO_MAX_REQUEST, p.argv[1]);
        return -1;
    }
    if (!in_range(ctx, off, len)) {
        printf("write failed: %s\n", IO_RANGE_ERROR);
        return -1;
    }
    /* -z wins over -c, as in qemu-io. */
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
        rc = write_data_from(ctx, off, len, src, src_len, pattern, compressed);
    t1 = now_sec();
    free(src);
    if (rc < 0)
        return io_failed("write", rc);
    if (!quiet) {
        printf("wrote %" PRIu64 "/%" PRIu64 " bytes at offset %" PRIu64 "\n", len, len, off);
        print_stats(len, t1 - t0);
    }
    return 0;
}

static int cmd_discard(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv)
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
            print_cmd_usage(cmd);
            return -1;
        }
        quiet = true;
    }
    if (p.nb_operands != 2) {
        print_cmd_usage(cmd);
        return -1;
    }
    if (parse_num(p.argv[0], &off) < 0 || parse_num(p.argv[1], &len) < 0)
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
static int cmd_writev(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv)
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
            print_cmd_usage(cmd);
            return -1;
        }
    }
    if (p.nb_operands < 2) {
        print_cmd_usage(cmd);
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
    if (parse_num(p.argv[0], &off) < 0 || parse_lengths(p.argv + 1, p.nb_operands - 1, &len) < 0)
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

static int cmd_truncate(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv)
{
    uint64_t off;
    int rc, i = 1;

    if (argc == 4 && strcmp(argv[1], "-m") == 0) {
        if (strcmp(argv[2], "off") != 0) {
            fprintf(stderr, "qsnap: Invalid preallocation mode '%s' (only off)\n", argv[2]);
            return -1;
        }
        i = 3;
    } else if (argc != 2) {
        print_cmd_usage(cmd);
        return -1;
    }
    if (parse_num(argv[i], &off) < 0)
        return -1;
    rc = qcow2_image_resize(ctx->img, off, true);
    if (rc == 0)
        rc = qcow2_image_flush(ctx->img);
    if (rc < 0) {
        fprintf(stderr, "qsnap: %s\n", qcow2_error_last()->message);
        return -1;
    }
    return 0;
}

/* Open path with ctx->oo into ctx (which holds no image). */
static int io_open(struct io_ctx *ctx, const char *path)
{
    char *copy = strdup(path);
    int rc;

    if (!copy) {
        cli_errorf("out of memory");
        return -1;
    }
    rc = qcow2_image_open(&ctx->img, path, &ctx->oo);
    if (rc < 0) {
        fprintf(stderr, "qsnap: can't open device %s: %s\n", path, qcow2_error_last()->message);
        free(copy);
        ctx->img = NULL;
        return -1;
    }
    free(ctx->path);
    ctx->path = copy;
    return 0;
}

static int cmd_open(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv)
{
    static const cli_opt_def defs[] = {
        {NULL, 'r', false}, {NULL, 's', false}, {NULL, 'C', false}, {NULL, 'n', false},
        {NULL, 'k', false}, {NULL, 'U', false}, {NULL, 't', true},  {NULL, 'd', true},
        {NULL, 'o', true},  {NULL, 'i', true},  {NULL, 0, false},
    };
    bool read_only = false, no_lock = false;
    cli_opt_parser p;
    int c;

    if (ctx->img) {
        fprintf(stderr, "qsnap: file open already, try 'help close'\n");
        return -1;
    }
    cli_opt_init(&p, argc - 1, argv + 1, defs);
    p.prog = cmd->name;
    while ((c = cli_opt_next(&p)) != 0) {
        if (c == 'r')
            read_only = true;
        else if (c == 'U')
            no_lock = true;
        else if (!strchr("sCnktdoi", c)) {
            print_cmd_usage(cmd);
            return -1;
        }
    }
    if (p.nb_operands != 1) {
        print_cmd_usage(cmd);
        return -1;
    }
    if (no_lock && !read_only) {
        fprintf(stderr, "qsnap: can't open device %s: force-share=on can only be used with "
                        "read-only images\n", p.argv[0]);
        return -1;
    }
    ctx->oo.flags = (read_only ? 0 : QCOW2_OPEN_RDWR) | (no_lock ? QCOW2_OPEN_NO_LOCK : 0);
    return io_open(ctx, p.argv[0]);
}

/* Close the image (flushed first when it was writable); 0 or -1. final: the end of the run. */
static int io_close(struct io_ctx *ctx, bool final)
{
    int rc = 0;

    if (ctx->oo.flags & QCOW2_OPEN_RDWR) {
        if (final)
            fflush(stdout); /* a failure to make the writes durable comes after the output */
        rc = qcow2_image_flush(ctx->img);
        if (rc < 0)
            cli_fail(rc, CLI_TABLE_IMAGE);
    }
    qcow2_image_close(ctx->img);
    ctx->img = NULL;
    return rc < 0 ? -1 : 0;
}

static int cmd_close(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv)
{
    (void)cmd;
    (void)argc;
    (void)argv;
    return io_close(ctx, false);
}

static int cmd_reopen(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv)
{
    static const cli_opt_def defs[] = {
        {NULL, 'r', false}, {NULL, 'w', false}, {NULL, 'c', true}, {NULL, 'o', true},
        {NULL, 0, false},
    };
    unsigned flags = ctx->oo.flags;
    cli_opt_parser p;
    int c;

    cli_opt_init(&p, argc - 1, argv + 1, defs);
    p.prog = cmd->name;
    while ((c = cli_opt_next(&p)) != 0) {
        if (c == 'r')
            flags &= ~(unsigned)QCOW2_OPEN_RDWR;
        else if (c == 'w')
            flags |= QCOW2_OPEN_RDWR;
        else if (c != 'c' && c != 'o') {
            print_cmd_usage(cmd);
            return -1;
        }
    }
    if (p.nb_operands != 0) {
        print_cmd_usage(cmd);
        return -1;
    }
    if ((flags & QCOW2_OPEN_RDWR) && (flags & QCOW2_OPEN_NO_LOCK)) {
        fprintf(stderr, "qsnap: Cannot reopen read-write with force-share\n");
        return -1;
    }
    if (io_close(ctx, false) < 0)
        return -1;
    ctx->oo.flags = flags;
    if (io_open(ctx, ctx->path) == 0)
        return 0;
    /* Back as it was, so the other commands still have an image. */
    ctx->oo.flags = flags ^ QCOW2_OPEN_RDWR;
    io_open(ctx, ctx->path);
    return -1;
}

/* Every aio request already ran in order: what is left is making it durable. */
static int cmd_aio_flush(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv)
{
    int rc;

    (void)cmd;
    (void)argc;
    (void)argv;
    rc = qcow2_image_flush(ctx->img);
    return rc < 0 ? io_failed("aio_flush", rc) : 0;
}

static int cmd_flush(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv)
{
    int rc;

    (void)cmd;
    (void)argc;
    (void)argv;
    rc = qcow2_image_flush(ctx->img);
    return rc < 0 ? io_failed("flush", rc) : 0;
}

/* Split line (modified in place) and run it; returns -1 when the command failed. */
static int run_line(struct io_ctx *ctx, char *line)
{
    char *words[IO_MAX_WORDS + 1];
    const struct io_cmd *cmd;
    int argc = 0, nargs;
    char *save = NULL, *w;

    for (w = strtok_r(line, " \t\r\n", &save); w; w = strtok_r(NULL, " \t\r\n", &save)) {
        if (argc == IO_MAX_WORDS) {
            fprintf(stderr, "too many arguments (at most %d)\n", IO_MAX_WORDS);
            return -1;
        }
        words[argc++] = w;
    }
    if (argc == 0)
        return 0;
    words[argc] = NULL;
    cmd = find_cmd(words[0]);
    if (!cmd) {
        fprintf(stderr, "command \"%s\" not found\n", words[0]);
        return -1;
    }
    if (!ctx->img && cmd->fn != cmd_open && cmd->fn != cmd_help && cmd->fn != cmd_quit) {
        fprintf(stderr, "no file open, try 'help open'\n");
        return -1;
    }
    nargs = argc - 1;
    if (nargs < cmd->min_args || (cmd->max_args >= 0 && nargs > cmd->max_args)) {
        if (cmd->max_args < 0)
            fprintf(stderr, "bad argument count %d to %s, expected at least %d arguments\n",
                    nargs, cmd->name, cmd->min_args);
        else if (cmd->min_args == cmd->max_args)
            fprintf(stderr, "bad argument count %d to %s, expected %d arguments\n", nargs,
                    cmd->name, cmd->min_args);
        else
            fprintf(stderr, "bad argument count %d to %s, expected between %d and %d arguments\n",
                    nargs, cmd->name, cmd->min_args, cmd->max_args);
        return -1;
    }
    return cmd->fn(ctx, cmd, argc, words);
}

/* Run a command given as a string (copied, since splitting modifies it). */
static int run_string(struct io_ctx *ctx, const char *text)
{
    char *copy = strdup(text);
    int rc;

    if (!copy) {
        cli_errorf("out of memory");
        return -1;
    }
    rc = run_line(ctx, copy);
    free(copy);
    return rc;
}

static const char io_help[] =
    "Usage: qsnap image io [-r] [-f FMT] [-U] [-t MODE] [-c CMD]... FILE\n"
    "\n"
    "Run qemu-io style commands on an image: each -c in order, or else one command\n"
    "per line from standard input (with a prompt when it is a terminal). The image\n"
    "is opened for writing unless -r is given, and flushed at the end.\n"
    "\n"
    "Commands:\n"
    "  read [-qv] [-P PATTERN] OFF LEN  read guest data; with -P, fail unless\n"
    "                                   every byte equals PATTERN; -v dumps it\n"
    "  readv [-qv] [-P PATTERN] OFF LEN [LEN...]\n"
    "                                   read the sum of the LENs in one request\n"
    "  writev [-q] [-P PATTERN] OFF LEN [LEN...]\n"
    "                                   write the sum of the LENs in one request\n"
    "  aio_read, aio_write [-z [-u]], aio_flush\n"
    "                                   as readv and writev, and flush; requests\n"
    "                                   run in order, each done before the next\n"
    "  write [-cnquz] [-P PATTERN] OFF LEN\n"
    "                                   write LEN bytes of PATTERN (default 0xcd);\n"
    "                                   -z zeroes (-u: may free the clusters),\n"
    "                                   -c compressed whole clusters\n"
    "  discard [-q] OFF LEN             discard the whole clusters of a range\n"
    "  flush                            make the writes so far durable\n"
    "  map                              ranges allocated in the image itself\n"
    "  alloc OFF [COUNT]                bytes of a range the image itself allocates\n"
    "  length                           the virtual size\n"
    "  truncate [-m off] OFF            set the virtual size (a shrink discards)\n"
    "  close, open [-rU] PATH, reopen [-r|-w]\n"
    "                                   close the image, open one, reopen it\n"
    "                                   read-only or read-write\n"
    "  info                             format and format-specific information\n"
    "  help [COMMAND]                   list the commands or describe one\n"
    "  quit                             stop reading commands\n"
    "OFF and LEN take the suffixes k, M, G, T, P, E.\n"
    "\n"
    "Options:\n"
    "  -c, --cmd=CMD        run CMD (repeatable)\n"
    "  -r, --read-only      open the image read-only\n"
    "  -f, --format=FMT     image format: qcow2 or raw (default: probe)\n"
    "  -U, --force-share    open without taking the image lock (only with -r)\n"
    "  -t, --cache=MODE     none, writeback, writethrough, directsync or unsafe:\n"
    "                       accepted and ignored (writes are made durable at flush\n"
    "                       and at the end whatever the mode)\n"
    "  -n, -C, -k, -i MODE, -d MODE\n"
    "                       qemu-io's no-cache, copy-on-read, aio and discard\n"
    "                       options: accepted and ignored\n"
    "  -h, --help           show this help and exit\n"
    "\n"
    "Exit status: 0 when every command succeeded, 1 otherwise.\n";

int cli_image_io(int argc, char **argv)
{
    static const cli_opt_def defs[] = {
        {"help", 'h', false},      {"cmd", 'c', true},          {"read-only", 'r', false},
        {"format", 'f', true},     {"force-share", 'U', false}, {"cache", 't', true},
        {"nocache", 'n', false},   {"copy-on-read", 'C', false}, {"native-aio", 'k', false},
        {"aio", 'i', true},        {"discard", 'd', true},      {NULL, 0, false},
    };
    struct io_ctx ctx = {NULL, false, NULL, QCOW2_OPEN_OPTS_INIT};
    bool no_lock = false, read_only = false, failed = false;
    qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
    const char **cmds;
    int nb_cmds = 0, c, i, rc;
    cli_opt_parser p;

    cmds = calloc((size_t)argc, sizeof(*cmds));
    if (!cmds) {
        cli_errorf("out of memory");
        return 1;
    }
    cli_opt_init(&p, argc - 1, argv + 1, defs);
    while ((c = cli_opt_next(&p)) != 0) {
        switch (c) {
        case 'h':
            fputs(io_help, stdout);
            free(cmds);
            return 0;
        case 'c':
            cmds[nb_cmds++] = p.arg;
            break;
        case 'r':
            read_only = true;
            break;
        case 'f':
            if (!cli_parse_format(p.arg, &oo.format))
                goto out_usage;
            break;
        case 'U':
            no_lock = true;
            break;
        case 't':
            if (strcmp(p.arg, "none") != 0 && strcmp(p.arg, "writeback") != 0 &&
                strcmp(p.arg, "writethrough") != 0 && strcmp(p.arg, "directsync") != 0 &&
                strcmp(p.arg, "unsafe") != 0) {
                cli_errorf("Invalid cache option: %s", p.arg);
                goto out_usage;
            }
            break; /* accepted; writes are flushed at flush and at the end whatever the mode */
        case 'n':
        case 'C':
        case 'k':
        case 'i':
        case 'd':
            break; /* accepted and ignored: no host cache bypass, copy-on-read or aio modes */
        default:
            cli_usage_hint("qsnap image io", 1);
            goto out_usage;
        }
    }
    if (p.nb_operands != 1) {
        cli_errorf("Expecting one image file name");
        cli_usage_hint("qsnap image io", 1);
        goto out_usage;
    }
    if (no_lock && !read_only) {
        cli_errorf("can't open device %s: force-share=on can only be used with read-only images",
                   p.argv[0]);
        goto out_usage;
    }
    oo.flags = (read_only ? 0 : QCOW2_OPEN_RDWR) | (no_lock ? QCOW2_OPEN_NO_LOCK : 0);
    ctx.oo = oo;
    ctx.path = strdup(p.argv[0]);
    rc = ctx.path ? qcow2_image_open(&ctx.img, p.argv[0], &oo) : QCOW2_ENOMEM;
    if (rc < 0) {
        /* -U needs -r: reads only. */
        cli_fail_open(rc, CLI_TABLE_IMAGE,
                      no_lock ? NULL : read_only ? CLI_SHARE_FLAG : "-r -U (read-only access)");
        goto out_usage;
    }

    if (nb_cmds > 0) {
        for (i = 0; i < nb_cmds && !ctx.quit; i++)
            if (run_string(&ctx, cmds[i]) < 0)
                failed = true;
    } else {
        bool prompt = isatty(STDIN_FILENO) != 0;
        char *line = NULL;
        size_t cap = 0;

        for (;;) {
            if (prompt) {
                printf("qsnap> ");
                fflush(stdout);
            }
            if (getline(&line, &cap, stdin) < 0)
                break;
            if (run_line(&ctx, line) < 0)
                failed = true;
            fflush(stdout);
            if (ctx.quit)
                break;
        }
        free(line);
        if (prompt && !ctx.quit)
            printf("\n");
    }
    /* Report a failure to make the writes durable (close cannot). */
    if (ctx.img && io_close(&ctx, true) < 0)
        failed = true;
    free(ctx.path);
    free(cmds);
    return failed ? 1 : 0;

out_usage:
    free(ctx.path);
    free(cmds);
    return 1;
}
