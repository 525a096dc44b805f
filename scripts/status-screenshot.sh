#!/usr/bin/env bash
# Takes docs/status-page.png: a server and an agent on loopback, a minute of real traffic through the tunnel (and a
# few failing requests), and the agent's status page in headless Chromium, captured after the minute.
#
#   scripts/status-screenshot.sh [OUT.png]
#
# Needs: a built target/release/fluidity (or FLUIDITY=path), python3, curl, chromium, node (>= 20.10).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-docs/status-page.png}
BIN=${FLUIDITY:-target/release/fluidity}
WORK=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
TUNNEL=$(free_port) HEALTH=$(free_port) PROXY=$(free_port) ORIGIN=$(free_port) DEBUG=$(free_port)

"$BIN" certs init --out "$WORK/certs" >/dev/null
"$BIN" server --listen-addr 127.0.0.1 --listen-port "$TUNNEL" --health-addr "127.0.0.1:$HEALTH" \
  --allow-private-targets true --cert-file "$WORK/certs/server.crt" --key-file "$WORK/certs/server.key" \
  --ca-cert-file "$WORK/certs/ca.crt" 2>"$WORK/server.log" &
PIDS+=($!)
"$BIN" agent --server-ip 127.0.0.1 --server-port "$TUNNEL" --local-proxy-port "$PROXY" --direct-targets '' \
  --cert-file "$WORK/certs/client.crt" --key-file "$WORK/certs/client.key" --ca-cert-file "$WORK/certs/ca.crt" \
  2>"$WORK/agent.log" &
PIDS+=($!)
# The origin: GET answers 64 MiB, PUT reads the body and answers 204.
python3 - "$ORIGIN" >/dev/null 2>&1 <<'PY' &
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
BLOCK = bytes(range(256)) * 256
class Origin(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(BLOCK) * 1024))
        self.end_headers()
        for _ in range(1024):
            self.wfile.write(BLOCK)
    def do_PUT(self):
        left = int(self.headers.get("Content-Length", "0"))
        while left > 0:
            left -= len(self.rfile.read(min(left, 65536)) or b"x" * left)
        self.send_response(204)
        self.end_headers()
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Origin).serve_forever()
PY
PIDS+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PROXY/healthz" >/dev/null && break; sleep 0.1; done
for _ in $(seq 100); do curl -s -I -o /dev/null "http://127.0.0.1:$ORIGIN/" && break; sleep 0.1; done

# Traffic: downloads at a few rates, an upload, and failures (a closed port, a name that does not resolve).
(
  for rate in 4M 9M 2M 6M 12M 3M; do
    curl -s -x "http://127.0.0.1:$PROXY" --limit-rate "$rate" --max-time 9 -o /dev/null \
      "http://127.0.0.1:$ORIGIN/file" || true
    curl -s -x "http://127.0.0.1:$PROXY" -o /dev/null "http://127.0.0.1:1/" || true
  done
) &
PIDS+=($!)
(
  sleep 20
  head -c 12M /dev/zero >"$WORK/upload"
  curl -s -x "http://127.0.0.1:$PROXY" --limit-rate 1M --max-time 15 -o /dev/null \
    -T "$WORK/upload" "http://127.0.0.1:$ORIGIN/upload" || true
  curl -s -x "http://127.0.0.1:$PROXY" -o /dev/null "http://no-such-host.invalid/" || true
) &
PIDS+=($!)

chromium --headless --no-sandbox --disable-gpu --no-proxy-server --hide-scrollbars \
  --user-data-dir="$WORK/profile" --window-size=1280,1000 --remote-debugging-port="$DEBUG" about:blank \
  2>/dev/null &
PIDS+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$DEBUG/json/version" >/dev/null && break; sleep 0.1; done
PAGE_WS=$(curl -s "http://127.0.0.1:$DEBUG/json/list" | python3 -c 'import json,sys; print([t for t in json.load(sys.stdin) if t["type"]=="page"][0]["webSocketDebuggerUrl"])')

node --experimental-websocket --no-warnings - "$PAGE_WS" "http://127.0.0.1:$PROXY/" "$OUT" <<'JS'
const [ws_url, page, out] = process.argv.slice(2);
const ws = new WebSocket(ws_url);
let id = 0;
const pending = new Map();
const call = (method, params = {}) => new Promise((resolve) => {
  pending.set(++id, resolve);
  ws.send(JSON.stringify({ id, method, params }));
});
ws.onmessage = (event) => {
  const msg = JSON.parse(event.data);
  if (pending.has(msg.id)) { pending.get(msg.id)(msg.result); pending.delete(msg.id); }
};
ws.onopen = async () => {
  await call("Emulation.setDeviceMetricsOverride", { width: 1280, height: 1000, deviceScaleFactor: 1, mobile: false });
  await call("Page.navigate", { url: page });
  await new Promise((r) => setTimeout(r, 60000));
  const shot = await call("Page.captureScreenshot", { format: "png" });
  require("fs").writeFileSync(out, Buffer.from(shot.data, "base64"));
  console.log(`wrote ${out}`);
  process.exit(0);
};
JS
