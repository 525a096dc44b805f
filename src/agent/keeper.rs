//! The tunnel keeper: one HTTP/2 connection over mTLS to the server, kept up for as long as the agent runs (one
//! keeper per tunnel when `tunnels` is above 1).
//!
//! States: down → (connect, handshake, probe) → up → (connection ends) → down, with exponential backoff and jitter
//! between attempts, never giving up. The current state is published on a `watch` channel that `/healthz` and the
//! proxy read ([`Tunnels`]). The keeper does not retry requests: a stream in flight when the tunnel drops fails.

use bytes::Bytes;
use rustls::pki_types::ServerName;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::window::{Metered, Pinger, Traffic, TunnelLost, Windows};
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
    Up(h2::client::SendRequest<Bytes>),
}

impl TunnelState {
    pub(crate) fn is_up(&self) -> bool {
        matches!(self, Self::Up(_))
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

    /// Whether each tunnel is up, in tunnel order.
    pub(crate) fn each_up(&self) -> Vec<bool> {
        self.all
            .iter()
            .map(|tunnel| tunnel.borrow().is_up())
            .collect()
    }

    /// Whether a request can go out now: some tunnel is up.
    pub(crate) fn is_up(&self) -> bool {
        self.all.iter().any(|tunnel| tunnel.borrow().is_up())
    }

    /// The request handle of the first tunnel that is up, starting with the own one.
    pub(crate) fn sender(&self) -> Option<h2::client::SendRequest<Bytes>> {
        let count = self.all.len();
        (0..count).find_map(
            |step| match &*self.all[(self.own + step) % count].borrow() {
                TunnelState::Up(sender) => Some(sender.clone()),
                TunnelState::Down => None,
            },
        )
    }
}

/// Why one attempt to bring the tunnel up failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
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
    pub(crate) server_host: String,
    pub(crate) server_port: u16,
    pub(crate) connect_timeout: Duration,
    /// Ping interval on the tunnel, and how long an answer may take.
    pub(crate) keepalive: Duration,
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

impl Keeper {
    /// Runs until `stop` is cancelled.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let mut attempt: u32 = 0;
        loop {
            let attempt_result = tokio::select! {
                () = stop.cancelled() => return,
                result = self.connect_once() => result,
            };
            match attempt_result {
                Ok((sender, mut conn)) => {
                    let since = Instant::now();
                    self.metrics.tunnel_connects.inc();
                    self.metrics.tunnel_up.inc();
                    self.state.send_replace(TunnelState::Up(sender));
                    info!(server = %self.server_host, tunnel = self.index, "tunnel up");
                    let ended = tokio::select! {
                        () = stop.cancelled() => None,
                        ended = &mut conn.0 => Some(ended),
                    };
                    self.state.send_replace(TunnelState::Down);
                    self.metrics.tunnel_up.dec();
                    let Some(ended) = ended else { return };
                    let reason = match ended {
                        Ok(Ok(())) => "connection closed".to_string(),
                        Ok(Err(err)) => err.to_string(),
                        Err(err) => err.to_string(),
                    };
                    warn!(reason = %reason, tunnel = self.index, "tunnel lost, reconnecting");
                    self.metrics.recent.push(
                        "tunnel",
                        self.server_text(),
                        format!("tunnel lost: {reason}"),
                    );
                    if since.elapsed() >= STABLE_PERIOD {
                        attempt = 0;
                    }
                }
                Err(err) => {
                    self.metrics.tunnel_failures.inc();
                    warn!(error = %err, attempt, tunnel = self.index, "tunnel connect failed");
                    self.metrics
                        .recent
                        .push("tunnel", self.server_text(), err.to_string());
                }
            }
            let delay = backoff_delay(attempt, jitter_sample());
            attempt = attempt.saturating_add(1);
            debug!(delay_ms = delay.as_millis() as u64, "reconnect scheduled");
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// The server as `host:port` (`[v6]:port`).
    fn server_text(&self) -> String {
        if self.server_host.contains(':') {
            format!("[{}]:{}", self.server_host, self.server_port)
        } else {
            format!("{}:{}", self.server_host, self.server_port)
        }
    }

    async fn connect_once(
        &self,
    ) -> Result<(h2::client::SendRequest<Bytes>, AbortOnDrop), ConnectError> {
        let limit = self.connect_timeout;
        let timed = |e: tokio::time::error::Elapsed| {
            let _ = e;
            ConnectError::Timeout(limit)
        };
        let tcp = tokio::time::timeout(
            limit,
            TcpStream::connect((self.server_host.as_str(), self.server_port)),
        )
        .await
        .map_err(timed)?
        .map_err(ConnectError::Tcp)?;
        let name = ServerName::try_from(self.server_host.clone())
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
