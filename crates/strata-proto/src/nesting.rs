//! A depth limit for the recursive wire types ([`Command::Batch`](crate::kv::Command::Batch),
//! [`RequestOp::Txn`](crate::kv::RequestOp::Txn) and their results).
//!
//! postcard has no recursion limit, so without this a few hundred kilobytes of nested batches
//! from the network overflow the stack and abort the process. Each recursive field decodes
//! through [`deserialize`], which counts the levels open on this thread (deserialization is
//! synchronous, so a thread-local counter sees exactly one decode at a time) and refuses to go
//! deeper than [`MAX_NESTING`] with an ordinary decode error.
//!
//! The limit is above anything the JSON API can produce (serde_json stops at 128 levels of
//! JSON, which is about 42 nested transactions), so no entry already in a Raft log is refused.

use serde::de::{Deserialize, Deserializer, Error};
use std::cell::Cell;

/// Most nested batches plus nested transactions in one decoded value.
pub const MAX_NESTING: u32 = 64;

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Closes one level when dropped, also when decoding the level failed.
struct Level;

impl Drop for Level {
    fn drop(&mut self) {
        DEPTH.with(|depth| depth.set(depth.get().saturating_sub(1)));
    }
}

/// Deserializes one nested level, or fails once [`MAX_NESTING`] levels are open.
pub(crate) fn deserialize<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let open = DEPTH.with(Cell::get);
    if open >= MAX_NESTING {
        return Err(D::Error::custom(format!(
            "nested more than {MAX_NESTING} levels deep (batches and nested txns)"
        )));
    }
    DEPTH.with(|depth| depth.set(open + 1));
    let _level = Level;
    T::deserialize(deserializer)
}
