# Shared by deploy/checks/2*.sh (sourced, not run): installing podman and the musl toolchain, building the static
# binary and the runtime image once, and small helpers. Every function fails the check with a reason.
#
# Settings this sandbox needs (runc and modest ulimits) come from a containers.conf named by
# CONTAINERS_CONF, so every podman and buildah call, including RUN steps, uses them.

set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
MUSL_TARGET=x86_64-unknown-linux-musl
BINARY="$REPO/target/$MUSL_TARGET/release/fluidity"
IMAGE=localhost/fluidity:check
# The runtime image must stay under this many bytes (15 MB).
IMAGE_LIMIT_BYTES=15000000

say() { printf '%s: %s\n' "$CHECK" "$*"; }
proved() { printf '%s: PROVED: %s\n' "$CHECK" "$*"; }
fail() {
    printf '%s: FAILED: %s\n' "$CHECK" "$*" >&2
    exit 1
}

# apt-get install the packages whose commands are missing (apt-get update at most once per machine boot).
apt_install() {
    local missing=()
    local pair
    for pair in "$@"; do
        local cmd="${pair%%=*}" pkg="${pair#*=}"
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0
    say "installing ${missing[*]}"
    if [[ ! -e /tmp/.fluidity-checks-apt-updated ]]; then
        apt-get update -qq || fail "apt-get update failed"
        touch /tmp/.fluidity-checks-apt-updated
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
        || fail "apt-get install ${missing[*]} failed"
}

# podman with runc and modest ulimits (crun and the default nofile fail in this sandbox).
setup_podman() {
    apt_install podman=podman buildah=buildah runc=runc crun=crun fuse-overlayfs=fuse-overlayfs \
        slirp4netns=slirp4netns newuidmap=uidmap /usr/lib/cni/bridge=containernetworking-plugins \
        /usr/bin/catatonit=catatonit curl=curl python3=python3 file=file
    CONTAINERS_CONF="$WORK/containers.conf"
    cat >"$CONTAINERS_CONF" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
runtime = "runc"
CONF
    export CONTAINERS_CONF
}

# The static release binary, built once and reused by every check (cargo does nothing when it is up to date).
build_binary() {
    apt_install musl-gcc=musl-tools
    # The standard library's files decide (rustup's own list can lag when two installs race on one machine).
    compgen -G "$(cd "$REPO" && rustc --print sysroot)/lib/rustlib/$MUSL_TARGET/lib/libstd-*.rlib" >/dev/null \
        || rustup target add "$MUSL_TARGET" >/dev/null || fail "rustup target add $MUSL_TARGET failed"
    say "building the static binary (cargo build --release --target $MUSL_TARGET)"
    (cd "$REPO" && CC_x86_64_unknown_linux_musl=musl-gcc nice -n 5 \
        cargo build --release --locked --quiet --target "$MUSL_TARGET") || fail "the musl build failed"
    [[ -x "$BINARY" ]] || fail "no binary at $BINARY"
}

# The runtime image from the repository's Dockerfile, its `binary` stage replaced by the binary built here.
build_image() {
    build_binary
    local context="$WORK/binary-context"
    mkdir -p "$context"
    cp "$BINARY" "$context/fluidity"
    say "building $IMAGE: podman build --format docker --build-context binary=<dir with fluidity> $REPO"
    podman build --quiet --format docker --build-context "binary=$context" -t "$IMAGE" "$REPO" \
        >/dev/null 2>"$WORK/build.log" || fail "podman build of the Dockerfile's runtime stage failed: $(cat "$WORK/build.log")"
}

# A TCP port on 127.0.0.1 that was free a moment ago.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_until SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.2 s until it succeeds or the deadline passes.
wait_until() {
    local seconds="$1" what="$2"
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || fail "timed out after ${seconds}s waiting for $what"
        sleep 0.2
    done
}

# A python3 http.server on 127.0.0.1 serving one file, marker.txt; sets ORIGIN_PORT, ORIGIN_PID and MARKER.
start_origin() {
    mkdir -p "$WORK/origin"
    MARKER="fluidity-check-$RANDOM$RANDOM"
    echo "$MARKER" >"$WORK/origin/marker.txt"
    ORIGIN_PORT=$(free_port)
    python3 -m http.server --bind 127.0.0.1 --directory "$WORK/origin" "$ORIGIN_PORT" \
        >"$WORK/origin.log" 2>&1 &
    ORIGIN_PID=$!
    wait_until 10 "the origin on 127.0.0.1:$ORIGIN_PORT" curl -sf "http://127.0.0.1:$ORIGIN_PORT/marker.txt"
}

# An agent on the host (the same static binary) towards 127.0.0.1:$1 with the client certificate in $2; sets
# PROXY_PORT and AGENT_PID once its tunnel is up (its /healthz answers 200, checked with `fluidity health`).
# `--direct-targets ''`: the test targets are on private and loopback addresses, which the agent would otherwise
# reach by itself instead of through the tunnel under test.
start_agent() {
    local tunnel_port="$1" certs="$2"
    PROXY_PORT=$(free_port)
    "$BINARY" agent --server-ip 127.0.0.1 --server-port "$tunnel_port" --listen-addr 127.0.0.1 \
        --local-proxy-port "$PROXY_PORT" --cert-file "$certs/client.crt" --key-file "$certs/client.key" \
        --ca-cert-file "$certs/ca.crt" --direct-targets '' >"$WORK/agent.log" 2>&1 &
    AGENT_PID=$!
    wait_until 30 "the host agent's tunnel (fluidity health on its /healthz)" \
        "$BINARY" health "http://127.0.0.1:$PROXY_PORT/healthz"
}

# Stops a process this check started (by its id) and reaps it; never fails.
stop_pid() {
    local pid="${1:-}"
    if [[ -n "$pid" ]]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
}
