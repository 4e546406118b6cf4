/*
 * qsnap_open_image(): a snapshot or branch opened as a libqcow2 image, for
 * the nbdkit plugin and qsnap mount. Content (digest against the model),
 * locks (a written head is exclusive: a second writer and a tree command
 * touching it get QSNAP_EBUSY; a snapshot opened for reading leaves others
 * reading), refusals (writing a snapshot, unknown names and flags), internal
 * snapshots, and the image outliving its store handle.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2/qcow2.h"
#include "qemu_oracle.h"
#include "qsnap/qsnap.h"
#include "tree_fixture.h"

#define MiB (1024u * 1024u)

static void setup(void)
{
    tf_suite_init(0x21);
}

TestSuite(open_image, .init = setup, .fini = tf_suite_fini, .timeout = 120);

static void same_digest(qcow2_image *img, const char *name)
{
    uint8_t got[16], want[16];

    tf_ok(qcow2_image_digest(img, got, NULL, NULL), "digest");
    tf_digest_buf(tf_dir, tf_model_get(&tf_m, name), TF_SIZE, want);
    cr_assert(memcmp(got, want, 16) == 0, "%s: content differs from the model", name);
}

/* s1 over the disk, main written after it. */
static qsnap_store *make_tree(const char *tag)
{
    qsnap_store *s = tf_start_s1(tag, &tf_m);

    tf_write_state(s, &tf_m, "main", 0x5a, 2 * MiB, 64 * 1024);
    return s;
}

Test(open_image, content_of_snapshot_and_branch)
{
    qsnap_store *s = make_tree("oi-content");
    qcow2_image *a = NULL, *b = NULL;

    tf_ok(qsnap_open_image(s, "s1", 0, &a), "open s1");
    tf_ok(qsnap_open_image(s, "main", 0, &b), "open main");
    qsnap_store_close(s); /* the images do not need the store */
    same_digest(a, "s1");
    same_digest(b, "main");
    qcow2_image_close(a);
    qcow2_image_close(b);
}

Test(open_image, written_head_is_locked)
{
    qsnap_store *s = make_tree("oi-lock");
    qcow2_image *w = NULL, *w2 = NULL, *r = NULL;
    qsnap_plan *p = NULL;
    uint8_t buf[4096];
    int rc;

    tf_ok(qsnap_open_image(s, "main", QCOW2_OPEN_RDWR, &w), "open main for writing");
    memset(buf, 0x77, sizeof(buf));
    tf_ok(qcow2_image_write(w, buf, sizeof(buf), 3 * MiB), "write");
    tf_model_write(&tf_m, "main", 0x77, 3 * MiB, sizeof(buf));
    rc = qsnap_open_image(s, "main", QCOW2_OPEN_RDWR, &w2);
    cr_assert_eq(rc, QSNAP_EBUSY, "a second writer: rc %d", rc);
    cr_assert_null(w2);
    rc = qsnap_open_image(s, "main", 0, &r);
    cr_assert_eq(rc, QSNAP_EBUSY, "a reader of a written head: rc %d", rc);
    rc = qsnap_plan_create(&p, s, NULL);
    if (rc == 0)
        rc = qsnap_plan_execute(s, p, NULL);
    cr_assert_eq(rc, QSNAP_EBUSY, "qsnap create while the head is written: rc %d", rc);
    qsnap_plan_free(p);
    /* The snapshot below stays readable. */
    tf_ok(qsnap_open_image(s, "s1", 0, &r), "open s1 while main is written");
    same_digest(r, "s1");
    qcow2_image_close(r);
    tf_ok(qcow2_image_flush(w), "flush");
    qcow2_image_close(w);
    tf_ok(qsnap_open_image(s, "main", 0, &r), "open main after the writer closed");
    same_digest(r, "main");
    qcow2_image_close(r);
    qsnap_store_close(s);
}

Test(open_image, refusals)
{
    qsnap_store *s = make_tree("oi-refuse");
    qcow2_image *img = (qcow2_image *)&img;

    cr_assert_eq(qsnap_open_image(s, "s1", QCOW2_OPEN_RDWR, &img), QSNAP_EUSAGE);
    cr_assert_null(img);
    cr_assert(strstr(qsnap_error_last()->message, "s1") != NULL);
    cr_assert_eq(qsnap_open_image(s, "nope", 0, &img), QSNAP_ENOTFOUND);
    cr_assert_eq(qsnap_open_image(s, "nope", QCOW2_OPEN_RDWR, &img), QSNAP_ENOTFOUND);
    cr_assert_eq(qsnap_open_image(s, "main", QCOW2_OPEN_NO_LOCK, &img), QSNAP_EUSAGE);
    cr_assert_eq(qsnap_open_image(s, NULL, 0, &img), QSNAP_EUSAGE);
    cr_assert_eq(qsnap_open_image(s, "main", 0, NULL), QSNAP_EUSAGE);
    qsnap_store_close(s);
}

Test(open_image, internal_snapshot)
{
    qsnap_store *s = make_tree("oi-internal");
    qsnap_create_opts co = QSNAP_CREATE_OPTS_INIT;
    qsnap_plan *p = NULL;
    qcow2_image *img = NULL;
    char *head;

    co.name = "inner";
    co.internal = true;
    tf_ok(qsnap_plan_create(&p, s, &co), "plan internal");
    tf_ok(qsnap_plan_execute(s, p, NULL), "internal snapshot");
    qsnap_plan_free(p);
    tf_model_set(&tf_m, "inner", false, tf_model_get(&tf_m, "main"));
    head = tf_file_of(s, "main");
    tf_lib_write(head, 0x66, 0, 4096);
    tf_model_write(&tf_m, "main", 0x66, 0, 4096);
    free(head);
    tf_ok(qsnap_open_image(s, "inner", 0, &img), "open the internal snapshot");
    same_digest(img, "inner");
    qcow2_image_close(img);
    tf_ok(qsnap_open_image(s, "main", 0, &img), "open main");
    same_digest(img, "main");
    qcow2_image_close(img);
    qsnap_store_close(s);
}
