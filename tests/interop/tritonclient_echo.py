"""Stock tritonclient against a maas server's `echo`; run as a separate process.

tritonclient registers the same `inference.*` protobuf symbols as our stubs, so it cannot share a
process with them. Prints one JSON object with what the client saw; exits non-zero on any error.

Usage: python tritonclient_echo.py HOST:PORT
"""

from __future__ import annotations

import json
import sys

import ml_dtypes
import numpy as np
import tritonclient.grpc as triton

INPUTS = {
    "BOOL": np.array([[True, False]]),
    "INT8": np.array([-128, 127], dtype=np.int8),
    "UINT16": np.array([0, 65535], dtype=np.uint16),
    "INT32": np.array([[1, -2, 3]], dtype=np.int32),
    "INT64": np.array([2**62, -1], dtype=np.int64),
    "UINT64": np.array([2**64 - 1], dtype=np.uint64),
    "FP16": np.array([0.5, -1.25], dtype=np.float16),
    "FP32": np.array([[1.5, -2.5], [3.25, 1e30]], dtype=np.float32),
    "FP64": np.array([np.pi], dtype=np.float64),
    "BF16": np.array([1.0, -0.5, 256.0, 3.0e38], dtype=ml_dtypes.bfloat16),
    "BYTES": np.array([b"", "caf\u00e9 \u6f22\u5b57".encode(), b"\xff\x00"], dtype=np.object_),
}


def main(url: str) -> int:
    client = triton.InferenceServerClient(url=url)
    inputs = []
    for datatype, array in INPUTS.items():
        tensor = triton.InferInput(f"IN_{datatype}", list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    outputs = [triton.InferRequestedOutput(f"IN_{datatype}") for datatype in INPUTS]
    result = client.infer("echo", inputs, outputs=outputs, request_id="interop-1")
    matched = {}
    for datatype, array in INPUTS.items():
        got = result.as_numpy(f"IN_{datatype}")
        if datatype == "BYTES":
            matched[datatype] = got.shape == array.shape and list(got) == list(array)
        else:
            matched[datatype] = got.shape == array.shape and bool(np.array_equal(got, array))
    metadata = client.get_model_metadata("echo", as_json=True)
    response = result.get_response()
    print(
        json.dumps(
            {
                "live": client.is_server_live(),
                "ready": client.is_server_ready(),
                "model_ready": client.is_model_ready("echo"),
                "metadata": {
                    "name": metadata["name"],
                    "versions": metadata["versions"],
                    "platform": metadata["platform"],
                },
                "server": client.get_server_metadata(as_json=True)["name"],
                "matched": matched,
                "id": response.id,
                "model_version": response.model_version,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
