# Sourced by tests/interop/*.sh (bash) before their first case; the preamble
# itself (QSNAP, pass and fail, ok, bad, q, ts_end) is script_lib.sh's:
#   interop_setup NAME   checks that qemu-img, qemu-io, python3 and cmp exist
#                        and that QSNAP is built (else prints a failed setup
#                        line and the totals, and exits 1), makes the work
#                        directory W (qsnap-NAME.XXXXXX under TMPDIR; removed at
#                        exit unless KEEP=1) and enters it.
. "$(dirname "${BASH_SOURCE[0]}")/script_lib.sh"
interop_setup() { ts_init "$1" qemu-img qemu-io python3 cmp; }
