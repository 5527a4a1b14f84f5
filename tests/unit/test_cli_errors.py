"""User mistakes end in one line on stderr and a non-zero exit, never a traceback: flags, environment variables,
config files of every shape, exporter settings. Each through the real command line, in a child process."""

import os
import subprocess
import sys

import pytest

from otel_kafka_ebpf.capture.events import MAX_PIDS

# The live commands get as far as their settings and stop there: none of these may load BPF.
NO_OTEL = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OKE_"))}


def _run(*args, env=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "otel_kafka_ebpf.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**NO_OTEL, **(env or {})})


def _one_line(r, expect: str, code: int = 1) -> None:
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("otel-kafka-ebpf: ") and expect in lines[0], r.stderr


@pytest.mark.parametrize("args, expect", [
    (["replay", "/nonexistent.okr"], "no such recording file"),
    (["replay", "/etc/hostname"], "not a recording file"),
    (["replay", "/tmp"], "is a directory"),
    (["trace", "--kafka-port", "70000"], "not a TCP port: 70000"),
    (["record", "--out", "/tmp/x.okr", "--frame-budget", "1"], "frame_budget"),
    (["trace", "--config", "/nonexistent.toml"], "no such config file"),
    (["trace", "--config", "/tmp"], "is a directory"),
    (["trace", "--ringbuf-mb", "-5"], "capture.ringbuf_mb (set by --ringbuf-mb): Input should be greater than or equal to 1"),
    (["trace", "--ringbuf-mb", "99999999999999999999999"], "less than or equal to 4096"),
    (["trace", "--frame-budget", str(1 << 40)], "less than or equal to 1073741824"),
    (["trace", "--capture-pid", "0"], "not a process id: 0"),
    (["trace", "--capture-pid", "99999999999"], "not a process id: 99999999999"),
    (["trace", "--kafka-port", "0"], "not a TCP port: 0"),
])
def test_one_line_errors(args, expect):
    _one_line(_run(*args), expect)


@pytest.mark.skipif(os.geteuid() != 0, reason="without privileges the live commands stop at the privileges check")
@pytest.mark.parametrize("args, expect", [
    (["trace", "--cgroup", "/nonexistent/cgroup"], "cgroup /nonexistent/cgroup"),
    (["record", "--out", "/nonexistent/dir/x.okr"], "/nonexistent/dir/x.okr: No such file or directory"),
    (["record", "--out", "/tmp"], "/tmp: Is a directory"),
    (["run", "--exporter", "none", "--record", "/nonexistent/dir/x.okr"], "No such file or directory"),
])
def test_one_line_errors_past_the_privileges_check(args, expect):
    _one_line(_run(*args), expect)


@pytest.mark.parametrize("args, expect", [
    (["trace", "--duration", "nan"], "'nan' is not a number of seconds above 0"),
    (["trace", "--duration", "inf"], "'inf' is not a number of seconds above 0"),
    (["trace", "--duration", "-1"], "'-1' is not a number of seconds above 0"),
    (["trace", "--duration", "0"], "'0' is not a number of seconds above 0"),
    (["trace", "--duration", "abc"], "'abc' is not a number of seconds"),
    (["record", "--out", "/tmp/x.okr", "--duration", "1e999"], "is not a number of seconds above 0"),
    (["run", "--status-interval", "-1"], "'-1' is not a number of seconds above 0"),
    (["run", "--status-interval", "nan"], "'nan' is not a number of seconds above 0"),
    (["trace", "--frame-budget", "1e3"], "invalid int value: '1e3'"),
    (["trace", "--api", "nosuchapi"], "unknown Kafka API"),
    (["run", "--exporter", "zipkin"], "invalid choice: 'zipkin'"),
    (["trace", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["no-such-command"], "invalid choice: 'no-such-command'"),
    (["record"], "the following arguments are required: --out"),
])
def test_a_command_line_not_understood_is_one_line_and_exit_2(args, expect):
    _one_line(_run(*args), expect, code=2)


@pytest.mark.parametrize("env, expect", [
    ({"OKE_CAPTURE_RINGBUF_MB": "abc"}, "capture.ringbuf_mb (set by OKE_CAPTURE_RINGBUF_MB): Input should be a valid "
                                        "integer"),
    ({"OKE_CAPTURE_FRAME_BUDGET": "nan"}, "capture.frame_budget (set by OKE_CAPTURE_FRAME_BUDGET)"),
    ({"OKE_CAPTURE_PIDS": "1,x"}, "capture.pids.1 (set by OKE_CAPTURE_PIDS)"),
    ({"OKE_CAPTURE_PIDS": ",".join(map(str, range(1, MAX_PIDS + 2)))}, f"at most {MAX_PIDS} processes"),
    ({"OKE_CAPTURE_KAFKA_PORTS": "9092 -1"}, "not a TCP port: -1"),
    ({"OKE_CAPTURE_PORTS_ONLY": "maybe"}, "capture.ports_only (set by OKE_CAPTURE_PORTS_ONLY)"),
    ({"OKE_EXPORTER_TYPE": "zipkin"}, "exporter.type (set by OKE_EXPORTER_TYPE): 'zipkin' is not one of"),
    ({"OKE_EXPORTER_HEADERS": "novalue"}, "OKE_EXPORTER_HEADERS: 'novalue' is not key=value"),
    ({"OKE_AGENT_RESOLVE_WAIT_S": "inf"}, "agent.resolve_wait_s (set by OKE_AGENT_RESOLVE_WAIT_S): Input should be "
                                          "a finite number"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://collector"}, "scheme must be http or https"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:99999"}, "not a valid port"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://[::1"}, "exporter.endpoint (set by OTEL_EXPORTER_OTLP_ENDPOINT)"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "(set by OTEL_EXPORTER_OTLP_PROTOCOL): 'http/json' is not a "
                                                   "protocol this agent speaks"),
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, "(set by OTEL_TRACES_EXPORTER): 'zipkin' is not an exporter"),
    ({"OTEL_TRACES_SAMPLER": "sometimes"}, "unknown sampler 'sometimes'"),
    ({"OTEL_TRACES_SAMPLER_ARG": "abc"}, "spans.sampler_arg (set by OTEL_TRACES_SAMPLER_ARG): 'abc' is not a "
                                         "number between 0 and 1"),
    ({"OTEL_TRACES_SAMPLER_ARG": "1.5"}, "'1.5' is not a number between 0 and 1"),
    ({"OTEL_TRACES_SAMPLER_ARG": "nan"}, "'nan' is not a number between 0 and 1"),
    ({"OTEL_EXPORTER_OTLP_HEADERS": "abc"}, "OTEL_EXPORTER_OTLP_HEADERS: 'abc' is not key=value"),
    ({"OTEL_RESOURCE_ATTRIBUTES": "=x"}, "OTEL_RESOURCE_ATTRIBUTES: '=x' is not key=value"),
    ({"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"}, "exporter.timeout_s (set by OTEL_EXPORTER_OTLP_TIMEOUT)"),
    ({"OTEL_EXPORTER_OTLP_TIMEOUT": "-5"}, "exporter.timeout_s (set by OTEL_EXPORTER_OTLP_TIMEOUT)"),
    ({"OTEL_BSP_MAX_QUEUE_SIZE": "0"}, "exporter.max_queue_spans (set by OTEL_BSP_MAX_QUEUE_SIZE)"),
    ({"OTEL_METRIC_EXPORT_INTERVAL": "1e9999"}, "metrics.export_interval_ms (set by OTEL_METRIC_EXPORT_INTERVAL)"),
    ({"OTEL_EXPORTER_OTLP_COMPRESSION": "brotli"}, "exporter.compression (set by OTEL_EXPORTER_OTLP_COMPRESSION)"),
    ({"OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent.pem"}, "/nonexistent.pem: no such file"),
    ({"OTEL_EXPORTER_OTLP_CERTIFICATE": "/tmp"}, "/tmp: not a file"),
    ({"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": "/etc/hostname"}, "client_certificate and client_key go together"),
    ({"OTEL_SERVICE_NAME": "x", "OKE_AGENT_SERVICE_NAME": "y", "OKE_AGENT_GROUP_WAIT_S": "-1"},
     "agent.group_wait_s (set by OKE_AGENT_GROUP_WAIT_S)"),
])
def test_environment_variables(env, expect):
    _one_line(_run("run", env=env), expect)


def test_an_oke_variable_wins_over_a_bad_otel_twin():
    """OTEL_ variables are shared with other programs: one this agent cannot use is fine when OKE_ overrides it."""
    r = _run("run", "--duration", "0.1", env={"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json", "OKE_EXPORTER_TYPE": "none",
                                              "OKE_CAPTURE_RINGBUF_MB": "abc"})
    _one_line(r, "capture.ringbuf_mb (set by OKE_CAPTURE_RINGBUF_MB)")  # got past the exporter type


def test_an_empty_variable_is_unset():
    r = _run("trace", env={"OKE_CAPTURE_RINGBUF_MB": "", "OKE_CAPTURE_FRAME_BUDGET": "12"})
    _one_line(r, "capture.frame_budget (set by OKE_CAPTURE_FRAME_BUDGET)")


# Every shape a TOML file can give where a table or a value is expected.
CONFIGS = {
    "table is a string": ('capture = "x"', "[capture] must be a table of settings, not str"),
    "table is a number": ("capture = 5", "[capture] must be a table of settings, not int"),
    "table is a boolean": ("exporter = true", "[exporter] must be a table of settings, not bool"),
    "table is a list": ("capture = [1, 2]", "[capture] must be a table of settings, not list"),
    "table is a date": ("spans = 1979-05-27", "[spans] must be a table of settings, not date"),
    "array of tables": ("[[capture]]\nframe_budget = 4096", "[capture] must be a table of settings, not list"),
    "unknown table": ("[captur]\nframe_budget = 4096", "unknown table [captur]"),
    "unknown top-level value": ("frame_budget = 4096", "unknown table [frame_budget]"),
    "unknown setting": ("[capture]\nframe_bugdet = 4096", "capture.frame_bugdet: Extra inputs are not permitted"),
    "sub-table": ("[capture.sub]\nx = 1", "capture.sub: Extra inputs are not permitted"),
    "number is a string": ('[capture]\nframe_budget = "x"', "capture.frame_budget: Input should be a valid integer"),
    "number is a boolean": ("[capture]\nframe_budget = true", "capture.frame_budget: Input should be a number, not "
                                                             "true or false"),
    "number is a float": ("[capture]\nringbuf_mb = 1.5", "capture.ringbuf_mb: Input should be a valid integer"),
    "number is a date": ("[capture]\nframe_budget = 1979-05-27", "capture.frame_budget: Input should be a valid "
                                                                 "integer"),
    "number is a time": ("[capture]\nframe_budget = 07:32:00", "capture.frame_budget: Input should be a valid "
                                                               "integer"),
    "number is a list": ("[capture]\nframe_budget = [4096]", "capture.frame_budget: Input should be a valid integer"),
    "number is a table": ("[capture]\nframe_budget = {a = 1}", "capture.frame_budget: Input should be a valid "
                                                               "integer"),
    "number is huge": ("[capture]\nframe_budget = 9223372036854775807", "less than or equal to 1073741824"),
    "number is negative": ("[capture]\nringbuf_mb = -1", "greater than or equal to 1"),
    "float is nan": ("[exporter]\ntimeout_s = nan", "exporter.timeout_s: Input should be a finite number"),
    "float is inf": ("[agent]\nresolve_wait_s = inf", "agent.resolve_wait_s: Input should be a finite number"),
    "float is -inf": ("[agent]\ngroup_wait_s = -inf", "agent.group_wait_s: Input should be a finite number"),
    "ratio is a boolean": ("[spans]\nsampler_arg = true", "spans.sampler_arg: True is not a number between 0 and 1"),
    "ratio is nan": ("[spans]\nsampler_arg = nan", "spans.sampler_arg: nan is not a number between 0 and 1"),
    "list is a number": ("[capture]\npids = 5", "capture.pids: Input should be a valid list"),
    "list has a string": ('[capture]\npids = [1, "a"]', "capture.pids.1: Input should be a valid integer"),
    "list has a boolean": ("[capture]\npids = [true]", "capture.pids: Input should be a number, not true or false"),
    "list has a list": ("[capture]\nkafka_ports = [[9092]]", "capture.kafka_ports.0: Input should be a valid integer"),
    "too many ports": ("[capture]\nkafka_ports = [1,2,3,4,5,6,7,8,9]", "at most 8 ports"),
    "string is a number": ("[capture]\ncgroup = 5", "capture.cgroup: Input should be a valid string"),
    "string is a table": ("[exporter]\nendpoint = {host = 'x'}", "exporter.endpoint: Input should be a valid string"),
    "boolean is a string": ('[capture]\nports_only = "maybe"', "capture.ports_only: Input should be a valid boolean"),
    "boolean is a list": ("[spans]\nenabled = [true]", "spans.enabled: Input should be a valid boolean"),
    "dict is a string": ('[exporter]\nheaders = "x"', "exporter.headers: Input should be a valid dictionary"),
    "dict has a number": ("[exporter]\nheaders = {a = 1}", "exporter.headers.a: Input should be a valid string"),
    "dict is a list": ("[agent]\nresource_attributes = [1]", "agent.resource_attributes: Input should be a valid "
                                                             "dictionary"),
    "enum unknown": ('[exporter]\ntype = "zipkin"', "exporter.type: 'zipkin' is not one of"),
    "endpoint with a space": ('[exporter]\nendpoint = "local host:4317"', "spaces or control characters"),
    "endpoint without a host": ('[exporter]\nendpoint = "http://:4317"', "no host"),
    "sampler unknown": ('[spans]\nsampler = "often"', "unknown sampler 'often'"),
    "broken TOML": ("[capture\nframe_budget = 12", "not valid TOML"),
    "duplicate key": ("[capture]\nringbuf_mb = 1\nringbuf_mb = 2", "not valid TOML"),
    "NUL byte": ("[capture]\x00", "not valid TOML"),
}


@pytest.mark.parametrize("text, expect", CONFIGS.values(), ids=CONFIGS.keys())
def test_config_files(tmp_path, text, expect):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(text)
    r = _run("trace", "--config", str(cfg))
    _one_line(r, expect)
    assert r.stderr.startswith(f"otel-kafka-ebpf: {cfg}: "), r.stderr


@pytest.mark.parametrize("content", [b"\xff\xfe[capture]\n", b"[capture]\nframe_budget = 4096 # \xe9t\xe9\n",
                                     bytes(range(256))])
def test_a_config_file_that_is_not_utf8(tmp_path, content):
    cfg = tmp_path / "agent.toml"
    cfg.write_bytes(content)
    _one_line(_run("trace", "--config", str(cfg)), "not valid TOML")


def test_an_unreadable_config_file(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text("[capture]\n")
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                        "otel_kafka_ebpf.cli", "trace", "--config", str(cfg)], capture_output=True, text=True,
                       timeout=60, env=NO_OTEL, cwd="/")
    if "Permission denied" not in r.stderr and "permission" not in r.stderr.lower():
        pytest.skip(f"the test's directory is readable by nobody here: {r.stderr}")
    _one_line(r, "Permission denied")


# --- exporter settings: a backend that is down is not an error (the agent runs and warns); a setting that
# cannot work is one line before anything starts --------------------------------------------------------------

@pytest.mark.parametrize("args, env, expect", [
    (["--endpoint", "localhost:99999"], {}, "not a valid port"),
    (["--exporter", "otlp", "--endpoint", "local host:4317"], {}, "spaces or control characters in an endpoint"),
    (["--exporter", "otlp", "--endpoint", "https://"], {}, "no host"),
    (["--exporter", "otlp-http", "--endpoint", "gopher://x"], {}, "scheme must be http or https"),
    (["--exporter", "file", "--file-path", "/nonexistent/dir/spans.json"], {},
     "exporter: /nonexistent/dir/spans.json: No such file or directory"),
    (["--exporter", "file", "--file-path", "/tmp"], {}, "exporter: /tmp: Is a directory"),
    (["--exporter", "otlp", "--endpoint", "https://localhost:4317"], {"OTEL_EXPORTER_OTLP_CERTIFICATE": "BAD_PEM"},
     "not a PEM CA certificate"),
    (["--exporter", "otlp-http", "--endpoint", "https://localhost:4318"],
     {"OTEL_EXPORTER_OTLP_CERTIFICATE": "BAD_PEM"}, "not a PEM CA certificate"),
    (["--exporter", "otlp", "--endpoint", "https://localhost:4317"],
     {"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": "BAD_PEM", "OTEL_EXPORTER_OTLP_CLIENT_KEY": "BAD_PEM"},
     "not a PEM certificate and its key"),
    (["--exporter", "none"], {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "-0.5"}, "not a number between 0 and 1"),
])
def test_exporter_settings_that_cannot_work(tmp_path, args, env, expect):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    env = {k: (str(bad) if v == "BAD_PEM" else v) for k, v in env.items()}
    # replay with an exporter builds the same exporter as run, without the kernel: the check is the same
    r = _run("replay", "tests/vectors/go-plain.rec.gz", *args, env=env)
    _one_line(r, expect)


def test_an_unreachable_backend_is_not_an_error(free_port):
    """The agent runs, exports nothing, says so in a warning, and ends normally."""
    r = _run("replay", "tests/vectors/go-live-6p.rec.gz", "--exporter", "otlp", "--endpoint",
             f"127.0.0.1:{free_port}", env={"OTEL_EXPORTER_OTLP_TIMEOUT": "500"})
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert f"cannot export to 127.0.0.1:{free_port}" in r.stderr and "retrying" in r.stderr, r.stderr
    assert "exported 0 spans" in r.stderr, r.stderr


@pytest.fixture
def free_port():
    from tests.testbed.kafka import free_port

    return free_port()


def test_missing_privilege_is_one_line():
    """Without CAP_BPF/CAP_PERFMON/CAP_SYS_ADMIN the live capture refuses with the fix, not a traceback."""
    r = subprocess.run(["setpriv", "--bounding-set=-all", "--inh-caps=-all",
                        sys.executable, "-m", "otel_kafka_ebpf.cli", "trace"],
                       capture_output=True, text=True, timeout=60, env=NO_OTEL)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    assert "privileges" in r.stderr and "run as root" in r.stderr, r.stderr


def test_an_internal_error_is_one_line_and_debug_shows_the_traceback(tmp_path):
    """A bug is not the user's fault, but it is still one line (exit 70) unless --debug asks for the traceback."""
    boom = tmp_path / "sitecustomize.py"
    boom.write_text("import otel_kafka_ebpf.doctor as d\n"
                    "def broken(out, settings=None):\n    raise RuntimeError('boom')\n"
                    "d.doctor = broken\n")
    env = {"PYTHONPATH": f"{tmp_path}:{os.getcwd()}"}
    r = _run("doctor", env=env)
    _one_line(r, "internal error: RuntimeError: boom (run with --debug for the traceback)", code=70)
    r = _run("--debug", "doctor", env=env)
    assert r.returncode == 1 and "Traceback" in r.stderr and "RuntimeError: boom" in r.stderr
    r = _run("doctor", "--debug", env=env)
    assert "Traceback" in r.stderr
