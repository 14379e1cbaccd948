//! Distributed locks and leader election on the KV store, with etcd's v3lock / v3election
//! semantics.
//!
//! A contender owns the key `NAME/LEASE_HEX`, created with its lease in a transaction that
//! leaves an existing key alone. Contenders are ordered by the keys' create revisions: the
//! lowest live one holds the lock (or leads the election). A waiter watches only its immediate
//! predecessor's deletion, so a release wakes one waiter rather than all of them. When a lease
//! expires its key is deleted, so a holder that stops renewing loses the lock.
//!
//! The create revision of the owner's key is the **fencing token**: it only grows from one
//! holder to the next, so a resource that remembers the highest token it has seen can reject a
//! stale holder (docs/locks.md).

use crate::kv_machine::Applied;
use crate::service::KvService;
use strata_proto::error::{ApiError, ErrorCode};
use strata_proto::kv::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, EventType, KeyValue, PutRequest,
    RangeRequest, RequestOp, ResponseOp, TxnRequest,
};
use tokio::sync::{broadcast, mpsc};

/// A held lock or a won election.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ownership {
    /// The owner's key (`NAME/LEASE_HEX`).
    #[serde(with = "strata_proto::bytes_serde")]
    pub key: Vec<u8>,
    /// The key's create revision: the fencing token.
    pub revision: i64,
    /// The lease that keeps the key alive.
    pub lease: i64,
}

fn owner_key(name: &[u8], lease: i64) -> Vec<u8> {
    let mut key = name.to_vec();
    key.push(b'/');
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    key
}

fn prefix_of(name: &[u8]) -> Vec<u8> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix
}

/// A compare that holds when `key` was created at `revision` (0: the key does not exist).
fn created_at(key: &[u8], revision: i64) -> Compare {
    Compare {
        key: key.to_vec(),
        range_end: Vec::new(),
        prefix: false,
        result: CompareResult::Equal,
        target: CompareTarget::CreateRevision(revision),
    }
}

fn check_name(name: &[u8], lease: i64) -> Result<(), ApiError> {
    if name.is_empty() {
        return Err(ApiError::bad_request(
            "lock or election name must not be empty",
        ));
    }
    if lease <= 0 {
        return Err(ApiError::bad_request(
            "a lease is required: grant one with `strata lease grant TTL` and pass its id",
        ));
    }
    Ok(())
}

impl KvService {
    /// Creates (or finds) the contender key for `name` owned by `lease` and returns it with its
    /// create revision. `value` is written only when the key is new.
    async fn enqueue(
        &self,
        name: &[u8],
        lease: i64,
        value: Vec<u8>,
    ) -> Result<(Ownership, Vec<u8>), ApiError> {
        let key = owner_key(name, lease);
        let txn = TxnRequest {
            compare: vec![created_at(&key, 0)],
            success: vec![
                RequestOp::Put(PutRequest {
                    key: key.clone(),
                    value,
                    lease,
                    prev_kv: false,
                    ..Default::default()
                }),
                RequestOp::Range(RangeRequest {
                    key: key.clone(),
                    ..Default::default()
                }),
            ],
            failure: vec![RequestOp::Range(RangeRequest {
                key: key.clone(),
                ..Default::default()
            })],
        };
        let response = self.txn(txn).await?;
        let found = response.responses.iter().rev().find_map(|op| match op {
            ResponseOp::Range(range) => range.kvs.first().cloned(),
            _ => None,
        });
        let Some(kv) = found else {
            return Err(ApiError::internal(
                "contender key vanished while it was being created",
            ));
        };
        Ok((
            Ownership {
                key,
                revision: kv.create_revision,
                lease,
            },
            kv.value,
        ))
    }

    /// Waits until `me` is the oldest live contender under `name`. Fails if `me` disappears
    /// (its lease expired or it was released).
    async fn wait_for_turn(&self, name: &[u8], me: &Ownership) -> Result<(), ApiError> {
        let prefix = prefix_of(name);
        loop {
            // Subscribe before looking, so a deletion between the two is not missed.
            let mut feed = self.machine.subscribe();
            self.linearize().await?;
            let predecessor = {
                let store = self.machine.read();
                let contenders = store.range(&RangeRequest {
                    key: prefix.clone(),
                    prefix: true,
                    ..Default::default()
                })?;
                if !contenders
                    .kvs
                    .iter()
                    .any(|kv| kv.key == me.key && kv.create_revision == me.revision)
                {
                    return Err(ApiError::new(
                        ErrorCode::FailedPrecondition,
                        "lost the lock before acquiring it: its lease expired or its key was deleted",
                    ));
                }
                contenders
                    .kvs
                    .into_iter()
                    .filter(|kv| kv.create_revision < me.revision)
                    .max_by_key(|kv| kv.create_revision)
            };
            let Some(predecessor) = predecessor else {
                return Ok(());
            };
            wait_for_delete(&mut feed, &predecessor, me).await?;
        }
    }

    /// Acquires lock `name` for `lease`, waiting behind earlier holders.
    pub async fn lock(&self, name: Vec<u8>, lease: i64) -> Result<Ownership, ApiError> {
        self.metrics.op("lock");
        check_name(&name, lease)?;
        let (me, _) = self.enqueue(&name, lease, Vec::new()).await?;
        self.await_turn_or_leave(&name, me).await
    }

    /// Waits for `me`'s turn; on failure removes its key so it blocks no one (best effort).
    async fn await_turn_or_leave(&self, name: &[u8], me: Ownership) -> Result<Ownership, ApiError> {
        if let Err(e) = self.wait_for_turn(name, &me).await {
            let leave = DeleteRangeRequest {
                key: me.key.clone(),
                ..Default::default()
            };
            let _ = self.delete(leave).await;
            return Err(e);
        }
        Ok(me)
    }

    /// Releases a lock (or resigns an election) by deleting the owner's key, if it is still
    /// the same key (create revision `revision`; 0 deletes unconditionally).
    pub async fn unlock(&self, key: Vec<u8>, revision: i64) -> Result<(), ApiError> {
        self.metrics.op("unlock");
        if key.is_empty() {
            return Err(ApiError::bad_request("lock key must not be empty"));
        }
        let compare = if revision > 0 {
            vec![created_at(&key, revision)]
        } else {
            Vec::new()
        };
        let txn = TxnRequest {
            compare,
            success: vec![RequestOp::DeleteRange(DeleteRangeRequest {
                key,
                ..Default::default()
            })],
            failure: Vec::new(),
        };
        self.txn(txn).await.map(|_| ())
    }

    /// Campaigns in election `name`: resolves once this contender leads.
    pub async fn campaign(
        &self,
        name: Vec<u8>,
        lease: i64,
        value: Vec<u8>,
    ) -> Result<Ownership, ApiError> {
        self.metrics.op("campaign");
        check_name(&name, lease)?;
        let (me, stored) = self.enqueue(&name, lease, value.clone()).await?;
        if stored != value {
            // Re-campaigning with the same lease and a new value: update it in place.
            self.proclaim(&me, value).await?;
        }
        self.await_turn_or_leave(&name, me).await
    }

    /// Sets the leader's value, if `leader` still leads (its key has the same create revision).
    pub async fn proclaim(&self, leader: &Ownership, value: Vec<u8>) -> Result<(), ApiError> {
        self.metrics.op("proclaim");
        let txn = TxnRequest {
            compare: vec![created_at(&leader.key, leader.revision)],
            success: vec![RequestOp::Put(PutRequest {
                key: leader.key.clone(),
                value,
                lease: leader.lease,
                prev_kv: false,
                ..Default::default()
            })],
            failure: Vec::new(),
        };
        if self.txn(txn).await?.succeeded {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::FailedPrecondition,
                "election: not leader",
            ))
        }
    }

    /// Returns the current leader of election `name` (oldest live contender), if any.
    pub async fn election_leader(
        &self,
        name: Vec<u8>,
        serializable: bool,
    ) -> Result<Option<KeyValue>, ApiError> {
        self.metrics.op("election_leader");
        if name.is_empty() {
            return Err(ApiError::bad_request("election name must not be empty"));
        }
        if !serializable {
            self.linearize().await?;
        }
        Ok(self.leader_now(&name))
    }

    fn leader_now(&self, name: &[u8]) -> Option<KeyValue> {
        let store = self.machine.read();
        let request = RangeRequest {
            key: prefix_of(name),
            prefix: true,
            ..Default::default()
        };
        store
            .range(&request)
            .ok()?
            .kvs
            .into_iter()
            .min_by_key(|kv| kv.create_revision)
    }

    /// Streams the leader of election `name` each time it (or its value) changes. Ends when
    /// the receiver is dropped.
    pub fn observe(
        self: &std::sync::Arc<Self>,
        name: Vec<u8>,
    ) -> Result<mpsc::Receiver<KeyValue>, ApiError> {
        if name.is_empty() {
            return Err(ApiError::bad_request("election name must not be empty"));
        }
        let (tx, rx) = mpsc::channel(16);
        let service = self.clone();
        let prefix = prefix_of(&name);
        self.spawn_task(async move {
            let mut feed = service.machine.subscribe();
            let mut last: Option<(Vec<u8>, i64)> = None;
            loop {
                let leader = service.leader_now(&name);
                if let Some(kv) = leader {
                    let seen = (kv.key.clone(), kv.mod_revision);
                    if last.as_ref() != Some(&seen) {
                        last = Some(seen);
                        if tx.send(kv).await.is_err() {
                            return;
                        }
                    }
                }
                // Wait for a change under the prefix (or a reset), then look again.
                loop {
                    tokio::select! {
                        _ = tx.closed() => return,
                        message = feed.recv() => match message {
                            Ok(Applied::Events { events, .. }) => {
                                if events.iter().any(|e| e.kv.key.starts_with(&prefix)) {
                                    break;
                                }
                            }
                            Ok(Applied::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                            Err(broadcast::error::RecvError::Closed) => return,
                        },
                    }
                }
            }
        });
        Ok(rx)
    }
}

/// Waits until `predecessor` is deleted (or the feed resets, in which case the caller looks
/// again). Fails if `mine` is deleted meanwhile.
///
/// The feed was subscribed before the caller's read, and this node may apply entries after the
/// leader answered, so it can still carry deletes of earlier keys of the same names: a
/// contender that unlocks and locks again reuses its key (`NAME/LEASE`). Only deletes after a
/// key's creation count.
async fn wait_for_delete(
    feed: &mut broadcast::Receiver<Applied>,
    predecessor: &KeyValue,
    mine: &Ownership,
) -> Result<(), ApiError> {
    loop {
        match feed.recv().await {
            Ok(Applied::Events { events, .. }) => {
                for event in events.iter().filter(|e| e.kind == EventType::Delete) {
                    let deleted = &event.kv;
                    if deleted.key == mine.key && deleted.mod_revision > mine.revision {
                        return Err(ApiError::new(
                            ErrorCode::FailedPrecondition,
                            "lost the lock before acquiring it: its lease expired or its key was deleted",
                        ));
                    }
                    if deleted.key == predecessor.key
                        && deleted.mod_revision > predecessor.create_revision
                    {
                        return Ok(());
                    }
                }
            }
            Ok(Applied::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => return Ok(()),
            Err(broadcast::error::RecvError::Closed) => {
                return Err(ApiError::unavailable("the node is shutting down"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_keys_are_name_slash_hex_lease() {
        assert_eq!(owner_key(b"jobs", 0x1f), b"jobs/1f".to_vec());
        assert!(check_name(b"", 1).is_err());
        assert!(check_name(b"x", 0).is_err());
    }
}
