"""The `slipway` command's entry point: settings that must precede grpc's import, then the CLI."""

import os


def main() -> None:
    # grpc core reads its log level when imported; below ERROR (its documented default) it
    # prints every refused TLS handshake on stderr, beside the CLI's one error line and
    # among the servers' JSON log lines. An operator's own setting wins.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    from slipway.cli import main as run_cli

    run_cli()
