//! The PromQL engine: evaluates a query against a [`Queryable`] the way Prometheus 2.42 does
//! (its `promql/engine.go`, `functions.go` and `quantile.go`), so that the same samples give the
//! same answers, down to which series survive, which labels they carry and which errors come
//! back.
//!
//! How a query runs:
//! - `promql-parser` parses it; what 2.42 does not know is refused as a parse error (functions
//!   added later, `limitk`, `fill`, `or` between matchers), and `holt_winters`, which the parser
//!   knows only under its 3.x name, is registered with it.
//! - Every selector's series are read once, for the whole span the query needs
//!   (`[start - offset - range - lookback, end - offset]`), sorted by labels as Prometheus's
//!   storage returns them, and sliced at each step by binary search.
//! - An expression is evaluated at one timestamp at a time; a range query evaluates it at each
//!   step and joins the vectors into series. Subquery steps are aligned to multiples of the
//!   step, so consecutive outer steps share them: they are memoised by timestamp. Subtrees fixed
//!   by `@` (Prometheus's "step invariant" expressions) are evaluated once.
//! - Evaluation runs on a thread of its own with a large stack: a deeply nested query cannot
//!   overflow the caller's stack, and a bug here comes back as an error instead of a panic.
//!
//! Rules of 2.42 worth knowing when reading the code (they changed in 3.0):
//! - Both ends of a window are inclusive: an instant selector takes the latest sample in
//!   `[t - lookback, t]`, a range selector the samples in `[t - range, t]`.
//! - `rate`/`increase`/`delta` limit the extrapolation towards a counter's zero point before
//!   comparing the gaps to the range's ends with 1.1 times the average interval.
//! - Results drop the metric name after arithmetic, unary minus, most functions and
//!   aggregations; comparisons without `bool`, `atan2`, `last_over_time`, `sort*`, `label_*`
//!   keep it.
//! - A range function's or a unary minus's output must not hold one label set twice over all
//!   the steps of the evaluation (elsewhere the check is per step).
//! - `topk`/`bottomk` keep a heap that pops and pushes (not the later replace-and-fix), which
//!   decides which of equal values survive; `sort` is Go's (an insertion sort up to 12).
//! - `predict_linear` of an `@` range, in a range query or a subquery, slices that range moved
//!   by the step's distance from the evaluation's start (fixed in 2.51), over the samples read
//!   for the unmoved range.
//!
//! Checked against Prometheus 2.42 itself (`promtool test rules` and a server reading the same
//! samples from a block) on some 20 000 instant and range evaluations of 300 expressions. What
//! still differs, by design or for want of information:
//! - Output order where Prometheus iterates a Go map (`histogram_quantile`'s series, and the
//!   series of any intermediate result in a range query): random there, stable here.
//! - Which of equal values `topk`/`bottomk`/`sort` prefer follows the order of their input;
//!   Prometheus reads series in label order from blocks (what this engine does) but in creation
//!   order from its head block.
//! - Native histograms do not exist here (`histogram_count`/`_sum`/`_fraction` return nothing);
//!   regular expressions are Rust's, whose `\d`, `\w`, `\s` are Unicode-aware where Go's are
//!   ASCII.

use crate::model::{is_stale, Labels, Queryable, Series, METRIC_NAME};
use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::token::{
    TokenId, T_ADD, T_ATAN2, T_AVG, T_BOTTOMK, T_COUNT, T_COUNT_VALUES, T_DIV, T_EQLC, T_GROUP,
    T_GTE, T_GTR, T_LAND, T_LIMITK, T_LIMIT_RATIO, T_LOR, T_LSS, T_LTE, T_LUNLESS, T_MAX, T_MIN,
    T_MOD, T_MUL, T_NEQ, T_POW, T_QUANTILE, T_STDDEV, T_STDVAR, T_SUB, T_SUM, T_TOPK,
};
use promql_parser::parser::value::ValueType;
use promql_parser::parser::{
    AggregateExpr, AtModifier, BinModifier, BinaryExpr, Call, Expr, Function, LabelModifier,
    MatrixSelector, Offset, SubqueryExpr, VectorMatchCardinality, VectorSelector,
};
use regex::Regex;
use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How far back an instant selector looks for a series' latest sample: Prometheus's default.
pub const DEFAULT_LOOKBACK_MS: i64 = 5 * 60 * 1000;
/// The step of a subquery written without one (`x[1h:]`): Prometheus's default global
/// evaluation interval, which it uses for instant and range queries alike.
const DEFAULT_SUBQUERY_STEP_MS: i64 = 60 * 1000;
/// Prometheus's default `--query.max-samples`.
const MAX_SAMPLES: usize = 50_000_000;
/// Prometheus's default `--query.timeout`.
const QUERY_TIMEOUT: Duration = Duration::from_secs(120);
/// Deepest expression tree evaluated (a sum of 1000 terms is 1000 deep).
const MAX_DEPTH: usize = 1000;
/// Most operators, brackets and names in a query, checked before parsing: the parser and the
/// syntax tree's destructor recurse once per level.
const MAX_TOKENS: usize = 10_000;
/// Stack of the evaluation thread (reserved, not committed, until used).
const EVAL_STACK_BYTES: usize = 64 << 20;

/// Evaluates PromQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Engine {
    /// How far back an instant selector looks for a series' latest sample (0 or less: the
    /// default, 5 minutes).
    pub lookback_ms: i64,
}

impl Default for Engine {
    fn default() -> Engine {
        Engine {
            lookback_ms: DEFAULT_LOOKBACK_MS,
        }
    }
}

/// What a query returns.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `(evaluation time ms, value)`.
    Scalar(i64, f64),
    /// `(evaluation time ms, value)`.
    String(i64, String),
    /// One sample per series, in the order Prometheus produces them (which matters after
    /// `sort`, `sort_desc`, `topk` and `bottomk`).
    Vector(Vec<Sample>),
    /// Series of samples (an instant query of a range selector or a subquery).
    Matrix(Vec<Series>),
}

/// One element of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series' labels.
    pub labels: Labels,
    /// The evaluation time (ms).
    pub t: i64,
    /// The value.
    pub v: f64,
}

/// Why a query has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// The query does not parse, or uses what Prometheus 2.42 does not have.
    #[error("{0}")]
    Parse(String),
    /// Evaluation failed (e.g. "vector cannot contain metrics with the same labelset", or a
    /// many-to-many match).
    #[error("{0}")]
    Eval(String),
    /// The query ran longer than two minutes.
    #[error("query timed out in expression evaluation")]
    Timeout,
    /// The query would load more than 50 million samples.
    #[error("query processing would load too many samples into memory in query execution")]
    TooManySamples,
}

impl Engine {
    /// Evaluates `query` at `t_ms`.
    pub fn instant(&self, q: &dyn Queryable, query: &str, t_ms: i64) -> Result<Value, QueryError> {
        let lookback = self.lookback();
        isolated(move || {
            let expr = parse(query)?;
            let ev = Evaluator::new(q, &expr, lookback, t_ms, t_ms)?;
            Ok(match ev.eval(&expr, t_ms)? {
                Val::Scalar(v) => Value::Scalar(t_ms, v),
                Val::Str(s) => Value::String(t_ms, s),
                Val::Vector(vector) => Value::Vector(
                    vector
                        .into_iter()
                        .map(|el| Sample {
                            labels: el.labels,
                            t: t_ms,
                            v: el.v,
                        })
                        .collect(),
                ),
                Val::Matrix(matrix) => Value::Matrix(matrix),
            })
        })
    }

    /// Evaluates `query` at `start_ms`, `start_ms + step_ms`, ... up to `end_ms`: a matrix whose
    /// series are sorted by labels (an expression of scalar type gives one series without
    /// labels).
    pub fn range(
        &self,
        q: &dyn Queryable,
        query: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<Series>, QueryError> {
        if step_ms <= 0 {
            return Err(QueryError::Eval(
                "zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
            ));
        }
        if end_ms < start_ms {
            return Err(QueryError::Eval(
                "end timestamp must not be before start time".into(),
            ));
        }
        if (i128::from(end_ms) - i128::from(start_ms)) / i128::from(step_ms) >= MAX_SAMPLES as i128
        {
            return Err(QueryError::TooManySamples);
        }
        let lookback = self.lookback();
        isolated(move || {
            let expr = parse(query)?;
            let kind = expr.value_type();
            if !matches!(kind, ValueType::Vector | ValueType::Scalar) {
                return Err(QueryError::Eval(format!(
                    "invalid expression type \"{}\" for range query, must be Scalar or instant Vector",
                    type_name(kind)
                )));
            }
            let ev = Evaluator::new(q, &expr, lookback, start_ms, end_ms)?;
            let mut out: Vec<Series> = Vec::new();
            let mut index: HashMap<Labels, usize> = HashMap::new();
            let mut points = 0usize;
            let mut t = start_ms;
            loop {
                ev.check_deadline()?;
                let step: Vector = match ev.eval(&expr, t)? {
                    Val::Scalar(v) => vec![El {
                        labels: Labels::default(),
                        v,
                    }],
                    Val::Vector(vector) => vector,
                    other => return Err(unexpected("the query", &other)),
                };
                points += step.len();
                if points > MAX_SAMPLES {
                    return Err(QueryError::TooManySamples);
                }
                for el in step {
                    let i = *index.entry(el.labels.clone()).or_insert_with(|| {
                        out.push(Series {
                            labels: el.labels,
                            samples: Vec::new(),
                        });
                        out.len() - 1
                    });
                    out[i].samples.push((t, el.v));
                }
                match t.checked_add(step_ms) {
                    Some(next) if next <= end_ms => t = next,
                    _ => break,
                }
            }
            out.sort_by(|a, b| a.labels.cmp(&b.labels));
            Ok(out)
        })
    }

    fn lookback(&self) -> i64 {
        if self.lookback_ms > 0 {
            self.lookback_ms
        } else {
            DEFAULT_LOOKBACK_MS
        }
    }
}

/// Runs `f` on a thread of its own with a large stack; a panic becomes an error.
fn isolated<T: Send>(f: impl FnOnce() -> Result<T, QueryError> + Send) -> Result<T, QueryError> {
    thread::scope(|scope| {
        let worker = thread::Builder::new()
            .name("promql".into())
            .stack_size(EVAL_STACK_BYTES)
            .spawn_scoped(scope, f)
            .map_err(|e| QueryError::Eval(format!("cannot start the query's thread: {e}")))?;
        worker.join().unwrap_or_else(|_| {
            Err(QueryError::Eval(
                "internal error: the query's evaluation panicked".into(),
            ))
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Parsing and what 2.42 accepts

/// The functions of Prometheus 2.42 (`promql-parser` knows newer ones too).
const FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "cos",
    "cosh",
    "count_over_time",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "deg",
    "delta",
    "deriv",
    "exp",
    "floor",
    "histogram_count",
    "histogram_fraction",
    "histogram_quantile",
    "histogram_sum",
    "holt_winters",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log10",
    "log2",
    "max_over_time",
    "min_over_time",
    "minute",
    "month",
    "pi",
    "predict_linear",
    "present_over_time",
    "quantile_over_time",
    "rad",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sin",
    "sinh",
    "sort",
    "sort_desc",
    "sqrt",
    "stddev_over_time",
    "stdvar_over_time",
    "sum_over_time",
    "tan",
    "tanh",
    "time",
    "timestamp",
    "vector",
    "year",
];

/// Functions whose result depends on the evaluation time even when their arguments do not
/// (Prometheus's `AtModifierUnsafeFunctions`).
const AT_UNSAFE: &[&str] = &[
    "days_in_month",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "hour",
    "minute",
    "month",
    "year",
    "predict_linear",
    "time",
    "timestamp",
];

fn parse(query: &str) -> Result<Expr, QueryError> {
    if token_estimate(query) > MAX_TOKENS {
        return Err(QueryError::Parse(format!(
            "parse error: query has more than {MAX_TOKENS} operators, brackets and names"
        )));
    }
    let expr = parse_expr(query).map_err(|e| QueryError::Parse(format!("parse error: {e}")))?;
    check(&expr, 0)?;
    check_legacy_syntax(query)?;
    Ok(expr)
}

/// Parses PromQL with `promql-parser`, first refusing durations it would overflow on (it
/// panics on `x[99999999999999999999m]`; found by the `monitor_input` fuzz target). Every
/// parse of text from outside goes through here.
pub fn parse_expr(query: &str) -> Result<Expr, String> {
    for tok in tokens(query) {
        if let Tok::Number(text) = tok {
            if is_duration(text) && duration_ms_checked(text).is_none() {
                return Err(format!("duration out of range: {text}"));
            }
        }
    }
    register_holt_winters();
    promql_parser::parser::parse(query)
}

/// A duration's milliseconds, `None` past what a signed 64-bit count of nanoseconds holds
/// (Prometheus's limit, about 292 years).
fn duration_ms_checked(text: &str) -> Option<i64> {
    const MAX_MS: u128 = (i64::MAX / 1_000_000) as u128;
    let mut rest = text;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 30 {
            return None;
        }
        let n: u128 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit_ms, len): (u128, usize) = if rest.starts_with("ms") {
            (1, 2)
        } else {
            match rest.bytes().next()? {
                b's' => (1_000, 1),
                b'm' => (60_000, 1),
                b'h' => (3_600_000, 1),
                b'd' => (86_400_000, 1),
                b'w' => (604_800_000, 1),
                b'y' => (31_536_000_000, 1),
                _ => return None,
            }
        };
        rest = &rest[len..];
        total = total.checked_add(n.checked_mul(unit_ms)?)?;
        if total > MAX_MS {
            return None;
        }
    }
    i64::try_from(total).ok()
}

/// `holt_winters` is called `double_exponential_smoothing` in the parser's (3.x) function
/// table; 2.42 knows only the old name.
fn register_holt_winters() {
    static REGISTERED: OnceLock<()> = OnceLock::new();
    REGISTERED.get_or_init(|| {
        let f = Function::new(
            "holt_winters",
            vec![ValueType::Matrix, ValueType::Scalar, ValueType::Scalar],
            0,
            ValueType::Vector,
            false,
        );
        // Fails only if the parser ever knows the name itself, which is as good.
        let _ = promql_parser::parser::register_extra_functions(vec![f]);
    });
}

/// Counts operators, brackets and names outside string literals: an upper bound on the depth
/// of the syntax tree.
fn token_estimate(query: &str) -> usize {
    let mut n = 0;
    let mut in_word = false;
    let mut chars = query.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                in_word = false;
                n += 1;
                while let Some(d) = chars.next() {
                    if d == '\\' && c != '`' {
                        chars.next();
                    } else if d == c {
                        break;
                    }
                }
            }
            c if c.is_alphanumeric() || c == '_' || c == ':' || c == '.' => {
                if !in_word {
                    n += 1;
                    in_word = true;
                }
            }
            c if c.is_whitespace() => in_word = false,
            _ => {
                in_word = false;
                n += 1;
            }
        }
    }
    n
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok<'a> {
    Ident(&'a str),
    /// A number or a duration, as written.
    Number(&'a str),
    Str,
    Punct(char),
}

/// The query's tokens, roughly (enough for [`check_legacy_syntax`]).
fn tokens(query: &str) -> Vec<Tok<'_>> {
    let bytes = query.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    // Within brackets a colon separates a subquery's range and step.
    let mut brackets = 0usize;
    while let Some(&b) = bytes.get(i) {
        let c = char::from(b);
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == '#' {
            while bytes.get(i).is_some_and(|&b| b != b'\n') {
                i += 1;
            }
        } else if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while let Some(&d) = bytes.get(i) {
                i += 1;
                if d == b'\\' && c != '`' {
                    i += 1;
                } else if d == b {
                    break;
                }
            }
            out.push(Tok::Str);
        } else if c.is_ascii_alphabetic()
            || c == '_'
            || (c == ':' && brackets == 0)
            || !b.is_ascii()
        {
            let start = i;
            while bytes.get(i).is_some_and(|&d| {
                d.is_ascii_alphanumeric() || d == b'_' || d == b':' || !d.is_ascii()
            }) {
                i += 1;
            }
            out.push(Tok::Ident(query.get(start..i).unwrap_or("")));
        } else if c.is_ascii_digit()
            || (c == '.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            let start = i;
            while let Some(&d) = bytes.get(i) {
                let exponent_sign = (d == b'+' || d == b'-')
                    && matches!(bytes.get(i.wrapping_sub(1)), Some(b'e' | b'E'))
                    && !query.get(start..i).unwrap_or("").starts_with("0x");
                if d.is_ascii_alphanumeric() || d == b'.' || d == b'_' || exponent_sign {
                    i += 1;
                } else {
                    break;
                }
            }
            out.push(Tok::Number(query.get(start..i).unwrap_or("")));
        } else {
            match c {
                '[' => brackets += 1,
                ']' => brackets = brackets.saturating_sub(1),
                _ => {}
            }
            out.push(Tok::Punct(c));
            i += 1;
        }
    }
    out
}

/// `5m`, `1h30m`, `100ms`: a duration as 2.42 writes them (a number alone is not one).
fn is_duration(text: &str) -> bool {
    let mut rest = text;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = if rest.starts_with("ms") {
            2
        } else if rest.starts_with(['s', 'm', 'h', 'd', 'w', 'y']) {
            1
        } else {
            return false;
        };
        rest = &rest[unit..];
    }
    true
}

/// Refuses the syntax `promql-parser` takes from Prometheus 3 that 2.42 does not know: quoted
/// label names (`{"a"="b"}`, `by ("a")`) and durations written as plain numbers (`x[300]`,
/// `offset 60`).
fn check_legacy_syntax(query: &str) -> Result<(), QueryError> {
    let toks = tokens(query);
    let mut braces = 0usize;
    let mut brackets = 0usize;
    let mut grouping = false;
    for (i, tok) in toks.iter().enumerate() {
        let next = toks.get(i + 1).copied();
        match *tok {
            Tok::Punct('{') => braces += 1,
            Tok::Punct('}') => braces = braces.saturating_sub(1),
            Tok::Punct('[') => brackets += 1,
            Tok::Punct(']') => brackets = brackets.saturating_sub(1),
            Tok::Punct(')') => grouping = false,
            Tok::Ident(word)
                if [
                    "by",
                    "without",
                    "on",
                    "ignoring",
                    "group_left",
                    "group_right",
                ]
                .iter()
                .any(|k| k.eq_ignore_ascii_case(word))
                    && next == Some(Tok::Punct('(')) =>
            {
                grouping = true;
            }
            Tok::Str if grouping => {
                return Err(QueryError::Parse(
                    "parse error: unexpected string in grouping opts, expected label".into(),
                ))
            }
            _ => {}
        }
        let name_position = braces > 0 && matches!(tok, Tok::Punct('{') | Tok::Punct(','));
        if name_position && next == Some(Tok::Str) {
            return Err(QueryError::Parse(
                "parse error: unexpected string in label matching, expected identifier or \"}\""
                    .into(),
            ));
        }
        let wants_duration = match tok {
            Tok::Punct('[') => true,
            Tok::Punct(':') => brackets > 0 && next != Some(Tok::Punct(']')),
            Tok::Ident(word) => word.eq_ignore_ascii_case("offset"),
            _ => false,
        };
        if wants_duration {
            let after = match next {
                Some(Tok::Punct('+' | '-')) => toks.get(i + 2).copied(),
                other => other,
            };
            if let Some(Tok::Number(text)) = after {
                if !is_duration(text) {
                    return Err(QueryError::Parse(format!(
                        "parse error: bad duration syntax: {text:?}"
                    )));
                }
            }
        }
    }
    Ok(())
}

fn unsupported(what: &str) -> QueryError {
    QueryError::Parse(format!(
        "parse error: {what} is not supported by PromQL 2.42"
    ))
}

/// Refuses what Prometheus 2.42 would not parse, and trees deeper than [`MAX_DEPTH`].
fn check(e: &Expr, depth: usize) -> Result<(), QueryError> {
    if depth > MAX_DEPTH {
        return Err(QueryError::Parse(format!(
            "parse error: query is nested more than {MAX_DEPTH} levels deep"
        )));
    }
    let d = depth + 1;
    match e {
        Expr::Aggregate(a) => {
            if matches!(a.op.id(), T_LIMITK | T_LIMIT_RATIO) {
                return Err(unsupported(&format!("aggregation {}", a.op)));
            }
            check(&a.expr, d)?;
            if let Some(p) = &a.param {
                check(p, d)?;
            }
        }
        Expr::Binary(b) => {
            if let Some(m) = &b.modifier {
                if m.fill_values.lhs.is_some() || m.fill_values.rhs.is_some() {
                    return Err(unsupported("fill()"));
                }
            }
            check(&b.lhs, d)?;
            check(&b.rhs, d)?;
        }
        Expr::Call(c) => {
            if !FUNCTIONS.contains(&c.func.name) {
                return Err(QueryError::Parse(format!(
                    "parse error: unknown function with name {:?}",
                    c.func.name
                )));
            }
            for a in &c.args.args {
                check(a, d)?;
            }
        }
        Expr::VectorSelector(vs) => check_selector(vs)?,
        Expr::MatrixSelector(ms) => check_selector(&ms.vs)?,
        Expr::Subquery(sq) => check(&sq.expr, d)?,
        Expr::Paren(p) => check(&p.expr, d)?,
        Expr::Unary(u) => check(&u.expr, d)?,
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => {}
        Expr::Extension(_) => return Err(unsupported("an extension expression")),
    }
    Ok(())
}

fn check_selector(vs: &VectorSelector) -> Result<(), QueryError> {
    if !vs.matchers.or_matchers.is_empty() {
        return Err(unsupported("`or` between label matchers"));
    }
    for m in &vs.matchers.matchers {
        if !valid_label_name(&m.name) {
            return Err(QueryError::Parse(format!(
                "parse error: invalid label name {:?}",
                m.name
            )));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Values inside the evaluator

/// One element of an instant vector (its timestamp is the evaluation time).
#[derive(Debug, Clone)]
struct El {
    labels: Labels,
    v: f64,
}

type Vector = Vec<El>;

/// One series of a range vector: its labels and its samples in the range.
type RangeSeries<'a> = (Labels, Cow<'a, [(i64, f64)]>);

#[derive(Debug, Clone)]
enum Val {
    Scalar(f64),
    Str(String),
    Vector(Vector),
    Matrix(Vec<Series>),
}

fn val_name(v: &Val) -> &'static str {
    match v {
        Val::Scalar(_) => "scalar",
        Val::Str(_) => "string",
        Val::Vector(_) => "instant vector",
        Val::Matrix(_) => "range vector",
    }
}

fn type_name(t: ValueType) -> &'static str {
    match t {
        ValueType::Scalar => "scalar",
        ValueType::String => "string",
        ValueType::Vector => "instant vector",
        ValueType::Matrix => "range vector",
    }
}

fn unexpected(what: &str, got: &Val) -> QueryError {
    QueryError::Eval(format!("unexpected {} as {what}", val_name(got)))
}

fn addr(e: &Expr) -> usize {
    e as *const Expr as usize
}

fn selector_key(vs: &VectorSelector) -> usize {
    vs as *const VectorSelector as usize
}

fn dur_ms(d: &Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => dur_ms(d),
        Some(Offset::Neg(d)) => dur_ms(d).saturating_neg(),
    }
}

fn system_time_ms(t: &SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => dur_ms(&d),
        Err(e) => dur_ms(&e.duration()).saturating_neg(),
    }
}

/// The first multiple of `step` at or after `t` (none past `i64::MAX`).
fn align_up(t: i64, step: i64) -> Option<i64> {
    let rem = t.rem_euclid(step);
    if rem == 0 {
        Some(t)
    } else {
        (t - rem).checked_add(step)
    }
}

fn unwrap_parens(mut e: &Expr) -> &Expr {
    while let Expr::Paren(p) = e {
        e = &p.expr;
    }
    e
}

/// The matchers of a selector, its metric name included.
fn selector_matchers(vs: &VectorSelector) -> Vec<Matcher> {
    let mut matchers = vs.matchers.matchers.clone();
    if let Some(name) = &vs.name {
        matchers.push(Matcher::new(MatchOp::Equal, METRIC_NAME, name));
    }
    matchers
}

// ---------------------------------------------------------------------------------------------
// The evaluator

struct Evaluator {
    lookback: i64,
    /// The query's start and end, what `@ start()` and `@ end()` mean.
    start: i64,
    end: i64,
    /// Every selector's series, by the selector's address in the syntax tree.
    data: HashMap<usize, Vec<Series>>,
    /// Subtrees whose value does not depend on the evaluation time (Prometheus's step
    /// invariant expressions), by address; their value is computed once.
    invariant: HashSet<usize>,
    invariant_values: RefCell<HashMap<usize, Val>>,
    /// Subquery steps already evaluated: (subquery's address, timestamp).
    subquery_steps: RefCell<HashMap<(usize, i64), Rc<Vector>>>,
    /// label_replace's regexes, compiled once per query.
    regexes: RefCell<HashMap<String, Option<Regex>>>,
    samples: Cell<usize>,
    /// The first evaluation time of the evaluator Prometheus would be in: the query's start,
    /// or inside a subquery its first step (see [`Evaluator::call_range`]).
    eval_start: Cell<i64>,
    /// For [`Evaluator::unique_over_steps`]: (expression, output labels) to input labels.
    output_sources: RefCell<HashMap<(usize, Labels), Labels>>,
    /// [`Evaluator::names_collide`]'s answers by selector.
    collisions: RefCell<HashMap<usize, bool>>,
    /// Label sets without their metric name, by the identity of the set they came from
    /// (which the entry keeps alive, so the identity is not reused): a range query drops the
    /// name of the same input series at every step.
    unnamed: RefCell<HashMap<usize, (Labels, Labels)>>,
    /// Per selector and series, where the last window began and ended: a range query's steps
    /// move forward, so the next window is found by stepping on from there, reading the
    /// samples in order instead of binary-searching cold memory at every step.
    cursors: RefCell<HashMap<usize, Vec<(usize, usize)>>>,
    /// Aggregation group keys, by (aggregation, identity of the input label set), with the
    /// input set kept alive; keys are interned per aggregation, so equal keys share one
    /// identity and a step groups by comparing numbers.
    group_keys: RefCell<HashMap<(usize, usize), (Labels, Labels)>>,
    interned_keys: RefCell<HashMap<(usize, Labels), Labels>>,
    deadline: Instant,
}

impl Evaluator {
    /// Reads every selector's series for the span `[start, end]` of evaluation times.
    fn new(
        q: &dyn Queryable,
        expr: &Expr,
        lookback: i64,
        start: i64,
        end: i64,
    ) -> Result<Evaluator, QueryError> {
        let mut ev = Evaluator {
            lookback,
            start,
            end,
            data: HashMap::new(),
            invariant: HashSet::new(),
            invariant_values: RefCell::new(HashMap::new()),
            subquery_steps: RefCell::new(HashMap::new()),
            regexes: RefCell::new(HashMap::new()),
            samples: Cell::new(0),
            eval_start: Cell::new(start),
            output_sources: RefCell::new(HashMap::new()),
            collisions: RefCell::new(HashMap::new()),
            unnamed: RefCell::new(HashMap::new()),
            cursors: RefCell::new(HashMap::new()),
            group_keys: RefCell::new(HashMap::new()),
            interned_keys: RefCell::new(HashMap::new()),
            deadline: Instant::now() + QUERY_TIMEOUT,
        };
        let mut wanted: HashMap<usize, (&VectorSelector, i64, i64)> = HashMap::new();
        ev.plan(expr, start, end, &mut wanted);
        for (key, (vs, mint, maxt)) in wanted {
            ev.check_deadline()?;
            let mut series = q.select(&selector_matchers(vs), mint, maxt);
            ev.add_samples(series.iter().map(|s| s.samples.len()).sum())?;
            series.sort_by(|a, b| a.labels.cmp(&b.labels));
            ev.data.insert(key, series);
        }
        if mark_invariant(expr, &mut ev.invariant) {
            ev.invariant.insert(addr(expr));
        }
        Ok(ev)
    }

    /// Collects the time span each selector is read over when `e` is evaluated at times in
    /// `[lo, hi]`.
    fn plan<'e>(
        &self,
        e: &'e Expr,
        lo: i64,
        hi: i64,
        out: &mut HashMap<usize, (&'e VectorSelector, i64, i64)>,
    ) {
        fn want<'e>(
            out: &mut HashMap<usize, (&'e VectorSelector, i64, i64)>,
            vs: &'e VectorSelector,
            mint: i64,
            maxt: i64,
        ) {
            let entry = out.entry(selector_key(vs)).or_insert((vs, mint, maxt));
            entry.1 = entry.1.min(mint);
            entry.2 = entry.2.max(maxt);
        }
        match e {
            Expr::VectorSelector(vs) => {
                let (a, b) = self.span(&vs.at, &vs.offset, lo, hi);
                want(out, vs, a.saturating_sub(self.lookback), b);
            }
            Expr::MatrixSelector(ms) => {
                let (a, b) = self.span(&ms.vs.at, &ms.vs.offset, lo, hi);
                want(out, &ms.vs, a.saturating_sub(dur_ms(&ms.range)), b);
            }
            Expr::Subquery(sq) => {
                let (a, b) = self.span(&sq.at, &sq.offset, lo, hi);
                self.plan(&sq.expr, a.saturating_sub(dur_ms(&sq.range)), b, out);
            }
            Expr::Aggregate(a) => {
                self.plan(&a.expr, lo, hi, out);
                if let Some(p) = &a.param {
                    self.plan(p, lo, hi, out);
                }
            }
            Expr::Binary(b) => {
                self.plan(&b.lhs, lo, hi, out);
                self.plan(&b.rhs, lo, hi, out);
            }
            Expr::Call(c) => {
                for a in &c.args.args {
                    self.plan(a, lo, hi, out);
                }
            }
            Expr::Paren(p) => self.plan(&p.expr, lo, hi, out),
            Expr::Unary(u) => self.plan(&u.expr, lo, hi, out),
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
        }
    }

    /// The reference times of a node with these modifiers evaluated at times in `[lo, hi]`.
    fn span(
        &self,
        at: &Option<AtModifier>,
        offset: &Option<Offset>,
        lo: i64,
        hi: i64,
    ) -> (i64, i64) {
        if at.is_some() {
            let t = self.ref_time(at, offset, lo);
            (t, t)
        } else {
            let off = offset_ms(offset);
            (lo.saturating_sub(off), hi.saturating_sub(off))
        }
    }

    /// The time a selector or subquery looks at when evaluated at `ts`.
    fn ref_time(&self, at: &Option<AtModifier>, offset: &Option<Offset>, ts: i64) -> i64 {
        let base = match at {
            None => ts,
            Some(AtModifier::Start) => self.start,
            Some(AtModifier::End) => self.end,
            Some(AtModifier::At(t)) => system_time_ms(t),
        };
        base.saturating_sub(offset_ms(offset))
    }

    fn add_samples(&self, n: usize) -> Result<(), QueryError> {
        let total = self.samples.get().saturating_add(n);
        self.samples.set(total);
        if total > MAX_SAMPLES {
            Err(QueryError::TooManySamples)
        } else {
            Ok(())
        }
    }

    /// [`drop_name`], remembered per input label set.
    fn drop_name(&self, l: &Labels) -> Labels {
        if l.name().is_none() {
            return l.clone();
        }
        let mut cache = self.unnamed.borrow_mut();
        if let Some((_, unnamed)) = cache.get(&l.identity()) {
            return unnamed.clone();
        }
        let unnamed = l.without_name();
        if cache.len() >= IDENTITY_CACHE_ENTRIES {
            // Inputs made afresh at every step never hit; do not let them pile up.
            cache.clear();
        }
        cache.insert(l.identity(), (l.clone(), unnamed.clone()));
        unnamed
    }

    fn check_deadline(&self) -> Result<(), QueryError> {
        if Instant::now() > self.deadline {
            Err(QueryError::Timeout)
        } else {
            Ok(())
        }
    }

    fn eval(&self, e: &Expr, ts: i64) -> Result<Val, QueryError> {
        let key = addr(e);
        if !self.invariant.contains(&key) {
            return self.eval_node(e, ts);
        }
        if let Some(v) = self.invariant_values.borrow().get(&key) {
            return Ok(v.clone());
        }
        let v = self.eval_node(e, ts)?;
        self.invariant_values.borrow_mut().insert(key, v.clone());
        Ok(v)
    }

    fn eval_node(&self, e: &Expr, ts: i64) -> Result<Val, QueryError> {
        match e {
            Expr::NumberLiteral(n) => Ok(Val::Scalar(n.val)),
            Expr::StringLiteral(s) => Ok(Val::Str(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, ts),
            Expr::Unary(u) => match self.eval(&u.expr, ts)? {
                Val::Scalar(v) => Ok(Val::Scalar(-v)),
                Val::Vector(vector) => {
                    let out: Vector = vector
                        .iter()
                        .map(|el| El {
                            labels: self.drop_name(&el.labels),
                            v: -el.v,
                        })
                        .collect();
                    self.unique_over_steps(addr(e), vector.iter().map(|el| &el.labels).zip(&out))?;
                    Ok(Val::Vector(out))
                }
                other => Err(unexpected("operand of unary minus", &other)),
            },
            Expr::VectorSelector(vs) => Ok(Val::Vector(
                self.select_instant(vs, ts)
                    .into_iter()
                    .map(|(labels, _, v)| El {
                        labels: labels.clone(),
                        v,
                    })
                    .collect(),
            )),
            Expr::MatrixSelector(ms) => {
                let (_, _, series) = self.select_range(ms, ts, 0);
                Ok(Val::Matrix(
                    series
                        .into_iter()
                        .map(|(labels, points)| Series {
                            labels,
                            samples: points.into_owned(),
                        })
                        .collect(),
                ))
            }
            Expr::Subquery(sq) => Ok(Val::Matrix(self.subquery(sq, ts)?)),
            Expr::Aggregate(a) => self.aggregate(a, ts),
            Expr::Binary(b) => self.binary(b, ts),
            Expr::Call(c) => self.call(c, ts),
            Expr::Extension(_) => Err(QueryError::Eval(
                "extension expressions are not supported".into(),
            )),
        }
    }

    fn eval_vector(&self, e: &Expr, ts: i64) -> Result<Vector, QueryError> {
        match self.eval(e, ts)? {
            Val::Vector(v) => Ok(v),
            other => Err(unexpected("instant vector argument", &other)),
        }
    }

    fn eval_scalar(&self, e: &Expr, ts: i64) -> Result<f64, QueryError> {
        match self.eval(e, ts)? {
            Val::Scalar(v) => Ok(v),
            other => Err(unexpected("scalar argument", &other)),
        }
    }

    fn eval_string(&self, e: &Expr, ts: i64) -> Result<String, QueryError> {
        match self.eval(e, ts)? {
            Val::Str(s) => Ok(s),
            other => Err(unexpected("string argument", &other)),
        }
    }

    /// Each series' latest sample in `[ref - lookback, ref]`, unless it is a staleness marker:
    /// `(labels, sample time, value)`.
    fn select_instant(&self, vs: &VectorSelector, ts: i64) -> Vec<(&Labels, i64, f64)> {
        let reft = self.ref_time(&vs.at, &vs.offset, ts);
        let oldest = reft.saturating_sub(self.lookback);
        let Some(series) = self.data.get(&selector_key(vs)) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(series.len());
        let mut cursors = self.cursors.borrow_mut();
        let cursors = cursors
            .entry(selector_key(vs))
            .or_insert_with(|| vec![(0, 0); series.len()]);
        for (s, cursor) in series.iter().zip(cursors.iter_mut()) {
            let (_, after) = window_from(&s.samples, reft, reft, cursor);
            let Some(&(t, v)) = after.checked_sub(1).and_then(|i| s.samples.get(i)) else {
                continue;
            };
            if t < oldest || is_stale(v) {
                continue;
            }
            out.push((&s.labels, t, v));
        }
        out
    }

    /// Each series' samples in `[ref - range, ref]` without staleness markers, series without
    /// any left out; with the range's start and end. `shift` moves the range (see
    /// [`Evaluator::call_range`]).
    fn select_range(
        &self,
        ms: &MatrixSelector,
        ts: i64,
        shift: i64,
    ) -> (i64, i64, Vec<RangeSeries<'_>>) {
        let end = self
            .ref_time(&ms.vs.at, &ms.vs.offset, ts)
            .saturating_add(shift);
        let start = end.saturating_sub(dur_ms(&ms.range));
        let mut out = Vec::new();
        if let Some(series) = self.data.get(&selector_key(&ms.vs)) {
            let mut cursors = self.cursors.borrow_mut();
            let cursors = cursors
                .entry(selector_key(&ms.vs))
                .or_insert_with(|| vec![(0, 0); series.len()]);
            for (s, cursor) in series.iter().zip(cursors.iter_mut()) {
                let (lo, hi) = window_from(&s.samples, start, end, cursor);
                let points = without_stale(&s.samples[lo..hi]);
                if !points.is_empty() {
                    out.push((s.labels.clone(), points));
                }
            }
        }
        (start, end, out)
    }

    /// A subquery's series at `ts`: the inner expression at every multiple of the step in
    /// `[ref - range, ref]`.
    fn subquery(&self, sq: &SubqueryExpr, ts: i64) -> Result<Vec<Series>, QueryError> {
        self.subquery_ending(sq, self.ref_time(&sq.at, &sq.offset, ts))
    }

    fn subquery_step_ms(sq: &SubqueryExpr) -> i64 {
        match sq.step.as_ref().map(dur_ms) {
            Some(s) if s > 0 => s,
            _ => DEFAULT_SUBQUERY_STEP_MS,
        }
    }

    /// A subquery's series over `[end - range, end]`.
    fn subquery_ending(&self, sq: &SubqueryExpr, end: i64) -> Result<Vec<Series>, QueryError> {
        let step = Self::subquery_step_ms(sq);
        let range = dur_ms(&sq.range);
        // Prometheus evaluates a subquery once for all the outer steps, from the first step
        // at or after the outer evaluator's start (minus offset and range).
        let outer_start = self.eval_start.get();
        let inner_start = self
            .ref_time(&sq.at, &sq.offset, outer_start)
            .saturating_sub(range);
        let inner_start = align_up(inner_start, step).unwrap_or(inner_start);
        self.eval_start.set(inner_start);
        let result = self.subquery_steps_in(sq, end.saturating_sub(range), end, step);
        self.eval_start.set(outer_start);
        result
    }

    fn subquery_steps_in(
        &self,
        sq: &SubqueryExpr,
        start: i64,
        end: i64,
        step: i64,
    ) -> Result<Vec<Series>, QueryError> {
        let mut out: Vec<Series> = Vec::new();
        let Some(first) = align_up(start, step) else {
            return Ok(out);
        };
        if first > end {
            return Ok(out);
        }
        if (i128::from(end) - i128::from(first)) / i128::from(step) >= MAX_SAMPLES as i128 {
            return Err(QueryError::TooManySamples);
        }
        let key = sq as *const SubqueryExpr as usize;
        let mut index: HashMap<Labels, usize> = HashMap::new();
        let mut t = first;
        loop {
            self.check_deadline()?;
            let vector = self.subquery_step(key, &sq.expr, t)?;
            for el in vector.iter() {
                let i = *index.entry(el.labels.clone()).or_insert_with(|| {
                    out.push(Series {
                        labels: el.labels.clone(),
                        samples: Vec::new(),
                    });
                    out.len() - 1
                });
                out[i].samples.push((t, el.v));
            }
            match t.checked_add(step) {
                Some(next) if next <= end => t = next,
                _ => break,
            }
        }
        Ok(out)
    }

    fn subquery_step(&self, key: usize, e: &Expr, t: i64) -> Result<Rc<Vector>, QueryError> {
        if let Some(v) = self.subquery_steps.borrow().get(&(key, t)) {
            return Ok(Rc::clone(v));
        }
        let vector = Rc::new(self.eval_vector(e, t)?);
        self.add_samples(vector.len())?;
        self.subquery_steps
            .borrow_mut()
            .insert((key, t), Rc::clone(&vector));
        Ok(vector)
    }

    // -----------------------------------------------------------------------------------------
    // Aggregations

    fn aggregate(&self, a: &AggregateExpr, ts: i64) -> Result<Val, QueryError> {
        let param = match &a.param {
            Some(p) => Some(self.eval(p, ts)?),
            None => None,
        };
        let input = self.eval_vector(&a.expr, ts)?;
        let (grouping, without) = match &a.modifier {
            None => (Vec::new(), false),
            Some(LabelModifier::Include(l)) => (l.labels.clone(), false),
            Some(LabelModifier::Exclude(l)) => (l.labels.clone(), true),
        };
        let keys = (a.op.id() != T_COUNT_VALUES).then(|| {
            let at = addr(e_of(a));
            let mut cache = self.group_keys.borrow_mut();
            let mut interned = self.interned_keys.borrow_mut();
            input
                .iter()
                .map(|el| {
                    if let Some((_, key)) = cache.get(&(at, el.labels.identity())) {
                        return key.clone();
                    }
                    if cache.len() >= IDENTITY_CACHE_ENTRIES {
                        cache.clear();
                    }
                    let key = labels_from(&group_key(&el.labels, &grouping, without));
                    let key = interned.entry((at, key.clone())).or_insert(key).clone();
                    cache.insert((at, el.labels.identity()), (el.labels.clone(), key.clone()));
                    key
                })
                .collect::<Vec<Labels>>()
        });
        unique(aggregate(
            a.op.id(),
            grouping,
            without,
            param,
            input,
            keys.as_deref(),
        )?)
    }

    // -----------------------------------------------------------------------------------------
    // Binary operators

    fn binary(&self, b: &BinaryExpr, ts: i64) -> Result<Val, QueryError> {
        let op = b.op.id();
        let lhs = self.eval(&b.lhs, ts)?;
        let rhs = self.eval(&b.rhs, ts)?;
        let return_bool = b.return_bool();
        match (lhs, rhs) {
            (Val::Scalar(l), Val::Scalar(r)) => Ok(Val::Scalar(scalar_binop(op, l, r)?)),
            (Val::Vector(l), Val::Scalar(r)) => {
                unique(vector_scalar_binop(op, l, r, false, return_bool)?)
            }
            (Val::Scalar(l), Val::Vector(r)) => {
                unique(vector_scalar_binop(op, r, l, true, return_bool)?)
            }
            (Val::Vector(l), Val::Vector(r)) => {
                let m = Matching::of(b.modifier.as_ref());
                let out = match op {
                    T_LAND => vector_and(l, &r, &m),
                    T_LOR => vector_or(l, r, &m),
                    T_LUNLESS => vector_unless(l, &r, &m),
                    _ => vector_binop(op, &l, &r, &m, return_bool)?,
                };
                unique(out)
            }
            (l, r) => Err(QueryError::Eval(format!(
                "binary expression between {} and {} is not allowed",
                val_name(&l),
                val_name(&r)
            ))),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Functions

    fn call(&self, c: &Call, ts: i64) -> Result<Val, QueryError> {
        let name = c.func.name;
        let args: &[Box<Expr>] = &c.args.args;
        if name == "timestamp" {
            // The one function that sees a sample's own time rather than the evaluation time.
            if let Some(Expr::VectorSelector(vs)) = args.first().map(|a| unwrap_parens(a)) {
                let out = self
                    .select_instant(vs, ts)
                    .into_iter()
                    .map(|(labels, t, _)| El {
                        labels: self.drop_name(labels),
                        v: t as f64 / 1000.0,
                    })
                    .collect();
                return unique(out);
            }
        }
        let matrix_arg = args.iter().position(|a| {
            matches!(
                unwrap_parens(a),
                Expr::MatrixSelector(_) | Expr::Subquery(_)
            )
        });
        match matrix_arg {
            Some(i) => self.call_range(name, args, i, ts),
            None => self.call_instant(name, args, ts),
        }
    }

    /// A function of a range vector: applied to each series that has samples in the range.
    fn call_range(
        &self,
        name: &str,
        args: &[Box<Expr>],
        matrix_arg: usize,
        ts: i64,
    ) -> Result<Val, QueryError> {
        let mut scalars = Vec::new();
        for (i, a) in args.iter().enumerate() {
            if i != matrix_arg {
                scalars.push(self.eval_scalar(a, ts)?);
            }
        }
        let arg = args
            .get(matrix_arg)
            .map(|a| unwrap_parens(a))
            .ok_or_else(|| QueryError::Eval(format!("{name}: missing range argument")))?;
        // Prometheus 2.42 turns `@` into an offset relative to the first evaluation time and
        // evaluates step-invariant arguments once; predict_linear, whose result depends on the
        // evaluation time, instead slices its `@` argument at every step with that offset, so
        // the range moves along with the steps (fixed in 2.51).
        let has_at = match arg {
            Expr::MatrixSelector(ms) => ms.vs.at.is_some(),
            Expr::Subquery(sq) => sq.at.is_some(),
            _ => false,
        };
        let shift = if name == "predict_linear" && has_at {
            ts.saturating_sub(self.eval_start.get())
        } else {
            0
        };
        let (start, end, range, series) = match arg {
            Expr::MatrixSelector(ms) => {
                let (start, end, series) = self.select_range(ms, ts, shift);
                (start, end, ms.range, series)
            }
            Expr::Subquery(sq) => {
                let end = self.ref_time(&sq.at, &sq.offset, ts).saturating_add(shift);
                let series = self
                    .subquery_ending(sq, end)?
                    .into_iter()
                    .map(|mut s| {
                        s.samples.retain(|&(_, v)| !is_stale(v));
                        (s.labels, Cow::Owned(s.samples))
                    })
                    .filter(|(_, points): &RangeSeries<'_>| !points.is_empty())
                    .collect();
                (end.saturating_sub(dur_ms(&sq.range)), end, sq.range, series)
            }
            _ => return Err(QueryError::Eval(format!("{name}: expected a range vector"))),
        };
        let w = RangeWindow {
            start,
            end,
            range_secs: range.as_secs_f64(),
            ts,
        };
        let mut out = Vec::new();
        let mut inputs = Vec::new();
        for (labels, points) in &series {
            if let Some(v) = range_function(name, points, &scalars, &w)? {
                inputs.push(labels);
                let labels = if name == "last_over_time" {
                    labels.clone()
                } else {
                    self.drop_name(labels)
                };
                out.push(El { labels, v });
            }
        }
        if name == "absent_over_time" {
            return Ok(Val::Vector(if out.is_empty() {
                vec![El {
                    labels: absent_labels(arg),
                    v: 1.0,
                }]
            } else {
                Vec::new()
            }));
        }
        let may_collide = match arg {
            Expr::MatrixSelector(ms) if name != "last_over_time" => self.names_collide(&ms.vs),
            Expr::MatrixSelector(_) => false,
            _ => true,
        };
        if may_collide {
            self.unique_over_steps(args.as_ptr() as usize, inputs.into_iter().zip(&out))?;
        }
        Ok(Val::Vector(out))
    }

    /// Whether two of a selector's series have the same labels but for the metric name (so
    /// that a range function's output must be checked for duplicates).
    fn names_collide(&self, vs: &VectorSelector) -> bool {
        let key = selector_key(vs);
        if let Some(&known) = self.collisions.borrow().get(&key) {
            return known;
        }
        let mut seen = HashSet::new();
        let collide = self
            .data
            .get(&key)
            .is_some_and(|series| !series.iter().all(|s| seen.insert(drop_name(&s.labels))));
        self.collisions.borrow_mut().insert(key, collide);
        collide
    }

    /// Prometheus checks a range function's and a unary minus's output for label sets seen
    /// twice over all the steps of an evaluation, not step by step: two input series that end
    /// up with the same labels are an error even when they never have a sample at the same
    /// step. `node` identifies the expression, `pairs` are (input labels, output element).
    fn unique_over_steps<'a>(
        &self,
        node: usize,
        pairs: impl Iterator<Item = (&'a Labels, &'a El)>,
    ) -> Result<(), QueryError> {
        let mut sources = self.output_sources.borrow_mut();
        for (input, output) in pairs {
            match sources.get(&(node, output.labels.clone())) {
                Some(source) if source != input => {
                    return Err(QueryError::Eval(
                        "vector cannot contain metrics with the same labelset".into(),
                    ))
                }
                Some(_) => {}
                None => {
                    sources.insert((node, output.labels.clone()), input.clone());
                }
            }
        }
        Ok(())
    }

    /// A function of instant vectors and scalars.
    fn call_instant(&self, name: &str, args: &[Box<Expr>], ts: i64) -> Result<Val, QueryError> {
        let arg = |i: usize| {
            args.get(i)
                .ok_or_else(|| QueryError::Eval(format!("{name}: missing argument {}", i + 1)))
        };
        let vector = |i: usize| -> Result<Vector, QueryError> { self.eval_vector(arg(i)?, ts) };
        let scalar = |i: usize| -> Result<f64, QueryError> { self.eval_scalar(arg(i)?, ts) };
        let string = |i: usize| -> Result<String, QueryError> { self.eval_string(arg(i)?, ts) };
        let out: Vector = match name {
            "time" => return Ok(Val::Scalar(ts as f64 / 1000.0)),
            "pi" => return Ok(Val::Scalar(std::f64::consts::PI)),
            "scalar" => {
                let v = vector(0)?;
                return Ok(Val::Scalar(match v.as_slice() {
                    [only] => only.v,
                    _ => f64::NAN,
                }));
            }
            "vector" => vec![El {
                labels: Labels::default(),
                v: scalar(0)?,
            }],
            "abs" => map_values(vector(0)?, f64::abs),
            "ceil" => map_values(vector(0)?, f64::ceil),
            "floor" => map_values(vector(0)?, f64::floor),
            "exp" => map_values(vector(0)?, f64::exp),
            "sqrt" => map_values(vector(0)?, f64::sqrt),
            "ln" => map_values(vector(0)?, f64::ln),
            "log2" => map_values(vector(0)?, f64::log2),
            "log10" => map_values(vector(0)?, f64::log10),
            "sin" => map_values(vector(0)?, f64::sin),
            "cos" => map_values(vector(0)?, f64::cos),
            "tan" => map_values(vector(0)?, f64::tan),
            "asin" => map_values(vector(0)?, f64::asin),
            "acos" => map_values(vector(0)?, f64::acos),
            "atan" => map_values(vector(0)?, f64::atan),
            "sinh" => map_values(vector(0)?, f64::sinh),
            "cosh" => map_values(vector(0)?, f64::cosh),
            "tanh" => map_values(vector(0)?, f64::tanh),
            "asinh" => map_values(vector(0)?, f64::asinh),
            "acosh" => map_values(vector(0)?, f64::acosh),
            "atanh" => map_values(vector(0)?, f64::atanh),
            "deg" => map_values(vector(0)?, |v| v * 180.0 / std::f64::consts::PI),
            "rad" => map_values(vector(0)?, |v| v * std::f64::consts::PI / 180.0),
            "sgn" => map_values(vector(0)?, |v| {
                if v < 0.0 {
                    -1.0
                } else if v > 0.0 {
                    1.0
                } else {
                    v
                }
            }),
            "round" => {
                let input = vector(0)?;
                let to_nearest = if args.len() >= 2 { scalar(1)? } else { 1.0 };
                // Prometheus multiplies by the inverse: fewer floating point surprises.
                let inverse = 1.0 / to_nearest;
                map_values(input, |v| (v * inverse + 0.5).floor() / inverse)
            }
            "clamp" => {
                let input = vector(0)?;
                let (min, max) = (scalar(1)?, scalar(2)?);
                if max < min {
                    Vec::new()
                } else {
                    map_values(input, |v| go_max(min, go_min(max, v)))
                }
            }
            "clamp_max" => {
                let input = vector(0)?;
                let max = scalar(1)?;
                map_values(input, |v| go_min(max, v))
            }
            "clamp_min" => {
                let input = vector(0)?;
                let min = scalar(1)?;
                map_values(input, |v| go_max(min, v))
            }
            "timestamp" => map_values(vector(0)?, |_| ts as f64 / 1000.0),
            "histogram_quantile" => {
                let q = scalar(0)?;
                histogram_quantile(q, vector(1)?)
            }
            // Native histograms only: float samples give nothing.
            "histogram_count" | "histogram_sum" => {
                vector(0)?;
                Vec::new()
            }
            "histogram_fraction" => {
                scalar(0)?;
                scalar(1)?;
                vector(2)?;
                Vec::new()
            }
            "label_replace" => {
                let input = vector(0)?;
                let (dst, repl, src, re) = (string(1)?, string(2)?, string(3)?, string(4)?);
                self.label_replace(input, &dst, &repl, &src, &re)?
            }
            "label_join" => {
                let input = vector(0)?;
                let (dst, sep) = (string(1)?, string(2)?);
                let mut srcs = Vec::new();
                for i in 3..args.len() {
                    srcs.push(string(i)?);
                }
                label_join(input, &dst, &sep, &srcs)?
            }
            "sort" => {
                let mut v = vector(0)?;
                // sort.Sort(sort.Reverse(vectorByReverseValueHeap)): ascending, NaN last.
                go_sort(&mut v, |a, b| b.v.is_nan() || b.v > a.v);
                v
            }
            "sort_desc" => {
                let mut v = vector(0)?;
                // sort.Sort(sort.Reverse(vectorByValueHeap)): descending, NaN last.
                go_sort(&mut v, |a, b| b.v.is_nan() || b.v < a.v);
                v
            }
            "absent" => {
                if vector(0)?.is_empty() {
                    vec![El {
                        labels: absent_labels(arg(0)?),
                        v: 1.0,
                    }]
                } else {
                    Vec::new()
                }
            }
            "days_in_month" | "day_of_month" | "day_of_week" | "day_of_year" | "hour"
            | "minute" | "month" | "year" => {
                if args.is_empty() {
                    vec![El {
                        labels: Labels::default(),
                        v: date_part(name, ts / 1000),
                    }]
                } else {
                    map_values(vector(0)?, |v| date_part(name, go_f64_to_i64(v)))
                }
            }
            _ => {
                return Err(QueryError::Eval(format!(
                    "function {name:?} is not supported"
                )))
            }
        };
        unique(out)
    }

    fn label_replace(
        &self,
        input: Vector,
        dst: &str,
        repl: &str,
        src: &str,
        re: &str,
    ) -> Result<Vector, QueryError> {
        let regex = self
            .regexes
            .borrow_mut()
            .entry(re.to_string())
            .or_insert_with(|| Regex::new(&format!("^(?:{re})$")).ok())
            .clone()
            .ok_or_else(|| {
                QueryError::Eval(format!(
                    "invalid regular expression in label_replace(): {re}"
                ))
            })?;
        if !valid_label_name(dst) {
            return Err(QueryError::Eval(format!(
                "invalid destination label name in label_replace(): {dst}"
            )));
        }
        Ok(input
            .into_iter()
            .map(|el| {
                let source = el.labels.get(src).unwrap_or("");
                let labels = match regex.captures(source) {
                    None => el.labels.clone(),
                    Some(caps) => {
                        let mut value = String::new();
                        caps.expand(repl, &mut value);
                        set_label(&el.labels, dst, &value)
                    }
                };
                El { labels, v: el.v }
            })
            .collect())
    }
}

fn label_join(input: Vector, dst: &str, sep: &str, srcs: &[String]) -> Result<Vector, QueryError> {
    for src in srcs {
        if !valid_label_name(src) {
            return Err(QueryError::Eval(format!(
                "invalid source label name in label_join(): {src}"
            )));
        }
    }
    if !valid_label_name(dst) {
        return Err(QueryError::Eval(format!(
            "invalid destination label name in label_join(): {dst}"
        )));
    }
    Ok(input
        .into_iter()
        .map(|el| {
            let joined = srcs
                .iter()
                .map(|s| el.labels.get(s).unwrap_or(""))
                .collect::<Vec<_>>()
                .join(sep);
            El {
                labels: set_label(&el.labels, dst, &joined),
                v: el.v,
            }
        })
        .collect())
}

/// Marks the subtrees whose value does not depend on the evaluation time the way Prometheus's
/// `preprocessExprHelper` does; returns whether `e` itself is such a subtree (the caller marks
/// it, or its parent if that qualifies too).
fn mark_invariant(e: &Expr, out: &mut HashSet<usize>) -> bool {
    match e {
        Expr::VectorSelector(vs) => vs.at.is_some(),
        Expr::MatrixSelector(ms) => ms.vs.at.is_some(),
        // As in Prometheus, the parameter (topk's k, quantile's φ) is not considered.
        Expr::Aggregate(a) => mark_invariant(&a.expr, out),
        Expr::Binary(b) => {
            let l = mark_invariant(&b.lhs, out);
            let r = mark_invariant(&b.rhs, out);
            if l && r {
                return true;
            }
            if l {
                out.insert(addr(&b.lhs));
            }
            if r {
                out.insert(addr(&b.rhs));
            }
            false
        }
        Expr::Call(c) => {
            let flags: Vec<bool> = c.args.args.iter().map(|a| mark_invariant(a, out)).collect();
            if !AT_UNSAFE.contains(&c.func.name) && flags.iter().all(|f| *f) {
                return true;
            }
            for (a, f) in c.args.args.iter().zip(flags) {
                if f {
                    out.insert(addr(a));
                }
            }
            false
        }
        Expr::Subquery(sq) => {
            if mark_invariant(&sq.expr, out) {
                out.insert(addr(&sq.expr));
            }
            sq.at.is_some()
        }
        Expr::Paren(p) => mark_invariant(&p.expr, out),
        Expr::Unary(u) => mark_invariant(&u.expr, out),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => true,
        Expr::Extension(_) => false,
    }
}

/// Prometheus refuses a vector with two elements of the same labels after each operation.
fn unique(v: Vector) -> Result<Val, QueryError> {
    if v.len() > 1 {
        let mut seen = HashSet::with_capacity(v.len());
        for el in &v {
            if !seen.insert(&el.labels) {
                return Err(QueryError::Eval(
                    "vector cannot contain metrics with the same labelset".into(),
                ));
            }
        }
    }
    Ok(Val::Vector(v))
}

// ---------------------------------------------------------------------------------------------
// Label helpers

fn drop_name(l: &Labels) -> Labels {
    if l.name().is_some() {
        l.without_name()
    } else {
        l.clone()
    }
}

/// `l` with `name` set to `value` (removed when `value` is empty).
fn set_label(l: &Labels, name: &str, value: &str) -> Labels {
    let mut pairs: Vec<(String, String)> = l
        .iter()
        .filter(|(k, _)| *k != name)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    pairs.push((name.to_string(), value.to_string()));
    Labels::new(pairs)
}

fn labels_from(pairs: &[(&str, &str)]) -> Labels {
    Labels::new(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// Prometheus's legacy label name rule: `[a-zA-Z_][a-zA-Z0-9_]*`.
fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Labels as Go's `labels.Labels.String()` prints them, for error messages.
fn go_labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

/// The labels `absent()` gives: the selector's equality matchers, except names matched more
/// than once or otherwise.
fn absent_labels(e: &Expr) -> Labels {
    let vs = match unwrap_parens(e) {
        Expr::VectorSelector(vs) => vs,
        Expr::MatrixSelector(ms) => &ms.vs,
        _ => return Labels::default(),
    };
    let matchers = selector_matchers(vs);
    let mut set: Vec<(String, String)> = Vec::new();
    let mut dropped: Vec<&str> = Vec::new();
    for m in &matchers {
        if m.name == METRIC_NAME {
            continue;
        }
        let has = set.iter().any(|(k, v)| *k == m.name && !v.is_empty());
        if matches!(m.op, MatchOp::Equal) && !has {
            set.push((m.name.clone(), m.value.clone()));
        } else {
            dropped.push(&m.name);
        }
    }
    set.retain(|(k, _)| !dropped.contains(&k.as_str()));
    Labels::new(set)
}

fn map_values(v: Vector, f: impl Fn(f64) -> f64) -> Vector {
    v.into_iter()
        .map(|el| El {
            labels: drop_name(&el.labels),
            v: f(el.v),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Aggregation

/// Go's `container/heap` on a slice, with `less` between values.
fn heap_up(h: &mut [El], mut j: usize, less: fn(f64, f64) -> bool) {
    while j > 0 {
        let i = (j - 1) / 2;
        if !less(h[j].v, h[i].v) {
            break;
        }
        h.swap(i, j);
        j = i;
    }
}

fn heap_down(h: &mut [El], i0: usize, n: usize, less: fn(f64, f64) -> bool) -> bool {
    let mut i = i0;
    loop {
        let j1 = 2 * i + 1;
        if j1 >= n {
            break;
        }
        let mut j = j1;
        let j2 = j1 + 1;
        if j2 < n && less(h[j2].v, h[j1].v) {
            j = j2;
        }
        if !less(h[j].v, h[i].v) {
            break;
        }
        h.swap(i, j);
        i = j;
    }
    i > i0
}

fn heap_push(h: &mut Vec<El>, el: El, less: fn(f64, f64) -> bool) {
    h.push(el);
    let last = h.len() - 1;
    heap_up(h, last, less);
}

/// `heap.Pop(h)`, the popped element dropped.
fn heap_pop(h: &mut Vec<El>, less: fn(f64, f64) -> bool) {
    let Some(n) = h.len().checked_sub(1) else {
        return;
    };
    h.swap(0, n);
    heap_down(h, 0, n, less);
    h.pop();
}

/// `vectorByValueHeap.Less`: a NaN is less than anything.
fn by_value_less(a: f64, b: f64) -> bool {
    a.is_nan() || a < b
}

/// `vectorByReverseValueHeap.Less`.
fn by_reverse_value_less(a: f64, b: f64) -> bool {
    a.is_nan() || a > b
}

/// Go's `sort.Sort` as Prometheus 2.42 is built with it: insertion sort up to 12 elements
/// (pdqsort's small case, which is stable), a stable merge sort beyond.
fn go_sort<T: Clone>(v: &mut [T], less: impl Fn(&T, &T) -> bool) {
    if v.len() <= 12 {
        for i in 1..v.len() {
            let mut j = i;
            while j > 0 && less(&v[j], &v[j - 1]) {
                v.swap(j, j - 1);
                j -= 1;
            }
        }
        return;
    }
    merge_sort(v, &less);
}

fn merge_sort<T: Clone>(v: &mut [T], less: &impl Fn(&T, &T) -> bool) {
    let n = v.len();
    if n <= 1 {
        return;
    }
    let mid = n / 2;
    merge_sort(&mut v[..mid], less);
    merge_sort(&mut v[mid..], less);
    let mut merged = Vec::with_capacity(n);
    let (mut i, mut j) = (0, mid);
    while i < mid && j < n {
        if less(&v[j], &v[i]) {
            merged.push(v[j].clone());
            j += 1;
        } else {
            merged.push(v[i].clone());
            i += 1;
        }
    }
    merged.extend_from_slice(&v[i..mid]);
    merged.extend_from_slice(&v[j..n]);
    v.clone_from_slice(&merged);
}

struct Group {
    labels: Labels,
    value: f64,
    mean: f64,
    count: f64,
    heap: Vec<El>,
}

/// Prometheus 2.42's `aggregation()`: groups in the order they first appear.
/// Most entries of a cache keyed by label-set identity (see `Evaluator::drop_name`).
const IDENTITY_CACHE_ENTRIES: usize = 200_000;

/// The labels of `l` an aggregation groups by.
fn group_key<'l>(l: &'l Labels, grouping: &[String], without: bool) -> Vec<(&'l str, &'l str)> {
    l.iter()
        .filter(|(name, _)| {
            let listed = grouping.iter().any(|g| g == name);
            if without {
                !listed && *name != METRIC_NAME
            } else {
                listed
            }
        })
        .collect()
}

/// The expression an aggregation's caches are keyed by.
fn e_of(a: &AggregateExpr) -> &Expr {
    &a.expr
}

/// `keys`: each input's group key, equal keys sharing one identity (see
/// `Evaluator::group_keys`); `None` computes them here.
fn aggregate(
    op: TokenId,
    mut grouping: Vec<String>,
    without: bool,
    param: Option<Val>,
    input: Vector,
    keys: Option<&[Labels]>,
) -> Result<Vector, QueryError> {
    let param_scalar = || match &param {
        Some(Val::Scalar(v)) => Ok(*v),
        Some(other) => Err(unexpected("aggregation parameter", other)),
        None => Err(QueryError::Eval("aggregation parameter missing".into())),
    };
    let mut k = 0usize;
    let mut q = 0.0;
    let mut value_label = None;
    match op {
        T_TOPK | T_BOTTOMK => {
            let f = param_scalar()?;
            if !convertible_to_i64(f) {
                return Err(QueryError::Eval(format!(
                    "Scalar value {} overflows int64",
                    go_float_string(f)
                )));
            }
            let kk = f as i64;
            if kk < 1 {
                return Ok(Vec::new());
            }
            k = usize::try_from(kk).unwrap_or(usize::MAX);
        }
        T_QUANTILE => q = param_scalar()?,
        T_COUNT_VALUES => {
            let label = match &param {
                Some(Val::Str(s)) => s.clone(),
                Some(other) => return Err(unexpected("count_values parameter", other)),
                None => return Err(QueryError::Eval("count_values: label missing".into())),
            };
            if !valid_label_name(&label) {
                return Err(QueryError::Eval(format!("invalid label name {label:?}")));
            }
            if !without {
                grouping.push(label.clone());
            }
            value_label = Some(label);
        }
        _ => {}
    }
    let metrics: Vec<Labels> = match &value_label {
        Some(label) => input
            .iter()
            .map(|el| set_label(&el.labels, label, &go_float_string(el.v)))
            .collect(),
        None => input.iter().map(|el| el.labels.clone()).collect(),
    };
    let mut groups: Vec<Group> = Vec::new();
    let mut index: HashMap<Vec<(&str, &str)>, usize> = HashMap::new();
    let mut by_identity: HashMap<usize, usize> = HashMap::new();
    for (i, (el, metric)) in input.iter().zip(&metrics).enumerate() {
        let known = keys.and_then(|k| k.get(i));
        let (found, key_labels) = match known {
            Some(k) => (by_identity.get(&k.identity()).copied(), Some(k)),
            None => (None, None),
        };
        let key: Vec<(&str, &str)> = match key_labels {
            Some(_) => Vec::new(),
            None => group_key(metric, &grouping, without),
        };
        let v = el.v;
        let found = match key_labels {
            Some(_) => found,
            None => index.get(&key).copied(),
        };
        let Some(gi) = found else {
            if let Some(k) = key_labels {
                by_identity.insert(k.identity(), groups.len());
            }
            let mut g = Group {
                labels: key_labels.cloned().unwrap_or_else(|| labels_from(&key)),
                value: v,
                mean: v,
                count: 1.0,
                heap: Vec::new(),
            };
            match op {
                T_STDVAR | T_STDDEV => g.value = 0.0,
                T_TOPK | T_BOTTOMK | T_QUANTILE => g.heap.push(el.clone()),
                T_GROUP => g.value = 1.0,
                _ => {}
            }
            index.insert(key, groups.len());
            groups.push(g);
            continue;
        };
        let g = &mut groups[gi];
        match op {
            T_SUM => g.value += v,
            T_AVG => {
                g.count += 1.0;
                let skip = g.mean.is_infinite()
                    && ((v.is_infinite() && (g.mean > 0.0) == (v > 0.0))
                        || (!v.is_infinite() && !v.is_nan()));
                if !skip {
                    // Each side of the `-` divided by the count: no overflow.
                    g.mean += v / g.count - g.mean / g.count;
                }
            }
            T_GROUP => {}
            T_MAX => {
                if g.value < v || g.value.is_nan() {
                    g.value = v;
                }
            }
            T_MIN => {
                if g.value > v || g.value.is_nan() {
                    g.value = v;
                }
            }
            T_COUNT | T_COUNT_VALUES => g.count += 1.0,
            T_STDVAR | T_STDDEV => {
                g.count += 1.0;
                let delta = v - g.mean;
                g.mean += delta / g.count;
                g.value += delta * (v - g.mean);
            }
            T_TOPK | T_BOTTOMK => {
                let less = if op == T_TOPK {
                    by_value_less
                } else {
                    by_reverse_value_less
                };
                // The heap holds the k best so far, the worst on top. 2.42 replaces the top
                // when the heap is full by popping it and pushing the new sample (in place for
                // k = 1), and always replaces a NaN.
                let top = g.heap.first().map_or(f64::NAN, |e| e.v);
                let better = if op == T_TOPK { top < v } else { top > v };
                if g.heap.len() < k || better || top.is_nan() {
                    if g.heap.len() >= k {
                        if k == 1 {
                            if let Some(first) = g.heap.first_mut() {
                                *first = el.clone();
                            }
                            continue;
                        }
                        heap_pop(&mut g.heap, less);
                    }
                    heap_push(&mut g.heap, el.clone(), less);
                }
            }
            T_QUANTILE => g.heap.push(el.clone()),
            _ => {
                return Err(QueryError::Eval(format!(
                    "unknown aggregation operator {op}"
                )))
            }
        }
    }
    let mut out = Vec::with_capacity(groups.len());
    for mut g in groups {
        let v = match op {
            T_AVG => g.mean,
            T_COUNT | T_COUNT_VALUES => g.count,
            T_STDVAR => g.value / g.count,
            T_STDDEV => (g.value / g.count).sqrt(),
            T_TOPK | T_BOTTOMK => {
                if g.heap.len() > 1 {
                    // sort.Sort(sort.Reverse(heap)).
                    let less = if op == T_TOPK {
                        by_value_less
                    } else {
                        by_reverse_value_less
                    };
                    go_sort(&mut g.heap, |a, b| less(b.v, a.v));
                }
                out.extend(g.heap);
                continue;
            }
            T_QUANTILE => quantile(q, g.heap.iter().map(|e| e.v).collect()),
            _ => g.value,
        };
        out.push(El {
            labels: g.labels,
            v,
        });
    }
    Ok(out)
}

/// Prometheus's `quantile()`: linear interpolation between the closest ranks.
fn quantile(q: f64, mut values: Vec<f64>) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    go_sort(&mut values, |a, b| by_value_less(*a, *b));
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = go_max(0.0, rank.floor());
    let upper = go_min(n - 1.0, lower + 1.0);
    let weight = rank - rank.floor();
    let at = |i: f64| values.get(i as usize).copied().unwrap_or(f64::NAN);
    at(lower) * (1.0 - weight) + at(upper) * weight
}

/// Go's `strconv.FormatFloat(v, 'f', -1, 64)`.
fn go_float_string(v: f64) -> String {
    crate::model::format_value(v)
}

// ---------------------------------------------------------------------------------------------
// Binary operators

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Card {
    OneToOne,
    ManyToOne,
    OneToMany,
    ManyToMany,
}

/// How two vectors' elements are matched.
struct Matching<'a> {
    card: Card,
    /// `on(...)` rather than `ignoring(...)`.
    on: bool,
    names: &'a [String],
    /// `group_left(...)`/`group_right(...)`'s labels, copied from the "one" side.
    include: &'a [String],
}

impl<'a> Matching<'a> {
    fn of(m: Option<&'a BinModifier>) -> Matching<'a> {
        let Some(m) = m else {
            return Matching {
                card: Card::OneToOne,
                on: false,
                names: &[],
                include: &[],
            };
        };
        let (card, include): (Card, &[String]) = match &m.card {
            VectorMatchCardinality::OneToOne => (Card::OneToOne, &[]),
            VectorMatchCardinality::ManyToOne(l) => (Card::ManyToOne, &l.labels),
            VectorMatchCardinality::OneToMany(l) => (Card::OneToMany, &l.labels),
            VectorMatchCardinality::ManyToMany => (Card::ManyToMany, &[]),
        };
        let (on, names): (bool, &[String]) = match &m.matching {
            None => (false, &[]),
            Some(LabelModifier::Include(l)) => (true, &l.labels),
            Some(LabelModifier::Exclude(l)) => (false, &l.labels),
        };
        Matching {
            card,
            on,
            names,
            include,
        }
    }

    /// The labels two elements must share to match: the `on` labels, or all but the
    /// `ignoring` ones and the metric name.
    fn signature<'l>(&self, l: &'l Labels) -> Vec<(&'l str, &'l str)> {
        l.iter()
            .filter(|(k, _)| {
                let listed = self.names.iter().any(|n| n == k);
                if self.on {
                    listed
                } else {
                    !listed && *k != METRIC_NAME
                }
            })
            .collect()
    }
}

fn is_comparison(op: TokenId) -> bool {
    matches!(op, T_EQLC | T_NEQ | T_GTR | T_LSS | T_GTE | T_LTE)
}

/// Arithmetic drops the metric name (2.42 keeps it for `atan2`).
fn drops_name(op: TokenId) -> bool {
    matches!(op, T_ADD | T_SUB | T_MUL | T_DIV | T_POW | T_MOD)
}

fn scalar_binop(op: TokenId, l: f64, r: f64) -> Result<f64, QueryError> {
    let b = |x: bool| if x { 1.0 } else { 0.0 };
    Ok(match op {
        T_ADD => l + r,
        T_SUB => l - r,
        T_MUL => l * r,
        T_DIV => l / r,
        T_POW => l.powf(r),
        T_MOD => l % r,
        T_ATAN2 => l.atan2(r),
        T_EQLC => b(l == r),
        T_NEQ => b(l != r),
        T_GTR => b(l > r),
        T_LSS => b(l < r),
        T_GTE => b(l >= r),
        T_LTE => b(l <= r),
        _ => {
            return Err(QueryError::Eval(format!(
                "operator {op} not allowed for scalar operations"
            )))
        }
    })
}

/// `(value, keep)`: a comparison keeps the left value when it holds.
fn elem_binop(op: TokenId, l: f64, r: f64) -> Result<(f64, bool), QueryError> {
    Ok(match op {
        T_ADD => (l + r, true),
        T_SUB => (l - r, true),
        T_MUL => (l * r, true),
        T_DIV => (l / r, true),
        T_POW => (l.powf(r), true),
        T_MOD => (l % r, true),
        T_ATAN2 => (l.atan2(r), true),
        T_EQLC => (l, l == r),
        T_NEQ => (l, l != r),
        T_GTR => (l, l > r),
        T_LSS => (l, l < r),
        T_GTE => (l, l >= r),
        T_LTE => (l, l <= r),
        _ => {
            return Err(QueryError::Eval(format!(
                "operator {op} not allowed for operations between vectors"
            )))
        }
    })
}

fn vector_scalar_binop(
    op: TokenId,
    vector: Vector,
    scalar: f64,
    scalar_left: bool,
    return_bool: bool,
) -> Result<Vector, QueryError> {
    let mut out = Vec::with_capacity(vector.len());
    for el in vector {
        let (l, r) = if scalar_left {
            (scalar, el.v)
        } else {
            (el.v, scalar)
        };
        let (mut value, mut keep) = elem_binop(op, l, r)?;
        // A comparison keeps the vector's value, whichever side it is on.
        if is_comparison(op) && scalar_left {
            value = r;
        }
        if return_bool {
            value = if keep { 1.0 } else { 0.0 };
            keep = true;
        }
        if keep {
            let labels = if drops_name(op) || return_bool {
                drop_name(&el.labels)
            } else {
                el.labels
            };
            out.push(El { labels, v: value });
        }
    }
    Ok(out)
}

/// Prometheus's `VectorBinop`: one-to-one, many-to-one and one-to-many matching.
fn vector_binop(
    op: TokenId,
    lhs: &[El],
    rhs: &[El],
    m: &Matching<'_>,
    return_bool: bool,
) -> Result<Vector, QueryError> {
    if m.card == Card::ManyToMany {
        return Err(QueryError::Eval(
            "many-to-many only allowed for set operators".into(),
        ));
    }
    if lhs.is_empty() || rhs.is_empty() {
        return Ok(Vec::new());
    }
    // One-to-many is many-to-one with the sides swapped (and swapped back for the value).
    let swapped = m.card == Card::OneToMany;
    let (many, one) = if swapped { (rhs, lhs) } else { (lhs, rhs) };
    let mut one_sigs: HashMap<Vec<(&str, &str)>, usize> = HashMap::with_capacity(one.len());
    for (i, rs) in one.iter().enumerate() {
        let sig = m.signature(&rs.labels);
        if let Some(&j) = one_sigs.get(&sig) {
            let side = if swapped { "left" } else { "right" };
            let shown: Vec<String> = [&rs.labels, &one[j].labels]
                .iter()
                .map(|l| go_labels(&l.iter().collect::<Vec<_>>()))
                .collect();
            return Err(QueryError::Eval(format!(
                "found duplicate series for the match group {} on the {side} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                go_labels(&sig),
                shown[0],
                shown[1]
            )));
        }
        one_sigs.insert(sig, i);
    }
    // Per signature: nothing for one-to-one, the output label sets for many-to-one.
    let mut matched: HashMap<Vec<(&str, &str)>, HashSet<Labels>> = HashMap::new();
    let mut out = Vec::new();
    for ls in many {
        let sig = m.signature(&ls.labels);
        let Some(&ri) = one_sigs.get(&sig) else {
            continue;
        };
        let rs = &one[ri];
        let (vl, vr) = if swapped { (rs.v, ls.v) } else { (ls.v, rs.v) };
        let (mut value, keep) = elem_binop(op, vl, vr)?;
        if return_bool {
            value = if keep { 1.0 } else { 0.0 };
        } else if !keep {
            continue;
        }
        let mut labels = result_labels(&ls.labels, &rs.labels, op, m);
        if return_bool {
            labels = drop_name(&labels);
        }
        match matched.get_mut(&sig) {
            None => {
                let mut set = HashSet::new();
                if m.card != Card::OneToOne {
                    set.insert(labels.clone());
                }
                matched.insert(sig, set);
            }
            Some(set) => {
                if m.card == Card::OneToOne {
                    return Err(QueryError::Eval("multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)".into()));
                }
                if !set.insert(labels.clone()) {
                    return Err(QueryError::Eval(
                        "multiple matches for labels: grouping labels must ensure unique matches"
                            .into(),
                    ));
                }
            }
        }
        out.push(El { labels, v: value });
    }
    Ok(out)
}

/// Prometheus's `resultMetric`: the "many" side's labels, reduced to the matching labels for
/// one-to-one, plus the `group_x` labels from the "one" side.
fn result_labels(many: &Labels, one: &Labels, op: TokenId, m: &Matching<'_>) -> Labels {
    let drop = drops_name(op);
    let mut pairs: Vec<(String, String)> = many
        .iter()
        .filter(|(k, _)| !(drop && *k == METRIC_NAME))
        .filter(|(k, _)| {
            if m.card != Card::OneToOne {
                return true;
            }
            let listed = m.names.iter().any(|n| n == k);
            if m.on {
                listed
            } else {
                !listed
            }
        })
        .filter(|(k, _)| !m.include.iter().any(|n| n == k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for name in m.include {
        if let Some(v) = one.get(name) {
            pairs.push((name.clone(), v.to_string()));
        }
    }
    Labels::new(pairs)
}

fn vector_and(lhs: Vector, rhs: &[El], m: &Matching<'_>) -> Vector {
    if lhs.is_empty() || rhs.is_empty() {
        return Vec::new();
    }
    let right: HashSet<Vec<(&str, &str)>> = rhs.iter().map(|el| m.signature(&el.labels)).collect();
    lhs.into_iter()
        .filter(|el| right.contains(&m.signature(&el.labels)))
        .collect()
}

fn vector_or(lhs: Vector, rhs: Vector, m: &Matching<'_>) -> Vector {
    if lhs.is_empty() {
        return rhs;
    }
    if rhs.is_empty() {
        return lhs;
    }
    let left: HashSet<Vec<(String, String)>> = lhs
        .iter()
        .map(|el| owned_sig(&m.signature(&el.labels)))
        .collect();
    let mut out = lhs;
    out.extend(
        rhs.into_iter()
            .filter(|el| !left.contains(&owned_sig(&m.signature(&el.labels)))),
    );
    out
}

fn vector_unless(lhs: Vector, rhs: &[El], m: &Matching<'_>) -> Vector {
    if lhs.is_empty() || rhs.is_empty() {
        return lhs;
    }
    let right: HashSet<Vec<(&str, &str)>> = rhs.iter().map(|el| m.signature(&el.labels)).collect();
    lhs.into_iter()
        .filter(|el| !right.contains(&m.signature(&el.labels)))
        .collect()
}

fn owned_sig(sig: &[(&str, &str)]) -> Vec<(String, String)> {
    sig.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Go's `math.Max`: NaN wins unless the other is +Inf; +0 beats -0.
fn go_max(a: f64, b: f64) -> f64 {
    if a == f64::INFINITY || b == f64::INFINITY {
        f64::INFINITY
    } else if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a == 0.0 && b == 0.0 {
        if a.is_sign_negative() {
            b
        } else {
            a
        }
    } else if a > b {
        a
    } else {
        b
    }
}

/// Go's `math.Min`: NaN wins unless the other is -Inf; -0 beats +0.
fn go_min(a: f64, b: f64) -> f64 {
    if a == f64::NEG_INFINITY || b == f64::NEG_INFINITY {
        f64::NEG_INFINITY
    } else if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a == 0.0 && b == 0.0 {
        if a.is_sign_negative() {
            a
        } else {
            b
        }
    } else if a < b {
        a
    } else {
        b
    }
}

// ---------------------------------------------------------------------------------------------
// Range vector functions

/// [`window`]'s bounds, found by stepping on from the last window's (`cursor`, updated) when
/// the new one does not start or end before it, else by binary search.
fn window_from(
    points: &[(i64, f64)],
    start: i64,
    end: i64,
    cursor: &mut (usize, usize),
) -> (usize, usize) {
    let (mut lo, mut hi) = *cursor;
    let len = points.len();
    // Every sample before `lo` must be before `start`, and every one before `hi` at or before
    // `end`; when that no longer holds the window moved back: search.
    if lo > len || (lo > 0 && points[lo - 1].0 >= start) {
        lo = points.partition_point(|&(t, _)| t < start);
    } else {
        while lo < len && points[lo].0 < start {
            lo += 1;
        }
    }
    if hi > len || hi < lo || (hi > 0 && points[hi - 1].0 > end) {
        hi = lo + points[lo..].partition_point(|&(t, _)| t <= end);
    } else {
        while hi < len && points[hi].0 <= end {
            hi += 1;
        }
    }
    let hi = hi.max(lo);
    *cursor = (lo, hi);
    (lo, hi)
}

fn without_stale(points: &[(i64, f64)]) -> Cow<'_, [(i64, f64)]> {
    if points.iter().any(|&(_, v)| is_stale(v)) {
        Cow::Owned(
            points
                .iter()
                .copied()
                .filter(|&(_, v)| !is_stale(v))
                .collect(),
        )
    } else {
        Cow::Borrowed(points)
    }
}

/// What a range function knows of its range.
struct RangeWindow {
    start: i64,
    end: i64,
    range_secs: f64,
    /// The evaluation time (predict_linear's intercept).
    ts: i64,
}

/// A range function on one series' (non-empty) samples; `None` leaves the series out.
fn range_function(
    name: &str,
    points: &[(i64, f64)],
    scalars: &[f64],
    w: &RangeWindow,
) -> Result<Option<f64>, QueryError> {
    let arg = |i: usize| scalars.get(i).copied().unwrap_or(f64::NAN);
    let values = || points.iter().map(|&(_, v)| v);
    Ok(match name {
        "rate" => extrapolated_rate(points, w, true, true),
        "increase" => extrapolated_rate(points, w, true, false),
        "delta" => extrapolated_rate(points, w, false, false),
        "irate" => instant_value(points, true),
        "idelta" => instant_value(points, false),
        "deriv" => match points {
            [first, _, ..] => Some(linear_regression(points, first.0).0),
            _ => None,
        },
        "predict_linear" => {
            if points.len() < 2 {
                None
            } else {
                let (slope, intercept) = linear_regression(points, w.ts);
                Some(slope * arg(0) + intercept)
            }
        }
        "resets" => {
            let mut resets = 0usize;
            let mut prev = points.first().map_or(f64::NAN, |p| p.1);
            for v in values().skip(1) {
                if v < prev {
                    resets += 1;
                }
                prev = v;
            }
            Some(resets as f64)
        }
        "changes" => {
            let mut changes = 0usize;
            let mut prev = points.first().map_or(f64::NAN, |p| p.1);
            for v in values().skip(1) {
                if v != prev && !(v.is_nan() && prev.is_nan()) {
                    changes += 1;
                }
                prev = v;
            }
            Some(changes as f64)
        }
        "avg_over_time" => Some(avg_over_time(points)),
        "sum_over_time" => {
            let (mut sum, mut c) = (0.0, 0.0);
            for v in values() {
                (sum, c) = kahan_sum_inc(v, sum, c);
            }
            Some(if sum.is_infinite() { sum } else { sum + c })
        }
        "count_over_time" => Some(points.len() as f64),
        "min_over_time" => {
            let mut min = points.first().map_or(f64::NAN, |p| p.1);
            for v in values() {
                if v < min || min.is_nan() {
                    min = v;
                }
            }
            Some(min)
        }
        "max_over_time" => {
            let mut max = points.first().map_or(f64::NAN, |p| p.1);
            for v in values() {
                if v > max || max.is_nan() {
                    max = v;
                }
            }
            Some(max)
        }
        "last_over_time" => points.last().map(|p| p.1),
        "present_over_time" | "absent_over_time" => Some(1.0),
        "quantile_over_time" => Some(quantile(arg(0), values().collect())),
        "stdvar_over_time" => Some(stdvar_over_time(points)),
        "stddev_over_time" => Some(stdvar_over_time(points).sqrt()),
        "holt_winters" => holt_winters(points, arg(0), arg(1))?,
        _ => {
            return Err(QueryError::Eval(format!(
                "function {name:?} does not take a range vector"
            )))
        }
    })
}

/// Prometheus 2.42's `extrapolatedRate`.
fn extrapolated_rate(
    points: &[(i64, f64)],
    w: &RangeWindow,
    is_counter: bool,
    is_rate: bool,
) -> Option<f64> {
    let (&(first_t, first_v), &(last_t, last_v)) = match points {
        [first, .., last] => (first, last),
        _ => return None,
    };
    let mut result = last_v - first_v;
    if is_counter {
        let mut prev = first_v;
        for &(_, v) in &points[1..] {
            if v < prev {
                result += prev;
            }
            prev = v;
        }
    }
    let mut duration_to_start = (first_t - w.start) as f64 / 1000.0;
    let duration_to_end = (w.end - last_t) as f64 / 1000.0;
    let sampled_interval = (last_t - first_t) as f64 / 1000.0;
    let average_between_samples = sampled_interval / (points.len() - 1) as f64;
    if is_counter && result > 0.0 && first_v >= 0.0 {
        // A counter does not go below zero: do not extrapolate past its zero point.
        let duration_to_zero = sampled_interval * (first_v / result);
        if duration_to_zero < duration_to_start {
            duration_to_start = duration_to_zero;
        }
    }
    let threshold = average_between_samples * 1.1;
    let mut extrapolate_to = sampled_interval;
    extrapolate_to += if duration_to_start < threshold {
        duration_to_start
    } else {
        average_between_samples / 2.0
    };
    extrapolate_to += if duration_to_end < threshold {
        duration_to_end
    } else {
        average_between_samples / 2.0
    };
    let mut factor = extrapolate_to / sampled_interval;
    if is_rate {
        factor /= w.range_secs;
    }
    Some(result * factor)
}

/// `irate` and `idelta`: the last two samples.
fn instant_value(points: &[(i64, f64)], is_rate: bool) -> Option<f64> {
    let (&(prev_t, prev_v), &(last_t, last_v)) = match points {
        [.., prev, last] => (prev, last),
        _ => return None,
    };
    let mut result = if is_rate && last_v < prev_v {
        last_v
    } else {
        last_v - prev_v
    };
    let interval = last_t - prev_t;
    if interval == 0 {
        return None;
    }
    if is_rate {
        result /= interval as f64 / 1000.0;
    }
    Some(result)
}

/// Kahan-Neumaier summation step: `(sum, compensation)`.
fn kahan_sum_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

fn avg_over_time(points: &[(i64, f64)]) -> f64 {
    let (mut mean, mut count, mut c) = (0.0f64, 0.0f64, 0.0f64);
    for &(_, v) in points {
        count += 1.0;
        if mean.is_infinite() {
            if v.is_infinite() && (mean > 0.0) == (v > 0.0) {
                continue;
            }
            if !v.is_infinite() && !v.is_nan() {
                continue;
            }
        }
        (mean, c) = kahan_sum_inc(v / count - mean / count, mean, c);
    }
    if mean.is_infinite() {
        mean
    } else {
        mean + c
    }
}

fn stdvar_over_time(points: &[(i64, f64)]) -> f64 {
    let (mut count, mut mean, mut c_mean, mut aux, mut c_aux) = (0.0f64, 0.0, 0.0, 0.0, 0.0);
    for &(_, v) in points {
        count += 1.0;
        let delta = v - (mean + c_mean);
        (mean, c_mean) = kahan_sum_inc(delta / count, mean, c_mean);
        (aux, c_aux) = kahan_sum_inc(delta * (v - (mean + c_mean)), aux, c_aux);
    }
    (aux + c_aux) / count
}

/// Least squares with Kahan sums: `(slope, intercept at intercept_time)`.
fn linear_regression(points: &[(i64, f64)], intercept_time: i64) -> (f64, f64) {
    let init_y = points.first().map_or(f64::NAN, |p| p.1);
    let mut const_y = true;
    let (mut n, mut sum_x, mut c_x, mut sum_y, mut c_y) = (0.0f64, 0.0, 0.0, 0.0, 0.0);
    let (mut sum_xy, mut c_xy, mut sum_x2, mut c_x2) = (0.0f64, 0.0, 0.0, 0.0);
    for (i, &(t, v)) in points.iter().enumerate() {
        if const_y && i > 0 && v != init_y {
            const_y = false;
        }
        n += 1.0;
        let x = (t - intercept_time) as f64 / 1e3;
        (sum_x, c_x) = kahan_sum_inc(x, sum_x, c_x);
        (sum_y, c_y) = kahan_sum_inc(v, sum_y, c_y);
        (sum_xy, c_xy) = kahan_sum_inc(x * v, sum_xy, c_xy);
        (sum_x2, c_x2) = kahan_sum_inc(x * x, sum_x2, c_x2);
    }
    if const_y {
        if init_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init_y);
    }
    let (sum_x, sum_y, sum_xy, sum_x2) = (sum_x + c_x, sum_y + c_y, sum_xy + c_xy, sum_x2 + c_x2);
    let cov_xy = sum_xy - sum_x * sum_y / n;
    let var_x = sum_x2 - sum_x * sum_x / n;
    let slope = cov_xy / var_x;
    let intercept = sum_y / n - slope * sum_x / n;
    (slope, intercept)
}

/// Double exponential smoothing, as 2.42's `holt_winters`.
fn holt_winters(points: &[(i64, f64)], sf: f64, tf: f64) -> Result<Option<f64>, QueryError> {
    if sf <= 0.0 || sf >= 1.0 {
        return Err(QueryError::Eval(format!(
            "invalid smoothing factor. Expected: 0 < sf < 1, got: {sf:.6}"
        )));
    }
    if tf <= 0.0 || tf >= 1.0 {
        return Err(QueryError::Eval(format!(
            "invalid trend factor. Expected: 0 < tf < 1, got: {tf:.6}"
        )));
    }
    let (first, second) = match points {
        [a, b, ..] => (a.1, b.1),
        _ => return Ok(None),
    };
    let (mut s0, mut s1, mut b) = (0.0, first, second - first);
    for (i, &(_, v)) in points.iter().enumerate().skip(1) {
        let x = sf * v;
        if i > 1 {
            b = tf * (s1 - s0) + (1.0 - tf) * b;
        }
        let y = (1.0 - sf) * (s1 + b);
        s0 = s1;
        s1 = x + y;
    }
    Ok(Some(s1))
}

// ---------------------------------------------------------------------------------------------
// histogram_quantile

/// Go's `strconv.ParseFloat` for the values `le` takes (hexadecimal floats aside).
fn parse_go_float(s: &str) -> Option<f64> {
    let unsigned = s.strip_prefix(['+', '-']);
    if unsigned.is_some_and(|u| u.eq_ignore_ascii_case("nan")) {
        return None;
    }
    s.parse::<f64>().ok()
}

fn histogram_quantile(q: f64, input: Vector) -> Vector {
    // Buckets of one histogram share every label but `le` (the metric name included).
    let mut groups: Vec<(Labels, Vec<(f64, f64)>)> = Vec::new();
    let mut index: HashMap<Vec<(&str, &str)>, usize> = HashMap::new();
    for el in &input {
        let Some(upper) = el.labels.get("le").and_then(parse_go_float) else {
            continue;
        };
        let key: Vec<(&str, &str)> = el.labels.iter().filter(|(k, _)| *k != "le").collect();
        let i = *index.entry(key).or_insert_with(|| {
            let labels = Labels::new(
                el.labels
                    .iter()
                    .filter(|(k, _)| *k != "le" && *k != METRIC_NAME)
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            );
            groups.push((labels, Vec::new()));
            groups.len() - 1
        });
        groups[i].1.push((upper, el.v));
    }
    groups
        .into_iter()
        .map(|(labels, buckets)| El {
            labels,
            v: bucket_quantile(q, buckets),
        })
        .collect()
}

/// Prometheus 2.42's `bucketQuantile` on `(upper bound, cumulative count)` pairs.
fn bucket_quantile(q: f64, mut buckets: Vec<(f64, f64)>) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    go_sort(&mut buckets, |a, b| a.0 < b.0);
    match buckets.last() {
        Some(&(upper, _)) if upper == f64::INFINITY => {}
        _ => return f64::NAN,
    }
    // Buckets with the same bound are added up.
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for (upper, count) in buckets {
        match merged.last_mut() {
            Some(last) if last.0 == upper => last.1 += count,
            _ => merged.push((upper, count)),
        }
    }
    // Counts must not decrease with the bound.
    let mut max = merged.first().map_or(f64::NAN, |b| b.1);
    for b in merged.iter_mut().skip(1) {
        if b.1 > max {
            max = b.1;
        } else if b.1 < max {
            b.1 = max;
        }
    }
    let n = merged.len();
    if n < 2 {
        return f64::NAN;
    }
    let observations = merged[n - 1].1;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    // sort.Search(n-1, count >= rank).
    let (mut lo, mut hi) = (0usize, n - 1);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if merged[mid].1 >= rank {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let b = lo;
    if b == n - 1 {
        return merged[n - 2].0;
    }
    if b == 0 && merged[0].0 <= 0.0 {
        return merged[0].0;
    }
    let bucket_end = merged[b].0;
    let mut count = merged[b].1;
    let mut bucket_start = 0.0;
    if b > 0 {
        bucket_start = merged[b - 1].0;
        count -= merged[b - 1].1;
        rank -= merged[b - 1].1;
    }
    bucket_start + (bucket_end - bucket_start) * (rank / count)
}

// ---------------------------------------------------------------------------------------------
// Dates

/// Prometheus's `convertibleToInt64` (false for NaN).
fn convertible_to_i64(f: f64) -> bool {
    f <= i64::MAX as f64 && f >= i64::MIN as f64
}

/// Go's `int64(f)` on amd64: out of range and NaN give the smallest int64.
fn go_f64_to_i64(v: f64) -> i64 {
    if convertible_to_i64(v) && v < i64::MAX as f64 {
        v as i64
    } else {
        i64::MIN
    }
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A date function of a Unix time in seconds, in UTC.
fn date_part(name: &str, secs: i64) -> f64 {
    let days = secs.div_euclid(86_400);
    let second_of_day = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days.saturating_add(719_468);
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe
        .saturating_add(era.saturating_mul(400))
        .saturating_add(i64::from(month <= 2));
    let value = match name {
        "day_of_month" => day,
        // 1970-01-01 was a Thursday; Sunday is 0.
        "day_of_week" => (days.rem_euclid(7) + 4) % 7,
        "day_of_year" => (1..month).map(|m| days_in_month(year, m)).sum::<i64>() + day,
        "days_in_month" => days_in_month(year, month),
        "hour" => second_of_day / 3600,
        "minute" => second_of_day % 3600 / 60,
        "month" => month,
        _ => year,
    };
    value as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::STALE_NAN;

    /// Series in memory, filtered the way the store does.
    struct Mem(Vec<Series>);

    impl Queryable for Mem {
        fn select(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Vec<Series> {
            self.0
                .iter()
                .filter(|s| s.labels.matches(matchers))
                .map(|s| Series {
                    labels: s.labels.clone(),
                    samples: s
                        .samples
                        .iter()
                        .copied()
                        .filter(|&(t, _)| t >= mint && t <= maxt)
                        .collect(),
                })
                .collect()
        }
    }

    fn series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> Series {
        Series {
            labels: Labels::from_pairs(labels),
            samples: samples.to_vec(),
        }
    }

    /// `(t in seconds, value)` to samples.
    fn secs(points: &[(i64, f64)]) -> Vec<(i64, f64)> {
        points.iter().map(|&(t, v)| (t * 1000, v)).collect()
    }

    fn stale() -> f64 {
        f64::from_bits(STALE_NAN)
    }

    fn instant(db: &Mem, q: &str, t_secs: i64) -> Result<Value, QueryError> {
        Engine::default().instant(db, q, t_secs * 1000)
    }

    /// An instant query's vector as `(labels text, value)`, in the engine's order.
    fn vector(db: &Mem, q: &str, t_secs: i64) -> Vec<(String, f64)> {
        match instant(db, q, t_secs) {
            Ok(Value::Vector(v)) => v.into_iter().map(|s| (s.labels.to_string(), s.v)).collect(),
            other => panic!("{q}: expected a vector, got {other:?}"),
        }
    }

    /// Like [`vector`], sorted by labels.
    fn sorted(db: &Mem, q: &str, t_secs: i64) -> Vec<(String, f64)> {
        let mut v = vector(db, q, t_secs);
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn scalar(db: &Mem, q: &str, t_secs: i64) -> f64 {
        match instant(db, q, t_secs) {
            Ok(Value::Scalar(_, v)) => v,
            other => panic!("{q}: expected a scalar, got {other:?}"),
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
    }

    fn assert_vector(got: &[(String, f64)], want: &[(&str, f64)]) {
        assert_eq!(got.len(), want.len(), "got {got:?}, want {want:?}");
        for ((gl, gv), (wl, wv)) in got.iter().zip(want) {
            assert_eq!(gl, wl, "got {got:?}, want {want:?}");
            assert!(close(*gv, *wv), "{gl}: got {gv}, want {wv}");
        }
    }

    fn eval_error(db: &Mem, q: &str, t_secs: i64) -> String {
        match instant(db, q, t_secs) {
            Err(e) => e.to_string(),
            Ok(v) => panic!("{q}: expected an error, got {v:?}"),
        }
    }

    #[test]
    fn instant_selector_takes_the_latest_sample_within_the_lookback_and_honours_staleness() {
        let db = Mem(vec![
            series(
                &[("__name__", "up"), ("job", "a")],
                &secs(&[(0, 1.0), (60, 2.0), (120, stale())]),
            ),
            series(&[("__name__", "up"), ("job", "b")], &secs(&[(10, 5.0)])),
        ]);
        assert_vector(
            &vector(&db, "up", 100),
            &[(r#"up{job="a"}"#, 2.0), (r#"up{job="b"}"#, 5.0)],
        );
        // The marker at 120 s ends job a; b's sample is still within five minutes.
        assert_vector(&vector(&db, "up", 130), &[(r#"up{job="b"}"#, 5.0)]);
        // Both ends of the lookback window are inclusive in 2.42.
        assert_vector(&vector(&db, "up", 310), &[(r#"up{job="b"}"#, 5.0)]);
        assert_vector(&vector(&db, "up{job=\"b\"}", 311), &[]);
        // Before any sample.
        assert_vector(&vector(&db, "up", -1), &[]);
        // Results carry the evaluation time.
        match instant(&db, "up{job=\"b\"}", 100) {
            Ok(Value::Vector(v)) => assert_eq!(v[0].t, 100_000),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn offset_and_at_move_the_reference_time() {
        let db = Mem(vec![series(
            &[("__name__", "x")],
            &secs(&[(0, 0.0), (60, 1.0), (120, 2.0), (180, 3.0)]),
        )]);
        assert_vector(&vector(&db, "x offset 1m", 130), &[("x{}", 1.0)]);
        assert_vector(&vector(&db, "x offset -1m", 70), &[("x{}", 2.0)]);
        assert_vector(&vector(&db, "x @ 60", 1000), &[("x{}", 1.0)]);
        assert_vector(&vector(&db, "x @ 120 offset 1m", 1000), &[("x{}", 1.0)]);
        assert_vector(&vector(&db, "x @ start()", 130), &[("x{}", 2.0)]);
        assert_vector(
            &vector(&db, "sum_over_time(x[1m] @ 120)", 5000),
            &[("{}", 3.0)],
        );
        // timestamp() sees the sample's own time.
        assert_vector(&vector(&db, "timestamp(x)", 130), &[("{}", 120.0)]);
        assert_vector(&vector(&db, "timestamp(x offset 1m)", 130), &[("{}", 60.0)]);
        assert_vector(&vector(&db, "timestamp(x + 1)", 130), &[("{}", 130.0)]);
    }

    #[test]
    fn rate_increase_and_delta_follow_prometheus_extrapolation() {
        let db = Mem(vec![
            // A counter reset between 25 s and 40 s.
            series(
                &[("__name__", "c"), ("k", "reset")],
                &secs(&[(10, 10.0), (25, 20.0), (40, 5.0), (55, 15.0)]),
            ),
            // A counter that starts near zero late in the range.
            series(
                &[("__name__", "c"), ("k", "young")],
                &secs(&[(40, 1.0), (55, 4.0)]),
            ),
        ]);
        // reset: increase 5 + 20 (reset) = 25 over 45 s of samples; 10 s to the start and 5 s
        // to the end are both under 1.1 × 15 s, so extrapolate to the full 60 s.
        // young: 3 over 15 s; the zero point is 15 × 1/3 = 5 s before the first sample, which
        // limits the 40 s gap to the start; 5 s to the end: 25 s in all.
        assert_vector(
            &vector(&db, "increase(c[1m])", 60),
            &[
                (r#"{k="reset"}"#, 25.0 * 60.0 / 45.0),
                (r#"{k="young"}"#, 3.0 * 25.0 / 15.0),
            ],
        );
        assert_vector(
            &vector(&db, "rate(c[1m])", 60),
            &[
                (r#"{k="reset"}"#, 25.0 * 60.0 / 45.0 / 60.0),
                (r#"{k="young"}"#, 3.0 * 25.0 / 15.0 / 60.0),
            ],
        );
        // delta knows no resets nor zero point: young's 40 s gap is beyond 1.1 × 15 s, so it
        // extrapolates by half an interval (7.5 s) there.
        assert_vector(
            &vector(&db, "delta(c[1m])", 60),
            &[
                (r#"{k="reset"}"#, 5.0 * 60.0 / 45.0),
                (r#"{k="young"}"#, 3.0 * 27.5 / 15.0),
            ],
        );
        assert_vector(
            &vector(&db, "irate(c[1m])", 60),
            &[
                (r#"{k="reset"}"#, 10.0 / 15.0),
                (r#"{k="young"}"#, 3.0 / 15.0),
            ],
        );
        assert_vector(
            &vector(&db, "idelta(c[1m])", 60),
            &[(r#"{k="reset"}"#, 10.0), (r#"{k="young"}"#, 3.0)],
        );
        assert_vector(
            &vector(&db, "resets(c[1m])", 60),
            &[(r#"{k="reset"}"#, 1.0), (r#"{k="young"}"#, 0.0)],
        );
        // One sample is not enough for a rate.
        assert_vector(&vector(&db, "rate(c[10s])", 60), &[]);
        // The range's start is inclusive: [10 s, 55 s] holds all four samples.
        assert_vector(
            &vector(&db, "count_over_time(c{k=\"reset\"}[45s])", 55),
            &[(r#"{k="reset"}"#, 4.0)],
        );
    }

    #[test]
    fn over_time_functions() {
        let db = Mem(vec![series(
            &[("__name__", "g"), ("i", "1")],
            &secs(&[(0, 1.0), (15, 4.0), (30, stale()), (45, 2.0), (60, 3.0)]),
        )]);
        let one = |q: &str| vector(&db, q, 60)[0].1;
        assert!(close(one("avg_over_time(g[1m])"), 2.5));
        assert!(close(one("sum_over_time(g[1m])"), 10.0));
        assert!(close(one("count_over_time(g[1m])"), 4.0));
        assert!(close(one("min_over_time(g[1m])"), 1.0));
        assert!(close(one("max_over_time(g[1m])"), 4.0));
        assert!(close(one("stdvar_over_time(g[1m])"), 1.25));
        assert!(close(one("stddev_over_time(g[1m])"), 1.25f64.sqrt()));
        assert!(close(one("quantile_over_time(0.5, g[1m])"), 2.5));
        assert!(close(one("changes(g[1m])"), 3.0));
        assert!(close(one("present_over_time(g[1m])"), 1.0));
        // last_over_time keeps the metric name; the others drop it.
        assert_vector(
            &vector(&db, "last_over_time(g[1m])", 60),
            &[(r#"g{i="1"}"#, 3.0)],
        );
        assert_vector(
            &vector(&db, "max_over_time(g[1m])", 60),
            &[(r#"{i="1"}"#, 4.0)],
        );
        // holt_winters on a straight line follows it exactly.
        let line = Mem(vec![series(
            &[("__name__", "l")],
            &secs(&[(0, 1.0), (15, 2.0), (30, 3.0), (45, 4.0)]),
        )]);
        assert_vector(
            &vector(&line, "holt_winters(l[1m], 0.5, 0.5)", 45),
            &[("{}", 4.0)],
        );
        assert!(eval_error(&line, "holt_winters(l[1m], 1, 0.5)", 45)
            .contains("invalid smoothing factor"));
        assert_vector(&vector(&line, "deriv(l[1m])", 45), &[("{}", 1.0 / 15.0)]);
        // Intercept at the evaluation time (45 s, value 4), one minute ahead: 4 + 4.
        assert_vector(
            &vector(&line, "predict_linear(l[1m], 60)", 45),
            &[("{}", 8.0)],
        );
        let flat = Mem(vec![series(
            &[("__name__", "f")],
            &secs(&[(0, 7.0), (15, 7.0)]),
        )]);
        assert_vector(&vector(&flat, "deriv(f[1m])", 15), &[("{}", 0.0)]);
    }

    fn buckets(le_counts: &[(&str, f64)], extra: (&str, &str)) -> Vec<Series> {
        le_counts
            .iter()
            .map(|(le, c)| {
                series(
                    &[("__name__", "h_bucket"), ("le", le), extra],
                    &secs(&[(0, *c)]),
                )
            })
            .collect()
    }

    #[test]
    fn histogram_quantile_interpolates_within_buckets() {
        let mut all = buckets(&[("1", 10.0), ("2", 20.0), ("+Inf", 20.0)], ("job", "ok"));
        // Not monotonic: the envelope (10, 10, 20) is used.
        all.extend(buckets(
            &[("1", 10.0), ("2", 8.0), ("+Inf", 20.0)],
            ("job", "bumpy"),
        ));
        // No +Inf bucket: NaN.
        all.extend(buckets(&[("1", 10.0), ("2", 20.0)], ("job", "open")));
        // Nothing observed: NaN.
        all.extend(buckets(&[("1", 0.0), ("+Inf", 0.0)], ("job", "empty")));
        // A bucket with a negative bound takes the bound.
        all.extend(buckets(&[("-1", 5.0), ("+Inf", 10.0)], ("job", "neg")));
        let db = Mem(all);
        let q = |phi: &str| sorted(&db, &format!("histogram_quantile({phi}, h_bucket)"), 0);
        assert_vector(
            &q("0.5"),
            &[
                (r#"{job="bumpy"}"#, 1.0),
                (r#"{job="empty"}"#, f64::NAN),
                (r#"{job="neg"}"#, -1.0),
                (r#"{job="ok"}"#, 1.0),
                (r#"{job="open"}"#, f64::NAN),
            ],
        );
        let q75 = q("0.75");
        // ok: rank 15 falls in (1, 2] holding 10, 5 into it; bumpy: rank 15 is past every
        // finite bucket, so the highest finite bound.
        assert_eq!(q75[0], (r#"{job="bumpy"}"#.to_string(), 2.0));
        assert_eq!(q75[3], (r#"{job="ok"}"#.to_string(), 1.5));
        assert_eq!(q("2")[3].1, f64::INFINITY);
        assert_eq!(q("-1")[3].1, f64::NEG_INFINITY);
        // Two metrics with the same labels but le: the same label set twice after the name
        // is dropped.
        let twice = Mem(buckets(&[("1", 1.0), ("+Inf", 2.0)], ("job", "x"))
            .into_iter()
            .chain(
                buckets(&[("1", 1.0), ("+Inf", 2.0)], ("job", "x"))
                    .into_iter()
                    .map(|mut s| {
                        s.labels = set_label(&s.labels, METRIC_NAME, "other_bucket");
                        s
                    }),
            )
            .collect());
        assert!(
            eval_error(&twice, "histogram_quantile(0.5, {le!=\"\"})", 0).contains("same labelset")
        );
    }

    fn cpu_db() -> Mem {
        Mem(vec![
            series(
                &[("__name__", "cpu"), ("i", "a"), ("mode", "idle")],
                &[(0, 1.0)],
            ),
            series(
                &[("__name__", "cpu"), ("i", "b"), ("mode", "idle")],
                &[(0, 3.0)],
            ),
            series(
                &[("__name__", "cpu"), ("i", "c"), ("mode", "user")],
                &[(0, 2.0)],
            ),
            series(
                &[("__name__", "cpu"), ("i", "d"), ("mode", "user")],
                &[(0, 3.0)],
            ),
            series(
                &[("__name__", "cpu"), ("i", "e"), ("mode", "user")],
                &[(0, f64::NAN)],
            ),
        ])
    }

    #[test]
    fn aggregations() {
        let db = cpu_db();
        let finite = r#"cpu{i!="e"}"#;
        assert_vector(&vector(&db, &format!("sum({finite})"), 0), &[("{}", 9.0)]);
        assert_vector(
            &vector(&db, &format!("sum by (mode) ({finite})"), 0),
            &[(r#"{mode="idle"}"#, 4.0), (r#"{mode="user"}"#, 5.0)],
        );
        assert_vector(
            &vector(&db, &format!("avg without (i) ({finite})"), 0),
            &[(r#"{mode="idle"}"#, 2.0), (r#"{mode="user"}"#, 2.5)],
        );
        assert_vector(
            &vector(&db, &format!("count by (__name__) ({finite})"), 0),
            &[("cpu{}", 4.0)],
        );
        assert_vector(&vector(&db, "max(cpu)", 0), &[("{}", 3.0)]);
        assert_vector(&vector(&db, "min(cpu)", 0), &[("{}", 1.0)]);
        assert_vector(&vector(&db, "group(cpu)", 0), &[("{}", 1.0)]);
        assert_vector(
            &vector(&db, &format!("stdvar({finite})"), 0),
            &[("{}", 0.6875)],
        );
        assert_vector(
            &vector(&db, &format!("quantile(0.5, {finite})"), 0),
            &[("{}", 2.5)],
        );
        assert_vector(
            &sorted(&db, &format!("count_values(\"v\", {finite})"), 0),
            &[
                (r#"{v="1"}"#, 1.0),
                (r#"{v="2"}"#, 1.0),
                (r#"{v="3"}"#, 2.0),
            ],
        );
        assert!(eval_error(&db, "count_values(\"a-b\", cpu)", 0).contains("invalid label name"));
    }

    #[test]
    fn topk_and_bottomk_keep_labels_and_order_like_prometheus() {
        let db = cpu_db();
        assert_vector(
            &vector(&db, "topk(2, cpu)", 0),
            &[
                (r#"cpu{i="b", mode="idle"}"#, 3.0),
                (r#"cpu{i="d", mode="user"}"#, 3.0),
            ],
        );
        assert_vector(
            &vector(&db, "bottomk(2, cpu)", 0),
            &[
                (r#"cpu{i="a", mode="idle"}"#, 1.0),
                (r#"cpu{i="c", mode="user"}"#, 2.0),
            ],
        );
        // Per group, groups in order of appearance.
        assert_vector(
            &vector(&db, "topk by (mode) (1, cpu)", 0),
            &[
                (r#"cpu{i="b", mode="idle"}"#, 3.0),
                (r#"cpu{i="d", mode="user"}"#, 3.0),
            ],
        );
        assert_vector(&vector(&db, "topk(0, cpu)", 0), &[]);
        assert!(eval_error(&db, "topk(scalar(vector(NaN)), cpu)", 0).contains("overflows int64"));
        // sort puts NaN last both ways.
        let sorted_values: Vec<f64> = vector(&db, "sort(cpu)", 0).iter().map(|s| s.1).collect();
        assert_eq!(&sorted_values[..4], &[1.0, 2.0, 3.0, 3.0]);
        assert!(sorted_values[4].is_nan());
        let desc: Vec<String> = vector(&db, "sort_desc(cpu)", 0)
            .into_iter()
            .map(|s| s.0)
            .collect();
        assert_eq!(
            desc,
            [
                r#"cpu{i="b", mode="idle"}"#,
                r#"cpu{i="d", mode="user"}"#,
                r#"cpu{i="c", mode="user"}"#,
                r#"cpu{i="a", mode="idle"}"#,
                r#"cpu{i="e", mode="user"}"#,
            ]
        );
    }

    fn http_db() -> Mem {
        Mem(vec![
            series(
                &[("__name__", "errors"), ("method", "get"), ("code", "500")],
                &[(0, 3.0)],
            ),
            series(
                &[("__name__", "errors"), ("method", "get"), ("code", "404")],
                &[(0, 2.0)],
            ),
            series(
                &[("__name__", "errors"), ("method", "post"), ("code", "500")],
                &[(0, 1.0)],
            ),
            series(
                &[("__name__", "requests"), ("method", "get"), ("team", "a")],
                &[(0, 10.0)],
            ),
            series(
                &[("__name__", "requests"), ("method", "post"), ("team", "b")],
                &[(0, 20.0)],
            ),
        ])
    }

    #[test]
    fn vector_matching_with_group_left_and_its_errors() {
        let db = http_db();
        assert_vector(
            &sorted(&db, "errors / ignoring(code, team) group_left requests", 0),
            &[
                (r#"{code="404", method="get"}"#, 0.2),
                (r#"{code="500", method="get"}"#, 0.3),
                (r#"{code="500", method="post"}"#, 0.05),
            ],
        );
        // Labels named in group_left come from the "one" side.
        assert_vector(
            &sorted(&db, "errors * on(method) group_left(team) requests", 0),
            &[
                (r#"{code="404", method="get", team="a"}"#, 20.0),
                (r#"{code="500", method="get", team="a"}"#, 30.0),
                (r#"{code="500", method="post", team="b"}"#, 20.0),
            ],
        );
        // group_right: the many side is on the right; comparisons return the left ("one")
        // value with the right's labels.
        assert_vector(
            &sorted(&db, "requests > on(method) group_right errors", 0),
            &[
                (r#"errors{code="404", method="get"}"#, 10.0),
                (r#"errors{code="500", method="get"}"#, 10.0),
                (r#"errors{code="500", method="post"}"#, 20.0),
            ],
        );
        // One-to-one with on(): only the on() labels remain.
        assert_vector(
            &sorted(&db, "sum by (method) (errors) / on(method) requests", 0),
            &[(r#"{method="get"}"#, 0.5), (r#"{method="post"}"#, 0.05)],
        );
        assert!(eval_error(&db, "errors / on(method) requests", 0)
            .contains("many-to-one matching must be explicit"));
        assert!(
            eval_error(&db, "requests / on(method) group_left errors", 0)
                .contains("many-to-many matching not allowed")
        );
        assert!(eval_error(&db, "errors + on() group_left requests", 0)
            .contains("many-to-many matching not allowed"));
    }

    #[test]
    fn comparisons_filter_or_return_bool() {
        let db = http_db();
        assert_vector(
            &sorted(&db, "errors > 1", 0),
            &[
                (r#"errors{code="404", method="get"}"#, 2.0),
                (r#"errors{code="500", method="get"}"#, 3.0),
            ],
        );
        assert_vector(
            &sorted(&db, "2 < errors", 0),
            &[(r#"errors{code="500", method="get"}"#, 3.0)],
        );
        assert_vector(
            &sorted(&db, "errors > bool 1", 0),
            &[
                (r#"{code="404", method="get"}"#, 1.0),
                (r#"{code="500", method="get"}"#, 1.0),
                (r#"{code="500", method="post"}"#, 0.0),
            ],
        );
        assert_vector(
            &sorted(&db, "errors - 1", 0),
            &[
                (r#"{code="404", method="get"}"#, 1.0),
                (r#"{code="500", method="get"}"#, 2.0),
                (r#"{code="500", method="post"}"#, 0.0),
            ],
        );
        assert!(close(scalar(&db, "2 ^ 3 % 5 + 1 > bool 3", 0), 1.0));
        assert!(close(scalar(&db, "-(1)", 0), -1.0));
        // Dropping the name can leave two series with one label set.
        let db = Mem(vec![
            series(&[("__name__", "a"), ("x", "1")], &[(0, 1.0)]),
            series(&[("__name__", "b"), ("x", "1")], &[(0, 2.0)]),
        ]);
        assert!(eval_error(&db, "{x=\"1\"} * 2", 0).contains("same labelset"));
        assert!(eval_error(&db, "-{x=\"1\"}", 0).contains("same labelset"));
        assert!(eval_error(&db, "sum_over_time({x=\"1\"}[1m])", 0).contains("same labelset"));
    }

    #[test]
    fn set_operators() {
        let db = http_db();
        assert_vector(
            &vector(&db, "errors and on(method) requests{method=\"post\"}", 0),
            &[(r#"errors{code="500", method="post"}"#, 1.0)],
        );
        assert_vector(
            &vector(&db, "errors unless on(method) requests{method=\"post\"}", 0),
            &[
                (r#"errors{code="404", method="get"}"#, 2.0),
                (r#"errors{code="500", method="get"}"#, 3.0),
            ],
        );
        // or: all of the left, then the right's that match none of the left.
        assert_vector(
            &vector(&db, "errors{code=\"404\"} or on(method) requests", 0),
            &[
                (r#"errors{code="404", method="get"}"#, 2.0),
                (r#"requests{method="post", team="b"}"#, 20.0),
            ],
        );
        assert_vector(&vector(&db, "errors and nothing", 0), &[]);
        assert_eq!(vector(&db, "nothing or errors", 0).len(), 3);
    }

    #[test]
    fn subqueries_step_on_multiples_of_their_step() {
        let db = Mem(vec![series(
            &[("__name__", "x")],
            &(0..=20).map(|i| (i * 30_000, i as f64)).collect::<Vec<_>>(),
        )]);
        // At 330 s, [30 s, 330 s] holds the steps 60, 120, ..., 300.
        assert_vector(
            &vector(&db, "sum_over_time(vector(time())[5m:1m])", 330),
            &[("{}", 900.0)],
        );
        assert_vector(
            &vector(&db, "count_over_time(x[5m:1m])", 330),
            &[("{}", 5.0)],
        );
        // offset 1m: [-30 s, 270 s] holds 0, 60, ..., 240.
        assert_vector(
            &vector(&db, "sum_over_time(vector(time())[5m:1m] offset 1m)", 330),
            &[("{}", 600.0)],
        );
        // Both ends inclusive: at 300 s, [0, 300] holds 0, 60, ..., 300 (x = 0, 2, ..., 10).
        assert_vector(
            &vector(&db, "sum_over_time(x[5m:1m])", 300),
            &[("{}", 30.0)],
        );
        // No step: the default one minute.
        assert_vector(&vector(&db, "count_over_time(x[5m:])", 330), &[("{}", 5.0)]);
        // Nested, and rate over a subquery.
        assert_vector(
            &vector(&db, "max_over_time(rate(x[1m])[3m:30s])", 600),
            &[("{}", 1.0 / 30.0)],
        );
        // A top-level subquery is a matrix.
        match instant(&db, "x[2m:1m]", 600) {
            Ok(Value::Matrix(m)) => assert_eq!(
                m,
                vec![series(
                    &[("__name__", "x")],
                    &[(480_000, 16.0), (540_000, 18.0), (600_000, 20.0)]
                )]
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            instant(&db, "x[100y:1ms]", 600),
            Err(QueryError::TooManySamples)
        );
    }

    #[test]
    fn absent_and_absent_over_time() {
        let db = http_db();
        assert_vector(
            &vector(
                &db,
                "absent(nothing{job=\"x\", a=~\"y\", b=\"1\", b=\"2\"})",
                0,
            ),
            &[(r#"{job="x"}"#, 1.0)],
        );
        assert_vector(&vector(&db, "absent(errors)", 0), &[]);
        assert_vector(&vector(&db, "absent(sum(nothing))", 0), &[("{}", 1.0)]);
        assert_vector(
            &vector(&db, "absent_over_time(nothing{job=\"x\"}[5m])", 0),
            &[(r#"{job="x"}"#, 1.0)],
        );
        assert_vector(&vector(&db, "absent_over_time(errors[5m])", 0), &[]);
        assert_vector(
            &vector(&db, "absent_over_time(errors[5m])", 301),
            &[("{}", 1.0)],
        );
    }

    #[test]
    fn label_functions() {
        let db = Mem(vec![series(
            &[
                ("__name__", "up"),
                ("instance", "host:9100"),
                ("job", "node"),
            ],
            &[(0, 1.0)],
        )]);
        assert_vector(
            &vector(
                &db,
                r#"label_replace(up, "host", "$1", "instance", "(.*):.*")"#,
                0,
            ),
            &[(r#"up{host="host", instance="host:9100", job="node"}"#, 1.0)],
        );
        // No match: unchanged; an empty replacement removes the label.
        assert_vector(
            &vector(
                &db,
                r#"label_replace(up, "job", "x", "instance", "nomatch")"#,
                0,
            ),
            &[(r#"up{instance="host:9100", job="node"}"#, 1.0)],
        );
        assert_vector(
            &vector(&db, r#"label_replace(up, "job", "", "job", ".*")"#, 0),
            &[(r#"up{instance="host:9100"}"#, 1.0)],
        );
        assert_vector(
            &vector(
                &db,
                r#"label_replace(up, "x", "${1}-$2", "instance", "(.*):(.*)")"#,
                0,
            ),
            &[(
                r#"up{instance="host:9100", job="node", x="host-9100"}"#,
                1.0,
            )],
        );
        assert!(
            eval_error(&db, r#"label_replace(up, "x", "", "job", "(")"#, 0)
                .contains("invalid regular expression")
        );
        assert!(
            eval_error(&db, r#"label_replace(up, "1x", "", "job", ".*")"#, 0)
                .contains("invalid destination label name")
        );
        assert_vector(
            &vector(
                &db,
                r#"label_join(up, "id", "-", "job", "instance", "none")"#,
                0,
            ),
            &[(
                r#"up{id="node-host:9100-", instance="host:9100", job="node"}"#,
                1.0,
            )],
        );
    }

    #[test]
    fn scalar_vector_time_and_dates() {
        let db = http_db();
        assert!(close(scalar(&db, "scalar(sum(errors))", 0), 6.0));
        assert!(scalar(&db, "scalar(errors)", 0).is_nan());
        assert!(close(scalar(&db, "time()", 42), 42.0));
        assert!(close(scalar(&db, "pi()", 0), std::f64::consts::PI));
        assert_vector(&vector(&db, "vector(1) + 2", 0), &[("{}", 3.0)]);
        // 2024-02-29T13:45:00Z, a Thursday.
        let t = 1_709_214_300;
        let date = |f: &str| vector(&db, &format!("{f}(vector({t}))"), 0)[0].1;
        assert_eq!(date("year"), 2024.0);
        assert_eq!(date("month"), 2.0);
        assert_eq!(date("day_of_month"), 29.0);
        assert_eq!(date("day_of_week"), 4.0);
        assert_eq!(date("day_of_year"), 60.0);
        assert_eq!(date("days_in_month"), 29.0);
        assert_eq!(date("hour"), 13.0);
        assert_eq!(date("minute"), 45.0);
        assert_eq!(vector(&db, "year()", 0)[0].1, 1970.0);
        assert_eq!(vector(&db, "day_of_week()", -86_400)[0].1, 3.0);
        assert_vector(
            &vector(&db, "round(vector(2.5)) + round(vector(17), 5)", 0),
            &[("{}", 18.0)],
        );
        assert_vector(&vector(&db, "clamp(vector(5), 0, 3)", 0), &[("{}", 3.0)]);
        assert_vector(&vector(&db, "clamp(vector(5), 3, 0)", 0), &[]);
        assert_vector(&vector(&db, "clamp_min(vector(5), 6)", 0), &[("{}", 6.0)]);
        assert_vector(&vector(&db, "sgn(vector(-5))", 0), &[("{}", -1.0)]);
        assert_vector(
            &sorted(&db, "abs(-errors)", 0)[..1],
            &[(r#"{code="404", method="get"}"#, 2.0)],
        );
    }

    #[test]
    fn range_queries_join_steps_into_series() {
        let db = Mem(vec![
            series(
                &[("__name__", "x"), ("k", "a")],
                &secs(&[(0, 1.0), (120, 2.0)]),
            ),
            series(
                &[("__name__", "x"), ("k", "b")],
                &secs(&[(60, 5.0), (61, stale())]),
            ),
        ]);
        let engine = Engine {
            lookback_ms: 60_000,
        };
        let m = engine.range(&db, "x", 0, 240_000, 60_000).unwrap();
        assert_eq!(
            m,
            vec![
                series(
                    &[("__name__", "x"), ("k", "a")],
                    &[(0, 1.0), (60_000, 1.0), (120_000, 2.0), (180_000, 2.0)]
                ),
                series(&[("__name__", "x"), ("k", "b")], &[(60_000, 5.0)]),
            ]
        );
        let m = engine.range(&db, "time() * 2", 0, 120_000, 60_000).unwrap();
        assert_eq!(
            m,
            vec![series(&[], &[(0, 0.0), (60_000, 120.0), (120_000, 240.0)])]
        );
        // @ end() is the range's end at every step.
        let m = engine
            .range(&db, "x{k=\"a\"} @ end()", 0, 120_000, 60_000)
            .unwrap();
        assert_eq!(m[0].samples, vec![(0, 2.0), (60_000, 2.0), (120_000, 2.0)]);
        assert!(matches!(
            engine.range(&db, "x[1m]", 0, 60_000, 60_000),
            Err(QueryError::Eval(_))
        ));
        assert!(engine.range(&db, "x", 0, 60_000, 0).is_err());
    }

    fn one_instant(name: &str, values: &[f64]) -> Mem {
        Mem(values
            .iter()
            .enumerate()
            .map(|(j, v)| series(&[("__name__", name), ("j", &j.to_string())], &[(0, *v)]))
            .collect())
    }

    fn names(v: Vec<(String, f64)>) -> Vec<String> {
        v.into_iter().map(|s| s.0).collect()
    }

    /// Which of equal values topk and bottomk keep, and in which order, as Prometheus 2.42
    /// answers with its series in label order (checked against it).
    #[test]
    fn ties_in_topk_and_bottomk_are_broken_like_prometheus() {
        let db = one_instant("t", &[1.0, 2.0, 0.0, 1.0, 2.0]);
        assert_eq!(
            names(vector(&db, "topk(3, t)", 0)),
            [r#"t{j="1"}"#, r#"t{j="4"}"#, r#"t{j="3"}"#]
        );
        let db = one_instant("t", &[0.0, 1.0, 2.0, 0.0, 1.0]);
        assert_eq!(
            names(vector(&db, "topk(3, t)", 0)),
            [r#"t{j="2"}"#, r#"t{j="1"}"#, r#"t{j="4"}"#]
        );
        let db = one_instant("t", &[2.0, 0.0, 1.0, 2.0, 0.0]);
        assert_eq!(
            names(vector(&db, "bottomk(2, t)", 0)),
            [r#"t{j="1"}"#, r#"t{j="4"}"#]
        );
        let db = one_instant("t", &[f64::NAN; 5]);
        assert_eq!(
            names(vector(&db, "topk(2, t)", 0)),
            [r#"t{j="0"}"#, r#"t{j="4"}"#]
        );
    }

    #[test]
    fn label_sets_are_unique_over_all_the_steps_of_a_range_function() {
        // Two series with the same labels but the name, never at the same time.
        let db = Mem(vec![
            series(
                &[("__name__", "a"), ("job", "x")],
                &secs(&[(0, 1.0), (15, 2.0), (30, 3.0)]),
            ),
            series(
                &[("__name__", "b"), ("job", "x")],
                &secs(&[(600, 1.0), (615, 2.0), (630, 3.0)]),
            ),
        ]);
        let engine = Engine::default();
        // 2 over 30 s of samples, extrapolated by 7.5 s towards the end.
        assert_vector(
            &vector(&db, "rate({job=\"x\"}[1m])", 60),
            &[(r#"{job="x"}"#, 2.5 / 60.0)],
        );
        assert_vector(&vector(&db, "-{job=\"x\"}", 30), &[(r#"{job="x"}"#, -3.0)]);
        for q in ["rate({job=\"x\"}[1m])", "-{job=\"x\"}"] {
            assert_eq!(
                engine.range(&db, q, 0, 660_000, 60_000),
                Err(QueryError::Eval(
                    "vector cannot contain metrics with the same labelset".into()
                )),
                "{q}"
            );
        }
        // Elsewhere the check is per step, and the steps join into one series.
        let m = engine
            .range(&db, "{job=\"x\"} * 2", 0, 660_000, 60_000)
            .unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].samples.len(), 8);
    }

    #[test]
    fn predict_linear_of_an_at_range_moves_with_the_steps_as_in_2_42() {
        // Flat at 0 up to 60 s, then rising one per second.
        let db = Mem(vec![series(
            &[("__name__", "l")],
            &(0..=40)
                .map(|i| (i * 15_000, (i * 15 - 60).max(0) as f64))
                .collect::<Vec<_>>(),
        )]);
        let at_120 = vector(&db, "predict_linear(l[2m] @ 120, 0)", 120)[0].1;
        // In a range query 2.42 shifts the range by each step's distance from the start, over
        // the samples read for the unshifted range ([0, 120 s]): [60 s, 120 s] at 180 s (a
        // line reaching 120 there), a single sample at 240 s.
        let m = Engine::default()
            .range(
                &db,
                "predict_linear(l[2m] @ 120, 0)",
                120_000,
                240_000,
                60_000,
            )
            .unwrap();
        assert_eq!(m[0].samples.len(), 2, "{m:?}");
        assert!(close(m[0].samples[0].1, at_120));
        assert_eq!(m[0].samples[1].0, 180_000);
        assert!(close(m[0].samples[1].1, 120.0), "{m:?}");
    }

    #[test]
    fn errors_are_returned_not_panicked() {
        let db = http_db();
        for q in [
            "",
            "sum(",
            "first_over_time(errors[1m])",
            "limitk(1, errors)",
            "atan2(errors, 1)",
            "nonexistent_function(errors)",
            "{a=\"1\" or b=\"2\"}",
            // Prometheus 3 syntax.
            "errors{\"code\"=\"500\"}",
            "{\"errors\"}",
            "sum by (\"code\") (errors)",
            "errors[300]",
            "errors[5m:30]",
            "errors offset 60",
        ] {
            assert!(
                matches!(instant(&db, q, 0), Err(QueryError::Parse(_))),
                "{q}: {:?}",
                instant(&db, q, 0)
            );
        }
        for q in [
            "rate(errors[1h30m])",
            "errors[5m:] offset -1m",
            "max_over_time(errors[100ms:10ms])",
            "sum by (code) (errors) # a comment with \"quotes\" [300]",
            "label_replace(errors, \"x\", \"[300]\", \"code\", \"(.*)\")",
            "errors{code=~\"5..\", method!=\"{\"} offset 1m @ 10",
            "1e-3 * 0x10 * errors",
        ] {
            assert!(instant(&db, q, 0).is_ok(), "{q}: {:?}", instant(&db, q, 0));
        }
        let deep = format!(
            "{}1{}",
            "(".repeat(MAX_DEPTH + 10),
            ")".repeat(MAX_DEPTH + 10)
        );
        assert!(matches!(instant(&db, &deep, 0), Err(QueryError::Parse(_))));
        let long = vec!["errors"; MAX_TOKENS].join(" + ");
        assert!(matches!(instant(&db, &long, 0), Err(QueryError::Parse(_))));
        let fine = vec!["1"; 300].join(" + ");
        assert!(close(scalar(&db, &fine, 0), 300.0));
        assert_eq!(
            instant(&db, "\"hi\"", 5),
            Ok(Value::String(5000, "hi".into()))
        );
    }

    #[test]
    fn windows_found_by_stepping_equal_windows_found_by_search() {
        let points: Vec<(i64, f64)> = (0..200).map(|i| (i * 15 + (i % 3), i as f64)).collect();
        let mut cursor = (0, 0);
        // Forward steps, a repeat, jumps back and far ahead, windows past both ends.
        let probes = [
            (-50, -10),
            (0, 0),
            (10, 300),
            (40, 330),
            (40, 330),
            (0, 20),
            (1000, 1300),
            (2900, 4000),
            (5000, 6000),
            (100, 90),
        ];
        for (start, end) in probes {
            let got = window_from(&points, start, end, &mut cursor);
            let lo = points.partition_point(|&(t, _)| t < start);
            let hi = points.partition_point(|&(t, _)| t <= end).max(lo);
            assert_eq!(got, (lo, hi), "window [{start}, {end}]");
        }
    }

    #[test]
    fn durations_past_the_parsers_range_are_refused_not_panicked_on() {
        let engine = Engine::default();
        let store = Mem(Vec::new());
        for q in [
            "m[99999999999999999999999999999999999999999999999m]",
            "m offset 9999999999999999y",
            "m[1h:99999999999999999999w]",
        ] {
            let err = engine.instant(&store, q, 0).err().unwrap();
            assert!(
                err.to_string().contains("duration out of range"),
                "{q}: {err}"
            );
        }
        assert_eq!(duration_ms_checked("1h30m"), Some(5_400_000));
        assert!(engine.instant(&store, "m[290y]", 0).is_ok());
    }
}
