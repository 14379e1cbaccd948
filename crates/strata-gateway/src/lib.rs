//! The API gateway, load balancer and frontend router (component `gateway`).
//!
//! - [`model`]: the route table as users write it (TOML or JSON): routes and upstream groups.
//! - [`route`]: validation, compilation and the matcher, with the documented match order.
//! - [`access_log`]: JSON access log lines, written by a task of their own.
//! - [`balance`]: load-balancing policies over an upstream's members.
//! - [`upstream`]: upstream groups at run time, static or following a registry service; the
//!   counted connections to their members.
//! - [`pool`]: HTTP/1.1 connections to members, each checked out by one request and driven in
//!   that request's task.
//! - [`idle`]: bodies that give up when their bytes stop (a route's `idle_timeout`).
//! - [`health`]: active health checks of static members.
//! - [`metrics`]: the gateway's Prometheus metrics, per route and per upstream.
//! - [`edge_auth`]: API keys and JSON Web Tokens on routes.
//! - [`edge`]: CORS, client address lists, the client behind trusted proxies.
//! - [`cluster_limits`]: gateway nodes sharing a cluster-wide rate by their traffic.
//! - [`guard`]: a route's rate limits, concurrency limit, fallback and retry policy.
//! - [`files`]: static files with ETag, Last-Modified, Range and precompressed variants.
//! - [`oidc`]: single sign-on for browser routes (OpenID Connect, code flow with PKCE).
//! - [`proxy`]: the listener and the forwarding path.
//! - [`proxy_protocol`]: the PROXY protocol (v1 and v2) header a load balancer in front sends.
//! - [`sni`]: certificates of the HTTPS listener by SNI name, reloaded when files change.
//! - `span`: each request's span (W3C `traceparent` in, a child to the upstream, OTLP out).
//! - [`standalone`]: `strata gateway --config FILE`, the gateway without a cluster.
//! - [`tcp`]: TCP (L4) listeners of the table, balancing raw connections.
//! - [`component`]: the node component, where the table comes from (the config center or a
//!   file), and the admin API under `/v1/gateway/`.
//!
//! **Architecture Invariant:** a request uses one table from start to end: the table in force
//! is an `Arc` swapped whole, so a reload never fails or changes a request in flight.
//! **Architecture Invariant:** a table is applied only after it compiles; an invalid one is
//! refused (at publish through the admin API, and again by every node) and the previous table
//! keeps serving.

pub mod access_log;
pub mod balance;
pub mod cluster_limits;
pub mod component;
pub mod deadline;
pub mod edge;
pub mod edge_auth;
pub mod files;
pub mod front;
pub mod guard;
pub mod h1;
pub mod health;
pub mod idle;
pub mod metrics;
pub mod model;
pub mod oidc;
pub mod pool;
pub mod proxy;
pub mod proxy_protocol;
pub mod route;
pub mod sni;
mod span;
pub mod standalone;
pub mod tcp;
pub mod upstream;

pub use component::GatewayComponent;
pub use model::{Table, TableError};
pub use route::Compiled;
