#!/usr/bin/env bash
# deploy/kubernetes: `kubectl kustomize` renders the base (and the cert-manager example), every standard object
# passes `kubernetes-validate --strict`, the Deployment's security settings are what the docs promise, and the
# rendered Deployment runs under `podman kube play` with its ConfigMap and Secret contents, an agent on the host
# carrying a request through it.
CHECK=22-kubernetes
source "$(dirname "$0")/lib/containers.sh"

WORK=$(mktemp -d /tmp/fluidity-check-kube.XXXXXX)
AGENT_PID=
KUBE_FILE="$WORK/play.yaml"
cleanup() {
    local rc=$?
    if ((rc != 0)); then
        [[ -s "$WORK/agent.log" ]] && { echo "--- agent log" >&2; tail -20 "$WORK/agent.log" >&2; }
        podman ps -a --filter label=fluidity-check="$$" --format '{{.Names}}' 2>/dev/null | while read -r c; do
            echo "--- $c" >&2
            podman logs "$c" 2>&1 | tail -15 >&2
        done
    fi
    stop_pid "$AGENT_PID"
    if [[ -s "$KUBE_FILE" ]]; then podman kube down "$KUBE_FILE" >/dev/null 2>&1 || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
started=$SECONDS

# kubectl with kustomize: on this machine from the Cloud SDK package `kubectl`; Debian's kubernetes-client is too
# old for the `labels` field.
command -v kubectl >/dev/null || apt_install kubectl=kubectl
command -v kubectl >/dev/null || fail "kubectl is missing and apt-get cannot install it"
python3 -c 'import kubernetes_validate, yaml' 2>/dev/null \
    || python3 -m pip install -q kubernetes-validate >/dev/null 2>&1 \
    || fail "pip install kubernetes-validate failed"

# --- render and validate -------------------------------------------------------------------------------------------
cp -r "$REPO/deploy/kubernetes" "$WORK/k"
rm -rf "$WORK/k/certs" "$WORK/k/cert-manager/ca"
setup_podman
build_binary
"$BINARY" certs init --out "$WORK/k/certs" --server-san localhost --server-san 127.0.0.1 >/dev/null
mkdir -p "$WORK/k/cert-manager/ca"
cp "$WORK/k/certs/ca.crt" "$WORK/k/cert-manager/ca/tls.crt"
cp "$WORK/k/certs/ca.key" "$WORK/k/cert-manager/ca/tls.key"

kubectl kustomize "$WORK/k" >"$WORK/rendered.yaml" || fail "kubectl kustomize deploy/kubernetes failed"
kubectl kustomize "$WORK/k/cert-manager" >"$WORK/cert-manager.yaml" \
    || fail "kubectl kustomize deploy/kubernetes/cert-manager failed"

# One file per object: standard kinds are validated strictly; cert-manager's kinds have no schema offline.
python3 - "$WORK" <<'PY' || fail "splitting the rendered objects failed"
import sys, yaml, pathlib
work = pathlib.Path(sys.argv[1])
for source in ("rendered", "cert-manager"):
    out = work / f"{source}-objects"
    out.mkdir()
    for i, doc in enumerate(d for d in yaml.safe_load_all((work / f"{source}.yaml").read_text()) if d):
        kind = "crd" if doc["apiVersion"].startswith("cert-manager.io/") else "std"
        (out / f"{i:02d}-{kind}-{doc['kind']}.yaml").write_text(yaml.safe_dump(doc))
PY
kinds=$(ls "$WORK/rendered-objects" | sed 's/^[0-9]*-std-//; s/\.yaml$//' | sort | tr '\n' ' ')
[[ "$kinds" == "ConfigMap Deployment PodDisruptionBudget Secret Service " ]] \
    || fail "the base renders '$kinds'"
kubernetes-validate --strict --quiet -k 1.32.0 "$WORK"/rendered-objects/*.yaml "$WORK"/cert-manager-objects/*-std-*.yaml \
    || fail "kubernetes-validate --strict found errors"
proved "kubectl kustomize renders ${kinds% }; all pass kubernetes-validate --strict (Kubernetes 1.32)"
crds=$(ls "$WORK/cert-manager-objects" | grep -- '-crd-' | sed 's/^[0-9]*-crd-//; s/\.yaml$//' | sort | tr '\n' ' ')
[[ "$crds" == "Certificate Certificate Issuer " ]] || fail "the cert-manager example renders '$crds'"
proved "the cert-manager example renders with the base (${crds% }: cert-manager's kinds, no schema offline) and its standard objects pass the same validation"

# What the manifests promise, read from the rendered objects.
python3 - "$WORK/rendered.yaml" <<'PY' || fail "the rendered manifests break a promise (above)"
import sys, yaml
docs = {d["kind"]: d for d in yaml.safe_load_all(open(sys.argv[1])) if d}
dep, svc, pdb, sec = docs["Deployment"], docs["Service"], docs["PodDisruptionBudget"], docs["Secret"]
spec = dep["spec"]; pod = spec["template"]["spec"]; c = pod["containers"][0]; sc = c["securityContext"]
checks = {
    "2 replicas": spec["replicas"] == 2,
    "rolling update": spec["strategy"]["type"] == "RollingUpdate",
    "grace period above the 10 s drain": pod["terminationGracePeriodSeconds"] > 10,
    "runAsNonRoot, UID 65532": pod["securityContext"]["runAsNonRoot"] and sc["runAsUser"] == 65532,
    "seccomp RuntimeDefault": pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault",
    "read-only root": sc["readOnlyRootFilesystem"] is True,
    "no privilege escalation": sc["allowPrivilegeEscalation"] is False,
    "every capability dropped": sc["capabilities"]["drop"] == ["ALL"],
    "requests and limits": all(k in c["resources"][w] for w in ("requests", "limits") for k in ("cpu", "memory")),
    "probes on /healthz": all(c[p]["httpGet"]["path"] == "/healthz" for p in ("livenessProbe", "readinessProbe")),
    "prometheus annotations": spec["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true",
    "certs Secret mounted as a folder": all("subPath" not in m for m in c["volumeMounts"])
        and any(v.get("secret", {}).get("secretName") == sec["metadata"]["name"] for v in pod["volumes"]),
    "LoadBalancer TCP 8443, externalTrafficPolicy Local": svc["spec"]["type"] == "LoadBalancer"
        and svc["spec"]["externalTrafficPolicy"] == "Local" and svc["spec"]["ports"][0]["port"] == 8443,
    "PDB selects the pods": pdb["spec"]["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items(),
    "Service selects the pods": svc["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items(),
}
bad = [k for k, ok in checks.items() if not ok]
for k in bad:
    print(f"  broken: {k}", file=sys.stderr)
sys.exit(1 if bad else 0)
PY
proved "the Deployment has 2 replicas, rolling updates, grace > 10 s, UID 65532 non-root, seccomp RuntimeDefault, read-only root, no capabilities, requests and limits, /healthz probes, scrape annotations, the Secret as a folder; LoadBalancer 8443 Local; PDB"

# --- podman kube play of the rendered Deployment ---------------------------------------------------------------------
build_image
TUNNEL_PORT=$(free_port)
ADMIN_PORT=$(free_port)
# Adapted for podman only, in this file, never in the manifests: one replica; hostPorts for the tunnel and admin
# ports; the image built here; the ConfigMap and Secret contents written out and mounted from hostPath folders
# (podman 4.3 does not take them from the same file). TEST ONLY: allow_private_targets, for the request below.
python3 - "$WORK" "$IMAGE" "$TUNNEL_PORT" "$ADMIN_PORT" "$$" <<'PY' || fail "adapting the Deployment for podman failed"
import base64, os, sys, yaml, pathlib
work, image, tunnel_port, admin_port, label = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
docs = {d["kind"]: d for d in yaml.safe_load_all((work / "rendered.yaml").read_text()) if d}
dep, cm, sec = docs["Deployment"], docs["ConfigMap"], docs["Secret"]
folders = {"config": work / "pod-config", "certs": work / "pod-certs"}
for name, folder in folders.items():
    folder.mkdir()
for key, text in cm["data"].items():
    if key == "server.yaml":
        text = text.replace("allow_private_targets: false", "allow_private_targets: true")
    (folders["config"] / key).write_text(text)
for key, b64 in sec["data"].items():
    path = folders["certs"] / key
    path.write_bytes(base64.b64decode(b64))
    # What defaultMode 0440 and fsGroup 65532 give in a cluster.
    os.chown(path, 0, 65532)
    os.chmod(path, 0o440)
dep["spec"]["replicas"] = 1
dep["spec"]["template"]["metadata"]["labels"]["fluidity-check"] = label
pod = dep["spec"]["template"]["spec"]
c = pod["containers"][0]
c["image"] = image
for port in c["ports"]:
    port["hostPort"] = {"tunnel": tunnel_port, "admin": admin_port}[port["name"]]
    port["hostIP"] = "127.0.0.1"
for volume in pod["volumes"]:
    volume.pop("configMap", None)
    volume.pop("secret", None)
    volume["hostPath"] = {"path": str(folders[volume["name"]]), "type": "Directory"}
(work / "play.yaml").write_text(yaml.safe_dump(dep))
PY
podman kube play "$KUBE_FILE" >"$WORK/play.log" 2>&1 || { cat "$WORK/play.log" >&2; fail "podman kube play failed"; }
wait_until 30 "the pod's /healthz on the admin hostPort" "$BINARY" health "http://127.0.0.1:$ADMIN_PORT/healthz"
server=$(podman ps --filter label=fluidity-check="$$" --format '{{.Names}}' | awk '!/infra/ && !n++')
user=$(podman top "$server" user 2>/dev/null | awk 'NR==2{print $1}')
[[ "$user" == fluidity ]] || fail "the pod's server runs as '$user', not fluidity (65532)"
proved "podman kube play runs the rendered Deployment (config and certs from the rendered ConfigMap and Secret, as fluidity, UID 65532); /healthz on health_addr 0.0.0.0:8081 answers 200"

start_agent "$TUNNEL_PORT" "$WORK/k/certs"
body=$(curl -sS --max-time 10 -x "http://127.0.0.1:$PROXY_PORT" "http://127.0.0.1:8081/healthz") \
    || fail "the request through the agent and the pod failed"
[[ "$body" == '{"status":"ok"}' ]] || fail "unexpected answer through the pod: $body"
proved "an agent on the host carried a request through the pod's tunnel port (hostPort $TUNNEL_PORT) to a target the pod dialed"

say "done in $((SECONDS - started))s"
