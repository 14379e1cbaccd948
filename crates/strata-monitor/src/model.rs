//! What the store holds and the query engine reads: label sets, samples, series, and the
//! [`Queryable`] seam between them.

use promql_parser::label::{MatchOp, Matcher};
use std::fmt;
use std::sync::Arc;

/// The label that holds a series' metric name.
pub const METRIC_NAME: &str = "__name__";

/// Prometheus's staleness marker: a NaN with this exact bit pattern ends a series (a target
/// that stopped exposing it, or a failed scrape). Queries treat it as "no sample".
pub const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

/// True when `v` is the staleness marker.
pub fn is_stale(v: f64) -> bool {
    v.to_bits() == STALE_NAN
}

/// A sample value as Prometheus writes it (Go's `strconv.FormatFloat(v, 'f', -1, 64)`, with
/// `NaN`, `+Inf` and `-Inf`).
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// Percent-encodes `s` for a URL's query string (everything but unreserved characters).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A label set: pairs sorted by name, names unique.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Labels(Arc<[(String, String)]>);

impl Labels {
    /// A label set from pairs in any order; empty values are dropped (Prometheus treats an
    /// empty label as an absent one) and a repeated name keeps its last value.
    pub fn new(mut pairs: Vec<(String, String)>) -> Labels {
        pairs.retain(|(_, v)| !v.is_empty());
        pairs.reverse();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        pairs.dedup_by(|later, earlier| later.0 == earlier.0);
        Labels(pairs.into())
    }

    /// A label set from string pairs.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Labels {
        Labels::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// The value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .map(|i| self.0[i].1.as_str())
    }

    /// The metric name, if present.
    pub fn name(&self) -> Option<&str> {
        self.get(METRIC_NAME)
    }

    /// The pairs, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The number of labels.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// An identity of this copy of the set (the address of its shared pairs): equal for
    /// clones, different for any other set alive at the same time.
    pub fn identity(&self) -> usize {
        Arc::as_ptr(&self.0) as *const () as usize
    }

    /// The pairs, for building a changed copy.
    pub fn to_vec(&self) -> Vec<(String, String)> {
        self.0.to_vec()
    }

    /// A copy without the metric name.
    pub fn without_name(&self) -> Labels {
        Labels(
            self.0
                .iter()
                .filter(|(k, _)| k != METRIC_NAME)
                .cloned()
                .collect::<Vec<_>>()
                .into(),
        )
    }

    /// True when every matcher accepts this set (an absent label reads as "").
    pub fn matches(&self, matchers: &[Matcher]) -> bool {
        matchers
            .iter()
            .all(|m| m.is_match(self.get(&m.name).unwrap_or("")))
    }
}

impl fmt::Display for Labels {
    /// Prometheus's text form: `name{a="1", b="2"}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(name) = self.name() {
            f.write_str(name)?;
        }
        f.write_str("{")?;
        let mut first = true;
        for (k, v) in self.iter().filter(|(k, _)| *k != METRIC_NAME) {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{k}={v:?}")?;
        }
        f.write_str("}")
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One series' samples in a time range, oldest first, staleness markers included.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Its labels.
    pub labels: Labels,
    /// `(timestamp ms, value)`, strictly increasing in time.
    pub samples: Vec<(i64, f64)>,
}

/// What the query engine reads: every series whose labels satisfy all `matchers`, with its
/// samples in `[mint, maxt]` (milliseconds, both inclusive). Series with no sample in range
/// may be left out.
pub trait Queryable: Send + Sync {
    /// The matching series.
    fn select(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Vec<Series>;
}

/// A matcher from its parts (`=`, `!=`, `=~`, `!~`); regexes are anchored as in PromQL.
pub fn matcher(name: &str, op: &str, value: &str) -> Result<Matcher, String> {
    let op = match op {
        "=" => MatchOp::Equal,
        "!=" => MatchOp::NotEqual,
        "=~" | "!~" => {
            let re = regex::Regex::new(&format!("^(?:{value})$"))
                .map_err(|e| format!("bad regex {value:?}: {e}"))?;
            if op == "=~" {
                MatchOp::Re(re)
            } else {
                MatchOp::NotRe(re)
            }
        }
        other => return Err(format!("unknown match operator {other:?}")),
    };
    Ok(Matcher::new(op, name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_sort_drop_empty_and_keep_the_last_repeat() {
        let l = Labels::new(vec![
            ("b".into(), "2".into()),
            ("a".into(), "1".into()),
            ("e".into(), String::new()),
            ("a".into(), "3".into()),
            (METRIC_NAME.into(), "up".into()),
        ]);
        assert_eq!(l.to_string(), r#"up{a="3", b="2"}"#);
        assert_eq!(l.get("e"), None);
        assert_eq!(l.without_name().to_string(), r#"{a="3", b="2"}"#);
    }

    #[test]
    fn matchers_read_absent_labels_as_empty() {
        let l = Labels::from_pairs(&[("job", "node")]);
        assert!(l.matches(&[matcher("job", "=~", "no.*").unwrap()]));
        assert!(!l.matches(&[matcher("job", "=~", "no").unwrap()]));
        assert!(l.matches(&[matcher("env", "=", "").unwrap()]));
        assert!(!l.matches(&[matcher("env", "!=", "").unwrap()]));
    }
}
