/*
 * qsnap serve: run nbdkit with the qsnap plugin on a snapshot or branch (or
 * a disk without a store), print the NBD URI, and stop it again with
 * `qsnap serve --stop`. nbdkit is a run-time dependency of this command only:
 * qsnap never speaks NBD itself. A server started in the background is
 * recorded in the run-time directory (serve-PID) so --stop finds it.
 */
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <qsnap/qsnap.h>

#include "cli.h"
#include "cli_error.h"
#include "opt.h"
#include "serve.h"
#include "tree.h"

static const char serve_help[] =
    "Usage: qsnap serve DISK [NAME] [--socket PATH | --port N] [--readonly] [--foreground]\n"
    "       qsnap serve --stop [DISK [NAME]]\n"
    "\n"
    "Serve a snapshot or branch of DISK (default: the current branch; a disk\n"
    "without a store: the disk itself) over NBD with nbdkit and its qsnap plugin,\n"
    "and print the NBD URI. A snapshot is served read-only; a branch is writable\n"
    "(its head takes the writes, and is locked as QEMU locks an image, so tree\n"
    "commands that would touch it are refused until the server stops). By default\n"
    "the server listens on a Unix socket in the run-time directory and runs in the\n"
    "background until 'qsnap serve --stop'.\n"
    "\n"
    "Options:\n"
    "      --socket=PATH    listen on this Unix socket\n"
    "      --port=N         listen on TCP port N (every address of the host)\n"
    "  -r, --readonly       serve read-only (a branch too)\n"
    "  -f, --foreground     stay in the foreground; stop on SIGINT or SIGTERM\n"
    "      --stop           stop the servers started by 'qsnap serve' (of DISK, or\n"
    "                       DISK and NAME, when given) and wait until they are gone\n"
    "  -h, --help           show this help and exit\n"
    "\n"
    "Environment: QSNAP_NBDKIT (the nbdkit program), QSNAP_NBDKIT_PLUGIN (the\n"
    "plugin; default: nbdkit-qsnap-plugin.so beside qsnap, else nbdkit's own).\n"
    "\n" TREE_EXIT_HELP;

/* ---- the run-time directory (shared with cmd_mount.c) ------------------------- */

char *serve_runtime_dir(void)
{
    const char *x = getenv("XDG_RUNTIME_DIR");
    char *dir = NULL;
    struct stat st;

    if (x && x[0] == '/') {
        if (asprintf(&dir, "%s/qsnap", x) < 0)
            dir = NULL;
    } else if (asprintf(&dir, "/tmp/qsnap-%u", (unsigned)getuid()) < 0) {
        dir = NULL;
    }
    if (!dir) {
        cli_errorf("out of memory");
        return NULL;
    }
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        cli_errorf("%s: cannot make the run-time directory: %s", dir, strerror(errno));
        free(dir);
        return NULL;
    }
    if (lstat(dir, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != getuid()) {
        cli_errorf("%s: not a directory of this user", dir);
        free(dir);
        return NULL;
    }
    return dir;
}

int serve_record_write(const char *dir, const char *kind, pid_t pid, const char *const *kv)
{
    char *path = NULL, *tmp = NULL;
    FILE *f;
    int ok;

    if (asprintf(&path, "%s/%s-%ld", dir, kind, (long)pid) < 0 ||
        asprintf(&tmp, "%s/.%s-%ld.tmp", dir, kind, (long)pid) < 0) {
        free(path);
        return -1;
    }
    f = fopen(tmp, "w");
    ok = f != NULL;
    for (size_t i = 0; ok && kv[i]; i += 2)
        ok = fprintf(f, "%s=%s\n", kv[i], kv[i + 1] ? kv[i + 1] : "") > 0;
    if (f && fclose(f) != 0)
        ok = 0;
    if (ok && rename(tmp, path) != 0)
        ok = 0;
    if (!ok)
        unlink(tmp);
    free(tmp);
    free(path);
    return ok ? 0 : -1;
}

char *serve_record_get(const char *path, const char *key)
{
    FILE *f = fopen(path, "r");
    char line[PATH_MAX + 64];
    size_t kl = strlen(key);
    char *v = NULL;

    if (!f)
        return NULL;
    while (!v && fgets(line, sizeof(line), f)) {
        if (strncmp(line, key, kl) == 0 && line[kl] == '=') {
            line[strcspn(line, "\n")] = '\0';
            v = strdup(line + kl + 1);
        }
    }
    fclose(f);
    return v;
}

bool serve_pid_runs(pid_t pid, const char *word)
{
    char path[64], buf[4096];
    ssize_t n;
    int fd;

    if (pid <= 0 || kill(pid, 0) != 0)
        return false;
    snprintf(path, sizeof(path), "/proc/%ld/cmdline", (long)pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return false;
    for (ssize_t i = 0; i < n; i++)
        if (buf[i] == '\0')
            buf[i] = ' ';
    buf[n] = '\0';
    return strstr(buf, word) != NULL;
}

static void nap(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

    nanosleep(&ts, NULL);
}

bool serve_wait_gone(pid_t pid, double secs)
{
    for (long waited = 0; waited < (long)(secs * 1000); waited += 20) {
        char path[64];
        FILE *f;
        char state = 0;

        if (kill(pid, 0) != 0)
            return true;
        /* A zombie (a child of ours) is gone too. */
        snprintf(path, sizeof(path), "/proc/%ld/stat", (long)pid);
        f = fopen(path, "r");
        if (f) {
            if (fscanf(f, "%*d (%*[^)]) %c", &state) != 1)
                state = 0;
            fclose(f);
        }
        if (state == 'Z')
            return true;
        nap(20);
    }
    return kill(pid, 0) != 0;
}

/* ---- starting ------------------------------------------------------------------ */

/* A program on PATH (or a path), as execvp would find it. */
static bool have_program(const char *prog)
{
    const char *path = getenv("PATH");
    char buf[PATH_MAX];

    if (strchr(prog, '/'))
        return access(prog, X_OK) == 0;
    if (!path)
        path = "/usr/bin:/bin";
    while (*path) {
        size_t n = strcspn(path, ":");
        if (n > 0 && snprintf(buf, sizeof(buf), "%.*s/%s", (int)n, path, prog) < (int)sizeof(buf) &&
            access(buf, X_OK) == 0)
            return true;
        path += n;
        if (*path == ':')
            path++;
    }
    return false;
}

/* The plugin: $QSNAP_NBDKIT_PLUGIN, the one beside this program (a build), or nbdkit's "qsnap". */
static char *find_plugin(void)
{
    const char *env = getenv("QSNAP_NBDKIT_PLUGIN");
    char self[PATH_MAX];
    ssize_t n;

    if (env && *env)
        return strdup(env);
    n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n > 0) {
        char *slash, *p = NULL;
        self[n] = '\0';
        slash = strrchr(self, '/');
        if (slash) {
            *slash = '\0';
            if (asprintf(&p, "%s/nbdkit-qsnap-plugin.so", self) >= 0 && access(p, R_OK) == 0)
                return p;
            free(p);
        }
    }
    return strdup("qsnap");
}

struct serve_args {
    const char *disk;
    const char *name;
    const char *socket;
    long port;
    bool readonly;
    bool foreground;
    bool stop; /* --stop */
};

/* Check what nbdkit would open, so that errors get the tree commands' exit statuses. */
static int precheck(const char *disk, const char **name, bool readonly, bool *has_store,
                    char **name_buf)
{
    qsnap_store *s = NULL;
    qcow2_image *img = NULL;
    qsnap_node *list = NULL;
    size_t n = 0;
    bool branch = false, found = false;
    int rc;

    *has_store = false;
    rc = qsnap_store_open(&s, disk, QSNAP_OPEN_READONLY);
    if (rc == QSNAP_ENOTFOUND && !*name && access(disk, F_OK) == 0) {
        /* No store: the disk itself is served; see that it opens (and is not locked). */
        qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
        oo.flags = readonly ? 0 : QCOW2_OPEN_RDWR;
        rc = qcow2_image_open(&img, disk, &oo);
        qcow2_image_close(img);
        if (rc) {
            cli_errorf("%s", qcow2_error_last()->message);
            return QCOW2_ERROR_CLASS(rc) == QCOW2_EBUSY ? CLI_EXIT_BUSY : CLI_EXIT_ERROR;
        }
        return 0;
    }
    if (rc)
        return tree_fail(rc, disk);
    if (!qsnap_store_initialized(s)) {
        qsnap_store_close(s);
        if (*name) {
            cli_errorf("no snapshot or branch named '%s'", *name);
            return CLI_EXIT_NOTFOUND;
        }
        return 0;
    }
    *has_store = true;
    if (!*name) {
        qsnap_node *cur = NULL;
        rc = qsnap_current(s, &cur);
        if (rc) {
            qsnap_store_close(s);
            return tree_fail(rc, disk);
        }
        *name_buf = strdup(cur->name);
        qsnap_list_free(cur, 1);
        if (!*name_buf) {
            qsnap_store_close(s);
            cli_errorf("out of memory");
            return CLI_EXIT_ERROR;
        }
        *name = *name_buf;
    }
    rc = qsnap_list(s, &list, &n);
    for (size_t i = 0; rc == 0 && i < n && !found; i++) {
        if (list[i].kind != QSNAP_UNNAMED && strcmp(list[i].name, *name) == 0) {
            found = true;
            branch = list[i].kind == QSNAP_BRANCH;
        }
    }
    qsnap_list_free(list, n);
    if (rc == 0 && !found) {
        qsnap_store_close(s);
        cli_errorf("no snapshot or branch named '%s'", *name);
        fprintf(stderr, "qsnap: hint: 'qsnap list %s' shows the names\n", disk);
        return CLI_EXIT_NOTFOUND;
    }
    if (rc == 0)
        rc = qsnap_open_image(s, *name, branch && !readonly ? QCOW2_OPEN_RDWR : 0, &img);
    qcow2_image_close(img);
    if (rc) {
        int st = tree_fail(rc, disk);
        qsnap_store_close(s);
        return st;
    }
    qsnap_store_close(s);
    return 0;
}

static volatile sig_atomic_t got_signal;

static void on_signal(int sig)
{
    got_signal = sig;
}

static int start(const struct serve_args *a)
{
    const char *nbdkit = getenv("QSNAP_NBDKIT");
    char *disk_abs = NULL, *name_buf = NULL, *plugin = NULL, *rundir = NULL;
    char *sock = NULL, *pidfile = NULL, *uri = NULL, *p_disk = NULL, *p_name = NULL;
    char portbuf[32];
    const char *name = a->name;
    const char *argv[24];
    bool has_store = false;
    int n = 0, status = CLI_EXIT_ERROR, ws;
    pid_t child, server = 0;

    if (!nbdkit || !*nbdkit)
        nbdkit = "nbdkit";
    if (!have_program(nbdkit)) {
        cli_errorf("%s not found: 'qsnap serve' runs nbdkit (install the nbdkit package)", nbdkit);
        return CLI_EXIT_ERROR;
    }
    disk_abs = realpath(a->disk, NULL);
    if (!disk_abs) {
        cli_errorf("%s: %s", a->disk, strerror(errno));
        return errno == ENOENT ? CLI_EXIT_NOTFOUND : CLI_EXIT_ERROR;
    }
    status = precheck(disk_abs, &name, a->readonly, &has_store, &name_buf);
    if (status)
        goto out;
    status = CLI_EXIT_ERROR;
    rundir = serve_runtime_dir();
    if (!rundir)
        goto out;
    plugin = find_plugin();
    if (a->socket) {
        char *dir, *copy = strdup(a->socket);
        /* nbdkit wants an absolute path once it runs in the background. */
        if (!copy)
            goto out;
        if (a->socket[0] == '/') {
            sock = copy;
        } else {
            dir = getcwd(NULL, 0);
            if (!dir || asprintf(&sock, "%s/%s", dir, a->socket) < 0)
                sock = NULL;
            free(dir);
            free(copy);
        }
    } else if (a->port < 0 && asprintf(&sock, "%s/nbd-%ld.sock", rundir, (long)getpid()) < 0) {
        sock = NULL;
    }
    if (asprintf(&pidfile, "%s/.nbdkit-%ld.pid", rundir, (long)getpid()) < 0)
        pidfile = NULL;
    if (has_store) {
        if (asprintf(&p_disk, "disk=%s", disk_abs) < 0 || asprintf(&p_name, "name=%s", name) < 0)
            p_disk = p_name = NULL;
    } else if (asprintf(&p_disk, "file=%s", disk_abs) < 0) {
        p_disk = NULL;
    }
    if (a->port >= 0) {
        char host[256] = "localhost";
        gethostname(host, sizeof(host) - 1);
        host[sizeof(host) - 1] = '\0';
        snprintf(portbuf, sizeof(portbuf), "%ld", a->port);
        if (asprintf(&uri, "nbd://%s:%ld/", host, a->port) < 0)
            uri = NULL;
    } else if (sock && asprintf(&uri, "nbd+unix:///?socket=%s", sock) < 0) {
        uri = NULL;
    }
    if (!plugin || (!sock && a->port < 0) || !pidfile || !p_disk || (has_store && !p_name) || !uri) {
        cli_errorf("out of memory");
        goto out;
    }
    unlink(pidfile);
    argv[n++] = nbdkit;
    if (a->foreground)
        argv[n++] = "-f";
    if (a->port >= 0) {
        argv[n++] = "-p";
        argv[n++] = portbuf;
    } else {
        argv[n++] = "-U";
        argv[n++] = sock;
    }
    argv[n++] = "-P";
    argv[n++] = pidfile;
    if (a->readonly)
        argv[n++] = "-r";
    argv[n++] = plugin;
    argv[n++] = p_disk;
    if (p_name)
        argv[n++] = p_name;
    if (a->readonly)
        argv[n++] = "readonly=1";
    argv[n] = NULL;

    fflush(stdout);
    child = fork();
    if (child < 0) {
        cli_errorf("fork: %s", strerror(errno));
        goto out;
    }
    if (child == 0) {
        execvp(nbdkit, (char *const *)(uintptr_t)argv);
        fprintf(stderr, "qsnap: %s: %s\n", nbdkit, strerror(errno));
        _exit(127);
    }
    /* Wait for the pid file: nbdkit writes it once it listens. */
    for (int waited = 0; waited < 60000; waited += 20) {
        FILE *f = fopen(pidfile, "r");
        long v = 0;
        if (f) {
            if (fscanf(f, "%ld", &v) == 1 && v > 0)
                server = (pid_t)v;
            fclose(f);
        }
        if (server)
            break;
        if (waitpid(child, &ws, WNOHANG) == child) {
            child = 0;
            if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0) {
                cli_errorf("nbdkit could not serve %s%s%s (its message is above)", a->disk,
                           has_store ? " " : "", has_store ? name : "");
                goto out;
            }
        }
        nap(20);
    }
    if (!server) {
        cli_errorf("nbdkit did not start within 60 s");
        if (child)
            kill(child, SIGTERM);
        goto out;
    }
    unlink(pidfile);
    {
        char pidbuf[32];
        const char *kv[] = {"pid",     pidbuf,   "uri",  uri,        "disk", disk_abs,
                            "name",    has_store ? name : "",        "socket", sock ? sock : "",
                            "foreground", a->foreground ? "1" : "0", NULL, NULL};
        snprintf(pidbuf, sizeof(pidbuf), "%ld", (long)server);
        if (serve_record_write(rundir, "serve", server, kv) != 0)
            cli_errorf("%s: cannot record the server (--stop will not find it)", rundir);
    }
    printf("%s\n", uri);
    fflush(stdout);
    status = CLI_EXIT_OK;
    if (a->foreground) {
        struct sigaction sa;
        char *rec = NULL;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_signal;
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGHUP, &sa, NULL);
        for (;;) {
            pid_t r = waitpid(child, &ws, 0);
            if (r == child)
                break;
            if (r < 0 && errno == EINTR && got_signal)
                kill(child, SIGTERM);
            else if (r < 0 && errno != EINTR)
                break;
        }
        if (!got_signal && (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0))
            status = CLI_EXIT_ERROR;
        if (asprintf(&rec, "%s/serve-%ld", rundir, (long)server) >= 0)
            unlink(rec);
        free(rec);
        if (sock)
            unlink(sock);
    } else if (child) {
        waitpid(child, &ws, 0); /* the parent nbdkit, which exits once the server is up */
    }
out:
    free(disk_abs);
    free(name_buf);
    free(plugin);
    free(rundir);
    free(sock);
    free(pidfile);
    free(uri);
    free(p_disk);
    free(p_name);
    return status;
}

/* ---- stopping ------------------------------------------------------------------- */

static int stop(const char *disk, const char *name)
{
    char *rundir = serve_runtime_dir(), *disk_abs = NULL;
    DIR *d;
    struct dirent *de;
    int stopped = 0, failed = 0;

    if (!rundir)
        return CLI_EXIT_ERROR;
    if (disk) {
        disk_abs = realpath(disk, NULL);
        if (!disk_abs) {
            cli_errorf("%s: %s", disk, strerror(errno));
            free(rundir);
            return CLI_EXIT_NOTFOUND;
        }
    }
    d = opendir(rundir);
    while (d && (de = readdir(d)) != NULL) {
        char *path = NULL, *pid_s, *r_disk, *r_name, *uri, *sock;
        pid_t pid;

        if (strncmp(de->d_name, "serve-", 6) != 0)
            continue;
        if (asprintf(&path, "%s/%s", rundir, de->d_name) < 0)
            break;
        pid_s = serve_record_get(path, "pid");
        r_disk = serve_record_get(path, "disk");
        r_name = serve_record_get(path, "name");
        uri = serve_record_get(path, "uri");
        sock = serve_record_get(path, "socket");
        pid = pid_s ? (pid_t)atol(pid_s) : 0;
        if ((!disk_abs || (r_disk && strcmp(r_disk, disk_abs) == 0)) &&
            (!name || (r_name && strcmp(r_name, name) == 0))) {
            if (serve_pid_runs(pid, "nbdkit")) {
                kill(pid, SIGTERM);
                if (serve_wait_gone(pid, 30)) {
                    printf("stopped %s (pid %ld)\n", uri ? uri : "?", (long)pid);
                    stopped++;
                } else {
                    cli_errorf("nbdkit (pid %ld) did not stop", (long)pid);
                    failed++;
                }
            }
            if (kill(pid, 0) != 0 || !serve_pid_runs(pid, "nbdkit")) {
                unlink(path); /* gone, or a stale record */
                if (sock && *sock)
                    unlink(sock);
            }
        }
        free(pid_s);
        free(r_disk);
        free(r_name);
        free(uri);
        free(sock);
        free(path);
    }
    if (d)
        closedir(d);
    free(rundir);
    free(disk_abs);
    if (failed)
        return CLI_EXIT_BUSY;
    if (!stopped) {
        cli_errorf("no server to stop%s%s", disk ? " for " : "", disk ? disk : "");
        return CLI_EXIT_NOTFOUND;
    }
    return CLI_EXIT_OK;
}

/* --port: a TCP port number. */
static int serve_port(const char *arg, void *field)
{
    long *port = field;
    char *end;
    long v = strtol(arg, &end, 10);

    if (!*arg || *end || v < 1 || v > 65535)
        return tree_usage("serve", "--port: expected a TCP port (1-65535), not '%s'", arg);
    *port = v;
    return 0;
}

static const cli_command serve_cmd = {
    .prog = "qsnap serve",
    .help = serve_help,
    .usage_status = CLI_EXIT_USAGE,
    .options = (const cli_option[]){
        CLI_STRING("socket", 0, struct serve_args, socket),
        CLI_CONVERT("port", 0, struct serve_args, port, serve_port),
        CLI_FLAG("readonly", 'r', struct serve_args, readonly),
        CLI_FLAG("foreground", 'f', struct serve_args, foreground),
        CLI_FLAG("stop", 0, struct serve_args, stop),
        CLI_OPTIONS_END,
    },
    .max_operands = 2,
};

int cli_tree_serve(int argc, char **argv)
{
    struct serve_args a = {NULL, NULL, NULL, -1, false, false, false};
    cli_operands op;
    int status;

    if (!cli_cmd_parse(&serve_cmd, argc, argv, &a, &op, &status))
        return status;
    if (a.stop) {
        if (a.socket || a.port >= 0 || a.readonly || a.foreground)
            return tree_usage("serve", "--stop takes no other option");
        return stop(op.n > 0 ? op.v[0] : NULL, op.n > 1 ? op.v[1] : NULL);
    }
    if (op.n < 1)
        return tree_usage("serve", "missing disk");
    if (a.socket && a.port >= 0)
        return tree_usage("serve", "--socket and --port exclude each other");
    a.disk = op.v[0];
    a.name = op.n > 1 ? op.v[1] : NULL;
    return start(&a);
}
