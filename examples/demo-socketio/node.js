#!/usr/bin/env node
//! A demo Socket.IO node for the quick start (`scripts/quickstart.sh` runs two of them behind
//! the gateway, `conf/gateway.yaml` pool `realtime` with `affinity: { socketio: true }`), so
//! the demo page (`examples/demo-site/`) shows Socket.IO through the gateway in a browser.
//!
//!   PORT=3101 NODE_NAME=sio-a node examples/demo-socketio/node.js
//!
//! Env: PORT (default 3101), HOST (listen address, default 127.0.0.1), NODE_NAME (default
//! sio-PORT). To every client on this node: `welcome` ({ node, sid, transport, clients }) on
//! connect and `tick` ({ node, time, clients }) every second. Events (acked): `chat` (text)
//! -> { node, at } after sending `chat` ({ from, node, text, at }) to every client of this
//! node (not of the other nodes: cross-node rooms need an adapter, see
//! examples/socketio-redis), `whoami` -> { node, sid, transport }. `GET /health` -> 200 for
//! the gateway's health check. Prints `node NAME ready on :PORT` once it serves.
//!
//! `socket.io` is resolved the usual way (a `node_modules` next to this file or above it, or
//! NODE_PATH), falling back to the repository's `tests/socketio/node_modules` (`npm ci` there,
//! or `scripts/deps.sh`, installs it).
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

const PORT = Number(process.env.PORT || 3101);
const HOST = process.env.HOST || "127.0.0.1";
const NODE_NAME = process.env.NODE_NAME || `sio-${PORT}`;
const MAX_TEXT = 500;

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

// The page is served by the gateway from the same origin: no CORS, no client served here.
const io = new Server(server, { serveClient: false, maxHttpBufferSize: 16 * 1024 });

io.on("connection", (socket) => {
  socket.emit("welcome", { node: NODE_NAME, sid: socket.conn.id, transport: socket.conn.transport.name, clients: io.engine.clientsCount });
  socket.on("chat", (text, ack) => {
    const msg = { from: socket.id.slice(0, 6), node: NODE_NAME, text: String(text).slice(0, MAX_TEXT), at: Date.now() };
    io.emit("chat", msg);
    if (typeof ack === "function") ack({ node: NODE_NAME, at: msg.at });
  });
  socket.on("whoami", (ack) => {
    if (typeof ack === "function") ack({ node: NODE_NAME, sid: socket.conn.id, transport: socket.conn.transport.name });
  });
});

const ticker = setInterval(() => {
  io.emit("tick", { node: NODE_NAME, time: new Date().toISOString(), clients: io.engine.clientsCount });
}, 1000);

server.on("error", (err) => {
  console.error(`node ${NODE_NAME}: ${err.stack || err}`);
  process.exit(1);
});
server.listen(PORT, HOST, () => console.log(`node ${NODE_NAME} ready on :${PORT}`));

for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => {
    clearInterval(ticker);
    io.close();
    setTimeout(() => process.exit(0), 200).unref();
  });
}
