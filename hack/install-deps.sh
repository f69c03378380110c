#!/usr/bin/env bash
# Installs the Debian packages the tests and the demo use (kernel tools for
# the network namespaces, iptables, ipset, ipvsadm, conntrack), only when
# one is missing, so a prepared machine skips apt entirely.
set -euo pipefail
need=()
for pair in iptables:iptables ipset:ipset ipvsadm:ipvsadm conntrack:conntrack socat:socat ip:iproute2 modprobe:kmod systemd-analyze:systemd; do
  cmd="${pair%%:*}" pkg="${pair##*:}"
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
if [[ ${#need[@]} -eq 0 ]]; then
  exit 0
fi
echo "installing: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${need[@]}" >/dev/null
