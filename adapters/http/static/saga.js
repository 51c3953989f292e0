/* The saga page: summary, actions behind a confirmation, the step timeline drawn to scale
 * from the history, steps, input and results, and the history itself. Uses window.Dash
 * (dashboard.js); every piece of data goes in as text.
 */
"use strict";

(function () {
  const D = window.Dash;
  const { el, svg, clear } = D;
  const SAGA_ID = document.body.dataset.sagaId;
  const REFRESH_MS = 3000;
  const FINISHED = new Set(["completed", "compensated", "cancelled", "failed"]);

  let detail = null;
  let historyItems = [];
  let busy = false;
  let again = false; // a refresh was asked for while one was under way
  let ticks = 0;

  // -- the timeline, worked out from the history ------------------------------------------

  /** Lanes in definition order; a map step's items right after their map step. */
  function laneOrder(steps, history) {
    const top = steps.filter((s) => s.item === null || s.item === undefined);
    const items = steps.filter((s) => s.item !== null && s.item !== undefined);
    const names = [];
    for (const s of top.sort((a, b) => a.index - b.index)) {
      names.push(s.name);
      for (const i of items.filter((x) => x.name.startsWith(`${s.name}[`))) {
        names.push(i.name);
      }
    }
    for (const s of steps) if (!names.includes(s.name)) names.push(s.name);
    for (const h of history) if (h.step && !names.includes(h.step)) names.push(h.step);
    return names;
  }

  const SAGA_LINES = new Set([
    "saga_cancel_accepted", "saga_compensating", "saga_paused", "saga_resumed", "saga_retried",
    "saga_deadline_exceeded", "compensation_deadline_exceeded",
  ]);

  /**
   * Bars (one per attempt: dispatch to outcome), markers and retry waits per lane, plus the
   * saga's own events, from the history in sequence order. An attempt still in flight ends
   * at `end` (now, or the saga's last event when it is finished).
   */
  function buildTimeline(saga, history, nowMs) {
    const lanes = new Map();
    for (const name of laneOrder(saga.steps, history)) {
      lanes.set(name, { name, bars: [], markers: [], waits: [] });
    }
    const open = new Map(); // "step|kind" -> bar
    const waiting = new Map(); // "step|kind" -> wait
    const sagaMarks = [];
    let first = Date.parse(saga.created_at);
    let last = first;

    function start(lane, kind, t, h) {
      const key = `${lane.name}|${kind}`;
      const w = waiting.get(key);
      if (w) {
        w.end = t;
        waiting.delete(key);
      }
      const bar = { kind, start: t, end: null, attempt: (h.detail || {}).attempt, outcome: "open" };
      open.set(key, bar);
      lane.bars.push(bar);
    }

    function close(lane, kind, t, outcome, h) {
      const key = `${lane.name}|${kind}`;
      const bar = open.get(key);
      if (!bar) return false;
      bar.end = t;
      bar.outcome = outcome;
      const seconds = (h.detail || {}).seconds;
      if (typeof seconds === "number") bar.seconds = seconds;
      open.delete(key);
      return true;
    }

    function mark(lane, shape, t, h) {
      lane.markers.push({ shape, t, event: h.event, detail: h.detail });
    }

    function retryWait(lane, kind, t, h) {
      const due = Date.parse((h.detail || {}).due_at);
      const w = { start: t, end: null, due };
      lane.waits.push(w);
      waiting.set(`${lane.name}|${kind}`, w);
    }

    for (const h of history) {
      const t = Date.parse(h.at);
      if (Number.isNaN(t)) continue;
      first = Math.min(first, t);
      last = Math.max(last, t);
      const d = h.detail || {};
      const sagaEvent = h.event.startsWith("saga_") || h.event.startsWith("cancel_");
      const lane = h.step && !sagaEvent ? lanes.get(h.step) : null;
      if (!lane) {
        if (sagaEvent) {
          sagaMarks.push({ t, event: h.event, step: h.step, detail: h.detail });
          if (h.event === "saga_failed" && d.step && d.type === "compensation_failed") {
            const stepLane = lanes.get(d.step);
            if (stepLane) close(stepLane, "compensation", t, "failed", h);
          }
        }
        continue;
      }
      switch (h.event) {
        case "step_dispatched":
          start(lane, "action", t, h);
          break;
        case "step_started": {
          const bar = open.get(`${lane.name}|action`);
          if (bar) bar.started = t;
          break;
        }
        case "step_succeeded":
          close(lane, "action", t, "succeeded", h);
          break;
        case "step_failed":
          if (!close(lane, "action", t, "failed", h)) mark(lane, "failed", t, h);
          break;
        case "step_timed_out":
          close(lane, "action", t, "timed_out", h);
          mark(lane, "timeout", t, h);
          break;
        case "step_retry_scheduled":
          close(lane, "action", t, "retry", h);
          mark(lane, "retry", t, h);
          retryWait(lane, "action", t, h);
          break;
        case "step_skipped":
          mark(lane, "skipped", t, h);
          break;
        case "sleep_started":
          start(lane, "sleep", t, h);
          break;
        case "sleep_finished":
          close(lane, "sleep", t, "succeeded", h);
          break;
        case "wait_started": // a wait for a signal: a bar like a sleep's
          start(lane, "wait", t, h);
          break;
        case "wait_finished":
          if (!close(lane, "wait", t, "succeeded", h)) mark(lane, "signal", t, h); // held before
          break;
        case "wait_timed_out":
          close(lane, "wait", t, "timed_out", h);
          mark(lane, "timeout", t, h);
          break;
        case "signal_held":
        case "signal_refused":
          mark(lane, "signal", t, h);
          break;
        case "map_started": // the items have lanes of their own, right below
          start(lane, "map", t, h);
          break;
        case "map_finished":
          close(lane, "map", t, "succeeded", h);
          break;
        case "compensation_dispatched":
          start(lane, "compensation", t, h);
          break;
        case "step_compensated":
          close(lane, "compensation", t, "succeeded", h);
          break;
        case "compensation_timed_out":
          close(lane, "compensation", t, "timed_out", h);
          mark(lane, "timeout", t, h);
          break;
        case "compensation_retry_scheduled":
          close(lane, "compensation", t, "retry", h);
          mark(lane, "retry", t, h);
          retryWait(lane, "compensation", t, h);
          break;
        case "compensation_parked":
          close(lane, "compensation", t, "failed", h);
          mark(lane, "failed", t, h);
          break;
        case "step_marked_compensated":
          mark(lane, "compensated", t, h);
          break;
        default:
          break;
      }
    }
    const finished = FINISHED.has(saga.status);
    const end = finished ? last : Math.max(last, nowMs);
    for (const bar of open.values()) bar.end = end;
    // A wait no dispatch ended: drawn up to its due time, or to the end if that is later.
    for (const w of waiting.values()) {
      w.end = Math.max(w.start, Math.min(Number.isNaN(w.due) ? end : w.due, end));
    }
    return { lanes: [...lanes.values()], sagaMarks, first, end, finished };
  }

  // -- drawing it -----------------------------------------------------------------------

  const LABEL_W = 190;
  const PLOT_W = 860;
  const RIGHT = 24;
  const AXIS_H = 26;
  const LANE_H = 30;

  function niceStep(span) {
    const raw = span / 8;
    const pow = 10 ** Math.floor(Math.log10(raw));
    for (const m of [1, 2, 5, 10]) if (m * pow >= raw) return m * pow;
    return 10 * pow;
  }

  function fmtOffset(ms) {
    if (ms === 0) return "0";
    if (ms < 1000) return `+${Math.round(ms)} ms`;
    if (ms < 60000) return `+${+(ms / 1000).toFixed(2)} s`;
    if (ms < 3600000) return `+${+(ms / 60000).toFixed(1)} min`;
    return `+${+(ms / 3600000).toFixed(1)} h`;
  }

  const OUTCOME_WORDS = {
    succeeded: "succeeded",
    failed: "failed",
    timed_out: "timed out",
    retry: "failed, retry scheduled",
    open: "in flight",
  };

  function iso(ms) {
    return D.fmtTime(new Date(ms).toISOString(), true);
  }

  function markerShape(shape, x, y) {
    const r = 5;
    switch (shape) {
      case "retry":
        return svg("circle", { cx: x, cy: y, r });
      case "timeout":
        return svg("path", { d: `M${x},${y - r - 1} L${x + r + 1},${y + r} L${x - r - 1},${y + r} Z` });
      case "failed":
        return svg("rect", { x: x - r + 1, y: y - r + 1, width: 2 * r - 2, height: 2 * r - 2 });
      default: // skipped, compensated, saga: a diamond
        return svg("path", { d: `M${x},${y - r - 1} L${x + r + 1},${y} L${x},${y + r + 1} L${x - r - 1},${y} Z` });
    }
  }

  function drawTimeline(model) {
    const container = document.getElementById("timeline");
    clear(container);
    const { lanes, sagaMarks, first } = model;
    const span = Math.max(model.end - first, 1);
    const scale = PLOT_W / span;
    const x = (t) => LABEL_W + (t - first) * scale;
    const height = AXIS_H + LANE_H * (lanes.length + 1) + 6;
    const width = LABEL_W + PLOT_W + RIGHT;
    const root = svg("svg", {
      viewBox: `0 0 ${width} ${height}`,
      width,
      height,
      role: "img",
      "aria-labelledby": "timeline-svg-title",
      "data-start": new Date(first).toISOString(),
      "data-end": new Date(model.end).toISOString(),
      "data-px-per-ms": scale,
    });
    root.appendChild(
      svg("title", { id: "timeline-svg-title" },
        `Step timeline from ${iso(first)} to ${iso(model.end)} UTC (${D.fmtDuration(span)})`),
    );

    // axis and grid
    const axis = svg("g", { class: "axis" });
    const step = niceStep(span);
    for (let off = 0; off <= span + 1e-6; off += step) {
      const gx = LABEL_W + off * scale;
      axis.appendChild(svg("line", { class: "grid-line", x1: gx, x2: gx, y1: AXIS_H - 4, y2: height }));
      const last = gx > width - 70; // keep the last label inside the picture
      axis.appendChild(svg("text", { x: last ? gx - 2 : gx + 2, y: 14,
        "text-anchor": last ? "end" : "start" }, fmtOffset(off)));
    }
    axis.appendChild(svg("text", { x: 4, y: 14 }, `${D.fmtTime(new Date(first).toISOString())} UTC`));
    root.appendChild(axis);

    // the saga's own lane
    const sagaY = AXIS_H;
    root.appendChild(svg("text", { x: 4, y: sagaY + 19 }, "saga"));
    const sagaG = svg("g", { class: "saga-events" });
    for (const m of sagaMarks) {
      const mx = x(m.t);
      if (SAGA_LINES.has(m.event)) {
        sagaG.appendChild(svg("line", { class: "saga-line", x1: mx, x2: mx, y1: sagaY + 4, y2: height }));
      }
      const shape = markerShape("saga", mx, sagaY + 15);
      shape.setAttribute("class", "marker m-saga");
      shape.setAttribute("data-event", m.event);
      const about = m.step ? ` (step ${m.step})` : "";
      shape.appendChild(svg("title", {}, `${m.event}${about} at ${iso(m.t)}${detailText(m.detail)}`));
      sagaG.appendChild(shape);
    }
    root.appendChild(sagaG);

    lanes.forEach((lane, i) => {
      const y = AXIS_H + LANE_H * (i + 1);
      const g = svg("g", { class: "lane", "data-step": lane.name });
      const item = /\[\d+\]$/.test(lane.name);
      g.appendChild(svg("line", { class: "lane-line", x1: 0, x2: width, y1: y, y2: y }));
      g.appendChild(
        svg("text", { x: item ? 16 : 4, y: y + 19, class: item ? "item-label" : null },
          lane.name.length > 26 ? `${lane.name.slice(0, 25)}…` : lane.name),
      );
      for (const w of lane.waits) {
        const wy = y + 10;
        const line = svg("line", { class: "wait", x1: x(w.start), x2: x(w.end), y1: wy, y2: wy });
        line.appendChild(svg("title", {}, `waiting to retry until ${Number.isNaN(w.due) ? "?" : iso(w.due)}`));
        g.appendChild(line);
      }
      for (const bar of lane.bars) {
        const compensation = bar.kind === "compensation";
        const duration = Math.max(0, bar.end - bar.start);
        const rect = svg("rect", {
          class: `bar kind-${bar.kind} outcome-${bar.outcome}`,
          x: x(bar.start).toFixed(2),
          y: compensation ? y + 17 : y + 4,
          width: Math.max(duration * scale, 1.5).toFixed(2),
          height: compensation ? 10 : 12,
          rx: 2,
          "data-kind": bar.kind,
          "data-attempt": bar.attempt === undefined ? "" : bar.attempt,
          "data-outcome": bar.outcome,
          "data-duration-ms": duration,
        });
        const what = bar.kind === "sleep" ? "sleep"
          : bar.kind === "map" ? "map step (its items below)"
            : bar.kind === "wait" ? "wait for its signal"
              : `${bar.kind} attempt ${bar.attempt}`;
        const outcome =
          bar.kind === "compensation" && bar.outcome === "succeeded"
            ? "compensated"
            : OUTCOME_WORDS[bar.outcome] || bar.outcome;
        let title =
          `${lane.name}: ${what} — dispatched ${iso(bar.start)}, ` +
          `${outcome} ${bar.outcome === "open" ? "so far" : iso(bar.end)} (${D.fmtDuration(duration)})`;
        if (bar.started) title += `; participant started it ${iso(bar.started)}`;
        rect.appendChild(svg("title", {}, title));
        g.appendChild(rect);
      }
      for (const m of lane.markers) {
        const shape = markerShape(m.shape, x(m.t), y + 10);
        shape.setAttribute("class", `marker m-${m.shape}`);
        shape.setAttribute("data-event", m.event);
        shape.appendChild(svg("title", {}, `${lane.name}: ${m.event} at ${iso(m.t)}${detailText(m.detail)}`));
        g.appendChild(shape);
      }
      root.appendChild(g);
    });

    if (!model.finished) {
      const nx = x(model.end);
      root.appendChild(
        svg("line", { class: "now-line", x1: nx, x2: nx, y1: AXIS_H - 4, y2: height },
          svg("title", {}, `now: ${iso(model.end)}`)),
      );
    }
    container.appendChild(root);
  }

  function detailText(value) {
    if (!value || typeof value !== "object" || Object.keys(value).length === 0) return "";
    const text = JSON.stringify(value);
    return `: ${text.length > 300 ? `${text.slice(0, 300)}…` : text}`;
  }

  function drawLegend() {
    const legend = document.getElementById("legend");
    if (legend.childElementCount) return;
    const swatch = (cls) =>
      svg("svg", { viewBox: "0 0 28 14", "aria-hidden": "true" },
        svg("rect", { class: cls, x: 1, y: 1, width: 26, height: 12, rx: 2 }));
    const mark = (shape) => {
      const s = markerShape(shape, 14, 7);
      s.setAttribute("class", `marker m-${shape}`);
      return svg("svg", { viewBox: "0 0 28 14", "aria-hidden": "true" }, s);
    };
    const entries = [
      [swatch("bar kind-action outcome-succeeded"), "attempt succeeded"],
      [swatch("bar kind-action outcome-retry"), "attempt failed, retried"],
      [swatch("bar kind-action outcome-timed_out"), "attempt timed out"],
      [swatch("bar kind-action outcome-failed"), "attempt failed for good"],
      [swatch("bar kind-action outcome-open"), "in flight"],
      [swatch("bar kind-compensation outcome-succeeded"), "compensation (lower half)"],
      [swatch("bar kind-compensation outcome-failed"), "compensation failed"],
      [swatch("bar kind-sleep outcome-succeeded"), "durable sleep, or a map step's span"],
      [swatch("bar kind-wait outcome-succeeded"), "wait for a signal"],
      [mark("signal"), "signal held, taken early or refused"],
      [mark("retry"), "retry scheduled (dotted: wait)"],
      [mark("timeout"), "timeout"],
      [mark("failed"), "failed"],
      [mark("skipped"), "skipped"],
      [mark("compensated"), "marked compensated"],
      [mark("saga"), "saga event (dashed line: cancel, pause, …)"],
    ];
    for (const [icon, text] of entries) legend.appendChild(el("li", {}, icon, text));
  }

  // -- summary, steps, data, history -----------------------------------------------------

  function renderSummary(s, now) {
    const dl = clear(document.getElementById("summary"));
    const row = (term, ...value) => {
      dl.appendChild(el("dt", {}, term));
      dl.appendChild(el("dd", {}, ...value));
    };
    document.title = `${s.saga} ${s.key} — ${s.status}`;
    const title = clear(document.getElementById("title"));
    title.append(`${s.saga} `, el("span", { class: "muted" }, `v${s.version}`), " · ",
      el("code", {}, s.key));
    row("Status", D.statusBadge(s.status),
      s.resume_status ? ` (resumes ${s.resume_status})` : null);
    row("In status since", D.fmtTime(s.status_since, true),
      s.status_since ? el("span", { class: "muted" },
        ` (${D.fmtDuration(now - Date.parse(s.status_since))})`) : null);
    row("Saga id", el("code", {}, s.saga_id));
    row("Created", D.fmtTime(s.created_at, true));
    row("Updated", D.fmtTime(s.updated_at, true));
    if (s.deadline_at) row("Deadline", D.fmtTime(s.deadline_at, true));
    if (s.current_steps && s.current_steps.length) {
      row("Current steps", el("code", {}, s.current_steps.join(", ")));
    }
    for (const step of s.steps) {
      if (step.wait && step.wait.stage === "waiting") {
        row("Waiting for signal", el("code", { class: "waiting-for" }, step.wait.signal),
          ` since ${D.fmtTime(step.wait.waiting_since)}, until ${D.fmtTime(step.wait.until)}`);
      }
    }
    if (s.cancel_reason) row("Cancel reason", s.cancel_reason);
    if (s.parent) {
      const p = s.parent;
      row("Parent", p.saga_id ? el("a", { href: D.sagaHref(p.saga_id) }, `${p.saga_id}`) : null,
        p.step ? ` step ${p.step}` : null);
    }
    if (s.error) {
      row("Error", el("span", { id: "saga-error" }, D.errorText(s.error)),
        el("details", {}, el("summary", {}, "as JSON"), el("pre", { class: "json" }, D.pretty(s.error))));
    }
  }

  function renderSteps(s) {
    const tbody = clear(document.querySelector("#steps tbody"));
    for (const step of s.steps) {
      const item = step.item !== null && step.item !== undefined;
      tbody.appendChild(
        el("tr", { "data-step": step.name, "data-status": step.status },
          el("td", {}, String(step.index)),
          el("td", { class: "mono" }, item ? `  ${step.name}` : step.name),
          el("td", {}, D.statusBadge(step.status)),
          el("td", {}, String(step.attempt)),
          el("td", {}, String(step.compensation_attempt)),
          el("td", {}, D.fmtTime(step.dispatched_at, true)),
          el("td", {}, D.fmtTime(step.due_at, true)),
          el("td", { class: "detail wait-cell" }, waitText(step.wait)),
          el("td", { class: "detail" }, D.errorText(step.error))),
      );
    }
    document.getElementById("input").textContent = D.pretty(s.input);
    // What a step's commands carry instead of the input (payload=, a child's input). A map
    // item's `payload` is its item: the work list, not a payload, so it is left out.
    const payloads = {};
    const results = {};
    for (const step of s.steps) {
      const item = step.item !== null && step.item !== undefined;
      // A wait step's payload is the signal it holds or took: in its Signal cell instead.
      if (!item && !step.wait && step.payload !== null && step.payload !== undefined) {
        payloads[step.name] = step.payload;
      }
      if (step.result !== null && step.result !== undefined) results[step.name] = step.result;
    }
    document.getElementById("payloads").textContent = D.pretty(payloads);
    document.getElementById("results").textContent = D.pretty(results);
    document.getElementById("output").textContent = D.pretty(s.output ?? null);
  }

  /** Where a wait step's wait stands, in words; "" for other steps. */
  function waitText(wait) {
    if (!wait) return "";
    switch (wait.stage) {
      case "waiting":
        return `waiting for ${wait.signal} since ${D.fmtTime(wait.waiting_since)}, ` +
          `until ${D.fmtTime(wait.until)}`;
      case "held":
        return `${wait.signal} held (id ${wait.signal_id}), taken when the wait begins`;
      case "taken":
        return `${wait.signal} taken (id ${wait.signal_id}) at ${D.fmtTime(wait.received_at)}`;
      case "pending":
        return `will wait for ${wait.signal} (at most ${D.fmtDuration(wait.timeout * 1000)})`;
      default:
        return `no ${wait.signal} taken`;
    }
  }

  function renderHistory(items) {
    const tbody = clear(document.querySelector("#history tbody"));
    for (const h of items) {
      const detailCell = el("td", { class: "detail" });
      if (h.detail !== null && h.detail !== undefined) {
        detailCell.appendChild(el("code", {}, JSON.stringify(h.detail)));
      }
      tbody.appendChild(
        el("tr", { "data-event": h.event },
          el("td", {}, String(h.seq)),
          el("td", { class: "mono" }, D.fmtTime(h.at, true)),
          el("td", {}, h.event),
          el("td", { class: "mono" }, h.step || ""),
          el("td", {}, h.actor || ""),
          detailCell),
      );
    }
  }

  // -- actions ------------------------------------------------------------------------------

  /** Wait steps a signal can go to now: waiting, or still to come (the signal is held). */
  function signalable(s) {
    return s.steps.filter((x) => x.wait && (x.wait.stage === "waiting" || x.wait.stage === "pending"));
  }

  /** A payload to start from: the wait's result model's fields, each with an empty value of
   * its type (or its default). */
  function skeleton(schema) {
    const defs = (schema && schema.$defs) || {};
    function empty(prop) {
      if (!prop) return null;
      if (prop.default !== undefined) return prop.default;
      if (prop.$ref) return empty(defs[prop.$ref.split("/").pop()]);
      if (prop.anyOf) return empty(prop.anyOf.find((p) => p.type !== "null"));
      switch (prop.type) {
        case "boolean": return false;
        case "integer": case "number": return 0;
        case "string": return "";
        case "array": return [];
        case "object":
          return Object.fromEntries(Object.entries(prop.properties || {})
            .map(([name, p]) => [name, empty(p)]));
        default: return null;
      }
    }
    return schema && schema.properties ? empty({ ...schema, type: "object" }) : {};
  }

  function skippable(s) {
    if (s.status === "failed") {
      return s.steps.filter((x) => x.status === "failed" || x.status === "running");
    }
    if (s.status === "paused") return s.steps.filter((x) => x.status === "pending");
    return [];
  }

  /** Each action, and why it cannot apply to the saga as it stands (null: it can). */
  const ACTIONS = [
    {
      name: "cancel",
      label: "Cancel",
      danger: true,
      text: "Cancelling undoes the steps done so far, in reverse. It is refused once the " +
        "pivot step has been dispatched: past it nothing is undone.",
      why(s) {
        if (FINISHED.has(s.status)) return `the saga is already ${s.status}`;
        if (s.status === "compensating" || s.resume_status === "compensating") {
          return "the saga is already compensating";
        }
        return null;
      },
    },
    {
      name: "retry",
      label: "Retry",
      text: "Carries on from where the parked saga stopped, with a fresh retry budget for the " +
        "step or compensation that ran out.",
      why: (s) => (s.status === "failed" ? null :
        `only a failed (parked) saga can be retried; it is ${s.status}`),
    },
    {
      name: "pause",
      label: "Pause",
      text: "Dispatches nothing new and holds the timers until resumed; commands in flight " +
        "still answer.",
      why: (s) => (s.status === "running" || s.status === "compensating" ? null :
        `only a running or compensating saga can be paused; it is ${s.status}`),
    },
    {
      name: "resume",
      label: "Resume",
      text: "Carries on where the pause began; timers that came due meanwhile fire now.",
      why: (s) => (s.status === "paused" ? null :
        `only a paused saga can be resumed; it is ${s.status}`),
    },
    {
      name: "skip",
      label: "Skip step…",
      danger: true,
      text: "Treats the step as done, with the result given (if any). Only a step parked " +
        "past the pivot, or a pending step of a paused saga, can be skipped.",
      why(s) {
        if (s.status !== "failed" && s.status !== "paused") {
          return `only a step of a failed (parked) or paused saga can be skipped; it is ${s.status}`;
        }
        return skippable(s).length ? null : "no step can be skipped now";
      },
    },
    {
      name: "signal",
      label: "Send signal…",
      verb: "Send a signal to",
      confirm: "Send signal",
      text: "Sends the signal to its wait step, as the system waited on would: its payload " +
        "becomes the step's result and the saga goes on (a signal for a wait not begun yet " +
        "is held for it). A payload the wait's model refuses is refused, and the wait goes on.",
      why(s) {
        if (FINISHED.has(s.status)) return `the saga is already ${s.status}: it waits for nothing`;
        if (s.status === "compensating" || s.resume_status === "compensating") {
          return "the saga is compensating: it waits for nothing";
        }
        return signalable(s).length ? null : "no wait step waits for a signal now, or is still to come";
      },
    },
    {
      name: "mark-compensated",
      label: "Mark compensated",
      danger: true,
      text: "Records that the parked compensation was done by hand; the saga carries on " +
        "undoing the rest.",
      why(s) {
        if (s.status !== "failed") return `only a failed (parked) saga has a compensation to mark; it is ${s.status}`;
        return s.steps.some((x) => x.status === "compensating") ? null
          : "no compensation is parked (past the pivot, use retry or skip)";
      },
    },
  ];

  function renderActions(s) {
    const box = clear(document.getElementById("actions"));
    for (const action of ACTIONS) {
      const why = action.why(s);
      const button = el("button", {
        type: "button",
        id: `action-${action.name}`,
        class: action.danger ? "danger" : null,
        disabled: why !== null,
        title: why === null ? action.text : `Not now: ${why}`,
        "data-action": action.name,
      }, action.label);
      button.addEventListener("click", () => openDialog(action));
      // A disabled button gets no hover events: the wrapper carries the tooltip too.
      box.appendChild(el("span", { title: why === null ? null : `Not now: ${why}` }, button));
    }
  }

  const dialog = document.getElementById("confirm");
  const form = document.getElementById("confirm-form");
  const reasonBox = document.getElementById("confirm-reason");
  const whoBox = document.getElementById("confirm-who");
  const errorBox = document.getElementById("confirm-error");
  const okButton = document.getElementById("confirm-ok");
  const skipFields = document.getElementById("skip-fields");
  const skipStep = document.getElementById("skip-step");
  const skipResult = document.getElementById("skip-result");
  const signalFields = document.getElementById("signal-fields");
  const signalName = document.getElementById("signal-name");
  const signalPayload = document.getElementById("signal-payload");
  const signalId = document.getElementById("signal-id");
  const reasonField = document.getElementById("reason-field");
  let pending = null;
  let lastAction = null;

  function showDialogError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
  }

  function openDialog(action) {
    pending = action;
    lastAction = action.name;
    const verb = action.verb || action.label.replace("…", "");
    document.getElementById("confirm-title").textContent =
      `${verb} saga ${detail.saga} ${detail.key}?`;
    document.getElementById("confirm-text").textContent = action.text;
    okButton.textContent =
      action.confirm || `Confirm ${action.label.replace("…", "").toLowerCase()}`;
    okButton.className = action.danger ? "danger" : "";
    okButton.disabled = false;
    errorBox.hidden = true;
    reasonBox.value = "";
    whoBox.value = D.who();
    skipFields.hidden = action.name !== "skip";
    // A signal carries no reason: its payload and id are what the history records.
    const signalling = action.name === "signal";
    signalFields.hidden = !signalling;
    reasonField.hidden = signalling;
    reasonBox.required = !signalling;
    if (signalling) {
      const steps = signalable(detail);
      clear(signalName);
      for (const step of steps) {
        signalName.appendChild(el("option", { value: step.name },
          `${step.name} (${step.wait.stage === "waiting" ? "waiting" : "wait not begun: held"})`));
      }
      const fill = () => {
        const step = steps.find((x) => x.name === signalName.value);
        signalPayload.value = D.pretty(skeleton(step && step.wait.payload_schema));
      };
      signalName.onchange = fill;
      fill();
      signalId.value = crypto.randomUUID ? crypto.randomUUID() : "";
    }
    if (action.name === "skip") {
      clear(skipStep);
      for (const step of skippable(detail)) {
        skipStep.appendChild(el("option", { value: step.name }, `${step.name} (${step.status})`));
      }
      skipResult.value = "";
    }
    dialog.showModal();
    (signalling ? signalPayload : reasonBox).focus();
  }

  document.getElementById("confirm-back").addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => {
    // The page may have redrawn the button that opened the dialog: focus the new one.
    const opener = lastAction && document.getElementById(`action-${lastAction}`);
    if (opener && !opener.disabled && !opener.contains(document.activeElement)) opener.focus();
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!pending) return;
    if (pending.name === "signal") {
      await sendSignal();
      return;
    }
    const reason = reasonBox.value.trim();
    if (!reason) {
      showDialogError("A reason is required: it is recorded in the history.");
      reasonBox.focus();
      return;
    }
    const body = { reason };
    const who = whoBox.value.trim();
    if (who) body.who = who;
    if (pending.name === "skip") {
      body.step = skipStep.value;
      const raw = skipResult.value.trim();
      if (raw) {
        try {
          body.result = JSON.parse(raw);
        } catch (e) {
          showDialogError(`The result is not valid JSON: ${e.message}`);
          return;
        }
      }
    }
    okButton.disabled = true;
    errorBox.hidden = true;
    const action = pending;
    try {
      const after = await D.api(`/api/sagas/${encodeURIComponent(SAGA_ID)}/${action.name}`, {
        method: "POST",
        body,
      });
      D.rememberWho(who);
      dialog.close();
      pending = null;
      const notice = document.getElementById("notice");
      const when = D.fmtTime(new Date().toISOString());
      notice.textContent = `${action.label.replace("…", "")} accepted at ${when} UTC; the saga ` +
        `was then ${after ? after.status : "?"}.`;
      notice.hidden = false;
      if (after && after.saga_id) {
        detail = after;
        render(Date.now());
      }
      await refresh();
    } catch (e) {
      let prefix = "";
      if (e.status === 409 && !/refused/i.test(e.message)) prefix = "Refused: ";
      if (e.status === 403) prefix = "Not allowed (your token may only read): ";
      showDialogError(`${prefix}${e.message}`);
      okButton.disabled = false;
    }
  });

  const SIGNAL_OUTCOMES = {
    taken: "taken: the saga goes on",
    held: "held: it is taken when its wait begins",
    duplicate: "a duplicate of one held or taken already: nothing changed",
  };

  async function sendSignal() {
    let payload;
    try {
      payload = JSON.parse(signalPayload.value.trim() || "{}");
    } catch (e) {
      showDialogError(`The payload is not valid JSON: ${e.message}`);
      return;
    }
    if (payload === null || typeof payload !== "object" || Array.isArray(payload)) {
      showDialogError("The payload must be a JSON object, e.g. {\"approved\": true}.");
      return;
    }
    const name = signalName.value;
    const body = { payload };
    const id = signalId.value.trim();
    if (id) body.signal_id = id;
    const who = whoBox.value.trim();
    if (who) body.who = who;
    okButton.disabled = true;
    errorBox.hidden = true;
    try {
      const done = await D.api(
        `/api/sagas/${encodeURIComponent(SAGA_ID)}/signals/${encodeURIComponent(name)}`,
        { method: "POST", body },
      );
      D.rememberWho(who);
      dialog.close();
      pending = null;
      const notice = document.getElementById("notice");
      const when = D.fmtTime(new Date().toISOString());
      notice.textContent = `Signal ${name} (id ${done.signal_id}) ` +
        `${SIGNAL_OUTCOMES[done.result] || done.result}; at ${when} UTC the saga was ${done.status}.`;
      notice.dataset.result = done.result;
      notice.hidden = false;
      await refresh();
    } catch (e) {
      const reason = e.problem && e.problem.reason;
      let prefix = "";
      if (reason) prefix = `Refused (${reason}): `;
      else if (e.status === 403) prefix = "Not allowed (your token may only read): ";
      showDialogError(`${prefix}${e.message}`);
      okButton.disabled = false;
    }
  }

  // -- loading ------------------------------------------------------------------------------

  function render(now) {
    D.keepFocus(() => {
      renderSummary(detail, now);
      renderActions(detail);
      renderSteps(detail);
      renderHistory(historyItems);
      drawTimeline(buildTimeline(detail, historyItems, now));
      drawLegend();
    });
  }

  async function refresh() {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    try {
      const id = encodeURIComponent(SAGA_ID);
      const [saga, history] = await Promise.all([
        D.api(`/api/sagas/${id}`),
        D.api(`/api/sagas/${id}/history`),
      ]);
      detail = saga;
      historyItems = history.items.slice().sort((a, b) => a.seq - b.seq);
      render(Date.now());
      D.clearAlert();
    } catch (e) {
      D.showAlert(e.status === 404 ? `No saga with id ${SAGA_ID}: ${e.message}` : e.message);
    } finally {
      busy = false;
      if (again) {
        again = false;
        refresh();
      }
    }
  }

  D.onTokenChanged.push(refresh);
  setInterval(() => {
    ticks += 1;
    if (document.hidden || !detail) return;
    // A finished saga changes rarely (an operator, a parent's undo): look less often.
    if (FINISHED.has(detail.status) && ticks % 4 !== 0) return;
    refresh();
  }, REFRESH_MS);
  refresh();
})();
