#!/usr/bin/env bash
# 40-platforms: the agent beyond Linux/glibc, and the release archives.
#
# Proves on this machine, each step printing what it proved:
#   windows  the crate cross-builds for x86_64-pc-windows-gnu (mingw-w64); under Wine, fluidity.exe writes a CA and
#            keys to a Windows path (`certs init`), and an agent whose YAML holds Windows paths carries an absolute-form
#            request and a CONNECT tunnel through a `fluidity server` running natively on Linux to a local origin,
#            byte-exact; a Ctrl-C (Wine turns SIGINT into CTRL_C_EVENT) drains it and it exits 0.
#   macos    aarch64-apple-darwin and x86_64-apple-darwin link into Mach-O executables (cargo zigbuild); the arm64 one
#            is code-signed; the launchd plist in docs/deploy/macos.md parses.
#   musl     aarch64-unknown-linux-musl links into a static ELF executable (cargo zigbuild).
#   dist     scripts/dist.sh makes the x86_64-unknown-linux-musl archive: SHA256SUMS verifies with `sha256sum -c`, the
#            archive holds the binary, README.md, LICENSE, CHANGELOG.md and configs/, and the static binary's
#            --version names its commit and target.
# A step that cannot run fails with the reason; the others still run. Installs what it needs when missing (apt,
# rustup targets, pip). Cross builds go to target/cross (debug), kept apart from target/ so reruns are incremental.
# Bounded: every wait has a deadline, every build a time limit; everything it starts is stopped on exit.
# A first run takes about 20 minutes of builds on a 2-core machine; a rerun with nothing changed, about one minute.
set -uo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root" || exit 1
export CARGO_TARGET_DIR=$root/target/cross
export CARGO_TERM_COLOR=never
helpers=$root/deploy/checks/platforms
work=$(mktemp -d /tmp/fluidity-40-platforms.XXXXXX)
pids=()
failed=()
# A wait for a process to start or stop.
ready_secs=60
# The longest one build may take.
build_secs=1800

cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
    if [ -d "$work/wineprefix" ]; then WINEPREFIX=$work/wineprefix /usr/lib/wine/wineserver64 -k 2>/dev/null; fi
    wait 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { echo "40-platforms: $*"; }
step_failed() { say "FAIL $1: $2"; failed+=("$1"); }

# Polls FILE until it matches REGEX (grep -E), up to ready_secs; prints the first match.
wait_for_line() {
    local file=$1 regex=$2 deadline=$((SECONDS + ready_secs))
    while [ $SECONDS -lt $deadline ]; do
        if grep -Eom1 "$regex" "$file" 2>/dev/null; then return 0; fi
        sleep 0.2
    done
    return 1
}

# Runs a build command, printing its duration; on failure prints the end of its output.
timed_build() {
    local name=$1 start=$SECONDS log=$work/build-$1.log
    shift
    if timeout "$build_secs" nice -n 5 "$@" >"$log" 2>&1; then
        say "$name: built in $((SECONDS - start)) s"
    else
        tail -n 25 "$log" | sed "s/^/  $name: /"
        return 1
    fi
}

install_tools() {
    local apt=()
    command -v x86_64-w64-mingw32-gcc >/dev/null || apt+=(gcc-mingw-w64-x86-64)
    [ -x /usr/lib/wine/wine64 ] || apt+=(wine64)
    command -v musl-gcc >/dev/null || apt+=(musl-tools)
    command -v file >/dev/null || apt+=(file)
    command -v curl >/dev/null || apt+=(curl)
    if [ ${#apt[@]} -gt 0 ]; then
        say "installing ${apt[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt[@]}" >/dev/null ||
            { say "apt-get install ${apt[*]} failed"; return 1; }
    fi
    local target libdir
    for target in x86_64-pc-windows-gnu aarch64-apple-darwin x86_64-apple-darwin \
        x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
        # A standard library already in place is enough (rustup refuses to add over a half-finished install).
        libdir=$(rustc --print target-libdir --target "$target" 2>/dev/null)
        compgen -G "$libdir/libstd-*.rlib" >/dev/null && continue
        rustup target add "$target" >/dev/null 2>&1 || { say "rustup target add $target failed"; return 1; }
    done
    if ! command -v cargo-zigbuild >/dev/null || ! python3 -m ziglang version >/dev/null 2>&1; then
        say "installing ziglang cargo-zigbuild (pip)"
        pip install -q ziglang cargo-zigbuild || { say "pip install ziglang cargo-zigbuild failed"; return 1; }
        hash -r
    fi
}

# --- windows -----------------------------------------------------------------------------------------------------

check_windows() {
    timed_build windows cargo build --locked --bin fluidity --target x86_64-pc-windows-gnu ||
        { step_failed windows "cargo build --target x86_64-pc-windows-gnu failed"; return; }
    timed_build native env -u CARGO_TARGET_DIR cargo build --locked --bin fluidity ||
        { step_failed windows "the native build of the server failed"; return; }
    local server_bin=$root/target/debug/fluidity

    # Wine 8 lacks bcryptprimitives.dll, which Rust's std imports; a one-function stand-in sits beside the exe,
    # under Wine only (deploy/checks/platforms/bcryptprimitives.c).
    local win=$work/win
    mkdir -p "$win" "$work/www"
    cp "$CARGO_TARGET_DIR/x86_64-pc-windows-gnu/debug/fluidity.exe" "$win/"
    x86_64-w64-mingw32-gcc -shared -O2 -o "$win/bcryptprimitives.dll" "$helpers/bcryptprimitives.c" \
        -ladvapi32 -Wl,--kill-at || { step_failed windows "the bcryptprimitives.dll shim does not build"; return; }
    export WINEPREFIX=$work/wineprefix WINEDEBUG=-all
    local wine=/usr/lib/wine/wine64
    # Z: is Wine's drive for /, so /tmp/x is Z:\tmp\x.
    local wwork="Z:${work//\//\\}"

    if ! timeout 300 "$wine" "$win/fluidity.exe" certs init --out "$wwork\\pki" >"$work/certs.log" 2>&1; then
        sed 's/^/  wine: /' "$work/certs.log"
        step_failed windows "fluidity.exe certs init under Wine failed"; return
    fi
    local name
    for name in ca.crt ca.key server.crt server.key client.crt client.key; do
        [ -s "$work/pki/$name" ] || { step_failed windows "certs init under Wine wrote no $name"; return; }
    done
    grep -q "BEGIN PRIVATE KEY" "$work/pki/client.key" ||
        { step_failed windows "client.key written under Wine is not a PEM private key"; return; }
    say "windows: fluidity.exe certs init wrote the CA, certificates and keys to $wwork\\pki"

    head -c 8000000 /dev/urandom >"$work/www/blob.bin"
    python3 -u -m http.server --bind 127.0.0.1 --directory "$work/www" 0 >"$work/origin.log" 2>&1 &
    pids+=($!)
    local origin_port
    origin_port=$(wait_for_line "$work/origin.log" 'port [0-9]+' | grep -Eo '[0-9]+') ||
        { step_failed windows "the origin (python3 -m http.server) did not start"; return; }

    cat >"$work/server.yaml" <<EOF
listen_addr: 127.0.0.1
listen_port: 0
health_addr: 127.0.0.1:0
cert_file: pki/server.crt
key_file: pki/server.key
ca_cert_file: pki/ca.crt
allow_private_targets: true
EOF
    "$server_bin" server --config "$work/server.yaml" >"$work/server.log" 2>&1 &
    pids+=($!)
    local server_addr
    server_addr=$(wait_for_line "$work/server.log" 'server listening addr=[0-9.:]+' | sed 's/.*addr=//') ||
        { cat "$work/server.log"; step_failed windows "the Linux server did not start"; return; }

    # Windows paths in single quotes: YAML keeps the backslashes. `direct_targets: []`: the origin is on loopback,
    # which the agent would otherwise reach by itself instead of through the tunnel under test.
    cat >"$work/agent.yaml" <<EOF
direct_targets: []
server_ip: 127.0.0.1
server_port: ${server_addr##*:}
listen_addr: 127.0.0.1
local_proxy_port: 0
cert_file: '$wwork\\pki\\client.crt'
key_file: '$wwork\\pki\\client.key'
ca_cert_file: '$wwork\\pki\\ca.crt'
EOF
    "$wine" "$win/fluidity.exe" agent --config "$wwork\\agent.yaml" >"$work/agent.log" 2>&1 &
    local agent_pid=$!
    pids+=("$agent_pid")
    local proxy
    proxy=$(wait_for_line "$work/agent.log" 'agent listening addr=[0-9.:]+' | sed 's/.*addr=//') &&
        wait_for_line "$work/agent.log" 'tunnel up' >/dev/null ||
        { sed 's/^/  agent: /' "$work/agent.log"; step_failed windows "the agent under Wine did not bring its tunnel up"; return; }
    say "windows: fluidity.exe agent (paths like $wwork\\pki\\client.key) listens on $proxy, tunnel up to $server_addr"

    local want got
    want=$(sha256sum <"$work/www/blob.bin")
    got=$(curl -sf --max-time 60 -x "http://$proxy" "http://127.0.0.1:$origin_port/blob.bin" | sha256sum)
    [ "$got" = "$want" ] || { step_failed windows "an absolute-form GET through the Wine agent did not return the origin's 8 MB file"; return; }
    got=$(curl -sf --max-time 60 --proxytunnel -x "http://$proxy" "http://127.0.0.1:$origin_port/blob.bin" | sha256sum)
    [ "$got" = "$want" ] || { step_failed windows "a GET through a CONNECT tunnel of the Wine agent did not return the origin's file"; return; }
    say "windows: an 8 MB GET, absolute-form and through CONNECT, came back byte-exact: agent (Wine) -> server (Linux) -> origin"

    # Wine delivers SIGINT to a console program as CTRL_C_EVENT.
    kill -INT "$agent_pid"
    local deadline=$((SECONDS + ready_secs))
    while kill -0 "$agent_pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    if kill -0 "$agent_pid" 2>/dev/null; then
        step_failed windows "the agent under Wine did not stop within ${ready_secs} s of a Ctrl-C"; return
    fi
    wait "$agent_pid"
    local code=$?
    if [ "$code" -ne 0 ] || ! grep -q 'shutdown requested signal="ctrl-c"' "$work/agent.log" ||
        ! grep -q 'shutdown finished' "$work/agent.log"; then
        sed 's/^/  agent: /' "$work/agent.log"
        step_failed windows "after Ctrl-C the agent exited $code without the logged ctrl-c drain"; return
    fi
    say "windows: Ctrl-C (CTRL_C_EVENT under Wine) drained the agent and it exited 0"
    say "windows: passed"
}

# --- macos and aarch64 musl (cargo zigbuild) ----------------------------------------------------------------------

check_macos() {
    local target arch bin ok=1
    python3 "$helpers/macos.py" plist docs/deploy/macos.md | sed 's/^/40-platforms: macos: /' ||
        { step_failed macos "the launchd plist in docs/deploy/macos.md"; ok=0; }
    for target in aarch64-apple-darwin x86_64-apple-darwin; do
        arch=${target%%-*}
        [ "$arch" = aarch64 ] && arch=arm64
        bin=$CARGO_TARGET_DIR/$target/debug/fluidity
        if ! timed_build "$target" cargo zigbuild --locked --bin fluidity --target "$target"; then
            step_failed macos "cargo zigbuild --target $target failed"; ok=0; continue
        fi
        say "macos: $(file -b "$bin" | cut -c1-80)"
        python3 "$helpers/macos.py" binary "$bin" "$arch" | sed 's/^/40-platforms: macos: /' ||
            { step_failed macos "$target is not a proper Mach-O $arch executable"; ok=0; }
    done
    [ $ok = 1 ] && say "macos: passed"
}

check_aarch64_musl() {
    local target=aarch64-unknown-linux-musl
    local bin=$CARGO_TARGET_DIR/$target/debug/fluidity
    timed_build "$target" cargo zigbuild --locked --bin fluidity --target "$target" ||
        { step_failed aarch64-musl "cargo zigbuild --target $target failed (zig cc as the C compiler for ring)"; return; }
    local kind
    kind=$(file -b "$bin")
    say "aarch64-musl: $(echo "$kind" | cut -c1-100)"
    case $kind in
        *ELF\ 64-bit*ARM\ aarch64*static*) say "aarch64-musl: passed" ;;
        *) step_failed aarch64-musl "$bin is not a static aarch64 ELF executable" ;;
    esac
}

# --- dist ---------------------------------------------------------------------------------------------------------

check_dist() {
    local target=x86_64-unknown-linux-musl dist=$work/dist
    DIST_DIR=$dist timed_build dist scripts/dist.sh "$target" ||
        { step_failed dist "scripts/dist.sh $target failed"; return; }
    (cd "$dist" && sha256sum -c SHA256SUMS) | sed 's/^/40-platforms: dist: /'
    [ "${PIPESTATUS[0]}" -eq 0 ] || { step_failed dist "sha256sum -c SHA256SUMS failed"; return; }
    local archive
    archive=$(ls "$dist"/fluidity-*-"$target".tar.gz 2>/dev/null) || { step_failed dist "no $target archive"; return; }
    local top
    top=$(basename "$archive" .tar.gz)
    local listing
    listing=$(tar -tzf "$archive" | sort | tr '\n' ' ')
    local member
    for member in fluidity README.md LICENSE CHANGELOG.md configs/agent.yaml configs/server.yaml; do
        case " $listing " in
            *" $top/$member "*) ;;
            *) step_failed dist "$archive lacks $top/$member (has: $listing)"; return ;;
        esac
    done
    tar -xzf "$archive" -C "$dist"
    local kind version
    kind=$(file -b "$dist/$top/fluidity")
    case $kind in
        *static*) ;;
        *) step_failed dist "the $target binary is not static: $kind"; return ;;
    esac
    version=$("$dist/$top/fluidity" --version) || { step_failed dist "the packaged binary does not run"; return; }
    case $version in
        "fluidity "*" ($(git rev-parse --short HEAD 2>/dev/null || echo unknown), $target)") ;;
        *) step_failed dist "--version printed '$version', not the commit and $target"; return ;;
    esac
    say "dist: $(basename "$archive") holds $listing"
    say "dist: its static binary prints: $version"
    say "dist: passed"
}

start=$SECONDS
if install_tools; then
    check_windows
    check_macos
    check_aarch64_musl
    check_dist
else
    step_failed tools "the build tools could not be installed"
fi
say "finished in $((SECONDS - start)) s"
if [ ${#failed[@]} -gt 0 ]; then
    say "FAILED: ${failed[*]}"
    exit 1
fi
say "all passed: windows (Wine run), macos (both links), aarch64-musl, dist"
