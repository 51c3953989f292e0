"""The filter form of the operator commands, before anything is reached: one saga or a
filter, never both nor neither; the filter options of `saga list` on every action; and how a
bulk report reads. Acting on real sagas: tests/integration/test_bulk_retry.py and
tests/http/test_cli_api.py."""

from __future__ import annotations

import uuid

import pytest
from typer.testing import CliRunner

from adapters.cli.app import app
from adapters.cli.bulk import describe
from orchestrator.bulk import BulkReport, Outcome, Refusal

ACTIONS = ["retry", "skip", "mark-compensated", "pause", "resume", "cancel"]
FILTERS = [
    "--status",
    "--saga",
    "--version",
    "--key",
    "--step",
    "--waiting-for",
    "--created-after",
    "--created-before",
    "--in-status-for",
]


def saga(*args: str) -> tuple[int, str]:
    done = CliRunner().invoke(app, list(args))
    return done.exit_code, done.output


@pytest.mark.parametrize("command", ["list", *ACTIONS])
def test_every_action_takes_the_filter_options_of_list(command: str) -> None:
    code, shown = saga(command, "--help")
    assert code == 0
    for option in FILTERS + ([] if command == "list" else ["--dry-run", "--limit"]):
        assert option in shown, (command, option)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["retry", "-r", "why"], "say which sagas: a saga id or key, or filter options"),
        (["retry", "--saga", "", "-r", "why"], "say which sagas"),
        (["pause", "order-1", "--status", "running", "-r", "why"], "not both"),
        (["resume", "order-1", "--dry-run", "-r", "why"], "go with filter options"),
        (["retry", "order-1", "--limit", "5", "-r", "why"], "go with filter options"),
        (["skip", "--status", "failed", "-r", "why"], "say which step to skip: --step STEP"),
        (["skip", "order-1", "-r", "why"], "say which step to skip: STEP after the saga"),
        (["cancel", "--status", "running", "--hold"], "--hold goes with a start key"),
        (["retry", "--created-after", "yesterday", "-r", "x"], "not an ISO 8601 time"),
        (["retry", "--key", "k" * 300, "-r", "x"], "--key: String should have at most 200"),
        (["retry", "--status", "failed", "--limit", "0", "-r", "x"], "--limit"),
    ],
)
def test_one_saga_or_a_filter_exactly_else_exit_2(args: list[str], says: str) -> None:
    code, shown = saga(*args)
    assert code == 2
    assert says in shown


def test_a_report_says_what_was_done_and_each_refusal() -> None:
    applied, moved = uuid.uuid4(), uuid.uuid4()
    why = "changed since it was listed (still failed, revision 4 -> 6): see its history"
    report = BulkReport(
        action="retry",
        dry_run=False,
        matched=2,
        more=True,
        counts={**dict.fromkeys(Outcome, 0), Outcome.APPLIED: 1, Outcome.CHANGED: 1},
        refusals=(Refusal(moved, "order", "o-2", Outcome.CHANGED, why),),
        sample=(applied,),
    )
    assert describe(report, 2) == [
        "retry: 2 saga(s) matched, 1 acted on, 1 refused (changed 1)",
        f"acted on: {applied}",
        "refused:",
        f"  {moved} (order o-2) changed: {why}",
        "more sagas match beyond --limit 2: run the command again for the next ones",
    ]
    dry = BulkReport(
        action="pause",
        dry_run=True,
        matched=12,
        more=False,
        counts={**dict.fromkeys(Outcome, 0), Outcome.APPLIED: 12},
        refusals=(),
        sample=tuple(uuid.uuid4() for _ in range(10)),
    )
    first, *_ = describe(dry, 1000)
    assert first == (
        "dry run, nothing changed: pause: 12 saga(s) matched, 12 would be acted on, "
        "0 would be refused"
    )
    assert describe(dry, 1000)[1].endswith(", ...")  # ten of twelve shown
