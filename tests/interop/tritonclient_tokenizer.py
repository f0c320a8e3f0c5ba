"""Stock tritonclient against the tokenizer service; run as a separate process.

Prints one JSON object with the ids, masks and type ids the client read back.

Usage: python tritonclient_tokenizer.py HOST:PORT TEXT [TEXT ...]
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as triton


def main(url: str, texts: list[str]) -> int:
    client = triton.InferenceServerClient(url=url)
    text = triton.InferInput("TEXT", [len(texts)], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
    result = client.infer("tokenizer", [text], parameters={"max_length": 32})
    ids = result.as_numpy("INPUT_IDS")
    print(
        json.dumps(
            {
                "ready": client.is_model_ready("tokenizer"),
                "inputs": client.get_model_metadata("tokenizer", as_json=True)["inputs"],
                "dtype": str(ids.dtype),
                "input_ids": ids.tolist(),
                "attention_mask": result.as_numpy("ATTENTION_MASK").tolist(),
                "token_type_ids": result.as_numpy("TOKEN_TYPE_IDS").tolist(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
