//! The MVCC key-value state machine, with etcd v3 semantics.
//!
//! [`KvStore`] is a pure, deterministic state machine: [`KvStore::apply`] takes a
//! [`KvCommand`](strata_proto::kv::KvCommand) from the Raft log and returns its result plus the
//! watch [`Event`](strata_proto::kv::Event)s it produced. It does no I/O and reads no clock, so
//! every replica that applies the same log reaches the same state, and the whole thing is
//! tested as a state machine against a simple model (see `tests/model.rs`).
//!
//! # Layout
//! - Every key has a history of versions, ordered by revision `(main, sub)`. `main` is the
//!   global revision, bumped once per write request (a txn is one revision); `sub` orders the
//!   changes inside one request. A deletion is a tombstone version.
//! - Reads at revision `R` pick, for each key, the last version with `main <= R`.
//! - Compaction at `C` drops every version that no read at `>= C` can see.
//! - Watch catch-up rebuilds events from the histories ([`KvStore::events_since`]).
//! - Leases hold the set of attached keys; revoking one deletes them in one revision.
//!
//! # Invariants
//! - `revision` only grows; `compact_revision <= revision`.
//! - A key's versions are strictly increasing in `(main, sub)`.
//! - A lease's key set equals the set of live keys whose latest version names that lease.
//! - Applying a command either fully succeeds or changes nothing (validation happens before
//!   any mutation).

mod store;

pub use store::{spec_contains, KvMemory, KvStats, KvStore, Replay};
