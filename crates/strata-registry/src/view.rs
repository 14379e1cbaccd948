//! Each node's in-memory view of the registry, kept current by one KV watch on [`ROOT`].
//!
//! Discovery, DNS, blocking queries, streamed watches and the check runners all read this
//! view, so a query never touches the log and a change fans out to every subscriber from one
//! feed. The view trails the node's store by one watch hop; a registration waits for its own
//! revision to reach the local view before answering, which gives read-your-writes per node.

use crate::model::{CheckKind, Instance, InstanceRef, RegistryKey, ServiceSettings, ROOT};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;
use strata_proto::kv::{Event, EventType, KeyValue};
use strata_store::{AppliedRevision, KvApi};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// An instance with the KV metadata the registry needs.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The instance.
    pub instance: Arc<Instance>,
    /// Revision of its last write (compare-and-set token).
    pub mod_revision: i64,
    /// Lease it is attached to (ephemeral instances), 0 for none.
    pub lease: i64,
}

/// One service in the view.
#[derive(Debug, Default)]
pub struct ServiceEntry {
    /// Instances by id. Changed only through [`ServiceEntry::insert`] and
    /// [`ServiceEntry::remove`], which keep the summary below.
    pub instances: BTreeMap<String, Stored>,
    /// Revision of the last change to the service (the blocking-query index).
    pub index: i64,
    /// Settings.
    pub settings: ServiceSettings,
    /// How many instances carry each tag, and how many are healthy: kept as instances come
    /// and go, so a listing of services (Consul's catalog, woken by every registry write)
    /// costs the services, not every instance.
    tags: BTreeMap<String, usize>,
    passing: usize,
}

impl ServiceEntry {
    fn insert(&mut self, id: String, stored: Stored) -> Option<Stored> {
        self.count(&stored, true);
        let previous = self.instances.insert(id, stored);
        if let Some(previous) = &previous {
            self.count(previous, false);
        }
        previous
    }

    fn remove(&mut self, id: &str) -> Option<Stored> {
        let removed = self.instances.remove(id)?;
        self.count(&removed, false);
        Some(removed)
    }

    fn count(&mut self, stored: &Stored, add: bool) {
        if stored.instance.healthy() {
            self.passing = if add {
                self.passing + 1
            } else {
                self.passing.saturating_sub(1)
            };
        }
        let tags: BTreeSet<&String> = stored.instance.tags.iter().collect();
        for tag in tags {
            if add {
                *self.tags.entry(tag.clone()).or_default() += 1;
            } else if let Some(n) = self.tags.get_mut(tag) {
                *n -= 1;
                if *n == 0 {
                    self.tags.remove(tag);
                }
            }
        }
    }
}

/// A change, as subscribers see it.
#[derive(Debug, Clone)]
pub enum Change {
    /// An instance was registered or changed.
    Put {
        /// Revision of the change.
        revision: i64,
        /// The instance after the change.
        instance: Arc<Instance>,
    },
    /// An instance was removed (deregistered, expired, or reaped).
    Delete {
        /// Revision of the change.
        revision: i64,
        /// Which instance.
        instance: InstanceRef,
    },
    /// The view was reloaded; subscribers should re-read the services they follow.
    Reset {
        /// Revision of the reload.
        revision: i64,
    },
}

/// A change as broadcast to subscribers, with room for one shared encoding of it, so a
/// thousand subscribers of a service serialize each change once, not a thousand times.
#[derive(Debug)]
pub struct Notice {
    /// The change.
    pub change: Change,
    /// The change encoded for the wire, filled by the first subscriber that sends it.
    pub encoded: std::sync::OnceLock<String>,
}

impl Notice {
    fn new(change: Change) -> Arc<Notice> {
        Arc::new(Notice {
            change,
            encoded: std::sync::OnceLock::new(),
        })
    }
}

impl Change {
    /// The namespace and service the change is about; `None` for a reset.
    pub fn service(&self) -> Option<(&str, &str)> {
        match self {
            Change::Put { instance, .. } => Some((&instance.namespace, &instance.service)),
            Change::Delete { instance, .. } => Some((&instance.namespace, &instance.service)),
            Change::Reset { .. } => None,
        }
    }
}

#[derive(Default)]
struct State {
    revision: i64,
    services: BTreeMap<(String, String), ServiceEntry>,
    ttl_markers: HashMap<InstanceRef, i64>,
    nodes: BTreeSet<u64>,
    /// Instances with a health check; what check runners iterate.
    checked: BTreeSet<InstanceRef>,
    /// Bumped when `checked` or `nodes` changes, so runners re-plan only then.
    plan_version: u64,
    /// The instances whose check changed (added, removed or altered), each with the plan
    /// version it bumped to, oldest first, so the runner re-plans only them.
    plan_log: std::collections::VecDeque<(u64, InstanceRef)>,
    /// A runner whose plan is older than this must plan every check again: the live nodes
    /// changed, the view reloaded, or `plan_log` lost entries it needs.
    plan_full_at: u64,
    instances: usize,
    /// Instances whose TTL marker (or the instance itself) changed in the batch being
    /// applied; their TTL check runners are woken once the batch is in.
    ttl_touched: Vec<InstanceRef>,
}

/// Plan changes kept for the check runner; beyond this it plans every check again.
const PLAN_LOG_MAX: usize = 16 * 1024;

impl State {
    fn check_changed(&mut self, r: &InstanceRef) {
        self.plan_version += 1;
        self.plan_log.push_back((self.plan_version, r.clone()));
        if self.plan_log.len() > PLAN_LOG_MAX {
            if let Some((lost, _)) = self.plan_log.pop_front() {
                self.plan_full_at = self.plan_full_at.max(lost);
            }
        }
    }

    fn nodes_changed(&mut self) {
        self.plan_version += 1;
        self.plan_full_at = self.plan_version;
        self.plan_log.clear();
    }
}

/// What the check runner must plan again (see [`View::plan_changes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanChanges {
    /// The plan version these changes bring the runner to.
    pub version: u64,
    /// Nodes whose check runners are alive.
    pub nodes: Vec<u64>,
    /// True: `instances` is every checked instance and the plan starts afresh. False: only
    /// these instances' checks changed (each at most once).
    pub all: bool,
    /// The instances to plan.
    pub instances: Vec<InstanceRef>,
}

/// Summary of one service for listings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServiceSummary {
    /// Namespace.
    pub namespace: String,
    /// Service name.
    pub name: String,
    /// Registered instances.
    pub instances: usize,
    /// Healthy (enabled and passing) instances.
    pub passing: usize,
    /// Every tag of any instance, sorted.
    pub tags: Vec<String>,
}

/// The registry as this node sees it.
pub struct View {
    state: RwLock<State>,
    changes: broadcast::Sender<Arc<Notice>>,
    applied: AppliedRevision,
    ready: watch::Sender<bool>,
    /// Per-service wake-ups for blocking queries, so a change wakes only its own waiters.
    waiters: std::sync::Mutex<HashMap<(String, String), watch::Sender<u64>>>,
    /// Per-instance wake-ups for TTL check runners: a marker put or deleted, or the instance
    /// changed, so a runner sleeps until then (or its deadline) instead of polling.
    ttl_waiters: std::sync::Mutex<HashMap<InstanceRef, Arc<tokio::sync::Notify>>>,
}

impl Default for View {
    fn default() -> Self {
        View::new()
    }
}

impl View {
    /// An empty view, not yet loaded.
    pub fn new() -> Self {
        View {
            state: RwLock::new(State::default()),
            changes: broadcast::channel(8192).0,
            applied: AppliedRevision::new(),
            ready: watch::channel(false).0,
            waiters: std::sync::Mutex::default(),
            ttl_waiters: std::sync::Mutex::default(),
        }
    }

    /// Notified when instance `r`'s TTL marker is put or deleted, the instance changes, or
    /// the view reloads. Enable a `notified()` of it before reading the view, so a change
    /// in between is not missed.
    pub fn ttl_changes(&self, r: &InstanceRef) -> Arc<tokio::sync::Notify> {
        self.ttl_waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(r.clone())
            .or_default()
            .clone()
    }

    /// Forgets `notify` as `r`'s wake-up (its runner stopped), unless another took its place.
    pub fn forget_ttl_changes(&self, r: &InstanceRef, notify: &Arc<tokio::sync::Notify>) {
        let mut waiters = self.ttl_waiters.lock().unwrap_or_else(|e| e.into_inner());
        if waiters.get(r).is_some_and(|n| Arc::ptr_eq(n, notify)) {
            waiters.remove(r);
        }
    }

    fn wake_ttl(&self, touched: &[InstanceRef]) {
        let waiters = self.ttl_waiters.lock().unwrap_or_else(|e| e.into_inner());
        if waiters.is_empty() {
            return;
        }
        for r in touched {
            if let Some(notify) = waiters.get(r) {
                notify.notify_waiters();
            }
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribes to changes. Subscribe before reading, so nothing falls between.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Notice>> {
        self.changes.subscribe()
    }

    /// Number of change subscribers.
    pub fn subscribers(&self) -> usize {
        self.changes.receiver_count()
    }

    /// The last revision applied.
    pub fn revision(&self) -> i64 {
        self.read().revision
    }

    /// Waits until the view has applied `revision` (or `timeout` passes); true if it has.
    pub async fn wait_for(&self, revision: i64, timeout: Duration) -> bool {
        self.applied.wait_for(revision, timeout).await
    }

    /// Waits until the first load finished (or `timeout` passes); true if it has.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut rx = self.ready.subscribe();
        let ready = tokio::time::timeout(timeout, rx.wait_for(|r| *r)).await;
        matches!(ready, Ok(Ok(_)))
    }

    /// Waits until the service's index exceeds `index`, or `wait` passes; returns the index.
    pub async fn wait_for_change(
        &self,
        ns: &str,
        service: &str,
        index: i64,
        wait: Duration,
    ) -> i64 {
        let key = (ns.to_string(), service.to_string());
        let mut rx = {
            let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
            // Forget services nobody waits on any more, so the map stays small.
            waiters.retain(|_, tx| tx.receiver_count() > 0);
            waiters
                .entry(key)
                .or_insert_with(|| watch::channel(0).0)
                .subscribe()
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            rx.borrow_and_update();
            let now = self.service_index(ns, service);
            if now > index {
                return now;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return now;
            }
        }
    }

    /// Wakes the blocking queries on the services `changed` touched (all of them on a reload).
    fn wake(&self, changed: Option<&BTreeSet<(String, String)>>) {
        let waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        for (key, tx) in waiters.iter() {
            if changed.is_none_or(|c| c.contains(key)) {
                tx.send_modify(|n| *n += 1);
            }
        }
    }

    /// The blocking-query index of a service: the revision of its last change, or of the
    /// view's last load when it never changed since.
    pub fn service_index(&self, ns: &str, service: &str) -> i64 {
        let state = self.read();
        state
            .services
            .get(&(ns.to_string(), service.to_string()))
            .map(|s| s.index)
            .unwrap_or(0)
    }

    /// The index of a namespace's catalog: the view's revision.
    pub fn catalog_index(&self) -> i64 {
        self.revision()
    }

    /// Instances of a service with its index and settings; `None` when never registered.
    pub fn service(&self, ns: &str, service: &str) -> Option<(Vec<Stored>, i64, ServiceSettings)> {
        let state = self.read();
        let entry = state.services.get(&(ns.to_string(), service.to_string()))?;
        Some((
            entry.instances.values().cloned().collect(),
            entry.index,
            entry.settings.clone(),
        ))
    }

    /// Instances of a service and its index, read together: for a service never registered,
    /// no instances and the view's revision (so a registration after it raises the index).
    pub fn service_now(&self, ns: &str, service: &str) -> (Vec<Stored>, i64, ServiceSettings) {
        let state = self.read();
        match state.services.get(&(ns.to_string(), service.to_string())) {
            Some(entry) => (
                entry.instances.values().cloned().collect(),
                entry.index,
                entry.settings.clone(),
            ),
            None => (Vec::new(), state.revision, ServiceSettings::default()),
        }
    }

    /// One instance.
    pub fn get(&self, r: &InstanceRef) -> Option<Stored> {
        let state = self.read();
        state
            .services
            .get(&(r.namespace.clone(), r.service.clone()))?
            .instances
            .get(&r.id)
            .cloned()
    }

    /// Instances with the given id in a namespace (Consul addresses services by id alone).
    pub fn find_by_id(&self, ns: &str, id: &str) -> Vec<Stored> {
        let state = self.read();
        state
            .services
            .range((ns.to_string(), String::new())..)
            .take_while(|((n, _), _)| n == ns)
            .filter_map(|(_, entry)| entry.instances.get(id).cloned())
            .collect()
    }

    /// The lease of a TTL check's marker, when the check's TTL has not lapsed.
    pub fn ttl_marker(&self, r: &InstanceRef) -> Option<i64> {
        self.read().ttl_markers.get(r).copied()
    }

    /// Nodes whose check runners are alive.
    pub fn live_nodes(&self) -> Vec<u64> {
        self.read().nodes.iter().copied().collect()
    }

    /// True when some instance has a health check.
    pub fn has_checks(&self) -> bool {
        !self.read().checked.is_empty()
    }

    /// The plan version alone (cheap).
    pub fn plan_version(&self) -> u64 {
        self.read().plan_version
    }

    /// What changed for the check runner since its plan of version `planned` (`None`: it has
    /// none): the instances whose check changed, or every checked instance when the live
    /// nodes changed, the view reloaded or changes were dropped. Forgets the changes the runner
    /// no longer needs.
    pub fn plan_changes(&self, planned: Option<u64>) -> PlanChanges {
        let mut state = self.write();
        let nodes = state.nodes.iter().copied().collect();
        let Some(planned) = planned.filter(|p| *p >= state.plan_full_at) else {
            state.plan_log.clear();
            state.plan_full_at = state.plan_version;
            return PlanChanges {
                version: state.plan_version,
                nodes,
                all: true,
                instances: state.checked.iter().cloned().collect(),
            };
        };
        while state.plan_log.front().is_some_and(|(v, _)| *v <= planned) {
            state.plan_log.pop_front();
        }
        let mut seen = std::collections::HashSet::new();
        let instances = state
            .plan_log
            .iter()
            .filter(|(_, r)| seen.insert(r))
            .map(|(_, r)| r.clone())
            .collect();
        PlanChanges {
            version: state.plan_version,
            nodes,
            all: false,
            instances,
        }
    }

    /// Services of a namespace (every namespace when `None`), skipping empty ones.
    pub fn services(&self, ns: Option<&str>) -> Vec<ServiceSummary> {
        let state = self.read();
        state
            .services
            .iter()
            .filter(|((n, _), e)| ns.is_none_or(|ns| ns == n) && !e.instances.is_empty())
            .map(|((n, name), e)| ServiceSummary {
                namespace: n.clone(),
                name: name.clone(),
                instances: e.instances.len(),
                passing: e.passing,
                tags: e.tags.keys().cloned().collect(),
            })
            .collect()
    }

    /// Counts for metrics: (services, instances).
    pub fn counts(&self) -> (usize, usize) {
        let state = self.read();
        (state.services.len(), state.instances)
    }

    /// Replaces the whole view with a range read at `revision`.
    pub fn load(&self, kvs: &[KeyValue], revision: i64) {
        let mut fresh = State {
            revision,
            ..State::default()
        };
        for kv in kvs {
            apply_put(&mut fresh, kv, revision);
        }
        // Every TTL runner is woken below, and every check planned again.
        fresh.ttl_touched = Vec::new();
        fresh.plan_log.clear();
        {
            let mut state = self.write();
            fresh.plan_version = state.plan_version + 1;
            fresh.plan_full_at = fresh.plan_version;
            *state = fresh;
            // Send under the lock: a subscriber that read the view after subscribing sees
            // each change exactly once.
            let _ = self.changes.send(Notice::new(Change::Reset { revision }));
        }
        self.applied.loaded(revision);
        self.ready.send_replace(true);
        self.wake(None);
        for notify in self
            .ttl_waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            notify.notify_waiters();
        }
    }

    /// Applies watched events (in revision order) and notifies subscribers.
    pub fn apply(&self, events: &[Event]) {
        let Some(last) = events.last() else { return };
        let revision = last.kv.mod_revision;
        let mut changed = BTreeSet::new();
        let ttl_touched;
        {
            let mut state = self.write();
            for event in events {
                let change = match event.kind {
                    EventType::Put => apply_put(&mut state, &event.kv, event.kv.mod_revision),
                    EventType::Delete => {
                        apply_delete(&mut state, &event.kv.key, event.kv.mod_revision)
                    }
                };
                if let Some(change) = change {
                    if let Some((ns, svc)) = change.service() {
                        changed.insert((ns.to_string(), svc.to_string()));
                    }
                    let _ = self.changes.send(Notice::new(change));
                } else if let Some(RegistryKey::Service { namespace, service }) =
                    RegistryKey::parse(&event.kv.key)
                {
                    changed.insert((namespace, service));
                }
            }
            state.revision = state.revision.max(revision);
            ttl_touched = std::mem::take(&mut state.ttl_touched);
        }
        if !ttl_touched.is_empty() {
            self.wake_ttl(&ttl_touched);
        }
        self.applied.advance(revision);
        if !changed.is_empty() {
            self.wake(Some(&changed));
        }
    }
}

fn apply_put(state: &mut State, kv: &KeyValue, revision: i64) -> Option<Change> {
    match RegistryKey::parse(&kv.key)? {
        RegistryKey::Instance(r) => {
            let instance: Instance = match serde_json::from_slice(&kv.value) {
                Ok(i) => i,
                Err(e) => {
                    warn!(key = %r, error = %e, "skipping an undecodable registry instance");
                    return None;
                }
            };
            if instance.reference() != r {
                warn!(key = %r, "skipping an instance stored under another instance's key");
                return None;
            }
            let instance = Arc::new(instance);
            if matches!(
                instance.check.as_ref().map(|c| &c.kind),
                Some(CheckKind::Ttl { .. })
            ) {
                state.ttl_touched.push(r.clone());
            }
            if instance.check.is_some() {
                if state.checked.insert(r.clone()) {
                    state.check_changed(&r);
                }
            } else if state.checked.remove(&r) {
                state.check_changed(&r);
            }
            let entry = state
                .services
                .entry((r.namespace.clone(), r.service.clone()))
                .or_default();
            let previous = entry.insert(
                r.id.clone(),
                Stored {
                    instance: instance.clone(),
                    mod_revision: kv.mod_revision,
                    lease: kv.lease,
                },
            );
            entry.index = revision;
            if let Some(previous) = previous {
                if previous.instance.check != instance.check {
                    state.check_changed(&r);
                }
            } else {
                state.instances += 1;
            }
            Some(Change::Put { revision, instance })
        }
        RegistryKey::Ttl(r) => {
            state.ttl_markers.insert(r.clone(), kv.lease);
            state.ttl_touched.push(r);
            None
        }
        RegistryKey::Node(id) => {
            if state.nodes.insert(id) {
                info!(node = id, "check runner joined");
                state.nodes_changed();
            }
            None
        }
        RegistryKey::Service { namespace, service } => {
            match serde_json::from_slice::<ServiceSettings>(&kv.value) {
                Ok(settings) => {
                    let entry = state.services.entry((namespace, service)).or_default();
                    entry.settings = settings;
                    entry.index = revision;
                }
                Err(e) => warn!(error = %e, "skipping undecodable service settings"),
            }
            None
        }
    }
}

fn apply_delete(state: &mut State, key: &[u8], revision: i64) -> Option<Change> {
    match RegistryKey::parse(key)? {
        RegistryKey::Instance(r) => {
            let entry = state
                .services
                .get_mut(&(r.namespace.clone(), r.service.clone()))?;
            entry.remove(&r.id)?;
            entry.index = revision;
            state.instances -= 1;
            if state.checked.remove(&r) {
                state.check_changed(&r);
                state.ttl_touched.push(r.clone());
            }
            Some(Change::Delete {
                revision,
                instance: r,
            })
        }
        RegistryKey::Ttl(r) => {
            state.ttl_markers.remove(&r);
            state.ttl_touched.push(r);
            None
        }
        RegistryKey::Node(id) => {
            if state.nodes.remove(&id) {
                info!(node = id, "check runner left");
                state.nodes_changed();
            }
            None
        }
        RegistryKey::Service { namespace, service } => {
            if let Some(entry) = state.services.get_mut(&(namespace, service)) {
                entry.settings = ServiceSettings::default();
                entry.index = revision;
            }
            None
        }
    }
}

impl strata_store::Follower for View {
    fn load(&self, kvs: &[KeyValue], revision: i64) {
        View::load(self, kvs, revision);
    }

    fn apply(&self, events: &[Event]) {
        View::apply(self, events);
    }
}

/// Keeps `view` current until `cancel`: loads it, then follows the store's changes.
pub async fn follow(store: Arc<dyn KvApi>, view: Arc<View>, cancel: CancellationToken) {
    strata_store::follow(store, ROOT, view, cancel).await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::{IntoInstance, Registration};

    fn put(id: &str, revision: i64) -> Event {
        registered(
            serde_json::json!({"service": "web", "id": id, "address": "10.0.0.1", "port": 80}),
            revision,
        )
    }

    /// The put event of registration `body` at `revision`.
    fn registered(body: serde_json::Value, revision: i64) -> Event {
        let reg: Registration = serde_json::from_value(body).unwrap();
        let instance = reg.into_instance().unwrap();
        Event {
            kind: EventType::Put,
            kv: KeyValue {
                key: instance.reference().key().into_bytes(),
                value: serde_json::to_vec(&instance).unwrap(),
                mod_revision: revision,
                create_revision: revision,
                version: 1,
                lease: 0,
            },
            prev_kv: None,
        }
    }

    #[tokio::test]
    async fn apply_notifies_and_indexes() {
        let view = View::new();
        view.load(&[], 1);
        let mut rx = view.subscribe();
        view.apply(&[put("a", 2), put("b", 3)]);
        assert_eq!(view.service_index("public", "web"), 3);
        assert_eq!(view.services(None)[0].instances, 2);
        for want in [2, 3] {
            match &rx.recv().await.unwrap().change {
                Change::Put { revision, .. } => assert_eq!(*revision, want),
                other => panic!("unexpected {other:?}"),
            }
        }
        let mut del = put("a", 4);
        del.kind = EventType::Delete;
        view.apply(&[del]);
        assert!(matches!(
            &rx.recv().await.unwrap().change,
            Change::Delete { revision: 4, .. }
        ));
        assert_eq!(view.service("public", "web").unwrap().0.len(), 1);
        assert!(view.wait_for(4, Duration::from_millis(10)).await);
    }

    #[tokio::test]
    async fn a_ttl_runner_is_woken_by_its_own_marker_and_instance_only() {
        let view = View::new();
        view.load(&[], 1);
        let a = InstanceRef::new("public", "web", "a");
        let notify_a = view.ttl_changes(&a);
        let notify_b = view.ttl_changes(&InstanceRef::new("public", "web", "b"));
        let marker = |id: &str, kind, revision| Event {
            kind,
            kv: KeyValue {
                key: InstanceRef::new("public", "web", id).ttl_key().into_bytes(),
                mod_revision: revision,
                lease: 7,
                ..KeyValue::default()
            },
            prev_kv: None,
        };
        let woken = |notify: &Arc<tokio::sync::Notify>, change: &dyn Fn()| {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            change();
            futures::FutureExt::now_or_never(notified).is_some()
        };
        assert!(woken(&notify_a, &|| view.apply(&[marker(
            "a",
            EventType::Put,
            2
        )])));
        assert_eq!(view.ttl_marker(&a), Some(7));
        assert!(!woken(&notify_b, &|| view.apply(&[marker(
            "a",
            EventType::Put,
            3
        )])));
        assert!(woken(&notify_a, &|| view.apply(&[marker(
            "a",
            EventType::Delete,
            4
        )])));
        assert_eq!(view.ttl_marker(&a), None);
        // A reload wakes every runner.
        assert!(woken(&notify_b, &|| view.load(&[], 5)));
        // A stopped runner's wake-up is forgotten, unless another took its place.
        view.forget_ttl_changes(&a, &Arc::new(tokio::sync::Notify::new()));
        assert!(Arc::ptr_eq(&view.ttl_changes(&a), &notify_a));
        view.forget_ttl_changes(&a, &notify_a);
        assert!(!Arc::ptr_eq(&view.ttl_changes(&a), &notify_a));
    }

    #[test]
    fn the_check_runner_replans_only_changed_checks_unless_nodes_change() {
        let checked = |id: &str, ttl: &str, revision| {
            registered(
                serde_json::json!({"service": "web", "id": id, "address": "10.0.0.1",
                                   "port": 80, "check": {"ttl": ttl}}),
                revision,
            )
        };
        let node = |id: u64, revision| Event {
            kind: EventType::Put,
            kv: KeyValue {
                key: crate::model::node_key(id).into_bytes(),
                mod_revision: revision,
                ..KeyValue::default()
            },
            prev_kv: None,
        };
        let r = |id: &str| InstanceRef::new("public", "web", id);
        let view = View::new();
        view.load(&[checked("a", "10s", 1).kv, node(1, 1).kv], 1);
        let first = view.plan_changes(None);
        assert!(first.all);
        assert_eq!((first.nodes, first.instances), (vec![1], vec![r("a")]));

        // A new checked instance, a changed check and an unchecked instance: only the first two.
        view.apply(&[checked("b", "10s", 2), checked("a", "20s", 3), put("c", 4)]);
        let second = view.plan_changes(Some(first.version));
        assert!(!second.all);
        assert_eq!(second.instances, vec![r("b"), r("a")]);
        // Nothing new since.
        let again = view.plan_changes(Some(second.version));
        assert!(!again.all && again.instances.is_empty());
        assert_eq!(again.version, second.version);

        // Removing a checked instance re-plans it; a node joining re-plans everything.
        let mut gone = checked("b", "10s", 5);
        gone.kind = EventType::Delete;
        view.apply(&[gone]);
        assert_eq!(
            view.plan_changes(Some(second.version)).instances,
            vec![r("b")]
        );
        let planned = view.plan_version();
        view.apply(&[node(2, 6)]);
        let third = view.plan_changes(Some(planned));
        assert!(third.all);
        assert_eq!((third.nodes, third.instances), (vec![1, 2], vec![r("a")]));

        // More changes than the log keeps: everything again.
        let events: Vec<Event> = (0..=PLAN_LOG_MAX as i64)
            .map(|i| checked(&format!("x{i}"), "10s", 7 + i))
            .collect();
        view.apply(&events);
        let fourth = view.plan_changes(Some(third.version));
        assert!(fourth.all);
        assert_eq!(fourth.instances.len(), PLAN_LOG_MAX + 2);
    }

    #[test]
    fn service_summaries_follow_every_put_and_delete() {
        let view = View::new();
        view.load(&[], 1);
        let mut revision = 1;
        let mut event = |id: usize, tags: &[&str], enabled: bool, delete: bool| {
            revision += 1;
            let mut e = registered(
                serde_json::json!({"service": format!("s{}", id % 3), "id": format!("i{id}"),
                                   "address": "10.0.0.1", "port": 80, "tags": tags,
                                   "enabled": enabled}),
                revision,
            );
            if delete {
                e.kind = EventType::Delete;
            }
            e
        };
        let tag_sets: [&[&str]; 4] = [&[], &["a"], &["a", "b", "a"], &["c"]];
        let mut events = Vec::new();
        for round in 0..3 {
            for id in 0..40 {
                let tags = tag_sets[(id * 7 + round) % 4];
                events.push(event(
                    id,
                    tags,
                    (id + round) % 5 != 0,
                    round == 2 && id % 4 == 0,
                ));
            }
        }
        for chunk in events.chunks(7) {
            view.apply(chunk);
        }
        let summaries = view.services(None);
        assert_eq!(summaries.len(), 3);
        for summary in summaries {
            let (stored, _, _) = view.service("public", &summary.name).unwrap();
            let tags: BTreeSet<String> = stored
                .iter()
                .flat_map(|s| s.instance.tags.iter().cloned())
                .collect();
            assert_eq!(summary.instances, stored.len(), "{}", summary.name);
            assert_eq!(
                summary.passing,
                stored.iter().filter(|s| s.instance.healthy()).count()
            );
            assert_eq!(summary.tags, tags.into_iter().collect::<Vec<_>>());
        }
    }

    #[test]
    fn garbage_values_are_skipped() {
        let view = View::new();
        let mut bad = put("a", 2);
        bad.kv.value = b"{not json".to_vec();
        view.apply(&[bad]);
        assert!(view.services(None).is_empty());
    }
}
