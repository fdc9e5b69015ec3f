// spotd web console: models and the chat playground, price history, admin pages.
"use strict";
(() => {
  const { el } = C;

  const text = (v) => (v === null || v === undefined ? "–" : typeof v === "object" ? JSON.stringify(v) : String(v));

  // A table of whatever rows an endpoint gives: one column per key of the first row.
  function generic(rows) {
    if (!rows.length) return el("p", { className: "empty" }, "None.");
    const first = ["name", "id"];
    const keys = Object.keys(rows[0]).filter((k) => k !== "object")
      .sort((a, b) => (first.includes(b) ? 1 : 0) - (first.includes(a) ? 1 : 0));
    return C.table(rows, keys.map((k) => [k, (r) => text(r[k])]));
  }
  const rowsOf = (v) => (Array.isArray(v) ? v : Array.isArray(v && v.data) ? v.data : Object.values(v || {}));

  // Models with availability and ETA, and a playground that streams over SSE.
  C.pages.models = async (root) => {
    const models = (await C.api("GET", "/v1/models")).data;
    const pick = el("select", { id: "chat-model" }, models.map((m) => el("option", { value: m.id }, m.id)));
    const prompt = el("textarea", { id: "chat-prompt", rows: 3, placeholder: "Say something" });
    const out = el("pre", { id: "chat-output", className: "chat" });
    const send = el("button", { id: "chat-send", type: "submit" }, "Send (streaming)");
    const form = el("form", { className: "card" }, el("h2", {}, "Chat playground"),
      el("label", {}, "Model", pick), el("label", {}, "Message", prompt), send, out);
    root.append(el("h1", {}, "Models"), el("div", { className: "card" }, C.table(models, [
      ["Model", (m) => m.id],
      ["Availability", (m) => el("span", { className: "avail avail-" + m.availability }, m.availability)],
      ["ETA", (m) => (m.estimated_deploy_seconds ? "~" + m.estimated_deploy_seconds + " s" : "–")],
      ["Owner", (m) => m.owned_by || "–"],
    ])), form);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      send.disabled = true;
      out.textContent = "";
      try {
        const r = await fetch("/v1/chat/completions", {
          method: "POST",
          headers: { Authorization: "Bearer " + C.key(), "Content-Type": "application/json" },
          body: JSON.stringify({ model: pick.value, stream: true, messages: [{ role: "user", content: prompt.value || "Hello" }] }),
        });
        if (!r.ok || !(r.headers.get("content-type") || "").includes("text/event-stream")) {
          const v = await r.json().catch(() => ({}));
          const retry = r.headers.get("retry-after");
          throw new Error((v.error && v.error.message) || v.message || r.status + " " + r.statusText +
            (retry ? " (retry after " + retry + " s)" : ""));
        }
        const reader = r.body.getReader();
        const dec = new TextDecoder();
        let buf = "";
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          buf += dec.decode(value, { stream: true });
          let i;
          while ((i = buf.indexOf("\n")) >= 0) {
            const line = buf.slice(0, i).trim();
            buf = buf.slice(i + 1);
            if (!line.startsWith("data:")) continue;
            const data = line.slice(5).trim();
            if (data === "[DONE]") continue;
            try {
              const chunk = JSON.parse(data);
              const d = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
              if (d && d.content) out.append(document.createTextNode(d.content));
            } catch (_) { /* not JSON: skip */ }
          }
        }
      } catch (e) {
        out.textContent = "Error: " + e.message;
      } finally {
        send.disabled = false;
      }
    });
  };

  // One GPU's price history: the median per GPU-hour with its min–max band.
  function priceChart(gpu, rows) {
    const W = 640, H = 180, P = 34;
    const pts = rows.map((r) => ({ t: Date.parse(r.start), lo: Number(r.min_price_per_gpu_hour),
      med: Number(r.median_price_per_gpu_hour), hi: Number(r.max_price_per_gpu_hour) }));
    const t0 = Math.min(...pts.map((p) => p.t)), t1 = Math.max(...pts.map((p) => p.t));
    const v0 = Math.min(...pts.map((p) => p.lo)), v1 = Math.max(...pts.map((p) => p.hi));
    const x = (t) => P + (t1 > t0 ? ((t - t0) / (t1 - t0)) * (W - 2 * P) : (W - 2 * P) / 2);
    const y = (v) => H - P + 10 - (v1 > v0 ? ((v - v0) / (v1 - v0)) * (H - P - 10) : (H - P - 10) / 2);
    const band = pts.map((p) => x(p.t) + "," + y(p.hi)).concat(pts.slice().reverse().map((p) => x(p.t) + "," + y(p.lo))).join(" ");
    const line = pts.map((p) => x(p.t) + "," + y(p.med)).join(" ");
    return el("div", { className: "card price-chart" }, el("h2", { className: "gpu-name" }, gpu),
      C.svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "Price history" },
        C.svg("polygon", { points: band, class: "band" }),
        C.svg("polyline", { points: line, class: "line" }),
        pts.map((p) => C.svg("circle", { cx: x(p.t), cy: y(p.med), r: 2.5, class: "dot" },
          C.svg("title", {}, new Date(p.t).toLocaleString() + ": $" + p.med + "/GPU-h"))),
        C.svg("text", { x: 2, y: 12, class: "axis" }, "$" + v1.toFixed(2)),
        C.svg("text", { x: 2, y: H - P + 10, class: "axis" }, "$" + v0.toFixed(2)),
        C.svg("text", { x: P, y: H - 6, class: "axis" }, new Date(t0).toLocaleString()),
        C.svg("text", { x: W - P, y: H - 6, class: "axis", "text-anchor": "end" }, new Date(t1).toLocaleString())),
      el("p", { className: "note" }, rows.length + " points, median per GPU-hour with its min–max band"));
  }

  C.pages.prices = async (root) => {
    const gpu = el("input", { id: "p-gpu", type: "search", placeholder: "all GPUs" });
    const interval = el("select", { id: "p-interval" }, el("option", { value: "1h" }, "hourly, last 24 h"),
      el("option", { value: "1d" }, "daily, last 30 days"));
    const out = el("div", { id: "price-charts" });
    const form = el("form", { className: "filters card" }, el("label", {}, "GPU", gpu), el("label", {}, "Interval", interval),
      el("button", { type: "submit" }, "Show"));
    root.append(el("h1", {}, "Price history"), form, out);
    async function load() {
      const p = new URLSearchParams({ interval: interval.value, limit: "1000" });
      if (gpu.value.trim()) p.set("gpu", gpu.value.trim());
      const rows = await C.all("/v1/gpus/prices?" + p.toString(), 5000);
      const by = new Map();
      for (const r of rows) { if (!by.has(r.gpu)) by.set(r.gpu, []); by.get(r.gpu).push(r); }
      out.replaceChildren(...[...by].map(([g, rs]) => priceChart(g, rs)));
      if (!by.size) out.append(el("p", { className: "empty" }, "No price history yet: it is recorded hourly from the offers."));
    }
    form.addEventListener("submit", (ev) => { ev.preventDefault(); load().catch((e) => C.status(e.message, true)); });
    await load();
  };

  // Admin: accounts with their credit and keys; create, add credit, new key, revoke.
  C.pages.accounts = async (root) => {
    const accounts = await C.all("/admin/v1/accounts", 1000);
    const shown = el("div", { id: "secret" });
    const detail = el("div", { id: "account-detail" });
    const name = el("input", { placeholder: "name", required: true });
    const credit = el("input", { type: "number", min: "0", step: "0.01", placeholder: "credit USD", value: "0" });
    const create = el("form", { className: "filters card" }, el("label", {}, "New account", name), el("label", {}, "Credit", credit),
      el("button", { type: "submit" }, "Create"));
    create.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      try {
        const a = await C.api("POST", "/admin/v1/accounts", { name: name.value, credit: Number(credit.value || 0) });
        const key = a.api_key || (a.api_keys && a.api_keys[0]) || {};
        showSecret("API key for " + a.name + " (shown once): ", key.key || key.secret || text(key));
      } catch (e) { C.status(e.message, true); }
    });
    function showSecret(label, s) {
      C.show().then(() => document.getElementById("secret").replaceChildren(el("p", { className: "ok" }, label, el("code", {}, s))));
    }
    async function open(id) {
      const a = await C.api("GET", "/admin/v1/accounts/" + encodeURIComponent(id));
      const amount = el("input", { type: "number", step: "0.01", placeholder: "USD", required: true });
      const note = el("input", { placeholder: "note" });
      const add = el("form", { className: "filters" }, el("label", {}, "Add credit", amount), el("label", {}, "Note", note),
        el("button", { type: "submit" }, "Add"));
      add.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        try {
          await C.api("POST", "/admin/v1/accounts/" + encodeURIComponent(id) + "/credits", { amount: Number(amount.value), note: note.value || undefined });
          C.show();
        } catch (e) { C.status(e.message, true); }
      });
      const newKey = el("button", { type: "button", onclick: async () => {
        try {
          const k = await C.api("POST", "/admin/v1/accounts/" + encodeURIComponent(id) + "/keys", {});
          showSecret("New key (shown once): ", k.key || k.secret || text(k));
        } catch (e) { C.status(e.message, true); }
      } }, "New API key");
      // Spend caps (SPEC 6): empty means no cap.
      const capInput = (v) => el("input", { type: "number", min: "0", step: "0.01", placeholder: "no cap", value: v == null ? "" : String(v) });
      const perHour = capInput(a.max_usd_per_hour);
      const perMonth = capInput(a.max_usd_per_month);
      perHour.id = "cap-hour";
      perMonth.id = "cap-month";
      const caps = el("form", { className: "filters", id: "caps" }, el("label", {}, "Max USD per hour", perHour),
        el("label", {}, "Max USD per month", perMonth), el("button", { type: "submit" }, "Set caps"),
        el("span", { id: "spent-month" }, "Spent this month: $" + text(a.spent_this_month)));
      caps.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        const val = (i) => (i.value.trim() === "" ? null : Number(i.value));
        try {
          await C.api("PATCH", "/admin/v1/accounts/" + encodeURIComponent(id), { max_usd_per_hour: val(perHour), max_usd_per_month: val(perMonth) });
          await open(id);
          C.status("caps saved");
        } catch (e) { C.status(e.message, true); }
      });
      const keys = (a.api_keys || []).map((k) => Object.assign({}, k, { key: undefined }));
      detail.replaceChildren(el("div", { className: "card" }, el("h2", {}, a.name), add, el("h3", {}, "Spend caps"), caps,
        el("h3", {}, "API keys"), keys.length ? C.table(keys, [
          ["Key", (k) => k.id],
          ["Prefix", (k) => text(k.prefix)],
          ["Created", (k) => C.time(k.created_at)],
          ["Revoked", (k) => (k.revoked_at ? C.time(k.revoked_at) : "–")],
          ["", (k) => (k.revoked_at ? "" : el("button", { className: "danger", type: "button", onclick: async () => {
            if (!window.confirm("Revoke key " + k.id + "?")) return;
            try { await C.api("DELETE", "/admin/v1/keys/" + encodeURIComponent(k.id)); await open(id); }
            catch (e) { C.status(e.message, true); }
          } }, "Revoke"))],
        ]) : el("p", { className: "empty" }, "No keys."), newKey));
    }
    root.append(el("h1", {}, "Accounts"), shown, create, el("div", { className: "card" }, C.table(accounts, [
      ["Name", (a) => a.name],
      ["Id", (a) => el("code", {}, a.id)],
      ["Balance", (a) => "$" + a.balance],
      ["Held", (a) => "$" + a.held],
      ["Available", (a) => "$" + a.available],
      ["Created", (a) => C.time(a.created_at)],
      ["", (a) => el("button", { type: "button", onclick: () => open(a.id).catch((e) => C.status(e.message, true)) }, "Credit & keys")],
    ])), detail);
  };

  C.pages.providers = async (root) => {
    const v = await C.api("GET", "/admin/v1/providers");
    root.append(el("h1", {}, "Providers"), el("div", { className: "card", id: "providers" }, generic(rowsOf(v))));
    C.every(5000, async () => {
      try {
        const again = await C.api("GET", "/admin/v1/providers");
        document.getElementById("providers").replaceChildren(generic(rowsOf(again)));
      } catch (e) { C.status(e.message, true); }
    });
  };

  C.pages.webhooks = async (root) => {
    const v = rowsOf(await C.api("GET", "/admin/v1/webhooks"));
    root.append(el("h1", {}, "Webhooks"), el("div", { className: "card", id: "webhooks" }, generic(v)));
  };
})();
