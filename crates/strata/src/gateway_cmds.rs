//! `strata gateway ...`: the gateway's route table and its upstream groups.

use crate::table::{Align, Table};
use crate::Output;
use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;
use strata_client::{Client, ClientError, Method};

/// `strata gateway`: a subcommand, or `--config FILE` to run a gateway alone.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct GatewayArgs {
    /// Run a standalone gateway (no cluster) from FILE: a route table with a `[server]`
    /// section (docs/gateway.md); it runs until SIGTERM or Ctrl-C.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// With --config: write the bound addresses (JSON) to this file once listening.
    #[arg(long, value_name = "PATH", requires = "config")]
    pub addrs_file: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Option<GatewayCommand>,
}

#[derive(Subcommand, Debug)]
pub enum GatewayCommand {
    /// List, show, apply and delete routes.
    #[command(subcommand)]
    Routes(RoutesCommand),
    /// Show upstream groups as this node runs them: live members, weights, requests in flight.
    #[command(subcommand)]
    Upstreams(UpstreamsCommand),
    /// Create, list and revoke API keys for routes with `auth = { methods = ["api_key"] }`.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Make a key for CONSUMER; it is shown once.
    Create {
        /// Who uses the key (passed upstream in the consumer header).
        #[arg(long)]
        consumer: String,
        /// A scope the key grants (repeat for more).
        #[arg(long = "scope")]
        scopes: Vec<String>,
    },
    /// List the keys (without their secrets).
    List,
    /// Revoke key ID; every gateway node refuses it within a second.
    Revoke {
        /// The key's id (the 16 hex digits after `sgk_`).
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum RoutesCommand {
    /// List the routes in force.
    List,
    /// Show route NAME.
    Show {
        /// Route name.
        name: String,
    },
    /// Add or replace (by name) the routes and upstreams of FILE (TOML or JSON); the whole
    /// table is validated before it is published.
    Apply {
        /// The table file.
        file: PathBuf,
        /// Replace the whole table with FILE instead of merging by name.
        #[arg(long)]
        replace: bool,
    },
    /// Delete route NAME.
    Delete {
        /// Route name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum UpstreamsCommand {
    /// List upstream groups with their live member counts.
    List,
    /// Show upstream NAME's members.
    Show {
        /// Upstream name.
        name: String,
    },
}

fn api(e: ClientError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// Percent-encodes a path segment.
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// How long a standalone gateway lets requests in flight finish after SIGTERM.
const STANDALONE_GRACE: Duration = Duration::from_secs(10);

/// Runs a standalone gateway until SIGTERM or Ctrl-C.
async fn standalone(file: PathBuf, addrs_file: Option<PathBuf>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    let gateway = strata_gateway::standalone::Standalone::start(&file)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (name, addr) in &gateway.addrs {
        println!("  {name:<12} {addr}");
    }
    if let Some(path) = addrs_file {
        let json = serde_json::to_vec_pretty(&gateway.addrs)?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, json)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received; shutting down"),
        _ = interrupt.recv() => tracing::info!("SIGINT received; shutting down"),
    }
    gateway.shutdown(STANDALONE_GRACE).await;
    Ok(())
}

/// Runs `strata gateway ...`.
pub async fn gateway(
    endpoints: &[String],
    output: Output,
    args: GatewayArgs,
) -> anyhow::Result<()> {
    let command = match (args.config, args.command) {
        (Some(file), _) => return standalone(file, args.addrs_file).await,
        (None, Some(command)) => command,
        (None, None) => anyhow::bail!(
            "give a subcommand (routes, upstreams) or --config FILE; see `strata gateway --help`"
        ),
    };
    let client = Client::new(endpoints).with_connect_timeout(Duration::from_secs(5));
    match command {
        GatewayCommand::Routes(RoutesCommand::List) => {
            let table: Value = client.get_json("/v1/gateway/routes").await.map_err(api)?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&table)?),
                Output::Table => print_routes(&table),
            }
        }
        GatewayCommand::Routes(RoutesCommand::Show { name }) => {
            let route: Value = client
                .get_json(&format!("/v1/gateway/routes/{}", segment(&name)))
                .await
                .map_err(api)?;
            println!("{}", serde_json::to_string_pretty(&route)?);
        }
        GatewayCommand::Routes(RoutesCommand::Apply { file, replace }) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let table = strata_gateway::Table::parse(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let path = if replace {
                "/v1/gateway/routes?replace=true"
            } else {
                "/v1/gateway/routes"
            };
            let reply: Value = client
                .call(Method::POST, path, Some(&table))
                .await
                .map_err(api)?;
            match output {
                Output::Json => println!("{reply}"),
                Output::Table => println!(
                    "applied: version {}, {} routes, {} upstreams{}",
                    reply["version"],
                    reply["routes"],
                    reply["upstreams"],
                    if reply["in_force"] == Value::Bool(true) {
                        ""
                    } else {
                        " (not yet in force on this node)"
                    }
                ),
            }
        }
        GatewayCommand::Routes(RoutesCommand::Delete { name }) => {
            let reply: Value = client
                .call::<(), _>(
                    Method::DELETE,
                    &format!("/v1/gateway/routes/{}", segment(&name)),
                    None,
                )
                .await
                .map_err(api)?;
            match output {
                Output::Json => println!("{reply}"),
                Output::Table => println!("deleted route {name} (version {})", reply["version"]),
            }
        }
        GatewayCommand::Upstreams(UpstreamsCommand::List) => {
            let list: Value = client
                .get_json("/v1/gateway/upstreams")
                .await
                .map_err(api)?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                Output::Table => {
                    let mut table = Table::new(&[
                        ("NAME", Align::Left),
                        ("BALANCE", Align::Left),
                        ("SOURCE", Align::Left),
                        ("MEMBERS", Align::Right),
                        ("IN FLIGHT", Align::Right),
                        ("PROBLEM", Align::Left),
                    ]);
                    for u in list["upstreams"].as_array().into_iter().flatten() {
                        let members = u["members"].as_array().cloned().unwrap_or_default();
                        let in_flight: u64 =
                            members.iter().filter_map(|m| m["in_flight"].as_u64()).sum();
                        table.row(vec![
                            text(&u["name"]),
                            text(&u["balance"]),
                            text(&u["source"]),
                            members.len().to_string(),
                            in_flight.to_string(),
                            text(&u["problem"]),
                        ]);
                    }
                    print!("{}", table.render());
                }
            }
        }
        GatewayCommand::Keys(KeysCommand::Create { consumer, scopes }) => {
            let reply: Value = client
                .call(
                    Method::POST,
                    "/v1/gateway/keys",
                    Some(&serde_json::json!({"consumer": consumer, "scopes": scopes})),
                )
                .await
                .map_err(api)?;
            match output {
                Output::Json => println!("{reply}"),
                Output::Table => {
                    println!("{}", text(&reply["key"]));
                    eprintln!(
                        "key {} for {}: shown once, keep it safe",
                        text(&reply["id"]),
                        text(&reply["consumer"])
                    );
                }
            }
        }
        GatewayCommand::Keys(KeysCommand::List) => {
            let list: Value = client.get_json("/v1/gateway/keys").await.map_err(api)?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                Output::Table => {
                    let mut table = Table::new(&[
                        ("ID", Align::Left),
                        ("CONSUMER", Align::Left),
                        ("SCOPES", Align::Left),
                    ]);
                    for key in list["keys"].as_array().into_iter().flatten() {
                        let scopes: Vec<String> = key["scopes"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(text)
                            .collect();
                        table.row(vec![
                            text(&key["id"]),
                            text(&key["consumer"]),
                            scopes.join(","),
                        ]);
                    }
                    print!("{}", table.render());
                }
            }
        }
        GatewayCommand::Keys(KeysCommand::Revoke { id }) => {
            let reply: Value = client
                .call::<(), _>(
                    Method::DELETE,
                    &format!("/v1/gateway/keys/{}", segment(&id)),
                    None,
                )
                .await
                .map_err(api)?;
            match output {
                Output::Json => println!("{reply}"),
                Output::Table => println!("revoked {}", text(&reply["revoked"])),
            }
        }
        GatewayCommand::Upstreams(UpstreamsCommand::Show { name }) => {
            let upstream: Value = client
                .get_json(&format!("/v1/gateway/upstreams/{}", segment(&name)))
                .await
                .map_err(api)?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&upstream)?),
                Output::Table => {
                    let mut table = Table::new(&[
                        ("ID", Align::Left),
                        ("ADDRESS", Align::Left),
                        ("WEIGHT", Align::Right),
                        ("HEALTH", Align::Left),
                        ("EJECTED", Align::Left),
                        ("BREAKER", Align::Left),
                        ("WARMTH", Align::Right),
                        ("IN FLIGHT", Align::Right),
                        ("REQUESTS", Align::Right),
                        ("FAILURES", Align::Right),
                    ]);
                    for m in upstream["members"].as_array().into_iter().flatten() {
                        table.row(vec![
                            text(&m["id"]),
                            text(&m["address"]),
                            text(&m["weight"]),
                            text(&m["health"]),
                            if m["ejected"].as_bool() == Some(true) {
                                "yes"
                            } else {
                                "no"
                            }
                            .to_string(),
                            text(&m["breaker"]),
                            format!("{}%", text(&m["warmth_percent"])),
                            text(&m["in_flight"]),
                            text(&m["requests"]),
                            text(&m["failures"]),
                        ]);
                    }
                    print!("{}", table.render());
                    println!(
                        "connections: {} open, {} opened; pool reuse {:.1}%",
                        text(&upstream["connections_open"]),
                        text(&upstream["connections_opened"]),
                        upstream["pool_reuse"].as_f64().unwrap_or(0.0) * 100.0
                    );
                    if let Some(breaker) = upstream["breaker"].as_object() {
                        println!(
                            "breaker: {} ({} calls, {}% failed, {}% slow, {} refused)",
                            text(&breaker["state"]),
                            text(&breaker["calls"]),
                            text(&breaker["failure_rate"]),
                            text(&breaker["slow_call_rate"]),
                            text(&breaker["not_permitted"])
                        );
                    }
                    let budget = &upstream["retry_budget"];
                    println!(
                        "retry budget: {} available, {} spent, {} refused",
                        text(&budget["available"]),
                        text(&budget["spent"]),
                        text(&budget["refused"])
                    );
                    if let Some(problem) = upstream["problem"].as_str() {
                        println!("problem: {problem}");
                    }
                }
            }
        }
    }
    Ok(())
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_routes(table: &Value) {
    let mut out = Table::new(&[
        ("NAME", Align::Left),
        ("PRIORITY", Align::Right),
        ("HOSTS", Align::Left),
        ("PATH", Align::Left),
        ("METHODS", Align::Left),
        ("ACTION", Align::Left),
    ]);
    for r in table["routes"].as_array().into_iter().flatten() {
        let list = |k: &str| {
            r[k].as_array()
                .map(|a| a.iter().map(text).collect::<Vec<_>>().join(","))
                .unwrap_or_default()
        };
        let path = match r["path"].as_object().and_then(|o| o.iter().next()) {
            Some((kind, value)) => format!("{kind} {}", text(value)),
            None => String::new(),
        };
        let action = if let Some(u) = r["upstream"].as_str() {
            format!("upstream {u}")
        } else if r["redirect"].is_object() {
            format!("redirect {}", text(&r["redirect"]["to"]))
        } else {
            format!("respond {}", text(&r["respond"]["status"]))
        };
        out.row(vec![
            text(&r["name"]),
            r["priority"].as_i64().unwrap_or(0).to_string(),
            list("hosts"),
            path,
            list("methods"),
            action,
        ]);
    }
    print!("{}", out.render());
    println!(
        "table version {} from {}",
        table["version"],
        text(&table["source"])
    );
}
