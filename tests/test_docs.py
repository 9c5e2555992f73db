"""Every document the code cites exists in the project, with the section it names; no file cites team-only notes.

A citation is a ``docs/...`` path (optionally ``#section``, a GitHub heading anchor) or a ``dir/NAME.md`` path under
one of the project's top-level folders, anywhere in the library, tests, benchmarks and notebooks; plus every
relative link of the markdown documents. Bare lower-case ``*.md`` names (``results.md``) are outputs the code
writes, not citations.
"""
from __future__ import annotations

import re
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("mtlkit", "tests", "benchmarks", "notebooks")
SOURCE_SUFFIXES = {".py", ".md", ".txt", ".toml", ".yml", ".yaml", ".json", ".cfg"}
TOP_DIRS = ("docs", "mtlkit", "tests", "benchmarks", "notebooks", "assignments", "data")
# A path under a project folder: "docs/reference.md#metrics", "data/README.md", "docs/models.md".
CITED_PATH = re.compile(rf"(?<![\w./-])((?:{'|'.join(TOP_DIRS)})/[\w./-]*\w)(#[\w-]+)?")
# A bare upper-case document name, e.g. "GRADING.md" (resolved next to the citing file, then anywhere).
BARE_DOC = re.compile(r"(?<![\w./-])([A-Z][A-Z0-9_]*\.md)\b")
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
# A section named in words right after the path: docs/reference.md, "Losses" (must be part of a heading there).
QUOTED_SECTION = re.compile(r'^,?\s*"([^"]+)"')
# The team's private notes, spelled so that this file does not match itself.
PRIVATE = re.compile(r"\b(?:DESIGN|REFERENCE)" + r"\.md\b")


def _files(folder: str):
    base = ROOT / folder
    for path in sorted(base.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts or ".ipynb_checkpoints" in path.parts:
            continue
        if folder == "notebooks" and path.suffix != ".py":
            continue  # the .ipynb goldens hold the same code as their .py pairs
        if path.suffix in SOURCE_SUFFIXES:
            yield path


def _slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _headings(path: Path) -> list[str]:
    headings, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            headings.append(line.lstrip("#").strip())
    return headings


def _anchors(path: Path) -> set[str]:
    return {_slug(heading) for heading in _headings(path)}


def _problem(target: Path, anchor: str | None, section: str | None = None) -> str | None:
    if not target.exists():
        return "does not exist"
    if target.suffix != ".md":
        return None
    if anchor and anchor.lstrip("#") not in _anchors(target):
        return f"has no section {anchor} (sections: {', '.join(sorted(_anchors(target)))})"
    if section and not any(section.lower() in heading.lower() for heading in _headings(target)):
        return f'has no section "{section}" (cite it as {target.name}#<anchor>; sections: ' \
               f"{', '.join(sorted(_anchors(target)))})"
    return None


def _cited_paths():
    """(citing file:line, cited text, target path, anchor) for every path citation in the scanned folders."""
    for path in [p for folder in SCANNED for p in _files(folder)]:
        if path == Path(__file__).resolve():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            where = f"{path.relative_to(ROOT)}:{number}"
            for match in CITED_PATH.finditer(line):
                cited = match.group(1).rstrip(".")
                if not (cited.startswith("docs/") or cited.endswith(".md")):
                    continue  # code paths ("mtlkit/train.py") are not document citations
                quoted = QUOTED_SECTION.match(line[match.end():]) if not match.group(2) else None
                yield where, match.group(0), ROOT / cited, match.group(2), quoted and quoted.group(1)
            for match in BARE_DOC.finditer(line):
                name = match.group(1)
                if PRIVATE.fullmatch(name):
                    continue  # reported by test_no_file_cites_the_team_notes
                here = path.parent / name
                found = here if here.exists() else next(iter(sorted(ROOT.glob(f"*/{name}"))), ROOT / name)
                yield where, name, found, None, None


def _markdown_links():
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for doc in documents:
        if not doc.exists():
            continue
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            for match in MD_LINK.finditer(line):
                link = match.group(1)
                if re.match(r"[a-z]+:", link):
                    continue  # https:, mailto:
                target, _, anchor = link.partition("#")
                yield f"{doc.relative_to(ROOT)}:{number}", link, (doc.parent / target) if target else doc, anchor


def test_the_docs_exist():
    for name in ("README.md", "contracts.md", "reference.md"):
        assert (ROOT / "docs" / name).is_file(), f"docs/{name} is missing"


def test_every_cited_document_exists():
    problems = [f"{where}: {text} {why}" for where, text, target, anchor, section in _cited_paths()
                if (why := _problem(target, anchor, section))]
    assert not problems, "citations of missing documents or sections:\n" + "\n".join(problems)


def test_every_markdown_link_resolves():
    problems = [f"{where}: ({link}) {why}" for where, link, target, anchor in _markdown_links()
                if (why := _problem(target, anchor))]
    assert not problems, "broken links in the documentation:\n" + "\n".join(problems)


def test_no_file_cites_the_team_notes():
    suffixes = SOURCE_SUFFIXES | {".ipynb"}
    paths = [p for folder in (*SCANNED, "assignments", "docs") for p in sorted((ROOT / folder).rglob("*"))]
    paths += sorted((ROOT / "data").glob("*"))  # not the caches and downloads below it
    paths += [ROOT / name for name in ("README.md", "Makefile", "pyproject.toml", "environment.yml")]
    hits = []
    for path in paths:
        if not path.is_file() or (path.suffix not in suffixes and path.name != "Makefile"):
            continue
        if path == Path(__file__).resolve() or "__pycache__" in path.parts:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if PRIVATE.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not hits, "files the project does not contain are cited (cite docs/ instead):\n" + "\n".join(hits)


def test_the_checks_find_what_they_look_for(tmp_path):
    """The patterns catch a docs citation with its section, a bare document name and a private note."""
    line = 'see docs/reference.md#metrics and GRADING.md, not the notes in ' + "REFERENCE" + '.md'
    assert [(m.group(1), m.group(2)) for m in CITED_PATH.finditer(line)] == [("docs/reference.md", "#metrics")]
    assert BARE_DOC.findall(line) == ["GRADING.md", "REFERENCE.md"]
    assert PRIVATE.search(line)
    assert _slug(" Multi-task performance (Δm)") == "multi-task-performance-δm"  # GitHub keeps letters
    assert _slug(" `count_parameters` and *counts*") == "count_parameters-and-counts"
    doc = tmp_path / "x.md"
    doc.write_text("# Title\n```\n# not a heading\n```\n## Losses and weighting\n")
    assert _anchors(doc) == {"title", "losses-and-weighting"}
    assert _problem(doc, "#losses-and-weighting") is None
    assert "no section" in _problem(doc, "#metrics")
    assert _problem(tmp_path / "missing.md", None) == "does not exist"
    assert _problem(doc, None, "losses") is None and "no section" in _problem(doc, None, "Δm")
    cited = 'from the table (docs/reference.md, "Metrics") and'
    match = CITED_PATH.search(cited)
    assert QUOTED_SECTION.match(cited[match.end():]).group(1) == "Metrics"


# ----------------------------------------------------------------------- the test habits docs/README.md describes
def test_every_slow_entry_names_an_existing_test():
    """A renamed test must not silently drop out of the slow list (and so slow down `make test-fast`)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_tests_conftest", ROOT / "tests" / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)  # by path: tests/grading/ has a conftest.py too
    stale = []
    for prefix in conftest.SLOW:
        path, _, name = prefix.partition("::")
        source = (ROOT / path).read_text(encoding="utf-8") if (ROOT / path).is_file() else None
        if source is None or (name and not re.search(rf"^def {re.escape(name)}", source, re.M)):
            stale.append(prefix)
    assert not stale, f"tests/conftest.py SLOW names tests that do not exist: {stale}"


def test_markers_are_registered_and_make_test_fast_deselects_them():
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    for marker in ("notebooks", "slow"):
        assert re.search(rf'^\s*"{marker}: ', pyproject, re.M), f"marker {marker!r} is not registered in pyproject"
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r'^test-fast:.*\n(\t.*\n)*\t.*pytest -m "not notebooks and not slow"', makefile, re.M)
    assert re.search(r"^test: lint$", makefile, re.M), "make test must run ruff before pytest"
