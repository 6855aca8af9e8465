//! Skipping a test whose component is missing here, the same way everywhere: the
//! integration tests use it through `tests/common`, the Redis unit tests in
//! `src/store/redis/tests.rs` include this file.

use std::path::Path;

/// Skips the test `test` because `reason` (a component it needs is missing here):
/// prints `SKIPPED: test: reason` and adds the line to the file named by
/// `PBR_TEST_SKIPS` (scripts/test.sh counts them in its summary). With `CI=true` a
/// skip is a failure instead: CI runs every test (.ci/run installs what they need).
pub fn skip(test: &str, reason: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: CI=true and it cannot run: {reason}");
    }
    let line = format!("SKIPPED: {test}: {reason}");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("PBR_TEST_SKIPS") {
        use std::io::Write;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path);
        if let Err(e) = file.and_then(|mut f| writeln!(f, "{line}")) {
            eprintln!(
                "{test}: cannot record the skip in {}: {e}",
                Path::new(&path).display()
            );
        }
    }
}
