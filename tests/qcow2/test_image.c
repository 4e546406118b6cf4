/*
 * Tests for qcow2/image.c: opening a file as qcow2 or raw (probing and
 * forced formats), argument and option checks, the backing chain walk
 * (relative names resolved against the directory of the image that names
 * them, the backing-format extension, loops, the depth limit, protocol and
 * json: names, non-regular files) and qcow2_image_get_info(). Chains live in
 * a memfs; only the FIFO/device and realpath loop tests touch /tmp.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qcow2_int.h"
#include "qemu_oracle.h"
#include "reader_fixture.h"

static memfs *fs;

static void setup(void)
{
    fs = memfs_new();
    cr_assert_not_null(fs);
}

static void teardown(void)
{
    memfs_free(fs);
}

TestSuite(image, .init = setup, .fini = teardown, .timeout = 30);

#define assert_msg(...)                                                                            \
    cr_assert(rfx_has_all(rfx_msg(), __VA_ARGS__, (const char *)NULL), "message: %s", rfx_msg())

/* A small qcow2 image (512-byte clusters, 64 KiB) whose backing name is poked in. */
static void small(const char *path, const char *backing, const char *fmt)
{
    cr_assert_eq(rfx_create_simple(fs, path, 64 * 1024, 512), 0, "%s", rfx_msg());
    if (backing)
        rfx_set_backing(fs, path, backing, fmt, 0);
}

static void raw(const char *path, size_t len, int pattern)
{
    uint8_t *b = malloc(len ? len : 1);

    memset(b, pattern, len);
    cr_assert_eq(memfs_put(fs, path, b, len), 0);
    free(b);
}

static int open_top(const char *path, unsigned flags, qcow2_image **img)
{
    qcow2_error_clear();
    return rfx_open(fs, path, flags, 2048, img);
}

/* ---- formats ---------------------------------------------------------------------- */

Test(image, format_names_round_trip)
{
    cr_assert_str_eq(qcow2_format_name(QCOW2_FORMAT_RAW), "raw");
    cr_assert_str_eq(qcow2_format_name(QCOW2_FORMAT_QCOW2), "qcow2");
    cr_assert_null(qcow2_format_name(QCOW2_FORMAT_AUTO));
    cr_assert_null(qcow2_format_name((qcow2_format)7));
    cr_assert_eq(qcow2_format_from_name("raw"), QCOW2_FORMAT_RAW);
    cr_assert_eq(qcow2_format_from_name("qcow2"), QCOW2_FORMAT_QCOW2);
    cr_assert_eq(qcow2_format_from_name("QCOW2"), QCOW2_FORMAT_AUTO);
    cr_assert_eq(qcow2_format_from_name("vmdk"), QCOW2_FORMAT_AUTO);
    cr_assert_eq(qcow2_format_from_name(NULL), QCOW2_FORMAT_AUTO);
}

Test(image, probe_finds_qcow2_by_its_magic)
{
    qcow2_image *img;

    small("/m/a.qcow2", NULL, NULL);
    cr_assert_eq(open_top("/m/a.qcow2", 0, &img), 0, "%s", rfx_msg());
    cr_assert_eq(qcow2_image_format(img), QCOW2_FORMAT_QCOW2);
    cr_assert_eq(qcow2_image_size(img), 64 * 1024);
    cr_assert_str_eq(qcow2_image_filename(img), "/m/a.qcow2");
    cr_assert_eq(qcow2_image_chain_length(img), 1);
    cr_assert_null(qcow2_image_backing(img));
    cr_assert_eq(qcow2_image_cluster_size(img), 512);
    qcow2_image_close(img);
}

Test(image, anything_else_probes_as_raw_in_whole_sectors)
{
    qcow2_image *img;
    uint8_t buf[1024];

    raw("/m/r.img", 1000, 0x5a);
    cr_assert_eq(open_top("/m/r.img", 0, &img), 0, "%s", rfx_msg());
    cr_assert_eq(qcow2_image_format(img), QCOW2_FORMAT_RAW);
    cr_assert_eq(qcow2_image_size(img), 1024);
    cr_assert_eq(qcow2_image_read(img, buf, sizeof(buf), 0), 0, "%s", rfx_msg());
    cr_assert_eq(buf[0], 0x5a);
    cr_assert_eq(buf[999], 0x5a);
    cr_assert_eq(buf[1000], 0);
    cr_assert_eq(buf[1023], 0);
    qcow2_image_close(img);
}

Test(image, files_shorter_than_the_magic_are_raw)
{
    qcow2_image *img;

    raw("/m/tiny", 3, 'Q');
    cr_assert_eq(open_top("/m/tiny", 0, &img), 0, "%s", rfx_msg());
    cr_assert_eq(qcow2_image_format(img), QCOW2_FORMAT_RAW);
    cr_assert_eq(qcow2_image_size(img), 512);
    qcow2_image_close(img);
    raw("/m/empty", 0, 0);
    cr_assert_eq(open_top("/m/empty", 0, &img), 0, "%s", rfx_msg());
    cr_assert_eq(qcow2_image_size(img), 0);
    qcow2_image_close(img);
}

Test(image, forced_raw_opens_a_qcow2_file_as_bytes)
{
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img;
    size_t len;
    uint8_t magic[4];

    small("/m/a.qcow2", NULL, NULL);
    memfs_get(fs, "/m/a.qcow2", &len);
    o.format = QCOW2_FORMAT_RAW;
    cr_assert_eq(rfx_open_opts(fs, "/m/a.qcow2", &o, &img), 0, "%s", rfx_msg());
    cr_assert_eq(qcow2_image_format(img), QCOW2_FORMAT_RAW);
    cr_assert_eq(qcow2_image_size(img), (len + 511) / 512 * 512);
    cr_assert_eq(qcow2_image_read(img, magic, 4, 0), 0);
    cr_assert_eq(memcmp(magic, "QFI\xfb", 4), 0);
    qcow2_image_close(img);
}

Test(image, forced_qcow2_on_a_raw_file_is_bad_magic)
{
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img;

    raw("/m/r.img", 4096, 1);
    o.format = QCOW2_FORMAT_QCOW2;
    cr_assert_eq(rfx_open_opts(fs, "/m/r.img", &o, &img), QCOW2_ECORRUPT);
    assert_msg("/m/r.img", "magic");
}

/* ---- arguments ---------------------------------------------------------------------- */

Test(image, open_io_refuses_missing_arguments_and_bad_options)
{
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img = (qcow2_image *)&o;
    qcow2_io *io;

    raw("/m/r.img", 512, 0);
    cr_assert_eq(memfs_open(&io, "/m/r.img", 0, fs), 0);
    cr_assert_eq(qcow2_image_open_io(NULL, io, "/m/r.img", NULL), QCOW2_EINVAL);
    cr_assert_eq(memfs_open(&io, "/m/r.img", 0, fs), 0);
    cr_assert_eq(qcow2_image_open_io(&img, io, NULL, NULL), QCOW2_EINVAL);
    cr_assert_eq(qcow2_image_open_io(&img, NULL, "x", NULL), QCOW2_EINVAL);

    o.version = 99;
    cr_assert_eq(memfs_open(&io, "/m/r.img", 0, fs), 0);
    cr_assert_eq(qcow2_image_open_io(&img, io, "/m/r.img", &o), QCOW2_EINVAL);
    assert_msg("/m/r.img", "options version 99");

    o.version = QCOW2_OPEN_OPTS_VERSION;
    o.format = (qcow2_format)9;
    cr_assert_eq(memfs_open(&io, "/m/r.img", 0, fs), 0);
    cr_assert_eq(qcow2_image_open_io(&img, io, "/m/r.img", &o), QCOW2_EINVAL);
    assert_msg("/m/r.img", "format 9");

    cr_assert_eq(qcow2_image_open(NULL, "/m/r.img", NULL), QCOW2_EINVAL);
    cr_assert_eq(qcow2_image_open(&img, NULL, NULL), QCOW2_EINVAL);
}

Test(image, open_by_path_uses_the_open_function)
{
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img;

    small("/m/a.qcow2", NULL, NULL);
    o.open_fn = memfs_open;
    o.open_payload = fs;
    cr_assert_eq(qcow2_image_open(&img, "/m/a.qcow2", &o), 0, "%s", rfx_msg());
    cr_assert_eq(qcow2_image_format(img), QCOW2_FORMAT_QCOW2);
    qcow2_image_close(img);
    cr_assert_eq(qcow2_image_open(&img, "/m/missing.qcow2", &o), QCOW2_ENOTFOUND);
    cr_assert_null(img);
    assert_msg("/m/missing.qcow2", "cannot open");
}

Test(image, missing_posix_file_is_not_found)
{
    qcow2_image *img;

    cr_assert_eq(qcow2_image_open(&img, "/nonexistent/dir/x.qcow2", NULL), QCOW2_ENOTFOUND);
    cr_assert_null(img);
    assert_msg("/nonexistent/dir/x.qcow2");
    cr_assert_eq(qcow2_error_last()->sys_errno, 2);
}

/* ---- non-regular files (real file system) ------------------------------------------ */

Test(image, fifo_device_and_directory_are_refused_without_blocking, .timeout = 10)
{
    char dir[64], fifo[96];
    qcow2_image *img;

    cr_assert_eq(qo_mkdtemp(dir, sizeof(dir), "img"), 0);
    snprintf(fifo, sizeof(fifo), "%s/fifo", dir);
    cr_assert_eq(mkfifo(fifo, 0600), 0);
    cr_assert_eq(qcow2_image_open(&img, fifo, NULL), QCOW2_EUNSUPPORTED);
    assert_msg(fifo, "not a regular file");
    cr_assert_eq(qcow2_image_open(&img, "/dev/null", NULL), QCOW2_EUNSUPPORTED);
    assert_msg("/dev/null", "not a regular file");
    cr_assert_eq(qcow2_image_open(&img, dir, NULL), QCOW2_EUNSUPPORTED);
    assert_msg(dir, "not a regular file");
    qo_rmtree(dir);
}

Test(image, fifo_as_backing_file_is_refused_without_blocking, .timeout = 10)
{
    char dir[64], fifo[96], top[96], out[1024];
    qcow2_image *img;

    if (!qo_have_qemu())
        cr_skip_test("qemu-img not installed");
    cr_assert_eq(qo_mkdtemp(dir, sizeof(dir), "img"), 0);
    snprintf(fifo, sizeof(fifo), "%s/fifo", dir);
    snprintf(top, sizeof(top), "%s/top.qcow2", dir);
    cr_assert_eq(qo_sh(out, sizeof(out),
                       "qemu-img create -q -f qcow2 -u -b fifo -F raw '%s' 1M", top),
                 0, "%s", out);
    cr_assert_eq(mkfifo(fifo, 0600), 0);
    cr_assert_eq(qcow2_image_open(&img, top, NULL), QCOW2_EUNSUPPORTED, "%s", rfx_msg());
    assert_msg(top, "fifo", "not a regular file");
    qo_rmtree(dir);
}

/* ---- the chain ------------------------------------------------------------------------ */

Test(image, relative_names_resolve_against_the_naming_images_directory)
{
    qcow2_image *img, *mid, *base;
    qcow2_info info;

    raw("/m/a/sub/base.raw", 64 * 1024, 7);
    small("/m/a/sub/mid.qcow2", "base.raw", "raw");
    small("/m/a/top.qcow2", "sub/mid.qcow2", "qcow2");
    cr_assert_eq(open_top("/m/a/top.qcow2", 0, &img), 0, "%s", rfx_msg());
    cr_assert_eq(qcow2_image_chain_length(img), 3);
    mid = qcow2_image_backing(img);
    base = qcow2_image_backing(mid);
    cr_assert_str_eq(qcow2_image_filename(mid), "/m/a/sub/mid.qcow2");
    cr_assert_str_eq(qcow2_image_filename(base), "/m/a/sub/base.raw");
    cr_assert_eq(qcow2_image_format(base), QCOW2_FORMAT_RAW);
    cr_assert_null(qcow2_image_backing(base));
    cr_assert_eq(qcow2_image_get_info(img, &info), 0);
    cr_assert_str_eq(info.backing_name, "sub/mid.qcow2");
    cr_assert_str_eq(info.backing_format, "qcow2");
    cr_assert_str_eq(info.backing_path, "/m/a/sub/mid.qcow2");
    cr_assert_eq(qcow2_image_get_info(mid, &info), 0);
    cr_assert_str_eq(info.backing_path, "/m/a/sub/base.raw");
    cr_assert_eq(mid->depth, 1);
    cr_assert_eq(base->depth, 2);
    qcow2_image_close(img);
}

Test(image, dot_dot_and_absolute_names)
{
    qcow2_image *img;

    raw("/m/b/base.raw", 64 * 1024, 7);
    small("/m/a/top.qcow2", "../b/base.raw", "raw");
    cr_assert_eq(open_top("/m/a/top.qcow2", 0, &img), 0, "%s", rfx_msg());
    cr_assert_str_eq(qcow2_image_filename(qcow2_image_backing(img)), "/m/a/../b/base.raw");
    qcow2_image_close(img);
    small("/m/a/top.qcow2", "/m/b/base.raw", "raw");
    cr_assert_eq(open_top("/m/a/top.qcow2", 0, &img), 0, "%s", rfx_msg());
    cr_assert_str_eq(qcow2_image_filename(qcow2_image_backing(img)), "/m/b/base.raw");
    qcow2_image_close(img);
}

Test(image, image_named_without_directory_keeps_the_backing_name)
{
    qcow2_image *img;

    raw("base.raw", 64 * 1024, 7);
    small("top.qcow2", "base.raw", "raw");
    cr_assert_eq(open_top("top.qcow2", 0, &img), 0, "%s", rfx_msg());
    cr_assert_str_eq(qcow2_image_filename(qcow2_image_backing(img)), "base.raw");
    qcow2_image_close(img);
}

Test(image, backing_format_extension_overrides_probing)
{
    qcow2_image *img;

    small("/m/base.qcow2", NULL, NULL);
    small("/m/top.qcow2", "base.qcow2", "raw");
    cr_assert_eq(open_top("/m/top.qcow2", 0, &img), 0, "%s", rfx_msg());
    cr_assert_eq(qcow2_image_format(qcow2_image_backing(img)), QCOW2_FORMAT_RAW);
    qcow2_image_close(img);
    /* Without the extension the magic decides. */
    small("/m/top.qcow2", "base.qcow2", NULL);
    cr_assert_eq(open_top("/m/top.qcow2", 0, &img), 0, "%s", rfx_msg());
    cr_assert_eq(qcow2_image_format(qcow2_image_backing(img)), QCOW2_FORMAT_QCOW2);
    cr_assert_null(img->backing_fmt);
    qcow2_image_close(img);
    /* "qcow2" on a raw file is bad magic, named for the backing file. */
    raw("/m/base.raw", 4096, 3);
    small("/m/top.qcow2", "base.raw", "qcow2");
    cr_assert_eq(open_top("/m/top.qcow2", 0, &img), QCOW2_ECORRUPT);
    assert_msg("/m/base.raw", "magic");
}

Test(image, unknown_backing_format_is_unsupported)
{
    qcow2_image *img;

    raw("/m/base.vmdk", 4096, 3);
    small("/m/top.qcow2", "base.vmdk", "vmdk");
    cr_assert_eq(open_top("/m/top.qcow2", 0, &img), QCOW2_EUNSUPPORTED);
    assert_msg("/m/top.qcow2", "'vmdk'", "not supported");
}

Test(image, empty_backing_name_is_corrupt)
{
    qcow2_image *img;

    small("/m/top.qcow2", "", NULL);
    cr_assert_neq(rfx_peek64(fs, "/m/top.qcow2", 8), 0);
    cr_assert_eq(rfx_peek32(fs, "/m/top.qcow2", 16), 0);
    cr_assert_eq(open_top("/m/top.qcow2", 0, &img), QCOW2_ECORRUPT);
    assert_msg("/m/top.qcow2", "backing file name is empty");
}

Test(image, protocol_and_json_names_are_refused)
{
    static const char *const names[] = {
        "json:{\"driver\":\"raw\",\"file\":{\"filename\":\"x\"}}",
        "nbd://localhost:10809/disk",
        "nbd:localhost:10809",
        "file:base.raw",
        "http://example.com/disk.img",
        "iscsi://host/iqn.2001-04.com.example:storage/1",
        "ssh+x-y.z:foo",
    };
    qcow2_image *img;

    raw("/m/base.raw", 4096, 3);
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        small("/m/top.qcow2", names[i], NULL);
        cr_assert_eq(open_top("/m/top.qcow2", 0, &img), QCOW2_EUNSUPPORTED, "%s: %d %s",
                     names[i], img ? 0 : 1, rfx_msg());
        assert_msg("/m/top.qcow2", names[i], "not a plain file path");
    }
}

Test(image, colons_that_are_not_a_protocol_prefix_are_plain_paths)
{
    static const char *const names[] = {"dir/a:b.raw", "./nbd:x.raw", "1abc:def.raw", "a b:c.raw"};
    qcow2_image *img;

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        char path[64];
        snprintf(path, sizeof(path), "/m/%s", names[i]);
        raw(path, 4096, (int)i + 1);
        small("/m/top.qcow2", names[i], "raw");
        cr_assert_eq(open_top("/m/top.qcow2", 0, &img), 0, "%s: %s", names[i], rfx_msg());
        cr_assert_eq(qcow2_image_chain_length(img), 2);
        qcow2_image_close(img);
    }
}

Test(image, missing_backing_file_is_not_found)
{
    qcow2_image *img;

    small("/m/top.qcow2", "gone.qcow2", NULL);
    cr_assert_eq(open_top("/m/top.qcow2", 0, &img), QCOW2_ENOTFOUND);
    cr_assert_null(img);
    assert_msg("/m/top.qcow2", "cannot open backing file '/m/gone.qcow2'");
}

Test(image, self_loop_is_refused)
{
    qcow2_image *img;

    small("/m/a.qcow2", "a.qcow2", "qcow2");
    cr_assert_eq(open_top("/m/a.qcow2", 0, &img), QCOW2_ECORRUPT);
    assert_msg("infinite loop", "'/m/a.qcow2'");
}

Test(image, two_image_loop_is_refused)
{
    qcow2_image *img;

    small("/m/a.qcow2", "b.qcow2", "qcow2");
    small("/m/b.qcow2", "a.qcow2", "qcow2");
    cr_assert_eq(open_top("/m/a.qcow2", 0, &img), QCOW2_ECORRUPT);
    assert_msg("infinite loop", "'/m/a.qcow2'");
}

Test(image, same_file_twice_below_the_top_is_a_loop)
{
    qcow2_image *img;

    small("/m/a.qcow2", "b.qcow2", "qcow2");
    small("/m/b.qcow2", "c.qcow2", "qcow2");
    small("/m/c.qcow2", "b.qcow2", "qcow2");
    cr_assert_eq(open_top("/m/a.qcow2", 0, &img), QCOW2_ECORRUPT);
    assert_msg("infinite loop", "'/m/b.qcow2'");
}

Test(image, loop_through_another_spelling_of_the_path_is_refused)
{
    char dir[64], a[96], out[1024];
    qcow2_image *img;

    if (!qo_have_qemu())
        cr_skip_test("qemu-img not installed");
    cr_assert_eq(qo_mkdtemp(dir, sizeof(dir), "img"), 0);
    snprintf(a, sizeof(a), "%s/a.qcow2", dir);
    /* b names ./a, a names ../<dir>/b: only realpath sees the loop. */
    cr_assert_eq(qo_sh(out, sizeof(out),
                       "cd '%s' && qemu-img create -q -f qcow2 b.qcow2 1M && "
                       "qemu-img create -q -f qcow2 -b b.qcow2 -F qcow2 a.qcow2 && "
                       "qemu-img rebase -u -b ./a.qcow2 -F qcow2 b.qcow2 && "
                       "qemu-img rebase -u -b \"../$(basename '%s')/b.qcow2\" -F qcow2 a.qcow2",
                       dir, dir),
                 0, "%s", out);
    cr_assert_eq(qcow2_image_open(&img, a, NULL), QCOW2_ECORRUPT, "%s", rfx_msg());
    assert_msg("infinite loop");
    qo_rmtree(dir);
}

/* A chain of n tiny qcow2 layers /m/l0 (top) .. /m/l<n-1> (bottom). */
static void chain(unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        char path[32], next[32];
        snprintf(path, sizeof(path), "/m/l%u", i);
        snprintf(next, sizeof(next), "l%u", i + 1);
        small(path, i + 1 < n ? next : NULL, "qcow2");
    }
}

static int open_depth(unsigned max_depth, qcow2_image **img)
{
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;

    o.max_depth = max_depth;
    o.cache_bytes = 512;
    qcow2_error_clear();
    return rfx_open_opts(fs, "/m/l0", &o, img);
}

Test(image, max_depth_counts_layers)
{
    qcow2_image *img;

    chain(3);
    cr_assert_eq(open_depth(3, &img), 0, "%s", rfx_msg());
    cr_assert_eq(qcow2_image_chain_length(img), 3);
    qcow2_image_close(img);
    cr_assert_eq(open_depth(2, &img), QCOW2_EUNSUPPORTED);
    cr_assert_null(img);
    assert_msg("/m/l1", "deeper than 2");
    cr_assert_eq(open_depth(1, &img), QCOW2_EUNSUPPORTED);
    assert_msg("/m/l0", "deeper than 1");
}

Test(image, default_limit_is_QCOW2_MAX_CHAIN_DEPTH_layers)
{
    qcow2_image *img;

    chain(QCOW2_MAX_CHAIN_DEPTH);
    cr_assert_eq(open_depth(0, &img), 0, "%s", rfx_msg());
    cr_assert_eq(qcow2_image_chain_length(img), QCOW2_MAX_CHAIN_DEPTH);
    qcow2_image_close(img);
    chain(QCOW2_MAX_CHAIN_DEPTH + 1);
    cr_assert_eq(open_depth(0, &img), QCOW2_EUNSUPPORTED);
    assert_msg("deeper than 256");
}

Test(image, max_depth_cannot_raise_the_hard_limit)
{
    qcow2_image *img = NULL;
    int rc;

    chain(QCOW2_MAX_CHAIN_DEPTH + 1);
    rc = open_depth(100000, &img);
    if (rc == 0) {
        unsigned n = qcow2_image_chain_length(img);
        qcow2_image_close(img);
        cr_assert_fail("a chain of %u layers opened; QCOW2_MAX_CHAIN_DEPTH is %u", n,
                       QCOW2_MAX_CHAIN_DEPTH);
    }
    cr_assert_eq(rc, QCOW2_EUNSUPPORTED, "%s", rfx_msg());
}

Test(image, no_backing_flag_opens_the_top_alone)
{
    qcow2_image *img;
    qcow2_info info;
    uint8_t buf[512];

    raw("/m/base.raw", 64 * 1024, 0xaa);
    small("/m/top.qcow2", "base.raw", "raw");
    cr_assert_eq(open_top("/m/top.qcow2", QCOW2_OPEN_NO_BACKING, &img), 0, "%s", rfx_msg());
    cr_assert_eq(qcow2_image_chain_length(img), 1);
    cr_assert_null(qcow2_image_backing(img));
    cr_assert_eq(qcow2_image_get_info(img, &info), 0);
    cr_assert_str_eq(info.backing_name, "base.raw");
    cr_assert_str_eq(info.backing_path, "/m/base.raw");
    cr_assert_eq(qcow2_image_read(img, buf, sizeof(buf), 0), 0);
    cr_assert_eq(buf[0], 0);
    qcow2_image_close(img);
    /* A missing backing file does not matter then. */
    small("/m/top.qcow2", "gone.raw", "raw");
    cr_assert_eq(open_top("/m/top.qcow2", QCOW2_OPEN_NO_BACKING, &img), 0, "%s", rfx_msg());
    qcow2_image_close(img);
}

Test(image, backing_layers_stay_read_only_under_a_writable_top)
{
    qcow2_image *img;

    raw("/m/base.raw", 64 * 1024, 0xaa);
    small("/m/top.qcow2", "base.raw", "raw");
    cr_assert_eq(open_top("/m/top.qcow2", QCOW2_OPEN_RDWR, &img), 0, "%s", rfx_msg());
    cr_assert_eq(img->state, QCOW2__OPEN_RW);
    cr_assert_eq(img->backing->state, QCOW2__OPEN_RO);
    cr_assert_eq(img->backing->opts.flags & QCOW2_OPEN_RDWR, 0);
    /* The backing file's handle cannot write: memfs refuses writes on read-only handles. */
    cr_assert_neq(img->backing->io->ops->pwrite(img->backing->io, "x", 1, 0), 0);
    qcow2_image_close(img);
}

Test(image, second_writer_is_busy_unless_locking_is_off)
{
    qcow2_image *a, *b;

    small("/m/a.qcow2", NULL, NULL);
    cr_assert_eq(open_top("/m/a.qcow2", QCOW2_OPEN_RDWR, &a), 0, "%s", rfx_msg());
    cr_assert_eq(open_top("/m/a.qcow2", 0, &b), QCOW2_EBUSY);
    cr_assert_eq(open_top("/m/a.qcow2", QCOW2_OPEN_NO_LOCK, &b), 0, "%s", rfx_msg());
    qcow2_image_close(b);
    qcow2_image_close(a);
}

Test(image, failure_deep_in_the_chain_leaves_nothing_open)
{
    qcow2_image *img;

    small("/m/l0", "l1", "qcow2");
    small("/m/l1", "l2", "qcow2");
    small("/m/l2", NULL, NULL);
    rfx_poke32(fs, "/m/l2", 4, 9); /* bad version at the bottom */
    cr_assert_eq(open_top("/m/l0", 0, &img), QCOW2_EUNSUPPORTED);
    cr_assert_null(img);
    assert_msg("/m/l2", "version 9");
    /* Every lock was released: a writer can open each layer now. */
    for (unsigned i = 0; i < 2; i++) {
        char p[16];
        snprintf(p, sizeof(p), "/m/l%u", i);
        cr_assert_eq(rfx_open(fs, p, QCOW2_OPEN_RDWR | QCOW2_OPEN_NO_BACKING, 0, &img), 0,
                     "%s: %s", p, rfx_msg());
        qcow2_image_close(img);
    }
}

/* ---- info ------------------------------------------------------------------------------ */

Test(image, info_of_a_qcow2_layer)
{
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;
    qcow2_image *img;
    qcow2_info info;
    size_t len;

    raw("/m/base.raw", 2u << 20, 1);
    co.size = 2u << 20;
    co.cluster_size = 32768;
    co.refcount_bits = 4;
    co.extended_l2 = true;
    co.compression_type = 1;
    co.lazy_refcounts = true;
    co.backing_file = "base.raw";
    co.backing_format = "raw";
    cr_assert_eq(rfx_create(fs, "/m/top.qcow2", &co), 0, "%s", rfx_msg());
    memfs_get(fs, "/m/top.qcow2", &len);
    cr_assert_eq(open_top("/m/top.qcow2", 0, &img), 0, "%s", rfx_msg());
    cr_assert_eq(qcow2_image_get_info(img, &info), 0);
    cr_assert_eq(info.format, QCOW2_FORMAT_QCOW2);
    cr_assert_str_eq(info.filename, "/m/top.qcow2");
    cr_assert_eq(info.virtual_size, 2u << 20);
    cr_assert_eq(info.file_size, len);
    cr_assert_eq(info.cluster_size, 32768);
    cr_assert_eq(info.qcow2_version, 3);
    cr_assert_eq(info.refcount_bits, 4);
    cr_assert_eq(info.compression_type, 1);
    cr_assert(info.lazy_refcounts);
    cr_assert(!info.dirty);
    cr_assert(!info.corrupt);
    cr_assert(info.extended_l2);
    cr_assert_eq(info.incompatible_features, QCOW2_INCOMPAT_EXTL2 | QCOW2_INCOMPAT_COMPRESSION);
    cr_assert_eq(info.compatible_features, QCOW2_COMPAT_LAZY_REFCOUNTS);
    cr_assert_eq(info.autoclear_features, 0);
    cr_assert_str_eq(info.backing_name, "base.raw");
    cr_assert_str_eq(info.backing_format, "raw");
    cr_assert_str_eq(info.backing_path, "/m/base.raw");
    cr_assert_eq(info.nb_snapshots, 0);
    cr_assert_eq(info.nb_bitmaps, 0);
    cr_assert_eq(qcow2_image_get_info(qcow2_image_backing(img), &info), 0);
    cr_assert_eq(info.format, QCOW2_FORMAT_RAW);
    cr_assert_eq(info.cluster_size, 0);
    cr_assert_eq(info.qcow2_version, 0);
    cr_assert_eq(info.refcount_bits, 0);
    cr_assert_eq(info.virtual_size, 2u << 20);
    cr_assert_null(info.backing_name);
    qcow2_image_close(img);
}

Test(image, info_reports_dirty_and_corrupt_bits)
{
    qcow2_image *img;
    qcow2_info info;

    small("/m/a.qcow2", NULL, NULL);
    rfx_poke64(fs, "/m/a.qcow2", 72, QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT);
    cr_assert_eq(open_top("/m/a.qcow2", 0, &img), 0, "%s", rfx_msg());
    cr_assert_eq(qcow2_image_get_info(img, &info), 0);
    cr_assert(info.dirty);
    cr_assert(info.corrupt);
    cr_assert(!info.lazy_refcounts);
    qcow2_image_close(img);
}

Test(image, close_accepts_null)
{
    qcow2_image_close(NULL);
    cr_assert_eq(qcow2_image_chain_length(NULL), 0);
}

/* With a custom open_fn (no realpath), "./" and "//" still name the same file: a loop. */
Test(image, self_loop_through_dot_slash_is_refused_with_a_custom_open_fn)
{
    qcow2_image *img;

    small("/m/a.qcow2", "./a.qcow2", "qcow2");
    cr_assert_eq(open_top("/m/a.qcow2", 0, &img), QCOW2_ECORRUPT, "%s",
                 qcow2_error_last()->message);
    cr_assert_null(img);
    cr_assert(strstr(qcow2_error_last()->message, "infinite loop"), "%s", qcow2_error_last()->message);
    cr_assert_lt(strlen(qcow2_error_last()->message), 200, "%s", qcow2_error_last()->message);
}
