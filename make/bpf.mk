# CO-RE BPF objects, one per bpf/*.bpf.c, built by the pinned clang against the vmlinux.h fixed in
# the tree (bpf/vmlinux/<arch>/): the same bytes on every machine, whatever its kernel. The objects
# land inside the package so the agent (and a wheel) finds them at run time.

BPF_SRC    := $(wildcard $(ROOT)/bpf/*.bpf.c)
BPF_OUT    := $(ROOT)/bpf/.output
BPF_OBJDIR := $(ROOT)/otel_kafka_ebpf/capture/obj
BPF_OBJS   := $(patsubst $(ROOT)/bpf/%.bpf.c,$(BPF_OBJDIR)/%.bpf.o,$(BPF_SRC))
VMLINUX_BTF ?= /sys/kernel/btf/vmlinux
CLANG      ?= clang-19
BPF_ARCH   := $(shell uname -m | sed -e 's/x86_64/x86/' -e 's/aarch64/arm64/')
VMLINUX_H  := $(ROOT)/bpf/vmlinux/$(BPF_ARCH)/vmlinux.h
# no build path in the object's debug info: the bytes do not depend on where the tree is
BPF_CFLAGS := -g -O2 -target bpf -D__TARGET_ARCH_$(BPF_ARCH) -Wall -Werror -Wno-unused-function \
              -fdebug-prefix-map=$(ROOT)=.

.PHONY: bpf
bpf: $(STAMP)/apt $(BPF_OBJS)

$(VMLINUX_H):
	@echo "no $@: this architecture has no vmlinux.h in the tree; make vmlinux-h on a machine of it" >&2; exit 1

# Regenerate the fixed vmlinux.h from this machine's kernel (a deliberate change, reviewed as one).
.PHONY: vmlinux-h
vmlinux-h: $(STAMP)/apt
	$(Q)mkdir -p $(dir $(VMLINUX_H))
	$(Q){ echo "/* vmlinux.h for $(BPF_ARCH): dumped from Linux $$(uname -r)'s BTF (make vmlinux-h). */"; \
	     bpftool btf dump file $(VMLINUX_BTF) format c; } > $(VMLINUX_H)

$(BPF_OBJDIR)/%.bpf.o: $(ROOT)/bpf/%.bpf.c $(wildcard $(ROOT)/bpf/*.h) $(VMLINUX_H) | $(STAMP)/apt
	$(Q)mkdir -p $(BPF_OBJDIR)
	@echo "  BPF     $@ ($$($(CLANG) --version | head -1))"
	$(Q)$(CLANG) $(BPF_CFLAGS) -I$(dir $(VMLINUX_H)) -I$(ROOT)/bpf -c $< -o $@

.PHONY: bpf-clean
bpf-clean:
	$(Q)rm -rf $(BPF_OUT) $(BPF_OBJDIR)
