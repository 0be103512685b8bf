//! `harness flops`: parameter and forward-FLOP tables.

use anyhow::{bail, Result};
use clap::Args;
use models::accounting::{self, FlopMode};

#[derive(Args, Debug)]
pub struct FlopsArgs {
    /// Named preset: `paper-1b` (the LIMe paper's Table 8: 1B models, MHA and GQA, fvcore convention).
    #[arg(long)]
    pub preset: Option<String>,
    /// Models to list (comma-separated) [default: every model].
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// Model config keys for a custom shape (repeatable): vocab_size, d_model, n_layers, n_heads,
    /// n_kv_heads, d_ff, tie_embeddings, attnres_block.
    #[arg(long = "model-set", value_name = "KEY=VALUE")]
    pub model_sets: Vec<String>,
    /// Sequence length.
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Counting convention: causal (2 per MAC, used for budgets), full, or fvcore (the paper's).
    #[arg(long)]
    pub mode: Option<String>,
}

fn fmt_t(x: u64) -> String {
    format!("{:.4}T", x as f64 / 1e12)
}

fn with_commas(x: u64) -> String {
    let s = x.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Markdown table of `rows`.
pub fn render(rows: &[accounting::Row]) -> String {
    use tabled::{builder::Builder, settings::Style};
    let mut b = Builder::default();
    b.push_record([
        "model",
        "attention",
        "params",
        "params vs llama",
        "forward FLOPs",
        "FLOPs vs llama",
        "convention",
        "T",
    ]);
    for r in rows {
        b.push_record([
            r.model.clone(),
            r.attention.clone(),
            with_commas(r.params),
            format!("{:+.4}%", r.params_overhead_pct),
            fmt_t(r.forward_flops),
            format!("{:+.2}%", r.flops_overhead_pct),
            r.mode.name().to_string(),
            r.seq_len.to_string(),
        ]);
    }
    let mut t = b.build();
    t.with(Style::markdown());
    format!("{t}\n")
}

fn variants(names: &[String]) -> Result<Vec<models::Variant>> {
    if names.is_empty() {
        return Ok(models::Variant::ALL.to_vec());
    }
    names
        .iter()
        .map(|n| crate::spec::parse_variant(n))
        .collect()
}

/// The table `harness flops` prints for these arguments.
pub fn table(a: &FlopsArgs) -> Result<String> {
    let vs = variants(&a.models)?;
    let mode = match a.mode.as_deref() {
        None => None,
        Some(m) => Some(FlopMode::from_name(m).ok_or_else(|| {
            anyhow::anyhow!("unknown FLOP mode `{m}` (expected causal, full or fvcore)")
        })?),
    };
    match a.preset.as_deref() {
        Some("paper-1b") => {
            if !a.model_sets.is_empty() {
                bail!("--model-set cannot be combined with --preset");
            }
            let t = a.seq_len.unwrap_or(2048);
            let mut out = String::new();
            for gqa in [false, true] {
                let cfgs: Vec<models::Config> =
                    vs.iter().map(|&v| accounting::paper_1b(v, gqa)).collect();
                out += &render(&accounting::table(
                    &cfgs,
                    t,
                    mode.unwrap_or(FlopMode::Fvcore),
                ));
                out.push('\n');
            }
            Ok(out)
        }
        Some(p) => bail!("unknown preset `{p}` (known: paper-1b)"),
        None => {
            let base = models::Config::mha(models::Variant::LLAMA, 512, 64, 4, 4);
            let base =
                crate::spec::shape_with_sets(&base, &crate::spec::parse_sets(&a.model_sets)?)?;
            let t = a.seq_len.unwrap_or(256);
            if t == 0 {
                bail!("--seq-len must be at least 1");
            }
            let cfgs: Vec<models::Config> =
                vs.iter().map(|&v| base.clone().with_variant(v)).collect();
            Ok(render(&accounting::table(
                &cfgs,
                t,
                mode.unwrap_or(FlopMode::Causal),
            )))
        }
    }
}

pub fn run(a: &FlopsArgs) -> Result<()> {
    print!("{}", table(a)?);
    Ok(())
}
