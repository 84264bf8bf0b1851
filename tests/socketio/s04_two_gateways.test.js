// 4. Two gateway processes in front of the same three nodes, and a round-robin TCP splitter in
//    front of both: each polling request (a new TCP connection, as the Node client opens one
//    per request) goes to the other gateway than the previous one. With affinity, the sid tag
//    routes every request to the session's node whichever gateway gets it: 100 polling
//    clients, all acks, zero code 1. CONTROL: the same without affinity reproduces
//    "Session ID unknown".
"use strict";
const assert = require("node:assert/strict");
const L = require("./lib");

const CLIENTS = 100;
const EMITS = 10;

async function twoGateways(t, affinity) {
  const nodes = await L.startBackends(t, ["n1", "n2", "n3"]);
  L.registerDiagnostics(null, nodes);
  const gws = [];
  for (const label of ["gwA", "gwB"]) {
    const dir = L.tmpDir(label);
    const [port, adminPort] = await L.freePorts(2);
    const configText = L.gatewayConfig({ dir, port, adminPort, nodes, affinity });
    gws.push(await L.startGateway(t, { dir, port, adminPort, configText, label }));
  }
  const splitter = await L.startSplitter(t, gws.map((g) => g.port));
  return { nodes, gws, splitter, url: `http://127.0.0.1:${splitter.port}` };
}

L.scenarioTest("two gateways behind a per-connection round-robin splitter: 100 polling clients", 75000, async (t, clients) => {
  const { nodes, gws, splitter, url } = await twoGateways(t, "{ socketio: true }");
  // Both gateways must compute the same tags.
  const [ta, tb] = [await L.nodeTags(gws[0], nodes), await L.nodeTags(gws[1], nodes)];
  assert.deepEqual(ta, tb, "both gateways tag each node alike");

  const sockets = await L.connectClients(clients, CLIENTS, () => L.makeClient(url, { transports: ["polling"] }), { concurrency: 50 });
  const who = await L.mapLimit(sockets, 50, (s) => L.whoami(s));
  const dist = L.tally(who);
  assert.equal(Object.keys(dist).length, 3, `every node serves sessions: ${JSON.stringify(dist)}`);

  const r = await L.runEchoes(sockets, EMITS, { concurrency: 100 });
  assert.equal(r.failures.length, 0, `failed acks: ${JSON.stringify(r.failures.slice(0, 10))}`);
  assert.equal(r.acked, CLIENTS * EMITS);

  // The alternation really happened: both gateways carried a large share of the requests.
  const total = splitter.counts[0] + splitter.counts[1];
  t.diagnostic(`splitter connections per gateway ${JSON.stringify(splitter.counts)}, distribution ${JSON.stringify(dist)}`);
  assert.ok(total >= CLIENTS * EMITS, `one TCP connection per polling request expected, got ${total}`);
  for (const c of splitter.counts) assert.ok(c >= total * 0.4, `each gateway got many connections: ${JSON.stringify(splitter.counts)}`);

  assert.deepEqual(clients.troubles(), { clients: 0, disconnects: 0, connectErrors: 0, sample: [] });
  await L.assertNoSessionErrors(assert, nodes);
});

L.scenarioTest("CONTROL: two gateways without affinity reproduce Session ID unknown", 45000, async (t, clients) => {
  const { nodes, splitter, url } = await twoGateways(t, null);
  const results = await L.mapLimit(Array.from({ length: 30 }, (_, i) => i), 30, async (i) => {
    const s = L.makeClient(url, { transports: ["polling"], reconnection: false, timeout: 5000 });
    clients.add(s, { i });
    try {
      await L.connectOne(s, 6000);
      await L.runEchoes([s], 3, { timeout: 3000 });
    } catch (_) { /* expected to fail */ }
  });
  assert.equal(results.length, 30);
  const codes = await L.sumErrorCodes(nodes);
  const tr = clients.troubles();
  t.diagnostic(`control: backend codes ${JSON.stringify(codes)}, client troubles ${tr.disconnects} disconnects / ${tr.connectErrors} connect errors, splitter ${JSON.stringify(splitter.counts)}`);
  assert.ok((codes["1"] || 0) > 0, `without affinity, requests alternating between two gateways must hit the wrong node: codes ${JSON.stringify(codes)}`);
  assert.ok(tr.disconnects + tr.connectErrors > 0, "and clients notice");
});
