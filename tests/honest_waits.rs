//! Tests wait on conditions, never on time: every `sleep` in `tests/`, and in the unit
//! tests beside the code in `src/`, paces load, is the poll interval of a condition
//! wait with a deadline, or lets pass the time a test is about, and says which in a
//! comment with `Pacing:` on the lines just above it (CONTRIBUTING.md, "Where a test
//! goes"). In a test on tokio's paused clock (`start_paused = true`,
//! `tokio::time::pause()`) a sleep is the test's own time, not a wait, and needs no
//! comment. A sleep used to wait for something to happen
//! fails this test: wait for the condition instead (`common::eventually`,
//! `FakePartner::wait_for_requests`, `RelayProcess::wait_log`, `accept_queue_empty`,
//! `server_read_all`), and prove "nothing more happens" with a later marker event.

use std::path::{Path, PathBuf};

/// How many lines above a sleep its `Pacing:` comment may stand.
const WITHIN: usize = 3;

/// Each sleep of `source` (the file `name`) without a `Pacing:` comment just above,
/// from line `from` (0-based) on; sleeps in tests on tokio's paused clock are time
/// the test is about.
fn unexplained_sleeps_from(name: &str, source: &str, from: usize) -> Vec<String> {
    let lines: Vec<&str> = source.lines().collect();
    let mut out = Vec::new();
    // The paused clock of the function being read, and of the test attribute just read.
    let mut paused = false;
    let mut attribute: Option<bool> = None;
    for (i, line) in lines.iter().enumerate().skip(from) {
        let code = line.split("//").next().unwrap_or("");
        let t = code.trim_start();
        if t.starts_with("#[tokio::test") || t.starts_with("#[test") {
            attribute = Some(t.contains("start_paused = true"));
        } else if is_fn_start(t) {
            paused = attribute.take().unwrap_or(false);
        }
        if code.contains("tokio::time::pause()") {
            paused = true;
        }
        if !code.contains("sleep(") || paused {
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

/// Whether `code` (trimmed at the start) begins a function, whatever its visibility
/// and `async`: a helper after a paused-clock test does not inherit its clock.
fn is_fn_start(code: &str) -> bool {
    let mut rest = code;
    for word in ["pub(crate) ", "pub(super) ", "pub ", "async "] {
        rest = rest.strip_prefix(word).unwrap_or(rest);
    }
    rest.starts_with("fn ")
}

/// [`unexplained_sleeps_from`] from the first line.
fn unexplained_sleeps(name: &str, source: &str) -> Vec<String> {
    unexplained_sleeps_from(name, source, 0)
}

/// Where a file of `src/` holds test code: all of a `tests.rs` or `*_tests.rs`, else
/// from its `#[cfg(test)] mod tests {` on; `None` when it holds none.
fn test_code_start(file: &Path, source: &str) -> Option<usize> {
    let name = file.file_name()?.to_str()?;
    if name == "tests.rs" || name.ends_with("_tests.rs") {
        return Some(0);
    }
    let lines: Vec<&str> = source.lines().collect();
    lines
        .windows(2)
        .position(|w| w[0].trim() == "#[cfg(test)]" && w[1].trim_start().starts_with("mod tests {"))
}

/// The unexplained sleeps of every `.rs` file under `dir` (relative to the crate),
/// each read from where `start` says its test code begins (`None`: none); and how
/// many files were read.
fn scan(dir: &str, start: impl Fn(&Path, &str) -> Option<usize>) -> (usize, Vec<String>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join(dir), &mut files);
    let mut found = Vec::new();
    let mut read = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).expect("a source file");
        let Some(from) = start(file, &text) else {
            continue;
        };
        read += 1;
        let name = file
            .strip_prefix(root)
            .unwrap_or(file)
            .display()
            .to_string();
        found.extend(unexplained_sleeps_from(&name, &text, from));
    }
    (read, found)
}

#[test]
fn every_sleep_in_unit_tests_is_pacing() {
    let (read, found) = scan("src", test_code_start);
    assert!(
        read > 20,
        "only {read} files of src/ hold tests: is the scan right?"
    );
    assert!(
        found.is_empty(),
        "sleeps in unit tests that wait for something to happen (wait on the \
         condition instead, or say `// Pacing: why` just above):\n{}",
        found.join("\n")
    );
}

#[test]
fn every_sleep_in_tests_is_pacing() {
    let (_, found) = scan("tests", |file, _| {
        (!file.ends_with("honest_waits.rs")).then_some(0)
    });
    assert!(
        found.is_empty(),
        "sleeps that wait for something to happen (wait on the condition instead, or \
         say `// Pacing: why` just above):\n{}",
        found.join("\n")
    );
}

#[test]
fn a_sleep_on_the_paused_clock_is_the_tests_own_time() {
    let sample = "#[tokio::test(start_paused = true)]\nasync fn a() {\n    tokio::time::sleep(d).await;\n}\n\n#[tokio::test]\nasync fn b() {\n    tokio::time::sleep(d).await;\n}\n\n#[test]\nfn c() {\n    tokio::time::pause();\n    tokio::time::sleep(d).await;\n}\n";
    assert_eq!(
        unexplained_sleeps("x.rs", sample),
        ["x.rs:8: tokio::time::sleep(d).await;"]
    );
    assert_eq!(
        test_code_start(
            Path::new("src/a.rs"),
            "fn f() {}\n#[cfg(test)]\nmod tests {\n}\n"
        ),
        Some(1)
    );
    assert_eq!(
        test_code_start(Path::new("src/a.rs"), "#[cfg(test)]\nmod tests;\n"),
        None
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
