/*
 * `qsnap image`: the plumbing commands that mirror qemu-img (info, map,
 * convert, compare, digest; create, check, resize and io live in their
 * own files). Each one parses its
 * options, opens images through the public libqcow2 API and prints what the
 * library reports in qemu-img's formats. No knowledge of the qcow2 layout
 * lives here: every number comes from qcow2_image_get_info(),
 * qcow2_image_block_status() and friends.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>

#include <qcow2/qcow2.h>
#include <qsnap/qsnap.h>

#include "cli.h"
#include "cli_error.h"
#include "fmt.h"
#include "imgopt.h"
#include "json.h"
#include "opt.h"
#include "progress.h"

/* qemu-img's status for a bad command line (and for every other error). */
#define IMG_EXIT_FAIL 1

struct image_cmd {
    const char *name;  /* the command's word */
    cli_cmd_fn fn;     /* its entry point */
    const char *about; /* one line for `qsnap image --help` */
};

static const struct image_cmd image_cmds[] = {
    {"create", cli_image_create, "create a new qcow2 or raw image"},
    {"info", cli_image_info, "show facts about an image (and its backing chain)"},
    {"check", cli_image_check, "check an image's metadata and optionally repair it"},
    {"commit", cli_image_commit, "write an overlay's changes down into its backing file"},
    {"rebase", cli_image_rebase, "change the backing file of an image"},
    {"map", cli_image_map, "show the allocation of the guest content across the chain"},
    {"convert", cli_image_convert, "flatten an image and its chain into a new raw or qcow2 image"},
    {"compare", cli_image_compare, "compare the guest content of two images"},
    {"resize", cli_image_resize, "change the virtual size of an image"},
    {"snapshot", cli_image_snapshot, "list, create, apply or delete internal snapshots"},
    {"measure", cli_image_measure, "file size a new image would need for some content"},
    {"digest", cli_image_digest, "xxh3-128 digest of the guest content"},
    {"io", cli_image_io, "run qemu-io style commands (read, write, discard, ...) on an image"},
};

#define NB_IMAGE_CMDS (sizeof(image_cmds) / sizeof(image_cmds[0]))

static void print_image_help(void)
{
    size_t i;

    printf("Usage: qsnap image COMMAND [OPTIONS]... FILE...\n"
           "\n"
           "Plumbing commands with qemu-img's names, options, output formats and exit\n"
           "statuses.\n"
           "\n"
           "Commands:\n");
    for (i = 0; i < NB_IMAGE_CMDS; i++)
        printf("  %-9s %s\n", image_cmds[i].name, image_cmds[i].about);
    printf("\n"
           "Run 'qsnap image COMMAND --help' for the options of a command.\n");
}

int cli_image_main(int argc, char **argv)
{
    size_t i;

    if (argc < 2) {
        cli_errorf("Not enough arguments");
        return cli_usage_hint("qsnap image", IMG_EXIT_FAIL);
    }
    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "help") == 0) {
        print_image_help();
        return 0;
    }
    for (i = 0; i < NB_IMAGE_CMDS; i++)
        if (strcmp(argv[1], image_cmds[i].name) == 0)
            return image_cmds[i].fn(argc - 1, argv + 1);
    cli_errorf("Command not found: %s", argv[1]);
    return cli_usage_hint("qsnap image", IMG_EXIT_FAIL);
}

bool cli_parse_format(const char *name, qcow2_format *out)
{
    qcow2_format fmt = qcow2_format_from_name(name);

    if (fmt == QCOW2_FORMAT_AUTO) {
        cli_errorf("Unknown file format '%s'", name);
        return false;
    }
    *out = fmt;
    return true;
}

/* The refusal of qsnap_check_outside_write() or qsnap_check_snapshot_edit() (rc), printed. */
static int refused(const char *path, int rc)
{
    const qsnap_error *e;

    if (rc == 0)
        return 0;
    e = qsnap_error_last();
    fprintf(stderr, "qsnap: %s\n", e->message && e->message[0] ? e->message : path);
    if (e->hint && e->hint[0])
        fprintf(stderr, "qsnap: hint: %s\n", e->hint);
    return IMG_EXIT_FAIL;
}

int cli_refuse_store_write(const char *path, bool replace)
{
    return refused(path, qsnap_check_outside_write(path, replace));
}

int cli_refuse_snapshot_edit(const char *path, const char *snap)
{
    return refused(path, qsnap_check_snapshot_edit(path, snap));
}

int cli_open_image(qcow2_image **out, const char *path, qcow2_format fmt, bool no_backing,
                   bool no_lock)
{
    qcow2_open_opts opts = QCOW2_OPEN_OPTS_INIT;
    int rc;

    opts.format = fmt;
    if (no_backing)
        opts.flags |= QCOW2_OPEN_NO_BACKING;
    if (no_lock)
        opts.flags |= QCOW2_OPEN_NO_LOCK;
    rc = qcow2_image_open(out, path, &opts);
    if (rc < 0) {
        *out = NULL;
        cli_fail_open(rc, CLI_TABLE_IMAGE, no_lock ? NULL : CLI_SHARE_FLAG);
    }
    return rc;
}

/*
 * cli_open_image(), then show the internal snapshot snap (when not NULL)
 * instead of the active state, as qemu-img convert -l does: SNAP is an id
 * or a name, or "snapshot.id=ID" / "snapshot.name=NAME".
 */
static int open_image_at(qcow2_image **out, const char *path, qcow2_format fmt, bool no_lock,
                         const char *snap)
{
    int rc = cli_open_image(out, path, fmt, false, no_lock);

    if (rc < 0 || !snap)
        return rc;
    if (strncmp(snap, "snapshot.id=", 12) == 0)
        snap += 12;
    else if (strncmp(snap, "snapshot.name=", 14) == 0)
        snap += 14;
    rc = qcow2_image_view_snapshot(*out, snap);
    if (rc < 0) {
        cli_errorf("Failed to load snapshot: %s", qcow2_error_last()->message);
        qcow2_image_close(*out);
        *out = NULL;
    }
    return rc;
}

int cli_opt_format(const char *arg, void *field)
{
    return cli_parse_format(arg, field) ? 0 : IMG_EXIT_FAIL;
}

int cli_opt_output(const char *arg, void *field)
{
    bool *json = field;

    if (strcmp(arg, "json") == 0) {
        *json = true;
        return 0;
    }
    if (strcmp(arg, "human") == 0) {
        *json = false;
        return 0;
    }
    cli_errorf("--output must be used with human or json as argument.");
    return IMG_EXIT_FAIL;
}

/* ---- info --------------------------------------------------------------- */

static const char info_help[] =
    "Usage: qsnap image info [--output=human|json] [--backing-chain] [-f FMT] [-U] FILE\n"
    "\n"
    "Show facts about an image as qemu-img info does: format, virtual and disk size,\n"
    "cluster size, backing file, internal snapshots and qcow2-specific information.\n"
    "\n"
    "Options:\n"
    "  --output=human|json  output format (default human)\n"
    "  --backing-chain      show every layer of the backing chain, top first\n"
    "  -f, --format=FMT     image format: qcow2 or raw (default: probe)\n"
    "  -U, --force-share    open without taking the image lock\n"
    "  -h, --help           show this help and exit\n"
    "\n"
    "Exit status: 0 success, 1 error.\n";

static const char *compat_name(const qcow2_info *in)
{
    return in->qcow2_version >= 3 ? "1.1" : "0.10";
}

static const char *compression_name(const qcow2_info *in)
{
    return in->compression_type == 1 ? "zstd" : "zlib";
}

void cli_print_format_specific(const qcow2_info *in)
{
    if (in->format != QCOW2_FORMAT_QCOW2)
        return;
    printf("Format specific information:\n"
           "    compat: %s\n"
           "    compression type: %s\n",
           compat_name(in), compression_name(in));
    if (in->qcow2_version >= 3)
        printf("    lazy refcounts: %s\n", in->lazy_refcounts ? "true" : "false");
    printf("    refcount bits: %" PRIu32 "\n", in->refcount_bits);
    if (in->qcow2_version >= 3)
        printf("    corrupt: %s\n"
               "    extended l2: %s\n",
               in->corrupt ? "true" : "false", in->extended_l2 ? "true" : "false");
}

/* vm clock nanoseconds as qemu shows them: HH:MM:SS.mmm */
static void fmt_vm_clock(uint64_t nsec, char *buf, size_t len)
{
    uint64_t ms = nsec / 1000000;

    snprintf(buf, len, "%02" PRIu64 ":%02" PRIu64 ":%02" PRIu64 ".%03" PRIu64, ms / 3600000,
             ms / 60000 % 60, ms / 1000 % 60, ms % 1000);
}

static void print_snapshot_table(const qcow2_image *img)
{
    size_t i, n = qcow2_snapshot_count(img);

    printf("Snapshot list:\n"
           "ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT\n");
    for (i = 0; i < n; i++) {
        qcow2_snapshot_info sn;
        char vm_size[CLI_SIZE_STR_MAX], date[32], clock[48], icount[24] = "";
        struct tm tm;
        time_t t;

        if (qcow2_snapshot_get(img, i, &sn) < 0)
            continue;
        t = (time_t)sn.date_sec;
        if (localtime_r(&t, &tm) == NULL || strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm) == 0)
            snprintf(date, sizeof(date), "%" PRIu32, sn.date_sec);
        fmt_vm_clock(sn.vm_clock_nsec, clock, sizeof(clock));
        if (sn.icount >= 0)
            snprintf(icount, sizeof(icount), "%" PRId64, sn.icount);
        char sid[256], sname[1024];
        printf("%-9s %-16s %8s %19s %12s %10s\n", cli_safe(sn.id, sid, sizeof(sid)),
               cli_safe(sn.name, sname, sizeof(sname)),
               cli_fmt_size(sn.vm_state_size, vm_size), date, clock, icount);
    }
}

static void print_info_human(const qcow2_image *img, const qcow2_info *in)
{
    char size[CLI_SIZE_STR_MAX];

    printf("image: %s\n", in->filename);
    printf("file format: %s\n", qcow2_format_name(in->format));
    printf("virtual size: %s (%" PRIu64 " bytes)\n", cli_fmt_size(in->virtual_size, size),
           in->virtual_size);
    printf("disk size: %s\n", cli_fmt_size(in->actual_size, size));
    if (in->format == QCOW2_FORMAT_QCOW2)
        printf("cluster_size: %" PRIu32 "\n", in->cluster_size);
    if (in->dirty)
        printf("cleanly shut down: no\n");
    if (in->backing_name) {
        char b1[1100], b2[PATH_MAX + 1];
        printf("backing file: %s", cli_safe(in->backing_name, b1, sizeof(b1)));
        if (in->backing_path && strcmp(in->backing_path, in->backing_name) != 0)
            printf(" (actual path: %s)", cli_safe(in->backing_path, b2, sizeof(b2)));
        printf("\n");
        if (in->backing_format)
            printf("backing file format: %s\n", cli_safe(in->backing_format, b1, sizeof(b1)));
    }
    if (qcow2_snapshot_count(img) > 0)
        print_snapshot_table(img);
    cli_print_format_specific(in);
}

/* One layer as a JSON object, members in the order qemu-img 7.2 prints them. */
static void print_info_json(cli_json *j, const qcow2_image *img, const qcow2_info *in)
{
    size_t i, n = qcow2_snapshot_count(img);

    cli_json_begin_object(j, NULL);
    if (in->backing_name && in->backing_format)
        cli_json_string(j, "backing-filename-format", in->backing_format);
    if (n > 0) {
        cli_json_begin_array(j, "snapshots");
        for (i = 0; i < n; i++) {
            qcow2_snapshot_info sn;

            if (qcow2_snapshot_get(img, i, &sn) < 0)
                continue;
            cli_json_begin_object(j, NULL);
            if (sn.icount >= 0)
                cli_json_int(j, "icount", sn.icount);
            cli_json_uint(j, "vm-clock-nsec", sn.vm_clock_nsec % 1000000000u);
            cli_json_string(j, "name", sn.name);
            cli_json_uint(j, "date-sec", sn.date_sec);
            cli_json_uint(j, "date-nsec", sn.date_nsec);
            cli_json_uint(j, "vm-clock-sec", sn.vm_clock_nsec / 1000000000u);
            cli_json_string(j, "id", sn.id);
            cli_json_uint(j, "vm-state-size", sn.vm_state_size);
            cli_json_end_object(j);
        }
        cli_json_end_array(j);
    }
    cli_json_uint(j, "virtual-size", in->virtual_size);
    cli_json_string(j, "filename", in->filename);
    if (in->format == QCOW2_FORMAT_QCOW2)
        cli_json_uint(j, "cluster-size", in->cluster_size);
    cli_json_string(j, "format", qcow2_format_name(in->format));
    cli_json_uint(j, "actual-size", in->actual_size);
    if (in->format == QCOW2_FORMAT_QCOW2) {
        cli_json_begin_object(j, "format-specific");
        cli_json_string(j, "type", "qcow2");
        cli_json_begin_object(j, "data");
        cli_json_string(j, "compat", compat_name(in));
        cli_json_string(j, "compression-type", compression_name(in));
        if (in->qcow2_version >= 3)
            cli_json_bool(j, "lazy-refcounts", in->lazy_refcounts);
        cli_json_uint(j, "refcount-bits", in->refcount_bits);
        if (in->qcow2_version >= 3) {
            cli_json_bool(j, "corrupt", in->corrupt);
            cli_json_bool(j, "extended-l2", in->extended_l2);
        }
        cli_json_end_object(j);
        cli_json_end_object(j);
    }
    if (in->backing_name) {
        cli_json_string(j, "full-backing-filename",
                        in->backing_path ? in->backing_path : in->backing_name);
        cli_json_string(j, "backing-filename", in->backing_name);
    }
    cli_json_bool(j, "dirty-flag", in->dirty);
    cli_json_end_object(j);
}

struct info_args {
    qcow2_format fmt;
    bool json, chain, no_lock;
};

static const cli_command info_cmd = {
    .prog = "qsnap image info",
    .help = info_help,
    .usage_status = IMG_EXIT_FAIL,
    .options = (const cli_option[]){
        CLI_CONVERT("format", 'f', struct info_args, fmt, cli_opt_format),
        CLI_CONVERT("output", 0, struct info_args, json, cli_opt_output),
        CLI_FLAG("backing-chain", 0, struct info_args, chain),
        CLI_FLAG("force-share", 'U', struct info_args, no_lock),
        CLI_OPTIONS_END,
    },
    CLI_ONE_IMAGE,
};

int cli_image_info(int argc, char **argv)
{
    struct info_args a = {QCOW2_FORMAT_AUTO, false, false, false};
    bool json, chain;
    qcow2_image *img, *layer;
    cli_operands op;
    cli_json j;
    int rc;

    if (!cli_cmd_parse(&info_cmd, argc, argv, &a, &op, &rc))
        return rc;
    json = a.json;
    chain = a.chain;

    /* Like qemu-img, plain info does not need the backing files to exist. */
    rc = cli_open_image(&img, op.v[0], a.fmt, !chain, a.no_lock);
    if (rc < 0)
        return IMG_EXIT_FAIL;

    cli_json_init(&j, stdout);
    if (json && chain)
        cli_json_begin_array(&j, NULL);
    for (layer = img; layer; layer = chain ? qcow2_image_backing(layer) : NULL) {
        qcow2_info in;

        rc = qcow2_image_get_info(layer, &in);
        if (rc < 0)
            break;
        if (json) {
            print_info_json(&j, layer, &in);
        } else {
            if (layer != img)
                printf("\n");
            print_info_human(layer, &in);
        }
    }
    if (json && chain)
        cli_json_end_array(&j);
    if (json)
        cli_json_finish(&j);
    if (rc < 0)
        rc = cli_fail(rc, CLI_TABLE_IMAGE);
    qcow2_image_close(img);
    return rc;
}

/* ---- map ---------------------------------------------------------------- */

static const char map_help[] =
    "Usage: qsnap image map [--output=human|json] [-f FMT] [-l SNAPSHOT] [-U] FILE\n"
    "\n"
    "Show how the guest content of an image maps to its backing chain, as qemu-img\n"
    "map does: runs of equal status are merged. JSON fields: start, length, depth\n"
    "(0 = the image itself), present, zero, data, and offset (in that layer's file).\n"
    "The human format lists only the runs that hold data, with the layer's file.\n"
    "\n"
    "Options:\n"
    "  --output=human|json  output format (default human)\n"
    "  -f, --format=FMT     image format: qcow2 or raw (default: probe)\n"
    "  -l SNAPSHOT          map internal snapshot SNAPSHOT (id or name) of FILE\n"
    "                       instead of its active state\n"
    "  -U, --force-share    open without taking the image lock\n"
    "  -h, --help           show this help and exit\n"
    "\n"
    "Exit status: 0 success, 1 error.\n";

#define MAP_FLAGS (QCOW2_EXT_PRESENT | QCOW2_EXT_ZERO | QCOW2_EXT_DATA | QCOW2_EXT_OFFSET_VALID)

/* Whether run b continues run a in qemu-img map's sense. */
static bool map_can_merge(const qcow2_extent *a, const qcow2_extent *b)
{
    if (a->depth != b->depth || (a->flags & MAP_FLAGS) != (b->flags & MAP_FLAGS))
        return false;
    if (a->layer != b->layer)
        return false;
    if (a->flags & QCOW2_EXT_OFFSET_VALID)
        return a->host_off + a->length == b->host_off;
    return true;
}

static const char *yes_no(unsigned flags, unsigned bit)
{
    return (flags & bit) ? "true" : "false";
}

/* Print one merged run; returns false (after the message) when it cannot be shown. */
static bool map_emit(const qcow2_extent *e, bool json, bool first)
{
    if (json) {
        printf("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64 ", \"depth\": %u,"
               " \"present\": %s, \"zero\": %s, \"data\": %s",
               first ? "" : ",\n", e->start, e->length, e->depth,
               yes_no(e->flags, QCOW2_EXT_PRESENT), yes_no(e->flags, QCOW2_EXT_ZERO),
               yes_no(e->flags, QCOW2_EXT_DATA));
        if (e->flags & QCOW2_EXT_OFFSET_VALID)
            printf(", \"offset\": %" PRIu64, e->host_off);
        printf("}");
        return true;
    }
    if (!(e->flags & QCOW2_EXT_DATA))
        return true;
    if (!(e->flags & QCOW2_EXT_OFFSET_VALID)) {
        fflush(stdout);
        cli_errorf("File contains external, encrypted or compressed clusters.");
        return false;
    }
    if (e->flags & QCOW2_EXT_ZERO)
        return true;
    printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n", e->start, e->length, e->host_off,
           e->layer ? qcow2_image_filename(e->layer) : "");
    return true;
}

struct map_args {
    qcow2_format fmt;
    const char *snap;
    bool json, no_lock;
};

static const cli_command map_cmd = {
    .prog = "qsnap image map",
    .help = map_help,
    .usage_status = IMG_EXIT_FAIL,
    .options = (const cli_option[]){
        CLI_CONVERT("format", 'f', struct map_args, fmt, cli_opt_format),
        CLI_CONVERT("output", 0, struct map_args, json, cli_opt_output),
        CLI_FLAG("force-share", 'U', struct map_args, no_lock),
        CLI_STRING(NULL, 'l', struct map_args, snap),
        CLI_OPTIONS_END,
    },
    CLI_ONE_IMAGE,
};

int cli_image_map(int argc, char **argv)
{
    struct map_args a = {QCOW2_FORMAT_AUTO, NULL, false, false};
    bool json, first = true;
    qcow2_extent cur, next;
    qcow2_image *img;
    uint64_t size, off;
    cli_operands op;
    int rc = 0, status = 0;

    if (!cli_cmd_parse(&map_cmd, argc, argv, &a, &op, &status))
        return status;
    json = a.json;
    if (open_image_at(&img, op.v[0], a.fmt, a.no_lock, a.snap) < 0)
        return IMG_EXIT_FAIL;

    size = qcow2_image_size(img);
    if (json)
        printf("[");
    else
        printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
    memset(&cur, 0, sizeof(cur));
    for (off = 0; off < size; off += next.length) {
        rc = qcow2_image_block_status(img, NULL, off, size - off, &next);
        if (rc < 0)
            break;
        if (next.length == 0 || next.length > size - off) {
            fflush(stdout);
            cli_errorf("%s: bad block status at offset %" PRIu64, op.v[0], off);
            status = IMG_EXIT_FAIL;
            break;
        }
        if (off > 0 && map_can_merge(&cur, &next)) {
            cur.length += next.length;
            continue;
        }
        if (off > 0) {
            if (!map_emit(&cur, json, first)) {
                status = IMG_EXIT_FAIL;
                break;
            }
            first = false;
        }
        cur = next;
    }
    if (rc < 0) {
        fflush(stdout);
        status = cli_fail(rc, CLI_TABLE_IMAGE);
    } else if (status == 0 && size > 0 && !map_emit(&cur, json, first)) {
        status = IMG_EXIT_FAIL;
    } else if (size == 0 && json) {
        /* qemu-img describes an empty image with one empty run. */
        printf("{ \"start\": 0, \"length\": 0, \"depth\": 0, \"present\": false,"
               " \"zero\": false, \"data\": false}");
    }
    if (json)
        printf("]\n");
    qcow2_image_close(img);
    return status;
}

/* ---- convert ------------------------------------------------------------ */

static const char convert_help[] =
    "Usage: qsnap image convert [-f FMT] [-O raw|qcow2] [-c] [-o OPTIONS]\n"
    "                           [-B BACKING -F BACKING_FMT] [-S SIZE] [-l SNAPSHOT]\n"
    "                           [-n] [--salvage] [-p] [-U] SRC DST\n"
    "\n"
    "Flatten SRC and its whole backing chain into a new image DST (replaced if it\n"
    "exists; with -n, into the existing image DST), as qemu-img convert does. Raw\n"
    "output is sparse: runs of zeroes of at least SIZE bytes are left as holes;\n"
    "qcow2 output leaves them unallocated. A DST that is SRC or one of its\n"
    "backing files (by any name) is refused, with -U too.\n"
    "With -B, DST gets BACKING as its backing file and holds only the clusters\n"
    "whose content differs from what BACKING shows.\n"
    "\n"
    "Options:\n"
    "  -f, --format=FMT     format of SRC: qcow2 or raw (default: probe)\n"
    "  -O FMT               output format: raw (the default) or qcow2\n"
    "  -c                   qcow2 output: compress every cluster\n"
    "  -o OPTIONS           qcow2 output: creation options as for 'qsnap image\n"
    "                       create' (compat, cluster_size, ...); '-o help' lists them\n"
    "  -B BACKING           qcow2 output: backing file of DST (stored as given; a\n"
    "                       relative name is relative to the directory of DST)\n"
    "  -F BACKING_FMT       format of BACKING: qcow2 or raw (needed with -B)\n"
    "  -S SIZE              shortest zero run left as a hole (default 4k; 0 writes\n"
    "                       every byte); suffixes k, M, G, T, P, E\n"
    "  -l SNAPSHOT          convert internal snapshot SNAPSHOT of SRC (an id or a\n"
    "                       name, or snapshot.id=ID or snapshot.name=NAME)\n"
    "  -n                   do not create DST: write into the existing image DST\n"
    "                       (of format FMT of -O, raw by default), which must be at\n"
    "                       least as large as SRC; zero ranges of SRC are zeroed in\n"
    "                       it; not with -o, -c or -B\n"
    "  --salvage            on a read error of SRC, retry sector by sector, write\n"
    "                       the sectors that still fail as zeroes (one warning each)\n"
    "                       and go on\n"
    "  -p, --progress       show progress\n"
    "  -U, --force-share    open SRC without taking the image lock\n"
    "  -h, --help           show this help and exit\n"
    "\n"
    "Exit status: 0 success, 1 error.\n";

/* Creation options for qcow2 output from the -o list; false after the message. */
static bool convert_create_opts(cli_imgopts *io, qcow2_create_opts *co, const char *dst)
{
    if (cli_imgopts_parse(io, QCOW2_FORMAT_QCOW2, dst) < 0 ||
        cli_imgopts_apply(io, co, dst) < 0)
        return false;
    co->format = QCOW2_FORMAT_QCOW2;
    co->size = io->value[IMGOPT_SIZE] ? io->number[IMGOPT_SIZE] : 0;
    return true;
}

/*
 * The backing file of qcow2 output: -B and -F, else -o backing_file and
 * backing_fmt. False after qemu-img's message when they do not go together.
 */
static bool convert_backing(qcow2_convert_opts *copts, qcow2_create_opts *co, const char *dst)
{
    if (!copts->backing)
        copts->backing = co->backing_file;
    if (!copts->backing_format)
        copts->backing_format = co->backing_format;
    co->backing_file = NULL;
    co->backing_format = NULL;
    if (copts->backing && !copts->backing_format) {
        cli_errorf("Use of backing file requires explicit backing format");
        return false;
    }
    if (!copts->backing && copts->backing_format) {
        cli_errorf("%s: error while converting qcow2: Backing format cannot be used without "
                   "backing file", dst);
        return false;
    }
    if (copts->backing_format && qcow2_format_from_name(copts->backing_format) == QCOW2_FORMAT_AUTO) {
        cli_errorf("%s: error while converting qcow2: Parameter 'backing-fmt' does not accept "
                   "value '%s'", dst, copts->backing_format);
        return false;
    }
    return true;
}

/* --salvage: a sector of SRC that could not be read is written as zeroes; say which. */
static void convert_read_error(uint64_t off, int code, void *payload)
{
    (void)code;
    (void)payload;
    /* qemu-img's warning, which names the errno its reads fail with. */
    cli_errorf("warning: error while reading offset %" PRIu64 ": %s", off, strerror(EIO));
}

/* -S: the smallest run of zeroes left unallocated. */
static int convert_sparse(const char *arg, void *field)
{
    if (cli_parse_size(arg, field) < 0) {
        cli_errorf("Invalid buffer size for sparse output specified. "
                   "You may use k, M, G, T, P or E suffixes");
        return IMG_EXIT_FAIL;
    }
    return 0;
}

struct convert_args {
    qcow2_convert_opts copts;
    cli_imgopts io;
    qcow2_format fmt, out_fmt;
    const char *snap;
    bool progress, no_lock, compress, no_create, salvage;
};

static const cli_command convert_cmd = {
    .prog = "qsnap image convert",
    .help = convert_help,
    .usage_status = IMG_EXIT_FAIL,
    .options = (const cli_option[]){
        CLI_CONVERT("format", 'f', struct convert_args, fmt, cli_opt_format),
        CLI_CONVERT(NULL, 'O', struct convert_args, out_fmt, cli_opt_format),
        CLI_CONVERT(NULL, 'S', struct convert_args, copts.min_sparse, convert_sparse),
        CLI_FLAG("progress", 'p', struct convert_args, progress),
        CLI_FLAG("force-share", 'U', struct convert_args, no_lock),
        CLI_FLAG(NULL, 'c', struct convert_args, compress),
        CLI_CONVERT(NULL, 'o', struct convert_args, io, cli_imgopts_convert),
        CLI_STRING(NULL, 'B', struct convert_args, copts.backing),
        CLI_STRING(NULL, 'F', struct convert_args, copts.backing_format),
        CLI_STRING(NULL, 'l', struct convert_args, snap),
        CLI_FLAG(NULL, 'n', struct convert_args, no_create),
        CLI_FLAG("salvage", 0, struct convert_args, salvage),
        CLI_OPTIONS_END,
    },
};

int cli_image_convert(int argc, char **argv)
{
    struct convert_args a = {.copts = QCOW2_CONVERT_OPTS_INIT,
                             .fmt = QCOW2_FORMAT_AUTO,
                             .out_fmt = QCOW2_FORMAT_RAW};
    qcow2_convert_opts copts;
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;
    qcow2_format fmt, out_fmt;
    bool progress, compress;
    cli_progress pr;
    cli_operands op;
    qcow2_image *img;
    int rc;

    cli_imgopts_init(&a.io);
    if (!cli_cmd_parse(&convert_cmd, argc, argv, &a, &op, &rc)) {
        cli_imgopts_free(&a.io);
        return rc;
    }
    rc = 1;
    copts = a.copts;
    fmt = a.fmt;
    out_fmt = a.out_fmt;
    progress = a.progress;
    compress = a.compress;
    if (a.salvage) {
        copts.salvage = true;
        copts.read_error = convert_read_error;
    }
    if (cli_imgopts_wants_help(&a.io)) {
        cli_imgopts_print_help(out_fmt);
        rc = 0;
        goto out;
    }
    if (op.n < 2) {
        cli_errorf("Must specify image file name");
        cli_usage_hint("qsnap image convert", IMG_EXIT_FAIL);
        goto out;
    }
    if (op.n > 2) {
        cli_errorf("Expecting one source image and one target image");
        cli_usage_hint("qsnap image convert", IMG_EXIT_FAIL);
        goto out;
    }
    if (a.no_create) {
        struct stat st;

        if (a.io.text) {
            cli_errorf("-o has no effect when skipping image creation");
            goto out;
        }
        if (compress || copts.backing || copts.backing_format) {
            cli_errorf("-c, -B and -F need a new image: not with -n");
            goto out;
        }
        if (stat(op.v[1], &st) < 0) {
            cli_errorf("Could not open '%s': Could not open '%s': %s", op.v[1], op.v[1],
                       strerror(errno));
            goto out;
        }
        copts.no_create = true;
    } else if (out_fmt == QCOW2_FORMAT_QCOW2) {
        if (!convert_create_opts(&a.io, &co, op.v[1]) || !convert_backing(&copts, &co, op.v[1]))
            goto out;
        copts.create = &co;
    } else if (copts.backing) {
        cli_errorf("Backing file not supported for file format '%s'", qcow2_format_name(out_fmt));
        goto out;
    } else if (copts.backing_format) {
        cli_errorf("Backing file format not supported for file format '%s'",
                   qcow2_format_name(out_fmt));
        goto out;
    } else if (compress) {
        cli_errorf("Compression not supported for this file format");
        goto out;
    } else if (a.io.text) {
        /* qemu-img's message for a key raw does not have; raw output takes none. */
        if (cli_imgopts_parse(&a.io, QCOW2_FORMAT_RAW, op.v[1]) == 0)
            cli_errorf("%s: creation options are not supported for raw output", op.v[1]);
        goto out;
    }
    /* -n writes into the target as a VM would; otherwise the target is made anew. */
    if (cli_refuse_store_write(op.v[1], !copts.no_create))
        goto out;
    if (open_image_at(&img, op.v[0], fmt, a.no_lock, a.snap) < 0)
        goto out;

    cli_progress_begin(&pr, progress, true);
    pr.qemu_steps = true; /* one line per copied extent, as qemu-img convert -p */
    copts.format = out_fmt;
    copts.compress = compress;
    copts.progress = cli_progress_update;
    copts.payload = &pr;
    rc = qcow2_image_convert(img, op.v[1], &copts);
    if (rc >= 0)
        cli_progress_end(&pr);
    else
        cli_progress_abort(&pr);
    if (rc < 0)
        rc = cli_fail(rc, CLI_TABLE_IMAGE);
    qcow2_image_close(img);
out:
    cli_imgopts_free(&a.io);
    return rc;
}

/* ---- compare ------------------------------------------------------------ */

static const char compare_help[] =
    "Usage: qsnap image compare [-f FMT] [-F FMT] [-l SNAPSHOT] [-L SNAPSHOT] [-s] [-p]\n"
    "                           [-q] [-U] A B\n"
    "\n"
    "Compare the guest content of images A and B (each with its backing chain), as\n"
    "qemu-img compare does. Without -s, images of different sizes are identical when\n"
    "the tail of the larger one reads as zeroes.\n"
    "\n"
    "Options:\n"
    "  -f FMT               format of A: qcow2 or raw (default: probe)\n"
    "  -F FMT               format of B: qcow2 or raw (default: probe)\n"
    "  -l SNAPSHOT          compare internal snapshot SNAPSHOT (id or name) of A\n"
    "  -L SNAPSHOT          compare internal snapshot SNAPSHOT (id or name) of B\n"
    "  -s, --strict         strict mode: images of different sizes differ, and so\n"
    "                       do ranges whose allocation status differs (allocated,\n"
    "                       zero, data, offset known) even where they read the same\n"
    "  -p, --progress       show progress\n"
    "  -q, --quiet          print nothing but errors (the exit status tells)\n"
    "  -U, --force-share    open without taking the image locks\n"
    "  -h, --help           show this help and exit\n"
    "\n"
    "Exit status: 0 identical, 1 different (or a bad command line), 2 error.\n";

/* The block status bits qemu-img compare -s compares, plus one for "run reaches the end". */
#define STRICT_FLAGS (QCOW2_EXT_PRESENT | QCOW2_EXT_ZERO | QCOW2_EXT_DATA | QCOW2_EXT_OFFSET_VALID)
#define STRICT_EOF 0x10000u

/* One image's status at off for strict mode; *len_out is the run's length. */
static int strict_status(qcow2_image *img, uint64_t off, unsigned *status, uint64_t *len_out)
{
    uint64_t size = qcow2_image_size(img);
    qcow2_extent e;
    int rc = qcow2_image_block_status(img, NULL, off, size - off, &e);

    if (rc < 0)
        return rc;
    *status = e.flags & STRICT_FLAGS;
    if (off + e.length == size)
        *status |= STRICT_EOF;
    *len_out = e.length;
    return 0;
}

/*
 * Strict mode's allocation check: the first offset below end where the two
 * chains' block status differs. @return 1 (*off_out set), 0 none, or < 0.
 */
static int strict_status_mismatch(qcow2_image *a, qcow2_image *b, uint64_t end, uint64_t *off_out)
{
    uint64_t off = 0, len_a, len_b;
    unsigned st_a, st_b;
    int rc;

    while (off < end) {
        rc = strict_status(a, off, &st_a, &len_a);
        if (rc == 0)
            rc = strict_status(b, off, &st_b, &len_b);
        if (rc < 0)
            return rc;
        if (st_a != st_b) {
            *off_out = off;
            return 1;
        }
        off += len_a < len_b ? len_a : len_b;
    }
    return 0;
}

struct compare_args {
    qcow2_format fmt_a, fmt_b;
    const char *snap_a, *snap_b;
    bool strict, progress, no_lock, quiet;
};

static const cli_command compare_cmd = {
    .prog = "qsnap image compare",
    .help = compare_help,
    .usage_status = IMG_EXIT_FAIL,
    .options = (const cli_option[]){
        CLI_CONVERT(NULL, 'f', struct compare_args, fmt_a, cli_opt_format),
        CLI_CONVERT(NULL, 'F', struct compare_args, fmt_b, cli_opt_format),
        CLI_FLAG("strict", 's', struct compare_args, strict),
        CLI_FLAG("progress", 'p', struct compare_args, progress),
        CLI_FLAG("force-share", 'U', struct compare_args, no_lock),
        CLI_STRING(NULL, 'l', struct compare_args, snap_a),
        CLI_STRING(NULL, 'L', struct compare_args, snap_b),
        CLI_FLAG("quiet", 'q', struct compare_args, quiet),
        CLI_OPTIONS_END,
    },
    CLI_OPERANDS(2, "Expecting two image file names", "Expecting two image file names"),
    .extra = "Expecting two image file names",
};

int cli_image_compare(int argc, char **argv)
{
    struct compare_args args = {QCOW2_FORMAT_AUTO, QCOW2_FORMAT_AUTO, NULL, NULL,
                                false, false, false, false};
    bool strict, progress, quiet;
    qcow2_image *a = NULL, *b = NULL;
    uint64_t mismatch = 0, status_off = 0, common;
    bool status_differs = false;
    cli_progress pr;
    cli_operands op;
    int rc, status;

    if (!cli_cmd_parse(&compare_cmd, argc, argv, &args, &op, &status))
        return status;
    strict = args.strict;
    progress = args.progress;
    quiet = args.quiet;
    if (quiet)
        progress = false; /* as qemu-img: -q shows no progress and no verdict, only errors */
    if (open_image_at(&a, op.v[0], args.fmt_a, args.no_lock, args.snap_a) < 0)
        return 2;
    if (open_image_at(&b, op.v[1], args.fmt_b, args.no_lock, args.snap_b) < 0) {
        qcow2_image_close(a);
        return 2;
    }

    if (strict && qcow2_image_size(a) != qcow2_image_size(b)) {
        if (!quiet)
            printf("Strict mode: Image size mismatch!\n");
        status = 1;
        goto out_close;
    }
    cli_progress_begin(&pr, progress, true);
    rc = 0;
    if (strict) {
        rc = strict_status_mismatch(a, b, qcow2_image_size(a), &status_off);
        status_differs = rc == 1;
    }
    if (rc >= 0)
        rc = qcow2_image_compare(a, b, strict, &mismatch, cli_progress_update, &pr);
    common = qcow2_image_size(a) < qcow2_image_size(b) ? qcow2_image_size(a) : qcow2_image_size(b);
    /* qemu-img stops at whichever it meets first, walking up from offset 0. */
    if (status_differs && (rc == 0 || (rc == 1 && mismatch >= status_off)))
        rc = 2;
    /* qemu-img ends the progress line with the verdict, then a blank line. */
    if (rc >= 0)
        cli_progress_complete(&pr);
    else
        cli_progress_abort(&pr);
    /* qemu-img warns once the common part compared equal, before the tail. */
    if ((rc == 0 || (rc == 1 && mismatch >= common)) && qcow2_image_size(a) != qcow2_image_size(b))
        if (!quiet)
            printf("Warning: Image size mismatch!\n");
    if (rc == 0) {
        if (!quiet)
            printf("Images are identical.\n");
        status = 0;
    } else if (rc == 1) {
        if (!quiet)
            printf("Content mismatch at offset %" PRIu64 "!\n", mismatch);
        status = 1;
    } else if (rc == 2) {
        if (!quiet)
            printf("Strict mode: Offset %" PRIu64 " block status mismatch!\n", status_off);
        status = 1;
    } else {
        fflush(stdout);
        status = cli_fail(rc, CLI_TABLE_COMPARE);
    }
    if (rc >= 0 && progress)
        printf("\n");
out_close:
    qcow2_image_close(b);
    qcow2_image_close(a);
    return status;
}

/* ---- digest ------------------------------------------------------------- */

static const char digest_help[] =
    "Usage: qsnap image digest [-f FMT] [-l SNAPSHOT] [-p] [-U] FILE\n"
    "\n"
    "Print the digest of the guest-visible content of FILE (all of its virtual\n"
    "size, through its backing chain) as 32 hex digits, two spaces and the file\n"
    "name, like sha256sum: xxh3-128 over the content's non-zero 4 KiB blocks and\n"
    "the list of its zero runs (DIGEST.md in the documentation defines it), so\n"
    "zero runs cost nothing to hash. Images with the same content have the same\n"
    "digest whatever their format, chain or allocation.\n"
    "\n"
    "Options:\n"
    "  -f, --format=FMT     image format: qcow2 or raw (default: probe)\n"
    "  -l SNAPSHOT          digest internal snapshot SNAPSHOT (id or name) of FILE\n"
    "  -p, --progress       show progress\n"
    "  -U, --force-share    open without taking the image lock\n"
    "  -h, --help           show this help and exit\n"
    "\n"
    "Exit status: 0 success, 1 error.\n";

struct digest_args {
    qcow2_format fmt;
    const char *snap;
    bool progress, no_lock;
};

static const cli_command digest_cmd = {
    .prog = "qsnap image digest",
    .help = digest_help,
    .usage_status = IMG_EXIT_FAIL,
    .options = (const cli_option[]){
        CLI_CONVERT("format", 'f', struct digest_args, fmt, cli_opt_format),
        CLI_FLAG("progress", 'p', struct digest_args, progress),
        CLI_FLAG("force-share", 'U', struct digest_args, no_lock),
        CLI_STRING(NULL, 'l', struct digest_args, snap),
        CLI_OPTIONS_END,
    },
    CLI_ONE_IMAGE,
};

int cli_image_digest(int argc, char **argv)
{
    struct digest_args a = {QCOW2_FORMAT_AUTO, NULL, false, false};
    uint8_t digest[16];
    cli_progress pr;
    qcow2_image *img;
    cli_operands op;
    int rc, i;

    if (!cli_cmd_parse(&digest_cmd, argc, argv, &a, &op, &rc))
        return rc;
    if (open_image_at(&img, op.v[0], a.fmt, a.no_lock, a.snap) < 0)
        return IMG_EXIT_FAIL;

    cli_progress_begin(&pr, a.progress, true);
    rc = qcow2_image_digest(img, digest, cli_progress_update, &pr);
    if (rc >= 0)
        cli_progress_end(&pr);
    else
        cli_progress_abort(&pr);
    if (rc < 0) {
        rc = cli_fail(rc, CLI_TABLE_IMAGE);
    } else {
        for (i = 0; i < 16; i++)
            printf("%02x", digest[i]);
        printf("  %s\n", op.v[0]);
    }
    qcow2_image_close(img);
    return rc;
}
