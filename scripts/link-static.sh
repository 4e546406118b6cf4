#!/bin/sh
# link-static.sh CC ARGS...: runs the -static-pie link of qsnap and passes the
# linker's messages on, all but one: glibc's warning that dlopen in a static
# program needs glibc's shared objects at run time, when libfuse3's module
# loader (fuse_get_module) is what pulls dlopen in. qsnap never asks FUSE for a
# module (it passes no modules= option), so that dlopen is never called. Every
# other message, and the exit status of the link, are the linker's own.
#
# (ld's --no-warnings would silence the warning too, but binutils 2.40 then
# also exits 0 on undefined references and writes a program that crashes.)
set -u

[ $# -ge 1 ] || { echo "usage: $0 CC ARGS..." >&2; exit 2; }
err=$(mktemp "${TMPDIR:-/tmp}/qsnap-ld.XXXXXX") || exit 2
"$@" 2>"$err"
status=$?
awk '
    /libfuse3\.a\(.*\): in function .fuse_get_module.:$/ { if (held != "") print held; held = $0; next }
    held != "" && /warning: Using .dlopen. in statically linked applications/ { held = ""; next }
    held != "" { print held; held = "" }
    { print }
    END { if (held != "") print held }' "$err" >&2
rm -f "$err"
exit "$status"
