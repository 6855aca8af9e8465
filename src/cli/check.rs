//! `postback-relay check [--events DIR]`: the config and every rule file, strictly
//! (every error, exit 1), warnings beside them, and with `--events` every rule run
//! against sample events.
//!
//! Owns: what `check` prints. Never: sends or writes anything.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::{Config, Overrides};
use crate::diag::{Diagnostic, ProcessEnv};
use crate::event::Event;
use crate::rules::{masked, LoadOptions, RuleSet};

use super::{rules_env, CliError};

pub fn run(
    out: &mut dyn Write,
    config: &Path,
    rules: Option<PathBuf>,
    events: Option<&Path>,
) -> Result<(), CliError> {
    let ov = Overrides {
        rules_dir: rules.clone(),
        ..Overrides::default()
    };
    let mut errors = Vec::new();
    let (rules_dir, loaded) = match Config::load(config, &ProcessEnv, &ov) {
        Ok(cfg) => (cfg.rules_dir.clone(), Some(cfg)),
        Err(e) if !config.exists() && rules.is_none() => {
            // No config at all: its rules directory is unknown; say only the cause.
            return Err(e.into());
        }
        Err(e) => {
            errors.extend(e);
            // Still check the rules the config names, not `./rules` of the cwd.
            (Config::rules_dir_of(config, &ProcessEnv, rules), None)
        }
    };
    let (policy, custom_fields) = match &loaded {
        Some(cfg) => (cfg.rules_env.clone(), cfg.custom_fields.clone()),
        None => (Config::rules_env_of(config, &ProcessEnv), Vec::new()),
    };
    let options = LoadOptions {
        custom_fields,
        allow_private_networks: loaded.as_ref().is_some_and(|c| c.allow_private_networks),
        today: None,
        keep_last_good: None,
    };
    let set = match RuleSet::load_dir_lenient(&rules_dir, &rules_env(policy), &options) {
        Ok(set) => set,
        Err(e) => {
            errors.extend(e);
            RuleSet::empty()
        }
    };
    errors.extend(set.errors());
    if let Some(cfg) = &loaded {
        errors.extend(private_partner_hosts(&set, cfg));
    }
    print_warnings(set.warnings());
    let unsafe_settings = loaded
        .as_ref()
        .map(Config::safety_warnings)
        .unwrap_or_default();
    for w in &unsafe_settings {
        eprintln!("{}: warning: unsafe for production: {w}", config.display());
    }
    let unreadable = match events {
        Some(dir) => run_events(out, &set, dir)?,
        None => Vec::new(),
    };
    if !errors.is_empty() {
        for e in &unreadable {
            eprintln!("{e}");
        }
        return Err(errors.into());
    }
    let count = set.destinations().len();
    writeln!(
        out,
        "ok: {} and {} ({} enabled destination{}{})",
        config.display(),
        rules_dir.display(),
        count,
        plural(count),
        match set.warnings().len() + unsafe_settings.len() {
            0 => String::new(),
            n => format!(", {n} warning{}", plural(n)),
        }
    )?;
    if unreadable.is_empty() {
        Ok(())
    } else {
        Err(CliError::Failed(unreadable.join("\n")))
    }
}

/// Destinations whose URL names a loopback, private or otherwise non-public address
/// while `allow_private_networks` is false: the relay would refuse every send there
/// (names are resolved at send time; only what the file says is checked here).
fn private_partner_hosts(set: &RuleSet, cfg: &Config) -> Vec<Diagnostic> {
    if cfg.allow_private_networks {
        return Vec::new();
    }
    set.destinations()
        .iter()
        .chain(set.disabled())
        .filter_map(|d| {
            let host = d.url_host()?;
            let literal = host.trim_start_matches('[').trim_end_matches(']');
            let reason = if literal == "localhost" || literal.ends_with(".localhost") {
                Some("loopback (localhost)")
            } else {
                literal
                    .parse::<std::net::IpAddr>()
                    .ok()
                    .and_then(crate::deliver::client::non_public_reason)
            }?;
            Some(Diagnostic {
                file: d.file.clone(),
                line: 0,
                col: 0,
                message: format!(
                    "`url`'s host {host} is {reason}: the relay refuses to send there while allow_private_networks is false; for a partner on your own network set [delivery] allow_private_networks = true in {}",
                    cfg.path.display()
                ),
            })
        })
        .collect()
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn print_warnings(warnings: &[Diagnostic]) {
    for w in warnings {
        eprintln!(
            "{}:{}:{}: warning: {}",
            w.file.display(),
            w.line,
            w.col,
            w.message
        );
    }
}

/// One sample event and what to call it in the report.
struct Sample {
    label: String,
    event: Event,
}

/// Runs every destination against every sample event; returns what could not be read
/// as events (one message per file or event).
fn run_events(out: &mut dyn Write, set: &RuleSet, dir: &Path) -> std::io::Result<Vec<String>> {
    let (samples, bad) = read_samples(dir);
    write!(out, "{}", events_report(set, &samples, dir))?;
    Ok(bad)
}

/// Per destination: which sample events it gets (the request line, masked), why it
/// skips the others, and placeholders without a value.
fn events_report(set: &RuleSet, samples: &[Sample], dir: &Path) -> String {
    use std::fmt::Write as _;
    let mut out = format!("sample events: {} from {}\n", samples.len(), dir.display());
    for d in set.destinations().iter().chain(set.disabled()) {
        let disabled = set.get(&d.name).is_none();
        let _ = writeln!(
            out,
            "\n== {}{} ==",
            d.name,
            if disabled { " (disabled)" } else { "" }
        );
        let mut gets = 0;
        for s in samples {
            // As `preview` and delivery judge it: an event past the partner's age
            // limit is queued, then dead-lettered unsent.
            match d.evaluate(&s.event).map(|r| (r, too_old(d, &s.event))) {
                Ok((_, Some((age, max)))) => {
                    let _ = writeln!(
                        out,
                        "not {}: the event is {age} days old and this partner takes events up to {max} days old (it would be queued, then dead-lettered unsent)",
                        s.label
                    );
                }
                Ok((r, None)) => {
                    gets += 1;
                    let req = masked(d, &r.request);
                    let _ = writeln!(out, "gets {}: {} {}", s.label, req.method.as_str(), req.url);
                    for (place, ph) in d.empty_placeholders(&s.event) {
                        let _ = writeln!(
                            out,
                            "  warning: {ph} in the {place} has no value for {}",
                            s.label
                        );
                    }
                }
                Err(skip) => {
                    let _ = writeln!(out, "not {}: {skip}", s.label);
                }
            }
        }
        let _ = writeln!(out, "{gets} of {} events sent", samples.len());
    }
    for b in set.broken() {
        let _ = writeln!(
            out,
            "\n== {} (has errors: gets nothing until fixed) ==",
            b.name
        );
    }
    out
}

/// (its age, the limit) in days when `event` is older than `d`'s partner takes.
fn too_old(d: &crate::rules::Destination, event: &Event) -> Option<(i64, u64)> {
    let max = d.delivery.max_event_age?;
    let age = chrono::Utc::now().signed_duration_since(event.timestamp);
    (age.num_seconds() > i64::try_from(max.as_secs()).unwrap_or(i64::MAX))
        .then(|| (age.num_days(), max.as_secs() / 86400))
}

/// Every event of every `*.json` / `*.ndjson` file in `dir`, sorted by file name.
fn read_samples(dir: &Path) -> (Vec<Sample>, Vec<String>) {
    let mut samples = Vec::new();
    let mut bad = Vec::new();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json" || x == "ndjson"))
            .collect(),
        Err(e) => {
            bad.push(format!(
                "{}: cannot read the events directory: {e}",
                dir.display()
            ));
            return (samples, bad);
        }
    };
    files.sort();
    let now = chrono::Utc::now();
    for file in files {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let body = match std::fs::read(&file) {
            Ok(b) => b,
            Err(e) => {
                bad.push(format!("{}: cannot read: {e}", file.display()));
                continue;
            }
        };
        let framing = if name.ends_with(".ndjson") {
            crate::ingest::body::Framing::Ndjson
        } else {
            crate::ingest::body::Framing::Json
        };
        let parsed = match crate::ingest::body::parse_events(&body, framing, usize::MAX, now) {
            Ok(p) => p,
            Err(e) => {
                bad.push(format!("{}: {}", file.display(), body_error(&e)));
                continue;
            }
        };
        let many = parsed.len() > 1;
        for (i, p) in parsed.into_iter().enumerate() {
            let label = if many {
                format!("{name}[{i}]")
            } else {
                name.clone()
            };
            match p {
                Ok(event) => samples.push(Sample { label, event }),
                Err(e) => bad.push(format!("{}: event {i}: invalid event: {e}", file.display())),
            }
        }
    }
    (samples, bad)
}

fn body_error(e: &crate::ingest::body::BodyError) -> String {
    match e {
        crate::ingest::body::BodyError::Unparseable(m) => m.clone(),
        crate::ingest::body::BodyError::TooManyEvents { count, .. } => {
            format!("{count} events")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn sample_events_show_what_each_destination_gets_and_empty_placeholders() {
        let rules = tempfile::tempdir().unwrap();
        std::fs::write(
            rules.path().join("aff.toml"),
            "[destination]\nurl = \"https://a.example/p?c={click_id}&v={properties.value}\"\nmethod = \"GET\"\n[when]\nevent_name = [\"purchase\"]\n[privacy]\nallow = [\"click_id\", \"properties.value\"]\n",
        )
        .unwrap();
        std::fs::write(rules.path().join("bad.toml"), "[destination]\n").unwrap();
        let env: HashMap<String, String> = HashMap::new();
        let set = RuleSet::load_dir_lenient(rules.path(), &env, &LoadOptions::default()).unwrap();
        let events = tempfile::tempdir().unwrap();
        std::fs::write(
            events.path().join("a.json"),
            r#"[{"event_id": "e1", "event_name": "purchase", "click_id": "c1"},
                {"event_id": "e2", "event_name": "install"}]"#,
        )
        .unwrap();
        std::fs::write(events.path().join("b.ndjson"), "{\"event_id\": 5}\n").unwrap();
        let (samples, bad) = read_samples(events.path());
        assert_eq!(
            bad,
            [format!(
                "{}: event 0: invalid event: event_id: must be a string, not a number",
                events.path().join("b.ndjson").display()
            )]
        );
        let report = events_report(&set, &samples, events.path());
        let body = report.split_once('\n').map(|(_, b)| b).unwrap_or_default();
        assert_eq!(
            body,
            "\n== aff ==\ngets a.json[0]: GET https://a.example/p?c=c1&v=\n  warning: {properties.value} in the url has no value for a.json[0]\nnot a.json[1]: event_name \"install\" is not listed in [when] event_name = [\"purchase\"]\n1 of 2 events sent\n\n== bad (has errors: gets nothing until fixed) ==\n"
        );
    }
}
