//! Checks that a config's content parses as its declared type.
//!
//! A config center stores content as text and serves it to applications that parse it at
//! startup, so a syntax error published by mistake breaks every consumer at once. [`validate`]
//! rejects such content at publish time and says where the error is, with 1-based line and
//! column numbers counted in characters (not bytes), as an editor shows them.
//!
//! Validation never builds the parsed value when it can avoid it (JSON is checked with
//! `IgnoredAny`, YAML by walking parser events), so a small input cannot expand into a large
//! tree: YAML aliases are not expanded and XML entities are expanded under the parser's
//! billion-laughs limits. Every parser used here bounds its nesting depth, so no input can
//! overflow the stack. A leading byte order mark is ignored.

use std::collections::HashSet;
use std::fmt;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

pub use strata_api::config::ConfigType;

/// Why content does not parse as its type; line and column are 1-based.
///
/// The column counts characters, not bytes, from the start of the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The type the content was checked against.
    pub kind: ConfigType,
    /// The line of the error, starting at 1.
    pub line: usize,
    /// The column of the error in characters, starting at 1.
    pub column: usize,
    /// What is wrong, lowercase and without the position.
    pub message: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {} at line {}, column {}: {}",
            self.kind, self.line, self.column, self.message
        )
    }
}

impl std::error::Error for Invalid {}

/// Checks that `content` parses as `kind` (Text always passes).
///
/// # Errors
///
/// Returns [`Invalid`] with the position of the first error the parser for `kind` finds.
pub fn validate(kind: ConfigType, content: &str) -> Result<(), Invalid> {
    let content = content.strip_prefix('\u{feff}').unwrap_or(content);
    match kind {
        ConfigType::Text => Ok(()),
        ConfigType::Json => validate_json(content),
        ConfigType::Yaml => validate_yaml(content),
        ConfigType::Toml => validate_toml(content),
        ConfigType::Properties => validate_properties(content),
        ConfigType::Xml => validate_xml(content),
    }
}

fn invalid(kind: ConfigType, line: usize, column: usize, message: impl Into<String>) -> Invalid {
    Invalid {
        kind,
        line: line.max(1),
        column: column.max(1),
        message: message.into(),
    }
}

/// Returns the 1-based line and character column of byte `offset` in `content`.
///
/// An offset inside a multi-byte character counts as that character; an offset past the end
/// is the position just after the last character.
fn position_of_offset(content: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(content.len());
    while !content.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &content[..offset];
    let line = before.bytes().filter(|&byte| byte == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Returns the position just after the last character of `content`.
fn end_position(content: &str) -> (usize, usize) {
    position_of_offset(content, content.len())
}

fn validate_json(content: &str) -> Result<(), Invalid> {
    let Err(error) = serde_json::from_str::<serde::de::IgnoredAny>(content) else {
        return Ok(());
    };
    // serde_json counts columns in bytes consumed on the line; convert to characters so the
    // column points at the offending character.
    let line = error.line().max(1);
    let line_text = content.split('\n').nth(line - 1).unwrap_or("");
    let byte_column = error.column();
    let column = line_text
        .char_indices()
        .take_while(|(index, _)| *index < byte_column)
        .count();
    let full = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    let message = full.strip_suffix(&suffix).unwrap_or(&full);
    Err(invalid(ConfigType::Json, line, column, message))
}

fn validate_toml(content: &str) -> Result<(), Invalid> {
    let Err(error) = content.parse::<toml::Table>() else {
        return Ok(());
    };
    let (line, column) = match error.span() {
        Some(span) => position_of_offset(content, span.start),
        None => (1, 1),
    };
    // toml puts a second line of detail under some messages ("invalid string\nexpected ..").
    let message: Vec<&str> = error
        .message()
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    Err(invalid(ConfigType::Toml, line, column, message.join("; ")))
}

fn validate_xml(content: &str) -> Result<(), Invalid> {
    check_xml_entity_expansion(content)?;
    let options = roxmltree::ParsingOptions {
        // Java config files (MyBatis, Spring, log4j) often carry a DOCTYPE. roxmltree never
        // fetches external entities and stops exponential entity nesting; the budget check
        // above stops the quadratic kind, and the node limit below caps the rest.
        allow_dtd: true,
        nodes_limit: XML_NODES_LIMIT,
        ..roxmltree::ParsingOptions::default()
    };
    let Err(error) = roxmltree::Document::parse_with_options(content, options) else {
        return Ok(());
    };
    let (line, column) = match error {
        // These are reported at 1:1 by roxmltree but are found at the end of the input.
        roxmltree::Error::NoRootNode
        | roxmltree::Error::UnclosedRootNode
        | roxmltree::Error::UnexpectedEndOfStream => end_position(content),
        ref other => {
            let pos = other.pos();
            (pos.row as usize, pos.col as usize)
        }
    };
    // roxmltree puts " at row:col" inside its messages; we report the position separately.
    let message = error
        .to_string()
        .replace(&format!(" at {}", error.pos()), "");
    Err(invalid(ConfigType::Xml, line, column, message))
}

/// Caps the nodes an XML document (after entity expansion) may have, to bound memory.
const XML_NODES_LIMIT: u32 = 1_000_000;

/// Caps the bytes that internal entity references may expand to in one XML document.
///
/// roxmltree limits entity nesting but not the total: a 50 KB entity referenced 10,000 times
/// (100 KB of input) makes it build 500 MB of text. Real configs expand far less than this.
const XML_ENTITY_EXPANSION_BUDGET: u64 = 1 << 20;

/// Rejects XML whose internal entities would expand past [`XML_ENTITY_EXPANSION_BUDGET`].
///
/// This is a conservative estimate from a plain scan, not a parse: every `&name;` anywhere in
/// the input counts with the fully expanded length of `name`, so the true expansion is never
/// larger than the estimate.
fn check_xml_entity_expansion(content: &str) -> Result<(), Invalid> {
    if !content.contains("<!ENTITY") {
        return Ok(());
    }
    let declared = xml_entity_declarations(content);
    let mut expanded_lengths = std::collections::HashMap::new();
    let mut total: u64 = 0;
    for (offset, name) in xml_entity_references(content) {
        let length = expanded_entity_length(name, &declared, &mut expanded_lengths, 0);
        total = total.saturating_add(length);
        if total > XML_ENTITY_EXPANSION_BUDGET {
            let (line, column) = position_of_offset(content, offset);
            return Err(invalid(
                ConfigType::Xml,
                line,
                column,
                format!(
                    "entity references expand to more than {XML_ENTITY_EXPANSION_BUDGET} bytes"
                ),
            ));
        }
    }
    Ok(())
}

/// Returns the internal general entities declared in `content` (name, replacement text).
///
/// External entities (`SYSTEM`/`PUBLIC`) and parameter entities (`%`) are skipped: roxmltree
/// expands neither.
fn xml_entity_declarations(content: &str) -> std::collections::HashMap<&str, &str> {
    const DECLARATION: &str = "<!ENTITY";
    let mut declared = std::collections::HashMap::new();
    // Each step resumes after what the previous one consumed, so the scan stays linear and a
    // "<!ENTITY" inside an entity's value is not taken for a declaration.
    let mut rest = content;
    while let Some(found) = rest.find(DECLARATION) {
        rest = rest[found + DECLARATION.len()..].trim_start();
        if rest.starts_with('%') {
            continue;
        }
        let name_end = rest
            .find(|c: char| c.is_whitespace() || c == '>')
            .unwrap_or(rest.len());
        let name = &rest[..name_end];
        rest = rest[name_end..].trim_start();
        let Some(quote) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') else {
            continue;
        };
        rest = &rest[1..];
        let value_end = rest.find(quote).unwrap_or(rest.len());
        let value = &rest[..value_end];
        rest = &rest[value_end..];
        // XML: the first declaration of an entity wins.
        declared.entry(name).or_insert(value);
    }
    declared
}

/// Returns each `&name;` general entity reference in `text` with its byte offset.
fn xml_entity_references(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.match_indices('&').filter_map(move |(offset, _)| {
        let rest = &text[offset + 1..];
        let end = rest.find(|c: char| c == ';' || c == '&' || c == '<' || c.is_whitespace())?;
        if !rest[end..].starts_with(';') || end == 0 || rest.starts_with('#') {
            return None;
        }
        Some((offset, &rest[..end]))
    })
}

/// Returns the length of entity `name` with every nested reference expanded (0 if unknown).
fn expanded_entity_length<'a>(
    name: &'a str,
    declared: &std::collections::HashMap<&'a str, &'a str>,
    memo: &mut std::collections::HashMap<&'a str, u64>,
    depth: usize,
) -> u64 {
    if let Some(length) = memo.get(name) {
        return *length;
    }
    let Some(value) = declared.get(name) else {
        return 0;
    };
    if depth > XML_ENTITY_DEPTH_LIMIT {
        // roxmltree rejects nesting this deep (or a cycle) by itself.
        return 0;
    }
    // Insert a placeholder first, so a reference cycle ends here.
    memo.insert(name, 0);
    let mut length = value.len() as u64;
    for (_, nested) in xml_entity_references(value) {
        let nested_length = expanded_entity_length(nested, declared, memo, depth + 1);
        length = length.saturating_add(nested_length);
    }
    memo.insert(name, length);
    length
}

/// Bounds the recursion of [`expanded_entity_length`]; roxmltree allows a depth of 10.
const XML_ENTITY_DEPTH_LIMIT: usize = 16;

fn validate_yaml(content: &str) -> Result<(), Invalid> {
    let yaml_error = |mark: &Marker, message: &str| {
        // yaml_rust2 markers have 1-based lines but 0-based columns.
        invalid(ConfigType::Yaml, mark.line(), mark.col() + 1, message)
    };
    // Walk the events rather than load documents: yaml_rust2's loader clones the anchored node
    // for every alias, so a few hundred bytes of nested aliases would expand exponentially.
    let mut parser = Parser::new_from_str(content);
    let mut keys = YamlKeyChecker::default();
    loop {
        let (event, mark) = parser
            .next_token()
            .map_err(|error| yaml_error(error.marker(), error.info()))?;
        if event == Event::StreamEnd {
            return Ok(());
        }
        if let Err(message) = keys.on_event(event) {
            return Err(yaml_error(&mark, &message));
        }
    }
}

/// Rejects duplicate keys in a YAML mapping, as YAML 1.2 requires and Spring's loader does.
///
/// Only scalar keys are compared; a key is identified by its resolved type and its text, so
/// `a` and `"a"` collide while `1` and `"1"` do not.
#[derive(Default)]
struct YamlKeyChecker {
    /// One entry per open collection, innermost last.
    open: Vec<YamlCollection>,
}

enum YamlCollection {
    Sequence,
    Mapping {
        /// The scalar keys seen so far in this mapping.
        keys: HashSet<(String, String)>,
        /// Whether the next node is a key (mappings alternate key, value).
        expecting_key: bool,
    },
}

impl YamlKeyChecker {
    fn on_event(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Scalar(text, style, _anchor, tag) => {
                let identity = scalar_identity(text, style, tag.as_ref());
                self.node(Some(identity))
            }
            Event::Alias(_) => self.node(None),
            Event::SequenceStart(..) => {
                self.node(None)?;
                self.open.push(YamlCollection::Sequence);
                Ok(())
            }
            Event::MappingStart(..) => {
                self.node(None)?;
                self.open.push(YamlCollection::Mapping {
                    keys: HashSet::new(),
                    expecting_key: true,
                });
                Ok(())
            }
            Event::SequenceEnd | Event::MappingEnd => {
                self.open.pop();
                Ok(())
            }
            Event::DocumentStart => {
                self.open.clear();
                Ok(())
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => Ok(()),
        }
    }

    /// Records one node; `identity` is set for a scalar and `None` for anything else.
    fn node(&mut self, identity: Option<(String, String)>) -> Result<(), String> {
        let Some(YamlCollection::Mapping {
            keys,
            expecting_key,
        }) = self.open.last_mut()
        else {
            return Ok(());
        };
        if !*expecting_key {
            *expecting_key = true;
            return Ok(());
        }
        *expecting_key = false;
        if let Some((kind, text)) = identity {
            // Several merge keys are a common idiom even though the spec frowns on them.
            let is_merge_key = kind == "str" && text == "<<";
            if !is_merge_key && keys.contains(&(kind.clone(), text.clone())) {
                return Err(format!("duplicate key {text:?} in mapping"));
            }
            keys.insert((kind, text));
        }
        Ok(())
    }
}

/// Returns (resolved type, text) for a scalar, used to compare mapping keys.
fn scalar_identity(
    text: String,
    style: TScalarStyle,
    tag: Option<&yaml_rust2::parser::Tag>,
) -> (String, String) {
    let kind = match tag {
        Some(tag) => format!("{}{}", tag.handle, tag.suffix),
        None if style != TScalarStyle::Plain => "str".to_owned(),
        None => match yaml_rust2::Yaml::from_str(&text) {
            yaml_rust2::Yaml::String(_) => "str".to_owned(),
            _ => "plain".to_owned(),
        },
    };
    let kind = if kind == "tag:yaml.org,2002:str" || kind == "!!str" {
        "str".to_owned()
    } else {
        kind
    };
    (kind, text)
}

/// One physical line of a `.properties` file.
struct NaturalLine<'a> {
    /// 1-based line number.
    number: usize,
    /// The text without its terminator.
    text: &'a str,
    /// Whether a line terminator (`\n`, `\r\n` or `\r`) follows the text.
    terminated: bool,
}

/// Splits `content` into lines at `\n`, `\r\n` and `\r`, as `java.util.Properties` does.
fn natural_lines(content: &str) -> Vec<NaturalLine<'_>> {
    let mut lines = Vec::new();
    let bytes = content.as_bytes();
    let mut start = 0;
    let mut index = 0;
    while index < bytes.len() {
        let terminator_len = match bytes[index] {
            b'\n' => 1,
            b'\r' if bytes.get(index + 1) == Some(&b'\n') => 2,
            b'\r' => 1,
            _ => 0,
        };
        if terminator_len == 0 {
            index += 1;
            continue;
        }
        lines.push(NaturalLine {
            number: lines.len() + 1,
            text: &content[start..index],
            terminated: true,
        });
        index += terminator_len;
        start = index;
    }
    if start < content.len() {
        lines.push(NaturalLine {
            number: lines.len() + 1,
            text: &content[start..],
            terminated: false,
        });
    }
    lines
}

/// Returns how many leading characters of `text` are properties whitespace, and the rest.
fn skip_properties_whitespace(text: &str) -> (usize, &str) {
    let rest = text.trim_start_matches([' ', '\t', '\u{c}']);
    let skipped = text[..text.len() - rest.len()].chars().count();
    (skipped, rest)
}

/// A character of a logical line with its 1-based line and column in the file.
#[derive(Clone, Copy)]
struct PlacedChar {
    character: char,
    line: usize,
    column: usize,
}

/// Checks Java `.properties` syntax: `key=value`, `key:value` or `key value`, `#` and `!`
/// comments, lines continued by an odd number of trailing backslashes, and `\uXXXX` escapes.
///
/// Like `java.util.Properties::load`, everything else is accepted (any other `\x` means `x`).
/// Two things Java handles loosely are reported: a malformed `\u` escape (Java throws), and a
/// continuation backslash with no line after it (Java silently drops it, which usually means
/// the file was truncated).
fn validate_properties(content: &str) -> Result<(), Invalid> {
    let lines = natural_lines(content);
    let mut next = 0;
    while next < lines.len() {
        let first = &lines[next];
        next += 1;
        let (skipped, rest) = skip_properties_whitespace(first.text);
        if rest.is_empty() || rest.starts_with(['#', '!']) {
            continue;
        }
        let mut logical = Vec::new();
        let mut segment = (first.number, skipped + 1, rest);
        loop {
            let (line, first_column, text) = segment;
            for (offset, character) in text.chars().enumerate() {
                logical.push(PlacedChar {
                    character,
                    line,
                    column: first_column + offset,
                });
            }
            let trailing_backslashes = text.chars().rev().take_while(|&c| c == '\\').count();
            if trailing_backslashes % 2 == 0 {
                break;
            }
            let Some(backslash) = logical.pop() else {
                break;
            };
            let dangling = || {
                invalid(
                    ConfigType::Properties,
                    backslash.line,
                    backslash.column,
                    "line continuation at end of input",
                )
            };
            let Some(continued) = lines.get(next) else {
                return Err(dangling());
            };
            next += 1;
            let (skipped, rest) = skip_properties_whitespace(continued.text);
            if rest.is_empty() {
                if continued.terminated {
                    // Java ends the logical line at a blank continuation line.
                    break;
                }
                return Err(dangling());
            }
            segment = (continued.number, skipped + 1, rest);
        }
        check_properties_escapes(&logical)?;
    }
    Ok(())
}

/// Checks the `\uXXXX` escapes of one logical line (continuations already joined).
fn check_properties_escapes(logical: &[PlacedChar]) -> Result<(), Invalid> {
    let mut index = 0;
    while index < logical.len() {
        if logical[index].character != '\\' {
            index += 1;
            continue;
        }
        let escaped = logical.get(index + 1).map(|placed| placed.character);
        if escaped == Some('u') {
            let digits = logical.get(index + 2..index + 6);
            let well_formed = digits.is_some_and(|digits| {
                digits
                    .iter()
                    .all(|placed| placed.character.is_ascii_hexdigit())
            });
            if !well_formed {
                let backslash = logical[index];
                return Err(invalid(
                    ConfigType::Properties,
                    backslash.line,
                    backslash.column,
                    "malformed \\uXXXX escape: expected 4 hex digits after \\u",
                ));
            }
            index += 6;
        } else {
            index += 2;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn error_at(kind: ConfigType, content: &str) -> (usize, usize, String) {
        let error = validate(kind, content).unwrap_err();
        assert_eq!(error.kind, kind);
        (error.line, error.column, error.message)
    }

    #[test]
    fn config_type_parses_case_insensitively() {
        assert_eq!("JSON".parse::<ConfigType>(), Ok(ConfigType::Json));
        assert_eq!("yml".parse::<ConfigType>(), Ok(ConfigType::Yaml));
        assert_eq!("YaMl".parse::<ConfigType>(), Ok(ConfigType::Yaml));
        assert_eq!(
            "Properties".parse::<ConfigType>(),
            Ok(ConfigType::Properties)
        );
        assert_eq!("text".parse::<ConfigType>(), Ok(ConfigType::Text));
        let error = "html".parse::<ConfigType>().unwrap_err();
        assert_eq!(
            error,
            "unknown config type \"html\": expected one of text, json, yaml, toml, properties, xml"
        );
        assert!("".parse::<ConfigType>().is_err());
        for kind in ConfigType::ALL {
            assert_eq!(kind.to_string().parse::<ConfigType>(), Ok(kind));
        }
    }

    #[test]
    fn config_type_serde_uses_lowercase_names() {
        assert_eq!(
            serde_json::to_string(&ConfigType::Properties).unwrap(),
            "\"properties\""
        );
        let yaml: ConfigType = serde_json::from_str("\"yml\"").unwrap();
        assert_eq!(yaml, ConfigType::Yaml);
        assert_eq!(ConfigType::default(), ConfigType::Text);
    }

    #[test]
    fn invalid_display_names_kind_and_position() {
        let error = validate(ConfigType::Json, "{\n  \"a\": 1,\n  \"b\" 2\n}").unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid json at line 3, column 7: expected `:`"
        );
    }

    #[test]
    fn text_always_passes() {
        for content in ["", "{", "<a>", "\\u12", "\u{0}\u{ffff}"] {
            assert_eq!(validate(ConfigType::Text, content), Ok(()));
        }
    }

    #[test]
    fn json_samples() {
        assert_eq!(
            validate(ConfigType::Json, "{\"a\": [1, 2.5, null, \"é\"]}"),
            Ok(())
        );
        assert_eq!(validate(ConfigType::Json, "\u{feff}[]"), Ok(()));
        assert_eq!(validate(ConfigType::Json, "  \"only a string\"\n"), Ok(()));
        assert_eq!(
            error_at(ConfigType::Json, "{\n  \"a\": 1\n  \"b\": 2\n}"),
            (3, 3, "expected `,` or `}`".to_owned())
        );
        assert_eq!(
            error_at(ConfigType::Json, ""),
            (1, 1, "EOF while parsing a value".to_owned())
        );
        assert_eq!(
            error_at(ConfigType::Json, "{\"a\": 1,}"),
            (1, 9, "key must be a string".to_owned())
        );
        assert_eq!(
            error_at(ConfigType::Json, "{\"a\": 1"),
            (1, 7, "EOF while parsing an object".to_owned())
        );
        assert_eq!(
            error_at(ConfigType::Json, "{} {}"),
            (1, 4, "trailing characters".to_owned())
        );
        // Columns count characters: "é" is two bytes.
        assert_eq!(
            error_at(ConfigType::Json, "[\"é\", x]"),
            (1, 7, "expected value".to_owned())
        );
    }

    #[test]
    fn yaml_samples() {
        assert_eq!(
            validate(ConfigType::Yaml, "a: 1\nb:\n  - x\n  - y\n"),
            Ok(())
        );
        assert_eq!(validate(ConfigType::Yaml, ""), Ok(()));
        assert_eq!(
            validate(ConfigType::Yaml, "a: 1\n---\nb: 2\n...\n---\n- 3\n"),
            Ok(())
        );
        // The same key in two documents is fine, and so are anchors and merge keys.
        assert_eq!(
            validate(
                ConfigType::Yaml,
                "base: &b {x: 1}\nd:\n  <<: *b\n  y: 2\n---\nbase: 3\n"
            ),
            Ok(())
        );
        // `1` (an integer) and `"1"` (a string) are different keys.
        assert_eq!(validate(ConfigType::Yaml, "1: a\n\"1\": b\n"), Ok(()));
        assert_eq!(
            error_at(ConfigType::Yaml, "a: 1\nb: [1, 2\nc: 3\n"),
            (3, 2, "illegal placement of ':' indicator".to_owned())
        );
        assert_eq!(
            error_at(ConfigType::Yaml, "key: value: other\n"),
            (
                1,
                11,
                "mapping values are not allowed in this context".to_owned()
            )
        );
        assert_eq!(
            error_at(ConfigType::Yaml, "a: 1\n\tb: 2\n"),
            (
                1,
                4,
                "while scanning a plain scalar, found a tab".to_owned()
            )
        );
        // Columns count characters: "é" is two bytes.
        assert_eq!(
            error_at(ConfigType::Yaml, "é: [x, y\n"),
            (
                2,
                1,
                "while parsing a flow sequence, expected ',' or ']'".to_owned()
            )
        );
        assert_eq!(
            error_at(ConfigType::Yaml, "é: x: y\n"),
            (
                1,
                5,
                "mapping values are not allowed in this context".to_owned()
            )
        );
        assert_eq!(
            error_at(ConfigType::Yaml, "a: 1\n---\nx:\n  y: 1\n  \"y\": 2\n"),
            (5, 3, "duplicate key \"y\" in mapping".to_owned())
        );
        assert_eq!(
            error_at(ConfigType::Yaml, "a: *nope\n"),
            (1, 4, "while parsing node, found unknown anchor".to_owned())
        );
    }

    #[test]
    fn yaml_aliases_are_not_expanded() {
        // A billion-laughs document: expanding it would take gigabytes.
        let mut content = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..30 {
            let prev = level - 1;
            content.push_str(&format!(
                "a{level}: &a{level} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, \
                 *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        assert_eq!(validate(ConfigType::Yaml, &content), Ok(()));
    }

    #[test]
    fn toml_samples() {
        assert_eq!(
            validate(
                ConfigType::Toml,
                "title = \"x\"\n[server]\nport = 8080\n[[db]]\nurl = 'a'\n"
            ),
            Ok(())
        );
        assert_eq!(validate(ConfigType::Toml, ""), Ok(()));
        assert_eq!(
            error_at(ConfigType::Toml, "a = 1\nb = \n"),
            (2, 5, "invalid string; expected `\"`, `'`".to_owned())
        );
        assert_eq!(
            error_at(ConfigType::Toml, "a = 1\n[t]\nx = 1\nx = 2\n"),
            (4, 1, "duplicate key `x` in table `t`".to_owned())
        );
        // Columns count characters: "é" is two bytes.
        assert_eq!(
            error_at(ConfigType::Toml, "s = \"é\" x"),
            (1, 9, "expected newline, `#`".to_owned())
        );
        assert_eq!(
            error_at(ConfigType::Toml, "[a]\n[a]\n"),
            (
                2,
                1,
                "invalid table header; duplicate key `a` in document root".to_owned()
            )
        );
    }

    #[test]
    fn properties_samples() {
        let good = "# comment\n! also a comment \\\n\
                    a=1\n\
                    b : 2\n\
                    c 3\n\
                    \t  d\n\
                    long = one, \\\n      two, \\\n      three\n\
                    unicode = \\u00e9\\u00E9\n\
                    other\\ escapes = \\t\\n\\=\\:\\#\\q\n\
                    crlf=1\r\nmac=2\rlast=\\\\";
        assert_eq!(validate(ConfigType::Properties, good), Ok(()));
        assert_eq!(validate(ConfigType::Properties, ""), Ok(()));
        // A blank continuation line ends the logical line, as in Java.
        assert_eq!(validate(ConfigType::Properties, "a=1\\\n\nb=2\n"), Ok(()));
        // An escape may be split by a continuation, as in Java.
        assert_eq!(
            validate(ConfigType::Properties, "a=\\u00\\\n   41\n"),
            Ok(())
        );
        assert_eq!(
            error_at(ConfigType::Properties, "a=1\nbad = x\\u12G4\n"),
            (
                2,
                8,
                "malformed \\uXXXX escape: expected 4 hex digits after \\u".to_owned()
            )
        );
        // The escape in a key is checked too; leading whitespace counts in the column.
        let (line, column, _) = error_at(ConfigType::Properties, "a=1\n  key\\u1=x\n");
        assert_eq!((line, column), (2, 6));
        assert_eq!(
            error_at(ConfigType::Properties, "é=\\u"),
            (
                1,
                3,
                "malformed \\uXXXX escape: expected 4 hex digits after \\u".to_owned()
            )
        );
        assert_eq!(
            error_at(ConfigType::Properties, "a=1\nb=2\\\n"),
            (2, 4, "line continuation at end of input".to_owned())
        );
        assert_eq!(
            error_at(ConfigType::Properties, "a=1 \\\n  b \\\n   "),
            (2, 5, "line continuation at end of input".to_owned())
        );
        assert_eq!(
            error_at(ConfigType::Properties, "x=\\"),
            (1, 3, "line continuation at end of input".to_owned())
        );
        // An escaped backslash at the end is not a continuation; a comment never continues.
        assert_eq!(validate(ConfigType::Properties, "x=\\\\\n"), Ok(()));
        assert_eq!(validate(ConfigType::Properties, "# note \\"), Ok(()));
        // A continuation line starting with '#' is part of the value, so its escape counts.
        assert_eq!(
            error_at(ConfigType::Properties, "a=\\\n#\\uZZZZ\n"),
            (
                2,
                2,
                "malformed \\uXXXX escape: expected 4 hex digits after \\u".to_owned()
            )
        );
    }

    #[test]
    fn xml_samples() {
        assert_eq!(
            validate(
                ConfigType::Xml,
                "<?xml version=\"1.0\"?>\n<config a=\"1\"><b>text &amp; more</b><c/></config>\n"
            ),
            Ok(())
        );
        let with_doctype = "<?xml version=\"1.0\"?>\n\
            <!DOCTYPE mapper PUBLIC \"-//mybatis.org//DTD Mapper 3.0//EN\" \
            \"http://mybatis.org/dtd/mybatis-3-mapper.dtd\">\n\
            <mapper namespace=\"x\"><select id=\"q\">select 1</select></mapper>\n";
        assert_eq!(validate(ConfigType::Xml, with_doctype), Ok(()));
        assert_eq!(
            error_at(ConfigType::Xml, "<a>\n  <b></c>\n</a>"),
            (2, 6, "expected 'b' tag, not 'c'".to_owned())
        );
        assert_eq!(
            error_at(ConfigType::Xml, "<a>\n  <b>\n"),
            (3, 1, "the root node was opened but never closed".to_owned())
        );
        assert_eq!(
            error_at(ConfigType::Xml, ""),
            (1, 1, "the document does not have a root node".to_owned())
        );
        assert_eq!(
            error_at(ConfigType::Xml, "<a x=\"1\" x=\"2\"/>"),
            (1, 10, "attribute 'x' is already defined".to_owned())
        );
        assert_eq!(
            error_at(ConfigType::Xml, "<a>&nope;</a>"),
            (1, 4, "unknown entity reference 'nope'".to_owned())
        );
    }

    #[test]
    fn xml_billion_laughs_is_refused() {
        let mut content = String::from("<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [\n");
        content.push_str("<!ENTITY lol0 \"lol\">\n");
        for level in 1..10 {
            let prev = level - 1;
            content.push_str(&format!("<!ENTITY lol{level} \""));
            for _ in 0..10 {
                content.push_str(&format!("&lol{prev};"));
            }
            content.push_str("\">\n");
        }
        content.push_str("]>\n<lolz>&lol9;</lolz>\n");
        assert!(validate(ConfigType::Xml, &content).is_err());
    }

    #[test]
    fn xml_quadratic_entity_expansion_is_refused() {
        // 100 KB of input that roxmltree alone would expand to 500 MB of text.
        let body = "x".repeat(50_000);
        let refs = "&big;".repeat(10_000);
        let content = format!("<!DOCTYPE r [<!ENTITY big \"{body}\">]>\n<r>{refs}</r>");
        assert_eq!(
            error_at(ConfigType::Xml, &content),
            (
                2,
                104,
                "entity references expand to more than 1048576 bytes".to_owned()
            )
        );
        // Small entities are fine, nested or not.
        let small = "<!DOCTYPE r [<!ENTITY a \"x\"><!ENTITY b '&a;&a;'>]><r x=\"&b;\">&b;&a;</r>";
        assert_eq!(validate(ConfigType::Xml, small), Ok(()));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let depth = 100_000;
        let cases = [
            (ConfigType::Json, "[".repeat(depth)),
            (ConfigType::Yaml, "[".repeat(depth)),
            (ConfigType::Yaml, "- ".repeat(depth) + "x"),
            (ConfigType::Toml, format!("a = {}", "[".repeat(depth))),
            (
                ConfigType::Toml,
                format!("{} = 1", vec!["k"; depth].join(".")),
            ),
            (ConfigType::Xml, "<a>".repeat(depth)),
        ];
        for (kind, content) in cases {
            let _ = validate(kind, &content);
        }
    }

    /// A small xorshift generator, so the fuzz loop needs no extra crate and is reproducible.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, bound: usize) -> usize {
            (self.next() % bound as u64) as usize
        }
    }

    #[test]
    fn random_and_mutated_inputs_never_panic() {
        let seeds = [
            "{\"a\": [1, {\"b\": null}], \"c\": \"\\u00e9\"}",
            "a: 1\nb:\n  - x\n  - {y: [1, 2]}\n---\n&a c: *a\n? [k]\n: |\n  text\n",
            "[t]\nx = 1\ny = [1, 2]\nz = { a = \"s\" }\n[[arr]]\nd = 1979-05-27T07:32:00Z\n",
            "a=1\\\n  2\nb:\\u00e9\n# c\n! d\ne f\\\\\n",
            "<?xml version=\"1.0\"?><!DOCTYPE r [<!ENTITY e \"v\">]><r a='1'>&e;<![CDATA[x]]></r>",
        ];
        let alphabet: Vec<char> = "{}[]():,=\"'\\-?&*!#|>%@`<>/ \t\n\rau0é\u{feff}-."
            .chars()
            .collect();
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for round in 0..3000 {
            let mut chars: Vec<char> = seeds[round % seeds.len()].chars().collect();
            if round % 7 == 0 {
                chars.clear();
                for _ in 0..rng.below(64) {
                    chars.push(alphabet[rng.below(alphabet.len())]);
                }
            }
            for _ in 0..1 + rng.below(4) {
                let position = rng.below(chars.len() + 1);
                match rng.below(3) {
                    0 => chars.insert(position, alphabet[rng.below(alphabet.len())]),
                    1 if position < chars.len() => {
                        chars.remove(position);
                    }
                    _ if position < chars.len() => {
                        chars[position] = alphabet[rng.below(alphabet.len())];
                    }
                    _ => {}
                }
            }
            let content: String = chars.into_iter().collect();
            for kind in ConfigType::ALL {
                if let Err(error) = validate(kind, &content) {
                    assert!(
                        error.line >= 1 && error.column >= 1,
                        "{error} for {content:?}"
                    );
                    let line_count = content.split(['\n', '\r']).count().max(1);
                    assert!(error.line <= line_count + 1, "{error} for {content:?}");
                }
            }
        }
    }
}
