//! 15. Draining a node for a rolling deploy (issue 13): 200 clients (polling handshake, then
//!     WebSocket) on 3 real Socket.IO nodes; one node is drained through the admin API while
//!     every client keeps emitting acked echoes. Its clients keep their sessions (0
//!     disconnects, same sid, acks during and after the drain), 60 new clients all land on
//!     the other two, and its `sessions` / `websockets` in /status follow its clients down to
//!     0 as they leave in batches. Then the node is killed and started again on the same
//!     port: still draining, it gets no new clients until `gateway admin undrain` (the CLI),
//!     after which new clients reach it again. Zero code 1/3 errors on the nodes throughout.
"use strict";
const assert = require("node:assert/strict");
const { spawn } = require("node:child_process");
const L = require("./lib");

const CLIENTS = 200;
const FRESH = 60;
const BATCHES = 3;
const TOKEN = "drain-test-admin-token-0123456789";

/** Runs the gateway CLI (`gateway admin ...`); resolves { code, stdout, stderr }. */
function cli(args) {
  return L.withTimeout(new Promise((resolve) => {
    const p = spawn(L.GATEWAY_BIN, args, { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    p.stdout.on("data", (c) => { stdout += c; });
    p.stderr.on("data", (c) => { stderr += c; });
    p.on("error", (e) => resolve({ code: -1, stdout, stderr: String(e) }));
    p.on("exit", (code) => resolve({ code, stdout, stderr }));
  }), 10000, `gateway ${args.join(" ")}`);
}

/**
 * Acked `echo` emits on `list()` in rounds (100 at a time, `pause` ms between rounds) until
 * stopped, so acks flow while the test drains, connects and counts. Counts acks per socket.
 */
function startPump(list, { pause = 200, timeout = 5000 } = {}) {
  const acks = new Map();
  const failures = [];
  let running = true;
  let round = 0;
  const done = (async () => {
    while (running) {
      const r = round++;
      await L.mapLimit(list(), 100, async (s) => {
        try {
          const res = await L.emitAck(s, "echo", { r }, timeout);
          if (res && res.r === r) acks.set(s, (acks.get(s) || 0) + 1);
          else failures.push({ meta: s.__rec.meta, error: `wrong ack ${JSON.stringify(res)}` });
        } catch (e) {
          failures.push({ meta: s.__rec.meta, error: e.message });
        }
      });
      await L.sleep(pause);
    }
  })();
  return { acks, failures, rounds: () => round, stop: async () => { running = false; await done; } };
}

L.scenarioTest("drain a node under 200 clients: sessions kept, new ones elsewhere, count falls to 0, restart + undrain", 75000, async (t, clients) => {
  const started = Date.now();
  const dir = L.tmpDir("drain");
  const nodes = await L.startBackends(t, ["n1", "n2", "n3"]);
  L.registerDiagnostics(null, nodes);
  const [port, adminPort] = await L.freePorts(2);
  const plain = L.gatewayConfig({ dir, port, adminPort, nodes, affinity: "{ socketio: true }" });
  const adminLine = `admin: { address: "127.0.0.1:${adminPort}" }`;
  assert.ok(plain.includes(adminLine));
  const configText = plain.replace(adminLine, `admin: { address: "127.0.0.1:${adminPort}", token: "${TOKEN}" }`);
  const gw = await L.startGateway(t, { dir, port, adminPort, configText, label: "gw" });
  const url = `http://127.0.0.1:${port}`;
  const victim = nodes[1];
  const others = nodes.filter((n) => n !== victim);
  const victimStatus = () => L.backendStatus(gw, victim.address);

  // What /status says the node holds. `sessions` and `websockets` are the fields a deploy
  // script waits on; without them (an older gateway) the rest is checked on `in_flight`,
  // and the test fails at the end.
  let haveCounts = true;
  const held = async () => {
    const b = await victimStatus();
    if (b.sessions === undefined || b.websockets === undefined) {
      if (haveCounts) t.diagnostic(`/status has no sessions/websockets per backend (keys: ${Object.keys(b)}); using in_flight`);
      haveCounts = false;
      return { sessions: b.in_flight, websockets: b.in_flight, in_flight: b.in_flight, state: b.state };
    }
    return { sessions: b.sessions, websockets: b.websockets, in_flight: b.in_flight, state: b.state };
  };
  /** Waits until the node holds exactly `n` sessions and WebSockets (gateway and node agree). */
  const expectHeld = (n, label, ms = 5000) => L.eventually(async () => {
    const h = await held();
    const node = (await victim.stats()).connections;
    if (h.sessions === n && h.websockets === n && node === n) return h;
    throw new Error(`${JSON.stringify(h)}, node-side connections ${node}`);
  }, ms, `${label}: sessions = websockets = ${n}`);

  // 200 clients, default transports: polling handshake, then WebSocket.
  const sockets = await L.connectClients(clients, CLIENTS, () => L.makeClient(url), { concurrency: 50, meta: (i) => ({ i, batch: "initial" }) });
  await Promise.all(sockets.map((s) => L.waitWebsocket(s, 15000)));
  const who = await L.mapLimit(sockets, 50, (s) => L.whoami(s));
  assert.equal(Object.keys(L.tally(who)).length, 3, `clients on every node: ${JSON.stringify(L.tally(who))}`);
  const victims = sockets.filter((_, i) => who[i].node === victim.name);
  const bystanders = sockets.filter((_, i) => who[i].node !== victim.name);
  const sidsBefore = victims.map(L.engineId);
  await expectHeld(victims.length, "before the drain");

  // Echoes flow on every open client from before the drain to after the new clients arrived.
  const closed = new Set();
  let fresh = [];
  const pump = startPump(() => sockets.concat(fresh).filter((s) => !closed.has(s)));
  await L.eventually(() => pump.rounds() >= 2, 10000, "echo pump running");

  const handshakesBefore = (await victim.stats()).handshakes;
  const drainPath = `/pools/rt/backends/${victim.address}/drain`;
  assert.equal((await L.adminPost(adminPort, drainPath, "wrong-token-wrong-token")).status, 401, "a wrong token is refused");
  const r = await L.adminPost(adminPort, drainPath, TOKEN);
  assert.equal(r.status, 200, r.body);
  assert.equal(JSON.parse(r.body).state, "draining");
  assert.equal((await held()).state, "draining");
  const acksAtDrain = new Map(victims.map((s) => [s, pump.acks.get(s) || 0]));
  const drainedAt = Date.now();

  // New clients while draining: all on the other two nodes, none even handshaked on the victim.
  fresh = await L.connectClients(clients, FRESH, () => L.makeClient(url), { concurrency: 30, meta: (i) => ({ i, batch: "fresh" }) });
  await Promise.all(fresh.map((s) => L.waitWebsocket(s, 15000)));
  const freshWho = await L.mapLimit(fresh, 30, (s) => L.whoami(s));
  const freshDist = L.tally(freshWho);
  assert.equal(freshDist[victim.name] || 0, 0, `new clients on the draining node: ${JSON.stringify(freshDist)}`);
  for (const n of others) assert.ok((freshDist[n.name] || 0) > 0, `new clients on ${n.name}: ${JSON.stringify(freshDist)}`);
  assert.equal((await victim.stats()).handshakes, handshakesBefore, "handshakes reached the draining node");

  // The victim's clients kept acking after the drain (two more pump rounds for everybody).
  const roundsNow = pump.rounds();
  await L.eventually(() => pump.rounds() >= roundsNow + 2, 15000, "two more echo rounds");
  await pump.stop();
  assert.deepEqual(pump.failures.slice(0, 10), [], `failed echoes (${pump.failures.length}) around the drain`);
  const silent = victims.filter((s) => (pump.acks.get(s) || 0) <= acksAtDrain.get(s));
  assert.equal(silent.length, 0, `draining node's clients with no ack after the drain: ${silent.length}`);
  assert.deepEqual(victims.map(L.engineId), sidsBefore, "draining node's clients kept their sessions");
  const still = await L.mapLimit(victims, 50, (s) => L.whoami(s));
  for (const w of still) assert.equal(w.node, victim.name);
  assert.deepEqual(clients.troubles(), { clients: 0, disconnects: 0, connectErrors: 0, sample: [] }, "disconnects during the drain");
  await expectHeld(victims.length, "draining, before any client left");
  t.diagnostic(`drain: ${victims.length} clients kept on ${victim.name}, ${FRESH} new ones ${JSON.stringify(freshDist)}, ${pump.rounds()} echo rounds (${Date.now() - drainedAt} ms)`);

  // Its clients leave in batches; the count follows, and the rest still ack in between.
  const size = Math.ceil(victims.length / BATCHES);
  for (let b = 0; b < BATCHES; b++) {
    const batch = victims.slice(b * size, (b + 1) * size);
    for (const s of batch) { closed.add(s); s.disconnect(); }
    const left = victims.filter((s) => !closed.has(s));
    await expectHeld(left.length, `after batch ${b + 1}/${BATCHES}`);
    const e = await L.runEchoes(left, 1, { tag: `b${b}` });
    assert.equal(e.failures.length, 0, `remaining clients' acks after batch ${b + 1}: ${JSON.stringify(e.failures.slice(0, 5))}`);
  }
  const empty = await expectHeld(0, "all its clients gone");
  assert.equal(empty.in_flight, 0, "nothing in flight to the drained node");
  for (const s of victims) assert.deepEqual(s.__rec.disconnects.map((d) => d.reason), ["io client disconnect"], `meta ${JSON.stringify(s.__rec.meta)}`);

  // Deploy: stop the node, start it again on the same port. It stays draining.
  await victim.kill();
  const restarted = await L.startBackend(t, { name: victim.name, port: victim.port });
  nodes[1] = restarted;
  L.registerDiagnostics(null, [restarted]);
  await L.eventually(async () => (await victimStatus()).active_up === true, 10000, "restarted node passes its health check");
  assert.equal((await held()).state, "draining", "a restarted node stays drained until undrained");
  const early = await L.connectClients(clients, 9, () => L.makeClient(url), { concurrency: 9, meta: (i) => ({ i, batch: "early" }) });
  const earlyWho = await L.mapLimit(early, 9, (s) => L.whoami(s));
  assert.equal(L.tally(earlyWho)[victim.name] || 0, 0, "new clients on the still-draining restarted node");

  // Undrain with the CLI (reads the admin address and token from the config).
  const u = await cli(["admin", "undrain", "rt", victim.address, "-c", gw.file]);
  assert.equal(u.code, 0, `gateway admin undrain: ${u.stderr}`);
  assert.equal((await held()).state, "up");
  const back = await L.connectClients(clients, 30, () => L.makeClient(url), { concurrency: 30, meta: (i) => ({ i, batch: "after undrain" }) });
  await Promise.all(back.map((s) => L.waitWebsocket(s, 15000)));
  const backWho = await L.mapLimit(back, 30, (s) => L.whoami(s));
  const backDist = L.tally(backWho);
  assert.ok((backDist[victim.name] || 0) >= 5, `new clients reach the undrained node: ${JSON.stringify(backDist)}`);
  await expectHeld(backDist[victim.name], "undrained, with its new clients");

  // Everybody still open acks; nobody but the leavers ever disconnected.
  const open = bystanders.concat(fresh, early, back);
  const e = await L.runEchoes(open, 2, { tag: "end" });
  assert.equal(e.failures.length, 0, `final acks: ${JSON.stringify(e.failures.slice(0, 5))}`);
  assert.deepEqual(clients.troubles(open.map((s) => s.__rec)), { clients: 0, disconnects: 0, connectErrors: 0, sample: [] });
  await L.assertNoSessionErrors(assert, nodes);
  t.diagnostic(`undrained: new clients ${JSON.stringify(backDist)}; total ${Date.now() - started} ms`);
  assert.ok(haveCounts, "/status must report `sessions` and `websockets` per backend (checked on in_flight instead)");
});
