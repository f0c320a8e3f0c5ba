"""Stock tritonclient against the gateway: every routed model and pipeline; run as a separate process.

Prints one JSON object with what the client saw; exits non-zero on an unexpected error.

Usage: python tritonclient_gateway.py HOST:PORT MODEL [MODEL ...]
    (models among: echo tokenizer fashion_cnn minilm_embed minilm_sentiment review_lstm
    review_sentiment_minilm review_sentiment_lstm text_embed)
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as triton
from samples import sample_inputs
from tritonclient.utils import InferenceServerException


def tensor(name: str, array: np.ndarray, datatype: str) -> triton.InferInput:
    value = triton.InferInput(name, list(array.shape), datatype)
    value.set_data_from_numpy(array)
    return value


def inputs_of(model: str) -> tuple[list[triton.InferInput], str]:
    """The inputs of one model and the output to read back."""
    arrays, output = sample_inputs(model)
    return [tensor(*item) for item in arrays], output


def main(url: str, models: list[str]) -> int:
    client = triton.InferenceServerClient(url=url)
    seen: dict = {
        "server": client.get_server_metadata(as_json=True),
        "index": client.get_model_repository_index(as_json=True).get("models", []),
        "models": {},
    }
    for model in models:
        inputs, output = inputs_of(model)
        result = client.infer(model, inputs, request_id=f"id-{model}")
        array = result.as_numpy(output)
        response = result.get_response()
        seen["models"][model] = {
            "ready": client.is_model_ready(model),
            "inputs": [i["name"] for i in client.get_model_metadata(model, as_json=True).get("inputs", [])],
            "id": response.id,
            "version": response.model_version,
            "shape": list(array.shape),
            "value": array.tolist() if array.dtype != np.object_ else [v.decode() for v in array],
        }
    stats = client.get_inference_statistics(as_json=True).get("model_stats", [])
    seen["statistics"] = sorted({s["name"] for s in stats})
    try:
        client.infer("fashion_cnn", [tensor("IMAGE", np.full((1, 1, 28, 28), 2.0, dtype=np.float32), "FP32")])
    except InferenceServerException as exc:
        seen["error"] = {"status": exc.status(), "message": exc.message()}
    try:
        client.infer("no_such_model", inputs_of("echo")[0])
    except InferenceServerException as exc:
        seen["unknown"] = {"status": exc.status(), "message": exc.message()}
    print(json.dumps(seen))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
