//! [`KvStore`]: histories of keys, leases, and how commands change them.

mod decode;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Borrow;
use std::collections::BTreeSet;
use std::ops::{Bound, Deref};
use strata_proto::error::{ApiError, ErrorCode};
use strata_proto::kv::{
    CompactResponse, Compare, CompareResult, CompareTarget, DeleteRangeResponse, Event, EventType,
    KeyValue, KvCommand, KvResult, LeaseGrantResponse, LeaseRevokeResponse, LeaseStatus,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RangeSpec, RequestOp, ResponseHeader,
    ResponseOp, SortOrder, SortTarget, TxnRequest, TxnResponse,
};
use triomphe::ThinArc;

/// One version of one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Version {
    /// The revision of the request that wrote this version.
    main: i64,
    /// Position of this change inside its request.
    sub: u32,
    /// Revision that created the key (first put after absence).
    create_revision: i64,
    /// Puts since creation, 1 for the first; 0 for a tombstone.
    version: i64,
    /// The value; empty for a tombstone. A boxed slice holds no spare capacity.
    #[serde(serialize_with = "serialize_bytes", deserialize_with = "boxed_bytes")]
    value: Box<[u8]>,
    /// The attached lease, 0 for none.
    lease: i64,
    /// True when this version records a deletion.
    tombstone: bool,
}

impl Version {
    fn to_kv(&self, key: &[u8]) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            create_revision: self.create_revision,
            mod_revision: self.main,
            version: self.version,
            value: self.value.to_vec(),
            lease: self.lease,
        }
    }
}

/// A key's bytes, shared by the key map, the lease that holds it and every snapshot view, so
/// that copying a tree node copies pointers. One pointer wide (the length lives in the shared
/// allocation), so a tree leaf's slots take half the room fat pointers would. Serializes
/// exactly as the `Vec<u8>` it replaced; compares as its bytes.
#[derive(Clone)]
struct Key(ThinArc<(), u8>);

impl Key {
    fn new(bytes: &[u8]) -> Self {
        Key(ThinArc::from_header_and_slice((), bytes))
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self
    }
}

impl Deref for Key {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0.slice
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (**self).cmp(&**other)
    }
}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (**self).hash(state)
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Key").field(&&**self).finish()
    }
}

impl Serialize for Key {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_bytes(self, serializer)
    }
}

/// Writes bytes as one run instead of byte by byte. In postcard both are a varint length and
/// the raw bytes, so the snapshot format is unchanged (`tests/snapshot_format.rs` pins it).
/// serde reads them back as a sequence; a node reads snapshots with [`KvStore::read_snapshot`].
fn serialize_bytes<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes)
}

fn boxed_bytes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Box<[u8]>, D::Error> {
    Vec::<u8>::deserialize(deserializer).map(Vec::into_boxed_slice)
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<u8>::deserialize(deserializer).map(|bytes| Key::new(&bytes))
    }
}

/// One key's retained versions, oldest first, in one allocation of exactly their size (a
/// `Vec` would round a first push up to four), behind one pointer (the length lives in the
/// allocation). Shared until written: a write while a snapshot view holds the old history
/// copies this one key's history, nothing else. Serializes exactly as the `Vec<Version>` it
/// replaced.
#[derive(Clone)]
struct History(ThinArc<(), Version>);

impl History {
    fn from_vec(versions: Vec<Version>) -> Self {
        History(ThinArc::from_header_and_iter((), versions.into_iter()))
    }

    /// The versions from `from` on, then `extra`, as a new allocation. Values move out of a
    /// history nobody else holds and are copied out of a shared one.
    fn rebuild(&mut self, from: usize, extra: Option<Version>) {
        let mut versions = Vec::with_capacity(self.len() - from + usize::from(extra.is_some()));
        let moved = self
            .0
            .with_arc_mut(|shared| match triomphe::Arc::get_mut(shared) {
                Some(own) => {
                    versions.extend(own.slice_mut()[from..].iter_mut().map(|v| Version {
                        value: std::mem::take(&mut v.value),
                        ..*v
                    }));
                    true
                }
                None => false,
            });
        if !moved {
            versions.extend(self[from..].iter().cloned());
        }
        versions.extend(extra);
        *self = History::from_vec(versions);
    }

    /// A history of one version, in one allocation.
    fn one(version: Version) -> Self {
        History(ThinArc::from_header_and_iter((), std::iter::once(version)))
    }

    fn push(&mut self, version: Version) {
        self.rebuild(0, Some(version));
    }

    /// Drops the oldest `count` versions.
    fn drop_oldest(&mut self, count: usize) {
        if count > 0 {
            self.rebuild(count, None);
        }
    }
}

impl Deref for History {
    type Target = [Version];
    fn deref(&self) -> &[Version] {
        &self.0.slice
    }
}

impl PartialEq for History {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for History {}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("History").field(&&**self).finish()
    }
}

impl Serialize for History {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for History {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<Version>::deserialize(deserializer).map(History::from_vec)
    }
}

/// A lease as the state machine sees it. Expiry timing lives with the leader, not here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Lease {
    /// The TTL the lease was granted with, in seconds.
    ttl: i64,
    /// Keys currently attached.
    #[serde(deserialize_with = "lenient::ord_set")]
    keys: imbl::OrdSet<Key>,
}

/// Counts for metrics and status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvStats {
    /// Keys with at least one retained version (live or tombstoned).
    pub keys: usize,
    /// Retained versions across all keys.
    pub versions: usize,
    /// Approximate bytes of keys and values held.
    pub bytes: usize,
    /// Live leases.
    pub leases: usize,
}

/// Memory the store's structures take, estimated from counts and type sizes (see
/// [`KvStore::memory`]); the node exports each as `strata_memory_bytes{structure}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvMemory {
    /// The keys' own bytes, once per key.
    pub key_bytes: usize,
    /// The values' own bytes, every retained version.
    pub value_bytes: usize,
    /// Allocation overhead of the keys.
    pub key_overhead: usize,
    /// Allocation overhead of the values.
    pub value_overhead: usize,
    /// Version records (revisions, lease, flags) and each key's history.
    pub versions: usize,
    /// The key map's B-tree nodes.
    pub tree: usize,
    /// The compactable-key set.
    pub indexes: usize,
}

/// The MVCC key-value state machine. See the crate docs.
///
/// Both maps are persistent B-trees that share structure: `clone` takes constant time and
/// copies nothing, and a later write copies only the nodes on its path. That is how a
/// snapshot gets a consistent view without stopping apply (see [`KvStore::view`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredKvStore")]
pub struct KvStore {
    /// The revision of the last change.
    revision: i64,
    /// Reads below this revision fail with `compacted`.
    compact_revision: i64,
    /// Every key's retained history.
    keys: imbl::OrdMap<Key, History>,
    /// Live leases by id.
    leases: imbl::OrdMap<i64, Lease>,
    /// Derived from `keys`, never stored: rebuilt when a snapshot is read.
    #[serde(skip_serializing)]
    derived: Derived,
}

/// What [`KvStore`] keeps up to date as it applies, so that nothing has to walk every key:
/// the counts behind [`KvStore::stats`], and which keys compaction can shrink.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Derived {
    /// Retained versions across all keys.
    versions: usize,
    /// Bytes of keys (once per version) and values.
    bytes: usize,
    /// Bytes of the keys held, once per key.
    key_bytes: usize,
    /// Bytes of the values of every retained version.
    value_bytes: usize,
    /// Keys with more than one version or only a tombstone: the only ones a compaction can
    /// change. A key with one live version is never visited by compaction.
    compactable: imbl::OrdSet<Key>,
}

impl Derived {
    fn of(keys: &imbl::OrdMap<Key, History>) -> Derived {
        let mut derived = Derived::default();
        for (key, versions) in keys {
            derived.versions += versions.len();
            derived.key_bytes += key.len();
            derived.value_bytes += versions.iter().map(|v| v.value.len()).sum::<usize>();
            derived.bytes += versions
                .iter()
                .map(|v| version_bytes(key, v))
                .sum::<usize>();
            if is_compactable(versions) {
                derived.compactable.insert(key.clone());
            }
        }
        derived
    }
}

/// The bytes a version accounts for in [`KvStats::bytes`].
fn version_bytes(key: &[u8], version: &Version) -> usize {
    key.len() + version.value.len()
}

fn is_compactable(versions: &[Version]) -> bool {
    versions.len() > 1 || versions.first().is_some_and(|v| v.tombstone)
}

/// Deserializers for the persistent maps that never trust a length read from the input:
/// imbl's own reserve the length up front, so a damaged or hostile snapshot could claim 2^60
/// entries and abort the node. These insert what actually arrives.
mod lenient {
    use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
    use std::fmt;
    use std::marker::PhantomData;

    pub fn ord_map<'de, D, K, V>(deserializer: D) -> Result<imbl::OrdMap<K, V>, D::Error>
    where
        D: Deserializer<'de>,
        K: Deserialize<'de> + Ord + Clone,
        V: Deserialize<'de> + Clone,
    {
        struct MapVisitor<K, V>(PhantomData<(K, V)>);
        impl<'de, K, V> Visitor<'de> for MapVisitor<K, V>
        where
            K: Deserialize<'de> + Ord + Clone,
            V: Deserialize<'de> + Clone,
        {
            type Value = imbl::OrdMap<K, V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut map = imbl::OrdMap::new();
                while let Some((key, value)) = access.next_entry()? {
                    map.insert(key, value);
                }
                Ok(map)
            }
        }
        deserializer.deserialize_map(MapVisitor(PhantomData))
    }

    pub fn ord_set<'de, D, T>(deserializer: D) -> Result<imbl::OrdSet<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de> + Ord + Clone,
    {
        struct SetVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de> + Ord + Clone> Visitor<'de> for SetVisitor<T> {
            type Value = imbl::OrdSet<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a set")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut set = imbl::OrdSet::new();
                while let Some(item) = access.next_element()? {
                    set.insert(item);
                }
                Ok(set)
            }
        }
        deserializer.deserialize_seq(SetVisitor(PhantomData))
    }
}

/// A [`KvStore`] as snapshots store it: everything but what is derived. Same fields, same
/// order, so the bytes are those of the store's own `Serialize`.
#[derive(Deserialize)]
struct StoredKvStore {
    revision: i64,
    compact_revision: i64,
    #[serde(deserialize_with = "lenient::ord_map")]
    keys: imbl::OrdMap<Key, History>,
    #[serde(deserialize_with = "lenient::ord_map")]
    leases: imbl::OrdMap<i64, Lease>,
}

impl From<StoredKvStore> for KvStore {
    fn from(stored: StoredKvStore) -> KvStore {
        KvStore {
            derived: Derived::of(&stored.keys),
            revision: stored.revision,
            compact_revision: stored.compact_revision,
            keys: stored.keys,
            leases: stored.leases,
        }
    }
}

/// History to replay in revision order, a batch at a time: see [`KvStore::replay`].
#[derive(Debug)]
pub struct Replay {
    view: KvStore,
    order: std::vec::IntoIter<Step>,
    with_prev: bool,
}

/// One event of a [`Replay`]: where its version is in the view.
#[derive(Debug)]
struct Step {
    main: i64,
    sub: u32,
    key: Key,
    index: u32,
}

impl Replay {
    /// Events not taken yet.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when every event has been taken.
    pub fn is_empty(&self) -> bool {
        self.order.len() == 0
    }

    /// Returns the next events in revision order: at least `max` (when that many remain) and
    /// then the rest of the last one's revision, so a revision is never split between two
    /// batches. Empty when every event has been taken.
    pub fn next_batch(&mut self, max: usize) -> Vec<Event> {
        let mut batch: Vec<Event> = Vec::new();
        while let Some(step) = self.order.as_slice().first() {
            if batch.len() >= max && batch.last().is_some_and(|e| e.kv.mod_revision != step.main) {
                break;
            }
            let Some(step) = self.order.next() else {
                break;
            };
            let Some(versions) = self.view.keys.get(&step.key) else {
                continue;
            };
            let index = step.index as usize;
            let prev_kv = if self.with_prev {
                index
                    .checked_sub(1)
                    .map(|p| &versions[p])
                    .filter(|p| !p.tombstone)
                    .map(|p| p.to_kv(&step.key))
            } else {
                None
            };
            batch.push(event_for(&step.key, &versions[index], prev_kv));
        }
        batch
    }
}

/// The key range a request resolved to.
struct KeyRange {
    start: Vec<u8>,
    /// `None`: the single key `start`; `Some(empty)`: unbounded; else exclusive end.
    end: Option<Vec<u8>>,
}

impl KeyRange {
    fn resolve(spec: &RangeSpec) -> Result<KeyRange, ApiError> {
        let (start, end) = spec.resolve()?;
        Ok(KeyRange { start, end })
    }

    fn bounds(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        match &self.end {
            None => (Bound::Included(&self.start), Bound::Included(&self.start)),
            Some(end) if end.is_empty() => (Bound::Included(&self.start), Bound::Unbounded),
            Some(end) => (
                Bound::Included(&self.start),
                Bound::Excluded(end.as_slice()),
            ),
        }
    }

    fn contains(&self, key: &[u8]) -> bool {
        match &self.end {
            None => key == self.start.as_slice(),
            Some(end) => key >= self.start.as_slice() && (end.is_empty() || key < end.as_slice()),
        }
    }
}

/// Returns true when `key` lies in the range described by `spec`. Invalid specs match nothing.
pub fn spec_contains(spec: &RangeSpec, key: &[u8]) -> bool {
    KeyRange::resolve(spec)
        .map(|range| range.contains(key))
        .unwrap_or(false)
}

/// State of one write request being applied: its revision and the next sub-revision.
struct Batch {
    main: i64,
    next_sub: u32,
    changed: bool,
    events: Vec<Event>,
}

impl Batch {
    fn next(&mut self) -> u32 {
        let sub = self.next_sub;
        self.next_sub += 1;
        self.changed = true;
        sub
    }
}

impl KvStore {
    /// Returns an empty store at revision 1, as etcd starts.
    pub fn new() -> Self {
        KvStore {
            revision: 1,
            ..Default::default()
        }
    }

    /// Returns a frozen copy of the whole state in constant time. Later writes to `self` do
    /// not show in it; it shares every unchanged node with `self`.
    pub fn view(&self) -> KvStore {
        self.clone()
    }

    /// Returns the revision of the last change.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Returns the compaction revision (reads below it fail).
    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    /// Returns counts for metrics, in constant time.
    pub fn stats(&self) -> KvStats {
        KvStats {
            keys: self.keys.len(),
            versions: self.derived.versions,
            bytes: self.derived.bytes,
            leases: self.leases.len(),
        }
    }

    /// Estimates the memory the store's structures take, in constant time, from its counts
    /// and the sizes of its types (see [`KvMemory`]).
    pub fn memory(&self) -> KvMemory {
        let keys = self.keys.len();
        let versions = self.derived.versions;
        // malloc hands out blocks of 16 bytes with an 8-byte header, so a block of `n` bytes
        // takes about `n + 8` rounded up to 16, which averages `n + 16` for spread sizes.
        const MALLOC: usize = 16;
        const ARC: usize = 16;
        let entry = size_of::<(Key, History)>();
        let compactable = self.derived.compactable.len();
        KvMemory {
            key_bytes: self.derived.key_bytes,
            value_bytes: self.derived.value_bytes,
            // Each key: one shared allocation (Arc header + bytes).
            key_overhead: keys * (ARC + MALLOC),
            // Each value: its own allocation.
            value_overhead: versions * MALLOC,
            // Each version record, in one allocation per key's history (with an Arc header).
            versions: versions * size_of::<Version>() + keys * (ARC + MALLOC),
            // B-tree leaves: 64 slots per leaf, between a third and all of them used; a
            // B+tree split on sequential keys leaves them half full. Branches are a few %.
            tree: keys * entry * 2 + keys * entry / 16,
            // The set of keys compaction can shrink. (Keys attached to leases are not counted:
            // walking the leases on every scrape would cost time under the lock.)
            indexes: compactable * size_of::<Key>() * 2,
        }
    }

    /// Reads a store from a snapshot body: the bytes postcard writes for it, streamed through
    /// a buffer (postcard's own reader over a stream is several times slower). Bad bytes are
    /// an error, never a panic or an allocation sized by the input.
    pub fn read_snapshot(input: &mut dyn std::io::Read) -> Result<KvStore, String> {
        decode::read(input)
    }

    /// Returns true when what the store keeps up to date as it applies (counts, keys that
    /// compaction can shrink) equals a recount from the keys. For tests.
    #[doc(hidden)]
    pub fn derived_state_is_consistent(&self) -> bool {
        self.derived == Derived::of(&self.keys)
    }

    fn header(&self) -> ResponseHeader {
        ResponseHeader {
            revision: self.revision,
            ..Default::default()
        }
    }

    /// The keys of `range` with their histories, in key order: one point lookup for a single
    /// key (most reads and every compare of a transaction on one key), a cursor otherwise. A
    /// cursor costs two descents and a path of its own per call, which a lone key does not need.
    fn in_range<'a>(
        &'a self,
        range: &'a KeyRange,
    ) -> impl Iterator<Item = (&'a Key, &'a History)> + 'a {
        let (single, many) = match &range.end {
            None => (self.keys.get_key_value(range.start.as_slice()), None),
            Some(_) => (None, Some(self.keys.range::<_, [u8]>(range.bounds()))),
        };
        single.into_iter().chain(many.into_iter().flatten())
    }

    /// Returns the latest live version of `key`, if the key exists now.
    fn live(&self, key: &[u8]) -> Option<&Version> {
        self.keys
            .get(key)
            .and_then(|versions| versions.last())
            .filter(|v| !v.tombstone)
    }

    /// Checks that `revision` can be read: not compacted, not in the future.
    fn check_read_revision(&self, revision: i64) -> Result<i64, ApiError> {
        if revision <= 0 {
            return Ok(self.revision);
        }
        if revision < self.compact_revision {
            return Err(ApiError::new(
                ErrorCode::Compacted,
                format!(
                    "required revision {revision} has been compacted; the oldest readable revision is {}",
                    self.compact_revision
                ),
            ));
        }
        if revision > self.revision {
            return Err(ApiError::new(
                ErrorCode::FutureRevision,
                format!(
                    "required revision {revision} is a future revision; the current revision is {}",
                    self.revision
                ),
            ));
        }
        Ok(revision)
    }

    /// Reads keys. Fails on an invalid range or an unreadable revision.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, ApiError> {
        self.range_in(req, None)
    }

    /// [`KvStore::range`], optionally from inside a write request whose changes are being
    /// written at revision `pending`: a read of the latest state then sees them, as in etcd.
    fn range_in(
        &self,
        req: &RangeRequest,
        pending: Option<i64>,
    ) -> Result<RangeResponse, ApiError> {
        let range = KeyRange::resolve(&req.spec())?;
        let at = match pending {
            Some(main) if req.revision <= 0 => main,
            _ => self.check_read_revision(req.revision)?,
        };
        if req.limit < 0 {
            return Err(ApiError::bad_request("limit must not be negative"));
        }
        let limit = usize::try_from(req.limit).unwrap_or(usize::MAX);
        // Sorting or filtering sees every key of the range before the limit cuts, as in etcd.
        let arranged = !req.count_only && (req.sorts() || req.filters());
        let mut response = RangeResponse {
            header: self.header(),
            ..Default::default()
        };
        for (key, versions) in self.in_range(&range) {
            let visible = versions.partition_point(|v| v.main <= at);
            let Some(version) = visible.checked_sub(1).map(|i| &versions[i]) else {
                continue;
            };
            if version.tombstone {
                continue;
            }
            response.count += 1;
            if req.count_only || (!arranged && limit != 0 && response.kvs.len() >= limit) {
                continue;
            }
            let mut kv = version.to_kv(key);
            if req.keys_only && !arranged {
                kv.value.clear();
            }
            response.kvs.push(kv);
        }
        if arranged {
            arrange(req, &mut response.kvs);
            response.more = limit != 0 && response.kvs.len() > limit;
            response
                .kvs
                .truncate(if limit == 0 { usize::MAX } else { limit });
            if req.keys_only {
                response.kvs.iter_mut().for_each(|kv| kv.value.clear());
            }
        } else {
            response.more = !req.count_only && (response.kvs.len() as i64) < response.count;
        }
        Ok(response)
    }

    /// Reads at most `limit` live keys of `spec` at revision `at` (0: the latest), starting
    /// after the key `after` when given, and returns them with the key to continue after
    /// (`None` when the range is done; the next page may still be empty when every key after
    /// this one is deleted). Unlike [`KvStore::range`] it does not count the rest
    /// of the range, so paging through `n` keys costs `n`, not `n` per page. Meant for a
    /// [`KvStore::view`], so every page reads the same revision.
    pub fn page(
        &self,
        spec: &RangeSpec,
        at: i64,
        after: Option<&[u8]>,
        limit: usize,
        keys_only: bool,
    ) -> Result<(Vec<KeyValue>, Option<Vec<u8>>), ApiError> {
        let range = KeyRange::resolve(spec)?;
        let at = self.check_read_revision(at)?;
        let (start, end) = range.bounds();
        let start = match after {
            Some(after) => Bound::Excluded(after),
            None => start,
        };
        let mut kvs = Vec::new();
        for (key, versions) in self.keys.range::<_, [u8]>((start, end)) {
            if kvs.len() >= limit.max(1) {
                // More keys follow: continue after the last one returned.
                let after = kvs.last().map(|kv: &KeyValue| kv.key.clone());
                return Ok((kvs, after));
            }
            let visible = versions.partition_point(|v| v.main <= at);
            let Some(version) = visible.checked_sub(1).map(|i| &versions[i]) else {
                continue;
            };
            if version.tombstone {
                continue;
            }
            let mut kv = version.to_kv(key);
            if keys_only {
                kv.value.clear();
            }
            kvs.push(kv);
        }
        Ok((kvs, None))
    }

    /// Lists live leases.
    pub fn leases(&self) -> Vec<LeaseStatus> {
        self.leases
            .iter()
            .map(|(id, lease)| LeaseStatus {
                id: *id,
                granted_ttl: lease.ttl,
            })
            .collect()
    }

    /// Returns the granted TTL of a lease, if it exists (without copying its keys).
    pub fn lease_ttl(&self, id: i64) -> Option<i64> {
        self.leases.get(&id).map(|lease| lease.ttl)
    }

    /// Returns the granted TTL and attached keys of a lease, if it exists.
    pub fn lease(&self, id: i64) -> Option<(i64, Vec<Vec<u8>>)> {
        self.leases.get(&id).map(|lease| {
            (
                lease.ttl,
                lease.keys.iter().map(|key| key.to_vec()).collect(),
            )
        })
    }

    /// Returns the events with revision `>= from` on keys in `spec`, in revision order, with
    /// `prev_kv` filled where the previous version is still retained. Everything at once: a
    /// large replay should use [`KvStore::replay`] on a view instead.
    pub fn events_since(&self, spec: &RangeSpec, from: i64) -> Result<Vec<Event>, ApiError> {
        let mut replay = self.view().replay(spec, from, true)?;
        let mut events = Vec::with_capacity(replay.len());
        loop {
            let batch = replay.next_batch(usize::MAX);
            if batch.is_empty() {
                return Ok(events);
            }
            events.extend(batch);
        }
    }

    /// Prepares the events with revision `>= from` on keys in `spec`, to be taken in revision
    /// order a batch at a time ([`Replay::next_batch`]). Call it on a [`KvStore::view`]: the
    /// replay owns it, so the store goes on applying meanwhile. What it holds until taken is
    /// an order of the events (about 32 bytes each), not the events: each batch is built from
    /// the view when asked for. `with_prev` fills `prev_kv`.
    pub fn replay(self, spec: &RangeSpec, from: i64, with_prev: bool) -> Result<Replay, ApiError> {
        let range = KeyRange::resolve(spec)?;
        if from < self.compact_revision {
            return Err(ApiError::new(
                ErrorCode::Compacted,
                format!(
                    "required revision {from} has been compacted; the oldest watchable revision is {}",
                    self.compact_revision
                ),
            ));
        }
        let mut order = Vec::new();
        for (key, versions) in self.in_range(&range) {
            let first = versions.partition_point(|v| v.main < from);
            for index in first..versions.len() {
                let version = &versions[index];
                order.push(Step {
                    main: version.main,
                    sub: version.sub,
                    key: key.clone(),
                    index: index as u32,
                });
            }
        }
        order.sort_unstable_by_key(|step| (step.main, step.sub));
        Ok(Replay {
            view: self,
            order: order.into_iter(),
            with_prev,
        })
    }

    /// Applies one command from the log. Returns its result and the events it produced.
    /// Deterministic: the same store and command give the same outcome on every replica.
    pub fn apply(&mut self, command: &KvCommand) -> (KvResult, Vec<Event>) {
        let mut batch = Batch {
            main: self.revision + 1,
            next_sub: 0,
            changed: false,
            events: Vec::new(),
        };
        let result = match command {
            KvCommand::Put(req) => self
                .validate_put(req)
                .map(|()| KvResult::Put(self.put(&mut batch, req))),
            KvCommand::DeleteRange(req) => KeyRange::resolve(&req.spec()).map(|range| {
                KvResult::DeleteRange(self.delete_range(&mut batch, &range, req.prev_kv))
            }),
            KvCommand::Txn(req) => self
                .validate_txn(req)
                .map(|()| KvResult::Txn(self.txn(&mut batch, req))),
            KvCommand::Compact(req) => self.compact(req.revision).map(KvResult::Compact),
            KvCommand::LeaseGrant { id, ttl } => {
                self.lease_grant(*id, *ttl).map(KvResult::LeaseGrant)
            }
            KvCommand::LeaseRevoke { id } => self
                .lease_revoke(&mut batch, *id)
                .map(KvResult::LeaseRevoke),
        };
        if batch.changed {
            self.revision = batch.main;
        }
        let result = match result {
            Ok(mut result) => {
                set_header_revision(&mut result, self.revision);
                result
            }
            Err(error) => KvResult::Error(error),
        };
        (result, batch.events)
    }

    /// Checks what a put needs wherever it stands in a transaction: a key, no value or lease
    /// next to the option that keeps it, and a live lease. Leases do not change inside a
    /// transaction, so checking both branches against the state before it is exact, and no
    /// key is ever attached to a lease that does not exist.
    fn validate_put_everywhere(&self, req: &PutRequest) -> Result<(), ApiError> {
        if req.key.is_empty() {
            return Err(ApiError::bad_request("key must not be empty"));
        }
        if req.ignore_value && !req.value.is_empty() {
            return Err(ApiError::bad_request(
                "value is provided together with ignore_value",
            ));
        }
        if req.ignore_lease && req.lease != 0 {
            return Err(ApiError::bad_request(
                "lease is provided together with ignore_lease",
            ));
        }
        if req.lease != 0 && !self.leases.contains_key(&req.lease) {
            return Err(lease_not_found(req.lease));
        }
        Ok(())
    }

    /// Checks a put that will run: the key exists when the put keeps its value or lease.
    fn validate_put_taken(&self, req: &PutRequest) -> Result<(), ApiError> {
        if (req.ignore_value || req.ignore_lease) && self.live(&req.key).is_none() {
            return Err(ApiError::bad_request(
                "key not found: a put with ignore_value or ignore_lease needs the key to exist",
            ));
        }
        Ok(())
    }

    fn validate_put(&self, req: &PutRequest) -> Result<(), ApiError> {
        self.validate_put_everywhere(req)?;
        self.validate_put_taken(req)
    }

    /// Checks the puts of the branch a transaction will take against the store as it is
    /// before the transaction, nested transactions included, as etcd does: a branch not taken
    /// may keep the value of a missing key. (A nested transaction's compares are judged on
    /// that state too, like etcd's check; should apply take the other branch, a put that keeps
    /// the value of a key which is gone writes an empty value, the same on every replica.)
    fn validate_txn_taken(&self, req: &TxnRequest) -> Result<(), ApiError> {
        // Only a put that keeps what a key holds, or a nested transaction, can fail here; the
        // compares (a lookup each) are judged only when a branch has one.
        let checked = |ops: &[RequestOp]| {
            ops.iter().any(|op| match op {
                RequestOp::Put(put) => put.ignore_value || put.ignore_lease,
                RequestOp::Txn(_) => true,
                RequestOp::Range(_) | RequestOp::DeleteRange(_) => false,
            })
        };
        if !checked(&req.success) && !checked(&req.failure) {
            return Ok(());
        }
        let ops = if req.compare.iter().all(|c| self.compare_holds(c)) {
            &req.success
        } else {
            &req.failure
        };
        for op in ops {
            match op {
                RequestOp::Put(put) => self.validate_put_taken(put)?,
                RequestOp::Txn(nested) => self.validate_txn_taken(nested)?,
                RequestOp::Range(_) | RequestOp::DeleteRange(_) => {}
            }
        }
        Ok(())
    }

    fn validate_txn(&self, req: &TxnRequest) -> Result<(), ApiError> {
        self.validate_txn_shape(req)?;
        self.validate_txn_taken(req)
    }

    fn validate_txn_shape(&self, req: &TxnRequest) -> Result<(), ApiError> {
        for compare in &req.compare {
            KeyRange::resolve(&compare.spec())?;
        }
        for ops in [&req.success, &req.failure] {
            let mut put_keys = BTreeSet::new();
            let mut deletes = Vec::new();
            for op in ops {
                match op {
                    RequestOp::Range(range) => {
                        KeyRange::resolve(&range.spec())?;
                        self.check_read_revision(range.revision)?;
                        if range.limit < 0 {
                            return Err(ApiError::bad_request("limit must not be negative"));
                        }
                    }
                    RequestOp::Put(put) => {
                        self.validate_put_everywhere(put)?;
                        if !put_keys.insert(put.key.clone()) {
                            return Err(ApiError::bad_request(
                                "duplicate key given in txn request",
                            ));
                        }
                    }
                    RequestOp::DeleteRange(delete) => {
                        deletes.push(KeyRange::resolve(&delete.spec())?)
                    }
                    RequestOp::Txn(nested) => self.validate_txn_shape(nested)?,
                }
            }
            for key in &put_keys {
                if deletes.iter().any(|range| range.contains(key)) {
                    return Err(ApiError::bad_request("duplicate key given in txn request"));
                }
            }
        }
        Ok(())
    }

    fn put(&mut self, batch: &mut Batch, req: &PutRequest) -> PutResponse {
        // One descent to learn what the key holds; a write then descends once more (a new
        // key's insert, or an existing key's history made writable). Every put of a large
        // store pays each descent in cache misses.
        let held = self.keys.get(req.key.as_slice());
        let known = held.is_some();
        let prev = held
            .and_then(|versions| versions.last())
            .filter(|v| !v.tombstone)
            .cloned();
        let (create_revision, version) = match &prev {
            Some(p) => (p.create_revision, p.version + 1),
            None => (batch.main, 1),
        };
        // `ignore_value` / `ignore_lease` keep what the key holds (validated to exist).
        let value = match (&prev, req.ignore_value) {
            (Some(p), true) => p.value.clone(),
            _ => req.value.as_slice().into(),
        };
        let lease = match (&prev, req.ignore_lease) {
            (Some(p), true) => p.lease,
            _ => req.lease,
        };
        if let Some(p) = &prev {
            if p.lease != 0 && p.lease != lease {
                self.detach(p.lease, &req.key);
            }
        }
        let key = Key::new(&req.key);
        if lease != 0 {
            if let Some(held) = self.leases.get_mut(&lease) {
                held.keys.insert(key.clone());
            }
        }
        let sub = batch.next();
        let new = Version {
            main: batch.main,
            sub,
            create_revision,
            version,
            value,
            lease,
            tombstone: false,
        };
        let prev_kv = prev.as_ref().map(|p| p.to_kv(&req.key));
        batch
            .events
            .push(event_for(&req.key, &new, prev_kv.clone()));
        self.derived.versions += 1;
        self.derived.bytes += version_bytes(&key, &new);
        self.derived.value_bytes += new.value.len();
        let history = if known {
            self.keys.get_mut(req.key.as_slice())
        } else {
            None
        };
        match history {
            Some(history) => {
                history.push(new);
                if history.len() == 2 {
                    self.derived.compactable.insert(key);
                }
            }
            None => {
                self.derived.key_bytes += key.len();
                self.keys.insert(key, History::one(new));
            }
        }
        PutResponse {
            header: self.header(),
            prev_kv: if req.prev_kv { prev_kv } else { None },
        }
    }

    fn detach(&mut self, lease_id: i64, key: &[u8]) {
        if let Some(lease) = self.leases.get_mut(&lease_id) {
            lease.keys.remove(key);
        }
    }

    fn delete_range(
        &mut self,
        batch: &mut Batch,
        range: &KeyRange,
        want_prev: bool,
    ) -> DeleteRangeResponse {
        let doomed: Vec<Key> = self
            .in_range(range)
            .filter(|(_, versions)| versions.last().is_some_and(|v| !v.tombstone))
            .map(|(key, _)| key.clone())
            .collect();
        let mut response = DeleteRangeResponse {
            deleted: doomed.len() as i64,
            ..Default::default()
        };
        for key in doomed {
            let prev = self.delete_key(batch, &key);
            if want_prev {
                response.prev_kvs.push(prev);
            }
        }
        response
    }

    /// Writes a tombstone for a live key and returns the key-value it replaced.
    fn delete_key(&mut self, batch: &mut Batch, key: &[u8]) -> KeyValue {
        let sub = batch.next();
        let history = self
            .keys
            .get_mut(key)
            .expect("caller checked the key is live");
        let prev = history.last().expect("live key has a version").clone();
        let tombstone = Version {
            main: batch.main,
            sub,
            create_revision: 0,
            version: 0,
            value: Box::default(),
            lease: 0,
            tombstone: true,
        };
        let prev_kv = prev.to_kv(key);
        batch
            .events
            .push(event_for(key, &tombstone, Some(prev_kv.clone())));
        self.derived.versions += 1;
        self.derived.bytes += version_bytes(key, &tombstone);
        history.push(tombstone);
        self.derived.compactable.insert(Key::new(key));
        if prev.lease != 0 {
            self.detach(prev.lease, key);
        }
        prev_kv
    }

    fn compare_holds(&self, compare: &Compare) -> bool {
        let range = match KeyRange::resolve(&compare.spec()) {
            Ok(range) => range,
            Err(_) => return false,
        };
        let live: Vec<(&Key, &Version)> = self
            .in_range(&range)
            .filter_map(|(key, versions)| {
                versions.last().filter(|v| !v.tombstone).map(|v| (key, v))
            })
            .collect();
        if live.is_empty() {
            // etcd: a missing key has version, revisions and lease 0; a value compare fails.
            // An empty range is compared the same way, as one missing key (etcd's
            // `applyCompare`), so `version > 0` on an empty prefix is false, not vacuously true.
            if matches!(compare.target, CompareTarget::Value(_)) {
                return false;
            }
            return compare_numbers(compare.result, 0, target_number(&compare.target));
        }
        live.iter().all(|(_, version)| match &compare.target {
            CompareTarget::Value(expected) => {
                compare_ord(compare.result, version.value[..].cmp(expected.as_slice()))
            }
            CompareTarget::Version(n) => compare_numbers(compare.result, version.version, *n),
            CompareTarget::CreateRevision(n) => {
                compare_numbers(compare.result, version.create_revision, *n)
            }
            CompareTarget::ModRevision(n) => compare_numbers(compare.result, version.main, *n),
            CompareTarget::Lease(n) => compare_numbers(compare.result, version.lease, *n),
        })
    }

    fn txn(&mut self, batch: &mut Batch, req: &TxnRequest) -> TxnResponse {
        let succeeded = req
            .compare
            .iter()
            .all(|compare| self.compare_holds(compare));
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match op {
                RequestOp::Range(range) => {
                    // Validated before apply; a failure here would be a bug, so report empty.
                    // Reads see this txn's earlier writes (etcd reads at `main` once changed).
                    let mut result = self.range_in(range, Some(batch.main)).unwrap_or_default();
                    result.header = ResponseHeader::default();
                    ResponseOp::Range(result)
                }
                RequestOp::Put(put) => ResponseOp::Put(self.put(batch, put)),
                RequestOp::DeleteRange(delete) => {
                    let range = KeyRange::resolve(&delete.spec()).expect("validated before apply");
                    ResponseOp::DeleteRange(self.delete_range(batch, &range, delete.prev_kv))
                }
                RequestOp::Txn(nested) => ResponseOp::Txn(self.txn(batch, nested)),
            };
            responses.push(response);
        }
        TxnResponse {
            header: ResponseHeader::default(),
            succeeded,
            responses,
        }
    }

    fn compact(&mut self, revision: i64) -> Result<CompactResponse, ApiError> {
        if revision <= self.compact_revision {
            return Err(ApiError::new(
                ErrorCode::Compacted,
                format!(
                    "revision {revision} has already been compacted; the compaction revision is {}",
                    self.compact_revision
                ),
            ));
        }
        if revision > self.revision {
            return Err(ApiError::new(
                ErrorCode::FutureRevision,
                format!(
                    "cannot compact to future revision {revision}; the current revision is {}",
                    self.revision
                ),
            ));
        }
        // Find what changes first and touch only that: a key with one live version keeps its
        // node, so a snapshot view taken before still shares it.
        // Only keys with history can change (`Derived::compactable`).
        let changed: Vec<Key> = self
            .derived
            .compactable
            .iter()
            .filter(|key| {
                self.keys
                    .get(*key)
                    .is_some_and(|versions| compacted_len(versions, revision) != versions.len())
            })
            .cloned()
            .collect();
        for key in changed {
            let Some(history) = self.keys.get_mut(&key) else {
                continue;
            };
            let dropping = history.len() - compacted_len(history, revision);
            for dropped in &history[..dropping] {
                self.derived.versions -= 1;
                self.derived.bytes -= version_bytes(&key, dropped);
                self.derived.value_bytes -= dropped.value.len();
            }
            history.drop_oldest(dropping);
            if !is_compactable(history) {
                self.derived.compactable.remove(&key);
            }
            if history.is_empty() {
                self.derived.key_bytes -= key.len();
                self.keys.remove(&key);
            }
        }
        self.compact_revision = revision;
        Ok(CompactResponse {
            header: self.header(),
        })
    }

    fn lease_grant(&mut self, id: i64, ttl: i64) -> Result<LeaseGrantResponse, ApiError> {
        if id <= 0 {
            return Err(ApiError::bad_request("lease id must be positive"));
        }
        if ttl <= 0 {
            return Err(ApiError::bad_request("lease ttl must be at least 1 second"));
        }
        if self.leases.contains_key(&id) {
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!("lease {id:x} already exists"),
            ));
        }
        self.leases.insert(
            id,
            Lease {
                ttl,
                keys: imbl::OrdSet::new(),
            },
        );
        Ok(LeaseGrantResponse {
            header: self.header(),
            id,
            ttl,
        })
    }

    fn lease_revoke(
        &mut self,
        batch: &mut Batch,
        id: i64,
    ) -> Result<LeaseRevokeResponse, ApiError> {
        let lease = self.leases.remove(&id).ok_or_else(|| lease_not_found(id))?;
        for key in &lease.keys {
            if self.live(key).is_some_and(|v| v.lease == id) {
                self.delete_key(batch, key);
            }
        }
        Ok(LeaseRevokeResponse {
            header: self.header(),
        })
    }
}

/// How many of `versions` a compaction at `revision` keeps: the last one visible at
/// `revision` and everything after it, minus that one if it is a tombstone older than
/// `revision` (it hides nothing anyone can read).
fn compacted_len(versions: &[Version], revision: i64) -> usize {
    let visible = versions.partition_point(|v| v.main <= revision);
    let mut first = visible.saturating_sub(1);
    if versions
        .get(first)
        .is_some_and(|v| v.tombstone && v.main < revision)
    {
        first += 1;
    }
    versions.len() - first
}

/// Filters and sorts a range's key-values as the request asks (before its limit is applied).
/// The sort is stable, so keys that compare equal stay in key order.
fn arrange(req: &RangeRequest, kvs: &mut Vec<KeyValue>) {
    let above = |value: i64, bound: i64| bound == 0 || value >= bound;
    let below = |value: i64, bound: i64| bound == 0 || value <= bound;
    kvs.retain(|kv| {
        above(kv.mod_revision, req.min_mod_revision)
            && below(kv.mod_revision, req.max_mod_revision)
            && above(kv.create_revision, req.min_create_revision)
            && below(kv.create_revision, req.max_create_revision)
    });
    if !req.sorts() {
        return;
    }
    let target = req.sort_target;
    let descending = req.effective_order() == SortOrder::Descend;
    kvs.sort_by(|a, b| {
        let ordering = match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        };
        if descending {
            ordering.reverse()
        } else {
            ordering
        }
    });
}

fn lease_not_found(id: i64) -> ApiError {
    ApiError::not_found(format!(
        "lease {id:x} not found; grant one with `strata lease grant TTL`"
    ))
}

fn event_for(key: &[u8], version: &Version, prev_kv: Option<KeyValue>) -> Event {
    if version.tombstone {
        Event {
            kind: EventType::Delete,
            kv: KeyValue {
                key: key.to_vec(),
                mod_revision: version.main,
                ..Default::default()
            },
            prev_kv,
        }
    } else {
        Event {
            kind: EventType::Put,
            kv: version.to_kv(key),
            prev_kv,
        }
    }
}

fn target_number(target: &CompareTarget) -> i64 {
    match target {
        CompareTarget::Value(_) => 0,
        CompareTarget::Version(n)
        | CompareTarget::CreateRevision(n)
        | CompareTarget::ModRevision(n)
        | CompareTarget::Lease(n) => *n,
    }
}

fn compare_numbers(result: CompareResult, actual: i64, expected: i64) -> bool {
    compare_ord(result, actual.cmp(&expected))
}

fn compare_ord(result: CompareResult, ordering: std::cmp::Ordering) -> bool {
    use std::cmp::Ordering::{Equal, Greater, Less};
    match result {
        CompareResult::Equal => ordering == Equal,
        CompareResult::NotEqual => ordering != Equal,
        CompareResult::Greater => ordering == Greater,
        CompareResult::Less => ordering == Less,
    }
}

/// Stamps the final revision on a result's header (and a txn's nested write headers).
fn set_header_revision(result: &mut KvResult, revision: i64) {
    let header = match result {
        KvResult::Put(r) => &mut r.header,
        KvResult::DeleteRange(r) => &mut r.header,
        KvResult::Txn(r) => {
            stamp_txn(r, revision);
            return;
        }
        KvResult::Compact(r) => &mut r.header,
        KvResult::LeaseGrant(r) => &mut r.header,
        KvResult::LeaseRevoke(r) => &mut r.header,
        KvResult::Error(_) => return,
    };
    header.revision = revision;
}

fn stamp_txn(txn: &mut TxnResponse, revision: i64) {
    txn.header.revision = revision;
    for response in &mut txn.responses {
        match response {
            ResponseOp::Range(r) => r.header.revision = revision,
            ResponseOp::Put(r) => r.header.revision = revision,
            ResponseOp::DeleteRange(r) => r.header.revision = revision,
            ResponseOp::Txn(r) => stamp_txn(r, revision),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::kv::{CompactRequest, DeleteRangeRequest};

    fn put(store: &mut KvStore, key: &str, value: &str) -> i64 {
        let cmd = KvCommand::Put(PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        });
        match store.apply(&cmd).0 {
            KvResult::Put(r) => r.header.revision,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_replay_comes_in_batches_that_never_split_a_revision_and_ignores_later_writes() {
        let mut store = KvStore::new();
        put(&mut store, "k/a", "1");
        // One revision that changes three keys.
        let txn = TxnRequest {
            success: ["k/b", "k/c", "k/d"]
                .iter()
                .map(|key| {
                    RequestOp::Put(PutRequest {
                        key: key.as_bytes().to_vec(),
                        value: b"2".to_vec(),
                        ..Default::default()
                    })
                })
                .collect(),
            ..Default::default()
        };
        assert!(matches!(
            store.apply(&KvCommand::Txn(txn)).0,
            KvResult::Txn(_)
        ));
        put(&mut store, "k/a", "3");
        let mut replay = store
            .view()
            .replay(&RangeSpec::prefix("k/"), 1, true)
            .unwrap();
        // Written after the view: not in the replay.
        put(&mut store, "k/e", "4");
        assert_eq!(replay.len(), 5);
        let revisions =
            |batch: &[Event]| -> Vec<i64> { batch.iter().map(|e| e.kv.mod_revision).collect() };
        assert_eq!(revisions(&replay.next_batch(1)), [2]);
        assert_eq!(revisions(&replay.next_batch(1)), [3, 3, 3]);
        let last = replay.next_batch(1);
        assert_eq!(revisions(&last), [4]);
        assert_eq!(last[0].prev_kv.as_ref().unwrap().value, b"1");
        assert!(replay.is_empty() && replay.next_batch(1).is_empty());
    }

    #[test]
    fn a_snapshot_claiming_a_huge_map_is_an_error_not_an_abort() {
        let mut bytes = postcard::to_allocvec(&KvStore::new()).unwrap();
        // revision 1, compact revision 0, then the key map's length: claim 2^60 entries.
        bytes.truncate(2);
        bytes.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10]);
        assert!(postcard::from_bytes::<KvStore>(&bytes).is_err());
        let mut scratch = [0u8; 16];
        assert!(postcard::from_io::<KvStore, _>((&bytes[..], &mut scratch[..])).is_err());
    }

    fn get(store: &KvStore, key: &str, revision: i64) -> Option<KeyValue> {
        let req = RangeRequest {
            key: key.into(),
            revision,
            ..Default::default()
        };
        store.range(&req).unwrap().kvs.into_iter().next()
    }

    #[test]
    fn revisions_versions_and_history() {
        let mut store = KvStore::new();
        assert_eq!(put(&mut store, "a", "1"), 2);
        assert_eq!(put(&mut store, "a", "2"), 3);
        let kv = get(&store, "a", 0).unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
        assert_eq!(get(&store, "a", 2).unwrap().value, b"1");
        let del = KvCommand::DeleteRange(DeleteRangeRequest {
            key: b"a".to_vec(),
            prev_kv: true,
            ..Default::default()
        });
        let (result, events) = store.apply(&del);
        let KvResult::DeleteRange(r) = result else {
            panic!()
        };
        assert_eq!((r.deleted, r.header.revision), (1, 4));
        assert_eq!(r.prev_kvs[0].value, b"2");
        assert_eq!(events[0].kind, EventType::Delete);
        assert!(get(&store, "a", 0).is_none());
        assert_eq!(put(&mut store, "a", "3"), 5);
        let kv = get(&store, "a", 0).unwrap();
        assert_eq!((kv.create_revision, kv.version), (5, 1));
    }

    #[test]
    fn deleting_nothing_does_not_bump_revision() {
        let mut store = KvStore::new();
        let del = KvCommand::DeleteRange(DeleteRangeRequest {
            key: b"x".to_vec(),
            ..Default::default()
        });
        store.apply(&del);
        assert_eq!(store.revision(), 1);
    }

    #[test]
    fn compaction_hides_old_revisions() {
        let mut store = KvStore::new();
        put(&mut store, "a", "1");
        put(&mut store, "a", "2");
        put(&mut store, "b", "1");
        let (result, _) = store.apply(&KvCommand::Compact(CompactRequest { revision: 3 }));
        assert!(matches!(result, KvResult::Compact(_)));
        assert_eq!(get(&store, "a", 3).unwrap().value, b"2");
        let err = store
            .range(&RangeRequest {
                key: b"a".to_vec(),
                revision: 2,
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Compacted);
        let (again, _) = store.apply(&KvCommand::Compact(CompactRequest { revision: 3 }));
        assert!(matches!(again, KvResult::Error(e) if e.code == ErrorCode::Compacted));
    }

    #[test]
    fn lease_revoke_deletes_attached_keys() {
        let mut store = KvStore::new();
        store.apply(&KvCommand::LeaseGrant { id: 7, ttl: 10 });
        let cmd = KvCommand::Put(PutRequest {
            key: b"k".to_vec(),
            lease: 7,
            ..Default::default()
        });
        store.apply(&cmd);
        let (result, events) = store.apply(&KvCommand::LeaseRevoke { id: 7 });
        assert!(matches!(result, KvResult::LeaseRevoke(_)));
        assert_eq!(events.len(), 1);
        assert!(get(&store, "k", 0).is_none());
        let bad = KvCommand::Put(PutRequest {
            key: b"k".to_vec(),
            lease: 7,
            ..Default::default()
        });
        assert!(matches!(store.apply(&bad).0, KvResult::Error(e) if e.code == ErrorCode::NotFound));
    }

    #[test]
    fn txn_compare_and_swap() {
        let mut store = KvStore::new();
        let txn = TxnRequest {
            compare: vec![Compare {
                key: b"lock".to_vec(),
                range_end: vec![],
                prefix: false,
                result: CompareResult::Equal,
                target: CompareTarget::CreateRevision(0),
            }],
            success: vec![RequestOp::Put(PutRequest {
                key: b"lock".to_vec(),
                value: b"me".to_vec(),
                ..Default::default()
            })],
            failure: vec![RequestOp::Range(RangeRequest {
                key: b"lock".to_vec(),
                ..Default::default()
            })],
        };
        let KvResult::Txn(first) = store.apply(&KvCommand::Txn(txn.clone())).0 else {
            panic!()
        };
        assert!(first.succeeded);
        let KvResult::Txn(second) = store.apply(&KvCommand::Txn(txn)).0 else {
            panic!()
        };
        assert!(!second.succeeded);
        let ResponseOp::Range(range) = &second.responses[0] else {
            panic!()
        };
        assert_eq!(range.kvs[0].value, b"me");
    }

    #[test]
    fn events_since_rebuilds_history_in_order() {
        let mut store = KvStore::new();
        put(&mut store, "b", "1");
        put(&mut store, "a", "1");
        put(&mut store, "b", "2");
        let events = store.events_since(&RangeSpec::prefix(""), 3).unwrap();
        let revs: Vec<i64> = events.iter().map(|e| e.kv.mod_revision).collect();
        assert_eq!(revs, vec![3, 4]);
        assert_eq!(events[1].prev_kv.as_ref().unwrap().value, b"1");
    }

    #[test]
    fn snapshot_round_trips() {
        let mut store = KvStore::new();
        put(&mut store, "a", "1");
        store.apply(&KvCommand::LeaseGrant { id: 1, ttl: 5 });
        let bytes = postcard::to_allocvec(&store).unwrap();
        let back: KvStore = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, store);
    }

    fn keys_of(response: &RangeResponse) -> Vec<String> {
        response
            .kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect()
    }

    /// a (create 1, mod 4, value z), b (create 2, mod 2, value x), c (create 3, mod 3, value y).
    fn three_keys() -> KvStore {
        let mut store = KvStore::new();
        put(&mut store, "a", "w");
        put(&mut store, "b", "x");
        put(&mut store, "c", "y");
        put(&mut store, "a", "z");
        store
    }

    fn all(store: &KvStore, adjust: impl FnOnce(&mut RangeRequest)) -> RangeResponse {
        let mut req = RangeRequest {
            key: b"a".to_vec(),
            range_end: b"z".to_vec(),
            ..Default::default()
        };
        adjust(&mut req);
        store.range(&req).unwrap()
    }

    #[test]
    fn a_sorted_range_sorts_before_the_limit_cuts() {
        let store = three_keys();
        let response = all(&store, |r| {
            r.sort_order = SortOrder::Descend;
            r.sort_target = SortTarget::Mod;
            r.limit = 2;
        });
        assert_eq!(keys_of(&response), ["a", "c"]);
        assert!(response.more);
        assert_eq!(response.count, 3);
    }

    #[test]
    fn a_target_without_order_sorts_ascending_and_keys_only_drops_values_after() {
        let store = three_keys();
        let response = all(&store, |r| {
            r.sort_target = SortTarget::Value;
            r.keys_only = true;
        });
        assert_eq!(keys_of(&response), ["b", "c", "a"]);
        assert!(response.kvs.iter().all(|kv| kv.value.is_empty()));
        let descending_keys = all(&store, |r| r.sort_order = SortOrder::Descend);
        assert_eq!(keys_of(&descending_keys), ["c", "b", "a"]);
    }

    #[test]
    fn revision_filters_keep_the_count_of_the_whole_range() {
        let store = three_keys();
        let response = all(&store, |r| {
            r.max_create_revision = 2;
            r.min_mod_revision = 3;
        });
        assert_eq!(keys_of(&response), ["a"]);
        assert_eq!(response.count, 3);
        assert!(!response.more);
    }

    fn put_with(store: &mut KvStore, req: PutRequest) -> KvResult {
        store.apply(&KvCommand::Put(req)).0
    }

    #[test]
    fn ignore_value_and_ignore_lease_keep_what_the_key_holds() {
        let mut store = KvStore::new();
        store.apply(&KvCommand::LeaseGrant { id: 7, ttl: 10 });
        store.apply(&KvCommand::Put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            lease: 7,
            ..Default::default()
        }));
        let keep_value = PutRequest {
            key: b"k".to_vec(),
            ignore_value: true,
            ..Default::default()
        };
        assert!(matches!(put_with(&mut store, keep_value), KvResult::Put(_)));
        let kv = get(&store, "k", 0).unwrap();
        assert_eq!(
            (kv.value.as_slice(), kv.lease, kv.version),
            (&b"v"[..], 0, 2)
        );
        assert!(
            store.lease(7).unwrap().1.is_empty(),
            "the lease was replaced by none"
        );

        store.apply(&KvCommand::Put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            lease: 7,
            ..Default::default()
        }));
        let keep_lease = PutRequest {
            key: b"k".to_vec(),
            value: b"new".to_vec(),
            ignore_lease: true,
            ..Default::default()
        };
        assert!(matches!(put_with(&mut store, keep_lease), KvResult::Put(_)));
        let kv = get(&store, "k", 0).unwrap();
        assert_eq!((kv.value.as_slice(), kv.lease), (&b"new"[..], 7));
        assert_eq!(store.lease(7).unwrap().1, vec![b"k".to_vec()]);
    }

    #[test]
    fn ignore_options_refuse_a_missing_key_or_a_given_field_and_change_nothing() {
        let mut store = KvStore::new();
        put(&mut store, "k", "v");
        let revision = store.revision();
        let cases = [
            PutRequest {
                key: b"missing".to_vec(),
                ignore_value: true,
                ..Default::default()
            },
            PutRequest {
                key: b"k".to_vec(),
                value: b"x".to_vec(),
                ignore_value: true,
                ..Default::default()
            },
            PutRequest {
                key: b"k".to_vec(),
                lease: 3,
                ignore_lease: true,
                ..Default::default()
            },
        ];
        for case in cases {
            let result = put_with(&mut store, case.clone());
            assert!(
                matches!(&result, KvResult::Error(e) if e.code == ErrorCode::BadRequest),
                "{case:?} gave {result:?}"
            );
        }
        assert_eq!(store.revision(), revision);
    }

    #[test]
    fn a_txn_checks_ignore_options_only_on_the_branch_it_takes() {
        let mut store = KvStore::new();
        put(&mut store, "k", "v");
        let keep_missing = RequestOp::Put(PutRequest {
            key: b"missing".to_vec(),
            ignore_value: true,
            ..Default::default()
        });
        let keep_k = RequestOp::Put(PutRequest {
            key: b"k".to_vec(),
            ignore_value: true,
            prev_kv: true,
            ..Default::default()
        });
        let txn = |success: RequestOp, failure: RequestOp| {
            KvCommand::Txn(TxnRequest {
                compare: vec![Compare {
                    key: b"k".to_vec(),
                    range_end: Vec::new(),
                    prefix: false,
                    result: CompareResult::Greater,
                    target: CompareTarget::Version(0),
                }],
                success: vec![success],
                failure: vec![failure],
            })
        };
        let taken = store.apply(&txn(keep_k.clone(), keep_missing.clone())).0;
        assert!(
            matches!(taken, KvResult::Txn(ref t) if t.succeeded),
            "{taken:?}"
        );
        assert_eq!(get(&store, "k", 0).unwrap().version, 2);
        let refused = store.apply(&txn(keep_missing, keep_k)).0;
        assert!(matches!(refused, KvResult::Error(_)), "{refused:?}");
        assert_eq!(get(&store, "k", 0).unwrap().version, 2);
    }

    #[test]
    fn a_missing_lease_is_refused_in_either_branch_so_no_key_holds_a_dead_lease() {
        let mut store = KvStore::new();
        let on_dead_lease = RequestOp::Put(PutRequest {
            key: b"k".to_vec(),
            lease: 99,
            ..Default::default()
        });
        let txn = KvCommand::Txn(TxnRequest {
            compare: Vec::new(),
            success: Vec::new(),
            failure: vec![on_dead_lease],
        });
        let before = store.revision();
        let refused = store.apply(&txn).0;
        assert!(matches!(refused, KvResult::Error(ref e) if e.code == ErrorCode::NotFound));
        assert_eq!(store.revision(), before);
    }
}
