"""The committed stubs are exactly what `make protos` generates from the committed protos."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT

spec = importlib.util.spec_from_file_location("gen_protos", REPO_ROOT / "scripts" / "gen_protos.py")
gen_protos = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen_protos)


def test_committed_stubs_match_a_fresh_generation(tmp_path: Path):
    # In a process of its own: grpcio-tools' C++ protobuf would keep the native front out of this one.
    subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)], check=True)
    fresh = gen_protos.generated_files(tmp_path)
    committed = gen_protos.generated_files(gen_protos.PROTO_ROOT)
    assert fresh == committed, "stub files differ from a fresh generation: run `make protos`"
    stale = [str(p) for p in fresh if (tmp_path / p).read_bytes() != (gen_protos.PROTO_ROOT / p).read_bytes()]
    assert not stale, f"stale stubs (run `make protos`): {stale}"


def test_every_service_has_a_versioned_package():
    packages = {str(p.parent) for p in gen_protos.proto_files()}
    for service in ("common", "tokenizer", "vision", "text", "transformer", "gateway"):
        assert f"maas/{service}/v1" in packages
    assert "maas/inference" in packages
