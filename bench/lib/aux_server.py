#!/usr/bin/env python3
"""Auxiliary origins for the benchmark, stdlib only, bound to 127.0.0.1.

* a WebSocket echo server (RFC 6455: the opening handshake, then every text/binary message is echoed back,
  ping is answered with pong, close with close);
* a raw TCP echo server (used as the target of the idle-tunnel and open/close-cycle workloads: it holds a
  connection open for as long as the peer does).

Usage: aux_server.py --ws-port P --echo-port Q --ready-file F
Writes F once both listeners are up. Stops on SIGTERM/SIGINT.
"""

import argparse
import asyncio
import base64
import hashlib
import os
import signal
import struct
import sys

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEAD = 16 * 1024
MAX_MSG = 16 * 1024 * 1024


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key.strip() + WS_GUID).digest())


async def read_frame(reader: asyncio.StreamReader):
    """One frame: (fin, opcode, payload). Client frames must be masked."""
    b0, b1 = await reader.readexactly(2)
    fin = bool(b0 & 0x80)
    opcode = b0 & 0x0F
    masked = bool(b1 & 0x80)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    if n > MAX_MSG:
        raise ValueError("frame too large")
    mask = await reader.readexactly(4) if masked else None
    data = await reader.readexactly(n)
    if mask is not None:
        data = unmask(data, mask)
    return fin, opcode, data, masked


def unmask(data: bytes, mask: bytes) -> bytes:
    if not data:
        return data
    # XOR with the repeated 4-byte mask, done on big integers (fast enough in pure Python).
    n = len(data)
    m = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(m, "big")).to_bytes(n, "big")


def frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


async def ws_handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        import socket

        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_HEAD:
            raise ValueError("head too large")
        lines = head.decode("latin-1").split("\r\n")
        request_line = lines[0].split(" ")
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        upgrade_ok = (
            len(request_line) == 3
            and request_line[0] == "GET"
            and "websocket" in headers.get("upgrade", "").lower()
            and "upgrade" in headers.get("connection", "").lower()
            and headers.get("sec-websocket-version") == "13"
            and "sec-websocket-key" in headers
        )
        if not upgrade_ok:
            body = b"not a websocket upgrade\n"
            writer.write(
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                + b"Content-Length: %d\r\n\r\n" % len(body)
                + body
            )
            await writer.drain()
            return
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(headers["sec-websocket-key"].encode()) + b"\r\n\r\n"
        )
        await writer.drain()
        parts: list[bytes] = []
        msg_opcode = 0
        while True:
            fin, opcode, data, masked = await read_frame(reader)
            if not masked:
                writer.write(frame(0x8, struct.pack("!H", 1002)))
                return
            if opcode == 0x8:  # close
                writer.write(frame(0x8, data[:2]))
                await writer.drain()
                return
            if opcode == 0x9:  # ping
                writer.write(frame(0xA, data))
                continue
            if opcode == 0xA:  # pong
                continue
            if opcode in (0x1, 0x2):
                msg_opcode = opcode
                parts = [data]
            elif opcode == 0x0:
                parts.append(data)
            if fin:
                writer.write(frame(msg_opcode, b"".join(parts)))
                parts = []
                await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError, asyncio.LimitOverrunError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


class Echo(asyncio.Protocol):
    """Raw TCP echo; holds the connection until the peer closes it."""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        return False


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ws-port", type=int, required=True)
    ap.add_argument("--echo-port", type=int, required=True)
    ap.add_argument("--ready-file", required=True)
    args = ap.parse_args()
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    ws = await asyncio.start_server(ws_handle, "127.0.0.1", args.ws_port, backlog=4096)
    echo = await loop.create_server(Echo, "127.0.0.1", args.echo_port, backlog=4096)
    with open(args.ready_file + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(args.ready_file + ".tmp", args.ready_file)
    await stop
    ws.close()
    echo.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
