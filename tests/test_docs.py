"""Every Python code block in README.md and docs/*.md runs as written, so the docs cannot drift.

A block that is not meant to run alone (a signature listing, a fragment) is preceded by the line
``<!-- not run: REASON -->``; blocks of one page share a namespace, in order, like a notebook.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:<!-- not run: (?P<why>[^>]*) -->\s*\n)?```python\n(?P<code>.*?)```", re.S)


def blocks(page: Path) -> list[tuple[int, str, str | None]]:
    text = page.read_text(encoding="utf-8")
    return [(text[: m.start()].count("\n") + 1, m.group("code"), m.group("why")) for m in BLOCK.finditer(text)]


RUNNABLE = [p for p in PAGES if any(why is None for _, _, why in blocks(p))]


@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: p.name)
def test_code_blocks_run(page, tmp_path, monkeypatch):
    needs_dot = any(s in code for _, code, why in blocks(page) if why is None for s in (".svg", ".png", ".pdf", ".html"))
    if needs_dot and shutil.which("dot") is None:
        pytest.skip("Graphviz `dot` is not installed (CI installs it)")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for line, code, why in blocks(page):
        if why is not None:
            assert why.strip(), f"{page.name}:{line}: say why the block is not run"
            continue
        try:
            exec(compile(code, f"{page.name}:{line}", "exec"), namespace)
        except Exception as e:  # name the block: the traceback alone points into exec
            raise AssertionError(f"{page.relative_to(ROOT)} line {line}: the code block fails: {e!r}") from e


def test_every_page_is_checked():
    """Every page with Python blocks is either run or says why each block is not."""
    for page in PAGES:
        for line, _, why in blocks(page):
            assert why is None or why.strip(), f"{page.name}:{line}"
    assert os.path.basename(RUNNABLE[0]) == "README.md"


NUMBER = re.compile(r"(?<![\w.])\d+\.\d+(?![\w])")
SOURCE = re.compile(r"python (-m )?[\w./]+|circuits (discover|evaluate|patch|render)|benchmarks/\w+\.py|scripts/\w+\.py|"
                    r"circuits/zoo/\S+\.py|training\.json|ground_truth\.json|report\.json|tests/test_\w+\.py")


@pytest.mark.parametrize("name", ["zoo.md", "planted.md", "benchmarks.md"])
def test_every_number_names_what_produced_it(name):
    """Each section of these pages that quotes a measured number (a decimal) names the command,
    script, test or record file it comes from."""
    text = (ROOT / "docs" / name).read_text(encoding="utf-8")
    bare = [sec.splitlines()[0] for sec in re.split(r"\n(?=#{2,4} )", text)
            if NUMBER.search(sec) and not SOURCE.search(sec)]
    assert not bare, f"docs/{name}: sections quoting numbers without their source: {bare}"
