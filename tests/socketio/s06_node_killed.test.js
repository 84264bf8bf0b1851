// 6. A node killed mid-session (SIGKILL): 90 clients on 3 nodes, polling-only and default
//    transports mixed. The dead node's clients reconnect through the gateway to live nodes
//    within 3 s; the other nodes' clients see no disconnect; once the health check has marked
//    the node down, every new session lands on a live node and the gateway sends nothing to
//    the dead one.
"use strict";
const assert = require("node:assert/strict");
const L = require("./lib");

const CLIENTS = 90;

L.scenarioTest("node killed mid-session: its clients move to live nodes, others undisturbed", 75000, async (t, clients) => {
  const { nodes, gw, url } = await L.setup(t, { names: ["n1", "n2", "n3"] });
  const opts = { reconnectionDelay: 500, reconnectionDelayMax: 500, randomizationFactor: 0 };
  const sockets = await L.connectClients(clients, CLIENTS,
    (i) => L.makeClient(url, i % 2 ? { ...opts } : { ...opts, transports: ["polling"] }),
    { concurrency: 50, meta: (i) => ({ i, transports: i % 2 ? "default" : "polling" }) });
  await Promise.all(sockets.map((s, i) => (i % 2 ? L.waitWebsocket(s, 15000) : null)));
  const who = await L.mapLimit(sockets, 50, (s) => L.whoami(s));
  assert.equal(Object.keys(L.tally(who)).length, 3, `distribution ${JSON.stringify(L.tally(who))}`);

  const victim = nodes[1];
  const liveNames = new Set(nodes.filter((n) => n !== victim).map((n) => n.name));
  const victims = sockets.filter((_, i) => who[i].node === victim.name);
  const others = sockets.filter((_, i) => who[i].node !== victim.name);
  assert.ok(victims.length > 0 && others.length > 0);
  const victimRecs = victims.map((s) => s.__rec);
  const otherRecs = others.map((s) => s.__rec);
  const connectsBefore = victims.map((s) => s.__rec.connects);

  const killedAt = Date.now();
  await victim.kill();

  // The dead node's clients disconnect and reconnect (through the gateway) within 3 s.
  await L.eventually(() => victims.every((s, k) => s.connected && s.__rec.connects > connectsBefore[k]), 3000,
    "dead node's clients reconnected",
    50).catch((e) => {
    const stuck = victims.filter((s, k) => !(s.connected && s.__rec.connects > connectsBefore[k])).map((s) => ({ meta: s.__rec.meta, connected: s.connected, d: s.__rec.disconnects, ce: s.__rec.connectErrors.slice(-3) }));
    throw new Error(`${e.message}: ${stuck.length}/${victims.length} not back after ${Date.now() - killedAt} ms, e.g. ${JSON.stringify(stuck.slice(0, 5))}`);
  });
  t.diagnostic(`${victims.length} clients of the killed node back within ${Date.now() - killedAt} ms`);
  const moved = await L.mapLimit(victims, 50, (s) => L.whoami(s));
  for (const w of moved) assert.ok(liveNames.has(w.node), `reconnected to a live node, got ${w.node}`);

  // The health check marks the node down.
  await L.eventually(async () => (await L.backendHealthy(gw, victim)) === false, 5000, "admin /status shows the killed node unhealthy");
  const mark = gw.log.total;
  const handshakesBefore = (await L.allStats(nodes)).reduce((a, s) => a + s.handshakes, 0);

  // New sessions all land on live nodes.
  const fresh = await L.connectClients(clients, 30, (i) => L.makeClient(url, i % 2 ? {} : { transports: ["polling"] }), { concurrency: 30 });
  const freshWho = await L.mapLimit(fresh, 30, (s) => L.whoami(s));
  for (const w of freshWho) assert.ok(liveNames.has(w.node), `new session on a live node, got ${w.node}`);
  assert.equal(Object.keys(L.tally(freshWho)).length, 2, `both live nodes take new sessions: ${JSON.stringify(L.tally(freshWho))}`);
  const handshakesAfter = (await L.allStats(nodes)).reduce((a, s) => a + s.handshakes, 0);
  assert.equal(handshakesAfter - handshakesBefore, 30, "every new handshake reached a live node");
  // ...and the gateway did not try the dead node for any of them.
  const toDead = L.deadUpstreamLines(gw.log.since(mark), victim.address);
  assert.deepEqual(toDead, [], "gateway log: requests sent to the dead node after it was marked down");

  // Everybody acks; the clients of the other nodes never saw a disconnect.
  const r = await L.runEchoes(sockets.concat(fresh), 5);
  assert.equal(r.failures.length, 0, `failed acks: ${JSON.stringify(r.failures.slice(0, 10))}`);
  const disturbed = otherRecs.filter((rec) => rec.disconnects.length > 0);
  assert.equal(disturbed.length, 0, `clients of live nodes disconnected: ${JSON.stringify(disturbed.slice(0, 5).map((r) => ({ meta: r.meta, d: r.disconnects })))}`);
  assert.ok(victimRecs.every((rec) => rec.disconnects.length >= 1));
  await L.assertNoSessionErrors(assert, nodes);
});
