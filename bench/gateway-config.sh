# Sourced by bench/run.sh, bench/instructions.sh and scripts/build-pgo.sh: the gateway config
# they measure (and the profile-guided build trains on).
#
# features_config DIR PROXY_PORT ADMIN_PORT BACKEND_PORT [LISTENER] prints the gateway with its
# features on: a route table (the benchmark's requests match the last route), forwarded headers
# (X-Forwarded-For/-Proto/-Host/-Port, X-Real-IP: defaults), an active HTTP health check,
# Socket.IO affinity on the pool, per-backend counters served on the admin listener; pid file
# and upgrade socket in DIR; LISTENER, a YAML flow mapping, is a second listener (the PGO
# training's HTTPS one). Compared with "bare": Pingora's round-robin example on the same build.
features_config() {
  local dir=$1 proxy=$2 admin=$3 backend=$4 extra=${5:-}
  cat <<EOF
server: { threads: 1, pid_file: $dir/gw.pid, upgrade_sock: $dir/gw.sock }
listeners: [ { address: "127.0.0.1:$proxy" }${extra:+, $extra} ]
admin: { address: "127.0.0.1:$admin" }
upstreams:
  app:
    servers: [ { address: "127.0.0.1:$backend" } ]
    health_check: { http: { path: /health }, interval: 1s }
    affinity: { socketio: true }
routes:
  - { match: { host: api.example.com, path_prefix: /v1/ }, upstream: app, strip_prefix: true }
  - { match: { host: "*.example.org" }, upstream: app }
  - { match: { path: /robots.txt }, respond: { body: "User-agent: *\n" } }
  - { match: { path_prefix: /old/ }, redirect: { to: /new/, keep_path: true } }
  - { match: { path_prefix: /static/ }, upstream: app, response_headers: { set: { Cache-Control: "max-age=60" } } }
  - { upstream: app }
EOF
}
