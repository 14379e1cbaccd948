//! An xDS control plane in the node, so that a standard gRPC client in any language (Go, Java,
//! Python, C++) dialing `xds:///SERVICE`, with a bootstrap file naming this node's `xds`
//! listener, discovers the service's instances from the Strata registry, with localities and
//! weights, and follows changes.
//!
//! - [`resources`]: the listener, route, cluster and endpoint resources of a service.
//! - [`server`]: ADS (state of the world, v3) over gRPC.

pub mod resources;
pub mod server;

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use strata_api::registry::RegistryService;
use strata_component::{
    parse_section, Component, Context, ListenerSpec, StartError, Started, Transport,
};
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
            let ads = server::Ads::new(registry, config.namespace, metrics, ctx.cancel.clone());
            let stop = ctx.cancel.clone();
            ctx.tracker.spawn(async move {
                let service = envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer::new(ads);
                let served = tonic::transport::Server::builder()
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
