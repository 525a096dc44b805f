#!/usr/bin/env python3
"""Fluidity benchmark orchestrator (stdlib only). Started by bench/run.sh, which installs the tools and builds the
release binary first; see bench/README.md.

Starts the origins (nginx, a Python WebSocket/TCP echo server) and every selected system on 127.0.0.1, runs each
workload for every system in turn (repetitions interleaved across systems, so that a slow period hits all of
them), stops everything it started by pid, prints one table and writes the raw results as JSON and TSV.
"""

import argparse
import base64
import datetime
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
LIB = os.path.join(HERE, "lib")
HOST = "127.0.0.1"
CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
GIB = 1 << 30
MIB = 1 << 20

ALL_SYSTEMS = ["direct", "fluidity", "fluidity-fc", "fluidity-t2", "stunnel", "ss-aes", "ss-2022"]
ALL_WORKLOADS = ["bulk", "small", "setup", "ws", "tunnels", "distance"]
SYSTEM_DOC = {
    "direct": "no proxy (the ceiling)",
    "fluidity": "fluidity agent -> server, fast_connect: false (the default)",
    "fluidity-fc": "fluidity agent -> server, fast_connect: true (CONNECT-based figures only)",
    "fluidity-t2": "fluidity agent -> server, tunnels: 2 (small-request and setup figures only)",
    "stunnel": "stunnel client -> TLS 1.3 mTLS -> stunnel server -> tinyproxy",
    "ss-aes": "shadowsocks-rust sslocal --protocol http (SOCKS5 rows: a second sslocal, --protocol socks) -> ssserver, "
              "aes-128-gcm",
    "ss-2022": "shadowsocks-rust sslocal --protocol http (SOCKS5 rows: a second sslocal, --protocol socks) -> "
               "ssserver, 2022-blake3-aes-128-gcm",
}


def log(msg):
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


# ----------------------------------------------------------------------------------------------------------------
# processes


def child_env():
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith("FLUIDITY_") and not k.lower().endswith("_proxy")
           and k.upper() not in ("RUST_LOG",)}
    return env


def children_of(pid):
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    out.extend(int(x) for x in f.read().split())
            except OSError:
                pass
    except OSError:
        pass
    return out


def with_descendants(pids):
    seen = []
    stack = list(pids)
    while stack and len(seen) < 10000:
        p = stack.pop()
        if p in seen:
            continue
        seen.append(p)
        stack.extend(children_of(p))
    return seen


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read().rsplit(")", 1)[1].split()[0]
        return st not in ("Z", "X")
    except OSError:
        return False


def cpu_seconds(pids):
    total = 0
    for p in with_descendants(pids):
        try:
            with open(f"/proc/{p}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            total += int(parts[11]) + int(parts[12]) + int(parts[13]) + int(parts[14])
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK


# A measurement during which the hypervisor took at least this share of the CPU time is taken again (at most
# STOLEN_RETRIES more times, keeping the one with the least stolen), and listed under the table.
STOLEN_NOTE_PCT = 20
STOLEN_RETRIES = 2


def proc_stat_ticks():
    """The whole machine's CPU ticks so far, from the first line of /proc/stat: user nice system idle iowait irq
    softirq steal (guest time is in user); None where it cannot be read."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return ticks if len(ticks) == 8 else None


def machine_ticks():
    """(stolen, total) CPU ticks of the whole machine so far; None where they cannot be read.
    Stolen ticks are those the hypervisor gave to other guests while this one wanted to run."""
    ticks = proc_stat_ticks()
    return None if ticks is None else (ticks[7], sum(ticks))


def machine_busy():
    """(busy, idle, total) CPU ticks of the whole machine so far; None where they cannot be read.
    Busy is user, nice, system, irq and softirq time; idle includes iowait; stolen time is in neither."""
    ticks = proc_stat_ticks()
    if ticks is None:
        return None
    user, nice, system, idle, iowait, irq, softirq, _steal = ticks
    return user + nice + system + irq + softirq, idle + iowait, sum(ticks)


def machine_use(before, after, n):
    """The machine's idle percent and busy CPU-us per request between two machine_busy() readings."""
    if before is None or after is None or after[2] <= before[2] or n <= 0:
        return None, None
    idle = round(100.0 * (after[1] - before[1]) / (after[2] - before[2]), 1)
    return idle, (after[0] - before[0]) / CLK * 1e6 / n


def fmt_stolen(pct):
    return "unknown" if pct is None else f"{pct:.1f} %"


def stolen_pct(before, after):
    """Percent of the machine's CPU time stolen between two machine_ticks() readings."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round(100.0 * (after[0] - before[0]) / (after[1] - before[1]), 1)


def rss_kib(pids):
    total = 0
    for p in with_descendants(pids):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def fd_count(pids):
    total = 0
    for p in with_descendants(pids):
        try:
            total += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            pass
    return total


class Procs:
    """Everything this run started; stopped by pid (SIGTERM, then SIGKILL), descendants included."""

    def __init__(self, pidlog):
        self.procs = []
        self.pidlog = pidlog

    def start(self, name, argv, logdir, cwd=None):
        os.makedirs(logdir, exist_ok=True)
        logf = open(os.path.join(logdir, f"{name}.log"), "ab")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                             cwd=cwd or logdir, env=child_env(), start_new_session=True)
        logf.close()
        p.bench_name = name
        self.procs.append(p)
        with open(self.pidlog, "a") as f:
            f.write(f"{p.pid}\n")
        return p

    def stop(self, procs, timeout=5.0):
        procs = [p for p in procs if p.poll() is None]
        family = {p.pid: with_descendants([p.pid]) for p in procs}
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                p.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    p.kill()
                    p.wait(2)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
        for pid, fam in family.items():
            for d in fam:
                if d != pid and alive(d):
                    try:
                        os.kill(d, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        for p in procs:
            if p in self.procs:
                self.procs.remove(p)

    def stop_all(self):
        self.stop(list(reversed(self.procs)))


def _ephemeral_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


_EPHEMERAL = _ephemeral_range()
_PORT_RNG = random.Random()


def free_ports(n):
    """n listening ports that are free now, outside the kernel's ephemeral range (so that the many client
    connections of a run cannot have taken them as local ports in the meantime)."""
    lo, hi = _EPHEMERAL
    candidates = [p for p in range(10000, 65000) if not (lo <= p <= hi)] or list(range(10000, 65000))
    ports = []
    for _ in range(5000):
        if len(ports) == n:
            break
        p = _PORT_RNG.choice(candidates)
        if p in ports or p in _USED_PORTS:
            continue
        s = socket.socket()
        try:
            s.bind((HOST, p))
        except OSError:
            continue
        finally:
            s.close()
        ports.append(p)
    if len(ports) < n:
        raise RuntimeError("no free ports")
    _USED_PORTS.update(ports)
    return ports


_USED_PORTS = set()


def poll(fn, timeout, what, interval=0.05):
    """Call fn until it returns a true value; bounded in time."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            r = fn()
            if r:
                return r
        except Exception as e:  # noqa: BLE001 - readiness probes may fail in any way
            last = e
        time.sleep(interval)
    raise RuntimeError(f"timed out waiting for {what}" + (f" ({last})" if last else ""))


def tcp_open(port):
    with socket.create_connection((HOST, port), timeout=1):
        return True


def http_status(url, timeout=2.0):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def run(argv, timeout, **kw):
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=child_env(), **kw)


# ----------------------------------------------------------------------------------------------------------------
# origins


class Origins:
    def __init__(self, ctx):
        self.ctx = ctx
        self.dir = os.path.join(ctx.work, "origin")
        self.www = os.path.join(self.dir, "www")
        os.makedirs(self.www, exist_ok=True)
        (self.http, self.https, self.ws, self.echo, *self.page) = free_ports(4 + ctx.p["page_ports"])
        self.procs = []

    def make_files(self):
        p = self.ctx.p
        big = os.path.join(self.www, "big")
        if not os.path.exists(big) or os.path.getsize(big) != p["bulk_bytes"]:
            log(f"writing a {p['bulk_bytes'] >> 20} MiB random file")
            with open(big, "wb") as f:
                subprocess.run(["head", "-c", str(p["bulk_bytes"]), "/dev/urandom"], stdout=f, check=True)
        with open(os.path.join(self.www, "1k"), "wb") as f:
            f.write(os.urandom(1024))
        for i in range(p["page_resources"]):
            with open(os.path.join(self.www, f"p{i:02d}"), "wb") as f:
                f.write(os.urandom(p["page_resource_bytes"]))

    def start(self):
        c = self.ctx
        self.make_files()
        certs = os.path.join(c.work, "origin-certs")
        if not os.path.exists(os.path.join(certs, "server.crt")):
            subprocess.run([c.fluidity, "certs", "init", "--out", certs], check=True, capture_output=True,
                           env=child_env())
        self.ca = os.path.join(certs, "ca.crt")
        tls = (f"ssl_certificate {certs}/server.crt; ssl_certificate_key {certs}/server.key; "
               f"ssl_protocols TLSv1.3;")
        servers = [f"server {{ listen {HOST}:{self.http}; root {self.www}; }}",
                   f"server {{ listen {HOST}:{self.https} ssl; {tls} root {self.www}; }}"]
        servers += [f"server {{ listen {HOST}:{p} ssl; {tls} root {self.www}; }}" for p in self.page]
        conf = f"""
user root;
daemon off;
master_process on;
worker_processes 2;
worker_rlimit_nofile 20000;
pid {self.dir}/nginx.pid;
error_log {self.dir}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  default_type application/octet-stream;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_timeout 600s; keepalive_requests 100000000;
  client_body_temp_path {self.dir}/tmp-body;
  {' '.join(servers)}
}}
"""
        cf = os.path.join(self.dir, "nginx.conf")
        with open(cf, "w") as f:
            f.write(conf)
        self.procs.append(c.procs.start("nginx", ["nginx", "-p", self.dir, "-c", cf], self.dir))
        ready = os.path.join(self.dir, "aux.ready")
        self.procs.append(c.procs.start("aux", [sys.executable, os.path.join(LIB, "aux_server.py"),
                                                "--ws-port", str(self.ws), "--echo-port", str(self.echo),
                                                "--ready-file", ready], self.dir))
        poll(lambda: http_status(f"http://{HOST}:{self.http}/1k") == 200, 20, "nginx")
        poll(lambda: os.path.exists(ready), 20, "the echo server")
        for p in [self.https] + self.page:
            poll(lambda p=p: tcp_open(p), 10, f"nginx TLS port {p}")


# ----------------------------------------------------------------------------------------------------------------
# systems


class Instance:
    def __init__(self, system, far, link_mbit=None):
        self.system = system
        self.far = far
        self.link_mbit = link_mbit  # far only: the relay's link rate; None = no cap
        self.procs = []  # all processes (incl. relay)
        self.proxy_pids = []  # the proxy's own processes, whose CPU/RSS/fds are measured
        self.port = None  # the HTTP proxy port callers use; None = direct
        self.socks_port = None  # the SOCKS5 port callers use; None = no SOCKS5 (or direct)
        self.socks_pids = []  # the processes measured for the SOCKS5 rows
        self.direct_map = {}  # direct + far: origin port -> relay port

    @property
    def proxy(self):
        return None if self.port is None else (HOST, self.port)

    def proxy_arg(self):
        return "none" if self.port is None else f"{HOST}:{self.port}"

    def healthy(self):
        return all(p.poll() is None for p in self.procs)


class Ctx:
    pass


class System:
    def __init__(self, ctx, name):
        self.ctx = ctx
        self.name = name
        self.connect_only = name == "fluidity-fc"
        # Speaks SOCKS5 (the SOCKS5 rows); stunnel + tinyproxy does not. `direct` takes part, for the ratios.
        self.socks = name != "stunnel"
        # Workloads a variant takes part in (None: all).
        self.workloads = {"small", "setup"} if name == "fluidity-t2" else None
        self.seq = 0

    def start(self, far=False, link_mbit=None):
        self.seq += 1
        d = os.path.join(self.ctx.work, "sys", f"{self.name}{'-far' if far else ''}-{self.seq}")
        os.makedirs(d, exist_ok=True)
        inst = Instance(self, far, link_mbit)
        try:
            getattr(self, "start_" + self.name.replace("-", "_").split("_")[0])(inst, d)
            if inst.port is not None:
                o = self.ctx.origins
                poll(lambda: self.e2e_ok(inst, o.http), 30, f"{self.name} to pass a request")
        except BaseException:
            self.ctx.procs.stop(inst.procs)
            raise
        return inst

    def stop(self, inst):
        self.ctx.procs.stop(list(reversed(inst.procs)))

    def e2e_ok(self, inst, port):
        r = run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3", "-p", "-x",
                 f"http://{HOST}:{inst.port}", f"http://{HOST}:{port}/1k"], timeout=10)
        return r.stdout.strip() == "200"

    def relay(self, inst, d, pairs):
        ready = os.path.join(d, "relay.ready")
        argv = [sys.executable, os.path.join(LIB, "relay.py"), "--delay-ms", str(self.ctx.p["delay_ms"]),
                "--ready-file", ready]
        if inst.link_mbit:
            argv += ["--rate-mbit", str(inst.link_mbit)]
        for lp, tp in pairs:
            argv += ["--map", f"{lp}:{tp}"]
        inst.procs.append(self.ctx.procs.start("relay", argv, d))
        poll(lambda: os.path.exists(ready), 20, "the delay relay")

    # --- direct: no proxy; far: a relay in front of every origin port
    def start_direct(self, inst, d):
        if inst.far:
            o = self.ctx.origins
            origin_ports = [o.http] + o.page
            relay_ports = free_ports(len(origin_ports))
            self.relay(inst, d, list(zip(relay_ports, origin_ports)))
            inst.direct_map = dict(zip(origin_ports, relay_ports))

    # --- fluidity
    def start_fluidity(self, inst, d):
        c = self.ctx
        sp, hp, ap = free_ports(3)
        certs = c.certs
        server = [c.fluidity, "server", "--listen-addr", HOST, "--listen-port", str(sp),
                  "--health-addr", f"{HOST}:{hp}", "--cert-file", f"{certs}/server.crt",
                  "--key-file", f"{certs}/server.key", "--ca-cert-file", f"{certs}/ca.crt",
                  "--allow-private-targets", "true", "--log-level", "warn"]
        srv = c.procs.start("fluidity-server", server, d)
        inst.procs.append(srv)
        poll(lambda: http_status(f"http://{HOST}:{hp}/healthz") == 200, 30, "fluidity server health")
        port = sp
        if inst.far:
            (rp,) = free_ports(1)
            self.relay(inst, d, [(rp, sp)])
            port = rp
        fc = "true" if self.name == "fluidity-fc" else "false"
        agent = [c.fluidity, "agent", "--server-ip", HOST, "--server-port", str(port),
                 "--local-proxy-port", str(ap), "--cert-file", f"{certs}/client.crt",
                 "--key-file", f"{certs}/client.key", "--ca-cert-file", f"{certs}/ca.crt",
                 "--fast-connect", fc, "--log-level", "warn",
                 # The bench targets are on loopback: keep them in the tunnel, not direct_targets' default.
                 "--direct-targets", ""]
        if self.name == "fluidity-t2":
            agent += ["--tunnels", "2"]
        ag = c.procs.start("fluidity-agent", agent, d)
        inst.procs.append(ag)
        inst.proxy_pids = [ag.pid, srv.pid]
        poll(lambda: http_status(f"http://{HOST}:{ap}/healthz") == 200, 30, "fluidity agent /healthz")
        inst.port = ap
        # SOCKS5 on the same port, told from HTTP by its first byte.
        inst.socks_port = ap
        inst.socks_pids = inst.proxy_pids

    # --- stunnel + tinyproxy
    def start_stunnel(self, inst, d):
        c = self.ctx
        tp, ss, cp = free_ports(3)
        certs = c.certs
        with open(os.path.join(d, "tinyproxy.conf"), "w") as f:
            f.write(f"""User root
Group root
Port {tp}
Listen {HOST}
Timeout 600
MaxClients 4096
LogLevel Error
LogFile "{d}/tinyproxy-file.log"
DisableViaHeader Yes
Allow 127.0.0.1
""")
        common = ("sslVersionMin = TLSv1.3\nverifyChain = yes\n"
                  "socket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n")
        with open(os.path.join(d, "stunnel-server.conf"), "w") as f:
            f.write(f"""foreground = yes
pid =
debug = 3
[tunnel]
accept = {HOST}:{ss}
connect = {HOST}:{tp}
cert = {certs}/server.crt
key = {certs}/server.key
CAfile = {certs}/ca.crt
requireCert = yes
{common}""")
        port = ss
        if inst.far:
            (rp,) = free_ports(1)
            self.relay(inst, d, [(rp, ss)])
            port = rp
        with open(os.path.join(d, "stunnel-client.conf"), "w") as f:
            f.write(f"""foreground = yes
pid =
debug = 3
[tunnel]
client = yes
accept = {HOST}:{cp}
connect = {HOST}:{port}
cert = {certs}/client.crt
key = {certs}/client.key
CAfile = {certs}/ca.crt
checkIP = 127.0.0.1
{common}""")
        t = c.procs.start("tinyproxy", ["tinyproxy", "-d", "-c", os.path.join(d, "tinyproxy.conf")], d)
        inst.procs.append(t)
        poll(lambda: tcp_open(tp), 20, "tinyproxy")
        s1 = c.procs.start("stunnel-server", ["stunnel", os.path.join(d, "stunnel-server.conf")], d)
        inst.procs.append(s1)
        poll(lambda: tcp_open(ss), 20, "stunnel server")
        s2 = c.procs.start("stunnel-client", ["stunnel", os.path.join(d, "stunnel-client.conf")], d)
        inst.procs.append(s2)
        poll(lambda: tcp_open(cp), 20, "stunnel client")
        inst.proxy_pids = [s2.pid, s1.pid, t.pid]
        inst.port = cp

    # --- shadowsocks-rust
    def start_ss(self, inst, d):
        c = self.ctx
        method = "aes-128-gcm" if self.name == "ss-aes" else "2022-blake3-aes-128-gcm"
        key = c.ss_keys[method]
        sp, lp = free_ports(2)
        nodelay = ["--tcp-no-delay"] if c.ss_nodelay else []
        srv = c.procs.start("ssserver", [c.ssserver, "-s", f"{HOST}:{sp}", "-m", method, "-k", key] + nodelay, d)
        inst.procs.append(srv)
        poll(lambda: tcp_open(sp), 20, "ssserver")
        port = sp
        if inst.far:
            (rp,) = free_ports(1)
            self.relay(inst, d, [(rp, sp)])
            port = rp
        loc = c.procs.start("sslocal", [c.sslocal, "-b", f"{HOST}:{lp}", "--protocol", "http",
                                        "-s", f"{HOST}:{port}", "-m", method, "-k", key] + nodelay, d)
        inst.procs.append(loc)
        poll(lambda: tcp_open(lp), 20, "sslocal")
        inst.proxy_pids = [loc.pid, srv.pid]
        inst.port = lp
        # sslocal serves one protocol per listener: a second one, to the same ssserver, for the SOCKS5 rows. It is
        # idle during the other rows and not among their measured processes.
        (slp,) = free_ports(1)
        sloc = c.procs.start("sslocal-socks", [c.sslocal, "-b", f"{HOST}:{slp}", "--protocol", "socks",
                                               "-s", f"{HOST}:{port}", "-m", method, "-k", key] + nodelay, d)
        inst.procs.append(sloc)
        poll(lambda: tcp_open(slp), 20, "sslocal (socks)")
        inst.socks_port = slp
        inst.socks_pids = [sloc.pid, srv.pid]


# ----------------------------------------------------------------------------------------------------------------
# results

class Results:
    def __init__(self):
        self.samples = []  # dicts
        self.fail = {}  # (system, figure) -> reason

    def add(self, system, figure, value, rep, **extra):
        self.samples.append({"system": system, "figure": figure, "rep": rep, "value": value, **extra})

    def failed(self, system, figure, reason):
        self.fail.setdefault((system, figure), str(reason)[:300])
        self.samples.append({"system": system, "figure": figure, "value": None, "error": str(reason)[:300]})

    def median(self, system, figure):
        vals = [s["value"] for s in self.samples
                if s.get("system") == system and s.get("figure") == figure and s.get("value") is not None]
        if not vals:
            return None
        return statistics.median(vals)

    def count(self, system, figure):
        return sum(1 for s in self.samples if s.get("system") == system and s.get("figure") == figure
                   and s.get("value") is not None)


# (key, label, unit/format, direction) -- direction: "up" higher is better, "down" lower is better, "" neither
def figure_rows(p, workloads=None):
    """The table's rows, only for the workloads that ran (all when workloads is None)."""
    rows = _figure_rows(p)
    out, keep = [], True
    for row in rows:
        if row[0] == "section":
            keep = workloads is None or row[1] in workloads
            if keep:
                out.append(("section", row[2]))
        elif keep:
            out.append(row)
    return out


def _figure_rows(p):
    rows = [("section", "bulk", "bulk: one transfer of %s" % human_bytes(p["bulk_bytes"]))]
    rows += [("bulk_connect_mbps", "CONNECT (curl -p) MB/s", "%.0f", "up"),
             ("bulk_connect_cpu", "CONNECT proxy CPU-s/GiB", "%.2f", "down"),
             ("bulk_socks_mbps", "SOCKS5 (curl --socks5-hostname) MB/s", "%.0f", "up"),
             ("bulk_socks_cpu", "SOCKS5 proxy CPU-s/GiB", "%.2f", "down"),
             ("bulk_get_mbps", "absolute-form GET MB/s", "%.0f", "up"),
             ("bulk_get_cpu", "absolute-form proxy CPU-s/GiB", "%.2f", "down")]
    for kind, title in (("abs", "small GET, absolute-form (wrk, keep-alive)"),
                        ("tls", "small GET, CONNECT + TLS to origin (oha, keep-alive)")):
        rows.append(("section", "small", f"{title}, 1 KiB, {p['small_secs']} s per run"))
        for c in p["conc"]:
            rows += [(f"small_{kind}_c{c}_rps", f"c{c} req/s", "%.0f", "up"),
                     (f"small_{kind}_c{c}_p50", f"c{c} p50 ms", "%.3f", "down"),
                     (f"small_{kind}_c{c}_p99", f"c{c} p99 ms", "%.3f", "down"),
                     (f"small_{kind}_c{c}_cpu", f"c{c} proxy CPU-us/req", "%.1f", "down"),
                     (f"small_{kind}_c{c}_mcpu", f"c{c} machine CPU-us/req", "%.1f", "down"),
                     (f"small_{kind}_c{c}_idle", f"c{c} machine idle %", "%.1f", "")]
    rows.append(("section", "setup", f"setup: {p['setup_n']} sequential fresh connections, CONNECT + GET 1 KiB"))
    rows += [("setup_p50", "p50 ms", "%.3f", "down"), ("setup_p99", "p99 ms", "%.3f", "down"),
             ("setup_socks_p50", "SOCKS5 instead of CONNECT, p50 ms", "%.3f", "down"),
             ("setup_socks_p99", "SOCKS5 instead of CONNECT, p99 ms", "%.3f", "down")]
    rows.append(("section", "ws", f"WebSocket echo, {p['ws_n']} x 64 B round trips"))
    rows += [("ws_connect_p50", "via CONNECT p50 us", "%.0f", "down"),
             ("ws_connect_p99", "via CONNECT p99 us", "%.0f", "down"),
             ("ws_upgrade_p50", "via absolute-form Upgrade p50 us", "%.0f", "down"),
             ("ws_upgrade_p99", "via absolute-form Upgrade p99 us", "%.0f", "down")]
    rows.append(("section", "tunnels", f"many tunnels: {p['tunnels_n']} idle CONNECT tunnels, then {p['cycles']} open/close"))
    rows += [("tun_open", "tunnels opened", "%.0f", "up"),
             ("tun_alive", f"alive after {p['hold_secs']} s idle", "%.0f", "up"),
             ("tun_rss", "proxy RSS KiB per idle tunnel", "%.1f", "down"),
             ("tun_cycles_ok", "open/close cycles ok", "%.0f", "up"),
             ("tun_fd_before", "proxy fds before cycles", "%.0f", ""),
             ("tun_fd_growth", "proxy fd growth after cycles", "%.0f", "down")]
    rows.append(("section", "distance", f"distance: delay relay, {2 * p['delay_ms']:.0f} ms RTT between the two halves"))
    rows += [("far_bulk_mbps", f"bulk {human_bytes(p['far_bytes'])}, CONNECT, MB/s", "%.1f", "up"),
             ("far_link_bulk_mbps", f"same, {p['link_mbit']} Mbit/s link, MB/s", "%.1f", "up"),
             ("far_page_ms", f"page: {p['page_resources']} res./{p['page_ports']} HTTPS ports/"
                             f"{p['page_parallel']} conns, ms", "%.0f", "down")]
    return rows


def human_bytes(n):
    if n >= GIB and n % GIB == 0:
        return f"{n // GIB} GiB"
    return f"{n // MIB} MiB"


def fmt_num(fmt, v):
    if v is None:
        return "-"
    if abs(v) >= 10000 and fmt.endswith("f"):
        return f"{v:,.0f}"
    return fmt % v


def render_table(ctx, res):
    systems = ctx.systems
    rows = figure_rows(ctx.p, ctx.workloads)
    header = ["figure"] + systems
    lines = []
    table = []
    for row in rows:
        if row[0] == "section":
            table.append(("section", row[1]))
            continue
        key, label, fmt, direction = row
        # A figure that is neither better higher nor lower (idle share, descriptor counts) has no ratio.
        d = res.median("direct", key) if direction else None
        cells = [label]
        for s in systems:
            if (s, key) in res.fail and res.count(s, key) == 0:
                cells.append("FAIL")
                continue
            v = res.median(s, key)
            if v is None:
                cells.append("-")
                continue
            cell = fmt_num(fmt, v)
            if s != "direct" and d not in (None, 0):
                cell += f" ({v / d:.2f})"
            if (s, key) in res.fail:
                cell += "*"  # some repetitions failed
            cells.append(cell)
        table.append(("row", cells))
    widths = [len(h) for h in header]
    for kind, cells in table:
        if kind == "row":
            widths = [max(w, len(c)) for w, c in zip(widths, cells)]
    sep = "  "
    lines.append(sep.join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))))
    lines.append(sep.join("-" * w for w in widths))
    for kind, cells in table:
        if kind == "section":
            lines.append(f"[{cells}]")
        else:
            lines.append(sep.join(c.ljust(w) if i == 0 else c.rjust(w)
                                  for i, (c, w) in enumerate(zip(cells, widths))))
    grouped = {}
    for (s, key), reason in res.fail.items():
        grouped.setdefault((s, reason), []).append(key)
    notes = [f"  {s} [{', '.join(keys)}]: {reason}" for (s, reason), keys in sorted(grouped.items())]
    if notes:
        notes.insert(0, "  (* = some repetitions failed; the median is of those that did not)")
    return lines, notes


# ----------------------------------------------------------------------------------------------------------------
# workloads


class Bench:
    def __init__(self, ctx):
        self.ctx = ctx
        self.p = ctx.p
        self.res = Results()
        self.near = {}  # system name -> Instance
        self.notes = set()  # observations printed under the table
        self.stolen = {}  # workload -> percent of the machine's CPU time stolen by the hypervisor while it ran
        self.sysobj = {s: System(ctx, s) for s in ctx.systems}

    # -- helpers
    def inst(self, s):
        """The running near instance of s, restarted if one of its processes died."""
        i = self.near.get(s)
        if i is not None and not i.healthy():
            dead = [p.bench_name for p in i.procs if p.poll() is not None]
            log(f"{s}: {', '.join(dead)} exited; restarting the system")
            self.res.samples.append({"system": s, "event": f"restarted after {', '.join(dead)} exited"})
            self.sysobj[s].stop(i)
            i = None
        if i is None:
            i = self.sysobj[s].start(far=False)
            self.near[s] = i
        return i

    def measure(self, s, figure_keys, fn, rep):
        """Run fn(instance) -> dict figure->value (or raises); record values or failure for every key.

        A run with STOLEN_NOTE_PCT or more of the CPU time stolen measured the host as much as the proxy: it is taken
        again, at most STOLEN_RETRIES more times, and the run with the least stolen is kept."""
        what = figure_keys[0].rsplit("_", 1)[0]
        kept = None  # (out, stolen) of the run kept so far
        seen = []  # stolen share of each run
        for attempt in range(1 + STOLEN_RETRIES):
            try:
                inst = self.inst(s)
                m0 = machine_ticks()
                out = fn(inst)
                stolen = stolen_pct(m0, machine_ticks())
            except Exception as e:  # noqa: BLE001 - one failed measurement must not stop the run
                reason = f"timed out after {e.timeout:.0f} s" if isinstance(e, subprocess.TimeoutExpired) else e
                if kept is not None:
                    self.notes.add(f"{s} {what} rep {rep + 1}: measuring again failed ({str(reason)[:100]})")
                    break
                for k in figure_keys:
                    self.res.failed(s, k, reason)
                return
            seen.append(stolen)
            if kept is None or (stolen is not None and (kept[1] is None or stolen < kept[1])):
                kept = (out, stolen)
            if stolen is None or stolen < STOLEN_NOTE_PCT:
                break
            if attempt < STOLEN_RETRIES:
                log(f"{s} {what} rep {rep + 1}: {stolen:.0f} % of the CPU time stolen; measuring again")
        out, stolen = kept
        if len(seen) > 1:
            runs = ", ".join("?" if x is None else f"{x:.0f}" for x in seen)
            self.notes.add(f"{s} {what} rep {rep + 1}: measured {len(seen)} times ({runs} % of the CPU time stolen); "
                           f"kept the run with {stolen:.0f} %")
        elif stolen is not None and stolen >= STOLEN_NOTE_PCT:
            self.notes.add(f"{s} {what} rep {rep + 1}: {stolen:.0f} % of the CPU time stolen while it ran")
        for k, v in out.items():
            if isinstance(v, Exception):
                self.res.failed(s, k, v)
            else:
                self.res.add(s, k, v, rep, stolen_pct=stolen, runs=len(seen))

    def systems_for(self, connect_based, workload, socks=False):
        def takes_part(sysobj):
            return ((connect_based or not sysobj.connect_only)
                    and (sysobj.workloads is None or workload in sysobj.workloads)
                    and (sysobj.socks or not socks))
        return [s for s in self.ctx.systems if takes_part(self.sysobj[s])]

    # -- 1. bulk
    def bulk_once(self, inst, mode, nbytes, url_port=None, far=False):
        o = self.ctx.origins
        port = url_port or o.http
        argv = ["curl", "-s", "-o", "/dev/null", "--max-time", str(self.p["curl_max_time"]),
                "-w", "%{http_code} %{size_download} %{time_starttransfer} %{time_total}"]
        if nbytes != self.p["bulk_bytes"]:
            argv += ["-r", f"0-{nbytes - 1}"]
        pids = inst.proxy_pids
        if mode == "socks" and inst.socks_port is not None:
            argv += ["--socks5-hostname", f"{HOST}:{inst.socks_port}"]
            pids = inst.socks_pids
        elif inst.port is not None:
            argv += (["-p"] if mode == "connect" else []) + ["-x", f"http://{HOST}:{inst.port}"]
        elif far:
            port = inst.direct_map[o.http]
        argv.append(f"http://{HOST}:{port}/big")
        c0 = cpu_seconds(pids)
        r = run(argv, timeout=self.p["curl_max_time"] + 10)
        c1 = cpu_seconds(pids)
        try:
            code, size, t_first, t_total = r.stdout.split()
        except ValueError:
            raise RuntimeError(f"curl: exit {r.returncode} {r.stderr.strip()[:200]}") from None
        size, t_first, t_total = int(size), float(t_first), float(t_total)
        if code not in ("200", "206") or size != nbytes:
            raise RuntimeError(f"curl: HTTP {code}, {size} of {nbytes} bytes, exit {r.returncode}")
        # the transfer phase: from the first response byte to the last (connection and request set-up, which
        # the setup and page-load figures measure, are left out; on loopback they are < 1 ms anyway)
        mbps = size / max(1e-6, t_total - t_first) / 1e6
        cpu = (c1 - c0) / (size / GIB) if pids else None
        return mbps, cpu

    def w_bulk(self):
        for mode in ("connect", "socks", "get"):
            for rep in range(self.p["reps"]):
                for s in self.systems_for(mode != "get", "bulk", socks=mode == "socks"):
                    log(f"bulk {mode} rep {rep + 1}: {s}")

                    def fn(inst, mode=mode):
                        mbps, cpu = self.bulk_once(inst, mode, self.p["bulk_bytes"])
                        out = {f"bulk_{mode}_mbps": mbps}
                        if cpu is not None:
                            out[f"bulk_{mode}_cpu"] = cpu
                        return out

                    self.measure(s, [f"bulk_{mode}_mbps", f"bulk_{mode}_cpu"], fn, rep)

    # -- 2. small requests
    def small_abs_once(self, inst, c):
        o = self.ctx.origins
        secs = self.p["small_secs"]
        argv = ["wrk", "-t1", f"-c{c}", f"-d{secs}s", "--timeout", "5s", "-s", os.path.join(LIB, "proxy.lua")]
        if inst.port is None:
            argv += [f"http://{HOST}:{o.http}/1k"]
        else:
            argv += [f"http://{HOST}:{inst.port}/", "--", f"http://{HOST}:{o.http}/1k"]
        c0, m0 = cpu_seconds(inst.proxy_pids), machine_busy()
        r = run(argv, timeout=secs + 30)
        c1, m1 = cpu_seconds(inst.proxy_pids), machine_busy()
        line = [x for x in r.stdout.splitlines() if x.startswith("WRKJSON ")]
        if not line:
            raise RuntimeError(f"wrk: exit {r.returncode} {(r.stderr or r.stdout).strip()[:200]}")
        j = json.loads(line[0][len("WRKJSON "):])
        # wrk counts a connection the server closes after a complete response as a read error and reconnects;
        # tinyproxy does that after every response (it has no client keep-alive). Those requests did succeed,
        # so only non-2xx answers, timeouts and failed connects count as errors here.
        errs = j["connect_errors"] + j["write_errors"] + j["status_errors"] + j["timeouts"]
        n = j["requests"] - j["status_errors"]
        if n <= 0 or errs > 0.01 * n:
            raise RuntimeError(f"wrk: {n} requests, {errs} errors ({j})")
        if j["read_errors"] > 0.01 * n:
            self.notes.add(f"{inst.system.name}: the proxy closed the client connection after "
                           f"{100.0 * j['read_errors'] / n:.0f}% of the small absolute-form responses "
                           f"(no keep-alive), so those requests each paid a new connection")
        out = {"rps": n / (j["duration_us"] / 1e6), "p50": j["p50_us"] / 1000, "p99": j["p99_us"] / 1000,
               "errors": errs, "requests": n, "closed": j["read_errors"]}
        out["cpu"] = (c1 - c0) * 1e6 / n if inst.proxy_pids else None
        out["idle"], out["mcpu"] = machine_use(m0, m1, n)
        return out

    def small_tls_once(self, inst, c):
        o = self.ctx.origins
        secs = self.p["small_secs"]
        argv = [self.ctx.oha, "-z", f"{secs}s", "-c", str(c), "--no-tui", "--output-format", "json",
                "--cacert", o.ca, "-t", "5s"]
        if inst.port is not None:
            argv += ["-x", f"http://{HOST}:{inst.port}"]
        argv.append(f"https://{HOST}:{o.https}/1k")
        c0, m0 = cpu_seconds(inst.proxy_pids), machine_busy()
        r = run(argv, timeout=secs + 30)
        c1, m1 = cpu_seconds(inst.proxy_pids), machine_busy()
        try:
            j = json.loads(r.stdout)
        except ValueError:
            raise RuntimeError(f"oha: exit {r.returncode} {(r.stderr or r.stdout).strip()[:200]}") from None
        codes = j.get("statusCodeDistribution") or {}
        n_ok = int(codes.get("200", 0))
        n_all = sum(int(v) for v in codes.values())
        errs = {k: v for k, v in (j.get("errorDistribution") or {}).items() if "deadline" not in k}
        n_err = sum(int(v) for v in errs.values()) + (n_all - n_ok)
        if n_ok == 0 or n_err > 0.01 * max(1, n_ok):
            raise RuntimeError(f"oha: {n_ok} ok, errors {errs or codes}")
        lat = j["latencyPercentiles"]
        out = {"rps": n_ok / secs, "p50": lat["p50"] * 1000, "p99": lat["p99"] * 1000, "errors": n_err,
               "requests": n_ok}
        out["cpu"] = (c1 - c0) * 1e6 / n_ok if inst.proxy_pids else None
        out["idle"], out["mcpu"] = machine_use(m0, m1, n_ok)
        return out

    def w_small(self):
        for kind, fn_once in (("abs", self.small_abs_once), ("tls", self.small_tls_once)):
            if kind == "tls" and not self.ctx.oha:
                for s in self.ctx.systems:
                    for c in self.p["conc"]:
                        self.res.failed(s, f"small_tls_c{c}_rps", "oha is not installed")
                continue
            for c in self.p["conc"]:
                for rep in range(self.p["reps"]):
                    for s in self.systems_for(kind == "tls", "small"):
                        log(f"small {kind} c{c} rep {rep + 1}: {s}")
                        pre = f"small_{kind}_c{c}_"

                        def fn(inst, c=c, fn_once=fn_once, pre=pre):
                            o = fn_once(inst, c)
                            out = {pre + k: o[k] for k in ("rps", "p50", "p99")}
                            for k in ("cpu", "mcpu", "idle"):
                                if o[k] is not None:
                                    out[pre + k] = o[k]
                            return out

                        self.measure(s, [pre + k for k in ("rps", "p50", "p99", "cpu", "mcpu", "idle")], fn, rep)

    # -- 3. setup
    def w_setup(self):
        o = self.ctx.origins
        for socks in (False, True):
            pre = "setup_socks_" if socks else "setup_"
            for rep in range(self.p["reps"]):
                for s in self.systems_for(True, "setup", socks=socks):
                    log(f"setup{' socks' if socks else ''} rep {rep + 1}: {s}")

                    def fn(inst, socks=socks, pre=pre):
                        if socks and inst.socks_port is not None:
                            proxy = ["--proxy", f"{HOST}:{inst.socks_port}", "--socks"]
                        else:
                            proxy = ["--proxy", inst.proxy_arg()]
                        r = run([sys.executable, os.path.join(LIB, "setup_lat.py")] + proxy +
                                ["--port", str(o.http), "--n", str(self.p["setup_n"]), "--deadline", "60"],
                                timeout=90)
                        j = json.loads(r.stdout)
                        if not j["ok"]:
                            raise RuntimeError(f"{j['errors']} of {self.p['setup_n']} failed: {j['first_error']}")
                        return {pre + "p50": j["p50_ms"], pre + "p99": j["p99_ms"]}

                    self.measure(s, [pre + "p50", pre + "p99"], fn, rep)

    # -- 4. WebSocket
    def w_ws(self):
        o = self.ctx.origins
        for mode in ("connect", "upgrade"):
            for rep in range(self.p["reps"]):
                for s in self.systems_for(mode == "connect", "ws"):
                    log(f"ws {mode} rep {rep + 1}: {s}")

                    def fn(inst, mode=mode):
                        r = run([sys.executable, os.path.join(LIB, "wsclient.py"), "--proxy", inst.proxy_arg(),
                                 "--mode", mode, "--port", str(o.ws), "--n", str(self.p["ws_n"]),
                                 "--deadline", "60"], timeout=90)
                        j = json.loads(r.stdout)
                        if not j["ok"]:
                            raise RuntimeError(j["error"])
                        return {f"ws_{mode}_p50": j["p50_us"], f"ws_{mode}_p99": j["p99_us"]}

                    self.measure(s, [f"ws_{mode}_p50", f"ws_{mode}_p99"], fn, rep)

    # -- 5. many tunnels
    def tunnels_once(self, s, rep):
        """On a freshly started system (so that memory freed earlier does not hide the cost)."""
        p = self.p
        old = self.near.pop(s, None)
        if old is not None:
            self.sysobj[s].stop(old)
        inst = self.inst(s)
        pids = inst.proxy_pids
        tool = subprocess.Popen([sys.executable, os.path.join(LIB, "tunnels.py"), "--proxy", inst.proxy_arg(),
                                 "--port", str(self.ctx.origins.echo)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=child_env(),
                                start_new_session=True)
        with open(self.ctx.procs.pidlog, "a") as f:
            f.write(f"{tool.pid}\n")

        def ask(cmd, timeout):
            tool.stdin.write(cmd + "\n")
            tool.stdin.flush()
            deadline = time.monotonic() + timeout
            import select
            while time.monotonic() < deadline:
                rl, _, _ = select.select([tool.stdout], [], [], 1.0)
                if rl:
                    line = tool.stdout.readline()
                    if not line:
                        raise RuntimeError("tunnels.py exited")
                    return json.loads(line)
            raise subprocess.TimeoutExpired(cmd, timeout)

        out = {}
        try:
            time.sleep(0.5)
            rss0 = rss_kib(pids)
            r = ask(f"open {p['tunnels_n']} 64", 120)
            out["tun_open"] = r["opened"]
            if r["failed"]:
                log(f"  {s}: {r['failed']} tunnels failed to open: {r['first_error']}")
                self.res.samples.append({"system": s, "figure": "tun_open_error", "rep": rep,
                                         "value": r["failed"], "error": r["first_error"]})
            time.sleep(p["settle_secs"])
            rss1 = rss_kib(pids)
            if r["opened"]:
                out["tun_rss"] = (rss1 - rss0) / r["opened"]
            self.res.samples.append({"system": s, "figure": "tun_rss_raw", "rep": rep, "value": None,
                                     "rss_before_kib": rss0, "rss_open_kib": rss1, "fds_open": fd_count(pids)})
            time.sleep(max(0.0, p["hold_secs"] - p["settle_secs"]))
            r = ask("check", 120)
            out["tun_alive"] = r["alive"]
            if r["alive"] < r["held"]:
                log(f"  {s}: {r['held'] - r['alive']} tunnels dead after idling: {r['first_error']}")
            ask("close", 60)
            time.sleep(p["settle_secs"])
            fd0 = fd_count(pids)
            r = ask(f"cycles {p['cycles']} 32", p["cycles_timeout"])
            out["tun_cycles_ok"] = r["ok"]
            if r["failed"]:
                log(f"  {s}: {r['failed']} cycles failed: {r['first_error']}")
            time.sleep(p["settle_secs"])
            fd1 = fd_count(pids)
            out["tun_fd_before"] = fd0
            out["tun_fd_growth"] = fd1 - fd0
            self.res.samples.append({"system": s, "figure": "tun_cycles_raw", "rep": rep, "value": None,
                                     "secs": r["secs"], "fds_before": fd0, "fds_after": fd1,
                                     "rss_after_kib": rss_kib(pids)})
            try:
                ask("quit", 5)
            except Exception:  # noqa: BLE001
                pass
        finally:
            try:
                tool.stdin.close()
            except OSError:
                pass
            try:
                tool.wait(10)
            except subprocess.TimeoutExpired:
                tool.kill()
                tool.wait(5)
        return out

    def w_tunnels(self):
        keys = ["tun_open", "tun_alive", "tun_rss", "tun_cycles_ok", "tun_fd_before", "tun_fd_growth"]
        for rep in range(self.p["reps"]):
            for s in self.systems_for(True, "tunnels"):
                if s == "direct":
                    continue
                log(f"tunnels rep {rep + 1}: {s}")
                try:
                    out = self.tunnels_once(s, rep)
                except subprocess.TimeoutExpired as e:
                    out = {k: RuntimeError(f"timed out ({e.cmd})") for k in keys}
                except Exception as e:  # noqa: BLE001
                    out = {k: e for k in keys}
                for k, v in out.items():
                    if isinstance(v, Exception):
                        self.res.failed(s, k, v)
                    else:
                        self.res.add(s, k, v, rep)
                # leave a fresh instance behind for what follows
                old = self.near.pop(s, None)
                if old is not None:
                    self.sysobj[s].stop(old)

    # -- 6. distance
    def page_once(self, inst):
        o = self.ctx.origins
        p = self.p
        argv = ["curl", "-s", "--parallel", "--parallel-max", str(p["page_parallel"]), "--cacert", o.ca,
                "--max-time", "60", "-w", "%{http_code}\n"]
        if inst.port is not None:
            argv += ["-p", "-x", f"http://{HOST}:{inst.port}"]
        for i in range(p["page_resources"]):
            port = o.page[i % len(o.page)]
            if inst.port is None:
                port = inst.direct_map[port]
            argv += ["-o", "/dev/null", f"https://{HOST}:{port}/p{i:02d}"]
        t0 = time.perf_counter()
        r = run(argv, timeout=90)
        ms = (time.perf_counter() - t0) * 1000
        codes = r.stdout.split()
        if codes.count("200") != p["page_resources"]:
            bad = sorted(set(c for c in codes if c != "200"))
            raise RuntimeError(f"curl: {codes.count('200')}/{p['page_resources']} ok, codes {bad}, "
                               f"exit {r.returncode} {r.stderr.strip()[:150]}")
        return ms

    def w_distance(self):
        # the near instances are not needed any more
        for s in list(self.near):
            self.sysobj[s].stop(self.near.pop(s))

        def far_bulk(inst):
            return self.bulk_once(inst, "connect", self.p["far_bytes"], far=True)[0]

        self.far_round("distance", None, {"far_bulk_mbps": far_bulk, "far_page_ms": self.page_once})
        # Bulk over the same path capped at a link rate, as a real long path is: the relay, not the CPU, is then the
        # bottleneck, so what this figure measures is whether the windows cover the bandwidth-delay product.
        link = self.p["link_mbit"]
        self.far_round(f"distance, {link} Mbit/s link,", link, {"far_link_bulk_mbps": far_bulk})

    def far_round(self, label, link_mbit, figures):
        """Starts every CONNECT-capable system behind the relay (a link of `link_mbit` Mbit/s, or uncapped), measures
        each of `figures` (key -> function of the instance) rep by rep, and stops the systems."""
        far = {}
        try:
            for s in self.systems_for(True, "distance"):
                try:
                    far[s] = self.sysobj[s].start(far=True, link_mbit=link_mbit)
                except Exception as e:  # noqa: BLE001
                    for k in figures:
                        self.res.failed(s, k, f"could not start behind the relay: {e}")
            for rep in range(self.p["reps"]):
                for s, inst in far.items():
                    log(f"{label} rep {rep + 1}: {s}")
                    for key, measure in figures.items():
                        try:
                            self.res.add(s, key, measure(inst), rep)
                        except Exception as e:  # noqa: BLE001
                            self.res.failed(s, key, e)
        finally:
            for s, inst in far.items():
                self.sysobj[s].stop(inst)

    def run(self):
        for w in self.ctx.workloads:
            t0 = time.monotonic()
            m0 = machine_ticks()
            log(f"=== workload {w}")
            getattr(self, "w_" + w)()
            stolen = stolen_pct(m0, machine_ticks())
            self.stolen[w] = stolen
            self.res.samples.append({"event": f"workload {w} took {time.monotonic() - t0:.1f} s",
                                     "stolen_pct": stolen})
            log(f"=== workload {w} done in {time.monotonic() - t0:.0f} s, {stolen} % of CPU time stolen")
        for s in list(self.near):
            self.sysobj[s].stop(self.near.pop(s))


# ----------------------------------------------------------------------------------------------------------------


def params(quick):
    p = {
        "reps": 3,
        "bulk_bytes": GIB,
        "far_bytes": 256 * MIB,
        "small_secs": 5,
        "conc": [1, 16, 64],
        "setup_n": 200,
        "ws_n": 1000,
        "tunnels_n": 1000,
        "cycles": 10000,
        "cycles_timeout": 300,
        "hold_secs": 5,
        "settle_secs": 1.0,
        "delay_ms": 25,
        "link_mbit": 1000,
        "page_resources": 40,
        "page_ports": 8,
        "page_parallel": 6,
        "page_resource_bytes": 16 * 1024,
        "curl_max_time": 120,
    }
    if quick:
        p.update(reps=1, bulk_bytes=256 * MIB, far_bytes=64 * MIB, small_secs=2, setup_n=50, ws_n=200,
                 tunnels_n=200, cycles=1000, hold_secs=2, settle_secs=0.5)
    return p


def versions(ctx):
    def first(argv, starts=""):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            lines = [x for x in ((r.stdout or "") + (r.stderr or "")).strip().splitlines() if x.startswith(starts)]
            return lines[0][:120] if lines else None
        except Exception:  # noqa: BLE001
            return None

    v = {"fluidity": first([ctx.fluidity, "--version"]), "curl": first(["curl", "--version"]),
         "wrk": first(["wrk", "-v"]), "nginx": first(["nginx", "-v"]),
         "stunnel": first(["stunnel", "-version"], "stunnel "), "tinyproxy": first(["tinyproxy", "-v"]),
         "python": platform.python_version()}
    if ctx.oha:
        v["oha"] = first([ctx.oha, "--version"])
    if ctx.sslocal:
        v["shadowsocks-rust"] = first([ctx.sslocal, "--version"])
    try:
        rev = subprocess.run(["git", "-C", os.path.dirname(HERE), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", os.path.dirname(HERE), "status", "--porcelain", "--", "src",
                                "Cargo.toml", "Cargo.lock"], capture_output=True, text=True, timeout=10).stdout.strip()
        v["fluidity_commit"] = rev + ("+dirty" if dirty else "")
    except Exception:  # noqa: BLE001
        pass
    return v


def uptime():
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except Exception:  # noqa: BLE001
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", required=True)
    ap.add_argument("--fluidity", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int)
    ap.add_argument("--only", default=",".join(ALL_WORKLOADS))
    ap.add_argument("--systems", default=",".join(ALL_SYSTEMS))
    ap.add_argument("--command", default="")
    args = ap.parse_args()

    ctx = Ctx()
    ctx.work = args.work
    ctx.fluidity = args.fluidity
    ctx.p = params(args.quick)
    if args.reps:
        ctx.p["reps"] = args.reps
    ctx.workloads = [w.strip() for w in args.only.split(",") if w.strip()]
    for w in ctx.workloads:
        if w not in ALL_WORKLOADS:
            ap.error(f"unknown workload {w!r}; choose from {', '.join(ALL_WORKLOADS)}")
    sel = [s.strip() for s in args.systems.split(",") if s.strip()]
    for s in sel:
        if s not in ALL_SYSTEMS:
            ap.error(f"unknown system {s!r}; choose from {', '.join(ALL_SYSTEMS)}")
    if "direct" not in sel:
        sel.insert(0, "direct")  # ratios need it
    ctx.systems = [s for s in ALL_SYSTEMS if s in sel]
    ctx.oha = shutil.which("oha")
    ctx.sslocal = shutil.which("sslocal")
    ctx.ssserver = shutil.which("ssserver")
    for s in ("ss-aes", "ss-2022"):
        if s in ctx.systems and not (ctx.sslocal and ctx.ssserver):
            log(f"shadowsocks-rust is not installed: dropping {s}")
            ctx.systems.remove(s)
    ctx.ss_nodelay = False
    if ctx.sslocal:
        h = subprocess.run([ctx.sslocal, "--help"], capture_output=True, text=True, timeout=10).stdout
        ctx.ss_nodelay = "--tcp-no-delay" in h
    ctx.ss_keys = {"aes-128-gcm": base64.b64encode(os.urandom(12)).decode(),
                   "2022-blake3-aes-128-gcm": base64.b64encode(os.urandom(16)).decode()}
    ctx.procs = Procs(os.path.join(args.work, "pids"))
    os.makedirs(args.out, exist_ok=True)

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # run.sh starts us in the background
    signal.signal(signal.SIGHUP, on_signal)

    started = datetime.datetime.now(datetime.timezone.utc)
    t_start = time.monotonic()
    ticks_before = machine_ticks()
    meta = {"date": started.isoformat(timespec="seconds"), "uptime_before": uptime(), "nproc": os.cpu_count(),
            "kernel": platform.release(), "command": args.command, "quick": args.quick, "params": ctx.p,
            "systems": {s: SYSTEM_DOC[s] for s in ctx.systems}, "workloads": ctx.workloads}
    bench = None
    interrupted = None
    try:
        meta["versions"] = versions(ctx)
        log(f"load: {meta['uptime_before']}")
        certs = os.path.join(args.work, "certs")
        subprocess.run([ctx.fluidity, "certs", "init", "--out", certs], check=True, capture_output=True,
                       env=child_env())
        ctx.certs = certs
        ctx.origins = Origins(ctx)
        ctx.origins.start()
        bench = Bench(ctx)
        bench.run()
    except KeyboardInterrupt as e:
        interrupted = str(e) or "interrupted"
        log(f"interrupted: {interrupted}")
    finally:
        ctx.procs.stop_all()
    meta["uptime_after"] = uptime()
    meta["stolen_pct"] = stolen_pct(ticks_before, machine_ticks())
    if bench is not None:
        meta["stolen_pct_by_workload"] = bench.stolen
    meta["runtime_secs"] = round(time.monotonic() - t_start, 1)
    if interrupted:
        meta["interrupted"] = interrupted
    if bench is None:
        return 1
    lines, notes = render_table(ctx, bench.res)
    stamp = started.strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "")
    head = [f"Fluidity benchmark {meta['date']}  nproc={meta['nproc']}  {'QUICK ' if args.quick else ''}"
            f"reps={ctx.p['reps']} (median)  runtime={meta['runtime_secs']:.0f} s",
            f"load before: {meta['uptime_before']}", f"load after:  {meta['uptime_after']}",
            f"CPU time stolen by the hypervisor: {fmt_stolen(meta['stolen_pct'])} of the run"
            + ("; " + ", ".join(f"{w} {fmt_stolen(v)}" for w, v in bench.stolen.items()) if bench.stolen else ""),
            "cells: median (ratio to direct)"]
    obs = [f"  {n}" for n in sorted(bench.notes)]
    text = "\n".join(head + [""] + lines + ([""] + ["failures:"] + notes if notes else [])
                     + ([""] + ["notes:"] + obs if obs else [])) + "\n"
    sys.stdout.write(text)
    medians = {s: {row[0]: bench.res.median(s, row[0]) for row in figure_rows(ctx.p, ctx.workloads) if row[0] != "section"}
               for s in ctx.systems}
    with open(os.path.join(args.out, f"{stamp}.json"), "w") as f:
        json.dump({"meta": meta, "medians": medians, "notes": sorted(bench.notes),
                   "failures": {f"{s}/{k}": v for (s, k), v in bench.res.fail.items()},
                   "samples": bench.res.samples}, f, indent=1)
    with open(os.path.join(args.out, f"{stamp}.tsv"), "w") as f:
        f.write(f"# {meta['date']}\tnproc={meta['nproc']}\t{meta['uptime_before']}"
                f"\tstolen {fmt_stolen(meta['stolen_pct'])}\t{args.command}\n")
        f.write("figure\t" + "\t".join(ctx.systems) + "\n")
        for row in figure_rows(ctx.p, ctx.workloads):
            if row[0] == "section":
                continue
            f.write(row[0] + "\t" + "\t".join("" if medians[s][row[0]] is None else f"{medians[s][row[0]]:.6g}"
                                               for s in ctx.systems) + "\n")
    with open(os.path.join(args.out, f"{stamp}.txt"), "w") as f:
        f.write(text)
    log(f"results: {args.out}/{stamp}.{{json,tsv,txt}}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
