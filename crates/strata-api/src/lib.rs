//! The types Strata's APIs speak, with no server code in them, so the CLI, `strata-client`
//! and the servers share one definition and a client links no server.
//!
//! - [`registry`]: what `/v1/registry` takes and returns (registrations, instances, checks,
//!   query results, watch messages).
//! - [`config`]: what `/v1/config` takes and returns, and the config center's stored records.
//! - [`backoff`]: doubling pauses between retries, reset on success.
//! - [`units`]: human durations (`"10s"`) and sizes (`"64MiB"`) as config files and APIs write
//!   them.
//!
//! **Architecture Invariant:** depends on no Strata crate but `strata-proto`, and on nothing
//! that does I/O (no tokio, no HTTP); `crates/strata/tests/components.rs` checks it.

pub mod backoff;
pub mod config;
pub mod registry;
pub mod units;
