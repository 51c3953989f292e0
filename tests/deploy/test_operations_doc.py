"""docs/operations.md stays true to the code: every setting documented, every operator
command it tells you to run a real one."""

from __future__ import annotations

import re

from tests.deploy import code_facts as facts
from tests.deploy import manifests as m

OPERATIONS = facts.ROOT / "docs" / "operations.md"


def test_every_setting_is_documented() -> None:
    text = OPERATIONS.read_text()
    missing = [name for name in facts.settings_env() if f"`{name}`" not in text]
    assert missing == []


def test_every_saga_command_it_shows_is_real() -> None:
    text = OPERATIONS.read_text()
    # Inline code and command lines that run `saga <sub> ...`: the subcommand and every option.
    spans = re.findall(
        r"(?:`|/|-- |^\s*|exec orchestrator-1 )saga ([a-z][a-z-]*)([^`\n]*)", text, flags=re.M
    )
    commands = [
        [sub, *(w.split("=")[0] for w in rest.split() if w[:1] == "-")] for sub, rest in spans
    ]
    assert len(commands) >= 15
    assert m.saga_command_problems(["retry", "ID", "--reasn", "x"]) != []
    problems = [p for command in commands for p in m.saga_command_problems(command)]
    assert problems == []
