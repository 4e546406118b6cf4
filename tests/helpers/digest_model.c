/* The digest model of digest_model.h. */
#include "digest_model.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

void dm_xxh128_be(const void *buf, size_t len, uint8_t out[16])
{
    XXH128_canonical_t c;

    XXH128_canonicalFromHash(&c, XXH3_128bits(buf, len));
    memcpy(out, c.digest, 16);
}

void dm_put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (56 - 8 * i));
}

static uint8_t *put_run(uint8_t *l, uint64_t start, uint64_t len)
{
    dm_put_be64(l, start);
    dm_put_be64(l + 8, len);
    return l + 16;
}

void dm_image_digest(const uint8_t *buf, uint64_t size, uint8_t out[16])
{
    uint8_t *m = malloc(size + 40), *list = malloc((size / 4096 + 2) * 16), *p = m, *l = list;
    uint64_t zstart = 0, zlen = 0, nruns = 0;

    if (!m || !list)
        abort(); /* test helper: no memory is a broken test machine */
    for (uint64_t b = 0; b < size; b += 4096) {
        uint64_t n = size - b < 4096 ? size - b : 4096;
        bool zero = true;

        for (uint64_t i = 0; i < n && zero; i++)
            zero = buf[b + i] == 0;
        if (zero) {
            zstart = zlen ? zstart : b;
            zlen += n;
            continue;
        }
        if (zlen) {
            l = put_run(l, zstart, zlen);
            nruns++;
            zlen = 0;
        }
        memcpy(p, buf + b, n);
        p += n;
    }
    if (zlen) {
        l = put_run(l, zstart, zlen);
        nruns++;
    }
    memcpy(p, "QSNAPDG2", 8);
    dm_put_be64(p + 8, size);
    dm_put_be64(p + 16, nruns);
    dm_xxh128_be(list, (size_t)(l - list), p + 24);
    p += 40;
    dm_xxh128_be(m, (size_t)(p - m), out);
    free(m);
    free(list);
}
