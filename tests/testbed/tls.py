"""A throwaway CA and a broker certificate for 127.0.0.1/localhost, made with the `openssl` CLI,
for the test bed's TLS listeners (KafkaBroker(tls=True)).

    files = make_tls_files(tmp_path / "tls")     # ca.pem, broker.pem, broker.key, broker-keystore.pem
    write_client_config(tmp_path / "ssl.properties", files.ca)   # a Java client's --producer.config

Keys are EC P-256 (quick to make: the whole set takes a few tens of milliseconds); every call makes a
new CA, so nothing is trusted beyond the directory it is written to.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
HOSTS = ("127.0.0.1", "localhost")
DAYS = 30

# Extensions only from here (not the system's openssl.cnf): a CA Go's crypto/x509 accepts, and a
# server certificate whose SAN every client verifies (Go ignores the CN).
_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = placeholder
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = {san}
"""


class TlsError(RuntimeError):
    """The certificates could not be made."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM files in one directory: the CA clients trust, the broker's chain and key."""
    dir: Path

    @property
    def ca(self) -> Path:
        """The CA certificate (clients: ssl.truststore.location / ssl.ca.location / ssl_cafile)."""
        return self.dir / "ca.pem"

    @property
    def cert(self) -> Path:
        """The broker's certificate chain: its certificate, then the CA's."""
        return self.dir / "broker.pem"

    @property
    def key(self) -> Path:
        """The broker's private key, unencrypted PKCS#8."""
        return self.dir / "broker.key"

    @property
    def keystore(self) -> Path:
        """Key and chain in one file: a PEM keystore for Kafka (ssl.keystore.type=PEM)."""
        return self.dir / "broker-keystore.pem"


def _openssl(*args: str, cwd: Path) -> None:
    res = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=30)
    if res.returncode != 0:
        raise TlsError(f"openssl {' '.join(args[:2])} failed (exit {res.returncode}):\n"
                       f"{res.stderr[-2000:]}")


def make_tls_files(directory: str | os.PathLike, hosts: tuple[str, ...] = HOSTS,
                   days: int = DAYS) -> TlsFiles:
    """A new CA and a broker certificate for `hosts` (IP addresses and DNS names, all in the SAN)
    in `directory` (created if missing; files there of an earlier call are replaced)."""
    if not os.access(OPENSSL, os.X_OK):
        raise TlsError("the openssl command is needed for the TLS test bed "
                       "(Debian: apt-get install openssl; or `make apt-deps`)")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(d)
    san = ", ".join(("IP:" if _is_ip(h) else "DNS:") + h for h in hosts)
    cnf = d / "openssl.cnf"
    cnf.write_text(_CONFIG.format(san=san))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-config", cnf.name]
    # a CN of its own: a client given another run's CA names the one it could not verify
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", files.ca.name,
             "-subj", f"/CN=otel-kafka-ebpf test CA {os.urandom(4).hex()}", "-extensions", "ca",
             "-days", str(days), cwd=d)
    _openssl("req", "-new", *ec, "-keyout", files.key.name, "-out", "broker.csr",
             "-subj", f"/CN={hosts[0]}", cwd=d)
    _openssl("x509", "-req", "-in", "broker.csr", "-CA", files.ca.name, "-CAkey", "ca.key",
             "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", str(days),
             "-sha256", "-extfile", cnf.name, "-extensions", "server", "-out", "broker.crt", cwd=d)
    leaf, ca, key = (d / "broker.crt").read_text(), files.ca.read_text(), files.key.read_text()
    files.cert.write_text(leaf + ca)
    files.keystore.write_text(key + leaf + ca)
    for name in ("broker.csr", "broker.crt"):
        (d / name).unlink()
    return files


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        return True
    except OSError:
        return False


def handshake(host: str, port: int, ca: str | os.PathLike, timeout: float = 5.0,
              check_hostname: bool = True) -> str:
    """A TLS handshake with host:port, verifying its certificate against `ca` (and `host`); the TLS
    version negotiated (ssl.SSLError / OSError if there is none)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = check_hostname
    with socket.create_connection((host, port), timeout=timeout) as sock:
        with ctx.wrap_socket(sock, server_hostname=host) as tls:
            return tls.version()


def client_config(ca: str | os.PathLike, sasl_user: str | None = None,
                  sasl_password: str | None = None) -> dict[str, str]:
    """A Java client's TLS settings (PEM truststore); SASL_SSL with PLAIN when a user is given."""
    conf = {"security.protocol": "SASL_SSL" if sasl_user else "SSL",
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(ca)}
    if sasl_user:
        conf["sasl.mechanism"] = "PLAIN"
        conf["sasl.jaas.config"] = (f'org.apache.kafka.common.security.plain.PlainLoginModule '
                                    f'required username="{sasl_user}" password="{sasl_password}";')
    return conf


def write_client_config(path: str | os.PathLike, ca: str | os.PathLike,
                        sasl_user: str | None = None, sasl_password: str | None = None) -> Path:
    """client_config() as a properties file (e.g. for kafka-producer-perf-test --producer.config)."""
    path = Path(path)
    path.write_text("".join(f"{k}={v}\n" for k, v in client_config(ca, sasl_user, sasl_password).items()))
    return path
