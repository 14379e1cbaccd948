//! The registry's API types: what `/v1/registry` takes and returns, what the registry stores
//! as JSON and under which keys. Validation (which needs the probe parser) lives with the
//! registry (`strata_registry::model::IntoInstance`); these types carry no server code.

use crate::units::HumanDuration;
use crate::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use strata_proto::error::ApiError;

/// Prefix of every registry key.
pub const ROOT: &str = "/strata/registry/";
/// Namespace used when a request names none (as in Nacos).
pub const DEFAULT_NAMESPACE: &str = "public";
/// Shortest TTL of an ephemeral instance or TTL check.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// Longest TTL of an ephemeral instance or TTL check.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// Key of an instance.
pub fn instance_key(ns: &str, service: &str, id: &str) -> String {
    format!("{ROOT}instances/{ns}/{service}/{id}")
}

/// Prefix of a namespace's instances, or of one service's when `service` is given.
pub fn instances_prefix(ns: Option<&str>, service: Option<&str>) -> String {
    match (ns, service) {
        (Some(ns), Some(svc)) => format!("{ROOT}instances/{ns}/{svc}/"),
        (Some(ns), None) => format!("{ROOT}instances/{ns}/"),
        _ => format!("{ROOT}instances/"),
    }
}

/// Key of the marker a TTL check keeps alive: it exists while reports keep coming.
pub fn ttl_key(ns: &str, service: &str, id: &str) -> String {
    format!("{ROOT}ttl/{ns}/{service}/{id}")
}

/// Key of a node's liveness record; check runners spread checks over the live nodes.
pub fn node_key(node: u64) -> String {
    format!("{ROOT}nodes/{node}")
}

/// Key of a service's settings.
pub fn service_key(ns: &str, service: &str) -> String {
    format!("{ROOT}services/{ns}/{service}")
}

/// A registry key, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryKey {
    /// An instance.
    Instance(InstanceRef),
    /// A TTL check's liveness marker.
    Ttl(InstanceRef),
    /// A check runner's liveness record.
    Node(u64),
    /// A service's settings.
    Service {
        /// Namespace.
        namespace: String,
        /// Service name.
        service: String,
    },
}

impl RegistryKey {
    /// Decodes a key under [`ROOT`]; `None` for anything else.
    pub fn parse(key: &[u8]) -> Option<RegistryKey> {
        let key = std::str::from_utf8(key).ok()?.strip_prefix(ROOT)?;
        let mut parts = key.split('/');
        let kind = parts.next()?;
        let rest: Vec<&str> = parts.collect();
        match (kind, rest.as_slice()) {
            ("instances", [ns, svc, id]) => {
                Some(RegistryKey::Instance(InstanceRef::new(ns, svc, id)))
            }
            ("ttl", [ns, svc, id]) => Some(RegistryKey::Ttl(InstanceRef::new(ns, svc, id))),
            ("nodes", [id]) => id.parse().ok().map(RegistryKey::Node),
            ("services", [ns, svc]) => Some(RegistryKey::Service {
                namespace: ns.to_string(),
                service: svc.to_string(),
            }),
            _ => None,
        }
    }
}

/// Health of an instance or check, as Consul's users know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// The check succeeded.
    Passing,
    /// The check succeeded with a complaint (HTTP 429).
    Warning,
    /// The check failed, or could not be run.
    Critical,
}

/// What to probe.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Probe {
    /// 2xx passes, 429 warns, anything else (or no response) is critical.
    Http {
        /// `http://` or `https://` URL (see the module docs about TLS).
        url: String,
        /// Request method, one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS (any case).
        #[serde(default = "default_method")]
        method: String,
        /// Extra request headers; they override the default `User-Agent`.
        #[serde(default)]
        headers: BTreeMap<String, String>,
    },
    /// Passes when a TCP connection to `addr` (HOST:PORT) is accepted.
    Tcp {
        /// Target as HOST:PORT; an IPv6 host is bracketed (`[::1]:80`).
        addr: String,
    },
    /// grpc.health.v1 Check; SERVING passes, anything else is critical. `service` empty = whole
    /// server.
    Grpc {
        /// Target as HOST:PORT; the probe dials `http://HOST:PORT` (plaintext HTTP/2).
        addr: String,
        /// Service name sent in the `HealthCheckRequest`.
        #[serde(default)]
        service: String,
    },
}

fn default_method() -> String {
    "GET".to_owned()
}

/// Names one instance.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct InstanceRef {
    /// Namespace.
    pub namespace: String,
    /// Service name.
    pub service: String,
    /// Instance id, unique within the service.
    pub id: String,
}

impl InstanceRef {
    /// Builds a reference.
    pub fn new(ns: &str, service: &str, id: &str) -> Self {
        InstanceRef {
            namespace: ns.to_string(),
            service: service.to_string(),
            id: id.to_string(),
        }
    }

    /// The instance's key.
    pub fn key(&self) -> String {
        instance_key(&self.namespace, &self.service, &self.id)
    }

    /// The key of its TTL check's marker.
    pub fn ttl_key(&self) -> String {
        ttl_key(&self.namespace, &self.service, &self.id)
    }
}

impl std::fmt::Display for InstanceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.service, self.id)
    }
}

/// How the cluster decides an instance's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// What the check does.
    #[serde(flatten)]
    pub kind: CheckKind,
    /// Time between probes.
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
    /// Deadline of one probe.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Consecutive successes needed to turn passing (0 or 1: the first one).
    #[serde(default)]
    pub success_before_passing: u32,
    /// Consecutive failures needed to turn critical (0 or 1: the first one).
    #[serde(default)]
    pub failures_before_critical: u32,
    /// Remove the instance once it has been critical this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deregister_critical_after: Option<HumanDuration>,
}

fn default_interval() -> HumanDuration {
    HumanDuration::from_millis(10_000)
}

fn default_timeout() -> HumanDuration {
    HumanDuration::from_millis(5_000)
}

/// The kinds of check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", untagged)]
pub enum CheckKind {
    /// The service reports pass, warn or fail at least once per `ttl`; silence is critical.
    Ttl {
        /// How long a report stays valid.
        ttl: HumanDuration,
    },
    /// The cluster probes the instance.
    Probe {
        /// The probe.
        probe: Probe,
    },
}

/// What a client sends to register an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// Namespace; [`DEFAULT_NAMESPACE`] when absent.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Service name (a DNS label).
    pub service: String,
    /// Instance id.
    pub id: String,
    /// Host name or IP address.
    pub address: String,
    /// Port.
    pub port: u32,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Metadata.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// Load-balancing weight (default 1).
    #[serde(default)]
    pub weight: Option<f64>,
    /// Whether consumers should be sent to it (default true).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Ephemeral: the instance lives while its owner heartbeats at least once per `ttl`.
    #[serde(default)]
    pub ttl: Option<HumanDuration>,
    /// Persistent with a health check.
    #[serde(default)]
    pub check: Option<Check>,
    /// Initial status (default: passing without a check, critical with one, as in Consul).
    #[serde(default)]
    pub status: Option<Health>,
}

/// A registered instance, as stored and as returned by queries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    /// Namespace.
    pub namespace: String,
    /// Service name.
    pub service: String,
    /// Instance id.
    pub id: String,
    /// Host name or IP address.
    pub address: String,
    /// Port.
    pub port: u16,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Metadata.
    #[serde(default)]
    pub meta: Meta,
    /// Load-balancing weight.
    pub weight: f64,
    /// Whether consumers should be sent to it.
    pub enabled: bool,
    /// Lives on a lease while its owner heartbeats.
    pub ephemeral: bool,
    /// Heartbeat TTL of an ephemeral instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<HumanDuration>,
    /// Health check of a persistent instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<Check>,
    /// Current health.
    pub status: Health,
    /// Output of the check at the last transition.
    #[serde(default)]
    pub output: String,
    /// Milliseconds since the Unix epoch of the last status transition.
    #[serde(default)]
    pub status_since_ms: u64,
}

impl Instance {
    /// The address to dial, `HOST:PORT` (an IPv6 address in brackets).
    pub fn dial_address(&self) -> String {
        if self.address.contains(':') && !self.address.starts_with('[') {
            format!("[{}]:{}", self.address, self.port)
        } else {
            format!("{}:{}", self.address, self.port)
        }
    }

    /// The weight as a balancer's share: hundredths, at least 1.
    pub fn weight_share(&self) -> u32 {
        let scaled = (self.weight * 100.0).round();
        if scaled.is_finite() && scaled >= 1.0 {
            scaled.min(f64::from(u32::MAX)) as u32
        } else {
            1
        }
    }

    /// Names this instance.
    pub fn reference(&self) -> InstanceRef {
        InstanceRef::new(&self.namespace, &self.service, &self.id)
    }

    /// True when consumers should be sent here.
    pub fn healthy(&self) -> bool {
        self.enabled && self.status == Health::Passing
    }

    /// True when `other` registers the same thing (status and timestamps aside).
    pub fn same_registration(&self, other: &Instance) -> bool {
        self.address == other.address
            && self.port == other.port
            && self.tags == other.tags
            && self.meta == other.meta
            && self.weight == other.weight
            && self.enabled == other.enabled
            && self.ephemeral == other.ephemeral
            && self.ttl == other.ttl
            && self.check == other.check
    }

    /// What differs between this registration and `asked`, one `field: stored X, asked for
    /// Y` per field that [`Instance::same_registration`] compares, for conflict errors.
    pub fn registration_differences(&self, asked: &Instance) -> Vec<String> {
        fn show<T: std::fmt::Debug>(value: &T) -> String {
            format!("{value:?}")
        }
        let mut out = Vec::new();
        let mut compare = |field: &str, stored: String, wanted: String| {
            if stored != wanted {
                out.push(format!("{field}: stored {stored}, asked for {wanted}"));
            }
        };
        compare("address", self.address.clone(), asked.address.clone());
        compare("port", self.port.to_string(), asked.port.to_string());
        compare("tags", show(&self.tags), show(&asked.tags));
        compare("meta", show(&self.meta), show(&asked.meta));
        compare("weight", self.weight.to_string(), asked.weight.to_string());
        compare(
            "enabled",
            self.enabled.to_string(),
            asked.enabled.to_string(),
        );
        compare(
            "ephemeral",
            self.ephemeral.to_string(),
            asked.ephemeral.to_string(),
        );
        compare("ttl", show(&self.ttl), show(&asked.ttl));
        // A check is compared field by field, so the one threshold that differs is named.
        let as_json = |check: &Option<Check>| serde_json::to_value(check).unwrap_or_default();
        let (stored, wanted) = (as_json(&self.check), as_json(&asked.check));
        match (stored.as_object(), wanted.as_object()) {
            (Some(stored), Some(wanted)) => {
                let fields: std::collections::BTreeSet<&String> =
                    stored.keys().chain(wanted.keys()).collect();
                for field in fields {
                    let value = |map: &serde_json::Map<String, serde_json::Value>| {
                        map.get(field.as_str())
                            .map(|v| v.to_string())
                            .unwrap_or("none".into())
                    };
                    compare(&format!("check.{field}"), value(stored), value(wanted));
                }
            }
            _ => compare("check", stored.to_string(), wanted.to_string()),
        }
        out
    }
}

/// Instance metadata: a sorted list, a JSON object on the wire. A `BTreeMap` allocates room
/// for eleven entries even for one, which for 100,000 instances was a fifth of a node's memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta(Vec<(String, String)>);

impl Meta {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&String> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| &self.0[i].1)
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<BTreeMap<String, String>> for Meta {
    fn from(map: BTreeMap<String, String>) -> Self {
        let mut entries: Vec<(String, String)> = map.into_iter().collect();
        entries.shrink_to_fit();
        Meta(entries)
    }
}

impl Serialize for Meta {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Meta {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BTreeMap::<String, String>::deserialize(d).map(Meta::from)
    }
}

/// Per-service settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSettings {
    /// When the fraction of healthy instances falls below this, healthy-only queries return
    /// every enabled instance instead (Nacos's protection threshold). 0 disables it.
    #[serde(default)]
    pub protect_threshold: f64,
}

/// The result of a registration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registered {
    /// The instance as stored.
    pub instance: Instance,
    /// Revision of the registration.
    pub revision: i64,
    /// Lease of an ephemeral instance, 0 for a persistent one.
    pub lease: i64,
    /// False when an identical instance was already registered.
    pub created: bool,
}

/// The answer to a discovery query.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueryResult {
    /// The service's index (pass it back as `index` to block for the next change).
    pub index: i64,
    /// True when the protection threshold returned every instance instead of the healthy ones.
    pub protected: bool,
    /// The matching instances.
    pub instances: Vec<Arc<Instance>>,
}

/// One message of a service watch stream.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum WatchMessage {
    /// Every instance of the service now (first message, and after a reset).
    Snapshot {
        /// Revision of the snapshot.
        index: i64,
        /// The instances.
        instances: Vec<Instance>,
    },
    /// An instance was registered or changed.
    Put {
        /// Revision of the change.
        index: i64,
        /// The instance after the change.
        instance: Box<Instance>,
    },
    /// An instance was removed.
    Delete {
        /// Revision of the change.
        index: i64,
        /// Its id.
        id: String,
    },
}

/// A discovery query.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Query {
    /// Namespace (default `public`).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Only healthy instances (enabled and passing), subject to the protection threshold.
    #[serde(default)]
    pub passing: bool,
    /// Only instances with this status.
    #[serde(default)]
    pub status: Option<Health>,
    /// Only instances carrying every one of these tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Only instances whose metadata has these values.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// Blocking query: wait until the service's index exceeds this.
    #[serde(default)]
    pub index: i64,
    /// Longest wait of a blocking query.
    #[serde(default)]
    pub wait: Option<Duration>,
}

/// The registry as other components call it in-process (the Nacos API does), so they need
/// not depend on the registry's crate. Provided to later components as
/// `Arc<dyn RegistryService>`.
pub trait RegistryService: Send + Sync {
    /// Registers (or, with `replace`, re-registers) an instance.
    fn register(
        &self,
        registration: Registration,
        replace: bool,
    ) -> BoxFuture<'_, Result<Registered, ApiError>>;
    /// Removes an instance; returns the revision of the removal.
    fn deregister<'a>(&'a self, instance: &'a InstanceRef) -> BoxFuture<'a, Result<i64, ApiError>>;
    /// Renews an ephemeral instance; returns its lease's remaining seconds.
    fn heartbeat<'a>(&'a self, instance: &'a InstanceRef) -> BoxFuture<'a, Result<i64, ApiError>>;
    /// Runs a discovery query.
    fn query<'a>(
        &'a self,
        service: &'a str,
        query: &'a Query,
    ) -> BoxFuture<'a, Result<QueryResult, ApiError>>;
}
