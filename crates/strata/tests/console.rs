//! The web console (`/ui`) in a real headless Chromium against a real 3-node cluster: one test
//! per page, each running the page's check `tests/py/console/NAME.py` through
//! `tests/py/console/run.py` (Selenium and the system's chromedriver; scripts/test.sh installs
//! Debian's `chromium` and `chromium-driver` and Python's `selenium`). Every check saves
//! screenshots for a person to look at, in `$STRATA_CONSOLE_SCREENS` or else
//! `target/console-screens/`; docs/console.md shows copies of them.
//!
//! `t00_assets` checks how the files are served, with plain HTTP.

#![allow(clippy::unwrap_used)]

mod common;

use common::{http_client, root_token, run_with_deadline, Cluster, NodeProc};
use reqwest::header;
use serde_json::{json, Value};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Every node's config in these tests: the monitor scrapes each second, so the pages' health
/// and lag columns fill in quickly.
const NODE_CONFIG: &str = "[monitor]\nscrape_interval = \"1s\"\nscrape_timeout = \"1s\"\n";

/// Longest one page check may take, browser start included.
const CHECK_DEADLINE: Duration = Duration::from_secs(240);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Where the screenshots go: `$STRATA_CONSOLE_SCREENS`, else `target/console-screens/`.
fn screens_dir() -> PathBuf {
    match std::env::var_os("STRATA_CONSOLE_SCREENS") {
        Some(dir) => PathBuf::from(dir),
        None => repo_root().join("target/console-screens"),
    }
}

/// Runs the browser check of page `name` (`tests/py/console/NAME.py`) against `cluster`,
/// handing it `extra` as `ctx.extra`; fails the test with the check's output unless it
/// passes.
async fn run_page(name: &str, cluster: &Cluster, extra: Value) {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/console");
    let check = folder.join(format!("{name}.py"));
    assert!(
        check.exists(),
        "the console page {name:?} has no browser check yet: write {} (a `check(ctx)` \
         function; see cluster.py and common.py in the same folder)",
        check.display()
    );
    let screens = screens_dir();
    std::fs::create_dir_all(&screens).unwrap();
    println!("screenshots of the {name} page: {}", screens.display());
    let mut command = Command::new("python3");
    command
        .arg(folder.join("run.py"))
        .args(["--page", name])
        .args(["--urls", &cluster.endpoints().join(",")])
        .arg("--screens")
        .arg(&screens)
        .args(["--extra", &extra.to_string()]);
    if let Some(token) = root_token() {
        command.env("STRATA_TOKEN", token);
    }
    let output =
        tokio::task::spawn_blocking(move || run_with_deadline(&mut command, b"", CHECK_DEADLINE))
            .await
            .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the {name} page's browser check failed ({}; needs python3 with selenium, Debian's \
         chromium and chromium-driver: scripts/test.sh installs them):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains(&format!("ok {name}")), "{stdout}\n{stderr}");
}

/// A 3-node cluster with [`NODE_CONFIG`] and `extra` arguments.
async fn cluster(extra: &[&str]) -> Cluster {
    Cluster::start_with_config(3, NODE_CONFIG, extra).await
}

/// Every file under `crates/strata-console/assets/`, as a path relative to it.
fn asset_files() -> Vec<String> {
    let root = repo_root().join("crates/strata-console/assets");
    let mut files = Vec::new();
    let mut folders = vec![root.clone()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else {
                let relative = path.strip_prefix(&root).unwrap();
                files.push(relative.to_str().unwrap().to_string());
            }
        }
    }
    files.sort();
    files
}

fn get(url: &str) -> reqwest::RequestBuilder {
    // Redirects are what is tested, so they are not followed.
    strata_tls::http_client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(url)
        .timeout(Duration::from_secs(10))
}

#[tokio::test]
async fn t00_assets() {
    let root = tempfile::tempdir().unwrap();
    let node = NodeProc::start(1, root.path(), Some("1=127.0.0.1:0"), &[]).await;
    let base = node.url();

    let redirect = get(&format!("{base}/ui")).send().await.unwrap();
    assert!(redirect.status().is_redirection(), "{redirect:?}");
    assert_eq!(redirect.headers()[header::LOCATION], "/ui/");

    let index = get(&format!("{base}/ui/")).send().await.unwrap();
    assert_eq!(index.status(), 200);
    let headers = index.headers().clone();
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html"),
        "{headers:?}"
    );
    assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
    assert!(headers.contains_key(header::CONTENT_SECURITY_POLICY));
    assert!(!headers.contains_key(header::CONTENT_ENCODING));
    let etag = headers
        .get(header::ETAG)
        .expect("the index has an ETag")
        .clone();
    let html = index.text().await.unwrap();
    assert!(
        html.contains("<title>Strata console</title>") && html.contains("app.js"),
        "{html}"
    );

    // Revalidation: the same tag gets 304 and no body; another tag gets the file.
    let unchanged = get(&format!("{base}/ui/"))
        .header(header::IF_NONE_MATCH, etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(unchanged.status(), 304);
    assert_eq!(unchanged.headers()[header::ETAG], etag);
    assert!(unchanged.bytes().await.unwrap().is_empty());
    let changed = get(&format!("{base}/ui/"))
        .header(header::IF_NONE_MATCH, "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);

    // Compressed for a client that takes gzip, and the same file once inflated.
    let gzipped = get(&format!("{base}/ui/"))
        .header(header::ACCEPT_ENCODING, "br, gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gzipped.status(), 200);
    assert_eq!(gzipped.headers()[header::CONTENT_ENCODING], "gzip");
    let compressed = gzipped.bytes().await.unwrap();
    let mut inflated = String::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_string(&mut inflated)
        .unwrap();
    assert_eq!(inflated, html);

    // Every file of the console's folder is embedded, with its type; an unknown file is not.
    let files = asset_files();
    assert!(files.iter().any(|f| f == "pages/cluster.js"), "{files:?}");
    for file in &files {
        let response = get(&format!("{base}/ui/{file}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{file} is not embedded");
        let expected = match file.rsplit('.').next() {
            Some("js") => "text/javascript; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            Some("html") => "text/html; charset=utf-8",
            _ => continue,
        };
        assert_eq!(response.headers()[header::CONTENT_TYPE], expected, "{file}");
    }
    let missing = http_client()
        .get(format!("{base}/ui/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn t01_cluster() {
    let cluster = cluster(&[]).await;
    // A fourth node, running but not a member: the page adds it and removes it again.
    let config = cluster.root.path().join("node.toml");
    let fourth = NodeProc::start(
        4,
        cluster.root.path(),
        None,
        &["--config", config.to_str().unwrap()],
    )
    .await;
    let extra = json!({
        "new_member": {"id": fourth.id, "raft_addr": fourth.raft, "api_addr": fourth.api},
    });
    run_page("cluster", &cluster, extra).await;
}

#[tokio::test]
async fn t02_kv() {
    let cluster = cluster(&[]).await;
    run_page("kv", &cluster, json!({})).await;
}

#[tokio::test]
async fn t03_services() {
    let cluster = cluster(&[]).await;
    run_page("services", &cluster, json!({})).await;
}

#[tokio::test]
async fn t04_configs() {
    let cluster = cluster(&[]).await;
    run_page("configs", &cluster, json!({})).await;
}

#[tokio::test]
async fn t05_gateway() {
    let cluster = cluster(&["--listen", "gateway=127.0.0.1:0"]).await;
    let gateway = cluster.nodes[0].gateway.as_deref().unwrap();
    let extra = json!({ "gateway_url": format!("http://{gateway}") });
    run_page("gateway", &cluster, extra).await;
}

#[tokio::test]
async fn t06_monitor() {
    let cluster = cluster(&[]).await;
    run_page("monitor", &cluster, json!({})).await;
}
