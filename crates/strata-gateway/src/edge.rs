//! Frontend concerns of a route: CORS and client address lists, and who the client is behind
//! trusted proxies.

use crate::model::CorsSpec;
use hyper::header::{self, HeaderMap, HeaderValue};
use std::net::IpAddr;

/// An address block, `10.0.0.0/8` or `2001:db8::/32` (a bare address is a block of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    base: IpAddr,
    bits: u8,
}

impl Cidr {
    /// Parses `ADDRESS[/BITS]`.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let bad = || format!("{text:?} is not an address or ADDRESS/BITS block");
        let (addr, bits) = match text.trim().split_once('/') {
            Some((a, b)) => (a, Some(b.parse::<u8>().map_err(|_| bad())?)),
            None => (text.trim(), None),
        };
        let base: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if base.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        if bits > max {
            return Err(bad());
        }
        Ok(Cidr { base, bits })
    }

    /// True when `ip` is in the block (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.base, ip) {
            (IpAddr::V4(base), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(base) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(base), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(base) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Parses a list of blocks, naming the field in the error.
pub fn parse_list(field: &str, list: &[String]) -> Result<Vec<Cidr>, String> {
    list.iter()
        .map(|c| Cidr::parse(c).map_err(|e| format!("{field}: {e}")))
        .collect()
}

/// The client's address: the connection's peer, or, when the peer is a trusted proxy, the
/// right-most address of `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    if trusted.is_empty() || !trusted.iter().any(|c| c.contains(peer)) {
        return peer;
    }
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    hops.into_iter()
        .rev()
        .find(|ip| !trusted.iter().any(|c| c.contains(*ip)))
        .unwrap_or(peer)
}

/// A route's address lists: a denied address is refused; with an allow list, only its
/// addresses pass.
#[derive(Debug, Default, Clone)]
pub struct IpRules {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
}

impl IpRules {
    /// Compiles the lists.
    pub fn new(allow: &[String], deny: &[String]) -> Result<IpRules, String> {
        Ok(IpRules {
            allow: parse_list("allow_ips", allow)?,
            deny: parse_list("deny_ips", deny)?,
        })
    }

    /// True when `ip` may use the route.
    pub fn permits(&self, ip: IpAddr) -> bool {
        !self.deny.iter().any(|c| c.contains(ip))
            && (self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip)))
    }
}

/// A route's CORS policy.
#[derive(Debug)]
pub struct Cors {
    any_origin: bool,
    origins: Vec<String>,
    methods: HeaderValue,
    headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

impl Cors {
    /// Compiles a policy.
    pub fn new(spec: &CorsSpec) -> Result<Cors, String> {
        let any_origin = spec.allow_origins.iter().any(|o| o == "*");
        if any_origin && spec.allow_credentials {
            return Err(
                "cors: allow_credentials cannot go with the origin \"*\" (browsers refuse it)"
                    .into(),
            );
        }
        if spec.allow_origins.is_empty() {
            return Err("cors: give allow_origins (\"*\" for any)".into());
        }
        let join = |list: &[String]| {
            HeaderValue::from_str(&list.join(", "))
                .map_err(|_| "cors: a list holds a character headers cannot carry".to_string())
        };
        let methods = if spec.allow_methods.is_empty() {
            HeaderValue::from_static("GET, HEAD, POST")
        } else {
            join(&spec.allow_methods)?
        };
        Ok(Cors {
            any_origin,
            origins: spec
                .allow_origins
                .iter()
                .map(|o| o.to_ascii_lowercase())
                .collect(),
            methods,
            headers: (!spec.allow_headers.is_empty())
                .then(|| join(&spec.allow_headers))
                .transpose()?,
            expose: (!spec.expose_headers.is_empty())
                .then(|| join(&spec.expose_headers))
                .transpose()?,
            credentials: spec.allow_credentials,
            max_age: HeaderValue::from(spec.max_age.map_or(600, |d| d.0.as_secs())),
        })
    }

    fn allows(&self, origin: &str) -> bool {
        self.any_origin || self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }

    /// The answer to a preflight from `origin`: 204 with the policy, or 403.
    pub fn preflight(
        &self,
        origin: &str,
        request_headers: Option<&HeaderValue>,
    ) -> hyper::Response<axum::body::Body> {
        let mut response = hyper::Response::new(axum::body::Body::empty());
        if !self.allows(origin) {
            *response.status_mut() = hyper::StatusCode::FORBIDDEN;
            return response;
        }
        *response.status_mut() = hyper::StatusCode::NO_CONTENT;
        let h = response.headers_mut();
        self.origin_headers(origin, h);
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone());
        match (&self.headers, request_headers) {
            (Some(allowed), _) => {
                h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allowed.clone());
            }
            // No list: allow what the browser asks for (as most gateways do by default).
            (None, Some(asked)) => {
                h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
            }
            (None, None) => {}
        }
        h.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        response
    }

    /// Adds the policy's headers to an actual response for `origin` (nothing when the origin is
    /// not allowed: the browser then refuses the response).
    pub fn decorate(&self, origin: &str, headers: &mut HeaderMap) {
        if !self.allows(origin) {
            return;
        }
        self.origin_headers(origin, headers);
        if let Some(expose) = &self.expose {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }

    fn origin_headers(&self, origin: &str, headers: &mut HeaderMap) {
        if self.any_origin {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        } else if let Ok(value) = HeaderValue::from_str(origin) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
            headers.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        if self.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_contain_what_they_should() {
        let block = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(block.contains("10.1.200.3".parse().unwrap()));
        assert!(!block.contains("10.2.0.1".parse().unwrap()));
        assert!(block.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.1")
            .unwrap()
            .contains("10.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope/8").is_err());
    }

    #[test]
    fn the_client_behind_trusted_proxies_is_the_rightmost_untrusted_hop() {
        let trusted = parse_list("t", &["10.0.0.0/8".into()]).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.2.3.4, 5.6.7.8, 10.0.0.2"),
        );
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(peer, &headers, &trusted),
            "5.6.7.8".parse::<IpAddr>().unwrap()
        );
        let stranger: IpAddr = "9.9.9.9".parse().unwrap();
        assert_eq!(
            client_ip(stranger, &headers, &trusted),
            stranger,
            "an untrusted peer's header is ignored"
        );
        assert_eq!(client_ip(peer, &headers, &[]), peer);
    }
}
