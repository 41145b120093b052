"""The Markdown documents' relative links lead somewhere: the file exists and, for a
``#fragment``, a heading of that file renders to that anchor on GitHub."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", ROOT / "Training" / "EXPERIMENTS.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")
HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")
# GitHub keeps letters, marks, decimal and letter numbers, connector punctuation, hyphens and
# spaces; everything else goes, superscripts such as the 3 of "96³" included (category No).
KEPT_CATEGORIES = ("L", "M", "Nd", "Nl", "Pc")


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading (before the -1, -2 suffixes of repeated headings)."""
    text = re.sub(r"`|\*\*|__", "", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link's text stays, its target goes
    kept = (
        c for c in text.lower() if c in "- " or unicodedata.category(c).startswith(KEPT_CATEGORIES)
    )
    return "".join(kept).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor of a Markdown file: its headings' (repeated ones numbered) and its
    ``<a id="...">`` tags'."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        found.update(HTML_ANCHOR.findall(line))
        match = HEADING.match(line)
        if match:
            anchor = github_anchor(match.group(1))
            count = seen.get(anchor, 0)
            seen[anchor] = count + 1
            found.add(anchor if count == 0 else f"{anchor}-{count}")
    return found


def relative_links(path: Path) -> list[str]:
    """Link targets outside code blocks that are not web addresses."""
    targets = []
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            targets += [t for t in LINK.findall(line) if not re.match(r"[a-z]+:", t)]
    return targets


def test_github_anchor_follows_githubs_rules() -> None:
    assert github_anchor("0.4.3: windows of 96³ voxels") == "043-windows-of-96-voxels"
    assert github_anchor("1. Prepare a dataset (once per preprocessing setting)") == (
        "1-prepare-a-dataset-once-per-preprocessing-setting"
    )
    assert github_anchor("Not adopted yet: a second seed (two-network ensemble)") == (
        "not-adopted-yet-a-second-seed-two-network-ensemble"
    )
    assert github_anchor("The `segment` command") == "the-segment-command"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_relative_links_reach_a_file_and_heading(document: Path) -> None:
    broken = []
    for target in relative_links(document):
        file_part, _, fragment = target.partition("#")
        linked = (document.parent / file_part).resolve() if file_part else document
        if not linked.exists():
            broken.append(f"{target}: no file {linked.relative_to(ROOT)}")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(f"{target}: no heading with that anchor in {linked.name}")
    assert not broken, f"{document.name}: " + "; ".join(broken)
