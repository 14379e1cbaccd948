//! Long-lived streams (watches, observers, event streams) that must not outlive their caller's
//! rights: [`guard`] ends a stream once its caller may no longer read what it shows.

use crate::{Caller, Gate};
use futures::Stream;
use std::sync::Arc;
use strata_proto::error::ApiError;

/// Passes `stream` through while its caller keeps its rights. Whenever the auth records change
/// (and once right away: the caller was resolved before this subscription), the caller is
/// resolved again from its credential ([`Gate::recheck`]) and `check` runs on it; a refusal
/// (token expired or revoked, user deleted, role or permission revoked, access control
/// switched on for an open caller) yields `refused(error)` and ends the stream.
pub fn guard<S, T, F, R>(
    stream: S,
    gate: Arc<Gate>,
    caller: Caller,
    check: F,
    refused: R,
) -> impl Stream<Item = T> + Send + 'static
where
    S: Stream<Item = T> + Send + 'static,
    T: Send + 'static,
    F: Fn(&Gate, &Caller) -> Result<(), ApiError> + Send + 'static,
    R: Fn(ApiError) -> T + Send + 'static,
{
    struct Guarded<S, F, R> {
        stream: std::pin::Pin<Box<S>>,
        changes: Option<tokio::sync::watch::Receiver<i64>>,
        gate: Arc<Gate>,
        caller: Caller,
        check: F,
        refused: R,
    }
    let mut changes = gate.changes();
    changes.mark_changed();
    let state = Guarded {
        stream: Box::pin(stream),
        changes: Some(changes),
        gate,
        caller,
        check,
        refused,
    };
    futures::stream::unfold(Some(state), |state| async move {
        let mut state = state?;
        loop {
            let changed = async {
                match state.changes.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                item = futures::StreamExt::next(&mut state.stream) => {
                    return item.map(|item| (item, Some(state)));
                }
                still = changed => {
                    if !still {
                        // The gate is gone (the node is stopping): nothing to follow.
                        state.changes = None;
                        continue;
                    }
                    let refusal = match state.gate.recheck(&state.caller) {
                        Ok(caller) => {
                            state.caller = caller;
                            (state.check)(&state.gate, &state.caller).err()
                        }
                        Err(e) => Some(e),
                    };
                    if let Some(e) = refusal {
                        return Some(((state.refused)(e), None));
                    }
                }
            }
        }
    })
}
