//! The config center's operations. Writes are KV transactions through the log; reads come
//! from the node's [`View`].
//!
//! A publish is one transaction: it compares the item's mod revision with the one the
//! version was computed from and checks that the history slot is free, then writes the item
//! and its history entry (and drops the entry that fell out of the retention window). Two
//! concurrent publishes therefore never produce the same version; the loser retries on the
//! fresh view. Conditional publishes (md5 or version compare-and-set) are checked against the
//! same view the transaction compares against, so they are atomic too.

use crate::cipher::{is_encrypted, Cipher};
use crate::metrics::ConfigMetrics;
use crate::model::{
    md5_hex, now_ms, ClientIdentity, ConfigItem, ConfigKey, Gray, GrayRule, HistoryEntry, Operation,
};
use crate::validate::{validate, ConfigType};
use crate::view::{StoredGray, StoredItem, View};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use strata_proto::error::{ApiError, ErrorCode};
use strata_proto::kv::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};
use strata_store::KvApi;
use tracing::{debug, info};

/// How long a write waits for the local view to catch up before answering anyway.
const VIEW_CATCH_UP: Duration = Duration::from_secs(5);

/// Limits and keys from the node's configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Largest content accepted, in bytes.
    pub max_content_bytes: usize,
    /// Versions kept per config (older ones are dropped as new ones arrive).
    pub history_retention: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_content_bytes: 1024 * 1024,
            history_retention: 100,
        }
    }
}

/// The config center on one node.
pub struct ConfigCenter {
    /// The replicated store.
    pub store: Arc<dyn KvApi>,
    /// This node's view.
    pub view: Arc<View>,
    /// Metrics.
    pub metrics: ConfigMetrics,
    /// Key for `cipher-` configs, when configured.
    pub cipher: Option<Cipher>,
    /// Limits.
    pub settings: Settings,
    /// The node's task tracker: watch-stream pumps run on it, so shutdown waits for them.
    pub tracker: tokio_util::task::TaskTracker,
}

pub use strata_api::config::{Publish, Served, Summary};

fn put_op(key: String, value: Vec<u8>) -> RequestOp {
    RequestOp::Put(PutRequest {
        key: key.into_bytes(),
        value,
        lease: 0,
        prev_kv: false,
        ..Default::default()
    })
}

fn delete_op(key: String) -> RequestOp {
    RequestOp::DeleteRange(DeleteRangeRequest {
        key: key.into_bytes(),
        ..DeleteRangeRequest::default()
    })
}

fn compare(key: String, target: CompareTarget) -> Compare {
    Compare {
        key: key.into_bytes(),
        range_end: Vec::new(),
        prefix: false,
        result: CompareResult::Equal,
        target,
    }
}

fn json<T: Serialize>(value: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(value).map_err(|e| ApiError::internal(format!("encode: {e}")))
}

fn not_found(key: &ConfigKey) -> ApiError {
    ApiError::not_found(format!(
        "config {} (group {}, namespace {}) does not exist",
        key.data_id, key.group, key.namespace
    ))
}

/// What a publish-like operation writes.
struct Change<'a> {
    key: &'a ConfigKey,
    content: &'a str,
    kind: ConfigType,
    desc: Option<String>,
    tags: Option<Vec<String>>,
    op: Operation,
    source: &'a str,
    /// Extra operations in the same transaction (e.g. deleting the gray release).
    extra: Vec<RequestOp>,
    /// Extra conditions in the same transaction (e.g. the gray release is the one read).
    extra_compares: Vec<Compare>,
    /// Compare-and-set on the current state, checked against the view.
    condition: &'a (dyn Fn(Option<&StoredItem>) -> Result<(), ApiError> + Sync),
}

impl ConfigCenter {
    /// Runs a transaction of the config center's own size: a config is written twice (its
    /// current version and its history entry), JSON-escaped, so it may exceed a client
    /// request's limit.
    async fn txn(&self, request: TxnRequest) -> Result<strata_proto::kv::TxnResponse, ApiError> {
        let max = self
            .settings
            .max_content_bytes
            .saturating_mul(3)
            .saturating_add(64 * 1024);
        self.store.txn_within(request, max).await
    }

    /// A config center over `store`, reading from `view`.
    pub fn new(
        store: Arc<dyn KvApi>,
        view: Arc<View>,
        metrics: ConfigMetrics,
        cipher: Option<Cipher>,
        settings: Settings,
        tracker: tokio_util::task::TaskTracker,
    ) -> Self {
        ConfigCenter {
            store,
            view,
            metrics,
            cipher,
            settings,
            tracker,
        }
    }

    /// Deletes every history entry that falls out of the retention window once `version` is
    /// written (more than one after `history_retention` was lowered).
    fn trim_history(&self, key: &ConfigKey, version: u64) -> Option<RequestOp> {
        let retention = self.settings.history_retention;
        (version > retention).then(|| {
            RequestOp::DeleteRange(DeleteRangeRequest {
                key: key.history_key(0).into_bytes(),
                range_end: key.history_key(version - retention + 1).into_bytes(),
                ..DeleteRangeRequest::default()
            })
        })
    }

    async fn settle(&self, revision: i64) {
        if !self.view.wait_for(revision, VIEW_CATCH_UP).await {
            debug!(revision, "config view is slow to catch up");
        }
    }

    fn cipher_for(&self, key: &ConfigKey) -> Result<Option<&Cipher>, ApiError> {
        if !is_encrypted(&key.data_id) {
            return Ok(None);
        }
        match &self.cipher {
            Some(c) => Ok(Some(c)),
            None => Err(ApiError::new(
                ErrorCode::FailedPrecondition,
                format!(
                    "config {} is a cipher- config but this node has no encryption key \
                     (set config_center.encryption_key)",
                    key.data_id
                ),
            )),
        }
    }

    /// Turns stored content into plain text.
    fn reveal(&self, key: &ConfigKey, content: &str, encrypted: bool) -> Result<String, ApiError> {
        if !encrypted {
            return Ok(content.to_string());
        }
        let cipher = self.cipher.as_ref().ok_or_else(|| {
            ApiError::new(
                ErrorCode::FailedPrecondition,
                format!(
                    "config {key} is encrypted and this node has no encryption key \
                     (set config_center.encryption_key)"
                ),
            )
        })?;
        cipher.decrypt(content, &key.aad()).map_err(|e| {
            ApiError::new(
                ErrorCode::FailedPrecondition,
                format!("cannot decrypt config {key}: {e}"),
            )
        })
    }

    fn check_content(&self, kind: ConfigType, content: &str) -> Result<(), ApiError> {
        if content.len() > self.settings.max_content_bytes {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "content is {} bytes; the limit is {} (config_center.max_content_bytes)",
                    content.len(),
                    self.settings.max_content_bytes
                ),
            ));
        }
        validate(kind, content).map_err(|e| ApiError::bad_request(e.to_string()))
    }

    /// Writes a new version; retries when a concurrent writer won the race.
    async fn write(&self, change: Change<'_>) -> Result<ConfigItem, ApiError> {
        let key = change.key;
        let cipher = self.cipher_for(key)?;
        self.check_content(change.kind, change.content)?;
        for _ in 0..8 {
            let current = self.view.item(key);
            (change.condition)(current.as_ref())?;
            let version = self.view.max_version(key) + 1;
            let stored_content = match cipher {
                Some(c) => c.encrypt(change.content, &key.aad()),
                None => change.content.to_string(),
            };
            let md5 = md5_hex(change.content);
            // An encrypted config stores no digest of its plain text; views compute it.
            let stored_md5 = if cipher.is_some() {
                String::new()
            } else {
                md5.clone()
            };
            let now = now_ms();
            let item = ConfigItem {
                key: key.clone(),
                content: stored_content.clone(),
                kind: change.kind,
                md5: stored_md5.clone(),
                version,
                desc: change
                    .desc
                    .clone()
                    .or_else(|| current.as_ref().map(|s| s.item.desc.clone()))
                    .unwrap_or_default(),
                tags: change
                    .tags
                    .clone()
                    .or_else(|| current.as_ref().map(|s| s.item.tags.clone()))
                    .unwrap_or_default(),
                modified_at: now,
                source: change.source.to_string(),
                encrypted: cipher.is_some(),
            };
            let history = HistoryEntry {
                version,
                op: change.op,
                content: stored_content,
                md5: stored_md5,
                kind: change.kind,
                modified_at: now,
                source: change.source.to_string(),
                encrypted: cipher.is_some(),
            };
            let mut success = vec![
                put_op(key.item_key(), json(&item)?),
                put_op(key.history_key(version), json(&history)?),
            ];
            success.extend(self.trim_history(key, version));
            success.extend(change.extra.iter().cloned());
            let mod_revision = current.as_ref().map(|s| s.mod_revision).unwrap_or(0);
            let response = self
                .txn(TxnRequest {
                    compare: [
                        compare(key.item_key(), CompareTarget::ModRevision(mod_revision)),
                        compare(key.history_key(version), CompareTarget::CreateRevision(0)),
                    ]
                    .into_iter()
                    .chain(change.extra_compares.iter().cloned())
                    .collect(),
                    success,
                    failure: vec![],
                })
                .await?;
            if response.succeeded {
                self.settle(response.header.revision).await;
                debug!(config = %key, version, op = ?change.op, "config published");
                return Ok(ConfigItem { md5, ..item });
            }
            // Someone else wrote first; wait for the view to see it and try again.
            // The failed transaction was answered at the revision of the write that beat it:
            // waiting for exactly that never waits for an unrelated later write.
            self.settle(response.header.revision).await;
        }
        Err(ApiError::unavailable(format!(
            "config {key} kept changing during the write; retry"
        )))
    }

    /// Publishes a new version.
    pub async fn publish(&self, request: Publish, source: &str) -> Result<ConfigItem, ApiError> {
        self.metrics.op("publish");
        let key = ConfigKey::new(
            request.namespace.as_deref(),
            request.group.as_deref(),
            &request.data_id,
        )?;
        let kind = request
            .kind
            .or_else(|| self.view.item(&key).map(|s| s.item.kind))
            .unwrap_or_default();
        let if_md5 = request.if_md5.clone();
        let if_version = request.if_version;
        let condition = move |current: Option<&StoredItem>| {
            let (md5, version) = current
                .map(|c| (c.md5.as_str(), c.item.version))
                .unwrap_or(("", 0));
            if let Some(want) = &if_md5 {
                if want != md5 {
                    return Err(ApiError::new(
                        ErrorCode::FailedPrecondition,
                        format!(
                            "compare-and-set failed: the current md5 is {:?}, not {want:?} \
                             (current version {version})",
                            md5
                        ),
                    ));
                }
            }
            if let Some(want) = if_version {
                if want != version {
                    return Err(ApiError::new(
                        ErrorCode::FailedPrecondition,
                        format!(
                            "compare-and-set failed: the current version is {version}, not {want}"
                        ),
                    ));
                }
            }
            Ok(())
        };
        self.write(Change {
            key: &key,
            content: &request.content,
            kind,
            desc: request.desc,
            tags: request.tags,
            op: Operation::Publish,
            source,
            extra: vec![],
            extra_compares: vec![],
            condition: &condition,
        })
        .await
    }

    /// Deletes a config (and its gray release); its history stays.
    pub async fn delete(&self, key: &ConfigKey, source: &str) -> Result<u64, ApiError> {
        self.metrics.op("delete");
        for _ in 0..8 {
            let current = self.view.item(key).ok_or_else(|| not_found(key))?;
            let version = self.view.max_version(key) + 1;
            let history = HistoryEntry {
                version,
                op: Operation::Delete,
                content: String::new(),
                md5: String::new(),
                kind: current.item.kind,
                modified_at: now_ms(),
                source: source.to_string(),
                encrypted: false,
            };
            let response = self
                .txn(TxnRequest {
                    compare: vec![compare(
                        key.item_key(),
                        CompareTarget::ModRevision(current.mod_revision),
                    )],
                    success: [
                        delete_op(key.item_key()),
                        delete_op(key.gray_key()),
                        put_op(key.history_key(version), json(&history)?),
                    ]
                    .into_iter()
                    .chain(self.trim_history(key, version))
                    .collect(),
                    failure: vec![],
                })
                .await?;
            if response.succeeded {
                self.settle(response.header.revision).await;
                info!(config = %key, version, "config deleted");
                return Ok(version);
            }
            // The failed transaction was answered at the revision of the write that beat it:
            // waiting for exactly that never waits for an unrelated later write.
            self.settle(response.header.revision).await;
        }
        Err(ApiError::unavailable(format!(
            "config {key} kept changing during the delete; retry"
        )))
    }

    /// What `client` sees now: the gray release if it matches, else the current version.
    pub fn get(&self, key: &ConfigKey, client: &ClientIdentity) -> Result<Served, ApiError> {
        self.metrics.op("get");
        let current = self.view.item(key).ok_or_else(|| not_found(key))?;
        let item = &current.item;
        if let Some(StoredGray { gray, md5, .. }) = self.view.gray(key) {
            if gray.rule.matches(client) {
                return Ok(Served {
                    key: key.clone(),
                    content: self.reveal(key, &gray.content, gray.encrypted)?,
                    kind: item.kind,
                    md5,
                    version: item.version,
                    gray: true,
                    modified_at: gray.created_at,
                });
            }
        }
        Ok(Served {
            key: key.clone(),
            content: self.reveal(key, &item.content, item.encrypted)?,
            kind: item.kind,
            md5: current.md5.clone(),
            version: item.version,
            gray: false,
            modified_at: item.modified_at,
        })
    }

    /// The md5 `client` would see now ("" when the config does not exist), for listeners.
    pub fn md5_for(&self, key: &ConfigKey, client: &ClientIdentity) -> String {
        let Some(current) = self.view.item(key) else {
            return String::new();
        };
        if let Some(stored) = self.view.gray(key) {
            if stored.gray.rule.matches(client) {
                return stored.md5;
            }
        }
        current.md5
    }

    /// Reads the history, oldest first (contents revealed only with `with_content`).
    pub async fn history(
        &self,
        key: &ConfigKey,
        with_content: bool,
    ) -> Result<Vec<HistoryEntry>, ApiError> {
        self.metrics.op("history");
        let response = self
            .store
            .range(RangeRequest {
                key: key.history_prefix().into_bytes(),
                prefix: true,
                serializable: true,
                ..RangeRequest::default()
            })
            .await?;
        let mut entries = Vec::with_capacity(response.kvs.len());
        for kv in response.kvs {
            let mut entry: HistoryEntry = serde_json::from_slice(&kv.value)
                .map_err(|e| ApiError::internal(format!("history of {key} is undecodable: {e}")))?;
            if entry.encrypted {
                let plain = self.reveal(key, &entry.content, true)?;
                entry.md5 = md5_hex(&plain);
                entry.content = plain;
                entry.encrypted = false;
            }
            if !with_content {
                entry.content.clear();
            }
            entries.push(entry);
        }
        if entries.is_empty() {
            return Err(not_found(key));
        }
        Ok(entries)
    }

    /// One version's entry, content revealed.
    pub async fn version(&self, key: &ConfigKey, version: u64) -> Result<HistoryEntry, ApiError> {
        let response = self
            .store
            .range(RangeRequest {
                key: key.history_key(version).into_bytes(),
                serializable: true,
                ..RangeRequest::default()
            })
            .await?;
        let Some(kv) = response.kvs.into_iter().next() else {
            let max = self.view.max_version(key);
            return Err(ApiError::not_found(if max == 0 {
                format!("config {key} has no history")
            } else {
                format!(
                    "version {version} of config {key} does not exist (versions go up to \
                     {max}; the oldest ones beyond config_center.history_retention are dropped)"
                )
            }));
        };
        let mut entry: HistoryEntry = serde_json::from_slice(&kv.value)
            .map_err(|e| ApiError::internal(format!("history of {key} is undecodable: {e}")))?;
        if entry.encrypted {
            entry.content = self.reveal(key, &entry.content, true)?;
            entry.md5 = md5_hex(&entry.content);
            entry.encrypted = false;
        }
        Ok(entry)
    }

    /// A unified diff between two versions.
    pub async fn diff(&self, key: &ConfigKey, from: u64, to: u64) -> Result<String, ApiError> {
        self.metrics.op("diff");
        let old = self.version(key, from).await?;
        let new = self.version(key, to).await?;
        Ok(crate::diff::unified(
            &old.content,
            &new.content,
            &format!("{} version {from}", key.data_id),
            &format!("{} version {to}", key.data_id),
        ))
    }

    /// Publishes an old version's content as a new version.
    pub async fn rollback(
        &self,
        key: &ConfigKey,
        to_version: u64,
        source: &str,
    ) -> Result<ConfigItem, ApiError> {
        self.metrics.op("rollback");
        let entry = self.version(key, to_version).await?;
        if entry.op == Operation::Delete {
            return Err(ApiError::bad_request(format!(
                "version {to_version} of config {key} is a delete; roll back to a published version"
            )));
        }
        self.write(Change {
            key,
            content: &entry.content,
            kind: entry.kind,
            desc: None,
            tags: None,
            op: Operation::Rollback,
            source,
            extra: vec![],
            extra_compares: vec![],
            condition: &|_| Ok(()),
        })
        .await
    }

    /// Starts (or replaces) a gray release of an existing config.
    pub async fn gray(
        &self,
        key: &ConfigKey,
        content: &str,
        rule: GrayRule,
    ) -> Result<Gray, ApiError> {
        self.metrics.op("gray");
        let current = self.view.item(key).ok_or_else(|| {
            ApiError::not_found(format!(
                "config {key} does not exist; publish it before starting a gray release"
            ))
        })?;
        match &rule {
            GrayRule::Ips(ips) if ips.is_empty() => {
                return Err(ApiError::bad_request(
                    "a gray release needs at least one IP",
                ))
            }
            GrayRule::Labels(labels) if labels.is_empty() => {
                return Err(ApiError::bad_request(
                    "a gray release needs at least one label",
                ))
            }
            _ => {}
        }
        let cipher = self.cipher_for(key)?;
        self.check_content(current.item.kind, content)?;
        let md5 = md5_hex(content);
        let gray = Gray {
            content: match cipher {
                Some(c) => c.encrypt(content, &key.aad()),
                None => content.to_string(),
            },
            md5: if cipher.is_some() {
                String::new()
            } else {
                md5.clone()
            },
            rule,
            created_at: now_ms(),
            encrypted: cipher.is_some(),
        };
        let response = self
            .txn(TxnRequest {
                compare: vec![compare(
                    key.item_key(),
                    CompareTarget::ModRevision(current.mod_revision),
                )],
                success: vec![put_op(key.gray_key(), json(&gray)?)],
                failure: vec![],
            })
            .await?;
        if !response.succeeded {
            return Err(ApiError::unavailable(format!(
                "config {key} changed while starting the gray release; retry"
            )));
        }
        self.settle(response.header.revision).await;
        info!(config = %key, "gray release started");
        Ok(Gray { md5, ..gray })
    }

    fn current_gray(&self, key: &ConfigKey) -> Result<StoredGray, ApiError> {
        self.view
            .gray(key)
            .ok_or_else(|| ApiError::not_found(format!("config {key} has no gray release running")))
    }

    /// Publishes the gray content to everyone and ends the gray release.
    pub async fn gray_promote(
        &self,
        key: &ConfigKey,
        source: &str,
    ) -> Result<ConfigItem, ApiError> {
        self.metrics.op("gray_promote");
        let StoredGray {
            gray,
            mod_revision: gray_revision,
            ..
        } = self.current_gray(key)?;
        let current: StoredItem = self.view.item(key).ok_or_else(|| not_found(key))?;
        let content = self.reveal(key, &gray.content, gray.encrypted)?;
        let gray_key = key.gray_key();
        let condition = move |_: Option<&StoredItem>| Ok(());
        let item = self
            .write(Change {
                key,
                content: &content,
                kind: current.item.kind,
                desc: None,
                tags: None,
                op: Operation::GrayPromote,
                source,
                extra: vec![delete_op(gray_key.clone())],
                // Promote the gray release that was read, not one that replaced it since.
                extra_compares: vec![compare(gray_key, CompareTarget::ModRevision(gray_revision))],
                condition: &condition,
            })
            .await?;
        debug!(config = %key, gray_revision, "gray release promoted");
        Ok(item)
    }

    /// Ends a gray release without publishing it.
    pub async fn gray_abort(&self, key: &ConfigKey) -> Result<(), ApiError> {
        self.metrics.op("gray_abort");
        let gray_revision = self.current_gray(key)?.mod_revision;
        let response = self
            .txn(TxnRequest {
                compare: vec![compare(
                    key.gray_key(),
                    CompareTarget::ModRevision(gray_revision),
                )],
                success: vec![delete_op(key.gray_key())],
                failure: vec![],
            })
            .await?;
        if !response.succeeded {
            return Err(ApiError::unavailable(format!(
                "the gray release of {key} changed while aborting it; retry"
            )));
        }
        self.settle(response.header.revision).await;
        info!(config = %key, "gray release aborted");
        Ok(())
    }

    /// Configs of a namespace, filtered.
    pub fn list(
        &self,
        ns: &str,
        group: Option<&str>,
        prefix: Option<&str>,
        tag: Option<&str>,
    ) -> Vec<Summary> {
        self.metrics.op("list");
        self.view
            .items(|i| {
                i.key.namespace == ns
                    && group.is_none_or(|g| i.key.group == g)
                    && prefix.is_none_or(|p| i.key.data_id.starts_with(p))
                    && tag.is_none_or(|t| i.tags.iter().any(|x| x == t))
            })
            .into_iter()
            .map(|s| Summary {
                gray: self.view.gray(&s.item.key).is_some(),
                key: s.item.key.clone(),
                kind: s.item.kind,
                md5: s.md5.clone(),
                version: s.item.version,
                desc: s.item.desc.clone(),
                tags: s.item.tags.clone(),
                modified_at: s.item.modified_at,
                encrypted: s.item.encrypted,
            })
            .collect()
    }

    /// Long-poll: waits until one of `watched` (config, md5 the client has) differs from what
    /// `client` would see, or `timeout` passes; returns the configs that differ.
    pub async fn wait_changed(
        &self,
        watched: &[(ConfigKey, String)],
        client: &ClientIdentity,
        timeout: Duration,
    ) -> Vec<ConfigKey> {
        let mut changes = self.view.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed: Vec<ConfigKey> = watched
                .iter()
                .filter(|(key, md5)| self.md5_for(key, client) != *md5)
                .map(|(key, _)| key.clone())
                .collect();
            if !changed.is_empty() {
                return changed;
            }
            // Wait for a change to one of ours (or a reload), then look again.
            loop {
                match tokio::time::timeout_at(deadline, changes.recv()).await {
                    Err(_) => return Vec::new(),
                    Ok(Ok(change)) => match change.key() {
                        Some(k) if !watched.iter().any(|(w, _)| w == k) => continue,
                        _ => break,
                    },
                    Ok(Err(_)) => break,
                }
            }
        }
    }
}

impl strata_api::config::ConfigService for ConfigCenter {
    fn get(&self, key: &ConfigKey, client: &ClientIdentity) -> Result<Served, ApiError> {
        ConfigCenter::get(self, key, client)
    }

    fn publish<'a>(
        &'a self,
        request: Publish,
        source: &'a str,
    ) -> strata_api::BoxFuture<'a, Result<ConfigItem, ApiError>> {
        Box::pin(ConfigCenter::publish(self, request, source))
    }

    fn delete<'a>(
        &'a self,
        key: &'a ConfigKey,
        source: &'a str,
    ) -> strata_api::BoxFuture<'a, Result<u64, ApiError>> {
        Box::pin(ConfigCenter::delete(self, key, source))
    }

    fn wait_changed<'a>(
        &'a self,
        watched: &'a [(ConfigKey, String)],
        client: &'a ClientIdentity,
        timeout: Duration,
    ) -> strata_api::BoxFuture<'a, Vec<ConfigKey>> {
        Box::pin(ConfigCenter::wait_changed(self, watched, client, timeout))
    }

    fn listening(&self, op: &'static str) -> Box<dyn Send> {
        self.metrics.op(op);
        Box::new(crate::metrics::ListenerGauge::new(&self.metrics.listeners))
    }
}
