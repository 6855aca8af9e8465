//! The module arrows of ARCHITECTURE.md ("Allowed dependencies"), checked on the
//! `crate::...` paths of every source file: the stages never reach back up, rules
//! never import store or deliver, the store knows no HTTP, and nothing forms a circle.

use std::path::{Path, PathBuf};

/// Which modules each module may use. `main`, `lib`, `cli` and `app` (the wiring)
/// may use anything; a module not listed may use nothing of the crate.
const ALLOWED: &[(&str, &[&str])] = &[
    (
        "relay",
        &[
            "config", "dedupe", "deliver", "diag", "http", "ingest", "metrics", "outbound",
            "rules", "store", "sync", "webhooks",
        ],
    ),
    (
        "http",
        &[
            "config", "diag", "event", "ingest", "metrics", "outbound", "relay", "rules", "store",
            "sync", "webhooks",
        ],
    ),
    (
        "ingest",
        &["dedupe", "event", "outbound", "rules", "store", "webhooks"],
    ),
    ("metrics", &["deliver", "store"]),
    ("deliver", &["outbound", "store", "sync", "webhooks"]),
    ("dedupe", &["config", "event", "store"]),
    ("config", &["diag", "rules", "toml_reader", "webhooks"]),
    (
        "rules",
        &["diag", "event", "outbound", "toml_reader", "webhooks"],
    ),
    ("toml_reader", &["diag"]),
    ("fake_partner", &["sync"]),
    ("store", &["outbound", "sync"]),
];

/// Whether `module` may use `crate::{target}{rest}`.
fn allowed(module: &str, target: &str, rest: &str) -> bool {
    if module == target || matches!(module, "main" | "lib" | "cli" | "app") {
        return true;
    }
    // The fake partner exists only in test builds (`cfg(test)` or the `testing`
    // feature): any module's tests may use it.
    if target == "fake_partner" {
        return true;
    }
    // The relay holds the TLS certificates it reloads; nothing else of the HTTP edge.
    if (module, target) == ("relay", "http") {
        return rest.starts_with("::tls");
    }
    ALLOWED
        .iter()
        .find(|(m, _)| *m == module)
        .is_some_and(|(_, targets)| targets.contains(&target))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src readable") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/<module>/...` or `src/<module>.rs` -> `<module>`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next().expect("a component");
    first
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_string()
}

/// Every `crate::x` use in `text` that `module` may not make, as "line: what".
fn violations(module: &str, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut at = 0;
        while let Some(i) = line[at..].find("crate::") {
            let start = at + i + "crate::".len();
            at = start;
            // `crate::{a::X, b}`: each name of the group, on this line.
            if let Some(group) = line[start..].strip_prefix('{') {
                let Some(end) = group.find('}') else {
                    out.push(format!(
                        "{}: {module}: a crate::{{...}} group over several lines (write one per line)",
                        n + 1
                    ));
                    continue;
                };
                for part in group[..end].split(',') {
                    let part = part.trim();
                    let target: String = part
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !target.is_empty() && !allowed(module, &target, &part[target.len()..]) {
                        out.push(format!("{}: {module} uses crate::{target}", n + 1));
                    }
                }
                continue;
            }
            let target: String = line[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let rest = &line[start + target.len()..];
            if !target.is_empty() && !allowed(module, &target, rest) {
                out.push(format!("{}: {module} uses crate::{target}", n + 1));
            }
        }
    }
    out
}

#[test]
fn module_imports_follow_the_arrows() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut broken = Vec::new();
    for file in files {
        let module = module_of(&src, &file);
        let text = std::fs::read_to_string(&file).expect("readable");
        for v in violations(&module, &text) {
            broken.push(format!("{}:{v}", file.display()));
        }
    }
    assert!(broken.is_empty(), "arrows broken:\n{}", broken.join("\n"));
}

/// The check itself catches what it must: a known-bad sample fails it.
#[test]
fn a_forbidden_import_is_caught() {
    let bad_rules = "use crate::store::Store;\nuse crate::event::Event;\n";
    assert_eq!(
        violations("rules", bad_rules),
        ["1: rules uses crate::store"]
    );
    assert_eq!(
        violations("store", "fn f() { crate::http::routes::x() }"),
        ["1: store uses crate::http"]
    );
    assert_eq!(
        violations("relay", "use crate::http::routes;"),
        ["1: relay uses crate::http"]
    );
    assert!(violations("relay", "use crate::http::tls::TlsCertificates;").is_empty());
    // Grouped imports are read name by name.
    assert_eq!(
        violations("rules", "use crate::{event::Event, deliver::Deliverer};"),
        ["1: rules uses crate::deliver"]
    );
    assert_eq!(
        violations("store", "use crate::{\n    http::X,\n};").len(),
        1,
        "a group over several lines is refused, not skipped"
    );
    assert!(violations("deliver", "use crate::outbound::X; use crate::store::Y;").is_empty());
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
