//! Bytes the service registry reads from the network or the store: DNS queries, Consul
//! service definitions, native registrations and query strings, stored instances and keys,
//! Consul transactions, session requests, KV query strings and stored KV entries. Each
//! decodes to a value or an error, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_registry::dns::{answer, Endpoint, Lookup};
use strata_registry::model::{Instance, IntoInstance, Registration, RegistryKey};

struct Fixed;

impl Lookup for Fixed {
    fn healthy(&self, _service: &str, _tag: Option<&str>) -> Vec<Endpoint> {
        vec![Endpoint {
            id: "a".into(),
            address: "127.0.0.1".into(),
            port: 80,
            weight: 1,
        }]
    }
}

fuzz_target!(|data: &[u8]| {
    let domain = hickory_proto::rr::Name::from_ascii("strata.").expect("valid domain");
    for limit in [512, 65535] {
        if let Some(reply) = answer(data, &domain, &Fixed, limit) {
            assert!(reply.len() <= limit.max(4096), "reply over the size limit");
        }
    }
    if let Ok(reg) = strata_registry::consul::parse_registration(data) {
        let _ = reg.into_instance();
    }
    if let Ok(reg) = serde_json::from_slice::<Registration>(data) {
        let _ = reg.into_instance();
    }
    let _ = serde_json::from_slice::<Instance>(data);
    let _ = RegistryKey::parse(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = strata_registry::http::parse_query(Some(text));
    }
    strata_registry::consul_kv::parse_untrusted(data);
});
