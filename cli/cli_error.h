/*
 * Exit statuses of qsnap and the one place where library error codes become
 * them. `qsnap image` commands use qemu-img's statuses (1 for any error,
 * usage errors included; compare: 2 for an error); the top level and the
 * tree commands use the table below.
 */
#ifndef QSNAP_CLI_ERROR_H
#define QSNAP_CLI_ERROR_H

/* Exit statuses of the top level and the tree commands (DESIGN.md, "The command line"). */
enum cli_exit {
    CLI_EXIT_OK = 0,        /* success */
    CLI_EXIT_ERROR = 1,     /* an error */
    CLI_EXIT_USAGE = 2,     /* bad command line */
    CLI_EXIT_UNSAFE = 3,    /* refused as unsafe */
    CLI_EXIT_INTEGRITY = 4, /* integrity problem found */
    CLI_EXIT_BUSY = 5,      /* locked or in use */
    CLI_EXIT_NOTFOUND = 6,  /* not found */
};

/* Which table maps an error code to an exit status. */
enum cli_exit_table {
    CLI_TABLE_IMAGE,   /* qemu-img commands: every error is 1 */
    CLI_TABLE_COMPARE, /* qemu-img compare: every error is 2 */
    CLI_TABLE_TREE,    /* tree commands: enum cli_exit */
};

/* The exit status for library code rc (< 0) under table. */
int cli_exit_status(int rc, enum cli_exit_table table);

/*
 * Print "qsnap: <message of the library's last error>" to stderr and return
 * the exit status for rc under table. Call right after the failing call.
 */
int cli_fail(int rc, enum cli_exit_table table);

/*
 * cli_fail() for an image that could not be opened (or written) because
 * another program holds its lock: after the message, a hint to stop that
 * program, and, when share is not NULL, that adding share (the command's
 * way to read without the lock, e.g. "-U (--force-share)") reads it anyway.
 * Other codes are reported as cli_fail() does.
 */
int cli_fail_open(int rc, enum cli_exit_table table, const char *share);

/* The share argument of cli_fail_open() for commands with -U. */
#define CLI_SHARE_FLAG "-U (--force-share)"

/* Print "qsnap: <printf message>" to stderr. */
void cli_errorf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif /* QSNAP_CLI_ERROR_H */
