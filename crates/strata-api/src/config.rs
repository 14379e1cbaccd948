//! The config center's API types: what `/v1/config` takes and returns, and the records it
//! stores as JSON with their key layout. Content validation and storage live with the config
//! center (`strata_configcenter`); these types carry no server code.

use crate::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;
use strata_proto::error::ApiError;

/// Prefix of every config-center key.
pub const ROOT: &str = "/strata/config/";
/// Namespace used when a request names none (as in Nacos).
pub const DEFAULT_NAMESPACE: &str = "public";
/// Group used when a request names none (as in Nacos).
pub const DEFAULT_GROUP: &str = "DEFAULT_GROUP";

/// Names one config.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConfigKey {
    /// Namespace.
    pub namespace: String,
    /// Group.
    pub group: String,
    /// Data id.
    pub data_id: String,
}

impl fmt::Display for ConfigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.group, self.data_id)
    }
}

impl ConfigKey {
    /// A validated key; `None` parts take the defaults.
    pub fn new(ns: Option<&str>, group: Option<&str>, data_id: &str) -> Result<Self, ApiError> {
        let namespace = ns.filter(|n| !n.is_empty()).unwrap_or(DEFAULT_NAMESPACE);
        let group = group.filter(|g| !g.is_empty()).unwrap_or(DEFAULT_GROUP);
        validate_name("namespace", namespace, 128)?;
        validate_name("group", group, 128)?;
        validate_name("data id", data_id, 256)?;
        Ok(ConfigKey {
            namespace: namespace.to_string(),
            group: group.to_string(),
            data_id: data_id.to_string(),
        })
    }

    /// The item's key.
    pub fn item_key(&self) -> String {
        format!(
            "{ROOT}items/{}/{}/{}",
            self.namespace, self.group, self.data_id
        )
    }

    /// The prefix of its history.
    pub fn history_prefix(&self) -> String {
        format!(
            "{ROOT}history/{}/{}/{}/",
            self.namespace, self.group, self.data_id
        )
    }

    /// The key of one version in its history.
    pub fn history_key(&self, version: u64) -> String {
        format!("{}{version:016x}", self.history_prefix())
    }

    /// The key of its gray release.
    pub fn gray_key(&self) -> String {
        format!(
            "{ROOT}gray/{}/{}/{}",
            self.namespace, self.group, self.data_id
        )
    }

    /// Associated data binding an encrypted content to this config.
    pub fn aad(&self) -> String {
        self.to_string()
    }
}

/// A config-center key, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKey {
    /// The current version of a config.
    Item(ConfigKey),
    /// One version in a config's history.
    History(ConfigKey, u64),
    /// A config's gray release.
    Gray(ConfigKey),
}

impl StoreKey {
    /// Decodes a key under [`ROOT`]; `None` for anything else.
    pub fn parse(key: &[u8]) -> Option<StoreKey> {
        let key = std::str::from_utf8(key).ok()?.strip_prefix(ROOT)?;
        let parts: Vec<&str> = key.split('/').collect();
        let config = |ns: &str, g: &str, id: &str| ConfigKey {
            namespace: ns.to_string(),
            group: g.to_string(),
            data_id: id.to_string(),
        };
        match parts.as_slice() {
            ["items", ns, g, id] => Some(StoreKey::Item(config(ns, g, id))),
            ["gray", ns, g, id] => Some(StoreKey::Gray(config(ns, g, id))),
            ["history", ns, g, id, v] => u64::from_str_radix(v, 16)
                .ok()
                .map(|v| StoreKey::History(config(ns, g, id), v)),
            _ => None,
        }
    }
}

fn validate_name(what: &str, name: &str, max: usize) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    if !ok {
        return Err(ApiError::bad_request(format!(
            "invalid {what} {name:?}: use 1-{max} characters of a-z, A-Z, 0-9 and '-_.:'"
        )));
    }
    Ok(())
}

/// The current version of a config, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigItem {
    /// Which config.
    #[serde(flatten)]
    pub key: ConfigKey,
    /// The content (encrypted when `encrypted`).
    pub content: String,
    /// Declared type.
    #[serde(rename = "type", default)]
    pub kind: ConfigType,
    /// MD5 of the plain content, lowercase hex (Nacos's change detector).
    pub md5: String,
    /// Rises by one with every change; never reused, even after a delete.
    pub version: u64,
    /// Free text.
    #[serde(default)]
    pub desc: String,
    /// Tags, for search.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Milliseconds since the Unix epoch of the last change.
    pub modified_at: u64,
    /// Who made the last change (client address).
    #[serde(default)]
    pub source: String,
    /// True when `content` is ciphertext (data ids starting with `cipher-`).
    #[serde(default)]
    pub encrypted: bool,
}

/// What happened in one history entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    /// Published.
    Publish,
    /// Published by a rollback.
    Rollback,
    /// Published by promoting a gray release.
    GrayPromote,
    /// Deleted.
    Delete,
}

/// One version in a config's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The version.
    pub version: u64,
    /// What happened.
    pub op: Operation,
    /// Content at that version (encrypted when `encrypted`); empty for a delete.
    pub content: String,
    /// MD5 of the plain content.
    pub md5: String,
    /// Declared type.
    #[serde(rename = "type", default)]
    pub kind: ConfigType,
    /// Milliseconds since the Unix epoch.
    pub modified_at: u64,
    /// Who made the change.
    #[serde(default)]
    pub source: String,
    /// True when `content` is ciphertext.
    #[serde(default)]
    pub encrypted: bool,
}

/// Who a gray release goes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GrayRule {
    /// Clients at these addresses.
    Ips(Vec<String>),
    /// Clients carrying all of these labels.
    Labels(BTreeMap<String, String>),
}

/// A gray release: a candidate version seen only by matching clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gray {
    /// The candidate content (encrypted when `encrypted`).
    pub content: String,
    /// MD5 of the plain content.
    pub md5: String,
    /// Who sees it.
    pub rule: GrayRule,
    /// Milliseconds since the Unix epoch.
    pub created_at: u64,
    /// True when `content` is ciphertext.
    #[serde(default)]
    pub encrypted: bool,
}

/// A client's identity for gray matching.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The client's address (as it connected, or as it says).
    pub ip: Option<String>,
    /// The client's labels.
    pub labels: BTreeMap<String, String>,
}

impl GrayRule {
    /// True when the client should see the gray version.
    pub fn matches(&self, client: &ClientIdentity) -> bool {
        match self {
            GrayRule::Ips(ips) => client.ip.as_ref().is_some_and(|ip| ips.contains(ip)),
            GrayRule::Labels(want) => {
                !want.is_empty() && want.iter().all(|(k, v)| client.labels.get(k) == Some(v))
            }
        }
    }
}

/// The declared type of a config's content (as in Nacos).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ConfigType {
    /// Free text; every content is valid.
    #[default]
    Text,
    /// JSON (RFC 8259): exactly one value, no comments, no trailing commas.
    Json,
    /// YAML 1.2; a stream of several documents is allowed.
    #[serde(alias = "yml")]
    Yaml,
    /// TOML 1.0.
    Toml,
    /// Java `.properties`, as read by `java.util.Properties::load`.
    Properties,
    /// Well-formed XML 1.0 with namespaces; a DTD is allowed but not validated against.
    Xml,
}

impl ConfigType {
    /// Every type, in the order error messages list them.
    pub const ALL: [ConfigType; 6] = [
        ConfigType::Text,
        ConfigType::Json,
        ConfigType::Yaml,
        ConfigType::Toml,
        ConfigType::Properties,
        ConfigType::Xml,
    ];

    /// Returns the lowercase name used on the wire and by `Display`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigType::Text => "text",
            ConfigType::Json => "json",
            ConfigType::Yaml => "yaml",
            ConfigType::Toml => "toml",
            ConfigType::Properties => "properties",
            ConfigType::Xml => "xml",
        }
    }
}

impl FromStr for ConfigType {
    type Err = String;

    /// Parses a type name case-insensitively; `yml` is accepted for YAML.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        if name.eq_ignore_ascii_case("yml") {
            return Ok(ConfigType::Yaml);
        }
        for kind in ConfigType::ALL {
            if name.eq_ignore_ascii_case(kind.as_str()) {
                return Ok(kind);
            }
        }
        let valid: Vec<&str> = ConfigType::ALL.iter().map(|kind| kind.as_str()).collect();
        Err(format!(
            "unknown config type {name:?}: expected one of {}",
            valid.join(", ")
        ))
    }
}

impl fmt::Display for ConfigType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a client sees when it reads a config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Served {
    /// Which config.
    #[serde(flatten)]
    pub key: ConfigKey,
    /// The plain content.
    pub content: String,
    /// Declared type.
    #[serde(rename = "type")]
    pub kind: ConfigType,
    /// MD5 of the content.
    pub md5: String,
    /// The version (for a gray read: the main version it is a candidate for).
    pub version: u64,
    /// True when this is the gray release.
    pub gray: bool,
    /// Milliseconds since the Unix epoch of the change.
    pub modified_at: u64,
}

/// A config without its content, for listings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// Which config.
    #[serde(flatten)]
    pub key: ConfigKey,
    /// Declared type.
    #[serde(rename = "type")]
    pub kind: ConfigType,
    /// MD5.
    pub md5: String,
    /// Version.
    pub version: u64,
    /// Description.
    pub desc: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Milliseconds since the Unix epoch of the last change.
    pub modified_at: u64,
    /// True when stored encrypted.
    pub encrypted: bool,
    /// True when a gray release is running.
    pub gray: bool,
}
/// One message of a config watch stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchMessage {
    /// `current` (first message without `from_version`), `publish`, `rollback`,
    /// `gray-promote`, `delete`, or `gray` (what this client sees changed because a gray
    /// release started or ended).
    pub event: String,
    /// Version of the config (for `gray`: the main version).
    pub version: u64,
    /// MD5 of `content`.
    pub md5: String,
    /// What the client sees now (empty after a delete).
    pub content: String,
}

/// A publish request.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Publish {
    /// Namespace (default `public`).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Group (default `DEFAULT_GROUP`).
    #[serde(default)]
    pub group: Option<String>,
    /// Data id.
    pub data_id: String,
    /// The content.
    pub content: String,
    /// Declared type; content must parse as it. Default: the current type, else text.
    #[serde(default, rename = "type")]
    pub kind: Option<ConfigType>,
    /// Description.
    #[serde(default)]
    pub desc: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// Publish only if the current md5 is this ("" = only if the config does not exist).
    #[serde(default)]
    pub if_md5: Option<String>,
    /// Publish only if the current version is this (0 = only if it does not exist).
    #[serde(default)]
    pub if_version: Option<u64>,
}

/// The config center as other components call it in-process (the Nacos API does), so they
/// need not depend on the config center's crate. Provided to later components as
/// `Arc<dyn ConfigService>`.
pub trait ConfigService: Send + Sync {
    /// What `client` reads for `key` (the gray release when it matches).
    fn get(&self, key: &ConfigKey, client: &ClientIdentity) -> Result<Served, ApiError>;
    /// Publishes a new version.
    fn publish<'a>(
        &'a self,
        request: Publish,
        source: &'a str,
    ) -> BoxFuture<'a, Result<ConfigItem, ApiError>>;
    /// Deletes a config; returns the history version the delete was recorded as.
    fn delete<'a>(
        &'a self,
        key: &'a ConfigKey,
        source: &'a str,
    ) -> BoxFuture<'a, Result<u64, ApiError>>;
    /// Waits up to `timeout` until one of `watched` (key and the md5 the client has) differs
    /// from what `client` would read; returns the keys that changed.
    fn wait_changed<'a>(
        &'a self,
        watched: &'a [(ConfigKey, String)],
        client: &'a ClientIdentity,
        timeout: Duration,
    ) -> BoxFuture<'a, Vec<ConfigKey>>;
    /// Counts a long-poll listener of API `op` in the config center's metrics while the
    /// returned guard lives.
    fn listening(&self, op: &'static str) -> Box<dyn Send>;
}
