#!/usr/bin/env bash
# Installs the Debian packages ambit needs to build, test and run its demo. Idempotent: when
# everything is present it only asks dpkg, which takes well under a second.
set -euo pipefail

packages=(
  # build
  cmake make g++ ccache pkg-config clang llvm
  # make lint / make format
  clang-format
  # fuzzing (make fuzz): clang 14's libFuzzer and sanitizer runtimes
  libclang-rt-14-dev
  # BPF
  libbpf-dev bpftool libelf-dev zlib1g-dev
  # data plane
  android-libboringssl-dev libnghttp2-dev
  # control plane
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev libssl-dev
  nlohmann-json3-dev
  # config
  libyaml-cpp-dev
  # netlink (pod routing rules)
  libnl-3-dev libnl-route-3-dev
  # metrics and readiness endpoints (HTTP/1.1, ambitd)
  libmicrohttpd-dev
  # tests and demo
  googletest libgtest-dev libgmock-dev iproute2 tcpdump python3 curl socat openssl
  ncat procps python3-grpcio python3-grpc-tools python3-cryptography python3-h2
  # benchmarks (stunnel4: the mutual-TLS tunnel pair of bench/net's variant P; perf: its
  # --profile)
  iperf3 stunnel4 linux-perf
  # waypoint HTTP/1 parser (nodejs http-parser; Debian 12 has no llhttp)
  libhttp-parser-dev
  # JWT tests (tokens signed at test time)
  python3-jwt
  # ZDS tests: Istio's ZDS messages from Python (tests/zds/fake_istio_cni.py)
  python3-protobuf
  ca-certificates
  # waypoint benchmark: the load generator (h2load) and the peer L7 proxy
  nghttp2-client haproxy
  # Kubernetes API tests: the official Python client against tests/kube/fake_apiserver.py
  python3-kubernetes python3-yaml
  # the API-server client (agent/kube)
  libcurl4-openssl-dev
  # deploy/ manifest tests (tests/deploy): node runs the offline schema checks; npm and the
  # pinned npm packages, and Debian's kubectl 1.20, come from scripts/setup_deploy_tests.sh
  nodejs
  # istio-cni's in-pod rules in the e2e tests (tests/inpod): iptables-restore, nft backend
  iptables
  # ambit-cni tests (tests/cni): the reference plug-ins (bridge, host-local in /usr/lib/cni);
  # their ZDS peer uses python3-protobuf, above
  containernetworking-plugins
  # ambitctl completion tests: its zsh and fish scripts checked by the shells themselves
  zsh fish
  # bench/sweep: the SVG charts of the sweeps (matplotlib, Agg backend: no display needed)
  python3-matplotlib
)
# ... and kubectl: any on PATH will do; Debian's only when there is none.
command -v kubectl >/dev/null 2>&1 || packages+=(kubernetes-client)

missing=()
while read -r name status; do
  [ "$status" = "installed" ] || missing+=("$name")
done < <(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${packages[@]}" 2>/dev/null || true)
# dpkg-query prints nothing for a package it has never heard of.
for p in "${packages[@]}"; do
  dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || missing+=("$p")
done
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u | sed '/^$/d')

if [ "${#missing[@]}" -ne 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing packages: ${missing[*]}; run as root (or install them) first" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
bash "$(dirname "$0")/setup_deploy_tests.sh"
