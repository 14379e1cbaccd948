//! The docs cannot lie: every shell example in README.md and docs/**/*.md runs, in order,
//! against a fresh `strata dev`, and its documented output is compared with the real output.
//! Examples that cannot run say so, with a reason. The markers are described in
//! `common/doc_examples.rs`.
//!
//! Each file runs in one `bash` session (variables carry over, as in a terminal) whose `PATH`
//! starts with the binary under test and whose `STRATA_ENDPOINTS` is the node. The docs show the
//! default ports; commands get the node's bound ports instead, and outputs get the defaults
//! back before they are compared. `STRATA_DOCS_PRINT=1` prints every actual output, to paste.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/doc_examples.rs"]
mod doc_examples;

use common::{strata_bin, wait_exit, wait_for_addrs, wait_until, KillOnDrop, DEV_ON_ANY_PORT};
use doc_examples::{normalized, output_matches, parse, text_pattern, Cmd, Step};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest any one command may take.
const COMMAND_DEADLINE: Duration = Duration::from_secs(30);
/// Longest a background process may take to start (print something or open a watch) or to
/// print what the docs say, and a `retry` command to do what they say.
const WAIT_DEADLINE: Duration = Duration::from_secs(10);

fn read(path: impl AsRef<Path>) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// README.md, then docs/**/*.md by name.
fn doc_files() -> Vec<String> {
    let (mut files, mut dirs) = (Vec::new(), vec![PathBuf::from("docs")]);
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(repo_root().join(&dir)).unwrap() {
            let name = dir.join(entry.unwrap().file_name());
            match repo_root().join(&name).is_dir() {
                true => dirs.push(name),
                false if name.extension().is_some_and(|e| e == "md") => {
                    files.push(name.display().to_string())
                }
                false => {}
            }
        }
    }
    files.sort();
    files.insert(0, "README.md".into());
    files
}

fn steps_of(file: &str) -> Vec<Step> {
    parse(&read(repo_root().join(file))).0
}

/// A fresh `strata dev`, started from `root/work` with its data in `./strata-data`.
struct Node {
    _child: KillOnDrop,
    root: PathBuf,
    api: String,
    /// Default port → bound port, and back.
    to_bound: HashMap<u16, u16>,
    to_default: HashMap<u16, u16>,
}

async fn start_node(root: &Path) -> Node {
    std::fs::create_dir_all(root.join("work")).unwrap();
    let (addrs_file, stdout, stderr) = (
        root.join("addrs.json"),
        root.join("node.out"),
        root.join("node.err"),
    );
    let mut child = Command::new(strata_bin())
        .args(["dev", "--data-dir", "./strata-data"])
        .args(DEV_ON_ANY_PORT)
        .arg("--addrs-file")
        .arg(&addrs_file)
        .current_dir(root.join("work"))
        .env_remove("STRATA_LOG")
        .env_remove("STRATA_LOG_FORMAT")
        .env_remove("STRATA_CONFIG")
        .env_remove("STRATA_ENDPOINTS")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("spawn strata dev");
    let logs = [stdout.as_path(), stderr.as_path()];
    let addrs: HashMap<String, std::net::SocketAddr> =
        wait_for_addrs(&mut child, &addrs_file, &logs, Duration::from_secs(20)).await;
    let child = KillOnDrop(child);
    wait_until(Duration::from_secs(20), "strata dev to print ready", || {
        let ready = read(&stdout).contains(" ready ");
        async move { ready.then_some(()) }
    })
    .await;
    let names = [("api", 7700), ("raft", 7701), ("grpc", 7702), ("dns", 7703)];
    let to_bound: HashMap<u16, u16> = (names.into_iter().chain([
        ("consul", 7705),
        ("nacos", 7848),
        ("nacos_grpc", 7849),
        ("gateway", 7780),
        ("gateway_tls", 7743),
        ("xds", 7718),
    ]))
    .map(|(name, default)| (default, addrs[name].port()))
    .collect();
    Node {
        _child: child,
        root: root.to_path_buf(),
        api: addrs["api"].to_string(),
        to_default: to_bound.iter().map(|(d, b)| (*b, *d)).collect(),
        to_bound,
    }
}

/// Replaces the ports of `127.0.0.1:P`, `127.0.0.1#P` (dig), `localhost:P` and `-p P` found in `map`.
fn remap(text: &str, map: &HashMap<u16, u16>) -> String {
    let ports = regex::Regex::new(r"(127\.0\.0\.1[:#]|localhost:|(?:^|\s)-p )(\d+)\b").unwrap();
    let replace = |c: &regex::Captures| match c[2].parse().ok().and_then(|p: u16| map.get(&p)) {
        Some(port) => format!("{}{port}", &c[1]),
        None => c[0].to_string(),
    };
    ports.replace_all(text, replace).into_owned()
}

/// A persistent `bash` in its own process group. Each command's output and exit status go to
/// files in `logs`, numbered in order.
struct Shell {
    child: KillOnDrop,
    stdin: ChildStdin,
    logs: PathBuf,
    runs: usize,
}

impl Shell {
    fn start(node: &Node, logs: PathBuf) -> Shell {
        use std::os::unix::process::CommandExt;
        std::fs::create_dir_all(&logs).unwrap();
        let bin_dir = Path::new(strata_bin()).parent().unwrap().display();
        let log = std::fs::File::create(logs.join("bash.log")).unwrap();
        let mut child = Command::new("bash")
            .args(["--noprofile", "--norc"])
            .current_dir(node.root.join("work"))
            .env_clear()
            .env(
                "PATH",
                format!("{bin_dir}:{}", std::env::var("PATH").unwrap()),
            )
            .env("HOME", &node.root)
            .env("LANG", "C.UTF-8")
            .env("STRATA_ENDPOINTS", format!("http://{}", node.api))
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn bash");
        let stdin = child.stdin.take().unwrap();
        Shell {
            child: KillOnDrop(child),
            stdin,
            logs,
            runs: 0,
        }
    }

    /// Runs `command`; `None` if it is not done within [`COMMAND_DEADLINE`] (or bash died).
    fn run(&mut self, command: &str) -> Option<(i32, String, String)> {
        self.runs += 1;
        let base = self
            .logs
            .join(format!("cmd.{}", self.runs))
            .display()
            .to_string();
        let script = format!(
            "{{ {command}\n}} </dev/null >'{base}.out' 2>'{base}.err'; \
             echo $? >'{base}.tmp'; mv '{base}.tmp' '{base}.status'\n"
        );
        self.stdin.write_all(script.as_bytes()).ok()?;
        let deadline = Instant::now() + COMMAND_DEADLINE;
        while !Path::new(&format!("{base}.status")).exists() {
            if Instant::now() > deadline || self.child.0.try_wait().unwrap().is_some() {
                return None;
            }
            std::thread::park_timeout(Duration::from_millis(5));
        }
        let status = read(format!("{base}.status")).trim().parse().unwrap();
        Some((
            status,
            read(format!("{base}.out")),
            read(format!("{base}.err")),
        ))
    }

    /// SIGTERM to the session and everything it started in the background; SIGKILL to what
    /// is left once bash is gone (or after 5 s).
    fn stop(&mut self) {
        let group = format!("-{}", self.child.0.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        wait_exit(&mut self.child.0, Duration::from_secs(5));
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
    }
}

/// One file's run. `strict`: outputs count, not only exit statuses.
struct Session<'a> {
    file: &'a str,
    node: &'a Node,
    shell: Shell,
    strict: bool,
    failures: Vec<String>,
}

/// Runs one file's steps; returns the mismatches.
fn run_doc(file: &str, node: &Node, strict: bool) -> Vec<String> {
    let shell = Shell::start(node, node.root.join(file.replace('/', "_")));
    let mut session = Session {
        file,
        node,
        shell,
        strict,
        failures: Vec::new(),
    };
    for step in steps_of(file) {
        let go_on = match &step {
            Step::Run(cmd) if cmd.bg.is_some() => session.start_bg(cmd),
            Step::Run(cmd) => session.run(cmd),
            Step::Stream {
                line,
                name,
                expected,
            } => {
                session.wait_for(*line, name, "print", |out| output_matches(expected, out));
                true
            }
            Step::File { name, content } => {
                let content = remap(content, &node.to_bound);
                std::fs::write(node.root.join("work").join(name), content).unwrap();
                true
            }
        };
        if !go_on {
            session
                .failures
                .push(format!("{file}: the rest of the file did not run"));
            break;
        }
    }
    session.shell.stop();
    session.failures
}

impl Session<'_> {
    fn run(&mut self, cmd: &Cmd) -> bool {
        let deadline = Instant::now() + WAIT_DEADLINE;
        loop {
            let Some((status, out, err)) = self.shell.run(&remap(&cmd.text, &self.node.to_bound))
            else {
                self.fail(
                    cmd,
                    &format!("did not finish within {COMMAND_DEADLINE:?}"),
                    "",
                    "",
                );
                return false;
            };
            let (out, err) = (
                remap(&out, &self.node.to_default),
                remap(&err, &self.node.to_default),
            );
            if std::env::var_os("STRATA_DOCS_PRINT").is_some() {
                let (file, line, text) = (self.file, cmd.line, &cmd.text);
                eprintln!("--- {file}:{line} $ {text}\n{out}--- stderr ({status}):\n{err}");
            }
            let stderr = cmd.stderr.join("\n");
            let problem = if status != cmd.expected_status() {
                format!(
                    "exit status {status}, the docs say {}",
                    cmd.expected_status()
                )
            } else if !self.strict {
                break;
            } else if let Some(expected) = cmd.stdout.as_ref().filter(|e| !output_matches(e, &out))
            {
                format!("stdout differs; the docs say:\n{expected}")
            } else if !stderr.is_empty() && !output_matches(&stderr, &err) {
                format!("stderr differs; the docs say:\n{stderr}")
            } else {
                break;
            };
            if !cmd.retry || Instant::now() > deadline {
                self.fail(cmd, &problem, &out, &err);
                break;
            }
            std::thread::park_timeout(Duration::from_millis(200));
        }
        for (name, pattern) in &cmd.bg_lines {
            let pattern = text_pattern(pattern);
            let printed = |out: &str| out.lines().any(|l| pattern.is_match(&normalized(l)));
            self.wait_for(cmd.line, name, "print the line", printed);
        }
        true
    }

    /// Starts a background command, and waits until it prints something or opens a watch
    /// (so that no change the docs show next happens before the watch).
    fn start_bg(&mut self, cmd: &Cmd) -> bool {
        let name = cmd.bg.as_deref().unwrap();
        let (out, err) = (
            self.shell.logs.join(format!("bg.{name}.out")),
            self.shell.logs.join(format!("bg.{name}.err")),
        );
        let before = self.watch_count();
        let text = remap(&cmd.text, &self.node.to_bound);
        let script = format!("{{ {text}\n}} >'{}' 2>'{}' &", out.display(), err.display());
        if self
            .shell
            .run(&script)
            .is_none_or(|(status, ..)| status != 0)
        {
            self.fail(cmd, "could not start in the background", "", "");
            return false;
        }
        let deadline = Instant::now() + WAIT_DEADLINE;
        while read(&out).is_empty() && self.watch_count() <= before {
            if Instant::now() > deadline {
                let problem =
                    format!("neither printed nor opened a watch within {WAIT_DEADLINE:?}");
                self.fail(cmd, &problem, "", &read(&err));
                return false;
            }
            std::thread::park_timeout(Duration::from_millis(20));
        }
        true
    }

    /// Open watch streams on the node (KV, registry and config).
    fn watch_count(&self) -> f64 {
        let url = format!("http://{}/metrics", self.node.api);
        let metrics = Command::new("curl").args(["-s", &url]).output().unwrap();
        let gauges = [
            "strata_kv_watchers",
            "strata_registry_subscribers",
            "strata_configcenter_listeners",
        ];
        let metrics = String::from_utf8_lossy(&metrics.stdout);
        let counted = |l: &&str| {
            l.split(['{', ' '])
                .next()
                .is_some_and(|n| gauges.contains(&n))
        };
        let value = |l: &str| l.split_whitespace().last()?.parse::<f64>().ok();
        metrics.lines().filter(counted).filter_map(value).sum()
    }

    /// Waits until what background `name` (`dev`: the node) printed satisfies `done`.
    fn wait_for(&mut self, line: usize, name: &str, what: &str, done: impl Fn(&str) -> bool) {
        let path = match name {
            "dev" => self.node.root.join("node.out"),
            _ => self.shell.logs.join(format!("bg.{name}.out")),
        };
        let deadline = Instant::now() + WAIT_DEADLINE;
        while self.strict {
            let out = remap(&read(&path), &self.node.to_default);
            if done(&out) {
                return;
            }
            if Instant::now() > deadline {
                let file = self.file;
                self.failures.push(format!(
                    "{file}:{line}: {name} did not {what} within {WAIT_DEADLINE:?}; it printed:\n{out}"
                ));
                return;
            }
            std::thread::park_timeout(Duration::from_millis(50));
        }
    }

    fn fail(&mut self, cmd: &Cmd, problem: &str, out: &str, err: &str) {
        let (file, line, text) = (self.file, cmd.line, &cmd.text);
        let report =
            format!("{file}:{line}: {problem}\n$ {text}\n--- stdout:\n{out}--- stderr:\n{err}");
        self.failures.push(report);
    }
}

fn report(failures: Vec<String>) {
    let count = failures.len();
    let all = failures.join("\n\n");
    assert!(
        failures.is_empty(),
        "{count} doc example(s) do not do what the docs say (scripts/test.sh installs curl, \
         etcdctl, dig and jq):\n\n{all}"
    );
}

/// Every shell fence says whether it runs; markers and expectations parse.
#[test]
fn t00_every_shell_block_is_marked() {
    let errors: Vec<String> = doc_files()
        .into_iter()
        .flat_map(|file| {
            let errors = parse(&read(repo_root().join(&file))).1;
            errors.into_iter().map(move |e| format!("{file}: {e}"))
        })
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// The parser and the matcher do what the markers promise.
#[test]
fn t01_markers_and_matching_follow_the_documented_rules() {
    let markdown = "```sh example\nA='x # y' \\\n  && echo \"$A\"   #> x # y\n#> [..]\n\
                    # prose\nfalse  #! oops\ncmd  #? 3\n```\n```json output\n{}\n```\n\
                    ```sh\nls\n```\n```sh no-run\nls\n```\n```text output\n```\n";
    let (steps, errors) = parse(markdown);
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        errors[0].starts_with("line 12: ```sh has no marker"),
        "{errors:?}"
    );
    assert!(errors[1].contains("reason="), "{errors:?}");
    assert!(
        errors[2].contains("output block follows a command without"),
        "{errors:?}"
    );
    let cmds: Vec<&Cmd> = steps
        .iter()
        .filter_map(|s| if let Step::Run(c) = s { Some(c) } else { None })
        .collect();
    assert_eq!(cmds[0].text, "A='x # y' \\\n  && echo \"$A\"");
    assert_eq!(cmds[0].stdout.as_deref(), Some("x # y\n[..]\n"));
    assert_eq!(
        (cmds[1].line, cmds[1].expected_status(), &cmds[1].stderr[..]),
        (6, 1, &["oops".to_string()][..])
    );
    assert_eq!(
        (cmds[2].expected_status(), cmds[2].stdout.as_deref()),
        (3, Some("{}\n"))
    );

    assert!(output_matches("a [..] c\n...\nz", "a b c\nx\ny\nz  \n\n"));
    assert!(output_matches("a\n...\nz", "a\nz"));
    assert!(!output_matches("a [..] c", "a b d"));
    let (expected, actual) = (
        r#"{"id": "[..]", "m": "rev [..] gone", "l": [1]}"#,
        r#"{"l":[1],"id":7,"m":"rev 3 gone"}"#,
    );
    assert!(output_matches(expected, actual));
    assert!(!output_matches(
        r#"{"id": 1}"#,
        r#"{"id": 1, "grpc_addr": "x"}"#
    ));

    let ports = HashMap::from([(7700, 41000), (7703, 41003)]);
    let remapped = remap(
        "dig @127.0.0.1 -p 7703 x; curl localhost:7700 127.0.0.1:77001",
        &ports,
    );
    assert_eq!(
        remapped,
        "dig @127.0.0.1 -p 41003 x; curl localhost:41000 127.0.0.1:77001"
    );
}

/// Each file on its own fresh node, so that one file's revisions don't depend on another's:
/// exit statuses and outputs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_each_doc_runs_as_written_on_a_fresh_node() {
    let scratch = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    for (i, file) in doc_files().into_iter().enumerate() {
        if steps_of(&file).iter().any(|s| matches!(s, Step::Run(_))) {
            let root = scratch.path().join(i.to_string());
            runs.push(tokio::spawn(async move {
                let node = start_node(&root).await;
                tokio::task::spawn_blocking(move || run_doc(&file, &node, true))
                    .await
                    .unwrap()
            }));
        }
    }
    let mut failures = Vec::new();
    for run in runs {
        failures.extend(run.await.unwrap());
    }
    report(failures);
}

/// README, then every doc, one after another on one node, as a newcomer works through them:
/// only exit statuses count (revisions shift), but no file may trip over another's state
/// (registering an instance id that README already registered, for example).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t11_all_docs_run_one_after_another_on_one_node() {
    let scratch = tempfile::tempdir().unwrap();
    let node = start_node(scratch.path()).await;
    let run_all = move || {
        doc_files()
            .iter()
            .flat_map(|f| run_doc(f, &node, false))
            .collect::<Vec<_>>()
    };
    report(tokio::task::spawn_blocking(run_all).await.unwrap());
}
