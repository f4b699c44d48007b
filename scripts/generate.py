"""Generate the Python API from protos/ into the slipway/v1 import path.

`--check` regenerates into a temporary directory and fails if the committed code
differs (stale generated code is a test failure).
"""

from __future__ import annotations

import argparse
import filecmp
import pathlib
import sys
import tempfile

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
PACKAGE = pathlib.Path("slipway") / "v1"


def generate(out: pathlib.Path) -> None:
    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / PACKAGE).glob("*.proto"))
    well_known = pathlib.Path(protoc.__file__).parent / "_proto"
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *sources,
        ]
    )
    if code != 0:
        sys.exit(f"protoc failed with exit code {code}")


def generated_files(root: pathlib.Path) -> set[str]:
    return {p.name for p in (root / PACKAGE).glob("*_pb2*.py*")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed code is stale")
    args = parser.parse_args()
    if not args.check:
        for stale in generated_files(ROOT):
            (ROOT / PACKAGE / stale).unlink()
        generate(ROOT)
        return
    with tempfile.TemporaryDirectory() as tmp:
        fresh = pathlib.Path(tmp)
        generate(fresh)
        names = generated_files(fresh) | generated_files(ROOT)
        stale = [
            n
            for n in sorted(names)
            if not (ROOT / PACKAGE / n).exists()
            or not (fresh / PACKAGE / n).exists()
            or not filecmp.cmp(ROOT / PACKAGE / n, fresh / PACKAGE / n, shallow=False)
        ]
    if stale:
        sys.exit(f"generated code is stale ({', '.join(stale)}): run `make generate`")
    print("generated code is up to date")


if __name__ == "__main__":
    main()
