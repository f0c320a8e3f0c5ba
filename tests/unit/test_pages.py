"""The README and the docs pages: a short README, every command block marked, every link inside the
repository and to a heading that exists (tests/pages.py says how blocks are marked)."""

from __future__ import annotations

import re

import pytest

from tests.pages import COMMAND_LANGUAGES, PAGES, REPO_ROOT, anchors, blocks, prose

README = REPO_ROOT / "README.md"
LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
OUTSIDE = re.compile(r"\.\./shared|/work/|\bshared/(ARCHITECTURE|STYLE|TOOLING)\.md")


def page_id(page):
    return str(page.relative_to(REPO_ROOT))


def test_the_readme_is_at_most_200_lines():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 200


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_fence_names_its_language_and_every_command_block_is_marked(page):
    for block in blocks(page):
        assert block.language, f"{block.name}: a fence without a language (use `text` for output)"
        if block.language in COMMAND_LANGUAGES:
            assert block.marker, f"{block.name}: no <!-- runnable --> or <!-- not-runnable: REASON --> before it"
            assert block.runnable or block.reason, f"{block.name}: not-runnable needs a reason"
        else:
            assert not block.marker, f"{block.name}: only command blocks are marked ({block.language} is not one)"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_link_stays_in_the_repository_and_reaches_a_heading_that_exists(page):
    text = prose(page)
    assert not OUTSIDE.search(page.read_text(encoding="utf-8")), f"{page_id(page)} names a file outside the repository"
    for link in LINK.finditer(text):
        target = link["target"]
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.is_relative_to(REPO_ROOT), f"{page_id(page)}: {target} leaves the repository"
        assert resolved.exists(), f"{page_id(page)}: {target} does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{page_id(page)}: {target}: no such heading in {page_id(resolved)}"
