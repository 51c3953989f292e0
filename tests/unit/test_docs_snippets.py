"""Every ```python block of README.md and docs/*.md runs, so that a reader can paste it.

The conventions (README.md, "Development", says the same to the docs' writers):

- Each block runs alone, in a fresh namespace, as if pasted into an empty file: it imports
  and defines everything it uses; nothing carries over from an earlier block of the page.
  `__name__` is not "__main__", so a complete program's `if __name__ == "__main__":` part
  is defined but not run.
- A block whose first line is `# excerpt: see PATH` is not run. Mark so a block that needs a
  running broker or database (top-level `await`, a connection), or one that shows part of a
  larger file; PATH, from the repository root, is the runnable file or test it comes from or
  that covers it, and must exist.
- Every `Saga` a block defines must also pass its whole-definition check (`Saga.validate`),
  as it would when `saga run` loads it.
- A block indented under a list item counts too (its indent is removed).

Doctest-style `>>>` examples in docstrings are not covered.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator import Saga

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXCERPT = re.compile(r"#\s*excerpt:\s*see\s+(?P<path>\S+)\s*$")
_OPEN = re.compile(r"^(?P<indent>[ \t]*)```python[ \t]*$")


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository root
    line: int  # the opening fence's line, 1-based
    code: str

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def excerpt_of(self) -> str | None:
        """The PATH of an `# excerpt: see PATH` first line; None for a block that runs."""
        first = self.code.lstrip("\n").split("\n", 1)[0]
        if not first.lstrip().startswith("# excerpt:"):
            return None
        found = EXCERPT.match(first.strip())
        if found is None:
            raise AssertionError(
                f"{self.id}: write the excerpt marker as '# excerpt: see PATH' "
                f"(PATH from the repository root), got {first.strip()!r}"
            )
        return found["path"]


def python_blocks(page: str, text: str) -> list[Block]:
    """The ```python blocks of a Markdown page, in order, with their indent removed."""
    lines = text.split("\n")
    blocks: list[Block] = []
    n = 0
    while n < len(lines):
        opening = _OPEN.match(lines[n])
        if opening is None:
            n += 1
            continue
        closing = re.compile(rf"^{re.escape(opening['indent'])}```[ \t]*$")
        end = next((i for i in range(n + 1, len(lines)) if closing.match(lines[i])), None)
        if end is None:
            raise AssertionError(f"{page}:{n + 1}: a ```python block is never closed")
        code = textwrap.dedent("\n".join(lines[n + 1 : end]))
        blocks.append(Block(page, n + 1, code))
        n = end + 1
    return blocks


def _all_blocks() -> list[Block]:
    return [
        block
        for page in PAGES
        for block in python_blocks(str(page.relative_to(ROOT)), page.read_text())
    ]


BLOCKS = _all_blocks()
RUNNABLE = [b for b in BLOCKS if b.excerpt_of is None]
EXCERPTS = [b for b in BLOCKS if b.excerpt_of is not None]


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: b.id)
def test_the_block_runs(block: Block) -> None:
    # Blank lines in front, so that a traceback's line numbers are the page's; and none of
    # this module's `from __future__` imports, which a pasted block would not have either.
    source = "\n" * block.line + block.code
    namespace: dict[str, object] = {"__name__": "docs_snippet"}
    exec(compile(source, block.page, "exec", dont_inherit=True), namespace)
    for value in namespace.values():
        if isinstance(value, Saga):
            value.validate()


@pytest.mark.parametrize("block", EXCERPTS, ids=lambda b: b.id)
def test_an_excerpt_names_a_file_that_exists(block: Block) -> None:
    path = block.excerpt_of
    assert path is not None
    target = (ROOT / path).resolve()
    assert target.is_relative_to(ROOT) and target.is_file(), (
        f"{block.id}: the excerpt says it comes from {path!r}, which is not a file of the "
        "repository; name the runnable file or test it comes from"
    )


def test_the_readme_and_the_saga_pages_have_runnable_blocks() -> None:
    """The extraction finds what is there (a broken pattern would make every test vacuous)."""
    pages = {b.page for b in RUNNABLE}
    assert {"README.md", "docs/participants.md", "docs/fan-out-and-children.md"} <= pages
    assert len(BLOCKS) >= 13 and EXCERPTS


def test_extraction_finds_indented_blocks_and_excerpt_markers() -> None:
    page = "\n".join(
        [
            "text",
            "```python",
            "x = 1",
            "```",
            "- a list item:",
            "",
            "  ```python",
            "  # excerpt: see sagas/order.py",
            "  await something()",
            "  ```",
            "```bash",
            "echo not python",
            "```",
        ]
    )
    blocks = python_blocks("page.md", page)
    assert [(b.line, b.code, b.excerpt_of) for b in blocks] == [
        (2, "x = 1", None),
        (7, "# excerpt: see sagas/order.py\nawait something()", "sagas/order.py"),
    ]
    with pytest.raises(AssertionError, match="never closed"):
        python_blocks("page.md", "```python\nx = 1\n")
    with pytest.raises(AssertionError, match="'# excerpt: see PATH'"):
        _ = Block("page.md", 1, "# excerpt: sagas/order.py").excerpt_of
