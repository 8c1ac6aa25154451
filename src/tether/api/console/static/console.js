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
    cell(row, e.seq);
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

document.addEventListener("DOMContentLoaded", () => {
  const table = document.querySelector("table[data-stream]");
  if (table) activity(table);
  const box = document.querySelector("[data-live]");
  if (box) liveList(box);
});
