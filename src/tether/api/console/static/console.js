// Tether console: the live parts only (everything else is plain HTML forms and links).
// Served from the package; the Content-Security-Policy allows no other script.
"use strict";

function text(value) {
  return value === null || value === undefined ? "" : String(value);
}

function cell(row, value) {
  const td = document.createElement("td");
  td.textContent = text(value);
  row.appendChild(td);
  return td;
}

function activity(table) {
  const body = table.querySelector("tbody");
  const state = document.getElementById("live-state");
  const source = new EventSource(table.dataset.stream);
  source.addEventListener("open", () => { if (state) state.textContent = "Live."; });
  source.addEventListener("error", () => { if (state) state.textContent = "Reconnecting…"; });
  source.addEventListener("ledger", (message) => {
    const e = JSON.parse(message.data);
    const row = document.createElement("tr");
    row.className = "new";
    const seq = cell(row, "");
    const open = document.createElement("a");
    open.href = "/console/events/" + encodeURIComponent(e.id);
    open.textContent = text(e.seq);
    seq.appendChild(open);
    cell(row, text(e.time).replace("T", " ").replace("Z", " UTC"));
    cell(row, e.type);
    const agent = cell(row, "");
    if (e.agent_id) {
      const link = document.createElement("a");
      link.href = "/console/agents/" + encodeURIComponent(e.agent_id);
      link.textContent = e.agent_id;
      agent.appendChild(link);
    }
    cell(row, e.action);
    cell(row, e.resource ? e.resource.type + "::" + e.resource.id : "");
    cell(row, e.decision || e.outcome);
    body.insertBefore(row, body.firstChild);
    while (body.rows.length > 500) body.deleteRow(body.rows.length - 1);
  });
}

function liveList(box) {
  const source = new EventSource("/console/stream");
  let pending = null;
  source.addEventListener("ledger", (message) => {
    const e = JSON.parse(message.data);
    if (!text(e.type).startsWith("approval.")) return;
    if (pending) return;
    pending = setTimeout(async () => {
      pending = null;
      const answer = await fetch(box.dataset.live, { credentials: "same-origin" });
      if (answer.ok && !box.contains(document.activeElement)) {
        box.innerHTML = await answer.text();
      }
    }, 200);
  });
}

function when(value) {
  return text(value).replace("T", " ").replace("Z", " UTC");
}

function element(tag, content, className) {
  const el = document.createElement(tag);
  if (content !== undefined) el.textContent = text(content);
  if (className) el.className = className;
  return el;
}

const SEVERITIES = ["info", "warning", "critical"];

// One alert as the page renders it (templates/alerts.html), built from its JSON: every value
// set as text, never as markup.
function alertCard(a, csrf) {
  const severity = SEVERITIES.includes(a.severity) ? a.severity : "info";
  const card = element("article", undefined, "card alert new");
  card.id = a.id;
  card.setAttribute("aria-labelledby", a.id + "-h");
  const heading = element("h2");
  heading.id = a.id + "-h";
  heading.append(element("span", severity, "badge " + severity), " " + text(a.kind));
  card.appendChild(heading);
  const summary = element("p", a.summary);
  if (a.suppressed) {
    summary.append(" ", element("strong", "and " + a.suppressed + " more like it", "more"));
  }
  card.appendChild(summary);
  const facts = element("dl", undefined, "facts");
  const fact = (term, value) => {
    facts.appendChild(element("dt", term));
    const dd = element("dd");
    if (value instanceof Node) dd.appendChild(value); else dd.textContent = text(value);
    facts.appendChild(dd);
  };
  let agent = "—";
  if (a.agent_id) {
    agent = element("a", a.agent_id);
    agent.href = "/console/agents/" + encodeURIComponent(a.agent_id);
  }
  fact("Agent", agent);
  fact("Raised", when(a.created_at) + (a.suppressed ? "; the latest " + when(a.last_at) : ""));
  fact("Acknowledged", a.acked_at
    ? "by " + text(a.acked_by_name || a.acked_by) + ", " + when(a.acked_at) + (a.ack_note ? ": " + a.ack_note : "")
    : "not yet");
  card.appendChild(facts);
  if (a.can_ack && csrf) {
    const form = element("form", undefined, "inline");
    form.method = "post";
    form.action = "/console/alerts/" + encodeURIComponent(a.id) + "/ack";
    const token = element("input");
    token.type = "hidden";
    token.name = "csrf";
    token.value = csrf;
    const label = element("label", "Note");
    label.htmlFor = a.id + "-note";
    const note = element("input");
    note.id = a.id + "-note";
    note.name = "note";
    note.maxLength = 500;
    const button = element("button", "Acknowledge");
    button.type = "submit";
    form.append(token, label, note, button);
    card.appendChild(form);
  }
  return card;
}

function liveAlerts(box) {
  const state = document.getElementById("alerts-state");
  const source = new EventSource(box.dataset.alerts);
  source.addEventListener("open", () => { if (state) state.textContent = "Live."; });
  source.addEventListener("error", () => { if (state) state.textContent = "Reconnecting…"; });
  source.addEventListener("alert", (message) => {
    const a = JSON.parse(message.data);
    if (document.getElementById(a.id)) return; // already shown (rendered, or sent again)
    const none = document.getElementById("alerts-none");
    if (none) none.remove();
    box.insertBefore(alertCard(a, box.dataset.csrf), box.firstChild);
    if (state) state.textContent = "Live. New alert: " + text(a.kind) + " (" + text(a.severity) + ").";
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const alerts = document.querySelector("[data-alerts]");
  if (alerts) liveAlerts(alerts);
  const table = document.querySelector("table[data-stream]");
  if (table) activity(table);
  const box = document.querySelector("[data-live]");
  if (box) liveList(box);
});
