//! Diagnostics that point: `FILE:LINE:COL: message`, and the `${NAME}` substitution
//! that config and rule files share.
//!
//! Owns: turning byte offsets into line/column in the file *as the user wrote it*
//! (offsets in the substituted text are mapped back), and environment substitution.
//! Never: decides what is valid (that is `toml_reader`, `config` and `rules`).

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem in one file, at one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Line 0: about the file as a whole (missing, unreadable), no place inside it.
        if self.line == 0 {
            return write!(f, "{}: {}", self.file.display(), self.message);
        }
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// A list of diagnostics, printed one per line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Where environment variables come from: the process, or a map in tests.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;

    /// Why this file may not read `name` at all (a rule file asking for a variable
    /// the config does not allow it), or `None` when it may.
    fn refuse(&self, _name: &str) -> Option<String> {
        None
    }

    /// `var`, for the file `file` (an environment may give each file its own).
    fn var_in(&self, _file: &Path, name: &str) -> Option<String> {
        self.var(name)
    }

    /// `refuse`, for the file `file`.
    fn refuse_in(&self, _file: &Path, name: &str) -> Option<String> {
        self.refuse(name)
    }
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for std::collections::HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Substituted values this long are kept out of every message of their file, wherever
/// they would appear (`outbound::MIN_CREDENTIAL_LEN` treats them as credentials).
const SECRET_LEN: usize = 8;

/// A file's text after `${NAME}` substitution, able to point back into the original.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    /// The original text, as on disk.
    pub original: String,
    /// The text after substitution: what is parsed.
    pub text: String,
    /// (start in `text`, end in `text`, start in `original`, end in `original`) of each substitution.
    subs: Vec<(usize, usize, usize, usize)>,
    /// Where in `text` an unset variable (without default) was replaced by nothing.
    unset: Vec<usize>,
    /// (name, value) of every variable substituted, in order.
    values: Vec<(String, String)>,
    /// The names of the variables the file reads, in order (repeats included).
    pub vars: Vec<String>,
}

impl Source {
    /// Substitutes `${NAME}` and `${NAME:-default}` outside comments. Values are escaped
    /// for a TOML basic string, where substitutions are meant to stand. An unset variable
    /// without a default is a diagnostic; every one is reported.
    pub fn new(path: &Path, original: String, env: &dyn Env) -> (Source, Vec<Diagnostic>) {
        let mut out = Source {
            path: path.to_path_buf(),
            original: String::new(),
            text: String::with_capacity(original.len()),
            subs: Vec::new(),
            unset: Vec::new(),
            values: Vec::new(),
            vars: Vec::new(),
        };
        let mut errors = Vec::new();
        let bytes = original.as_bytes();
        let mut i = 0;
        // Minimal TOML lexing so that `#` inside strings is not a comment.
        let mut in_basic = false;
        let mut in_literal = false;
        let mut in_comment = false;
        while i < bytes.len() {
            let c = bytes[i];
            if in_comment {
                if c == b'\n' {
                    in_comment = false;
                }
            } else if c == b'$' && !in_literal && bytes.get(i + 1) == Some(&b'{') {
                if let Some(next) = out.substitute(&original, i, env, &mut errors) {
                    i = next;
                    continue;
                }
            } else if in_basic {
                if c == b'\\' {
                    // keep the escaped byte as is
                    out.text.push('\\');
                    i += 1;
                    if i < bytes.len() {
                        let ch = original[i..].chars().next().unwrap_or(' ');
                        out.text.push(ch);
                        i += ch.len_utf8();
                    }
                    continue;
                }
                if c == b'"' || c == b'\n' {
                    in_basic = false;
                }
            } else if in_literal {
                if c == b'\'' || c == b'\n' {
                    in_literal = false;
                }
            } else if c == b'#' {
                in_comment = true;
            } else if c == b'"' {
                in_basic = true;
            } else if c == b'\'' {
                in_literal = true;
            }
            let ch = original[i..].chars().next().unwrap_or(' ');
            out.text.push(ch);
            i += ch.len_utf8();
        }
        out.original = original;
        (out, errors)
    }

    /// The `${NAME}` or `${NAME:-default}` at `at` in `original`: appends its value
    /// (escaped) to `text` and returns where reading goes on, or `None` when it is not
    /// a reference (no closing brace, not a valid name, over several lines): then it
    /// is text like any other. An unset variable without default is an error.
    fn substitute(
        &mut self,
        original: &str,
        at: usize,
        env: &dyn Env,
        errors: &mut Vec<Diagnostic>,
    ) -> Option<usize> {
        let close = at + 2 + original[at + 2..].find('}')?;
        let inner = &original[at + 2..close];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        let valid_name = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit();
        if !valid_name || inner.contains('\n') {
            return None;
        }
        self.vars.push(name.to_string());
        let value = match lookup(env, &self.path, name, default) {
            Ok(v) => v,
            Err(message) => {
                let (line, col) = line_col(original, at);
                errors.push(Diagnostic {
                    file: self.path.clone(),
                    line,
                    col,
                    message,
                });
                self.unset.push(self.text.len());
                String::new()
            }
        };
        let start = self.text.len();
        self.values.push((name.to_string(), value.clone()));
        push_escaped(&mut self.text, &value);
        self.subs.push((start, self.text.len(), at, close + 1));
        Some(close + 1)
    }

    /// A source read as is, without substitution (tests, inline config).
    pub fn plain(path: &Path, text: &str) -> Source {
        Source {
            path: path.to_path_buf(),
            original: text.to_string(),
            text: text.to_string(),
            subs: Vec::new(),
            unset: Vec::new(),
            values: Vec::new(),
            vars: Vec::new(),
        }
    }

    /// (name, value) of every `${NAME}` substituted into this file (set or default).
    pub fn substituted(&self) -> &[(String, String)] {
        &self.values
    }

    /// Whether `span` (offsets into the substituted text) is a one-line value that
    /// contains an unset variable. A complaint about such a value ("secret is empty")
    /// is only a consequence of the variable error already reported for it.
    pub fn depends_on_unset(&self, span: &Range<usize>) -> bool {
        self.unset.iter().any(|&p| span.start <= p && p <= span.end)
            && self
                .text
                .get(span.clone())
                .is_some_and(|s| !s.contains('\n'))
    }

    /// Maps an offset in the substituted text to one in the original.
    fn original_offset(&self, pos: usize) -> usize {
        let mut delta: isize = 0;
        for &(s, e, os, oe) in &self.subs {
            if pos < s {
                break;
            }
            if pos < e {
                return os;
            }
            delta = (oe as isize) - (e as isize);
        }
        ((pos as isize) + delta).max(0) as usize
    }

    /// A diagnostic at `span` (offsets into the substituted text), or at the file's start.
    /// A value that came from the environment is never quoted: the message names its
    /// variable (`${NAME}`) instead.
    pub fn diag(&self, span: Option<Range<usize>>, message: impl Into<String>) -> Diagnostic {
        let message = self.scrub(span.as_ref(), message.into());
        let pos = span.map(|s| self.original_offset(s.start)).unwrap_or(0);
        let (line, col) = line_col(&self.original, pos);
        Diagnostic {
            file: self.path.clone(),
            line,
            col,
            message,
        }
    }

    /// `message` with each substituted value replaced by `${NAME}`: the values
    /// substituted inside `span`, and every value long enough to be a secret
    /// (`SECRET_LEN`) wherever it appears. Longest values first.
    fn scrub(&self, span: Option<&Range<usize>>, mut message: String) -> String {
        let mut order: Vec<usize> = (0..self.values.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(self.values[i].1.len()));
        for i in order {
            let (name, value) = &self.values[i];
            let inside = match (span, self.subs.get(i)) {
                (Some(sp), Some(&(s, e, _, _))) => s < sp.end.max(sp.start + 1) && sp.start < e,
                _ => false,
            };
            let long = value.chars().count() >= SECRET_LEN;
            if !value.is_empty() && (inside || long) && message.contains(value.as_str()) {
                message = message.replace(value.as_str(), &format!("${{{name}}}"));
            }
        }
        message
    }
}

/// The value of `${name}` / `${name:-default}`, or why it has none (refused, unset).
fn lookup(env: &dyn Env, file: &Path, name: &str, default: Option<&str>) -> Result<String, String> {
    if let Some(why) = env.refuse_in(file, name) {
        return Err(why);
    }
    match (env.var_in(file, name), default) {
        (Some(v), _) => Ok(v),
        (None, Some(d)) => Ok(d.to_string()),
        (None, None) => Err(format!(
            "environment variable {name} is not set; set it, or write ${{{name}:-default}} to give a default"
        )),
    }
}

/// Appends `value` escaped for a TOML basic string, where substitutions stand.
fn push_escaped(text: &mut String, value: &str) {
    for ch in value.chars() {
        match ch {
            '"' => text.push_str("\\\""),
            '\\' => text.push_str("\\\\"),
            '\n' => text.push_str("\\n"),
            '\r' => text.push_str("\\r"),
            '\t' => text.push_str("\\t"),
            c if c.is_control() => text.push_str(&format!("\\u{:04X}", c as u32)),
            c => text.push(c),
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let pos = pos.min(text.len());
    let mut pos = pos;
    while !text.is_char_boundary(pos) {
        pos -= 1;
    }
    let before = &text[..pos];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|p| p + 1).unwrap_or(0);
    let col = text[line_start..pos].chars().count() + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn substitutes_set_variables_and_defaults() {
        let e = env(&[("A", "alpha")]);
        let (s, errs) = Source::new(
            Path::new("c.toml"),
            "x = \"${A}\"\ny = \"${B:-beta}\"\n".into(),
            &e,
        );
        assert!(errs.is_empty());
        assert_eq!(s.text, "x = \"alpha\"\ny = \"beta\"\n");
    }

    #[test]
    fn unset_variable_is_reported_with_its_place() {
        let (_, errs) = Source::new(
            Path::new("c.toml"),
            "a = 1\nsecret = \"${NOPE_NOT_SET}\"\n".into(),
            &env(&[]),
        );
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].line, 2);
        assert_eq!(errs[0].col, 11);
        assert!(errs[0].message.contains("NOPE_NOT_SET"));
        assert!(errs[0].to_string().starts_with("c.toml:2:11: "));
    }

    struct Strict;
    impl Env for Strict {
        fn var(&self, _: &str) -> Option<String> {
            Some("secret-value".into())
        }
        fn refuse(&self, name: &str) -> Option<String> {
            (name == "SECRET").then(|| format!("{name} is not for this file"))
        }
    }

    #[test]
    fn a_refused_variable_is_a_located_error_and_never_read() {
        let (s, errs) = Source::new(
            Path::new("r.toml"),
            "a = 1\nurl = \"x${OK}y${SECRET:-d}\"\n".into(),
            &Strict,
        );
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(
            errs[0].to_string(),
            "r.toml:2:15: SECRET is not for this file"
        );
        assert_eq!(s.text, "a = 1\nurl = \"xsecret-valuey\"\n");
        assert_eq!(s.vars, vec!["OK".to_string(), "SECRET".to_string()]);
    }

    #[test]
    fn comments_and_literal_strings_are_not_substituted() {
        let (s, errs) = Source::new(
            Path::new("c.toml"),
            "# ${UNSET}\nx = '${UNSET}' # ${UNSET}\n".into(),
            &env(&[]),
        );
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(s.text, s.original);
    }

    #[test]
    fn values_are_escaped_so_they_cannot_break_out_of_a_string() {
        let e = env(&[("Q", "a\"b\\c")]);
        let (s, _) = Source::new(Path::new("c.toml"), "x = \"${Q}\"".into(), &e);
        assert_eq!(s.text, r#"x = "a\"b\\c""#);
    }

    #[test]
    fn offsets_after_a_substitution_map_back_to_the_original_column() {
        let e = env(&[("LONGER", "0123456789")]);
        let (s, _) = Source::new(Path::new("c.toml"), "x = \"${LONGER}\" y".into(), &e);
        let pos = s.text.find('y').unwrap_or(0);
        let d = s.diag(Some(pos..pos + 1), "m");
        assert_eq!((d.line, d.col), (1, 17));
    }
}
