/*
 * Parsing and printing of sizes for the qsnap command line (see fmt.h).
 * Pure string work: nothing here knows about image formats.
 */
#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qcow2/qcow2.h>

#include "fmt.h"

static const char *const iec_units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};

/* The power of 1024 a suffix letter stands for, or -1. */
static int suffix_shift(char c)
{
    switch (tolower((unsigned char)c)) {
    case 'b':
        return 0;
    case 'k':
        return 10;
    case 'm':
        return 20;
    case 'g':
        return 30;
    case 't':
        return 40;
    case 'p':
        return 50;
    case 'e':
        return 60;
    default:
        return -1;
    }
}

int cli_parse_size(const char *s, uint64_t *out)
{
    const char *p = s;
    char *end;
    uint64_t whole;
    double frac = 0.0;
    bool hex, has_frac = false;
    int shift = 0;

    while (isspace((unsigned char)*p))
        p++;
    if (*p == '+')
        p++;
    if (!isdigit((unsigned char)*p))
        return -1;
    hex = p[0] == '0' && (p[1] == 'x' || p[1] == 'X');
    errno = 0;
    whole = strtoull(p, &end, hex ? 16 : 10);
    if (errno || end == p + (hex ? 2 : 0))
        return -1;
    if (!hex && *end == '.') {
        const char *f = end;

        frac = strtod(f, &end);
        if (end == f + 1)
            return -1;
        has_frac = true;
    }
    if (*end) {
        shift = suffix_shift(*end);
        if (shift < 0 || end[1] != '\0')
            return -1;
    }
    /* As qemu: a fraction needs a suffix, unless it is zero ("1024.0"). */
    if (has_frac && shift == 0 && frac != 0.0)
        return -1;
    if (shift && whole > (UINT64_MAX >> shift))
        return -1;
    whole <<= shift;
    if (has_frac) {
        double extra = frac * (double)(1ull << shift);

        if ((double)(UINT64_MAX - whole) < extra)
            return -1;
        whole += (uint64_t)extra;
    }
    *out = whole;
    return 0;
}

const char *cli_fmt_size(uint64_t bytes, char buf[CLI_SIZE_STR_MAX])
{
    unsigned unit = 0;
    uint64_t v = bytes;

    while (v >= 1024 && unit + 1 < sizeof(iec_units) / sizeof(iec_units[0])) {
        v >>= 10;
        unit++;
    }
    snprintf(buf, CLI_SIZE_STR_MAX, "%0.3g %s",
             (double)bytes / (double)(1ull << (10 * unit)), iec_units[unit]);
    return buf;
}

const char *cli_fmt_size_io(double bytes, char buf[CLI_SIZE_STR_MAX])
{
    static const char *const io_units[] = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    unsigned unit = 0;
    double v = bytes;
    char *dot;
    size_t i;

    while (v >= 1024.0 && unit + 1 < sizeof(io_units) / sizeof(io_units[0])) {
        v /= 1024.0;
        unit++;
    }
    snprintf(buf, CLI_SIZE_STR_MAX, unit ? "%.3f %s" : "%f %s", v, io_units[unit]);
    /* A whole number loses its ".000" (qemu-io prints "64 KiB", "1.500 MiB"). */
    dot = strchr(buf, '.');
    if (dot) {
        for (i = 1; dot[i] == '0'; i++)
            ;
        if (dot[i] == ' ')
            memmove(dot, dot + i, strlen(dot + i) + 1);
    }
    return buf;
}

const char *cli_safe(const char *s, char *buf, size_t len)
{
    return qcow2_printable(s, buf, len);
}
