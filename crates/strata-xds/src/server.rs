//! The aggregated discovery service (ADS, state of the world, v3).
//!
//! Each stream keeps, per resource type, the names the client subscribed to and the nonce of
//! the last response. A request whose nonce is not the last one sent is stale and ignored; an
//! ACK or NACK of the last response with unchanged names needs no answer (a NACK is logged
//! and counted). A change of names is answered at once. Endpoints follow the registry: each
//! subscribed service has a task of blocking queries on the stream, and a change of its
//! passing instances sends a new assignment.

use crate::resources::{self, any, CLUSTER, ENDPOINT, LISTENER, ROUTE};
use crate::rules::{parse_cluster, Rules};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use futures::Stream;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use strata_api::registry::{Query, QueryResult, RegistryService};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// Longest blocking query of a watch; the registry answers earlier on any change.
const WAIT: Duration = Duration::from_secs(30);

/// The control plane's metrics.
#[derive(Clone)]
pub struct Metrics {
    streams: prometheus::IntGauge,
    responses: prometheus::IntCounterVec,
    nacks: prometheus::IntCounterVec,
}

impl Metrics {
    /// Registers them in `registry`.
    pub fn new(registry: &prometheus::Registry) -> Result<Metrics, prometheus::Error> {
        let streams = prometheus::IntGauge::new(
            "strata_xds_streams",
            "ADS streams open now (one per xDS client channel)",
        )?;
        let responses = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "strata_xds_responses_total",
                "Discovery responses sent, by resource type",
            ),
            &["type"],
        )?;
        let nacks = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "strata_xds_nacks_total",
                "Responses a client rejected, by resource type",
            ),
            &["type"],
        )?;
        registry.register(Box::new(streams.clone()))?;
        registry.register(Box::new(responses.clone()))?;
        registry.register(Box::new(nacks.clone()))?;
        Ok(Metrics {
            streams,
            responses,
            nacks,
        })
    }
}

/// The ADS service.
#[derive(Clone)]
pub struct Ads {
    registry: Arc<dyn RegistryService>,
    namespace: String,
    rules: tokio::sync::watch::Receiver<Arc<Rules>>,
    metrics: Metrics,
    stop: CancellationToken,
}

impl Ads {
    /// Serves the services of `namespace` in `registry` until `stop`.
    /// `rules` are the routing rules now and as they change.
    pub fn new(
        registry: Arc<dyn RegistryService>,
        namespace: String,
        rules: tokio::sync::watch::Receiver<Arc<Rules>>,
        metrics: Metrics,
        stop: CancellationToken,
    ) -> Ads {
        Ads {
            registry,
            namespace,
            rules,
            metrics,
            stop,
        }
    }
}

fn short(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}

/// What one stream has told the client of one resource type.
#[derive(Default)]
struct Subscription {
    names: BTreeSet<String>,
    nonce: String,
}

/// One ADS stream's state.
struct Session {
    ads: Ads,
    node: String,
    subscriptions: HashMap<String, Subscription>,
    /// The last answer of the registry per watched service.
    instances: BTreeMap<String, Arc<QueryResult>>,
    watches: HashMap<String, CancellationToken>,
    updates: mpsc::Sender<(String, Arc<QueryResult>)>,
    responses: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    sent: u64,
}

impl Session {
    /// Handles one request; sends what it calls for.
    async fn request(&mut self, request: DiscoveryRequest) -> bool {
        if self.node.is_empty() {
            if let Some(node) = &request.node {
                self.node = node.id.clone();
                tracing::info!(node = %self.node, "xDS client connected");
            }
        }
        let kind = request.type_url.clone();
        if ![LISTENER, ROUTE, CLUSTER, ENDPOINT].contains(&kind.as_str()) {
            tracing::debug!(type_url = %kind, "xDS request for an unsupported type; ignored");
            return true;
        }
        let subscription = self.subscriptions.entry(kind.clone()).or_default();
        if !request.response_nonce.is_empty() && request.response_nonce != subscription.nonce {
            return true; // stale: answers an older response
        }
        if let Some(error) = &request.error_detail {
            self.ads
                .metrics
                .nacks
                .with_label_values(&[short(&kind)])
                .inc();
            tracing::warn!(node = %self.node, type_url = %kind, error = %error.message, "an xDS client rejected a response");
        }
        let names: BTreeSet<String> = request.resource_names.into_iter().collect();
        if !request.response_nonce.is_empty() && names == subscription.names {
            return true; // ACK or NACK of the latest, nothing new asked
        }
        subscription.names = names;
        if kind == ENDPOINT {
            self.follow_endpoints();
        }
        self.send(&kind).await
    }

    /// Starts a watch for every subscribed cluster, stops the others.
    fn follow_endpoints(&mut self) {
        let wanted = self
            .subscriptions
            .get(ENDPOINT)
            .map(|s| s.names.clone())
            .unwrap_or_default();
        self.watches.retain(|service, stop| {
            let keep = wanted.contains(service);
            if !keep {
                stop.cancel();
            }
            keep
        });
        self.instances.retain(|service, _| wanted.contains(service));
        for service in wanted {
            if self.watches.contains_key(&service) {
                continue;
            }
            let stop = self.ads.stop.child_token();
            self.watches.insert(service.clone(), stop.clone());
            tokio::spawn(watch(
                self.ads.registry.clone(),
                self.ads.namespace.clone(),
                service,
                self.updates.clone(),
                stop,
            ));
        }
    }

    /// Sends the resources of `kind` that the client subscribed to (endpoints only for the
    /// services whose instances are known yet).
    async fn send(&mut self, kind: &str) -> bool {
        self.send_some(kind, None).await
    }

    /// [`Self::send`], limited to resource `only` when given: a changed cluster's endpoints.
    /// Only listeners and clusters must be sent whole in every response of the
    /// state-of-the-world protocol; a load assignment may come alone, so one cluster's change
    /// does not re-encode every cluster the stream follows.
    async fn send_some(&mut self, kind: &str, only: Option<&str>) -> bool {
        let Some(subscription) = self.subscriptions.get_mut(kind) else {
            return true;
        };
        let rules = self.ads.rules.borrow().clone();
        let resources: Vec<Any> = subscription
            .names
            .iter()
            .filter(|name| only.is_none_or(|only| only == name.as_str()))
            .filter_map(|name| match kind {
                LISTENER => Some(any(LISTENER, &resources::listener(name, rules.of(name)))),
                ROUTE => Some(any(
                    ROUTE,
                    &resources::route_configuration(name, rules.of(name)),
                )),
                CLUSTER => Some(any(CLUSTER, &resources::cluster(name))),
                _ => self
                    .instances
                    .get(name)
                    .map(|r| any(ENDPOINT, &resources::assignment(name, &r.instances))),
            })
            .collect();
        if kind == ENDPOINT && resources.is_empty() && !subscription.names.is_empty() {
            return true; // the first answers of the registry are on their way
        }
        self.sent += 1;
        subscription.nonce = self.sent.to_string();
        let response = DiscoveryResponse {
            version_info: self.sent.to_string(),
            resources,
            type_url: kind.into(),
            nonce: subscription.nonce.clone(),
            ..Default::default()
        };
        self.ads
            .metrics
            .responses
            .with_label_values(&[short(kind)])
            .inc();
        self.responses.send(Ok(response)).await.is_ok()
    }
}

/// Follows the passing instances of `cluster` (a service, or a subset of one by metadata)
/// with blocking queries; sends each new answer.
async fn watch(
    registry: Arc<dyn RegistryService>,
    namespace: String,
    cluster: String,
    updates: mpsc::Sender<(String, Arc<QueryResult>)>,
    stop: CancellationToken,
) {
    let (service, subset) = parse_cluster(&cluster);
    let mut index = 0;
    loop {
        let query = Query {
            namespace: Some(namespace.clone()),
            passing: true,
            meta: subset.clone(),
            index,
            wait: (index > 0).then_some(WAIT),
            ..Default::default()
        };
        let answer = tokio::select! {
            () = stop.cancelled() => return,
            answer = registry.query(&service, &query) => answer,
        };
        match answer {
            Ok(result) => {
                if index == 0 || result.index != index {
                    index = result.index.max(1);
                    if updates
                        .send((cluster.clone(), Arc::new(result)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%cluster, %error, "registry query for xDS failed; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ResponseStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let mut requests = request.into_inner();
        let (responses, rx) = mpsc::channel(16);
        let (updates, mut updated) = mpsc::channel(64);
        let mut session = Session {
            ads: self.clone(),
            node: String::new(),
            subscriptions: HashMap::new(),
            instances: BTreeMap::new(),
            watches: HashMap::new(),
            updates,
            responses,
            sent: 0,
        };
        let stop = self.stop.clone();
        let streams = self.metrics.streams.clone();
        let mut rules = self.rules.clone();
        rules.mark_unchanged();
        streams.inc();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    Ok(()) = rules.changed() => {
                        // Routes live in the listeners (and route configurations).
                        if !session.send(LISTENER).await || !session.send(ROUTE).await {
                            break;
                        }
                    }
                    request = requests.message() => match request {
                        Ok(Some(request)) => {
                            if !session.request(request).await {
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(status) => {
                            tracing::debug!(node = %session.node, %status, "xDS stream ended");
                            break;
                        }
                    },
                    Some((service, result)) = updated.recv() => {
                        if session.watches.contains_key(&service) {
                            session.instances.insert(service.clone(), result);
                            if !session.send_some(ENDPOINT, Some(&service)).await {
                                break;
                            }
                        }
                    }
                }
            }
            for stop in session.watches.values() {
                stop.cancel();
            }
            streams.dec();
            tracing::info!(node = %session.node, "xDS client disconnected");
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStream>, Status> {
        Err(Status::unimplemented(
            "incremental xDS is not served; use state-of-the-world ADS",
        ))
    }
}
