# The compiled hot path (native/: a Rust crate through PyO3), built into the package as
# otel_kafka_ebpf/_core.abi3.so. Crates pinned by native/Cargo.toml and native/Cargo.lock (--locked),
# from crates.io, cached in ~/.cargo. Without it the package runs the pure-Python decoder.
CARGO     ?= $(or $(shell command -v cargo 2>/dev/null),$(wildcard $(HOME)/.cargo/bin/cargo),cargo)
NATIVE    := $(ROOT)/native
NATIVE_SO := $(ROOT)/otel_kafka_ebpf/_core.abi3.so
NATIVE_SRC := $(NATIVE)/Cargo.toml $(NATIVE)/Cargo.lock $(wildcard $(NATIVE)/src/*.rs)

.PHONY: native native-clean
native: $(NATIVE_SO)  ## build the compiled core (needs cargo; the package works without it)

$(NATIVE_SO): $(NATIVE_SRC) | $(VENV)/.installed
	@echo "  CARGO   $(@:$(ROOT)/%=%) ($$($(CARGO) --version))"
	$(Q)cd $(NATIVE) && PYO3_PYTHON=$(PY) $(CARGO) build --release --locked $(if $(filter 1,$(V)),,--quiet)
	$(Q)cp $(NATIVE)/target/release/lib_core.so $@.tmp && mv -f $@.tmp $@

native-clean:
	$(Q)rm -rf $(NATIVE)/target $(NATIVE_SO)
