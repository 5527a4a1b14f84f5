# Benchmark helpers: the Kafka-framed load generator (bench/loadgen.c) the agent benchmarks drive.
BENCH_OUT := $(ROOT)/bench/.output
LOADGEN   := $(BENCH_OUT)/loadgen

.PHONY: loadgen
loadgen: $(LOADGEN)

$(LOADGEN): $(ROOT)/bench/loadgen.c | $(STAMP)/apt
	$(Q)mkdir -p $(BENCH_OUT)
	@echo "  CC      $@"
	$(Q)$(CLANG) -O2 -Wall -Werror -pthread -o $@ $<

bench: loadgen
