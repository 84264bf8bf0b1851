//! 14. Cross-node rooms (examples/socketio-redis): three example nodes with the Redis adapter
//!     and a real redis-server, behind the gateway started from the example's own
//!     gateway.yaml (addresses swapped for free ports). 33 clients on all 3 nodes, 30 join
//!     room "r": a broadcast from a client on each node reaches every member on every node,
//!     and none of the 3 non-members (one per node). CONTROL: the same nodes without the
//!     adapter deliver only to the broadcaster's own node, so the first test can fail.
"use strict";
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const L = require("./lib");

const EXAMPLE = path.resolve(__dirname, "../../examples/socketio-redis");
const CLIENTS = 33;
const ROOM = "r";

/** Replaces `from` with `to` in `text`, failing if the example no longer contains `from`. */
function swap(text, from, to) {
  assert.ok(text.includes(from), `examples/socketio-redis/gateway.yaml no longer contains ${from}`);
  return text.split(from).join(to);
}

/** The example's gateway.yaml with its listener, admin, node addresses and paths made local to this test. */
function exampleConfig(dir, port, adminPort, nodes) {
  let text = fs.readFileSync(path.join(EXAMPLE, "gateway.yaml"), "utf8");
  text = swap(text, "127.0.0.1:8080", `127.0.0.1:${port}`);
  text = swap(text, "127.0.0.1:9901", `127.0.0.1:${adminPort}`);
  nodes.forEach((n, i) => { text = swap(text, `127.0.0.1:${3000 + i}`, n.address); });
  text = swap(text, "/tmp/gateway-socketio-redis.pid", path.join(dir, "gw.pid"));
  text = swap(text, "/tmp/gateway-socketio-redis.sock", path.join(dir, "gw_upgrade.sock"));
  return text;
}

/** Starts the example's node.js (`redisUrl`: the adapter's Redis, or "none"). */
async function startExampleNode(t, name, redisUrl) {
  const port = await L.freePort();
  const n = await L.startProcess(t, {
    cmd: process.execPath,
    args: [path.join(EXAMPLE, "node.js")],
    env: { PORT: String(port), NODE_NAME: name, REDIS_URL: redisUrl },
    ready: `node ${name} ready`,
    label: `example node ${name}`,
  });
  // Shaped like lib's backend nodes for the failure diagnostics (no /stats on the example).
  return { ...n, name, port, address: `127.0.0.1:${port}`, stats: async () => ({ note: "example node" }) };
}

/**
 * Redis (unless `redis` is false), 3 example nodes and the example's gateway; 33 connected
 * clients on WebSocket with their node, the 30 room members (every node has members) and one
 * non-member per node. Every client records the `message` events it receives.
 */
async function cluster(t, clients, { redis }) {
  const r = redis ? await L.startRedis(t) : null;
  const nodes = await Promise.all(["n1", "n2", "n3"].map((name) => startExampleNode(t, name, r ? r.url : "none")));
  L.registerDiagnostics(null, nodes);
  const dir = L.tmpDir("redis-rooms");
  const [port, adminPort] = await L.freePorts(2);
  const gw = await L.startGateway(t, { dir, port, adminPort, configText: exampleConfig(dir, port, adminPort, nodes), label: "gw" });
  // The health check (every 2 s in the example) has marked every node up before traffic.
  await L.eventually(async () => (await gw.status()).pools.realtime.healthy === 3, 10000, "3 healthy nodes");

  const url = `http://127.0.0.1:${port}`;
  const sockets = await L.connectClients(clients, CLIENTS, () => L.makeClient(url), { concurrency: 33 });
  await Promise.all(sockets.map((s) => L.waitWebsocket(s, 15000)));
  const inbox = new Map(sockets.map((s) => [s, []]));
  for (const s of sockets) s.on("message", (m) => inbox.get(s).push(m));
  const who = await L.mapLimit(sockets, 33, (s) => L.whoami(s));
  const dist = L.tally(who);
  assert.deepEqual(Object.keys(dist).sort(), ["n1", "n2", "n3"], `clients on every node: ${JSON.stringify(dist)}`);

  const nodeOf = new Map(sockets.map((s, i) => [s, who[i].node]));
  const outsiders = ["n1", "n2", "n3"].map((n) => sockets.find((s) => nodeOf.get(s) === n));
  const members = sockets.filter((s) => !outsiders.includes(s));
  const joined = await L.mapLimit(members, 33, (s) => L.emitAck(s, "join", ROOM));
  joined.forEach((j, k) => assert.deepEqual(j, { node: nodeOf.get(members[k]), room: ROOM }));
  for (const n of ["n1", "n2", "n3"]) assert.ok(members.some((s) => nodeOf.get(s) === n), `room members on ${n}`);
  return { gw, nodes, sockets, members, outsiders, nodeOf, inbox };
}

/** Who got `msg`: { got: members with it, missing: members without it, leaked: outsiders with it }. */
function delivery({ members, outsiders, inbox }, msg) {
  const has = (s) => inbox.get(s).some((m) => m.msg === msg);
  return { got: members.filter(has), missing: members.filter((s) => !has(s)), leaked: outsiders.filter(has) };
}

L.scenarioTest("redis adapter: a room broadcast reaches members on every node, and only them", 45000, async (t, clients) => {
  const c = await cluster(t, clients, { redis: true });
  const { members, nodeOf } = c;

  for (const from of ["n1", "n2", "n3"]) {
    const sender = members.find((s) => nodeOf.get(s) === from);
    const msg = `hello from ${from} ${Date.now()}`;
    assert.deepEqual(await L.emitAck(sender, "broadcast", { room: ROOM, msg }), { node: from, room: ROOM });
    await L.eventually(() => delivery(c, msg).missing.length === 0, 5000, `every member got the broadcast from ${from}`).catch((e) => {
      const d = delivery(c, msg);
      throw new Error(`${e.message}: ${d.missing.length}/${members.length} missing, on nodes ${JSON.stringify(L.tally(d.missing.map((s) => ({ node: nodeOf.get(s) }))))}`);
    });
    // A stray copy would have arrived with the others; give it a little longer anyway.
    await L.sleep(300);
    const d = delivery(c, msg);
    assert.equal(d.leaked.length, 0, `non-members got it, on ${d.leaked.map((s) => nodeOf.get(s))}`);
    // Exactly once per member (Redis fan-out plus a local emit must not double deliver).
    for (const s of members) assert.equal(c.inbox.get(s).filter((m) => m.msg === msg).length, 1);
    for (const s of members) assert.equal(c.inbox.get(s).find((m) => m.msg === msg).from, from);
  }
  t.diagnostic(`members per node ${JSON.stringify(L.tally(members.map((s) => ({ node: nodeOf.get(s) }))))}`);
  assert.deepEqual(clients.troubles(), { clients: 0, disconnects: 0, connectErrors: 0, sample: [] });
});

L.scenarioTest("CONTROL: without the redis adapter a broadcast stays on the sender's node", 45000, async (t, clients) => {
  const c = await cluster(t, clients, { redis: false });
  const { members, nodeOf } = c;
  const sender = members.find((s) => nodeOf.get(s) === "n1");
  const msg = `local only ${Date.now()}`;
  await L.emitAck(sender, "broadcast", { room: ROOM, msg });
  const local = members.filter((s) => nodeOf.get(s) === "n1");
  await L.eventually(() => local.every((s) => c.inbox.get(s).some((m) => m.msg === msg)), 5000, "n1's members got it");
  await L.sleep(1000);
  const d = delivery(c, msg);
  const remote = d.got.filter((s) => nodeOf.get(s) !== "n1");
  assert.equal(remote.length, 0, "members on other nodes got a node-local broadcast");
  assert.ok(d.missing.length > 0 && d.missing.every((s) => nodeOf.get(s) !== "n1"), "other nodes' members miss it");
  t.diagnostic(`${d.missing.length} members on n2/n3 missed the broadcast without Redis`);
});
