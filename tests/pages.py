"""The README and the docs pages as the tests read them: their fenced blocks with the marker each command
block carries, and their links.

A command block is a fence whose info string is `sh`, `bash`, `shell`, `console` or `python`. The line
before its opening fence is one of
    <!-- runnable -->
    <!-- not-runnable: REASON -->
A runnable block runs, from the repository's root, against one `maas up` (tests/integration/
test_docs_commands.py); the others are listed with their reasons. Every fence names its language
(`text` for output), so that no command block goes unmarked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]
COMMAND_LANGUAGES = {"sh", "bash", "shell", "console", "python"}
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)(?P<info>.*)$")
MARKER = re.compile(r"^\s*<!--\s*(?P<kind>runnable|not-runnable)(?::\s*(?P<reason>.*?))?\s*-->\s*$")


@dataclass
class Block:
    """One fenced block of a page."""

    page: Path
    line: int
    language: str
    code: str
    marker: str
    reason: str

    @property
    def name(self) -> str:
        """`page:line` of its opening fence."""
        return f"{self.page.relative_to(REPO_ROOT)}:{self.line}"

    @property
    def runnable(self) -> bool:
        """Whether its marker says it runs."""
        return self.marker == "runnable"


def blocks(page: Path) -> list[Block]:
    """Every fenced block of a page, in order.

    Raises:
        ValueError: a fence is never closed.
    """
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        start, indent, fence = index + 1, len(opening["indent"]), opening["fence"]
        language = opening["info"].strip().split(" ")[0]
        previous = next((line for line in reversed(lines[:index]) if line.strip()), "")
        marker = MARKER.match(previous)
        body: list[str] = []
        index += 1
        while index < len(lines) and not re.match(rf"^ *{re.escape(fence)}\s*$", lines[index]):
            body.append(lines[index][indent:] if lines[index][:indent].strip() == "" else lines[index])
            index += 1
        if index == len(lines):
            raise ValueError(f"{page}:{start}: a fence is never closed")
        found.append(
            Block(
                page,
                start,
                language,
                "\n".join(body) + "\n",
                marker["kind"] if marker else "",
                (marker["reason"] or "") if marker else "",
            )
        )
        index += 1
    return found


def command_blocks() -> list[Block]:
    """Every command block of every page."""
    return [block for page in PAGES for block in blocks(page) if block.language in COMMAND_LANGUAGES]


def console_commands(code: str) -> str:
    """The commands of a `console` block: its `$ ` lines and their `\\` continuations, without the output."""
    commands: list[str] = []
    continued = False
    for line in code.splitlines():
        if continued or line.startswith("$ "):
            commands.append(line if continued else line[2:])
            continued = line.endswith("\\")
    return "\n".join(commands) + "\n"


def outside_fences(page: Path) -> list[str]:
    """A page's lines that are not in a fenced block."""
    kept: list[str] = []
    fence = ""
    for line in page.read_text(encoding="utf-8").splitlines():
        opening = FENCE.match(line)
        if fence:
            fence = "" if re.match(rf"^ *{re.escape(fence)}\s*$", line) else fence
        elif opening:
            fence = opening["fence"]
        else:
            kept.append(line)
    return kept


def prose(page: Path) -> str:
    """A page without its fenced blocks and code spans: the text links live in."""
    return "\n".join(re.sub(r"`[^`]*`", "", line) for line in outside_fences(page))


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings (lower case, punctuation dropped, spaces as hyphens)."""
    seen: dict[str, int] = {}
    found = set()
    for line in outside_fences(page):
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*$", line)
        if not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading[1].replace("`", "").lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found
