#!/usr/bin/env bash
# Tools of the deploy/ manifest tests (tests/deploy), kept under $AMBIT_DEPLOY_TOOLS
# (/var/cache/ambit/deploy-tests): the npm packages pinned by tests/deploy/package-lock.json
# (Kubernetes schemas and the TypeScript compiler, used offline once installed) and Debian's
# kubectl 1.20 (kubernetes-client, whose kustomize is v2.0.3), unpacked next to them rather
# than installed, since a newer kubectl may own /usr/bin/kubectl. Idempotent: with everything in
# place it only compares a checksum and a version.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
tools="${AMBIT_DEPLOY_TOOLS:-/var/cache/ambit/deploy-tests}"
lock="$repo/tests/deploy/package-lock.json"
npm_dir="$tools/npm"
kubectl_dir="$tools/kubernetes-client"

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: $1 missing under $tools; run scripts/setup.sh as root first" >&2
    exit 1
  fi
}

# npm: Debian's, unless this machine's nodejs already brings one.
if ! command -v npm >/dev/null 2>&1; then
  need_root "npm"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends npm
fi

want="$(sha256sum "$lock" | cut -d' ' -f1)"
if [ "$(cat "$npm_dir/.lock-sha256" 2>/dev/null || true)" != "$want" ]; then
  need_root "npm packages"
  echo "setup: installing the npm packages of tests/deploy into $npm_dir"
  rm -rf "$npm_dir"
  mkdir -p "$npm_dir"
  cp "$repo/tests/deploy/package.json" "$lock" "$npm_dir/"
  (cd "$npm_dir" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" >"$npm_dir/.lock-sha256"
fi

# The version kubernetes-client has in Debian 12; another one (a point release) is fine too.
if ! "$kubectl_dir/usr/bin/kubectl" version --client >/dev/null 2>&1; then
  need_root "Debian's kubectl"
  echo "setup: unpacking Debian's kubernetes-client into $kubectl_dir"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  chmod 755 "$tmp"  # apt's download runs as _apt
  (cd "$tmp" && apt-get download -qq kubernetes-client 2>/dev/null ||
    (apt-get update -qq && apt-get download -qq kubernetes-client))
  rm -rf "$kubectl_dir"
  dpkg-deb -x "$tmp"/kubernetes-client_*.deb "$kubectl_dir"
fi
