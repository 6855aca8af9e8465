//! The `postback-relay` binary: parse arguments, run (which sets up logging), exit.

use clap::Parser;

fn main() {
    let cli = postback_relay::cli::Cli::parse();
    std::process::exit(postback_relay::cli::run(cli));
}
