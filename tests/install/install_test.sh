#!/bin/bash
# tests/install/install_test.sh: what a user or a packager gets from
# `make install`. Installs into a temporary DESTDIR with PREFIX=/usr/local,
# then:
#   - checks the installed tree (libraries with their sonames and symlinks,
#     headers, pkg-config files, man page, bash completion, qsnap);
#   - builds examples/*.c and the example of docs/API.md against the
#     INSTALLED library through pkg-config (shared, and static), runs them on
#     images made here and checks the results with qemu-img compare and
#     qemu-img map;
#   - runs the installed qsnap and its bash completion on a made-up disk;
#   - renders the man page without warnings and checks that every command of
#     `qsnap --help` and `qsnap image --help` has its section in it;
#   - runs `make uninstall` and checks that nothing installed is left.
# Prints one ok/FAIL line per check and "N passed, N failed" last.
set -u

# shellcheck source=tests/helpers/checks.sh
. "$(dirname "$0")/../helpers/checks.sh"
# W holds DESTDIR and what is built against it.
check_setup install
top=$(pwd)
dest=$W/dest
prefix=/usr/local
root=$dest$prefix
so=$(sed -n 's/^#define QCOW2_SOVERSION \([0-9]*\)/\1/p' include/qcow2/version.h)
version=$(sed -n 's/^#define QCOW2_VERSION_STRING "\(.*\)"/\1/p' include/qcow2/version.h)

# ---- install ------------------------------------------------------------------
if $MAKE --no-print-directory BUILD="$BUILD" DESTDIR="$dest" PREFIX=$prefix install >"$W/log" 2>&1; then
    ok "make install DESTDIR=... PREFIX=$prefix"
else
    bad "make install DESTDIR=... PREFIX=$prefix" "failed; the end of its log:"
    tail -20 "$W/log"
    ts_end
    exit 1
fi

for f in lib/libqcow2.a lib/libqsnap.a lib/libqcow2.so.$so lib/libqsnap.so.$so \
    include/qcow2/qcow2.h include/qcow2/errors.h include/qcow2/version.h include/qcow2/sys/io.h \
    include/qsnap/qsnap.h lib/pkgconfig/qcow2.pc lib/pkgconfig/qsnap.pc \
    share/man/man1/qsnap.1 share/bash-completion/completions/qsnap; do
    check "installed $f" test -f "$root/$f"
done
check "installed bin/qsnap is executable" test -x "$root/bin/qsnap"
if [ -f /usr/include/nbdkit-plugin.h ]; then
    plugindir=$(pkg-config --variable=plugindir nbdkit 2>/dev/null)
    check "nbdkit-qsnap-plugin.so installed in nbdkit's plugin directory ($plugindir)" \
        test -n "$plugindir" -a -f "$dest$plugindir/nbdkit-qsnap-plugin.so"
    check "nbdkit loads the installed plugin" \
        grep -q '^qsnap_libqcow2_version=' <(nbdkit --dump-plugin "$dest$plugindir/nbdkit-qsnap-plugin.so")
fi
for l in qcow2 qsnap; do
    check "lib$l.so -> lib$l.so.$so" test "$(readlink "$root/lib/lib$l.so")" = "lib$l.so.$so"
    check "lib$l.so.$so has soname lib$l.so.$so" \
        grep -q "(SONAME).*\[lib$l.so.$so\]" <(readelf -d "$root/lib/lib$l.so.$so")
done
check "libqsnap.so.$so needs libqcow2.so.$so" \
    grep -q "(NEEDED).*\[libqcow2.so.$so\]" <(readelf -d "$root/lib/libqsnap.so.$so")

pc() { PKG_CONFIG_PATH=$root/lib/pkgconfig PKG_CONFIG_SYSROOT_DIR=$dest PKG_CONFIG_LIBDIR= pkg-config "$@"; }
check "pkg-config --modversion qcow2 is $version" test "$(pc --modversion qcow2)" = "$version"
check "pkg-config --cflags qcow2 points into DESTDIR" test "$(pc --cflags qcow2 | sed 's/ *$//')" = "-I$root/include"
check "pkg-config --static --libs qcow2 lists zstd, z, xxhash" \
    grep -q -- '-lqcow2 -lzstd -lz -lxxhash' <(pc --static --libs qcow2)
check "pkg-config --libs qsnap pulls in qcow2" grep -q -- '-lqsnap.*-lqcow2' <(pc --libs qsnap)

# ---- the installed qsnap ----------------------------------------------------
check "installed qsnap --version" grep -q "^qsnap $version " <("$root/bin/qsnap" --version)

# ---- examples, built against the installed library --------------------------
cflags="-std=c11 -Wall -Wextra -pedantic -Werror -g"
# A sanitizer build (make asan / ubsan) installs instrumented libraries: link the examples alike.
case $BUILD in
*asan*) cflags="$cflags -fsanitize=address,undefined" ;;
*ubsan*) cflags="$cflags -fsanitize=undefined" ;;
esac
build_shared() { # build_shared OUT SRC MODULE
    $CC $cflags -o "$1" "$2" $(pc --cflags --libs "$3")
}
build_static() { # build_static OUT SRC MODULE: the archives, the private libs shared
    $CC $cflags -o "$1" "$2" $(pc --cflags --static --libs "$3" |
        sed -e 's/-lqsnap/-l:libqsnap.a/' -e 's/-lqcow2/-l:libqcow2.a/')
}
for ex in overlay_write chain_map; do
    check "build examples/$ex.c (shared, pkg-config qcow2)" build_shared "$W/$ex" "examples/$ex.c" qcow2
    check "build examples/$ex.c (static, pkg-config --static qcow2)" \
        build_static "$W/$ex.static" "examples/$ex.c" qcow2
done
check "shared example needs libqcow2.so.$so" \
    grep -q "(NEEDED).*\[libqcow2.so.$so\]" <(readelf -d "$W/overlay_write")
check "static example needs no libqcow2.so" \
    bash -c "! readelf -d '$W/overlay_write.static' | grep -q libqcow2"
export LD_LIBRARY_PATH=$root/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
check "shared example loads the installed libqcow2" \
    grep -q "libqcow2.so.$so => $root/lib/libqcow2.so.$so" <(ldd "$W/chain_map")

# The code of docs/API.md (the blocks after an "example:" marker) compiles and runs.
awk -v dir="$W" '
    /<!-- example: [a-z_]+\.c -->/ { f = $3; next }
    f && /^```c$/ { on = 1; next }
    on && /^```$/ { on = 0; f = ""; next }
    on { print > (dir "/" f) }' docs/API.md
for src in "$W"/api_*.c; do
    [ -f "$src" ] || { bad "docs/API.md has example blocks" "none found"; break; }
    name=${src##*/}
    mod=qcow2
    grep -q 'qsnap/qsnap.h' "$src" && mod=qsnap
    check "docs/API.md: $name builds (pkg-config $mod)" build_shared "${src%.c}" "$src" $mod
done

cd "$W" || exit 2
truncate -s 8M base.raw
printf 'raw data here' | dd of=base.raw bs=1 seek=3145728 conv=notrunc status=none
cp base.raw expect.raw
for variant in "" .static; do
    rm -f ov.qcow2 expect.raw
    cp base.raw expect.raw
    check "overlay_write$variant runs" "./overlay_write$variant" base.raw ov.qcow2 65536 196608 0x5a
    cp out write.out
    check "overlay_write$variant: its summary" \
        grep -q '^wrote 196608 bytes of 0x5a at offset 65536$' write.out
    check "overlay_write$variant: qemu-img check is clean" qemu-img check -q ov.qcow2
    check "overlay_write$variant: backed by base.raw" \
        grep -q '^backing file: base.raw$' <(qemu-img info ov.qcow2)
    # What qemu-io would have written into a copy of the raw image.
    qemu-io -f raw -c 'write -P 0x5a 65536 196608' expect.raw >/dev/null
    check "overlay_write$variant: qemu-img compare with the expected content" \
        qemu-img compare ov.qcow2 expect.raw
done
check "base.raw untouched" bash -c "! cmp -s base.raw expect.raw && qemu-io -f raw -c 'read -P 0 65536 196608' base.raw"

qemu-img create -q -f qcow2 -b ov.qcow2 -F qcow2 top.qcow2
qemu-io -c 'write -P 0x77 4M 128k' -c 'write -z 64k 64k' top.qcow2 >/dev/null
for variant in "" .static; do
    check "chain_map$variant runs" "./chain_map$variant" top.qcow2
    cp out chain.out
    check "chain_map$variant: three layers" grep -q '^chain of top.qcow2: 3 layer(s)$' chain.out
    check "chain_map$variant: layer 2 is base.raw" grep -q '^  2: base.raw (raw, 8388608 bytes' chain.out
    qemu-img map top.qcow2 >map.expected
    check "chain_map$variant: map equals qemu-img map" \
        diff map.expected <(sed -n '/^Offset /,$p' chain.out)
done
if [ -x api_read ]; then
    check "docs/API.md: api_read.c runs on top.qcow2" ./api_read top.qcow2
    cp out read.out
    check "docs/API.md: api_read.c says what it read" \
        grep -qx 'top.qcow2: qcow2, 8388608 bytes, 3 layer(s), first byte 0x00' read.out
fi
cd "$top" || exit 2

# ---- bash completion ------------------------------------------------------------
disk=$W/cdisk.raw
truncate -s 1M "$disk"
"$root/bin/qsnap" create "$disk" base >/dev/null &&
    "$root/bin/qsnap" create "$disk" before-upgrade >/dev/null &&
    "$root/bin/qsnap" branch "$disk" testing --at base >/dev/null ||
    bad "make a disk for the completion test" "qsnap create or branch failed"
if [ -x "$W/api_qsnap" ]; then
    check "docs/API.md: api_qsnap.c lists the tree" "$W/api_qsnap" "$disk"
    cp "$W/out" "$W/list.out"
    check "docs/API.md: api_qsnap.c shows the current branch" grep -qx 'branch   main (current)' "$W/list.out"
fi
complete_words() { # complete_words WORD...: COMPREPLY for the last word, sorted, on one line
    PATH=$root/bin:$PATH bash -c '
        source "$1"; shift
        COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMPREPLY=()
        _qsnap qsnap "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
        printf "%s\n" "${COMPREPLY[@]}" | sort | tr "\n" " "' \
        _ "$root/share/bash-completion/completions/qsnap" "$@"
}
check "completion: complete -p qsnap" \
    grep -qx 'complete -F _qsnap qsnap' <(bash -c "source '$root/share/bash-completion/completions/qsnap'; complete -p qsnap")
check "completion: qsnap re -> revert" test "$(complete_words qsnap re)" = "revert "
check "completion: qsnap image co -> commit compare convert" \
    test "$(complete_words qsnap image co)" = "commit compare convert "
check "completion: qsnap delete DISK --s -> --stream" test "$(complete_words qsnap delete "$disk" --s)" = "--stream "
check "completion: qsnap revert DISK '' -> the snapshots" \
    test "$(complete_words qsnap revert "$disk" "")" = "base before-upgrade "
check "completion: qsnap switch DISK '' -> the branches" \
    test "$(complete_words qsnap switch "$disk" "")" = "main testing "
check "completion: qsnap info DISK b -> base before-upgrade" \
    test "$(complete_words qsnap info "$disk" b)" = "base before-upgrade "
check "completion: qsnap image info -f '' -> qcow2 raw" test "$(complete_words qsnap image info -f "")" = "qcow2 raw "
sdisk="$W/sp ace/my d.raw"
mkdir -p "$W/sp ace" && truncate -s 1M "$sdisk" && "$root/bin/qsnap" create "$sdisk" base >/dev/null ||
    bad "make a disk with spaces in its path" "qsnap create failed"
check "completion: a disk typed with backslashes (sp\\ ace/my\\ d.raw) -> its names" \
    test "$(complete_words qsnap info "${sdisk// /\\ }" "")" = "base main "
check "completion: a disk typed in quotes -> its names" \
    test "$(complete_words qsnap info "\"$sdisk\"" "")" = "base main "
check "completion: no names for a disk without a store" \
    test "$(complete_words qsnap revert "$W/none.raw" "")" = " "

# ---- man page ---------------------------------------------------------------------
man_page=$root/share/man/man1/qsnap.1
check "man page renders without warnings (groff -ww)" \
    bash -c "groff -ww -man -Tutf8 '$man_page' 2>&1 >/dev/null | grep . && exit 1 || exit 0"
if command -v man >/dev/null 2>&1; then
    check "man page renders without warnings (man --warnings)" \
        bash -c "MANWIDTH=80 man --warnings -E UTF-8 -l '$man_page' 2>&1 >/dev/null | grep . && exit 1 || exit 0"
fi
help_words() {
    "$root/bin/qsnap" "$@" --help | awk '
        /^(Snapshot tree commands|Commands):/ { on = 1; next }
        on && /^[^ ]/ { on = 0 }
        on && /^  [a-z]/ { print $1 }'
}
# The man page with roff's escaped hyphens plain, so that `libvirt\-xml` reads as `libvirt-xml`.
man_plain=$W/man.plain
sed 's/\\-/-/g' "$man_page" >"$man_plain"
for c in $(help_words); do
    check "man page has a section for qsnap $c" grep -q "^\.SS \"qsnap $c[ \"]" "$man_plain"
done
for c in $(help_words image); do
    check "man page has a section for qsnap image $c" grep -q "^\.SS \"qsnap image $c[ \"]" "$man_plain"
done
# Each long option of `qsnap COMMAND --help` is named in that command's section.
for c in $(help_words) image; do
    [ "$c" = image ] && continue
    section=$(awk -v c="qsnap $c" 'index($0, ".SS \"" c) == 1 && (substr($0, length(c) + 6, 1) ~ /[ "]/) { on = 1; print; next }
                                   on && /^\.S[SH] / { on = 0 } on { print }' "$man_plain")
    missing=""
    for o in $("$root/bin/qsnap" "$c" --help | grep -o -- '--[a-z][a-z-]*' | sort -u); do
        [ "$o" = --help ] && continue
        grep -q -- "$o" <<<"$section" || missing="$missing $o"
    done
    if [ -z "$missing" ]; then ok "man page section of qsnap $c names its options"; else bad "man page section of qsnap $c names its options" "it lacks:$missing"; fi
done

# ---- uninstall ----------------------------------------------------------------------
if $MAKE --no-print-directory BUILD="$BUILD" DESTDIR="$dest" PREFIX=$prefix uninstall >"$W/log" 2>&1; then
    ok "make uninstall DESTDIR=... PREFIX=$prefix"
else
    bad "make uninstall DESTDIR=... PREFIX=$prefix" "failed; the end of its log:"
    tail -20 "$W/log"
fi
left=$(find "$dest" ! -type d)
if [ -z "$left" ]; then ok "make uninstall removes every installed file"; else bad "make uninstall removes every installed file" "it leaves: $left"; fi

ts_end
