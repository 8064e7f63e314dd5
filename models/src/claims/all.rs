//! `ela claims all`: every experiment in dependency order (`lm` before `dilution`, which measures
//! `lm`'s models), then the report, so the whole of docs/claims.md is one command:
//!
//! ```sh
//! python3 scripts/get_corpus.py        # data/english.txt, for --corpus
//! ela claims all --budget full --device cuda --corpus data/english.txt
//! ```
//!
//! Each experiment writes its own folder as when run alone; the first one that fails stops the
//! run with its name. `--resume` is handed to `mqar`, the experiment long enough to be cut short.

use std::path::PathBuf;
use std::time::Instant;

use ela_core::{Error, Result};

use super::common::RunArgs;
use super::corpus::CorpusRunArgs;
use super::decode::DecodeArgs;
use super::mqar::MqarArgs;
use super::report::ReportArgs;
use super::{decode, dilution, link, lm, lobe, moe, mqar, report};

/// Options of `ela claims all`.
#[derive(clap::Args, Debug, Clone)]
pub struct AllArgs {
    /// The options every experiment takes (budget, device, seeds, output folder).
    #[command(flatten)]
    pub run: RunArgs,
    /// Also run `lm` and `moe` on this text file (their `<name>-<file stem>` folders), e.g.
    /// data/english.txt from `python3 scripts/get_corpus.py`.
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Reuse `mqar`'s finished training runs (`ela claims mqar --resume`).
    #[arg(long)]
    pub resume: bool,
    /// Where the report is written (its plots go to `claims/` beside it).
    #[arg(long, default_value = "docs/claims.md")]
    pub report: PathBuf,
    /// Write the report without running `ela verify` for its exactness table.
    #[arg(long)]
    pub no_verify: bool,
}

/// Runs one experiment, timing it on stderr; a failure is named there and returned as it is
/// (its own error type: an I/O error stays one).
fn step(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    let t0 = Instant::now();
    crate::errln!("claims all: {name} ...");
    if let Err(e) = f() {
        crate::errln!("claims all: {name} failed; later experiments were not run");
        return Err(e);
    }
    crate::errln!("claims all: {name} done in {:.0} s", t0.elapsed().as_secs_f64());
    Ok(())
}

/// Run `ela claims all`.
pub fn run(args: &AllArgs) -> Result<()> {
    let run = &args.run;
    let on = |corpus: Option<PathBuf>| CorpusRunArgs { run: run.clone(), corpus };
    step("decode", || decode::run(&DecodeArgs::new(run.clone())))?;
    crate::on_device!(&run.device, |dev| {
        step("mqar", || {
            mqar::run(&MqarArgs { run: run.clone(), resume: args.resume, runs_from: None, grid: false }, dev)
        })?;
        step("lm", || lm::run(&on(None), dev))?;
        if let Some(c) = &args.corpus {
            step("lm --corpus", || lm::run(&on(Some(c.clone())), dev))?;
        }
        step("dilution", || dilution::run(run, dev))?;
        step("link", || link::run(run, dev))?;
        step("lobe", || lobe::run(run, dev))?;
        step("moe", || moe::run(&on(None), dev))?;
        if let Some(c) = &args.corpus {
            step("moe --corpus", || moe::run(&on(Some(c.clone())), dev))?;
        }
        Ok::<(), Error>(())
    })?;
    step("report", || {
        report::run(&ReportArgs { runs: run.out.clone(), out: args.report.clone(), no_verify: args.no_verify })
    })
}
