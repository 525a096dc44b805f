#!/usr/bin/env bash
# The systemd units in deploy/systemd: `systemd-analyze verify` prints nothing for either, `systemd-analyze security
# --offline=true` rates each 2.0 or lower, and the binary does what the server unit asks of it (start from the unit's
# command line as an unprivileged user reading its certificates through a group, reload on the unit's ExecReload
# signal, drain and exit 0 on its KillSignal within TimeoutStopSec). Starting the unit under systemd itself needs
# systemd as PID 1, which this check says plainly when the machine does not have it.
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
UNITS=(deploy/systemd/fluidity-server.service deploy/systemd/fluidity-agent.service)
INSTALLED_BIN=/usr/local/bin/fluidity
MAX_EXPOSURE=2.0

say() { printf '30-systemd: %s\n' "$*"; }
fail() { printf '30-systemd: FAIL: %s\n' "$*" >&2; exit 1; }

WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# --- tools -------------------------------------------------------------------------------------------------------
if ! command -v systemd-analyze >/dev/null; then
    say "installing systemd (for systemd-analyze)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
fi
for tool in setpriv curl; do
    command -v "$tool" >/dev/null || fail "$tool is missing (util-linux, curl)"
done
say "$(systemd-analyze --version | head -n1)"

# --- the binary the units name -----------------------------------------------------------------------------------
# The units only need an executable at the path they name; a debug build serves as well as a release one.
if [[ -x target/release/fluidity ]]; then
    BIN=$ROOT/target/release/fluidity
elif [[ -x target/debug/fluidity ]]; then
    BIN=$ROOT/target/debug/fluidity
else
    say "building target/debug/fluidity"
    cargo build --locked --quiet
    BIN=$ROOT/target/debug/fluidity
fi
say "binary: $BIN"

# Each unit is verified as shipped except for the ExecStart path, rewritten to the built binary (verify requires
# the program to exist); the shipped path is asserted first so the rewrite cannot hide a wrong one.
mkdir -p "$WORK/units" "$WORK/run"
chmod 0700 "$WORK/run"
for unit in "${UNITS[@]}"; do
    [[ -f "$unit" ]] || fail "$unit is missing"
    grep -q "^ExecStart=$INSTALLED_BIN " "$unit" || fail "$unit: ExecStart must run $INSTALLED_BIN"
    sed "s#^ExecStart=$INSTALLED_BIN #ExecStart=$BIN #" "$unit" >"$WORK/units/$(basename "$unit")"
done

# --- settings the units must keep --------------------------------------------------------------------------------
require() { # unit, line (a regular expression, anchored)
    grep -Eq "^$2\$" "$1" || fail "$1: missing $2"
}
for unit in "${UNITS[@]}"; do
    require "$unit" 'Restart=on-failure'
    require "$unit" 'ExecReload=/bin/kill -HUP \$MAINPID'
    require "$unit" 'KillSignal=SIGTERM'
    require "$unit" 'NoNewPrivileges=yes'
    require "$unit" 'ProtectSystem=strict'
    require "$unit" 'MemoryDenyWriteExecute=yes'
    require "$unit" 'SystemCallFilter=@system-service'
    require "$unit" 'CapabilityBoundingSet='
    require "$unit" 'LimitNOFILE=[0-9]+'
    stop=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)s\{0,1\}$/\1/p' "$unit")
    [[ -n "$stop" && "$stop" -gt 10 ]] || fail "$unit: TimeoutStopSec must exceed the 10 s drain"
done
require deploy/systemd/fluidity-server.service 'DynamicUser=yes'
say "proved: both units restart on failure, reload with SIGHUP, stop with SIGTERM after more than the 10 s drain, keep the sandbox settings"

# --- systemd-analyze verify: any output is a failure (it exits 0 on warnings) ------------------------------------
verify() { # mode (--system|--user), unit file
    local out
    out=$(XDG_RUNTIME_DIR="$WORK/run" systemd-analyze "$1" verify "$2" 2>&1) || fail "verify $1 $(basename "$2") exited non-zero: $out"
    [[ -z "$out" ]] || fail "verify $1 $(basename "$2") printed:"$'\n'"$out"
}
verify --system "$WORK/units/fluidity-server.service"
verify --user "$WORK/units/fluidity-agent.service"
say "proved: systemd-analyze verify prints nothing for fluidity-server.service (system) and fluidity-agent.service (--user)"

# --- systemd-analyze security --offline=true: 2.0 or lower -------------------------------------------------------
# The agent is analysed with --user (the manager it runs under); the offline analysis rates the unit file's own
# settings either way, so its figure is the same as a system-mode analysis would give.
security() { # mode, unit file
    local out level
    out=$(XDG_RUNTIME_DIR="$WORK/run" systemd-analyze "$1" security --offline=true --no-pager "$2" 2>&1) ||
        fail "security $1 $(basename "$2") exited non-zero:"$'\n'"$out"
    level=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$out")
    [[ -n "$level" ]] || fail "security $1 $(basename "$2"): no exposure level in:"$'\n'"$out"
    say "systemd-analyze $1 security --offline=true $(basename "$2"): exposure $level (limit $MAX_EXPOSURE)"
    awk -v l="$level" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(l <= m) }' ||
        fail "$(basename "$2") exposure $level is above $MAX_EXPOSURE:"$'\n'"$(grep '✗' <<<"$out")"
}
security --system "$WORK/units/fluidity-server.service"
security --user "$WORK/units/fluidity-agent.service"
say "proved: both units rate $MAX_EXPOSURE or lower"

# --- what the server unit asks of the binary ---------------------------------------------------------------------
# The layout of docs/deploy/vm.md: the config and certificates owned by root, readable through a group; the
# process runs as a user that owns nothing, with that group as a supplementary group, no capabilities and no new
# privileges (as DynamicUser=, SupplementaryGroups=, CapabilityBoundingSet= and NoNewPrivileges= make it).
SVC_UID=61873
CONF_GID=61874
ETC=$WORK/etc/fluidity
mkdir -p "$ETC"
"$BIN" certs init --out "$ETC/certs" >/dev/null
rm "$ETC/certs/ca.key" "$ETC/certs/client.key" "$ETC/certs/client.crt" # the CA key stays on the laptop
cat >"$ETC/server.yaml" <<'EOF'
listen_addr: 127.0.0.1
listen_port: 0
health_addr: 127.0.0.1:0
cert_file: certs/server.crt
key_file: certs/server.key
ca_cert_file: certs/ca.crt
EOF
chown -R root:"$CONF_GID" "$ETC"
chmod 0750 "$ETC" "$ETC/certs"
chmod 0640 "$ETC/server.yaml" "$ETC"/certs/*
chmod 0711 "$WORK" "$WORK/etc" # traversable, as /etc is

# The unit's command line, with /etc/fluidity moved under the scratch folder.
read -r -a CMDLINE <<<"$(sed -n 's/^ExecStart=//p' "$WORK/units/fluidity-server.service")"
CMDLINE=("${CMDLINE[@]//\/etc\/fluidity/$ETC}")
[[ "${CMDLINE[*]}" == "$BIN server --config $ETC/server.yaml" ]] || fail "unexpected ExecStart: ${CMDLINE[*]}"

LOG=$WORK/server.log
setpriv --reuid="$SVC_UID" --regid="$SVC_UID" --groups="$CONF_GID" --no-new-privs \
    --bounding-set=-all --inh-caps=-all --ambient-caps=-all \
    env -i PATH=/usr/bin:/bin "${CMDLINE[@]}" 2>"$LOG" &
SERVER_PID=$!

health=
for _ in $(seq 1 100); do
    health=$(sed -n 's/.*server listening.*health=\([0-9.:]*\).*/\1/p' "$LOG")
    [[ -n "$health" ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || fail "server exited at start:"$'\n'"$(cat "$LOG")"
    sleep 0.1
done
[[ -n "$health" ]] || fail "server did not report listening within 10 s:"$'\n'"$(cat "$LOG")"
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://$health/healthz")
[[ "$code" == 200 ]] || fail "/healthz answered $code"
say "proved: the unit's ExecStart runs as an unprivileged user without capabilities, reading root-owned 0640 certificates through its group; /healthz answers 200"

# ExecReload: SIGHUP reloads and the server keeps running.
kill -HUP "$SERVER_PID"
for _ in $(seq 1 50); do
    grep -q 'certificates reloaded' "$LOG" && break
    sleep 0.1
done
grep -q 'certificates reloaded' "$LOG" || fail "no reload after SIGHUP:"$'\n'"$(cat "$LOG")"
kill -0 "$SERVER_PID" 2>/dev/null || fail "server exited after SIGHUP"
say "proved: ExecReload's SIGHUP reloads the certificates and the server keeps running"

# KillSignal: SIGTERM drains and exits 0 well within TimeoutStopSec.
stop=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)s\{0,1\}$/\1/p' deploy/systemd/fluidity-server.service)
kill -TERM "$SERVER_PID"
start=$SECONDS
status=0
timeout "$stop" tail --pid="$SERVER_PID" -f /dev/null || fail "server still running ${stop}s after SIGTERM"
wait "$SERVER_PID" || status=$?
SERVER_PID=
[[ "$status" == 0 ]] || fail "server exited $status after SIGTERM:"$'\n'"$(cat "$LOG")"
say "proved: KillSignal=SIGTERM stops the server with exit 0 in $((SECONDS - start)) s (TimeoutStopSec=${stop}s)"

# --- the units under systemd itself ------------------------------------------------------------------------------
pid1=$(ps -p 1 -o comm= | tr -d ' ')
if [[ "$pid1" == systemd ]] && systemctl is-system-running >/dev/null 2>&1; then
    say "note: systemd is PID 1 here; starting the installed unit is documented in docs/deploy/vm.md"
else
    say "not runnable here: PID 1 is '$pid1', not systemd, so no unit can be started; the sandbox settings are checked offline above and the binary's side of the unit under an unprivileged identity"
fi
