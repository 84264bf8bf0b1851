#!/usr/bin/env bash
# HTTPS side by side: the gateway, nginx (1 worker) and HAProxy (nbthread 1) terminating TLS
# with the same ECDSA P-256 certificate in front of the same demo backend, proxy pinned to
# CPU 0, wrk and the backend to CPU 1, targets interleaved run by run, medians printed.
#   keep-alive: wrk -c64 over HTTPS        -> requests/s, proxy CPU us/request
#   handshakes: wrk -c32 Connection: close -> full TLS handshakes/s, proxy CPU us/handshake
# Usage: bench/tls.sh   (env: RUNS=3 DURATION=8; GATEWAY_BIN, default target/release/gateway:
#        target/pgo/use/release/gateway measures the profile-guided build)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
RUNS=${RUNS:-3}
DURATION=${DURATION:-8}
need=()
for c in nginx haproxy wrk taskset openssl; do command -v $c >/dev/null 2>&1 || need+=($c); done
if [ ${#need[@]} -gt 0 ]; then
  pk=(); for c in "${need[@]}"; do case $c in taskset) pk+=(util-linux);; *) pk+=($c);; esac; done
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pk[@]}" >/dev/null
fi
"$root/scripts/deps.sh" >/dev/null 2>&1 || SKIP_NODE=1 "$root/scripts/deps.sh"
(cd "$root" && cargo build -q --release --bin gateway --example demo_backend)
# Absolute: the script runs in its own directory below.
GATEWAY_BIN=$(realpath "${GATEWAY_BIN:-$root/target/release/gateway}")
[ -x "$GATEWAY_BIN" ] || { echo "bench/tls.sh: $GATEWAY_BIN is not an executable" >&2; exit 1; }
work=$(mktemp -d /tmp/gw-tls-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$work"; }
trap cleanup EXIT INT TERM

cd "$work"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout site.key -out site.pem \
  -days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 2>/dev/null
cat site.pem site.key > combined.pem
BPORT=18201; GW=18443; NG=18444; HA=18445
taskset -c 1 "$root/target/release/examples/demo_backend" --listen 127.0.0.1:$BPORT --name b >/dev/null 2>&1 & pids+=($!)

cat > gw.yaml <<YAML
server: { threads: 1, pid_file: $work/gw.pid, upgrade_sock: $work/gw.sock }
listeners: [ { address: "127.0.0.1:$GW", tls: { certificates: [ { cert: $work/site.pem, key: $work/site.key } ] } } ]
admin: { enabled: false }
upstreams: { app: { servers: [ { address: "127.0.0.1:$BPORT" } ] } }
routes: [ { upstream: app } ]
YAML
RUST_LOG=warn taskset -c 0 "$GATEWAY_BIN" -c gw.yaml >gw.log 2>&1 & pids+=($!); gwpid=$!

cat > nginx.conf <<NGX
worker_processes 1; daemon off; pid $work/nginx.pid; error_log $work/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream app { server 127.0.0.1:$BPORT; keepalive 64; }
  server {
    listen 127.0.0.1:$NG ssl;
    ssl_certificate $work/site.pem; ssl_certificate_key $work/site.key;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache off; ssl_session_tickets off;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGX
taskset -c 0 nginx -c "$work/nginx.conf" -p "$work" >/dev/null 2>&1 & pids+=($!); ngpid=$!

cat > haproxy.cfg <<HAP
global
  nbthread 1
  maxconn 8000
  tune.ssl.default-dh-param 2048
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  bind 127.0.0.1:$HA ssl crt $work/combined.pem no-tls-tickets
  default_backend be
backend be
  server b 127.0.0.1:$BPORT
HAP
taskset -c 0 haproxy -f haproxy.cfg -db >/dev/null 2>&1 & pids+=($!); hapid=$!
sleep 1.5

cpu_ticks() { local t=0; for p in "$@"; do [ -r /proc/$p/stat ] && t=$((t + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $t; }
procs_of() { case $1 in gw) echo $gwpid;; nginx) echo "$ngpid $(pgrep -P $ngpid | tr '\n' ' ')";; haproxy) echo $hapid;; esac; }
port_of() { case $1 in gw) echo $GW;; nginx) echo $NG;; haproxy) echo $HA;; esac; }
hz=$(getconf CLK_TCK)
# Every proxy answers before anything is measured (a table of empty rows measures nothing).
for t in gw nginx haproxy; do
  for _ in $(seq 50); do
    curl -ksf -o /dev/null "https://127.0.0.1:$(port_of $t)/" && continue 2
    sleep 0.2
  done
  echo "bench/tls.sh: $t does not answer on https://127.0.0.1:$(port_of $t)/" >&2
  [ $t = gw ] && cat gw.log >&2
  exit 1
done
declare -A res
for run in $(seq 1 "$RUNS"); do
  for t in gw nginx haproxy; do
    for mode in ka hs; do
      args=(-t1 -c64 -d${DURATION}s); [ $mode = hs ] && args=(-t1 -c32 -d${DURATION}s -H "Connection: close")
      ps=$(procs_of $t); before=$(cpu_ticks $ps)
      out=$(taskset -c 1 wrk "${args[@]}" "https://127.0.0.1:$(port_of $t)/" 2>&1 || true)
      after=$(cpu_ticks $ps)
      reqs=$(echo "$out" | awk '/requests in/ {print $1}')
      [ "${reqs:-0}" -gt 0 ] 2>/dev/null || { echo "bench/tls.sh: no answers from $t ($mode): $out" >&2; exit 1; }
      rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
      errs=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
      cpu=$(awk -v a=$after -v b=$before -v hz=$hz -v n=$reqs 'BEGIN { printf "%.1f", (a-b)/hz*1e6/(n>0?n:1) }')
      res[$t.$mode.rps]+="$rps "; res[$t.$mode.cpu]+="$cpu "
      echo "run $run $t $mode: $rps req/s, $cpu us CPU/req ${errs}" >&2
    done
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END { print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2) }'; }
row() { local label=$1 key=$2; local g n h; g=$(echo ${res[gw.$key]} | median); n=$(echo ${res[nginx.$key]} | median); h=$(echo ${res[haproxy.$key]} | median)
  printf "| %s | %s | %s | %s | %s |\n" "$label" "$g" "$n" "$h" "$(awk -v g=$g -v n=$n 'BEGIN { printf "%.2f", g/n }')"; }
{
  echo "HTTPS, $(date -u +'%Y-%m-%d %H:%M UTC'), $(nproc) CPUs ($(lscpu | awk -F: '/Model name/ {gsub(/^ +/,"",$2); print $2; exit}')), RUNS=$RUNS DURATION=$DURATION, ECDSA P-256, TLS session resumption off"
  echo
  echo "| scenario | gateway | nginx | HAProxy | gateway/nginx |"
  echo "|---|---:|---:|---:|---:|"
  row "HTTPS keep-alive, 64 conns: requests/s" ka.rps
  row "HTTPS keep-alive: proxy CPU µs/request" ka.cpu
  row "full TLS handshake per request, 32 conns: handshakes/s" hs.rps
  row "full TLS handshake: proxy CPU µs/handshake" hs.cpu
}
