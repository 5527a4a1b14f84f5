"""Process identity: service names, container and pod ids, Kubernetes names, read from real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from otel_kafka_ebpf.identity import ProcessDirectory, read_process_identity
from otel_kafka_ebpf.identity.cgroup import parse_proc_cgroup
from otel_kafka_ebpf.identity.process import parse_resource_attributes, program_name, workload_name

CID = "3f6a1b2c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8"
UID = "6b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"


@pytest.mark.parametrize("cgroup, container, pod", [
    (f"0::/system.slice/docker-{CID}.scope", CID, None),
    (f"12:memory:/docker/{CID}\n0::/docker/{CID}", CID, None),
    (f"0::/kubepods/besteffort/pod{UID}/{CID}", CID, UID),
    (f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}.slice/"
     f"cri-containerd-{CID}.scope", CID, UID),
    (f"0::/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/crio-{CID}.scope", CID, UID),
    (f"0::/machine.slice/libpod-{CID}.scope/container", CID, None),
    (f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope", CID, None),
    ("0::/user.slice/user-0.slice/session-3.scope", None, None),
    ("0::/", None, None),
    ("", None, None),
])
def test_container_and_pod_ids_from_cgroup_paths(cgroup, container, pod):
    facts = parse_proc_cgroup(cgroup)
    assert (facts.container_id, facts.pod_uid) == (container, pod)


@pytest.mark.parametrize("argv, exe, expected", [
    (["java", "-Xmx1g", "-cp", "a.jar:b.jar", "com.example.orders.OrderService", "--port", "1"], "java",
     ("java", "com.example.orders.OrderService")),
    (["/usr/bin/java", "-jar", "/opt/app/billing-2.1.jar"], "java", ("java", "billing-2.1.jar")),
    (["java", "--module-path", "mods", "-m", "app/org.acme.Main"], "java", ("java", "org.acme.Main")),
    (["python3", "-u", "/srv/consumer.py", "--fast"], "python3.11", ("python", "/srv/consumer.py")),
    (["python", "-m", "celery", "worker"], "python3.11", ("python", "celery")),
    (["python3", "-c", "print(1)"], "python3.11", ("python", None)),
    (["node", "--require", "x", "/app/server/index.js"], "node", ("node", "/app/server/index.js")),
    (["./orders-svc", "--x"], "orders-svc", (None, None)),
])
def test_program_behind_an_interpreter(argv, exe, expected):
    assert program_name(argv, exe) == expected


def test_workload_names_from_pod_names():
    assert workload_name("orders-7d9f8b6c5d-x2k9p") == "orders"
    assert workload_name("kafka-2") == "kafka"
    assert workload_name("node-agent-7xk2q") == "node-agent"
    assert workload_name("standalone") == "standalone"


def test_resource_attributes_syntax():
    assert parse_resource_attributes("service.name=a%20b, deployment.environment=prod,bad,=x") == \
        {"service.name": "a b", "deployment.environment": "prod"}


def _child(env: dict, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, *args], env={**os.environ, **env}, stdout=subprocess.PIPE)
    assert proc.stdout.readline()  # it has started and printed
    return proc


SCRIPT = "import sys, time; print('up', flush=True); time.sleep(30)"


def test_service_name_from_the_process_own_environment(tmp_path):
    script = tmp_path / "payments_worker.py"
    script.write_text(SCRIPT)
    procs = [
        _child({"OTEL_SERVICE_NAME": "checkout"}, str(script)),
        _child({"OTEL_RESOURCE_ATTRIBUTES": "service.name=billing,team=core"}, str(script)),
        _child({}, str(script)),
    ]
    try:
        ids = [read_process_identity(p.pid, host_name="node-1") for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert [i.service_name for i in ids] == ["checkout", "billing", "payments_worker"]
    assert ids[1].attributes["team"] == "core"
    for proc, ident in zip(procs, ids):
        a = ident.attributes
        assert a["process.pid"] == proc.pid and a["host.name"] == "node-1"
        assert a["process.executable.name"].startswith("python") and a["process.runtime.name"] == "python"
        assert "process.command_args" not in a  # opt-in only


def test_command_args_are_opt_in_and_a_gone_process_keeps_what_the_capture_knew(tmp_path):
    proc = _child({}, "-c", SCRIPT)
    ident = read_process_identity(proc.pid, command_args=True)
    proc.kill()
    proc.wait()
    assert ident.attributes["process.command_args"][1:3] == ["-c", SCRIPT]
    gone = read_process_identity(proc.pid, comm="worker")
    assert gone.exited and gone.service_name == "unknown_service:worker"


def test_directory_reads_once_and_again_for_a_reused_pid(tmp_path):
    directory = ProcessDirectory()
    proc = _child({"OTEL_SERVICE_NAME": "one"}, "-c", SCRIPT)
    try:
        first = directory.get(proc.pid)
        assert directory.get(proc.pid) is first and directory.reads == 1
    finally:
        proc.kill()
        proc.wait()
    time.sleep(0.05)
    replay = ProcessDirectory(read_proc=False)
    assert replay.get(os.getpid(), "python").exited  # a replay never reads this host's /proc
