/*
 * qsnap's snapshot tree commands that change files: create, revert, switch,
 * branch, delete and commit, plus the table of all tree commands that
 * main.c dispatches through and the helpers they share (errors with hints,
 * opening a store, running a plan). Every change is a libqsnap plan: with
 * --dry-run it is described (text or JSON) and nothing changes; otherwise it
 * is executed and its summary line printed. The tree logic is the library's;
 * this file parses and prints.
 */
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <qsnap/qsnap.h>

#include "cli.h"
#include "cli_error.h"
#include "opt.h"
#include "progress.h"
#include "serve.h"
#include "tree.h"


/* ---- shared helpers ---------------------------------------------------------- */

int tree_fail(int rc, const char *disk)
{
    const qsnap_error *e = qsnap_error_last();
    const char *msg = e->code == rc && e->message && e->message[0] ? e->message : NULL;
    const char *hint = e->code == rc && e->hint ? e->hint : "";

    fprintf(stderr, "qsnap: %s\n", msg ? msg : "operation failed");
    if (hint[0]) {
        const char *w = disk ? strstr(hint, "DISK") : NULL;

        /* The library's hints say DISK; show the disk the user named instead. */
        fputs("qsnap: hint: ", stderr);
        while (w) {
            fwrite(hint, 1, (size_t)(w - hint), stderr);
            fputs(disk, stderr);
            hint = w + 4;
            w = strstr(hint, "DISK");
        }
        fprintf(stderr, "%s\n", hint);
    }
    if (rc >= QSNAP_ENOTFOUND && rc < 0)
        return -rc;
    return CLI_EXIT_ERROR;
}

int tree_usage(const char *cmd, const char *fmt, ...)
{
    char prog[64];
    va_list ap;

    va_start(ap, fmt);
    fputs("qsnap: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    snprintf(prog, sizeof(prog), "qsnap %s", cmd);
    return cli_usage_hint(prog, CLI_EXIT_USAGE);
}

int tree_open(qsnap_store **out, const char *disk, unsigned flags)
{
    int rc = qsnap_store_open(out, disk, flags);

    return rc < 0 ? tree_fail(rc, disk) : 0;
}

const char *tree_kind_name(qsnap_kind k)
{
    switch (k) {
    case QSNAP_SNAPSHOT:
        return "snapshot";
    case QSNAP_UNNAMED:
        return "unnamed";
    case QSNAP_BRANCH:
        return "branch";
    }
    return "?";
}

const char *tree_fmt_time(long long t, char buf[32])
{
    time_t tt = (time_t)t;
    struct tm tm;

    if (!localtime_r(&tt, &tm) || strftime(buf, 32, "%Y-%m-%d %H:%M:%S", &tm) == 0)
        snprintf(buf, 32, "%lld", t);
    return buf;
}

void tree_put_text(FILE *out, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f) {
            fprintf(out, "\\x%02x", c);
        } else if (c == 0xc2 && i + 1 < n && (unsigned char)s[i + 1] >= 0x80 &&
                   (unsigned char)s[i + 1] <= 0x9f) {
            /* A C1 control in UTF-8 (U+0080 to U+009F: CSI is U+009B). */
            fprintf(out, "\\xc2\\x%02x", (unsigned char)s[++i]);
        } else {
            fputc(c, out);
        }
    }
}

int tree_refuse_in_store(const char *path, const char *hint)
{
    qsnap_file_kind kind;
    char *dir = NULL;

    /* An error here (a layer that cannot be told) still says the path is in a store. */
    qsnap_file_kind_of(path, &kind, &dir);
    if (kind == QSNAP_FILE_NONE)
        return 0;
    fprintf(stderr, "qsnap: %s: refused: %s %s, whose files only qsnap's tree commands write "
                    "(nothing was changed)\n",
            path, kind == QSNAP_FILE_STORE ? "inside the store directory" : "a file of the store",
            dir ? dir : "");
    fprintf(stderr, "qsnap: hint: %s\n", hint);
    free(dir);
    return CLI_EXIT_UNSAFE;
}

char *tree_disk_of(const qsnap_store *s)
{
    const char *dir = qsnap_store_path(s);
    size_t len = strlen(dir);
    char *d;

    if (len > 6 && strcmp(dir + len - 6, ".qsnap") == 0)
        len -= 6;
    d = malloc(len + 1);
    if (d) {
        memcpy(d, dir, len);
        d[len] = '\0';
    }
    return d;
}

void tree_json_null(cli_json *j, const char *key)
{
    /* The separator and indentation as json.c lays out every member. */
    if (j->depth > 0) {
        fputs(j->has_items[j->depth] ? ",\n" : "\n", j->out);
        j->has_items[j->depth] = true;
        fprintf(j->out, "%*s", 4 * j->depth, "");
    }
    if (key) {
        cli_json_write_string(j->out, key);
        fputs(": ", j->out);
    }
    fputs("null", j->out);
}

/* ---- running a plan ---------------------------------------------------------- */

/* What a plan run shares with the library's callbacks. */
struct run_ctx {
    cli_progress pr;    /* the progress display (a bar on a terminal only) */
    unsigned kill_at;   /* QSNAP_TEST_KILL_AT, or 0 */
    unsigned stop_at;   /* QSNAP_TEST_STOP_AT, or 0 */
};

/* Progress of the steps that copy data; a new step starting from 0 restarts the bar. */
static void run_progress(uint64_t done, uint64_t total, void *payload)
{
    struct run_ctx *c = payload;

    cli_progress_update(done, total, &c->pr);
}

/*
 * Crash tests only: with QSNAP_TEST_KILL_AT=N in the environment the process
 * kills itself with SIGKILL right after step N of the plan, as a power cut
 * would stop it; `qsnap verify --repair` must then finish the operation.
 * QSNAP_TEST_STOP_AT=N stops it (SIGSTOP) there instead, with the locks of
 * the files it touches held, until a SIGCONT: tests start a QEMU meanwhile.
 * Deliberately not in --help.
 */
static void run_step_hook(unsigned step, void *payload)
{
    const struct run_ctx *c = payload;

    if (c->kill_at && step == c->kill_at)
        raise(SIGKILL);
    if (c->stop_at && step == c->stop_at)
        raise(SIGSTOP);
}

/*
 * SIGINT, SIGTERM or SIGHUP while a plan runs: the operation stops where it is,
 * with its journal, as a crash would leave it (the library never undoes from a
 * signal handler). Before dying of the signal, one line says so and names the
 * way out; the text is made before the run, so the handler only writes it.
 */
static char interrupt_done[PATH_MAX + 256], interrupt_none[PATH_MAX + 256];
static char interrupt_journal[PATH_MAX];
static size_t interrupt_done_len, interrupt_none_len;

static void on_interrupt(int sig)
{
    /* access() and write() are safe in a handler: the journal says whether a step began
     * (a journal path that could not be made: said unfinished, the safe side). */
    bool begun = !interrupt_journal[0] || access(interrupt_journal, F_OK) == 0;
    size_t len = begun ? interrupt_done_len : interrupt_none_len;

    if (len && write(STDERR_FILENO, begun ? interrupt_done : interrupt_none, len) < 0)
        len = 0;
    signal(sig, SIG_DFL);
    raise(sig);
}

static void interrupt_catch(const qsnap_store *s, const char *disk, bool on)
{
    static const int sigs[] = {SIGINT, SIGTERM, SIGHUP};
    const char *nl = isatty(STDERR_FILENO) ? "\n" : "";
    int n;

    if (on) {
        n = snprintf(interrupt_done, sizeof(interrupt_done),
                     "%sqsnap: %s: interrupted: the operation is unfinished; 'qsnap verify %s "
                     "--repair' finishes it\n",
                     nl, disk, disk);
        interrupt_done_len = n > 0 && (size_t)n < sizeof(interrupt_done) ? (size_t)n : 0;
        n = snprintf(interrupt_none, sizeof(interrupt_none),
                     "%sqsnap: %s: interrupted; no operation is left unfinished ('qsnap list "
                     "%s' shows the tree)\n",
                     nl, disk, disk);
        interrupt_none_len = n > 0 && (size_t)n < sizeof(interrupt_none) ? (size_t)n : 0;
        n = snprintf(interrupt_journal, sizeof(interrupt_journal), "%s/journal",
                     qsnap_store_path(s));
        if (n < 0 || (size_t)n >= sizeof(interrupt_journal))
            interrupt_journal[0] = '\0';
    }
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
        struct sigaction sa, old;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on ? on_interrupt : SIG_DFL;
        sigemptyset(&sa.sa_mask);
        for (size_t k = 0; k < sizeof(sigs) / sizeof(sigs[0]); k++)
            sigaddset(&sa.sa_mask, sigs[k]); /* one line, whatever comes next */
        /* A signal the caller ignores (nohup) stays ignored. */
        if (sigaction(sigs[i], NULL, &old) == 0 && old.sa_handler == SIG_IGN)
            continue;
        sigaction(sigs[i], &sa, NULL);
    }
}

/* How a plan run shows the progress of steps that copy data. */
enum run_progress_mode {
    PROGRESS_OFF,   /* never (the plan copies nothing) */
    PROGRESS_AUTO,  /* a bar on a terminal once a copy has run for a second */
    PROGRESS_FORCED /* -p: from the start, and off a terminal as qemu-img's line */
};

/* A short command's plan and store are left to the process's exit (tree.h). */
void tree_done(qsnap_store *s)
{
    if (TREE_FREE_AT_END)
        qsnap_store_close(s);
}

/*
 * Describe plan p (dry_run) or execute it and print its summary; with json,
 * the plan as JSON in both cases (and no progress display). progress: how
 * steps that copy data show their progress. Frees p when free_plan. Returns
 * the exit status.
 */
static int run_plan_ex(qsnap_store *s, qsnap_plan *p, const char *disk, bool dry_run, bool json,
                       enum run_progress_mode progress, bool free_plan)
{
    qsnap_exec_opts eo = QSNAP_EXEC_OPTS_INIT;
    struct run_ctx c;
    const char *kill_at = getenv("QSNAP_TEST_KILL_AT"), *stop_at = getenv("QSNAP_TEST_STOP_AT");
    char *text = NULL;
    int rc = 0, busy = 0, status = CLI_EXIT_OK;

    memset(&c, 0, sizeof(c));
    if (!dry_run) {
        /* See progress.h: where the display goes and when it appears. */
        cli_progress_begin(&c.pr, progress == PROGRESS_FORCED, progress != PROGRESS_OFF && !json);
        c.kill_at = kill_at ? (unsigned)strtoul(kill_at, NULL, 10) : 0;
        c.stop_at = stop_at ? (unsigned)strtoul(stop_at, NULL, 10) : 0;
        eo.progress = run_progress;
        eo.step_hook = run_step_hook;
        eo.payload = &c;
        interrupt_catch(s, disk, true);
        rc = qsnap_plan_execute(s, p, &eo);
        interrupt_catch(s, disk, false);
        if (rc < 0)
            cli_progress_abort(&c.pr);
        else
            cli_progress_end(&c.pr);
        if (rc < 0) {
            status = tree_fail(rc, disk);
            goto out;
        }
    }
    if (dry_run) {
        /* Which files the plan touches and which are held: the plan is shown and
         * then what the real run would refuse (a held file: exit 5; a file in
         * layers/ that qsnap did not make: exit 4), with the same exit status. */
        busy = qsnap_plan_check(s, p);
        if (busy < 0 && busy != QSNAP_EBUSY && busy != QSNAP_EINTEGRITY) {
            status = tree_fail(busy, disk);
            goto out;
        }
    }
    if (dry_run || json) {
        rc = qsnap_plan_describe(p, json, &text);
        if (rc < 0) {
            status = tree_fail(rc, disk);
            goto out;
        }
        fputs(text, stdout);
        free(text);
        if (busy < 0) {
            fflush(stdout);
            status = tree_fail(busy, disk);
        }
    } else {
        printf("%s\n", qsnap_plan_summary(p));
    }
out:
    if (free_plan)
        qsnap_plan_free(p);
    return status;
}

int tree_run_plan(qsnap_store *s, qsnap_plan *p, const char *disk, bool dry_run, bool json)
{
    return run_plan_ex(s, p, disk, dry_run, json, PROGRESS_OFF, true);
}

/* Open, build a plan with make() and run it; make's own failure is printed. */
typedef int (*plan_fn)(qsnap_plan **out, qsnap_store *s, void *args);

static int plan_and_run(const char *disk, unsigned open_flags, plan_fn make, void *args,
                        bool dry_run, bool json, enum run_progress_mode progress)
{
    qsnap_store *s;
    qsnap_plan *p = NULL;
    int rc, status = tree_open(&s, disk, open_flags);

    if (status)
        return status;
    rc = make(&p, s, args);
    if (rc < 0)
        status = tree_fail(rc, disk);
    else
        status = run_plan_ex(s, p, disk, dry_run, json, progress, TREE_FREE_AT_END);
    tree_done(s);
    return status;
}


/* ---- create ------------------------------------------------------------------ */

static const char create_help[] =
    "Usage: qsnap create DISK [NAME] [-m DESCRIPTION] [--state FILE] [--internal]\n"
    "                    [--dry-run] [--json]\n"
    "\n"
    "Take a snapshot of the current branch: its head is frozen as the snapshot and\n"
    "the branch goes on in a new, empty overlay. The first call on a disk sets up\n"
    "the store beside it (DISK.qsnap/) with one branch, main; the disk itself\n"
    "becomes the first snapshot and is never written again: the first call prints\n"
    "the path the VM must use from then on ('qsnap current DISK --path'). Without\n"
    "NAME a name is generated. No disk data is copied.\n"
    "\n"
    "Options:\n"
    "  -m, --message=TEXT   a description of the snapshot\n"
    "      --state=FILE     attach FILE (a saved VM state, say) to the snapshot: the\n"
    "                       store keeps its own read-only copy (sharing FILE's\n"
    "                       blocks where the file system can), so a later save\n"
    "                       to FILE changes no snapshot\n"
    "      --internal       record an internal snapshot (the qcow2 snapshot table)\n"
    "                       of the head instead: the head is not frozen and stays\n"
    "                       the branch's head; revert applies it in place\n"
    "  -n, --dry-run        print the plan (the file steps) and change nothing\n"
    "      --json           print the plan as JSON\n"
    "  -h, --help           show this help and exit\n"
    "\n" TREE_EXIT_HELP;

struct create_args {
    qsnap_create_opts co;
    bool dry_run, json;
};

static const cli_command create_cmd = {
    .prog = "qsnap create",
    .help = create_help,
    .usage_status = CLI_EXIT_USAGE,
    .options = (const cli_option[]){
        CLI_STRING("message", 'm', struct create_args, co.description),
        CLI_STRING("state", 0, struct create_args, co.state_file),
        CLI_FLAG("dry-run", 'n', struct create_args, dry_run),
        CLI_FLAG("json", 0, struct create_args, json),
        CLI_FLAG("internal", 0, struct create_args, co.internal),
        CLI_OPTIONS_END,
    },
    CLI_OPERANDS(2, "missing disk"),
};

static int cmd_create(int argc, char **argv)
{
    struct create_args a = {QSNAP_CREATE_OPTS_INIT, false, false};
    qsnap_store *s;
    qsnap_plan *p = NULL;
    cli_operands op;
    bool first;
    int rc, status;

    if (!cli_cmd_parse(&create_cmd, argc, argv, &a, &op, &status))
        return status;
    a.co.name = op.n == 2 ? op.v[1] : NULL;
    status = tree_open(&s, op.v[0], QSNAP_OPEN_CREATE);
    if (status)
        return status;
    first = !qsnap_store_initialized(s);
    rc = qsnap_plan_create(&p, s, &a.co);
    if (rc < 0)
        status = tree_fail(rc, op.v[0]);
    else
        status = run_plan_ex(s, p, op.v[0], a.dry_run, a.json, PROGRESS_OFF, TREE_FREE_AT_END);
    if (status == CLI_EXIT_OK && first && !a.dry_run && !a.json) {
        /* The disk is now the frozen root: a VM still on it would change every snapshot. */
        char *vm = NULL;
        if (qsnap_vm_path(s, &vm) == 0)
            printf("the VM must now use %s ('qsnap current %s --path'), not %s, which is "
                   "now frozen\n",
                   vm, op.v[0], op.v[0]);
        free(vm);
    }
    tree_done(s);
    return status;
}

/* ---- revert ------------------------------------------------------------------ */

static const char revert_help[] =
    "Usage: qsnap revert DISK SNAPSHOT [--branch NEWNAME] [--discard] [--dry-run] [--json]\n"
    "\n"
    "Go back to SNAPSHOT: a new branch starts there and becomes current. The branch\n"
    "being left keeps its changes and can be returned to with 'qsnap switch'; when\n"
    "it has none it is dropped (its name is then reused for the new branch), unless\n"
    "it stands on a state no snapshot names (after a commit), which it is kept for.\n"
    "Nothing is ever written into a snapshot.\n"
    "\n"
    "Options:\n"
    "  -b, --branch=NAME    name of the new branch (default: the left branch's name\n"
    "                       when it is dropped, else a generated one)\n"
    "      --discard        drop the current branch's changes instead of keeping them\n"
    "  -n, --dry-run        print the plan and change nothing\n"
    "      --json           print the plan as JSON\n"
    "  -h, --help           show this help and exit\n"
    "\n" TREE_EXIT_HELP;

struct revert_args {
    const char *snapshot;
    const char *branch;
    bool discard;
    bool dry_run, json;
};

static const cli_command revert_cmd = {
    .prog = "qsnap revert",
    .help = revert_help,
    .usage_status = CLI_EXIT_USAGE,
    .options = (const cli_option[]){
        CLI_STRING("branch", 'b', struct revert_args, branch),
        CLI_FLAG("discard", 0, struct revert_args, discard),
        CLI_FLAG("dry-run", 'n', struct revert_args, dry_run),
        CLI_FLAG("json", 0, struct revert_args, json),
        CLI_OPTIONS_END,
    },
    CLI_OPERANDS(2, "missing disk", "missing snapshot name"),
};

static int make_revert(qsnap_plan **out, qsnap_store *s, void *args)
{
    const struct revert_args *a = args;

    return qsnap_plan_revert(out, s, a->snapshot, a->branch, a->discard);
}

static int cmd_revert(int argc, char **argv)
{
    struct revert_args a = {NULL, NULL, false, false, false};
    cli_operands op;
    int status;

    if (!cli_cmd_parse(&revert_cmd, argc, argv, &a, &op, &status))
        return status;
    a.snapshot = op.v[1];
    return plan_and_run(op.v[0], 0, make_revert, &a, a.dry_run, a.json, PROGRESS_OFF);
}

/* ---- switch ------------------------------------------------------------------ */

static const char switch_help[] =
    "Usage: qsnap switch DISK BRANCH [--dry-run] [--json]\n"
    "\n"
    "Make BRANCH current: return to the end of a branch that was left earlier.\n"
    "The branch being left keeps its changes. 'qsnap branch DISK' lists the branches.\n"
    "\n"
    "Options:\n"
    "  -n, --dry-run        print the plan and change nothing\n"
    "      --json           print the plan as JSON\n"
    "  -h, --help           show this help and exit\n"
    "\n" TREE_EXIT_HELP;

static int make_switch(qsnap_plan **out, qsnap_store *s, void *args)
{
    return qsnap_plan_switch(out, s, args);
}

/* The options of the commands whose only options are --dry-run and --json (and -p). */
struct plan_args {
    bool dry_run, json, progress;
};

static const cli_command switch_cmd = {
    .prog = "qsnap switch",
    .help = switch_help,
    .usage_status = CLI_EXIT_USAGE,
    .options = (const cli_option[]){
        CLI_FLAG("dry-run", 'n', struct plan_args, dry_run),
        CLI_FLAG("json", 0, struct plan_args, json),
        CLI_OPTIONS_END,
    },
    CLI_OPERANDS(2, "missing disk", "missing branch name"),
};

static int cmd_switch(int argc, char **argv)
{
    struct plan_args a = {false, false, false};
    cli_operands op;
    int status;

    if (!cli_cmd_parse(&switch_cmd, argc, argv, &a, &op, &status))
        return status;
    return plan_and_run(op.v[0], 0, make_switch, op.v[1], a.dry_run, a.json, PROGRESS_OFF);
}

/* ---- branch ------------------------------------------------------------------ */

static const char branch_help[] =
    "Usage: qsnap branch DISK                       list the branches ('*' = current)\n"
    "       qsnap branch DISK NAME [--at SNAPSHOT]  create a branch\n"
    "       qsnap branch DISK -d NAME [--force]     delete a branch\n"
    "       qsnap branch DISK -m OLD NEW            rename a branch\n"
    "\n"
    "A branch is a writable line of the disk: an overlay on a snapshot. A new\n"
    "branch starts at SNAPSHOT (default: where the current branch started) and\n"
    "does not become current ('qsnap switch' makes it so). Deleting removes the\n"
    "branch's overlay only, never a snapshot.\n"
    "\n"
    "Options:\n"
    "      --at=SNAPSHOT    where a new branch starts\n"
    "  -d, --delete         delete the branch NAME\n"
    "  -f, --force          delete it even when it holds changes (they are lost)\n"
    "                       or its head file is missing\n"
    "  -m, --move           rename the branch OLD to NEW\n"
    "  -n, --dry-run        print the plan and change nothing\n"
    "      --json           print the plan as JSON\n"
    "  -h, --help           show this help and exit\n"
    "\n" TREE_EXIT_HELP;

struct branch_args {
    const char *name;
    const char *other; /* --at SNAPSHOT, or the new name of -m */
    bool force;
    bool del, move, dry_run, json;
};

static const cli_command branch_cmd = {
    .prog = "qsnap branch",
    .help = branch_help,
    .usage_status = CLI_EXIT_USAGE,
    .options = (const cli_option[]){
        CLI_STRING("at", 0, struct branch_args, other),
        CLI_FLAG("delete", 'd', struct branch_args, del),
        CLI_FLAG("force", 'f', struct branch_args, force),
        CLI_FLAG("move", 'm', struct branch_args, move),
        CLI_FLAG("dry-run", 'n', struct branch_args, dry_run),
        CLI_FLAG("json", 0, struct branch_args, json),
        CLI_OPTIONS_END,
    },
    CLI_OPERANDS(0, "missing disk"),
};

static int make_branch_create(qsnap_plan **out, qsnap_store *s, void *args)
{
    const struct branch_args *a = args;

    return qsnap_plan_branch_create(out, s, a->name, a->other);
}

static int make_branch_delete(qsnap_plan **out, qsnap_store *s, void *args)
{
    const struct branch_args *a = args;

    return qsnap_plan_branch_delete(out, s, a->name, a->force);
}

static int make_branch_rename(qsnap_plan **out, qsnap_store *s, void *args)
{
    const struct branch_args *a = args;

    return qsnap_plan_branch_rename(out, s, a->name, a->other);
}

/* `git branch`: one branch a line, '*' on the current one, then where it starts. */
static int branch_list(const char *disk)
{
    qsnap_store *s;
    qsnap_node *list = NULL;
    size_t n = 0, width = 0;
    int rc, status = tree_open(&s, disk, QSNAP_OPEN_READONLY);

    if (status)
        return status;
    rc = qsnap_list(s, &list, &n);
    if (rc < 0) {
        status = tree_fail(rc, disk);
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        if (list[i].kind == QSNAP_BRANCH && strlen(list[i].name) > width)
            width = strlen(list[i].name);
    for (size_t i = 0; i < n; i++) {
        if (list[i].kind != QSNAP_BRANCH)
            continue;
        printf("%c %-*s  %s, on %s\n", list[i].current ? '*' : ' ', (int)width, list[i].name,
               list[i].dirty ? "dirty" : "clean",
               list[i].parent_name ? list[i].parent_name : "nothing");
    }
out:
    qsnap_list_free(list, n);
    qsnap_store_close(s);
    return status;
}

static int cmd_branch(int argc, char **argv)
{
    struct branch_args a = {NULL, NULL, false, false, false, false, false};
    bool dry_run, json;
    cli_operands op;
    int status;

    if (!cli_cmd_parse(&branch_cmd, argc, argv, &a, &op, &status))
        return status;
    dry_run = a.dry_run;
    json = a.json;
    if (a.del && a.move)
        return tree_usage("branch", "-d and -m exclude each other");
    if ((a.del || a.move) && a.other)
        return tree_usage("branch", "--at only goes with a new branch");
    if (a.force && !a.del)
        return tree_usage("branch", "--force only goes with -d");
    if (a.move) {
        if (op.n != 3)
            return tree_usage("branch", "-m needs OLD and NEW");
        a.name = op.v[1];
        a.other = op.v[2];
        return plan_and_run(op.v[0], 0, make_branch_rename, &a, dry_run, json, PROGRESS_OFF);
    }
    if (op.n > 2)
        return tree_usage("branch", "unexpected argument '%s'", op.v[2]);
    if (a.del) {
        if (op.n != 2)
            return tree_usage("branch", "-d needs the name of a branch");
        a.name = op.v[1];
        return plan_and_run(op.v[0], 0, make_branch_delete, &a, dry_run, json, PROGRESS_OFF);
    }
    if (op.n == 1) {
        if (a.other || dry_run || json)
            return tree_usage("branch", "--at, --dry-run and --json need a branch name");
        return branch_list(op.v[0]);
    }
    a.name = op.v[1];
    return plan_and_run(op.v[0], 0, make_branch_create, &a, dry_run, json, PROGRESS_OFF);
}

/* ---- delete ------------------------------------------------------------------ */

static const char delete_help[] =
    "Usage: qsnap delete DISK SNAPSHOT [--children [--force]] [--stream] [--metadata]\n"
    "                    [--dry-run] [--json] [-p]\n"
    "\n"
    "Delete a snapshot anywhere in the tree. Its name goes, and its data goes\n"
    "wherever nothing else needs it; every other snapshot and branch keeps its\n"
    "exact content. A snapshot whose only dependent is a branch head is merged\n"
    "into it; one that other snapshots (or several states) are built on is kept\n"
    "as an unnamed node (frozen layers change under commit alone), or, with\n"
    "--stream, copied into each of them.\n"
    "\n"
    "Options:\n"
    "      --children       delete SNAPSHOT and its whole subtree (snapshots and\n"
    "                       branches); refused while a branch in it holds changes\n"
    "  -f, --force          only meaningful with --children: delete dirty branches\n"
    "                       anyway (their changes are lost)\n"
    "      --stream         copy a shared snapshot's data into each dependent\n"
    "                       instead of keeping it as an unnamed node\n"
    "      --metadata       forget the name only; the data stays as an unnamed node\n"
    "  -n, --dry-run        print the plan and change nothing\n"
    "      --json           print the plan as JSON\n"
    "  -p, --progress       show progress from the start, also when standard output\n"
    "                       is not a terminal\n"
    "  -h, --help           show this help and exit\n"
    "\n"
    "On a terminal a progress bar appears when copying data takes more than a\n"
    "second; --json turns it off.\n"
    "\n" TREE_EXIT_HELP;

struct delete_args {
    const char *snapshot;
    unsigned flags;
    bool dry_run, json, progress;
};

static const cli_command delete_cmd = {
    .prog = "qsnap delete",
    .help = delete_help,
    .usage_status = CLI_EXIT_USAGE,
    .options = (const cli_option[]){
        CLI_BITS("children", 0, struct delete_args, flags, QSNAP_DELETE_CHILDREN),
        CLI_BITS("force", 'f', struct delete_args, flags, QSNAP_DELETE_FORCE),
        CLI_BITS("stream", 0, struct delete_args, flags, QSNAP_DELETE_STREAM),
        CLI_BITS("metadata", 0, struct delete_args, flags, QSNAP_DELETE_METADATA),
        CLI_FLAG("dry-run", 'n', struct delete_args, dry_run),
        CLI_FLAG("json", 0, struct delete_args, json),
        CLI_FLAG("progress", 'p', struct delete_args, progress),
        CLI_OPTIONS_END,
    },
    CLI_OPERANDS(2, "missing disk", "missing snapshot name"),
};

static int make_delete(qsnap_plan **out, qsnap_store *s, void *args)
{
    const struct delete_args *a = args;

    return qsnap_plan_delete(out, s, a->snapshot, a->flags);
}

static int cmd_delete(int argc, char **argv)
{
    struct delete_args a = {NULL, 0, false, false, false};
    cli_operands op;
    int status;

    if (!cli_cmd_parse(&delete_cmd, argc, argv, &a, &op, &status))
        return status;
    a.snapshot = op.v[1];
    return plan_and_run(op.v[0], 0, make_delete, &a, a.dry_run, a.json,
                        a.progress ? PROGRESS_FORCED : PROGRESS_AUTO);
}

/* ---- commit ------------------------------------------------------------------ */

static const char commit_help[] =
    "Usage: qsnap commit DISK [BRANCH] [--dry-run] [--json] [-p]\n"
    "\n"
    "Write a branch's changes (default: the current branch's) down into the\n"
    "snapshot it starts from, offline, and go on from there with an empty head.\n"
    "Every other snapshot and branch keeps its exact content: the data the commit\n"
    "overwrites is first moved into a new layer that takes the old one's place for\n"
    "them. When the branch starts at the disk itself, the disk file then holds the\n"
    "branch's content.\n"
    "\n"
    "Options:\n"
    "  -n, --dry-run        print the plan and change nothing\n"
    "      --json           print the plan as JSON\n"
    "  -p, --progress       show progress from the start, also when standard output\n"
    "                       is not a terminal\n"
    "  -h, --help           show this help and exit\n"
    "\n"
    "On a terminal a progress bar appears when copying data takes more than a\n"
    "second; --json turns it off.\n"
    "\n" TREE_EXIT_HELP;

static int make_commit(qsnap_plan **out, qsnap_store *s, void *args)
{
    return qsnap_plan_commit(out, s, args);
}

static const cli_command commit_cmd = {
    .prog = "qsnap commit",
    .help = commit_help,
    .usage_status = CLI_EXIT_USAGE,
    .options = (const cli_option[]){
        CLI_FLAG("dry-run", 'n', struct plan_args, dry_run),
        CLI_FLAG("json", 0, struct plan_args, json),
        CLI_FLAG("progress", 'p', struct plan_args, progress),
        CLI_OPTIONS_END,
    },
    CLI_OPERANDS(2, "missing disk"),
};

static int cmd_commit(int argc, char **argv)
{
    struct plan_args a = {false, false, false};
    cli_operands op;
    int status;

    if (!cli_cmd_parse(&commit_cmd, argc, argv, &a, &op, &status))
        return status;
    return plan_and_run(op.v[0], 0, make_commit, op.n == 2 ? op.v[1] : NULL, a.dry_run, a.json,
                        a.progress ? PROGRESS_FORCED : PROGRESS_AUTO);
}

/* ---- the command table ------------------------------------------------------- */

struct tree_cmd {
    const char *name;  /* the command's word */
    cli_cmd_fn fn;     /* its entry point */
    const char *about; /* one line for `qsnap --help` */
};

static const struct tree_cmd tree_cmds[] = {
    {"create", cmd_create, "take a snapshot of the current branch"},
    {"list", cli_tree_list, "list snapshots and branches (table, --tree or --json)"},
    {"info", cli_tree_info, "show one snapshot or branch"},
    {"current", cli_tree_current, "the current branch (--path: the image a VM uses)"},
    {"revert", cmd_revert, "go back to a snapshot on a new branch"},
    {"switch", cmd_switch, "return to a branch left earlier"},
    {"branch", cmd_branch, "list, create, delete or rename branches"},
    {"delete", cmd_delete, "delete a snapshot, keeping everything else"},
    {"commit", cmd_commit, "write a branch's changes into its snapshot"},
    {"diff", cli_tree_diff, "byte ranges that differ between two states"},
    {"du", cli_tree_du, "bytes each snapshot and branch holds and would free"},
    {"why", cli_tree_why, "what depends on a snapshot or branch"},
    {"export", cli_tree_export, "write a state as a standalone raw or qcow2 image"},
    {"verify", cli_tree_verify, "check (and --repair) the store"},
    {"adopt", cli_tree_adopt, "take over a backing chain (libvirt's, qemu-img's)"},
    {"libvirt-xml", cli_tree_libvirt_xml, "the tree as libvirt snapshot XML (--redefine)"},
    {"serve", cli_tree_serve, "serve a snapshot or branch over NBD (nbdkit)"},
    {"mount", cli_tree_mount, "show every snapshot and branch as a file (FUSE)"},
    {"umount", cli_tree_umount, "end a 'qsnap mount'"},
};

#define NB_TREE_CMDS (sizeof(tree_cmds) / sizeof(tree_cmds[0]))

cli_cmd_fn cli_tree_lookup(const char *name)
{
    for (size_t i = 0; i < NB_TREE_CMDS; i++)
        if (strcmp(name, tree_cmds[i].name) == 0)
            return tree_cmds[i].fn;
    return NULL;
}

void cli_tree_print_commands(void)
{
    for (size_t i = 0; i < NB_TREE_CMDS; i++)
        printf("  %-18s  %s\n", tree_cmds[i].name, tree_cmds[i].about);
}
