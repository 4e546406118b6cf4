/*
 * qsnap adopt and qsnap libvirt-xml: the way in from a backing chain that
 * libvirt or qemu-img made, and the way back to libvirt. The logic is
 * libqsnap's (qsnap/libvirt.h); this file parses, writes files and prints.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <qsnap/libvirt.h>
#include <qsnap/qsnap.h>

#include "cli.h"
#include "cli_error.h"
#include "opt.h"
#include "tree.h"

/* ---- adopt ------------------------------------------------------------------ */

static const char adopt_help[] =
    "Usage: qsnap adopt IMAGE [--libvirt-snapshots DIR] [--dry-run] [--json]\n"
    "\n"
    "Take over the backing chain whose top is IMAGE (the file the VM uses), as\n"
    "libvirt's disk-only snapshots, 'qemu-img create -b' or a person made it. The\n"
    "bottom file (raw or qcow2) becomes the DISK and stays where it is; its store\n"
    "is made beside it (DISK.qsnap/). Every overlay is moved into the store and its\n"
    "backing link made relative; every file below the top becomes a snapshot and\n"
    "the top becomes the head of branch main: the VM must then use the path\n"
    "'qsnap current DISK --path' prints. Internal snapshots inside any file become\n"
    "internal snapshots of the tree. No guest data is copied.\n"
    "\n"
    "Refused, with nothing changed: a file of the chain in use by a running QEMU,\n"
    "a chain that loops or already belongs to a store, a file the tree cannot hold\n"
    "(a hard link, another file system than the bottom's, a dirty image).\n"
    "\n"
    "Options:\n"
    "      --libvirt-snapshots=DIR  libvirt's snapshot directory of the domain\n"
    "                       (/var/lib/libvirt/qemu/snapshot/DOM): snapshots take\n"
    "                       libvirt's names, descriptions and creation times\n"
    "  -n, --dry-run        print the plan (the file steps) and change nothing\n"
    "      --json           print the plan as JSON\n"
    "  -h, --help           show this help and exit\n"
    "\n" TREE_EXIT_HELP;

struct adopt_args {
    qsnap_adopt_opts ao;
    bool dry_run, json;
};

static const cli_command adopt_cmd = {
    .prog = "qsnap adopt",
    .help = adopt_help,
    .usage_status = CLI_EXIT_USAGE,
    .options = (const cli_option[]){
        CLI_STRING("libvirt-snapshots", 0, struct adopt_args, ao.libvirt_snapshots),
        CLI_FLAG("dry-run", 'n', struct adopt_args, dry_run),
        CLI_FLAG("json", 0, struct adopt_args, json),
        CLI_OPTIONS_END,
    },
    CLI_OPERANDS(1, "missing image"),
};

int cli_tree_adopt(int argc, char **argv)
{
    struct adopt_args a = {QSNAP_ADOPT_OPTS_INIT, false, false};
    bool dry_run, json;
    qsnap_store *s = NULL;
    qsnap_plan *plan = NULL;
    cli_operands op;
    char *disk;
    int rc, status;

    if (!cli_cmd_parse(&adopt_cmd, argc, argv, &a, &op, &status))
        return status;
    dry_run = a.dry_run;
    json = a.json;
    rc = qsnap_plan_adopt(&plan, &s, op.v[0], &a.ao);
    if (rc < 0)
        return tree_fail(rc, op.v[0]);
    disk = tree_disk_of(s);
    status = tree_run_plan(s, plan, disk ? disk : op.v[0], dry_run, json);
    if (status == CLI_EXIT_OK && !dry_run && !json) {
        /* The file the VM used is gone: say which one it must use now. */
        char *vm = NULL;
        if (qsnap_vm_path(s, &vm) == 0)
            printf("the VM must now use %s ('qsnap current %s --path')\n", vm,
                   disk ? disk : "DISK");
        free(vm);
    }
    free(disk);
    qsnap_store_close(s);
    return status;
}

/* ---- libvirt-xml ------------------------------------------------------------ */

static const char libvirt_xml_help[] =
    "Usage: qsnap libvirt-xml DISK --domain DOMAIN.xml [--out DIR] [--target DEV]\n"
    "                         [--json]\n"
    "\n"
    "Write the tree's named snapshots as libvirt domainsnapshot documents, one per\n"
    "snapshot, parents first, as DIR/NNN-NAME.xml, for 'virsh snapshot-create DOM\n"
    "FILE --redefine' in that order (--current on the current branch's snapshot).\n"
    "Each names its layer as the disk image it froze and the overlay made on it\n"
    "as its external disk, inside the domain of DOMAIN.xml ('virsh dumpxml DOM').\n"
    "Also writes DIR/domain.xml: DOMAIN.xml with the disk on the image a VM must\n"
    "use ('qsnap current DISK --path'). Prints the virsh commands that register\n"
    "the snapshots and the change the domain needs.\n"
    "\n"
    "Options:\n"
    "      --domain=FILE    the domain's XML (required)\n"
    "      --out=DIR        where the documents go (default: the current\n"
    "                       directory; made if missing)\n"
    "      --target=DEV     the domain's disk (vda, ...) that is this DISK\n"
    "                       (default: the disk using a file of the store, or the\n"
    "                       only disk)\n"
    "      --json           print what was written and the commands as JSON\n"
    "  -h, --help           show this help and exit\n"
    "\n" TREE_EXIT_HELP;

/* Write data to dir/name (replaced); prints the error. */
static int write_file(const char *dir, const char *name, const char *data, char **path_out)
{
    char *path = NULL;
    FILE *f;
    size_t len = strlen(data);

    *path_out = NULL;
    if (asprintf(&path, "%s/%s", dir, name) < 0)
        return -1;
    f = fopen(path, "we");
    if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
        fprintf(stderr, "qsnap: %s: cannot write: %s\n", path, strerror(errno));
        free(path);
        return -1;
    }
    *path_out = path;
    return 0;
}

/* A word for a shell: quoted when it holds anything but safe characters. */
static void put_shell_word(FILE *out, const char *w)
{
    bool plain = w[0] != '\0';

    for (const char *c = w; *c && plain; c++)
        plain = strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/+:@=,",
                       *c) != NULL;
    if (plain) {
        fputs(w, out);
        return;
    }
    fputc('\'', out);
    for (const char *c = w; *c; c++) {
        if (*c == '\'')
            fputs("'\\''", out);
        else
            fputc(*c, out);
    }
    fputc('\'', out);
}

static char *command_for(const char *domain, const char *path, bool current)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);

    if (!f)
        return NULL;
    fputs("virsh snapshot-create ", f);
    put_shell_word(f, domain);
    fputc(' ', f);
    put_shell_word(f, path);
    fputs(current ? " --redefine --current" : " --redefine", f);
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

struct libvirt_xml_args {
    const char *domain, *out_dir, *target;
    bool json;
};

static const cli_command libvirt_xml_cmd = {
    .prog = "qsnap libvirt-xml",
    .help = libvirt_xml_help,
    .usage_status = CLI_EXIT_USAGE,
    .options = (const cli_option[]){
        CLI_STRING("domain", 0, struct libvirt_xml_args, domain),
        CLI_STRING("out", 0, struct libvirt_xml_args, out_dir),
        CLI_STRING("target", 0, struct libvirt_xml_args, target),
        CLI_FLAG("json", 0, struct libvirt_xml_args, json),
        CLI_OPTIONS_END,
    },
    CLI_OPERANDS(1, "missing disk"),
};

int cli_tree_libvirt_xml(int argc, char **argv)
{
    struct libvirt_xml_args a = {NULL, ".", NULL, false};
    const char *domain, *out_dir;
    qsnap_libvirt_xml *x = NULL;
    qsnap_store *s = NULL;
    char **paths = NULL, *dom_path = NULL;
    bool json;
    cli_operands op;
    struct stat st;
    int rc, status = CLI_EXIT_OK;

    if (!cli_cmd_parse(&libvirt_xml_cmd, argc, argv, &a, &op, &status))
        return status;
    domain = a.domain;
    out_dir = a.out_dir;
    json = a.json;
    if (!domain)
        return tree_usage("libvirt-xml", "--domain DOMAIN.xml is required");
    /* The documents in a store directory would be files its commands refuse. */
    status = tree_refuse_in_store(out_dir, "write the documents outside the store directory "
                                           "(--out DIR)");
    if (status)
        return status;
    status = tree_open(&s, op.v[0], QSNAP_OPEN_READONLY);
    if (status)
        return status;
    rc = qsnap_libvirt_xml_make(&x, s, domain, a.target);
    if (rc < 0) {
        status = tree_fail(rc, op.v[0]);
        goto out;
    }
    if (mkdir(out_dir, 0777) < 0 && errno != EEXIST) {
        fprintf(stderr, "qsnap: %s: cannot make directory: %s\n", out_dir, strerror(errno));
        status = CLI_EXIT_ERROR;
        goto out;
    }
    if (stat(out_dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "qsnap: %s: not a directory\n", out_dir);
        status = CLI_EXIT_ERROR;
        goto out;
    }
    paths = calloc(x->n + 1, sizeof(*paths));
    if (!paths) {
        status = CLI_EXIT_ERROR;
        goto out;
    }
    for (size_t i = 0; i < x->n && !status; i++) {
        if (write_file(out_dir, x->docs[i].file, x->docs[i].xml, &paths[i]) < 0)
            status = CLI_EXIT_ERROR;
    }
    if (!status && write_file(out_dir, "domain.xml", x->domain_xml, &dom_path) < 0)
        status = CLI_EXIT_ERROR;
    if (status)
        goto out;
    if (json) {
        cli_json j;
        cli_json_init(&j, stdout);
        cli_json_begin_object(&j, NULL);
        cli_json_uint(&j, "version", 1);
        cli_json_string(&j, "domain", x->domain);
        cli_json_string(&j, "target", x->target);
        cli_json_string(&j, "old-source", x->old_source);
        cli_json_string(&j, "new-source", x->new_source);
        cli_json_string(&j, "domain-xml", dom_path);
        cli_json_begin_array(&j, "snapshots");
        for (size_t i = 0; i < x->n; i++) {
            char *cmd = command_for(x->domain, paths[i], x->docs[i].current);
            cli_json_begin_object(&j, NULL);
            cli_json_string(&j, "name", x->docs[i].name);
            cli_json_string(&j, "file", paths[i]);
            cli_json_bool(&j, "current", x->docs[i].current);
            cli_json_string(&j, "command", cmd ? cmd : "");
            cli_json_end_object(&j);
            free(cmd);
        }
        cli_json_end_array(&j);
        cli_json_end_object(&j);
        cli_json_finish(&j);
    } else {
        printf("wrote %zu snapshot document%s to %s; register them in this order:\n", x->n,
               x->n == 1 ? "" : "s", out_dir);
        for (size_t i = 0; i < x->n; i++) {
            char *cmd = command_for(x->domain, paths[i], x->docs[i].current);
            printf("  %s\n", cmd ? cmd : "?");
            free(cmd);
        }
        if (x->old_source && !strcmp(x->old_source, x->new_source)) {
            /* A domain defined from an earlier domain.xml: nothing to point. */
            printf("the domain's disk %s is on the store's current image already:\n", x->target);
            printf("  <source file='%s'/>  (%s is the same domain)\n", x->new_source, dom_path);
        } else {
            printf("then point the domain's disk %s at the store's current image:\n", x->target);
            printf("  <source file='%s'/>  (was '%s'), driver type qcow2\n", x->new_source,
                   x->old_source);
            printf("  %s is the domain with that one change:  virsh define ", dom_path);
            put_shell_word(stdout, dom_path);
            printf("\n");
        }
        /* --redefine adds and replaces; it never drops what libvirt knew before. */
        printf("libvirt keeps snapshots these documents do not name (deleted or renamed in qsnap "
               "since):\n  virsh snapshot-list ");
        put_shell_word(stdout, x->domain);
        printf("  shows them; drop each with  virsh snapshot-delete ");
        put_shell_word(stdout, x->domain);
        printf(" NAME --metadata\n");
    }
out:
    for (size_t i = 0; paths && x && i < x->n; i++)
        free(paths[i]);
    free(paths);
    free(dom_path);
    qsnap_libvirt_xml_free(x);
    qsnap_store_close(s);
    return status;
}
