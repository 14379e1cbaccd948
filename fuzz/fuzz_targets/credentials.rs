//! Credentials as every interface reads them: a token from headers and query strings in the
//! native, Consul and Nacos dialects, any text presented as a token to a gate with access
//! control on, and Consul ACL rules. Nothing panics and garbage never authenticates.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_auth::Gate;
use strata_proto::kv::KeyValue;
use strata_store::Follower;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match pick % 3 {
        0 => {
            let _ = strata_registry::consul_acl::parse_rules(&text);
        }
        1 => {
            let mut builder = http::Request::builder();
            if let Ok(uri) = format!("/v1/x?{text}").parse::<http::Uri>() {
                builder = builder.uri(uri);
            }
            for name in ["authorization", "x-consul-token", "accessToken"] {
                if let Ok(value) = http::HeaderValue::from_bytes(rest) {
                    builder = builder.header(name, value);
                }
            }
            if let Ok(request) = builder.body(()) {
                let (parts, ()) = request.into_parts();
                let _ = strata_http::bearer_token(&parts);
                let _ = strata_registry::consul::consul_token(&parts);
                let _ = strata_nacos::nacos_token(&parts);
            }
        }
        _ => {
            let gate = Gate::off();
            let on = KeyValue {
                key: strata_auth::state::ENABLED_KEY.as_bytes().to_vec(),
                value: b"true".to_vec(),
                ..KeyValue::default()
            };
            gate.load(&[on], 1);
            assert!(gate.caller("fuzz", Some(&text), None).is_err());
            assert!(gate.caller("fuzz", None, None).is_err());
        }
    }
});
