/*
 * Numbers in and out of qsnap: sizes with qemu's suffixes on input, and the
 * two ways qemu's tools print a size (qemu-img's "1.5 MiB" and qemu-io's
 * "1.500 MiB"), so qsnap's output lines up with theirs.
 */
#ifndef QSNAP_CLI_FMT_H
#define QSNAP_CLI_FMT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Room for any string the formatters below produce. */
#define CLI_SIZE_STR_MAX 32

/*
 * Parse a size as qemu does: decimal or 0x hex, an optional fraction (only
 * with a unit suffix), and an optional suffix b/B (bytes), k/K, m/M, g/G,
 * t/T, p/P, e/E (powers of 1024). @return 0, or -1 for a malformed or
 * overflowing number.
 */
int cli_parse_size(const char *s, uint64_t *out);

/* qemu-img's human size: "0 B", "512 B", "1.5 KiB", "3.5 GiB" (3 significant digits). */
/*
 * s for printing on one line: s itself when it has no control bytes, else a
 * copy in buf (truncated to len) with each control byte as '?'. Names read
 * from image headers are hostile input. This is qcow2_printable().
 */
const char *cli_safe(const char *s, char *buf, size_t len);

const char *cli_fmt_size(uint64_t bytes, char buf[CLI_SIZE_STR_MAX]);

/* qemu-io's size: "0 bytes", "64 KiB", "1.312 MiB" (3 decimals unless whole). */
const char *cli_fmt_size_io(double bytes, char buf[CLI_SIZE_STR_MAX]);

/*
 * Terminal columns a UTF-8 string takes: wide characters (CJK) two, combining
 * marks none, others one (wcwidth() of the C.UTF-8 locale, whatever the
 * user's; one per code point where that locale is missing). Bytes that are
 * not UTF-8 count one each.
 */
size_t cli_text_width(const char *s);

/* Print s to f, padded with spaces to width columns (cli_text_width). */
void cli_put_padded(FILE *f, const char *s, size_t width);

#endif /* QSNAP_CLI_FMT_H */
