"""What pyproject.toml cannot say: the wheel carries compiled files that setuptools does not build itself, the
BPF object of `make bpf` (x86-64 syscall numbers inside) and the PyO3 core of `make native` (abi3, CPython 3.11+).
So the wheel is a platform wheel, cp311-abi3-linux_<arch>, which make/dist.mk hands to auditwheel for its
manylinux tag; without this it would be tagged py3-none-any and install anywhere."""

from setuptools import setup
from setuptools.dist import Distribution


class PrebuiltBinaryDistribution(Distribution):
    def has_ext_modules(self) -> bool:
        return True


setup(
    distclass=PrebuiltBinaryDistribution,
    options={
        "bdist_wheel": {"py_limited_api": "cp311"},
        # its own directory under build/ (make wheel empties it first: nothing stale gets into a wheel)
        "build": {"build_base": "build/setuptools"},
    },
)
