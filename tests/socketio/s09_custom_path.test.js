// 9. A custom Socket.IO path end to end: nodes serve /my-custom-path/, the gateway routes it
//    with `affinity: { socketio: { path: /my-custom-path/ } }`; sids are tagged and routed on
//    that path (polling and upgraded clients, all acks, zero code 1/3), while the default
//    /socket.io/ path is not routed at all (404).
"use strict";
const assert = require("node:assert/strict");
const L = require("./lib");

const PATH = "/my-custom-path/";
const CLIENTS = 60;

L.scenarioTest("custom path /my-custom-path/ end to end; /socket.io/ is 404", 45000, async (t, clients) => {
  const { nodes, url, port, tags } = await L.setup(t, {
    names: ["n1", "n2", "n3"],
    backendOpts: { path: PATH },
    routePrefix: PATH,
    affinity: `{ socketio: { path: ${PATH} } }`,
  });

  const sockets = await L.connectClients(clients, CLIENTS, (i) => L.makeClient(url, { path: PATH, ...(i % 2 ? {} : { transports: ["polling"] }) }), { concurrency: 50 });
  await Promise.all(sockets.map((s, i) => (i % 2 ? L.waitWebsocket(s, 15000) : null)));
  const who = await L.mapLimit(sockets, 50, (s) => L.whoami(s));
  assert.equal(Object.keys(L.tally(who)).length, 3, `distribution ${JSON.stringify(L.tally(who))}`);
  who.forEach((w, i) => {
    assert.equal(w.transport, i % 2 ? "websocket" : "polling");
    assert.equal(L.engineId(sockets[i]), `${w.sid}.${tags[w.node]}`, `client ${i}: sid tagged on the custom path`);
  });
  const r = await L.runEchoes(sockets, 10);
  assert.equal(r.failures.length, 0, `failed acks: ${JSON.stringify(r.failures.slice(0, 10))}`);
  assert.deepEqual(clients.troubles(), { clients: 0, disconnects: 0, connectErrors: 0, sample: [] });

  // The default path is not routed: plain HTTP gets 404, and a client on it fails to connect.
  const res = await L.httpRequest({ port, path: "/socket.io/?EIO=4&transport=polling" });
  assert.equal(res.status, 404, `GET /socket.io/ -> ${res.status} ${res.body}`);
  const wrong = L.makeClient(url, { reconnection: false, transports: ["polling"], timeout: 5000 });
  const rec = clients.add(wrong, { wrongPath: true });
  const err = await L.withTimeout(new Promise((resolve) => { wrong.once("connect", () => resolve(null)); wrong.once("connect_error", resolve); wrong.connect(); }), 8000, "client on /socket.io/");
  assert.ok(err instanceof Error, "a client on the default path gets connect_error");
  assert.equal(wrong.connected, false);
  assert.equal(rec.connects, 0);

  await L.assertNoSessionErrors(assert, nodes);
  const st = await L.allStats(nodes);
  assert.equal(st.reduce((a, s) => a + s.handshakes, 0), CLIENTS, "no handshake from the default-path client reached a node");
});
