package main

import (
	"github.com/coreos/go-systemd/v22/daemon"
	"k8s.io/klog/v2"
)

// exitConfigError is the exit status for a configuration that does not
// load: sysexits.h's EX_CONFIG. config/svcproxy.service names it in
// RestartPreventExitStatus, so systemd shows a bad config file as a failed
// unit instead of retrying it every few seconds, while every other failure
// (the API server not reachable yet, a crash) is still retried.
const exitConfigError = 78

// notifyReady tells systemd that start-up got past the configuration and
// the client (config/svcproxy.service is Type=notify, so `systemctl start`
// waits for this and fails when the process exits first). Outside systemd,
// or in a unit of another type, it does nothing.
func notifyReady(status string) {
	if _, err := daemon.SdNotify(false, daemon.SdNotifyReady+"\nSTATUS="+status); err != nil {
		klog.ErrorS(err, "Telling systemd the proxy is ready")
	}
}

// notifyStatus updates the status line `systemctl status` shows.
func notifyStatus(status string) {
	if _, err := daemon.SdNotify(false, "STATUS="+status); err != nil {
		klog.V(2).InfoS("Telling systemd the proxy's status", "err", err)
	}
}
