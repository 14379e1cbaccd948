//! gRPC's service config, the part a consumer acts on: per-method timeouts, retry and hedging
//! policies, and retry throttling, with the JSON field names and semantics of gRFC A6 (and
//! A6's limits: at most 5 attempts, a retry policy or a hedging policy, never both).

use serde::Deserialize;
use std::collections::HashMap;
use std::time::Duration;
use tonic::Code;

/// A parsed, validated service config.
#[derive(Debug, Clone, Default)]
pub struct ServiceConfig {
    exact: HashMap<String, MethodConfig>,
    services: HashMap<String, MethodConfig>,
    default: Option<MethodConfig>,
    /// Retry throttling, shared by every method of the channel.
    pub throttling: Option<Throttling>,
}

/// What applies to one method.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MethodConfig {
    /// The call's deadline when the caller sets none.
    pub timeout: Option<Duration>,
    /// Retries after failures.
    pub retry: Option<RetryPolicy>,
    /// Parallel attempts after a delay.
    pub hedging: Option<HedgingPolicy>,
}

/// `retryPolicy`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (2 to 5).
    pub max_attempts: u32,
    /// The first backoff's upper bound.
    pub initial_backoff: Duration,
    /// No backoff is longer.
    pub max_backoff: Duration,
    /// Growth of the bound per attempt.
    pub backoff_multiplier: f64,
    /// Codes that are retried.
    pub retryable: Vec<Code>,
}

impl RetryPolicy {
    /// The backoff before retry `n` (1 for the first retry): uniformly random up to the bound,
    /// as A6 specifies.
    pub fn backoff(&self, n: u32) -> Duration {
        let bound = self.initial_backoff.as_secs_f64()
            * self
                .backoff_multiplier
                .powi(n.saturating_sub(1).min(64) as i32);
        let bound = bound.min(self.max_backoff.as_secs_f64());
        Duration::try_from_secs_f64(rand::random::<f64>() * bound).unwrap_or(self.max_backoff)
    }
}

/// `hedgingPolicy`.
#[derive(Debug, Clone, PartialEq)]
pub struct HedgingPolicy {
    /// Attempts in all, the first included (2 to 5).
    pub max_attempts: u32,
    /// Wait before each further attempt while none has answered.
    pub delay: Duration,
    /// Codes after which the other attempts go on (any other code ends the call).
    pub non_fatal: Vec<Code>,
}

/// `retryThrottling`: retries and hedges stop while the channel's token count is at or below
/// half of `max_tokens`; each failure takes a token, each success gives back `token_ratio`.
#[derive(Debug, Clone, PartialEq)]
pub struct Throttling {
    /// 1 to 1000.
    pub max_tokens: f64,
    /// Above 0.
    pub token_ratio: f64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    method_config: Vec<RawMethod>,
    retry_throttling: Option<RawThrottling>,
    #[serde(default, rename = "loadBalancingConfig")]
    _load_balancing_config: serde_json::Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMethod {
    #[serde(default)]
    name: Vec<RawName>,
    timeout: Option<String>,
    retry_policy: Option<RawRetry>,
    hedging_policy: Option<RawHedging>,
}

#[derive(Deserialize)]
struct RawName {
    #[serde(default)]
    service: String,
    #[serde(default)]
    method: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRetry {
    max_attempts: u32,
    initial_backoff: String,
    max_backoff: String,
    backoff_multiplier: f64,
    retryable_status_codes: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawHedging {
    max_attempts: u32,
    hedging_delay: Option<String>,
    #[serde(default)]
    non_fatal_status_codes: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawThrottling {
    max_tokens: f64,
    token_ratio: f64,
}

/// Parses a protobuf JSON duration (`"1.5s"`).
fn duration(field: &str, text: &str) -> Result<Duration, String> {
    text.strip_suffix('s')
        .and_then(|n| n.parse::<f64>().ok())
        .and_then(|n| Duration::try_from_secs_f64(n).ok())
        // gRPC's own limit for durations (about 10,000 years) keeps deadlines addable to
        // the clock.
        .filter(|d| d.as_secs() <= 315_576_000_000)
        .ok_or_else(|| format!("{field}: {text:?} is not a duration like \"1.5s\""))
}

const CODES: &[(&str, Code)] = &[
    ("OK", Code::Ok),
    ("CANCELLED", Code::Cancelled),
    ("UNKNOWN", Code::Unknown),
    ("INVALID_ARGUMENT", Code::InvalidArgument),
    ("DEADLINE_EXCEEDED", Code::DeadlineExceeded),
    ("NOT_FOUND", Code::NotFound),
    ("ALREADY_EXISTS", Code::AlreadyExists),
    ("PERMISSION_DENIED", Code::PermissionDenied),
    ("RESOURCE_EXHAUSTED", Code::ResourceExhausted),
    ("FAILED_PRECONDITION", Code::FailedPrecondition),
    ("ABORTED", Code::Aborted),
    ("OUT_OF_RANGE", Code::OutOfRange),
    ("UNIMPLEMENTED", Code::Unimplemented),
    ("INTERNAL", Code::Internal),
    ("UNAVAILABLE", Code::Unavailable),
    ("DATA_LOSS", Code::DataLoss),
    ("UNAUTHENTICATED", Code::Unauthenticated),
];

/// A status code's canonical name (`UNAVAILABLE`).
pub fn code_name(code: Code) -> &'static str {
    CODES
        .iter()
        .find(|(_, c)| *c == code)
        .map_or("UNKNOWN", |(name, _)| name)
}

/// Parses a status code given by name (any case) or number.
pub fn parse_code(value: &serde_json::Value) -> Result<Code, String> {
    match value {
        serde_json::Value::String(name) => CODES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, c)| *c)
            .ok_or_else(|| format!("{name:?} is not a gRPC status code")),
        serde_json::Value::Number(n) => n
            .as_i64()
            .filter(|n| (0..=16).contains(n))
            .map(|n| Code::from_i32(n as i32))
            .ok_or_else(|| format!("{n} is not a gRPC status code")),
        other => Err(format!("{other} is not a gRPC status code")),
    }
}

fn codes(field: &str, values: &[serde_json::Value]) -> Result<Vec<Code>, String> {
    values
        .iter()
        .map(|v| parse_code(v).map_err(|e| format!("{field}: {e}")))
        .collect()
}

impl ServiceConfig {
    /// Parses and checks a service config in gRPC's JSON form; the error names the field.
    pub fn from_json(text: &str) -> Result<ServiceConfig, String> {
        let raw: Raw = serde_json::from_str(text).map_err(|e| format!("service config: {e}"))?;
        let mut config = ServiceConfig::default();
        for (i, method) in raw.method_config.into_iter().enumerate() {
            let at = format!("methodConfig[{i}]");
            if method.retry_policy.is_some() && method.hedging_policy.is_some() {
                return Err(format!(
                    "{at}: retryPolicy and hedgingPolicy cannot both be set"
                ));
            }
            let parsed = MethodConfig {
                timeout: method
                    .timeout
                    .map(|t| duration(&format!("{at}.timeout"), &t))
                    .transpose()?,
                retry: method
                    .retry_policy
                    .map(|r| -> Result<RetryPolicy, String> {
                        let at = format!("{at}.retryPolicy");
                        if r.max_attempts < 2 {
                            return Err(format!("{at}.maxAttempts must be at least 2"));
                        }
                        let policy = RetryPolicy {
                            max_attempts: r.max_attempts.min(5),
                            initial_backoff: duration(
                                &format!("{at}.initialBackoff"),
                                &r.initial_backoff,
                            )?,
                            max_backoff: duration(&format!("{at}.maxBackoff"), &r.max_backoff)?,
                            backoff_multiplier: r.backoff_multiplier,
                            retryable: codes(
                                &format!("{at}.retryableStatusCodes"),
                                &r.retryable_status_codes,
                            )?,
                        };
                        if policy.initial_backoff.is_zero() || policy.max_backoff.is_zero() {
                            return Err(format!("{at}: backoffs must be above zero"));
                        }
                        if policy.backoff_multiplier.is_nan() || policy.backoff_multiplier <= 0.0 {
                            return Err(format!("{at}.backoffMultiplier must be above zero"));
                        }
                        if policy.retryable.is_empty() {
                            return Err(format!("{at}.retryableStatusCodes must not be empty"));
                        }
                        Ok(policy)
                    })
                    .transpose()?,
                hedging: method
                    .hedging_policy
                    .map(|h| -> Result<HedgingPolicy, String> {
                        let at = format!("{at}.hedgingPolicy");
                        if h.max_attempts < 2 {
                            return Err(format!("{at}.maxAttempts must be at least 2"));
                        }
                        Ok(HedgingPolicy {
                            max_attempts: h.max_attempts.min(5),
                            delay: h
                                .hedging_delay
                                .map(|d| duration(&format!("{at}.hedgingDelay"), &d))
                                .transpose()?
                                .unwrap_or_default(),
                            non_fatal: codes(
                                &format!("{at}.nonFatalStatusCodes"),
                                &h.non_fatal_status_codes,
                            )?,
                        })
                    })
                    .transpose()?,
            };
            if method.name.is_empty() {
                return Err(format!("{at}.name must list at least one name"));
            }
            for name in method.name {
                let slot = match (name.service.is_empty(), name.method.is_empty()) {
                    (true, true) => &mut config.default,
                    (true, false) => {
                        return Err(format!("{at}.name: a method needs its service"));
                    }
                    (false, true) => {
                        config.services.insert(name.service.clone(), parsed.clone());
                        continue;
                    }
                    (false, false) => {
                        config
                            .exact
                            .insert(format!("{}/{}", name.service, name.method), parsed.clone());
                        continue;
                    }
                };
                if slot.is_some() {
                    return Err(format!("{at}.name: the default is given twice"));
                }
                *slot = Some(parsed.clone());
            }
        }
        if let Some(t) = raw.retry_throttling {
            if !(1.0..=1000.0).contains(&t.max_tokens)
                || t.token_ratio.is_nan()
                || t.token_ratio <= 0.0
            {
                return Err(
                    "retryThrottling: maxTokens must be 1 to 1000 and tokenRatio above zero".into(),
                );
            }
            config.throttling = Some(Throttling {
                max_tokens: t.max_tokens,
                token_ratio: t.token_ratio,
            });
        }
        Ok(config)
    }

    /// The config of `path` (`/package.Service/Method`): the method's own, else its
    /// service's, else the default.
    pub fn method(&self, path: &str) -> Option<&MethodConfig> {
        let full = path.trim_start_matches('/');
        let service = full.split_once('/').map_or(full, |(s, _)| s);
        self.exact
            .get(full)
            .or_else(|| self.services.get(service))
            .or(self.default.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a6_and_picks_the_most_specific_entry() {
        let config = ServiceConfig::from_json(
            r#"{"methodConfig": [
                {"name": [{"service": "orders.v1.Orders", "method": "Create"}], "timeout": "0.25s",
                 "retryPolicy": {"maxAttempts": 9, "initialBackoff": "0.1s", "maxBackoff": "1s",
                                 "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", 4]}},
                {"name": [{"service": "orders.v1.Orders"}],
                 "hedgingPolicy": {"maxAttempts": 3, "hedgingDelay": "0.05s", "nonFatalStatusCodes": ["unavailable"]}},
                {"name": [{}], "timeout": "2s"}
              ],
              "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}}"#,
        )
        .unwrap();
        let create = config.method("/orders.v1.Orders/Create").unwrap();
        assert_eq!(create.timeout, Some(Duration::from_millis(250)));
        let retry = create.retry.as_ref().unwrap();
        assert_eq!(retry.max_attempts, 5, "capped");
        assert_eq!(retry.retryable, [Code::Unavailable, Code::DeadlineExceeded]);
        for n in 1..10 {
            assert!(retry.backoff(n) <= Duration::from_secs(1));
        }
        let get = config.method("/orders.v1.Orders/Get").unwrap();
        assert_eq!(
            get.hedging.as_ref().unwrap().delay,
            Duration::from_millis(50)
        );
        assert_eq!(
            config.method("/other.Svc/X").unwrap().timeout,
            Some(Duration::from_secs(2))
        );
        assert_eq!(config.throttling.as_ref().unwrap().max_tokens, 10.0);
    }

    #[test]
    fn errors_name_the_field() {
        for (text, wanted) in [
            (
                r#"{"methodConfig":[{"name":[{}],"timeout":"5"}]}"#,
                "methodConfig[0].timeout",
            ),
            (
                r#"{"methodConfig":[{"name":[{}],"timeout":"1e300s"}]}"#,
                "methodConfig[0].timeout",
            ),
            (
                r#"{"methodConfig":[{"name":[{}],"retryPolicy":{"maxAttempts":1,"initialBackoff":"1s","maxBackoff":"1s","backoffMultiplier":1,"retryableStatusCodes":["UNAVAILABLE"]}}]}"#,
                "maxAttempts",
            ),
            (
                r#"{"methodConfig":[{"name":[{}],"retryPolicy":{"maxAttempts":2,"initialBackoff":"1s","maxBackoff":"1s","backoffMultiplier":1,"retryableStatusCodes":["NOPE"]}}]}"#,
                "retryableStatusCodes",
            ),
            (
                r#"{"methodConfig":[{"name":[{"method":"X"}]}]}"#,
                "needs its service",
            ),
            (
                r#"{"retryThrottling":{"maxTokens":0,"tokenRatio":1}}"#,
                "maxTokens",
            ),
            (
                r#"{"methodConfig":[{"name":[{}],"retryPolicy":{"maxAttempts":2,"initialBackoff":"1s","maxBackoff":"1s","backoffMultiplier":1,"retryableStatusCodes":["UNAVAILABLE"]},"hedgingPolicy":{"maxAttempts":2}}]}"#,
                "both",
            ),
        ] {
            let error = ServiceConfig::from_json(text).unwrap_err();
            assert!(error.contains(wanted), "{error} lacks {wanted}");
        }
    }
}
