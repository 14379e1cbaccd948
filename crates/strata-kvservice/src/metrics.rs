//! Prometheus metrics of the node. Names follow `strata_<component>_<thing>_<unit>`.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every metric the node exports, registered in one registry.
pub struct Metrics {
    registry: Registry,
    /// Current Raft term.
    pub raft_term: IntGauge,
    /// Highest committed log index known to this node.
    pub raft_commit_index: IntGauge,
    /// Highest log index applied to this node's state machine.
    pub raft_applied_index: IntGauge,
    /// Index of the last entry in this node's log.
    pub raft_last_log_index: IntGauge,
    /// 1 when this node is the leader.
    pub raft_is_leader: IntGauge,
    /// Leader changes observed by this node.
    pub raft_leader_changes: IntCounter,
    /// Time from proposal to apply, on the leader.
    pub proposal_seconds: Histogram,
    /// Writes per proposed log entry (proposal batching).
    pub proposal_batch_size: Histogram,
    /// Proposal batches given up on because leadership changed or the deadline passed.
    pub proposals_abandoned: IntCounter,
    /// Forwards to a leader given up on because raft elected another leader meanwhile.
    pub forwards_abandoned: IntCounter,
    /// fsynced log transactions.
    pub raft_log_fsyncs: IntCounter,
    /// Streams opened to peers (appends to followers, forwarded writes to the leader).
    pub raft_append_streams_opened: IntCounter,
    /// Appends sent to peers over a stream.
    pub raft_appends_streamed: IntCounter,
    /// Appends sent to peers as one POST each (peers of older builds).
    pub raft_appends_posted: IntCounter,
    /// Batches of writes this follower forwarded to the leader over the leader stream.
    pub raft_forwards_streamed: IntCounter,
    /// Replies on a stream that came after their request had timed out, dropped.
    pub raft_stream_late_replies: IntCounter,
    /// Entries in the unpurged log.
    pub raft_log_entries: IntGauge,
    /// Snapshots installed from a leader.
    pub raft_snapshots_installed: IntCounter,
    /// Size of the latest snapshot.
    pub raft_snapshot_bytes: IntGauge,
    /// Snapshots built by this node.
    pub raft_snapshots_built: IntCounter,
    /// The longest time apply waited for a snapshot (to freeze the state) since start.
    pub raft_snapshot_apply_pause_max: Gauge,
    pub raft_snapshot_index: IntGauge,
    /// How long the latest snapshot took to serialise and write, apply going on.
    pub raft_snapshot_write_seconds: Gauge,
    /// KV operations served, by operation.
    pub kv_operations: IntCounterVec,
    /// Current KV revision.
    pub kv_revision: IntGauge,
    /// Compaction revision.
    pub kv_compact_revision: IntGauge,
    /// Keys with retained history.
    pub kv_keys: IntGauge,
    /// Live leases.
    pub kv_leases: IntGauge,
    /// Open watches on this node.
    pub watchers: IntGauge,
    /// Watches that fell behind the apply feed (or met a snapshot install) and re-read
    /// history from the store to catch up.
    pub watch_resyncs: IntCounter,
    /// Size of the database file on disk.
    pub storage_db_bytes: IntGauge,
    /// Free bytes on the data folder's file system.
    pub disk_free_bytes: IntGauge,
    /// 1 while the node refuses writes for lack of disk space.
    pub disk_read_only: IntGauge,
    /// Requests answered with an error, by code.
    pub api_errors: IntCounterVec,
    /// Memory by structure (estimated from counts and type sizes), and the process's RSS.
    pub memory: prometheus::IntGaugeVec,
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("metric names are valid");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn float_gauge(registry: &Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::new(name, help).expect("metric names are valid");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("metric names are valid");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

/// Raises `counter` to `value` (counters mirror monotonic sources read at scrape time).
pub fn advance(counter: &IntCounter, value: u64) {
    let current = counter.get();
    if value > current {
        counter.inc_by(value - current);
    }
}

impl Metrics {
    /// The registry every metric of this node lives in; components add theirs here.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The metrics the consensus handle updates.
    pub fn consensus(&self) -> strata_raft::consensus::ConsensusMetrics {
        strata_raft::consensus::ConsensusMetrics {
            proposal_batch_size: self.proposal_batch_size.clone(),
            proposals_abandoned: self.proposals_abandoned.clone(),
            forwards_abandoned: self.forwards_abandoned.clone(),
            proposal_seconds: self.proposal_seconds.clone(),
        }
    }

    /// Creates and registers every metric.
    pub fn new(node_id: u64) -> Self {
        let registry = Registry::new_custom(
            None,
            Some([("node_id".to_string(), node_id.to_string())].into()),
        )
        .expect("registry labels are valid");
        let proposal_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "strata_raft_proposal_duration_seconds",
                "Time from proposal to apply on the leader",
            )
            .buckets(prometheus::exponential_buckets(0.0001, 2.0, 16).expect("valid buckets")),
        )
        .expect("valid histogram");
        registry
            .register(Box::new(proposal_seconds.clone()))
            .expect("registered once");
        let proposal_batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "strata_raft_proposal_batch_size",
                "Writes per proposed log entry",
            )
            .buckets(prometheus::exponential_buckets(1.0, 2.0, 10).expect("valid buckets")),
        )
        .expect("valid histogram");
        registry
            .register(Box::new(proposal_batch_size.clone()))
            .expect("registered once");
        let raft_leader_changes = IntCounter::new(
            "strata_raft_leader_changes_total",
            "Leader changes observed",
        )
        .expect("valid");
        registry
            .register(Box::new(raft_leader_changes.clone()))
            .expect("registered once");
        let kv_operations = IntCounterVec::new(
            Opts::new(
                "strata_kv_operations_total",
                "KV operations served, by operation",
            ),
            &["op"],
        )
        .expect("valid");
        registry
            .register(Box::new(kv_operations.clone()))
            .expect("registered once");
        let api_errors = IntCounterVec::new(
            Opts::new(
                "strata_api_errors_total",
                "API requests answered with an error, by code",
            ),
            &["code"],
        )
        .expect("valid");
        registry
            .register(Box::new(api_errors.clone()))
            .expect("registered once");
        Metrics {
            raft_term: gauge(&registry, "strata_raft_term", "Current Raft term"),
            raft_commit_index: gauge(
                &registry,
                "strata_raft_commit_index",
                "Highest committed log index known",
            ),
            raft_applied_index: gauge(
                &registry,
                "strata_raft_applied_index",
                "Highest log index applied",
            ),
            raft_last_log_index: gauge(&registry, "strata_raft_last_log_index", "Last log index"),
            raft_is_leader: gauge(
                &registry,
                "strata_raft_is_leader",
                "1 when this node is the leader",
            ),
            raft_leader_changes,
            proposal_seconds,
            proposal_batch_size,
            proposals_abandoned: counter(
                &registry,
                "strata_raft_proposals_abandoned_total",
                "Proposal batches abandoned (leadership changed or kv.request_timeout passed); their outcome is unknown",
            ),
            forwards_abandoned: counter(
                &registry,
                "strata_kv_forwards_abandoned_total",
                "Requests to a leader abandoned because another leader was elected meanwhile",
            ),
            raft_log_fsyncs: counter(
                &registry,
                "strata_raft_log_fsyncs_total",
                "fsynced log transactions since start",
            ),
            raft_append_streams_opened: counter(
                &registry,
                "strata_raft_append_streams_opened_total",
                "Connections opened to peers to stream appends (and, to the leader, forwarded writes) over",
            ),
            raft_appends_streamed: counter(
                &registry,
                "strata_raft_appends_streamed_total",
                "Appends (and heartbeats) sent to peers over an append stream",
            ),
            raft_appends_posted: counter(
                &registry,
                "strata_raft_appends_posted_total",
                "Appends sent to peers as one POST each (peers without the stream route)",
            ),
            raft_forwards_streamed: counter(
                &registry,
                "strata_raft_forwards_streamed_total",
                "Batches of writes forwarded to the leader over the leader stream",
            ),
            raft_stream_late_replies: counter(
                &registry,
                "strata_raft_stream_late_replies_total",
                "Replies on a peer stream that came after their request had timed out, read and dropped by the next request on the same stream",
            ),
            raft_log_entries: gauge(
                &registry,
                "strata_raft_log_entries",
                "Entries in the unpurged log",
            ),
            raft_snapshots_installed: counter(
                &registry,
                "strata_raft_snapshots_installed_total",
                "Snapshots installed from a leader since start",
            ),
            raft_snapshot_bytes: gauge(
                &registry,
                "strata_raft_snapshot_bytes",
                "Size of the latest snapshot",
            ),
            raft_snapshot_index: gauge(
                &registry,
                "strata_raft_snapshot_index",
                "Log index of the latest snapshot this node built or installed",
            ),
            raft_snapshots_built: counter(
                &registry,
                "strata_raft_snapshots_built_total",
                "Snapshots built by this node since start",
            ),
            raft_snapshot_apply_pause_max: float_gauge(
                &registry,
                "strata_raft_snapshot_apply_pause_max_seconds",
                "Longest time apply waited for a snapshot to freeze the state, since start",
            ),
            raft_snapshot_write_seconds: float_gauge(
                &registry,
                "strata_raft_snapshot_write_seconds",
                "Time the latest snapshot took to serialise and write (apply goes on meanwhile)",
            ),
            kv_operations,
            kv_revision: gauge(&registry, "strata_kv_revision", "Current KV revision"),
            kv_compact_revision: gauge(
                &registry,
                "strata_kv_compact_revision",
                "KV compaction revision",
            ),
            kv_keys: gauge(&registry, "strata_kv_keys", "Keys with retained history"),
            kv_leases: gauge(&registry, "strata_kv_leases", "Live leases"),
            watchers: gauge(&registry, "strata_kv_watchers", "Open watches on this node"),
            watch_resyncs: counter(
                &registry,
                "strata_kv_watch_resyncs_total",
                "Watches that fell behind the apply feed (or met a snapshot install) and re-read history from the store to catch up",
            ),
            storage_db_bytes: gauge(
                &registry,
                "strata_storage_db_size_bytes",
                "Disk the data folder takes (allocated bytes of log, snapshot, markers)",
            ),
            disk_free_bytes: gauge(
                &registry,
                "strata_disk_free_bytes",
                "Free bytes on the data folder's file system",
            ),
            disk_read_only: gauge(
                &registry,
                "strata_disk_read_only",
                "1 while the node refuses writes because free disk space is below kv.disk_reserve",
            ),
            api_errors,
            memory: {
                let memory = prometheus::IntGaugeVec::new(
                    Opts::new(
                        "strata_memory_bytes",
                        "Memory by structure, estimated from counts and type sizes; `resident` is the process's RSS",
                    ),
                    &["structure"],
                )
                .expect("valid");
                registry
                    .register(Box::new(memory.clone()))
                    .expect("registered once");
                memory
            },
            registry,
        }
    }

    /// Counts one operation.
    pub fn op(&self, name: &str) {
        self.kv_operations.with_label_values(&[name]).inc();
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
