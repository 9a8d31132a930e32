"""The docs hold what the code says, and every link in them leads somewhere.

Generated references (spec, trainer config, CLI) must equal what their commands print now
(scripts/sync_docs.py regenerates them); every relative link and image in README.md and docs/
must resolve, a `#fragment` included; the README points into ../shared only for the test data
and CI's service scripts.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from sync_docs import REFERENCES, ROOT, Reference, embedded, generated  # noqa: E402

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("ref", REFERENCES, ids=lambda r: r.name)
def test_reference_is_generated_from_the_code(ref: Reference) -> None:
    text = embedded(ref)
    assert text == generated(ref), f"{ref.page}: run .venv/bin/python scripts/sync_docs.py"
    assert text.count("\n") > 40  # a whole reference, not an empty or truncated one


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where `[x](y)` is not a link."""
    text = re.sub(r"(?ms)^```.*?^```", "", text)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(text: str) -> set[str]:
    """The `#fragment`s GitHub gives a page's headings: lower case, punctuation dropped, spaces
    as hyphens, a repeated heading numbered (-1, -2, ...)."""
    slugs: set[str] = set()
    counts: dict[str, int] = {}
    for title in re.findall(r"(?m)^#{1,6} +(.+?) *#*$", re.sub(r"(?ms)^```.*?^```", "", text)):
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        n = counts.get(slug, 0)
        counts[slug] = n + 1
        slugs.add(slug if n == 0 else f"{slug}-{n}")
    return slugs


def broken_links(page: Path) -> list[str]:
    """The page's relative links (and images) whose file, or heading, does not exist."""
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto:: outside the repository
            continue
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest.read_text()):
            broken.append(f"{target}: {dest.name} has no heading #{fragment}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_link_check_finds_broken_links(tmp_path: Path) -> None:
    (tmp_path / "img.png").write_bytes(b"")
    (tmp_path / "other.md").write_text("# Other page\n\n## The spec: `a`, b × c\n")
    page = tmp_path / "page.md"
    page.write_text("![ok](img.png) [ok](other.md#the-spec-a-b--c) [ok](#here) "
                    "[web](https://example.com/x)\n\n# Here\n\n`[code](missing.md)`\n"
                    "[bad](missing.md) ![bad](img/none.png) [bad](other.md#nothing) [bad](#gone)\n")
    assert broken_links(page) == ["missing.md: no such file", "img/none.png: no such file",
                                  "other.md#nothing: other.md has no heading #nothing",
                                  "#gone: page.md has no heading #gone"]


def test_readme_is_a_front_door() -> None:
    """About 150 lines that link to the rest; outside the repository it names only the test
    data and CI's service scripts."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 170
    for page in PAGES[1:]:
        assert f"(docs/{page.name})" in readme, f"the README does not link docs/{page.name}"
    outside = re.findall(r"\.\./shared/[\w./-]+", readme)
    assert all(p.startswith(("../shared/data/", "../shared/docker/", "../shared/slurm/"))
               for p in outside), outside
