# Sourced by tests/install/*.sh (bash): one ok/FAIL line per check, counted in
# pass and fail (the script prints "$pass passed, $fail failed" last).
#   ok NAME, bad NAME    count a check that passed or failed
#   check NAME CMD...    ok when CMD succeeds; else FAIL and the first 20 lines
#                        of its output (kept in $tmp/out: the script sets tmp)
pass=0
fail=0
ok() { echo "ok   $1"; pass=$((pass + 1)); }
bad() { echo "FAIL $1"; fail=$((fail + 1)); }
check() {
    local name=$1
    shift
    if "$@" >"$tmp/out" 2>&1; then ok "$name"; else bad "$name"; sed 's/^/     /' "$tmp/out" | head -20; fi
}
