"""TLS material of the platform's servers and clients, read and checked once.

The controller's gRPC port and the gateway's gRPC and HTTP ports serve TLS with a
`ServerTls` (a certificate chain and its private key, PEM); clients and gateways verify
them with a CA certificate (`read_ca`). Hops inside one machine (gateway and controller
to replicas) stay plaintext on loopback.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
import sys
from dataclasses import dataclass, field
from pathlib import Path

import grpc

log = logging.getLogger("slipway.tls")


class TlsError(ValueError):
    """A certificate, key or CA file that cannot be used."""


@dataclass(frozen=True)
class ServerTls:
    cert_file: Path
    key_file: Path
    certificate_chain: bytes = field(repr=False)
    private_key: bytes = field(repr=False)  # settings get logged; a key never does

    @classmethod
    def load(cls, cert_file: str | Path, key_file: str | Path) -> ServerTls:
        """Reads both files and checks that the key belongs to the certificate."""
        cert_file, key_file = Path(cert_file), Path(key_file)
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert_file, key_file)
            return cls(cert_file, key_file, cert_file.read_bytes(), key_file.read_bytes())
        except (OSError, ssl.SSLError) as err:
            raise TlsError(
                f"cannot serve TLS with certificate {cert_file} and key {key_file}: {_reason(err)}"
            ) from None

    def grpc_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.private_key, self.certificate_chain)])

    def http_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def read_ca(ca_file: str | os.PathLike[str]) -> bytes:
    """The PEM certificates of a CA file, checked to be certificates."""
    path = Path(ca_file)
    try:
        ssl.create_default_context(cafile=path)
        return path.read_bytes()
    except (OSError, ssl.SSLError) as err:
        raise TlsError(f"cannot use {path} as a CA certificate: {_reason(err)}") from None


def add_grpc_port(server: grpc.aio.Server, address: str, tls: ServerTls | None) -> int:
    """Listen on `address` (TLS when `tls` is given); returns the port bound."""
    if tls is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, tls.grpc_credentials())


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name (or "" for every interface) may reach beyond this machine


def dialable_host(host: str) -> str:
    """The host a client on this machine dials to reach a server listening on `host`: a
    wildcard listens on loopback too, and a certificate names 127.0.0.1 where it would never
    name 0.0.0.0."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::", "[::]") else host


def warn_if_exposed_without_tls(host: str, tls: ServerTls | None, surface: str) -> None:
    """Loudly, in the log and on stderr: plaintext beyond loopback exposes every key and payload."""
    if tls is not None or is_loopback(host):
        return
    message = (
        f"{surface} listens on {host or 'every interface'} WITHOUT TLS: anyone on the network can read and "
        "alter its traffic; pass --tls-cert and --tls-key"
    )
    log.warning(message, extra={"fields": {"host": host}})
    print(f"WARNING: {message}", file=sys.stderr, flush=True)


def _reason(err: OSError | ssl.SSLError) -> str:
    if isinstance(err, ssl.SSLError):
        return err.reason or str(err)
    return err.strerror or str(err)
