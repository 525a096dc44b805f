#!/usr/bin/env python3
"""A userspace delay relay (this kernel has no netem), stdlib only, bound to 127.0.0.1.

Every byte is delivered DELAY after the relay read it, in order, in both directions, so a relay with
--delay-ms 25 gives a 50 ms round trip. A new connection also pays the TCP handshake a real 50 ms path would
cost: the relay dials the target DELAY after accepting (the SYN's trip), and bytes from the connecting side are
not delivered before 3 * DELAY after the accept (the SYN-ACK's trip back, then the data's trip out), so the first
request on a new connection arrives at 1.5 RTT, as on a real path.

No loss. By default no bandwidth cap either: the relay then moves bytes as fast as the CPU lets it. With
--rate-mbit R each direction is a link of R Mbit/s: a chunk leaves once the link has sent what came before it,
and arrives DELAY later (serialization, then propagation), as on a real long path. Up to --max-inflight bytes
(default 32 MiB) may be queued per direction; beyond that the relay stops reading that side (back-pressure), so
memory stays bounded.

Usage: relay.py --delay-ms 25 [--rate-mbit R] --map LISTEN_PORT:TARGET_PORT [--map ...] --ready-file F
"""

import argparse
import asyncio
import collections
import os
import signal
import socket

HOST = "127.0.0.1"
SLACK = 0.001  # seconds


class Direction:
    """One direction of one relayed connection: src transport -> delayed queue -> dst transport."""

    def __init__(self, loop, delay, max_inflight, rate):
        self.loop = loop
        self.delay = delay
        self.rate = rate  # bytes per second; 0 = no cap
        self.sent_until = 0.0  # when the link has finished sending what is queued so far
        self.max_inflight = max_inflight
        self.low = max_inflight // 2
        self.q = collections.deque()
        self.queued = 0
        self.timer = None
        self.src = None  # transport we read from
        self.dst = None  # transport we write to
        self.floor = 0.0  # earliest delivery time (handshake emulation)
        self.paused_src = False
        self.dst_blocked = False
        self.ended = False  # EOF delivered
        self.on_end = None

    def push(self, data):
        now = self.loop.time()
        if self.rate:
            self.sent_until = max(now, self.sent_until) + (len(data) if data else 0) / self.rate
            now = self.sent_until
        t = max(now + self.delay, self.floor)
        self.q.append((t, data))
        if data is not None:
            self.queued += len(data)
        if self.timer is None:
            self.timer = self.loop.call_at(t, self.flush)
        self._maybe_pause()

    def _maybe_pause(self):
        if self.src is None or self.paused_src:
            return
        if self.queued > self.max_inflight or self.dst_blocked:
            try:
                self.src.pause_reading()
                self.paused_src = True
            except Exception:
                pass

    def _maybe_resume(self):
        if self.src is None or not self.paused_src:
            return
        if self.queued <= self.low and not self.dst_blocked:
            try:
                self.src.resume_reading()
                self.paused_src = False
            except Exception:
                pass

    def flush(self):
        self.timer = None
        if self.dst is None:
            return
        # deliver everything due within the next SLACK (asyncio's timers are only ~1 ms precise anyway)
        limit = self.loop.time() + SLACK
        q = self.q
        while q and q[0][0] <= limit:
            t, data = q.popleft()
            if data is None:
                self._end()
                return
            self.queued -= len(data)
            self._write(data)
        if q:
            self.timer = self.loop.call_at(q[0][0], self.flush)
        self._maybe_resume()

    def _write(self, data):
        if not self.dst.is_closing():
            self.dst.write(data)

    def _end(self):
        self.ended = True
        if not self.dst.is_closing():
            try:
                if self.dst.can_write_eof():
                    self.dst.write_eof()
                else:
                    self.dst.close()
            except Exception:
                self.dst.close()
        if self.on_end:
            self.on_end()

    def set_dst_blocked(self, blocked):
        self.dst_blocked = blocked
        if blocked:
            self._maybe_pause()
        else:
            self._maybe_resume()


class Side(asyncio.Protocol):
    """A protocol for one socket; `inbound` is the Direction it feeds, `outbound` the one that writes to it."""

    def __init__(self, conn, inbound, outbound):
        self.conn = conn
        self.inbound = inbound
        self.outbound = outbound
        self.transport = None
        self.eof = False

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=4 << 20, low=1 << 20)

    def data_received(self, data):
        self.inbound.push(data)

    def eof_received(self):
        if not self.eof:
            self.eof = True
            self.inbound.push(None)
        return True  # keep the write half open (half-close)

    def connection_lost(self, exc):
        if not self.eof:
            self.eof = True
            self.inbound.push(None)
        self.conn.lost(self)

    def pause_writing(self):
        self.outbound.set_dst_blocked(True)

    def resume_writing(self):
        self.outbound.set_dst_blocked(False)


class Conn:
    def __init__(self, loop, delay, max_inflight, rate, target_port):
        self.loop = loop
        self.delay = delay
        self.target_port = target_port
        self.c2s = Direction(loop, delay, max_inflight, rate)
        self.s2c = Direction(loop, delay, max_inflight, rate)
        self.c2s.on_end = self.check_done
        self.s2c.on_end = self.check_done
        self.client = Side(self, self.c2s, self.s2c)
        self.server = None
        self.closed = False

    def accepted(self, transport):
        t0 = self.loop.time()
        # the client's first bytes cannot arrive before SYN (d) + SYN-ACK (d) + data (d)
        self.c2s.floor = t0 + 3 * self.delay
        self.c2s.src = transport
        self.s2c.dst = transport
        self.loop.call_at(t0 + self.delay, lambda: asyncio.ensure_future(self.dial()))

    async def dial(self):
        try:
            _, proto = await self.loop.create_connection(
                lambda: Side(self, self.s2c, self.c2s), HOST, self.target_port
            )
        except OSError:
            self.close_all()
            return
        self.server = proto
        self.c2s.dst = proto.transport
        self.s2c.src = proto.transport
        if self.closed:
            proto.transport.close()
            return
        if self.c2s.timer is None and self.c2s.q:
            self.c2s.flush()  # bytes that arrived while dialing

    def lost(self, side):
        # a reset or full close: the other side is closed once what is queued towards it has been delivered
        self.check_done()

    def check_done(self):
        if self.c2s.ended and self.s2c.ended:
            self.close_all()

    def close_all(self):
        if self.closed:
            return
        self.closed = True
        for side in (self.client, self.server):
            if side is not None and side.transport is not None and not side.transport.is_closing():
                side.transport.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--delay-ms", type=float, required=True)
    ap.add_argument("--map", action="append", required=True, help="LISTEN_PORT:TARGET_PORT")
    ap.add_argument("--max-inflight", type=int, default=32 << 20)
    ap.add_argument("--rate-mbit", type=float, default=0.0, help="link rate per direction; 0 = no cap")
    ap.add_argument("--ready-file", required=True)
    args = ap.parse_args()
    loop = asyncio.get_running_loop()
    delay = args.delay_ms / 1000.0
    rate = args.rate_mbit * 1e6 / 8
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    servers = []
    for m in args.map:
        lport, tport = (int(x) for x in m.split(":"))

        def factory(tport=tport):
            conn = Conn(loop, delay, args.max_inflight, rate, tport)
            proto = conn.client
            orig = proto.connection_made

            def made(transport, conn=conn, orig=orig):
                orig(transport)
                conn.accepted(transport)

            proto.connection_made = made
            return proto

        servers.append(await loop.create_server(factory, HOST, lport, backlog=4096))
    with open(args.ready_file + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(args.ready_file + ".tmp", args.ready_file)
    await stop
    for s in servers:
        s.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
