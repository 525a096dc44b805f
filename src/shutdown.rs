//! Signals and graceful shutdown.
//!
//! [`signals`] owns the root cancellation token: SIGINT or SIGTERM cancels it (once, logged), SIGHUP asks for a
//! reload. Role code receives tokens and never installs signal handlers itself. [`Drain`] is how a role stops:
//! connections are asked to finish (HTTP/2 GOAWAY, HTTP/1.1 close after the current response), and whatever is still
//! running after the grace period is cut off.

use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// How long in-flight requests and streams may run on after shutdown starts.
pub const GRACE_PERIOD: Duration = Duration::from_secs(10);

/// Installs the signal handlers. Returns the root token (cancelled on SIGINT or SIGTERM) and a reload counter
/// (bumped on each SIGHUP).
///
/// # Errors
/// When the signal handlers cannot be installed.
pub fn signals() -> std::io::Result<(CancellationToken, watch::Receiver<u64>)> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let token = CancellationToken::new();
    let (reload_tx, reload_rx) = watch::channel(0u64);
    let root = token.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = interrupt.recv() => { info!(signal = "SIGINT", "shutdown requested"); break; }
                _ = terminate.recv() => { info!(signal = "SIGTERM", "shutdown requested"); break; }
                _ = hangup.recv() => {
                    info!(signal = "SIGHUP", "reload requested");
                    reload_tx.send_modify(|n| *n += 1);
                }
            }
        }
        root.cancel();
    });
    Ok((token, reload_rx))
}

/// The tasks of one role and the two tokens that stop them: `graceful` asks connections to finish, `kill` cuts off
/// what is left after the grace period.
#[derive(Clone, Debug, Default)]
pub(crate) struct Drain {
    pub(crate) tasks: TaskTracker,
    pub(crate) graceful: CancellationToken,
    pub(crate) kill: CancellationToken,
}

impl Drain {
    /// Asks every task to finish, waits up to `grace`, then cuts off the rest and waits for them to go.
    pub(crate) async fn run(self, grace: Duration) {
        self.graceful.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            warn!(
                remaining = self.tasks.len(),
                "grace period over, closing remaining connections"
            );
            self.kill.cancel();
            self.tasks.wait().await;
        }
    }
}
