// Rota dashboard: redraws from the master's /api/v1 when the event stream (/api/v1/events) says a
// job or task changed, and every few seconds besides (executors' heartbeats, schedules' next
// fires); polls every second while the stream is down. No build step, no framework.
"use strict";

const REFRESH_MS = 1000;
const REFRESH_STREAMING_MS = 5000;
// A burst of changes (a job of thousands of tasks) redraws once per this many milliseconds.
const CHANGES_MS = 250;
const params = new URLSearchParams(location.search);
// Jobs and tasks per page: the master is asked for one page at a time, however long its history.
const JOBS_PAGE = Math.min(Math.max(Number(params.get("jobs_per_page")) || 50, 1), 10000);
const TASKS_PAGE = Math.min(Math.max(Number(params.get("tasks_per_page")) || 500, 1), 10000);
const TERMINAL = new Set(["SUCCEEDED", "FAILED", "CANCELLED", "SKIPPED"]);

let selectedJob = new URLSearchParams(location.hash.slice(1)).get("job");
// The jobs page shown: null is the newest; else the id the page starts before. Older pages push.
let jobsBefore = null;
const newerPages = [];
let olderCursor = null;
let tasksFrom = 0;
let executorNames = {};
// The API token, for a cluster that checks tokens: asked for on the first 401 and kept in this
// page's memory only (never a cookie, never storage), so closing or reloading the page forgets it.
let token = null;

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return node;
}

/** A job's report: its plain fields as a list, each field that maps names to rows of numbers
 * (a dataflow's latency per hop) as a table, and the whole report as JSON beneath. */
function showReport(box, report) {
  const items = [];
  const tables = [];
  for (const [key, value] of Object.entries(report || {})) {
    const table = reportTable(key, value);
    if (table) tables.push(table);
    else items.push(el("dt", {}, key), el("dd", {}, typeof value === "object" ? JSON.stringify(value) : value));
  }
  box.querySelector("dl").replaceChildren(...items);
  box.querySelector(".report-tables").replaceChildren(...tables);
  box.querySelector("pre").textContent = report ? JSON.stringify(report, null, 2) : "";
}

function reportTable(name, value) {
  const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
  if (!isObject(value)) return null;
  const rows = Object.entries(value);
  if (!rows.length || !rows.every(([, r]) => isObject(r))) return null;
  const cols = Object.keys(rows[0][1]);
  const numeric = (r) => Object.keys(r).join() === cols.join() && cols.every((c) => typeof r[c] === "number");
  if (!cols.length || !rows.every(([, r]) => numeric(r))) return null;
  const whole = Object.fromEntries(cols.map((c) => [c, rows.every(([, r]) => Number.isInteger(r[c]))]));
  const cell = (r, c) => (whole[c] ? String(r[c]) : r[c].toFixed(3));
  return el(
    "table",
    { class: "report", "data-name": name },
    el("caption", {}, name),
    el("thead", {}, el("tr", {}, el("th", {}, ""), ...cols.map((c) => el("th", {}, c)))),
    el("tbody", {}, ...rows.map(([k, r]) => el("tr", {}, el("th", {}, k), ...cols.map((c) => el("td", {}, cell(r, c)))))),
  );
}

async function apiPage(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (token) headers["Authorization"] = "Bearer " + token;
  const resp = await fetch("/api/v1" + path, { ...options, headers });
  const body = await resp.json().catch(() => ({ error: resp.statusText }));
  if (resp.status === 401) {
    $("#token-form").hidden = false;
    throw new Error("this cluster needs a token: " + (body.error || resp.statusText));
  }
  if (!resp.ok) throw new Error(body.error || resp.statusText);
  return { body, more: /rel="next"/.test(resp.headers.get("Link") || "") };
}

async function api(path, options) {
  return (await apiPage(path, options)).body;
}

function jobsPath() {
  return `/jobs?limit=${JOBS_PAGE}` + (jobsBefore ? "&before=" + encodeURIComponent(jobsBefore) : "");
}

function state(s) {
  return el("span", { class: "state " + s }, s);
}

function ago(ts) {
  if (!ts) return "never";
  const s = Math.max(0, Date.now() / 1000 - ts);
  return s < 1 ? "just now" : s < 120 ? `${s.toFixed(0)}s ago` : `${(s / 60).toFixed(0)}m ago`;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function renderCluster(c) {
  const leader = c.leader ? `${c.leader.name} (${c.leader.addr})` : "none";
  $("#leader").textContent = "leader: " + leader;
  $("#leader").classList.toggle("bad", !c.leader);
  const full = (c.etcd.alarms || []).some((a) => a.alarm === "NOSPACE");
  $("#etcd").textContent = "etcd: " + (!c.etcd.healthy ? "NO QUORUM" : full ? "OUT OF SPACE" : "healthy");
  $("#etcd").classList.toggle("bad", !c.etcd.healthy || full);
  $("#etcd-endpoints").textContent = c.etcd.endpoints.join(", ");
  $("#answered-by").textContent = c.answered_by;
  fill(
    $("#masters tbody"),
    c.masters.map((m) => el("tr", { "data-master": m.name }, el("td", {}, m.name), el("td", {}, m.addr), el("td", {}, state(m.role)))),
  );
}

function bar(done, failed, total) {
  const pct = (n) => (total ? (100 * n) / total : 0).toFixed(1) + "%";
  return el(
    "span",
    { class: "bar", title: `${done} of ${total} ended` },
    el("span", { style: `width:${pct(done)}` }),
    el("span", { class: "fail", style: `width:${pct(failed)}` }),
  );
}

function renderExecutors(list) {
  executorNames = Object.fromEntries(list.map((e) => [e.id, e.name]));
  $("#executor-count").textContent = `(${list.length})`;
  fill(
    $("#executors tbody"),
    list.map((e) =>
      el(
        "tr",
        { "data-executor": e.id },
        el("td", {}, e.name),
        el("td", { class: "muted" }, e.id),
        el("td", {}, e.addr),
        el("td", {}, bar(e.running, 0, e.slots), ` ${e.running}/${e.slots}`),
        el("td", {}, (e.kinds || []).join(", ")),
        el("td", {}, state(e.state)),
        el("td", {}, ago(e.last_heartbeat)),
      ),
    ),
  );
}

// A refused action stays on screen a while, not only until the next refresh succeeds.
let actionError = null;
let actionErrorUntil = 0;

async function cancelJob(id, button) {
  button.disabled = true;
  try {
    await api(`/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST" });
  } catch (err) {
    actionError = err;
    actionErrorUntil = Date.now() + 5000;
    showError(err);
  }
  refresh();
}

function selectJob(id) {
  if (id !== selectedJob) tasksFrom = 0;
  selectedJob = id;
  location.hash = id ? "job=" + encodeURIComponent(id) : "";
  refresh();
}

function renderJobs(jobs, more) {
  const shown = jobs.slice().reverse();
  olderCursor = more && jobs.length ? jobs[0].id : null;
  $("#job-count").textContent = jobsBefore || more ? `(${jobs.length} on this page, newest first)` : `(${jobs.length})`;
  $("#jobs-older").hidden = !olderCursor;
  $("#jobs-newer").hidden = !jobsBefore;
  $("#jobs-newest").hidden = newerPages.length < 2;
  fill(
    $("#jobs tbody"),
    shown.map((j) => {
      const total = Object.values(j.counts).reduce((a, b) => a + b, 0);
      const ended = ["SUCCEEDED", "FAILED", "CANCELLED", "SKIPPED"].reduce((a, s) => a + (j.counts[s] || 0), 0);
      const failed = (j.counts.FAILED || 0) + (j.counts.CANCELLED || 0) + (j.counts.SKIPPED || 0);
      const counts = Object.entries(j.counts).map(([s, n]) => `${s.toLowerCase()} ${n}`).join(", ");
      const cancel = TERMINAL.has(j.state)
        ? ""
        : el("button", { class: "cancel", "data-job-id": j.id, onclick: (ev) => { ev.stopPropagation(); cancelJob(j.id, ev.target); } }, "Cancel");
      return el(
        "tr",
        { class: "clickable" + (j.id === selectedJob ? " selected" : ""), "data-job-id": j.id, "data-state": j.state, onclick: () => selectJob(j.id) },
        el("td", {}, j.id),
        el("td", {}, j.name),
        el("td", {}, state(j.state)),
        el("td", {}, j.priority),
        el("td", {}, bar(ended - failed, failed, total), ` ${ended}/${total}`),
        el("td", { class: "muted" }, counts),
        el("td", {}, cancel),
      );
    }),
  );
}

function resultCell(r) {
  if (!r) return "";
  const parts = [];
  if (r.exit_code !== null && r.exit_code !== undefined) parts.push(`exit ${r.exit_code}`);
  if (r.value !== null && r.value !== undefined) parts.push("value " + JSON.stringify(r.value));
  if (r.error) parts.push(r.error);
  const out = [r.stdout, r.stderr].filter(Boolean).join("\n");
  return el("div", {}, parts.join(" · "), out ? el("pre", {}, out) : "");
}

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  node.append(...children);
  return node;
}

// A job's task groups as boxes in columns (a group right of every group it runs after), edges
// from each group to those that run after it, colored by state.
function renderGraph(box, graph) {
  box.querySelector("svg")?.remove();
  box.hidden = !graph;
  if (!graph) return;
  const index = Object.fromEntries(graph.map((g, i) => [g.name, i]));
  const depth = [];
  const depthOf = (i) => {
    if (depth[i] === undefined) depth[i] = graph[i].after.length ? 1 + Math.max(...graph[i].after.map((n) => depthOf(index[n]))) : 0;
    return depth[i];
  };
  graph.forEach((_, i) => depthOf(i));
  const rows = [];
  const pos = graph.map((_, i) => {
    const col = depth[i];
    rows[col] = (rows[col] || 0) + 1;
    return [col, rows[col] - 1];
  });
  const W = 150, H = 40, GX = 50, GY = 14;
  const width = (Math.max(...depth) + 1) * (W + GX), height = Math.max(...rows) * (H + GY);
  const out = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "task graph" });
  const xy = (i) => [pos[i][0] * (W + GX), pos[i][1] * (H + GY)];
  graph.forEach((g, i) => {
    const [x, y] = xy(i);
    for (const dep of g.after) {
      const [dx, dy] = xy(index[dep]);
      out.append(svg("line", { x1: dx + W, y1: dy + H / 2, x2: x, y2: y + H / 2, class: "edge", "data-from": dep, "data-to": g.name }));
    }
  });
  graph.forEach((g, i) => {
    const [x, y] = xy(i);
    const node = svg("g", { class: "node " + g.state, "data-group": g.name, "data-state": g.state, transform: `translate(${x},${y})` });
    node.append(
      svg("rect", { width: W, height: H, rx: 6 }),
      svg("text", { x: 8, y: 16 }, g.name),
      svg("text", { x: 8, y: 32, class: "small" }, `${g.ended}/${g.tasks} · ${g.state.toLowerCase()}`),
    );
    out.append(node);
  });
  box.append(out);
}

async function updateSchedule(id, action, button) {
  button.disabled = true;
  try {
    await api(`/schedules/${encodeURIComponent(id)}` + (action === "delete" ? "" : `/${action}`), { method: action === "delete" ? "DELETE" : "POST" });
  } catch (err) {
    actionError = err;
    actionErrorUntil = Date.now() + 5000;
  }
  refresh();
}

function renderSchedules(list) {
  $("#schedules-section").hidden = !list.length;
  $("#schedule-count").textContent = `(${list.length})`;
  fill(
    $("#schedules tbody"),
    list.map((s) =>
      el(
        "tr",
        { "data-schedule": s.id },
        el("td", {}, s.id),
        el("td", {}, el("code", {}, s.schedule)),
        el("td", {}, s.time_zone),
        el("td", {}, s.overlap),
        el("td", { class: "next-fire" }, s.paused ? state("paused") : s.next_fire ? new Date(s.next_fire).toLocaleString() : ""),
        el("td", {}, s.last_job ? el("a", { href: "#", onclick: (ev) => { ev.preventDefault(); selectJob(s.last_job); } }, s.last_job) : ""),
        el("td", {}, s.fired),
        el("td", {}, s.skipped),
        el("td", {}, s.missed),
        el("td", {}, el("button", { class: s.paused ? "resume" : "pause", onclick: (ev) => updateSchedule(s.id, s.paused ? "resume" : "pause", ev.target) }, s.paused ? "Resume" : "Pause")),
      ),
    ),
  );
}

function renderJob(job) {
  const detail = $("#job-detail");
  if (!job) {
    detail.hidden = true;
    return;
  }
  detail.hidden = false;
  detail.setAttribute("data-job-id", job.id);
  $("#detail-id").textContent = job.id;
  const st = $("#detail-state");
  st.textContent = job.state;
  st.className = "state " + job.state;
  const reason = $("#detail-reason");
  reason.textContent = job.pending_reason || "";
  reason.hidden = !job.pending_reason;
  renderGraph($("#detail-graph"), job.graph);
  const report = $("#detail-report");
  report.hidden = !job.report;
  showReport(report, job.report);
  const total = Object.values(job.counts).reduce((a, b) => a + b, 0);
  fill(
    $("#tasks tbody"),
    job.tasks.map((t, i) =>
      el(
        "tr",
        { "data-task-id": t.id, "data-state": t.state },
        el("td", { class: "muted" }, tasksFrom + i),
        el("td", {}, t.name, t.endpoints ? el("span", { class: "endpoints muted", title: "endpoints: where its ports listen" }, ` ${Object.entries(t.endpoints).map(([port, addr]) => `${port} ${addr}`).join(", ")}`) : ""),
        el("td", {}, state(t.state), t.progress ? el("span", { class: "progress muted", title: t.progress.message }, ` ${Math.round(t.progress.fraction * 100)}% ${t.progress.message}`) : ""),
        el("td", {}, t.attempt, t.service ? el("span", { class: "restarts muted", title: "service task: failures and losses, each restarted" }, ` (service, ${t.restarts} restart${t.restarts === 1 ? "" : "s"})`) : ""),
        el("td", {}, t.executor ? executorNames[t.executor] || t.executor : ""),
        el("td", {}, resultCell(t.result)),
        el("td", {}, t.attempt ? el("button", { class: "logs", "data-task-id": t.id, onclick: () => showLogs(job.id, t) }, "Logs") : ""),
      ),
    ),
  );
  const end = tasksFrom + job.tasks.length;
  $("#tasks-more").textContent = total > job.tasks.length ? `tasks ${tasksFrom}–${end - 1} of ${total}` : "";
  $("#tasks-prev").hidden = tasksFrom === 0;
  $("#tasks-next").hidden = end >= total;
}

let logTask = null;

async function showLogs(jobId, task) {
  logTask = { jobId, id: task.id, name: task.name };
  const panel = $("#log-panel");
  panel.hidden = false;
  panel.setAttribute("data-task-id", task.id);
  panel.removeAttribute("data-loaded");
  $("#log-task").textContent = `${task.name} (${task.id})`;
  const index = task.id.slice(task.id.lastIndexOf("/") + 1);
  try {
    const doc = await api(`/jobs/${encodeURIComponent(jobId)}/tasks/${index}/logs`);
    if (!logTask || logTask.id !== task.id) return;
    $("#log-attempt").textContent = `attempt ${doc.attempt} on ${executorNames[doc.executor] || doc.executor}` + (doc.truncated ? " (first 1 MiB of each stream)" : "");
    $("#log-stdout").textContent = doc.stdout;
    $("#log-stderr").textContent = doc.stderr;
    $("#log-notices").textContent = doc.notices.join(" ");
  } catch (err) {
    $("#log-attempt").textContent = "";
    $("#log-stdout").textContent = "";
    $("#log-stderr").textContent = "";
    $("#log-notices").textContent = String(err.message || err);
  }
  panel.setAttribute("data-loaded", "true");
}

function showError(err) {
  const e = $("#error");
  e.hidden = !err;
  e.textContent = err ? String(err.message || err) : "";
}

let busy = false;
async function refresh() {
  if (busy) return;
  busy = true;
  try {
    const [cluster, executors, jobs, schedules] = await Promise.all([api("/cluster"), api("/executors"), apiPage(jobsPath()), api("/schedules")]);
    renderCluster(cluster);
    renderExecutors(executors);
    renderSchedules(schedules);
    renderJobs(jobs.body, jobs.more);
    let job = null;
    if (selectedJob) {
      try {
        job = await api(`/jobs/${encodeURIComponent(selectedJob)}?tasks_from=${tasksFrom}&task_limit=${TASKS_PAGE}`);
      } catch (err) {
        selectedJob = null;
      }
    }
    renderJob(job);
    $("#updated").textContent = "updated " + new Date().toLocaleTimeString();
    showError(Date.now() < actionErrorUntil ? actionError : null);
  } catch (err) {
    showError(err);
  } finally {
    busy = false;
  }
}

$("#detail-close").addEventListener("click", () => selectJob(null));
$("#jobs-older").addEventListener("click", () => { newerPages.push(jobsBefore); jobsBefore = olderCursor; refresh(); });
$("#jobs-newer").addEventListener("click", () => { jobsBefore = newerPages.pop() ?? null; refresh(); });
$("#jobs-newest").addEventListener("click", () => { newerPages.length = 0; jobsBefore = null; refresh(); });
$("#tasks-prev").addEventListener("click", () => { tasksFrom = Math.max(0, tasksFrom - TASKS_PAGE); refresh(); });
$("#tasks-next").addEventListener("click", () => { tasksFrom += TASKS_PAGE; refresh(); });
$("#log-close").addEventListener("click", () => { logTask = null; $("#log-panel").hidden = true; });
$("#log-refresh").addEventListener("click", () => logTask && showLogs(logTask.jobId, logTask));
$("#token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $("#token-input").value.trim() || null;
  $("#token-input").value = "";
  $("#token-form").hidden = true;
  refresh();
});
// The event stream, read with fetch (EventSource cannot send the token). Each "changes" event
// schedules one redraw; its id is kept, so a reconnect goes on from there.
let streaming = false;
let lastEventId = null;
let redrawSoon = null;

function changed() {
  if (redrawSoon === null) redrawSoon = setTimeout(() => { redrawSoon = null; refresh(); }, CHANGES_MS);
}

async function listen() {
  const headers = {};
  if (token) headers["Authorization"] = "Bearer " + token;
  if (lastEventId !== null) headers["Last-Event-ID"] = lastEventId;
  try {
    const resp = await fetch("/api/v1/events", { headers });
    if (!resp.ok) {
      const body = await resp.json().catch(() => ({}));
      throw new Error(body.error || resp.statusText);
    }
    streaming = true;
    document.body.setAttribute("data-streaming", "true");
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const id = /^id: (\d+)$/m.exec(block);
        if (id) lastEventId = id[1];
        if (/^event: changes$/m.test(block)) changed();
      }
    }
  } catch (err) {
    // A compacted history (after a long time away) starts over from now.
    if (String(err.message || err).includes("compacted")) lastEventId = null;
  }
  streaming = false;
  document.body.removeAttribute("data-streaming");
  setTimeout(listen, 2000);
}

let lastPoll = 0;
function poll() {
  const now = Date.now();
  if (now - lastPoll >= (streaming ? REFRESH_STREAMING_MS : REFRESH_MS)) {
    lastPoll = now;
    refresh();
  }
}

refresh();
listen();
setInterval(poll, REFRESH_MS);
