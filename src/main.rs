//! The `postback-relay` binary: parse arguments, set up logging, run, exit.

use clap::Parser;

fn main() {
    // Logs go to stderr; RUST_LOG overrides the default level.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let cli = postback_relay::cli::Cli::parse();
    std::process::exit(postback_relay::cli::run(cli));
}
