/*
 * `qsnap image commit`, `rebase` and `measure`: qemu-img's layer commands
 * with its options, lines and exit statuses. The work is done by
 * qcow2_image_commit(), qcow2_image_rebase() and qcow2_measure(); this file
 * only finds the layer a -b BASE names (as the chain names it: a relative
 * name is taken relative to the image that names each backing file, and
 * files are compared, not spellings), checks the command line as qemu-img
 * does and prints the results. As in qemu-img, an explicit -b implies -d.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <qcow2/qcow2.h>

#include "cli.h"
#include "cli_error.h"
#include "fmt.h"
#include "imgopt.h"
#include "json.h"
#include "opt.h"
#include "progress.h"

/* qemu-img's status for every error, usage errors included. */
#define LAYER_EXIT_FAIL 1

/* ---- commit ------------------------------------------------------------- */

static const char commit_help[] =
    "Usage: qsnap image commit [-f FMT] [-b BASE] [-d] [-p] [-q] FILE\n"
    "\n"
    "Write the changes FILE holds over its backing file down into that backing\n"
    "file (or into BASE, a deeper layer of its chain, with everything the layers\n"
    "between allocate), as qemu-img commit does. Only the ranges allocated above\n"
    "the base are copied; the base grows when FILE is larger. The base holds the\n"
    "data durably before FILE changes; then FILE is emptied, unless -d or -b.\n"
    "\n"
    "As in qemu-img, -b implies -d: FILE and the layers between keep their data.\n"
    "A relative BASE is taken relative to the image whose backing file it names,\n"
    "not to the current directory, as qemu-img does.\n"
    "\n"
    "Options:\n"
    "  -f, --format=FMT     format of FILE: qcow2 or raw (default: probe)\n"
    "  -b BASE              the layer to commit into (a file of FILE's backing\n"
    "                       chain; default: FILE's backing file); implies -d\n"
    "  -d                   keep FILE's data (do not empty it afterwards)\n"
    "  -p, --progress       show progress\n"
    "  -q, --quiet          print nothing on success\n"
    "  -h, --help           show this help and exit\n"
    "\n"
    "Exit status: 0 success, 1 error.\n";

/* Whether two paths name the same file (same device and inode). */
static bool same_file(const struct stat *a, const char *path)
{
    struct stat st;

    return stat(path, &st) == 0 && st.st_dev == a->st_dev && st.st_ino == a->st_ino;
}

/*
 * The layer of top's chain below top that base_name names, or NULL. As
 * qemu-img finds it: for each image of the chain that has a backing file,
 * base_name (when relative, taken relative to that image's directory) is
 * its backing file.
 */
static const qcow2_image *find_base_layer(const qcow2_image *top, const char *base_name)
{
    const qcow2_image *layer, *below;
    char path[4096];

    for (layer = top; (below = qcow2_image_backing(layer)) != NULL; layer = below) {
        const char *name = qcow2_image_filename(layer);
        const char *slash = strrchr(name, '/');
        struct stat st;
        int n;

        if (base_name[0] == '/' || !slash)
            n = snprintf(path, sizeof(path), "%s", base_name);
        else
            n = snprintf(path, sizeof(path), "%.*s/%s", (int)(slash - name), name, base_name);
        if (n < 0 || (size_t)n >= sizeof(path) || stat(path, &st) < 0)
            continue;
        if (same_file(&st, qcow2_image_filename(below)))
            return below;
    }
    return NULL;
}

struct commit_args {
    qcow2_format fmt;
    const char *base_path;
    bool keep_top, progress, quiet;
};

static const cli_command commit_cmd = {
    .prog = "qsnap image commit",
    .help = commit_help,
    .usage_status = LAYER_EXIT_FAIL,
    .options = (const cli_option[]){
        CLI_CONVERT("format", 'f', struct commit_args, fmt, cli_opt_format),
        CLI_STRING(NULL, 'b', struct commit_args, base_path),
        CLI_FLAG(NULL, 'd', struct commit_args, keep_top),
        CLI_FLAG("progress", 'p', struct commit_args, progress),
        CLI_FLAG("quiet", 'q', struct commit_args, quiet),
        CLI_OPTIONS_END,
    },
    CLI_ONE_IMAGE,
};

int cli_image_commit(int argc, char **argv)
{
    struct commit_args a = {QCOW2_FORMAT_AUTO, NULL, false, false, false};
    qcow2_commit_opts co = QCOW2_COMMIT_OPTS_INIT;
    qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
    qcow2_format fmt;
    const char *base_path;
    bool progress, quiet;
    cli_progress pr;
    qcow2_image *top;
    cli_operands op;
    int rc, status;

    if (!cli_cmd_parse(&commit_cmd, argc, argv, &a, &op, &status))
        return status;
    status = LAYER_EXIT_FAIL;
    fmt = a.fmt;
    base_path = a.base_path;
    progress = a.progress;
    quiet = a.quiet;
    co.keep_top = a.keep_top || base_path; /* -b implies -d, as in qemu-img */

    oo.format = fmt;
    oo.flags = QCOW2_OPEN_RDWR;
    rc = qcow2_image_open(&top, op.v[0], &oo);
    if (rc < 0)
        return cli_fail(rc, CLI_TABLE_IMAGE);
    if (!qcow2_image_backing(top)) {
        cli_errorf("Image does not have a backing file");
        goto out_close;
    }
    if (base_path) {
        co.base = find_base_layer(top, base_path);
        if (!co.base) {
            cli_errorf("Did not find '%s' in the backing chain of '%s'", base_path, op.v[0]);
            goto out_close;
        }
    }

    /* The commit writes into its base, and empties the top unless it is kept. */
    if (!co.keep_top && cli_refuse_store_write(op.v[0], false))
        goto out_close;
    {
        const char *name = qcow2_image_filename(co.base ? co.base : qcow2_image_backing(top));
        char *real = realpath(name, NULL); /* named as it is, not as the chain reached it */
        bool refused = cli_refuse_store_write(real ? real : name, false) != 0;
        free(real);
        if (refused)
            goto out_close;
    }
    cli_progress_begin(&pr, progress, !quiet);
    co.progress = cli_progress_update;
    co.payload = &pr;
    rc = qcow2_image_commit(top, &co);
    if (rc < 0) {
        cli_progress_abort(&pr);
        fflush(stdout);
        status = cli_fail(rc, CLI_TABLE_IMAGE);
        goto out_close;
    }
    cli_progress_end(&pr);
    if (!quiet)
        printf("Image committed.\n");
    status = 0;
out_close:
    qcow2_image_close(top);
    return status;
}

/* ---- rebase ------------------------------------------------------------- */

static const char rebase_help[] =
    "Usage: qsnap image rebase [-f FMT] -b BACKING [-F BACKING_FMT] [-u] [-p] [-q] [-U]\n"
    "                          FILE\n"
    "\n"
    "Change the backing file of FILE, as qemu-img rebase does. The safe mode (the\n"
    "default) first copies into FILE every range that FILE does not allocate and\n"
    "where the old and the new backing chains differ, so the guest content of FILE\n"
    "does not change. BACKING is stored as given; a relative name is relative to\n"
    "the directory of FILE. -b \"\" removes the backing file (FILE then holds all\n"
    "of its content).\n"
    "\n"
    "Options:\n"
    "  -f, --format=FMT     format of FILE: qcow2 (default: probe)\n"
    "  -b BACKING           the new backing file, or \"\" for none\n"
    "  -F BACKING_FMT       its format: qcow2 or raw (needed with a backing file)\n"
    "  -u                   unsafe: only rewrite the backing name and format in the\n"
    "                       header (the old backing file need not exist; without\n"
    "                       -b the backing file is removed)\n"
    "  -p, --progress       show progress\n"
    "  -q, --quiet          print nothing but errors\n"
    "  -U, --force-share    open the backing files without taking their locks\n"
    "  -h, --help           show this help and exit\n"
    "\n"
    "Exit status: 0 success, 1 error.\n";

struct rebase_args {
    qcow2_format fmt;
    const char *backing, *backing_fmt_name;
    bool unsafe, progress, quiet, no_lock;
};

static const cli_command rebase_cmd = {
    .prog = "qsnap image rebase",
    .help = rebase_help,
    .usage_status = LAYER_EXIT_FAIL,
    .options = (const cli_option[]){
        CLI_CONVERT("format", 'f', struct rebase_args, fmt, cli_opt_format),
        CLI_STRING(NULL, 'b', struct rebase_args, backing),
        CLI_STRING(NULL, 'F', struct rebase_args, backing_fmt_name),
        CLI_FLAG(NULL, 'u', struct rebase_args, unsafe),
        CLI_FLAG("progress", 'p', struct rebase_args, progress),
        CLI_FLAG("quiet", 'q', struct rebase_args, quiet),
        CLI_FLAG("force-share", 'U', struct rebase_args, no_lock),
        CLI_OPTIONS_END,
    },
    CLI_ONE_IMAGE,
};

int cli_image_rebase(int argc, char **argv)
{
    struct rebase_args a = {QCOW2_FORMAT_AUTO, NULL, NULL, false, false, false, false};
    qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
    qcow2_format fmt, backing_fmt = QCOW2_FORMAT_AUTO;
    const char *backing, *backing_fmt_name;
    bool unsafe, progress, quiet, no_lock;
    cli_progress pr;
    qcow2_image *img;
    cli_operands op;
    int rc;

    if (!cli_cmd_parse(&rebase_cmd, argc, argv, &a, &op, &rc))
        return rc;
    fmt = a.fmt;
    backing = a.backing;
    backing_fmt_name = a.backing_fmt_name;
    unsafe = a.unsafe;
    progress = a.progress;
    quiet = a.quiet;
    no_lock = a.no_lock;
    if (!backing && !unsafe) {
        cli_errorf("Must specify backing file (-b) or use unsafe mode (-u)");
        return cli_usage_hint("qsnap image rebase", LAYER_EXIT_FAIL);
    }
    if (backing && !backing[0])
        backing = NULL;
    if (backing_fmt_name) {
        backing_fmt = qcow2_format_from_name(backing_fmt_name);
        if (backing_fmt == QCOW2_FORMAT_AUTO) {
            cli_errorf("Invalid format name: '%s'", backing_fmt_name);
            return LAYER_EXIT_FAIL;
        }
    }
    if (backing && !backing_fmt_name) {
        cli_errorf("Could not change the backing file to '%s': backing format must be specified",
                   backing);
        return LAYER_EXIT_FAIL;
    }

    /* Unsafe mode never reads the old chain, so it need not exist. */
    if (cli_refuse_store_write(op.v[0], false))
        return LAYER_EXIT_FAIL;
    oo.format = fmt;
    oo.flags = QCOW2_OPEN_RDWR | (unsafe ? QCOW2_OPEN_NO_BACKING : 0);
    if (no_lock)
        oo.flags |= QCOW2_OPEN_NO_LOCK;
    rc = qcow2_image_open(&img, op.v[0], &oo);
    if (rc < 0)
        return cli_fail(rc, CLI_TABLE_IMAGE);

    cli_progress_begin(&pr, progress, !quiet);
    rc = qcow2_image_rebase(img, backing, backing ? qcow2_format_name(backing_fmt) : NULL, unsafe,
                            cli_progress_update, &pr);
    if (rc >= 0) {
        cli_progress_end(&pr);
    } else {
        cli_progress_abort(&pr);
        fflush(stdout);
        rc = cli_fail(rc, CLI_TABLE_IMAGE);
    }
    qcow2_image_close(img);
    return rc;
}

/* ---- measure ------------------------------------------------------------ */

static const char measure_help[] =
    "Usage: qsnap image measure [--output=human|json] [-O raw|qcow2] [-o OPTIONS]\n"
    "                           [--size SIZE | [-f FMT] [-U] FILE]\n"
    "\n"
    "Print the file size a new image of format -O would need, as qemu-img measure\n"
    "does: for the guest content of FILE (with its backing chain) or for an empty\n"
    "image of SIZE bytes. \"required size\" holds the allocated data and the\n"
    "metadata; \"fully allocated size\" a fully preallocated image of that virtual\n"
    "size. \"bitmaps size\" appears for a qcow2 FILE measured as qcow2.\n"
    "\n"
    "Options:\n"
    "  --output=human|json  output format (default human)\n"
    "  -O FMT               format of the new image: raw (the default) or qcow2\n"
    "  -o OPTIONS           qcow2 creation options that change the figures\n"
    "                       (compat, cluster_size, refcount_bits, extended_l2, ...)\n"
    "  --size SIZE          measure an empty image of SIZE bytes (suffixes k, M, G,\n"
    "                       T, P, E)\n"
    "  -f, --format=FMT     format of FILE: qcow2 or raw (default: probe)\n"
    "  -U, --force-share    open FILE without taking the image lock\n"
    "  -h, --help           show this help and exit\n"
    "\n"
    "Exit status: 0 success, 1 error.\n";

static void print_measure(const qcow2_measure_result *r, bool json)
{
    cli_json j;

    if (!json) {
        printf("required size: %" PRIu64 "\n", r->required);
        printf("fully allocated size: %" PRIu64 "\n", r->fully_allocated);
        if (r->has_bitmaps)
            printf("bitmaps size: %" PRIu64 "\n", r->bitmaps);
        return;
    }
    cli_json_init(&j, stdout);
    cli_json_begin_object(&j, NULL);
    if (r->has_bitmaps)
        cli_json_uint(&j, "bitmaps", r->bitmaps);
    cli_json_uint(&j, "required", r->required);
    cli_json_uint(&j, "fully-allocated", r->fully_allocated);
    cli_json_end_object(&j);
    cli_json_finish(&j);
}

/* The creation options of the new image from -O and -o; false after the message. */
static bool measure_create_opts(cli_imgopts *io, qcow2_format out_fmt, qcow2_create_opts *co)
{
    if (cli_imgopts_parse(io, out_fmt, NULL) < 0) {
        cli_errorf("Invalid options for file format '%s'", qcow2_format_name(out_fmt));
        return false;
    }
    if (cli_imgopts_apply(io, co, NULL) < 0)
        return false;
    co->format = out_fmt;
    return true;
}

struct measure_args {
    qcow2_format fmt, out_fmt;
    cli_imgopts io;
    const char *size_arg;
    bool json, no_lock;
};

static const cli_command measure_cmd = {
    .prog = "qsnap image measure",
    .help = measure_help,
    .usage_status = LAYER_EXIT_FAIL,
    .options = (const cli_option[]){
        CLI_CONVERT("format", 'f', struct measure_args, fmt, cli_opt_format),
        CLI_CONVERT(NULL, 'O', struct measure_args, out_fmt, cli_opt_format),
        CLI_CONVERT(NULL, 'o', struct measure_args, io, cli_imgopts_convert),
        CLI_STRING("size", 0, struct measure_args, size_arg),
        CLI_FLAG("force-share", 'U', struct measure_args, no_lock),
        CLI_CONVERT("output", 0, struct measure_args, json, cli_opt_output),
        CLI_OPTIONS_END,
    },
};

int cli_image_measure(int argc, char **argv)
{
    struct measure_args a = {.fmt = QCOW2_FORMAT_AUTO, .out_fmt = QCOW2_FORMAT_RAW};
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;
    qcow2_format fmt, out_fmt;
    const char *size_arg;
    bool json;
    qcow2_measure_result r;
    qcow2_image *img = NULL;
    uint64_t size = 0;
    cli_operands op;
    int rc, status;

    cli_imgopts_init(&a.io);
    if (!cli_cmd_parse(&measure_cmd, argc, argv, &a, &op, &status)) {
        cli_imgopts_free(&a.io);
        return status;
    }
    status = LAYER_EXIT_FAIL;
    fmt = a.fmt;
    out_fmt = a.out_fmt;
    size_arg = a.size_arg;
    json = a.json;
    if (op.n > 1) {
        cli_errorf("At most one filename argument is allowed.");
        goto out;
    }
    if (size_arg && op.n == 1) {
        cli_errorf("--size N cannot be used together with a filename.");
        goto out;
    }
    if (!size_arg && op.n == 0) {
        cli_errorf("Either --size N or one filename must be specified.");
        goto out;
    }
    if (size_arg && cli_parse_size(size_arg, &size) < 0) {
        cli_errorf("Invalid image size specified. You may use k, M, G, T, P or E suffixes for");
        cli_errorf("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
        goto out;
    }
    if (op.n == 1 && cli_open_image(&img, op.v[0], fmt, false, a.no_lock) < 0)
        goto out;
    if (!measure_create_opts(&a.io, out_fmt, &co))
        goto out;
    rc = qcow2_measure(img, size, &co, &r);
    if (rc < 0) {
        status = cli_fail(rc, CLI_TABLE_IMAGE);
        goto out;
    }
    print_measure(&r, json);
    status = 0;
out:
    qcow2_image_close(img);
    cli_imgopts_free(&a.io);
    return status;
}
