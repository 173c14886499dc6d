// A live terminal in a sandbox: xterm.js (served by the daemon) over a terminal session of the
// REST API: POST /sandboxes/{id}/pty streams the screen as NDJSON `pty` lines (base64 bytes),
// keys go to .../commands/{pid}/stdin as data_base64, one request after another (in order),
// and a resize of the window resizes the session's terminal.
"use strict";

function loadOnce(tag, attrs) {
  return new Promise((resolve, reject) => {
    const key = attrs.src || attrs.href;
    if (document.querySelector(`[data-asset="${key}"]`)) return resolve();
    const el = document.createElement(tag);
    Object.assign(el, attrs);
    el.dataset.asset = key;
    el.onload = resolve;
    el.onerror = () => reject(new Error(`could not load ${key}`));
    document.head.append(el);
  });
}

function b64(bytes) {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

function unb64(text) {
  const s = atob(text);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

async function openTerminal(sandboxId, into, apiKey, onStatus) {
  await loadOnce("link", { rel: "stylesheet", href: "/dashboard/vendor/xterm.css" });
  await loadOnce("script", { src: "/dashboard/vendor/xterm.js" });
  await loadOnce("script", { src: "/dashboard/vendor/addon-fit.js" });
  const term = new Terminal({ cursorBlink: true, fontSize: 14, scrollback: 5000 });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  into.replaceChildren();
  term.open(into);
  fit.fit();
  const headers = { "X-API-Key": apiKey, "Content-Type": "application/json" };
  const controller = new AbortController();
  const r = await fetch(`/sandboxes/${sandboxId}/pty`, {
    method: "POST", headers, signal: controller.signal,
    body: JSON.stringify({ cols: term.cols, rows: term.rows }),
  });
  if (!r.ok) throw new Error((await r.json()).error.message);
  let pid = null;
  let sending = Promise.resolve();
  const send = (path, body) => {
    sending = sending.then(() => fetch(`/sandboxes/${sandboxId}/commands/${pid}/${path}`, {
      method: "POST", headers, body: JSON.stringify(body),
    })).catch((e) => onStatus(`the terminal lost a key: ${e.message}`));
  };
  const encoder = new TextEncoder();
  term.onData((data) => { if (pid !== null) send("stdin", { data_base64: b64(encoder.encode(data)) }); });
  term.onResize(({ cols, rows }) => { if (pid !== null) send("resize", { cols, rows }); });
  const refit = () => fit.fit();
  window.addEventListener("resize", refit);
  term.focus();
  try {
    await readPieces(r.body, "\n", (line) => {  // app.js's
      const event = JSON.parse(line);
      if (event.type === "start") pid = event.pid;
      else if (event.type === "pty") term.write(unb64(event.data));
      else if (event.type === "end") term.write(`\r\n[the session ended: exit ${event.exit_code}]\r\n`);
    });
  } finally {
    window.removeEventListener("resize", refit);
  }
  return () => controller.abort();
}
