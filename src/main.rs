//! The `wa-gateway` binary: parse the command line, run it, report failure with a non-zero exit.

use clap::Parser;

/// mimalloc: the hot paths allocate many small short-lived buffers (request bodies, envelopes,
/// SQL arguments), which glibc's malloc serves with visibly more time in its own bookkeeping.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Everything this process creates (the store, the log, generated secrets, job queue) is
    // its own: 0600 files, 0700 directories.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let cli = wa_gateway::cli::Cli::parse();
    match wa_gateway::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("wa-gateway: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
