/*
 * The JSON writer behind `--output=json` (see json.h). It escapes strings
 * and lays out nesting; what the documents contain is up to the commands.
 */
#include <assert.h>
#include <inttypes.h>

#include "json.h"

void cli_json_init(cli_json *j, FILE *out)
{
    j->out = out;
    j->depth = 0;
    j->has_items[0] = false;
}

void cli_json_write_string(FILE *out, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;

    fputc('"', out);
    for (; *p; p++) {
        switch (*p) {
        case '"':
            fputs("\\\"", out);
            break;
        case '\\':
            fputs("\\\\", out);
            break;
        case '\b':
            fputs("\\b", out);
            break;
        case '\f':
            fputs("\\f", out);
            break;
        case '\n':
            fputs("\\n", out);
            break;
        case '\r':
            fputs("\\r", out);
            break;
        case '\t':
            fputs("\\t", out);
            break;
        default:
            if (*p < 0x20 || *p == 0x7f)
                fprintf(out, "\\u%04x", *p);
            else
                fputc(*p, out);
        }
    }
    fputc('"', out);
}

/* Separator, newline, indentation and key of the next member. */
static void member(cli_json *j, const char *key)
{
    if (j->depth > 0) {
        fputs(j->has_items[j->depth] ? ",\n" : "\n", j->out);
        j->has_items[j->depth] = true;
        fprintf(j->out, "%*s", 4 * j->depth, "");
    }
    if (key) {
        cli_json_write_string(j->out, key);
        fputs(": ", j->out);
    }
}

static void open_level(cli_json *j, const char *key, char c)
{
    member(j, key);
    fputc(c, j->out);
    assert(j->depth + 1 < CLI_JSON_MAX_DEPTH);
    j->depth++;
    j->has_items[j->depth] = false;
}

static void close_level(cli_json *j, char c)
{
    assert(j->depth > 0);
    if (j->has_items[j->depth])
        fprintf(j->out, "\n%*s", 4 * (j->depth - 1), "");
    j->depth--;
    fputc(c, j->out);
}

void cli_json_begin_object(cli_json *j, const char *key)
{
    open_level(j, key, '{');
}

void cli_json_end_object(cli_json *j)
{
    close_level(j, '}');
}

void cli_json_begin_array(cli_json *j, const char *key)
{
    open_level(j, key, '[');
}

void cli_json_end_array(cli_json *j)
{
    close_level(j, ']');
}

void cli_json_string(cli_json *j, const char *key, const char *value)
{
    member(j, key);
    cli_json_write_string(j->out, value);
}

void cli_json_uint(cli_json *j, const char *key, uint64_t value)
{
    member(j, key);
    fprintf(j->out, "%" PRIu64, value);
}

void cli_json_int(cli_json *j, const char *key, int64_t value)
{
    member(j, key);
    fprintf(j->out, "%" PRId64, value);
}

void cli_json_bool(cli_json *j, const char *key, bool value)
{
    member(j, key);
    fputs(value ? "true" : "false", j->out);
}

void cli_json_finish(cli_json *j)
{
    fputc('\n', j->out);
}
