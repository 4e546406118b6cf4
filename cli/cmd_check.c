/*
 * `qsnap image check` and `qsnap image resize`: qemu-img's commands of the
 * same names, with their options, output and exit statuses. The work is
 * qcow2_image_check() and qcow2_image_resize(); this file turns their results
 * into qemu-img's text and JSON. check exits 0 when the image is clean, 1
 * when it could not be checked, 2 when corruptions remain, 3 when only leaks
 * remain, and 63 for a format without checks (qemu-img's ENOTSUP status);
 * after a repair, the statuses describe the image as checked again.
 */
#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <qcow2/qcow2.h>

#include "cli.h"
#include "cli_error.h"
#include "fmt.h"
#include "json.h"
#include "opt.h"

/* qemu-img check's statuses. */
enum check_exit {
    CHECK_EXIT_CLEAN = 0,       /* no problem left */
    CHECK_EXIT_FAILED = 1,      /* the check could not run (or errors stopped it) */
    CHECK_EXIT_CORRUPT = 2,     /* corruptions remain */
    CHECK_EXIT_LEAKS = 3,       /* only leaked clusters remain */
    CHECK_EXIT_NO_CHECKS = 63,  /* the format has no checks */
};

/* ---- check -------------------------------------------------------------- */

static const char check_help[] =
    "Usage: qsnap image check [-r leaks|all] [--output=human|json] [-f FMT] [-q] [-U] FILE\n"
    "\n"
    "Check the metadata of a qcow2 image as qemu-img check does: reference counts\n"
    "against references, COPIED flags, offsets inside the file, overlapping\n"
    "structures. Each problem is reported on standard error; with -r the image is\n"
    "repaired and checked again.\n"
    "\n"
    "Options:\n"
    "  -r leaks|all         repair leaked clusters only, or every problem found\n"
    "  --output=human|json  output format (default human)\n"
    "  -f, --format=FMT     image format: qcow2 or raw (default: probe)\n"
    "  -q, --quiet          print nothing on standard output\n"
    "  -U, --force-share    open without taking the image lock (not with -r)\n"
    "  -h, --help           show this help and exit\n"
    "\n"
    "Exit status: 0 no problem, 1 the check could not be done, 2 corruptions found,\n"
    "3 leaked clusters found (and no corruption), 63 the format has no checks.\n"
    "After a repair, the status describes the image as checked again.\n";

/* The library's report callback: one finding per line on stderr, as qemu-img. */
static void check_report(const char *line, void *payload)
{
    (void)payload;
    fprintf(stderr, "%s\n", line);
}

static double percent(uint64_t part, uint64_t whole)
{
    return whole ? (double)part * 100.0 / (double)whole : 0.0;
}

static void print_check_human(const qcow2_check_result *r)
{
    if (!r->corruptions && !r->leaks && !r->check_errors) {
        printf("No errors were found on the image.\n");
    } else {
        if (r->corruptions)
            printf("\n%" PRIu64 " errors were found on the image.\n"
                   "Data may be corrupted, or further writes to the image may corrupt it.\n",
                   r->corruptions);
        if (r->leaks)
            printf("\n%" PRIu64 " leaked clusters were found on the image.\n"
                   "This means waste of disk space, but no harm to data.\n",
                   r->leaks);
        if (r->check_errors)
            printf("\n%" PRIu64 " internal errors have occurred during the check.\n",
                   r->check_errors);
    }
    if (r->total_clusters && r->allocated_clusters)
        printf("%" PRIu64 "/%" PRIu64 " = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% "
               "compressed clusters\n",
               r->allocated_clusters, r->total_clusters,
               percent(r->allocated_clusters, r->total_clusters),
               percent(r->fragmented_clusters, r->allocated_clusters),
               percent(r->compressed_clusters, r->allocated_clusters));
    if (r->image_end_offset)
        printf("Image end offset: %" PRIu64 "\n", r->image_end_offset);
}

/* A counter qemu-img shows only when it is not zero. */
static void json_nonzero(cli_json *j, const char *key, uint64_t v)
{
    if (v)
        cli_json_uint(j, key, v);
}

/* qemu-img check's JSON object; the members come in qemu-img 7.2's order. */
static void print_check_json(const qcow2_check_result *r, const char *file, const char *fmt)
{
    cli_json j;

    cli_json_init(&j, stdout);
    cli_json_begin_object(&j, NULL);
    json_nonzero(&j, "image-end-offset", r->image_end_offset);
    json_nonzero(&j, "compressed-clusters", r->compressed_clusters);
    json_nonzero(&j, "total-clusters", r->total_clusters);
    json_nonzero(&j, "corruptions", r->corruptions);
    json_nonzero(&j, "corruptions-fixed", r->corruptions_fixed);
    cli_json_uint(&j, "check-errors", r->check_errors);
    json_nonzero(&j, "leaks", r->leaks);
    json_nonzero(&j, "leaks-fixed", r->leaks_fixed);
    json_nonzero(&j, "allocated-clusters", r->allocated_clusters);
    cli_json_string(&j, "filename", file);
    cli_json_string(&j, "format", fmt);
    json_nonzero(&j, "fragmented-clusters", r->fragmented_clusters);
    cli_json_end_object(&j);
    cli_json_finish(&j);
}

/* Run one check pass; on failure prints qemu-img's message and returns its status. */
static int run_check(qcow2_image *img, unsigned fix, qcow2_check_result *r)
{
    int rc;

    memset(r, 0, sizeof(*r));
    r->report = check_report;
    rc = qcow2_image_check(img, fix, r);
    if (rc == QCOW2_EUNSUPPORTED) {
        cli_errorf("This image format does not support checks");
        return CHECK_EXIT_NO_CHECKS;
    }
    if (rc < 0) {
        const qcow2_error *e = qcow2_error_last();

        cli_errorf("Check failed: %s",
                   e->code == rc && e->message && e->message[0] ? e->message : qcow2_strerror(rc));
        return CHECK_EXIT_FAILED;
    }
    return CHECK_EXIT_CLEAN;
}

/* -r leaks|all: what to repair. */
static int check_repair(const char *arg, void *field)
{
    unsigned *fix = field;

    if (strcmp(arg, "leaks") == 0) {
        *fix = QCOW2_CHECK_FIX_LEAKS;
    } else if (strcmp(arg, "all") == 0) {
        *fix = QCOW2_CHECK_FIX_LEAKS | QCOW2_CHECK_FIX_ERRORS;
    } else {
        cli_errorf("Unknown option value for -r (expecting 'leaks' or 'all'): %s", arg);
        return cli_usage_hint("qsnap image check", 1);
    }
    return 0;
}

struct check_args {
    qcow2_format fmt;
    unsigned fix;
    bool json, quiet, no_lock;
};

static const cli_command check_cmd = {
    .prog = "qsnap image check",
    .help = check_help,
    .usage_status = 1,
    .options = (const cli_option[]){
        CLI_CONVERT("format", 'f', struct check_args, fmt, cli_opt_format),
        CLI_CONVERT("repair", 'r', struct check_args, fix, check_repair),
        CLI_CONVERT("output", 0, struct check_args, json, cli_opt_output),
        CLI_FLAG("quiet", 'q', struct check_args, quiet),
        CLI_FLAG("force-share", 'U', struct check_args, no_lock),
        CLI_OPTIONS_END,
    },
    CLI_ONE_IMAGE,
};

int cli_image_check(int argc, char **argv)
{
    struct check_args a = {QCOW2_FORMAT_AUTO, 0, false, false, false};
    qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
    qcow2_check_result r;
    bool json, quiet, no_lock;
    unsigned fix;
    qcow2_image *img;
    cli_operands op;
    int rc, status;

    if (!cli_cmd_parse(&check_cmd, argc, argv, &a, &op, &status))
        return status;
    oo.format = a.fmt;
    fix = a.fix;
    json = a.json;
    quiet = a.quiet;
    no_lock = a.no_lock;
    if (fix && no_lock) {
        cli_errorf("force-share=on can only be used with read-only images");
        return 1;
    }
    /* A check sees the image as it is: dirty, or with a refcount table only a rebuild can fix. */
    oo.flags |= QCOW2_OPEN_CHECK;
    if (fix) {
        /* A repair writes: not into a snapshot's layer (the tree's 'verify' checks those). */
        if (cli_refuse_store_write(op.v[0], false))
            return 1;
        oo.flags |= QCOW2_OPEN_RDWR;
    }
    if (no_lock)
        oo.flags |= QCOW2_OPEN_NO_LOCK;
    rc = qcow2_image_open(&img, op.v[0], &oo);
    if (rc < 0)
        return cli_fail_open(rc, CLI_TABLE_IMAGE, fix || no_lock ? NULL : CLI_SHARE_FLAG);

    status = run_check(img, fix, &r);
    if (status != CHECK_EXIT_CLEAN)
        goto out_close;
    if (r.corruptions_fixed || r.leaks_fixed) {
        uint64_t corruptions_fixed = r.corruptions_fixed, leaks_fixed = r.leaks_fixed;

        if (!json && !quiet)
            printf("The following inconsistencies were found and repaired:\n\n"
                   "    %" PRIu64 " leaked clusters\n"
                   "    %" PRIu64 " corruptions\n\n"
                   "Double checking the fixed image now...\n",
                   leaks_fixed, corruptions_fixed);
        status = run_check(img, 0, &r);
        if (status != CHECK_EXIT_CLEAN)
            goto out_close;
        r.corruptions_fixed = corruptions_fixed;
        r.leaks_fixed = leaks_fixed;
    }
    if (!quiet) {
        if (json)
            print_check_json(&r, op.v[0], qcow2_format_name(qcow2_image_format(img)));
        else
            print_check_human(&r);
    }
    if (r.check_errors)
        status = CHECK_EXIT_FAILED;
    else if (r.corruptions)
        status = CHECK_EXIT_CORRUPT;
    else if (r.leaks)
        status = CHECK_EXIT_LEAKS;
out_close:
    qcow2_image_close(img);
    return status;
}

/* ---- resize ------------------------------------------------------------- */

static const char resize_help[] =
    "Usage: qsnap image resize [-f FMT] [--shrink] [-q] FILE [+|-]SIZE\n"
    "\n"
    "Change the virtual size of FILE to SIZE, or by +SIZE or -SIZE, as qemu-img\n"
    "resize does (SIZE takes the suffixes k, M, G, T, P, E). Growing always works;\n"
    "making the image smaller needs --shrink, and what lies past the new end is lost.\n"
    "\n"
    "Options:\n"
    "  -f, --format=FMT     image format: qcow2 or raw (default: probe)\n"
    "  --shrink             allow the image to become smaller\n"
    "  -q, --quiet          do not print \"Image resized.\"\n"
    "  -h, --help           show this help and exit\n"
    "\n"
    "Exit status: 0 success, 1 error.\n";

/* Apply SIZE, +SIZE or -SIZE to cur; false (after qemu-img's message) when it is bad. */
static bool resize_target(const char *arg, uint64_t cur, uint64_t *out)
{
    int sign = 0;
    uint64_t n;

    if (arg[0] == '+' || arg[0] == '-')
        sign = arg[0] == '+' ? 1 : -1;
    if (cli_parse_size(arg + (sign != 0), &n) < 0) {
        cli_errorf("Parameter 'size' expects a non-negative number below 2^64");
        fprintf(stderr, "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, "
                        "peta-\nand exabytes, respectively.\n");
        return false;
    }
    if (sign > 0) {
        if (n > UINT64_MAX - cur) {
            cli_errorf("New image size is too large");
            return false;
        }
        n += cur;
    } else if (sign < 0) {
        if (n >= cur) {
            cli_errorf("New image size must be positive");
            return false;
        }
        n = cur - n;
    }
    if (n == 0) {
        cli_errorf("New image size must be positive");
        return false;
    }
    *out = n;
    return true;
}

struct resize_args {
    qcow2_format fmt;
    bool shrink, quiet;
};

static const cli_command resize_cmd = {
    .prog = "qsnap image resize",
    .help = resize_help,
    .usage_status = 1,
    .options = (const cli_option[]){
        CLI_CONVERT("format", 'f', struct resize_args, fmt, cli_opt_format),
        CLI_FLAG("shrink", 0, struct resize_args, shrink),
        CLI_FLAG("quiet", 'q', struct resize_args, quiet),
        CLI_OPTIONS_END,
    },
};

int cli_image_resize(int argc, char **argv)
{
    struct resize_args a = {QCOW2_FORMAT_AUTO, false, false};
    qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
    bool shrink, quiet;
    const char *size_arg = NULL;
    uint64_t cur, target;
    qcow2_image *img;
    cli_operands op;
    int rc;

    /* Like qemu-img, a last word "-5M" is a size, not options. */
    if (argc > 2 && argv[argc - 1][0] == '-' && isdigit((unsigned char)argv[argc - 1][1])) {
        size_arg = argv[argc - 1];
        argc--;
    }
    if (!cli_cmd_parse(&resize_cmd, argc, argv, &a, &op, &rc))
        return rc;
    oo.format = a.fmt;
    shrink = a.shrink;
    quiet = a.quiet;
    if (size_arg && op.n < 2)
        op.v[op.n++] = (char *)(uintptr_t)size_arg;
    if (op.n != 2) {
        cli_errorf(op.n < 2 ? "Not enough arguments" : "Expecting image file name and size");
        return cli_usage_hint("qsnap image resize", 1);
    }
    /* The backing chain is opened: a grow zeroes what a longer backing file would show. */
    if (cli_refuse_store_write(op.v[0], false))
        return 1;
    oo.flags = QCOW2_OPEN_RDWR;
    rc = qcow2_image_open(&img, op.v[0], &oo);
    if (rc < 0)
        return cli_fail(rc, CLI_TABLE_IMAGE);
    cur = qcow2_image_size(img);
    if (!resize_target(op.v[1], cur, &target)) {
        qcow2_image_close(img);
        return 1;
    }
    if (target < cur && !shrink) {
        cli_errorf("Use the --shrink option to perform a shrink operation.");
        cli_errorf("warning: Shrinking an image will delete all data beyond the shrunken "
                   "image's end. Before performing such an operation, make sure there is no "
                   "important data there.");
        qcow2_image_close(img);
        return 1;
    }
    rc = qcow2_image_resize(img, target, shrink);
    if (rc >= 0)
        rc = qcow2_image_flush(img);
    if (rc < 0) {
        rc = cli_fail(rc, CLI_TABLE_IMAGE);
    } else if (!quiet) {
        printf("Image resized.\n");
    }
    qcow2_image_close(img);
    return rc;
}
