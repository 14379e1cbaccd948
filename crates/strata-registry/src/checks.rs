//! Health checks: which node runs each check, and the loops that run them.
//!
//! Every node keeps a liveness key on a short lease ([`NODE_TTL_SECS`]). The checks are
//! spread over the nodes whose key exists by rendezvous hashing, so each check has exactly
//! one owner in every view, and when a node's key expires its checks move to the others with
//! no coordination beyond the watch that already feeds the view. Probe results stay local;
//! only a status transition (after the thresholds) goes through the log, as a
//! compare-and-set on the instance.

use crate::model::{node_key, now_ms, CheckKind, InstanceRef};
use crate::probe::{Health, Probe, Prober};
use crate::registry::Registry;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use strata_proto::error::ErrorCode;
use strata_proto::kv::{PutRequest, RequestOp, TxnRequest};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// TTL of a node's liveness key: how long a dead node's checks stay unowned, at most.
pub const NODE_TTL_SECS: i64 = 2;
/// How often a node renews its liveness key.
const NODE_KEEPALIVE: Duration = Duration::from_millis(500);
/// How often the runner re-plans (only when the plan version moved).
const PLAN_TICK: Duration = Duration::from_millis(100);

/// A check as this node runs it, for `/v1/registry/checks/local`.
#[derive(Debug, Clone, Serialize)]
pub struct LocalCheck {
    /// The checked instance.
    pub instance: InstanceRef,
    /// `http`, `tcp`, `grpc` or `ttl`.
    pub kind: &'static str,
    /// When this node took the check over (ms since the epoch).
    pub owned_since_ms: u64,
    /// Probes run by this node.
    pub runs: u64,
    /// When the last probe ran (ms since the epoch), 0 before the first.
    pub last_run_ms: u64,
    /// Result of the last probe.
    pub last_health: Option<Health>,
    /// Output of the last probe.
    pub last_output: String,
}

/// The checks this node runs.
#[derive(Debug, Default)]
pub struct LocalChecks {
    inner: Mutex<BTreeMap<InstanceRef, LocalCheck>>,
}

impl LocalChecks {
    /// A snapshot of every check this node runs.
    pub fn list(&self) -> Vec<LocalCheck> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<InstanceRef, LocalCheck>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn start(&self, r: &InstanceRef, kind: &'static str) {
        self.lock().insert(
            r.clone(),
            LocalCheck {
                instance: r.clone(),
                kind,
                owned_since_ms: now_ms(),
                runs: 0,
                last_run_ms: 0,
                last_health: None,
                last_output: String::new(),
            },
        );
    }

    fn record(&self, r: &InstanceRef, health: Health, output: &str) {
        if let Some(c) = self.lock().get_mut(r) {
            c.runs += 1;
            c.last_run_ms = now_ms();
            c.last_health = Some(health);
            c.last_output = output.to_string();
        }
    }

    fn stop(&self, r: &InstanceRef) {
        self.lock().remove(r);
    }
}

/// FNV-1a: stable across processes and releases, which rendezvous hashing needs.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in *part {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The node that runs the check of `r`, given the live nodes (highest random weight).
pub fn owner(r: &InstanceRef, nodes: &[u64]) -> Option<u64> {
    let key = r.key();
    nodes
        .iter()
        .copied()
        .max_by_key(|node| fnv1a(&[key.as_bytes(), &node.to_be_bytes()]))
}

/// Keeps this node's liveness key alive until `cancel`, then removes it so the other nodes
/// take its checks over at once. The key is first written when the registry holds a checked
/// instance, so a cluster that never uses health checks never sees a registry write.
pub async fn keep_node_alive(registry: Arc<Registry>, cancel: CancellationToken) {
    let store = registry.store.clone();
    let me = store.node_id();
    while !registry.view.has_checks() {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(PLAN_TICK) => {}
        }
    }
    let mut lease = 0;
    while !cancel.is_cancelled() {
        if lease == 0 {
            let granted = async {
                let id = strata_store::grant(&*store, NODE_TTL_SECS).await?;
                store
                    .txn(TxnRequest {
                        compare: vec![],
                        success: vec![RequestOp::Put(PutRequest {
                            key: node_key(me).into_bytes(),
                            value: me.to_string().into_bytes(),
                            lease: id,
                            prev_kv: false,
                            ..Default::default()
                        })],
                        failure: vec![],
                    })
                    .await?;
                Ok::<i64, strata_proto::error::ApiError>(id)
            }
            .await;
            match granted {
                Ok(id) => {
                    debug!(lease = id, "check runner registered");
                    lease = id;
                }
                Err(e) => debug!(error = %e, "cannot register the check runner yet"),
            }
        } else if let Err(e) = store.lease_keepalive(lease).await {
            if e.code == ErrorCode::NotFound {
                warn!("check runner's liveness lease expired; registering again");
                lease = 0;
                continue;
            }
            debug!(error = %e, "check runner keep-alive failed");
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(NODE_KEEPALIVE) => {}
        }
    }
    if lease != 0 {
        let _ = tokio::time::timeout(Duration::from_secs(1), store.lease_revoke(lease)).await;
    }
}

/// Runs the checks this node owns until `cancel`, re-planning whenever the set of checked
/// instances or of live nodes changes: only the instances whose check changed, or every
/// checked instance when the live nodes changed (ownership moves) or the view reloaded.
pub async fn run_checks(registry: Arc<Registry>, cancel: CancellationToken) {
    let me = registry.store.node_id();
    let mut runners = Runners {
        registry: registry.clone(),
        prober: Prober::new(),
        running: HashMap::new(),
        cancel: cancel.clone(),
    };
    let mut planned: Option<u64> = None;
    let mut tick = tokio::time::interval(PLAN_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        if planned == Some(registry.view.plan_version()) {
            continue;
        }
        let changes = registry.view.plan_changes(planned);
        let desired = |r: &InstanceRef| {
            (owner(r, &changes.nodes) == Some(me))
                .then(|| registry.view.get(r).and_then(|s| s.instance.check.clone()))
                .flatten()
        };
        if changes.all {
            let desired: HashMap<InstanceRef, crate::model::Check> = changes
                .instances
                .iter()
                .filter_map(|r| Some((r.clone(), desired(r)?)))
                .collect();
            let stale: Vec<InstanceRef> = runners
                .running
                .iter()
                .filter(|(r, (check, _))| desired.get(*r) != Some(check))
                .map(|(r, _)| r.clone())
                .collect();
            for r in stale {
                runners.stop(&r);
            }
            for (r, check) in desired {
                runners.ensure(r, check);
            }
        } else {
            for r in &changes.instances {
                match desired(r) {
                    Some(check) => runners.ensure(r.clone(), check),
                    None => runners.stop(r),
                }
            }
        }
        if planned.is_none()
            || changes.all
            || runners.running.len() as i64 != registry.metrics.checks_running.get()
        {
            info!(
                checks = runners.running.len(),
                live_nodes = changes.nodes.len(),
                "check plan updated"
            );
        }
        registry
            .metrics
            .checks_running
            .set(runners.running.len() as i64);
        planned = Some(changes.version);
    }
    let all: Vec<InstanceRef> = runners.running.keys().cloned().collect();
    for r in all {
        runners.stop(&r);
    }
    registry.metrics.checks_running.set(0);
}

/// The check runners this node has started, one task per instance it owns.
struct Runners {
    registry: Arc<Registry>,
    prober: Prober,
    running: HashMap<InstanceRef, (crate::model::Check, CancellationToken)>,
    cancel: CancellationToken,
}

impl Runners {
    /// Runs `check` for `r`, replacing a runner with another check.
    fn ensure(&mut self, r: InstanceRef, check: crate::model::Check) {
        match self.running.get(&r) {
            Some((running, _)) if *running == check => return,
            Some(_) => self.stop(&r),
            None => {}
        }
        let token = self.cancel.child_token();
        let kind = match &check.kind {
            CheckKind::Ttl { .. } => "ttl",
            CheckKind::Probe { probe } => match probe {
                Probe::Http { .. } => "http",
                Probe::Tcp { .. } => "tcp",
                Probe::Grpc { .. } => "grpc",
            },
        };
        self.registry.local_checks.start(&r, kind);
        debug!(instance = %r, kind, "running check");
        self.registry.tracker.spawn(check_loop(
            self.registry.clone(),
            r.clone(),
            check.clone(),
            self.prober.for_one_check(),
            token.clone(),
        ));
        self.running.insert(r, (check, token));
    }

    /// Stops `r`'s runner, if it has one.
    fn stop(&mut self, r: &InstanceRef) {
        if let Some((_, token)) = self.running.remove(r) {
            token.cancel();
            self.registry.local_checks.stop(r);
        }
    }
}

/// Thresholds: turns raw probe results into the status to record, if any.
#[derive(Debug, Default)]
struct Damper {
    successes: u32,
    failures: u32,
}

impl Damper {
    fn observe(&mut self, health: Health, check: &crate::model::Check) -> Option<Health> {
        match health {
            Health::Passing => {
                self.successes = self.successes.saturating_add(1);
                self.failures = 0;
                (self.successes >= check.success_before_passing.max(1)).then_some(Health::Passing)
            }
            Health::Warning => {
                self.successes = 0;
                self.failures = 0;
                Some(Health::Warning)
            }
            Health::Critical => {
                self.failures = self.failures.saturating_add(1);
                self.successes = 0;
                (self.failures >= check.failures_before_critical.max(1)).then_some(Health::Critical)
            }
        }
    }
}

async fn check_loop(
    registry: Arc<Registry>,
    r: InstanceRef,
    check: crate::model::Check,
    prober: Prober,
    cancel: CancellationToken,
) {
    // A TTL check's runner sleeps until its check could lapse, and is woken early by any
    // change to the instance or its marker: polling 100,000 TTL checks four times a second
    // took a core.
    let ttl_changes =
        matches!(check.kind, CheckKind::Ttl { .. }).then(|| registry.view.ttl_changes(&r));
    check_rounds(
        &registry,
        &r,
        &check,
        &prober,
        ttl_changes.as_ref(),
        &cancel,
    )
    .await;
    if let Some(notify) = &ttl_changes {
        registry.view.forget_ttl_changes(&r, notify);
    }
}

async fn check_rounds(
    registry: &Registry,
    r: &InstanceRef,
    check: &crate::model::Check,
    prober: &Prober,
    ttl_changes: Option<&Arc<tokio::sync::Notify>>,
    cancel: &CancellationToken,
) {
    let mut damper = Damper::default();
    loop {
        // Enabled before the view is read, so a change from here on ends the wait below.
        let changed = ttl_changes.map(|n| n.notified());
        tokio::pin!(changed);
        if let Some(changed) = changed.as_mut().as_pin_mut() {
            changed.enable();
        }
        let (target, output) = match &check.kind {
            CheckKind::Probe { probe } => {
                let (health, output) = tokio::select! {
                    () = cancel.cancelled() => return,
                    result = prober.run(probe, check.timeout.0) => result,
                };
                registry
                    .metrics
                    .check_runs
                    .with_label_values(&[health_label(health)])
                    .inc();
                registry.local_checks.record(r, health, &output);
                (damper.observe(health, check), output)
            }
            CheckKind::Ttl { ttl } => {
                let lapsed = registry.view.get(r).is_some_and(|s| {
                    registry.view.ttl_marker(r).is_none()
                        && now_ms().saturating_sub(s.instance.status_since_ms)
                            >= ttl.0.as_millis() as u64
                });
                if lapsed {
                    let output = format!(
                        "TTL expired: no report for {}",
                        humantime::format_duration(ttl.0)
                    );
                    registry.local_checks.record(r, Health::Critical, &output);
                    (Some(Health::Critical), output)
                } else {
                    (None, String::new())
                }
            }
        };
        let wait = match registry.view.get(r) {
            // Gone for now (the plan stops this loop if it stays gone); a re-registration with
            // the same check continues here.
            None => ABSENT_PAUSE,
            Some(stored) => {
                let ttl_lapsed = matches!(check.kind, CheckKind::Ttl { .. });
                let mut failed = false;
                if let Some(target) = target {
                    if target != stored.instance.status {
                        if let Err(e) = registry
                            .transition(&stored, target, output, ttl_lapsed)
                            .await
                        {
                            debug!(instance = %r, error = %e, "cannot record a health transition yet");
                            failed = true;
                        }
                    }
                }
                if let Some(after) = check.deregister_critical_after {
                    let critical_for = now_ms().saturating_sub(stored.instance.status_since_ms);
                    if stored.instance.status == Health::Critical
                        && critical_for >= after.0.as_millis() as u64
                    {
                        if let Err(e) = registry.reap(&stored).await {
                            debug!(instance = %r, error = %e, "cannot reap the critical instance yet");
                            failed = true;
                        }
                    }
                }
                match &check.kind {
                    CheckKind::Probe { .. } => check.interval.0,
                    CheckKind::Ttl { ttl } => ttl_wait(TtlState {
                        ttl: ttl.0,
                        marker: registry.view.ttl_marker(r).is_some(),
                        critical: stored.instance.status == Health::Critical,
                        for_ms: now_ms().saturating_sub(stored.instance.status_since_ms),
                        deregister_after: check.deregister_critical_after.map(|d| d.0),
                        failed,
                    }),
                }
            }
        };
        match changed.as_mut().as_pin_mut() {
            Some(changed) => tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
                () = changed => {}
            },
            None => tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            },
        }
    }
}

/// How long a check runner waits while its instance is not in the view, and before it tries
/// again a write that failed.
const ABSENT_PAUSE: Duration = Duration::from_millis(250);

/// What a TTL check's runner knows after a look at its instance.
#[derive(Debug, Clone, Copy)]
struct TtlState {
    /// The check's TTL.
    ttl: Duration,
    /// A report renewed the TTL and its marker has not expired.
    marker: bool,
    /// The instance is critical.
    critical: bool,
    /// Milliseconds since the instance's status last changed.
    for_ms: u64,
    /// The check's `deregister_critical_after`.
    deregister_after: Option<Duration>,
    /// A transition or reap this round failed.
    failed: bool,
}

/// How long a TTL check's runner may sleep before it must look again; any change to the
/// instance or its marker wakes it sooner. Without a marker the check lapses `ttl` after the
/// last status change; a critical instance is reaped `deregister_after` after it; a marker
/// only goes with a change. Otherwise it looks again after the TTL (between 1 s and 60 s), in
/// case a wake-up was missed.
fn ttl_wait(state: TtlState) -> Duration {
    if state.failed {
        return ABSENT_PAUSE;
    }
    let elapsed = Duration::from_millis(state.for_ms);
    let mut wait = state
        .ttl
        .clamp(Duration::from_secs(1), Duration::from_secs(60));
    if !state.marker {
        let left = state.ttl.saturating_sub(elapsed);
        if !left.is_zero() {
            wait = wait.min(left);
        }
    }
    if let (true, Some(after)) = (state.critical, state.deregister_after) {
        let left = after.saturating_sub(elapsed);
        if !left.is_zero() {
            wait = wait.min(left);
        }
    }
    wait.max(Duration::from_millis(10))
}

fn health_label(health: Health) -> &'static str {
    match health {
        Health::Passing => "passing",
        Health::Warning => "warning",
        Health::Critical => "critical",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_ttl_runner_sleeps_until_its_check_can_lapse_or_be_reaped() {
        let secs = Duration::from_secs;
        let state = TtlState {
            ttl: secs(30),
            marker: false,
            critical: false,
            for_ms: 12_000,
            deregister_after: None,
            failed: false,
        };
        // No marker: the check lapses 30 s after the last status change.
        assert_eq!(ttl_wait(state), secs(18));
        // A marker goes only with a change, which wakes the runner: look again after a TTL.
        assert_eq!(
            ttl_wait(TtlState {
                marker: true,
                ..state
            }),
            secs(30)
        );
        // Lapsed and recorded critical: nothing changes until a report (or the reap).
        let critical = TtlState {
            critical: true,
            for_ms: 40_000,
            ..state
        };
        assert_eq!(ttl_wait(critical), secs(30));
        let reaped = TtlState {
            deregister_after: Some(secs(60)),
            ..critical
        };
        assert_eq!(ttl_wait(reaped), secs(20));
        // The fallback stays between 1 s and 60 s; a failed write is retried soon.
        assert_eq!(
            ttl_wait(TtlState {
                ttl: secs(600),
                marker: true,
                ..state
            }),
            secs(60)
        );
        assert_eq!(
            ttl_wait(TtlState {
                ttl: Duration::from_millis(200),
                for_ms: 150,
                ..state
            }),
            Duration::from_millis(50)
        );
        assert_eq!(
            ttl_wait(TtlState {
                failed: true,
                ..state
            }),
            ABSENT_PAUSE
        );
    }

    #[test]
    fn owners_spread_and_move_only_the_dead_nodes_checks() {
        let refs: Vec<InstanceRef> = (0..300)
            .map(|i| InstanceRef::new("public", "web", &format!("i{i}")))
            .collect();
        let three = [1, 2, 3];
        let mut per_node = HashMap::new();
        for r in &refs {
            *per_node.entry(owner(r, &three).unwrap()).or_insert(0) += 1;
        }
        assert!(per_node.values().all(|n| *n > 50), "{per_node:?}");
        for r in &refs {
            let before = owner(r, &three).unwrap();
            let after = owner(r, &[1, 3]).unwrap();
            if before != 2 {
                assert_eq!(before, after, "a survivor's check moved");
            }
        }
        assert_eq!(owner(&refs[0], &[]), None);
    }

    #[test]
    fn damper_applies_thresholds() {
        let check: crate::model::Check = serde_json::from_value(serde_json::json!({
            "probe": {"kind": "tcp", "addr": "127.0.0.1:1"},
            "success_before_passing": 2, "failures_before_critical": 3
        }))
        .unwrap();
        let mut d = Damper::default();
        assert_eq!(d.observe(Health::Passing, &check), None);
        assert_eq!(d.observe(Health::Passing, &check), Some(Health::Passing));
        assert_eq!(d.observe(Health::Critical, &check), None);
        assert_eq!(d.observe(Health::Critical, &check), None);
        assert_eq!(d.observe(Health::Critical, &check), Some(Health::Critical));
        assert_eq!(d.observe(Health::Warning, &check), Some(Health::Warning));
    }
}
