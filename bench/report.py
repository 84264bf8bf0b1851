#!/usr/bin/env python3
"""Turns bench/run.sh's per-run results (TSV: scenario, metric, target, run, value) into the
markdown table (medians over runs) and writes bench/results.md."""
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
    ("http_ka", "cpu_us", "HTTP keep-alive: proxy CPU µs/request", 1),
    ("http_close", "rps", "HTTP new connection per request: requests/s", 0),
    ("http_close", "cpu_us", "HTTP new connection per request: proxy CPU µs/request", 1),
    ("http_close", "backend_conns_per_1k", "HTTP new connection per request: backend connections per 1,000 requests", 1),
    ("ws_echo", "mps", "WebSocket echo, {WS_CONNS} conns: messages/s", 0),
    ("ws_echo", "p99_us", "WebSocket echo: p99 round trip (µs)", 0),
    ("ws_echo", "cpu_us", "WebSocket echo: proxy CPU µs/message", 2),
    ("ws_idle", "kib_per_conn", "{IDLE_CONNS} idle WebSockets: proxy RSS increase per connection (KiB)", 1),
    ("ws_idle", "base_mib", "idle WebSockets: proxy RSS before (MiB)", 1),
    ("ws_idle", "held_mib", "idle WebSockets: proxy RSS while held (MiB)", 1),
    ("sio", "rt_per_s", "Socket.IO polling, {SIO_CLIENTS} clients: acked round trips/s", 0),
    ("sio", "p50_us", "Socket.IO polling, {SIO_CLIENTS} clients: p50 round trip (µs)", 0),
    ("sio", "p50_1c_us", "Socket.IO polling, 1 client: p50 round trip (µs)", 0),
    ("sio", "added_1c_us", "Socket.IO polling, 1 client: latency added by the gateway per round trip (µs)", 0),
    ("sio", "added_us", "Socket.IO polling, {SIO_CLIENTS} clients: latency added by the gateway per round trip (µs)", 0),
    ("sio", "cpu_us", "Socket.IO polling: gateway CPU µs per HTTP request", 1),
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
    try:
        rt = json.load(open(a.route))
        for key, name in [("n10", "10 routes"), ("n10000", "10,000 routes (exact hosts + prefixes)"),
                          ("n10000_prefix_only", "10,000 routes (path prefixes only, extra)")]:
            r = rt[key]
            lines.append(f"| route find() ns, {name}: first / middle / last / miss (unknown host) / miss (wrong path) | "
                         f"{r['first_ns']:.0f} / {r['middle_ns']:.0f} / {r['last_ns']:.0f} / {r['miss_host_ns']:.0f} / {r['miss_path_ns']:.0f} | | | | | | | |")
    except Exception as e:  # noqa: BLE001
        lines.append(f"| route lookup | error: {e} | | | | | | | |")
    table = "\n".join(lines)
    print(table)

    # The targets, checked on the medians of this run.
    def chk(label, ok, detail):
        state = "n/a" if ok is None else ("met" if ok else "NOT met")
        return f"| {label} | {detail} | {state} |"

    def cmp(a, op, b, k=1.0):
        if a is None or b is None:
            return None
        return a <= k * b if op == "<=" else a >= k * b

    g = lambda s, m: med(s, m, "gw")  # noqa: E731
    n = lambda s, m: med(s, m, "nginx")  # noqa: E731
    h = lambda s, m: med(s, m, "haproxy")  # noqa: E731
    b = lambda s, m: med(s, m, "bare")  # noqa: E731
    f1 = lambda v: fmt(v, 1)  # noqa: E731
    tl = ["| target (issue 5) | this run (gateway vs reference) | |", "|---|---|---|"]
    tl.append(chk("keep-alive CPU/request <= 0.8 x nginx", cmp(g("http_ka", "cpu_us"), "<=", n("http_ka", "cpu_us"), 0.8),
                  f"{f1(g('http_ka', 'cpu_us'))} vs 0.8 x {f1(n('http_ka', 'cpu_us'))} µs"))
    tl.append(chk("keep-alive requests/s >= nginx", cmp(g("http_ka", "rps"), ">=", n("http_ka", "rps")),
                  f"{fmt(g('http_ka', 'rps'), 0)} vs {fmt(n('http_ka', 'rps'), 0)}"))
    tl.append(chk("keep-alive p99 <= nginx", cmp(g("http_ka", "p99_us"), "<=", n("http_ka", "p99_us")),
                  f"{fmt(g('http_ka', 'p99_us'), 0)} vs {fmt(n('http_ka', 'p99_us'), 0)} µs"))
    tl.append(chk("WebSocket echo CPU/message <= nginx", cmp(g("ws_echo", "cpu_us"), "<=", n("ws_echo", "cpu_us")),
                  f"{fmt(g('ws_echo', 'cpu_us'), 2)} vs {fmt(n('ws_echo', 'cpu_us'), 2)} µs"))
    tl.append(chk("WebSocket echo messages/s >= nginx", cmp(g("ws_echo", "mps"), ">=", n("ws_echo", "mps")),
                  f"{fmt(g('ws_echo', 'mps'), 0)} vs {fmt(n('ws_echo', 'mps'), 0)}"))
    tl.append(chk("idle WebSocket RSS/connection <= HAProxy", cmp(g("ws_idle", "kib_per_conn"), "<=", h("ws_idle", "kib_per_conn")),
                  f"{f1(g('ws_idle', 'kib_per_conn'))} vs {f1(h('ws_idle', 'kib_per_conn'))} KiB"))
    tl.append(chk("new connection CPU/request <= nginx", cmp(g("http_close", "cpu_us"), "<=", n("http_close", "cpu_us")),
                  f"{f1(g('http_close', 'cpu_us'))} vs {f1(n('http_close', 'cpu_us'))} µs"))
    for s_, m_, what in [("http_ka", "cpu_us", "keep-alive CPU/request"), ("http_close", "cpu_us", "new connection CPU/request"),
                         ("ws_echo", "cpu_us", "WebSocket CPU/message"), ("ws_idle", "kib_per_conn", "idle WebSocket RSS")]:
        tl.append(chk(f"features on: {what} <= 1.1 x bare Pingora", cmp(g(s_, m_), "<=", b(s_, m_), 1.1),
                      f"{fmt(g(s_, m_), 2)} vs 1.1 x {fmt(b(s_, m_), 2)}"))
    targets = "\n".join(tl)
    print(targets)

    # Per-run values, for judging noise.
    detail = ["| scenario.metric | target | " + " | ".join(f"run {i}" for i in sorted({r for d in runs.values() for r in d})) + " |"]
    nruns = len({r for d in runs.values() for r in d})
    detail.append("|---|---|" + "---:|" * nruns)
    for (s, m, t), d in sorted(runs.items(), key=lambda kv: (kv[0][0], kv[0][1], TARGETS.index(kv[0][2]) if kv[0][2] in TARGETS else 9)):
        detail.append(f"| {s}.{m} | {t} | " + " | ".join(fmt(d.get(i), 1) for i in range(1, nruns + 1)) + " |")

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
  thread/process each; medians over runs; targets interleaved run by run. See bench/README.md
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
