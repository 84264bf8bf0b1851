// 5. Binary upgrade in the middle of polling sessions: 50 polling clients keep emitting
//    through gateway A; gateway B starts with the same config and -u, A gets SIGQUIT, hands
//    its listening sockets over and drains. Sessions live on the nodes, so B routes their
//    tagged sids like A did: zero code 1/3, every ack after the upgrade arrives (a client
//    whose in-flight long-poll is cut when A exits may reconnect), A exits within
//    grace_period + graceful_shutdown_timeout.
"use strict";
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const L = require("./lib");

const CLIENTS = 50;
const GRACE_S = 5, SHUTDOWN_S = 5;

L.scenarioTest("binary upgrade (-u + SIGQUIT) during polling sessions", 75000, async (t, clients) => {
  const { nodes, gw: a, url, dir } = await L.setup(t, { names: ["n1", "n2", "n3"], label: "gwA" });
  const sockets = await L.connectClients(clients, CLIENTS, () => L.makeClient(url, { transports: ["polling"] }), { concurrency: 50 });
  const who = await L.mapLimit(sockets, 50, (s) => L.whoami(s));
  assert.equal(Object.keys(L.tally(who)).length, 3);

  // Background load: every client emits in a loop until stopped.
  const log = [];
  let running = true;
  const load = Promise.all(sockets.map(async (s, i) => {
    let k = 0;
    while (running) {
      const started = Date.now();
      const payload = { tag: "bg", i, k };
      try {
        const res = await L.emitAck(s, "echo", payload, 10000);
        log.push({ started, ok: res && res.i === i && res.k === k, error: res && res.i === i && res.k === k ? undefined : `wrong ack ${JSON.stringify(res)}` });
      } catch (e) {
        log.push({ started, ok: false, error: e.message });
      }
      k++;
      await L.sleep(100);
    }
  }));
  await L.sleep(1000);

  // The new process, same config file, waiting for the sockets.
  const sock = path.join(dir, "gw_upgrade.sock");
  const b = await L.startGateway(t, { dir, port: a.port, adminPort: a.adminPort, configFile: a.file, upgrade: true, wait: false, label: "gwB" });
  await L.eventually(() => fs.existsSync(sock) || b.proc.exitCode !== null, 15000, "gwB waiting on upgrade_sock");
  assert.equal(b.proc.exitCode, null, `gwB exited early:\n${b.log.tail(30)}`);

  const quitAt = Date.now();
  a.proc.kill("SIGQUIT");
  const aExit = await L.withTimeout(a.proc.exited, (GRACE_S + SHUTDOWN_S + 5) * 1000, "old gateway exit after SIGQUIT");
  const aExitedAt = Date.now();
  t.diagnostic(`old gateway exited ${aExitedAt - quitAt} ms after SIGQUIT (${JSON.stringify(aExit)})`);
  assert.ok(aExitedAt - quitAt <= (GRACE_S + SHUTDOWN_S + 2) * 1000, "old process drains within grace + shutdown timeouts");
  assert.equal(b.proc.exitCode, null, `new gateway alive:\n${b.log.tail(30)}`);

  // B serves the admin listener too.
  await L.eventually(async () => (await b.status()).pid === b.proc.pid, 10000, "admin /status answered by gwB");

  // Keep emitting after the upgrade for a while, then stop the background load.
  await L.sleep(3000);
  running = false;
  await L.withTimeout(load, 20000, "background load to stop");

  // Every client is (again) connected, through B, and acks.
  await L.eventually(() => sockets.every((s) => s.connected), 10000, "all clients connected after the upgrade");
  const r = await L.runEchoes(sockets, 5, { tag: "after" });
  assert.equal(r.failures.length, 0, `failed acks after the upgrade: ${JSON.stringify(r.failures.slice(0, 10))}`);
  assert.equal(r.acked, CLIENTS * 5);

  const during = log.filter((x) => x.started >= quitAt && x.started < aExitedAt);
  const afterUp = log.filter((x) => x.started >= aExitedAt);
  const before = log.filter((x) => x.started < quitAt);
  const fails = (xs) => xs.filter((x) => !x.ok);
  const tr = clients.troubles();
  t.diagnostic(`emits before/during/after hand-over: ${before.length}/${during.length}/${afterUp.length}, failed ${fails(before).length}/${fails(during).length}/${fails(afterUp).length}; clients that reconnected: ${tr.clients} (${tr.disconnects} disconnects: ${JSON.stringify(tr.sample.map((s) => s.disconnects.map((d) => d.reason)))})`);
  assert.equal(fails(before).length, 0, `acks before the upgrade: ${JSON.stringify(fails(before).slice(0, 5))}`);
  assert.ok(afterUp.length > 0, "emits after the upgrade");
  assert.equal(fails(afterUp).length, 0, `acks of emits after the upgrade: ${JSON.stringify(fails(afterUp).slice(0, 5))}`);
  await L.assertNoSessionErrors(assert, nodes);
});
