/*
 * Tests for qcow2/error.c: qcow2_printable() (control bytes become '?', a
 * clean string comes back as itself, in place or into a buffer, cut to the
 * buffer) and the error record, whose message is made printable the same way.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "qcow2_int.h"

/* Every byte value from 1 to 255: exactly 0x01-0x1f and 0x7f change. */
Test(error, printable_replaces_exactly_the_control_bytes)
{
    char s[256], buf[256];
    const char *r;

    for (int i = 1; i < 256; i++)
        s[i - 1] = (char)i;
    s[255] = '\0';
    r = qcow2_printable(s, buf, sizeof(buf));
    cr_assert_eq(r, buf);
    cr_assert_eq(strlen(r), 255);
    for (int i = 1; i < 256; i++) {
        char want = (i < 0x20 || i == 0x7f) ? '?' : (char)i;
        cr_assert_eq(r[i - 1], want, "byte %#x became %#x", i, (unsigned char)r[i - 1]);
    }
    cr_assert_eq(s['\n' - 1], '\n', "the input is left alone");
}

Test(error, printable_returns_a_clean_string_itself)
{
    char buf[8] = "unused";
    const char *s = "name with spaces, \xc3\xa9 and ~";
    const char *empty = "";

    cr_assert_eq(qcow2_printable(s, buf, sizeof(buf)), s);
    cr_assert_eq(qcow2_printable(empty, buf, sizeof(buf)), empty);
    cr_assert_str_eq(buf, "unused", "buf is not written for a clean string");
}

Test(error, printable_in_place_and_cut_to_the_buffer)
{
    char s[] = "evil\nname\x1b[31m\x7f!";
    char small[6] = "xxxxx";
    const char *in = "a\tbcdefgh";

    cr_assert_eq(qcow2_printable(s, s, sizeof(s)), s);
    cr_assert_str_eq(s, "evil?name?[31m?!");
    cr_assert_eq(qcow2_printable(in, small, sizeof(small)), small);
    cr_assert_str_eq(small, "a?bcd", "cut to len - 1 bytes");
    /* len 0: nothing can be written, the string comes back unchanged. */
    cr_assert_eq(qcow2_printable(in, small, 0), in);
    cr_assert_str_eq(small, "a?bcd");
}

/* The error record's message goes through the same function. */
Test(error, messages_are_printable)
{
    int rc = qcow2__err(QCOW2_ECORRUPT, 0, "dir/a\nb.qcow2", "snapshot '%s' is bad", "x\x1b[2Jy");
    const qcow2_error *e = qcow2_error_last();

    cr_assert_eq(rc, QCOW2_ECORRUPT);
    cr_assert_eq(e->code, QCOW2_ECORRUPT);
    cr_assert_str_eq(e->message, "dir/a?b.qcow2: snapshot 'x?[2Jy' is bad");
}
