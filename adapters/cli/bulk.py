"""The filter form of the operator commands: `saga retry --status failed --step
notify_customer -r WHY [--dry-run] [--limit N]` acts on every saga the filter matches
(`Engine.bulk` on the database, `POST /api/bulk/{action}` over the API) and prints how many
it acted on and each saga refused, with why. Exit 0 when every saga took the action (and for
a dry run), 1 when some were refused.

`filter_form` gives a command the filter options of `saga list` (adapters/cli/filters.py),
`--dry-run` and `--limit`; `target` checks that the command names one saga or a filter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn

import typer

from adapters.cli import support as cs
from adapters.cli.api import ApiClient
from adapters.cli.filters import read_filter, takes
from adapters.http.models import SagaFilter
from orchestrator.bulk import BulkAction, BulkReport, Outcome, action_name
from orchestrator.machine import SkipRequested

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000  # the API's largest


@dataclass(frozen=True)
class BulkOptions:
    dry_run: bool
    limit: int | None


def bulk_options(
    *,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="With filter options: say how many and which sagas it would act on, and "
            "change nothing.",
        ),
    ] = False,
    limit: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=MAX_LIMIT,
            help=f"With filter options: act on at most this many (default {DEFAULT_LIMIT}), "
            "newest activity first.",
        ),
    ] = None,
) -> BulkOptions:
    return BulkOptions(dry_run, limit)


def filter_form(command: Callable[..., Any]) -> Callable[..., Any]:
    """The command takes the filter options (as `where`), --dry-run and --limit (`bulk`)."""
    with_bulk: Callable[..., Any] = takes(bulk_options, "bulk")(command)
    with_filter: Callable[..., Any] = takes(read_filter, "where")(with_bulk)
    return with_filter


def target(ident: str | None, where: SagaFilter | None, bulk: BulkOptions) -> SagaFilter | None:
    """The filter to act on, or None to act on the saga `ident`; exit 2 unless exactly one of
    them is given."""
    if ident is not None and where is not None:
        _bad("give a saga id or key, or filter options, not both")
    if ident is None and where is None:
        _bad(
            "say which sagas: a saga id or key, or filter options (--status, --saga, --step, "
            "...; see --help)"
        )
    if ident is not None and (bulk.dry_run or bulk.limit is not None):
        _bad("--dry-run and --limit go with filter options, not with one saga")
    return where


def act(
    where: SagaFilter,
    action: BulkAction,
    bulk: BulkOptions,
    *,
    who: str,
    url: str | None,
    token: str | None,
) -> None:
    """Act on every saga `where` matches (on the database, the actor `operator:<who>`; over
    the API, `api:<who>`), print the report, exit 1 if any saga was refused."""
    limit = bulk.limit or DEFAULT_LIMIT
    if url:
        body: dict[str, Any] = {
            "filter": where.model_dump(mode="json", exclude_none=True),
            "reason": action.reason,
            "who": who,
            "dry_run": bulk.dry_run,
            "limit": limit,
        }
        if isinstance(action, SkipRequested):
            body |= {"step": action.step, "result": action.result}
        with ApiClient(url, token) as api:
            report = api.bulk(action_name(action), body)
    else:

        async def run(engine: Any) -> BulkReport:
            query = where.query(engine.registry, limit=limit)
            done: BulkReport = await engine.bulk(
                query, action, f"operator:{who}", limit=limit, dry_run=bulk.dry_run
            )
            return done

        report = cs.run(cs.with_engine(cs.settings(), run, retry=False))
    typer.echo("\n".join(describe(report, limit)))
    if report.refusals and not report.dry_run:
        raise typer.Exit(1)


def describe(report: BulkReport, limit: int) -> list[str]:
    """The report as lines for people."""
    refused = sum(n for outcome, n in report.counts.items() if outcome != Outcome.APPLIED)
    by_outcome = ", ".join(
        f"{outcome.value} {n}"
        for outcome, n in report.counts.items()
        if n and outcome != Outcome.APPLIED
    )
    applied = report.counts[Outcome.APPLIED]
    would = "would be " if report.dry_run else ""
    lines = [
        ("dry run, nothing changed: " if report.dry_run else "")
        + f"{report.action}: {report.matched} saga(s) matched, {applied} {would}acted on, "
        f"{refused} {would}refused" + (f" ({by_outcome})" if by_outcome else "")
    ]
    if report.sample:
        shown = ", ".join(str(i) for i in report.sample)
        more = ", ..." if applied > len(report.sample) else ""
        lines.append(f"{'would act' if report.dry_run else 'acted'} on: {shown}{more}")
    if report.refusals:
        lines.append(f"{would}refused:")
        lines += [
            f"  {r.saga_id} ({r.saga} {r.key}) {r.outcome.value}: {r.why}" for r in report.refusals
        ]
    if report.more:
        lines.append(
            f"more sagas match beyond --limit {limit}: run the command again for the next ones"
        )
    return lines


def _bad(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(2)
