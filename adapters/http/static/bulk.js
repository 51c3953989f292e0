/* The list page's bulk actions: one operator action on every saga of the list's current filter
 * (POST /api/bulk/{action}, docs/http-api.md).
 *
 * A button opens a confirmation that first asks the API for a dry run: how many sagas match,
 * how many the action would apply to and which would be refused, and why. The confirm button
 * states the count ("Retry all 12"), and the action then acts on at most that many sagas; the
 * result (counts and each refusal) stays on the page. Without a filter the buttons are
 * disabled: an action on every saga is never offered.
 */
"use strict";

(function () {
  const D = window.Dash;
  if (!D || !D.listFilters) return;
  const { el, clear } = D;

  const MAX = 10000; // the API's largest limit
  const PREVIEW = 5; // refusals listed in the confirmation

  // Each action: its button, the question, the confirm button for n sagas, and what became
  // of them.
  const ACTIONS = [
    {
      name: "retry",
      verb: "Retry",
      label: "Retry all",
      confirm: (n) => `Retry all ${n}`,
      done: "retried",
    },
    {
      name: "pause",
      verb: "Pause",
      label: "Pause all",
      confirm: (n) => `Pause all ${n}`,
      done: "paused",
    },
    {
      name: "resume",
      verb: "Resume",
      label: "Resume all",
      confirm: (n) => `Resume all ${n}`,
      done: "resumed",
    },
    {
      name: "skip",
      verb: "Skip the step in",
      label: "Skip the step in all",
      confirm: (n, filter) => `Skip ${filter.step} in all ${n}`,
      done: "had the step skipped",
      danger: true,
    },
    {
      name: "mark-compensated",
      verb: "Mark as compensated",
      label: "Mark all compensated",
      confirm: (n) => `Mark all ${n} compensated`,
      done: "marked compensated",
      danger: true,
    },
    {
      name: "cancel",
      verb: "Cancel",
      label: "Cancel all",
      confirm: (n) => `Cancel all ${n}`,
      done: "cancelled",
      danger: true,
    },
  ];

  const box = document.getElementById("bulk-actions");
  const resultBox = document.getElementById("bulk-result");
  const dialog = document.getElementById("bulk-confirm");
  const form = document.getElementById("bulk-form");
  const title = document.getElementById("bulk-confirm-title");
  const filterText = document.getElementById("bulk-filter");
  const countText = document.getElementById("bulk-count");
  const preview = document.getElementById("bulk-preview");
  const resultField = document.getElementById("bulk-result-field");
  const stepResult = document.getElementById("bulk-step-result");
  const reasonBox = document.getElementById("bulk-reason");
  const whoBox = document.getElementById("bulk-who");
  const errorBox = document.getElementById("bulk-error");
  const okButton = document.getElementById("bulk-ok");

  let pending = null; // {action, filter, matched} while the dialog is open
  let generation = 0; // a dry run answered after the dialog moved on is dropped

  /** Why the action cannot be offered for this filter (null: it can). */
  function whyNot(action, filter) {
    if (!Object.keys(filter).length) {
      return "set a filter first: an action on every saga is never offered";
    }
    if (action.name === "skip" && !filter.step) {
      return "filter by a step first: that step is skipped";
    }
    return null;
  }

  /** The buttons for the list's filter, redrawn each time the list has loaded (the live
   * refresh too: keeping the focus on a button across it). */
  function renderButtons() {
    D.keepFocus(() => drawButtons(D.listFilters()));
  }

  function drawButtons(filter) {
    clear(box);
    for (const action of ACTIONS) {
      const why = whyNot(action, filter);
      const button = el("button", {
        type: "button",
        id: `bulk-${action.name}`,
        class: action.danger ? "danger" : null,
        disabled: why !== null,
        title: why === null ? `${action.verb} every saga of this filter, after a confirmation ` +
          "that counts them" : `Not now: ${why}`,
      }, `${action.label}…`);
      button.addEventListener("click", () => open(action));
      box.appendChild(el("span", { title: why === null ? null : `Not now: ${why}` }, button));
    }
  }

  function describeFilter(filter) {
    return Object.entries(filter)
      .map(([name, value]) => `${name} ${Array.isArray(value) ? value.join("; ") : value}`)
      .join(", ");
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
  }

  function problem(e) {
    if (e.status === 403) return `Not allowed (your token may only read): ${e.message}`;
    return e.message;
  }

  function body(action, filter, extra) {
    const sent = { filter, ...extra };
    if (action.name === "skip") {
      sent.step = filter.step;
      sent.result = extra.result === undefined ? null : extra.result;
    }
    return sent;
  }

  function refusalItem(r) {
    return el("li", { "data-saga-id": r.saga_id, "data-outcome": r.outcome },
      el("a", { href: D.sagaHref(r.saga_id), class: "mono" }, r.key || r.saga_id),
      ` (${r.saga}) ${r.outcome}: ${r.why}`);
  }

  async function open(action) {
    const filter = D.listFilters();
    const mine = ++generation;
    pending = null;
    title.textContent = `${action.verb} every saga of this filter?`;
    filterText.textContent = `Filter: ${describeFilter(filter)}`;
    countText.textContent = "Counting the sagas this filter matches…";
    clear(preview);
    resultField.hidden = action.name !== "skip";
    stepResult.value = "";
    reasonBox.value = "";
    whoBox.value = D.who();
    errorBox.hidden = true;
    okButton.textContent = action.label;
    okButton.className = action.danger ? "danger" : "";
    okButton.disabled = true;
    dialog.showModal();
    reasonBox.focus();
    let dry;
    try {
      // Nothing is written by a dry run; its reason is recorded nowhere.
      dry = await D.api(`/api/bulk/${action.name}`, {
        method: "POST",
        body: body(action, filter, { reason: "dashboard: count", dry_run: true, limit: MAX }),
      });
    } catch (e) {
      if (mine === generation) showError(problem(e));
      return;
    }
    if (mine !== generation) return;
    const would = dry.counts.applied;
    const refused = dry.refusals.length;
    const beyond = dry.more ? ` (more than ${MAX}: the first ${MAX}, newest activity first)` : "";
    countText.textContent = `${dry.matched} saga(s) match this filter${beyond}: ` +
      `${would} would be ${action.done}` + (refused ? `, ${refused} refused:` : ".");
    for (const r of dry.refusals.slice(0, PREVIEW)) preview.appendChild(refusalItem(r));
    if (refused > PREVIEW) preview.appendChild(el("li", {}, `and ${refused - PREVIEW} more`));
    if (!would) {
      showError(`No saga of this filter can be ${action.done} now.`);
      return;
    }
    okButton.textContent = action.confirm(would, filter);
    okButton.disabled = false;
    pending = { action, filter, matched: dry.matched };
  }

  document.getElementById("bulk-back").addEventListener("click", () => {
    generation += 1;
    dialog.close();
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!pending) return;
    const reason = reasonBox.value.trim();
    if (!reason) {
      showError("A reason is required: it is recorded in every saga's history.");
      reasonBox.focus();
      return;
    }
    const extra = { reason, limit: pending.matched };
    const who = whoBox.value.trim();
    if (who) extra.who = who;
    if (pending.action.name === "skip" && stepResult.value.trim()) {
      try {
        extra.result = JSON.parse(stepResult.value);
      } catch (e) {
        showError(`The result is not valid JSON: ${e.message}`);
        return;
      }
    }
    const { action, filter } = pending;
    okButton.disabled = true;
    errorBox.hidden = true;
    let done;
    try {
      done = await D.api(`/api/bulk/${action.name}`, {
        method: "POST",
        body: body(action, filter, extra),
      });
    } catch (e) {
      showError(problem(e));
      okButton.disabled = false;
      return;
    }
    D.rememberWho(who);
    pending = null;
    dialog.close();
    showResult(action, filter, done);
    D.reloadList();
  });

  function showResult(action, filter, done) {
    clear(resultBox);
    const when = D.fmtTime(new Date().toISOString());
    const refused = done.refusals.length;
    resultBox.appendChild(el("p", { id: "bulk-summary" },
      `${action.name} at ${when} UTC (${describeFilter(filter)}): ` +
      `${done.counts.applied} of ${done.matched} saga(s) ${action.done}, ${refused} refused` +
      (refused ? ":" : ".")));
    if (refused) {
      const list = el("ul", { class: "refusals" });
      for (const r of done.refusals) list.appendChild(refusalItem(r));
      resultBox.appendChild(list);
    }
    resultBox.hidden = false;
  }

  D.onListLoaded.push(renderButtons);
  renderButtons();
})();
