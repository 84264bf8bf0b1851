#!/usr/bin/env python3
"""Turns bench/run.sh's per-run results (TSV: scenario, metric, target, run, value) into the
markdown table (medians over runs) and writes bench/results.md. Keep-alive and WebSocket echo
have ROUNDS samples per run (the "run" column numbers the samples); for those the targets
table also gives the median of the per-sample ratios, each taken within one short round."""
import argparse
import json
import statistics
from collections import defaultdict

TARGETS = ["gw", "bare", "nginx", "haproxy", "direct"]

# (scenario, metric, label, decimals)
ROWS = [
    ("http_ka", "rps", "HTTP keep-alive GET, {HTTP_CONNS} conns: requests/s", 0),
    ("http_ka", "p50_us", "HTTP keep-alive: p50 latency (µs)", 0),
    ("http_ka", "p99_us", "HTTP keep-alive: p99 latency (µs)", 0),
    ("http_ka", "cpu_us", "HTTP keep-alive: proxy CPU µs/request (user space + kernel)", 1),
    ("http_ka", "usr_us", "HTTP keep-alive: ... of which user space", 1),
    ("http_ka", "sys_us", "HTTP keep-alive: ... of which kernel", 1),
    ("http_close", "rps", "HTTP new connection per request: requests/s", 0),
    ("http_close", "cpu_us", "HTTP new connection per request: proxy CPU µs/request (user space + kernel)", 1),
    ("http_close", "usr_us", "HTTP new connection per request: ... of which user space", 1),
    ("http_close", "sys_us", "HTTP new connection per request: ... of which kernel", 1),
    ("http_close", "backend_conns_per_1k", "HTTP new connection per request: backend connections per 1,000 requests", 1),
    ("ws_echo", "mps", "WebSocket echo, {WS_CONNS} conns: messages/s", 0),
    ("ws_echo", "p99_us", "WebSocket echo: p99 round trip (µs)", 0),
    ("ws_echo", "cpu_us", "WebSocket echo: proxy CPU µs/message (user space + kernel)", 2),
    ("ws_echo", "usr_us", "WebSocket echo: ... of which user space", 2),
    ("ws_echo", "sys_us", "WebSocket echo: ... of which kernel", 2),
    ("ws_idle", "kib_per_conn", "{IDLE_CONNS} idle WebSockets: proxy RSS increase per connection (KiB)", 1),
    ("ws_idle", "base_mib", "idle WebSockets: proxy RSS before (MiB)", 1),
    ("ws_idle", "held_mib", "idle WebSockets: proxy RSS while held (MiB)", 1),
    ("ws_idle", "after_mib", "idle WebSockets: proxy RSS after they closed (MiB, up to 12 s later)", 1),
    ("ws_idle", "after_ratio", "idle WebSockets: RSS after they closed / RSS before", 2),
    ("sio", "rt_per_s", "Socket.IO polling, {SIO_CLIENTS} clients: acked round trips/s", 0),
    ("sio", "p50_us", "Socket.IO polling, {SIO_CLIENTS} clients: p50 round trip (µs)", 0),
    ("sio", "p50_1c_us", "Socket.IO polling, 1 client: p50 round trip (µs)", 0),
    ("sio", "added_1c_us", "Socket.IO polling, 1 client: latency added by the gateway per round trip (µs)", 0),
    ("sio", "added_us", "Socket.IO polling, {SIO_CLIENTS} clients: latency added by the gateway per round trip (µs)", 0),
    ("sio", "cpu_us", "Socket.IO polling: gateway CPU µs per HTTP request (user space + kernel)", 1),
    ("sio", "usr_us", "Socket.IO polling: ... of which user space", 1),
    ("sio", "sys_us", "Socket.IO polling: ... of which kernel", 1),
    ("sio", "req_per_rt", "Socket.IO polling: HTTP requests per round trip (incl. handshakes)", 2),
]


def fmt(v, d):
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    if d == 0:
        return f"{v:,.0f}"
    return f"{v:,.{d}f}"


def ratio(a, b):
    if a is None or b is None or isinstance(a, str) or isinstance(b, str) or b == 0:
        return "n/a"
    return f"{a / b:.2f}"


def rx(a, b):
    r = ratio(a, b)
    return r if r == "n/a" else r + "x"


def route_one_host_ratio(rt):
    """route_bench's last-route ratio, 10,000 vs 10 prefix routes under one host."""
    v = rt.get("one_host_last_ratio") if isinstance(rt, dict) else None
    if isinstance(v, (int, float)):
        return float(v)
    try:
        return rt["n10000_one_host"]["last_ns"] / rt["n10_one_host"]["last_ns"]
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def main():
    ap = argparse.ArgumentParser()
    for k in ["results", "sid", "route", "out", "date", "nproc", "cpu", "kernel", "nginx", "haproxy", "gateway",
              "cmd", "elapsed", "load", "sid-text", "route-text"]:
        ap.add_argument("--" + k, default="")
    a = ap.parse_args()

    vals = defaultdict(list)  # (scenario, metric, target) -> [values by run]
    runs = defaultdict(dict)
    with open(a.results) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 5:
                continue
            s, m, t, r, v = parts
            try:
                x = float(v)
            except ValueError:
                continue
            vals[(s, m, t)].append(x)
            runs[(s, m, t)][int(r)] = x

    def med(s, m, t):
        v = vals.get((s, m, t))
        return statistics.median(v) if v else None

    def paired(s, m, a, b):
        """Median of a/b over the samples both have (each pair measured in the same round), and
        the ratios."""
        da, db = runs.get((s, m, a), {}), runs.get((s, m, b), {})
        rs = [da[i] / db[i] for i in sorted(set(da) & set(db)) if db[i] > 0]
        return (statistics.median(rs), rs) if rs else (None, [])

    def paired_text(s, m, a, b, at):
        r, rs = paired(s, m, a, b)
        if r is None:
            return "per-round ratios n/a"
        return f"median of the {len(rs)} per-round ratios {r:.2f}, at most {at:.2f} in {sum(x <= at for x in rs)} of {len(rs)}"

    env = {k: "" for k in ["HTTP_CONNS", "WS_CONNS", "IDLE_CONNS", "SIO_CLIENTS"]}
    import os
    for k in env:
        env[k] = os.environ.get(k, "?")
        try:
            env[k] = f"{int(env[k]):,}"
        except ValueError:
            pass

    lines = ["| scenario / metric | gateway | bare Pingora | nginx | HAProxy | direct | gateway/nginx | gateway/bare | gateway/direct |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s, m, label, d in ROWS:
        if m in ("added_us", "added_1c_us"):
            base = "p50_us" if m == "added_us" else "p50_1c_us"
            g, di = med(s, base, "gw"), med(s, base, "direct")
            gv = None if g is None or di is None else g - di
            lines.append(f"| {label.format(**env)} | {fmt(gv, d)} | n/a | n/a | n/a | n/a | n/a | n/a | n/a |")
            continue
        row = [med(s, m, t) for t in TARGETS]
        lines.append(f"| {label.format(**env)} | " + " | ".join(fmt(v, d) for v in row)
                     + f" | {ratio(row[0], row[2])} | {ratio(row[0], row[1])} | {ratio(row[0], row[4])} |")
    errs = []
    for t in TARGETS:
        tot = sum(sum(v) for (s, m, tt), v in vals.items() if m == "errors" and tt == t)
        errs.append(tot)
    lines.append("| errors, all scenarios and runs (failed/non-2xx requests, WS errors, idle conns not alive) | "
                 + " | ".join(f"{e:,.0f}" for e in errs) + " | | | |")

    # Micro-benchmarks (gateway only).
    try:
        sid = json.load(open(a.sid))
        lines.append(f"| sid table, {sid['sessions']:,} sessions: heap_bytes() per session (B) | {sid['heap_bytes_per_session']:.1f} | | | | | | | |")
        lines.append(f"| sid table: process RSS increase per session (B) | {sid['rss_bytes_per_session']:.1f} | | | | | | | |")
        lines.append(f"| sid table: sessions kept of {sid['sessions']:,} (capacity {sid['sessions']:,}) | {sid['len']:,} | | | | | | | |")
        lines.append(f"| sid table: get() ns/op (hit random order / hit insertion order / miss) | {sid['get_hit_ns']:.0f} / {sid.get('get_hit_seq_ns', 0):.0f} / {sid['get_miss_ns']:.0f} | | | | | | | |")
    except Exception as e:  # noqa: BLE001
        lines.append(f"| sid table | error: {e} | | | | | | | |")
    rt = {}
    try:
        rt = json.load(open(a.route))
    except Exception as e:  # noqa: BLE001
        lines.append(f"| route lookup | error: {e} | | | | | | | |")
    for key, name in [("n10", "10 routes"), ("n10000", "10,000 routes (exact hosts + prefixes)"),
                      ("n10000_prefix_only", "10,000 routes (path prefixes only, extra)"),
                      ("n10_one_host", "10 prefix routes under one host"),
                      ("n10000_one_host", "10,000 prefix routes under one host")]:
        r = rt.get(key)
        if not isinstance(r, dict):
            if rt:
                lines.append(f"| route find() ns, {name} | n/a (not in route_bench's output) | | | | | | | |")
            continue
        try:
            lines.append(f"| route find() ns, {name}: first / middle / last / miss (unknown host) / miss (wrong path) | "
                         f"{r['first_ns']:.0f} / {r['middle_ns']:.0f} / {r['last_ns']:.0f} / {r['miss_host_ns']:.0f} / {r['miss_path_ns']:.0f} | | | | | | | |")
        except (KeyError, TypeError, ValueError) as e:
            lines.append(f"| route find() ns, {name} | error: {e!r} | | | | | | | |")
    one_host_ratio = route_one_host_ratio(rt)
    if one_host_ratio is not None:
        lines.append(f"| route find(), one host, last route: 10,000 routes / 10 routes | {one_host_ratio:.2f}x | | | | | | | |")
    table = "\n".join(lines)
    print(table)

    # The targets, checked on the medians of this run (same run, gateway vs nginx / HAProxy /
    # bare Pingora): one row each, "met" / "NOT met" with the numbers.
    def state(ok):
        return "n/a" if ok is None else ("met" if ok else "NOT met")

    def le(g, r, k=1.0):
        return None if g is None or r is None else g <= k * r

    def ge(g, r, k=1.0):
        return None if g is None or r is None else g >= k * r

    def both(*oks):
        return None if any(o is None for o in oks) else all(oks)

    tl = ["| target | this run (medians) | |", "|---|---|---|"]
    # Idle WebSocket RSS per connection: at most nginx's; HAProxy's is the aim.
    g, n, h = (med("ws_idle", "kib_per_conn", t) for t in ("gw", "nginx", "haproxy"))
    tl.append(f"| idle WebSocket RSS per connection <= nginx (aim: HAProxy) | gateway {fmt(g, 1)} vs nginx {fmt(n, 1)} KiB"
              f" (gateway/nginx {ratio(g, n)}; HAProxy, the aim: {fmt(h, 1)} KiB) | {state(le(g, n))} |")
    # WebSocket echo: CPU per message at most nginx's and messages/s at least nginx's.
    gc, nc = med("ws_echo", "cpu_us", "gw"), med("ws_echo", "cpu_us", "nginx")
    gm, nm = med("ws_echo", "mps", "gw"), med("ws_echo", "mps", "nginx")
    tl.append(f"| WebSocket echo: CPU/message <= nginx and messages/s >= nginx | CPU {fmt(gc, 2)} vs {fmt(nc, 2)} µs"
              f" ({state(le(gc, nc))}; {paired_text('ws_echo', 'cpu_us', 'gw', 'nginx', 1.0)});"
              f" {fmt(gm, 0)} vs {fmt(nm, 0)} messages/s ({state(ge(gm, nm))}) | {state(both(le(gc, nc), ge(gm, nm)))} |")
    # Keep-alive GET CPU per request: at most 1.25x nginx's; user space beside it.
    g, n = med("http_ka", "cpu_us", "gw"), med("http_ka", "cpu_us", "nginx")
    gu, nu = med("http_ka", "usr_us", "gw"), med("http_ka", "usr_us", "nginx")
    gs, ns = med("http_ka", "sys_us", "gw"), med("http_ka", "sys_us", "nginx")
    tl.append(f"| keep-alive GET: CPU/request <= 1.25 x nginx | {fmt(g, 1)} vs 1.25 x {fmt(n, 1)} = {fmt(None if n is None else 1.25 * n, 1)} µs"
              f" (gateway/nginx {ratio(g, n)}; {paired_text('http_ka', 'cpu_us', 'gw', 'nginx', 1.25)});"
              f" user space {fmt(gu, 1)} vs {fmt(nu, 1)} µs ({ratio(gu, nu)}), kernel {fmt(gs, 1)} vs {fmt(ns, 1)} µs ({ratio(gs, ns)})"
              f" | {state(le(g, n, 1.25))} |")
    # New connection per request CPU: at most 1.6x nginx's.
    g, n = med("http_close", "cpu_us", "gw"), med("http_close", "cpu_us", "nginx")
    gu, nu = med("http_close", "usr_us", "gw"), med("http_close", "usr_us", "nginx")
    tl.append(f"| new connection per request: CPU/request <= 1.6 x nginx | {fmt(g, 1)} vs 1.6 x {fmt(n, 1)} = {fmt(None if n is None else 1.6 * n, 1)} µs"
              f" (gateway/nginx {ratio(g, n)}); user space {fmt(gu, 1)} vs {fmt(nu, 1)} µs | {state(le(g, n, 1.6))} |")
    # Features on vs bare Pingora: at most 1.05x in every scenario.
    feats = [("keep-alive CPU/request", "http_ka", "cpu_us", 2, " µs"),
             ("new connection CPU/request", "http_close", "cpu_us", 2, " µs"),
             ("WebSocket echo CPU/message", "ws_echo", "cpu_us", 2, " µs"),
             ("idle WebSocket RSS/connection", "ws_idle", "kib_per_conn", 1, " KiB")]
    for name, s_, m_, d, unit in feats:
        g, b = med(s_, m_, "gw"), med(s_, m_, "bare")
        extra = f"; {paired_text(s_, m_, 'gw', 'bare', 1.05)}" if s_ in ("http_ka", "ws_echo") else ""
        tl.append(f"| features on vs bare Pingora <= 1.05 x: {name} | {fmt(g, d)} vs 1.05 x {fmt(b, d)}{unit} ({rx(g, b)}{extra}) | {state(le(g, b, 1.05))} |")
    # What /metrics costs the request path: the same gateway with admin.metrics off.
    g, m = med("http_ka", "cpu_us", "gw"), med("http_ka", "cpu_us", "gwnm")
    tl.append(f"| /metrics counters cost nothing measurable (keep-alive CPU/request, metrics on vs off) | {fmt(g, 2)} vs {fmt(m, 2)} µs"
              f" ({rx(g, m)}; {paired_text('http_ka', 'cpu_us', 'gw', 'gwnm', 1.03)}; run-to-run spread of this VM: see the per-run table)"
              f" | {state(None if g is None or m is None else g <= m * 1.03)} |")
    # With PGO=1: what the profile-guided build gains over the plain release build.
    g, p_ = med("http_ka", "cpu_us", "gw"), med("http_ka", "cpu_us", "gwpl")
    if p_ is not None:
        gu, pu = med("http_ka", "usr_us", "gw"), med("http_ka", "usr_us", "gwpl")
        tl.append(f"| (information) profile-guided build vs the plain release build, keep-alive CPU/request | {fmt(g, 2)} vs {fmt(p_, 2)} µs"
                  f" ({rx(g, p_)}); user space {fmt(gu, 1)} vs {fmt(pu, 1)} µs ({rx(gu, pu)}) | n/a |")
    # Route lookup: 10,000 prefix routes under one host at most 2x the 10-route lookup.
    def last_ns(key):
        r = rt.get(key) if isinstance(rt, dict) else None
        return r.get("last_ns") if isinstance(r, dict) else None

    r10, r10k = last_ns("n10_one_host"), last_ns("n10000_one_host")
    ok = None if one_host_ratio is None else one_host_ratio <= 2.0
    tl.append(f"| route lookup, 10,000 prefix routes under one host: <= 2 x the 10-route lookup | last route {fmt(r10k, 0)} vs 2 x {fmt(r10, 0)} ns"
              f" ({'n/a' if one_host_ratio is None else f'{one_host_ratio:.2f}x'}) | {state(ok)} |")
    # RSS after the idle WebSockets have closed: back within 2x the RSS before they opened.
    idle = env["IDLE_CONNS"]
    ga, gb = med("ws_idle", "after_mib", "gw"), med("ws_idle", "base_mib", "gw")
    others = []
    for t, name in (("nginx", "nginx"), ("haproxy", "HAProxy")):
        oa, ob = med("ws_idle", "after_mib", t), med("ws_idle", "base_mib", t)
        others.append(f"{name} {fmt(oa, 1)} MiB after vs {fmt(ob, 1)} MiB before ({rx(oa, ob)})")
    tl.append(f"| RSS after {idle} idle WebSockets have closed: back within 2 x the RSS before they opened | gateway {fmt(ga, 1)} MiB vs 2 x {fmt(gb, 1)} MiB"
              f" ({rx(ga, gb)}; held {fmt(med('ws_idle', 'held_mib', 'gw'), 1)} MiB); {'; '.join(others)} | {state(le(ga, gb, 2.0))} |")
    targets = "\n".join(tl)
    print(targets)

    # Per-run values, for judging noise.
    # (Keep-alive and WebSocket echo: one value per short round, ROUNDS per run.)
    detail = ["| scenario.metric | target | values, run by run (round by round for keep-alive and WebSocket echo) |", "|---|---|---|"]
    for (s, m, t), d in sorted(runs.items(), key=lambda kv: (kv[0][0], kv[0][1], TARGETS.index(kv[0][2]) if kv[0][2] in TARGETS else 9)):
        detail.append(f"| {s}.{m} | {t} | " + " / ".join(fmt(d[i], 1) for i in sorted(d)) + " |")

    def read(p):
        try:
            return open(p).read().rstrip()
        except OSError:
            return ""

    md = f"""# Benchmark results

- date: {a.date}
- command: `{a.cmd}` (total {a.elapsed} s)
- machine: {a.nproc} CPUs, {a.cpu}, kernel {a.kernel}; load average at the end: {a.load}
- versions: {a.gateway}; {a.nginx}; {a.haproxy}
- proxy under test pinned to CPU 0, load generators and backends to CPU 1; one proxy worker
  thread/process each; medians over runs (keep-alive and WebSocket echo: over the short
  rounds of every run); targets interleaved run by run and round by round. Proxy CPU is
  utime + stime of the proxy's processes, also shown split into user space and kernel; no
  nftables rule is installed while CPU, latency or memory is measured. See bench/README.md
  for the method and caveats.

{table}

## Targets

{targets}

## Per-run values

{chr(10).join(detail)}

## sid_table_bench

```
{read(a.__dict__['sid_text'])}
```

## route_bench

```
{read(a.__dict__['route_text'])}
```
"""
    if a.out:
        with open(a.out, "w") as f:
            f.write(md)


if __name__ == "__main__":
    main()
