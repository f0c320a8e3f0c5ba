"""Model delivery (`maas models install|wait`): a repository copied into place with every file checked,
a marker written last, and the CLI's one-line failures; the images' refusal to run as root."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from services.cli.main import main
from services.common.delivery import MARKER_FILE, install, installed_marker, wait_for_install
from services.common.repository import CONFIG_FILE, MODEL_FILE, RepositoryError, publish_version, read_version
from services.tokenizer.export import export_tokenizer


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A real repository: the exported tokenizer as versions 1 and 2, with a version policy."""
    repository = tmp_path / "source"
    export_tokenizer(repository)
    first = read_version(repository / "tokenizer" / "1", "tokenizer")

    def copy(staging: Path) -> None:
        for name in first.files:
            (staging / name).write_bytes((repository / "tokenizer" / "1" / name).read_bytes())

    publish_version(repository, first.model_copy(deep=True), copy)
    (repository / "tokenizer" / MODEL_FILE).write_text('{"version_policy": "all"}\n')
    return repository


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_install_copies_every_version_checked_and_only_the_files_its_config_lists(source: Path, tmp_path: Path):
    (source / "tokenizer" / "1" / "notes.txt").write_text("not listed in config.json")
    target = tmp_path / "target"
    assert install(source, target, marker="models:1") == ["tokenizer/1", "tokenizer/2"]
    copied = tree(target)
    assert copied.pop(MARKER_FILE) == b"models:1\n"
    expected = tree(source)
    del expected["tokenizer/1/notes.txt"]
    assert copied == expected
    for version in ("1", "2"):
        read_version(target / "tokenizer" / version, "tokenizer")
    assert not [p for p in target.rglob(".staging-*")]


def test_a_tampered_file_fails_the_install_naming_it_and_leaves_no_marker(source: Path, tmp_path: Path):
    target = tmp_path / "target"
    install(source, target, marker="models:1")
    weights = source / "tokenizer" / "2" / "tokenizer.json"
    weights.write_bytes(weights.read_bytes().replace(b"[UNK]", b"[UNX]", 1))
    with pytest.raises(RepositoryError, match=r"tokenizer/2: tokenizer.json does not match the SHA-256 in config.json"):
        install(source, target, marker="models:2")
    assert installed_marker(target) is None


def test_a_missing_or_empty_source_is_refused(tmp_path: Path):
    with pytest.raises(RepositoryError, match="no model repository at"):
        install(tmp_path / "absent", tmp_path / "target")
    (tmp_path / "empty" / "tokenizer").mkdir(parents=True)
    with pytest.raises(RepositoryError, match="holds no model versions"):
        install(tmp_path / "empty", tmp_path / "target")


def test_reinstalling_keeps_what_matches_and_mirrors_what_changed(source: Path, tmp_path: Path):
    target = tmp_path / "target"
    install(source, target)
    kept = (target / "tokenizer" / "1" / CONFIG_FILE).stat().st_ino
    (target / "old_model" / "3").mkdir(parents=True)
    (target / "tokenizer" / "7").mkdir()
    (source / "tokenizer" / MODEL_FILE).unlink()
    install(source, target)
    assert (target / "tokenizer" / "1" / CONFIG_FILE).stat().st_ino == kept
    assert sorted(p.name for p in target.iterdir()) == ["tokenizer"]
    assert sorted(p.name for p in (target / "tokenizer").iterdir()) == ["1", "2"]


def test_wait_returns_once_the_marker_is_written_and_times_out_saying_what_it_found(source: Path, tmp_path: Path):
    target = tmp_path / "target"
    writer = threading.Timer(0.2, install, (source, target, "models@sha256:1"))
    writer.start()
    wait_for_install(target, "models@sha256:1", timeout=30, poll_seconds=0.05)
    writer.join()
    with pytest.raises(TimeoutError, match=r"found a marker for 'models@sha256:1'"):
        wait_for_install(target, "models@sha256:2", timeout=0.1, poll_seconds=0.05)


def test_the_cli_prints_one_line_and_exits_nonzero_on_failure(source: Path, tmp_path: Path, capsys):
    target = tmp_path / "target"
    assert main(["models", "install", str(source), str(target), "--marker", "m"]) == 0
    assert capsys.readouterr().out == f"installed 2 versions of 1 models from {source} into {target}\n"
    assert main(["models", "wait", str(target), "--marker", "m", "--timeout", "1"]) == 0
    assert main(["models", "install", str(tmp_path / "absent"), str(target)]) == 1
    err = capsys.readouterr().err
    assert err == f"maas models install: no model repository at {tmp_path / 'absent'}\n"
    (tmp_path / "a-file").write_text("")
    assert main(["models", "install", str(source), str(tmp_path / "a-file" / "models")]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("maas models install: [Errno 20] Not a directory:")


def test_an_image_refuses_to_run_maas_as_root(monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.setenv("MAAS_ALLOW_ROOT", "false")
    monkeypatch.setattr(os, "getuid", lambda: 0)
    assert main(["health", "127.0.0.1:1"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("maas: refusing to run as root (uid 0): this image runs as uid 10001")
    monkeypatch.setattr(os, "getuid", lambda: 10001)
    with pytest.raises(SystemExit):
        main(["--help"])
    assert capsys.readouterr().out.startswith("usage: maas")
