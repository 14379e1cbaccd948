//! The gateway's route table and matcher: any text parses (TOML or JSON) to a table or an
//! error; any table compiles or is refused with a message; a compiled table answers any
//! request (method, host, path, query, headers taken from the input) without a panic, and a
//! route's forwarded path is always absolute.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_gateway::route::RequestView;
use strata_gateway::{Compiled, Table};

fuzz_target!(|data: &[u8]| {
    // The input is a table, then (after a NUL) request lines: METHOD, HOST, PATH?QUERY,
    // then `name: value` headers.
    let (table, request) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b""[..]),
    };
    let Ok(text) = std::str::from_utf8(table) else {
        return;
    };
    let compiled = match Table::parse(text).and_then(Compiled::new) {
        Ok(compiled) => compiled,
        Err(error) => {
            assert!(!error.0.is_empty(), "a refusal says why");
            return;
        }
    };
    let request = String::from_utf8_lossy(request);
    let mut lines = request.lines();
    let method = http::Method::from_bytes(lines.next().unwrap_or("GET").as_bytes())
        .unwrap_or(http::Method::GET);
    let host = lines.next().unwrap_or("").to_ascii_lowercase();
    let target = lines.next().unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
    let mut headers = http::HeaderMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if let (Ok(name), Ok(value)) = (
                http::header::HeaderName::from_bytes(name.trim().as_bytes()),
                http::HeaderValue::from_str(value.trim()),
            ) {
                headers.append(name, value);
            }
        }
    }
    let view = RequestView { method: &method, host: &host, path: &path, query, headers: &headers };
    if let Some((_, route, params)) = compiled.find(&view) {
        assert!(route.upstream_path(&path, &params).starts_with('/'));
        if let Some(canary) = &route.canary {
            let _ = canary.choose(&headers);
        }
    }
});
