"""Text helpers shared by every part (pure)."""

from __future__ import annotations


def shorten(text: str, max_bytes: int) -> str:
    """`text`, cut to at most `max_bytes` of UTF-8 and marked as cut: for echoing a value a
    caller sent, which may be of any size."""
    encoded = text.encode()
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode(errors="ignore") + f"… ({len(encoded)} bytes)"
