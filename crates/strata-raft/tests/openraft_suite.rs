//! openraft's storage conformance suite, run against our fjall log store and snapshotting
//! state machine. It checks vote persistence, log reads across purge and truncation, initial
//! state recovery, membership tracking, apply and snapshot transfer.

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use std::sync::Arc;
use strata_proto::kv::{Command, CommandResult};
use strata_raft::{open_storage, DataDir, LogStore, StateMachine, StateMachineStore};

/// A state machine with no state: the suite only checks openraft's bookkeeping.
struct NullMachine;

impl StateMachine for NullMachine {
    fn apply(&self, _log_index: u64, _command: &Command) -> CommandResult {
        CommandResult::None
    }

    fn snapshot(&self) -> strata_raft::SnapshotWriter {
        Box::new(|_| Ok(()))
    }

    fn restore(&self, _data: &mut dyn std::io::Read, _format: u32) -> Result<(), String> {
        Ok(())
    }
}

/// Builds stores with the given log cache budget.
struct Builder {
    cache_bytes: usize,
}

impl
    StoreBuilder<
        strata_raft::TypeConfig,
        LogStore,
        StateMachineStore<NullMachine>,
        (DataDir, tempfile::TempDir),
    > for Builder
{
    async fn build(
        &self,
    ) -> Result<
        (
            (DataDir, tempfile::TempDir),
            LogStore,
            StateMachineStore<NullMachine>,
        ),
        StorageError<u64>,
    > {
        let dir = tempfile::tempdir().expect("create a temp dir");
        let data = open_storage(dir.path()).expect("open a fresh data folder");
        let log = LogStore::open_with_cache(&data, self.cache_bytes)?;
        let sm = StateMachineStore::open(Arc::new(NullMachine), &data)?;
        Ok(((data, dir), log, sm))
    }
}

#[test]
fn openraft_storage_suite_with_default_cache() {
    Suite::test_all(Builder {
        cache_bytes: strata_raft::LOG_CACHE_BYTES,
    })
    .expect("openraft storage suite");
}

/// With no cache budget every durable entry is evicted at once, so reads go to fjall.
#[test]
fn openraft_storage_suite_reading_from_disk() {
    Suite::test_all(Builder { cache_bytes: 0 }).expect("openraft storage suite");
}
