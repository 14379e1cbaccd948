//! Linearizability checker for key-value histories recorded by fault-injection tests.
//!
//! The model is a set of independent registers, one per key, each initially absent. An
//! [`Operation`] is a read, a write or a compare-and-swap on one key, with the time it was
//! invoked, the time it completed and its [`Outcome`]: `Ok` (it took effect, with its result),
//! `Fail` (it definitely did not take effect) or `Unknown` (a timeout or a lost connection:
//! it may have taken effect at any time after its invocation, or never).
//!
//! Linearizability is P-compositional (Herlihy & Wing): a history is linearizable iff the
//! sub-history of every key is, so [`check`] splits the history by key and searches each
//! key on its own. Before the search:
//!
//! - `Fail` operations are dropped: they never took effect;
//! - `Unknown` reads are dropped: they constrain nothing;
//! - `Unknown` writes and CASes become *optional*: they return at infinity, so they may be
//!   linearized anywhere after their invocation, or not at all (an `Unknown` CAS is modelled
//!   as a successful one, since a failed CAS has no effect);
//! - an optional operation whose written value is never observed (no read returns it, no
//!   CAS expects it) is dropped when the key has no failed CAS, because then removing it from
//!   any linearization leaves a valid linearization.
//!
//! The search is Wing & Gong's, as improved by Lowe and used by Porcupine and Knossos: the
//! call and return events are kept in a doubly linked list sorted by time, the candidates
//! at any point being the calls before the first return; the search linearizes a candidate
//! that holds against the register, lifts its call and return out of the list and starts
//! again; on reaching a return (an operation that had to take effect by then but could not)
//! it backtracks. The configurations entered (register value, set of linearized operations)
//! are remembered and not explored twice, and the search succeeds once every `Ok` operation
//! is linearized. Three reductions, each of which keeps some linearization if there is one,
//! keep it from exploding on concurrency and on unknown outcomes:
//!
//! - forced moves: a read-only candidate (a read, a failed CAS) that holds is linearized at
//!   once and no alternative to it is tried: it changes nothing, and no pending operation
//!   had to precede it;
//! - just-in-time optional operations: an optional operation is linearized only right before
//!   an operation that could not be linearized without it, and only if some candidate wants
//!   the value it writes (anywhere else it can be postponed, or dropped);
//! - dominance: a configuration with the same register value and the same required
//!   operations as one entered before, but more optional operations linearized, is not
//!   explored: it has no completion the other lacks.
//!
//! Values that no operation observes are merged into one, since they behave alike. The work
//! per key is bounded; past the bound the key is reported as inconclusive, not hung on.
//! Thousands of operations per key from a handful of clients check in well under a second;
//! dozens of operations overlapping on one key can exceed the bound, and refuting a history
//! (a violation near its end) costs more than accepting one.
//!
//! When a key is not linearizable, the [`Violation`] names the operation at which the
//! deepest search got stuck, the linearization that reached it, and the operations
//! concurrent with it, with times in milliseconds relative to the first invocation.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::Instant;

/// Default bound on the search steps per key (operations linearized, counting those undone)
/// before giving up as inconclusive. The memo table holds at most one configuration per
/// step, typically well under 200 bytes each.
pub const DEFAULT_MAX_STATES: usize = 5_000_000;

/// An operation on one key's register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Reads the value.
    Read,
    /// Sets the value.
    Write(String),
    /// Sets the value to `new` if it is `expect` (`None`: the key must be absent).
    Cas {
        /// The value the key must hold, `None` for absent.
        expect: Option<String>,
        /// The value written on success.
        new: String,
    },
}

impl Op {
    /// A write of `value`.
    pub fn write(value: impl Into<String>) -> Self {
        Op::Write(value.into())
    }

    /// A compare-and-swap from `expect` (`None`: absent) to `new`.
    pub fn cas(expect: Option<&str>, new: impl Into<String>) -> Self {
        Op::Cas {
            expect: expect.map(str::to_owned),
            new: new.into(),
        }
    }
}

/// The result of an operation that definitely took effect; its variant must match the [`Op`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// A read observed this value (`None`: absent).
    Read(Option<String>),
    /// A write was applied.
    Write,
    /// A CAS was applied; `false` means its expectation did not hold (a read of a value
    /// other than `expect`).
    Cas(bool),
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It took effect between its invocation and its completion, with this result.
    Ok(Response),
    /// It definitely did not take effect (for example it was rejected before proposing).
    Fail,
    /// It may have taken effect at any time after its invocation, or never.
    Unknown,
}

impl Outcome {
    /// A read that observed `value` (`None`: absent).
    pub fn read(value: Option<&str>) -> Self {
        Outcome::Ok(Response::Read(value.map(str::to_owned)))
    }

    /// An acknowledged write.
    pub fn written() -> Self {
        Outcome::Ok(Response::Write)
    }

    /// A CAS that answered, having `succeeded` or not.
    pub fn cas(succeeded: bool) -> Self {
        Outcome::Ok(Response::Cas(succeeded))
    }
}

/// One recorded operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The client (logical thread) that issued it; informational only.
    pub client: usize,
    /// The key it acted on.
    pub key: String,
    /// What it did.
    pub op: Op,
    /// When it was invoked, in monotonic nanoseconds (taken before sending the request).
    pub invoke: u64,
    /// When it completed, in monotonic nanoseconds (taken after the response arrived);
    /// ignored for `Unknown` outcomes.
    pub complete: u64,
    /// How it ended.
    pub outcome: Outcome,
}

/// Records a history with timestamps from one monotonic clock. Wrap it in a mutex to share
/// it between clients: call [`History::invoke`] before sending a request and
/// [`History::complete`] after its response arrives. An operation never completed stays
/// `Unknown`.
#[derive(Debug)]
pub struct History {
    start: Instant,
    ops: Vec<Operation>,
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl History {
    /// An empty history whose clock starts now.
    pub fn new() -> Self {
        History {
            start: Instant::now(),
            ops: Vec::new(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Records the invocation of `op` on `key` and returns its id for [`History::complete`].
    pub fn invoke(&mut self, client: usize, key: impl Into<String>, op: Op) -> usize {
        let now = self.now();
        let key = key.into();
        self.ops.push(Operation {
            client,
            key,
            op,
            invoke: now,
            complete: now,
            outcome: Outcome::Unknown,
        });
        self.ops.len() - 1
    }

    /// Records the outcome of the operation `id` returned by [`History::invoke`].
    pub fn complete(&mut self, id: usize, outcome: Outcome) {
        let now = self.now();
        let op = self
            .ops
            .get_mut(id)
            .expect("complete() takes an id returned by invoke()");
        op.complete = now;
        op.outcome = outcome;
    }

    /// The operations recorded so far.
    pub fn ops(&self) -> &[Operation] {
        &self.ops
    }
}

/// Why a key's sub-history is not linearizable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The key.
    pub key: String,
    /// Index in the history of the operation at which the deepest search got stuck: it had
    /// to take effect before it completed, and no order of the pending operations allowed it.
    pub stuck: Option<usize>,
    /// Indices of the operations in the deepest linearization found, in order.
    pub linearized: Vec<usize>,
    /// The register value after that linearization.
    pub state: Option<String>,
    /// Indices of the key's operations (all outcomes) concurrent with the stuck one.
    pub concurrent: Vec<usize>,
    /// A human-readable account of all the above.
    pub explanation: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.explanation)
    }
}

/// The verdict of [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckResult {
    /// Every key's sub-history is linearizable.
    Linearizable,
    /// A key's sub-history is not linearizable (the first such key in key order).
    Violation(Violation),
    /// No violation was found, but the search of these keys exceeded the bound of steps.
    Inconclusive {
        /// The keys whose search was cut short.
        keys: Vec<String>,
        /// The bound that was exceeded.
        max_states: usize,
    },
    /// The history is not well formed (a response that does not match its operation, or a
    /// completion before the invocation).
    Malformed {
        /// Index of the offending operation.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
}

impl CheckResult {
    /// Whether the history was proven linearizable.
    pub fn is_linearizable(&self) -> bool {
        matches!(self, CheckResult::Linearizable)
    }

    /// The violation, if one was found.
    pub fn violation(&self) -> Option<&Violation> {
        match self {
            CheckResult::Violation(violation) => Some(violation),
            _ => None,
        }
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckResult::Linearizable => f.write_str("history is linearizable"),
            CheckResult::Violation(violation) => violation.fmt(f),
            CheckResult::Inconclusive { keys, max_states } => write!(
                f,
                "linearizability inconclusive: keys {keys:?} exceeded {max_states} search steps"
            ),
            CheckResult::Malformed { index, reason } => {
                write!(f, "malformed history: op #{index}: {reason}")
            }
        }
    }
}

/// Checks `history` with the default bound of [`DEFAULT_MAX_STATES`] search steps per key.
pub fn check(history: &[Operation]) -> CheckResult {
    check_with(history, DEFAULT_MAX_STATES)
}

/// Checks `history`, taking at most `max_states` search steps per key.
pub fn check_with(history: &[Operation], max_states: usize) -> CheckResult {
    let origin = history.iter().map(|op| op.invoke).min().unwrap_or(0);
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, op) in history.iter().enumerate() {
        by_key.entry(op.key.as_str()).or_default().push(index);
    }
    let mut violation = None;
    let mut inconclusive = Vec::new();
    for (key, indices) in by_key {
        let ops = match prepare_key(history, &indices) {
            Ok(ops) => ops,
            Err((index, reason)) => return CheckResult::Malformed { index, reason },
        };
        if violation.is_some() {
            continue; // keep validating the remaining keys, but report the first violation
        }
        match search(&ops, max_states) {
            Search::Linearizable => {}
            Search::Inconclusive => inconclusive.push(key.to_owned()),
            Search::Stuck(deepest) => {
                violation = Some(explain(history, key, &indices, &ops, deepest, origin));
            }
        }
    }
    match violation {
        Some(violation) => CheckResult::Violation(violation),
        None if inconclusive.is_empty() => CheckResult::Linearizable,
        None => CheckResult::Inconclusive {
            keys: inconclusive,
            max_states,
        },
    }
}

// ---------------------------------------------------------------------------------------
// Per-key preparation.
// ---------------------------------------------------------------------------------------

/// Interned register value.
type Value = u32;
/// The value of an absent key.
const ABSENT: Value = 0;
/// Every value that no operation observes (no read returns it, no CAS expects it): all
/// such values behave alike towards every operation, so they are merged into one.
const UNOBSERVED: Value = Value::MAX;

/// What an operation does to the register, with values interned.
#[derive(Debug, Clone, Copy)]
enum Step {
    Read(Value),
    Write(Value),
    Cas { expect: Value, new: Value },
    CasFailed { expect: Value },
}

impl Step {
    /// The register value after applying this step to `state`, or `None` if it cannot apply.
    fn apply(self, state: Value) -> Option<Value> {
        match self {
            Step::Read(value) => (state == value).then_some(state),
            Step::Write(value) => Some(value),
            Step::Cas { expect, new } => (state == expect).then_some(new),
            Step::CasFailed { expect } => (state != expect).then_some(state),
        }
    }

    /// Whether the step never changes the register.
    fn is_read_only(self) -> bool {
        matches!(self, Step::Read(_) | Step::CasFailed { .. })
    }

    /// The value the step writes, if it writes.
    fn written(self) -> Option<Value> {
        match self {
            Step::Write(value) | Step::Cas { new: value, .. } => Some(value),
            Step::Read(_) | Step::CasFailed { .. } => None,
        }
    }

    /// The value the step depends on, if any.
    fn observed(self) -> Option<Value> {
        match self {
            Step::Read(value)
            | Step::Cas { expect: value, .. }
            | Step::CasFailed { expect: value } => Some(value),
            Step::Write(_) => None,
        }
    }

    /// The step with every value that is not in `observed` replaced by [`UNOBSERVED`].
    fn merge_unobserved(self, observed: &HashSet<Value>) -> Step {
        let merge = |value: Value| {
            if observed.contains(&value) {
                value
            } else {
                UNOBSERVED
            }
        };
        match self {
            Step::Write(value) => Step::Write(merge(value)),
            Step::Cas { expect, new } => Step::Cas {
                expect,
                new: merge(new),
            },
            step @ (Step::Read(_) | Step::CasFailed { .. }) => step,
        }
    }
}

/// An operation kept for the search of one key.
#[derive(Debug, Clone)]
struct KeyOp {
    /// Index in the full history.
    index: usize,
    step: Step,
    invoke: u64,
    /// `u64::MAX` for optional operations.
    ret: u64,
    /// `Ok` operations must be linearized; `Unknown` ones may be.
    required: bool,
}

/// Validates and classifies the operations of one key, and interns their values.
fn prepare_key<'h>(
    history: &'h [Operation],
    indices: &[usize],
) -> Result<Vec<KeyOp>, (usize, String)> {
    let mut ids: HashMap<&str, Value> = HashMap::new();
    let mut intern = |value: Option<&'h String>| -> Value {
        let Some(value) = value else { return ABSENT };
        let next = Value::try_from(ids.len() + 1).expect("fewer than 2^32 - 1 values per key");
        *ids.entry(value.as_str()).or_insert(next)
    };
    let mut ops = Vec::new();
    for &index in indices {
        let op = &history[index];
        let step = match (&op.op, &op.outcome) {
            (_, Outcome::Fail) | (Op::Read, Outcome::Unknown) => continue,
            (Op::Read, Outcome::Ok(Response::Read(value))) => Step::Read(intern(value.as_ref())),
            (Op::Write(value), Outcome::Ok(Response::Write) | Outcome::Unknown) => {
                Step::Write(intern(Some(value)))
            }
            (Op::Cas { expect, new }, Outcome::Ok(Response::Cas(true)) | Outcome::Unknown) => {
                Step::Cas {
                    expect: intern(expect.as_ref()),
                    new: intern(Some(new)),
                }
            }
            (Op::Cas { expect, .. }, Outcome::Ok(Response::Cas(false))) => Step::CasFailed {
                expect: intern(expect.as_ref()),
            },
            (op, Outcome::Ok(response)) => {
                let reason = format!("response {response:?} does not match operation {op:?}");
                return Err((index, reason));
            }
        };
        let required = matches!(op.outcome, Outcome::Ok(_));
        if required && op.complete < op.invoke {
            let reason = format!(
                "completed at {} before invoked at {}",
                op.complete, op.invoke
            );
            return Err((index, reason));
        }
        let ret = if required { op.complete } else { u64::MAX };
        ops.push(KeyOp {
            index,
            step,
            invoke: op.invoke,
            ret,
            required,
        });
    }
    let observed: HashSet<Value> = ops.iter().filter_map(|op| op.step.observed()).collect();
    for op in &mut ops {
        op.step = op.step.merge_unobserved(&observed);
    }
    // An optional operation writing a value nobody observes cannot help any operation but a
    // failed CAS (which needs the register to hold anything but its expectation); without
    // failed CASes, removing it from a linearization leaves a linearization.
    let failed_cas = ops
        .iter()
        .any(|op| matches!(op.step, Step::CasFailed { .. }));
    if !failed_cas {
        ops.retain(|op| op.required || op.step.written() != Some(UNOBSERVED));
    }
    Ok(ops)
}

// ---------------------------------------------------------------------------------------
// Search.
// ---------------------------------------------------------------------------------------

/// The set of linearized operations, required and optional ones apart.
///
/// Required operations are numbered in order of completion. In a configuration the search
/// reaches, the linearized required operations are a prefix in that order plus a few
/// concurrent with the first one missing, so the memo key keeps their bits only from the
/// first word that is not all ones to the last word that is not all zeros.
struct Linearized {
    /// For each operation: whether it is required, and its bit in that set.
    slot: Vec<(bool, usize)>,
    required: Vec<u64>,
    optional: Vec<u64>,
    /// `required[..full]` are all ones and `required[full]` is not.
    full: usize,
    /// `required[end..]` are all zeros and `required[end - 1]` is not.
    end: usize,
}

impl Linearized {
    fn new(ops: &[KeyOp]) -> Self {
        let mut by_completion: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].required).collect();
        by_completion.sort_by_key(|&i| (ops[i].ret, i));
        let mut slot = vec![(false, 0); ops.len()];
        for (rank, &op) in by_completion.iter().enumerate() {
            slot[op] = (true, rank);
        }
        for (rank, op) in (0..ops.len()).filter(|&i| !ops[i].required).enumerate() {
            slot[op] = (false, rank);
        }
        Linearized {
            slot,
            required: vec![0; by_completion.len().div_ceil(64)],
            optional: vec![0; (ops.len() - by_completion.len()).div_ceil(64)],
            full: 0,
            end: 0,
        }
    }

    fn toggle(&mut self, op: usize) {
        let (required, bit) = self.slot[op];
        let (word, mask) = (bit / 64, 1u64 << (bit % 64));
        if !required {
            self.optional[word] ^= mask;
            return;
        }
        let words = &mut self.required;
        words[word] ^= mask;
        if words[word] & mask != 0 {
            self.end = self.end.max(word + 1);
            while self.full < words.len() && words[self.full] == u64::MAX {
                self.full += 1;
            }
        } else {
            self.full = self.full.min(word);
            while self.end > 0 && words[self.end - 1] == 0 {
                self.end -= 1;
            }
        }
    }

    /// Writes the memo key of the required set with register value `state` into `out`.
    fn key(&self, state: Value, out: &mut Vec<u64>) {
        out.clear();
        out.push((u64::from(state) << 32) | self.full as u64);
        out.extend_from_slice(&self.required[self.full..self.end.max(self.full)]);
    }
}

/// Memo table of the configurations entered. A configuration is the register value and the
/// set of linearized operations; one with the same value and required operations as a
/// configuration entered before, and a superset of its optional operations, is dominated:
/// its completions are completions of the other (optional operations only ever constrain
/// by being linearized), so it need not be explored.
#[derive(Default)]
struct Memo {
    /// For each key of (value, required set): the optional sets entered with it.
    table: HashMap<Vec<u64>, Vec<Vec<u64>>>,
}

impl Memo {
    /// Records a configuration and returns true, unless it is dominated.
    fn enter(&mut self, key: &[u64], optional: &[u64]) -> bool {
        let is_subset = |a: &[u64], b: &[u64]| a.iter().zip(b).all(|(a, b)| a & !b == 0);
        if !self.table.contains_key(key) {
            self.table.insert(key.to_vec(), Vec::new());
        }
        let sets = self.table.get_mut(key).expect("inserted above");
        if sets.iter().any(|set| is_subset(set, optional)) {
            return false;
        }
        sets.retain(|set| !is_subset(optional, set));
        sets.push(optional.to_vec());
        true
    }
}

/// A linearized operation on the search stack.
struct Frame {
    /// Local index of the operation.
    op: usize,
    /// The register value before it.
    before: Value,
    /// How it was chosen.
    pass: Pass,
}

/// Which candidates a scan of the event list considers. At each configuration the search
/// first linearizes a read-only candidate that holds, if there is one (a forced move: it
/// leaves the register unchanged and no pending operation had to precede it, so it may go
/// first in any completion, and no alternative to it is tried); else it tries the required
/// candidates, then the optional ones that write a value some candidate wants (so that
/// configurations with fewer optional operations come first and dominate the others). The
/// configuration right after an optional operation is transient: only an operation that
/// could not be linearized before it may follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    Forced,
    Required,
    Optional,
}

/// The values some candidate needs the register to hold, in a configuration where it does
/// not: an optional operation is only worth linearizing if it writes one of them.
#[derive(Default)]
struct Wanted {
    values: HashSet<Value>,
    /// A failed CAS expects the current value: any other value will do.
    any: bool,
}

/// Node 0 of the event list is its head.
const HEAD: usize = 0;

/// The state of Lowe's search over the operations of one key.
struct Searcher<'a> {
    ops: &'a [KeyOp],
    /// Doubly linked list of nodes: the head, the events in time order, then the tail.
    next: Vec<usize>,
    prev: Vec<usize>,
    tail: usize,
    /// For each event node: its operation, and whether it is the call (or the return).
    node_op: Vec<usize>,
    is_call: Vec<bool>,
    /// For each operation: its call node and return node.
    call_node: Vec<usize>,
    return_node: Vec<usize>,
    linearized: Linearized,
    memo: Memo,
    /// Operations linearized so far, counting again those undone.
    explored: usize,
    /// Scratch space for a configuration's memo key.
    key: Vec<u64>,
    stack: Vec<Frame>,
    state: Value,
    /// Required operations not linearized yet.
    remaining: usize,
}

impl<'a> Searcher<'a> {
    fn new(ops: &'a [KeyOp]) -> Self {
        // Events sorted by time; at equal times calls come first (the ops are concurrent).
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * ops.len());
        for (i, op) in ops.iter().enumerate() {
            events.push((op.invoke, false, i));
            events.push((op.ret, true, i));
        }
        events.sort_unstable();
        let tail = events.len() + 1;
        let mut searcher = Searcher {
            ops,
            next: (1..=tail + 1).collect(),
            prev: (0..=tail).map(|node| node.saturating_sub(1)).collect(),
            tail,
            node_op: vec![usize::MAX; tail + 1],
            is_call: vec![false; tail + 1],
            call_node: vec![0; ops.len()],
            return_node: vec![0; ops.len()],
            linearized: Linearized::new(ops),
            memo: Memo::default(),
            explored: 0,
            key: Vec::new(),
            stack: Vec::new(),
            state: ABSENT,
            remaining: ops.iter().filter(|op| op.required).count(),
        };
        for (position, &(_, is_return, op)) in events.iter().enumerate() {
            let node = position + 1;
            searcher.node_op[node] = op;
            searcher.is_call[node] = !is_return;
            if is_return {
                searcher.return_node[op] = node;
            } else {
                searcher.call_node[op] = node;
            }
        }
        searcher
    }

    /// Whether `node` is the call of a pending operation that may be linearized now: a call
    /// before the first return in the list.
    fn is_candidate(&self, node: usize) -> bool {
        node != self.tail && self.is_call[node]
    }

    /// The register value after linearizing the candidate `op` in `pass`, if it may be.
    fn admissible(&self, op: usize, pass: Pass, wanted: &Wanted) -> Option<Value> {
        let step = self.ops[op].step;
        let in_pass = match pass {
            Pass::Forced => step.is_read_only(),
            Pass::Required => self.ops[op].required && !step.is_read_only(),
            Pass::Optional => !self.ops[op].required,
        };
        if !in_pass {
            return None;
        }
        // After an optional operation, only an operation that needs it may come.
        if let Some(frame) = self
            .stack
            .last()
            .filter(|frame| frame.pass == Pass::Optional)
        {
            if step.apply(frame.before).is_some() {
                return None;
            }
        }
        let after = step.apply(self.state)?;
        // An optional operation is only worth linearizing if some candidate needs its value.
        let useful = after != self.state && (wanted.any || wanted.values.contains(&after));
        (pass != Pass::Optional || useful).then_some(after)
    }

    /// Collects the values that some candidate needs the register to hold to be linearized.
    fn wanted(&self, wanted: &mut Wanted) {
        wanted.values.clear();
        wanted.any = false;
        let mut node = self.next[HEAD];
        while self.is_candidate(node) {
            match self.ops[self.node_op[node]].step {
                Step::Read(value) | Step::Cas { expect: value, .. } if value != self.state => {
                    wanted.values.insert(value);
                }
                Step::CasFailed { expect } if expect == self.state => wanted.any = true,
                _ => {}
            }
            node = self.next[node];
        }
    }

    /// Linearizes `op`, leaving the register at `after`, unless that configuration is
    /// dominated by one entered before. Returns whether it did.
    fn linearize(&mut self, op: usize, after: Value, pass: Pass) -> bool {
        self.linearized.toggle(op);
        // The configuration after an optional operation is transient: only an operation
        // that needs it may follow, so it is not comparable with the others.
        if pass != Pass::Optional {
            self.linearized.key(after, &mut self.key);
            if !self.memo.enter(&self.key, &self.linearized.optional) {
                self.linearized.toggle(op);
                return false;
            }
        }
        self.explored += 1;
        self.stack.push(Frame {
            op,
            before: self.state,
            pass,
        });
        self.state = after;
        self.remaining -= usize::from(self.ops[op].required);
        for node in [self.call_node[op], self.return_node[op]] {
            self.next[self.prev[node]] = self.next[node];
            self.prev[self.next[node]] = self.prev[node];
        }
        true
    }

    /// Undoes the last linearization.
    fn undo(&mut self) -> Option<Frame> {
        let frame = self.stack.pop()?;
        self.linearized.toggle(frame.op);
        self.state = frame.before;
        self.remaining += usize::from(self.ops[frame.op].required);
        for node in [self.return_node[frame.op], self.call_node[frame.op]] {
            self.next[self.prev[node]] = node;
            self.prev[self.next[node]] = node;
        }
        Some(frame)
    }
}

/// The furthest point the search reached before a return event stopped it.
#[derive(Debug, Clone)]
struct Deepest {
    /// Local indices of the linearized operations, in order.
    linearized: Vec<usize>,
    /// Local index of the operation whose return event could not be passed.
    stuck: Option<usize>,
}

enum Search {
    Linearizable,
    Inconclusive,
    Stuck(Option<Deepest>),
}

/// Lowe's variant of the Wing & Gong search over the operations of one key.
fn search(ops: &[KeyOp], max_states: usize) -> Search {
    let mut s = Searcher::new(ops);
    let mut deepest: Option<Deepest> = None;
    let mut wanted = Wanted::default();
    // The pass and the next node to try in the current configuration.
    let mut scan = (Pass::Forced, s.next[HEAD]);
    loop {
        if s.remaining == 0 {
            return Search::Linearizable;
        }
        if s.explored > max_states {
            return Search::Inconclusive;
        }
        let (pass, node) = scan;
        if s.is_candidate(node) {
            scan = (pass, s.next[node]);
            let op = s.node_op[node];
            let Some(after) = s.admissible(op, pass, &wanted) else {
                continue;
            };
            if s.linearize(op, after, pass) {
                scan = (Pass::Forced, s.next[HEAD]);
            } else if pass == Pass::Forced {
                // A configuration dominating the forced move's was entered, so it has no
                // completion, nor has this one: backtrack.
                scan = (Pass::Optional, s.tail);
            }
            continue;
        }
        // A return (or the tail): the end of this pass's candidates.
        match pass {
            Pass::Forced => scan = (Pass::Required, s.next[HEAD]),
            Pass::Required => {
                s.wanted(&mut wanted);
                scan = (Pass::Optional, s.next[HEAD]);
            }
            Pass::Optional => {
                // The return's operation had to be linearized already, and cannot be.
                let longer = |d: &Deepest| s.stack.len() > d.linearized.len();
                if node != s.tail && deepest.as_ref().is_none_or(longer) {
                    deepest = Some(Deepest {
                        linearized: s.stack.iter().map(|frame| frame.op).collect(),
                        stuck: Some(s.node_op[node]),
                    });
                }
                // Backtrack to the last configuration with an alternative left to try.
                loop {
                    let Some(frame) = s.undo() else {
                        return Search::Stuck(deepest);
                    };
                    if frame.pass == Pass::Optional {
                        s.wanted(&mut wanted);
                    }
                    if frame.pass != Pass::Forced {
                        scan = (frame.pass, s.next[s.call_node[frame.op]]);
                        break;
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reporting.
// ---------------------------------------------------------------------------------------

/// At most this many operations are listed per section of an explanation.
const LIST_LIMIT: usize = 40;

fn explain(
    history: &[Operation],
    key: &str,
    indices: &[usize],
    ops: &[KeyOp],
    deepest: Option<Deepest>,
    origin: u64,
) -> Violation {
    let deepest = deepest.unwrap_or(Deepest {
        linearized: Vec::new(),
        stuck: None,
    });
    let stuck = deepest.stuck.map(|op| ops[op].index);
    let linearized: Vec<usize> = deepest.linearized.iter().map(|&op| ops[op].index).collect();
    // The register holds what the last write or successful CAS of the linearization wrote.
    let state = deepest.linearized.iter().rev().find_map(|&op| {
        match (ops[op].step, &history[ops[op].index].op) {
            (Step::Write(_), Op::Write(value)) | (Step::Cas { .. }, Op::Cas { new: value, .. }) => {
                Some(value.clone())
            }
            _ => None,
        }
    });
    let concurrent: Vec<usize> = match stuck {
        Some(stuck) => {
            let (start, end) = (history[stuck].invoke, history[stuck].complete);
            let overlaps = |other: &Operation| {
                let other_end = if other.outcome == Outcome::Unknown {
                    u64::MAX
                } else {
                    other.complete
                };
                other.invoke <= end && other_end >= start
            };
            indices
                .iter()
                .copied()
                .filter(|&i| i != stuck && overlaps(&history[i]))
                .collect()
        }
        None => Vec::new(),
    };

    let required = ops.iter().filter(|op| op.required).count();
    let optional = ops.len() - required;
    let dropped = indices.len() - ops.len();
    let mut text = format!(
        "key {key:?} is not linearizable: no order of its {} ops ",
        ops.len()
    );
    text += &format!("({required} ok, {optional} unknown and optional, {dropped} dropped) ");
    text += "is consistent with a register\n";
    text += &format!("the deepest search linearized {} ops, ", linearized.len());
    text += &format!("leaving the register at {}, ", show_value(state.as_deref()));
    text += "then got stuck at an op that had to take effect before it completed but could not:\n";
    match stuck {
        Some(stuck) => text += &format!("  stuck: {}\n", show_op(history, stuck, origin)),
        None => text += "  stuck: (no op)\n",
    }
    let shown = linearized.len().min(LIST_LIMIT);
    text += &format!("last {shown} ops of that linearization, in order:\n");
    for &index in &linearized[linearized.len() - shown..] {
        text += &format!("  {}\n", show_op(history, index, origin));
    }
    text += &format!(
        "ops on key {key:?} concurrent with the stuck op ({}):\n",
        concurrent.len()
    );
    for &index in concurrent.iter().take(LIST_LIMIT) {
        text += &format!("  {}\n", show_op(history, index, origin));
    }
    if concurrent.len() > LIST_LIMIT {
        text += &format!("  ... and {} more\n", concurrent.len() - LIST_LIMIT);
    }
    Violation {
        key: key.to_owned(),
        stuck,
        linearized,
        state,
        concurrent,
        explanation: text,
    }
}

fn show_value(value: Option<&str>) -> String {
    match value {
        Some(value) => format!("{value:?}"),
        None => "<absent>".to_owned(),
    }
}

fn millis(time: u64, origin: u64) -> String {
    format!("{:.3}ms", time.saturating_sub(origin) as f64 / 1e6)
}

/// One line describing the operation `index` of `history`.
fn show_op(history: &[Operation], index: usize, origin: u64) -> String {
    let op = &history[index];
    let end = match op.outcome {
        Outcome::Unknown => "?".to_owned(),
        _ => millis(op.complete, origin),
    };
    let what = match &op.op {
        Op::Read => "read".to_owned(),
        Op::Write(value) => format!("write {value:?}"),
        Op::Cas { expect, new } => format!("cas from {} to {new:?}", show_value(expect.as_deref())),
    };
    let outcome = match &op.outcome {
        Outcome::Ok(Response::Read(value)) => format!("ok {}", show_value(value.as_deref())),
        Outcome::Ok(Response::Write) => "ok".to_owned(),
        Outcome::Ok(Response::Cas(true)) => "ok (swapped)".to_owned(),
        Outcome::Ok(Response::Cas(false)) => "ok (not swapped)".to_owned(),
        Outcome::Fail => "fail".to_owned(),
        Outcome::Unknown => "unknown".to_owned(),
    };
    format!(
        "#{index} [{} .. {end}] client {}: {what} -> {outcome}",
        millis(op.invoke, origin),
        op.client
    )
}

// ---------------------------------------------------------------------------------------
// Summary.
// ---------------------------------------------------------------------------------------

/// Operation counts by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Operations that took effect.
    pub ok: usize,
    /// Operations that definitely did not take effect.
    pub fail: usize,
    /// Operations with an unknown outcome.
    pub unknown: usize,
}

impl Counts {
    /// All operations counted.
    pub fn total(&self) -> usize {
        self.ok + self.fail + self.unknown
    }

    fn add(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Ok(_) => self.ok += 1,
            Outcome::Fail => self.fail += 1,
            Outcome::Unknown => self.unknown += 1,
        }
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (ok {}, fail {}, unknown {})",
            self.total(),
            self.ok,
            self.fail,
            self.unknown
        )
    }
}

/// Counts of a history's operations, for test logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// All operations.
    pub all: Counts,
    /// Reads.
    pub reads: Counts,
    /// Writes.
    pub writes: Counts,
    /// Compare-and-swaps.
    pub cas: Counts,
    /// All operations, per key.
    pub per_key: BTreeMap<String, Counts>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "ops: {}; reads {}, writes {}, cas {}",
            self.all, self.reads, self.writes, self.cas
        )?;
        for (key, counts) in &self.per_key {
            writeln!(f, "  key {key:?}: {counts}")?;
        }
        Ok(())
    }
}

/// Counts the operations of `history` per outcome, per kind and per key.
pub fn summary(history: &[Operation]) -> Summary {
    let mut summary = Summary::default();
    for op in history {
        summary.all.add(&op.outcome);
        match op.op {
            Op::Read => summary.reads.add(&op.outcome),
            Op::Write(_) => summary.writes.add(&op.outcome),
            Op::Cas { .. } => summary.cas.add(&op.outcome),
        }
        summary
            .per_key
            .entry(op.key.clone())
            .or_default()
            .add(&op.outcome);
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(
        client: usize,
        key: &str,
        op: Op,
        invoke: u64,
        complete: u64,
        outcome: Outcome,
    ) -> Operation {
        Operation {
            client,
            key: key.to_owned(),
            op,
            invoke,
            complete,
            outcome,
        }
    }

    fn write(client: usize, key: &str, value: &str, invoke: u64, complete: u64) -> Operation {
        op(
            client,
            key,
            Op::write(value),
            invoke,
            complete,
            Outcome::written(),
        )
    }

    fn read(
        client: usize,
        key: &str,
        value: Option<&str>,
        invoke: u64,
        complete: u64,
    ) -> Operation {
        op(
            client,
            key,
            Op::Read,
            invoke,
            complete,
            Outcome::read(value),
        )
    }

    fn cas(
        client: usize,
        key: &str,
        expect: Option<&str>,
        new: &str,
        ok: bool,
        invoke: u64,
        complete: u64,
    ) -> Operation {
        op(
            client,
            key,
            Op::cas(expect, new),
            invoke,
            complete,
            Outcome::cas(ok),
        )
    }

    fn unknown(client: usize, key: &str, what: Op, invoke: u64) -> Operation {
        op(client, key, what, invoke, 0, Outcome::Unknown)
    }

    #[track_caller]
    fn assert_ok(history: &[Operation]) {
        let result = check(history);
        assert!(
            result.is_linearizable(),
            "expected linearizable, got: {result}"
        );
    }

    #[track_caller]
    fn assert_violation(history: &[Operation]) -> Violation {
        match check(history) {
            CheckResult::Violation(violation) => violation,
            other => panic!("expected a violation, got: {other}"),
        }
    }

    #[test]
    fn sequential_history_passes() {
        assert_ok(&[]);
        assert_ok(&[
            read(0, "k", None, 0, 10),
            write(0, "k", "a", 20, 30),
            read(1, "k", Some("a"), 40, 50),
            write(1, "k", "b", 60, 70),
            cas(0, "k", Some("b"), "c", true, 80, 90),
            cas(1, "k", Some("b"), "d", false, 100, 110),
            read(0, "k", Some("c"), 120, 130),
        ]);
        assert_ok(&[
            cas(0, "k", None, "a", true, 0, 10),
            read(0, "k", Some("a"), 20, 30),
        ]);
    }

    #[test]
    fn concurrent_history_valid_in_some_order_passes() {
        let mut history = vec![
            write(0, "k", "a", 0, 100),
            write(1, "k", "b", 10, 90),
            read(2, "k", Some("b"), 20, 30),
            read(3, "k", Some("a"), 40, 50),
            read(2, "k", Some("a"), 110, 120),
        ];
        assert_ok(&history);
        // Both writes finished and "a" was seen after "b": "b" cannot come back.
        history.push(read(3, "k", Some("b"), 130, 140));
        assert_violation(&history);
    }

    #[test]
    fn stale_read_fails() {
        let violation = assert_violation(&[
            write(0, "k", "a", 0, 10),
            write(1, "k", "b", 20, 30),
            read(2, "k", Some("a"), 40, 50),
        ]);
        assert_eq!(violation.stuck, Some(2));
        assert!(violation.explanation.contains("stuck: #2"), "{violation}");
    }

    #[test]
    fn lost_acknowledged_write_fails() {
        assert_violation(&[write(0, "k", "x", 0, 10), read(1, "k", None, 20, 30)]);
        assert_violation(&[
            write(0, "k", "a", 0, 10),
            write(0, "k", "x", 20, 30),
            read(1, "k", Some("a"), 40, 50),
        ]);
    }

    #[test]
    fn unknown_writes_are_optional() {
        let base = [
            write(0, "k", "a", 0, 10),
            unknown(1, "k", Op::write("b"), 20),
        ];
        // It shows up, long after its invocation.
        let mut history = base.to_vec();
        history.extend([
            read(2, "k", Some("a"), 100, 110),
            read(2, "k", Some("b"), 200, 210),
        ]);
        assert_ok(&history);
        // It never shows up.
        let mut history = base.to_vec();
        history.extend([
            read(2, "k", Some("a"), 100, 110),
            read(2, "k", Some("a"), 200, 210),
        ]);
        assert_ok(&history);
        // It cannot take effect before it was invoked.
        assert_violation(&[
            write(0, "k", "a", 0, 10),
            read(2, "k", Some("b"), 20, 30),
            unknown(1, "k", Op::write("b"), 40),
        ]);
        // Fail ops are dropped, and must not show up.
        let failed = op(1, "k", Op::write("z"), 20, 30, Outcome::Fail);
        assert_ok(&[
            write(0, "k", "a", 0, 10),
            failed.clone(),
            read(2, "k", Some("a"), 40, 50),
        ]);
        assert_violation(&[
            write(0, "k", "a", 0, 10),
            failed,
            read(2, "k", Some("z"), 40, 50),
        ]);
        // Unknown reads constrain nothing.
        assert_ok(&[unknown(0, "k", Op::Read, 0), write(0, "k", "a", 10, 20)]);
    }

    #[test]
    fn cas_semantics() {
        // The expectation "z" never held while the CAS was in flight.
        assert_violation(&[
            write(0, "k", "a", 0, 10),
            write(1, "k", "b", 15, 40),
            cas(2, "k", Some("z"), "c", true, 20, 30),
        ]);
        // Two concurrent CASes from the same value cannot both win.
        assert_violation(&[
            write(0, "k", "a", 0, 10),
            cas(1, "k", Some("a"), "b", true, 20, 30),
            cas(2, "k", Some("a"), "c", true, 25, 35),
        ]);
        // ...unless one of them is unknown and never happened.
        assert_ok(&[
            write(0, "k", "a", 0, 10),
            cas(1, "k", Some("a"), "b", true, 20, 30),
            unknown(2, "k", Op::cas(Some("a"), "c"), 25),
            read(0, "k", Some("b"), 40, 50),
        ]);
        // A failed CAS is explained by a concurrent write...
        assert_ok(&[
            write(0, "k", "a", 0, 10),
            write(1, "k", "b", 20, 40),
            cas(2, "k", Some("a"), "c", false, 25, 35),
            read(0, "k", Some("b"), 50, 60),
        ]);
        // ...but not without one.
        assert_violation(&[
            write(0, "k", "a", 0, 10),
            cas(2, "k", Some("a"), "c", false, 25, 35),
        ]);
        // A failed CAS may be explained by an unknown write nobody read.
        assert_ok(&[
            write(0, "k", "a", 0, 10),
            unknown(1, "k", Op::write("q"), 15),
            cas(2, "k", Some("a"), "c", false, 25, 35),
        ]);
    }

    #[test]
    fn value_never_written_fails() {
        assert_violation(&[read(0, "k", Some("ghost"), 0, 10)]);
        assert_violation(&[
            write(0, "k", "a", 0, 10),
            read(1, "k", Some("ghost"), 5, 20),
        ]);
    }

    #[test]
    fn keys_are_checked_independently() {
        let history = [
            write(0, "a", "1", 0, 10),
            write(1, "b", "1", 0, 10),
            write(0, "a", "2", 20, 30),
            write(1, "b", "2", 20, 30),
            read(2, "a", Some("2"), 40, 50),
            read(2, "b", Some("1"), 40, 50),
            // Another key's value is not this key's.
            read(2, "c", None, 60, 70),
        ];
        let violation = assert_violation(&history);
        assert_eq!(violation.key, "b");
        assert_eq!(violation.stuck, Some(5));
        assert_eq!(violation.state.as_deref(), Some("2"));
        assert!(violation.explanation.contains("key \"b\""), "{violation}");
        assert_ok(&history[..5]);
    }

    /// Whether some order of the `Ok` operations and any of the `Unknown` writes and CASes
    /// respects real time and the register: the definition, searched exhaustively.
    fn brute_force(history: &[Operation]) -> bool {
        fn extend(ops: &[&Operation], used: &mut [bool], state: Option<String>) -> bool {
            let done = |i: usize| used[i] || ops[i].outcome == Outcome::Unknown;
            if (0..ops.len()).all(done) {
                return true;
            }
            for i in 0..ops.len() {
                let must_wait = |j: usize| {
                    !used[j]
                        && ops[j].outcome != Outcome::Unknown
                        && ops[j].complete < ops[i].invoke
                };
                if used[i] || (0..ops.len()).any(must_wait) {
                    continue;
                }
                let after = match (&ops[i].op, &ops[i].outcome) {
                    (Op::Read, Outcome::Ok(Response::Read(value))) => {
                        (*value == state).then(|| state.clone())
                    }
                    (Op::Write(value), _) => Some(Some(value.clone())),
                    (
                        Op::Cas { expect, new },
                        Outcome::Ok(Response::Cas(true)) | Outcome::Unknown,
                    ) => (*expect == state).then(|| Some(new.clone())),
                    (Op::Cas { expect, .. }, _) => (*expect != state).then(|| state.clone()),
                    (Op::Read, _) => None,
                };
                if let Some(after) = after {
                    used[i] = true;
                    if extend(ops, used, after) {
                        return true;
                    }
                    used[i] = false;
                }
            }
            false
        }
        let ops: Vec<&Operation> = history
            .iter()
            .filter(|op| {
                !matches!(
                    (&op.op, &op.outcome),
                    (_, Outcome::Fail) | (Op::Read, Outcome::Unknown)
                )
            })
            .collect();
        extend(&ops, &mut vec![false; ops.len()], None)
    }

    #[test]
    fn agrees_with_brute_force_on_small_histories() {
        fn value(rng: &mut Rng) -> String {
            ["a", "b", "c"][usize::try_from(rng.below(3)).unwrap()].to_owned()
        }
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let mut verdicts = [0; 2];
        for _ in 0..5_000 {
            let mut history = Vec::new();
            for client in 0..1 + rng.below(8) {
                let invoke = rng.below(20);
                let complete = invoke + rng.below(10);
                let what = match rng.below(3) {
                    0 => Op::Read,
                    1 => Op::Write(value(&mut rng)),
                    _ => {
                        let expect = (rng.below(3) > 0).then(|| value(&mut rng));
                        Op::Cas {
                            expect,
                            new: value(&mut rng),
                        }
                    }
                };
                let outcome = match (rng.below(8), &what) {
                    (0, _) => Outcome::Fail,
                    (1..=3, _) => Outcome::Unknown,
                    (_, Op::Read) => {
                        Outcome::Ok(Response::Read((rng.below(3) > 0).then(|| value(&mut rng))))
                    }
                    (_, Op::Write(_)) => Outcome::written(),
                    (_, Op::Cas { .. }) => Outcome::cas(rng.below(2) == 0),
                };
                let client = usize::try_from(client).unwrap();
                history.push(op(client, "k", what, invoke, complete, outcome));
            }
            let expected = brute_force(&history);
            let result = check(&history);
            assert_eq!(result.is_linearizable(), expected, "{result}\n{history:#?}");
            assert_eq!(result.violation().is_some(), !expected);
            verdicts[usize::from(expected)] += 1;
        }
        assert!(verdicts[0] > 500 && verdicts[1] > 500, "{verdicts:?}");
    }

    #[test]
    fn malformed_and_inconclusive_are_reported() {
        let bad = op(0, "k", Op::Read, 0, 10, Outcome::written());
        assert!(matches!(
            check(&[bad]),
            CheckResult::Malformed { index: 0, .. }
        ));
        let backwards = write(0, "k", "a", 10, 5);
        assert!(matches!(
            check(&[backwards]),
            CheckResult::Malformed { index: 0, .. }
        ));
        let history: Vec<Operation> = (0..20)
            .map(|i| write(i, "k", &format!("v{i}"), 0, 100))
            .collect();
        let mut impossible = history.clone();
        impossible.push(read(0, "k", Some("ghost"), 0, 100));
        match check_with(&impossible, 1_000) {
            CheckResult::Inconclusive { keys, max_states } => {
                assert_eq!((keys, max_states), (vec!["k".to_owned()], 1_000))
            }
            other => panic!("expected inconclusive, got: {other}"),
        }
    }

    #[test]
    fn summary_counts_outcomes_per_kind_and_key() {
        let history = [
            write(0, "a", "1", 0, 10),
            unknown(1, "a", Op::write("2"), 5),
            op(2, "b", Op::Read, 0, 10, Outcome::Fail),
            cas(0, "b", None, "1", true, 20, 30),
        ];
        let summary = summary(&history);
        assert_eq!(
            summary.all,
            Counts {
                ok: 2,
                fail: 1,
                unknown: 1
            }
        );
        assert_eq!(
            summary.writes,
            Counts {
                ok: 1,
                fail: 0,
                unknown: 1
            }
        );
        assert_eq!(summary.per_key["b"].total(), 2);
        assert!(
            summary
                .to_string()
                .contains("key \"a\": 2 (ok 1, fail 0, unknown 1)"),
            "{summary}"
        );
    }

    #[test]
    fn recorder_timestamps_are_ordered() {
        let mut history = History::new();
        let first = history.invoke(0, "k", Op::write("a"));
        history.complete(first, Outcome::written());
        let second = history.invoke(1, "k", Op::Read);
        history.complete(second, Outcome::read(Some("a")));
        let lost = history.invoke(2, "k", Op::write("b"));
        let ops = history.ops();
        assert!(
            ops[first].invoke <= ops[first].complete && ops[first].complete <= ops[second].invoke
        );
        assert_eq!(ops[lost].outcome, Outcome::Unknown);
        assert_ok(ops);
    }

    /// xorshift64: a tiny deterministic PRNG.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, bound: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % bound
        }
    }

    /// A history generated from a sequential simulation: op `i` takes effect at time
    /// `1000 + 10 i`, inside a random interval around it, so the history is linearizable.
    /// Values are unique; some ops fail or end unknown (having taken effect or not).
    fn random_history(seed: u64, count: u64) -> Vec<Operation> {
        let keys = ["a", "b", "c"];
        let mut rng = Rng(seed);
        let mut registers: HashMap<&str, Option<String>> = HashMap::new();
        let mut history = Vec::new();
        for i in 0..count {
            let at = 1_000 + 10 * i;
            let key = keys[usize::try_from(rng.below(3)).unwrap()];
            let (invoke, complete) = (at - rng.below(60), at + rng.below(60));
            let client = usize::try_from(rng.below(8)).unwrap();
            let current = registers.get(key).cloned().flatten();
            // 0-3: unknown, took effect; 4-6: unknown, no effect; 7-8: fail; else ok.
            let fate = rng.below(100);
            let takes_effect = !(4..=8).contains(&fate);
            let roll = rng.below(100);
            let (what, response) = if roll < 45 {
                (Op::Read, Response::Read(current.clone()))
            } else if roll < 80 {
                (Op::write(format!("v{i}")), Response::Write)
            } else {
                let expect = match rng.below(3) {
                    0 => current.clone(),
                    1 => None,
                    _ => Some(format!("v{}", rng.below(i + 1))),
                };
                let swapped = expect == current;
                (
                    Op::Cas {
                        expect,
                        new: format!("v{i}"),
                    },
                    Response::Cas(swapped),
                )
            };
            if takes_effect {
                match (&what, &response) {
                    (Op::Write(value), _) | (Op::Cas { new: value, .. }, Response::Cas(true)) => {
                        registers.insert(key, Some(value.clone()));
                    }
                    _ => {}
                }
            }
            let outcome = match fate {
                0..=6 => Outcome::Unknown,
                7..=8 => Outcome::Fail,
                _ => Outcome::Ok(response),
            };
            history.push(op(client, key, what, invoke, complete, outcome));
        }
        history
    }

    /// Finds the earliest (or the latest) ok read `r` with ok writes `w1` before `w2` before
    /// `r` on its key, and makes `r` return `w1`'s value: a stale read no linearization can
    /// explain.
    fn make_stale(history: &mut [Operation], latest: bool) -> usize {
        let ok_write =
            |op: &Operation| matches!((&op.op, &op.outcome), (Op::Write(_), Outcome::Ok(_)));
        let mut reads: Vec<usize> = (0..history.len()).collect();
        if latest {
            reads.reverse();
        }
        for r in reads {
            if !matches!(history[r].outcome, Outcome::Ok(Response::Read(_))) {
                continue;
            }
            let same_key = |op: &Operation| op.key == history[r].key;
            let before =
                |op: &Operation, time: u64| same_key(op) && ok_write(op) && op.complete < time;
            let w1 = history
                .iter()
                .filter(|w2| before(w2, history[r].invoke))
                .find_map(|w2| history.iter().find(|w1| before(w1, w2.invoke)));
            let Some(Op::Write(stale)) = w1.map(|w1| w1.op.clone()) else {
                continue;
            };
            history[r].outcome = Outcome::read(Some(&stale));
            return r;
        }
        panic!("the random history has no read to make stale");
    }

    #[test]
    fn random_valid_history_passes_and_stale_mutations_fail() {
        for seed in [0x9e37_79b9_7f4a_7c15, 0x2545_f491_4f6c_dd1d, 42] {
            let history = random_history(seed, 1_500);
            let summary = summary(&history);
            assert!(
                summary.all.unknown > 10 && summary.all.fail > 5,
                "{summary}"
            );
            let result = check_with(&history, 200_000);
            assert!(
                result.is_linearizable(),
                "seed {seed:#x}: {result}\n{summary}"
            );

            for latest in [false, true] {
                let mut mutated = history.clone();
                let stale = make_stale(&mut mutated, latest);
                let result = check_with(&mutated, 200_000);
                let violation = result
                    .violation()
                    .unwrap_or_else(|| panic!("seed {seed:#x}, read #{stale}: {result}"));
                assert_eq!(violation.key, mutated[stale].key, "{violation}");
            }
        }
    }
}
