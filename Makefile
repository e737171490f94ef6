# make vmtest   runs the suites in a guest kernel (KERNEL=6.1 by default)
# make test     runs the project's own tests (they boot real kernels too)

KERNEL      ?= 6.1
# Guest architecture of KERNEL (amd64 or arm64; a kernel may also name its
# own: KERNEL=6.12/arm64). Other architectures than the host's run emulated.
ARCH        ?= amd64
GO          ?= go
SUITES      ?= ./suites/skbstore ./suites/tagflow
# Modules the suites need in the guest, loaded with their dependencies.
MODULES     ?= veth
# Two vCPUs: the skb suites need cross-CPU frees (deferred free, NAPI caches).
CPUS        ?= 2
VMTEST_ARGS ?=
TESTFLAGS   ?=
VMTEST      := bin/vmtest
# Kernels the storage benchmark (suites/skbbench) runs on in `make bench`.
BENCH_KERNELS ?= 5.10,6.1,6.12
# Every module of the workspace (go.work): the runner, then what uses it.
PACKAGES    := ./... ./bpf/... ./ci/... ./suites/...

.PHONY: all vmtest vmtest-matrix bench test test-short deps bin/vmtest help

all: help

help:
	@echo "make vmtest [KERNEL=6.1]   run the suites inside a guest kernel (KERNEL: 5.10, 6.1, 6.12, 7.2, 7.3 from"
	@echo "           [ARCH=arm64]    Debian; 5.4, 5.15, 6.6, stable, mainline... from ghcr.io/cilium/ci-kernels);"
	@echo "                           ARCH=arm64 (or KERNEL=6.12/arm64) boots arm64 guests, emulated on x86"
	@echo "make vmtest-matrix         run the suites on every kernel of the matrix (bin/vmtest kernels lists it)"
	@echo "make test                  run the project's tests"
	@echo "make bench                 runner vs a bare boot per kernel, and the per-packet cost of skb-keyed storage"

# QEMU for ARCH, and for arm64 when a kernel names it.
deps:
	@ci/deps.sh $(ARCH) $(if $(findstring arm64,$(KERNEL)),arm64)

# Always rebuilt: go's build cache makes it cheap, and a stale runner lies.
bin/vmtest:
	CGO_ENABLED=0 $(GO) build -o $@ ./vmtest/cmd/vmtest

vmtest: deps bin/vmtest
	$(VMTEST) run -kernel $(KERNEL) -arch $(ARCH) -cpus $(CPUS) -modules '$(MODULES)' $(VMTEST_ARGS) -- go test $(SUITES) $(TESTFLAGS)

vmtest-matrix: bin/vmtest
	@ci/deps.sh amd64 arm64
	$(VMTEST) run -kernel all -cpus $(CPUS) -modules '$(MODULES)' $(VMTEST_ARGS) -- go test $(SUITES) $(TESTFLAGS)

# -count=1: the tests boot kernels; a cached pass proves nothing about today's
# kernels. -p 1: one package at a time, so guests are not starved of CPU.
test:
	@ci/deps.sh amd64 arm64
	bpf/check-generated.sh
	$(GO) vet $(PACKAGES)
	$(GO) test -count=1 -p 1 -timeout 60m $(PACKAGES) $(TESTFLAGS)

# Runner against the floor on every kernel, then workloads against it (46 small packages; the
# suites over every kernel: guest time and per-case fixed cost); the tables also go to
# vmtest-results/bench-runner.md.
# Then the cost of skb-keyed storage (suites/skbbench) on BENCH_KERNELS, one
# guest at a time so that the guests do not measure each other; its tables
# (summary.md of that run) also go to vmtest-results/bench-storage.md.
bench: deps bin/vmtest
	@status=0; \
	$(VMTEST) bench -kernel all -cpus $(CPUS) -workload '$(SUITES)' -workload-modules '$(MODULES)' $(VMTEST_ARGS) || status=$$?; \
	$(VMTEST) run -kernel $(BENCH_KERNELS) -cpus $(CPUS) -modules veth -vms 1 -results vmtest-results $(VMTEST_ARGS) -- go test ./suites/skbbench -count=1 || status=$$?; \
	echo; \
	echo "== skb-keyed storage cost: under software emulation absolute numbers mean little, compare the ratios =="; \
	cat vmtest-results/latest/summary.md; \
	cp vmtest-results/latest/summary.md vmtest-results/bench-storage.md; \
	for f in vmtest-results/latest/*/suites/skbbench/artifacts/skbbench/bench/storage.md; do \
		[ -f "$$f" ] || continue; echo; cat "$$f"; { echo; cat "$$f"; } >> vmtest-results/bench-storage.md; \
	done; \
	echo "storage tables in vmtest-results/bench-storage.md"; \
	exit $$status

test-short:
	$(GO) test -short $(PACKAGES)
