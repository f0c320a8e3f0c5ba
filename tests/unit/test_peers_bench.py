"""Pieces of the peers benchmark that run without the peers: the models every system serves, batched
as Triton and Ray Serve batch them; the Triton repository it writes; the CPU meter; the summary."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from maas.inference import grpc_service_pb2 as pb
from services.bench.peers.cpu import seconds_between, tree_ticks
from services.bench.peers.models import load, predict_batch
from services.bench.peers.report import summary
from services.bench.peers.run import IN_PROCESS, Measurement, ModelRun, request_arrays
from services.bench.peers.systems import triton_repository
from services.common.codec import Tensor, decode_inputs, decode_outputs, encode_inputs
from services.common.repository import newest_version
from services.transformer.spec import EMBED_MODEL
from services.vision.spec import MODEL_NAME as VISION

ROOT = Path(__file__).resolve().parents[2]


def test_requests_batched_together_get_the_answers_they_get_alone(model_repository: Path):
    images = {"IMAGE": np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)}
    predict = load(VISION, newest_version(model_repository, VISION))
    alone = [predict({"IMAGE": images["IMAGE"][i : i + 1]}) for i in range(3)]
    together = predict_batch(predict, [{"IMAGE": images["IMAGE"][i : i + 1]} for i in range(3)])
    for one, batched in zip(alone, together, strict=True):
        np.testing.assert_allclose(batched["PROBABILITIES"], one["PROBABILITIES"], atol=1e-6)


def test_sequences_of_different_lengths_are_padded_and_answer_as_alone(model_repository: Path):
    encode = load(EMBED_MODEL, newest_version(model_repository, EMBED_MODEL))
    short = {"INPUT_IDS": np.array([[101, 7592, 102]]), "ATTENTION_MASK": np.ones((1, 3), dtype=np.int64)}
    long = request_arrays(EMBED_MODEL)
    together = predict_batch(encode, [short, long])
    np.testing.assert_allclose(together[0]["EMBEDDING"], encode(short)["EMBEDDING"], atol=1e-5)
    np.testing.assert_allclose(together[1]["EMBEDDING"], encode(long)["EMBEDDING"], atol=1e-5)


def test_triton_config_declares_the_maas_tensors_without_the_batch_dimension(tmp_path: Path):
    root = triton_repository(EMBED_MODEL, Path("/models/minilm_embed/1"), tmp_path)
    config = (root / EMBED_MODEL / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and "max_batch_size: 32" in config
    assert '{ name: "INPUT_IDS", data_type: TYPE_INT64, dims: [-1] }' in config
    assert '{ name: "EMBEDDING", data_type: TYPE_FP32, dims: [384] }' in config
    assert 'string_value: "/models/minilm_embed/1"' in config
    assert (root / EMBED_MODEL / "1" / "model.py").read_text().startswith('"""Triton Python backend model')


def test_cpu_of_a_process_tree_counts_its_children(tmp_path: Path):
    done = tmp_path / "burnt"
    burn = (
        "import pathlib, time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass\n"
        f"pathlib.Path({str(done)!r}).touch()\ntime.sleep(60)"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {burn!r}])"]
    )
    try:
        before = tree_ticks([parent.pid])
        deadline = time.monotonic() + 60
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        after = tree_ticks([parent.pid])
        assert len(after) == 2, "the parent and the child it started"
        assert 0.45 <= seconds_between(before, after) <= 2.0
    finally:
        for pid in sorted(tree_ticks([parent.pid]), reverse=True):
            os.kill(pid, signal.SIGTERM)
        parent.wait()


def test_summary_compares_maas_with_each_system_per_client():
    run = ModelRun(VISION, "1", "IMAGE float32 [1, 1, 28, 28]")
    for system, rate in ((IN_PROCESS, 8000.0), ("maas grpc", 2000.0), ("Triton 2.51", 1000.0)):
        for client in ("-",) if system == IN_PROCESS else ("perf_analyzer", "loadgen"):
            run.measurements.append(Measurement(VISION, system, client, 16, rate, 1.0, 2.0, 3.0, 0.5))
    lines = summary(run)
    assert "| maas grpc | 2,000 | 3.0 | 0.50 | 2,000 | 3.0 | 0.50 |" in lines
    assert "- perf_analyzer: maas grpc's req/s are 2.00x Triton 2.51's, and 0.25x the in-process model's " in "\n".join(
        lines
    )


def test_the_ray_serve_peer_answers_model_infer_with_the_model_outputs(model_repository: Path):
    spec = importlib.util.spec_from_file_location("serve_app", ROOT / "scripts" / "peers" / "serve_app.py")
    serve_app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve_app)
    predict = load(VISION, newest_version(model_repository, VISION))
    image = np.random.default_rng(1).random((1, 1, 28, 28), dtype=np.float32)
    request = pb.ModelInferRequest(model_name=VISION, id="peer")
    encode_inputs(request, [Tensor("IMAGE", "FP32", image)])
    inputs = {name: tensor.array for name, tensor in decode_inputs(request).items()}
    [outputs] = predict_batch(predict, [inputs])
    response = serve_app.infer_response(VISION, request, outputs)
    assert (response.model_name, response.id) == (VISION, "peer")
    expected = predict({"IMAGE": image})["PROBABILITIES"]
    np.testing.assert_allclose(decode_outputs(response)["PROBABILITIES"].array, expected, atol=1e-6)
