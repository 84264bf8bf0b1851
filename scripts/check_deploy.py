#!/usr/bin/env python3
"""Checks that the Kubernetes manifests and the gateway config they carry agree.

Used by scripts/check-deploy.sh (schema validation is kubernetes-validate's job; this is what
no schema sees): `check_deploy.py MANIFESTS.yaml OUT_DIR` reads every document of the rendered
manifests, writes the gateway config from the ConfigMap to OUT_DIR/gateway.yaml with the
Secret's files under OUT_DIR/secrets/ (paths rewritten there, for `gateway -t`), and fails
(exit 1, one line per problem) when the Deployment, its probes, mounts and Services do not
match that config: a port, path or key that drifted apart breaks the cluster, not `-t`.
"""

import base64
import os
import sys

import yaml

CONFIG_ARG = "-c"
SECRETS_DIR_IN_POD = "/etc/gateway/secrets/"


def load(path):
    """Every non-empty document of `path`, keyed by (kind, name)."""
    with open(path, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    return {(d.get("kind"), d.get("metadata", {}).get("name")): d for d in docs}


def port_of(address):
    """The port of an `IP:port` / `name:port` address."""
    return int(str(address).rsplit(":", 1)[1])


def named_port(container, port):
    """A container port given by name or number, as a number (None when unknown)."""
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    return None


def check(docs, out_dir):
    """Problems found (strings); writes the extracted config and secrets to `out_dir`."""
    problems = []

    def need(cond, msg):
        if not cond:
            problems.append(msg)
        return cond

    dep = docs.get(("Deployment", "gateway"))
    if not need(dep, "no Deployment named gateway"):
        return problems
    pod = dep["spec"]["template"]["spec"]
    ctr = next((c for c in pod["containers"] if c["name"] == "gateway"), None)
    if not need(ctr, "the gateway Deployment has no container named gateway"):
        return problems
    args = ctr.get("command", []) + ctr.get("args", [])
    if not need(CONFIG_ARG in args[:-1], f"gateway container runs {args} without {CONFIG_ARG} FILE"):
        return problems
    conf_path = args[args.index(CONFIG_ARG) + 1]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = ctr.get("volumeMounts", [])

    # The config file: a ConfigMap key mounted at exactly the path given with -c.
    conf_mount = next((m for m in mounts if m["mountPath"] == conf_path), None)
    if conf_mount is None:
        conf_mount = next((m for m in mounts if conf_path.startswith(m["mountPath"].rstrip("/") + "/")), None)
        key = conf_path[len(conf_mount["mountPath"].rstrip("/")) + 1:] if conf_mount else None
    else:
        key = conf_mount.get("subPath")
    if not need(conf_mount and key, f"nothing mounted at {conf_path} (the -c path)"):
        return problems
    vol = volumes.get(conf_mount["name"], {})
    cm_name = vol.get("configMap", {}).get("name")
    cm = docs.get(("ConfigMap", cm_name))
    if not need(cm and key in cm.get("data", {}), f"{conf_path}: no ConfigMap {cm_name} with key {key}"):
        return problems
    text = cm["data"][key]
    conf = yaml.safe_load(text)

    # The Secret: mounted where the config reads its files, every file it names present.
    sec_mount = next((m for m in mounts if m["mountPath"].rstrip("/") + "/" == SECRETS_DIR_IN_POD), None)
    if need(sec_mount, f"no volume mounted at {SECRETS_DIR_IN_POD}"):
        sec_name = volumes.get(sec_mount["name"], {}).get("secret", {}).get("secretName")
        sec = docs.get(("Secret", sec_name))
        if need(sec, f"{SECRETS_DIR_IN_POD}: no Secret {sec_name}"):
            files = {k: base64.b64decode(v).decode("utf-8") for k, v in (sec.get("data") or {}).items()}
            files.update(sec.get("stringData") or {})
            os.makedirs(os.path.join(out_dir, "secrets"), exist_ok=True)
            for name, value in files.items():
                with open(os.path.join(out_dir, "secrets", name), "w", encoding="utf-8") as f:
                    f.write(value)
            named = [conf.get("admin", {}).get("token_file")]
            named += [p.get("affinity", {}).get("secret_file") for p in conf.get("upstreams", {}).values()]
            for path in filter(None, named):
                need(path.startswith(SECRETS_DIR_IN_POD) and path[len(SECRETS_DIR_IN_POD):] in files,
                     f"config names {path}, which the Secret {sec_name} mounted at {SECRETS_DIR_IN_POD} does not hold")

    # Ports: the listener behind the Service, the admin listener behind the probes.
    admin = conf.get("admin", {})
    need(str(admin.get("address", "")).startswith("0.0.0.0:"),
         f"admin.address {admin.get('address')} is not on all interfaces: the kubelet's probes cannot reach it")
    admin_port = port_of(admin.get("address", "127.0.0.1:9901"))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = ctr.get(probe, {}).get("httpGet")
        if need(get, f"gateway container has no {probe} httpGet"):
            need(get.get("path") == "/health" and named_port(ctr, get.get("port")) == admin_port,
                 f"{probe} asks {get.get('path')} on port {get.get('port')}, not /health on the admin port {admin_port}")
    listener_ports = {port_of(l["address"]) for l in conf.get("listeners", [])}
    svc = docs.get(("Service", "gateway"))
    if need(svc, "no Service named gateway"):
        for p in svc["spec"]["ports"]:
            need(named_port(ctr, p.get("targetPort", p["port"])) in listener_ports,
                 f"Service gateway port {p['port']} targets {p.get('targetPort')}, not a listener port {sorted(listener_ports)}")

    # Writable paths on a read-only root: pid_file and upgrade_sock on a mounted volume.
    server = conf.get("server", {})
    if ctr.get("securityContext", {}).get("readOnlyRootFilesystem"):
        for k in ("pid_file", "upgrade_sock"):
            path = server.get(k)
            need(path and any(path.startswith(m["mountPath"].rstrip("/") + "/") and not m.get("readOnly")
                              and "emptyDir" in volumes.get(m["name"], {}) for m in mounts),
                 f"server.{k} {path} is not on a writable emptyDir (the root fs is read-only)")

    # Shutdown: preStop + grace period + shutdown timeout within terminationGracePeriodSeconds.
    pre = ctr.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    total = pre + server.get("grace_period_seconds", 60) + server.get("graceful_shutdown_timeout_seconds", 5)
    need(total <= pod.get("terminationGracePeriodSeconds", 30),
         f"preStop {pre} s + grace_period_seconds + graceful_shutdown_timeout_seconds = {total} s "
         f"exceeds terminationGracePeriodSeconds {pod.get('terminationGracePeriodSeconds', 30)}: "
         "the kubelet would SIGKILL in-flight work")

    # Discovery: every server name is a headless Service of this deployment, on a port it has.
    for pool_name, pool in conf.get("upstreams", {}).items():
        for s in pool.get("servers", []):
            host, port = str(s["address"]).rsplit(":", 1)
            if host.replace(".", "").isdigit():
                continue
            need(pool.get("discovery"), f"upstreams.{pool_name}: {host} is a name but the pool has no discovery")
            svc_name, ns = (host.split(".") + [None])[:2]
            hs = docs.get(("Service", svc_name))
            if need(hs and hs["spec"].get("clusterIP") == "None", f"upstreams.{pool_name}: {host}: no headless Service {svc_name}"):
                need(ns == hs["metadata"].get("namespace"), f"upstreams.{pool_name}: {host} is not in namespace {hs['metadata'].get('namespace')}")
                need(any(p["port"] == int(port) for p in hs["spec"]["ports"]), f"upstreams.{pool_name}: Service {svc_name} has no port {port}")

    # The config for `gateway -t`, reading the Secret's files from out_dir.
    with open(os.path.join(out_dir, "gateway.yaml"), "w", encoding="utf-8") as f:
        f.write(text.replace(SECRETS_DIR_IN_POD, os.path.join(os.path.abspath(out_dir), "secrets") + "/"))
    return problems


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: check_deploy.py MANIFESTS.yaml OUT_DIR")
    problems = check(load(sys.argv[1]), sys.argv[2])
    for p in problems:
        print(f"check_deploy: {p}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
