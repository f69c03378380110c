// Package faults holds svcproxy's end-to-end fault tests (iptables mode on
// the host kernel): the control plane going away, the proxy killed under
// traffic, rules changed behind its back, failing or blocked iptables writes,
// bad API objects and config files, and the security defaults. Every test
// runs a real etcd and kube-apiserver, the real proxy binary and real packets
// between network namespaces it creates (svcp-*); nothing touches the host's
// interfaces. See README.md for what is covered and the measured results.
package faults
