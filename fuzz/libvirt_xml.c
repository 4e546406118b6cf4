/*
 * Checks that the XML subset reader behind qsnap adopt and qsnap libvirt-xml
 * (qsnap__xml_parse) takes any byte string without crashing, leaking or
 * recursing without bound, and that whatever it accepts writes
 * (qsnap__xml_write) to a document that parses again and writes to the same
 * bytes: write(parse(write(parse(x)))) equals write(parse(x)).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qsnap_int.h"
#include "xml_int.h"
#include "fuzz_helpers.h"

static char *serialize(const struct qsnap__xml *e, size_t *len)
{
    char *buf = NULL;
    FILE *f = open_memstream(&buf, len);

    FUZZ_ASSERT(f != NULL);
    qsnap__xml_write(f, e);
    FUZZ_ASSERT(fclose(f) == 0 && buf != NULL);
    return buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct qsnap__xml *a = NULL, *b = NULL;
    char *t1, *t2;
    size_t l1, l2;
    int rc;

    rc = qsnap__xml_parse(&a, (const char *)data, size, "fuzz.xml");
    if (rc != 0) {
        FUZZ_ASSERT(a == NULL);
        FUZZ_ASSERT(rc == QSNAP_EUSAGE || rc == QSNAP_ERROR);
        return 0;
    }
    FUZZ_ASSERT(a != NULL && a->name != NULL);
    (void)qsnap__xml_attr(a, "name");
    free(qsnap__xml_text(a));
    t1 = serialize(a, &l1);
    rc = qsnap__xml_parse(&b, t1, l1, "fuzz.xml (written)");
    FUZZ_ASSERT_MSG(rc == 0, "the written document does not parse:\n%s", t1);
    t2 = serialize(b, &l2);
    FUZZ_ASSERT_MSG(l1 == l2 && memcmp(t1, t2, l1) == 0, "round trip differs:\n%s\n---\n%s", t1,
                    t2);
    free(t1);
    free(t2);
    qsnap__xml_free(a);
    qsnap__xml_free(b);
    return 0;
}
