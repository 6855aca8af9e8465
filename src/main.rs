//! The `postback-relay` binary: parse arguments, run (which sets up logging), exit.

use clap::Parser;

/// mimalloc: the store writer spent ~20% of its time in glibc's malloc and free
/// (`perf` on `benches/store_accept`); the library leaves the choice to its users.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = postback_relay::cli::Cli::parse();
    std::process::exit(postback_relay::cli::run(cli));
}
