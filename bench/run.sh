#!/usr/bin/env bash
# Fluidity benchmark suite: one entry point. See bench/README.md.
#
#   bench/run.sh [--quick] [--only WORKLOAD[,WORKLOAD...]] [--systems SYSTEM[,SYSTEM...]] [--reps N]
#                [--no-install] [--no-build]
#
# Installs what is missing (Debian: nginx-light, stunnel4, tinyproxy, wrk, curl; crates.io: shadowsocks-rust,
# oha), builds the release binary, then runs bench/bench.py, which starts everything on 127.0.0.1, runs the
# workloads, stops what it started by pid and prints the table. Raw results go to bench/results/.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
CMDLINE="bench/run.sh $*"

QUICK=0 INSTALL=1 BUILD=1
PY_ARGS=()
usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; PY_ARGS+=(--quick) ;;
    --only) PY_ARGS+=(--only "${2:?--only needs a value}"); shift ;;
    --only=*) PY_ARGS+=(--only "${1#*=}") ;;
    --systems) PY_ARGS+=(--systems "${2:?--systems needs a value}"); shift ;;
    --systems=*) PY_ARGS+=(--systems "${1#*=}") ;;
    --reps) PY_ARGS+=(--reps "${2:?--reps needs a value}"); shift ;;
    --reps=*) PY_ARGS+=(--reps "${1#*=}") ;;
    --no-install) INSTALL=0 ;;
    --no-build) BUILD=0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

say() { printf '[run.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
T0=$(date +%s)

# --- tools -------------------------------------------------------------------------------------------------------
export PATH="$HOME/.cargo/bin:$PATH" PYTHONDONTWRITEBYTECODE=1
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

install_tools() {
  local missing=()
  command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
  command -v stunnel >/dev/null 2>&1 || missing+=(stunnel4)
  command -v tinyproxy >/dev/null 2>&1 || missing+=(tinyproxy)
  command -v wrk >/dev/null 2>&1 || missing+=(wrk)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  command -v python3 >/dev/null 2>&1 || missing+=(python3)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} (apt)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    # the packages may start system services; this suite starts its own instances, so stop those
    for svc in nginx tinyproxy stunnel4; do
      if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
        $SUDO systemctl stop "$svc" || true
      fi
    done
  fi
  # crates.io tools: built into their own target dir, never the project's target/
  local ct="${CARGO_TARGET_DIR_BENCH:-/work/bench-target}"
  [ -d "$(dirname "$ct")" ] && [ -w "$(dirname "$ct")" ] || ct="${TMPDIR:-/tmp}/fluidity-bench-target"
  if ! command -v sslocal >/dev/null 2>&1 || ! command -v ssserver >/dev/null 2>&1; then
    say "installing shadowsocks-rust (cargo install, a long build; nice 10)"
    CARGO_TARGET_DIR="$ct" nice -n 10 cargo install --locked shadowsocks-rust >&2 \
      || say "shadowsocks-rust did not install: its columns will be missing"
  fi
  if ! command -v oha >/dev/null 2>&1; then
    say "installing oha (cargo install; nice 10)"
    CARGO_TARGET_DIR="$ct" nice -n 10 cargo install --locked oha >&2 \
      || say "oha did not install: the CONNECT+TLS small-request rows will fail"
  fi
}
[ "$INSTALL" = 1 ] && install_tools
for t in nginx stunnel tinyproxy wrk curl python3; do
  command -v "$t" >/dev/null 2>&1 || { say "missing tool: $t (run without --no-install)"; exit 1; }
done

# --- build -------------------------------------------------------------------------------------------------------
if [ "$BUILD" = 1 ]; then
  say "cargo build --release"
  (cd "$ROOT" && cargo build --release >&2)
fi
FLUIDITY="$ROOT/target/release/fluidity"
[ -x "$FLUIDITY" ] || { say "no $FLUIDITY"; exit 1; }

# --- run ---------------------------------------------------------------------------------------------------------
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 20000 2>/dev/null || true
[ "$(ulimit -n)" -ge 8192 ] || say "warning: ulimit -n is $(ulimit -n); the many-tunnels workload needs ~8000"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/fluidity-bench.XXXXXX")"
PY_PID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$PY_PID" ] && kill -0 "$PY_PID" 2>/dev/null; then
    kill -TERM "$PY_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$PY_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PY_PID" 2>/dev/null || true
  fi
  # anything bench.py started and did not stop (it records every pid it starts)
  if [ -f "$WORK/pids" ]; then
    while read -r pid; do
      [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || continue
      # its children first (nginx workers), by pid
      for kid in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do kill -KILL "$kid" 2>/dev/null || true; done
      kill -KILL "$pid" 2>/dev/null || true
    done < "$WORK/pids"
  fi
  if [ -n "${BENCH_KEEP_WORK:-}" ]; then
    rm -f "$WORK/origin/www/big"; say "kept $WORK (logs and configs)"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "work dir $WORK; $(nproc) cores; load: $(uptime)"
python3 "$BENCH_DIR/bench.py" --work "$WORK" --fluidity "$FLUIDITY" --out "$BENCH_DIR/results" \
  --command "$CMDLINE" ${PY_ARGS[@]+"${PY_ARGS[@]}"} &
PY_PID=$!
set +e
wait "$PY_PID"
RC=$?
set -e
PY_PID=""
say "done in $(( $(date +%s) - T0 )) s (exit $RC)"
exit "$RC"
