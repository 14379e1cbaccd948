//! Access control on real processes: a 3-node cluster where root turns it on through the CLI,
//! users and tokens enforced on every node, denied requests that change nothing and reach the
//! audit log, a `strata server` that bootstraps root from `--root-password-file`, and no
//! secret in any log.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Runs the CLI against `endpoints` with its own config folder (where `strata auth login`
/// stores the token) and extra environment, feeding `stdin`.
fn strata(
    config_home: &Path,
    endpoints: &[String],
    env: &[(&str, &str)],
    args: &[&str],
    stdin: &[u8],
) -> Output {
    let mut command = Command::new(strata_bin());
    command
        .env("XDG_CONFIG_HOME", config_home)
        .env_remove("STRATA_TOKEN")
        .env_remove("STRATA_PASSWORD")
        .arg("--endpoints")
        .arg(endpoints.join(","))
        .args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    run_with_deadline(&mut command, stdin, Duration::from_secs(30))
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn err(out: &Output, what: &str) -> String {
    assert!(
        !out.status.success(),
        "{what} succeeded but should not have"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A native API call with an optional bearer token: (status, body).
async fn call(api: &str, token: Option<&str>, path: &str, body: Value) -> (u16, Value) {
    let http = http_client();
    let mut request = http.post(format!("http://{api}{path}")).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn put(api: &str, token: Option<&str>, key: &str, value: &str) -> (u16, Value) {
    call(
        api,
        token,
        "/v1/kv/put",
        json!({"key": key, "value": value}),
    )
    .await
}

async fn get(api: &str, token: Option<&str>, key: &str) -> Option<String> {
    let (status, body) = call(api, token, "/v1/kv/range", json!({"key": key})).await;
    assert_eq!(status, 200, "range {key}: {body}");
    body["kvs"][0]["value"].as_str().map(str::to_string)
}

async fn auth_enabled(api: &str) -> bool {
    let body: Value = http_client()
        .get(format!("http://{api}/v1/auth/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["enabled"] == true
}

/// Logs in through the API and returns the token.
async fn login(api: &str, user: &str, password: &str) -> String {
    let (status, body) = call(
        api,
        None,
        "/v1/auth/login",
        json!({"user": user, "password": password}),
    )
    .await;
    assert_eq!(status, 200, "login {user}: {body}");
    body["token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t01_roles_users_and_tokens_enforced_on_every_node_and_audited() {
    let cluster = Cluster::start(3, &[]).await;
    let home = tempfile::tempdir().unwrap();
    let eps = cluster.endpoints();
    let run = |env: &[(&str, &str)], args: &[&str], stdin: &[u8]| {
        strata(home.path(), &eps, env, args, stdin)
    };
    let root_password = "r00t-pass-never-logged";
    let alice_password = "alice-pass-never-logged";

    // Enabling without root is refused, as etcd refuses it.
    let refused = err(&run(&[], &["auth", "enable"], b""), "enable without root");
    assert!(refused.contains("root user does not exist"), "{refused}");

    ok(
        &run(
            &[],
            &["auth", "user", "add", "root", "--password-stdin"],
            format!("{root_password}\n").as_bytes(),
        ),
        "add root",
    );
    ok(
        &run(&[], &["auth", "user", "grant", "root", "root"], b""),
        "grant root",
    );
    ok(&run(&[], &["auth", "role", "add", "app"], b""), "role add");
    ok(
        &run(
            &[],
            &["auth", "role", "grant", "app", "app/", "--prefix"],
            b"",
        ),
        "role grant",
    );
    ok(
        &run(
            &[("STRATA_PASSWORD", alice_password)],
            &["auth", "user", "add", "alice"],
            b"",
        ),
        "add alice",
    );
    ok(
        &run(&[], &["auth", "user", "grant", "alice", "app"], b""),
        "grant alice",
    );
    // A key outside alice's grant, written while access control is off.
    let n1 = cluster.nodes[0].api.clone();
    assert_eq!(put(&n1, None, "other/x", "before").await.0, 200);
    ok(&run(&[], &["auth", "enable"], b""), "enable");
    let status = ok(&run(&[], &["auth", "status"], b""), "status");
    assert_eq!(status.trim(), "access control: on");

    // Every node follows the switch; without a token a request is refused with 401.
    for node in &cluster.nodes {
        let api = node.api.clone();
        wait_until(Duration::from_secs(10), "auth on everywhere", || {
            let api = api.clone();
            async move { auth_enabled(&api).await.then_some(()) }
        })
        .await;
        let (status, body) = put(&api, None, "app/anon", "x").await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["code"], "unauthenticated");
        // Health and status stay open.
        let live = http_client()
            .get(format!("http://{api}/livez"))
            .send()
            .await
            .unwrap();
        assert_eq!(live.status().as_u16(), 200);
    }
    let denied_cli = err(
        &run(&[], &["kv", "put", "app/cli", "1"], b""),
        "put without login",
    );
    assert!(denied_cli.contains("unauthenticated"), "{denied_cli}");

    // alice logs in through the CLI; the stored token is the owner's alone.
    let logged = ok(
        &run(
            &[],
            &["auth", "login", "--user", "alice", "--password-stdin"],
            format!("{alice_password}\n").as_bytes(),
        ),
        "alice login",
    );
    assert!(logged.contains("logged in as alice"), "{logged}");
    let token_file = home.path().join("strata/token");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&token_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    ok(
        &run(&[], &["kv", "put", "app/cli", "from-cli"], b""),
        "alice put in grant",
    );
    let who = ok(&run(&[], &["auth", "whoami"], b""), "whoami");
    assert_eq!(who.trim(), "alice");
    let denied = err(
        &run(&[], &["kv", "put", "other/x", "after"], b""),
        "alice put outside",
    );
    assert!(
        denied.contains("permission_denied") && denied.contains("alice"),
        "{denied}"
    );
    let denied = err(
        &run(&[], &["auth", "user", "list"], b""),
        "alice lists users",
    );
    assert!(denied.contains("permission_denied"), "{denied}");

    // Through each node's API: writes inside the grant work, outside it are refused with 403,
    // reads over a range must be covered whole, the auth records are root's only.
    let alice = login(&cluster.nodes[1].api, "alice", alice_password).await;
    for (i, node) in cluster.nodes.iter().enumerate() {
        let api = &node.api;
        let key = format!("app/n{i}");
        let (status, body) = put(api, Some(&alice), &key, "ok").await;
        assert_eq!(status, 200, "node {}: {body}", node.id);
        let (status, body) = put(api, Some(&alice), "other/x", "after").await;
        assert_eq!(status, 403, "node {}: {body}", node.id);
        assert_eq!(body["code"], "permission_denied");
        let (status, _) = call(
            api,
            Some(&alice),
            "/v1/kv/range",
            json!({"key": "app/", "prefix": true}),
        )
        .await;
        assert_eq!(status, 200);
        let (status, _) = call(
            api,
            Some(&alice),
            "/v1/kv/range",
            json!({"key": "a", "range_end": "b"}),
        )
        .await;
        assert_eq!(status, 403, "a range wider than the grant");
        let (status, _) = call(
            api,
            Some(&alice),
            "/v1/kv/range",
            json!({"key": "/strata/auth/", "prefix": true}),
        )
        .await;
        assert_eq!(status, 403);
        // A transaction is checked on both branches, whatever its compares decide.
        let txn = json!({
            "compare": [{"key": "app/n0", "result": "equal", "target": {"version": 0}}],
            "success": [{"put": {"key": "app/t", "value": "1"}}],
            "failure": [{"put": {"key": "other/x", "value": "txn"}}],
        });
        let (status, _) = call(api, Some(&alice), "/v1/kv/txn", txn).await;
        assert_eq!(status, 403);
        let (status, _) = call(
            api,
            Some(&alice),
            "/v1/cluster/members",
            json!({"id": 9, "raft_addr": "127.0.0.1:1"}),
        )
        .await;
        assert_eq!(status, 403, "membership is root's");
    }

    // Denied requests changed nothing.
    let root = login(&n1, "root", root_password).await;
    // Revoking a lease deletes its keys: it needs write on every one of them, and listing
    // them needs read (etcd's rules); root's lease and key outlive alice's attempts.
    let (_, lease) = call(&n1, Some(&root), "/v1/lease/grant", json!({"ttl": 600})).await;
    let lease = lease["id"].as_i64().unwrap();
    let body = json!({"key": "other/leased", "value": "v", "lease": lease});
    assert_eq!(call(&n1, Some(&root), "/v1/kv/put", body).await.0, 200);
    let (status, _) = call(&n1, Some(&alice), "/v1/lease/revoke", json!({"id": lease})).await;
    assert_eq!(status, 403);
    let (status, _) = call(
        &n1,
        Some(&alice),
        "/v1/lease/timetolive",
        json!({"id": lease, "keys": true}),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call(
        &n1,
        Some(&alice),
        "/v1/lease/timetolive",
        json!({"id": lease}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        get(&n1, Some(&root), "other/leased").await.as_deref(),
        Some("v")
    );
    assert_eq!(
        get(&n1, Some(&root), "other/x").await.as_deref(),
        Some("before")
    );
    assert_eq!(get(&n1, Some(&root), "app/t").await, None);

    // A role token for a service: made by root, revoked by root, and dead on every node.
    let service = ok(
        &run(
            &[("STRATA_TOKEN", &root)],
            &[
                "auth",
                "token",
                "create",
                "--roles",
                "app",
                "--description",
                "billing",
            ],
            b"",
        ),
        "token create",
    );
    let service = service.trim().to_string();
    assert!(service.starts_with("strata_"), "{service}");
    for node in &cluster.nodes {
        let api = node.api.clone();
        let token = service.clone();
        wait_until(Duration::from_secs(10), "token known everywhere", || {
            let (api, token) = (api.clone(), token.clone());
            async move { (put(&api, Some(&token), "app/svc", "1").await.0 == 200).then_some(()) }
        })
        .await;
    }
    let list = ok(
        &run(
            &[("STRATA_TOKEN", &root)],
            &["--output", "json", "auth", "token", "list"],
            b"",
        ),
        "token list",
    );
    let list: Value = serde_json::from_str(&list).unwrap();
    let id = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["description"] == "billing")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        !list.to_string().contains(&service),
        "a listing never shows a token"
    );
    ok(
        &run(
            &[("STRATA_TOKEN", &root)],
            &["auth", "token", "revoke", &id],
            b"",
        ),
        "revoke",
    );
    for node in &cluster.nodes {
        let api = node.api.clone();
        let token = service.clone();
        wait_until(Duration::from_secs(10), "revoked everywhere", || {
            let (api, token) = (api.clone(), token.clone());
            async move { (put(&api, Some(&token), "app/svc", "2").await.0 == 401).then_some(()) }
        })
        .await;
    }

    // A user's own tokens last at most a day, and a password change revokes them.
    let own = |ttl: u64| {
        call(
            &n1,
            Some(&alice),
            "/v1/auth/tokens",
            json!({"ttl_seconds": ttl}),
        )
    };
    assert_eq!(own(48 * 3600).await.0, 403);
    let (status, made) = own(3600).await;
    assert_eq!(status, 200);
    let mine = made["token"].as_str().unwrap().to_string();
    assert_eq!(put(&n1, Some(&mine), "app/own", "1").await.0, 200);
    let body = json!({"password": alice_password});
    let (status, _) = call(&n1, Some(&root), "/v1/auth/users/alice/password", body).await;
    assert_eq!(status, 200);
    assert_eq!(put(&n1, Some(&mine), "app/own", "2").await.0, 401);
    assert_eq!(put(&n1, Some(&alice), "app/own", "3").await.0, 401);

    // Deleting a user kills its tokens.
    ok(
        &run(
            &[("STRATA_TOKEN", &root)],
            &["auth", "user", "delete", "alice"],
            b"",
        ),
        "delete alice",
    );
    let (status, _) = put(&n1, Some(&alice), "app/after-delete", "x").await;
    assert_eq!(status, 401);

    // The audit log has the denied write with who and from where, and the allowed ones.
    let audit_of = |i: usize| {
        std::fs::read_to_string(cluster.nodes[i].dir.join("data/audit/audit.log"))
            .unwrap_or_default()
    };
    let has_denied = wait_until(Duration::from_secs(5), "audit lines", || async {
        let lines: Vec<Value> = (0..3)
            .flat_map(|i| {
                audit_of(i)
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect::<Vec<Value>>()
            })
            .collect();
        let denied = lines.iter().any(|l| {
            l["user"] == "alice"
                && l["resource"] == "kv:other/x"
                && l["allowed"] == false
                && l["from"]
                    .as_str()
                    .is_some_and(|f| f.starts_with("127.0.0.1:"))
        });
        let allowed = lines
            .iter()
            .any(|l| l["user"] == "alice" && l["action"] == "put" && l["allowed"] == true);
        (denied && allowed).then_some(true)
    })
    .await;
    assert!(has_denied);

    // Access control off again, by root; then requests need no token.
    ok(
        &run(&[("STRATA_TOKEN", &root)], &["auth", "disable"], b""),
        "disable",
    );
    wait_until(Duration::from_secs(10), "auth off", || {
        let api = n1.clone();
        async move { (!auth_enabled(&api).await).then_some(()) }
    })
    .await;
    assert_eq!(put(&n1, None, "other/x", "open").await.0, 200);

    // No password or token in any log line, audit line or stored record listing.
    let mut texts: Vec<String> = (0..3).map(audit_of).collect();
    for node in &cluster.nodes {
        texts.push(node.logs());
    }
    for text in &texts {
        for secret in [
            root_password,
            alice_password,
            alice.as_str(),
            root.as_str(),
            service.as_str(),
        ] {
            assert!(!text.contains(secret), "a secret reached a log");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t02_server_bootstraps_root_from_a_file_and_starts_closed() {
    let root_dir = tempfile::tempdir().unwrap();
    let password_file = root_dir.path().join("root-password");
    std::fs::write(&password_file, "first-start-secret\n").unwrap();
    let file = password_file.to_str().unwrap();
    let mut node = NodeProc::start(
        1,
        root_dir.path(),
        Some("1=127.0.0.1:0"),
        &["--root-password-file", file],
    )
    .await;
    let api = node.api.clone();
    wait_until(Duration::from_secs(20), "access control on", || {
        let api = api.clone();
        async move { auth_enabled(&api).await.then_some(()) }
    })
    .await;
    // Closed from the first request: nothing passes before root is written.
    assert_eq!(put(&api, None, "k", "v").await.0, 401);
    let token = wait_until(Duration::from_secs(20), "root from the file", || {
        let api = api.clone();
        async move {
            let body = json!({"user": "root", "password": "first-start-secret"});
            let (status, reply) = call(&api, None, "/v1/auth/login", body).await;
            (status == 200).then(|| reply["token"].as_str().unwrap().to_string())
        }
    })
    .await;
    assert_eq!(put(&api, Some(&token), "k", "v").await.0, 200);

    // A wrong password is refused, and after a few failures even the right one waits.
    let mut throttled = false;
    for _ in 0..6 {
        let (status, body) = call(
            &api,
            None,
            "/v1/auth/login",
            json!({"user": "root", "password": "wrong"}),
        )
        .await;
        assert_eq!(status, 401, "{body}");
        throttled |= body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("too many failed logins");
    }
    assert!(throttled, "repeated failures are throttled");
    let (status, body) = call(
        &api,
        None,
        "/v1/auth/login",
        json!({"user": "root", "password": "first-start-secret"}),
    )
    .await;
    assert_eq!(status, 401, "still throttled: {body}");

    // A restart keeps it closed from the first request on, and the file no longer matters.
    std::fs::write(&password_file, "another-password\n").unwrap();
    node.kill9();
    node.restart().await;
    assert_eq!(put(&node.api, None, "k", "v2").await.0, 401);
    assert_eq!(
        get(&node.api, Some(&token), "k").await.as_deref(),
        Some("v")
    );
    let logs = node.logs();
    assert!(!logs.contains("first-start-secret") && !logs.contains(&token));
}

/// etcdctl 3.4's output for `args` against `endpoints`: (exit code, stdout, the `Error:` line).
fn etcdctl(endpoints: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let mut command = Command::new("etcdctl");
    command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(["--command-timeout=10s", "--dial-timeout=5s"])
        .args(args);
    let out = run_with_deadline(&mut command, b"", Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error = stderr
        .lines()
        .filter(|l| l.starts_with("Error:"))
        .collect::<Vec<_>>()
        .join("\n");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        error,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t03_etcdctl_users_roles_and_prefix_grants_behave_as_on_etcd() {
    let cluster = Cluster::start(3, GRPC_ON_ANY_PORT).await;
    let etcd = EtcdProc::start(cluster.root.path(), &[]).await;
    // Strata through a follower's gRPC listener: the records reach every node.
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.nodes.iter().find(|n| n.id != leader).unwrap();
    let sides = [
        ("etcd", etcd.client.clone()),
        ("strata", follower.grpc_addr().to_string()),
    ];
    let alice = "--user=alice:alice-secret";
    let root = "--user=root:root-secret";
    let steps: Vec<Vec<&str>> = vec![
        vec!["auth", "enable"],
        vec!["user", "add", "root:root-secret"],
        vec!["user", "grant-role", "root", "root"],
        vec!["role", "add", "app"],
        vec![
            "role",
            "grant-permission",
            "app",
            "--prefix=true",
            "readwrite",
            "app/",
        ],
        vec!["role", "grant-permission", "app", "read", "shared"],
        vec!["user", "add", "alice:alice-secret"],
        vec!["user", "grant-role", "alice", "app"],
        vec!["user", "add", "alice:again"],
        vec!["user", "grant-role", "alice", "nosuchrole"],
        vec!["put", "shared", "s"],
        vec!["auth", "enable"],
        vec!["put", "app/x", "anonymous"],
        vec![alice, "put", "app/x", "1"],
        vec![alice, "get", "app/x"],
        vec![alice, "get", "app/", "--prefix"],
        vec![alice, "get", "shared"],
        vec![alice, "put", "shared", "changed"],
        vec![alice, "put", "other", "1"],
        vec![alice, "get", "", "--prefix"],
        vec![alice, "del", "app/", "--prefix"],
        vec![alice, "user", "list"],
        vec!["--user=alice:wrong", "get", "app/x"],
        vec![root, "get", "shared"],
        vec![root, "user", "get", "alice"],
        vec![root, "role", "get", "app"],
        vec![root, "role", "revoke-permission", "app", "shared"],
        vec![alice, "get", "shared"],
        vec![root, "user", "revoke-role", "alice", "app"],
        vec![alice, "get", "app/x"],
        vec![root, "user", "delete", "root"],
        vec![root, "auth", "disable"],
        vec!["get", "shared"],
    ];
    let mut seen = Vec::new();
    for step in &steps {
        let mut outputs = Vec::new();
        for (name, endpoint) in &sides {
            let printed = etcdctl(endpoint, step);
            outputs.push((name, printed));
        }
        let (_, etcd_out) = &outputs[0];
        let (_, strata_out) = &outputs[1];
        assert_eq!(
            etcd_out, strata_out,
            "etcdctl {step:?}: etcd and Strata differ (left etcd, right Strata)"
        );
        seen.push((step.join(" "), strata_out.clone()));
    }
    let said = |step: &str| {
        seen.iter()
            .rfind(|(s, _)| s == step)
            .map(|(_, out)| out.clone())
            .unwrap()
    };
    // Spot checks, so that both failing alike cannot pass.
    let denied = "Error: etcdserver: permission denied";
    assert_eq!(seen[0].1 .2, "Error: etcdserver: root user does not exist");
    assert_eq!(said("auth enable").1, "Authentication Enabled\n");
    assert_eq!(
        said("put app/x anonymous").2,
        "Error: etcdserver: user name is empty"
    );
    assert_eq!(said(&format!("{alice} put app/x 1")).1, "OK\n");
    assert_eq!(
        said(&format!("{alice} get shared")).2,
        denied,
        "after the grant was revoked"
    );
    assert_eq!(said(&format!("{alice} put shared changed")).2, denied);
    assert_eq!(said(&format!("{alice} put other 1")).2, denied);
    assert_eq!(said(&format!("{alice} get  --prefix")).2, denied);
    assert_eq!(said(&format!("{alice} user list")).2, denied);
    assert_eq!(
        said(&format!("{alice} get app/x")).2,
        denied,
        "the last read, after the role was revoked"
    );
    assert!(said("--user=alice:wrong get app/x")
        .2
        .contains("authentication failed"));
    assert_eq!(
        said("get shared").1,
        "shared\ns\n",
        "denied writes changed nothing"
    );
}

fn python(script: &str, args: &[&str]) -> String {
    let path = format!("{}/tests/py/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut command = Command::new("python3");
    command
        .arg(&path)
        .args(args)
        .env_remove("CONSUL_HTTP_TOKEN");
    let out = run_with_deadline(&mut command, b"", Duration::from_secs(90));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.contains("all steps passed"),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t04_consul_tokens_and_nacos_logins_in_their_clients_dialects() {
    let extra = [REGISTRY_ON_ANY_PORT, NACOS_ON_ANY_PORT].concat();
    let cluster = Cluster::start(3, &extra).await;
    let home = tempfile::tempdir().unwrap();
    let eps = cluster.endpoints();
    let run = |env: &[(&str, &str)], args: &[&str]| strata(home.path(), &eps, env, args, b"");
    let root_password = "consul-nacos-root";
    let alice_password = "nacos-alice-pw";
    ok(
        &run(
            &[("STRATA_PASSWORD", root_password)],
            &["auth", "user", "add", "root"],
        ),
        "root",
    );
    ok(
        &run(&[], &["auth", "user", "grant", "root", "root"]),
        "grant root",
    );
    ok(&run(&[], &["auth", "role", "add", "app-config"]), "role");
    ok(
        &run(
            &[],
            &[
                "auth",
                "role",
                "grant",
                "app-config",
                "--kind",
                "config",
                "public/DEFAULT_GROUP/",
                "--prefix",
                "--access",
                "read",
            ],
        ),
        "grant config",
    );
    ok(
        &run(
            &[("STRATA_PASSWORD", alice_password)],
            &["auth", "user", "add", "alice"],
        ),
        "alice",
    );
    ok(
        &run(&[], &["auth", "user", "grant", "alice", "app-config"]),
        "grant alice",
    );
    let publish = |data_id: &str, group: &str, content: &str| {
        let mut command = Command::new(strata_bin());
        command
            .env("XDG_CONFIG_HOME", home.path())
            .arg("--endpoints")
            .arg(eps.join(","))
            .args([
                "config", "publish", data_id, "--group", group, "--file", "-",
            ]);
        let out = run_with_deadline(&mut command, content.as_bytes(), Duration::from_secs(30));
        ok(&out, "publish");
    };
    publish("app.yaml", "DEFAULT_GROUP", "greeting: hello\n");
    publish("secret.yaml", "OPS_GROUP", "password: hunter2\n");
    ok(&run(&[], &["auth", "enable"]), "enable");
    let n2 = cluster.nodes[1].api.clone();
    wait_until(Duration::from_secs(10), "auth on", || {
        let api = n2.clone();
        async move { auth_enabled(&api).await.then_some(()) }
    })
    .await;
    for node in &cluster.nodes {
        let api = node.api.clone();
        wait_until(Duration::from_secs(10), "auth on everywhere", || {
            let api = api.clone();
            async move { auth_enabled(&api).await.then_some(()) }
        })
        .await;
    }
    let root = login(&n2, "root", root_password).await;

    // py-consul with a token limited to one service, through a follower's Consul listener.
    let consul = cluster.nodes[2].consul.clone().unwrap();
    let said = python("consul_auth.py", &[&consul, &root]);
    assert!(said.contains("limited token registers db: 403"), "{said}");
    // The refused registration changed nothing.
    let http = http_client();
    let db: Value = http
        .get(format!("http://{n2}/v1/registry/services/db"))
        .bearer_auth(&root)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = db["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["db-9"], "only root's db instance exists");

    // nacos-sdk-python logs in and reads what alice's role allows.
    let nacos = cluster.nodes[0].nacos.clone().unwrap();
    python("nacos_auth.py", &[&nacos, "alice", alice_password]);
    // Repeated wrong passwords are throttled, by user and by address.
    let mut throttled = false;
    for _ in 0..6 {
        let response = http
            .post(format!(
                "http://{nacos}/nacos/v1/auth/login?username=alice&password=bad"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 403);
        throttled |= response
            .text()
            .await
            .unwrap()
            .contains("too many failed logins");
    }
    assert!(throttled, "failed Nacos logins are throttled");
    // Nacos's answers to a missing and a bad token.
    let anon = http
        .get(format!(
            "http://{nacos}/nacos/v1/cs/configs?dataId=app.yaml&group=DEFAULT_GROUP"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status().as_u16(), 403);
    assert_eq!(anon.text().await.unwrap(), "user not found!");
    let bad = http
        .get(format!("http://{nacos}/nacos/v1/cs/configs?dataId=app.yaml&group=DEFAULT_GROUP&accessToken=strata_{}", "0".repeat(64)))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.text().await.unwrap(), "token invalid!");

    // Refusals from both dialects are in the audit logs.
    let audit: String = cluster
        .nodes
        .iter()
        .map(|n| std::fs::read_to_string(n.dir.join("data/audit/audit.log")).unwrap_or_default())
        .collect();
    let lines: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.iter().any(|l| l["api"] == "consul"
        && l["allowed"] == false
        && l["resource"] == "registry:public/db"));
    assert!(lines.iter().any(|l| l["api"] == "nacos"
        && l["allowed"] == false
        && l["resource"] == "config:public/OPS_GROUP/secret.yaml"));
    assert!(lines
        .iter()
        .any(|l| l["api"] == "nacos" && l["action"] == "login" && l["allowed"] == false));
    for node in &cluster.nodes {
        let logs = node.logs();
        for secret in [root_password, alice_password, root.as_str()] {
            assert!(!logs.contains(secret), "a secret reached a log");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t05_a_token_made_through_one_node_works_at_once_on_one_that_missed_it() {
    let cluster = Cluster::start(3, &[]).await;
    let home = tempfile::tempdir().unwrap();
    let eps = cluster.endpoints();
    let run = |env: &[(&str, &str)], args: &[&str]| strata(home.path(), &eps, env, args, b"");
    ok(
        &run(
            &[("STRATA_PASSWORD", "lagging-root")],
            &["auth", "user", "add", "root"],
        ),
        "root",
    );
    ok(
        &run(&[], &["auth", "user", "grant", "root", "root"]),
        "grant",
    );
    ok(&run(&[], &["auth", "enable"]), "enable");
    let leader = cluster.wait_for_leader().await;
    let lagging = cluster.nodes.iter().find(|n| n.id != leader).unwrap();
    let lagging_api = lagging.api.clone();
    wait_until(Duration::from_secs(10), "auth on at the follower", || {
        let api = lagging_api.clone();
        async move { auth_enabled(&api).await.then_some(()) }
    })
    .await;
    // The follower misses the token's write, then rejoins: the first request that carries the
    // token goes to it at once, and it catches up before answering instead of refusing.
    cluster.isolate(lagging.id).await;
    let leader_api = cluster.nodes[(leader - 1) as usize].api.clone();
    let token = login(&leader_api, "root", "lagging-root").await;
    cluster.heal().await;
    let (status, body) = put(&lagging_api, Some(&token), "fresh", "v").await;
    assert_eq!(status, 200, "{body}");
}

/// One call to an etcd JSON gateway: the HTTP status and the body as JSON.
async fn gateway(addr: &str, token: Option<&str>, path: &str, body: Value) -> (u16, Value) {
    let mut request = http_client()
        .post(format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(10))
        .json(&body);
    if let Some(token) = token {
        request = request.header("authorization", token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not JSON: {text}"));
    (status, json)
}

/// What of a gateway answer both systems must agree on: everything but the response header
/// and the revisions (Strata keeps its auth records in the same store, so its revisions move
/// where etcd's do not).
fn comparable(mut body: Value) -> Value {
    fn strip(value: &mut Value) {
        match value {
            Value::Object(object) => {
                for field in ["header", "create_revision", "mod_revision"] {
                    object.remove(field);
                }
                object.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut body);
    body
}

fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t06_the_json_gateway_speaks_and_enforces_as_etcds_does() {
    let cluster = Cluster::start(1, GRPC_ON_ANY_PORT).await;
    let etcd = EtcdProc::start(cluster.root.path(), &[]).await;
    let sides = [
        etcd.client.clone(),
        cluster.nodes[0].grpc_addr().to_string(),
    ];
    // Set up alike through each gateway: root, a role over app/, alice with it, auth on.
    let mut tokens = Vec::new();
    for addr in &sides {
        let before = json!({"key": b64("other"), "value": b64("before")});
        let root = gateway_setup(addr, "READWRITE", &[("/v3/kv/put", before)]).await;
        let login = json!({"name": "alice", "password": "alice-secret"});
        let (status, reply) = gateway(addr, None, "/v3/auth/authenticate", login).await;
        assert_eq!(status, 200, "{reply}");
        tokens.push((reply["token"].as_str().unwrap().to_string(), root));
    }
    // The same requests through both: alice inside and outside her prefix, nobody, a bad
    // token, a bad body; the answers agree (status and body, but for headers and revisions).
    let calls: Vec<(&str, Option<usize>, Value)> = vec![
        (
            "/v3/kv/put",
            Some(0),
            json!({"key": b64("app/x"), "value": b64("1")}),
        ),
        ("/v3/kv/range", Some(0), json!({"key": b64("app/x")})),
        (
            "/v3/kv/range",
            Some(0),
            json!({"key": b64("app/"), "range_end": b64("app0"), "keys_only": true}),
        ),
        (
            "/v3/kv/put",
            Some(0),
            json!({"key": b64("other"), "value": b64("changed")}),
        ),
        ("/v3/kv/range", Some(0), json!({"key": b64("other")})),
        ("/v3/kv/deleterange", Some(0), json!({"key": b64("other")})),
        (
            "/v3/kv/put",
            None,
            json!({"key": b64("app/y"), "value": b64("1")}),
        ),
        ("/v3/kv/range", Some(2), json!({"key": b64("app/x")})),
        (
            "/v3/kv/txn",
            Some(0),
            json!({"compare": [{"key": b64("app/x"), "target": "VALUE", "result": "EQUAL", "value": b64("1")}],
                   "success": [{"request_put": {"key": b64("app/x"), "value": b64("2")}}]}),
        ),
        ("/v3/kv/range", Some(1), json!({"key": b64("other")})),
        ("/v3/auth/user/list", Some(0), json!({})),
    ];
    for (path, who, body) in &calls {
        let mut answers = Vec::new();
        for (side, addr) in sides.iter().enumerate() {
            let token = who.map(|w| match w {
                0 => tokens[side].0.clone(),
                1 => tokens[side].1.clone(),
                _ => "not-a-token".to_string(),
            });
            let (status, reply) = gateway(addr, token.as_deref(), path, body.clone()).await;
            answers.push((status, comparable(reply)));
        }
        assert_eq!(
            answers[0], answers[1],
            "{path} as {who:?}: etcd (left) and Strata (right) differ"
        );
    }
    // Spot checks, so that both failing alike cannot pass; the refused writes changed nothing.
    let strata = &sides[1];
    let (alice, root) = &tokens[1];
    let (status, reply) = gateway(
        strata,
        Some(alice),
        "/v3/kv/put",
        json!({"key": b64("other"), "value": b64("x")}),
    )
    .await;
    assert_eq!(status, 403, "{reply}");
    assert_eq!(reply["error"], "etcdserver: permission denied");
    assert_eq!(reply["code"], 7);
    let (status, reply) = gateway(
        strata,
        Some(root),
        "/v3/kv/range",
        json!({"key": b64("other")}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(reply["kvs"][0]["value"], b64("before"), "{reply}");
    assert_eq!(reply["count"], "1", "64-bit integers are strings: {reply}");
    let (_, reply) = gateway(
        strata,
        Some(root),
        "/v3/kv/range",
        json!({"key": b64("app/x")}),
    )
    .await;
    assert_eq!(reply["kvs"][0]["value"], b64("2"), "{reply}");
    let (status, _) = gateway(strata, None, "/v3/kv/range", json!({"key": b64("app/x")})).await;
    assert_ne!(status, 200);
    let audit = std::fs::read_to_string(cluster.nodes[0].dir.join("data/audit/audit.log")).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"allowed\":false") && l.contains("other")),
        "the refused gateway write is audited"
    );
}

/// Through the etcd JSON gateway at `grpc`: root, a role with `perm_type` on `app/`, alice
/// with it, the calls in `before_enable`, then access control on. Returns root's token.
async fn gateway_setup(grpc: &str, perm_type: &str, before_enable: &[(&str, Value)]) -> String {
    let perm = json!({"permType": perm_type, "key": b64("app/"), "range_end": b64("app0")});
    let mut setup = vec![
        (
            "/v3/auth/user/add",
            json!({"name": "root", "password": "root-secret"}),
        ),
        (
            "/v3/auth/user/grant",
            json!({"user": "root", "role": "root"}),
        ),
        ("/v3/auth/role/add", json!({"name": "app"})),
        ("/v3/auth/role/grant", json!({"name": "app", "perm": perm})),
        (
            "/v3/auth/user/add",
            json!({"name": "alice", "password": "alice-secret"}),
        ),
        (
            "/v3/auth/user/grant",
            json!({"user": "alice", "role": "app"}),
        ),
    ];
    setup.extend(before_enable.iter().cloned());
    setup.push(("/v3/auth/enable", json!({})));
    for (path, body) in setup {
        let (status, reply) = gateway(grpc, None, path, body).await;
        assert_eq!(status, 200, "{grpc}{path}: {reply}");
    }
    let root = json!({"name": "root", "password": "root-secret"});
    let (_, reply) = gateway(grpc, None, "/v3/auth/authenticate", root).await;
    reply["token"].as_str().unwrap().to_string()
}

/// [`gateway_setup`] with a role reading `app/`.
async fn alice_reads_app_over_gateway(grpc: &str) -> String {
    gateway_setup(grpc, "READ", &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t07_a_watch_stream_loses_what_its_user_loses() {
    let cluster = Cluster::start(1, GRPC_ON_ANY_PORT).await;
    let grpc = cluster.nodes[0].grpc_addr().to_string();
    let root = alice_reads_app_over_gateway(&grpc).await;

    // alice watches her prefix through etcdctl and sees a change.
    let out = cluster.root.path().join("watch.out");
    let mut watcher = KillOnDrop(
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={grpc}"))
            .args(["--user=alice:alice-secret", "watch", "app/", "--prefix"])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(cluster.root.path().join("watch.err")).unwrap())
            .spawn()
            .unwrap(),
    );
    let put = json!({"key": b64("app/x"), "value": b64("seen")});
    wait_until(
        Duration::from_secs(20),
        "alice's watch to see a put",
        || {
            let (grpc, root, put, out) = (grpc.clone(), root.clone(), put.clone(), out.clone());
            async move {
                gateway(&grpc, Some(&root), "/v3/kv/put", put).await;
                std::fs::read_to_string(&out)
                    .ok()?
                    .contains("seen")
                    .then_some(())
            }
        },
    )
    .await;

    // alice also observes an election under her prefix, which root campaigns in.
    let _campaign = KillOnDrop(
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={grpc}"))
            .args(["--user=root:root-secret", "elect", "app/e", "p1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let observed_out = cluster.root.path().join("observe.out");
    let mut observer = KillOnDrop(
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={grpc}"))
            .args(["--user=alice:alice-secret", "elect", "--listen", "app/e"])
            .stdout(std::fs::File::create(&observed_out).unwrap())
            .stderr(std::fs::File::create(cluster.root.path().join("observe.err")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_until(
        Duration::from_secs(20),
        "alice to observe root's leadership",
        || {
            let seen = std::fs::read_to_string(&observed_out).unwrap_or_default();
            async move { seen.contains("p1").then_some(()) }
        },
    )
    .await;

    // And through the Observe RPC, with a raw client.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let login = strata_etcd::pb::etcdserverpb::AuthenticateRequest {
        name: "alice".into(),
        password: "alice-secret".into(),
    };
    let token = strata_etcd::pb::etcdserverpb::auth_client::AuthClient::new(channel.clone())
        .authenticate(login)
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut request = tonic::Request::new(strata_etcd::pb::v3electionpb::LeaderRequest {
        name: b"app/e".to_vec(),
    });
    request
        .metadata_mut()
        .insert("token", token.parse().unwrap());
    let mut observe = strata_etcd::pb::v3electionpb::election_client::ElectionClient::new(channel)
        .observe(request)
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(20), observe.message())
        .await
        .unwrap()
        .unwrap();
    assert!(
        first.is_some(),
        "the Observe stream shows root's leadership"
    );

    // Root takes the role away: the open stream's watch is canceled, etcdctl says why and exits.
    let revoke = json!({"name": "alice", "role": "app"});
    let (status, reply) = gateway(&grpc, Some(&root), "/v3/auth/user/revoke", revoke).await;
    assert_eq!(status, 200, "{reply}");
    let exited = wait_until(Duration::from_secs(20), "the watch to be canceled", || {
        let status = watcher.0.try_wait().unwrap();
        async move { status }
    })
    .await;
    let said = std::fs::read_to_string(cluster.root.path().join("watch.err")).unwrap();
    assert!(!exited.success());
    // etcdctl 3.4 prints no reason; the audit log has the refusal.
    assert!(said.contains("watch is canceled by the server"), "{said}");
    // The audit line is written as the watch ends, not necessarily before etcdctl exits.
    let audit_path = cluster.nodes[0].dir.join("data/audit/audit.log");
    wait_until(
        Duration::from_secs(10),
        "the refused watch in the audit log",
        || {
            let audit = std::fs::read_to_string(&audit_path).unwrap_or_default();
            let found = audit.lines().any(|l| {
                l.contains("\"user\":\"alice\"")
                    && l.contains("\"action\":\"watch\"")
                    && l.contains("\"allowed\":false")
            });
            async move { found.then_some(()) }
        },
    )
    .await;
    // The election observer ends too.
    let observed = wait_until(Duration::from_secs(20), "the observer to end", || {
        let status = observer.0.try_wait().unwrap();
        async move { status }
    })
    .await;
    assert!(!observed.success());
    let said = std::fs::read_to_string(cluster.root.path().join("observe.err")).unwrap();
    // etcdctl 3.4 observes with a get and a watch of its own and prints no reason.
    assert!(said.contains("observer lost"), "{said}");
    // The Observe RPC itself ends with the permission error.
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match observe.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the Observe stream goes on after the revocation");
    let status = ended.expect_err("the Observe stream ends with an error");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    // Nothing written after the revocation reached alice.
    let later = json!({"key": b64("app/y"), "value": b64("unseen")});
    gateway(&grpc, Some(&root), "/v3/kv/put", later).await;
    assert!(!std::fs::read_to_string(&out).unwrap().contains("unseen"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t08_a_native_event_stream_ends_when_its_user_loses_the_right() {
    let cluster = Cluster::start(1, GRPC_ON_ANY_PORT).await;
    let grpc = cluster.nodes[0].grpc_addr().to_string();
    let api = cluster.nodes[0].api.clone();
    let root = alice_reads_app_over_gateway(&grpc).await;
    let alice = login(&api, "alice", "alice-secret").await;

    // alice's native watch on her prefix delivers a change.
    let mut watch = http_client()
        .post(format!("http://{api}/v1/kv/watch"))
        .bearer_auth(&alice)
        .json(&json!({"key": "app/", "prefix": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(watch.status(), 200);
    let mut seen = String::new();
    assert_eq!(put(&api, Some(&root), "app/x", "seen").await.0, 200);
    assert!(read_until(&mut watch, &mut seen, "app/x").await, "{seen}");

    // Root revokes her role: the stream says why and ends.
    let (status, reply) = call_delete(&api, &root, "/v1/auth/users/alice/roles/app").await;
    assert_eq!(status, 200, "{reply}");
    read_until(&mut watch, &mut seen, "event: error").await;
    assert!(seen.contains("permission_denied"), "{seen}");
    let ended = tokio::time::timeout(Duration::from_secs(10), watch.chunk()).await;
    assert!(
        matches!(ended, Ok(Ok(None))),
        "the stream goes on after the refusal: {ended:?}"
    );
}

/// Reads an event stream into `seen` until it holds `needle` (true) or ends (false); panics
/// after 20 s.
async fn read_until(watch: &mut reqwest::Response, seen: &mut String, needle: &str) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !seen.contains(needle) {
        let chunk = tokio::time::timeout_at(deadline, watch.chunk())
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} in the stream: {seen}"))
            .unwrap();
        match chunk {
            Some(bytes) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            None => return false,
        }
    }
    true
}

async fn call_delete(api: &str, token: &str, path: &str) -> (u16, Value) {
    let response = http_client()
        .delete(format!("http://{api}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}
