"""Generate `profile_pb2.py` and `profile_pb2.pyi` from `proto/profile.proto`.

The generated modules are committed but never edited by hand: this script is their only author.

    python -m services.profiler.build_proto           # regenerate in place
    python -m services.profiler.build_proto --check   # exit 1 if the committed files are stale

Generation runs `grpc_tools.protoc` (package grpcio-tools) in a subprocess into a temporary
directory. The output depends on the protoc bundled with grpcio-tools, so the project pins that
package's version; `--check` compares byte for byte against a fresh generation.

One deterministic post-processing step: protoc's `.pyi` writes a bare `Mapping` in message
constructors, which `mypy --strict` rejects (`type-arg`), so the stub gets a leading
`# mypy: disable-error-code="type-arg"` line. Ruff skips both files (see `ruff.toml` here).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Final

HERE: Final = Path(__file__).resolve().parent
PROTO_DIR: Final = HERE / "proto"
PROTO_NAME: Final = "profile.proto"
GENERATED: Final = ("profile_pb2.py", "profile_pb2.pyi")
PYI_HEADER: Final = '# mypy: disable-error-code="type-arg"\n'


class GenerationError(Exception):
    pass


def generate() -> dict[str, bytes]:
    """The generated files, by name, as a fresh protoc run writes them (after post-processing)."""
    with tempfile.TemporaryDirectory(prefix="rivulet-proto-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={PROTO_DIR}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            PROTO_NAME,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip()
            raise GenerationError(f"protoc failed ({proc.returncode}): {detail}")
        out = {name: (Path(tmp) / name).read_bytes() for name in GENERATED}
    out["profile_pb2.pyi"] = PYI_HEADER.encode() + out["profile_pb2.pyi"]
    return out


def stale_files(target: Path = HERE) -> list[str]:
    """Names of generated files that are missing or differ from a fresh generation."""
    fresh = generate()
    stale = []
    for name, content in fresh.items():
        path = target / name
        if not path.exists() or path.read_bytes() != content:
            stale.append(name)
    return stale


def write(target: Path = HERE) -> None:
    for name, content in generate().items():
        (target / name).write_bytes(content)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 when the committed files differ from a fresh generation",
    )
    args = parser.parse_args(argv)
    try:
        if args.check:
            stale = stale_files()
            if stale:
                print(
                    f"stale generated files in {HERE}: {', '.join(stale)}; "
                    "run `python -m services.profiler.build_proto`",
                    file=sys.stderr,
                )
                return 1
            return 0
        write()
    except GenerationError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
