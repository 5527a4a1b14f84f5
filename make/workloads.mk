# Client workloads for the tests (tests/workloads/CONTRACT.md): the franz-go binary here, the
# Java jar in make/workload-java.mk; confluent-kafka and kafka-python come with `make venv`.

GO ?= $(or $(shell command -v go 2>/dev/null),$(wildcard /usr/local/go/bin/go),go)
GO_WORKLOAD_DIR := $(ROOT)/tests/workloads/go
GO_WORKLOAD := $(GO_WORKLOAD_DIR)/workload
GO_WORKLOAD_SRC := $(GO_WORKLOAD_DIR)/go.mod $(wildcard $(GO_WORKLOAD_DIR)/go.sum) \
                   $(wildcard $(GO_WORKLOAD_DIR)/*.go)

.PHONY: workloads workload-go
workloads: workload-go workload-java venv

workload-go: $(GO_WORKLOAD)
# Modules come from the Go module proxy, pinned by go.mod/go.sum (-mod=mod: go.sum may be
# completed, never an error on a fresh machine). CGO off: a static binary, no C toolchain needed.
$(GO_WORKLOAD): $(GO_WORKLOAD_SRC)
	$(Q)echo "building $(@:$(ROOT)/%=%)"
	$(Q)cd $(GO_WORKLOAD_DIR) && CGO_ENABLED=0 $(GO) build -mod=mod -buildvcs=false -trimpath -o $@.tmp . && mv -f $@.tmp $@
