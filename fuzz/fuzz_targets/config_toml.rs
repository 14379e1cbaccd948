//! Config files: any text parses to a config or an error, never a panic, and a config that
//! validates holds no value that the node cannot use (durations it adds to clocks, intervals
//! tokio requires to be non-zero).

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};
use strata_settings::{ByteSize, NodeConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = ByteSize::parse(text);
    let _ = NodeConfig::parse_initial_cluster(text);
    let Ok(config) = NodeConfig::from_toml(text) else {
        return;
    };
    let Ok(valid) = config.validate() else {
        return;
    };
    let now = Instant::now();
    let durations = [
        valid.raft.heartbeat_interval.0,
        valid.raft.election_timeout_min.0,
        valid.raft.election_timeout_max.0,
        valid.kv.watch_progress_interval.0,
        valid.kv.request_timeout.0,
        valid.shutdown_grace_period.0,
    ];
    // (A periodic compaction window is only compared with elapsed time, never added.)
    for duration in durations {
        // The node adds these to `Instant::now()` and to small margins.
        let with_margin = duration.checked_add(Duration::from_secs(60));
        assert!(
            with_margin.and_then(|d| now.checked_add(d)).is_some(),
            "{duration:?}"
        );
    }
    assert!(!valid.kv.watch_progress_interval.0.is_zero());
});
