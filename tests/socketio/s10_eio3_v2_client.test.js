// 10. Engine.IO v3: socket.io-client@2 (npm alias socket.io-client-v2) against nodes with
//     allowEIO3. The EIO3 handshake body is length-prefixed ("97:0{...}2:40"): the gateway
//     must tag the sid and fix the prefix, or the v2 client cannot parse it. 20 clients with
//     default transports (polling, then upgrade) plus 10 polling-only over 2 nodes: all
//     upgrade where they should, all acks, zero code 1/3.
"use strict";
const assert = require("node:assert/strict");
const ioV2 = require("socket.io-client-v2");
const L = require("./lib");

const UPGRADED = 20;
const POLLING = 10;

function v2Client(url, opts = {}) {
  return ioV2(url, { forceNew: true, autoConnect: false, timeout: 10000, reconnectionDelay: 500, reconnectionDelayMax: 1000, ...opts });
}

L.scenarioTest("EIO3: socket.io-client@2 through the gateway, polling then upgrade", 45000, async (t, clients) => {
  const { nodes, url, tags } = await L.setup(t, { names: ["n1", "n2"], backendOpts: { eio3: true } });
  const n = UPGRADED + POLLING;
  const sockets = await L.connectClients(clients, n, (i) => v2Client(url, i < UPGRADED ? {} : { transports: ["polling"] }), { concurrency: 30 });
  for (const s of sockets) assert.equal(String(s.io.engine.transport.query.EIO), "3", "EIO3 client");
  await Promise.all(sockets.slice(0, UPGRADED).map((s) => L.waitWebsocket(s, 15000)));

  const who = await L.mapLimit(sockets, 30, (s) => L.whoami(s));
  assert.equal(Object.keys(L.tally(who)).length, 2, `distribution ${JSON.stringify(L.tally(who))}`);
  who.forEach((w, i) => {
    assert.equal(w.transport, i < UPGRADED ? "websocket" : "polling", `client ${i} on ${w.node}`);
    assert.equal(L.engineId(sockets[i]), `${w.sid}.${tags[w.node]}`, `client ${i}: EIO3 sid tagged`);
  });

  const r = await L.runEchoes(sockets, 10);
  assert.equal(r.failures.length, 0, `failed acks: ${JSON.stringify(r.failures.slice(0, 10))}`);
  assert.equal(r.acked, n * 10);
  assert.deepEqual(clients.troubles(), { clients: 0, disconnects: 0, connectErrors: 0, sample: [] });
  await L.assertNoSessionErrors(assert, nodes);
});
