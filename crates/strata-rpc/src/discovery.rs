//! [`Discovery`], the consumer's view of a service. It follows the service's passing
//! instances in the Strata registry with blocking queries (an answer as soon as the set
//! changes), keeps them as a member set of `strata-resilience`'s balancer (the same policies,
//! slow start and ejection rules as the gateway), and picks one per call.

use std::sync::{Arc, RwLock};
use std::time::Duration;
use strata_api::registry::{Instance, QueryResult};
use strata_resilience::balance::{Balance, Endpoint, Members};
use tokio_util::sync::CancellationToken;

/// Longest blocking query; the registry answers earlier on any change.
const WAIT: Duration = Duration::from_secs(30);
/// Pause after a failed query.
const RETRY: Duration = Duration::from_secs(1);

/// Which instances of a service to use.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    /// The service.
    pub service: String,
    /// Its namespace (default `public`).
    pub namespace: Option<String>,
    /// Only instances with all of these tags.
    pub tags: Vec<String>,
    /// Only instances whose metadata has all of these `key=value` pairs.
    pub meta: Vec<(String, String)>,
    /// How calls are spread over them.
    pub balance: Balance,
}

/// A service's live instances, followed in the registry.
pub struct Discovery {
    members: RwLock<Arc<Members>>,
    balance: Balance,
    changed: tokio::sync::watch::Sender<u64>,
    stop: CancellationToken,
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Percent-encodes a path segment or query value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Discovery {
    /// Starts following `selector`'s service through `client` (any node of the cluster).
    pub fn follow(client: strata_client::Client, selector: Selector) -> Arc<Discovery> {
        let discovery = Arc::new(Discovery {
            members: RwLock::new(Arc::new(Members::new(Vec::new(), selector.balance))),
            balance: selector.balance,
            changed: tokio::sync::watch::channel(0).0,
            stop: CancellationToken::new(),
        });
        let weak = Arc::downgrade(&discovery);
        let stop = discovery.stop.clone();
        tokio::spawn(async move {
            let mut index = 0i64;
            let mut failing = false;
            loop {
                let mut query = vec!["passing=true".to_string()];
                if let Some(ns) = &selector.namespace {
                    query.push(format!("namespace={}", encode(ns)));
                }
                for tag in &selector.tags {
                    query.push(format!("tag={}", encode(tag)));
                }
                for (key, value) in &selector.meta {
                    query.push(format!("meta={}", encode(&format!("{key}:{value}"))));
                }
                if index > 0 {
                    query.push(format!("index={index}"));
                    query.push(format!("wait={}s", WAIT.as_secs()));
                }
                let path = format!(
                    "/v1/registry/services/{}?{}",
                    encode(&selector.service),
                    query.join("&")
                );
                let answer = tokio::select! {
                    () = stop.cancelled() => return,
                    answer = client.get_json::<QueryResult>(&path) => answer,
                };
                let Some(discovery) = weak.upgrade() else {
                    return;
                };
                match answer {
                    Ok(result) => {
                        if failing {
                            tracing::info!(service = %selector.service, "registry answers again");
                            failing = false;
                        }
                        if index == 0 || result.index != index {
                            discovery.replace(&result.instances, index == 0);
                        }
                        index = result.index.max(1);
                    }
                    Err(error) => {
                        if !failing {
                            tracing::warn!(service = %selector.service, %error, "registry query failed; keeping the last instances and retrying");
                            failing = true;
                        }
                        drop(discovery);
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(RETRY) => {}
                        }
                    }
                }
            }
        });
        discovery
    }

    fn replace(&self, instances: &[Arc<Instance>], initial: bool) {
        let old = self.members();
        // The same members (another instance of the service changed, one these filters do
        // not select): keep the set, and with it the balancer's position.
        let same = !initial
            && old.endpoints.len() == instances.len()
            && old.endpoints.iter().zip(instances).all(|(e, i)| {
                e.id == i.id && e.address == i.dial_address() && e.weight == i.weight_share()
            });
        if same {
            return;
        }
        let endpoints = instances
            .iter()
            .map(|i| (i.dial_address(), i.id.clone(), i.weight_share()))
            .map(|(address, id, weight)| {
                old.endpoints
                    .iter()
                    .find(|e| e.address == address && e.id == id && e.weight == weight)
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(if initial {
                            Endpoint::new(address, id, weight)
                        } else {
                            Endpoint::joining(address, id, weight)
                        })
                    })
            })
            .collect();
        // Providers that ask for a warm-up (`warmup` in their metadata) get slow start: a
        // joining instance's share grows from a tenth to all of it over the longest asked.
        let warmup = instances
            .iter()
            .filter_map(|i| i.meta.get("warmup"))
            .filter_map(|w| humantime::parse_duration(w).ok())
            .max()
            .unwrap_or_default();
        *self.members.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(
            Members::with_slow_start(endpoints, self.balance, warmup.as_millis() as u64),
        );
        self.changed.send_modify(|n| *n += 1);
    }

    /// The instances now.
    pub fn members(&self) -> Arc<Members> {
        self.members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// An instance for one call (`key` for `ring_hash` and `maglev`), or `None` when the service
    /// has no passing instance.
    pub fn pick(&self, key: Option<&[u8]>) -> Option<Arc<Endpoint>> {
        let members = self.members();
        members
            .pick(key, &[])
            .map(|index| members.endpoints[index].clone())
    }

    /// Waits until the first answer of the registry has been applied, up to `timeout`.
    pub async fn ready(&self, timeout: Duration) -> bool {
        if *self.changed.borrow() > 0 {
            return true;
        }
        let mut rx = self.changed.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|n| *n > 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}
