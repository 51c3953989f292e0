"""The web dashboard: two server-rendered page shells and their static assets.

The pages hold no data of their own. A little vanilla JavaScript (static/) fetches the JSON
API of the same origin (docs/http-api.md) and draws the list, the timeline, the history and
the actions; the API authenticates, authorizes and redacts, the pages only show what it
returns. Nothing is loaded from anywhere else: no CDN, no build step, no npm.
"""

from __future__ import annotations

import html
import uuid
from pathlib import Path
from string import Template

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from orchestrator.state import SagaStatus

STATIC = Path(__file__).parent / "static"

# Served by name only: a request can never reach a file that is not listed here.
ASSETS = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "bulk.js": "text/javascript; charset=utf-8",
    "saga.js": "text/javascript; charset=utf-8",
}

# The pages run only our own scripts, styles and fetches. Data is inserted as text, never as
# markup, so this is a second line of defence against a saga whose input carries HTML.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

router = APIRouter(include_in_schema=False)

_PAGE = Template("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="$root/static/dashboard.css">
$scripts
</head>
<body data-page="$page" data-root="$root"$extra>
<a class="skip-link" href="#main">Skip to content</a>
<header class="top">
  <a class="brand" href="$root/">Sagas</a>
  <span class="muted">times in UTC</span>
  <form id="token-form" class="token-form" hidden>
    <label for="token-input">API token</label>
    <input id="token-input" type="password" autocomplete="off" spellcheck="false" required>
    <button type="submit">Use token</button>
    <span class="muted">kept in this tab only</span>
  </form>
  <button id="token-forget" type="button" class="link-button" hidden>Forget token</button>
</header>
<main id="main">
<p id="alert" class="alert" role="alert" hidden></p>
$body
</main>
</body>
</html>
""")

_LIST_BODY = Template("""<h1>Sagas</h1>
<section aria-labelledby="counts-title">
  <h2 id="counts-title" class="visually-hidden">Counts by status</h2>
  <ul id="counts" class="counts" aria-live="polite"></ul>
</section>
<form id="filters" class="filters" method="get" action="$root/" role="search">
  <fieldset>
    <legend>Filter</legend>
    <label>Status
      <select name="status">
        <option value="">any</option>
        $status_options
      </select>
    </label>
    <label>Saga <input name="saga" autocomplete="off" placeholder="order"></label>
    <label>Key <input name="key" autocomplete="off"></label>
    <label>Step <input name="step" autocomplete="off"
      title="sagas where this step is running, compensating or parked failed"></label>
    <label>Waiting for signal <input name="waiting_for" autocomplete="off"
      title="sagas waiting now for this signal (their wait step of that name)"></label>
    <label>Search fields <input name="where" autocomplete="off" spellcheck="false"
      placeholder="customer_id=c-17; amount>1000" class="wide"
      title="NAME OP VALUE on a search field, OP one of = != &gt; &gt;= &lt; &lt;=; several: a;b"
      ></label>
    <label>In status for more than
      <input name="in_status_for_minutes" type="number" min="0" step="1" inputmode="numeric"
        class="narrow"> min</label>
    <label>Created after <input name="created_after" type="datetime-local" step="1"></label>
    <label>Created before <input name="created_before" type="datetime-local" step="1"></label>
    <button type="submit">Apply</button>
    <button type="reset" id="clear-filters">Clear</button>
  </fieldset>
</form>
<div class="toolbar">
  <label><input type="checkbox" id="live" checked> Live (every 5 s)</label>
  <span id="updated" class="muted" aria-live="off"></span>
</div>
<section class="bulk" aria-labelledby="bulk-title">
  <h2 id="bulk-title">Every saga of this filter</h2>
  <div id="bulk-actions" class="actions"></div>
  <div id="bulk-result" class="notice" role="status" hidden></div>
</section>
<table id="sagas" class="grid">
  <caption class="visually-hidden">Sagas, most recent activity first</caption>
  <thead><tr>
    <th scope="col">Key</th><th scope="col">Saga</th><th scope="col">Status</th>
    <th scope="col">In status for</th><th scope="col">Current steps</th>
    <th scope="col">Created</th><th scope="col">Updated</th><th scope="col">Error</th>
  </tr></thead>
  <tbody></tbody>
</table>
<p id="empty" class="muted" hidden>No sagas match these filters.</p>
<button id="more" type="button" hidden>Load more</button>
<dialog id="bulk-confirm" aria-labelledby="bulk-confirm-title">
  <form id="bulk-form" method="dialog">
    <h2 id="bulk-confirm-title"></h2>
    <p id="bulk-filter" class="muted"></p>
    <p id="bulk-count" aria-live="polite"></p>
    <ul id="bulk-preview" class="refusals"></ul>
    <label id="bulk-result-field" hidden>Result of the step (JSON, optional)
      <textarea id="bulk-step-result" rows="3" spellcheck="false"></textarea></label>
    <label>Reason (required)
      <textarea id="bulk-reason" rows="2" required></textarea></label>
    <label>Who (optional) <input id="bulk-who" autocomplete="off"></label>
    <p id="bulk-error" class="alert" role="alert" hidden></p>
    <div class="dialog-buttons">
      <button type="button" id="bulk-back">Back</button>
      <button type="submit" id="bulk-ok" class="danger" disabled>Confirm</button>
    </div>
  </form>
</dialog>
""")

_SAGA_BODY = Template("""<p><a href="$root/">&larr; All sagas</a></p>
<h1 id="title">Saga <code>$saga_id</code></h1>
<dl id="summary" class="summary"></dl>
<section aria-labelledby="actions-title">
  <h2 id="actions-title">Actions</h2>
  <div id="actions" class="actions"></div>
  <p id="notice" class="notice" role="status" hidden></p>
</section>
<section aria-labelledby="timeline-title">
  <h2 id="timeline-title">Timeline</h2>
  <div id="timeline" class="timeline"></div>
  <ul id="legend" class="legend" aria-label="Legend"></ul>
</section>
<section aria-labelledby="steps-title">
  <h2 id="steps-title">Steps</h2>
  <table id="steps" class="grid">
    <thead><tr>
      <th scope="col">#</th><th scope="col">Step</th><th scope="col">Status</th>
      <th scope="col">Attempt</th><th scope="col">Compensation attempt</th>
      <th scope="col">Dispatched</th><th scope="col">Due</th><th scope="col">Signal</th>
      <th scope="col">Error</th>
    </tr></thead>
    <tbody></tbody>
  </table>
</section>
<section aria-labelledby="data-title">
  <h2 id="data-title">Input, payloads, results and output</h2>
  <div class="columns">
    <div><h3>Input</h3><pre id="input" class="json"></pre></div>
    <div><h3>Step payloads</h3><pre id="payloads" class="json"></pre></div>
    <div><h3>Step results</h3><pre id="results" class="json"></pre></div>
    <div><h3>Output</h3><pre id="output" class="json"></pre></div>
  </div>
</section>
<section aria-labelledby="history-title">
  <h2 id="history-title">History</h2>
  <table id="history" class="grid">
    <thead><tr>
      <th scope="col">Seq</th><th scope="col">At</th><th scope="col">Event</th>
      <th scope="col">Step</th><th scope="col">Actor</th><th scope="col">Detail</th>
    </tr></thead>
    <tbody></tbody>
  </table>
</section>
<dialog id="confirm" aria-labelledby="confirm-title">
  <form id="confirm-form" method="dialog">
    <h2 id="confirm-title"></h2>
    <p id="confirm-text"></p>
    <div id="skip-fields" hidden>
      <label>Step <select id="skip-step"></select></label>
      <label>Result (JSON, optional)
        <textarea id="skip-result" rows="3" spellcheck="false"></textarea></label>
    </div>
    <div id="signal-fields" hidden>
      <label>Signal <select id="signal-name"></select></label>
      <label>Payload (a JSON object)
        <textarea id="signal-payload" rows="6" spellcheck="false"></textarea></label>
      <label>Signal id (send again with the same id: taken once)
        <input id="signal-id" autocomplete="off" spellcheck="false"></label>
    </div>
    <label id="reason-field">Reason (required)
      <textarea id="confirm-reason" rows="2" required></textarea></label>
    <label>Who (optional) <input id="confirm-who" autocomplete="off"></label>
    <p id="confirm-error" class="alert" role="alert" hidden></p>
    <div class="dialog-buttons">
      <button type="button" id="confirm-back" value="back">Back</button>
      <button type="submit" id="confirm-ok" class="danger">Confirm</button>
    </div>
  </form>
</dialog>
""")


def _root(request: Request) -> str:
    return html.escape(str(request.scope.get("root_path", "")).rstrip("/"))


def _page(
    request: Request,
    *,
    title: str,
    page: str,
    body: str,
    scripts: list[str],
    extra: str = "",
    status_code: int = 200,
) -> HTMLResponse:
    root = _root(request)
    tags = "\n".join(f'<script src="{root}/static/{name}" defer></script>' for name in scripts)
    text = _PAGE.substitute(
        title=html.escape(title), page=page, root=root, scripts=tags, extra=extra, body=body
    )
    return HTMLResponse(text, status_code=status_code, headers=SECURITY_HEADERS)


@router.get("/", response_class=HTMLResponse)
async def saga_list(request: Request) -> HTMLResponse:
    options = "\n        ".join(f'<option value="{s.value}">{s.value}</option>' for s in SagaStatus)
    body = _LIST_BODY.substitute(root=_root(request), status_options=options)
    return _page(
        request, title="Sagas", page="list", body=body, scripts=["dashboard.js", "bulk.js"]
    )


@router.get("/sagas/{saga_id}", response_class=HTMLResponse)
async def saga_page(request: Request, saga_id: str) -> HTMLResponse:
    try:
        parsed = uuid.UUID(saga_id)
    except ValueError:
        body = (
            f'<p><a href="{_root(request)}/">&larr; All sagas</a></p><h1>Not a saga id</h1>'
            f"<p><code>{html.escape(saga_id)}</code> is not a saga id (a UUID).</p>"
        )
        return _page(
            request, title="Not found", page="none", body=body, scripts=[], status_code=404
        )
    body = _SAGA_BODY.substitute(root=_root(request), saga_id=parsed)
    return _page(
        request,
        title=f"Saga {parsed}",
        page="saga",
        body=body,
        scripts=["dashboard.js", "saga.js"],
        extra=f' data-saga-id="{parsed}"',
    )


@router.get("/static/{name}")
async def static_asset(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:
        return Response("not found", status_code=404, media_type="text/plain")
    return FileResponse(
        STATIC / name,
        media_type=media_type,
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"},
    )
