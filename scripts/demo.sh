#!/usr/bin/env bash
# make demo: needs root (BPF, network namespaces). Usage: scripts/demo.sh [BUILD_DIR]
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then
  echo "make demo needs root: it loads BPF programs and creates network namespaces" >&2
  exit 1
fi
exec /usr/bin/python3 "$(dirname "$0")/demo.py" "${1:-build}"
