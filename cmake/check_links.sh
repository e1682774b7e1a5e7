#!/usr/bin/env bash
# check_links.sh BINARY data-plane|control-plane|cni-plugin
set -euo pipefail
bin=$1 side=$2
libs=$(ldd "$bin")
case "$side" in
  data-plane)
    # libcurl: the API-server client (agent/kube) is control-side; in a data-plane process it
    # would also bring OpenSSL or another TLS library beside BoringSSL.
    if grep -Eq '/libcurl' <<<"$libs"; then
      echo "error: data-plane binary $(basename "$bin") loads libcurl" \
        "(docs/ARCHITECTURE.md#process-split):" >&2
      grep -E '/libcurl' <<<"$libs" >&2
      rm -f "$bin"; exit 1
    fi
    if grep -Eq 'libgrpc|libgpr\.|/libssl\.so\.3|/libcrypto\.so\.3' <<<"$libs"; then
      echo "error: data-plane binary $(basename "$bin") loads gRPC or OpenSSL" \
        "(docs/ARCHITECTURE.md#process-split):" >&2
      grep -E 'libgrpc|libgpr\.|libssl\.so\.3|libcrypto\.so\.3' <<<"$libs" >&2
      rm -f "$bin"; exit 1
    fi ;;
  control-plane)
    if grep -q '/android/' <<<"$libs"; then
      echo "error: control-plane binary $(basename "$bin") loads BoringSSL" \
        "(docs/ARCHITECTURE.md#process-split):" >&2
      grep '/android/' <<<"$libs" >&2
      rm -f "$bin"; exit 1
    fi ;;
  cni-plugin)
    # ambit-cni: Protobuf, nlohmann-json and abseil; neither TLS library, gRPC nor libcurl.
    if grep -Eq '/android/|libgrpc|libgpr\.|/libssl\.so|/libcrypto\.so|/libcurl' <<<"$libs"; then
      echo "error: CNI plug-in $(basename "$bin") loads gRPC, libcurl or a TLS library" \
        "(docs/ARCHITECTURE.md#process-split):" >&2
      grep -E '/android/|libgrpc|libgpr\.|/libssl\.so|/libcrypto\.so|/libcurl' <<<"$libs" >&2
      rm -f "$bin"; exit 1
    fi ;;
  *) echo "check_links.sh: unknown side $side" >&2; exit 2 ;;
esac
