//! The agent: an HTTP/1.1 forward proxy on loopback whose every request travels as a stream on one tunnel to the
//! server.
//!
//! Shape: [`Agent::bind`] checks the TLS material and opens the proxy port, [`Agent::run`] keeps the tunnel up
//! (see `keeper`) and serves callers until the token is cancelled, then drains. It does not know about the server's
//! internals: everything it needs is the wire mapping in `tunnel`.

mod keeper;
pub(crate) mod proxy;
mod window;

use anyhow::Context as _;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, debug_span, info, warn};

use crate::config::AgentConfig;
use crate::metrics::{AgentMetrics, record_cert_expiry, watch_cert_expiry};
use crate::shutdown::{Drain, GRACE_PERIOD};
use crate::tls;
use crate::tunnel::MAX_HEADER_BYTES;
use keeper::{Keeper, TunnelState};

/// Pause after a failed `accept()` (out of descriptors, say), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// State shared by the proxy's connections.
pub(crate) struct Shared {
    config: AgentConfig,
    tunnel: watch::Receiver<TunnelState>,
    metrics: Arc<AgentMetrics>,
    drain: Drain,
}

/// A bound agent, ready to [`run`](Agent::run).
pub struct Agent {
    listener: TcpListener,
    shared: Arc<Shared>,
    keeper: Keeper,
}

/// Reloads the agent's certificate, key and CA (SIGHUP); the next tunnel uses them, the current one stays up.
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
        record_cert_expiry(
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
    pub async fn bind(config: AgentConfig) -> anyhow::Result<Self> {
        let tls_config = load_tls(&config)?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let metrics = Arc::new(AgentMetrics::new());
        record_cert_expiry(&config.tls.cert_file, &metrics.cert_expiry_seconds, "agent");
        let (state, tunnel) = watch::channel(TunnelState::Down);
        let keeper = Keeper {
            server_host: config.server_host.clone(),
            server_port: config.server_port,
            connect_timeout: config.connect_timeout,
            keepalive: config.keepalive,
            tls: Arc::new(RwLock::new(tls_config)),
            state,
            metrics: metrics.clone(),
        };
        Ok(Self {
            listener,
            shared: Arc::new(Shared {
                config,
                tunnel,
                metrics,
                drain: Drain::default(),
            }),
            keeper,
        })
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
            config: self.shared.config.clone(),
            tls: self.keeper.tls.clone(),
            metrics: self.shared.metrics.clone(),
        }
    }

    /// Keeps the tunnel up and serves callers until `shutdown` is cancelled; then stops accepting, lets requests
    /// and streams finish for the grace period, and returns.
    ///
    /// # Errors
    /// None at present; the signature leaves room for fatal listener errors.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let shared = self.shared;
        let keeper_stop = CancellationToken::new();
        let keeper_task = tokio::spawn(self.keeper.run(keeper_stop.clone()));
        watch_cert_expiry(
            &shared.drain,
            shared.config.tls.cert_file.clone(),
            shared.metrics.cert_expiry_seconds.clone(),
            "agent",
        );
        info!(addr = %self.listener.local_addr()?, "agent listening");
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
            shared
                .drain
                .tasks
                .spawn(serve_caller(shared.clone(), tcp).instrument(span));
        }
        drop(self.listener);
        info!("shutdown started");
        shared.drain.clone().run(GRACE_PERIOD).await;
        keeper_stop.cancel();
        let _ = keeper_task.await;
        info!("shutdown finished");
        Ok(())
    }
}

/// hyper's buffer limit for a caller connection, reading and writing alike. Writing, it lets hyper gather up to
/// 256 KiB of a response body into one socket write (with 64 KiB frames, per GiB of an absolute-form download,
/// 16,233 writes became 4,223). Reading, hyper answers 431 to a head that does not fit; `proxy::handle` answers
/// 431 to a head over [`MAX_HEADER_BYTES`] that does.
const CALLER_BUFFER_BYTES: usize = 4 * MAX_HEADER_BYTES;

/// One caller connection: HTTP/1.1 with keep-alive and upgrades, until the caller leaves or shutdown.
async fn serve_caller(shared: Arc<Shared>, tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    shared.metrics.caller_connections.inc();
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
    shared.metrics.caller_connections.dec();
    if let Err(err) = result {
        debug!(error = %err, "caller connection ended");
    }
}
