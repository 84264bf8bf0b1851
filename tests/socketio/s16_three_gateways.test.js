// 16. Many gateways, as deploy/kubernetes/ runs them: three gateway processes sharing nothing
//     but the affinity secret, three Socket.IO nodes, and an L4 balancer (lb.js) spreading
//     every client TCP connection round robin over the gateways, as a cloud load balancer
//     does. 120 clients (polling-only and upgraded to WebSocket) keep acked emits flowing
//     while one gateway is SIGKILLed: the balancer detects the refusal and skips it, the
//     clients whose connections were on it reconnect through the others, WebSockets on the
//     others stay up, acks keep flowing, and no request ever reaches a node that does not own
//     its session. Zero "Session ID unknown" (code 1) before the kill and after recovery; at
//     the kill, a node answers it only for a session it had itself just closed because the
//     dead gateway cut its held long-poll (engine.io ends a polling session whose GET breaks)
//     and whose client is reconnecting anyway; the surviving gateways answer it never.
//     CONTROL: replicas with different secrets (a Secret not shared) misroute, reproducing
//     "Session ID unknown" for sessions the node never had.
"use strict";
const assert = require("node:assert/strict");
const L = require("./lib");
const { startBalancer } = require("./lb");

const CLIENTS = 120;          // even: polling-only; odd: default transports (WebSocket)
const EMIT_EVERY_MS = 250;    // each client's pace between acked emits
const ACK_TIMEOUT_MS = 4000;
const BEFORE_KILL_MS = 4000;
const AFTER_KILL_MS = 9000;
const RECOVERY_MS = 5000;     // after the kill, every emit started later than this must be acked

async function threeGateways(t, secrets) {
  const nodes = await L.startBackends(t, ["n1", "n2", "n3"]);
  L.registerDiagnostics(null, nodes);
  const gws = await Promise.all(secrets.map(async (secret, k) => {
    const label = `gw${k}`;
    const dir = L.tmpDir(label);
    const [port, adminPort] = await L.freePorts(2);
    const configText = L.gatewayConfig({ dir, port, adminPort, nodes, affinity: `{ socketio: true, secret: "${secret}" }` });
    return L.startGateway(t, { dir, port, adminPort, configText, label });
  }));
  const lb = await startBalancer(t, gws.map((g) => g.port));
  return { nodes, gws, lb, url: `http://127.0.0.1:${lb.port}` };
}

/** gateway_socketio_session_unknown_total summed over pools, from the admin /metrics. */
async function sessionUnknownAnswered(gw) {
  const r = await L.httpRequest({ port: gw.adminPort, path: "/metrics" });
  assert.equal(r.status, 200, `/metrics of ${gw.label}`);
  return r.body.split("\n")
    .filter((l) => l.startsWith("gateway_socketio_session_unknown_total"))
    .reduce((a, l) => a + Number(l.trim().split(/\s+/).pop()), 0);
}

/** The balancer target carrying `socket`'s WebSocket, or undefined (not on WebSocket). */
function websocketTarget(lb, socket) {
  const tr = socket.io && socket.io.engine && socket.io.engine.transport;
  const raw = tr && tr.name === "websocket" && tr.ws && tr.ws._socket;
  return raw ? lb.openOn(raw.localPort) : undefined;
}

/** Each socket emits acked `echo`s every EMIT_EVERY_MS until stop(); every emit is logged. */
function echoLoops(sockets) {
  let running = true;
  const log = sockets.map(() => []); // { at, ok, ms, error }
  const loops = sockets.map(async (s, i) => {
    for (let k = 0; running; k++) {
      const at = Date.now();
      try {
        const res = await L.emitAck(s, "echo", { i, k }, ACK_TIMEOUT_MS);
        const ok = res && res.i === i && res.k === k;
        log[i].push({ at, ok, ms: Date.now() - at, error: ok ? undefined : `wrong ack ${JSON.stringify(res)}` });
      } catch (e) {
        log[i].push({ at, ok: false, ms: Date.now() - at, error: e.message });
      }
      await L.sleep(Math.max(0, EMIT_EVERY_MS - (Date.now() - at)));
    }
  });
  return { log, stop: async () => { running = false; await Promise.all(loops); } };
}

L.scenarioTest("three gateways behind an L4 round robin, one SIGKILLed under load: no request reaches the wrong node, acks keep flowing", 50000, async (t, clients) => {
  const secret = "s16-the-same-secret-on-every-replica";
  const { nodes, gws, lb, url } = await threeGateways(t, [secret, secret, secret]);
  const tags = await Promise.all(gws.map((g) => L.nodeTags(g, nodes)));
  for (const tg of tags.slice(1)) assert.deepEqual(tg, tags[0], "every replica tags each node alike");
  assert.ok(Object.values(tags[0]).every((x) => typeof x === "string" && x.length > 0), `tags ${JSON.stringify(tags[0])}`);

  const opts = { reconnectionDelay: 300, reconnectionDelayMax: 1000 };
  const isWs = (i) => i % 2 === 1;
  const sockets = await L.connectClients(clients, CLIENTS,
    (i) => L.makeClient(url, isWs(i) ? opts : { ...opts, transports: ["polling"] }),
    { concurrency: 40, meta: (i) => ({ i, transports: isWs(i) ? "default" : "polling" }) });
  await Promise.all(sockets.map((s, i) => (isWs(i) ? L.waitWebsocket(s, 15000) : null)));
  const dist = L.tally(await L.mapLimit(sockets, 40, (s) => L.whoami(s)));
  assert.equal(Object.keys(dist).length, 3, `sessions on every node: ${JSON.stringify(dist)}`);

  // Acked emits flow through all three gateways.
  const loops = echoLoops(sockets);
  const acceptedBefore = lb.targets.map((x) => x.accepted);
  await L.sleep(BEFORE_KILL_MS);
  const spread = lb.targets.map((x, k) => x.accepted - acceptedBefore[k]);
  const total = spread.reduce((a, b) => a + b, 0);
  for (const c of spread) assert.ok(c >= total * 0.25, `every gateway carries connections: ${JSON.stringify(spread)}`);
  const earlyFailures = loops.log.flat().filter((e) => !e.ok);
  assert.deepEqual(earlyFailures, [], "no failed ack before the kill");

  // SIGKILL one gateway mid-traffic. Its open connections break: WebSockets it carried, and
  // polling requests in flight through it.
  const victim = 1;
  const wsOnVictim = new Set(sockets.filter((s, i) => isWs(i) && websocketTarget(lb, s) === victim));
  const wsElsewhere = sockets.filter((s, i) => isWs(i) && !wsOnVictim.has(s));
  assert.ok(wsOnVictim.size > 0, "some WebSockets run through the gateway about to be killed");
  const unknown = sockets.filter((s, i) => isWs(i) && websocketTarget(lb, s) === undefined);
  assert.equal(unknown.length, 0, "every WebSocket client's connection is one the balancer carries");
  const connectsBefore = new Map(sockets.map((s) => [s, s.__rec.connects]));
  const sidBefore = new Map(sockets.map((s) => [s, L.engineId(s)]));
  await L.assertNoSessionErrors(assert, nodes, "before the kill");
  const killedAt = Date.now();
  await gws[victim].stop("SIGKILL");
  await L.sleep(RECOVERY_MS);
  const codesRecovered = await L.sumErrorCodes(nodes);
  await L.sleep(AFTER_KILL_MS - RECOVERY_MS);
  await loops.stop();

  // The balancer skipped the dead gateway: marked down, and the survivors took the traffic.
  const dead = lb.targets[victim];
  assert.equal(dead.up, false, "the balancer marked the killed gateway down");
  t.diagnostic(`balancer: ${JSON.stringify(lb.targets)}, down ${dead.downSince - killedAt} ms after the kill; distribution ${JSON.stringify(dist)}`);

  // Clients whose connection was on it reconnected; every client is connected again, and the
  // WebSocket clients are back on WebSocket. WebSockets on the other gateways never dropped.
  await L.eventually(() => sockets.every((s) => s.connected), 5000, "every client connected");
  const dropped = sockets.filter((s) => s.__rec.connects > connectsBefore.get(s));
  for (const s of wsOnVictim) assert.ok(dropped.includes(s), `a WebSocket on the killed gateway reconnected (${JSON.stringify(s.__rec.meta)})`);
  for (const s of wsElsewhere) assert.deepEqual(s.__rec.disconnects, [], `a WebSocket on a surviving gateway stayed up (${JSON.stringify(s.__rec.meta)})`);
  await Promise.all(sockets.map((s, i) => (isWs(i) ? L.waitWebsocket(s, 10000) : null)));
  t.diagnostic(`${dropped.length} clients reconnected (${wsOnVictim.size} WebSockets on the killed gateway); ${wsElsewhere.length} other WebSockets undisturbed`);

  // Acks kept flowing: only emits in flight around the kill may be lost, only on clients that
  // lost a connection; everything started RECOVERY_MS after the kill was acked, on every client.
  const all = loops.log.flatMap((l, i) => l.map((e) => ({ i, ...e })));
  const failed = all.filter((e) => !e.ok);
  const late = failed.filter((e) => e.at >= killedAt + RECOVERY_MS);
  assert.deepEqual(late.slice(0, 5), [], `acks failed ${RECOVERY_MS} ms or more after the kill (${late.length})`);
  for (const e of failed) {
    assert.ok(e.at + ACK_TIMEOUT_MS >= killedAt, `an ack failed long before the kill: ${JSON.stringify(e)}`);
    assert.ok(dropped.includes(sockets[e.i]), `an ack failed on a client that lost no connection: ${JSON.stringify(e)}`);
  }
  const steady = loops.log.map((l) => l.filter((e) => e.ok && e.at >= killedAt + RECOVERY_MS).length);
  assert.ok(steady.every((n) => n >= 1), `every client acked again after the kill: min ${Math.min(...steady)}`);
  const acked = all.filter((e) => e.ok).length;
  t.diagnostic(`${acked} acks, ${failed.length} lost around the kill; acks per client after recovery: min ${Math.min(...steady)}`);
  const r = await L.runEchoes(sockets, 2, { concurrency: 60, timeout: 5000, tag: "after" });
  assert.deepEqual(r.failures.slice(0, 5), [], "a final round of acked emits");

  // No request reached a node that does not own its session: every "Session ID unknown" a node
  // answered (if any) names a session that node itself had issued and then closed because the
  // killed gateway cut its held long-poll ("transport error"), i.e. requests of a session its
  // client was just abandoning, all right after the kill and none once clients recovered.
  const stats = await L.allStats(nodes);
  const code1 = stats.reduce((a, st) => a + (st.connection_errors["1"] || 0), 0);
  const afterClose = {};
  for (const st of stats) for (const [why, n] of Object.entries(st.session_unknown_after_close)) afterClose[why] = (afterClose[why] || 0) + n;
  const ownClosed = Object.values(afterClose).reduce((a, n) => a + n, 0);
  t.diagnostic(`code 1 on the nodes: ${code1}, all for sessions the node had closed: ${JSON.stringify(afterClose)}`);
  assert.equal(code1 - ownClosed, 0, `"Session ID unknown" for a session the node never had (a misrouted request): ${JSON.stringify(stats.map((st) => st.error_samples))}`);
  assert.deepEqual(Object.keys(afterClose).filter((why) => why !== "transport error"), [], `sessions ended otherwise: ${JSON.stringify(afterClose)}`);
  assert.equal(code1, codesRecovered["1"] || 0, `no "Session ID unknown" later than ${RECOVERY_MS} ms after the kill`);
  const cut = new Set(dropped.filter((s) => !isWs(sockets.indexOf(s))).map((s) => String(sidBefore.get(s)).split(".")[0]));
  for (const st of stats) {
    for (const e of st.error_samples.filter((x) => x.code === "1")) assert.ok(cut.has(e.context.sid), `code 1 for ${e.context.sid} on ${st.node}, not a polling session cut by the kill`);
    assert.equal(st.connection_errors["3"] || 0, 0, `code 3 (Bad request) on ${st.node}`);
  }
  // And no surviving gateway had to answer "Session ID unknown" itself (it does for a node it
  // sees down: none was).
  for (const g of gws.filter((_, k) => k !== victim)) assert.equal(await sessionUnknownAnswered(g), 0, `${g.label} answered Session ID unknown`);
});

L.scenarioTest("CONTROL: three gateways with different secrets reproduce Session ID unknown", 30000, async (t, clients) => {
  const { nodes, lb, url } = await threeGateways(t, ["secret-a-0123456789", "secret-b-0123456789", "secret-c-0123456789"]);
  await L.mapLimit(Array.from({ length: 30 }, (_, i) => i), 30, async (i) => {
    const s = L.makeClient(url, { transports: ["polling"], reconnection: false, timeout: 4000 });
    clients.add(s, { i });
    try {
      await L.connectOne(s, 5000);
      await L.runEchoes([s], 3, { timeout: 2000 });
    } catch (_) { /* expected to fail */ }
  });
  const stats = await L.allStats(nodes);
  const code1 = stats.reduce((a, st) => a + (st.connection_errors["1"] || 0), 0);
  const ownClosed = stats.reduce((a, st) => a + Object.values(st.session_unknown_after_close).reduce((x, n) => x + n, 0), 0);
  t.diagnostic(`control: code 1 on the nodes ${code1} (${ownClosed} for sessions they had closed), balancer ${JSON.stringify(lb.targets.map((x) => x.accepted))}`);
  assert.ok(code1 - ownClosed > 0, `replicas with different secrets must send requests to nodes that never had the session: ${code1} code 1, ${ownClosed} after close`);
});
