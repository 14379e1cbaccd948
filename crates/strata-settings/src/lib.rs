//! The node configuration: one TOML tree ([`NodeConfig`]), validated once into
//! [`ValidatedConfig`], which is the only type components accept.
//!
//! Unknown keys are rejected (`deny_unknown_fields`), durations are human strings (`"150ms"`),
//! sizes are human strings (`"1.5MiB"`). `strata server --sample-config` prints
//! [`NodeConfig::sample_toml`]. No I/O here except reading the file.

pub use strata_api::units::{ByteSize, HumanDuration};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The longest duration any setting may have (100 years), so that adding one to a clock
/// cannot overflow.
const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 24 * 3600);

/// Why a configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The TOML is malformed or has an unknown key.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said (names the unknown key, if that was it).
        message: String,
    },
    /// A value is out of range or inconsistent with another.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// The configuration of one node.
///
/// Node-level keys are fields; each component's settings are a table named after it
/// (`[registry]`, `[config_center]`, ...) kept in [`NodeConfig::sections`] and checked by the
/// component itself. Listener addresses live in `[listen]`; the older `NAME_addr` keys still
/// work and mean the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeConfig {
    /// This node's id: a positive integer, unique in the cluster, never reused.
    #[serde(default = "default_id")]
    pub id: u64,
    /// Folder holding this node's log, snapshots and lock file.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Where the client HTTP API, /metrics, /livez and /readyz listen. Port 0 picks a free one.
    #[serde(default = "default_api_addr")]
    pub api_addr: String,
    /// Where node-to-node (Raft) traffic listens. Port 0 picks a free one.
    #[serde(default = "default_raft_addr")]
    pub raft_addr: String,
    /// Where the etcd v3 gRPC API listens (etcdctl, etcd client libraries). Unset: disabled.
    /// Port 0 picks a free one.
    #[serde(default)]
    pub grpc_addr: Option<String>,
    /// Where the Consul-compatible HTTP API listens (registry). Unset: disabled.
    #[serde(default)]
    pub consul_addr: Option<String>,
    /// Where the Nacos-compatible HTTP API listens (config center and naming). Unset: disabled.
    #[serde(default)]
    pub nacos_addr: Option<String>,
    /// Where DNS (UDP and TCP) for service discovery listens. Unset: disabled.
    #[serde(default)]
    pub dns_addr: Option<String>,
    /// The registry's DNS domain (`[registry] dns_domain`; this top-level key is its older
    /// spelling and still works).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_domain: Option<String>,
    /// Listener addresses by name (`api`, `raft`, `grpc`, `consul`, `dns`, `nacos`, and those
    /// of later components). A component listener without an address is off. Port 0 picks a
    /// free port.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub listen: BTreeMap<String, String>,
    /// The components this node runs, by name. Unset: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
    /// Address other nodes use to reach this node's raft listener, if different from
    /// `raft_addr` (e.g. when listening on 0.0.0.0).
    #[serde(default)]
    pub advertise_raft_addr: Option<String>,
    /// Address clients are told to use for this node's API, if different from `api_addr`.
    #[serde(default)]
    pub advertise_api_addr: Option<String>,
    /// The founding members, id -> raft address. Empty: this node waits to be added with
    /// `strata cluster add-member` (or, with `strata dev`, founds a one-node cluster).
    #[serde(default, deserialize_with = "member_map")]
    pub initial_cluster: BTreeMap<u64, String>,
    /// Raft timing and log retention.
    #[serde(default)]
    pub raft: RaftConfig,
    /// KV limits and compaction.
    #[serde(default)]
    pub kv: KvConfig,
    /// How long a graceful shutdown may take before it is aborted.
    #[serde(default = "default_grace_period")]
    pub shutdown_grace_period: HumanDuration,
    /// Write this node's bound addresses as JSON to this file once listening (for tests and
    /// scripts that start nodes on port 0).
    #[serde(default)]
    pub addrs_file: Option<PathBuf>,
    /// TLS for the client listeners (`[tls]`).
    #[serde(default, skip_serializing_if = "TlsConfig::is_off")]
    pub tls: TlsConfig,
    /// Mutual TLS between raft peers (`[peer_tls]`).
    #[serde(default, skip_serializing_if = "PeerTlsConfig::is_off")]
    pub peer_tls: PeerTlsConfig,
    /// Serve with access control on until the records turn it on or off (`strata server
    /// --root-password-file`: closed from the first request until root is written). Not a
    /// file key.
    #[serde(skip)]
    pub start_closed: bool,
    /// Component sections, by component name; each component checks its own.
    #[serde(flatten)]
    pub sections: BTreeMap<String, toml::Value>,
}

/// Raft timing and log retention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaftConfig {
    /// How often the leader sends heartbeats.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval: HumanDuration,
    /// Lower bound of the randomized election timeout.
    #[serde(default = "default_election_min")]
    pub election_timeout_min: HumanDuration,
    /// Upper bound of the randomized election timeout (also the leader lease).
    #[serde(default = "default_election_max")]
    pub election_timeout_max: HumanDuration,
    /// Build a snapshot (and purge the log behind it) after this many new entries.
    #[serde(default = "default_snapshot_entries")]
    pub snapshot_entries: u64,
    /// A snapshot that is due by `snapshot_entries` waits until the log written since the last
    /// snapshot is at least this fraction of that snapshot's size, so the cost of snapshots
    /// per write stays constant as the store grows. 0 turns the rule off.
    #[serde(default = "default_snapshot_log_ratio")]
    pub snapshot_log_ratio: f64,
    /// Entries kept in the log behind a snapshot, so slightly lagging followers catch up
    /// from the log instead of a full snapshot.
    #[serde(default = "default_keep_entries")]
    pub keep_entries_after_snapshot: u64,
}

/// Automatic compaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AutoCompactionMode {
    /// Never compact automatically.
    Off,
    /// Keep the last `auto_compaction_retention` revisions (a number).
    Revision,
    /// Keep the revisions of the last `auto_compaction_retention` (a duration).
    Periodic,
}

/// KV limits and compaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvConfig {
    /// Largest request body accepted, and largest key + value in one put.
    #[serde(default = "default_max_request")]
    pub max_request_bytes: ByteSize,
    /// Most operations in one transaction (both branches counted separately).
    #[serde(default = "default_max_txn_ops")]
    pub max_txn_ops: usize,
    /// Automatic compaction: off, revision or periodic.
    #[serde(default = "default_compaction_mode")]
    pub auto_compaction_mode: AutoCompactionMode,
    /// For `revision`: how many revisions to keep, e.g. "10000". For `periodic`: how long,
    /// e.g. "1h".
    #[serde(default = "default_compaction_retention")]
    pub auto_compaction_retention: String,
    /// How often watches that asked for progress notifications get one while idle.
    #[serde(default = "default_progress_interval")]
    pub watch_progress_interval: HumanDuration,
    /// How long a client request waits for a leader before failing with `unavailable`.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: HumanDuration,
    /// Free space the data folder's file system keeps: below it the node refuses writes
    /// (`no_space`) and serves reads until space is freed.
    #[serde(default = "default_disk_reserve")]
    pub disk_reserve: ByteSize,
}

fn default_id() -> u64 {
    1
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./strata-data")
}

fn default_api_addr() -> String {
    "127.0.0.1:7700".into()
}
fn default_raft_addr() -> String {
    "127.0.0.1:7701".into()
}
fn default_grace_period() -> HumanDuration {
    HumanDuration::from_millis(10_000)
}
fn default_heartbeat() -> HumanDuration {
    HumanDuration::from_millis(100)
}
fn default_election_min() -> HumanDuration {
    HumanDuration::from_millis(300)
}
fn default_election_max() -> HumanDuration {
    HumanDuration::from_millis(600)
}
fn default_snapshot_entries() -> u64 {
    10_000
}
fn default_snapshot_log_ratio() -> f64 {
    0.5
}
fn default_keep_entries() -> u64 {
    1_000
}
fn default_max_request() -> ByteSize {
    ByteSize(1024 * 1024 * 3 / 2)
}
fn default_max_txn_ops() -> usize {
    128
}
fn default_compaction_mode() -> AutoCompactionMode {
    AutoCompactionMode::Revision
}
fn default_compaction_retention() -> String {
    "100000".into()
}
fn default_progress_interval() -> HumanDuration {
    HumanDuration::from_millis(10_000)
}
fn default_request_timeout() -> HumanDuration {
    HumanDuration::from_millis(10_000)
}
fn default_disk_reserve() -> ByteSize {
    ByteSize(128 * 1024 * 1024)
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            heartbeat_interval: default_heartbeat(),
            election_timeout_min: default_election_min(),
            election_timeout_max: default_election_max(),
            snapshot_entries: default_snapshot_entries(),
            snapshot_log_ratio: default_snapshot_log_ratio(),
            keep_entries_after_snapshot: default_keep_entries(),
        }
    }
}

impl Default for KvConfig {
    fn default() -> Self {
        KvConfig {
            max_request_bytes: default_max_request(),
            max_txn_ops: default_max_txn_ops(),
            auto_compaction_mode: default_compaction_mode(),
            auto_compaction_retention: default_compaction_retention(),
            watch_progress_interval: default_progress_interval(),
            request_timeout: default_request_timeout(),
            disk_reserve: default_disk_reserve(),
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: default_id(),
            data_dir: default_data_dir(),
            api_addr: default_api_addr(),
            raft_addr: default_raft_addr(),
            grpc_addr: None,
            consul_addr: None,
            nacos_addr: None,
            dns_addr: None,
            dns_domain: None,
            listen: BTreeMap::new(),
            roles: None,
            advertise_raft_addr: None,
            advertise_api_addr: None,
            initial_cluster: BTreeMap::new(),
            raft: RaftConfig::default(),
            kv: KvConfig::default(),
            shutdown_grace_period: default_grace_period(),
            addrs_file: None,
            tls: TlsConfig::default(),
            peer_tls: PeerTlsConfig::default(),
            start_closed: false,
            sections: BTreeMap::new(),
        }
    }
}

/// TLS for the client listeners (the native API, etcd gRPC, Consul, Nacos; DNS stays plain).
/// Files are PEM and are reloaded when they change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first. Set with `key_file` to turn TLS on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// The certificate's private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The CA that signs client certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Client certificates: `none`, `optional` (the default when `ca_file` is set: a client
    /// may log in with one, its name is the user) or `require`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<String>,
}

impl TlsConfig {
    /// True when no TLS key is set.
    pub fn is_off(&self) -> bool {
        *self == TlsConfig::default()
    }
}

/// Mutual TLS between raft peers: each node serves its raft listener with `cert_file` and asks
/// every caller for a certificate signed by `ca_file` (the cluster CA), and presents the same
/// certificate when it calls a peer. All three files or none; reloaded when they change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerTlsConfig {
    /// This node's certificate chain, leaf first (server and client use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// The certificate's private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The cluster CA: the only issuer whose certificates a peer accepts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The names (common name, else first DNS name) a peer's certificate may carry, as etcd's
    /// `--peer-cert-allowed-cn`. Required when the cluster CA also signs client certificates
    /// (`[tls] ca_file` is the same file): else any user's certificate would pass as a peer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_names: Vec<String>,
}

impl PeerTlsConfig {
    /// True when no peer TLS file is set.
    pub fn is_off(&self) -> bool {
        *self == PeerTlsConfig::default()
    }
}

/// Automatic compaction, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Never.
    Off,
    /// Keep this many revisions.
    Revisions(i64),
    /// Keep this much time.
    Period(std::time::Duration),
}

/// A configuration that passed [`NodeConfig::validate`].
#[derive(Debug, Clone)]
pub struct ValidatedConfig {
    /// The checked configuration. Older spellings are folded in: `dns_domain` into the
    /// `[registry]` section.
    pub config: NodeConfig,
    /// Automatic compaction, parsed.
    pub auto_compaction: AutoCompaction,
    /// Every configured listener, name -> `HOST:PORT`, from `[listen]` and the older
    /// `NAME_addr` keys (always `api` and `raft`).
    pub listen: BTreeMap<String, String>,
}

/// The older top-level keys for listener addresses, and the listener each names.
const LEGACY_LISTENERS: [(&str, &str); 4] = [
    ("grpc_addr", "grpc"),
    ("consul_addr", "consul"),
    ("dns_addr", "dns"),
    ("nacos_addr", "nacos"),
];

/// The flag that sets listener `name` (older listeners have their own flag).
pub fn listener_flag(name: &str) -> String {
    if ["api", "raft"].contains(&name) || LEGACY_LISTENERS.iter().any(|(_, n)| *n == name) {
        format!("--{name}-addr")
    } else {
        format!("--listen {name}=HOST:PORT")
    }
}

/// Reads `[initial_cluster]` whose keys are node ids written as TOML keys (always strings).
fn member_map<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<u64, String>, D::Error> {
    let raw = BTreeMap::<String, String>::deserialize(deserializer)?;
    raw.into_iter()
        .map(|(id, addr)| match id.trim().parse::<u64>() {
            Ok(id) => Ok((id, addr)),
            Err(_) => Err(serde::de::Error::custom(format!(
                "initial_cluster key {id:?} is not a node id"
            ))),
        })
        .collect()
}

impl std::ops::Deref for ValidatedConfig {
    type Target = NodeConfig;
    fn deref(&self) -> &NodeConfig {
        &self.config
    }
}

impl NodeConfig {
    /// Reads and parses a TOML file. Unknown keys are errors that name the key.
    pub fn from_file(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses TOML text. A top-level key that is neither a node setting nor a table (a
    /// component section) is an error that names it; section names are checked against the
    /// node's components by the node.
    pub fn from_toml(text: &str) -> Result<NodeConfig, String> {
        let config: NodeConfig =
            toml::from_str(text).map_err(|e| e.to_string().trim().replace('\n', " "))?;
        if let Some((key, _)) = config.sections.iter().find(|(_, v)| !v.is_table()) {
            return Err(format!("unknown key `{key}`"));
        }
        Ok(config)
    }

    /// Returns a commented TOML document of the defaults.
    pub fn sample_toml() -> String {
        let body = toml::to_string_pretty(&NodeConfig::default())
            .expect("the default config always serializes");
        format!(
            "# Strata node configuration. Every key is optional; shown are the defaults.\n\
             # Durations are strings like \"150ms\" or \"10s\"; sizes like \"1.5MiB\".\n\
             # id: unique positive node id.  data_dir: log, snapshots, lock file.\n\
             # api_addr: client HTTP API + /metrics.  raft_addr: node-to-node traffic.\n\
             # Component listeners are off until given an address in a [listen] table, e.g.\n\
             #   [listen]\n\
             #   grpc = \"127.0.0.1:7702\"     # etcd v3 gRPC API\n\
             #   consul = \"127.0.0.1:7705\"   # Consul-compatible API\n\
             #   dns = \"127.0.0.1:7703\"      # registry DNS, UDP and TCP\n\
             #   nacos = \"127.0.0.1:7848\"    # Nacos-compatible API\n\
             # (grpc_addr, consul_addr, dns_addr and nacos_addr are older spellings of the same.)\n\
             # roles = [\"etcd\", \"registry\", \"config_center\", \"nacos\"] limits the components run\n\
             # (unset: all). Each component's own section follows the node's keys below.\n\
             # initial_cluster: founding members as a table, e.g.\n\
             #   [initial_cluster]\n\
             #   1 = \"10.0.0.1:7701\"\n\
             #   2 = \"10.0.0.2:7701\"\n\
             #   3 = \"10.0.0.3:7701\"\n\
             # Leave it out to join an existing cluster via `strata cluster add-member`.\n\
             # kv.auto_compaction_mode: off | revision | periodic; retention is a count or a duration.\n\
             # [tls] cert_file + key_file (and ca_file, client_auth) put the client listeners on TLS;\n\
             # [peer_tls] cert_file + key_file + ca_file put raft peers on mutual TLS.\n\n{body}"
        )
    }

    /// Parses `1=host:port,2=host:port` into a member map.
    pub fn parse_initial_cluster(text: &str) -> Result<BTreeMap<u64, String>, ConfigError> {
        let mut members = BTreeMap::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (id, addr) = part.split_once('=').ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "initial cluster entry {part:?} is not ID=HOST:PORT"
                ))
            })?;
            let id: u64 = id.trim().parse().map_err(|_| {
                ConfigError::Invalid(format!(
                    "initial cluster entry {part:?}: {id:?} is not a node id"
                ))
            })?;
            if members.insert(id, addr.trim().to_string()).is_some() {
                return Err(ConfigError::Invalid(format!(
                    "initial cluster lists node {id} twice"
                )));
            }
        }
        Ok(members)
    }

    /// Checks every value and returns the validated configuration.
    pub fn validate(self) -> Result<ValidatedConfig, ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.id == 0 {
            return invalid("id must be a positive integer".into());
        }
        let mut this = self;
        let listen = this.resolve_listeners()?;
        if let Some(domain) = this.dns_domain.take() {
            let registry = this
                .sections
                .entry("registry".to_string())
                .or_insert_with(|| toml::Value::Table(Default::default()));
            let Some(table) = registry.as_table_mut() else {
                return invalid("[registry] must be a table".into());
            };
            match table.get("dns_domain") {
                Some(set) if set.as_str() != Some(domain.as_str()) => {
                    return invalid(format!(
                        "dns_domain {domain:?} and [registry] dns_domain {set} disagree; keep one"
                    ))
                }
                _ => {
                    table.insert("dns_domain".into(), toml::Value::String(domain));
                }
            }
        }
        let self_ = this;
        let this = &self_;
        for (id, addr) in &this.initial_cluster {
            if *id == 0 {
                return invalid("initial cluster ids must be positive".into());
            }
            if !addr.contains(':') {
                return invalid(format!(
                    "initial cluster address {addr:?} of node {id} has no port"
                ));
            }
        }
        if !this.initial_cluster.is_empty() && !this.initial_cluster.contains_key(&this.id) {
            return invalid(format!(
                "initial cluster does not list this node's id {}; add {}=<raft addr>",
                this.id, this.id
            ));
        }
        let raft = &this.raft;
        if raft.heartbeat_interval.0.is_zero() {
            return invalid("raft.heartbeat_interval must be positive".into());
        }
        if raft.election_timeout_min.0 <= raft.heartbeat_interval.0 {
            return invalid("raft.election_timeout_min must exceed raft.heartbeat_interval".into());
        }
        if raft.election_timeout_max.0 <= raft.election_timeout_min.0 {
            return invalid(
                "raft.election_timeout_max must exceed raft.election_timeout_min".into(),
            );
        }
        // Components add these to clocks (`Instant::now() + timeout`), which panics on
        // overflow; no sane setting comes near the bound.
        for (name, value) in [
            ("raft.heartbeat_interval", raft.heartbeat_interval),
            ("raft.election_timeout_min", raft.election_timeout_min),
            ("raft.election_timeout_max", raft.election_timeout_max),
            (
                "kv.watch_progress_interval",
                this.kv.watch_progress_interval,
            ),
            ("kv.request_timeout", this.kv.request_timeout),
            ("shutdown_grace_period", this.shutdown_grace_period),
        ] {
            if value.0 > MAX_DURATION {
                return invalid(format!("{name} must be at most 100 years"));
            }
        }
        if this.kv.watch_progress_interval.0.is_zero() {
            return invalid("kv.watch_progress_interval must be positive".into());
        }
        if raft.snapshot_entries == 0 {
            return invalid("raft.snapshot_entries must be positive".into());
        }
        if !(raft.snapshot_log_ratio.is_finite() && raft.snapshot_log_ratio >= 0.0) {
            return invalid(format!(
                "raft.snapshot_log_ratio must be a number of at least 0, not {}",
                raft.snapshot_log_ratio
            ));
        }
        if this.kv.max_request_bytes.0 < 1024 {
            return invalid("kv.max_request_bytes must be at least 1KiB".into());
        }
        // The log engine flushes memtables of up to 8 MiB into the reserve; a smaller one
        // lets that background flush meet a full disk.
        if this.kv.disk_reserve.0 < 16 * 1024 * 1024 {
            return invalid("kv.disk_reserve must be at least 16MiB".into());
        }
        if this.kv.max_txn_ops == 0 {
            return invalid("kv.max_txn_ops must be positive".into());
        }
        let retention = this.kv.auto_compaction_retention.trim();
        let auto_compaction = match this.kv.auto_compaction_mode {
            AutoCompactionMode::Off => AutoCompaction::Off,
            AutoCompactionMode::Revision => match retention.parse::<i64>() {
                Ok(n) if n > 0 => AutoCompaction::Revisions(n),
                _ => {
                    return invalid(format!(
                        "kv.auto_compaction_retention {retention:?} must be a positive revision count in revision mode"
                    ))
                }
            },
            AutoCompactionMode::Periodic => match humantime::parse_duration(retention) {
                Ok(d) if !d.is_zero() => AutoCompaction::Period(d),
                _ => {
                    return invalid(format!(
                        "kv.auto_compaction_retention {retention:?} must be a duration like \"1h\" in periodic mode"
                    ))
                }
            },
        };
        let tls = &self_.tls;
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return invalid("[tls] needs both cert_file and key_file".into());
        }
        if tls.cert_file.is_none() && (tls.ca_file.is_some() || tls.client_auth.is_some()) {
            return invalid("[tls] ca_file and client_auth need cert_file and key_file".into());
        }
        match tls.client_auth.as_deref() {
            None | Some("none") | Some("optional") => {}
            Some("require") if tls.ca_file.is_some() => {}
            Some("require") => {
                return invalid("[tls] client_auth = \"require\" needs ca_file".into())
            }
            Some(other) => {
                return invalid(format!(
                    "[tls] client_auth {other:?} must be none, optional or require"
                ))
            }
        }
        let peer = &self_.peer_tls;
        if !peer.is_off()
            && (peer.cert_file.is_none() || peer.key_file.is_none() || peer.ca_file.is_none())
        {
            return invalid("[peer_tls] needs cert_file, key_file and ca_file (mutual TLS)".into());
        }
        if let (Some(peer_ca), Some(client_ca)) = (&peer.ca_file, &tls.ca_file) {
            let same = |a: &PathBuf, b: &PathBuf| {
                a == b
                    || std::fs::canonicalize(a)
                        .ok()
                        .zip(std::fs::canonicalize(b).ok())
                        .is_some_and(|(a, b)| a == b)
            };
            if same(peer_ca, client_ca) && peer.allowed_names.is_empty() {
                return invalid(
                    "[peer_tls] ca_file also signs client certificates ([tls] ca_file): any client's certificate would pass as a peer; give peers a CA of their own, or list the peers' certificate names in [peer_tls] allowed_names (--peer-tls-allowed-name)".into(),
                );
            }
        }
        Ok(ValidatedConfig {
            config: self_,
            auto_compaction,
            listen,
        })
    }

    /// Folds the older `NAME_addr` keys into `[listen]` and checks every address.
    fn resolve_listeners(&self) -> Result<BTreeMap<String, String>, ConfigError> {
        let mut listen = self.listen.clone();
        listen
            .entry("api".into())
            .or_insert_with(|| self.api_addr.clone());
        listen
            .entry("raft".into())
            .or_insert_with(|| self.raft_addr.clone());
        let legacy = [
            &self.grpc_addr,
            &self.consul_addr,
            &self.dns_addr,
            &self.nacos_addr,
        ];
        for ((key, name), value) in LEGACY_LISTENERS.iter().zip(legacy) {
            let Some(addr) = value else { continue };
            match listen.get(*name) {
                Some(other) if other != addr => {
                    return Err(ConfigError::Invalid(format!(
                        "{key} {addr:?} and [listen] {name} {other:?} disagree; keep one"
                    )))
                }
                _ => {
                    listen.insert(name.to_string(), addr.clone());
                }
            }
        }
        for (name, addr) in &listen {
            if addr.parse::<SocketAddr>().is_err() {
                return Err(ConfigError::Invalid(format!(
                    "listener {name} address {addr:?} is not HOST:PORT with a numeric IP"
                )));
            }
        }
        Ok(listen)
    }

    /// Returns a loopback configuration for tests: ports 0, the given folder.
    pub fn for_test(id: u64, data_dir: &Path) -> NodeConfig {
        NodeConfig {
            id,
            data_dir: data_dir.to_path_buf(),
            api_addr: "127.0.0.1:0".into(),
            raft_addr: "127.0.0.1:0".into(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_parses_back_to_default() {
        let sample = NodeConfig::sample_toml();
        assert_eq!(
            NodeConfig::from_toml(&sample).unwrap(),
            NodeConfig::default()
        );
    }

    #[test]
    fn initial_cluster_reads_as_a_toml_table_of_ids() {
        let config = NodeConfig::from_toml(
            "[initial_cluster]\n1 = \"10.0.0.1:7701\"\n2 = \"10.0.0.2:7701\"\n",
        )
        .unwrap();
        assert_eq!(config.initial_cluster.len(), 2);
        assert_eq!(config.initial_cluster[&2], "10.0.0.2:7701");
        let err = NodeConfig::from_toml("[initial_cluster]\none = \"a:1\"\n").unwrap_err();
        assert!(err.contains("not a node id"), "{err}");
    }

    #[test]
    fn older_listener_keys_fold_into_listen() {
        let config = NodeConfig::from_toml(
            "grpc_addr = \"127.0.0.1:2379\"\n[listen]\nnacos = \"127.0.0.1:8848\"\n",
        )
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(config.listen["grpc"], "127.0.0.1:2379");
        assert_eq!(config.listen["nacos"], "127.0.0.1:8848");
        assert_eq!(config.listen["api"], "127.0.0.1:7700");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = NodeConfig::from_toml("id = 1\nbogus_key = 3\n").unwrap_err();
        assert!(err.contains("bogus_key"), "{err}");
        let err = NodeConfig::from_toml("[raft]\nheartbeat = \"1s\"\n").unwrap_err();
        assert!(err.contains("heartbeat"), "{err}");
    }

    #[test]
    fn validation_catches_bad_values() {
        let mut config = NodeConfig {
            id: 0,
            ..Default::default()
        };
        assert!(config.clone().validate().is_err());
        config.id = 2;
        config.initial_cluster = NodeConfig::parse_initial_cluster("1=127.0.0.1:1").unwrap();
        let err = config.clone().validate().unwrap_err().to_string();
        assert!(err.contains("does not list this node"), "{err}");
        assert!(NodeConfig::parse_initial_cluster("1=a:1,1=b:2").is_err());
        assert!(NodeConfig::parse_initial_cluster("x=a:1").is_err());
        let config = NodeConfig {
            api_addr: "nope".into(),
            ..Default::default()
        };
        assert!(config.validate().is_err());
        let half = "[peer_tls]\ncert_file = \"n.pem\"\nkey_file = \"n.key\"\n";
        let err = NodeConfig::from_toml(half).unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("[peer_tls] needs"), "{err}");
        let whole = format!("{half}ca_file = \"ca.pem\"\n");
        assert!(NodeConfig::from_toml(&whole).unwrap().validate().is_ok());
        let small = "[kv]\ndisk_reserve = \"4MiB\"\n";
        let err = NodeConfig::from_toml(small)
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("kv.disk_reserve"), "{err}");
    }

    #[test]
    fn durations_that_would_overflow_a_clock_are_refused() {
        // Used to validate, then panic at `Instant::now() + request_timeout` on first use.
        let huge = "[kv]\nrequest_timeout = \"500000000000years\"\n";
        let err = NodeConfig::from_toml(huge).unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("kv.request_timeout"), "{err}");
        // Used to validate, then panic in `tokio::time::interval` when a watch started.
        let zero = "[kv]\nwatch_progress_interval = \"0s\"\n";
        let err = NodeConfig::from_toml(zero).unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("watch_progress_interval"), "{err}");
        let fine = "shutdown_grace_period = \"99years\"\n";
        assert!(NodeConfig::from_toml(fine).unwrap().validate().is_ok());
    }
}
