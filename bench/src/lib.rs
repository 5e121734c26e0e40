//! `moltops-bench`: N simulated agents in one process against a real control plane, and the
//! figures that come out of it.
//!
//! - [`agent`]: one simulated agent — enrollment with its own key through the real `Enroll` RPC,
//!   one mTLS stream, heartbeats, commands answered without touching the host, an in-memory
//!   journal so a re-delivered command is never run twice.
//! - [`fleet`]: bulk enrollment, one task per agent, fleet-wide controls (wait until connected,
//!   drop every stream, drop mid-command).
//! - [`fanout`]: one job per node through REST, followed until recorded, checked exactly once.
//! - [`ledger`]: the per-command counts and the exactly-once verdict.
//! - [`scenario`]: a whole run (enroll, connect, steady, fanout, api, reconnect, restart) and its
//!   report.
//! - [`server`]: a control plane the bench starts, restarts and stops (`--spawn-server`).
//! - [`rest`], [`procfs`], [`stats`]: the REST calls, `/proc` readings, percentiles.

pub mod agent;
pub mod error;
pub mod fanout;
pub mod fleet;
pub mod ledger;
pub mod procfs;
pub mod rest;
pub mod scenario;
pub mod server;
pub mod stats;

pub use error::{BenchError, BenchResult};

/// reqwest is built without a crypto provider (the workspace's choice): install ring once for
/// the process before the first HTTPS or TLS call. Calling it again is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
