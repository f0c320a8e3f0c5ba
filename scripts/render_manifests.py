"""Render the kustomize base `k8s/base/` from the Helm chart (release `maas`, namespace `maas`, default values).

The overlays in `k8s/overlays/` patch this base; a test fails when the committed base differs from a
fresh render, so run this after changing the chart.

Usage: python scripts/render_manifests.py [--check]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "maas"
BASE = ROOT / "k8s" / "base"
HELM = Path(sys.executable).parent / "helm"
RELEASE = NAMESPACE = "maas"
HEADER = "# Rendered from helm/maas by scripts/render_manifests.py; do not edit (edit the chart, then re-render).\n"


def render() -> dict[str, str]:
    """File name -> content of the base: one file per kind, and the kustomization listing them."""
    command = [HELM, "template", RELEASE, CHART, "--namespace", NAMESPACE, "--skip-tests"]
    docs = [doc for doc in yaml.safe_load_all(subprocess.run(command, check=True, capture_output=True).stdout) if doc]
    by_kind: dict[str, list[dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"].lower(), []).append(doc)
    files = {
        f"{kind}.yaml": HEADER + yaml.safe_dump_all(items, sort_keys=False) for kind, items in sorted(by_kind.items())
    }
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": NAMESPACE,
        "resources": sorted(files),
    }
    files["kustomization.yaml"] = HEADER + yaml.safe_dump(kustomization, sort_keys=False)
    return files


def main() -> int:
    """Write the base, or with --check report whether the committed one is current."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if k8s/base differs from a fresh render")
    args = parser.parse_args()
    files = render()
    current = {path.name: path.read_text() for path in BASE.glob("*.yaml")} if BASE.exists() else {}
    if args.check:
        stale = sorted(set(files) ^ set(current) | {name for name in files if current.get(name) != files[name]})
        if stale:
            sys.stderr.write(f"k8s/base is stale ({', '.join(stale)}): run python scripts/render_manifests.py\n")
            return 1
        return 0
    BASE.mkdir(parents=True, exist_ok=True)
    for name in set(current) - set(files):
        (BASE / name).unlink()
    for name, text in files.items():
        (BASE / name).write_text(text)
    sys.stdout.write(f"wrote {len(files)} files to {BASE.relative_to(ROOT)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
