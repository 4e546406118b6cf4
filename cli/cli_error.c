/*
 * Error reporting for the qsnap program: library failures are printed with
 * the library's own message (which names the file) and turned into exit
 * statuses by the tables declared in cli_error.h.
 */
#include <stdarg.h>
#include <stdio.h>

#include <qcow2/qcow2.h>

#include "cli_error.h"

int cli_exit_status(int rc, enum cli_exit_table table)
{
    if (rc >= 0)
        return CLI_EXIT_OK;
    switch (table) {
    case CLI_TABLE_IMAGE:
        return 1;
    case CLI_TABLE_COMPARE:
        return 2;
    case CLI_TABLE_TREE:
        break;
    }
    switch ((qcow2_error_code)QCOW2_ERROR_CLASS(rc)) {
    case QCOW2_ENOTFOUND:
        return CLI_EXIT_NOTFOUND;
    case QCOW2_EBUSY:
        return CLI_EXIT_BUSY;
    case QCOW2_ECORRUPT:
        return CLI_EXIT_INTEGRITY;
    case QCOW2_EINVAL:
        return CLI_EXIT_USAGE;
    case QCOW2_OK:
    case QCOW2_ERROR:
    case QCOW2_ENOMEM:
    case QCOW2_EIO:
    case QCOW2_ENOSPC:
    case QCOW2_EEXISTS:
    case QCOW2_EUNSUPPORTED:
    case QCOW2_EREADONLY:
    case QCOW2_EFATAL:
        break;
    }
    return CLI_EXIT_ERROR;
}

int cli_fail_open(int rc, enum cli_exit_table table, const char *share)
{
    const qcow2_error *e = qcow2_error_last();

    if (e->code == rc && e->message && e->message[0])
        fprintf(stderr, "qsnap: %s\n", e->message);
    else
        fprintf(stderr, "qsnap: %s\n", qcow2_strerror(rc));
    /* Locked by another program: say what frees it, and the flag that reads it anyway. */
    if (QCOW2_ERROR_CLASS(rc) == QCOW2_EBUSY) {
        if (share)
            fprintf(stderr,
                    "qsnap: hint: stop the program that uses it (a VM, qemu-io) first; %s reads it "
                    "anyway, as it is at that moment\n",
                    share);
        else
            fputs("qsnap: hint: stop the program that uses it (a VM, qemu-io) first\n", stderr);
    }
    return cli_exit_status(rc, table);
}

int cli_fail(int rc, enum cli_exit_table table)
{
    return cli_fail_open(rc, table, NULL);
}

void cli_errorf(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fputs("qsnap: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}
