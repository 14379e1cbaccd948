//! The config center's data model and key layout (defined in `strata_api::config`,
//! re-exported here), and the helpers the server adds.
//!
//! A config lives at `/strata/config/items/NS/GROUP/DATA_ID`; every version of it also at
//! `/strata/config/history/NS/GROUP/DATA_ID/VERSION` (16 hex digits, so keys sort by
//! version); a gray release at `/strata/config/gray/NS/GROUP/DATA_ID`. Values are JSON.

pub use strata_api::config::{
    ClientIdentity, ConfigItem, ConfigKey, Gray, GrayRule, HistoryEntry, Operation, StoreKey,
    DEFAULT_GROUP, DEFAULT_NAMESPACE, ROOT,
};

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
    use std::collections::BTreeMap;

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
