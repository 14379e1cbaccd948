//! Export and import of a whole namespace as one JSON file.

use crate::center::{ConfigCenter, Publish};
use crate::model::{md5_hex, ConfigKey};
use crate::validate::ConfigType;
use serde::{Deserialize, Serialize};
use strata_proto::error::{ApiError, ErrorCode};

/// The `format` field of an export file.
pub const FORMAT: &str = "strata-settings-export/1";

/// A namespace, exported.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportFile {
    /// Always [`FORMAT`].
    pub format: String,
    /// The namespace it came from.
    pub namespace: String,
    /// Milliseconds since the Unix epoch.
    pub exported_at: u64,
    /// The configs, plain text (cipher- configs are decrypted on export and encrypted again
    /// on import, with the importing cluster's key).
    pub configs: Vec<ExportedConfig>,
}

/// One config in an export file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedConfig {
    /// Group.
    pub group: String,
    /// Data id.
    pub data_id: String,
    /// Declared type.
    #[serde(rename = "type")]
    pub kind: ConfigType,
    /// Content.
    pub content: String,
    /// MD5 of the content (checked on import).
    pub md5: String,
    /// Description.
    #[serde(default)]
    pub desc: String,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// What to do with a config that already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Keep the existing one.
    Skip,
    /// Replace it (a new version).
    Overwrite,
    /// Import nothing if any exists.
    Abort,
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "skip" => Ok(Policy::Skip),
            "overwrite" => Ok(Policy::Overwrite),
            "abort" => Ok(Policy::Abort),
            other => Err(format!(
                "unknown policy {other:?}: use skip, overwrite or abort"
            )),
        }
    }
}

/// What an import did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImportReport {
    /// Configs created.
    pub created: Vec<String>,
    /// Configs replaced.
    pub overwritten: Vec<String>,
    /// Configs left alone.
    pub skipped: Vec<String>,
}

fn corrupt(message: String) -> ApiError {
    ApiError::bad_request(format!("corrupt import file: {message}"))
}

impl ConfigCenter {
    /// Exports every config of a namespace.
    pub fn export(&self, ns: &str) -> Result<ExportFile, ApiError> {
        self.metrics.op("export");
        let mut configs = Vec::new();
        for stored in self.view.items(|i| i.key.namespace == ns) {
            let item = &stored.item;
            let content = if item.encrypted {
                self.cipher
                    .as_ref()
                    .ok_or_else(|| {
                        ApiError::new(
                            ErrorCode::FailedPrecondition,
                            format!("config {} is encrypted and this node has no key", item.key),
                        )
                    })?
                    .decrypt(&item.content, &item.key.aad())
                    .map_err(|e| ApiError::new(ErrorCode::FailedPrecondition, e.to_string()))?
            } else {
                item.content.clone()
            };
            configs.push(ExportedConfig {
                group: item.key.group.clone(),
                data_id: item.key.data_id.clone(),
                kind: item.kind,
                md5: md5_hex(&content),
                content,
                desc: item.desc.clone(),
                tags: item.tags.clone(),
            });
        }
        Ok(ExportFile {
            format: FORMAT.to_string(),
            namespace: ns.to_string(),
            exported_at: crate::model::now_ms(),
            configs,
        })
    }

    /// Imports a file into namespace `ns`. The whole file is checked before anything is
    /// written: a corrupt file, or with [`Policy::Abort`] any existing config, imports nothing.
    pub async fn import(
        &self,
        bytes: &[u8],
        ns: &str,
        policy: Policy,
        source: &str,
    ) -> Result<ImportReport, ApiError> {
        self.metrics.op("import");
        let file: ExportFile = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        if file.format != FORMAT {
            return Err(corrupt(format!(
                "format is {:?}, expected {FORMAT:?}",
                file.format
            )));
        }
        let mut keys = Vec::new();
        for c in &file.configs {
            let key = ConfigKey::new(Some(ns), Some(&c.group), &c.data_id)
                .map_err(|e| corrupt(e.message))?;
            if md5_hex(&c.content) != c.md5 {
                return Err(corrupt(format!(
                    "the md5 of {}/{} does not match its content",
                    c.group, c.data_id
                )));
            }
            crate::validate::validate(c.kind, &c.content)
                .map_err(|e| corrupt(format!("{}/{}: {e}", c.group, c.data_id)))?;
            if keys.contains(&key) {
                return Err(corrupt(format!("{}/{} appears twice", c.group, c.data_id)));
            }
            keys.push(key);
        }
        if policy == Policy::Abort {
            let existing: Vec<String> = keys
                .iter()
                .filter(|k| self.view.item(k).is_some())
                .map(|k| format!("{}/{}", k.group, k.data_id))
                .collect();
            if !existing.is_empty() {
                return Err(ApiError::new(
                    ErrorCode::AlreadyExists,
                    format!(
                        "import aborted, nothing imported: {} config(s) already exist: {}",
                        existing.len(),
                        existing.join(", ")
                    ),
                ));
            }
        }
        let mut report = ImportReport::default();
        for (c, key) in file.configs.into_iter().zip(keys) {
            let name = format!("{}/{}", key.group, key.data_id);
            let exists = self.view.item(&key).is_some();
            if exists && policy == Policy::Skip {
                report.skipped.push(name);
                continue;
            }
            let published = self
                .publish(
                    Publish {
                        namespace: Some(key.namespace.clone()),
                        group: Some(key.group.clone()),
                        data_id: key.data_id.clone(),
                        content: c.content,
                        kind: Some(c.kind),
                        desc: Some(c.desc),
                        tags: Some(c.tags),
                        // Skip and abort never overwrite, even a config created meanwhile.
                        if_version: (policy != Policy::Overwrite).then_some(0),
                        ..Publish::default()
                    },
                    source,
                )
                .await;
            match published {
                Ok(_) => {}
                Err(e) if e.code == ErrorCode::FailedPrecondition && policy == Policy::Skip => {
                    report.skipped.push(name);
                    continue;
                }
                Err(e) => return Err(e),
            }
            if exists {
                report.overwritten.push(name);
            } else {
                report.created.push(name);
            }
        }
        Ok(report)
    }
}
