"""The documentation speaks to users and contributors about the project, and the paths it cites
exist.

Project docs are read by people who were not there while the code was written: wording that
narrates development ("this session", "for the owner of pipeline.py", "issue #7's bar") says
nothing to them and goes stale. Code comments get the subset of patterns with no legitimate use
in code (``scope="session"`` is pytest's and is allowed).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted([REPO / "README.md", REPO / "DEVELOPERS.md", *(REPO / "docs").rglob("*.md")])
CODE = sorted([*(REPO / "src").rglob("*.py"), *(REPO / "tests").rglob("*.py")])

# Development-diary wording: (pattern, what it is). Case-insensitive.
CODE_DIARY = [
    (r"\b(this|that|the|a|previous|last|earlier|next|later|our|these) sessions?\b(?!-scoped)",
     "a work session"),
    (r"\bsession \d+", "a numbered session"),
    (r"\bissue\s*#\s*\d+|(?<![\w#&/])#\d+\b", "an issue number"),
    (r"\bthe issue'?s\b|\bthis issue\b", "the issue being worked on"),
    (r"\bfor the owner of\b|\bowner of \S+\.py\b", "a note to a colleague"),
    (r"\bnote to self\b|\bhand-?over\b|\bthe brief\b", "a working note"),
]
DOC_DIARY = [
    *CODE_DIARY,
    (r"\bsessions?\b(?!-scoped)", "a work session"),
    (r"\b(today|yesterday|tonight)('s)?\b", "a date relative to the writing"),
    (r"\b(TODO|FIXME|XXX)\b", "an open working note"),
    (r"\bI (tried|found|noticed|decided|think|will|measured)\b", "a first-person diary entry"),
]
SELF = Path(__file__).resolve()
# A repository path in a doc: the folder it lives in, then a file name with an extension.
CITED_PATH = re.compile(r"(?<![\w./-])((?:src|tests|tools|docs)/[\w./-]*\w\.\w+)")


def _hits(path: Path, patterns: list[tuple[str, str]]) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".py":
        text = re.sub(r"scope\s*=\s*[\"']session[\"']", "", text)
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        for pattern, what in patterns:
            match = re.search(pattern, line, flags=re.IGNORECASE)
            if match:
                out.append(f"{path.relative_to(REPO)}:{number}: {what}: {match.group(0)!r}")
                break  # one finding a line is enough to find it
    return out


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_docs_have_no_diary_wording(path: Path) -> None:
    assert _hits(path, DOC_DIARY) == []


def test_code_comments_have_no_diary_wording() -> None:
    hits = [h for p in CODE if p.resolve() != SELF for h in _hits(p, CODE_DIARY)]
    assert hits == []


@pytest.mark.parametrize("name", ["README.md", "DEVELOPERS.md"])
def test_cited_repository_paths_exist(name: str) -> None:
    cited = set(CITED_PATH.findall((REPO / name).read_text(encoding="utf-8")))
    assert cited, f"{name} cites no paths: the pattern is broken"
    assert sorted(p for p in cited if not (REPO / p).exists()) == []


def test_the_checks_catch_what_they_are_for(tmp_path: Path) -> None:
    bad = tmp_path / "bad.md"
    bad.write_text("Changes (for the owner of pipeline.py): measured this session.\n"
                   "The guard is issue #7's bar. Session 4 found it; re-measured today.\n"
                   "Run `.venv/bin/pytest tests/test_io.py`.\n", encoding="utf-8")
    found = set(_hits_at(bad, DOC_DIARY))
    assert found >= {"a note to a colleague", "a work session", "an issue number",
                     "a date relative to the writing"}
    assert CITED_PATH.findall(bad.read_text()) == ["tests/test_io.py"]
    good = tmp_path / "good.md"
    good.write_text("Tests share a session-scoped fixture; see issue tracker policies in "
                    "`docs/errors.md` (exit 3). Heading # 1 and `a#b`.\n", encoding="utf-8")
    assert _hits_at(good, DOC_DIARY) == []


def _hits_at(path: Path, patterns: list[tuple[str, str]]) -> list[str]:
    # _hits names paths relative to the repository; a temporary file is outside it.
    text = path.read_text(encoding="utf-8")
    return [what for line in text.splitlines() for pattern, what in patterns
            if re.search(pattern, line, flags=re.IGNORECASE)]
