"""HAProxy's runtime API (the admin stats socket), over one persistent connection in
interactive (`prompt`) mode. A command's answer comes once HAProxy has applied it: after
`disable server` or `del map` returns, no new request is routed by the old state."""

from __future__ import annotations

import asyncio
import csv
import io

PROMPT = b"\n> "
# Answers of commands that succeeded; anything else is an error.
OK_ANSWERS = {"add server": "New server registered.", "del server": "Server deleted."}


# `show stat`'s row kinds (its type bitfield): frontends 1, backends 2, servers 4.
BACKENDS, SERVERS = 2, 4


class RuntimeError_(Exception):
    """A command HAProxy refused."""


class RuntimeApi:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_unix_connection(self.socket_path, limit=16 * 1024 * 1024)
            self._writer.write(b"prompt\n")
            await self._writer.drain()
            await self._reader.readuntil(b"> ")
        return self._reader, self._writer

    async def run(self, commands: list[str]) -> list[str]:
        """Send commands in one batch; their answers, in order (the connection is reopened
        after a failure)."""
        if not commands:
            return []
        async with self._lock:
            try:
                reader, writer = await self._connect()
                writer.write("".join(f"{command}\n" for command in commands).encode())
                await writer.drain()
                return [(await reader.readuntil(PROMPT))[: -len(PROMPT)].decode().strip() for _ in commands]
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                await self.close()
                raise

    async def apply(self, commands: list[str]) -> None:
        """Run commands; raise for the first one HAProxy refused (after running all)."""
        failures = [
            f"{command!r}: {answer}"
            for command, answer in zip(commands, await self.run(commands), strict=True)
            if not succeeded(command, answer)
        ]
        if failures:
            raise RuntimeError_("; ".join(failures[:5]))

    async def stats(self, kinds: int) -> list[dict[str, str]]:
        """`show stat` of the rows of `kinds` (BACKENDS, SERVERS; CSV with a `# ` header)."""
        (answer,) = await self.run([f"show stat -1 {kinds} -1"])
        text = answer.removeprefix("# ")
        return list(csv.DictReader(io.StringIO(text)))

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass


def succeeded(command: str, answer: str) -> bool:
    if command.startswith("set server") and " addr " in command:  # it reports what changed
        return answer == "" or "changed" in answer
    for prefix, expected in OK_ANSWERS.items():
        if command.startswith(prefix):
            return answer == expected
    return answer == ""
