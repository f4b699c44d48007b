"""A throwaway CA and the certificates it signs, for the TLS tests."""

from __future__ import annotations

import datetime
import ipaddress
import pathlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class Pki:
    ca: pathlib.Path
    cert: pathlib.Path
    key: pathlib.Path
    other_ca: pathlib.Path  # a CA that signed nothing the servers present
    self_signed_cert: pathlib.Path  # for the same names, its own trust anchor
    self_signed_key: pathlib.Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _certificate(subject: str, key, issuer: str, issuer_key, *, ca: bool, sans=()) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    return _certificate(name, key, name, key, ca=True), key


def _write_key(path: pathlib.Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def generate(directory: pathlib.Path) -> Pki:
    """A CA, a server certificate it signs for 127.0.0.1 and localhost, an unrelated CA and
    a self-signed certificate for the same names."""
    pki = Pki(
        *(directory / name for name in ("ca.pem", "server.pem", "server.key", "other-ca.pem", "self.pem", "self.key"))
    )
    ca, ca_key = _ca("Slipway test CA")
    other, _ = _ca("Some other CA")
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server_key, self_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    server = _certificate("slipway test server", server_key, "Slipway test CA", ca_key, ca=False, sans=sans)
    self_signed = _certificate("slipway self-signed", self_key, "slipway self-signed", self_key, ca=False, sans=sans)
    pki.ca.write_bytes(_pem(ca))
    pki.other_ca.write_bytes(_pem(other))
    pki.cert.write_bytes(_pem(server))
    pki.self_signed_cert.write_bytes(_pem(self_signed))
    _write_key(pki.key, server_key)
    _write_key(pki.self_signed_key, self_key)
    return pki
