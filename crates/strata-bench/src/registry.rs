//! Service-registry workloads over Strata's native `/v1/registry/` API and its DNS interface.
//!
//! - `registry-register` ([`RegisterDriver`]): the closed loop of [`crate::load`]; request `s`
//!   registers instance `{id_prefix}{s:08}` of service `{service_prefix}{s mod services}`,
//!   persistent, or ephemeral (lease-backed, with a TTL) when `s mod ephemeral_every` is
//!   `ephemeral_every - 1`. The ephemeral instances it registered can be written to a file for
//!   `registry-heartbeat`.
//! - `registry-heartbeat` ([`heartbeat`]): keeps ephemeral instances alive. Each instance gets
//!   one heartbeat per `interval`, the instances' slots spread evenly over the interval (slot
//!   `k` is due at `k * interval / instances`); `clients` tasks take the slots in order, sleep
//!   until each is due and send it. It runs for `duration` or until told to stop, so a script
//!   can run it in the background while it measures something else.
//! - `registry-watch` ([`watch`]): many server-sent-event watch streams on one service, then
//!   paced registrations into it, and the latency from just before each write to each
//!   subscriber's receipt of its `put` event; also the fan-out spread (each receipt minus the
//!   change's first receipt), which leaves the write's own commit out.
//! - `dns-query` ([`DnsDriver`]): the closed loop of [`crate::load`] over UDP DNS; each client
//!   is one UDP socket with one query in flight.

use crate::load::Driver;
use crate::stats::{Latencies, Summary};
use anyhow::{bail, Context};
use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use strata_client::{Client, Method, SseStream};
use tokio::net::UdpSocket;
use tokio::sync::{watch as stop_flag, Notify};
use tokio::task::JoinSet;

/// What a client sends to `POST /v1/registry/instances`.
#[derive(Debug, Serialize)]
struct Registration {
    service: String,
    id: String,
    address: String,
    port: u16,
    tags: Vec<String>,
    meta: BTreeMap<String, String>,
    weight: f64,
    /// Present for an ephemeral instance: a duration such as `"15s"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<String>,
}

/// The parts of the registration answer the workloads check.
#[derive(Debug, Deserialize)]
struct Registered {
    /// False when an identical instance was already there: ids must be unique per run.
    created: bool,
}

/// Returns a distinct IPv4 address for sequence number `sequence` (10.0.0.0/8 wraps after
/// 2^24 instances, which no run reaches).
fn address_of(sequence: u64) -> String {
    let [_, _, _, _, _, b, c, d] = sequence.to_be_bytes();
    format!("10.{b}.{c}.{d}")
}

/// Returns `endpoints` rotated left by `index`, so task `index` starts at endpoint
/// `index mod n` and the load spreads over the nodes.
fn rotated(endpoints: &[String], index: usize) -> Vec<String> {
    let mut rotated = endpoints.to_vec();
    let by = index % rotated.len().max(1);
    rotated.rotate_left(by);
    rotated
}

/// Registers one instance through `client`; fails unless the answer says it was created.
async fn register(client: &Client, registration: &Registration) -> anyhow::Result<()> {
    let registered: Registered = client
        .post("/v1/registry/instances", registration)
        .await
        .with_context(|| {
            format!(
                "register {} of service {}",
                registration.id, registration.service
            )
        })?;
    if !registered.created {
        bail!(
            "instance {} of service {} was already registered (ids must be unique per run)",
            registration.id,
            registration.service
        );
    }
    Ok(())
}

/// Nanoseconds since the Unix epoch, stamped into each watched change's metadata.
pub fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

// --- registry-register ----------------------------------------------------------------------

/// Which instances a `registry-register` run creates.
#[derive(Debug, Clone)]
pub struct RegisterPlan {
    /// Service `j` is `{service_prefix}{j}`.
    pub service_prefix: String,
    /// Services the instances are spread over (round-robin by sequence number).
    pub services: u64,
    /// Instance `s` is `{id_prefix}{s:08}`.
    pub id_prefix: String,
    /// Every `ephemeral_every`-th instance is ephemeral; 0 for none.
    pub ephemeral_every: u64,
    /// TTL of the ephemeral instances.
    pub ephemeral_ttl: Duration,
}

impl RegisterPlan {
    /// Returns the service and id of instance `sequence`, and whether it is ephemeral.
    pub fn instance(&self, sequence: u64) -> (String, String, bool) {
        let service = format!("{}{}", self.service_prefix, sequence % self.services.max(1));
        let id = format!("{}{sequence:08}", self.id_prefix);
        let ephemeral =
            self.ephemeral_every > 0 && sequence % self.ephemeral_every == self.ephemeral_every - 1;
        (service, id, ephemeral)
    }

    fn registration(&self, sequence: u64) -> Registration {
        let (service, id, ephemeral) = self.instance(sequence);
        let mut meta = BTreeMap::new();
        meta.insert("zone".to_string(), format!("z{}", sequence % 3));
        meta.insert("version".to_string(), "1.0.0".to_string());
        Registration {
            service,
            id,
            address: address_of(sequence),
            port: 8080,
            tags: vec!["bench".to_string(), "http".to_string()],
            meta,
            weight: 1.0,
            ttl: ephemeral.then(|| humantime::format_duration(self.ephemeral_ttl).to_string()),
        }
    }
}

/// `registry-register` as a [`Driver`]: each task owns a [`Client`] over every endpoint,
/// rotated by its index as in `put`.
#[derive(Debug)]
pub struct RegisterDriver {
    /// What to register.
    pub plan: RegisterPlan,
    /// API endpoints.
    pub endpoints: Vec<String>,
    /// Per-request timeout (over every endpoint the client tries).
    pub request_timeout: Duration,
    /// Sequence numbers of the ephemeral instances registered so far.
    pub ephemeral_registered: Arc<Mutex<Vec<u64>>>,
}

impl Driver for RegisterDriver {
    type Client = Client;

    fn client(&self, client_index: usize) -> Client {
        Client::new(&rotated(&self.endpoints, client_index)).with_timeout(self.request_timeout)
    }

    /// Lists an empty namespace: opens the connection, changes nothing, costs nothing even
    /// when earlier runs left many instances behind.
    async fn warm_up(&self, client: &mut Client, _client_index: usize) -> anyhow::Result<()> {
        let _: serde_json::Value = client
            .get_json("/v1/registry/services?namespace=bench-warm-up")
            .await?;
        Ok(())
    }

    async fn issue(&self, client: &mut Client, sequence: u64) -> anyhow::Result<()> {
        let registration = self.plan.registration(sequence);
        register(client, &registration).await?;
        if registration.ttl.is_some() {
            self.ephemeral_registered
                .lock()
                .expect("ephemeral list lock poisoned")
                .push(sequence);
        }
        Ok(())
    }
}

// --- registry-heartbeat ---------------------------------------------------------------------

/// How `registry-heartbeat` keeps instances alive.
#[derive(Debug, Clone)]
pub struct HeartbeatPlan {
    /// API endpoints; task `i` lists them rotated by `i`.
    pub endpoints: Vec<String>,
    /// `(service, id)` of every instance to keep alive.
    pub instances: Vec<(String, String)>,
    /// Concurrent tasks, each with at most one heartbeat in flight.
    pub clients: usize,
    /// Each instance gets one heartbeat per interval.
    pub interval: Duration,
    /// No slot is due after this long.
    pub duration: Duration,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// A heartbeat sent this long after its slot is counted as late.
    pub late_after: Duration,
}

/// What a heartbeat run measured.
#[derive(Debug)]
pub struct HeartbeatOutcome {
    /// Heartbeats answered with a TTL.
    pub succeeded: u64,
    /// Heartbeats that failed (an expired instance answers `not_found`).
    pub errors: u64,
    /// The first failure.
    pub first_error: Option<String>,
    /// From the first slot to the last answer.
    pub elapsed: Duration,
    /// Latency of the successful heartbeats.
    pub latency: Option<Summary>,
    /// Heartbeats sent more than `late_after` after their slot.
    pub late: u64,
    /// The largest delay between a slot and its heartbeat being sent.
    pub max_lag: Duration,
    /// True when a stop request ended the run before `duration`.
    pub stopped: bool,
}

#[derive(Debug, Default)]
struct HeartbeatTally {
    latencies: Latencies,
    errors: u64,
    first_error: Option<String>,
    late: u64,
    max_lag: Duration,
}

/// Returns the moment slot `slot` of `instances` slots per `interval` is due after `start`.
fn slot_due(start: Instant, interval: Duration, instances: usize, slot: u64) -> Instant {
    let per_slot = interval.as_secs_f64() / instances.max(1) as f64;
    start + Duration::from_secs_f64(per_slot * slot as f64)
}

/// Sends heartbeats under `plan` until its duration has passed or `stop` turns true.
pub async fn heartbeat(
    plan: HeartbeatPlan,
    stop: stop_flag::Receiver<bool>,
) -> anyhow::Result<HeartbeatOutcome> {
    if plan.instances.is_empty() {
        bail!("no instances to heartbeat");
    }
    if plan.clients == 0 {
        bail!("--clients must be at least 1");
    }
    let rounds = (plan.duration.as_secs_f64() / plan.interval.as_secs_f64()).max(1.0);
    let slots = (rounds * plan.instances.len() as f64).floor() as u64;
    let plan = Arc::new(plan);

    // Warm-up: each task opens its connection with a discovery query of the first service.
    let mut warm_ups = JoinSet::new();
    for client_index in 0..plan.clients {
        let plan = Arc::clone(&plan);
        warm_ups.spawn(async move {
            let client = Client::new(&rotated(&plan.endpoints, client_index))
                .with_timeout(plan.request_timeout);
            let path = format!("/v1/registry/services/{}", plan.instances[0].0);
            let _: serde_json::Value = client.get_json(&path).await?;
            anyhow::Ok(client)
        });
    }
    let mut clients = Vec::with_capacity(plan.clients);
    while let Some(joined) = warm_ups.join_next().await {
        clients.push(joined?.context("warm up a heartbeat client")?);
    }

    let next_slot = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for client in clients {
        let plan = Arc::clone(&plan);
        let next_slot = Arc::clone(&next_slot);
        let mut stop = stop.clone();
        tasks.spawn(async move {
            let mut tally = HeartbeatTally::default();
            let count = plan.instances.len();
            loop {
                if *stop.borrow() {
                    break;
                }
                let slot = next_slot.fetch_add(1, Ordering::Relaxed);
                if slot >= slots {
                    break;
                }
                let due = slot_due(start, plan.interval, count, slot);
                tokio::select! {
                    () = tokio::time::sleep_until(due.into()) => {}
                    _ = stop.changed() => break,
                }
                let sent = Instant::now();
                let lag = sent.saturating_duration_since(due);
                tally.max_lag = tally.max_lag.max(lag);
                if lag > plan.late_after {
                    tally.late += 1;
                }
                let (service, id) = &plan.instances[(slot % count as u64) as usize];
                let path = format!("/v1/registry/services/{service}/instances/{id}/heartbeat");
                match client
                    .call::<(), serde_json::Value>(Method::PUT, &path, None)
                    .await
                {
                    Ok(_) => tally.latencies.record(sent.elapsed()),
                    Err(error) => {
                        tally.errors += 1;
                        tally
                            .first_error
                            .get_or_insert_with(|| format!("heartbeat {service}/{id}: {error}"));
                    }
                }
            }
            tally
        });
    }

    let mut latencies = Latencies::default();
    let mut outcome = HeartbeatOutcome {
        succeeded: 0,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        latency: None,
        late: 0,
        max_lag: Duration::ZERO,
        stopped: false,
    };
    while let Some(joined) = tasks.join_next().await {
        let tally = joined?;
        latencies.merge(tally.latencies);
        outcome.errors += tally.errors;
        outcome.late += tally.late;
        outcome.max_lag = outcome.max_lag.max(tally.max_lag);
        if outcome.first_error.is_none() {
            outcome.first_error = tally.first_error;
        }
    }
    outcome.elapsed = start.elapsed();
    outcome.stopped = *stop.borrow() && next_slot.load(Ordering::Relaxed) < slots;
    outcome.succeeded = u64::try_from(latencies.len()).expect("sample count fits in u64");
    outcome.latency = latencies.summary();
    Ok(outcome)
}

/// Reads `registry-heartbeat --ids-from`: one instance per line, `SERVICE ID`, or just `ID`
/// (then of `default_service`). Blank lines and lines starting with `#` are skipped.
pub fn parse_ids(
    text: &str,
    default_service: Option<&str>,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut instances = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [service, id] => instances.push((service.to_string(), id.to_string())),
            [id] => match default_service {
                Some(service) => instances.push((service.to_string(), id.to_string())),
                None => bail!(
                    "line {}: {line:?} names no service and --service is not given",
                    number + 1
                ),
            },
            _ => bail!(
                "line {}: expected `SERVICE ID` or `ID`, got {line:?}",
                number + 1
            ),
        }
    }
    Ok(instances)
}

// --- registry-watch -------------------------------------------------------------------------

/// The shape of one `registry-watch` run.
#[derive(Debug, Clone)]
pub struct WatchPlan {
    /// API endpoints; subscriber `i` lists them rotated by `i`, so the streams spread over the
    /// nodes. Writes go through the first endpoint that answers.
    pub endpoints: Vec<String>,
    /// Watch streams on the service.
    pub subscribers: usize,
    /// Registrations into the service.
    pub changes: u64,
    /// The watched service.
    pub service: String,
    /// Change `k` registers `{id_prefix}{k:06}`.
    pub id_prefix: String,
    /// Change `k` is sent at `k * change_interval` after the first.
    pub change_interval: Duration,
    /// Longest wait for one write, and for every stream to open and send its snapshot.
    pub request_timeout: Duration,
    /// Longest wait, after the last write, for every subscriber to receive every change.
    pub delivery_timeout: Duration,
}

/// What a watch run measured.
#[derive(Debug)]
pub struct RegistryWatchOutcome {
    /// (subscriber, change) pairs delivered.
    pub delivered: u64,
    /// Pairs expected (`subscribers * successful writes`) that never came.
    pub missed: u64,
    /// Writes that failed.
    pub failed_writes: u64,
    /// Snapshots received after the first (the server resends the state when a subscriber
    /// falls behind its feed); changes first seen in one count as delivered then.
    pub resyncs: u64,
    /// The first failure's message.
    pub first_error: Option<String>,
    /// From the first write to the last delivery (or the delivery timeout).
    pub elapsed: Duration,
    /// Delivery latency: just before the write to receipt by one subscriber.
    pub latency: Option<Summary>,
    /// Fan-out spread: receipt by one subscriber minus the first receipt of the same change
    /// by any subscriber (the delivery latency without the write's commit).
    pub spread: Option<Summary>,
    /// Latency of the writes themselves.
    pub write_latency: Option<Summary>,
}

/// One message of `GET /v1/registry/services/{service}/watch`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum WatchMessage {
    /// Every instance now: first, and again after the subscriber fell behind.
    Snapshot { instances: Vec<WatchedInstance> },
    /// An instance registered or changed.
    Put { instance: WatchedInstance },
    /// An instance removed.
    Delete {},
}

/// The fields of an instance the watch workload reads.
#[derive(Debug, Deserialize)]
struct WatchedInstance {
    id: String,
    #[serde(default)]
    meta: BTreeMap<String, String>,
}

/// State the subscriber tasks and the writer share.
struct WatchShared {
    /// When change `k` was sent; set just before the request leaves.
    sent_at: Vec<OnceLock<Instant>>,
    /// How many subscribers have received change `k`.
    received: Vec<AtomicU64>,
    /// Woken when some change has reached every subscriber.
    all_received: Notify,
    /// Subscribers, to know when a change has reached them all.
    subscribers: u64,
    /// The first unexpected event or broken stream.
    first_error: Mutex<Option<String>>,
}

impl WatchShared {
    fn note_error(&self, message: String) {
        let mut first = self.first_error.lock().expect("error slot lock poisoned");
        first.get_or_insert(message);
    }
}

/// One subscriber's tally.
#[derive(Debug, Default)]
struct SubscriberTally {
    /// `(change, received)` for every change the subscriber learned of, once each.
    deliveries: Vec<(usize, Instant)>,
    resyncs: u64,
}

/// Runs one watch fan-out under `plan`.
pub async fn watch(plan: &WatchPlan) -> anyhow::Result<RegistryWatchOutcome> {
    if plan.subscribers == 0 {
        bail!("--subscribers must be at least 1");
    }
    if plan.endpoints.is_empty() {
        bail!("--endpoints needs at least one endpoint");
    }
    let changes = usize::try_from(plan.changes).context("--changes is too large")?;
    let shared = Arc::new(WatchShared {
        sent_at: (0..changes).map(|_| OnceLock::new()).collect(),
        received: (0..changes).map(|_| AtomicU64::new(0)).collect(),
        all_received: Notify::new(),
        subscribers: plan.subscribers as u64,
        first_error: Mutex::new(None),
    });

    // The writer's connection is opened first, so the first write does not pay for it.
    let writer = Arc::new(Client::new(&plan.endpoints).with_timeout(plan.request_timeout));
    let _: serde_json::Value = writer
        .get_json(&format!("/v1/registry/services/{}", plan.service))
        .await
        .context("warm up the writer")?;

    // 1. Open every stream and wait for its snapshot.
    let mut opening = JoinSet::new();
    for subscriber in 0..plan.subscribers {
        let endpoints = rotated(&plan.endpoints, subscriber);
        let path = format!("/v1/registry/services/{}/watch", plan.service);
        let timeout = plan.request_timeout;
        opening.spawn(async move {
            let client = Client::new(&endpoints);
            let open = async {
                let mut stream = client.stream_get::<WatchMessage>(&path).await?;
                match stream.next().await? {
                    Some(WatchMessage::Snapshot { .. }) => anyhow::Ok(stream),
                    Some(other) => bail!("the first message was not a snapshot: {other:?}"),
                    None => bail!("the stream ended before its snapshot"),
                }
            };
            tokio::time::timeout(timeout, open)
                .await
                .map_err(|_| anyhow::anyhow!("no snapshot within {timeout:?}"))?
                .with_context(|| format!("open subscriber {subscriber} on {}", endpoints[0]))
        });
    }
    let mut streams = Vec::with_capacity(plan.subscribers);
    while let Some(joined) = opening.join_next().await {
        streams.push(joined??);
    }

    // 2. One task per subscriber records deliveries until told to stop.
    let (stop_tx, stop_rx) = stop_flag::channel(false);
    let mut subscribing = JoinSet::new();
    for stream in streams {
        subscribing.spawn(receive(
            stream,
            Arc::clone(&shared),
            plan.id_prefix.clone(),
            stop_rx.clone(),
        ));
    }

    // 3. The writes, paced: change k leaves at k * change_interval (open loop).
    let started = Instant::now();
    let mut writing = JoinSet::new();
    for k in 0..changes {
        tokio::time::sleep_until((started + plan.change_interval * k as u32).into()).await;
        let writer = Arc::clone(&writer);
        let shared = Arc::clone(&shared);
        let mut meta = BTreeMap::new();
        meta.insert("k".to_string(), k.to_string());
        meta.insert("t_ns".to_string(), unix_nanos().to_string());
        let registration = Registration {
            service: plan.service.clone(),
            id: format!("{}{k:06}", plan.id_prefix),
            address: address_of(k as u64 + 1),
            port: 9090,
            tags: vec!["bench".to_string()],
            meta,
            weight: 1.0,
            ttl: None,
        };
        writing.spawn(async move {
            let sent = Instant::now();
            shared.sent_at[k]
                .set(sent)
                .expect("each change is sent once");
            let result = register(&writer, &registration).await;
            (k, result.map(|()| sent.elapsed()))
        });
    }
    let mut write_latencies = Latencies::default();
    let mut written = Vec::with_capacity(changes);
    let mut failed_writes = 0;
    let mut first_write_error = None;
    while let Some(joined) = writing.join_next().await {
        match joined? {
            (k, Ok(latency)) => {
                write_latencies.record(latency);
                written.push(k);
            }
            (k, Err(error)) => {
                failed_writes += 1;
                first_write_error.get_or_insert_with(|| format!("change {k}: {error:#}"));
            }
        }
    }

    // 4. Wait for every delivery (bounded), then stop the subscribers.
    let deadline = tokio::time::Instant::now() + plan.delivery_timeout;
    for &k in &written {
        wait_for_everyone(&shared, k, deadline).await;
    }
    let elapsed = started.elapsed();
    let _ = stop_tx.send(true);
    let mut deliveries = Vec::with_capacity(plan.subscribers * written.len());
    let mut resyncs = 0;
    while let Some(joined) = subscribing.join_next().await {
        let tally = joined?;
        deliveries.extend(tally.deliveries);
        resyncs += tally.resyncs;
    }
    let mut first_receipt: Vec<Option<Instant>> = vec![None; changes];
    for (k, received) in &deliveries {
        let first = &mut first_receipt[*k];
        *first = Some(first.map_or(*received, |f| f.min(*received)));
    }
    let mut latencies = Latencies::default();
    let mut spread = Latencies::default();
    for (k, received) in &deliveries {
        if let Some(sent) = shared.sent_at[*k].get() {
            latencies.record(received.saturating_duration_since(*sent));
        }
        if let Some(first) = first_receipt[*k] {
            spread.record(received.saturating_duration_since(first));
        }
    }

    let delivered = u64::try_from(latencies.len()).expect("sample count fits in u64");
    let expected = shared.subscribers * written.len() as u64;
    let watch_error = shared.first_error.lock().expect("lock poisoned").take();
    Ok(RegistryWatchOutcome {
        delivered,
        missed: expected.saturating_sub(delivered),
        failed_writes,
        resyncs,
        first_error: first_write_error.or(watch_error),
        elapsed,
        latency: latencies.summary(),
        spread: spread.summary(),
        write_latency: write_latencies.summary(),
    })
}

/// Reads one subscriber's stream until `stop`, recording when the subscriber first learned of
/// each change (a `put` event, or a later snapshot holding it).
///
/// Cancel safety: `SseStream::next` keeps partial data in the stream, so dropping it at the
/// `stop` branch loses nothing that matters (the run is over).
async fn receive(
    mut stream: SseStream<WatchMessage>,
    shared: Arc<WatchShared>,
    id_prefix: String,
    mut stop: stop_flag::Receiver<bool>,
) -> SubscriberTally {
    let mut tally = SubscriberTally::default();
    let mut seen = vec![false; shared.sent_at.len()];
    loop {
        let message = tokio::select! {
            _ = stop.changed() => return tally,
            message = stream.next() => message,
        };
        let received = Instant::now();
        let instances = match message {
            Ok(Some(WatchMessage::Put { instance })) => vec![instance],
            Ok(Some(WatchMessage::Snapshot { instances })) => {
                tally.resyncs += 1;
                instances
            }
            Ok(Some(WatchMessage::Delete {})) => continue,
            Ok(None) => {
                shared.note_error(format!("a watch stream from {} ended", stream.endpoint));
                return tally;
            }
            Err(error) => {
                shared.note_error(format!("a watch stream failed: {error}"));
                return tally;
            }
        };
        for instance in instances {
            if !instance.id.starts_with(&id_prefix) {
                continue; // not one of this run's changes
            }
            let k = instance.meta.get("k").and_then(|k| k.parse::<usize>().ok());
            let Some(k) = k.filter(|k| shared.sent_at.get(*k).is_some_and(|s| s.get().is_some()))
            else {
                shared.note_error(format!("an event for {}, never sent", instance.id));
                continue;
            };
            if std::mem::replace(&mut seen[k], true) {
                continue;
            }
            tally.deliveries.push((k, received));
            let count = shared.received[k].fetch_add(1, Ordering::AcqRel) + 1;
            if count == shared.subscribers {
                shared.all_received.notify_waiters();
            }
        }
    }
}

/// Waits until every subscriber has received change `k`, or `deadline`.
async fn wait_for_everyone(shared: &WatchShared, k: usize, deadline: tokio::time::Instant) {
    loop {
        // Created before the check, so a notify_waiters between the two is not lost.
        let notified = shared.all_received.notified();
        if shared.received[k].load(Ordering::Acquire) >= shared.subscribers {
            return;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return;
        }
    }
}

// --- dns-query ------------------------------------------------------------------------------

/// `dns-query` as a [`Driver`]: each task owns one connected UDP socket and keeps one query in
/// flight. The query is encoded once; each request only changes its 16-bit id.
#[derive(Debug)]
pub struct DnsDriver {
    /// The DNS server.
    pub server: SocketAddr,
    /// The encoded query (id 0).
    pub query: Vec<u8>,
    /// A query unanswered this long fails.
    pub timeout: Duration,
    /// Answer records in the warm-up responses (the smallest seen).
    pub answers: Arc<AtomicUsize>,
}

/// One task's socket.
#[derive(Debug, Default)]
pub struct DnsClient {
    socket: Option<UdpSocket>,
    next_id: u16,
    query: Vec<u8>,
    buffer: Vec<u8>,
}

/// Encodes a query for `name` and `record_type`, with an EDNS OPT record advertising
/// `edns_size` bytes unless it is 0.
pub fn encode_query(
    name: &str,
    record_type: RecordType,
    edns_size: u16,
) -> anyhow::Result<Vec<u8>> {
    let name = Name::from_ascii(name).with_context(|| format!("parse the name {name:?}"))?;
    let mut message = Message::query();
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(name, record_type));
    if edns_size > 0 {
        let mut edns = Edns::new();
        edns.set_max_payload(edns_size);
        message.set_edns(edns);
    }
    message.to_vec().context("encode the DNS query")
}

impl DnsDriver {
    /// Sends the query with a fresh id and returns the answer's bytes (in `client.buffer`).
    async fn exchange(&self, client: &mut DnsClient) -> anyhow::Result<usize> {
        let socket = client.socket.as_ref().context("socket not bound")?;
        let id = client.next_id;
        client.next_id = client.next_id.wrapping_add(1);
        client.query[..2].copy_from_slice(&id.to_be_bytes());
        socket.send(&client.query).await.context("send the query")?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let len = match tokio::time::timeout_at(deadline, socket.recv(&mut client.buffer)).await
            {
                Ok(received) => received.context("receive the answer")?,
                Err(_) => bail!("no answer within {:?}", self.timeout),
            };
            // An answer to an earlier query that timed out is skipped.
            if len >= 12 && client.buffer[..2] == id.to_be_bytes() {
                return Ok(len);
            }
        }
    }
}

impl Driver for DnsDriver {
    type Client = DnsClient;

    fn client(&self, client_index: usize) -> DnsClient {
        DnsClient {
            socket: None,
            next_id: (client_index as u16).wrapping_mul(7919),
            query: self.query.clone(),
            buffer: vec![0; 65_535],
        }
    }

    /// Binds and connects the socket, then checks one full answer: NOERROR with records.
    async fn warm_up(&self, client: &mut DnsClient, _client_index: usize) -> anyhow::Result<()> {
        let local: SocketAddr = if self.server.is_ipv4() {
            "0.0.0.0:0".parse()?
        } else {
            "[::]:0".parse()?
        };
        let socket = UdpSocket::bind(local).await.context("bind a UDP socket")?;
        socket
            .connect(self.server)
            .await
            .with_context(|| format!("connect to {}", self.server))?;
        client.socket = Some(socket);
        let len = self.exchange(client).await?;
        let answer = Message::from_vec(&client.buffer[..len]).context("decode the answer")?;
        if answer.metadata.response_code != ResponseCode::NoError {
            bail!("the server answered {}", answer.metadata.response_code);
        }
        if answer.metadata.truncation {
            bail!("the answer was truncated (raise --edns-size)");
        }
        if answer.answers.is_empty() {
            bail!("the answer has no records (is the service registered and healthy?)");
        }
        self.answers
            .fetch_min(answer.answers.len(), Ordering::Relaxed);
        Ok(())
    }

    /// Checks the header of each answer: a response, NOERROR, not truncated, some records.
    async fn issue(&self, client: &mut DnsClient, _sequence: u64) -> anyhow::Result<()> {
        let len = self.exchange(client).await?;
        let answer = &client.buffer[..len];
        let (flags, rcode) = (answer[2], answer[3] & 0x0f);
        let answer_count = u16::from_be_bytes([answer[6], answer[7]]);
        if flags & 0x80 == 0 {
            bail!("got a query, not a response");
        }
        if rcode != 0 {
            bail!("the server answered rcode {rcode}");
        }
        if flags & 0x02 != 0 {
            bail!("the answer was truncated");
        }
        if answer_count == 0 {
            bail!("the answer has no records");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(ephemeral_every: u64) -> RegisterPlan {
        RegisterPlan {
            service_prefix: "svc-".to_string(),
            services: 3,
            id_prefix: "r1-".to_string(),
            ephemeral_every,
            ephemeral_ttl: Duration::from_secs(15),
        }
    }

    #[test]
    fn instances_spread_over_services_and_every_mth_is_ephemeral() {
        let every_tenth = plan(10);
        assert_eq!(
            every_tenth.instance(0),
            ("svc-0".to_string(), "r1-00000000".to_string(), false)
        );
        assert_eq!(every_tenth.instance(4).0, "svc-1");
        assert!(every_tenth.instance(9).2);
        assert!(!every_tenth.instance(10).2);
        assert!(every_tenth.instance(19).2);
        assert_eq!((0..100).filter(|s| every_tenth.instance(*s).2).count(), 10);
        let persistent = plan(0);
        assert!((0..100).all(|s| !persistent.instance(s).2));
    }

    #[test]
    fn registrations_serialize_as_the_api_expects() {
        let body = serde_json::to_value(plan(1).registration(258)).unwrap();
        assert_eq!(body["address"], "10.0.1.2");
        assert_eq!(body["ttl"], "15s");
        assert_eq!(body["service"], "svc-0");
        let body = serde_json::to_value(plan(0).registration(1)).unwrap();
        assert!(body.get("ttl").is_none());
    }

    #[test]
    fn heartbeat_slots_spread_over_the_interval() {
        let start = Instant::now();
        let interval = Duration::from_secs(5);
        assert_eq!(slot_due(start, interval, 10, 0), start);
        assert_eq!(
            slot_due(start, interval, 10, 5),
            start + Duration::from_millis(2500)
        );
        assert_eq!(slot_due(start, interval, 10, 10), start + interval);
    }

    #[test]
    fn ids_files_name_a_service_per_line_or_use_the_default() {
        let ids = parse_ids("# comment\nsvc-0 a\n\nb\n", Some("web")).unwrap();
        assert_eq!(
            ids,
            [
                ("svc-0".to_string(), "a".to_string()),
                ("web".to_string(), "b".to_string())
            ]
        );
        assert!(parse_ids("b\n", None).is_err());
        assert!(parse_ids("a b c\n", None).is_err());
    }

    #[test]
    fn watch_messages_parse() {
        let snapshot: WatchMessage =
            serde_json::from_str(r#"{"type":"snapshot","index":3,"instances":[]}"#).unwrap();
        assert!(matches!(snapshot, WatchMessage::Snapshot { instances } if instances.is_empty()));
        let put: WatchMessage = serde_json::from_str(
            r#"{"type":"put","index":4,"instance":{"id":"w1","service":"s","meta":{"k":"7"},"port":1}}"#,
        )
        .unwrap();
        let WatchMessage::Put { instance } = put else {
            panic!("expected a put");
        };
        assert_eq!(instance.meta["k"], "7");
        let delete: WatchMessage =
            serde_json::from_str(r#"{"type":"delete","index":5,"id":"w1"}"#).unwrap();
        assert!(matches!(delete, WatchMessage::Delete {}));
    }

    #[test]
    fn queries_encode_with_and_without_edns() {
        let with = encode_query("web.service.strata.", RecordType::A, 1232).unwrap();
        let without = encode_query("web.service.strata.", RecordType::SRV, 0).unwrap();
        assert!(with.len() > without.len());
        let decoded = Message::from_vec(&with).unwrap();
        assert_eq!(decoded.edns.unwrap().max_payload(), 1232);
        assert_eq!(decoded.queries[0].query_type(), RecordType::A);
    }
}
