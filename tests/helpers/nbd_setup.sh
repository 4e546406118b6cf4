# Sourced by tests/nbd/plugin.sh and serve.sh (bash) before their first case;
# the preamble itself (QSNAP, pass and fail, ok, bad, q, ts_atexit, ts_end) is
# script_lib.sh's, which this one sources:
#   alive PID        running (a zombie nobody reaped yet counts as gone)
#   nbd_setup NAME PLUGIN
#                    checks that nbdkit, nbdinfo, nbdcopy, qemu-img, qemu-io,
#                    python3 and cmp exist and that QSNAP and PLUGIN are built
#                    (else prints a failed setup line and the totals, and
#                    exits 1); makes the work directory W (qsnap-NAME.XXXXXX
#                    under TMPDIR; removed at exit unless KEEP=1) and enters
#                    it; an INT or TERM ends the script with status 1, after
#                    the commands given to ts_atexit (the script stops its
#                    servers by pid there); sets NBDKIT (see sanitizer_wrapper)
#   sanitizer_wrapper PLUGIN
#                    sets NBDKIT to nbdkit, or, when PLUGIN is a sanitizer
#                    build, to a wrapper in W that preloads the ASan runtime
#                    (nbdkit itself is not instrumented) and exports it as
#                    QSNAP_NBDKIT for qsnap serve
. "$(dirname "${BASH_SOURCE[0]}")/script_lib.sh"
TS_TIMEOUT=120

alive() { [ -e "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

NBDKIT=nbdkit
sanitizer_wrapper() {
    local rt=""
    if readelf -d "$1" 2>/dev/null | grep -q 'NEEDED.*libasan'; then
        rt=$(gcc -print-file-name=libasan.so 2>/dev/null)
    elif nm -D --undefined-only "$1" 2>/dev/null | grep -q ' __asan_'; then
        rt=$(clang -print-file-name=libclang_rt.asan-x86_64.so 2>/dev/null)
    fi
    [ -n "$rt" ] && [ -f "$rt" ] || return 0
    printf '#!/bin/sh\nLD_PRELOAD=%s ASAN_OPTIONS=detect_leaks=0:verify_asan_link_order=0${ASAN_OPTIONS:+:$ASAN_OPTIONS} exec nbdkit "$@"\n' "$rt" >"$W/nbdkit-san"
    chmod +x "$W/nbdkit-san"
    NBDKIT=$W/nbdkit-san
    export QSNAP_NBDKIT=$NBDKIT
}

nbd_setup() {
    ts_need nbdkit nbdinfo nbdcopy qemu-img qemu-io python3 cmp
    [ -f "$2" ] || { bad setup "$2 not built"; ts_end; exit 1; }
    ts_workdir "$1"
    trap 'exit 1' INT TERM
}
