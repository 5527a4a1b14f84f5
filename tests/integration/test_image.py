"""The container image of `make image` under podman, run as collector-config/k8s/daemonset.yaml runs it: the
capabilities it lists and no others, the host's pid namespace, /sys/kernel/btf and the cgroup file system
mounted read-only, a read-only root with a tmpfs /tmp. `doctor` passes inside, and `run` exports the spans of
the test bed's clients to a Collector.

Not part of `make test` (the image takes a minute to build, and more on a cold cache): `make image-test` builds it,
installs podman (and runc) and runs this file with OKE_IMAGE set to the image's archive; without it, skipped.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.testbed.agent_cli import AgentCLI
from tests.testbed.backends import wait_until
from tests.workloads import run_workload

IMAGE_TAR = Path(os.environ.get("OKE_IMAGE", ""))  # set by `make image-test`, which builds it first
ROOTLESS = os.geteuid() != 0

pytestmark = [
    pytest.mark.skipif(not os.environ.get("OKE_IMAGE"), reason="the image is tested by `make image-test`"),
    pytest.mark.skipif(not IMAGE_TAR.is_file(), reason=f"no image at {IMAGE_TAR}: `make image` builds it"),
    pytest.mark.skipif(shutil.which("podman") is None, reason="no podman: `make image-test` installs it"),
]
needs_root = pytest.mark.skipif(ROOTLESS, reason="loading BPF programs needs root")

# collector-config/k8s/daemonset.yaml's agent container, in podman's words (securityContext, volumes, limits)
DAEMONSET = (
    "--pid=host", "--user=0", "--cap-drop=ALL",
    *(f"--cap-add={cap}" for cap in ("BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH")),
    "--security-opt=no-new-privileges",  # allowPrivilegeEscalation: false
    "--read-only", "--tmpfs=/tmp:size=64m",
    "--volume=/sys/kernel/btf:/sys/kernel/btf:ro", "--volume=/sys/fs/cgroup:/sys/fs/cgroup:ro",
    "--memory=768m", "--cpus=1",
)
PODMAN_SECCOMP = Path("/usr/share/containers/seccomp.json")
CAP_SYS_RESOURCE = 24


def _cgroup_hybrid() -> bool:
    """cgroup v1 controllers with a v2 hierarchy beside them (/sys/fs/cgroup/unified), as on this machine."""
    with open("/proc/self/mountinfo") as fh:
        return any(line.split(" - ")[1].startswith("cgroup2 ") and line.split()[4] != "/sys/fs/cgroup"
                   for line in fh if " - " in line)


def _host_options() -> list[str]:
    """What this host needs of podman beyond the DaemonSet's settings, each for a reason of the host's."""
    options = []
    if _cgroup_hybrid() and shutil.which("runc"):
        options.append("--runtime=runc")  # crun 1.8 (Debian 12) refuses hybrid cgroup hierarchies; runc takes them
    with open("/proc/self/status") as fh:
        caps = int(next(line for line in fh if line.startswith("CapEff:")).split()[1], 16)
    if not caps >> CAP_SYS_RESOURCE & 1:
        # podman asks the runtime for higher open-file and process limits than a process without
        # CAP_SYS_RESOURCE may set: ask for the ones in force (uid 0 is exempt from RLIMIT_NPROC anyway)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        options += [f"--ulimit=nofile={soft}:{hard}", "--ulimit=nproc=4096:4096"]
    return options


def _seccomp_with_bpf(profile: dict) -> dict:
    """Podman's default seccomp profile, letting CAP_BPF call bpf() and CAP_PERFMON perf_event_open() as the
    RuntimeDefault profile of containerd (the DaemonSet's seccompProfile) does; podman 4.3's allows both only
    with CAP_SYS_ADMIN."""
    cap_for = {"bpf": "CAP_BPF", "perf_event_open": "CAP_PERFMON"}
    rules = []
    for rule in profile["syscalls"]:
        gated = [name for name in rule["names"] if name in cap_for]
        if not gated or rule.get("action") == "SCMP_ACT_ALLOW":
            rules.append(rule)
            continue
        if len(gated) < len(rule["names"]):
            rules.append({**rule, "names": [n for n in rule["names"] if n not in cap_for]})
        for name in gated:  # refused unless one of the capabilities is held, allowed with its own
            excluded = sorted({*rule.get("excludes", {}).get("caps", []), cap_for[name]})
            rules.append({**rule, "names": [name], "excludes": {**rule.get("excludes", {}), "caps": excluded}})
            rules.append({"names": [name], "action": "SCMP_ACT_ALLOW", "includes": {"caps": [cap_for[name]]}})
    return {**profile, "syscalls": rules}


def _podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def run_options(tmp_path_factory) -> list[str]:
    """`podman run` options: the DaemonSet's, and what this host needs."""
    options = [*_host_options(), *DAEMONSET]
    if PODMAN_SECCOMP.exists():
        path = tmp_path_factory.mktemp("seccomp") / "seccomp.json"
        path.write_text(json.dumps(_seccomp_with_bpf(json.loads(PODMAN_SECCOMP.read_text()))))
        options.append(f"--security-opt=seccomp={path}")
    return options


@pytest.fixture(scope="module")
def image() -> str:
    """The image loaded into podman's store: its name as podman reports it."""
    proc = _podman("load", "--quiet", "--input", str(IMAGE_TAR), timeout=300)
    assert proc.returncode == 0, proc.stderr
    names = [line.split(":", 1)[1].strip() for line in proc.stdout.splitlines() if line.startswith("Loaded image")]
    assert names, proc.stdout
    return names[0].split(",")[0].strip()


def test_the_image_is_what_the_daemonset_names(image):
    assert image.endswith("/otel-kafka-ebpf:0.1.0"), image
    info = json.loads(_podman("image", "inspect", image).stdout)[0]
    config = info["Config"]
    assert config["Entrypoint"] == ["/opt/otel-kafka-ebpf/bin/otel-kafka-ebpf"]
    assert config["Cmd"] == ["run"]  # the DaemonSet's `args: ["run"]` replaces it
    assert info["Architecture"] == "amd64" and info["Os"] == "linux"


def test_help_the_core_and_its_bytecode_inside(image):
    host = _host_options()
    proc = _podman("run", "--rm", *host, image, "--help")
    assert proc.returncode == 0 and "doctor" in proc.stdout, proc.stderr
    # read-only root: bytecode that Python finds stale would be compiled again at every start
    proc = _podman("run", "--rm", *host, "--read-only", "--entrypoint=/opt/otel-kafka-ebpf/bin/python", image,
                   "-v", "-c", "import otel_kafka_ebpf.agent, otel_kafka_ebpf.fastpath as f; "
                               "print(f._core is not None, f.CORE_MISSING)")
    assert proc.stdout.split() == ["True", "None"], proc.stdout + proc.stderr
    stale = [line for line in proc.stderr.splitlines() if "bytecode is stale" in line]
    assert not stale, stale[:5]


@needs_root
def test_doctor_passes_as_the_daemonset_runs_it(image, run_options):
    proc = _podman("run", "--rm", *run_options, image, "doctor")
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert any(line.startswith("ok   privileges: CAP_BPF and CAP_PERFMON present") for line in lines), lines
    assert any(line.startswith("ok   BPF load:") for line in lines), lines


class ContainerAgent(AgentCLI):
    """AgentCLI with the agent in the image: `podman run` proxies Ctrl-C (SIGINT) to it and returns its status."""

    def __init__(self, image: str, options: list[str], command: str, *args: str, ready: str, env: dict[str, str]):
        # the pod's network namespace is shared with its Collector; here the test bed's Collector is on loopback
        self.command = ["podman", "run", "--rm", "--network=host", *options,
                        *(f"--env={k}={v}" for k, v in env.items()), image, command, *args]
        self.ready = ready
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out = self.err = ""
        self._err_lines, self._out_chunks, self._readers = [], [], []


@needs_root
@pytest.mark.integration
@pytest.mark.bpf
def test_run_in_the_image_exports_spans_to_a_collector(image, run_options, otel_backends, kafka_broker, topic_factory,
                                                       tmp_path):
    topic = topic_factory(partitions=1)
    run = uuid.uuid4().hex[:6]
    producer, consumer = f"orders-{run}", f"billing-{run}"
    common = dict(messages=20, partitions=1, size=100, linger_ms=5)
    env = {**otel_backends.agent_env(), "OKE_AGENT_HOST_NAME": "node-1"}
    with ContainerAgent(image, run_options, "run", "--kafka-port", str(kafka_broker.port), "--ports-only", ready="exporting",
                        env=env):
        run_workload("kafkapython", kafka_broker.bootstrap, topic, tmp_path / "p.jsonl", mode="produce",
                     env={"OTEL_SERVICE_NAME": producer}, **common)
        run_workload("kafkapython", kafka_broker.bootstrap, topic, tmp_path / "c.jsonl", mode="consume",
                     group=f"{topic}-billing", env={"OTEL_SERVICE_NAME": consumer}, **common)
        jaeger = otel_backends.jaeger
        linked = wait_until(
            lambda: [t for t in jaeger.traces(consumer, lookback=600, limit=100) if producer in t["services"]],
            timeout=30, what=f"a trace with {producer} and {consumer} in Jaeger, from the agent in the image")
    trace = jaeger.trace(linked[0]["trace_id"])
    kinds = {(s["service"], s["kind"]) for s in trace["spans"]}
    assert {(producer, "producer"), (consumer, "consumer")} <= kinds, kinds
