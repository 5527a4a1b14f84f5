"""`otel-kafka-ebpf settings` prints the settings in force as TOML that the agent reads back unchanged,
and the README documents every setting."""

from __future__ import annotations

import re
from pathlib import Path

from otel_kafka_ebpf.config import _TABLES, describe, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_printed_settings_read_back_the_same(tmp_path):
    cfg = load_config(None, {"capture": {"kafka_ports": [9092, 9093], "cgroup": "/sys/fs/cgroup/x"}}, environ={
        "OTEL_EXPORTER_OTLP_HEADERS": "a=b%22c,d=e", "OTEL_TRACES_SAMPLER": "traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25", "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod"})
    path = tmp_path / "agent.toml"
    path.write_text(describe(cfg))
    again = load_config(str(path), None, environ={})
    assert again == cfg


def test_readme_names_every_setting():
    readme = (ROOT / "README.md").read_text()
    missing = [f"{table}.{name}" for table, model in _TABLES.items() for name in model.model_fields
               if not re.search(rf"`{name}`", readme)]
    assert not missing, f"README does not document: {missing}"
