/*
 * The XML subset reader and writer of xml_int.h: a recursive-descent parser
 * over a bounded buffer, with a depth limit, and a writer that escapes every
 * value. No entity is ever defined or expanded beyond the five predefined
 * ones and character references.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qsnap_int.h"
#include "xml_int.h"

struct xp {
    const char *s, *end, *what;
    const char *start;
    int rc;
};

static unsigned line_of(const struct xp *x, const char *at)
{
    unsigned n = 1;

    for (const char *c = x->start; c < at && c < x->end; c++)
        n += *c == '\n';
    return n;
}

static int bad(struct xp *x, const char *at, const char *msg)
{
    if (!x->rc)
        x->rc = qsnap__err(QSNAP_EUSAGE, NULL, "%s: line %u: %s", x->what, line_of(x, at), msg);
    return x->rc;
}

static int nomem(void)
{
    return qsnap__err(QSNAP_ERROR, NULL, "out of memory");
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static bool name_start(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' || c >= 0x80;
}

static bool name_char(unsigned char c)
{
    return name_start(c) || (c >= '0' && c <= '9') || c == '-' || c == '.';
}

static bool starts(const struct xp *x, const char *lit)
{
    size_t n = strlen(lit);

    return (size_t)(x->end - x->s) >= n && !memcmp(x->s, lit, n);
}

static void skip_space(struct xp *x)
{
    while (x->s < x->end && is_space(*x->s))
        x->s++;
}

/* Skip past the terminator lit; error msg when it never comes. */
static int skip_past(struct xp *x, const char *lit, const char *msg)
{
    const char *at = x->s;
    size_t n = strlen(lit);

    for (; x->s + n <= x->end; x->s++) {
        if (!memcmp(x->s, lit, n)) {
            x->s += n;
            return 0;
        }
    }
    return bad(x, at, msg);
}

/* A growable string. */
struct buf {
    char *p;
    size_t len, cap;
};

static int put(struct buf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        char *p;
        while (cap < b->len + n + 1)
            cap *= 2;
        p = realloc(b->p, cap);
        if (!p)
            return nomem();
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

static int put_utf8(struct buf *b, uint32_t cp)
{
    char u[4];
    size_t n;

    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xc0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xe0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        u[2] = (char)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        u[0] = (char)(0xf0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        u[3] = (char)(0x80 | (cp & 0x3f));
        n = 4;
    }
    return put(b, u, n);
}

/* An entity or character reference at x->s ('&'), appended decoded. */
static int entity(struct xp *x, struct buf *b)
{
    static const struct {
        const char *name;
        char c;
    } known[] = {{"lt;", '<'}, {"gt;", '>'}, {"amp;", '&'}, {"quot;", '"'}, {"apos;", '\''}};
    const char *at = x->s++;

    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
        if (starts(x, known[i].name)) {
            x->s += strlen(known[i].name);
            return put(b, &known[i].c, 1);
        }
    }
    if (x->s < x->end && *x->s == '#') {
        uint32_t cp = 0;
        bool hex = x->s + 1 < x->end && x->s[1] == 'x';
        unsigned digits = 0;
        x->s += hex ? 2 : 1;
        for (; x->s < x->end && *x->s != ';'; x->s++, digits++) {
            char c = *x->s;
            unsigned v;
            if (c >= '0' && c <= '9')
                v = (unsigned)(c - '0');
            else if (hex && c >= 'a' && c <= 'f')
                v = (unsigned)(c - 'a' + 10);
            else if (hex && c >= 'A' && c <= 'F')
                v = (unsigned)(c - 'A' + 10);
            else
                return bad(x, at, "bad character reference");
            cp = cp * (hex ? 16u : 10u) + v;
            if (cp > 0x10ffff)
                return bad(x, at, "character reference out of range");
        }
        if (x->s >= x->end || !digits || cp == 0 || (cp >= 0xd800 && cp <= 0xdfff))
            return bad(x, at, "bad character reference");
        x->s++;
        return put_utf8(b, cp);
    }
    return bad(x, at, "unknown entity (only &lt; &gt; &amp; &quot; &apos; and &#N; are read)");
}

static char *take(struct buf *b)
{
    char *p = b->p ? b->p : strdup("");

    b->p = NULL;
    b->len = b->cap = 0;
    return p;
}

void qsnap__xml_free(struct qsnap__xml *e)
{
    if (!e)
        return;
    free(e->name);
    for (size_t i = 0; i < e->nattr * 2; i++)
        free(e->attr[i]);
    free(e->attr);
    for (size_t i = 0; i < e->nitems; i++) {
        qsnap__xml_free(e->items[i].el);
        free(e->items[i].text);
    }
    free(e->items);
    free(e);
}

static struct qsnap__xml_item *add_item(struct qsnap__xml *e)
{
    struct qsnap__xml_item *it = realloc(e->items, (e->nitems + 1) * sizeof(*it));

    if (!it)
        return NULL;
    e->items = it;
    it = &e->items[e->nitems++];
    it->el = NULL;
    it->text = NULL;
    return it;
}

static int read_name(struct xp *x, char **out)
{
    const char *a = x->s;

    if (x->s >= x->end || !name_start((unsigned char)*x->s))
        return bad(x, a, "a name was expected");
    while (x->s < x->end && name_char((unsigned char)*x->s))
        x->s++;
    *out = strndup(a, (size_t)(x->s - a));
    return *out ? 0 : nomem();
}

static int text_item(struct qsnap__xml *e, struct buf *t)
{
    struct qsnap__xml_item *it;

    if (!t->len)
        return 0;
    it = add_item(e);
    if (!it)
        return nomem();
    it->text = take(t);
    return it->text ? 0 : nomem();
}

static int element(struct xp *x, struct qsnap__xml **out, unsigned depth);

/* Content of e up to and including its end tag. */
static int content(struct xp *x, struct qsnap__xml *e, unsigned depth)
{
    struct buf t = {0};
    int rc = 0;

    while (!rc) {
        if (x->s >= x->end) {
            rc = bad(x, x->end, "the document ends inside an element");
            break;
        }
        if (*x->s == '&') {
            rc = entity(x, &t);
        } else if (*x->s != '<') {
            const char *a = x->s;
            while (x->s < x->end && *x->s != '<' && *x->s != '&')
                x->s++;
            rc = put(&t, a, (size_t)(x->s - a));
        } else if (starts(x, "<!--")) {
            x->s += 4;
            rc = skip_past(x, "-->", "unterminated comment");
        } else if (starts(x, "<![CDATA[")) {
            const char *a = x->s += 9;
            rc = skip_past(x, "]]>", "unterminated CDATA section");
            if (!rc)
                rc = put(&t, a, (size_t)(x->s - 3 - a));
        } else if (starts(x, "<?")) {
            rc = skip_past(x, "?>", "unterminated processing instruction");
        } else if (starts(x, "</")) {
            char *name = NULL;
            const char *a = x->s;
            x->s += 2;
            rc = read_name(x, &name);
            if (!rc && strcmp(name, e->name))
                rc = bad(x, a, "end tag does not match its start tag");
            skip_space(x);
            if (!rc && (x->s >= x->end || *x->s != '>'))
                rc = bad(x, a, "bad end tag");
            free(name);
            if (!rc) {
                x->s++;
                rc = text_item(e, &t);
                break;
            }
        } else if (starts(x, "<!")) {
            rc = bad(x, x->s, "unexpected markup declaration");
        } else {
            struct qsnap__xml *c = NULL;
            struct qsnap__xml_item *it;
            rc = text_item(e, &t);
            if (!rc)
                rc = element(x, &c, depth + 1);
            if (!rc && !(it = add_item(e))) {
                qsnap__xml_free(c);
                rc = nomem();
            } else if (!rc) {
                it->el = c;
            }
        }
    }
    free(t.p);
    return rc;
}

/* An element starting at '<'. */
static int element(struct xp *x, struct qsnap__xml **out, unsigned depth)
{
    struct qsnap__xml *e;
    const char *at = x->s;
    int rc;

    *out = NULL;
    if (depth > QSNAP__XML_MAX_DEPTH)
        return bad(x, at, "elements nest too deep");
    e = calloc(1, sizeof(*e));
    if (!e)
        return nomem();
    x->s++;
    rc = read_name(x, &e->name);
    while (!rc) {
        bool sp = x->s < x->end && is_space(*x->s);
        char *an = NULL, **na;
        struct buf v = {0};
        char q;
        skip_space(x);
        if (x->s >= x->end) {
            rc = bad(x, at, "unterminated start tag");
            break;
        }
        if (*x->s == '>') {
            x->s++;
            rc = content(x, e, depth);
            break;
        }
        if (starts(x, "/>")) {
            x->s += 2;
            break;
        }
        if (!sp) {
            rc = bad(x, x->s, "a space is needed between attributes");
            break;
        }
        rc = read_name(x, &an);
        if (!rc && qsnap__xml_attr(e, an))
            rc = bad(x, x->s, "duplicate attribute");
        skip_space(x);
        if (!rc && (x->s >= x->end || *x->s != '='))
            rc = bad(x, x->s, "'=' expected after an attribute name");
        if (!rc) {
            x->s++;
            skip_space(x);
            if (x->s >= x->end || (*x->s != '\'' && *x->s != '"'))
                rc = bad(x, x->s, "a quoted attribute value was expected");
        }
        if (!rc) {
            q = *x->s++;
            while (!rc && x->s < x->end && *x->s != q) {
                if (*x->s == '<')
                    rc = bad(x, x->s, "'<' in an attribute value");
                else if (*x->s == '&')
                    rc = entity(x, &v);
                else
                    rc = put(&v, x->s++, 1);
            }
            if (!rc && x->s >= x->end)
                rc = bad(x, at, "unterminated attribute value");
            if (!rc)
                x->s++;
        }
        if (!rc && !(na = realloc(e->attr, (e->nattr + 1) * 2 * sizeof(*na))))
            rc = nomem();
        if (!rc) {
            e->attr = na;
            e->attr[e->nattr * 2] = an;
            e->attr[e->nattr * 2 + 1] = take(&v);
            an = NULL;
            if (!e->attr[e->nattr * 2 + 1]) {
                free(e->attr[e->nattr * 2]);
                rc = nomem();
            } else {
                e->nattr++;
            }
        }
        free(an);
        free(v.p);
    }
    if (rc) {
        qsnap__xml_free(e);
        return rc;
    }
    *out = e;
    return 0;
}

/* Whitespace, comments and processing instructions (the prolog and the epilog). */
static int misc(struct xp *x)
{
    int rc = 0;

    while (!rc) {
        skip_space(x);
        if (starts(x, "<!--")) {
            x->s += 4;
            rc = skip_past(x, "-->", "unterminated comment");
        } else if (starts(x, "<?")) {
            rc = skip_past(x, "?>", "unterminated processing instruction");
        } else if (starts(x, "<!DOCTYPE") || starts(x, "<!doctype")) {
            rc = bad(x, x->s, "a DOCTYPE is not accepted");
        } else {
            break;
        }
    }
    return rc;
}

int qsnap__xml_parse(struct qsnap__xml **out, const char *text, size_t len, const char *what)
{
    struct xp x = {text, text + len, what, text, 0};
    struct qsnap__xml *root = NULL;

    *out = NULL;
    if (len > QSNAP__XML_MAX_BYTES)
        return qsnap__err(QSNAP_EUSAGE, NULL, "%s: %zu bytes is too large for an XML document",
                          what, len);
    if (memchr(text, '\0', len))
        return qsnap__err(QSNAP_EUSAGE, NULL, "%s: contains a NUL byte: not an XML document", what);
    if (len >= 3 && !memcmp(text, "\xef\xbb\xbf", 3))
        x.s += 3;
    if (misc(&x))
        return x.rc;
    if (x.s >= x.end || *x.s != '<')
        return bad(&x, x.s, x.s >= x.end ? "no root element" : "text before the root element");
    if (element(&x, &root, 1))
        return x.rc;
    if (misc(&x) || x.s < x.end) {
        qsnap__xml_free(root);
        return x.rc ? x.rc : bad(&x, x.s, "content after the root element");
    }
    *out = root;
    return 0;
}

int qsnap__xml_parse_file(struct qsnap__xml **out, const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOFOLLOW), rc;
    struct stat st;
    char *buf = NULL;
    size_t done = 0;

    *out = NULL;
    if (fd < 0)
        return qsnap__err(errno == ENOENT ? QSNAP_ENOTFOUND : QSNAP_EUSAGE, NULL,
                          "%s: cannot open: %s", path, strerror(errno));
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return qsnap__err(QSNAP_EUSAGE, NULL, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > QSNAP__XML_MAX_BYTES) {
        close(fd);
        return qsnap__err(QSNAP_EUSAGE, NULL, "%s: too large for an XML document", path);
    }
    buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        close(fd);
        return nomem();
    }
    while (done < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + done, (size_t)st.st_size - done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        done += (size_t)r;
    }
    close(fd);
    rc = qsnap__xml_parse(out, buf, done, path);
    free(buf);
    return rc;
}

const char *qsnap__xml_attr(const struct qsnap__xml *e, const char *name)
{
    for (size_t i = 0; e && i < e->nattr; i++) {
        if (!strcmp(e->attr[i * 2], name))
            return e->attr[i * 2 + 1];
    }
    return NULL;
}

struct qsnap__xml *qsnap__xml_child(const struct qsnap__xml *e, const char *name,
                                    const struct qsnap__xml *after)
{
    bool past = after == NULL;

    for (size_t i = 0; e && i < e->nitems; i++) {
        struct qsnap__xml *c = e->items[i].el;
        if (!c)
            continue;
        if (!past) {
            past = c == after;
            continue;
        }
        if (!name || !strcmp(c->name, name))
            return c;
    }
    return NULL;
}

char *qsnap__xml_text(const struct qsnap__xml *e)
{
    struct buf b = {0};

    for (size_t i = 0; e && i < e->nitems; i++) {
        if (e->items[i].text && put(&b, e->items[i].text, strlen(e->items[i].text))) {
            free(b.p);
            return NULL;
        }
    }
    return take(&b);
}

int qsnap__xml_set_attr(struct qsnap__xml *e, const char *name, const char *value)
{
    char *v = strdup(value), *n, **na;

    if (!v)
        return nomem();
    for (size_t i = 0; i < e->nattr; i++) {
        if (!strcmp(e->attr[i * 2], name)) {
            free(e->attr[i * 2 + 1]);
            e->attr[i * 2 + 1] = v;
            return 0;
        }
    }
    n = strdup(name);
    na = n ? realloc(e->attr, (e->nattr + 1) * 2 * sizeof(*na)) : NULL;
    if (!na) {
        free(n);
        free(v);
        return nomem();
    }
    e->attr = na;
    e->attr[e->nattr * 2] = n;
    e->attr[e->nattr * 2 + 1] = v;
    e->nattr++;
    return 0;
}

struct qsnap__xml *qsnap__xml_add(struct qsnap__xml *e, const char *name)
{
    struct qsnap__xml *c = calloc(1, sizeof(*c));
    struct qsnap__xml_item *it;

    if (!c || !(c->name = strdup(name)) || !(it = add_item(e))) {
        qsnap__xml_free(c);
        return NULL;
    }
    it->el = c;
    return c;
}

int qsnap__xml_add_text(struct qsnap__xml *e, const char *text)
{
    struct qsnap__xml_item *it = add_item(e);

    if (!it)
        return nomem();
    it->text = strdup(text);
    if (!it->text) {
        e->nitems--;
        return nomem();
    }
    return 0;
}

void qsnap__xml_remove(struct qsnap__xml *e, struct qsnap__xml *c)
{
    for (size_t i = 0; i < e->nitems; i++) {
        if (e->items[i].el == c) {
            qsnap__xml_free(c);
            memmove(&e->items[i], &e->items[i + 1], (e->nitems - i - 1) * sizeof(e->items[0]));
            e->nitems--;
            return;
        }
    }
}

void qsnap__xml_escape(FILE *f, const char *s, int attr)
{
    for (; *s; s++) {
        switch (*s) {
        case '&':
            fputs("&amp;", f);
            break;
        case '<':
            fputs("&lt;", f);
            break;
        case '>':
            fputs("&gt;", f);
            break;
        case '\'':
            fputs(attr ? "&apos;" : "'", f);
            break;
        case '"':
            fputs(attr ? "&quot;" : "\"", f);
            break;
        case '\n':
        case '\t':
        case '\r':
            if (attr)
                fprintf(f, "&#%d;", *s);
            else
                fputc(*s, f);
            break;
        default:
            fputc(*s, f);
        }
    }
}

void qsnap__xml_write(FILE *f, const struct qsnap__xml *e)
{
    fprintf(f, "<%s", e->name);
    for (size_t i = 0; i < e->nattr; i++) {
        fprintf(f, " %s='", e->attr[i * 2]);
        qsnap__xml_escape(f, e->attr[i * 2 + 1], 1);
        fputc('\'', f);
    }
    if (!e->nitems) {
        fputs("/>", f);
        return;
    }
    fputc('>', f);
    for (size_t i = 0; i < e->nitems; i++) {
        if (e->items[i].el)
            qsnap__xml_write(f, e->items[i].el);
        else
            qsnap__xml_escape(f, e->items[i].text, 0);
    }
    fprintf(f, "</%s>", e->name);
}
