//! What a provider and a consumer read from the network and from configuration: `grpc-timeout`
//! and `traceparent` headers, gRPC service configs, and the xDS routing rules and cluster
//! names. Any input gives a value or an error, never a panic; a value is usable (a timeout adds
//! to the clock, a trace context prints back as itself, a backoff is bounded).

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::time::Instant;
use strata_rpc::context::{format_grpc_timeout, parse_grpc_timeout};
use strata_rpc::{ServiceConfig, TraceParent};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(timeout) = parse_grpc_timeout(text) {
        assert!(parse_grpc_timeout(&format_grpc_timeout(timeout)).is_some_and(|t| t >= timeout));
    }
    if let Some(parent) = TraceParent::parse(text) {
        assert_eq!(TraceParent::parse(&parent.to_string()), Some(parent));
    }
    if let Ok(config) = ServiceConfig::from_json(text) {
        if let Some(method) = config.method("/a.B/C") {
            if let Some(timeout) = method.timeout {
                assert!(Instant::now().checked_add(timeout).is_some());
            }
            if let Some(retry) = &method.retry {
                for n in 0..8 {
                    assert!(retry.backoff(n) <= retry.max_backoff);
                }
            }
        }
    }
    if let Ok(rules) = strata_xds::rules::Rules::parse(text) {
        assert!(rules.services.iter().all(|s| !s.name.is_empty()));
    }
    let (service, subset) = strata_xds::rules::parse_cluster(text);
    let _ = strata_xds::rules::cluster_name(&service, &subset);
});
