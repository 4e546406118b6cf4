/*
 * Option parsing for every qsnap command (see opt.h). It keeps no global
 * state, so the io command can parse each of its command lines with it too.
 * Operands are compacted to the front of argv as they are met, which keeps
 * their order and needs no allocation.
 */
#include <stdio.h>
#include <string.h>

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
