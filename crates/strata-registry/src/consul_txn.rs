//! Consul's KV operations as a pure function: what each verb of `PUT /v1/txn` (and so each
//! `/v1/kv` write, which is a transaction of one) does to the entries it reads, without I/O.
//!
//! [`run`] takes the operations and a snapshot of everything they touch ([`Reads`], read at
//! one store revision by [`crate::consul_store`]) and returns Consul's results and errors, and
//! the entries as they must be afterwards. The store then writes that final state in one
//! compare-and-set transaction, conditioned on nothing it read having changed, so the whole
//! list applies atomically or not at all, as in Consul.
//!
//! The rules follow Consul's KV documentation: operations run in order and each sees the
//! effect of the ones before it; every failing operation is reported (not only the first), and
//! any failure rolls the whole transaction back; a write that changes nothing leaves the
//! entry's `ModifyIndex` alone; `lock` needs a live session, increments `LockIndex` unless the
//! session already holds the lock, and is refused while the key's lock delay runs; `unlock`
//! needs the holder's session and keeps `LockIndex`; a plain `set` keeps the lock holder.

use std::collections::{BTreeMap, BTreeSet};

/// Marks an index this transaction gives: its commit revision replaces it once known.
pub const PENDING: i64 = -1;

/// A KV verb of Consul's transaction API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// Sets the key (keeping its lock holder).
    Set,
    /// Sets the key if its `ModifyIndex` is `Index` (0: only if it does not exist).
    Cas,
    /// Acquires the key's lock for `Session` and sets it.
    Lock,
    /// Releases the key's lock held by `Session` and sets it.
    Unlock,
    /// Reads the key; fails if it does not exist.
    Get,
    /// Reads the key; an empty entry if it does not exist.
    GetOrEmpty,
    /// Reads every key with the prefix.
    GetTree,
    /// Fails unless the key's `ModifyIndex` is `Index`.
    CheckIndex,
    /// Fails unless the key is locked by `Session` (unlocked when `Session` is empty).
    CheckSession,
    /// Fails if the key exists.
    CheckNotExists,
    /// Deletes the key.
    Delete,
    /// Deletes every key with the prefix.
    DeleteTree,
    /// Deletes the key if its `ModifyIndex` is `Index`.
    DeleteCas,
}

impl Verb {
    /// The verb named `name` in a transaction body (Consul's spelling).
    pub fn parse(name: &str) -> Option<Verb> {
        Some(match name {
            "set" => Verb::Set,
            "cas" => Verb::Cas,
            "lock" => Verb::Lock,
            "unlock" => Verb::Unlock,
            "get" => Verb::Get,
            "get-or-empty" => Verb::GetOrEmpty,
            "get-tree" => Verb::GetTree,
            "check-index" => Verb::CheckIndex,
            "check-session" => Verb::CheckSession,
            "check-not-exists" => Verb::CheckNotExists,
            "delete" => Verb::Delete,
            "delete-tree" => Verb::DeleteTree,
            "delete-cas" => Verb::DeleteCas,
            _ => return None,
        })
    }

    /// The verb's name, for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Verb::Set => "set",
            Verb::Cas => "cas",
            Verb::Lock => "lock",
            Verb::Unlock => "unlock",
            Verb::Get => "get",
            Verb::GetOrEmpty => "get-or-empty",
            Verb::GetTree => "get-tree",
            Verb::CheckIndex => "check-index",
            Verb::CheckSession => "check-session",
            Verb::CheckNotExists => "check-not-exists",
            Verb::Delete => "delete",
            Verb::DeleteTree => "delete-tree",
            Verb::DeleteCas => "delete-cas",
        }
    }

    /// True when the verb changes entries (so needs the `key:write` permission).
    pub fn writes(self) -> bool {
        matches!(
            self,
            Verb::Set
                | Verb::Cas
                | Verb::Lock
                | Verb::Unlock
                | Verb::Delete
                | Verb::DeleteTree
                | Verb::DeleteCas
        )
    }

    /// True when the verb addresses every key with a prefix rather than one key.
    pub fn is_tree(self) -> bool {
        matches!(self, Verb::GetTree | Verb::DeleteTree)
    }
}

/// One KV operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// What to do.
    pub verb: Verb,
    /// The key, or the prefix of a tree verb.
    pub key: String,
    /// The value to write (set, cas, lock, unlock); empty reads back as `null`.
    pub value: Vec<u8>,
    /// Opaque flags to write.
    pub flags: u64,
    /// The `ModifyIndex` cas, check-index and delete-cas compare with.
    pub index: u64,
    /// The session lock, unlock and check-session use.
    pub session: String,
}

impl Op {
    /// An operation with only a verb and a key.
    pub fn new(verb: Verb, key: impl Into<String>) -> Op {
        Op {
            verb,
            key: key.into(),
            value: Vec::new(),
            flags: 0,
            index: 0,
            session: String::new(),
        }
    }
}

/// A KV entry as Consul shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// Opaque client flags.
    pub flags: u64,
    /// How many times the key's lock was acquired.
    pub lock_index: u64,
    /// The session holding the lock, if any.
    pub session: Option<String>,
    /// The value; empty shows as `null`.
    pub value: Vec<u8>,
    /// The revision that created the key ([`PENDING`]: this transaction).
    pub create_index: i64,
    /// The revision of the key's last change ([`PENDING`]: this transaction).
    pub modify_index: i64,
}

impl Entry {
    /// True when `self` and `other` hold the same data (indexes aside): writing one over the
    /// other changes nothing, so Consul leaves `ModifyIndex` alone.
    fn same_data(&self, other: &Entry) -> bool {
        self.flags == other.flags
            && self.lock_index == other.lock_index
            && self.session == other.session
            && self.value == other.value
    }
}

/// Behavior of a session when it is invalidated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Behavior {
    /// Its locks are released (the keys stay, without a session).
    Release,
    /// The keys it holds are deleted.
    Delete,
}

impl Behavior {
    /// Consul's name of the behavior.
    pub fn name(self) -> &'static str {
        match self {
            Behavior::Release => "release",
            Behavior::Delete => "delete",
        }
    }
}

/// What a lock needs to know of the session acquiring it: what happens to the key when the
/// session is invalidated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LockTerms {
    /// Release or delete the key.
    pub behavior: Behavior,
    /// How long acquires of the key are refused after the session is invalidated.
    pub lock_delay_ms: u64,
}

/// Everything the operations touch, read at one store revision.
#[derive(Debug, Clone, Default)]
pub struct Reads {
    /// Every entry read that exists (point keys, and every key of each tree read).
    pub entries: BTreeMap<String, Entry>,
    /// Live sessions among those the lock operations name.
    pub sessions: BTreeMap<String, LockTerms>,
    /// Lock-delay deadlines (ms since the epoch) of the keys lock operations name.
    pub lock_delays: BTreeMap<String, u64>,
    /// Now, in ms since the epoch, for the lock delays.
    pub now_ms: u64,
}

/// What [`run`] must read first: the keys, prefixes, sessions and lock delays of `ops`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadPlan {
    /// Keys read one by one.
    pub keys: BTreeSet<String>,
    /// Prefixes read whole (tree verbs).
    pub trees: BTreeSet<String>,
    /// Sessions lock operations name.
    pub sessions: BTreeSet<String>,
    /// Keys whose lock delay lock operations check.
    pub lock_delays: BTreeSet<String>,
}

/// The reads `ops` need.
pub fn plan(ops: &[Op]) -> ReadPlan {
    let mut plan = ReadPlan::default();
    for op in ops {
        if op.verb.is_tree() {
            plan.trees.insert(op.key.clone());
            continue;
        }
        plan.keys.insert(op.key.clone());
        if op.verb == Verb::Lock {
            plan.lock_delays.insert(op.key.clone());
            if !op.session.is_empty() {
                plan.sessions.insert(op.session.clone());
            }
        }
    }
    plan
}

/// Why an operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// It did not apply: an index did not match, a lock is held, a key is (not) there. A
    /// single `/v1/kv` write answers `false`.
    Refused(String),
    /// It cannot apply as asked: no session, or one that does not exist. A single `/v1/kv`
    /// write answers with an error (Consul's 500).
    Invalid(String),
}

impl Failure {
    /// The message.
    pub fn message(&self) -> &str {
        match self {
            Failure::Refused(m) | Failure::Invalid(m) => m,
        }
    }
}

/// One failed operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    /// Its position in the transaction.
    pub op_index: usize,
    /// Why.
    pub failure: Failure,
}

/// What a transaction did, or would do when it commits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Consul's `Results`: an entry per get, per key of a get-tree, and per write other than
    /// deletes; values only for the get verbs.
    pub results: Vec<Entry>,
    /// Consul's `Errors`; when any, nothing is written.
    pub errors: Vec<OpError>,
    /// Every key whose entry changes, with what it becomes (`None`: deleted). Empty when
    /// there are errors.
    pub changes: BTreeMap<String, Option<Entry>>,
    /// The prefixes delete-tree cleared (the store deletes them as ranges).
    pub cleared_trees: BTreeSet<String>,
}

/// Runs `ops` against `reads`. `reads` must hold what [`plan`] asked for.
pub fn run(ops: &[Op], reads: &Reads) -> Outcome {
    let mut working: BTreeMap<String, Option<Entry>> = BTreeMap::new();
    let current = |working: &BTreeMap<String, Option<Entry>>, key: &str| -> Option<Entry> {
        match working.get(key) {
            Some(state) => state.clone(),
            None => reads.entries.get(key).cloned(),
        }
    };
    let mut outcome = Outcome::default();
    for (op_index, op) in ops.iter().enumerate() {
        let existing = if op.verb.is_tree() {
            None
        } else {
            current(&working, &op.key)
        };
        let step = apply(op, existing, reads, &mut working, &mut outcome);
        if let Err(failure) = step {
            outcome.errors.push(OpError { op_index, failure });
        }
    }
    if !outcome.errors.is_empty() {
        outcome.results.clear();
        return outcome;
    }
    for (key, after) in working {
        let before = reads.entries.get(&key);
        let changed = match (&after, before) {
            (None, None) => false,
            (Some(a), Some(b)) => !a.same_data(b),
            _ => true,
        };
        if changed {
            outcome.changes.insert(key, after);
        }
    }
    outcome
}

fn refused(message: String) -> Result<(), Failure> {
    Err(Failure::Refused(message))
}

/// Writes `entry` over `existing` in `working`: a write that changes nothing keeps the
/// existing indexes. Returns the entry as it now is.
fn write(
    working: &mut BTreeMap<String, Option<Entry>>,
    existing: Option<&Entry>,
    mut entry: Entry,
) -> Entry {
    match existing {
        Some(old) if old.same_data(&entry) => {
            entry.create_index = old.create_index;
            entry.modify_index = old.modify_index;
        }
        Some(old) => {
            entry.create_index = old.create_index;
            entry.modify_index = PENDING;
        }
        None => {
            entry.create_index = PENDING;
            entry.modify_index = PENDING;
        }
    }
    working.insert(entry.key.clone(), Some(entry.clone()));
    entry
}

fn without_value(entry: &Entry) -> Entry {
    Entry {
        value: Vec::new(),
        ..entry.clone()
    }
}

fn apply(
    op: &Op,
    existing: Option<Entry>,
    reads: &Reads,
    working: &mut BTreeMap<String, Option<Entry>>,
    outcome: &mut Outcome,
) -> Result<(), Failure> {
    let key = &op.key;
    let new_entry = |lock_index: u64, session: Option<String>| Entry {
        key: key.clone(),
        flags: op.flags,
        lock_index,
        session,
        value: op.value.clone(),
        create_index: PENDING,
        modify_index: PENDING,
    };
    match op.verb {
        Verb::Set => {
            let entry = new_entry(
                existing.as_ref().map_or(0, |e| e.lock_index),
                existing.as_ref().and_then(|e| e.session.clone()),
            );
            let written = write(working, existing.as_ref(), entry);
            outcome.results.push(without_value(&written));
        }
        Verb::Cas => {
            let matches = match (&existing, op.index) {
                (None, 0) => true,
                (Some(e), index) if index != 0 => e.modify_index == index as i64,
                _ => false,
            };
            if !matches {
                return refused(format!(
                    "failed to set key {key:?}: index {} is stale",
                    op.index
                ));
            }
            let entry = new_entry(
                existing.as_ref().map_or(0, |e| e.lock_index),
                existing.as_ref().and_then(|e| e.session.clone()),
            );
            let written = write(working, existing.as_ref(), entry);
            outcome.results.push(without_value(&written));
        }
        Verb::Lock => {
            if op.session.is_empty() {
                return Err(Failure::Invalid("missing session".into()));
            }
            if !reads.sessions.contains_key(&op.session) {
                return Err(Failure::Invalid(format!(
                    "invalid session {:?}",
                    op.session
                )));
            }
            let held_by = existing.as_ref().and_then(|e| e.session.as_deref());
            let lock_index = match held_by {
                Some(holder) if holder == op.session => {
                    existing.as_ref().map_or(0, |e| e.lock_index)
                }
                Some(holder) => {
                    return refused(format!(
                        "failed to lock key {key:?}: the lock is held by session {holder:?}"
                    ))
                }
                None => {
                    let delay_until = reads.lock_delays.get(key).copied().unwrap_or(0);
                    if delay_until > reads.now_ms {
                        return refused(format!(
                            "failed to lock key {key:?}: its lock delay runs for another {} ms",
                            delay_until - reads.now_ms
                        ));
                    }
                    existing.as_ref().map_or(0, |e| e.lock_index) + 1
                }
            };
            let entry = new_entry(lock_index, Some(op.session.clone()));
            let written = write(working, existing.as_ref(), entry);
            outcome.results.push(without_value(&written));
        }
        Verb::Unlock => {
            if op.session.is_empty() {
                return Err(Failure::Invalid("missing session".into()));
            }
            let Some(current) = existing.as_ref() else {
                return refused(format!("failed to unlock key {key:?}: it does not exist"));
            };
            if current.session.as_deref() != Some(op.session.as_str()) {
                return refused(format!(
                    "failed to unlock key {key:?}: the lock is not held, or is held by another session"
                ));
            }
            let entry = new_entry(current.lock_index, None);
            let written = write(working, existing.as_ref(), entry);
            outcome.results.push(without_value(&written));
        }
        Verb::Get => match existing {
            Some(entry) => outcome.results.push(entry),
            None => return refused(format!("key {key:?} does not exist")),
        },
        Verb::GetOrEmpty => outcome.results.push(existing.unwrap_or(Entry {
            key: key.clone(),
            flags: 0,
            lock_index: 0,
            session: None,
            value: Vec::new(),
            create_index: 0,
            modify_index: 0,
        })),
        Verb::GetTree => {
            for entry in tree(reads, working, key) {
                outcome.results.push(entry);
            }
        }
        Verb::CheckIndex => {
            let Some(current) = existing else {
                return refused(format!(
                    "failed to check the index of key {key:?}: it does not exist"
                ));
            };
            if current.modify_index != op.index as i64 {
                return refused(format!(
                    "failed index check for key {key:?}: its modify index is {}, not {}",
                    current.modify_index, op.index
                ));
            }
            outcome.results.push(without_value(&current));
        }
        Verb::CheckSession => {
            let Some(current) = existing else {
                return refused(format!(
                    "failed to check the session of key {key:?}: it does not exist"
                ));
            };
            let holder = current.session.clone().unwrap_or_default();
            if holder != op.session {
                return refused(format!(
                    "failed session check for key {key:?}: it is held by {holder:?}, not {:?}",
                    op.session
                ));
            }
            outcome.results.push(without_value(&current));
        }
        Verb::CheckNotExists => {
            if existing.is_some() {
                return refused(format!("key {key:?} exists"));
            }
        }
        Verb::Delete => {
            working.insert(key.clone(), None);
        }
        Verb::DeleteTree => {
            for entry in tree(reads, working, key) {
                working.insert(entry.key, None);
            }
            outcome.cleared_trees.insert(key.clone());
        }
        Verb::DeleteCas => match existing {
            // Consul: deleting a key that is already gone succeeds.
            None => {}
            Some(current) if current.modify_index == op.index as i64 => {
                working.insert(key.clone(), None);
            }
            Some(_) => {
                return refused(format!(
                    "failed to delete key {key:?}: index {} is stale",
                    op.index
                ))
            }
        },
    }
    Ok(())
}

/// Every live entry with `prefix`, in key order, as the transaction has left it so far.
fn tree(reads: &Reads, working: &BTreeMap<String, Option<Entry>>, prefix: &str) -> Vec<Entry> {
    let mut keys: BTreeSet<&String> = reads
        .entries
        .range::<String, _>(prefix.to_string()..)
        .take_while(|(k, _)| k.starts_with(prefix))
        .map(|(k, _)| k)
        .collect();
    keys.extend(
        working
            .range::<String, _>(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k),
    );
    keys.into_iter()
        .filter_map(|k| match working.get(k) {
            Some(state) => state.clone(),
            None => reads.entries.get(k).cloned(),
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(key: &str, value: &str, modify: i64) -> Entry {
        Entry {
            key: key.into(),
            flags: 0,
            lock_index: 0,
            session: None,
            value: value.as_bytes().to_vec(),
            create_index: modify,
            modify_index: modify,
        }
    }

    fn reads(entries: &[Entry]) -> Reads {
        Reads {
            entries: entries.iter().map(|e| (e.key.clone(), e.clone())).collect(),
            sessions: BTreeMap::from([(
                "s1".to_string(),
                LockTerms {
                    behavior: Behavior::Release,
                    lock_delay_ms: 15_000,
                },
            )]),
            lock_delays: BTreeMap::new(),
            now_ms: 1_000_000,
        }
    }

    fn op(verb: Verb, key: &str) -> Op {
        Op::new(verb, key)
    }

    fn with_value(mut op: Op, value: &str) -> Op {
        op.value = value.as_bytes().to_vec();
        op
    }

    fn with_session(mut op: Op, session: &str) -> Op {
        op.session = session.into();
        op
    }

    fn with_index(mut op: Op, index: u64) -> Op {
        op.index = index;
        op
    }

    #[test]
    fn a_set_of_the_same_data_changes_nothing_and_keeps_modify_index() {
        let r = reads(&[entry("a", "1", 5)]);
        let out = run(&[with_value(op(Verb::Set, "a"), "1")], &r);
        assert!(out.errors.is_empty());
        assert!(out.changes.is_empty());
        assert_eq!(out.results[0].modify_index, 5);
        let out = run(&[with_value(op(Verb::Set, "a"), "2")], &r);
        assert_eq!(out.results[0].modify_index, PENDING);
        assert_eq!(out.results[0].create_index, 5);
        assert!(
            out.results[0].value.is_empty(),
            "write results carry no value"
        );
    }

    #[test]
    fn cas_zero_creates_only_and_cas_index_must_match() {
        let r = reads(&[entry("a", "1", 5)]);
        assert!(run(&[with_index(op(Verb::Cas, "b"), 0)], &r)
            .errors
            .is_empty());
        assert!(!run(&[with_index(op(Verb::Cas, "a"), 0)], &r)
            .errors
            .is_empty());
        assert!(!run(&[with_index(op(Verb::Cas, "a"), 4)], &r)
            .errors
            .is_empty());
        assert!(run(&[with_index(op(Verb::Cas, "a"), 5)], &r)
            .errors
            .is_empty());
        assert!(!run(&[with_index(op(Verb::Cas, "b"), 5)], &r)
            .errors
            .is_empty());
    }

    #[test]
    fn lock_increments_lock_index_once_per_holder() {
        let r = reads(&[]);
        let out = run(&[with_session(op(Verb::Lock, "l"), "s1")], &r);
        let locked = out.changes["l"].clone().unwrap();
        assert_eq!(locked.lock_index, 1);
        assert_eq!(locked.session.as_deref(), Some("s1"));
        // Acquiring again as the holder: fine, LockIndex unchanged.
        let held = Entry {
            session: Some("s1".into()),
            lock_index: 1,
            ..entry("l", "", 7)
        };
        let r = reads(std::slice::from_ref(&held));
        let out = run(&[with_session(op(Verb::Lock, "l"), "s1")], &r);
        assert!(out.errors.is_empty());
        assert!(out.changes.is_empty(), "same data: nothing to write");
        // Another session is refused.
        let mut r2 = r.clone();
        r2.sessions.insert("s2".into(), r.sessions["s1"]);
        let out = run(&[with_session(op(Verb::Lock, "l"), "s2")], &r2);
        assert!(matches!(out.errors[0].failure, Failure::Refused(_)));
        // Released, then acquired by another: LockIndex 2.
        let released = Entry {
            session: None,
            ..held
        };
        let mut r3 = reads(&[released]);
        r3.sessions.insert("s2".into(), r.sessions["s1"]);
        let out = run(&[with_session(op(Verb::Lock, "l"), "s2")], &r3);
        assert_eq!(out.changes["l"].clone().unwrap().lock_index, 2);
    }

    #[test]
    fn lock_needs_a_live_session_and_waits_out_the_lock_delay() {
        let mut r = reads(&[entry("l", "", 3)]);
        let out = run(&[op(Verb::Lock, "l")], &r);
        assert!(matches!(out.errors[0].failure, Failure::Invalid(_)));
        let out = run(&[with_session(op(Verb::Lock, "l"), "gone")], &r);
        assert!(matches!(out.errors[0].failure, Failure::Invalid(_)));
        r.lock_delays.insert("l".into(), r.now_ms + 1);
        let out = run(&[with_session(op(Verb::Lock, "l"), "s1")], &r);
        assert!(matches!(out.errors[0].failure, Failure::Refused(_)));
        r.lock_delays.insert("l".into(), r.now_ms);
        assert!(run(&[with_session(op(Verb::Lock, "l"), "s1")], &r)
            .errors
            .is_empty());
    }

    #[test]
    fn unlock_needs_the_holder_and_keeps_lock_index_and_set_keeps_the_holder() {
        let held = Entry {
            session: Some("s1".into()),
            lock_index: 4,
            ..entry("l", "v", 9)
        };
        let r = reads(&[held]);
        let out = run(&[with_session(op(Verb::Unlock, "l"), "s2")], &r);
        assert!(matches!(out.errors[0].failure, Failure::Refused(_)));
        let out = run(&[with_session(op(Verb::Unlock, "l"), "s1")], &r);
        let after = out.changes["l"].clone().unwrap();
        assert_eq!((after.session, after.lock_index), (None, 4));
        let out = run(&[with_value(op(Verb::Set, "l"), "w")], &r);
        let after = out.changes["l"].clone().unwrap();
        assert_eq!(after.session.as_deref(), Some("s1"));
        assert_eq!(after.lock_index, 4);
    }

    #[test]
    fn one_failure_rolls_everything_back_and_every_failure_is_listed() {
        let r = reads(&[entry("a", "1", 5)]);
        let ops = [
            with_value(op(Verb::Set, "x"), "new"),
            with_index(op(Verb::Cas, "a"), 4),
            op(Verb::Get, "missing"),
            op(Verb::Delete, "a"),
        ];
        let out = run(&ops, &r);
        assert!(out.changes.is_empty());
        assert!(out.results.is_empty());
        let failed: Vec<usize> = out.errors.iter().map(|e| e.op_index).collect();
        assert_eq!(failed, vec![1, 2]);
    }

    #[test]
    fn operations_see_the_effects_of_earlier_ones() {
        let r = reads(&[
            entry("t/a", "1", 2),
            entry("t/b", "2", 3),
            entry("u", "", 4),
        ]);
        let ops = [
            op(Verb::DeleteTree, "t/"),
            with_value(op(Verb::Set, "t/c"), "3"),
            op(Verb::GetTree, "t/"),
            op(Verb::CheckNotExists, "t/a"),
            with_index(op(Verb::DeleteCas, "u"), 4),
            op(Verb::GetOrEmpty, "u"),
        ];
        let out = run(&ops, &r);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let keys: Vec<&str> = out.results.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, vec!["t/c", "t/c", "u"]);
        assert_eq!(out.results[1].value, b"3", "get-tree results carry values");
        assert_eq!(out.changes.len(), 4);
        assert!(out.changes["t/a"].is_none());
        assert!(out.cleared_trees.contains("t/"));
    }

    #[test]
    fn delete_cas_of_a_missing_key_succeeds() {
        let r = reads(&[]);
        let out = run(&[with_index(op(Verb::DeleteCas, "nope"), 3)], &r);
        assert!(out.errors.is_empty());
        assert!(out.changes.is_empty());
    }

    #[test]
    fn plan_reads_what_the_ops_touch() {
        let ops = [
            with_session(op(Verb::Lock, "l"), "s1"),
            op(Verb::GetTree, "t/"),
            op(Verb::Set, "a"),
        ];
        let p = plan(&ops);
        assert_eq!(p.keys, BTreeSet::from(["l".to_string(), "a".to_string()]));
        assert_eq!(p.trees, BTreeSet::from(["t/".to_string()]));
        assert_eq!(p.sessions, BTreeSet::from(["s1".to_string()]));
        assert_eq!(p.lock_delays, BTreeSet::from(["l".to_string()]));
    }

    /// A reference model: Consul's rules applied to a plain map, one op at a time.
    fn model(ops: &[Op], start: &BTreeMap<String, Entry>) -> Option<BTreeMap<String, Entry>> {
        let mut state = start.clone();
        for op in ops {
            let existing = state.get(&op.key).cloned();
            match op.verb {
                Verb::Set => {
                    let e = Entry {
                        key: op.key.clone(),
                        flags: op.flags,
                        lock_index: existing.as_ref().map_or(0, |e| e.lock_index),
                        session: existing.as_ref().and_then(|e| e.session.clone()),
                        value: op.value.clone(),
                        create_index: 0,
                        modify_index: 0,
                    };
                    state.insert(op.key.clone(), e);
                }
                Verb::Delete => {
                    state.remove(&op.key);
                }
                Verb::DeleteTree => state.retain(|k, _| !k.starts_with(&op.key)),
                Verb::CheckNotExists => {
                    if existing.is_some() {
                        return None;
                    }
                }
                Verb::Get => {
                    existing.as_ref()?;
                }
                _ => unreachable!("the model covers the verbs the strategy makes"),
            };
        }
        Some(state)
    }

    fn ops_strategy() -> impl Strategy<Value = Vec<Op>> {
        let key = prop::sample::select(vec!["a", "a/b", "a/c", "b", "ab"]);
        let verb = prop::sample::select(vec![
            Verb::Set,
            Verb::Delete,
            Verb::DeleteTree,
            Verb::CheckNotExists,
            Verb::Get,
        ]);
        prop::collection::vec(
            (verb, key, "[xy]{0,2}")
                .prop_map(|(verb, key, value)| with_value(op(verb, key), &value)),
            0..6,
        )
    }

    proptest! {
        #[test]
        fn matches_the_model(ops in ops_strategy(), present in prop::collection::btree_set(prop::sample::select(vec!["a", "a/b", "b"]), 0..3)) {
            let start: BTreeMap<String, Entry> = present
                .iter()
                .enumerate()
                .map(|(i, k)| (k.to_string(), entry(k, "v", i as i64 + 1)))
                .collect();
            let r = reads(&start.values().cloned().collect::<Vec<_>>());
            let out = run(&ops, &r);
            match model(&ops, &start) {
                None => prop_assert!(!out.errors.is_empty()),
                Some(want) => {
                    prop_assert!(out.errors.is_empty());
                    let mut got = start.clone();
                    for (key, after) in &out.changes {
                        match after {
                            Some(e) => { got.insert(key.clone(), e.clone()); }
                            None => { got.remove(key); }
                        }
                    }
                    let data = |m: &BTreeMap<String, Entry>| -> Vec<(String, Vec<u8>)> {
                        m.values().map(|e| (e.key.clone(), e.value.clone())).collect()
                    };
                    prop_assert_eq!(data(&got), data(&want));
                }
            }
        }
    }
}
