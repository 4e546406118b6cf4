/*
 * Option parsing for every qsnap command (see opt.h). It keeps no global
 * state, so the io command can parse each of its command lines with it too.
 * Operands are compacted to the front of argv as they are met, which keeps
 * their order and needs no allocation. cli_cmd_parse() at the end reads a
 * command line by the command's table with it.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "cli_error.h"
#include "opt.h"

void cli_opt_init(cli_opt_parser *p, int argc, char **argv, const cli_opt_def *defs)
{
    memset(p, 0, sizeof(*p));
    p->argc = argc;
    p->argv = argv;
    p->defs = defs;
    p->prog = "qsnap";
}

static const cli_opt_def *find_short(const cli_opt_def *defs, int c)
{
    for (; defs->key; defs++)
        if (defs->key == c && c < CLI_OPT_LONG_BASE)
            return defs;
    return NULL;
}

static const cli_opt_def *find_long(const cli_opt_def *defs, const char *name, size_t len)
{
    for (; defs->key; defs++)
        if (defs->long_name && strlen(defs->long_name) == len &&
            memcmp(defs->long_name, name, len) == 0)
            return defs;
    return NULL;
}

static int parse_long(cli_opt_parser *p, const char *word)
{
    const char *name = word + 2;
    const char *eq = strchr(name, '=');
    size_t len = eq ? (size_t)(eq - name) : strlen(name);
    const cli_opt_def *d = find_long(p->defs, name, len);

    if (!d) {
        fprintf(stderr, "%s: unrecognized option '%s'\n", p->prog, word);
        return -1;
    }
    if (!d->has_arg) {
        if (eq) {
            fprintf(stderr, "%s: option '--%s' doesn't allow an argument\n", p->prog,
                    d->long_name);
            return -1;
        }
        return d->key;
    }
    if (eq) {
        p->arg = eq + 1;
    } else if (p->next < p->argc) {
        p->arg = p->argv[p->next++];
    } else {
        fprintf(stderr, "%s: option '--%s' requires an argument\n", p->prog, d->long_name);
        return -1;
    }
    return d->key;
}

static int parse_short(cli_opt_parser *p)
{
    int c = (unsigned char)*p->cluster++;
    const cli_opt_def *d = find_short(p->defs, c);

    if (!d) {
        fprintf(stderr, "%s: invalid option -- '%c'\n", p->prog, c);
        p->cluster = NULL;
        return -1;
    }
    if (!d->has_arg) {
        if (!*p->cluster)
            p->cluster = NULL;
        return d->key;
    }
    if (*p->cluster) {
        p->arg = p->cluster;
    } else if (p->next < p->argc) {
        p->arg = p->argv[p->next++];
    } else {
        fprintf(stderr, "%s: option requires an argument -- '%c'\n", p->prog, c);
        p->cluster = NULL;
        return -1;
    }
    p->cluster = NULL;
    return d->key;
}

int cli_opt_next(cli_opt_parser *p)
{
    p->arg = NULL;
    if (p->cluster)
        return parse_short(p);
    while (p->next < p->argc) {
        char *word = p->argv[p->next++];

        if (p->done || word[0] != '-' || word[1] == '\0') {
            p->argv[p->nb_operands++] = word;
            continue;
        }
        if (strcmp(word, "--") == 0) {
            p->done = true;
            continue;
        }
        if (word[1] == '-')
            return parse_long(p, word);
        p->cluster = word + 1;
        return parse_short(p);
    }
    return 0;
}

/* ---- a command line by its table --------------------------------------------- */

/* Options a command may declare (-h/--help aside); image convert has 12. */
#define CLI_CMD_MAX_OPTIONS 31

/* Store what option o says into args; 0, or the exit status after an error. */
static int apply_option(const cli_option *o, const char *arg, void *args)
{
    void *field = (char *)args + o->offset;

    switch (o->kind) {
    case CLI_OPT_FLAG:
        *(bool *)field = true;
        return 0;
    case CLI_OPT_STRING:
        *(const char **)field = arg;
        return 0;
    case CLI_OPT_BITS:
        *(unsigned *)field |= o->bits;
        return 0;
    case CLI_OPT_CONVERT:
    case CLI_OPT_CALL:
        return o->convert(arg, field);
    }
    return 0;
}

bool cli_cmd_parse(const cli_command *cmd, int argc, char **argv, void *args, cli_operands *ops,
                   int *status)
{
    cli_opt_def defs[CLI_CMD_MAX_OPTIONS + 2]; /* help, the table's options, the end */
    const cli_option *opts = cmd->options;
    cli_opt_parser p;
    int c, i, n;

    /* The table as cli_opt_next() wants it: opts[i] is defs[i + 1]. */
    defs[0] = (cli_opt_def){"help", 'h', false};
    for (n = 0; opts[n].long_name || opts[n].short_name; n++) {
        if (n == CLI_CMD_MAX_OPTIONS) {
            cli_errorf("%s: too many options in its table", cmd->prog);
            *status = 1;
            return false;
        }
        defs[n + 1] = (cli_opt_def){
            opts[n].long_name, opts[n].short_name ? opts[n].short_name : CLI_OPT_LONG_BASE + n,
            opts[n].kind == CLI_OPT_STRING || opts[n].kind == CLI_OPT_CONVERT};
    }
    defs[n + 1] = (cli_opt_def){NULL, 0, false};

    cli_opt_init(&p, argc - 1, argv + 1, defs);
    while ((c = cli_opt_next(&p)) != 0) {
        if (c < 0) {
            *status = cli_usage_hint(cmd->prog, cmd->usage_status);
            return false;
        }
        if (c == 'h') {
            fputs(cmd->help, stdout);
            *status = 0;
            return false;
        }
        for (i = 0; defs[i + 1].key != c; i++)
            ;
        *status = apply_option(&opts[i], p.arg, args);
        if (*status)
            return false;
    }
    ops->n = p.nb_operands;
    ops->v = p.argv;
    if (ops->n < cmd->min_operands) {
        cli_errorf("%s", cmd->missing[ops->n]);
        *status = cli_usage_hint(cmd->prog, cmd->usage_status);
        return false;
    }
    if (cmd->max_operands > 0 && ops->n > cmd->max_operands) {
        if (cmd->extra)
            cli_errorf("%s", cmd->extra);
        else
            cli_errorf("unexpected argument '%s'", ops->v[cmd->max_operands]);
        *status = cli_usage_hint(cmd->prog, cmd->usage_status);
        return false;
    }
    return true;
}
