//! Recording and alerting rules in Prometheus's rule-file format, evaluated on a schedule,
//! with notifications to Alertmanager's v2 API and to webhooks (the same JSON body).
//!
//! - Files live in the config center, namespace `public`, group [`RULES_GROUP`], one config
//!   per file (`strata monitor rules apply FILE` publishes one). Every node re-reads them when
//!   they change; a file that does not parse is logged and its previous version stays.
//!   Strata's own rules ([`BUILTIN_RULES`]) are always loaded.
//! - Each group is evaluated by one monitor node, chosen by rendezvous hashing as targets
//!   are, at fixed slots of its interval; so a group is evaluated once per interval in the
//!   cluster, and moves when its node dies.
//! - Alerts follow Prometheus: pending while the expression returns the series for less than
//!   `for`, then firing; `keep_firing_for` holds a firing alert that long, counted from the
//!   first evaluation that misses its series; resolved alerts are sent for 15 minutes.
//!   Firing alerts are re-sent every minute with an `endsAt` four intervals ahead, so a
//!   receiver resolves them by itself if the monitor dies. `ALERTS` and `ALERTS_FOR_STATE`
//!   series are written as Prometheus writes them. A group's output is stored in one batch
//!   after the group (so a rule reading an earlier rule of its group sees that rule's
//!   previous evaluation; Prometheus and [`evaluate_with`]'s callers may store each rule's
//!   output at once).
//! - Templates in labels and annotations: the subset of Go's templates that prints values
//!   (see [`expand_with`]): `{{ $labels.NAME }}`, `{{ $value }}`, `{{ $value | humanize }}`,
//!   `{{ printf "%.2f" $value }}`, `{{ $externalLabels.NAME }}` (none in the monitor), with
//!   numbers printed as Go prints them.
//! - [`evaluate_with`] runs a group against any [`Queryable`] and hands each rule's output to
//!   a sink; [`crate::rules_test`] uses it to run `promtool test rules` files.

use crate::ingest::Ingest;
use crate::model::{Labels, Queryable, METRIC_NAME};
use crate::promql::{Engine, Value};
use crate::store::Store;
use serde_json::{json, Value as Json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use yaml_rust2::{Yaml, YamlLoader};

/// The config-center group that holds rule files.
pub const RULES_GROUP: &str = "monitor-rules";
/// How long a resolved alert is still sent.
const RESOLVED_RETENTION_MS: i64 = 15 * 60 * 1000;
/// How often a firing alert is re-sent.
const RESEND_DELAY_MS: i64 = 60 * 1000;

/// Strata's own alerting rules.
pub const BUILTIN_RULES: &str = r#"groups:
  - name: strata
    rules:
      - alert: StrataNoLeader
        expr: max(strata_raft_is_leader) < 1
        for: 30s
        labels: {severity: critical}
        annotations:
          summary: "The cluster has no Raft leader: writes are stopped"
      - alert: StrataNodeDown
        expr: up{job="strata"} == 0
        for: 1m
        labels: {severity: critical}
        annotations:
          summary: "Strata node {{ $labels.instance }} is down"
      - alert: StrataRaftApplyLagging
        expr: strata_raft_commit_index - strata_raft_applied_index > 1000
        for: 1m
        labels: {severity: warning}
        annotations:
          summary: "{{ $labels.instance }} applies {{ $value }} entries behind the commit index"
      - alert: StrataDiskFilling
        expr: strata_disk_read_only == 1 or predict_linear(strata_disk_free_bytes[1h], 4 * 3600) < 0
        for: 5m
        labels: {severity: warning}
        annotations:
          summary: "{{ $labels.instance }} will run out of disk within 4 hours (or is read-only)"
      - alert: StrataRegistryCheckFailures
        expr: sum by (instance) (rate(strata_registry_check_runs_total{result!="passing"}[5m])) > 0
        for: 5m
        labels: {severity: warning}
        annotations:
          summary: "Health checks run by {{ $labels.instance }} are failing"
      - alert: StrataGateway5xxRatio
        expr: sum by (route) (rate(strata_gateway_requests_total{code="5xx"}[5m])) / sum by (route) (rate(strata_gateway_requests_total[5m])) > 0.05
        for: 5m
        labels: {severity: warning}
        annotations:
          summary: "Route {{ $labels.route }} answers {{ humanizePercentage $value }} 5xx"
      - alert: StrataBreakerOpen
        expr: strata_gateway_breaker_state{state="open"} == 1 or increase(strata_rpc_breaker_transitions_total{to="open"}[5m]) > 0
        for: 1m
        labels: {severity: warning}
        annotations:
          summary: "A circuit breaker is open ({{ $labels.upstream }}{{ $labels.service }})"
"#;

/// One rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// `record` or `alert` name.
    pub name: String,
    /// True for an alerting rule.
    pub alerting: bool,
    /// The expression.
    pub expr: String,
    /// `for`, ms.
    pub for_ms: i64,
    /// `keep_firing_for`, ms.
    pub keep_firing_for_ms: i64,
    /// Labels added.
    pub labels: BTreeMap<String, String>,
    /// Annotations (alerts).
    pub annotations: BTreeMap<String, String>,
}

/// A rule group.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// Its name (unique within its file).
    pub name: String,
    /// The file it came from.
    pub file: String,
    /// Evaluation interval, ms (0: the default).
    pub interval_ms: i64,
    /// Its rules, in order.
    pub rules: Vec<Rule>,
}

fn duration_ms(text: &str) -> Result<i64, String> {
    promql_parser::util::parse_duration(text)
        .map(|d| d.as_millis() as i64)
        .map_err(|e| format!("bad duration {text:?}: {e}"))
}

fn string_map(y: &Yaml, what: &str) -> Result<BTreeMap<String, String>, String> {
    match y {
        Yaml::BadValue | Yaml::Null => Ok(BTreeMap::new()),
        Yaml::Hash(h) => h
            .iter()
            .map(|(k, v)| {
                let k = k
                    .as_str()
                    .ok_or_else(|| format!("{what}: a key is not a string"))?;
                let v = match v {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Real(r) => r.clone(),
                    Yaml::Boolean(b) => b.to_string(),
                    _ => return Err(format!("{what}.{k}: not a string")),
                };
                Ok((k.to_string(), v))
            })
            .collect(),
        _ => Err(format!("{what}: not a map")),
    }
}

/// Parses a rule file; every expression must parse as PromQL.
pub fn parse_file(file: &str, text: &str) -> Result<Vec<Group>, String> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| format!("{file}: {e}"))?;
    let Some(doc) = docs.first() else {
        return Ok(Vec::new());
    };
    let groups = match &doc["groups"] {
        Yaml::Array(a) => a,
        Yaml::BadValue | Yaml::Null => return Ok(Vec::new()),
        _ => return Err(format!("{file}: groups is not a list")),
    };
    let mut out: Vec<Group> = Vec::new();
    for (gi, g) in groups.iter().enumerate() {
        let name = g["name"]
            .as_str()
            .ok_or_else(|| format!("{file}: group {} has no name", gi + 1))?
            .to_string();
        if out.iter().any(|o| o.name == name) {
            return Err(format!("{file}: group {name:?} is defined twice"));
        }
        let interval_ms = match g["interval"].as_str() {
            Some(d) => duration_ms(d).map_err(|e| format!("{file}: group {name}: {e}"))?,
            None => 0,
        };
        let mut rules = Vec::new();
        let list = match &g["rules"] {
            Yaml::Array(a) => a.as_slice(),
            Yaml::BadValue | Yaml::Null => &[],
            _ => return Err(format!("{file}: group {name}: rules is not a list")),
        };
        for (ri, r) in list.iter().enumerate() {
            let at = format!("{file}: group {name}, rule {}", ri + 1);
            let (rule_name, alerting) = match (r["record"].as_str(), r["alert"].as_str()) {
                (Some(n), None) => (n.to_string(), false),
                (None, Some(n)) => (n.to_string(), true),
                _ => return Err(format!("{at}: exactly one of record and alert is needed")),
            };
            let expr = match &r["expr"] {
                Yaml::String(s) => s.clone(),
                Yaml::Integer(i) => i.to_string(),
                Yaml::Real(x) => x.clone(),
                _ => return Err(format!("{at}: no expr")),
            };
            crate::promql::parse_expr(&expr).map_err(|e| format!("{at}: {e}"))?;
            if !alerting
                && !rule_name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            {
                return Err(format!("{at}: {rule_name:?} is not a metric name"));
            }
            let for_ms = match r["for"].as_str() {
                Some(d) => duration_ms(d).map_err(|e| format!("{at}: {e}"))?,
                None => 0,
            };
            let keep_firing_for_ms = match r["keep_firing_for"].as_str() {
                Some(d) => duration_ms(d).map_err(|e| format!("{at}: {e}"))?,
                None => 0,
            };
            let labels = string_map(&r["labels"], &format!("{at}: labels"))?;
            let annotations = string_map(&r["annotations"], &format!("{at}: annotations"))?;
            if !alerting && (for_ms != 0 || !annotations.is_empty()) {
                return Err(format!("{at}: for and annotations are for alerting rules"));
            }
            rules.push(Rule {
                name: rule_name,
                alerting,
                expr,
                for_ms,
                keep_firing_for_ms,
                labels,
                annotations,
            });
        }
        out.push(Group {
            name,
            file: file.to_string(),
            interval_ms,
            rules,
        });
    }
    Ok(out)
}

/// Expands the template subset in `text` (no external labels).
pub fn expand(text: &str, labels: &Labels, value: f64) -> String {
    expand_with(text, labels, &Labels::default(), value)
}

/// Expands `text` as Prometheus expands an alert's labels and annotations, for the subset of
/// Go's templates rule files use: actions that print `$value`, `$labels.NAME`,
/// `$externalLabels.NAME` (or `.Value`, `.Labels.NAME`, `.ExternalLabels.NAME`) or a quoted
/// string, through Prometheus's functions `humanize`, `humanize1024`, `humanizePercentage`,
/// `humanizeDuration`, `printf`, `toUpper`, `toLower` and `title`, called as `f x` or piped
/// (`x | f`). Numbers print as Go prints them (`1e+06`). `{{-` and `-}}` trim the text
/// around, comments print nothing; anything else (`if`, `range`, `query`, ...) prints
/// nothing either.
pub fn expand_with(text: &str, labels: &Labels, external: &Labels, value: f64) -> String {
    let data = TemplateData {
        labels,
        external,
        value,
    };
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        let Some(close) = rest[open..].find("}}") else {
            break;
        };
        let mut inner = &rest[open + 2..open + close];
        let mut before = &rest[..open];
        let mut after = &rest[open + close + 2..];
        if let Some(trimmed) = inner.strip_prefix('-') {
            if trimmed.starts_with(char::is_whitespace) {
                before = before.trim_end();
                inner = trimmed;
            }
        }
        if let Some(trimmed) = inner.strip_suffix('-') {
            if trimmed.ends_with(char::is_whitespace) {
                after = after.trim_start();
                inner = trimmed;
            }
        }
        pieces.push(Piece::Text(before));
        pieces.push(Piece::Action(inner.trim()));
        rest = after;
    }
    pieces.push(Piece::Text(rest));
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    while pos < pieces.len() {
        // A stray `end` or `else` ends nothing; go on after it.
        data.block(&pieces, &mut pos, true, &mut out);
    }
    out
}

/// A template's text between actions, or an action.
enum Piece<'a> {
    Text(&'a str),
    Action(&'a str),
}

/// What an alert's templates see.
struct TemplateData<'a> {
    labels: &'a Labels,
    external: &'a Labels,
    value: f64,
}

/// A value inside a template.
#[derive(Debug, Clone, PartialEq)]
enum TemplateValue {
    Num(f64),
    Str(String),
    Bool(bool),
}

impl TemplateValue {
    fn print(&self) -> String {
        match self {
            TemplateValue::Num(v) => go_format_g(*v, None),
            TemplateValue::Str(s) => s.clone(),
            TemplateValue::Bool(b) => b.to_string(),
        }
    }

    /// Prometheus's `convertToFloat`.
    fn float(&self) -> Option<f64> {
        match self {
            TemplateValue::Num(v) => Some(*v),
            TemplateValue::Str(s) => s.trim().parse().ok(),
            TemplateValue::Bool(_) => None,
        }
    }

    /// Go's truth: not zero, not empty, not false.
    fn truth(&self) -> bool {
        match self {
            TemplateValue::Num(v) => *v != 0.0,
            TemplateValue::Str(s) => !s.is_empty(),
            TemplateValue::Bool(b) => *b,
        }
    }
}

/// A token of an action.
enum Token {
    Word(String),
    Quoted(String),
    Pipe,
}

fn action_tokens(action: &str) -> Option<Vec<Token>> {
    let mut out = Vec::new();
    let mut chars = action.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '|' => {
                chars.next();
                out.push(Token::Pipe);
            }
            '`' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next()? {
                        '`' => break,
                        c => s.push(c),
                    }
                }
                out.push(Token::Quoted(s));
            }
            '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => s.push(match chars.next()? {
                            'n' => '\n',
                            't' => '\t',
                            'r' => '\r',
                            c => c,
                        }),
                        c => s.push(c),
                    }
                }
                out.push(Token::Quoted(s));
            }
            '(' | ')' => return None,
            _ => {
                let mut s = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || matches!(c, '|' | '"' | '`' | '(' | ')') {
                        break;
                    }
                    s.push(c);
                    chars.next();
                }
                out.push(Token::Word(s));
            }
        }
    }
    Some(out)
}

impl TemplateData<'_> {
    /// Runs `pieces` from `pos` up to the `end` or `else` that closes the block (returned,
    /// and consumed) or the end; prints into `out` when `emit`.
    fn block(
        &self,
        pieces: &[Piece],
        pos: &mut usize,
        emit: bool,
        out: &mut String,
    ) -> Option<String> {
        while let Some(piece) = pieces.get(*pos) {
            *pos += 1;
            let action = match piece {
                Piece::Text(text) => {
                    if emit {
                        out.push_str(text);
                    }
                    continue;
                }
                Piece::Action(action) => *action,
            };
            let keyword = action.split_whitespace().next().unwrap_or("");
            match keyword {
                "end" | "else" => return Some(action.to_string()),
                "if" => self.branches(Some(&action[2..]), pieces, pos, emit, out),
                // Blocks the subset does not run: their text is left out.
                "range" | "with" | "define" | "block" => {
                    self.branches(None, pieces, pos, false, out)
                }
                _ if emit => out.push_str(&self.action(action)),
                _ => {}
            }
        }
        None
    }

    /// An `if` (`condition`; `None` for a block never run) with its `else if` and `else`
    /// branches, up to its `end`.
    fn branches(
        &self,
        condition: Option<&str>,
        pieces: &[Piece],
        pos: &mut usize,
        emit: bool,
        out: &mut String,
    ) {
        let mut taken = false;
        let mut condition = condition.map(str::to_string);
        loop {
            let run = !taken
                && match &condition {
                    Some(c) => self.pipeline(c).is_some_and(|v| v.truth()),
                    None => false,
                };
            let closed = self.block(pieces, pos, emit && run, out);
            taken |= run;
            match closed {
                Some(e) if e == "else" => condition = Some("true".into()),
                Some(e) if e.starts_with("else") => {
                    let rest = e["else".len()..].trim_start();
                    condition = rest.strip_prefix("if").map(str::to_string);
                }
                _ => return,
            }
        }
    }

    /// One action's output ("" for what the subset does not have).
    fn action(&self, action: &str) -> String {
        if action.starts_with("/*") {
            return String::new();
        }
        self.pipeline(action).map(|v| v.print()).unwrap_or_default()
    }

    fn pipeline(&self, action: &str) -> Option<TemplateValue> {
        let tokens = action_tokens(action)?;
        let mut piped: Option<TemplateValue> = None;
        for command in tokens.split(|t| matches!(t, Token::Pipe)) {
            let (first, rest) = command.split_first()?;
            let function = match first {
                Token::Word(w)
                    if !w.starts_with(['$', '.'])
                        && w.parse::<f64>().is_err()
                        && !matches!(w.as_str(), "true" | "false") =>
                {
                    Some(w.as_str())
                }
                _ => None,
            };
            piped = match function {
                None if rest.is_empty() && piped.is_none() => Some(self.operand(first)?),
                None => return None,
                Some(name) => {
                    let mut args = rest
                        .iter()
                        .map(|t| self.operand(t))
                        .collect::<Option<Vec<_>>>()?;
                    args.extend(piped.take());
                    Some(call(name, &args)?)
                }
            };
        }
        piped
    }

    fn operand(&self, token: &Token) -> Option<TemplateValue> {
        let word = match token {
            Token::Quoted(s) => return Some(TemplateValue::Str(s.clone())),
            Token::Word(w) => w.as_str(),
            Token::Pipe => return None,
        };
        let label = |set: &Labels, name: &str| {
            Some(TemplateValue::Str(set.get(name).unwrap_or("").to_string()))
        };
        let map = |set: &Labels| {
            let pairs: Vec<String> = set.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            Some(TemplateValue::Str(format!("map[{}]", pairs.join(" "))))
        };
        match word {
            "$value" | ".Value" => Some(TemplateValue::Num(self.value)),
            "$labels" | ".Labels" => map(self.labels),
            "$externalLabels" | ".ExternalLabels" => map(self.external),
            "$externalURL" | ".ExternalURL" => Some(TemplateValue::Str(String::new())),
            "true" | "false" => Some(TemplateValue::Bool(word == "true")),
            _ => {
                if let Some(name) = word
                    .strip_prefix("$labels.")
                    .or_else(|| word.strip_prefix(".Labels."))
                {
                    label(self.labels, name)
                } else if let Some(name) = word
                    .strip_prefix("$externalLabels.")
                    .or_else(|| word.strip_prefix(".ExternalLabels."))
                {
                    label(self.external, name)
                } else {
                    word.parse().ok().map(TemplateValue::Num)
                }
            }
        }
    }
}

/// One of Prometheus's template functions.
fn call(name: &str, args: &[TemplateValue]) -> Option<TemplateValue> {
    let one = || match args {
        [a] => Some(a),
        _ => None,
    };
    let text = |s: String| Some(TemplateValue::Str(s));
    let compare = || -> Option<std::cmp::Ordering> {
        match args {
            [TemplateValue::Num(a), TemplateValue::Num(b)] => a.partial_cmp(b),
            [TemplateValue::Str(a), TemplateValue::Str(b)] => Some(a.cmp(b)),
            [TemplateValue::Bool(a), TemplateValue::Bool(b)] => Some(a.cmp(b)),
            _ => None,
        }
    };
    let truth = |b: bool| Some(TemplateValue::Bool(b));
    match name {
        "eq" => match args {
            [first, rest @ ..] if !rest.is_empty() => truth(rest.iter().any(|r| r == first)),
            _ => None,
        },
        "ne" => truth(compare()? != std::cmp::Ordering::Equal),
        "lt" => truth(compare()?.is_lt()),
        "le" => truth(compare()?.is_le()),
        "gt" => truth(compare()?.is_gt()),
        "ge" => truth(compare()?.is_ge()),
        "not" => truth(!one()?.truth()),
        // Go's and/or return the argument that decided.
        "and" => args.iter().find(|a| !a.truth()).or(args.last()).cloned(),
        "or" => args.iter().find(|a| a.truth()).or(args.last()).cloned(),
        "humanize" => text(humanize(one()?.float()?)),
        "humanize1024" => text(humanize_1024(one()?.float()?)),
        "humanizePercentage" => text(format!(
            "{}%",
            go_format_g(one()?.float()? * 100.0, Some(4))
        )),
        "humanizeDuration" => text(humanize_duration(one()?.float()?)),
        "toUpper" => text(one()?.print().to_uppercase()),
        "toLower" => text(one()?.print().to_lowercase()),
        "title" => text(title(&one()?.print())),
        "printf" => match args.split_first()? {
            (TemplateValue::Str(format), rest) => text(go_printf(format, rest)),
            _ => None,
        },
        _ => None,
    }
}

/// Go's `strings.Title`: the first letter of every word in upper case.
fn title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut at_start = true;
    for c in s.chars() {
        if at_start {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        at_start = !(c.is_alphanumeric() || c == '_' || c == '\'');
    }
    out
}

/// Prometheus's `humanize`: SI prefixes, 4 significant digits.
fn humanize(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return go_format_g(v, Some(4));
    }
    let mut x = v;
    let mut prefix = "";
    if x.abs() >= 1.0 {
        for p in ["k", "M", "G", "T", "P", "E", "Z", "Y"] {
            if x.abs() < 1000.0 {
                break;
            }
            prefix = p;
            x /= 1000.0;
        }
    } else {
        for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
            if x.abs() >= 1.0 {
                break;
            }
            prefix = p;
            x *= 1000.0;
        }
    }
    format!("{}{prefix}", go_format_g(x, Some(4)))
}

/// Prometheus's `humanize1024`: binary prefixes, 4 significant digits.
fn humanize_1024(v: f64) -> String {
    if v.abs() <= 1.0 || !v.is_finite() {
        return go_format_g(v, Some(4));
    }
    let mut x = v;
    let mut prefix = "";
    for p in ["ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"] {
        if x.abs() < 1024.0 {
            break;
        }
        prefix = p;
        x /= 1024.0;
    }
    format!("{}{prefix}", go_format_g(x, Some(4)))
}

/// Prometheus's `humanizeDuration` of seconds: `1d 2h 3m 4s`, or `1.5s`, or `100ms`.
fn humanize_duration(v: f64) -> String {
    if !v.is_finite() {
        return go_format_g(v, Some(4));
    }
    if v == 0.0 {
        return format!("{}s", go_format_g(v, Some(4)));
    }
    if v.abs() >= 1.0 {
        let sign = if v < 0.0 { "-" } else { "" };
        // Go's int64(v) on amd64: out of range is the smallest int64.
        let whole = if v.abs() < i64::MAX as f64 {
            v.abs() as i64
        } else {
            i64::MIN
        };
        let (days, hours, minutes, seconds) = (
            whole / 86400,
            whole / 3600 % 24,
            whole / 60 % 60,
            whole % 60,
        );
        return if days != 0 {
            format!("{sign}{days}d {hours}h {minutes}m {seconds}s")
        } else if hours != 0 {
            format!("{sign}{hours}h {minutes}m {seconds}s")
        } else if minutes != 0 {
            format!("{sign}{minutes}m {seconds}s")
        } else {
            format!("{sign}{}s", go_format_g(v.abs(), Some(4)))
        };
    }
    let mut x = v;
    let mut prefix = "";
    for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
        if x.abs() >= 1.0 {
            break;
        }
        prefix = p;
        x *= 1000.0;
    }
    format!("{}{prefix}s", go_format_g(x, Some(4)))
}

/// Go's `fmt.Sprintf` for the verbs templates use: `%v %s %d %f %e %g %q %%`, with flags,
/// width and precision.
fn go_printf(format: &str, args: &[TemplateValue]) -> String {
    let mut out = String::new();
    let mut args = args.iter();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut flags = String::new();
        while let Some(&f) = chars.peek() {
            if !"-+ #0".contains(f) {
                break;
            }
            flags.push(f);
            chars.next();
        }
        let mut width = String::new();
        while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            width.push(d);
            chars.next();
        }
        let mut precision = None;
        if chars.peek() == Some(&'.') {
            chars.next();
            let mut p = String::new();
            while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                p.push(d);
                chars.next();
            }
            precision = Some(p.parse::<usize>().unwrap_or(0));
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.next() else {
            out.push_str(&format!("%!{verb}(MISSING)"));
            continue;
        };
        let body = match (verb, arg) {
            ('v' | 's', _) => match (arg, precision) {
                (TemplateValue::Str(s), Some(p)) => s.chars().take(p).collect(),
                (TemplateValue::Num(v), Some(p)) if verb == 'v' => go_format_g(*v, Some(p)),
                _ => arg.print(),
            },
            ('q', TemplateValue::Str(s)) => go_quote(s),
            ('d', TemplateValue::Num(v)) if v.fract() == 0.0 && v.is_finite() => {
                format!("{}", *v as i64)
            }
            ('f' | 'F', TemplateValue::Num(v)) => go_format_f(*v, precision.unwrap_or(6)),
            ('e' | 'E', TemplateValue::Num(v)) => {
                go_format_e(*v, Some(precision.unwrap_or(6)), verb == 'E')
            }
            ('g' | 'G', TemplateValue::Num(v)) => go_format_g(*v, precision),
            (_, TemplateValue::Num(v)) => format!("%!{verb}(float64={})", go_format_g(*v, None)),
            (_, TemplateValue::Str(s)) => format!("%!{verb}(string={s})"),
            (_, TemplateValue::Bool(b)) => format!("%!{verb}(bool={b})"),
        };
        let body = if flags.contains('+')
            && !body.starts_with(['-', '+'])
            && matches!(arg, TemplateValue::Num(_))
        {
            format!("+{body}")
        } else {
            body
        };
        let width: usize = width.parse().unwrap_or(0);
        let pad = width.saturating_sub(body.chars().count());
        if flags.contains('-') {
            out.push_str(&body);
            out.push_str(&" ".repeat(pad));
        } else if flags.contains('0') && matches!(arg, TemplateValue::Num(_)) {
            let (sign, digits) = match body.strip_prefix(['-', '+']) {
                Some(d) => (&body[..1], d),
                None => ("", body.as_str()),
            };
            out.push_str(sign);
            out.push_str(&"0".repeat(pad));
            out.push_str(digits);
        } else {
            out.push_str(&" ".repeat(pad));
            out.push_str(&body);
        }
    }
    let extra: Vec<String> = args
        .map(|a| match a {
            TemplateValue::Num(v) => format!("float64={}", go_format_g(*v, None)),
            TemplateValue::Str(s) => format!("string={s}"),
            TemplateValue::Bool(b) => format!("bool={b}"),
        })
        .collect();
    if !extra.is_empty() {
        out.push_str(&format!("%!(EXTRA {})", extra.join(", ")));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Go's number formats (templates and `promtool`'s messages print numbers as Go does)

/// The decimal digits of `|v|` (finite), without trailing zeros, and its decimal exponent
/// (`d.ddd × 10^exp`): the shortest digits that read back as `v`, or `significant` digits
/// rounded half to even as Go rounds.
fn decimal_digits(v: f64, significant: Option<usize>) -> (String, i32) {
    let s = match significant {
        Some(n) => format!("{:.*e}", n.max(1) - 1, v.abs()),
        None => format!("{:e}", v.abs()),
    };
    let (mantissa, exp) = s.split_once('e').unwrap_or((s.as_str(), "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let digits = digits.trim_end_matches('0');
    if digits.is_empty() {
        return ("0".into(), 0);
    }
    (digits.to_string(), exp.parse().unwrap_or(0))
}

fn go_special(v: f64) -> Option<String> {
    if v.is_nan() {
        Some("NaN".into())
    } else if v.is_infinite() {
        Some(if v > 0.0 { "+Inf" } else { "-Inf" }.into())
    } else {
        None
    }
}

fn sign(v: f64) -> &'static str {
    if v.is_sign_negative() {
        "-"
    } else {
        ""
    }
}

/// `digits × 10^exp` written out without an exponent.
fn plain(digits: &str, exp: i32) -> String {
    if exp < 0 {
        return format!("0.{}{digits}", "0".repeat((-exp - 1) as usize));
    }
    let int_len = exp as usize + 1;
    if digits.len() <= int_len {
        format!("{digits}{}", "0".repeat(int_len - digits.len()))
    } else {
        format!("{}.{}", &digits[..int_len], &digits[int_len..])
    }
}

/// Go's `%e` (`precision` digits after the point) or `strconv.FormatFloat(v, 'e', -1, 64)`
/// (`None`: the shortest digits); `upper` for `%E`.
pub(crate) fn go_format_e(v: f64, precision: Option<usize>, upper: bool) -> String {
    if let Some(s) = go_special(v) {
        return s;
    }
    let (mut digits, exp) = decimal_digits(v, precision.map(|p| p + 1));
    let exp = if v == 0.0 { 0 } else { exp };
    if let Some(p) = precision {
        while digits.len() < p + 1 {
            digits.push('0');
        }
    }
    let mut out = sign(v).to_string();
    out.push_str(&digits[..1]);
    if digits.len() > 1 {
        out.push('.');
        out.push_str(&digits[1..]);
    }
    out.push(if upper { 'E' } else { 'e' });
    out.push(if exp < 0 { '-' } else { '+' });
    out.push_str(&format!("{:02}", exp.abs()));
    out
}

/// Go's `%.Nf`.
pub(crate) fn go_format_f(v: f64, precision: usize) -> String {
    go_special(v).unwrap_or_else(|| format!("{v:.precision$}"))
}

/// Go's `%g` with `precision` significant digits, or `%v` (`None`): the shortest digits, with
/// an exponent when it is below -4 or at least the precision (6 for the shortest).
pub(crate) fn go_format_g(v: f64, precision: Option<usize>) -> String {
    if let Some(s) = go_special(v) {
        return s;
    }
    let precision = precision.map(|p| p.max(1));
    let (digits, exp) = decimal_digits(v, precision);
    let limit = precision.map_or(6, |p| p as i32);
    if exp < -4 || exp >= limit {
        let mut out = sign(v).to_string();
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push_str(&format!(
            "e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        ));
        return out;
    }
    format!("{}{}", sign(v), plain(&digits, exp))
}

/// Go's `strconv.Quote`.
pub(crate) fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An alert's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Returned, not for long enough.
    Pending,
    /// Firing.
    Firing,
    /// Resolved (kept to send the resolution).
    Inactive,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Firing => "firing",
            State::Inactive => "inactive",
        }
    }
}

/// One alert of an alerting rule.
#[derive(Debug, Clone)]
pub struct Alert {
    /// Its labels (rule labels, `alertname`).
    pub labels: Labels,
    /// Its annotations.
    pub annotations: BTreeMap<String, String>,
    /// State.
    pub state: State,
    /// First evaluation that returned it, ms.
    pub active_at: i64,
    /// When it started firing, ms.
    pub fired_at: i64,
    /// When it resolved, ms.
    pub resolved_at: i64,
    /// Last evaluation that returned it, ms.
    pub last_seen: i64,
    /// First evaluation that missed it while it fired, ms (`keep_firing_for` counts from
    /// there, as in Prometheus).
    pub keep_firing_since: Option<i64>,
    /// Last time it was sent, ms.
    pub last_sent: i64,
    /// The expression's value.
    pub value: f64,
}

#[derive(Default)]
struct RuleState {
    alerts: HashMap<Labels, Alert>,
    health: String,
    last_error: String,
    last_eval_ms: i64,
    duration: f64,
}

#[derive(Default)]
struct GroupState {
    group: Option<Group>,
    rules: Vec<RuleState>,
    last_eval_ms: i64,
    owner: u64,
}

/// The loaded groups and their alerts.
pub struct Rules {
    groups: Mutex<BTreeMap<(String, String), GroupState>>,
    default_interval_ms: i64,
    external_labels: Labels,
}

impl Rules {
    /// No groups yet.
    pub fn new(default_interval: Duration) -> Rules {
        Rules {
            groups: Mutex::new(BTreeMap::new()),
            default_interval_ms: default_interval.as_millis().max(1) as i64,
            external_labels: Labels::default(),
        }
    }

    /// What `$externalLabels` holds in templates (none by default).
    pub fn with_external_labels(mut self, labels: Labels) -> Rules {
        self.external_labels = labels;
        self
    }

    /// The firing alerts of the alerting rules named `name` in the group `key`.
    pub fn firing_alerts(&self, key: &(String, String), name: &str) -> Vec<Alert> {
        let groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let Some(g) = groups.get(key) else {
            return Vec::new();
        };
        let Some(group) = &g.group else {
            return Vec::new();
        };
        group
            .rules
            .iter()
            .zip(&g.rules)
            .filter(|(r, _)| r.alerting && r.name == name)
            .flat_map(|(_, s)| s.alerts.values().filter(|a| a.state == State::Firing))
            .cloned()
            .collect()
    }

    /// `(rule name, error)` of the rules of group `key` whose last evaluation failed.
    pub fn rule_errors(&self, key: &(String, String)) -> Vec<(String, String)> {
        let groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let Some(g) = groups.get(key) else {
            return Vec::new();
        };
        let Some(group) = &g.group else {
            return Vec::new();
        };
        group
            .rules
            .iter()
            .zip(&g.rules)
            .filter(|(_, s)| s.health == "err")
            .map(|(r, s)| (r.name.clone(), s.last_error.clone()))
            .collect()
    }

    /// Replaces the groups of `file` (alert state of unchanged rules is kept).
    pub fn install(&self, file: &str, groups: Vec<Group>) {
        let mut all = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let keep: Vec<(String, String)> = groups
            .iter()
            .map(|g| (file.to_string(), g.name.clone()))
            .collect();
        all.retain(|k, _| k.0 != file || keep.contains(k));
        for g in groups {
            let key = (file.to_string(), g.name.clone());
            let entry = all.entry(key).or_default();
            if entry.group.as_ref() != Some(&g) {
                let mut rules: Vec<RuleState> = Vec::new();
                for (i, rule) in g.rules.iter().enumerate() {
                    let same = entry.group.as_ref().and_then(|old| old.rules.get(i)) == Some(rule);
                    rules.push(if same {
                        std::mem::take(&mut entry.rules[i])
                    } else {
                        RuleState::default()
                    });
                }
                entry.rules = rules;
                entry.group = Some(g);
            }
        }
    }

    /// Removes every group of `file`.
    pub fn remove_file(&self, file: &str) {
        self.groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| k.0 != file);
    }

    fn interval(&self, g: &Group) -> i64 {
        if g.interval_ms > 0 {
            g.interval_ms
        } else {
            self.default_interval_ms
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
        .to_string()
}

/// Evaluates one group at `t`: recording rules write samples, alerting rules update alerts.
/// Returns the alerts to send now.
pub fn evaluate(
    rules: &Rules,
    key: &(String, String),
    t: i64,
    engine: &Engine,
    store: &Store,
    ingest: &Ingest,
) -> Vec<Json> {
    let mut batch = Vec::new();
    let to_send = evaluate_with(rules, key, t, engine, store, &mut |_, samples| {
        batch.extend_from_slice(samples)
    });
    if !batch.is_empty() {
        if let Err(e) = ingest.write("rule", &batch) {
            tracing::error!(error = %e, "cannot store rule results");
        }
    }
    to_send
}

/// Samples a rule writes: `(labels, t, value)`.
pub type RuleOutput = [(Labels, i64, f64)];

/// [`evaluate`] against any [`Queryable`]: each rule that evaluates without error hands its
/// output (recording rule samples, `ALERTS` and `ALERTS_FOR_STATE`; possibly none) to
/// `sink(rule index, samples)` before the next rule runs. Returns the alerts to send now.
pub fn evaluate_with(
    rules: &Rules,
    key: &(String, String),
    t: i64,
    engine: &Engine,
    q: &dyn Queryable,
    sink: &mut dyn FnMut(usize, &RuleOutput),
) -> Vec<Json> {
    let Some(group) = rules
        .groups
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(key)
        .and_then(|g| g.group.clone())
    else {
        return Vec::new();
    };
    let interval = rules.interval(&group);
    let mut to_send = Vec::new();
    for (i, rule) in group.rules.iter().enumerate() {
        let started = std::time::Instant::now();
        let result = engine.instant(q, &rule.expr, t);
        let samples = match result {
            Ok(Value::Vector(v)) => Ok(v.into_iter().map(|s| (s.labels, s.v)).collect::<Vec<_>>()),
            Ok(Value::Scalar(_, v)) => Ok(vec![(Labels::default(), v)]),
            Ok(_) => Err("the expression is not a vector or a scalar".to_string()),
            Err(e) => Err(e.to_string()),
        };
        let output = {
            let mut groups = rules.groups.lock().unwrap_or_else(|e| e.into_inner());
            let Some(state) = groups.get_mut(key).and_then(|g| g.rules.get_mut(i)) else {
                continue;
            };
            state.last_eval_ms = t;
            state.duration = started.elapsed().as_secs_f64();
            match samples {
                Ok(samples) => {
                    state.health = "ok".into();
                    state.last_error.clear();
                    let step = RuleStep {
                        rule,
                        t,
                        interval,
                        external: &rules.external_labels,
                    };
                    if rule.alerting {
                        step.alerts(state, samples, &mut to_send)
                    } else {
                        step.record(samples)
                    }
                }
                Err(e) => {
                    tracing::warn!(group = %group.name, rule = %rule.name, error = %e, "rule evaluation failed");
                    state.health = "err".into();
                    state.last_error = e;
                    continue;
                }
            }
        };
        sink(i, &output);
    }
    if let Some(g) = rules
        .groups
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_mut(key)
    {
        g.last_eval_ms = t;
    }
    to_send
}

/// One rule's evaluation at `t`, once its expression returned.
struct RuleStep<'a> {
    rule: &'a Rule,
    t: i64,
    interval: i64,
    external: &'a Labels,
}

impl RuleStep<'_> {
    /// A recording rule's samples: the result renamed, with the rule's labels.
    fn record(&self, samples: Vec<(Labels, f64)>) -> Vec<(Labels, i64, f64)> {
        samples
            .into_iter()
            .map(|(labels, v)| {
                let mut pairs = labels.to_vec();
                pairs.retain(|(k, _)| k != METRIC_NAME);
                pairs.extend(self.rule.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
                pairs.push((METRIC_NAME.into(), self.rule.name.clone()));
                (Labels::new(pairs), self.t, v)
            })
            .collect()
    }

    /// Moves an alerting rule's alerts as Prometheus does (pending for `for`, then firing;
    /// `keep_firing_for` counted from the first evaluation that missed the series; resolved
    /// when gone), queues those due to be sent, and returns `ALERTS` and `ALERTS_FOR_STATE`.
    fn alerts(
        &self,
        state: &mut RuleState,
        samples: Vec<(Labels, f64)>,
        to_send: &mut Vec<Json>,
    ) -> Vec<(Labels, i64, f64)> {
        let (rule, t) = (self.rule, self.t);
        let mut out = Vec::new();
        let mut seen = Vec::new();
        for (labels, v) in samples {
            let base = labels.without_name();
            let mut pairs = base.to_vec();
            for (k, template) in &rule.labels {
                pairs.push((k.clone(), expand_with(template, &labels, self.external, v)));
            }
            pairs.push(("alertname".into(), rule.name.clone()));
            let alert_labels = Labels::new(pairs);
            let annotations: BTreeMap<String, String> = rule
                .annotations
                .iter()
                .map(|(k, a)| (k.clone(), expand_with(a, &labels, self.external, v)))
                .collect();
            seen.push(alert_labels.clone());
            let alert = state
                .alerts
                .entry(alert_labels.clone())
                .or_insert_with(|| Alert {
                    labels: alert_labels,
                    annotations: annotations.clone(),
                    state: State::Pending,
                    active_at: t,
                    fired_at: 0,
                    resolved_at: 0,
                    last_seen: t,
                    keep_firing_since: None,
                    last_sent: 0,
                    value: v,
                });
            if alert.state == State::Inactive {
                *alert = Alert {
                    state: State::Pending,
                    active_at: t,
                    fired_at: 0,
                    resolved_at: 0,
                    last_sent: 0,
                    ..alert.clone()
                };
            }
            alert.value = v;
            alert.annotations = annotations;
            alert.last_seen = t;
            alert.keep_firing_since = None;
        }
        state.alerts.retain(|labels, alert| {
            if seen.contains(labels) {
                return true;
            }
            match alert.state {
                State::Pending => false,
                State::Firing => {
                    if rule.keep_firing_for_ms > 0 {
                        let since = *alert.keep_firing_since.get_or_insert(t);
                        if t - since < rule.keep_firing_for_ms {
                            return true;
                        }
                    }
                    alert.state = State::Inactive;
                    alert.resolved_at = t;
                    alert.keep_firing_since = None;
                    alert.last_sent = 0;
                    true
                }
                State::Inactive => t - alert.resolved_at < RESOLVED_RETENTION_MS,
            }
        });
        for alert in state.alerts.values_mut() {
            if alert.state == State::Pending && t - alert.active_at >= rule.for_ms {
                alert.state = State::Firing;
                alert.fired_at = t;
                alert.last_sent = 0;
            }
            if alert.state != State::Inactive {
                let mut pairs = alert.labels.to_vec();
                pairs.push((METRIC_NAME.into(), "ALERTS".into()));
                pairs.push(("alertstate".into(), alert.state.name().into()));
                out.push((Labels::new(pairs), t, 1.0));
                let mut pairs = alert.labels.to_vec();
                pairs.push((METRIC_NAME.into(), "ALERTS_FOR_STATE".into()));
                out.push((Labels::new(pairs), t, (alert.active_at / 1000) as f64));
            }
            let due = match alert.state {
                State::Pending => false,
                State::Firing | State::Inactive => {
                    alert.last_sent == 0 || t - alert.last_sent >= RESEND_DELAY_MS
                }
            };
            if due {
                alert.last_sent = t;
                let ends = if alert.state == State::Inactive {
                    alert.resolved_at
                } else {
                    t + 4 * self.interval.max(RESEND_DELAY_MS)
                };
                to_send.push(json!({
                    "labels": alert.labels.iter().collect::<BTreeMap<_, _>>(),
                    "annotations": alert.annotations,
                    "startsAt": rfc3339(alert.active_at),
                    "endsAt": rfc3339(ends),
                    "generatorURL": format!("/graph?g0.expr={}", rule.expr.replace(' ', "+")),
                }));
            }
        }
        out
    }
}

impl crate::api::RulesView for Rules {
    fn rules(&self) -> Json {
        let groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let out: Vec<Json> = groups
            .values()
            .filter_map(|g| {
                let group = g.group.as_ref()?;
                let rules: Vec<Json> = group
                    .rules
                    .iter()
                    .zip(&g.rules)
                    .map(|(r, s)| {
                        let mut alerts: Vec<&Alert> = s.alerts.values().filter(|a| a.state != State::Inactive).collect();
                        alerts.sort_by(|a, b| a.labels.cmp(&b.labels));
                        let state = if alerts.iter().any(|a| a.state == State::Firing) {
                            "firing"
                        } else if alerts.is_empty() {
                            "inactive"
                        } else {
                            "pending"
                        };
                        let mut rule = json!({
                            "name": r.name,
                            "query": r.expr,
                            "labels": r.labels,
                            "health": if s.health.is_empty() { "unknown" } else { s.health.as_str() },
                            "lastError": s.last_error,
                            "evaluationTime": s.duration,
                            "lastEvaluation": rfc3339(s.last_eval_ms),
                            "type": if r.alerting { "alerting" } else { "recording" },
                        });
                        if r.alerting {
                            rule["duration"] = json!(r.for_ms as f64 / 1000.0);
                            rule["keepFiringFor"] = json!(r.keep_firing_for_ms as f64 / 1000.0);
                            rule["annotations"] = json!(r.annotations);
                            rule["state"] = json!(state);
                            rule["alerts"] = Json::Array(alerts.iter().map(|a| alert_json(a)).collect());
                        }
                        rule
                    })
                    .collect();
                Some(json!({
                    "name": group.name,
                    "file": group.file,
                    "interval": self.interval(group) as f64 / 1000.0,
                    "rules": rules,
                    "lastEvaluation": rfc3339(g.last_eval_ms),
                    "evaluatedBy": g.owner,
                }))
            })
            .collect();
        json!({"groups": out})
    }

    fn alerts(&self) -> Json {
        let groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<Json> = Vec::new();
        for g in groups.values() {
            for s in &g.rules {
                let mut alerts: Vec<&Alert> = s
                    .alerts
                    .values()
                    .filter(|a| a.state != State::Inactive)
                    .collect();
                alerts.sort_by(|a, b| a.labels.cmp(&b.labels));
                out.extend(alerts.into_iter().map(alert_json));
            }
        }
        json!({"alerts": out})
    }
}

fn alert_json(a: &Alert) -> Json {
    json!({
        "labels": a.labels.iter().collect::<BTreeMap<_, _>>(),
        "annotations": a.annotations,
        "state": a.state.name(),
        "activeAt": rfc3339(a.active_at),
        "value": crate::model::format_value(a.value),
    })
}

/// Where alerts go.
#[derive(Debug, Clone, Default)]
pub struct Receivers {
    /// Alertmanager base URLs (`http://host:9093`); alerts are POSTed to `/api/v2/alerts`.
    pub alertmanagers: Vec<String>,
    /// Webhook URLs, POSTed the same JSON array.
    pub webhooks: Vec<String>,
}

/// Sends `alerts` to every receiver (errors are logged; the next resend retries).
pub async fn notify(http: &reqwest::Client, receivers: &Receivers, alerts: &[Json]) -> usize {
    if alerts.is_empty() {
        return 0;
    }
    let body = Json::Array(alerts.to_vec());
    let urls = receivers
        .alertmanagers
        .iter()
        .map(|a| format!("{}/api/v2/alerts", a.trim_end_matches('/')))
        .chain(receivers.webhooks.iter().cloned());
    let mut delivered = 0;
    for url in urls {
        match http
            .post(&url)
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => delivered += 1,
            Ok(r) => tracing::warn!(%url, status = %r.status(), "an alert receiver refused alerts"),
            Err(e) => {
                tracing::warn!(%url, error = %e.without_url(), "cannot reach an alert receiver")
            }
        }
    }
    delivered
}

/// Everything the rule loop needs.
pub struct RuleLoop {
    /// The rules.
    pub rules: Arc<Rules>,
    /// The engine.
    pub engine: Arc<Engine>,
    /// The store.
    pub store: Arc<Store>,
    /// The ingest path (recording rules, `ALERTS`).
    pub ingest: Arc<Ingest>,
    /// HTTP client for notifications.
    pub http: reqwest::Client,
    /// Receivers.
    pub receivers: Receivers,
    /// The live monitor nodes, for group ownership.
    pub membership: Arc<crate::scrape::Membership>,
    /// This node.
    pub me: u64,
}

impl RuleLoop {
    /// Evaluates the groups this node owns at their slots until `cancel`.
    pub async fn run(self, cancel: tokio_util::sync::CancellationToken) {
        let mut next: HashMap<(String, String), i64> = HashMap::new();
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            let nodes = self.membership.live();
            let keys: Vec<((String, String), i64)> = {
                let mut groups = self.rules.groups.lock().unwrap_or_else(|e| e.into_inner());
                groups
                    .iter_mut()
                    .filter_map(|(k, g)| {
                        let group = g.group.as_ref()?;
                        g.owner = crate::scrape::owner(&format!("rules/{}/{}", k.0, k.1), &nodes)
                            .unwrap_or(0);
                        (g.owner == self.me).then(|| (k.clone(), self.rules.interval(group)))
                    })
                    .collect()
            };
            next.retain(|k, _| keys.iter().any(|(key, _)| key == k));
            let now = now_ms();
            for (key, interval) in keys {
                let slot = (now.div_euclid(interval)) * interval;
                let due = next.entry(key.clone()).or_insert(slot);
                if now < *due {
                    continue;
                }
                *due = slot + interval;
                let (rules, engine, store, ingest) = (
                    self.rules.clone(),
                    self.engine.clone(),
                    self.store.clone(),
                    self.ingest.clone(),
                );
                let k = key.clone();
                let alerts = tokio::task::spawn_blocking(move || {
                    evaluate(&rules, &k, slot, &engine, &store, &ingest)
                })
                .await
                .unwrap_or_default();
                notify(&self.http, &self.receivers, &alerts).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_rules_parse() {
        let groups = parse_file("builtin", BUILTIN_RULES).unwrap();
        assert_eq!(groups[0].rules.len(), 7);
        assert!(groups[0].rules.iter().all(|r| r.alerting));
    }

    #[test]
    fn rule_files_parse_and_bad_ones_say_where() {
        let text = "groups:\n- name: g\n  interval: 10s\n  rules:\n  - record: job:up:sum\n    expr: sum by (job) (up)\n  - alert: Down\n    expr: up == 0\n    for: 1m\n    keep_firing_for: 30s\n    labels: {severity: page, n: 3}\n    annotations: {summary: 'x'}\n";
        let g = parse_file("f.yml", text).unwrap();
        assert_eq!(g[0].interval_ms, 10_000);
        assert_eq!(g[0].rules[1].for_ms, 60_000);
        assert_eq!(g[0].rules[1].keep_firing_for_ms, 30_000);
        assert_eq!(g[0].rules[1].labels["n"], "3");
        let bad = parse_file(
            "f.yml",
            "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: up ==\n",
        )
        .unwrap_err();
        assert!(bad.starts_with("f.yml: group g, rule 1:"), "{bad}");
        assert!(parse_file(
            "f.yml",
            "groups:\n- name: g\n  rules:\n  - record: a b\n    expr: up\n"
        )
        .is_err());
        assert!(parse_file("f.yml", "groups: [").is_err());
    }

    #[test]
    fn templates_expand_labels_and_values() {
        let l = Labels::from_pairs(&[("instance", "h:1"), ("job", "j")]);
        assert_eq!(
            expand(
                "{{ $labels.instance }} of {{$labels.job}} is {{ $value }}",
                &l,
                0.5
            ),
            "h:1 of j is 0.5"
        );
        // Prometheus's humanize: 4 significant digits.
        assert_eq!(expand("{{ humanize $value }}", &l, 1_234_567.0), "1.235M");
        assert_eq!(
            expand("{{ printf \"%.2f\" $value }}", &l, 1.0 / 3.0),
            "0.33"
        );
        assert_eq!(expand("{{ humanizePercentage $value }}", &l, 0.25), "25%");
        assert_eq!(
            expand("{{ $labels.missing }}|{{ unclosed", &l, 0.0),
            "|{{ unclosed"
        );
    }

    /// Outputs checked against Prometheus 2.42 (`promtool test rules` prints them).
    #[test]
    fn templates_print_like_prometheus() {
        let l = Labels::from_pairs(&[("__name__", "v"), ("k", "a")]);
        let ext = Labels::from_pairs(&[("cluster", "c1")]);
        let all = "{{ $value }}|{{ humanize $value }}|{{ $value | humanize1024 }}|{{ humanizePercentage $value }}|{{ humanizeDuration $value }}|{{ printf \"%.2f\" $value }}|{{ printf \"%d-%s\" 3 \"x\" }}|{{ printf \"%v %g %e\" $value $value $value }}";
        let cases = [
            (123456.0, "123456|123.5k|120.6ki|1.235e+07%|1d 10h 17m 36s|123456.00|3-x|123456 123456 1.234560e+05"),
            (1e6, "1e+06|1M|976.6ki|1e+08%|11d 13h 46m 40s|1000000.00|3-x|1e+06 1e+06 1.000000e+06"),
            (0.0001, "0.0001|100u|0.0001|0.01%|100us|0.00|3-x|0.0001 0.0001 1.000000e-04"),
            (-12.5, "-12.5|-12.5|-12.5|-1250%|-12.5s|-12.50|3-x|-12.5 -12.5 -1.250000e+01"),
            (0.0, "0|0|0|0%|0s|0.00|3-x|0 0 0.000000e+00"),
            (90061.5, "90061.5|90.06k|87.95ki|9.006e+06%|1d 1h 1m 1s|90061.50|3-x|90061.5 90061.5 9.006150e+04"),
        ];
        for (v, want) in cases {
            assert_eq!(expand_with(all, &l, &ext, v), want, "{v}");
        }
        assert_eq!(
            expand_with(
                "{{ $labels }}|{{ $labels.k | toUpper }}|{{- \"  x  \" -}}|{{ .Value }}|{{ $externalLabels.cluster }}|{{ title \"ab cd\" }}",
                &l,
                &ext,
                1e6
            ),
            "map[__name__:v k:a]|A|  x  |1e+06|c1|Ab Cd"
        );
        assert_eq!(expand("a {{- /* note */ -}} b", &l, 0.0), "ab");
        assert_eq!(expand("{{ 1e-5 }} {{ 1e21 }}", &l, 0.0), "1e-05 1e+21");
    }
}
