// The chunkd dashboard: plain modules, no build step, no third-party code. It only talks
// to its own origin (/api/v1); the token lives in sessionStorage and travels in the
// Authorization header, never in a URL.
const TOKEN_KEY = "chunkd.token";
const REFRESH_MS = 2000;
const STATUSES = ["QUEUED", "IN_PROGRESS", "FINALIZE", "COMPLETED", "ERRORED", "FAILED", "CANCELLED"];
const TERMINAL = new Set(["COMPLETED", "FAILED", "CANCELLED"]);
const RESTARTABLE = new Set(["FAILED", "CANCELLED"]);
const CHUNK_STATES = ["COMPLETED", "IN_PROGRESS", "READY", "POLL_WAITING", "ERRORED", "GATE_WAITING", "FAILED", "CANCELLED"];
// IN_PROGRESS chunks are claimed (leased to a daemon: queued there or running), not all running.
const STATE_WORD = { IN_PROGRESS: "CLAIMED" };
const stateWord = (k) => STATE_WORD[k] || k;

const main = document.getElementById("main");
const toast = document.getElementById("toast");
let scope = null;          // "view" or "manage" once signed in
let view = null;           // the mounted page: {refresh}
let generation = 0;        // bumps on every navigation, so a late refresh of an old page is dropped
let timer = null;

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function api(path, method = "GET", payload = undefined) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["Content-Type"] = "application/json"; // the daemon's CSRF guard asks for it
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (payload !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(path, { method, headers, cache: "no-store", credentials: "omit", redirect: "error",
                              body: payload === undefined ? undefined : JSON.stringify(payload) });
  } catch (e) {
    throw new ApiError(0, "unreachable", "the daemon does not answer");
  }
  let body = null;
  try { body = await res.json(); } catch { /* not JSON: reported below by status */ }
  if (!res.ok) {
    const err = (body && body.error) || {};
    throw new ApiError(res.status, err.code || "http_error", err.message || res.statusText);
  }
  return body;
}

// ---------------------------------------------------------------- DOM helpers
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  return fill(el, attrs, children);
}

function s(tag, attrs, ...children) {
  return fill(document.createElementNS("http://www.w3.org/2000/svg", tag), attrs, children);
}

function fill(el, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.setAttribute("class", v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

// replaceChildren without the "null" text nodes it would make of skipped parts.
function put(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
}

function badge(status) { return h("span", { class: `badge s-${status}` }, status); }

function progressBar(fraction, label) {
  const pct = Math.max(0, Math.min(100, Math.round((fraction || 0) * 1000) / 10));
  const fillEl = h("span", { class: "fill" });
  fillEl.style.width = `${pct}%`;   // CSSOM, allowed by the page's style-src 'self'
  return h("div", { class: "row" },
    h("div", { class: "bar", role: "progressbar", "aria-label": label, "aria-valuemin": 0, "aria-valuemax": 100,
               "aria-valuenow": pct, "data-progress": pct }, fillEl),
    h("span", { class: "num" }, `${pct}%`));
}

function stackedBar(states, label) {
  const total = Object.values(states).reduce((a, b) => a + b, 0);
  const bar = h("div", { class: "bar stacked", role: "img", "aria-label": `${label}: ` +
    (CHUNK_STATES.filter((k) => states[k]).map((k) => `${states[k]} ${stateWord(k)}`).join(", ") || "no chunks") });
  for (const k of CHUNK_STATES) {
    if (!states[k]) continue;
    const seg = h("span", { class: `seg-${k}`, title: `${stateWord(k)}: ${states[k]}` });
    seg.style.width = `${(100 * states[k]) / total}%`;
    bar.append(seg);
  }
  return bar;
}

function legend() {
  return h("div", { class: "legend", "aria-hidden": "true" },
    CHUNK_STATES.map((k) => h("span", {}, h("i", { class: `seg-${k}` }), stateWord(k))));
}

const fmt = {
  time(iso) { return iso ? new Date(iso).toLocaleString() : "—"; },
  ago(seconds) { return seconds === null || seconds === undefined ? "—" : `${fmt.dur(seconds)} ago`; },
  dur(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    const t = Math.round(seconds);
    if (t < 60) return `${t}s`;
    if (t < 3600) return `${Math.floor(t / 60)}m ${t % 60}s`;
    return `${Math.floor(t / 3600)}h ${Math.floor((t % 3600) / 60)}m`;
  },
  rate(x) { return x === null || x === undefined ? "—" : x >= 100 ? Math.round(x).toLocaleString() : x.toFixed(1); },
  int(x) { return (x || 0).toLocaleString(); },
  json(x) { return JSON.stringify(x, null, 2); },
};

function say(message, isError = false) {
  toast.replaceChildren(h("span", { class: isError ? "error" : "" }, message));
  clearTimeout(say.timer);
  say.timer = setTimeout(() => toast.replaceChildren(), 8000);
}

function confirmAction(title, text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
    document.getElementById("confirm-ok").focus();
  });
}

async function act(path, done) {
  try {
    await api(path, "POST");
    say("Done.");
  } catch (e) {
    if (e.status === 401) return signOut("Your token is no longer accepted.");
    say(e.status === 403 ? `Refused: ${e.message}` : `Failed: ${e.message}`, true);
  }
  await done();
}

// ---------------------------------------------------------------- pages
function instancesPage() {
  const state = { job: "", status: "", count: 50 };
  const jobSelect = h("select", { id: "f-job", onchange: (e) => { state.job = e.target.value; refresh(); } },
    h("option", { value: "" }, "All jobs"));
  const statusSelect = h("select", { id: "f-status", onchange: (e) => { state.status = e.target.value; refresh(); } },
    h("option", { value: "" }, "All statuses"), STATUSES.map((st) => h("option", { value: st }, st)));
  const body = h("tbody");
  const summary = h("p", { class: "muted", "aria-live": "polite" });
  const more = h("button", { type: "button", hidden: true,
                             onclick: () => { state.count = Math.min(500, state.count + 50); refresh(); } }, "Show more");
  const root = h("section", { "aria-labelledby": "page-title" },
    h("h1", { id: "page-title" }, "Instances"),
    h("div", { class: "filters" }, h("label", {}, "Job", jobSelect), h("label", {}, "Status", statusSelect)),
    summary,
    h("table", { id: "instances" },
      h("thead", {}, h("tr", {}, ["ID", "Job", "Status", "Progress", "Chunks/s", "ETA", "Started", "Ended", "Errors"]
        .map((t, i) => h("th", { scope: "col", class: [0, 4, 5, 8].includes(i) ? "num" : null }, t)))),
      body),
    h("p", {}, more));

  api("/api/v1/jobs").then(({ jobs }) => {
    for (const name of [...new Set(jobs.map((j) => j.name))].sort()) jobSelect.append(h("option", { value: name }, name));
  }).catch(() => {});

  async function refresh() {
    const q = new URLSearchParams({ count: String(state.count) });
    if (state.job) q.set("job", state.job);
    if (state.status) q.set("status", state.status);
    const page = await api(`/api/v1/instances?${q}`);
    summary.textContent = `Newest first: ${page.count} of ${fmt.int(page.total)}.`;
    more.hidden = page.total <= page.count || state.count >= 500;
    body.replaceChildren(...page.instances.map((i) => h("tr", { "data-instance-id": i.id },
      h("td", { class: "num" }, h("a", { href: `#/instances/${i.id}` }, `#${i.id}`)),
      h("td", {}, i.job, h("span", { class: "muted" }, ` v${i.version}`)),
      h("td", { class: "status" }, badge(i.status)),
      h("td", {}, progressBar(i.progress, `Progress of instance ${i.id}`)),
      h("td", { class: "num" }, fmt.rate(i.chunks_per_second)),
      h("td", { class: "num" }, TERMINAL.has(i.status) ? "—" : fmt.dur(i.eta_seconds)),
      h("td", {}, fmt.time(i.started_at)),
      h("td", {}, fmt.time(i.finished_at)),
      h("td", { class: `num ${i.error_count ? "error" : ""}` }, fmt.int(i.error_count)))));
    if (!page.instances.length) body.append(h("tr", {}, h("td", { colspan: 9, class: "muted" }, "No instances.")));
  }
  return { root, refresh };
}

function throughputChart(series) {
  const W = 900, H = 180, pad = 24;
  const points = series.points;
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": points.length ? `Completed chunks per ${series.bucket_seconds} s, ${points.length} buckets, ` +
      `peak ${Math.max(...points.map((p) => p.completed))}` : "No chunks completed yet" });
  if (!points.length) {
    svg.append(s("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "No chunks completed yet"));
    return svg;
  }
  const t0 = Date.parse(points[0].at), t1 = Date.parse(points[points.length - 1].at);
  const slots = Math.max(1, Math.round((t1 - t0) / (series.bucket_seconds * 1000)) + 1);
  const peak = Math.max(...points.map((p) => p.completed));
  const bw = (W - 2 * pad) / slots;
  for (const p of points) {
    const i = Math.round((Date.parse(p.at) - t0) / (series.bucket_seconds * 1000));
    const bh = ((H - 2 * pad) * p.completed) / peak;
    svg.append(s("rect", { x: pad + i * bw, y: H - pad - bh, width: Math.max(1, bw - 1), height: bh },
      s("title", {}, `${new Date(p.at).toLocaleTimeString()}: ${p.completed} chunks`)));
  }
  svg.append(s("text", { x: pad, y: 16 }, `peak ${fmt.int(peak)} per ${series.bucket_seconds}s`),
    s("text", { x: pad, y: H - 6 }, new Date(t0).toLocaleTimeString()),
    s("text", { x: W - pad, y: H - 6, "text-anchor": "end" }, new Date(t1).toLocaleTimeString()));
  return svg;
}

function instancePage(id) {
  const title = h("h1", { id: "page-title" }, `Instance #${id}`);
  const actions = h("div", { class: "row", id: "actions" });
  const facts = h("dl", { class: "facts" });
  const steps = h("tbody");
  const chart = h("div", { id: "throughput" });
  const errors = h("tbody");
  const warnings = h("ul", { id: "warnings" });
  const report = h("pre", { id: "report" });
  const root = h("section", { "aria-labelledby": "page-title" },
    h("p", {}, h("a", { href: "#/instances" }, "← All instances")), title, actions,
    scope === "view" ? h("p", { class: "muted", id: "view-only" },
      "Your token can only view: Cancel, Restart and Force-stop will be refused.") : null,
    h("h2", {}, "Overview"), facts,
    h("h2", {}, "Steps"), legend(),
    h("table", { id: "steps" }, h("thead", {}, h("tr", {}, ["Step", "Chunk states", "Completed", "Failed", "Errors"]
      .map((t, i) => h("th", { scope: "col", class: i > 1 ? "num" : null }, t)))), steps),
    h("h2", {}, "Throughput"), chart,
    h("h2", {}, "Chunks with errors"),
    h("p", { class: "muted" }, "Chunks failed or waiting to retry, with their last error. A chunk that " +
      "succeeded on a later attempt counts in Errors above but no longer carries a message."),
    h("table", { id: "errors" }, h("thead", {}, h("tr", {}, ["Chunk", "Step", "Status", "Attempt", "Failures", "Message"]
      .map((t) => h("th", { scope: "col" }, t)))), errors),
    h("h2", {}, "Warnings"), warnings,
    h("h2", {}, "Report"), report);

  let last = null;
  function button(label, path, text, enabled) {
    return h("button", { type: "button", class: "danger", disabled: !enabled, onclick: async () => {
      if (await confirmAction(`${label} instance #${id}?`, text)) await act(path, refresh);
    } }, label);
  }

  async function refresh() {
    const [inst, chunkErrors, series] = await Promise.all([
      api(`/api/v1/instances/${id}`),
      api(`/api/v1/instances/${id}/chunks?errors=true&count=50`),
      api(`/api/v1/instances/${id}/throughput`)]);
    title.replaceChildren(`Instance #${inst.id} · ${inst.job} v${inst.version} `, badge(inst.status));
    document.title = `#${inst.id} ${inst.job} · chunkd`;
    if (last !== inst.status) {   // rebuild the buttons only when they change, so focus stays put
      last = inst.status;
      const live = !TERMINAL.has(inst.status);
      actions.replaceChildren(
        button("Cancel", `/api/v1/instances/${id}/cancel`,
          "Chunks not yet started will not run; running chunks finish.", live),
        button("Restart", `/api/v1/instances/${id}/restart`,
          "Chunks that did not complete run again; completed work is kept.", RESTARTABLE.has(inst.status)),
        button("Force-stop", `/api/v1/instances/${id}/stop?force=true`,
          "Every chunk, running ones included, is cancelled now.", live));
    }
    put(facts,
      h("dt", {}, "Status"), h("dd", { id: "status" }, inst.status),
      h("dt", {}, "Progress"), h("dd", {}, progressBar(inst.progress, `Progress of instance ${inst.id}`)),
      h("dt", {}, "Chunks/s"), h("dd", {}, fmt.rate(inst.chunks_per_second)),
      h("dt", {}, "ETA"), h("dd", {}, TERMINAL.has(inst.status) ? "—" : fmt.dur(inst.eta_seconds)),
      h("dt", {}, "Created"), h("dd", {}, fmt.time(inst.created_at)),
      h("dt", {}, "Started"), h("dd", {}, fmt.time(inst.started_at)),
      h("dt", {}, "Ended"), h("dd", {}, fmt.time(inst.finished_at)),
      h("dt", {}, "Errors"), h("dd", {}, fmt.int(inst.error_count)),
      h("dt", {}, "Fired by"), h("dd", { id: "fired-by" }, inst.schedule_id ?
        [h("a", { href: "#/schedules" }, `schedule ${inst.schedule_id}`), ` (occurrence ${fmt.time(inst.scheduled_for)})`]
        : "a submit (no schedule)"),
      inst.cancel_reason ? [h("dt", {}, "Cancelled"), h("dd", { id: "cancel-reason" }, inst.cancel_reason)] : null,
      inst.error_message ? [h("dt", {}, "Error"), h("dd", { class: "error" }, inst.error_message)] : null,
      !inst.error_message && inst.reduction_attempts ? [h("dt", {}, "Reduction retrying"),
        h("dd", { class: "error" }, `${inst.reduction_attempts} failed attempt(s): ${inst.last_error || ""}`)] : null,
      h("dt", {}, "Parameters"), h("dd", {}, h("code", {}, JSON.stringify(inst.parameters))));
    steps.replaceChildren(...(inst.steps || []).map((st) => h("tr", {},
      h("th", { scope: "row" }, `${st.index}. ${st.name}`),
      h("td", {}, stackedBar(st.states, `Step ${st.name}`)),
      h("td", { class: "num" }, `${fmt.int(st.completed)} / ${fmt.int(st.created)}`),
      h("td", { class: "num" }, fmt.int(st.failed)),
      h("td", { class: "num" }, fmt.int(st.errors)))));
    chart.replaceChildren(throughputChart(series));
    errors.replaceChildren(...chunkErrors.chunks.map((c) => h("tr", {},
      h("td", {}, String(c.id)), h("td", {}, c.step_name), h("td", {}, c.status),
      h("td", {}, `${c.error_attempt ?? c.attempt}`), h("td", {}, `${c.failures} of ${c.max_attempts}`),
      h("td", { class: "error" }, c.error_message,
        c.error_trace ? h("details", {}, h("summary", {}, "Traceback"), h("pre", { class: "trace" }, c.error_trace)) : null))));
    if (!chunkErrors.chunks.length) errors.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No errors.")));
    else if (chunkErrors.total > chunkErrors.count) {
      errors.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, `${chunkErrors.total - chunkErrors.count} more.`)));
    }
    warnings.replaceChildren(...(inst.warnings || []).map((w) => h("li", {}, w)));
    if (!(inst.warnings || []).length) warnings.append(h("li", { class: "muted" }, "None."));
    report.textContent = inst.report === null || inst.report === undefined ? "No report yet." : fmt.json(inst.report);
  }
  return { root, refresh };
}

// A property's type in words, from its JSON Schema.
function typeName(p) {
  if (p.anyOf) return p.anyOf.map(typeName).join(" | ");
  if (p.$ref) return p.$ref.split("/").pop();
  if (p.type === "array" && p.items) return `array of ${typeName(p.items)}`;
  return p.enum ? p.enum.join(" | ") : String(p.type || "any");
}

// The kind of form control a property gets: numbers, a checkbox, text, or JSON for the rest.
function controlKind(p) {
  const types = p.anyOf ? p.anyOf.map((x) => x.type).filter((t) => t !== "null") : [p.type];
  if (types.length !== 1) return "json";
  return { integer: "integer", number: "number", boolean: "boolean", string: "string" }[types[0]] || "json";
}

// The submit form, built from the job's parameter schema. It validates nothing itself: the
// API's submit does (the same code as the CLI's), and its message is shown as it is.
function submitForm(j) {
  const schema = j.parameters_schema || {};
  const required = new Set(schema.required || []);
  const fields = Object.entries(schema.properties || {}).map(([name, p]) => {
    const kind = controlKind(p);
    const id = `param-${j.name}-${j.version}-${name}`.replace(/[^A-Za-z0-9_-]/g, "_");
    const hint = `${typeName(p)}${required.has(name) ? ", required" : ` (default ${JSON.stringify(p.default)})`}`;
    const attrs = { id, name, "data-kind": kind };
    let input;
    if (kind === "boolean") input = h("input", { ...attrs, type: "checkbox", checked: p.default === true });
    else if (kind === "integer" || kind === "number") input = h("input", { ...attrs, type: "number", step: kind === "integer" ? "1" : "any", placeholder: p.default ?? "" });
    else if (kind === "string") input = h("input", { ...attrs, type: "text", placeholder: p.default ?? "" });
    else input = h("textarea", { ...attrs, rows: 2, placeholder: p.default === undefined ? "JSON" : JSON.stringify(p.default) });
    return { name, kind, input, label: h("label", { for: id }, `${name} — ${hint}`, input) };
  });
  const err = h("p", { class: "error", role: "alert" });
  const form = h("form", { class: "submit-form", "aria-label": `Submit ${j.name}`, onsubmit: async (e) => {
    e.preventDefault();
    err.textContent = "";
    const parameters = {};
    for (const f of fields) {
      const raw = f.input.type === "checkbox" ? f.input.checked : f.input.value.trim();
      if (f.kind === "boolean") { parameters[f.name] = raw; continue; }
      if (raw === "") continue;  // the default applies
      if (f.kind === "integer" || f.kind === "number") parameters[f.name] = Number(raw);
      else if (f.kind === "string") parameters[f.name] = raw;
      else {
        try { parameters[f.name] = JSON.parse(raw); } catch { parameters[f.name] = raw; }  // the API names it
      }
    }
    try {
      const inst = await api("/api/v1/instances", "POST", { job: j.name, version: j.version, parameters });
      say(`Submitted instance #${inst.id}.`);
      location.hash = `#/instances/${inst.id}`;
    } catch (ex) {
      if (ex.status === 401) return signOut("Your token is no longer accepted.");
      err.textContent = ex.message;
    }
  } },
    h("h3", {}, "Submit"), fields.map((f) => f.label),
    h("button", { type: "submit" }, `Submit ${j.name}`), err);
  return form;
}

function jobsPage() {
  const list = h("div");
  const root = h("section", { "aria-labelledby": "page-title" }, h("h1", { id: "page-title" }, "Jobs"), list);
  let shown = "";
  async function refresh() {
    const { jobs } = await api("/api/v1/jobs");
    const key = JSON.stringify(jobs);
    if (key === shown) return;  // rebuilding would wipe what is being typed into a form
    shown = key;
    list.replaceChildren(...jobs.map((j) => {
      const schema = j.parameters_schema || {};
      const required = new Set(schema.required || []);
      const params = Object.entries(schema.properties || {});
      return h("article", { "aria-label": `${j.name} version ${j.version}` },
      h("h2", {}, `${j.name} v${j.version}`, j.latest ? h("span", { class: "muted" }, " (latest)") : null),
      j.description ? h("p", {}, j.description) : null,
      h("p", { class: "muted" }, `${j.gated ? "Gated: each step starts when the previous one is done." :
        "Not gated: chunks move on as soon as they are produced."}` +
        (j.concurrency ? ` At most ${j.concurrency} chunks at a time.` : " No concurrency limit.")),
      h("h3", {}, `Parameters (${j.parameters_type || "object"})`),
      params.length ? h("table", { class: "params" }, h("thead", {}, h("tr", {}, ["Parameter", "Type", "Default"]
        .map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, params.map(([name, p]) => h("tr", {}, h("th", { scope: "row" }, name), h("td", {}, typeName(p)),
          h("td", {}, required.has(name) ? "required" : JSON.stringify(p.default))))))
        : h("p", { class: "muted" }, "No parameters."),
      h("h3", {}, "Steps"),
      h("table", {}, h("thead", {}, h("tr", {}, ["#", "Step", "Kind", "Consumes", "Emits", "Max attempts", "Transactional", "Weight"]
        .map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, j.steps.map((st) => h("tr", {},
          h("td", {}, String(st.index)), h("th", { scope: "row" }, st.name), h("td", {}, st.kind),
          h("td", {}, st.consumes || "—"), h("td", {}, st.emits || "—"), h("td", {}, String(st.max_attempts)),
          h("td", {}, st.transactional ? "yes" : "no"), h("td", {}, String(st.weight)))))),
      scope === "manage" ? submitForm(j) : null);
    }));
  }
  return { root, refresh };
}

function schedulesPage() {
  const body = h("tbody");
  const root = h("section", { "aria-labelledby": "page-title" }, h("h1", { id: "page-title" }, "Schedules"),
    h("table", { id: "schedules" }, h("thead", {}, h("tr", {}, ["Schedule", "Job", "When", "Next fire", "Last fire", "Last instance", "State", ""]
      .map((t) => h("th", { scope: "col" }, t)))), body));
  async function refresh() {
    const { schedules } = await api("/api/v1/schedules");
    body.replaceChildren(...schedules.map((sc) => h("tr", {},
      h("th", { scope: "row" }, sc.id), h("td", {}, sc.job),
      h("td", {}, sc.cron ? `cron ${sc.cron} (${sc.dialect}, ${sc.timezone})` : `every ${fmt.dur(sc.every_seconds)}`),
      h("td", {}, sc.paused || sc.orphaned_at ? "—" : fmt.time(sc.next_fire_at)), h("td", {}, fmt.time(sc.last_fire_at)),
      h("td", {}, sc.last_instance_id ? h("a", { href: `#/instances/${sc.last_instance_id}` }, `#${sc.last_instance_id}`) : "—"),
      h("td", { title: sc.orphaned_at ? "Declared in a job module no running daemon declares any more: it does not fire." : "" },
        sc.orphaned_at ? "orphaned (does not fire)" : sc.paused ? "paused" : "active"),
      h("td", {}, h("button", { type: "button", onclick: () =>
        act(`/api/v1/schedules/${encodeURIComponent(sc.id)}/${sc.paused ? "resume" : "pause"}`, refresh) },
        sc.paused ? `Resume ${sc.id}` : `Pause ${sc.id}`)))));
    if (!schedules.length) body.append(h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No schedules.")));
  }
  return { root, refresh };
}

function ranges(parts) {
  const out = [];
  for (let i = 0; i < parts.length; i++) {
    let j = i;
    while (j + 1 < parts.length && parts[j + 1] === parts[j] + 1) j++;
    out.push(i === j ? `${parts[i]}` : `${parts[i]}–${parts[j]}`);
    i = j;
  }
  return out.join(", ") || "none";
}

function clusterPage() {
  const body = h("tbody");
  const summary = h("p", { class: "muted" });
  const root = h("section", { "aria-labelledby": "page-title" }, h("h1", { id: "page-title" }, "Cluster"), summary,
    h("table", { id: "nodes" }, h("thead", {}, h("tr", {}, ["Node", "Name", "PID", "Partitions", "Claimed (in flight)", "Last seen", "Started", "Role"]
      .map((t) => h("th", { scope: "col" }, t)))), body));
  async function refresh() {
    const { nodes } = await api("/api/v1/cluster");
    const leader = nodes.find((n) => n.leader);
    summary.textContent = `${nodes.length} daemon${nodes.length === 1 ? "" : "s"} seen in the last minute; ` +
      `maintenance leader: ${leader ? `${leader.name} (node ${leader.id})` : "none right now"}.`;
    body.replaceChildren(...nodes.map((n) => h("tr", {},
      h("td", {}, String(n.id)), h("th", { scope: "row" }, n.name), h("td", {}, String(n.pid)),
      h("td", {}, ranges(n.partitions)), h("td", { class: "num" }, fmt.int(n.in_flight)),
      h("td", {}, fmt.ago(n.seen_seconds_ago)), h("td", {}, fmt.time(n.started_at)),
      h("td", {}, n.leader ? h("span", { class: "badge" }, "leader") : "worker"))));
  }
  return { root, refresh };
}

// ---------------------------------------------------------------- shell
function route() {
  const [page, id] = location.hash.replace(/^#\/?/, "").split("/");
  if (page === "instances" && /^\d+$/.test(id || "")) return ["instances", () => instancePage(Number(id))];
  return {
    jobs: ["jobs", jobsPage], schedules: ["schedules", schedulesPage], cluster: ["cluster", clusterPage],
  }[page] || ["instances", instancesPage];
}

async function show() {
  const mine = ++generation;
  clearTimeout(timer);
  const [nav, make] = route();
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === nav) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  view = make();
  main.replaceChildren(view.root);
  const tick = async () => {
    if (mine !== generation) return;
    if (!document.hidden) {
      try {
        await view.refresh();
      } catch (e) {
        if (mine !== generation) return;
        if (e.status === 401) return signOut("Your token is no longer accepted.");
        say(`Could not refresh: ${e.message}`, true);
      }
    }
    if (mine === generation) timer = setTimeout(tick, REFRESH_MS);
  };
  await tick();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  scope = null;
  generation++;
  clearTimeout(timer);
  document.getElementById("who").textContent = "";
  document.getElementById("signout").hidden = true;
  login(message);
}

function login(message) {
  const input = h("input", { id: "token", type: "password", name: "token", autocomplete: "off", required: true,
                             spellcheck: "false" });
  const err = h("p", { class: "error", role: "alert" }, message || "");
  const form = h("form", { class: "login", "aria-labelledby": "login-title", onsubmit: async (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    await boot();
  } },
    h("h1", { id: "login-title" }, "Sign in to chunkd"),
    h("label", {}, "API token (a view token to look, a manage token to act)", input),
    h("button", { type: "submit" }, "Sign in"), err,
    h("p", { class: "muted" }, "The token is kept in this browser tab only."));
  main.replaceChildren(form);
  input.focus();
}

async function boot() {
  try {
    const who = await api("/api/v1/whoami");
    scope = who.scope;
    document.getElementById("who").textContent = who.auth_required ? `Signed in: ${who.scope} token` : "No token needed";
    document.getElementById("signout").hidden = !who.auth_required;
    await show();
  } catch (e) {
    if (e.status === 401) {
      const had = sessionStorage.getItem(TOKEN_KEY);
      sessionStorage.removeItem(TOKEN_KEY);
      login(had ? "That token is not accepted by this daemon." : "");
    } else {
      main.replaceChildren(h("p", { class: "error", role: "alert" }, `The daemon did not answer: ${e.message}`));
      timer = setTimeout(boot, REFRESH_MS * 2);
    }
  }
}

document.getElementById("signout").addEventListener("click", () => signOut("Signed out."));
window.addEventListener("hashchange", () => { if (scope) show(); });
document.addEventListener("visibilitychange", () => { if (!document.hidden && scope) show(); });
boot();
