/*
 * libqsnap: branching snapshot trees over one disk image (raw or qcow2),
 * built on libqcow2's public API.
 *
 * Words. The *disk* is the image the user started with. A *snapshot* is a
 * named, immutable state of the disk; its content is a frozen *layer* (the
 * original disk file, or a frozen qcow2 overlay) and the layers below it. A
 * *branch* is a named, writable line; its *head* is a qcow2 overlay on top of
 * a snapshot's layer. Exactly one branch is *current*: its head is the file a
 * virtual machine should use. A head is *dirty* when it holds any write.
 *
 * The *store* is a directory beside the disk (DISK.qsnap/) holding the
 * metadata, the overlays (named by id), a journal and a lock file.
 *
 * Every change is first built as a *plan* (an ordered list of file steps);
 * a plan can be described (the dry run) or executed. Execution journals the
 * plan, so an interrupted operation is finished by qsnap_verify(repair).
 *
 * Thread-safety: a qsnap_store may be used by one thread at a time. Error
 * details are per thread (qsnap_error_last()).
 */
#ifndef QSNAP_QSNAP_H
#define QSNAP_QSNAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qcow2/qcow2.h"

#ifndef QSNAP_API
#define QSNAP_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/**
 * Error codes. -code is the qsnap command line's exit status for the first
 * six; the values are pinned.
 */
typedef enum qsnap_error_code {
    QSNAP_OK = 0,
    QSNAP_ERROR = -1,      /**< the operation failed (I/O, memory, ...) */
    QSNAP_EUSAGE = -2,     /**< invalid argument (a bad name, an unknown option value) */
    QSNAP_EREFUSED = -3,   /**< refused as unsafe: the message lists the blockers and the flag */
    QSNAP_EINTEGRITY = -4, /**< an integrity problem was found (a changed layer, a broken link) */
    QSNAP_EBUSY = -5,      /**< the store is locked, or an image is in use by a running QEMU */
    QSNAP_ENOTFOUND = -6,  /**< no such disk, store, snapshot or branch */
} qsnap_error_code;

/** Detail of the last failure on the calling thread. */
typedef struct qsnap_error {
    int code;            /**< the QSNAP_E* code returned */
    const char *message; /**< one line naming what is wrong */
    const char *hint;    /**< what to do about it (a flag, a command), or "" */
} qsnap_error;

/** The detail of the last failure on this thread (never NULL). */
QSNAP_API const qsnap_error *qsnap_error_last(void);

/** An open store. */
typedef struct qsnap_store qsnap_store;
/** A plan: the steps of one operation. */
typedef struct qsnap_plan qsnap_plan;

#define QSNAP_OPEN_CREATE 0x1   /**< a missing store is fine: the first create makes it */
#define QSNAP_OPEN_READONLY 0x2 /**< queries only: a shared lock (waited for up to 3 s while
                                     a writer holds the store), no writes */
/**
 * Open a store even when one of its files is a symbolic link, a device or
 * anything but a regular file (for qsnap_verify(), which names each one).
 * Without it such a store is refused with QSNAP_EINTEGRITY; either way no
 * store file is ever opened through a link.
 */
#define QSNAP_OPEN_ANY_FILES 0x4

/**
 * Open the store of a disk (DISK.qsnap beside DISK) and lock it (exclusive,
 * or shared with QSNAP_OPEN_READONLY).
 * @return 0; QSNAP_ENOTFOUND (no disk, or no store without QSNAP_OPEN_CREATE),
 *         QSNAP_EREFUSED (QSNAP_OPEN_CREATE for a disk inside another store's
 *         directory, a layer or the VM path, that has no store yet: one there
 *         would break the other; nothing is made),
 *         QSNAP_EBUSY (locked by another qsnap), QSNAP_EINTEGRITY (damaged or
 *         unknown metadata; a store file that is a link or not a regular
 *         file, see QSNAP_OPEN_ANY_FILES), QSNAP_ERROR
 */
QSNAP_API int qsnap_store_open(qsnap_store **out, const char *disk, unsigned flags);

/** Unlock and close (NULL allowed). Strings and lists obtained from s stay valid. */
QSNAP_API void qsnap_store_close(qsnap_store *s);

/** Whether the store has been set up (a first snapshot exists). */
QSNAP_API bool qsnap_store_initialized(const qsnap_store *s);

/** The store directory (absolute). */
QSNAP_API const char *qsnap_store_path(const qsnap_store *s);

/** Kinds of node in a listing. */
typedef enum qsnap_kind {
    QSNAP_SNAPSHOT = 0, /**< a named snapshot */
    QSNAP_UNNAMED = 1,  /**< a state kept for its dependents (a deleted snapshot, a commit) */
    QSNAP_BRANCH = 2,   /**< a branch and its head */
} qsnap_kind;

/** One node of the tree, as listed. Strings live as long as the list. */
typedef struct qsnap_node {
    qsnap_kind kind;         /**< snapshot, unnamed node or branch */
    unsigned id;             /**< stable id (file names derive from ids) */
    const char *name;        /**< name; for unnamed nodes "(unnamed N)" */
    unsigned parent;         /**< id of the parent node (0 = none); for a branch, its base */
    const char *parent_name; /**< its name, or NULL */
    const char *file;        /**< absolute path of the layer (snapshot) or head (branch) */
    const char *description; /**< description, or "" */
    int64_t created;         /**< creation time, seconds since the epoch */
    bool current;            /**< the current branch, or the current branch's base snapshot */
    bool dirty;              /**< branch: the head holds writes */
    bool internal;           /**< an internal snapshot: kept in the qcow2 snapshot table of
                                  `file` (the head of the branch it was taken on), not as a
                                  frozen layer; its virtual_size is the snapshot's, and
                                  file_bytes is 0 (it shares the head's file) */
    uint64_t virtual_size;   /**< guest size in bytes */
    uint64_t file_bytes;     /**< bytes the layer or head file occupies */
    unsigned nb_children;    /**< child nodes and branches */
    const char *state_file;  /**< attached state file (absolute), or NULL */
} qsnap_node;

/**
 * List every node: snapshots and unnamed nodes in topological order (parents
 * first, siblings by creation), then branches. Dirty flags and sizes are read
 * from the files.
 * @param[out] out    array owned by the caller (qsnap_list_free); its strings
 *                    live as long as the array
 * @param[out] n_out  number of nodes
 * @return 0 (an empty list before the first snapshot), QSNAP_ERROR
 */
QSNAP_API int qsnap_list(qsnap_store *s, qsnap_node **out, size_t *n_out);

/**
 * One snapshot, unnamed node ("(unnamed N)", as listed) or branch, and what
 * hangs directly under it, at a cost that follows that entry (qsnap_list
 * reads the files of every entry). out[0] is the entry as qsnap_list() gives
 * it; out[1] to out[n_out - 1] are its children, child nodes in creation order
 * then the branches that start at it (a branch has none), with what the
 * metadata says of them: nothing is read from their files (virtual_size,
 * file_bytes and dirty are 0) and their own children are not counted
 * (nb_children 0).
 * @param[out] out    array owned by the caller (qsnap_list_free)
 * @param[out] n_out  1 + the number of children
 * @return 0; QSNAP_ENOTFOUND (no such name, or the entry's file is missing),
 *         QSNAP_EINTEGRITY (the entry's file is damaged), QSNAP_ERROR
 */
QSNAP_API int qsnap_info(qsnap_store *s, const char *name, qsnap_node **out, size_t *n_out);

/** Free a list from qsnap_list(), qsnap_info() or qsnap_current() (NULL allowed). */
QSNAP_API void qsnap_list_free(qsnap_node *list, size_t n);

/**
 * The current branch (out owned by the caller: qsnap_list_free(out, 1)).
 * @return 0; QSNAP_ENOTFOUND (no snapshot yet; the hint says how to make one), QSNAP_ERROR
 */
QSNAP_API int qsnap_current(qsnap_store *s, qsnap_node **out);

/**
 * The VM path: the one path a VM's configuration names for the life of the
 * store (DIR/layers/current.qcow2, a symbolic link beside the heads that
 * every tree operation points at the current branch's head, atomically).
 * QEMU and libvirt resolve the head's relative backing names against it as
 * they do against the head itself.
 * @param[out] out  absolute path, malloc'd (free())
 * @return 0; QSNAP_ENOTFOUND (no snapshot yet), QSNAP_EINTEGRITY (the link
 *         is missing or points elsewhere: qsnap_verify with repair fixes it),
 *         QSNAP_ERROR
 */
QSNAP_API int qsnap_vm_path(qsnap_store *s, char **out);

#define QSNAP_CREATE_OPTS_VERSION 1

/** Options of qsnap_plan_create(). */
typedef struct qsnap_create_opts {
    unsigned version;        /**< QSNAP_CREATE_OPTS_VERSION */
    const char *name;        /**< snapshot name, or NULL to generate one */
    const char *description; /**< or NULL */
    const char *state_file;  /**< a file to attach (copied: the store's own read-only copy),
                              *   or NULL */
    /**
     * Record an internal snapshot (qcow2 snapshot table) of the current
     * branch's head instead of freezing it: the head stays the branch's
     * writable head, and the snapshot is a node of the tree whose content
     * lives inside it. On a disk without a store, the store is set up first
     * (the disk as an unnamed root, branch main's head over it) and the
     * internal snapshot is taken in main's head.
     */
    bool internal;
} qsnap_create_opts;

#define QSNAP_CREATE_OPTS_INIT {QSNAP_CREATE_OPTS_VERSION, NULL, NULL, NULL, false}

/*
 * The qsnap_plan_* functions build a plan without changing any file; *out is
 * the caller's (qsnap_plan_free). They return 0; QSNAP_ENOTFOUND (a name
 * that does not exist), QSNAP_EUSAGE (an invalid or taken name),
 * QSNAP_EREFUSED (unsafe: the hint names the overriding flag),
 * QSNAP_EINTEGRITY (a pending operation: run
 * qsnap_verify with repair), QSNAP_ERROR. The store must be open for
 * writing (not QSNAP_OPEN_READONLY).
 */

/**
 * Snapshot the current branch (sets up the store on the first call). With
 * o->internal, an internal snapshot of the head; an external snapshot (which
 * freezes the head) is refused while the head holds internal snapshots.
 */
QSNAP_API int qsnap_plan_create(qsnap_plan **out, qsnap_store *s, const qsnap_create_opts *o);

/**
 * Start a new branch at a snapshot and make it current. The branch left
 * behind is kept when dirty and dropped when clean; with discard it is
 * dropped either way. new_branch NULL: the left branch's name when it is
 * dropped, else a generated name. A branch whose head holds internal
 * snapshots is never dropped (discard is refused).
 *
 * An internal snapshot is reverted in place instead: it must live in the
 * current branch's head (else refused: switch to its branch first), and
 * new_branch must be NULL. The head's state, unless it equals the target's
 * or the branch's internal base, is first kept as a new internal snapshot
 * (a generated name), or with discard dropped; then the head is set to the
 * snapshot's content and the branch's base becomes that snapshot.
 */
QSNAP_API int qsnap_plan_revert(qsnap_plan **out, qsnap_store *s, const char *snapshot,
                                const char *new_branch, bool discard);

/** Make a branch current. */
QSNAP_API int qsnap_plan_switch(qsnap_plan **out, qsnap_store *s, const char *branch);

/** Create a branch at a snapshot (NULL: the current branch's base). */
QSNAP_API int qsnap_plan_branch_create(qsnap_plan **out, qsnap_store *s, const char *name,
                                       const char *at);

/** Delete a branch (its head); a dirty one needs force. The current branch is refused. */
QSNAP_API int qsnap_plan_branch_delete(qsnap_plan **out, qsnap_store *s, const char *name,
                                       bool force);

/** Rename a branch. */
QSNAP_API int qsnap_plan_branch_rename(qsnap_plan **out, qsnap_store *s, const char *old_name,
                                       const char *new_name);

#define QSNAP_DELETE_CHILDREN 0x1 /**< delete the whole subtree (snapshots and branches) */
#define QSNAP_DELETE_STREAM 0x2   /**< stream a shared layer into its dependents, not keep it */
#define QSNAP_DELETE_METADATA 0x4 /**< forget the name only; the state stays as an unnamed node */
/**
 * With QSNAP_DELETE_CHILDREN: delete the branches of the subtree also when
 * their heads hold changes that no snapshot keeps (the changes are lost).
 * Without it such a subtree is refused (QSNAP_EREFUSED, naming each branch and
 * how much it holds), as qsnap_plan_branch_delete refuses a dirty branch
 * without force. Ignored without QSNAP_DELETE_CHILDREN.
 */
#define QSNAP_DELETE_FORCE 0x8

/**
 * Delete a snapshot anywhere in the tree, keeping every other state's content.
 * An unnamed node that a delete kept for what was built on it, and that the
 * delete leaves with nothing on it (no snapshot, no branch, its layer needed by
 * nothing else) goes too, with its layer, and so on up the tree, in the same
 * plan; one that QSNAP_DELETE_METADATA left stays (its data is kept on purpose).
 * With QSNAP_DELETE_CHILDREN a subtree that holds the current branch is refused
 * (QSNAP_EREFUSED), and so is one with a branch whose head holds changes, unless
 * flags has QSNAP_DELETE_FORCE.
 */
QSNAP_API int qsnap_plan_delete(qsnap_plan **out, qsnap_store *s, const char *snapshot,
                                unsigned flags);

/** Commit a branch (NULL: current) into its base layer, keeping every other state. */
QSNAP_API int qsnap_plan_commit(qsnap_plan **out, qsnap_store *s, const char *branch);

/**
 * Find the files plan p touches (every image file it writes, re-points,
 * freezes, makes writable, removes or makes current, and the current
 * branch's head) and whether another process (a running QEMU, a qsnap, an
 * NBD server) holds QEMU's image locks on any of them. The list is kept in
 * the plan: qsnap_plan_describe() shows it. qsnap_plan_execute() does the
 * same check itself, and holds the files' locks while the plan runs. Like
 * qsnap_plan_execute(), it also refuses a plan with steps while layers/
 * holds a file qsnap did not make, so that a dry run reports what the real
 * run would refuse. The files include the one the VM path names (see
 * qsnap_vm_path()) when it is not the current head, and a plan with steps is
 * refused while the VM path does not point at the current head.
 * @return 0; QSNAP_EBUSY (a file is held: the message names it),
 *         QSNAP_EINTEGRITY (a file in layers/ that qsnap did not make, or a VM
 *         path that does not point at the current head: the message names
 *         it), QSNAP_ERROR
 */
QSNAP_API int qsnap_plan_check(qsnap_store *s, qsnap_plan *p);

/**
 * The plan as text (one numbered step a line; then, when the plan drops changes
 * that no snapshot keeps, a line naming them; then what qsnap_plan_check() found)
 * or JSON. *out is malloc'd (free()). @return 0, QSNAP_ERROR
 */
QSNAP_API int qsnap_plan_describe(const qsnap_plan *p, bool json, char **out);

/** One line saying what the plan did or will do ("created snapshot s1 ..."); borrowed from p. */
QSNAP_API const char *qsnap_plan_summary(const qsnap_plan *p);

#define QSNAP_EXEC_OPTS_VERSION 1

/** Options of qsnap_plan_execute(). */
typedef struct qsnap_exec_opts {
    unsigned version;            /**< QSNAP_EXEC_OPTS_VERSION */
    qcow2_progress_fn progress;  /**< for steps that copy data, or NULL */
    void *payload;               /**< passed to progress and step_hook */
    /** Test hook: called after each step (index from 1); the caller may stop the process. */
    void (*step_hook)(unsigned step, void *payload);
} qsnap_exec_opts;

#define QSNAP_EXEC_OPTS_INIT {QSNAP_EXEC_OPTS_VERSION, NULL, NULL, NULL}

/**
 * Execute a plan (journaled; crash-safe: after a crash, qsnap_verify with
 * repair finishes it). The plan stays the caller's.
 * @param[in] o  options, or NULL
 * Before the first step, every file the plan touches (see
 * qsnap_plan_check()) is locked as a writer locks an image; any file another
 * process holds refuses the whole plan with nothing changed. The locks are
 * held until the plan ends, so a QEMU started meanwhile fails to open them.
 * A plan with steps is refused, nothing changed, while the VM path does not
 * point at the current head (QSNAP_EINTEGRITY, as qsnap_vm_path()).
 * @return 0; QSNAP_EBUSY (a file is in use; nothing was changed), QSNAP_EINTEGRITY (a file
 *         changed under the store, or the VM path points elsewhere), QSNAP_ERROR (I/O: the
 *         journal lets qsnap_verify(repair) finish or undo it)
 */
QSNAP_API int qsnap_plan_execute(qsnap_store *s, qsnap_plan *p, const qsnap_exec_opts *o);

/** Free a plan (NULL allowed). */
QSNAP_API void qsnap_plan_free(qsnap_plan *p);

/** A range of guest bytes. */
typedef struct qsnap_range {
    uint64_t start;  /**< bytes */
    uint64_t length; /**< bytes */
} qsnap_range;

/**
 * The byte ranges whose content differs between two snapshots or branches.
 * Their files are read with shared image locks, as qemu-img convert reads.
 * @param[out] out    array owned by the caller (free())
 * @param[out] n_out  number of ranges
 * @return 0; QSNAP_ENOTFOUND, QSNAP_EBUSY (a head another process, such as a
 *         running QEMU, holds for writing), QSNAP_ERROR
 */
QSNAP_API int qsnap_diff(qsnap_store *s, const char *a, const char *b, qsnap_range **out,
                         size_t *n_out);

/** What one node holds and what deleting it would free. */
typedef struct qsnap_usage {
    unsigned id;         /**< node id */
    const char *name;    /**< as in qsnap_node */
    qsnap_kind kind;     /**< kind */
    uint64_t holds;      /**< bytes its own file occupies; an internal snapshot: the clusters
                              of its head's file that only it references */
    uint64_t frees;      /**< bytes deleting it would give back */
} qsnap_usage;

/** Usage of every node; the array belongs to the caller (qsnap_du_free). @return 0, QSNAP_ERROR */
QSNAP_API int qsnap_du(qsnap_store *s, qsnap_usage **out, size_t *n_out);

/** Free what qsnap_du() returned (NULL allowed). */
QSNAP_API void qsnap_du_free(qsnap_usage *u, size_t n);

/**
 * What depends on a snapshot or branch, and what an operation on it would do,
 * as text. *out is malloc'd (free()).
 * @return 0; QSNAP_ENOTFOUND, QSNAP_ERROR
 */
QSNAP_API int qsnap_why(qsnap_store *s, const char *name, char **out);

/**
 * Write a standalone image of a snapshot or branch (raw or qcow2) at out_path
 * (replaced if it exists); the store is not changed. progress (may be NULL)
 * is called with payload as bytes are copied. out_path, by any name (links
 * followed, hard links found), must not be the disk, a file of the chain
 * being read or anything in the store directory.
 * The chain is read with shared image locks, as qemu-img convert reads it.
 * @return 0; QSNAP_ENOTFOUND (no such name), QSNAP_EREFUSED (out_path is one
 *         of those; nothing was written), QSNAP_EBUSY (a head another process,
 *         such as a running QEMU, holds for writing), QSNAP_ERROR
 */
QSNAP_API int qsnap_export(qsnap_store *s, const char *name, const char *out_path,
                           qcow2_format format, qcow2_progress_fn progress, void *payload);

/**
 * Open the content of a snapshot or branch as an image, for a program that
 * serves or reads it (an NBD server, a FUSE view): the file that holds it
 * with its backing chain (a snapshot's frozen layer, a branch's head; for an
 * internal snapshot, the head of its branch showing that snapshot, read-only).
 * QEMU-compatible locks are taken as qcow2_image_open() takes them: shared
 * for reading; with QCOW2_OPEN_RDWR (a branch only) exclusive on the head,
 * so a QEMU and the tree commands that would touch the head are refused
 * (QSNAP_EBUSY) until qcow2_image_close(). The image does not depend on s:
 * the store may be closed while it is open.
 * @param[in] s      an open store (QSNAP_OPEN_READONLY is enough)
 * @param[in] name   a snapshot or branch name
 * @param[in] flags  0 (read-only), or QCOW2_OPEN_RDWR to write a branch's head
 * @param[out] out   the image, owned by the caller (qcow2_image_close()); NULL
 *                   on failure
 * @return 0; QSNAP_ENOTFOUND (no such name), QSNAP_EUSAGE (QCOW2_OPEN_RDWR for
 *         a snapshot, other flags), QSNAP_EBUSY (a lock is held by another
 *         user), QSNAP_EINTEGRITY (a missing or damaged file), QSNAP_ERROR
 */
QSNAP_API int qsnap_open_image(qsnap_store *s, const char *name, unsigned flags, qcow2_image **out);

/** One finding of qsnap_verify(). */
typedef struct qsnap_finding {
    bool problem;        /**< false: an informational line (what was checked or repaired) */
    bool repaired;       /**< the repair fixed it */
    const char *file;    /**< the file concerned, or "" */
    const char *message; /**< one line */
} qsnap_finding;

/**
 * Check the store: every file exists and passes check, every backing link
 * and format in every header matches the metadata, no frozen layer changed
 * since it was frozen (fingerprints), no operation is pending. With repair,
 * finish an interrupted operation, re-point links that differ, and remove
 * half-made files.
 * @return 0 when nothing is wrong (after repair), QSNAP_EINTEGRITY otherwise
 */
QSNAP_API int qsnap_verify(qsnap_store *s, bool repair, qsnap_finding **out, size_t *n_out);

/** Free the findings of qsnap_verify() (NULL allowed). */
QSNAP_API void qsnap_verify_free(qsnap_finding *f, size_t n);

/** What a path is to a store (qsnap_file_kind()). */
typedef enum qsnap_file_kind {
    QSNAP_FILE_NONE = 0,   /**< no store's: not a disk with a store, not in a store directory */
    QSNAP_FILE_HEAD = 1,   /**< a branch's head (the VM path leads to one): what a VM writes */
    QSNAP_FILE_FROZEN = 2, /**< frozen: the disk once its store has snapshots, a snapshot's
                                layer (layers/N.qcow2), a state file (state/) */
    QSNAP_FILE_STORE = 3,  /**< anything else in or under a store directory (the directory
                                itself, its metadata, a file qsnap did not make, a name
                                that does not exist yet) */
} qsnap_file_kind;

/**
 * What path is to the store it belongs to, if any, for programs that write
 * files (image commands, outputs): links are followed (a dangling last one
 * too: where a new file would land). A store directory is a directory named
 * *.qsnap holding a meta file or a layers/ directory; path is in one when
 * the directory it resolves into is that directory or below it, and is the
 * disk of one when DISK.qsnap beside it holds metadata or a journal. A file
 * in layers/ is told frozen or a head by device and inode against the
 * store's metadata (the store is opened read-only for it, so a writer may
 * be waited for as qsnap_store_open() waits). Nothing is changed.
 * @param[out] kind       what it is
 * @param[out] store_dir  the store directory (absolute, malloc'd; free()) when
 *                        kind is not QSNAP_FILE_NONE, else NULL; may be NULL
 * @return 0 (a file in layers/ whose store's metadata cannot be read is told
 *         by its mode: read-only is frozen, writable a head); QSNAP_ERROR
 */
QSNAP_API int qsnap_file_kind_of(const char *path, qsnap_file_kind *kind, char **store_dir);

/**
 * Refuse a write into path by a program other than the tree commands (an
 * image command) when it would change a snapshot: path is a frozen file of a
 * store (QSNAP_FILE_FROZEN), or, with replace (the file is made anew or
 * replaced), any file of a store or a new name in a store directory. A
 * branch's head may be written into (a VM does).
 * @return 0 (path may be written); QSNAP_EREFUSED (the message names path
 *         and the store, the hint the tree command that does it); QSNAP_ERROR
 */
QSNAP_API int qsnap_check_outside_write(const char *path, bool replace);

/**
 * qsnap_check_outside_write(path, false), and for an internal snapshot's
 * change (apply or delete of snap, found by id and then by name, as
 * qemu-img finds it) in a branch's head: QSNAP_EREFUSED when snap is one of
 * the tree's internal snapshots (only the tree commands revert to or delete
 * those; one made outside qsnap may be changed).
 */
QSNAP_API int qsnap_check_snapshot_edit(const char *path, const char *snap);

/** Validate a snapshot or branch name (QSNAP_EUSAGE with a message when invalid). */
QSNAP_API int qsnap_name_check(const char *name);

#ifdef __cplusplus
}
#endif

#endif /* QSNAP_QSNAP_H */
