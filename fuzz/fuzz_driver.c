/*
 * Standalone replay driver: a main() that feeds files (or every file in the
 * directories) named on the command line through LLVMFuzzerTestOneInput, one
 * at a time, so corpora replay under gcc in `make test` and crashes reproduce
 * under a debugger without libFuzzer. Prints one line per file and
 * "replayed N files" at the end; a crash or a FUZZ_ASSERT kills the process
 * right after the line naming the file.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_helpers.h"

#pragma weak LLVMFuzzerInitialize

static int read_whole(const char *path, uint8_t **buf_out, size_t *len_out)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0, n;
    int rc = -1;

    if (f == NULL)
        return -1;
    for (;;) {
        if (len == cap) {
            uint8_t *nb;
            cap = cap ? cap * 2 : 65536;
            nb = realloc(buf, cap);
            if (nb == NULL)
                goto out_close;
            buf = nb;
        }
        n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0)
            break;
    }
    if (ferror(f))
        goto out_close;
    *buf_out = buf;
    *len_out = len;
    buf = NULL;
    rc = 0;
out_close:
    free(buf);
    fclose(f);
    return rc;
}

static int run_file(const char *path, unsigned long *count)
{
    uint8_t *buf = NULL;
    size_t len = 0;

    if (read_whole(path, &buf, &len) < 0) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    printf("replay %s (%zu bytes)\n", path, len);
    fflush(stdout);
    /* Hand the target an exact-size copy so overreads hit the allocator's guard. */
    {
        uint8_t *exact = malloc(len ? len : 1);
        if (exact == NULL) {
            free(buf);
            return -1;
        }
        memcpy(exact, buf, len);
        free(buf);
        LLVMFuzzerTestOneInput(exact, len);
        free(exact);
    }
    (*count)++;
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int run_dir(const char *dir, unsigned long *count)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char **names = NULL;
    size_t n = 0, cap = 0, i;
    int rc = 0;

    if (d == NULL) {
        fprintf(stderr, "replay: %s: %s\n", dir, strerror(errno));
        return -1;
    }
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if (n == cap) {
            char **nn;
            cap = cap ? cap * 2 : 64;
            nn = realloc(names, cap * sizeof(*names));
            if (nn == NULL) {
                rc = -1;
                goto out;
            }
            names = nn;
        }
        names[n] = malloc(strlen(dir) + strlen(e->d_name) + 2);
        if (names[n] == NULL) {
            rc = -1;
            goto out;
        }
        sprintf(names[n], "%s/%s", dir, e->d_name);
        n++;
    }
    qsort(names, n, sizeof(*names), cmp_str);
    for (i = 0; i < n; i++) {
        struct stat st;
        if (stat(names[i], &st) == 0 && S_ISDIR(st.st_mode)) {
            if (run_dir(names[i], count) < 0)
                rc = -1;
        } else if (run_file(names[i], count) < 0) {
            rc = -1;
        }
    }
out:
    for (i = 0; i < n; i++)
        free(names[i]);
    free(names);
    closedir(d);
    return rc;
}

int main(int argc, char **argv)
{
    unsigned long count = 0;
    int i, rc = 0;

    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE_OR_DIR...\n", argv[0]);
        return 2;
    }
    if (LLVMFuzzerInitialize != NULL)
        LLVMFuzzerInitialize(&argc, &argv);
    for (i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) < 0) {
            fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
            rc = 1;
        } else if (S_ISDIR(st.st_mode)) {
            if (run_dir(argv[i], &count) < 0)
                rc = 1;
        } else if (run_file(argv[i], &count) < 0) {
            rc = 1;
        }
    }
    printf("replayed %lu files\n", count);
    return rc;
}
