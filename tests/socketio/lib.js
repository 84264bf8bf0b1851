// Helpers for the gateway's real-client Socket.IO suite: ports, backend and gateway child
// processes (always cleaned up), configs, clients with bounded concurrency, acked emits with
// timeouts, backend stats, a TCP splitter/proxy, and diagnostics printed on failure.
"use strict";

const { spawn } = require("node:child_process");
const fs = require("node:fs");
const http = require("node:http");
const net = require("node:net");
const os = require("node:os");
const path = require("node:path");
const { test, after } = require("node:test");

const HERE = __dirname;
const GATEWAY_BIN = path.resolve(HERE, process.env.GATEWAY_BIN || "../../target/debug/gateway");
const RUST_LOG = process.env.RUST_LOG || "info";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------
// Process-wide registry: everything started here is torn down at the end of the file even if
// a test's own cleanup did not run, and the process exits by itself shortly after.
const live = { procs: new Set(), sockets: new Set(), servers: new Set() };

function killAll() {
  for (const s of live.sockets) { try { s.disconnect(); } catch (_) { /* ignore */ } }
  live.sockets.clear();
  for (const srv of live.servers) { try { srv.close(); } catch (_) { /* ignore */ } }
  live.servers.clear();
  for (const p of live.procs) { try { p.kill("SIGKILL"); } catch (_) { /* ignore */ } }
  live.procs.clear();
}
process.on("exit", killAll);
after(() => {
  killAll();
  // Hard bound: whatever handle is left (a stray timer, a socket), the file ends.
  setTimeout(() => process.exit(), 3000).unref();
});

// ---------------------------------------------------------------------------------------
// Generic helpers.

/** Rejects with `label` if `promise` does not settle within `ms`. */
function withTimeout(promise, ms, label = "operation") {
  let timer;
  const guard = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${label}: timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, guard]).finally(() => clearTimeout(timer));
}

/** Polls `fn` (sync or async, truthy = done) every `every` ms until `ms` elapse. */
async function eventually(fn, ms, label = "condition", every = 50) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() >= end) throw new Error(`${label}: not true within ${ms} ms (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    await sleep(every);
  }
}

/** Runs `fn(item, index)` over `items` with at most `limit` in flight; returns results in order. */
async function mapLimit(items, limit, fn) {
  const out = new Array(items.length);
  let next = 0;
  async function worker() {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i], i);
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

/** `n` distinct free TCP ports on 127.0.0.1 (all held open until every one is chosen). */
async function freePorts(n) {
  const servers = [];
  try {
    for (let i = 0; i < n; i++) {
      const s = net.createServer();
      await new Promise((res, rej) => { s.once("error", rej); s.listen(0, "127.0.0.1", res); });
      servers.push(s);
    }
    return servers.map((s) => s.address().port);
  } finally {
    await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  }
}
async function freePort() { return (await freePorts(1))[0]; }

/**
 * A port on 127.0.0.1 that refuses connections for the whole test: a socket bound to it (not
 * listening, no SO_REUSEADDR) is held by a small python3 process until `t` ends, so no server
 * can bind it and no outgoing connection can take it as its local port (a port that was only
 * free when picked may be taken by the browser or a self-connect a second later).
 */
async function deadPort(t) {
  const held = await startProcess(t, {
    cmd: "python3",
    args: ["-c", "import socket,sys,time\ns=socket.socket()\ns.bind(('127.0.0.1',0))\nprint('bound', s.getsockname()[1], 'held', flush=True)\ntime.sleep(3600)"],
    ready: " held",
    label: "dead port holder",
  });
  return Number(/bound (\d+)/.exec(held.output.text())[1]);
}

function canConnect(port, host = "127.0.0.1") {
  return new Promise((resolve) => {
    const s = net.connect({ port, host });
    const done = (ok) => { s.destroy(); resolve(ok); };
    s.once("connect", () => done(true));
    s.once("error", () => done(false));
    s.setTimeout(1000, () => done(false));
  });
}

/** Waits until a TCP connect to `port` succeeds (every 50 ms, at most `ms`). */
async function waitPort(port, ms = 20000, label = `port ${port}`) {
  return eventually(() => canConnect(port), ms, `waiting for ${label}`);
}

/** A plain HTTP request; resolves { status, headers, body }. */
function httpRequest({ port, path: p, method = "GET", headers = {}, body, host = "127.0.0.1", localAddress, timeout = 5000 }) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host, port, path: p, method, headers, localAddress, agent: false }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString("utf8") }));
      res.on("error", reject);
    });
    req.setTimeout(timeout, () => req.destroy(new Error(`HTTP ${method} ${p} on :${port} timed out after ${timeout} ms`)));
    req.on("error", reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

async function getJson(port, p) {
  const r = await httpRequest({ port, path: p });
  if (r.status !== 200) throw new Error(`GET ${p} on :${port}: ${r.status} ${r.body.slice(0, 200)}`);
  return JSON.parse(r.body);
}

function tmpDir(label = "sio") {
  // Short paths: upgrade_sock is a unix socket path (limited to ~108 bytes).
  return fs.mkdtempSync(path.join(os.tmpdir(), `gw-${label}-`));
}

// ---------------------------------------------------------------------------------------
// Child processes.

/** A ring buffer of a child's output, kept for diagnostics. */
class OutputBuffer {
  constructor(limit = 4 * 1024 * 1024) { this.limit = limit; this.chunks = []; this.size = 0; this.total = 0; }
  push(chunk) {
    const s = chunk.toString("utf8");
    this.chunks.push(s);
    this.size += s.length;
    this.total += s.length;
    while (this.size > this.limit && this.chunks.length > 1) this.size -= this.chunks.shift().length;
  }
  text() { return this.chunks.join(""); }
  /** Text written since `mark` (a previous `this.total`), as far as still buffered. */
  since(mark) {
    const t = this.text();
    const start = t.length - (this.total - mark);
    return t.slice(Math.max(0, start));
  }
  tail(lines = 60) { return this.text().split("\n").slice(-lines).join("\n"); }
}

function track(proc) {
  live.procs.add(proc);
  proc.exited = new Promise((resolve) => proc.once("exit", (code, signal) => { live.procs.delete(proc); resolve({ code, signal }); }));
  return proc;
}

async function stopProc(proc, signal = "SIGKILL", ms = 5000) {
  if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
  try { proc.kill(signal); } catch (_) { return; }
  await withTimeout(proc.exited, ms, `process ${proc.pid} to exit`).catch(() => { try { proc.kill("SIGKILL"); } catch (_) { /* ignore */ } });
}

/**
 * Starts a Socket.IO backend node (backend.js). Returns { name, port, proc, output, stats(),
 * kill() }. Registered for cleanup with `t.after` when `t` is given.
 */
async function startBackend(t, { name, port, path: sioPath, pingInterval, pingTimeout, eio3 = false }) {
  port = port || (await freePort());
  const args = [path.join(HERE, "backend.js"), "--port", String(port), "--name", name];
  if (sioPath) args.push("--path", sioPath);
  if (pingInterval) args.push("--ping-interval", String(pingInterval));
  if (pingTimeout) args.push("--ping-timeout", String(pingTimeout));
  if (eio3) args.push("--eio3");
  const proc = track(spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe"] }));
  const output = new OutputBuffer(256 * 1024);
  proc.stderr.on("data", (c) => output.push(c));
  const node = {
    name, port, proc, output,
    address: `127.0.0.1:${port}`,
    stats: () => getJson(port, "/stats"),
    kill: () => stopProc(proc, "SIGKILL"),
    alive: () => proc.exitCode === null && proc.signalCode === null,
  };
  if (t) t.after(() => stopProc(proc));
  await withTimeout(new Promise((resolve, reject) => {
    let buf = "";
    proc.stdout.on("data", (c) => {
      buf += c.toString();
      if (buf.includes("ready")) resolve();
    });
    proc.once("exit", (code, sig) => reject(new Error(`backend ${name} exited (${code ?? sig}) before ready: ${output.text()}`)));
  }), 15000, `backend ${name} ready`);
  return node;
}

async function startBackends(t, names, opts = {}) {
  return Promise.all(names.map((name) => startBackend(t, { name, ...opts })));
}

/**
 * The suite's gateway config. `affinity`: undefined/null -> no `affinity` key at all;
 * otherwise a YAML flow value, e.g. "{ socketio: true }".
 */
function gatewayConfig({ dir, port, adminPort, nodes, affinity, routePrefix = "/socket.io/", health = "{ interval: 500ms, timeout: 500ms, fails: 1, passes: 1 }" }) {
  const servers = nodes.map((n) => `{ address: "${typeof n === "string" ? n : n.address}" }`).join(", ");
  return [
    "server:",
    "  threads: 2",
    `  pid_file: ${path.join(dir, "gw.pid")}`,
    `  upgrade_sock: ${path.join(dir, "gw_upgrade.sock")}`,
    "  grace_period_seconds: 5",
    "  graceful_shutdown_timeout_seconds: 5",
    `listeners: [ { address: "127.0.0.1:${port}" } ]`,
    `admin: { address: "127.0.0.1:${adminPort}" }`,
    "forwarded: { trusted_proxies: [] }",
    "upstreams:",
    "  rt:",
    `    servers: [ ${servers} ]`,
    "    balance: round_robin",
    ...(affinity ? [`    affinity: ${affinity}`] : []),
    `    health_check: ${health}`,
    "    timeouts: { connect: 1s, idle: 1h }",
    "routes:",
    `  - { match: { path_prefix: ${routePrefix} }, upstream: rt }`,
    "",
  ].join("\n");
}

/** Runs `gateway -t -c file`; resolves { code, output }. */
function checkConfig(file) {
  return new Promise((resolve) => {
    const p = spawn(GATEWAY_BIN, ["-t", "-c", file], { stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    p.stdout.on("data", (c) => { output += c; });
    p.stderr.on("data", (c) => { output += c; });
    p.on("error", (e) => resolve({ code: -1, output: String(e) }));
    p.on("exit", (code) => resolve({ code, output }));
  });
}

/**
 * Writes `configText` (or uses `configFile`) and starts the gateway. Resolves once the
 * listener and the admin port accept TCP connections (unless `wait: false`, e.g. for `-u`).
 * Returns { proc, log (OutputBuffer), port, adminPort, file, dir, status(), stop() }.
 */
async function startGateway(t, { dir, port, adminPort, configText, configFile, upgrade = false, wait = true, label = "gateway" }) {
  if (!fs.existsSync(GATEWAY_BIN)) throw new Error(`gateway binary not found at ${GATEWAY_BIN} (build it: cargo build --bin gateway, or set GATEWAY_BIN)`);
  const file = configFile || path.join(dir, `${label}.yaml`);
  if (configText !== undefined) fs.writeFileSync(file, configText);
  const check = await checkConfig(file);
  if (check.code !== 0) throw new Error(`gateway -t rejected ${file}:\n${check.output}\n--- config ---\n${fs.readFileSync(file, "utf8")}`);
  const args = ["-c", file];
  if (upgrade) args.push("-u");
  const proc = track(spawn(GATEWAY_BIN, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, RUST_LOG } }));
  const log = new OutputBuffer();
  proc.stdout.on("data", (c) => log.push(c));
  proc.stderr.on("data", (c) => log.push(c));
  const gw = {
    label, proc, log, port, adminPort, file, dir,
    status: () => getJson(adminPort, "/status"),
    stop: (sig = "SIGKILL") => stopProc(proc, sig),
  };
  const d = diag;
  if (t) {
    t.after(async () => {
      await stopProc(proc);
      // Keep the directory (config, full log) only when the test failed.
      if (d.failed) {
        try { fs.writeFileSync(path.join(dir, `${label}.log`), log.text()); } catch (_) { /* ignore */ }
      } else {
        try { fs.rmSync(dir, { recursive: true, force: true }); } catch (_) { /* ignore */ }
      }
    });
  }
  registerDiagnostics(gw);
  if (wait) {
    const exited = proc.exited.then(({ code, signal }) => { throw new Error(`${label} exited (${code ?? signal}) before ready:\n${log.tail(40)}`); });
    await Promise.race([exited, (async () => {
      await waitPort(port, 20000, `${label} listener :${port}`);
      await waitPort(adminPort, 20000, `${label} admin :${adminPort}`);
    })()]);
    exited.catch(() => {});
  }
  return gw;
}

/**
 * Starts the usual setup: backends `names` (with `backendOpts`) and one gateway with
 * `affinity` (YAML flow value or null). Returns { nodes, gw, dir, url, tags } where tags maps
 * a node name to its 8-character tag read from the admin /status.
 */
async function setup(t, { names = ["n1", "n2", "n3"], backendOpts = {}, affinity = "{ socketio: true }", routePrefix, label = "gw" } = {}) {
  const dir = tmpDir(label);
  const nodes = await startBackends(t, names, backendOpts);
  const [port, adminPort] = await freePorts(2);
  const configText = gatewayConfig({ dir, port, adminPort, nodes, affinity, routePrefix });
  const gw = await startGateway(t, { dir, port, adminPort, configText, label });
  const tags = await nodeTags(gw, nodes);
  registerDiagnostics(null, nodes);
  return { nodes, gw, dir, port, adminPort, url: `http://127.0.0.1:${port}`, tags, configText };
}

/** name -> tag, from the admin /status (backends are matched by address). */
async function nodeTags(gw, nodes) {
  const st = await gw.status();
  const backends = st.pools.rt.backends;
  const tags = {};
  for (const n of nodes) {
    const b = backends.find((x) => x.address === n.address);
    tags[n.name] = b ? b.tag : undefined;
  }
  return tags;
}

async function backendHealthy(gw, node) {
  const st = await gw.status();
  const b = st.pools.rt.backends.find((x) => x.address === node.address);
  return b ? b.healthy : undefined;
}

/**
 * Gateway log lines (from `text`) showing a request sent, or tried, to backend `address`:
 * access lines with `upstream=<pool>/<address>` or proxy errors naming `Peer: addr: <address>`.
 */
function deadUpstreamLines(text, address) {
  return text.split("\n").filter((l) => l.includes(`/${address} `) && l.includes("upstream=") || l.includes(`Peer: addr: ${address},`));
}

// ---------------------------------------------------------------------------------------
// Backend stats.

async function allStats(nodes) {
  return Promise.all(nodes.filter((n) => n.alive()).map((n) => n.stats()));
}

/** Sums connection_errors by code across the live nodes: { "1": n, "3": m, ... }. */
async function sumErrorCodes(nodes) {
  const sum = {};
  for (const s of await allStats(nodes)) {
    for (const [code, n] of Object.entries(s.connection_errors)) sum[code] = (sum[code] || 0) + n;
  }
  return sum;
}

/** Asserts zero code-1 (Session ID unknown) and code-3 (Bad request) errors on the nodes. */
async function assertNoSessionErrors(assert, nodes, extra = "") {
  const stats = await allStats(nodes);
  const sum = {};
  for (const s of stats) for (const [c, n] of Object.entries(s.connection_errors)) sum[c] = (sum[c] || 0) + n;
  const samples = stats.flatMap((s) => s.error_samples.map((e) => ({ node: s.node, ...e }))).slice(0, 10);
  const msg = `backend connection_errors ${JSON.stringify(sum)} ${extra}; samples: ${JSON.stringify(samples)}`;
  assert.equal(sum["1"] || 0, 0, `code 1 (Session ID unknown): ${msg}`);
  assert.equal(sum["3"] || 0, 0, `code 3 (Bad request): ${msg}`);
  return sum;
}

// ---------------------------------------------------------------------------------------
// Diagnostics: the current test's gateways and nodes, printed when it fails.

let diag = { gateways: [], nodes: [], failed: false };
function registerDiagnostics(gw, nodes) {
  if (gw) diag.gateways.push(gw);
  if (nodes) diag.nodes.push(...nodes);
}

async function printDiagnostics(title, err) {
  const lines = [`==== ${title} FAILED: ${err && err.stack ? err.stack : err}`];
  for (const gw of diag.gateways) {
    lines.push(`---- ${gw.label} (pid ${gw.proc.pid}, exit ${gw.proc.exitCode ?? gw.proc.signalCode}) config ${gw.file}:`);
    try { lines.push(fs.readFileSync(gw.file, "utf8")); } catch (_) { /* ignore */ }
    const logFile = path.join(gw.dir, `${gw.label}.log`);
    const all = gw.log.text().split("\n");
    const other = all.filter((l) => !l.includes(" access] "));
    const access = all.filter((l) => l.includes(" access] "));
    lines.push(`---- ${gw.label} log, last 40 non-access lines (full log in ${logFile}):`);
    lines.push(other.slice(-40).join("\n"));
    lines.push(`---- ${gw.label} last 10 access lines:`);
    lines.push(access.slice(-10).join("\n"));
    try { fs.writeFileSync(logFile, gw.log.text()); } catch (_) { /* ignore */ }
  }
  for (const n of diag.nodes) {
    let s = "(dead)";
    if (n.alive()) s = await withTimeout(n.stats(), 2000, "stats").then((x) => JSON.stringify(x)).catch((e) => `stats error: ${e.message}`);
    lines.push(`---- node ${n.name} ${n.address}: ${s}`);
    if (n.output.total) lines.push(n.output.tail(20));
  }
  process.stderr.write(lines.join("\n") + "\n");
}

/**
 * Declares a node:test test whose body `fn(t, clients)` must finish within `ms`: resets the
 * diagnostics registry, closes every client the body created (tracked through `clients`),
 * and on failure or time-out prints gateway logs and node stats (and keeps the temp dirs).
 * node:test's own timeout (a little longer) is the last resort.
 */
function scenarioTest(title, ms, fn) {
  return test(title, { timeout: ms + 15000 }, async (t) => {
    const d = (diag = { gateways: [], nodes: [], failed: false });
    const clients = new ClientSet();
    t.after(() => clients.closeAll());
    try {
      await withTimeout(Promise.resolve().then(() => fn(t, clients)), ms, `scenario "${title}"`);
    } catch (err) {
      d.failed = true;
      await withTimeout(printDiagnostics(title, err), 10000, "diagnostics").catch(() => {});
      throw err;
    }
  });
}

// ---------------------------------------------------------------------------------------
// Clients.

const ioV4 = require("socket.io-client");

/** Keeps every client of a test (for cleanup) with per-client event records. */
class ClientSet {
  constructor() { this.all = []; }
  add(socket, meta = {}) {
    const rec = { socket, meta, disconnects: [], connectErrors: [], connects: 0, upgradeErrors: [] };
    socket.__rec = rec;
    socket.on("connect", () => { rec.connects++; });
    socket.on("disconnect", (reason, desc) => { rec.disconnects.push({ at: Date.now(), reason, desc: desc && (desc.description && String(desc.description.message || desc.description) || desc.message) }); });
    socket.on("connect_error", (err) => { rec.connectErrors.push({ at: Date.now(), message: err && err.message, desc: err && err.description }); });
    // Upgrade probes fail silently for the application: record them from the start.
    if (socket.io) {
      socket.io.on("open", () => {
        const e = socket.io.engine;
        if (e) e.on("upgradeError", (err) => { rec.upgradeErrors.push({ at: Date.now(), message: String(err && err.message), sid: e.id }); });
      });
    }
    this.all.push(rec);
    live.sockets.add(socket);
    return rec;
  }
  closeAll() {
    for (const r of this.all) { try { r.socket.disconnect(); } catch (_) { /* ignore */ } live.sockets.delete(r.socket); }
  }
  /** Summary of disconnects/connect errors, for assertion messages. */
  troubles(recs = this.all) {
    const bad = recs.filter((r) => r.disconnects.length || r.connectErrors.length);
    return {
      clients: bad.length,
      disconnects: bad.reduce((a, r) => a + r.disconnects.length, 0),
      connectErrors: bad.reduce((a, r) => a + r.connectErrors.length, 0),
      sample: bad.slice(0, 5).map((r) => ({ meta: r.meta, disconnects: r.disconnects, connectErrors: r.connectErrors })),
    };
  }
}

/** A v4 client with the suite's defaults (forceNew, bounded timeouts). Not yet connected. */
function makeClient(url, opts = {}) {
  return ioV4(url, {
    forceNew: true,
    autoConnect: false,
    timeout: 10000,
    reconnectionDelay: 500,
    reconnectionDelayMax: 1000,
    ...opts,
  });
}

/** Connects `socket` (calls .connect() if needed), resolving on `connect`, within `ms`. */
function connectOne(socket, ms = 15000) {
  if (socket.connected) return Promise.resolve(socket);
  return withTimeout(new Promise((resolve) => {
    socket.once("connect", () => resolve(socket));
    if (!socket.active) socket.connect();
  }), ms, `client connect (errors: ${JSON.stringify(socket.__rec ? socket.__rec.connectErrors.slice(-3) : [])})`);
}

/**
 * Creates and connects `n` clients, at most `concurrency` connecting at once.
 * `factory(i)` returns an unconnected socket; `meta(i)` (optional) is stored with it.
 */
async function connectClients(clients, n, factory, { concurrency = 50, timeout = 15000, meta } = {}) {
  const idx = Array.from({ length: n }, (_, i) => i);
  return mapLimit(idx, concurrency, async (i) => {
    const s = factory(i);
    clients.add(s, meta ? meta(i) : { i });
    await connectOne(s, timeout);
    return s;
  });
}

/** One acked emit (v4 or v2 client) with a timeout; resolves the ack's arguments[0]. */
function emitAck(socket, event, payload, ms = 10000) {
  return withTimeout(new Promise((resolve) => {
    if (payload === undefined) socket.emit(event, (res) => resolve(res));
    else socket.emit(event, payload, (res) => resolve(res));
  }), ms, `ack of ${event}`);
}

const whoami = (socket, ms = 10000) => emitAck(socket, "whoami", undefined, ms);

/**
 * `perClient` sequential acked `echo` emits on each socket (sockets run with at most
 * `concurrency` at once). Checks every ack echoes its payload. Returns { sent, acked, failures }.
 */
async function runEchoes(sockets, perClient, { concurrency = 100, timeout = 10000, tag = "e" } = {}) {
  const failures = [];
  let acked = 0;
  await mapLimit(sockets, concurrency, async (s, i) => {
    for (let k = 0; k < perClient; k++) {
      const payload = { tag, i, k, pad: "x".repeat(32) };
      try {
        const res = await emitAck(s, "echo", payload, timeout);
        if (res && res.i === i && res.k === k && res.tag === tag) acked++;
        else failures.push({ i, k, error: `wrong ack ${JSON.stringify(res)}` });
      } catch (e) {
        failures.push({ i, k, error: e.message });
      }
    }
  });
  return { sent: sockets.length * perClient, acked, failures };
}

/** Resolves once the client's engine runs on WebSocket (or rejects after `ms`). */
function waitWebsocket(socket, ms = 10000) {
  const engineOf = () => socket.io && socket.io.engine;
  let iv;
  return withTimeout(new Promise((resolve) => {
    const check = () => {
      const e = engineOf();
      if (e && e.transport && e.transport.name === "websocket" && socket.connected) resolve();
    };
    iv = setInterval(check, 50);
    check();
  }), ms, "upgrade to websocket").catch((err) => {
    const e = engineOf();
    throw new Error(`${err.message} (engine sid ${e && e.id}, transport ${e && e.transport && e.transport.name}, upgradeErrors ${JSON.stringify(socket.__rec ? socket.__rec.upgradeErrors : [])})`);
  }).finally(() => clearInterval(iv));
}

/** The engine (session) id the client sees, i.e. the gateway-tagged sid. */
const engineId = (socket) => socket.io && socket.io.engine && socket.io.engine.id;

/** A tally of whoami().node over the results. */
function tally(results, key = "node") {
  const c = {};
  for (const r of results) c[r[key]] = (c[r[key]] || 0) + 1;
  return c;
}

// ---------------------------------------------------------------------------------------
// TCP helpers: a round-robin splitter over several targets, and a forwarder that connects
// from a chosen local address.

/**
 * Listens on a free port; every accepted TCP connection is piped to the next target in turn.
 * Returns { port, counts (per target), close() }.
 */
async function startSplitter(t, targets, { localAddress } = {}) {
  const counts = targets.map(() => 0);
  const conns = new Set();
  let next = 0;
  const server = net.createServer((down) => {
    const i = next++ % targets.length;
    counts[i]++;
    const up = net.connect({ host: "127.0.0.1", port: targets[i], localAddress });
    conns.add(down); conns.add(up);
    const end = () => { down.destroy(); up.destroy(); conns.delete(down); conns.delete(up); };
    down.on("error", end); up.on("error", end);
    down.on("close", end); up.on("close", end);
    down.pipe(up); up.pipe(down);
  });
  await new Promise((res) => server.listen(0, "127.0.0.1", res));
  live.servers.add(server);
  const close = () => new Promise((res) => {
    for (const c of conns) c.destroy();
    live.servers.delete(server);
    server.close(() => res());
  });
  if (t) t.after(close);
  return { port: server.address().port, counts, close };
}

module.exports = {
  GATEWAY_BIN, HERE, sleep, withTimeout, eventually, mapLimit, freePort, freePorts, deadPort, waitPort, canConnect,
  httpRequest, getJson, tmpDir, startBackend, startBackends, stopProc, gatewayConfig, checkConfig,
  startGateway, setup, nodeTags, backendHealthy, deadUpstreamLines, allStats, sumErrorCodes, assertNoSessionErrors,
  scenarioTest, ClientSet, makeClient, connectOne, connectClients, emitAck, whoami, runEchoes, waitWebsocket,
  engineId, tally, startSplitter, registerDiagnostics, printDiagnostics,
};

// ---------------------------------------------------------------------------------------
// Other child processes (example nodes, redis-server) and the admin write API.

/**
 * Spawns `cmd args` (with `env` added to this process's), tracked for cleanup, and resolves
 * once its output contains `ready`, so scenarios can run any server, not only backend.js.
 * Returns { label, proc, output, alive(), kill() }.
 */
async function startProcess(t, { cmd, args = [], env = {}, cwd, ready, label = cmd, ms = 15000 }) {
  const proc = track(spawn(cmd, args, { cwd, stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...env } }));
  const output = new OutputBuffer(256 * 1024);
  if (t) t.after(() => stopProc(proc));
  await withTimeout(new Promise((resolve, reject) => {
    const onData = (c) => { output.push(c); if (output.text().includes(ready)) resolve(); };
    proc.stdout.on("data", onData);
    proc.stderr.on("data", onData);
    proc.once("error", (e) => reject(new Error(`${label}: ${e.message}`)));
    proc.once("exit", (code, sig) => reject(new Error(`${label} exited (${code ?? sig}) before ready: ${output.tail(20)}`)));
  }), ms, `${label} ready`);
  return { label, proc, output, alive: () => proc.exitCode === null && proc.signalCode === null, kill: () => stopProc(proc, "SIGKILL") };
}

/** A throwaway redis-server on a free loopback port (no persistence); { port, url, proc, ... }. */
async function startRedis(t, { dir = tmpDir("redis") } = {}) {
  const port = await freePort();
  const r = await startProcess(t, {
    cmd: process.env.REDIS_SERVER || "redis-server",
    args: ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir],
    ready: "Ready to accept connections",
    label: `redis-server :${port}`,
  });
  if (t) t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return { ...r, port, url: `redis://127.0.0.1:${port}` };
}

/** POST to an admin write endpoint with `Authorization: Bearer <token>`. */
function adminPost(adminPort, p, token) {
  const headers = { "content-length": "0" };
  if (token) headers.authorization = `Bearer ${token}`;
  return httpRequest({ port: adminPort, path: p, method: "POST", headers });
}

/** The /status entry of the backend at `address` in `pool`, or undefined. */
async function backendStatus(gw, address, pool = "rt") {
  const st = await gw.status();
  return st.pools[pool].backends.find((b) => b.address === address);
}

Object.assign(module.exports, { startProcess, startRedis, adminPost, backendStatus });

// ---------------------------------------------------------------------------------------
// Headless Chromium (Debian's, or $CHROMIUM) through puppeteer-core, for the browser tests.

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ARTIFACTS = process.env.ARTIFACTS_DIR || path.resolve(HERE, "../../target/artifacts");

/** Fails the test at once when Chromium is missing (scripts/deps.sh installs it). */
function requireChromium() {
  require("node:assert/strict").ok(fs.existsSync(CHROMIUM), `Chromium not found at ${CHROMIUM} (scripts/deps.sh installs it; or set CHROMIUM)`);
}

/**
 * Launches headless Chromium with `extraArgs`; it is closed (or killed) after the test and
 * killed if the process exits first. Returns `{ browser, close }`.
 */
async function launchBrowser(t, extraArgs = []) {
  requireChromium();
  const browser = await require("puppeteer-core").launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--headless=new", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", ...extraArgs],
    timeout: 15000,
  });
  const kill = () => { const p = browser.process(); if (p) try { p.kill("SIGKILL"); } catch (_) { /* ignore */ } };
  const close = () => withTimeout(browser.close(), 5000, "browser close").catch(kill);
  t.after(close);
  process.once("exit", kill);
  return { browser, close };
}

/** PNG signature, IHDR and size of a file. */
function pngInfo(file) {
  const buf = fs.readFileSync(file);
  return {
    bytes: buf.length,
    png: buf.subarray(0, 8).toString("hex") === "89504e470d0a1a0a" && buf.subarray(12, 16).toString() === "IHDR",
    width: buf.readUInt32BE(16), height: buf.readUInt32BE(20),
  };
}

/** A full-page screenshot of `page` kept as a test artefact `name`; returns its path and `pngInfo`. */
async function screenshot(page, name) {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const file = path.join(ARTIFACTS, name);
  fs.rmSync(file, { force: true });
  await page.screenshot({ path: file, fullPage: true });
  return { file, ...pngInfo(file) };
}

Object.assign(module.exports, { requireChromium, launchBrowser, pngInfo, screenshot });
