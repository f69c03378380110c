#!/usr/bin/env bash
# make conformance: builds what is missing, brings up a fresh cluster with
# the chosen proxy and mode, runs the upstream e2e.test (pinned module) on
# the tests e2e/conformance/suite.yaml selects, writes
# e2e/conformance/results/<mode>-<proxy>.md and .xml.gz, and tears down.
#
#   conformance.sh [iptables|ipvs] [svcproxy|reference]
#
# CONFORMANCE_PROCS (default 4) e2e.test processes run specs in parallel;
# CONFORMANCE_TIMEOUT (default 3h) bounds the suite (ginkgo --timeout);
# CONFORMANCE_FOCUS narrows the run further (a regular expression, for
# development; the results file says it was set); KEEP=1 leaves the cluster up.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
here=$root/hack/cluster
MODE=${1:-iptables}
PROXY=${2:-svcproxy}
procs=${CONFORMANCE_PROCS:-4}
suite=$root/e2e/conformance/suite.yaml
results=$root/e2e/conformance/results
name=$MODE-$PROXY
[[ $MODE == iptables || $MODE == ipvs ]] || die "mode \"$MODE\": want iptables or ipvs"

started=$(date -u +%FT%TZ)
t0=$SECONDS
# Described before the run: the run writes its results into the tree,
# which would make every tree look dirty.
proxy_desc="svcproxy $(git -C "$root" describe --always --dirty 2>/dev/null) (config/daemonset.yaml)"
"$here/build.sh"
"$here/down.sh" >/dev/null 2>&1 || true
trap '[[ ${KEEP:-0} == 1 ]] || "$here/down.sh"' EXIT
"$here/up.sh" "$PROXY" "$MODE"
up_seconds=$((SECONDS - t0))

work=$cache/conformance-$name
rm -rf "$work"
mkdir -p "$work/report" "$results"
log "smoke: a pod resolves and reaches a Service by name"
"$here/smoke.sh" > "$work/smoke.txt" 2>&1 || { cat "$work/smoke.txt"; die "smoke failed"; }
cat "$work/smoke.txt"
kc get pods -A -o wide > "$work/pods.txt"

(cd "$root" && go build -o "$bin/conformance-report" ./e2e/conformance/report)
focus=$("$bin/conformance-report" -suite "$suite" -print focus)
skip=$("$bin/conformance-report" -suite "$suite" -mode "$MODE" -print skip)
if [[ -n ${CONFORMANCE_FOCUS:-} ]]; then
	focus="(?:$focus).*(?:$CONFORMANCE_FOCUS)|(?:$CONFORMANCE_FOCUS).*(?:$focus)"
fi
log "e2e.test: $procs parallel processes, focus and skip from e2e/conformance/suite.yaml"
t1=$SECONDS
set +e
inns cp "$bin/ginkgo" --procs="$procs" --timeout="${CONFORMANCE_TIMEOUT:-3h}" --no-color --focus="$focus" --skip="$skip" \
	--output-interceptor-mode=none --silence-skips "$bin/e2e.test" -- \
	--kubeconfig="$run/admin.kubeconfig" --kubectl-path="$bin/kubectl" --provider=skeleton --num-nodes=${#NODES[@]} \
	--report-dir="$work/report" --dns-domain=cluster.local \
	> "$work/e2e.log" 2>&1
rc=$?
set -e
suite_seconds=$((SECONDS - t1))
tail -30 "$work/e2e.log"
junit=$(ls "$work"/report/junit*.xml 2>/dev/null | head -1)
[[ -n $junit ]] || die "e2e.test wrote no JUnit report (exit $rc); log: $work/e2e.log"
# The whole JUnit report (every spec of e2e.test, mostly not selected)
# compresses 20-fold.
gzip -9 -n < "$junit" > "$results/$name.xml.gz"

[[ $PROXY == reference ]] && proxy_desc="kube-proxy $K8S_VERSION (kubeadm's manifests)"
{
	echo "# make conformance MODE=$MODE PROXY=$PROXY"
	echo
	echo "Written by hack/cluster/conformance.sh from the run; not edited."
	echo
	echo "- proxy: $proxy_desc, $MODE mode"
	echo "- suite: upstream e2e.test of k8s.io/kubernetes $K8S_VERSION, focus and skips in e2e/conformance/suite.yaml${CONFORMANCE_FOCUS:+, narrowed by CONFORMANCE_FOCUS=$CONFORMANCE_FOCUS}; $procs parallel processes"
	where="in network namespaces of this machine"
	[[ $MODE == ipvs ]] && where="in network namespaces of a QEMU guest (Debian kernel $(cat "$root/.cache/vm/kernel.version" 2>/dev/null), TCG emulation; this kernel has no IPVS), the control plane and e2e.test on this machine"
	echo "- cluster: control plane, ${#NODES[@]} kubelet nodes ($K8S_VERSION, containerd $(containerd --version | awk '{print $3}'), runc $(runc --version | awk 'NR==1{print $3}'), bridge CNI) $where; CoreDNS v1.14.6 (hack/cluster)"
	echo "- machine: $(nproc) cores, $(uname -sr), $(. /etc/os-release; echo "$PRETTY_NAME")"
	echo "- started $started; wall time $(( (SECONDS - t0) / 60 )) min: build and bring-up $up_seconds s, suite $suite_seconds s; e2e.test exit code $rc"
	echo
} > "$work/header.md"
{
	echo "## kubectl get pods -A -o wide (after bring-up)"
	echo
	echo '```'
	cat "$work/pods.txt"
	echo '```'
	echo
	echo "## A pod reaches a Service by name (hack/cluster/smoke.sh)"
	echo
	echo '```'
	cat "$work/smoke.txt"
	echo '```'
} > "$work/trailer.md"
"$bin/conformance-report" -junit "$junit" -suite "$suite" -mode "$MODE" -header "$work/header.md" -trailer "$work/trailer.md" -out "$results/$name.md"
grep -m1 -E '^\*\*[0-9]+ passed' "$results/$name.md"
log "wrote $results/$name.md"
