#!/usr/bin/env python3
"""Setup latency: N sequential fresh client connections, each a CONNECT (with --socks: a SOCKS5 CONNECT) to the
origin plus one small GET (plain HTTP inside the tunnel, Connection: close), timed from connect() to the last body
byte. With --proxy none the same GET goes straight to the origin.

Prints one JSON object: {"ok", "n", "errors", "p50_ms", "p99_ms", "samples_ms"...}.
"""

import argparse
import json
import statistics
import sys
import time

from proxyclient import HOST, ProxyError, open_tunnel, parse_proxy, read_body, read_head


def pct(sorted_vals, p):
    if not sorted_vals:
        return None
    k = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy", default="none")
    ap.add_argument("--socks", action="store_true", help="SOCKS5 instead of HTTP CONNECT")
    ap.add_argument("--port", type=int, required=True, help="origin HTTP port")
    ap.add_argument("--path", default="/1k")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--deadline", type=float, default=60.0, help="give up after this many seconds in all")
    args = ap.parse_args()
    proxy = parse_proxy(args.proxy)
    req = f"GET {args.path} HTTP/1.1\r\nHost: {HOST}:{args.port}\r\nConnection: close\r\n\r\n".encode()
    samples = []
    errors = []
    end = time.monotonic() + args.deadline
    for _ in range(args.n):
        if time.monotonic() > end:
            errors.append("deadline")
            break
        t0 = time.perf_counter()
        try:
            sock, rest = open_tunnel(proxy, args.port, args.timeout, socks=args.socks)
            try:
                sock.sendall(req)
                status, text, rest = read_head(sock, rest)
                body = read_body(sock, text, rest)
                if status != 200 or len(body) == 0:
                    raise ProxyError(f"GET answered {status}")
            finally:
                sock.close()
            samples.append((time.perf_counter() - t0) * 1000.0)
        except (OSError, ProxyError) as e:
            errors.append(str(e) or type(e).__name__)
    s = sorted(samples)
    out = {
        "ok": len(errors) == 0 and len(samples) == args.n,
        "n": len(samples),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "p50_ms": pct(s, 50),
        "p99_ms": pct(s, 99),
        "mean_ms": statistics.fmean(s) if s else None,
    }
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
