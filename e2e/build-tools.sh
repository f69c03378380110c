#!/usr/bin/env bash
# Builds the real control plane (etcd, kube-apiserver) and the reference
# kube-proxy from the pinned module in e2e/tools into .cache/bin, but only
# when a binary is missing or older than e2e/tools/go.mod: the build takes
# minutes on a fresh machine.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${SVCPROXY_BIN_DIR:-$root/.cache/bin}"
stamp="$root/e2e/tools/go.mod"
need=0
for b in etcd kube-apiserver kube-proxy; do
  if [[ ! -x "$bin/$b" || "$bin/$b" -ot "$stamp" || "$bin/$b" -ot "$root/e2e/tools/ldflags.sh" ]]; then
    need=1
  fi
done
if [[ $need -eq 0 ]]; then
  exit 0
fi
mkdir -p "$bin"
echo "building etcd, kube-apiserver, kube-proxy into $bin (about 10 minutes the first time; cached afterwards)" >&2
cd "$root/e2e/tools"
ldflags=$(./ldflags.sh)
# One component at a time, so each gets a progress line; the Go build
# cache shares what they have in common.
i=0
for pkg in ./etcd k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-proxy; do
  i=$((i + 1))
  start=$SECONDS
  echo "  [$i/3] ${pkg##*/} ..." >&2
  go build -ldflags "$ldflags" -o "$bin/" "$pkg"
  echo "  [$i/3] ${pkg##*/} built in $((SECONDS - start)) s" >&2
done
# go build leaves the mtime of an up-to-date binary alone; touch so the
# staleness check above holds after a go.mod edit that changed nothing.
touch "$bin/etcd" "$bin/kube-apiserver" "$bin/kube-proxy"
