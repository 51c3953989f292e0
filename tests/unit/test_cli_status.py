"""`saga status` tells each step's compensation apart from its action: in flight, waiting to
retry, done after N attempts, with its last failure; and `--wide` cuts nothing short. (Both
paths, the database and `--url`, are run against each other in tests/http/test_cli_api.py.)
It also shows the payloads steps built and the saga's output."""

from __future__ import annotations

from adapters.cli.status import render
from orchestrator.ports import HistoryRecord
from orchestrator.testing import SAGA_ID
from tests.unit.builders import T0, Run, shop, three_steps


def records(run: Run) -> list[HistoryRecord]:
    """The run's history as the store gives it back."""
    entries = [h for d in run.decisions for h in d.history]
    return [
        HistoryRecord(SAGA_ID, n, T0, h.event, h.step, h.detail, "engine")
        for n, h in enumerate(entries, 1)
    ]


def row(run: Run, step: str, *, wide: bool = False) -> str:
    shown = render(run.state, records(run), wide=wide)
    [line] = [line for line in shown.splitlines() if line.startswith(f"{step} ")]
    return " ".join(line.split())


def test_a_compensation_from_dispatch_through_a_retry_to_done() -> None:
    run = Run(three_steps())
    run.succeed({"reserved": 2})
    run.fail("card declined", retryable=False)  # charge, the pivot: undo the reservation
    assert row(run, "reserve") == 'reserve compensating 1 {"reserved": 2} attempt 1 in flight'
    assert row(run, "charge") == "charge failed 1 card declined"

    run.fail("warehouse down")  # the compensation, retryable
    assert row(run, "reserve").endswith(
        "attempt 1 failed, waiting to retry; last failure: warehouse down"
    )
    run.when_due()
    assert row(run, "reserve").endswith("attempt 2 in flight; last failure: warehouse down")
    run.succeed({"released": 2})
    # The compensation's own result is not kept: its status and attempts are what there is.
    assert row(run, "reserve") == (
        'reserve compensated 1 {"reserved": 2} compensated (2 attempts); '
        "last failure: warehouse down"
    )
    assert row(run, "notify") == "notify pending 0"


def test_a_parked_compensation_and_one_marked_done_by_hand() -> None:
    run = Run(three_steps())
    run.succeed()
    run.fail("card declined", retryable=False)
    run.fail("no such reservation", retryable=False)
    assert run.status() == "failed"
    assert row(run, "reserve").endswith("parked after 1 attempt; last failure: no such reservation")
    run.mark_compensated("released in the warehouse UI")
    assert row(run, "reserve").endswith(
        "marked compensated by engine: released in the warehouse UI; "
        "last failure: no such reservation"
    )


def test_wide_shows_values_whole_and_the_history() -> None:
    run = Run(three_steps())
    long = "x" * 100
    run.succeed({"note": long})
    run.fail(f"declined: {long}", retryable=False)
    narrow = render(run.state, records(run), wide=False)
    assert long not in narrow and "…" in narrow and "history:" not in narrow
    wide = render(run.state, records(run), wide=True)
    steps, history = wide.split("\nhistory:\n")
    assert f'{{"note": "{long}"}}' in steps
    assert f'"message": "declined: {long}"' in steps  # the whole error, not its message only
    assert history.count(long) == 2  # step_failed and saga_compensating carry the error
    assert "step_succeeded" in history and "compensation_dispatched" in history


def test_the_payloads_steps_built_and_the_output_are_shown() -> None:
    s = shop(output=lambda ctx: {"charge": ctx.results["charge"]["id"]})
    s.remote("charge", command="payments.charge", pivot=True)
    s.remote("notify", command="mail.send", payload=lambda ctx: {"charge": ctx.results["charge"]})
    run = Run(s)
    run.succeed({"id": "c-1"})
    shown = render(run.state, records(run), wide=False)
    assert "output:" not in shown
    payloads = shown.split("payloads (sent instead of the saga's input):\n")[1]
    assert [" ".join(line.split()) for line in payloads.splitlines()[-1:]] == [
        'notify {"charge": {"id": "c-1"}}'
    ]
    run.succeed({"sent": True})
    assert render(run.state, records(run), wide=False).endswith('\noutput: {"charge": "c-1"}')
