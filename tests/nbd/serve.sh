#!/bin/bash
# qsnap serve / qsnap serve --stop, with nbdkit, nbdinfo and nbdcopy:
#   - a snapshot on --socket PATH: the URI printed is that socket's, nbdcopy
#     equals `qsnap export`, the export is read-only;
#   - the current branch on the default socket (run-time directory): writable,
#     and tree commands that touch its head exit 5 while it is served;
#   - --readonly serves a branch read-only; a disk without a store is served
#     as the file itself; --port N on TCP (127.0.0.1);
#   - --stop DISK NAME stops only that server; --stop DISK the others; the
#     head's lock is gone afterwards (qsnap create works);
#   - --foreground: serves until SIGTERM, then the server is gone;
#   - errors: an unknown name (6), --socket with --port (2), no nbdkit (1).
# The plugin is the one beside $QSNAP (the build directory). Every server is
# stopped by pid on exit. Prints "ok"/"FAIL" lines and "N passed, N failed".
set -u

. "$(dirname "$0")/../helpers/nbd_setup.sh"
PLUGIN=$(dirname "$QSNAP")/nbdkit-qsnap-plugin.so

FGPID=""
# At exit: the foreground qsnap serve, and every server recorded in the test's
# run-time directory ($W/run), by pid.
stop_all() {
    local p pids=""
    [ -n "$FGPID" ] && kill "$FGPID" 2>/dev/null
    for f in "$W"/run/qsnap/serve-*; do
        [ -f "$f" ] || continue
        p=$(sed -n 's/^pid=//p' "$f")
        [ -n "$p" ] && kill "$p" 2>/dev/null && pids="$pids $p"
    done
    for p in $pids; do for _ in $(seq 50); do alive "$p" || break; sleep 0.1; done; done
}
ts_atexit stop_all
nbd_setup serve "$PLUGIN"
export XDG_RUNTIME_DIR=$W/run
mkdir -p "$XDG_RUNTIME_DIR"
chmod 700 "$XDG_RUNTIME_DIR"
unset QSNAP_NBDKIT QSNAP_NBDKIT_PLUGIN
sanitizer_wrapper "$PLUGIN"
info() { # URI KEY: one field of nbdinfo --json
    nbdinfo --json "$1" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["exports"][0][sys.argv[1]])' "$2"
}
record_pid() { # NAME: the pid of the recorded server of NAME
    grep -l "^name=$1\$" "$XDG_RUNTIME_DIR"/qsnap/serve-* 2>/dev/null | head -n 1 | xargs -r sed -n 's/^pid=//p'
}

qemu-img create -q -f qcow2 disk.qcow2 32M
qemu-io -f qcow2 -c 'write -P 0x11 0 1M' -c 'write -P 0x22 17M 64k' disk.qcow2 >/dev/null
q create disk.qcow2 s1 >/dev/null
head=$(q info disk.qcow2 main --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["file"])')
qemu-io -f qcow2 -c 'write -P 0x33 4M 64k' "$head" >/dev/null
q export disk.qcow2 s1 s1.raw >/dev/null
q export disk.qcow2 main main.raw >/dev/null

# A snapshot on a given socket.
out=$(q serve disk.qcow2 s1 --socket "$W/s1.sock" 2>&1)
rc=$?
[ $rc = 0 ] && [ "$out" = "nbd+unix:///?socket=$W/s1.sock" ] && ok "serve s1 --socket prints its URI" ||
    bad "serve s1" "exit $rc: $out"
nbdcopy "nbd+unix:///?socket=$W/s1.sock" c1.raw 2>/dev/null && cmp -s c1.raw s1.raw &&
    ok "nbdcopy of the served s1 equals qsnap export" || bad "nbdcopy s1" "differs"
[ "$(info "nbd+unix:///?socket=$W/s1.sock" is_read_only)" = True ] && ok "s1 is served read-only" ||
    bad "s1 read-only" "not read-only"

# The current branch on the default socket.
uri=$(q serve disk.qcow2 2>serve.err)
rc=$?
case $uri in "nbd+unix:///?socket=$XDG_RUNTIME_DIR/qsnap/"*.sock) [ $rc = 0 ] && ok "serve DISK: the current branch on a socket of the run-time directory" || bad "serve main" "exit $rc" ;;
*) bad "serve main" "exit $rc: $uri $(cat serve.err)" ;;
esac
nbdcopy "$uri" c2.raw 2>/dev/null && cmp -s c2.raw main.raw && ok "nbdcopy of the served branch equals qsnap export" ||
    bad "nbdcopy main" "differs"
[ "$(info "$uri" is_read_only)" = False ] && ok "main is served writable" || bad "main writable" "read-only"
qemu-io -f raw -c 'write -P 0x44 8M 64k' "$uri" >w.out 2>&1 && ! grep -qi 'error\|fail' w.out &&
    ok "qemu-io writes to the served branch" || bad "write" "$(cat w.out)"
q create disk.qcow2 s2 >lock.out 2>&1
rc=$?
[ $rc = 5 ] && ok "qsnap create while main is served: exit 5" || bad "create while served" "exit $rc: $(cat lock.out)"

q serve disk.qcow2 main --socket "$W/again.sock" >/dev/null 2>lock.out
rc=$?
[ $rc = 5 ] && ok "serving main a second time while it is served writable: exit 5" ||
    bad "second writer" "exit $rc: $(cat lock.out)"

# --stop DISK NAME stops only that one.
p1=$(record_pid s1)
pm=$(record_pid main)
out=$(q serve --stop disk.qcow2 s1 2>&1)
rc=$?
if [ $rc = 0 ] && [ -n "$p1" ] && ! alive "$p1" && [ -n "$pm" ] && alive "$pm"; then
    ok "serve --stop DISK s1 stops s1's server only ($out)"
else
    bad "stop s1" "exit $rc, s1 pid '$p1', main pid '$pm': $out"
fi
[ ! -e "$W/s1.sock" ] && ok "its socket is removed" || bad "socket" "still there"
out=$(q serve --stop disk.qcow2 2>&1)
rc=$?
[ $rc = 0 ] && ! alive "$pm" && ok "serve --stop DISK stops the rest" || bad "stop main" "exit $rc: $out"
q serve --stop disk.qcow2 >/dev/null 2>&1
rc=$?
[ $rc = 6 ] && ok "serve --stop with nothing to stop: exit 6" || bad "stop nothing" "exit $rc"
q export disk.qcow2 main m2.raw >/dev/null
qemu-io -f raw -c 'read -P 0x44 8M 64k' -c 'read -P 0x33 4M 64k' m2.raw >r.out 2>&1 && ! grep -qi 'error\|fail\|mismatch' r.out &&
    ok "the NBD write is in branch main" || bad "write landed" "$(cat r.out)"
q create disk.qcow2 s2 >/dev/null 2>&1 && ok "after --stop the head is free: qsnap create works" || bad "create after stop" "refused"

# --readonly on a branch.
uri=$(q serve disk.qcow2 main --readonly --socket "$W/ro.sock" 2>&1)
[ "$(info "$uri" is_read_only)" = True ] && ok "serve --readonly: a branch served read-only" || bad "--readonly" "$uri"
q serve --stop disk.qcow2 main >/dev/null 2>&1

# A disk without a store is served as the file itself.
qemu-img create -q -f raw plain.raw 4M
qemu-io -f raw -c 'write -P 0x55 1M 4k' plain.raw >/dev/null
uri=$(q serve plain.raw --socket "$W/plain.sock" 2>&1)
nbdcopy "$uri" c3.raw 2>/dev/null && cmp -s c3.raw plain.raw && ok "a disk without a store is served as itself" ||
    bad "plain disk" "$uri"
q serve plain.raw --socket "$W/plain2.sock" >/dev/null 2>err.out
rc=$?
[ $rc = 5 ] && grep -q 'plain.raw' err.out && ok "a disk without a store, served writable, is locked (exit 5)" ||
    bad "plain lock" "exit $rc: $(cat err.out)"
q serve --stop plain.raw >/dev/null 2>&1 || bad "stop plain" "failed"

# TCP on a free port.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
uri=$(q serve disk.qcow2 s1 --port "$port" 2>&1)
case $uri in nbd://*:"$port"/) ;; *) bad "--port URI" "$uri" ;; esac
nbdcopy "nbd://127.0.0.1:$port/" c4.raw 2>/dev/null && cmp -s c4.raw s1.raw && ok "serve --port $port: nbdcopy over TCP" ||
    bad "--port" "$uri"
q serve --stop disk.qcow2 s1 >/dev/null 2>&1

# --foreground until SIGTERM.
"$QSNAP" serve disk.qcow2 s1 --socket "$W/fg.sock" --foreground >fg.out 2>&1 &
FGPID=$!
for _ in $(seq 100); do [ -s fg.out ] && break; sleep 0.1; done
[ "$(cat fg.out)" = "nbd+unix:///?socket=$W/fg.sock" ] && nbdinfo --size "nbd+unix:///?socket=$W/fg.sock" >/dev/null 2>&1 &&
    ok "serve --foreground prints the URI and serves" || bad "--foreground" "$(cat fg.out)"
fgsrv=$(record_pid s1)
kill -TERM "$FGPID"
wait "$FGPID"
rc=$?
FGPID=""
gone=yes
[ -n "$fgsrv" ] && alive "$fgsrv" && gone=no
[ $rc = 0 ] && [ $gone = yes ] && ! nbdinfo --size "nbd+unix:///?socket=$W/fg.sock" >/dev/null 2>&1 &&
    ok "SIGTERM ends the foreground server (exit 0)" || bad "foreground stop" "exit $rc, server gone: $gone"

# Errors.
q serve disk.qcow2 nope --socket "$W/x.sock" >/dev/null 2>err.out
rc=$?
[ $rc = 6 ] && grep -q "no snapshot or branch named 'nope'" err.out && ok "an unknown name: exit 6" ||
    bad "unknown name" "exit $rc: $(cat err.out)"
q serve disk.qcow2 --socket a --port 1 >/dev/null 2>err.out
rc=$?
[ $rc = 2 ] && ok "--socket with --port: exit 2" || bad "usage" "exit $rc"
QSNAP_NBDKIT=/nonexistent/nbdkit q serve disk.qcow2 s1 >/dev/null 2>err.out
rc=$?
[ $rc = 1 ] && grep -q 'nbdkit' err.out && ok "no nbdkit: exit 1, saying so" || bad "no nbdkit" "exit $rc: $(cat err.out)"

ts_end
