# Berth: `make demo` and `make test` do all set-up on a fresh Debian 12 machine (as root).
SHELL := /bin/bash
export PATH := /opt/swift/usr/bin:$(PATH)
SWIFT ?= swift
BUILD := .build/debug
RELEASE := .build/release

.PHONY: all deps build check test test-unit test-integration test-network test-resources test-cluster test-debian test-security test-fuzz demo demo-stop bench device-bundle release proto clean-leftovers cluster-up cluster-down

all: build

deps:
	@./scripts/install-deps.sh

# berth-monitor is plain C and must stay free of the Swift runtime (SwiftPM would link it in):
# built here, next to berth-spawn, which execs it (Sources/berth-monitor/main.c).
MONITOR_FLAGS := -O2 -Wall -Wextra -static
# Any C compiler: the Swift toolchain's clang where Debian's is not installed.
MONITOR_CC := $(shell command -v cc || command -v gcc || command -v clang)

# One debug build of every product and test target; every test tier reuses it. Berth's own
# targets are built with warnings as errors (BERTH_STRICT, Package.swift).
build: deps
	BERTH_STRICT=1 $(SWIFT) build --build-tests
	$(MONITOR_CC) $(MONITOR_FLAGS) -o $(BUILD)/berth-monitor Sources/berth-monitor/main.c

# The format, the wire edge rule and a warning-free build (scripts/check.sh); `make test` runs
# it first, on the build it has just made.
check: deps
	@./scripts/check.sh

test: build
	@BERTH_CHECK_BUILD=0 ./scripts/check.sh
	@$(MAKE) --no-print-directory test-unit
	@$(MAKE) --no-print-directory test-fuzz
	@$(MAKE) --no-print-directory test-integration
	@$(MAKE) --no-print-directory test-network
	@$(MAKE) --no-print-directory test-resources
	@$(MAKE) --no-print-directory test-cluster
	@$(MAKE) --no-print-directory test-debian
	@$(MAKE) --no-print-directory test-security

test-unit:
	$(SWIFT) test --skip-build --parallel

# Root + real kernel: boots real VPSs from the debug binaries.
test-integration:
	@BUILD=$(BUILD) ./Tests/integration/run.sh

# Routed and bridged VPS networking in namespaces the test creates (198.18.0.0/15, fd00:b17::/32).
test-network:
	@BUILD=$(BUILD) ./Tests/integration/network.sh

# Limits under attack: memory/fork bombs, disk and inode fills, CPU cap and weights, disk resize.
test-resources:
	@BUILD=$(BUILD) ./Tests/integration/resources.sh

# A controller and three agents in their own network namespaces: placement, IPAM, liveness,
# restarts, the mTLS battery and an independent Python client (Docs/wire.md).
test-cluster:
	@BUILD=$(BUILD) ./Tests/integration/cluster.sh

# Debian 12 VPSs booting their own systemd; the debootstrap tree is cached in
# /var/cache/berth/templates, so only the first run on a machine downloads it.
test-debian:
	@BUILD=$(BUILD) ./Tests/integration/debian.sh

# The in-VPS escape battery of security.md §1 (E01-E38): prints "N/38 blocked"; once against
# image VPSs, once against layered ones (their root an overlay on the shared template).
test-security:
	@BUILD=$(BUILD) ./Tests/security/escape.sh
	@STORAGE=layered BUILD=$(BUILD) ./Tests/security/escape.sh
	@LAYOUT=pool BUILD=$(BUILD) ./Tests/security/escape.sh

# The local multi-node testbed for trying the cluster by hand (Docs/cluster.md).
cluster-up: build
	@BUILD=$(BUILD) ./scripts/dev-cluster.sh up $(or $(NODES),3)

cluster-down:
	@BUILD=$(BUILD) ./scripts/dev-cluster.sh down

# libFuzzer on the frame decoder, bounded in time (see Docs/testing.md).
test-fuzz:
	@./Tests/fuzz/run.sh

demo: build
	@BUILD=$(BUILD) ./scripts/demo.sh

demo-stop:
	@BUILD=$(BUILD) ./scripts/demo.sh stop

# Start/exec/density against crun on the same busybox rootfs, then networking (set-up cost vs
# `ip -batch`, iperf3 vs a bare veth pair, parallel stop), then the cluster (mTLS RPC, scheduler,
# store, heartbeats, exec streaming vs a cat pipe), then Debian boot/stop vs systemd-nspawn, then start with and without
# user namespaces; release build.
bench: deps
	@BERTH_BENCH=1 ./scripts/install-deps.sh
	@$(MAKE) --no-print-directory release
	@BUILD=$(RELEASE) ./Benchmarks/run.sh
	@BUILD=$(RELEASE) ./Benchmarks/network.sh
	@BUILD=$(RELEASE) ./Benchmarks/cluster.sh
	@BUILD=$(RELEASE) ./Benchmarks/migrate.sh
	@BUILD=$(RELEASE) ./Benchmarks/failover.sh
	@BUILD=$(RELEASE) ./Benchmarks/debian.sh
	@BUILD=$(RELEASE) ./Benchmarks/security.sh

# What Tests/device/run.sh needs on a host without Swift (a pure cgroup-v2 machine): static
# release binaries and Debian's tools in .build-device/bundle.tar.xz (Docs/testing.md).
device-bundle: deps
	@$(MAKE) --no-print-directory release PRODUCTS="berth berth-agent berth-spawn"
	@./scripts/device-bundle.sh

# Release builds with the Swift standard library linked in, one product at a time: building
# everything would also link GRDB's dynamic-library product, which cannot take a static one.
PRODUCTS ?= berth berth-agent berth-spawn berth-controller cluster-bench
release:
	@for product in $(PRODUCTS); do \
	  $(SWIFT) build -c release --static-swift-stdlib --product $$product || exit 1; done
	$(MONITOR_CC) $(MONITOR_FLAGS) -o $(RELEASE)/berth-monitor Sources/berth-monitor/main.c

# Regenerates Sources/Wire/berth.pb.swift with Debian's protoc and a locally built plugin.
proto:
	@BERTH_PROTO=1 ./scripts/install-deps.sh
	$(SWIFT) package resolve
	$(SWIFT) build -c release --product protoc-gen-swift --package-path .build/checkouts/swift-protobuf --scratch-path .build-protoc
	protoc --plugin=protoc-gen-swift=.build-protoc/release/protoc-gen-swift --swift_opt=Visibility=Public \
	  --swift_out=Sources/Wire -I Sources/Wire/Protos Sources/Wire/Protos/berth.proto

# Removes what a crashed test run left (its VPS cgroups, mounts, loop devices, processes).
clean-leftovers:
	@./Tests/integration/cleanup.sh
