//! Certificate expiry while a role runs: the seconds left go to the role's `cert_expiry_seconds` gauge, and a
//! certificate within 30 days of its end is warned about. Checked when the role binds, on each reload and once a
//! day. Reading the certificate is `tls`'s; this module only schedules the check and reports it.

use prometheus_client::metrics::gauge::Gauge;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::shutdown::Drain;

/// How often certificate expiry is checked (and warned about) while running.
const EXPIRY_CHECK_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// Certificates closer than this to expiry are warned about.
const EXPIRY_WARNING_SECS: i64 = 30 * 24 * 3600;

/// Sets `gauge` to the seconds until `cert` expires and warns when that is under 30 days.
pub(crate) fn record(cert: &Path, gauge: &Gauge, role: &'static str) {
    if let Ok(seconds) = crate::tls::seconds_to_expiry(cert) {
        gauge.set(seconds);
        if seconds < EXPIRY_WARNING_SECS {
            tracing::warn!(
                role,
                days = seconds / 86_400,
                "certificate expires within 30 days"
            );
        }
    }
}

/// Re-checks certificate expiry once a day until the role starts draining.
pub(crate) fn watch(drain: &Drain, cert: PathBuf, gauge: Gauge, role: &'static str) {
    let stop = drain.graceful.clone();
    drain.tasks.spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(EXPIRY_CHECK_INTERVAL) => record(&cert, &gauge, role),
            }
        }
    });
}
