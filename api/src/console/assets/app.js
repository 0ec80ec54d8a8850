// Metering console: plain JavaScript over the service's JSON API.
// Errors of any kind end in the #message banner as text, never raw JSON.
"use strict";

window.__consoleErrors = [];
window.addEventListener("error", (e) => window.__consoleErrors.push(String(e.message || e)));
window.addEventListener("unhandledrejection", (e) => window.__consoleErrors.push(String(e.reason)));

const $ = (id) => document.getElementById(id);
const state = { session: null, tokens: [] };
const COLORS = ["#2457c5", "#d9480f", "#2b8a3e", "#862e9c", "#c2255c", "#0b7285", "#5c940d", "#e67700"];

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function show(text, kind) {
  const m = $("message");
  m.textContent = text;
  m.className = kind || "";
  m.hidden = !text;
}

class ApiError extends Error {}

// One call to the service; resolves to `data`, rejects with a readable message.
async function api(method, path, body, accept) {
  const headers = { Accept: accept || "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (state.session && method !== "GET") headers["X-CSRF-Token"] = state.session.csrf;
  let r;
  try {
    r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: "same-origin" });
  } catch (e) {
    throw new ApiError("The service cannot be reached: " + e.message);
  }
  if (r.status === 401 && path !== "/console/login" && path !== "/console/session") {
    signedOut("Your session has ended: sign in again.");
    throw new ApiError("Not signed in.");
  }
  if (accept && accept !== "application/json") {
    if (!r.ok) throw new ApiError(await errorText(r));
    return r.text();
  }
  if (!r.ok) throw new ApiError(await errorText(r));
  const v = await r.json();
  return v.data;
}

async function errorText(r) {
  let v = null;
  try { v = await r.json(); } catch (_) { /* not JSON */ }
  const m = v && ((v.data && v.data.message) || v.message);
  if (m) return m;
  return "The request failed (HTTP " + r.status + ").";
}

// Run an action, turning failures into the message banner.
function guarded(fn) {
  return async (ev) => {
    if (ev && ev.preventDefault) ev.preventDefault();
    try {
      show("");
      await fn(ev);
    } catch (e) {
      if (e instanceof ApiError) show(e.message);
      else { show("Unexpected error: " + e.message); window.__consoleErrors.push(String(e)); }
    }
  };
}

const fmt = (n) => BigInt(n).toLocaleString("en-US");
function human(n) {
  const units = ["B", "kB", "MB", "GB", "TB", "PB"];
  let x = Number(n), i = 0;
  while (x >= 1000 && i < units.length - 1) { x /= 1000; i++; }
  return x.toFixed(i ? 2 : 0) + " " + units[i];
}
const isoDay = (d) => d.toISOString().slice(0, 10);
const localInput = (d) => d.toISOString().slice(0, 16);
const fromLocalInput = (v) => (v ? v + (v.length === 16 ? ":00Z" : "Z") : null);
const list = (v) => v.split(",").map((s) => s.trim()).filter(Boolean);

// ---- session ----

function signedIn(session) {
  state.session = session;
  $("sign-in").hidden = true;
  $("tabs").hidden = false;
  $("who").hidden = false;
  const admin = session.role === "admin";
  $("who-role").textContent = admin ? "Admin" : "Partner: " + session.trackingIds.join(", ");
  for (const e of document.querySelectorAll(".admin-only")) e.hidden = !admin;
  if (!admin) $("usage-ids").value = session.trackingIds.join(", ");
  openTab(admin ? "tokens" : "usage");
}

function signedOut(text) {
  state.session = null;
  $("sign-in").hidden = false;
  $("tabs").hidden = true;
  $("who").hidden = true;
  for (const t of document.querySelectorAll("section.tab")) t.hidden = true;
  show(text || "");
}

async function openTab(name) {
  for (const b of document.querySelectorAll("nav button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const t of document.querySelectorAll("section.tab")) t.hidden = t.id !== "tab-" + name;
  if (name === "tokens") await loadTokens();
  if (name === "publish") await loadPublish();
  if (name === "invoices") await loadInvoices();
  if (name === "allowances") await loadAllowances();
}

// ---- tokens ----

async function loadTokens() {
  state.tokens = await api("GET", "/api/subscribe_token");
  const body = $("tokens-table").tBodies[0];
  body.replaceChildren();
  for (const t of state.tokens) {
    const revoke = el("button", { type: "button", class: "danger", text: "Revoke" });
    revoke.addEventListener("click", guarded(async () => {
      if (revoke.dataset.armed !== "1") { revoke.dataset.armed = "1"; revoke.textContent = "Confirm revoke"; return; }
      await api("DELETE", "/api/subscribe_token/" + t.id);
      show("Token " + t.id + " revoked: its viewers are refused from now on.", "info");
      await loadTokens();
    }));
    const rotate = el("button", { type: "button", text: "Rotate" });
    rotate.addEventListener("click", guarded(async () => {
      if (rotate.dataset.armed !== "1") { rotate.dataset.armed = "1"; rotate.textContent = "Confirm rotate"; return; }
      const n = await api("PUT", "/api/subscribe_token/" + t.id, { refreshToken: true });
      show("Token " + t.id + " rotated: give the partner the new token " + n.token + "; viewer tokens signed with the old one stop working.", "info");
      await loadTokens();
    }));
    const edit = el("button", { type: "button", text: "Edit", onclick: () => editToken(t) });
    body.append(el("tr", { "data-token-id": t.id },
      el("td", { text: t.id }), el("td", { text: t.label }),
      el("td", { class: "tracking", text: t.tracking ? t.tracking.trackingId : "—" }),
      el("td", { text: t.streams.map((s) => s.streamName + (s.isRegex ? " (regex)" : "")).join(", ") }),
      el("td", { text: t.originCluster }), el("td", { text: t.expiresOn ? t.expiresOn.slice(0, 16).replace("T", " ") : "never" }),
      el("td", { text: t.isActive ? "yes" : "no" }), el("td", {}, edit, " ", rotate, " ", revoke)));
  }
  const sel = $("sign-parent");
  sel.replaceChildren(...state.tokens.map((t) => el("option", { value: t.id, text: t.id + " · " + t.label + (t.tracking ? " (" + t.tracking.trackingId + ")" : "") })));
}

function editToken(t) {
  $("token-form-title").textContent = "Edit token " + t.id;
  $("token-id").value = t.id;
  $("token-label").value = t.label;
  $("token-streams").value = t.streams.map((s) => s.streamName).join(", ");
  $("token-regex").checked = t.streams.some((s) => s.isRegex);
  $("token-region").value = t.originCluster;
  $("token-expires").value = t.expiresOn ? t.expiresOn.slice(0, 16) : "";
  $("token-tracking").value = t.tracking ? t.tracking.trackingId : "";
  $("token-tracking").disabled = true; // immutable
  $("token-active").checked = t.isActive;
  for (const e of document.querySelectorAll(".edit-only")) e.hidden = false;
  $("token-submit").textContent = "Save";
  $("token-cancel").hidden = false;
}

function resetTokenForm() {
  $("token-form").reset();
  $("token-id").value = "";
  $("token-tracking").disabled = false;
  $("token-form-title").textContent = "Create a token";
  for (const e of document.querySelectorAll(".edit-only")) e.hidden = true;
  $("token-submit").textContent = "Create";
  $("token-cancel").hidden = true;
}

const saveToken = guarded(async () => {
  const streams = list($("token-streams").value).map((s) => ({ streamName: s, isRegex: $("token-regex").checked }));
  const expires = fromLocalInput($("token-expires").value);
  const id = $("token-id").value;
  if (id) {
    const body = { label: $("token-label").value, streams, updateOriginCluster: $("token-region").value || "Auto",
      isActive: $("token-active").checked, expiresOn: expires };
    await api("PUT", "/api/subscribe_token/" + id, body);
    show("Token " + id + " saved.", "info");
  } else {
    const body = { label: $("token-label").value, streams, originCluster: $("token-region").value || "Auto" };
    if (expires) body.expiresOn = expires;
    const tracking = $("token-tracking").value.trim();
    if (tracking) body.tracking = { trackingId: tracking };
    const t = await api("POST", "/api/subscribe_token", body);
    show("Token " + t.id + " created" + (tracking ? " for tracking id " + tracking : "") + ".", "info");
  }
  resetTokenForm();
  await loadTokens();
});

const signToken = guarded(async () => {
  const r = await api("POST", "/console/sign", { tokenId: Number($("sign-parent").value), streamName: $("sign-stream").value,
    customViewerData: $("sign-cvd").value, expiresIn: Number($("sign-expires").value) });
  $("signed-token").value = r.token;
  $("signed").hidden = false;
  $("copied").hidden = true;
});

const copyToken = guarded(async () => {
  const t = $("signed-token");
  try { await navigator.clipboard.writeText(t.value); }
  catch (_) { t.select(); document.execCommand("copy"); }
  $("copied").hidden = false;
});

// ---- publish tokens ----

async function loadPublish() {
  const tokens = await api("GET", "/api/publish_token");
  $("publish-table").tBodies[0].replaceChildren(...tokens.map((t) => el("tr", { "data-token-id": t.id },
    el("td", { text: t.id }), el("td", { text: t.label }), el("td", { text: t.streams.map((s) => s.streamName).join(", ") }),
    el("td", { class: "requires-auth", text: t.subscribeRequiresAuth ? "yes" : "no" }), el("td", { text: t.isActive ? "yes" : "no" }))));
}

const createPublish = guarded(async () => {
  await api("POST", "/api/publish_token", { label: $("publish-label").value,
    streams: list($("publish-streams").value).map((s) => ({ streamName: s })), subscribeRequiresAuth: $("publish-auth").checked });
  $("publish-form").reset();
  await loadPublish();
});

// ---- usage ----

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of params) q.append(k, v);
  return q.toString();
}

const showUsage = guarded(async () => {
  const ids = list($("usage-ids").value);
  if (!ids.length) throw new ApiError("Give at least one tracking id.");
  const range = [["startDate", $("usage-start").value], ["stopDate", $("usage-stop").value]];
  const idParams = ids.map((i) => ["trackingIds", i]);
  const res = $("usage-resolution").value;
  const [series, totals] = await Promise.all([
    api("GET", "/api/analytics/tracking/series?" + query([...idParams, ...range, ["resolution", res]])),
    api("GET", "/api/analytics/tracking/total?" + query([...idParams, ...range])),
  ]);
  drawChart(series, ids, res);
  const body = $("usage-totals").tBodies[0];
  body.replaceChildren();
  const streams = new Set();
  for (const id of ids) {
    let out = 0n, inb = 0n;
    for (const i of totals[id] || []) { out += BigInt(i.bytesOut); inb += BigInt(i.bytesIn); streams.add(i.streamName); }
    body.append(el("tr", { "data-tracking-id": id }, el("td", { text: id }),
      el("td", { class: "num bytes-out", "data-bytes": out.toString(), text: fmt(out) }),
      el("td", { class: "num bytes-in", "data-bytes": inb.toString(), text: fmt(inb) }), el("td", { text: human(out) })));
  }
  const sbody = $("stream-totals").tBodies[0];
  sbody.replaceChildren();
  if (streams.size) {
    const byStream = await api("GET", "/api/analytics/tracking/streams/total?" + query([...[...streams].slice(0, 10).map((s) => ["streamNames", s]), ...range]));
    for (const [stream, items] of Object.entries(byStream)) {
      for (const i of items) {
        if (state.session.role !== "admin" && !ids.includes(i.trackingId)) continue;
        sbody.append(el("tr", { "data-stream": stream }, el("td", { text: stream }), el("td", { text: i.trackingId === undefined ? "(untracked)" : i.trackingId }),
          el("td", { class: "num", text: fmt(i.bytesOut) }), el("td", { class: "num", text: fmt(i.bytesIn) })));
      }
    }
  }
});

// A line per tracking id over the series' buckets, as SVG.
function drawChart(series, ids, res) {
  const W = 960, H = 300, L = 80, R = 16, T = 16, B = 40;
  const NS = "http://www.w3.org/2000/svg";
  const svgEl = (tag, attrs) => { const e = document.createElementNS(NS, tag); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); return e; };
  const buckets = Object.keys(series[ids[0]] || {});
  const values = ids.map((id) => buckets.map((b) => (series[id][b] || []).reduce((s, i) => s + Number(i.bytesOut), 0)));
  const max = Math.max(1, ...values.flat());
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `Bytes out per ${res.toLowerCase()}`, id: "usage-svg" });
  const x = (i) => L + (buckets.length > 1 ? (i * (W - L - R)) / (buckets.length - 1) : (W - L - R) / 2);
  const y = (v) => H - B - (v * (H - T - B)) / max;
  svg.append(svgEl("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }), svgEl("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }));
  for (const f of [0, 0.5, 1]) {
    const t = svgEl("text", { x: L - 6, y: y(max * f) + 4, "text-anchor": "end" });
    t.textContent = human(max * f);
    svg.append(t);
  }
  const step = Math.max(1, Math.ceil(buckets.length / 8));
  buckets.forEach((b, i) => {
    if (i % step) return;
    const t = svgEl("text", { x: x(i), y: H - B + 16, "text-anchor": "middle" });
    t.textContent = res === "Hour" ? b.slice(5, 13).replace("T", " ") + "h" : b.slice(0, 10);
    svg.append(t);
  });
  values.forEach((vals, k) => {
    const d = vals.map((v, i) => (i ? "L" : "M") + x(i).toFixed(1) + " " + y(v).toFixed(1)).join(" ");
    svg.append(svgEl("path", { d, fill: "none", stroke: COLORS[k % COLORS.length], "stroke-width": 2, "data-tracking-id": ids[k] }));
  });
  const legend = el("div", { class: "legend" });
  ids.forEach((id, k) => { const s = el("span", { text: id }); s.style.setProperty("--swatch", COLORS[k % COLORS.length]); legend.append(s); });
  $("usage-chart").replaceChildren(svg, legend);
}

// ---- viewer records ----

function recordsBody() {
  const b = { startTime: fromLocalInput($("records-start").value), endTime: fromLocalInput($("records-end").value), search: $("records-search").value };
  const t = $("records-tracking").value.trim(), s = $("records-stream").value.trim();
  if (t && s) throw new ApiError("Filter by a tracking id or by a stream, not both.");
  if (t) b.trackingIds = [t];
  else if (s) b.streamNames = [s];
  else if (state.session.role !== "admin") b.trackingIds = state.session.trackingIds;
  return b;
}

const searchRecords = guarded(async () => {
  const text = await api("POST", "/api/records/viewers", recordsBody(), "application/x-jsonl");
  const rows = text.split("\n").filter(Boolean).map((l) => JSON.parse(l));
  $("records-count").textContent = rows.length + " session" + (rows.length === 1 ? "" : "s");
  $("records-table").tBodies[0].replaceChildren(...rows.slice(0, 2000).map((r) => el("tr", { "data-client-id": r.clientId },
    el("td", { class: "mono", text: r.clientId }), el("td", { text: r.trackingId ?? "(untracked)" }), el("td", { class: "mono", text: r.customViewerData ?? "" }),
    el("td", { text: r.streamName }), el("td", { text: r.clusterId }), el("td", { text: r.startTime }), el("td", { text: r.endTime ?? "ongoing" }),
    el("td", { class: "num", text: fmt(r.bytesOut) }), el("td", { class: "num", text: fmt(r.bytesIn) }))));
});

const downloadCsv = guarded(async () => {
  const csv = await api("POST", "/api/records/viewers", recordsBody(), "text/csv");
  const url = URL.createObjectURL(new Blob([csv], { type: "text/csv" }));
  const a = el("a", { href: url, download: "viewer-records.csv", id: "records-download" });
  document.body.append(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(url); a.remove(); }, 10000);
});

// ---- invoices ----

async function loadInvoices() {
  const invoices = await api("GET", "/console/invoices");
  const body = $("invoices-table").tBodies[0];
  body.replaceChildren();
  if (!invoices.length) body.append(el("tr", {}, el("td", { colspan: 8, text: "No invoices yet: run `billing run --period YYYY-MM`." })));
  for (const i of invoices) {
    const link = (ext) => el("a", { href: "/console/invoices/" + encodeURIComponent(i.invoiceNumber) + "." + ext, target: "_blank", rel: "noopener", text: ext.toUpperCase() });
    body.append(el("tr", { "data-invoice": i.invoiceNumber }, el("td", { text: i.period }), el("td", { text: i.partnerId }),
      el("td", { class: "mono", text: i.invoiceNumber }), el("td", { class: "status-" + i.status, text: i.status }),
      el("td", { class: "num", text: human(i.totalBytes) }), el("td", { class: "num", text: i.subtotal + " " + i.currency }),
      el("td", { class: "num total", text: i.total + " " + i.currency }), el("td", {}, link("html"), " ", link("json"), " ", link("csv"), ...(i.status === "issued" ? [" ", link("pdf")] : []))));
  }
  if (invoices.length && !$("reconcile-period").value) $("reconcile-period").value = invoices[0].period;
}

const reconcile = guarded(async () => {
  const r = await api("GET", "/console/reconciliation?period=" + encodeURIComponent($("reconcile-period").value));
  const res = $("reconcile-result");
  res.textContent = r.ok ? `Reconciliation of ${r.period}: all ${r.checks.length} checks agree.` : `Reconciliation of ${r.period}: some checks disagree.`;
  res.className = r.ok ? "ok" : "bad";
  $("reconcile-checks").replaceChildren(...r.checks.map((c) => el("li", { class: c.ok ? "ok" : "bad", text: (c.ok ? "✓ " : "✗ ") + c.name + ": " + c.detail })));
});

// ---- allowances ----

const amountText = (a) => (a.spend !== undefined ? a.spend + " " + a.currency : human(a.bytes));

// A bar per allowance: the part used (capped at the bar's end: the allowance
// plus its grace) and a line at each notification threshold.
function allowanceBar(a, thresholds) {
  const scale = 100 + Math.max(a.gracePercent, 0);
  const pct = Math.min(Number(a.percent), scale);
  const fill = el("div", { class: "fill" + (a.exhausted ? " exhausted" : "") });
  fill.style.width = (pct * 100) / scale + "%";
  const bar = el("div", { class: "bar", title: a.percent + "%" }, fill);
  for (const t of thresholds) {
    if (t > scale) continue;
    const tick = el("span", { class: "tick", "data-threshold": t });
    tick.style.left = (t * 100) / scale + "%";
    bar.append(tick);
  }
  return bar;
}

async function loadAllowances() {
  const body = $("allowances-table").tBodies[0];
  const notes = $("notifications-table").tBodies[0];
  body.replaceChildren();
  notes.replaceChildren();
  let s;
  try {
    s = await api("GET", "/api/entitlements");
  } catch (e) {
    $("allowances-note").textContent = "No allowances: " + e.message;
    return;
  }
  $("allowances-period").textContent = s.period;
  $("allowances-note").textContent = (s.stale ? "The standing is out of date (usage unreadable since " : "As of ") + s.refreshedAt + ".";
  for (const a of s.allowances) {
    const key = a.partner + "/" + (a.trackingId || "-");
    body.append(el("tr", { "data-allowance": key }, el("td", { text: a.partner }), el("td", { text: a.trackingId || "all" }),
      el("td", {}, allowanceBar(a, s.thresholds)),
      el("td", { class: "num used", text: amountText(a.used.spend !== undefined ? a.used : { bytes: a.used.bytes }) + " / " + amountText(a.allowance) + " (" + a.percent + "%)" }),
      el("td", { class: "num", text: amountText(a.remaining) }),
      el("td", { class: a.exhausted ? "bad" : "", text: a.policy + (a.exhausted ? ": used up" : "") })));
  }
  const sent = await api("GET", "/api/entitlements/notifications");
  for (const n of sent) {
    notes.append(el("tr", { "data-notification": n.id }, el("td", { class: "mono", text: n.id }), el("td", { class: "status-" + n.status, text: n.status }),
      el("td", { class: "num", text: n.attempts }), el("td", { text: n.createdAt }), el("td", { text: n.deliveredAt || "" }), el("td", { text: n.lastError || "" })));
  }
  if (!sent.length) notes.append(el("tr", {}, el("td", { colspan: 6, text: "No threshold reached this period." })));
}

// ---- wiring ----

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", guarded(async () => {
    const s = await api("POST", "/console/login", { secret: $("secret").value });
    $("secret").value = "";
    signedIn(s);
  }));
  $("sign-out").addEventListener("click", guarded(async () => { await api("POST", "/console/logout"); signedOut("Signed out."); }));
  for (const b of document.querySelectorAll("nav button")) b.addEventListener("click", guarded(() => openTab(b.dataset.tab)));
  $("token-form").addEventListener("submit", saveToken);
  $("token-cancel").addEventListener("click", resetTokenForm);
  $("sign-form").addEventListener("submit", signToken);
  $("copy-token").addEventListener("click", copyToken);
  $("publish-form").addEventListener("submit", createPublish);
  $("usage-form").addEventListener("submit", showUsage);
  $("records-form").addEventListener("submit", searchRecords);
  $("records-csv").addEventListener("click", downloadCsv);
  $("reconcile-form").addEventListener("submit", reconcile);
  const today = new Date();
  $("usage-stop").value = isoDay(new Date(today.getTime() + 86400000));
  $("usage-start").value = isoDay(new Date(today.getTime() - 6 * 86400000));
  $("records-end").value = localInput(today);
  $("records-start").value = localInput(new Date(today.getTime() - 86400000));
  guarded(async () => {
    const s = await api("GET", "/console/session");
    if (s) signedIn(s);
    else signedOut("");
  })();
});
