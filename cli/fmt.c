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

/* One code point from s (n bytes left) into *cp: its length, or 0 when s is not UTF-8 there. */
static size_t utf8_next(const unsigned char *s, size_t n, uint32_t *cp)
{
    size_t len = s[0] < 0x80 ? 1 : (s[0] & 0xe0) == 0xc0 ? 2 : (s[0] & 0xf0) == 0xe0 ? 3
                                   : (s[0] & 0xf8) == 0xf0 ? 4
                                                           : 0;
    uint32_t v;

    if (!len || len > n)
        return 0;
    v = len == 1 ? s[0] : (uint32_t)(s[0] & (0x7f >> len));
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        v = v << 6 | (s[i] & 0x3f);
    }
    /* Overlong forms, surrogates and values past Unicode are not UTF-8. */
    if ((len == 2 && v < 0x80) || (len == 3 && v < 0x800) || (len == 4 && v < 0x10000) ||
        (v >= 0xd800 && v <= 0xdfff) || v > 0x10ffff)
        return 0;
    *cp = v;
    return len;
}

/* Code point ranges, from Unicode's character properties. */
struct cp_range {
    uint32_t lo, hi;
};

/* Combining marks and format characters: no column of their own. */
static const struct cp_range zero_width[] = {
    {0x0300, 0x036f}, {0x0483, 0x0489}, {0x0591, 0x05bd}, {0x0610, 0x061a}, {0x064b, 0x065f},
    {0x0900, 0x0902}, {0x093a, 0x093a}, {0x093c, 0x093c}, {0x0941, 0x0948}, {0x094d, 0x094d},
    {0x0951, 0x0957}, {0x0962, 0x0963},
    {0x0e31, 0x0e31}, {0x0e34, 0x0e3a}, {0x0e47, 0x0e4e}, {0x1ab0, 0x1aff}, {0x1dc0, 0x1dff},
    {0x200b, 0x200f}, {0x202a, 0x202e}, {0x2060, 0x2064}, {0x20d0, 0x20ff}, {0xfe00, 0xfe0f},
    {0xfe20, 0xfe2f}, {0xfeff, 0xfeff}, {0xe0100, 0xe01ef},
};

/* East Asian wide and fullwidth characters, and emoji: two columns. */
static const struct cp_range double_width[] = {
    {0x1100, 0x115f},   {0x2e80, 0x303e},   {0x3041, 0x33ff},   {0x3400, 0x4dbf},
    {0x4e00, 0x9fff},   {0xa000, 0xa4cf},   {0xa960, 0xa97f},   {0xac00, 0xd7a3},
    {0xf900, 0xfaff},   {0xfe10, 0xfe19},   {0xfe30, 0xfe6f},   {0xff00, 0xff60},
    {0xffe0, 0xffe6},   {0x1f004, 0x1f004}, {0x1f0cf, 0x1f0cf}, {0x1f18e, 0x1f18e},
    {0x1f191, 0x1f19a}, {0x1f200, 0x1f2ff}, {0x1f300, 0x1f64f}, {0x1f680, 0x1f6ff},
    {0x1f7e0, 0x1f7eb}, {0x1f900, 0x1f9ff}, {0x1fa70, 0x1faff}, {0x20000, 0x2fffd},
    {0x30000, 0x3fffd},
};

static bool in_ranges(uint32_t cp, const struct cp_range *r, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (cp >= r[i].lo && cp <= r[i].hi)
            return true;
    return false;
}

size_t cli_text_width(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s), w = 0;

    while (n) {
        uint32_t cp = 0;
        size_t len = utf8_next(p, n, &cp);
        if (!len) {
            len = 1; /* a byte that is not UTF-8: one column, as a terminal shows a '?' */
            w++;
        } else if (in_ranges(cp, zero_width, sizeof(zero_width) / sizeof(zero_width[0]))) {
            /* nothing */
        } else {
            w += in_ranges(cp, double_width, sizeof(double_width) / sizeof(double_width[0])) ? 2
                                                                                              : 1;
        }
        p += len;
        n -= len;
    }
    return w;
}

void cli_put_padded(FILE *f, const char *s, size_t width)
{
    size_t w = cli_text_width(s);

    fputs(s, f);
    for (; w < width; w++)
        fputc(' ', f);
}
