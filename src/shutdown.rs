//! Signals and graceful shutdown.
//!
//! [`signals`] owns the root cancellation token. On Unix, SIGINT or SIGTERM cancels it (once, logged) and SIGHUP asks
//! for a reload. On Windows, Ctrl-C, Ctrl-Break, closing the console window, logoff and system shutdown all cancel it;
//! Windows has no SIGHUP, so there reloads come only from watching the files. Role code receives tokens and never
//! installs signal handlers itself. [`Drain`] is how a role stops: connections are asked to finish (HTTP/2 GOAWAY,
//! HTTP/1.1 close after the current response), and whatever is still running after the grace period is cut off.

use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// How long in-flight requests and streams may run on after shutdown starts.
pub const GRACE_PERIOD: Duration = Duration::from_secs(10);

/// Installs the signal handlers. Returns the root token (cancelled on the first shutdown signal) and a reload counter
/// (bumped on each SIGHUP; on Windows it never moves).
///
/// # Errors
/// When the signal handlers cannot be installed.
pub fn signals() -> std::io::Result<(CancellationToken, watch::Receiver<u64>)> {
    let mut source = platform::Signals::install()?;
    let token = CancellationToken::new();
    let (reload_tx, reload_rx) = watch::channel(0u64);
    let root = token.clone();
    tokio::spawn(async move {
        let signal = source.shutdown_requested(&reload_tx).await;
        info!(signal, "shutdown requested");
        root.cancel();
    });
    Ok((token, reload_rx))
}

#[cfg(unix)]
mod platform {
    use tokio::signal::unix::{Signal, SignalKind, signal};
    use tokio::sync::watch;
    use tracing::info;

    /// SIGINT and SIGTERM stop; SIGHUP reloads.
    pub(super) struct Signals {
        interrupt: Signal,
        terminate: Signal,
        hangup: Signal,
    }

    impl Signals {
        pub(super) fn install() -> std::io::Result<Self> {
            Ok(Self {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
                hangup: signal(SignalKind::hangup())?,
            })
        }

        /// Waits for a shutdown signal and names it; bumps `reload` on each SIGHUP meanwhile.
        pub(super) async fn shutdown_requested(
            &mut self,
            reload: &watch::Sender<u64>,
        ) -> &'static str {
            loop {
                tokio::select! {
                    _ = self.interrupt.recv() => return "SIGINT",
                    _ = self.terminate.recv() => return "SIGTERM",
                    _ = self.hangup.recv() => {
                        info!(signal = "SIGHUP", "reload requested");
                        reload.send_modify(|n| *n += 1);
                    }
                }
            }
        }
    }
}

#[cfg(windows)]
mod platform {
    use tokio::signal::windows::{
        CtrlBreak, CtrlC, CtrlClose, CtrlLogoff, CtrlShutdown, ctrl_break, ctrl_c, ctrl_close,
        ctrl_logoff, ctrl_shutdown,
    };
    use tokio::sync::watch;

    /// Every console event stops: Ctrl-C, Ctrl-Break, console close, logoff, shutdown. For the last three Windows
    /// ends the process a few seconds after the event whether or not the drain has finished (tokio's handler holds
    /// the event open until then).
    pub(super) struct Signals {
        c: CtrlC,
        brk: CtrlBreak,
        close: CtrlClose,
        logoff: CtrlLogoff,
        shutdown: CtrlShutdown,
    }

    impl Signals {
        pub(super) fn install() -> std::io::Result<Self> {
            Ok(Self {
                c: ctrl_c()?,
                brk: ctrl_break()?,
                close: ctrl_close()?,
                logoff: ctrl_logoff()?,
                shutdown: ctrl_shutdown()?,
            })
        }

        /// Waits for a console event and names it. Nothing here reloads: Windows has no SIGHUP.
        pub(super) async fn shutdown_requested(
            &mut self,
            _reload: &watch::Sender<u64>,
        ) -> &'static str {
            tokio::select! {
                _ = self.c.recv() => "ctrl-c",
                _ = self.brk.recv() => "ctrl-break",
                _ = self.close.recv() => "ctrl-close",
                _ = self.logoff.recv() => "ctrl-logoff",
                _ = self.shutdown.recv() => "ctrl-shutdown",
            }
        }
    }
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
