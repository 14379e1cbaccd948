//! etcdctl 3.4 (`ETCDCTL_API=3`, Debian package etcd-client) against a 3-node Strata cluster,
//! each output checked against what a real etcd 3.4 prints for the same command.
//!
//! One scenario runs step by step against both servers: a single-node etcd started for the
//! test (Debian package etcd-server) and Strata's etcd v3 gRPC API. After each step the two
//! outputs must be equal once what legitimately differs is normalised: cluster, member and
//! lease ids, member names, raft terms and indexes, the version, the db size, durations,
//! addresses and log timestamps. Revisions are *not* normalised: both servers start at
//! revision 1 and the scenario is deterministic, so every revision must match. Steps also
//! assert what the output should say, so a server that fails the same way as the other
//! still fails the test.

#![allow(clippy::unwrap_used)]

mod common;

use common::{send_signal, wait_exit, Cluster, EtcdProc, GRPC_ON_ANY_PORT};
use regex::Regex;
use std::collections::BTreeSet;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The etcdctl binary (Debian package etcd-client; scripts/test.sh installs it).
const ETCDCTL: &str = "etcdctl";

/// Longest any one etcdctl command may run: a command that should fail must fail, not hang.
const COMMAND_DEADLINE: Duration = Duration::from_secs(20);

/// Longest the scenario waits for a background command's output or for a condition.
const WAIT: Duration = Duration::from_secs(15);

/// What a command printed: its exit code and output, normalised (see [`Side::normalise`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Printed {
    /// Exit code; `None` when killed by a signal.
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// One server under test, as etcdctl sees it.
struct Side {
    /// `etcd` or `strata`, for messages.
    name: &'static str,
    /// Every client endpoint, comma-separated.
    endpoints: String,
    /// One endpoint, for commands that print a line per endpoint: etcd's only one, Strata's
    /// leader, so that both print the line of a leader.
    one_endpoint: String,
    /// Scratch folder for files written by commands run under a lock.
    dir: PathBuf,
    /// Values captured from earlier outputs; `{name}` in an argument is replaced by its value.
    vars: Vec<(String, String)>,
    /// Lease ids granted so far, in order; outputs show the n-th as `<lease-n>`.
    leases: Vec<i64>,
}

/// One etcdctl invocation of the scenario and how to treat its output.
struct Step<'a> {
    args: Vec<&'a str>,
    stdin: &'a str,
    /// Use [`Side::one_endpoint`] instead of every endpoint.
    one_endpoint: bool,
    /// Fold runs of equal (normalised) lines into one: `member list` prints a line per
    /// member, three for Strata and one for etcd, which are equal once normalised.
    dedup_lines: bool,
    /// Record the lease id this step grants.
    capture_lease: bool,
    /// Record the header revision this step prints (`-w json`) under this name.
    capture_revision: Option<&'a str>,
}

fn step<'a>(args: &[&'a str]) -> Step<'a> {
    Step {
        args: args.to_vec(),
        stdin: "",
        one_endpoint: false,
        dedup_lines: false,
        capture_lease: false,
        capture_revision: None,
    }
}

impl<'a> Step<'a> {
    fn stdin(mut self, input: &'a str) -> Self {
        self.stdin = input;
        self
    }

    fn one_endpoint(mut self) -> Self {
        self.one_endpoint = true;
        self
    }

    fn dedup_lines(mut self) -> Self {
        self.dedup_lines = true;
        self
    }

    fn capture_lease(mut self) -> Self {
        self.capture_lease = true;
        self
    }

    fn capture_revision(mut self, name: &'a str) -> Self {
        self.capture_revision = Some(name);
        self
    }

    fn describe(&self) -> String {
        format!("etcdctl {}", self.args.join(" "))
    }
}

/// Rewrites applied to every output, after lease ids (see [`Side::normalise`]).
fn rules() -> &'static [(Regex, &'static str)] {
    static RULES: OnceLock<Vec<(Regex, &'static str)>> = OnceLock::new();
    RULES.get_or_init(|| {
        let rules: &[(&str, &str)] = &[
            // Tables: column widths follow the contents, which differ.
            (r"(?m)^\+[-+]+\+$", "+--+"),
            (r"[ \t]*\|[ \t]*", "|"),
            // The session leases of `lock` and `elect` show in their keys (`NAME/LEASE_HEX`).
            (r"\b(mylock|myelection)/[0-9a-f]+\b", "$1/<session>"),
            // Ids, terms, indexes and sizes in JSON; zeros (nested txn headers) stay.
            (
                r#""(cluster_id|member_id|ID|leader|raft_term|raftTerm|raftIndex|raftAppliedIndex|dbSize|dbSizeInUse)":[1-9]\d*"#,
                r#""$1":<n>"#,
            ),
            (r#""(ClusterID|MemberID|RaftTerm)" : [1-9]\d*"#, r#""$1" : <n>"#),
            (r#""(version|name)":"[^"]*""#, r#""$1":"<s>""#),
            // A lease's remaining TTL counts down between the two runs.
            (r"remaining\(\d+s\)", "remaining(<n>s)"),
            (r#""ttl":\d+,"granted-ttl""#, r#""ttl":<n>,"granted-ttl""#),
            // Durations and the client's log lines.
            (r"took = [0-9.]+[a-zµ]*s", "took = <duration>"),
            (r#""took":"[^"]*""#, r#""took":"<duration>""#),
            (r#""ts":"[^"]*""#, r#""ts":"<ts>""#),
            (r#""target":"[^"]*""#, r#""target":"<target>""#),
            // Addresses.
            (r"http://127\.0\.0\.1:\d+", "<url>"),
            (r"127\.0\.0\.1:\d+", "<addr>"),
            // `member list`: id and name (simple and table output).
            (r"(?m)^[0-9a-f]+, started, [^,]+,", "<id>, started, <name>,"),
            (r"(?m)^\|[0-9a-f]+\|started\|[^|]+\|", "|<id>|started|<name>|"),
            // `endpoint status`: id, version, db size, raft term and indexes.
            (
                r"(?m)^<addr>, [0-9a-f]+, [^,]+, [^,]+, (true|false), (true|false), \d+, \d+, \d+,",
                "<addr>, <id>, <version>, <size>, $1, $2, <term>, <index>, <index>,",
            ),
            (
                r"(?m)^\|<addr>\|[0-9a-f]+\|[^|]+\|[^|]+\|(true|false)\|(true|false)\|\d+\|\d+\|\d+\|",
                "|<addr>|<id>|<version>|<size>|$1|$2|<term>|<index>|<index>|",
            ),
        ];
        rules
            .iter()
            .map(|(pattern, replacement)| (Regex::new(pattern).unwrap(), *replacement))
            .collect()
    })
}

impl Side {
    fn command(&self, endpoints: &str, args: &[&str]) -> Command {
        let mut command = Command::new(ETCDCTL);
        command
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(endpoints)
            .args(args.iter().map(|arg| self.expand(arg)));
        command
    }

    /// Replaces `{name}` with captured values.
    fn expand(&self, arg: &str) -> String {
        let mut expanded = arg.to_string();
        for (name, value) in &self.vars {
            expanded = expanded.replace(&format!("{{{name}}}"), value);
        }
        expanded
    }

    fn set_var(&mut self, name: &str, value: String) {
        self.vars.retain(|(known, _)| known != name);
        self.vars.push((name.to_string(), value));
    }

    /// Rewrites what legitimately differs between etcd and Strata (see the module docs).
    fn normalise(&self, text: &str) -> String {
        let mut text = text.to_string();
        for (n, id) in self.leases.iter().enumerate() {
            let alias = format!("<lease-{}>", n + 1);
            let forms = format!(r"\b({id:016x}|{id:x}|{id})\b");
            text = Regex::new(&forms)
                .unwrap()
                .replace_all(&text, alias.as_str())
                .into_owned();
        }
        for (pattern, replacement) in rules() {
            text = pattern.replace_all(&text, *replacement).into_owned();
        }
        text
    }

    /// Runs a command to completion and returns its raw output.
    fn run(&self, args: &[&str], stdin: &str, one_endpoint: bool) -> std::process::Output {
        let endpoints = if one_endpoint {
            &self.one_endpoint
        } else {
            &self.endpoints
        };
        self.run_on(endpoints, args, stdin)
    }

    /// Runs a command against `endpoints` to completion and returns its raw output.
    fn run_on(&self, endpoints: &str, args: &[&str], stdin: &str) -> std::process::Output {
        let mut command = self.command(endpoints, args);
        common::run_with_deadline(&mut command, stdin.as_bytes(), COMMAND_DEADLINE)
    }

    /// Runs a command that must succeed and returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args, "", false);
        assert!(
            output.status.success(),
            "{}: etcdctl {args:?} failed: {}",
            self.name,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Starts a command in the background.
    fn spawn(&self, args: &[&str]) -> Running {
        let command = self.command(&self.endpoints, args);
        Running::spawn(
            command,
            format!("{}: etcdctl {}", self.name, args.join(" ")),
        )
    }

    /// The header revision of a read: the store's current revision.
    fn current_revision(&self) -> i64 {
        let json = self.ok(&["get", "no-such-key", "-w", "json"]);
        header_revision(&json).unwrap_or_else(|| panic!("{}: no revision in {json}", self.name))
    }

    /// Counts the keys under `prefix`.
    fn count_keys(&self, prefix: &str) -> usize {
        self.ok(&["get", prefix, "--prefix", "--keys-only"])
            .lines()
            .filter(|line| !line.is_empty())
            .count()
    }

    /// Runs one step: captures what it asks for, returns the normalised output.
    fn run_step(&mut self, step: &Step) -> (Printed, String) {
        let output = self.run(&step.args, step.stdin, step.one_endpoint);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if step.capture_lease {
            let granted = Regex::new(r"lease ([0-9a-f]+) granted").unwrap();
            let hex = granted
                .captures(&stdout)
                .unwrap_or_else(|| panic!("{}: no lease granted in {stdout:?}", self.name))[1]
                .to_string();
            self.leases.push(i64::from_str_radix(&hex, 16).unwrap());
            self.set_var("lease", hex);
        }
        if let Some(name) = step.capture_revision {
            let revision = header_revision(&stdout)
                .unwrap_or_else(|| panic!("{}: no revision in {stdout:?}", self.name));
            self.set_var(name, revision.to_string());
        }
        let mut printed = Printed {
            code: output.status.code(),
            stdout: self.normalise(&stdout),
            stderr: self.normalise(&stderr),
        };
        if step.dedup_lines {
            printed.stdout = dedup_lines(&printed.stdout);
        }
        let raw = format!(
            "exit {:?}\n--- stdout\n{stdout}--- stderr\n{stderr}",
            output.status.code()
        );
        (printed, raw)
    }
}

/// Returns the first `"revision":N` of a JSON output (the response header's).
fn header_revision(json: &str) -> Option<i64> {
    let revision = Regex::new(r#""revision":(\d+)"#).unwrap();
    revision.captures(json)?[1].parse().ok()
}

fn dedup_lines(text: &str) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    lines.dedup();
    lines.iter().map(|line| format!("{line}\n")).collect()
}

/// The same scenario on both servers.
struct Both {
    etcd: Side,
    strata: Side,
}

impl Both {
    /// Runs a step on etcd, then on Strata, and checks that they printed the same.
    fn run(&mut self, step: Step) -> Printed {
        let (etcd, etcd_raw) = self.etcd.run_step(&step);
        let (strata, strata_raw) = self.strata.run_step(&step);
        assert!(
            etcd == strata,
            "`{}`: Strata's output differs from etcd's\n=== etcd (normalised)\n{etcd:#?}\n\
             === strata (normalised)\n{strata:#?}\n=== etcd (raw)\n{etcd_raw}\n\
             === strata (raw)\n{strata_raw}",
            step.describe()
        );
        strata
    }

    /// Runs a flow of several commands on etcd, then on Strata, and checks that their
    /// (normalised) transcripts are equal.
    fn flow(&self, what: &str, flow: impl Fn(&Side) -> String) -> String {
        let etcd = flow(&self.etcd);
        let strata = flow(&self.strata);
        assert!(
            etcd == strata,
            "{what}: Strata's transcript differs from etcd's\n=== etcd\n{etcd}\n=== strata\n{strata}"
        );
        strata
    }
}

/// An etcdctl command running in the background; its output is collected as it comes.
struct Running {
    what: String,
    child: Option<Child>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    fn spawn(mut command: Command, what: String) -> Running {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run etcdctl (Debian package etcd-client; scripts/test.sh installs it)");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().unwrap(), stdout.clone()),
            collect(child.stderr.take().unwrap(), stderr.clone()),
        ];
        Running {
            what,
            child: Some(child),
            stdout,
            stderr,
            readers,
        }
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Waits until the output so far satisfies `done`.
    fn wait_for(&self, what: &str, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(&self.stdout()) {
            assert!(
                Instant::now() < deadline,
                "{}: timed out waiting for {what}; stdout so far:\n{}\nstderr:\n{}",
                self.what,
                self.stdout(),
                self.stderr()
            );
            std::thread::park_timeout(Duration::from_millis(20));
        }
    }

    fn signal(&self, name: &str) {
        send_signal(self.child.as_ref().expect("running"), name);
    }

    /// Waits for the command to exit by itself.
    fn wait(mut self) -> Printed {
        let mut child = self.child.take().expect("running");
        let Some(status) = wait_exit(&mut child, COMMAND_DEADLINE) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{} still running after {COMMAND_DEADLINE:?}; stdout:\n{}\nstderr:\n{}",
                self.what,
                self.stdout(),
                self.stderr()
            );
        };
        self.finish(status.code())
    }

    /// Kills the command (it would run forever) and returns what it printed.
    fn kill(mut self) -> Printed {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
        self.finish(None)
    }

    fn finish(&mut self, code: Option<i32>) -> Printed {
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
        Printed {
            code,
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Copies a pipe into `sink` until it closes.
fn collect(
    mut pipe: impl Read + Send + 'static,
    sink: Arc<Mutex<Vec<u8>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        loop {
            match pipe.read(&mut buffer) {
                Ok(0) | Err(_) => return,
                Ok(n) => sink.lock().unwrap().extend_from_slice(&buffer[..n]),
            }
        }
    })
}

/// Polls `check` until it holds, or panics with `what` after [`WAIT`].
fn wait_until_sync(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::park_timeout(Duration::from_millis(20));
    }
}

/// Formats a background command's output for a transcript, normalised for `side`.
fn transcript(side: &Side, label: &str, printed: &Printed) -> String {
    format!(
        "{label}: exit {:?}\n--- stdout\n{}--- stderr\n{}",
        printed.code,
        side.normalise(&printed.stdout),
        side.normalise(&printed.stderr)
    )
}

/// `etcdctl watch KEY` fed by puts and a delete made while it runs. The watch starts at the
/// next revision, so the first event arrives even if the put lands before the watch is
/// registered; the later ones are made after an event arrived, when the watch is certainly
/// live.
fn watch_flow(side: &Side, key: &str, extra: &[&str], events: fn(&str) -> usize) -> String {
    let next = (side.current_revision() + 1).to_string();
    let mut args = vec!["watch", key, "--rev", &next];
    args.extend_from_slice(extra);
    let watcher = side.spawn(&args);
    side.ok(&["put", key, "v1"]);
    watcher.wait_for("the first event", |out| events(out) >= 1);
    side.ok(&["put", key, "v2"]);
    watcher.wait_for("the second event", |out| events(out) >= 2);
    side.ok(&["del", key]);
    watcher.wait_for("the delete event", |out| events(out) >= 3);
    transcript(side, "watch", &watcher.kill())
}

/// Two `etcdctl lock` holders of one lock: the second waits until the first is done.
///
/// Each holder's command appends to a journal when it enters and when it leaves; the first
/// stays inside until the test creates a release file, which it does only once the second
/// holder's key is queued behind the first's.
fn lock_flow(side: &Side) -> String {
    let journal = side.dir.join("lock-journal");
    let release = side.dir.join("lock-release");
    let read_journal = || std::fs::read_to_string(&journal).unwrap_or_default();
    let first_script = format!(
        "echo A-in >> '{journal}'; while [ ! -e '{release}' ]; do sleep 0.02; done; echo A-out >> '{journal}'",
        journal = journal.display(),
        release = release.display()
    );
    let second_script = format!(
        "echo B-in >> '{journal}'; echo B-out >> '{journal}'",
        journal = journal.display()
    );
    let first = side.spawn(&["lock", "mylock", "--", "sh", "-c", &first_script]);
    wait_until_sync("the first holder to enter", || read_journal() == "A-in\n");
    let second = side.spawn(&["lock", "mylock", "--", "sh", "-c", &second_script]);
    wait_until_sync("the second holder to queue behind the first", || {
        side.count_keys("mylock") == 2
    });
    assert_eq!(
        read_journal(),
        "A-in\n",
        "{}: the second holder entered while the first held the lock",
        side.name
    );
    std::fs::write(&release, b"").unwrap();
    let first = first.wait();
    let second = second.wait();
    assert_eq!(
        first.code,
        Some(0),
        "{}: first holder: {first:?}",
        side.name
    );
    assert_eq!(
        second.code,
        Some(0),
        "{}: second holder: {second:?}",
        side.name
    );
    let journal = read_journal();
    assert_eq!(
        journal, "A-in\nA-out\nB-in\nB-out\n",
        "{}: the holders overlapped",
        side.name
    );
    assert_eq!(
        side.count_keys("mylock"),
        0,
        "{}: a lock key was left",
        side.name
    );
    format!(
        "journal:\n{journal}{}{}",
        transcript(side, "first holder", &first),
        transcript(side, "second holder", &second)
    )
}

/// Two `etcdctl elect` candidates and an observer (`elect --listen`): the first leads, the
/// second waits; on SIGINT the first resigns and the second takes over.
fn elect_flow(side: &Side) -> String {
    let first = side.spawn(&["elect", "myelection", "proposal1"]);
    first.wait_for("the first candidate to lead", |out| {
        out.lines().count() >= 2
    });
    let observer = side.spawn(&["elect", "--listen", "myelection"]);
    observer.wait_for("the observer to see the leader", |out| {
        out.lines().count() >= 2
    });
    let second = side.spawn(&["elect", "myelection", "proposal2"]);
    wait_until_sync("the second candidate to campaign", || {
        side.count_keys("myelection") == 2
    });
    assert_eq!(
        second.stdout(),
        "",
        "{}: the second candidate leads while the first does",
        side.name
    );
    // etcdctl elect resigns on SIGINT (not on SIGTERM).
    first.signal("INT");
    let first = first.wait();
    second.wait_for("the second candidate to lead", |out| {
        out.lines().count() >= 2
    });
    observer.wait_for("the observer to see the new leader", |out| {
        out.lines().count() >= 4
    });
    second.signal("INT");
    let second = second.wait();
    let observer = observer.kill();
    assert_eq!(
        first.code,
        Some(0),
        "{}: first candidate: {first:?}",
        side.name
    );
    assert_eq!(
        second.code,
        Some(0),
        "{}: second candidate: {second:?}",
        side.name
    );
    assert_eq!(
        side.count_keys("myelection"),
        0,
        "{}: a candidate did not resign",
        side.name
    );
    format!(
        "{}{}{}",
        transcript(side, "first candidate", &first),
        transcript(side, "second candidate", &second),
        transcript(side, "observer", &observer)
    )
}

/// Counts complete events in `etcdctl watch` simple output: a PUT or DELETE line followed by
/// its (newline-terminated) key line, so the watcher is never stopped halfway through one.
fn simple_events(out: &str) -> usize {
    let complete: Vec<&str> = match out.rfind('\n') {
        Some(end) => out[..end].split('\n').collect(),
        None => Vec::new(),
    };
    complete
        .iter()
        .enumerate()
        .filter(|(i, line)| (**line == "PUT" || **line == "DELETE") && i + 1 < complete.len())
        .count()
}

/// Counts events in `etcdctl watch -w json` output (one response per event here).
fn json_events(out: &str) -> usize {
    out.matches(r#""Events":[{"#).count()
}

/// The scenario: every step runs on both servers and their outputs are compared.
fn scenario(both: &mut Both, grpc_endpoints: &[String]) {
    // Keys: put, get (prefix, revision, limit, sorting, formats), del.
    assert_eq!(both.run(step(&["put", "foo", "bar"])).stdout, "OK\n");
    both.run(step(&["put", "foo", "bar2"]));
    assert_eq!(both.run(step(&["get", "foo"])).stdout, "foo\nbar2\n");
    both.run(step(&["put", "foo/a", "1"]));
    both.run(step(&["put", "foo/b", "2"]));
    assert_eq!(
        both.run(step(&["get", "foo", "--prefix"])).stdout,
        "foo\nbar2\nfoo/a\n1\nfoo/b\n2\n"
    );
    let json = both.run(step(&["get", "foo", "--prefix", "-w", "json"]));
    assert!(json.stdout.contains(r#""revision":5,"#), "{json:?}");
    assert!(json.stdout.contains(r#""count":3"#), "{json:?}");
    // Both servers start at revision 1, so the first put is revision 2.
    assert_eq!(
        both.run(step(&["get", "foo", "--rev", "2"])).stdout,
        "foo\nbar\n"
    );
    both.run(step(&[
        "get", "foo", "--prefix", "--rev", "4", "-w", "json",
    ]));
    both.run(step(&["get", "foo", "--prefix", "--keys-only"]));
    let limited = both.run(step(&[
        "get", "foo/", "--prefix", "--limit", "1", "-w", "json",
    ]));
    assert!(limited.stdout.contains(r#""more":true"#), "{limited:?}");
    let sorted = step(&[
        "get",
        "foo",
        "--from-key",
        "--sort-by=MODIFY",
        "--order=DESCEND",
        "--print-value-only",
    ]);
    assert_eq!(both.run(sorted).stdout, "2\n1\nbar2\n");
    both.run(step(&["get", "foo", "-w", "fields"]));
    assert_eq!(
        both.run(step(&["put", "foo", "bar3", "--prev-kv"])).stdout,
        "OK\nfoo\nbar2\n"
    );
    // Puts that keep the value or the lease, decided by the store in apply.
    assert_eq!(
        both.run(step(&["put", "foo", "--ignore-value"])).stdout,
        "OK\n"
    );
    assert_eq!(
        both.run(step(&["put", "foo", "bar4", "--ignore-lease"]))
            .stdout,
        "OK\n"
    );
    assert_eq!(
        both.run(step(&["get", "foo", "--print-value-only"])).stdout,
        "bar4\n"
    );
    let missing = both.run(step(&["put", "nothing", "--ignore-value"]));
    assert!(
        missing.stderr.contains("etcdserver: key not found"),
        "{missing:?}"
    );
    assert_eq!(both.run(step(&["del", "foo"])).stdout, "1\n");
    assert_eq!(
        both.run(step(&["del", "foo/", "--prefix", "--prev-kv"]))
            .stdout,
        "2\nfoo/a\n1\nfoo/b\n2\n"
    );
    assert_eq!(both.run(step(&["del", "nothing"])).stdout, "0\n");
    // A range whose end is below its key is empty, not an error.
    assert_eq!(both.run(step(&["del", "b", "a"])).stdout, "0\n");
    assert_eq!(both.run(step(&["get", "b", "a"])).stdout, "");
    let future = both.run(step(&["get", "foo", "--rev", "1000"]));
    assert!(
        future
            .stderr
            .contains("etcdserver: mvcc: required revision is a future revision"),
        "{future:?}"
    );

    // Transactions, with the interactive input on stdin.
    both.run(step(&["put", "k", "0"]));
    let txn = both.run(step(&["txn"]).stdin("mod(\"k\") > \"0\"\n\nput k v2\n\nput k v3\n\n"));
    assert_eq!(txn.stdout, "SUCCESS\n\nOK\n");
    assert_eq!(
        both.run(step(&["get", "k", "--print-value-only"])).stdout,
        "v2\n"
    );
    let failed = both.run(
        step(&["txn", "--interactive"])
            .stdin("value(\"k\") = \"nope\"\n\nput k v2\n\nput k v3\n\n"),
    );
    assert!(failed.stdout.ends_with("FAILURE\n\nOK\n"), "{failed:?}");
    assert_eq!(
        both.run(step(&["get", "k", "--print-value-only"])).stdout,
        "v3\n"
    );
    // Reads before and after a write and empty deletes in one txn: the header revision of
    // each result is the store's revision at that point, as etcd reports it.
    let mixed = "value(\"k\") = \"v3\"\n\nget k\nput k v4\nget k\ndel b a\ndel nothing\n\n\n";
    let json = both.run(step(&["txn", "-w", "json"]).stdin(mixed));
    assert!(json.stdout.contains(r#""succeeded":true"#), "{json:?}");
    let fields = "value(\"k\") = \"v4\"\n\nget k\nput k v5\n\n\n";
    both.run(step(&["txn", "-w", "fields"]).stdin(fields));

    // Watches fed by concurrent writes.
    let simple = both.flow("watch", |side| watch_flow(side, "wkey", &[], simple_events));
    assert!(
        simple.contains("--- stdout\nPUT\nwkey\nv1\nPUT\nwkey\nv2\nDELETE\nwkey\n\n--- stderr"),
        "{simple}"
    );
    let json = both.flow("watch -w json --prev-kv", |side| {
        watch_flow(side, "wkey2", &["-w", "json", "--prev-kv"], json_events)
    });
    assert_eq!(json_events(&json), 3, "{json}");
    let inverted = both.run(step(&["watch", "b", "a"]));
    assert!(
        inverted
            .stderr
            .contains("watch was canceled (mvcc: watcher range is empty)"),
        "{inverted:?}"
    );

    // Leases.
    let granted = both.run(step(&["lease", "grant", "60"]).capture_lease());
    assert_eq!(granted.stdout, "lease <lease-1> granted with TTL(60s)\n");
    assert_eq!(
        both.run(step(&["lease", "keep-alive", "--once", "{lease}"]))
            .stdout,
        "lease <lease-1> keepalived with TTL(60)\n"
    );
    both.run(step(&[
        "lease",
        "keep-alive",
        "--once",
        "{lease}",
        "-w",
        "json",
    ]));
    assert_eq!(
        both.run(step(&["put", "lk", "v", "--lease", "{lease}"]))
            .stdout,
        "OK\n"
    );
    assert_eq!(
        both.run(step(&["lease", "timetolive", "{lease}"])).stdout,
        "lease <lease-1> granted with TTL(60s), remaining(<n>s)\n"
    );
    assert_eq!(
        both.run(step(&["lease", "timetolive", "--keys", "{lease}"]))
            .stdout,
        "lease <lease-1> granted with TTL(60s), remaining(<n>s), attached keys([lk])\n"
    );
    both.run(step(&[
        "lease",
        "timetolive",
        "--keys",
        "{lease}",
        "-w",
        "json",
    ]));
    assert_eq!(
        both.run(step(&["lease", "list"])).stdout,
        "found 1 leases\n<lease-1>\n"
    );
    let attached = both.run(step(&["get", "lk", "-w", "json"]));
    assert!(
        attached.stdout.contains(r#""lease":<lease-1>"#),
        "{attached:?}"
    );
    assert_eq!(
        both.run(step(&["lease", "revoke", "{lease}"])).stdout,
        "lease <lease-1> revoked\n"
    );
    assert_eq!(both.run(step(&["get", "lk"])).stdout, "");
    assert_eq!(
        both.run(step(&["lease", "timetolive", "{lease}"])).stdout,
        "lease <lease-1> already expired\n"
    );
    let expired = both.run(step(&["lease", "keep-alive", "--once", "{lease}"]));
    assert!(
        expired
            .stderr
            .contains("etcdserver: requested lease not found"),
        "{expired:?}"
    );
    let unknown = both.run(step(&["put", "x", "y", "--lease", "1234"]));
    assert!(
        unknown
            .stderr
            .contains("code = NotFound desc = etcdserver: requested lease not found"),
        "{unknown:?}"
    );

    // Locks: a command under the lock gets the key and the fencing revision; two holders
    // take turns.
    assert_eq!(
        both.run(step(&["lock", "mylock", "echo", "X"])).stdout,
        "X\n"
    );
    let environment = both.run(step(&[
        "lock",
        "mylock",
        "--",
        "sh",
        "-c",
        "echo $ETCD_LOCK_KEY $ETCD_LOCK_REV",
    ]));
    assert!(
        Regex::new(r"^mylock/<session> \d+\n$")
            .unwrap()
            .is_match(&environment.stdout),
        "{environment:?}"
    );
    let failing = both.run(step(&["lock", "mylock", "--", "sh", "-c", "exit 3"]));
    assert_eq!(failing.stderr, "Error: exit status 3\n");
    both.flow("two lock holders", lock_flow);

    // Elections.
    let election = both.flow("elect", elect_flow);
    assert!(
        election.contains(
            "first candidate: exit Some(0)\n--- stdout\nmyelection/<session>\nproposal1\n"
        ),
        "{election}"
    );
    assert!(
        election.contains(
            "observer: exit None\n--- stdout\nmyelection/<session>\nproposal1\nmyelection/<session>\nproposal2\n"
        ),
        "{election}"
    );

    // Members and endpoints. Strata lists three members where etcd lists one; once ids,
    // names and addresses are normalised, each of Strata's lines equals etcd's.
    assert_eq!(
        both.run(step(&["member", "list"]).dedup_lines()).stdout,
        "<id>, started, <name>, <url>, <url>, false\n"
    );
    both.run(step(&["member", "list", "-w", "table"]).dedup_lines());
    let members = both.strata.ok(&["member", "list", "-w", "json"]);
    let members: serde_json::Value = serde_json::from_str(&members).unwrap();
    let client_urls: BTreeSet<String> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["clientURLs"].as_array().unwrap().clone())
        .map(|url| url.as_str().unwrap().to_string())
        .collect();
    let expected: BTreeSet<String> = grpc_endpoints
        .iter()
        .map(|addr| format!("http://{addr}"))
        .collect();
    assert_eq!(
        client_urls, expected,
        "members advertise their gRPC addresses"
    );

    assert_eq!(
        both.run(step(&["endpoint", "status"]).one_endpoint())
            .stdout,
        "<addr>, <id>, <version>, <size>, true, false, <term>, <index>, <index>, \n"
    );
    both.run(step(&["endpoint", "status", "-w", "json"]).one_endpoint());
    both.run(step(&["endpoint", "status", "-w", "table"]).one_endpoint());
    // etcdctl 3.4 prints the health of each endpoint on stderr.
    assert_eq!(
        both.run(step(&["endpoint", "health"]).one_endpoint())
            .stderr,
        "<addr> is healthy: successfully committed proposal: took = <duration>\n"
    );
    both.run(step(&["endpoint", "health", "-w", "json"]).one_endpoint());
    // Strata's three members, at the client URLs the member list advertises. (`--cluster`
    // would do this itself, but etcdctl 3.4 then sends the whole URL as the HTTP/2
    // `:authority`, "http://127.0.0.1:PORT", which Go's HTTP/2 server accepts and hyper's
    // refuses with PROTOCOL_ERROR; see etcd-io/etcd#13192 and hyperium/h2#525.)
    let members: Vec<String> = client_urls
        .iter()
        .map(|url| url.trim_start_matches("http://").to_string())
        .collect();
    let members = members.join(",");
    let statuses = both.strata.run_on(&members, &["endpoint", "status"], "");
    assert!(statuses.status.success(), "{statuses:?}");
    let statuses = String::from_utf8(statuses.stdout).unwrap();
    let line = Regex::new(
        r"^127\.0\.0\.1:\d+, \d+, 3\.4\.[^,]+, [^,]+, (true|false), false, \d+, \d+, \d+, $",
    )
    .unwrap();
    assert_eq!(statuses.lines().count(), 3, "{statuses}");
    let mut leaders = 0;
    for status in statuses.lines() {
        let fields = line
            .captures(status)
            .unwrap_or_else(|| panic!("unexpected status line {status:?}"));
        leaders += usize::from(&fields[1] == "true");
    }
    assert_eq!(leaders, 1, "exactly one leader:\n{statuses}");
    let health = both.strata.run_on(&members, &["endpoint", "health"], "");
    assert!(health.status.success(), "{health:?}");
    let health = String::from_utf8(health.stderr).unwrap();
    assert_eq!(
        health
            .matches("is healthy: successfully committed proposal")
            .count(),
        3,
        "{health}"
    );

    // Compaction, and reading or watching a compacted revision.
    both.run(step(&["put", "c", "1", "-w", "json"]).capture_revision("c1"));
    both.run(step(&["put", "c", "2", "-w", "json"]).capture_revision("c2"));
    both.run(step(&["put", "c", "3"]));
    let compacted = both.run(step(&["compaction", "{c2}"]));
    assert!(
        Regex::new(r"^compacted revision \d+\n$")
            .unwrap()
            .is_match(&compacted.stdout),
        "{compacted:?}"
    );
    let gone = both.run(step(&["get", "c", "--rev", "{c1}"]));
    assert_ne!(gone.code, Some(0), "{gone:?}");
    assert!(
        gone.stderr.contains("required revision has been compacted"),
        "{gone:?}"
    );
    assert_eq!(
        both.run(step(&["get", "c", "--rev", "{c2}", "--print-value-only"]))
            .stdout,
        "2\n"
    );
    let again = both.run(step(&["compaction", "{c2}"]));
    assert!(
        again
            .stderr
            .contains("required revision has been compacted"),
        "{again:?}"
    );
    let watch = both.run(step(&["watch", "c", "--rev", "{c1}"]));
    assert!(
        watch.stderr.contains(
            "watch was canceled (etcdserver: mvcc: required revision has been compacted)"
        ),
        "{watch:?}"
    );
    assert_eq!(
        both.run(step(&["get", "c", "--print-value-only"])).stdout,
        "3\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_etcdctl_prints_what_etcd_prints() {
    let mut cluster = Cluster::start(3, GRPC_ON_ANY_PORT).await;
    let mut etcd = EtcdProc::start(cluster.root.path(), &[]).await;
    let leader = cluster.wait_for_leader().await;
    let grpc_endpoints = cluster.grpc_endpoints();
    let leader_endpoint = cluster.node(leader).grpc_addr().to_string();
    let scratch = |name: &str| {
        let dir = cluster.root.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    };
    let mut both = Both {
        etcd: Side {
            name: "etcd",
            endpoints: etcd.client.clone(),
            one_endpoint: etcd.client.clone(),
            dir: scratch("etcd-scratch"),
            vars: Vec::new(),
            leases: Vec::new(),
        },
        strata: Side {
            name: "strata",
            endpoints: grpc_endpoints.join(","),
            one_endpoint: leader_endpoint,
            dir: scratch("strata-scratch"),
            vars: Vec::new(),
            leases: Vec::new(),
        },
    };
    let endpoints = grpc_endpoints.clone();
    let outcome = tokio::task::spawn_blocking(move || scenario(&mut both, &endpoints)).await;
    if let Err(failure) = outcome {
        std::panic::resume_unwind(failure.into_panic());
    }
    assert!(etcd.is_running(), "etcd died:\n{}", etcd.logs());
    for node in &cluster.nodes {
        node.assert_no_panic();
    }
}

/// etcd's order of work: `member add` first, start the node afterwards. The member is a voter
/// at once (as etcd's `MemberAdd` makes it: a fourth voter, so the three running ones still
/// make a majority), and the node joins when it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_member_add_before_the_node_starts_as_with_etcd() {
    let mut cluster = Cluster::start(3, GRPC_ON_ANY_PORT).await;
    let grpc = cluster.nodes[0].grpc_addr().to_string();
    let raft = {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        free.local_addr().unwrap().to_string()
    };
    let out = common::run_with_deadline(
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={grpc}"))
            .args(["member", "add", "n4"])
            .arg(format!("--peer-urls=http://{raft}")),
        b"",
        Duration::from_secs(30),
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("added to cluster"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = cluster.nodes[0].status().await.unwrap();
    let added = status.members.iter().find(|m| m.raft_addr == raft).unwrap();
    assert_ne!(added.role, "learner", "{status:?}");

    // The node starts afterwards and catches up.
    let node = common::NodeProc::start_on(added.id, cluster.root.path(), None, &raft, &[]).await;
    cluster.client().put("after-join", "x").await.unwrap();
    let commit = cluster.nodes[0].status().await.unwrap().commit_index;
    cluster.nodes.push(node);
    cluster.wait_applied(added.id, commit).await;
}
