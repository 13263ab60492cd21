"""The README and docs/ as a newcomer meets them: a short first screen, every page linked, no dead links, no history."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import ROOT

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
HISTORY = ("previously", "used to", "our previous", "from earlier")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _pages() -> list[Path]:
    return [README, *DOCS]


def _prose_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line) of ``path`` outside fenced code blocks and tables."""
    out, fenced = [], False
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced and not line.lstrip().startswith("|"):
            out.append((n, line))
    return out


def test_first_screen_gets_a_newcomer_from_clone_to_a_scored_video() -> None:
    lines = README.read_text().splitlines()
    end = next((i for i, line in enumerate(lines) if line.strip() == "## Tour"), None)
    assert end is not None, "README has no '## Tour' heading"
    first = "\n".join(lines[:end])
    assert end <= 40, f"README's first screen (before '## Tour') is {end} lines; at most 40"
    assert "make demo" in first
    assert "source .venv/bin/activate" in first and ".venv/bin/skipgan-edge" in first
    assert re.search(r"^pip install '?skipgan-edge\[[a-z0-9,-]+\]'?", first, re.M), "no one-line pip install of the extras"
    assert re.search(r"skipgan-edge run .*--source .*--save-video", first), "no command that scores a video"


def test_the_first_screens_extras_exist() -> None:
    first = README.read_text().split("## Tour", 1)[0]
    extras = re.search(r"^pip install '?skipgan-edge\[([a-z0-9,-]+)\]", first, re.M)
    assert extras
    pyproject = (ROOT / "pyproject.toml").read_text()
    declared = set(re.findall(r"^([a-z0-9-]+) = \[", pyproject.split("[project.optional-dependencies]", 1)[1], re.M))
    assert set(extras.group(1).split(",")) <= declared, f"extras not in pyproject.toml: {extras.group(1)}"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    assert DOCS, "docs/ has no pages"
    linked = {target.split("#")[0] for target in LINK.findall(README.read_text())}
    missing = [p.name for p in DOCS if f"docs/{p.name}" not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"


def test_every_relative_link_resolves() -> None:
    dead = []
    for page in _pages():
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = target.split("#")[0]
            if not (page.parent / path).exists():
                dead.append(f"{page.relative_to(ROOT)}: {target}")
    assert not dead, f"links to files that do not exist: {dead}"


def test_prose_lines_fit_120_characters() -> None:
    long = [f"{page.relative_to(ROOT)}:{n} ({len(line)})" for page in _pages()
            for n, line in _prose_lines(page) if len(line) > 120]
    assert not long, f"prose lines over 120 characters: {long}"


def test_docs_describe_what_is_not_history() -> None:
    found = [f"{page.relative_to(ROOT)}: {phrase!r}" for page in _pages()
             for phrase in HISTORY if phrase in page.read_text().lower()]
    assert not found, f"history phrasing: {found}"


def test_export_docs_install_modelopt_as_the_makefile_does() -> None:
    """docs/export.md's install without make: Model Optimizer with --no-deps, after exactly the Makefile's MODELOPT_DEPS."""
    import shlex

    make = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    spec = re.search(r"^MODELOPT_SPEC := (.+)$", make, re.M)
    deps = re.search(r"^MODELOPT_DEPS := (.+)$", make, re.M)
    assert spec and deps
    block = (ROOT / "docs" / "export.md").read_text().split("## Install: Model Optimizer without its GPU dependencies", 1)[1]
    lines = block.split("```bash\n", 1)[1].split("```", 1)[0].replace("\\\n", " ").splitlines()
    assert len(lines) == 2, lines
    first, second = (shlex.split(line) for line in lines)
    assert first[:3] == ["pip", "install", "-e"] and "export" not in first[3] and first[4:] == shlex.split(deps.group(1))
    assert second == ["pip", "install", "--no-deps", *shlex.split(spec.group(1))]
