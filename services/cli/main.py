"""The `maas` command line."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from importlib.metadata import version as package_version
from pathlib import Path

import shtab

from services.bench.run import SECTIONS
from services.cli import connection, delivery, health, infer, listing, registry, status
from services.cli.up import up
from services.common.repository import CONFIG_FILE, ONNXRUNTIME, version_dirs
from services.common.settings import REPO_ROOT, ProcessSettings, ServiceSettings
from services.text.recipe import Recipe as TextRecipe
from services.text.spec import MODEL_NAME as TEXT_MODEL
from services.transformer.spec import EMBED_MODEL, SENTIMENT_MODEL
from services.vision.data import DEFAULT_DATA_DIR as VISION_DATA_DIR
from services.vision.recipe import Recipe as VisionRecipe
from services.vision.spec import MODEL_NAME as VISION_MODEL

QUANTIZATION_SCHEMES = {"int8": "dynamic_int8"}
ONNX_EXPORTS = (VISION_MODEL, TEXT_MODEL, EMBED_MODEL, SENTIMENT_MODEL)
COMPLETION_SHELLS = ("bash", "zsh", "tcsh")
BENCH_MODULES = ("matplotlib", "tqdm")
"""What `maas bench` needs beyond the base install (its `[bench]` extra)."""


def _repository_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repository", type=Path, help="repository root (default: MAAS_MODEL_REPOSITORY)")
    parser.add_argument("--if-missing", action="store_true", help="do nothing if the model has a version already")


def _quantize_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quantize",
        choices=sorted(QUANTIZATION_SCHEMES),
        help="instead: publish the newest fp32 version again as a version quantized at load "
        "(int8: dynamic int8 LSTM/Linear layers), with its measured accuracy",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maas", description="Model as a service: run and operate maas.")
    parser.add_argument("--version", action="version", version=f"maas {package_version('maas')}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run one service in the foreground until SIGTERM or Ctrl-C")
    run.add_argument("service", choices=sorted([*registry.RUNNABLE, "ray"]), help="`ray`: every model service on Ray")
    run.add_argument("--host", help="address to bind (default: the service's setting, 127.0.0.1)")
    run.add_argument("--port", type=int, help="gRPC port (default: the service's setting; 0 picks one)")

    start = commands.add_parser("up", help="start every service on this machine; Ctrl-C drains and stops them")
    start.add_argument("--grace", type=float, default=15.0, help="seconds each service gets to drain on stop")
    start.add_argument(
        "--runtime", choices=["grpc", "ray"], default="grpc", help="model services as processes, or on a local Ray"
    )

    serve = commands.add_parser(
        "serve", help="serve your own model class (module:Class) like a maas service, until SIGTERM or Ctrl-C"
    )
    serve.add_argument(
        "model", help="the model class, e.g. my_package.my_module:MyModel (see services/common/model.py)"
    )
    serve.add_argument("--repository", type=Path, help="model repository root (default: MAAS_MODEL_REPOSITORY)")
    serve.add_argument("--name", help="name to serve it under (default: the class's `name`); settings: MAAS_<NAME>_*")
    serve.add_argument("--app-dir", type=Path, default=Path(), help="directory to import the module from (default: .)")
    serve.add_argument("--runtime", choices=["grpc", "ray"], default="grpc", help="its own process, or on a local Ray")
    serve.add_argument("--host", help="address to bind (default: MAAS_<NAME>_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="gRPC port (default: MAAS_<NAME>_PORT, 50060; 0 picks one)")

    commands.add_parser(
        "generate", help="write the files generated from the services' specs (see services/cli/generate.py)"
    )

    serve_config = commands.add_parser("serve-config", help="write the Serve config (KubeRay serveConfigV2)")
    serve_config.add_argument("--output", type=Path, help="path (default: helm/maas/files/serve-config.yaml)")

    models = commands.add_parser(
        "models", help="the model repository: list it, put pretrained files into it, install it where services read it"
    )
    exports = models.add_subparsers(dest="target", required=True)
    listing.add_parser(exports)
    delivery.add_parsers(exports)
    _repository_options(exports.add_parser("export-tokenizer", help="MiniLM's tokenizer files -> tokenizer/"))
    minilm = exports.add_parser("export-minilm", help="all-MiniLM-L6-v2's encoder -> minilm_embed/")
    _repository_options(minilm)
    _quantize_option(minilm)
    minilm.add_argument("--no-progress", action="store_true", help="no progress bar")
    onnx = exports.add_parser(
        "export-onnx", help="a published torch version -> ONNX, published as the next version on ONNX Runtime"
    )
    onnx.add_argument("model", choices=ONNX_EXPORTS, help="the model to export")
    onnx.add_argument("--version", type=int, help="the version to export (default: the newest fp32 torch version)")
    onnx.add_argument("--repository", type=Path, help="repository root (default: MAAS_MODEL_REPOSITORY)")
    onnx.add_argument("--if-missing", action="store_true", help="do nothing if the model has an ONNX version already")

    train = commands.add_parser("train", help="train a model and publish it as the repository's next version")
    trainers = train.add_subparsers(dest="target", required=True)
    vision = trainers.add_parser("vision", help="the Fashion-MNIST CNN (fashion_cnn)")
    vision.add_argument("--epochs", type=int, help=f"passes over the training set (default {VisionRecipe.epochs})")
    vision.add_argument("--seed", type=int, default=VisionRecipe.seed, help="random seed")
    vision.add_argument("--train-limit", type=int, default=0, help="train on this many images only (quick runs)")
    vision.add_argument("--data-dir", type=Path, default=VISION_DATA_DIR, help="directory with the idx .gz files")
    vision.add_argument(
        "--prune",
        type=float,
        metavar="FRACTION",
        help="instead: remove this share of each layer's channels and hidden units (by magnitude) from the newest "
        "fp32 version, fine-tune briefly (--epochs 5 unless given) and publish the smaller network",
    )
    text = trainers.add_parser("text", help="the review LSTM over WordPiece ids (review_lstm)")
    text.add_argument("--epochs", type=int, default=TextRecipe.epochs, help="passes over the training reviews")
    text.add_argument("--seed", type=int, default=TextRecipe.seed, help="random seed")
    text.add_argument("--train-limit", type=int, default=0, help="train on this many reviews only (quick runs)")
    transformer = trainers.add_parser("transformer", help="the sentiment head over MiniLM (minilm_sentiment)")
    transformer.add_argument("--train-limit", type=int, default=0, help="train on this many reviews only")
    for trainer in (text, transformer):
        _quantize_option(trainer)
    for trainer in (vision, text, transformer):
        _repository_options(trainer)
        trainer.add_argument("--no-progress", action="store_true", help="no progress bar")

    infer.add_parser(commands)
    health.add_parser(commands)
    status.add_parser(commands)

    completion = commands.add_parser("completion", help="print a shell completion script for maas")
    completion.add_argument("shell", choices=COMPLETION_SHELLS, help="e.g. `source <(maas completion bash)`")

    bench = commands.add_parser(
        "bench", help="measure: the built-in benchmarks (services it starts), or a running server (--address)"
    )
    bench.add_argument("--address", help="measure the server at host:port (e.g. a gateway) instead")
    bench.add_argument("--model", default="echo", help="with --address: the v2 model to load (default: echo)")
    bench.add_argument(
        "--input-file", type=Path, help='with --address: a REST inference request ({"inputs": [...]}) to send'
    )
    bench.add_argument("--concurrency", type=_counts, help="callers at once, comma-separated (default: 1,8,32)")
    bench.add_argument("--duration", type=float, help="measured seconds per load point (default: 5)")
    bench.add_argument("--section", action="append", choices=list(SECTIONS), help="built-in: only this section")
    bench.add_argument("--quick", action="store_true", help="half a second per load point: checks the harness")
    bench.add_argument("--output", type=Path, help="write the markdown report here (its other sections are kept)")
    bench.add_argument("--plots", type=Path, help="write a throughput/latency PNG per section into this folder")
    bench.add_argument("--repository", type=Path, help="model repository (default: MAAS_MODEL_REPOSITORY)")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    form = bench.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_const", const="json", dest="form", help="print the rows as JSON")
    form.add_argument("--csv", action="store_const", const="csv", dest="form", help="print the rows as CSV")
    connection.add_options(bench)
    return parser


def _has_version(repository: Path, model: str, matches: Callable[[dict], bool] | None = None) -> bool:
    """Whether `model` has a version whose config `matches` (None: any version at all)."""
    versions = version_dirs(repository, model)
    configs = (json.loads((repository / model / v / CONFIG_FILE).read_text()) for v in versions)
    return any(matches is None or matches(config) for config in configs)


def _make(args: argparse.Namespace) -> int:
    """`maas models ...` and `maas train ...`: make a model version unless --if-missing finds one.

    Imports happen here, per target: torch and transformers are heavy and absent from the
    tokenizer and gateway images.
    """
    repository = args.repository or ServiceSettings().model_repository
    scheme = QUANTIZATION_SCHEMES.get(getattr(args, "quantize", None) or "")
    progress = not getattr(args, "no_progress", False)
    matches: Callable[[dict], bool] | None = None
    if scheme:

        def matches(config: dict) -> bool:
            return config.get("quantization") == scheme

    if args.target == "export-tokenizer":
        from services.tokenizer.export import export_tokenizer as make
        from services.tokenizer.spec import MODEL_NAME
    elif args.target == "export-minilm":
        from services.transformer.spec import EMBED_MODEL as MODEL_NAME

        if scheme:
            from services.transformer.train import quantize_embed

            def make(repo: Path) -> Path:
                return quantize_embed(repo, scheme, progress=progress)
        else:
            from services.transformer.export import export_minilm as make
    elif args.target == "export-onnx":
        MODEL_NAME = args.model
        make = _onnx_exporter(args.model, args.version)

        def matches(config: dict) -> bool:
            return config.get("platform") == ONNXRUNTIME
    elif args.target == "vision":
        from services.vision.spec import MODEL_NAME

        if args.prune is not None:
            from services.vision.prune import FINE_TUNE, prune

            epochs = args.epochs or FINE_TUNE.epochs
            fine_tune = replace(FINE_TUNE, epochs=epochs, seed=args.seed, train_limit=args.train_limit)

            def make(repo: Path) -> Path:
                return prune(repo, args.prune, fine_tune=fine_tune, data_dir=args.data_dir, progress=progress)

            def matches(config: dict) -> bool:
                return "pruned_from" in config.get("data", {})
        else:
            from services.vision.train import train

            recipe = VisionRecipe(
                epochs=args.epochs or VisionRecipe.epochs, seed=args.seed, train_limit=args.train_limit
            )

            def make(repo: Path) -> Path:
                return train(recipe, repo, args.data_dir, progress=progress)
    elif args.target == "text":
        from services.text.spec import MODEL_NAME
        from services.text.train import quantize_version, train

        text_recipe = TextRecipe(epochs=args.epochs, seed=args.seed, train_limit=args.train_limit)

        def make(repo: Path) -> Path:
            return quantize_version(repo, scheme) if scheme else train(text_recipe, repo, progress=progress)
    else:
        from services.transformer.spec import SENTIMENT_MODEL as MODEL_NAME
        from services.transformer.train import Recipe, quantize_sentiment, train

        def make(repo: Path) -> Path:
            if scheme:
                return quantize_sentiment(repo, scheme, progress=progress)
            return train(Recipe(train_limit=args.train_limit), repo, progress=progress)

    if args.if_missing and _has_version(repository, MODEL_NAME, matches):
        return 0
    try:
        target = make(repository)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as exc:
        sys.stderr.write(f"maas: {exc}\n")
        return 1
    metrics = json.loads((target / CONFIG_FILE).read_text())["metrics"]
    accuracy = f" (test accuracy {metrics['test_accuracy']:.2%})" if "test_accuracy" in metrics else ""
    sys.stdout.write(f"published {target}{accuracy}\n")
    return 0


def _onnx_exporter(model: str, version: int | None) -> Callable[[Path], Path]:
    """The export of `model` to ONNX (imported here: it needs torch and onnx)."""
    if model == VISION_MODEL:
        from services.vision.train import export_onnx
    elif model == TEXT_MODEL:
        from services.text.train import export_onnx
    elif model == EMBED_MODEL:
        from services.transformer.train import export_embed_onnx as export_onnx
    else:
        from services.transformer.train import export_sentiment_onnx as export_onnx

    def make(repository: Path) -> Path:
        return export_onnx(repository, version)

    return make


def _serve(args: argparse.Namespace) -> int:
    """`maas serve module:Class`: the model class served like a built-in service, under either hosting."""
    from pydantic import ValidationError

    from services.common.spec import user_spec

    try:
        spec = user_spec(args.model, args.name or "", str(args.app_dir.resolve()))
    except (ImportError, ValueError) as exc:
        sys.stderr.write(f"maas serve: {exc}\n")
        return 1
    given = (("host", args.host), ("port", args.port), ("model_repository", args.repository))
    overrides = {key: value for key, value in given if value is not None}
    if args.runtime == "grpc":
        asyncio.run(registry.run_spec(spec, overrides))
        return 0
    from services.ray import environment

    environment.set_defaults(environment.TRANSPORT)
    from services.ray.host import run_ray

    try:
        settings = spec.read_settings(**overrides)
    except ValidationError as exc:
        sys.stderr.write(f"{spec.name}: {exc}\n")
        return 1
    asyncio.run(run_ray([(spec, settings)]))
    return 0


def _counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}': expected whole numbers separated by commas, e.g. 1,8,32") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"'{text}': concurrencies are at least 1")
    return counts


def _bench(args: argparse.Namespace, command: str) -> int:
    """`maas bench`: measure, print the rows, and write the report and charts where asked."""
    missing = [name for name in BENCH_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        sys.stderr.write(f"maas bench: {', '.join(missing)} missing; install maas with its [bench] extra\n")
        return 1
    from services.bench.report import as_text, plot, write_report
    from services.bench.settings import BenchConfig

    repository = args.repository or ServiceSettings().model_repository
    config = BenchConfig.quick(repository) if args.quick else BenchConfig(repository)
    config = replace(
        config,
        concurrencies=args.concurrency or config.concurrencies,
        duration=args.duration or config.duration,
    )
    if args.address:
        import grpc

        from services.bench.remote import measure, read_request

        try:
            request = read_request(args.input_file, args.model) if args.input_file else None
            sections = [
                asyncio.run(
                    measure(
                        args.address,
                        args.model,
                        config.concurrencies,
                        config.duration,
                        config.warmup,
                        request,
                        progress=not args.no_progress,
                        tls=connection.client_tls(args),
                        metadata=connection.metadata(args),
                    )
                )
            ]
        except (OSError, ValueError) as exc:
            sys.stderr.write(f"maas bench: {exc}\n")
            return 1
        except grpc.aio.AioRpcError as exc:
            sys.stderr.write(f"maas bench: {args.address}: {exc.code().name}: {exc.details()}\n")
            return 1
    else:
        from services.bench.run import run_bench

        sections = asyncio.run(run_bench(config, args.section or ()))
    sys.stdout.write(as_text(sections, args.form or "table") + "\n")
    for section in sections if args.plots else ():
        plot(section, args.plots / f"{section.slug}.png")
    if args.output:
        write_report(args.output, sections, command, REPO_ROOT)
        sys.stderr.write(f"wrote {args.output}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the `maas` command line.

    Args:
        argv: arguments without the program name; default `sys.argv[1:]`.

    Returns:
        The process exit status.
    """
    if os.getuid() == 0 and not ProcessSettings().allow_root:
        sys.stderr.write(
            "maas: refusing to run as root (uid 0): this image runs as uid 10001 "
            "(podman run --user 10001; on Kubernetes runAsUser: 10001)\n"
        )
        return 1
    args = _parser().parse_args(argv)
    if args.command == "models" and args.target in delivery.COMMANDS:
        return delivery.run(args)
    if args.command == "run" and args.service == "ray":
        from services.ray import environment

        environment.set_defaults(environment.TRANSPORT)
        from services.ray.host import run_ray

        asyncio.run(run_ray())
        return 0
    if args.command == "serve":
        return _serve(args)
    if args.command == "generate":
        from services.cli.generate import write_all

        for path in write_all():
            sys.stdout.write(f"wrote {path}\n")
        return 0
    if args.command == "serve-config":
        from services.common.settings import RaySettings
        from services.ray.serve_config import SERVE_CONFIG_FILE, render

        output = args.output or SERVE_CONFIG_FILE
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(render(RaySettings()), encoding="utf-8")
        sys.stdout.write(f"wrote {output}\n")
        return 0
    if args.command == "run":
        overrides = {key: value for key, value in (("host", args.host), ("port", args.port)) if value is not None}
        asyncio.run(registry.run_service(args.service, overrides))
        return 0
    if args.command == "models" and args.target == "list":
        return listing.run(args, args.repository or ServiceSettings().model_repository)
    if args.command in ("models", "train"):
        return _make(args)
    if args.command == "completion":
        sys.stdout.write(shtab.complete(_parser(), shell=args.shell))
        return 0
    if args.command == "bench":
        return _bench(args, " ".join(["maas", *(argv if argv is not None else sys.argv[1:])]))
    if args.command == "infer":
        return infer.infer(args)
    if args.command == "health":
        return health.run(args)
    if args.command == "status":
        return status.run(args)
    from services.gateway.routing import RoutingError

    with tempfile.TemporaryDirectory(prefix="maas-up-") as workdir:
        try:
            environment = registry.up_environment(Path(workdir))
        except RoutingError as exc:
            sys.stderr.write(f"maas up: {exc}\n")
            return 1
        hosts = {}
        if args.runtime == "ray":
            from services.ray.host import available_services

            hosts["ray"] = available_services()
        return asyncio.run(up(registry.up_groups(args.runtime), args.grace, environment, hosts))


if __name__ == "__main__":
    sys.exit(main())
