/*
 * Tests for qcow2/header.c: parsing and validation of the header and its
 * extensions, and serialization of cluster 0. Images are made by the library
 * in a memfs and damaged by poking header bytes; each refusal must return the
 * documented code with a one-line message naming the file and the field.
 * A few white-box tests call qcow2__header_parse() directly for the checks
 * that open_qcow2() already makes before it (they guard other callers), and
 * one test checks serialization byte for byte against a qemu-img-made header.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2_int.h"
#include "qemu_oracle.h"
#include "reader_fixture.h"

#define IMG "/m/h.qcow2"
#define CS 65536u

static memfs *fs;

static void setup(void)
{
    fs = memfs_new();
    cr_assert_not_null(fs);
    cr_assert_eq(rfx_create_simple(fs, IMG, 1u << 20, CS), 0, "%s", rfx_msg());
}

static void teardown(void)
{
    memfs_free(fs);
}

TestSuite(header, .init = setup, .fini = teardown, .timeout = 30);

/* Open IMG; on success close it again. Returns the code. */
static int try_open(void)
{
    qcow2_image *img = NULL;
    int rc;

    qcow2_error_clear();
    rc = rfx_open(fs, IMG, 0, 0, &img);
    if (rc == 0)
        qcow2_image_close(img);
    else
        cr_assert_null(img);
    return rc;
}

/* Assert the open fails with code and a one-line message naming IMG and each needle. */
#define assert_refused(want_, ...)                                                                  \
    do {                                                                                           \
        int rc_ = try_open();                                                                      \
        const char *m_ = rfx_msg();                                                                \
        cr_assert_eq(rc_, (want_), "rc %d (%s), expected %d", rc_, m_, (want_));                     \
        cr_assert_eq(qcow2_error_last()->code, (want_));                                            \
        cr_assert(rfx_has_all(m_, IMG, __VA_ARGS__, (const char *)NULL), "message: %s", m_);        \
        cr_assert_null(strchr(m_, '\n'), "message is not one line: %s", m_);                      \
    } while (0)

/* The extension area of a library-made v3 image starts at 112 (feature table). */
static void put_ext(uint64_t off, uint32_t type, const void *data, uint32_t len)
{
    rfx_poke32(fs, IMG, off, type);
    rfx_poke32(fs, IMG, off + 4, len);
    if (len)
        rfx_poke(fs, IMG, off + 8, data, len);
}

/* Replace the extension list with exts laid out from 112, then an end marker. */
struct ext {
    uint32_t type;
    uint32_t len;
    const void *data;
};

static void set_exts(const struct ext *e, size_t n)
{
    uint64_t off = 112;
    uint8_t zero[1024] = {0};

    rfx_poke(fs, IMG, 112, zero, sizeof(zero)); /* wipe the old list */
    for (size_t i = 0; i < n; i++) {
        put_ext(off, e[i].type, e[i].data, e[i].len);
        off += 8 + ((e[i].len + 7u) & ~7u);
    }
    put_ext(off, 0, NULL, 0);
}

/* ---- accepted images -------------------------------------------------------- */

Test(header, library_image_parses_with_its_feature_table)
{
    qcow2_image *img;

    cr_assert_eq(rfx_open(fs, IMG, 0, 0, &img), 0, "%s", rfx_msg());
    cr_assert_eq(img->hdr.version, 3);
    cr_assert_eq(img->cluster_size, CS);
    cr_assert_eq(img->hdr.header_len, 112);
    cr_assert_eq(img->refcount_bits, 16);
    cr_assert_eq(qcow2_image_size(img), 1u << 20);
    cr_assert_eq(img->nb_features, 8);
    cr_assert_str_eq(qcow2__feature_name(img, 0, 0), "dirty bit");
    cr_assert_str_eq(qcow2__feature_name(img, 1, 0), "lazy refcounts");
    cr_assert_str_eq(qcow2__feature_name(img, 2, 1), "raw external data");
    cr_assert_null(qcow2__feature_name(img, 0, 9));
    cr_assert_eq(img->ext_end, 0x1f8 + 8); /* the end marker included */
    cr_assert_null(img->backing_name);
    qcow2_image_close(img);
}

Test(header, v2_header_has_fixed_length_and_16_bit_refcounts)
{
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;
    qcow2_image *img;

    co.size = 1u << 20;
    co.qcow2_version = 2;
    cr_assert_eq(rfx_create(fs, IMG, &co), 0, "%s", rfx_msg());
    /* Bytes 72..104 of a v2 image are not header fields: garbage there must not matter. */
    rfx_poke32(fs, IMG, 96, 9); /* would be refcount_order 9 in v3 */
    cr_assert_eq(rfx_open(fs, IMG, 0, 0, &img), 0, "%s", rfx_msg());
    cr_assert_eq(img->hdr.version, 2);
    cr_assert_eq(img->hdr.header_len, 72);
    cr_assert_eq(img->refcount_bits, 16);
    cr_assert_eq(img->hdr.incompat, 0);
    qcow2_image_close(img);
}

Test(header, partial_last_sector_of_the_virtual_size_is_dropped)
{
    qcow2_image *img;

    rfx_poke64(fs, IMG, 24, (1u << 20) - 100);
    cr_assert_eq(rfx_open(fs, IMG, 0, 0, &img), 0, "%s", rfx_msg());
    cr_assert_eq(qcow2_image_size(img), (1u << 20) - 512);
    cr_assert_eq(img->hdr.size, (1u << 20) - 100);
    qcow2_image_close(img);
}

Test(header, unknown_extension_is_kept_verbatim_in_file_order)
{
    const char a[] = "hello", b[] = "0123456789abcdef";
    struct ext e[] = {{0x12345678, 5, a}, {0x0badf00d, 16, b}};
    qcow2_image *img;

    set_exts(e, 2);
    cr_assert_eq(rfx_open(fs, IMG, 0, 0, &img), 0, "%s", rfx_msg());
    cr_assert_eq(img->nb_exts, 2);
    cr_assert_eq(img->exts[0].type, 0x12345678);
    cr_assert_eq(img->exts[0].len, 5);
    cr_assert_eq(memcmp(img->exts[0].data, "hello", 5), 0);
    cr_assert_eq(img->exts[1].type, 0x0badf00d);
    cr_assert_eq(memcmp(img->exts[1].data, b, 16), 0);
    cr_assert_eq(img->ext_end, 112 + 16 + 24 + 8);
    cr_assert_eq(img->nb_features, 0);
    qcow2_image_close(img);
}

Test(header, extension_list_may_end_without_marker_when_the_area_is_full)
{
    qcow2_image *img;
    char fill[64];

    /* Backing name at 152: the area [112,152) holds one 32-byte extension and no marker. */
    rfx_set_backing(fs, IMG, NULL, NULL, 0);
    memset(fill, 'x', sizeof(fill));
    set_exts(NULL, 0);
    put_ext(112, 0x11111111, fill, 32);
    rfx_poke(fs, IMG, 152, "nothing-here", 12);
    rfx_poke64(fs, IMG, 8, 152);
    rfx_poke32(fs, IMG, 16, 12);
    {
        qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
        o.flags = QCOW2_OPEN_NO_BACKING;
        cr_assert_eq(rfx_open_opts(fs, IMG, &o, &img), 0, "%s", rfx_msg());
    }
    cr_assert_eq(img->nb_exts, 1);
    cr_assert_eq(img->ext_end, 152);
    cr_assert_str_eq(img->backing_name, "nothing-here");
    qcow2_image_close(img);
}

Test(header, feature_names_are_made_printable)
{
    uint8_t ft[48] = {0};
    qcow2_image *img;
    struct ext e[1] = {{0x6803f857, 48, ft}};

    ft[0] = 0;
    ft[1] = 7;
    memcpy(ft + 2, "evil\nname\x1b[31m\xff", 15);
    set_exts(e, 1);
    cr_assert_eq(rfx_open(fs, IMG, 0, 0, &img), 0, "%s", rfx_msg());
    cr_assert_str_eq(qcow2__feature_name(img, 0, 7), "evil?name?[31m?");
    qcow2_image_close(img);
}

Test(header, header_tail_past_112_bytes_is_kept)
{
    qcow2_image *img;

    set_exts(NULL, 0);
    rfx_poke32(fs, IMG, 100, 128);
    rfx_poke(fs, IMG, 112, "TAILTAILtailtail", 16);
    rfx_poke64(fs, IMG, 128, 0); /* end marker after the longer header */
    cr_assert_eq(rfx_open(fs, IMG, 0, 0, &img), 0, "%s", rfx_msg());
    cr_assert_eq(img->hdr.header_len, 128);
    cr_assert_eq(img->hdr.tail_len, 16);
    cr_assert_eq(memcmp(img->hdr.tail, "TAILTAILtailtail", 16), 0);
    qcow2_image_close(img);
}

/* ---- refused images: magic, version, geometry --------------------------------- */

Test(header, short_file_is_too_short_for_a_header)
{
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img;

    rfx_resize(fs, IMG, 50);
    o.format = QCOW2_FORMAT_QCOW2;
    cr_assert_eq(rfx_open_opts(fs, IMG, &o, &img), QCOW2_ECORRUPT);
    cr_assert(rfx_has_all(rfx_msg(), IMG, "too short", "50 bytes", NULL), "%s", rfx_msg());
}

Test(header, v3_header_cut_before_104_bytes_is_refused)
{
    rfx_resize(fs, IMG, 100);
    assert_refused(QCOW2_ECORRUPT, "too short", "v3");
}

Test(header, bad_magic_when_qcow2_is_forced)
{
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img;

    rfx_poke32(fs, IMG, 0, 0x514649fa);
    o.format = QCOW2_FORMAT_QCOW2;
    cr_assert_eq(rfx_open_opts(fs, IMG, &o, &img), QCOW2_ECORRUPT);
    cr_assert(rfx_has_all(rfx_msg(), IMG, "magic", NULL), "%s", rfx_msg());
}

Test(header, versions_other_than_2_and_3_are_unsupported)
{
    static const uint32_t bad[] = {0, 1, 4, 0xffffffffu};

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char want[32];
        rfx_poke32(fs, IMG, 4, bad[i]);
        snprintf(want, sizeof(want), "version %u", bad[i]);
        assert_refused(QCOW2_EUNSUPPORTED, want);
    }
}

Test(header, cluster_bits_outside_9_to_21_are_refused)
{
    rfx_poke32(fs, IMG, 20, 8);
    assert_refused(QCOW2_ECORRUPT, "cluster_bits 8");
    rfx_poke32(fs, IMG, 20, 22);
    assert_refused(QCOW2_ECORRUPT, "cluster_bits 22");
}

Test(header, header_length_must_be_at_least_104_and_a_multiple_of_8)
{
    rfx_poke32(fs, IMG, 100, 96);
    assert_refused(QCOW2_ECORRUPT, "header_length 96");
    rfx_poke32(fs, IMG, 100, 108);
    assert_refused(QCOW2_ECORRUPT, "header_length 108");
}

Test(header, header_length_past_the_header_cluster_is_refused)
{
    rfx_poke32(fs, IMG, 100, CS + 8);
    assert_refused(QCOW2_ECORRUPT, "header_length", "exceeds");
}

Test(header, refcount_order_above_6_is_refused)
{
    rfx_poke32(fs, IMG, 96, 7);
    assert_refused(QCOW2_ECORRUPT, "refcount_order 7");
}

Test(header, virtual_size_above_int64_max_is_refused)
{
    rfx_poke64(fs, IMG, 24, 0x8000000000000000ull);
    assert_refused(QCOW2_ECORRUPT, "virtual size");
}

Test(header, extended_l2_needs_16k_clusters)
{
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;

    co.size = 1u << 20;
    co.cluster_size = 8192;
    cr_assert_eq(rfx_create(fs, IMG, &co), 0);
    rfx_poke64(fs, IMG, 72, QCOW2_INCOMPAT_EXTL2);
    assert_refused(QCOW2_EUNSUPPORTED, "extended L2", "cluster_bits 13");
}

/* ---- feature bits --------------------------------------------------------------- */

Test(header, unknown_incompatible_bit_is_named_from_the_feature_table)
{
    uint8_t ft[96] = {0};
    struct ext e[1] = {{0x6803f857, 96, ft}};

    ft[0] = 0;
    ft[1] = 9;
    memcpy(ft + 2, "frobnication", 12);
    ft[48] = 1; /* a compatible bit with the same number must not be picked */
    ft[49] = 10;
    memcpy(ft + 50, "wrong one", 9);
    set_exts(e, 1);
    rfx_poke64(fs, IMG, 72, (1ull << 9) | (1ull << 10) | (1ull << 63));
    assert_refused(QCOW2_EUNSUPPORTED, "unsupported incompatible feature",
                   "'frobnication' (bit 9)", "bit 10", "bit 63");
    cr_assert_null(strstr(rfx_msg(), "wrong one"), "%s", rfx_msg());
}

Test(header, unknown_incompatible_bit_without_table_is_named_by_number)
{
    set_exts(NULL, 0);
    rfx_poke64(fs, IMG, 72, 1ull << 5);
    assert_refused(QCOW2_EUNSUPPORTED, "incompatible feature: bit 5");
}

Test(header, encryption_is_unsupported_naming_the_method)
{
    rfx_poke32(fs, IMG, 32, 1);
    assert_refused(QCOW2_EUNSUPPORTED, "AES", "crypt_method 1");
    rfx_poke32(fs, IMG, 32, 2);
    assert_refused(QCOW2_EUNSUPPORTED, "LUKS", "crypt_method 2");
    rfx_poke32(fs, IMG, 32, 77);
    assert_refused(QCOW2_EUNSUPPORTED, "unknown", "crypt_method 77");
}

Test(header, external_data_file_is_unsupported)
{
    struct ext e[1] = {{0x44415441, 8, "data.raw"}};

    set_exts(e, 1);
    rfx_poke64(fs, IMG, 72, QCOW2_INCOMPAT_DATA_FILE);
    assert_refused(QCOW2_EUNSUPPORTED, "external data file");
}

Test(header, data_file_extension_twice_is_corrupt)
{
    struct ext e[2] = {{0x44415441, 8, "data.raw"}, {0x44415441, 8, "data.raw"}};

    set_exts(e, 2);
    assert_refused(QCOW2_ECORRUPT, "'external data file' appears twice");
}

Test(header, compression_bit_and_type_must_agree)
{
    qcow2_image *img;

    /* Bit set, zstd: fine. */
    rfx_poke64(fs, IMG, 72, QCOW2_INCOMPAT_COMPRESSION);
    rfx_poke8(fs, IMG, 104, 1);
    cr_assert_eq(rfx_open(fs, IMG, 0, 0, &img), 0, "%s", rfx_msg());
    cr_assert_eq(img->hdr.compression_type, 1);
    qcow2_image_close(img);
    /* Bit set, type zlib. */
    rfx_poke8(fs, IMG, 104, 0);
    assert_refused(QCOW2_ECORRUPT, "compression type bit", "zlib");
    /* Type zstd without the bit. */
    rfx_poke64(fs, IMG, 72, 0);
    rfx_poke8(fs, IMG, 104, 1);
    assert_refused(QCOW2_ECORRUPT, "compression_type is 1", "not set");
    /* Unknown type with the bit. */
    rfx_poke64(fs, IMG, 72, QCOW2_INCOMPAT_COMPRESSION);
    rfx_poke8(fs, IMG, 104, 2);
    assert_refused(QCOW2_EUNSUPPORTED, "compression type 2");
}

Test(header, compression_bit_needs_the_compression_type_field)
{
    set_exts(NULL, 0);
    rfx_poke32(fs, IMG, 100, 104);
    rfx_poke64(fs, IMG, 104, 0); /* end marker at 104 */
    rfx_poke64(fs, IMG, 72, QCOW2_INCOMPAT_COMPRESSION);
    assert_refused(QCOW2_ECORRUPT, "no compression_type field");
}

/* ---- extensions ----------------------------------------------------------------- */

Test(header, extension_running_past_the_area_is_refused)
{
    set_exts(NULL, 0);
    put_ext(112, 0x12345678, NULL, 0);
    rfx_poke32(fs, IMG, 116, CS); /* length larger than what is left of cluster 0 */
    assert_refused(QCOW2_ECORRUPT, "header extension 0x12345678 at 0x70", "runs past");
}

Test(header, extension_running_into_the_backing_name_is_refused)
{
    char name[] = "base.qcow2";

    set_exts(NULL, 0);
    put_ext(112, 0x12345678, "abcdefgh", 8);
    rfx_poke(fs, IMG, 120, name, strlen(name)); /* name starts inside the extension */
    rfx_poke64(fs, IMG, 8, 124);
    rfx_poke32(fs, IMG, 16, (uint32_t)strlen(name));
    assert_refused(QCOW2_ECORRUPT, "runs past");
}

Test(header, more_than_128_extensions_are_refused)
{
    for (unsigned i = 0; i < 129; i++)
        put_ext(112 + i * 8ull, 0x1000 + i, NULL, 0);
    put_ext(112 + 129 * 8ull, 0, NULL, 0);
    assert_refused(QCOW2_ECORRUPT, "more than 128 header extensions");
}

Test(header, exactly_128_extensions_are_accepted)
{
    qcow2_image *img;

    for (unsigned i = 0; i < 128; i++)
        put_ext(112 + i * 8ull, 0x1000 + i, NULL, 0);
    put_ext(112 + 128 * 8ull, 0, NULL, 0);
    cr_assert_eq(rfx_open(fs, IMG, 0, 0, &img), 0, "%s", rfx_msg());
    cr_assert_eq(img->nb_exts, 128);
    qcow2_image_close(img);
}

Test(header, backing_format_extension_twice_takes_the_last_as_qemu)
{
    struct ext twice[2] = {{0xe2792aca, 3, "raw"}, {0xe2792aca, 5, "qcow2"}};
    qcow2_image *img;

    set_exts(twice, 2);
    cr_assert_eq(rfx_open(fs, IMG, 0, 0, &img), 0, "%s", rfx_msg());
    cr_assert_str_eq(img->backing_fmt, "qcow2");
    qcow2_image_close(img);
}

Test(header, backing_format_extension_with_nul_is_refused)
{
    struct ext nul[1] = {{0xe2792aca, 4, "ra\0w"}};

    set_exts(nul, 1);
    assert_refused(QCOW2_ECORRUPT, "'backing format' contains a NUL byte");
}

Test(header, feature_table_twice_is_refused)
{
    uint8_t ft[48] = {0};
    struct ext e[2] = {{0x6803f857, 48, ft}, {0x6803f857, 48, ft}};

    set_exts(e, 2);
    assert_refused(QCOW2_ECORRUPT, "'feature name table' appears twice");
}

/* A bitmaps extension: count, reserved, directory size, directory offset. */
static void set_bitmaps(uint32_t nb, uint32_t reserved, uint64_t dir_size, uint64_t dir_off,
                        uint32_t len)
{
    uint8_t b[32] = {0};
    struct ext e[1] = {{0x23852875, len, b}};

    qcow2__put_be32(b, nb);
    qcow2__put_be32(b + 4, reserved);
    qcow2__put_be64(b + 8, dir_size);
    qcow2__put_be64(b + 16, dir_off);
    set_exts(e, 1);
}

Test(header, valid_bitmaps_extension_is_kept)
{
    qcow2_image *img;
    qcow2_info info;

    set_bitmaps(2, 0, 64, 2 * CS, 24);
    rfx_poke64(fs, IMG, 88, QCOW2_AUTOCLEAR_BITMAPS);
    cr_assert_eq(rfx_open(fs, IMG, 0, 0, &img), 0, "%s", rfx_msg());
    cr_assert_eq(img->nb_bitmaps, 2);
    cr_assert_eq(img->bitmaps_ext_len, 24);
    cr_assert_eq(qcow2_image_get_info(img, &info), 0);
    cr_assert_eq(info.nb_bitmaps, 2);
    qcow2_image_close(img);
}

Test(header, damaged_bitmaps_extension_is_refused_field_by_field)
{
    set_bitmaps(1, 0, 64, 2 * CS, 16);
    assert_refused(QCOW2_ECORRUPT, "bitmaps extension is 16 bytes, expected 24");
    set_bitmaps(0, 0, 64, 2 * CS, 24);
    assert_refused(QCOW2_ECORRUPT, "bitmaps extension", "0 bitmaps");
    set_bitmaps(65536, 0, 64, 2 * CS, 24);
    assert_refused(QCOW2_ECORRUPT, "bitmaps extension", "65536 bitmaps");
    set_bitmaps(1, 1, 64, 2 * CS, 24);
    assert_refused(QCOW2_ECORRUPT, "bitmaps extension", "reserved");
    set_bitmaps(1, 0, 0, 2 * CS, 24);
    assert_refused(QCOW2_ECORRUPT, "bitmaps extension", "directory size 0");
    set_bitmaps(1, 0, 1024ull * 65535 + 1, 2 * CS, 24);
    assert_refused(QCOW2_ECORRUPT, "bitmaps extension", "directory size");
    set_bitmaps(1, 0, 64, 2 * CS + 512, 24);
    assert_refused(QCOW2_ECORRUPT, "bitmaps extension", "directory at 0x20200");
    set_bitmaps(1, 0, 64, 0, 24);
    assert_refused(QCOW2_ECORRUPT, "bitmaps extension", "directory at 0x0");
    set_bitmaps(1, 0, 64, 16 * CS, 24);
    assert_refused(QCOW2_ECORRUPT, "bitmaps extension", "outside the file");
}

Test(header, bitmaps_extension_twice_is_refused)
{
    uint8_t b[24] = {0};
    struct ext e[2] = {{0x23852875, 24, b}, {0x23852875, 24, b}};

    qcow2__put_be32(b, 1);
    qcow2__put_be64(b + 8, 64);
    qcow2__put_be64(b + 16, 2 * CS);
    set_exts(e, 2);
    assert_refused(QCOW2_ECORRUPT, "'bitmaps' appears twice");
}

/* ---- backing name fields ---------------------------------------------------------- */

Test(header, backing_name_longer_than_1023_bytes_is_refused)
{
    rfx_set_backing(fs, IMG, "base", NULL, 4096);
    rfx_poke32(fs, IMG, 16, 1024);
    assert_refused(QCOW2_ECORRUPT, "backing file name is 1024 bytes");
}

Test(header, backing_name_outside_the_header_cluster_is_refused)
{
    rfx_set_backing(fs, IMG, "base", NULL, 4096);
    rfx_poke64(fs, IMG, 8, CS - 2);
    assert_refused(QCOW2_ECORRUPT, "backing file name at 0xfffe", "outside the header cluster");
    rfx_poke64(fs, IMG, 8, 64); /* inside the fixed header */
    assert_refused(QCOW2_ECORRUPT, "backing file name at 0x40");
}

Test(header, backing_name_with_a_nul_byte_is_refused)
{
    rfx_set_backing(fs, IMG, "ba\x01se", NULL, 4096);
    rfx_poke8(fs, IMG, 4098, 0);
    assert_refused(QCOW2_ECORRUPT, "backing file name contains a NUL byte");
}

/* ---- tables ------------------------------------------------------------------------ */

Test(header, l1_table_above_the_32_mib_cap_is_refused)
{
    rfx_poke32(fs, IMG, 36, (32u << 20) / 8 + 1);
    assert_refused(QCOW2_ECORRUPT, "L1 table has 4194305 entries", "at most 4194304");
}

Test(header, l1_table_too_small_for_the_virtual_size_is_refused)
{
    /* One L1 entry covers 512 MiB at 64 KiB clusters. */
    rfx_poke64(fs, IMG, 24, (512ull << 20) + 512);
    assert_refused(QCOW2_ECORRUPT, "L1 table has 1 entries", "needs 2");
}

Test(header, l1_table_offset_is_checked)
{
    rfx_poke64(fs, IMG, 40, 0x30200);
    assert_refused(QCOW2_ECORRUPT, "L1 table offset 0x30200 is not aligned");
    rfx_poke64(fs, IMG, 40, 0);
    assert_refused(QCOW2_ECORRUPT, "L1 table at offset 0 overlaps the header");
    rfx_poke64(fs, IMG, 40, 0x40000);
    assert_refused(QCOW2_ECORRUPT, "L1 table at 0x40000", "beyond the end of the file");
}

Test(header, l1_table_must_lie_wholly_inside_the_file)
{
    /* The L1 is the last thing in the file: 8 bytes at 0x30000. Two entries do not fit. */
    rfx_poke32(fs, IMG, 36, 2);
    assert_refused(QCOW2_ECORRUPT, "L1 table at 0x30000 (16 bytes)", "beyond the end");
}

Test(header, empty_l1_table_is_fine_for_an_empty_disk)
{
    qcow2_image *img;
    uint8_t buf[512];

    rfx_poke64(fs, IMG, 24, 0);
    rfx_poke32(fs, IMG, 36, 0);
    rfx_poke64(fs, IMG, 40, 0);
    cr_assert_eq(rfx_open(fs, IMG, 0, 0, &img), 0, "%s", rfx_msg());
    cr_assert_eq(qcow2_image_size(img), 0);
    cr_assert_eq(qcow2_image_read(img, buf, 0, 0), 0);
    cr_assert_eq(qcow2_image_read(img, buf, 1, 0), QCOW2_EINVAL);
    qcow2_image_close(img);
}

Test(header, refcount_table_is_checked)
{
    rfx_poke32(fs, IMG, 56, (8u << 20) / CS + 1);
    assert_refused(QCOW2_ECORRUPT, "refcount table is 129 clusters");
    rfx_poke32(fs, IMG, 56, 0);
    assert_refused(QCOW2_ECORRUPT, "refcount table is empty");
    rfx_poke32(fs, IMG, 56, 1);
    rfx_poke64(fs, IMG, 48, 0x10008);
    assert_refused(QCOW2_ECORRUPT, "refcount table offset 0x10008 is not aligned");
    rfx_poke64(fs, IMG, 48, 0);
    assert_refused(QCOW2_ECORRUPT, "refcount table at offset 0 overlaps the header");
    rfx_poke64(fs, IMG, 48, 0x30000); /* one cluster at 0x30000 runs past the end */
    assert_refused(QCOW2_ECORRUPT, "refcount table at 0x30000", "beyond the end");
}

Test(header, refcount_table_size_overflow_is_refused)
{
    /* rt_clusters * cluster_size overflows nothing here but exceeds the cap hugely. */
    rfx_poke32(fs, IMG, 56, 0xffffffffu);
    assert_refused(QCOW2_ECORRUPT, "refcount table is 4294967295 clusters");
}

Test(header, l1_overlapping_the_refcount_table_is_refused)
{
    rfx_poke64(fs, IMG, 40, 0x10000);
    assert_refused(QCOW2_ECORRUPT, "L1 table at 0x10000 overlaps the refcount table at 0x10000");
}

Test(header, snapshot_table_offset_is_checked)
{
    rfx_poke32(fs, IMG, 60, 1);
    rfx_poke64(fs, IMG, 64, 0x20100);
    assert_refused(QCOW2_ECORRUPT, "snapshot table offset 0x20100 is not aligned");
    rfx_poke64(fs, IMG, 64, 0);
    assert_refused(QCOW2_ECORRUPT, "snapshot table at 0x0 lies outside the file");
    rfx_poke64(fs, IMG, 64, 0x100000);
    assert_refused(QCOW2_ECORRUPT, "snapshot table at 0x100000 lies outside the file");
}

/* ---- white-box: qcow2__header_parse on its own ------------------------------------ */

static qcow2_image *fake(uint64_t file_size)
{
    qcow2_image *img = calloc(1, sizeof(*img));

    cr_assert_not_null(img);
    img->name = strdup("fake.qcow2");
    img->file_size = file_size;
    return img;
}

static void fake_free(qcow2_image *img)
{
    qcow2__header_free(img);
    free(img->name);
    free(img);
}

Test(header, parse_checks_length_magic_and_cluster_bits_itself)
{
    size_t len;
    const uint8_t *file = memfs_get(fs, IMG, &len);
    uint8_t buf[CS];
    qcow2_image *img;

    memcpy(buf, file, CS);
    img = fake(len);
    cr_assert_eq(qcow2__header_parse(img, buf, 71), QCOW2_ECORRUPT);
    cr_assert(rfx_has_all(rfx_msg(), "fake.qcow2", "too short", "71 bytes", NULL), "%s", rfx_msg());
    fake_free(img);

    img = fake(len);
    buf[3] = 0;
    cr_assert_eq(qcow2__header_parse(img, buf, CS), QCOW2_ECORRUPT);
    cr_assert(rfx_has_all(rfx_msg(), "fake.qcow2", "magic", NULL));
    buf[3] = 0xfb;
    fake_free(img);

    img = fake(len);
    qcow2__put_be32(buf + 20, 30);
    cr_assert_eq(qcow2__header_parse(img, buf, CS), QCOW2_ECORRUPT);
    cr_assert(rfx_has_all(rfx_msg(), "fake.qcow2", "cluster_bits 30", NULL));
    qcow2__put_be32(buf + 20, 16);
    fake_free(img);

    img = fake(len);
    cr_assert_eq(qcow2__header_parse(img, buf, CS), 0, "%s", rfx_msg());
    cr_assert_eq(img->l2_entries, 8192);
    cr_assert_eq(img->l2e_bytes, 8);
    cr_assert_eq(img->sc_bits, 16);
    cr_assert_eq(img->csize_shift, 54);
    cr_assert_eq(img->csize_mask, 0xff);
    cr_assert_eq(img->coff_mask, (1ull << 54) - 1);
    fake_free(img);
}

Test(header, parse_of_extended_l2_geometry)
{
    size_t len;
    const uint8_t *file = memfs_get(fs, IMG, &len);
    uint8_t buf[CS];
    qcow2_image *img = fake(len);

    memcpy(buf, file, CS);
    qcow2__put_be64(buf + 72, QCOW2_INCOMPAT_EXTL2);
    cr_assert_eq(qcow2__header_parse(img, buf, CS), 0, "%s", rfx_msg());
    cr_assert(img->extl2);
    cr_assert_eq(img->l2e_bytes, 16);
    cr_assert_eq(img->l2_entries, 4096);
    cr_assert_eq(img->sc_bits, 11);
    fake_free(img);
}

/* ---- serialization ------------------------------------------------------------------ */

Test(header, serialize_round_trips_a_parsed_header)
{
    size_t len;
    const uint8_t *file;
    uint8_t *out = calloc(1, CS);
    qcow2_image *img;
    const struct ext e[2] = {{0xe2792aca, 5, "qcow2"}, {0x0badf00d, 3, "xyz"}};

    cr_assert_not_null(out);
    /* A backing-format extension, an unknown one, and a backing name after the marker. */
    set_exts(e, 2);
    rfx_poke(fs, IMG, 112 + 16 + 16 + 8, "base.qcow2", 10);
    rfx_poke64(fs, IMG, 8, 112 + 16 + 16 + 8);
    rfx_poke32(fs, IMG, 16, 10);
    file = memfs_get(fs, IMG, &len);
    img = fake(len);
    cr_assert_eq(qcow2__header_parse(img, file, CS), 0, "%s", rfx_msg());
    cr_assert_eq(qcow2__header_serialize(img, out, CS, NULL), 0, "%s", rfx_msg());
    file = memfs_get(fs, IMG, &len);
    for (size_t i = 0; i < CS; i++)
        cr_assert_eq(out[i], file[i], "byte %zu: 0x%02x, file has 0x%02x", i, out[i], file[i]);
    fake_free(img);
    free(out);
}

Test(header, serialize_matches_qemu_img_fields)
{
    char dir[64], base[128], top[128], cmd_out[4096];
    uint8_t *q, *out;
    size_t qlen;
    qcow2_image *img;

    if (!qo_have_qemu())
        cr_skip_test("qemu-img not installed");
    cr_assert_eq(qo_mkdtemp(dir, sizeof(dir), "hdr"), 0);
    snprintf(base, sizeof(base), "%s/base.qcow2", dir);
    snprintf(top, sizeof(top), "%s/top.qcow2", dir);
    cr_assert_eq(qo_sh(cmd_out, sizeof(cmd_out),
                       "qemu-img create -q -f qcow2 '%s' 4M && "
                       "qemu-img create -q -f qcow2 -o compression_type=zstd,lazy_refcounts=on "
                       "-b base.qcow2 -F qcow2 '%s'",
                       base, top),
                 0, "%s", cmd_out);
    q = qo_read_file(top, &qlen);
    cr_assert_not_null(q);
    cr_assert_geq(qlen, CS);
    img = fake(qlen);
    cr_assert_eq(qcow2__header_parse(img, q, CS), 0, "%s", rfx_msg());
    cr_assert_str_eq(img->backing_name, "base.qcow2");
    cr_assert_str_eq(img->backing_fmt, "qcow2");
    cr_assert_eq(img->hdr.compression_type, 1);
    out = calloc(1, CS);
    {
        size_t used = 0;
        uint64_t name_off;

        /* A feature-name table read from the image is kept, as qemu-img keeps it: the
         * layout is qemu-img's, byte for byte. */
        cr_assert(img->features_kept);
        cr_assert_eq(qcow2__header_serialize(img, out, CS, &used), 0, "%s", rfx_msg());
        cr_assert_gt(used, 512);
        cr_assert_eq(qcow2__be32(q + 128), 0x6803f857, "qemu-img writes a feature table");
        for (size_t i = 0; i < used; i++)
            cr_assert_eq(out[i], q[i], "byte %zu: ours 0x%02x, qemu-img 0x%02x", i, out[i], q[i]);

        /* One not read from the image (a new one) is left out when it does not fit the
         * first sector beside the backing file: the header is then written alone, so
         * atomically. Every field but the name's place equals qemu-img's. */
        img->features_kept = false;
        memset(out, 0, CS);
        cr_assert_eq(qcow2__header_serialize(img, out, CS, &used), 0, "%s", rfx_msg());
        cr_assert_leq(used, 512);
        for (size_t i = 0; i < 112; i++) {
            if (i >= 8 && i < 16)
                continue; /* backing_file_offset: the name sits where the table was */
            cr_assert_eq(out[i], q[i], "byte %zu: ours 0x%02x, qemu-img 0x%02x", i, out[i], q[i]);
        }
        cr_assert_eq(memcmp(out + 112, q + 112, 16), 0, "backing-format extension differs");
        cr_assert_eq(qcow2__be32(out + 128), 0, "ours ends the extensions instead");
        name_off = qcow2__be64(out + 8);
        cr_assert_eq(memcmp(out + name_off, "base.qcow2", 10), 0);
        cr_assert_eq(name_off + 10, used);
    }
    free(out);
    free(q);
    fake_free(img);
    qo_rmtree(dir);
}

Test(header, serialize_drops_the_feature_table_when_it_does_not_fit)
{
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;
    size_t len;
    const uint8_t *file;
    uint8_t out[512];
    qcow2_image *img;
    char name[300];

    co.size = 1u << 20;
    co.cluster_size = 512;
    cr_assert_eq(rfx_create(fs, IMG, &co), 0, "%s", rfx_msg());
    file = memfs_get(fs, IMG, &len);
    img = fake(len);
    cr_assert_eq(qcow2__header_parse(img, file, 512), 0, "%s", rfx_msg());
    /* 8 features (392 bytes) plus a 300-byte backing name cannot share 512 bytes. */
    qcow2__free(img->features);
    img->nb_features = 8;
    img->features = qcow2__calloc(8, sizeof(*img->features));
    for (unsigned i = 0; i < 8; i++) {
        img->features[i].bit = (uint8_t)i;
        strcpy(img->features[i].name, "feature");
    }
    memset(name, 'b', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    img->backing_name = strdup(name);
    memset(out, 0, sizeof(out));
    cr_assert_eq(qcow2__header_serialize(img, out, sizeof(out), NULL), 0, "%s", rfx_msg());
    cr_assert_eq(qcow2__be32(out + 112), 0, "no extension expected, found 0x%08x",
                 qcow2__be32(out + 112));
    cr_assert_eq(qcow2__be64(out + 8), 120);
    cr_assert_eq(qcow2__be32(out + 16), 299);
    cr_assert_eq(memcmp(out + 120, name, 299), 0);
    fake_free(img);
}

Test(header, serialize_refuses_a_backing_name_that_does_not_fit)
{
    size_t len;
    const uint8_t *file = memfs_get(fs, IMG, &len);
    uint8_t out[512];
    qcow2_image *img = fake(len);
    char name[500];

    cr_assert_eq(qcow2__header_parse(img, file, CS), 0, "%s", rfx_msg());
    qcow2__free(img->features);
    img->features = NULL;
    img->nb_features = 0;
    memset(name, 'n', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    img->backing_name = strdup(name);
    memset(out, 0, sizeof(out));
    cr_assert_eq(qcow2__header_serialize(img, out, sizeof(out), NULL), QCOW2_EINVAL);
    cr_assert(rfx_has_all(rfx_msg(), "fake.qcow2", "backing file name does not fit", NULL),
              "%s", rfx_msg());
    fake_free(img);
}

Test(header, header_write_updates_cluster_0_of_the_file)
{
    qcow2_image *img;

    cr_assert_eq(rfx_open(fs, IMG, QCOW2_OPEN_RDWR, 0, &img), 0, "%s", rfx_msg());
    img->hdr.compat |= QCOW2_COMPAT_LAZY_REFCOUNTS;
    img->backing_fmt = strdup("raw");
    cr_assert_eq(qcow2__header_write(img), 0, "%s", rfx_msg());
    cr_assert_eq(rfx_peek64(fs, IMG, 80), QCOW2_COMPAT_LAZY_REFCOUNTS);
    cr_assert_eq(rfx_peek32(fs, IMG, 112), 0xe2792aca);
    cr_assert_eq(rfx_peek32(fs, IMG, 116), 3);
    /* The image's own feature table is kept past the first sector, as qemu keeps it. */
    cr_assert_eq(rfx_peek32(fs, IMG, 128), 0x6803f857);
    cr_assert_eq(rfx_peek32(fs, IMG, 128 + 8 + 392), 0);
    /* Without the backing format the header with its table fits one sector again. */
    img->hdr.compat = 0;
    free(img->backing_fmt);
    img->backing_fmt = NULL;
    cr_assert_eq(qcow2__header_write(img), 0, "%s", rfx_msg());
    cr_assert_eq(rfx_peek32(fs, IMG, 112), 0x6803f857);
    cr_assert_eq(rfx_peek32(fs, IMG, 112 + 8 + 392), 0);
    /* A table that is not the image's own (features_kept false) goes when it would
     * pass one sector. */
    img->features_kept = false;
    img->backing_fmt = strdup("raw");
    cr_assert_eq(qcow2__header_write(img), 0, "%s", rfx_msg());
    cr_assert_eq(rfx_peek32(fs, IMG, 112), 0xe2792aca);
    cr_assert_eq(rfx_peek32(fs, IMG, 128), 0);
    qcow2_image_close(img);
    cr_assert_eq(rfx_open(fs, IMG, 0, 0, &img), 0, "%s", rfx_msg());
    cr_assert_str_eq(img->backing_fmt, "raw");
    qcow2_image_close(img);
}
