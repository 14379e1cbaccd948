//! The etcd v3 gRPC API over Strata's KV service.
//!
//! The services translate etcd's protobuf messages to and from `strata-proto` types and call
//! a [`KvApi`], which `strata-kvservice` implements on top of the same service layer as
//! the native HTTP API, so behaviour cannot drift between the two. etcd clients (`etcdctl`,
//! Go's clientv3, the `etcd-client` crate) work unchanged: package, service and method names
//! and field numbers are etcd's, and so are the status codes and messages of errors.
//!
//! # How to use
//! ```no_run
//! # async fn run(backend: std::sync::Arc<dyn strata_etcd::KvApi>) -> Result<(), strata_etcd::Error> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7702").await.expect("bind");
//! let shutdown = async { tokio::signal::ctrl_c().await.ok(); };
//! strata_etcd::serve(listener, backend, 1536 * 1024, None, shutdown).await
//! # }
//! ```
//! [`routes`] returns the same services for mounting on a tonic server of one's own.
//!
//! # Layout
//! - `proto/` and [`pb`]: Strata's own protobuf files for etcd's `etcdserverpb`, `mvccpb`,
//!   `v3lockpb` and `v3electionpb` packages, compiled by `build.rs` with `protox` (no
//!   system `protoc`). Clients are generated too, for tests and tools.
//! - One module per service: `kv`, `watch`, `lease`, `cluster`, `maintenance`, `lock`,
//!   `election`; `convert` moves fields between the two models; `error` is the one place
//!   where errors become etcd statuses. `gateway`: etcd's JSON gateway (`POST /v3/kv/range`
//!   and the other unary calls) on the same port, handing each request to the same service.
//!
//! # Invariants
//! - Every response header carries the cluster id, member id, revision and Raft term.
//! - No task is spawned: each stream is driven by tonic polling it, so dropping a stream
//!   drops every backend receiver it holds, which cancels the watches behind it.
//! - Nothing from the network is unwrapped: malformed or oversized requests become statuses.

mod auth;
mod cluster;
mod component;
mod context;
mod convert;
mod election;
mod error;
mod gateway;
mod kv;
mod lease;
mod lock;
mod maintenance;
mod oversize;
pub mod pb;
mod server;
mod watch;

pub use component::EtcdComponent;
pub use maintenance::ETCD_VERSION;
pub use server::{routes, serve, Error, GRPC_OVERHEAD_BYTES};
pub use strata_store::{BoxFuture, KvApi, LockGuard};
