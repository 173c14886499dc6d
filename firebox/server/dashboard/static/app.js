// firebox's dashboard: plain DOM, the daemon's REST API with the key typed in (kept in this
// tab's sessionStorage only), and one server-sent event stream for the live list.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "firebox-api-key";
let rows = [];
let feed = null; // the live list's stream, while the list is shown

function key() { return sessionStorage.getItem(KEY); }

async function api(method, path, body) {
  const init = { method, headers: { "X-API-Key": key() } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  if (r.status === 401) { signOut(); throw new Error("the key was not accepted"); }
  if (!r.ok) {
    let message = r.statusText;
    try { message = (await r.json()).error.message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return r.status === 204 ? null : r;
}

function show(id) {
  for (const s of ["sign-in", "sandboxes", "sandbox", "templates", "keys", "host"]) $(s).hidden = s !== id;
  $("nav").hidden = id === "sign-in";
}

function signOut() {
  sessionStorage.removeItem(KEY);
  stopFeed();
  location.hash = "#/";
  route();
}

function text(el, value) { el.textContent = value; return el; }

// A streamed answer's body in pieces as they arrive: NDJSON lines ("\n") or server-sent
// events ("\n\n"), each handed to onPiece (the terminal's stream uses it too).
async function readPieces(body, separator, onPiece) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf(separator)) >= 0) {
      const piece = buffer.slice(0, end);
      buffer = buffer.slice(end + separator.length);
      if (piece.trim()) onPiece(piece);
    }
  }
}

function ago(iso) {
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  return s < 60 ? `${s.toFixed(0)} s` : s < 3600 ? `${(s / 60).toFixed(0)} min` : `${(s / 3600).toFixed(1)} h`;
}

function mb(bytes) { return bytes == null ? "–" : `${(bytes / 1048576).toFixed(0)} MB`; }

// -- the live list --------------------------------------------------------------------------

function renderRows() {
  const f = $("filter").value.trim().toLowerCase();
  const state = $("state").value;
  const shown = rows.filter((r) =>
    (!state || r.state === state) &&
    (!f || [r.sandbox_id, r.template, JSON.stringify(r.metadata)].join(" ").toLowerCase().includes(f)));
  const body = $("rows");
  body.replaceChildren(...shown.map((r) => {
    const tr = document.createElement("tr");
    tr.dataset.id = r.sandbox_id;
    // another key's (the admin sees every key's in the list): its insides stay its key's
    const link = document.createElement(r.mine ? "a" : "span");
    if (r.mine) link.href = `#/sandbox/${r.sandbox_id}`;
    link.textContent = r.mine ? r.sandbox_id : `${r.sandbox_id} (another key's)`;
    const cells = [link, r.template, r.backend, r.state, ago(r.started_at),
      r.state === "paused" ? "paused" : `${Math.max(0, (Date.parse(r.end_at) - Date.now()) / 1000).toFixed(0)} s`,
      r.cpu_pct == null ? "–" : `${r.cpu_pct.toFixed(0)}% of ${r.cpu_count}`,
      r.mem_used == null ? "–" : `${mb(r.mem_used)} / ${mb(r.mem_total)}`];
    for (const c of cells) {
      const td = document.createElement("td");
      if (c instanceof Node) td.append(c); else td.textContent = c;
      tr.append(td);
    }
    return tr;
  }));
  text($("count"), `${shown.length} of ${rows.length} sandboxes`);
}

async function startFeed() {
  stopFeed();
  const controller = new AbortController();
  feed = controller;
  try {
    const r = await fetch("/dashboard/api/events", { headers: { "X-API-Key": key() }, signal: controller.signal });
    if (r.status === 401) { signOut(); return; }
    await readPieces(r.body, "\n\n", (event) => {
      const data = event.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (data) { rows = JSON.parse(data); renderRows(); }
    });
  } catch (e) {
    if (e.name !== "AbortError") text($("count"), `the live list stopped: ${e.message}; reload to retry`);
  }
}

function stopFeed() { if (feed) { feed.abort(); feed = null; } }

// -- one sandbox ------------------------------------------------------------------------------

async function openSandbox(id) {
  show("sandbox");
  $("terminal").replaceChildren();
  text($("sandbox-title"), id);
  text($("sandbox-status"), "");
  $("sandbox").dataset.id = id;
  try {
    const info = await (await api("GET", `/sandboxes/${id}`)).json();
    const details = $("details");
    const pairs = [["state", info.state], ["template", info.template], ["backend", info.backend],
      ["started", info.started_at], ["ends", info.end_at], ["CPUs", info.cpu_count],
      ["memory", `${info.memory_mb} MB`], ["disk", `${info.disk_mb} MB`],
      ["internet", info.allow_internet_access ? "allowed" : "no"],
      ["allow out", (info.network.allow_out || []).join(", ") || "–"],
      ["public ports", info.network.allow_public_traffic ? "yes" : "no (traffic token)"],
      ["metadata", JSON.stringify(info.metadata)]];
    details.replaceChildren(...pairs.flatMap(([k, v]) => [text(document.createElement("dt"), k), text(document.createElement("dd"), String(v))]));
    $("pause").hidden = info.state !== "running" || !info.pause_keeps;
    $("resume").hidden = info.state !== "paused";
    const log = await (await api("GET", `/sandboxes/${id}/activity`)).json();
    $("activity").replaceChildren(...log.map((e) => text(document.createElement("li"),
      `${new Date(e.at).toLocaleTimeString()}  ${e.kind}${e.user ? ` (${e.user})` : ""}: ${e.text}`)));
    if (info.state === "running") {
      const procs = await (await api("GET", `/sandboxes/${id}/commands`)).json();
      $("processes").replaceChildren(...procs.map((p) => text(document.createElement("li"), `${p.pid}  ${p.user}  ${p.cmd || (p.argv || []).join(" ")}`)));
      await listFiles();
    }
  } catch (e) {
    text($("sandbox-status"), e.message);
  }
}

async function listFiles() {
  const id = $("sandbox").dataset.id;
  const path = $("path").value;
  try {
    const entries = await (await api("GET", `/sandboxes/${id}/files/list?path=${encodeURIComponent(path)}`)).json();
    $("files").replaceChildren(...entries.map((e) => {
      const li = document.createElement("li");
      if (e.type === "file") {
        const b = document.createElement("button");
        b.type = "button";
        b.textContent = `${e.name} (${e.size} bytes)`;
        b.setAttribute("aria-label", `download ${e.name}`);
        b.onclick = () => download(id, e.path, e.name);
        li.append(b);
      } else {
        li.textContent = `${e.name}/`;
      }
      return li;
    }));
  } catch (e) {
    text($("sandbox-status"), e.message);
  }
}

async function download(id, path, name) {
  const r = await api("GET", `/sandboxes/${id}/files?path=${encodeURIComponent(path)}`);
  const url = URL.createObjectURL(await r.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

async function act(what) {
  const id = $("sandbox").dataset.id;
  try {
    if (what === "kill") {
      await api("DELETE", `/sandboxes/${id}`);
      location.hash = "#/";
      return;
    }
    await api("POST", `/sandboxes/${id}/${what}`, what === "resume" ? {} : undefined);
    await openSandbox(id);
    text($("sandbox-status"), `${what}d`);
  } catch (e) {
    text($("sandbox-status"), e.message);
  }
}

// -- templates and keys -------------------------------------------------------------------------

function cells(tr, values) {
  for (const v of values) {
    const td = document.createElement("td");
    if (v instanceof Node) td.append(v); else td.textContent = v;
    tr.append(td);
  }
  return tr;
}

async function openTemplates() {
  show("templates");
  const { templates } = await (await api("GET", "/templates")).json();
  const own = (await (await api("GET", "/dashboard/api/overview")).json()).own_templates;
  $("template-rows").replaceChildren(
    ...own.map((name) => cells(document.createElement("tr"), [name, "firebox's own", "–", "–", "–", "–"])),
    ...templates.map((t) => cells(document.createElement("tr"), [
    t.name, (t.tags || []).join(", "), t.built_at ? new Date(t.built_at * 1000).toLocaleString() : "–",
    t.build_seconds != null ? `${t.build_seconds.toFixed(0)} s` : "–", mb(t.size_bytes), t.start_cmd || "–"])));
}

async function openKeys() {
  show("keys");
  let keys;
  try {
    keys = await (await api("GET", "/keys")).json();
  } catch (e) {
    text($("key-made"), e.message);
    $("key-rows").replaceChildren();
    return;
  }
  $("key-rows").replaceChildren(...keys.map((k) => {
    let action = "";
    if (!k.admin && !k.revoked_at) {
      action = document.createElement("button");
      action.type = "button";
      action.className = "danger";
      action.textContent = "Revoke";
      action.setAttribute("aria-label", `revoke ${k.name}`);
      action.onclick = async () => {
        if (!confirm(`Revoke ${k.name}? Its sandboxes are killed.`)) return;
        await api("DELETE", `/keys/${k.id}`);
        openKeys();
      };
    }
    const tr = cells(document.createElement("tr"), [k.name, k.id, new Date(k.created_at).toLocaleString(),
      k.revoked_at ? "revoked" : k.admin ? "admin" : "active", action]);
    tr.dataset.id = k.id;
    return tr;
  }));
}

$("new-key").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    const made = await (await api("POST", "/keys", { name: $("key-name").value })).json();
    $("key-name").value = "";
    text($("key-made"), `created ${made.name}: ${made.key} (shown this once: copy it now)`);
    openKeys();
  } catch (e) {
    text($("key-made"), e.message);
  }
});

// -- the host ---------------------------------------------------------------------------------

async function openHost() {
  show("host");
  const o = await (await api("GET", "/dashboard/api/overview")).json();
  const pairs = [["backend", o.backend], ["why", o.backend_reason], ["speed", o.consequence],
    ["sandboxes", `${o.sandboxes} of ${o.max_sandboxes}`],
    ["memory committed", `${o.committed_mb} MB${o.max_memory_mb ? ` of ${o.max_memory_mb}` : ""}`],
    ["warm pool", Object.entries(o.pool).map(([k, n]) => `${k}: ${n} of ${o.pool_size}`).join(", ") || "–"],
    ["signed in as", o.admin ? "admin" : "a key"]];
  $("host-details").replaceChildren(...pairs.flatMap(([k, v]) => [text(document.createElement("dt"), k), text(document.createElement("dd"), String(v))]));
}

// -- routing ----------------------------------------------------------------------------------

function route() {
  if (!key()) { stopFeed(); show("sign-in"); $("key").focus(); return; }
  const hash = location.hash || "#/";
  if (hash.startsWith("#/sandbox/")) { stopFeed(); openSandbox(hash.slice(10)); return; }
  if (hash === "#/host") { stopFeed(); openHost(); return; }
  if (hash === "#/templates") { stopFeed(); openTemplates(); return; }
  if (hash === "#/keys") { stopFeed(); openKeys(); return; }
  show("sandboxes");
  if (!feed) startFeed();
}

$("sign-in").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(KEY, $("key").value.trim());
  $("key").value = "";
  try {
    await api("GET", "/dashboard/api/overview");
    text($("sign-in-error"), "");
    route();
  } catch (e) {
    sessionStorage.removeItem(KEY);
    text($("sign-in-error"), `not signed in: ${e.message}`);
  }
});
$("sign-out").onclick = signOut;
$("filter").oninput = renderRows;
$("state").onchange = renderRows;
$("browse").addEventListener("submit", (ev) => { ev.preventDefault(); listFiles(); });
$("upload-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const file = $("upload").files[0];
  if (!file) return;
  const id = $("sandbox").dataset.id;
  const path = `${$("path").value.replace(/\/+$/, "")}/${file.name}`;
  try {
    const r = await fetch(`/sandboxes/${id}/files?path=${encodeURIComponent(path)}`, {
      method: "PUT", headers: { "X-API-Key": key(), "Content-Type": "application/octet-stream" }, body: file,
    });
    if (!r.ok) throw new Error((await r.json()).error.message);
    text($("sandbox-status"), `uploaded ${path}`);
    $("upload").value = "";
    await listFiles();
  } catch (e) {
    text($("sandbox-status"), `the upload failed: ${e.message}`);
  }
});
for (const what of ["pause", "resume", "kill"]) $(what).onclick = () => act(what);
$("open-terminal").onclick = async () => {
  const id = $("sandbox").dataset.id;
  $("open-terminal").hidden = true;
  try {
    await openTerminal(id, $("terminal"), key(), (m) => text($("sandbox-status"), m));
  } catch (e) {
    text($("sandbox-status"), `the terminal did not open: ${e.message}`);
  } finally {
    $("open-terminal").hidden = false;
  }
};
window.addEventListener("hashchange", route);
route();
