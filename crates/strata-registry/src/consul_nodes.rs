//! What Consul clients ask about the cluster when they start: `/v1/agent/members`,
//! `/v1/catalog/nodes`, `/v1/catalog/datacenters`, `/v1/coordinate/datacenters`,
//! `/v1/coordinate/nodes` and `/v1/coordinate/node/NODE`. Strata's members are Consul's
//! nodes, named `strata-ID`, all servers of the one datacenter `dc1`, with the address of
//! their raft listener. Network coordinates are not measured: every node answers the
//! origin, which makes every node look equally near.

use crate::consul::{index_headers, ConsulError, DATACENTER};
use crate::consul_kv::read_options;
use crate::consul_store::{node_name, node_uuid};
use crate::http::query_pairs;
use crate::registry::Registry;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;
use strata_proto::cluster::MemberStatus;

type ConsulResult = Result<Response, ConsulError>;

/// The node routes.
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/v1/agent/members", get(members))
        .route("/v1/catalog/nodes", get(catalog_nodes))
        .route("/v1/catalog/datacenters", get(datacenters))
        .route("/v1/coordinate/datacenters", get(coordinate_datacenters))
        .route("/v1/coordinate/nodes", get(coordinate_nodes))
        .route("/v1/coordinate/node/{node}", get(coordinate_node))
        .with_state(registry)
}

/// `HOST` and `PORT` of a member's raft listener.
fn address(member: &MemberStatus) -> (String, u16) {
    match member.raft_addr.rsplit_once(':') {
        Some((host, port)) => (
            host.trim_matches(['[', ']']).to_string(),
            port.parse().unwrap_or(0),
        ),
        None => (member.raft_addr.clone(), 0),
    }
}

/// Serf's coordinate of a node that has not measured anything: the origin, with Vivaldi's
/// starting error.
fn origin() -> Value {
    json!({
        "Vec": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        "Error": 1.5,
        "Adjustment": 0.0,
        "Height": 1.0e-5,
    })
}

async fn members(State(r): State<Arc<Registry>>) -> ConsulResult {
    r.metrics.op("consul_members");
    let status = r.store.status();
    let members: Vec<Value> = status
        .members
        .iter()
        .map(|m| {
            let (host, port) = address(m);
            json!({
                "Name": node_name(m.id),
                "Addr": host,
                "Port": port,
                "Tags": {
                    "role": "consul",
                    "dc": DATACENTER,
                    "id": format!("{:016x}", m.id),
                    "raft_vsn": "3",
                },
                // Serf's "alive": Strata reports its members, not their health.
                "Status": 1,
                "ProtocolMin": 1,
                "ProtocolMax": 5,
                "ProtocolCur": 2,
                "DelegateMin": 2,
                "DelegateMax": 5,
                "DelegateCur": 4,
            })
        })
        .collect();
    Ok(Json(members).into_response())
}

async fn catalog_nodes(State(r): State<Arc<Registry>>, RawQuery(raw): RawQuery) -> ConsulResult {
    r.metrics.op("consul_nodes");
    let options = read_options(&query_pairs(raw.as_deref()))?;
    if options.index > 0 {
        r.view
            .wait_for(options.index.saturating_add(1), options.wait)
            .await;
    }
    let status = r.store.status();
    let nodes: Vec<Value> = status
        .members
        .iter()
        .map(|m| {
            let (host, _) = address(m);
            json!({
                "ID": node_uuid(m.id),
                "Node": node_name(m.id),
                "Address": host,
                "Datacenter": DATACENTER,
                "TaggedAddresses": {"lan": host, "lan_ipv4": host, "wan": host, "wan_ipv4": host},
                "Meta": {"consul-network-segment": ""},
                "CreateIndex": 1,
                "ModifyIndex": 1,
            })
        })
        .collect();
    Ok((index_headers(r.view.catalog_index()), Json(nodes)).into_response())
}

async fn datacenters() -> ConsulResult {
    Ok(Json(json!([DATACENTER])).into_response())
}

async fn coordinate_datacenters(State(r): State<Arc<Registry>>) -> ConsulResult {
    r.metrics.op("consul_coordinates");
    let coordinates: Vec<Value> = r
        .store
        .status()
        .members
        .iter()
        .map(|m| json!({"Node": format!("{}.{DATACENTER}", node_name(m.id)), "Coord": origin()}))
        .collect();
    Ok(Json(json!([{
        "Datacenter": DATACENTER,
        "AreaID": "wan",
        "Coordinates": coordinates,
    }]))
    .into_response())
}

fn node_coordinates(r: &Registry, only: Option<&str>) -> Vec<Value> {
    r.metrics.op("consul_coordinates");
    r.store
        .status()
        .members
        .iter()
        .map(|m| node_name(m.id))
        .filter(|name| only.is_none_or(|o| o == name))
        .map(|name| json!({"Node": name, "Segment": "", "Coord": origin()}))
        .collect()
}

async fn coordinate_nodes(State(r): State<Arc<Registry>>) -> ConsulResult {
    let coordinates = node_coordinates(&r, None);
    Ok((index_headers(r.view.catalog_index()), Json(coordinates)).into_response())
}

async fn coordinate_node(State(r): State<Arc<Registry>>, Path(node): Path<String>) -> ConsulResult {
    let coordinates = node_coordinates(&r, Some(&node));
    if coordinates.is_empty() {
        return Ok((StatusCode::NOT_FOUND, index_headers(r.view.catalog_index())).into_response());
    }
    Ok((index_headers(r.view.catalog_index()), Json(coordinates)).into_response())
}
