"""The documentation holds together: README.md stays a short page, every relative link in it
and in docs/*.md reaches a file (and a heading, for `#anchor`), and every test it names exists."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 150
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
TEST_REFERENCE = re.compile(r"`([\w/]+\.py)::(\w+)`")


def heading_anchors(page):
    """GitHub's anchors for a Markdown file's headings: lower case, punctuation dropped,
    spaces as hyphens."""
    anchors = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def broken_links(page):
    """The relative links of one page whose file, or heading, does not exist."""
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and (resolved.suffix != ".md" or anchor not in heading_anchors(resolved)):
            broken.append(target)
    return broken


def test_readme_is_a_short_page():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= README_MAX_LINES


def test_the_docs_pages_are_there():
    names = {page.name for page in PAGES}
    assert {"results.md", "speed.md", "parity.md", "README.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_named_test_exists(page):
    missing = []
    for path, name in TEST_REFERENCE.findall(page.read_text(encoding="utf-8")):
        # A bare file name is one of the suites' (`test_model.py` is `parity_tests/test_model.py`).
        source = next((ROOT / where / path for where in ("", "parity_tests", "tests")
                       if (ROOT / where / path).is_file()), ROOT / path)
        if not source.is_file() or not re.search(rf"^def {name}\(", source.read_text(), re.M):
            missing.append(f"{path}::{name}")
    assert missing == []
