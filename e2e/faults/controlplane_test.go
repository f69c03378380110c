package faults

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// apiOutage is how long the API server stays stopped (the issue asks for
// 60 s; this is the package's one long wait).
const apiOutage = 60 * time.Second

// relistLimit bounds the wait for the informers to list again after the
// outage (see the comment where it is used).
const relistLimit = 150 * time.Second

// TestAPIServerOutage stops kube-apiserver for 60 s and starts it again.
// Meanwhile traffic keeps flowing on the last rules and /healthz stays 200
// (kube-proxy's semantics: nothing was queued, so nothing is late). During
// the outage a Service's EndpointSlice is changed straight in etcd and etcd's
// history is compacted past the change, so the proxy cannot get it as a
// watch event: only a re-list brings it. Right after the API is back a new
// Service is written through it. Both must go live, through a re-list,
// with at most 2 full rewrites.
func TestAPIServerOutage(t *testing.T) {
	b := newBed(t, "outage", bedOptions{})
	const vip, vip2 = "172.30.44.10", "172.30.44.11"
	ports := []port{{"http", 80}}
	b.backend(backendA, false, 80)
	b.backend(backendB, false, 80)
	b.backend(backendC, false, 80)
	c := b.client(clientIP)
	b.service("web", vip, ports...)
	b.slice("web", "web-1", ports, backendA)
	b.startProxy()
	b.expectBackends(c, vip+":80", 5, backendA)
	cur, err := b.cp.Client.DiscoveryV1().EndpointSlices(b.ns).Get(b.ctx, "web-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	m0 := b.mustMetrics()

	lp := startLoop(c, vip+":80", 100*time.Millisecond)
	health := startPoller(500*time.Millisecond, b.healthz)
	stopped := time.Now()
	if err := b.cp.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	down := true
	t.Cleanup(func() {
		if down {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			if err := b.cp.StartAPIServer(ctx); err != nil {
				t.Errorf("restarting the API server: %v", err)
				stopSharedControlPlane()
			}
		}
	})
	t.Logf("API server stopped")
	if _, err := b.cp.Client.CoreV1().Nodes().Get(b.ctx, b.nodeName, metav1.GetOptions{}); err == nil {
		t.Fatal("the API server still answers")
	}

	time.Sleep(5 * time.Second)
	es := cur.DeepCopy()
	es.TypeMeta = metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice"}
	es.ResourceVersion = ""
	es.Endpoints = []discovery.Endpoint{{Addresses: []string{backendB.String()}, Conditions: discovery.EndpointConditions{Ready: ptr.To(true)}}}
	rev, err := b.cp.EtcdPut(b.ctx, "/registry/endpointslices/"+b.ns+"/web-1", es)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.cp.EtcdCompact(b.ctx, rev); err != nil {
		t.Fatal(err)
	}
	t.Logf("web-1 now points at %s in etcd (revision %d, history compacted)", backendB, rev)

	time.Sleep(time.Until(stopped.Add(apiOutage)))
	if b.proc.Exited() {
		t.Fatalf("proxy exited during the outage: %v", b.proc.Err())
	}
	ctx, cancel := context.WithTimeout(b.ctx, 2*time.Minute)
	defer cancel()
	if err := b.cp.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	down = false
	back := time.Now()
	t.Logf("API server back after %s", back.Sub(stopped).Round(time.Millisecond))

	// A change made right after the API came back.
	b.service("later", vip2, ports...)
	b.slice("later", "later-1", ports, backendC)
	liveLater := b.waitBackend(c, vip2+":80", backendC, relistLimit+30*time.Second)
	liveRelist := b.waitBackend(c, vip+":80", backendB, relistLimit+30*time.Second)
	b.waitSynced(time.Now())
	time.Sleep(time.Second)
	results := lp.Stop()
	hs := health.Stop()
	m1 := b.mustMetrics()

	total, failed, _, _, labels := summarize(results, stopped, back)
	t.Logf("web during the outage: %d connections, %d failed %v", total, failed, labels)
	if failed > 0 {
		t.Errorf("%d of %d connections failed during the API server outage", failed, total)
	}
	totalAll, failedAll, _, _, labelsAll := summarize(results, stopped, time.Now())
	if failedAll > 0 {
		t.Errorf("%d of %d connections failed from the outage to the end: %v", failedAll, totalAll, labelsAll)
	}
	codes := map[int]int{}
	for _, s := range hs {
		codes[s.v]++
	}
	t.Logf("/healthz samples from the outage to the end: %v", codes)
	if codes[200] != len(hs) {
		t.Errorf("/healthz was not 200 throughout: %v", codes)
	}
	full := metric(m1, mFullCount, v4) - metric(m0, mFullCount, v4)
	partial := metric(m1, mPartialCount, v4) - metric(m0, mPartialCount, v4)
	drift := metric(m1, mDrift, v4) - metric(m0, mDrift, v4)
	t.Logf("syncs from the outage to the end: %v full, %v partial; drift repairs +%v", full, partial, drift)
	if full > 2 {
		t.Errorf("%v full rewrites after the API came back, want at most 2", full)
	}
	// Each informer logs "Caches populated" when a list completes: once at
	// start-up, and again for the re-list after the outage.
	relists := b.logLines("Caches populated")
	for _, l := range relists {
		t.Logf("informer list: %s", l)
	}
	if n := len(b.logLines("Caches populated", "EndpointSlice")); n < 2 {
		t.Errorf("the EndpointSlice informer listed %d times, want a re-list after the outage", n)
	}
	// client-go's reflectors retry with a backoff of 0.8 s doubling to 30 s
	// with up to 100 % jitter, so after a 60 s outage the informers may
	// take up to about two minutes to list again (kube-proxy uses the same
	// informers and waits just as long).
	within(t, "change made in etcd during the outage live after the API came back (re-list)", liveRelist.Sub(back), relistLimit)
	within(t, "Service written after the API came back live", liveLater.Sub(back), relistLimit)
	record(t, "API server down %s: web %d/%d ok during the outage, /healthz %v; etcd-only change live %s after the API returned, new Service %s; %v full + %v partial syncs",
		back.Sub(stopped).Round(100*time.Millisecond), total-failed, total, fmtCodes(codes),
		liveRelist.Sub(back).Round(100*time.Millisecond), liveLater.Sub(back).Round(100*time.Millisecond), full, partial)
}

// TestEtcdRestart stops etcd for 10 s under a running API server and starts
// it again on the same data. Traffic keeps flowing, /healthz stays 200, and a
// change written right after is applied without a storm of full rewrites.
func TestEtcdRestart(t *testing.T) {
	b := newBed(t, "etcd", bedOptions{})
	const vip = "172.30.45.10"
	ports := []port{{"http", 80}}
	b.backend(backendA, false, 80)
	b.backend(backendB, false, 80)
	c := b.client(clientIP)
	b.service("web", vip, ports...)
	b.slice("web", "web-1", ports, backendA)
	b.startProxy()
	b.expectBackends(c, vip+":80", 5, backendA)
	time.Sleep(time.Second)
	m0 := b.mustMetrics()

	lp := startLoop(c, vip+":80", 100*time.Millisecond)
	health := startPoller(500*time.Millisecond, b.healthz)
	stopped := time.Now()
	if err := b.cp.StopEtcd(); err != nil {
		t.Fatal(err)
	}
	down := true
	t.Cleanup(func() {
		if down {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			if err := b.cp.StartEtcd(ctx); err != nil {
				t.Errorf("restarting etcd: %v", err)
				stopSharedControlPlane()
			}
		}
	})
	time.Sleep(10 * time.Second)
	ctx, cancel := context.WithTimeout(b.ctx, 2*time.Minute)
	defer cancel()
	if err := b.cp.StartEtcd(ctx); err != nil {
		t.Fatal(err)
	}
	down = false
	back := time.Now()
	t.Logf("etcd back, API server ready, after %s", back.Sub(stopped).Round(time.Millisecond))
	b.slice("web", "web-1", ports, backendB)
	live := b.waitBackend(c, vip+":80", backendB, 2*time.Minute)
	b.waitSynced(time.Now())
	results := lp.Stop()
	hs := health.Stop()
	m1 := b.mustMetrics()

	total, failed, _, _, labels := summarize(results, stopped, time.Now())
	t.Logf("web from the stop to the end: %d connections, %d failed %v", total, failed, labels)
	if failed > 0 {
		t.Errorf("%d of %d connections failed around the etcd restart", failed, total)
	}
	codes := map[int]int{}
	for _, s := range hs {
		codes[s.v]++
	}
	if codes[200] != len(hs) {
		t.Errorf("/healthz was not 200 throughout: %v", codes)
	}
	full := metric(m1, mFullCount, v4) - metric(m0, mFullCount, v4)
	partial := metric(m1, mPartialCount, v4) - metric(m0, mPartialCount, v4)
	if full > 2 {
		t.Errorf("%v full rewrites around the etcd restart, want at most 2", full)
	}
	within(t, "change written after the etcd restart live", live.Sub(back), 30*time.Second)
	record(t, "etcd down %s: web %d/%d ok, /healthz %v; change after restart live in %s; %v full + %v partial syncs",
		back.Sub(stopped).Round(100*time.Millisecond), total-failed, total, fmtCodes(codes), live.Sub(back).Round(100*time.Millisecond), full, partial)
}

func fmtCodes(codes map[int]int) string {
	var parts []string
	for _, c := range []int{200, 503, 0} {
		if codes[c] > 0 {
			parts = append(parts, fmt.Sprintf("%d x%d", c, codes[c]))
		}
	}
	return strings.Join(parts, ", ")
}
