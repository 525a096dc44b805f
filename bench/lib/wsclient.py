#!/usr/bin/env python3
"""WebSocket echo round trips through a proxy, raw RFC 6455, stdlib only.

--mode connect : CONNECT to the echo server's port, then the WebSocket handshake inside the tunnel (as a
                 browser does for wss://, here without TLS so that only the proxy is measured);
--mode upgrade : an absolute-form `GET http://127.0.0.1:PORT/echo` with `Upgrade: websocket` sent to the proxy
                 (as a browser does for ws:// through an HTTP proxy that it does not CONNECT through);
--proxy none   : straight to the echo server (the `direct` column).

Sends N masked text messages of SIZE bytes one at a time, each waiting for its echo; prints one JSON object.
"""

import argparse
import base64
import hashlib
import json
import os
import struct
import sys
import time

from proxyclient import HOST, ProxyError, connect, header, open_tunnel, parse_proxy, read_head

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def pct(sorted_vals, p):
    if not sorted_vals:
        return None
    k = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def masked_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x81, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    m = (mask * (n // 4 + 1))[:n]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(m, "big")).to_bytes(n, "big")
    return head + mask + body


class Reader:
    def __init__(self, sock, buf=b""):
        self.sock = sock
        self.buf = buf

    def exactly(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ProxyError("connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def frame(self):
        b0, b1 = self.exactly(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self.exactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", self.exactly(8))
        if b1 & 0x80:
            raise ProxyError("server frame is masked")
        return b0 & 0x0F, self.exactly(n)


def handshake(sock, rest, target_in_request_line):
    key = base64.b64encode(os.urandom(16))
    req = (
        f"GET {target_in_request_line} HTTP/1.1\r\nHost: {HOST}:{args.port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    sock.sendall(req)
    status, text, rest = read_head(sock, rest)
    if status != 101:
        server = header(text, "server")
        body = rest[:60].decode("latin-1", "replace").strip()
        raise ProxyError(f"upgrade answered {status}" + (f" (server: {server})" if server else "")
                         + (f": {body!r}" if body else ""))
    want = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
    if header(text, "sec-websocket-accept") != want:
        raise ProxyError("bad Sec-WebSocket-Accept")
    return rest


def run():
    proxy = parse_proxy(args.proxy)
    if proxy is None:
        sock, rest = connect((HOST, args.port), args.timeout), b""
        rest = handshake(sock, rest, "/echo")
    elif args.mode == "connect":
        sock, rest = open_tunnel(proxy, args.port, args.timeout)
        rest = handshake(sock, rest, "/echo")
    else:
        sock, rest = connect(proxy, args.timeout), b""
        rest = handshake(sock, rest, f"http://{HOST}:{args.port}/echo")
    rd = Reader(sock, rest)
    payload = b"x" * args.size
    samples = []
    end = time.monotonic() + args.deadline
    try:
        for i in range(args.n + args.warmup):
            if time.monotonic() > end:
                raise ProxyError("deadline")
            f = masked_frame(payload)
            t0 = time.perf_counter()
            sock.sendall(f)
            op, data = rd.frame()
            dt = time.perf_counter() - t0
            if op != 1 or data != payload:
                raise ProxyError(f"bad echo (opcode {op}, {len(data)} bytes)")
            if i >= args.warmup:
                samples.append(dt * 1e6)
        sock.sendall(b"\x88\x82" + b"\0\0\0\0" + struct.pack("!H", 1000))
    finally:
        sock.close()
    return samples


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy", default="none")
    ap.add_argument("--mode", choices=["connect", "upgrade"], default="connect")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--deadline", type=float, default=60.0)
    args = ap.parse_args()
    try:
        s = sorted(run())
        out = {"ok": True, "n": len(s), "p50_us": pct(s, 50), "p99_us": pct(s, 99)}
    except (OSError, ProxyError) as e:
        out = {"ok": False, "error": str(e) or type(e).__name__}
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
