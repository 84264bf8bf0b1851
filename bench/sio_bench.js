#!/usr/bin/env node
// Socket.IO polling round-trip load for bench/run.sh.
//
//   node bench/sio_bench.js --url http://127.0.0.1:P --clients 20 --duration 8 [--emits 20]
//                           [--stats http://127.0.0.1:B1/stats,http://127.0.0.1:B2/stats]
//
// Each of `clients` workers repeats until the deadline: a polling-only Socket.IO connect
// (engine.io handshake + namespace connect), `emits` acked `echo` emits one after another
// (each a polling round trip: a POST carrying the event, the ack arriving on the pending
// long-poll GET), then a disconnect. Prints one JSON line:
//   {"sessions","round_trips","seconds","rt_per_s","p50_us","p99_us","errors","http_requests"}
// `http_requests` is the delta of the backends' /stats http_requests (requests under the
// Socket.IO path, summed over the listed nodes) over the run, when --stats is given.
"use strict";
const path = require("node:path");
const http = require("node:http");
const { io } = require(path.resolve(__dirname, "../tests/socketio/node_modules/socket.io-client"));

function args() {
  const a = { clients: 20, duration: 8, emits: 20, stats: [] };
  const v = process.argv.slice(2);
  for (let i = 0; i < v.length; i++) {
    const next = () => v[++i];
    switch (v[i]) {
      case "--url": a.url = next(); break;
      case "--clients": a.clients = Number(next()); break;
      case "--duration": a.duration = parseFloat(next()); break;
      case "--emits": a.emits = Number(next()); break;
      case "--stats": a.stats = next().split(",").filter(Boolean); break;
      default: throw new Error(`unknown argument ${v[i]}`);
    }
  }
  if (!a.url) throw new Error("--url is required");
  return a;
}

function getJson(url) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent: false }, (res) => {
      let b = "";
      res.on("data", (c) => (b += c));
      res.on("end", () => { try { resolve(JSON.parse(b)); } catch (e) { reject(e); } });
    });
    req.setTimeout(5000, () => req.destroy(new Error("stats timeout")));
    req.on("error", reject);
  });
}

async function requests(urls) {
  let n = 0;
  for (const u of urls) n += (await getJson(u)).http_requests || 0;
  return n;
}

function connect(url) {
  return new Promise((resolve, reject) => {
    const s = io(url, { transports: ["polling"], forceNew: true, reconnection: false, timeout: 10000 });
    const t = setTimeout(() => { s.close(); reject(new Error("connect timeout")); }, 10000);
    s.once("connect", () => { clearTimeout(t); resolve(s); });
    s.once("connect_error", (e) => { clearTimeout(t); s.close(); reject(e); });
  });
}

async function main() {
  const a = args();
  const payload = { msg: "x".repeat(32) };
  const lat = [];
  let sessions = 0, errors = 0;
  const errSamples = [];
  const before = a.stats.length ? await requests(a.stats) : 0;
  const start = process.hrtime.bigint();
  const deadline = start + BigInt(Math.round(a.duration * 1e9));
  let end = start;
  async function worker() {
    while (process.hrtime.bigint() < deadline) {
      let s;
      try {
        s = await connect(a.url);
        sessions++;
        for (let i = 0; i < a.emits && process.hrtime.bigint() < deadline; i++) {
          const t0 = process.hrtime.bigint();
          const r = await s.timeout(5000).emitWithAck("echo", payload);
          const t1 = process.hrtime.bigint();
          if (!r || r.msg !== payload.msg) throw new Error("bad echo");
          lat.push(Number(t1 - t0) / 1000);
          if (t1 > end) end = t1;
        }
      } catch (e) {
        errors++;
        if (errSamples.length < 5) errSamples.push(String(e && e.message || e));
        await new Promise((r) => setTimeout(r, 50));
      } finally {
        if (s) s.close();
      }
    }
  }
  await Promise.all(Array.from({ length: a.clients }, worker));
  const after = a.stats.length ? await requests(a.stats) : 0;
  for (const e of errSamples) process.stderr.write(`sio_bench: error: ${e}\n`);
  lat.sort((x, y) => x - y);
  const pct = (p) => (lat.length ? Math.round(lat[Math.min(lat.length - 1, Math.round((lat.length - 1) * p))]) : 0);
  const secs = Math.max(1e-9, Number(end - start) / 1e9);
  console.log(JSON.stringify({
    sessions, round_trips: lat.length, seconds: Math.round(secs * 1000) / 1000,
    rt_per_s: Math.round(lat.length / secs), p50_us: pct(0.5), p99_us: pct(0.99), errors,
    http_requests: after - before,
  }));
  setTimeout(() => process.exit(0), 200).unref();
}

main().catch((e) => { console.error(e); process.exit(1); });
