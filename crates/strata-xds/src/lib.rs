//! An xDS control plane in the node, so that a standard gRPC client in any language (Go, Java,
//! Python, C++) dialing `xds:///SERVICE`, with a bootstrap file naming this node's `xds`
//! listener, discovers the service's instances from the Strata registry, with localities and
//! weights, and follows changes.
//!
//! - [`resources`]: the listener, route, cluster and endpoint resources of a service.
//! - [`rules`]: routing rules (by header, by weight to subsets of instances) from the config
//!   center.
//! - [`server`]: ADS (state of the world, v3) over gRPC.

pub mod resources;
pub mod rules;
pub mod server;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use strata_api::config::{ClientIdentity, ConfigService};
use strata_api::registry::RegistryService;
use strata_component::{
    parse_section, Component, Context, ListenerSpec, StartError, Started, Transport,
};
use strata_proto::error::ErrorCode;
use strata_store::BoxFuture;

/// The component's name and config section.
pub const NAME: &str = "xds";

const LISTENERS: &[ListenerSpec] = &[ListenerSpec {
    name: "xds",
    about: "the xDS control plane (ADS) for gRPC clients",
    transport: Transport::Tcp,
}];

/// `[xds]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct XdsConfig {
    /// The registry namespace whose services are served (default `public`).
    pub namespace: String,
}

impl Default for XdsConfig {
    fn default() -> Self {
        XdsConfig {
            namespace: "public".into(),
        }
    }
}

/// Serves ADS on the `xds` listener, from the registry component's instances.
pub struct XdsComponent;

impl Component for XdsComponent {
    fn name(&self) -> &'static str {
        NAME
    }

    fn listeners(&self) -> &'static [ListenerSpec] {
        LISTENERS
    }

    fn check_config(&self, section: Option<&toml::Value>) -> Result<(), String> {
        parse_section::<XdsConfig>(NAME, section).map(|_| ())
    }

    fn sample_config(&self) -> Option<String> {
        let body = toml::to_string_pretty(&XdsConfig::default()).ok()?;
        Some(format!("[{NAME}]\n{body}"))
    }

    fn start(&self, mut ctx: Context) -> BoxFuture<'static, Result<Started, StartError>> {
        Box::pin(async move {
            let config: XdsConfig = ctx.settings(NAME)?;
            let Some(bound) = ctx.take_listener("xds") else {
                return Ok(Started::default());
            };
            let Some(registry) = ctx.get::<Arc<dyn RegistryService>>().map(|r| (*r).clone()) else {
                return Err(StartError(
                    "the xds listener needs the registry component on this node".into(),
                ));
            };
            let metrics = server::Metrics::new(&ctx.metrics)?;
            tracing::info!(node_id = ctx.node_id, addr = %bound.addr, namespace = %config.namespace, "serving xDS (ADS)");
            let (rules, rules_rx) = tokio::sync::watch::channel(Arc::new(rules::Rules::default()));
            match ctx.get::<Arc<dyn ConfigService>>().map(|c| (*c).clone()) {
                Some(configs) => {
                    ctx.tracker.spawn(follow_rules(
                        configs,
                        rules,
                        ctx.node_id,
                        ctx.cancel.clone(),
                    ));
                }
                None => tracing::info!(
                    "no config center on this node: xDS routes every request to all instances"
                ),
            }
            let ads = server::Ads::new(
                registry,
                config.namespace,
                rules_rx,
                metrics,
                ctx.cancel.clone(),
            );
            let stop = ctx.cancel.clone();
            ctx.tracker.spawn(async move {
                let service = envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer::new(ads);
                let served = tonic::transport::Server::builder()
                    .initial_connection_window_size(strata_component::HTTP2_CONNECTION_WINDOW)
                    .add_service(service)
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(bound.tcp),
                        stop.cancelled_owned(),
                    )
                    .await;
                if let Err(error) = served {
                    tracing::warn!(%error, "the xDS listener stopped with an error");
                }
            });
            Ok(Started::default())
        })
    }
}

/// Installs every valid version of the rules document as it is published (an invalid one is
/// logged and the previous rules stay).
async fn follow_rules(
    configs: Arc<dyn ConfigService>,
    rules: tokio::sync::watch::Sender<Arc<rules::Rules>>,
    node_id: u64,
    cancel: tokio_util::sync::CancellationToken,
) {
    let key = rules::rules_key();
    let client = ClientIdentity {
        ip: None,
        labels: BTreeMap::from([("strata_node".to_string(), node_id.to_string())]),
    };
    let mut md5 = String::new();
    loop {
        match configs.get(&key, &client) {
            Ok(served) if served.md5 != md5 => {
                md5 = served.md5.clone();
                match rules::Rules::parse(&served.content) {
                    Ok(parsed) => {
                        tracing::info!(
                            version = served.version,
                            services = parsed.services.len(),
                            "xDS routing rules installed"
                        );
                        rules.send_replace(Arc::new(parsed));
                    }
                    Err(error) => {
                        tracing::warn!(version = served.version, %error, "xDS routing rules refused; the previous ones stay")
                    }
                }
            }
            Ok(_) => {}
            Err(e) if e.code == ErrorCode::NotFound => {
                if !md5.is_empty() {
                    rules.send_replace(Arc::new(rules::Rules::default()));
                }
                md5.clear();
            }
            Err(error) => tracing::warn!(%error, "cannot read the xDS routing rules; retrying"),
        }
        let watched = [(key.clone(), md5.clone())];
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = configs.wait_changed(&watched, &client, Duration::from_secs(30)) => {}
        }
    }
}
