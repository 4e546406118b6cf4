/*
 * Memory for the library. Every allocation goes through these wrappers so
 * that one place can count, cap or fail them (tests), and so that a size
 * computed from image bytes is never passed to malloc unchecked elsewhere.
 */
#include "qcow2_int.h"

/* Tests only: allocations of more than this many bytes fail (0: none do). */
size_t qcow2__fail_alloc_over;

static bool refused(size_t n, size_t len)
{
    return qcow2__fail_alloc_over && (len && n > qcow2__fail_alloc_over / len);
}

void *qcow2__malloc(size_t len)
{
    return refused(1, len) ? NULL : malloc(len ? len : 1);
}

void *qcow2__calloc(size_t n, size_t len)
{
    return refused(n, len) ? NULL : calloc(n ? n : 1, len ? len : 1);
}

void *qcow2__realloc(void *p, size_t len)
{
    return refused(1, len) ? NULL : realloc(p, len ? len : 1);
}

char *qcow2__strdup(const char *s)
{
    return qcow2__strndup(s, strlen(s));
}

char *qcow2__strndup(const char *s, size_t len)
{
    char *d = qcow2__malloc(len + 1);

    if (d) {
        memcpy(d, s, len);
        d[len] = '\0';
    }
    return d;
}

void qcow2__free(void *p)
{
    free(p);
}
