/*
 * libvirt's XML in libqsnap: the XML subset reader (what it decodes, what it
 * refuses and how it says so, that a written document reads back the same),
 * and qsnap_libvirt_xml_make() on a small tree (one document per named
 * snapshot, parents first, each naming its layer in the inner domain and the
 * overlay above it in <disks>; the domain XML's disk moved to the current
 * head; clear errors for a domain without a disk, uuid or a matching target).
 */
#include <criterion/criterion.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qsnap/libvirt.h"
#include "qsnap/qsnap.h"
#include "qsnap_int.h"
#include "xml_int.h"

static struct qsnap__xml *parse_ok(const char *text)
{
    struct qsnap__xml *x = NULL;
    int rc = qsnap__xml_parse(&x, text, strlen(text), "t.xml");

    cr_assert_eq(rc, 0, "refused: %s", qsnap_error_last()->message);
    cr_assert_not_null(x);
    return x;
}

static void parse_bad(const char *text, size_t len, const char *want)
{
    struct qsnap__xml *x = NULL;
    int rc = qsnap__xml_parse(&x, text, len, "t.xml");

    cr_assert_eq(rc, QSNAP_EUSAGE, "accepted: %.60s", text);
    cr_assert_null(x);
    cr_assert(strstr(qsnap_error_last()->message, want) != NULL, "message '%s' lacks '%s'",
              qsnap_error_last()->message, want);
    cr_assert(strncmp(qsnap_error_last()->message, "t.xml", 5) == 0);
}

static char *write_doc(const struct qsnap__xml *x)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);

    cr_assert_not_null(f);
    qsnap__xml_write(f, x);
    fclose(f);
    return buf;
}

Test(xml, decodes_entities_cdata_and_skips_comments)
{
    struct qsnap__xml *x = parse_ok(
        "\xef\xbb\xbf<?xml version='1.0'?>\n<!-- lead -->\n<a k=\"v&amp;&lt;&#x41;&#66;\" j='q\"'>"
        "t&gt;<!-- c --><![CDATA[<raw&>]]><b/><?pi x?><b n='2'>in</b></a>\n<!-- tail -->\n");
    char *t = qsnap__xml_text(x);
    struct qsnap__xml *b1 = qsnap__xml_child(x, "b", NULL), *b2 = qsnap__xml_child(x, "b", b1);

    cr_assert_str_eq(x->name, "a");
    cr_assert_str_eq(qsnap__xml_attr(x, "k"), "v&<AB");
    cr_assert_str_eq(qsnap__xml_attr(x, "j"), "q\"");
    cr_assert_null(qsnap__xml_attr(x, "none"));
    cr_assert_str_eq(t, "t><raw&>");
    cr_assert_not_null(b1);
    cr_assert_str_eq(qsnap__xml_attr(b2, "n"), "2");
    cr_assert_null(qsnap__xml_child(x, "b", b2));
    free(t);
    qsnap__xml_free(x);
}

Test(xml, utf8_character_references)
{
    struct qsnap__xml *x = parse_ok("<a>&#233;&#x263a;&#x1F600;</a>");
    char *t = qsnap__xml_text(x);

    cr_assert_str_eq(t, "\xc3\xa9\xe2\x98\xba\xf0\x9f\x98\x80");
    free(t);
    qsnap__xml_free(x);
}

Test(xml, refuses_what_is_outside_the_subset)
{
    parse_bad("<!DOCTYPE a [<!ENTITY x 'y'>]><a>&x;</a>", 40, "DOCTYPE");
    parse_bad("<a>&x;</a>", 10, "unknown entity");
    parse_bad("<a>&#0;</a>", 11, "character reference");
    parse_bad("<a>&#xD800;</a>", 15, "character reference");
    parse_bad("<a>&#1114112;</a>", 17, "out of range");
    parse_bad("<a b='1' b='2'/>", 16, "duplicate attribute");
    parse_bad("<a><b></a></b>", 14, "does not match");
    parse_bad("<a>", 3, "ends inside");
    parse_bad("<a b='<'/>", 10, "'<' in an attribute value");
    parse_bad("<a b=1/>", 8, "quoted");
    parse_bad("<a/><b/>", 8, "after the root");
    parse_bad("text", 4, "before the root");
    parse_bad("", 0, "no root");
    parse_bad("<a>\0</a>", 8, "NUL");
    parse_bad("<a><!-- x </a>", 14, "unterminated comment");
    parse_bad("<a\n\n b='1'c='2'/>", 17, "line 3");
}

Test(xml, depth_is_bounded)
{
    size_t n = QSNAP__XML_MAX_DEPTH + 1, len = n * 7;
    char *doc = malloc(len + 1), *p = doc;

    for (size_t i = 0; i < n; i++)
        p += sprintf(p, "<a>");
    for (size_t i = 0; i < n; i++)
        p += sprintf(p, "</a>");
    parse_bad(doc, (size_t)(p - doc), "too deep");
    /* One level less is fine. */
    p = doc;
    for (size_t i = 0; i + 1 < n; i++)
        p += sprintf(p, "<a>");
    for (size_t i = 0; i + 1 < n; i++)
        p += sprintf(p, "</a>");
    {
        struct qsnap__xml *x = NULL;
        cr_assert_eq(qsnap__xml_parse(&x, doc, (size_t)(p - doc), "t.xml"), 0);
        qsnap__xml_free(x);
    }
    free(doc);
}

Test(xml, written_documents_read_back_the_same)
{
    struct qsnap__xml *x =
        parse_ok("<d a=\"x'y&quot;\n\">\n  <n>&lt;&amp;&gt;'\"</n>\n  <e/>\n</d>");
    struct qsnap__xml *y;
    char *w1, *w2;

    cr_assert_eq(qsnap__xml_set_attr(qsnap__xml_child(x, "e", NULL), "f", "1 & 2"), 0);
    cr_assert_eq(qsnap__xml_set_attr(x, "a", "new"), 0);
    w1 = write_doc(x);
    y = parse_ok(w1);
    w2 = write_doc(y);
    cr_assert_str_eq(w1, w2);
    cr_assert_str_eq(qsnap__xml_attr(qsnap__xml_child(y, "e", NULL), "f"), "1 & 2");
    cr_assert_str_eq(qsnap__xml_attr(y, "a"), "new");
    cr_assert(strstr(w1, "\n  <n>") != NULL, "layout kept: %s", w1);
    free(w1);
    free(w2);
    qsnap__xml_free(x);
    qsnap__xml_free(y);
}

/* ---- qsnap_libvirt_xml_make ------------------------------------------------------------ */

static char dir[256], disk[300], dom[300];

static void make_tree(void)
{
    qsnap_store *s;
    qsnap_plan *p;
    qsnap_create_opts co = QSNAP_CREATE_OPTS_INIT;
    qcow2_create_opts cr = QCOW2_CREATE_OPTS_INIT;

    snprintf(dir, sizeof(dir), "/tmp/qsnap-tlv.XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(disk, sizeof(disk), "%s/vm.raw", dir);
    snprintf(dom, sizeof(dom), "%s/dom.xml", dir);
    cr.format = QCOW2_FORMAT_RAW;
    cr.size = 1 << 20;
    cr_assert_eq(qcow2_image_create(disk, &cr), 0);
    /* A (the disk) -> B -> main; A -> side (branch). Names with XML specials. */
    const char *names[] = {"A&1", "B<2>"};
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(qsnap_store_open(&s, disk, QSNAP_OPEN_CREATE), 0);
        co.name = names[i];
        co.description = i ? NULL : "first 'one'";
        cr_assert_eq(qsnap_plan_create(&p, s, &co), 0, "%s", qsnap_error_last()->message);
        if (i == 1) {
            /* Make main dirty first so B gets its own layer. */
            qcow2_image *h;
            qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
            qsnap_node *cur;
            char buf[512];
            memset(buf, 7, sizeof(buf));
            cr_assert_eq(qsnap_current(s, &cur), 0);
            oo.flags = QCOW2_OPEN_RDWR;
            cr_assert_eq(qcow2_image_open(&h, cur->file, &oo), 0);
            cr_assert_eq(qcow2_image_write(h, buf, sizeof(buf), 0), 0);
            qcow2_image_close(h);
            qsnap_list_free(cur, 1);
            qsnap_plan_free(p);
            cr_assert_eq(qsnap_plan_create(&p, s, &co), 0);
        }
        cr_assert_eq(qsnap_plan_execute(s, p, NULL), 0, "%s", qsnap_error_last()->message);
        qsnap_plan_free(p);
        qsnap_store_close(s);
    }
    cr_assert_eq(qsnap_store_open(&s, disk, 0), 0);
    cr_assert_eq(qsnap_plan_branch_create(&p, s, "side", "A&1"), 0);
    cr_assert_eq(qsnap_plan_execute(s, p, NULL), 0);
    qsnap_plan_free(p);
    qsnap_store_close(s);
}

static void write_dom(const char *text)
{
    FILE *f = fopen(dom, "w");

    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
}

static void cleanup(void)
{
    char cmd[600];

    if (dir[0]) {
        snprintf(cmd, sizeof(cmd), "chmod -R u+w '%s'; rm -rf '%s'", dir, dir);
        cr_assert_eq(system(cmd), 0);
    }
}

static const char DOMAIN_XML[] =
    "<domain type='qemu'>\n  <name>vm</name>\n  <uuid>11111111-2222-3333-4444-555555555555</uuid>\n"
    "  <devices>\n    <disk type='file' device='cdrom'><source file='/x.iso'/><target dev='hdc'/>"
    "</disk>\n    <disk type='file' device='disk'>\n      <driver name='qemu' type='raw'/>\n"
    "      <source file='%s'/>\n      <target dev='vda' bus='virtio'/>\n"
    "      <backingStore/>\n    </disk>\n"
    "    <disk type='file' device='disk'><source file='/data.img'/><target dev='vdb'/></disk>\n"
    "  </devices>\n</domain>\n";

Test(libvirt_xml, documents_parents_first_with_layer_and_overlay, .fini = cleanup)
{
    qsnap_store *s;
    qsnap_libvirt_xml *x = NULL;
    qsnap_node *cur;
    char text[2048];
    struct qsnap__xml *d0, *d1, *dm;
    char *vm = NULL, real[PATH_MAX];

    make_tree();
    snprintf(text, sizeof(text), DOMAIN_XML, disk);
    write_dom(text);
    cr_assert_eq(qsnap_store_open(&s, disk, QSNAP_OPEN_READONLY), 0);
    cr_assert_eq(qsnap_libvirt_xml_make(&x, s, dom, NULL), 0, "%s", qsnap_error_last()->message);
    cr_assert_eq(qsnap_current(s, &cur), 0);
    cr_assert_eq(x->n, 2);
    cr_assert_str_eq(x->domain, "vm");
    cr_assert_str_eq(x->target, "vda");
    cr_assert_str_eq(x->old_source, disk);
    /* The domain goes on the VM path, which opens the current branch's head. */
    cr_assert_eq(qsnap_vm_path(s, &vm), 0, "%s", qsnap_error_last()->message);
    cr_assert_str_eq(x->new_source, vm);
    cr_assert(realpath(vm, real) != NULL);
    cr_assert_str_eq(real, cur->file);
    free(vm);
    cr_assert_str_eq(x->docs[0].name, "A&1");
    cr_assert_str_eq(x->docs[0].file, "001-A&1.xml");
    cr_assert_str_eq(x->docs[1].name, "B<2>");
    cr_assert(!x->docs[0].current && x->docs[1].current, "current: the current branch's base");

    d0 = parse_ok(x->docs[0].xml);
    d1 = parse_ok(x->docs[1].xml);
    cr_assert_str_eq(d0->name, "domainsnapshot");
    {
        char *n = qsnap__xml_text(qsnap__xml_child(d0, "name", NULL));
        char *desc = qsnap__xml_text(qsnap__xml_child(d0, "description", NULL));
        char *pn =
            qsnap__xml_text(qsnap__xml_child(qsnap__xml_child(d1, "parent", NULL), "name", NULL));
        cr_assert_str_eq(n, "A&1");
        cr_assert_str_eq(desc, "first 'one'");
        cr_assert_str_eq(pn, "A&1");
        cr_assert_null(qsnap__xml_child(d0, "parent", NULL));
        free(n);
        free(desc);
        free(pn);
    }
    /* A's inner domain names the disk itself (raw); its <disks> the overlay built on it. */
    {
        struct qsnap__xml *disks = qsnap__xml_child(d0, "disks", NULL);
        struct qsnap__xml *e = qsnap__xml_child(disks, "disk", NULL);
        struct qsnap__xml *e2 = qsnap__xml_child(disks, "disk", e);
        struct qsnap__xml *idom = qsnap__xml_child(d0, "domain", NULL);
        struct qsnap__xml *devs = qsnap__xml_child(idom, "devices", NULL);
        struct qsnap__xml *vda =
            qsnap__xml_child(devs, "disk", qsnap__xml_child(devs, "disk", NULL));
        const char *ov = qsnap__xml_attr(qsnap__xml_child(e, "source", NULL), "file");
        cr_assert_str_eq(qsnap__xml_attr(e, "name"), "vda");
        cr_assert_str_eq(qsnap__xml_attr(e, "snapshot"), "external");
        cr_assert(ov && strstr(ov, "/vm.raw.qsnap/layers/") != NULL, "overlay %s", ov);
        cr_assert_str_eq(qsnap__xml_attr(e2, "name"), "vdb");
        cr_assert_str_eq(qsnap__xml_attr(e2, "snapshot"), "no");
        cr_assert_str_eq(qsnap__xml_attr(qsnap__xml_child(vda, "source", NULL), "file"), disk);
        cr_assert_str_eq(qsnap__xml_attr(qsnap__xml_child(vda, "driver", NULL), "type"), "raw");
        cr_assert_null(qsnap__xml_child(vda, "backingStore", NULL));
    }
    dm = parse_ok(x->domain_xml);
    {
        struct qsnap__xml *devs = qsnap__xml_child(dm, "devices", NULL);
        struct qsnap__xml *vda =
            qsnap__xml_child(devs, "disk", qsnap__xml_child(devs, "disk", NULL));
        cr_assert_str_eq(qsnap__xml_attr(qsnap__xml_child(vda, "source", NULL), "file"), x->new_source);
        cr_assert_str_eq(qsnap__xml_attr(qsnap__xml_child(vda, "driver", NULL), "type"), "qcow2");
    }
    qsnap__xml_free(d0);
    qsnap__xml_free(d1);
    qsnap__xml_free(dm);
    qsnap_list_free(cur, 1);
    qsnap_libvirt_xml_free(x);
    qsnap_store_close(s);
}

Test(libvirt_xml, clear_errors, .fini = cleanup)
{
    qsnap_store *s;
    qsnap_libvirt_xml *x = NULL;
    char text[2048];

    make_tree();
    cr_assert_eq(qsnap_store_open(&s, disk, QSNAP_OPEN_READONLY), 0);
    write_dom("<domain type='qemu'><name>vm</name><uuid>u</uuid><devices/></domain>");
    cr_assert_eq(qsnap_libvirt_xml_make(&x, s, dom, NULL), QSNAP_EUSAGE);
    cr_assert(strstr(qsnap_error_last()->message, "no disk") != NULL);
    write_dom("<domain type='qemu'><name>vm</name><devices><disk><target dev='vda'/></disk>"
              "</devices></domain>");
    cr_assert_eq(qsnap_libvirt_xml_make(&x, s, dom, NULL), QSNAP_EUSAGE);
    cr_assert(strstr(qsnap_error_last()->message, "uuid") != NULL);
    write_dom("<domainsnapshot/>");
    cr_assert_eq(qsnap_libvirt_xml_make(&x, s, dom, NULL), QSNAP_EUSAGE);
    cr_assert(strstr(qsnap_error_last()->message, "not a libvirt domain") != NULL);
    snprintf(text, sizeof(text), DOMAIN_XML, "/elsewhere.img");
    write_dom(text);
    cr_assert_eq(qsnap_libvirt_xml_make(&x, s, dom, NULL), QSNAP_EUSAGE);
    cr_assert(strstr(qsnap_error_last()->message, "none uses a file of this store") != NULL, "%s",
              qsnap_error_last()->message);
    cr_assert_eq(qsnap_libvirt_xml_make(&x, s, dom, "vdz"), QSNAP_EUSAGE);
    cr_assert_eq(qsnap_libvirt_xml_make(&x, s, dom, "vda"), 0, "%s", qsnap_error_last()->message);
    cr_assert_eq(x->n, 2);
    qsnap_libvirt_xml_free(x);
    unlink(dom);
    cr_assert_eq(qsnap_libvirt_xml_make(&x, s, dom, NULL), QSNAP_ENOTFOUND);
    cr_assert_null(x);
    qsnap_store_close(s);
}
