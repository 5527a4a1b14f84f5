# The two commands of the README: `make test` and `make demo`. Each sets up what it needs.

.PHONY: setup
setup: apt-deps venv native bpf loadgen kafka-jars burrow-jars workloads backends kernels

.PHONY: test
test: setup
	$(Q)cd $(ROOT) && $(PY) -m pytest $(PYTEST_ARGS)

.PHONY: demo
demo: setup
	$(Q)cd $(ROOT) && $(PY) -m tests.testbed.demo --port $(KAFKA_PORT)

.PHONY: bench
bench: setup kernels
	$(Q)cd $(ROOT) && for b in bench/bench_*.py; do $(PY) $$b || exit 1; done

# An hour of steady mixed traffic with connection churn under `run` (not part of `make test`);
# SOAK_ARGS="--minutes 10" for a shorter one.
.PHONY: soak
soak: setup
	$(Q)cd $(ROOT) && $(PY) bench/soak.py $(SOAK_ARGS)
