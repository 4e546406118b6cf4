/*
 * `qsnap image snapshot`: qemu-img snapshot's -l (list), -c (create), -a
 * (apply) and -d (delete) on internal qcow2 snapshots, with its output,
 * messages and exit statuses (0 ok, 1 any error). The work is the public
 * qcow2_snapshot_* API; this file only parses and prints.
 *
 * One deliberate difference: qemu-img creates a second snapshot with a name
 * that is already used; the library refuses it (lookups by name would be
 * ambiguous), so -c with a used name fails here.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <qcow2/qcow2.h>

#include "cli.h"
#include "cli_error.h"
#include "fmt.h"
#include "opt.h"

/* qemu-img's status for every failure, a bad command line included. */
#define SNAP_EXIT_FAIL 1

enum snap_action {
    SNAP_NONE = 0,
    SNAP_LIST,
    SNAP_CREATE,
    SNAP_APPLY,
    SNAP_DELETE,
};

static const char snapshot_help[] =
    "Usage: qsnap image snapshot [-l | -c NAME | -a NAME | -d NAME] [-f FMT] [-q] [-U] FILE\n"
    "\n"
    "List, create, apply or delete the internal snapshots of a qcow2 image, as\n"
    "qemu-img snapshot does. -a and -d find a snapshot by its id first, then by name.\n"
    "\n"
    "Options:\n"
    "  -l                   list the snapshots (qemu-img's \"Snapshot list:\" table)\n"
    "  -c NAME              create a snapshot of the current state named NAME\n"
    "  -a NAME              revert the image to snapshot NAME (id or name)\n"
    "  -d NAME              delete snapshot NAME (id or name)\n"
    "  -f, --format=FMT     image format: qcow2 or raw (default: probe)\n"
    "  -q, --quiet          quiet mode (nothing else is printed anyway)\n"
    "  -U, --force-share    open without taking the image lock (only with -l)\n"
    "  -h, --help           show this help and exit\n"
    "\n"
    "Without an action nothing is done. Exit status: 0 success, 1 error.\n";

static void fmt_clock(uint64_t nsec, char *buf, size_t len)
{
    uint64_t ms = nsec / 1000000;

    snprintf(buf, len, "%02" PRIu64 ":%02" PRIu64 ":%02" PRIu64 ".%03" PRIu64, ms / 3600000,
             ms / 60000 % 60, ms / 1000 % 60, ms % 1000);
}

/* qemu-img's "Snapshot list:" table; nothing at all when there is no snapshot. */
static void print_list(const qcow2_image *img)
{
    size_t n = qcow2_snapshot_count(img);

    if (n == 0)
        return;
    printf("Snapshot list:\n"
           "ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT\n");
    for (size_t i = 0; i < n; i++) {
        qcow2_snapshot_info sn;
        char vm_size[CLI_SIZE_STR_MAX], date[32], clock[48], icount[24] = "";
        struct tm tm;
        time_t t;

        if (qcow2_snapshot_get(img, i, &sn) < 0)
            continue;
        t = (time_t)sn.date_sec;
        if (!localtime_r(&t, &tm) || strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm) == 0)
            snprintf(date, sizeof(date), "%" PRIu32, sn.date_sec);
        fmt_clock(sn.vm_clock_nsec, clock, sizeof(clock));
        if (sn.icount >= 0)
            snprintf(icount, sizeof(icount), "%" PRId64, sn.icount);
        char sid[256], sname[1024];
        printf("%-9s %-16s %8s %19s %12s %10s\n", cli_safe(sn.id, sid, sizeof(sid)),
               cli_safe(sn.name, sname, sizeof(sname)),
               cli_fmt_size(sn.vm_state_size, vm_size), date, clock, icount);
    }
}

/* "qsnap: Could not <what> snapshot 'NAME': <library message>"; status 1. */
static int snap_failed(const char *what, const char *name, int rc)
{
    const qcow2_error *e = qcow2_error_last();

    cli_errorf("Could not %s snapshot '%s': %s", what, name,
               e->code == rc && e->message && e->message[0] ? e->message : qcow2_strerror(rc));
    return SNAP_EXIT_FAIL;
}

/* The action of the command line: one of -l, -c, -a and -d, with its snapshot. */
struct snap_args {
    struct snap_choice {
        enum snap_action action;
        const char *name;
    } choice;
    qcow2_format fmt;
    bool quiet, no_lock;
};

/* Record action a (the second one is an error, reported when it is met). */
static int snap_choose(struct snap_choice *c, enum snap_action a, const char *name)
{
    if (c->action != SNAP_NONE) {
        cli_errorf("Cannot mix '-l', '-a', '-c', '-d'");
        return cli_usage_hint("qsnap image snapshot", SNAP_EXIT_FAIL);
    }
    c->action = a;
    c->name = name;
    return 0;
}

static int snap_list(const char *arg, void *field)
{
    return snap_choose(field, SNAP_LIST, arg);
}

static int snap_create(const char *arg, void *field)
{
    return snap_choose(field, SNAP_CREATE, arg);
}

static int snap_apply(const char *arg, void *field)
{
    return snap_choose(field, SNAP_APPLY, arg);
}

static int snap_delete(const char *arg, void *field)
{
    return snap_choose(field, SNAP_DELETE, arg);
}

static const cli_command snapshot_cmd = {
    .prog = "qsnap image snapshot",
    .help = snapshot_help,
    .usage_status = SNAP_EXIT_FAIL,
    .options = (const cli_option[]){
        CLI_CALL(NULL, 'l', struct snap_args, choice, snap_list),
        CLI_CONVERT(NULL, 'c', struct snap_args, choice, snap_create),
        CLI_CONVERT(NULL, 'a', struct snap_args, choice, snap_apply),
        CLI_CONVERT(NULL, 'd', struct snap_args, choice, snap_delete),
        CLI_CONVERT("format", 'f', struct snap_args, fmt, cli_opt_format),
        CLI_FLAG("quiet", 'q', struct snap_args, quiet), /* accepted; nothing to quieten */
        CLI_FLAG("force-share", 'U', struct snap_args, no_lock),
        CLI_OPTIONS_END,
    },
    CLI_ONE_IMAGE,
};

int cli_image_snapshot(int argc, char **argv)
{
    struct snap_args a = {{SNAP_NONE, NULL}, QCOW2_FORMAT_AUTO, false, false};
    qcow2_open_opts opts = QCOW2_OPEN_OPTS_INIT;
    enum snap_action action;
    const char *name;
    qcow2_format fmt;
    bool no_lock;
    qcow2_image *img;
    cli_operands op;
    int rc;

    if (!cli_cmd_parse(&snapshot_cmd, argc, argv, &a, &op, &rc))
        return rc;
    action = a.choice.action;
    name = a.choice.name;
    fmt = a.fmt;
    no_lock = a.no_lock;
    if (no_lock && action != SNAP_LIST && action != SNAP_NONE) {
        cli_errorf("Could not open '%s': force-share=on can only be used with read-only images",
                   op.v[0]);
        return SNAP_EXIT_FAIL;
    }
    opts.format = fmt;
    if (no_lock)
        opts.flags |= QCOW2_OPEN_NO_LOCK;
    if (action != SNAP_LIST && action != SNAP_NONE) {
        if (cli_refuse_snapshot_edit(op.v[0], action == SNAP_CREATE ? NULL : name))
            return SNAP_EXIT_FAIL;
        opts.flags |= QCOW2_OPEN_RDWR;
    }
    /* Snapshots live in this layer only: the chain below is not needed. */
    opts.flags |= QCOW2_OPEN_NO_BACKING;
    rc = qcow2_image_open(&img, op.v[0], &opts);
    if (rc < 0)
        return cli_fail_open(rc, CLI_TABLE_IMAGE,
                             no_lock || (action != SNAP_LIST && action != SNAP_NONE) ? NULL
                                                                                 : CLI_SHARE_FLAG);

    switch (action) {
    case SNAP_NONE:
        break;
    case SNAP_LIST:
        print_list(img);
        break;
    case SNAP_CREATE:
        rc = qcow2_snapshot_create(img, name, NULL);
        if (rc < 0)
            rc = snap_failed("create", name, rc);
        break;
    case SNAP_APPLY:
        rc = qcow2_snapshot_apply(img, name);
        if (rc < 0)
            rc = snap_failed("apply", name, rc);
        break;
    case SNAP_DELETE:
        rc = qcow2_snapshot_delete(img, name);
        if (rc < 0)
            rc = snap_failed("delete", name, rc);
        break;
    }
    if (rc == 0 && action != SNAP_LIST && action != SNAP_NONE) {
        rc = qcow2_image_flush(img);
        if (rc < 0)
            rc = cli_fail(rc, CLI_TABLE_IMAGE);
    }
    qcow2_image_close(img);
    return rc;
}
