#!/usr/bin/env bash
# A pod resolves a Service by name through CoreDNS (the kube-dns ClusterIP)
# and reaches it: the proxy's first job on a real cluster. Prints what it
# ran and saw; fails if the name does not resolve or the Service does not
# answer from a pod behind it.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ns=svck-smoke
kc create namespace "$ns" >/dev/null
trap 'kc delete namespace "$ns" --wait=false >/dev/null 2>&1 || true' EXIT
kc -n "$ns" create deployment web --image="$AGNHOST_IMAGE" --replicas=2 -- /agnhost netexec --http-port=8080 >/dev/null
kc -n "$ns" expose deployment web --port=80 --target-port=8080 >/dev/null
kc -n "$ns" rollout status deployment web --timeout=120s >/dev/null
script='set -e
echo "$ cat /etc/resolv.conf"; cat /etc/resolv.conf
echo "$ dig +short web.svck-smoke.svc.cluster.local"; dig +short web.svck-smoke.svc.cluster.local
# The proxy programs a new Service within its minSyncPeriod (1s here):
# wait for the first answer, then ask four times.
for i in $(seq 30); do curl -sS --max-time 2 http://web/hostname >/dev/null 2>&1 && break; sleep 1; done
echo "(first answer after $i tries)"
echo "$ curl -sS http://web/hostname  (x4)"
for i in 1 2 3 4; do curl -sS --max-time 5 http://web/hostname; echo; done'
kc -n "$ns" run client --image="$AGNHOST_IMAGE" --restart=Never --command -- bash -c "$script" >/dev/null
client_done() { [[ $(kc -n "$ns" get pod client -o jsonpath='{.status.phase}') =~ ^(Succeeded|Failed)$ ]]; }
wait_for "the smoke client pod to finish" 120 client_done
out=$(kc -n "$ns" logs client)
phase=$(kc -n "$ns" get pod client -o jsonpath='{.status.phase}')
svc_ip=$(kc -n "$ns" get service web -o jsonpath='{.spec.clusterIP}')
pods=$(kc -n "$ns" get pods -l app=web -o jsonpath='{.items[*].metadata.name}')
echo "Service $ns/web: ClusterIP $svc_ip, pods: $pods"
echo "client pod ($phase):"
echo "$out" | sed 's/^/    /'
[[ $phase == Succeeded ]] || die "smoke: the client pod failed"
grep -qx "$svc_ip" <<<"$out" || die "smoke: web.$ns did not resolve to $svc_ip"
for p in $pods; do
	grep -qx "$p" <<<"$out" && return_ok=1
done
[[ ${return_ok:-} == 1 ]] || die "smoke: no answer came from a pod of the Service"
