//! The tunnel keeper: one HTTP/2 connection over mTLS to the server, kept up for as long as the agent runs (one
//! keeper per tunnel when `tunnels` is above 1).
//!
//! States: down → (connect, handshake, probe) → up → (connection ends) → down, never giving up. With several
//! `server_ip` entries, a lost tunnel or a failed dial moves on to the next server at once; the exponential backoff
//! with jitter comes only after a whole round failed (`failover` has the order and the failback rule). While on a
//! later server the keeper probes the earlier ones and moves new streams back to one that has answered for the
//! failback period; the old tunnel keeps its open streams until they finish. The current state is published on a
//! `watch` channel that `/healthz` and the proxy read ([`Tunnels`]). The keeper does not retry requests: a stream
//! in flight when the tunnel drops fails.

use bytes::Bytes;
use rustls::pki_types::ServerName;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::failover::{Candidate, Failback, addresses_after, entry_order, probe_interval};
use super::window::{Metered, Pinger, Traffic, TunnelLost, Windows};
use crate::config::ServerEndpoint;
use crate::metrics::AgentMetrics;
use crate::tunnel::{PROBE_AUTHORITY, transport};

/// First reconnect delay.
pub(crate) const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
pub(crate) const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// A tunnel that stayed up this long resets the backoff.
pub(crate) const STABLE_PERIOD: Duration = Duration::from_secs(30);

/// What the proxy sees of the tunnel.
#[derive(Clone, Debug)]
pub(crate) enum TunnelState {
    Down,
    Up {
        sender: h2::client::SendRequest<Bytes>,
        /// The server address the tunnel is connected to.
        server: SocketAddr,
    },
}

impl TunnelState {
    pub(crate) fn is_up(&self) -> bool {
        matches!(self, Self::Up { .. })
    }

    /// The server address while up.
    pub(crate) fn server(&self) -> Option<SocketAddr> {
        match self {
            Self::Up { server, .. } => Some(*server),
            Self::Down => None,
        }
    }
}

/// The agent's tunnels as one caller connection sees them: the tunnel of its own thread first, and while that one
/// is down any other that is up.
#[derive(Clone, Debug)]
pub(crate) struct Tunnels {
    own: usize,
    all: Arc<[watch::Receiver<TunnelState>]>,
}

impl Tunnels {
    /// The view of the callers served next to tunnel `own`.
    pub(crate) fn new(own: usize, all: Arc<[watch::Receiver<TunnelState>]>) -> Self {
        Self { own, all }
    }

    /// Whether a request can go out now: some tunnel is up.
    pub(crate) fn is_up(&self) -> bool {
        self.all.iter().any(|tunnel| tunnel.borrow().is_up())
    }

    /// The server each tunnel is on, in tunnel order (`None` while it is down).
    pub(crate) fn servers(&self) -> Vec<Option<SocketAddr>> {
        self.all
            .iter()
            .map(|tunnel| tunnel.borrow().server())
            .collect()
    }

    /// The request handle of the first tunnel that is up, starting with the own one.
    pub(crate) fn sender(&self) -> Option<h2::client::SendRequest<Bytes>> {
        let count = self.all.len();
        (0..count).find_map(
            |step| match &*self.all[(self.own + step) % count].borrow() {
                TunnelState::Up { sender, .. } => Some(sender.clone()),
                TunnelState::Down => None,
            },
        )
    }
}

/// Why one attempt to bring the tunnel up failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("cannot look up the server: {0}")]
    Resolve(#[source] io::Error),
    #[error("cannot connect to the server: {0}")]
    Tcp(#[source] io::Error),
    #[error("server did not answer within {}s", .0.as_secs())]
    Timeout(Duration),
    #[error("server name is not valid for TLS: {0}")]
    ServerName(String),
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] io::Error),
    #[error("HTTP/2 handshake failed: {0}")]
    Http2(#[source] h2::Error),
    #[error("server refused the tunnel: {0}")]
    Probe(String),
}

/// The delay before reconnect attempt `attempt` (0-based): doubling from [`RECONNECT_MIN`], capped at
/// [`RECONNECT_MAX`], then scaled into its upper half by `jitter` in `[0, 1]` so agents do not reconnect in step.
pub(crate) fn backoff_delay(attempt: u32, jitter: f64) -> Duration {
    let exponential = RECONNECT_MIN.saturating_mul(1u32 << attempt.min(16));
    let capped = exponential.min(RECONNECT_MAX);
    capped.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// A jitter sample in `[0, 1]` from the standard library's randomly keyed hasher.
fn jitter_sample() -> f64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Keeps the tunnel up and publishes its state.
pub(crate) struct Keeper {
    /// Which of the agent's tunnels this is (0-based), for the logs.
    pub(crate) index: usize,
    /// `server_ip`'s entries, most preferred first (at least one).
    pub(crate) servers: Arc<[ServerEndpoint]>,
    pub(crate) connect_timeout: Duration,
    /// Ping interval on the tunnel, and how long an answer may take.
    pub(crate) keepalive: Duration,
    /// How long an earlier entry must answer probes before new streams move back to it.
    pub(crate) failback_after: Duration,
    pub(crate) tls: Arc<RwLock<Arc<rustls::ClientConfig>>>,
    pub(crate) state: watch::Sender<TunnelState>,
    pub(crate) metrics: Arc<AgentMetrics>,
}

/// Aborts the connection task when the tunnel is replaced or the keeper stops.
struct AbortOnDrop(JoinHandle<Result<(), TunnelLost>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A tunnel that is up: where it goes, its request handle and its connection task.
struct Connected {
    at: Candidate,
    sender: h2::client::SendRequest<Bytes>,
    conn: AbortOnDrop,
}

impl Connected {
    /// Lets the tunnel finish its open streams, then close: with every request handle gone and no stream left,
    /// h2 sends GOAWAY and the connection ends. Bounded by `limit` when given; otherwise the streams decide.
    async fn close(self, limit: Option<Duration>) {
        let Self {
            sender, mut conn, ..
        } = self;
        drop(sender);
        match limit {
            Some(limit) => {
                let _ = tokio::time::timeout(limit, &mut conn.0).await;
            }
            None => {
                let _ = (&mut conn.0).await;
            }
        }
    }
}

/// How long a probe tunnel that is not kept may take to close cleanly.
const PROBE_CLOSE_LIMIT: Duration = Duration::from_secs(1);

/// How a held tunnel ended.
enum Held {
    /// The connection ended: `at` is the candidate it was on, up since `since`.
    Lost {
        at: Candidate,
        since: Instant,
    },
    Stopped,
}

impl Keeper {
    /// Runs until `stop` is cancelled.
    ///
    /// Each round tries the candidates (see `failover`) in order until one comes up; a lost tunnel is replaced by
    /// the next candidate of the round at once, and only a round with no candidate left waits for the backoff.
    /// A round's tried candidates are the dial failures since the last tunnel came up, and the tunnels lost before
    /// [`STABLE_PERIOD`] since the last backoff: servers that keep dropping the tunnel are not redialed in a loop.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let mut attempt: u32 = 0;
        let mut refused: Vec<Candidate> = Vec::new();
        let mut flapped: Vec<Candidate> = Vec::new();
        // The candidate the round continues after.
        let mut last: Option<Candidate> = None;
        // Tunnels left behind by a failback, finishing their streams.
        let mut draining = JoinSet::new();
        loop {
            let connected = tokio::select! {
                () = stop.cancelled() => return,
                connected = self.dial_round(&mut refused, &flapped, last, attempt) => connected,
            };
            let Some(connected) = connected else {
                let delay = backoff_delay(attempt, jitter_sample());
                attempt = attempt.saturating_add(1);
                refused.clear();
                flapped.clear();
                last = None;
                debug!(delay_ms = delay.as_millis() as u64, "reconnect scheduled");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                continue;
            };
            // The server this one replaces: the last that refused the dial in this round, else the one lost.
            let from = refused.last().copied().or(last);
            refused.clear();
            if let Some(previous) = from.filter(|previous| previous.addr != connected.at.addr) {
                info!(
                    server = %connected.at.addr,
                    from = %previous.addr,
                    tunnel = self.index,
                    "failed over to another server"
                );
            }
            match self.hold(connected, &stop, &mut draining).await {
                Held::Stopped => return,
                Held::Lost { at, since } => {
                    if since.elapsed() >= STABLE_PERIOD {
                        attempt = 0;
                        flapped.clear();
                    }
                    flapped.push(at);
                    last = Some(at);
                }
            }
        }
    }

    /// One round of dial attempts: the candidates in neither `refused` nor `flapped`, in order from `last`. Each
    /// failure is added to `refused`. `None` when none came up. `attempt` counts the backoffs so far, for the logs.
    ///
    /// Cancel safety: none needed; the keeper stops, rather than retries, when it is cancelled.
    async fn dial_round(
        &self,
        refused: &mut Vec<Candidate>,
        flapped: &[Candidate],
        last: Option<Candidate>,
        attempt: u32,
    ) -> Option<Connected> {
        for entry in entry_order(self.servers.len(), last) {
            let server = &self.servers[entry];
            let addrs = match self.resolve(server).await {
                Ok(addrs) => addrs,
                Err(err) => {
                    self.metrics.tunnel_failures.inc();
                    warn!(error = %err, server = %server, attempt, tunnel = self.index, "tunnel connect failed");
                    self.metrics
                        .recent
                        .push("tunnel", server.to_string(), err.to_string());
                    continue;
                }
            };
            let mine = last
                .filter(|last| last.entry == entry)
                .map(|last| last.addr);
            for addr in addresses_after(addrs, mine) {
                let at = Candidate { entry, addr };
                if refused.contains(&at) || flapped.contains(&at) {
                    continue;
                }
                match self.connect_once(server, addr).await {
                    Ok((sender, conn)) => return Some(Connected { at, sender, conn }),
                    Err(err) => {
                        self.metrics.tunnel_failures.inc();
                        warn!(error = %err, server = %addr, attempt, tunnel = self.index, "tunnel connect failed");
                        self.metrics
                            .recent
                            .push("tunnel", addr.to_string(), err.to_string());
                        refused.push(at);
                    }
                }
            }
        }
        None
    }

    /// Publishes `current` and keeps it until it is lost or `stop` is cancelled. While it is on a later entry, the
    /// earlier ones are probed; once one has answered for the failback period, the probe's tunnel replaces
    /// `current` for new streams, and `current` drains in `draining`.
    async fn hold(
        &self,
        mut current: Connected,
        stop: &CancellationToken,
        draining: &mut JoinSet<()>,
    ) -> Held {
        self.metrics.tunnel_up.inc();
        let mut since = Instant::now();
        let ended = 'held: loop {
            self.metrics.tunnel_connects.inc();
            self.metrics.tunnel_on(self.index, current.at.addr);
            self.state.send_replace(TunnelState::Up {
                sender: current.sender.clone(),
                server: current.at.addr,
            });
            info!(server = %current.at.addr, tunnel = self.index, "tunnel up");
            let mut failback = Failback::new(self.failback_after);
            let interval = probe_interval(self.failback_after);
            let mut probe = Box::pin(self.probe_earlier(current.at.entry, interval));
            loop {
                tokio::select! {
                    () = stop.cancelled() => break 'held None,
                    ended = &mut current.conn.0 => break 'held Some(ended),
                    probed = &mut probe => {
                        let answered = probed.as_ref().map(|probed| probed.at.entry);
                        match probed {
                            Some(probed) if failback.record(answered, Instant::now()) => {
                                let old = std::mem::replace(&mut current, probed);
                                self.metrics.tunnel_off(self.index, old.at.addr);
                                info!(
                                    server = %current.at.addr,
                                    from = %old.at.addr,
                                    tunnel = self.index,
                                    "failed back to a preferred server"
                                );
                                draining.spawn(old.close(None));
                                since = Instant::now();
                                continue 'held;
                            }
                            Some(probed) => {
                                draining.spawn(probed.close(Some(PROBE_CLOSE_LIMIT)));
                            }
                            None => {}
                        }
                        probe.set(self.probe_earlier(current.at.entry, interval));
                    }
                    Some(_) = draining.join_next(), if !draining.is_empty() => {}
                }
            }
        };
        self.state.send_replace(TunnelState::Down);
        self.metrics.tunnel_up.dec();
        self.metrics.tunnel_off(self.index, current.at.addr);
        let Some(ended) = ended else {
            return Held::Stopped;
        };
        let reason = match ended {
            Ok(Ok(())) => "connection closed".to_string(),
            Ok(Err(err)) => err.to_string(),
            Err(err) => err.to_string(),
        };
        warn!(reason = %reason, server = %current.at.addr, tunnel = self.index, "tunnel lost, reconnecting");
        self.metrics.recent.push(
            "tunnel",
            current.at.addr.to_string(),
            format!("tunnel lost: {reason}"),
        );
        Held::Lost {
            at: current.at,
            since,
        }
    }

    /// After `interval`, tries the entries before `entry`, in order, and returns the first tunnel that comes up
    /// (its probe request answered, so it is ready for streams). Pending forever on the first entry: there is
    /// nothing to move back to.
    ///
    /// Cancel safety: dropping it closes a half-made probe tunnel; nothing else is lost.
    async fn probe_earlier(&self, entry: usize, interval: Duration) -> Option<Connected> {
        if entry == 0 {
            return std::future::pending().await;
        }
        tokio::time::sleep(interval).await;
        for (earlier, server) in self.servers.iter().enumerate().take(entry) {
            let addrs = match self.resolve(server).await {
                Ok(addrs) => addrs,
                Err(err) => {
                    debug!(error = %err, server = %server, "failback probe failed");
                    continue;
                }
            };
            for addr in addrs {
                match self.connect_once(server, addr).await {
                    Ok((sender, conn)) => {
                        debug!(server = %addr, "failback probe answered");
                        let at = Candidate {
                            entry: earlier,
                            addr,
                        };
                        return Some(Connected { at, sender, conn });
                    }
                    Err(err) => debug!(error = %err, server = %addr, "failback probe failed"),
                }
            }
        }
        None
    }

    /// The addresses of `server`, looked up now (an IP literal is itself), in the resolver's order, without
    /// repeats.
    async fn resolve(&self, server: &ServerEndpoint) -> Result<Vec<SocketAddr>, ConnectError> {
        let found = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::lookup_host((server.host.as_str(), server.port)),
        )
        .await
        .map_err(|_| ConnectError::Timeout(self.connect_timeout))?
        .map_err(ConnectError::Resolve)?;
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for addr in found {
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        if addrs.is_empty() {
            return Err(ConnectError::Resolve(io::Error::new(
                io::ErrorKind::NotFound,
                "the name has no addresses",
            )));
        }
        Ok(addrs)
    }

    /// Dials `addr` (an address of `server`, whose name the certificate is checked against), completes TLS and
    /// HTTP/2 and sends the probe request: an answered probe proves the tunnel.
    async fn connect_once(
        &self,
        server: &ServerEndpoint,
        addr: SocketAddr,
    ) -> Result<(h2::client::SendRequest<Bytes>, AbortOnDrop), ConnectError> {
        let limit = self.connect_timeout;
        let timed = |e: tokio::time::error::Elapsed| {
            let _ = e;
            ConnectError::Timeout(limit)
        };
        let tcp = tokio::time::timeout(limit, TcpStream::connect(addr))
            .await
            .map_err(timed)?
            .map_err(ConnectError::Tcp)?;
        let name = ServerName::try_from(server.host.clone())
            .map_err(|e| ConnectError::ServerName(e.to_string()))?;
        let config = match self.tls.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let traffic = Arc::new(Traffic::default());
        let (socket, writes) = transport::socket(tcp, |read| Metered::new(read, traffic.clone()));
        let tls = tokio::time::timeout(limit, transport::connect_tls(config, name, socket))
            .await
            .map_err(timed)?
            .map_err(ConnectError::Tls)?;
        let (sender, mut connection) = transport::h2_client(tls)
            .await
            .map_err(ConnectError::Http2)?;
        let mut pinger = connection
            .ping_pong()
            .map(|pings| Pinger::new(pings, self.keepalive, traffic));
        let gauge = self.metrics.stream_window_bytes.clone();
        let drive = async move {
            let mut windows = Windows::default();
            gauge.set(i64::from(windows.stream));
            loop {
                let sample = async {
                    match &mut pinger {
                        Some(pinger) => pinger.next_sample(windows.can_grow()).await,
                        None => std::future::pending().await,
                    }
                };
                let bytes = tokio::select! {
                    ended = &mut connection => return ended.map_err(TunnelLost::Connection),
                    sample = sample => sample?,
                };
                let Some(next) = windows.after_round_trip(bytes) else {
                    continue;
                };
                // Refused while the previous change awaits the server's acknowledgement: the next sample tries
                // again.
                if connection.set_initial_window_size(next.stream).is_ok() {
                    connection.set_target_window_size(next.connection());
                    windows = next;
                    gauge.set(i64::from(windows.stream));
                    debug!(stream_window = windows.stream, "receive windows grown");
                }
            }
        };
        // The connection's writes are gathered while it runs, and sent each time it yields.
        let mut conn = AbortOnDrop(tokio::spawn(async move {
            writes
                .gather_while(drive)
                .await
                .map_err(TunnelLost::Socket)?
        }));
        // TLS 1.3 refuses a client certificate after the handshake: only an answered request proves the tunnel.
        let probe = http::Request::get(format!("http://{PROBE_AUTHORITY}/"))
            .body(())
            .map_err(|e| ConnectError::Probe(e.to_string()))?;
        let answered = tokio::time::timeout(limit, async {
            let mut ready = sender.clone().ready().await?;
            let (response, _) = ready.send_request(probe, true)?;
            response.await
        })
        .await
        .map_err(timed)?;
        match answered {
            Ok(response) if response.status() == http::StatusCode::NO_CONTENT => Ok((sender, conn)),
            Ok(response) => Err(ConnectError::Probe(format!(
                "unexpected probe answer {}",
                response.status()
            ))),
            Err(err) => {
                // The connection task holds the real reason (for example a TLS alert naming the refusal).
                let reason =
                    match tokio::time::timeout(Duration::from_millis(200), &mut conn.0).await {
                        Ok(Ok(Err(conn_err))) => conn_err.to_string(),
                        _ => err.to_string(),
                    };
                Err(ConnectError::Probe(reason))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let cases = [
            (0, 1.0, Duration::from_millis(100)),
            (0, 0.0, Duration::from_millis(50)),
            (1, 1.0, Duration::from_millis(200)),
            (3, 1.0, Duration::from_millis(800)),
            (7, 1.0, Duration::from_secs(10)),
            (30, 1.0, Duration::from_secs(10)),
            (u32::MAX, 0.0, Duration::from_secs(5)),
        ];
        for (attempt, jitter, expected) in cases {
            assert_eq!(
                backoff_delay(attempt, jitter),
                expected,
                "attempt {attempt}"
            );
        }
    }

    #[test]
    fn jitter_is_in_range() {
        for _ in 0..100 {
            let j = jitter_sample();
            assert!((0.0..=1.0).contains(&j), "{j}");
        }
    }
}
