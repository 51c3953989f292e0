/* The saga dashboard: shared helpers (window.Dash) and the saga list page.
 *
 * Every piece of data goes into the page as text (textContent, createTextNode, attribute
 * values), never as markup. The API token, when one is needed, lives in sessionStorage and
 * travels only in the Authorization header, never in a URL.
 */
"use strict";

(function () {
  const body = document.body;
  const ROOT = body.dataset.root || "";
  const TOKEN_KEY = "saga-dashboard.token";
  const WHO_KEY = "saga-dashboard.who";

  // -- building elements --------------------------------------------------------------

  function append(node, children) {
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      node.setAttribute(name, value === true ? "" : String(value));
    }
    return append(node, children);
  }

  const SVG_NS = "http://www.w3.org/2000/svg";

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      node.setAttribute(name, String(value));
    }
    return append(node, children);
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  /** Run `render`, which may replace the focused element: focus its replacement after. The
   * pages refresh every few seconds; keyboard users must not lose their place each time. */
  function keepFocus(render) {
    const active = document.activeElement;
    let selector = null;
    if (active && active !== document.body) {
      const row = active.closest("[data-saga-id]");
      if (active.id) selector = `#${CSS.escape(active.id)}`;
      else if (row && active.tagName === "A") {
        selector = `tr[data-saga-id="${CSS.escape(row.dataset.sagaId)}"] a`;
      } else if (active.dataset.status && active.closest("#counts")) {
        selector = `#counts [data-status="${CSS.escape(active.dataset.status)}"]`;
      }
    }
    render();
    if (selector && !document.contains(active)) {
      const again = document.querySelector(selector);
      if (again) again.focus();
    }
  }

  // -- formatting ----------------------------------------------------------------------

  function pad(n, width) {
    return String(n).padStart(width || 2, "0");
  }

  /** "2024-05-01 12:00:03" in UTC (with milliseconds when `ms`). */
  function fmtTime(iso, ms) {
    if (!iso) return "";
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    const base =
      `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
      `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}`;
    return ms ? `${base}.${pad(d.getUTCMilliseconds(), 3)}` : base;
  }

  /** A duration for people: "850 ms", "4.2 s", "3 min 5 s", "2 h 10 min", "3 d 4 h". */
  function fmtDuration(ms) {
    if (ms === null || ms === undefined || Number.isNaN(ms)) return "";
    ms = Math.max(0, ms);
    if (ms < 1000) return `${Math.round(ms)} ms`;
    const s = ms / 1000;
    if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${Math.floor(s % 60)} s`;
    const h = Math.floor(m / 60);
    if (h < 24) return `${h} h ${m % 60} min`;
    return `${Math.floor(h / 24)} d ${h % 24} h`;
  }

  function pretty(value) {
    return JSON.stringify(value === undefined ? null : value, null, 2);
  }

  /** An error object in one line: its message if it has one, else compact JSON. */
  function errorText(error) {
    if (error === null || error === undefined) return "";
    if (typeof error === "object" && typeof error.message === "string" && error.message) {
      return error.step ? `${error.message} (step ${error.step})` : error.message;
    }
    return typeof error === "string" ? error : JSON.stringify(error);
  }

  function statusBadge(status) {
    return el("span", { class: `status status-${status}` }, status);
  }

  function sagaHref(id) {
    return `${ROOT}/sagas/${encodeURIComponent(id)}`;
  }

  function debounce(fn, wait) {
    let timer = null;
    return (...args) => {
      clearTimeout(timer);
      timer = setTimeout(() => fn(...args), wait);
    };
  }

  // -- alerts ---------------------------------------------------------------------------

  const alertBox = document.getElementById("alert");

  function showAlert(message) {
    if (!alertBox) return;
    alertBox.textContent = message;
    alertBox.hidden = false;
  }

  function clearAlert() {
    if (!alertBox) return;
    alertBox.textContent = "";
    alertBox.hidden = true;
  }

  // -- the API and its token ------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, problem) {
      const detail =
        (problem && (problem.detail || problem.title)) || `the server answered ${status}`;
      super(typeof detail === "string" ? detail : JSON.stringify(detail));
      this.status = status;
      this.problem = problem;
    }
  }

  const tokenForm = document.getElementById("token-form");
  const tokenInput = document.getElementById("token-input");
  const tokenForget = document.getElementById("token-forget");
  const onTokenChanged = [];

  function token() {
    try {
      return sessionStorage.getItem(TOKEN_KEY);
    } catch (_e) {
      return null;
    }
  }

  function askForToken() {
    if (!tokenForm || !tokenForm.hidden) return;
    tokenForm.hidden = false;
    tokenInput.value = "";
    tokenInput.focus();
  }

  if (tokenForm) {
    tokenForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const value = tokenInput.value.trim();
      if (!value) return;
      sessionStorage.setItem(TOKEN_KEY, value);
      tokenInput.value = "";
      tokenForm.hidden = true;
      tokenForget.hidden = false;
      clearAlert();
      onTokenChanged.forEach((fn) => fn());
    });
    tokenForget.hidden = !token();
    tokenForget.addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      tokenForget.hidden = true;
      onTokenChanged.forEach((fn) => fn());
    });
  }

  /** Call the JSON API of this origin; resolve to the parsed body, reject with ApiError. */
  async function api(path, options) {
    const opts = options || {};
    const headers = { Accept: "application/json" };
    const bearer = token();
    if (bearer) headers.Authorization = `Bearer ${bearer}`;
    const init = { method: opts.method || "GET", headers, credentials: "same-origin" };
    if (opts.body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(opts.body);
    }
    let response;
    try {
      response = await fetch(ROOT + path, init);
    } catch (e) {
      throw new ApiError(0, { detail: `cannot reach the server (${e.message})` });
    }
    const type = response.headers.get("Content-Type") || "";
    let data = null;
    if (type.includes("json")) {
      data = await response.json().catch(() => null);
    } else {
      const text = await response.text();
      data = text ? { detail: text.slice(0, 500) } : null;
    }
    if (response.status === 401) {
      askForToken();
      throw new ApiError(401, {
        detail: (data && data.detail) || "this server needs an API token: enter one above",
      });
    }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  /** A query string; a list value repeats its parameter (`where=a&where=b`). */
  function query(params) {
    const search = new URLSearchParams();
    for (const [name, value] of Object.entries(params)) {
      if (Array.isArray(value)) {
        for (const item of value) search.append(name, String(item));
      } else if (value !== null && value !== undefined && value !== "") {
        search.set(name, String(value));
      }
    }
    const text = search.toString();
    return text ? `?${text}` : "";
  }

  function who() {
    try {
      return localStorage.getItem(WHO_KEY) || "";
    } catch (_e) {
      return "";
    }
  }

  function rememberWho(value) {
    try {
      if (value) localStorage.setItem(WHO_KEY, value);
    } catch (_e) {
      /* private mode: nothing to remember */
    }
  }

  window.Dash = {
    ROOT, el, svg, clear, keepFocus, fmtTime, fmtDuration, pretty, errorText, statusBadge, sagaHref,
    debounce, showAlert, clearAlert, api, query, ApiError, onTokenChanged, who, rememberWho,
  };

  if (body.dataset.page === "list") listPage();

  // -- the list page ------------------------------------------------------------------------

  function listPage() {
    const FILTERS = [
      "status", "saga", "key", "step", "waiting_for", "where", "in_status_for_minutes",
      "created_after", "created_before",
    ];
    const TIMES = new Set(["created_after", "created_before"]);
    // Search field conditions: one field holds them separated by ";", the API takes each
    // as a `where=` of its own.
    const CONDITIONS = new Set(["where"]);
    const MAX = 500;
    // The page size: 50, or the link's `limit` (kept in the URL when given).
    const asked = Number(new URLSearchParams(location.search).get("limit"));
    const PAGE = Number.isInteger(asked) && asked >= 1 && asked <= MAX ? asked : 50;
    const PAGE_PARAM = PAGE === 50 ? {} : { limit: PAGE };
    const LIVE_MS = 5000;

    const form = document.getElementById("filters");
    const countsList = document.getElementById("counts");
    const tbody = document.querySelector("#sagas tbody");
    const empty = document.getElementById("empty");
    const more = document.getElementById("more");
    const live = document.getElementById("live");
    const updated = document.getElementById("updated");

    let rows = [];
    let nextCursor = null;
    const onLoaded = [];
    let generation = 0; // answers to superseded requests are dropped
    let busy = false;

    // datetime-local holds "YYYY-MM-DDTHH:MM[:SS]" without a zone: the page reads it as UTC.
    function toIso(local) {
      const d = new Date(`${local.length === 16 ? `${local}:00` : local}Z`);
      return Number.isNaN(d.getTime()) ? "" : d.toISOString();
    }

    function toLocalInput(iso) {
      const d = new Date(iso);
      return Number.isNaN(d.getTime()) ? "" : d.toISOString().slice(0, 19);
    }

    function readForm() {
      const filters = {};
      for (const name of FILTERS) {
        const raw = form.elements[name].value.trim();
        if (!raw) continue;
        if (CONDITIONS.has(name)) {
          const each = raw.split(";").map((c) => c.trim()).filter((c) => c);
          if (each.length) filters[name] = each;
          continue;
        }
        filters[name] = TIMES.has(name) ? toIso(raw) : raw;
      }
      return filters;
    }

    function fillForm(params) {
      for (const name of FILTERS) {
        if (CONDITIONS.has(name)) {
          form.elements[name].value = params.getAll(name).join("; ");
          continue;
        }
        const value = params.get(name) || "";
        form.elements[name].value = TIMES.has(name) && value ? toLocalInput(value) : value;
      }
    }

    function syncUrl(filters) {
      const url = `${location.pathname}${query({ ...filters, ...PAGE_PARAM })}`;
      if (url !== `${location.pathname}${location.search}`) history.replaceState(null, "", url);
    }

    function renderCounts(counts, active) {
      clear(countsList);
      for (const [status, n] of Object.entries(counts)) {
        const button = el(
          "button",
          {
            type: "button",
            class: `count status-${status}`,
            "data-status": status,
            "aria-pressed": active === status ? "true" : "false",
            title: active === status ? "Show every status" : `Show only ${status} sagas`,
          },
          el("span", { class: "n" }, String(n)),
          el("span", { class: "label" }, status),
        );
        button.addEventListener("click", () => {
          form.elements.status.value = active === status ? "" : status;
          reload();
        });
        countsList.appendChild(el("li", {}, button));
      }
    }

    function renderRows(now) {
      clear(tbody);
      for (const s of rows) {
        const since = s.status_since ? now - Date.parse(s.status_since) : null;
        tbody.appendChild(
          el(
            "tr",
            { "data-saga-id": s.saga_id, "data-status": s.status },
            el("td", {}, el("a", { href: sagaHref(s.saga_id), class: "mono" }, s.key || s.saga_id)),
            el("td", {}, `${s.saga} `, el("span", { class: "muted" }, `v${s.version}`)),
            el("td", {}, statusBadge(s.status)),
            el("td", { title: fmtTime(s.status_since, true) }, fmtDuration(since)),
            el("td", { class: "mono" }, currentSteps(s)),
            el("td", {}, fmtTime(s.created_at)),
            el("td", {}, fmtTime(s.updated_at)),
            el("td", { class: "detail" }, errorText(s.error)),
          ),
        );
      }
      empty.hidden = rows.length > 0;
      more.hidden = !nextCursor;
    }

    /** The steps running or compensating now; one waiting for a signal says so. */
    function currentSteps(s) {
      const waiting = new Set(s.waiting_for || []);
      return (s.current_steps || [])
        .map((name) => (waiting.has(name) ? `${name} (waits for signal)` : name))
        .join(", ");
    }

    async function load(appendPage) {
      const filters = readForm();
      syncUrl(filters);
      const mine = ++generation;
      busy = true;
      try {
        const limit = appendPage ? PAGE : Math.min(MAX, Math.max(PAGE, rows.length));
        const listParams = { ...filters, limit };
        if (appendPage) listParams.cursor = nextCursor;
        const [page, counts] = await Promise.all([
          api(`/api/sagas${query(listParams)}`),
          appendPage ? null : api(`/api/sagas/counts${query({ saga: filters.saga })}`),
        ]);
        if (mine !== generation) return;
        rows = appendPage ? rows.concat(page.items) : page.items;
        nextCursor = page.next_cursor;
        keepFocus(() => {
          if (counts) renderCounts(counts.counts, filters.status || "");
          renderRows(Date.now());
        });
        clearAlert();
        updated.textContent = `updated ${fmtTime(new Date().toISOString())}`;
        onLoaded.forEach((fn) => fn(filters));
      } catch (e) {
        if (mine === generation) showAlert(e.message);
      } finally {
        if (mine === generation) busy = false;
      }
    }

    function reload() {
      return load(false);
    }

    const reloadSoon = debounce(reload, 350);
    form.addEventListener("input", reloadSoon);
    form.addEventListener("change", reloadSoon);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      reload();
    });
    form.addEventListener("reset", () => setTimeout(reload, 0));
    more.addEventListener("click", () => load(true));
    onTokenChanged.push(reload);
    window.addEventListener("popstate", () => {
      fillForm(new URLSearchParams(location.search));
      reload();
    });

    setInterval(() => {
      if (live.checked && !document.hidden && !busy) reload();
    }, LIVE_MS);

    // For the bulk actions (bulk.js): the filter they act on, told each time the list has
    // loaded for it, and a refresh once they did.
    window.Dash.listFilters = readForm;
    window.Dash.reloadList = reload;
    window.Dash.onListLoaded = onLoaded;

    fillForm(new URLSearchParams(location.search));
    reload();
  }
})();
