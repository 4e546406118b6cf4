/*
 * Shared by the targets on a qsnap store's metadata (qsnap_meta, qsnap_log)
 * and the seed generator: a meta file read from fuzzer bytes, and the model
 * qsnap_log applies changes to when its input names none.
 */
#ifndef QSNAP_FUZZ_H
#define QSNAP_FUZZ_H

#include <stdbool.h>
#include <string.h>
#include <xxhash.h>

#include "qsnap_int.h"
#include "fuzz_helpers.h"

/*
 * data as a meta file (qsnap__model_read; check: the graph too): 0 or an
 * error (m left empty). A binary one gets its checksum made right first, so
 * that the fuzzer reaches the checks behind it (a hostile file has a right
 * checksum too).
 */
static inline int fuzz_read_meta(struct qsnap__model *m, const void *data, size_t size,
                                 const char *what, bool check)
{
    struct qsnap__pool *pool = qsnap__pool_new(size);
    unsigned version;

    FUZZ_ASSERT(pool != NULL);
    memcpy(pool->data, data, size);
    if (size >= 24 && (!memcmp(data, QSNAP_BIN_MAGIC, sizeof(QSNAP_BIN_MAGIC) - 1) ||
                       !memcmp(data, QSNAP_BIN_MAGIC4, sizeof(QSNAP_BIN_MAGIC4) - 1))) {
        uint64_t h = XXH3_64bits(pool->data + 24, size - 24);
        for (int i = 0; i < 8; i++)
            pool->data[16 + i] = (char)(h >> (8 * i));
    }
    return qsnap__model_read(m, pool, what, &version, check);
}

/*
 * qsnap_log's built-in model, in the text form of the store (model.c). Layers out of id order
 * (a dropped layer's place is taken by the last), an unnamed node, an internal
 * node with a state, three branches, ids below seq with gaps.
 */
static const char qsnap_log_base[] =
    "qsnap-store 2\n"
    "gen 12\n"
    "seq 14\n"
    "disk ../disk.qcow2\n"
    "current side\n"
    "layer 1 file=../disk.qcow2 fmt=qcow2 backing=0 frozen=1 disk=1"
    " fp=30313233343536373839616263646566 size=196624 mtime=1700000000123456789\n"
    "layer 3 file=layers/3.qcow2 fmt=qcow2 backing=1 frozen=1 disk=0"
    " fp=00000000000000000000000000000000 size=200704 mtime=5"
    " fpd=0123456789abcdef0123456789abcdef vsize=1048576\n"
    "layer 11 file=layers/11.qcow2 fmt=qcow2 backing=8 frozen=0 disk=0\n"
    "layer 8 file=layers/8.qcow2 fmt=qcow2 backing=3 frozen=1 disk=0"
    " fp=57876e0989fb2f3245675e85cf83f8dc size=393216 mtime=1796462009368748407 vsize=1048576\n"
    "layer 5 file=layers/5.qcow2 fmt=qcow2 backing=3 frozen=0 disk=0\n"
    "layer 12 file=layers/12%20raw.img fmt=raw backing=0 frozen=0 disk=0\n"
    "node 2 parent=0 layer=1 created=1700000000 name=base desc=fresh%20install%2C%20100%25\n"
    "node 4 parent=2 layer=3 created=-1\n"
    "node 7 parent=4 layer=8 created=1700000100 name=s3 desc=on%20side state=states/7.vmstate\n"
    "node 9 parent=7 layer=11 created=1700000200 name=inside internal=qsnap-9\n"
    "branch main head=5 base=4 created=1700000300\n"
    "branch side head=11 base=9 created=1700000400\n"
    "branch %E2%9C%93 head=12 base=0 created=0\n"
    "end\n";

#endif /* QSNAP_FUZZ_H */
