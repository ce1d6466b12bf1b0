"""Throw-away TLS certificates for tests: a CA and a server certificate for 127.0.0.1, as PEM files.

Made with the ``cryptography`` package (RSA 2048, SHA-256, valid one day). The server
certificate carries ``IP:127.0.0.1`` and ``DNS:localhost`` subject alternative names, so
clients that check the host name (librdkafka ``ssl.endpoint.identification.algorithm=https``,
Java's default) accept it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: ``ca`` (CA certificate), ``cert``/``key`` (server certificate and its PKCS#8 key),
    ``keystore`` (key then certificate in one file, as Kafka's ``ssl.keystore.type=PEM`` reads it),
    ``client_cert``/``client_key`` (a client certificate ``CN=dtmon-client`` of the same CA)."""

    ca: Path
    cert: Path
    key: Path
    keystore: Path
    client_cert: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _signed(subject: str, ca_cert: x509.Certificate, ca_key, now: dt.datetime, san: list | None = None):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), pem_key


def make_tls_files(directory: Path, host: str = "127.0.0.1") -> TlsFiles:
    """Write a new CA, a server certificate for ``host`` (and localhost) and a client certificate into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("dtmon test CA"))
        .issuer_name(_name("dtmon test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    pem_cert, pem_key = _signed(host, ca_cert, ca_key, now, [x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")])
    client_cert, client_key = _signed("dtmon-client", ca_cert, ca_key, now)
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key", directory / "keystore.pem",
                     directory / "client.pem", directory / "client.key")  # fmt: skip
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(pem_cert)
    files.key.write_bytes(pem_key)
    files.keystore.write_bytes(pem_key + pem_cert)
    files.client_cert.write_bytes(client_cert)
    files.client_key.write_bytes(client_key)
    return files
