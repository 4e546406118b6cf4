/*
 * Memory for the library. Every allocation goes through these wrappers so
 * that one place can count, cap or fail them (tests), and so that a size
 * computed from image bytes is never passed to malloc unchecked elsewhere.
 */
#include "qcow2_int.h"

void *qcow2__malloc(size_t len)
{
    return malloc(len ? len : 1);
}

void *qcow2__calloc(size_t n, size_t len)
{
    return calloc(n ? n : 1, len ? len : 1);
}

void *qcow2__realloc(void *p, size_t len)
{
    return realloc(p, len ? len : 1);
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
