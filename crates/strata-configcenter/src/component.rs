//! The config center as a node component: its `[config_center]` section and its start.

use crate::cipher::Cipher;
use crate::http::{router, ConfigState};
use crate::Settings;
use serde::{Deserialize, Serialize};
use strata_api::units::ByteSize;
use strata_component::{parse_section, Component, Context, StartError, Started};
use strata_store::BoxFuture;
use tracing::info;

/// The component's name: its role and its config section.
pub const NAME: &str = "config_center";

/// The `[config_center]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigCenterConfig {
    /// Largest config content accepted.
    #[serde(default = "default_max_content")]
    pub max_content_bytes: ByteSize,
    /// Versions kept per config; older ones are dropped as new ones arrive.
    #[serde(default = "default_history_retention")]
    pub history_retention: u64,
    /// Key for configs whose data id starts with `cipher-`: 32 bytes as base64 or 64 hex
    /// characters. Unset: such configs are refused. Every node needs the same key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_key: Option<String>,
}

fn default_max_content() -> ByteSize {
    ByteSize(1024 * 1024)
}

fn default_history_retention() -> u64 {
    100
}

impl Default for ConfigCenterConfig {
    fn default() -> Self {
        ConfigCenterConfig {
            max_content_bytes: default_max_content(),
            history_retention: default_history_retention(),
            encryption_key: None,
        }
    }
}

impl ConfigCenterConfig {
    fn check(&self) -> Result<Option<Cipher>, String> {
        if self.history_retention == 0 {
            return Err("config_center.history_retention must be at least 1".into());
        }
        match &self.encryption_key {
            Some(key) => Cipher::from_key(key)
                .map(Some)
                .map_err(|e| format!("config_center.encryption_key: {e}")),
            None => Ok(None),
        }
    }
}

/// The configuration center: versioned configs, history, gray release, push.
pub struct ConfigCenterComponent;

impl Component for ConfigCenterComponent {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check_config(&self, section: Option<&toml::Value>) -> Result<(), String> {
        parse_section::<ConfigCenterConfig>(NAME, section)?
            .check()
            .map(|_| ())
    }

    fn sample_config(&self) -> Option<String> {
        let body = toml::to_string_pretty(&ConfigCenterConfig::default()).ok()?;
        Some(format!(
            "# encryption_key = \"<32 bytes, base64>\" enables cipher- configs.\n[{NAME}]\n{body}"
        ))
    }

    fn start(&self, ctx: Context) -> BoxFuture<'static, Result<Started, StartError>> {
        Box::pin(async move {
            let config: ConfigCenterConfig = ctx.settings(NAME)?;
            let cipher = config.check()?;
            info!(node_id = ctx.node_id, "starting the config center");
            let settings = Settings {
                max_content_bytes: usize::try_from(config.max_content_bytes.0)
                    .unwrap_or(usize::MAX),
                history_retention: config.history_retention,
            };
            let center = crate::start(
                ctx.kv.clone(),
                cipher,
                settings,
                &ctx.metrics,
                &ctx.tracker,
                ctx.cancel.child_token(),
            )?;
            ctx.provide(center.clone());
            ctx.provide(std::sync::Arc::new(
                center.clone() as std::sync::Arc<dyn strata_api::config::ConfigService>
            ));
            Ok(Started {
                peer_routes: None,
                api_routes: Some(router(ConfigState {
                    center,
                    cancel: ctx.cancel.child_token(),
                    auth: ctx.auth.clone(),
                })),
            })
        })
    }
}
