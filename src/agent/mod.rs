//! The agent: an HTTP/1.1 forward proxy on loopback whose every request travels as a stream on one tunnel to the
//! server.
//!
//! Shape: [`Agent::bind`] checks the TLS material and opens the proxy port, [`Agent::run`] keeps the tunnel up
//! (see `keeper`) and serves callers until the token is cancelled, then drains. It does not know about the server's
//! internals: everything it needs is the wire mapping in `tunnel`.

mod direct;
mod failover;
mod keeper;
mod pac;
pub(crate) mod proxy;
pub(crate) mod socks;
mod socks_session;
mod status;
mod window;

use anyhow::Context as _;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, debug_span, info, warn};

use crate::config::AgentConfig;
use crate::expiry;
use crate::metrics::AgentMetrics;
use crate::reload::{self, Watched};
use crate::shard::{Shards, counted, least_loaded};
use crate::shutdown::{Drain, GRACE_PERIOD};
use crate::tls;
use crate::tunnel::MAX_HEADER_BYTES;
use keeper::{Keeper, TunnelState, Tunnels};

/// Pause after a failed `accept()` (out of descriptors, say), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// State shared by the proxy's connections (one per tunnel: they differ only in which tunnel they try first).
pub(crate) struct Shared {
    config: AgentConfig,
    /// The parsed `direct_targets`.
    direct: Arc<direct::Direct>,
    tunnel: Tunnels,
    metrics: Arc<AgentMetrics>,
    drain: Drain,
    /// When the agent was bound (the status page's uptime).
    started: std::time::Instant,
}

/// A bound agent, ready to [`run`](Agent::run).
pub struct Agent {
    listener: TcpListener,
    /// The state of each tunnel's callers, in tunnel order: the callers served on tunnel `i`'s thread use
    /// `per_tunnel[i]`.
    per_tunnel: Vec<Arc<Shared>>,
    keepers: Vec<Keeper>,
    tls: Arc<RwLock<Arc<rustls::ClientConfig>>>,
    /// The TLS files as they were when loaded, looked at every `poll` while running.
    files: Watched,
    poll: Duration,
}

/// Reloads the agent's certificate, key and CA (on SIGHUP, and when their files change); the next tunnel uses them,
/// the current one stays up.
#[derive(Clone)]
pub struct AgentReload {
    config: AgentConfig,
    tls: Arc<RwLock<Arc<rustls::ClientConfig>>>,
    metrics: Arc<AgentMetrics>,
}

impl AgentReload {
    /// # Errors
    /// When the new material does not load; the old material then stays in use.
    pub fn reload(&self) -> anyhow::Result<()> {
        let fresh = load_tls(&self.config)?;
        match self.tls.write() {
            Ok(mut guard) => *guard = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        expiry::record(
            &self.config.tls.cert_file,
            &self.metrics.cert_expiry_seconds,
            "agent",
        );
        info!("certificates reloaded");
        Ok(())
    }
}

fn load_tls(config: &AgentConfig) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    Ok(tls::load_client_config(
        &config.tls.cert_file,
        &config.tls.key_file,
        &config.tls.ca_cert_file,
    )?)
}

impl Agent {
    /// Loads and checks the TLS material, then binds the proxy port.
    ///
    /// # Errors
    /// Unusable certificates or keys (the message names the file) or a port that cannot be bound.
    pub async fn bind(mut config: AgentConfig) -> anyhow::Result<Self> {
        let tls = &config.tls;
        let files = Watched::new(vec![
            tls.cert_file.clone(),
            tls.key_file.clone(),
            tls.ca_cert_file.clone(),
        ]);
        let tls_config = Arc::new(RwLock::new(load_tls(&config)?));
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        // The address bound (port 0 picks one): what the status page and the PAC file's fallback name.
        config.listen = listener.local_addr()?;
        let metrics = Arc::new(AgentMetrics::new());
        expiry::record(&config.tls.cert_file, &metrics.cert_expiry_seconds, "agent");
        let count = config.tunnels.max(1);
        let servers: Arc<[_]> = config.servers.clone().into();
        let (keepers, states): (Vec<_>, Vec<_>) = (0..count)
            .map(|index| {
                let (state, tunnel) = watch::channel(TunnelState::Down);
                let keeper = Keeper {
                    index,
                    servers: servers.clone(),
                    connect_timeout: config.connect_timeout,
                    keepalive: config.keepalive,
                    failback_after: failover::FAILBACK_AFTER,
                    tls: tls_config.clone(),
                    state,
                    metrics: metrics.clone(),
                };
                (keeper, tunnel)
            })
            .unzip();
        let states: Arc<[_]> = states.into();
        let drain = Drain::default();
        let direct = Arc::new(direct::Direct::new(&config.direct_targets));
        let started = std::time::Instant::now();
        let per_tunnel = (0..count)
            .map(|own| {
                Arc::new(Shared {
                    config: config.clone(),
                    direct: direct.clone(),
                    tunnel: Tunnels::new(own, states.clone()),
                    metrics: metrics.clone(),
                    drain: drain.clone(),
                    started,
                })
            })
            .collect();
        Ok(Self {
            listener,
            per_tunnel,
            keepers,
            tls: tls_config,
            files,
            poll: reload::POLL_INTERVAL,
        })
    }

    /// Looks at the TLS files for changes every `every` instead of every 2 s (tests use a shorter interval).
    #[must_use]
    pub fn poll_files_every(mut self, every: Duration) -> Self {
        self.poll = every;
        self
    }

    /// Moves new streams back to an earlier `server_ip` entry once it has answered probes for `after` instead of
    /// 30 s (tests use a shorter period). Probes run six times per period.
    #[must_use]
    pub fn failback_after(mut self, after: Duration) -> Self {
        for keeper in &mut self.keepers {
            keeper.failback_after = after;
        }
        self
    }

    /// The proxy address callers use.
    ///
    /// # Panics
    /// Never: a bound listener has an address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has a local address")
    }

    /// A handle that reloads the TLS material.
    pub fn reloader(&self) -> AgentReload {
        AgentReload {
            config: self.per_tunnel[0].config.clone(),
            tls: self.tls.clone(),
            metrics: self.per_tunnel[0].metrics.clone(),
        }
    }

    /// Keeps the tunnels up and serves callers until `shutdown` is cancelled; then stops accepting, lets requests
    /// and streams finish for the grace period, and returns. While it runs, the TLS files are looked at for changes
    /// and reloaded (see [`AgentReload`]).
    ///
    /// The first tunnel and its callers run on the caller's runtime; with `tunnels` above 1, each further tunnel
    /// runs on a thread of its own, and each new caller connection goes to the tunnel serving the fewest, so that
    /// a request never crosses threads on its way through the agent.
    ///
    /// # Errors
    /// When the threads for further tunnels cannot be started.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let reloader = self.reloader();
        let per_tunnel = self.per_tunnel;
        let shared = per_tunnel[0].clone();
        let drain = shared.drain.clone();
        let keeper_stop = CancellationToken::new();
        let mut keepers = self.keepers.into_iter();
        let threads = match per_tunnel.len() {
            1 => None,
            n => Some(Shards::start(n - 1).context("cannot start the tunnels' threads")?),
        };
        let first = keepers
            .next()
            .map(|keeper| tokio::spawn(keeper.run(keeper_stop.clone())));
        if let Some(threads) = &threads {
            for (index, keeper) in keepers.enumerate() {
                threads.run_uncounted(index, keeper.run(keeper_stop.clone()));
            }
        }
        expiry::watch(
            &drain,
            shared.config.tls.cert_file.clone(),
            shared.metrics.cert_expiry_seconds.clone(),
            "agent",
        );
        reload::watch(&drain, self.files, self.poll, "agent", move || {
            reloader.reload()
        });
        info!(addr = %self.listener.local_addr()?, tunnels = per_tunnel.len(), "agent listening");
        // Caller connections served on this thread (the others count their own).
        let here = Arc::new(AtomicUsize::new(0));
        let mut next_id: u64 = 0;
        loop {
            let (tcp, peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        warn!(error = %err, "accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        continue;
                    }
                },
            };
            next_id += 1;
            let span = debug_span!("caller", %peer, conn = next_id);
            let tunnel = match &threads {
                None => 0,
                Some(threads) => {
                    let loads =
                        std::iter::once(here.load(Ordering::Relaxed)).chain(threads.loads());
                    least_loaded(loads).unwrap_or(0)
                }
            };
            match (&threads, tunnel.checked_sub(1)) {
                (Some(threads), Some(index)) => {
                    let shared = per_tunnel[tunnel].clone();
                    let handed =
                        threads.hand_over(Some(index), tcp, &drain.tasks, span, move |tcp| {
                            serve_caller(shared, tcp)
                        });
                    if let Err(err) = handed {
                        warn!(%peer, error = %err, "cannot hand the connection to its tunnel's thread");
                    }
                }
                // The first tunnel's callers run here, on the accepting thread.
                _ => {
                    let caller = serve_caller(per_tunnel[0].clone(), tcp);
                    drain.tasks.spawn(counted(&here, caller).instrument(span));
                }
            }
        }
        drop(self.listener);
        info!("shutdown started");
        drain.run(GRACE_PERIOD).await;
        keeper_stop.cancel();
        if let Some(first) = first {
            let _ = first.await;
        }
        if let Some(threads) = threads {
            threads.stop().await;
        }
        info!("shutdown finished");
        Ok(())
    }
}

/// hyper's buffer limit for a caller connection, reading and writing alike. Writing, it lets hyper gather up to
/// 256 KiB of a response body into one socket write (about a quarter of the writes per GiB of an absolute-form
/// download; bench/results/HISTORY.md). Reading, hyper answers 431 to a head that does not fit; `proxy::handle` answers
/// 431 to a head over [`MAX_HEADER_BYTES`] that does.
const CALLER_BUFFER_BYTES: usize = 4 * MAX_HEADER_BYTES;

/// One caller connection, HTTP/1.1 or SOCKS, until the caller leaves or shutdown.
async fn serve_caller(shared: Arc<Shared>, tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    shared.metrics.caller_connections.inc();
    match first_byte(&shared, &tcp).await {
        Some(socks::VERSION_5 | socks::VERSION_4) => socks_session::serve(&shared, tcp).await,
        Some(_) => serve_http(&shared, tcp).await,
        None => {}
    }
    shared.metrics.caller_connections.dec();
}

/// The caller's first byte, looked at and left in the socket for whoever reads the connection: `0x05` and `0x04`
/// are SOCKS versions, and no HTTP request starts with either (a method is a token of visible characters). One
/// `recv(MSG_PEEK)` per connection, nothing per request. `None` when the caller closes, sends nothing within
/// `header_read_timeout`, or shutdown starts first.
async fn first_byte(shared: &Shared, tcp: &TcpStream) -> Option<u8> {
    let mut byte = [0u8; 1];
    let peek = tokio::time::timeout(shared.config.header_read_timeout, tcp.peek(&mut byte));
    tokio::select! {
        peeked = peek => match peeked {
            Ok(Ok(1)) => Some(byte[0]),
            Ok(Ok(_)) => None,
            Ok(Err(err)) => {
                debug!(error = %err, "caller connection ended");
                None
            }
            Err(_) => {
                debug!("caller sent nothing in time");
                None
            }
        },
        () = shared.drain.graceful.cancelled() => None,
    }
}

/// HTTP/1.1 with keep-alive and upgrades on a caller connection, until the caller leaves or shutdown.
async fn serve_http(shared: &Arc<Shared>, tcp: TcpStream) {
    let service_shared = shared.clone();
    let service = service_fn(move |req| proxy::handle(service_shared.clone(), req));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.header_read_timeout)
        .max_buf_size(CALLER_BUFFER_BYTES)
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    tokio::pin!(conn);
    let drain = &shared.drain;
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = drain.graceful.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                result = conn.as_mut() => result,
                () = drain.kill.cancelled() => Ok(()),
            }
        }
    };
    if let Err(err) = result {
        debug!(error = %err, "caller connection ended");
    }
}
