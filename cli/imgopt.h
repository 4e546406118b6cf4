/*
 * The -o key=value,... creation options of `qsnap image create` and
 * `qsnap image convert -O qcow2`, with qemu-img's names (compat,
 * cluster_size, refcount_bits, extended_l2, compression_type,
 * lazy_refcounts, preallocation, backing_file, backing_fmt, size), its
 * messages, its "-o help" listing and its "Formatting '...'" line. The
 * values are only parsed and passed on: whether a combination is valid is
 * the library's decision (qcow2_image_create).
 */
#ifndef QSNAP_CLI_IMGOPT_H
#define QSNAP_CLI_IMGOPT_H

#include <stdbool.h>
#include <stdint.h>

#include <qcow2/qcow2.h>

/* The option keys, in qemu-img's "-o help" order. */
enum cli_imgopt_key {
    IMGOPT_BACKING_FILE,
    IMGOPT_BACKING_FMT,
    IMGOPT_CLUSTER_SIZE,
    IMGOPT_COMPAT,
    IMGOPT_COMPRESSION_TYPE,
    IMGOPT_EXTENDED_L2,
    IMGOPT_LAZY_REFCOUNTS,
    IMGOPT_PREALLOCATION,
    IMGOPT_REFCOUNT_BITS,
    IMGOPT_SIZE,
    IMGOPT_COUNT
};

/* The -o options given so far (all -o arguments accumulate, as in qemu-img). */
typedef struct cli_imgopts {
    char *text;                   /* every -o argument, joined with commas; owned */
    char *value[IMGOPT_COUNT];    /* a key's value as given (last wins), or NULL; owned */
    uint64_t number[IMGOPT_COUNT]; /* the parsed value of size and number keys */
} cli_imgopts;

/* Empty set. */
void cli_imgopts_init(cli_imgopts *o);

/* Free what the set owns (the struct itself is the caller's). */
void cli_imgopts_free(cli_imgopts *o);

/* Remember one -o argument. @return 0, or -1 (out of memory, after the message). */
int cli_imgopts_append(cli_imgopts *o, const char *arg);

/* cli_imgopts_append() as an option converter (see opt.h): -o into a cli_imgopts; exits 1. */
int cli_imgopts_convert(const char *arg, void *field);

/* Set key to a copy of value (for -b and -F). @return 0, or -1 after the message. */
int cli_imgopts_set(cli_imgopts *o, enum cli_imgopt_key key, const char *value);

/* Whether one of the -o arguments asks for the list ("help" or "?"). */
bool cli_imgopts_wants_help(const cli_imgopts *o);

/* Print the "Supported FMT options:" list. */
void cli_imgopts_print_help(qcow2_format fmt);

/*
 * Split the accumulated text into keys for format fmt and check each value's
 * syntax (numbers, sizes, on/off). Messages name file, as qemu-img's do
 * (file NULL: no name, as in qemu-img measure).
 * @return 0, or -1 after the message.
 */
int cli_imgopts_parse(cli_imgopts *o, qcow2_format fmt, const char *file);

/*
 * Fill a qcow2_create_opts from the parsed keys (format and size are the
 * caller's). Word values (compat, compression_type, preallocation) are
 * checked here, with qemu-img's messages naming file (if not NULL). Strings
 * point into o.
 * @return 0, or -1 after the message.
 */
int cli_imgopts_apply(const cli_imgopts *o, qcow2_create_opts *out, const char *file);

/*
 * qemu-img create's line "Formatting 'FILE', fmt=FMT key=value ..." with the
 * keys in its order: defaults shown for the qcow2 keys qemu-img always
 * shows, the others only when given.
 */
void cli_imgopts_print_formatting(const cli_imgopts *o, qcow2_format fmt, const char *file,
                                  uint64_t size);

#endif /* QSNAP_CLI_IMGOPT_H */
