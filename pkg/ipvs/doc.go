// Package ipvs is IPVS mode: kube-proxy's layout (the kube-ipvs0 dummy
// interface holding the service IPs, one virtual server per service
// IP:port and per node IP:NodePort, kube-proxy's ipset names) with the
// packet fates of iptables mode.
//
// Data flows one way. Plan (planner.go) turns a watch.Snapshot into a
// State per Service, rendering each port's watch.Decision as virtual
// servers, kube-ipvs0 addresses and ipset members; PlanRules (rules.go)
// renders the same Decision as the few helper iptables rules sets cannot
// express, written by pkg/iptables' Proxier. The Applier (applier.go)
// makes the kernel hold a State: a partial sync touches only the changed
// Services' virtual servers, addresses and members; a full sync reads the
// kernel once and repairs everything of ours; graceful.go drains removed
// TCP real servers. The Proxier (proxier.go) owns full versus partial and
// the lock; Provider adapts it to the sync loop.
//
// The kernel is reached through small interfaces (Kernel: IPVS, Link,
// IPSets, Sysctl) with validating fakes (fake.go, fake_link.go) that
// answer like the kernel and count calls, so tests can check both what is
// written and what it costs.
package ipvs
