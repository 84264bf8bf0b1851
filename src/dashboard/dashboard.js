// The gateway dashboard: reads /status and /history every second and renders them (tables
// updated in place, SVG charts); drain / undrain go to the admin API with the token the
// operator pasted (kept in this tab's sessionStorage only). No libraries, no inline code:
// the page runs under `Content-Security-Policy: default-src 'self'`.
"use strict";

(function () {
  const REFRESH_MS = 1000;
  const TOKEN_KEY = "gateway.admin.token";
  const SVG = "http://www.w3.org/2000/svg";
  const CHECKS_SHOWN = 12;
  const COLUMNS = [
    ["backend", "backend", ""],
    ["state", "state", ""],
    ["in_flight", "in flight", "num"],
    ["websockets", "WebSockets", "num"],
    ["sessions", "sessions", "num"],
    ["requests", "requests", "num"],
    ["errors", "errors", "num"],
    ["checks", "health checks", ""],
    ["actions", "", "actions"],
  ];

  const $ = (sel, root = document) => root.querySelector(sel);
  const field = (name) => document.querySelector(`[data-field="${name}"]`);
  const fmt = (v) => (v === undefined || v === null ? "-" : String(v));
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  function setText(e, text) {
    if (e && e.textContent !== text) e.textContent = text;
  }

  // ---------------------------------------------------------------------------------------
  // Token: pasted once, kept in sessionStorage (gone when the tab closes).

  const token = () => sessionStorage.getItem(TOKEN_KEY) || "";
  function showTokenState() {
    setText($("#token-state"), token() ? "token set (this tab)" : "no token");
  }
  function initToken() {
    $("#token-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const v = $("#token").value.trim();
      if (v) sessionStorage.setItem(TOKEN_KEY, v);
      $("#token").value = "";
      showTokenState();
    });
    $("#token-clear").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      $("#token").value = "";
      showTokenState();
    });
    showTokenState();
  }

  // ---------------------------------------------------------------------------------------
  // Messages (results of drain / undrain).

  function message(kind, text, status) {
    const m = $("#message");
    m.hidden = false;
    m.className = `message ${kind}`;
    m.dataset.status = status === undefined ? "" : String(status);
    m.textContent = text;
  }

  // A path segment; an address keeps its ':' and brackets (the admin API matches it verbatim).
  const segment = (s) =>
    encodeURIComponent(s).replace(/%3A/gi, ":").replace(/%5B/gi, "[").replace(/%5D/gi, "]");

  async function act(pool, address, action, button) {
    const headers = {};
    const t = token();
    if (t) headers.Authorization = `Bearer ${t}`;
    button.disabled = true;
    try {
      const r = await fetch(`/pools/${segment(pool)}/backends/${segment(address)}/${action}`, {
        method: "POST", headers, cache: "no-store",
      });
      const body = (await r.text()).trim();
      if (r.ok) {
        let state = "";
        try { state = JSON.parse(body).state || ""; } catch (_) { /* plain text */ }
        message("ok", `${action} ${pool} ${address}: done${state ? `, now ${state}` : ""}`, r.status);
      } else {
        const hint = r.status === 401 ? " (paste the admin token above)" : "";
        message("error", `${action} ${pool} ${address} failed: ${r.status} ${body}${hint}`, r.status);
      }
    } catch (e) {
      message("error", `${action} ${pool} ${address} failed: ${e.message}`, 0);
    } finally {
      button.disabled = false;
      refresh();
    }
  }

  // ---------------------------------------------------------------------------------------
  // Pools and backends: one section per pool, one row per backend, updated in place (so a
  // button under the pointer is never replaced mid-click).

  const pools = new Map(); // name -> { section, head, tbody, rows: Map(address -> row) }

  function poolSection(name) {
    let p = pools.get(name);
    if (p) return p;
    const section = el("div", "pool");
    section.dataset.pool = name;
    const head = el("div", "pool-head");
    head.append(el("h2", "", name));
    const info = el("span", "muted");
    head.append(info);
    const table = el("table");
    const tr = el("tr");
    for (const [key, label, cls] of COLUMNS) {
      const th = el("th", cls, label);
      th.dataset.col = key;
      tr.append(th);
    }
    table.append(el("thead"));
    table.tHead.append(tr);
    const tbody = el("tbody");
    table.append(tbody);
    section.append(head, table);
    $("#pools").append(section);
    p = { section, info, tbody, rows: new Map() };
    pools.set(name, p);
    return p;
  }

  function backendRow(p, pool, address) {
    let row = p.rows.get(address);
    if (row) return row;
    const tr = el("tr");
    tr.dataset.pool = pool;
    tr.dataset.backend = address;
    const cells = {};
    for (const [key, , cls] of COLUMNS) {
      const td = el("td", cls);
      td.dataset.field = key;
      cells[key] = td;
      tr.append(td);
    }
    cells.backend.append(el("span", "addr", address), el("span", "tag"));
    const badge = el("span", "state", "-");
    cells.state.append(badge);
    const dots = el("span", "checks");
    const last = el("span", "muted check-note");
    cells.checks.append(dots, last);
    for (const action of ["drain", "undrain"]) {
      const b = el("button", "", action);
      b.type = "button";
      b.dataset.action = action;
      b.addEventListener("click", () => act(pool, address, action, b));
      cells.actions.append(b);
    }
    p.tbody.append(tr);
    row = { tr, cells, badge, dots, last, tag: $(".tag", cells.backend) };
    p.rows.set(address, row);
    return row;
  }

  function renderChecks(row, checks) {
    if (!Array.isArray(checks)) {
      row.dots.replaceChildren();
      row.cells.checks.dataset.count = "";
      setText(row.last, "-");
      return;
    }
    const shown = checks.slice(-CHECKS_SHOWN);
    const dots = shown.map((c) => {
      const d = el("span", c.ok ? "check" : "check fail");
      const at = typeof c.at === "number" ? new Date(c.at * 1000).toLocaleTimeString() : "?";
      const ms = typeof c.ms === "number" ? `${c.ms.toFixed(1)} ms` : "";
      d.title = `${at} ${c.ok ? "ok" : "failed"} ${ms}${c.error ? ` ${c.error}` : ""}`;
      return d;
    });
    row.dots.replaceChildren(...dots);
    row.cells.checks.dataset.count = String(shown.length);
    const newest = checks[checks.length - 1];
    row.cells.checks.dataset.lastOk = newest ? String(!!newest.ok) : "";
    let note = "none yet";
    if (newest && newest.ok) note = typeof newest.ms === "number" ? `${newest.ms.toFixed(1)} ms` : "ok";
    else if (newest) note = newest.error || "failed";
    setText(row.last, note);
    row.last.title = note;
  }

  function renderPools(st) {
    const seen = new Set();
    for (const [name, pool] of Object.entries(st.pools || {})) {
      seen.add(name);
      const p = poolSection(name);
      const backends = pool.backends || [];
      setText(p.info, `${fmt(pool.balance)} · ${fmt(pool.healthy)}/${backends.length} healthy · ` +
        `${fmt(pool.upgraded)} WebSockets · health check ${pool.health_check ? "on" : "off"}`);
      const present = new Set();
      for (const b of backends) {
        present.add(b.address);
        const row = backendRow(p, name, b.address);
        const state = b.state || (b.healthy === false ? "down" : b.healthy ? "up" : undefined);
        setText(row.tag, b.tag ? `#${b.tag}` : "");
        setText(row.badge, fmt(state));
        row.badge.className = `state ${state || ""}`;
        row.tr.dataset.state = state || "";
        for (const key of ["in_flight", "websockets", "sessions", "requests", "errors"]) {
          setText(row.cells[key], fmt(b[key]));
        }
        renderChecks(row, b.checks);
      }
      for (const [address, row] of p.rows) {
        if (!present.has(address)) { row.tr.remove(); p.rows.delete(address); }
      }
    }
    for (const [name, p] of pools) {
      if (!seen.has(name)) { p.section.remove(); pools.delete(name); }
    }
  }

  function renderStatus(st) {
    const c = st.connections || {};
    setText(field("connections.open"), fmt(c.open));
    const max = typeof c.max === "number" && c.max >= Number.MAX_SAFE_INTEGER ? "unlimited" : fmt(c.max);
    setText(field("connections.max"), max);
    setText(field("connections.refused"), fmt(c.refused));
    setText(field("in_flight"), fmt(st.in_flight));
    const ws = Object.values(st.pools || {}).map((p) => p.upgraded).filter((n) => typeof n === "number");
    setText(field("websockets"), ws.length ? String(ws.reduce((a, n) => a + n, 0)) : "-");
    setText($("#meta"), `v${fmt(st.version)} · pid ${fmt(st.pid)} · ${fmt(st.routes)} routes · ` +
      `updated ${new Date().toLocaleTimeString()}`);
    renderPools(st);
  }

  // ---------------------------------------------------------------------------------------
  // Charts: the last five minutes of /history as SVG polylines, newest at the right edge.

  const W = 300, H = 60, PAD = 2;

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  function svgEl(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    return e;
  }

  function drawChart(svg, series, capacity) {
    const slots = Math.max(2, capacity - 1);
    const peak = niceMax(Math.max(0, ...series.flatMap((s) => s.values)));
    const x = (i, n) => W - (n - 1 - i) * (W / (slots - 1));
    const y = (v) => H - PAD - (v / peak) * (H - 2 * PAD);
    const parts = [
      svgEl("line", { class: "grid", x1: 0, x2: W, y1: H / 2, y2: H / 2, "vector-effect": "non-scaling-stroke" }),
      svgEl("line", { class: "grid", x1: 0, x2: W, y1: H - 0.5, y2: H - 0.5, "vector-effect": "non-scaling-stroke" }),
    ];
    for (const s of series) {
      const n = s.values.length;
      if (n < 1) continue;
      const pts = s.values.map((v, i) => `${x(i, n).toFixed(1)},${y(v).toFixed(1)}`);
      if (s.area && n > 1) {
        parts.push(svgEl("polygon", { class: `a-${s.name}`, points: `${x(0, n).toFixed(1)},${H} ${pts.join(" ")} ${W},${H}` }));
      }
      parts.push(svgEl("polyline", { class: `s-${s.name}`, points: pts.join(" "), "vector-effect": "non-scaling-stroke", "data-points": n }));
    }
    svg.replaceChildren(...parts);
    return peak;
  }

  const recent = (values, n = 5) => {
    const tail = values.slice(-n);
    return tail.length ? tail.reduce((a, v) => a + v, 0) / tail.length : undefined;
  };
  const rate = (v) => (v === undefined ? "-" : v >= 100 ? v.toFixed(0) : v.toFixed(1));

  function renderHistory(h) {
    const cap = h.capacity || 300;
    const req = h.requests || [];
    const e5 = h.server_errors || [];
    const eu = h.upstream_errors || [];
    const peakReq = drawChart($("#chart-requests"), [{ name: "requests", values: req, area: true }], cap);
    const peakErr = drawChart($("#chart-errors"), [{ name: "upstream", values: eu }, { name: "5xx", values: e5 }], cap);
    setText(field("rate.requests"), h.counting === false ? "not counted" : rate(recent(req)));
    setText(field("rate.errors"), rate(recent(e5)));
    setText(field("peak.requests"), `${rate(Math.max(0, ...req))} (scale ${peakReq})`);
    setText(field("peak.errors"), `${rate(Math.max(0, ...e5, ...eu))} (scale ${peakErr})`);
  }

  // ---------------------------------------------------------------------------------------
  // The refresh loop.

  async function getJSON(path) {
    const r = await fetch(path, { cache: "no-store" });
    if (!r.ok) throw new Error(`${path}: ${r.status}`);
    return r.json();
  }

  let timer = null;
  let renders = 0;
  async function refresh() {
    clearTimeout(timer);
    try {
      const [st, h] = await Promise.all([getJSON("/status"), getJSON("/history")]);
      renderStatus(st);
      renderHistory(h);
      $("#live").className = "live";
      document.body.dataset.renders = String(++renders);
    } catch (e) {
      $("#live").className = "live stale";
      setText($("#meta"), `cannot reach the admin listener: ${e.message}`);
    }
    timer = setTimeout(refresh, REFRESH_MS);
  }

  document.addEventListener("DOMContentLoaded", () => {
    initToken();
    refresh();
  });
})();
