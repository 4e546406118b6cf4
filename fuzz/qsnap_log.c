/*
 * Checks the replay of a store's change log (metalog.c): change records,
 * hostile input like the meta file, applied one after another to a model.
 * The input is a sequence of change texts joined by the separator
 * "FUZZSPLT" (a change is what a meta.log record holds after its "rec"
 * header). The first part, when it starts with "base\n", is the model they
 * apply to (a meta file of any version, read as the store's open reads it:
 * not checked as a graph, a binary one with its checksum made right); else
 * the model is a small tree (fuzz/qsnap_fuzz.h).
 *
 * Every change is applied twice: to one copy of the model with one lookup
 * cache kept across all of them (qsnap__delta_apply_cached, as the log
 * reader does) and to another copy with a cache of its own each time
 * (qsnap__delta_apply). Both must give the same answer (code and message),
 * leave the same model, accepted or not, and, after each accepted change,
 * get the same verdict from qsnap__model_check. No crash, no leak, no read
 * outside the input. An accepted change to a model that passes the check is
 * also formatted back (qsnap__delta_format from the model before it to the
 * one after) and replayed onto the model before it: that gives the records
 * of the model after it again.
 */
#include <stdlib.h>
#include <string.h>

#include "qsnap_int.h"
#include "fuzz_helpers.h"
#include "qsnap_fuzz.h"

#define SEP "FUZZSPLT"
#define SEP_LEN (sizeof(SEP) - 1)
#define BASE_TAG "base\n"
#define BASE_TAG_LEN (sizeof(BASE_TAG) - 1)
#define MAX_CHANGES 64 /* each change is applied twice and compared: keep a run quick */
#define WHAT "fuzz meta.log"

/* Where the next part starts: *len is the part's length; NULL after the last. */
static const uint8_t *next_part(const uint8_t *p, const uint8_t *end, size_t *len)
{
    const uint8_t *sep = memmem(p, (size_t)(end - p), SEP, SEP_LEN);

    *len = sep ? (size_t)(sep - p) : (size_t)(end - p);
    return sep ? sep + SEP_LEN : NULL;
}

/* The message of the last error, copied (the next error writes over it). */
static void last_message(char *buf, size_t len)
{
    const char *msg = qsnap_error_last()->message;

    snprintf(buf, len, "%s", msg ? msg : "");
}

static int line_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/*
 * The same content, whatever the order of the records: the lines of the
 * text form (one per record, and the header's), sorted, are the same.
 */
static bool same_records(const struct qsnap__model *a, const struct qsnap__model *b)
{
    char *ta = NULL, *tb = NULL, **la, **lb;
    size_t na = 0, nb = 0;
    bool same;

    FUZZ_ASSERT(qsnap__model_format(a, &ta) == 0 && qsnap__model_format(b, &tb) == 0);
    for (const char *c = ta; *c; c++)
        na += *c == '\n';
    for (const char *c = tb; *c; c++)
        nb += *c == '\n';
    la = calloc(na + 1, sizeof(*la));
    lb = calloc(nb + 1, sizeof(*lb));
    FUZZ_ASSERT(la != NULL && lb != NULL);
    na = nb = 0;
    for (char *t = strtok(ta, "\n"); t; t = strtok(NULL, "\n"))
        la[na++] = t;
    for (char *t = strtok(tb, "\n"); t; t = strtok(NULL, "\n"))
        lb[nb++] = t;
    qsort(la, na, sizeof(*la), line_cmp);
    qsort(lb, nb, sizeof(*lb), line_cmp);
    same = na == nb;
    for (size_t i = 0; same && i < na; i++)
        same = !strcmp(la[i], lb[i]);
    free(la);
    free(lb);
    free(ta);
    free(tb);
    return same;
}

/*
 * The change from `before` to `after` (both passing the check), formatted
 * and replayed onto `before`, gives `after`'s records. qsnap__delta_format
 * says when its text cannot give them (exact false): the save then writes
 * the whole file, so nothing is asserted. The order of the layers and nodes
 * may still differ (a hostile change can move any record with a place line,
 * and a change text places only new ones): the save compares the replayed
 * model with the one it saves and writes the whole file when they differ.
 */
static void check_round_trip(const struct qsnap__model *before, const struct qsnap__model *after)
{
    struct qsnap__model again;
    char *text = NULL;
    bool exact = false;
    int rc;

    rc = qsnap__delta_format(before, after, &text, &exact);
    FUZZ_ASSERT(rc == 0);
    if (!exact) {
        free(text);
        return;
    }
    FUZZ_ASSERT(text != NULL);
    FUZZ_ASSERT(qsnap__model_clone(&again, before) == 0);
    rc = qsnap__delta_apply(&again, text, strlen(text), "fuzz formatted change");
    FUZZ_ASSERT_MSG(rc == 0, "a formatted change is refused: %s\n%s",
                    qsnap_error_last()->message, text);
    FUZZ_ASSERT_MSG(same_records(&again, after),
                    "a formatted change replayed gives other records:\n%s", text);
    qsnap__model_free(&again);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *p = data, *end = data + size;
    struct qsnap__model cached, plain;
    struct qsnap__apply_cache *c;
    bool ok_before;
    size_t len;
    int rc;

    if (size >= BASE_TAG_LEN && !memcmp(data, BASE_TAG, BASE_TAG_LEN)) {
        const uint8_t *next = next_part(p + BASE_TAG_LEN, end, &len);
        if (fuzz_read_meta(&cached, p + BASE_TAG_LEN, len, "fuzz meta", false) != 0)
            return 0;
        p = next;
    } else {
        rc = qsnap__model_parse(&cached, qsnap_log_base, sizeof(qsnap_log_base) - 1, "fuzz base");
        FUZZ_ASSERT_MSG(rc == 0, "the built-in base: %s", qsnap_error_last()->message);
    }
    FUZZ_ASSERT(qsnap__model_clone(&plain, &cached) == 0);
    c = qsnap__apply_cache_new();
    FUZZ_ASSERT(c != NULL);
    ok_before = qsnap__model_check(&plain, "fuzz base") == 0;

    for (unsigned k = 0; p && k < MAX_CHANGES; k++) {
        const uint8_t *next = next_part(p, end, &len);
        char *text = malloc(len ? len : 1); /* exactly the part: a read past it is found */
        char msg_cached[1024], msg_plain[1024];
        struct qsnap__model before;
        int a, b;

        FUZZ_ASSERT(text != NULL);
        memcpy(text, p, len);
        FUZZ_ASSERT(qsnap__model_clone(&before, &plain) == 0);

        a = qsnap__delta_apply_cached(&cached, text, len, WHAT, c);
        last_message(msg_cached, sizeof(msg_cached));
        b = qsnap__delta_apply(&plain, text, len, WHAT);
        last_message(msg_plain, sizeof(msg_plain));
        FUZZ_ASSERT_MSG(a == b, "change %u: %d with the kept cache (%s), %d without (%s)", k, a,
                        a ? msg_cached : "", b, b ? msg_plain : "");
        if (a != 0) {
            FUZZ_ASSERT_MSG(!strcmp(msg_cached, msg_plain),
                            "change %u: refused as \"%s\" with the kept cache, \"%s\" without",
                            k, msg_cached, msg_plain);
            FUZZ_ASSERT(a == QSNAP_EINTEGRITY || a == QSNAP_ERROR);
        }
        /* Accepted or not (a refused change may have done part of its work), the same. */
        FUZZ_ASSERT_MSG(qsnap__model_equal(&cached, &plain),
                        "change %u (rc %d): the model differs with the kept cache", k, a);
        if (a == 0) {
            int ca = qsnap__model_check(&cached, WHAT), cb;
            last_message(msg_cached, sizeof(msg_cached));
            cb = qsnap__model_check(&plain, WHAT);
            last_message(msg_plain, sizeof(msg_plain));
            FUZZ_ASSERT_MSG(ca == cb && (ca == 0 || !strcmp(msg_cached, msg_plain)),
                            "change %u: the check says %d (%s) with the kept cache, %d (%s) "
                            "without", k, ca, msg_cached, cb, msg_plain);
            if (ok_before && ca == 0)
                check_round_trip(&before, &plain);
            ok_before = ca == 0;
        } else {
            ok_before = qsnap__model_check(&plain, WHAT) == 0;
        }
        qsnap__model_free(&before);
        free(text);
        p = next;
    }

    qsnap__apply_cache_free(c);
    qsnap__model_free(&cached);
    qsnap__model_free(&plain);
    return 0;
}
