/*
 * `qsnap image create`: make a new qcow2 or raw image with qemu-img create's
 * options, messages and "Formatting '...'" line. The options are read by
 * imgopt.c; the image is made by qcow2_image_create(), which decides what
 * combinations are valid. This file only adds what qemu-img does around
 * that: the size taken from the backing file, the check that the backing
 * file opens, and replacing an existing file.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <qcow2/qcow2.h>

#include "cli.h"
#include "cli_error.h"
#include "fmt.h"
#include "imgopt.h"
#include "opt.h"

static const char create_help[] =
    "Usage: qsnap image create [-f FMT] [-o OPTIONS] [-b BACKING -F BACKING_FMT] [-u] [-q]\n"
    "                          FILE [SIZE]\n"
    "\n"
    "Create a new image FILE (replacing an existing file), as qemu-img create does,\n"
    "and print qemu-img's \"Formatting '...'\" line. SIZE takes the suffixes k, M, G,\n"
    "T, P, E; without it the image has the size of its backing file.\n"
    "\n"
    "Options:\n"
    "  -f FMT               image format: qcow2 or raw (default raw)\n"
    "  -o OPTIONS           comma-separated key=value creation options (repeatable);\n"
    "                       '-o help' lists them: compat=0.10|1.1|v2|v3,\n"
    "                       cluster_size, refcount_bits, extended_l2=on|off,\n"
    "                       compression_type=zlib|zstd, lazy_refcounts=on|off,\n"
    "                       preallocation=off|metadata|falloc|full, backing_file,\n"
    "                       backing_fmt, size\n"
    "  -b BACKING           backing file (stored as given; a relative name is\n"
    "                       relative to the directory of FILE)\n"
    "  -F BACKING_FMT       format of the backing file: qcow2 or raw (needed with -b)\n"
    "  -u                   unsafe: do not open the backing file (SIZE is needed)\n"
    "  -q, --quiet          do not print the Formatting line\n"
    "  -h, --help           show this help and exit\n"
    "\n"
    "Exit status: 0 success, 1 error.\n";

/*
 * The backing name as a path to open: relative names are relative to the
 * directory of the new image. Returns a new string, or NULL (out of memory).
 */
static char *backing_path(const char *file, const char *backing)
{
    const char *slash = strrchr(file, '/');
    size_t dir = slash ? (size_t)(slash - file) + 1 : 0;
    char *path;

    if (backing[0] == '/')
        dir = 0;
    path = malloc(dir + strlen(backing) + 1);
    if (!path)
        return NULL;
    memcpy(path, file, dir);
    strcpy(path + dir, backing);
    return path;
}

/*
 * Open the backing file as qemu-img create does (to check it and, when
 * size_out is not NULL, to take its virtual size).
 */
static int probe_backing(const char *file, const char *backing, const char *backing_fmt,
                         uint64_t *size_out)
{
    qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img;
    char *path = backing_path(file, backing);
    int rc;

    if (!path) {
        cli_errorf("out of memory");
        return -1;
    }
    oo.format = qcow2_format_from_name(backing_fmt);
    oo.flags = QCOW2_OPEN_NO_LOCK;
    rc = qcow2_image_open(&img, path, &oo);
    free(path);
    if (rc < 0) {
        cli_fail(rc, CLI_TABLE_IMAGE);
        fprintf(stderr, "Could not open backing image.\n");
        return -1;
    }
    /* The file is replaced below: it must not be a file of the chain it is made on. */
    struct stat fst;
    if (lstat(file, &fst) == 0 && S_ISREG(fst.st_mode)) {
        for (const qcow2_image *l = img; l; l = qcow2_image_backing(l)) {
            struct stat lst;
            if (stat(qcow2_image_filename(l), &lst) == 0 && lst.st_dev == fst.st_dev &&
                lst.st_ino == fst.st_ino) {
                cli_errorf("%s: Error: Trying to create an image over %s", file,
                           l == img ? "its own backing file" : "a file of its backing chain");
                qcow2_image_close(img);
                return -1;
            }
        }
    }
    if (size_out)
        *size_out = qcow2_image_size(img);
    qcow2_image_close(img);
    return 0;
}

/* qemu-img replaces an existing regular file; the library refuses to. */
static int remove_existing(const char *file)
{
    struct stat st;

    if (lstat(file, &st) < 0 || !S_ISREG(st.st_mode))
        return 0;
    if (unlink(file) < 0) {
        cli_errorf("%s: Could not replace the existing file: %s", file, strerror(errno));
        return -1;
    }
    return 0;
}

/* Everything after option parsing; returns the exit status. */
static int do_create(cli_imgopts *io, qcow2_format fmt, int nb_operands, char **operands,
                     bool unsafe, bool quiet)
{
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;
    const char *file = operands[0];
    const char *backing, *backing_fmt;
    uint64_t size = 0;
    bool have_size = false;
    int rc;

    if (cli_imgopts_parse(io, fmt, file) < 0)
        return 1;
    backing = io->value[IMGOPT_BACKING_FILE];
    backing_fmt = io->value[IMGOPT_BACKING_FMT];
    if (backing && fmt != QCOW2_FORMAT_QCOW2) {
        cli_errorf("%s: Backing file not supported for file format '%s'", file,
                   qcow2_format_name(fmt));
        return 1;
    }
    if (backing && !backing_fmt) {
        cli_errorf("%s: Backing file specified without backing format", file);
        return 1;
    }
    if (nb_operands == 2) {
        if (cli_parse_size(operands[1], &size) < 0) {
            cli_errorf("Invalid image size specified. You may use k, M, G, T, P or E suffixes "
                       "for");
            cli_errorf("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
            return 1;
        }
        have_size = true;
    }
    if (io->value[IMGOPT_SIZE]) {
        if (have_size) {
            cli_errorf("%s: The image size must be specified only once", file);
            return 1;
        }
        size = io->number[IMGOPT_SIZE];
        have_size = true;
    }
    if (backing && !unsafe) {
        if (probe_backing(file, backing, backing_fmt, have_size ? NULL : &size) < 0)
            return 1;
        have_size = true;
    }
    if (!have_size) {
        cli_errorf("%s: Image creation needs a size parameter", file);
        return 1;
    }
    if (!quiet)
        cli_imgopts_print_formatting(io, fmt, file, size);
    fflush(stdout);
    if (backing_fmt && !backing) {
        cli_errorf("%s: Backing format cannot be used without backing file", file);
        return 1;
    }
    if (cli_imgopts_apply(io, &co, file) < 0)
        return 1;
    co.format = fmt;
    co.size = size;
    if (cli_refuse_store_write(file, true) || remove_existing(file) < 0)
        return 1;
    rc = qcow2_image_create(file, &co);
    if (rc < 0)
        return cli_fail(rc, CLI_TABLE_IMAGE);
    return 0;
}

struct create_args {
    qcow2_format fmt;
    cli_imgopts io;
    const char *backing, *backing_fmt;
    bool unsafe, quiet;
};

static const cli_command create_cmd = {
    .prog = "qsnap image create",
    .help = create_help,
    .usage_status = 1,
    .options = (const cli_option[]){
        CLI_CONVERT(NULL, 'f', struct create_args, fmt, cli_opt_format),
        CLI_CONVERT(NULL, 'o', struct create_args, io, cli_imgopts_convert),
        CLI_STRING(NULL, 'b', struct create_args, backing),
        CLI_STRING(NULL, 'F', struct create_args, backing_fmt),
        CLI_FLAG(NULL, 'u', struct create_args, unsafe),
        CLI_FLAG("quiet", 'q', struct create_args, quiet),
        CLI_OPTIONS_END,
    },
};

int cli_image_create(int argc, char **argv)
{
    struct create_args a = {.fmt = QCOW2_FORMAT_RAW};
    cli_operands op;
    int status;

    cli_imgopts_init(&a.io);
    if (!cli_cmd_parse(&create_cmd, argc, argv, &a, &op, &status))
        goto out;
    status = 1;
    if (cli_imgopts_wants_help(&a.io)) {
        cli_imgopts_print_help(a.fmt);
        status = 0;
        goto out;
    }
    if (op.n < 1) {
        cli_errorf("Expecting image file name");
        cli_usage_hint("qsnap image create", 1);
        goto out;
    }
    if (op.n > 2) {
        cli_errorf("Unexpected argument: %s", op.v[2]);
        cli_usage_hint("qsnap image create", 1);
        goto out;
    }
    /* -b and -F stand for -o backing_file=, backing_fmt= (an explicit -o wins). */
    if ((a.backing && cli_imgopts_set(&a.io, IMGOPT_BACKING_FILE, a.backing) < 0) ||
        (a.backing_fmt && cli_imgopts_set(&a.io, IMGOPT_BACKING_FMT, a.backing_fmt) < 0))
        goto out;
    status = do_create(&a.io, a.fmt, op.n, op.v, a.unsafe, a.quiet);
out:
    cli_imgopts_free(&a.io);
    return status;
}
