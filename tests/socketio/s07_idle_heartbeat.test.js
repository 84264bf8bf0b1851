// 7. Heartbeats through the gateway: nodes with pingInterval 3000 / pingTimeout 2000, clients
//    (polling-only, websocket-only, and upgraded) stay idle for 10 s: none disconnects and all
//    ack afterwards.
"use strict";
const assert = require("node:assert/strict");
const L = require("./lib");

const PER_KIND = 30;
const KINDS = [
  { kind: "polling", opts: { transports: ["polling"] } },
  { kind: "websocket", opts: { transports: ["websocket"] } },
  { kind: "upgraded", opts: {} },
];

L.scenarioTest("idle 10 s with pingInterval 3000 / pingTimeout 2000: no disconnect", 45000, async (t, clients) => {
  const { nodes, url } = await L.setup(t, { names: ["n1", "n2", "n3"], backendOpts: { pingInterval: 3000, pingTimeout: 2000 } });
  const sockets = await L.connectClients(clients, PER_KIND * KINDS.length, (i) => L.makeClient(url, KINDS[i % KINDS.length].opts),
    { concurrency: 50, meta: (i) => ({ i, kind: KINDS[i % KINDS.length].kind }) });
  await Promise.all(sockets.map((s, i) => (KINDS[i % KINDS.length].kind === "upgraded" ? L.waitWebsocket(s, 15000) : null)));
  const before = await L.mapLimit(sockets, 50, (s) => L.whoami(s));
  assert.equal(Object.keys(L.tally(before)).length, 3);

  await L.sleep(10000);

  const tr = clients.troubles();
  assert.equal(tr.disconnects, 0, `disconnects while idle: ${JSON.stringify(tr.sample)}`);
  assert.ok(sockets.every((s) => s.connected));
  const after = await L.mapLimit(sockets, 50, (s) => L.whoami(s));
  after.forEach((w, i) => {
    assert.equal(w.sid, before[i].sid, `client ${i} (${KINDS[i % KINDS.length].kind}) kept its session`);
    assert.equal(w.transport, KINDS[i % KINDS.length].kind === "polling" ? "polling" : "websocket");
  });
  const r = await L.runEchoes(sockets, 5);
  assert.equal(r.failures.length, 0, `failed acks: ${JSON.stringify(r.failures.slice(0, 10))}`);
  assert.deepEqual(clients.troubles(), { clients: 0, disconnects: 0, connectErrors: 0, sample: [] });
  await L.assertNoSessionErrors(assert, nodes);
});
