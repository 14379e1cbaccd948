//! Reads the examples out of the Markdown docs, for `tests/docs.rs`, and matches documented
//! output against real output.
//!
//! A fence's info string carries its marker after the language (GitHub highlights by the
//! first word):
//!
//! - `sh example`: each command runs, in order, in the file's shell session. With `bg=NAME`
//!   the block's one command runs in the background until the end of the file; with `retry`
//!   each command runs again until its expectation holds (reads that wait for a health check).
//! - `sh dev-start`: not run; its `#>` lines are what a fresh `strata dev` prints.
//! - `sh no-run reason="..."`: not run, for the reason given.
//! - `LANG output`: the expected stdout of the previous command; `LANG output=NAME`: what
//!   background NAME prints.
//! - `LANG file=NAME`: the body is written to the working folder as NAME before the next command.
//!
//! Any other `sh`, `bash`, `console`, `shell` or unlabelled fence is an error, so no example
//! is skipped silently. Inside an example, expectations are shell comments, so a reader can
//! still copy and paste: `cmd  #> first stdout line`, more `#> line`s after it; `#! line`
//! for stderr (the command must then exit 1, unless `#? N` says otherwise); `#>[NAME] line`
//! for a line background NAME prints. A plain `# comment` is prose. A `curl` must document its
//! output: `curl -s` exits 0 on HTTP errors.
//!
//! Matching: `[..]` matches anything within a line; a line `...` matches any number of
//! lines. When the expected and the actual output are both JSON, they are compared as JSON:
//! the same keys everywhere, and `"[..]"` (or a string with `[..]`) matches any value.

use regex::Regex;
use serde_json::Value;

/// One command of an example, with what the docs say it does.
#[derive(Debug, Default)]
pub struct Cmd {
    pub line: usize,
    pub text: String,
    /// Runs in the background under this name.
    pub bg: Option<String>,
    pub retry: bool,
    /// Expected stdout, from `#>` lines or an `output` block.
    pub stdout: Option<String>,
    pub stderr: Vec<String>,
    pub status: Option<i32>,
    /// `(NAME, line)`: background NAME prints a line matching `line` after this command.
    pub bg_lines: Vec<(String, String)>,
}

impl Cmd {
    pub fn expected_status(&self) -> i32 {
        self.status
            .unwrap_or(if self.stderr.is_empty() { 0 } else { 1 })
    }
}

#[derive(Debug)]
pub enum Step {
    Run(Cmd),
    /// What background `name` (`dev`: the node itself) prints must match `expected`.
    Stream {
        line: usize,
        name: String,
        expected: String,
    },
    File {
        name: String,
        content: String,
    },
}

/// `(line of the opening fence, info string, body)` of every fenced block.
fn fences(markdown: &str) -> Vec<(usize, String, String)> {
    let mut found = Vec::new();
    let mut open: Option<(usize, String, String)> = None;
    for (i, raw) in markdown.lines().enumerate() {
        let line = raw.trim();
        match open.as_mut() {
            None => {
                open = line
                    .strip_prefix("```")
                    .map(|info| (i + 1, info.to_string(), "".into()))
            }
            Some(_) if line == "```" => found.extend(open.take()),
            Some((_, _, body)) => body.extend([raw, "\n"]),
        }
    }
    found
}

/// The steps of one Markdown file, and every problem found (`line N: ...`).
pub fn parse(markdown: &str) -> (Vec<Step>, Vec<String>) {
    let mut steps: Vec<Step> = Vec::new();
    let mut errors = Vec::new();
    for (line, info, body) in fences(markdown) {
        let at = |e: &str| format!("line {line}: {e}");
        let (lang, marker) = info.split_once(' ').unwrap_or((&info, ""));
        let mut words = marker.split_whitespace();
        match words.next().unwrap_or("") {
            "example" => {
                let (mut bg, mut retry) = (None, false);
                for option in words {
                    match option.strip_prefix("bg=") {
                        Some(name) => bg = Some(name.to_string()),
                        None if option == "retry" => retry = true,
                        None => errors.push(at(&format!("unknown option {option}"))),
                    }
                }
                let cmds = commands(&body, line + 1, &mut errors);
                if bg.is_some() && cmds.len() != 1 {
                    errors.push(at("a bg= block has one command"));
                }
                steps.extend(cmds.into_iter().map(|cmd| {
                    Step::Run(Cmd {
                        bg: bg.clone(),
                        retry,
                        ..cmd
                    })
                }));
            }
            "dev-start" => match commands(&body, line + 1, &mut errors).pop() {
                Some(Cmd {
                    stdout: Some(expected),
                    ..
                }) => steps.push(Step::Stream {
                    line,
                    name: "dev".into(),
                    expected,
                }),
                _ => errors.push(at("a dev-start block gives the output with #>")),
            },
            "no-run" if marker.contains("reason=\"") && !marker.contains("reason=\"\"") => {}
            "no-run" => errors.push(at("`no-run` needs reason=\"...\"")),
            "output" => match steps.last_mut() {
                Some(Step::Run(cmd)) if cmd.bg.is_none() && cmd.stdout.is_none() => {
                    cmd.stdout = Some(body);
                }
                _ => errors.push(at(
                    "an output block follows a command without documented output",
                )),
            },
            word => match word.split_once('=') {
                Some(("output", name)) => steps.push(Step::Stream {
                    line,
                    name: name.into(),
                    expected: body,
                }),
                Some(("file", name)) => steps.push(Step::File {
                    name: name.into(),
                    content: body,
                }),
                _ if ["", "sh", "bash", "console", "shell"].contains(&lang) => {
                    errors.push(at(&format!(
                        "```{info} has no marker: add `example`, `no-run reason=\"...\"`, ... \
                      (crates/strata/tests/common/doc_examples.rs lists them)"
                    )))
                }
                _ => {}
            },
        }
    }
    let mut bg_names = vec!["dev"];
    for step in &steps {
        let (line, used): (usize, Vec<&str>) = match step {
            Step::Run(cmd) => {
                if cmd.text.starts_with("curl ") && cmd.bg.is_none() && cmd.stdout.is_none() {
                    errors.push(format!("line {}: document what curl prints", cmd.line));
                }
                bg_names.extend(cmd.bg.as_deref());
                (
                    cmd.line,
                    cmd.bg_lines.iter().map(|(name, _)| name.as_str()).collect(),
                )
            }
            Step::Stream { line, name, .. } => (*line, vec![name]),
            Step::File { .. } => continue,
        };
        for name in used.into_iter().filter(|name| !bg_names.contains(name)) {
            errors.push(format!("line {line}: no background {name} runs here"));
        }
    }
    (steps, errors)
}

/// Splits an example's body into commands (a command continues over `\` line ends and open
/// quotes) and attaches the comment expectations to them.
fn commands(body: &str, first_line: usize, errors: &mut Vec<String>) -> Vec<Cmd> {
    let mut cmds: Vec<Cmd> = Vec::new();
    let (mut open, mut quote) = (false, None);
    for (k, line) in body.lines().enumerate() {
        let comment = if !open && line.trim_start().starts_with('#') {
            Some(line.trim_start())
        } else if !open && line.trim().is_empty() {
            continue;
        } else {
            let (code, comment) = split_comment(line, &mut quote);
            match cmds.last_mut() {
                Some(cmd) if open => cmd.text.extend(["\n", code.trim_end()]),
                _ => cmds.push(Cmd {
                    line: first_line + k,
                    text: code.trim().into(),
                    ..Cmd::default()
                }),
            }
            open = quote.is_some() || code.trim_end().ends_with('\\');
            comment
        };
        let kinds = ["#>", "#!", "#?"];
        let Some(comment) = comment.filter(|c| c.get(..2).is_some_and(|k| kinds.contains(&k)))
        else {
            continue; // prose
        };
        let n = first_line + k;
        let Some(cmd) = cmds.last_mut() else {
            errors.push(format!("line {n}: an expectation before any command"));
            continue;
        };
        let text = |rest: &str| rest.strip_prefix(' ').unwrap_or(rest).to_string();
        let (kind, rest) = comment.split_at(2);
        match (kind, rest.strip_prefix('[').and_then(|r| r.split_once(']'))) {
            ("#>", Some((name, line))) => cmd.bg_lines.push((name.into(), text(line))),
            ("#>", None) => cmd
                .stdout
                .get_or_insert_default()
                .extend([text(rest), "\n".into()]),
            ("#!", _) => cmd.stderr.push(text(rest)),
            _ => match rest.trim().parse() {
                Ok(code) => cmd.status = Some(code),
                Err(_) => errors.push(format!("line {n}: #? needs an exit status")),
            },
        }
    }
    if open {
        errors.push(format!(
            "line {first_line}: the last command is not finished"
        ));
    }
    cmds
}

/// Splits a line into code and an unquoted `# comment`, carrying the quote state over lines.
fn split_comment<'a>(line: &'a str, quote: &mut Option<char>) -> (&'a str, Option<&'a str>) {
    let (mut chars, mut prev) = (line.char_indices(), ' ');
    while let Some((i, c)) = chars.next() {
        match (*quote, c) {
            (None, '#') if prev.is_whitespace() => return (&line[..i], Some(&line[i..])),
            (None, '\'' | '"') => *quote = Some(c),
            (Some(q), _) if c == q => *quote = None,
            (None | Some('"'), '\\') => {
                chars.next();
            }
            _ => {}
        }
        prev = c;
    }
    (line, None)
}

/// Line by line, `[..]` matching anything within a line and a line `...` any lines; match it
/// against [`normalized`] text.
pub fn text_pattern(expected: &str) -> Regex {
    let lines = expected.lines().map(|l| match l.trim_end() {
        "..." => "(?:[^\n]*\n)*".to_string(),
        l => format!("{}\n", regex::escape(l).replace(r"\[\.\.\]", "[^\n]*")),
    });
    Regex::new(&format!("^{}$", lines.collect::<String>())).unwrap()
}

/// Trailing spaces and blank lines don't count.
pub fn normalized(text: &str) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    let used = lines
        .iter()
        .rposition(|l| !l.is_empty())
        .map_or(0, |last| last + 1);
    lines[..used].iter().map(|l| format!("{l}\n")).collect()
}

fn json_matches(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::String(e), _) if e == "[..]" => true,
        (Value::String(e), Value::String(a)) => text_pattern(e).is_match(&normalized(a)),
        (Value::Object(e), Value::Object(a)) => {
            e.len() == a.len()
                && e.iter()
                    .all(|(k, v)| a.get(k).is_some_and(|a| json_matches(v, a)))
        }
        (Value::Array(e), Value::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(e, a)| json_matches(e, a))
        }
        _ => expected == actual,
    }
}

/// Documented output against real output: as JSON when both are JSON, else by lines.
pub fn output_matches(expected: &str, actual: &str) -> bool {
    let json = |s: &str| {
        serde_json::from_str::<Value>(s)
            .ok()
            .filter(|v| !v.is_string())
    };
    match (json(expected), json(actual)) {
        (Some(e), Some(a)) => json_matches(&e, &a),
        _ => text_pattern(&normalized(expected)).is_match(&normalized(actual)),
    }
}
