//! `strata monitor rules test` against `promtool test rules` (Prometheus 2.42, Debian package
//! prometheus; scripts/test.sh installs it): the same rule unit-test files pass on both or
//! fail on both, and a failing file is reported in the same words.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

/// A recording rule feeding an alert with `for` and templated labels and annotations, and
/// an alert with `keep_firing_for`.
const RULES: &str = r#"groups:
  - name: requests
    rules:
      - record: job:http_requests:rate1m
        expr: sum by (job) (rate(http_requests_total[1m]))
      - record: job:http_errors:ratio_rate1m
        expr: sum by (job) (rate(http_requests_total{code="500"}[1m])) / job:http_requests:rate1m
      - alert: HighErrorRatio
        expr: job:http_errors:ratio_rate1m > 0.2
        for: 2m
        labels:
          severity: '{{ if ge $value 0.5 }}page{{ else }}ticket{{ end }}'
        annotations:
          summary: '{{ $labels.job }}: {{ $value | humanizePercentage }} of requests fail'
          value: '{{ printf "%.3f" $value }}'
  - name: targets
    rules:
      - alert: InstanceDown
        expr: up == 0
        for: 1m
        keep_firing_for: 1m
        labels:
          severity: page
        annotations:
          summary: 'Instance {{ $labels.instance }} of {{ $labels.job }} is down'
"#;

/// Passes: alerts pending, firing, resolved at several times; `rate`, `sum` and `increase`;
/// input series with `_` and `stale`.
const GOOD: &str = r#"rule_files:
  - rules.yml
evaluation_interval: 30s
tests:
  - interval: 15s
    input_series:
      # 4 requests a second, always.
      - series: 'http_requests_total{job="api", code="200"}'
        values: '0+60x60'
      # No errors for 2m, then 2 a second for 6m, then none; a scrape lost at 9m.
      - series: 'http_requests_total{job="api", code="500"}'
        values: '0x8 30+30x23 720x3 _ 720x20'
      # Instance b answers, is down from 2m to 4m, misses scrapes, then stops being exposed.
      - series: 'up{job="api", instance="a"}'
        values: '1x60'
      - series: 'up{job="api", instance="b"}'
        values: '1x7 0x8 _x3 1x5 stale'
    alert_rule_test:
      - eval_time: 1m
        alertname: HighErrorRatio
      # Returned since 2m30s: pending for 2m.
      - eval_time: 4m
        alertname: HighErrorRatio
      - eval_time: 5m
        alertname: HighErrorRatio
        exp_alerts:
          - exp_labels:
              job: api
              severity: ticket
            exp_annotations:
              summary: 'api: 33.33% of requests fail'
              value: '0.333'
      - eval_time: 10m
        alertname: HighErrorRatio
      - eval_time: 2m
        alertname: InstanceDown
      - eval_time: 3m
        alertname: InstanceDown
        exp_alerts:
          - exp_labels: {job: api, instance: b, severity: page}
            exp_annotations: {summary: 'Instance b of api is down'}
      # Up again at 5m, kept firing for 1m, then resolved.
      - eval_time: 5m30s
        alertname: InstanceDown
        exp_alerts:
          - exp_labels: {job: api, instance: b, severity: page}
            exp_annotations: {summary: 'Instance b of api is down'}
      - eval_time: 7m
        alertname: InstanceDown
    promql_expr_test:
      - expr: job:http_requests:rate1m
        eval_time: 5m
        exp_samples:
          - labels: 'job:http_requests:rate1m{job="api"}'
            value: 6
      - expr: sum(increase(http_requests_total{code="500"}[2m]))
        eval_time: 6m
        exp_samples:
          - labels: '{}'
            value: 240
      - expr: increase(http_requests_total{code="500"}[2m])
        eval_time: 10m
        exp_samples:
          - labels: '{job="api", code="500"}'
            value: 0
      - expr: rate(http_requests_total{code="200"}[5m])
        eval_time: 10m
        exp_samples:
          - labels: '{job="api", code="200"}'
            value: 4
      - expr: up == 0
        eval_time: 4m
        exp_samples:
          - labels: 'up{job="api", instance="b"}'
            value: 0
      # The missed scrapes at 4m.. leave the last sample in the lookback; stale ends it.
      - expr: up{instance="b"}
        eval_time: 4m45s
        exp_samples:
          - labels: 'up{job="api", instance="b"}'
            value: 0
      - expr: count(up)
        eval_time: 6m30s
        exp_samples:
          - labels: '{}'
            value: 1
      - expr: ALERTS{alertname="HighErrorRatio"}
        eval_time: 4m
        exp_samples:
          - labels: 'ALERTS{alertname="HighErrorRatio", alertstate="pending", job="api", severity="ticket"}'
            value: 1
"#;

/// Fails three ways: an alert expected while still pending, one expected after
/// `keep_firing_for` ran out, and a wrong value.
const BAD: &str = r#"rule_files:
  - rules.yml
evaluation_interval: 30s
tests:
  - name: wrong expectations
    interval: 15s
    input_series:
      - series: 'http_requests_total{job="api", code="200"}'
        values: '0+60x60'
      - series: 'http_requests_total{job="api", code="500"}'
        values: '0x8 30+30x23 720x3 _ 720x20'
      - series: 'up{job="api", instance="b"}'
        values: '1x7 0x8 _x3 1x5 stale'
    alert_rule_test:
      # Still pending at 4m.
      - eval_time: 4m
        alertname: HighErrorRatio
        exp_alerts:
          - exp_labels: {job: api, severity: ticket}
            exp_annotations:
              summary: 'api: 33.33% of requests fail'
              value: '0.333'
      # keep_firing_for ended at 6m.
      - eval_time: 6m
        alertname: InstanceDown
        exp_alerts:
          - exp_labels: {job: api, instance: b, severity: page}
            exp_annotations: {summary: 'Instance b of api is down'}
    promql_expr_test:
      - expr: sum(increase(http_requests_total{code="500"}[2m]))
        eval_time: 6m
        exp_samples:
          - labels: '{}'
            value: 200
"#;

/// What a run printed, and whether it succeeded.
#[derive(Debug)]
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn files(dir: &Path) {
    std::fs::write(dir.join("rules.yml"), RULES).unwrap();
    std::fs::write(dir.join("good.yml"), GOOD).unwrap();
    std::fs::write(dir.join("bad.yml"), BAD).unwrap();
}

fn run(mut cmd: Command, what: &str) -> Run {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {what}: {e}; promtool comes with the Debian package prometheus (scripts/test.sh installs it)")
    });
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn promtool(dir: &Path, test_files: &[&str]) -> Run {
    let mut cmd = Command::new("promtool");
    cmd.args(["test", "rules"])
        .args(test_files)
        .current_dir(dir);
    run(cmd, "promtool")
}

fn strata(dir: &Path, test_files: &[&str]) -> Run {
    let mut cmd = Command::new(common::strata_bin());
    cmd.args(["monitor", "rules", "test"])
        .args(test_files)
        .current_dir(dir);
    let mut run = run(cmd, "strata");
    // The binary's own last line (`✘ ...`) on failure; promtool has none.
    run.stderr = run
        .stderr
        .lines()
        .filter(|l| !l.starts_with('✘'))
        .map(|l| format!("{l}\n"))
        .collect();
    run
}

#[test]
fn t01_a_passing_file_passes_on_both() {
    let dir = tempfile::tempdir().unwrap();
    files(dir.path());
    let prom = promtool(dir.path(), &["good.yml"]);
    let ours = strata(dir.path(), &["good.yml"]);
    assert!(prom.ok, "promtool: {prom:?}");
    assert!(ours.ok, "strata: {ours:?}");
    assert_eq!(ours.stdout, "Unit Testing:  good.yml\n  SUCCESS\n\n");
    assert_eq!(ours.stdout, prom.stdout);
}

#[test]
fn t02_a_wrong_expectation_fails_on_both_with_the_same_report() {
    let dir = tempfile::tempdir().unwrap();
    files(dir.path());
    let prom = promtool(dir.path(), &["bad.yml"]);
    let ours = strata(dir.path(), &["bad.yml"]);
    assert!(!prom.ok, "promtool passed: {prom:?}");
    assert!(!ours.ok, "strata passed: {ours:?}");
    assert!(
        ours.stderr
            .contains("    alertname: HighErrorRatio, time: 4m, ")
            && ours
                .stderr
                .contains("    alertname: InstanceDown, time: 6m, ")
            && ours.stderr.contains("        got: {} 2.4E+02"),
        "{}",
        ours.stderr
    );
    assert_eq!(ours.stdout, prom.stdout);
    assert_eq!(ours.stderr, prom.stderr);
}

#[test]
fn t03_several_files_in_one_run_report_each() {
    let dir = tempfile::tempdir().unwrap();
    files(dir.path());
    let prom = promtool(dir.path(), &["good.yml", "bad.yml"]);
    let ours = strata(dir.path(), &["good.yml", "bad.yml"]);
    assert!(!prom.ok && !ours.ok, "promtool: {prom:?}\nstrata: {ours:?}");
    assert!(ours
        .stdout
        .starts_with("Unit Testing:  good.yml\n  SUCCESS\n\nUnit Testing:  bad.yml\n"));
    assert_eq!(ours.stdout, prom.stdout);
    assert_eq!(ours.stderr, prom.stderr);
}
