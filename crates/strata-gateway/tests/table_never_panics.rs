//! The route table parser, compiler and matcher on arbitrary and mutated input (the stable-Rust
//! twin of the `gateway_table` fuzz target): never a panic, a refusal always says why, and a
//! matched route forwards to an absolute path.
#![allow(clippy::unwrap_used)]

use hyper::{HeaderMap, Method};
use proptest::prelude::*;
use strata_gateway::route::RequestView;
use strata_gateway::{Compiled, Table};

const VALID: &str = r#"
[[routes]]
name = "a"
hosts = ["*.example.com"]
path = { template = "/users/{id}/x" }
rewrite = "/u/{id}"
upstream = "u"
canary = { upstream = "u", weight = 5.5, sticky = "cookie:side" }
[[routes]]
name = "b"
path = { prefix = "/api/" }
strip_prefix = true
query = [{ name = "v", regex = "v[0-9]+" }]
cookies = [{ name = "c", present = true }]
upstream = "u"
[[routes]]
name = "c"
path = { regex = "/r/.*" }
redirect = { to = "/n{path}{query}" }
[[upstreams]]
name = "u"
addresses = ["127.0.0.1:80"]
balance = "ring_hash"
hash_on = "header:x-user"
"#;

fn probe(compiled: &Compiled, host: &str, path: &str, query: Option<&str>) {
    let mut headers = HeaderMap::new();
    headers.insert("cookie", "c=1; side=canary".parse().unwrap());
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let view = RequestView {
        method: &Method::GET,
        host,
        path: &path,
        query,
        headers: &headers,
    };
    if let Some((_, route, params)) = compiled.find(&view) {
        assert!(route.upstream_path(&path, &params).starts_with('/'));
        if let Some(canary) = &route.canary {
            let _ = canary.choose(&headers);
        }
    }
}

fn check(text: &str, host: &str, path: &str, query: Option<&str>) {
    match Table::parse(text).and_then(Compiled::new) {
        Ok(compiled) => probe(&compiled, host, path, query),
        Err(error) => assert!(!error.0.is_empty()),
    }
}

proptest! {
    #[test]
    fn any_text_parses_or_is_refused(text in ".{0,400}", host in "[a-z.*]{0,20}", path in "[/a-z0-9{}%.]{0,30}") {
        check(&text, &host, &path, None);
    }

    #[test]
    fn mutated_valid_tables_compile_or_are_refused(
        cut in 0usize..VALID.len(),
        insert in "[\\[\\]{}\"=,./*a-z0-9 \n]{0,8}",
        host in "[a-z.]{0,20}",
        path in "/[a-z0-9/]{0,30}",
        query in proptest::option::of("[a-z0-9=&]{0,20}"),
    ) {
        let mut text = VALID.to_string();
        let at = (0..=cut).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        text.insert_str(at, &insert);
        check(&text, &host, &path, query.as_deref());
    }
}

#[test]
fn the_valid_table_compiles_and_matches() {
    let compiled = Compiled::new(Table::parse(VALID).unwrap()).unwrap();
    probe(&compiled, "www.example.com", "/users/7/x", None);
    probe(&compiled, "other", "/api/x", Some("v=v2"));
}
