//! Wire types shared by every Strata component, and no logic.
//!
//! - [`kv`]: etcd-shaped KV requests and responses (range, put, delete-range, txn, watch
//!   events, leases), as the native HTTP/JSON API and the service layer use them.
//! - [`log`]: the Raft log's own, versioned format: frozen types that commands and member
//!   addresses are written through (postcard), and the rule for changing it.
//! - [`error`]: [`ErrorCode`] and [`ApiError`], mapped once to HTTP status codes.
//! - [`cluster`]: node identity ([`NodeInfo`]) and cluster status.
//! - [`bytes_serde`]: how byte strings appear in JSON (UTF-8 text, or `{"b64": ...}`).
//!
//! **API Boundary:** changing a type in [`kv`] changes the public API (add fields with
//! `#[serde(default)]`); it changes the log only through [`log`]'s conversions, which a test
//! pins to the bytes format 1 wrote.
//!
//! **Bad input:** decoding never panics and never recurses without bound: batches and nested
//! transactions are refused past [`MAX_NESTING`] levels (postcard itself has no limit).

pub mod bytes_serde;
pub mod cluster;
pub mod error;
pub mod kv;
pub mod log;
mod nesting;

pub use cluster::{ClusterStatus, MemberStatus, NodeInfo};
pub use error::{ApiError, ErrorCode};
pub use nesting::MAX_NESTING;
