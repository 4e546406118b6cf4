/*
 * libqsnap internals: the in-memory model of a store (layers, nodes,
 * branches), plans and their steps, and the helpers the files of snapshot/
 * share. Built on libqcow2's public API only.
 *
 * THE MODEL
 *   layer  a file: the user's disk (the root) or layers/<id>.qcow2. It has a
 *          physical backing layer (what its qcow2 header names), a format, and
 *          is either frozen (read-only, fingerprinted) or a branch head.
 *   node   a state of the disk: a named snapshot or an unnamed node kept for
 *          its dependents. Its logical parent is a node; its content is the
 *          chain of its layer. Physical backing and logical parent may differ
 *          (after a commit, the old state lives in a new layer over the
 *          committed one, as ZFS's promote turns parent and clone around).
 *   branch a name, a head layer (writable, backed by its base node's layer),
 *          and its base node.
 *
 * RULES (DESIGN.md): (1) no step writes into a frozen layer except the
 * commit step, after the layers that depended on it were given their own;
 * (2) nothing named is lost unless the operation names it; (3) metadata
 * changes are atomic (tmp, fsync, rename, fsync dir) and every operation is
 * journaled first and rolled forward after a crash; (4) one writer: the
 * store lock; (5) bad input is an error naming the file and the fix.
 */
#ifndef QSNAP_INT_H
#define QSNAP_INT_H

#include <stdarg.h>
#include <sys/types.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qsnap/qsnap.h"

#define QSNAP_PRINTF(a, b) __attribute__((format(printf, a, b)))

/* Caps on hostile metadata (a store is input too). */
#define QSNAP_MAX_META_BYTES (64u << 20) /* metadata file */
#define QSNAP_MAX_LINE (1u << 20)        /* one record of the text form */
#define QSNAP_MAX_ITEMS 1000000u         /* layers, nodes or branches */
#define QSNAP_MAX_NAME 128u              /* snapshot and branch names */
#define QSNAP_MAX_DESC 65536u            /* a description (bytes) */
#define QSNAP_MAX_INTERNAL 65535u        /* an internal snapshot's name (the qcow2 format's bound) */
#define QSNAP_MAX_PATH 4096u             /* a file name in the model (relative to the store) */
#define QSNAP_META_VERSION 4u            /* the newest meta file this library writes (metabin.c):
                                          * 4 with a fingerprint record or a node only for its
                                          * dependents, else 3 */
#define QSNAP_META_VERSION_BIN 3u        /* the oldest binary one (a log only beside 2 and up) */
#define QSNAP_META_VERSION_MIN 1u        /* the oldest it reads (no log beside it) */
#define QSNAP_TEXT_VERSION 2u            /* the text form: meta.log records, the journal, version 1-2 meta */

struct qsnap__layer {
    unsigned id;         /* unique, > 0 */
    char *file;          /* relative to the store directory */
    qcow2_format fmt;    /* raw or qcow2 */
    unsigned backing;    /* layer id, 0 = none */
    bool frozen;         /* read-only and fingerprinted */
    bool is_disk;        /* the user's disk: never unlinked */
    bool have_fp;        /* fp, size and mtime are known */
    uint8_t fp[16];      /* qcow2_file_fingerprint() when frozen */
    bool have_fpd;       /* fpd is known (qcow2 layers) */
    uint8_t fpd[16];     /* fingerprint of all but the header cluster: the data */
    uint64_t size;       /* file size when frozen (bytes) */
    int64_t mtime_ns;    /* mtime when frozen */
    bool have_vsize;     /* vsize is known (qcow2 layers, recorded when frozen) */
    uint64_t vsize;      /* virtual size (bytes): what listing shows without opening it */
};

struct qsnap__node {
    unsigned id;         /* unique among nodes, > 0 */
    char *name;          /* NULL: unnamed */
    unsigned parent;     /* node id, 0 = root */
    unsigned layer;      /* layer id holding its content */
    int64_t created;     /* seconds since the epoch */
    char *desc;          /* description, or NULL */
    char *state;         /* attached state file, relative to the store, or NULL */
    char *sfp;           /* the state file's record when it was copied in (a fingerprint
                          * record: qsnap__fprec_parse), or NULL (none taken: a state file
                          * an older qsnap hard-linked) */
    char *internal;      /* internal node: the name of the qcow2 snapshot inside `layer` that
                          * holds its content (qcow2_snapshot_*); NULL: the layer's content */
    bool for_deps;       /* unnamed only for what is built on it (a snapshot deleted while
                          * others stood on it): it goes when nothing does (store version
                          * 4). Without it an unnamed node stays: one delete --metadata left
                          * (the user keeps its data), or one from a store before the flag */
};

struct qsnap__branch {
    char *name;          /* unique */
    unsigned head;       /* layer id (writable) */
    unsigned base;       /* node id, 0 = none (its base was deleted as the root) */
    int64_t created;     /* seconds since the epoch */
};

/*
 * Bytes that strings of models point into (a meta file as read, its string
 * table): shared by a model and its copies, freed with the last of them.
 */
struct qsnap__pool {
    size_t refs;
    size_t len;
    size_t mapped;       /* bytes mapped for it (mmap), or 0: malloc'd */
    char data[];
};

struct qsnap__model {
    struct qsnap__pool *pool; /* or NULL: a string outside it is the model's own (malloc) */
    uint64_t gen;        /* bumped on every save */
    unsigned seq;        /* next id for layers and nodes */
    char *disk;          /* the disk, relative to the store directory */
    char *current;       /* current branch name, or NULL before the first create */
    char *below;         /* the disk's own backing chain (the user's files under it) as it
                          * was when the store was made: one fingerprint record a line,
                          * the disk's backing file first; NULL: none, or not recorded */
    struct qsnap__layer *layers;
    size_t nl;
    struct qsnap__node *nodes;
    size_t nn;
    struct qsnap__branch *branches;
    size_t nb;
};

/* A set of layer or node ids (unsorted; an id may appear more than once). */
struct qsnap__ids {
    unsigned *v;
    size_t n, cap;
};

/* The last store file an open refused (safe.c), for the message that names it. */
struct qsnap__refusal {
    char path[4096];
    int err;             /* ELOOP, ENODEV, ENOTDIR, EXDEV; 0: none */
};

/*
 * A store directory as a walk found it clean (safe.c): when its inode and
 * change time are the same later, no entry was added, removed or renamed
 * since, provided the change time was older than the walk by more than the
 * clock's tick (quiet), since the kernel stamps a change with the coarse clock.
 */
struct qsnap__scan_mark {
    bool quiet;          /* clean and unchanged for more than a tick before the walk */
    dev_t dev;
    ino_t ino;
    int64_t ctime_ns;
    bool listed;         /* layers/: the last walk was whole, and others holds what it found */
    bool own;            /* layers/: clean when last looked at (a walk, or the seal), and every
                          * change since was qsnap's own, with ctime_ns what it left (safe.c) */
    char **others;       /* layers/: regular files without a name of qsnap's form */
    size_t nothers;
    bool by_seal;        /* layers/: taken as clean from the seal, not walked (safe.c) */
    uint64_t seal_gen;   /* layers/: the metadata generation the seal names */
    unsigned top;        /* layers/: the highest id N of a file "N.qcow2" the last walk found */
};

/* The change log beside the metadata file (metalog.c). */
struct qsnap__log {
    bool exists;         /* meta.log is there */
    unsigned meta_version; /* of the meta file as read (a log only beside version 2) */
    uint64_t meta_bytes; /* size of the meta file */
    uint64_t size;       /* bytes of meta.log */
    uint64_t good;       /* end of its last whole record */
    size_t live;         /* records applied when it was read */
    size_t stale;        /* records the meta file already holds (a compaction was cut short) */
    size_t shifts;       /* node drops in the live records (each costs a replay a pass over
                          * the nodes that follow the dropped one) */
};

struct qsnap_store {
    char *disk_abs;      /* the disk, absolute */
    dev_t disk_dev;      /* the disk's file as the store was opened: every open of the */
    ino_t disk_ino;      /* disk must find this file (safe.c) */
    char *dir;           /* the store directory, absolute */
    int lock_fd;         /* holds the OFD lock on dir/lock, or -1 */
    bool exists;         /* the metadata file exists */
    bool readonly;       /* opened for queries */
    struct qsnap__model m;
    struct qsnap__log log;
    struct qsnap__refusal *refusal; /* see safe.c (NULL: not recorded) */
    struct qsnap__scan_mark *marks; /* layers/ and state/ as the last walk found them (safe.c;
                          * NULL: every check walks) */
    struct qsnap__seen *seen; /* heads found clean or dirty while plans were made (query.c) */
    struct qsnap__chain *chain; /* the disk's own backing chain, read-only (safe.c) */
    bool holding;        /* an operation holds the files it touches (inuse.c): steps open
                          * images without taking locks of their own */
    int *dir_fd;         /* QSNAP__DIR_FDS descriptors: the store directory, layers/ and
                          * state/, each opened once without following links by the first
                          * qsnap__store_dirfd that found it (-1 until then; safe.c) */
};
#define QSNAP__DIR_FDS 3

/*
 * What a plan's decisions read from files: whether a head had changes, and
 * what a head's internal snapshots are (whether one of a name is there,
 * whether the head's state is still that of one). A plan is made before the
 * operation holds its files (a VM, or a qemu-img snapshot, may still change
 * them then), so the execution checks every one again under the hold.
 */
struct qsnap__seen {
    struct qsnap__seen_head {
        unsigned id;     /* layer */
        bool dirty;
    } *v;
    size_t n;
    struct qsnap__seen_internal {
        unsigned id;     /* layer (a head) */
        char *snap;      /* internal snapshot name */
        bool compared;   /* value: the head's state differs from snap (else: snap is there) */
        bool value;
    } *iv;
    size_t ni;
};

/* The files of the backing chain the disk itself has (outside the store), normalised. */
struct qsnap__chain {
    bool known;          /* looked up (once, when first needed) */
    char **path;
    size_t n;
};

/* A file an operation touches (inuse.c). */
struct qsnap__touch {
    char *file;          /* store-relative */
    char *path;          /* absolute */
    char *role;          /* what it is to the user ("head of the current branch main") */
    bool held;           /* another process holds an image lock on it */
    int fd;              /* held by this operation, or -1 */
};

/* Step kinds (see exec.c for what each does and why it is idempotent). */
enum qsnap__step_kind {
    QSNAP__ST_MKDIR = 1,      /* a: directory relative to the store ("" = the store) */
    QSNAP__ST_CREATE,         /* x: new overlay layer (file, backing from the target model) */
    QSNAP__ST_FREEZE,         /* x: layer made read-only and fingerprinted */
    QSNAP__ST_THAW,           /* x: layer made writable (before a step writes it) */
    QSNAP__ST_LINK_STATE,     /* a: source file (absolute), b: destination (store-relative) */
    QSNAP__ST_STREAM,         /* x: layer streamed into; y: its new backing layer (0 = none) */
    QSNAP__ST_SET_BACKING,    /* x: layer whose header link is rewritten to layer y */
    QSNAP__ST_PRESERVE,       /* x: new layer over y holding y's content where head z allocates */
    QSNAP__ST_COMMIT,         /* x: head committed into its backing layer y (head emptied) */
    QSNAP__ST_SAVE,           /* y: save target model number y (the commit points) */
    QSNAP__ST_UNLINK,         /* a: file removed (store-relative) */
    QSNAP__ST_INTERNAL_CREATE, /* x: layer (a head) gains internal snapshot named a */
    QSNAP__ST_INTERNAL_APPLY,  /* x: layer's active state reverted to internal snapshot a */
    QSNAP__ST_INTERNAL_DELETE, /* x: internal snapshot a removed from layer x */
    QSNAP__ST_ADOPT,          /* x: layer whose file is moved (renamed) from a (absolute) into
                               * the store (adopt.c) */
};
#define QSNAP__ST_LAST QSNAP__ST_ADOPT

struct qsnap__step {
    enum qsnap__step_kind kind;
    unsigned x, y, z;    /* layer ids, or a model number for SAVE */
    char *a, *b;         /* paths (see the kind) */
};

struct qsnap_plan {
    char *op;                     /* "create", "revert", ... */
    char *summary;                /* one line */
    char *lost;                   /* changes it drops that no snapshot keeps ("branch b (1.0
                                   * MiB)"), shown by qsnap_plan_describe; NULL: none */
    struct qsnap__step *steps;
    size_t n;
    struct qsnap__step *post;     /* while building: steps that go after the next commit point */
    size_t npost;
    struct qsnap__model *models;  /* target models saved by SAVE steps, in order */
    size_t nm;
    uint64_t base_gen;            /* the store's generation the plan was built on */
    struct qsnap__touch *touch;   /* the files it touches, after qsnap_plan_check() */
    size_t ntouch;
    struct qsnap__touch *made;    /* files its steps made, held while it runs (inuse.c) */
    size_t nmade;
    bool checked;                 /* touch is known */
    struct qsnap__ids changed;    /* layers and nodes whose records may differ between a target
                                   * model and the one before it (journal.c: every record not
                                   * named here is the same in both, so a save compares only
                                   * these); valid while changed_known */
    bool changed_known;
    bool replay;                  /* read from the journal to be finished (qsnap__recover): a
                                   * step may find what an earlier run of it made */
    bool taken;                   /* the failed step found its new file's name taken by a file
                                   * this run did not make: undo leaves that file alone */
};

/* error.c */
int qsnap__err(int code, const char *hint, const char *fmt, ...) QSNAP_PRINTF(3, 4);
/* Turn the last libqcow2 error into a qsnap one (code class mapped). */
int qsnap__from_qcow2(int rc, const char *hint);

/* model.c */
/* A pool of len bytes (refs 1, data[len] = 0), or NULL; drop a reference (NULL: nothing). */
struct qsnap__pool *qsnap__pool_new(size_t len);
void qsnap__pool_unref(struct qsnap__pool *p);
/* Free a string of m's (one in m's pool stays: the pool goes with the model). */
void qsnap__str_free(const struct qsnap__model *m, char *str);
void qsnap__model_free(struct qsnap__model *m);
/* The room (records) the model's arrays have for n records: a power of 2, at least 8. */
size_t qsnap__array_cap(size_t n);
int qsnap__model_clone(struct qsnap__model *dst, const struct qsnap__model *src);
struct qsnap__layer *qsnap__layer(const struct qsnap__model *m, unsigned id);
struct qsnap__node *qsnap__node(const struct qsnap__model *m, unsigned id);
struct qsnap__node *qsnap__node_by_name(const struct qsnap__model *m, const char *name);
struct qsnap__branch *qsnap__branch_by_name(const struct qsnap__model *m, const char *name);
struct qsnap__layer *qsnap__add_layer(struct qsnap__model *m);
struct qsnap__node *qsnap__add_node(struct qsnap__model *m);
struct qsnap__branch *qsnap__add_branch(struct qsnap__model *m);
void qsnap__del_layer(struct qsnap__model *m, unsigned id);
void qsnap__del_node(struct qsnap__model *m, unsigned id);
void qsnap__del_branch(struct qsnap__model *m, const char *name);
/* The same for the record at position i: the last layer takes a layer's place; the
 * nodes and branches after one move down, keeping their order. */
void qsnap__del_layer_at(struct qsnap__model *m, size_t i);
void qsnap__del_node_at(struct qsnap__model *m, size_t i);
void qsnap__del_branch_at(struct qsnap__model *m, size_t i);
/* Drop every node whose position drop[] marks, in one pass; the others keep their order. */
void qsnap__del_nodes_marked(struct qsnap__model *m, const bool *drop);
/* Serialize to text (malloc'd) / parse text (hostile input: every field checked). */
int qsnap__model_format(const struct qsnap__model *m, char **out);
int qsnap__model_parse(struct qsnap__model *m, const char *text, size_t len, const char *what);
/* The same, telling the store version the text has; check: the graph too (qsnap__model_check),
 * else only each record (the caller checks the model once it is whole). */
int qsnap__model_parse_v(struct qsnap__model *m, const char *text, size_t len, const char *what,
                         unsigned *version, bool check);
/* The records of a change (metalog.c): parsed and checked one by one, not as a whole. */
int qsnap__model_parse_part(struct qsnap__model *m, const char *text, size_t len, const char *what);
/* Check the graph: ids unique, references exist, no cycles. */
int qsnap__model_check(const struct qsnap__model *m, const char *what);
/*
 * A fingerprint record: what a file outside the layers (a state file, a file of
 * the disk's own backing chain) was when qsnap took it, "HEX32:SIZE:MTIME_NS"
 * (xxh3-128 of the whole file, its size in bytes, its mtime), then ":PATH" in
 * the records of the disk's chain (the file's name then, for messages).
 */
struct qsnap__fprec {
    uint8_t fp[16];
    uint64_t size;
    int64_t mtime_ns;
    const char *path; /* points into the record (up to its end or newline), or NULL */
    size_t path_len;
};
/* The record for r (malloc'd; path NULL: none), or NULL when out of memory. */
char *qsnap__fprec_format(const struct qsnap__fprec *r, const char *path);
/* Parse the record at *text (ending at a newline or the end), moving *text past it
 * and its newline; with_path: it has a path. False when malformed. */
bool qsnap__fprec_parse(const char **text, bool with_path, struct qsnap__fprec *r);
/* Whether every line of a whole value (sfp: one record, no path; below: records with
 * paths, at least one) is well formed. */
bool qsnap__fprec_ok(const char *value, bool with_path);

/*
 * index.c: a model's layers and nodes by id and its snapshots and branches by
 * name, built once (linear time) for code that looks up many records. It points
 * into the model's arrays: valid until a record is added, removed or moved.
 */
struct qsnap__idmap {
    uint32_t *slot;      /* position + 1; 0: empty */
    size_t cap;
    bool direct;         /* slot[id] (dense ids), else a hash table of cap (a power of 2) slots */
};
struct qsnap__index {
    const struct qsnap__model *m;
    struct qsnap__idmap layers, nodes;
    struct qsnap__idmap nnames, bnames; /* nodes and branches by name (hash tables) */
    unsigned dup_layer;  /* the first layer id found twice (0: none): its first record wins */
    unsigned dup_node;   /* the same for nodes */
    const char *dup_name; /* the first name found twice among snapshots and branches, or NULL */
};
/* names: index the names too (else the lookups by name find nothing; dup_name stays NULL). */
int qsnap__index_build(struct qsnap__index *x, const struct qsnap__model *m, bool names);
/* The branches by name alone (the lookups by id and of snapshots find nothing). */
int qsnap__index_build_branches(struct qsnap__index *x, const struct qsnap__model *m);
void qsnap__index_free(struct qsnap__index *x);
struct qsnap__layer *qsnap__index_layer(const struct qsnap__index *x, unsigned id);
struct qsnap__node *qsnap__index_node(const struct qsnap__index *x, unsigned id);
struct qsnap__node *qsnap__index_node_by_name(const struct qsnap__index *x, const char *name);
struct qsnap__branch *qsnap__index_branch(const struct qsnap__index *x, const char *name);
/* Position of the record with this id in the array the map indexes (ids: record 0's id,
 * records stride bytes apart), or -1. */
/* A map from a key field of n records (keys: record 0's key, records stride bytes apart) to
 * the position of the first record with that key, among the records keep() keeps (NULL:
 * all); key 0 (none) is left out. Freed with free(h->slot). */
int qsnap__idmap_build(struct qsnap__idmap *h, const unsigned *keys, size_t stride, size_t n,
                       bool (*keep)(const void *arg, size_t i), const void *arg);
long qsnap__idmap_find(const struct qsnap__idmap *h, const unsigned *ids, size_t stride,
                       unsigned id);

/*
 * Records by a key field, for code that looks up an unknown number of them: the
 * first few lookups walk the records, the next one builds a map (qsnap__idmap_build)
 * that the rest use. Valid while the records do not move.
 */
struct qsnap__lookup {
    const unsigned *keys; /* record 0's key, records stride bytes apart */
    size_t stride, n;
    bool (*keep)(const void *arg, size_t i); /* which records count (NULL: all) */
    const void *arg;
    unsigned used;        /* lookups so far */
    bool built;
    struct qsnap__idmap map;
};
void qsnap__lookup_init(struct qsnap__lookup *z, const unsigned *keys, size_t stride, size_t n,
                        bool (*keep)(const void *arg, size_t i), const void *arg);
/* m's layers by id; m's branches by head. */
void qsnap__lookup_layers(struct qsnap__lookup *z, const struct qsnap__model *m);
void qsnap__lookup_heads(struct qsnap__lookup *z, const struct qsnap__model *m);
/* *at: the position of the first record kept with this key (-1: none; key 0: none). */
int qsnap__lookup_find(struct qsnap__lookup *z, unsigned key, long *at);
void qsnap__lookup_free(struct qsnap__lookup *z);

/* metabin.c: the meta file of store versions 3 and 4 (binary; 4: with fingerprint records or
 * for_deps nodes). */
#define QSNAP_BIN_MAGIC "qsnap-store 3\n"
#define QSNAP_BIN_MAGIC4 "qsnap-store 4\n"
/* The version of the meta file m is written as: 4 when it has a fingerprint record or a node
 * only for its dependents (for_deps), else 3. */
unsigned qsnap__model_version(const struct qsnap__model *m);
/* The file's bytes for m (malloc'd, *len bytes). */
int qsnap__model_bin_format(const struct qsnap__model *m, char **out, size_t *len);
/*
 * Read a meta file of any version from pool->data (pool->len bytes; the
 * caller's reference is taken either way: a version 3 model keeps it, its
 * strings point into it). check: the graph too, as qsnap__model_parse_v.
 */
int qsnap__model_read(struct qsnap__model *m, struct qsnap__pool *pool, const char *what,
                      unsigned *version, bool check);

/* store.c */
char *qsnap__path(const qsnap_store *s, const char *rel);     /* absolute path of a store-relative one */
char *qsnap__link_name(const char *from_rel, const char *to_rel); /* backing link from one layer file to another */
int qsnap__write_atomic(const qsnap_store *s, const char *rel, const char *data, size_t len);
int qsnap__save_model(qsnap_store *s, struct qsnap__model *m);
int qsnap__fsync_dir(const char *dir);
int qsnap__lock_new_store(qsnap_store *s);
/* Give a file or directory the store made to the disk's owner (when running as root). */
void qsnap__own(const qsnap_store *s, const char *path);
/* The same for name in directory dfd, never following a link (safe.c). */
void qsnap__own_at(const qsnap_store *s, int dfd, const char *name);
bool qsnap__file_exists(const char *path);
int64_t qsnap__now(void);

/*
 * metalog.c: the metadata as a base file (meta) and a log of changes
 * (meta.log); the format is described at the top of metalog.c.
 */
/* Read meta and meta.log into s->m. */
int qsnap__meta_load(qsnap_store *s);
/*
 * Make m (its gen bumped) the store's metadata, durably: a record appended
 * to the log, or (first save, log past its bound, or a change the log
 * cannot say) the whole meta file rewritten and the log removed. On
 * success s->m holds m's content (m may be &s->m).
 */
int qsnap__meta_save(qsnap_store *s, struct qsnap__model *m);
/* 1 when meta.log ends in a record an interrupted append left (not committed). */
int qsnap__log_torn(const qsnap_store *s);
/* Cut that tail off. */
int qsnap__log_cut(qsnap_store *s);
/* The change from old to new as text (malloc'd; *exact: applying it to old gives new). */
int qsnap__delta_format(const struct qsnap__model *old, const struct qsnap__model *new_m,
                        char **out, bool *exact);
/* The same, comparing only the records that are in both models and named by `only` (NULL:
 * every one): the caller knows the others to be the same. The ids of the records the change
 * gives (changed or new) are added to `changed` (NULL: not kept). */
int qsnap__delta_format_ex(const struct qsnap__model *old, const struct qsnap__model *new_m,
                           char **out, bool *exact, const struct qsnap__ids *only,
                           struct qsnap__ids *changed);
/* qsnap__meta_save for a model whose records not named by `only` are known to be the same as
 * the store's (see qsnap__delta_format_ex; NULL: nothing known). */
int qsnap__meta_save_known(qsnap_store *s, struct qsnap__model *m, const struct qsnap__ids *only);
/* Whether qsnap_name_check() would accept name (no message: for names read by the
 * thousand, where a failure is reported as damage of the file they came from). */
bool qsnap__name_ok(const char *name);
/* Add an id (false: out of memory); free a set. */
bool qsnap__ids_add(struct qsnap__ids *set, unsigned id);
void qsnap__ids_free(struct qsnap__ids *set);
/* Apply a change (hostile input: checked) to m in place. */
int qsnap__delta_apply(struct qsnap__model *m, const char *text, size_t len, const char *what);
/* The same for a sequence of changes to one model (a log's records): c keeps where m's
 * records are from one change to the next, so that each costs what it changes rather than a
 * walk of the model. m must change only through these calls while c is in use. */
struct qsnap__apply_cache;
struct qsnap__apply_cache *qsnap__apply_cache_new(void);
void qsnap__apply_cache_free(struct qsnap__apply_cache *c);
int qsnap__delta_apply_cached(struct qsnap__model *m, const char *text, size_t len,
                              const char *what, struct qsnap__apply_cache *c);
/* Same content, in the same order. */
bool qsnap__model_equal(const struct qsnap__model *a, const struct qsnap__model *b);
/* CRC-32 (IEEE 802.3) of n bytes. */
uint32_t qsnap__crc32(const void *p, size_t n);

/*
 * Plans (plan.c: the plan type, its steps, the checks every planner makes and
 * the printer; plan_create.c, plan_branch.c, plan_delete.c, plan_internal.c:
 * the planners). The helpers the planner files share:
 */
#define QSNAP__GC_HINT "'qsnap verify DISK --repair' finishes it"
int qsnap__plan_new(qsnap_plan **out, const qsnap_store *s, const char *op);
/* Copy the model, find the snapshot or branch named, make the plan (plan.c says which error wins).
 */
int qsnap__plan_open(const qsnap_store *s, const char *op, struct qsnap__model *t, qsnap_plan **p,
                     const char *name, struct qsnap__node **n, struct qsnap__branch **b);
/* Free the model copy; the plan is the result (*out) when rc is 0, else freed and rc returned. */
int qsnap__plan_close(qsnap_plan **out, qsnap_plan *p, struct qsnap__model *t, int rc);
int qsnap__add_step(qsnap_plan *p, enum qsnap__step_kind kind, unsigned x, unsigned y, unsigned z,
                    const char *a, const char *b);
/* A removal that must wait for the next commit point (the metadata still names the file). */
int qsnap__defer_unlink(qsnap_plan *p, const char *rel);
/* Record a commit point: the model as it stands becomes target model k. */
int qsnap__add_save(qsnap_plan *p, const struct qsnap__model *m);
/* The same for the plan's last commit point: m is moved into the plan, not copied (a deep
 * copy costs milliseconds at thousands of snapshots), and left empty. Pointers into m
 * stay valid while the plan lives; m itself must not be used for the plan again. */
int qsnap__add_last_save(qsnap_plan *p, struct qsnap__model *m);
int qsnap__set_summary(qsnap_plan *p, const char *fmt, ...) QSNAP_PRINTF(2, 3);
/* A new overlay layer in the target model, backed by layer `backing`. */
struct qsnap__layer *qsnap__new_overlay(struct qsnap__model *m, unsigned backing);
/* Refusals made before anything is written (each returns the error it sets, else 0). */
int qsnap__check_no_pending(const qsnap_store *s);
int qsnap__check_writable_store(const qsnap_store *s);
int qsnap__check_unchanged(const qsnap_store *s, const struct qsnap__layer *l);
int qsnap__check_chain(const qsnap_store *s, const struct qsnap__model *m, unsigned id);
int qsnap__check_link(const qsnap_store *s, const struct qsnap__model *m, unsigned id);
int qsnap__check_depth(const struct qsnap__model *m, unsigned base);
int qsnap__check_free(const qsnap_store *s, const struct qsnap__model *m, unsigned layer);
bool qsnap__name_taken(const struct qsnap__model *m, const char *name);
/* A description is at most QSNAP_MAX_DESC bytes (what names whose it is, for the message). */
int qsnap__desc_check(const char *desc, const char *what);
int qsnap__check_new_name(const struct qsnap__model *m, const char *name);
/* A generated name "PREFIX-N" not yet taken (NULL: out of memory). */
char *qsnap__gen_name(const struct qsnap__model *m, const char *prefix);
int qsnap__current_branch(const qsnap_store *s, const struct qsnap__model *t,
                          struct qsnap__branch **b, struct qsnap__layer **head);
int qsnap__find_snapshot(const struct qsnap__model *m, const char *name, struct qsnap__node **out);
int qsnap__find_branch(const struct qsnap__model *m, const char *name, struct qsnap__branch **out);
/* plan_create.c */
int qsnap__attach_state(qsnap_plan *p, struct qsnap__node *n, const char *state_file);
int qsnap__plan_first(qsnap_store *s, struct qsnap__model *t, qsnap_plan *p, const char *state_file,
                      struct qsnap__node **root_out, unsigned *head_out);
/* plan_branch.c */
void qsnap__fmt_bytes(char *buf, size_t len, uint64_t v);
/* plan_delete.c: node `id` leaves the tree; its children and branches move up to its parent. */
void qsnap__reparent(struct qsnap__model *t, unsigned id, unsigned parent);
/* plan_delete.c: whether a delete (QSNAP_DELETE_* flags) of a snapshot whose layer has one
 * dependent d merges its data into d; else the data stays as an unnamed node. internal: d
 * holds internal snapshots. du (query.c) says what a delete frees by the same rule. */
bool qsnap__delete_merges(const struct qsnap__layer *d, bool internal, unsigned flags);
/* plan_internal.c */
int qsnap__plan_create_internal(qsnap_plan **out, qsnap_store *s, const qsnap_create_opts *o);
int qsnap__plan_revert_internal(qsnap_plan **out, qsnap_store *s, const char *snapshot,
                                const char *new_branch, bool discard);
int qsnap__plan_delete_internal(qsnap_plan **out, qsnap_store *s, const char *snapshot);
/* Internal snapshots of layer's file that no node of m names (plan_internal.c): in an
 * open image, or opening the file. */
size_t qsnap__unknown_internal(const qcow2_image *img, const struct qsnap__model *m,
                               unsigned layer, char **names);
int qsnap__foreign_internal(const qsnap_store *s, const struct qsnap__model *m, unsigned layer,
                            char **names, size_t *count);
/* QSNAP_EINTEGRITY naming them, with why (what the operation would do to them). */
int qsnap__refuse_foreign_internal(const qsnap_store *s, const struct qsnap__model *m,
                                   unsigned layer, const char *why);
int qsnap__refuse_internal_in(const struct qsnap__model *m, unsigned layer, const char *why,
                              const char *hint);
int qsnap__check_subtree_external(const struct qsnap__model *m, const struct qsnap__node *root);

/* exec.c */
int qsnap__recover(qsnap_store *s, bool *did_something);
/* journal.c: DIR/journal, the plan being run (written atomically before its first step). */
int qsnap__journal_pending(const qsnap_store *s, bool *out);
/* The pending journal's plan (hostile input: checked as it is read). */
int qsnap__journal_load(qsnap_store *s, qsnap_plan **out);
/* Also sets p->changed (and p->changed_known) from the changes it writes. */
int qsnap__journal_write(qsnap_store *s, qsnap_plan *p);
int qsnap__journal_read(const qsnap_store *s, qsnap_plan **out);
int qsnap__journal_remove(qsnap_store *s);
/* A journal that cannot be parsed renamed to journal.damaged-<UTC time> (name, size: the
 * new name, relative to the store), for verify --repair once the store verifies without it. */
int qsnap__journal_set_aside(qsnap_store *s, char *name, size_t size);
/* QSNAP_EINTEGRITY when the store has files in layers/ but no meta file (else 0). */
int qsnap__refuse_orphan_layers(const qsnap_store *s);

int qsnap__layer_fingerprint(const qsnap_store *s, struct qsnap__layer *l);
/* Index of the internal snapshot named exactly `name` (not by id) in img, or -1. */
long qsnap__find_internal(const qcow2_image *img, const char *name);

/*
 * safe.c: store files are opened from the store's directory without
 * following links and must be regular files (the top of safe.c says why).
 * rel is store-relative ("meta", "layers/3.qcow2"; "../NAME" is the disk).
 */
struct stat;
int qsnap__unsafe_err(const char *path, int e);
int qsnap__store_dirfd(const qsnap_store *s, const char *sub, int *out);
/* The same directory, borrowed: the handle's kept descriptor where it has one (not to be
 * closed, nor given to fdopendir); given back by qsnap__store_dir_put, which closes
 * only a descriptor the handle does not keep. */
int qsnap__store_dir_get(const qsnap_store *s, const char *sub, int *out);
void qsnap__store_dir_put(const qsnap_store *s, int fd);
/* As an operation starts: forget a kept layers/ or state/ that its name no longer finds;
 * an error when the store directory's own name no longer finds it (safe.c). */
int qsnap__store_dirs_recheck(const qsnap_store *s);
/* openat(O_NOFOLLOW) of a store file, which must be a regular file (errno kept on failure). */
int qsnap__open_store_file(const qsnap_store *s, const char *rel, int oflags, int *fd_out);
/* The disk, only while its name leads to the file it did at store open: fd, or -errno (-EXDEV). */
int qsnap__open_disk(const qsnap_store *s, int oflags);
int qsnap__lstat_store_file(const qsnap_store *s, const char *rel, struct stat *st);
/* QSNAP_EINTEGRITY when rel is a link or not a regular file; QSNAP_ENOTFOUND when missing. */
int qsnap__check_store_file(const qsnap_store *s, const char *rel);
/* Remove a leftover temporary file (a regular one; anything else is refused). */
int qsnap__clear_tmp(const qsnap_store *s, const char *rel);
int qsnap__chmod_store_file(const qsnap_store *s, const char *rel, bool writable);
int qsnap__io_open(qcow2_io **out, const char *path, unsigned flags, void *payload);
/* qcow2_image_open / _create with qsnap__io_open; a refused link is QSNAP_EINTEGRITY. */
int qsnap__image_open(const qsnap_store *s, const char *path, qcow2_open_opts *oo,
                      qcow2_image **out, const char *hint);
int qsnap__image_create(const qsnap_store *s, const char *path, qcow2_create_opts *co);
/* Every file of the store is what it should be (no link, no device): else QSNAP_EINTEGRITY. */
int qsnap__scan_store(const qsnap_store *s);
/* NAME (a file of layers/) is one qsnap makes: N.qcow2, or .tmp-N.qcow2 or N.qcow2.tmp
 * while it is made. */
bool qsnap__layer_name_ours(const char *name);
/* QSNAP_EINTEGRITY naming the first regular file of layers/ that the metadata does not
 * name and qsnap did not make (an overlay another program put on the VM path): a plan
 * that re-points or replaces what it reads through would change its content. */
int qsnap__refuse_foreign_layers(const qsnap_store *s);
/* The same, walking layers/ and state/ only when they changed since the last walk of this
 * handle (their inode and change time; qsnap__scan_mark): every operation's check. */
int qsnap__rescan_store(const qsnap_store *s);
int qsnap__layers_check_meta(const qsnap_store *s);
/* N of a layer file's name "N.qcow2" (N from 1, no leading zero, below UINT_MAX); 0 for any
 * other name. */
unsigned qsnap__layer_id(const char *name);
/* Around each change qsnap makes to an entry of layers/ (dfd: layers/), before it and after
 * it (after): follows that layers/ holds only qsnap's own changes (the seal, safe.c). */
void qsnap__layers_touch(const qsnap_store *s, int dfd, bool after);
/* A change to layers/ not followed that way (the seal is not written this time). */
void qsnap__layers_forget(const qsnap_store *s);
/* At the end of an operation that holds the store's write lock: record in the lock file
 * that layers/ is as qsnap left it (the seal: see safe.c), or clear the record. */
void qsnap__seal_layers(const qsnap_store *s);
/* Free what the walks recorded in s->marks, and the marks. */
void qsnap__scan_marks_free(qsnap_store *s);
int qsnap__unlink_store_file(const qsnap_store *s, const char *rel);
int qsnap__rename_store_file(const qsnap_store *s, const char *from_rel, const char *to_rel);
/* Copy the user's file src (absolute) into the store as rel (state/NAME): its own file,
 * read-only (0444), made under a temporary name, synced, then renamed into place. */
int qsnap__copy_into_store(const qsnap_store *s, const char *src, const char *rel);
/* The files of the disk's own backing chain as they are now (read once per handle). */
const struct qsnap__chain *qsnap__disk_chain(const qsnap_store *s);
/* The fingerprint record of a file outside the store (read-only, through one descriptor). */
int qsnap__fingerprint_file(const char *path, struct qsnap__fprec *r);
/* The records of the disk's own backing chain (a model's below; malloc'd), or *out NULL
 * when it has none. */
int qsnap__disk_chain_record(const qsnap_store *s, char **out);
/* qcow2 check -r all on layer l's own file (leaks freed, refcounts and flags fixed). */
int qsnap__repair_layer(const qsnap_store *s, const struct qsnap__layer *l);
/* qcow2_file_fingerprint() of store file rel into all and, unless tail is NULL, that
 * from byte `from` on into tail (one pass); st (unless NULL) from the same descriptor. */
int qsnap__fingerprint_store_file(const qsnap_store *s, const char *rel, uint64_t from,
                                  uint8_t all[16], uint8_t tail[16], struct stat *st);

/* query.c: head dirty state, sizes. */
/* Open a layer file read-only without its chain and without locking. */
int qsnap__open_layer(const qsnap_store *s, const struct qsnap__layer *l, unsigned flags,
                      qcow2_image **out);
/* Every head found clean or dirty, and every internal snapshot looked at, since the last
 * call is still so (under the hold); forgets them. */
int qsnap__recheck_seen(const qsnap_store *s);
/* Forget what was seen (a new plan starts). */
void qsnap__seen_reset(const qsnap_store *s);
/* Note what a plan read of head l's internal snapshot snap (see struct qsnap__seen). */
int qsnap__seen_internal(const qsnap_store *s, const struct qsnap__layer *l, const char *snap,
                         bool compared, bool value);
int qsnap__head_dirty(const qsnap_store *s, const struct qsnap__layer *l, bool *dirty,
                      uint64_t *bytes);
/* QSNAP_EINTEGRITY when the layer's file is missing (else 0). */
int qsnap__layer_exists(const qsnap_store *s, const struct qsnap__layer *l);
/* Whether head layer l's active state differs from its internal snapshot `snap`. */
int qsnap__differs_from_internal(const qsnap_store *s, const struct qsnap__layer *l,
                                 const char *snap, bool *differs);
/* The store directory (malloc'd) that real (absolute, links resolved) is, or is inside, or
 * NULL: the nearest directory named *.qsnap with metadata or layers/. */
int qsnap__store_above(const char *real, char **dir);
/* Internal nodes whose content lives in layer id (count; names joined in *names if non-NULL). */
size_t qsnap__internal_nodes_in(const struct qsnap__model *m, unsigned layer, char **names);

/* inuse.c: the files an operation touches, checked against QEMU's image locks and held. */
int qsnap__touched(const qsnap_store *s, const qsnap_plan *p, struct qsnap__touch **out,
                   size_t *n_out);
/* Add one more store-relative file (when it exists and is not there yet). */
int qsnap__touch_add(const qsnap_store *s, struct qsnap__touch **t, size_t *n, const char *rel,
                     const char *role);
/* Set each held flag; QSNAP_EBUSY naming the first held file, else 0. */
int qsnap__touch_check(const qsnap_store *s, struct qsnap__touch *t, size_t n);
/* Take a writer's image locks on every file, or none (QSNAP_EBUSY as above). */
int qsnap__touch_hold(const qsnap_store *s, struct qsnap__touch *t, size_t n);
void qsnap__touch_release(struct qsnap__touch *t, size_t n);
/* While the store holds its files: hold store file rel, just made by a step of p, too
 * (released with p's other files). */
int qsnap__touch_hold_new(const qsnap_store *s, qsnap_plan *p, const char *rel, const char *role);
void qsnap__touch_free(struct qsnap__touch *t, size_t n);
/* QCOW2_OPEN_NO_LOCK while the store holds the files it works on, else 0. */
#define QSNAP__LOCK_FLAGS(s) ((s)->holding ? (unsigned)QCOW2_OPEN_NO_LOCK : 0u)

/* The VM path (vmpath.c): DIR/layers/current.qcow2, a symbolic link to the current head. */
char *qsnap__vm_path(const qsnap_store *s);
/* Point it at model m's current head (atomically: a new link renamed over the old). */
int qsnap__vm_path_update(const qsnap_store *s, const struct qsnap__model *m);
/* 1 when it points at m's current head, 0 when not (or missing), < 0 on error. */
int qsnap__vm_path_ok(const qsnap_store *s, const struct qsnap__model *m);
/*
 * The file the VM path names now, store-relative ("layers/NAME", malloc'd), or
 * NULL when there is no store, no link, or a link to no bare file name (which
 * the store's scan refuses).
 */
int qsnap__vm_path_target(const qsnap_store *s, char **out);
/* QSNAP_EINTEGRITY (as qsnap_vm_path) when the VM path does not point at the store's
 * current head; 0 when it does or there is none. */
int qsnap__vm_path_refuse(const qsnap_store *s);
/*
 * What stands at the VM path is acceptable in a store (dfd: layers/): nothing,
 * or a link to the bare name of one of m's layers or of a regular file of
 * layers/ named like one. Else QSNAP_EINTEGRITY.
 */
int qsnap__vm_link_check(const qsnap_store *s, int dfd, const struct qsnap__model *m);

#endif /* QSNAP_INT_H */
