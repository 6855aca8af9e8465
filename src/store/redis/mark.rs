//! `data_dir/redis.mark`: the highest commit number this relay saw Redis give.
//!
//! Every accept increments `{P}:meta` `commits` inside its script and returns the new
//! value. Redis is linearizable, so an accept sent after another one's answer must
//! get a larger number; a smaller one, or a `commits` below the mark at start, means
//! Redis went back in time (restored from an older snapshot, or failed over to a
//! replica that had not received the latest writes) and accepted deliveries are gone.
//! The epoch check catches Redis losing everything; this catches it losing the end.
//!
//! The mark is written after Redis answered (one small in-place write, no fsync): it
//! can only lag, never lead, so it gives no false alarm.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::sync::lock;

pub(super) const MARK_FILE: &str = "redis.mark";

/// What this relay has seen of the commit counter, and where it keeps it. The mark
/// is per prefix and epoch: after Redis lost everything (a new epoch, see the epoch
/// note) the old mark says nothing.
pub(super) struct Seen {
    value: AtomicU64,
    /// `prefix epoch`: what the mark's line starts with.
    label: String,
    /// `None` without a data directory (tests, tools): then only the running
    /// process checks.
    file: Option<(PathBuf, Mutex<File>)>,
}

impl Seen {
    /// Reads the mark for `prefix` in `dir` and checks Redis's `commits` against it:
    /// an error (naming the file to delete) when Redis holds less than was seen.
    pub fn open(
        dir: Option<&Path>,
        prefix: &str,
        epoch: &str,
        commits: u64,
        url: &str,
    ) -> Result<Seen, String> {
        let label = format!("{prefix} {epoch}");
        let Some(dir) = dir else {
            return Ok(Seen {
                value: AtomicU64::new(commits),
                label,
                file: None,
            });
        };
        let path = dir.join(MARK_FILE);
        let marked = match std::fs::read_to_string(&path) {
            Ok(text) => parse(&text, &label),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        if let Some(seen) = marked.filter(|seen| commits < *seen) {
            return Err(format!(
                "{}: {}; to start on the data Redis has now, delete {}",
                path.display(),
                went_back(url, commits, seen),
                path.display()
            ));
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let seen = Seen {
            value: AtomicU64::new(commits),
            label,
            file: Some((path, Mutex::new(file))),
        };
        seen.write(true).map_err(|e| format!("{MARK_FILE}: {e}"))?;
        Ok(seen)
    }

    pub fn get(&self) -> u64 {
        self.value.load(Ordering::SeqCst)
    }

    /// Notes a commit number Redis answered with.
    pub fn saw(&self, commit: u64) {
        if self.value.fetch_max(commit, Ordering::SeqCst) < commit {
            if let Err(e) = self.write(false) {
                tracing::debug!(error = %e, "cannot write {MARK_FILE}");
            }
        }
    }

    /// Writes the current value (fixed width, in place; `truncate` once at open,
    /// where the file may hold another prefix's line).
    fn write(&self, truncate: bool) -> std::io::Result<()> {
        let Some((_, file)) = &self.file else {
            return Ok(());
        };
        let file = lock(file);
        if truncate {
            file.set_len(0)?;
        }
        // Under the lock: the value written last is the largest.
        let line = format!("{} {:020}\n", self.label, self.get());
        file.write_all_at(line.as_bytes(), 0)
    }
}

/// The mark's number for `label` (`prefix epoch`), if the file holds one.
fn parse(text: &str, label: &str) -> Option<u64> {
    let (head, n) = text.trim_end().rsplit_once(' ')?;
    if head == label {
        n.parse().ok()
    } else {
        None
    }
}

/// What happened, for the log and the start-up refusal.
pub(super) fn went_back(url: &str, commits: u64, seen: u64) -> String {
    format!(
        "Redis at {url} went back in time: it holds commit {commits} of the relay's data, but this relay had seen commit {seen} (restored from an older snapshot, or failed over to a replica that missed the latest writes); deliveries accepted since then are gone"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_only_moves_forward_and_refuses_a_redis_behind_it() {
        let dir = tempfile::tempdir().unwrap();
        let seen = Seen::open(Some(dir.path()), "p", "e1", 5, "redis://x").unwrap();
        seen.saw(9);
        seen.saw(7);
        assert_eq!(seen.get(), 9);
        let text = std::fs::read_to_string(dir.path().join(MARK_FILE)).unwrap();
        assert_eq!(parse(&text, "p e1"), Some(9));
        drop(seen);
        // Redis at 9 or more: fine. Below: refused, naming the file.
        assert!(Seen::open(Some(dir.path()), "p", "e1", 9, "redis://x").is_ok());
        let e = Seen::open(Some(dir.path()), "p", "e1", 4, "redis://x")
            .err()
            .unwrap();
        assert!(
            e.contains("went back in time") && e.contains("commit 4") && e.contains("commit 9"),
            "{e}"
        );
        assert!(e.contains("delete") && e.contains(MARK_FILE), "{e}");
        // Another epoch's (Redis lost everything, the operator accepted it) or another
        // prefix's mark says nothing about this one.
        assert!(Seen::open(Some(dir.path()), "p", "e2", 0, "redis://x").is_ok());
        assert!(Seen::open(Some(dir.path()), "q", "e1", 0, "redis://x").is_ok());
    }
}
