/*
 * Tests for qcow2/hash.c: the streaming digest equals libxxhash's one-shot
 * XXH3-128 of the same bytes in canonical (big-endian) form, however the
 * input is split, and the zero-run path equals hashing a zero buffer.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "digest_model.h"
#include "qcow2_int.h"

static void reference(const void *buf, size_t len, uint8_t out[16])
{
    XXH128_canonical_t c;

    XXH128_canonicalFromHash(&c, XXH3_128bits(buf, len));
    memcpy(out, c.digest, 16);
}

static void digest_split(const uint8_t *buf, size_t len, size_t piece, uint8_t out[16])
{
    qcow2__hash *h;

    cr_assert_eq(qcow2__hash_new(&h), 0);
    for (size_t off = 0; off < len; off += piece)
        qcow2__hash_update(h, buf + off, len - off < piece ? len - off : piece);
    qcow2__hash_final(h, out);
    qcow2__hash_free(h);
}

Test(hash, empty_input_matches_known_value)
{
    /* XXH3_128bits("") = 0x99aa06d3014798d86001c324468d497f (xxHash test vectors). */
    static const uint8_t want[16] = {0x99, 0xaa, 0x06, 0xd3, 0x01, 0x47, 0x98, 0xd8,
                                     0x60, 0x01, 0xc3, 0x24, 0x46, 0x8d, 0x49, 0x7f};
    uint8_t got[16];

    digest_split(NULL, 0, 1, got);
    cr_assert_eq(memcmp(got, want, 16), 0);
}

Test(hash, streaming_matches_one_shot_for_any_split)
{
    size_t len = 300000;
    uint8_t *buf = malloc(len), want[16], got[16];
    static const size_t pieces[] = {1, 7, 64, 240, 4096, 65536, 300000};

    for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)(i * 131 + (i >> 9));
    reference(buf, len, want);
    for (size_t p = 0; p < sizeof(pieces) / sizeof(pieces[0]); p++) {
        digest_split(buf, len, pieces[p], got);
        cr_assert_eq(memcmp(got, want, 16), 0, "piece %zu", pieces[p]);
    }
    /* And a one-byte change changes the digest. */
    buf[len / 2] ^= 1;
    digest_split(buf, len, 4096, got);
    cr_assert_neq(memcmp(got, want, 16), 0);
    free(buf);
}

Test(hash, digest_is_big_endian_canonical)
{
    static const char msg[] = "qsnap";
    XXH128_hash_t v = XXH3_128bits(msg, 5);
    uint8_t got[16];

    digest_split((const uint8_t *)msg, 5, 5, got);
    cr_assert_eq(qcow2__be64(got), v.high64);
    cr_assert_eq(qcow2__be64(got + 8), v.low64);
}

Test(hash, zeroes_match_a_zero_buffer)
{
    static const uint64_t lens[] = {0, 1, 511, 65536, 65537, 1000000};
    uint8_t *zero = calloc(1, 1000000), want[16], got[16];

    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        qcow2__hash *h;

        reference(zero, (size_t)lens[i], want);
        cr_assert_eq(qcow2__hash_new(&h), 0);
        qcow2__hash_zeroes(h, lens[i]);
        qcow2__hash_final(h, got);
        qcow2__hash_free(h);
        cr_assert_eq(memcmp(got, want, 16), 0, "len %llu", (unsigned long long)lens[i]);
    }
    free(zero);
}

Test(hash, zeroes_mix_with_data)
{
    uint8_t buf[10000], want[16], got[16];
    qcow2__hash *h;

    memset(buf, 0, sizeof(buf));
    memset(buf, 0x11, 100);
    memset(buf + 9000, 0x22, 1000);
    reference(buf, sizeof(buf), want);
    cr_assert_eq(qcow2__hash_new(&h), 0);
    qcow2__hash_update(h, buf, 100);
    qcow2__hash_zeroes(h, 8900);
    qcow2__hash_update(h, buf + 9000, 1000);
    qcow2__hash_final(h, got);
    qcow2__hash_free(h);
    cr_assert_eq(memcmp(got, want, 16), 0);
}

Test(hash, free_accepts_null)
{
    qcow2__hash_free(NULL);
    cr_assert(true);
}


Test(hash, image_digest_for_any_split_of_data_and_zero_runs)
{
    static const uint64_t sizes[] = {0, 1, 4095, 4096, 4097, 70000, 3 * 4096 + 512};
    uint8_t *buf = malloc(70000), want[16], got[16];

    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        uint64_t size = sizes[k];

        for (unsigned seed = 1; seed <= 20; seed++) {
            qcow2__digest *d;
            uint64_t off = 0, x = seed * 2654435761u;

            /* Data with zero stretches of every kind (whole blocks, parts of blocks). */
            for (uint64_t i = 0; i < size; i++)
                buf[i] = ((i / 3000 + seed) % 3 == 0) ? 0 : (uint8_t)(i * 7 + seed);
            dm_image_digest(buf, size, want);
            cr_assert_eq(qcow2__digest_new(&d, size), 0);
            while (off < size) {
                uint64_t n;
                bool all_zero = true;

                x = x * 6364136223846793005ull + 1442695040888963407ull;
                n = 1 + (x >> 33) % 9000;
                if (n > size - off)
                    n = size - off;
                for (uint64_t i = 0; i < n && all_zero; i++)
                    all_zero = buf[off + i] == 0;
                if (all_zero && (x & 1))
                    qcow2__digest_zeroes(d, n);
                else
                    qcow2__digest_data(d, buf + off, (size_t)n);
                off += n;
            }
            qcow2__digest_final(d, got);
            qcow2__digest_free(d);
            cr_assert_eq(memcmp(got, want, 16), 0, "size %llu seed %u", (unsigned long long)size,
                         seed);
        }
    }
    free(buf);
}
