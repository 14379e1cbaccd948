//! `strata monitor traces` and `strata monitor trace ID`: find request traces, and draw one as
//! a waterfall.

use crate::table::{Align, Table};
use crate::Output;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};
use strata_client::{Client, ClientError};

/// Columns of the waterfall's timeline.
const TIMELINE: usize = 40;
/// Widest service/name column of the waterfall (longer labels are cut).
const MAX_LABEL: usize = 60;

fn api(e: ClientError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

fn client(endpoints: &[String]) -> Client {
    Client::new(endpoints).with_connect_timeout(Duration::from_secs(5))
}

/// Runs `strata monitor traces`.
pub async fn traces(
    endpoints: &[String],
    output: Output,
    service: Option<String>,
    operation: Option<String>,
    min_duration: Option<Duration>,
    status: Option<String>,
    limit: usize,
) -> anyhow::Result<()> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(service) = &service {
        query.append_pair("service", service);
    }
    if let Some(operation) = &operation {
        query.append_pair("operation", operation);
    }
    if let Some(min) = min_duration {
        query.append_pair("min_duration", &humantime::format_duration(min).to_string());
    }
    if let Some(status) = &status {
        query.append_pair("status", status);
    }
    query.append_pair("limit", &limit.to_string());
    let path = format!("/v1/monitor/traces?{}", query.finish());
    let found: Value = client(endpoints).get_json(&path).await.map_err(api)?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&found)?);
        return Ok(());
    }
    let mut table = Table::new(&[
        ("TRACE ID", Align::Left),
        ("ROOT", Align::Left),
        ("SERVICES", Align::Left),
        ("SPANS", Align::Right),
        ("DURATION", Align::Right),
        ("ERRORS", Align::Right),
        ("START", Align::Left),
    ]);
    for t in found["traces"].as_array().into_iter().flatten() {
        let text = |k: &str| t[k].as_str().unwrap_or("").to_string();
        let services: Vec<&str> = t["services"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        table.row(vec![
            text("trace_id"),
            format!("{}: {}", text("root_service"), text("root_operation")),
            services.join(","),
            t["spans"].as_u64().unwrap_or(0).to_string(),
            millis(t["duration_ms"].as_f64().unwrap_or(0.0)),
            t["errors"].as_u64().unwrap_or(0).to_string(),
            t["start_ms"]
                .as_i64()
                .filter(|ms| *ms > 0)
                .map(|ms| {
                    let at = UNIX_EPOCH + Duration::from_millis(ms as u64);
                    humantime::format_rfc3339_millis(at).to_string()
                })
                .unwrap_or_default(),
        ]);
    }
    table.print();
    Ok(())
}

/// Runs `strata monitor trace ID`.
pub async fn trace(endpoints: &[String], output: Output, id: &str) -> anyhow::Result<()> {
    let segment: String = form_urlencoded::byte_serialize(id.as_bytes()).collect();
    let path = format!("/v1/monitor/traces/{segment}");
    let found: Value = client(endpoints).get_json(&path).await.map_err(api)?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&found)?);
        return Ok(());
    }
    let trace: TraceView = serde_json::from_value(found)
        .map_err(|e| anyhow::anyhow!("unexpected answer for trace {id}: {e}"))?;
    print!("{}", waterfall(&trace, TIMELINE));
    Ok(())
}

/// One trace as `GET /v1/monitor/traces/{id}` returns it.
#[derive(Debug, Deserialize)]
struct TraceView {
    trace_id: String,
    spans: Vec<SpanView>,
}

/// The parts of a span the waterfall draws.
#[derive(Debug, Deserialize)]
struct SpanView {
    span_id: String,
    #[serde(default)]
    parent_span_id: Option<String>,
    service: String,
    name: String,
    start_unix_nano: u64,
    end_unix_nano: u64,
    #[serde(default)]
    status_code: i32,
    #[serde(default)]
    status_message: String,
}

/// A duration in milliseconds for people: `850µs`, `12.3ms`, `1.52s`.
fn millis(ms: f64) -> String {
    if ms < 1.0 {
        format!("{:.0}µs", ms * 1000.0)
    } else if ms < 1000.0 {
        format!("{ms:.1}ms")
    } else {
        format!("{:.2}s", ms / 1000.0)
    }
}

fn nanos_to_ms(nanos: u64) -> f64 {
    nanos as f64 / 1e6
}

/// `text` cut to `max` characters (the last one an ellipsis when cut).
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The spans in tree order (each parent followed by its children, by start time) with their
/// depths. A span whose parent is not in the trace is a root; spans caught in a parent cycle
/// come last, as roots.
fn tree_order(spans: &[SpanView]) -> Vec<(usize, usize)> {
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut children: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for (i, span) in spans.iter().enumerate() {
        match span.parent_span_id.as_deref() {
            Some(parent) if ids.contains(parent) && parent != span.span_id => {
                children.entry(parent).or_default().push(i)
            }
            _ => roots.push(i),
        }
    }
    let by_start = |list: &mut Vec<usize>| list.sort_by_key(|&i| spans[i].start_unix_nano);
    by_start(&mut roots);
    for list in children.values_mut() {
        by_start(list);
    }
    let mut order = Vec::with_capacity(spans.len());
    let mut seen = vec![false; spans.len()];
    let mut unvisited: Vec<usize> = (0..spans.len()).collect();
    by_start(&mut unvisited);
    let starts = roots.into_iter().chain(unvisited);
    for root in starts {
        // Depth-first without recursion: a deep trace cannot overflow the stack.
        let mut stack = vec![(root, 0usize)];
        while let Some((i, depth)) = stack.pop() {
            if seen[i] {
                continue;
            }
            seen[i] = true;
            order.push((i, depth));
            if let Some(kids) = children.get(spans[i].span_id.as_str()) {
                for &kid in kids.iter().rev() {
                    stack.push((kid, depth + 1));
                }
            }
        }
    }
    order
}

/// The trace as text: a header, then one line per span in tree order (children indented under
/// their parent) with its service and name, its duration, and a bar of `█` on a `─` timeline
/// `width` columns wide from the trace's start to its end; failed spans end in `✗` and their
/// message.
fn waterfall(trace: &TraceView, width: usize) -> String {
    let width = width.max(1);
    let spans = &trace.spans;
    let mut out = String::new();
    let Some(start) = spans.iter().map(|s| s.start_unix_nano).min() else {
        let _ = writeln!(out, "trace {}: no spans", trace.trace_id);
        return out;
    };
    let end = spans
        .iter()
        .map(|s| s.end_unix_nano.max(s.start_unix_nano))
        .max()
        .unwrap_or(start);
    let total = end.saturating_sub(start);
    let services: HashSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    let errors = spans.iter().filter(|s| s.status_code == 2).count();
    let _ = writeln!(
        out,
        "trace {}: {} spans, {} services, {}, {} errors",
        trace.trace_id,
        spans.len(),
        services.len(),
        millis(nanos_to_ms(total)),
        errors
    );

    let rows: Vec<(String, &SpanView)> = tree_order(spans)
        .into_iter()
        .map(|(i, depth)| {
            let span = &spans[i];
            let indent = "  ".repeat(depth.min(20));
            let label = cut(
                &format!("{indent}{}: {}", span.service, span.name),
                MAX_LABEL,
            );
            (label, span)
        })
        .collect();
    let label_width = rows
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0);
    let durations: Vec<String> = rows
        .iter()
        .map(|(_, s)| {
            millis(nanos_to_ms(
                s.end_unix_nano.saturating_sub(s.start_unix_nano),
            ))
        })
        .collect();
    let duration_width = durations
        .iter()
        .map(|d| d.chars().count())
        .max()
        .unwrap_or(0);

    // The timeline's scale: 0 at the left, the trace's duration at the right.
    let right = millis(nanos_to_ms(total));
    let gap = (width + 2).saturating_sub(1 + right.chars().count());
    let _ = writeln!(
        out,
        "{:label_width$}  {:duration_width$}  0{}{right}",
        "",
        "",
        " ".repeat(gap)
    );
    for ((label, span), duration) in rows.iter().zip(&durations) {
        let bar = bar(
            span.start_unix_nano - start,
            span.end_unix_nano.max(span.start_unix_nano) - start,
            total,
            width,
        );
        let pad = label_width - label.chars().count();
        let mut line = format!(
            "{label}{}  {duration:>duration_width$}  │{bar}│",
            " ".repeat(pad)
        );
        if span.status_code == 2 {
            line.push_str(" ✗");
            if !span.status_message.is_empty() {
                let _ = write!(line, " {}", cut(&span.status_message, 80));
            }
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// A `width`-column timeline of `total` nanoseconds with `█` from `from` to `to` (at least one
/// column, so instant spans show) and `─` elsewhere.
fn bar(from: u64, to: u64, total: u64, width: usize) -> String {
    let column = |at: u64| -> usize {
        if total == 0 {
            return 0;
        }
        ((u128::from(at) * width as u128) / u128::from(total)) as usize
    };
    let first = column(from).min(width - 1);
    let mut last = if total == 0 {
        width
    } else {
        // Round the end up, so a span reaching the trace's end fills the last column.
        ((u128::from(to) * width as u128).div_ceil(u128::from(total)) as usize).min(width)
    };
    if last <= first {
        last = first + 1;
    }
    (0..width)
        .map(|c| if c >= first && c < last { '█' } else { '─' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(
        id: &str,
        parent: Option<&str>,
        service: &str,
        name: &str,
        start_ms: u64,
        end_ms: u64,
    ) -> SpanView {
        SpanView {
            span_id: id.into(),
            parent_span_id: parent.map(str::to_string),
            service: service.into(),
            name: name.into(),
            start_unix_nano: start_ms * 1_000_000,
            end_unix_nano: end_ms * 1_000_000,
            status_code: 0,
            status_message: String::new(),
        }
    }

    #[test]
    fn a_waterfall_indents_children_and_places_bars_on_the_timeline() {
        let mut db = span("c", Some("b"), "db", "SELECT", 20, 30);
        db.status_code = 2;
        db.status_message = "deadlock".into();
        let trace = TraceView {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            // Out of order, as the API never promises tree order.
            spans: vec![
                db,
                span("b", Some("a"), "orders", "Create", 10, 40),
                span("a", None, "web", "POST /orders", 0, 40),
                span("d", Some("a"), "web", "render", 40, 40),
            ],
        };
        let expected = "\
trace 4bf92f3577b34da6a3ce929d0e0e4736: 4 spans, 3 services, 40.0ms, 1 errors
                           0   40.0ms
web: POST /orders  40.0ms  │████████│
  orders: Create   30.0ms  │──██████│
    db: SELECT     10.0ms  │────██──│ ✗ deadlock
  web: render         0µs  │───────█│
";
        // The zero-length span at the end still shows, as one column.
        assert_eq!(waterfall(&trace, 8), expected);
    }

    #[test]
    fn orphans_and_cycles_still_print_every_span() {
        let trace = TraceView {
            trace_id: "t".into(),
            spans: vec![
                span("x", Some("y"), "s", "x", 0, 1),
                span("y", Some("x"), "s", "y", 0, 1),
                span("z", Some("missing"), "s", "z", 0, 1),
            ],
        };
        let order = tree_order(&trace.spans);
        assert_eq!(order.len(), 3);
        assert_eq!(order[0], (2, 0));
        let text = waterfall(&trace, 10);
        assert_eq!(text.lines().count(), 2 + 3);
        let empty = TraceView {
            trace_id: "t".into(),
            spans: Vec::new(),
        };
        assert_eq!(waterfall(&empty, 10), "trace t: no spans\n");
    }

    #[test]
    fn durations_read_in_the_best_unit() {
        assert_eq!(millis(0.85), "850µs");
        assert_eq!(millis(12.34), "12.3ms");
        assert_eq!(millis(1520.0), "1.52s");
        assert_eq!(bar(0, 0, 0, 4), "████");
    }
}
