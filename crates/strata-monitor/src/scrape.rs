//! Scraping without configuration: which targets exist, which monitor node scrapes each,
//! and the loops that scrape.
//!
//! - Targets: every cluster member's `/metrics` (job `strata`), every registry instance
//!   whose metadata names `metrics_port` (and optionally `metrics_path`; job = its service),
//!   and the static targets of `[monitor]`.
//! - Ownership: each monitor node probes the others ([`Membership`]); every target belongs
//!   to one live monitor node by rendezvous hashing, so it has exactly one owner in every
//!   agreeing view and moves when its owner stops answering (within [`NODE_TTL`]).
//! - Timing: a target is scraped at fixed slots, `k * interval + phase`, its phase derived
//!   from its URL. Every node computes the same slots, so a target that moves keeps its
//!   rhythm, and a slot is scraped by the node that owns the target at that moment only.
//! - Each scrape writes the target's samples with its `job` and `instance` labels (clashing
//!   exposed labels become `exported_NAME`), then `up`, `scrape_duration_seconds`,
//!   `scrape_samples_scraped`, `scrape_samples_post_metric_relabeling` and
//!   `scrape_series_added`; series that vanished since the last scrape, and every series of a
//!   failed scrape or a dropped target, get Prometheus's staleness marker.

use crate::exposition::{self, Metadata};
use crate::ingest::Ingest;
use crate::model::{Labels, METRIC_NAME, STALE_NAN};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use strata_api::registry::{instances_prefix, Instance};
use strata_store::KvApi;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const PLAN_TICK: Duration = Duration::from_secs(1);
/// Largest scrape body read.
const MAX_BODY: usize = 64 << 20;

/// A static target from `[monitor]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StaticTarget {
    /// `HOST:PORT` of each target.
    pub targets: Vec<String>,
    /// The job label (default `static`).
    #[serde(default = "default_job")]
    pub job: String,
    /// The path scraped (default `/metrics`).
    #[serde(default = "default_path")]
    pub metrics_path: String,
    /// Extra labels for their series.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn default_job() -> String {
    "static".into()
}

fn default_path() -> String {
    "/metrics".into()
}

/// Something to scrape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The URL scraped; also the target's identity.
    pub url: String,
    /// Labels every series of the target gets (`job`, `instance`, ...).
    pub labels: Labels,
    /// Labels before relabelling, as `/api/v1/targets` shows them.
    pub discovered: BTreeMap<String, String>,
    /// `strata`, `registry` or `static`.
    pub source: &'static str,
}

/// A target as this node last saw it.
#[derive(Debug, Clone, Serialize)]
pub struct TargetStatus {
    /// The URL.
    pub url: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its discovered labels.
    pub discovered: BTreeMap<String, String>,
    /// The monitor node that scrapes it.
    pub owner: u64,
    /// `up`, `down` or `unknown` (never scraped by this node).
    pub health: &'static str,
    /// Start of the last scrape here (ms), 0 if none.
    pub last_scrape_ms: i64,
    /// Its duration in seconds.
    pub last_duration: f64,
    /// Its error, empty when it worked.
    pub last_error: String,
    /// Samples it returned.
    pub samples: usize,
    /// Scrapes run by this node.
    pub scrapes: u64,
}

/// What the scrape loops share with the API.
#[derive(Default)]
pub struct Targets {
    inner: Mutex<TargetsInner>,
}

#[derive(Default)]
struct TargetsInner {
    all: Vec<Target>,
    owners: HashMap<String, u64>,
    status: HashMap<String, TargetStatus>,
    metadata: BTreeMap<String, Metadata>,
}

impl Targets {
    /// Every known target, with what this node knows of it.
    pub fn list(&self) -> Vec<TargetStatus> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .all
            .iter()
            .map(|t| {
                inner
                    .status
                    .get(&t.url)
                    .cloned()
                    .unwrap_or_else(|| TargetStatus {
                        url: t.url.clone(),
                        labels: t
                            .labels
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                        discovered: t.discovered.clone(),
                        owner: inner.owners.get(&t.url).copied().unwrap_or(0),
                        health: "unknown",
                        last_scrape_ms: 0,
                        last_duration: 0.0,
                        last_error: String::new(),
                        samples: 0,
                        scrapes: 0,
                    })
            })
            .map(|mut s| {
                s.owner = inner.owners.get(&s.url).copied().unwrap_or(s.owner);
                s
            })
            .collect()
    }

    /// Metric metadata seen in scrapes (and remote writes).
    pub fn metadata(&self) -> BTreeMap<String, Metadata> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .metadata
            .clone()
    }

    /// Records metadata.
    pub fn add_metadata(&self, entries: impl IntoIterator<Item = (String, Metadata)>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for (name, m) in entries {
            inner.metadata.insert(name, m);
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// FNV-1a, stable across processes.
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

/// The monitor node that scrapes `url` (highest random weight).
pub fn owner(url: &str, nodes: &[u64]) -> Option<u64> {
    nodes
        .iter()
        .copied()
        .max_by_key(|node| fnv1a(&[url.as_bytes(), &node.to_be_bytes()]))
}

/// The next slot of a target after `now_ms`.
fn next_slot(url: &str, interval_ms: i64, now_ms: i64) -> i64 {
    let phase = (fnv1a(&[url.as_bytes()]) % interval_ms.max(1) as u64) as i64;
    ((now_ms - phase).div_euclid(interval_ms) + 1) * interval_ms + phase
}

/// The registry instances to scrape (those whose metadata names `metrics_port`), kept current
/// by following the registry's instance keys (`strata_store::follow`): one range when it
/// starts, then only the changes. Planning reads it every second; a range and a JSON decode of
/// every instance each time cost each node a large share of a core with 100,000 instances
/// registered, and slowed registrations themselves.
#[derive(Default)]
pub struct RegistryTargets {
    targets: Mutex<BTreeMap<Vec<u8>, Target>>,
    /// Bumped whenever `targets` changes, so the planner re-plans only then (most registry
    /// changes are about instances that are not scrape targets).
    generation: AtomicU64,
}

impl RegistryTargets {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<u8>, Target>> {
        self.targets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The targets now, in key order.
    pub fn targets(&self) -> Vec<Target> {
        self.lock().values().cloned().collect()
    }

    /// Changes whenever the targets do.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Puts or removes the target stored under `key`; true when that changed the targets.
    fn update(targets: &mut BTreeMap<Vec<u8>, Target>, key: &[u8], value: &[u8]) -> bool {
        match registry_target(value) {
            Some(target) => {
                targets.get(key) != Some(&target) && {
                    targets.insert(key.to_vec(), target);
                    true
                }
            }
            None => targets.remove(key).is_some(),
        }
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }
}

impl strata_store::Follower for RegistryTargets {
    fn load(&self, kvs: &[strata_proto::kv::KeyValue], _revision: i64) {
        let mut targets = self.lock();
        targets.clear();
        for kv in kvs {
            Self::update(&mut targets, &kv.key, &kv.value);
        }
        self.changed();
    }

    fn apply(&self, events: &[strata_proto::kv::Event]) {
        let mut targets = self.lock();
        let mut changed = false;
        for event in events {
            changed |= match event.kind {
                strata_proto::kv::EventType::Put => {
                    Self::update(&mut targets, &event.kv.key, &event.kv.value)
                }
                strata_proto::kv::EventType::Delete => targets.remove(&event.kv.key).is_some(),
            };
        }
        if changed {
            self.changed();
        }
    }
}

/// The scrape target a stored registry instance names, if any: one whose metadata names
/// `metrics_port` (and optionally `metrics_path`), and that is enabled.
fn registry_target(value: &[u8]) -> Option<Target> {
    let instance = serde_json::from_slice::<Instance>(value).ok()?;
    let port = instance
        .meta
        .get("metrics_port")
        .and_then(|p| p.parse::<u16>().ok())?;
    if !instance.enabled {
        return None;
    }
    let path = instance
        .meta
        .get("metrics_path")
        .filter(|p| p.starts_with('/'))
        .cloned()
        .unwrap_or_else(default_path);
    let host = if instance.address.contains(':') {
        format!("[{}]", instance.address)
    } else {
        instance.address.clone()
    };
    let address = format!("{host}:{port}");
    let discovered = BTreeMap::from([
        ("__address__".to_string(), address.clone()),
        ("__metrics_path__".to_string(), path.clone()),
        (
            "__meta_strata_namespace".to_string(),
            instance.namespace.clone(),
        ),
        (
            "__meta_strata_service".to_string(),
            instance.service.clone(),
        ),
        ("__meta_strata_instance_id".to_string(), instance.id.clone()),
    ]);
    Some(Target {
        url: format!("http://{address}{path}"),
        labels: Labels::from_pairs(&[
            ("job", &instance.service),
            ("instance", &address),
            ("namespace", &instance.namespace),
        ]),
        discovered,
        source: "registry",
    })
}

/// Every target the cluster has now: its members, the scrapable registry instances (kept by
/// `registry`, which follows the registry's keys) and the static targets.
pub fn discover(
    kv: &dyn KvApi,
    registry: &RegistryTargets,
    statics: &[StaticTarget],
) -> Vec<Target> {
    let mut out = Vec::new();
    for member in kv.status().members {
        if member.api_addr.is_empty() {
            continue;
        }
        let instance = member.api_addr.clone();
        let mut discovered = BTreeMap::from([
            ("__address__".to_string(), instance.clone()),
            ("__meta_strata_node".to_string(), member.id.to_string()),
        ]);
        discovered.insert("job".into(), "strata".into());
        out.push(Target {
            url: format!("http://{instance}/metrics"),
            labels: Labels::from_pairs(&[
                ("job", "strata"),
                ("instance", &instance),
                ("strata_node", &member.id.to_string()),
            ]),
            discovered,
            source: "strata",
        });
    }
    out.extend(registry.targets());
    for group in statics {
        for address in &group.targets {
            let mut pairs: Vec<(String, String)> = group
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            pairs.push(("job".into(), group.job.clone()));
            pairs.push(("instance".into(), address.clone()));
            out.push(Target {
                url: format!("http://{address}{}", group.metrics_path),
                labels: Labels::new(pairs),
                discovered: BTreeMap::from([("__address__".to_string(), address.clone())]),
                source: "static",
            });
        }
    }
    out.sort_by(|a, b| a.url.cmp(&b.url));
    out.dedup_by(|a, b| a.url == b.url);
    out
}

/// Which monitor nodes are alive, as this node sees them. Every second each cluster member's
/// `/v1/monitor/ping` is probed: an answer means the member runs the monitor; 404 means it
/// does not; no answer means it is down. A member is
/// live while its last good probe is under [`NODE_TTL`] old. Nothing is written to the KV
/// store, so the monitor never moves the revisions etcd clients see.
pub struct Membership {
    me: u64,
    started: Instant,
    /// Per peer: when it was first seen alive (since it was last down), and last seen.
    seen: Mutex<HashMap<u64, (Instant, Instant)>>,
}

/// How long a member stays live after its last good probe: how long a dead node's targets
/// stay unscraped, at most.
pub const NODE_TTL: Duration = Duration::from_secs(3);
/// A peer counts once it has answered for this long, so that every node sees it before it
/// takes targets over.
const PEER_WARMUP: Duration = Duration::from_secs(2);
/// A node counts itself only after this long: longer than it takes the others to count it
/// (a probe round plus [`PEER_WARMUP`]), so the old owner of a target has let it go before
/// the new one scrapes it, and no slot is scraped twice when a node joins.
const SELF_WARMUP: Duration = Duration::from_secs(4);

impl Membership {
    /// This node alone, counted after [`SELF_WARMUP`].
    pub fn new(me: u64) -> Membership {
        Membership {
            me,
            started: Instant::now(),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The live monitor nodes, sorted; empty while this node warms up.
    pub fn live(&self) -> Vec<u64> {
        if self.started.elapsed() < SELF_WARMUP {
            return Vec::new();
        }
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut nodes: Vec<u64> = seen
            .iter()
            .filter(|(_, (first, last))| {
                last.elapsed() < NODE_TTL && first.elapsed() >= PEER_WARMUP
            })
            .map(|(id, _)| *id)
            .collect();
        nodes.push(self.me);
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    /// Probes every member every second until `cancel`.
    pub async fn run(
        self: Arc<Self>,
        kv: Arc<dyn KvApi>,
        http: reqwest::Client,
        scheme: &'static str,
        cancel: CancellationToken,
    ) {
        loop {
            let members = kv.status().members;
            let probes = members
                .iter()
                .filter(|m| m.id != self.me && !m.api_addr.is_empty())
                .map(|m| {
                    let url = format!("{scheme}://{}/v1/monitor/ping", m.api_addr);
                    let http = http.clone();
                    async move {
                        let answer = http.get(&url).timeout(Duration::from_secs(1)).send().await;
                        let runs_monitor = match answer {
                            Ok(r) => r.status() != reqwest::StatusCode::NOT_FOUND,
                            Err(_) => false,
                        };
                        (m.id, runs_monitor)
                    }
                });
            let results = futures::future::join_all(probes).await;
            {
                let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                for (id, live) in results {
                    if !live {
                        continue;
                    }
                    let entry = seen.entry(id).or_insert((now, now));
                    if entry.1.elapsed() >= NODE_TTL {
                        // Down since it was last seen: it warms up again.
                        entry.0 = now;
                    }
                    entry.1 = now;
                }
                seen.retain(|id, _| members.iter().any(|m| m.id == *id));
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

/// Scrape settings.
#[derive(Debug, Clone)]
pub struct ScrapeSettings {
    /// Time between scrapes of a target.
    pub interval: Duration,
    /// Longest a scrape may take.
    pub timeout: Duration,
    /// Static targets.
    pub statics: Vec<StaticTarget>,
}

/// Plans and runs this node's scrapes until `cancel`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    kv: Arc<dyn KvApi>,
    me: u64,
    membership: Arc<Membership>,
    settings: ScrapeSettings,
    ingest: Arc<Ingest>,
    targets: Arc<Targets>,
    http: reqwest::Client,
    scheme: &'static str,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let mut running: HashMap<String, (Target, CancellationToken)> = HashMap::new();
    let mut logged_nodes: Vec<u64> = Vec::new();
    let registry = Arc::new(RegistryTargets::default());
    {
        let (kv, registry, stop) = (kv.clone(), registry.clone(), cancel.child_token());
        tracker.spawn(async move {
            let prefix = instances_prefix(None, None);
            strata_store::follow(kv, &prefix, registry, stop).await;
        });
    }
    // What the last plan was made from; a pass with the same inputs plans nothing.
    let mut planned_from = None;
    loop {
        let nodes = membership.live();
        if nodes != logged_nodes {
            tracing::info!(?nodes, "monitor nodes changed; re-planning scrapes");
            logged_nodes = nodes.clone();
        }
        let members = kv.status().members;
        let peers: BTreeMap<u64, String> = members
            .iter()
            .filter(|m| m.id != me && nodes.contains(&m.id))
            .map(|m| (m.id, m.raft_addr.clone()))
            .collect();
        ingest.set_peers(&peers);
        let inputs = (
            registry.generation(),
            nodes.clone(),
            members
                .iter()
                .map(|m| (m.id, m.api_addr.clone()))
                .collect::<Vec<_>>(),
        );
        if planned_from.as_ref() == Some(&inputs) {
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(PLAN_TICK) => {}
            }
            continue;
        }
        planned_from = Some(inputs);
        let mut discovered = discover(&*kv, &registry, &settings.statics);
        for t in &mut discovered {
            if t.source == "strata" {
                t.url = t.url.replacen("http://", &format!("{scheme}://"), 1);
            }
        }
        let owners: HashMap<String, u64> = discovered
            .iter()
            .filter_map(|t| Some((t.url.clone(), owner(&t.url, &nodes)?)))
            .collect();
        let mine: HashMap<String, Target> = discovered
            .iter()
            .filter(|t| owners.get(&t.url) == Some(&me))
            .map(|t| (t.url.clone(), t.clone()))
            .collect();
        running.retain(|url, (target, stop)| {
            let keep = mine.get(url) == Some(target);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for (url, target) in mine {
            if running.contains_key(&url) {
                continue;
            }
            let stop = cancel.child_token();
            tracker.spawn(scrape_loop(
                target.clone(),
                me,
                settings.clone(),
                ingest.clone(),
                targets.clone(),
                http.clone(),
                stop.clone(),
            ));
            running.insert(url, (target, stop));
        }
        {
            let mut inner = targets.inner.lock().unwrap_or_else(|e| e.into_inner());
            inner.all = discovered;
            inner.owners = owners;
            let known: HashSet<&String> = inner.all.iter().map(|t| &t.url).collect();
            let gone: Vec<String> = inner
                .status
                .keys()
                .filter(|u| !known.contains(u))
                .cloned()
                .collect();
            for url in gone {
                inner.status.remove(&url);
            }
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(PLAN_TICK) => {}
        }
    }
    for (_, (_, stop)) in running {
        stop.cancel();
    }
}

async fn scrape_loop(
    target: Target,
    me: u64,
    settings: ScrapeSettings,
    ingest: Arc<Ingest>,
    targets: Arc<Targets>,
    http: reqwest::Client,
    stop: CancellationToken,
) {
    let interval_ms = settings.interval.as_millis().max(1) as i64;
    let mut previous: HashSet<Labels> = HashSet::new();
    let mut scrapes = 0u64;
    tracing::debug!(url = %target.url, "scraping a target");
    loop {
        let slot = next_slot(&target.url, interval_ms, now_ms());
        let wait = Duration::from_millis((slot - now_ms()).max(0) as u64);
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
        let started = Instant::now();
        let result = fetch(&http, &target.url, settings.timeout.min(settings.interval)).await;
        let duration = started.elapsed().as_secs_f64();
        let mut batch = Vec::new();
        let mut seen = HashSet::new();
        let (up, error, count) = match result {
            Ok(body) => match exposition::parse(&body) {
                Ok(parsed) => {
                    let count = parsed.samples.len();
                    for s in parsed.samples {
                        let labels = target_labels(&target.labels, s.name, s.labels);
                        let t = s.timestamp.unwrap_or(slot);
                        seen.insert(labels.clone());
                        batch.push((labels, t, s.value));
                    }
                    targets.add_metadata(parsed.metadata);
                    (1.0, String::new(), count)
                }
                Err(e) => (0.0, format!("parse: {e}"), 0),
            },
            Err(e) => (0.0, e, 0),
        };
        let added = seen.difference(&previous).count();
        for labels in previous.difference(&seen) {
            batch.push((labels.clone(), slot, f64::from_bits(STALE_NAN)));
        }
        for (name, value) in [
            ("up", up),
            ("scrape_duration_seconds", duration),
            ("scrape_samples_scraped", count as f64),
            ("scrape_samples_post_metric_relabeling", count as f64),
            ("scrape_series_added", added as f64),
        ] {
            batch.push((report_labels(&target.labels, name), slot, value));
        }
        previous = seen;
        scrapes += 1;
        if let Err(e) = ingest.write("scrape", &batch) {
            tracing::error!(url = %target.url, error = %e, "cannot store a scrape");
        }
        let mut inner = targets.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.status.insert(
            target.url.clone(),
            TargetStatus {
                url: target.url.clone(),
                labels: target
                    .labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                discovered: target.discovered.clone(),
                owner: me,
                health: if up == 1.0 { "up" } else { "down" },
                last_scrape_ms: slot,
                last_duration: duration,
                last_error: error,
                samples: count,
                scrapes,
            },
        );
    }
    // The target left this node (or the cluster): end its series so queries stop seeing them.
    let t = now_ms();
    let mut batch: Vec<_> = previous
        .into_iter()
        .map(|l| (l, t, f64::from_bits(STALE_NAN)))
        .collect();
    if scrapes > 0 {
        for name in [
            "up",
            "scrape_duration_seconds",
            "scrape_samples_scraped",
            "scrape_samples_post_metric_relabeling",
            "scrape_series_added",
        ] {
            batch.push((
                report_labels(&target.labels, name),
                t,
                f64::from_bits(STALE_NAN),
            ));
        }
    }
    let _ = ingest.write("scrape", &batch);
}

fn report_labels(target: &Labels, name: &str) -> Labels {
    let mut pairs = target.to_vec();
    pairs.push((METRIC_NAME.to_string(), name.to_string()));
    Labels::new(pairs)
}

/// A scraped series' labels: its own, with the target's added (a clash keeps the target's
/// and renames the exposed one `exported_NAME`).
fn target_labels(target: &Labels, name: String, exposed: Vec<(String, String)>) -> Labels {
    let mut pairs = target.to_vec();
    for (k, v) in exposed {
        if target.get(&k).is_some() {
            pairs.push((format!("exported_{k}"), v));
        } else {
            pairs.push((k, v));
        }
    }
    pairs.push((METRIC_NAME.to_string(), name));
    Labels::new(pairs)
}

async fn fetch(http: &reqwest::Client, url: &str, timeout: Duration) -> Result<String, String> {
    let response = http
        .get(url)
        .header("accept", "text/plain;version=0.0.4;q=1,*/*;q=0.1")
        .header(
            "x-prometheus-scrape-timeout-seconds",
            format!("{}", timeout.as_secs_f64()),
        )
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    if !response.status().is_success() {
        return Err(format!("server returned HTTP status {}", response.status()));
    }
    if response
        .content_length()
        .is_some_and(|n| n as usize > MAX_BODY)
    {
        return Err(format!("body over {MAX_BODY} bytes"));
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|e| e.without_url().to_string())?;
    if bytes.len() > MAX_BODY {
        return Err(format!("body over {MAX_BODY} bytes"));
    }
    String::from_utf8(bytes.to_vec()).map_err(|_| "body is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_targets_follow_puts_and_deletes_of_scrapable_instances() {
        use strata_store::Follower;
        let instance = |id: &str, meta: serde_json::Value, enabled: bool| {
            let kv = strata_proto::kv::KeyValue {
                key: format!("/instances/{id}").into_bytes(),
                value: serde_json::to_vec(&serde_json::json!({
                    "namespace": "public", "service": "shop", "id": id,
                    "address": "10.0.0.1", "port": 80, "meta": meta, "weight": 1.0,
                    "enabled": enabled, "ephemeral": false, "status": "passing"
                }))
                .unwrap(),
                ..Default::default()
            };
            kv
        };
        let event = |kind, kv| strata_proto::kv::Event {
            kind,
            kv,
            prev_kv: None,
        };
        let urls = |r: &RegistryTargets| -> Vec<String> {
            r.targets().into_iter().map(|t| t.url).collect()
        };
        let registry = RegistryTargets::default();
        registry.load(
            &[
                instance("a", serde_json::json!({"metrics_port": "9100"}), true),
                instance("b", serde_json::json!({}), true),
                instance(
                    "c",
                    serde_json::json!({"metrics_port": "9100", "metrics_path": "/m"}),
                    true,
                ),
            ],
            7,
        );
        assert_eq!(
            urls(&registry),
            ["http://10.0.0.1:9100/metrics", "http://10.0.0.1:9100/m"]
        );
        use strata_proto::kv::EventType::{Delete, Put};
        registry.apply(&[
            // Disabled: no longer scraped; b gains a port; c goes.
            event(
                Put,
                instance("a", serde_json::json!({"metrics_port": "9100"}), false),
            ),
            event(
                Put,
                instance("b", serde_json::json!({"metrics_port": "9200"}), true),
            ),
            event(Delete, instance("c", serde_json::json!({}), true)),
        ]);
        assert_eq!(urls(&registry), ["http://10.0.0.1:9200/metrics"]);
        // Changes to instances that are not (and were not) targets, or that leave a target as
        // it was, do not ask the planner for a new plan.
        let generation = registry.generation();
        registry.apply(&[
            event(Put, instance("d", serde_json::json!({}), true)),
            event(Delete, instance("e", serde_json::json!({}), true)),
            event(
                Put,
                instance("b", serde_json::json!({"metrics_port": "9200"}), true),
            ),
        ]);
        assert_eq!(registry.generation(), generation);
        registry.apply(&[event(
            Put,
            instance("d", serde_json::json!({"metrics_port": "1"}), true),
        )]);
        assert_ne!(registry.generation(), generation);
        // A reload replaces everything.
        registry.load(&[], 9);
        assert!(registry.targets().is_empty());
    }

    #[test]
    fn slots_are_the_same_on_every_node_and_one_interval_apart() {
        let a = next_slot("http://x/metrics", 15_000, 1_000_000);
        let b = next_slot("http://x/metrics", 15_000, a);
        assert!(a > 1_000_000 && a <= 1_015_000);
        assert_eq!(b - a, 15_000);
        assert_eq!(next_slot("http://x/metrics", 15_000, a - 1), a);
    }

    #[test]
    fn a_dead_owner_moves_only_its_own_targets() {
        let urls: Vec<String> = (0..200).map(|i| format!("http://h{i}/metrics")).collect();
        let before: Vec<u64> = urls.iter().map(|u| owner(u, &[1, 2, 3]).unwrap()).collect();
        let after: Vec<u64> = urls.iter().map(|u| owner(u, &[1, 3]).unwrap()).collect();
        for (b, a) in before.iter().zip(&after) {
            if *b != 2 {
                assert_eq!(a, b);
            }
        }
        assert!(before.iter().filter(|o| **o == 2).count() > 30);
    }

    #[test]
    fn exposed_labels_that_clash_are_renamed() {
        let target = Labels::from_pairs(&[("job", "j"), ("instance", "i:1")]);
        let l = target_labels(
            &target,
            "m".into(),
            vec![("job".into(), "x".into()), ("a".into(), "b".into())],
        );
        assert_eq!(
            l.to_string(),
            r#"m{a="b", exported_job="x", instance="i:1", job="j"}"#
        );
    }
}
