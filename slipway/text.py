"""Text helpers shared by every part (pure)."""

from __future__ import annotations


def shorten(text: str, max_bytes: int) -> str:
    """`text`, cut to at most `max_bytes` of UTF-8 and marked as cut: for echoing a value a
    caller sent, which may be of any size."""
    encoded = text.encode()
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode(errors="ignore") + f"… ({len(encoded)} bytes)"


def cut(text: str, max_bytes: int) -> str:
    """`text` within `max_bytes` of UTF-8 (the note included), marked with how much was cut:
    for a log line of any length."""
    data = text.encode("utf-8", "replace")
    if len(data) <= max_bytes:
        return text
    kept = data[: max(max_bytes - 40, 0)].decode("utf-8", "ignore")
    return f"{kept}… [{len(data) - len(kept.encode())} bytes cut]"
