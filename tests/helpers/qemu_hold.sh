# Sourced by tests (bash): a paused QEMU that holds an image as a running VM does.
#
# qemu_start FILE    starts qemu-system-x86_64 -S (no guest, TCG) on FILE (qcow2,
#                    virtio) and waits until it has started and holds its lock;
#                    sets QPID. The caller's $W is a work directory (the QMP socket
#                    and qemu.err go there); its EXIT trap kills $QPID.
# qemu_stop          ends it (kill, wait); QPID is emptied.
# locked FILE        whether an OFD lock covers FILE's byte 101 (/proc/locks).
# qmp_wait SOCK PID  waits until the QEMU answers on its QMP socket.

# locked FILE: an open file holds an OFD lock on FILE's byte 101 (QEMU's "write"
# permission). Read from /proc/locks: looking takes no lock (a qemu-img info here
# would take its own, and a QEMU starting at that moment fails on it).
locked() {
    local ino
    ino=$(stat -L -c %i "$1" 2>/dev/null) || return 1
    awk -v ino="$ino" '$2 == "OFDLCK" { n = split($6, d, ":"); if (d[n] == ino && $7 <= 101 &&
        ($8 == "EOF" || $8 >= 101)) f = 1 } END { exit !f }' /proc/locks
}

# qmp_wait SOCKET PID: 0 once the QEMU (PID) answers query-status on its QMP
# socket, which it serves only after its start-up (drives opened, locked and
# checked against others' locks, devices attached); 1 when it exited first; 2
# after 120 s. QEMU takes its lock bytes and only then checks everyone else's:
# an operation that takes its own in between makes both fail, so "it has its
# lock" is not "it has started".
qmp_wait() {
    python3 - "$1" "$2" <<'PY'
import json, os, socket, sys, time
path, pid = sys.argv[1], int(sys.argv[2])
end = time.monotonic() + 120
def alive():
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has exited too
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
while time.monotonic() < end:
    if not alive():
        sys.exit(1)
    try:
        c = socket.socket(socket.AF_UNIX)
        c.settimeout(max(1.0, end - time.monotonic()))
        c.connect(path)
        f = c.makefile("rwb")
        def cmd(name):
            f.write(json.dumps({"execute": name}).encode() + b"\n")
            f.flush()
            while True:
                line = f.readline()
                if not line:
                    raise OSError("closed")
                if b'"return"' in line:
                    return
                if b'"error"' in line:
                    raise OSError(line)
        f.readline()  # the greeting
        cmd("qmp_capabilities")
        cmd("query-status")
        sys.exit(0)
    except (OSError, socket.timeout):
        time.sleep(0.1)
sys.exit(2)
PY
}

# qemu_start FILE: a paused QEMU on FILE (qcow2, virtio); waits until it has started.
qemu_start() {
    rm -f "$W/qmp.sock"
    qemu-system-x86_64 -S -display none -nodefaults -machine pc,accel=tcg -m 64 \
        -qmp "unix:$W/qmp.sock,server=on,wait=off" \
        -drive "file=$1,format=qcow2,if=virtio" 2>"$W/qemu.err" &
    QPID=$!
    qmp_wait "$W/qmp.sock" "$QPID" || { echo "# qemu did not start: $(cat "$W/qemu.err")"; return 1; }
    locked "$1" || { echo "# qemu started but holds no lock on $1"; return 1; }
}
qemu_stop() {
    [ -n "$QPID" ] && kill "$QPID" 2>/dev/null
    [ -n "$QPID" ] && wait "$QPID" 2>/dev/null
    QPID=
}
