//! Rule unit tests in `promtool test rules`'s file format, run by the monitor's own engine and
//! alert state machine, with the semantics of Prometheus 2.42's `cmd/promtool/unittest.go`:
//!
//! - A test file names `rule_files` (relative to the test file; `*`, `?` and `[..]` globs),
//!   an `evaluation_interval` (default 1m), an optional `group_eval_order`, and `tests`. Each
//!   test group has its own in-memory series, loaded from `input_series` in promtool's
//!   expanding notation (see [`parse_values`]), one value every `interval`, starting at 0.
//! - Every rule group is evaluated at 0, `evaluation_interval`, ... up to the largest
//!   `eval_time` of the test group, after the input samples up to that time are loaded;
//!   each rule's output is stored at once (the next rule sees it), and series a rule stops
//!   returning get a staleness marker, as Prometheus's rule groups write them. Groups run in
//!   file order, stably sorted by `group_eval_order`. A rule that fails to evaluate ends the
//!   test group.
//! - An `alert_rule_test` compares, after the evaluation at or just before its `eval_time`,
//!   the set of firing alerts of the rules named `alertname` (labels including `alertname`
//!   and the rule's labels; annotations expanded) with `exp_alerts`.
//! - A `promql_expr_test` runs after all evaluations, against what was loaded by then (as in
//!   promtool, input samples after the last evaluation are not), and compares the result, a
//!   vector or a scalar, with `exp_samples` as a set. Values are equal when they are within a
//!   relative 1e-12 (promtool wants them bit for bit; the tolerance absorbs rounding that
//!   depends on the order of floating-point operations); NaN never equals anything, as in
//!   promtool.
//! - Failures read like promtool's (`alertname: A, time: 5m, exp:..., got:...`).
//!
//! - Subqueries without a step run at `evaluation_interval`, as promtool runs them (the step
//!   is written into the expression; the engine's own default is 1m).
//! - `external_labels` feed `$externalLabels` in templates; `external_url` is accepted and
//!   unused.
//!
//! What differs: the value tolerance above; the query sample limit is the engine's (50
//! million), not the test loader's 10 000; rule files are checked by [`rules::parse_file`],
//! not by Prometheus's loader, and their errors, like bad input series and unknown fields,
//! are worded differently; templates are the subset [`rules::expand_with`] has (a template
//! error prints nothing rather than `<error expanding template: ...>`); a rule whose result
//! has two series with the same labels is not an error.

use crate::model::{is_stale, Labels, Queryable, Series, STALE_NAN};
use crate::promql::{Engine, Value};
use crate::rules::{self, go_format_e, go_quote, Group, Rules};
use promql_parser::label::Matcher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::sync::RwLock;
use std::time::Duration;
use yaml_rust2::parser::{EventReceiver, Parser};
use yaml_rust2::scanner::TScalarStyle;
use yaml_rust2::Event;

/// What running one test file found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Test cases in the file (`alert_rule_test` and `promql_expr_test` entries).
    pub tests: usize,
    /// Failures, each formatted as promtool prints it; empty when the file passed.
    pub failures: Vec<String>,
    /// Warnings (a `rule_files` pattern that matched no file), as promtool prints them
    /// after `  WARNING: `.
    pub warnings: Vec<String>,
}

/// Runs the rule unit tests of the file at `path`. `Err` when the file cannot be read or
/// is not a test file; failed tests are in [`Report::failures`].
pub fn run_file(path: &Path) -> Result<Report, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file = TestFile::parse(&text)?;
    let base = path.parent().unwrap_or(Path::new(""));
    let mut report = Report {
        tests: file
            .tests
            .iter()
            .map(|t| t.alert_tests.len() + t.promql_tests.len())
            .sum(),
        ..Report::default()
    };
    let mut paths: Vec<PathBuf> = Vec::new();
    for pattern in &file.rule_files {
        let pattern = if pattern.is_empty() || Path::new(pattern).is_absolute() {
            PathBuf::from(pattern)
        } else {
            base.join(pattern)
        };
        let found = glob(&pattern);
        if found.is_empty() {
            report
                .warnings
                .push(format!("no file match pattern {}", pattern.display()));
        }
        for p in found {
            if !paths.contains(&p) {
                paths.push(p);
            }
        }
    }
    let mut rule_files: Vec<(String, Vec<Group>)> = Vec::new();
    let mut load_errors = Vec::new();
    for p in &paths {
        let name = p.display().to_string();
        match std::fs::read_to_string(p) {
            Ok(text) => match rules::parse_file(&name, &text) {
                Ok(groups) => rule_files.push((name, groups)),
                Err(e) => load_errors.push(e),
            },
            Err(e) => load_errors.push(format!("{name}: {e}")),
        }
    }
    let order: HashMap<&str, usize> = file
        .group_eval_order
        .iter()
        .enumerate()
        .map(|(i, g)| (g.as_str(), i))
        .collect();
    if order.len() < file.group_eval_order.len() {
        let mut seen = HashSet::new();
        let repeated = file
            .group_eval_order
            .iter()
            .find(|g| !seen.insert(g.as_str()))
            .cloned()
            .unwrap_or_default();
        report.failures.push(format!(
            "group name repeated in evaluation order: {repeated}"
        ));
        return Ok(report);
    }
    for group in &file.tests {
        if !load_errors.is_empty() {
            report.failures.extend(load_errors.iter().cloned());
            continue;
        }
        let run = GroupRun {
            test: group,
            eval_interval_ms: file.evaluation_interval_ms,
            order: &order,
            rule_files: &rule_files,
        };
        // A rule that fails is reported as a failure; the monitor's warning is noise here.
        let failures =
            tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
                run.run()
            });
        report.failures.extend(failures);
    }
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// The file

/// A test file.
#[derive(Debug, Default)]
struct TestFile {
    rule_files: Vec<String>,
    evaluation_interval_ms: i64,
    group_eval_order: Vec<String>,
    tests: Vec<TestGroup>,
}

/// One entry of `tests`.
#[derive(Debug, Default)]
struct TestGroup {
    name: String,
    interval_ms: i64,
    input_series: Vec<(String, String)>,
    alert_tests: Vec<AlertTest>,
    promql_tests: Vec<PromqlTest>,
    external_labels: Labels,
}

#[derive(Debug)]
struct AlertTest {
    eval_time_ms: i64,
    alertname: String,
    exp_alerts: Vec<(BTreeMap<String, String>, BTreeMap<String, String>)>,
}

#[derive(Debug)]
struct PromqlTest {
    expr: String,
    eval_time_ms: i64,
    exp_samples: Vec<(String, f64)>,
}

impl TestFile {
    fn parse(text: &str) -> Result<TestFile, String> {
        let mut loader = NodeLoader::default();
        Parser::new_from_str(text)
            .load(&mut loader, false)
            .map_err(|e| format!("yaml: {e}"))?;
        let Some(doc) = loader.doc else {
            return Ok(TestFile::default());
        };
        let top = map(
            &doc,
            "the test file",
            &[
                "rule_files",
                "evaluation_interval",
                "group_eval_order",
                "tests",
            ],
        )?;
        let mut file = TestFile {
            evaluation_interval_ms: duration(
                top.get("evaluation_interval"),
                "evaluation_interval",
            )?,
            ..TestFile::default()
        };
        if file.evaluation_interval_ms == 0 {
            file.evaluation_interval_ms = 60_000;
        }
        for y in list(top.get("rule_files"), "rule_files")? {
            file.rule_files.push(scalar(Some(y), "rule_files")?);
        }
        for y in list(top.get("group_eval_order"), "group_eval_order")? {
            file.group_eval_order
                .push(scalar(Some(y), "group_eval_order")?);
        }
        for (i, y) in list(top.get("tests"), "tests")?.iter().enumerate() {
            file.tests
                .push(TestGroup::parse(y, &format!("tests[{i}]"))?);
        }
        Ok(file)
    }
}

impl TestGroup {
    fn parse(y: &Node, at: &str) -> Result<TestGroup, String> {
        let m = map(
            y,
            at,
            &[
                "interval",
                "input_series",
                "alert_rule_test",
                "promql_expr_test",
                "external_labels",
                "external_url",
                "name",
            ],
        )?;
        let mut group = TestGroup {
            name: scalar(m.get("name"), &format!("{at}.name"))?,
            interval_ms: duration(m.get("interval"), &format!("{at}.interval"))?,
            ..TestGroup::default()
        };
        scalar(m.get("external_url"), &format!("{at}.external_url"))?;
        let external = string_map(m.get("external_labels"), &format!("{at}.external_labels"))?;
        group.external_labels = Labels::new(external.into_iter().collect());
        for (i, s) in list(m.get("input_series"), "input_series")?
            .iter()
            .enumerate()
        {
            let at = format!("{at}.input_series[{i}]");
            let s = map(s, &at, &["series", "values"])?;
            group.input_series.push((
                scalar(s.get("series"), &format!("{at}.series"))?,
                scalar(s.get("values"), &format!("{at}.values"))?,
            ));
        }
        for (i, a) in list(m.get("alert_rule_test"), "alert_rule_test")?
            .iter()
            .enumerate()
        {
            let at = format!("{at}.alert_rule_test[{i}]");
            let a = map(a, &at, &["eval_time", "alertname", "exp_alerts"])?;
            let mut test = AlertTest {
                eval_time_ms: duration(a.get("eval_time"), &format!("{at}.eval_time"))?,
                alertname: scalar(a.get("alertname"), &format!("{at}.alertname"))?,
                exp_alerts: Vec::new(),
            };
            for (j, e) in list(a.get("exp_alerts"), "exp_alerts")?.iter().enumerate() {
                let at = format!("{at}.exp_alerts[{j}]");
                let e = map(e, &at, &["exp_labels", "exp_annotations"])?;
                test.exp_alerts.push((
                    string_map(e.get("exp_labels"), &format!("{at}.exp_labels"))?,
                    string_map(e.get("exp_annotations"), &format!("{at}.exp_annotations"))?,
                ));
            }
            group.alert_tests.push(test);
        }
        for (i, p) in list(m.get("promql_expr_test"), "promql_expr_test")?
            .iter()
            .enumerate()
        {
            let at = format!("{at}.promql_expr_test[{i}]");
            let p = map(p, &at, &["expr", "eval_time", "exp_samples"])?;
            let mut test = PromqlTest {
                expr: scalar(p.get("expr"), &format!("{at}.expr"))?,
                eval_time_ms: duration(p.get("eval_time"), &format!("{at}.eval_time"))?,
                exp_samples: Vec::new(),
            };
            for (j, s) in list(p.get("exp_samples"), "exp_samples")?
                .iter()
                .enumerate()
            {
                let at = format!("{at}.exp_samples[{j}]");
                let s = map(s, &at, &["labels", "value"])?;
                test.exp_samples.push((
                    scalar(s.get("labels"), &format!("{at}.labels"))?,
                    float(s.get("value"), &format!("{at}.value"))?,
                ));
            }
            group.promql_tests.push(test);
        }
        Ok(group)
    }
}

/// A YAML node with its scalars as written: promtool decodes scalars into Go strings from
/// their text, so `values: 0x5` is `0x5` (0 six times), not the integer 5.
#[derive(Debug, Clone)]
enum Node {
    Scalar { text: String, plain: bool },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    fn is_null(&self) -> bool {
        matches!(self, Node::Scalar { text, plain: true } if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }
}

/// Builds the first document's [`Node`] tree from the parser's events (anchors and aliases
/// included).
#[derive(Default)]
struct NodeLoader {
    open: Vec<(Node, usize)>,
    keys: Vec<Option<Node>>,
    anchors: HashMap<usize, Node>,
    doc: Option<Node>,
}

impl NodeLoader {
    fn insert(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.open.last_mut() {
            None => {
                self.doc.get_or_insert(node);
            }
            Some((Node::Seq(items), _)) => items.push(node),
            Some((Node::Map(pairs), _)) => {
                if let Some(key) = self.keys.last_mut() {
                    match key.take() {
                        None => *key = Some(node),
                        Some(k) => pairs.push((k, node)),
                    }
                }
            }
            Some((Node::Scalar { .. }, _)) => {}
        }
    }
}

impl EventReceiver for NodeLoader {
    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Scalar(text, style, anchor, _) => {
                let plain = style == TScalarStyle::Plain;
                self.insert(Node::Scalar { text, plain }, anchor);
            }
            Event::SequenceStart(anchor, _) => self.open.push((Node::Seq(Vec::new()), anchor)),
            Event::MappingStart(anchor, _) => {
                self.open.push((Node::Map(Vec::new()), anchor));
                self.keys.push(None);
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if matches!(ev, Event::MappingEnd) {
                    self.keys.pop();
                }
                if let Some((node, anchor)) = self.open.pop() {
                    self.insert(node, anchor);
                }
            }
            Event::Alias(id) => {
                let node = self.anchors.get(&id).cloned().unwrap_or(Node::Scalar {
                    text: String::new(),
                    plain: true,
                });
                self.insert(node, 0);
            }
            _ => {}
        }
    }
}

/// A mapping's fields by name (null ones left out).
struct Fields<'a>(Vec<(&'a str, &'a Node)>);

impl<'a> Fields<'a> {
    fn get(&self, key: &str) -> Option<&'a Node> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
}

/// `y` as a mapping with only the `allowed` fields (promtool reads the file strictly).
fn map<'a>(y: &'a Node, at: &str, allowed: &[&str]) -> Result<Fields<'a>, String> {
    if y.is_null() {
        return Ok(Fields(Vec::new()));
    }
    let Node::Map(pairs) = y else {
        return Err(format!("{at}: not a mapping"));
    };
    let mut fields = Vec::new();
    for (k, v) in pairs {
        let Node::Scalar { text: k, .. } = k else {
            return Err(format!("{at}: a key is not a string"));
        };
        if !allowed.contains(&k.as_str()) {
            return Err(format!("{at}: field {k} not found"));
        }
        if !v.is_null() {
            fields.push((k.as_str(), v));
        }
    }
    Ok(Fields(fields))
}

fn list<'a>(y: Option<&'a Node>, at: &str) -> Result<&'a [Node], String> {
    match y {
        None => Ok(&[]),
        Some(Node::Seq(items)) => Ok(items),
        Some(_) => Err(format!("{at}: not a list")),
    }
}

/// A scalar as written (absent or null: "").
fn scalar(y: Option<&Node>, at: &str) -> Result<String, String> {
    match y {
        None => Ok(String::new()),
        Some(n) if n.is_null() => Ok(String::new()),
        Some(Node::Scalar { text, .. }) => Ok(text.clone()),
        Some(_) => Err(format!("{at}: not a string")),
    }
}

/// A YAML 1.1 number, as Go's YAML decoder reads one into a float64.
fn float(y: Option<&Node>, at: &str) -> Result<f64, String> {
    let bad = || format!("{at}: not a number");
    let text = match y {
        None => return Ok(0.0),
        Some(n) if n.is_null() => return Ok(0.0),
        Some(Node::Scalar { text, plain: true }) => text.replace('_', ""),
        Some(_) => return Err(bad()),
    };
    let (negative, digits) = match text.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, text.strip_prefix('+').unwrap_or(&text)),
    };
    let v = match digits {
        ".inf" | ".Inf" | ".INF" => f64::INFINITY,
        ".nan" | ".NaN" | ".NAN" => f64::NAN,
        d if d.starts_with("0x") => i64::from_str_radix(&d[2..], 16).map_err(|_| bad())? as f64,
        d if d.starts_with("0o") => i64::from_str_radix(&d[2..], 8).map_err(|_| bad())? as f64,
        d if d.starts_with("0b") => i64::from_str_radix(&d[2..], 2).map_err(|_| bad())? as f64,
        d if d.bytes().all(|b| {
            b.is_ascii_digit() || b == b'.' || b == b'e' || b == b'E' || b == b'+' || b == b'-'
        }) && d.bytes().any(|b| b.is_ascii_digit()) =>
        {
            d.parse::<f64>().map_err(|_| bad())?
        }
        _ => return Err(bad()),
    };
    Ok(if negative { -v } else { v })
}

fn duration(y: Option<&Node>, at: &str) -> Result<i64, String> {
    let text = scalar(y, at)?;
    if text.is_empty() {
        return Ok(0);
    }
    parse_duration(&text).map_err(|e| format!("{at}: {e}"))
}

fn string_map(y: Option<&Node>, at: &str) -> Result<BTreeMap<String, String>, String> {
    match y {
        None => Ok(BTreeMap::new()),
        Some(Node::Map(pairs)) => pairs
            .iter()
            .map(|(k, v)| Ok((scalar(Some(k), at)?, scalar(Some(v), at)?)))
            .collect(),
        Some(_) => Err(format!("{at}: not a mapping")),
    }
}

/// Prometheus's duration (`model.ParseDuration`): `0`, or units `y w d h m s ms` in that
/// order, each at most once, in milliseconds.
pub fn parse_duration(text: &str) -> Result<i64, String> {
    const UNITS: [(&str, i64); 7] = [
        ("y", 365 * 86_400_000),
        ("w", 7 * 86_400_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ];
    let bad = || format!("not a valid duration string: {text:?}");
    if text == "0" {
        return Ok(0);
    }
    if text.is_empty() {
        return Err("empty duration string".into());
    }
    let mut rest = text;
    let mut next_unit = 0;
    let mut total: i64 = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: i64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let i = UNITS[next_unit..]
            .iter()
            .position(|(u, _)| *u == unit)
            .ok_or_else(bad)?
            + next_unit;
        total = n
            .checked_mul(UNITS[i].1)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(|| "duration out of range".to_string())?;
        next_unit = i + 1;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// A duration as Prometheus prints one (`model.Duration`): `1h30m`, `0s`, `2w`.
pub fn format_duration(ms: i64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    let mut ms = ms;
    let mut out = String::new();
    for (unit, mult, exact) in [
        ("y", 365 * 86_400_000, true),
        ("w", 7 * 86_400_000, true),
        ("d", 86_400_000, false),
        ("h", 3_600_000, false),
        ("m", 60_000, false),
        ("s", 1000, false),
        ("ms", 1, false),
    ] {
        if exact && ms % mult != 0 {
            continue;
        }
        let n = ms / mult;
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
            ms -= n * mult;
        }
    }
    out
}

/// A duration as Go's `time.Duration` prints one: `1m0s`, `1h0m0s`, `1.5s`, `500ms`.
fn format_go_duration(ms: i64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    if ms.abs() < 1000 {
        return format!("{ms}ms");
    }
    let sign = if ms < 0 { "-" } else { "" };
    let ms = ms.unsigned_abs();
    let (h, m, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let seconds = if frac == 0 {
        format!("{s}s")
    } else {
        format!("{s}.{}s", format!("{frac:03}").trim_end_matches('0'))
    };
    if h > 0 {
        format!("{sign}{h}h{m}m{seconds}")
    } else if m > 0 {
        format!("{sign}{m}m{seconds}")
    } else {
        format!("{sign}{seconds}")
    }
}

// ---------------------------------------------------------------------------------------------
// Series notation

/// Label pairs sorted by name, `__name__` included, as compared and printed (empty values
/// kept, as promtool keeps them).
pub type LabelPairs = Vec<(String, String)>;

/// Parses a series and its values as promtool's `input_series` joins them
/// (`metric{a="b"} 1+1x3 _ stale`): labels (with `__name__`) and one value per interval.
pub fn parse_series(desc: &str) -> Result<(LabelPairs, Vec<Option<f64>>), String> {
    let (labels, rest) = parse_metric(desc)?;
    if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
        return Err(format!("unexpected {rest:?} after the series"));
    }
    Ok((labels, parse_values(rest)?))
}

/// Parses a label set in series notation (`metric{a="b", c='d'}`, `{__name__="m"}`, `{}`
/// or nothing): the pairs sorted by name, `__name__` included.
pub fn parse_labels(text: &str) -> Result<LabelPairs, String> {
    let (labels, rest) = parse_metric(text)?;
    if !rest.trim().is_empty() {
        return Err(format!("unexpected {:?} after the labels", rest.trim()));
    }
    Ok(labels)
}

/// The label set at the start of `text`, and what follows it.
fn parse_metric(text: &str) -> Result<(LabelPairs, &str), String> {
    let mut pairs = Vec::new();
    let mut rest = text.trim_start();
    let name_len = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(rest.len());
    if name_len > 0 {
        if rest.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!("unexpected {rest:?}: a metric name is needed"));
        }
        pairs.push(("__name__".to_string(), rest[..name_len].to_string()));
        rest = &rest[name_len..];
    }
    if rest.trim_start().starts_with('{') {
        rest = &rest.trim_start()[1..];
        loop {
            rest = rest.trim_start();
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if len == 0 || rest.starts_with(|c: char| c.is_ascii_digit()) {
                return Err(format!("unexpected {rest:?}: a label name is needed"));
            }
            let name = rest[..len].to_string();
            rest = rest[len..].trim_start();
            rest = rest
                .strip_prefix('=')
                .filter(|r| !r.starts_with('~'))
                .ok_or_else(|| format!("unexpected {rest:?}: \"=\" is needed"))?;
            let (value, after) = go_unquote(rest.trim_start())?;
            pairs.push((name, value));
            rest = after.trim_start();
            if let Some(after) = rest.strip_prefix(',') {
                rest = after;
            } else if !rest.starts_with('}') {
                return Err(format!("unexpected {rest:?}: \",\" or \"}}\" is needed"));
            }
        }
    }
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((pairs, rest))
}

/// A Go string literal (`"..."`, `'...'` or `` `...` ``) at the start of `text`: its value
/// and what follows it.
fn go_unquote(text: &str) -> Result<(String, &str), String> {
    let quote = text
        .chars()
        .next()
        .filter(|c| matches!(c, '"' | '\'' | '`'))
        .ok_or_else(|| format!("unexpected {text:?}: a quoted string is needed"))?;
    let mut out = String::new();
    let mut chars = text.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        if c == quote {
            return Ok((out, &text[i + 1..]));
        }
        if c != '\\' || quote == '`' {
            out.push(c);
            continue;
        }
        let (_, e) = chars.next().ok_or("unterminated string")?;
        let mut hex = |n: usize| -> Result<char, String> {
            let digits: String = (0..n)
                .filter_map(|_| chars.next().map(|(_, c)| c))
                .collect();
            u32::from_str_radix(&digits, 16)
                .ok()
                .filter(|_| digits.len() == n)
                .and_then(char::from_u32)
                .ok_or_else(|| format!("bad escape \\{e}{digits}"))
        };
        out.push(match e {
            'a' => '\u{7}',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'v' => '\u{b}',
            '\\' | '"' | '\'' => e,
            'x' => hex(2)?,
            'u' => hex(4)?,
            'U' => hex(8)?,
            '0'..='7' => {
                let mut n = e.to_digit(8).unwrap_or(0);
                for _ in 0..2 {
                    let (_, d) = chars.next().ok_or("unterminated string")?;
                    n = n * 8
                        + d.to_digit(8)
                            .ok_or_else(|| format!("bad octal escape {d:?}"))?;
                }
                char::from_u32(n).ok_or("bad octal escape")?
            }
            other => return Err(format!("unknown escape sequence \\{other}")),
        });
    }
    Err("unterminated string".into())
}

/// Parses promtool's expanding notation, one value per interval: `a` (a value), `a+bxn` and
/// `a-bxn` (n+1 values from `a`, adding `b` each time), `axn` (`a` n+1 times), `_` (no
/// sample), `_xn` (n intervals without samples), and `stale` (a staleness marker). Values
/// may be `Inf`, `-Inf` and `NaN`. `None` is an interval without a sample.
pub fn parse_values(text: &str) -> Result<Vec<Option<f64>>, String> {
    let mut out = Vec::new();
    for item in text.split_whitespace() {
        let bad = |why: &str| format!("bad series value {item:?}: {why}");
        if item == "_" {
            out.push(None);
            continue;
        }
        if let Some(n) = item.strip_prefix("_x") {
            let n = repeat_count(n).ok_or_else(|| bad("a count is needed after x"))?;
            out.extend(std::iter::repeat_n(None, n));
            continue;
        }
        let (mut value, rest) =
            series_value(item).ok_or_else(|| bad("a number or stale is needed"))?;
        if rest.is_empty() {
            out.push(Some(value));
            continue;
        }
        let (step, rest) = match rest.strip_prefix('x') {
            Some(count) => (0.0, count),
            None => {
                let (step, rest) = signed_number(rest).ok_or_else(|| bad("a number is needed"))?;
                if !matches!(rest.chars().next(), Some('x')) {
                    return Err(bad("x and a count are needed after the increment"));
                }
                (step, &rest[1..])
            }
        };
        let n = repeat_count(rest).ok_or_else(|| bad("a count is needed after x"))?;
        for _ in 0..=n {
            out.push(Some(value));
            value += step;
        }
    }
    Ok(out)
}

fn repeat_count(text: &str) -> Option<usize> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `stale`, a number, or a signed number, and what follows it.
fn series_value(text: &str) -> Option<(f64, &str)> {
    if let Some(rest) = text.strip_prefix("stale") {
        if rest.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            return None;
        }
        return Some((f64::from_bits(STALE_NAN), rest));
    }
    if text.starts_with(['+', '-']) {
        return signed_number(text);
    }
    number(text)
}

fn signed_number(text: &str) -> Option<(f64, &str)> {
    let negative = text.starts_with('-');
    let (v, rest) = number(text.strip_prefix(['+', '-'])?)?;
    Some((if negative { -v } else { v }, rest))
}

/// An unsigned number as the PromQL lexer reads one in a series (no hexadecimal: `0x3` is
/// 0 repeated), and what follows it (which must not be alphanumeric but for `x`).
fn number(text: &str) -> Option<(f64, &str)> {
    for special in ["inf", "nan"] {
        if text.len() >= 3 && text[..3].eq_ignore_ascii_case(special) {
            let rest = &text[3..];
            if rest.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                return None;
            }
            return Some((
                if special == "inf" {
                    f64::INFINITY
                } else {
                    f64::NAN
                },
                rest,
            ));
        }
    }
    let bytes = text.as_bytes();
    let digits = |mut i: usize| {
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    let mut end = digits(0);
    let mut any = end > 0;
    if bytes.get(end) == Some(&b'.') {
        let after = digits(end + 1);
        any |= after > end + 1;
        end = after;
    }
    if !any {
        return None;
    }
    if matches!(bytes.get(end), Some(b'e' | b'E')) {
        let mut i = end + 1;
        if matches!(bytes.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let after = digits(i);
        if after > i {
            end = after;
        }
    }
    let rest = &text[end..];
    if rest.starts_with(|c: char| (c.is_ascii_alphanumeric() || c == '_') && c != 'x') {
        return None;
    }
    Some((text[..end].parse().ok()?, rest))
}

// ---------------------------------------------------------------------------------------------
// Running a test group

/// A test group's samples.
#[derive(Default)]
struct MemStore {
    series: RwLock<HashMap<Labels, Vec<(i64, f64)>>>,
}

impl MemStore {
    /// Appends a sample; one not after the series' last is dropped, as Prometheus's head
    /// drops out-of-order and duplicate samples.
    fn append(&self, labels: &Labels, t: i64, v: f64) {
        let mut all = self.series.write().unwrap_or_else(|e| e.into_inner());
        let samples = all.entry(labels.clone()).or_default();
        if samples.last().is_none_or(|&(last, _)| t > last) {
            samples.push((t, v));
        }
    }
}

impl Queryable for MemStore {
    fn select(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Vec<Series> {
        let all = self.series.read().unwrap_or_else(|e| e.into_inner());
        all.iter()
            .filter(|(labels, _)| labels.matches(matchers))
            .filter_map(|(labels, samples)| {
                let from = samples.partition_point(|&(t, _)| t < mint);
                let to = samples.partition_point(|&(t, _)| t <= maxt);
                (from < to).then(|| Series {
                    labels: labels.clone(),
                    samples: samples[from..to].to_vec(),
                })
            })
            .collect()
    }
}

/// One test group of a file, with what it needs.
struct GroupRun<'a> {
    test: &'a TestGroup,
    eval_interval_ms: i64,
    order: &'a HashMap<&'a str, usize>,
    rule_files: &'a [(String, Vec<Group>)],
}

impl GroupRun<'_> {
    fn run(&self) -> Vec<String> {
        let tg = self.test;
        let mut input: Vec<(Labels, Vec<(i64, f64)>)> = Vec::new();
        for (series, values) in &tg.input_series {
            let desc = format!("{series} {values}");
            let (labels, values) = match parse_series(&desc) {
                Ok(parsed) => parsed,
                Err(e) => return vec![format!("    series {}: {e}", go_quote(series))],
            };
            let labels = Labels::new(labels);
            let samples: Vec<(i64, f64)> = values
                .iter()
                .enumerate()
                .filter_map(|(i, v)| v.map(|v| (i as i64 * tg.interval_ms, v)))
                .collect();
            match input.iter_mut().find(|(l, _)| *l == labels) {
                Some(def) => def.1 = samples,
                None => input.push((labels, samples)),
            }
        }
        for test in &tg.alert_tests {
            if test.alertname.is_empty() {
                let name = if tg.name.is_empty() {
                    String::new()
                } else {
                    format!(" (in TestGroup {})", tg.name)
                };
                return vec![format!(
                    "an item under alert_rule_test misses required attribute alertname at eval_time {}{name}",
                    format_duration(test.eval_time_ms)
                )];
            }
        }

        let rules = Rules::new(Duration::from_millis(self.eval_interval_ms as u64))
            .with_external_labels(tg.external_labels.clone());
        let mut keys: Vec<(String, String)> = Vec::new();
        for (file, groups) in self.rule_files {
            let mut groups = groups.clone();
            for rule in groups.iter_mut().flat_map(|g| g.rules.iter_mut()) {
                rule.expr = with_subquery_step(&rule.expr, self.eval_interval_ms);
            }
            keys.extend(groups.iter().map(|g| (file.clone(), g.name.clone())));
            rules.install(file, groups);
        }
        keys.sort_by_key(|k| self.order.get(k.1.as_str()).copied().unwrap_or(0));

        let maxt = tg
            .alert_tests
            .iter()
            .map(|a| a.eval_time_ms)
            .chain(tg.promql_tests.iter().map(|p| p.eval_time_ms))
            .max()
            .unwrap_or(0);
        let mut alert_times: Vec<i64> = tg.alert_tests.iter().map(|a| a.eval_time_ms).collect();
        alert_times.sort_unstable();
        alert_times.dedup();

        let engine = Engine::default();
        let store = MemStore::default();
        let mut loaded = vec![0usize; input.len()];
        let mut previous: HashMap<(usize, usize), HashSet<Labels>> = HashMap::new();
        let mut errs = Vec::new();
        let mut next_alert_time = 0;
        let mut ts = 0;
        while ts <= maxt {
            for ((labels, samples), n) in input.iter().zip(loaded.iter_mut()) {
                while let Some(&(t, v)) = samples.get(*n).filter(|(t, _)| *t <= ts) {
                    store.append(labels, t, v);
                    *n += 1;
                }
            }
            let mut eval_errs = Vec::new();
            for (g, key) in keys.iter().enumerate() {
                rules::evaluate_with(&rules, key, ts, &engine, &store, &mut |r, output| {
                    let returned: HashSet<Labels> = output.iter().map(|s| s.0.clone()).collect();
                    for (labels, t, v) in output {
                        store.append(labels, *t, *v);
                    }
                    for gone in previous.remove(&(g, r)).unwrap_or_default() {
                        if !returned.contains(&gone) {
                            store.append(&gone, ts, f64::from_bits(STALE_NAN));
                        }
                    }
                    previous.insert((g, r), returned);
                });
                for (rule, err) in rules.rule_errors(key) {
                    eval_errs.push(format!(
                        "    rule: {rule}, time: {}, err: {err}",
                        format_go_duration(ts)
                    ));
                }
            }
            let stop = !eval_errs.is_empty();
            errs.extend(eval_errs);
            if stop {
                return errs;
            }
            while let Some(&t) = alert_times
                .get(next_alert_time)
                .filter(|&&t| ts <= t && t < ts + self.eval_interval_ms)
            {
                for test in tg.alert_tests.iter().filter(|a| a.eval_time_ms == t) {
                    if let Some(failure) = self.check_alerts(&rules, &keys, test) {
                        errs.push(failure);
                    }
                }
                next_alert_time += 1;
            }
            ts += self.eval_interval_ms;
        }
        for test in &tg.promql_tests {
            if let Some(failure) = check_expr(&engine, &store, test, self.eval_interval_ms) {
                errs.push(failure);
            }
        }
        errs
    }

    fn check_alerts(
        &self,
        rules: &Rules,
        keys: &[(String, String)],
        test: &AlertTest,
    ) -> Option<String> {
        let mut got: Vec<(LabelPairs, LabelPairs)> = keys
            .iter()
            .flat_map(|k| rules.firing_alerts(k, &test.alertname))
            .map(|a| (a.labels.to_vec(), a.annotations.into_iter().collect()))
            .collect();
        let mut exp: Vec<(LabelPairs, LabelPairs)> = test
            .exp_alerts
            .iter()
            .map(|(labels, annotations)| {
                let mut labels = labels.clone();
                labels.insert("alertname".into(), test.alertname.clone());
                (
                    labels.into_iter().collect(),
                    annotations.clone().into_iter().collect(),
                )
            })
            .collect();
        got.sort();
        exp.sort();
        if got == exp {
            return None;
        }
        let name = if self.test.name.is_empty() {
            String::new()
        } else {
            format!("    name: {},\n", self.test.name)
        };
        let indent = " ".repeat(12);
        Some(format!(
            "{name}    alertname: {}, time: {}, \n        exp:{}, \n        got:{}",
            test.alertname,
            format_duration(test.eval_time_ms),
            indent_lines(&alerts_string(&exp), &indent),
            indent_lines(&alerts_string(&got), &indent),
        ))
    }
}

fn check_expr(
    engine: &Engine,
    store: &MemStore,
    test: &PromqlTest,
    eval_interval_ms: i64,
) -> Option<String> {
    let at = format!(
        "    expr: {}, time: {}",
        go_quote(&test.expr),
        format_duration(test.eval_time_ms)
    );
    let mut got: Vec<(LabelPairs, f64)> = match engine.instant(
        store,
        &with_subquery_step(&test.expr, eval_interval_ms),
        test.eval_time_ms,
    ) {
        Ok(Value::Vector(v)) => v.into_iter().map(|s| (s.labels.to_vec(), s.v)).collect(),
        Ok(Value::Scalar(_, v)) => vec![(Vec::new(), v)],
        Ok(_) => return Some(format!("{at}, err: rule result is not a vector or scalar")),
        Err(e) => return Some(format!("{at}, err: {e}")),
    };
    let mut exp = Vec::new();
    for (labels, value) in &test.exp_samples {
        match parse_labels(labels) {
            Ok(pairs) => exp.push((pairs, *value)),
            Err(e) => return Some(format!("{at}, err: labels {}: {e}", go_quote(labels))),
        }
    }
    exp.sort_by(|a, b| a.0.cmp(&b.0));
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let same = exp.len() == got.len()
        && exp
            .iter()
            .zip(&got)
            .all(|(e, g)| e.0 == g.0 && close(e.1, g.1));
    if same {
        return None;
    }
    Some(format!(
        "{at},\n        exp: {}\n        got: {}",
        samples_string(&exp),
        samples_string(&got)
    ))
}

/// `expr` with `step_ms` written into its subqueries that have no step (`x[5m:]` becomes
/// `x[5m:30s]`): promtool runs them at the evaluation interval, the engine at 1m.
fn with_subquery_step(expr: &str, step_ms: i64) -> String {
    if step_ms == 60_000 {
        return expr.to_string();
    }
    let step = format_duration(step_ms);
    let mut out = String::with_capacity(expr.len() + 8);
    let mut chars = expr.chars().peekable();
    let mut quote = None;
    while let Some(c) = chars.next() {
        out.push(c);
        match (quote, c) {
            (Some(q), '\\') if q != '`' => out.extend(chars.next()),
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => quote = Some(c),
            (None, '#') => {
                for c in chars.by_ref() {
                    out.push(c);
                    if c == '\n' {
                        break;
                    }
                }
            }
            (None, ':') => {
                let mut rest = chars.clone();
                while rest.next_if(|c| c.is_whitespace()).is_some() {}
                if rest.peek() == Some(&']') {
                    out.push_str(&step);
                }
            }
            (None, _) => {}
        }
    }
    out
}

/// Equal within a relative 1e-12; NaN equals nothing (promtool compares with `==`).
fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
}

/// Go's `labels.Labels.String()`: `{__name__="m", a="b"}`.
fn labels_string(pairs: &[(String, String)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect();
    format!("{{{}}}", inner.join(", "))
}

fn samples_string(samples: &[(LabelPairs, f64)]) -> String {
    if samples.is_empty() {
        return "nil".into();
    }
    let all: Vec<String> = samples
        .iter()
        .map(|(labels, v)| {
            let v = if is_stale(*v) { f64::NAN } else { *v };
            format!("{} {}", labels_string(labels), go_format_e(v, None, true))
        })
        .collect();
    all.join(", ")
}

fn alerts_string(alerts: &[(LabelPairs, LabelPairs)]) -> String {
    if alerts.is_empty() {
        return "[]".into();
    }
    let all: Vec<String> = alerts
        .iter()
        .enumerate()
        .map(|(i, (labels, annotations))| {
            format!(
                "{i}:\n  Labels:{}\n  Annotations:{}",
                labels_string(labels),
                labels_string(annotations)
            )
        })
        .collect();
    format!("[\n{}\n]", all.join(",\n"))
}

/// Every line but the first prefixed with `indent`.
fn indent_lines(text: &str, indent: &str) -> String {
    text.split('\n')
        .collect::<Vec<_>>()
        .join(&format!("\n{indent}"))
}

/// Go's `filepath.Glob` for `*`, `?` and `[...]` in any path component; matches sorted in each
/// folder; nothing when nothing matches.
fn glob(pattern: &Path) -> Vec<PathBuf> {
    let mut found = vec![PathBuf::new()];
    for component in pattern.components() {
        let Component::Normal(part) = component else {
            found.iter_mut().for_each(|p| p.push(component));
            continue;
        };
        let part = part.to_string_lossy();
        if !part.contains(['*', '?', '[']) {
            found.iter_mut().for_each(|p| p.push(part.as_ref()));
            continue;
        }
        let mut next = Vec::new();
        for dir in &found {
            let read = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir.as_path()
            };
            let Ok(entries) = std::fs::read_dir(read) else {
                continue;
            };
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| wildcard(&part, name))
                .collect();
            names.sort();
            next.extend(names.into_iter().map(|n| dir.join(n)));
        }
        found = next;
    }
    found.retain(|p| !p.as_os_str().is_empty() && p.exists());
    found
}

/// Go's `filepath.Match` for one component.
fn wildcard(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    fn class(p: &[char], c: char) -> Option<(bool, usize)> {
        let mut i = 1;
        let negate = matches!(p.get(i), Some('^' | '!'));
        if negate {
            i += 1;
        }
        let mut matched = false;
        let mut first = true;
        while let Some(&ch) = p.get(i) {
            if ch == ']' && !first {
                return Some((matched != negate, i + 1));
            }
            first = false;
            let lo = ch;
            let hi = if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|&h| h != ']') {
                i += 2;
                p[i]
            } else {
                lo
            };
            matched |= lo <= c && c <= hi;
            i += 1;
        }
        None
    }
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|k| go(&p[1..], &n[k..])),
            Some('?') => !n.is_empty() && go(&p[1..], &n[1..]),
            Some('[') => match (n.first(), class(p, n.first().copied().unwrap_or('\0'))) {
                (Some(_), Some((true, used))) => go(&p[used..], &n[1..]),
                _ => false,
            },
            Some('\\') if p.len() > 1 => n.first() == Some(&p[1]) && go(&p[2..], &n[1..]),
            Some(c) => n.first() == Some(c) && go(&p[1..], &n[1..]),
        }
    }
    go(&p, &n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(text: &str) -> Vec<Option<f64>> {
        parse_values(text).unwrap()
    }

    #[test]
    fn expanding_notation_counts_like_promtool() {
        assert_eq!(values("1 2 3"), vec![Some(1.0), Some(2.0), Some(3.0)]);
        // a+bxn is n+1 values, adding b each time.
        assert_eq!(
            values("1+2x3"),
            vec![Some(1.0), Some(3.0), Some(5.0), Some(7.0)]
        );
        assert_eq!(values("1-1x2"), vec![Some(1.0), Some(0.0), Some(-1.0)]);
        assert_eq!(values("-2+0.5x1"), vec![Some(-2.0), Some(-1.5)]);
        // axn is a+0xn.
        assert_eq!(values("5x2"), vec![Some(5.0); 3]);
        // _ is one missing sample, _xn is n of them (not n+1).
        assert_eq!(
            values("_ 1 _x3 2"),
            vec![None, Some(1.0), None, None, None, Some(2.0)]
        );
        assert_eq!(values("_x0"), Vec::<Option<f64>>::new());
        // 0x3 is 0 repeated, not hexadecimal.
        assert_eq!(values("0x3"), vec![Some(0.0); 4]);
        assert_eq!(
            values("1e3 .5 2.5e-1x1"),
            vec![Some(1000.0), Some(0.5), Some(0.25), Some(0.25)]
        );
        assert_eq!(values("  1   2 "), vec![Some(1.0), Some(2.0)]);
        assert_eq!(values(""), Vec::<Option<f64>>::new());
    }

    #[test]
    fn stale_inf_and_nan_are_values() {
        let v = values("stale Inf -Inf +Inf NaN 1e-3-1e-3x1");
        assert!(is_stale(v[0].unwrap()));
        assert_eq!(v[1], Some(f64::INFINITY));
        assert_eq!(v[2], Some(f64::NEG_INFINITY));
        assert_eq!(v[3], Some(f64::INFINITY));
        assert!(v[4].unwrap().is_nan() && !is_stale(v[4].unwrap()));
        assert_eq!(&v[5..], &[Some(0.001), Some(0.0)]);
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            "x", "1+1", "1x", "1xa", "stalex3", "_3", "_x", "1a", "1+x3", "1x-2", "1x1.5",
            "Infinity", "--1",
        ] {
            assert!(parse_values(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn series_descriptions_parse() {
        let (labels, v) = parse_series(r#"up{job="a", instance='h:1',} 1 _ 2"#).unwrap();
        assert_eq!(
            labels,
            vec![
                ("__name__".to_string(), "up".to_string()),
                ("instance".to_string(), "h:1".to_string()),
                ("job".to_string(), "a".to_string()),
            ]
        );
        assert_eq!(v, vec![Some(1.0), None, Some(2.0)]);
        let (labels, _) = parse_series(r#"{__name__="x", a="q\"\n\x41"}"#).unwrap();
        assert_eq!(labels[1], ("a".to_string(), "q\"\nA".to_string()));
        assert_eq!(parse_labels("{}").unwrap(), vec![]);
        assert_eq!(parse_labels("").unwrap(), vec![]);
        assert_eq!(parse_labels("job:up:sum").unwrap().len(), 1);
        assert!(parse_labels(r#"x{a!="b"}"#).is_err());
        assert!(parse_labels(r#"x{a="b""#).is_err());
        assert!(parse_labels(r#"x y"#).is_err());
    }

    #[test]
    fn durations_read_and_print_like_prometheus_and_go() {
        assert_eq!(parse_duration("0").unwrap(), 0);
        assert_eq!(parse_duration("1h30m").unwrap(), 5_400_000);
        assert_eq!(parse_duration("1m500ms").unwrap(), 60_500);
        assert!(parse_duration("30m1h").is_err());
        assert!(parse_duration("1.5m").is_err());
        assert!(parse_duration("5").is_err());
        assert_eq!(format_duration(5_400_000), "1h30m");
        assert_eq!(format_duration(0), "0s");
        assert_eq!(format_duration(14 * 86_400_000), "2w");
        assert_eq!(format_duration(90_500), "1m30s500ms");
        assert_eq!(format_go_duration(60_000), "1m0s");
        assert_eq!(format_go_duration(3_600_000), "1h0m0s");
        assert_eq!(format_go_duration(1500), "1.5s");
        assert_eq!(format_go_duration(250), "250ms");
    }

    #[test]
    fn failures_print_numbers_like_go() {
        assert_eq!(go_format_e(8.0, None, true), "8E+00");
        assert_eq!(go_format_e(1e-5, None, true), "1E-05");
        assert_eq!(go_format_e(0.1 + 0.2, None, true), "3.0000000000000004E-01");
        assert_eq!(go_format_e(-1234.5, None, true), "-1.2345E+03");
        assert_eq!(go_format_e(0.0, None, true), "0E+00");
        assert_eq!(
            samples_string(&[(vec![("job".into(), "a\"b".into())], 2.0)]),
            r#"{job="a\"b"} 2E+00"#
        );
        assert_eq!(samples_string(&[]), "nil");
    }

    #[test]
    fn subqueries_without_a_step_get_the_evaluation_interval() {
        assert_eq!(
            with_subquery_step("max_over_time(x[5m:])", 30_000),
            "max_over_time(x[5m:30s])"
        );
        assert_eq!(
            with_subquery_step("a:b[5m: ] + c{l=\":]\"}[1m:10s]", 90_000),
            "a:b[5m:1m30s ] + c{l=\":]\"}[1m:10s]"
        );
        assert_eq!(with_subquery_step("x[5m:]", 60_000), "x[5m:]");
    }

    #[test]
    fn globs_match_like_go() {
        assert!(wildcard("*.yml", "a.yml"));
        assert!(!wildcard("*.yml", "a.yaml"));
        assert!(wildcard("r?les-[0-9].yml", "rules-3.yml"));
        assert!(!wildcard("r?les-[^0-9].yml", "rules-3.yml"));
    }

    #[test]
    fn a_test_file_runs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("rules.yml"),
            r#"groups:
- name: g
  rules:
  - record: job:x:sum
    expr: sum by (job) (x)
  - alert: High
    expr: job:x:sum > 2
    for: 2m
    keep_firing_for: 2m
    labels: {severity: page}
    annotations: {summary: "{{ $labels.job }} at {{ $value }}"}
"#,
        )
        .unwrap();
        let test = dir.path().join("test.yml");
        std::fs::write(
            &test,
            r#"rule_files: [rules.yml]
tests:
- interval: 1m
  input_series:
  - series: x{job="a", i="1"}
    values: 1+1x4 stale
  - series: x{job="a", i="2"}
    values: 0x5
  alert_rule_test:
  - {eval_time: 2m, alertname: High}
  - eval_time: 4m
    alertname: High
    exp_alerts:
    - exp_labels: {job: a, severity: page}
      exp_annotations: {summary: "a at 5"}
  # Gone at 5m; kept firing at 5m and 6m, resolved at 7m.
  - eval_time: 6m
    alertname: High
    exp_alerts:
    - exp_labels: {job: a, severity: page}
      exp_annotations: {summary: "a at 5"}
  - {eval_time: 7m, alertname: High}
  promql_expr_test:
  - expr: job:x:sum
    eval_time: 3m
    exp_samples: [{labels: 'job:x:sum{job="a"}', value: 4}]
  - expr: job:x:sum
    eval_time: 7m
    exp_samples: [{labels: 'job:x:sum{job="a"}', value: 0}]
  - expr: ALERTS_FOR_STATE
    eval_time: 4m
    exp_samples: [{labels: 'ALERTS_FOR_STATE{alertname="High", job="a", severity="page"}', value: 120}]
  - expr: 1 + 1
    eval_time: 0m
    exp_samples: [{labels: '{}', value: 2}]
"#,
        )
        .unwrap();
        let report = run_file(&test).unwrap();
        assert_eq!(report.tests, 8);
        assert!(
            report.failures.is_empty(),
            "{}",
            report.failures.join("\n\n")
        );

        std::fs::write(
            &test,
            r#"rule_files: [rules.yml, missing-*.yml]
tests:
- interval: 1m
  name: wrong
  input_series:
  - {series: 'x{job="a"}', values: 5x5}
  alert_rule_test:
  - {eval_time: 3m, alertname: High}
  promql_expr_test:
  - expr: x
    eval_time: 1m
    exp_samples: [{labels: 'x{job="b"}', value: 5}]
"#,
        )
        .unwrap();
        let report = run_file(&test).unwrap();
        assert_eq!(report.failures.len(), 2, "{:?}", report.failures);
        assert_eq!(
            report.failures[0],
            "    name: wrong,\n    alertname: High, time: 3m, \n        exp:[], \n        got:[\n            0:\n              Labels:{alertname=\"High\", job=\"a\", severity=\"page\"}\n              Annotations:{summary=\"a at 5\"}\n            ]"
        );
        assert_eq!(
            report.failures[1],
            "    expr: \"x\", time: 1m,\n        exp: {__name__=\"x\", job=\"b\"} 5E+00\n        got: {__name__=\"x\", job=\"a\"} 5E+00"
        );
        assert_eq!(report.warnings.len(), 1);

        std::fs::write(&test, "tests:\n- interval: 1m\n  typo: 1\n").unwrap();
        assert!(run_file(&test)
            .unwrap_err()
            .contains("field typo not found"));
    }
}
