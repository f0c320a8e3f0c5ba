"""The RPCs a service answers under the ray hosting, read from its proto descriptors.

One list makes both ends: the replica's methods (named like the RPCs, for the front's calls and for
Serve's own gRPC proxy) and the front's servicers that forward each RPC to the replicas.
"""

from __future__ import annotations

from dataclasses import dataclass

from maas.inference import grpc_service_pb2
from services.common.spec import ServiceSpec

V2_SERVICE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
V2_SERVICER_FUNCTION = "maas.inference.grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server"
NOT_FORWARDED = frozenset({"RepositoryModelLoad", "RepositoryModelUnload"})
"""Under the ray hosting, the versions a deployment serves are its `user_config` (every replica, also
those the autoscaler adds later), not a call to one replica."""
STATUS = "Status"
"""What the front asks a replica for its `maas.common.v1.StatusService` answer (the front gathers every
running replica's, so it is not among the forwarded RPCs)."""
MODEL_FIELDS = ("model_name", "name")
"""Request fields that name the model a v2 call is about, for metrics."""


@dataclass(frozen=True)
class Rpc:
    """One unary RPC of a service under the ray hosting.

    Attributes:
        name: the RPC's name (and the replica method's).
        key: what the front asks the replicas for: the v2 RPC's name, or `typed:<name>`.
        model: the model a typed RPC serves (its metrics label); None for v2 RPCs.
        model_field: the request field naming the model of a v2 RPC, if it has one.
    """

    name: str
    key: str
    model: str | None = None
    model_field: str | None = None


def _unary(descriptor) -> list:
    return [m for m in descriptor.methods if not m.client_streaming and not m.server_streaming]


def rpcs(spec: ServiceSpec) -> list[Rpc]:
    """Every unary RPC `spec`'s service answers under the ray hosting: the Open Inference Protocol's
    (but loading and unloading) and its typed API's."""
    found = []
    for method in _unary(V2_SERVICE):
        if method.name in NOT_FORWARDED:
            continue
        fields = method.input_type.fields_by_name
        found.append(Rpc(method.name, method.name, model_field=next((f for f in MODEL_FIELDS if f in fields), None)))
    if spec.typed is not None:
        for method in _unary(spec.typed.descriptor()):
            found.append(Rpc(method.name, f"typed:{method.name}", model=spec.typed.models.get(method.name, "")))
    return found
