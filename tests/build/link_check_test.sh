#!/usr/bin/env bash
# The process-split check (cmake/check_links.sh) must reject a data-plane binary that loads gRPC,
# OpenSSL or libcurl and a control-plane binary that loads BoringSSL, and accept the real binaries.
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
# libcurl (agent/kube, the API-server client) is control-side only: a binary that loads it is
# refused for that reason (not only for the OpenSSL libcurl brings along).
printf 'int main(void) { return 0; }\n' >"$tmp/main.c"
cc "$tmp/main.c" -o "$tmp/with_curl" -Wl,--no-as-needed -lcurl
if out=$("$check" "$tmp/with_curl" data-plane 2>&1); then
  echo "FAIL: data-plane binary loading libcurl -> ok, want reject"; fail=$((fail + 1))
elif grep -q "loads libcurl" <<<"$out"; then
  echo "ok: data-plane binary loading libcurl -> reject"; pass=$((pass + 1))
else
  echo "FAIL: data-plane binary loading libcurl rejected, but not for libcurl: $out"
  fail=$((fail + 1))
fi
# The CNI plug-in (ambit-cni) loads neither TLS library, nor gRPC, nor libcurl.
expect reject "$grpc" cni-plugin
expect reject "$boring" cni-plugin
# (the check above removed the probe it refused: build it again)
cc "$tmp/main.c" -o "$tmp/with_curl" -Wl,--no-as-needed -lcurl
expect reject "$tmp/with_curl" cni-plugin
expect reject "$(ls /usr/lib/*/libssl.so.3 | head -1)" cni-plugin
expect ok "$build/agent/main/ambit-cni" cni-plugin
expect ok "$build/tests/fuzz/fuzz_cni_config" cni-plugin
expect ok "$build/agent/main/ambit-tunnel" data-plane
expect ok "$build/agent/main/ambitd" control-plane
# The fuzz targets (tests/fuzz) stay on their side too: the HBONE and tunnel ones never link gRPC.
for t in hbone_server hbone_client control_tunnel; do
  expect ok "$build/tests/fuzz/fuzz_$t" data-plane
done
for t in control_agent ca admin_api config_yaml spiffe_id kube_watch_event; do
  expect ok "$build/tests/fuzz/fuzz_$t" control-plane
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
