//! The `ela` command-line tool. Every failure is reported as one line on stderr with a
//! non-zero exit code: 2 for bad arguments, 1 for errors while running.

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use ela_models::cli::detect::DetectCommand;
use ela_models::cli::{run, Cli, Command};

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
    // Ops free and reallocate same-sized host buffers every step: keep that memory in the process
    // (ela_core::cpu::malloc_tuning has the measurement).
    ela_core::cpu::malloc_tuning::keep_freed_host_memory();
    let parsed = Cli::command().try_get_matches().and_then(|m| Cli::from_arg_matches(&m).map(|cli| (cli, m)));
    let cli = match parsed {
        Ok((mut cli, matches)) => {
            record_given(&mut cli, &matches);
            cli
        }
        Err(e) => match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                // `e.exit()` would swallow a failed write (`ela --help > /dev/full`) and exit 0.
                if let Err(w) = e.print() {
                    fail(1, &format!("error: stdout: cannot write: {w}"));
                }
                std::process::exit(0);
            }
            _ => {
                // clap renders several lines (tip, usage); the first says what is wrong.
                let text = e.render().to_string();
                let first = text.lines().next().unwrap_or("invalid arguments").trim_start_matches("error: ");
                fail(2, &format!("error: {first} (see `ela --help`)"));
            }
        },
    };
    // On a worker of the CPU thread pool, each CPU op runs in place instead of handing its work
    // over and sleeping (ela_core::cpu::threads has the measurement).
    if let Err(e) = ela_core::cpu::threads::on_worker(|| run(cli)) {
        fail(1, &format!("error: {e}"));
    }
}

/// The options given on the command line (not defaults) of the subcommand `path`.
fn given(matches: &ArgMatches, path: &[&str]) -> Vec<String> {
    let mut m = matches;
    for name in path {
        match m.subcommand_matches(name) {
            Some(sub) => m = sub,
            None => return Vec::new(),
        }
    }
    m.ids()
        .filter(|id| m.value_source(id.as_str()) == Some(ValueSource::CommandLine))
        .map(|id| id.to_string())
        .collect()
}

/// Tell the training commands which options the user gave, so `--resume` can refuse
/// contradicting ones (a default is no contradiction).
fn record_given(cli: &mut Cli, matches: &ArgMatches) {
    match &mut cli.command {
        Command::Train(args) => args.given = given(matches, &["train"]),
        Command::Detect(d) => {
            if let DetectCommand::Train(args) = &mut d.command {
                args.given = given(matches, &["detect", "train"]);
            }
        }
        _ => {}
    }
}

/// Print `line` on stderr and exit with `code`. The write may itself fail (stderr full or
/// closed); the exit code still says what happened, so that error is dropped, never a panic.
fn fail(code: i32, line: &str) -> ! {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
    std::process::exit(code);
}
