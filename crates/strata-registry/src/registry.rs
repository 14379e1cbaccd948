//! The registry's operations: register, deregister, heartbeat, report, query.
//!
//! Writes are KV transactions through the log. Registration is one transaction that creates
//! the key only if it is absent and otherwise returns what is there, so a repeated identical
//! registration is idempotent and a conflicting one is refused, atomically. Status changes
//! compare-and-set on the instance's mod revision, so a check never overwrites a newer
//! registration. Reads come from the node's [`View`].

use crate::metrics::RegistryMetrics;
use crate::model::{
    lease_seconds, now_ms, service_key, validate_namespace, validate_service_name, CheckKind,
    Instance, InstanceRef, IntoInstance, Registration, ServiceSettings,
};
use crate::probe::Health;
use crate::view::{Stored, View};
use std::sync::Arc;
use std::time::Duration;
use strata_proto::error::{ApiError, ErrorCode};
use strata_proto::kv::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    ResponseOp, TxnRequest,
};
use strata_store::KvApi;
use tracing::{debug, info};

/// Longest a blocking query may wait.
pub const MAX_WAIT: Duration = Duration::from_secs(600);
/// How long a write waits for the local view to catch up before answering anyway.
const VIEW_CATCH_UP: Duration = Duration::from_secs(5);

/// The registry on one node.
pub struct Registry {
    /// The replicated store.
    pub store: Arc<dyn KvApi>,
    /// This node's view.
    pub view: Arc<View>,
    /// Metrics.
    pub metrics: RegistryMetrics,
    /// Checks this node runs, for `/v1/registry/checks/local`.
    pub local_checks: Arc<crate::checks::LocalChecks>,
    /// The node's task tracker: check loops, stream pumps and lease releases run on it, so
    /// shutdown waits for them.
    pub tracker: tokio_util::task::TaskTracker,
}

pub use strata_api::registry::{Query, QueryResult, Registered};

fn put_op(key: String, value: Vec<u8>, lease: i64) -> RequestOp {
    RequestOp::Put(PutRequest {
        key: key.into_bytes(),
        value,
        lease,
        prev_kv: false,
        ..Default::default()
    })
}

fn get_op(key: String) -> RequestOp {
    RequestOp::Range(RangeRequest {
        key: key.into_bytes(),
        ..RangeRequest::default()
    })
}

fn delete_op(key: String) -> RequestOp {
    RequestOp::DeleteRange(DeleteRangeRequest {
        key: key.into_bytes(),
        ..DeleteRangeRequest::default()
    })
}

fn mod_is(key: String, revision: i64) -> Compare {
    Compare {
        key: key.into_bytes(),
        range_end: Vec::new(),
        prefix: false,
        result: CompareResult::Equal,
        target: CompareTarget::ModRevision(revision),
    }
}

fn encode(instance: &Instance) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(instance).map_err(|e| ApiError::internal(format!("encode instance: {e}")))
}

fn not_registered(r: &InstanceRef) -> ApiError {
    ApiError::not_found(format!(
        "instance {} of service {} (namespace {}) is not registered",
        r.id, r.service, r.namespace
    ))
}

/// Resolves an optional namespace to a validated one.
pub fn namespace(ns: Option<&str>) -> Result<String, ApiError> {
    let ns = ns.unwrap_or(crate::model::DEFAULT_NAMESPACE);
    validate_namespace(ns)?;
    Ok(ns.to_string())
}

impl Registry {
    /// A registry over `store`, reading from `view`.
    pub fn new(
        store: Arc<dyn KvApi>,
        view: Arc<View>,
        metrics: RegistryMetrics,
        tracker: tokio_util::task::TaskTracker,
    ) -> Self {
        Registry {
            store,
            view,
            metrics,
            local_checks: Arc::default(),
            tracker,
        }
    }

    /// Waits (bounded) for the local view to apply `revision`.
    async fn settle(&self, revision: i64) {
        if !self.view.wait_for(revision, VIEW_CATCH_UP).await {
            debug!(revision, "registry view is slow to catch up");
        }
    }

    /// Registers an instance. With `replace` (Consul's semantics) an existing instance with
    /// the same id is overwritten; otherwise a different one is refused and an identical one
    /// is left as it is.
    pub async fn register(&self, reg: Registration, replace: bool) -> Result<Registered, ApiError> {
        self.metrics.op("register");
        let mut instance = reg.into_instance()?;
        let r = instance.reference();
        let key = r.key();
        if replace {
            if let Some(old) = self.view.get(&r) {
                if old.instance.check == instance.check && instance.check.is_some() {
                    instance.status = old.instance.status;
                    instance.output = old.instance.output.clone();
                    instance.status_since_ms = old.instance.status_since_ms;
                }
            }
        }
        let lease = match instance.ttl {
            Some(ttl) => strata_store::grant(&*self.store, lease_seconds(ttl.0)).await?,
            None => 0,
        };
        let value = encode(&instance)?;
        let txn = if replace {
            TxnRequest {
                compare: vec![],
                success: vec![put_op(key.clone(), value, lease)],
                failure: vec![],
            }
        } else {
            TxnRequest {
                compare: vec![mod_is(key.clone(), 0)],
                success: vec![put_op(key.clone(), value, lease)],
                failure: vec![get_op(key.clone())],
            }
        };
        // On an error the transaction may still have committed (a lost reply), so the new
        // lease is not revoked here: if nothing uses it, it expires after its TTL.
        let response = self.store.txn(txn).await?;
        if response.succeeded {
            let revision = response.header.revision;
            self.settle(revision).await;
            debug!(instance = %r, revision, "registered");
            return Ok(Registered {
                instance,
                revision,
                lease,
                created: true,
            });
        }
        self.release(lease);
        let existing = response
            .responses
            .into_iter()
            .find_map(|op| match op {
                ResponseOp::Range(range) => range.kvs.into_iter().next(),
                _ => None,
            })
            .ok_or_else(|| ApiError::unavailable("instance changed during registration; retry"))?;
        let stored: Instance = serde_json::from_slice(&existing.value)
            .map_err(|e| ApiError::internal(format!("stored instance {r} is undecodable: {e}")))?;
        if stored.same_registration(&instance) {
            self.settle(existing.mod_revision).await;
            return Ok(Registered {
                instance: stored,
                revision: existing.mod_revision,
                lease: existing.lease,
                created: false,
            });
        }
        Err(ApiError::new(
            ErrorCode::AlreadyExists,
            format!(
                "instance {} of service {} is already registered with different content \
                 ({}); deregister it first",
                r.id,
                r.service,
                stored.registration_differences(&instance).join("; ")
            ),
        ))
    }

    /// Revokes a lease nobody will use, in the background.
    fn release(&self, lease: i64) {
        if lease != 0 {
            let store = self.store.clone();
            self.tracker.spawn(async move {
                // Bounded: at shutdown the log may be gone; the lease then expires by its TTL.
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), store.lease_revoke(lease)).await;
            });
        }
    }

    /// Removes an instance.
    pub async fn deregister(&self, r: &InstanceRef) -> Result<i64, ApiError> {
        self.metrics.op("deregister");
        let response = self
            .store
            .txn(TxnRequest {
                compare: vec![Compare {
                    key: r.key().into_bytes(),
                    range_end: Vec::new(),
                    prefix: false,
                    result: CompareResult::Greater,
                    target: CompareTarget::CreateRevision(0),
                }],
                success: vec![get_op(r.key()), delete_op(r.key()), delete_op(r.ttl_key())],
                failure: vec![],
            })
            .await?;
        if !response.succeeded {
            return Err(not_registered(r));
        }
        let lease = response.responses.iter().find_map(|op| match op {
            ResponseOp::Range(range) => range.kvs.first().map(|kv| kv.lease),
            _ => None,
        });
        self.release(lease.unwrap_or(0));
        if let Some(marker) = self.view.ttl_marker(r) {
            self.release(marker);
        }
        let revision = response.header.revision;
        self.settle(revision).await;
        info!(instance = %r, revision, "deregistered");
        Ok(revision)
    }

    /// Renews an ephemeral instance's lease; returns the TTL in seconds.
    pub async fn heartbeat(&self, r: &InstanceRef) -> Result<i64, ApiError> {
        self.metrics.heartbeats.inc();
        let stored = match self.view.get(r) {
            Some(s) => s,
            None => self.read_through(r).await?,
        };
        if !stored.instance.ephemeral || stored.lease == 0 {
            return Err(ApiError::new(
                ErrorCode::FailedPrecondition,
                format!("instance {r} is persistent; heartbeats are for ephemeral instances"),
            ));
        }
        match self.store.lease_keepalive(stored.lease).await {
            Ok(renewed) => Ok(renewed.ttl),
            Err(e) if e.code == ErrorCode::NotFound => Err(not_registered(r)),
            Err(e) => Err(e),
        }
    }

    /// Reads an instance from the store when the view does not have it (yet).
    async fn read_through(&self, r: &InstanceRef) -> Result<Stored, ApiError> {
        let response = self
            .store
            .range(RangeRequest {
                key: r.key().into_bytes(),
                ..RangeRequest::default()
            })
            .await?;
        let kv = response
            .kvs
            .into_iter()
            .next()
            .ok_or_else(|| not_registered(r))?;
        let instance: Instance = serde_json::from_slice(&kv.value)
            .map_err(|e| ApiError::internal(format!("stored instance {r} is undecodable: {e}")))?;
        Ok(Stored {
            instance: Arc::new(instance),
            mod_revision: kv.mod_revision,
            lease: kv.lease,
        })
    }

    /// A TTL check's report (Consul's pass, warn, fail): renews the check's TTL and records
    /// the status if it changed.
    pub async fn report(
        &self,
        r: &InstanceRef,
        health: Health,
        output: String,
    ) -> Result<(), ApiError> {
        self.metrics.op("report");
        for _ in 0..5 {
            let stored = match self.view.get(r) {
                Some(s) => s,
                None => self.read_through(r).await?,
            };
            let Some(CheckKind::Ttl { ttl }) = stored.instance.check.as_ref().map(|c| &c.kind)
            else {
                return Err(ApiError::new(
                    ErrorCode::FailedPrecondition,
                    format!("instance {r} has no TTL check to report to"),
                ));
            };
            let ttl = ttl.0;
            let marker = self.view.ttl_marker(r);
            // A marker whose lease has another length (the check's TTL was changed by a
            // re-registration) is replaced rather than renewed.
            let renewed = match marker {
                Some(lease) => self
                    .store
                    .lease_keepalive(lease)
                    .await
                    .is_ok_and(|renewed| renewed.ttl == lease_seconds(ttl)),
                None => false,
            };
            if renewed && stored.instance.status == health {
                return Ok(());
            }
            let mut ops = Vec::new();
            if !renewed {
                let lease = strata_store::grant(&*self.store, lease_seconds(ttl)).await?;
                ops.push(put_op(r.ttl_key(), Vec::new(), lease));
            }
            if stored.instance.status != health {
                let mut next = (*stored.instance).clone();
                next.status = health;
                next.output = output.clone();
                next.status_since_ms = now_ms();
                ops.push(put_op(r.key(), encode(&next)?, stored.lease));
            }
            let response = self
                .store
                .txn(TxnRequest {
                    compare: vec![mod_is(r.key(), stored.mod_revision)],
                    success: ops,
                    failure: vec![],
                })
                .await?;
            if response.succeeded {
                self.metrics.status_changes.inc();
                self.settle(response.header.revision).await;
                return Ok(());
            }
            // The instance changed under us; read it again.
            // The failed transaction was answered at the revision of the write that beat it:
            // waiting for exactly that never waits for an unrelated later write.
            self.settle(response.header.revision).await;
        }
        Err(ApiError::unavailable(format!(
            "instance {r} kept changing during the report; retry"
        )))
    }

    /// Writes a status transition decided by a check runner, unless the instance changed.
    /// Returns false when it did (the runner re-reads and tries again next round).
    pub async fn transition(
        &self,
        stored: &Stored,
        health: Health,
        output: String,
        ttl_lapsed: bool,
    ) -> Result<bool, ApiError> {
        let mut next = (*stored.instance).clone();
        next.status = health;
        next.output = output;
        next.status_since_ms = now_ms();
        let r = next.reference();
        let response = self
            .store
            .txn(TxnRequest {
                compare: if ttl_lapsed {
                    // A report that renewed the TTL in the meantime wins.
                    vec![mod_is(r.key(), stored.mod_revision), mod_is(r.ttl_key(), 0)]
                } else {
                    vec![mod_is(r.key(), stored.mod_revision)]
                },
                success: vec![put_op(r.key(), encode(&next)?, stored.lease)],
                failure: vec![],
            })
            .await?;
        if response.succeeded {
            self.metrics.status_changes.inc();
            info!(instance = %r, from = ?stored.instance.status, to = ?health, "health changed");
        }
        Ok(response.succeeded)
    }

    /// Deletes an instance that stayed critical too long, unless it changed meanwhile.
    pub async fn reap(&self, stored: &Stored) -> Result<bool, ApiError> {
        let r = stored.instance.reference();
        let response = self
            .store
            .txn(TxnRequest {
                compare: vec![mod_is(r.key(), stored.mod_revision)],
                success: vec![delete_op(r.key()), delete_op(r.ttl_key())],
                failure: vec![],
            })
            .await?;
        if response.succeeded {
            self.metrics.op("reap");
            info!(instance = %r, "deregistered after staying critical");
        }
        Ok(response.succeeded)
    }

    /// Stores a service's settings.
    pub async fn set_settings(
        &self,
        ns: Option<&str>,
        service: &str,
        settings: ServiceSettings,
    ) -> Result<i64, ApiError> {
        let ns = namespace(ns)?;
        validate_service_name(service)?;
        if !(0.0..=1.0).contains(&settings.protect_threshold) {
            return Err(ApiError::bad_request(format!(
                "invalid protect_threshold {}: it must be between 0 and 1",
                settings.protect_threshold
            )));
        }
        let value = serde_json::to_vec(&settings)
            .map_err(|e| ApiError::internal(format!("encode settings: {e}")))?;
        let response = self
            .store
            .txn(TxnRequest {
                compare: vec![],
                success: vec![put_op(service_key(&ns, service), value, 0)],
                failure: vec![],
            })
            .await?;
        self.settle(response.header.revision).await;
        Ok(response.header.revision)
    }

    /// Finds a service's instances; blocks first when `query.index` is set.
    pub async fn query(&self, service: &str, query: &Query) -> Result<QueryResult, ApiError> {
        self.metrics.op("query");
        let ns = namespace(query.namespace.as_deref())?;
        validate_service_name(service)?;
        if query.index > 0 {
            let wait = query.wait.unwrap_or(Duration::from_secs(300)).min(MAX_WAIT);
            self.view
                .wait_for_change(&ns, service, query.index, wait)
                .await;
        }
        let (stored, index, settings) = self.view.service_now(&ns, service);
        let matches = |i: &Instance| {
            query.status.is_none_or(|s| i.status == s)
                && query.tags.iter().all(|t| i.tags.contains(t))
                && query.meta.iter().all(|(k, v)| i.meta.get(k) == Some(v))
        };
        let candidates: Vec<Arc<Instance>> = stored
            .into_iter()
            .map(|s| s.instance)
            .filter(|i| matches(i))
            .collect();
        let mut protected = false;
        let instances = if query.passing {
            let healthy: Vec<Arc<Instance>> =
                candidates.iter().filter(|i| i.healthy()).cloned().collect();
            let total = candidates.len();
            let threshold = settings.protect_threshold;
            if threshold > 0.0 && total > 0 && (healthy.len() as f64) / (total as f64) < threshold {
                protected = true;
                self.metrics.op("protected_query");
                candidates.into_iter().filter(|i| i.enabled).collect()
            } else {
                healthy
            }
        } else {
            candidates
        };
        Ok(QueryResult {
            index: index.max(1),
            protected,
            instances,
        })
    }
}

impl strata_api::registry::RegistryService for Registry {
    fn register(
        &self,
        registration: Registration,
        replace: bool,
    ) -> strata_api::BoxFuture<'_, Result<Registered, ApiError>> {
        Box::pin(Registry::register(self, registration, replace))
    }

    fn deregister<'a>(
        &'a self,
        instance: &'a InstanceRef,
    ) -> strata_api::BoxFuture<'a, Result<i64, ApiError>> {
        Box::pin(Registry::deregister(self, instance))
    }

    fn heartbeat<'a>(
        &'a self,
        instance: &'a InstanceRef,
    ) -> strata_api::BoxFuture<'a, Result<i64, ApiError>> {
        Box::pin(Registry::heartbeat(self, instance))
    }

    fn query<'a>(
        &'a self,
        service: &'a str,
        query: &'a Query,
    ) -> strata_api::BoxFuture<'a, Result<QueryResult, ApiError>> {
        Box::pin(Registry::query(self, service, query))
    }
}
