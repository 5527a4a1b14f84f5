"""One OpenTelemetry Resource per observed process, encoded once; plus the agent's own resource."""

from __future__ import annotations

from collections.abc import Mapping

from .. import __version__
from ..identity import ProcessDirectory
from ..identity.process import HOST_NAME, PROCESS_PID, SERVICE_NAME
from . import otlp_wire as wire

SCOPE_NAME = "otel-kafka-ebpf"
SCHEMA_URL = "https://opentelemetry.io/schemas/1.37.0"
SCOPE = wire.scope(SCOPE_NAME, __version__)


class ResourceCatalog:
    """pid -> encoded Resource. Node-wide attributes (the agent's OTEL_RESOURCE_ATTRIBUTES, host.name)
    are added to every process's resource; what the process says of itself wins."""

    def __init__(self, processes: ProcessDirectory, node_attributes: Mapping[str, str] | None = None,
                 agent_service_name: str = "otel-kafka-ebpf") -> None:
        self.processes = processes
        self.node_attributes = {k: v for k, v in (node_attributes or {}).items() if k != SERVICE_NAME}
        self._encoded: dict[tuple[int, int], bytes] = {}
        agent = {SERVICE_NAME: agent_service_name, "service.version": __version__,
                 "telemetry.sdk.name": SCOPE_NAME, "telemetry.sdk.language": "python",
                 "telemetry.sdk.version": __version__}
        if processes.host_name:
            agent[HOST_NAME] = processes.host_name
        agent.update(self.node_attributes)
        agent[SERVICE_NAME] = agent_service_name
        self.agent_attributes = agent
        self.agent = wire.resource(agent)

    def _identity(self, pid: int, comm: str | None):
        return self.processes.peek(pid) or self.processes.get(pid, comm)

    def attributes(self, pid: int, comm: str | None = None) -> dict[str, object]:
        attrs = dict(self.node_attributes)
        attrs.update(self._identity(pid, comm).attributes)
        attrs[PROCESS_PID] = pid
        return attrs

    def service_name(self, pid: int) -> str:
        return self._identity(pid, None).service_name

    def encoded(self, pid: int, comm: str | None = None) -> bytes:
        """The encoded Resource of a process (read from /proc at first sight if nobody did before); pid 0 is
        the agent itself."""
        if pid == 0:
            return self.agent
        key = (pid, self._identity(pid, comm).start_time)
        res = self._encoded.get(key)
        if res is None:
            if len(self._encoded) >= 8192:
                self._encoded.clear()
            res = self._encoded[key] = wire.resource(self.attributes(pid, comm))
        return res
