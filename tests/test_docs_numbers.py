"""Numbers in the docs hold: each measured number lives in one page, and a page that
quotes it links that page and gives the same number.

A number is a value with a unit (minutes, seconds, hours, GB, MB, %, points,
GPU-hours). The rules, sentence by sentence, outside code blocks:

- README.md quotes: every number in it sits in a sentence that links the page it comes
  from (a Markdown link or a path such as docs/performance.md), and that page states it
  with the same unit (in its text or in a table whose column header names the unit).
- docs/*.md and the Makefile's comments: a sentence that links another page states only
  numbers that page states too; its own numbers go in sentences of their own.

Dated notes (docs/notes/) and generated pages are sources, never checked as quoting.
"""

from __future__ import annotations

import re
from pathlib import Path

from .helpers import ROOT

UNITS = {"min": "min", "minute": "min", "minutes": "min", "s": "s", "second": "s",
         "seconds": "s", "h": "h", "hour": "h", "hours": "h", "GB": "GB", "MB": "MB",
         "GiB": "GiB", "%": "%", "point": "points", "points": "points",
         "GPU-hours": "GPU-hours", "GPU-h": "GPU-hours"}
TOKEN = re.compile(r"(?<![\w.])[+-]?(\d[\d,]*(?:\.\d+)?)\s?(GPU-hours|GPU-h|minutes?|min|"
                   r"seconds?|hours?|GiB|GB|MB|points?|%|s|h)(?![\w-])")
LINK = re.compile(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)"
                  r"|(?<![\w/\[])(?<!\]\()((?:\.\./)?[\w./-]*\w\.md)\b")
#: Generated pages: their numbers are the runs'; they quote nothing.
GENERATED = {"results.md"}


def tokens(text: str) -> set[tuple[str, str]]:
    """(number, unit) pairs of `text`, thousands separators and signs dropped."""
    return {(n.replace(",", ""), UNITS[u]) for n, u in TOKEN.findall(text)}


def table_tokens(text: str) -> set[tuple[str, str]]:
    """(number, unit) of Markdown table cells whose column header names a unit, e.g.
    `wall time (min)`."""
    out: set[tuple[str, str]] = set()
    header: list[str] = []
    for line in text.splitlines():
        if not line.startswith("|"):
            header = []
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not header:
            header = cells
            continue
        for name, cell in zip(header, cells, strict=False):
            unit = re.search(r"\((min|s|h|GB|%|seconds|minutes|points)\)", name)
            if unit and re.fullmatch(r"[+-]?[\d,]+(?:\.\d+)?", cell):
                out.add((cell.lstrip("+-").replace(",", ""), UNITS[unit.group(1)]))
    return out


def stated(page: Path) -> set[tuple[str, str]]:
    text = page.read_text(encoding="utf-8")
    return tokens(text) | table_tokens(text)


def sentences(text: str) -> list[str]:
    """Prose sentences outside code blocks and tables; a list item or paragraph is
    joined first."""
    paragraphs, cur, fence = [], [], False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            fence = not fence
            continue
        stripped = line.strip()
        if fence or stripped.startswith("|"):
            continue
        if not stripped or stripped.startswith(("- ", "* ", "#")):
            paragraphs.append(" ".join(cur))
            cur = [] if not stripped or stripped.startswith("#") else [stripped]
            continue
        cur.append(stripped)
    paragraphs.append(" ".join(cur))
    return [s for p in paragraphs for s in re.split(r"(?<=[.;])\s+(?=[A-Z`(\[])", p) if s]


def linked(page: Path, sentence: str) -> list[Path]:
    out = []
    for m in LINK.finditer(sentence):
        name = m.group(1) or m.group(2)
        for candidate in (page.parent / name, ROOT / name, ROOT / "docs" / name):
            if candidate.is_file() and candidate.resolve() != page.resolve():
                out.append(candidate.resolve())
                break
    return out


def problems(page: Path, text: str, readme: bool) -> list[str]:
    found = []
    for sentence in sentences(text):
        numbers = tokens(sentence)
        if not numbers:
            continue
        pages = linked(page, sentence)
        if not pages:
            if readme:
                found.append(f"{page.name}: {sorted(numbers)} in a sentence that links no "
                             f"page stating them: {sentence[:160]!r}")
            continue
        have = set().union(*(stated(p) for p in pages))
        missing = sorted(numbers - have)
        if missing:
            names = ", ".join(p.name for p in pages)
            found.append(f"{page.name}: {missing} not stated in {names}: {sentence[:160]!r}")
    return found


def makefile_comments() -> str:
    """The Makefile's comment blocks as paragraphs."""
    lines = (ROOT / "Makefile").read_text(encoding="utf-8").splitlines()
    return "\n".join(line.lstrip("# ") if line.startswith("#") else "" for line in lines)


def test_the_rules_find_what_they_should() -> None:
    """A quoted number that differs, and one without a link, are found."""
    page = ROOT / "README.md"
    assert problems(page, "It takes 25 minutes (docs/performance.md).", True)
    assert problems(page, "It takes 25 minutes.", True)
    assert tokens("about 18 min 2 s and +15.8 points, 1,289 GPU-hours") == {
        ("18", "min"), ("2", "s"), ("15.8", "points"), ("1289", "GPU-hours")}
    assert ("43", "min") in table_tokens("| run | wall time (min) |\n|---|---:|\n| a | 43 |")


def test_readme_quotes_its_numbers_from_the_pages_it_links() -> None:
    page = ROOT / "README.md"
    found = problems(page, page.read_text(encoding="utf-8"), readme=True)
    assert not found, "\n".join(found)


def test_docs_quote_the_pages_they_link_identically() -> None:
    found = []
    for page in sorted((ROOT / "docs").glob("*.md")):
        if page.name not in GENERATED:
            found += problems(page, page.read_text(encoding="utf-8"), readme=False)
    found += problems(ROOT / "Makefile", makefile_comments(), readme=False)
    assert not found, "\n".join(found)
