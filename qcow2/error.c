/*
 * The error record: one per thread, written by qcow2__err() wherever the
 * library detects a failure and read by callers through qcow2_error_last().
 * Nothing else in the library keeps mutable state outside a handle.
 */
#include <stdio.h>

#include "qcow2_int.h"

#define ERR_MSG_MAX QCOW2__ERR_MSG_MAX

static _Thread_local char err_msg[ERR_MSG_MAX];
static _Thread_local qcow2_error err_last;

int qcow2__verr(int code, int sys_errno, const char *name, const char *fmt, va_list ap)
{
    size_t n = 0;
    int w;

    if (name) {
        w = snprintf(err_msg, sizeof(err_msg), "%s: ", name);
        n = w < 0 ? 0 : qcow2__min((size_t)w, sizeof(err_msg) - 1);
    }
    w = vsnprintf(err_msg + n, sizeof(err_msg) - n, fmt, ap);
    if (w < 0)
        err_msg[n] = '\0';
    /* One line, no terminal controls: names from image bytes are quoted in messages. */
    qcow2_printable(err_msg, err_msg, sizeof(err_msg));
    err_last.code = code;
    err_last.sys_errno = sys_errno;
    err_last.message = err_msg;
    return code;
}

int qcow2__err(int code, int sys_errno, const char *name, const char *fmt, ...)
{
    va_list ap;
    int rc;

    va_start(ap, fmt);
    rc = qcow2__verr(code, sys_errno, name, fmt, ap);
    va_end(ap);
    return rc;
}

const qcow2_error *qcow2_error_last(void)
{
    if (!err_last.message)
        err_last.message = err_msg;
    return &err_last;
}

void qcow2_error_clear(void)
{
    err_last.code = 0;
    err_last.sys_errno = 0;
    err_msg[0] = '\0';
}

void qcow2__err_save(struct qcow2__err_saved *s)
{
    s->code = err_last.code;
    s->sys_errno = err_last.sys_errno;
    memcpy(s->msg, err_msg, sizeof(s->msg));
}

void qcow2__err_restore(const struct qcow2__err_saved *s)
{
    err_last.code = s->code;
    err_last.sys_errno = s->sys_errno;
    memcpy(err_msg, s->msg, sizeof(err_msg));
}

static int is_control(char c)
{
    return (unsigned char)c < 0x20 || c == 0x7f;
}

const char *qcow2_printable(const char *s, char *buf, size_t len)
{
    size_t i;

    for (i = 0; s[i] && !is_control(s[i]); i++)
        ;
    if (!s[i] || !len)
        return s;
    for (i = 0; s[i] && i + 1 < len; i++)
        buf[i] = is_control(s[i]) ? '?' : s[i];
    buf[i] = '\0';
    return buf;
}

const char *qcow2_strerror(int code)
{
    switch ((qcow2_error_code)QCOW2_ERROR_CLASS(code)) {
    case QCOW2_OK:
        return "success";
    case QCOW2_ERROR:
        return "operation failed";
    case QCOW2_ENOMEM:
        return "out of memory";
    case QCOW2_EIO:
        return "input/output error";
    case QCOW2_ENOSPC:
        return "no space left on device";
    case QCOW2_EINVAL:
        return "invalid argument";
    case QCOW2_ENOTFOUND:
        return "not found";
    case QCOW2_EEXISTS:
        return "already exists";
    case QCOW2_ECORRUPT:
        return "image is corrupt";
    case QCOW2_EUNSUPPORTED:
        return "not supported";
    case QCOW2_EREADONLY:
        return "image is read-only";
    case QCOW2_EBUSY:
        return "image is in use";
    case QCOW2_EFATAL:
        return "image handle failed earlier; close and reopen it";
    }
    return "unknown error";
}

unsigned qcow2_version_number(void)
{
    return QCOW2_VERSION_NUMBER;
}
