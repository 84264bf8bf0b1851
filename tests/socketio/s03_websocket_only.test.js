// 3. WebSocket-only clients (no polling handshake: the sid is born on the WebSocket, so the
//    gateway has no handshake body to tag): 100 clients over 3 nodes, every ack arrives.
"use strict";
const assert = require("node:assert/strict");
const L = require("./lib");

const CLIENTS = 100;
const EMITS = 10;

L.scenarioTest("websocket-only: 100 clients ack", 45000, async (t, clients) => {
  const { nodes, url } = await L.setup(t, { names: ["n1", "n2", "n3"] });

  const sockets = await L.connectClients(clients, CLIENTS, () => L.makeClient(url, { transports: ["websocket"] }), { concurrency: 50 });
  const who = await L.mapLimit(sockets, 50, (s) => L.whoami(s));
  const dist = L.tally(who);
  assert.equal(Object.keys(dist).length, 3, `every node serves sessions: ${JSON.stringify(dist)}`);
  for (const w of who) assert.equal(w.transport, "websocket");

  const r = await L.runEchoes(sockets, EMITS, { concurrency: 100 });
  assert.equal(r.failures.length, 0, `failed acks: ${JSON.stringify(r.failures.slice(0, 10))}`);
  assert.equal(r.acked, CLIENTS * EMITS);

  assert.deepEqual(clients.troubles(), { clients: 0, disconnects: 0, connectErrors: 0, sample: [] });
  await L.assertNoSessionErrors(assert, nodes);
  t.diagnostic(`distribution ${JSON.stringify(dist)}`);
});
