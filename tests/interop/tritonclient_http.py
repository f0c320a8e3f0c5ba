"""Stock tritonclient.http against the gateway's REST binding: every routed model and pipeline, binary
and JSON tensors, compression, and the statuses of bad calls; run as a separate process, like the
other stock-client scripts.

Prints one JSON object with what the client saw; exits non-zero on an unexpected error.

Usage: python tritonclient_http.py HOST:PORT MODEL [MODEL ...]
    (models among those of tritonclient_gateway.py)
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.http as triton
from samples import REVIEWS, sample_inputs
from tritonclient.utils import InferenceServerException


def inputs_of(model: str, binary: bool) -> tuple[list[triton.InferInput], str]:
    """The inputs of one model, binary or JSON, and the output to read back."""
    arrays, output = sample_inputs(model)
    inputs = []
    for name, array, datatype in arrays:
        value = triton.InferInput(name, list(array.shape), datatype)
        value.set_data_from_numpy(array, binary_data=binary)
        inputs.append(value)
    return inputs, output


def refused(call) -> dict:
    try:
        call()
    except InferenceServerException as exc:
        return {"status": exc.status(), "message": exc.message()}
    return {"status": "200", "message": ""}


def main(url: str, models: list[str]) -> int:
    client = triton.InferenceServerClient(url=url)
    seen: dict = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "server": client.get_server_metadata(),
        "index": client.get_model_repository_index(),
        "models": {},
    }
    for model in models:
        got = {}
        for binary in (True, False):
            inputs, output = inputs_of(model, binary)
            outputs = [triton.InferRequestedOutput(output, binary_data=binary)]
            result = client.infer(model, inputs, outputs=outputs, request_id=f"id-{model}")
            array = result.as_numpy(output)
            values = array.reshape(-1).tolist()
            if array.dtype == np.object_:
                values = [v.decode() if isinstance(v, bytes) else v for v in values]
            got["binary" if binary else "json"] = np.array(values, dtype=object).reshape(array.shape).tolist()
            got["shape"] = list(array.shape)
            got["id"] = result.get_response()["id"]
            got["version"] = result.get_response()["model_version"]
        inputs, output = inputs_of(model, True)
        compressed = client.infer(model, inputs, request_compression_algorithm="gzip").as_numpy(output)
        got["gzip_equal"] = bool(np.array_equal(compressed, client.infer(model, inputs).as_numpy(output)))
        got["ready"] = client.is_model_ready(model)
        got["inputs"] = [i["name"] for i in client.get_model_metadata(model).get("inputs", [])]
        seen["models"][model] = got
    seen["statistics"] = sorted({s["name"] for s in client.get_inference_statistics().get("model_stats", [])})
    image = triton.InferInput("IMAGE", [1, 1, 28, 28], "FP32")
    image.set_data_from_numpy(np.full((1, 1, 28, 28), 2.0, dtype=np.float32))
    seen["out_of_range"] = refused(lambda: client.infer("fashion_cnn", [image]))
    seen["unknown"] = refused(lambda: client.infer("no_such_model", inputs_of("echo", True)[0]))
    seen["unknown_version"] = refused(lambda: client.infer("echo", inputs_of("echo", True)[0], model_version="9"))
    seen["unknown_ready"] = client.is_model_ready("no_such_model")
    wrong = triton.InferInput("TEXT", [2], "BYTES")
    wrong.set_data_from_numpy(np.array(REVIEWS, dtype=np.object_))
    seen["wrong_input"] = refused(lambda: client.infer("fashion_cnn", [wrong]))
    print(json.dumps(seen))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
