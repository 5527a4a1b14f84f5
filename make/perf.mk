# Benchmark helpers (after bpf.mk, whose variables they use): the Kafka-framed load generator
# (bench/loadgen.c) the agent benchmarks drive, and BPF objects that measure the pieces of the
# capture's cost (bench/bpf/*.bpf.c).
BENCH_OUT := $(ROOT)/bench/.output
LOADGEN   := $(BENCH_OUT)/loadgen
BENCH_BPF_OBJS := $(patsubst $(ROOT)/bench/bpf/%.bpf.c,$(BENCH_OUT)/%.bpf.o,$(wildcard $(ROOT)/bench/bpf/*.bpf.c))

.PHONY: loadgen bench-bpf
loadgen: $(LOADGEN)
bench-bpf: $(BENCH_BPF_OBJS)

$(LOADGEN): $(ROOT)/bench/loadgen.c | $(STAMP)/apt
	$(Q)mkdir -p $(BENCH_OUT)
	@echo "  CC      $@"
	$(Q)$(CLANG) -O2 -Wall -Werror -pthread -o $@ $<

$(BENCH_OUT)/%.bpf.o: $(ROOT)/bench/bpf/%.bpf.c $(BPF_OUT)/vmlinux.h
	$(Q)mkdir -p $(BENCH_OUT)
	@echo "  BPF     $@"
	$(Q)$(CLANG) $(BPF_CFLAGS) -I$(BPF_OUT) -c $< -o $@

bench: loadgen bench-bpf
