/*
 * The qsnap program's entry point: the top-level command table, --help and
 * --version. `qsnap image ...` is dispatched to cmd_image.c, the snapshot
 * tree commands (create, list, ...) to cmd_tree.c.
 */
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <qcow2/qcow2.h>

#include "cli.h"
#include "cli_error.h"

static void print_help(void)
{
    printf("Usage: qsnap COMMAND DISK [ARGS]...\n"
           "       qsnap image COMMAND [ARGS]...\n"
           "\n"
           "Snapshot trees over qcow2 and raw disk images, without qemu-img or a daemon.\n"
           "The tree of a disk lives in a store beside it (DISK.qsnap/).\n"
           "\n"
           "Snapshot tree commands:\n");
    cli_tree_print_commands();
    printf("\n"
           "Plumbing:\n"
           "  image COMMAND ...   commands that mirror qemu-img and qemu-io: info, map,\n"
           "                      convert, compare, digest, io, ... (see 'qsnap image --help')\n"
           "\n"
           "Options:\n"
           "  -h, --help          show this help and exit\n"
           "  -V, --version       show the version and exit\n"
           "\n"
           "Run 'qsnap COMMAND --help' for the options of a command.\n"
           "\n"
           "Exit status of the tree commands: 0 ok, 1 error, 2 usage error, 3 refused as\n"
           "unsafe, 4 integrity problem found, 5 locked or in use, 6 not found.\n"
           "'qsnap image' commands use qemu-img's exit statuses.\n");
}

/*
 * A short tree command reads the whole metadata into memory: about 5 MB in
 * a few thousand small blocks at 10,000 snapshots, where faulting the heap in
 * page by page cost more CPU than parsing it. So the heap is made once, big
 * enough and kept (no trimming, no mmap per large block), and the kernel is
 * asked to back it with huge pages where it can (transparent huge pages in
 * madvise mode); memory is still taken as it is touched, in 2 MiB pieces. The
 * heap is made to go on from a 2 MiB boundary (below): where it did not, the
 * model's first megabyte or so lay in 4 KiB pages, each a fault of its own,
 * and `current` at 10,000 snapshots took 270-390 faults and 8-9 ms of CPU
 * instead of 56 and under 5. Best effort: nothing changes where the calls
 * fail. Not for the long-running commands (serve, mount), which keep the
 * default heap.
 */
#define HEAP_PAD (32u << 20)
static void heap_for_short_command(void)
{
    const uintptr_t huge = 2u << 20;
    static void *fill; /* kept to the exit */
    uintptr_t from, to, at;
    void *p;

    if (!mallopt(M_MMAP_THRESHOLD, HEAP_PAD) || !mallopt(M_TRIM_THRESHOLD, 2 * HEAP_PAD) ||
        !mallopt(M_TOP_PAD, HEAP_PAD))
        return;
    /* The heap goes on from about where a small block lands now. The pages before the
     * next 2 MiB boundary were touched by the C library's start and stay 4 KiB pages
     * (each a fault of its own, at 10,000 snapshots a few hundred of them): a block that
     * is never used (and never touched past its header) fills them, so the command's
     * memory starts on the boundary, in huge pages from its first byte. */
    p = malloc(1);
    at = (uintptr_t)p;
    if (p && ((at + huge - 1) & ~(huge - 1)) - at > 4096) {
        fill = malloc(((at + huge - 1) & ~(huge - 1)) - at - 64);
        if (!fill) {
            free(p);
            return;
        }
    }
    free(p);
    p = malloc(HEAP_PAD / 2); /* the heap grows by this and the pad now */
    from = ((uintptr_t)p + huge - 1) & ~(huge - 1);
    to = (uintptr_t)sbrk(0) & ~(huge - 1);
    /* Only when the block is in the heap that just grew (not under a sanitizer's allocator). */
    if (p && to > from && to - (uintptr_t)p <= 2 * HEAP_PAD)
        (void)madvise((void *)from, to - from, MADV_HUGEPAGE);
    free(p);
}

int cli_usage_hint(const char *cmd, int status)
{
    fprintf(stderr, "Try '%s --help' for more information\n", cmd);
    return status;
}

int main(int argc, char **argv)
{
    cli_cmd_fn tree_cmd;

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
    tree_cmd = cli_tree_lookup(argv[1]);
    if (tree_cmd) {
        if (strcmp(argv[1], "serve") && strcmp(argv[1], "mount"))
            heap_for_short_command();
        return tree_cmd(argc - 1, argv + 1);
    }
    if (argv[1][0] == '-')
        cli_errorf("unrecognized option '%s'", argv[1]);
    else
        cli_errorf("unknown command '%s'", argv[1]);
    return cli_usage_hint("qsnap", CLI_EXIT_USAGE);
}
