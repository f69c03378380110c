package main

import "svcproxy.dev/svcproxy/pkg/metrics"

func metricsRestoreFailure(fam string) {
	metrics.IPTablesRestoreFailuresTotal.WithLabelValues(fam).Inc()
}

func metricsPartialFailure(fam string) {
	metrics.IPTablesPartialRestoreFailuresTotal.WithLabelValues(fam).Inc()
}
