#!/usr/bin/env python3
"""Many tunnels: idle CONNECT tunnels held open, then open/close cycles (asyncio, stdlib only).

Driven by commands on stdin, one per line, each answered by one JSON line on stdout, so that the caller can
read the proxies' memory and descriptors between the steps:
  open N C      open N CONNECT tunnels to the echo port, at most C handshakes in flight; keep them idle
  check         send one byte on every open tunnel and wait for its echo: how many are still alive
  close         close every held tunnel
  cycles M C    M times: open a tunnel, one byte there and back, close; C at a time
  quit
"""

import argparse
import asyncio
import json
import socket
import sys
import time

HOST = "127.0.0.1"


async def open_one(proxy, port, timeout):
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*proxy), timeout)
    try:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        writer.write(f"CONNECT {HOST}:{port} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status = head.split(b" ", 2)[1]
        if status != b"200":
            raise ConnectionError(f"CONNECT answered {status.decode(errors='replace')}")
        return reader, writer
    except BaseException:
        writer.close()
        raise


async def ping(reader, writer, timeout):
    writer.write(b"p")
    data = await asyncio.wait_for(reader.readexactly(1), timeout)
    if data != b"p":
        raise ConnectionError("bad echo")


async def bounded(coros, limit):
    sem = asyncio.Semaphore(limit)

    async def run(c):
        async with sem:
            return await c

    return await asyncio.gather(*(run(c) for c in coros), return_exceptions=True)


def first_error(results):
    for r in results:
        if isinstance(r, BaseException):
            return f"{type(r).__name__}: {r}"[:200]
    return None


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy", required=True, help="HOST:PORT")
    ap.add_argument("--port", type=int, required=True, help="echo port")
    ap.add_argument("--timeout", type=float, default=10.0)
    args = ap.parse_args()
    h, p = args.proxy.rsplit(":", 1)
    proxy = (h, int(p))
    held = []
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def reply(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = line.decode().split()
        if not cmd:
            continue
        t0 = time.monotonic()
        if cmd[0] == "open":
            n, c = int(cmd[1]), int(cmd[2])
            res = await bounded([open_one(proxy, args.port, args.timeout) for _ in range(n)], c)
            ok = [r for r in res if not isinstance(r, BaseException)]
            held.extend(ok)
            reply({"opened": len(ok), "failed": n - len(ok), "first_error": first_error(res),
                   "secs": time.monotonic() - t0})
        elif cmd[0] == "check":
            res = await bounded([ping(r, w, args.timeout) for r, w in held], 200)
            alive = sum(1 for r in res if not isinstance(r, BaseException))
            reply({"alive": alive, "held": len(held), "first_error": first_error(res), "secs": time.monotonic() - t0})
        elif cmd[0] == "close":
            for _, w in held:
                w.close()
            for _, w in held:
                try:
                    await asyncio.wait_for(w.wait_closed(), 2)
                except BaseException:
                    pass
            n = len(held)
            held = []
            reply({"closed": n, "secs": time.monotonic() - t0})
        elif cmd[0] == "cycles":
            m, c = int(cmd[1]), int(cmd[2])

            async def cycle():
                r, w = await open_one(proxy, args.port, args.timeout)
                try:
                    await ping(r, w, args.timeout)
                finally:
                    w.close()
                    try:
                        await asyncio.wait_for(w.wait_closed(), 2)
                    except BaseException:
                        pass

            res = await bounded([cycle() for _ in range(m)], c)
            ok = sum(1 for r in res if not isinstance(r, BaseException))
            reply({"ok": ok, "failed": m - ok, "first_error": first_error(res), "secs": time.monotonic() - t0})
        elif cmd[0] == "quit":
            break
        else:
            reply({"error": f"unknown command {cmd[0]}"})
    for _, w in held:
        w.close()


if __name__ == "__main__":
    asyncio.run(main())
