/*
 * A streaming JSON writer that prints the way qemu-img pretty-prints its
 * --output=json: four spaces per level, "key": value, one member per line.
 * Keys are written in the order the caller emits them.
 */
#ifndef QSNAP_CLI_JSON_H
#define QSNAP_CLI_JSON_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define CLI_JSON_MAX_DEPTH 16

typedef struct cli_json {
    FILE *out;                           /* where the text goes */
    int depth;                           /* open objects and arrays */
    bool has_items[CLI_JSON_MAX_DEPTH];  /* per level: a member was written */
} cli_json;

void cli_json_init(cli_json *j, FILE *out);

/* key is NULL inside arrays and at the top level. */
void cli_json_begin_object(cli_json *j, const char *key);
void cli_json_end_object(cli_json *j);
void cli_json_begin_array(cli_json *j, const char *key);
void cli_json_end_array(cli_json *j);
void cli_json_string(cli_json *j, const char *key, const char *value);
void cli_json_uint(cli_json *j, const char *key, uint64_t value);
void cli_json_int(cli_json *j, const char *key, int64_t value);
void cli_json_bool(cli_json *j, const char *key, bool value);

/* Finish the document with a newline. */
void cli_json_finish(cli_json *j);

/* Write s as a quoted JSON string. */
void cli_json_write_string(FILE *out, const char *s);

#endif /* QSNAP_CLI_JSON_H */
