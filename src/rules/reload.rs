//! Hot reload: the rules in force, swapped whole, file by file.
//!
//! Owns: `RulesHandle` (the shared current `RuleSet`, and `reload`) and the file
//! watcher that calls it (debounced). SIGHUP and `POST /admin/reload` are wired by
//! the caller to `RulesHandle::reload`. Never: logs event data (there is none here),
//! and never leaves a half-applied file.
//!
//! Lenient (the default for `serve`): each rule file lives on its own, at start and
//! at reload alike. A valid file applies; a file with errors is a `Broken` entry and
//! keeps its last good version in force if one loaded earlier, in this process or in
//! an earlier one (kept in `data_dir/rules-last-good`, see `kept`); the same files
//! give the same state after a reload and after a restart. Only a file that never
//! loaded stays out. Strict (`serve --strict`): any error refuses the
//! change, and the first load.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use crate::diag::{Diagnostic, Env};

use super::{LoadOptions, RuleSet};

/// Quiet time after the last change before reloading: editors write in several steps.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// The rules in force, shared by every part of the relay. Cloning is cheap.
#[derive(Clone)]
pub struct RulesHandle {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    env: Arc<dyn Env + Send + Sync>,
    options: LoadOptions,
    strict: bool,
    current: RwLock<Arc<RuleSet>>,
    /// One reload at a time, so a slow older load never overwrites a newer one.
    reloading: Mutex<()>,
}

impl std::fmt::Debug for RulesHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RulesHandle")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

impl RulesHandle {
    /// Loads `dir` for the first time, strictly: any error fails.
    pub fn load(
        dir: impl Into<PathBuf>,
        env: Arc<dyn Env + Send + Sync>,
    ) -> Result<RulesHandle, Vec<Diagnostic>> {
        RulesHandle::open(dir, env, LoadOptions::default(), true)
    }

    /// Loads `dir` for the first time. Strict: any error fails. Lenient: files with
    /// errors become `Broken` entries; `Err` only when `dir` cannot be read.
    pub fn open(
        dir: impl Into<PathBuf>,
        env: Arc<dyn Env + Send + Sync>,
        options: LoadOptions,
        strict: bool,
    ) -> Result<RulesHandle, Vec<Diagnostic>> {
        let dir = dir.into();
        let rules = if strict {
            RuleSet::load_dir_with(&dir, env.as_ref(), &options)?
        } else {
            RuleSet::load_dir_lenient(&dir, env.as_ref(), &options)?
        };
        Ok(RulesHandle::with_options(dir, env, rules, options, strict))
    }

    /// A handle starting with `rules` already loaded from `dir` (strict reloads).
    pub fn new(
        dir: impl Into<PathBuf>,
        env: Arc<dyn Env + Send + Sync>,
        rules: RuleSet,
    ) -> RulesHandle {
        RulesHandle::with_options(dir, env, rules, LoadOptions::default(), true)
    }

    fn with_options(
        dir: impl Into<PathBuf>,
        env: Arc<dyn Env + Send + Sync>,
        rules: RuleSet,
        options: LoadOptions,
        strict: bool,
    ) -> RulesHandle {
        RulesHandle {
            inner: Arc::new(Inner {
                dir: dir.into(),
                env,
                options,
                strict,
                current: RwLock::new(Arc::new(rules)),
                reloading: Mutex::new(()),
            }),
        }
    }

    /// The environment rule files are read with (`[rules] allow_env` applied).
    pub fn env(&self) -> &(dyn Env + Send + Sync) {
        self.inner.env.as_ref()
    }

    pub fn options(&self) -> &LoadOptions {
        &self.inner.options
    }

    /// The rule files as they are on disk now, read leniently, without touching the
    /// rules in force (what `reload` then applies).
    pub fn read_disk(&self) -> Result<RuleSet, Vec<Diagnostic>> {
        RuleSet::load_dir_lenient(&self.inner.dir, self.env(), &self.inner.options)
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The rules in force now. Keep the `Arc` for the whole of one event's routing.
    pub fn current(&self) -> Arc<RuleSet> {
        let guard = self
            .inner
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(&guard)
    }

    /// Re-loads the directory and swaps the rules atomically. Lenient: every valid
    /// file applies; each file with errors keeps its last good version (see
    /// `RuleSet::keep_last_good`) and is listed by `broken()`. `Err` (nothing
    /// changes) only when the directory cannot be read, or, strict, when any file
    /// has errors.
    pub fn reload(&self) -> Result<(), Vec<Diagnostic>> {
        let _one_at_a_time = self
            .inner
            .reloading
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut rules = self.read_disk()?;
        if self.inner.strict && !rules.broken().is_empty() {
            return Err(rules.errors());
        }
        rules.keep_last_good(&self.current());
        let mut current = self
            .inner
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *current = Arc::new(rules);
        Ok(())
    }

    /// `reload`, logging the outcome: each error with its `file:line:col`.
    pub fn reload_and_log(&self) -> Result<(), Vec<Diagnostic>> {
        let result = self.reload();
        match &result {
            Ok(()) => {
                let rules = self.current();
                tracing::info!(
                    dir = %self.inner.dir.display(),
                    destinations = rules.destinations().len(),
                    disabled = rules.disabled().len(),
                    broken = rules.broken().len(),
                    "rules reloaded"
                );
                log_broken(&rules);
            }
            Err(errors) => {
                for d in errors {
                    tracing::warn!(
                        file = %d.file.display(),
                        line = d.line,
                        col = d.col,
                        "{d}"
                    );
                }
                tracing::warn!(
                    dir = %self.inner.dir.display(),
                    errors = errors.len(),
                    "rule change refused; the rules in force stay in force"
                );
            }
        }
        result
    }
}

/// Logs each file with errors (every error located, and what the relay does about
/// it) and each warning; the same lines at start and after every reload.
pub fn log_broken(rules: &RuleSet) {
    for b in rules.broken() {
        for d in &b.errors {
            tracing::error!(file = %d.file.display(), line = d.line, col = d.col, "{d}");
        }
        tracing::error!(
            destination = %b.name,
            file = %b.file.display(),
            errors = b.errors.len(),
            last_good_in_force = b.last_good,
            "rule file has errors: {}",
            b.consequence()
        );
    }
    for w in rules.warnings() {
        tracing::warn!(file = %w.file.display(), line = w.line, col = w.col, "{w}");
    }
}

/// Whether a file-system event can change the rules: a `*.toml`, or a Kubernetes
/// ConfigMap swap (`..data` and friends).
fn relevant(event: &notify::Event) -> bool {
    if matches!(event.kind, EventKind::Access(_)) {
        return false;
    }
    event.paths.iter().any(|p| {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        name.ends_with(".toml") && !name.starts_with('.') || name.starts_with("..")
    })
}

/// The rules directory's watcher and the thread that reloads on its events.
pub struct RulesWatcher {
    watcher: RecommendedWatcher,
    thread: std::thread::JoinHandle<()>,
}

impl RulesWatcher {
    /// Stops watching and waits for a reload in progress to finish (blocking: call
    /// it off the async workers).
    pub fn stop(self) {
        drop(self.watcher);
        if self.thread.join().is_err() {
            tracing::error!("the rules watcher thread panicked");
        }
    }
}

/// Watches the handle's directory and reloads (debounced by `DEBOUNCE`) when a
/// `*.toml` in it changes, until [`RulesWatcher::stop`] (dropping the watcher also
/// stops it, without waiting).
/// `on_reload` runs after each reload with whether it was applied (the delivery
/// workers follow the new rule set through it; metrics count it).
pub fn spawn_watcher(
    handle: RulesHandle,
    on_reload: impl Fn(bool) + Send + 'static,
) -> notify::Result<RulesWatcher> {
    let (tx, rx) = mpsc::channel::<Vec<PathBuf>>();
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(event) if relevant(&event) => {
                let _ = tx.send(event.paths);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "rules directory watch error"),
        })?;
    watcher.watch(handle.dir(), RecursiveMode::NonRecursive)?;
    let thread = std::thread::Builder::new()
        .name("rules-watch".into())
        .spawn(move || {
            while let Ok(mut changed) = rx.recv() {
                loop {
                    match rx.recv_timeout(DEBOUNCE) {
                        Ok(more) => changed.extend(more),
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
                changed.sort();
                changed.dedup();
                let files: Vec<String> = changed
                    .iter()
                    .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .collect();
                tracing::info!(files = %files.join(","), "rule files changed; reloading");
                on_reload(handle.reload_and_log().is_ok());
            }
        })
        .map_err(notify::Error::io)?;
    Ok(RulesWatcher { watcher, thread })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const GOOD: &str = "[destination]\nurl = \"https://a.example/p?c={click_id}\"\nmethod = \"GET\"\n[privacy]\nallow = [\"click_id\"]\n";

    fn env() -> Arc<dyn Env + Send + Sync> {
        Arc::new(HashMap::<String, String>::new())
    }

    #[test]
    fn a_broken_change_keeps_the_old_rules_and_a_fix_applies() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("aff.toml"), GOOD).unwrap();
        let handle = RulesHandle::load(dir.path(), env()).unwrap();
        let before = handle.current();
        assert_eq!(before.destinations().len(), 1);

        std::fs::write(dir.path().join("aff.toml"), GOOD.replace("method", "methd")).unwrap();
        std::fs::write(dir.path().join("b.toml"), GOOD).unwrap();
        let errs = handle.reload().unwrap_err();
        assert!(
            errs[0]
                .to_string()
                .contains("aff.toml:3:1: unknown key `methd`"),
            "{errs:?}"
        );
        assert!(Arc::ptr_eq(&before, &handle.current()));

        std::fs::write(dir.path().join("aff.toml"), GOOD).unwrap();
        handle.reload().unwrap();
        let names: Vec<_> = handle
            .current()
            .destinations()
            .iter()
            .map(|d| d.name.clone())
            .collect();
        assert_eq!(names, ["aff", "b"]);
    }

    #[test]
    fn lenient_each_file_lives_on_its_own_and_a_broken_one_keeps_its_last_good_version() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("aff.toml"), GOOD).unwrap();
        std::fs::write(dir.path().join("bad.toml"), GOOD.replace("method", "methd")).unwrap();
        assert!(RulesHandle::open(dir.path(), env(), LoadOptions::default(), true).is_err());
        let handle = RulesHandle::open(dir.path(), env(), LoadOptions::default(), false).unwrap();
        let rules = handle.current();
        assert_eq!(rules.destinations().len(), 1);
        assert_eq!(rules.broken()[0].name, "bad");
        assert!(!rules.broken()[0].last_good, "never loaded: it stays out");
        assert!(rules.has_file("bad"));
        assert!(rules.broken()[0].errors[0]
            .to_string()
            .contains("bad.toml:3:1: unknown key `methd`"));

        // The broken file stays broken: a change to another file still applies.
        std::fs::write(dir.path().join("b.toml"), GOOD).unwrap();
        handle.reload().unwrap();
        assert_eq!(handle.current().destinations().len(), 2);

        // A valid file breaks while another changes: the change applies, and the
        // broken one keeps its last good version in force (through a second reload too).
        let c_url = GOOD.replace("a.example", "c.example");
        std::fs::write(dir.path().join("b.toml"), "nonsense").unwrap();
        std::fs::write(dir.path().join("aff.toml"), &c_url).unwrap();
        for _ in 0..2 {
            handle.reload().unwrap();
            let now = handle.current();
            let names: Vec<_> = now.destinations().iter().map(|d| d.name.as_str()).collect();
            assert_eq!(names, ["aff", "b"]);
            assert_eq!(
                now.get("aff").unwrap().url_host().as_deref(),
                Some("c.example")
            );
            let b = now.broken_file("b").expect("b is reported broken");
            assert!(
                b.last_good && b.errors[0].to_string().contains("b.toml:1:"),
                "{b:?}"
            );
            assert!(!now.broken_file("bad").unwrap().last_good);
        }

        // Strict: any error refuses the change whole.
        let strict = RulesHandle::new(dir.path(), env(), RuleSet::empty());
        assert!(strict.reload().is_err());
        assert!(strict.current().destinations().is_empty());

        // Both fixed: everything in force.
        std::fs::write(dir.path().join("b.toml"), GOOD).unwrap();
        std::fs::write(dir.path().join("bad.toml"), GOOD).unwrap();
        handle.reload().unwrap();
        assert_eq!(handle.current().destinations().len(), 3);
        assert!(handle.current().broken().is_empty());
    }

    #[test]
    fn a_restart_keeps_the_same_last_good_version_as_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let rules_dir = dir.path().join("rules");
        std::fs::create_dir(&rules_dir).unwrap();
        let options = LoadOptions {
            keep_last_good: Some(dir.path().join("data").join(super::super::KEPT_DIR)),
            ..LoadOptions::default()
        };
        let open = || RulesHandle::open(&rules_dir, env(), options.clone(), false).unwrap();
        std::fs::write(rules_dir.join("aff.toml"), GOOD).unwrap();
        std::fs::write(rules_dir.join("gone.toml"), GOOD).unwrap();
        let first = open();
        assert_eq!(first.current().destinations().len(), 2);

        // aff breaks and gone is removed; a reload, then a restart, with these files.
        let c_url = GOOD.replace("a.example", "c.example");
        std::fs::write(rules_dir.join("aff.toml"), &c_url).unwrap();
        first.reload().unwrap();
        std::fs::write(rules_dir.join("aff.toml"), "nonsense").unwrap();
        std::fs::remove_file(rules_dir.join("gone.toml")).unwrap();
        first.reload().unwrap();
        let restarted = open();
        for rules in [first.current(), restarted.current()] {
            let names: Vec<_> = rules
                .destinations()
                .iter()
                .map(|d| d.name.as_str())
                .collect();
            assert_eq!(names, ["aff"], "gone stays gone: {:?}", rules.broken());
            assert_eq!(
                rules.get("aff").unwrap().url_host().as_deref(),
                Some("c.example"),
                "the last good version, not the first"
            );
            let b = rules.broken_file("aff").expect("aff is reported broken");
            assert!(
                b.last_good && b.errors[0].to_string().contains("aff.toml:1:"),
                "{b:?}"
            );
        }

        // Without a kept copy (`check`, or a first start on this file): it stays out.
        let unkept = RulesHandle::open(&rules_dir, env(), LoadOptions::default(), false).unwrap();
        assert!(unkept.current().destinations().is_empty());
        assert!(!unkept.current().broken_file("aff").unwrap().last_good);
    }

    #[test]
    fn the_watcher_picks_up_a_change() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("aff.toml"), GOOD).unwrap();
        let handle = RulesHandle::load(dir.path(), env()).unwrap();
        let _watcher = spawn_watcher(handle.clone(), |_| {}).unwrap();
        std::fs::write(dir.path().join("b.toml"), GOOD).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while handle.current().destinations().len() != 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "watcher did not reload"
            );
            // Pacing: the poll interval of a condition wait with a deadline.
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
