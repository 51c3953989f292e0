"""The CLI imports without `examples/` (a deployment need not ship the example shop): only
`saga demo` imports it, when it runs."""

from __future__ import annotations

import subprocess
import sys

# Any import of `examples` fails, as where the package is absent.
_WITHOUT_EXAMPLES = """
import importlib.abc, sys

class NoExamples(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "examples" or name.startswith("examples."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, NoExamples())
from typer.testing import CliRunner
from adapters.cli.app import app

shown = CliRunner().invoke(app, ["--help"])
assert shown.exit_code == 0, shown.output
assert "demo" in shown.output
assert not [m for m in sys.modules if m.split(".")[0] == "examples"]
"""


def test_the_cli_imports_and_helps_without_examples() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_EXAMPLES],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


_DATABASE_LIBRARIES = """
import sys
from adapters.cli.app import app

print(sorted({m.split(".")[0] for m in sys.modules} & {"sqlalchemy", "psycopg", "alembic"}))
"""


def test_the_cli_imports_no_database_library_before_a_command_needs_it() -> None:
    """`saga --help` and the commands over the HTTP API (`--url`) never touch the database:
    a command that does imports the PostgreSQL adapter when it runs. Every `saga` process
    would pay the import otherwise (about half its start-up)."""
    done = subprocess.run(
        [sys.executable, "-c", _DATABASE_LIBRARIES],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
