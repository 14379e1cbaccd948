//! The config center's data model, its validation, and its key layout in the KV store.
//!
//! A config lives at `/strata/config/items/NS/GROUP/DATA_ID`; every version of it also at
//! `/strata/config/history/NS/GROUP/DATA_ID/VERSION` (16 hex digits, so keys sort by
//! version); a gray release at `/strata/config/gray/NS/GROUP/DATA_ID`. Values are JSON.

use crate::validate::ConfigType;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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

impl std::fmt::Display for ConfigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Lowercase hex MD5 of `content`, as Nacos computes it.
pub fn md5_hex(content: &str) -> String {
    use md5::{Digest, Md5};
    let digest = Md5::digest(content.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let k = ConfigKey::new(None, None, "app.yaml").unwrap();
        assert_eq!(k.group, DEFAULT_GROUP);
        assert_eq!(
            StoreKey::parse(k.item_key().as_bytes()),
            Some(StoreKey::Item(k.clone()))
        );
        assert_eq!(
            StoreKey::parse(k.history_key(42).as_bytes()),
            Some(StoreKey::History(k.clone(), 42))
        );
        assert_eq!(
            StoreKey::parse(k.gray_key().as_bytes()),
            Some(StoreKey::Gray(k))
        );
        assert_eq!(StoreKey::parse(b"/strata/config/items/a/b"), None);
    }

    #[test]
    fn names_are_checked() {
        assert!(ConfigKey::new(None, None, "a/b").is_err());
        assert!(ConfigKey::new(Some("x y"), None, "a").is_err());
        assert!(ConfigKey::new(None, Some("G:1"), "a.b-c_d").is_ok());
    }

    #[test]
    fn md5_matches_nacos() {
        assert_eq!(md5_hex("hello"), "5d41402abc4b2a76b9719d911017c592");
        assert_eq!(md5_hex(""), "d41d8cd98f00b204e9800998ecf8427e");
    }

    #[test]
    fn gray_rules() {
        let ips = GrayRule::Ips(vec!["10.0.0.1".into()]);
        let me = ClientIdentity {
            ip: Some("10.0.0.1".into()),
            labels: [("env".to_string(), "canary".to_string())].into(),
        };
        assert!(ips.matches(&me));
        assert!(GrayRule::Labels(me.labels.clone()).matches(&me));
        assert!(!GrayRule::Labels(BTreeMap::new()).matches(&me));
        assert!(!ips.matches(&ClientIdentity::default()));
    }
}
