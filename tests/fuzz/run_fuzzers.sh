#!/usr/bin/env bash
# run_fuzzers.sh BUILD_DIR SECONDS [TARGET...]
# Runs each libFuzzer target of BUILD_DIR (an AMBIT_FUZZ build) for SECONDS on a fresh copy of its
# seed corpus (tests/fuzz/<target>/), with its dictionary (tests/fuzz/<target>.dict) if there is
# one. Fails if any target crashes, leaks, runs out of memory or times out on an input; the input
# is kept as BUILD_DIR/fuzz-work/<target>/crash-* (add it to the corpus once fixed). Prints one
# line per target: executions, executions per second, coverage (edges) and features.
set -uo pipefail
build=$1 seconds=$2
shift 2
here=$(cd "$(dirname "$0")" && pwd)
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  mapfile -t targets < <(sed -n 's/^ambit_fuzz_target(\([a-z_0-9]*\) .*/\1/p' "$here/CMakeLists.txt")
fi

failed=()
summary=()
for t in "${targets[@]}"; do
  bin="$build/tests/fuzz/fuzz_$t"
  if [ ! -x "$bin" ]; then
    echo "fuzz: $bin is missing (make fuzz-build)" >&2
    failed+=("$t(missing)")
    continue
  fi
  work="$build/fuzz-work/$t"
  rm -rf "$work"
  mkdir -p "$work/corpus"
  cp -r "$here/$t/." "$work/corpus/"
  args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536
        -print_final_stats=1 -artifact_prefix="$work/")
  [ -f "$here/$t.dict" ] && args+=(-dict="$here/$t.dict")
  echo "fuzz: $t for ${seconds}s"
  "$bin" "${args[@]}" "$work/corpus" >"$work/log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/log" | tail -1)
  cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+' "$work/log" | tail -1)
  if [ "$rc" -ne 0 ]; then
    failed+=("$t")
    echo "fuzz: $t FAILED (exit $rc); log $work/log, inputs:" $(ls "$work" | grep -E '^(crash|leak|timeout|oom|slow-unit)-') >&2
    grep -E 'ERROR|SUMMARY|property violated|==[0-9]+==' "$work/log" | head -20 >&2
  fi
  summary+=("$(printf '%-16s %s  execs=%s  exec/s=%s  %s' "$t" "$([ "$rc" -eq 0 ] && echo ok || echo FAIL)" "${execs:-?}" "${rate:-?}" "${cov:-}")")
done

printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -ne 0 ]; then
  echo "fuzz: failed: ${failed[*]}" >&2
fi
# One closing line a CI reader can count.
echo "fuzz: $((${#summary[@]} - ${#failed[@]})) passed, ${#failed[@]} failed"
[ "${#failed[@]}" -eq 0 ]
