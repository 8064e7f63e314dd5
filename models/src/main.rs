//! The `ela` command-line tool. Every failure is reported as one line on stderr with a
//! non-zero exit code: 2 for bad arguments, 1 for errors while running.

use clap::Parser;
use ela_models::cli::{run, Cli};

fn main() {
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
