#!/usr/bin/env bash
# deploy/compose.yaml under podman-compose: the one-shot certs service fills the volume (and a second run writes
# nothing, exit 0), the server and the agent come up, and a request through the agent's published
# 127.0.0.1 port crosses the tunnel to the server container.
CHECK=21-compose
source "$(dirname "$0")/lib/containers.sh"

WORK=$(mktemp -d /tmp/fluidity-check-compose.XXXXXX)
PROJECT="fluidity-check-$$"
compose() {
    podman-compose -p "$PROJECT" -f "$REPO/deploy/compose.yaml" -f "$WORK/override.yaml" "$@"
}
cleanup() {
    local rc=$?
    if ((rc != 0)); then
        for service in certs server agent; do
            echo "--- $service" >&2
            podman logs "${PROJECT}_${service}_1" 2>&1 | tail -15 >&2 || true
        done
    fi
    compose down -v -t 5 >/dev/null 2>&1 || true
    podman volume rm -f "${PROJECT}_certs" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
started=$SECONDS

setup_podman
apt_install podman-compose=podman-compose
build_image

FLUIDITY_IMAGE="$IMAGE"
FLUIDITY_PROXY_PORT=$(free_port)
FLUIDITY_TUNNEL_PORT=$(free_port)
export FLUIDITY_IMAGE FLUIDITY_PROXY_PORT FLUIDITY_TUNNEL_PORT
# TEST ONLY: the target is the server container's own /healthz on its loopback, a private address the server
# refuses unless told otherwise; the shipped server.yaml keeps allow_private_targets false.
# The agent sends everything through the tunnel (`FLUIDITY_DIRECT_TARGETS=[]`): the target is on a loopback
# address, which it would otherwise reach by itself. (An environment entry: compose merges a `command` override
# into the service's instead of replacing it.)
cat >"$WORK/override.yaml" <<'YAML'
services:
  server:
    environment:
      FLUIDITY_ALLOW_PRIVATE_TARGETS: "true"
  agent:
    environment:
      FLUIDITY_DIRECT_TARGETS: "[]"
YAML

compose up -d >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; fail "podman-compose up failed"; }
wait_until 60 "the certs service to finish" \
    test "$(podman inspect "${PROJECT}_certs_1" --format '{{.State.Status}}' 2>/dev/null)" = exited
certs_exit=$(podman inspect "${PROJECT}_certs_1" --format '{{.State.ExitCode}}')
[[ "$certs_exit" == 0 ]] || fail "the certs service exited $certs_exit"
volume=$(podman volume inspect "${PROJECT}_certs" --format '{{.Mountpoint}}') || fail "no certs volume"
owners=$(cd "$volume" && stat -c '%n %u %a' ca.crt ca.key server.crt server.key client.crt client.key | tr '\n' ';')
expected='ca.crt 65532 644;ca.key 65532 600;server.crt 65532 644;server.key 65532 600;client.crt 65532 644;client.key 65532 600;'
[[ "$owners" == "$expected" ]] || fail "the volume holds '$owners', expected '$expected'"
proved "the one-shot certs service wrote the six files into the volume as UID 65532 (keys 0600) and exited 0"

wait_until 60 "the agent's tunnel (its /healthz through the published port)" \
    "$BINARY" health "http://127.0.0.1:$FLUIDITY_PROXY_PORT/healthz"
body=$(curl -sS --max-time 10 -x "http://127.0.0.1:$FLUIDITY_PROXY_PORT" "http://127.0.0.1:8081/healthz") \
    || fail "the request through the compose agent failed"
[[ "$body" == '{"status":"ok"}' ]] || fail "unexpected answer from the server's /healthz: $body"
proved "a request through 127.0.0.1:$FLUIDITY_PROXY_PORT (agent container) crossed the tunnel to the server container: $body"

podman start --attach "${PROJECT}_certs_1" >"$WORK/certs-again.log" 2>&1 \
    || fail "a second run of the certs service failed: $(cat "$WORK/certs-again.log")"
grep -q 'nothing written' "$WORK/certs-again.log" || fail "the second certs run said: $(cat "$WORK/certs-again.log")"
proved "a second run of the certs service finds every file and exits 0 writing nothing (--if-missing)"

published=$(podman port "${PROJECT}_agent_1" 8080/tcp)
[[ "$published" == "127.0.0.1:$FLUIDITY_PROXY_PORT" ]] || fail "the agent's port is published on $published"
proved "the agent's proxy port is published on the host's loopback only ($published)"

say "done in $((SECONDS - started))s"
