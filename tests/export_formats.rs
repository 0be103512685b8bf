//! The ecosystem's formats: `harness export-hf` (a run as a transformers folder), `harness gen
//! --format parquet` (the JSONL rows as Parquet) and answer text without tokenizer markers.
//! The numerical round trip through transformers itself is `python/tests/test_export_hf.py`.

use crate::cli::{assert_one_line_error, files_in, run, stderr, three_tiny_steps, train_to_done};
use candle_core::Device;
use parquet::file::reader::{FileReader, SerializedFileReader};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// A finished tiny run of `model` (3 layers, 4 heads over 2 kv heads: GQA and two routers).
fn tiny(model: &str, out: &Path) -> (harness::spec::RunSpec, PathBuf) {
    tiny_deep(model, 3, out)
}

fn tiny_deep(model: &str, layers: usize, out: &Path) -> (harness::spec::RunSpec, PathBuf) {
    tiny_with(model, layers, false, out)
}

fn tiny_with(
    model: &str,
    layers: usize,
    tied: bool,
    out: &Path,
) -> (harness::spec::RunSpec, PathBuf) {
    let mut o = three_tiny_steps(
        "mqar",
        &[model.to_string()],
        &["vocab_size=32", "seq_len=16", "num_kv_pairs=2"],
        3,
        out,
    );
    o.model_sets = vec![
        "d_model=16".into(),
        format!("n_layers={layers}"),
        "n_heads=4".into(),
        "n_kv_heads=2".into(),
        "d_ff=32".into(),
        format!("tie_embeddings={tied}"),
    ];
    let spec = harness::spec::resolve(&o).unwrap().remove(0);
    train_to_done(&spec, out);
    let dir = out.join("runs").join(spec.id());
    (spec, dir)
}

fn tensor_names(path: &Path) -> BTreeSet<String> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.names().into_iter().map(String::from).collect()
}

/// llama exports to LlamaForCausalLM's names exactly (every tensor mapped once, nothing else);
/// lime adds one router per layer ≥ 1 and its modeling file under `auto_map`; the check file
/// holds the logits lime-bench computes for the saved input ids.
#[test]
fn export_hf_writes_transformers_folders_for_llama_and_lime() {
    let dir = tempfile::tempdir().unwrap();
    for model in ["llama", "lime"] {
        let (spec, run_dir) = tiny(model, dir.path());
        let out = dir.path().join(format!("hf-{model}"));
        let o = run(&[
            "export-hf",
            run_dir.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--check-n",
            "3",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let mut want: BTreeSet<String> = [
            "model.embed_tokens.weight",
            "model.norm.weight",
            "lm_head.weight",
        ]
        .map(String::from)
        .into();
        for l in 0..3 {
            for leaf in [
                "input_layernorm",
                "post_attention_layernorm",
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.o_proj",
                "mlp.gate_proj",
                "mlp.up_proj",
                "mlp.down_proj",
            ] {
                want.insert(format!("model.layers.{l}.{leaf}.weight"));
            }
            if model == "lime" && l > 0 {
                want.insert(format!("model.layers.{l}.self_attn.router.weight"));
            }
        }
        assert_eq!(
            tensor_names(&out.join("model.safetensors")),
            want,
            "{model}"
        );
        let cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["num_key_value_heads"], 2);
        assert_eq!(cfg["num_attention_heads"], 4);
        assert_eq!(cfg["tie_word_embeddings"], false);
        assert_eq!(cfg["lime_bench"]["run_id"], spec.id());
        let mut files = vec![
            "README.md",
            "config.json",
            "generation_config.json",
            "lime_bench_check.safetensors",
            "model.safetensors",
            "vocab.json",
        ];
        if model == "lime" {
            assert_eq!(cfg["architectures"][0], "LimeForCausalLM");
            assert_eq!(
                cfg["auto_map"]["AutoModelForCausalLM"],
                "modeling_lime.LimeForCausalLM"
            );
            let shipped = std::fs::read_to_string(out.join("modeling_lime.py")).unwrap();
            let source = std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../python/lime_bench_hf/modeling_lime.py"),
            )
            .unwrap();
            assert_eq!(shipped, source);
            files.push("modeling_lime.py");
            files.sort();
        } else {
            assert_eq!(cfg["architectures"][0], "LlamaForCausalLM");
            assert_eq!(cfg["model_type"], "llama");
        }
        assert_eq!(files_in(&out), files);
        let vocab: Vec<String> =
            serde_json::from_str(&std::fs::read_to_string(out.join("vocab.json")).unwrap())
                .unwrap();
        assert_eq!(vocab.len(), 32);
        // The check file: lime-bench's logits of the first test examples, from the exported weights.
        let check =
            candle_core::safetensors::load(out.join("lime_bench_check.safetensors"), &Device::Cpu)
                .unwrap();
        let ids = check["input_ids"]
            .to_dtype(candle_core::DType::U32)
            .unwrap();
        assert_eq!(ids.dims(), [3, 16]);
        let w =
            candle_core::safetensors::load(run_dir.join("best.safetensors"), &Device::Cpu).unwrap();
        let m = harness::train::run_model(&spec, &w, &Device::Cpu).unwrap();
        let fresh = m.forward(&ids).unwrap();
        let d = (fresh - &check["logits"])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
    }
}

/// A model without an export, an existing --out and a run without its best weights are one-line
/// errors that write nothing.
#[test]
fn export_hf_refuses_what_it_cannot_export() {
    let dir = tempfile::tempdir().unwrap();
    let (_, dense) = tiny("denseformer", dir.path());
    let out = dir.path().join("x");
    let o = run(&[
        "export-hf",
        dense.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_one_line_error(
        &o,
        "no Hugging Face export for model `denseformer` (exports: llama, lime, lime-avg,",
    );
    assert!(!out.exists());

    let (_, llama) = tiny("llama", dir.path());
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep"), "mine").unwrap();
    let o = run(&[
        "export-hf",
        llama.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_one_line_error(&o, "exists; choose a new --out");
    assert_eq!(std::fs::read_to_string(out.join("keep")).unwrap(), "mine");

    std::fs::remove_file(llama.join("best.safetensors")).unwrap();
    let o = run(&[
        "export-hf",
        llama.to_str().unwrap(),
        "--out",
        dir.path().join("y").to_str().unwrap(),
    ]);
    assert_one_line_error(&o, "no best.safetensors");
    let o = run(&[
        "export-hf",
        dir.path().to_str().unwrap(),
        "--out",
        dir.path().join("z").to_str().unwrap(),
    ]);
    assert_one_line_error(&o, "config.json");
    let leftovers: Vec<String> = files_in(dir.path())
        .into_iter()
        .filter(|f| f.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A Parquet value of an export as JSON.
fn json_of(f: &parquet::record::Field) -> Value {
    use parquet::record::Field;
    match f {
        Field::Str(s) => Value::from(s.as_str()),
        Field::Long(x) => Value::from(*x),
        Field::ListInternal(l) => Value::Array((0..l.len()).map(|i| json_list(l, i)).collect()),
        other => panic!("unexpected Parquet field {other:?}"),
    }
}

fn json_list(l: &parquet::record::List, i: usize) -> Value {
    json_of(&l.elements()[i])
}

/// Every row of a Parquet export, as JSON (the parquet crate's own reader).
fn parquet_rows(path: &Path) -> Vec<Value> {
    let r = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    r.get_row_iter(None)
        .unwrap()
        .map(|row| {
            let row = row.unwrap();
            Value::Object(
                row.get_column_iter()
                    .map(|(k, f)| (k.clone(), json_of(f)))
                    .collect(),
            )
        })
        .collect()
}

/// `harness gen` of `n` test examples of `task` to `out` on `threads` threads.
fn gen_test(task: &str, n: &str, out: &Path, threads: &str) {
    let o = crate::cli::harness()
        .env("RAYON_NUM_THREADS", threads)
        .args(["gen", "--task", task, "--split", "test", "--n", n])
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

/// `gen --format parquet` holds the JSONL rows (meta as its JSON text), for tasks with and
/// without answers and with empty and long lists; its manifest names the format and hashes the
/// file; the bytes do not depend on the thread count.
#[test]
fn parquet_and_jsonl_of_a_split_hold_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    for (task, n) in [
        ("mqar", "40"),
        ("arith", "40"),
        ("prosqa", "5"),
        ("parity", "20"),
    ] {
        let j = dir.path().join(format!("{task}.jsonl"));
        let p = dir.path().join(format!("{task}.parquet"));
        gen_test(task, n, &j, "2");
        gen_test(task, n, &p, "1");
        let lines: Vec<Value> = std::fs::read_to_string(&j)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let rows = parquet_rows(&p);
        assert_eq!(rows.len(), lines.len());
        for (mut want, got) in lines.into_iter().zip(rows) {
            let meta = serde_json::to_string(&want["meta"]).unwrap();
            want["meta"] = Value::String(meta);
            assert_eq!(got, want, "{task}");
        }
        let m: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(format!("{task}.manifest.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(m["format"], "parquet");
        assert_eq!(m["export_version"], harness::gen::EXPORT_VERSION);
        use sha2::Digest;
        assert_eq!(
            m["sha256"].as_str().unwrap(),
            harness::io::hex(&sha2::Sha256::digest(std::fs::read(&p).unwrap()))
        );
        // Another thread count, the same bytes.
        let p4 = dir.path().join(format!("{task}-4.parquet"));
        gen_test(task, n, &p4, "4");
        assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(&p4).unwrap());
    }
    // --format wins over the file name.
    let x = dir.path().join("x.data");
    let o = run(&[
        "gen",
        "--task",
        "mqar",
        "--n",
        "3",
        "--format",
        "parquet",
        "--out",
        x.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(parquet_rows(&x).len(), 3);
}

/// No task's answer text carries a tokenizer marker: it is the answer tokens' text without the
/// end-of-sequence token, which the tokens keep.
#[test]
fn answer_text_has_no_end_of_sequence_marker() {
    for name in tasks::task_names() {
        let task = tasks::build(name, None, &[]).unwrap();
        for ex in tasks::generate_range(task.as_ref(), tasks::Split::Test, 0, 16) {
            let line: Value =
                serde_json::from_str(&harness::gen::example_line(task.as_ref(), &ex)).unwrap();
            let answer = line["answer"].as_str().unwrap();
            assert!(!answer.contains('<'), "{name}: {answer:?}");
            if let Some(eos) = task.eos_id() {
                assert!(!answer.contains(&task.token_str(eos)), "{name}: {answer:?}");
                if !ex.answer().is_empty() {
                    assert_eq!(ex.tokens.last(), Some(&eos), "{name}: tokens keep the eos");
                    assert_eq!(answer, task.render(&ex.answer()[..ex.answer().len() - 1]));
                }
            }
        }
    }
}

/// `gen --from-run` exports the task exactly as the run trained on it.
#[test]
fn gen_from_run_is_the_runs_task() {
    let dir = tempfile::tempdir().unwrap();
    let (_, run_dir) = tiny("llama", dir.path());
    let a = dir.path().join("a.jsonl");
    let b = dir.path().join("b.jsonl");
    let o = run(&[
        "gen",
        "--from-run",
        run_dir.to_str().unwrap(),
        "--split",
        "test",
        "--n",
        "20",
        "--out",
        a.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&[
        "gen",
        "--task",
        "mqar",
        "--split",
        "test",
        "--n",
        "20",
        "--out",
        b.to_str().unwrap(),
        "--set",
        "vocab_size=32",
        "--set",
        "seq_len=16",
        "--set",
        "num_kv_pairs=2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let o = run(&[
        "gen",
        "--from-run",
        run_dir.to_str().unwrap(),
        "--task",
        "mqar",
        "--out",
        a.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
}

/// LIMe's static-router ablations export as LIMe with dense routers: the exported tensors, read
/// back under lime-bench's names into a plain `lime` model, give the ablation's own logits (the
/// check file) — at 4 layers, where the 2-layer windows leave sources out.
#[test]
fn static_router_ablations_export_as_the_same_function_in_lime() {
    let dir = tempfile::tempdir().unwrap();
    for model in [
        "lime-avg",
        "lime-last-2",
        "lime-first-2",
        "lime-same-head",
        "lime-random-init",
    ] {
        let (spec, run_dir) = tiny_deep(model, 4, dir.path());
        let out = dir.path().join(format!("hf-{model}"));
        let o = run(&[
            "export-hf",
            run_dir.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["architectures"][0], "LimeForCausalLM", "{model}");
        let hf =
            candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
        let back: std::collections::HashMap<String, candle_core::Tensor> = hf
            .into_iter()
            .map(|(k, v)| (harness::export_hf::lime_bench_name(&k).unwrap(), v))
            .collect();
        let lime_cfg = spec
            .model_config
            .clone()
            .with_variant(models::Variant::LIME);
        let vb = candle_nn::VarBuilder::from_tensors(back, candle_core::DType::F32, &Device::Cpu);
        let lime = models::Model::new(&lime_cfg, vb, spec.backend).unwrap();
        let check =
            candle_core::safetensors::load(out.join("lime_bench_check.safetensors"), &Device::Cpu)
                .unwrap();
        let ids = check["input_ids"]
            .to_dtype(candle_core::DType::U32)
            .unwrap();
        let d = (lime.forward(&ids).unwrap() - &check["logits"])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d <= 1e-5, "{model}: {d}");
        // Not a vacuous check: the routers are not those of llama.
        let r =
            candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
        let w3 = &r["model.layers.3.self_attn.router.weight"];
        assert_eq!(w3.dims(), [2, 8], "{model}");
    }
}

/// A run with a tied LM head exports an untied folder whose `lm_head.weight` is the embedding
/// (every loader then reads the same function).
#[test]
fn a_tied_head_is_written_as_a_copy_of_the_embedding() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, run_dir) = tiny_with("lime", 3, true, dir.path());
    assert!(spec.model_config.tie_embeddings);
    let out = dir.path().join("hf");
    let o = run(&[
        "export-hf",
        run_dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let t = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    let d = (&t["lm_head.weight"] - &t["model.embed_tokens.weight"])
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(d, 0.0);
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["tie_word_embeddings"], false);
}
