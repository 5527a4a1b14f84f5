# The two commands of the README: `make test` and `make demo`. Each sets up what it needs.

TRACEFS := /sys/kernel/tracing

.PHONY: kernel-fs
kernel-fs:  ## tracefs must be mounted for syscall tracepoints to attach
	$(Q)mountpoint -q $(TRACEFS) || mount -t tracefs tracefs $(TRACEFS) 2>/dev/null || \
	  echo "warning: could not mount tracefs at $(TRACEFS) (run as root); the BPF tests will say why"

.PHONY: setup
setup: apt-deps venv bpf kafka-jars workloads kernel-fs

.PHONY: test
test: setup
	$(Q)cd $(ROOT) && $(PY) -m pytest $(PYTEST_ARGS)

.PHONY: demo
demo: setup
	$(Q)cd $(ROOT) && $(PY) -m tests.testbed.demo --port $(KAFKA_PORT)

.PHONY: bench
bench: setup
	$(Q)cd $(ROOT) && for b in bench/bench_*.py; do $(PY) $$b || exit 1; done
