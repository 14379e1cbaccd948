//! Cluster-wide rate limits: a `cluster = true` limit of N requests a second holds for all
//! gateway nodes together, with no round trip per request.
//!
//! Every gateway node measures the traffic each such limit sees (allowed and refused requests
//! a second, smoothed) and publishes it every [`TICK`] under `/strata/gateway/demand/NODE`, on
//! a short lease so a node that stops disappears within [`TTL_SECS`]. Each node then takes a
//! share of N in proportion to its traffic, `(own + e) / (total + k e)` over the k nodes
//! present (e, a small floor, lets an idle node serve a first request); the shares add up to
//! one, so the cluster admits N a second however the clients spread their requests. A node's
//! share follows a shift of traffic within a tick or two, and a departed node's share returns to
//! the others when its lease expires.

use crate::proxy::Gateway;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_proto::kv::{LeaseGrantRequest, PutRequest, RangeRequest};
use strata_resilience::limit::KeyedLimiter;
use strata_store::KvApi;
use tokio_util::sync::CancellationToken;

/// Where nodes publish their traffic.
pub const PREFIX: &str = "/strata/gateway/demand/";
/// How often a node publishes and recomputes its shares.
pub const TICK: Duration = Duration::from_millis(500);
/// The lease of a node's entry.
pub const TTL_SECS: i64 = 2;
/// An entry unchanged this long belongs to a node that stopped publishing.
const STALE: Duration = Duration::from_millis(1500);
/// Weight of the newest measurement in the smoothed traffic.
const SMOOTHING: f64 = 0.5;

/// A limit's id across nodes: route name and the limit's place in the route.
fn limit_id(route: &str, index: usize) -> String {
    format!("{route}#{index}")
}

/// The cluster-wide limits of the table in force.
fn cluster_limits(gateway: &Gateway) -> Vec<(String, Arc<KeyedLimiter>)> {
    let live = gateway.live();
    live.compiled
        .routes
        .iter()
        .flat_map(|route| {
            route
                .guard
                .limits
                .iter()
                .enumerate()
                .filter(|(_, limit)| limit.spec.cluster)
                .map(|(i, limit)| (limit_id(&route.name, i), limit.limiter.clone()))
        })
        .collect()
}

/// This node's share of a limit: its traffic against everyone's, with a floor.
pub fn share(own: f64, total: f64, nodes: usize) -> f64 {
    let nodes = nodes.max(1) as f64;
    let floor = (0.05 * total / nodes).max(1.0);
    (own + floor) / (total + nodes * floor)
}

/// Publishes this node's traffic and sets its shares, until `cancel`.
pub async fn run(
    gateway: Arc<Gateway>,
    kv: Arc<dyn KvApi>,
    node_id: u64,
    cancel: CancellationToken,
) {
    let key = format!("{PREFIX}{node_id}").into_bytes();
    let mut lease = 0i64;
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut demand: HashMap<String, f64> = HashMap::new();
    let mut last = Instant::now();
    // Each node's entry revision and when it last changed: an entry that stops changing is a
    // node that stopped, even before its lease runs out.
    let mut heard: HashMap<u64, (i64, Instant)> = HashMap::new();
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(TICK) => {}
        }
        let limits = cluster_limits(&gateway);
        if limits.is_empty() {
            if lease != 0 {
                let _ = kv.lease_revoke(lease).await;
                lease = 0;
                seen.clear();
                demand.clear();
            }
            continue;
        }
        let elapsed = last.elapsed().as_secs_f64().max(0.001);
        last = Instant::now();
        for (id, limiter) in &limits {
            let (allowed, denied) = limiter.counts();
            let total = allowed + denied;
            let before = seen.insert(id.clone(), total).unwrap_or(total);
            let rate = total.saturating_sub(before) as f64 / elapsed;
            let smoothed = demand.entry(id.clone()).or_insert(rate);
            *smoothed = SMOOTHING * rate + (1.0 - SMOOTHING) * *smoothed;
        }
        demand.retain(|id, _| limits.iter().any(|(l, _)| l == id));
        if let Err(error) = publish(kv.as_ref(), &key, &mut lease, &demand).await {
            tracing::debug!(%error, "cannot publish this gateway's traffic; keeping the shares");
            continue;
        }
        let others = match read_all(kv.as_ref()).await {
            Ok(others) => {
                let now = Instant::now();
                for (node, revision, _) in &others {
                    let entry = heard.entry(*node).or_insert((*revision, now));
                    if entry.0 != *revision {
                        *entry = (*revision, now);
                    }
                }
                heard.retain(|node, _| others.iter().any(|(n, _, _)| n == node));
                others
                    .into_iter()
                    .filter(|(node, _, _)| {
                        *node == node_id
                            || heard.get(node).is_none_or(|(_, at)| at.elapsed() < STALE)
                    })
                    .map(|(node, _, map)| (node, map))
                    .collect::<Vec<_>>()
            }
            Err(error) => {
                tracing::debug!(%error, "cannot read the gateways' traffic; keeping the shares");
                continue;
            }
        };
        let nodes = others.len().max(1);
        for (id, limiter) in &limits {
            let own = demand.get(id).copied().unwrap_or(0.0);
            let total: f64 = others
                .iter()
                .map(|(node, map)| {
                    if *node == node_id {
                        own
                    } else {
                        map.get(id).copied().unwrap_or(0.0)
                    }
                })
                .sum();
            limiter.set_share(share(own, total.max(own), nodes));
        }
    }
    if lease != 0 {
        let _ = kv.lease_revoke(lease).await;
    }
}

async fn publish(
    kv: &dyn KvApi,
    key: &[u8],
    lease: &mut i64,
    demand: &HashMap<String, f64>,
) -> Result<(), String> {
    if *lease != 0 {
        match kv.lease_keepalive(*lease).await {
            Ok(alive) if alive.ttl > 0 => {}
            Ok(_) => *lease = 0,
            Err(e) if e.code == strata_proto::error::ErrorCode::NotFound => *lease = 0,
            Err(e) => return Err(e.to_string()),
        }
    }
    if *lease == 0 {
        *lease = kv
            .lease_grant(LeaseGrantRequest {
                ttl: TTL_SECS,
                id: 0,
            })
            .await
            .map_err(|e| e.to_string())?
            .id;
    }
    let value = serde_json::to_vec(demand).map_err(|e| e.to_string())?;
    kv.put(PutRequest {
        key: key.to_vec(),
        value,
        lease: *lease,
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// Every node's published traffic: node id, the entry's revision, the traffic by limit.
async fn read_all(kv: &dyn KvApi) -> Result<Vec<(u64, i64, HashMap<String, f64>)>, String> {
    let answer = kv
        .range(RangeRequest {
            key: PREFIX.as_bytes().to_vec(),
            prefix: true,
            serializable: true,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok(answer
        .kvs
        .iter()
        .filter_map(|kv| {
            let node = std::str::from_utf8(&kv.key)
                .ok()?
                .strip_prefix(PREFIX)?
                .parse()
                .ok()?;
            let map = serde_json::from_slice(&kv.value).ok()?;
            Some((node, kv.mod_revision, map))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_traffic_and_add_up_to_one() {
        let nodes = [300.0, 100.0, 0.0];
        let total: f64 = nodes.iter().sum();
        let shares: Vec<f64> = nodes.iter().map(|own| share(*own, total, 3)).collect();
        assert!(
            (shares.iter().sum::<f64>() - 1.0).abs() < 1e-9,
            "{shares:?}"
        );
        assert!(shares[0] > 0.7 && shares[0] < 0.75, "{shares:?}");
        assert!(
            shares[2] > 0.0,
            "an idle node can still serve a first request"
        );
        // No traffic anywhere: equal shares.
        assert!((share(0.0, 0.0, 4) - 0.25).abs() < 1e-9);
    }
}
