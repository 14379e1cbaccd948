//! The types Strata's APIs speak, with no server code in them, so the CLI, `strata-client`
//! and the servers share one definition and a client links no server.
//!
//! - [`registry`]: what `/v1/registry` takes and returns (registrations, instances, checks,
//!   query results, watch messages), and [`registry::RegistryService`], the registry as
//!   another component calls it.
//! - [`config`]: what `/v1/config` takes and returns, the config center's stored records, and
//!   [`config::ConfigService`].
//! - [`backoff`]: doubling pauses between retries, reset on success.
//! - [`units`]: human durations (`"10s"`) and sizes (`"64MiB"`) as config files and APIs write
//!   them.
//!
//! **Architecture Invariant:** depends on no Strata crate but `strata-proto`, and on nothing
//! that does I/O (no tokio, no HTTP); `crates/strata/tests/components.rs` checks it.

/// A boxed future, as the service traits return (object-safe async methods).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

pub mod backoff;
pub mod config;
pub mod registry;
pub mod units;
