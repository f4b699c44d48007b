"""The command line's TLS options: `--tls-cert` / `--tls-key` on the server commands,
checked before anything starts, and the check of the root `--tls-ca`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from slipway.tls import ServerTls, TlsError, read_ca


def checked_ca(ca_file: Path | None) -> Path | None:
    if ca_file is not None:
        try:
            read_ca(ca_file)
        except TlsError as err:
            raise click.BadParameter(str(err), param_hint="'--tls-ca'") from None
    return ca_file


def server_tls(cert_file: Path | None, key_file: Path | None) -> ServerTls | None:
    if cert_file is None and key_file is None:
        return None
    if cert_file is None or key_file is None:
        raise click.UsageError("--tls-cert and --tls-key go together: pass both, or neither to serve plaintext")
    try:
        return ServerTls.load(cert_file, key_file)
    except TlsError as err:
        raise click.BadParameter(str(err), param_hint="'--tls-cert' / '--tls-key'") from None


def tls_options(command: Callable) -> Callable:
    pem = click.Path(exists=True, dir_okay=False, path_type=Path)
    options = [
        click.option(
            "--tls-cert",
            envvar="SLIPWAY_TLS_CERT",
            type=pem,
            show_envvar=True,
            metavar="PEM",
            help="Certificate (chain) to serve TLS with on every port this command opens; with --tls-key.",
        ),
        click.option(
            "--tls-key", envvar="SLIPWAY_TLS_KEY", type=pem, show_envvar=True, metavar="PEM", help="Its private key."
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command
