//! Service providers and consumers for applications, on gRPC (tonic) with discovery through
//! the Strata registry.
//!
//! - [`Provider`] serves tonic services, registers itself as an ephemeral instance kept
//!   alive by heartbeats, serves `grpc.health.v1`, reflection and `/metrics`, and on shutdown
//!   deregisters, then drains.
//! - [`Consumer`] is a channel to `strata://SERVICE` for tonic's generated clients: it follows
//!   the registry ([`Discovery`]), balances with the gateway's policies, and applies circuit
//!   breakers, outlier detection, retry budgets, concurrency limits and gRPC service-config
//!   retries and hedging ([`ServiceConfig`]) from `strata-resilience`.
//! - Both carry the call context ([`CallContext`]): a handler's outgoing calls inherit what
//!   is left of its deadline and continue its trace (W3C `traceparent`), and spans go over
//!   OTLP to the Strata node the client points at (its monitor), or where the OpenTelemetry
//!   variables or [`init_tracing`] say ([`trace`]).
//! - [`RestConsumer`] gives plain HTTP services the same discovery, balancing and breakers.

pub mod consumer;
pub mod context;
pub mod discovery;
mod metrics;
pub mod provider;
pub mod rest;
pub mod service_config;
pub mod trace;
mod watched;

pub use consumer::{BreakerScope, Consumer, ConsumerBuilder};
pub use context::{CallContext, TraceParent};
pub use discovery::{Discovery, Selector};
pub use provider::{Provider, ProviderError};
pub use rest::RestConsumer;
pub use service_config::ServiceConfig;
pub use trace::{init_tracing, TraceConfig};
