// 8. The client's real address reaches the nodes: clients connect from 127.0.0.7 (polling
//    through an http.Agent with localAddress, WebSocket through engine.io-client's
//    `localAddress`), and with no trusted proxies the gateway sets X-Forwarded-For to it — on
//    polling handshakes, WebSocket-only handshakes, and the upgrade requests of upgraded
//    sessions.
"use strict";
const assert = require("node:assert/strict");
const http = require("node:http");
const L = require("./lib");

const ADDR = "127.0.0.7";
const PER_KIND = 10;

L.scenarioTest("X-Forwarded-For is the client's address (127.0.0.7) for every transport", 45000, async (t, clients) => {
  const { nodes, url } = await L.setup(t, { names: ["n1", "n2"] });
  // Spoofed X-Forwarded-For from the client must be replaced (no trusted proxies).
  const from = (extra) => ({
    agent: new http.Agent({ keepAlive: false, localAddress: ADDR }),
    localAddress: ADDR,
    extraHeaders: { "x-forwarded-for": "203.0.113.9" },
    ...extra,
  });
  const kinds = [
    { kind: "polling", opts: from({ transports: ["polling"] }) },
    { kind: "websocket", opts: from({ transports: ["websocket"] }) },
    { kind: "upgraded", opts: from({}) },
  ];
  const sockets = await L.connectClients(clients, PER_KIND * kinds.length, (i) => L.makeClient(url, kinds[i % kinds.length].opts), { concurrency: 30 });
  await Promise.all(sockets.map((s, i) => (kinds[i % kinds.length].kind === "upgraded" ? L.waitWebsocket(s, 15000) : null)));
  const who = await L.mapLimit(sockets, 30, (s) => L.whoami(s));
  who.forEach((w, i) => {
    const kind = kinds[i % kinds.length].kind;
    assert.equal(w.headers["x-forwarded-for"], ADDR, `${kind} client ${i}: handshake X-Forwarded-For (headers ${JSON.stringify(w.headers)})`);
    if (kind !== "polling") assert.equal(w.transport, "websocket");
    // A WebSocket-only session's handshake request *is* its WebSocket request; an upgraded
    // session's WebSocket request (carrying the sid) is recorded separately by the node.
    if (kind === "upgraded") {
      assert.ok(w.upgrade_headers, `${kind} client ${i}: upgrade request seen by ${w.node}`);
      assert.equal(w.upgrade_headers["x-forwarded-for"], ADDR, `${kind} client ${i}: upgrade request X-Forwarded-For`);
    }
  });
  assert.equal(Object.keys(L.tally(who)).length, 2);
  const r = await L.runEchoes(sockets, 3);
  assert.equal(r.failures.length, 0, `failed acks: ${JSON.stringify(r.failures.slice(0, 10))}`);
  await L.assertNoSessionErrors(assert, nodes);
});
