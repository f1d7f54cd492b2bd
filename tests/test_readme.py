"""The README and docs/architecture.md stay true to the tree: their module tables name every module under rest/,
and their links resolve.

Read from the files alone (no import of rest): a module added, moved or removed without
updating the README's Layout table and architecture.md's Modules table fails here.
"""

from __future__ import annotations

import re

from conftest import ROOT

README = ROOT / "README.md"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
PACKAGE = ROOT / "rest"
TICKED = re.compile(r"`([^`]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
REPO_PATH = re.compile(r"^(?:docs|benchmarks|rest|search_spaces|tests)/[\w./-]*$")


def _section(text: str, title: str) -> str:
    """The body of a page's `## title` section (up to the next `## `)."""
    _, found, rest = text.partition(f"\n## {title}\n")
    assert found, f"no '## {title}' section"
    return rest.split("\n## ", 1)[0]


def layout_table(text: str) -> dict[str, set[str]]:
    """package directory (e.g. 'rest/core/') -> the module names its row gives ('train.py', 'data/')."""
    rows = {}
    for line in _section(text, "Layout").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[0].startswith("`rest/"):
            continue
        package = TICKED.findall(cells[0])[0]
        rows[package] = set(TICKED.findall(cells[1]))
    return rows


def modules_on_disk(packages: set[str]) -> set[str]:
    """Every module under rest/ as 'package/name', a directory that is no table row counted once as 'name/'."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        if path.name == "__init__.py" and path.parent.relative_to(ROOT).as_posix() + "/" in packages:
            continue
        rel = path.relative_to(ROOT).as_posix()
        package = max((p for p in packages if rel.startswith(p)), key=len)
        inner = rel[len(package) :]
        found.add(package + (inner.split("/")[0] + "/" if "/" in inner else inner))
    return found


def test_the_layout_table_names_every_module_under_rest_and_nothing_else():
    rows = layout_table(README.read_text())
    assert "rest/" in rows and len(rows) >= 2, rows
    named = {package + module for package, modules in rows.items() for module in modules}
    on_disk = modules_on_disk(set(rows))
    assert not on_disk - named, f"README's Layout table leaves out {sorted(on_disk - named)}"
    assert not named - on_disk, f"README's Layout table names what does not exist: {sorted(named - on_disk)}"


def layer_packages() -> set[str]:
    """'rest/' and each package directly under it ('rest/core/', ...)."""
    return {"rest/"} | {p.parent.relative_to(ROOT).as_posix() + "/" for p in PACKAGE.glob("*/__init__.py")}


def modules_table(text: str) -> set[str]:
    """The module each row of architecture.md's Modules table names in its first cell ('rest/core/train.py')."""
    rows = set()
    for line in _section(text, "Modules").splitlines():
        first = line.strip().strip("|").split("|")[0].strip()
        if first.startswith("`rest/"):
            rows |= set(TICKED.findall(first))
    return rows


def test_the_architecture_page_names_every_module_under_rest_and_nothing_else():
    named = modules_table(ARCHITECTURE.read_text())
    on_disk = modules_on_disk(layer_packages())
    assert len(on_disk) > 50, sorted(on_disk)
    assert not on_disk - named, f"docs/architecture.md's Modules table leaves out {sorted(on_disk - named)}"
    assert not named - on_disk, f"docs/architecture.md names what does not exist: {sorted(named - on_disk)}"


def test_links_and_repository_paths_in_the_readmes_and_docs_resolve():
    pages = [README, ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        text = page.read_text()
        for target in LINK.findall(text):
            if "://" in target or target.startswith("#"):
                continue
            if not (page.parent / target.split("#")[0]).exists():
                broken.append(f"{page.relative_to(ROOT)}: ({target})")
    for path in TICKED.findall(README.read_text()):
        if REPO_PATH.match(path) and not (ROOT / path).exists():
            broken.append(f"README.md: `{path}`")
    assert not broken, broken
