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

#endif /* QSNAP_CLI_OPT_H */
