package vm

import "svcproxy.dev/svcproxy/e2e/controlplane"

// APINetwork is the guest's restricted user network: the control plane's
// usual API address (169.254.250.1:6443) lies in it.
const APINetwork = "169.254.250.0/24"

// APIForward lets a guest on APINetwork reach cp's API server at its usual
// address: QEMU hands each guest connection to socat in the control
// plane's network namespace, so the guest needs no link to the host.
func APIForward(cp *controlplane.ControlPlane) Forward {
	return Forward{
		GuestAddr:   cp.APIAddress,
		HostCommand: []string{"ip", "netns", "exec", cp.Netns, "socat", "STDIO", "TCP:" + cp.APIAddress},
	}
}
