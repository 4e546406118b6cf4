/*
 * Shared declarations of `qsnap image io` (a qemu-io subset): the state its
 * commands run against, the command table's entry shape, the helpers the
 * dispatcher (cmd_io.c) shares, and the read/write family (cmd_io_rw.c).
 */
#ifndef QSNAP_CMD_IO_H
#define QSNAP_CMD_IO_H

#include <stdbool.h>
#include <stdint.h>

#include <qcow2/qcow2.h>

/* qemu-io's cap on one request, in bytes. */
#define IO_MAX_REQUEST 2147483136ull

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

/* Print a command's one-line usage, as qemu-io does after a bad option. */
void io_print_usage(const struct io_cmd *cmd);
/* The number in word, or -1 after qemu-io's parsing message. */
int io_parse_num(const char *word, uint64_t *out);
/* "<what> failed: <the library's message>" on stdout, as qemu-io prints it; returns -1. */
int io_failed(const char *what, int rc);

/* The read/write family (cmd_io_rw.c). */
int io_cmd_read(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv);
int io_cmd_readv(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv);
int io_cmd_write(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv);
int io_cmd_writev(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv);
int io_cmd_discard(struct io_ctx *ctx, const struct io_cmd *cmd, int argc, char **argv);

#endif /* QSNAP_CMD_IO_H */
