//! Wire types shared by every Strata component, and no logic.
//!
//! - [`kv`]: etcd-shaped KV requests and responses (range, put, delete-range, txn, watch
//!   events, leases). The same structs travel in the Raft log (postcard) and in the native
//!   HTTP/JSON API (serde_json), so the two can never drift apart.
//! - [`error`]: [`ErrorCode`] and [`ApiError`], mapped once to HTTP status codes.
//! - [`cluster`]: node identity ([`NodeInfo`]) and cluster status.
//! - [`bytes_serde`]: how byte strings appear in JSON (UTF-8 text, or `{"b64": ...}`).
//!
//! **API Boundary:** changing a type here changes the Raft log format and the public API.
//! Add fields with `#[serde(default)]` only.
//!
//! **Bad input:** decoding never panics and never recurses without bound: batches and nested
//! transactions are refused past [`MAX_NESTING`] levels (postcard itself has no limit).

pub mod bytes_serde;
pub mod cluster;
pub mod error;
pub mod kv;
mod nesting;

pub use cluster::{ClusterStatus, MemberStatus, NodeInfo};
pub use error::{ApiError, ErrorCode};
pub use nesting::MAX_NESTING;
