//! `strata monitor ...`: PromQL queries (a range query draws a small chart per series),
//! scrape targets, alerts, rule files, and request traces.

use crate::Output;
use anyhow::{anyhow, bail, Context};
use clap::Subcommand;
use serde_json::Value;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use strata_client::Client;

#[derive(Subcommand, Debug)]
pub enum MonitorCommand {
    /// Evaluate a PromQL expression at one instant.
    Query {
        /// The expression.
        expr: String,
        /// Evaluation time: RFC 3339, Unix seconds, `now`, or `-DURATION` (default now).
        #[arg(long)]
        time: Option<String>,
    },
    /// Evaluate a PromQL expression over a time range; the table output charts each series.
    Range {
        /// The expression.
        expr: String,
        /// Start (as --time of `query`; default one hour before --end).
        #[arg(long)]
        start: Option<String>,
        /// End (default now).
        #[arg(long)]
        end: Option<String>,
        /// Resolution, e.g. `15s` (default: 60 points over the range).
        #[arg(long, value_parser = humantime::parse_duration)]
        step: Option<Duration>,
    },
    /// List scrape targets, their health and the monitor node that scrapes each.
    Targets,
    /// List pending and firing alerts.
    Alerts,
    /// Manage rule files (Prometheus's format) kept in the config center.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Find request traces.
    Traces {
        /// Only traces with a span of this service.
        #[arg(long)]
        service: Option<String>,
        /// Only traces with a span of this operation.
        #[arg(long)]
        operation: Option<String>,
        /// Only traces with a span at least this long (e.g. `100ms`).
        #[arg(long, value_parser = humantime::parse_duration)]
        min_duration: Option<Duration>,
        /// `ok`, `error` or `unset`.
        #[arg(long)]
        status: Option<String>,
        /// At most this many traces, newest first.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Show one trace as a waterfall.
    Trace {
        /// The trace id (32 hex digits).
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum RulesCommand {
    /// Check a rule file and publish it; every monitor node loads it within seconds.
    Apply {
        /// The file.
        file: std::path::PathBuf,
        /// Its name in the config center (default: the file's name).
        #[arg(long)]
        name: Option<String>,
    },
    /// List rule groups and the state of their rules.
    List,
    /// Remove a rule file published before.
    Delete {
        /// Its name.
        name: String,
    },
    /// Run promtool-style rule unit tests locally (`promtool test rules` format); no server needed.
    Test {
        /// The test files.
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
    },
}

pub async fn monitor(
    endpoints: &[String],
    output: Output,
    cmd: MonitorCommand,
) -> anyhow::Result<()> {
    let client = Client::new(endpoints).with_connect_timeout(Duration::from_secs(5));
    match cmd {
        MonitorCommand::Query { expr, time } => {
            let t = parse_when(time.as_deref().unwrap_or("now"))?;
            let path = format!(
                "/api/v1/query?query={}&time={t}",
                strata_monitor::model::url_encode(&expr)
            );
            let body = api_get(&client, &path).await?;
            if output == Output::Json {
                return print_json(&body);
            }
            print_instant(&body["data"]);
            Ok(())
        }
        MonitorCommand::Range {
            expr,
            start,
            end,
            step,
        } => {
            let end = parse_when(end.as_deref().unwrap_or("now"))?;
            let start = match start {
                Some(s) => parse_when(&s)?,
                None => end - 3600.0,
            };
            if end <= start {
                bail!("--end must be after --start");
            }
            let step = step.map_or(((end - start) / 60.0).max(1.0), |s| s.as_secs_f64());
            let path = format!(
                "/api/v1/query_range?query={}&start={start}&end={end}&step={step}",
                strata_monitor::model::url_encode(&expr)
            );
            let body = api_get(&client, &path).await?;
            if output == Output::Json {
                return print_json(&body);
            }
            print_range(&body["data"], start, end);
            Ok(())
        }
        MonitorCommand::Targets => {
            let body = api_get(&client, "/api/v1/targets").await?;
            if output == Output::Json {
                return print_json(&body);
            }
            let rows: Vec<Vec<String>> = body["data"]["activeTargets"]
                .as_array()
                .map(|a| a.as_slice())
                .unwrap_or(&[])
                .iter()
                .map(|t| {
                    vec![
                        text(&t["labels"]["job"]),
                        text(&t["labels"]["instance"]),
                        text(&t["health"]),
                        t["scrapedBy"].to_string(),
                        text(&t["lastScrape"]),
                        format!("{:.3}s", t["lastScrapeDuration"].as_f64().unwrap_or(0.0)),
                        text(&t["lastError"]),
                    ]
                })
                .collect();
            print_rows(
                &[
                    "JOB",
                    "INSTANCE",
                    "HEALTH",
                    "SCRAPED BY",
                    "LAST SCRAPE",
                    "DURATION",
                    "ERROR",
                ],
                &rows,
            );
            Ok(())
        }
        MonitorCommand::Alerts => {
            let body = api_get(&client, "/api/v1/alerts").await?;
            if output == Output::Json {
                return print_json(&body);
            }
            let rows: Vec<Vec<String>> = body["data"]["alerts"]
                .as_array()
                .map(|a| a.as_slice())
                .unwrap_or(&[])
                .iter()
                .map(|a| {
                    let labels = a["labels"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .filter(|(k, _)| *k != "alertname")
                                .map(|(k, v)| format!("{k}={}", text(v)))
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default();
                    vec![
                        text(&a["labels"]["alertname"]),
                        text(&a["state"]),
                        text(&a["activeAt"]),
                        text(&a["value"]),
                        labels,
                    ]
                })
                .collect();
            print_rows(
                &["ALERT", "STATE", "ACTIVE SINCE", "VALUE", "LABELS"],
                &rows,
            );
            Ok(())
        }
        MonitorCommand::Rules(RulesCommand::Apply { file, name }) => {
            let content = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let name = match name {
                Some(n) => n,
                None => file
                    .file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| anyhow!("{} has no file name; pass --name", file.display()))?
                    .to_string(),
            };
            let groups =
                strata_monitor::rules::parse_file(&name, &content).map_err(|e| anyhow!(e))?;
            let body = serde_json::json!({
                "namespace": "public",
                "group": strata_monitor::rules::RULES_GROUP,
                "data_id": name,
                "content": content,
            });
            let published: Value = client.post("/v1/config/publish", &body).await?;
            if output == Output::Json {
                return print_json(&published);
            }
            let rules: usize = groups.iter().map(|g| g.rules.len()).sum();
            println!(
                "published {name}: {} groups, {rules} rules (version {})",
                groups.len(),
                published["version"]
            );
            Ok(())
        }
        MonitorCommand::Rules(RulesCommand::List) => {
            let body = api_get(&client, "/api/v1/rules").await?;
            if output == Output::Json {
                return print_json(&body);
            }
            let mut rows = Vec::new();
            for g in body["data"]["groups"]
                .as_array()
                .map(|a| a.as_slice())
                .unwrap_or(&[])
            {
                for r in g["rules"].as_array().map(|a| a.as_slice()).unwrap_or(&[]) {
                    rows.push(vec![
                        format!("{}/{}", text(&g["file"]), text(&g["name"])),
                        text(&r["name"]),
                        text(&r["type"]),
                        if r["type"] == "alerting" {
                            text(&r["state"])
                        } else {
                            String::new()
                        },
                        text(&r["health"]),
                        text(&r["lastError"]),
                    ]);
                }
            }
            print_rows(
                &["GROUP", "RULE", "TYPE", "STATE", "HEALTH", "ERROR"],
                &rows,
            );
            Ok(())
        }
        MonitorCommand::Rules(RulesCommand::Test { files }) => {
            // Prints what `promtool test rules` prints, on the same streams.
            let mut failed = 0;
            for file in &files {
                println!("Unit Testing:  {}", file.display());
                let path = file.clone();
                let run = tokio::task::spawn_blocking(move || {
                    strata_monitor::rules_test::run_file(&path)
                })
                .await?;
                let failures = match run {
                    Ok(report) => {
                        for warning in &report.warnings {
                            eprintln!("  WARNING: {warning}");
                        }
                        report.failures
                    }
                    Err(e) => vec![e],
                };
                if failures.is_empty() {
                    println!("  SUCCESS");
                } else {
                    failed += 1;
                    eprintln!("  FAILED:");
                    for failure in &failures {
                        eprintln!("{failure}");
                        println!();
                    }
                }
                println!();
            }
            if failed > 0 {
                bail!("{failed} of {} rule test files failed", files.len());
            }
            Ok(())
        }
        MonitorCommand::Rules(RulesCommand::Delete { name }) => {
            let body = serde_json::json!({
                "namespace": "public",
                "group": strata_monitor::rules::RULES_GROUP,
                "data_id": name,
            });
            let deleted: Value = client.post("/v1/config/delete", &body).await?;
            if output == Output::Json {
                return print_json(&deleted);
            }
            println!("deleted {name}");
            Ok(())
        }
        MonitorCommand::Traces {
            service,
            operation,
            min_duration,
            status,
            limit,
        } => {
            crate::monitor_trace_cmds::traces(
                endpoints,
                output,
                service,
                operation,
                min_duration,
                status,
                limit,
            )
            .await
        }
        MonitorCommand::Trace { id } => {
            crate::monitor_trace_cmds::trace(endpoints, output, &id).await
        }
    }
}

/// Prints a table with left-aligned columns.
fn print_rows(headers: &[&'static str], rows: &[Vec<String>]) {
    let columns: Vec<(&'static str, crate::table::Align)> = headers
        .iter()
        .map(|h| (*h, crate::table::Align::Left))
        .collect();
    let mut table = crate::table::Table::new(&columns);
    for row in rows {
        table.row(row.clone());
    }
    table.print();
}

/// GETs a Prometheus-style API path; an error envelope becomes an error.
async fn api_get(client: &Client, path: &str) -> anyhow::Result<Value> {
    let body: Value = client.get_json(path).await?;
    if body["status"] == "error" {
        bail!("{}: {}", text(&body["errorType"]), text(&body["error"]));
    }
    Ok(body)
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A time: `now`, `-DURATION` (before now), Unix seconds, or RFC 3339.
fn parse_when(text: &str) -> anyhow::Result<f64> {
    if text == "now" {
        return Ok(now_secs());
    }
    if let Some(ago) = text.strip_prefix('-') {
        let d = humantime::parse_duration(ago).with_context(|| format!("bad time {text:?}"))?;
        return Ok(now_secs() - d.as_secs_f64());
    }
    if let Ok(secs) = text.parse::<f64>() {
        return Ok(secs);
    }
    let t = humantime::parse_rfc3339_weak(text.trim_end_matches('Z')).with_context(|| {
        format!("bad time {text:?}: use RFC 3339, Unix seconds, now or -DURATION")
    })?;
    Ok(t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64()))
}

fn metric_name(m: &Value) -> String {
    let Some(map) = m.as_object() else {
        return "{}".into();
    };
    let name = map.get("__name__").map(text).unwrap_or_default();
    let labels: Vec<String> = map
        .iter()
        .filter(|(k, _)| *k != "__name__")
        .map(|(k, v)| format!("{k}={:?}", text(v)))
        .collect();
    format!("{name}{{{}}}", labels.join(", "))
}

fn print_instant(data: &Value) {
    match data["resultType"].as_str() {
        Some("scalar") | Some("string") => println!("{}", text(&data["result"][1])),
        Some("vector") => {
            let rows: Vec<Vec<String>> = data["result"]
                .as_array()
                .map(|a| a.as_slice())
                .unwrap_or(&[])
                .iter()
                .map(|s| vec![metric_name(&s["metric"]), text(&s["value"][1])])
                .collect();
            print_rows(&["SERIES", "VALUE"], &rows);
        }
        _ => print_range(data, f64::NAN, f64::NAN),
    }
}

fn print_range(data: &Value, start: f64, end: f64) {
    let series = data["result"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or(&[]);
    if series.is_empty() {
        println!("no data");
        return;
    }
    for s in series {
        let points: Vec<(f64, f64)> = s["values"]
            .as_array()
            .map(|a| a.as_slice())
            .unwrap_or(&[])
            .iter()
            .filter_map(|p| Some((p[0].as_f64()?, text(&p[1]).parse::<f64>().ok()?)))
            .collect();
        let (lo, hi) = (
            if start.is_nan() {
                points.first().map_or(0.0, |p| p.0)
            } else {
                start
            },
            if end.is_nan() {
                points.last().map_or(0.0, |p| p.0)
            } else {
                end
            },
        );
        println!("{}", metric_name(&s["metric"]));
        for line in chart(&points, lo, hi, 60, 6) {
            println!("  {line}");
        }
    }
}

/// A chart of `points` over `[start, end]`: `height` rows of `width` columns of block
/// characters, the maximum at the top line's right, the minimum at the bottom's.
pub fn chart(
    points: &[(f64, f64)],
    start: f64,
    end: f64,
    width: usize,
    height: usize,
) -> Vec<String> {
    let finite: Vec<f64> = points
        .iter()
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .collect();
    if finite.is_empty() || width == 0 || height == 0 {
        return vec!["(no finite values)".into()];
    }
    let min = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let max = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let span = (end - start).max(f64::MIN_POSITIVE);
    // The last value in each column.
    let mut columns: Vec<Option<f64>> = vec![None; width];
    for (t, v) in points {
        if !v.is_finite() {
            continue;
        }
        let c = (((t - start) / span) * (width - 1) as f64).round();
        if c >= 0.0 && (c as usize) < width {
            columns[c as usize] = Some(*v);
        }
    }
    // Eighths of a row, from the bottom.
    let levels = (height * 8) as f64;
    let level = |v: f64| -> usize {
        if max > min {
            (((v - min) / (max - min)) * (levels - 1.0)).round() as usize + 1
        } else {
            height * 4
        }
    };
    const BLOCKS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let mut lines = Vec::with_capacity(height);
    for row in (0..height).rev() {
        let mut line = String::with_capacity(width * 3);
        for col in &columns {
            let ch = match col {
                None => ' ',
                Some(v) => {
                    let filled = level(*v).saturating_sub(row * 8).min(8);
                    BLOCKS[filled]
                }
            };
            line.push(ch);
        }
        let label = if row == height - 1 {
            format!(" {}", short(max))
        } else if row == 0 {
            format!(" {}", short(min))
        } else {
            String::new()
        };
        lines.push(format!("│{line}│{label}"));
    }
    lines
}

fn short(v: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e6 || v.abs() < 1e-3) {
        format!("{v:.3e}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_rises_with_its_values() {
        let points: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, i as f64)).collect();
        let lines = chart(&points, 0.0, 9.0, 10, 2);
        assert_eq!(lines.len(), 2);
        assert!(lines[0].ends_with(" 9"), "{lines:?}");
        assert!(lines[1].ends_with(" 0"), "{lines:?}");
        // Top row: empty on the left, full on the right.
        let top: Vec<char> = lines[0].chars().skip(1).take(10).collect();
        assert_eq!(top[0], ' ');
        assert_eq!(top[9], '█');
        let bottom: Vec<char> = lines[1].chars().skip(1).take(10).collect();
        assert_eq!(bottom[0], '▁');
        assert_eq!(bottom[9], '█');
        assert_eq!(
            chart(&[], 0.0, 1.0, 10, 2),
            vec!["(no finite values)".to_string()]
        );
    }

    #[test]
    fn times_read_in_every_form() {
        assert_eq!(parse_when("1435781451.781").unwrap(), 1435781451.781);
        assert!((parse_when("-1h").unwrap() - (now_secs() - 3600.0)).abs() < 5.0);
        assert_eq!(parse_when("2015-07-01T20:10:51Z").unwrap(), 1435781451.0);
        assert!(parse_when("soon").is_err());
    }
}
