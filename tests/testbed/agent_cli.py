"""The agent's command line in a child process, as a user runs it: started, ready, stopped with Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading


class AgentCLI:
    """`otel-kafka-ebpf <command> <args>`; entering waits for the line it prints once attached."""

    def __init__(self, command: str, *args: str, ready: str, env: dict[str, str] | None = None):
        self.command = [sys.executable, "-m", "otel_kafka_ebpf.cli", command, *args]
        self.ready = ready
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        self.out = self.err = ""
        self._err_lines: list[str] = []
        self._out_chunks: list[str] = []
        self._readers: list[threading.Thread] = []

    def __enter__(self) -> "AgentCLI":
        while True:
            line = self.proc.stderr.readline()
            if not line:
                raise AssertionError(f"{self.command[3]} ended before it was ready:\n" + "".join(self._err_lines)
                                     + self.proc.stderr.read())
            self._err_lines.append(line)
            if self.ready in line:
                break
        # keep reading both pipes so that the agent never blocks on a full one
        for target in (self._read_err, self._read_out):
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self._readers.append(t)
        return self

    def _read_err(self) -> None:
        for line in self.proc.stderr:
            self._err_lines.append(line)

    def _read_out(self) -> None:
        for chunk in iter(lambda: self.proc.stdout.read(1 << 16), ""):
            self._out_chunks.append(chunk)

    @property
    def stderr_so_far(self) -> str:
        return "".join(self._err_lines)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for t in self._readers:
            t.join(10)
        self.out = "".join(self._out_chunks)
        self.err = "".join(self._err_lines)
        return self.proc.returncode

    def __exit__(self, *exc) -> None:
        rc = self.stop()
        if exc[0] is None:
            assert rc == 0, self.err
            assert "Traceback" not in self.err, self.err

    def json_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]
