#!/usr/bin/env bash
# Gateway benchmark: the gateway vs nginx vs HAProxy vs direct, in one run.
#
#   bench/run.sh                      # RUNS=3 DURATION=8 by default
#   RUNS=1 DURATION=3 bench/run.sh    # quick smoke run
#
# Env: RUNS (3), DURATION seconds per load run (8), ROUNDS short rounds per run of keep-alive
#      GETs and WebSocket echo, the two scenarios where the gateway and nginx are closest (3),
#      ROUND_DURATION seconds each (DURATION / 2, at least 2), HTTP_CONNS (64), WS_CONNS (200),
#      IDLE_CONNS (5000), HOLD seconds the idle WebSockets are held (5), SIO_CLIENTS (20),
#      SIO_EMITS (20), COUNT_DURATION seconds of the backend-connection counting pass (2),
#      BENCH_WORK (/tmp/gwbench), SKIP_BUILD=1, NO_NETNS=1, PGO=1 (the gateway and bare
#      Pingora both from scripts/build-pgo.sh, the profile-guided build, instead of the plain
#      release build).
#
# Installs what is missing (nginx, haproxy, wrk, procps, util-linux, iproute2, curl, node
# packages), builds the release binaries, then runs every measurement inside a private network
# namespace (`unshare -n`, loopback only) so that fixed ports cannot collide and the backend
# connection counter (an nftables SYN counter, installed only for a short counting pass after
# each new-connection run; fallback: /proc/net/snmp PassiveOpens) sees only this benchmark's
# connections. No nftables rule is in place while CPU, latency or memory is measured. The
# proxy under test runs on CPU 0, the load generators and backends on CPU 1. Targets are
# interleaved run by run; the table shows medians. Proxy CPU is recorded as total, user space
# and kernel. See bench/README.md.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RUNS=${RUNS:-3}
DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
ROUND_DURATION=${ROUND_DURATION:-$(( DURATION / 2 > 2 ? DURATION / 2 : 2 ))}
HTTP_CONNS=${HTTP_CONNS:-64}
WS_CONNS=${WS_CONNS:-200}
IDLE_CONNS=${IDLE_CONNS:-5000}
HOLD=${HOLD:-5}
SIO_CLIENTS=${SIO_CLIENTS:-20}
SIO_EMITS=${SIO_EMITS:-20}
WORK=${BENCH_WORK:-/tmp/gwbench}
export RUNS DURATION ROUNDS ROUND_DURATION HTTP_CONNS WS_CONNS IDLE_CONNS HOLD SIO_CLIENTS SIO_EMITS WORK

REL="$ROOT/target/release"
GW="$REL/gateway"
DEMO="$REL/examples/demo_backend"
WSB="$REL/examples/wsbench"
BARE="$REL/examples/bare_proxy"
if [ "${PGO:-0}" = 1 ]; then
  GW="$ROOT/target/pgo/use/release/gateway"
  BARE="$ROOT/target/pgo/use/release/examples/bare_proxy"
fi
export PGO
SIO_DIR="$ROOT/tests/socketio"

log() { echo "[bench $(date +%H:%M:%S)] $*" >&2; }

# ------------------------------------------------------------------------------------------
# Outer phase: dependencies, build, then the measurements in a private network namespace.
if [[ "${1:-}" != "--inner" ]]; then
  START_TS=$(date +%s)
  export BENCH_START_TS=$START_TS
  export BENCH_CMD="RUNS=$RUNS DURATION=$DURATION ROUNDS=$ROUNDS ROUND_DURATION=$ROUND_DURATION HTTP_CONNS=$HTTP_CONNS WS_CONNS=$WS_CONNS IDLE_CONNS=$IDLE_CONNS HOLD=$HOLD SIO_CLIENTS=$SIO_CLIENTS${PGO:+ PGO=$PGO} bench/run.sh"
  need=()
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
  command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
  command -v wrk >/dev/null 2>&1 || need+=(wrk)
  command -v ps >/dev/null 2>&1 || need+=(procps)
  command -v taskset >/dev/null 2>&1 || need+=(util-linux)
  command -v unshare >/dev/null 2>&1 || need+=(util-linux)
  command -v ss >/dev/null 2>&1 || need+=(iproute2)
  command -v ip >/dev/null 2>&1 || need+=(iproute2)
  command -v curl >/dev/null 2>&1 || need+=(curl)
  command -v python3 >/dev/null 2>&1 || need+=(python3)
  command -v node >/dev/null 2>&1 || need+=(nodejs npm)
  command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || need+=(nftables)
  if [ ${#need[@]} -gt 0 ]; then
    log "installing: ${need[*]}"
    timeout 300 apt-get update -qq
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  export PATH="$PATH:/usr/sbin:/sbin"
  if [ ! -d "$SIO_DIR/node_modules/socket.io-client" ]; then
    log "npm ci in tests/socketio"
    (cd "$SIO_DIR" && timeout 300 npm ci --no-audit --no-fund --loglevel=error)
  fi
  if [ "${SKIP_BUILD:-0}" != 1 ]; then
    cd "$ROOT"
    ok=0
    for attempt in 1 2 3 4; do
      log "cargo build --release --bin gateway --examples (attempt $attempt)"
      if timeout 1500 cargo build --release --bin gateway --examples 2>"$ROOT/target/bench-build.log"; then ok=1; break; fi
      tail -5 "$ROOT/target/bench-build.log" >&2
      log "build failed (src/ may be mid-edit); retrying in 30 s"
      sleep 30
    done
    [ $ok = 1 ] || { log "build failed"; exit 1; }
    if [ "${PGO:-0}" = 1 ]; then
      log "scripts/build-pgo.sh (PGO=1)"
      "$ROOT/scripts/build-pgo.sh" 2>"$ROOT/target/bench-pgo.log" || { tail -5 "$ROOT/target/bench-pgo.log" >&2; log "PGO build failed"; exit 1; }
    fi
  fi
  for b in "$GW" "$BARE" "$REL/gateway" "$DEMO" "$WSB" "$REL/examples/sid_table_bench" "$REL/examples/route_bench"; do
    [ -x "$b" ] || { log "missing $b"; exit 1; }
  done
  if [ "${NO_NETNS:-0}" != 1 ] && unshare -n true 2>/dev/null; then
    inner_cmd=(unshare -n bash "$0" --inner)
  else
    log "WARNING: no private network namespace (unshare -n failed or NO_NETNS=1): the TCP counters"
    log "         used for 'backend connections per 1000 requests' include other traffic on this host"
    inner_cmd=(bash "$0" --inner)
    export NO_NETNS=1   # the inner phase must not touch the host's nftables or sysctls
  fi
  # Hard bound on the whole measurement phase.
  limit=$(( 120 + RUNS * (5 * (DURATION + 25) * 3 + ROUNDS * 12 * (ROUND_DURATION + 25) + 5 * 40 + 4 * (HOLD + 105) + 2 * (DURATION * 2 + 40)) ))
  timeout -k 15 "$limit" "${inner_cmd[@]}" &
  inner=$!
  trap 'kill -TERM $inner 2>/dev/null || true; wait $inner 2>/dev/null || true' EXIT INT TERM
  rc=0
  wait $inner || rc=$?
  [ $rc = 124 ] && log "time limit ($limit s) reached: stopped"
  trap - EXIT INT TERM
  log "total time $(( $(date +%s) - START_TS )) s"
  exit $rc
fi

# ------------------------------------------------------------------------------------------
# Inner phase (in the private network namespace when available).
export PATH="$PATH:/usr/sbin:/sbin"
ip link set lo up 2>/dev/null || true
# Per-namespace knobs (only when in our own namespace): room for connection churn.
if [ "${NO_NETNS:-0}" != 1 ]; then
  sysctl -qw net.ipv4.ip_local_port_range="10000 65000" 2>/dev/null || true
  sysctl -qw net.core.somaxconn=4096 2>/dev/null || true
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

rm -rf "$WORK"
mkdir -p "$WORK/nginx" "$WORK/logs"
RES="$WORK/results.tsv"
: >"$RES"
CLK_TCK=$(getconf CLK_TCK)

# Ports (private namespace, so fixed ones are fine).
P_BACKEND=9001
P_SIO1=9101
P_SIO2=9102
P_GW=8001
P_NGINX=8002
P_HAPROXY=8003
P_BARE=8004
P_GWADMIN=8091
P_GWSIO=8011
P_GWNM=8012
P_GWNMADMIN=8092
P_GWPL=8013
P_GWPLADMIN=8093

PIDS=()        # everything started here
GW_PIDS=" "    # the gateways among them: stopped with SIGINT (fast shutdown; SIGTERM is
               # Pingora's graceful drain). Others get SIGTERM (background jobs ignore SIGINT).
sig_of() { [[ "$GW_PIDS" == *" $1 "* ]] && echo INT || echo TERM; }
cleanup() {
  set +e
  [ "${BACKEND_SYN:-0}" = 1 ] && nft_off
  for p in "${PIDS[@]}"; do kill -"$(sig_of "$p")" "$p" 2>/dev/null; done
  for _ in $(seq 30); do
    alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null
}
trap cleanup EXIT
trap 'exit 143' INT TERM

# Runs a command bounded in time, in the background so that signals are handled promptly.
bounded() {
  local secs=$1; shift
  timeout -k 5 "$secs" "$@" &
  local p=$!
  wait $p
}

wait_http() { # URL [tries]
  local url=$1 tries=${2:-100}
  for _ in $(seq "$tries"); do
    curl -s -o /dev/null --max-time 1 "$url" && return 0
    sleep 0.1
  done
  log "not ready: $url"
  return 1
}

# ---- configs -----------------------------------------------------------------------------
# The gateway with its features on (bench/gateway-config.sh, shared with bench/instructions.sh).
. "$ROOT/bench/gateway-config.sh"
features_config "$WORK" "$P_GW" "$P_GWADMIN" "$P_BACKEND" >"$WORK/gw.yaml"
# variant_config NAME PORT ADMIN_PORT [ADMIN_EXTRA]: gw.yaml on other ports, with its own pid
# file and upgrade socket, and ADMIN_EXTRA appended to the admin section -> $WORK/NAME.yaml.
variant_config() {
  sed -e "s/127.0.0.1:$P_GW\"/127.0.0.1:$2\"/; s/127.0.0.1:$P_GWADMIN\"/127.0.0.1:$3\"${4:-}/" \
      -e "s#$WORK/gw.pid#$WORK/$1.pid#; s#$WORK/gw.sock#$WORK/$1.sock#" "$WORK/gw.yaml" >"$WORK/$1.yaml"
}
# The same gateway with the per-request metric counters off (admin.metrics: false), to show
# what /metrics costs on the request path (keep-alive scenario only).
variant_config gwnm "$P_GWNM" "$P_GWNMADMIN" ", metrics: false"
# With PGO=1: the same config on the plain release build, to show what the profile-guided
# build gains (keep-alive scenario only).
variant_config gwpl "$P_GWPL" "$P_GWPLADMIN"
EXTRA_KA=(gwnm)
[ "${PGO:-0}" = 1 ] && EXTRA_KA+=(gwpl)
cat >"$WORK/gwsio.yaml" <<EOF
server: { threads: 1, pid_file: $WORK/gwsio.pid, upgrade_sock: $WORK/gwsio.sock }
listeners: [ { address: "127.0.0.1:$P_GWSIO" } ]
admin: { enabled: false }
upstreams:
  sio:
    servers: [ { address: "127.0.0.1:$P_SIO1" }, { address: "127.0.0.1:$P_SIO2" } ]
    affinity: { socketio: true }
routes: [ { upstream: sio } ]
EOF
cat >"$WORK/nginx/nginx.conf" <<EOF
# nginx as a competent operator would run it in front of one HTTP + WebSocket app.
daemon off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events {
  worker_connections 12000;
}
http {
  access_log off;
  tcp_nodelay on;
  keepalive_timeout 65s;
  keepalive_requests 100000;
  client_body_temp_path $WORK/nginx/client_body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  # WebSocket: pass Upgrade through; plain HTTP: empty Connection so upstream keep-alive works.
  map \$http_upgrade \$connection_upgrade {
    default upgrade;
    ''      '';
  }
  upstream app {
    server 127.0.0.1:$P_BACKEND;
    keepalive 64;
    keepalive_requests 100000;
    keepalive_timeout 60s;
  }
  server {
    listen 127.0.0.1:$P_NGINX backlog=4096;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Host \$host;
      proxy_set_header X-Real-IP \$remote_addr;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_read_timeout 1h;
      proxy_send_timeout 1h;
    }
  }
}
EOF
cat >"$WORK/haproxy.cfg" <<EOF
# HAProxy as a competent operator would run it in front of one HTTP + WebSocket app.
global
  nbthread 1
  maxconn 9000
defaults
  mode http
  option http-keep-alive
  option forwardfor
  http-reuse always
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 65s
  timeout tunnel 1h
frontend fe
  bind 127.0.0.1:$P_HAPROXY
  http-request set-header X-Real-IP %[src]
  http-request set-header X-Forwarded-Proto http
  default_backend app
backend app
  server s1 127.0.0.1:$P_BACKEND
EOF

# ---- processes ---------------------------------------------------------------------------
declare -A TPID   # target -> main pid
start_target() { # target
  case $1 in
    gw)
      RUST_LOG=warn taskset -c 0 "$GW" -c "$WORK/gw.yaml" >>"$WORK/logs/gw.log" 2>&1 &
      TPID[gw]=$!; PIDS+=($!); GW_PIDS+="$! "; wait_http "http://127.0.0.1:$P_GW/health" ;;
    nginx)
      rm -f "$WORK/nginx/nginx.pid"
      taskset -c 0 nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" >>"$WORK/logs/nginx.log" 2>&1 &
      TPID[nginx]=$!; PIDS+=($!); wait_http "http://127.0.0.1:$P_NGINX/health" ;;
    bare)
      taskset -c 0 "$BARE" --listen "127.0.0.1:$P_BARE" --upstream "127.0.0.1:$P_BACKEND" --threads 1 --work-stealing false >>"$WORK/logs/bare.log" 2>&1 &
      TPID[bare]=$!; PIDS+=($!); GW_PIDS+="$! "; wait_http "http://127.0.0.1:$P_BARE/health" ;;
    haproxy)
      taskset -c 0 haproxy -db -f "$WORK/haproxy.cfg" >>"$WORK/logs/haproxy.log" 2>&1 &
      TPID[haproxy]=$!; PIDS+=($!); wait_http "http://127.0.0.1:$P_HAPROXY/health" ;;
    gwnm)
      RUST_LOG=warn taskset -c 0 "$GW" -c "$WORK/gwnm.yaml" >>"$WORK/logs/gwnm.log" 2>&1 &
      TPID[gwnm]=$!; PIDS+=($!); GW_PIDS+="$! "; wait_http "http://127.0.0.1:$P_GWNM/health" ;;
    gwpl)
      RUST_LOG=warn taskset -c 0 "$REL/gateway" -c "$WORK/gwpl.yaml" >>"$WORK/logs/gwpl.log" 2>&1 &
      TPID[gwpl]=$!; PIDS+=($!); GW_PIDS+="$! "; wait_http "http://127.0.0.1:$P_GWPL/health" ;;
    gwsio)
      RUST_LOG=warn taskset -c 0 "$GW" -c "$WORK/gwsio.yaml" >>"$WORK/logs/gwsio.log" 2>&1 &
      TPID[gwsio]=$!; PIDS+=($!); GW_PIDS+="$! "; wait_http "http://127.0.0.1:$P_GWSIO/health" ;;
    direct) : ;;
  esac
}
stop_target() { # target
  local p=${TPID[$1]:-}
  [ -n "$p" ] || return 0
  kill -"$(sig_of "$p")" "$p" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  TPID[$1]=""
}
restart_target() { stop_target "$1"; start_target "$1"; }

# Pids whose CPU and memory count for a target (nginx: master + workers).
target_pids() {
  local p=${TPID[$1]:-}
  [ -n "$p" ] || return 0
  echo "$p"
  if [ "$1" = nginx ]; then
    cat /proc/"$p"/task/*/children 2>/dev/null | tr ' ' '\n' | grep -E '^[0-9]+$' || true
  fi
}
cpu_ticks() { # pids... -> "utime stime" (user space, kernel; all threads), in clock ticks
  local u=0 s=0 p a b
  for p in "$@"; do
    a=0 b=0
    read -r a b < <(sed 's/^.*) //' /proc/"$p"/stat 2>/dev/null | awk '{print $12, $13}') || true
    u=$((u + ${a:-0})); s=$((s + ${b:-0}))
  done
  echo "$u $s"
}
ticks_used() { # "u0 s0" "u1 s1" -> "total ticks (usr+sys)", for the log
  local u0 s0 u1 s1
  read -r u0 s0 <<<"$1"; read -r u1 s1 <<<"$2"
  echo "$((u1 - u0 + s1 - s0)) ($((u1 - u0))+$((s1 - s0)))"
}
record_cpu() { # scenario target run "u0 s0" "u1 s1" count -> cpu_us (total), usr_us, sys_us per unit
  local s=$1 t=$2 run=$3 n=$6 u0 s0 u1 s1
  read -r u0 s0 <<<"$4"; read -r u1 s1 <<<"$5"
  record "$s" cpu_us "$t" "$run" "$(calc "($u1 - $u0 + $s1 - $s0) * 1000000 / $CLK_TCK / $n")"
  record "$s" usr_us "$t" "$run" "$(calc "($u1 - $u0) * 1000000 / $CLK_TCK / $n")"
  record "$s" sys_us "$t" "$run" "$(calc "($s1 - $s0) * 1000000 / $CLK_TCK / $n")"
}
rss_kib() { # pids... -> summed VmRSS in KiB
  local sum=0 p v
  for p in "$@"; do
    v=$(awk '/^VmRSS:/ {print $2}' /proc/"$p"/status 2>/dev/null) || v=0
    sum=$((sum + ${v:-0}))
  done
  echo $sum
}
# Connections the backend accepted: SYNs to its port, counted by an nftables rule in this
# namespace; without nftables, PassiveOpens of the namespace (client + backend connections).
# The rule sits in the input hook, so every packet of every proxy goes through it: kernel
# work that is the same for all targets and dilutes the gateway/nginx ratios. It is therefore
# installed only for a short counting pass of the new-connection scenario (nft_on ... nft_off)
# and is absent while any CPU, latency or memory figure is measured.
nft_on() {
  nft add table inet gwbench 2>/dev/null \
    && nft add counter inet gwbench bsyn \
    && nft add chain inet gwbench in '{ type filter hook input priority 0; policy accept; }' \
    && nft add rule inet gwbench in tcp dport $P_BACKEND 'tcp flags & (syn|ack) == syn' counter name bsyn
}
nft_off() { nft delete table inet gwbench 2>/dev/null || true; }
BACKEND_SYN=0
if [ "${NO_NETNS:-0}" != 1 ] && command -v nft >/dev/null 2>&1 && nft_on; then
  BACKEND_SYN=1
fi
nft_off
COUNT_DURATION=${COUNT_DURATION:-2}   # seconds of the new-connection counting pass
log "backend connection count: $([ $BACKEND_SYN = 1 ] && echo "nftables SYN counter on :$P_BACKEND, ${COUNT_DURATION} s counting pass after each new-connection run (no rule during the measured runs)" || echo "PassiveOpens - requests")"
backend_syns() { nft list counter inet gwbench bsyn | awk '{ for (i = 1; i < NF; i++) if ($i == "packets") print $(i + 1) }'; }
passive_opens() { awk '/^Tcp:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "PassiveOpens") c = i; h = 1 } else print $c }' /proc/net/snmp; }
port_of() { case $1 in gw) echo $P_GW ;; bare) echo $P_BARE ;; nginx) echo $P_NGINX ;; haproxy) echo $P_HAPROXY ;; direct) echo $P_BACKEND ;; gwsio) echo $P_GWSIO ;; gwnm) echo $P_GWNM ;; gwpl) echo $P_GWPL ;; esac; }
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RES"; } # scenario metric target run value
calc() { awk "BEGIN { printf \"%.3f\", $* }"; }
to_us() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) { sub(/us$/, "", v); print v + 0 } else if (v ~ /ms$/) { sub(/ms$/, "", v); print v * 1000 } else if (v ~ /s$/) { sub(/s$/, "", v); print v * 1000000 } else print v + 0 }'; }
jget() { python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get(sys.argv[2], 0))' "$1" "$2"; }

log "starting backends (CPU 1) and proxies (CPU 0)"
taskset -c 1 "$DEMO" --listen 127.0.0.1:$P_BACKEND --name b1 >"$WORK/logs/demo_backend.log" 2>&1 &
PIDS+=($!)
(cd "$SIO_DIR" && exec taskset -c 1 node backend.js --port $P_SIO1 --name n1) >"$WORK/logs/sio1.log" 2>&1 &
PIDS+=($!)
(cd "$SIO_DIR" && exec taskset -c 1 node backend.js --port $P_SIO2 --name n2) >"$WORK/logs/sio2.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$P_BACKEND/health"
wait_http "http://127.0.0.1:$P_SIO1/health"
wait_http "http://127.0.0.1:$P_SIO2/health"
for t in gw "${EXTRA_KA[@]}" bare nginx haproxy gwsio; do start_target $t; done
TARGETS=(gw bare nginx haproxy direct)

log "warm-up"
for t in "${TARGETS[@]}"; do
  bounded 30 taskset -c 1 wrk -t1 -c"$HTTP_CONNS" -d1s "http://127.0.0.1:$(port_of $t)/health" >/dev/null
done

# ---- scenarios ---------------------------------------------------------------------------
wrk_parse() { # file -> "rps reqs p50_us p99_us errors"
  local f=$1 rps reqs p50 p99 err non2xx
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$f")
  reqs=$(awk '/requests in/ {print $1}' "$f")
  p50=$(to_us "$(awk '$1 == "50%" {print $2}' "$f")")
  p99=$(to_us "$(awk '$1 == "99%" {print $2}' "$f")")
  err=$(awk '/Socket errors:/ { gsub(",", ""); print $4 + $6 + $8 + $10 }' "$f")
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$f")
  echo "${rps:-0} ${reqs:-0} ${p50:-0} ${p99:-0} $(( ${err:-0} + ${non2xx:-0} ))"
}

scn_http() { # target run mode(ka|close) [seconds]
  local t=$1 run=$2 mode=$3 dur=${4:-$DURATION} port pids c0 c1 po0=0 po1=0 f hdr=()
  port=$(port_of "$t"); pids=$(target_pids "$t")
  [ "$mode" = close ] && hdr=(-H "Connection: close")
  f="$WORK/logs/wrk-$mode-$t-$run.txt"
  [ $BACKEND_SYN = 1 ] || po0=$(passive_opens)
  c0=$(cpu_ticks $pids)
  bounded $((dur + 30)) taskset -c 1 wrk -t1 -c"$HTTP_CONNS" -d"${dur}s" --latency "${hdr[@]}" "http://127.0.0.1:$port/health" >"$f" 2>&1 || true
  c1=$(cpu_ticks $pids)
  [ $BACKEND_SYN = 1 ] || po1=$(passive_opens)
  read -r rps reqs p50 p99 errs < <(wrk_parse "$f")
  local s=http_$mode
  record $s rps "$t" "$run" "$rps"
  record $s p50_us "$t" "$run" "$p50"
  record $s p99_us "$t" "$run" "$p99"
  record $s errors "$t" "$run" "$errs"
  if [ "$t" != direct ] && [ "${reqs:-0}" -gt 0 ]; then
    record_cpu $s "$t" "$run" "$c0" "$c1" "$reqs"
  fi
  local extra=""
  if [ "$mode" = close ] && [ "${reqs:-0}" -gt 0 ]; then
    local b n=$reqs
    if [ $BACKEND_SYN = 1 ]; then
      # Counting pass: the same load for COUNT_DURATION s with the SYN-counter rule installed
      # (pool warm from the run above); SYNs to the backend port per request of this pass.
      # Direct: the client connections are the backend's.
      local fc="$WORK/logs/wrk-count-$t-$run.txt"
      b=0; n=0
      if nft_on; then
        bounded $((COUNT_DURATION + 30)) taskset -c 1 wrk -t1 -c"$HTTP_CONNS" -d"${COUNT_DURATION}s" "${hdr[@]}" "http://127.0.0.1:$port/health" >"$fc" 2>&1 || true
        b=$(backend_syns); b=${b:-0}
        read -r _ n _ _ _ < <(wrk_parse "$fc")
      fi
      nft_off
    else
      # PassiveOpens = client connections (one per request, +<=HTTP_CONNS in flight at the end)
      # + connections the backend accepted.
      b=$((po1 - po0))
      if [ "$t" != direct ]; then b=$((b - reqs)); [ $b -lt 0 ] && b=0; fi
    fi
    if [ "${n:-0}" -gt 0 ]; then
      record $s backend_conns_per_1k "$t" "$run" "$(calc "$b * 1000 / $n")"
      extra=", backend conns $b per $n requests"
    fi
  fi
  log "  $s $t: $rps req/s p50 ${p50}us p99 ${p99}us errors $errs cpu $(ticks_used "$c0" "$c1") ticks$extra"
}

scn_ws_echo() { # target run [seconds]
  local t=$1 run=$2 dur=${3:-$DURATION} port pids c0 c1 out
  port=$(port_of "$t"); pids=$(target_pids "$t")
  c0=$(cpu_ticks $pids)
  out=$(bounded $((dur + 60)) taskset -c 1 "$WSB" echo --addr "127.0.0.1:$port" --conns "$WS_CONNS" --duration "${dur}s" --size 32 2>>"$WORK/logs/wsbench.err" | tail -1) || true
  c1=$(cpu_ticks $pids)
  [ -n "$out" ] || out='{}'
  local msgs; msgs=$(jget "$out" messages)
  record ws_echo mps "$t" "$run" "$(jget "$out" msgs_per_s)"
  record ws_echo p50_us "$t" "$run" "$(jget "$out" p50_us)"
  record ws_echo p99_us "$t" "$run" "$(jget "$out" p99_us)"
  record ws_echo errors "$t" "$run" "$(( $(jget "$out" errors) + WS_CONNS - $(jget "$out" connected) ))"
  if [ "$t" != direct ] && [ "$msgs" -gt 0 ]; then
    record_cpu ws_echo "$t" "$run" "$c0" "$c1" "$msgs"
  fi
  log "  ws_echo $t: $out cpu $(ticks_used "$c0" "$c1") ticks"
}

scn_ws_idle() { # target run  (fresh proxy process: RSS before vs while IDLE_CONNS are held)
  local t=$1 run=$2 port pids r0 r1 r2 f out
  port=$(port_of "$t")
  restart_target "$t"
  # Warm: a few requests and WebSockets, so the baseline includes an initialised process.
  for _ in 1 2 3; do curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$port/health" || true; done
  bounded 20 taskset -c 1 "$WSB" echo --addr "127.0.0.1:$port" --conns 4 --duration 0.3s >/dev/null 2>&1 || true
  sleep 0.5
  pids=$(target_pids "$t")
  r0=$(rss_kib $pids)
  f="$WORK/logs/idle-$t-$run.txt"
  taskset -c 1 timeout -k 5 $((HOLD + 180)) "$WSB" idle --addr "127.0.0.1:$port" --conns "$IDLE_CONNS" --hold "${HOLD}s" --concurrency 200 >"$f" 2>>"$WORK/logs/wsbench.err" &
  local wp=$!
  PIDS+=($wp)
  local connected=0
  for _ in $(seq 1200); do
    if grep -q '^connected' "$f"; then connected=$(awk '/^connected/ {print $2}' "$f"); break; fi
    kill -0 $wp 2>/dev/null || break
    sleep 0.1
  done
  sleep 1
  r1=$(rss_kib $pids)
  sleep $(( HOLD > 3 ? HOLD / 2 : 1 ))
  r2=$(rss_kib $pids)
  [ "$r2" -gt "$r1" ] && r1=$r2
  wait $wp 2>/dev/null || true
  # After the close (wsbench has closed every WebSocket and exited): RSS every 0.5 s until it
  # has not fallen for 6 s (longer than the gateway's 5 s heap-trim interval) or 12 s have
  # passed, whichever comes first; the last reading counts.
  local r3 r3min i still=0 waited=0
  r3=$(rss_kib $pids); r3min=$r3
  for i in $(seq 24); do
    sleep 0.5
    r3=$(rss_kib $pids)
    if [ "$r3" -lt $(( r3min - (r3min / 100 > 256 ? r3min / 100 : 256) )) ]; then still=0; else still=$((still + 1)); fi
    [ "$r3" -lt "$r3min" ] && r3min=$r3
    waited=$(awk -v i="$i" 'BEGIN { printf "%.1f", i / 2 }')
    [ $still -ge 12 ] && break
  done
  out=$(tail -1 "$f"); [[ "$out" == "{"* ]] || out='{}'
  local alive; alive=$(jget "$out" alive)
  record ws_idle base_mib "$t" "$run" "$(calc "$r0 / 1024")"
  record ws_idle held_mib "$t" "$run" "$(calc "$r1 / 1024")"
  record ws_idle after_mib "$t" "$run" "$(calc "$r3 / 1024")"
  [ "$r0" -gt 0 ] && record ws_idle after_ratio "$t" "$run" "$(calc "$r3 / $r0")"
  record ws_idle after_wait_s "$t" "$run" "$waited"
  if [ "${connected:-0}" -gt 0 ]; then
    record ws_idle kib_per_conn "$t" "$run" "$(calc "($r1 - $r0) / $connected")"
  fi
  record ws_idle errors "$t" "$run" "$(( IDLE_CONNS - alive ))"
  log "  ws_idle $t: connected $connected, RSS ${r0} -> ${r1} KiB held -> ${r3} KiB ${waited} s after the close, $out"
}

scn_sio() { # target(gwsio|direct) run
  local t=$1 run=$2 url pids c0 c1 out out1 col
  if [ "$t" = gwsio ]; then url="http://127.0.0.1:$P_GWSIO"; col=gw; else url="http://127.0.0.1:$P_SIO1"; col=direct; fi
  pids=$(target_pids "$t")
  local stats="http://127.0.0.1:$P_SIO1/stats,http://127.0.0.1:$P_SIO2/stats"
  c0=$(cpu_ticks $pids)
  out=$(bounded $((DURATION + 60)) taskset -c 1 node "$ROOT/bench/sio_bench.js" --url "$url" --clients "$SIO_CLIENTS" \
        --duration "$DURATION" --emits "$SIO_EMITS" --stats "$stats" 2>>"$WORK/logs/sio_bench.err" | tail -1) || true
  c1=$(cpu_ticks $pids)
  [[ "$out" == "{"* ]] || out='{}'
  local lat_d=$(( DURATION / 2 > 2 ? DURATION / 2 : 2 ))
  out1=$(bounded $((lat_d + 60)) taskset -c 1 node "$ROOT/bench/sio_bench.js" --url "$url" --clients 1 \
        --duration "$lat_d" --emits "$SIO_EMITS" 2>>"$WORK/logs/sio_bench.err" | tail -1) || true
  [[ "$out1" == "{"* ]] || out1='{}'
  record sio rt_per_s "$col" "$run" "$(jget "$out" rt_per_s)"
  record sio p50_us "$col" "$run" "$(jget "$out" p50_us)"
  record sio p99_us "$col" "$run" "$(jget "$out" p99_us)"
  record sio p50_1c_us "$col" "$run" "$(jget "$out1" p50_us)"
  record sio req_per_rt "$col" "$run" "$(calc "$(jget "$out" http_requests) / ($(jget "$out" round_trips) + 0.000001)")"
  record sio errors "$col" "$run" "$(( $(jget "$out" errors) + $(jget "$out1" errors) ))"
  local reqs; reqs=$(jget "$out" http_requests)
  if [ "$t" = gwsio ] && [ "$reqs" -gt 0 ]; then
    record_cpu sio "$col" "$run" "$c0" "$c1" "$reqs"
  fi
  log "  sio $t: $out | 1 client: $out1 | cpu $(ticks_used "$c0" "$c1") ticks"
}

# ---- the runs ----------------------------------------------------------------------------
# Each run starts the rotation one target later, so that no target always runs first (right
# after another scenario) or last: this VM's speed drifts within a round.
rotated() { # run list... -> the list rotated left by run - 1
  local r=$1; shift; local n=$#; local a=("$@") i
  for ((i = 0; i < n; i++)); do echo "${a[$(((i + r - 1) % n))]}"; done
}
# Keep-alive and WebSocket echo, where the gateway and nginx are within a few per cent of each
# other, run as ROUNDS short rounds per run instead of one long one: each round is a sample of
# its own (numbered (run - 1) * ROUNDS + round), every target measured within seconds of the
# others, so a slow minute of the VM moves one round of every target rather than one target's
# whole run. The report gives the median of the samples and of the per-round ratios.
for run in $(seq "$RUNS"); do
  mapfile -t ORDER < <(rotated "$run" "${TARGETS[@]}")
  for r in $(seq "$ROUNDS"); do
    sample=$(( (run - 1) * ROUNDS + r ))
    mapfile -t ORDER_KA < <(rotated "$sample" "${TARGETS[@]}" "${EXTRA_KA[@]}")
    log "run $run/$RUNS, round $r/$ROUNDS: HTTP keep-alive (${ORDER_KA[*]})"
    for t in "${ORDER_KA[@]}"; do scn_http "$t" "$sample" ka "$ROUND_DURATION"; done
  done
  log "run $run/$RUNS: HTTP new connection per request (${ORDER[*]})"
  for t in "${ORDER[@]}"; do scn_http "$t" "$run" close; done
  for r in $(seq "$ROUNDS"); do
    sample=$(( (run - 1) * ROUNDS + r ))
    mapfile -t ORDER_WS < <(rotated "$sample" "${TARGETS[@]}")
    log "run $run/$RUNS, round $r/$ROUNDS: WebSocket echo (${ORDER_WS[*]})"
    for t in "${ORDER_WS[@]}"; do scn_ws_echo "$t" "$sample" "$ROUND_DURATION"; done
  done
  log "run $run/$RUNS: idle WebSockets"
  for t in gw bare nginx haproxy; do scn_ws_idle "$t" "$run"; done
  log "run $run/$RUNS: Socket.IO polling"
  for t in gwsio direct; do scn_sio "$t" "$run"; done
done

log "sid table and route lookup micro-benchmarks (CPU 0)"
sid_out=$(bounded 120 taskset -c 0 "$REL/examples/sid_table_bench" | tee "$WORK/logs/sid_table_bench.txt" | tail -1)
route_out=$(bounded 300 taskset -c 0 "$REL/examples/route_bench" | tee "$WORK/logs/route_bench.txt" | tail -1)
echo "$sid_out" >"$WORK/sid.json"
echo "$route_out" >"$WORK/route.json"

# ---- report ------------------------------------------------------------------------------
# First lines read with `sed -n 1p` (reads everything): `head -1` may exit before the writer is
# done, and its SIGPIPE (exit 141) would stop the script here under `set -o pipefail`.
NGINX_V=$(nginx -v 2>&1 | sed -n 1p)
HAPROXY_V=$(haproxy -v 2>&1 | sed -n 1p)
GW_V=$("$GW" --version 2>&1 | sed -n 1p)$([ "${PGO:-0}" = 1 ] && echo " (profile-guided build, scripts/build-pgo.sh; bare Pingora too)")
CPU_MODEL=$(lscpu 2>/dev/null | awk -F: '/Model name/ && !m {gsub(/^ +/, "", $2); m = $2} END {print m}')
ELAPSED=$(( $(date +%s) - ${BENCH_START_TS:-$(date +%s)} ))
python3 "$ROOT/bench/report.py" --results "$RES" --sid "$WORK/sid.json" --route "$WORK/route.json" \
  --out "$ROOT/bench/results.md" --date "$(date -u +'%Y-%m-%d %H:%M UTC')" --nproc "$(nproc)" \
  --cpu "$CPU_MODEL" --kernel "$(uname -r)" --nginx "$NGINX_V" --haproxy "$HAPROXY_V" --gateway "$GW_V" \
  --cmd "${BENCH_CMD:-bench/run.sh}" --elapsed "$ELAPSED" --load "$(cut -d' ' -f1-3 /proc/loadavg)" \
  --sid-text "$WORK/logs/sid_table_bench.txt" --route-text "$WORK/logs/route_bench.txt"
cp "$RES" "$ROOT/bench/results.tsv"
