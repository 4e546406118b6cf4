# poke_refcount.py IMAGE CLUSTER VALUE: set the 16-bit refcount of a host
# cluster in a qcow2 image (refcount_bits=16), to make leaks and errors for
# the check tests. Only the first refcount table entries are followed.
import struct, sys
path, idx, val = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(path, 'r+b') as f:
    h = f.read(104)
    cbits = struct.unpack('>I', h[20:24])[0]
    rt_off = struct.unpack('>Q', h[48:56])[0]
    per_block = (1 << cbits) // 2
    f.seek(rt_off + 8 * (idx // per_block))
    rb = struct.unpack('>Q', f.read(8))[0]
    f.seek(rb + 2 * (idx % per_block))
    f.write(struct.pack('>H', val))
