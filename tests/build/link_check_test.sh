#!/usr/bin/env bash
# The process-split check (cmake/check_links.sh) must reject a data-plane binary that loads gRPC
# or OpenSSL and a control-plane binary that loads BoringSSL, and accept the real binaries.
set -euo pipefail
build=$1
check=$(dirname "$0")/../../cmake/check_links.sh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
pass=0
expect() {  # expect ok|reject BINARY SIDE
  local want=$1 bin=$2 side=$3 got=ok
  cp "$bin" "$tmp/probe"
  "$check" "$tmp/probe" "$side" 2>/dev/null || got=reject
  if [ "$got" = "$want" ]; then echo "ok: $side $(basename "$bin") -> $got"; pass=$((pass + 1))
  else echo "FAIL: $side $(basename "$bin") -> $got, want $want"; fail=$((fail + 1)); fi
}
grpc=$(ls /usr/lib/*/libgrpc++.so.1* | head -1)
boring=$(ls /usr/lib/*/android/libssl.so | head -1)
expect reject "$grpc" data-plane
expect reject "$boring" control-plane
expect ok "$build/agent/main/ambit-tunnel" data-plane
expect ok "$build/agent/main/ambitd" control-plane
# The fuzz targets (tests/fuzz) stay on their side too: the HBONE and tunnel ones never link gRPC.
for t in hbone_server hbone_client control_tunnel; do
  expect ok "$build/tests/fuzz/fuzz_$t" data-plane
done
for t in control_agent ca admin_api config_yaml spiffe_id; do
  expect ok "$build/tests/fuzz/fuzz_$t" control-plane
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
