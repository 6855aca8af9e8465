//! The module arrows of ARCHITECTURE.md, checked on the `use crate::...` paths of
//! every source file: app -> http -> relay, and the stages never reach back up.

use std::path::{Path, PathBuf};

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

#[test]
fn module_imports_follow_the_arrows() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut broken = Vec::new();
    for file in files {
        let module = module_of(&src, &file);
        let text = std::fs::read_to_string(&file).expect("readable");
        for (n, line) in text.lines().enumerate() {
            for target in ["app", "relay", "http"] {
                let needle = format!("crate::{target}");
                let Some(at) = line.find(&needle) else {
                    continue;
                };
                let rest = &line[at + needle.len()..];
                let allowed = match (module.as_str(), target) {
                    ("main" | "lib" | "cli" | "app", _) => true,
                    ("http", "relay") => true,
                    ("relay", "http") => rest.starts_with("::tls"),
                    (m, t) => m == t,
                };
                if !allowed {
                    broken.push(format!(
                        "{}:{}: {module} uses {needle}",
                        file.display(),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(broken.is_empty(), "arrows broken:\n{}", broken.join("\n"));
}
