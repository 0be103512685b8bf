//! Command-line definitions (clap derive) and dispatch.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "harness",
    version,
    about = "lime-bench: train LIMe and its rivals under matched FLOP budgets on synthetic reasoning tasks"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: crate::job::RunArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Export a task split as JSONL plus a manifest (sha256, exact config).
    Gen(GenArgs),
    /// List every task with its knobs, defaults, levels and chance level.
    Tasks,
    /// List every model variant (built-in or registered) with its summary and parameter counts.
    Models,
    /// A trained llama or lime run as a Hugging Face transformers folder (`from_pretrained`).
    ExportHf(crate::export_hf::ExportHfArgs),
    /// Parameter and forward-FLOP table per model (`--preset paper-1b` reproduces the paper's Table 8).
    Flops(crate::flops_cmd::FlopsArgs),
    /// Tables (Markdown, CSV, JSON) and plots from saved runs.
    Leaderboard(crate::leaderboard::LeaderboardArgs),
    /// Run a grid of cells from a TOML plan (tasks x levels x models x seeds x lrs), optionally one shard of it.
    Sweep(crate::sweep::SweepArgs),
    /// The paper's claims as protocols: train what is missing, then render REPRODUCTION.md from the committed results.
    Reproduce(crate::reproduce::ReproduceArgs),
    /// Find the knob value (level, budget, task knob, model shape) at which a baseline's val
    /// accuracy lands in a target band between the task's floor and 100%.
    Calibrate(Box<crate::calibrate::CalibrateArgs>),
    /// The suite scorecard: every task family at its calibrated setting, every model trained
    /// under the verdict rules, IQM and probability of improvement with bootstrap intervals,
    /// the A/A noise floor and the performance profile (SUITE.md from results/suite/).
    Suite(crate::suite::SuiteArgs),
    /// One self-contained HTML page of results folders: the sortable leaderboard, the verdicts
    /// whose runs are there, each row's curves, heatmap and runs.
    Report(crate::html::ReportArgs),
    /// Retrain a saved run from its config.json alone and check the result equals the saved one.
    Rerun(crate::rerun::RerunArgs),
    /// The paper's diagnostics of a trained run (or of every run under a results folder): value
    /// and hidden-state entropy per layer, linear probes, router heatmaps.
    Analyze(crate::analyze::AnalyzeArgs),
    /// Throughput benchmarks: `gen` (examples/s per task), `train` (tokens/s), `decode`.
    Bench(crate::bench::BenchArgs),
    /// One forward+backward step of every model on --device vs the CPU f64 reference (the CUDA test subset, shipped in the binary).
    CheckDevice(crate::check_device::CheckArgs),
}

#[derive(Args, Debug)]
pub struct GenArgs {
    /// Task name (see `harness tasks`).
    #[arg(long)]
    pub task: Option<String>,
    /// Split: train, val or test.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Number of examples.
    #[arg(long, default_value_t = 1000)]
    pub n: u64,
    /// Index of the first example.
    #[arg(long, default_value_t = 0)]
    pub start: u64,
    /// Output JSONL file; the manifest goes to `<stem>.manifest.json` beside it.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Override a config knob (repeatable): `--set num_kv_pairs=8`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Named difficulty level (default: the task's default level).
    #[arg(long)]
    pub level: Option<String>,
    /// File format [default: parquet for a `.parquet` --out, else jsonl].
    #[arg(long, value_enum)]
    pub format: Option<crate::gen::Format>,
    /// Export the task exactly as a run trained on it (its config.json: task, level, knobs)
    /// instead of --task/--level/--set.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["task", "level", "sets"])]
    pub from_run: Option<PathBuf>,
    /// List the tasks instead of generating.
    #[arg(long)]
    pub list: bool,
}

/// Parse the process arguments. Help and version print normally; any other clap error is reduced
/// to its first line (exit code 2).
pub fn parse() -> Result<Cli, i32> {
    parse_from(std::env::args_os())
}

pub fn parse_from<I, T>(args: I) -> Result<Cli, i32>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::error::ErrorKind;
    match Cli::try_parse_from(args) {
        Ok(c) => Ok(c),
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            let _ = e.print();
            Err(0)
        }
        Err(e) => {
            let text = e.render().to_string();
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid arguments");
            eprintln!("{} (see --help)", first.trim());
            Err(2)
        }
    }
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        None => crate::job::main_job(&cli.run),
        Some(Command::Gen(a)) => gen(&a),
        Some(Command::Tasks) => {
            print!("{}", tasks_table());
            Ok(())
        }
        Some(Command::Models) => {
            print!("{}", models_table());
            Ok(())
        }
        Some(Command::ExportHf(a)) => crate::export_hf::run(&a),
        Some(Command::Flops(a)) => crate::flops_cmd::run(&a),
        Some(Command::Leaderboard(a)) => crate::leaderboard::run(&a),
        Some(Command::Sweep(a)) => crate::sweep::run(&a),
        Some(Command::Bench(a)) => crate::bench::run(&a),
        Some(Command::Reproduce(a)) => {
            crate::reproduce::train(&a)?;
            match a.stage.plan || a.stale {
                true => Ok(()),
                false => crate::report::write(&a),
            }
        }
        Some(Command::Calibrate(a)) => crate::calibrate::run(&a),
        Some(Command::Suite(a)) => crate::suite::run(&a),
        Some(Command::Report(a)) => crate::html::run(&a),
        Some(Command::Rerun(a)) => crate::rerun::run(&a),
        Some(Command::Analyze(a)) => crate::analyze::run(&a),
        Some(Command::CheckDevice(a)) => crate::check_device::run(&a),
    }
}

fn gen(a: &GenArgs) -> Result<()> {
    if a.list {
        print!("{}", tasks_table());
        return Ok(());
    }
    let Some(out) = a.out.as_deref() else {
        bail!("gen needs --out FILE.jsonl (or FILE.parquet)")
    };
    let split: tasks::Split = a.split.parse().map_err(anyhow::Error::msg)?;
    if a.n == 0 {
        bail!("--n must be at least 1");
    }
    let (task, level) = match (&a.from_run, a.task.as_deref()) {
        (Some(run), _) => {
            let spec: crate::spec::RunSpec = crate::rundir::RunDir::at(run)
                .read_spec()
                .context("gen --from-run")?;
            (crate::train::task_from_spec(&spec)?, spec.level)
        }
        (None, Some(name)) => {
            let sets = crate::spec::parse_sets(&a.sets)?;
            let task = tasks::build(name, a.level.as_deref(), &sets)?;
            let level = a.level.clone().unwrap_or_else(|| default_level(name));
            (task, level)
        }
        (None, None) => bail!("gen needs --task NAME, --from-run RUN_DIR or --list"),
    };
    let name = task.name();
    let format = a.format.unwrap_or_else(|| crate::gen::Format::of_path(out));
    let m = crate::gen::export_as(task.as_ref(), &level, split, a.start, a.n, out, format)
        .with_context(|| format!("gen {name}"))?;
    eprintln!(
        "wrote {} examples to {} (sha256 {}, {} redraws)",
        m.n,
        out.display(),
        m.sha256,
        m.redraws
    );
    Ok(())
}

pub fn default_level(task: &str) -> String {
    tasks::registry()
        .into_iter()
        .find(|i| i.name == task)
        .map(|i| i.default_level.to_string())
        .unwrap_or_default()
}

/// Every task with its knobs, defaults, levels and chance level (Markdown).
pub fn tasks_table() -> String {
    use tabled::{settings::Style, Table, Tabled};
    #[derive(Tabled)]
    struct Row {
        task: String,
        about: String,
        metric: String,
        chance: String,
        levels: String,
        #[tabled(rename = "generalization (train → test, --eval-levels)")]
        generalization: String,
        knobs: String,
    }
    let rows: Vec<Row> = tasks::registry()
        .into_iter()
        .map(|i| {
            let built = tasks::build(i.name, None, &[]);
            let (metric, chance) = match &built {
                Ok(t) => (format!("{:?}", t.metric()), format!("{:.4}", t.chance())),
                Err(e) => ("-".into(), format!("({e})")),
            };
            let levels = i
                .levels
                .iter()
                .map(|(n, _)| {
                    if *n == i.default_level {
                        format!("{n}*")
                    } else {
                        n.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(" ");
            let knobs = i
                .defaults
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            let generalization = match i.generalization {
                Some(g) => format!("{}: {} → {}", g.axis, g.train, g.ood.join(" ")),
                None => "-".into(),
            };
            Row {
                task: i.name.into(),
                about: i.about.into(),
                metric,
                chance,
                levels,
                generalization,
                knobs,
            }
        })
        .collect();
    let mut t = Table::new(rows);
    t.with(Style::markdown());
    format!("{t}\n(* = default level; knobs are set with --set key=value)\n")
}

/// Every model variant with its summary and its parameters beyond llama's at two shapes: the
/// MQAR default experiment's and the paper's 1B (Markdown).
pub fn models_table() -> String {
    use tabled::{settings::Style, Table, Tabled};
    #[derive(Tabled)]
    struct Row {
        model: &'static str,
        about: &'static str,
        #[tabled(rename = "params (d=64, 2 layers)")]
        small: String,
        #[tabled(rename = "extra vs llama (paper 1B)")]
        extra_1b: String,
    }
    let small = |v| models::Config::mha(v, 256, 64, 2, 2);
    let big = |v| models::accounting::paper_1b(v, false);
    let llama_1b = models::accounting::num_params(&big(models::Variant::LLAMA)) as i64;
    let rows: Vec<Row> = models::Variant::all()
        .into_iter()
        .map(|v| Row {
            model: v.name(),
            about: v.def().summary(),
            small: models::accounting::num_params(&small(v)).to_string(),
            extra_1b: format!(
                "{:+}",
                models::accounting::num_params(&big(v)) as i64 - llama_1b
            ),
        })
        .collect();
    let mut t = Table::new(rows);
    t.with(Style::markdown());
    let mut out =
        format!("{t}\n(vocab 256 and 2 heads for the small shape; use with --models a,b,...)\n");
    // The variants' own settings (`--model-set key=value`), with their defaults.
    let settings: Vec<String> = models::Variant::all()
        .into_iter()
        .flat_map(|v| v.def().settings().iter().map(move |s| (v, s)))
        .map(|(v, s)| {
            let values = match s.letters {
                "" => format!("an integer >= {}", s.min),
                letters => format!("letters from {letters}"),
            };
            format!(
                "  {} ({}): {}; {values}, default {}",
                s.key,
                v.name(),
                s.about,
                s.show(s.default)
            )
        })
        .collect();
    if !settings.is_empty() {
        out += "\nVariant settings (--model-set key=value; a model reads only its own):\n";
        out += &settings.join("\n");
        out += "\n";
    }
    out
}
