//! `postback-relay preview [--destination NAME] EVENT|-`: the exact request each
//! destination would get for one event. Sends nothing, writes nothing.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{load_config, rules_env, CliError};
use crate::config::{Config, Overrides};
use crate::diag::ProcessEnv;
use crate::rules::RuleSet;

pub fn run(
    out: &mut dyn Write,
    config: &Path,
    rules: Option<PathBuf>,
    only: Option<&str>,
    event: &str,
) -> Result<(), CliError> {
    let (rules_dir, policy) = match rules {
        Some(r) => (r, Config::rules_env_of(config, &ProcessEnv)),
        None => {
            let c = load_config(config, &Overrides::default())?;
            (c.rules_dir, c.rules_env)
        }
    };
    // Nothing is sent: where a token would go is `check`'s and `serve`'s concern.
    let options = crate::rules::LoadOptions {
        allow_private_networks: true,
        ..Default::default()
    };
    // Each rule file on its own: a broken one fails only a preview that needs it.
    let set = RuleSet::load_dir_lenient(&rules_dir, &rules_env(policy), &options)?;
    let ev = read_event(event).map_err(CliError::Failed)?;
    let needed: Vec<&crate::rules::Broken> = set
        .broken()
        .iter()
        .filter(|b| only.is_none_or(|n| n == b.name))
        .collect();
    if only.is_some() && !needed.is_empty() {
        let errors: Vec<_> = needed.iter().flat_map(|b| b.errors.clone()).collect();
        return Err(errors.into());
    }
    for b in set
        .broken()
        .iter()
        .filter(|b| only.is_some_and(|n| n != b.name))
    {
        eprintln!(
            "note: {} has errors and is left out (`postback-relay check` lists them)",
            b.file.display()
        );
    }
    match only {
        None => {
            write!(out, "{}", crate::rules::preview(&set, &ev))?;
            if !needed.is_empty() {
                // The valid files were previewed; the broken ones fail the command.
                let errors: Vec<_> = needed.iter().flat_map(|b| b.errors.clone()).collect();
                return Err(errors.into());
            }
        }
        Some(name) => match crate::rules::preview_named(&set, &ev, name) {
            Some(text) => write!(out, "{text}")?,
            None => {
                let known: Vec<&str> = set
                    .destinations()
                    .iter()
                    .chain(set.disabled())
                    .map(|d| d.name.as_str())
                    .collect();
                return Err(CliError::Failed(format!(
                    "no destination \"{name}\" in {}; the destinations are: {}",
                    rules_dir.display(),
                    if known.is_empty() {
                        "(none)".to_string()
                    } else {
                        known.join(", ")
                    }
                )));
            }
        },
    }
    Ok(())
}

/// One event for `preview`: a JSON file, or `-` for standard input.
fn read_event(arg: &str) -> Result<crate::event::Event, String> {
    let (what, text) = if arg == "-" {
        let mut body = Vec::new();
        std::io::stdin()
            .read_to_end(&mut body)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
        ("<stdin>".to_string(), body)
    } else {
        let body = std::fs::read(arg).map_err(|e| format!("{arg}: cannot read: {e}"))?;
        (arg.to_string(), body)
    };
    let value: Value = serde_json::from_slice(&text)
        .map_err(|e| format!("{what}:{}:{}: invalid JSON: {e}", e.line(), e.column()))?;
    crate::event::Event::from_value(value, chrono::Utc::now())
        .map_err(|e| format!("{what}: invalid event: {e}"))
}
