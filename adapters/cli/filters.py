"""The filter options of `saga list`, which the operator commands take too to act on every
saga they match (`saga retry --status failed --step notify_customer ...`).

They are declared once, in `read_filter`, and read into the API's `SagaFilter`: over the API
it is the request's filter as it stands, on the database `SagaFilter.query` makes the store's
query of it, as the API does. A filter added there and here works in every command on both
paths. `takes` adds such a group of options to a command.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from adapters.cli import support as cs
from adapters.http.models import SagaFilter
from orchestrator.ports import SagaQuery
from orchestrator.registry import Registry
from orchestrator.state import SagaStatus


def takes(options: Callable[..., Any], name: str) -> Callable[[Callable[..., Any]], Any]:
    """A decorator: the command takes the keyword parameters of `options` (typer options) as
    its own too, and is called with what `options` makes of them as its parameter `name`."""
    added = inspect.signature(options, eval_str=True).parameters

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = inspect.signature(command, eval_str=True)
        kept = [p for p in own.parameters.values() if p.name != name]
        # Listed (and so shown by --help) after the command's arguments, before its options.
        first = [p for p in kept if p.kind != p.KEYWORD_ONLY]
        params = [*first, *added.values(), *kept[len(first) :]]

        @functools.wraps(command)
        def wrapper(**given: Any) -> Any:
            made = options(**{n: given.pop(n) for n in added})
            return command(**given, **{name: made})

        wrapper.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate


def read_filter(
    *,
    filter_status: Annotated[
        SagaStatus | None, typer.Option("--status", help="Only sagas in this status.")
    ] = None,
    filter_saga: Annotated[str | None, typer.Option("--saga", help="Only this saga name.")] = None,
    filter_version: Annotated[
        int | None, typer.Option("--version", min=1, help="Only this saga version.")
    ] = None,
    filter_key: Annotated[
        str | None, typer.Option("--key", help="Only sagas with this start key.")
    ] = None,
    filter_step: Annotated[
        str | None,
        typer.Option(
            "--step", help="Only sagas where this step runs, compensates, or failed and parks."
        ),
    ] = None,
    filter_waiting_for: Annotated[
        str | None,
        typer.Option(
            "--waiting-for",
            metavar="SIGNAL",
            help="Only sagas waiting now for this signal (their wait step of that name).",
        ),
    ] = None,
    filter_created_after: Annotated[
        str | None,
        typer.Option("--created-after", help="Created at or after (ISO 8601; UTC without offset)."),
    ] = None,
    filter_created_before: Annotated[
        str | None, typer.Option("--created-before", help="Created before.")
    ] = None,
    filter_in_status_for: Annotated[
        int | None,
        typer.Option(
            "--in-status-for",
            min=0,
            metavar="MIN",
            help="In their current status for at least this many minutes.",
        ),
    ] = None,
    filter_where: Annotated[
        list[str] | None,
        typer.Option(
            "--where",
            metavar="NAME OP VALUE",
            help="Only sagas whose search field compares so (repeatable, all must hold): "
            'customer_id=c-17, "amount>1000"; OP is one of = != > >= < <=.',
        ),
    ] = None,
) -> SagaFilter | None:
    """The filter these options give; None when none is given (or all blank). A bad one:
    exit 2."""
    given = {
        "status": filter_status,
        "saga": filter_saga,
        "version": filter_version,
        "key": filter_key,
        "step": filter_step,
        "waiting_for": filter_waiting_for,
        "created_after": cs.parse_time("--created-after", filter_created_after),
        "created_before": cs.parse_time("--created-before", filter_created_before),
        "in_status_for_minutes": filter_in_status_for,
        "where": filter_where,
    }
    try:
        made = SagaFilter(**{name: value for name, value in given.items() if value is not None})
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            option = "--" + str(error["loc"][0]).removesuffix("_minutes").replace("_", "-")
            typer.secho(f"error: {option}: {error['msg']}", fg="red", err=True)
        raise typer.Exit(2) from None
    return None if made == SagaFilter() else made  # blank options are none, as in the API


def query_of(where: SagaFilter, registry: Registry, *, limit: int) -> SagaQuery:
    """The store's query of the filter, on the database; a `--where` condition that cannot
    apply (a field no saga of SAGA_MODULES declares, a value not of its type): exit 2 saying
    what to write."""
    from orchestrator.search_filters import InvalidFilter

    try:
        return where.query(registry, limit=limit)
    except InvalidFilter as exc:
        typer.secho(f"error: --where: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
