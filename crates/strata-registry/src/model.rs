//! The registry's data model (its types and key layout are in `strata_api::registry`,
//! re-exported here) and its validation.
//!
//! Every record is JSON under [`ROOT`], so `strata kv get --prefix /strata/registry/` shows
//! the registry as it is. An instance is one key; its health status is a field of that key
//! and changes only on a transition. Ephemeral instances are attached to a lease, so their
//! heartbeats are lease keep-alives that never touch the log.

use crate::probe;
use std::time::Duration;
pub use strata_api::registry::{
    instance_key, instances_prefix, node_key, service_key, ttl_key, Check, CheckKind, Health,
    Instance, InstanceRef, Meta, Probe, Registration, RegistryKey, ServiceSettings,
    DEFAULT_NAMESPACE, MAX_TTL, MIN_TTL, ROOT,
};
use strata_proto::error::ApiError;

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

/// Validation of a registration, which needs the probe parser and so lives with the registry.
pub trait IntoInstance {
    /// Validates the registration and returns the instance it describes.
    fn into_instance(self) -> Result<Instance, ApiError>;
}

impl IntoInstance for Registration {
    fn into_instance(self) -> Result<Instance, ApiError> {
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
