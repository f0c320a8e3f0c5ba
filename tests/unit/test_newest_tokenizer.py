"""The newest tokenizer is looked up in one place: without one, every command that needs it says how to
export it (one line, exit status 1), instead of failing with IndexError."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO_ROOT

COMMANDS = [
    ["models", "export-minilm", "--quantize", "int8"],
    ["train", "transformer", "--quantize", "int8"],
    ["train", "transformer"],
    ["train", "text"],
]


def test_newest_tokenizer_without_one_is_file_not_found_with_the_fix(tmp_path: Path):
    from services.tokenizer.model import newest_tokenizer

    (tmp_path / "tokenizer").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no tokenizer in .*: run `maas models export-tokenizer`"):
        newest_tokenizer(tmp_path)


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_a_command_that_needs_the_tokenizer_says_how_to_export_it(command: list[str], tmp_path: Path):
    done = subprocess.run(
        [PYTHON, "-m", "services.cli.main", *command, "--repository", str(tmp_path), "--no-progress"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert f"maas: no tokenizer in {tmp_path}: run `maas models export-tokenizer`" in done.stderr
    assert "Traceback" not in done.stderr
