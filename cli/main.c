/*
 * The qsnap program's entry point: the top-level command table, --help and
 * --version. `qsnap image ...` is dispatched to cmd_image.c; the snapshot
 * tree commands (create, list, ...) are announced but not implemented yet.
 */
#include <stdio.h>
#include <string.h>

#include <qcow2/qcow2.h>

#include "cli.h"
#include "cli_error.h"

static const char *const tree_commands[] = {
    "create", "list", "info",  "current", "revert", "switch", "branch",
    "delete", "commit", "diff", "du",     "why",    "export", "verify",
};

static void print_help(void)
{
    printf("Usage: qsnap COMMAND [ARGS]...\n"
           "\n"
           "Snapshot trees over qcow2 and raw disk images, without qemu-img or a daemon.\n"
           "\n"
           "Commands:\n"
           "  image COMMAND ...   plumbing commands that mirror qemu-img and qemu-io:\n"
           "                      info, map, convert, compare, digest, io\n"
           "                      (see 'qsnap image --help')\n"
           "\n"
           "Snapshot tree commands (create, list, info, current, revert, switch, branch,\n"
           "delete, commit, diff, du, why, export, verify) are not implemented yet.\n"
           "\n"
           "Options:\n"
           "  -h, --help          show this help and exit\n"
           "  -V, --version       show the version and exit\n"
           "\n"
           "Exit status: 0 ok, 1 error, 2 usage error; 'qsnap image' commands use\n"
           "qemu-img's exit statuses.\n");
}

int cli_usage_hint(const char *cmd, int status)
{
    fprintf(stderr, "Try '%s --help' for more information\n", cmd);
    return status;
}

int main(int argc, char **argv)
{
    size_t i;

    if (argc < 2) {
        cli_errorf("missing command");
        return cli_usage_hint("qsnap", CLI_EXIT_USAGE);
    }
    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "help") == 0) {
        print_help();
        return CLI_EXIT_OK;
    }
    if (strcmp(argv[1], "-V") == 0 || strcmp(argv[1], "--version") == 0) {
        unsigned v = qcow2_version_number();

        printf("qsnap %s (libqcow2 %u.%u.%u)\n", QCOW2_VERSION_STRING, v / 10000, v / 100 % 100,
               v % 100);
        return CLI_EXIT_OK;
    }
    if (strcmp(argv[1], "image") == 0)
        return cli_image_main(argc - 1, argv + 1);
    for (i = 0; i < sizeof(tree_commands) / sizeof(tree_commands[0]); i++) {
        if (strcmp(argv[1], tree_commands[i]) == 0) {
            cli_errorf("'%s' is not implemented yet", argv[1]);
            return CLI_EXIT_USAGE;
        }
    }
    if (argv[1][0] == '-')
        cli_errorf("unrecognized option '%s'", argv[1]);
    else
        cli_errorf("unknown command '%s'", argv[1]);
    return cli_usage_hint("qsnap", CLI_EXIT_USAGE);
}
