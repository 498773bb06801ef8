"""Throwaway PKI for tests: a CA, a localhost server certificate and a client certificate, as PEM files."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(subject: str, issuer_key: Any, issuer: x509.Name, *, ca: bool = False,
           san: list[x509.GeneralName] | None = None) -> tuple[Any, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return key, builder.sign(issuer_key or key, hashes.SHA256())


class Pki:
    """A CA, a server certificate for localhost and a client certificate, written as PEM files."""

    def __init__(self, tmp: Path, name: str = "test-ca"):
        ca_key, ca_cert = _issue(name, None, _name(name), ca=True)
        self.ca_name = name
        self.cafile = self._write(tmp / f"{name}.pem", ca_cert)
        server_key, server_cert = _issue("localhost", ca_key, ca_cert.subject, san=[
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        self.server_cert = self._write(tmp / f"{name}-server.pem", server_cert)
        self.server_key = self._write(tmp / f"{name}-server.key", server_key)
        client_key, client_cert = _issue("fill-publisher-client", ca_key, ca_cert.subject)
        self.client_cert = self._write(tmp / f"{name}-client.pem", client_cert)
        self.client_key = self._write(tmp / f"{name}-client.key", client_key)

    @staticmethod
    def _write(path: Path, item: Any) -> str:
        if isinstance(item, x509.Certificate):
            path.write_bytes(item.public_bytes(serialization.Encoding.PEM))
        else:
            path.write_bytes(item.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
        return str(path)
