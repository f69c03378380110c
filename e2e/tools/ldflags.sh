#!/usr/bin/env bash
# Prints the -ldflags that stamp Kubernetes binaries built from the pinned
# k8s.io/kubernetes module with its version, as the upstream build does
# (hack/lib/version.sh), so that nodes, `kubectl version` and e2e.test report
# v1.x.y rather than v0.0.0-master.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
v=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
IFS=. read -r major minor _ <<<"${v#v}"
flags=()
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	flags+=("-X $pkg.gitVersion=$v" "-X $pkg.gitMajor=$major" "-X $pkg.gitMinor=$minor" "-X $pkg.gitTreeState=clean")
done
echo "${flags[*]}"
