"""Under the ray hosting, one mechanism makes both ends of every RPC: the replica's methods and the front's
forwarding servicers come from the same list, read from the protos."""

from __future__ import annotations

import pytest
from ray.serve.handle import DeploymentHandle

from maas.inference import grpc_service_pb2
from services.catalog import model_services
from services.common.spec import ServiceSpec, user_spec
from services.ray.front import ReplicaClient, forwarding_servicers
from services.ray.replica import ServiceReplica, replica_class
from services.ray.rpcs import NOT_FORWARDED, rpcs
from tests.contract.test_user_model import EXAMPLE, REFERENCE

SPECS = {spec.name: spec for spec in model_services()}
SPECS["user model"] = user_spec(REFERENCE, app_dir=str(EXAMPLE))
V2 = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]


def unary(descriptor) -> set[str]:
    return {m.name for m in descriptor.methods if not (m.client_streaming or m.server_streaming)}


@pytest.mark.parametrize("name", list(SPECS))
def test_replica_methods_and_front_servicers_come_from_the_protos_of_the_service(name: str):
    spec: ServiceSpec = SPECS[name]
    typed = unary(spec.typed.descriptor()) if spec.typed else set()
    expected = (unary(V2) - NOT_FORWARDED) | typed
    assert {rpc.name for rpc in rpcs(spec)} == expected
    replica = replica_class(spec)
    assert issubclass(replica, ServiceReplica)
    assert {method for method in vars(replica) if not method.startswith("_")} == expected
    v2, typed_services = forwarding_servicers(spec, ReplicaClient(DeploymentHandle(spec.name, spec.name), 1, 64))
    assert {method for method in vars(type(v2)) if not method.startswith("_")} == (unary(V2) - NOT_FORWARDED) | {
        "ModelStreamInfer"
    }
    forwarded_typed = {m for s in typed_services for m in vars(type(s.servicer)) if not m.startswith("_")}
    assert forwarded_typed == typed
    assert [s.full_name for s in typed_services] == ([spec.typed.full_name] if spec.typed else [])
