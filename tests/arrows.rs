//! The module arrows of ARCHITECTURE.md ("Arrows"), read from the document itself and
//! checked on every path of every source file (`crate::`, `super::`, `self::`, in `use`
//! lines and in code, groups over several lines included; comments and string
//! literals ignored): every arrow the code draws is in the table, every arrow in the
//! table is drawn (no stale entry), and nothing forms a circle, neither between
//! modules nor between the files of one module, except the few listed below with
//! their reasons.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Arrows left out of the search for circles: (from, to, why). One that is no longer
/// drawn is reported, so the list only ever holds circles that exist.
type Allowed = &'static [(&'static str, &'static str, &'static str)];

/// Circles between modules that are known and accepted.
const MODULE_CIRCLES_ALLOWED: Allowed = &[(
    "relay",
    "http",
    "the relay holds the TLS certificates it reloads (`http::tls`), the one exception ARCHITECTURE.md names",
)];

/// Circles between the files of one module that are known and accepted.
const FILE_CIRCLES_ALLOWED: Allowed = &[
    (
        "http::routes",
        "http::admin",
        "routes dispatches to the admin API, which answers with routes' `json_response` (to cut: move the response helpers to a file of their own)",
    ),
    (
        "http::routes",
        "http::ui",
        "routes dispatches to the preview page, which answers with routes' `json_response` (as above)",
    ),
    (
        "rules::load::body",
        "rules::load::destination",
        "body templates share `destination`'s `Checker` and `span_in` (issue 23: to cut)",
    ),
    (
        "store::embedded::writer",
        "store::embedded::ops",
        "the writer thread applies each operation; `ops.rs` is the operations' part of `impl Writer`, split from `writer.rs` for length",
    ),
];

// ---- Reading Rust: comments and literals out, then tokens, then paths ----

/// `text` with comments, string and char literals blanked (line breaks kept), so
/// that only code is left to read paths from.
fn strip(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut i = 0;
    while i < c.len() {
        let next = c.get(i + 1).copied();
        let prev_ident = i > 0 && ident(c[i - 1]);
        let end = if c[i] == '/' && next == Some('/') {
            c[i..]
                .iter()
                .position(|&ch| ch == '\n')
                .map_or(c.len(), |p| i + p)
        } else if c[i] == '/' && next == Some('*') {
            block_comment_end(&c, i)
        } else if c[i] == '"' {
            string_end(&c, i)
        } else if c[i] == 'r' && !prev_ident && matches!(next, Some('"' | '#')) {
            raw_string_end(&c, i).unwrap_or(i)
        } else if c[i] == '\'' {
            char_end(&c, i).unwrap_or(i)
        } else {
            i
        };
        if end == i {
            out.push(c[i]);
            i += 1;
        } else {
            for &ch in &c[i..end] {
                blank(&mut out, ch);
            }
            i = end;
        }
    }
    out
}

/// Where a (nested) `/* */` comment starting at `i` ends.
fn block_comment_end(c: &[char], mut i: usize) -> usize {
    let mut depth = 0;
    while i < c.len() {
        if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            depth += 1;
            i += 2;
        } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    c.len()
}

fn string_end(c: &[char], mut i: usize) -> usize {
    i += 1;
    while i < c.len() {
        match c[i] {
            '\\' => i += 2,
            '"' => return i + 1,
            _ => i += 1,
        }
    }
    c.len()
}

/// `r"..."`, `r#"..."#`: where it ends; `None` when `r` starts an identifier.
fn raw_string_end(c: &[char], i: usize) -> Option<usize> {
    let hashes = c[i + 1..].iter().take_while(|&&ch| ch == '#').count();
    if c.get(i + 1 + hashes) != Some(&'"') {
        return None;
    }
    let mut j = i + 2 + hashes;
    while j < c.len() {
        if c[j] == '"'
            && c[j + 1..]
                .iter()
                .take(hashes)
                .filter(|&&ch| ch == '#')
                .count()
                == hashes
        {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(c.len())
}

/// A char literal starting at `i`: where it ends; `None` for a lifetime.
fn char_end(c: &[char], i: usize) -> Option<usize> {
    if c.get(i + 1) == Some(&'\\') {
        let close = c[i + 2..].iter().position(|&ch| ch == '\'')?;
        return Some(i + 3 + close);
    }
    (c.get(i + 2) == Some(&'\'')).then_some(i + 3)
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Path, // `::`
    Punct(char),
}

/// Tokens of stripped code, each with its line number (from 1).
fn tokens(code: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch.is_alphanumeric() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push((Tok::Ident(c[start..i].iter().collect()), line));
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push((Tok::Path, line));
            i += 2;
        } else {
            out.push((Tok::Punct(ch), line));
            i += 1;
        }
    }
    out
}

/// A path as written: its segments from `crate`, `super` or `self` on, the line it
/// starts on, and the inline modules (`mod tests { ... }`) it is written inside.
#[derive(Debug, Clone, PartialEq)]
struct RawPath {
    line: usize,
    inline: Vec<String>,
    segments: Vec<String>,
}

/// Every path starting with `crate::`, `super::` or `self::` in `text`, `use` groups
/// (nested, over several lines) expanded name by name.
fn raw_paths(text: &str) -> Vec<RawPath> {
    let t = tokens(&strip(text));
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut i = 0;
    while i < t.len() {
        match &t[i].0 {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            Tok::Ident(m) if m == "mod" => {
                if let (Some((Tok::Ident(name), _)), Some((Tok::Punct('{'), _))) =
                    (t.get(i + 1), t.get(i + 2))
                {
                    inline.push((name.clone(), depth));
                }
            }
            Tok::Ident(first)
                if matches!(first.as_str(), "crate" | "super" | "self")
                    && t.get(i + 1).map(|x| &x.0) == Some(&Tok::Path)
                    && (i == 0 || t[i - 1].0 != Tok::Path) =>
            {
                let mut found = Vec::new();
                let next = use_tree(&t, i, Vec::new(), &mut found);
                let names: Vec<String> = inline.iter().map(|(n, _)| n.clone()).collect();
                for segments in found {
                    out.push(RawPath {
                        line: t[i].1,
                        inline: names.clone(),
                        segments,
                    });
                }
                i = next.max(i + 1);
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Reads one path or `use` tree at `t[i]` onto `prefix`; every full path into `out`.
/// Returns the index after it.
fn use_tree(
    t: &[(Tok, usize)],
    mut i: usize,
    mut path: Vec<String>,
    out: &mut Vec<Vec<String>>,
) -> usize {
    loop {
        match t.get(i).map(|x| &x.0) {
            Some(Tok::Ident(s)) => {
                path.push(s.clone());
                i += 1;
                if t.get(i).map(|x| &x.0) == Some(&Tok::Path) {
                    i += 1;
                    continue;
                }
                out.push(path);
                return i;
            }
            Some(Tok::Punct('{')) => {
                i += 1;
                loop {
                    match t.get(i).map(|x| &x.0) {
                        None => return i,
                        Some(Tok::Punct('}')) => return i + 1,
                        Some(Tok::Punct(',')) => i += 1,
                        Some(Tok::Ident(a)) if a == "as" => i += 2,
                        _ => {
                            let before = i;
                            i = use_tree(t, i, path.clone(), out);
                            if i == before {
                                i += 1; // something else inside the braces: step over it
                            }
                        }
                    }
                }
            }
            _ => {
                // `*`, or a path followed by `<` and the like.
                if !path.is_empty() {
                    out.push(path);
                }
                return i;
            }
        }
    }
}

// ---- Where a path leads: the files of the crate as module paths ----

/// A source file: its module path (`["deliver", "worker"]`; `[]` for `lib.rs`) and text.
struct Source {
    file: String,
    module: Vec<String>,
    text: String,
}

/// The module path a path written in `module` (inside `inline` modules) leads to.
fn resolve(module: &[String], inline: &[String], segments: &[String]) -> Option<Vec<String>> {
    let mut here: Vec<String> = module.iter().chain(inline).cloned().collect();
    let mut rest = segments;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            here.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        _ => {}
    }
    while rest.first().map(String::as_str) == Some("super") {
        here.pop()?;
        rest = &rest[1..];
    }
    here.extend(rest.iter().filter(|s| s.as_str() != "self").cloned());
    Some(here)
}

/// The file (as its module path joined by `::`, `lib` for the root) that holds what
/// `path` names: the longest module path of a file that starts it.
fn file_of(files: &BTreeSet<Vec<String>>, path: &[String]) -> String {
    (0..=path.len())
        .rev()
        .map(|n| &path[..n])
        .find(|p| files.contains(*p))
        .map_or_else(|| "lib".to_string(), key)
}

fn key(module: &[String]) -> String {
    if module.is_empty() {
        "lib".to_string()
    } else {
        module.join("::")
    }
}

fn top(file_key: &str) -> &str {
    file_key.split("::").next().unwrap_or(file_key)
}

/// One arrow the code draws: from a file to a file, where, and the full path.
struct Use {
    from: String,
    to: String,
    path: Vec<String>,
    at: String,
}

fn uses(sources: &[Source]) -> Vec<Use> {
    let files: BTreeSet<Vec<String>> = sources.iter().map(|s| s.module.clone()).collect();
    let mut out = Vec::new();
    for s in sources {
        for raw in raw_paths(&s.text) {
            let Some(path) = resolve(&s.module, &raw.inline, &raw.segments) else {
                continue;
            };
            out.push(Use {
                from: key(&s.module),
                to: file_of(&files, &path),
                path,
                at: format!("{}:{}", s.file, raw.line),
            });
        }
    }
    out
}

// ---- The table in ARCHITECTURE.md ----

/// The "Arrows" section: which module may use which.
#[derive(Debug, Default)]
struct Table {
    /// Modules that may use anything (the wiring).
    anything: BTreeSet<String>,
    /// Modules any module may use (the fake partner, in test builds).
    open: BTreeSet<String>,
    /// module -> what it may use.
    allowed: BTreeMap<String, Vec<Target>>,
}

/// A module another may use, and the only path under it it may use, when restricted.
type Target = (String, Option<Vec<String>>);

fn backticked(s: &str) -> Vec<String> {
    s.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn read_table(architecture: &str) -> Result<Table, String> {
    let section = architecture
        .split("\n## Arrows")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .ok_or("ARCHITECTURE.md has no \"## Arrows\" section")?;
    let mut table = Table::default();
    let joined = section.split_whitespace().collect::<Vec<_>>().join(" ");
    let anything = joined
        .find(" may use anything")
        .ok_or("the Arrows section does not say which modules \"may use anything\"")?;
    let open = joined[..anything]
        .rfind('(')
        .ok_or("no \"(\" before \"may use anything\"")?;
    table.anything = backticked(&joined[open..anything]).into_iter().collect();
    for row in section
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('|'))
    {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (Some(who), Some(what)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        let modules = backticked(who);
        if modules.is_empty() {
            continue; // the header and its rule
        }
        let what = what.split(" — ").next().unwrap_or(what);
        let targets = parse_targets(what);
        for m in modules {
            if row.contains("any module") {
                table.open.insert(m.clone());
            }
            if table.allowed.insert(m.clone(), targets.clone()).is_some() {
                return Err(format!("the Arrows table lists `{m}` twice"));
            }
        }
    }
    if table.allowed.is_empty() {
        return Err("the Arrows section has no table".into());
    }
    Ok(table)
}

/// `config, http (`http::tls` only), sync (test builds only)` -> targets; `nothing
/// (leaves)` -> none.
fn parse_targets(what: &str) -> Vec<Target> {
    if what.starts_with("nothing") {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut depth = 0;
    let mut item = String::new();
    for ch in what.chars().chain(std::iter::once(',')) {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                let only = (item.contains(" only)"))
                    .then(|| {
                        backticked(&item)
                            .first()
                            .map(|p| p.split("::").map(str::to_string).collect())
                    })
                    .flatten();
                if !name.is_empty() {
                    out.push((name, only));
                }
                item.clear();
                continue;
            }
            _ => {}
        }
        item.push(ch);
    }
    out
}

impl Table {
    fn allows(&self, module: &str, target: &str, path: &[String]) -> bool {
        if module == target || self.anything.contains(module) || self.open.contains(target) {
            return true;
        }
        self.allowed.get(module).is_some_and(|ts| {
            ts.iter()
                .any(|(t, only)| t == target && only.as_ref().is_none_or(|p| path.starts_with(p)))
        })
    }
}

// ---- The checks ----

/// Everything wrong with `sources` against the table in `architecture`, one line
/// each; `allowed` = (circles between modules, circles between files) accepted.
fn check(architecture: &str, sources: &[Source], allowed: (Allowed, Allowed)) -> Vec<String> {
    let table = match read_table(architecture) {
        Ok(t) => t,
        Err(e) => return vec![e],
    };
    let all = uses(sources);
    let mut problems = Vec::new();
    let mut reported = BTreeSet::new();
    let mut drawn: BTreeSet<(String, String)> = BTreeSet::new();
    for u in &all {
        let (from, to) = (top(&u.from), top(&u.to));
        if from == to {
            continue;
        }
        drawn.insert((from.to_string(), to.to_string()));
        if !table.allows(from, to, &u.path) && reported.insert((u.at.clone(), to)) {
            problems.push(format!(
                "{}: {from} uses crate::{}, which the Arrows table of ARCHITECTURE.md does not allow",
                u.at,
                u.path.join("::")
            ));
        }
    }
    problems.extend(stale_entries(&table, sources, &drawn));
    let siblings: BTreeSet<(String, String)> = all
        .iter()
        .filter(|u| u.from != u.to && u.from.contains("::") && parent(&u.from) == parent(&u.to))
        .map(|u| (u.from.clone(), u.to.clone()))
        .collect();
    for (what, edges, allow) in [
        ("modules", drawn, allowed.0),
        ("files of one module", siblings, allowed.1),
    ] {
        for (a, b, _) in allow {
            if !edges.contains(&(a.to_string(), b.to_string())) {
                problems.push(format!(
                    "{a} -> {b} is listed as an accepted circle, but {a} no longer uses {b}: remove it from the list"
                ));
            }
        }
        let kept: BTreeSet<(String, String)> = edges
            .into_iter()
            .filter(|(a, b)| {
                !allow
                    .iter()
                    .any(|(x, y, _)| (*x, *y) == (a.as_str(), b.as_str()))
            })
            .collect();
        for c in circles(&kept) {
            let arrows: Vec<String> = kept
                .iter()
                .filter(|(a, b)| c.contains(a) && c.contains(b))
                .map(|(a, b)| format!("{a} -> {b}"))
                .collect();
            problems.push(format!("{what} in a circle: {}", arrows.join(", ")));
        }
    }
    problems
}

fn parent(file_key: &str) -> &str {
    file_key.rsplit_once("::").map_or("", |(p, _)| p)
}

/// Arrows the table allows that no file draws, and modules it names that do not exist.
fn stale_entries(
    table: &Table,
    sources: &[Source],
    drawn: &BTreeSet<(String, String)>,
) -> Vec<String> {
    let modules: BTreeSet<String> = sources
        .iter()
        .map(|s| top(&key(&s.module)).to_string())
        .collect();
    let mut out = Vec::new();
    for (m, targets) in &table.allowed {
        if !modules.contains(m) {
            out.push(format!(
                "the Arrows table of ARCHITECTURE.md names `{m}`, which is no module of src/"
            ));
        }
        for (t, _) in targets {
            if !drawn.contains(&(m.clone(), t.clone())) {
                out.push(format!(
                    "the Arrows table of ARCHITECTURE.md lets {m} use {t}, which no file of {m} does: remove it"
                ));
            }
        }
    }
    out
}

/// Every circle of the graph `edges`, once each (as its nodes), found as the strongly
/// connected components of more than one node.
fn circles(edges: &BTreeSet<(String, String)>) -> Vec<Vec<String>> {
    let nodes: BTreeSet<&String> = edges.iter().flat_map(|(a, b)| [a, b]).collect();
    let reach = |from: &String| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(n) = todo.pop() {
            for (_, b) in edges.iter().filter(|(a, _)| *a == n) {
                if seen.insert(b.clone()) {
                    todo.push(b.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> =
        nodes.iter().map(|n| (*n, reach(n))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for n in &nodes {
        if done.contains(*n) || !reaches[n].contains(*n) {
            continue;
        }
        let component: Vec<String> = nodes
            .iter()
            .filter(|m| reaches[n].contains(**m) && reaches[*m].contains(*n))
            .map(|m| (*m).clone())
            .collect();
        done.extend(component.iter().cloned());
        out.push(component);
    }
    out
}

fn sources_under(src: &Path) -> Vec<Source> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("src readable") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(src, &mut files);
    files.sort();
    files
        .into_iter()
        // The binary is a crate of its own: its `crate::` is not the library's.
        .filter(|f| !f.ends_with("main.rs") || f.parent() != Some(src))
        .map(|f| {
            let rel = f.strip_prefix(src).expect("under src");
            let mut module: Vec<String> = rel
                .iter()
                .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
                .collect();
            if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
                module.pop();
            }
            Source {
                file: format!("src/{}", rel.display()),
                module,
                text: std::fs::read_to_string(&f).expect("readable"),
            }
        })
        .collect()
}

#[test]
fn module_imports_follow_the_arrows_of_architecture_md() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let problems = check(
        &doc,
        &sources_under(&root.join("src")),
        (MODULE_CIRCLES_ALLOWED, FILE_CIRCLES_ALLOWED),
    );
    assert!(
        problems.is_empty(),
        "arrows broken:\n{}",
        problems.join("\n")
    );
}

// ---- The checker itself, on known-bad samples ----

const SAMPLE_DOC: &str = "# A\n\n## Arrows\n\n- whole (`lib` may use anything; a module not listed uses nothing)\n\n  | module | may use |\n  |---|---|\n  | `rules` | event — never store |\n  | `store` | outbound |\n  | `deliver` | store |\n  | `http` | deliver, store |\n  | `event`, `outbound` | nothing (leaves) |\n  | `fake` | event (any module's tests may use it) |\n\n## Next\n";

fn sample(file: &str, text: &str) -> Source {
    let module: Vec<String> = file
        .trim_end_matches(".rs")
        .split('/')
        .filter(|s| *s != "mod")
        .map(str::to_string)
        .collect();
    Source {
        file: file.to_string(),
        module,
        text: text.to_string(),
    }
}

const NONE: (Allowed, Allowed) = (&[], &[]);

/// A tree that follows SAMPLE_DOC exactly.
fn good_tree() -> Vec<Source> {
    vec![
        sample("rules.rs", "use crate::event::Event;\n"),
        sample(
            "store/mod.rs",
            "mod a;\nmod b;\nuse crate::outbound::Request;\n",
        ),
        sample("store/a.rs", "use super::b::Thing;\nuse super::Shared;\n"),
        sample("store/b.rs", "use super::Shared;\n"),
        sample(
            "deliver.rs",
            "fn f() { crate::store::x(); }\n#[cfg(test)]\nuse crate::fake::Partner;\n",
        ),
        sample(
            "http.rs",
            "use crate::{\n    deliver::Worker,\n    store::{Store, a::Thing},\n};\n",
        ),
        sample("event.rs", ""),
        sample("outbound.rs", ""),
        sample("fake.rs", "use crate::event::Event;\n"),
    ]
}

#[test]
fn the_sample_tree_passes() {
    assert_eq!(check(SAMPLE_DOC, &good_tree(), NONE), Vec::<String>::new());
}

#[test]
fn a_forbidden_import_is_caught_in_every_form() {
    for text in [
        "use crate::store::Store;",
        "fn f() { crate::store::x() }",
        "use crate::{event::Event, store::Store};",
        "use crate::{\n    event::Event,\n    store::{self, Store},\n};",
        "use super::store::Store;",
    ] {
        let mut tree = good_tree();
        tree[0] = sample("rules.rs", &format!("use crate::event::Event;\n{text}\n"));
        let problems = check(SAMPLE_DOC, &tree, NONE);
        assert!(
            problems.len() == 1 && problems[0].contains("rules uses crate::store"),
            "{text}: {problems:?}"
        );
    }
}

#[test]
fn comments_and_strings_are_not_imports() {
    let mut tree = good_tree();
    tree[0] = sample(
        "rules.rs",
        "//! Never `crate::store::Store`.\nuse crate::event::Event; // not crate::store::x\n\
         /* crate::store::y /* nested */ crate::store::z */\n\
         fn f() -> &'static str { let _c = '\"'; \"crate::store::w\" }\n\
         const R: &str = r#\"crate::store::v \"still\" \"#;\n",
    );
    assert_eq!(check(SAMPLE_DOC, &tree, NONE), Vec::<String>::new());
}

#[test]
fn a_table_drift_is_caught_both_ways() {
    // The code draws an arrow the table lacks.
    let doc = SAMPLE_DOC.replace("| `http` | deliver, store |", "| `http` | deliver |");
    let problems = check(&doc, &good_tree(), NONE);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("http uses crate::store::")),
        "{problems:?}"
    );
    // The table allows an arrow no file draws.
    let doc = SAMPLE_DOC.replace("| `deliver` | store |", "| `deliver` | store, outbound |");
    assert_eq!(
        check(&doc, &good_tree(), NONE),
        ["the Arrows table of ARCHITECTURE.md lets deliver use outbound, which no file of deliver does: remove it"]
    );
    // A module renamed in the code but not in the table.
    let doc = SAMPLE_DOC.replace("| `fake` |", "| `fake_old` |");
    assert!(check(&doc, &good_tree(), NONE)
        .iter()
        .any(|p| p.contains("`fake_old`, which is no module")));
    // A restriction in the table holds.
    let doc = SAMPLE_DOC.replace(
        "| `http` | deliver, store |",
        "| `http` | deliver, store (`store::a` only) |",
    );
    let problems = check(&doc, &good_tree(), NONE);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("http uses crate::store::Store")),
        "{problems:?}"
    );
}

#[test]
fn a_circle_is_caught_between_modules_and_between_files() {
    // store <-> deliver, both arrows in the table.
    let doc = SAMPLE_DOC.replace("| `store` | outbound |", "| `store` | outbound, deliver |");
    let mut tree = good_tree();
    tree[1] = sample(
        "store/mod.rs",
        "use crate::outbound::Request;\nuse crate::deliver::Worker;\n",
    );
    assert_eq!(
        check(&doc, &tree, NONE),
        ["modules in a circle: deliver -> store, store -> deliver"]
    );
    // store/a.rs <-> store/b.rs; a file and its parent (`super::Shared`) are no circle.
    let mut tree = good_tree();
    tree[3] = sample(
        "store/b.rs",
        "use super::Shared;\nfn f() { super::a::g() }\n",
    );
    assert_eq!(
        check(SAMPLE_DOC, &tree, NONE),
        ["files of one module in a circle: store::a -> store::b, store::b -> store::a"]
    );
    // `super` inside an inline module is the file's own module, not its parent.
    let mut tree = good_tree();
    tree[3] = sample("store/b.rs", "mod tests {\n    use super::helper;\n}\n");
    assert_eq!(check(SAMPLE_DOC, &tree, NONE), Vec::<String>::new());
}

#[test]
fn an_accepted_circle_is_skipped_and_a_stale_one_reported() {
    let mut tree = good_tree();
    tree[3] = sample(
        "store/b.rs",
        "use super::Shared;\nfn f() { super::a::g() }\n",
    );
    let accept: Allowed = &[("store::b", "store::a", "sample")];
    assert_eq!(
        check(SAMPLE_DOC, &tree, (&[], accept)),
        Vec::<String>::new()
    );
    assert_eq!(
        check(SAMPLE_DOC, &good_tree(), (&[], accept)),
        ["store::b -> store::a is listed as an accepted circle, but store::b no longer uses store::a: remove it from the list"]
    );
}

/// The modules `src/lib.rs` makes public, as ARCHITECTURE.md ("Public surface") lists
/// them: widening the library's surface is a decision written down, not a side effect.
#[test]
fn the_public_modules_are_the_documented_ones() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = std::fs::read_to_string(root.join("src/lib.rs")).expect("lib.rs");
    let mut public: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches([';', ' ', '{']))
        .collect();
    public.sort_unstable();
    let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let section = doc
        .split("## Public surface")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("ARCHITECTURE.md has a Public surface section");
    let mut documented: Vec<&str> = section
        .lines()
        .filter_map(|l| l.strip_prefix("- `"))
        .filter_map(|l| l.split('`').next())
        .collect();
    documented.sort_unstable();
    assert_eq!(public, documented, "src/lib.rs vs ARCHITECTURE.md");
}
