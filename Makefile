# otel-kafka-ebpf: `make demo` and `make test` are the two commands a user needs.
# Everything else here is a step they depend on; each step is idempotent.

.DELETE_ON_ERROR:
.DEFAULT_GOAL := help
SHELL := /bin/bash

ROOT     := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
VENV     ?= $(ROOT)/.venv
PY       := $(VENV)/bin/python
CACHE    ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/otel-kafka-ebpf
export OKE_CACHE := $(CACHE)

ifeq ($(V),1)
Q :=
else
Q := @
endif

# Debian packages the build and the tests need (installed only when missing). The BPF compiler is
# pinned (clang-19, Debian bookworm's 1:19.1.x): the object is built the same way on every machine.
APT_PACKAGES := clang-19 llvm-19 libbpf-dev libbpf1 bpftool make tshark kcat iproute2 openjdk-17-jdk-headless maven openssl
STAMP := $(CACHE)/stamps

.PHONY: help
help:
	@echo "make demo    - set up, start a local Kafka, demo clients and the agent (Ctrl-C stops all)"
	@echo "make test    - set up and run the whole test suite"
	@echo "make bpf     - build the CO-RE BPF objects"
	@echo "make bench   - benchmarks (figures and ratios in bench/results)"
	@echo "make native  - build the compiled core (otel_kafka_ebpf/_core.abi3.so; the package runs without it)"
	@echo "make kernels - fetch the kernel matrix's Debian kernels for QEMU (cached)"
	@echo "make wheel   - the platform wheel in dist/ (BPF object + compiled core)"
	@echo "make image   - the OCI image build/otel-kafka-ebpf-oci.tar (make image-test: run it under podman)"
	@echo "make soak    - an hour of steady traffic under the agent: RSS, CPU, fds, maps, loss (SOAK_ARGS=--minutes N)"
	@echo "make kafka-up / kafka-down - start / stop a local single-node Kafka on 127.0.0.1:9092"
	@echo "               (KAFKA_BROKERS=3: a 3-broker KRaft cluster on 9092-9094)"

include $(sort $(wildcard $(ROOT)/make/*.mk))

# $(call apt_one,PKG): a recipe line installing one Debian package behind its own stamp (a package
# only some targets need), unless it is there.
apt_one = dpkg -s $(1) >/dev/null 2>&1 || { \
	  echo "installing Debian package: $(1)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $(1) >/dev/null; }

.PHONY: apt-deps
apt-deps: $(STAMP)/apt
$(STAMP)/apt: $(ROOT)/Makefile
	$(Q)mkdir -p $(STAMP)
	$(Q)missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	$(Q)touch $@

.PHONY: venv
venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(Q)test -x $(PY) || python3 -m venv $(VENV)
	$(Q)$(PY) -m pip install -q --upgrade pip
	$(Q)$(PY) -m pip install -q -e '.[test]'
	$(Q)touch $@
