//! Load balancing: the policies live in `strata-resilience` (shared with the RPC consumer);
//! what a request hashes for `ring_hash` and `maglev` is the gateway's own.

pub use strata_resilience::balance::{hash, now_ms, Endpoint, Members, EJECTION_MS};

/// What `ring_hash` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// A request header's value.
    Header(hyper::header::HeaderName),
    /// A cookie's value.
    Cookie(String),
    /// The client's address.
    ClientIp,
}

impl HashOn {
    /// Parses `header:NAME`, `cookie:NAME` or `client_ip`.
    pub fn parse(text: &str) -> Result<HashOn, String> {
        let bad = || format!("hash_on {text:?} is not header:NAME, cookie:NAME or client_ip");
        match text.split_once(':') {
            Some(("header", name)) => hyper::header::HeaderName::from_bytes(name.as_bytes())
                .map(HashOn::Header)
                .map_err(|_| bad()),
            Some(("cookie", name)) if !name.is_empty() => Ok(HashOn::Cookie(name.to_string())),
            None if text == "client_ip" => Ok(HashOn::ClientIp),
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_on_parses_its_three_forms() {
        assert!(matches!(
            HashOn::parse("header:x-user"),
            Ok(HashOn::Header(_))
        ));
        assert_eq!(
            HashOn::parse("cookie:sid"),
            Ok(HashOn::Cookie("sid".into()))
        );
        assert_eq!(HashOn::parse("client_ip"), Ok(HashOn::ClientIp));
        assert!(HashOn::parse("ip").is_err());
        assert!(HashOn::parse("header:bad name").is_err());
    }
}
