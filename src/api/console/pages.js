// spotd web console: offers, renting, rentals, credits.
"use strict";
(() => {
  const { el } = C;
  const TERMINAL = ["terminated", "failed", "interrupted"];

  function field(label, input) { return el("label", {}, label, input); }

  // Offers grouped by GPU model, with filters, sort and each group's price range.
  C.pages.offers = async (root) => {
    const q = new URLSearchParams(sessionStorage.getItem("spotd.offers") || "");
    const gpu = el("input", { id: "f-gpu", type: "search", placeholder: "h100, rtx 4090", value: q.get("gpu") || "" });
    const max = el("input", { id: "f-max", type: "number", min: "0", step: "0.01", placeholder: "USD/h", value: q.get("max_price") || "" });
    const intr = el("select", { id: "f-intr" }, el("option", { value: "" }, "any"),
      el("option", { value: "true" }, "spot (interruptible)"), el("option", { value: "false" }, "on-demand"));
    intr.value = q.get("interruptible") || "";
    const sort = el("select", { id: "f-sort" }, ["price", "-price", "price_per_gpu", "reliability", "-vram_gb"]
      .map((s) => el("option", { value: s }, s)));
    sort.value = q.get("sort") || "price";
    const out = el("div", { id: "offer-groups" });
    const form = el("form", { id: "offer-filters", className: "filters card" },
      field("GPU", gpu), field("Max price", max), field("Type", intr), field("Sort", sort),
      el("button", { type: "submit" }, "Filter"));
    root.append(el("h1", {}, "GPU offers"), form, out);

    async function load() {
      const p = new URLSearchParams();
      if (gpu.value.trim()) p.set("gpu", gpu.value.trim());
      if (max.value) p.set("max_price", max.value);
      if (intr.value) p.set("interruptible", intr.value);
      p.set("sort", sort.value);
      sessionStorage.setItem("spotd.offers", p.toString());
      p.set("limit", "1000");
      const offers = await C.api("GET", "/v1/gpus/offers?" + p.toString());
      const groups = new Map();
      for (const o of offers.data) {
        if (!groups.has(o.gpu)) groups.set(o.gpu, []);
        groups.get(o.gpu).push(o);
      }
      out.replaceChildren();
      if (!groups.size) out.append(el("p", { className: "empty" }, "No offer matches."));
      for (const [name, list] of groups) {
        const prices = list.map((o) => Number(o.price_per_hour));
        const lo = Math.min(...prices), hi = Math.max(...prices);
        out.append(el("div", { className: "card group" },
          el("h2", { className: "gpu-name" }, name),
          el("p", { className: "range" }, list.length + " offer" + (list.length === 1 ? "" : "s") + " · " +
            C.usd(lo) + (hi > lo ? " – " + C.usd(hi) : "") + " per hour"),
          C.table(list, [
            ["Provider", (o) => o.provider],
            ["GPUs", (o) => o.gpu_count + " × " + o.vram_gb + " GB"],
            ["Region", (o) => o.region],
            ["Price/h", (o) => C.usd(o.price_per_hour)],
            ["Per GPU/h", (o) => C.usd(o.price_per_gpu_hour)],
            ["Type", (o) => (o.interruptible ? "spot" : "on-demand")],
            ["Reliability", (o) => (Number(o.reliability) * 100).toFixed(1) + "%"],
            ["Left", (o) => String(o.available)],
            ["", (o) => el("a", { className: "button rent", href: "#rent/" + encodeURIComponent(o.id) }, "Rent")],
          ], { rowProps: (o) => ({ className: "offer", dataset: { id: o.id } }) })));
      }
      C.status(offers.data.length + " offers");
    }
    form.addEventListener("submit", (ev) => { ev.preventDefault(); load().catch((e) => C.status(e.message, true)); });
    await load();
  };

  // Renting one offer: its details and the hold it places, then confirm.
  C.pages.rent = async (root, [id]) => {
    const o = await C.api("GET", "/v1/gpus/offers/" + encodeURIComponent(id || ""));
    const hold = C.holdFor(o.price_per_hour);
    const result = el("div", { id: "rent-result" });
    const confirm = el("button", { id: "rent-confirm", type: "button" }, "Confirm rental");
    const name = el("input", { id: "rent-name", placeholder: "optional" });
    root.append(el("h1", {}, "Rent"), el("div", { className: "card narrow" },
      el("h2", { className: "gpu-name" }, o.gpu_count + " × " + o.gpu),
      el("dl", {},
        el("dt", {}, "Offer"), el("dd", {}, o.id),
        el("dt", {}, "Provider / region"), el("dd", {}, o.provider + " / " + o.region),
        el("dt", {}, "Price"), el("dd", { id: "rent-price", dataset: { price: String(o.price_per_hour) } }, C.usd(o.price_per_hour) + " per hour (locked when you rent)"),
        el("dt", {}, "Hold"), el("dd", { id: "rent-hold", dataset: { hold } }, "$" + hold),
      ),
      el("p", { className: "note" }, "The hold covers the first " + C.config.min_session_seconds +
        " s of use; you are charged per second and what is unused is released at the end."),
      field("Name", name), confirm, result));
    confirm.addEventListener("click", async () => {
      confirm.disabled = true;
      try {
        const body = { offer_id: o.id };
        if (name.value.trim()) body.name = name.value.trim();
        const r = await C.api("POST", "/v1/gpus/rentals", body);
        result.replaceChildren(el("p", { className: "ok" }, "Rented ", el("code", { id: "rented-id" }, r.id),
          " (" + r.state + "), holding $", el("span", { id: "rented-hold" }, String(r.hold)), ". "),
          el("a", { href: "#rentals", id: "to-rentals" }, "See your rentals"));
      } catch (e) {
        confirm.disabled = false;
        result.replaceChildren(el("p", { className: "error" }, e.message));
      }
    });
  };

  // Rentals with live state, price, cost to date and stop; polled every 2 s.
  C.pages.rentals = async (root) => {
    const box = el("div", { id: "rentals" });
    root.append(el("h1", {}, "Rentals"), box);
    async function load() {
      const list = await C.all("/v1/gpus/rentals?limit=100", 200);
      box.replaceChildren(list.length ? C.table(list, [
        ["Rental", (r) => el("code", {}, r.id)],
        ["GPU", (r) => (r.offer ? r.offer.gpu_count + " × " + r.offer.gpu : "–")],
        ["Provider", (r) => r.provider],
        ["State", (r) => el("span", { className: "state state-" + r.state }, r.state +
          (r.termination_reason ? " (" + r.termination_reason + ")" : ""))],
        ["Price/h", (r) => C.usd(r.price_per_hour)],
        ["Cost", (r) => el("span", { className: "cost" }, "$" + r.cost)],
        ["Hold", (r) => "$" + r.hold],
        ["Started", (r) => C.time(r.started_at)],
        ["Access", (r) => (r.ssh ? "ssh " + r.ssh.user + "@" + r.ssh.host + " -p " + r.ssh.port : r.endpoint || "–")],
        ["", (r) => (TERMINAL.includes(r.state) || r.state === "terminating" ? "" :
          el("button", { className: "stop danger", type: "button", onclick: () => stop(r.id) }, "Stop"))],
      ], { rowProps: (r) => ({ className: "rental", dataset: { id: r.id, state: r.state } }) })
        : el("p", { className: "empty" }, "No rentals yet. Rent one from the offers page."));
    }
    async function stop(id) {
      if (!window.confirm("Stop rental " + id + "?")) return;
      try { await C.api("DELETE", "/v1/gpus/rentals/" + encodeURIComponent(id)); await load(); }
      catch (e) { C.status(e.message, true); }
    }
    await load();
    C.every(2000, () => load().catch((e) => C.status(e.message, true)));
  };

  // Daily spend (charges) over the last `days` days, as an inline SVG bar chart.
  function spendChart(entries, days) {
    const byDay = new Map();
    const today = new Date();
    for (let i = days - 1; i >= 0; i--) {
      const d = new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), today.getUTCDate() - i));
      byDay.set(d.toISOString().slice(0, 10), 0n);
    }
    for (const e of entries) {
      const day = String(e.at).slice(0, 10);
      if (e.kind === "charge" && byDay.has(day)) {
        const m = C.micros(e.amount);
        byDay.set(day, byDay.get(day) + (m < 0n ? -m : m));
      }
    }
    const vals = [...byDay.values()];
    const top = vals.reduce((a, b) => (b > a ? b : a), 1n);
    const W = 640, H = 160, bw = W / days;
    const bars = [...byDay.entries()].map(([day, m], i) => {
      const h = Number((m * 1000n) / top) / 1000 * (H - 30);
      return C.svg("g", {}, C.svg("rect", { x: i * bw + 2, y: H - 18 - h, width: bw - 4, height: Math.max(h, 0.5), class: "bar" },
        C.svg("title", {}, day + ": $" + C.fromMicros(m))),
      C.svg("text", { x: i * bw + bw / 2, y: H - 4, "text-anchor": "middle", class: "axis" }, day.slice(8)));
    });
    return C.svg("svg", { id: "spend-chart", viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "Daily spend" },
      C.svg("text", { x: 4, y: 12, class: "axis" }, "max $" + C.fromMicros(top === 1n ? 0n : top) + "/day"), bars);
  }

  C.pages.credits = async (root) => {
    const c = await C.api("GET", "/v1/credits");
    const ledger = await C.all("/v1/credits/ledger?limit=500", 1000);
    const stat = (label, v, id) => el("div", { className: "stat card" }, el("span", {}, label), el("strong", { id }, "$" + v));
    root.append(el("h1", {}, "Credits"),
      el("div", { className: "stats" }, stat("Balance", c.balance, "c-balance"), stat("Held", c.held, "c-held"),
        stat("Available", c.available, "c-available")),
      el("div", { className: "card" }, el("h2", {}, "Daily spend, last 14 days"), spendChart(ledger, 14)),
      el("div", { className: "card" }, el("h2", {}, "Ledger"), C.table(ledger, [
        ["When", (e) => C.time(e.at)],
        ["Kind", (e) => el("span", { className: "kind kind-" + e.kind }, e.kind)],
        ["Amount", (e) => C.money(e.amount)],
        ["Rental / request", (e) => e.rental_id || e.request_id || "–"],
        ["Note", (e) => e.note || ""],
        ["Balance after", (e) => C.money(e.balance_after)],
      ], { rowProps: (e) => ({ className: "entry", dataset: { kind: e.kind, rental: e.rental_id || "" } }) })));
  };
})();
