#!/usr/bin/env bash
# Checks deploy/kubernetes/ as a user would apply it, offline once installed:
#  1. every manifest, and the kustomization rendered as `kubectl apply -k` sends it (kubectl
#     kustomize, when kubectl is there), against the Kubernetes JSON schemas of the oldest and
#     newest supported versions with kubernetes-validate (PyPI, schemas bundled; installed
#     into a venv under target/ when missing), strict: unknown fields, wrong types and unknown
#     kinds are errors;
#  2. the manifests agree with the gateway config they carry (scripts/check_deploy.py: ports,
#     probes, mounts, secret files, writable paths, shutdown budget, discovery Service);
#  3. `gateway -t` on the config extracted from the ConfigMap (secrets from the Secret);
#  4. negative checks: a copy with a typo'd field, one with a drifted mount and one with a bad
#     gateway key must each be refused, so a validator that checks nothing fails this script.
# Usage: scripts/check-deploy.sh   (GATEWAY_BIN: default target/debug/gateway, built if missing;
#        KUBECTL: default kubectl; without one the listed files are checked unrendered)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$root/deploy/kubernetes"
venv="$root/target/k8s-validate-venv"
validator_pkg="kubernetes-validate==1.37.0"
k8s_versions=(1.30.0 1.37.0)   # preStop `sleep` needs 1.30; 1.37 is the newest bundled
gateway="${GATEWAY_BIN:-$root/target/debug/gateway}"
kubectl="${KUBECTL:-kubectl}"
say() { echo "check-deploy: $*" >&2; }

if ! "$venv/bin/kubernetes-validate" --version 2>/dev/null | grep -q "${validator_pkg#*==}"; then
  say "installing $validator_pkg into ${venv#"$root"/}"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$validator_pkg"
fi
py="$venv/bin/python"
if [ ! -x "$gateway" ]; then
  say "building the gateway"
  (cd "$root" && cargo build --bin gateway)
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The resource files a kustomization lists, one path a line (all must exist).
resources() {
  "$py" - "$1" <<'EOF'
import os, sys, yaml
d = sys.argv[1]
k = yaml.safe_load(open(os.path.join(d, "kustomization.yaml"), encoding="utf-8"))
for r in k["resources"]:
    p = os.path.join(d, r)
    if not os.path.isfile(p):
        sys.exit(f"kustomization.yaml lists {r}, which is missing")
    print(p)
EOF
}

# Renders directory $1 to file $2: `kubectl kustomize` when kubectl is there (what apply -k
# sends), else the listed files concatenated.
render() {
  if command -v "$kubectl" >/dev/null 2>&1; then
    "$kubectl" kustomize "$1" >"$2"
  else
    local f
    : >"$2"
    while read -r f; do { cat "$f"; echo "---"; } >>"$2"; done < <(resources "$1")
  fi
}

# Schema-validates the files given, for every version; any warning (an unknown kind or
# apiVersion has no schema) or error fails. Prints what the validator said.
validate() {
  local v out status=0
  for v in "${k8s_versions[@]}"; do
    out="$("$venv/bin/kubernetes-validate" --strict --quiet -k "$v" "$@" 2>&1)" || status=1
    if [ -n "$out" ]; then echo "$out"; status=1; fi
  done
  return $status
}

# Checks directory $1 (schemas, consistency, gateway -t); output in $work/$2.*.
check_dir() {
  local d="$1" name="$2" files
  resources "$d" >"$work/$name.files" || return 1
  mapfile -t files <"$work/$name.files"
  [ ${#files[@]} -gt 0 ] || { echo "kustomization.yaml lists no resources"; return 1; }
  # Every manifest beside the kustomization is listed in it (else apply -k skips it).
  local f
  for f in "$d"/*.yaml; do
    [ "$(basename "$f")" = kustomization.yaml ] && continue
    printf '%s\n' "${files[@]}" | grep -qxF "$f" || { echo "$f is not listed in kustomization.yaml"; return 1; }
  done
  render "$d" "$work/$name.rendered.yaml" || return 1
  validate "${files[@]}" "$work/$name.rendered.yaml" || return 1
  mkdir -p "$work/$name.conf"
  "$py" "$root/scripts/check_deploy.py" "$work/$name.rendered.yaml" "$work/$name.conf" || return 1
  "$gateway" -t -c "$work/$name.conf/gateway.yaml" || return 1
}

say "validating deploy/kubernetes (kubernetes ${k8s_versions[*]}, strict)"
if ! check_dir "$dir" ok >"$work/ok.log" 2>&1; then
  cat "$work/ok.log" >&2
  say "FAILED"
  exit 1
fi
grep -v '^$' "$work/ok.log" | sed 's/^/  /' >&2 || true
say "deploy/kubernetes: $(resources "$dir" | wc -l) manifests valid; gateway -t accepts the ConfigMap's config"

# Negative checks: each broken copy must be refused, with the expected complaint.
broken() {
  local label="$1" file="$2" from="$3" to="$4" expect="$5"
  rm -rf "$work/neg" && cp -r "$dir" "$work/neg"
  grep -qF -- "$from" "$work/neg/$file" || { say "negative check '$label': '$from' not found in $file"; exit 1; }
  sed -i "s|$from|$to|" "$work/neg/$file"
  if check_dir "$work/neg" neg >"$work/neg.log" 2>&1; then
    say "negative check '$label' FAILED: a broken copy passed"
    exit 1
  fi
  if ! grep -qF -- "$expect" "$work/neg.log"; then
    cat "$work/neg.log" >&2
    say "negative check '$label' FAILED: refused, but without '$expect'"
    exit 1
  fi
  say "negative check '$label': refused as expected"
}
broken "typo'd field" gateway-deployment.yaml "readinessProbe:" "readinesProbe:" "'readinesProbe' was unexpected"
broken "mount drifted from the config" gateway-deployment.yaml "mountPath: /etc/gateway/secrets," "mountPath: /etc/gateway/secret," "no volume mounted at /etc/gateway/secrets/"
broken "unknown gateway key" gateway-config.yaml "balance: least_conn" "balanse: least_conn" "balanse"
say "ok"
