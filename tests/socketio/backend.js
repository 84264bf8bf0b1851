#!/usr/bin/env node
// A real Socket.IO server node for the gateway suite.
//
//   node backend.js --port P --name NAME [--path /socket.io/]
//                   [--ping-interval MS --ping-timeout MS] [--eio3]
//
// Events: `echo` (ack(payload)) and `whoami` (ack({ node, sid, transport, headers,
// upgrade_headers, last_request_headers }): the engine sid, the handshake request's headers,
// the WebSocket upgrade request's and the latest polling request's headers). Plain HTTP on the same port, outside the Socket.IO path:
// GET /health -> 200, GET /stats -> { node, connections, connection_errors, handshakes, ... }.
// Prints `ready` on stdout once listening.
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");

function parseArgs(argv) {
  const out = { path: "/socket.io/", eio3: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`missing value for ${a}`);
      return argv[++i];
    };
    switch (a) {
      case "--port": out.port = Number(next()); break;
      case "--name": out.name = next(); break;
      case "--path": out.path = next(); break;
      case "--ping-interval": out.pingInterval = Number(next()); break;
      case "--ping-timeout": out.pingTimeout = Number(next()); break;
      case "--eio3": out.eio3 = true; break;
      default: throw new Error(`unknown argument ${a}`);
    }
  }
  if (!Number.isInteger(out.port) || !out.name) throw new Error("usage: backend.js --port P --name NAME");
  return out;
}

const args = parseArgs(process.argv.slice(2));

const stats = {
  node: args.name,
  connections: 0,          // engine connections open now
  handshakes: 0,           // engine connections ever opened
  connection_errors: {},   // engine.io error code -> count
  error_samples: [],       // a few of them, for diagnostics
  upgrades: 0,             // engine transport upgrades completed
  close_reasons: {},       // engine connection close reason -> count
  http_requests: 0,        // requests under the Socket.IO path (polling + upgrade requests)
  // Code-1 errors for sids this node had issued and already closed, by that close reason:
  // a request of an ended session, not one sent to the wrong node.
  session_unknown_after_close: {},
};
// Sids this node closed -> close reason (bounded), for session_unknown_after_close.
const closedSids = new Map();

// Headers of the WebSocket upgrade request, per engine sid (so a test can check what an
// upgraded or WebSocket-only session's upgrade request carried, e.g. X-Forwarded-For).
const upgradeHeaders = new Map();
// Headers of the latest polling request, per engine sid.
const lastRequestHeaders = new Map();

const server = http.createServer((req, res) => {
  // Only requests outside the Socket.IO path get here (engine.io intercepts its own path).
  const url = new URL(req.url, "http://x");
  if (req.method === "GET" && url.pathname === "/health") {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("OK\n");
    return;
  }
  if (req.method === "GET" && url.pathname === "/stats") {
    stats.connections = io.engine.clientsCount;
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify(stats));
    return;
  }
  res.writeHead(404, { "content-type": "text/plain" });
  res.end("not found\n");
});

function underPath(url) {
  return typeof url === "string" && url.startsWith(args.path);
}

// Seen before engine.io handles them (prepended after engine.io attached itself, since
// attaching replaces the server's "request" listeners).
function countRequests() {
  server.prependListener("request", (req) => {
    if (!underPath(req.url)) return;
    stats.http_requests++;
    try {
      const sid = new URL(req.url, "http://x").searchParams.get("sid");
      if (sid) {
        lastRequestHeaders.set(sid, { ...req.headers });
        if (lastRequestHeaders.size > 10000) lastRequestHeaders.delete(lastRequestHeaders.keys().next().value);
      }
    } catch (_) { /* ignore */ }
  });
}
server.prependListener("upgrade", (req) => {
  if (!underPath(req.url)) return;
  stats.http_requests++;
  try {
    const sid = new URL(req.url, "http://x").searchParams.get("sid");
    if (sid) {
      upgradeHeaders.set(sid, { ...req.headers });
      if (upgradeHeaders.size > 10000) upgradeHeaders.delete(upgradeHeaders.keys().next().value);
    }
  } catch (_) { /* ignore */ }
});

const opts = {
  path: args.path,
  allowEIO3: args.eio3,
  serveClient: false,
  // No CORS needed: Node clients.
};
if (args.pingInterval) opts.pingInterval = args.pingInterval;
if (args.pingTimeout) opts.pingTimeout = args.pingTimeout;

const io = new Server(server, opts);
countRequests();

io.engine.on("connection", (conn) => {
  stats.handshakes++;
  conn.on("upgrade", () => { stats.upgrades++; });
  conn.on("close", (reason) => { stats.close_reasons[reason] = (stats.close_reasons[reason] || 0) + 1; });
  conn.on("close", () => { upgradeHeaders.delete(conn.id); lastRequestHeaders.delete(conn.id); });
  conn.on("close", (reason) => {
    closedSids.set(conn.id, reason);
    if (closedSids.size > 20000) closedSids.delete(closedSids.keys().next().value);
  });
});

io.engine.on("connection_error", (err) => {
  const code = err && err.code !== undefined ? String(err.code) : "unknown";
  stats.connection_errors[code] = (stats.connection_errors[code] || 0) + 1;
  const closedAs = code === "1" && err.context && closedSids.get(err.context.sid);
  if (closedAs) stats.session_unknown_after_close[closedAs] = (stats.session_unknown_after_close[closedAs] || 0) + 1;
  if (stats.error_samples.length < 20) {
    stats.error_samples.push({
      code,
      message: err && err.message,
      url: err && err.req && err.req.url,
      method: err && err.req && err.req.method,
      context: err && err.context,
    });
  }
});

io.on("connection", (socket) => {
  socket.on("echo", (payload, ack) => {
    if (typeof ack === "function") ack(payload);
  });
  socket.on("whoami", (ack) => {
    if (typeof ack !== "function") return;
    ack({
      node: args.name,
      sid: socket.conn.id,
      transport: socket.conn.transport.name,
      headers: socket.handshake.headers,
      upgrade_headers: upgradeHeaders.get(socket.conn.id) || null,
      last_request_headers: lastRequestHeaders.get(socket.conn.id) || null,
    });
  });
});

server.on("error", (err) => {
  console.error(`backend ${args.name}: ${err.stack || err}`);
  process.exit(1);
});

server.listen(args.port, "127.0.0.1", () => {
  process.stdout.write("ready\n");
});

for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => {
    io.close();
    server.close();
    process.exit(0);
  });
}
