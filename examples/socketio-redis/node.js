#!/usr/bin/env node
//! One Socket.IO node of the cross-node rooms example: the Socket.IO docs' multi-node recipe
//! (`@socket.io/redis-adapter` on the `redis` client), meant to run as N copies behind the
//! gateway with `affinity: { socketio: true }`. The gateway keeps every request of a session on
//! the node that owns it; Redis fans room broadcasts out to the other nodes.
//!
//!   PORT=3000 NODE_NAME=n1 REDIS_URL=redis://127.0.0.1:6379 node node.js
//!
//! Env: PORT (default 3000), HOST (listen address, default 127.0.0.1), NODE_NAME (default node-PORT), REDIS_URL (default
//! redis://127.0.0.1:6379; `none` runs without the adapter, i.e. rooms stay node-local: what
//! breaks without Redis). Events (all acked): `join` (room) -> { node, room }, `broadcast`
//! ({ room, msg }) -> { node, room } after emitting `message` ({ from, room, msg }) to the
//! room on every node, `whoami` -> { node, sid, transport }. `GET /health` -> 200 for the
//! gateway's health check. Prints `node NAME ready on :PORT` once it serves.
//!
//! Modules: `socket.io`, `@socket.io/redis-adapter` and `redis` are resolved the usual way
//! (a `node_modules` next to this file or above it, or NODE_PATH), falling back to the
//! repository's `tests/socketio/node_modules` (`npm ci` there installs them).
"use strict";

const http = require("node:http");
const path = require("node:path");
const { createRequire } = require("node:module");

/** Requires `name` normally, else from tests/socketio (where the repository pins it). */
function load(name) {
  try {
    return require(name);
  } catch (e) {
    if (e.code !== "MODULE_NOT_FOUND") throw e;
    return createRequire(path.join(__dirname, "../../tests/socketio/package.json"))(name);
  }
}

const { Server } = load("socket.io");

const PORT = Number(process.env.PORT || 3000);
const HOST = process.env.HOST || "127.0.0.1";
const NODE_NAME = process.env.NODE_NAME || `node-${PORT}`;
const REDIS_URL = process.env.REDIS_URL || "redis://127.0.0.1:6379";

const server = http.createServer((req, res) => {
  // Only requests outside /socket.io/ get here.
  if (req.method === "GET" && req.url === "/health") {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("OK\n");
    return;
  }
  res.writeHead(404, { "content-type": "text/plain" });
  res.end("not found\n");
});

const io = new Server(server, { serveClient: false });

io.on("connection", (socket) => {
  socket.on("join", (room, ack) => {
    socket.join(String(room));
    if (typeof ack === "function") ack({ node: NODE_NAME, room: String(room) });
  });
  socket.on("broadcast", (payload, ack) => {
    const room = String(payload && payload.room);
    // With the Redis adapter this reaches the room's members on every node.
    io.to(room).emit("message", { from: NODE_NAME, room, msg: payload && payload.msg });
    if (typeof ack === "function") ack({ node: NODE_NAME, room });
  });
  socket.on("whoami", (ack) => {
    if (typeof ack === "function") ack({ node: NODE_NAME, sid: socket.conn.id, transport: socket.conn.transport.name });
  });
});

/** Connects the two Redis clients the adapter needs (one publishes, one subscribes). */
async function useRedis() {
  const { createClient } = load("redis");
  const { createAdapter } = load("@socket.io/redis-adapter");
  const pubClient = createClient({ url: REDIS_URL });
  const subClient = pubClient.duplicate();
  for (const [label, c] of [["pub", pubClient], ["sub", subClient]]) {
    // Without a listener an `error` event would end the process on a Redis hiccup.
    c.on("error", (err) => console.error(`node ${NODE_NAME}: redis ${label}: ${err.message}`));
  }
  await Promise.all([pubClient.connect(), subClient.connect()]);
  io.adapter(createAdapter(pubClient, subClient));
  return [pubClient, subClient];
}

async function main() {
  const redis = REDIS_URL === "none" ? [] : await useRedis();
  server.on("error", (err) => {
    console.error(`node ${NODE_NAME}: ${err.stack || err}`);
    process.exit(1);
  });
  await new Promise((resolve) => server.listen(PORT, HOST, resolve));
  console.log(`node ${NODE_NAME} ready on :${PORT} (${redis.length ? `redis adapter, ${REDIS_URL}` : "in-memory adapter"})`);
  for (const sig of ["SIGTERM", "SIGINT"]) {
    process.on(sig, () => {
      io.close();
      for (const c of redis) c.quit().catch(() => {});
      setTimeout(() => process.exit(0), 500).unref();
    });
  }
}

main().catch((err) => {
  console.error(`node ${NODE_NAME}: ${err.stack || err}`);
  process.exit(1);
});
