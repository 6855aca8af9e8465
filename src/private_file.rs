//! Writing a small file of the data directory whole or not at all: a temporary file
//! beside it (mode 0600), fsync'd, renamed over the target, the directory fsync'd. A
//! crash at any point leaves the old file or the new one, never half of either.
//!
//! Used by the embedded store (the dedupe key, the format number) and by the rules
//! layer (each rule file's last good copy). Knows nothing of what it writes.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Replaces `path` with `bytes`, durably, readable by this user only.
pub(crate) fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = Path::new(&tmp);
    // A leftover from a crash could carry other permissions: start afresh.
    let _ = fs::remove_file(tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_file_is_replaced_whole_private_and_without_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        // A leftover temporary file with open permissions is replaced, not reused.
        std::fs::write(dir.path().join("key.tmp"), "old").unwrap();
        super::write(&path, b"first").unwrap();
        super::write(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["key"]);
    }

    #[test]
    fn a_missing_directory_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        assert!(super::write(&dir.path().join("no/such/key"), b"x").is_err());
    }
}
