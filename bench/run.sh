#!/usr/bin/env bash
# Runs every benchmark under bench/ against an existing build (`make bench` builds the
# `benchmarks` target first). Each prints its table and writes bench/results/<name>.json.
# Usage: bench/run.sh [BUILD_DIR]   (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${1:-build}
mkdir -p bench/results

# Authorization decisions (bench/README.md): 9 cases x (1 warm-up + 7 repetitions) x <= 200 ms.
"$build_dir/bench/authz_bench" --json=bench/results/authz.json

# Network: B0 plain TCP, B1 a plain relay pair, T ambit (eBPF redirect + HBONE) on two simulated
# nodes, interleaved, 3 repetitions (bench/net/README.md). Needs root.
/usr/bin/python3 bench/net/run.py --build-dir "$build_dir" --json bench/results/net.json

# Configuration at scale: file write -> enforcement time and memory at 1k/10k/100k peer pods
# (bench/config/run.py), against a DENY in an empty configuration. Needs root.
/usr/bin/python3 bench/config/run.py --build-dir "$build_dir" --json bench/results/config.json

# Waypoint: requests/s per waypoint core and added latency (D, W, WJ, WX) against HAProxy (P,
# Pbase) on the same topology, interleaved, 3 repetitions (bench/waypoint/README.md). Needs root.
/usr/bin/python3 bench/waypoint/run.py --build-dir "$build_dir" --json bench/results/waypoint.json

# Upgrades: connections lost per agent take-over and per data-plane roll (goal 0), new
# connections failed or delayed meanwhile, against a plain data-plane restart
# (bench/upgrade/README.md). Needs root.
/usr/bin/python3 bench/upgrade/run.py --build-dir "$build_dir" --json bench/results/upgrade.json
