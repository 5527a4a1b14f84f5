"""otel-kafka-ebpf: client-side Kafka latency and lag from eBPF, exported over OpenTelemetry."""

__version__ = "0.1.0"
