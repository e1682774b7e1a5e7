#!/usr/bin/env bash
# format.sh check|apply [FILE...]: clang-format over ambit's C++ sources (agent/, tests/, bench/;
# not the kernel-style BPF C under bpf/ or tests/bpf/*.bpf.c). `check` changes nothing and fails
# listing every file that is not formatted, with the count; `apply` rewrites them in place.
# Without FILEs: every tracked .cc/.h file (or every one on disk outside a git checkout); with
# FORMAT_SINCE=REV in the environment, only those changed since REV (committed or not), which is
# what a branch can be held to while the rest of the tree awaits one `make format`.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
[ "$mode" = check ] || [ "$mode" = apply ] || { echo "usage: $0 check|apply [FILE...]" >&2; exit 2; }
shift
clang_format=${CLANG_FORMAT:-clang-format}
command -v "$clang_format" >/dev/null ||
  { echo "format: $clang_format not found (scripts/setup.sh installs clang-format)" >&2; exit 2; }

if [ "$#" -gt 0 ]; then
  files=("$@")
elif [ -n "${FORMAT_SINCE:-}" ]; then
  mapfile -t files < <({ git diff --name-only --diff-filter=d "$FORMAT_SINCE"...HEAD;
    git diff --name-only --diff-filter=d HEAD; } | sort -u |
    grep -E '^(agent|tests|bench)/.*\.(cc|h)$' || true)
elif git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  mapfile -t files < <(git ls-files -- 'agent/*.cc' 'agent/*.h' 'tests/*.cc' 'tests/*.h' \
    'bench/*.cc' 'bench/*.h')
else
  mapfile -t files < <(find agent tests bench -name build -prune -o \
    \( -name '*.cc' -o -name '*.h' \) -print | sort)
fi
# Headers shared with BPF C are kernel style.
mapfile -t files < <(printf '%s\n' "${files[@]}" | grep -v -e '^bpf/' -e '\.bpf\.' \
  -e '^tests/bpf/decision_test_abi\.h$' | sed '/^$/d' || true)

if [ "$mode" = apply ]; then
  printf '%s\0' "${files[@]}" | xargs -0 -r -n 50 "$clang_format" -i --style=file
  echo "format: ${#files[@]} files formatted"
  exit 0
fi
# One clang-format per file (any failure, a crash included, marks the file), as many at once as
# there are cores: one after the other, 500 files took a minute on 2 cores. Each file that fails
# is printed whole by one printf, so parallel runs cannot interleave inside a name.
bad=()
if [ "${#files[@]}" -gt 0 ]; then
  mapfile -t bad < <(printf '%s\0' "${files[@]}" |
    xargs -0 -r -n 32 -P "$(nproc)" sh -c \
      'for f; do "$0" --style=file --dry-run -Werror "$f" >/dev/null 2>&1 || printf "%s\n" "$f"; done' \
      "$clang_format" | sort)
fi
if [ "${#bad[@]}" -gt 0 ]; then
  printf 'not formatted: %s\n' "${bad[@]}" >&2
  echo "format: ${#bad[@]} of ${#files[@]} files are not formatted; \`make format\` fixes them" >&2
  exit 1
fi
echo "format: ${#files[@]} files formatted as .clang-format says"
