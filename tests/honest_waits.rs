//! Tests wait on conditions, never on time: every `sleep` in `tests/` paces load, is
//! the poll interval of a condition wait with a deadline, or lets pass the time a test
//! is about, and says which in a comment with `Pacing:` on the lines just above it
//! (CONTRIBUTING.md, "Where a test goes"). A sleep used to wait for something to happen
//! fails this test: wait for the condition instead (`common::eventually`,
//! `FakePartner::wait_for_requests`, `RelayProcess::wait_log`, `accept_queue_empty`,
//! `server_read_all`), and prove "nothing more happens" with a later marker event.

use std::path::{Path, PathBuf};

/// How many lines above a sleep its `Pacing:` comment may stand.
const WITHIN: usize = 3;

/// Each sleep of `source` (the file `name`) without a `Pacing:` comment just above.
fn unexplained_sleeps(name: &str, source: &str) -> Vec<String> {
    let lines: Vec<&str> = source.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        if !code.contains("sleep(") {
            continue;
        }
        let explained = lines[i.saturating_sub(WITHIN)..=i]
            .iter()
            .any(|l| l.contains("//") && l.contains("Pacing:"));
        if !explained {
            out.push(format!("{name}:{}: {}", i + 1, line.trim()));
        }
    }
    out
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_sleep_in_tests_is_pacing() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("tests"), &mut files);
    let mut found = Vec::new();
    for file in files.iter().filter(|f| !f.ends_with("honest_waits.rs")) {
        let text = std::fs::read_to_string(file).expect("a test file");
        let name = file
            .strip_prefix(root)
            .unwrap_or(file)
            .display()
            .to_string();
        found.extend(unexplained_sleeps(&name, &text));
    }
    assert!(
        found.is_empty(),
        "sleeps that wait for something to happen (wait on the condition instead, or \
         say `// Pacing: why` just above):\n{}",
        found.join("\n")
    );
}

#[test]
fn a_sleep_used_as_a_wait_is_caught() {
    let sample = "fn t() {\n    start();\n    std::thread::sleep(Duration::from_millis(300)); // let it start\n    check();\n    // Pacing: a slow client.\n    tokio::time::sleep(d).await;\n}\n";
    assert_eq!(
        unexplained_sleeps("x.rs", sample),
        ["x.rs:3: std::thread::sleep(Duration::from_millis(300)); // let it start"]
    );
}
