// 1. Three nodes, 300 polling-only clients, 20 acked echoes each: every ack arrives, sessions
//    are spread over the three nodes, each sid the client sees is the node's sid tagged with
//    that node's tag, and no node ever sees "Session ID unknown" / "Bad request".
"use strict";
const assert = require("node:assert/strict");
const L = require("./lib");

const CLIENTS = 300;
const EMITS = 20;

L.scenarioTest("polling: 300 clients x 20 acked emits over 3 nodes", 75000, async (t, clients) => {
  const { nodes, url, tags } = await L.setup(t, { names: ["n1", "n2", "n3"] });
  for (const n of nodes) assert.match(String(tags[n.name]), /^[A-Za-z0-9_-]{8}$/, `tag of ${n.name} in /status: ${JSON.stringify(tags)}`);

  const sockets = await L.connectClients(clients, CLIENTS, () => L.makeClient(url, { transports: ["polling"] }), { concurrency: 50 });

  const who = await L.mapLimit(sockets, 50, (s) => L.whoami(s));
  const dist = L.tally(who);
  assert.equal(Object.keys(dist).length, 3, `every node serves sessions: ${JSON.stringify(dist)}`);
  for (let i = 0; i < sockets.length; i++) {
    const w = who[i];
    assert.equal(w.transport, "polling");
    assert.equal(L.engineId(sockets[i]), `${w.sid}.${tags[w.node]}`, `client ${i}: client sid = node sid + "." + tag of ${w.node}`);
  }

  const r = await L.runEchoes(sockets, EMITS, { concurrency: 100 });
  assert.equal(r.failures.length, 0, `failed acks: ${JSON.stringify(r.failures.slice(0, 10))}`);
  assert.equal(r.acked, CLIENTS * EMITS);

  assert.deepEqual(clients.troubles(), { clients: 0, disconnects: 0, connectErrors: 0, sample: [] });
  await L.assertNoSessionErrors(assert, nodes);
  t.diagnostic(`distribution ${JSON.stringify(dist)}`);
});
