#!/usr/bin/env bash
# coverage_summary.sh BUILD_DIR TARGET [CORPUS]
# What a target reaches: replays CORPUS (default: the last `make fuzz` corpus of TARGET, else its
# seeds) once and prints, per product source file (agent/), the edges covered out of the edges of
# the functions it entered, and how many of the file's instrumented functions it entered.
set -euo pipefail
build=$1 t=$2
here=$(cd "$(dirname "$0")" && pwd)
corpus=${3:-$build/fuzz-work/$t/corpus}
[ -d "$corpus" ] || corpus=$here/$t
"$build/tests/fuzz/fuzz_$t" -runs=0 -print_coverage=1 "$corpus" 2>&1 |
  awk '/^(COVERED|UNCOVERED)_FUNC:/ {
    split($5, e, "/"); loc = $NF; sub(/:[0-9]+$/, "", loc);
    if (loc !~ /\/agent\//) next;
    sub(/.*\/agent\//, "agent/", loc);
    funcs[loc]++; if ($1 == "COVERED_FUNC:") { entered[loc]++; cov[loc] += e[1]; tot[loc] += e[2] }
  }
  END { for (f in funcs) printf "%-40s %5d/%-5d edges  %3d/%-3d functions\n", f, cov[f], tot[f], entered[f], funcs[f] }' |
  sort
