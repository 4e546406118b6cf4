# Sourced by test scripts (bash) that make or change images with qemu-io:
#   qio FMT FILE CMD...  runs the qemu-io commands CMD... (one -c each) on FILE
#                        opened as FMT; true when qemu-io exits 0 and prints no
#                        "error" or "failed" line. Its output is kept in
#                        $W/qio.out (W: the script's work directory; the
#                        current one when W is unset); a failure prints one
#                        "# qemu-io ..." line saying why.
qio() {
    local fmt=$1 f=$2 c out=${W:-.}/qio.out args=()
    shift 2
    for c in "$@"; do args+=(-c "$c"); done
    if ! qemu-io -f "$fmt" "${args[@]}" "$f" >"$out" 2>&1; then
        echo "# qemu-io failed on $f: $(tail -n 2 "$out")"
        return 1
    fi
    if grep -qiE 'error|failed' "$out"; then
        echo "# qemu-io on $f: $(grep -iE 'error|failed' "$out" | head -n 1)"
        return 1
    fi
}
