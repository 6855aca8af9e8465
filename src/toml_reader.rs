//! A TOML reader that collects *every* mistake instead of stopping at the first.
//!
//! Owns: walking a parsed `toml_edit` document with spans, typed getters (strings,
//! integers, humane durations and sizes, lists), and "unknown key" errors with a
//! hint of the keys that are allowed. Never: knows what the relay's config or rule
//! files mean; `config` and `rules` describe their schema with it.

use std::cell::RefCell;
use std::collections::HashSet;
use std::ops::Range;
use std::time::Duration;

use toml_edit::{Item, TableLike, Value};

use crate::diag::{Diagnostic, Source};

/// The parse of one file plus the errors found while reading it.
pub struct Doc<'s> {
    pub source: &'s Source,
    root: Option<toml_edit::Document<&'s str>>,
    errors: RefCell<Vec<Diagnostic>>,
    /// Mistakes that cause others (unknown keys, syntax): reported first.
    causes: RefCell<Vec<Diagnostic>>,
    /// What is allowed but probably not meant (`check` prints them; they load).
    warnings: RefCell<Vec<Diagnostic>>,
    /// Errors left out because an unset variable caused them (see `Source::depends_on_unset`).
    consequential: std::cell::Cell<usize>,
}

impl<'s> Doc<'s> {
    /// Parses `source`; a syntax error is recorded (and the root is then empty).
    pub fn parse(source: &'s Source) -> Doc<'s> {
        let (root, errors) = match toml_edit::Document::parse(source.text.as_str()) {
            Ok(d) => (Some(d), Vec::new()),
            Err(e) => {
                let msg = e.message().trim().to_string();
                let d = match duplicate_key(source, e.span(), &msg) {
                    Some(m) => source.diag(e.span(), m),
                    None => {
                        let (span, msg) = syntax_error(source, e.span(), &msg);
                        let mut d = source.diag(span, msg);
                        // The line itself, its long strings left out.
                        if let Some(line) = source.original.lines().nth(d.line.saturating_sub(1)) {
                            let shown = masked_line(line.trim());
                            d.message
                                .push_str(&format!("; line {} reads: {shown}", d.line));
                        }
                        d
                    }
                };
                (None, vec![d])
            }
        };
        Doc {
            source,
            root,
            errors: RefCell::new(Vec::new()),
            causes: RefCell::new(errors),
            warnings: RefCell::new(Vec::new()),
            consequential: std::cell::Cell::new(0),
        }
    }

    #[cfg(test)]
    pub fn has_syntax_error(&self) -> bool {
        self.root.is_none()
    }

    /// The top-level table, or `None` after a syntax error.
    pub fn root(&self) -> Option<Section<'_>> {
        let root = self.root.as_ref()?;
        let table = root.as_item().as_table_like()?;
        Some(Section {
            doc: self,
            table,
            name: String::new(),
            span: None,
            used: RefCell::new(HashSet::new()),
        })
    }

    pub fn error(&self, span: Option<Range<usize>>, message: impl Into<String>) {
        if span
            .as_ref()
            .is_some_and(|s| self.source.depends_on_unset(s))
        {
            // The unset variable is already reported at this place: one cause, one
            // message. Still counted, so the value is treated as invalid.
            self.consequential.set(self.consequential.get() + 1);
            return;
        }
        self.errors
            .borrow_mut()
            .push(self.source.diag(span, message));
    }

    /// A mistake that causes others (an unknown key): listed before them.
    pub fn cause(&self, span: Option<Range<usize>>, message: impl Into<String>) {
        self.causes
            .borrow_mut()
            .push(self.source.diag(span, message));
    }

    /// A diagnostic made elsewhere (environment substitution) that causes others.
    pub fn add_cause(&self, d: Diagnostic) {
        self.causes.borrow_mut().push(d);
    }

    /// Something that loads but is probably not meant; never makes the file invalid.
    pub fn warn(&self, span: Option<Range<usize>>, message: impl Into<String>) {
        self.warnings
            .borrow_mut()
            .push(self.source.diag(span, message));
    }

    /// An error that another one already explains: not reported, but counted, so
    /// the value is still treated as invalid.
    pub fn consequence(&self) {
        self.consequential.set(self.consequential.get() + 1);
    }

    /// Every error: causes first, then the rest, each group top to bottom.
    pub fn into_errors(self) -> Vec<Diagnostic> {
        self.into_report().0
    }

    /// (errors as `into_errors` orders them, warnings top to bottom).
    pub fn into_report(self) -> (Vec<Diagnostic>, Vec<Diagnostic>) {
        let mut causes = self.causes.into_inner();
        let mut rest = self.errors.into_inner();
        let mut warnings = self.warnings.into_inner();
        for list in [&mut causes, &mut rest, &mut warnings] {
            list.sort_by_key(|d| (d.line, d.col));
        }
        causes.append(&mut rest);
        (causes, warnings)
    }

    pub fn error_count(&self) -> usize {
        self.errors.borrow().len() + self.causes.borrow().len() + self.consequential.get()
    }
}

/// One value with where it stands.
#[derive(Clone)]
pub struct Field<'a> {
    pub doc: &'a Doc<'a>,
    pub item: &'a Item,
    pub span: Option<Range<usize>>,
    pub key_span: Option<Range<usize>>,
    /// `section.key`, for messages.
    name: String,
}

impl<'a> Field<'a> {
    pub fn error(&self, message: impl Into<String>) {
        self.doc.error(self.span.clone(), message);
    }

    fn wrong_type(&self, expected: &str, example: &str) {
        self.error(format!(
            "`{}` must be {expected}, not {}; for example: {} = {example}",
            self.name,
            describe(self.item),
            self.name.rsplit('.').next().unwrap_or(&self.name)
        ));
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn as_str(&self, example: &str) -> Option<&'a str> {
        match self.item.as_str() {
            Some(s) => Some(s),
            None => {
                self.wrong_type("a string in quotes", example);
                None
            }
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self.item.as_bool() {
            Some(b) => Some(b),
            None => {
                self.wrong_type("true or false", "true");
                None
            }
        }
    }

    pub fn as_int(&self, min: i64, max: i64, example: &str) -> Option<i64> {
        match self.item.as_integer() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(n) => {
                self.error(format!(
                    "`{}` is {n}, but must be between {min} and {max}",
                    self.name
                ));
                None
            }
            None => {
                self.wrong_type("a whole number", example);
                None
            }
        }
    }

    pub fn as_duration(&self, example: &str) -> Option<Duration> {
        let s = self.as_str(example)?;
        match parse_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(format!("`{}`: {e}", self.name));
                None
            }
        }
    }

    pub fn as_size(&self, example: &str) -> Option<u64> {
        if let Some(n) = self.item.as_integer() {
            if n >= 0 {
                return Some(n as u64);
            }
        }
        let s = self.as_str(example)?;
        match parse_size(s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(format!("`{}`: {e}", self.name));
                None
            }
        }
    }

    /// A list of strings; a single string is accepted as a list of one.
    pub fn as_str_list(&self, example: &str) -> Option<Vec<(String, Option<Range<usize>>)>> {
        if let Some(s) = self.item.as_str() {
            return Some(vec![(s.to_string(), self.span.clone())]);
        }
        let Some(arr) = self.item.as_array() else {
            self.wrong_type("a list of strings", example);
            return None;
        };
        let mut out = Vec::with_capacity(arr.len());
        let mut ok = true;
        for v in arr.iter() {
            match v.as_str() {
                Some(s) => out.push((s.to_string(), v.span())),
                None => {
                    self.doc.error(
                        v.span(),
                        format!(
                            "`{}` must list strings in quotes, not {}; for example: {example}",
                            self.name,
                            describe_value(v)
                        ),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    /// This field as a table (`[name]` or `{ ... }`).
    pub fn as_section(&self, example: &str) -> Option<Section<'a>> {
        match self.item.as_table_like() {
            Some(table) => Some(Section {
                doc: self.doc,
                table,
                name: self.name.to_string(),
                span: self.span.clone(),
                used: RefCell::new(HashSet::new()),
            }),
            None => {
                self.wrong_type("a table", example);
                None
            }
        }
    }
}

/// A table being read: every key that is not asked for is an error at `finish`.
pub struct Section<'a> {
    pub doc: &'a Doc<'a>,
    table: &'a dyn TableLike,
    name: String,
    span: Option<Range<usize>>,
    used: RefCell<HashSet<String>>,
}

impl<'a> Section<'a> {
    pub fn span(&self) -> Option<Range<usize>> {
        self.span.clone()
    }

    fn qualified(&self, key: &str) -> String {
        if self.name.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.name)
        }
    }

    /// The field named `key`, marked as known.
    pub fn get(&self, key: &str) -> Option<Field<'a>> {
        self.used.borrow_mut().insert(key.to_string());
        let (k, item) = self.table.get_key_value(key)?;
        let name = self.qualified(key);
        Some(Field {
            doc: self.doc,
            item,
            span: item
                .span()
                .or_else(|| k.span())
                .or_else(|| self.span.clone()),
            key_span: k.span(),
            name,
        })
    }

    /// Every key of this table with its field, in file order (marks all as known).
    pub fn entries(&self) -> Vec<(String, Field<'a>)> {
        let keys: Vec<String> = self.table.iter().map(|(k, _)| k.to_string()).collect();
        keys.into_iter()
            .filter_map(|k| self.get(&k).map(|f| (k, f)))
            .collect()
    }

    pub fn error(&self, message: impl Into<String>) {
        self.doc.error(self.span.clone(), message);
    }

    /// A required field: missing is an error naming the key and an example.
    pub fn require(&self, key: &str, example: &str) -> Option<Field<'a>> {
        let f = self.get(key);
        if f.is_none() {
            let at = if self.name.is_empty() {
                String::from("at the top of the file")
            } else {
                format!("in [{}]", self.name)
            };
            self.error(format!(
                "missing `{key}` {at}; add a line like: {key} = {example}"
            ));
        }
        f
    }

    pub fn str(&self, key: &str, example: &str) -> Option<String> {
        self.get(key)
            .and_then(|f| f.as_str(example).map(str::to_string))
    }

    pub fn bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(|f| f.as_bool())
    }

    pub fn int(&self, key: &str, min: i64, max: i64, example: &str) -> Option<i64> {
        self.get(key).and_then(|f| f.as_int(min, max, example))
    }

    pub fn duration(&self, key: &str, example: &str) -> Option<Duration> {
        self.get(key).and_then(|f| f.as_duration(example))
    }

    pub fn size(&self, key: &str, example: &str) -> Option<u64> {
        self.get(key).and_then(|f| f.as_size(example))
    }

    #[cfg(test)]
    pub fn str_list(&self, key: &str, example: &str) -> Option<Vec<String>> {
        self.get(key)
            .and_then(|f| f.as_str_list(example))
            .map(|v| v.into_iter().map(|(s, _)| s).collect())
    }

    pub fn section(&self, key: &str, example: &str) -> Option<Section<'a>> {
        self.get(key).and_then(|f| f.as_section(example))
    }

    /// The keys written in this table, in file order (without marking them known).
    pub fn keys(&self) -> Vec<String> {
        self.table.iter().map(|(k, _)| k.to_string()).collect()
    }

    /// Reports every key that no getter asked for, with the allowed ones as a hint.
    pub fn finish(self) {
        let used = self.used.borrow();
        let mut allowed: Vec<&str> = used.iter().map(String::as_str).collect();
        allowed.sort_unstable();
        for (k, item) in self.table.iter() {
            if used.contains(k) {
                continue;
            }
            let span = self
                .table
                .get_key_value(k)
                .and_then(|(key, _)| key.span())
                .or_else(|| item.span())
                .or_else(|| self.span.clone());
            let place = if self.name.is_empty() {
                "at the top level".to_string()
            } else {
                format!("in [{}]", self.name)
            };
            let suggestion = closest(k, &allowed)
                .map(|c| format!("did you mean `{c}`? "))
                .unwrap_or_default();
            self.doc.cause(
                span,
                format!(
                    "unknown key `{k}` {place}; {suggestion}allowed keys: {}",
                    allowed.join(", ")
                ),
            );
        }
    }
}

/// "duplicate key" made precise: which key, in which table, and where it first stands.
/// Reads keys written one per line (`key = ...`) and table headers (`[name]`); other
/// layouts get the key without its first place.
/// A syntax error where its cause is: a `[` or `{` left open on an earlier line is
/// found only where the next key or table starts, so the error is moved to the
/// bracket that is never closed.
fn syntax_error(
    source: &Source,
    span: Option<Range<usize>>,
    msg: &str,
) -> (Option<Range<usize>>, String) {
    let text = source.text.as_str();
    let at = span.as_ref().map_or(0, |s| s.start).min(text.len());
    let line_of = |pos: usize| {
        text.as_bytes()[..pos]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    };
    match unclosed_before(text, at) {
        Some((open, pos)) if line_of(pos) < line_of(at) => (
            Some(pos..pos + 1),
            format!(
                "TOML syntax error: this `{open}` is never closed (the parser noticed at line {}: {msg})",
                line_of(at)
            ),
        ),
        _ => (span, format!("TOML syntax error: {msg}")),
    }
}

/// The innermost `[` or `{` still open at `end` (outside strings and comments), with
/// its offset.
fn unclosed_before(text: &str, end: usize) -> Option<(char, usize)> {
    let mut open: Vec<(char, usize)> = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < end.min(bytes.len()) {
        match bytes[i] {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            q @ (b'"' | b'\'') => {
                let close: &[u8] = match (q, bytes[i..].starts_with(&[q, q, q])) {
                    (b'"', true) => b"\"\"\"",
                    (_, true) => b"'''",
                    (b'"', false) => b"\"",
                    _ => b"'",
                };
                let triple = close.len() == 3;
                i += close.len();
                while i < bytes.len() {
                    if q == b'"' && bytes[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if bytes[i..].starts_with(close) {
                        i += close.len();
                        break;
                    }
                    if !triple && bytes[i] == b'\n' {
                        break;
                    }
                    i += 1;
                }
                continue;
            }
            b'[' => open.push(('[', i)),
            b'{' => open.push(('{', i)),
            b']' | b'}' => {
                open.pop();
            }
            _ => {}
        }
        i += 1;
    }
    open.pop()
}

/// A line of a rule or config file as a diagnostic may show it: the text of every
/// string longer than 12 characters is left out (it may be a secret or a URL with one).
fn masked_line(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.trim_end().chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '"' || c == '\'' {
            let mut inner = String::new();
            let mut closed = false;
            while let Some(n) = chars.next() {
                if n == '\\' && c == '"' {
                    inner.push(n);
                    if let Some(e) = chars.next() {
                        inner.push(e);
                    }
                    continue;
                }
                if n == c {
                    closed = true;
                    break;
                }
                inner.push(n);
            }
            if inner.chars().count() > 12 {
                out.push('…');
            } else {
                out.push_str(&inner);
            }
            if closed {
                out.push(c);
            }
        }
    }
    out
}

fn duplicate_key(source: &Source, span: Option<Range<usize>>, msg: &str) -> Option<String> {
    if !msg.starts_with("duplicate key") {
        return None;
    }
    let span = span?;
    let text = source.text.as_str();
    let key = bare(text.get(span.clone())?);
    // (offset, table the entry is in, name) of every header and key line before it.
    let mut entries = Vec::new();
    let mut table = String::new();
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        let indent = line.len() - line.trim_start().len();
        let header = t
            .strip_prefix('[')
            .filter(|h| !h.starts_with('['))
            .and_then(|h| h.split(']').next());
        if let Some(h) = header {
            table = bare(h);
            entries.push((pos + indent, String::new(), table.clone()));
        } else if t.contains('=') && !t.starts_with('#') {
            entries.push((pos + indent, table.clone(), bare(t.split('=').next()?)));
        }
        pos += line.len();
    }
    let (_, dup_table, _) = entries
        .iter()
        .rev()
        .find(|(at, _, _)| *at <= span.start)?
        .clone();
    let first = entries
        .iter()
        .find(|(at, t, k)| *at < span.start && *t == dup_table && *k == key);
    let place = if dup_table.is_empty() {
        String::from("at the top level")
    } else {
        format!("in [{dup_table}]")
    };
    Some(match first {
        Some((at, _, _)) => {
            let d = source.diag(Some(*at..*at + 1), "");
            let (line, col) = (d.line, d.col);
            format!("duplicate key `{key}` {place}: it is already written at line {line}, column {col}; keep one of the two")
        }
        None => format!(
            "duplicate key `{key}` {place}: each key may be written once per table; keep one"
        ),
    })
}

/// A key or table name as written, without quotes and blanks around its parts.
fn bare(k: &str) -> String {
    k.split('.')
        .map(|p| p.trim().trim_matches('"').trim_matches('\''))
        .collect::<Vec<_>>()
        .join(".")
}

fn describe(item: &Item) -> String {
    match item {
        Item::Value(v) => describe_value(v),
        Item::Table(_) => "a table".into(),
        Item::ArrayOfTables(_) => "a list of tables".into(),
        Item::None => "nothing".into(),
    }
}

/// What a wrong value is, by its type only: the value itself may be a secret
/// (`headers = "Bearer ${TOKEN}"`), and messages reach terminals, logs and HTTP answers.
fn describe_value(v: &Value) -> String {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "a whole number",
        Value::Float(_) => "a decimal number",
        Value::Boolean(_) => "true or false",
        Value::Datetime(_) => "a date",
        Value::Array(_) => "a list",
        Value::InlineTable(_) => "a table",
    }
    .into()
}

/// The allowed key closest to `k`, when it is a plausible typo.
fn closest<'x>(k: &str, allowed: &[&'x str]) -> Option<&'x str> {
    allowed
        .iter()
        .map(|a| (strsim::levenshtein(k, a), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

/// `500ms`, `30s`, `5m`, `2h`, `7d`, and sums like `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let hint = "write a number with a unit: ms, s, m, h or d (for example \"30s\", \"5m\", \"7d\")";
    if t.is_empty() {
        return Err(format!("empty duration; {hint}"));
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("\"{s}\" is not a duration; {hint}"));
        }
        let n: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("\"{s}\" is not a duration; {hint}"))?;
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c.is_whitespace())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = rest[unit_len..].trim_start();
        let secs = match unit {
            "ms" => n / 1000.0,
            "s" | "sec" | "secs" => n,
            "m" | "min" | "mins" => n * 60.0,
            "h" | "hour" | "hours" => n * 3600.0,
            "d" | "day" | "days" => n * 86400.0,
            "" => return Err(format!("\"{s}\" has no unit; {hint}")),
            other => return Err(format!("unknown unit \"{other}\" in \"{s}\"; {hint}")),
        };
        if !secs.is_finite() || secs > 1e12 {
            return Err(format!("\"{s}\" is too long"));
        }
        total += Duration::from_secs_f64(secs);
    }
    Ok(total)
}

/// `512`, `64KiB`, `1MiB`, `1GiB`, `10MB`, `1GB` (decimal units too).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let hint = "write a number with a unit: B, KiB, MiB, GiB (or KB, MB, GB), for example \"1MiB\"";
    let digits = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    if digits == 0 {
        return Err(format!("\"{s}\" is not a size; {hint}"));
    }
    let n: f64 = t[..digits]
        .parse()
        .map_err(|_| format!("\"{s}\" is not a size; {hint}"))?;
    let mult: f64 = match t[digits..].trim() {
        "" | "B" | "b" => 1.0,
        "KiB" | "K" | "k" => 1024.0,
        "MiB" | "M" => 1024.0 * 1024.0,
        "GiB" | "G" => 1024.0 * 1024.0 * 1024.0,
        "TiB" | "T" => 1024f64.powi(4),
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        other => return Err(format!("unknown unit \"{other}\" in \"{s}\"; {hint}")),
    };
    let v = n * mult;
    if !v.is_finite() || v > 1.8e19 {
        return Err(format!("\"{s}\" is too large"));
    }
    Ok(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("1 parsec").is_err());
    }

    #[test]
    fn every_mistake_is_reported_not_just_the_first() {
        let src = Source::plain(
            Path::new("x.toml"),
            "lisen = \"a\"\n[ingest]\ntolerance = \"5 parsecs\"\nmax_batch = \"many\"\n",
        );
        let doc = Doc::parse(&src);
        let root = doc.root().expect("parses");
        root.str("listen", "\"127.0.0.1:8080\"");
        if let Some(ingest) = root.section("ingest", "{}") {
            ingest.duration("tolerance", "\"5m\"");
            ingest.int("max_batch", 1, 100, "1000");
            ingest.finish();
        }
        root.finish();
        let errs = doc.into_errors();
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 3, "{text:#?}");
        assert!(text
            .iter()
            .any(|t| t.starts_with("x.toml:1:1: unknown key `lisen`")
                && t.contains("did you mean `listen`")));
        assert!(text
            .iter()
            .any(|t| t.starts_with("x.toml:3:13: ") && t.contains("parsecs")));
        assert!(text
            .iter()
            .any(|t| t.starts_with("x.toml:4:13: ") && t.contains("whole number")));
    }

    #[test]
    fn a_wrong_type_is_described_by_its_type_never_its_text() {
        let src = Source::plain(
            Path::new("x.toml"),
            "headers = \"Bearer s3cr3t-token\"\nport = \"p4ss\"\nlist = [\"ok\", 7]\n",
        );
        let doc = Doc::parse(&src);
        let root = doc.root().expect("parses");
        root.section("headers", "{ Authorization = \"Bearer ${TOKEN}\" }");
        root.int("port", 1, 65535, "8080");
        root.str_list("list", "[\"a\"]");
        root.finish();
        let text: Vec<String> = doc.into_errors().iter().map(|e| e.to_string()).collect();
        assert_eq!(text.len(), 3, "{text:#?}");
        assert!(
            text[0].starts_with("x.toml:1:11: `headers` must be a table, not a string;"),
            "{text:#?}"
        );
        assert!(
            text[1].contains("must be a whole number, not a string"),
            "{text:#?}"
        );
        assert!(text[2].contains("not a whole number"), "{text:#?}");
        for t in &text {
            assert!(!t.contains("s3cr3t") && !t.contains("p4ss"), "{t}");
        }
    }

    #[test]
    fn a_duplicate_key_names_the_key_and_both_places() {
        let src = Source::plain(
            Path::new("x.toml"),
            "[privacy]\nallow = [\"a\"]\nhash = []\n  allow = [\"b\"]\n",
        );
        let errs = Doc::parse(&src).into_errors();
        assert_eq!(
            errs[0].to_string(),
            "x.toml:4:3: duplicate key `allow` in [privacy]: it is already written at line 2, column 1; keep one of the two"
        );
        let src = Source::plain(Path::new("x.toml"), "a = 1\n[x]\nb = 1\n[x]\n");
        let errs = Doc::parse(&src).into_errors();
        assert_eq!(
            errs[0].to_string(),
            "x.toml:4:2: duplicate key `x` at the top level: it is already written at line 2, column 1; keep one of the two"
        );
    }

    #[test]
    fn an_unclosed_bracket_is_reported_where_it_opens_with_the_line_masked() {
        let text = "[destination]\nurl = \"https://partner.example/p?token=SECRET123456\"\n[privacy]\nallow = [\"click_id\",\n  \"event_name\"\n\n[when]\nevent_name = [\"x\"]\n";
        let src = Source::plain(Path::new("x.toml"), text);
        let errs = Doc::parse(&src).into_errors();
        assert_eq!((errs[0].line, errs[0].col), (4, 9), "{errs:?}");
        assert!(
            errs[0].message.starts_with(
                "TOML syntax error: this `[` is never closed (the parser noticed at line 7: "
            ) && errs[0]
                .message
                .ends_with("; line 4 reads: allow = [\"click_id\","),
            "{}",
            errs[0].message
        );
        // A string never shows past 12 characters.
        let src = Source::plain(
            Path::new("x.toml"),
            "url = \"https://partner.example/p?token=SECRET123456\" x\n",
        );
        let errs = Doc::parse(&src).into_errors();
        assert!(
            errs[0].message.ends_with("line 1 reads: url = \"…\" x")
                && !errs[0].message.contains("SECRET"),
            "{}",
            errs[0].message
        );
        // A `[` on the error's own line is not moved; `#` and strings hold no brackets.
        let src = Source::plain(Path::new("x.toml"), "# [\na = \"[\"\nb = [1 2]\n");
        let errs = Doc::parse(&src).into_errors();
        assert_eq!(errs[0].line, 3, "{errs:?}");
        assert!(
            errs[0].message.starts_with("TOML syntax error: "),
            "{errs:?}"
        );
    }

    #[test]
    fn syntax_errors_point_at_the_place() {
        let src = Source::plain(Path::new("x.toml"), "a = 1\nb = = 2\n");
        let doc = Doc::parse(&src);
        assert!(doc.has_syntax_error());
        let errs = doc.into_errors();
        assert_eq!(errs[0].line, 2);
        assert!(errs[0].message.contains("TOML syntax error"));
    }
}
