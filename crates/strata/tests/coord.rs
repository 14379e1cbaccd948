//! Locks and leader election through the CLI and the native API, on a real 3-node cluster.

#![allow(clippy::unwrap_used)]

mod common;

use common::{strata_command, wait_until, Cluster};
use std::process::Stdio;
use std::time::Duration;
use strata_proto::kv::{LeaseGrantRequest, LeaseGrantResponse};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_two_lock_holders_never_overlap_and_tokens_grow() {
    let cluster = Cluster::start(3, &[]).await;
    let journal = cluster.root.path().join("journal");
    std::fs::write(&journal, "").unwrap();
    // Each holder records entering and leaving with its fencing token; the pause keeps the
    // lock held long enough that a broken lock would interleave the lines.
    let script = format!(
        "for i in 1 2 3; do echo \"enter $STRATA_FENCING_TOKEN\" >> {j}; sleep 0.1; echo \"exit $STRATA_FENCING_TOKEN\" >> {j}; done",
        j = journal.display()
    );
    let endpoints = cluster.endpoints().join(",");
    let mut holders = Vec::new();
    for _ in 0..3 {
        holders.push(
            strata_command()
                .args([
                    "--endpoints",
                    &endpoints,
                    "lock",
                    "jobs",
                    "--",
                    "sh",
                    "-c",
                    &script,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
    }
    for holder in holders {
        let output = holder.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let lines: Vec<String> = std::fs::read_to_string(&journal)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 18, "{lines:?}");
    let mut holder_token: Option<i64> = None;
    let mut tokens = Vec::new();
    for line in &lines {
        let (what, token) = line.split_once(' ').unwrap();
        let token: i64 = token.parse().unwrap();
        match (what, holder_token) {
            ("enter", None) => {
                holder_token = Some(token);
                if tokens.last() != Some(&token) {
                    tokens.push(token);
                }
            }
            ("exit", Some(current)) if current == token => holder_token = None,
            _ => panic!("critical sections overlapped: {lines:?}"),
        }
    }
    assert_eq!(tokens.len(), 3, "{lines:?}");
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens must grow: {tokens:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_holder_whose_lease_expires_loses_the_lock() {
    let cluster = Cluster::start(3, &[]).await;
    let client = cluster.client();
    let grant = |ttl| LeaseGrantRequest { ttl, id: 0 };
    let first: LeaseGrantResponse = client.post("/v1/lease/grant", &grant(2)).await.unwrap();
    let held: serde_json::Value = client
        .post(
            "/v1/lock/acquire",
            &serde_json::json!({ "name": "res", "lease": first.id }),
        )
        .await
        .unwrap();
    let second: LeaseGrantResponse = client.post("/v1/lease/grant", &grant(30)).await.unwrap();
    // The first holder never renews: once its lease expires the second gets the lock, with a
    // larger fencing token.
    let next: serde_json::Value = client
        .post(
            "/v1/lock/acquire",
            &serde_json::json!({ "name": "res", "lease": second.id }),
        )
        .await
        .unwrap();
    assert!(next["revision"].as_i64().unwrap() > held["revision"].as_i64().unwrap());
    let remaining: serde_json::Value = client
        .post(
            "/v1/kv/range",
            &serde_json::json!({ "key": "res/", "prefix": true }),
        )
        .await
        .unwrap();
    assert_eq!(remaining["count"], 1, "{remaining}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t30_election_hands_over_and_observers_see_each_leader() {
    let cluster = Cluster::start(3, &[]).await;
    let endpoints = cluster.endpoints().join(",");
    let listen_out = cluster.root.path().join("listen.out");
    let mut listener = strata_command()
        .args(["--endpoints", &endpoints, "elect", "svc", "--listen"])
        .stdout(std::fs::File::create(&listen_out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let first_out = cluster.root.path().join("first.out");
    let mut first = strata_command()
        .args(["--endpoints", &endpoints, "elect", "svc", "alpha"])
        .stdout(std::fs::File::create(&first_out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), "alpha to win", || {
        let path = first_out.clone();
        async move {
            std::fs::read_to_string(&path)
                .ok()
                .filter(|t| t.contains("alpha"))
                .map(|_| ())
        }
    })
    .await;
    let second_out = cluster.root.path().join("second.out");
    let mut second = strata_command()
        .args(["--endpoints", &endpoints, "elect", "svc", "beta"])
        .stdout(std::fs::File::create(&second_out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // alpha resigns on SIGTERM; beta, which was waiting, takes over.
    common::send_sigterm(&first);
    assert!(first.wait().unwrap().success());
    wait_until(Duration::from_secs(10), "beta to win", || {
        let path = second_out.clone();
        async move {
            std::fs::read_to_string(&path)
                .ok()
                .filter(|t| t.contains("beta"))
                .map(|_| ())
        }
    })
    .await;
    let seen = wait_until(
        Duration::from_secs(10),
        "the observer to see both leaders",
        || {
            let path = listen_out.clone();
            async move {
                let text = std::fs::read_to_string(&path).ok()?;
                (text.contains("alpha") && text.contains("beta")).then_some(text)
            }
        },
    )
    .await;
    assert!(
        seen.find("alpha").unwrap() < seen.find("beta").unwrap(),
        "{seen}"
    );
    common::send_sigterm(&second);
    assert!(second.wait().unwrap().success());
    listener.kill().unwrap();
    listener.wait().unwrap();
}
