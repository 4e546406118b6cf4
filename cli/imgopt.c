/*
 * qemu-img's -o creation options for qsnap (see imgopt.h): parsing of the
 * comma-separated list (",," stands for a comma inside a value), the help
 * listing, the mapping of words to the library's creation options and the
 * "Formatting" line. Which combinations are valid is left to libqcow2.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_error.h"
#include "fmt.h"
#include "imgopt.h"

/* How a key's value is read. */
enum imgopt_type {
    IMGOPT_T_STR,  /* any text */
    IMGOPT_T_BOOL, /* on/off (also yes/no, true/false) */
    IMGOPT_T_NUM,  /* a plain number */
    IMGOPT_T_SIZE, /* a size with an optional k/M/G/T/P/E suffix */
};

struct imgopt_def {
    const char *name;      /* the key */
    enum imgopt_type type; /* how its value is read */
    bool raw;              /* also a raw image option */
    const char *help;      /* the "-o help" text */
};

static const struct imgopt_def imgopt_defs[IMGOPT_COUNT] = {
    [IMGOPT_BACKING_FILE] = {"backing_file", IMGOPT_T_STR, false, "File name of a base image"},
    [IMGOPT_BACKING_FMT] = {"backing_fmt", IMGOPT_T_STR, false, "Image format of the base image"},
    [IMGOPT_CLUSTER_SIZE] = {"cluster_size", IMGOPT_T_SIZE, false, "qcow2 cluster size"},
    [IMGOPT_COMPAT] = {"compat", IMGOPT_T_STR, false, "Compatibility level (v2 [0.10] or v3 [1.1])"},
    [IMGOPT_COMPRESSION_TYPE] = {"compression_type", IMGOPT_T_STR, false,
                                 "Compression method used for image cluster compression"},
    [IMGOPT_EXTENDED_L2] = {"extended_l2", IMGOPT_T_BOOL, false, "Extended L2 tables"},
    [IMGOPT_LAZY_REFCOUNTS] = {"lazy_refcounts", IMGOPT_T_BOOL, false, "Postpone refcount updates"},
    [IMGOPT_PREALLOCATION] = {"preallocation", IMGOPT_T_STR, true,
                              "Preallocation mode (allowed values: off, metadata, falloc, full)"},
    [IMGOPT_REFCOUNT_BITS] = {"refcount_bits", IMGOPT_T_NUM, false,
                              "Width of a reference count entry in bits"},
    [IMGOPT_SIZE] = {"size", IMGOPT_T_SIZE, true, "Virtual disk size"},
};

static const char *const type_names[] = {
    [IMGOPT_T_STR] = "str", [IMGOPT_T_BOOL] = "bool (on/off)", [IMGOPT_T_NUM] = "num",
    [IMGOPT_T_SIZE] = "size",
};

void cli_imgopts_init(cli_imgopts *o)
{
    memset(o, 0, sizeof(*o));
}

void cli_imgopts_free(cli_imgopts *o)
{
    int k;

    free(o->text);
    for (k = 0; k < IMGOPT_COUNT; k++)
        free(o->value[k]);
    cli_imgopts_init(o);
}

int cli_imgopts_append(cli_imgopts *o, const char *arg)
{
    size_t old = o->text ? strlen(o->text) : 0;
    char *text = realloc(o->text, old + strlen(arg) + 2);

    if (!text) {
        cli_errorf("out of memory");
        return -1;
    }
    if (old)
        text[old++] = ',';
    strcpy(text + old, arg);
    o->text = text;
    return 0;
}

int cli_imgopts_convert(const char *arg, void *field)
{
    return cli_imgopts_append(field, arg) < 0 ? 1 : 0;
}

int cli_imgopts_set(cli_imgopts *o, enum cli_imgopt_key key, const char *value)
{
    char *copy = strdup(value);

    if (!copy) {
        cli_errorf("out of memory");
        return -1;
    }
    free(o->value[key]);
    o->value[key] = copy;
    return 0;
}

/*
 * The next item of a comma list starting at *pos, unescaped (",," -> ",")
 * into a new string; *pos moves past it and its comma. NULL at the end or
 * when out of memory (*oom set).
 */
static char *next_item(const char **pos, bool *oom)
{
    const char *p = *pos;
    char *item, *w;

    *oom = false;
    if (*p == '\0')
        return NULL;
    item = malloc(strlen(p) + 2); /* room for parse_item's empty value */
    if (!item) {
        *oom = true;
        return NULL;
    }
    for (w = item; *p; p++) {
        if (*p == ',') {
            if (p[1] != ',') {
                p++;
                break;
            }
            p++;
        }
        *w++ = *p;
    }
    *w = '\0';
    *pos = p;
    return item;
}

bool cli_imgopts_wants_help(const cli_imgopts *o)
{
    const char *pos = o->text ? o->text : "";
    bool found = false, oom;
    char *item;

    while (!found && (item = next_item(&pos, &oom)) != NULL) {
        found = strcmp(item, "help") == 0 || strcmp(item, "?") == 0;
        free(item);
    }
    return found;
}

void cli_imgopts_print_help(qcow2_format fmt)
{
    int k;

    printf("Supported %s options:\n", qcow2_format_name(fmt));
    for (k = 0; k < IMGOPT_COUNT; k++) {
        const struct imgopt_def *d = &imgopt_defs[k];
        char left[64];

        if (fmt != QCOW2_FORMAT_QCOW2 && !d->raw)
            continue;
        snprintf(left, sizeof(left), "%s=<%s>", d->name, type_names[d->type]);
        if (k == IMGOPT_PREALLOCATION && fmt != QCOW2_FORMAT_QCOW2)
            printf("  %-22s - %s\n", left, "Preallocation mode (allowed values: off, falloc, full)");
        else
            printf("  %-22s - %s\n", left, d->help);
    }
}

/* "qsnap: FILE: message", or without "FILE: " when file is NULL (measure). */
static void __attribute__((format(printf, 2, 3))) opt_errorf(const char *file, const char *fmt, ...)
{
    va_list ap;

    fputs("qsnap: ", stderr);
    if (file)
        fprintf(stderr, "%s: ", file);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static bool parse_bool_word(const char *s, bool *out)
{
    if (strcmp(s, "on") == 0 || strcmp(s, "yes") == 0 || strcmp(s, "true") == 0) {
        *out = true;
        return true;
    }
    if (strcmp(s, "off") == 0 || strcmp(s, "no") == 0 || strcmp(s, "false") == 0) {
        *out = false;
        return true;
    }
    return false;
}

/* A plain number (decimal or 0x hex), no suffix. */
static bool parse_plain_number(const char *s, uint64_t *out)
{
    char *end;

    if (*s < '0' || *s > '9')
        return false;
    *out = strtoull(s, &end, 0);
    return *end == '\0';
}

/* Check the syntax of one key=value item and store it. */
static int parse_item(cli_imgopts *o, qcow2_format fmt, const char *file, char *item)
{
    char *eq = strchr(item, '=');
    const struct imgopt_def *d = NULL;
    bool b;
    int k;

    if (eq)
        *eq = '\0';
    for (k = 0; k < IMGOPT_COUNT; k++) {
        if (strcmp(item, imgopt_defs[k].name) == 0 &&
            (fmt == QCOW2_FORMAT_QCOW2 || imgopt_defs[k].raw)) {
            d = &imgopt_defs[k];
            break;
        }
    }
    if (!d) {
        opt_errorf(file, "Invalid parameter '%s'", item);
        return -1;
    }
    if (!eq) {
        /* qemu-img reads a bare key as an empty value. */
        eq = item + strlen(item);
        eq[1] = '\0';
    }
    switch (d->type) {
    case IMGOPT_T_STR:
        break;
    case IMGOPT_T_BOOL:
        if (!parse_bool_word(eq + 1, &b)) {
            opt_errorf(file, "Parameter '%s' expects 'on' or 'off'", d->name);
            return -1;
        }
        break;
    case IMGOPT_T_NUM:
        if (!parse_plain_number(eq + 1, &o->number[k])) {
            opt_errorf(file, "Parameter '%s' expects a number", d->name);
            return -1;
        }
        break;
    case IMGOPT_T_SIZE:
        if (cli_parse_size(eq + 1, &o->number[k]) < 0) {
            opt_errorf(file, "Parameter '%s' expects a non-negative number below 2^64",
                       d->name);
            fprintf(stderr, "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, "
                            "tera-, peta-\nand exabytes, respectively.\n");
            return -1;
        }
        break;
    }
    return cli_imgopts_set(o, (enum cli_imgopt_key)k, eq + 1);
}

int cli_imgopts_parse(cli_imgopts *o, qcow2_format fmt, const char *file)
{
    const char *pos;
    char *item;
    bool oom;
    size_t len;

    if (!o->text)
        return 0;
    len = strlen(o->text);
    if (len == 0 || o->text[len - 1] == ',') {
        cli_errorf("Invalid option list: %s", o->text);
        return -1;
    }
    pos = o->text;
    while ((item = next_item(&pos, &oom)) != NULL) {
        int rc = parse_item(o, fmt, file, item);

        free(item);
        if (rc < 0)
            return -1;
    }
    if (oom) {
        cli_errorf("out of memory");
        return -1;
    }
    return 0;
}

int cli_imgopts_apply(const cli_imgopts *o, qcow2_create_opts *out, const char *file)
{
    const char *v;

    v = o->value[IMGOPT_COMPAT];
    if (v) {
        if (strcmp(v, "0.10") == 0 || strcmp(v, "v2") == 0) {
            out->qcow2_version = 2;
        } else if (strcmp(v, "1.1") == 0 || strcmp(v, "v3") == 0) {
            out->qcow2_version = 3;
        } else {
            opt_errorf(file, "Parameter 'version' does not accept value '%s'", v);
            return -1;
        }
    }
    v = o->value[IMGOPT_COMPRESSION_TYPE];
    if (v) {
        if (strcmp(v, "zlib") == 0) {
            out->compression_type = 0;
        } else if (strcmp(v, "zstd") == 0) {
            out->compression_type = 1;
        } else {
            opt_errorf(file, "Parameter 'compression-type' does not accept value '%s'", v);
            return -1;
        }
    }
    v = o->value[IMGOPT_PREALLOCATION];
    if (v) {
        if (strcmp(v, "off") == 0) {
            out->preallocation = QCOW2_PREALLOC_OFF;
        } else if (strcmp(v, "metadata") == 0) {
            out->preallocation = QCOW2_PREALLOC_METADATA;
        } else if (strcmp(v, "falloc") == 0) {
            out->preallocation = QCOW2_PREALLOC_FALLOC;
        } else if (strcmp(v, "full") == 0) {
            out->preallocation = QCOW2_PREALLOC_FULL;
        } else {
            opt_errorf(file, "Parameter 'preallocation' does not accept value '%s'", v);
            return -1;
        }
    }
    if (o->value[IMGOPT_CLUSTER_SIZE]) {
        if (o->number[IMGOPT_CLUSTER_SIZE] > UINT32_MAX) {
            opt_errorf(file, "Cluster size must be a power of two between 512 and 2048k");
            return -1;
        }
        out->cluster_size = (uint32_t)o->number[IMGOPT_CLUSTER_SIZE];
    }
    if (o->value[IMGOPT_REFCOUNT_BITS]) {
        if (o->number[IMGOPT_REFCOUNT_BITS] > 64) {
            opt_errorf(file, "Refcount width must be a power of two and may not exceed 64 bits");
            return -1;
        }
        out->refcount_bits = (uint32_t)o->number[IMGOPT_REFCOUNT_BITS];
    }
    if (o->value[IMGOPT_EXTENDED_L2])
        parse_bool_word(o->value[IMGOPT_EXTENDED_L2], &out->extended_l2);
    if (o->value[IMGOPT_LAZY_REFCOUNTS])
        parse_bool_word(o->value[IMGOPT_LAZY_REFCOUNTS], &out->lazy_refcounts);
    if (o->value[IMGOPT_BACKING_FILE])
        out->backing_file = o->value[IMGOPT_BACKING_FILE];
    if (o->value[IMGOPT_BACKING_FMT])
        out->backing_format = o->value[IMGOPT_BACKING_FMT];
    return 0;
}

/* " key=value" when the key was given (or always, with dflt as the default). */
static void print_key(const cli_imgopts *o, enum cli_imgopt_key k, const char *dflt)
{
    const char *name = imgopt_defs[k].name;

    if (!o->value[k]) {
        if (dflt)
            printf(" %s=%s", name, dflt);
        return;
    }
    switch (imgopt_defs[k].type) {
    case IMGOPT_T_NUM:
    case IMGOPT_T_SIZE:
        printf(" %s=%" PRIu64, name, o->number[k]);
        break;
    case IMGOPT_T_STR:
    case IMGOPT_T_BOOL:
        printf(" %s=%s", name, o->value[k]);
        break;
    }
}

void cli_imgopts_print_formatting(const cli_imgopts *o, qcow2_format fmt, const char *file,
                                  uint64_t size)
{
    printf("Formatting '%s', fmt=%s", file, qcow2_format_name(fmt));
    if (fmt == QCOW2_FORMAT_QCOW2) {
        print_key(o, IMGOPT_CLUSTER_SIZE, "65536");
        print_key(o, IMGOPT_EXTENDED_L2, "off");
        print_key(o, IMGOPT_PREALLOCATION, NULL);
        print_key(o, IMGOPT_COMPRESSION_TYPE, "zlib");
        printf(" size=%" PRIu64, size);
        print_key(o, IMGOPT_COMPAT, NULL);
        print_key(o, IMGOPT_BACKING_FILE, NULL);
        print_key(o, IMGOPT_BACKING_FMT, NULL);
        print_key(o, IMGOPT_LAZY_REFCOUNTS, "off");
        print_key(o, IMGOPT_REFCOUNT_BITS, "16");
    } else {
        printf(" size=%" PRIu64, size);
        print_key(o, IMGOPT_PREALLOCATION, NULL);
    }
    printf("\n");
}
