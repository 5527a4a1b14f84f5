# The kernel matrix (tests/kernels/matrix.py, tests/kernels/test_kernel_matrix.py): QEMU, a static
# busybox, and the newest Debian 6.1 (bookworm), 6.12 (trixie) and sid kernels, fetched with
# `apt-get download` under a private apt configuration (the host's sources stay as they are) into
# $(CACHE)/kernels, each with its initramfs. The package index is refreshed once a day; a new ABI in
# it fetches the new kernel (and drops the old packages); otherwise this takes a tenth of a second.
KERNELS := $(PY) -m tests.kernels.matrix

.PHONY: kernels kernels-clean
kernels: venv $(STAMP)/apt-kernels  ## fetch the matrix's kernels, build their initramfs (cached)
	$(Q)cd $(ROOT) && $(KERNELS) prepare >/dev/null

$(STAMP)/apt-kernels: | $(STAMP)/apt
	$(Q)$(call apt_one,qemu-system-x86)
	$(Q)$(call apt_one,busybox-static)
	$(Q)touch $@

kernels-clean:  ## remove the fetched kernels and their package index
	$(Q)rm -rf $(CACHE)/kernels
