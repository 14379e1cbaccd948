//! The registry as a node component: its `[registry]` section, its Consul-compatible and DNS
//! listeners, and its start.

use crate::http::{router, RegistryState};
use serde::{Deserialize, Serialize};
use strata_component::{
    parse_section, Component, Context, ListenerSpec, StartError, Started, Transport,
};
use strata_store::BoxFuture;
use tracing::info;

/// The component's name: its role and its config section.
pub const NAME: &str = "registry";

/// The `[registry]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// The DNS domain: services answer as `NAME.service.DOMAIN`.
    #[serde(default = "default_dns_domain")]
    pub dns_domain: String,
}

fn default_dns_domain() -> String {
    "strata".to_string()
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            dns_domain: default_dns_domain(),
        }
    }
}

impl RegistryConfig {
    fn check(&self) -> Result<(), String> {
        let domain = self.dns_domain.trim_end_matches('.');
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        if domain.is_empty() || !domain.split('.').all(label_ok) {
            return Err(format!(
                "dns_domain {:?} is not a domain name such as \"strata\" or \"sd.example.com\"",
                self.dns_domain
            ));
        }
        Ok(())
    }
}

const LISTENERS: &[ListenerSpec] = &[
    ListenerSpec {
        name: "consul",
        about: "the Consul-compatible API",
        transport: Transport::Tcp,
    },
    ListenerSpec {
        name: "dns",
        about: "registry DNS",
        transport: Transport::TcpAndUdp,
    },
];

/// The service registry: instances, health checks, discovery over HTTP, Consul's API and DNS.
pub struct RegistryComponent;

impl Component for RegistryComponent {
    fn name(&self) -> &'static str {
        NAME
    }

    fn listeners(&self) -> &'static [ListenerSpec] {
        LISTENERS
    }

    fn check_config(&self, section: Option<&toml::Value>) -> Result<(), String> {
        parse_section::<RegistryConfig>(NAME, section)?.check()
    }

    fn sample_config(&self) -> Option<String> {
        let body = toml::to_string_pretty(&RegistryConfig::default()).ok()?;
        Some(format!("[{NAME}]\n{body}"))
    }

    fn start(&self, mut ctx: Context) -> BoxFuture<'static, Result<Started, StartError>> {
        Box::pin(async move {
            let config: RegistryConfig = ctx.settings(NAME)?;
            config.check()?;
            info!(node_id = ctx.node_id, "starting the service registry");
            let registry = crate::start(
                ctx.kv.clone(),
                &ctx.metrics,
                &ctx.tracker,
                ctx.cancel.child_token(),
            )?;
            ctx.provide(registry.clone());
            ctx.provide(std::sync::Arc::new(
                registry.clone() as std::sync::Arc<dyn strata_api::registry::RegistryService>
            ));
            if let Some(bound) = ctx.take_listener("consul") {
                info!(node_id = ctx.node_id, addr = %bound.addr, "serving the Consul-compatible API");
                let kv = crate::consul_store::start(
                    registry.clone(),
                    &ctx.metrics,
                    &ctx.tracker,
                    ctx.cancel.child_token(),
                )?;
                ctx.serve_http(
                    "consul",
                    bound.tcp,
                    crate::consul::router(registry.clone(), kv, ctx.auth.clone()),
                );
            }
            if let Some(bound) = ctx.take_listener("dns") {
                let udp = bound
                    .udp
                    .ok_or_else(|| StartError("dns: no UDP socket was bound".into()))?;
                info!(node_id = ctx.node_id, addr = %bound.addr, domain = %config.dns_domain, "serving registry DNS");
                let metrics = crate::dns::DnsMetrics::new(&ctx.metrics)?;
                ctx.tracker.spawn(crate::dns::serve(
                    udp,
                    bound.tcp,
                    config.dns_domain.clone(),
                    registry.view.clone(),
                    metrics,
                    ctx.cancel.child_token(),
                ));
            }
            Ok(Started {
                peer_routes: None,
                api_routes: Some(router(RegistryState {
                    registry,
                    cancel: ctx.cancel.child_token(),
                    auth: ctx.auth.clone(),
                })),
            })
        })
    }
}
