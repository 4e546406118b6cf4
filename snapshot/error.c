/*
 * The snapshot library's error record: one per thread, with a message and a
 * hint (the flag or command that gets the user further).
 */
#include <stdio.h>
#include <string.h>

#include "qsnap_int.h"

static _Thread_local char msg_buf[1024];
static _Thread_local char hint_buf[256];
static _Thread_local qsnap_error last;

int qsnap__err(int code, const char *hint, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg_buf, sizeof(msg_buf), fmt, ap);
    va_end(ap);
    snprintf(hint_buf, sizeof(hint_buf), "%s", hint ? hint : "");
    /* One line, no terminal controls: names from files and metadata are quoted. */
    qcow2_printable(msg_buf, msg_buf, sizeof(msg_buf));
    last.code = code;
    last.message = msg_buf;
    last.hint = hint_buf;
    return code;
}

int qsnap__from_qcow2(int rc, const char *hint)
{
    const qcow2_error *e = qcow2_error_last();
    int code;

    switch (QCOW2_ERROR_CLASS(rc)) {
    case QCOW2_EBUSY:
        code = QSNAP_EBUSY;
        break;
    case QCOW2_ENOTFOUND:
        code = QSNAP_ENOTFOUND;
        break;
    case QCOW2_ECORRUPT:
        code = QSNAP_EINTEGRITY;
        break;
    case QCOW2_EINVAL:
        code = QSNAP_EUSAGE;
        break;
    default:
        code = QSNAP_ERROR;
        break;
    }
    return qsnap__err(code, hint, "%s", e->message && e->message[0] ? e->message
                                                                    : qcow2_strerror(rc));
}

const qsnap_error *qsnap_error_last(void)
{
    if (!last.message) {
        last.message = msg_buf;
        last.hint = hint_buf;
    }
    return &last;
}
