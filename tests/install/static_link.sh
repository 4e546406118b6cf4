#!/bin/bash
# tests/install/static_link.sh: how qsnap is linked (STATIC_CLI in the Makefile).
#   - the choice: `make -n` in a scratch build directory, with the C compiler
#     as it is and with one that finds no libzstd.a, with a sanitizer flag,
#     and with STATIC_CLI=auto, yes, no and a wrong value: what the link line
#     and the one-line note say, and which combinations stop with an error;
#   - the qsnap of this build: linked as BUILD/qsnap.link says (-static-pie:
#     no interpreter, no shared library; dynamic: it needs libc);
#   - a static glibc program must not need glibc's shared parts at run time:
#     qsnap holds no user, group or host look-up (NSS); its own code calls no
#     setlocale, iconv or dlopen either (the only ones it holds are libfuse3's:
#     its module loader and its iconv module, used only by a modules= mount
#     option, which qsnap never passes);
#   - the static qsnap reads time zones (TZ and the zoneinfo files) as the
#     dynamic one does.
# Prints one ok/FAIL line per check and "N passed, N failed" last.
set -u

# shellcheck source=tests/helpers/checks.sh
. "$(dirname "$0")/../helpers/checks.sh"
# W holds the scratch build directory and the made-up disk.
check_setup static

# ---- the choice -----------------------------------------------------------------
# `make -n` of qsnap in an empty build directory prints the commands, runs none;
# the variables of an outer make (make test, make asan) are left out.
dry() { # dry VAR=VALUE...: the dry run's output in $W/dry, its status returned
    env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u CFLAGS -u LDFLAGS -u MOREFLAGS \
        $MAKE --no-print-directory -n BUILD="$W/b" CC="$CC" "$@" "$W/b/qsnap" >"$W/dry" 2>&1
}
note() { sed -n 's/^echo "note: \(qsnap is linked.*\)"$/\1/p' "$W/dry"; }
link_line() { grep -A1 -- '-o '"$W/b/qsnap"'\( \|$\)' "$W/dry"; }

have_all=yes
for f in rcrt1.o libc.a libm.a libzstd.a libz.a libxxhash.a; do
    case $($CC -print-file-name=$f) in /*) ;; *) have_all=no ;; esac
done
if [ -f /usr/include/fuse3/fuse.h ]; then
    case $($CC -print-file-name=libfuse3.a) in /*) ;; *) have_all=no ;; esac
fi

if [ $have_all = yes ]; then
    check "auto: the make of qsnap runs" dry
    check "auto, every archive found: the note says -static-pie" grep -qx 'qsnap is linked -static-pie.*' <(note)
    check "auto, every archive found: the link is -static-pie" grep -q -- '-static-pie' <(link_line)
    check "yes, every archive found: the make of qsnap runs" dry STATIC_CLI=yes
    check "yes, every archive found: the link is -static-pie" grep -q -- '-static-pie' <(link_line)
else
    check "auto, an archive missing here: the note says dynamically" dry
    check "auto, an archive missing here: no -static-pie" bash -c "! grep -q -- -static-pie '$W/dry'"
fi
check "no: the make of qsnap runs" dry STATIC_CLI=no
check "no: the note says dynamically (STATIC_CLI=no)" grep -qx 'qsnap is linked dynamically (STATIC_CLI=no)' <(note)
check "no: the link line has no -static-pie" bash -c "! grep -q -- -static-pie '$W/dry'"
check "no: the link line has the libraries" grep -q -- '-lzstd -lz -lxxhash' <(link_line)

# A compiler that finds no libzstd.a (the real one otherwise).
fake=$W/cc-no-zstd
printf '#!/bin/sh\n[ "$1" = -print-file-name=libzstd.a ] && { echo libzstd.a; exit 0; }\nexec %s "$@"\n' \
    "$(command -v "$CC")" >"$fake"
chmod +x "$fake"
check "a compiler without libzstd.a, auto: the make runs" dry CC="$fake"
check "a compiler without libzstd.a, auto: the note names libzstd.a" \
    grep -qx "qsnap is linked dynamically: .*finds no libzstd.a for a static link" <(note)
check "a compiler without libzstd.a, auto: no -static-pie" bash -c "! grep -q -- -static-pie '$W/dry'"
if dry CC="$fake" STATIC_CLI=yes; then
    bad "a compiler without libzstd.a, yes: make stops" "it runs"
else
    ok "a compiler without libzstd.a, yes: make stops"
fi
check "a compiler without libzstd.a, yes: the error names libzstd.a" \
    grep -q '\*\*\* STATIC_CLI=yes: .* finds no libzstd.a' "$W/dry"

for flags in "MOREFLAGS=-fsanitize=undefined" "LDFLAGS=-fsanitize=address" "CFLAGS=-O1 -fsanitize=address"; do
    check "$flags, auto: the make runs" dry "$flags"
    check "$flags, auto: dynamic (a sanitizer build)" \
        grep -qx 'qsnap is linked dynamically (a sanitizer build)' <(note)
    if dry "$flags" STATIC_CLI=yes; then bad "$flags, yes: make stops" "it runs"; else ok "$flags, yes: make stops"; fi
    check "$flags, yes: the error says why" grep -q 'STATIC_CLI=yes: a sanitizer build' "$W/dry"
done

if dry STATIC_CLI=maybe; then bad "STATIC_CLI=maybe: make stops" "it runs"; else ok "STATIC_CLI=maybe: make stops"; fi
check "STATIC_CLI=maybe: the error lists the values" grep -q 'STATIC_CLI=maybe: say auto, yes or no' "$W/dry"

# ---- this build's qsnap -------------------------------------------------------------
how=$(cut -d' ' -f1 "$BUILD/qsnap.link" 2>/dev/null)
check "$BUILD/qsnap.link says how qsnap was linked" test -n "$how"
case $how in
static)
    check "static qsnap: a position-independent executable" grep -q 'Type: *DYN' <(readelf -hW "$QSNAP")
    check "static qsnap: no program interpreter" bash -c "! readelf -lW '$QSNAP' | grep -q INTERP"
    check "static qsnap: needs no shared library" bash -c "! readelf -dW '$QSNAP' | grep -q NEEDED"
    ;;
*)
    check "dynamic qsnap ($how): needs libc.so.6" grep -q 'NEEDED.*\[libc.so.6\]' <(readelf -dW "$QSNAP")
    ;;
esac

# What a static glibc program cannot do without glibc's shared objects at run
# time: NSS look-ups (users, groups, hosts, services), locales, iconv, dlopen.
nss='getpwnam getpwuid getpwnam_r getpwuid_r getpwent getgrnam getgrgid getgrnam_r getgrgid_r getgrent
     getgrouplist initgroups getspnam getaddrinfo gethostbyname gethostbyname2 gethostbyname_r
     gethostbyaddr getservbyname getservbyport getprotobyname getnetbyname getlogin getlogin_r'
defined=$(nm "$QSNAP" 2>/dev/null | awk '$2 ~ /^[TtWw]$/ { print $3 }' | sort -u)
check "nm lists qsnap's functions (it is not stripped)" grep -qx main <<<"$defined"
found=""
for s in $nss; do grep -qx "$s" <<<"$defined" && found="$found $s"; done
if [ -z "$found" ]; then ok "qsnap holds no NSS look-up"; else bad "qsnap holds no NSS look-up" "it holds:$found"; fi
objs=$(ls "$BUILD"/cli/*.o "$BUILD/libqsnap.a" "$BUILD/libqcow2.a" 2>/dev/null)
check "qsnap's objects are there" test -n "$objs"
# shellcheck disable=SC2086
undef=$(nm -u $objs 2>/dev/null | awk 'NF == 2 { print $2 }' | sort -u)
check "nm lists what qsnap's objects call (open is one)" grep -q '^open' <<<"$undef"
found=""
for s in $nss setlocale newlocale uselocale dlopen dlsym dlmopen iconv_open; do grep -qx "$s" <<<"$undef" && found="$found $s"; done
if [ -z "$found" ]; then ok "qsnap's own code calls no NSS, locale, iconv or dlopen function"; else
    bad "qsnap's own code calls no NSS, locale, iconv or dlopen function" "it calls:$found"; fi

# ---- time zones -------------------------------------------------------------------
disk=$W/tz.raw
truncate -s 1M "$disk"
check "qsnap create runs" "$QSNAP" create "$disk" base
hour() { TZ=$1 "$QSNAP" info "$disk" base | sed -n 's/^created: *[0-9-]* \([0-9][0-9]\):.*/\1/p'; }
utc=$(hour UTC0)
check "qsnap info prints the creation time" test -n "$utc"
plus9=$(hour XST-9)
check "TZ=XST-9 (a POSIX rule): 9 hours after UTC" \
    test "$(( (10#$utc + 9) % 24 ))" = "$(( 10#${plus9:-99} ))"
if [ -f /usr/share/zoneinfo/Asia/Tokyo ]; then
    tokyo=$(hour Asia/Tokyo)
    check "TZ=Asia/Tokyo (a zoneinfo file): 9 hours after UTC" \
        test "$(( (10#$utc + 9) % 24 ))" = "$(( 10#${tokyo:-99} ))"
fi

ts_end
