"""Our `inference` proto against the one stock tritonclient ships: same names and field numbers."""

from __future__ import annotations

from tests.interop.test_tritonclient import run_script


async def test_every_message_and_rpc_matches_tritonclient():
    ours = await run_script("proto_fields.py", "maas")
    theirs = await run_script("proto_fields.py", "tritonclient")
    assert "rpc inference.GRPCInferenceService.ModelStreamInfer" in ours
    assert "rpc inference.GRPCInferenceService.ModelConfig" in ours
    assert "enum inference.DataType" in ours
    for name, fields in ours.items():
        assert name in theirs, f"{name} is not in tritonclient's proto"
        for field, spec in fields.items():
            assert theirs[name].get(field) == spec, (
                f"{name}.{field}: ours {spec}, tritonclient {theirs[name].get(field)}"
            )
