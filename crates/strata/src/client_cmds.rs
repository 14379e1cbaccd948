//! Client subcommands: `strata kv ...`, `strata lease ...`, `strata cluster ...`.

use crate::table::{Align, Table};
use crate::Output;
use anyhow::{bail, Context};
use clap::Subcommand;
use serde::Serialize;
use std::io::Read;
use std::time::Duration;
use strata_client::{Client, ClientError};
use strata_proto::kv::{
    CompactRequest, CompactResponse, DeleteRangeRequest, DeleteRangeResponse, EventType, KeyValue,
    LeaseGrantRequest, LeaseGrantResponse, LeaseIdRequest, LeaseLeasesResponse,
    LeaseRevokeResponse, LeaseTimeToLiveResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, SortOrder, SortTarget, TxnRequest, TxnResponse, WatchRequest,
};
use strata_proto::ClusterStatus;

#[derive(Subcommand, Debug)]
pub enum KvCommand {
    /// Write KEY=VALUE.
    Put {
        /// The key (any UTF-8 text).
        key: String,
        /// The value (leave it out with --ignore-value).
        #[arg(required_unless_present = "ignore_value")]
        value: Option<String>,
        /// Attach the key to this lease (the id as `lease grant` prints it); the key is deleted
        /// when the lease ends.
        #[arg(long)]
        lease: Option<String>,
        /// Print the previous value.
        #[arg(long)]
        prev_kv: bool,
        /// Keep the key's current value (the key must exist); e.g. to move it to a lease.
        #[arg(long, conflicts_with = "value")]
        ignore_value: bool,
        /// Keep the key's current lease (the key must exist).
        #[arg(long, conflicts_with = "lease")]
        ignore_lease: bool,
    },
    /// Read KEY (table output prints only the value for a single key).
    Get {
        /// The key, or the prefix with --prefix.
        key: String,
        /// Read every key starting with KEY.
        #[arg(long)]
        prefix: bool,
        /// Read as of this revision.
        #[arg(long)]
        rev: Option<i64>,
        /// At most this many keys.
        #[arg(long, default_value_t = 0)]
        limit: i64,
        /// Print keys only.
        #[arg(long)]
        keys_only: bool,
        /// Print only the number of keys.
        #[arg(long)]
        count_only: bool,
        /// Serve from the contacted node without confirming with the leader (may be stale).
        #[arg(long)]
        serializable: bool,
        /// Sort the result by this (before --limit cuts it).
        #[arg(long, value_enum)]
        sort_by: Option<SortBy>,
        /// Sort order (ascending when only --sort-by is given).
        #[arg(long, value_enum)]
        order: Option<Order>,
        /// Only keys last modified at or after this revision.
        #[arg(long)]
        min_mod_rev: Option<i64>,
        /// Only keys last modified at or before this revision.
        #[arg(long)]
        max_mod_rev: Option<i64>,
        /// Only keys created at or after this revision.
        #[arg(long)]
        min_create_rev: Option<i64>,
        /// Only keys created at or before this revision.
        #[arg(long)]
        max_create_rev: Option<i64>,
    },
    /// Delete KEY (or every key starting with KEY with --prefix).
    Del {
        /// The key, or the prefix with --prefix.
        key: String,
        /// Delete every key starting with KEY.
        #[arg(long)]
        prefix: bool,
        /// Print the deleted key-values.
        #[arg(long)]
        prev_kv: bool,
    },
    /// Print changes to KEY (or a prefix) as they happen; reconnects to another node if one dies.
    Watch {
        /// The key, or the prefix with --prefix.
        key: String,
        /// Watch every key starting with KEY.
        #[arg(long)]
        prefix: bool,
        /// Start from this revision (replays history).
        #[arg(long)]
        rev: Option<i64>,
        /// Include the previous value in each event.
        #[arg(long)]
        prev_kv: bool,
        /// Exit after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Run a transaction read as JSON from stdin: {"compare":[...],"success":[...],"failure":[...]}.
    ///
    /// Example: {"compare":[{"key":"k","result":"equal","target":{"version":0}}],
    ///           "success":[{"put":{"key":"k","value":"v"}}],"failure":[{"range":{"key":"k"}}]}
    Txn,
    /// Discard history before revision REV.
    Compact {
        /// The oldest revision to keep.
        rev: i64,
    },
}

/// What `kv get --sort-by` sorts by (etcdctl's names).
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum SortBy {
    /// The key.
    Key,
    /// The key's version.
    Version,
    /// The key's create revision.
    Create,
    /// The key's mod revision.
    Modify,
    /// The value.
    Value,
}

/// `kv get --order`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Order {
    /// Smallest first.
    Ascend,
    /// Largest first.
    Descend,
}

#[derive(Subcommand, Debug)]
pub enum LeaseCommand {
    /// Grant a lease with a TTL ("10s", "1m", or seconds).
    Grant {
        /// Time to live: seconds (10) or a duration (10s, 1m30s).
        ttl: String,
    },
    /// Revoke a lease and delete its keys.
    Revoke {
        /// The lease id, in hex as `lease grant` prints it, or decimal as --output json shows it.
        id: String,
    },
    /// Keep a lease alive until interrupted (or once with --once).
    Keepalive {
        /// The lease id, in hex as `lease grant` prints it, or decimal as --output json shows it.
        id: String,
        #[arg(long)]
        once: bool,
    },
    /// Show a lease's remaining TTL.
    Timetolive {
        /// The lease id, in hex as `lease grant` prints it, or decimal as --output json shows it.
        id: String,
        /// List the attached keys.
        #[arg(long)]
        keys: bool,
    },
    /// List live leases.
    List,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Show the leader, term, indexes and members.
    Status,
    /// Add a member (it joins as a learner and is promoted once caught up).
    AddMember {
        /// The new member's node id (its `--id`).
        id: u64,
        /// Its raft address, HOST:PORT.
        #[arg(long)]
        raft_addr: String,
        /// Its API address, HOST:PORT (it registers it itself once it runs).
        #[arg(long, default_value = "")]
        api_addr: String,
    },
    /// Remove a member.
    RemoveMember {
        /// The member's node id.
        id: u64,
    },
    /// Back up the whole state to a file, restore one into a new data folder, or check one.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Save a snapshot of the whole state, as it is now, from the first endpoint that answers
    /// (writes go on meanwhile; the file is checked before it is kept). Needs root.
    Save {
        /// Where to write it (replaced atomically).
        file: std::path::PathBuf,
    },
    /// Make a new data folder from a saved snapshot: a one-member cluster holding its state.
    /// Start a node on the folder, then add members with `strata cluster add-member`.
    Restore {
        /// The saved snapshot.
        file: std::path::PathBuf,
        /// The new data folder (must be empty or absent).
        #[arg(long)]
        data_dir: std::path::PathBuf,
        /// The node id the restored member will run with (its `--id`).
        #[arg(long, default_value_t = 1)]
        id: u64,
        /// Its raft address, HOST:PORT, as far as known (the node updates it when it starts).
        #[arg(long, default_value = "")]
        raft_addr: String,
        /// Its API address, HOST:PORT, as far as known.
        #[arg(long, default_value = "")]
        api_addr: String,
    },
    /// Check a saved snapshot's checksum and show what it holds.
    Status {
        /// The saved snapshot.
        file: std::path::PathBuf,
    },
}

/// How long a command keeps retrying while no endpoint accepts a connection. Long enough to
/// ride out a node restart, short enough that a wrong port or a stopped cluster is reported
/// at once rather than after the whole request timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

fn connect(endpoints: &[String]) -> Client {
    Client::new(endpoints).with_connect_timeout(CONNECT_TIMEOUT)
}

fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Turns a client error into a one-line message that says what to do.
fn explain(error: ClientError) -> anyhow::Error {
    anyhow::anyhow!("{error}")
}

/// Parses a lease id as the CLI prints it (hexadecimal, `0x` optional, as etcdctl) or as
/// `--output json` shows it (a decimal number). An id has 63 bits, so at most 16 hex digits:
/// 17 to 19 digits can only be decimal.
pub(crate) fn parse_lease(id: &str) -> anyhow::Result<i64> {
    let trimmed = id.trim();
    let parsed = match trimmed
        .strip_prefix("0x")
        .or_else(|| trimmed.strip_prefix("0X"))
    {
        Some(hex) => i64::from_str_radix(hex, 16).ok(),
        None if trimmed.len() > 16 && trimmed.bytes().all(|b| b.is_ascii_digit()) => {
            trimmed.parse().ok()
        }
        None => i64::from_str_radix(trimmed, 16).ok(),
    };
    match parsed {
        Some(value) if value > 0 => Ok(value),
        _ => anyhow::bail!(
            "{id:?} is not a lease id: give it as `strata lease grant` prints it (hex, e.g. 1e2ba6f209fded80) or as --output json shows it (decimal)"
        ),
    }
}

/// Parses a TTL argument (seconds, or a duration such as 10s or 1m).
pub(crate) fn parse_ttl(ttl: &str) -> anyhow::Result<i64> {
    crate::duration::ttl_seconds("TTL", ttl)
}

fn print_kv_line(kv: &KeyValue) {
    println!("{}\n{}", text(&kv.key), text(&kv.value));
}

/// Runs `strata kv ...`.
pub async fn kv(endpoints: &[String], output: Output, command: KvCommand) -> anyhow::Result<()> {
    let client = connect(endpoints);
    match command {
        KvCommand::Put {
            key,
            value,
            lease,
            prev_kv,
            ignore_value,
            ignore_lease,
        } => {
            let lease = lease.as_deref().map(parse_lease).transpose()?.unwrap_or(0);
            let request = PutRequest {
                key: key.into_bytes(),
                value: value.unwrap_or_default().into_bytes(),
                lease,
                prev_kv,
                ignore_value,
                ignore_lease,
            };
            let response: PutResponse =
                client.post("/v1/kv/put", &request).await.map_err(explain)?;
            match output {
                Output::Json => print_json(&response)?,
                Output::Table => {
                    println!("OK");
                    if let Some(prev) = &response.prev_kv {
                        print_kv_line(prev);
                    }
                }
            }
        }
        KvCommand::Get {
            key,
            prefix,
            rev,
            limit,
            keys_only,
            count_only,
            serializable,
            sort_by,
            order,
            min_mod_rev,
            max_mod_rev,
            min_create_rev,
            max_create_rev,
        } => {
            let request = RangeRequest {
                key: key.into_bytes(),
                range_end: Vec::new(),
                prefix,
                limit,
                revision: rev.unwrap_or(0),
                keys_only,
                count_only,
                serializable,
                sort_order: match order {
                    None => SortOrder::None,
                    Some(Order::Ascend) => SortOrder::Ascend,
                    Some(Order::Descend) => SortOrder::Descend,
                },
                sort_target: match sort_by {
                    None | Some(SortBy::Key) => SortTarget::Key,
                    Some(SortBy::Version) => SortTarget::Version,
                    Some(SortBy::Create) => SortTarget::Create,
                    Some(SortBy::Modify) => SortTarget::Mod,
                    Some(SortBy::Value) => SortTarget::Value,
                },
                min_mod_revision: min_mod_rev.unwrap_or(0),
                max_mod_revision: max_mod_rev.unwrap_or(0),
                min_create_revision: min_create_rev.unwrap_or(0),
                max_create_revision: max_create_rev.unwrap_or(0),
            };
            let response: RangeResponse = client
                .post("/v1/kv/range", &request)
                .await
                .map_err(explain)?;
            match output {
                Output::Json => print_json(&response)?,
                Output::Table if count_only => println!("{}", response.count),
                Output::Table if !prefix => {
                    // A single key prints only its value, so scripts can use $(strata kv get k).
                    match response.kvs.first() {
                        Some(kv) if keys_only => println!("{}", text(&kv.key)),
                        Some(kv) => println!("{}", text(&kv.value)),
                        None => {}
                    }
                }
                Output::Table => {
                    for kv in &response.kvs {
                        if keys_only {
                            println!("{}", text(&kv.key));
                        } else {
                            print_kv_line(kv);
                        }
                    }
                }
            }
        }
        KvCommand::Del {
            key,
            prefix,
            prev_kv,
        } => {
            let request = DeleteRangeRequest {
                key: key.into_bytes(),
                range_end: Vec::new(),
                prefix,
                prev_kv,
            };
            let response: DeleteRangeResponse = client
                .post("/v1/kv/delete", &request)
                .await
                .map_err(explain)?;
            match output {
                Output::Json => print_json(&response)?,
                Output::Table => {
                    println!("{}", response.deleted);
                    for kv in &response.prev_kvs {
                        print_kv_line(kv);
                    }
                }
            }
        }
        KvCommand::Watch {
            key,
            prefix,
            rev,
            prev_kv,
            count,
        } => {
            watch(&client, output, key, prefix, rev, prev_kv, count).await?;
        }
        KvCommand::Txn => {
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .context("read the transaction from stdin")?;
            let request: TxnRequest = serde_json::from_str(&input).context(
                "parse the transaction: expected JSON like {\"compare\":[...],\"success\":[...],\"failure\":[...]} (see `strata kv txn --help`)",
            )?;
            let response: TxnResponse =
                client.post("/v1/kv/txn", &request).await.map_err(explain)?;
            match output {
                Output::Json => print_json(&response)?,
                Output::Table => {
                    println!(
                        "{}",
                        if response.succeeded {
                            "SUCCESS"
                        } else {
                            "FAILURE"
                        }
                    );
                    for op in &response.responses {
                        println!("{}", serde_json::to_string(op)?);
                    }
                }
            }
        }
        KvCommand::Compact { rev } => {
            let response: CompactResponse = client
                .post("/v1/kv/compact", &CompactRequest { revision: rev })
                .await
                .map_err(explain)?;
            match output {
                Output::Json => print_json(&response)?,
                Output::Table => println!("compacted revision {rev}"),
            }
        }
    }
    Ok(())
}

async fn watch(
    client: &Client,
    output: Output,
    key: String,
    prefix: bool,
    rev: Option<i64>,
    prev_kv: bool,
    count: Option<u64>,
) -> anyhow::Result<()> {
    let mut request = WatchRequest {
        key: key.into_bytes(),
        prefix,
        start_revision: rev.unwrap_or(0),
        prev_kv,
        ..Default::default()
    };
    let mut delivered = 0u64;
    // The smallest revision not yet printed; after a reconnect we resume from here, so each
    // event is printed exactly once even if the serving node dies.
    let mut next_revision: i64 = 0;
    let mut link = crate::link::Link::new();
    let started = std::time::Instant::now();
    loop {
        if next_revision > 0 {
            request.start_revision = next_revision;
        }
        let mut stream = match client.watch(&request).await {
            Ok(stream) => stream,
            Err(ClientError::Api(e)) => bail!("{e}"),
            // Before the first event a wrong endpoint fails fast; after it, retry until Ctrl-C.
            Err(e) if next_revision == 0 && started.elapsed() >= CONNECT_TIMEOUT => bail!("{e}"),
            Err(e) => {
                tokio::time::sleep(link.lost(&e)).await;
                continue;
            }
        };
        let mut why = format!("{} ended the stream", stream.endpoint);
        loop {
            let message = match stream.next().await {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(e) => {
                    why = e.to_string();
                    break;
                }
            };
            link.up(&stream.endpoint);
            if message.created && next_revision == 0 {
                next_revision = if request.start_revision > 0 {
                    request.start_revision
                } else {
                    message.header.revision + 1
                };
            }
            if message.compact_revision > 0 {
                bail!(
                    "watch cancelled: revision {} has been compacted (oldest is {}); restart with --rev {}",
                    next_revision, message.compact_revision, message.compact_revision
                );
            }
            for event in &message.events {
                if event.kv.mod_revision < next_revision {
                    continue;
                }
                match output {
                    Output::Json => println!("{}", serde_json::to_string(event)?),
                    Output::Table => {
                        let kind = match event.kind {
                            EventType::Put => "PUT",
                            EventType::Delete => "DELETE",
                        };
                        println!(
                            "{kind} {} {} (rev {})",
                            text(&event.kv.key),
                            text(&event.kv.value),
                            event.kv.mod_revision
                        );
                    }
                }
                delivered += 1;
                if count.is_some_and(|c| delivered >= c) {
                    return Ok(());
                }
            }
            if let Some(last) = message.events.last() {
                // All events of a revision arrive in one message, so the next one is +1.
                next_revision = next_revision.max(last.kv.mod_revision + 1);
            }
        }
        tokio::time::sleep(link.lost(&why)).await;
    }
}

/// Runs `strata lease ...`.
pub async fn lease(
    endpoints: &[String],
    output: Output,
    command: LeaseCommand,
) -> anyhow::Result<()> {
    let client = connect(endpoints);
    match command {
        LeaseCommand::Grant { ttl } => {
            let ttl = parse_ttl(&ttl)?;
            let response: LeaseGrantResponse = client
                .post("/v1/lease/grant", &LeaseGrantRequest { ttl, id: 0 })
                .await
                .map_err(explain)?;
            match output {
                Output::Json => print_json(&response)?,
                Output::Table => println!(
                    "lease {:x} granted with TTL({}s)",
                    response.id, response.ttl
                ),
            }
        }
        LeaseCommand::Revoke { id } => {
            let id = parse_lease(&id)?;
            let response: LeaseRevokeResponse = client
                .post("/v1/lease/revoke", &LeaseIdRequest { id, keys: false })
                .await
                .map_err(explain)?;
            match output {
                Output::Json => print_json(&response)?,
                Output::Table => println!("lease {id:x} revoked"),
            }
        }
        LeaseCommand::Keepalive { id, once } => {
            let id = parse_lease(&id)?;
            loop {
                let response: LeaseTimeToLiveResponse = client
                    .post("/v1/lease/keepalive", &LeaseIdRequest { id, keys: false })
                    .await
                    .map_err(explain)?;
                match output {
                    Output::Json => println!("{}", serde_json::to_string(&response)?),
                    Output::Table => println!("lease {id:x} keepalived with TTL({})", response.ttl),
                }
                if once {
                    return Ok(());
                }
                let pause = Duration::from_millis((response.ttl.max(1) as u64 * 1000) / 3);
                tokio::time::sleep(pause).await;
            }
        }
        LeaseCommand::Timetolive { id, keys } => {
            let id = parse_lease(&id)?;
            let response: LeaseTimeToLiveResponse = client
                .post("/v1/lease/timetolive", &LeaseIdRequest { id, keys })
                .await
                .map_err(explain)?;
            match output {
                Output::Json => print_json(&response)?,
                Output::Table => {
                    println!(
                        "lease {id:x} granted with TTL({}s), remaining({}s)",
                        response.granted_ttl, response.ttl
                    );
                    if keys {
                        println!("attached keys: {}", response.keys.join(", "));
                    }
                }
            }
        }
        LeaseCommand::List => {
            let response: LeaseLeasesResponse =
                client.get_json("/v1/lease/list").await.map_err(explain)?;
            match output {
                Output::Json => print_json(&response)?,
                Output::Table => {
                    println!(
                        "found {}",
                        crate::table::count(response.leases.len(), "lease", "leases")
                    );
                    for lease in &response.leases {
                        println!("{:x} ttl={}s", lease.id, lease.granted_ttl);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Runs `strata cluster ...`.
pub async fn cluster(
    endpoints: &[String],
    output: Output,
    command: ClusterCommand,
) -> anyhow::Result<()> {
    let client = connect(endpoints);
    match command {
        ClusterCommand::Status => {
            let status: ClusterStatus = client
                .get_json("/v1/cluster/status")
                .await
                .map_err(explain)?;
            match output {
                Output::Json => print_json(&status)?,
                Output::Table => {
                    let leader = status
                        .leader
                        .map(|l| l.to_string())
                        .unwrap_or_else(|| "none".into());
                    println!(
                        "leader {leader}  term {}  commit {}  applied {}  revision {}  (answered by node {})",
                        status.term, status.commit_index, status.applied_index, status.revision, status.node_id
                    );
                    let mut table = Table::new(&[
                        ("ID", Align::Right),
                        ("ROLE", Align::Left),
                        ("RAFT", Align::Left),
                        ("API", Align::Left),
                        ("GRPC", Align::Left),
                        ("APPLIED", Align::Right),
                        ("DISK", Align::Right),
                    ]);
                    let scheme = if endpoints.iter().any(|e| e.starts_with("https://")) {
                        "https"
                    } else {
                        "http"
                    };
                    let own = futures::future::join_all(status.members.iter().map(|m| {
                        member_status(scheme, &m.api_addr, m.id == status.node_id, &status)
                    }))
                    .await;
                    for (m, own) in status.members.iter().zip(own) {
                        let (applied, disk) = match own {
                            Some(own) => (
                                own.applied_index.to_string(),
                                if own.read_only {
                                    format!(
                                        "{} (read-only: disk full)",
                                        crate::table::bytes(own.disk_bytes)
                                    )
                                } else {
                                    crate::table::bytes(own.disk_bytes)
                                },
                            ),
                            None => ("-".into(), "-".into()),
                        };
                        table.row(vec![
                            m.id.to_string(),
                            m.role.clone(),
                            m.raft_addr.clone(),
                            m.api_addr.clone(),
                            m.grpc_addr.clone(),
                            applied,
                            disk,
                        ]);
                    }
                    table.print();
                }
            }
        }
        ClusterCommand::AddMember {
            id,
            raft_addr,
            api_addr,
        } => {
            let body =
                serde_json::json!({ "id": id, "raft_addr": raft_addr, "api_addr": api_addr });
            let reply: serde_json::Value = client
                .post("/v1/cluster/members", &body)
                .await
                .map_err(explain)?;
            match output {
                Output::Json => print_json(&reply)?,
                Output::Table => println!("member {id} added"),
            }
        }
        ClusterCommand::Snapshot(command) => snapshot(&client, output, command).await?,
        ClusterCommand::RemoveMember { id } => {
            let reply: serde_json::Value = client
                .call::<(), _>(reqwest_delete(), &format!("/v1/cluster/members/{id}"), None)
                .await
                .map_err(explain)?;
            match output {
                Output::Json => print_json(&reply)?,
                Output::Table => println!("member {id} removed"),
            }
        }
    }
    Ok(())
}

/// A member's own view of itself (its applied index and disk), asked of the member with a
/// short timeout; `None` when it does not answer.
async fn member_status(
    scheme: &str,
    api_addr: &str,
    answered: bool,
    status: &ClusterStatus,
) -> Option<ClusterStatus> {
    if answered {
        return Some(status.clone());
    }
    if api_addr.is_empty() {
        return None;
    }
    Client::new(&[format!("{scheme}://{api_addr}")])
        .with_timeout(Duration::from_secs(1))
        .with_connect_timeout(Duration::from_secs(1))
        .get_json("/v1/cluster/status")
        .await
        .ok()
}

/// Runs `strata cluster snapshot ...`.
async fn snapshot(client: &Client, output: Output, command: SnapshotCommand) -> anyhow::Result<()> {
    use strata_node::backup;
    let (file, info) = match command {
        SnapshotCommand::Save { file } => {
            let info = save_snapshot(client, &file).await?;
            (file, info)
        }
        SnapshotCommand::Status { file } => {
            let info = backup::inspect(&file).map_err(anyhow::Error::msg)?;
            (file, info)
        }
        SnapshotCommand::Restore {
            file,
            data_dir,
            id,
            raft_addr,
            api_addr,
        } => {
            let me = strata_proto::NodeInfo {
                raft_addr,
                api_addr,
                grpc_addr: String::new(),
            };
            let info = backup::restore(&file, &data_dir, id, me)
                .await
                .map_err(anyhow::Error::msg)
                .with_context(|| {
                    format!("restore {} into {}", file.display(), data_dir.display())
                })?;
            if matches!(output, Output::Table) {
                println!(
                    "restored into {}: start `strata server --id {id} --data-dir {}`, then add members with `strata cluster add-member`",
                    data_dir.display(),
                    data_dir.display()
                );
            }
            (file, info)
        }
    };
    let (term, index) = info.last_log.unwrap_or((0, 0));
    match output {
        Output::Json => print_json(&serde_json::json!({
            "file": file,
            "term": term,
            "index": index,
            "data_bytes": info.data_bytes,
            "format": info.format,
            "members": info.members.keys().collect::<Vec<_>>(),
        }))?,
        Output::Table => println!(
            "{}: state up to log index {index} (term {term}), {} bytes of data, format {}, members {:?}",
            file.display(),
            info.data_bytes,
            info.format,
            info.members.keys().collect::<Vec<_>>()
        ),
    }
    Ok(())
}

/// Downloads a backup into `file` (through a `.part` file, synced, checked, then renamed).
async fn save_snapshot(
    client: &Client,
    file: &std::path::Path,
) -> anyhow::Result<strata_node::backup::BackupInfo> {
    use std::io::Write;
    let mut part_name = file.as_os_str().to_owned();
    part_name.push(".part");
    let part = std::path::PathBuf::from(part_name);
    let mut download = client
        .download("/v1/cluster/snapshot")
        .await
        .map_err(explain)?;
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&part).with_context(|| format!("create {}", part.display()))?,
    );
    let mut received = 0u64;
    let outcome: anyhow::Result<()> = async {
        while let Some(chunk) = download.next_chunk().await.map_err(explain)? {
            received += chunk.len() as u64;
            out.write_all(&chunk)
                .with_context(|| format!("write {}", part.display()))?;
        }
        if let Some(size) = download.size {
            if size != received {
                bail!("the snapshot ended after {received} of {size} bytes");
            }
        }
        let out = out.into_inner().map_err(|e| e.into_error())?;
        out.sync_all()?;
        Ok(())
    }
    .await;
    let checked = outcome.and_then(|()| {
        strata_node::backup::inspect(&part)
            .map_err(|e| anyhow::anyhow!("the received snapshot is damaged: {e}"))
    });
    match checked {
        Ok(info) => {
            std::fs::rename(&part, file)
                .with_context(|| format!("rename {} to {}", part.display(), file.display()))?;
            Ok(info)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            Err(e)
        }
    }
}

fn reqwest_delete() -> strata_client::Method {
    strata_client::Method::DELETE
}

#[cfg(test)]
mod tests {
    use super::parse_lease;

    #[test]
    fn lease_ids_parse_in_hex_and_decimal_forms() {
        let id: i64 = 0x1e2b_a6f2_09fd_ed80;
        assert_eq!(parse_lease("1e2ba6f209fded80").unwrap(), id);
        assert_eq!(parse_lease("0x1e2ba6f209fded80").unwrap(), id);
        assert_eq!(parse_lease(&id.to_string()).unwrap(), id);
        assert_eq!(parse_lease("3e8").unwrap(), 1000);
        for bad in ["", "0", "ten", "-5", "0x"] {
            assert!(parse_lease(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
