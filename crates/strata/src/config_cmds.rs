//! `strata config ...`: publish, read, list and follow configs in the config center.

use crate::table::{Align, Table};
use crate::Output;
use anyhow::{bail, Context};
use clap::{ArgGroup, Args, Subcommand};
use serde_json::{json, Value};
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;
use strata_api::config::{ConfigType, Served, WatchMessage};
use strata_client::{Client, ClientError, Method};

/// Which config: the data id plus optional group and namespace.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// Data id.
    data_id: String,
    /// Group (default DEFAULT_GROUP).
    #[arg(long)]
    group: Option<String>,
    /// Namespace (default public).
    #[arg(long)]
    namespace: Option<String>,
}

impl Target {
    fn body(&self) -> Value {
        json!({"namespace": self.namespace, "group": self.group, "data_id": self.data_id})
    }

    fn query(&self, extra: &[(&str, String)]) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("data_id", &self.data_id);
        if let Some(g) = &self.group {
            q.append_pair("group", g);
        }
        if let Some(n) = &self.namespace {
            q.append_pair("namespace", n);
        }
        for (k, v) in extra {
            q.append_pair(k, v);
        }
        q.finish()
    }
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Publish a new version of DATA_ID from a file (`-` reads stdin).
    Publish {
        #[command(flatten)]
        target: Target,
        /// The content (`-` for stdin).
        #[arg(long)]
        file: String,
        /// Declared type: text, json, yaml, toml, properties or xml (content must parse).
        #[arg(long = "type")]
        kind: Option<String>,
        /// Description.
        #[arg(long)]
        desc: Option<String>,
        /// Tag (repeatable).
        #[arg(long)]
        tag: Vec<String>,
        /// Publish only if the current md5 is this ("" = only if it does not exist).
        #[arg(long)]
        if_md5: Option<String>,
        /// Publish only if the current version is this (0 = only if it does not exist).
        #[arg(long)]
        if_version: Option<u64>,
    },
    /// Print the content a client with these labels sees (or an old version).
    #[command(disable_version_flag = true)]
    Get {
        #[command(flatten)]
        target: Target,
        /// An old version from the history.
        #[arg(long)]
        version: Option<u64>,
        /// A client label K=V (repeatable), for gray releases.
        #[arg(long)]
        label: Vec<String>,
    },
    /// Delete a config (its history stays).
    Delete {
        #[command(flatten)]
        target: Target,
    },
    /// List configs.
    List {
        /// Namespace (default public).
        #[arg(long)]
        namespace: Option<String>,
        /// Only this group.
        #[arg(long)]
        group: Option<String>,
        /// Only data ids starting with this.
        #[arg(long)]
        prefix: Option<String>,
        /// Only configs with this tag.
        #[arg(long)]
        tag: Option<String>,
    },
    /// Show every kept version.
    History {
        #[command(flatten)]
        target: Target,
    },
    /// Show a unified diff between two versions.
    Diff {
        #[command(flatten)]
        target: Target,
        /// Old version.
        #[arg(long)]
        from: u64,
        /// New version.
        #[arg(long)]
        to: u64,
    },
    /// Publish an old version's content as a new version.
    Rollback {
        #[command(flatten)]
        target: Target,
        /// The version to bring back.
        #[arg(long)]
        to_version: u64,
    },
    /// Print the new content each time the config changes, until interrupted.
    Listen {
        #[command(flatten)]
        target: Target,
        /// A client label K=V (repeatable), for gray releases.
        #[arg(long)]
        label: Vec<String>,
    },
    /// Start a gray release seen only by matching clients.
    #[command(group(ArgGroup::new("who").args(["ips", "labels"]).required(true)))]
    Gray {
        #[command(flatten)]
        target: Target,
        /// The candidate content (`-` for stdin).
        #[arg(long)]
        file: String,
        /// Client addresses, comma-separated.
        #[arg(long, value_delimiter = ',')]
        ips: Vec<String>,
        /// Client labels K=V, comma-separated; a client needs all of them.
        #[arg(long, value_delimiter = ',')]
        labels: Vec<String>,
    },
    /// Publish the gray release to everyone.
    GrayPromote {
        #[command(flatten)]
        target: Target,
    },
    /// End the gray release without publishing it.
    GrayAbort {
        #[command(flatten)]
        target: Target,
    },
    /// Write every config of a namespace to one file.
    Export {
        /// Namespace.
        #[arg(long, default_value = "public")]
        namespace: String,
        /// Output file (`-` for stdout).
        #[arg(long)]
        out: String,
    },
    /// Load an export file into a namespace.
    Import {
        /// The export file (`-` for stdin).
        file: String,
        /// Namespace.
        #[arg(long, default_value = "public")]
        namespace: String,
        /// What to do when a config exists: skip, overwrite or abort (import nothing).
        #[arg(long, default_value = "abort")]
        policy: String,
    },
}

fn read_input(file: &str) -> anyhow::Result<String> {
    if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("read stdin")?;
        return Ok(s);
    }
    std::fs::read_to_string(file).with_context(|| format!("read {file}"))
}

fn pairs(list: &[String], flag: &str) -> anyhow::Result<serde_json::Map<String, Value>> {
    let mut map = serde_json::Map::new();
    for item in list {
        let (k, v) = item
            .split_once('=')
            .with_context(|| format!("invalid {flag} {item:?}: use KEY=VALUE"))?;
        map.insert(k.to_string(), Value::String(v.to_string()));
    }
    Ok(map)
}

fn api(e: ClientError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

fn print(output: Output, value: &Value, table: impl FnOnce()) {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
        Output::Table => table(),
    }
}

/// Runs `strata config ...`.
pub async fn config(
    endpoints: &[String],
    output: Output,
    command: ConfigCommand,
) -> anyhow::Result<()> {
    let client = Client::new(endpoints).with_connect_timeout(Duration::from_secs(5));
    match command {
        ConfigCommand::Publish {
            target,
            file,
            kind,
            desc,
            tag,
            if_md5,
            if_version,
        } => {
            let content = read_input(&file)?;
            let mut body = target.body();
            body["content"] = Value::String(content);
            if let Some(kind) = kind {
                let kind: ConfigType = kind.parse().map_err(|e: String| anyhow::anyhow!(e))?;
                body["type"] = json!(kind);
            }
            if let Some(desc) = desc {
                body["desc"] = json!(desc);
            }
            if !tag.is_empty() {
                body["tags"] = json!(tag);
            }
            if let Some(m) = if_md5 {
                body["if_md5"] = json!(m);
            }
            if let Some(v) = if_version {
                body["if_version"] = json!(v);
            }
            let reply: Value = client
                .post("/v1/config/publish", &body)
                .await
                .map_err(api)?;
            print(output, &reply, || {
                println!(
                    "published {} version {} (md5 {})",
                    target.data_id,
                    reply["version"],
                    reply["md5"].as_str().unwrap_or("")
                )
            });
        }
        ConfigCommand::Get {
            target,
            version,
            label,
        } => {
            let mut extra: Vec<(&str, String)> =
                label.iter().map(|l| ("label", l.clone())).collect();
            if let Some(v) = version {
                extra.push(("version", v.to_string()));
            }
            let served: Served = client
                .get_json(&format!("/v1/config/get?{}", target.query(&extra)))
                .await
                .map_err(api)?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&served)?),
                Output::Table => {
                    print!("{}", served.content);
                    if !served.content.ends_with('\n') && !served.content.is_empty() {
                        println!();
                    }
                }
            }
        }
        ConfigCommand::Delete { target } => {
            let reply: Value = client
                .post("/v1/config/delete", &target.body())
                .await
                .map_err(api)?;
            print(output, &reply, || println!("deleted {}", target.data_id));
        }
        ConfigCommand::List {
            namespace,
            group,
            prefix,
            tag,
        } => {
            let mut q = form_urlencoded::Serializer::new(String::new());
            for (k, v) in [
                ("namespace", namespace),
                ("group", group),
                ("prefix", prefix),
                ("tag", tag),
            ] {
                if let Some(v) = v {
                    q.append_pair(k, &v);
                }
            }
            let reply: Value = client
                .get_json(&format!("/v1/config/list?{}", q.finish()))
                .await
                .map_err(api)?;
            print(output, &reply, || {
                let mut table = Table::new(&[
                    ("GROUP", Align::Left),
                    ("DATA ID", Align::Left),
                    ("TYPE", Align::Left),
                    ("VERSION", Align::Right),
                    ("MD5", Align::Left),
                ]);
                for c in reply.as_array().into_iter().flatten() {
                    let gray = if c["gray"] == json!(true) {
                        "  (gray release running)"
                    } else {
                        ""
                    };
                    table.row(vec![
                        c["group"].as_str().unwrap_or("").to_string(),
                        c["data_id"].as_str().unwrap_or("").to_string(),
                        c["type"].as_str().unwrap_or("").to_string(),
                        c["version"]
                            .as_u64()
                            .map(|v| v.to_string())
                            .unwrap_or_default(),
                        format!("{}{gray}", c["md5"].as_str().unwrap_or("")),
                    ]);
                }
                table.print();
            });
        }
        ConfigCommand::History { target } => {
            let reply: Value = client
                .get_json(&format!("/v1/config/history?{}", target.query(&[])))
                .await
                .map_err(api)?;
            print(output, &reply, || {
                let mut table = Table::new(&[
                    ("VERSION", Align::Right),
                    ("OP", Align::Left),
                    ("MD5", Align::Left),
                    ("MODIFIED", Align::Left),
                    ("SOURCE", Align::Left),
                ]);
                for e in reply.as_array().into_iter().flatten() {
                    let at = e["modified_at"].as_u64().unwrap_or(0);
                    let when = humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + Duration::from_millis(at),
                    );
                    table.row(vec![
                        e["version"]
                            .as_u64()
                            .map(|v| v.to_string())
                            .unwrap_or_default(),
                        e["op"].as_str().unwrap_or("").to_string(),
                        e["md5"].as_str().unwrap_or("").to_string(),
                        when.to_string(),
                        e["source"].as_str().unwrap_or("").to_string(),
                    ]);
                }
                table.print();
            });
        }
        ConfigCommand::Diff { target, from, to } => {
            let reply: Value = client
                .get_json(&format!(
                    "/v1/config/diff?{}",
                    target.query(&[("from", from.to_string()), ("to", to.to_string())])
                ))
                .await
                .map_err(api)?;
            print(output, &reply, || {
                print!("{}", reply["diff"].as_str().unwrap_or(""))
            });
        }
        ConfigCommand::Rollback { target, to_version } => {
            let mut body = target.body();
            body["to_version"] = json!(to_version);
            let reply: Value = client
                .post("/v1/config/rollback", &body)
                .await
                .map_err(api)?;
            print(output, &reply, || {
                println!(
                    "rolled {} back to version {to_version}: now version {}",
                    target.data_id, reply["version"]
                )
            });
        }
        ConfigCommand::Listen { target, label } => listen(&client, output, &target, &label).await?,
        ConfigCommand::Gray {
            target,
            file,
            ips,
            labels,
        } => {
            let mut body = target.body();
            body["content"] = json!(read_input(&file)?);
            if !ips.is_empty() {
                body["ips"] = json!(ips);
            } else {
                body["labels"] = Value::Object(pairs(&labels, "--labels")?);
            }
            let reply: Value = client.post("/v1/config/gray", &body).await.map_err(api)?;
            print(output, &reply, || {
                println!("gray release of {} started", target.data_id)
            });
        }
        ConfigCommand::GrayPromote { target } => {
            let reply: Value = client
                .post("/v1/config/gray/promote", &target.body())
                .await
                .map_err(api)?;
            print(output, &reply, || {
                println!(
                    "promoted the gray release of {}: now version {}",
                    target.data_id, reply["version"]
                )
            });
        }
        ConfigCommand::GrayAbort { target } => {
            let reply: Value = client
                .post("/v1/config/gray/abort", &target.body())
                .await
                .map_err(api)?;
            print(output, &reply, || {
                println!("aborted the gray release of {}", target.data_id)
            });
        }
        ConfigCommand::Export { namespace, out } => {
            let q = form_urlencoded::Serializer::new(String::new())
                .append_pair("namespace", &namespace)
                .finish();
            let reply: Value = client
                .get_json(&format!("/v1/config/export?{q}"))
                .await
                .map_err(api)?;
            let text = serde_json::to_string_pretty(&reply)?;
            let count = reply["configs"].as_array().map(Vec::len).unwrap_or(0);
            if out == "-" {
                println!("{text}");
            } else {
                write_atomically(&PathBuf::from(&out), text.as_bytes())?;
                eprintln!("exported {count} configs of namespace {namespace} to {out}");
            }
        }
        ConfigCommand::Import {
            file,
            namespace,
            policy,
        } => {
            let bytes = if file == "-" {
                let mut b = Vec::new();
                std::io::stdin().read_to_end(&mut b).context("read stdin")?;
                b
            } else {
                std::fs::read(&file).with_context(|| format!("read {file}"))?
            };
            let payload: Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("corrupt import file {file}: not JSON"))?;
            let q = form_urlencoded::Serializer::new(String::new())
                .append_pair("namespace", &namespace)
                .append_pair("policy", &policy)
                .finish();
            let reply: Value = client
                .call(
                    Method::POST,
                    &format!("/v1/config/import?{q}"),
                    Some(&payload),
                )
                .await
                .map_err(api)?;
            print(output, &reply, || {
                let n = |k: &str| reply[k].as_array().map(Vec::len).unwrap_or(0);
                println!(
                    "imported into {namespace}: {} created, {} overwritten, {} skipped",
                    n("created"),
                    n("overwritten"),
                    n("skipped")
                )
            });
        }
    }
    Ok(())
}

fn write_atomically(path: &PathBuf, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))
}

async fn listen(
    client: &Client,
    output: Output,
    target: &Target,
    labels: &[String],
) -> anyhow::Result<()> {
    for l in labels {
        if !l.contains('=') {
            bail!("invalid --label {l:?}: use KEY=VALUE");
        }
    }
    let mut from: Option<u64> = None;
    let mut follow = crate::link::Reconnecting::new(client);
    loop {
        let mut extra: Vec<(&str, String)> = labels.iter().map(|l| ("label", l.clone())).collect();
        if let Some(v) = from {
            extra.push(("from_version", v.to_string()));
        }
        let path = format!("/v1/config/watch?{}", target.query(&extra));
        let Some(mut stream) = follow.open::<WatchMessage>(&path).await? else {
            return Ok(());
        };
        while let Some(message) = follow.next(&mut stream).await {
            if message.event != "gray" {
                from = Some(message.version.max(from.unwrap_or(0)));
            }
            if message.event == "current" {
                continue;
            }
            match output {
                Output::Json => println!("{}", serde_json::to_string(&message)?),
                Output::Table => {
                    println!(
                        "--- {} version {} md5 {}",
                        message.event, message.version, message.md5
                    );
                    print!("{}", message.content);
                    if !message.content.is_empty() && !message.content.ends_with('\n') {
                        println!();
                    }
                }
            }
        }
    }
}
