/*
 * A small, reentrant command-line option parser for qsnap's commands and for
 * the command lines of `qsnap image io`. GNU-style: short options may be
 * clustered (-pU), take their argument attached or as the next word (-fraw,
 * -f raw); long options take it as --name=value or --name value; options and
 * operands may be mixed, and "--" ends the options.
 */
#ifndef QSNAP_CLI_OPT_H
#define QSNAP_CLI_OPT_H

#include <stdbool.h>
#include <stddef.h>

/* Keys above this value name long-only options. */
#define CLI_OPT_LONG_BASE 256

/* One option a command accepts; a table ends with an entry whose key is 0. */
typedef struct cli_opt_def {
    const char *long_name; /* without the leading "--", or NULL */
    int key;               /* the short letter, or CLI_OPT_LONG_BASE + n */
    bool has_arg;          /* takes a value */
} cli_opt_def;

typedef struct cli_opt_parser {
    const char *prog;         /* prefix of error messages ("qsnap", or an io command) */
    int argc;                 /* words in argv */
    char **argv;              /* the words; operands are moved to the front */
    const cli_opt_def *defs;  /* accepted options */
    int next;                 /* index of the next word to look at */
    int nb_operands;          /* operands found so far, at argv[0..nb_operands) */
    const char *cluster;      /* rest of a cluster of short options, or NULL */
    const char *arg;          /* value of the option just returned */
    bool done;                /* "--" was seen: the rest are operands */
} cli_opt_parser;

/*
 * Start parsing argv[0..argc) (the command's own arguments, without the
 * command name). Messages are prefixed "qsnap: " until p->prog is changed.
 */
void cli_opt_init(cli_opt_parser *p, int argc, char **argv, const cli_opt_def *defs);

/*
 * The next option's key (its value in p->arg), 0 when all words have been
 * seen, or -1 after printing "<prog>: <what is wrong>" to stderr for an
 * unknown option or a missing value. After 0, the operands are
 * p->argv[0..p->nb_operands), in order.
 */
int cli_opt_next(cli_opt_parser *p);

/* ---- commands declared once ------------------------------------------------
 *
 * Every qsnap command (but the io command's own command lines, which call
 * cli_opt_next() directly) is one static cli_command: its name as the user
 * types it, its --help text, its options and its operands. cli_cmd_parse()
 * reads a command line by it into the command's own argument struct: each
 * option names the field it sets (by offset) and how. -h/--help is implied.
 * Adding an option to a command is one line in its table.
 *
 * The parser under it is cli_opt_next() above, not getopt_long(): getopt
 * keeps its state in globals (optind, optarg; restarting it is a glibc
 * extension), which the io command cannot share with the command that runs
 * it as it parses each of its lines, and getopt's messages carry argv[0]
 * where ours say "qsnap" (or the io command's name) as the goldens expect.
 */

/* What an option does with the field it names. */
typedef enum cli_opt_kind {
    CLI_OPT_FLAG,    /* bool: set to true */
    CLI_OPT_STRING,  /* const char *: the value (the last one given wins) */
    CLI_OPT_BITS,    /* unsigned: or'ed with bits */
    CLI_OPT_CONVERT, /* convert(value, field): a number, size, format, list, ... */
    CLI_OPT_CALL,    /* convert(NULL, field): an option without a value that does more */
} cli_opt_kind;

/*
 * Store the option's value arg into field. Returns 0, or the exit status
 * after printing what is wrong (and the --help pointer where the command's
 * convention wants one).
 */
typedef int (*cli_opt_convert_fn)(const char *arg, void *field);

typedef struct cli_option {
    const char *long_name;      /* without "--", or NULL */
    int short_name;             /* the letter, or 0 */
    cli_opt_kind kind;          /* what it does */
    size_t offset;              /* of the field it sets in the argument struct */
    unsigned bits;              /* CLI_OPT_BITS: the bits it sets */
    cli_opt_convert_fn convert; /* CLI_OPT_CONVERT, CLI_OPT_CALL: how */
} cli_option;

/*
 * offsetof(T, field), which fails to compile unless the field has type
 * `type` (pointers to different types cannot be subtracted); never evaluated.
 */
#define CLI_FIELD(T, field, type) \
    (offsetof(T, field) + 0 * sizeof(&((T *)0)->field - (type *)0))

/* One table line each: long name, letter (0: none), argument struct, field. */
#define CLI_FLAG(lng, sht, T, field) {lng, sht, CLI_OPT_FLAG, CLI_FIELD(T, field, bool), 0, NULL}
#define CLI_STRING(lng, sht, T, field) \
    {lng, sht, CLI_OPT_STRING, CLI_FIELD(T, field, const char *), 0, NULL}
#define CLI_BITS(lng, sht, T, field, b) \
    {lng, sht, CLI_OPT_BITS, CLI_FIELD(T, field, unsigned), b, NULL}
#define CLI_CONVERT(lng, sht, T, field, fn) {lng, sht, CLI_OPT_CONVERT, offsetof(T, field), 0, fn}
#define CLI_CALL(lng, sht, T, field, fn) {lng, sht, CLI_OPT_CALL, offsetof(T, field), 0, fn}
#define CLI_OPTIONS_END {NULL, 0, CLI_OPT_FLAG, 0, 0, NULL}

/*
 * The operands of a command: at most max (0: no limit), and one message for
 * each operand that must be there, first to last, which also says how many
 * must: CLI_OPERANDS(2, "missing disk", "missing snapshot name").
 */
#define CLI_MISSING(...) ((const char *const[]){__VA_ARGS__})
#define CLI_OPERANDS(max, ...)                                                                     \
    .min_operands = (int)(sizeof(CLI_MISSING(__VA_ARGS__)) / sizeof(const char *)),               \
    .missing = CLI_MISSING(__VA_ARGS__), .max_operands = max

typedef struct cli_command {
    const char *prog;           /* "qsnap create", "qsnap image info": named in usage hints */
    const char *help;           /* printed by -h/--help, which then exits 0 */
    int usage_status;           /* exit status of a usage error (2 tree, 1 image) */
    const cli_option *options;  /* ends with CLI_OPTIONS_END */
    int min_operands;           /* fewer is a usage error ... */
    const char *const *missing; /* ... saying missing[n] when operand n is absent */
    int max_operands;           /* more (unless 0: no limit) is a usage error ... */
    const char *extra;          /* ... saying this, or NULL: "unexpected argument 'WORD'" */
} cli_command;

/* The operands of a command line, in order (pointers into its argv). */
typedef struct cli_operands {
    int n;
    char **v;
} cli_operands;

/*
 * Parse argv[1..argc) (argv[0] is the command's name) by cmd, setting the
 * fields of args (the command's argument struct, initialized by the caller).
 * Options are handled in the order given, so the first bad one is the one
 * reported. Returns true when the command should run, its operands in ops
 * (which may be appended to, up to argc - 1 in all); false when it should
 * return *status: 0 after --help, else after printing the error and, for
 * an unknown option or a wrong operand count, "Try 'PROG --help' ...".
 */
bool cli_cmd_parse(const cli_command *cmd, int argc, char **argv, void *args, cli_operands *ops,
                   int *status);

#endif /* QSNAP_CLI_OPT_H */
