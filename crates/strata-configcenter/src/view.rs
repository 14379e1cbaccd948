//! Each node's in-memory view of the config center, kept current by one KV watch on [`ROOT`]:
//! the current version of every config, every gray release, and the highest version each
//! config's history has reached. Reads, long-polls and watch streams are served from here.

use crate::cipher::Cipher;
use crate::model::{md5_hex, ConfigItem, ConfigKey, Gray, StoreKey, ROOT};
use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;
use strata_proto::kv::{Event, EventType, KeyValue};
use strata_store::{AppliedRevision, KvApi};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// A config's current version with its compare-and-set token.
#[derive(Debug, Clone)]
pub struct StoredItem {
    /// The config.
    pub item: Arc<ConfigItem>,
    /// Revision of its last write.
    pub mod_revision: i64,
    /// MD5 of the plain content. Encrypted configs store no digest of their plain text (it
    /// would give short secrets away); the view computes it on apply, in memory only.
    pub md5: String,
}

/// A gray release with its compare-and-set token and plain-content MD5.
#[derive(Debug, Clone)]
pub struct StoredGray {
    /// The gray release.
    pub gray: Arc<Gray>,
    /// Revision of its last write.
    pub mod_revision: i64,
    /// MD5 of the plain gray content.
    pub md5: String,
}

/// The MD5 of a stored content's plain text; "" when it cannot be decrypted here.
pub fn plain_md5(
    cipher: Option<&Cipher>,
    key: &ConfigKey,
    content: &str,
    encrypted: bool,
    stored_md5: &str,
) -> String {
    if !encrypted {
        return stored_md5.to_string();
    }
    cipher
        .and_then(|c| c.decrypt(content, &key.aad()).ok())
        .map(|plain| md5_hex(&plain))
        .unwrap_or_default()
}

/// What changed, as subscribers see it.
#[derive(Debug, Clone)]
pub enum ConfigChange {
    /// A config was published (or rolled back, or promoted).
    Published(Arc<ConfigItem>),
    /// A config was deleted.
    Deleted(ConfigKey),
    /// A gray release started, changed or ended.
    Gray(ConfigKey),
    /// The view was reloaded: re-read everything.
    Reset,
}

impl ConfigChange {
    /// The config the change is about; `None` for a reset.
    pub fn key(&self) -> Option<&ConfigKey> {
        match self {
            ConfigChange::Published(item) => Some(&item.key),
            ConfigChange::Deleted(key) | ConfigChange::Gray(key) => Some(key),
            ConfigChange::Reset => None,
        }
    }
}

#[derive(Default)]
struct State {
    revision: i64,
    items: HashMap<ConfigKey, StoredItem>,
    grays: HashMap<ConfigKey, StoredGray>,
    /// Highest version in each config's history (survives deletes, so versions never repeat).
    max_version: HashMap<ConfigKey, u64>,
}

/// The config center as this node sees it.
pub struct View {
    cipher: Option<Cipher>,
    state: RwLock<State>,
    changes: broadcast::Sender<Arc<ConfigChange>>,
    applied: AppliedRevision,
}

impl Default for View {
    fn default() -> Self {
        View::new(None)
    }
}

impl View {
    /// An empty view; `cipher` lets it digest encrypted contents.
    pub fn new(cipher: Option<Cipher>) -> Self {
        View {
            cipher,
            state: RwLock::new(State::default()),
            changes: broadcast::channel(16384).0,
            applied: AppliedRevision::new(),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribes to changes; subscribe before reading so nothing falls between.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ConfigChange>> {
        self.changes.subscribe()
    }

    /// The last revision applied.
    pub fn revision(&self) -> i64 {
        self.read().revision
    }

    /// Waits until the view has applied `revision`, at most `timeout`; true if it has.
    pub async fn wait_for(&self, revision: i64, timeout: Duration) -> bool {
        self.applied.wait_for(revision, timeout).await
    }

    /// The current version of a config.
    pub fn item(&self, key: &ConfigKey) -> Option<StoredItem> {
        self.read().items.get(key).cloned()
    }

    /// A config's gray release and its mod revision.
    pub fn gray(&self, key: &ConfigKey) -> Option<StoredGray> {
        self.read().grays.get(key).cloned()
    }

    /// The highest version a config ever had (0 if never published).
    pub fn max_version(&self, key: &ConfigKey) -> u64 {
        let state = self.read();
        let current = state.items.get(key).map(|s| s.item.version).unwrap_or(0);
        state
            .max_version
            .get(key)
            .copied()
            .unwrap_or(0)
            .max(current)
    }

    /// Every config matching `filter`, sorted by key.
    pub fn items(&self, filter: impl Fn(&ConfigItem) -> bool) -> Vec<StoredItem> {
        let state = self.read();
        let mut items: Vec<StoredItem> = state
            .items
            .values()
            .filter(|s| filter(&s.item))
            .cloned()
            .collect();
        items.sort_by(|a, b| a.item.key.cmp(&b.item.key));
        items
    }

    /// Number of configs.
    pub fn len(&self) -> usize {
        self.read().items.len()
    }

    /// True when there are no configs.
    pub fn is_empty(&self) -> bool {
        self.read().items.is_empty()
    }

    /// Replaces the view with a range read at `revision`.
    pub fn load(&self, kvs: &[KeyValue], revision: i64) {
        let mut fresh = State {
            revision,
            ..State::default()
        };
        for kv in kvs {
            apply_put(&mut fresh, kv, self.cipher.as_ref());
        }
        {
            let mut state = self.write();
            *state = fresh;
            let _ = self.changes.send(Arc::new(ConfigChange::Reset));
        }
        self.applied.loaded(revision);
    }

    /// Applies watched events in revision order and notifies subscribers.
    pub fn apply(&self, events: &[Event]) {
        let Some(last) = events.last() else { return };
        let revision = last.kv.mod_revision;
        {
            let mut state = self.write();
            for event in events {
                let change = match event.kind {
                    EventType::Put => apply_put(&mut state, &event.kv, self.cipher.as_ref()),
                    EventType::Delete => apply_delete(&mut state, &event.kv.key),
                };
                if let Some(change) = change {
                    let _ = self.changes.send(Arc::new(change));
                }
            }
            state.revision = state.revision.max(revision);
        }
        self.applied.advance(revision);
    }
}

fn apply_put(state: &mut State, kv: &KeyValue, cipher: Option<&Cipher>) -> Option<ConfigChange> {
    match StoreKey::parse(&kv.key)? {
        StoreKey::Item(key) => {
            let item: ConfigItem = match serde_json::from_slice(&kv.value) {
                Ok(item) => item,
                Err(e) => {
                    warn!(config = %key, error = %e, "skipping an undecodable config");
                    return None;
                }
            };
            if item.key != key {
                warn!(config = %key, "skipping a config stored under another config's key");
                return None;
            }
            let item = Arc::new(item);
            let max = state.max_version.entry(key.clone()).or_insert(0);
            *max = (*max).max(item.version);
            let md5 = plain_md5(cipher, &key, &item.content, item.encrypted, &item.md5);
            state.items.insert(
                key,
                StoredItem {
                    item: item.clone(),
                    mod_revision: kv.mod_revision,
                    md5,
                },
            );
            Some(ConfigChange::Published(item))
        }
        StoreKey::History(key, version) => {
            let max = state.max_version.entry(key).or_insert(0);
            *max = (*max).max(version);
            None
        }
        StoreKey::Gray(key) => match serde_json::from_slice::<Gray>(&kv.value) {
            Ok(gray) => {
                let md5 = plain_md5(cipher, &key, &gray.content, gray.encrypted, &gray.md5);
                state.grays.insert(
                    key.clone(),
                    StoredGray {
                        gray: Arc::new(gray),
                        mod_revision: kv.mod_revision,
                        md5,
                    },
                );
                Some(ConfigChange::Gray(key))
            }
            Err(e) => {
                warn!(config = %key, error = %e, "skipping an undecodable gray release");
                None
            }
        },
    }
}

fn apply_delete(state: &mut State, key: &[u8]) -> Option<ConfigChange> {
    match StoreKey::parse(key)? {
        StoreKey::Item(key) => {
            state.items.remove(&key)?;
            Some(ConfigChange::Deleted(key))
        }
        StoreKey::History(..) => None,
        StoreKey::Gray(key) => {
            state.grays.remove(&key)?;
            Some(ConfigChange::Gray(key))
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

/// Keeps `view` current until `cancel`.
pub async fn follow(store: Arc<dyn KvApi>, view: Arc<View>, cancel: CancellationToken) {
    strata_store::follow(store, ROOT, view, cancel).await;
}
