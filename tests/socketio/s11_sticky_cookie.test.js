// 11. Sticky cookie (`affinity: { socketio: true, cookie: { name: gw_affinity } }`), checked
//     with plain HTTP and with real clients that keep cookies (withCredentials):
//     - a handshake without cookie gets Set-Cookie naming the node that served it;
//     - a valid cookie is honoured (the handshake lands on the named node);
//     - the sid tag wins over a cookie naming another node;
//     - a garbage cookie still connects and gets a fresh cookie;
//     - real v4 clients with withCredentials send the cookie back (polling and upgrade
//       requests) and ack;
//     - a cookie naming a dead node (after /status shows it down) still connects, on a live
//       node, with a fresh cookie naming that node.
"use strict";
const assert = require("node:assert/strict");
const L = require("./lib");

const COOKIE = "gw_affinity";

function setCookies(res) {
  const h = res.headers["set-cookie"];
  return (Array.isArray(h) ? h : h ? [h] : []).filter((c) => c.startsWith(`${COOKIE}=`));
}

function checkCookieShape(c) {
  const parts = c.split(";").map((x) => x.trim());
  const attrs = new Set(parts.slice(1).map((x) => x.toLowerCase()));
  assert.ok(attrs.has("path=/") && attrs.has("httponly") && attrs.has("samesite=lax"), `Set-Cookie attributes: ${c}`);
  return parts[0].slice(COOKIE.length + 1);
}

/** A plain EIO4 polling handshake; returns { res, sid, tag, cookies }. */
async function handshake(port, cookie) {
  const res = await L.httpRequest({ port, path: "/socket.io/?EIO=4&transport=polling", headers: cookie ? { cookie } : {} });
  assert.equal(res.status, 200, `handshake with cookie ${cookie}: ${res.status} ${res.body}`);
  assert.ok(res.body.startsWith("0{"), `open packet: ${res.body}`);
  const sid = JSON.parse(res.body.slice(1)).sid;
  const tag = sid.slice(sid.lastIndexOf(".") + 1);
  return { res, sid, tag, cookies: setCookies(res) };
}

L.scenarioTest("sticky cookie: set, honoured, sid wins, garbage and dead-node cookies reissued", 45000, async (t, clients) => {
  const { nodes, gw, url, port, tags } = await L.setup(t, {
    names: ["n1", "n2", "n3"],
    affinity: `{ socketio: true, cookie: { name: ${COOKIE} } }`,
  });
  const tagSet = new Set(Object.values(tags));
  const nodeOfTag = Object.fromEntries(Object.entries(tags).map(([n, tg]) => [tg, n]));

  // No cookie: the response names the node that served the handshake.
  const first = await handshake(port);
  assert.ok(tagSet.has(first.tag), `sid tagged with a node tag: ${first.sid}`);
  assert.equal(first.cookies.length, 1, `Set-Cookie: ${JSON.stringify(first.res.headers["set-cookie"])}`);
  assert.equal(checkCookieShape(first.cookies[0]), first.tag, "cookie names the node of the session");

  // A valid cookie is honoured: every handshake lands on the named node (round robin would not).
  for (const n of nodes) {
    for (let k = 0; k < 3; k++) {
      const h = await handshake(port, `other=1; ${COOKIE}=${tags[n.name]}`);
      assert.equal(nodeOfTag[h.tag], n.name, `cookie naming ${n.name} honoured`);
      for (const c of h.cookies) assert.equal(checkCookieShape(c), tags[n.name], "a reissued cookie still names the same node");
    }
  }

  // The sid tag wins over a cookie naming another node: the session's requests still reach it.
  const h = await handshake(port);
  const otherTag = [...tagSet].find((x) => x !== h.tag);
  const post = await L.httpRequest({ port, method: "POST", path: `/socket.io/?EIO=4&transport=polling&sid=${encodeURIComponent(h.sid)}`, headers: { cookie: `${COOKIE}=${otherTag}`, "content-type": "text/plain;charset=UTF-8" }, body: "40" });
  assert.equal(post.status, 200, `POST 40 with sid ${h.sid} and cookie of ${nodeOfTag[otherTag]}: ${post.status} ${post.body}`);
  const poll = await L.httpRequest({ port, path: `/socket.io/?EIO=4&transport=polling&sid=${encodeURIComponent(h.sid)}`, headers: { cookie: `${COOKIE}=${otherTag}` } });
  assert.equal(poll.status, 200, `GET with sid ${h.sid} and cookie of ${nodeOfTag[otherTag]}: ${poll.status} ${poll.body}`);
  assert.ok(poll.body.startsWith("40"), `socket.io CONNECT answered by the session's node: ${poll.body}`);

  // A garbage cookie: still connects, with a fresh cookie naming the serving node.
  const g = await handshake(port, `${COOKIE}=zzzz`);
  assert.ok(tagSet.has(g.tag));
  assert.equal(g.cookies.length, 1, `fresh cookie for a garbage one: ${JSON.stringify(g.res.headers["set-cookie"])}`);
  assert.equal(checkCookieShape(g.cookies[0]), g.tag);

  // Real clients with a cookie jar (withCredentials): polling-only and upgraded.
  const openBefore = (await L.allStats(nodes)).reduce((a, x) => a + x.connections, 0); // the plain-HTTP sessions above
  const sockets = await L.connectClients(clients, 30, (i) => L.makeClient(url, { withCredentials: true, ...(i % 2 ? {} : { transports: ["polling"] }) }), { concurrency: 30 });
  await Promise.all(sockets.map((s, i) => (i % 2 ? L.waitWebsocket(s, 15000) : null)));
  const who = await L.mapLimit(sockets, 30, (s) => L.whoami(s));
  who.forEach((w, i) => {
    const expect = `${COOKIE}=${tags[w.node]}`;
    if (i % 2) {
      assert.equal(w.transport, "websocket");
      assert.ok(w.upgrade_headers && String(w.upgrade_headers.cookie).includes(expect), `upgraded client ${i}: upgrade request cookie ${w.upgrade_headers && w.upgrade_headers.cookie}, expected ${expect}`);
    } else {
      assert.ok(w.last_request_headers && String(w.last_request_headers.cookie).includes(expect), `polling client ${i}: request cookie ${w.last_request_headers && w.last_request_headers.cookie}, expected ${expect}`);
    }
  });
  const r = await L.runEchoes(sockets, 5);
  assert.equal(r.failures.length, 0, `failed acks: ${JSON.stringify(r.failures.slice(0, 10))}`);
  assert.deepEqual(clients.troubles(), { clients: 0, disconnects: 0, connectErrors: 0, sample: [] });
  await L.assertNoSessionErrors(assert, nodes);

  // A cookie naming a dead node: served by a live node, with a fresh cookie naming it.
  // (Sessions are closed first: sessions on a node that dies are scenario 6's subject.)
  clients.closeAll();
  await L.eventually(async () => (await L.allStats(nodes)).reduce((a, x) => a + x.connections, 0) <= openBefore, 5000, "client sessions closed");
  const dead = nodes[1];
  await dead.kill();
  await L.eventually(async () => (await L.backendHealthy(gw, dead)) === false, 5000, "admin /status shows the killed node unhealthy");
  const liveTags = new Set(nodes.filter((n) => n !== dead).map((n) => tags[n.name]));
  for (let k = 0; k < 4; k++) {
    const d = await handshake(port, `${COOKIE}=${tags[dead.name]}`);
    assert.ok(liveTags.has(d.tag), `handshake with a dead node's cookie lands on a live node: ${d.sid}`);
    assert.equal(d.cookies.length, 1, `fresh cookie: ${JSON.stringify(d.res.headers["set-cookie"])}`);
    assert.equal(checkCookieShape(d.cookies[0]), d.tag, "fresh cookie names the live node");
  }
  // And a real client whose jar holds the dead node's cookie cannot be helped by the client
  // itself (the jar is per connection), so check a fresh real client connects and acks too.
  const late = await L.connectClients(clients, 5, () => L.makeClient(url, { withCredentials: true }), { concurrency: 5 });
  const lateWho = await L.mapLimit(late, 5, (s) => L.whoami(s));
  for (const w of lateWho) assert.notEqual(w.node, dead.name);
  await L.assertNoSessionErrors(assert, nodes);
});
