//! Fluidity: a personal HTTP tunnel.
//!
//! The **agent** is an HTTP/1.1 forward proxy on the user's machine (plain HTTP, HTTPS through CONNECT, WebSocket).
//! It keeps one **tunnel** to the **server**: TLS 1.3 with client certificates from the user's own CA, carrying
//! every caller request as a stream of one HTTP/2 connection. The server dials the **targets** and relays.
//!
//! # Layout
//! From the bottom up; each layer uses only those before it.
//! - `tunnel`: what both roles agree on: the request → stream mapping, header rules, authority parsing, h2
//!   streams as byte streams, the byte splice, and the tunnel's transport (TCP, gathered writes, TLS, HTTP/2
//!   settings). It knows nothing of metrics, statuses or roles. `rules`: the target rule syntax
//!   (`deny_targets`, `allow_targets`), which configuration checks and either role can match.
//! - `config`: layered configuration (defaults, YAML, `FLUIDITY_*` env, flags); `invite`: the one-file onboarding
//!   format (`certs invite`, `join`) and its checks, whose server addresses `config` parses; `certs`: the private
//!   CA and certificates (rcgen); `tls`: rustls configurations and TLS material checks.
//! - `error`: the one mapping from failures to HTTP statuses; `metrics`: counters, gauges and counted bodies, and
//!   their rendering; `shutdown`: signals and graceful drain; `expiry`: certificate expiry while a role runs;
//!   `reload`: reloading the TLS material when its files change; `admin`: `/healthz` and `/metrics`; `shard`:
//!   worker threads that connections are handed to whole.
//! - `agent`: the proxy listener, its service, and the tunnel keeper. `server`: the TLS accept loop, the HTTP/2
//!   service, target dialing, the pool of target connections and the destination policy.
//! - `up`: server and agent in one process; `cli`: the command line (clap).
//!
//! `agent` and `server` never use each other; only `up` composes both.

pub mod agent;
pub mod certs;
pub mod cli;
pub mod config;
// Also in unit tests: they run every fuzz target's property over its committed seeds.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod invite;
pub mod server;
pub mod shutdown;
pub mod tls;
pub mod up;

mod admin;
mod error;
mod expiry;
mod metrics;
mod reload;
mod rules;
mod shard;
mod tunnel;

pub use admin::{HEALTH_CHECK_TIMEOUT, HealthCheckError, check_health, health_url};
pub use agent::Agent;
pub use server::Server;
