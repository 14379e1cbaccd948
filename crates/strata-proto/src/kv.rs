//! KV requests, responses and events with etcd v3 semantics.
//!
//! Ranges follow etcd's convention: `range_end` empty means the single key `key`; `range_end`
//! equal to `[0]` means every key `>= key`; otherwise the half-open interval `[key, range_end)`.
//! The native API adds `prefix: true` as a shorthand that [`RangeSpec::resolve`] turns into
//! the matching `range_end`.

use crate::error::ApiError;
use serde::{Deserialize, Serialize};

/// Metadata attached to every response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseHeader {
    /// The store revision when the request was served.
    pub revision: i64,
    /// The Raft term of the serving node.
    #[serde(default)]
    pub raft_term: u64,
    /// The id of the serving node.
    #[serde(default)]
    pub member_id: u64,
}

/// A key with its value and MVCC metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    #[serde(with = "crate::bytes_serde")]
    pub key: Vec<u8>,
    /// Revision of the put that created the key (since its last deletion).
    pub create_revision: i64,
    /// Revision of the last put to the key.
    pub mod_revision: i64,
    /// Number of puts since the key was created; a delete resets it to 0.
    pub version: i64,
    /// The value; empty in keys-only reads.
    #[serde(with = "crate::bytes_serde", default)]
    pub value: Vec<u8>,
    /// Lease the key is attached to, 0 for none.
    #[serde(default)]
    pub lease: i64,
}

/// Which keys a request addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeSpec {
    /// First key (or the only key).
    #[serde(with = "crate::bytes_serde")]
    pub key: Vec<u8>,
    /// End of the range, exclusive; see the module docs.
    #[serde(with = "crate::bytes_serde", default)]
    pub range_end: Vec<u8>,
    /// Shorthand: every key that starts with `key`.
    #[serde(default)]
    pub prefix: bool,
}

impl RangeSpec {
    /// Returns a spec for one key.
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        RangeSpec {
            key: key.into(),
            range_end: Vec::new(),
            prefix: false,
        }
    }

    /// Returns a spec for every key with the given prefix.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        RangeSpec {
            key: prefix.into(),
            range_end: Vec::new(),
            prefix: true,
        }
    }

    /// Validates the spec and returns `(start, end)`, where `end == None` means the single
    /// key `start` and `Some(vec![])` means "no upper bound".
    pub fn resolve(&self) -> Result<(Vec<u8>, Option<Vec<u8>>), ApiError> {
        if self.prefix {
            if !self.range_end.is_empty() {
                return Err(ApiError::bad_request(
                    "give either prefix or range_end, not both",
                ));
            }
            return Ok((self.key.clone(), Some(prefix_end(&self.key))));
        }
        if self.range_end.is_empty() {
            if self.key.is_empty() {
                return Err(ApiError::bad_request("key must not be empty"));
            }
            return Ok((self.key.clone(), None));
        }
        if self.range_end == [0] {
            return Ok((self.key.clone(), Some(Vec::new())));
        }
        if self.range_end <= self.key {
            return Err(ApiError::bad_request(
                "invalid range: range_end must be greater than key",
            ));
        }
        Ok((self.key.clone(), Some(self.range_end.clone())))
    }
}

macro_rules! impl_range_spec {
    ($($ty:ty),*) => {$(
        impl $ty {
            /// Returns the addressed keys as a [`RangeSpec`].
            pub fn spec(&self) -> RangeSpec {
                RangeSpec {
                    key: self.key.clone(),
                    range_end: self.range_end.clone(),
                    prefix: self.prefix,
                }
            }
        }
    )*};
}

impl_range_spec!(RangeRequest, DeleteRangeRequest, Compare, WatchRequest);

/// Returns the smallest key greater than every key that starts with `prefix`, or an empty
/// vector (no upper bound) when there is none (`prefix` empty or all `0xff`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

/// Reads keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    /// The key, or the first key of the range.
    #[serde(with = "crate::bytes_serde")]
    pub key: Vec<u8>,
    /// End of the range, exclusive; see the module docs.
    #[serde(with = "crate::bytes_serde", default)]
    pub range_end: Vec<u8>,
    /// Shorthand: every key that starts with `key`.
    #[serde(default)]
    pub prefix: bool,
    /// At most this many keys; 0 means no limit.
    #[serde(default)]
    pub limit: i64,
    /// Read as of this revision; 0 means the current one.
    #[serde(default)]
    pub revision: i64,
    /// Return keys and metadata without values.
    #[serde(default)]
    pub keys_only: bool,
    /// Return only the count.
    #[serde(default)]
    pub count_only: bool,
    /// Serve from the local replica without confirming leadership (may be stale).
    #[serde(default)]
    pub serializable: bool,
    /// Order of the result; [`SortOrder::None`] is key order (unless `sort_target` is not
    /// the key, which then sorts ascending, as in etcd).
    #[serde(default)]
    pub sort_order: SortOrder,
    /// What the result is sorted by.
    #[serde(default)]
    pub sort_target: SortTarget,
    /// Keep only keys with `mod_revision >=` this; 0: no bound.
    #[serde(default)]
    pub min_mod_revision: i64,
    /// Keep only keys with `mod_revision <=` this; 0: no bound.
    #[serde(default)]
    pub max_mod_revision: i64,
    /// Keep only keys with `create_revision >=` this; 0: no bound.
    #[serde(default)]
    pub min_create_revision: i64,
    /// Keep only keys with `create_revision <=` this; 0: no bound.
    #[serde(default)]
    pub max_create_revision: i64,
}

impl RangeRequest {
    /// The effective sort order: a target other than the key without an order means
    /// ascending (etcd's rule).
    pub fn effective_order(&self) -> SortOrder {
        if self.sort_order == SortOrder::None && self.sort_target != SortTarget::Key {
            SortOrder::Ascend
        } else {
            self.sort_order
        }
    }

    /// True when the result is in another order than ascending keys.
    pub fn sorts(&self) -> bool {
        match self.effective_order() {
            SortOrder::None => false,
            SortOrder::Ascend => self.sort_target != SortTarget::Key,
            SortOrder::Descend => true,
        }
    }

    /// True when a revision filter is set.
    pub fn filters(&self) -> bool {
        self.min_mod_revision != 0
            || self.max_mod_revision != 0
            || self.min_create_revision != 0
            || self.max_create_revision != 0
    }

    /// True when the request uses a field that formats before 3 cannot carry (sorting or
    /// revision filters).
    pub fn needs_format_3(&self) -> bool {
        self.sort_order != SortOrder::None || self.sort_target != SortTarget::Key || self.filters()
    }
}

/// Order of a range result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SortOrder {
    /// Key order.
    #[default]
    None,
    /// Ascending by the sort target.
    Ascend,
    /// Descending by the sort target.
    Descend,
}

/// What a range result is sorted by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SortTarget {
    /// The key.
    #[default]
    Key,
    /// The key's version.
    Version,
    /// The key's create revision.
    Create,
    /// The key's mod revision.
    Mod,
    /// The value.
    Value,
}

/// The result of a range read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    /// Revision and serving node.
    pub header: ResponseHeader,
    /// The keys found, in key order, at most `limit`.
    pub kvs: Vec<KeyValue>,
    /// True when `limit` cut the result short.
    pub more: bool,
    /// How many keys are in the range (ignoring `limit`).
    pub count: i64,
}

/// Writes one key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    /// The key to write.
    #[serde(with = "crate::bytes_serde")]
    pub key: Vec<u8>,
    /// The new value.
    #[serde(with = "crate::bytes_serde", default)]
    pub value: Vec<u8>,
    /// Lease to attach the key to; 0 for none.
    #[serde(default)]
    pub lease: i64,
    /// Return the previous key-value.
    #[serde(default)]
    pub prev_kv: bool,
    /// Keep the key's current value (`value` must be empty); the key must exist.
    #[serde(default)]
    pub ignore_value: bool,
    /// Keep the key's current lease (`lease` must be 0); the key must exist.
    #[serde(default)]
    pub ignore_lease: bool,
}

/// The result of a put.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResponse {
    /// Revision of this write.
    pub header: ResponseHeader,
    /// The previous key-value, when asked for and present.
    #[serde(default)]
    pub prev_kv: Option<KeyValue>,
}

/// Deletes a key or a range.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeRequest {
    /// The key, or the first key of the range.
    #[serde(with = "crate::bytes_serde")]
    pub key: Vec<u8>,
    /// End of the range, exclusive; see the module docs.
    #[serde(with = "crate::bytes_serde", default)]
    pub range_end: Vec<u8>,
    /// Shorthand: every key that starts with `key`.
    #[serde(default)]
    pub prefix: bool,
    /// Return the deleted key-values.
    #[serde(default)]
    pub prev_kv: bool,
}

/// The result of a delete.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeResponse {
    /// Revision after the delete.
    pub header: ResponseHeader,
    /// How many keys were deleted.
    pub deleted: i64,
    /// The deleted key-values, when asked for.
    #[serde(default)]
    pub prev_kvs: Vec<KeyValue>,
}

/// What a [`Compare`] looks at, with the operand to compare against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareTarget {
    /// The value bytes.
    Value(#[serde(with = "crate::bytes_serde")] Vec<u8>),
    /// The key's version (0 when absent).
    Version(i64),
    /// The key's create revision (0 when absent).
    CreateRevision(i64),
    /// The key's mod revision (0 when absent).
    ModRevision(i64),
    /// The key's lease id (0 when none).
    Lease(i64),
}

/// How a [`Compare`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareResult {
    /// Equal.
    Equal,
    /// Not equal.
    NotEqual,
    /// The key's attribute is greater than the operand.
    Greater,
    /// The key's attribute is less than the operand.
    Less,
}

/// One condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The key, or the first key of the range.
    #[serde(with = "crate::bytes_serde")]
    pub key: Vec<u8>,
    /// End of the range, exclusive; see the module docs.
    #[serde(with = "crate::bytes_serde", default)]
    pub range_end: Vec<u8>,
    /// Shorthand: every key that starts with `key`.
    #[serde(default)]
    pub prefix: bool,
    /// The comparison.
    pub result: CompareResult,
    /// The attribute and operand.
    pub target: CompareTarget,
}

/// One operation inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestOp {
    /// A read.
    Range(RangeRequest),
    /// A write.
    Put(PutRequest),
    /// A delete.
    DeleteRange(DeleteRangeRequest),
    /// A nested transaction (at most [`MAX_NESTING`](crate::MAX_NESTING) levels deep).
    Txn(#[serde(deserialize_with = "crate::nesting::deserialize")] TxnRequest),
}

/// The result of one operation inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseOp {
    /// Result of a read.
    Range(RangeResponse),
    /// Result of a write.
    Put(PutResponse),
    /// Result of a delete.
    DeleteRange(DeleteRangeResponse),
    /// Result of a nested transaction.
    Txn(#[serde(deserialize_with = "crate::nesting::deserialize")] TxnResponse),
}

/// If every compare holds, run `success`, otherwise `failure`; atomically, at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRequest {
    /// The conditions.
    #[serde(default)]
    pub compare: Vec<Compare>,
    /// Operations run when every condition holds.
    #[serde(default)]
    pub success: Vec<RequestOp>,
    /// Operations run otherwise.
    #[serde(default)]
    pub failure: Vec<RequestOp>,
}

/// The result of a transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    /// Revision after the transaction.
    pub header: ResponseHeader,
    /// Whether the compares held (and `success` ran).
    pub succeeded: bool,
    /// One response per operation run.
    pub responses: Vec<ResponseOp>,
}

/// Discards history before a revision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactRequest {
    /// Keep only what is needed to read at this revision and later.
    pub revision: i64,
}

/// The result of a compaction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactResponse {
    /// Revision when compaction was applied.
    pub header: ResponseHeader,
}

/// The kind of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// A key was created or updated.
    Put,
    /// A key was deleted.
    Delete,
}

/// One change to one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Put or delete.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The key after the change (for a delete: key and mod_revision only).
    pub kv: KeyValue,
    /// The key before the change, when the watch asked for it and it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_kv: Option<KeyValue>,
}

/// Opens a watch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchRequest {
    /// The key, or the first key of the range.
    #[serde(with = "crate::bytes_serde")]
    pub key: Vec<u8>,
    /// End of the range, exclusive; see the module docs.
    #[serde(with = "crate::bytes_serde", default)]
    pub range_end: Vec<u8>,
    /// Shorthand: every key that starts with `key`.
    #[serde(default)]
    pub prefix: bool,
    /// First revision to deliver; 0 means "changes after now".
    #[serde(default)]
    pub start_revision: i64,
    /// Include the previous key-value in each event.
    #[serde(default)]
    pub prev_kv: bool,
    /// Send empty responses carrying the current revision while nothing changes.
    #[serde(default)]
    pub progress_notify: bool,
    /// Do not deliver put events.
    #[serde(default)]
    pub no_put: bool,
    /// Do not deliver delete events.
    #[serde(default)]
    pub no_delete: bool,
}

/// One message on a watch stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchResponse {
    /// For events: the revision of the last event. For progress: the current revision.
    pub header: ResponseHeader,
    /// The events, in revision order. Empty for a progress notification.
    #[serde(default)]
    pub events: Vec<Event>,
    /// True on the first message of a stream: the watch is registered.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub created: bool,
    /// Set when the watch was cancelled because `start_revision` was compacted.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub compact_revision: i64,
}

fn is_zero(value: &i64) -> bool {
    *value == 0
}

/// Grants a lease.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrantRequest {
    /// Time to live in seconds.
    pub ttl: i64,
    /// Requested id; 0 lets the cluster choose.
    #[serde(default)]
    pub id: i64,
}

/// A granted lease.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrantResponse {
    /// Revision and serving node.
    pub header: ResponseHeader,
    /// The lease id.
    pub id: i64,
    /// The granted TTL in seconds.
    pub ttl: i64,
}

/// Names a lease (revoke, keep-alive, time-to-live).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseIdRequest {
    /// The lease id.
    pub id: i64,
    /// For time-to-live: also list the attached keys.
    #[serde(default)]
    pub keys: bool,
}

/// The result of revoking a lease.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRevokeResponse {
    /// Revision after the revoke.
    pub header: ResponseHeader,
}

/// The result of a keep-alive or time-to-live query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTimeToLiveResponse {
    /// Revision and serving node.
    pub header: ResponseHeader,
    /// The lease id.
    pub id: i64,
    /// Seconds left (for keep-alive: the renewed TTL). An unknown lease is a `not_found` error.
    pub ttl: i64,
    /// The TTL the lease was granted with.
    pub granted_ttl: i64,
    /// Attached keys, when asked for.
    #[serde(default)]
    pub keys: Vec<String>,
}

/// One lease in a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseStatus {
    /// The lease id.
    pub id: i64,
    /// The TTL the lease was granted with.
    pub granted_ttl: i64,
}

/// Every live lease.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseLeasesResponse {
    /// Revision and serving node.
    pub header: ResponseHeader,
    /// The leases, by id.
    pub leases: Vec<LeaseStatus>,
}

/// A replicated KV command: what goes into the Raft log. It is written through the frozen
/// types of [`crate::log`], not through its own shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvCommand {
    /// See [`PutRequest`].
    Put(PutRequest),
    /// See [`DeleteRangeRequest`].
    DeleteRange(DeleteRangeRequest),
    /// See [`TxnRequest`].
    Txn(TxnRequest),
    /// See [`CompactRequest`].
    Compact(CompactRequest),
    /// Creates a lease; `id` was chosen by the proposer so that apply is deterministic.
    LeaseGrant {
        /// The new lease's id (non-zero).
        id: i64,
        /// Its TTL in seconds.
        ttl: i64,
    },
    /// Revokes a lease and deletes its keys (a client's revoke or the leader's expiry).
    LeaseRevoke {
        /// The lease's id.
        id: i64,
    },
}

/// The result of applying a [`KvCommand`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvResult {
    /// See [`PutResponse`].
    Put(PutResponse),
    /// See [`DeleteRangeResponse`].
    DeleteRange(DeleteRangeResponse),
    /// See [`TxnResponse`].
    Txn(TxnResponse),
    /// See [`CompactResponse`].
    Compact(CompactResponse),
    /// See [`LeaseGrantResponse`].
    LeaseGrant(LeaseGrantResponse),
    /// See [`LeaseRevokeResponse`].
    LeaseRevoke(LeaseRevokeResponse),
    /// The command was rejected deterministically on every replica.
    Error(ApiError),
}

/// What the control plane replicates. New components add variants here (and to a new format
/// in [`crate::log`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A KV command.
    Kv(KvCommand),
    /// Several commands proposed together as one log entry (the leader batches concurrent
    /// proposals so that one fsync and one replication round cover many writes). Applied in
    /// order; each command gets its own revision. Nested at most
    /// [`MAX_NESTING`](crate::MAX_NESTING) levels deep.
    Batch(Vec<Command>),
}

/// The result of applying a [`Command`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Result of a membership change or a blank entry.
    None,
    /// Result of a KV command.
    Kv(KvResult),
    /// Results of a [`Command::Batch`], in order.
    Batch(#[serde(deserialize_with = "crate::nesting::deserialize")] Vec<CommandResult>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end(b"abc"), b"abd");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"");
        assert_eq!(prefix_end(b""), b"");
    }

    #[test]
    fn resolve_validates_ranges() {
        assert!(RangeSpec::key("").resolve().is_err());
        assert_eq!(
            RangeSpec::key("a").resolve().unwrap(),
            (b"a".to_vec(), None)
        );
        assert_eq!(
            RangeSpec::prefix("").resolve().unwrap(),
            (vec![], Some(vec![]))
        );
        let bad = RangeSpec {
            key: b"b".to_vec(),
            range_end: b"a".to_vec(),
            prefix: false,
        };
        assert!(bad.resolve().is_err());
        let all = RangeSpec {
            key: b"b".to_vec(),
            range_end: vec![0],
            prefix: false,
        };
        assert_eq!(all.resolve().unwrap(), (b"b".to_vec(), Some(vec![])));
    }

    #[test]
    fn txn_json_shape() {
        let json = r#"{"compare":[{"key":"a","result":"equal","target":{"version":0}}],
            "success":[{"put":{"key":"a","value":"1"}}],
            "failure":[{"range":{"key":"a"}}]}"#;
        let txn: TxnRequest = serde_json::from_str(json).unwrap();
        assert_eq!(txn.compare[0].target, CompareTarget::Version(0));
        assert!(matches!(txn.success[0], RequestOp::Put(_)));
        let bin = postcard::to_allocvec(&Command::Kv(KvCommand::Txn(txn.clone()))).unwrap();
        assert_eq!(
            postcard::from_bytes::<Command>(&bin).unwrap(),
            Command::Kv(KvCommand::Txn(txn))
        );
    }
}
