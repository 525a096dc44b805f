#!/usr/bin/env bash
# deploy/ecs/task-definition.json: it parses, holds only what RegisterTaskDefinition accepts (top-level keys, and
# every nested key, type and enumerated value against the ECS API model botocore ships), names the image, port 8443,
# the health check and the awslogs driver, and sets only FLUIDITY_* variables the server knows. Then the task's
# design runs here without AWS: the init container's command (busybox sh) writes the certificates from the
# variables ECS fills from Secrets Manager, the server starts with the task's environment as UID 65532 reading them,
# the task's healthCheck command passes, and SIGTERM stops it with exit 0 within stopTimeout.
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
TASKDEF=deploy/ecs/task-definition.json

say() { printf '31-ecs: %s\n' "$*"; }
fail() { printf '31-ecs: FAIL: %s\n' "$*" >&2; exit 1; }

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
APT_UPDATED=
apt_install() {
    [[ -n "$APT_UPDATED" ]] || { apt-get update -qq; APT_UPDATED=1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
command -v python3 >/dev/null || apt_install python3 python3-pip
python3 -c 'import botocore' 2>/dev/null || python3 -m pip install --quiet botocore
command -v busybox >/dev/null || apt_install busybox
for tool in setpriv curl; do
    command -v "$tool" >/dev/null || fail "$tool is missing (util-linux, curl)"
done

# The newer of the release and debug builds (a stale one may predate the current source); else a debug build.
BIN=
for candidate in "$ROOT/target/release/fluidity" "$ROOT/target/debug/fluidity"; do
    if [[ -x "$candidate" ]] && { [[ -z "$BIN" ]] || [[ "$candidate" -nt "$BIN" ]]; }; then
        BIN=$candidate
    fi
done
if [[ -z "$BIN" ]]; then
    say "building target/debug/fluidity"
    cargo build --locked --quiet
    BIN=$ROOT/target/debug/fluidity
fi
say "binary: $BIN"

# --- the JSON against the API ------------------------------------------------------------------------------------
"$BIN" server --help | grep -o 'env: FLUIDITY_[A-Z_]*' | sed 's/env: //' | sort -u >"$WORK/server-env"
python3 - "$TASKDEF" "$WORK/server-env" "$WORK/plan" <<'PY'
import json, sys
import botocore.session
from botocore.validate import ParamValidator

path, env_file, plan_file = sys.argv[1:4]
errors = []

def no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    for k in set(keys):
        if keys.count(k) > 1:
            errors.append(f"duplicate key {k!r}")
    return dict(pairs)

with open(path) as f:
    td = json.load(f, object_pairs_hook=no_duplicates)

# The request members of RegisterTaskDefinition (ECS API 2014-11-13). The botocore model below has the same list;
# this one is kept by hand so that a key the API does not take is caught even if the model's copy drifted.
ALLOWED = {
    "family", "taskRoleArn", "executionRoleArn", "networkMode", "containerDefinitions", "volumes",
    "placementConstraints", "requiresCompatibilities", "cpu", "memory", "tags", "pidMode", "ipcMode",
    "proxyConfiguration", "inferenceAccelerators", "ephemeralStorage", "runtimePlatform", "enableFaultInjection",
}
for key in td:
    if key not in ALLOWED:
        errors.append(f"unknown top-level key {key!r}")

model = botocore.session.get_session().get_service_model("ecs")
shape = model.operation_model("RegisterTaskDefinition").input_shape
report = ParamValidator().validate(td, shape)
if report.has_errors():
    errors.append("botocore: " + report.generate_report())

def enums(value, shape, where):
    # botocore's validator leaves enumerated values to the service; check them here.
    if shape.type_name == "structure" and isinstance(value, dict):
        for k, v in value.items():
            if k in shape.members:
                enums(v, shape.members[k], f"{where}.{k}")
    elif shape.type_name == "list" and isinstance(value, list):
        for i, v in enumerate(value):
            enums(v, shape.member, f"{where}[{i}]")
    elif shape.type_name == "map" and isinstance(value, dict):
        for k, v in value.items():
            enums(v, shape.value, f"{where}[{k!r}]")
    elif getattr(shape, "enum", None) and value not in shape.enum:
        errors.append(f"{where}: {value!r} is not one of {shape.enum}")
enums(td, shape, "taskDefinition")

def expect(cond, msg):
    if not cond:
        errors.append(msg)

expect(td.get("requiresCompatibilities") == ["FARGATE"], "requiresCompatibilities must be [FARGATE]")
expect(td.get("networkMode") == "awsvpc", "networkMode must be awsvpc")
containers = {c.get("name"): c for c in td.get("containerDefinitions", [])}
server = containers.get("fluidity")
expect(server is not None, "no container named fluidity")
server = server or {}
image = server.get("image", "")
expect(image.rsplit(":", 1)[0].endswith("/fluidity"), f"image {image!r} is not the fluidity repository")
expect("entryPoint" not in server, "the fluidity container must keep the image's ENTRYPOINT /fluidity")
expect((server.get("command") or [None])[0] == "server", "the fluidity container must run `server`")
expect(server.get("essential") is True, "the fluidity container must be essential")
ports = {(p.get("containerPort"), p.get("protocol", "tcp")) for p in server.get("portMappings", [])}
expect((8443, "tcp") in ports, "no port mapping for 8443/tcp")
HEALTH = ["CMD", "/fluidity", "health", "http://127.0.0.1:8081/healthz"]
expect(server.get("healthCheck", {}).get("command") == HEALTH, f"healthCheck command must be {HEALTH}")
expect(server.get("stopTimeout", 30) > 10, "stopTimeout must exceed the 10 s drain")
for name, c in containers.items():
    log = c.get("logConfiguration", {})
    expect(log.get("logDriver") == "awslogs", f"{name}: logDriver must be awslogs")
    for opt in ("awslogs-group", "awslogs-region", "awslogs-stream-prefix"):
        expect(opt in log.get("options", {}), f"{name}: awslogs option {opt} missing")

env = {e["name"]: e["value"] for e in server.get("environment", [])}
known = set(open(env_file).read().split())
for name in env:
    expect(name in known, f"environment {name} is not a setting of `fluidity server`")
expect(env.get("FLUIDITY_LISTEN_PORT") == "8443", "FLUIDITY_LISTEN_PORT must be 8443")
expect(env.get("FLUIDITY_HEALTH_ADDR", "").endswith(":8081"), "FLUIDITY_HEALTH_ADDR must use port 8081")
expect("secrets" not in server, "the server container must not hold the PEM secrets in its environment")

# The certificates: the init container writes them into the shared volume, the server reads them from it.
init_name = next((d["containerName"] for d in server.get("dependsOn", []) if d.get("condition") == "SUCCESS"), None)
init = containers.get(init_name, {})
expect(bool(init), "the fluidity container must depend on an init container with condition SUCCESS")
expect(init.get("essential") is False, "the init container must not be essential")
secret_env = {s["name"] for s in init.get("secrets", [])}
expect({"CA_CERT_PEM", "SERVER_CERT_PEM", "SERVER_KEY_PEM"} <= secret_env, "init secrets must fill CA_CERT_PEM, SERVER_CERT_PEM and SERVER_KEY_PEM")
mounts = {m["sourceVolume"]: m for m in server.get("mountPoints", [])}
init_mounts = {m["sourceVolume"]: m for m in init.get("mountPoints", [])}
shared = set(mounts) & set(init_mounts)
expect(len(shared) == 1, "the init and server containers must share one volume")
if shared:
    vol = shared.pop()
    expect(mounts[vol].get("readOnly") is True, "the server must mount the certificate volume read-only")
    cert_dir = mounts[vol]["containerPath"]
    for key in ("FLUIDITY_CERT_FILE", "FLUIDITY_KEY_FILE", "FLUIDITY_CA_CERT_FILE"):
        expect(env.get(key, "").startswith(cert_dir + "/"), f"{key} must name a file in {cert_dir}")
    with open(plan_file, "w") as f:
        json.dump({"cert_dir": cert_dir, "init_dir": init_mounts[vol]["containerPath"], "init": init.get("command"),
                   "env": env, "health": server.get("healthCheck", {}).get("command"),
                   "user": server.get("user", ""), "stop": server.get("stopTimeout", 30)}, f)

if errors:
    print("31-ecs: FAIL: " + path + ":\n  " + "\n  ".join(errors), file=sys.stderr)
    sys.exit(1)
print(f"31-ecs: proved: {path} parses, has no duplicate or unknown keys, passes botocore's RegisterTaskDefinition "
      f"validation and enum check; image {image}, port 8443/tcp, healthCheck {HEALTH}, awslogs for every container, "
      f"{len(env)} FLUIDITY_* variables all known to the server")
PY

# The execution role: its trust policy names ECS tasks, and it may read exactly the secrets the task names.
python3 - "$TASKDEF" deploy/ecs/execution-role-trust.json deploy/ecs/execution-role-secrets.json <<'PY'
import json, sys
td, trust, secrets = (json.load(open(p)) for p in sys.argv[1:4])
named = {s["valueFrom"] for c in td["containerDefinitions"] for s in c.get("secrets", [])}
allowed = {r for st in secrets["Statement"] if st["Action"] == "secretsmanager:GetSecretValue" for r in st["Resource"]}
principals = {st["Principal"]["Service"] for st in trust["Statement"] if st["Action"] == "sts:AssumeRole"}
if named != allowed or principals != {"ecs-tasks.amazonaws.com"}:
    sys.exit(f"31-ecs: FAIL: execution role grants {sorted(allowed)} to {sorted(principals)}; the task reads {sorted(named)}")
print("31-ecs: proved: the execution role's policies parse, trust ecs-tasks and grant exactly the task's secrets")
PY

# --- the design, run here ----------------------------------------------------------------------------------------
plan() { python3 -c 'import json,sys; p=json.load(open(sys.argv[1])); v=p; [v := v[k] for k in sys.argv[2:]]; print(v if not isinstance(v, list) else "\n".join(v))' "$WORK/plan" "$@"; }
CERT_DIR=$(plan cert_dir)
INIT_DIR=$(plan init_dir)
[[ "$CERT_DIR" == "$INIT_DIR" ]] || fail "the init container writes $INIT_DIR, the server reads $CERT_DIR"

# What ECS would put in the init container's environment from Secrets Manager: the PEM files, verbatim.
"$BIN" certs init --out "$WORK/made" >/dev/null
VOLUME=$WORK/volume
mkdir -p "$VOLUME"
mapfile -t INIT_CMD < <(plan init)
[[ "${INIT_CMD[0]}" == sh && "${INIT_CMD[1]}" == -c ]] || fail "the init command must be sh -c SCRIPT"
script=${INIT_CMD[2]//"$INIT_DIR"/"$VOLUME"}
env -i PATH=/usr/bin:/bin \
    CA_CERT_PEM="$(cat "$WORK/made/ca.crt")" \
    SERVER_CERT_PEM="$(cat "$WORK/made/server.crt")" \
    SERVER_KEY_PEM="$(cat "$WORK/made/server.key")" \
    busybox sh -c "$script" || fail "the init command failed"
for f in ca.crt server.crt server.key; do
    [[ "$(stat -c '%u %a' "$VOLUME/$f")" == "65532 600" ]] || fail "$f is $(stat -c '%u %a' "$VOLUME/$f"), expected owner 65532 mode 600"
done
cmp -s <(grep -v '^$' "$VOLUME/server.key") <(grep -v '^$' "$WORK/made/server.key") || fail "server.key differs from the secret"
say "proved: the init command (busybox sh) writes ca.crt, server.crt, server.key from the secret variables, owner 65532, mode 600"

# The server with the task's environment, ports moved to 127.0.0.1 and free ones, as the image's user.
SERVER_ENV=(PATH=/usr/bin:/bin)
while IFS='=' read -r name value; do
    value=${value//"$CERT_DIR"/"$VOLUME"}
    case "$name" in
        FLUIDITY_LISTEN_ADDR) value=127.0.0.1 ;;
        FLUIDITY_LISTEN_PORT) value=0 ;;
        FLUIDITY_HEALTH_ADDR) value=127.0.0.1:0 ;;
    esac
    SERVER_ENV+=("$name=$value")
done < <(python3 -c 'import json,sys; [print(f"{k}={v}") for k, v in json.load(open(sys.argv[1]))["env"].items()]' "$WORK/plan")
SERVER_ENV+=(FLUIDITY_LOG_FORMAT=text)
chmod 0711 "$WORK"
USER_ID=$(plan user)
[[ "$USER_ID" == 65532 ]] || fail "the fluidity container must run as 65532 (the image's user), not '$USER_ID'"

LOG=$WORK/server.log
setpriv --reuid=65532 --regid=65532 --clear-groups --no-new-privs --bounding-set=-all --inh-caps=-all \
    env -i "${SERVER_ENV[@]}" "$BIN" server 2>"$LOG" &
SERVER_PID=$!
health=
for _ in $(seq 1 100); do
    health=$(sed -n 's/.*server listening.*health=\([0-9.:]*\).*/\1/p' "$LOG")
    [[ -n "$health" ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || fail "server exited at start:"$'\n'"$(cat "$LOG")"
    sleep 0.1
done
[[ -n "$health" ]] || fail "server did not report listening within 10 s:"$'\n'"$(cat "$LOG")"
say "proved: the server starts with the task's environment as UID 65532 and loads the certificates the init command wrote"

# The task's healthCheck command, /fluidity being the binary and the URL's port the one bound here.
mapfile -t HC < <(plan health)
[[ "${HC[0]}" == CMD && "${HC[1]}" == /fluidity ]] || fail "unexpected healthCheck ${HC[*]}"
if ! "$BIN" health --help >/dev/null 2>&1; then
    fail "the healthCheck runs \`/fluidity health\`, which this build does not have (the subcommand comes with the container image part of issue 18)"
fi
url=${HC[3]/127.0.0.1:8081/$health}
timeout 10 "$BIN" "${HC[@]:2:1}" "$url" || fail "healthCheck command failed against $url"
say "proved: the healthCheck command (${HC[*]:1}) exits 0 against the running server"

stop=$(plan stop)
kill -TERM "$SERVER_PID"
status=0
timeout "$stop" tail --pid="$SERVER_PID" -f /dev/null || fail "server still running ${stop}s after SIGTERM"
wait "$SERVER_PID" || status=$?
SERVER_PID=
[[ "$status" == 0 ]] || fail "server exited $status after SIGTERM:"$'\n'"$(cat "$LOG")"
say "proved: SIGTERM (what ECS sends at stop) ends the server with exit 0 within stopTimeout=${stop}s"
say "not run here: AWS itself (no account or network); docs/deploy/ecs.md has the commands"
