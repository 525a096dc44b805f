"""Blocking client helpers shared by the benchmark's Python clients (stdlib only)."""

import socket

HOST = "127.0.0.1"


class ProxyError(Exception):
    pass


def parse_proxy(s):
    """'none' -> None; 'HOST:PORT' -> (host, port)."""
    if not s or s == "none":
        return None
    host, port = s.rsplit(":", 1)
    return host, int(port)


def connect(addr, timeout):
    sock = socket.create_connection(addr, timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_head(sock, buf=b"", limit=65536):
    """Read until the end of an HTTP head. Returns (status, head_text, rest)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ProxyError("connection closed before the response head" + (f" (got {buf[:60]!r})" if buf else ""))
        buf += chunk
        if len(buf) > limit:
            raise ProxyError("response head too large")
    head, rest = buf.split(b"\r\n\r\n", 1)
    text = head.decode("latin-1")
    first = text.split("\r\n", 1)[0]
    parts = first.split(" ", 2)
    try:
        status = int(parts[1])
    except (IndexError, ValueError):
        raise ProxyError(f"bad status line {first!r}") from None
    return status, text, rest


def header(head_text, name):
    name = name.lower()
    for line in head_text.split("\r\n")[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            if k.strip().lower() == name:
                return v.strip()
    return None


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ProxyError(f"connection closed after {len(data)} of {n} bytes" + (f" ({data!r})" if data else ""))
        data += chunk
    return data


def open_socks5(sock, port):
    """SOCKS5 (RFC 1928) on `sock`: the "no authentication" greeting, then CONNECT to 127.0.0.1:port, waiting for
    each answer as a client does."""
    sock.sendall(b"\x05\x01\x00")
    if recv_exact(sock, 2) != b"\x05\x00":
        raise ProxyError("SOCKS5: no authentication refused")
    sock.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(HOST) + port.to_bytes(2, "big"))
    reply = recv_exact(sock, 4)
    if reply[1] != 0:
        raise ProxyError(f"SOCKS5 CONNECT answered {reply[1]}")
    # the bound address: IPv4, a name or IPv6, then the port
    rest = {1: 4, 4: 16}.get(reply[3])
    if rest is None:
        rest = recv_exact(sock, 1)[0]
    recv_exact(sock, rest + 2)


def open_tunnel(proxy, port, timeout, socks=False):
    """A socket connected to 127.0.0.1:port, through `proxy` with CONNECT, or SOCKS5 when `socks` (or directly
    when proxy is None). Returns (sock, leftover bytes already read past the proxy's response head)."""
    if proxy is None:
        return connect((HOST, port), timeout), b""
    sock = connect(proxy, timeout)
    if socks:
        try:
            open_socks5(sock, port)
            return sock, b""
        except BaseException:
            sock.close()
            raise
    try:
        sock.sendall(f"CONNECT {HOST}:{port} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode())
        status, text, rest = read_head(sock)
        if status != 200:
            raise ProxyError(f"CONNECT answered {status}")
        return sock, rest
    except BaseException:
        sock.close()
        raise


def read_body(sock, head_text, rest):
    """Read a Content-Length body (the benchmark's origins always send one)."""
    cl = header(head_text, "content-length")
    if cl is None:
        # read to close
        data = rest
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
    n = int(cl)
    data = rest
    while len(data) < n:
        chunk = sock.recv(max(65536, n - len(data)))
        if not chunk:
            raise ProxyError("body cut short")
        data += chunk
    return data[:n]
