"""The README and the pages under docs/ link only to files and #anchors that exist.

Anchors follow GitHub's rule for headings: lower case, every character that is not a
letter, digit, space, hyphen or underscore dropped, spaces turned into hyphens, and a
repeated heading numbered ``-1``, ``-2``, ... Links inside fenced code blocks and inline
code are not links; external (``http:``, ``https:``, ``mailto:``) links are not checked.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose_lines(text: str):
    """The lines outside fenced code blocks, with inline code spans blanked."""
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if not fenced:
            yield re.sub(r"`[^`]*`", "``", line)


def github_anchor(heading: str) -> str:
    text = re.sub(r"`([^`]*)`", r"\1", heading)                 # code spans keep their text
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)        # links keep their text
    text = text.strip().lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            base = github_anchor(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[str]:
    return [m.group(1) for line in _prose_lines(path.read_text(encoding="utf-8"))
            for m in LINK.finditer(line)]


def test_anchor_rule():
    assert github_anchor("How big a difference is real") == "how-big-a-difference-is-real"
    assert github_anchor("Does augmentation pay off here? (measured)") == "does-augmentation-pay-off-here-measured"
    assert github_anchor("A teammate's GPU box") == "a-teammates-gpu-box"
    assert github_anchor("The `train` stage") == "the-train-stage"


def test_there_are_pages_and_links():
    assert len(PAGES) > 2
    assert any(link.startswith("docs/") for link in links(REPO / "README.md"))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_links_resolve(page):
    broken = []
    for link in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", link):              # http:, https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        file = (page.parent / target).resolve() if target else page
        if not file.exists():
            broken.append(f"{link}: no file {target}")
        elif anchor and (file.suffix != ".md" or anchor not in anchors(file)):
            broken.append(f"{link}: no heading #{anchor} in {file.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(REPO / link.partition("#")[0]).resolve() for link in links(REPO / "README.md")
              if link.startswith("docs/")}
    pages = {p.resolve() for p in (REPO / "docs").glob("*.md")}
    assert pages <= linked, f"not linked from README.md: {sorted(p.name for p in pages - linked)}"


def test_every_docs_image_is_shown():
    shown = {(page.parent / link).resolve() for page in PAGES for link in links(page)}
    images = {p.resolve() for p in (REPO / "docs").glob("*.png")}
    assert images <= shown, f"images no page shows: {sorted(p.name for p in images - shown)}"
