"""Regenerate the Python stubs for every proto under protos/ with the pinned grpcio-tools.

Stubs are written next to their protos (protos/maas/...), which is packaged as the `maas` import
root, so generated imports like `from maas.common.v1 import common_pb2` resolve.

Usage: python scripts/gen_protos.py [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent.parent / "protos"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files(root: Path = PROTO_ROOT) -> list[Path]:
    """Return every .proto file under `root`, relative to it, in a stable order."""
    return sorted(p.relative_to(root) for p in root.rglob("*.proto"))


def generated_files(root: Path) -> list[Path]:
    """Return every generated stub and package marker under `root`, relative to it."""
    found = [p for p in root.rglob("*") if p.name.endswith(GENERATED_SUFFIXES) or p.name == "__init__.py"]
    return sorted(p.relative_to(root) for p in found)


def generate(out: Path, root: Path = PROTO_ROOT) -> None:
    """Generate message, type-stub and gRPC modules for every proto into `out`.

    Args:
        out: Directory that becomes the import root of the `maas` package.
        root: Directory holding the protos.

    Raises:
        RuntimeError: protoc reported an error.
    """
    # Imported here: protoc's C++ protobuf, once loaded, keeps the native front out of the process
    # (services/common/front.py, `load_extension`), and the other functions here do not need it.
    from grpc_tools import protoc

    include = str(resources.files("grpc_tools") / "_proto")
    protos = [str(p) for p in proto_files(root)]
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{root}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {protos}")
    for proto in proto_files(root):
        package = out / proto.parent
        while package != out:
            (package / "__init__.py").touch()
            package = package.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROTO_ROOT, help="output root (default: protos/)")
    generate(parser.parse_args().out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
