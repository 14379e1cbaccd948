//! Stable counterpart of the `registry_input` fuzz target: arbitrary and mutated bytes never
//! panic the registry's parsers.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use strata_registry::model::{Instance, IntoInstance, Registration, RegistryKey};

/// A Consul transaction, session request and KV query string that parse.
const KV_VALID: &[&str] = &[
    r#"[{"KV":{"Verb":"cas","Key":"a/b","Value":"eA==","Index":3,"Flags":1}},{"KV":{"Verb":"get-tree","Key":"a/"}}]"#,
    r#"{"Name":"n","TTL":"10s","LockDelay":"0.001s","Behavior":"delete","Checks":["serfHealth","service:web-1"]}"#,
    "index=12&wait=1m30s&stale&cas=0&flags=18446744073709551615&acquire=s",
];

const VALID: &[&str] = &[
    r#"{"Name":"web","ID":"web-1","Port":80,"Tags":["a"],"Meta":{"k":"v"},"Check":{"HTTP":"http://127.0.0.1:1/","Interval":"1s"}}"#,
    r#"{"name":"web","checks":[{"ttl":"10s"}],"weights":{"passing":3}}"#,
    r#"{"service":"web","id":"a","address":"10.0.0.1","port":80,"check":{"probe":{"kind":"tcp","addr":"a:1"},"interval":"1s"}}"#,
];

fn parse_all(data: &[u8]) {
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
}

proptest! {
    #[test]
    fn arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        parse_all(&data);
    }

    #[test]
    fn mutated_valid_inputs(which in 0..VALID.len() + KV_VALID.len(), at in any::<usize>(), byte in any::<u8>(), cut in any::<usize>()) {
        let valid = VALID.iter().chain(KV_VALID).nth(which).unwrap();
        let mut data = valid.as_bytes().to_vec();
        let i = at % data.len();
        data[i] = byte;
        parse_all(&data);
        data.truncate(cut % (data.len() + 1));
        parse_all(&data);
    }

    #[test]
    fn query_strings(text in "[a-z=&%0-9:.]{0,64}") {
        let _ = strata_registry::http::parse_query(Some(&text));
    }
}

#[test]
fn valid_inputs_parse() {
    for v in VALID {
        let consul = strata_registry::consul::parse_registration(v.as_bytes());
        let native = serde_json::from_slice::<Registration>(v.as_bytes());
        assert!(consul.is_ok() || native.is_ok(), "{v}");
    }
}

#[test]
fn valid_consul_kv_inputs_parse() {
    use strata_registry::consul_kv::{parse_txn, put_op, read_options};
    assert_eq!(parse_txn(KV_VALID[0].as_bytes()).unwrap().ops.len(), 2);
    strata_registry::consul_session::parse_new_session(KV_VALID[1].as_bytes()).unwrap();
    let pairs = strata_registry::http::query_pairs(Some(KV_VALID[2]));
    assert_eq!(read_options(&pairs).unwrap().index, 12);
    assert!(
        put_op("k", &pairs, b"").is_err(),
        "cas with acquire conflicts"
    );
}
