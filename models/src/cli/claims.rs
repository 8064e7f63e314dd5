//! `ela claims`: each experiment of [`crate::claims`] as a subcommand, and `ela claims report`.

use ela_core::Result;

use crate::claims::common::RunArgs;
use crate::claims::corpus::CorpusRunArgs;
use crate::claims::{all, decode, dilution, link, lm, lobe, moe, mqar, report};

/// Options of `ela claims`.
#[derive(clap::Args, Debug, Clone)]
pub struct ClaimsArgs {
    /// Which experiment.
    #[command(subcommand)]
    pub which: ClaimsCommand,
}

/// The experiments.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum ClaimsCommand {
    /// Claim 3: per-token decode latency, prefill time and state bytes, ELA vs softmax LM.
    Decode(decode::DecodeArgs),
    /// Claims 2, 4: multi-query associative recall with every mixer.
    Mqar(mqar::MqarArgs),
    /// Claim 5: Hyper-Link vs pre-norm vs post-norm residual at several depths.
    Link(RunArgs),
    /// Claim 6: no lobe vs causal lobe vs a wider FFN with the lobe's parameters.
    Lobe(RunArgs),
    /// Claim 7: MoE routing-score bias none/inner/outer, with aux loss or loss-free balancing (`--corpus FILE`: on a text file).
    Moe(CorpusRunArgs),
    /// Claim 4: the LM with softmax vs each ELA kernel vs elu+1 (`--corpus FILE`: on a text file).
    Lm(CorpusRunArgs),
    /// Claim 2: attention entropy and gradient-norm statistics; the default run's loss spike.
    Dilution(RunArgs),
    /// Write docs/claims.md from every runs/claims/*/results.json.
    Report(report::ReportArgs),
    /// Every experiment in order (lm before dilution), then the report: the whole of docs/claims.md in one command.
    All(all::AllArgs),
}

/// Run `ela claims`.
pub fn run(args: &ClaimsArgs) -> Result<()> {
    match &args.which {
        ClaimsCommand::Decode(a) => decode::run(a),
        ClaimsCommand::Mqar(a) => crate::on_device!(&a.run.device, |dev| mqar::run(a, dev)),
        ClaimsCommand::Link(a) => crate::on_device!(&a.device, |dev| link::run(a, dev)),
        ClaimsCommand::Lobe(a) => crate::on_device!(&a.device, |dev| lobe::run(a, dev)),
        ClaimsCommand::Moe(a) => crate::on_device!(&a.run.device, |dev| moe::run(a, dev)),
        ClaimsCommand::Lm(a) => crate::on_device!(&a.run.device, |dev| lm::run(a, dev)),
        ClaimsCommand::Dilution(a) => crate::on_device!(&a.device, |dev| dilution::run(a, dev)),
        ClaimsCommand::Report(a) => report::run(a),
        ClaimsCommand::All(a) => all::run(a),
    }
}
