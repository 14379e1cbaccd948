//! Reading configs from the config center with a local snapshot, so an application starts
//! with its last known config when no node is reachable (as Nacos and Apollo clients do).
//!
//! Every successful read is written to `SNAPSHOT_DIR/NAMESPACE/GROUP/DATA_ID` (atomically:
//! a temp file, then a rename). When the cluster cannot be reached, the snapshot is served
//! instead and a warning says so. An error the cluster answers (the config does not exist, a
//! bad name) is returned as is: the snapshot stands in only for an unreachable cluster.

use crate::{Client, ClientError};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tracing::{info, warn};

/// A config as the application sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The content.
    pub content: String,
    /// Its version, when read from the cluster (`None` from a snapshot).
    pub version: Option<u64>,
    /// True when the cluster was unreachable and this came from the local snapshot.
    pub from_snapshot: bool,
}

#[derive(Deserialize)]
struct Served {
    content: String,
    version: u64,
}

/// A config reader with a local snapshot folder.
pub struct ConfigClient {
    client: Client,
    snapshot_dir: PathBuf,
}

fn part(name: &str) -> Result<&str, ClientError> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    if ok {
        Ok(name)
    } else {
        Err(ClientError::Transport(format!(
            "invalid config name {name:?}: use a-z, A-Z, 0-9 and '-_.:'"
        )))
    }
}

impl ConfigClient {
    /// Reads through `client`, keeping snapshots under `snapshot_dir`.
    pub fn new(client: Client, snapshot_dir: impl Into<PathBuf>) -> Self {
        ConfigClient {
            client,
            snapshot_dir: snapshot_dir.into(),
        }
    }

    fn snapshot_path(&self, ns: &str, group: &str, data_id: &str) -> Result<PathBuf, ClientError> {
        Ok(self
            .snapshot_dir
            .join(part(ns)?)
            .join(part(group)?)
            .join(part(data_id)?))
    }

    /// Reads a config; falls back to the snapshot when the cluster is unreachable.
    pub async fn get(&self, ns: &str, group: &str, data_id: &str) -> Result<Config, ClientError> {
        let path = self.snapshot_path(ns, group, data_id)?;
        let query = form_query(&[("namespace", ns), ("group", group), ("data_id", data_id)]);
        match self
            .client
            .get_json::<Served>(&format!("/v1/config/get?{query}"))
            .await
        {
            Ok(served) => {
                if let Err(e) = save(&path, &served.content) {
                    warn!(path = %path.display(), error = %e, "cannot write the config snapshot");
                }
                Ok(Config {
                    content: served.content,
                    version: Some(served.version),
                    from_snapshot: false,
                })
            }
            Err(ClientError::Transport(reason)) => match std::fs::read_to_string(&path) {
                Ok(content) => {
                    warn!(
                        config = %format!("{ns}/{group}/{data_id}"),
                        snapshot = %path.display(),
                        reason = %reason,
                        "config center unreachable; starting from the local snapshot"
                    );
                    Ok(Config {
                        content,
                        version: None,
                        from_snapshot: true,
                    })
                }
                Err(e) => {
                    info!(snapshot = %path.display(), error = %e, "no local snapshot");
                    Err(ClientError::Transport(format!(
                        "{reason}; and no local snapshot at {}",
                        path.display()
                    )))
                }
            },
            Err(e) => Err(e),
        }
    }
}

fn form_query(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", percent(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn percent(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn save(path: &Path, content: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp-snapshot");
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, path)
}
