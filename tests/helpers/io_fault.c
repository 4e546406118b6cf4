/*
 * io_fault: call counting, N-th call failure and crash simulation over any
 * backend (see io_fault.h). Sits between the engine's choke point (io.c)
 * and a real backend (io_mem, memfs, io_posix).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "io_fault.h"

#define SECTOR 512u
#define BOUNCE_BYTES (1u << 20)

enum op_kind { OP_WRITE, OP_TRUNCATE, OP_PUNCH };

/* One queued crash-mode operation. */
struct op {
    enum op_kind kind;
    uint64_t off;  /* WRITE, PUNCH: start; TRUNCATE: new size */
    uint64_t len;  /* WRITE, PUNCH: bytes */
    uint8_t *data; /* WRITE: len bytes */
};

struct io_fault {
    qcow2_io base;    /* must be first */
    qcow2_io *inner;  /* borrowed */
    uint64_t counts[IO_FAULT_NB_METHODS];
    unsigned mask;    /* methods the fault counts */
    uint64_t nth;     /* fail the nth masked call; 0 = disarmed */
    uint64_t seen;    /* masked calls since arming */
    int err;          /* positive errno to fail with */
    bool persistent;
    bool fired;
    bool crash_mode;
    bool crashed;     /* after io_fault_crash: everything fails */
    bool closed;
    struct op *ops;   /* crash-mode queue */
    size_t nb_ops;
    size_t cap_ops;
};

static io_fault *to_fault(qcow2_io *io)
{
    return (io_fault *)io;
}

/* Count a call; return -errno if it must fail. */
static int enter(io_fault *f, enum io_fault_method m)
{
    f->counts[m]++;
    if (f->crashed || f->closed)
        return -EIO;
    if (!f->nth || !(f->mask & (1u << m)))
        return 0;
    f->seen++;
    if (f->seen == f->nth || (f->persistent && f->seen > f->nth)) {
        f->fired = true;
        return -f->err;
    }
    return 0;
}

static int queue_op(io_fault *f, enum op_kind kind, uint64_t off, uint64_t len, const void *data)
{
    struct op *op;

    if (f->nb_ops == f->cap_ops) {
        size_t cap = f->cap_ops ? f->cap_ops * 2 : 64;
        struct op *n = realloc(f->ops, cap * sizeof(*n));
        if (!n)
            return -ENOMEM;
        f->ops = n;
        f->cap_ops = cap;
    }
    op = &f->ops[f->nb_ops];
    op->kind = kind;
    op->off = off;
    op->len = len;
    op->data = NULL;
    if (kind == OP_WRITE && len) {
        op->data = malloc((size_t)len);
        if (!op->data)
            return -ENOMEM;
        memcpy(op->data, data, (size_t)len);
    }
    f->nb_ops++;
    return 0;
}

static void clear_ops(io_fault *f)
{
    size_t i;

    for (i = 0; i < f->nb_ops; i++)
        free(f->ops[i].data);
    f->nb_ops = 0;
}

/* Apply one queued operation (or the sectors of a write selected by keep) to inner. */
static int apply_op(io_fault *f, const struct op *op)
{
    qcow2_io *in = f->inner;

    switch (op->kind) {
    case OP_WRITE:
        return in->ops->pwrite(in, op->data, (size_t)op->len, op->off);
    case OP_TRUNCATE:
        return in->ops->truncate(in, op->off);
    case OP_PUNCH:
        if (in->ops->punch)
            return in->ops->punch(in, op->off, op->len);
        else {
            static const uint8_t zero[65536];
            uint64_t off = op->off, len = op->len;
            while (len) {
                size_t n = len < sizeof(zero) ? (size_t)len : sizeof(zero);
                int rc = in->ops->pwrite(in, zero, n, off);
                if (rc)
                    return rc;
                off += n;
                len -= n;
            }
        }
        return 0;
    }
    return -EINVAL;
}

static int apply_all(io_fault *f)
{
    size_t i;
    int rc = 0;

    for (i = 0; i < f->nb_ops && rc == 0; i++)
        rc = apply_op(f, &f->ops[i]);
    clear_ops(f);
    return rc;
}

/* The size inner would have with the queue applied. */
static int queued_size(io_fault *f, uint64_t *size)
{
    size_t i;
    int rc = f->inner->ops->get_size(f->inner, size);

    if (rc)
        return rc;
    for (i = 0; i < f->nb_ops; i++) {
        const struct op *op = &f->ops[i];
        if (op->kind == OP_TRUNCATE)
            *size = op->off;
        else if (op->kind == OP_WRITE && op->off + op->len > *size)
            *size = op->off + op->len;
    }
    return 0;
}

/* Overlay the queue, in order, on [off, off+len) already read from inner. */
static void overlay_ops(io_fault *f, uint8_t *buf, size_t len, uint64_t off)
{
    uint64_t end = off + len;
    size_t i;

    for (i = 0; i < f->nb_ops; i++) {
        const struct op *op = &f->ops[i];
        uint64_t s, e;

        if (op->kind == OP_TRUNCATE) {
            if (op->off < end) {
                s = op->off > off ? op->off : off;
                memset(buf + (s - off), 0, (size_t)(end - s));
            }
            continue;
        }
        s = op->off > off ? op->off : off;
        e = op->off + op->len < end ? op->off + op->len : end;
        if (s >= e)
            continue;
        if (op->kind == OP_WRITE)
            memcpy(buf + (s - off), op->data + (s - op->off), (size_t)(e - s));
        else
            memset(buf + (s - off), 0, (size_t)(e - s));
    }
}

static int f_pread(qcow2_io *io, void *buf, size_t len, uint64_t off)
{
    io_fault *f = to_fault(io);
    int rc = enter(f, IO_FAULT_PREAD);

    if (rc)
        return rc;
    rc = f->inner->ops->pread(f->inner, buf, len, off);
    if (rc == 0 && f->nb_ops)
        overlay_ops(f, buf, len, off);
    return rc;
}

static int f_pwrite(qcow2_io *io, const void *buf, size_t len, uint64_t off)
{
    io_fault *f = to_fault(io);
    int rc = enter(f, IO_FAULT_PWRITE);

    if (rc)
        return rc;
    if (f->crash_mode)
        return queue_op(f, OP_WRITE, off, len, buf);
    return f->inner->ops->pwrite(f->inner, buf, len, off);
}

static int f_flush(qcow2_io *io)
{
    io_fault *f = to_fault(io);
    int rc = enter(f, IO_FAULT_FLUSH);

    if (rc)
        return rc;
    rc = apply_all(f);
    if (rc)
        return rc;
    return f->inner->ops->flush ? f->inner->ops->flush(f->inner) : 0;
}

static int f_truncate(qcow2_io *io, uint64_t size)
{
    io_fault *f = to_fault(io);
    int rc = enter(f, IO_FAULT_TRUNCATE);

    if (rc)
        return rc;
    if (!f->inner->ops->truncate)
        return -EOPNOTSUPP;
    if (f->crash_mode)
        return queue_op(f, OP_TRUNCATE, size, 0, NULL);
    return f->inner->ops->truncate(f->inner, size);
}

static int f_get_size(qcow2_io *io, uint64_t *size_out)
{
    io_fault *f = to_fault(io);
    int rc = enter(f, IO_FAULT_GET_SIZE);

    if (rc)
        return rc;
    return queued_size(f, size_out);
}

static int f_punch(qcow2_io *io, uint64_t off, uint64_t len)
{
    io_fault *f = to_fault(io);
    uint64_t size;
    int rc = enter(f, IO_FAULT_PUNCH);

    if (rc)
        return rc;
    if (!f->crash_mode)
        return f->inner->ops->punch ? f->inner->ops->punch(f->inner, off, len)
                                    : apply_op(f, &(struct op){OP_PUNCH, off, len, NULL});
    /* Punch never grows the file: clip to the queued size. */
    rc = queued_size(f, &size);
    if (rc || off >= size)
        return rc;
    return queue_op(f, OP_PUNCH, off, len < size - off ? len : size - off, NULL);
}

static int f_extent(qcow2_io *io, uint64_t off, uint64_t len, uint64_t *run_out, bool *is_hole)
{
    io_fault *f = to_fault(io);
    int rc = enter(f, IO_FAULT_EXTENT);

    if (rc)
        return rc;
    if (f->nb_ops || !f->inner->ops->extent) {
        *run_out = len;
        *is_hole = false;
        return 0;
    }
    return f->inner->ops->extent(f->inner, off, len, run_out, is_hole);
}

static int f_allocated(qcow2_io *io, uint64_t *size_out)
{
    io_fault *f = to_fault(io);
    int rc = enter(f, IO_FAULT_ALLOCATED);

    if (rc)
        return rc;
    if (f->nb_ops || !f->inner->ops->allocated_size)
        return queued_size(f, size_out);
    return f->inner->ops->allocated_size(f->inner, size_out);
}

static int f_lock(qcow2_io *io, qcow2_io_lock_mode mode)
{
    io_fault *f = to_fault(io);
    int rc = enter(f, IO_FAULT_LOCK);

    if (rc)
        return rc;
    return f->inner->ops->lock ? f->inner->ops->lock(f->inner, mode) : 0;
}

static int f_copy_from(qcow2_io *io, uint64_t off, qcow2_io *src, uint64_t src_off, size_t len)
{
    io_fault *f = to_fault(io);
    uint8_t *buf;
    int rc = enter(f, IO_FAULT_COPY_FROM);

    if (rc)
        return rc;
    if (!f->crash_mode && f->inner->ops->copy_from)
        return f->inner->ops->copy_from(f->inner, off, src, src_off, len);
    buf = malloc(len < BOUNCE_BYTES ? len : BOUNCE_BYTES);
    if (!buf)
        return -ENOMEM;
    while (len && rc == 0) {
        size_t n = len < BOUNCE_BYTES ? len : BOUNCE_BYTES;
        rc = src->ops->pread(src, buf, n, src_off);
        if (rc == 0)
            rc = f->crash_mode ? queue_op(f, OP_WRITE, off, n, buf)
                               : f->inner->ops->pwrite(f->inner, buf, n, off);
        off += n;
        src_off += n;
        len -= n;
    }
    free(buf);
    return rc;
}

/* Forwarded when the inner file can; in crash mode refused, so the engine's zeroes are queued. */
static int f_allocate(qcow2_io *io, uint64_t off, uint64_t len)
{
    io_fault *f = to_fault(io);
    int rc = enter(f, IO_FAULT_ALLOCATE);

    if (rc)
        return rc;
    if (f->crash_mode || f->nb_ops || !f->inner->ops->allocate)
        return -EOPNOTSUPP;
    return f->inner->ops->allocate(f->inner, off, len);
}

static void f_close(qcow2_io *io)
{
    to_fault(io)->closed = true;
}

static const qcow2_io_ops fault_ops = {
    .version = QCOW2_IO_OPS_VERSION,
    .pread = f_pread,
    .pwrite = f_pwrite,
    .flush = f_flush,
    .truncate = f_truncate,
    .get_size = f_get_size,
    .punch = f_punch,
    .extent = f_extent,
    .allocated_size = f_allocated,
    .lock = f_lock,
    .copy_from = f_copy_from,
    .allocate = f_allocate,
    .close = f_close,
};

io_fault *io_fault_new(qcow2_io *inner)
{
    io_fault *f = calloc(1, sizeof(*f));

    if (!f)
        return NULL;
    f->base.ops = &fault_ops;
    f->inner = inner;
    return f;
}

qcow2_io *io_fault_io(io_fault *f)
{
    return &f->base;
}

void io_fault_free(io_fault *f)
{
    if (!f)
        return;
    clear_ops(f);
    free(f->ops);
    free(f);
}

void io_fault_fail(io_fault *f, unsigned mask, uint64_t nth, int err, bool persistent)
{
    f->mask = mask;
    f->nth = nth;
    f->seen = 0;
    f->err = err > 0 ? err : EIO;
    f->persistent = persistent;
    f->fired = false;
}

bool io_fault_fired(const io_fault *f)
{
    return f->fired;
}

uint64_t io_fault_count(const io_fault *f, enum io_fault_method m)
{
    return (unsigned)m < IO_FAULT_NB_METHODS ? f->counts[m] : 0;
}

void io_fault_reset_counts(io_fault *f)
{
    memset(f->counts, 0, sizeof(f->counts));
}

int io_fault_crash_mode(io_fault *f, bool on)
{
    int rc = 0;

    if (!on && f->nb_ops)
        rc = apply_all(f);
    f->crash_mode = on;
    return rc;
}

size_t io_fault_pending(const io_fault *f)
{
    return f->nb_ops;
}

/* xorshift64*: small, seeded, good enough to pick subsets. */
static uint64_t rnd(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545f4914f6cdd1dull;
}

/* Apply the sectors of a write that a coin toss keeps. */
static int apply_torn(io_fault *f, const struct op *op, uint64_t *seed)
{
    uint64_t pos = op->off;
    uint64_t end = op->off + op->len;
    int rc;

    while (pos < end) {
        uint64_t next = (pos / SECTOR + 1) * SECTOR;
        if (next > end)
            next = end;
        if (rnd(seed) & 1) {
            rc = f->inner->ops->pwrite(f->inner, op->data + (pos - op->off),
                                       (size_t)(next - pos), pos);
            if (rc)
                return rc;
        }
        pos = next;
    }
    return 0;
}

int io_fault_crash(io_fault *f, uint64_t seed)
{
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull;
    size_t i;
    int rc = 0;

    if (s == 0)
        s = 1;
    for (i = 0; i < f->nb_ops && rc == 0; i++) {
        const struct op *op = &f->ops[i];
        unsigned choice = (unsigned)(rnd(&s) % 3);

        if (choice == 0)
            continue; /* dropped */
        if (choice == 2 && op->kind == OP_WRITE)
            rc = apply_torn(f, op, &s);
        else
            rc = apply_op(f, op);
    }
    clear_ops(f);
    f->crashed = true;
    return rc;
}
