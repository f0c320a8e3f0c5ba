"""Install the benchmark peers, each into its own venv under `.peers/` (git-ignored), never the project's.

- `perf_analyzer`: Triton's own benchmark client. The binary ships inside the manylinux wheel of
  tritonclient 2.41.0 (later wheels dropped it); it needs `libcudart.so.12` even on CPU (PyPI
  nvidia-cuda-runtime-cu12) and Debian's `libb64-0d` (apt). `.peers/bin/perf_analyzer` runs it with
  the library path set.
- `triton`: real Triton 2.51: PyPI nvidia-pytriton 0.7.0 bundles `tritonserver` and its Python
  backend. The backend's stub links the system's libpython3.11, so this venv is made from
  `/usr/bin/python3.11`, and its Python 3.11 stub is put where the backend looks for it (as PyTriton
  does at start); `.peers/bin/tritonserver` runs the server with its libraries on the path.
- `kserve`: KServe 0.21's ModelServer (v2 gRPC).

The two serving peers also get CPU torch 2.13.0 and what the project's model code imports, and a
`.pth` file that puts this repository on their path: their models load the same safetensors weights
with the same code the maas services run. A launcher puts its venv's `bin` first on PATH (the Python
backend's stub finds its interpreter there). A venv is rebuilt only when its pinned requirements change.

Usage: python scripts/peers.py [--root DIR] perf_analyzer|triton|kserve ...
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ROOT = REPO_ROOT / ".peers"
SYSTEM_PYTHON = "/usr/bin/python3.11"
MODEL_CODE = [
    "torch==2.13.0",
    "transformers>=5",
    "safetensors>=0.4",
    "ml-dtypes>=0.4",
    "pydantic>=2.7",
    "pydantic-settings>=2.3",
    "grpcio",
    "protobuf>=6.33,<7",
    "onnxruntime",
]
"""What `services/vision/model.py` and `services/transformer/model.py` import (their ONNX versions run on
onnxruntime), torch pinned to the CPU wheel; the constraints file pins the rest as the project's venv has them."""
CONSTRAINED = ["-c", str(REPO_ROOT / "constraints.txt")]
PEERS = {
    "perf_analyzer": (sys.executable, ["tritonclient==2.41.0", "nvidia-cuda-runtime-cu12==12.9.79"], ["--no-deps"]),
    "triton": (SYSTEM_PYTHON, ["nvidia-pytriton==0.7.0", *MODEL_CODE], CONSTRAINED),
    "kserve": (sys.executable, ["kserve==0.21.0", *MODEL_CODE], CONSTRAINED),
}
"""Peer -> (Python its venv is made from, requirements, pip options). perf_analyzer's wheel is only a
carrier for the binary (its Python client pins what the project's constraints forbid): no dependencies."""
STAMP = ".requirements"
LAUNCHERS = {
    "perf_analyzer": ("perf_analyzer", "bin/perf_analyzer", "nvidia/cuda_runtime/lib"),
    "triton": ("tritonserver", "pytriton/tritonserver/bin/tritonserver", "nvidia_pytriton.libs"),
}
"""Peer -> (launcher name, binary, its library directory), paths under the venv's site-packages except a
binary under `bin/`."""


def site_packages(venv: Path) -> Path:
    """The venv's site-packages."""
    return venv / "lib" / "python3.11" / "site-packages"


def triton_backends(venv: Path) -> Path:
    """The backend directory of the triton peer's venv (tritonserver's `--backend-directory`)."""
    return site_packages(venv) / "pytriton" / "tritonserver" / "backends"


def _launcher(venv: Path, binary: str, libraries: str) -> str:
    site = site_packages(venv)
    path = venv / binary if binary.startswith("bin/") else site / binary
    library_path = f"{site / libraries}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"
    return f'#!/bin/sh\nPATH="{venv / "bin"}:$PATH" LD_LIBRARY_PATH="{library_path}" exec "{path}" "$@"\n'


def install(peer: str, root: Path) -> Path:
    """Make (or keep) the peer's venv under `root` and its launcher under `root/bin`.

    Args:
        peer: one of PEERS.
        root: where the venvs live.

    Returns:
        The venv's directory.

    Raises:
        RuntimeError: the venv's Python is missing, the venv could not be made or pip failed.
    """
    python, requirements, options = PEERS[peer]
    if not Path(python).is_file():
        raise RuntimeError(f"{peer}: its venv is made from {python}: apt-get install python3.11 python3.11-venv")
    venv = root / peer
    wanted = hashlib.sha256("\n".join([python, *requirements, *options]).encode()).hexdigest()
    stamp = venv / STAMP
    if not (stamp.is_file() and stamp.read_text() == wanted):
        shutil.rmtree(venv, ignore_errors=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        for command in ([python, "-m", "venv", str(venv)], [*pip, *options, *requirements]):
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"{peer}: {' '.join(command[:4])} ... failed:\n{done.stderr.strip()[-2000:]}")
        if MODEL_CODE[0] in requirements:
            (site_packages(venv) / "maas-repository.pth").write_text(f"{REPO_ROOT}\n{REPO_ROOT / 'protos'}\n")
        if peer == "triton":
            stub = triton_backends(venv).parent / "python_backend_stubs" / "3.11" / "triton_python_backend_stub"
            shutil.copy(stub, triton_backends(venv) / "python" / stub.name)
        stamp.write_text(wanted)
    if peer in LAUNCHERS:
        name, binary, libraries = LAUNCHERS[peer]
        launcher = root / "bin" / name
        launcher.parent.mkdir(parents=True, exist_ok=True)
        launcher.write_text(_launcher(venv, binary, libraries))
        launcher.chmod(0o755)
    return venv


def main() -> int:
    """Install the peers named on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="where the venvs go (default: .peers/)")
    parser.add_argument("peers", nargs="+", choices=sorted(PEERS))
    args = parser.parse_args()
    for peer in args.peers:
        sys.stdout.write(f"{peer}: {install(peer, args.root)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
