//! Why a command failed, and the one mapping from that to the process's exit code.
//!
//! Owns: the command line's error type, how each error is printed on standard error,
//! and exit codes (0 success, 1 failure, 2 usage). Never: prints anything on success.

use std::fmt;

use crate::app::StartError;
use crate::diag::{Diagnostic, Diagnostics};

/// Why a command did not succeed. Commands return it; `run` prints it and exits with
/// [`CliError::exit_code`].
#[derive(Debug)]
pub enum CliError {
    /// The command line asks for something it does not say how to do (exit 2).
    Usage(String),
    /// Config or rule files with errors, each located (exit 1).
    Invalid(Diagnostics),
    /// The relay could not start or stopped on an error (exit 1); the cause is kept.
    Start(StartError),
    /// A complete message: an unreadable input, an unreachable relay, a "no" from it
    /// (exit 1).
    Failed(String),
    /// Writing the command's output failed. A reader that went away (`| head`) ends
    /// the command quietly with 0, as `cat` would; anything else is exit 1.
    Output(std::io::Error),
}

impl CliError {
    /// The process's exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
            CliError::Invalid(_)
            | CliError::Start(_)
            | CliError::Failed(_)
            | CliError::Output(_) => 1,
        }
    }

    /// Prints the error on standard error (nothing for a closed output pipe).
    pub fn report(&self) {
        if self.exit_code() != 0 {
            eprintln!("{self}");
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(m) | CliError::Failed(m) => f.write_str(m),
            CliError::Invalid(errors) => {
                write!(f, "{errors}")?;
                match errors.0.len() {
                    0 | 1 => Ok(()),
                    n => write!(f, "\n{n} errors"),
                }
            }
            CliError::Start(e) => write!(f, "{e}"),
            CliError::Output(e) => write!(f, "cannot write the output: {e}"),
        }
    }
}

impl std::error::Error for CliError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CliError::Start(e) => Some(e),
            CliError::Output(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> CliError {
        CliError::Output(e)
    }
}

impl From<StartError> for CliError {
    fn from(e: StartError) -> CliError {
        CliError::Start(e)
    }
}

impl From<Vec<Diagnostic>> for CliError {
    fn from(errors: Vec<Diagnostic>) -> CliError {
        CliError::Invalid(Diagnostics(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error, ErrorKind};

    #[test]
    fn one_mapping_to_exit_codes() {
        assert_eq!(CliError::Usage("say what".into()).exit_code(), 2);
        assert_eq!(CliError::Failed("no".into()).exit_code(), 1);
        assert_eq!(CliError::from(Vec::new()).exit_code(), 1);
        assert_eq!(
            CliError::Output(Error::from(ErrorKind::BrokenPipe)).exit_code(),
            0,
            "a reader that went away is not a failure"
        );
        assert_eq!(
            CliError::Output(Error::from(ErrorKind::StorageFull)).exit_code(),
            1
        );
    }

    #[test]
    fn many_errors_end_with_their_count() {
        let d = |m: &str| Diagnostic {
            file: "rules/a.toml".into(),
            line: 3,
            col: 1,
            message: m.into(),
        };
        assert_eq!(
            CliError::from(vec![d("one")]).to_string(),
            "rules/a.toml:3:1: one"
        );
        assert_eq!(
            CliError::from(vec![d("one"), d("two")]).to_string(),
            "rules/a.toml:3:1: one\nrules/a.toml:3:1: two\n2 errors"
        );
    }

    #[test]
    fn causes_are_kept() {
        let e = CliError::from(StartError::Signals(Error::other("no signalfd")));
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(
            e.to_string(),
            "cannot install the signal handlers: no signalfd"
        );
    }
}
