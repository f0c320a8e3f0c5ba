"""Build maas's container images with podman, one Containerfile target each.

Without --base-image, a Debian bookworm base is made once with `debootstrap --variant=minbase` from
Debian's packages (no registry image can be pulled where this is developed) and every image is built
FROM it. Every wheel the CPU images install is downloaded once into build/wheelhouse, which the builds
install from (and only from). Each build is timed; the reference, build time and size of every image are recorded in
build/images.json, which `make e2e-containers` reads; each build's output is in build/image-logs/.

Usage: python scripts/build_images.py [TARGET ...] [--base-image REF] [--registry localhost] ...
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

from image_requirements import requirements

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("gateway", "tokenizer", "models", "models-ray", "model-repository")
CUDA_TARGET = "models-cuda"
LOCAL_BASE = "localhost/maas/debian-base:bookworm"
BASE_PACKAGES = "python3,python3-venv,ca-certificates"
TRIMMED = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "var/lib/apt/lists", "var/cache/apt")
RECORD = ROOT / "build" / "images.json"
LOGS = ROOT / "build" / "image-logs"
WHEELHOUSE = ROOT / "build" / "wheelhouse"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
EXTRAS = {"gateway": [], "tokenizer": [], "model-repository": [], "models": ["models"], "models-ray": ["models", "ray"]}
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def project_version() -> str:
    """The version in pyproject.toml: every image's tag and its OCI version label."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def revision() -> str:
    """The commit the images are built from, `-dirty` when the work tree has changes."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
    status = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True)
    return commit.stdout.strip() + ("-dirty" if status.stdout.strip() else "")


def image_exists(ref: str) -> bool:
    """Whether podman's store holds `ref`."""
    return subprocess.run(["podman", "image", "exists", ref]).returncode == 0


def image_size(ref: str) -> int:
    """Uncompressed size of an image in bytes, as `podman image inspect` reports it."""
    done = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Size}}", ref], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def make_base(ref: str, mirror: str) -> float:
    """Make the Debian base image `ref` with debootstrap (minbase, Python 3.11, CA certificates).

    Returns:
        Seconds it took.
    """
    started = time.monotonic()
    rootfs = Path(tempfile.mkdtemp(prefix="maas-rootfs-", dir="/var/tmp"))
    try:
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm", rootfs, mirror],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        for path in TRIMMED:
            for entry in (rootfs / path).glob("*"):
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        changes = ["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "ENV LANG=C.UTF-8"]
        command = ["podman", "import", "--quiet", *(f"--change={change}" for change in changes), "--change=CMD python3"]
        subprocess.run([*command, "-", ref], stdin=tar.stdout, check=True, stdout=subprocess.DEVNULL)
        if tar.wait():
            raise subprocess.CalledProcessError(tar.returncode, tar.args)
    finally:
        shutil.rmtree(rootfs)
    return time.monotonic() - started


def fill_wheelhouse(targets: list[str], args: argparse.Namespace) -> float:
    """Download every wheel the CPU images install into build/wheelhouse, unless it already holds what
    these requirements and constraints resolve to.

    Torch comes from `args.wheels` when given, else from PyTorch's CPU index.

    Returns:
        Seconds it took (0 when the wheelhouse was complete).
    """
    extras = sorted({extra for target in targets for extra in EXTRAS[target]})
    wanted = ["setuptools>=69", *requirements(str(ROOT / "pyproject.toml"), extras)]
    sources = ["--find-links", str(args.wheels)] if args.wheels else ["--extra-index-url", TORCH_CPU_INDEX]
    inputs = json.dumps([wanted, sources, (ROOT / "constraints.txt").read_text()])
    stamp = WHEELHOUSE / ".complete"
    if stamp.exists() and inputs in stamp.read_text().splitlines():
        return 0.0
    started = time.monotonic()
    download = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check"]
    download += ["--only-binary=:all:", "--dest", WHEELHOUSE, "-c", ROOT / "constraints.txt", *sources]
    subprocess.run([*download, *wanted], check=True)
    with stamp.open("a") as done:
        done.write(inputs + "\n")
    return time.monotonic() - started


def build_command(target: str, ref: str, base: str, args: argparse.Namespace) -> list[str]:
    """The `podman build` of one target; the CPU targets install from the wheelhouse only."""
    command = ["podman", "build", "--target", target, "--tag", ref, "--file", ROOT / "Containerfile"]
    build_args = {"BASE_IMAGE": base, "VERSION": project_version(), "REVISION": revision(), "SOURCE": args.source}
    if CA_BUNDLE.is_file():
        command += ["--volume", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"]
    if target != CUDA_TARGET:
        command += ["--volume", f"{WHEELHOUSE}:/opt/wheelhouse:ro"]
        build_args |= {"WHEELHOUSE": "/opt/wheelhouse", "TORCH_INDEX_URL": ""}
    if target == "model-repository":
        command += ["--build-context", f"models={args.model_repository.resolve()}"]
    command += [f"--build-arg={name}={value}" for name, value in build_args.items()]
    return [*map(str, command), str(ROOT)]


def main() -> int:
    """Build the named targets (default: every image but models-cuda); record them in build/images.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "targets", nargs="*", help=f"among {', '.join([*TARGETS, CUDA_TARGET])}; default: all but {CUDA_TARGET}"
    )
    parser.add_argument("--base-image", help=f"base of every image (default: {LOCAL_BASE}, made with debootstrap)")
    parser.add_argument("--mirror", default="http://deb.debian.org/debian", help="Debian mirror for debootstrap")
    parser.add_argument("--registry", default="localhost", help="images are tagged REGISTRY/maas/TARGET:VERSION")
    parser.add_argument("--source", default="https://github.com/maas/maas", help="OCI source label")
    parser.add_argument("--model-repository", type=Path, default=ROOT / "model_repository", help="what to ship")
    parser.add_argument(
        "--wheels", type=Path, help="a directory of wheels to take torch from (default: PyTorch's CPU index)"
    )
    args = parser.parse_args()
    args.targets = args.targets or list(TARGETS)
    unknown = sorted(set(args.targets) - {*TARGETS, CUDA_TARGET})
    if unknown:
        parser.error(f"no such image: {', '.join(unknown)}")
    record = json.loads(RECORD.read_text()) if RECORD.exists() else {}
    base = args.base_image
    if not base:
        base = LOCAL_BASE
        if not image_exists(base):
            seconds = make_base(base, args.mirror)
            record["base"] = {"image": base, "build_seconds": round(seconds, 1), "size_bytes": image_size(base)}
            sys.stdout.write(f"made {base} with debootstrap in {seconds:.0f} s\n")
    if "model-repository" in args.targets and not args.model_repository.is_dir():
        sys.stderr.write(f"build_images: no model repository at {args.model_repository}: run `make models`\n")
        return 1
    cpu_targets = [target for target in args.targets if target != CUDA_TARGET]
    if cpu_targets:
        seconds = fill_wheelhouse(cpu_targets, args)
        if seconds:
            record["downloads"] = {"wheelhouse": str(WHEELHOUSE.relative_to(ROOT)), "seconds": round(seconds, 1)}
            sys.stdout.write(f"downloaded the wheels into {WHEELHOUSE} in {seconds:.0f} s\n")
    for target in args.targets:
        ref = f"{args.registry}/maas/{target}:{project_version()}"
        log = LOGS / f"{target}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with log.open("w") as output:
            built = subprocess.run(build_command(target, ref, base, args), stdout=output, stderr=subprocess.STDOUT)
        seconds = time.monotonic() - started
        if built.returncode:
            tail = "".join(log.read_text().splitlines(keepends=True)[-20:])
            sys.stderr.write(f"{tail}build_images: building {target} failed (status {built.returncode}); see {log}\n")
            return 1
        size = image_size(ref)
        record[target] = {
            "image": ref,
            "base_image": base,
            "revision": revision(),
            "build_seconds": round(seconds, 1),
            "size_bytes": size,
        }
        sys.stdout.write(f"built {ref} in {seconds:.0f} s ({size / 1e6:.0f} MB)\n")
        RECORD.parent.mkdir(parents=True, exist_ok=True)
        RECORD.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
