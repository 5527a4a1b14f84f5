# CO-RE BPF objects: vmlinux.h from the running kernel's BTF, one object per bpf/*.bpf.c.
# The objects land inside the package so the agent (and a wheel) finds them at run time.

BPF_SRC    := $(wildcard $(ROOT)/bpf/*.bpf.c)
BPF_OUT    := $(ROOT)/bpf/.output
BPF_OBJDIR := $(ROOT)/otel_kafka_ebpf/capture/obj
BPF_OBJS   := $(patsubst $(ROOT)/bpf/%.bpf.c,$(BPF_OBJDIR)/%.bpf.o,$(BPF_SRC))
VMLINUX_BTF ?= /sys/kernel/btf/vmlinux
CLANG      ?= clang
BPF_ARCH   := $(shell uname -m | sed -e 's/x86_64/x86/' -e 's/aarch64/arm64/')
BPF_CFLAGS := -g -O2 -target bpf -D__TARGET_ARCH_$(BPF_ARCH) -Wall -Werror -Wno-unused-function

.PHONY: bpf
bpf: $(STAMP)/apt $(BPF_OBJS)

$(BPF_OUT)/vmlinux.h: | $(STAMP)/apt
	$(Q)mkdir -p $(BPF_OUT)
	@echo "  BTF     $@"
	$(Q)bpftool btf dump file $(VMLINUX_BTF) format c > $@

$(BPF_OBJDIR)/%.bpf.o: $(ROOT)/bpf/%.bpf.c $(wildcard $(ROOT)/bpf/*.h) $(BPF_OUT)/vmlinux.h
	$(Q)mkdir -p $(BPF_OBJDIR)
	@echo "  BPF     $@"
	$(Q)$(CLANG) $(BPF_CFLAGS) -I$(BPF_OUT) -I$(ROOT)/bpf -c $< -o $@

.PHONY: bpf-clean
bpf-clean:
	$(Q)rm -rf $(BPF_OUT) $(BPF_OBJDIR)
