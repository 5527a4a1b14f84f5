"""Who a process is: /proc and cgroup facts -> OpenTelemetry resource attributes (plain data, no OTel)."""

from .process import ProcessDirectory, ProcessIdentity, read_process_identity

__all__ = ["ProcessDirectory", "ProcessIdentity", "read_process_identity"]
