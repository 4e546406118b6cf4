/*
 * Checks that the qsnap store metadata loader (qsnap__model_parse) takes any
 * byte string without crashing, leaking or overrunning its line buffer, and
 * that whatever it accepts formats (qsnap__model_format) to a text that
 * parses again to the same text: format(parse(format(parse(x)))) equals
 * format(parse(x)).
 */
#include <stdlib.h>
#include <string.h>

#include "qsnap_int.h"
#include "fuzz_helpers.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct qsnap__model m, m2;
    char *text = NULL, *text2 = NULL;
    int rc;

    rc = qsnap__model_parse(&m, (const char *)data, size, "fuzz.meta");
    if (rc != 0) {
        /* A refused file leaves an empty model behind. */
        FUZZ_ASSERT(m.nl == 0 && m.nn == 0 && m.nb == 0 && m.disk == NULL);
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

    free(text);
    free(text2);
    qsnap__model_free(&m);
    qsnap__model_free(&m2);
    return 0;
}
