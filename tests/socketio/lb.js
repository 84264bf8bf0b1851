// A TCP (L4) load balancer for the suite, as a cloud load balancer in front of several
// gateway replicas behaves: every new client connection goes to the next target in turn
// (round robin, no stickiness); a target that refuses a connection is marked down at once and
// that connection is tried on the next target, so the client never sees the refusal; a TCP
// health check every `checkMs` marks targets down and up again. Established connections are
// piped untouched; when a target dies they break, as they would behind a real balancer.
"use strict";

const net = require("node:net");

/**
 * Starts the balancer on a free 127.0.0.1 port in front of `ports`. Returns { port, targets,
 * openOn(clientPort), close() }: `targets[i]` counts { accepted, refused, up, downSince }, and
 * `openOn` names the target of an open connection by the client's local port.
 */
async function startBalancer(t, ports, { checkMs = 250 } = {}) {
  const targets = ports.map((port) => ({ port, accepted: 0, refused: 0, up: true, downSince: null }));
  const conns = new Set();
  const byClientPort = new Map();
  let next = 0;

  const markDown = (tg) => { if (tg.up) { tg.up = false; tg.downSince = Date.now(); } };
  const markUp = (tg) => { tg.up = true; tg.downSince = null; };

  /** The next healthy target not yet tried for this connection, or -1. */
  function pick(tried) {
    for (let k = 0; k < targets.length; k++) {
      const i = next++ % targets.length;
      if (targets[i].up && !tried.has(i)) return i;
    }
    return -1;
  }

  const server = net.createServer((down) => {
    down.pause(); // hold the client's first bytes until a target accepted
    conns.add(down);
    const clientPort = down.remotePort;
    const tried = new Set();
    const drop = () => { down.destroy(); conns.delete(down); byClientPort.delete(clientPort); };
    down.on("error", drop);
    down.on("close", drop);
    const attempt = () => {
      if (down.destroyed) return;
      const i = pick(tried);
      if (i < 0) { drop(); return; }
      tried.add(i);
      const up = net.connect({ host: "127.0.0.1", port: targets[i].port });
      let connected = false;
      up.once("connect", () => {
        connected = true;
        if (down.destroyed) { up.destroy(); return; } // the client left while we connected
        targets[i].accepted++;
        conns.add(up);
        byClientPort.set(clientPort, i);
        const end = () => { up.destroy(); conns.delete(up); drop(); };
        up.on("close", end);
        down.on("close", end);
        down.pipe(up);
        up.pipe(down);
      });
      up.on("error", () => {
        if (connected) return; // the close handler ends both sides
        targets[i].refused++;
        markDown(targets[i]);
        up.destroy();
        attempt();
      });
    };
    attempt();
  });
  await new Promise((res) => server.listen(0, "127.0.0.1", res));

  // Active health check: a TCP connect to each target.
  const check = setInterval(() => {
    for (const tg of targets) {
      const s = net.connect({ host: "127.0.0.1", port: tg.port });
      s.setTimeout(checkMs * 2, () => s.destroy());
      s.once("connect", () => { markUp(tg); s.destroy(); });
      s.once("error", () => markDown(tg));
    }
  }, checkMs);
  check.unref();

  const close = () => new Promise((res) => {
    clearInterval(check);
    for (const c of conns) c.destroy();
    server.close(() => res());
  });
  if (t) t.after(close);
  return {
    port: server.address().port,
    targets,
    openOn: (clientPort) => byClientPort.get(clientPort),
    close,
  };
}

module.exports = { startBalancer };
