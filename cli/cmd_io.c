/*
 * `qsnap image io`: a subset of qemu-io. Commands come from each -c in
 * order, or else one per line from stdin; each is split on blanks and run
 * against one open image, read-write unless -r. The output lines follow
 * qemu-io's so that scripts written for it read ours, and a command file
 * gives the same image content through either tool (write fills with the
 * same pattern bytes). The exit status is 1 when any command failed, as in
 * qemu-io.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <qcow2/qcow2.h>

#include "cli.h"
#include "cli_error.h"
#include "cmd_io.h"
#include "fmt.h"
#include "opt.h"

/* Words in one command line. */
#define IO_MAX_WORDS 64

static int cmd_map(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv);
static int cmd_info(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv);
static int cmd_help(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv);
static int cmd_quit(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv);
static int cmd_flush(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv);
static int cmd_aio_flush(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv);
static int cmd_alloc(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv);
static int cmd_length(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv);
static int cmd_truncate(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv);
static int cmd_open(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv);
static int cmd_close(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv);
static int cmd_reopen(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv);

static const struct io_cmd io_cmds[] = {
    {"read", "r", io_cmd_read, 2, -1, "[-bCpqv] [-P pattern [-s off] [-l len]] off len",
     "reads a number of bytes at a specified offset",
     " Reads LEN bytes of guest data at offset OFF (through the backing chain).\n"
     " OFF and LEN take the suffixes k, M, G, T, P, E (powers of 1024).\n"
     " -b, -- read from the vm-state area of a qcow2 image instead (OFF within\n"
     "        the area; OFF and LEN multiples of 512; never written: zeroes)\n"
     " -P, -- verify that every byte read equals PATTERN (0..255)\n"
     " -q, -- quiet mode, do not show I/O statistics\n"
     " -v, -- dump the data read (hexadecimal and characters)\n"
     " -s, -- with -P: start of the verified range in the data read\n"
     " -l, -- with -P: length of the verified range\n"
     " -C, -- print the statistics as one machine-readable line\n"
     " -p, -- accepted and ignored\n"},
    {"readv", NULL, io_cmd_readv, 2, -1, "[-qv] [-P pattern] off len [len..]",
     "reads a number of bytes at a specified offset",
     " Reads the sum of the LENs at offset OFF in one request.\n"
     " -P, -- verify that every byte read equals PATTERN (0..255)\n"
     " -q, -- quiet mode, do not show I/O statistics\n"
     " -v, -- dump the data read (hexadecimal and characters)\n"},
    {"writev", NULL, io_cmd_writev, 2, -1, "[-q] [-P pattern] off len [len..]",
     "writes a number of bytes at a specified offset",
     " Writes the sum of the LENs at offset OFF in one request, filled with\n"
     " PATTERN (default 0xcd).\n"
     " -P, -- fill the data with PATTERN (0..255)\n"
     " -q, -- quiet mode, do not show I/O statistics\n"},
    {"aio_read", NULL, io_cmd_readv, 2, -1, "[-qv] [-P pattern] off len [len..]",
     "asynchronously reads a number of bytes",
     " As readv; requests run in order, each done before the next command.\n"},
    {"aio_write", NULL, io_cmd_writev, 2, -1, "[-quz] [-P pattern] off len [len..]",
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
    {"write", "w", io_cmd_write, 2, -1, "[-bcCfnquz] [-P pattern | -s source_file] off len",
     "writes a number of bytes at a specified offset",
     " Writes LEN bytes at offset OFF, filled with PATTERN (default 0xcd).\n"
     " OFF and LEN take the suffixes k, M, G, T, P, E (powers of 1024).\n"
     " -b, -- write to the vm-state area of a qcow2 image instead (OFF within\n"
     "        the area; OFF and LEN multiples of 512; not with -z or -f)\n"
     " -c, -- write compressed clusters (OFF and LEN cluster aligned, or LEN\n"
     "        reaching the end of the image)\n"
     " -n, -- with -z, allow LEN beyond the usual request cap\n"
     " -P, -- fill the data with PATTERN (0..255)\n"
     " -s, -- take the data from SOURCE_FILE (repeated when shorter)\n"
     " -q, -- quiet mode, do not show I/O statistics\n"
     " -u, -- with -z, allow the clusters to be freed\n"
     " -f, -- accepted (writes are durable at flush); not with -b or -c\n"
     " -C, -- print the statistics as one machine-readable line\n"
     " -p, -- accepted and ignored\n"
     " -z, -- write zeroes (zero clusters where the format has them)\n"},
    {"discard", "d", io_cmd_discard, 2, -1, "[-q] off len",
     "discards a number of bytes at a specified offset",
     " Discards the whole clusters of LEN bytes at offset OFF.\n"
     " -q, -- quiet mode, do not show I/O statistics\n"},
    {"flush", "f", cmd_flush, 0, 0, "", "flush all in-core file state to disk", NULL},
};

#define NB_IO_CMDS (sizeof(io_cmds) / sizeof(io_cmds[0]))

void io_print_usage(const struct io_cmd *cmd)
{
    printf("%s%s%s -- %s\n", cmd->name, cmd->args[0] ? " " : "", cmd->args, cmd->oneline);
}

/* The number in word, or -1 after qemu-io's parsing message. */
int io_parse_num(const char *word, uint64_t *out)
{
    if (cli_parse_size(word, out) == 0)
        return 0;
    printf("Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- %s\n", word);
    return -1;
}

/* "<what> failed: <the library's message>" on stdout, as qemu-io prints it. */
int io_failed(const char *what, int rc)
{
    const qcow2_error *e = qcow2_error_last();

    printf("%s failed: %s\n", what,
           e->code == rc && e->message && e->message[0] ? e->message : qcow2_strerror(rc));
    return -1;
}

/* alloc: the bytes of a range the image itself allocates, as qemu-io counts them. */
static int cmd_alloc(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv)
{
    const qcow2_image *base = qcow2_image_backing(ctx->img);
    uint64_t size = qcow2_image_size(ctx->img), off, count = 512, sum = 0, pos;
    char off_str[CLI_SIZE_STR_MAX];

    (void)cmd;
    if (io_parse_num(argv[1], &off) < 0 || (argc == 3 && io_parse_num(argv[2], &count) < 0))
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
        io_print_usage(c);
        if (c->help)
            printf("\n%s", c->help);
        return 0;
    }
    for (i = 0; i < NB_IO_CMDS; i++)
        io_print_usage(&io_cmds[i]);
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
        io_print_usage(cmd);
        return -1;
    }
    if (io_parse_num(argv[i], &off) < 0)
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
    /* Not for writing into a snapshot's layer of a qsnap store (a branch's head: yes). */
    if ((ctx->oo.flags & QCOW2_OPEN_RDWR) && cli_refuse_store_write(path, false)) {
        free(copy);
        ctx->img = NULL;
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
            io_print_usage(cmd);
            return -1;
        }
    }
    if (p.nb_operands != 1) {
        io_print_usage(cmd);
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
            io_print_usage(cmd);
            return -1;
        }
    }
    if (p.nb_operands != 0) {
        io_print_usage(cmd);
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
    "  read [-bqv] [-P PATTERN] OFF LEN\n"
    "                                   read guest data; with -P, fail unless\n"
    "                                   every byte equals PATTERN; -v dumps it;\n"
    "                                   -b: the vm-state area of a qcow2 image\n"
    "  readv [-qv] [-P PATTERN] OFF LEN [LEN...]\n"
    "                                   read the sum of the LENs in one request\n"
    "  writev [-q] [-P PATTERN] OFF LEN [LEN...]\n"
    "                                   write the sum of the LENs in one request\n"
    "  aio_read, aio_write [-z [-u]], aio_flush\n"
    "                                   as readv and writev, and flush; requests\n"
    "                                   run in order, each done before the next\n"
    "  write [-bcnquz] [-P PATTERN] OFF LEN\n"
    "                                   write LEN bytes of PATTERN (default 0xcd);\n"
    "                                   -z zeroes (-u: may free the clusters),\n"
    "                                   -c compressed whole clusters, -b to the\n"
    "                                   vm-state area of a qcow2 image\n"
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
    if (!read_only && cli_refuse_store_write(p.argv[0], false)) {
        cli_errorf("hint: -r opens it read-only");
        goto out_usage;
    }
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
