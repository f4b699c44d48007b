"""Controller address lists: `--controller host:port,host:port` (SLIPWAY_CONTROLLER).

Gateways and clients try the addresses in order and move to the next when one is
unreachable (several controllers share one database; any of them answers)."""

from __future__ import annotations

from collections.abc import Sequence

MAX_CONTROLLER_ADDRESSES = 16


class AddressListError(ValueError):
    pass


def parse_addresses(value: str | Sequence[str]) -> tuple[str, ...]:
    """`host:port,host:port` (or a sequence of them) as a tuple; refuses an empty list, an
    entry without a port and more than MAX_CONTROLLER_ADDRESSES entries."""
    items = value.split(",") if isinstance(value, str) else list(value)
    addresses = tuple(item.strip() for item in items)
    if not addresses or addresses == ("",):
        raise AddressListError("no controller address given (expected HOST:PORT[,HOST:PORT...])")
    if len(addresses) > MAX_CONTROLLER_ADDRESSES:
        raise AddressListError(
            f"{len(addresses)} controller addresses given; at most {MAX_CONTROLLER_ADDRESSES} are accepted"
        )
    for address in addresses:
        if address.startswith("unix:") and len(address) > len("unix:"):
            continue
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise AddressListError(f"controller address {address!r} is not HOST:PORT (in {','.join(addresses)!r})")
    return addresses


def checked_addresses(value: str) -> str:
    """A click callback: `value` unchanged when it is a valid list, else a usage error."""
    import click

    try:
        parse_addresses(value)
    except AddressListError as error:
        raise click.BadParameter(str(error)) from None
    return value
