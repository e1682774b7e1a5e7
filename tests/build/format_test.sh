#!/usr/bin/env bash
# scripts/format.sh (`make lint` / `make format`) with the repository's .clang-format: `check`
# passes a formatted file, fails and names an unformatted one (beyond 100 columns, Google layout),
# and `apply` fixes it.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
fmt=$root/scripts/format.sh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp "$root/.clang-format" "$tmp/"
fail=0
expect() {  # expect 0|1 DESCRIPTION COMMAND...
  local want=$1 what=$2 got=0
  shift 2
  "$@" >"$tmp/out" 2>&1 || got=1
  if [ "$got" = "$want" ]; then echo "ok: $what"; else
    echo "FAIL: $what: exit $got, want $want"; cat "$tmp/out"; fail=1; fi
}
name() { printf 'F%.0s' $(seq 1 "$1"); }
# A declaration of exactly 100 columns stays on one line; one of 101 must be wrapped.
printf 'int %s(int a, int b);\n' "$(name 81)" >"$tmp/good.cc"
printf 'int %s(int a, int b);\n' "$(name 82)" >"$tmp/long.cc"
printf 'void F() { int a = 1; int b = 2; }\n' >"$tmp/layout.cc"
expect 0 "a formatted file passes" "$fmt" check "$tmp/good.cc"
expect 1 "a 101-column line fails" "$fmt" check "$tmp/long.cc"
grep -q "not formatted: $tmp/long.cc" "$tmp/out" || { echo "FAIL: the file is not named"; fail=1; }
grep -q "1 of 1 files are not formatted" "$tmp/out" || { echo "FAIL: no count"; fail=1; }
expect 1 "Google layout is enforced" "$fmt" check "$tmp/layout.cc"
expect 0 "apply formats" "$fmt" apply "$tmp/long.cc" "$tmp/layout.cc"
expect 0 "applied files pass" "$fmt" check "$tmp/long.cc" "$tmp/layout.cc"
expect 1 "an unknown mode is refused" "$fmt" tidy
exit $fail
