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

    # The targets, checked on the medians of this run:
    # (label, scenario, metric, reference target, "<=" or ">=", factor, decimals, unit).
    TARGET_CHECKS = [
        ("keep-alive CPU/request <= 0.8 x nginx", "http_ka", "cpu_us", "nginx", "<=", 0.8, 1, " µs"),
        ("keep-alive requests/s >= nginx", "http_ka", "rps", "nginx", ">=", 1.0, 0, ""),
        ("keep-alive p99 <= nginx", "http_ka", "p99_us", "nginx", "<=", 1.0, 0, " µs"),
        ("WebSocket echo CPU/message <= nginx", "ws_echo", "cpu_us", "nginx", "<=", 1.0, 2, " µs"),
        ("WebSocket echo messages/s >= nginx", "ws_echo", "mps", "nginx", ">=", 1.0, 0, ""),
        ("idle WebSocket RSS/connection <= HAProxy", "ws_idle", "kib_per_conn", "haproxy", "<=", 1.0, 1, " KiB"),
        ("new connection CPU/request <= nginx", "http_close", "cpu_us", "nginx", "<=", 1.0, 1, " µs"),
        ("features on: keep-alive CPU/request <= 1.1 x bare Pingora", "http_ka", "cpu_us", "bare", "<=", 1.1, 2, " µs"),
        ("features on: new connection CPU/request <= 1.1 x bare Pingora", "http_close", "cpu_us", "bare", "<=", 1.1, 2, " µs"),
        ("features on: WebSocket CPU/message <= 1.1 x bare Pingora", "ws_echo", "cpu_us", "bare", "<=", 1.1, 2, " µs"),
        ("features on: idle WebSocket RSS <= 1.1 x bare Pingora", "ws_idle", "kib_per_conn", "bare", "<=", 1.1, 2, " KiB"),
    ]
    tl = ["| target (issue 5) | this run (gateway vs reference) | |", "|---|---|---|"]
    for label, s_, m_, ref, op, k, d, unit in TARGET_CHECKS:
        gv, rv = med(s_, m_, "gw"), med(s_, m_, ref)
        ok = None if gv is None or rv is None else (gv <= k * rv if op == "<=" else gv >= k * rv)
        state = "n/a" if ok is None else ("met" if ok else "NOT met")
        scale = "" if k == 1.0 else f"{k} x "
        tl.append(f"| {label} | {fmt(gv, d)} vs {scale}{fmt(rv, d)}{unit} | {state} |")
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
