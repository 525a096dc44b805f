//! The exit server: accepts agents over TLS 1.3 with client certificates, serves each tunnel as an HTTP/2
//! connection, and relays every stream to its target (see `tunnel` for the mapping).
//!
//! Shape: [`Server::bind`] opens the sockets and loads the TLS material, [`Server::run`] serves until the token is
//! cancelled and then drains. It does not know about the agent.

mod dial;
mod guard;
pub(crate) mod policy;
mod service;
mod target_pool;

use anyhow::Context as _;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::ServerConfig;
use crate::error::BoxError;
use crate::expiry;
use crate::metrics::ServerMetrics;
use crate::reload::{self, Watched};
use crate::shutdown::{Drain, GRACE_PERIOD};
use crate::tls;
use crate::tunnel::transport;
use dial::Dialer;
use guard::HandshakeGuard;
use policy::TargetPolicy;
use target_pool::TargetPool;

/// Pause after a failed `accept()` (out of descriptors, say), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// State shared by every connection and stream of one server.
pub(crate) struct Shared {
    config: ServerConfig,
    acceptor: RwLock<TlsAcceptor>,
    metrics: ServerMetrics,
    dialer: Arc<Dialer>,
    targets: Arc<TargetPool>,
    limiter: Option<DefaultKeyedRateLimiter<Arc<str>>>,
    handshakes: HandshakeGuard,
    /// Established agent tunnels, so a reload can close those whose certificate was revoked.
    live: Mutex<HashMap<u64, LiveAgent>>,
    drain: Drain,
}

/// An established agent tunnel.
struct LiveAgent {
    serial: Option<Vec<u8>>,
    close: CancellationToken,
}

/// A bound server, ready to [`run`](Server::run).
pub struct Server {
    listener: TcpListener,
    health: TcpListener,
    shared: Arc<Shared>,
    /// The TLS files as they were when loaded, looked at every `poll` while running.
    files: Watched,
    poll: Duration,
}

/// Reloads the server's certificates, key, CA and CRL (on SIGHUP, and when their files change). New handshakes use
/// the new material; established tunnels stay up, except those whose client certificate the new CRL revokes.
#[derive(Clone)]
pub struct ServerReload(Arc<Shared>);

impl ServerReload {
    /// # Errors
    /// When the new material does not load; the old material then stays in use.
    pub fn reload(&self) -> anyhow::Result<()> {
        let config = &self.0.config;
        let tls_config = load_tls(config)?;
        let acceptor = TlsAcceptor::from(tls_config);
        match self.0.acceptor.write() {
            Ok(mut guard) => *guard = acceptor,
            Err(poisoned) => *poisoned.into_inner() = acceptor,
        }
        expiry::record(
            &config.tls.cert_file,
            &self.0.metrics.cert_expiry_seconds,
            "server",
        );
        info!("certificates reloaded");
        if let Some(crl) = &config.crl_file {
            let revoked = tls::revoked_serials(crl)?;
            let live = self.0.live.lock().unwrap_or_else(|p| p.into_inner());
            for agent in live.values() {
                if agent.serial.as_ref().is_some_and(|s| revoked.contains(s)) {
                    agent.close.cancel();
                }
            }
        }
        Ok(())
    }
}

/// The files of the server's TLS material, in the order they are watched.
fn tls_files(config: &ServerConfig) -> Vec<std::path::PathBuf> {
    let tls = &config.tls;
    [&tls.cert_file, &tls.key_file, &tls.ca_cert_file]
        .into_iter()
        .chain(&config.crl_file)
        .cloned()
        .collect()
}

fn load_tls(config: &ServerConfig) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    Ok(tls::load_server_config(
        &config.tls.cert_file,
        &config.tls.key_file,
        &config.tls.ca_cert_file,
        config.crl_file.as_deref(),
    )?)
}

impl Server {
    /// Loads and checks the TLS material, then binds the tunnel port and the health port.
    ///
    /// # Errors
    /// Unusable certificates or keys (the message names the file), a bad destination rule, or a port that cannot
    /// be bound.
    pub async fn bind(config: ServerConfig) -> anyhow::Result<Self> {
        let files = Watched::new(tls_files(&config));
        let tls_config = load_tls(&config)?;
        let policy = TargetPolicy::new(
            config.allow_private_targets,
            &config.deny_targets,
            &config.allow_targets,
        )
        .map_err(anyhow::Error::msg)?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let health = TcpListener::bind(config.health_addr)
            .await
            .with_context(|| format!("cannot listen on health_addr {}", config.health_addr))?;
        let dialer = Arc::new(Dialer::new(policy, config.connect_timeout));
        let drain = Drain::default();
        let targets = Arc::new(TargetPool::new(dialer.clone(), drain.clone()));
        let limiter = NonZeroU32::new(config.rate_limit_per_agent).map(|rate| {
            let burst = NonZeroU32::new(config.rate_limit_burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        let metrics = ServerMetrics::new();
        expiry::record(
            &config.tls.cert_file,
            &metrics.cert_expiry_seconds,
            "server",
        );
        Ok(Self {
            listener,
            health,
            shared: Arc::new(Shared {
                acceptor: RwLock::new(TlsAcceptor::from(tls_config)),
                metrics,
                dialer,
                targets,
                limiter,
                handshakes: HandshakeGuard::default(),
                live: Mutex::new(HashMap::new()),
                drain,
                config,
            }),
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

    /// The address agents connect to.
    ///
    /// # Panics
    /// Never: a bound listener has an address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has a local address")
    }

    /// The address of `/healthz` and `/metrics`.
    ///
    /// # Panics
    /// Never: a bound listener has an address.
    pub fn health_addr(&self) -> SocketAddr {
        self.health
            .local_addr()
            .expect("a bound listener has a local address")
    }

    /// A handle that reloads the TLS material.
    pub fn reloader(&self) -> ServerReload {
        ServerReload(self.shared.clone())
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, lets streams finish for the grace period, and
    /// returns. While it serves, the TLS files are looked at for changes and reloaded (see [`ServerReload`]).
    ///
    /// # Errors
    /// None at present; the signature leaves room for fatal listener errors.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let shared = self.shared;
        let drain = shared.drain.clone();
        let admin_shared = shared.clone();
        let health_addr = self.health.local_addr()?;
        drain.tasks.spawn(crate::admin::serve(
            self.health,
            move |req| service::admin(&admin_shared, req),
            drain.clone(),
        ));
        drain.tasks.spawn(shared.targets.clone().sweep());
        expiry::watch(
            &shared.drain,
            shared.config.tls.cert_file.clone(),
            shared.metrics.cert_expiry_seconds.clone(),
            "server",
        );
        let reloader = ServerReload(shared.clone());
        reload::watch(&drain, self.files, self.poll, "server", move || {
            reloader.reload()
        });
        let local = self.listener.local_addr()?;
        info!(addr = %local, health = %health_addr, "server listening");
        let slots = Arc::new(tokio::sync::Semaphore::new(shared.config.max_connections));
        let shards = crate::shard::Shards::start(crate::shard::count())?;
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
            if !shared.handshakes.allows(peer.ip()) {
                shared.metrics.connections_refused.inc();
                debug!(%peer, "too many failed handshakes from this address, connection refused");
                continue;
            }
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                shared.metrics.connections_refused.inc();
                warn!(%peer, "max_connections reached, connection refused");
                continue;
            };
            next_id += 1;
            let id = next_id;
            let span = info_span!("agent", %peer, conn = id);
            let shared = shared.clone();
            let handed = shards.hand_over(None, tcp, &drain.tasks, span, move |tcp| async move {
                serve_agent(&shared, tcp, peer, id).await;
                drop(permit);
            });
            if let Err(err) = handed {
                warn!(%peer, error = %err, "cannot hand the connection to a worker");
            }
        }
        drop(self.listener);
        info!("shutdown started");
        drain.run(GRACE_PERIOD).await;
        shards.stop().await;
        info!("shutdown finished");
        Ok(())
    }
}

/// One agent connection: TLS handshake (bounded in time), then HTTP/2 until the agent leaves or shutdown.
async fn serve_agent(shared: &Arc<Shared>, tcp: TcpStream, peer: SocketAddr, id: u64) {
    let acceptor = match shared.acceptor.read() {
        Ok(guard) => guard.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    let (socket, writes) = transport::socket(tcp, |read| read);
    let handshake = tokio::time::timeout(
        shared.config.tls_handshake_timeout,
        transport::accept_tls(&acceptor, socket),
    );
    let stream = match handshake.await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            shared.metrics.handshake_failures.inc();
            shared.handshakes.record_failure(peer.ip());
            warn!(%peer, reason = %err, "agent refused: handshake failed");
            return;
        }
        Err(_) => {
            shared.metrics.handshake_failures.inc();
            shared.handshakes.record_failure(peer.ip());
            warn!(%peer, reason = "handshake timed out", "agent refused: handshake failed");
            return;
        }
    };
    // rustls completes a handshake without ALPN when the client offers none; the tunnel speaks only h2.
    if stream.get_ref().1.alpn_protocol() != Some(tls::ALPN_H2) {
        shared.metrics.handshake_failures.inc();
        shared.handshakes.record_failure(peer.ip());
        warn!(%peer, reason = "no h2 in ALPN", "agent refused: handshake failed");
        return;
    }
    let serial = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|der| tls::cert_serial(der));
    let close = CancellationToken::new();
    shared
        .live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(
            id,
            LiveAgent {
                serial,
                close: close.clone(),
            },
        );
    let agent: Arc<str> = tls::peer_common_name(stream.get_ref().1)
        .unwrap_or_else(|| "unknown".to_string())
        .into();
    info!(%peer, cn = %agent, "agent connected");
    shared.metrics.agent_connections.inc();

    // The connection's writes are gathered while it runs, and sent each time it yields.
    let result = match writes
        .gather_while(serve_streams(shared, &agent, stream, &close))
        .await
    {
        Ok(ended) => ended,
        Err(err) => Err(err.into()),
    };
    shared.metrics.agent_connections.dec();
    shared
        .live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
    match result {
        Ok(Ended::Left) => info!(%peer, cn = %agent, "agent disconnected"),
        Ok(Ended::Revoked) => {
            info!(%peer, cn = %agent, "agent tunnel closed: certificate revoked");
        }
        Err(err) => {
            debug!(error = %err, "agent connection error");
            info!(%peer, cn = %agent, reason = %err, "agent disconnected");
        }
    }
}

/// How a tunnel ended without an error.
enum Ended {
    /// The agent closed it, or shutdown drained it.
    Left,
    /// Its certificate was revoked by a reload.
    Revoked,
}

/// Serves the HTTP/2 connection of one tunnel: each stream in a task of its own (on this worker, owned by the
/// tunnel), keep-alive pings, and on shutdown a GOAWAY and then the streams' grace period.
async fn serve_streams<T>(
    shared: &Arc<Shared>,
    agent: &Arc<str>,
    io: T,
    close: &CancellationToken,
) -> Result<Ended, BoxError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut conn = transport::h2_server(io, shared.config.max_streams_per_agent).await?;
    let mut pings = conn.ping_pong().ok_or("no ping handle")?;
    let keepalive = keepalive(&mut pings, shared.config.keepalive);
    tokio::pin!(keepalive);
    let drain = &shared.drain;
    let mut draining = false;
    // The streams' tasks belong to the tunnel: when it ends, whatever of them is left is aborted with it.
    let mut streams = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = conn.accept() => match accepted {
                Some(Ok((req, respond))) => {
                    // Finished streams are reaped as new ones come, so the set holds about the live ones.
                    while streams.try_join_next().is_some() {}
                    // Boxed: the stream's state is moved several times on its way into the task, and a
                    // pointer is cheaper to move than the state.
                    let stream = service::handle_stream(shared.clone(), agent.clone(), req, respond);
                    streams.spawn(Box::pin(stream).in_current_span());
                }
                Some(Err(err)) => return Err(err.into()),
                None => return Ok(Ended::Left),
            },
            lost = &mut keepalive => return Err(lost),
            () = close.cancelled() => return Ok(Ended::Revoked),
            () = drain.graceful.cancelled(), if !draining => {
                draining = true;
                conn.graceful_shutdown();
            }
            () = drain.kill.cancelled(), if draining => return Ok(Ended::Left),
        }
    }
}

/// Pings the agent every `every` and fails once a ping goes unanswered for as long: a link that went silent
/// (a dropped route, a sleeping laptop) is noticed and the tunnel's resources are freed.
async fn keepalive(pings: &mut h2::PingPong, every: Duration) -> BoxError {
    loop {
        tokio::time::sleep(every).await;
        match tokio::time::timeout(every, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => return err.into(),
            Err(_) => return format!("no answer to a keep-alive ping in {every:?}").into(),
        }
    }
}
