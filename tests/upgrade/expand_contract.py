"""The expand/contract rule for migrations (migrations/__init__.py), checked on their source.

During a rolling upgrade the previous release's orchestrators run on the new schema, so a
migration may only EXPAND it: new tables, views, indexes, nullable columns or columns with a
server default. What breaks the previous code is a CONTRACT step (dropping or renaming a
table or column, changing a column's type, making it NOT NULL, adding a constraint that
rows the previous code writes may violate); such a migration ships one release after the
code stopped using the old shape, and says so with a module-level `CONTRACT = "why ..."`.

`problems(source)` reads a migration module's `upgrade()` (downgrades may do anything) and
names every contract operation in it, unless the module declares CONTRACT with a reason.
Static on purpose: it runs in a millisecond, needs no database, and fails in review.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import migrations

VERSIONS = Path(migrations.__file__).resolve().parent / "versions"

# Released before the rule existed (the first rolling upgrade starts from 0008's schema):
# their upgrades ran long ago on every database, and 0002, 0003 added check constraints
# that the rule would now call contract steps.
EXPAND_ONLY_AFTER = "0008"

# op.<name>(...) that always contract the schema.
ALWAYS = {
    "drop_table": "drops a table",
    "drop_column": "drops a column",
    "rename_table": "renames a table",
    "create_unique_constraint": "adds a unique constraint the previous release may violate",
    "create_check_constraint": "adds a check constraint the previous release may violate",
    "create_foreign_key": "adds a foreign key the previous release may violate",
    "create_primary_key": "adds a primary key to an existing table",
    "batch_alter_table": "rewrites a table (batch mode)",
}
# Raw SQL passed to op.execute that contracts.
SQL = re.compile(
    r"\b(DROP\s+(TABLE|VIEW|MATERIALIZED\s+VIEW|FUNCTION|TRIGGER|TYPE|SEQUENCE)"
    r"|DROP\s+COLUMN|ALTER\s+TABLE\s+\S+\s+DROP\b|RENAME\s+(TO|COLUMN)"
    r"|SET\s+NOT\s+NULL|ALTER\s+COLUMN\s+\S+\s+(SET\s+DATA\s+)?TYPE"
    r"|ADD\s+CONSTRAINT|TRUNCATE)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Migration:
    path: Path
    revision: str
    source: str


def migrations_after(baseline: str = EXPAND_ONLY_AFTER) -> list[Migration]:
    """Every revision module in migrations/versions after `baseline`, by revision id."""
    found = []
    for path in sorted(VERSIONS.glob("[0-9]*.py")):
        source = path.read_text()
        revision = _constant(ast.parse(source), "revision")
        if not isinstance(revision, str):
            raise AssertionError(f"{path.name}: no `revision: str = ...`")
        if revision > baseline:
            found.append(Migration(path, revision, source))
    return found


def problems(source: str, name: str = "<migration>") -> list[str]:
    """Contract operations in the module's upgrade(), unless it declares CONTRACT."""
    tree = ast.parse(source)
    declared = _constant(tree, "CONTRACT")
    if declared is not None:
        if not isinstance(declared, str) or len(declared.strip()) < 20:
            return [
                f"{name}: CONTRACT must say why, in a sentence (which release stopped "
                "using the old shape)"
            ]
        return []
    upgrade = next(
        (n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "upgrade"), None
    )
    if upgrade is None:
        return [f"{name}: no upgrade()"]
    strings = _module_strings(tree)
    found = []
    for node in ast.walk(upgrade):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if not (isinstance(node.func.value, ast.Name) and node.func.value.id == "op"):
            continue
        why = _contracts(node, node.func.attr, strings)
        if why:
            found.append(f"{name}:{node.lineno}: op.{node.func.attr} {why}")
    return found


def _contracts(call: ast.Call, op: str, strings: dict[str, str]) -> str | None:
    if op in ALWAYS:
        return ALWAYS[op]
    keywords = {k.arg: k.value for k in call.keywords if k.arg}
    if op == "alter_column":
        if "new_column_name" in keywords:
            return "renames a column"
        if "type_" in keywords:
            return "changes a column's type"
        if _is_false(keywords.get("nullable")):
            return "makes a column NOT NULL"
        return None
    if op == "add_column":
        column = next((a for a in call.args if isinstance(a, ast.Call)), None)
        if column is not None:
            kw = {k.arg: k.value for k in column.keywords if k.arg}
            required = _is_false(kw.get("nullable")) or _is_true(kw.get("primary_key"))
            if required and "server_default" not in kw:
                return "adds a NOT NULL column without a server default"
        return None
    if op == "execute" and call.args:
        sql = _text(call.args[0], strings)
        if sql is None:
            return "runs SQL this check cannot read (use a string constant)"
        hit = SQL.search(sql)
        if hit:
            return f"runs {hit.group(0)!r}"
    return None


def _text(node: ast.expr, strings: dict[str, str]) -> str | None:
    """The SQL text of a constant, a module-level string, or an f-string's literal parts."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return strings.get(node.id)
    if isinstance(node, ast.JoinedStr):
        return " ".join(
            v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)
        )
    if isinstance(node, ast.Call):  # a helper building SQL: read its string literals
        parts = [n.value for n in ast.walk(node) if isinstance(n, ast.Constant)]
        return " ".join(p for p in parts if isinstance(p, str))
    return None


def _module_strings(tree: ast.Module) -> dict[str, str]:
    out = {}
    for node in tree.body:
        value = _assigned(node)
        if value is not None and isinstance(value[1], str):
            out[value[0]] = value[1]
    return out


def _constant(tree: ast.Module, name: str) -> object:
    for node in tree.body:
        value = _assigned(node)
        if value is not None and value[0] == name:
            return value[1]
    return None


def _assigned(node: ast.stmt) -> tuple[str, object] | None:
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        target, value = node.targets[0], node.value
    elif isinstance(node, ast.AnnAssign) and node.value is not None:
        target, value = node.target, node.value
    else:
        return None
    if isinstance(target, ast.Name) and isinstance(value, ast.Constant):
        return target.id, value.value
    return None


def _is_false(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True
