//! The registry's data model, its validation, and where each record lives in the KV store.
//!
//! Every record is JSON under [`ROOT`], so `strata kv get --prefix /strata/registry/` shows
//! the registry as it is. An instance is one key; its health status is a field of that key
//! and changes only on a transition. Ephemeral instances are attached to a lease, so their
//! heartbeats are lease keep-alives that never touch the log.

use crate::probe::{self, Health, Probe};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use strata_proto::error::ApiError;
use strata_settings::HumanDuration;

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

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Checks a service name or namespace-less DNS name: a DNS label.
pub fn validate_service_name(name: &str) -> Result<(), ApiError> {
    let bad = |why: &str| {
        Err(ApiError::bad_request(format!(
            "invalid service name {name:?}: {why} (service names are DNS labels: 1-63 \
             characters, a-z, 0-9 and '-', not starting or ending with '-')"
        )))
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 63 {
        return bad("it is longer than 63 characters");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return bad("it starts or ends with '-'");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return bad(&format!("{c:?} is not allowed"));
    }
    Ok(())
}

/// Checks a namespace: 1-64 characters of a-z, A-Z, 0-9, '-' and '_'.
pub fn validate_namespace(ns: &str) -> Result<(), ApiError> {
    if ns.is_empty()
        || ns.len() > 64
        || !ns
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ApiError::bad_request(format!(
            "invalid namespace {ns:?}: use 1-64 characters of a-z, A-Z, 0-9, '-' and '_'"
        )));
    }
    Ok(())
}

/// Checks an instance id: 1-128 characters of a-z, A-Z, 0-9 and `.-_:@`.
pub fn validate_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty()
        || id.len() > 128
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_:@".contains(c))
    {
        return Err(ApiError::bad_request(format!(
            "invalid instance id {id:?}: use 1-128 characters of a-z, A-Z, 0-9 and '.-_:@'"
        )));
    }
    Ok(())
}

fn validate_address(address: &str) -> Result<(), ApiError> {
    if address.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let valid_host = !address.is_empty()
        && address.len() <= 253
        && address.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !valid_host {
        return Err(ApiError::bad_request(format!(
            "invalid address {address:?}: give an IP address or a host name"
        )));
    }
    Ok(())
}

fn validate_ttl(what: &str, ttl: Duration) -> Result<(), ApiError> {
    if ttl < MIN_TTL || ttl > MAX_TTL {
        return Err(ApiError::bad_request(format!(
            "invalid {what} {}: it must be between 1s and 24h",
            humantime::format_duration(ttl)
        )));
    }
    Ok(())
}

fn validate_check(check: &Check) -> Result<(), ApiError> {
    match &check.kind {
        CheckKind::Ttl { ttl } => validate_ttl("check ttl", ttl.0)?,
        CheckKind::Probe { probe } => {
            probe::validate(probe)
                .map_err(|e| ApiError::bad_request(format!("invalid health check: {e}")))?;
            let (interval, timeout) = (check.interval.0, check.timeout.0);
            if interval < Duration::from_millis(100) || interval > Duration::from_secs(3600) {
                return Err(ApiError::bad_request(format!(
                    "invalid check interval {}: it must be between 100ms and 1h",
                    humantime::format_duration(interval)
                )));
            }
            if timeout < Duration::from_millis(10) || timeout > Duration::from_secs(300) {
                return Err(ApiError::bad_request(format!(
                    "invalid check timeout {}: it must be between 10ms and 5m",
                    humantime::format_duration(timeout)
                )));
            }
        }
    }
    if let Some(after) = check.deregister_critical_after {
        if after.0 < Duration::from_secs(1) {
            return Err(ApiError::bad_request(
                "invalid deregister_critical_after: it must be at least 1s",
            ));
        }
    }
    Ok(())
}

impl Registration {
    /// Validates the registration and builds the instance it describes.
    pub fn into_instance(self) -> Result<Instance, ApiError> {
        let namespace = self
            .namespace
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        validate_namespace(&namespace)?;
        validate_service_name(&self.service)?;
        validate_id(&self.id)?;
        validate_address(&self.address)?;
        let port = u16::try_from(self.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "invalid port {}: it must be between 1 and 65535",
                    self.port
                ))
            })?;
        for tag in &self.tags {
            if tag.is_empty() || tag.len() > 255 || tag.contains(['/', ',']) {
                return Err(ApiError::bad_request(format!(
                    "invalid tag {tag:?}: tags are 1-255 characters without '/' or ','"
                )));
            }
        }
        for (k, v) in &self.meta {
            if k.is_empty() || k.len() > 128 || v.len() > 512 || k.contains([':', '=']) {
                return Err(ApiError::bad_request(format!(
                    "invalid metadata {k:?}: keys are 1-128 characters without ':' or '=', \
                     values at most 512"
                )));
            }
        }
        if self.meta.len() > 64 || self.tags.len() > 64 {
            return Err(ApiError::bad_request(
                "too many tags or metadata entries: at most 64 of each",
            ));
        }
        let weight = self.weight.unwrap_or(1.0);
        if !weight.is_finite() || !(0.0..=10_000.0).contains(&weight) {
            return Err(ApiError::bad_request(format!(
                "invalid weight {weight}: it must be between 0 and 10000"
            )));
        }
        if self.ttl.is_some() && self.check.is_some() {
            return Err(ApiError::bad_request(
                "give either ttl (an ephemeral instance) or check (a persistent one), not both",
            ));
        }
        if let Some(ttl) = self.ttl {
            validate_ttl("ttl", ttl.0)?;
        }
        if let Some(check) = &self.check {
            validate_check(check)?;
        }
        let status = self.status.unwrap_or(if self.check.is_some() {
            Health::Critical
        } else {
            Health::Passing
        });
        Ok(Instance {
            namespace,
            service: self.service,
            id: self.id,
            address: self.address,
            port,
            tags: self.tags,
            meta: Meta::from(self.meta),
            weight,
            enabled: self.enabled.unwrap_or(true),
            ephemeral: self.ttl.is_some(),
            ttl: self.ttl,
            check: self.check,
            status,
            output: String::new(),
            status_since_ms: now_ms(),
        })
    }
}

/// Whole seconds of a lease covering `ttl` (rounded up).
pub fn lease_seconds(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn reg() -> Registration {
        serde_json::from_value(serde_json::json!({
            "service": "web", "id": "web-1", "address": "127.0.0.1", "port": 8080
        }))
        .unwrap()
    }

    #[test]
    fn keys_round_trip() {
        let r = InstanceRef::new("public", "web", "web-1");
        assert_eq!(
            RegistryKey::parse(r.key().as_bytes()),
            Some(RegistryKey::Instance(r.clone()))
        );
        assert_eq!(
            RegistryKey::parse(r.ttl_key().as_bytes()),
            Some(RegistryKey::Ttl(r))
        );
        assert_eq!(
            RegistryKey::parse(node_key(7).as_bytes()),
            Some(RegistryKey::Node(7))
        );
        assert_eq!(RegistryKey::parse(b"/strata/registry/instances/a/b"), None);
        assert_eq!(RegistryKey::parse(b"/other"), None);
        assert_eq!(RegistryKey::parse(&[0xff, 0xfe]), None);
    }

    #[test]
    fn a_conflict_names_exactly_the_fields_that_differ() {
        let with_check = |failures: u32| {
            let mut r = reg();
            r.check = Some(
                serde_json::from_value(serde_json::json!({
                    "probe": {"kind": "http", "url": "http://127.0.0.1:8080/health"},
                    "failures_before_critical": failures
                }))
                .unwrap(),
            );
            r.into_instance().unwrap()
        };
        let (stored, asked) = (with_check(1), with_check(3));
        assert_eq!(
            stored.registration_differences(&asked),
            vec!["check.failures_before_critical: stored 1, asked for 3".to_string()]
        );
        assert!(stored.registration_differences(&stored).is_empty());
    }

    #[test]
    fn defaults() {
        let i = reg().into_instance().unwrap();
        assert_eq!(i.namespace, "public");
        assert_eq!(i.status, Health::Passing);
        assert!(i.enabled && !i.ephemeral);
        assert_eq!(i.weight, 1.0);
    }

    #[test]
    fn bad_input_is_named() {
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (
                serde_json::json!({"service": "Web_1"}),
                "invalid service name",
            ),
            (serde_json::json!({"service": "-web"}), "starts or ends"),
            (serde_json::json!({"port": 0}), "invalid port 0"),
            (serde_json::json!({"port": 70000}), "invalid port 70000"),
            (serde_json::json!({"id": "a/b"}), "invalid instance id"),
            (
                serde_json::json!({"address": "no spaces"}),
                "invalid address",
            ),
            (serde_json::json!({"ttl": "0s"}), "invalid ttl"),
            (serde_json::json!({"weight": -1.0}), "invalid weight"),
        ];
        for (patch, want) in cases {
            let mut v = serde_json::to_value(reg()).unwrap();
            for (k, val) in patch.as_object().unwrap() {
                v[k] = val.clone();
            }
            let r: Registration = serde_json::from_value(v).unwrap();
            let err = r.into_instance().unwrap_err();
            assert!(err.message.contains(want), "{} !~ {want}", err.message);
        }
    }

    #[test]
    fn lease_seconds_round_up() {
        assert_eq!(lease_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(lease_seconds(Duration::from_secs(3)), 3);
    }
}
