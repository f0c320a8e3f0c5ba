"""KServe 0.21 ModelServer for the peers benchmark: one maas model over KServe's v2 gRPC, as a KServe
user writes it (a `kserve.Model` whose `predict` runs one request).

Run with the kserve peer's Python (`scripts/peers.py kserve`):
`python scripts/peers/kserve_server.py MODEL VERSION_DIRECTORY GRPC_PORT HTTP_PORT THREADS`.
KServe binds every interface (`[::]`, `0.0.0.0`); the benchmark calls it on loopback only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve.protocol.grpc import grpc_predict_v2_pb2

# KServe registers the Open Inference Protocol messages under their canonical names, as the project's
# own stubs do, and protobuf refuses a second registration. The project's model code imports those
# stubs only for type annotations, so it is handed KServe's module under the stubs' name.
sys.modules["maas.inference.grpc_service_pb2"] = grpc_predict_v2_pb2

from services.bench.peers.models import load  # noqa: E402


class PeerModel(Model):
    """A maas model version behind KServe's data plane."""

    def __init__(self, name: str, directory: Path) -> None:
        super().__init__(name)
        self.directory = directory
        self.predict_arrays = None

    def load(self) -> bool:
        """Build the version with the project's model code."""
        self.predict_arrays = load(self.name, self.directory)
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        """Run one request's rows."""
        outputs = self.predict_arrays({tensor.name: tensor.as_numpy() for tensor in payload.inputs})
        tensors = [InferOutput(name, list(a.shape), "FP32", data=a) for name, a in outputs.items()]
        return InferResponse(response_id=payload.id, model_name=self.name, infer_outputs=tensors)


def main() -> None:
    """Serve the model until the process is stopped."""
    model, directory, grpc_port, http_port, threads = sys.argv[1:6]
    torch.set_num_threads(int(threads))
    served = PeerModel(model, Path(directory))
    served.load()
    ModelServer(grpc_port=int(grpc_port), http_port=int(http_port), workers=1).start([served])


if __name__ == "__main__":
    main()
