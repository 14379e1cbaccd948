//! Prometheus's text exposition format (0.0.4, and the OpenMetrics subset scrapes meet):
//! what a scrape of `/metrics` returns.
//!
//! A line is a comment (`# HELP name text`, `# TYPE name kind`, anything else after `#` is
//! ignored), blank, or a sample: `name{label="value",...} value [timestamp_ms]`. Values may be
//! `NaN`, `+Inf`, `-Inf`. Label values take the escapes `\\`, `\"` and `\n`. A bad line fails
//! the whole scrape (as Prometheus does), with its line number.

use std::collections::BTreeMap;

/// One parsed sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The metric name.
    pub name: String,
    /// Its labels as written (not sorted).
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
    /// The exposed timestamp in ms, if any.
    pub timestamp: Option<i64>,
}

/// A metric family's type and help, for `/api/v1/metadata`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Metadata {
    /// `counter`, `gauge`, `histogram`, `summary` or `unknown`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The help text.
    pub help: String,
    /// The unit (OpenMetrics), usually empty.
    pub unit: String,
}

/// A parsed scrape.
#[derive(Debug, Default)]
pub struct Exposition {
    /// The samples in order.
    pub samples: Vec<Parsed>,
    /// Metadata by family name.
    pub metadata: BTreeMap<String, Metadata>,
}

/// Parses a scrape body.
pub fn parse(text: &str) -> Result<Exposition, String> {
    let mut out = Exposition::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        let trimmed = line.trim_start();
        if trimmed.is_empty() {
            continue;
        }
        if let Some(comment) = trimmed.strip_prefix('#') {
            let mut parts = comment.trim_start().splitn(3, ' ');
            let (Some(kind), Some(name)) = (parts.next(), parts.next()) else {
                continue;
            };
            let rest = parts.next().unwrap_or("").trim();
            match kind {
                "HELP" => {
                    out.metadata.entry(name.to_string()).or_default().help = unescape_help(rest)
                }
                "TYPE" => out.metadata.entry(name.to_string()).or_default().kind = rest.to_string(),
                "UNIT" => out.metadata.entry(name.to_string()).or_default().unit = rest.to_string(),
                _ => {}
            }
            continue;
        }
        let sample = parse_sample(trimmed).map_err(|e| format!("line {}: {e}", n + 1))?;
        out.samples.push(sample);
    }
    Ok(out)
}

fn unescape_help(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn parse_sample(line: &str) -> Result<Parsed, String> {
    let name_end = line
        .char_indices()
        .find(|(i, c)| {
            !(if *i == 0 {
                is_name_start(*c)
            } else {
                is_name_char(*c)
            })
        })
        .map_or(line.len(), |(i, _)| i);
    if name_end == 0 {
        return Err(format!("expected a metric name at {:?}", truncate(line)));
    }
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    let mut fields = rest.split_ascii_whitespace();
    let value = fields
        .next()
        .ok_or_else(|| format!("{name}: no value"))
        .and_then(|v| {
            parse_value(v).ok_or_else(|| format!("{name}: bad value {:?}", truncate(v)))
        })?;
    let timestamp = match fields.next() {
        None => None,
        Some(t) => Some(
            t.parse::<i64>()
                .map_err(|_| format!("{name}: bad timestamp {:?}", truncate(t)))?,
        ),
    };
    if fields.next().is_some() {
        return Err(format!("{name}: text after the timestamp"));
    }
    Ok(Parsed {
        name,
        labels,
        value,
        timestamp,
    })
}

/// Parses `a="x",b="y"}` and returns what follows the brace.
fn parse_labels<'a>(mut s: &'a str, labels: &mut Vec<(String, String)>) -> Result<&'a str, String> {
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok(after);
        }
        let end = s
            .char_indices()
            .find(|(i, c)| {
                !(if *i == 0 {
                    is_name_start(*c) && *c != ':'
                } else {
                    is_name_char(*c) && *c != ':'
                })
            })
            .map_or(s.len(), |(i, _)| i);
        if end == 0 {
            return Err(format!("expected a label name at {:?}", truncate(s)));
        }
        let label = s[..end].to_string();
        s = s[end..].trim_start();
        s = s
            .strip_prefix('=')
            .ok_or_else(|| format!("expected = after label {label}"))?
            .trim_start();
        s = s
            .strip_prefix('"')
            .ok_or_else(|| format!("expected a quoted value for label {label}"))?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let close = loop {
            match chars.next() {
                None => return Err(format!("unterminated value for label {label}")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    Some((_, c)) => {
                        value.push('\\');
                        value.push(c);
                    }
                    None => return Err(format!("unterminated value for label {label}")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.push((label, value));
        s = s[close + 1..].trim_start();
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err(format!(
                "expected , or }} after label value at {:?}",
                truncate(s)
            ));
        }
    }
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "NaN" | "nan" => Some(f64::NAN),
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        _ => v.parse().ok(),
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(40) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_prometheus_crate_and_client_libraries_write() {
        let text = "# HELP http_requests_total The total.\\nSecond line.\n# TYPE http_requests_total counter\nhttp_requests_total{method=\"post\",code=\"200\"} 1027 1395066363000\nhttp_requests_total{method=\"a\\\"b\\\\c\\nd\",} 3\n\n# a comment\nmetric_without_labels 12.47\nnan_metric NaN\nneg -Inf\nsci 1.5e-3\n# EOF\n";
        let e = parse(text).unwrap();
        assert_eq!(e.samples.len(), 6);
        assert_eq!(
            e.samples[0].labels,
            vec![
                ("method".into(), "post".into()),
                ("code".into(), "200".into())
            ]
        );
        assert_eq!(e.samples[0].timestamp, Some(1_395_066_363_000));
        assert_eq!(e.samples[1].labels[0].1, "a\"b\\c\nd");
        assert!(e.samples[3].value.is_nan());
        assert_eq!(e.samples[4].value, f64::NEG_INFINITY);
        assert_eq!(e.samples[5].value, 0.0015);
        let m = &e.metadata["http_requests_total"];
        assert_eq!(
            (m.kind.as_str(), m.help.as_str()),
            ("counter", "The total.\nSecond line.")
        );
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        for bad in [
            "x{a=\"1\" 1",
            "x{a=1} 2",
            "x 1 2 3",
            "x abc",
            "{a=\"b\"} 1",
            "x{a=\"1\"",
            "x{=\"1\"} 1",
            "x 1 1.5",
        ] {
            let err = parse(&format!("ok 1\n{bad}\n")).unwrap_err();
            assert!(err.starts_with("line 2:"), "{bad}: {err}");
        }
    }
}
