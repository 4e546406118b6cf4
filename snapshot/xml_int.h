/*
 * A small XML reader and writer for the libvirt documents qsnap reads
 * (domainsnapshot files, a domain's XML) and writes (domainsnapshot files).
 *
 * The documents are input, often hostile: the reader accepts the subset of
 * XML 1.0 that libvirt writes (elements, attributes in ' or " quotes, text,
 * CDATA, comments, processing instructions and the XML declaration, the five
 * predefined entities and character references) and refuses everything else
 * with a one-line message naming the document and the line: a DOCTYPE (so
 * no entity definitions, no expansion), unknown entities, NUL bytes,
 * mismatched or unclosed tags, duplicate attributes, nesting deeper than
 * QSNAP__XML_MAX_DEPTH. Namespaces are not interpreted (a prefix is part of
 * the name). Text keeps its whitespace, so a document read and written back
 * keeps its layout.
 */
#ifndef QSNAP_XML_INT_H
#define QSNAP_XML_INT_H

#include <stddef.h>
#include <stdio.h>

#define QSNAP__XML_MAX_DEPTH 128u        /* libvirt's documents nest about 8 deep */
#define QSNAP__XML_MAX_BYTES (16u << 20) /* a document (a domain XML is a few KiB) */

struct qsnap__xml;

/* One child of an element: an element or a run of text (exactly one is set). */
struct qsnap__xml_item {
    struct qsnap__xml *el;
    char *text; /* decoded */
};

/* An element. */
struct qsnap__xml {
    char *name;
    char **attr;  /* name, value, name, value, ... (values decoded) */
    size_t nattr; /* pairs */
    struct qsnap__xml_item *items;
    size_t nitems;
};

/*
 * Parse a whole document (len bytes, at most QSNAP__XML_MAX_BYTES). what
 * names it in messages. *out is the root element (qsnap__xml_free()).
 * @return 0; QSNAP_EUSAGE (not well-formed, or outside the subset), QSNAP_ERROR
 */
int qsnap__xml_parse(struct qsnap__xml **out, const char *text, size_t len, const char *what);

/* Read a file (at most QSNAP__XML_MAX_BYTES) and parse it; errors name the file. */
int qsnap__xml_parse_file(struct qsnap__xml **out, const char *path);

void qsnap__xml_free(struct qsnap__xml *e);

/* The value of attribute name, or NULL. */
const char *qsnap__xml_attr(const struct qsnap__xml *e, const char *name);

/* The first child element named name (NULL: any), or NULL; after: continue after that child. */
struct qsnap__xml *qsnap__xml_child(const struct qsnap__xml *e, const char *name,
                                    const struct qsnap__xml *after);

/* The text directly inside e, joined (malloc'd; "" when none), or NULL when out of memory. */
char *qsnap__xml_text(const struct qsnap__xml *e);

/* Set (add or replace) an attribute. @return 0, QSNAP_ERROR (memory) */
int qsnap__xml_set_attr(struct qsnap__xml *e, const char *name, const char *value);

/* Append a new child element (returned, owned by e) or text. NULL / QSNAP_ERROR: memory. */
struct qsnap__xml *qsnap__xml_add(struct qsnap__xml *e, const char *name);
int qsnap__xml_add_text(struct qsnap__xml *e, const char *text);

/* Remove and free child element c of e. */
void qsnap__xml_remove(struct qsnap__xml *e, struct qsnap__xml *c);

/* Write e (and its children) as XML, escaped. */
void qsnap__xml_write(FILE *f, const struct qsnap__xml *e);

/* Write text escaped for an attribute value in single quotes (attr) or for content. */
void qsnap__xml_escape(FILE *f, const char *s, int attr);

#endif /* QSNAP_XML_INT_H */
