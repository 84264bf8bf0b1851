// 18. A real browser end to end (issue 14): headless Chromium (Debian's `chromium`, driven by
//     puppeteer-core) loads a page from the gateway's static route over https (a test CA's
//     certificate, trusted by its SPKI hash) and HTTP/2, with the real socket.io-client
//     browser bundle served by the same route. The page connects through the gateway to two
//     real Socket.IO nodes with `affinity: { socketio: true }`, upgrades to WebSocket, and
//     sends 50 acked messages: all acked, all from one node, the session id the browser sees
//     is that node's sid + its tag. Then `gateway upgrade` replaces the running gateway while
//     the page keeps sending: the old process hands its sockets over and exits, the page's
//     socket reconnects through the new process on its own, and every message is acked
//     (at-least-once retries), 50 more over WebSocket after the hand-over. Zero "Session ID
//     unknown" / "Bad request" on the nodes. A screenshot of the page is kept as an artefact.
//     Second test: the quick start's demo page (examples/demo-site) on conf/gateway.yaml itself
//     (addresses swapped for free ports) with the demo Socket.IO nodes (examples/demo-socketio):
//     on WebSocket with the tagged sid shown, live ticks, an acked chat message, the `/ws`
//     echo; its vendored client bundle is the one this suite pins.
"use strict";
const assert = require("node:assert/strict");
const crypto = require("node:crypto");
const fs = require("node:fs");
const path = require("node:path");
const { execFileSync, spawn } = require("node:child_process");
const L = require("./lib");

const GRACE_S = 2, SHUTDOWN_S = 2;

/** A CA and a localhost / 127.0.0.1 certificate it signs (openssl CLI); the leaf's SPKI hash. */
function makePki(dir) {
  const run = (args) => execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "pipe", "pipe"] });
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  run(["req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=gateway browser test CA"]);
  run(["req", ...ec, "-keyout", "site.key", "-out", "site.csr", "-subj", "/CN=localhost"]);
  fs.writeFileSync(path.join(dir, "ext.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n");
  run(["x509", "-req", "-in", "site.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "site.pem", "-days", "2", "-extfile", "ext.cnf"]);
  const cert = path.join(dir, "site.pem");
  // Chromium's --ignore-certificate-errors-spki-list: base64 SHA-256 of the DER SubjectPublicKeyInfo.
  const spki = new crypto.X509Certificate(fs.readFileSync(cert)).publicKey.export({ type: "spki", format: "der" });
  return { cert, key: path.join(dir, "site.key"), spki: crypto.createHash("sha256").update(spki).digest("base64") };
}

/** The static root: the test page, its script and the real socket.io-client browser bundle. */
function makeSite(dir) {
  const root = path.join(dir, "www");
  fs.mkdirSync(root);
  for (const f of ["index.html", "app.js"]) fs.copyFileSync(path.join(__dirname, "browser-e2e", f), path.join(root, f));
  // Not exported by the package: found from its package.json.
  const bundle = path.join(path.dirname(require.resolve("socket.io-client/package.json")), "dist", "socket.io.min.js");
  fs.copyFileSync(bundle, path.join(root, "socket.io.min.js"));
  return { root, bundle };
}

function config({ dir, port, adminPort, nodes, pki, root }) {
  const servers = nodes.map((n) => `{ address: "${n.address}" }`).join(", ");
  return [
    "server:",
    "  threads: 2",
    `  pid_file: ${path.join(dir, "gw.pid")}`,
    `  upgrade_sock: ${path.join(dir, "gw_upgrade.sock")}`,
    `  grace_period_seconds: ${GRACE_S}`,
    `  graceful_shutdown_timeout_seconds: ${SHUTDOWN_S}`,
    "listeners:",
    `  - address: "127.0.0.1:${port}"`,
    "    http2: true",
    `    tls: { certificates: [ { cert: "${pki.cert}", key: "${pki.key}" } ] }`,
    `admin: { address: "127.0.0.1:${adminPort}" }`,
    "forwarded: { trusted_proxies: [] }",
    "upstreams:",
    "  rt:",
    `    servers: [ ${servers} ]`,
    "    balance: round_robin",
    "    affinity: { socketio: true }",
    "    health_check: { interval: 500ms, timeout: 500ms, fails: 1, passes: 1 }",
    "    timeouts: { connect: 1s, idle: 1h }",
    "routes:",
    "  - { match: { path_prefix: /socket.io/ }, upstream: rt }",
    `  - static: { root: "${root}" }`,
    "",
  ].join("\n");
}

/**
 * `gateway upgrade -c file`: the new binary checks the config, starts with `-u -d`, the old
 * process gets SIGQUIT and hands over. Output goes to a file: the new daemon keeps the
 * launcher's stdout / stderr (no error_log), so a pipe would never reach EOF.
 */
function gatewayUpgrade(file, logFile) {
  const fd = fs.openSync(logFile, "w");
  const p = spawn(L.GATEWAY_BIN, ["upgrade", "-c", file, "--timeout", "20s"], { stdio: ["ignore", fd, fd], env: { ...process.env, RUST_LOG: "info" } });
  fs.closeSync(fd);
  return L.withTimeout(new Promise((resolve) => {
    p.on("error", (e) => resolve({ code: -1, error: e.message }));
    p.on("exit", (code) => resolve({ code }));
  }), 30000, "gateway upgrade");
}

L.scenarioTest("real browser: https + h2 page, Socket.IO over WebSocket through 2 nodes, survives gateway upgrade", 60000, async (t) => {
  L.requireChromium();

  const dir = L.tmpDir("browser");
  const pki = makePki(dir);
  const site = makeSite(dir);
  const nodes = await L.startBackends(t, ["n1", "n2"]);
  L.registerDiagnostics(null, nodes);
  const [port, adminPort] = await L.freePorts(2);
  const old = await L.startGateway(t, { dir, port, adminPort, configText: config({ dir, port, adminPort, nodes, pki, root: site.root }), label: "gw" });
  const tags = await L.nodeTags(old, nodes);
  const nodeOfTag = Object.fromEntries(Object.entries(tags).map(([n, tag]) => [tag, n]));
  // The daemon `gateway upgrade` starts is ours to stop, whatever happens.
  let daemonPid = null;
  const killDaemon = () => { if (daemonPid) try { process.kill(daemonPid, "SIGKILL"); } catch (_) { /* gone */ } };
  t.after(killDaemon);
  process.once("exit", killDaemon);

  // Trust exactly the test certificate (not every certificate error).
  const { browser, close: closeBrowser } = await L.launchBrowser(t, [`--ignore-certificate-errors-spki-list=${pki.spki}`]);

  const page = await browser.newPage();
  await page.setViewport({ width: 1000, height: 760 });
  const problems = [];
  page.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
  // The browser's own view of the WebSockets it opens (DevTools protocol).
  const cdp = await page.createCDPSession();
  await cdp.send("Network.enable");
  const wsHandshakes = [];
  const wsUrls = new Map();
  cdp.on("Network.webSocketCreated", (e) => wsUrls.set(e.requestId, e.url));
  cdp.on("Network.webSocketHandshakeResponseReceived", (e) => wsHandshakes.push({ url: wsUrls.get(e.requestId), status: e.response.status }));

  const url = `https://127.0.0.1:${port}/`;
  const resp = await page.goto(url, { waitUntil: "load", timeout: 10000 });
  assert.equal(resp.status(), 200, "the page, from the static route");
  const result = await L.withTimeout(page.waitForFunction(() => window.__result, { timeout: 20000, polling: 100 }).then((h) => h.jsonValue()), 21000, "the page's first round")
    .catch(async (e) => { throw new Error(`${e.message}; page state ${JSON.stringify(await page.evaluate(() => window.__e2e && window.__e2e.state).catch(() => null))}`); });

  // Over HTTP/2: the page itself, the bundle and the polling requests of the handshake.
  const protocols = await page.evaluate(() => ({
    nav: performance.getEntriesByType("navigation")[0].nextHopProtocol,
    resources: performance.getEntriesByType("resource").map((r) => ({ name: new URL(r.name).pathname + new URL(r.name).search, proto: r.nextHopProtocol, type: r.initiatorType })),
  }));
  assert.equal(protocols.nav, "h2", "the page is fetched over HTTP/2");
  const bundleEntry = protocols.resources.find((r) => r.name === "/socket.io.min.js");
  assert.ok(bundleEntry && bundleEntry.proto === "h2", `the bundle over h2: ${JSON.stringify(protocols.resources)}`);
  const polls = protocols.resources.filter((r) => r.name.startsWith("/socket.io/?") && r.name.includes("transport=polling"));
  assert.ok(polls.length >= 1 && polls.every((r) => r.proto === "h2"), `polling requests over h2: ${JSON.stringify(polls)}`);

  // The first round: 50 acked messages over WebSocket, one node, the tagged sid of that node.
  const first = result.first;
  assert.ok(first.ok, `the page reports its first round: ${JSON.stringify(first)}`);
  assert.equal(first.acked, 50);
  assert.deepEqual(first.transports, ["websocket/websocket"], "the browser and the node both say websocket");
  const state1 = await page.evaluate(() => window.__e2e.state);
  for (const a of state1.acks) {
    assert.equal(a.clientSid, `${a.nodeSid}.${tags[a.node]}`, `the browser's sid is the node's sid + its tag: ${JSON.stringify(a)}`);
  }
  assert.equal(state1.connects, 1);
  assert.deepEqual(state1.disconnects, []);
  assert.ok(wsHandshakes.some((h) => h.status === 101 && h.url.startsWith(`wss://127.0.0.1:${port}/socket.io/`) && h.url.includes(`sid=${state1.acks[0].clientSid}`)),
    `the browser's WebSocket upgrade (101, wss, tagged sid): ${JSON.stringify(wsHandshakes)}`);

  // The binary upgrade, with the page sending a message every 100 ms all along.
  await page.evaluate(() => window.__e2e.startLoop("during", 100));
  await L.sleep(500);
  const upgradeLog = path.join(dir, "upgrade.log");
  const startedAt = Date.now();
  const up = await gatewayUpgrade(old.file, upgradeLog);
  const upgradeOutput = () => fs.readFileSync(upgradeLog, "utf8").split("\n").filter((l) => !l.includes(" access] ")).slice(-30).join("\n");
  daemonPid = Number(fs.readFileSync(path.join(dir, "gw.pid"), "utf8").trim()) || null;
  assert.equal(up.code, 0, `gateway upgrade: ${JSON.stringify(up)}\n${upgradeOutput()}`);
  assert.ok(daemonPid && daemonPid !== old.proc.pid, `a new process in the pid file: ${daemonPid}`);
  const oldExit = await L.withTimeout(old.proc.exited, (GRACE_S + SHUTDOWN_S + 5) * 1000, "old gateway exit after the hand-over");
  const oldExitedAt = Date.now();
  t.diagnostic(`gateway upgrade took ${oldExitedAt - startedAt} ms until the old process exited (${JSON.stringify(oldExit)})`);
  await L.eventually(async () => (await old.status()).pid === daemonPid, 5000, "admin /status answered by the new process");
  // Let the loop run on the new process for a second, then stop it: every message acked.
  await L.sleep(1000);
  const loopSent = await L.withTimeout(page.evaluate(() => window.__e2e.stopLoop()), 45000, "the message loop to stop");
  const during = await page.evaluate(() => {
    const s = window.__e2e.state;
    return { acks: s.acks.filter((a) => a.tag === "during"), failures: s.failures, disconnects: s.disconnects, connects: s.connects, connectErrors: s.connectErrors };
  });
  t.diagnostic(`during the upgrade: ${loopSent} messages, ${during.acks.length} acked; disconnects ${JSON.stringify(during.disconnects.map((d) => d.reason))}, connects ${during.connects}, connect errors ${during.connectErrors.length}`);
  assert.deepEqual(during.failures, [], "no message failed, even across the hand-over");
  assert.equal(during.acks.length, loopSent, "every message of the loop was acked");
  assert.ok(during.acks.some((a) => a.at > oldExitedAt), "acks went on after the old process exited");

  // After the hand-over: 50 more over WebSocket, through the new process only.
  const after = await L.withTimeout(page.evaluate(() => window.__e2e.run("after", 50)), 20000, "the round after the upgrade");
  assert.ok(after.ok, `after the upgrade: ${JSON.stringify(after)}`);
  await page.evaluate((s) => { window.__result.after = s; }, after);

  // Every ack, in every round: the node that answered owns the session the browser is in.
  const all = await page.evaluate(() => window.__e2e.state.acks);
  const nodeOfSid = {};
  for (const a of all) {
    assert.equal(a.clientSid, `${a.nodeSid}.${tags[a.node]}`, `sid and tag agree: ${JSON.stringify(a)}`);
    assert.equal(nodeOfTag[a.clientSid.split(".")[1]], a.node);
    nodeOfSid[a.clientSid] = nodeOfSid[a.clientSid] || a.node;
    assert.equal(nodeOfSid[a.clientSid], a.node, `one node per session: ${a.clientSid}`);
  }
  const lastSid = all[all.length - 1].clientSid;
  assert.ok(wsHandshakes.some((h) => h.status === 101 && h.url.includes(`sid=${lastSid}`)), `the session after the upgrade is on WebSocket too: ${JSON.stringify(wsHandshakes)}`);
  await L.assertNoSessionErrors(assert, nodes);
  assert.deepEqual(problems, [], "no page errors");

  // The screenshot: the page's own report.
  await page.evaluate((n) => window.__e2e.report(`${n} of ${n} acked; the gateway was upgraded underneath`, true), all.length);
  const png = await L.screenshot(page, "browser-e2e.png");
  const shot = png.file;
  assert.ok(png.png && png.width === 1000 && png.height >= 500 && png.bytes > 10000, `screenshot ${shot}: ${JSON.stringify(png)}`);
  await closeBrowser();
});

// ---------------------------------------------------------------------------------------
// The quick start's demo page (conf/gateway.yaml, examples/demo-site, examples/demo-socketio).

const REPO = path.resolve(__dirname, "../..");

/** conf/gateway.yaml with its addresses and paths made local to this test (each must still be there). */
function quickstartConfig({ dir, port, adminPort, app, sio }) {
  let text = fs.readFileSync(path.join(REPO, "conf/gateway.yaml"), "utf8");
  const swaps = [
    ["0.0.0.0:8080", `127.0.0.1:${port}`],
    ["127.0.0.1:9901", `127.0.0.1:${adminPort}`],
    ["127.0.0.1:3001", app[0]],
    ["127.0.0.1:3002", app[1]],
    ["127.0.0.1:3101", sio[0]],
    ["127.0.0.1:3102", sio[1]],
    ["/tmp/gateway.pid", path.join(dir, "gw.pid")],
    ["/tmp/gateway_upgrade.sock", path.join(dir, "gw_upgrade.sock")],
    // The config is written to `dir`: its static root relative to conf/ becomes absolute.
    ["root: ../examples/demo-site", `root: ${path.join(REPO, "examples/demo-site")}`],
  ];
  for (const [from, to] of swaps) {
    assert.ok(text.includes(from), `conf/gateway.yaml no longer contains ${from}`);
    text = text.split(from).join(to);
  }
  return text;
}

/**
 * A stand-in for the Rust demo backends (examples/demo_backend.rs) as the demo page uses them:
 * `GET /health`, and a WebSocket echo on any path that answers `whoami` with its name. Uses
 * `ws`, which socket.io installs.
 */
async function startEchoBackend(t, name) {
  const http = require("node:http");
  const { WebSocketServer } = require("ws");
  const server = http.createServer((req, res) => { res.writeHead(req.url === "/health" ? 200 : 404); res.end(); });
  const wss = new WebSocketServer({ server });
  wss.on("connection", (ws) => ws.on("message", (data) => ws.send(String(data) === "whoami" ? name : String(data))));
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  t.after(() => { for (const c of wss.clients) c.terminate(); server.close(); });
  return `127.0.0.1:${server.address().port}`;
}

L.scenarioTest("quick start demo page in a real browser: Socket.IO through conf/gateway.yaml", 45000, async (t) => {
  L.requireChromium();

  // The vendored bundle is the one this suite pins (package.json): update both together.
  const vendored = fs.readFileSync(path.join(REPO, "examples/demo-site/socket.io.min.js"));
  const pinned = fs.readFileSync(path.join(path.dirname(require.resolve("socket.io-client/package.json")), "dist", "socket.io.min.js"));
  assert.ok(vendored.equals(pinned), "examples/demo-site/socket.io.min.js differs from node_modules/socket.io-client/dist/socket.io.min.js: copy it again");

  const dir = L.tmpDir("demo");
  const sio = await Promise.all(["sio-a", "sio-b"].map(async (name) => {
    const port = await L.freePort();
    await L.startProcess(t, { cmd: process.execPath, args: [path.join(REPO, "examples/demo-socketio/node.js")], env: { PORT: String(port), NODE_NAME: name }, ready: "ready on", label: name });
    return `127.0.0.1:${port}`;
  }));
  const app = [await startEchoBackend(t, "node-a"), await startEchoBackend(t, "node-b")];
  const [port, adminPort] = await L.freePorts(2);
  const gw = await L.startGateway(t, { dir, port, adminPort, configText: quickstartConfig({ dir, port, adminPort, app, sio }), label: "gw" });
  await L.eventually(async () => (await gw.status()).pools.realtime.backends.every((b) => b.healthy), 10000, "both Socket.IO nodes healthy");
  const tagOf = Object.fromEntries((await gw.status()).pools.realtime.backends.map((b) => [b.address, b.tag]));

  const { browser, close: closeBrowser } = await L.launchBrowser(t);

  const page = await browser.newPage();
  await page.setViewport({ width: 1000, height: 900 });
  const problems = [];
  page.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
  page.on("console", (m) => { if (m.type() === "error" && !/favicon/.test(m.location().url || "")) problems.push(`console: ${m.text()}`); });
  page.on("requestfailed", (r) => problems.push(`request failed: ${r.url()} ${r.failure() && r.failure().errorText}`));
  const resp = await page.goto(`http://127.0.0.1:${port}/`, { waitUntil: "load", timeout: 10000 });
  assert.equal(resp.status(), 200);

  // Connected over WebSocket through the gateway, with the node's tagged sid shown; the
  // node's ticker arrives every second.
  await page.waitForFunction(() => window.demo && window.demo.connects >= 1 && window.demo.node
    && document.querySelector('[data-field="transport"]').textContent === "websocket" && window.demo.ticks >= 2, { timeout: 15000, polling: 100 });
  const shown = await page.evaluate(() => Object.fromEntries([...document.querySelectorAll("[data-field]")].map((e) => [e.dataset.field, e.textContent])));
  const node = await page.evaluate(() => window.demo.node);
  const nodeAddr = sio[["sio-a", "sio-b"].indexOf(node)];
  assert.ok(nodeAddr, `the node is named on the page: ${JSON.stringify(shown)}`);
  assert.equal(shown.state, "connected");
  assert.match(shown.sid, new RegExp(`^[\\w-]{20}\\.${tagOf[nodeAddr]}$`), `the session id is the node's sid + its tag: ${JSON.stringify(shown)}`);
  assert.match(shown.tick, new RegExp(`from ${node}`));
  assert.match(shown.protocol, /^http\/1\.1$/);

  // A chat message, acked by the node and broadcast back to the page.
  await page.type("#chat-text", "hello from the browser");
  await page.click("#chat-form button");
  await page.waitForFunction(() => window.demo.acks.length === 1 && window.demo.chats.some((c) => c.text === "hello from the browser"), { timeout: 5000 });
  const { acks, chats } = await page.evaluate(() => ({ acks: window.demo.acks, chats: window.demo.chats }));
  assert.equal(acks[0].node, node, "acked by the session's node");
  assert.equal(chats.find((c) => c.text === "hello from the browser").node, node);

  // The plain WebSocket box: /ws to the app pool, echoed.
  await page.waitForFunction(() => window.demo.ws.opened >= 1, { timeout: 5000 });
  await page.type("#ws-text", "whoami");
  await page.click("#ws-form button");
  await page.waitForFunction(() => window.demo.ws.echoes.length >= 1, { timeout: 5000 });
  assert.match((await page.evaluate(() => window.demo.ws.echoes))[0], /^node-[ab]$/);

  assert.ok((await L.screenshot(page, "demo-page.png")).png, "a PNG screenshot");
  assert.deepEqual(problems, [], "no page errors or failed requests");
  await closeBrowser();
});
