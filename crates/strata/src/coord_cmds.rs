//! `strata lock NAME -- COMMAND...` and `strata elect NAME [PROPOSAL]`.
//!
//! Both hold a lease for as long as they run and keep it alive in the background. When the
//! lease is lost (keep-alive refused: the cluster expired it), `lock` kills the command and
//! fails, because the command no longer holds the lock.

use crate::Output;
use anyhow::{bail, Context};
use clap::Args;
use serde::Deserialize;
use std::time::Duration;
use strata_client::{Client, ClientError};
use strata_proto::kv::{
    KeyValue, LeaseGrantRequest, LeaseGrantResponse, LeaseIdRequest, LeaseTimeToLiveResponse,
};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Arguments of `strata lock`.
#[derive(Args, Debug)]
pub struct LockArgs {
    /// The lock's name.
    pub name: String,
    /// TTL of the session lease: if this process stops renewing it, the lock is released.
    #[arg(long, default_value = "10s")]
    pub ttl: String,
    /// Command to run while holding the lock. It gets STRATA_LOCK_KEY, STRATA_LOCK_NAME and
    /// STRATA_FENCING_TOKEN in its environment. Without a command, hold until interrupted.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// Arguments of `strata elect`.
#[derive(Args, Debug)]
pub struct ElectArgs {
    /// The election's name.
    pub name: String,
    /// The value to proclaim once elected.
    pub proposal: Option<String>,
    /// Observe instead of campaigning: print the leader's value each time it changes.
    #[arg(long)]
    pub listen: bool,
    /// TTL of the session lease.
    #[arg(long, default_value = "10s")]
    pub ttl: String,
}

/// What acquiring a lock or winning an election returns.
#[derive(Debug, Deserialize)]
struct Ownership {
    #[serde(with = "strata_proto::bytes_serde")]
    key: Vec<u8>,
    revision: i64,
    lease: i64,
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A lease kept alive by a background task; `lost` turns true if the cluster refuses a renewal.
struct Session {
    lease: i64,
    lost: watch::Receiver<bool>,
    keepalive: tokio::task::JoinHandle<()>,
}

async fn open_session(endpoints: &[String], ttl: &str) -> anyhow::Result<Session> {
    let ttl = crate::client_cmds::parse_ttl(ttl)?;
    let client = Client::new(endpoints);
    let granted: LeaseGrantResponse = client
        .post("/v1/lease/grant", &LeaseGrantRequest { ttl, id: 0 })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (lost_tx, lost) = watch::channel(false);
    let lease = granted.id;
    let interval = Duration::from_millis((granted.ttl.max(1) as u64 * 1000) / 3);
    let keepalive = tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            let renewed: Result<LeaseTimeToLiveResponse, ClientError> = client
                .post(
                    "/v1/lease/keepalive",
                    &LeaseIdRequest {
                        id: lease,
                        keys: false,
                    },
                )
                .await;
            if let Err(e) = renewed {
                if e.code().is_some() {
                    let _ = lost_tx.send(true);
                    return;
                }
                tracing::warn!(error = %e, "lease keep-alive failed; retrying");
            }
        }
    });
    Ok(Session {
        lease,
        lost,
        keepalive,
    })
}

async fn close_session(endpoints: &[String], session: Session) {
    session.keepalive.abort();
    let client = Client::new(endpoints).with_timeout(Duration::from_secs(5));
    let revoked: Result<serde_json::Value, _> = client
        .post(
            "/v1/lease/revoke",
            &LeaseIdRequest {
                id: session.lease,
                keys: false,
            },
        )
        .await;
    if let Err(e) = revoked {
        tracing::debug!(error = %e, "revoking the session lease failed; it will expire");
    }
}

/// A client for calls that may block for as long as other holders keep the lock.
fn patient(endpoints: &[String]) -> Client {
    Client::new(endpoints).with_timeout(Duration::from_secs(365 * 24 * 3600))
}

pub(crate) async fn interrupted() {
    let mut terminate = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
}

async fn lease_lost(mut lost: watch::Receiver<bool>) {
    while !*lost.borrow() {
        if lost.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Runs `strata lock`.
pub async fn lock(endpoints: &[String], output: Output, args: LockArgs) -> anyhow::Result<()> {
    let session = open_session(endpoints, &args.ttl).await?;
    let acquire = serde_json::json!({ "name": args.name, "lease": session.lease });
    let waiter = patient(endpoints);
    let held: Ownership = tokio::select! {
        held = waiter.post("/v1/lock/acquire", &acquire) => match held {
            Ok(held) => held,
            Err(e) => {
                close_session(endpoints, session).await;
                bail!("{e}");
            }
        },
        _ = interrupted() => {
            close_session(endpoints, session).await;
            bail!("interrupted while waiting for lock {}", args.name);
        }
    };
    let key = text(&held.key);
    let outcome = if args.command.is_empty() {
        match output {
            Output::Json => println!(
                "{}",
                serde_json::json!({ "key": key, "fencing_token": held.revision, "lease": held.lease })
            ),
            Output::Table => println!("{key}\nfencing token {}", held.revision),
        }
        tokio::select! {
            _ = interrupted() => Ok(()),
            _ = lease_lost(session.lost.clone()) => Err(anyhow::anyhow!("lost lock {}: its lease expired", args.name)),
        }
    } else {
        let mut child = tokio::process::Command::new(&args.command[0])
            .args(&args.command[1..])
            .env("STRATA_LOCK_NAME", &args.name)
            .env("STRATA_LOCK_KEY", &key)
            .env("STRATA_FENCING_TOKEN", held.revision.to_string())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {:?}", args.command[0]))?;
        tokio::select! {
            status = child.wait() => {
                let status = status.context("wait for the command")?;
                use std::os::unix::process::ExitStatusExt;
                // Exit as the command did, as flock(1) does; a signal death is 128 + signal.
                match status.code() {
                    Some(0) => Ok(()),
                    Some(code) => Err(crate::PassExit(code).into()),
                    None => Err(crate::PassExit(128 + status.signal().unwrap_or(0)).into()),
                }
            }
            _ = lease_lost(session.lost.clone()) => {
                let _ = child.kill().await;
                Err(anyhow::anyhow!("lost lock {}: its lease expired; the command was stopped", args.name))
            }
        }
    };
    let release = serde_json::json!({ "key": key, "revision": held.revision });
    let released: Result<serde_json::Value, _> = Client::new(endpoints)
        .post("/v1/lock/release", &release)
        .await;
    if let Err(e) = released {
        tracing::warn!(error = %e, "releasing the lock failed; it is released when the lease ends");
    }
    close_session(endpoints, session).await;
    outcome
}

/// Runs `strata elect`.
pub async fn elect(endpoints: &[String], output: Output, args: ElectArgs) -> anyhow::Result<()> {
    if args.listen {
        let client = Client::new(endpoints);
        let name = serde_json::json!({ "name": args.name });
        let mut stream = client
            .stream::<_, KeyValue>("/v1/election/observe", &name)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        while let Some(leader) = stream.next().await.map_err(|e| anyhow::anyhow!("{e}"))? {
            match output {
                Output::Json => println!("{}", serde_json::to_string(&leader)?),
                Output::Table => println!("{}\n{}", text(&leader.key), text(&leader.value)),
            }
        }
        bail!("the observed node closed the stream; run the command again");
    }
    let Some(proposal) = args.proposal else {
        bail!("give a PROPOSAL to campaign with, or --listen to observe");
    };
    let session = open_session(endpoints, &args.ttl).await?;
    let campaign =
        serde_json::json!({ "name": args.name, "lease": session.lease, "value": proposal });
    let waiter = patient(endpoints);
    let won: Ownership = tokio::select! {
        won = waiter.post("/v1/election/campaign", &campaign) => match won {
            Ok(won) => won,
            Err(e) => {
                close_session(endpoints, session).await;
                bail!("{e}");
            }
        },
        _ = interrupted() => {
            close_session(endpoints, session).await;
            bail!("interrupted while campaigning in {}", args.name);
        }
    };
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({ "key": text(&won.key), "value": proposal, "revision": won.revision })
        ),
        Output::Table => println!("{}\n{proposal}", text(&won.key)),
    }
    let outcome = tokio::select! {
        _ = interrupted() => Ok(()),
        _ = lease_lost(session.lost.clone()) => Err(anyhow::anyhow!("lost leadership of {}: the lease expired", args.name)),
    };
    let resign = serde_json::json!({ "key": text(&won.key), "revision": won.revision });
    let resigned: Result<serde_json::Value, _> = Client::new(endpoints)
        .post("/v1/election/resign", &resign)
        .await;
    if let Err(e) = resigned {
        tracing::warn!(error = %e, "resigning failed; leadership ends when the lease does");
    }
    close_session(endpoints, session).await;
    outcome
}
