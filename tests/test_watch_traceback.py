"""`slipway watch` shows a failed reload as the model's author wants to read it: the
frames of their own files, under the paths they edit, without the platform's."""

from __future__ import annotations

import asyncio
import os
import pathlib
import sys

from conftest import Api
from test_live_reload import REPO, OutputLines, model_source, write_live_package

FAILS_IN_A_HELPER = """\
import helpers


class Model:
    def load(self):
        helpers.fetch_weights()

    def predict(self, model_input):
        return model_input
"""
HELPERS = """\
VERSION = "h2"


def fetch_weights():
    raise RuntimeError("no weights")
"""


def write_whole(path: pathlib.Path, text: str) -> None:
    """Replace a file at once, so that the watcher never reads it half written."""
    draft = path.parent.parent.parent / f"{path.name}.draft"
    draft.write_text(text)
    os.replace(draft, path)


async def test_a_failed_reload_shows_the_users_files_and_frames_only(api: Api, controller, tmp_path):
    package = write_live_package(tmp_path / "watched", "traced")
    # In the package from the start: the one edit below is then one patch, whatever the
    # watcher's timing (two edits may arrive as two patches on a loaded machine).
    (package / "model" / "helpers.py").write_text(HELPERS)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "slipway",
        "--controller",
        controller.address,
        "watch",
        str(package),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    output = OutputLines(process.stdout)
    try:
        await output.wait_for("Watching")
        write_whole(package / "model" / "model.py", FAILS_IN_A_HELPER)
        summary = await output.wait_for("changed")
        assert "failed, the previous code keeps serving: RuntimeError: no weights" in summary
        shown = output.seen[output.seen.index(next(line for line in output.seen if "Watching" in line)) + 1 : -1]
        assert shown == [
            "Traceback (most recent call last):",
            f'  File "{package / "model" / "model.py"}", line 6, in load',
            "    helpers.fetch_weights()",
            f'  File "{package / "model" / "helpers.py"}", line 5, in fetch_weights',
            '    raise RuntimeError("no weights")',
            "RuntimeError: no weights",
        ]

        (package / "model" / "model.py").write_bytes(model_source("two"))
        assert "applied in place" in await output.wait_for("model/model.py changed")
    finally:
        process.terminate()
        await process.wait()
