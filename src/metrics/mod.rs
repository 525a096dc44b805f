//! Counters and gauges of both roles, and their Prometheus text rendering.
//!
//! Names follow `fluidity_<role>_<what>_<unit>`; label values are bounded (kinds, outcomes, classes), never a host,
//! URL or address, with one exception: `fluidity_agent_tunnel_server_info` names the server each tunnel is on, a
//! value from the agent's own configuration (one series per tunnel), never a target. Each role owns one registry: there is no global state.

mod body;
mod recent;

pub(crate) use body::Counted;
pub(crate) use recent::{RecentError, RecentErrors};

use prometheus_client::encoding::{EncodeLabelSet, text::encode};
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use prometheus_client::registry::Registry;

/// What a stream carries.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum StreamKind {
    Http,
    Connect,
    Websocket,
    /// A SOCKS5 or SOCKS4 CONNECT on the agent's proxy port (a CONNECT stream on the tunnel, like `Connect`).
    Socks,
}

impl StreamKind {
    /// Every kind, in the order of their discriminants (`kind as usize` indexes this).
    pub(crate) const ALL: [Self; 4] = [Self::Http, Self::Connect, Self::Websocket, Self::Socks];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Connect => "connect",
            Self::Websocket => "websocket",
            Self::Socks => "socks",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DirectionLabel {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ClassLabel {
    class: &'static str,
}

/// Which server a tunnel is on. The server label takes its values from `server_ip` (the addresses it names or
/// resolves to), and a tunnel has one series at a time, so the set stays as small as the configuration.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TunnelServerLabel {
    tunnel: String,
    server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabel {
    kind: &'static str,
    outcome: &'static str,
}

fn tunnel_server_label(tunnel: usize, server: std::net::SocketAddr) -> TunnelServerLabel {
    TunnelServerLabel {
        tunnel: tunnel.to_string(),
        server: server.to_string(),
    }
}

/// Bytes counted in one direction: `up` is caller → target, `down` target → caller.
#[derive(Clone, Debug)]
pub(crate) struct ByteCounters {
    pub(crate) up: Counter,
    pub(crate) down: Counter,
}

impl ByteCounters {
    /// Adds what a relay moved: `up` bytes from caller to target, `down` from target to caller.
    pub(crate) fn add(&self, up: u64, down: u64) {
        self.up.inc_by(up);
        self.down.inc_by(down);
    }
}

fn byte_counters(family: &Family<DirectionLabel, Counter>) -> ByteCounters {
    // One statement each: `get_or_create` returns a guard that must be gone before the next call.
    let up = family
        .get_or_create(&DirectionLabel { direction: "up" })
        .clone();
    let down = family
        .get_or_create(&DirectionLabel { direction: "down" })
        .clone();
    ByteCounters { up, down }
}

/// One metric of a family per [`StreamKind`], looked up once: a stream then costs no label hashing or lock.
#[derive(Debug)]
struct PerKind<M>([M; StreamKind::ALL.len()]);

impl<M: Clone> PerKind<M> {
    fn new<L: Clone + std::hash::Hash + Eq>(
        family: &Family<L, M>,
        label: impl Fn(&'static str) -> L,
    ) -> Self
    where
        M: Default,
    {
        // One statement each: `get_or_create` returns a guard that must be gone before the next call.
        Self(StreamKind::ALL.map(|kind| family.get_or_create(&label(kind.as_str())).clone()))
    }

    fn get(&self, kind: StreamKind) -> &M {
        &self.0[kind as usize]
    }
}

/// Renders a registry as Prometheus text.
fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    if encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}

/// The server's metrics.
#[derive(Debug)]
pub(crate) struct ServerMetrics {
    registry: Registry,
    pub(crate) agent_connections: Gauge,
    pub(crate) handshake_failures: Counter,
    pub(crate) connections_refused: Counter,
    streams_open: PerKind<Gauge>,
    streams: PerKind<Counter>,
    errors: Family<ClassLabel, Counter>,
    pub(crate) bytes: ByteCounters,
    pub(crate) cert_expiry_seconds: Gauge,
}

impl ServerMetrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("fluidity_server");
        let agent_connections = Gauge::default();
        registry.register(
            "agent_connections",
            "Agent connections currently open",
            agent_connections.clone(),
        );
        let handshake_failures = Counter::default();
        registry.register(
            "handshake_failures",
            "TLS handshakes that failed or were refused",
            handshake_failures.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Connections closed at once because max_connections was reached",
            connections_refused.clone(),
        );
        let streams_open = Family::<KindLabel, Gauge>::default();
        registry.register(
            "streams_open",
            "Streams currently open",
            streams_open.clone(),
        );
        let streams = Family::<KindLabel, Counter>::default();
        registry.register("streams", "Streams opened", streams.clone());
        let errors = Family::<ClassLabel, Counter>::default();
        registry.register("errors", "Streams that failed, by class", errors.clone());
        let bytes_family = Family::<DirectionLabel, Counter>::default();
        registry.register(
            "bytes",
            "Payload bytes relayed (up: agent to target, down: target to agent)",
            bytes_family.clone(),
        );
        let cert_expiry_seconds = Gauge::default();
        registry.register(
            "cert_expiry_seconds",
            "Seconds until the server certificate expires",
            cert_expiry_seconds.clone(),
        );
        Self {
            registry,
            agent_connections,
            handshake_failures,
            connections_refused,
            streams_open: PerKind::new(&streams_open, |kind| KindLabel { kind }),
            streams: PerKind::new(&streams, |kind| KindLabel { kind }),
            errors,
            bytes: byte_counters(&bytes_family),
            cert_expiry_seconds,
        }
    }

    /// Counts a new stream and returns a guard that keeps it in `streams_open` until dropped.
    pub(crate) fn stream_opened(&self, kind: StreamKind) -> OpenGuard {
        self.streams.get(kind).inc();
        let gauge = self.streams_open.get(kind).clone();
        gauge.inc();
        OpenGuard(gauge)
    }

    pub(crate) fn error(&self, class: &'static str) {
        self.errors.get_or_create(&ClassLabel { class }).inc();
    }

    pub(crate) fn render(&self) -> String {
        render(&self.registry)
    }
}

/// Decrements an "open" gauge when dropped.
#[derive(Debug)]
pub(crate) struct OpenGuard(Gauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The agent's metrics.
#[derive(Debug)]
pub(crate) struct AgentMetrics {
    registry: Registry,
    pub(crate) tunnel_up: Gauge,
    pub(crate) tunnel_connects: Counter,
    pub(crate) tunnel_failures: Counter,
    /// 1 for the server each tunnel that is up is on; no series for a tunnel that is down.
    tunnel_server: Family<TunnelServerLabel, Gauge>,
    pub(crate) caller_connections: Gauge,
    requests: Family<RequestLabel, Counter>,
    /// `requests` with outcome `ok`, the common case.
    requests_ok: PerKind<Counter>,
    streams_open: PerKind<Gauge>,
    /// Requests the agent sent to the target itself (`direct_targets`), by kind.
    direct: PerKind<Counter>,
    pub(crate) bytes: ByteCounters,
    pub(crate) cert_expiry_seconds: Gauge,
    pub(crate) stream_window_bytes: Gauge,
    /// Requests that did not end `ok`, all kinds (for the status page; not exported: `requests` has them).
    failed_requests: Counter,
    /// The last few failures with their reasons (the status page).
    pub(crate) recent: RecentErrors,
}

impl AgentMetrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("fluidity_agent");
        let tunnel_up = Gauge::default();
        registry.register(
            "tunnel_up",
            "Tunnels to the server that are up (at most `tunnels`, 1 by default)",
            tunnel_up.clone(),
        );
        let tunnel_connects = Counter::default();
        registry.register(
            "tunnel_connects",
            "Tunnels established",
            tunnel_connects.clone(),
        );
        let tunnel_failures = Counter::default();
        registry.register(
            "tunnel_failures",
            "Failed attempts to establish the tunnel",
            tunnel_failures.clone(),
        );
        let tunnel_server = Family::<TunnelServerLabel, Gauge>::default();
        registry.register(
            "tunnel_server_info",
            "The server each tunnel that is up is on (value 1; a tunnel that is down has no series)",
            tunnel_server.clone(),
        );
        let caller_connections = Gauge::default();
        registry.register(
            "caller_connections",
            "Caller connections currently open",
            caller_connections.clone(),
        );
        let requests = Family::<RequestLabel, Counter>::default();
        registry.register(
            "requests",
            "Caller requests by kind and outcome",
            requests.clone(),
        );
        let direct = Family::<KindLabel, Counter>::default();
        registry.register(
            "direct_requests",
            "Caller requests the agent connected to the target itself (direct_targets), by kind; the rest go \
             through the tunnel",
            direct.clone(),
        );
        let streams_open = Family::<KindLabel, Gauge>::default();
        registry.register(
            "streams_open",
            "CONNECT, WebSocket and SOCKS streams currently relaying",
            streams_open.clone(),
        );
        let bytes_family = Family::<DirectionLabel, Counter>::default();
        registry.register(
            "bytes",
            "Payload bytes relayed (up: caller to tunnel, down: tunnel to caller)",
            bytes_family.clone(),
        );
        let cert_expiry_seconds = Gauge::default();
        registry.register(
            "cert_expiry_seconds",
            "Seconds until the agent certificate expires",
            cert_expiry_seconds.clone(),
        );
        let stream_window_bytes = Gauge::default();
        registry.register(
            "stream_window_bytes",
            "Receive window the agent grants each tunnel stream (the tunnel that changed it last); grows with the path's bandwidth-delay product",
            stream_window_bytes.clone(),
        );
        Self {
            registry,
            tunnel_up,
            tunnel_connects,
            tunnel_failures,
            tunnel_server,
            caller_connections,
            requests_ok: PerKind::new(&requests, |kind| RequestLabel {
                kind,
                outcome: "ok",
            }),
            requests,
            streams_open: PerKind::new(&streams_open, |kind| KindLabel { kind }),
            direct: PerKind::new(&direct, |kind| KindLabel { kind }),
            bytes: byte_counters(&bytes_family),
            cert_expiry_seconds,
            stream_window_bytes,
            failed_requests: Counter::default(),
            recent: RecentErrors::default(),
        }
    }

    /// Tunnel `tunnel` is now on `server`.
    pub(crate) fn tunnel_on(&self, tunnel: usize, server: std::net::SocketAddr) {
        self.tunnel_server
            .get_or_create(&tunnel_server_label(tunnel, server))
            .set(1);
    }

    /// Tunnel `tunnel` has left `server` (lost, or moved to another server).
    pub(crate) fn tunnel_off(&self, tunnel: usize, server: std::net::SocketAddr) {
        self.tunnel_server
            .remove(&tunnel_server_label(tunnel, server));
    }

    /// Counts a finished request; `outcome` is a bounded word such as `ok`, `refused`, `tunnel_down`.
    pub(crate) fn request(&self, kind: StreamKind, outcome: &'static str) {
        if outcome == "ok" {
            self.requests_ok.get(kind).inc();
            return;
        }
        self.failed_requests.inc();
        self.requests
            .get_or_create(&RequestLabel {
                kind: kind.as_str(),
                outcome,
            })
            .inc();
    }

    /// Counts a request that goes to its target directly (`direct_targets`).
    pub(crate) fn direct(&self, kind: StreamKind) {
        self.direct.get(kind).inc();
    }

    pub(crate) fn stream_opened(&self, kind: StreamKind) -> OpenGuard {
        let gauge = self.streams_open.get(kind).clone();
        gauge.inc();
        OpenGuard(gauge)
    }

    /// Requests finished so far, and how many of them did not end `ok`.
    pub(crate) fn request_totals(&self) -> (u64, u64) {
        let failed = self.failed_requests.get();
        let ok: u64 = self.requests_ok.0.iter().map(Counter::get).sum();
        (ok + failed, failed)
    }

    /// Streams relaying now, of `kind`.
    pub(crate) fn open_streams(&self, kind: StreamKind) -> i64 {
        self.streams_open.get(kind).get()
    }

    pub(crate) fn render(&self) -> String {
        render(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_metrics_render_with_role_prefix_and_labels() {
        let metrics = ServerMetrics::new();
        let guard = metrics.stream_opened(StreamKind::Connect);
        metrics.error("refused");
        metrics.bytes.up.inc_by(10);
        let text = metrics.render();
        assert!(
            text.contains("fluidity_server_streams_total{kind=\"connect\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("fluidity_server_streams_open{kind=\"connect\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("fluidity_server_errors_total{class=\"refused\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("fluidity_server_bytes_total{direction=\"up\"} 10"),
            "{text}"
        );
        drop(guard);
        assert!(
            metrics
                .render()
                .contains("fluidity_server_streams_open{kind=\"connect\"} 0")
        );
    }

    #[test]
    fn agent_metrics_count_requests_by_outcome() {
        let metrics = AgentMetrics::new();
        metrics.request(StreamKind::Http, "ok");
        metrics.request(StreamKind::Http, "ok");
        metrics.tunnel_up.set(1);
        let text = metrics.render();
        assert!(
            text.contains("fluidity_agent_requests_total{kind=\"http\",outcome=\"ok\"} 2"),
            "{text}"
        );
        assert!(text.contains("fluidity_agent_tunnel_up 1"), "{text}");
        let first = "192.0.2.1:8443".parse().expect("addr");
        let second = "[2001:db8::1]:8443".parse().expect("addr");
        metrics.tunnel_on(0, first);
        metrics.tunnel_on(1, first);
        metrics.tunnel_off(1, first);
        metrics.tunnel_on(1, second);
        let text = metrics.render();
        assert!(
            text.contains(
                "fluidity_agent_tunnel_server_info{tunnel=\"0\",server=\"192.0.2.1:8443\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "fluidity_agent_tunnel_server_info{tunnel=\"1\",server=\"[2001:db8::1]:8443\"} 1"
            ),
            "{text}"
        );
        assert!(
            !text.contains("fluidity_agent_tunnel_server_info{tunnel=\"1\",server=\"192.0.2.1"),
            "{text}"
        );
    }
}
