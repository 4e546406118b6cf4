#!/bin/sh
# checksymbols.sh STATIC SHARED [PREFIX]: a library's namespace check (STYLE.md 7.6);
# PREFIX is qcow2 (default) or qsnap.
# - every global symbol libqcow2.a defines starts with qcow2_ (the internal
#   qcow2__ names included);
# - every dynamic symbol libqcow2.so exports starts with qcow2_ and is not an
#   internal qcow2__ name (the library is built with -fvisibility=hidden and
#   only QCOW2_API declarations are exported).
# Prints the offenders and exits 1 when either rule is broken.
set -u

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    echo "usage: $0 STATIC SHARED [PREFIX]" >&2
    exit 2
fi
static=$1
shared=$2
p=${3:-qcow2}
for f in "$static" "$shared"; do
    if [ ! -f "$f" ]; then
        echo "checksymbols: $f: no such file" >&2
        exit 2
    fi
done

status=0
tmp=$(mktemp) || exit 2
trap 'rm -f "$tmp"' EXIT

# Defined global symbols of the archive (U = undefined references, skipped).
if ! nm -g --defined-only "$static" >"$tmp" 2>/dev/null; then
    echo "checksymbols: nm failed on $static" >&2
    exit 2
fi
bad_static=$(awk 'NF >= 3 { print $3 }' "$tmp" | grep -v "^${p}_" | sort -u)
nstatic=$(awk 'NF >= 3' "$tmp" | wc -l)
if [ -n "$bad_static" ]; then
    echo "checksymbols: $static defines global symbols outside ${p}_:"
    echo "$bad_static" | sed 's/^/    /'
    status=1
fi

# Exported dynamic symbols of the shared object.
if ! nm -D --defined-only "$shared" >"$tmp" 2>/dev/null; then
    echo "checksymbols: nm -D failed on $shared" >&2
    exit 2
fi
ndyn=$(awk 'NF >= 3' "$tmp" | wc -l)
bad_dyn=$(awk 'NF >= 3 { print $3 }' "$tmp" | grep -v "^${p}_" | sort -u)
internal_dyn=$(awk 'NF >= 3 { print $3 }' "$tmp" | grep "^${p}__" | sort -u)
if [ -n "$bad_dyn" ]; then
    echo "checksymbols: $shared exports symbols outside ${p}_:"
    echo "$bad_dyn" | sed 's/^/    /'
    status=1
fi
if [ -n "$internal_dyn" ]; then
    echo "checksymbols: $shared exports internal ${p}__ symbols (missing -fvisibility=hidden?):"
    echo "$internal_dyn" | sed 's/^/    /'
    status=1
fi
if [ "$ndyn" -eq 0 ]; then
    echo "checksymbols: $shared exports no symbols at all (QCOW2_API missing?)"
    status=1
fi

if [ $status -eq 0 ]; then
    echo "checksymbols: ok ($nstatic global symbols in $(basename "$static"), $ndyn exported by $(basename "$shared"))"
fi
exit $status
