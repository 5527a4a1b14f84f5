# OpenTelemetry backends for the test bed and for a look by hand: tests/testbed/backends.py.
#   Collector  our build (tests/testbed/otelcol: core v0.165.0, contrib v0.165.1)
#   Jaeger     v1.76.0 (cmd/jaeger, the v2 binary; tests/testbed/jaeger/go.mod)
#   Prometheus Debian's package
# Both Go builds land in $(CACHE)/bin/<name>-<hash of go.mod, go.sum, *.go>: a source change
# builds a new binary, an unchanged tree reuses the cached one (modules from the Go module proxy,
# cached in ~/go/pkg/mod; compiled packages in ~/.cache/go-build).
BACKENDS_OTLP_PORT ?= 4317
BACKENDS_OTLP_HTTP_PORT ?= 4318
JAEGER_PORT ?= 16686
PROMETHEUS_PORT ?= 9090
BACKENDS_PIPELINE ?= agent-gateway.yaml
BACKENDS := $(PY) -m tests.testbed.backends
BACKENDS_RUN_ARGS := --otlp-grpc-port $(BACKENDS_OTLP_PORT)
# The go command of make/workloads.mk (PATH, else /usr/local/go/bin/go).
BACKENDS_ENV = GO="$(GO)"

.PHONY: backends backends-up backends-down backends-status backends-clean
backends: venv $(STAMP)/apt-prometheus  ## build/install the Collector, Jaeger and Prometheus (cached)
	$(Q)cd $(ROOT) && $(BACKENDS_ENV) $(BACKENDS) build >/dev/null

# Installing the package does not start its service here (the image's policy-rc.d forbids it);
# the test bed runs its own instances on free ports either way.
$(STAMP)/apt-prometheus: | $(STAMP)/apt
	$(Q)$(call apt_one,prometheus)
	$(Q)touch $@

backends-up: backends  ## Collector (OTLP 127.0.0.1:$(BACKENDS_OTLP_PORT)), Jaeger, Prometheus in the background
	$(Q)cd $(ROOT) && $(BACKENDS) up $(BACKENDS_RUN_ARGS) --otlp-http-port $(BACKENDS_OTLP_HTTP_PORT) \
	  --jaeger-port $(JAEGER_PORT) --prometheus-port $(PROMETHEUS_PORT) --pipeline $(BACKENDS_PIPELINE)

backends-down: venv  ## stop what backends-up started
	$(Q)cd $(ROOT) && $(BACKENDS) down $(BACKENDS_RUN_ARGS)

backends-status: venv
	$(Q)cd $(ROOT) && $(BACKENDS) status $(BACKENDS_RUN_ARGS)

backends-clean:  ## remove the cached Collector and Jaeger builds
	$(Q)rm -f $(CACHE)/bin/otelcol-oke-* $(CACHE)/bin/jaeger-*
