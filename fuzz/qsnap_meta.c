/*
 * Checks that the qsnap store metadata reader (qsnap__model_read: the binary
 * form of store version 3, or the text form of versions 1 and 2) takes any
 * byte string without crashing, leaking or reading outside it, and that
 * whatever it accepts round-trips through both forms: the binary form of the
 * model reads back to the same text, and format(parse(format(m))) equals
 * format(m).
 */
#include <stdlib.h>
#include <string.h>

#include "qsnap_int.h"
#include "fuzz_helpers.h"
#include "qsnap_fuzz.h"

static int read_meta(struct qsnap__model *m, const void *data, size_t size)
{
    return fuzz_read_meta(m, data, size, "fuzz.meta", true);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct qsnap__model m, m2, m3;
    char *text = NULL, *text2 = NULL, *text3 = NULL, *bin = NULL;
    size_t blen = 0;
    int rc;

    rc = read_meta(&m, data, size);
    if (rc != 0) {
        /* A refused file leaves an empty model behind. */
        FUZZ_ASSERT(m.nl == 0 && m.nn == 0 && m.nb == 0 && m.disk == NULL && m.pool == NULL);
        return 0;
    }
    FUZZ_ASSERT(m.disk != NULL);
    FUZZ_ASSERT(m.nl <= QSNAP_MAX_ITEMS && m.nn <= QSNAP_MAX_ITEMS && m.nb <= QSNAP_MAX_ITEMS);

    rc = qsnap__model_format(&m, &text);
    FUZZ_ASSERT(rc == 0 && text != NULL);
    rc = qsnap__model_parse(&m2, text, strlen(text), "fuzz.meta (formatted)");
    FUZZ_ASSERT_MSG(rc == 0, "the formatted model does not parse:\n%s", text);
    FUZZ_ASSERT(m2.nl == m.nl && m2.nn == m.nn && m2.nb == m.nb);
    FUZZ_ASSERT(m2.gen == m.gen && m2.seq == m.seq && strcmp(m2.disk, m.disk) == 0);
    rc = qsnap__model_format(&m2, &text2);
    FUZZ_ASSERT(rc == 0 && text2 != NULL);
    FUZZ_ASSERT_MSG(strcmp(text, text2) == 0, "round trip differs:\n%s\n---\n%s", text, text2);

    /* The binary form of what was accepted reads back to the same model. */
    rc = qsnap__model_bin_format(&m, &bin, &blen);
    FUZZ_ASSERT(rc == 0 && bin != NULL);
    rc = read_meta(&m3, bin, blen);
    FUZZ_ASSERT_MSG(rc == 0, "the binary form does not read back");
    rc = qsnap__model_format(&m3, &text3);
    FUZZ_ASSERT(rc == 0 && text3 != NULL);
    FUZZ_ASSERT_MSG(strcmp(text, text3) == 0, "binary round trip differs:\n%s\n---\n%s", text, text3);

    free(text);
    free(text2);
    free(text3);
    free(bin);
    qsnap__model_free(&m);
    qsnap__model_free(&m2);
    qsnap__model_free(&m3);
    return 0;
}
