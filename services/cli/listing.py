"""`maas models list`: the versions in a model repository, with what their configs record."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from services.cli.table import format_table
from services.common.repository import RepositoryError, read_version, version_dirs

ACCURACY_KEYS = ("test_accuracy", "validation_accuracy", "train_accuracy")
"""The accuracy a version reports, in order of preference."""


def add_parser(models: argparse._SubParsersAction) -> None:
    """Add `maas models list` under `maas models`."""
    listing = models.add_parser("list", help="the versions on disk: accuracy, size, provenance, integrity")
    listing.add_argument("--repository", type=Path, help="repository root (default: MAAS_MODEL_REPOSITORY)")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _size(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def _accuracy(metrics: dict[str, float]) -> tuple[str, float] | None:
    for key in ACCURACY_KEYS:
        if key in metrics:
            return key, metrics[key]
    return None


def versions(repository: Path) -> list[dict[str, Any]]:
    """Every version of every model under `repository`, checked (config, files and their SHA-256).

    Args:
        repository: the repository root.

    Returns:
        One entry per version, oldest first within each model: model, version, quantization,
        accuracy (and which metric it is), bytes on disk, created_at, source, and `problem` (empty when
        the version's files match its config).
    """
    found = []
    models = sorted(p.name for p in repository.iterdir() if p.is_dir()) if repository.is_dir() else []
    for model in models:
        for version in version_dirs(repository, model):
            directory = repository / model / version
            entry: dict[str, Any] = {"model": model, "version": version, "bytes": _size(directory), "problem": ""}
            try:
                config = read_version(directory, model)
            except RepositoryError as exc:
                found.append({**entry, "problem": str(exc)})
                continue
            accuracy = _accuracy(config.metrics)
            found.append(
                {
                    **entry,
                    "quantization": config.quantization or "",
                    "accuracy": accuracy[1] if accuracy else None,
                    "accuracy_metric": accuracy[0] if accuracy else "",
                    "created_at": config.created_at,
                    "source": str(config.data.get("source", "")),
                    "metrics": config.metrics,
                }
            )
    return found


def _size_text(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"


def run(args: argparse.Namespace, repository: Path) -> int:
    """Print the versions in `repository` as a table or JSON.

    Returns:
        0; 1 if the repository holds no version at all.
    """
    entries = versions(repository)
    if args.json:
        sys.stdout.write(json.dumps({"repository": str(repository), "versions": entries}, indent=2) + "\n")
    elif entries:
        rows = [
            (
                e["model"],
                e["version"],
                e.get("quantization") or "-",
                f"{e['accuracy']:.2%}" if e.get("accuracy") is not None else "-",
                _size_text(e["bytes"]),
                e.get("created_at", "-"),
                e["problem"] or e.get("source") or "-",
            )
            for e in entries
        ]
        headers = ("MODEL", "VERSION", "QUANTIZED", "ACCURACY", "SIZE", "CREATED", "SOURCE (or what is wrong)")
        sys.stdout.write(format_table(headers, rows) + "\n")
    if not entries:
        sys.stderr.write(f"maas models list: no model versions under {repository}\n")
        return 1
    return 0
