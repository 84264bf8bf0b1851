// 2. Default transports (polling, then upgrade): 200 clients over 3 nodes all end on
//    WebSocket (a misrouted upgrade request would leave a client silently on polling), the
//    node sees the session on websocket, and every ack arrives. Zero code 1/3 on the nodes.
"use strict";
const assert = require("node:assert/strict");
const L = require("./lib");

const CLIENTS = 200;
const EMITS = 10;

L.scenarioTest("default transports: 200 clients all upgrade to websocket and ack", 75000, async (t, clients) => {
  const { nodes, url, tags } = await L.setup(t, { names: ["n1", "n2", "n3"] });

  const sockets = await L.connectClients(clients, CLIENTS, () => L.makeClient(url), { concurrency: 50 });
  const upgraded = await Promise.allSettled(sockets.map((s) => L.waitWebsocket(s, 15000)));
  const notUpgraded = upgraded.map((r, i) => ({ i, r })).filter((x) => x.r.status === "rejected");
  assert.equal(notUpgraded.length, 0, `clients left on polling: ${notUpgraded.length}; e.g. ${notUpgraded.slice(0, 5).map((x) => x.r.reason.message).join(" | ")}`);

  const who = await L.mapLimit(sockets, 50, (s) => L.whoami(s));
  const dist = L.tally(who);
  assert.equal(Object.keys(dist).length, 3, `every node serves sessions: ${JSON.stringify(dist)}`);
  who.forEach((w, i) => {
    assert.equal(w.transport, "websocket", `client ${i} on ${w.node}: node-side transport`);
    assert.equal(L.engineId(sockets[i]), `${w.sid}.${tags[w.node]}`);
  });

  const r = await L.runEchoes(sockets, EMITS, { concurrency: 100 });
  assert.equal(r.failures.length, 0, `failed acks: ${JSON.stringify(r.failures.slice(0, 10))}`);
  assert.equal(r.acked, CLIENTS * EMITS);

  const st = await L.allStats(nodes);
  assert.equal(st.reduce((a, s) => a + s.upgrades, 0), CLIENTS, `node-side upgrades: ${JSON.stringify(st.map((s) => [s.node, s.upgrades]))}`);
  assert.deepEqual(clients.troubles(), { clients: 0, disconnects: 0, connectErrors: 0, sample: [] });
  await L.assertNoSessionErrors(assert, nodes);
  t.diagnostic(`distribution ${JSON.stringify(dist)}`);
});
