//! The last good text of each rule file, kept beside the store (`data_dir/rules-last-good`),
//! so that a file broken across a restart keeps the same version in force as after a
//! reload: the same files give the same state, whatever the uptime.
//!
//! Owns: saving a file's text once it has loaded without error (a temporary file,
//! fsync'd, renamed: never half a file; 0600 in a 0700 directory), reading it back,
//! and removing the copies of files that are gone. A copy is the file as written: its
//! `${NAME}` references, never the values the environment gives them (a
//! `${NAME:-default}` default written in the file is in its copy, as in the file). Never: fails a load. A copy that cannot be written is
//! logged (once per file and reason) and the relay goes on: the copy is a convenience
//! for the next start, not part of what a 202 promises.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The directory of kept copies, under `data_dir`.
pub const KEPT_DIR: &str = "rules-last-good";

/// Where the last good versions of rule files are kept.
#[derive(Debug)]
pub(crate) struct Kept<'a> {
    dir: &'a Path,
}

/// Failures already logged, so a read-only data directory is said once, not at every
/// reload.
static LOGGED: Mutex<Option<HashSet<String>>> = Mutex::new(None);

fn log_once(what: String) {
    let mut logged = LOGGED.lock().unwrap_or_else(|p| p.into_inner());
    if logged.get_or_insert_with(HashSet::new).insert(what.clone()) {
        tracing::warn!("{what}; a rule file broken at the next start will stay out instead of keeping this version");
    }
}

impl<'a> Kept<'a> {
    pub(crate) fn new(dir: &'a Path) -> Kept<'a> {
        Kept { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.toml"))
    }

    /// The kept text of `name`'s rule file, if any.
    pub(crate) fn read(&self, name: &str) -> Option<String> {
        fs::read_to_string(self.path(name)).ok()
    }

    /// Keeps `text` as `name`'s last good version (unless it is already kept).
    pub(crate) fn save(&self, name: &str, text: &str) {
        if self.read(name).as_deref() == Some(text) {
            return;
        }
        if let Err(e) = self.write(name, text) {
            log_once(format!(
                "cannot keep the last good version of rule file {name}.toml in {}: {e}",
                self.dir.display()
            ));
        }
    }

    fn write(&self, name: &str, text: &str) -> io::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(self.dir)?;
        crate::private_file::write(&self.path(name), text.as_bytes())
    }

    /// Removes the copies of rule files that are no longer in the rules directory
    /// (a removed partner never comes back from its copy).
    pub(crate) fn retain(&self, names: &HashSet<String>) {
        let Ok(entries) = fs::read_dir(self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let file = entry.file_name();
            let file = file.to_string_lossy();
            let Some(name) = file.strip_suffix(".toml") else {
                continue;
            };
            if !names.contains(name) {
                if let Err(e) = fs::remove_file(entry.path()) {
                    log_once(format!(
                        "cannot remove {} (its rule file is gone): {e}",
                        entry.path().display()
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_text_reads_back_whole_and_a_gone_file_loses_its_copy() {
        let dir = tempfile::tempdir().unwrap();
        let kept_dir = dir.path().join("data").join(KEPT_DIR);
        let kept = Kept::new(&kept_dir);
        assert_eq!(kept.read("meta"), None);
        kept.save("meta", "[destination]\nurl = \"x\"\n");
        kept.save("aff", "a");
        assert_eq!(
            kept.read("meta").as_deref(),
            Some("[destination]\nurl = \"x\"\n")
        );
        kept.save("meta", "second");
        assert_eq!(kept.read("meta").as_deref(), Some("second"));
        let names: HashSet<String> = ["meta".to_string()].into();
        kept.retain(&names);
        assert_eq!(kept.read("aff"), None);
        assert_eq!(kept.read("meta").as_deref(), Some("second"));
        let leftovers: Vec<_> = fs::read_dir(&kept_dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers, ["meta.toml"], "no temporary file is left");
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&kept_dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "private, like the data directory");
        let mode = fs::metadata(kept_dir.join("meta.toml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_directory_that_cannot_be_written_is_no_error() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the directory should be: every write fails.
        let blocked = dir.path().join(KEPT_DIR);
        fs::write(&blocked, "not a directory").unwrap();
        let kept = Kept::new(&blocked);
        kept.save("meta", "text");
        assert_eq!(kept.read("meta"), None);
    }
}
