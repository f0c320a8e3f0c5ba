"""`maas models install|wait`: deliver a model repository to where the services read it (Kubernetes
init containers and the chart's Job run these from the model-repository image)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services.common.delivery import MARKER_FILE, install, wait_for_install
from services.common.repository import RepositoryError

COMMANDS = ("install", "wait")


def add_parsers(models: argparse._SubParsersAction) -> None:
    """Add `install` and `wait` to `maas models`."""
    copy = models.add_parser(
        "install", help="copy a model repository into place, checking each file against its recorded SHA-256"
    )
    copy.add_argument("source", type=Path, help="the repository to copy")
    copy.add_argument("destination", type=Path, help="where the services read it (made to match the source)")
    copy.add_argument(
        "--marker", help=f"write this to DESTINATION/{MARKER_FILE} last (what `maas models wait` waits for)"
    )
    wait = models.add_parser("wait", help="wait until `maas models install --marker` has finished in a repository")
    wait.add_argument("repository", type=Path, help="the repository being installed")
    wait.add_argument("--marker", required=True, help="the marker the install writes")
    wait.add_argument("--timeout", type=float, default=600.0, help="seconds to wait before failing")


def run(args: argparse.Namespace) -> int:
    """Run `maas models install` or `maas models wait`; print one line saying what happened.

    Returns:
        0 on success, 1 when the repository is missing or unsound, the destination cannot be written, or
        the wait timed out.
    """
    try:
        if args.target == "install":
            installed = install(args.source, args.destination, args.marker)
            models = len({entry.split("/")[0] for entry in installed})
            sys.stdout.write(
                f"installed {len(installed)} versions of {models} models from {args.source} into {args.destination}\n"
            )
        else:
            wait_for_install(args.repository, args.marker, args.timeout)
            sys.stdout.write(f"{args.repository}: model repository {args.marker} is installed\n")
    except (RepositoryError, TimeoutError, OSError) as exc:
        sys.stderr.write(f"maas models {args.target}: {exc}\n")
        return 1
    return 0
