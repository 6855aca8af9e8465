//! The `postback-relay` binary: parse arguments, run (which sets up logging), exit.

use clap::Parser;

/// mimalloc: the relay allocates and frees small buffers per event and per postback
/// at high rates, where glibc's malloc cost ~15% of the drain's CPU
/// (docs/performance.md); bounded per-connection read buffers keep its memory within
/// the edge's budget (tests/edge.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = postback_relay::cli::Cli::parse();
    std::process::exit(postback_relay::cli::run(cli));
}
