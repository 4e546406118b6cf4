/*
 * Helpers shared by the fuzz targets: an always-on assertion, and a small
 * data producer that takes parameters from the tail of the input and leaves
 * the head as the image. Header-only so each target stays one file.
 */
#ifndef QCOW2_FUZZ_HELPERS_H
#define QCOW2_FUZZ_HELPERS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* The libFuzzer entry points every target defines (and the driver calls). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* Checked in every build, NDEBUG or not: a failure is a finding. */
#define FUZZ_ASSERT(cond)                                                                 \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            fprintf(stderr, "%s:%d: FUZZ_ASSERT(%s) failed\n", __FILE__, __LINE__, #cond); \
            abort();                                                                      \
        }                                                                                 \
    } while (0)

#define FUZZ_ASSERT_MSG(cond, ...)                                             \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: FUZZ_ASSERT(%s) failed: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                      \
            fputc('\n', stderr);                                               \
            abort();                                                           \
        }                                                                      \
    } while (0)

/*
 * Data producer. fuzz_producer_init() splits the input: the last
 * `param_bytes` bytes (or all of it, if the input is shorter) are the
 * parameter pool, the rest is the payload (the image). Parameters are taken
 * from the end of the pool backwards; once the pool is empty every parameter
 * is its minimum. Seeds are images with param_bytes of parameters appended.
 */
typedef struct fuzz_producer {
    const uint8_t *payload;  /* the image bytes */
    size_t payload_len;      /* bytes */
    const uint8_t *params;   /* parameter pool */
    size_t params_left;      /* bytes of the pool not yet consumed */
} fuzz_producer;

static inline void fuzz_producer_init(fuzz_producer *p, const uint8_t *data, size_t size,
                                      size_t param_bytes)
{
    size_t n = size < param_bytes ? size : param_bytes;

    p->payload = data;
    p->payload_len = size - n;
    p->params = data + (size - n);
    p->params_left = n;
}

/* Up to 8 bytes from the tail of the pool, big-endian; 0 when it is empty. */
static inline uint64_t fuzz_producer_bits(fuzz_producer *p, unsigned nbytes)
{
    uint64_t v = 0;

    while (nbytes-- > 0 && p->params_left > 0) {
        v = (v << 8) | p->params[p->params_left - 1];
        p->params_left--;
    }
    return v;
}

/* A value in [min, max] (inclusive); min when the pool is empty. */
static inline uint64_t fuzz_producer_range(fuzz_producer *p, uint64_t min, uint64_t max)
{
    uint64_t span, v;

    if (max <= min)
        return min;
    span = max - min;
    v = fuzz_producer_bits(p, span > 0xffffffffu ? 8 : span > 0xffff ? 4 : span > 0xff ? 2 : 1);
    if (span == UINT64_MAX)
        return v;
    return min + v % (span + 1);
}

static inline size_t fuzz_producer_remaining(const fuzz_producer *p)
{
    return p->params_left;
}

#endif /* QCOW2_FUZZ_HELPERS_H */
