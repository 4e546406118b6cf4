/*
 * `qsnap image io`: a subset of qemu-io. Commands come from each -c in
 * order, or else one per line from stdin; each is split on blanks and run
 * against one open image. The output lines follow qemu-io's so that scripts
 * written for it read ours. The exit status is 1 when any command failed,
 * as in qemu-io.
 */
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
/* Reads go through a buffer of this size, so memory does not grow with LEN. */
#define IO_CHUNK (1u << 20)
/* Words in one command line. */
#define IO_MAX_WORDS 64

struct io_cmd;

/* The state one command runs against. */
struct io_ctx {
    qcow2_image *img; /* the open image */
    bool quit;        /* a quit command was run */
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
static int cmd_later(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv);

static const struct io_cmd io_cmds[] = {
    {"read", "r", cmd_read, 2, -1, "[-q] [-P pattern] off len",
     "reads a number of bytes at a specified offset",
     " Reads LEN bytes of guest data at offset OFF (through the backing chain).\n"
     " OFF and LEN take the suffixes k, M, G, T, P, E (powers of 1024).\n"
     " -P, -- verify that every byte read equals PATTERN (0..255)\n"
     " -q, -- quiet mode, do not show I/O statistics\n"},
    {"map", NULL, cmd_map, 0, 0, "", "prints the allocated areas of a file",
     " Lists the ranges allocated in the image itself (not in its backing files).\n"},
    {"info", "i", cmd_info, 0, 0, "", "prints information about the current file", NULL},
    {"help", "?", cmd_help, 0, 1, "[command]", "help for one or all commands", NULL},
    {"quit", "q", cmd_quit, 0, 0, "", "exit the program", NULL},
    {"write", "w", cmd_later, 0, -1, "", "not supported yet", NULL},
    {"discard", "d", cmd_later, 0, -1, "", "not supported yet", NULL},
    {"flush", "f", cmd_later, 0, -1, "", "not supported yet", NULL},
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

static int cmd_read(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv)
{
    static const cli_opt_def defs[] = {
        {NULL, 'P', true}, {NULL, 'q', false}, {NULL, 0, false},
    };
    cli_opt_parser p;
    bool quiet = false, verify = false, mismatch = false;
    uint64_t off, len, done;
    unsigned char *buf;
    int pattern = 0, c, rc = 0;
    double t0, t1;

    cli_opt_init(&p, argc - 1, argv + 1, defs);
    p.prog = cmd->name;
    while ((c = cli_opt_next(&p)) != 0) {
        switch (c) {
        case 'P': {
            char *end;
            long v = strtol(p.arg, &end, 0);

            if (*p.arg == '\0' || *end != '\0' || v < 0 || v > 255) {
                printf("%s is not a valid pattern byte\n", p.arg);
                return -1;
            }
            pattern = (int)v;
            verify = true;
            break;
        }
        case 'q':
            quiet = true;
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
    if (parse_num(p.argv[0], &off) < 0 || parse_num(p.argv[1], &len) < 0)
        return -1;
    if (len > IO_MAX_REQUEST) {
        printf("length cannot exceed %llu, given %s\n", IO_MAX_REQUEST, p.argv[1]);
        return -1;
    }
    if (off > qcow2_image_size(ctx->img) || len > qcow2_image_size(ctx->img) - off) {
        fprintf(stderr,
                "read failed: %s: %" PRIu64 " bytes at offset %" PRIu64
                " go beyond the virtual size (%" PRIu64 " bytes)\n",
                qcow2_image_filename(ctx->img), len, off, qcow2_image_size(ctx->img));
        return -1;
    }
    buf = malloc(IO_CHUNK);
    if (!buf) {
        fprintf(stderr, "read failed: out of memory\n");
        return -1;
    }
    t0 = now_sec();
    for (done = 0; done < len && rc == 0; done += IO_CHUNK) {
        size_t n = len - done < IO_CHUNK ? (size_t)(len - done) : IO_CHUNK;
        size_t i;

        rc = qcow2_image_read(ctx->img, buf, n, off + done);
        if (rc < 0 || !verify || mismatch)
            continue;
        for (i = 0; i < n; i++) {
            if (buf[i] != pattern) {
                mismatch = true;
                break;
            }
        }
    }
    t1 = now_sec();
    free(buf);
    if (rc < 0) {
        const qcow2_error *e = qcow2_error_last();

        fprintf(stderr, "read failed: %s\n",
                e->code == rc && e->message ? e->message : qcow2_strerror(rc));
        return -1;
    }
    if (mismatch)
        printf("Pattern verification failed at offset %" PRIu64 ", %" PRIu64 " bytes\n", off, len);
    if (!quiet) {
        printf("read %" PRIu64 "/%" PRIu64 " bytes at offset %" PRIu64 "\n", len, len, off);
        print_stats(len, t1 - t0);
    }
    return mismatch ? -1 : 0;
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

static int cmd_later(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv)
{
    (void)ctx;
    (void)argc;
    (void)argv;
    fprintf(stderr, "%s: not supported yet\n", cmd->name);
    return -1;
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
    nargs = argc - 1;
    if (nargs < cmd->min_args) {
        fprintf(stderr, "bad argument count %d to %s, expected at least %d arguments\n", nargs,
                cmd->name, cmd->min_args);
        return -1;
    }
    if (cmd->max_args >= 0 && nargs > cmd->max_args) {
        fprintf(stderr, "bad argument count %d to %s, expected at most %d arguments\n", nargs,
                cmd->name, cmd->max_args);
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
    "Usage: qsnap image io [-r] [-f FMT] [-U] [-c CMD]... FILE\n"
    "\n"
    "Run qemu-io style commands on an image: each -c in order, or else one command\n"
    "per line from standard input (with a prompt when it is a terminal).\n"
    "\n"
    "Commands:\n"
    "  read [-q] [-P PATTERN] OFF LEN   read guest data; with -P, fail unless\n"
    "                                   every byte equals PATTERN\n"
    "  map                              ranges allocated in the image itself\n"
    "  info                             format and format-specific information\n"
    "  help [COMMAND]                   list the commands or describe one\n"
    "  quit                             stop reading commands\n"
    "OFF and LEN take the suffixes k, M, G, T, P, E. write, discard and flush are\n"
    "not supported yet.\n"
    "\n"
    "Options:\n"
    "  -c, --cmd=CMD        run CMD (repeatable)\n"
    "  -r, --read-only      open the image read-only (for now images are always\n"
    "                       opened read-only)\n"
    "  -f, --format=FMT     image format: qcow2 or raw (default: probe)\n"
    "  -U, --force-share    open without taking the image lock\n"
    "  -h, --help           show this help and exit\n"
    "\n"
    "Exit status: 0 when every command succeeded, 1 otherwise.\n";

int cli_image_io(int argc, char **argv)
{
    static const cli_opt_def defs[] = {
        {"help", 'h', false},      {"cmd", 'c', true},          {"read-only", 'r', false},
        {"format", 'f', true},     {"force-share", 'U', false}, {NULL, 0, false},
    };
    struct io_ctx ctx = {NULL, false};
    qcow2_format fmt = QCOW2_FORMAT_AUTO;
    bool no_lock = false, failed = false;
    const char **cmds;
    int nb_cmds = 0, c, i;
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
            break;
        case 'f':
            if (!cli_parse_format(p.arg, &fmt))
                goto out_usage;
            break;
        case 'U':
            no_lock = true;
            break;
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
    if (cli_open_image(&ctx.img, p.argv[0], fmt, false, no_lock) < 0)
        goto out_usage;

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
    qcow2_image_close(ctx.img);
    free(cmds);
    return failed ? 1 : 0;

out_usage:
    free(cmds);
    return 1;
}
