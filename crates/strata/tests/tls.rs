//! TLS on real processes: `strata cert` makes a CA and certificates, a node serves its client
//! listeners over TLS only, a client certificate logs in as the user it names (curl and
//! etcdctl), a certificate rotated on disk is served without a restart, and `strata server`
//! refuses plain TCP beyond loopback unless told `--insecure`.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn run_ok(command: &mut Command, what: &str) -> String {
    let out = run_with_deadline(command, b"", Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cert(dir: &Path, args: &[&str]) {
    run_ok(
        Command::new(strata_bin())
            .arg("cert")
            .args(args)
            .arg("--dir")
            .arg(dir),
        &format!("strata cert {args:?}"),
    );
}

/// curl over TLS trusting the test CA, optionally with a client certificate.
fn curl(dir: &Path, client: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut command = Command::new("curl");
    command
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(dir.join("ca.pem"));
    if let Some(name) = client {
        command
            .arg("--cert")
            .arg(dir.join(format!("{name}.pem")))
            .arg("--key")
            .arg(dir.join(format!("{name}-key.pem")));
    }
    run_with_deadline(command.args(args), b"", Duration::from_secs(30))
}

/// A JSON POST over TLS with curl: as `client`'s certificate and/or with `header`.
fn post(dir: &Path, client: Option<&str>, header: Option<&str>, url: &str, body: &str) -> String {
    let mut args = vec![
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-d",
        body,
    ];
    if let Some(header) = header {
        args.extend(["-H", header]);
    }
    args.push(url);
    let out = curl(dir, client, &args);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn etcdctl(dir: &Path, grpc: &str, client: &str, args: &[&str]) -> std::process::Output {
    let mut command = Command::new("etcdctl");
    command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=https://{grpc}"))
        .arg(format!("--cacert={}", dir.join("ca.pem").display()))
        .arg(format!(
            "--cert={}",
            dir.join(format!("{client}.pem")).display()
        ))
        .arg(format!(
            "--key={}",
            dir.join(format!("{client}-key.pem")).display()
        ))
        .args(["--dial-timeout=5s", "--command-timeout=10s"])
        .args(args);
    run_with_deadline(&mut command, b"", Duration::from_secs(30))
}

/// The certificate a TLS listener presents now.
async fn served_certificate(dir: &Path, addr: &str) -> Vec<u8> {
    let config =
        strata_tls::client_config(Some(&dir.join("ca.pem")), None, &[b"h2".as_slice()]).unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let stream = connector.connect(name, tcp).await.unwrap();
    stream.get_ref().1.peer_certificates().unwrap()[0]
        .as_ref()
        .to_vec()
}

fn pem_der(path: &Path) -> Vec<u8> {
    strata_tls::read_certs(path).unwrap()[0].as_ref().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t01_tls_listeners_client_certificates_and_rotation_without_restart() {
    let root = tempfile::tempdir().unwrap();
    let ca = root.path().join("ca");
    cert(&ca, &["init"]);
    cert(&ca, &["issue", "node1", "--host", "127.0.0.1,localhost"]);
    cert(&ca, &["issue", "alice"]);
    cert(&ca, &["issue", "mallory"]);
    let password = root.path().join("root-password");
    std::fs::write(&password, "tls-root-secret\n").unwrap();
    let file = |name: &str| ca.join(name).to_str().unwrap().to_string();
    let node = NodeProc::start(
        1,
        root.path(),
        Some("1=127.0.0.1:0"),
        &[
            "--grpc-addr",
            "127.0.0.1:0",
            "--tls-cert",
            &file("node1.pem"),
            "--tls-key",
            &file("node1-key.pem"),
            "--tls-ca",
            &file("ca.pem"),
            "--root-password-file",
            password.to_str().unwrap(),
        ],
    )
    .await;
    let api = node.api.clone();
    let https = |path: &str| {
        format!(
            "https://127.0.0.1:{}{path}",
            api.rsplit_once(':').unwrap().1
        )
    };
    // Served over TLS only, once access control is on (root from the password file).
    wait_until(
        Duration::from_secs(20),
        "access control on over TLS",
        || {
            let out = curl(&ca, None, &[&https("/v1/auth/status")]);
            async move {
                String::from_utf8_lossy(&out.stdout)
                    .contains("\"enabled\":true")
                    .then_some(())
            }
        },
    )
    .await;
    let plain = run_with_deadline(
        Command::new("curl").args(["-sS", "--max-time", "5", &format!("http://{api}/livez")]),
        b"",
        Duration::from_secs(20),
    );
    assert!(!plain.status.success() || !String::from_utf8_lossy(&plain.stdout).contains("ok"));

    // Root grants alice a prefix; her certificate is her credential, through curl and etcdctl.
    // (The node is closed from its first request; root is written once it leads.)
    let token = wait_until(Duration::from_secs(20), "a root login over TLS", || {
        let body = r#"{"user":"root","password":"tls-root-secret"}"#;
        let reply = post(&ca, None, None, &https("/v1/auth/login"), body);
        async move {
            let reply: serde_json::Value = serde_json::from_str(&reply).ok()?;
            reply["token"].as_str().map(str::to_string)
        }
    })
    .await;
    let bearer = format!("authorization: Bearer {token}");
    let as_root = |path: &str, body: &str| {
        let reply = post(&ca, None, Some(&bearer), &https(path), body);
        assert!(!reply.contains("\"code\""), "{path}: {reply}");
    };
    as_root("/v1/auth/roles", r#"{"name":"app"}"#);
    as_root(
        "/v1/auth/roles/app/grant",
        r#"{"kind":"kv","key":"app/","prefix":true}"#,
    );
    as_root("/v1/auth/users", r#"{"name":"alice"}"#);
    as_root("/v1/auth/users/alice/roles", r#"{"role":"app"}"#);
    let put = |client: &str, key: &str| {
        let body = format!(r#"{{"key":"{key}","value":"v"}}"#);
        post(&ca, Some(client), None, &https("/v1/kv/put"), &body)
    };
    assert!(
        put("alice", "app/x").contains("\"revision\""),
        "alice writes her prefix"
    );
    assert!(put("alice", "other").contains("permission_denied"));
    assert!(
        put("mallory", "app/y").contains("unauthenticated"),
        "a certificate of no user"
    );

    let grpc = node.grpc_addr().to_string();
    let out = etcdctl(&ca, &grpc, "alice", &["put", "app/e", "1"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "OK\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = etcdctl(&ca, &grpc, "alice", &["put", "other", "1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied"));

    // Rotate the node's certificate on disk: new connections get the new one, no restart.
    let api_addr = format!("127.0.0.1:{}", api.rsplit_once(':').unwrap().1);
    assert_eq!(
        served_certificate(&ca, &api_addr).await,
        pem_der(&ca.join("node1.pem"))
    );
    let next = root.path().join("next");
    std::fs::create_dir_all(&next).unwrap();
    run_ok(
        Command::new(strata_bin())
            .args(["cert", "issue", "node1", "--host", "127.0.0.1", "--dir"])
            .arg(&ca)
            .arg("--out")
            .arg(&next),
        "issue the next certificate",
    );
    // Key first, then certificate, each replaced atomically.
    std::fs::copy(next.join("node1-key.pem"), ca.join("node1-key.pem.tmp")).unwrap();
    std::fs::rename(ca.join("node1-key.pem.tmp"), ca.join("node1-key.pem")).unwrap();
    std::fs::copy(next.join("node1.pem"), ca.join("node1.pem.tmp")).unwrap();
    std::fs::rename(ca.join("node1.pem.tmp"), ca.join("node1.pem")).unwrap();
    let rotated = pem_der(&next.join("node1.pem"));
    for addr in [api_addr.as_str(), grpc.as_str()] {
        wait_until(
            Duration::from_secs(15),
            "the rotated certificate served",
            || {
                let (ca, rotated) = (ca.clone(), rotated.clone());
                let addr = addr.to_string();
                async move { (served_certificate(&ca, &addr).await == rotated).then_some(()) }
            },
        )
        .await;
    }
    assert!(put("alice", "app/after-rotation").contains("\"revision\""));
    let logs = node.logs();
    assert!(logs.contains("TLS certificate reloaded"));
    assert!(!logs.contains("tls-root-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t02_server_refuses_plain_tcp_beyond_loopback_unless_insecure() {
    let root = tempfile::tempdir().unwrap();
    let mut command = Command::new(strata_bin());
    command
        .args([
            "server",
            "--id",
            "1",
            "--api-addr",
            "0.0.0.0:0",
            "--raft-addr",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(root.path().join("data"));
    let out = run_with_deadline(&mut command, b"", Duration::from_secs(20));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not loopback") && stderr.contains("--insecure") && stderr.contains("api"),
        "{stderr}"
    );
    // With --insecure it starts (and is stopped by the test).
    let dir = root.path().join("insecure");
    std::fs::create_dir_all(&dir).unwrap();
    let addrs = dir.join("addrs.json");
    let mut child = KillOnDrop(
        Command::new(strata_bin())
            .args([
                "server",
                "--id",
                "1",
                "--insecure",
                "--initial-cluster",
                "1=127.0.0.1:0",
            ])
            .args(["--api-addr", "0.0.0.0:0", "--raft-addr", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--addrs-file")
            .arg(&addrs)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until(
        Duration::from_secs(20),
        "the insecure server to listen",
        || {
            let addrs = addrs.clone();
            async move { std::fs::metadata(&addrs).ok().map(|_| ()) }
        },
    )
    .await;
    assert!(child.0.try_wait().unwrap().is_none());
}
