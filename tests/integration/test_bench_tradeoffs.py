"""`maas bench --section tradeoffs --quick` over a repository with every kind of optimized version: one row per
model and version, a best default per model, and the rest of the report kept."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from services.vision.prune import prune
from services.vision.recipe import Recipe
from tests.conftest import PYTHON, REPO_ROOT, link_or_copy

pytestmark = pytest.mark.slow


@pytest.mark.timeout(1200)
def test_quick_tradeoffs_table_has_every_version_side_by_side(onnx_repository: dict, tmp_path: Path):
    repository = tmp_path / "repository"
    shutil.copytree(onnx_repository["repository"], repository, copy_function=link_or_copy)
    pruned = prune(repository, 0.5, fine_tune=Recipe(epochs=1, train_limit=1000), progress=False)
    output = tmp_path / "benchmarks.md"
    output.write_text("# Benchmarks\n\n## Vision (fashion_cnn)\n\nkept as it was\n", encoding="utf-8")
    command = [PYTHON, "-m", "services.cli.main", "bench", "--section", "tradeoffs", "--quick", "--no-progress"]
    command += ["--repository", str(repository), "--output", str(output)]
    subprocess.run(command, cwd=REPO_ROOT, check=True, timeout=900, capture_output=True)
    report = output.read_text()
    assert "## Vision (fashion_cnn)\n\nkept as it was" in report
    assert (tmp_path / "benchmarks" / "optimization-trade-offs-fp32-torch-int8-onnx-runtime-pruned.png").exists()
    assert "## Optimization trade-offs (fp32 torch, int8, ONNX Runtime, pruned)" in report
    rows = re.findall(
        r"^\| (\w+) \| ([\w ]+) \(v(\d+)\) \| ([^|]+) \| ([\d.]+) \| ([\d.]+) \| ([\d,]+) \| ([\d,]+) \| ([\d.]+) \|$",
        report,
        re.M,
    )
    kinds = {(model, kind) for model, kind, *_ in rows}
    assert kinds == {
        ("fashion_cnn", "fp32 torch"),
        ("fashion_cnn", "ONNX Runtime"),
        ("fashion_cnn", "pruned"),
        *(
            (model, kind)
            for model in ("review_lstm", "minilm_embed", "minilm_sentiment")
            for kind in ("fp32 torch", "ONNX Runtime", "int8")
        ),
    }
    assert ("fashion_cnn", "pruned", pruned.name) in {(m, k, v) for m, k, v, *_ in rows}
    for model, kind, _, _, batch1, batch32, c1, c16, size in rows:
        assert float(batch1) > 0 and float(batch32) > 0 and float(size) > 0, (model, kind)
        assert int(c1.replace(",", "")) > 0 and int(c16.replace(",", "")) > 0, (model, kind)
    for model in ("fashion_cnn", "review_lstm", "minilm_embed", "minilm_sentiment"):
        assert re.search(rf"^- {model}: best default here is [\w ]+ \(v\d+\): ", report, re.M), model
