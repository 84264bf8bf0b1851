// The quick start's demo page: a Socket.IO connection through the gateway (the real
// socket.io-client browser bundle next to this file; polling handshake, then WebSocket) with
// a live ticker and a chat of everyone on the same node, and a plain WebSocket echo through
// the same gateway to the Rust demo backends. `window.demo` exposes the state for tests.
"use strict";
(() => {
  const $ = (sel) => document.querySelector(sel);
  const field = (name) => $(`[data-field="${name}"]`);
  const set = (name, text, ok) => {
    const el = field(name);
    el.textContent = text;
    if (ok !== undefined) el.className = ok ? "ok" : "bad";
  };
  const add = (list, text, max = 100) => {
    const li = document.createElement("li");
    li.textContent = text;
    list.prepend(li);
    while (list.children.length > max) list.lastElementChild.remove();
  };
  const time = (at) => new Date(at).toLocaleTimeString();

  const nav = performance.getEntriesByType("navigation")[0];
  set("protocol", nav && nav.nextHopProtocol ? nav.nextHopProtocol : location.protocol.replace(":", ""));

  // ---- Socket.IO ----
  const demo = { connects: 0, ticks: 0, chats: [], acks: [], node: null };
  window.demo = demo;
  const socket = io({ reconnectionDelayMax: 2000 });
  const engine = () => socket.io.engine;
  const showTransport = () => set("transport", engine() && engine().transport ? engine().transport.name : "-");
  const showSid = () => set("sid", engine() && engine().id ? engine().id : "-");
  socket.io.on("open", () => {
    engine().on("upgrade", showTransport);
    showTransport();
    showSid();
  });
  socket.on("connect", () => {
    demo.connects++;
    set("state", "connected", true);
    showTransport();
    showSid();
  });
  socket.on("disconnect", (reason) => {
    set("state", `disconnected (${reason}), reconnecting`, false);
    showTransport();
  });
  socket.on("connect_error", (err) => set("state", `cannot connect: ${err.message} (is the Socket.IO node running?)`, false));
  socket.on("welcome", (w) => {
    demo.node = w.node;
    set("node", `${w.node} (${w.clients} client${w.clients === 1 ? "" : "s"} there)`);
  });
  socket.on("tick", (t) => {
    demo.ticks++;
    set("tick", `${time(t.time)} from ${t.node}, ${t.clients} client${t.clients === 1 ? "" : "s"}`);
  });
  socket.on("chat", (m) => {
    demo.chats.push(m);
    add($("#chat"), `${time(m.at)} ${m.from}@${m.node}: ${m.text}`);
  });
  $("#chat-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const input = $("#chat-text");
    const text = input.value;
    input.value = "";
    const t0 = performance.now();
    try {
      const ack = await socket.timeout(5000).emitWithAck("chat", text);
      const ms = Math.round(performance.now() - t0);
      demo.acks.push({ text, node: ack.node, ms });
      add($("#chat"), `(acked by ${ack.node} in ${ms} ms)`);
    } catch (err) {
      add($("#chat"), `(not acked: ${err.message})`);
    }
  });

  // ---- Plain WebSocket ----
  const wsLog = $("#ws-log");
  let ws = null;
  demo.ws = { opened: 0, echoes: [] };
  function openWs() {
    ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
    ws.onopen = () => { demo.ws.opened++; set("ws-state", "connected", true); };
    ws.onmessage = (e) => { demo.ws.echoes.push(String(e.data)); add(wsLog, `< ${e.data}`); };
    ws.onclose = () => { set("ws-state", "closed, reconnecting in 2 s", false); setTimeout(openWs, 2000); };
  }
  openWs();
  $("#ws-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("#ws-text");
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(input.value);
      add(wsLog, `> ${input.value}`);
    }
    input.value = "";
  });
})();
