// 17. The operators' dashboard (issue 13), in headless Chromium (Debian's `chromium`, driven
//     by puppeteer-core): a gateway with 3 real Socket.IO nodes, WebSocket and polling clients
//     connected, HTTP traffic (404s, and 5xx from a pool whose only backend is gone). The page
//     loads under its strict CSP without a violation or script error; the numbers it shows
//     (backend state, in-flight, WebSockets, sessions, requests, errors, health checks,
//     connections) match /status fetched at the same moment; its charts draw the request and
//     error rates that /history reports. Drain without a token fails visibly (401) and changes
//     nothing; with the token typed in, drain makes the backend "draining" on the page and in
//     /status, undrain makes it "up" again. A screenshot is kept as a test artefact.
"use strict";
const assert = require("node:assert/strict");
const path = require("node:path");
const L = require("./lib");

const TOKEN = "dashboard-test-admin-token-0123456789";

function config({ dir, port, adminPort, nodes, gonePort }) {
  const servers = nodes.map((n) => `{ address: "${n.address}" }`).join(", ");
  return [
    "server:",
    "  threads: 2",
    `  pid_file: ${path.join(dir, "gw.pid")}`,
    `  upgrade_sock: ${path.join(dir, "gw_upgrade.sock")}`,
    "  grace_period_seconds: 1",
    "  graceful_shutdown_timeout_seconds: 1",
    `listeners: [ { address: "127.0.0.1:${port}" } ]`,
    `admin: { address: "127.0.0.1:${adminPort}", token: "${TOKEN}" }`,
    "forwarded: { trusted_proxies: [] }",
    "upstreams:",
    "  rt:",
    `    servers: [ ${servers} ]`,
    "    balance: round_robin",
    "    affinity: { socketio: true }",
    "    health_check: { interval: 1s, timeout: 500ms, fails: 1, passes: 1 }",
    "    timeouts: { connect: 1s, idle: 1h }",
    "  gone:",
    `    servers: [ { address: "127.0.0.1:${gonePort}" } ]`,
    "    health_check: { interval: 1s, timeout: 500ms, fails: 1, passes: 1 }",
    "    timeouts: { connect: 500ms }",
    "routes:",
    "  - { match: { path_prefix: /socket.io/ }, upstream: rt }",
    "  - { match: { path_prefix: /gone/ }, upstream: gone }",
    "",
  ].join("\n");
}

const fmt = (v) => (v === undefined || v === null ? "-" : String(v));
const STATUS_FIELDS = ["in_flight", "websockets", "sessions", "requests", "errors"];

/** What the page should show for a /status document (absent fields render "-"). */
function expected(st) {
  const rows = {};
  for (const [pool, p] of Object.entries(st.pools)) {
    for (const b of p.backends) {
      const r = { state: fmt(b.state) };
      for (const f of STATUS_FIELDS) r[f] = fmt(b[f]);
      // Health checks: the page shows the newest (at most 12) and whether the newest passed.
      if (Array.isArray(b.checks)) {
        r.checks = String(Math.min(12, b.checks.length));
        r.lastOk = b.checks.length ? String(!!b.checks[b.checks.length - 1].ok) : "";
      } else {
        r.checks = "";
        r.lastOk = undefined;
      }
      rows[`${pool}/${b.address}`] = r;
    }
  }
  return {
    open: fmt(st.connections && st.connections.open),
    refused: fmt(st.connections && st.connections.refused),
    in_flight: fmt(st.in_flight),
    websockets: String(Object.values(st.pools).reduce((a, p) => a + p.upgraded, 0)),
    rows,
  };
}

/** What the page shows now, in the shape of `expected`. */
function pageView(page) {
  return page.evaluate(() => {
    const txt = (sel) => { const e = document.querySelector(sel); return e ? e.textContent.trim() : null; };
    const rows = {};
    for (const tr of document.querySelectorAll("tr[data-backend]")) {
      const cell = (f) => tr.querySelector(`td[data-field="${f}"]`);
      const r = { state: cell("state").textContent.trim() };
      for (const f of ["in_flight", "websockets", "sessions", "requests", "errors"]) r[f] = cell(f).textContent.trim();
      r.checks = cell("checks").dataset.count || "";
      r.lastOk = cell("checks").dataset.lastOk;
      rows[`${tr.dataset.pool}/${tr.dataset.backend}`] = r;
    }
    return {
      renders: Number(document.body.dataset.renders || 0),
      view: {
        open: txt('[data-field="connections.open"]'),
        refused: txt('[data-field="connections.refused"]'),
        in_flight: txt('[data-field="in_flight"]'),
        websockets: txt('[data-field="websockets"]'),
        rows,
      },
    };
  });
}

/**
 * Asserts the page matches /status fetched around the same refresh: the page refreshes every
 * second, so take /status, let the page render twice (a refresh that began after it), read
 * the page, take /status again; if the two /status agree the page must equal them. Retries a
 * few times when traffic moved a number in between.
 */
async function assertPageMatchesStatus(page, gw, label) {
  let last;
  for (let attempt = 0; attempt < 8; attempt++) {
    const r0 = (await pageView(page)).renders;
    const before = expected(await gw.status());
    await L.eventually(async () => (await pageView(page)).renders >= r0 + 2, 5000, "page refreshed twice");
    const { view } = await pageView(page);
    const after = expected(await gw.status());
    last = { view, before, after };
    if (JSON.stringify(before) !== JSON.stringify(after)) continue; // moved under us: retry
    if (JSON.stringify(view) === JSON.stringify(after)) return { view, attempts: attempt + 1 };
  }
  assert.deepEqual(last.view, last.after, `${label}: page vs /status (before: ${JSON.stringify(last.before)})`);
  return { view: last.view };
}

L.scenarioTest("dashboard in headless Chromium: numbers match /status, drain / undrain with the token, screenshot", 40000, async (t, clients) => {
  L.requireChromium();

  const dir = L.tmpDir("dash");
  const nodes = await L.startBackends(t, ["n1", "n2", "n3"]);
  L.registerDiagnostics(null, nodes);
  const [port, adminPort] = await L.freePorts(2);
  const gonePort = await L.deadPort(t);
  const gw = await L.startGateway(t, { dir, port, adminPort, configText: config({ dir, port, adminPort, nodes, gonePort }), label: "gw" });
  const url = `http://127.0.0.1:${port}`;
  const admin = `http://127.0.0.1:${adminPort}`;

  // Real traffic: WebSocket clients, polling-only clients, acked emits, 404s and 5xx.
  const sockets = await L.connectClients(clients, 10, (i) => L.makeClient(url, i < 6 ? {} : { transports: ["polling"] }), { concurrency: 10 });
  await Promise.all(sockets.slice(0, 6).map((s) => L.waitWebsocket(s, 10000)));
  const echoes = await L.runEchoes(sockets, 3);
  assert.equal(echoes.failures.length, 0, JSON.stringify(echoes.failures.slice(0, 3)));
  const codes = {};
  await L.mapLimit(Array.from({ length: 40 }, (_, i) => i), 10, async (i) => {
    const r = await L.httpRequest({ port, path: i % 2 ? "/nope" : "/gone/x" });
    codes[r.status] = (codes[r.status] || 0) + 1;
  });
  assert.equal(codes[404], 20, `404s for unrouted paths: ${JSON.stringify(codes)}`);
  assert.equal(Object.entries(codes).filter(([c]) => c >= 500).reduce((a, [, n]) => a + n, 0), 20, `5xx for the gone pool: ${JSON.stringify(codes)}`);

  // The history sampler turns the totals into per-second rates within a couple of seconds.
  const hist = await L.eventually(async () => {
    const h = await L.getJson(adminPort, "/history");
    // Rates times ~1 s: the sum is the count, give or take the timer's jitter.
    const sum = (a) => a.reduce((x, v) => x + v, 0);
    return sum(h.requests) >= 40 * 0.95 && sum(h.server_errors) >= 20 * 0.95 && h.connections.some((c) => c >= 10) && h.websockets.some((w) => w >= 6) ? h : false;
  }, 5000, "/history shows the traffic");
  assert.equal(hist.capacity, 300);
  assert.ok(hist.at.length <= 299 && hist.at.every((v, i) => i === 0 || v > hist.at[i - 1]), "rates oldest first");

  // The page and its assets: strict CSP, served from the binary.
  const home = await L.httpRequest({ port: adminPort, path: "/" });
  assert.equal(home.status, 200);
  assert.match(home.headers["content-type"], /^text\/html/);
  assert.match(home.headers["content-security-policy"], /^default-src 'self'/);
  assert.ok(!/<script>/.test(home.body) && !/\son\w+=/.test(home.body), "no inline script or handlers");
  for (const [p, type] of [["/dashboard.js", /javascript/], ["/dashboard.css", /text\/css/], ["/dashboard", /text\/html/]]) {
    const r = await L.httpRequest({ port: adminPort, path: p });
    assert.equal(r.status, 200, p);
    assert.match(r.headers["content-type"], type, p);
  }

  const { browser, close: closeBrowser } = await L.launchBrowser(t);

  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 800 });
  const problems = [];
  page.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
  page.on("console", (m) => {
    const text = m.text();
    // The 401 of the token-less drain below is expected (and shown on the page).
    if (m.type() === "error" && !/status of 401/.test(text) && !/favicon/.test(m.location().url || "")) problems.push(`console ${m.type()}: ${text}`);
  });
  page.on("requestfailed", (r) => problems.push(`request failed: ${r.url()} ${r.failure() && r.failure().errorText}`));
  await page.goto(`${admin}/`, { waitUntil: "domcontentloaded", timeout: 10000 });
  await page.waitForFunction(() => Number(document.body.dataset.renders || 0) >= 1 && document.querySelectorAll("tr[data-backend]").length === 4, { timeout: 5000 });

  // Every backend is listed under its pool with its tag; the gone pool's backend is down.
  const st = await gw.status();
  const { view } = await assertPageMatchesStatus(page, gw, "after traffic");
  for (const n of nodes) assert.equal(view.rows[`rt/${n.address}`].state, "up", `${n.name} up on the page`);
  assert.equal(view.rows[`gone/127.0.0.1:${gonePort}`].state, "down", "the gone pool's backend shows down");
  assert.equal(view.open, String(st.connections.open));
  assert.ok(Number(view.open) >= 10, `the 10 clients' connections are open: ${view.open}`);
  assert.equal(view.websockets, "6", "6 WebSockets open");
  const tagsShown = await page.$$eval("tr[data-backend] .tag", (es) => es.map((e) => e.textContent));
  for (const b of st.pools.rt.backends) assert.ok(tagsShown.includes(`#${b.tag}`), `tag ${b.tag} shown`);
  // Charts: the request and error polylines are drawn from /history.
  const charts = await page.evaluate(() => ({
    req: Number((document.querySelector("#chart-requests polyline") || { dataset: {} }).dataset.points || 0),
    err: Number((document.querySelector("#chart-errors polyline.s-5xx") || { dataset: {} }).dataset.points || 0),
    peakReq: document.querySelector('[data-field="peak.requests"]').textContent,
  }));
  assert.ok(charts.req >= 2 && charts.err >= 2, `charts drawn: ${JSON.stringify(charts)}`);
  assert.ok(!/^0\.0 /.test(charts.peakReq), `request peak shown: ${charts.peakReq}`);

  const target = nodes[1];
  const rowSel = `tr[data-pool="rt"][data-backend="${target.address}"]`;
  const stateOf = async () => (await gw.status()).pools.rt.backends.find((b) => b.address === target.address).state;
  const pageState = () => page.$eval(`${rowSel} td[data-field="state"]`, (e) => e.textContent.trim());
  const messageOf = () => page.$eval("#message", (e) => ({ hidden: e.hidden, status: e.dataset.status, text: e.textContent, cls: e.className }));

  // Without a token: the drain is refused (401) and the page says so; nothing changes.
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  await page.click(`${rowSel} button[data-action="drain"]`);
  await page.waitForFunction(() => document.querySelector("#message").dataset.status === "401", { timeout: 5000 });
  const refused = await messageOf();
  assert.ok(!refused.hidden && /error/.test(refused.cls) && /401/.test(refused.text), `visible 401: ${JSON.stringify(refused)}`);
  assert.equal(await stateOf(), "up", "a refused drain leaves the backend up");

  // The token, pasted once: kept in sessionStorage, sent as Bearer.
  await page.type("#token", TOKEN);
  await page.click("#token-save");
  assert.equal(await page.evaluate(() => sessionStorage.getItem("gateway.admin.token")), TOKEN);
  assert.equal(await page.$eval("#token", (e) => e.value), "", "the field is cleared once the token is kept");
  assert.match(await page.$eval("#token-state", (e) => e.textContent), /token set/);

  await page.click(`${rowSel} button[data-action="drain"]`);
  await page.waitForFunction((sel) => document.querySelector(`${sel} td[data-field="state"]`).textContent.trim() === "draining", { timeout: 5000 }, rowSel);
  assert.equal(await stateOf(), "draining", "/status shows the drain");
  assert.equal((await messageOf()).status, "200");
  assert.ok(await page.$eval(`${rowSel} .state`, (e) => e.classList.contains("draining")), "the state badge is coloured as draining");
  const others = nodes.filter((n) => n !== target);
  for (const n of others) assert.equal((await gw.status()).pools.rt.backends.find((b) => b.address === n.address).state, "up");
  await assertPageMatchesStatus(page, gw, "while draining");

  // The screenshot (draining, down and up backends): a real PNG the size of the page.
  const png = await L.screenshot(page, "dashboard.png");
  const shot = png.file;
  assert.ok(png.png && png.width === 1280 && png.height >= 400 && png.bytes > 20000, `screenshot ${shot}: ${JSON.stringify(png)}`);

  await page.click(`${rowSel} button[data-action="undrain"]`);
  await page.waitForFunction((sel) => document.querySelector(`${sel} td[data-field="state"]`).textContent.trim() === "up", { timeout: 5000 }, rowSel);
  assert.equal(await stateOf(), "up", "/status shows the undrain");
  assert.equal(await pageState(), "up");

  // The Socket.IO clients were never disturbed, and the page never hit a CSP violation or error.
  assert.deepEqual(clients.troubles(), { clients: 0, disconnects: 0, connectErrors: 0, sample: [] });
  assert.deepEqual(problems, [], "no console errors, page errors or failed requests");
  await L.assertNoSessionErrors(assert, nodes);
  await closeBrowser();
});
