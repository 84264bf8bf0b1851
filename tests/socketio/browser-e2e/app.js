// The s18 end-to-end page: connects to the gateway it was served from with the real
// socket.io-client bundle (polling handshake, then WebSocket), sends acked `echo` + `whoami`
// messages one after the other, and reports what happened in `window.__result` (the test polls
// it) and on the page (the screenshot). `window.__e2e` lets the test run more rounds and keep a
// message loop going while it upgrades the gateway.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const logLines = [];
  const log = (line) => {
    logLines.push(`${new Date().toISOString().slice(11, 23)} ${line}`);
    if (logLines.length > 400) logLines.shift();
    $("log").textContent = logLines.join("\n");
    $("log").scrollTop = $("log").scrollHeight;
  };

  const nav = performance.getEntriesByType("navigation")[0];
  $("protocol").textContent = nav ? nav.nextHopProtocol : "?";

  // `retries` + `ackTimeout`: an emit whose ack was lost with a dropped connection is sent
  // again once the client has reconnected (Socket.IO's at-least-once delivery); echo and
  // whoami are idempotent.
  const socket = io({ retries: 10, ackTimeout: 3000, reconnectionDelay: 200, reconnectionDelayMax: 1000 });
  const state = {
    connects: 0, disconnects: [], connectErrors: [], upgrades: [], acks: [], failures: [],
  };
  const engine = () => socket.io.engine;
  const transport = () => (engine() && engine().transport ? engine().transport.name : null);
  const show = () => {
    $("conn").textContent = socket.connected ? "connected" : "disconnected";
    $("conn").className = socket.connected ? "ok" : "bad";
    $("transport").textContent = transport() || "-";
    $("sid").textContent = (engine() && engine().id) || "-";
    $("acked").textContent = String(state.acks.length);
    $("reconnects").textContent = String(Math.max(0, state.connects - 1));
  };
  socket.io.on("open", () => {
    const e = engine();
    log(`engine open ${e.id} (${e.transport.name})`);
    e.on("upgrade", (t) => { state.upgrades.push({ at: Date.now(), sid: e.id, to: t.name }); log(`upgraded to ${t.name}`); show(); });
    e.on("upgradeError", (err) => log(`upgrade error: ${err && err.message}`));
    show();
  });
  socket.on("connect", () => { state.connects++; log(`connected, sid ${engine().id}`); show(); });
  socket.on("disconnect", (reason) => { state.disconnects.push({ at: Date.now(), reason }); log(`disconnected: ${reason}`); show(); });
  socket.on("connect_error", (err) => { state.connectErrors.push({ at: Date.now(), message: err && err.message }); log(`connect error: ${err && err.message}`); });

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  /** Resolves once the socket is connected and its engine runs on WebSocket. */
  async function onWebsocket(ms = 15000) {
    const end = Date.now() + ms;
    while (!(socket.connected && transport() === "websocket")) {
      if (Date.now() > end) throw new Error(`not on websocket within ${ms} ms (transport ${transport()})`);
      await sleep(25);
    }
  }

  /** One acked message: `echo` (payload back) then `whoami` (node, its sid, its transport). */
  async function one(tag, seq) {
    const payload = { tag, seq, text: `message ${seq} (${tag})` };
    const t0 = performance.now();
    try {
      const echoed = await socket.emitWithAck("echo", payload);
      const who = await socket.emitWithAck("whoami");
      const rec = {
        tag, seq, at: Date.now(), ms: Math.round(performance.now() - t0),
        echoed: !!echoed && echoed.seq === seq && echoed.tag === tag,
        clientSid: engine() && engine().id, clientTransport: transport(),
        node: who.node, nodeSid: who.sid, nodeTransport: who.transport,
      };
      state.acks.push(rec);
      $("node").textContent = who.node;
      if (seq % 10 === 0) log(`ack ${tag} #${seq} from ${who.node} over ${who.transport} in ${rec.ms} ms`);
      show();
      return rec;
    } catch (err) {
      state.failures.push({ tag, seq, at: Date.now(), error: String(err && err.message) });
      log(`FAILED ${tag} #${seq}: ${err && err.message}`);
      return null;
    }
  }

  /** `n` messages in sequence, once on WebSocket; a summary of them. */
  async function run(tag, n) {
    await onWebsocket();
    const recs = [];
    for (let i = 0; i < n; i++) recs.push(await one(tag, i));
    const got = recs.filter(Boolean);
    const sessions = {};
    for (const r of got) (sessions[r.clientSid] = sessions[r.clientSid] || new Set()).add(r.node);
    const summary = {
      tag, sent: n, acked: got.length, echoed: got.filter((r) => r.echoed).length,
      nodes: [...new Set(got.map((r) => r.node))],
      transports: [...new Set(got.map((r) => `${r.clientTransport}/${r.nodeTransport}`))],
      sessions: Object.fromEntries(Object.entries(sessions).map(([k, v]) => [k, [...v]])),
      protocol: nav ? nav.nextHopProtocol : null,
    };
    summary.ok = summary.acked === n && summary.echoed === n && summary.nodes.length === 1
      && summary.transports.length === 1 && summary.transports[0] === "websocket/websocket";
    return summary;
  }

  // A message loop the test keeps running while it upgrades the gateway.
  let loop = null;
  function startLoop(tag, every = 100) {
    let running = true;
    const done = (async () => {
      let seq = 0;
      while (running) { await one(tag, seq++); await sleep(every); }
      return seq;
    })();
    loop = { stop: () => { running = false; return done; } };
  }
  const stopLoop = () => (loop ? loop.stop() : Promise.resolve(0));

  /** Shows the outcome on the page (the screenshot), e.g. the test's final verdict. */
  function report(text, ok) {
    $("result").textContent = text;
    $("result").className = ok ? "ok" : "bad";
  }

  window.__e2e = { state, run, startLoop, stopLoop, onWebsocket, log, report };
  window.__result = null;
  // The page's own first round: 50 acked messages over WebSocket, reported to the test.
  run("first", 50).then((summary) => {
    window.__result = { first: summary };
    report(summary.ok ? "50 of 50 acked over websocket" : "FAILED", summary.ok);
  }, (err) => {
    window.__result = { first: { ok: false, error: String(err && err.message) } };
    report(`FAILED: ${err && err.message}`, false);
  });
})();
