"""The Markdown documents' relative links lead somewhere: the file exists and, for a
``#fragment``, a heading of that file renders to that anchor on GitHub."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", ROOT / "Training" / "EXPERIMENTS.md"]
# Inline links and images, with optional <...> and "title"; reference definitions "[r]: target".
LINK = re.compile(r"\]\(\s*(?:<([^>\n]+)>|([^)\s]+))(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?([^\s>]+)>?", re.MULTILINE)
SCHEME = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*:")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")
HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")
# GitHub keeps letters, marks, decimal and letter numbers, connector punctuation, hyphens and
# spaces; everything else goes, superscripts such as the 3 of "96³" included (category No).
KEPT_CATEGORIES = ("L", "M", "Nd", "Nl", "Pc")


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading (before the -1, -2 suffixes of repeated headings)."""
    # Underscores that open or close emphasis go; those inside words or code spans stay.
    text = re.sub(r"(?<![\w`])_+(?=\w)|(?<=\w)_+(?![\w`])", "", heading)
    text = text.replace("`", "")
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link's text stays, its target goes
    kept = (
        c for c in text.lower() if c in "- " or unicodedata.category(c).startswith(KEPT_CATEGORIES)
    )
    return "".join(kept).replace(" ", "-")


def prose_lines(path: Path) -> list[str]:
    """A Markdown file's lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def anchors(path: Path) -> set[str]:
    """Every anchor of a Markdown file: its headings' (repeated ones numbered) and its
    ``<a id="...">`` tags'."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in prose_lines(path):
        found.update(HTML_ANCHOR.findall(line))
        match = HEADING.match(line)
        if match:
            anchor = github_anchor(match.group(1))
            count = seen.get(anchor, 0)
            seen[anchor] = count + 1
            found.add(anchor if count == 0 else f"{anchor}-{count}")
    return found


def relative_links(path: Path) -> list[str]:
    """Link targets outside code blocks that are not web addresses (a link may span lines)."""
    text = "\n".join(prose_lines(path))
    targets = [a or b for a, b in LINK.findall(text)] + REFERENCE.findall(text)
    return [t for t in targets if not SCHEME.match(t)]


def test_github_anchor_follows_githubs_rules() -> None:
    assert github_anchor("0.4.3: windows of 96³ voxels") == "043-windows-of-96-voxels"
    assert github_anchor("1. Prepare a dataset (once per preprocessing setting)") == (
        "1-prepare-a-dataset-once-per-preprocessing-setting"
    )
    assert github_anchor("Not adopted yet: a second seed (two-network ensemble)") == (
        "not-adopted-yet-a-second-seed-two-network-ensemble"
    )
    assert github_anchor("The `segment` command") == "the-segment-command"
    assert github_anchor("_Emphasis_ and the `__init__` file") == "emphasis-and-the-__init__-file"


def test_links_are_found_in_every_markdown_form(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        'See [a](one.md), [b](<two three.md>), [c](four.md "title"), ![d](five.png),\n'
        "[split\nover lines](six.md#part), [web](HTTPS://example.org) and [ref][r].\n\n"
        "```\n[not a link](seven.md)\n```\n\n[r]: eight.md\n",
        encoding="utf-8",
    )
    assert sorted(relative_links(page)) == sorted(
        ["one.md", "two three.md", "four.md", "five.png", "six.md#part", "eight.md"]
    )


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_relative_links_reach_a_file_and_heading(document: Path) -> None:
    broken = []
    for target in relative_links(document):
        file_part, _, fragment = target.partition("#")
        linked = (document.parent / file_part).resolve() if file_part else document
        if not linked.is_relative_to(ROOT):
            broken.append(f"{target}: leads out of the repository")
        elif not linked.exists():
            broken.append(f"{target}: no file {linked.relative_to(ROOT)}")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(f"{target}: no heading with that anchor in {linked.name}")
    assert not broken, f"{document.name}: " + "; ".join(broken)
