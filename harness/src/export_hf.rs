//! `harness export-hf RUN_DIR --out D`: a trained run as a Hugging Face transformers folder.
//!
//! `llama` becomes a plain `LlamaForCausalLM` folder (the two models are the same function:
//! pre-norm, RoPE "rotate half" with θ^(−2i/d), RMSNorm `x/sqrt(mean x² + ε)·w`, SwiGLU, query
//! head r·g + j on kv head r). `lime` (and its static-router ablations, [`EXPORTS`]) becomes the
//! same tensors plus one router per layer ≥ 1 and
//! transformers' custom-code convention: `auto_map` in config.json names the classes of
//! `modeling_lime.py` — the project's own `python/lime_bench_hf/modeling_lime.py`, embedded in
//! the binary and copied into the folder — loaded with `trust_remote_code=True`. Every other
//! model is refused with a one-line error.
//!
//! The folder: `config.json`, `model.safetensors` (transformers' names: [`hf_name`]; every
//! tensor of the run is mapped exactly once or the export fails), `generation_config.json`,
//! `vocab.json` (token id → text: the tasks need no tokenizer), `README.md`, and
//! `lime_bench_check.safetensors`: the first test examples' `input_ids` and the `logits`
//! lime-bench computes for them from the same weights (in f32, as the export runs), so anyone can
//! check a load
//! (`python/tests/test_export_hf.py` does, to 1e-4). It is written under a temporary name and
//! renamed into place: an existing `D` is never touched.

use crate::checkpoint::load_tensors;
use crate::io::{write_atomic, write_json};
use crate::records::RunResult;
use crate::spec::RunSpec;
use crate::train::{run_model, task_from_spec};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tasks::Split;

#[derive(Args, Debug)]
pub struct ExportHfArgs {
    /// A finished run folder (config.json, result.json, best.safetensors).
    pub run_dir: PathBuf,
    /// The folder to write (must not exist).
    #[arg(long)]
    pub out: PathBuf,
    /// Test examples whose lime-bench logits go into lime_bench_check.safetensors.
    #[arg(long, default_value_t = 8)]
    pub check_n: u64,
}

/// The models with an export, and the transformers class each becomes. LIMe's static-router
/// ablations export as `LimeForCausalLM` with their router as the equivalent dense (R, (l+1)·R)
/// matrix (zeros outside a window, block-diagonal for one head, the constant 1/(l+1) for
/// averaging): the same function. `lime-per-dim` (one weight per channel) and `lime-dynamic`
/// (input-dependent) have no dense form, and the other rivals no transformers model.
pub const EXPORTS: [(&str, &str); 7] = [
    ("llama", "LlamaForCausalLM"),
    ("lime", "LimeForCausalLM"),
    ("lime-avg", "LimeForCausalLM"),
    ("lime-last-2", "LimeForCausalLM"),
    ("lime-first-2", "LimeForCausalLM"),
    ("lime-same-head", "LimeForCausalLM"),
    ("lime-random-init", "LimeForCausalLM"),
];

/// The transformers class of `model`'s export, if it has one.
pub fn hf_class(model: &str) -> Option<&'static str> {
    EXPORTS.iter().find(|(m, _)| *m == model).map(|(_, c)| *c)
}

/// Whether `model` exports as LIMe (remote code, dense routers; no KV cache in `generate`).
fn lime_export(model: &str) -> bool {
    hf_class(model) == Some("LimeForCausalLM")
}

/// The modeling file shipped with a LIMe export.
pub const MODELING_LIME: &str = include_str!("../../python/lime_bench_hf/modeling_lime.py");

/// lime-bench's per-layer leaf names and transformers' (under `model.layers.{l}.`).
const LAYER_LEAVES: [(&str, &str); 10] = [
    ("attn_norm.weight", "input_layernorm.weight"),
    ("mlp_norm.weight", "post_attention_layernorm.weight"),
    ("attn.q_proj.weight", "self_attn.q_proj.weight"),
    ("attn.k_proj.weight", "self_attn.k_proj.weight"),
    ("attn.v_proj.weight", "self_attn.v_proj.weight"),
    ("attn.o_proj.weight", "self_attn.o_proj.weight"),
    ("attn.router.w", "self_attn.router.weight"),
    ("mlp.w_gate.weight", "mlp.gate_proj.weight"),
    ("mlp.w_up.weight", "mlp.up_proj.weight"),
    ("mlp.w_down.weight", "mlp.down_proj.weight"),
];

/// lime-bench's top-level names and transformers'.
const TOP: [(&str, &str); 3] = [
    ("embed_tokens.weight", "model.embed_tokens.weight"),
    ("norm.weight", "model.norm.weight"),
    ("lm_head.weight", "lm_head.weight"),
];

/// transformers' name of a lime-bench tensor of llama or lime (`None`: not one of theirs).
pub fn hf_name(name: &str) -> Option<String> {
    if let Some((_, hf)) = TOP.iter().find(|(n, _)| *n == name) {
        return Some(hf.to_string());
    }
    let (l, leaf) = name.strip_prefix("layers.")?.split_once('.')?;
    l.parse::<usize>().ok()?;
    let (_, hf) = LAYER_LEAVES.iter().find(|(n, _)| *n == leaf)?;
    Some(format!("model.layers.{l}.{hf}"))
}

/// lime-bench's name of a transformers tensor of an export (the inverse of [`hf_name`]).
pub fn lime_bench_name(hf: &str) -> Option<String> {
    if let Some((n, _)) = TOP.iter().find(|(_, h)| *h == hf) {
        return Some(n.to_string());
    }
    let (l, leaf) = hf.strip_prefix("model.layers.")?.split_once('.')?;
    l.parse::<usize>().ok()?;
    let (n, _) = LAYER_LEAVES.iter().find(|(_, h)| *h == leaf)?;
    Some(format!("layers.{l}.{n}"))
}

/// The run's tensors under transformers' names. A LIMe-family router is written as its dense
/// matrix ([`models::Model::mixing_weights`]); a tied LM head as a copy of the embedding (the
/// folder declares untied heads, which every loader reads the same way).
pub fn hf_tensors(
    spec: &RunSpec,
    model: &models::Model,
    weights: &HashMap<String, Tensor>,
) -> Result<BTreeMap<String, Tensor>> {
    let lime = lime_export(&spec.model);
    let mut out = BTreeMap::new();
    for (name, t) in weights {
        if lime && name.contains(".attn.router.") {
            continue; // written below, dense
        }
        let Some(hf) = hf_name(name) else {
            bail!(
                "export-hf: tensor `{name}` of model `{}` has no transformers name",
                spec.model
            );
        };
        if hf.ends_with(".router.weight") {
            bail!(
                "export-hf: {} run with a router tensor `{name}`",
                spec.model
            );
        }
        out.insert(hf, t.to_dtype(DType::F32)?);
    }
    if lime {
        let routers = model.mixing_weights()?; // layers 1..L
        if routers.len() + 1 != spec.model_config.n_layers {
            bail!(
                "export-hf: {} routers for {} layers",
                routers.len(),
                spec.model_config.n_layers
            );
        }
        for (i, w) in routers.into_iter().enumerate() {
            out.insert(
                format!("model.layers.{}.self_attn.router.weight", i + 1),
                w.to_dtype(DType::F32)?.contiguous()?,
            );
        }
    }
    if spec.model_config.tie_embeddings && !out.contains_key("lm_head.weight") {
        let e = out
            .get("model.embed_tokens.weight")
            .context("export-hf: no embed_tokens.weight")?
            .clone();
        out.insert("lm_head.weight".into(), e);
    }
    Ok(out)
}

/// config.json of the export.
pub fn hf_config(spec: &RunSpec, task: &dyn tasks::Task, result: &RunResult) -> Value {
    let c = &spec.model_config;
    let mut v = json!({
        "vocab_size": c.vocab_size,
        "hidden_size": c.d_model,
        "intermediate_size": c.d_ff,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim(),
        "hidden_act": "silu",
        "max_position_embeddings": spec.seq_len,
        "rms_norm_eps": c.norm_eps,
        "rope_theta": c.rope_theta,
        "attention_bias": false,
        "attention_dropout": 0.0,
        "mlp_bias": false,
        "tie_word_embeddings": false,
        // No pad_token_id: the tasks' pad id is also an ordinary input token (MQAR's blanks),
        // which `generate` would mask out; lime-bench pads on the right only, where causal
        // attention never looks. `lime_bench.pad_id` names it.
        "pad_token_id": null,
        "eos_token_id": task.eos_id(),
        "bos_token_id": null,
        "torch_dtype": "float32",
        "lime_bench": {
            "run_id": spec.id(),
            "task": spec.task,
            "level": spec.level,
            "model": spec.model,
            "seed": spec.seed,
            "pad_id": task.pad_id(),
            "task_config": spec.task_config,
            "lr": spec.optim.lr,
            "test_acc": result.test_acc,
            "metric": task.metric(),
            "code_version": spec.code_version,
            "precision": spec.precision,
        },
    });
    let m = v.as_object_mut().expect("an object");
    if lime_export(&spec.model) {
        m.insert("architectures".into(), json!(["LimeForCausalLM"]));
        m.insert("model_type".into(), json!("lime_bench_lime"));
        m.insert(
            "auto_map".into(),
            json!({
                "AutoConfig": "modeling_lime.LimeConfig",
                "AutoModelForCausalLM": "modeling_lime.LimeForCausalLM",
            }),
        );
    } else {
        m.insert("architectures".into(), json!(["LlamaForCausalLM"]));
        m.insert("model_type".into(), json!("llama"));
        m.insert(
            "rope_parameters".into(),
            json!({"rope_type": "default", "rope_theta": c.rope_theta}),
        );
    }
    v
}

/// safetensors bytes with transformers' `format: pt` metadata.
fn safetensors_bytes(tensors: &BTreeMap<String, Tensor>) -> Result<Vec<u8>> {
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::serialize(tensors.iter(), Some(meta)).context("serialize safetensors")
}

/// The first `n` test examples padded to one length, and lime-bench's logits for them.
fn check_tensors(
    spec: &RunSpec,
    model: &models::Model,
    task: &dyn tasks::Task,
    n: u64,
    dev: &Device,
) -> Result<BTreeMap<String, Tensor>> {
    let examples = tasks::generate_range(task, Split::Test, 0, n.max(1));
    let t = examples
        .iter()
        .map(|e| e.tokens.len().min(spec.seq_len))
        .max()
        .unwrap_or(1);
    let mut ids = vec![task.pad_id(); examples.len() * t];
    for (i, e) in examples.iter().enumerate() {
        let len = e.tokens.len().min(t);
        ids[i * t..i * t + len].copy_from_slice(&e.tokens[..len]);
    }
    let input = Tensor::from_vec(ids.clone(), (examples.len(), t), dev)?; // (N,T)
    let logits = model.forward(&input)?.to_dtype(DType::F32)?; // (N,T,V)
    let ids64: Vec<i64> = ids.iter().map(|&x| x as i64).collect();
    Ok(BTreeMap::from([
        (
            "input_ids".to_string(),
            Tensor::from_vec(ids64, (examples.len(), t), &Device::Cpu)?,
        ),
        ("logits".to_string(), logits.to_device(&Device::Cpu)?),
    ]))
}

fn readme(spec: &RunSpec, task: &dyn tasks::Task, result: &RunResult) -> String {
    let remote = lime_export(&spec.model);
    let mut s = format!(
        "# lime-bench run `{}`\n\n\
         A `{}` model trained by lime-bench on `{} {}` (seed {}, lr {:e}); its test accuracy \
         ({:?} metric) was {}.\n\nLoad it with Hugging Face transformers:\n\n```python\n\
         from transformers import AutoModelForCausalLM\n\
         model = AutoModelForCausalLM.from_pretrained(\"path/to/this/folder\"{})\n```\n\n",
        spec.id(),
        spec.model,
        spec.task,
        spec.level,
        spec.seed,
        spec.optim.lr,
        task.metric(),
        result
            .test_acc
            .map_or("not measured".to_string(), |a| format!("{:.4}", a)),
        if remote {
            ", trust_remote_code=True"
        } else {
            ""
        },
    );
    if remote {
        s += "`modeling_lime.py` (lime-bench's own PyTorch LIMe, named by `auto_map` in \
              config.json) defines the model: LLaMA's blocks, plus a router per layer ≥ 1 that \
              mixes the pre-RoPE keys and values of every layer so far.\n\n";
        if spec.model != "lime" {
            s += &format!(
                "`{}` is a restricted LIMe router; its routers are written as the equivalent \
                 dense matrices (zeros where it has no weight), so it runs as LIMe.\n\n",
                spec.model
            );
        }
    } else {
        s += "It is a plain `LlamaForCausalLM`.\n\n";
    }
    s += "There is no tokenizer: the tasks are token sequences. `vocab.json` lists the text of \
          every token id; inputs are token ids, padded on the right with `lime_bench.pad_id` \
          (config.json; not declared as `pad_token_id`, since some tasks also use that id as an \
          ordinary input token, which `generate` would mask). \
          `lime_bench_check.safetensors` holds the first test examples (`input_ids`) and the \
          logits lime-bench computed for them, to check a load:\n\n```python\n\
          import torch\nfrom safetensors.torch import load_file\n\
          ref = load_file(\"path/to/this/folder/lime_bench_check.safetensors\")\n\
          with torch.no_grad():\n    logits = model(ref[\"input_ids\"]).logits\n\
          print((logits - ref[\"logits\"]).abs().max())  # about 1e-6\n```\n\n\
          The run's task (`lime_bench.task`, `.level`, `.task_config`) is exported by \
          `harness gen --from-run RUN_DIR --split test --out test.parquet` (or `.jsonl`).\n\n\
          ## Vocabulary\n\n| id | token |\n|---:|---|\n";
    for id in 0..task.vocab_size() as u32 {
        s += &format!("| {id} | `{}` |\n", task.token_str(id).replace('|', "\\|"));
    }
    s
}

pub fn run(a: &ExportHfArgs) -> Result<()> {
    let d = export(&a.run_dir, &a.out, a.check_n)?;
    eprintln!("wrote {}", d.display());
    Ok(())
}

/// Writes the export of `run_dir` to `out` (which must not exist); returns `out`.
pub fn export(run_dir: &Path, out: &Path, check_n: u64) -> Result<PathBuf> {
    let run = crate::rundir::RunDir::at(run_dir);
    let spec: RunSpec = run
        .read_spec()
        .with_context(|| format!("export-hf {}", run_dir.display()))?;
    if hf_class(&spec.model).is_none() {
        bail!(
            "export-hf: no Hugging Face export for model `{}` (exports: {})",
            spec.model,
            EXPORTS.map(|(m, _)| m).join(", ")
        );
    }
    let result: RunResult = run
        .read_result()
        .with_context(|| format!("export-hf {}: not a finished run", run_dir.display()))?;
    let weights = run.best();
    if !weights.is_file() {
        bail!(
            "export-hf {}: no best.safetensors (the weights the test accuracy was measured with; \
             committed results do not keep them: `harness rerun` retrains one)",
            run_dir.display()
        );
    }
    if out.exists() {
        bail!(
            "export-hf: {} exists; choose a new --out (an export never overwrites)",
            out.display()
        );
    }
    let dev = Device::Cpu;
    let w = load_tensors(&weights, &dev)?;
    let task = task_from_spec(&spec)?;
    // In f32 throughout (a bf16-matmul run's weights are f32 masters; the export runs in f32).
    let model = run_model(&spec, &w, &dev)?.with_matmul_dtype(None);
    let tensors = hf_tensors(&spec, &model, &w)?;
    let check = check_tensors(&spec, &model, task.as_ref(), check_n, &dev)?;

    let name = out
        .file_name()
        .with_context(|| format!("export-hf: --out {} has no folder name", out.display()))?;
    let tmp = out.with_file_name(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let write = || -> Result<()> {
        write_atomic(
            &tmp.join("model.safetensors"),
            &safetensors_bytes(&tensors)?,
        )?;
        write_atomic(
            &tmp.join("lime_bench_check.safetensors"),
            &safetensors_bytes(&check)?,
        )?;
        let cfg = hf_config(&spec, task.as_ref(), &result);
        write_json(&tmp.join("config.json"), &cfg)?;
        let gen = json!({
            "eos_token_id": task.eos_id(),
            "do_sample": false,
            "use_cache": !lime_export(&spec.model),
        });
        write_json(&tmp.join("generation_config.json"), &gen)?;
        let vocab: Vec<String> = (0..task.vocab_size() as u32)
            .map(|i| task.token_str(i))
            .collect();
        write_json(&tmp.join("vocab.json"), &vocab)?;
        write_atomic(
            &tmp.join("README.md"),
            readme(&spec, task.as_ref(), &result).as_bytes(),
        )?;
        if lime_export(&spec.model) {
            write_atomic(&tmp.join("modeling_lime.py"), MODELING_LIME.as_bytes())?;
        }
        std::fs::rename(&tmp, out)
            .with_context(|| format!("cannot move the export into {}", out.display()))
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&tmp);
    })?;
    Ok(out.to_path_buf())
}
