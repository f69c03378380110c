package iptables

import (
	"crypto/sha256"
	"encoding/base32"
	"strings"

	"svcproxy.dev/svcproxy/pkg/watch"
)

// Chain name prefixes, as kube-proxy uses them.
const (
	prefixSVC = "KUBE-SVC-"
	prefixSVL = "KUBE-SVL-"
	prefixEXT = "KUBE-EXT-"
	prefixFW  = "KUBE-FW-"
	prefixSEP = "KUBE-SEP-"
)

// hash16 returns the first 16 characters of base32(sha256(s)), kube-proxy's
// chain name suffix: the same Service gets the same chain names in both
// proxies, so a node can switch in place.
func hash16(s string) string {
	sum := sha256.Sum256([]byte(s))
	return base32.StdEncoding.EncodeToString(sum[:])[:16]
}

func protoLower(p *watch.ServicePort) string { return strings.ToLower(string(p.Protocol)) }

func portChain(prefix string, p *watch.ServicePort) string {
	return prefix + hash16(p.Name.String()+protoLower(p))
}

func endpointChain(p *watch.ServicePort, ep *watch.Endpoint) string {
	return prefixSEP + hash16(p.Name.String()+protoLower(p)+ep.String())
}

// IsServiceChain reports whether a chain name is one of the per-Service
// families this proxy owns.
func IsServiceChain(name string) bool {
	for _, p := range []string{prefixSVC, prefixSVL, prefixEXT, prefixFW, prefixSEP} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}
