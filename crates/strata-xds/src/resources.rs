//! The xDS resources of a service, built from its registry instances: what a gRPC client that
//! dials `xds:///SERVICE` asks for, in order.
//!
//! - Listener `SERVICE`: an API listener whose HTTP connection manager holds its route
//!   configuration inline (one virtual host for every domain, one route to cluster
//!   `SERVICE`) and the router filter gRPC requires last.
//! - Cluster `SERVICE`: discovered by EDS over the same ADS stream, round robin.
//! - ClusterLoadAssignment `SERVICE`: the passing instances, grouped by locality (the
//!   `region` and `zone` of their metadata), each with its registry weight.

use crate::rules::{cluster_name, ServiceRules};
use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source, socket_address, Address, AggregatedConfigSource, ApiVersion,
    ConfigSource, HealthStatus, Locality, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher, route, route_action, route_match, weighted_cluster, HeaderMatcher, Route,
    RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher, StringMatcher};
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use std::collections::BTreeMap;
use strata_api::registry::Instance;

/// `type_url` of listeners.
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// `type_url` of route configurations.
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// `type_url` of clusters.
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// `type_url` of endpoint assignments.
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";

/// Packs `message` as an `Any` of `type_url`.
pub fn any(type_url: &str, message: &impl prost::Message) -> Any {
    Any {
        type_url: type_url.into(),
        value: message.encode_to_vec(),
    }
}

/// A route for every path (and `headers`) to `cluster`.
fn route(headers: Vec<HeaderMatcher>, cluster: route_action::ClusterSpecifier) -> Route {
    Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix(String::new())),
            headers,
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(cluster),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The route configuration of `service`: every domain and path; by its `rules` (header
/// routes first, then the weighted split), else to cluster `service`.
pub fn route_configuration(service: &str, rules: Option<&ServiceRules>) -> RouteConfiguration {
    let mut routes: Vec<Route> = Vec::new();
    if let Some(rules) = rules {
        for rule in &rules.routes {
            let matcher = HeaderMatcher {
                name: rule.header.clone(),
                header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
                    StringMatcher {
                        match_pattern: Some(string_matcher::MatchPattern::Exact(
                            rule.value.clone(),
                        )),
                        ignore_case: false,
                    },
                )),
                ..Default::default()
            };
            routes.push(route(
                vec![matcher],
                route_action::ClusterSpecifier::Cluster(cluster_name(service, &rule.subset)),
            ));
        }
    }
    let split: Vec<_> = rules
        .map(|r| r.split.iter().filter(|w| w.weight > 0).collect())
        .unwrap_or_default();
    let default = if split.is_empty() {
        route_action::ClusterSpecifier::Cluster(service.into())
    } else {
        route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: split
                .iter()
                .map(|w| weighted_cluster::ClusterWeight {
                    name: cluster_name(service, &w.subset),
                    weight: Some(UInt32Value { value: w.weight }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    };
    routes.push(route(Vec::new(), default));
    RouteConfiguration {
        name: service.into(),
        virtual_hosts: vec![VirtualHost {
            name: service.into(),
            domains: vec!["*".into()],
            routes,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The API listener of `service`, its route configuration inline.
pub fn listener(service: &str, rules: Option<&ServiceRules>) -> Listener {
    let manager = HttpConnectionManager {
        stat_prefix: service.into(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(
            route_configuration(service, rules),
        )),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(
                ROUTER,
                &Router::default(),
            ))),
            ..Default::default()
        }],
        ..Default::default()
    };
    Listener {
        name: service.into(),
        api_listener: Some(ApiListener {
            api_listener: Some(any(HCM, &manager)),
        }),
        ..Default::default()
    }
}

/// Cluster `name` (a service, or a subset of one): endpoints by EDS over ADS, round robin.
pub fn cluster(name: &str) -> Cluster {
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ConfigSource {
                config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
                    AggregatedConfigSource {},
                )),
                resource_api_version: ApiVersion::V3 as i32,
                ..Default::default()
            }),
            service_name: String::new(),
        }),
        lb_policy: cluster::LbPolicy::RoundRobin as i32,
        ..Default::default()
    }
}

/// The endpoints of cluster `name`: `instances` (the passing ones) by locality.
pub fn assignment(name: &str, instances: &[std::sync::Arc<Instance>]) -> ClusterLoadAssignment {
    let mut localities: BTreeMap<(String, String), Vec<LbEndpoint>> = BTreeMap::new();
    for instance in instances {
        let locality = (
            instance.meta.get("region").cloned().unwrap_or_default(),
            instance.meta.get("zone").cloned().unwrap_or_default(),
        );
        localities.entry(locality).or_default().push(LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: instance.address.clone(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                            instance.port,
                        ))),
                        ..Default::default()
                    })),
                }),
                hostname: instance.id.clone(),
                ..Default::default()
            })),
            health_status: HealthStatus::Healthy as i32,
            load_balancing_weight: Some(UInt32Value {
                value: instance.weight_share(),
            }),
            ..Default::default()
        });
    }
    ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: localities
            .into_iter()
            .map(|((region, zone), lb_endpoints)| LocalityLbEndpoints {
                locality: Some(Locality {
                    region,
                    zone,
                    ..Default::default()
                }),
                // gRPC ignores a locality without a weight; every locality weighs the same
                // and instance weights share within it.
                load_balancing_weight: Some(UInt32Value { value: 1 }),
                lb_endpoints,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn a_listener_routes_everything_to_the_cluster_and_ends_with_the_router() {
        let listener = listener("orders", None);
        let api = listener.api_listener.unwrap().api_listener.unwrap();
        assert_eq!(api.type_url, HCM);
        let manager = HttpConnectionManager::decode(api.value.as_slice()).unwrap();
        assert_eq!(
            manager.http_filters.last().unwrap().name,
            "envoy.filters.http.router"
        );
        let Some(http_connection_manager::RouteSpecifier::RouteConfig(routes)) =
            manager.route_specifier
        else {
            panic!("no inline routes");
        };
        let action = routes.virtual_hosts[0].routes[0].action.clone().unwrap();
        let route::Action::Route(action) = action else {
            panic!("not a route")
        };
        assert_eq!(
            action.cluster_specifier,
            Some(route_action::ClusterSpecifier::Cluster("orders".into()))
        );
    }

    #[test]
    fn rules_become_header_routes_and_weighted_clusters() {
        let rules = crate::rules::Rules::parse(
            r#"
            [[services]]
            name = "orders"
            routes = [{ header = "x-version", value = "v2", subset = { version = "v2" } }]
            split = [{ subset = { version = "v1" }, weight = 95 }, { subset = { version = "v2" }, weight = 5 }]
            "#,
        )
        .unwrap();
        let config = route_configuration("orders", rules.of("orders"));
        let routes = &config.virtual_hosts[0].routes;
        assert_eq!(routes.len(), 2);
        assert_eq!(
            routes[0].r#match.as_ref().unwrap().headers[0].name,
            "x-version"
        );
        let Some(route::Action::Route(first)) = &routes[0].action else {
            panic!()
        };
        assert_eq!(
            first.cluster_specifier,
            Some(route_action::ClusterSpecifier::Cluster(
                "orders/version=v2".into()
            ))
        );
        let Some(route::Action::Route(last)) = &routes[1].action else {
            panic!()
        };
        let Some(route_action::ClusterSpecifier::WeightedClusters(split)) = &last.cluster_specifier
        else {
            panic!("no split")
        };
        let names: Vec<_> = split
            .clusters
            .iter()
            .map(|c| (c.name.as_str(), c.weight.unwrap().value))
            .collect();
        assert_eq!(names, [("orders/version=v1", 95), ("orders/version=v2", 5)]);
    }

    #[test]
    fn endpoints_group_by_locality_with_weights() {
        let instance = |id: &str, zone: &str, weight: f64| {
            let meta = BTreeMap::from([("zone".to_string(), zone.to_string())]).into();
            std::sync::Arc::new(Instance {
                namespace: "public".into(),
                service: "orders".into(),
                id: id.into(),
                address: "127.0.0.1".into(),
                port: 9000,
                tags: vec![],
                meta,
                weight,
                enabled: true,
                ephemeral: true,
                ttl: None,
                check: None,
                status: strata_api::registry::Health::Passing,
                output: String::new(),
                status_since_ms: 0,
            })
        };
        let cla = assignment(
            "orders",
            &[
                instance("a", "z1", 1.0),
                instance("b", "z2", 2.0),
                instance("c", "z1", 1.0),
            ],
        );
        assert_eq!(cla.endpoints.len(), 2);
        assert_eq!(cla.endpoints[0].locality.as_ref().unwrap().zone, "z1");
        assert_eq!(cla.endpoints[0].lb_endpoints.len(), 2);
        assert_eq!(
            cla.endpoints[1].lb_endpoints[0].load_balancing_weight,
            Some(UInt32Value { value: 200 })
        );
        assert!(cla
            .endpoints
            .iter()
            .all(|l| l.load_balancing_weight == Some(UInt32Value { value: 1 })));
    }
}
