// 13. Socket.IO over HTTPS: the gateway terminates TLS (certificate signed by a CA made at test
//     time with the openssl CLI) in front of 2 plain nodes. 20 clients trusting the CA (`ca`)
//     and 20 with `rejectUnauthorized: false` connect with default transports, end on
//     websocket (wss through the gateway), and every ack arrives; the nodes see
//     X-Forwarded-Proto https and no session errors.
"use strict";
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const { execFileSync } = require("node:child_process");
const L = require("./lib");

function makePki(dir) {
  const run = (args) => execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "pipe", "pipe"] });
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  run(["req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=gateway test CA"]);
  run(["req", ...ec, "-keyout", "site.key", "-out", "site.csr", "-subj", "/CN=localhost"]);
  fs.writeFileSync(path.join(dir, "ext.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n");
  run(["x509", "-req", "-in", "site.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "site.pem", "-days", "2", "-extfile", "ext.cnf"]);
  return { ca: fs.readFileSync(path.join(dir, "ca.pem")), cert: path.join(dir, "site.pem"), key: path.join(dir, "site.key") };
}

L.scenarioTest("https: Socket.IO through TLS termination, with ca and with rejectUnauthorized: false", 60000, async (t, clients) => {
  const dir = L.tmpDir("https");
  const pki = makePki(dir);
  const nodes = await L.startBackends(t, ["n1", "n2"]);
  const [port, adminPort] = await L.freePorts(2);
  const plain = L.gatewayConfig({ dir, port, adminPort, nodes, affinity: "{ socketio: true }" });
  const listener = `listeners: [ { address: "127.0.0.1:${port}" } ]`;
  assert.ok(plain.includes(listener));
  const configText = plain.replace(listener, [
    "listeners:",
    `  - address: "127.0.0.1:${port}"`,
    "    http2: true",
    `    tls: { certificates: [ { cert: "${pki.cert}", key: "${pki.key}" } ] }`,
  ].join("\n"));
  await L.startGateway(t, { dir, port, adminPort, configText, label: "gw" });
  const url = `https://127.0.0.1:${port}`;

  const withCa = await L.connectClients(clients, 20, () => L.makeClient(url, { ca: pki.ca }), { concurrency: 20 });
  const insecure = await L.connectClients(clients, 20, () => L.makeClient(url, { rejectUnauthorized: false }), { concurrency: 20 });
  const all = [...withCa, ...insecure];
  await L.mapLimit(all, 40, (s) => L.waitWebsocket(s));
  const who = await L.mapLimit(all, 40, (s) => L.whoami(s));
  for (const w of who) {
    assert.equal(w.transport, "websocket", "upgraded to wss through the gateway");
    const h = w.headers || {};
    assert.equal(h["x-forwarded-proto"], "https", JSON.stringify(h));
  }
  assert.equal(Object.keys(L.tally(who)).length, 2, "both nodes serve sessions");

  const r = await L.runEchoes(all, 10, { concurrency: 40 });
  assert.equal(r.failures.length, 0, `failed acks: ${JSON.stringify(r.failures.slice(0, 10))}`);
  assert.equal(r.acked, 400);

  // A client that does not trust the CA is refused by its own TLS check.
  const untrusted = L.makeClient(url, { transports: ["polling"], reconnection: false });
  const err = await new Promise((resolve) => { untrusted.on("connect_error", resolve); untrusted.on("connect", () => resolve(null)); untrusted.connect(); });
  untrusted.close();
  assert.ok(err, "a client without the CA must not connect");

  await L.assertNoSessionErrors(assert, nodes);
});
