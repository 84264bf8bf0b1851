// 12. WebSocket churn: 1000 short WebSocket-only sessions (connect, one acked emit, close)
//     through the gateway, 50 at a time. Every one must connect and ack on its first try
//     (reconnection off): a gateway that occasionally drops a freshly upgraded connection
//     shows up here reliably instead of as a rare flake in the bigger scenarios.
"use strict";
const assert = require("node:assert/strict");
const L = require("./lib");

const SESSIONS = 1000;

L.scenarioTest("websocket churn: 1000 short websocket-only sessions, none dropped", 60000, async (t, clients) => {
  const { nodes, url } = await L.setup(t, { names: ["n1", "n2"] });
  const failures = [];
  await L.mapLimit(Array.from({ length: SESSIONS }, (_, i) => i), 50, async (i) => {
    const s = L.makeClient(url, { transports: ["websocket"], reconnection: false, timeout: 5000 });
    const rec = clients.add(s, { i });
    try {
      await L.withTimeout(new Promise((resolve, reject) => {
        s.once("connect", resolve);
        s.once("connect_error", (e) => reject(new Error(`connect_error: ${e.message}${e.description ? ` (${e.description.message || e.description})` : ""}`)));
        s.once("disconnect", (r) => reject(new Error(`disconnect before connect: ${r}`)));
        s.connect();
      }), 8000, "connect");
      const res = await L.emitAck(s, "echo", { i }, 5000);
      assert.equal(res.i, i);
      if (rec.disconnects.length) throw new Error(`disconnected: ${JSON.stringify(rec.disconnects)}`);
    } catch (e) {
      failures.push({ i, error: e.message });
    } finally {
      s.disconnect();
    }
  });
  const st = await L.allStats(nodes);
  t.diagnostic(`node close reasons ${JSON.stringify(st.map((s) => [s.node, s.handshakes, s.close_reasons]))}`);
  assert.equal(failures.length, 0, `${failures.length}/${SESSIONS} WebSocket sessions failed through the gateway, e.g. ${JSON.stringify(failures.slice(0, 5))}`);
  await L.assertNoSessionErrors(assert, nodes);
});
