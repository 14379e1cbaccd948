//! `strata svc ...`: register, deregister, list, show and watch services in the registry.

use crate::table::{Align, Table};
use crate::Output;
use anyhow::{bail, Context};
use clap::{ArgGroup, Args, Subcommand};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use strata_api::registry::{
    Check, CheckKind, Instance, Probe, QueryResult, Registered, Registration, WatchMessage,
};
use strata_client::{Client, ClientError, Method};
use strata_proto::error::ErrorCode;
use strata_settings::HumanDuration;

#[derive(Subcommand, Debug)]
pub enum SvcCommand {
    /// Register an instance of service NAME.
    Register(Box<RegisterArgs>),
    /// Remove instance ID of service NAME.
    Deregister {
        /// Service name.
        name: String,
        /// Instance id.
        id: String,
        /// Namespace (default: public).
        #[arg(long)]
        namespace: Option<String>,
    },
    /// List services with their instance counts.
    List {
        /// Only this namespace.
        #[arg(long)]
        namespace: Option<String>,
    },
    /// Show the instances of service NAME.
    Show {
        /// Service name.
        name: String,
        /// Only healthy instances (subject to the service's protection threshold).
        #[arg(long)]
        passing: bool,
        /// Only instances with this tag (repeatable: all must match).
        #[arg(long)]
        tag: Vec<String>,
        /// Namespace (default: public).
        #[arg(long)]
        namespace: Option<String>,
    },
    /// Print one line per change to service NAME's instances until interrupted.
    Watch {
        /// Service name.
        name: String,
        /// Namespace (default: public).
        #[arg(long)]
        namespace: Option<String>,
    },
}

/// Arguments of `strata svc register`.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("kind").args(["ttl", "http_check", "tcp_check", "grpc_check"])))]
pub struct RegisterArgs {
    /// Service name (a DNS label: a-z, 0-9, '-').
    name: String,
    /// Instance id, unique within the service.
    #[arg(long)]
    id: String,
    /// Host name or IP address consumers connect to.
    #[arg(long)]
    address: String,
    /// Port consumers connect to.
    #[arg(long)]
    port: u32,
    /// A tag (repeatable).
    #[arg(long)]
    tag: Vec<String>,
    /// Metadata KEY=VALUE (repeatable).
    #[arg(long)]
    meta: Vec<String>,
    /// Load-balancing weight (default 1).
    #[arg(long)]
    weight: Option<f64>,
    /// Namespace (default: public).
    #[arg(long)]
    namespace: Option<String>,
    /// Ephemeral: the instance lives while heartbeats arrive at least this often (e.g. 10s).
    #[arg(long)]
    ttl: Option<String>,
    /// With --ttl: stay in the foreground and heartbeat until killed.
    #[arg(long, requires = "ttl")]
    keepalive: bool,
    /// Persistent, checked by GETting this URL (2xx passing, 429 warning, else critical).
    #[arg(long)]
    http_check: Option<String>,
    /// Persistent, checked by connecting to HOST:PORT.
    #[arg(long)]
    tcp_check: Option<String>,
    /// Persistent, checked with grpc.health.v1 at HOST:PORT.
    #[arg(long)]
    grpc_check: Option<String>,
    /// Time between checks (default 10s).
    #[arg(long)]
    interval: Option<String>,
    /// Deadline of one check (default 5s).
    #[arg(long)]
    timeout: Option<String>,
    /// Consecutive failures before critical (default 1).
    #[arg(long)]
    failures_before_critical: Option<u32>,
    /// Consecutive successes before passing (default 1).
    #[arg(long)]
    success_before_passing: Option<u32>,
    /// Remove the instance after it stays critical this long.
    #[arg(long)]
    deregister_critical_after: Option<String>,
}

fn duration(flag: &str, text: &str) -> anyhow::Result<HumanDuration> {
    crate::duration::parse(flag, text).map(HumanDuration)
}

/// The registry's services (JSON array), in `namespace` or the default one.
async fn list_services(
    client: &Client,
    namespace: Option<&str>,
) -> anyhow::Result<serde_json::Value> {
    let ns: Vec<(&str, &str)> = namespace.map(|n| ("namespace", n)).into_iter().collect();
    let reply: serde_json::Value = client
        .get_json(&format!("/v1/registry/services{}", query_string(&ns)))
        .await
        .map_err(api)?;
    Ok(reply.get("services").cloned().unwrap_or_default())
}

fn query_string(pairs: &[(&str, &str)]) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        out.append_pair(k, v);
    }
    let s = out.finish();
    if s.is_empty() {
        s
    } else {
        format!("?{s}")
    }
}

fn segment(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl RegisterArgs {
    fn registration(&self) -> anyhow::Result<Registration> {
        let mut meta = BTreeMap::new();
        for pair in &self.meta {
            let (k, v) = pair
                .split_once('=')
                .with_context(|| format!("invalid --meta {pair:?}: use KEY=VALUE"))?;
            meta.insert(k.to_string(), v.to_string());
        }
        let probe = if let Some(url) = &self.http_check {
            Some(Probe::Http {
                url: url.clone(),
                method: "GET".into(),
                headers: BTreeMap::new(),
            })
        } else if let Some(addr) = &self.tcp_check {
            Some(Probe::Tcp { addr: addr.clone() })
        } else {
            self.grpc_check.as_ref().map(|addr| Probe::Grpc {
                addr: addr.clone(),
                service: String::new(),
            })
        };
        if probe.is_none()
            && (self.interval.is_some()
                || self.timeout.is_some()
                || self.failures_before_critical.is_some()
                || self.success_before_passing.is_some())
        {
            bail!("--interval, --timeout and the thresholds need --http-check, --tcp-check or --grpc-check");
        }
        let check = match probe {
            Some(probe) => {
                let mut check = Check {
                    kind: CheckKind::Probe { probe },
                    interval: HumanDuration::from_millis(10_000),
                    timeout: HumanDuration::from_millis(5_000),
                    success_before_passing: self.success_before_passing.unwrap_or(0),
                    failures_before_critical: self.failures_before_critical.unwrap_or(0),
                    deregister_critical_after: None,
                };
                if let Some(i) = &self.interval {
                    check.interval = duration("--interval", i)?;
                }
                if let Some(t) = &self.timeout {
                    check.timeout = duration("--timeout", t)?;
                }
                if let Some(d) = &self.deregister_critical_after {
                    check.deregister_critical_after =
                        Some(duration("--deregister-critical-after", d)?);
                }
                Some(check)
            }
            None => None,
        };
        Ok(Registration {
            namespace: self.namespace.clone(),
            service: self.name.clone(),
            id: self.id.clone(),
            address: self.address.clone(),
            port: self.port,
            tags: self.tag.clone(),
            meta,
            weight: self.weight,
            enabled: None,
            ttl: self
                .ttl
                .as_deref()
                .map(|t| duration("--ttl", t))
                .transpose()?,
            check,
            status: None,
        })
    }
}

fn api(e: ClientError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

fn instance_path(namespace: Option<&str>, name: &str, id: &str, suffix: &str) -> String {
    let ns: Vec<(&str, &str)> = namespace.map(|n| ("namespace", n)).into_iter().collect();
    format!(
        "/v1/registry/services/{}/instances/{}{suffix}{}",
        segment(name),
        segment(id),
        query_string(&ns)
    )
}

fn describe(i: &Instance) -> String {
    format!("{}:{} {}", i.address, i.port, status_word(i))
}

fn status_word(i: &Instance) -> String {
    let status = serde_json::to_value(i.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    if i.enabled {
        status
    } else {
        format!("{status} (disabled)")
    }
}

/// Runs `strata svc ...`.
pub async fn svc(endpoints: &[String], output: Output, command: SvcCommand) -> anyhow::Result<()> {
    let client = Client::new(endpoints).with_connect_timeout(Duration::from_secs(5));
    match command {
        SvcCommand::Register(args) => register(&client, output, &args).await,
        SvcCommand::Deregister {
            name,
            id,
            namespace,
        } => {
            let path = instance_path(namespace.as_deref(), &name, &id, "");
            let reply: serde_json::Value = client
                .call::<(), _>(Method::DELETE, &path, None)
                .await
                .map_err(api)?;
            match output {
                Output::Json => println!("{reply}"),
                Output::Table => println!("deregistered {name}/{id}"),
            }
            Ok(())
        }
        SvcCommand::List { namespace } => {
            let services = list_services(&client, namespace.as_deref()).await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&services)?),
                Output::Table => {
                    let mut table = Table::new(&[
                        ("NAMESPACE", Align::Left),
                        ("NAME", Align::Left),
                        ("INSTANCES", Align::Right),
                        ("PASSING", Align::Right),
                        ("TAGS", Align::Left),
                    ]);
                    for s in services.as_array().into_iter().flatten() {
                        let field = |k: &str| s.get(k).cloned().unwrap_or_default();
                        let tags: Vec<String> = field("tags")
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|t| t.as_str().map(str::to_string))
                            .collect();
                        let number =
                            |k: &str| field(k).as_u64().map(|v| v.to_string()).unwrap_or_default();
                        table.row(vec![
                            field("namespace").as_str().unwrap_or("").to_string(),
                            field("name").as_str().unwrap_or("").to_string(),
                            number("instances"),
                            number("passing"),
                            tags.join(","),
                        ]);
                    }
                    table.print();
                }
            }
            Ok(())
        }
        SvcCommand::Show {
            name,
            passing,
            tag,
            namespace,
        } => {
            let mut pairs: Vec<(&str, &str)> = Vec::new();
            if let Some(ns) = namespace.as_deref() {
                pairs.push(("namespace", ns));
            }
            if passing {
                pairs.push(("passing", "true"));
            }
            for t in &tag {
                pairs.push(("tag", t));
            }
            let path = format!(
                "/v1/registry/services/{}{}",
                segment(&name),
                query_string(&pairs)
            );
            let result: QueryResult = client.get_json(&path).await.map_err(api)?;
            if result.instances.is_empty() {
                // An empty answer is either "no such service" or "none matches the filters".
                let known = list_services(&client, namespace.as_deref())
                    .await?
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|s| s["name"].as_str() == Some(name.as_str()));
                if !known {
                    anyhow::bail!(
                        "no service {name:?} in namespace {}; `strata svc list` shows the registered ones",
                        namespace.as_deref().unwrap_or("public")
                    );
                }
            }
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&result.instances)?),
                Output::Table => {
                    let mut table = Table::new(&[
                        ("ID", Align::Left),
                        ("ADDRESS", Align::Left),
                        ("STATUS", Align::Left),
                        ("WEIGHT", Align::Right),
                        ("TAGS", Align::Left),
                        ("META", Align::Left),
                    ]);
                    for i in &result.instances {
                        let meta: Vec<String> =
                            i.meta.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        table.row(vec![
                            i.id.clone(),
                            format!("{}:{}", i.address, i.port),
                            status_word(i).to_string(),
                            i.weight.to_string(),
                            i.tags.join(","),
                            meta.join(","),
                        ]);
                    }
                    table.print();
                    if result.protected {
                        println!("(protection threshold reached: showing every instance, healthy or not)");
                    }
                }
            }
            Ok(())
        }
        SvcCommand::Watch { name, namespace } => {
            watch(&client, output, &name, namespace.as_deref()).await
        }
    }
}

async fn register(client: &Client, output: Output, args: &RegisterArgs) -> anyhow::Result<()> {
    let registration = args.registration()?;
    let registered: Registered = client
        .post("/v1/registry/instances", &registration)
        .await
        .map_err(api)?;
    let i = &registered.instance;
    match output {
        Output::Json => println!("{}", serde_json::to_string(&registered)?),
        Output::Table => {
            let kind = match (&i.ttl, &i.check) {
                (Some(ttl), _) => format!("ephemeral, ttl {}", humantime::format_duration(ttl.0)),
                (None, Some(_)) => "persistent, checked".to_string(),
                (None, None) => "persistent".to_string(),
            };
            let verb = if registered.created {
                "registered"
            } else {
                "already registered"
            };
            println!(
                "{verb} {}/{} at {}:{} ({kind})",
                i.service, i.id, i.address, i.port
            );
        }
    }
    if !args.keepalive {
        return Ok(());
    }
    let ttl = i.ttl.map(|t| t.0).unwrap_or(Duration::from_secs(10));
    let pause = (ttl / 3).max(Duration::from_millis(200));
    let path = instance_path(
        args.namespace.as_deref(),
        &args.name,
        &args.id,
        "/heartbeat",
    );
    let mut interrupt = std::pin::pin!(crate::coord_cmds::interrupted());
    loop {
        tokio::select! {
            () = &mut interrupt => break,
            () = tokio::time::sleep(pause) => {}
        }
        match client
            .call::<(), serde_json::Value>(Method::PUT, &path, None)
            .await
        {
            Ok(_) => {}
            Err(ClientError::Api(e)) if e.code == ErrorCode::NotFound => {
                eprintln!("instance expired before a heartbeat arrived; registering it again");
                if let Err(e) = client
                    .post::<_, Registered>("/v1/registry/instances", &registration)
                    .await
                {
                    eprintln!("register again failed: {e}");
                }
            }
            Err(e) => eprintln!("heartbeat failed (retrying): {e}"),
        }
    }
    let path = instance_path(args.namespace.as_deref(), &args.name, &args.id, "");
    let _ = client
        .call::<(), serde_json::Value>(Method::DELETE, &path, None)
        .await;
    eprintln!("deregistered {}/{}", args.name, args.id);
    Ok(())
}

async fn watch(
    client: &Client,
    output: Output,
    name: &str,
    namespace: Option<&str>,
) -> anyhow::Result<()> {
    let ns: Vec<(&str, &str)> = namespace.map(|n| ("namespace", n)).into_iter().collect();
    let path = format!(
        "/v1/registry/services/{}/watch{}",
        segment(name),
        query_string(&ns)
    );
    // What the user has been told, so a reconnect prints only the difference.
    let mut known: BTreeMap<String, Instance> = BTreeMap::new();
    let mut first = true;
    let mut follow = crate::link::Reconnecting::new(client);
    while let Some(mut stream) = follow.open::<WatchMessage>(&path).await? {
        while let Some(message) = follow.next(&mut stream).await {
            match message {
                WatchMessage::Snapshot { index, instances } => {
                    let now: BTreeMap<String, Instance> =
                        instances.into_iter().map(|i| (i.id.clone(), i)).collect();
                    if first {
                        if output == Output::Table {
                            println!(
                                "watching {name}: {} at index {index}",
                                crate::table::count(now.len(), "instance", "instances")
                            );
                        }
                        first = false;
                    }
                    let ids: BTreeSet<String> = known.keys().chain(now.keys()).cloned().collect();
                    for id in ids {
                        match (known.get(&id), now.get(&id)) {
                            (Some(_), None) => print_change(output, index, "delete", &id, None),
                            (old, Some(new)) if old != Some(new) => {
                                print_change(output, index, "put", &id, Some(new))
                            }
                            _ => {}
                        }
                    }
                    known = now;
                }
                WatchMessage::Put { index, instance } => {
                    print_change(output, index, "put", &instance.id, Some(&instance));
                    known.insert(instance.id.clone(), *instance);
                }
                WatchMessage::Delete { index, id } => {
                    print_change(output, index, "delete", &id, None);
                    known.remove(&id);
                }
            }
        }
    }
    Ok(())
}

fn print_change(output: Output, index: i64, kind: &str, id: &str, instance: Option<&Instance>) {
    match output {
        Output::Json => {
            let line =
                serde_json::json!({"type": kind, "index": index, "id": id, "instance": instance});
            println!("{line}");
        }
        Output::Table => match instance {
            Some(i) => println!("{kind} {id} {} index={index}", describe(i)),
            None => println!("{kind} {id} index={index}"),
        },
    }
}
