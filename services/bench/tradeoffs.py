"""The optimization trade-offs: per model, its fp32 torch version beside int8, ONNX Runtime and pruned
versions, from one run: test accuracy, in-process latency at batch 1 and 32, served req/s at concurrency
1 and 16, and the size of the weights on disk. Names the best default version per model by a stated rule."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import torch

from maas.inference import grpc_service_pb2 as v2pb
from maas.inference import grpc_service_pb2_grpc
from services.bench.loadgen import LoadResult, closed_loop, in_process, sequence_requests
from services.bench.report import Row, Section
from services.bench.settings import BenchConfig
from services.cli.processes import running
from services.common.codec import Tensor, encode_inputs
from services.common.model import SharedPool, Version
from services.common.onnx_runtime import is_onnx
from services.common.repository import (
    MODEL_FILE,
    ModelFile,
    VersionConfig,
    newest_source,
    publish_quantized,
    read_version,
    version_dirs,
)
from services.common.reviews import reviews
from services.common.torch_weights import DYNAMIC_INT8
from services.tokenizer.model import newest_tokenizer
from services.vision.data import load_split

CONCURRENCIES = (1, 16)
BATCHES = (1, 32)
REVIEWS = 200
ACCURACY_SLACK = 0.005
COSINE_FLOOR = 0.999
ROUNDS = 3
MIN_GAIN = 1.10
"""How many times fp32's req/s at concurrency 16 another version must serve to replace it as the default:
on this shared machine a smaller lead is within run-to-run noise, and fp32 is the version every other
one is made from."""


@dataclass(frozen=True)
class Model:
    """A model of the table: its service, class, and the settings its class reads."""

    name: str
    service: str
    cls: str
    settings: Callable[[Path], Any]
    int8: bool


def _models() -> list[Model]:
    from services.text.spec import TextSettings
    from services.transformer.spec import TransformerSettings
    from services.vision.spec import VisionSettings

    return [
        Model(
            "fashion_cnn",
            "vision",
            "services.vision.model:Classifier",
            lambda r: VisionSettings(model_repository=r),
            False,
        ),
        Model(
            "review_lstm", "text", "services.text.model:Classifier", lambda r: TextSettings(model_repository=r), True
        ),
        Model(
            "minilm_embed",
            "transformer",
            "services.transformer.model:Embedder",
            lambda r: TransformerSettings(model_repository=r),
            True,
        ),
        Model(
            "minilm_sentiment",
            "transformer",
            "services.transformer.model:SentimentClassifier",
            lambda r: TransformerSettings(model_repository=r),
            True,
        ),
    ]


def variants(repository: Path, model: str) -> dict[str, str]:
    """Kind ("fp32 torch", "int8", "ONNX Runtime", "pruned") -> version, for the versions of `model` made
    from its newest fp32 torch version that is not itself pruned."""
    configs = {v: read_version(repository / model / v, model) for v in version_dirs(repository, model)}
    sources = [
        v for v, c in configs.items() if c.quantization is None and not is_onnx(c) and "pruned_from" not in c.data
    ]
    if not sources:
        return {}
    source = sources[-1]
    origin = f"{model}/{source}"
    found = {"fp32 torch": source}
    for version, config in configs.items():
        if config.quantization == DYNAMIC_INT8 and config.data.get("quantized_from") == origin:
            found["int8"] = version
        elif is_onnx(config) and config.data.get("exported_from") == origin:
            found["ONNX Runtime"] = version
        elif config.data.get("pruned_from") == origin:
            found["pruned"] = version
    return found


def weights_bytes(repository: Path, model: str, config: VersionConfig) -> int:
    """Bytes on disk of what a version loads: its files, and the encoder version a sentiment head runs on."""
    total = sum((repository / model / str(config.version) / name).stat().st_size for name in config.files)
    encoder = config.architecture.get("encoder")
    if encoder and not is_onnx(config):
        directory = repository / encoder
        total += sum((directory / name).stat().st_size for name in read_version(directory, directory.parent.name).files)
    return total


def _link_or_copy(source: str, target: str) -> None:
    if os.path.basename(source) == MODEL_FILE:
        shutil.copy2(source, target)
    else:
        os.link(source, target)


def _evaluation(repository: Path, model: str, limit: int) -> tuple[list[dict[str, np.ndarray]], np.ndarray | None]:
    """Labelled test inputs in requests of 32 rows: the 10,000 test images, or the first REVIEWS test reviews
    (the first `limit` if set)."""
    if model == "fashion_cnn":
        images, labels = load_split("test")
        count = limit or len(images)
        return [{"IMAGE": images[s : s + 32]} for s in range(0, count, 32)], labels[:count]
    texts, labels = reviews("testing_data")
    count = min(limit or REVIEWS, REVIEWS)
    ids, mask, _ = newest_tokenizer(repository).encode_arrays(texts[:count])
    batches = [{"INPUT_IDS": ids[s : s + 32], "ATTENTION_MASK": mask[s : s + 32]} for s in range(0, count, 32)]
    return batches, None if model == "minilm_embed" else np.asarray(labels[:count])


@dataclass
class Measured:
    """One row of the table."""

    kind: str
    version: str
    quality: float
    batch_ms: dict[int, float]
    served: dict[int, float]
    weights: int


def _load(model: Model, repository: Path, version: str) -> Any:
    from services.common.spec import import_object

    directory = repository / model.name / version
    config = read_version(directory, model.name)
    return import_object(model.cls).load(
        Version(model.name, directory, config, "cpu", model.settings(repository), SharedPool())
    )


def _in_process(model: Model, repository: Path, found: dict[str, str], config: BenchConfig) -> dict[str, dict]:
    """Quality (accuracy, or minimum cosine to fp32 for embeddings) and latency per batch size, in process."""
    batches, labels = _evaluation(repository, model.name, config.examples)
    results: dict[str, dict] = {}
    reference = None
    for kind, version in found.items():
        loaded = _load(model, repository, version)
        prepared = [loaded.prepare(b, {}) for b in batches]
        outputs = np.concatenate([next(iter(loaded.predict(b).values())) for b in prepared])
        if labels is not None:
            quality = float((outputs.argmax(1) == labels).mean())
        else:
            reference = outputs if reference is None else reference
            quality = float(((outputs * reference).sum(1)).min())
        latency = {}
        for size in BATCHES:
            rows = loaded.prepare({name: np.concatenate([b[name] for b in batches])[:size] for name in batches[0]}, {})
            latency[size] = in_process(lambda r=rows, m=loaded: m.predict(r), config.duration, config.warmup).p50_ms
        close = getattr(loaded, "close", None)
        if close is not None:
            close()
        results[kind] = {"quality": quality, "latency": latency}
    return results


def _requests(model: str, repository: Path, version: str) -> list[v2pb.ModelInferRequest]:
    if model == "fashion_cnn":
        images, _ = load_split("test")
        requests = []
        for image in images[:64]:
            request = v2pb.ModelInferRequest(model_name=model, model_version=version)
            encode_inputs(request, [Tensor("IMAGE", "FP32", image[None])])
            requests.append(request)
        return requests
    texts, _ = reviews("testing_data")
    ids, mask, _ = newest_tokenizer(repository).encode_arrays(texts[:64])
    return sequence_requests(model, ids, mask, version)


async def _served(model: Model, repository: Path, found: dict[str, str], config: BenchConfig) -> dict[str, dict]:
    """The load result per kind and concurrency, each kind's requests pinned to its version on one service
    process: the round with the median req/s of ROUNDS rounds that take every kind in turn, so that load
    from elsewhere on the machine falls on every kind alike."""
    env = {
        "MAAS_MODEL_REPOSITORY": str(repository),
        f"MAAS_{model.service.upper()}_METRICS_PORT": "0",
    }
    rounds: dict[str, dict[int, list[LoadResult]]] = {kind: {c: [] for c in CONCURRENCIES} for kind in found}
    async with running(model.service, "--port", "0", env=env) as address, grpc.aio.insecure_channel(address) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        requests = {kind: _requests(model.name, repository, version) for kind, version in found.items()}
        for _ in range(ROUNDS):
            for kind in found:
                for concurrency in CONCURRENCIES:
                    position = iter(range(1 << 62))

                    async def call(requests=requests[kind], position=position) -> object:
                        return await stub.ModelInfer(requests[next(position) % len(requests)])

                    result = await closed_loop(call, concurrency, config.duration, config.warmup)
                    rounds[kind][concurrency].append(result)
    return {
        kind: {c: sorted(results, key=lambda r: r.throughput)[len(results) // 2] for c, results in by.items()}
        for kind, by in rounds.items()
    }


def best_default(rows: list[Measured], cosine: bool) -> tuple[Measured, str]:
    """The version to serve by default, and why: among versions whose quality is within ACCURACY_SLACK of
    fp32's (cosine to fp32 at least COSINE_FLOOR for embeddings), the one with the most req/s at
    concurrency 16 if that is at least MIN_GAIN times fp32's, else fp32. The reason gives every version's
    req/s at concurrency 16, which leads at concurrency 1 and in process at each batch size, and the
    versions left out on quality."""
    fp32 = next(r for r in rows if r.kind == "fp32 torch")
    eligible = [
        r for r in rows if (r.quality >= COSINE_FLOOR if cosine else r.quality >= fp32.quality - ACCURACY_SLACK)
    ]
    leader = max(eligible, key=lambda r: r.served[16])
    best = leader if leader.served[16] >= MIN_GAIN * fp32.served[16] else fp32
    others = [r for r in eligible if r is not best]
    reason = f"{best.served[16]:,.0f} req/s at concurrency 16"
    if others:
        reason += " against " + ", ".join(f"{r.kind} {r.served[16]:,.0f}" for r in others)
    if leader is not best:
        reason += f" ({leader.served[16] / fp32.served[16]:.2f}x fp32's: under the {MIN_GAIN:.2f}x a version must gain)"
    lone = max(eligible, key=lambda r: r.served[1])
    fastest = {size: min(eligible, key=lambda r, size=size: r.batch_ms[size]) for size in BATCHES}
    reason += (
        f"; at concurrency 1 {lone.kind} leads ({lone.served[1]:,.0f} req/s); fastest in process: "
        + ", ".join(f"{r.kind} at batch {size} ({r.batch_ms[size]:.2f} ms)" for size, r in fastest.items())
        + "; "
        + (
            f"cosine to fp32 ≥ {best.quality:.4f}"
            if cosine
            else f"accuracy {best.quality:.2%} vs fp32's {fp32.quality:.2%}"
        )
    )
    left_out = [r for r in rows if r not in eligible]
    if left_out:
        floor = f"cosine floor {COSINE_FLOOR}" if cosine else f"{ACCURACY_SLACK * 100:.1f} points under fp32's"
        shown = ", ".join(f"{r.kind} ({r.quality:.4f})" if cosine else f"{r.kind} ({r.quality:.2%})" for r in left_out)
        reason += f"; below the quality bar ({floor}): {shown}"
    return best, reason


async def tradeoffs_section(config: BenchConfig) -> Section:
    """Measure every model's optimized versions side by side (see the module docstring)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    table = [
        "| model | version | test accuracy | in-process p50 ms, batch 1 | batch 32 | served req/s, c1 | c16 "
        "| weights MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    findings = []
    load_rows: list[Row] = []
    try:
        with tempfile.TemporaryDirectory(prefix="maas-tradeoffs-") as scratch:
            repository = Path(scratch)
            for name in os.listdir(config.repository):
                if (config.repository / name).is_dir():
                    shutil.copytree(config.repository / name, repository / name, copy_function=_link_or_copy)
            for model in _models():
                found = variants(repository, model.name)
                if not found:
                    continue
                if model.int8 and "int8" not in found:
                    source = newest_source(repository, model.name)
                    int8 = publish_quantized(repository, model.name, DYNAMIC_INT8, lambda d, c: ({}, {}))
                    assert read_version(int8, model.name).data["quantized_from"] == f"{model.name}/{source.name}"
                    found["int8"] = int8.name
                policy = ModelFile(
                    version_policy="specific:" + ",".join(found.values()), default_version=found["fp32 torch"]
                )
                (repository / model.name / MODEL_FILE).write_text(policy.model_dump_json(), encoding="utf-8")
                measured = _in_process(model, repository, found, config)
                served = await _served(model, repository, found, config)
                rows = [
                    Measured(
                        kind,
                        version,
                        measured[kind]["quality"],
                        measured[kind]["latency"],
                        {concurrency: result.throughput for concurrency, result in served[kind].items()},
                        weights_bytes(
                            repository, model.name, read_version(repository / model.name / version, model.name)
                        ),
                    )
                    for kind, version in found.items()
                ]
                load_rows += [
                    Row(f"{model.name} {kind} (v{version})", result)
                    for kind, version in found.items()
                    for result in served[kind].values()
                ]
                cosine = model.name == "minilm_embed"
                for row in rows:
                    quality = f"cos ≥ {row.quality:.4f}" if cosine else f"{row.quality:.2%}"
                    table.append(
                        f"| {model.name} | {row.kind} (v{row.version}) | {quality} | {row.batch_ms[1]:.2f} "
                        f"| {row.batch_ms[32]:.2f} | {row.served[1]:,.0f} | {row.served[16]:,.0f} "
                        f"| {row.weights / 1e6:.2f} |"
                    )
                best, reason = best_default(rows, cosine)
                findings.append(f"{model.name}: best default here is {best.kind} (v{best.version}): {reason}.")
    finally:
        torch.set_num_threads(threads)
    section = Section(
        title="Optimization trade-offs (fp32 torch, int8, ONNX Runtime, pruned)",
        note=(
            "Per model, the versions made from its newest fp32 torch version, side by side in one run: fp32 torch, "
            "int8 (dynamic int8 LSTM/Linear layers, quantized at load; the CNN has no int8 path), ONNX Runtime "
            "(`maas models export-onnx`), pruned (`maas train vision --prune 0.5`; the CNN only). Test accuracy: "
            f"the 10,000 test images; the first {REVIEWS} test reviews for the text models (for minilm_embed, the "
            "smallest cosine to fp32's embedding over them). In process: the model class's `predict` on one "
            "thread (torch and ONNX Runtime), p50 ms per call of 1 and of 32 rows. Served: one service process, "
            "1 thread, dynamic batching up to 32, closed loop of single-row requests (Fashion-MNIST test images, "
            f"fine-food reviews) pinned to the version; the median of {ROUNDS} rounds that take the versions in "
            "turn. Weights: bytes on disk of what the version loads (int8 "
            "versions hold the fp32 file and quantize at load; a torch sentiment head counts its encoder). Best "
            f"default: the most req/s at concurrency 16 among versions within {ACCURACY_SLACK * 100:.1f} points "
            f"of fp32's accuracy (cosine ≥ {COSINE_FLOOR} for embeddings), if it is at least {MIN_GAIN:.2f}x "
            "fp32's (a smaller lead is within run-to-run noise here); else fp32 torch."
        ),
        rows=load_rows,
        findings=findings,
    )
    if config.examples:
        section.note += f" Quick run: quality over the first {config.examples} test examples only."
    section.table = table
    return section
