//! The Raft log's own format, separate from the API types.
//!
//! What goes into the log and into snapshots is encoded through the frozen types of a format
//! module ([`v1`]), never through the API types directly: [`Command`](crate::kv::Command) and
//! [`NodeInfo`](crate::NodeInfo) serialize by converting to them. So an API type may gain a
//! field for its JSON without changing a single byte of the log, and a change to the log is a
//! deliberate act with a version number.
//!
//! # Versions
//! - **1**: entries are postcard of openraft's `Entry` with these [`v1`] types inside; the
//!   snapshot file has magic `STRATA-SNAPSHOT-1`. Written by every release up to ed1e904.
//! - **2**: the same types; every log entry is stored behind a varint format tag, and the
//!   snapshot file says its format after its magic. A format-1 log is rewritten as format 2
//!   when a newer binary opens it (one atomic batch). Written up to 3ce1470.
//! - **3** ([`FORMAT`], types in [`v3`]): format 2 with variants appended to its enums for
//!   etcd's put and range options (`ignore_value`, `ignore_lease`, sorting, revision
//!   filters), which the state machine now applies itself. Appending keeps every variant
//!   index, so each format-2 byte string decodes under [`v3`] to the same command. A command
//!   that uses none of the new options is written with the old variants, byte for byte as
//!   format 2 wrote it.
//!
//! # Changing the format (the rule)
//! Never edit a type of a released format module. To change what the log holds: write module
//! `vN+1` (a copy of the newest, changed; or, as [`v3`] does, the old structs reused and new
//! variants appended to the enums, so older bytes still decode), point the `From` conversions
//! at it, bump [`FORMAT`], and make the decoders (log store, snapshot restore) turn every
//! older format they meet into the current types. Add a fixture data folder written by the last binary of
//! the old format (`crates/strata/tests/fixtures/`) and extend `tests/upgrade.rs` to open it.
//! A rolling upgrade needs every member to read the new format before any member writes it:
//! ship the reader in one release and the writer in the next.

use crate::kv;

/// The log and snapshot format this build writes.
pub const FORMAT: u32 = 3;

/// The oldest format this build reads.
pub const OLDEST_FORMAT: u32 = 1;

/// Format 1 (and 2): the shapes of the log's commands as released up to ed1e904. Frozen.
pub mod v1 {
    use serde::{Deserialize, Serialize};

    /// A replicated command.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Command {
        /// A KV command.
        Kv(KvCommand),
        /// Several commands applied in order, each with its own revision.
        Batch(#[serde(deserialize_with = "crate::nesting::deserialize")] Vec<Command>),
    }

    /// A KV command.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum KvCommand {
        /// Writes a key.
        Put(Put),
        /// Deletes keys.
        DeleteRange(DeleteRange),
        /// A transaction.
        Txn(Txn),
        /// Compacts history.
        Compact(Compact),
        /// Creates a lease.
        LeaseGrant {
            /// The lease id.
            id: i64,
            /// Its TTL in seconds.
            ttl: i64,
        },
        /// Revokes a lease.
        LeaseRevoke {
            /// The lease id.
            id: i64,
        },
    }

    /// A read inside a transaction.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Range {
        #[serde(with = "crate::bytes_serde")]
        pub key: Vec<u8>,
        #[serde(with = "crate::bytes_serde")]
        pub range_end: Vec<u8>,
        pub prefix: bool,
        pub limit: i64,
        pub revision: i64,
        pub keys_only: bool,
        pub count_only: bool,
        pub serializable: bool,
    }

    /// A put.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Put {
        #[serde(with = "crate::bytes_serde")]
        pub key: Vec<u8>,
        #[serde(with = "crate::bytes_serde")]
        pub value: Vec<u8>,
        pub lease: i64,
        pub prev_kv: bool,
    }

    /// A delete of a key or a range.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct DeleteRange {
        #[serde(with = "crate::bytes_serde")]
        pub key: Vec<u8>,
        #[serde(with = "crate::bytes_serde")]
        pub range_end: Vec<u8>,
        pub prefix: bool,
        pub prev_kv: bool,
    }

    /// What a compare looks at.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum CompareTarget {
        Value(#[serde(with = "crate::bytes_serde")] Vec<u8>),
        Version(i64),
        CreateRevision(i64),
        ModRevision(i64),
        Lease(i64),
    }

    /// How a compare compares.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub enum CompareResult {
        Equal,
        NotEqual,
        Greater,
        Less,
    }

    /// A condition of a transaction.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Compare {
        #[serde(with = "crate::bytes_serde")]
        pub key: Vec<u8>,
        #[serde(with = "crate::bytes_serde")]
        pub range_end: Vec<u8>,
        pub prefix: bool,
        pub result: CompareResult,
        pub target: CompareTarget,
    }

    /// One operation of a transaction branch.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum RequestOp {
        Range(Range),
        Put(Put),
        DeleteRange(DeleteRange),
        Txn(#[serde(deserialize_with = "crate::nesting::deserialize")] Txn),
    }

    /// A transaction.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Txn {
        pub compare: Vec<Compare>,
        pub success: Vec<RequestOp>,
        pub failure: Vec<RequestOp>,
    }

    /// A compaction.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Compact {
        pub revision: i64,
    }

    /// A member's addresses, as the membership in the log and snapshots holds them.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct NodeInfo {
        pub raft_addr: String,
        #[serde(default)]
        pub api_addr: String,
        #[serde(default)]
        pub grpc_addr: String,
    }
}

/// Format 3: format 2's enums with variants appended; the structs of [`v1`] are reused
/// unchanged. Frozen.
pub mod v3 {
    use super::v1;
    use serde::{Deserialize, Serialize};

    /// A replicated command.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Command {
        /// A KV command.
        Kv(KvCommand),
        /// Several commands applied in order, each with its own revision.
        Batch(#[serde(deserialize_with = "crate::nesting::deserialize")] Vec<Command>),
    }

    /// A KV command: [`v1::KvCommand`] plus a put with options.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum KvCommand {
        /// Writes a key.
        Put(v1::Put),
        /// Deletes keys.
        DeleteRange(v1::DeleteRange),
        /// A transaction.
        Txn(Txn),
        /// Compacts history.
        Compact(v1::Compact),
        /// Creates a lease.
        LeaseGrant {
            /// The lease id.
            id: i64,
            /// Its TTL in seconds.
            ttl: i64,
        },
        /// Revokes a lease.
        LeaseRevoke {
            /// The lease id.
            id: i64,
        },
        /// Writes a key keeping its value or lease (new in format 3).
        PutWith(PutWith),
    }

    /// A put with etcd's `ignore_value` / `ignore_lease`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct PutWith {
        pub put: v1::Put,
        pub ignore_value: bool,
        pub ignore_lease: bool,
    }

    /// Order of a range result.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub enum SortOrder {
        None,
        Ascend,
        Descend,
    }

    /// What a range result is sorted by.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub enum SortTarget {
        Key,
        Version,
        Create,
        Mod,
        Value,
    }

    /// A read inside a transaction with sorting and revision filters.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct RangeWith {
        pub range: v1::Range,
        pub sort_order: SortOrder,
        pub sort_target: SortTarget,
        pub min_mod_revision: i64,
        pub max_mod_revision: i64,
        pub min_create_revision: i64,
        pub max_create_revision: i64,
    }

    /// One operation of a transaction branch: [`v1::RequestOp`] plus the new ones.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum RequestOp {
        Range(v1::Range),
        Put(v1::Put),
        DeleteRange(v1::DeleteRange),
        Txn(#[serde(deserialize_with = "crate::nesting::deserialize")] Txn),
        /// New in format 3.
        RangeWith(RangeWith),
        /// New in format 3.
        PutWith(PutWith),
    }

    /// A transaction.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Txn {
        pub compare: Vec<v1::Compare>,
        pub success: Vec<RequestOp>,
        pub failure: Vec<RequestOp>,
    }
}

// API -> log (for writing; clones, since serialization only borrows).

impl From<&kv::PutRequest> for v1::Put {
    fn from(p: &kv::PutRequest) -> Self {
        v1::Put {
            key: p.key.clone(),
            value: p.value.clone(),
            lease: p.lease,
            prev_kv: p.prev_kv,
        }
    }
}

impl From<&kv::DeleteRangeRequest> for v1::DeleteRange {
    fn from(d: &kv::DeleteRangeRequest) -> Self {
        v1::DeleteRange {
            key: d.key.clone(),
            range_end: d.range_end.clone(),
            prefix: d.prefix,
            prev_kv: d.prev_kv,
        }
    }
}

impl From<&kv::RangeRequest> for v1::Range {
    fn from(r: &kv::RangeRequest) -> Self {
        v1::Range {
            key: r.key.clone(),
            range_end: r.range_end.clone(),
            prefix: r.prefix,
            limit: r.limit,
            revision: r.revision,
            keys_only: r.keys_only,
            count_only: r.count_only,
            serializable: r.serializable,
        }
    }
}

impl From<&kv::Compare> for v1::Compare {
    fn from(c: &kv::Compare) -> Self {
        v1::Compare {
            key: c.key.clone(),
            range_end: c.range_end.clone(),
            prefix: c.prefix,
            result: match c.result {
                kv::CompareResult::Equal => v1::CompareResult::Equal,
                kv::CompareResult::NotEqual => v1::CompareResult::NotEqual,
                kv::CompareResult::Greater => v1::CompareResult::Greater,
                kv::CompareResult::Less => v1::CompareResult::Less,
            },
            target: match &c.target {
                kv::CompareTarget::Value(v) => v1::CompareTarget::Value(v.clone()),
                kv::CompareTarget::Version(v) => v1::CompareTarget::Version(*v),
                kv::CompareTarget::CreateRevision(v) => v1::CompareTarget::CreateRevision(*v),
                kv::CompareTarget::ModRevision(v) => v1::CompareTarget::ModRevision(*v),
                kv::CompareTarget::Lease(v) => v1::CompareTarget::Lease(*v),
            },
        }
    }
}

impl From<&crate::NodeInfo> for v1::NodeInfo {
    fn from(n: &crate::NodeInfo) -> Self {
        v1::NodeInfo {
            raft_addr: n.raft_addr.clone(),
            api_addr: n.api_addr.clone(),
            grpc_addr: n.grpc_addr.clone(),
        }
    }
}

// Log -> API (for reading; moves).

impl From<v1::Put> for kv::PutRequest {
    fn from(p: v1::Put) -> Self {
        kv::PutRequest {
            key: p.key,
            value: p.value,
            lease: p.lease,
            prev_kv: p.prev_kv,
            ignore_value: false,
            ignore_lease: false,
        }
    }
}

impl From<v1::DeleteRange> for kv::DeleteRangeRequest {
    fn from(d: v1::DeleteRange) -> Self {
        kv::DeleteRangeRequest {
            key: d.key,
            range_end: d.range_end,
            prefix: d.prefix,
            prev_kv: d.prev_kv,
        }
    }
}

impl From<v1::Range> for kv::RangeRequest {
    fn from(r: v1::Range) -> Self {
        kv::RangeRequest {
            key: r.key,
            range_end: r.range_end,
            prefix: r.prefix,
            limit: r.limit,
            revision: r.revision,
            keys_only: r.keys_only,
            count_only: r.count_only,
            serializable: r.serializable,
            ..Default::default()
        }
    }
}

impl From<v1::Compare> for kv::Compare {
    fn from(c: v1::Compare) -> Self {
        kv::Compare {
            key: c.key,
            range_end: c.range_end,
            prefix: c.prefix,
            result: match c.result {
                v1::CompareResult::Equal => kv::CompareResult::Equal,
                v1::CompareResult::NotEqual => kv::CompareResult::NotEqual,
                v1::CompareResult::Greater => kv::CompareResult::Greater,
                v1::CompareResult::Less => kv::CompareResult::Less,
            },
            target: match c.target {
                v1::CompareTarget::Value(v) => kv::CompareTarget::Value(v),
                v1::CompareTarget::Version(v) => kv::CompareTarget::Version(v),
                v1::CompareTarget::CreateRevision(v) => kv::CompareTarget::CreateRevision(v),
                v1::CompareTarget::ModRevision(v) => kv::CompareTarget::ModRevision(v),
                v1::CompareTarget::Lease(v) => kv::CompareTarget::Lease(v),
            },
        }
    }
}

impl From<v1::NodeInfo> for crate::NodeInfo {
    fn from(n: v1::NodeInfo) -> Self {
        crate::NodeInfo {
            raft_addr: n.raft_addr,
            api_addr: n.api_addr,
            grpc_addr: n.grpc_addr,
        }
    }
}

// Format 3's commands (writing). A command without the new options uses the old variants.

impl From<&kv::Command> for v3::Command {
    fn from(command: &kv::Command) -> Self {
        match command {
            kv::Command::Kv(kv) => v3::Command::Kv(kv.into()),
            kv::Command::Batch(all) => v3::Command::Batch(all.iter().map(Into::into).collect()),
        }
    }
}

impl From<&kv::KvCommand> for v3::KvCommand {
    fn from(command: &kv::KvCommand) -> Self {
        match command {
            kv::KvCommand::Put(p) if p.ignore_value || p.ignore_lease => {
                v3::KvCommand::PutWith(p.into())
            }
            kv::KvCommand::Put(p) => v3::KvCommand::Put(p.into()),
            kv::KvCommand::DeleteRange(d) => v3::KvCommand::DeleteRange(d.into()),
            kv::KvCommand::Txn(t) => v3::KvCommand::Txn(t.into()),
            kv::KvCommand::Compact(c) => v3::KvCommand::Compact(v1::Compact {
                revision: c.revision,
            }),
            kv::KvCommand::LeaseGrant { id, ttl } => {
                v3::KvCommand::LeaseGrant { id: *id, ttl: *ttl }
            }
            kv::KvCommand::LeaseRevoke { id } => v3::KvCommand::LeaseRevoke { id: *id },
        }
    }
}

impl From<&kv::PutRequest> for v3::PutWith {
    fn from(p: &kv::PutRequest) -> Self {
        v3::PutWith {
            put: p.into(),
            ignore_value: p.ignore_value,
            ignore_lease: p.ignore_lease,
        }
    }
}

impl From<&kv::RangeRequest> for v3::RangeWith {
    fn from(r: &kv::RangeRequest) -> Self {
        v3::RangeWith {
            range: r.into(),
            sort_order: match r.sort_order {
                kv::SortOrder::None => v3::SortOrder::None,
                kv::SortOrder::Ascend => v3::SortOrder::Ascend,
                kv::SortOrder::Descend => v3::SortOrder::Descend,
            },
            sort_target: match r.sort_target {
                kv::SortTarget::Key => v3::SortTarget::Key,
                kv::SortTarget::Version => v3::SortTarget::Version,
                kv::SortTarget::Create => v3::SortTarget::Create,
                kv::SortTarget::Mod => v3::SortTarget::Mod,
                kv::SortTarget::Value => v3::SortTarget::Value,
            },
            min_mod_revision: r.min_mod_revision,
            max_mod_revision: r.max_mod_revision,
            min_create_revision: r.min_create_revision,
            max_create_revision: r.max_create_revision,
        }
    }
}

impl From<&kv::TxnRequest> for v3::Txn {
    fn from(t: &kv::TxnRequest) -> Self {
        v3::Txn {
            compare: t.compare.iter().map(Into::into).collect(),
            success: t.success.iter().map(Into::into).collect(),
            failure: t.failure.iter().map(Into::into).collect(),
        }
    }
}

impl From<&kv::RequestOp> for v3::RequestOp {
    fn from(op: &kv::RequestOp) -> Self {
        match op {
            kv::RequestOp::Range(r) if r.needs_format_3() => v3::RequestOp::RangeWith(r.into()),
            kv::RequestOp::Range(r) => v3::RequestOp::Range(r.into()),
            kv::RequestOp::Put(p) if p.ignore_value || p.ignore_lease => {
                v3::RequestOp::PutWith(p.into())
            }
            kv::RequestOp::Put(p) => v3::RequestOp::Put(p.into()),
            kv::RequestOp::DeleteRange(d) => v3::RequestOp::DeleteRange(d.into()),
            kv::RequestOp::Txn(t) => v3::RequestOp::Txn(t.into()),
        }
    }
}

// Format 3's commands (reading, which covers formats 1 and 2 too).

impl From<v3::Command> for kv::Command {
    fn from(command: v3::Command) -> Self {
        match command {
            v3::Command::Kv(kv) => kv::Command::Kv(kv.into()),
            v3::Command::Batch(all) => {
                kv::Command::Batch(all.into_iter().map(Into::into).collect())
            }
        }
    }
}

impl From<v3::KvCommand> for kv::KvCommand {
    fn from(command: v3::KvCommand) -> Self {
        match command {
            v3::KvCommand::Put(p) => kv::KvCommand::Put(p.into()),
            v3::KvCommand::PutWith(p) => kv::KvCommand::Put(p.into()),
            v3::KvCommand::DeleteRange(d) => kv::KvCommand::DeleteRange(d.into()),
            v3::KvCommand::Txn(t) => kv::KvCommand::Txn(t.into()),
            v3::KvCommand::Compact(c) => kv::KvCommand::Compact(kv::CompactRequest {
                revision: c.revision,
            }),
            v3::KvCommand::LeaseGrant { id, ttl } => kv::KvCommand::LeaseGrant { id, ttl },
            v3::KvCommand::LeaseRevoke { id } => kv::KvCommand::LeaseRevoke { id },
        }
    }
}

impl From<v3::PutWith> for kv::PutRequest {
    fn from(p: v3::PutWith) -> Self {
        kv::PutRequest {
            ignore_value: p.ignore_value,
            ignore_lease: p.ignore_lease,
            ..p.put.into()
        }
    }
}

impl From<v3::RangeWith> for kv::RangeRequest {
    fn from(r: v3::RangeWith) -> Self {
        kv::RangeRequest {
            sort_order: match r.sort_order {
                v3::SortOrder::None => kv::SortOrder::None,
                v3::SortOrder::Ascend => kv::SortOrder::Ascend,
                v3::SortOrder::Descend => kv::SortOrder::Descend,
            },
            sort_target: match r.sort_target {
                v3::SortTarget::Key => kv::SortTarget::Key,
                v3::SortTarget::Version => kv::SortTarget::Version,
                v3::SortTarget::Create => kv::SortTarget::Create,
                v3::SortTarget::Mod => kv::SortTarget::Mod,
                v3::SortTarget::Value => kv::SortTarget::Value,
            },
            min_mod_revision: r.min_mod_revision,
            max_mod_revision: r.max_mod_revision,
            min_create_revision: r.min_create_revision,
            max_create_revision: r.max_create_revision,
            ..r.range.into()
        }
    }
}

impl From<v3::Txn> for kv::TxnRequest {
    fn from(t: v3::Txn) -> Self {
        kv::TxnRequest {
            compare: t.compare.into_iter().map(Into::into).collect(),
            success: t.success.into_iter().map(Into::into).collect(),
            failure: t.failure.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<v3::RequestOp> for kv::RequestOp {
    fn from(op: v3::RequestOp) -> Self {
        match op {
            v3::RequestOp::Range(r) => kv::RequestOp::Range(r.into()),
            v3::RequestOp::RangeWith(r) => kv::RequestOp::Range(r.into()),
            v3::RequestOp::Put(p) => kv::RequestOp::Put(p.into()),
            v3::RequestOp::PutWith(p) => kv::RequestOp::Put(p.into()),
            v3::RequestOp::DeleteRange(d) => kv::RequestOp::DeleteRange(d.into()),
            v3::RequestOp::Txn(t) => kv::RequestOp::Txn(t.into()),
        }
    }
}

/// Serializes a type through its log form.
macro_rules! serde_through_log {
    ($api:ty, $log:ty) => {
        impl serde::Serialize for $api {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                <$log>::from(self).serialize(serializer)
            }
        }

        impl<'de> serde::Deserialize<'de> for $api {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                <$log as serde::Deserialize>::deserialize(deserializer).map(Into::into)
            }
        }
    };
}

serde_through_log!(kv::Command, v3::Command);
serde_through_log!(kv::KvCommand, v3::KvCommand);
serde_through_log!(crate::NodeInfo, v1::NodeInfo);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The bytes format 1 wrote for a put, a txn and a batch, taken from a ed1e904 build.
    /// If this fails, the log format changed: follow the rule in the module docs.
    #[test]
    fn format_1_bytes_are_unchanged() {
        let put = kv::Command::Kv(kv::KvCommand::Put(kv::PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            lease: 7,
            prev_kv: true,
            ..Default::default()
        }));
        assert_eq!(
            postcard::to_allocvec(&put).unwrap(),
            [0, 0, 1, b'k', 1, b'v', 14, 1]
        );
        let txn = kv::Command::Batch(vec![kv::Command::Kv(kv::KvCommand::Txn(kv::TxnRequest {
            compare: vec![kv::Compare {
                key: b"a".to_vec(),
                range_end: Vec::new(),
                prefix: true,
                result: kv::CompareResult::Greater,
                target: kv::CompareTarget::ModRevision(3),
            }],
            success: vec![kv::RequestOp::DeleteRange(kv::DeleteRangeRequest {
                key: b"a".to_vec(),
                range_end: b"b".to_vec(),
                prefix: false,
                prev_kv: false,
            })],
            failure: vec![],
        }))]);
        let bytes = postcard::to_allocvec(&txn).unwrap();
        assert_eq!(
            bytes,
            [1, 1, 0, 2, 1, 1, b'a', 0, 1, 2, 3, 6, 1, 2, 1, b'a', 1, b'b', 0, 0, 0]
        );
        assert_eq!(postcard::from_bytes::<kv::Command>(&bytes).unwrap(), txn);
        let node = crate::NodeInfo {
            raft_addr: "r".into(),
            api_addr: "a".into(),
            grpc_addr: String::new(),
        };
        assert_eq!(postcard::to_allocvec(&node).unwrap(), [1, b'r', 1, b'a', 0]);
    }

    /// Format 3 only appends variants: what format 2 wrote (the v1 types) decodes under v3
    /// to the same command.
    #[test]
    fn format_2_bytes_decode_under_format_3() {
        let old = v1::Command::Batch(vec![
            v1::Command::Kv(v1::KvCommand::LeaseRevoke { id: 9 }),
            v1::Command::Kv(v1::KvCommand::Txn(v1::Txn {
                compare: vec![],
                success: vec![v1::RequestOp::Txn(v1::Txn {
                    compare: vec![],
                    success: vec![v1::RequestOp::Range(v1::Range {
                        key: b"a".to_vec(),
                        range_end: vec![],
                        prefix: true,
                        limit: 3,
                        revision: 0,
                        keys_only: true,
                        count_only: false,
                        serializable: false,
                    })],
                    failure: vec![],
                })],
                failure: vec![v1::RequestOp::Put(v1::Put {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                    lease: 0,
                    prev_kv: false,
                })],
            })),
        ]);
        let bytes = postcard::to_allocvec(&old).unwrap();
        let decoded: kv::Command = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(postcard::to_allocvec(&decoded).unwrap(), bytes);
    }

    #[test]
    fn format_3_options_round_trip() {
        let put = kv::PutRequest {
            key: b"k".to_vec(),
            ignore_value: true,
            ..Default::default()
        };
        let range = kv::RangeRequest {
            key: b"a".to_vec(),
            sort_order: kv::SortOrder::Descend,
            sort_target: kv::SortTarget::Mod,
            min_create_revision: 4,
            ..Default::default()
        };
        let command = kv::Command::Batch(vec![
            kv::Command::Kv(kv::KvCommand::Put(put.clone())),
            kv::Command::Kv(kv::KvCommand::Txn(kv::TxnRequest {
                compare: vec![],
                success: vec![kv::RequestOp::Range(range), kv::RequestOp::Put(put)],
                failure: vec![],
            })),
        ]);
        let bytes = postcard::to_allocvec(&command).unwrap();
        assert_eq!(
            postcard::from_bytes::<kv::Command>(&bytes).unwrap(),
            command
        );
    }
}
