//! Model-based property tests: [`KvStore`] against a deliberately naive reference model.
//!
//! The model keeps a full copy of the key space after every revision, so "read at revision R"
//! is a vector lookup, and it re-derives everything else (which keys a lease holds, watch
//! events, compare outcomes) from those snapshots. Its request semantics are written from the
//! etcd v3 rules, not from `store.rs`. Inputs come from a tiny alphabet so that keys, prefixes,
//! ranges and lease ids collide all the time.

use proptest::prelude::*;
use std::collections::BTreeMap;
use strata_kv::KvStore;
use strata_proto::error::{ApiError, ErrorCode};
use strata_proto::kv::{
    CompactRequest, CompactResponse, Compare, CompareResult, CompareTarget, DeleteRangeRequest,
    DeleteRangeResponse, Event, EventType, KeyValue, KvCommand, KvResult, LeaseGrantResponse,
    LeaseRevokeResponse, LeaseStatus, PutRequest, PutResponse, RangeRequest, RangeResponse,
    RangeSpec, RequestOp, ResponseHeader, ResponseOp, SortOrder, SortTarget, TxnRequest,
    TxnResponse,
};

// ---------------------------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------------------------

/// One live key as the model sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelKv {
    value: Vec<u8>,
    create_revision: i64,
    mod_revision: i64,
    version: i64,
    lease: i64,
}

impl ModelKv {
    fn to_kv(&self, key: &[u8]) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            value: self.value.clone(),
            lease: self.lease,
        }
    }

    fn from_kv(kv: &KeyValue) -> Self {
        ModelKv {
            value: kv.value.clone(),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
        }
    }
}

/// The whole key space at one revision: live keys only.
type State = BTreeMap<Vec<u8>, ModelKv>;

/// Which keys a request addresses, derived from the raw `key` / `range_end` / `prefix` fields.
enum Sel {
    One(Vec<u8>),
    Prefix(Vec<u8>),
    From(Vec<u8>),
    Between(Vec<u8>, Vec<u8>),
}

impl Sel {
    fn parse(key: &[u8], range_end: &[u8], prefix: bool) -> Result<Sel, ErrorCode> {
        if prefix {
            return if range_end.is_empty() {
                Ok(Sel::Prefix(key.to_vec()))
            } else {
                Err(ErrorCode::BadRequest)
            };
        }
        if range_end.is_empty() {
            return if key.is_empty() {
                Err(ErrorCode::BadRequest)
            } else {
                Ok(Sel::One(key.to_vec()))
            };
        }
        if range_end == [0] {
            return Ok(Sel::From(key.to_vec()));
        }
        if range_end <= key {
            return Err(ErrorCode::BadRequest);
        }
        Ok(Sel::Between(key.to_vec(), range_end.to_vec()))
    }

    fn matches(&self, key: &[u8]) -> bool {
        match self {
            Sel::One(k) => key == k.as_slice(),
            Sel::Prefix(p) => key.starts_with(p),
            Sel::From(start) => key >= start.as_slice(),
            Sel::Between(start, end) => key >= start.as_slice() && key < end.as_slice(),
        }
    }
}

fn sel_of_range(req: &RangeRequest) -> Result<Sel, ErrorCode> {
    Sel::parse(&req.key, &req.range_end, req.prefix)
}

fn sel_of_delete(req: &DeleteRangeRequest) -> Result<Sel, ErrorCode> {
    Sel::parse(&req.key, &req.range_end, req.prefix)
}

fn sel_of_compare(c: &Compare) -> Result<Sel, ErrorCode> {
    Sel::parse(&c.key, &c.range_end, c.prefix)
}

/// The live keys of `state` that `sel` addresses, in key order.
fn keys_in(state: &State, sel: &Sel) -> Vec<(Vec<u8>, ModelKv)> {
    state
        .iter()
        .filter(|(key, _)| sel.matches(key))
        .map(|(key, kv)| (key.clone(), kv.clone()))
        .collect()
}

/// A range read over one snapshot; the header is left for the caller. etcd's order of work:
/// every key of the range, then the revision filters, then the sort, then the limit;
/// `count` is the whole range and `more` says the limit cut what the filters kept.
fn read(state: &State, sel: &Sel, req: &RangeRequest) -> RangeResponse {
    let found = keys_in(state, sel);
    let count = found.len() as i64;
    if req.count_only {
        return RangeResponse {
            count,
            ..Default::default()
        };
    }
    let within = |value: i64, low: i64, high: i64| {
        (low == 0 || value >= low) && (high == 0 || value <= high)
    };
    let mut kvs: Vec<KeyValue> = found
        .iter()
        .map(|(key, kv)| kv.to_kv(key))
        .filter(|kv| {
            within(kv.mod_revision, req.min_mod_revision, req.max_mod_revision)
                && within(
                    kv.create_revision,
                    req.min_create_revision,
                    req.max_create_revision,
                )
        })
        .collect();
    let order = match (req.sort_order, req.sort_target) {
        (SortOrder::None, SortTarget::Key) => None,
        (SortOrder::None, _) => Some(SortOrder::Ascend),
        (order, _) => Some(order),
    };
    if let Some(order) = order {
        kvs.sort_by(|a, b| {
            let by_target = match req.sort_target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            };
            let by_target = if order == SortOrder::Descend {
                by_target.reverse()
            } else {
                by_target
            };
            // Ties keep key order.
            by_target.then_with(|| a.key.cmp(&b.key))
        });
    }
    let more = req.limit > 0 && kvs.len() > req.limit as usize;
    if req.limit > 0 {
        kvs.truncate(req.limit as usize);
    }
    if req.keys_only {
        kvs.iter_mut().for_each(|kv| kv.value.clear());
    }
    RangeResponse {
        header: ResponseHeader::default(),
        kvs,
        more,
        count,
    }
}

fn holds(result: CompareResult, ordering: std::cmp::Ordering) -> bool {
    match result {
        CompareResult::Equal => ordering.is_eq(),
        CompareResult::NotEqual => ordering.is_ne(),
        CompareResult::Greater => ordering.is_gt(),
        CompareResult::Less => ordering.is_lt(),
    }
}

/// etcd's `applyCompare`: every key in the range must satisfy the compare; an empty range is
/// compared as one absent key (all numbers 0), except that a value compare is then false.
fn compare_holds(state: &State, c: &Compare) -> bool {
    let sel = sel_of_compare(c).expect("validated before the txn runs");
    let found = keys_in(state, &sel);
    let absent = ModelKv {
        value: Vec::new(),
        create_revision: 0,
        mod_revision: 0,
        version: 0,
        lease: 0,
    };
    if found.is_empty() && matches!(c.target, CompareTarget::Value(_)) {
        return false;
    }
    let subjects: Vec<&ModelKv> = if found.is_empty() {
        vec![&absent]
    } else {
        found.iter().map(|(_, kv)| kv).collect()
    };
    subjects.iter().all(|kv| {
        let ordering = match &c.target {
            CompareTarget::Value(v) => kv.value.cmp(v),
            CompareTarget::Version(n) => kv.version.cmp(n),
            CompareTarget::CreateRevision(n) => kv.create_revision.cmp(n),
            CompareTarget::ModRevision(n) => kv.mod_revision.cmp(n),
            CompareTarget::Lease(n) => kv.lease.cmp(n),
        };
        holds(c.result, ordering)
    })
}

/// A write request in progress: a working copy of the key space at the next revision.
struct Write {
    rev: i64,
    state: State,
    events: Vec<Event>,
}

impl Write {
    fn put(&mut self, req: &PutRequest) -> PutResponse {
        let prev = self.state.get(&req.key).cloned();
        let new = ModelKv {
            value: match &prev {
                Some(p) if req.ignore_value => p.value.clone(),
                _ => req.value.clone(),
            },
            create_revision: prev.as_ref().map_or(self.rev, |p| p.create_revision),
            mod_revision: self.rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            lease: match &prev {
                Some(p) if req.ignore_lease => p.lease,
                _ => req.lease,
            },
        };
        let prev_kv = prev.map(|p| p.to_kv(&req.key));
        self.events.push(Event {
            kind: EventType::Put,
            kv: new.to_kv(&req.key),
            prev_kv: prev_kv.clone(),
        });
        self.state.insert(req.key.clone(), new);
        PutResponse {
            header: ResponseHeader::default(),
            prev_kv: prev_kv.filter(|_| req.prev_kv),
        }
    }

    fn delete(&mut self, sel: &Sel, want_prev: bool) -> DeleteRangeResponse {
        let doomed = keys_in(&self.state, sel);
        for (key, kv) in &doomed {
            self.state.remove(key);
            self.events.push(Event {
                kind: EventType::Delete,
                kv: KeyValue {
                    key: key.clone(),
                    mod_revision: self.rev,
                    ..Default::default()
                },
                prev_kv: Some(kv.to_kv(key)),
            });
        }
        DeleteRangeResponse {
            header: ResponseHeader::default(),
            deleted: doomed.len() as i64,
            prev_kvs: if want_prev {
                doomed.iter().map(|(key, kv)| kv.to_kv(key)).collect()
            } else {
                Vec::new()
            },
        }
    }
}

struct Model {
    /// `states[r]` is the key space right after revision `r` (revisions 0 and 1 are empty).
    states: Vec<State>,
    /// `events[r]` is what revision `r` changed, in order.
    events: Vec<Vec<Event>>,
    compact: i64,
    /// Live leases: id -> granted TTL. Attached keys are derived from the current snapshot.
    leases: BTreeMap<i64, i64>,
}

impl Model {
    fn new() -> Self {
        Model {
            states: vec![State::new(), State::new()],
            events: vec![Vec::new(), Vec::new()],
            compact: 0,
            leases: BTreeMap::new(),
        }
    }

    fn revision(&self) -> i64 {
        self.states.len() as i64 - 1
    }

    fn current(&self) -> &State {
        self.states.last().expect("never empty")
    }

    fn at(&self, revision: i64) -> Result<&State, ErrorCode> {
        if revision <= 0 {
            Ok(self.current())
        } else if revision < self.compact {
            Err(ErrorCode::Compacted)
        } else if revision > self.revision() {
            Err(ErrorCode::FutureRevision)
        } else {
            Ok(&self.states[revision as usize])
        }
    }

    fn lease_keys(&self, id: i64) -> Vec<Vec<u8>> {
        self.current()
            .iter()
            .filter(|(_, kv)| kv.lease == id)
            .map(|(key, _)| key.clone())
            .collect()
    }

    fn range(&self, req: &RangeRequest) -> Result<RangeResponse, ErrorCode> {
        let sel = sel_of_range(req)?;
        let state = self.at(req.revision)?;
        if req.limit < 0 {
            return Err(ErrorCode::BadRequest);
        }
        let mut response = read(state, &sel, req);
        response.header.revision = self.revision();
        Ok(response)
    }

    fn begin(&self) -> Write {
        Write {
            rev: self.revision() + 1,
            state: self.current().clone(),
            events: Vec::new(),
        }
    }

    /// Ends a write: a new revision exists only if something changed.
    fn commit(&mut self, write: Write) -> (i64, Vec<Event>) {
        if !write.events.is_empty() {
            self.states.push(write.state);
            self.events.push(write.events.clone());
        }
        (self.revision(), write.events)
    }

    /// What makes a put invalid wherever it stands in a txn (leases do not change inside one).
    fn check_put_everywhere(&self, req: &PutRequest) -> Result<(), ErrorCode> {
        let value_and_ignore = req.ignore_value && !req.value.is_empty();
        let lease_and_ignore = req.ignore_lease && req.lease != 0;
        if req.key.is_empty() || value_and_ignore || lease_and_ignore {
            return Err(ErrorCode::BadRequest);
        }
        if req.lease != 0 && !self.leases.contains_key(&req.lease) {
            return Err(ErrorCode::NotFound);
        }
        Ok(())
    }

    /// What makes a put that will run invalid: keeping a missing key's value or lease.
    fn check_put_taken(&self, req: &PutRequest) -> Result<(), ErrorCode> {
        let keeps = req.ignore_value || req.ignore_lease;
        if keeps && !self.current().contains_key(&req.key) {
            return Err(ErrorCode::BadRequest);
        }
        Ok(())
    }

    fn check_put(&self, req: &PutRequest) -> Result<(), ErrorCode> {
        self.check_put_everywhere(req)?;
        self.check_put_taken(req)
    }

    /// Both branches are checked up front, in order; then the puts of the branch the
    /// compares choose are checked for keys they keep (as etcd does). Any failure rejects the
    /// whole txn.
    fn check_txn(&self, txn: &TxnRequest) -> Result<(), ErrorCode> {
        for c in &txn.compare {
            sel_of_compare(c)?;
        }
        for ops in [&txn.success, &txn.failure] {
            let mut puts: Vec<&[u8]> = Vec::new();
            let mut deletes = Vec::new();
            for op in ops {
                match op {
                    RequestOp::Range(r) => {
                        sel_of_range(r)?;
                        self.at(r.revision)?;
                        if r.limit < 0 {
                            return Err(ErrorCode::BadRequest);
                        }
                    }
                    RequestOp::Put(p) => {
                        self.check_put_everywhere(p)?;
                        if puts.contains(&p.key.as_slice()) {
                            return Err(ErrorCode::BadRequest);
                        }
                        puts.push(&p.key);
                    }
                    RequestOp::DeleteRange(d) => deletes.push(sel_of_delete(d)?),
                    RequestOp::Txn(_) => unreachable!("the generator makes no nested txns"),
                }
            }
            if puts
                .iter()
                .any(|key| deletes.iter().any(|sel| sel.matches(key)))
            {
                return Err(ErrorCode::BadRequest);
            }
        }
        let succeeded = txn.compare.iter().all(|c| compare_holds(self.current(), c));
        let taken = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        for op in taken {
            if let RequestOp::Put(p) = op {
                self.check_put_taken(p)?;
            }
        }
        Ok(())
    }

    /// Applies a command; on error nothing changes.
    fn apply(&mut self, command: &KvCommand) -> (Result<KvResult, ErrorCode>, Vec<Event>) {
        match self.try_apply(command) {
            Ok((result, events)) => (Ok(result), events),
            Err(code) => (Err(code), Vec::new()),
        }
    }

    fn try_apply(&mut self, command: &KvCommand) -> Result<(KvResult, Vec<Event>), ErrorCode> {
        match command {
            KvCommand::Put(req) => {
                self.check_put(req)?;
                let mut write = self.begin();
                let mut response = write.put(req);
                let (revision, events) = self.commit(write);
                response.header.revision = revision;
                Ok((KvResult::Put(response), events))
            }
            KvCommand::DeleteRange(req) => {
                let sel = sel_of_delete(req)?;
                let mut write = self.begin();
                let mut response = write.delete(&sel, req.prev_kv);
                let (revision, events) = self.commit(write);
                response.header.revision = revision;
                Ok((KvResult::DeleteRange(response), events))
            }
            KvCommand::Txn(txn) => {
                self.check_txn(txn)?;
                let succeeded = txn.compare.iter().all(|c| compare_holds(self.current(), c));
                let ops = if succeeded {
                    &txn.success
                } else {
                    &txn.failure
                };
                let mut write = self.begin();
                let mut responses = Vec::new();
                for op in ops {
                    responses.push(match op {
                        RequestOp::Range(r) => {
                            let sel = sel_of_range(r).expect("validated");
                            // etcd: a read inside a txn sees the txn's own earlier writes.
                            let state = if r.revision <= 0 {
                                &write.state
                            } else {
                                self.at(r.revision).expect("validated")
                            };
                            ResponseOp::Range(read(state, &sel, r))
                        }
                        RequestOp::Put(p) => ResponseOp::Put(write.put(p)),
                        RequestOp::DeleteRange(d) => {
                            let sel = sel_of_delete(d).expect("validated");
                            ResponseOp::DeleteRange(write.delete(&sel, d.prev_kv))
                        }
                        RequestOp::Txn(_) => unreachable!("the generator makes no nested txns"),
                    });
                }
                let (revision, events) = self.commit(write);
                for response in &mut responses {
                    match response {
                        ResponseOp::Range(r) => r.header.revision = revision,
                        ResponseOp::Put(r) => r.header.revision = revision,
                        ResponseOp::DeleteRange(r) => r.header.revision = revision,
                        ResponseOp::Txn(_) => unreachable!(),
                    }
                }
                let response = TxnResponse {
                    header: header(revision),
                    succeeded,
                    responses,
                };
                Ok((KvResult::Txn(response), events))
            }
            KvCommand::Compact(req) => {
                if req.revision <= self.compact {
                    return Err(ErrorCode::Compacted);
                }
                if req.revision > self.revision() {
                    return Err(ErrorCode::FutureRevision);
                }
                self.compact = req.revision;
                let response = CompactResponse {
                    header: header(self.revision()),
                };
                Ok((KvResult::Compact(response), Vec::new()))
            }
            KvCommand::LeaseGrant { id, ttl } => {
                if *id <= 0 || *ttl <= 0 {
                    return Err(ErrorCode::BadRequest);
                }
                if self.leases.contains_key(id) {
                    return Err(ErrorCode::AlreadyExists);
                }
                self.leases.insert(*id, *ttl);
                let response = LeaseGrantResponse {
                    header: header(self.revision()),
                    id: *id,
                    ttl: *ttl,
                };
                Ok((KvResult::LeaseGrant(response), Vec::new()))
            }
            KvCommand::LeaseRevoke { id } => {
                if self.leases.remove(id).is_none() {
                    return Err(ErrorCode::NotFound);
                }
                let doomed = self.lease_keys(*id);
                let mut write = self.begin();
                for key in doomed {
                    write.delete(&Sel::One(key), false);
                }
                let (revision, events) = self.commit(write);
                let response = LeaseRevokeResponse {
                    header: header(revision),
                };
                Ok((KvResult::LeaseRevoke(response), events))
            }
        }
    }
}

fn header(revision: i64) -> ResponseHeader {
    ResponseHeader {
        revision,
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Generated inputs
// ---------------------------------------------------------------------------------------------

const KEYS: [&str; 5] = ["a", "ab", "abc", "b", "c"];
const PREFIXES: [&str; 4] = ["", "a", "ab", "b"];
/// Bounds for `[start, end)` ranges; a pair with `start == end` becomes "every key >= start".
const BOUNDS: [&str; 7] = ["", "a", "ab", "abc", "b", "c", "d"];
const VALUES: [&str; 4] = ["", "1", "2", "10"];

/// A key selection; the last three are invalid on purpose.
#[derive(Debug, Clone)]
enum Spec {
    Key(&'static str),
    Prefix(&'static str),
    Range(&'static str, &'static str),
    FromKey(&'static str),
    EmptyKey,
    Reversed,
    PrefixAndEnd,
}

impl Spec {
    /// `(key, range_end, prefix)` as the wire carries them.
    fn fields(&self) -> (Vec<u8>, Vec<u8>, bool) {
        let b = |s: &str| s.as_bytes().to_vec();
        match self {
            Spec::Key(k) => (b(k), Vec::new(), false),
            Spec::Prefix(p) => (b(p), Vec::new(), true),
            Spec::Range(start, end) => (b(start), b(end), false),
            Spec::FromKey(start) => (b(start), vec![0], false),
            Spec::EmptyKey => (Vec::new(), Vec::new(), false),
            Spec::Reversed => (b("b"), b("ab"), false),
            Spec::PrefixAndEnd => (b("a"), b("b"), true),
        }
    }

    fn range(&self, limit: i64, revision: i64, keys_only: bool, count_only: bool) -> RangeRequest {
        let (key, range_end, prefix) = self.fields();
        RangeRequest {
            key,
            range_end,
            prefix,
            limit,
            revision,
            keys_only,
            count_only,
            serializable: false,
            ..Default::default()
        }
    }

    fn delete(&self, prev_kv: bool) -> DeleteRangeRequest {
        let (key, range_end, prefix) = self.fields();
        DeleteRangeRequest {
            key,
            range_end,
            prefix,
            prev_kv,
        }
    }
}

fn spec(bad_weight: u32) -> impl Strategy<Value = Spec> {
    prop_oneof![
        12 => prop::sample::select(&KEYS[..]).prop_map(Spec::Key),
        6 => prop::sample::select(&PREFIXES[..]).prop_map(Spec::Prefix),
        6 => (0..BOUNDS.len(), 0..BOUNDS.len()).prop_map(|(i, j)| {
            let (lo, hi) = (i.min(j), i.max(j));
            if lo == hi {
                Spec::FromKey(BOUNDS[lo])
            } else {
                Spec::Range(BOUNDS[lo], BOUNDS[hi])
            }
        }),
        bad_weight => prop_oneof![
            Just(Spec::EmptyKey),
            Just(Spec::Reversed),
            Just(Spec::PrefixAndEnd)
        ],
    ]
}

#[derive(Debug, Clone)]
struct PutGen {
    key: &'static str,
    value: &'static str,
    lease: LeaseGen,
    prev_kv: bool,
    ignore_value: bool,
    ignore_lease: bool,
}

/// The lease of a put.
#[derive(Debug, Clone)]
enum LeaseGen {
    None,
    /// One of the live leases when run (lease 1, likely unknown, when there is none).
    Live(u8),
    /// A fixed id in 1..=3, live or not.
    Id(i64),
}

impl PutGen {
    fn request(&self, model: &Model) -> PutRequest {
        let lease = match self.lease {
            LeaseGen::None => 0,
            LeaseGen::Live(b) => {
                let live: Vec<i64> = model.leases.keys().copied().collect();
                live.get(usize::from(b) % live.len().max(1))
                    .copied()
                    .unwrap_or(1)
            }
            LeaseGen::Id(id) => id,
        };
        PutRequest {
            key: self.key.as_bytes().to_vec(),
            value: self.value.as_bytes().to_vec(),
            lease,
            prev_kv: self.prev_kv,
            ignore_value: self.ignore_value,
            ignore_lease: self.ignore_lease,
        }
    }
}

/// No lease is drawn with weight `no_lease`, a live lease with 4, any id in 1..=3 with 1.
fn put_gen(no_lease: u32) -> impl Strategy<Value = PutGen> {
    (
        prop_oneof![30 => prop::sample::select(&KEYS[..]), 1 => Just("")],
        prop::sample::select(&VALUES[..]),
        prop_oneof![
            no_lease => Just(LeaseGen::None),
            4 => any::<u8>().prop_map(LeaseGen::Live),
            1 => (1..=3i64).prop_map(LeaseGen::Id),
        ],
        any::<bool>(),
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.15),
    )
        .prop_map(
            |(key, value, lease, prev_kv, ignore_value, ignore_lease)| PutGen {
                key,
                value,
                lease,
                prev_kv,
                ignore_value,
                ignore_lease,
            },
        )
}

/// A range op inside a txn; `revision: None` reads the latest state.
#[derive(Debug, Clone)]
struct ReadGen {
    spec: Spec,
    limit: i64,
    keys_only: bool,
    count_only: bool,
    revision: Option<u8>,
    arrange: Arrange,
}

/// Sorting and revision filters of a read; the filter bounds are picked around the store's
/// revisions when run.
#[derive(Debug, Clone)]
struct Arrange {
    order: SortOrder,
    target: SortTarget,
    /// `[min_mod, max_mod, min_create, max_create]`: `None` for no bound.
    bounds: [Option<u8>; 4],
}

impl Arrange {
    fn apply(&self, req: &mut RangeRequest, revision: i64) {
        req.sort_order = self.order;
        req.sort_target = self.target;
        let bound = |b: Option<u8>| b.map_or(0, |b| pick(b, 1, revision + 1));
        req.min_mod_revision = bound(self.bounds[0]);
        req.max_mod_revision = bound(self.bounds[1]);
        req.min_create_revision = bound(self.bounds[2]);
        req.max_create_revision = bound(self.bounds[3]);
    }
}

fn arrange_gen() -> impl Strategy<Value = Arrange> {
    let order = prop::sample::select(&[SortOrder::None, SortOrder::Ascend, SortOrder::Descend][..]);
    let target = prop::sample::select(
        &[
            SortTarget::Key,
            SortTarget::Version,
            SortTarget::Create,
            SortTarget::Mod,
            SortTarget::Value,
        ][..],
    );
    let bound = || prop_oneof![3 => Just(None), 1 => any::<u8>().prop_map(Some)];
    let arranged = (order, target, [bound(), bound(), bound(), bound()]).prop_map(
        |(order, target, bounds)| Arrange {
            order,
            target,
            bounds,
        },
    );
    prop_oneof![
        2 => Just(Arrange { order: SortOrder::None, target: SortTarget::Key, bounds: [None; 4] }),
        1 => arranged,
    ]
}

fn read_gen() -> impl Strategy<Value = ReadGen> {
    (
        spec(1),
        prop_oneof![12 => Just(0i64), 6 => 1..=2i64, 1 => Just(-1i64)],
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.2),
        prop_oneof![3 => Just(None), 1 => any::<u8>().prop_map(Some)],
        arrange_gen(),
    )
        .prop_map(
            |(spec, limit, keys_only, count_only, revision, arrange)| ReadGen {
                spec,
                limit,
                keys_only,
                count_only,
                revision,
                arrange,
            },
        )
}

#[derive(Debug, Clone)]
enum TargetGen {
    Value(&'static str),
    Version(i64),
    CreateRevision(u8),
    ModRevision(u8),
    Lease(i64),
}

#[derive(Debug, Clone)]
struct CmpGen {
    spec: Spec,
    result: CompareResult,
    target: TargetGen,
}

fn cmp_gen() -> impl Strategy<Value = CmpGen> {
    let target = prop_oneof![
        prop::sample::select(&VALUES[..]).prop_map(TargetGen::Value),
        (0..=3i64).prop_map(TargetGen::Version),
        any::<u8>().prop_map(TargetGen::CreateRevision),
        any::<u8>().prop_map(TargetGen::ModRevision),
        (0..=3i64).prop_map(TargetGen::Lease),
    ];
    let result = prop::sample::select(
        &[
            CompareResult::Equal,
            CompareResult::NotEqual,
            CompareResult::Greater,
            CompareResult::Less,
        ][..],
    );
    (spec(1), result, target).prop_map(|(spec, result, target)| CmpGen {
        spec,
        result,
        target,
    })
}

#[derive(Debug, Clone)]
enum OpGen {
    Put(PutGen),
    Delete(Spec, bool),
    Range(ReadGen),
}

fn op_gen() -> impl Strategy<Value = OpGen> {
    prop_oneof![
        3 => put_gen(15).prop_map(OpGen::Put),
        1 => (spec(1), any::<bool>()).prop_map(|(s, p)| OpGen::Delete(s, p)),
        3 => read_gen().prop_map(OpGen::Range),
    ]
}

#[derive(Debug, Clone)]
enum Cmd {
    Put(PutGen),
    Delete(Spec, bool),
    Txn(Vec<CmpGen>, Vec<OpGen>, Vec<OpGen>),
    /// Picks a revision around `[compact_revision, revision]` when run.
    Compact(u8),
    Grant(i64, i64),
    /// Simulates a client revoke or the leader's expiry; mostly picks a live lease when run.
    Revoke(u8),
}

fn cmd_gen() -> impl Strategy<Value = Cmd> {
    let ops = || prop::collection::vec(op_gen(), 0..=3);
    prop_oneof![
        6 => put_gen(5).prop_map(Cmd::Put),
        3 => (spec(3), any::<bool>()).prop_map(|(s, p)| Cmd::Delete(s, p)),
        5 => (prop::collection::vec(cmp_gen(), 0..=2), ops(), ops())
            .prop_map(|(c, s, f)| Cmd::Txn(c, s, f)),
        1 => any::<u8>().prop_map(Cmd::Compact),
        4 => (
            prop_oneof![20 => 1..=3i64, 1 => Just(0i64)],
            prop_oneof![20 => Just(10i64), 1 => Just(0i64)],
        )
            .prop_map(|(id, ttl)| Cmd::Grant(id, ttl)),
        2 => any::<u8>().prop_map(Cmd::Revoke),
    ]
}

/// Maps a random byte onto `lo..=hi`.
fn pick(byte: u8, lo: i64, hi: i64) -> i64 {
    lo + i64::from(byte) % (hi - lo + 1)
}

impl Cmd {
    /// Turns the generated command into a concrete one; revision picks depend on the state.
    fn command(&self, model: &Model) -> KvCommand {
        let (compact, revision) = (model.compact, model.revision());
        let op = |op: &OpGen| match op {
            OpGen::Put(p) => RequestOp::Put(p.request(model)),
            OpGen::Delete(s, prev_kv) => RequestOp::DeleteRange(s.delete(*prev_kv)),
            OpGen::Range(r) => {
                let at = r.revision.map_or(0, |b| pick(b, compact - 1, revision + 1));
                let mut read = r.spec.range(r.limit, at, r.keys_only, r.count_only);
                r.arrange.apply(&mut read, revision);
                RequestOp::Range(read)
            }
        };
        match self {
            Cmd::Put(p) => KvCommand::Put(p.request(model)),
            Cmd::Delete(s, prev_kv) => KvCommand::DeleteRange(s.delete(*prev_kv)),
            Cmd::Txn(compares, success, failure) => KvCommand::Txn(TxnRequest {
                compare: compares
                    .iter()
                    .map(|c| {
                        let (key, range_end, prefix) = c.spec.fields();
                        let target = match &c.target {
                            TargetGen::Value(v) => CompareTarget::Value(v.as_bytes().to_vec()),
                            TargetGen::Version(n) => CompareTarget::Version(*n),
                            TargetGen::CreateRevision(b) => {
                                CompareTarget::CreateRevision(pick(*b, 0, revision + 1))
                            }
                            TargetGen::ModRevision(b) => {
                                CompareTarget::ModRevision(pick(*b, 0, revision + 1))
                            }
                            TargetGen::Lease(n) => CompareTarget::Lease(*n),
                        };
                        Compare {
                            key,
                            range_end,
                            prefix,
                            result: c.result,
                            target,
                        }
                    })
                    .collect(),
                success: success.iter().map(op).collect(),
                failure: failure.iter().map(op).collect(),
            }),
            Cmd::Compact(b) => KvCommand::Compact(CompactRequest {
                revision: pick(*b, compact - 1, revision + 1),
            }),
            Cmd::Grant(id, ttl) => KvCommand::LeaseGrant { id: *id, ttl: *ttl },
            Cmd::Revoke(b) => {
                let live: Vec<i64> = model.leases.keys().copied().collect();
                let id = if live.is_empty() || b % 8 == 0 {
                    i64::from(b % 4)
                } else {
                    live[usize::from(*b) % live.len()]
                };
                KvCommand::LeaseRevoke { id }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

/// Valid selections used to probe reads, plus one invalid one (its error must win over any
/// revision error).
fn probe_specs() -> Vec<Spec> {
    let mut specs: Vec<Spec> = KEYS.iter().map(|k| Spec::Key(k)).collect();
    specs.extend([
        Spec::Prefix("a"),
        Spec::Prefix("ab"),
        Spec::Prefix(""),
        Spec::Range("ab", "b"),
        Spec::Range("a", "c"),
        Spec::FromKey("b"),
        Spec::FromKey(""),
        Spec::EmptyKey,
    ]);
    specs
}

/// `(limit, keys_only, count_only)` combinations; the first is the plain read.
const READ_OPTIONS: [(i64, bool, bool); 6] = [
    (0, false, false),
    (1, false, false),
    (2, true, false),
    (0, false, true),
    (1, true, true),
    (-1, false, false),
];

fn codes<T>(result: Result<T, ApiError>) -> Result<T, ErrorCode> {
    result.map_err(|e| e.code)
}

fn check_reads(store: &KvStore, model: &Model, revision: i64, all_options: bool) {
    let options = if all_options {
        &READ_OPTIONS[..]
    } else {
        &READ_OPTIONS[..1]
    };
    for spec in probe_specs() {
        for &(limit, keys_only, count_only) in options {
            let req = spec.range(limit, revision, keys_only, count_only);
            assert_eq!(
                codes(store.range(&req)),
                model.range(&req),
                "range {req:?} (store at {}, compacted at {})",
                model.revision(),
                model.compact
            );
        }
        if !all_options {
            continue;
        }
        let middle = model.revision() / 2 + 1;
        let arranged = [
            (SortOrder::Descend, SortTarget::Mod, 2, true, [0, 0, 0, 0]),
            (SortOrder::None, SortTarget::Value, 1, false, [0, 0, 0, 0]),
            (
                SortOrder::Ascend,
                SortTarget::Version,
                0,
                false,
                [middle, 0, 0, 0],
            ),
            (
                SortOrder::None,
                SortTarget::Key,
                1,
                false,
                [0, 0, 0, middle],
            ),
            (
                SortOrder::Descend,
                SortTarget::Key,
                0,
                true,
                [0, middle, middle, 0],
            ),
        ];
        for (order, target, limit, keys_only, [min_mod, max_mod, min_create, max_create]) in
            arranged
        {
            let req = RangeRequest {
                sort_order: order,
                sort_target: target,
                min_mod_revision: min_mod,
                max_mod_revision: max_mod,
                min_create_revision: min_create,
                max_create_revision: max_create,
                ..spec.range(limit, revision, keys_only, false)
            };
            assert_eq!(
                codes(store.range(&req)),
                model.range(&req),
                "range {req:?} (store at {})",
                model.revision()
            );
        }
    }
}

fn check_events(store: &KvStore, model: &Model, from: i64) {
    let got = store.events_since(&RangeSpec::prefix(""), from);
    if from < model.compact {
        assert_eq!(
            codes(got).map(|_| ()),
            Err(ErrorCode::Compacted),
            "from {from}"
        );
        return;
    }
    let got = got.expect("watchable revision");
    let expected: Vec<&Event> = model
        .events
        .iter()
        .skip(from.max(0) as usize)
        .flatten()
        .collect();
    assert_eq!(
        got.len(),
        expected.len(),
        "events since {from}: {got:?} vs {expected:?}"
    );
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!((g.kind, &g.kv), (e.kind, &e.kv), "events since {from}");
        if e.kv.mod_revision > model.compact {
            assert_eq!(g.prev_kv, e.prev_kv, "prev_kv of {g:?} since {from}");
        } else {
            // The previous version lies below the compaction point: it may be gone.
            assert!(g.prev_kv.is_none() || g.prev_kv == e.prev_kv, "{g:?}");
        }
    }
    assert!(got.iter().all(|e| e.kv.mod_revision >= from));
    assert!(got
        .windows(2)
        .all(|w| w[0].kv.mod_revision <= w[1].kv.mod_revision));
    // Replaying the catch-up onto the state just before `from` rebuilds the current state.
    if from > model.compact {
        let mut state = model.states[(from - 1) as usize].clone();
        for event in &got {
            match event.kind {
                EventType::Put => {
                    state.insert(event.kv.key.clone(), ModelKv::from_kv(&event.kv));
                }
                EventType::Delete => {
                    assert!(
                        state.remove(&event.kv.key).is_some(),
                        "delete of absent key"
                    );
                }
            }
        }
        assert_eq!(&state, model.current(), "replay of events since {from}");
    }
}

fn check_leases(store: &KvStore, model: &Model) {
    let expected: Vec<LeaseStatus> = model
        .leases
        .iter()
        .map(|(&id, &ttl)| LeaseStatus {
            id,
            granted_ttl: ttl,
        })
        .collect();
    assert_eq!(store.leases(), expected);
    assert_eq!(store.stats().leases, model.leases.len());
    for id in 0..=3 {
        let expected = model
            .leases
            .get(&id)
            .map(|&ttl| (ttl, model.lease_keys(id)));
        assert_eq!(store.lease(id), expected, "lease {id}");
    }
}

fn check(store: &KvStore, model: &Model) {
    let (compact, revision) = (model.compact, model.revision());
    assert_eq!(store.revision(), revision);
    assert_eq!(store.compact_revision(), compact);

    let mut revisions = vec![
        0,
        compact - 1,
        compact,
        (compact + revision) / 2,
        revision - 1,
        revision,
        revision + 1,
    ];
    revisions.sort_unstable();
    revisions.dedup();
    for &r in &revisions {
        check_reads(store, model, r, r == 0 || r == revision);
    }

    let mut froms = vec![
        compact - 1,
        compact,
        compact + 1,
        (compact + revision) / 2,
        revision,
        revision + 1,
    ];
    froms.sort_unstable();
    froms.dedup();
    for &from in &froms {
        check_events(store, model, from);
    }

    check_leases(store, model);

    let bytes = postcard::to_allocvec(store).expect("serialize");
    let back: KvStore = postcard::from_bytes(&bytes).expect("deserialize");
    assert_eq!(&back, store, "postcard round trip");
}

fn run(cmds: &[Cmd]) {
    let mut store = KvStore::new();
    let mut model = Model::new();
    check(&store, &model);
    for (step, cmd) in cmds.iter().enumerate() {
        let command = cmd.command(&model);
        // `before` shares every node with `store` (a snapshot view): applying to `store` must
        // leave it exactly as it was.
        let before = store.view();
        let before_bytes = postcard::to_allocvec(&before).expect("a store serializes");
        let (result, events) = store.apply(&command);
        let (expected, expected_events) = model.apply(&command);
        match expected {
            Ok(expected) => assert_eq!(result, expected, "step {step}: {command:?}"),
            Err(code) => {
                assert!(
                    matches!(&result, KvResult::Error(e) if e.code == code),
                    "step {step}: {command:?} gave {result:?}, expected {code:?}"
                );
                assert_eq!(store, before, "a rejected command changed the store");
            }
        }
        assert_eq!(
            events, expected_events,
            "events of step {step}: {command:?}"
        );
        if !events.is_empty() {
            // What apply reported is exactly what a watcher catching up from here would get.
            let replayed = store
                .events_since(&RangeSpec::prefix(""), store.revision())
                .expect("latest revision is watchable");
            assert_eq!(replayed, events, "step {step}");
        }
        if let (KvCommand::LeaseRevoke { id }, KvResult::LeaseRevoke(_)) = (&command, &result) {
            let all = store
                .range(&Spec::Prefix("").range(0, 0, false, false))
                .expect("read everything");
            assert!(
                all.kvs.iter().all(|kv| kv.lease != *id),
                "step {step}: keys of revoked lease {id} still live: {:?}",
                all.kvs
            );
            assert_eq!(store.lease(*id), None);
        }
        assert!(
            store.derived_state_is_consistent(),
            "step {step}: counts or compactable keys drifted from the keys after {command:?}"
        );
        assert_eq!(
            postcard::to_allocvec(&before).expect("a store serializes"),
            before_bytes,
            "step {step}: {command:?} changed a view taken before it"
        );
        check(&store, &model);
    }
    // Finally sweep every revision and every watch start once.
    for r in model.compact - 1..=model.revision() + 1 {
        check_reads(&store, &model, r, false);
        check_events(&store, &model, r);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn store_matches_model(cmds in prop::collection::vec(cmd_gen(), 1..=40)) {
        run(&cmds);
    }
}

// ---------------------------------------------------------------------------------------------
// Regressions found by the model (each failed before the fix in store.rs)
// ---------------------------------------------------------------------------------------------

fn txn(store: &mut KvStore, txn: TxnRequest) -> Result<TxnResponse, ErrorCode> {
    match store.apply(&KvCommand::Txn(txn)).0 {
        KvResult::Txn(response) => Ok(response),
        KvResult::Error(e) => Err(e.code),
        other => panic!("unexpected {other:?}"),
    }
}

/// etcd compares an empty range as one absent key: `version > 0` over an empty prefix is
/// false (it used to be "vacuously true"), `version = 0` is true, a value compare is false.
#[test]
fn compare_on_empty_range_uses_zero_values() {
    let mut store = KvStore::new();
    let compare = |result, target| Compare {
        key: b"p/".to_vec(),
        range_end: Vec::new(),
        prefix: true,
        result,
        target,
    };
    let cases = [
        (CompareResult::Greater, CompareTarget::Version(0), false),
        (CompareResult::Equal, CompareTarget::Version(0), true),
        (CompareResult::Equal, CompareTarget::CreateRevision(0), true),
        (
            CompareResult::NotEqual,
            CompareTarget::ModRevision(0),
            false,
        ),
        (
            CompareResult::NotEqual,
            CompareTarget::Value(Vec::new()),
            false,
        ),
    ];
    for (result, target, expected) in cases {
        let request = TxnRequest {
            compare: vec![compare(result, target.clone())],
            ..Default::default()
        };
        let response = txn(&mut store, request).expect("valid txn");
        assert_eq!(response.succeeded, expected, "{result:?} {target:?}");
    }
}

/// Reads inside a txn see the txn's own earlier writes, as etcd's write txn does.
#[test]
fn txn_range_sees_earlier_writes_of_the_same_txn() {
    let mut store = KvStore::new();
    let put = |key: &str, value: &str| {
        RequestOp::Put(PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })
    };
    store.apply(&KvCommand::Put(PutRequest {
        key: b"gone".to_vec(),
        ..Default::default()
    }));
    let request = TxnRequest {
        success: vec![
            RequestOp::Range(Spec::Prefix("").range(0, 0, false, false)),
            put("a", "1"),
            RequestOp::DeleteRange(Spec::Key("gone").delete(false)),
            RequestOp::Range(Spec::Prefix("").range(0, 0, false, false)),
            // An explicit revision still reads the committed past.
            RequestOp::Range(Spec::Prefix("").range(0, 2, false, false)),
        ],
        ..Default::default()
    };
    let response = txn(&mut store, request).expect("valid txn");
    let keys = |op: &ResponseOp| match op {
        ResponseOp::Range(r) => r.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(),
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(keys(&response.responses[0]), vec![b"gone".to_vec()]);
    assert_eq!(keys(&response.responses[3]), vec![b"a".to_vec()]);
    assert_eq!(keys(&response.responses[4]), vec![b"gone".to_vec()]);
}

/// A negative limit is rejected inside a txn just as in a plain range (it used to be
/// accepted and answered with an empty, header-less range response).
#[test]
fn txn_rejects_negative_range_limit() {
    let mut store = KvStore::new();
    let request = TxnRequest {
        failure: vec![RequestOp::Range(Spec::Key("a").range(-1, 0, false, false))],
        ..Default::default()
    };
    assert_eq!(txn(&mut store, request), Err(ErrorCode::BadRequest));
    assert_eq!(store, KvStore::new());
}
