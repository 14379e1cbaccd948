//! The monitoring center: a component, `monitor`, that scrapes every Strata node and every
//! registered instance that exposes metrics, stores the samples in a time-series store of its
//! own, and answers PromQL through Prometheus's HTTP API on the node's API listener.
//!
//! - [`chunk`]: Gorilla-compressed runs of samples (delta-of-delta timestamps, XOR values).
//! - [`packed`]: block chunks: decimals as integers, deltas packed to the bits they need.
//! - [`model`]: label sets, series, and the [`model::Queryable`] seam the engine reads.
//! - [`store`]: head, write-ahead log, blocks, retention.
//! - [`exposition`]: the text format scrapes return.
//! - [`scrape`]: targets, which monitor node scrapes each, the scrape loops.
//! - [`remote`]: remote write 1.0 (ingest, and replication between monitor nodes).
//! - [`ingest`]: the write path: local store, then every peer.
//! - [`promql`]: the query engine.
//! - [`rules`]: recording and alerting rules, notifications.
//! - [`otlp_metrics`]: the OTLP/HTTP metrics receiver (`/v1/metrics`).
//! - [`traces`]: the OTLP/HTTP traces receiver, the trace store and its search.
//! - [`api`]: the `/api/v1/` routes.

pub mod api;
pub mod chunk;
pub mod exposition;
pub mod ingest;
pub mod model;
mod otlp_http;
pub mod otlp_metrics;
pub mod packed;
pub mod promql;
pub mod remote;
pub mod rules;
pub mod rules_test;
pub mod scrape;
pub mod store;
pub mod traces;

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use strata_api::config::{ClientIdentity, ConfigKey, ConfigService};
use strata_api::units::{ByteSize, HumanDuration};
use strata_component::{parse_section, Component, Context, StartError, Started};
use strata_store::BoxFuture;

/// The component's name and config section.
pub const NAME: &str = "monitor";

/// `[monitor]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// Time between two scrapes of a target.
    pub scrape_interval: HumanDuration,
    /// Longest a scrape may take (at most the interval).
    pub scrape_timeout: HumanDuration,
    /// Samples older than this are deleted (whole blocks at a time).
    pub retention: HumanDuration,
    /// The oldest blocks are deleted while the store is larger than this (0: no limit).
    pub retention_size: ByteSize,
    /// Width of a block on disk.
    pub block_range: HumanDuration,
    /// Blocks older than this are downsampled to one sample per series every 5 minutes, a
    /// day per block (`0s`: keep every sample until retention deletes it).
    pub downsample_after: HumanDuration,
    /// How far back an instant query looks for a series' latest sample.
    pub lookback: HumanDuration,
    /// How often rule groups without an `interval` of their own are evaluated.
    pub evaluation_interval: HumanDuration,
    /// Alertmanager base URLs (`http://HOST:9093`); alerts go to their `/api/v2/alerts`.
    pub alertmanagers: Vec<String>,
    /// Webhook URLs that receive the same JSON array Alertmanager does.
    pub webhooks: Vec<String>,
    /// Targets to scrape besides the cluster's nodes and registered instances.
    pub static_targets: Vec<scrape::StaticTarget>,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            scrape_interval: HumanDuration(Duration::from_secs(15)),
            scrape_timeout: HumanDuration(Duration::from_secs(10)),
            retention: HumanDuration(Duration::from_secs(15 * 24 * 3600)),
            retention_size: ByteSize(0),
            block_range: HumanDuration(Duration::from_secs(2 * 3600)),
            downsample_after: HumanDuration(Duration::from_secs(2 * 24 * 3600)),
            lookback: HumanDuration(Duration::from_secs(300)),
            evaluation_interval: HumanDuration(Duration::from_secs(15)),
            alertmanagers: Vec::new(),
            webhooks: Vec::new(),
            static_targets: Vec::new(),
        }
    }
}

impl MonitorConfig {
    fn check(&self) -> Result<(), String> {
        if self.scrape_interval.0 < Duration::from_millis(100) {
            return Err("[monitor] scrape_interval must be at least 100ms".into());
        }
        if self.block_range.0 < Duration::from_secs(1) {
            return Err("[monitor] block_range must be at least 1s".into());
        }
        if self.evaluation_interval.0 < Duration::from_millis(100) {
            return Err("[monitor] evaluation_interval must be at least 100ms".into());
        }
        for url in self.alertmanagers.iter().chain(&self.webhooks) {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "[monitor] {url:?} is not an http:// or https:// URL"
                ));
            }
        }
        for group in &self.static_targets {
            if !group.metrics_path.starts_with('/') {
                return Err(format!(
                    "[monitor] static target path {:?} must start with /",
                    group.metrics_path
                ));
            }
        }
        Ok(())
    }
}

/// The monitoring center.
pub struct MonitorComponent;

impl Component for MonitorComponent {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check_config(&self, section: Option<&toml::Value>) -> Result<(), String> {
        parse_section::<MonitorConfig>(NAME, section)?.check()
    }

    fn sample_config(&self) -> Option<String> {
        let body = toml::to_string_pretty(&MonitorConfig::default()).ok()?;
        Some(format!("[{NAME}]\n{body}"))
    }

    fn start(&self, ctx: Context) -> BoxFuture<'static, Result<Started, StartError>> {
        Box::pin(async move {
            let config: MonitorConfig = ctx.settings(NAME)?;
            let dir = ctx.data_dir.join("monitor");
            let options = store::Options {
                block_ms: config.block_range.0.as_millis() as i64,
                retention_ms: config.retention.0.as_millis() as i64,
                retention_bytes: config.retention_size.0,
                downsample_after_ms: config.downsample_after.0.as_millis() as i64,
            };
            let opened = {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || store::Store::open(&dir, options))
                    .await
                    .map_err(|e| StartError(format!("monitor store: {e}")))?
            };
            let store = Arc::new(opened.map_err(|e| StartError(format!("monitor store: {e}")))?);
            let (http, scheme) = match &ctx.tls {
                None => (strata_tls::http_client_builder(), "http"),
                Some(tls) => {
                    let files = tls.files();
                    let builder = strata_tls::https_client_builder(
                        files.ca.as_deref(),
                        Some((files.cert.as_path(), files.key.as_path())),
                    )
                    .map_err(|e| StartError(format!("monitor: TLS client: {e}")))?;
                    (builder, "https")
                }
            };
            let http = http
                .pool_idle_timeout(Duration::from_secs(60))
                .build()
                .map_err(|e| StartError(format!("monitor: HTTP client: {e}")))?;
            let notify_http = strata_tls::http_client_builder()
                .build()
                .map_err(|e| StartError(format!("monitor: HTTP client: {e}")))?;
            let ingest = Arc::new(
                ingest::Ingest::new(
                    store.clone(),
                    ctx.peers.clone(),
                    ctx.tracker.clone(),
                    ctx.cancel.clone(),
                    &ctx.metrics,
                )
                .map_err(StartError::from)?,
            );
            register_store_metrics(&ctx.metrics, store.clone())?;
            let targets = Arc::new(scrape::Targets::default());
            let settings = scrape::ScrapeSettings {
                interval: config.scrape_interval.0,
                timeout: config.scrape_timeout.0.min(config.scrape_interval.0),
                statics: config.static_targets.clone(),
            };
            let membership = Arc::new(scrape::Membership::new(ctx.node_id));
            ctx.tracker.spawn(membership.clone().run(
                ctx.kv.clone(),
                http.clone(),
                scheme,
                ctx.cancel.clone(),
            ));
            ctx.tracker.spawn(scrape::run(
                ctx.kv.clone(),
                ctx.node_id,
                membership.clone(),
                settings,
                ingest.clone(),
                targets.clone(),
                http,
                scheme,
                ctx.tracker.clone(),
                ctx.cancel.clone(),
            ));
            ctx.tracker
                .spawn(maintain(store.clone(), ctx.cancel.clone()));
            tracing::info!(node_id = ctx.node_id, dir = %dir.display(), interval = ?config.scrape_interval.0, "monitor started");
            let engine = Arc::new(promql::Engine {
                lookback_ms: config.lookback.0.as_millis() as i64,
            });
            let rules = Arc::new(rules::Rules::new(config.evaluation_interval.0));
            match rules::parse_file("builtin", rules::BUILTIN_RULES) {
                Ok(groups) => rules.install("builtin", groups),
                Err(error) => tracing::error!(%error, "Strata's built-in rules do not parse"),
            }
            match ctx.get::<Arc<dyn ConfigService>>().map(|c| (*c).clone()) {
                Some(configs) => {
                    ctx.tracker.spawn(follow_rule_files(
                        ctx.kv.clone(),
                        configs,
                        rules.clone(),
                        ctx.node_id,
                        ctx.cancel.clone(),
                    ));
                }
                None => tracing::info!(
                    "no config center on this node: only the built-in rules are evaluated"
                ),
            }
            let rule_loop = rules::RuleLoop {
                rules: rules.clone(),
                engine: engine.clone(),
                store: store.clone(),
                ingest: ingest.clone(),
                http: notify_http,
                receivers: rules::Receivers {
                    alertmanagers: config.alertmanagers.clone(),
                    webhooks: config.webhooks.clone(),
                },
                membership: membership.clone(),
                me: ctx.node_id,
            };
            ctx.tracker.spawn(rule_loop.run(ctx.cancel.clone()));
            let otlp_routes = otlp_metrics::router(otlp_metrics::OtlpMetricsState {
                ingest: ingest.clone(),
                targets: targets.clone(),
                auth: ctx.auth.clone(),
                max_request_bytes: ctx.max_request_bytes,
            });
            let state = api::ApiState {
                store,
                ingest,
                targets,
                engine,
                auth: ctx.auth.clone(),
                scrape_interval: config.scrape_interval.0,
                scrape_timeout: config.scrape_timeout.0,
                max_request_bytes: ctx.max_request_bytes,
                rules,
                kv: ctx.kv.clone(),
                membership,
            };
            let trace_store = {
                let dir = dir.join("traces");
                tokio::task::spawn_blocking(move || {
                    traces::TraceStore::open(
                        &dir,
                        traces::DEFAULT_RETENTION,
                        traces::DEFAULT_MAX_SPANS,
                    )
                })
                .await
                .map_err(|e| StartError(format!("monitor traces: {e}")))?
                .map_err(|e| StartError(format!("monitor traces: {e}")))?
            };
            let trace_store = Arc::new(trace_store);
            trace_store.register_metrics(&ctx.metrics)?;
            // Components started after this one (the gateway) hand their spans over here.
            let local: Arc<dyn strata_trace::LocalSink> =
                Arc::new(traces::LocalSpans(trace_store.clone()));
            ctx.provide(Arc::new(local));
            ctx.tracker
                .spawn(traces::run_pruning(trace_store.clone(), ctx.cancel.clone()));
            let trace_routes = traces::router(traces::TraceState {
                store: trace_store,
                auth: ctx.auth.clone(),
                max_request_bytes: ctx.max_request_bytes,
            });
            Ok(Started {
                peer_routes: Some(api::peer_router(state.clone())),
                api_routes: Some(api::router(state).merge(trace_routes).merge(otlp_routes)),
            })
        })
    }
}

/// Installs every rule file published in the config center (namespace `public`, group
/// [`rules::RULES_GROUP`]) and follows changes; a file that does not parse is logged and its
/// previous version stays.
async fn follow_rule_files(
    kv: Arc<dyn strata_store::KvApi>,
    configs: Arc<dyn ConfigService>,
    rules: Arc<rules::Rules>,
    node_id: u64,
    cancel: tokio_util::sync::CancellationToken,
) {
    let client = ClientIdentity {
        ip: None,
        labels: std::collections::BTreeMap::from([(
            "strata_node".to_string(),
            node_id.to_string(),
        )]),
    };
    let prefix = format!(
        "{}items/public/{}/",
        strata_api::config::ROOT,
        rules::RULES_GROUP
    );
    let mut installed: std::collections::BTreeMap<String, String> =
        std::collections::BTreeMap::new();
    loop {
        let request = strata_proto::kv::RangeRequest {
            key: prefix.clone().into_bytes(),
            prefix: true,
            serializable: true,
            keys_only: true,
            ..Default::default()
        };
        if let Ok(found) = kv.range(request).await {
            let ids: Vec<String> = found
                .kvs
                .iter()
                .filter_map(|kv| {
                    Some(
                        std::str::from_utf8(kv.key.strip_prefix(prefix.as_bytes())?)
                            .ok()?
                            .to_string(),
                    )
                })
                .collect();
            for gone in installed
                .keys()
                .filter(|f| !ids.contains(f))
                .cloned()
                .collect::<Vec<_>>()
            {
                rules.remove_file(&gone);
                installed.remove(&gone);
                tracing::info!(file = %gone, "rule file removed");
            }
            for id in ids {
                let Ok(key) = ConfigKey::new(Some("public"), Some(rules::RULES_GROUP), &id) else {
                    continue;
                };
                let Ok(served) = configs.get(&key, &client) else {
                    continue;
                };
                if installed.get(&id) == Some(&served.md5) {
                    continue;
                }
                installed.insert(id.clone(), served.md5.clone());
                match rules::parse_file(&id, &served.content) {
                    Ok(groups) => {
                        tracing::info!(file = %id, groups = groups.len(), version = served.version, "rule file loaded");
                        rules.install(&id, groups);
                    }
                    Err(error) => {
                        tracing::warn!(file = %id, %error, "rule file refused; its previous version stays")
                    }
                }
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Cuts blocks and applies retention every 30 s until `cancel`.
async fn maintain(store: Arc<store::Store>, cancel: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
        let store = store.clone();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        match tokio::task::spawn_blocking(move || store.maintain(now)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "monitor block cut or retention failed"),
            Err(error) => tracing::error!(%error, "monitor maintenance panicked"),
        }
    }
}

/// Gauges of the store, read at scrape time.
fn register_store_metrics(
    registry: &prometheus::Registry,
    store: Arc<store::Store>,
) -> Result<(), StartError> {
    registry.register(Box::new(StoreCollector::new(store)?))?;
    Ok(())
}

struct StoreCollector {
    store: Arc<store::Store>,
    descs: Vec<prometheus::core::Desc>,
}

const STORE_GAUGES: [(&str, &str); 6] = [
    (
        "strata_monitor_head_series",
        "Series in the monitor's in-memory head.",
    ),
    (
        "strata_monitor_head_samples",
        "Samples in the monitor's in-memory head.",
    ),
    ("strata_monitor_blocks", "Blocks on the monitor's disk."),
    (
        "strata_monitor_block_bytes",
        "Bytes of the monitor's blocks.",
    ),
    (
        "strata_monitor_block_samples",
        "Samples in the monitor's blocks.",
    ),
    (
        "strata_monitor_wal_bytes",
        "Bytes of the monitor's write-ahead log.",
    ),
];

impl StoreCollector {
    fn new(store: Arc<store::Store>) -> Result<StoreCollector, prometheus::Error> {
        let descs = STORE_GAUGES
            .iter()
            .map(|(name, help)| {
                prometheus::core::Desc::new(
                    name.to_string(),
                    help.to_string(),
                    vec![],
                    Default::default(),
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(StoreCollector { store, descs })
    }
}

impl prometheus::core::Collector for StoreCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let s = self.store.stats();
        let values = [
            s.head_series as f64,
            s.head_samples as f64,
            s.blocks as f64,
            s.block_bytes as f64,
            s.block_samples as f64,
            s.wal_bytes as f64,
        ];
        STORE_GAUGES
            .iter()
            .zip(values)
            .filter_map(|((name, help), v)| {
                let gauge = prometheus::Gauge::new(*name, *help).ok()?;
                gauge.set(v);
                Some(prometheus::core::Collector::collect(&gauge))
            })
            .flatten()
            .collect()
    }
}
