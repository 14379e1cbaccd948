//! Routing rules from the config center: which instances of a service a request goes to, by
//! header and by weight (canary releases), for xDS clients.
//!
//! The rules are one TOML document, config `xds/routes` in namespace `public` (group `xds`,
//! data id `routes`), followed as it is published:
//!
//! ```toml
//! [[services]]
//! name = "orders"
//! # Requests whose metadata has x-version: v2 go to instances with metadata version=v2.
//! routes = [{ header = "x-version", value = "v2", subset = { version = "v2" } }]
//! # The others: 95% to version=v1, 5% to version=v2.
//! split = [{ subset = { version = "v1" }, weight = 95 },
//!          { subset = { version = "v2" }, weight = 5 }]
//! ```
//!
//! A subset is a cluster of its own, named `SERVICE/KEY=VALUE,...` (keys sorted), whose
//! endpoints are the service's passing instances with that metadata. A service without rules
//! routes everything to cluster `SERVICE`, all its instances.

use serde::Deserialize;
use std::collections::BTreeMap;
use strata_api::config::ConfigKey;

/// Where the rules live in the config center.
pub fn rules_key() -> ConfigKey {
    ConfigKey {
        namespace: "public".into(),
        group: "xds".into(),
        data_id: "routes".into(),
    }
}

/// The rules document.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// Per service.
    #[serde(default)]
    pub services: Vec<ServiceRules>,
}

/// One service's rules.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRules {
    /// The registry service.
    pub name: String,
    /// Tried in order; the first whose header matches decides.
    #[serde(default)]
    pub routes: Vec<HeaderRoute>,
    /// Where the other requests go, by weight (default: every instance).
    #[serde(default)]
    pub split: Vec<Weighted>,
}

/// Requests with header `header` equal to `value` go to `subset`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRoute {
    /// Request metadata key (lower case).
    pub header: String,
    /// Its exact value.
    pub value: String,
    /// Instance metadata the target instances have.
    pub subset: BTreeMap<String, String>,
}

/// A share of the requests.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Weighted {
    /// Instance metadata the target instances have.
    pub subset: BTreeMap<String, String>,
    /// Relative weight.
    pub weight: u32,
}

impl Rules {
    /// Parses and checks the document; the error names what is wrong.
    pub fn parse(text: &str) -> Result<Rules, String> {
        let rules: Rules = toml::from_str(text).map_err(|e| format!("xds/routes: {e}"))?;
        for service in &rules.services {
            if service.name.is_empty() {
                return Err("xds/routes: a service without a name".into());
            }
            if !service.split.is_empty() && service.split.iter().all(|w| w.weight == 0) {
                return Err(format!(
                    "xds/routes: service {:?}: the split's weights are all zero",
                    service.name
                ));
            }
            for route in &service.routes {
                if route.header.is_empty() || route.header.to_ascii_lowercase() != route.header {
                    return Err(format!(
                        "xds/routes: service {:?}: header {:?} must be a non-empty lower-case name",
                        service.name, route.header
                    ));
                }
            }
        }
        Ok(rules)
    }

    /// The rules of `service`, if any.
    pub fn of(&self, service: &str) -> Option<&ServiceRules> {
        self.services.iter().find(|s| s.name == service)
    }
}

/// The cluster name of `service`'s `subset` (`service` itself for no subset).
pub fn cluster_name(service: &str, subset: &BTreeMap<String, String>) -> String {
    if subset.is_empty() {
        return service.into();
    }
    let pairs: Vec<String> = subset.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{service}/{}", pairs.join(","))
}

/// The service and subset a cluster name stands for.
pub fn parse_cluster(name: &str) -> (String, BTreeMap<String, String>) {
    match name.split_once('/') {
        None => (name.into(), BTreeMap::new()),
        Some((service, pairs)) => (
            service.into(),
            pairs
                .split(',')
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_name_their_clusters() {
        let rules = Rules::parse(
            r#"
            [[services]]
            name = "orders"
            routes = [{ header = "x-version", value = "v2", subset = { version = "v2" } }]
            split = [{ subset = { version = "v1" }, weight = 95 },
                     { subset = { version = "v2", zone = "a" }, weight = 5 }]
            "#,
        )
        .unwrap();
        let orders = rules.of("orders").unwrap();
        assert_eq!(orders.routes[0].subset["version"], "v2");
        let name = cluster_name("orders", &orders.split[1].subset);
        assert_eq!(name, "orders/version=v2,zone=a");
        assert_eq!(
            parse_cluster(&name),
            ("orders".into(), orders.split[1].subset.clone())
        );
        assert_eq!(parse_cluster("orders"), ("orders".into(), BTreeMap::new()));
        assert!(rules.of("payments").is_none());
        for (bad, wanted) in [
            ("[[services]]\nname = \"\"", "without a name"),
            ("[[services]]\nname = \"a\"\nsplit = [{ subset = {}, weight = 0 }]", "all zero"),
            (
                "[[services]]\nname = \"a\"\nroutes = [{ header = \"X\", value = \"1\", subset = {} }]",
                "lower-case",
            ),
            ("[[services]]\nname = \"a\"\nextra = 1", "unknown field"),
        ] {
            let error = Rules::parse(bad).unwrap_err();
            assert!(error.contains(wanted), "{error} lacks {wanted}");
        }
    }
}
