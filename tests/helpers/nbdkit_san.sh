# Sourced by tests/nbd/*.sh (bash), after ts_workdir: the nbdkit to run.
#   sanitizer_wrapper PLUGIN  sets NBDKIT to nbdkit, or, when PLUGIN is a
#                sanitizer build, to a wrapper in $W that preloads the ASan
#                runtime (nbdkit itself is not instrumented) and exports it
#                as QSNAP_NBDKIT for qsnap serve
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
