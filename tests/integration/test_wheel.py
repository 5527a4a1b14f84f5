"""The platform wheel of `make wheel`, installed as a user installs it: into a fresh venv, its dependencies from
the wheelhouse make/dist.mk downloads (offline: --no-index), and run from outside the tree.

It must hold the very BPF object the tests and the kernel matrix load (the pinned clang-19's, `make bpf`) and the
compiled core the tests run (`make native`), be tagged for what they are (CPython 3.11+ abi3, manylinux, x86-64),
and work installed: the command line, the core imported from the venv, a recording decoded by the core as by the
Python oracle, and, as root, `doctor` loading the installed object into this kernel.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
OBJECT = "otel_kafka_ebpf/capture/obj/capture.bpf.o"
CORE = "otel_kafka_ebpf/_core.abi3.so"
CACHE = Path(os.environ.get("OKE_CACHE") or Path.home() / ".cache" / "otel-kafka-ebpf")
WHEELHOUSE = CACHE / "wheelhouse"
VECTOR = ROOT / "tests" / "vectors" / "java-plain.rec.gz"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def wheel() -> Path:
    found = sorted((ROOT / "dist").glob(f"otel_kafka_ebpf-{VERSION}-cp311-abi3-manylinux_*_{platform.machine()}.whl"))
    if not found:
        pytest.fail("no wheel in dist/: run `make wheel` (`make test` builds it)")
    assert len(found) == 1, f"more than one wheel of {VERSION} in dist/: {[p.name for p in found]}"
    return found[0]


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A venv with the wheel and its dependencies, nothing else (no access to the tree, no network)."""
    if not (WHEELHOUSE / ".complete").exists():
        pytest.fail(f"no wheelhouse at {WHEELHOUSE}: run `make wheelhouse` (`make test` fetches it)")
    venv = tmp_path_factory.mktemp("wheel") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index",
                           "--find-links", str(WHEELHOUSE), str(wheel)], capture_output=True, text=True, env=_env())
    assert proc.returncode == 0, f"pip install of {wheel.name} failed:\n{proc.stdout}{proc.stderr}"
    return venv


def _env() -> dict[str, str]:
    """This environment without what would reach the tree or another package index."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not k.startswith("PIP_")}


def _run(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True,
                          env=_env(), timeout=60)


def test_the_wheel_is_tagged_for_what_it_holds(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = zf.read(f"otel_kafka_ebpf-{VERSION}.dist-info/WHEEL").decode()
        obj, core = zf.read(OBJECT), zf.read(CORE)
    assert "Root-Is-Purelib: false" in info
    tags = [line.split(": ", 1)[1] for line in info.splitlines() if line.startswith("Tag: ")]
    assert tags and all(t.startswith("cp311-abi3-manylinux_") and t.endswith(platform.machine()) for t in tags), tags
    assert wheel.name.endswith(f"-{tags[0]}.whl")
    # exactly the files the tests run: the pinned compiler's object, the core of `make native`
    assert _sha256(obj) == _sha256((ROOT / OBJECT).read_bytes()), "the wheel's BPF object is stale: make wheel"
    assert _sha256(core) == _sha256((ROOT / CORE).read_bytes()), "the wheel's core is stale: make wheel"
    assert obj[:4] == b"\x7fELF" and obj[18] == 247  # e_machine EM_BPF (little-endian)
    # the package and its metadata only: no tests, benchmarks, sources of the object or the core
    top = {name.split("/", 1)[0] for name in names}
    assert top == {"otel_kafka_ebpf", f"otel_kafka_ebpf-{VERSION}.dist-info"}, top
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".c", ".rs"))]


def test_the_installed_wheel_runs_from_its_venv(installed, tmp_path):
    proc = _run(installed, "otel-kafka-ebpf", "--help", cwd=tmp_path)
    assert proc.returncode == 0 and "doctor" in proc.stdout, proc.stderr
    probe = ("import json, otel_kafka_ebpf, otel_kafka_ebpf.fastpath as f\n"
             "from otel_kafka_ebpf.capture.loader import object_path\n"
             "print(json.dumps({'package': otel_kafka_ebpf.__file__, 'core': getattr(f._core, '__file__', None),"
             " 'missing': f.CORE_MISSING, 'object': object_path('capture')}))")
    proc = _run(installed, "python", "-c", probe, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    where = json.loads(proc.stdout)
    assert where["core"] is not None, where["missing"]
    for key in ("package", "core", "object"):
        assert Path(where[key]).is_relative_to(installed), f"{key} not from the venv: {where[key]}"
    assert _sha256(Path(where["object"]).read_bytes()) == _sha256((ROOT / OBJECT).read_bytes())


def test_the_installed_core_decodes_as_the_oracle(installed, tmp_path):
    """A recorded exchange of the Java client, replayed by the installed agent with each decoder."""
    out = {}
    for decoder in ("core", "python"):
        proc = _run(installed, "otel-kafka-ebpf", "replay", str(VECTOR), "--json", "--decoder", decoder, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        out[decoder] = proc.stdout.splitlines()
    assert len(out["core"]) > 10
    assert out["core"] == out["python"]


@pytest.mark.bpf
@pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")
def test_the_installed_doctor_loads_the_installed_object(installed, tmp_path):
    proc = _run(installed, "otel-kafka-ebpf", "doctor", cwd=tmp_path)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert any(line.startswith("ok   BPF objects: " + str(installed)) for line in lines), lines
    assert any(line.startswith("ok   BPF load:") for line in lines), lines
