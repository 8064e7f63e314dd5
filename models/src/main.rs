//! The `ela` command-line tool. Every failure is reported as one line on stderr with a
//! non-zero exit code: 2 for bad arguments, 1 for errors while running.

use clap::Parser;
use ela_models::cli::{run, Cli};

/// Restore the default SIGPIPE action, so `ela info | head` ends quietly like other Unix tools
/// instead of panicking on the closed pipe (Rust ignores SIGPIPE and turns it into EPIPE errors,
/// which `println!` reports by panicking).
#[cfg(unix)]
fn default_sigpipe() {
    extern "C" {
        fn signal(signum: i32, handler: usize) -> usize;
    }
    const SIGPIPE: i32 = 13;
    const SIG_DFL: usize = 0;
    // SAFETY: called once at start-up, before any thread exists; SIG_DFL is a valid disposition.
    unsafe {
        signal(SIGPIPE, SIG_DFL);
    }
}

#[cfg(not(unix))]
fn default_sigpipe() {}

fn main() {
    default_sigpipe();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => e.exit(),
            _ => {
                // clap renders several lines (tip, usage); the first says what is wrong.
                let text = e.render().to_string();
                let first = text.lines().next().unwrap_or("invalid arguments").trim_start_matches("error: ");
                eprintln!("error: {first} (see `ela --help`)");
                std::process::exit(2);
            }
        },
    };
    if let Err(e) = run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
