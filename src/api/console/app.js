// spotd web console: the core (API calls, DOM helpers, sign-in, page routing).
// Every string that came from the API is put in the page as text (textContent or text
// nodes), never parsed as HTML.
"use strict";

const KEY = "spotd.key";
const ROLE = "spotd.role";

const C = {
  pages: {},
  timers: [],
  config: { min_session_seconds: 600 },

  key() { return sessionStorage.getItem(KEY) || ""; },
  role() { return sessionStorage.getItem(ROLE) || ""; },

  // A JSON API call with the signed-in key; throws an Error with the API's message.
  async api(method, path, body) {
    const opts = { method, headers: { Authorization: "Bearer " + C.key() } };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const r = await fetch(path, opts);
    const text = await r.text();
    let v = null;
    try { v = text ? JSON.parse(text) : null; } catch (_) { v = null; }
    if (!r.ok) {
      const msg = v && v.error && v.error.message ? v.error.message : r.status + " " + r.statusText;
      const e = new Error(msg);
      e.status = r.status;
      throw e;
    }
    return v;
  },

  // Every page of a list endpoint, up to `max` items.
  async all(path, max) {
    const out = [];
    let cursor = null;
    do {
      const sep = path.includes("?") ? "&" : "?";
      const page = await C.api("GET", path + (cursor ? sep + "cursor=" + encodeURIComponent(cursor) : ""));
      out.push(...page.data);
      cursor = page.next_cursor;
    } while (cursor && out.length < (max || 1000));
    return out;
  },

  // el("div", {className: "x", onclick: f}, "text", child, ...): strings become text nodes.
  el(tag, props, ...children) {
    const n = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "dataset") Object.assign(n.dataset, v);
      else if (k.startsWith("on")) n.addEventListener(k.slice(2), v);
      else if (k === "for") n.htmlFor = v;
      else n[k] = v;
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      n.append(typeof c === "object" ? c : document.createTextNode(String(c)));
    }
    return n;
  },

  svg(tag, attrs, ...children) {
    const n = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) n.setAttribute(k, String(v));
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      n.append(typeof c === "object" ? c : document.createTextNode(String(c)));
    }
    return n;
  },

  // A table: `cols` is [[heading, row => cell]], a cell a string or a node.
  table(rows, cols, opts) {
    const head = C.el("tr", {}, cols.map(([h]) => C.el("th", {}, h)));
    const body = rows.map((r) => C.el("tr", opts && opts.rowProps ? opts.rowProps(r) : {},
      cols.map(([h, f]) => C.el("td", { dataset: { label: h } }, f(r)))));
    return C.el("div", { className: "scroll" }, C.el("table", {}, C.el("thead", {}, head), C.el("tbody", {}, body)));
  },

  usd(v) {
    if (v === null || v === undefined) return "–";
    const n = Number(v);
    return (n < 0 ? "-$" : "$") + Math.abs(n).toFixed(Math.abs(n) < 1 && n !== 0 ? 4 : 2);
  },

  // A signed API money value as given (exact): "-$0.000035", "$2.5".
  money(v) {
    if (v === null || v === undefined) return "–";
    const t = String(v);
    return t.startsWith("-") ? "-$" + t.slice(1) : "$" + t;
  },

  // Exact micro-USD from an API money number (at most 6 decimals).
  micros(v) { return BigInt(Math.round(Number(v) * 1e6)); },
  fromMicros(m) {
    const neg = m < 0n;
    const a = neg ? -m : m;
    const frac = (a % 1000000n).toString().padStart(6, "0").replace(/0+$/, "");
    return (neg ? "-" : "") + (a / 1000000n).toString() + (frac ? "." + frac : "");
  },
  // The hold a rent places: price_per_hour × min_session_seconds, rounded half up to
  // the micro-dollar as the server does.
  holdFor(pricePerHour) {
    const s = BigInt(C.config.min_session_seconds);
    return C.fromMicros((C.micros(pricePerHour) * s + 1800n) / 3600n);
  },

  time(t) { return t ? new Date(t).toLocaleString() : "–"; },

  status(msg, isError) {
    const s = document.getElementById("status");
    s.textContent = msg || "";
    s.className = "status" + (isError ? " error" : "");
  },

  every(ms, f) { C.timers.push(setInterval(f, ms)); },

  async show() {
    C.timers.forEach(clearInterval);
    C.timers = [];
    C.status("");
    const signedIn = !!C.key();
    document.getElementById("signin").hidden = signedIn;
    document.getElementById("nav").hidden = !signedIn;
    document.getElementById("signout").hidden = !signedIn;
    document.getElementById("who").textContent = signedIn ? (C.role() === "admin" ? "admin" : "API key") : "";
    document.body.classList.toggle("admin", C.role() === "admin");
    const root = document.getElementById("page");
    root.replaceChildren();
    if (!signedIn) return;
    let name = location.hash.replace(/^#/, "").split("/")[0];
    if (!C.pages[name]) name = C.role() === "admin" ? "accounts" : "offers";
    for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === name);
    try {
      await C.pages[name](root, location.hash.split("/").slice(1).map(decodeURIComponent));
    } catch (e) {
      C.status(e.message, true);
    }
  },

  async signIn(key) {
    sessionStorage.setItem(KEY, key);
    try {
      await C.api("GET", "/v1/credits");
      sessionStorage.setItem(ROLE, "user");
    } catch (e) {
      if (e.status !== 401) throw e;
      try {
        await C.api("GET", "/admin/v1/providers");
        sessionStorage.setItem(ROLE, "admin");
      } catch (e2) {
        sessionStorage.removeItem(KEY);
        throw new Error(e2.status === 401 ? "That key is neither an API key nor the admin token." : e2.message);
      }
    }
  },

  signOut() {
    sessionStorage.removeItem(KEY);
    sessionStorage.removeItem(ROLE);
    location.hash = "";
    C.show();
  },
};
window.C = C;

document.addEventListener("DOMContentLoaded", async () => {
  try { C.config = await (await fetch("/console/config.json")).json(); } catch (_) { /* defaults */ }
  document.getElementById("signin-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const err = document.getElementById("signin-error");
    err.textContent = "";
    try {
      await C.signIn(document.getElementById("key").value.trim());
      document.getElementById("key").value = "";
      C.show();
    } catch (e) {
      err.textContent = e.message;
    }
  });
  document.getElementById("signout").addEventListener("click", C.signOut);
  window.addEventListener("hashchange", C.show);
  C.show();
});
