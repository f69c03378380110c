# svcproxy: see README.md. `make demo` and `make test` do all set-up on a
# fresh Debian machine with Go installed (apt packages, tool builds, caches).

GO        ?= go
BIN       := $(CURDIR)/bin
CACHE     := $(CURDIR)/.cache
TOOLS_BIN := $(CACHE)/bin
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
MODE      ?= iptables
FILE      ?= $(CURDIR)/../shared/acceptance/examples.yaml
RUN       ?=
PROXY     ?=
STATICCHECK_VERSION := v0.8.2

export SVCPROXY_BIN_DIR := $(TOOLS_BIN)

.PHONY: cluster cluster-down conformance all build deps tools vm test unit e2e acceptance acceptance-examples acceptance-nftables e2e-ipvs demo demo-intro bench bench-vm soak lint clean

all: build

deps:
	@hack/install-deps.sh

# The real control plane (etcd, kube-apiserver) and the reference kube-proxy,
# built from the pinned module in e2e/tools and cached in .cache/bin.
tools:
	@e2e/build-tools.sh

# A Debian kernel with IPVS, booted under QEMU for the IPVS tests (the host
# kernel has no IPVS); cached in .cache/vm.
vm:
	@hack/vm/prepare.sh

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN)/proxy ./cmd/proxy
	$(GO) build -o $(BIN)/acceptance ./e2e/cmd/acceptance
	$(GO) build -o $(BIN)/responder ./e2e/cmd/responder

# Unit tests, then the e2e tests (real kube-apiserver, real kernel rules in
# network namespaces), then the acceptance examples with real packets.
test: deps tools vm build lint unit acceptance-examples acceptance-nftables e2e-ipvs

# Under `make test` the VM is prepared, so a VM test that cannot boot it
# fails instead of skipping quietly.
test: export SVCPROXY_VM := 1
# ... and a test whose prerequisites (root, tools, binaries, the shared
# examples beside the repository) are missing fails instead of skipping.
test: export SVCPROXY_REQUIRE := 1

unit:
	SVCPROXY_PROXY=$(BIN)/proxy $(GO) test -p 1 -count=1 -timeout 30m ./...
	cd bench && $(GO) test -count=1 ./...
	@echo "the tests that read ../shared/acceptance/examples.yaml, by name (a skip would show as SKIP):"
	@out=$$($(GO) test -count=1 -v -run '^(TestTraceScenarios|TestParseExamplesFile)$$' ./pkg/iptables ./e2e/acceptance 2>&1); rc=$$?; \
	echo "$$out" | grep -E '^(--- |ok|FAIL)'; exit $$rc

acceptance: deps tools build
	$(BIN)/acceptance --mode $(MODE) --file $(FILE) $(if $(RUN),--run '$(RUN)') --proxy $(or $(PROXY),$(BIN)/proxy)

# Scenario files of this repository, in the examples' format, that `make
# test` runs in every mode beside the shared examples.
OWN_SCENARIOS := $(CURDIR)/e2e/scenarios/healthcheck.yaml $(CURDIR)/e2e/scenarios/firewall.yaml

# The acceptance examples in iptables mode on the host kernel.
acceptance-examples: deps tools build
	$(BIN)/acceptance --mode iptables --file $(FILE) --proxy $(BIN)/proxy
	@for f in $(OWN_SCENARIOS); do echo "$(BIN)/acceptance --mode iptables --file $$f"; $(BIN)/acceptance --mode iptables --file $$f --proxy $(BIN)/proxy || exit 1; done

# The acceptance examples in nftables mode on the host kernel.
acceptance-nftables: deps tools build
	$(BIN)/acceptance --mode nftables --file $(FILE) --proxy $(BIN)/proxy
	@for f in $(OWN_SCENARIOS); do echo "$(BIN)/acceptance --mode nftables --file $$f"; $(BIN)/acceptance --mode nftables --file $$f --proxy $(BIN)/proxy || exit 1; done

# The acceptance examples in ipvs mode, in the VM (the host kernel has no
# IPVS); `make acceptance MODE=ipvs FILE=...` runs any file there.
e2e-ipvs: deps tools vm build
	$(BIN)/acceptance --mode ipvs --file $(FILE) --proxy $(BIN)/proxy
	@for f in $(OWN_SCENARIOS); do echo "$(BIN)/acceptance --mode ipvs --file $$f"; $(BIN)/acceptance --mode ipvs --file $$f --proxy $(BIN)/proxy || exit 1; done

# The demo: a throwaway control plane, svcproxy in a node namespace, real
# traffic through it, a scale-down and `proxy explain`, each shown as it
# happens (e2e/demo). MODE=ipvs runs it in the QEMU guest.
demo: demo-intro deps tools $(if $(filter ipvs,$(MODE)),vm) build
	$(BIN)/acceptance --mode $(MODE) --file $(CURDIR)/e2e/demo/demo.yaml --proxy $(BIN)/proxy --demo

demo-intro:
	@echo "svcproxy demo ($(MODE) mode). First it installs missing Debian packages and builds etcd, kube-apiserver and the"
	@echo "reference kube-proxy from the pinned k8s.io/kubernetes module into .cache/bin: about 10 minutes the first time on"
	@echo "2 cores, cached afterwards$(if $(filter ipvs,$(MODE)),; MODE=ipvs also prepares a Debian kernel for the QEMU guest in .cache/vm)."

# A real cluster on this machine (hack/cluster, e2e/conformance/README.md):
# control plane, three kubelet nodes with containerd and bridge CNI, CoreDNS
# and the proxy as a DaemonSet, in network namespaces. PROXY=reference runs
# upstream kube-proxy instead of svcproxy; MODE=ipvs runs the nodes in
# the QEMU guest (the host kernel has no IPVS). The first run builds the
# components and images (about 30 minutes on 2 cores).
cluster: deps tools $(if $(filter ipvs,$(MODE)),vm)
	@hack/cluster/build.sh
	@hack/cluster/up.sh $(or $(PROXY),svcproxy) $(MODE)

cluster-down:
	@hack/cluster/down.sh

# The upstream e2e network suites (e2e/conformance/suite.yaml) against a
# fresh cluster: writes e2e/conformance/results/$(MODE)-<proxy>.md and .xml.gz.
conformance: deps tools $(if $(filter ipvs,$(MODE)),vm)
	@hack/cluster/conformance.sh $(MODE) $(or $(PROXY),svcproxy)

# svcproxy vs the reference kube-proxy, side by side on this machine (see
# bench/README.md): writes bench/results/bench.md, bench.json, bench.png.
# BENCH_N="1000 5000" picks the sizes; BENCH_OUT another directory for the
# results; BENCH_QUICK=1 is a N=200 development run into .cache/bench/quick
# (without the go test microbenchmark).
BENCH_OUT ?= $(CURDIR)/bench/results
bench: deps tools build
	@set -e; \
	if [ -n "$(BENCH_QUICK)" ] && [ "$(BENCH_QUICK)" != 0 ]; then out=$(CACHE)/bench/quick; else out='$(BENCH_OUT)'; fi; \
	mkdir -p $$out; \
	(cd bench && $(GO) build -o $(BIN)/bench .); \
	onechange=; \
	if [ -z "$(BENCH_QUICK)" ] || [ "$(BENCH_QUICK)" = 0 ]; then \
	  echo "go test -bench OneEndpointChange ./pkg/iptables/ > $$out/one-change.txt"; \
	  $(GO) test -run '^$$' -bench OneEndpointChange -benchtime 20x ./pkg/iptables/ > $$out/one-change.txt 2>&1 || { cat $$out/one-change.txt; exit 1; }; \
	  cat $$out/one-change.txt; onechange=$$out/one-change.txt; \
	fi; \
	BENCH_N='$(BENCH_N)' BENCH_QUICK='$(BENCH_QUICK)' $(BIN)/bench -out $$out -proxy $(BIN)/proxy -responder $(BIN)/responder -kube-proxy $(TOOLS_BIN)/kube-proxy $${onechange:+-one-change $$onechange}

# Issue #9's load case, a long bench-style run (see bench/README.md; not
# part of `make test`): SOAK_N Services x 10 endpoints, svcproxy in iptables
# mode, SOAK_RATE endpoint changes/s for SOAK_DURATION while memory,
# goroutines, syncs, backlog and programming latency are sampled. Writes
# bench/results/soak.md and soak.json (SOAK_OUT elsewhere).
SOAK_N        ?= 10000
SOAK_RATE     ?= 50
SOAK_DURATION ?= 10m
SOAK_OUT      ?= $(CURDIR)/bench/results
soak: deps tools build
	(cd bench && $(GO) build -o $(BIN)/bench .)
	SOAK_N='$(SOAK_N)' SOAK_RATE='$(SOAK_RATE)' SOAK_DURATION='$(SOAK_DURATION)' $(BIN)/bench -soak -out '$(SOAK_OUT)' -proxy $(BIN)/proxy -responder $(BIN)/responder

# Issue #7's IPVS part (see bench/README.md; not part of `make test`):
# svcproxy in iptables and then ipvs mode in one QEMU guest per N (the host
# kernel has no IPVS), against the host's kube-apiserver; writes
# bench/results/vm.md and vm.json (BENCH_VM_OUT elsewhere). Times are under
# TCG emulation: the ipvs/iptables ratio is the figure. BENCH_VM_FLAGS adds
# bin/bench flags, e.g. "-latency-samples 10 -churn-seconds 10". vm.md
# opens with how each figure grows from the smallest N to the largest.
BENCH_VM_N     ?= 200 1000 2000 5000
BENCH_VM_OUT   ?= $(CURDIR)/bench/results
BENCH_VM_FLAGS ?=
bench-vm: deps tools vm build
	(cd bench && $(GO) build -o $(BIN)/bench .)
	mkdir -p '$(BENCH_VM_OUT)'
	$(BIN)/bench -vm -n '$(BENCH_VM_N)' -out '$(BENCH_VM_OUT)' -proxy $(BIN)/proxy -responder $(BIN)/responder $(BENCH_VM_FLAGS)

lint:
	@test -z "$$(gofmt -l cmd pkg e2e bench)" || (gofmt -l cmd pkg e2e bench; echo "gofmt: files above need formatting"; exit 1)
	$(GO) vet ./...
	cd bench && $(GO) vet ./...
	@test -x $(TOOLS_BIN)/staticcheck || GOBIN=$(TOOLS_BIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	$(TOOLS_BIN)/staticcheck ./...
	cd bench && $(TOOLS_BIN)/staticcheck ./...

clean:
	rm -rf $(BIN)
